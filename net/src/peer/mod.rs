//! The peer transport: Raft messages between cluster members over glommio TCP (optionally
//! TLS) on the peer port, plus the cluster-info request a joining member makes.
//!
//! # Shape
//!
//! - A connection starts with a fixed-size hello from the dialer (magic, protocol version,
//!   kind, cluster id, sender id, receiver id) and a reply from the acceptor; a cluster id or
//!   receiver mismatch is refused and logged on both sides ("request cluster ID mismatch").
//! - Then the dialer streams frames (length, crc32c, flatbuffer `Message`) one way. Each peer
//!   gets one outbound connection, written by one task from a bounded per-peer queue; frames
//!   queued while a write is in flight go out together in the next write (many frames per
//!   syscall). Inbound connections are read by one task each, which delivers decoded messages
//!   on the channel [`PeerNet::start`] returns.
//! - [`PeerNet::send`] never blocks or awaits: it encodes and queues. A full queue drops the
//!   message and marks the peer unreachable; so does a failed dial or write (the queued and
//!   in-flight messages are lost, as on a lossy network: Raft retransmits). The writer redials
//!   with bounded exponential backoff ([`BACKOFF_MIN`] → [`BACKOFF_MAX`]).
//! - Outbound connections are dialed as soon as a peer is known and kept open without traffic
//!   (as etcd's peer streams are), so [`PeerNet::active_since`] tells whether a peer is up:
//!   the server's reconfiguration checks (`--strict-reconfig-check`) use it.
//!   [`PeerNet::take_unreachable`] hands the unreachable set to the Raft core.
//!
//! # Invariants
//!
//! - Frames on one connection are delivered in the order they were queued; messages to one
//!   peer are never reordered (one connection per peer at a time), but may be lost.
//! - Inbound messages are verified (checksum, flatbuffer verifier, ferrite_raft invariants) and
//!   must come from the hello's sender to this member; anything else closes that connection
//!   only.
//! - Everything runs on the glommio executor that called [`PeerNet::start`]; `PeerNet` is
//!   `!Send`.
//!
//! # Non-goals
//!
//! - No flow control beyond the queue bounds (Raft's own inflight limits do that).
//! - No per-message acknowledgement: delivery is best effort, as Raft expects.

mod codec;
#[rustfmt::skip]
#[allow(warnings, clippy::all, clippy::pedantic, missing_docs)]
mod peer_generated;

pub use codec::{
    decode_cluster_info, decode_frame, decode_hello, decode_hello_reply, decode_message,
    encode_cluster_info, encode_hello, encode_hello_reply, encode_message, put_frame,
    put_message_frame, Hello, HelloKind, HelloReply, HelloStatus, FRAME_HEADER_BYTES, HELLO_BYTES,
    HELLO_MAGIC, HELLO_REPLY_BYTES, PROTOCOL_VERSION,
};
pub use peer_generated::ferrite::peer::fb;

use std::cell::{Cell, RefCell};
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::future::Future;
use std::net::{SocketAddr, ToSocketAddrs};
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use ferrite_raft::Message;
use flatbuffers::FlatBufferBuilder;
use futures_channel::mpsc::{unbounded, UnboundedReceiver, UnboundedSender};
use futures_lite::io::{AsyncReadExt, AsyncWriteExt, BufReader, WriteHalf};
use glommio::net::{TcpListener, TcpStream};
use glommio::task::JoinHandle;

use crate::server::BoxStream;

/// Default largest frame payload accepted or sent (a snapshot chunk of a few MiB fits).
pub const FRAME_BYTES_MAX_DEFAULT: u32 = 16 << 20;
/// Default bound on the bytes queued for one peer (encoded frames).
pub const QUEUE_BYTES_MAX_DEFAULT: u64 = 64 << 20;
/// Default bound on the messages queued for one peer.
pub const QUEUE_MSGS_MAX_DEFAULT: usize = 4096;
/// First redial delay after a failed dial or write.
pub const BACKOFF_MIN: Duration = Duration::from_millis(50);
/// Largest redial delay (the delay doubles per consecutive failure up to this).
pub const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Default time a dial (TCP connect + TLS + hello reply) may take.
pub const DIAL_TIMEOUT_DEFAULT: Duration = Duration::from_secs(1);
/// Default time one write (a batch of frames) may take before the connection is dropped
/// (etcd's ConnWriteTimeout): a partitioned peer whose socket buffer is full.
pub const WRITE_TIMEOUT_DEFAULT: Duration = Duration::from_secs(5);
/// Time an accepted connection has to complete TLS and send its hello.
pub const ACCEPT_HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// Frames are coalesced into one write buffer up to this size; larger frames go out alone.
pub const WRITE_COALESCE_BYTES_MAX: usize = 256 << 10;
/// Inbound connections served at once; more are closed on accept (a cluster has a handful of
/// members, each with one outbound connection to us, plus short cluster-info requests).
pub const INBOUND_CONNS_MAX: usize = 1024;
/// Read buffer of an inbound connection.
const READ_BUFFER_BYTES: usize = 64 << 10;
/// Largest cluster-info answer accepted.
pub const CLUSTER_INFO_BYTES_MAX: u32 = 1 << 20;

