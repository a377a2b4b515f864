//! Starts and abuses a cluster of real `ferrite` or `etcd` processes on 127.0.0.1.
//!
//! Every member gets its own client port, a private peer port, and a proxy (see [`crate::proxy`])
//! whose address is the member's advertised peer URL. Members are started with etcd's flags, so
//! the same harness drives Debian's etcd 3.4 and ferrite. Processes are killed by pid when the
//! [`Cluster`] is dropped, also when a test panics.

use crate::proxy::Net;
use etcd_client::{Client, ConnectOptions, GetOptions};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// How long a member (or the whole cluster) may take to become healthy.
pub const HEALTHY_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound on one health probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// Raft heartbeat and election timeout given to every member (etcd's flags), in ms. Short, but
/// long enough that a loaded 2-core machine does not elect all the time.
pub const HEARTBEAT_MS: u64 = 100;
pub const ELECTION_TIMEOUT_MS: u64 = 1000;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Ferrite(PathBuf),
    Etcd(PathBuf),
}

impl Target {
    pub fn binary(&self) -> &Path {
        match self {
            Target::Ferrite(p) | Target::Etcd(p) => p,
        }
    }
    pub fn name(&self) -> &'static str {
        match self {
            Target::Ferrite(_) => "ferrite",
            Target::Etcd(_) => "etcd",
        }
    }
}

/// One member: its ports, data directory and (when running) process.
pub struct Member {
    pub idx: usize,
    pub name: String,
    pub client_port: u16,
    /// The port the member itself listens on for peers.
    pub peer_port: u16,
    /// The proxy in front of `peer_port`; advertised as the member's peer URL.
    pub proxy_port: u16,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    /// Member id as the member reports it (Status header), once known.
    pub id: u64,
    pub removed: bool,
    pub paused: bool,
    args: Vec<String>,
    child: Option<Child>,
}

impl Member {
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }
    pub fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.proxy_port)
    }
    pub fn running(&self) -> bool {
        self.child.is_some()
    }
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }
    pub fn log_tail(&self, bytes: usize) -> String {
        let s = std::fs::read(&self.log).unwrap_or_default();
        String::from_utf8_lossy(&s[s.len().saturating_sub(bytes)..]).into_owned()
    }
}

/// A cluster of member processes plus their peer proxies.
pub struct Cluster {
    pub target: Target,
    pub members: Vec<Member>,
    pub net: Net,
    pub token: String,
    pub dir: PathBuf,
    /// Client endpoints of the members currently in the cluster (shared with the workload).
    pub endpoints: Arc<RwLock<Vec<String>>>,
    keep_dir: bool,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral port")
        .port()
}

/// A connection to one endpoint with short timeouts.
pub async fn connect(endpoint: &str, timeout: Duration) -> Option<Client> {
    let opts = ConnectOptions::new()
        .with_connect_timeout(timeout)
        .with_timeout(timeout);
    tokio::time::timeout(timeout, Client::connect([endpoint], Some(opts)))
        .await
        .ok()?
        .ok()
}

/// `(member id, leader id, raft term)` from Maintenance.Status, if the endpoint answers.
pub async fn status(endpoint: &str) -> Option<(u64, u64, u64)> {
    let mut c = connect(endpoint, PROBE_TIMEOUT).await?;
    let s = tokio::time::timeout(PROBE_TIMEOUT, c.status())
        .await
        .ok()?
        .ok()?;
    Some((s.header()?.member_id(), s.leader(), s.raft_term()))
}

/// Healthy as `etcdctl endpoint health` means it: a linearizable read succeeds.
pub async fn healthy(endpoint: &str) -> bool {
    let Some(mut c) = connect(endpoint, PROBE_TIMEOUT).await else {
        return false;
    };
    matches!(
        tokio::time::timeout(PROBE_TIMEOUT, c.get("health", None)).await,
        Ok(Ok(_))
    )
}

static CLUSTER_SEQ: AtomicU64 = AtomicU64::new(0);

