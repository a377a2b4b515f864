//! One member process of a test cluster on loopback (ferrite, or etcd 3.4 with the same
//! flags): its URLs and data directory, started with etcd's cluster flags plus per-test
//! extras, killed by pid when dropped (printing its log tail if the test is failing).
//! Shared by `cluster_basic` and `cluster_tls`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::{free_port, Target};

/// Test cluster timing (etcd's flags): heartbeat and election timeout in milliseconds.
pub const HEARTBEAT_MS: u64 = 100;
pub const ELECTION_MS: u64 = 1000;

pub struct Member {
    pub name: String,
    /// `http://127.0.0.1:<port>` (or https, see [`Member::client_scheme`]).
    pub client: String,
    pub peer: String,
    /// `--listen-metrics-urls`, if any.
    pub metrics: Option<String>,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    token: String,
    /// Flags given on every start.
    extra: Vec<String>,
    child: Option<Child>,
}

impl Member {
    /// A member named `name` with fresh loopback ports, plain http on both, data and log
    /// under `dir`, in the cluster `--initial-cluster-token=token`.
    pub fn new(dir: &Path, name: &str, token: &str) -> Member {
        Member {
            name: name.to_string(),
            client: format!("http://127.0.0.1:{}", free_port()),
            peer: format!("http://127.0.0.1:{}", free_port()),
            metrics: None,
            data_dir: dir.join(format!("{name}.data")),
            log: dir.join(format!("{name}.log")),
            token: token.to_string(),
            extra: Vec::new(),
            child: None,
        }
    }

    /// The client URL with `scheme` ("http" or "https").
    pub fn client_scheme(mut self, scheme: &str) -> Member {
        self.client = with_scheme(&self.client, scheme);
        self
    }

    /// The peer URL with `scheme`.
    pub fn peer_scheme(mut self, scheme: &str) -> Member {
        self.peer = with_scheme(&self.peer, scheme);
        self
    }

    /// Adds a `--listen-metrics-urls` URL with `scheme` on a fresh port.
    pub fn with_metrics(mut self, scheme: &str) -> Member {
        self.metrics = Some(format!("{scheme}://127.0.0.1:{}", free_port()));
        self
    }

    /// Flags given on every start.
    pub fn with_args(mut self, extra: &[String]) -> Member {
        self.extra.extend_from_slice(extra);
        self
    }

    pub fn start(&mut self, target: Target, initial_cluster: &str, state: &str) {
        self.start_with(target, initial_cluster, state, &[]);
    }

    /// Starts the member with this start's `more` flags besides the member's own.
    pub fn start_with(
        &mut self,
        target: Target,
        initial_cluster: &str,
        state: &str,
        more: &[String],
    ) {
        assert!(self.child.is_none(), "{} already running", self.name);
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let err = out.try_clone().expect("clone log");
        let mut cmd = Command::new(target.binary());
        cmd.arg(format!("--name={}", self.name))
            .arg(format!("--data-dir={}", self.data_dir.display()))
            .arg(format!("--listen-client-urls={}", self.client))
            .arg(format!("--advertise-client-urls={}", self.client))
            .arg(format!("--listen-peer-urls={}", self.peer))
            .arg(format!("--initial-advertise-peer-urls={}", self.peer))
            .arg(format!("--initial-cluster={initial_cluster}"))
            .arg(format!("--initial-cluster-state={state}"))
            .arg(format!("--initial-cluster-token={}", self.token))
            .arg(format!("--heartbeat-interval={HEARTBEAT_MS}"))
            .arg(format!("--election-timeout={ELECTION_MS}"))
            .args(&self.extra)
            .args(more)
            .arg("--logger=zap")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        if let Some(m) = &self.metrics {
            cmd.arg(format!("--listen-metrics-urls={m}"));
        }
        if target == Target::Ferrite {
            cmd.arg("--cores=1");
        }
        self.child = Some(cmd.spawn().expect("start member"));
    }

    /// The running process's pid.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Has the process exited by itself?
    pub fn exited(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => c.try_wait().ok().flatten().is_some(),
            None => true,
        }
    }

    /// Waits up to `limit` for the process to exit by itself; true if it did (and failed).
    pub fn exits_with_failure(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let Some(c) = self.child.as_mut() else {
            return true;
        };
        loop {
            if let Some(st) = c.try_wait().expect("try_wait") {
                return !st.success();
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log_text(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log).unwrap_or_default()).into_owned()
    }

    /// The last 3,000 bytes of the log.
    pub fn log_tail(&self) -> String {
        let s = std::fs::read(&self.log).unwrap_or_default();
        String::from_utf8_lossy(&s[s.len().saturating_sub(3000)..]).into_owned()
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- {} log tail ----\n{}", self.name, self.log_tail());
        }
        self.kill9();
    }
}

fn with_scheme(url: &str, scheme: &str) -> String {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    format!("{scheme}://{rest}")
}

/// `--initial-cluster` for these members: `name=peer-url,...`.
pub fn initial_cluster(members: &[Member]) -> String {
    members
        .iter()
        .map(|m| format!("{}={}", m.name, m.peer))
        .collect::<Vec<_>>()
        .join(",")
}

/// etcdctl (v3 API, plain http) against `endpoints`, bounded by `limit`.
pub fn etcdctl_at(endpoints: &str, args: &[&str], limit: Duration) -> Output {
    let mut cmd = Command::new("etcdctl");
    cmd.env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoints}"))
        .arg("--command-timeout=10s")
        .args(args);
    super::run_bounded(cmd, None, limit)
}

/// A command's stdout and stderr, as text.
pub fn output_text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Retries `f` every 200 ms until it returns `Some`; panics naming `what` after `limit`.
pub fn wait_until<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}