const _: () = assert!(BACKOFF_MIN.as_millis() < BACKOFF_MAX.as_millis());
const _: () = assert!(WRITE_COALESCE_BYTES_MAX < FRAME_BYTES_MAX_DEFAULT as usize);

/// Errors of the peer transport.
#[derive(Debug)]
pub enum PeerError {
    /// A socket or TLS error.
    Io(std::io::Error),
    /// Bytes that are not a valid hello, frame or payload.
    Decode(String),
    /// A frame header announcing more than the frame limit.
    FrameTooLarge {
        /// Announced payload length.
        len: u32,
        /// The limit.
        max: u32,
    },
    /// The remote refused our hello.
    Refused {
        /// Its verdict.
        status: HelloStatus,
        /// Its cluster id.
        remote_cluster_id: u64,
        /// Its member id.
        remote_member_id: u64,
        /// Its address.
        addr: SocketAddr,
    },
    /// A peer URL that cannot be used.
    BadUrl(String),
    /// The operation did not finish in time.
    Timeout,
}

impl std::fmt::Display for PeerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PeerError::Io(e) => write!(f, "peer i/o: {e}"),
            PeerError::Decode(s) => write!(f, "peer protocol: {s}"),
            PeerError::FrameTooLarge { len, max } => {
                write!(f, "peer frame of {len} bytes exceeds the limit of {max}")
            }
            PeerError::Refused {
                status,
                remote_cluster_id,
                remote_member_id,
                addr,
            } => write!(
                f,
                "peer {addr} (member {remote_member_id:x}, cluster {remote_cluster_id:x}) refused the connection: {status:?}"
            ),
            PeerError::BadUrl(s) => write!(f, "bad peer URL: {s}"),
            PeerError::Timeout => write!(f, "peer operation timed out"),
        }
    }
}

impl std::error::Error for PeerError {}

impl From<std::io::Error> for PeerError {
    fn from(e: std::io::Error) -> Self {
        PeerError::Io(e)
    }
}

/// How to run the peer transport.
#[derive(Clone)]
pub struct PeerConfig {
    /// This member's id (nonzero).
    pub local_id: u64,
    /// The cluster id; 0 = not yet known (a joining member): then inbound hellos of any
    /// cluster are accepted until [`PeerNet::set_cluster_id`].
    pub cluster_id: u64,
    /// Addresses to listen on (port 0 picks a free port; see [`PeerNet::local_addrs`]).
    pub listen: Vec<SocketAddr>,
    /// TLS for accepted connections (`None`: plain TCP).
    pub server_tls: Option<Arc<rustls::ServerConfig>>,
    /// TLS for dialed `https://` peer URLs.
    pub client_tls: Option<Arc<rustls::ClientConfig>>,
    /// Largest frame payload sent or accepted.
    pub frame_bytes_max: u32,
    /// Bound on bytes queued per peer.
    pub queue_bytes_max: u64,
    /// Bound on messages queued per peer.
    pub queue_msgs_max: usize,
    /// Time a dial may take.
    pub dial_timeout: Duration,
    /// Time one batched write may take before the connection is dropped.
    pub write_timeout: Duration,
}

impl PeerConfig {
    /// A plain-TCP configuration with default limits.
    pub fn new(local_id: u64, cluster_id: u64, listen: Vec<SocketAddr>) -> PeerConfig {
        PeerConfig {
            local_id,
            cluster_id,
            listen,
            server_tls: None,
            client_tls: None,
            frame_bytes_max: FRAME_BYTES_MAX_DEFAULT,
            queue_bytes_max: QUEUE_BYTES_MAX_DEFAULT,
            queue_msgs_max: QUEUE_MSGS_MAX_DEFAULT,
            dial_timeout: DIAL_TIMEOUT_DEFAULT,
            write_timeout: WRITE_TIMEOUT_DEFAULT,
        }
    }
}

/// One member as the cluster-info answer describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberInfo {
    /// Member id.
    pub id: u64,
    /// Member name (empty for a member that has not started yet).
    pub name: String,
    /// Peer URLs.
    pub peer_urls: Vec<String>,
    /// Client URLs.
    pub client_urls: Vec<String>,
    /// A learner (non-voting member).
    pub is_learner: bool,
}

