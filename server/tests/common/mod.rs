//! Test harness shared by the server's integration tests: starts a server binary on free loopback
//! ports with a fresh data directory, waits until it serves, and kills it by pid when dropped.
//!
//! The binary is ferrite (`CARGO_BIN_EXE_ferrite`) unless `FERRITE_TEST_TARGET=etcd`, which runs
//! Debian's etcd 3.4 (`/usr/bin/etcd`, or `$FERRITE_TEST_ETCD`) with exactly the same flags, so
//! every test can be checked against the reference first.
#![allow(dead_code)]

pub mod certs;
pub mod member;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long a fresh server may take to answer Status with a leader.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Default bound on one etcdctl invocation.
pub const ETCDCTL_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Ferrite,
    Etcd,
}

impl Target {
    /// `FERRITE_TEST_TARGET=etcd` selects the reference; anything else (or unset) is ferrite.
    pub fn from_env() -> Target {
        match std::env::var("FERRITE_TEST_TARGET").as_deref() {
            Ok("etcd") => Target::Etcd,
            Ok("ferrite") | Ok("") | Err(_) => Target::Ferrite,
            Ok(other) => panic!("FERRITE_TEST_TARGET={other:?}: expected \"etcd\" or \"ferrite\""),
        }
    }

    pub fn binary(self) -> PathBuf {
        match self {
            Target::Ferrite => PathBuf::from(env!("CARGO_BIN_EXE_ferrite")),
            Target::Etcd => std::env::var_os("FERRITE_TEST_ETCD")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/usr/bin/etcd")),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Target::Ferrite => "ferrite",
            Target::Etcd => "etcd",
        }
    }
}

/// A fresh temporary directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let p = std::env::temp_dir().join(format!(
            "ferrite-test-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral port")
        .port()
}

/// A running server: one member, on loopback.
pub struct Server {
    pub target: Target,
    pub client_port: u16,
    pub peer_port: u16,
    /// `http://127.0.0.1:<client_port>`
    pub endpoint: String,
    pub name: String,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
    dir: TempDir,
    /// The command line, for `restart`.
    args: Vec<std::ffi::OsString>,
}

impl Server {
    /// Starts the target chosen by `FERRITE_TEST_TARGET`.
    pub fn start() -> Server {
        Server::start_target(Target::from_env(), &[])
    }

    /// Starts `target` with etcd's standard single-member flags plus `extra` flags.
    pub fn start_target(target: Target, extra: &[&str]) -> Server {
        let dir = TempDir::new(target.name());
        let (client_port, peer_port) = (free_port(), free_port());
        let endpoint = format!("http://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let name = "n0".to_string();
        let data_dir = dir.path().join("data");
        let log = dir.path().join("server.log");
        let out = std::fs::File::create(&log).expect("create log");
        let err = out.try_clone().expect("clone log handle");
        let mut cmd = Command::new(target.binary());
        cmd.arg(format!("--name={name}"))
            .arg(format!("--data-dir={}", data_dir.display()))
            .arg(format!("--listen-client-urls={endpoint}"))
            .arg(format!("--advertise-client-urls={endpoint}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster={name}={peer}"))
            .arg("--initial-cluster-state=new")
            .arg("--logger=zap")
            .args(extra);
        let args: Vec<std::ffi::OsString> = cmd.get_args().map(|a| a.to_owned()).collect();
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", target.binary().display()));
        let mut s = Server {
            target,
            client_port,
            peer_port,
            endpoint,
            name,
            data_dir,
            log,
            child: Some(child),
            dir,
            args,
        };
        s.wait_ready();
        s
    }

    /// Kills the server and starts it again on the same data dir and ports.
    pub fn restart(&mut self) {
        self.kill();
        let out = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.log)
            .expect("open log");
        let err = out.try_clone().expect("clone log handle");
        let child = Command::new(self.target.binary())
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("restarting {}: {e}", self.target.name()));
        self.child = Some(child);
        self.wait_ready();
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn log_tail(&self, bytes: usize) -> String {
        let s = std::fs::read(&self.log).unwrap_or_default();
        String::from_utf8_lossy(&s[s.len().saturating_sub(bytes)..]).into_owned()
    }