impl Cluster {
    /// Starts `n` members and waits until every one is healthy.
    pub async fn start(target: Target, n: usize, token: &str) -> Cluster {
        assert!((1..=9).contains(&n), "1..=9 members");
        let dir = std::env::temp_dir().join(format!(
            "ferrite-chaos-{}-{}-{}",
            target.name(),
            std::process::id(),
            CLUSTER_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create cluster dir");
        let mut c = Cluster {
            target,
            members: Vec::new(),
            net: Net::new(),
            token: token.to_string(),
            dir,
            endpoints: Arc::new(RwLock::new(Vec::new())),
            keep_dir: std::env::var_os("CHAOS_KEEP_DIRS").is_some(),
        };
        for _ in 0..n {
            c.new_member().await;
        }
        let initial = c.initial_cluster();
        for i in 0..n {
            c.members[i].args = c.args(i, &initial, "new");
            c.spawn(i);
        }
        c.publish_endpoints();
        c.wait_healthy(HEALTHY_TIMEOUT)
            .await
            .unwrap_or_else(|e| panic!("cluster did not start: {e}"));
        c
    }

    async fn new_member(&mut self) -> usize {
        let idx = self.members.len();
        let peer_port = free_port();
        let proxy_port = self
            .net
            .proxy(idx, peer_port)
            .await
            .expect("start peer proxy");
        let name = format!("m{idx}");
        self.members.push(Member {
            idx,
            name: name.clone(),
            client_port: free_port(),
            peer_port,
            proxy_port,
            data_dir: self.dir.join(format!("{name}.data")),
            log: self.dir.join(format!("{name}.log")),
            id: 0,
            removed: false,
            paused: false,
            args: Vec::new(),
            child: None,
        });
        idx
    }

    fn initial_cluster(&self) -> String {
        self.members
            .iter()
            .filter(|m| !m.removed)
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn args(&self, i: usize, initial: &str, state: &str) -> Vec<String> {
        let m = &self.members[i];
        vec![
            format!("--name={}", m.name),
            format!("--data-dir={}", m.data_dir.display()),
            format!("--listen-client-urls={}", m.endpoint()),
            format!("--advertise-client-urls={}", m.endpoint()),
            format!("--listen-peer-urls=http://127.0.0.1:{}", m.peer_port),
            format!("--initial-advertise-peer-urls={}", m.peer_url()),
            format!("--initial-cluster={initial}"),
            format!("--initial-cluster-state={state}"),
            format!("--initial-cluster-token={}", self.token),
            format!("--heartbeat-interval={HEARTBEAT_MS}"),
            format!("--election-timeout={ELECTION_TIMEOUT_MS}"),
            "--logger=zap".to_string(),
        ]
    }

    fn spawn(&mut self, i: usize) {
        let m = &mut self.members[i];
        assert!(m.child.is_none(), "{} already running", m.name);
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&m.log)
            .expect("open member log");
        let err = out.try_clone().expect("clone log handle");
        let child = Command::new(self.target.binary())
            .args(&m.args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", self.target.binary().display()));
        self.net.set_pid(i, child.id());
        m.child = Some(child);
        m.paused = false;
    }

    fn publish_endpoints(&self) {
        let eps: Vec<String> = self
            .members
            .iter()
            .filter(|m| !m.removed)
            .map(|m| m.endpoint())
            .collect();
        *self.endpoints.write().expect("endpoints lock") = eps;
    }

    /// Members in the cluster (not removed).
    pub fn live(&self) -> Vec<usize> {
        self.members
            .iter()
            .filter(|m| !m.removed)
            .map(|m| m.idx)
            .collect()
    }

    /// Waits until every running, unpaused member in the cluster is healthy; learns member ids.
    pub async fn wait_healthy(&mut self, limit: Duration) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        for i in self.live() {
            loop {
                if let Some(c) = self.members[i].child.as_mut() {
                    if let Ok(Some(st)) = c.try_wait() {
                        let m = &self.members[i];
                        return Err(format!(
                            "{} exited ({st}); log tail:\n{}",
                            m.name,
                            m.log_tail(3000)
                        ));
                    }
                }
                let m = &self.members[i];
                if !m.running() || m.paused {
                    break;
                }
                if healthy(&m.endpoint()).await {
                    if let Some((id, _, _)) = status(&m.endpoint()).await {
                        self.members[i].id = id;
                        break;
                    }
                }
                if Instant::now() >= deadline {
                    return Err(format!(
                        "{} not healthy after {limit:?}; log tail:\n{}",
                        m.name,
                        m.log_tail(3000)
                    ));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        Ok(())
    }

    /// The member every reachable member agrees is the leader.
    pub async fn leader(&self, limit: Duration) -> Option<usize> {
        let deadline = Instant::now() + limit;
        loop {
            for i in self.live() {
                let m = &self.members[i];
                if !m.running() || m.paused {
                    continue;
                }
                if let Some((_, leader, _)) = status(&m.endpoint()).await {
                    if let Some(l) = self
                        .members
                        .iter()
                        .find(|x| x.id == leader && leader != 0 && !x.removed)
                    {
                        return Some(l.idx);
                    }
                }
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// kill -9 by pid, and wait for the process.
    pub fn kill(&mut self, i: usize) {
        let m = &mut self.members[i];
        if let Some(mut c) = m.child.take() {
            if m.paused {
                signal(c.id(), libc::SIGCONT);
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        m.paused = false;
    }

    /// Starts a killed member again on its data directory.
    pub fn restart(&mut self, i: usize) {
        assert!(!self.members[i].removed, "restart of a removed member");
        self.spawn(i);
    }

    pub fn pause(&mut self, i: usize) {
        let m = &mut self.members[i];
        if let Some(pid) = m.pid() {
            signal(pid, libc::SIGSTOP);
            m.paused = true;
        }
    }

    pub fn resume(&mut self, i: usize) {
        let m = &mut self.members[i];
        if let Some(pid) = m.pid() {
            signal(pid, libc::SIGCONT);
        }
        m.paused = false;
    }

    /// A client on every healthy member (for administrative calls).
    async fn admin(&self, except: Option<usize>) -> Option<Client> {
        for i in self.live() {
            let m = &self.members[i];
            if Some(i) == except || !m.running() || m.paused {
                continue;
            }
            if let Some(c) = connect(&m.endpoint(), PROBE_TIMEOUT).await {
                return Some(c);
            }
        }
        None
    }

    /// MemberAdd of a new member, then starts it with `--initial-cluster-state=existing`.
    /// Retries while the cluster refuses (etcd refuses reconfiguration until every member has
    /// been connected for a while).
    pub async fn add_member(&mut self, limit: Duration) -> Result<usize, String> {
        let idx = self.new_member().await;
        let url = self.members[idx].peer_url();
        let deadline = Instant::now() + limit;
        let mut last = String::new();
        let id = loop {
            if Instant::now() >= deadline {
                self.members[idx].removed = true;
                return Err(format!("member add refused until the deadline: {last}"));
            }
            if let Some(mut c) = self.admin(None).await {
                match tokio::time::timeout(PROBE_TIMEOUT, c.member_add([url.as_str()], None)).await
                {
                    Ok(Ok(r)) => break r.member().map(|m| m.id()).unwrap_or(0),
                    Ok(Err(e)) => last = e.to_string(),
                    Err(_) => last = "timeout".into(),
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        self.members[idx].id = id;
        let initial = self.initial_cluster();
        self.members[idx].args = self.args(idx, &initial, "existing");
        self.spawn(idx);
        self.publish_endpoints();
        Ok(idx)
    }

    /// MemberRemove of member `i` (sent to another member), then stops its process.
    pub async fn remove_member(&mut self, i: usize, limit: Duration) -> Result<(), String> {
        let id = self.members[i].id;
        assert!(id != 0, "member id unknown");
        let deadline = Instant::now() + limit;
        let mut last = String::new();
        loop {
            if Instant::now() >= deadline {
                return Err(format!("member remove refused until the deadline: {last}"));
            }
            if let Some(mut c) = self.admin(Some(i)).await {
                match tokio::time::timeout(PROBE_TIMEOUT, c.member_remove(id)).await {
                    Ok(Ok(_)) => break,
                    // Applied by an earlier attempt whose answer was lost.
                    Ok(Err(e)) if e.to_string().contains("member not found") => break,
                    Ok(Err(e)) => last = e.to_string(),
                    Err(_) => last = "timeout".into(),
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        self.members[i].removed = true;
        self.publish_endpoints();
        // etcd's removed member exits by itself; give it a moment, then make sure.
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until {
            let exited = self.members[i]
                .child
                .as_mut()
                .is_none_or(|c| matches!(c.try_wait(), Ok(Some(_))));
            if exited {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.kill(i);
        Ok(())
    }

    /// `(revision, hash_kv at revision)` of member `i`.
    pub async fn hash_kv(&self, i: usize, rev: i64) -> Result<u32, String> {
        let mut c = connect(&self.members[i].endpoint(), PROBE_TIMEOUT)
            .await
            .ok_or("connect")?;
        let r = tokio::time::timeout(PROBE_TIMEOUT, c.hash_kv(rev))
            .await
            .map_err(|_| "timeout".to_string())?
            .map_err(|e| e.to_string())?;
        Ok(r.hash())
    }

    /// The revision member `i` serves locally (a serializable read's header).
    pub async fn local_revision(&self, i: usize) -> Option<i64> {
        let mut c = connect(&self.members[i].endpoint(), PROBE_TIMEOUT).await?;
        let r = tokio::time::timeout(
            PROBE_TIMEOUT,
            c.get("health", Some(GetOptions::new().with_serializable())),
        )
        .await
        .ok()?
        .ok()?;
        Some(r.header()?.revision())
    }

    pub fn log_tails(&self, bytes: usize) -> String {
        let mut s = String::new();
        for m in &self.members {
            s.push_str(&format!(
                "---- {} ({}) ----\n{}\n",
                m.name,
                m.log.display(),
                m.log_tail(bytes)
            ));
        }
        s
    }

    /// Kills every process and stops the proxies.
    pub fn stop_all(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
        self.net.shutdown();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.log_tails(2000));
        }
        self.stop_all();
        if !self.keep_dir && !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn signal(pid: u32, sig: libc::c_int) {
    let pid = libc::pid_t::try_from(pid).expect("pid fits pid_t");
    // SAFETY: kill(2) takes plain integers and touches no memory of ours; `pid` is a child we
    // spawned and have not reaped (the caller holds its `Child`), so it names that process.
    let rc = unsafe { libc::kill(pid, sig) };
    assert!(rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH));
}