/// The cluster-info answer: what a joining member learns from a running one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterInfo {
    /// The cluster id.
    pub cluster_id: u64,
    /// Every member.
    pub members: Vec<MemberInfo>,
}

struct Peer {
    id: u64,
    urls: RefCell<Vec<String>>,
    /// Bumped by `set_peer` when the URLs change: the writer redials.
    urls_gen: Cell<u64>,
    queue: RefCell<VecDeque<Vec<u8>>>,
    queued_bytes: Cell<u64>,
    waker: RefCell<Option<Waker>>,
    removed: Cell<bool>,
    task: RefCell<Option<JoinHandle<()>>>,
    /// Since when the outbound connection has been up without a break (etcd's
    /// `ActiveSince`); `None` while it is down.
    active_since: Cell<Option<Instant>>,
}

impl Peer {
    fn wake(&self) {
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }

    fn clear_queue(&self) {
        self.queue.borrow_mut().clear();
        self.queued_bytes.set(0);
    }
}

struct Shared {
    local_id: u64,
    cluster_id: Cell<u64>,
    client_tls: Option<Arc<rustls::ClientConfig>>,
    server_tls: Option<Arc<rustls::ServerConfig>>,
    frame_bytes_max: u32,
    queue_bytes_max: u64,
    queue_msgs_max: usize,
    dial_timeout: Duration,
    write_timeout: Duration,
    peers: RefCell<HashMap<u64, Rc<Peer>>>,
    unreachable: RefCell<BTreeSet<u64>>,
    closed: Cell<bool>,
    inbound: UnboundedSender<Message>,
    info: Rc<dyn Fn() -> ClusterInfo>,
    conns: RefCell<HashMap<u64, JoinHandle<()>>>,
    conn_next: Cell<u64>,
    fbb: RefCell<FlatBufferBuilder<'static>>,
}

/// The peer transport of one member. See the module doc.
pub struct PeerNet {
    shared: Rc<Shared>,
    local_addrs: Vec<SocketAddr>,
    accept_tasks: Vec<JoinHandle<()>>,
}

impl PeerNet {
    /// Binds the listeners and spawns the accept task(s) on the current glommio executor.
    /// `info` answers cluster-info requests (called on this executor).
    pub fn start(
        cfg: PeerConfig,
        info: Rc<dyn Fn() -> ClusterInfo>,
    ) -> std::io::Result<(PeerNet, UnboundedReceiver<Message>)> {
        assert!(
            cfg.local_id != 0,
            "peer transport needs a nonzero member id"
        );
        assert!(cfg.frame_bytes_max as usize > FRAME_HEADER_BYTES);
        assert!(cfg.queue_msgs_max > 0 && cfg.queue_bytes_max > 0);
        let (tx, rx) = unbounded();
        let shared = Rc::new(Shared {
            local_id: cfg.local_id,
            cluster_id: Cell::new(cfg.cluster_id),
            client_tls: cfg.client_tls,
            server_tls: cfg.server_tls,
            frame_bytes_max: cfg.frame_bytes_max,
            queue_bytes_max: cfg.queue_bytes_max,
            queue_msgs_max: cfg.queue_msgs_max,
            dial_timeout: cfg.dial_timeout,
            write_timeout: cfg.write_timeout,
            peers: RefCell::new(HashMap::new()),
            unreachable: RefCell::new(BTreeSet::new()),
            closed: Cell::new(false),
            inbound: tx,
            info,
            conns: RefCell::new(HashMap::new()),
            conn_next: Cell::new(0),
            fbb: RefCell::new(FlatBufferBuilder::with_capacity(4096)),
        });
        let mut listeners = Vec::new();
        let mut local_addrs = Vec::new();
        for addr in &cfg.listen {
            let l = TcpListener::bind(addr)?;
            local_addrs.push(l.local_addr()?);
            listeners.push(l);
        }
        let accept_tasks = listeners
            .into_iter()
            .map(|l| glommio::spawn_local(accept_loop(shared.clone(), l)).detach())
            .collect();
        Ok((
            PeerNet {
                shared,
                local_addrs,
                accept_tasks,
            },
            rx,
        ))
    }