    /// A directory next to the server's, removed with it.
    pub fn scratch(&self) -> &Path {
        self.dir.path()
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        let endpoint = self.endpoint.clone();
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "{} exited ({status}) before serving; log:\n{}",
                    self.target.name(),
                    self.log_tail(4000)
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "{} not serving on {endpoint} after {READY_TIMEOUT:?}; log:\n{}",
                    self.target.name(),
                    self.log_tail(4000)
                );
            }
            if status_has_leader(&endpoint) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs etcdctl (API v3) against this server, bounded by `ETCDCTL_TIMEOUT`.
    pub fn etcdctl(&self, args: &[&str]) -> Output {
        self.etcdctl_with(args, None, ETCDCTL_TIMEOUT)
    }

    /// etcdctl with optional standard input and an explicit bound (the process is killed at it).
    pub fn etcdctl_with(&self, args: &[&str], stdin: Option<&str>, limit: Duration) -> Output {
        let mut cmd = Command::new("etcdctl");
        cmd.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.endpoint))
            .args(args);
        run_bounded(cmd, stdin, limit)
    }

    /// Kills the server by pid (SIGKILL) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- {} log tail ({}) ----\n{}",
                self.target.name(),
                self.log.display(),
                self.log_tail(3000)
            );
        }
        self.kill();
    }
}

/// Whether the server answers Status with a leader, checked with the etcd-client crate on a
/// private runtime in its own thread (so callers may be inside a tokio runtime or not).
pub fn status_has_leader(endpoint: &str) -> bool {
    let ep = endpoint.to_string();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let opts = etcd_client::ConnectOptions::new()
                .with_connect_timeout(Duration::from_secs(1))
                .with_timeout(Duration::from_secs(2));
            let Ok(Ok(c)) = tokio::time::timeout(
                Duration::from_secs(2),
                etcd_client::Client::connect([ep], Some(opts)),
            )
            .await
            else {
                return false;
            };
            let mut m = c.maintenance_client();
            matches!(
                tokio::time::timeout(Duration::from_secs(2), m.status()).await,
                Ok(Ok(s)) if s.leader() != 0
            )
        })
    })
    .join()
    .unwrap_or(false)
}

/// Runs a command with a time bound: it is killed (by pid) at `limit`; output is whatever it
/// printed until then.
pub fn run_bounded(mut cmd: Command, stdin: Option<&str>, limit: Duration) -> Output {
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    if let Some(input) = stdin {
        use std::io::Write;
        let mut w = child.stdin.take().expect("piped stdin");
        w.write_all(input.as_bytes()).expect("write stdin");
    }
    let mut out = child.stdout.take().expect("piped");
    let mut err = child.stderr.take().expect("piped");
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            break s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            break child.wait().expect("wait");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: t_out.join().unwrap_or_default(),
        stderr: t_err.join().unwrap_or_default(),
    }
}

/// stdout as text; panics with both streams when the command failed.
pub fn ok_text(o: &Output, what: &str) -> String {
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "{what} failed ({}):\nstdout: {out}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

/// stderr as text; panics when the command unexpectedly succeeded.
pub fn err_text(o: &Output, what: &str) -> String {
    assert!(
        !o.status.success(),
        "{what} should have failed; stdout: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// curl with `args` (silent, 10 s limit), bounded at 15 s; its stdout (empty when the
/// connection, TLS handshake or request failed).
pub fn curl(args: &[&str]) -> String {
    let mut c = Command::new("curl");
    c.args(["-s", "-m", "10"]).args(args);
    String::from_utf8_lossy(&run_bounded(c, None, Duration::from_secs(15)).stdout).into_owned()
}
