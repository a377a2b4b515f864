//! Starting etcd or ferrite on loopback with etcd's flags, 1 or N members, fresh data dirs;
//! stopping them by pid.

use crate::procfs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a fresh cluster may take to answer Status on every member.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Etcd,
    Ferrite,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Etcd => "etcd",
            Kind::Ferrite => "ferrite",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Spec {
    pub kind: Kind,
    pub binary: PathBuf,
    pub nodes: usize,
    /// Parent of the per-run data directory (removed when the cluster is dropped).
    pub work_dir: PathBuf,
    /// Where started pids are appended, one per line, so a wrapper's trap can kill them.
    pub pidfile: Option<PathBuf>,
}

pub struct Cluster {
    pub kind: Kind,
    pub dir: PathBuf,
    pub endpoints: Vec<String>,
    children: Vec<Child>,
}

/// Ports [`free_port`] picks from (inclusive; 0..0: the OS picks), and the next one to try.
static PORT_RANGE: std::sync::Mutex<(u16, u16, u16)> = std::sync::Mutex::new((0, 0, 0));

/// Makes [`free_port`] pick from `lo..=hi` (in turn, skipping ports in use) instead of the OS.
pub fn set_port_range(lo: u16, hi: u16) {
    assert!(0 < lo && lo < hi);
    *PORT_RANGE.lock().expect("port range lock") = (lo, hi, lo);
}

/// A free loopback TCP port (bound then released; good enough for tests on one machine).
pub fn free_port() -> std::io::Result<u16> {
    let mut range = PORT_RANGE.lock().expect("port range lock");
    let (lo, hi, next) = *range;
    if lo == 0 {
        return Ok(std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port());
    }
    // In turn through the range, so a port just handed out is not handed out again at once.
    let span = u32::from(hi - lo) + 1;
    for i in 0..span {
        let p = lo + ((u32::from(next - lo) + i) % span) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", p)).is_ok() {
            range.2 = if p == hi { lo } else { p + 1 };
            return Ok(p);
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AddrInUse,
        format!("no free loopback port in {lo}-{hi}"),
    ))
}

fn tail(path: &Path, bytes: usize) -> String {
    let s = std::fs::read(path).unwrap_or_default();
    String::from_utf8_lossy(&s[s.len().saturating_sub(bytes)..]).into_owned()
}

