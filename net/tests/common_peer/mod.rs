//! Test harness for the peer transport: each `Node` is one PeerNet on its own glommio
//! executor thread, driven by commands from the test thread.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use ferrite_net::peer::{ClusterInfo, PeerConfig, PeerNet};
use ferrite_raft::{Message, MessageKind};
use futures_channel::mpsc::{unbounded, UnboundedSender};
use futures_lite::StreamExt;

/// Generous: the test machine is a loaded 2-core box.
pub const WAIT: Duration = Duration::from_secs(30);

/// Runs `make()`'s future to completion on a fresh glommio executor thread (for calls such as
/// `fetch_cluster_info` that must run inside one) and returns its output.
pub fn on_executor<T, F, Fut>(make: F) -> T
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T>,
{
    std::thread::spawn(move || {
        glommio::LocalExecutorBuilder::default()
            .io_memory(1 << 20)
            .make()
            .expect("glommio executor")
            .run(make())
    })
    .join()
    .expect("executor thread")
}

pub enum Cmd {
    SetPeer(u64, Vec<String>),
    RemovePeer(u64),
    SetClusterId(u64),
    Send(Vec<Message>),
    TakeUnreachable(std_mpsc::Sender<Vec<u64>>),
    Close,
}

pub struct Node {
    pub id: u64,
    pub addr: SocketAddr,
    cmds: UnboundedSender<Cmd>,
    pub inbox: std_mpsc::Receiver<Message>,
    thread: Option<std::thread::JoinHandle<()>>,
}

pub struct NodeOpts {
    pub cluster_id: u64,
    pub listen: SocketAddr,
    pub server_tls: Option<Arc<rustls::ServerConfig>>,
    pub client_tls: Option<Arc<rustls::ClientConfig>>,
    pub info: Option<ClusterInfo>,
    pub frame_bytes_max: Option<u32>,
}

impl NodeOpts {
    pub fn new(cluster_id: u64) -> NodeOpts {
        NodeOpts {
            cluster_id,
            listen: "127.0.0.1:0".parse().unwrap(),
            server_tls: None,
            client_tls: None,
            info: None,
            frame_bytes_max: None,
        }
    }
}