    /// Adds a peer or updates its URLs (`http://host:port` or `https://host:port`). The local
    /// member itself is ignored (nothing is ever sent to it).
    pub fn set_peer(&self, id: u64, peer_urls: Vec<String>) {
        assert!(id != 0, "peer id 0");
        if id == self.shared.local_id {
            return;
        }
        let existing = self.shared.peers.borrow().get(&id).cloned();
        if let Some(p) = existing {
            if *p.urls.borrow() != peer_urls {
                *p.urls.borrow_mut() = peer_urls;
                p.urls_gen.set(p.urls_gen.get() + 1);
                p.wake();
            }
            return;
        }
        let p = Rc::new(Peer {
            id,
            urls: RefCell::new(peer_urls),
            urls_gen: Cell::new(0),
            queue: RefCell::new(VecDeque::new()),
            queued_bytes: Cell::new(0),
            waker: RefCell::new(None),
            removed: Cell::new(false),
            task: RefCell::new(None),
            active_since: Cell::new(None),
        });
        let task = glommio::spawn_local(writer_loop(self.shared.clone(), p.clone())).detach();
        *p.task.borrow_mut() = Some(task);
        self.shared.peers.borrow_mut().insert(id, p);
    }

    /// Forgets a peer: its queue is dropped and its connection closed.
    pub fn remove_peer(&self, id: u64) {
        if let Some(p) = self.shared.peers.borrow_mut().remove(&id) {
            p.removed.set(true);
            p.clear_queue();
            p.wake();
        }
        self.shared.unreachable.borrow_mut().remove(&id);
    }

    /// Sets the cluster id (a joining member learns it late). Outbound connections opened
    /// from now on carry it.
    pub fn set_cluster_id(&self, cluster_id: u64) {
        self.shared.cluster_id.set(cluster_id);
    }

    /// Queues messages for their peers (`Message::to`). Never blocks. Messages to unknown
    /// peers, or to a peer whose queue is full, are dropped and the peer is reported by
    /// [`PeerNet::take_unreachable`].
    pub fn send(&self, msgs: Vec<Message>) {
        let shared = &self.shared;
        if shared.closed.get() {
            return;
        }
        let peers = shared.peers.borrow();
        let mut fbb = shared.fbb.borrow_mut();
        let mut big = false;
        for m in msgs {
            debug_assert_eq!(m.from, shared.local_id, "sending a message not from us");
            let Some(p) = peers.get(&m.to) else {
                shared.unreachable.borrow_mut().insert(m.to);
                continue;
            };
            let mut frame = Vec::new();
            put_message_frame(&mut fbb, &mut frame, &m);
            let payload_len = frame.len() - FRAME_HEADER_BYTES;
            big |= payload_len > WRITE_COALESCE_BYTES_MAX * 4;
            if payload_len > shared.frame_bytes_max as usize {
                tracing::warn!(
                    "remote-peer-id" = %format!("{:x}", m.to),
                    "message-type" = ?m.kind,
                    size = payload_len,
                    limit = shared.frame_bytes_max,
                    "dropped a message larger than the peer frame limit"
                );
                shared.unreachable.borrow_mut().insert(m.to);
                continue;
            }
            let mut q = p.queue.borrow_mut();
            let bytes = p.queued_bytes.get() + frame.len() as u64;
            if q.len() >= shared.queue_msgs_max || bytes > shared.queue_bytes_max {
                shared.unreachable.borrow_mut().insert(m.to);
                continue;
            }
            p.queued_bytes.set(bytes);
            q.push_back(frame);
            drop(q);
            p.wake();
        }
        // A huge snapshot chunk should not pin its capacity in the shared builder.
        if big {
            *fbb = FlatBufferBuilder::with_capacity(4096);
        }
    }

    /// The peers that could not be reached since the last call (failed dial or write, full
    /// queue, unknown id), ascending.
    pub fn take_unreachable(&self) -> Vec<u64> {
        std::mem::take(&mut *self.shared.unreachable.borrow_mut())
            .into_iter()
            .collect()
    }

    /// Since when the connection to peer `id` has been up without a break (etcd's
    /// `Transporter.ActiveSince`); `None` for an unknown peer or one that is not connected.
    /// Connections are kept open whether or not there is traffic, so a live peer is active.
    pub fn active_since(&self, id: u64) -> Option<Instant> {
        self.shared
            .peers
            .borrow()
            .get(&id)
            .and_then(|p| p.active_since.get())
    }

    /// The bound listen addresses (port 0 resolved).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.local_addrs.clone()
    }

    /// Stops listening, closes every connection and drops every queue, and waits for the
    /// tasks to be gone. The inbound channel then ends. (Dropping a `PeerNet` does the same
    /// without waiting.)
    pub async fn close(mut self) {
        for t in self.stop_tasks() {
            t.await;
        }
    }

    /// Marks the transport closed and cancels every task; returns their handles.
    fn stop_tasks(&mut self) -> Vec<JoinHandle<()>> {
        let shared = &self.shared;
        shared.closed.set(true);
        let mut tasks = std::mem::take(&mut self.accept_tasks);
        let peers: Vec<Rc<Peer>> = shared.peers.borrow_mut().drain().map(|(_, p)| p).collect();
        for p in peers {
            p.removed.set(true);
            p.clear_queue();
            tasks.extend(p.task.borrow_mut().take());
        }
        tasks.extend(shared.conns.borrow_mut().drain().map(|(_, t)| t));
        for t in &tasks {
            t.cancel();
        }
        tasks
    }
}