impl Cluster {
    /// Starts the members and waits until each answers Status. On failure everything started is
    /// stopped and the error carries the tail of the failing member's log.
    pub async fn start(spec: &Spec) -> Result<Cluster, String> {
        assert!(spec.nodes >= 1);
        static RUN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let dir = spec.work_dir.join(format!(
            "{}-{}n-{}-{}",
            spec.kind.name(),
            spec.nodes,
            std::process::id(),
            RUN.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let mut ports = Vec::new();
        for _ in 0..spec.nodes {
            ports.push((
                free_port().map_err(|e| e.to_string())?,
                free_port().map_err(|e| e.to_string())?,
            ));
        }
        let initial_cluster: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, (_, p))| format!("n{i}=http://127.0.0.1:{p}"))
            .collect();
        let mut cluster = Cluster {
            kind: spec.kind,
            dir: dir.clone(),
            endpoints: ports
                .iter()
                .map(|(c, _)| format!("http://127.0.0.1:{c}"))
                .collect(),
            children: Vec::new(),
        };
        for (i, (cp, pp)) in ports.iter().enumerate() {
            let log = dir.join(format!("n{i}.log"));
            let out = std::fs::File::create(&log).map_err(|e| e.to_string())?;
            let err = out.try_clone().map_err(|e| e.to_string())?;
            let child = Command::new(&spec.binary)
                .args(etcd_flags(&dir, i, *cp, *pp, &initial_cluster.join(",")))
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .spawn()
                .map_err(|e| format!("starting {}: {e}", spec.binary.display()))?;
            if let Some(pf) = &spec.pidfile {
                if let Ok(mut f) = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(pf)
                {
                    let _ = writeln!(f, "{}", child.id());
                }
            }
            cluster.children.push(child);
        }
        let deadline = Instant::now() + READY_TIMEOUT;
        for (i, ep) in cluster.endpoints.clone().iter().enumerate() {
            loop {
                if let Ok(Some(status)) = cluster.children[i].try_wait() {
                    return Err(format!(
                        "{} member n{i} exited ({status}) before serving; log tail:\n{}",
                        spec.kind.name(),
                        tail(&dir.join(format!("n{i}.log")), 2000)
                    ));
                }
                if Instant::now() >= deadline {
                    return Err(format!(
                        "{} member n{i} not serving at {ep} after {READY_TIMEOUT:?}; log tail:\n{}",
                        spec.kind.name(),
                        tail(&dir.join(format!("n{i}.log")), 2000)
                    ));
                }
                if let Ok(Ok(c)) = tokio::time::timeout(
                    Duration::from_secs(2),
                    crate::workload::connect(std::slice::from_ref(ep)),
                )
                .await
                {
                    let mut m = c.maintenance_client();
                    if let Ok(Ok(s)) =
                        tokio::time::timeout(Duration::from_secs(2), m.status()).await
                    {
                        if s.leader() != 0 {
                            break;
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        if spec.nodes > 1 {
            // A binary that ignores cluster flags would serve N independent stores: refuse it.
            let c = crate::workload::connect(&cluster.endpoints[..1]).await?;
            let members = c
                .cluster_client()
                .member_list()
                .await
                .map_err(|e| format!("member list: {e}"))?
                .members()
                .len();
            if members != spec.nodes {
                return Err(format!(
                    "{} did not form a {}-member cluster: member list shows {members}",
                    spec.kind.name(),
                    spec.nodes
                ));
            }
        }
        Ok(cluster)
    }

    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().map(|c| c.id()).collect()
    }

    pub fn rss_bytes(&self) -> u64 {
        self.pids()
            .iter()
            .map(|p| procfs::rss_bytes(*p).unwrap_or(0))
            .sum()
    }

    pub fn data_bytes(&self) -> u64 {
        (0..self.children.len())
            .map(|i| procfs::dir_bytes(&self.dir.join(format!("n{i}"))))
            .sum()
    }

    /// kill -9 of member `i` (by pid), reaped at once.
    pub fn kill(&mut self, i: usize) {
        if let Some(c) = self.children.get_mut(i) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kills every member by pid and waits for it; removes the data directory.
    pub fn stop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.children.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The flags both servers get: etcd's own spelling, so ferrite is started exactly like etcd.
pub fn etcd_flags(
    dir: &Path,
    i: usize,
    client_port: u16,
    peer_port: u16,
    cluster: &str,
) -> Vec<String> {
    let client = format!("http://127.0.0.1:{client_port}");
    let peer = format!("http://127.0.0.1:{peer_port}");
    vec![
        format!("--name=n{i}"),
        format!("--data-dir={}", dir.join(format!("n{i}")).display()),
        format!("--listen-client-urls={client}"),
        format!("--advertise-client-urls={client}"),
        format!("--listen-peer-urls={peer}"),
        format!("--initial-advertise-peer-urls={peer}"),
        format!("--initial-cluster={cluster}"),
        "--initial-cluster-state=new".into(),
        "--initial-cluster-token=ferrite-bench".into(),
        "--logger=zap".into(),
        "--log-level=warn".into(),
    ]
}

/// The `grpc-echo` baseline server (bench/src/bin/grpc-echo.rs) on a free loopback port; killed
/// by pid when dropped.
pub struct Echo {
    pub endpoint: String,
    child: Child,
}

impl Echo {
    /// Starts `binary` and waits until a Put is answered.
    pub async fn start(binary: &Path, pidfile: Option<&Path>) -> Result<Echo, String> {
        let port = free_port().map_err(|e| e.to_string())?;
        let endpoint = format!("http://127.0.0.1:{port}");
        let child = Command::new(binary)
            .args(["--listen", &endpoint])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting {}: {e}", binary.display()))?;
        if let Some(pf) = pidfile {
            if let Ok(mut f) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(pf)
            {
                let _ = writeln!(f, "{}", child.id());
            }
        }
        let mut echo = Echo { endpoint, child };
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok(Some(status)) = echo.child.try_wait() {
                return Err(format!("{} exited ({status})", binary.display()));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{} not serving after {READY_TIMEOUT:?}",
                    binary.display()
                ));
            }
            if let Ok(Ok(c)) = tokio::time::timeout(
                Duration::from_secs(2),
                crate::workload::connect(std::slice::from_ref(&echo.endpoint)),
            )
            .await
            {
                let mut kv = c.kv_client();
                if let Ok(Ok(_)) =
                    tokio::time::timeout(Duration::from_secs(2), kv.put("ready", "", None)).await
                {
                    return Ok(echo);
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