impl Node {
    pub fn start(id: u64, opts: NodeOpts) -> Node {
        let (cmd_tx, mut cmd_rx) = unbounded::<Cmd>();
        let (in_tx, in_rx) = std_mpsc::channel();
        let (addr_tx, addr_rx) = std_mpsc::channel();
        let thread = std::thread::spawn(move || {
            let ex = glommio::LocalExecutorBuilder::default()
                .name(&format!("peer-test-{id}"))
                .io_memory(1 << 20)
                .make()
                .expect("glommio executor");
            ex.run(async move {
                let mut cfg = PeerConfig::new(id, opts.cluster_id, vec![opts.listen]);
                cfg.server_tls = opts.server_tls;
                cfg.client_tls = opts.client_tls;
                cfg.dial_timeout = Duration::from_secs(15);
                if let Some(m) = opts.frame_bytes_max {
                    cfg.frame_bytes_max = m;
                }
                let info = opts.info.unwrap_or(ClusterInfo {
                    cluster_id: opts.cluster_id,
                    members: Vec::new(),
                });
                let (net, mut rx) = match PeerNet::start(cfg, Rc::new(move || info.clone())) {
                    Ok(x) => x,
                    Err(e) => {
                        addr_tx.send(Err(e)).unwrap();
                        return;
                    }
                };
                addr_tx.send(Ok(net.local_addrs()[0])).unwrap();
                let fwd = glommio::spawn_local(async move {
                    while let Some(m) = rx.next().await {
                        if in_tx.send(m).is_err() {
                            return;
                        }
                    }
                })
                .detach();
                while let Some(cmd) = cmd_rx.next().await {
                    match cmd {
                        Cmd::SetPeer(id, urls) => net.set_peer(id, urls),
                        Cmd::RemovePeer(id) => net.remove_peer(id),
                        Cmd::SetClusterId(c) => net.set_cluster_id(c),
                        Cmd::Send(msgs) => net.send(msgs),
                        Cmd::TakeUnreachable(tx) => {
                            let _ = tx.send(net.take_unreachable());
                        }
                        Cmd::Close => break,
                    }
                }
                net.close().await;
                // The inbound channel ends once every connection task is gone.
                fwd.await;
            });
        });
        let addr = addr_rx
            .recv_timeout(WAIT)
            .expect("node thread started")
            .expect("PeerNet::start");
        Node {
            id,
            addr,
            cmds: cmd_tx,
            inbox: in_rx,
            thread: Some(thread),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn cmd(&self, c: Cmd) {
        self.cmds.unbounded_send(c).expect("node thread alive");
    }

    pub fn set_peer(&self, id: u64, urls: Vec<String>) {
        self.cmd(Cmd::SetPeer(id, urls));
    }

    pub fn send(&self, msgs: Vec<Message>) {
        self.cmd(Cmd::Send(msgs));
    }

    pub fn take_unreachable(&self) -> Vec<u64> {
        let (tx, rx) = std_mpsc::channel();
        self.cmd(Cmd::TakeUnreachable(tx));
        rx.recv_timeout(WAIT).expect("take_unreachable answered")
    }

    /// Waits until `id` is reported unreachable (polling).
    pub fn wait_unreachable(&self, id: u64) {
        let deadline = Instant::now() + WAIT;
        loop {
            if self.take_unreachable().contains(&id) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "peer {id} never reported unreachable"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn recv(&self) -> Message {
        self.inbox
            .recv_timeout(WAIT)
            .expect("a message arrived in time")
    }

    /// The next message whose `seq` is at least `seq_min` (stale probes from
    /// `probe_until_delivered` still in flight are skipped).
    pub fn recv_seq_from(&self, seq_min: u64) -> u64 {
        loop {
            let m = self.recv();
            if m.seq >= seq_min {
                return m.seq;
            }
        }
    }

    /// Closes the PeerNet and joins its thread.
    pub fn stop(mut self) {
        self.cmd(Cmd::Close);
        if let Some(t) = self.thread.take() {
            t.join().expect("node thread");
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            let _ = self.cmds.unbounded_send(Cmd::Close);
            let _ = t.join();
        }
    }
}

/// A heartbeat carrying `seq`, handy as a numbered probe.
pub fn probe(from: u64, to: u64, seq: u64) -> Message {
    let mut m = Message::new(MessageKind::Heartbeat, from, to, 1);
    m.seq = seq;
    m
}

/// Sends numbered probes from `a` to `b` until one arrives; returns the seq that arrived
/// first. Messages sent while a connection comes up may be lost: that is the contract.
pub fn probe_until_delivered(a: &Node, b: &Node, seq_base: u64) -> u64 {
    let deadline = Instant::now() + WAIT;
    let mut seq = seq_base;
    loop {
        a.send(vec![probe(a.id, b.id, seq)]);
        seq += 1;
        if let Ok(m) = b.inbox.recv_timeout(Duration::from_millis(100)) {
            assert_eq!(m.kind, MessageKind::Heartbeat);
            assert_eq!(m.from, a.id);
            assert!(
                m.seq >= seq_base && m.seq < seq,
                "probe seq {} out of range",
                m.seq
            );
            // Drain the probes still in flight.
            while b.inbox.recv_timeout(Duration::from_millis(300)).is_ok() {}
            return m.seq;
        }
        assert!(
            Instant::now() < deadline,
            "no probe from {} reached {}",
            a.id,
            b.id
        );
    }
}

/// A free 127.0.0.1 port (bound then released).
pub fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// Captured log lines (every `tracing` event, fields as `name=value`).
pub fn logs() -> &'static Mutex<Vec<String>> {
    static LOGS: OnceLock<Mutex<Vec<String>>> = OnceLock::new();
    static INIT: OnceLock<()> = OnceLock::new();
    let logs = LOGS.get_or_init(|| Mutex::new(Vec::new()));
    INIT.get_or_init(|| {
        use tracing_subscriber::layer::SubscriberExt;
        let sub = tracing_subscriber::registry().with(Capture);
        tracing::subscriber::set_global_default(sub).expect("one global subscriber");
    });
    logs
}

struct Capture;

struct Fields(String);

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        use std::fmt::Write;
        let _ = write!(self.0, " {}={:?}", field.name(), value);
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Capture {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let mut f = Fields(String::new());
        event.record(&mut f);
        eprintln!("log:{}", f.0);
        if let Some(l) = LOGS_REF.get() {
            l.lock().unwrap().push(f.0);
        }
    }
}

static LOGS_REF: OnceLock<&'static Mutex<Vec<String>>> = OnceLock::new();

/// Installs the capture and returns the log store.
pub fn capture_logs() -> &'static Mutex<Vec<String>> {
    let l = logs();
    let _ = LOGS_REF.set(l);
    l
}

/// Waits until a captured log line contains every one of `needles`.
pub fn wait_log(needles: &[&str]) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(l) = capture_logs()
            .lock()
            .unwrap()
            .iter()
            .find(|l| needles.iter().all(|n| l.contains(n)))
        {
            return l.clone();
        }
        assert!(Instant::now() < deadline, "no log line with {needles:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