impl Drop for PeerNet {
    fn drop(&mut self) {
        if !self.shared.closed.get() {
            self.stop_tasks();
        }
    }
}

/// Runs `fut` for at most `dur`.
async fn within<T>(dur: Duration, fut: impl Future<Output = T>) -> Option<T> {
    futures_lite::future::or(async { Some(fut.await) }, async {
        glommio::timer::sleep(dur).await;
        None
    })
    .await
}

/// A peer URL split into scheme and host:port.
fn parse_peer_url(url: &str) -> Result<(bool, String, Vec<SocketAddr>), PeerError> {
    let (tls, rest) = match url.split_once("://") {
        Some(("http", r)) => (false, r),
        Some(("https", r)) => (true, r),
        _ => {
            return Err(PeerError::BadUrl(format!(
                "{url:?}: expected http:// or https://"
            )))
        }
    };
    let hostport = rest.trim_end_matches('/');
    let addrs: Vec<SocketAddr> = hostport
        .to_socket_addrs()
        .map_err(|e| PeerError::BadUrl(format!("{url:?}: {e}")))?
        .collect();
    if addrs.is_empty() {
        return Err(PeerError::BadUrl(format!("{url:?}: no address")));
    }
    let host = match hostport.rsplit_once(':') {
        Some((h, _)) => h.trim_start_matches('[').trim_end_matches(']').to_string(),
        None => hostport.to_string(),
    };
    Ok((tls, host, addrs))
}

/// Dials one URL: TCP, TLS for https, hello, reply. Returns the stream ready for frames.
async fn dial(
    url: &str,
    client_tls: Option<&Arc<rustls::ClientConfig>>,
    hello: Hello,
    timeout: Duration,
) -> Result<(BoxStream, SocketAddr, HelloReply), PeerError> {
    let (tls, host, addrs) = parse_peer_url(url)?;
    let fut = async {
        let mut last = PeerError::Timeout;
        for addr in addrs {
            let tcp = match TcpStream::connect_timeout(addr, timeout).await {
                Ok(t) => t,
                Err(e) => {
                    last = PeerError::Io(e.into());
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let mut stream: BoxStream = if tls {
                let Some(cfg) = client_tls else {
                    return Err(PeerError::BadUrl(format!(
                        "{url:?}: https peer URL but no client TLS configured"
                    )));
                };
                let name = rustls_pki_types::ServerName::try_from(host.clone())
                    .map_err(|e| PeerError::BadUrl(format!("{url:?}: {e}")))?;
                let s = futures_rustls::TlsConnector::from(cfg.clone())
                    .connect(name, tcp)
                    .await?;
                Box::new(s)
            } else {
                Box::new(tcp)
            };
            stream.write_all(&encode_hello(&hello)).await?;
            stream.flush().await?;
            let mut rb = [0u8; HELLO_REPLY_BYTES];
            stream.read_exact(&mut rb).await?;
            let reply = decode_hello_reply(&rb)?;
            if reply.status != HelloStatus::Ok {
                return Err(PeerError::Refused {
                    status: reply.status,
                    remote_cluster_id: reply.cluster_id,
                    remote_member_id: reply.member_id,
                    addr,
                });
            }
            return Ok((stream, addr, reply));
        }
        Err(last)
    };
    within(timeout, fut)
        .await
        .unwrap_or(Err(PeerError::Timeout))
}

/// An outbound connection: the write half, and a task reading the other half only to notice
/// that the acceptor closed it (it never writes after its reply), so a restarted peer is
/// redialed before the next batch is written into a dead socket.
struct Conn {
    w: WriteHalf<BoxStream>,
    dead: Rc<Cell<bool>>,
    watcher: JoinHandle<()>,
}

impl Conn {
    fn new(stream: BoxStream, p: &Rc<Peer>) -> Conn {
        let (mut r, w) = futures_lite::io::split(stream);
        let dead = Rc::new(Cell::new(false));
        let (d, p) = (dead.clone(), Rc::downgrade(p));
        let watcher = glommio::spawn_local(async move {
            let mut b = [0u8; 64];
            // Any outcome (EOF, error, or bytes the protocol does not allow) ends the
            // connection.
            let _ = r.read(&mut b).await;
            d.set(true);
            if let Some(p) = p.upgrade() {
                p.wake();
            }
        })
        .detach();
        Conn { w, dead, watcher }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.watcher.cancel();
    }
}

/// Waits until the peer has something queued, was removed, its URLs changed, or there is no
/// live connection (connections are kept open without traffic, as etcd's streams are: a
/// member knows which peers are up, for the reconfiguration checks).
async fn wait_work(p: &Peer, urls_gen: u64, conn: Option<&Conn>) {
    std::future::poll_fn(|cx| {
        if p.removed.get()
            || !p.queue.borrow().is_empty()
            || p.urls_gen.get() != urls_gen
            || conn.is_none_or(|c| c.dead.get())
        {
            Poll::Ready(())
        } else {
            *p.waker.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        }
    })
    .await
}

async fn writer_loop(shared: Rc<Shared>, p: Rc<Peer>) {
    let mut conn: Option<Conn> = None;
    let mut conn_gen = p.urls_gen.get();
    let mut backoff = BACKOFF_MIN;
    let mut url_next = 0usize;
    let mut failing = false;
    let mut batch: Vec<u8> = Vec::new();
    loop {
        wait_work(&p, conn_gen, conn.as_ref()).await;
        if p.removed.get() || shared.closed.get() {
            return;
        }
        if conn.as_ref().is_some_and(|c| c.dead.get()) {
            // The acceptor went away (restart, or it refused us late): redial.
            conn = None;
            p.active_since.set(None);
        }
        if p.urls_gen.get() != conn_gen {
            conn = None;
            p.active_since.set(None);
            conn_gen = p.urls_gen.get();
        }
        if conn.is_none() {
            let urls = p.urls.borrow().clone();
            let hello = Hello {
                version: PROTOCOL_VERSION,
                kind: HelloKind::Raft,
                cluster_id: shared.cluster_id.get(),
                from: shared.local_id,
                to: p.id,
            };
            let mut result = Err(PeerError::BadUrl("no peer URLs".into()));
            for i in 0..urls.len() {
                let url = &urls[(url_next + i) % urls.len()];
                result = dial(url, shared.client_tls.as_ref(), hello, shared.dial_timeout).await;
                if result.is_ok() {
                    url_next = (url_next + i) % urls.len();
                    break;
                }
                if let Err(PeerError::Refused { .. }) = &result {
                    log_refused(&shared, p.id, result.as_ref().err().unwrap());
                }
            }
            if p.removed.get() || shared.closed.get() {
                return;
            }
            match result {
                Ok((s, addr, _)) => {
                    if failing {
                        tracing::info!(
                            "local-member-id" = %format!("{:x}", shared.local_id),
                            "remote-peer-id" = %format!("{:x}", p.id),
                            "remote-addr" = %addr,
                            "peer became active"
                        );
                    }
                    failing = false;
                    backoff = BACKOFF_MIN;
                    conn = Some(Conn::new(s, &p));
                    p.active_since.set(Some(Instant::now()));
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(
                            "local-member-id" = %format!("{:x}", shared.local_id),
                            "remote-peer-id" = %format!("{:x}", p.id),
                            error = %e,
                            "peer became inactive (message send to peer failed)"
                        );
                    }
                    failing = true;
                    p.active_since.set(None);
                    url_next = url_next.wrapping_add(1);
                    shared.unreachable.borrow_mut().insert(p.id);
                    p.clear_queue();
                    glommio::timer::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else {
            unreachable!("connected above");
        };
        if p.queue.borrow().is_empty() {
            // Connected with nothing to send: keep the connection open.
            continue;
        }
        // Take everything queued: small frames are coalesced into one buffer, a big frame
        // is written on its own.
        let frames: Vec<Vec<u8>> = p.queue.borrow_mut().drain(..).collect();
        p.queued_bytes.set(0);
        let result = within(
            shared.write_timeout,
            write_frames(&mut c.w, frames, &mut batch),
        )
        .await
        .unwrap_or_else(|| {
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "peer write timed out",
            ))
        });
        batch.clear();
        if batch.capacity() > WRITE_COALESCE_BYTES_MAX * 2 {
            batch = Vec::new();
        }
        if let Err(e) = result {
            tracing::warn!(
                "local-member-id" = %format!("{:x}", shared.local_id),
                "remote-peer-id" = %format!("{:x}", p.id),
                error = %e,
                "lost TCP streaming connection with remote peer"
            );
            conn = None;
            failing = true;
            p.active_since.set(None);
            shared.unreachable.borrow_mut().insert(p.id);
            p.clear_queue();
        }
    }
}

/// Writes `frames` in order, coalescing small ones through `batch`, then flushes.
async fn write_frames(
    w: &mut WriteHalf<BoxStream>,
    frames: Vec<Vec<u8>>,
    batch: &mut Vec<u8>,
) -> std::io::Result<()> {
    batch.clear();
    for f in frames {
        if batch.len() + f.len() > WRITE_COALESCE_BYTES_MAX && !batch.is_empty() {
            w.write_all(batch).await?;
            batch.clear();
        }
        if f.len() > WRITE_COALESCE_BYTES_MAX {
            w.write_all(&f).await?;
        } else {
            batch.extend_from_slice(&f);
        }
    }
    if !batch.is_empty() {
        w.write_all(batch).await?;
    }
    w.flush().await
}

fn log_refused(shared: &Shared, peer: u64, e: &PeerError) {
    if let PeerError::Refused {
        status,
        remote_cluster_id,
        remote_member_id,
        addr,
    } = e
    {
        tracing::warn!(
            "local-member-id" = %format!("{:x}", shared.local_id),
            "local-member-cluster-id" = %format!("{:x}", shared.cluster_id.get()),
            "remote-peer-id" = %format!("{peer:x}"),
            "remote-peer-member-id" = %format!("{remote_member_id:x}"),
            "remote-peer-cluster-id" = %format!("{remote_cluster_id:x}"),
            "remote-addr" = %addr,
            status = ?status,
            "peer refused our connection"
        );
    }
}

async fn accept_loop(shared: Rc<Shared>, listener: TcpListener) {
    loop {
        let stream = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "peer accept failed");
                glommio::timer::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if shared.closed.get() {
            return;
        }
        if shared.conns.borrow().len() >= INBOUND_CONNS_MAX {
            tracing::warn!(
                "remote-addr" = %stream.peer_addr().map_or_else(|e| e.to_string(), |a| a.to_string()),
                limit = INBOUND_CONNS_MAX,
                "too many inbound peer connections; closed a new one"
            );
            continue;
        }
        let id = shared.conn_next.get();
        shared.conn_next.set(id + 1);
        let s2 = shared.clone();
        let task = glommio::spawn_local(async move {
            serve_conn(&s2, stream).await;
            s2.conns.borrow_mut().remove(&id);
        })
        .detach();
        shared.conns.borrow_mut().insert(id, task);
    }
}

async fn serve_conn(shared: &Rc<Shared>, tcp: TcpStream) {
    let remote = tcp
        .peer_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let _ = tcp.set_nodelay(true);
    // Set when the TLS handshake failed (logged there, with the reason).
    let tls_refused = Cell::new(false);
    let opened = within(ACCEPT_HELLO_TIMEOUT, async {
        let mut stream: BoxStream = match &shared.server_tls {
            Some(cfg) => match futures_rustls::TlsAcceptor::from(cfg.clone())
                .accept(tcp)
                .await
            {
                Ok(s) => Box::new(s),
                Err(e) => {
                    // A refused certificate (wrong CA, expired, revoked, not the allowed CN
                    // or hostname) or a peer that does not speak TLS: only this connection
                    // closes.
                    // (etcd's message for a refused handshake on either port.)
                    tracing::warn!(
                        "local-member-id" = %format!("{:x}", shared.local_id),
                        "remote-addr" = %remote,
                        listener = "peer",
                        error = %e,
                        "rejected connection"
                    );
                    tls_refused.set(true);
                    return Err(PeerError::Io(e));
                }
            },
            None => Box::new(tcp),
        };
        let mut hb = [0u8; HELLO_BYTES];
        stream.read_exact(&mut hb).await?;
        Ok::<_, PeerError>((stream, decode_hello(&hb)?))
    })
    .await
    .unwrap_or(Err(PeerError::Timeout));
    let (mut stream, hello) = match opened {
        Ok(x) => x,
        Err(_) if tls_refused.get() => return,
        Err(e) => {
            tracing::warn!(
                "remote-addr" = %remote,
                error = %e,
                "peer connection closed before a valid hello"
            );
            return;
        }
    };
    let local_cluster = shared.cluster_id.get();
    let status = if hello.version != PROTOCOL_VERSION {
        tracing::warn!(
            "remote-addr" = %remote,
            "remote-version" = hello.version,
            "local-version" = PROTOCOL_VERSION,
            "peer protocol version mismatch"
        );
        HelloStatus::BadVersion
    } else if hello.kind == HelloKind::ClusterInfo {
        HelloStatus::Ok
    } else if local_cluster != 0 && hello.cluster_id != local_cluster {
        tracing::warn!(
            "local-member-id" = %format!("{:x}", shared.local_id),
            "local-member-cluster-id" = %format!("{local_cluster:x}"),
            "remote-peer-id" = %format!("{:x}", hello.from),
            "remote-peer-cluster-id" = %format!("{:x}", hello.cluster_id),
            "remote-addr" = %remote,
            "request cluster ID mismatch"
        );
        HelloStatus::ClusterMismatch
    } else if hello.to != shared.local_id || hello.from == 0 || hello.from == shared.local_id {
        tracing::warn!(
            "local-member-id" = %format!("{:x}", shared.local_id),
            "remote-peer-id" = %format!("{:x}", hello.from),
            "requested-member-id" = %format!("{:x}", hello.to),
            "remote-addr" = %remote,
            "request sent to the wrong member (or from an invalid member id)"
        );
        HelloStatus::WrongReceiver
    } else {
        HelloStatus::Ok
    };
    let reply = HelloReply {
        version: PROTOCOL_VERSION,
        status,
        cluster_id: local_cluster,
        member_id: shared.local_id,
    };
    if stream.write_all(&encode_hello_reply(&reply)).await.is_err() {
        return;
    }
    if status != HelloStatus::Ok {
        let _ = stream.flush().await;
        let _ = stream.close().await;
        return;
    }
    if hello.kind == HelloKind::ClusterInfo {
        let info = (shared.info)();
        let mut out = Vec::new();
        put_frame(&mut out, &encode_cluster_info(&info));
        let _ = stream.write_all(&out).await;
        let _ = stream.flush().await;
        let _ = stream.close().await;
        return;
    }
    if stream.flush().await.is_err() {
        return;
    }
    if let Err(e) = read_frames(shared, stream, hello.from).await {
        tracing::warn!(
            "local-member-id" = %format!("{:x}", shared.local_id),
            "remote-peer-id" = %format!("{:x}", hello.from),
            "remote-addr" = %remote,
            error = %e,
            "closed an inbound peer connection"
        );
    }
}

/// Reads frames until EOF (Ok) or a bad frame (Err).
async fn read_frames(shared: &Shared, stream: BoxStream, from: u64) -> Result<(), PeerError> {
    let mut r = BufReader::with_capacity(READ_BUFFER_BYTES, stream);
    let mut payload = Vec::new();
    loop {
        let mut h = [0u8; FRAME_HEADER_BYTES];
        // A clean EOF is only allowed between frames.
        let n = r.read(&mut h).await?;
        if n == 0 {
            return Ok(());
        }
        if n < FRAME_HEADER_BYTES {
            r.read_exact(&mut h[n..]).await?;
        }
        let (len, crc) = codec_parse_header(&h, shared.frame_bytes_max)?;
        payload.resize(len as usize, 0);
        r.read_exact(&mut payload).await?;
        codec_check_crc(&payload, crc)?;
        let m = decode_message(&payload)?;
        if m.from != from || m.to != shared.local_id {
            return Err(PeerError::Decode(format!(
                "message from {:x} to {:x} on a connection from {from:x} to {:x}",
                m.from, m.to, shared.local_id
            )));
        }
        if payload.capacity() > READ_BUFFER_BYTES * 4 {
            payload = Vec::new();
        }
        if shared.inbound.unbounded_send(m).is_err() {
            return Ok(());
        }
    }
}

use codec::{check_frame_crc as codec_check_crc, parse_frame_header as codec_parse_header};

/// Asks the members at `peer_urls` (in order, until one answers) for the cluster id and
/// member list, as a member joining an existing cluster must. Runs on a glommio executor.
pub async fn fetch_cluster_info(
    peer_urls: &[String],
    client_tls: Option<Arc<rustls::ClientConfig>>,
    timeout: Duration,
) -> Result<ClusterInfo, PeerError> {
    let hello = Hello {
        version: PROTOCOL_VERSION,
        kind: HelloKind::ClusterInfo,
        cluster_id: 0,
        from: 0,
        to: 0,
    };
    let tls = client_tls.as_ref();
    let fut = async {
        let mut last = PeerError::BadUrl("no peer URLs".into());
        for url in peer_urls {
            let got = async {
                let (stream, _, _) = dial(url, tls, hello, timeout).await?;
                let mut r = BufReader::new(stream);
                let mut h = [0u8; FRAME_HEADER_BYTES];
                r.read_exact(&mut h).await?;
                let (len, crc) = codec_parse_header(&h, CLUSTER_INFO_BYTES_MAX)?;
                let mut payload = vec![0u8; len as usize];
                r.read_exact(&mut payload).await?;
                codec_check_crc(&payload, crc)?;
                decode_cluster_info(&payload)
            };
            match within(timeout, got)
                .await
                .unwrap_or(Err(PeerError::Timeout))
            {
                Ok(info) => return Ok(info),
                Err(e) => last = e,
            }
        }
        Err(last)
    };
    within(timeout, fut)
        .await
        .unwrap_or(Err(PeerError::Timeout))
}
