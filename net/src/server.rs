//! The multi-core server: one glommio executor per core, each accepting on every listen address
//! (SO_REUSEPORT, the kernel spreads connections) and serving HTTP/1.1 and HTTP/2 (detected
//! per connection) with hyper.

use std::future::Future;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::{FromRawFd, IntoRawFd, RawFd};
use std::rc::Rc;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use futures_channel::oneshot;
use futures_lite::io::{AsyncRead, AsyncWrite};
use glommio::net::{TcpListener, TcpStream};
use glommio::sync::Semaphore;
use glommio::{LocalExecutorBuilder, Placement};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::server::conn::auto;

use crate::router::{BoxError, LocalBoxFuture};
use crate::rt::{GlommioTimer, HyperIo, LocalExec};

/// A byte stream a connection is served over: a TCP stream, or a TLS stream wrapping one.
pub trait ByteStream: AsyncRead + AsyncWrite + Unpin {}
impl<T: AsyncRead + AsyncWrite + Unpin> ByteStream for T {}

/// A boxed [`ByteStream`].
pub type BoxStream = Box<dyn ByteStream>;

/// Turns an accepted TCP stream into the stream HTTP is spoken over (the seam for TLS: a TLS
/// acceptor implements this and does its handshake in `wrap`). Shared by every core.
pub trait StreamWrapper: Send + Sync + 'static {
    /// Wraps one accepted connection. Runs on the accepting core; an error closes the
    /// connection.
    fn wrap(&self, stream: TcpStream) -> LocalBoxFuture<io::Result<BoxStream>>;

    /// Like `wrap`, also returning what the handshake learnt about the peer (e.g. a verified
    /// client certificate's name): inserted into the extensions of every request served on
    /// the connection. The default learns nothing.
    fn wrap_with_info(
        &self,
        stream: TcpStream,
    ) -> LocalBoxFuture<io::Result<(BoxStream, http::Extensions)>> {
        let fut = self.wrap(stream);
        Box::pin(async move { fut.await.map(|s| (s, http::Extensions::new())) })
    }
}

/// Inserts a connection's extensions into each of its requests.
#[derive(Clone)]
struct WithConnInfo<S> {
    inner: S,
    info: http::Extensions,
}

impl<S> hyper::service::Service<Request<Incoming>> for WithConnInfo<S>
where
    S: hyper::service::Service<Request<Incoming>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;
    fn call(&self, mut req: Request<Incoming>) -> Self::Future {
        req.extensions_mut().extend(self.info.clone());
        self.inner.call(req)
    }
}

/// One address to listen on.
#[derive(Clone)]
pub struct Listen {
    /// The URL as given (`http://127.0.0.1:2379`).
    pub url: String,
    /// The address to bind; port 0 picks a free port (the same one on every core).
    pub addr: SocketAddr,
    /// Applied to every accepted stream; `None` serves plain TCP.
    pub wrapper: Option<Arc<dyn StreamWrapper>>,
}

impl std::fmt::Debug for Listen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listen")
            .field("url", &self.url)
            .field("addr", &self.addr)
            .field("wrapper", &self.wrapper.is_some())
            .finish()
    }
}

impl Listen {
    /// Parses an `http://host:port` URL (host: an IP address or a resolvable name). `https`
    /// needs a [`StreamWrapper`]: build the `Listen` by hand with one.
    pub fn parse_url(url: &str) -> Result<Listen, ServeError> {
        let bad = |why: &str| ServeError::BadUrl {
            url: url.to_string(),
            why: why.to_string(),
        };
        let rest = match url.split_once("://") {
            Some(("http", rest)) => rest,
            Some(("https", _)) => return Err(bad("https needs a TLS stream wrapper")),
            Some((scheme, _)) => return Err(bad(&format!("unsupported scheme {scheme:?}"))),
            None => return Err(bad("expected scheme://host:port")),
        };
        let hostport = rest.trim_end_matches('/');
        if hostport.contains('/') {
            return Err(bad("a listen URL has no path"));
        }
        let addr = hostport
            .to_socket_addrs()
            .map_err(|e| bad(&e.to_string()))?
            .next()
            .ok_or_else(|| bad("host resolved to no address"))?;
        Ok(Listen {
            url: url.to_string(),
            addr,
            wrapper: None,
        })
    }

    /// Parses a comma-separated list of URLs (etcd's `--listen-client-urls` form).
    pub fn parse_urls(urls: &str) -> Result<Vec<Listen>, ServeError> {
        urls.split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(Listen::parse_url)
            .collect()
    }
}

/// Server configuration. Limits are per core or per connection, as named.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// Addresses to listen on; every core accepts on all of them.
    pub listen: Vec<Listen>,
    /// Number of executors (threads). At least 1.
    pub cores: usize,
    /// Pin executor `i` to CPU `i` (requires `cores` <= CPUs).
    pub pin_cores: bool,
    /// Open connections one core serves at once; further connections wait in the kernel's
    /// accept queue until one closes.
    pub connections_per_core_max: usize,
    /// HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS: concurrent requests on one connection.
    pub http2_streams_per_connection_max: u32,
    /// HTTP/2 initial stream flow-control window.
    pub http2_stream_window_bytes: u32,
    /// HTTP/2 initial connection flow-control window.
    pub http2_connection_window_bytes: u32,
    /// HTTP/2 SETTINGS_MAX_FRAME_SIZE.
    pub http2_frame_bytes_max: u32,
    /// HTTP/2 SETTINGS_MAX_HEADER_LIST_SIZE, also the HTTP/1 header buffer bound.
    pub header_list_bytes_max: u32,
    /// HTTP/2 keep-alive ping interval (`None`: no pings).
    pub http2_keepalive_interval: Option<Duration>,
    /// How long to wait for a keep-alive ping's answer before closing.
    pub http2_keepalive_timeout: Duration,
    /// Time allowed to receive an HTTP/1 request's headers.
    pub http1_header_read_timeout: Duration,
    /// Kernel accept queue length of each listening socket.
    pub listen_backlog: i32,
    /// glommio's registered I/O memory per executor.
    pub io_memory_bytes: usize,
    /// Busy-poll this long before an idle executor sleeps (`None`: sleep at once; spinning
    /// lowers latency but burns CPU).
    pub spin_before_park: Option<Duration>,
}

impl ServeConfig {
    /// Defaults for serving `listen` on `cores` executors.
    pub fn new(listen: Vec<Listen>, cores: usize) -> ServeConfig {
        ServeConfig {
            listen,
            cores,
            pin_cores: false,
            connections_per_core_max: 16 * 1024,
            http2_streams_per_connection_max: 1024,
            http2_stream_window_bytes: 1024 * 1024,
            http2_connection_window_bytes: 8 * 1024 * 1024,
            http2_frame_bytes_max: 16 * 1024,
            header_list_bytes_max: 64 * 1024,
            http2_keepalive_interval: None,
            http2_keepalive_timeout: Duration::from_secs(20),
            http1_header_read_timeout: Duration::from_secs(30),
            listen_backlog: 1024,
            io_memory_bytes: 1024 * 1024,
            spin_before_park: None,
        }
    }
}

/// Why the server could not start.
#[derive(Debug)]
pub enum ServeError {
    /// A listen URL is malformed or unsupported.
    BadUrl {
        /// The URL.
        url: String,
        /// What is wrong with it.
        why: String,
    },
    /// The configuration is inconsistent.
    BadConfig(String),
    /// Binding or listening failed.
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: io::Error,
    },
    /// A core's executor failed to start or the caller's factory returned an error.
    Core {
        /// Index of the core.
        core: usize,
        /// What failed.
        source: BoxError,
    },
}

impl std::fmt::Display for ServeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServeError::BadUrl { url, why } => write!(f, "invalid listen URL {url:?}: {why}"),
            ServeError::BadConfig(why) => write!(f, "invalid server configuration: {why}"),
            ServeError::Bind { addr, source } => write!(f, "listen tcp {addr}: {source}"),
            ServeError::Core { core, source } => write!(f, "core {core}: {source}"),
        }
    }
}

impl std::error::Error for ServeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ServeError::Bind { source, .. } => Some(source),
            ServeError::Core { source, .. } => Some(source.as_ref()),
            _ => None,
        }
    }
}

/// What the per-core factory is told.
#[derive(Clone, Debug)]
pub struct CoreInfo {
    /// This core's index, `0..cores`.
    pub index: usize,
    /// Number of cores serving.
    pub cores: usize,
    /// The bound address of each `listen` entry (ports resolved), in order.
    pub local_addrs: Vec<SocketAddr>,
}

/// A running server. Dropping it does not stop the server; call [`ServerHandle::shutdown`].
pub struct ServerHandle {
    local_addrs: Vec<SocketAddr>,
    stops: Vec<oneshot::Sender<()>>,
    threads: Vec<glommio::ExecutorJoinHandle<()>>,
}

impl ServerHandle {
    /// The bound address of each listen entry, in order (ports resolved).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local_addrs
    }

    /// Stops accepting, drops every open connection and waits for the executors to exit.
    pub fn shutdown(mut self) {
        for stop in self.stops.drain(..) {
            let _ = stop.send(());
        }
        self.join();
    }

    /// Waits until every executor exits (after a shutdown, or a panic on a core).
    pub fn join(self) {
        for t in self.threads {
            let _ = t.join();
        }
    }
}

fn bind_socket(addr: SocketAddr, backlog: i32) -> io::Result<socket2::Socket> {
    let domain = socket2::Domain::for_address(addr);
    let sock = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    sock.set_reuse_address(true)?;
    sock.set_reuse_port(true)?;
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    sock.listen(backlog)?;
    Ok(sock)
}

/// Starts the server: `config.cores` glommio executors, each calling `factory` once on its own
/// thread to build that core's service (it may also spawn the core's other tasks there), then
/// accepting on every listen address and serving each connection with a clone of the service.
///
/// Returns once every core is serving, or the first error (then nothing keeps running).
pub fn serve<F, Fut, S, B>(config: ServeConfig, factory: F) -> Result<ServerHandle, ServeError>
where
    F: Fn(CoreInfo) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<S, BoxError>> + 'static,
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Clone + 'static,
    S::Error: Into<BoxError>,
    S::Future: 'static,
    B: http_body::Body + 'static,
    B::Error: Into<BoxError>,
{
    if config.cores == 0 {
        return Err(ServeError::BadConfig("cores must be at least 1".into()));
    }
    if config.listen.is_empty() {
        return Err(ServeError::BadConfig("no listen address".into()));
    }
    if config.connections_per_core_max == 0 || config.http2_streams_per_connection_max == 0 {
        return Err(ServeError::BadConfig(
            "connection and stream limits must be at least 1".into(),
        ));
    }

    // Bind every socket here, before any thread starts, so bind errors are reported
    // synchronously and port 0 resolves to one port that every core then shares.
    let mut local_addrs = Vec::with_capacity(config.listen.len());
    let mut fds: Vec<Vec<RawFd>> = vec![Vec::new(); config.cores];
    let close_all = |fds: &Vec<Vec<RawFd>>| {
        for fd in fds.iter().flatten() {
            // SAFETY: each fd came from `into_raw_fd` below and was not handed to anyone.
            drop(unsafe { socket2::Socket::from_raw_fd(*fd) });
        }
    };
    for listen in &config.listen {
        let mut addr = listen.addr;
        for core_fds in fds.iter_mut() {
            match bind_socket(addr, config.listen_backlog) {
                Ok(sock) => {
                    if addr.port() == 0 {
                        addr = sock
                            .local_addr()
                            .ok()
                            .and_then(|a| a.as_socket())
                            .expect("bound TCP socket has an inet address");
                    }
                    core_fds.push(sock.into_raw_fd());
                }
                Err(source) => {
                    close_all(&fds);
                    return Err(ServeError::Bind { addr, source });
                }
            }
        }
        local_addrs.push(addr);
    }

    let factory = Arc::new(factory);
    let config = Arc::new(config);
    let (ready_tx, ready_rx) = mpsc::channel::<(usize, Result<(), BoxError>)>();
    let mut stops = Vec::with_capacity(config.cores);
    let mut threads = Vec::with_capacity(config.cores);
    let mut fds = fds.into_iter();
    for core in 0..config.cores {
        let core_fds = fds.next().expect("one fd list per core");
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let placement = if config.pin_cores {
            Placement::Fixed(core)
        } else {
            Placement::Unbound
        };
        let mut builder = LocalExecutorBuilder::new(placement)
            .name(&format!("ferrite-core-{core}"))
            .io_memory(config.io_memory_bytes);
        if let Some(spin) = config.spin_before_park {
            builder = builder.spin_before_park(spin);
        }
        let info = CoreInfo {
            index: core,
            cores: config.cores,
            local_addrs: local_addrs.clone(),
        };
        let factory = Arc::clone(&factory);
        let config_core = Arc::clone(&config);
        let ready = ready_tx.clone();
        let spawned = builder.spawn(move || async move {
            // SAFETY: each fd is a bound, listening, non-blocking TCP socket created above and
            // owned by nobody else; the listener takes ownership.
            let listeners: Vec<(TcpListener, RawFd)> = core_fds
                .into_iter()
                .map(|fd| (unsafe { TcpListener::from_raw_fd(fd) }, fd))
                .collect();
            let service = match factory(info).await {
                Ok(s) => s,
                Err(e) => {
                    let _ = ready.send((core, Err(e)));
                    return;
                }
            };
            let _ = ready.send((core, Ok(())));
            drop(ready);
            run_core(config_core, listeners, service, stop_rx).await;
        });
        match spawned {
            Ok(handle) => {
                stops.push(stop_tx);
                threads.push(handle);
            }
            Err(e) => {
                for fd in fds.by_ref().flatten() {
                    // SAFETY: fds of cores not yet started; nobody else owns them.
                    drop(unsafe { socket2::Socket::from_raw_fd(fd) });
                }
                let handle = ServerHandle {
                    local_addrs,
                    stops,
                    threads,
                };
                handle.shutdown();
                return Err(ServeError::Core {
                    core,
                    source: e.to_string().into(),
                });
            }
        }
    }
    drop(ready_tx);

    let handle = ServerHandle {
        local_addrs,
        stops,
        threads,
    };
    let mut first_error = None;
    for _ in 0..config.cores {
        match ready_rx.recv() {
            Ok((_, Ok(()))) => {}
            Ok((core, Err(source))) => {
                first_error.get_or_insert(ServeError::Core { core, source });
            }
            Err(_) => {
                first_error.get_or_insert(ServeError::Core {
                    core: usize::MAX,
                    source: "a core exited before it was ready".into(),
                });
                break;
            }
        }
    }
    match first_error {
        None => Ok(handle),
        Some(e) => {
            handle.shutdown();
            Err(e)
        }
    }
}

fn connection_builder(config: &ServeConfig) -> auto::Builder<LocalExec> {
    let mut b = auto::Builder::new(LocalExec);
    b.http1()
        .timer(GlommioTimer)
        .header_read_timeout(config.http1_header_read_timeout)
        .max_buf_size((config.header_list_bytes_max as usize).max(8192))
        .keep_alive(true);
    let mut h2 = b.http2();
    h2.timer(GlommioTimer)
        .max_concurrent_streams(config.http2_streams_per_connection_max)
        .initial_stream_window_size(config.http2_stream_window_bytes)
        .initial_connection_window_size(config.http2_connection_window_bytes)
        .max_frame_size(config.http2_frame_bytes_max)
        .max_header_list_size(config.header_list_bytes_max)
        .keep_alive_interval(config.http2_keepalive_interval)
        .keep_alive_timeout(config.http2_keepalive_timeout);
    b
}

async fn run_core<S, B>(
    config: Arc<ServeConfig>,
    listeners: Vec<(TcpListener, RawFd)>,
    service: S,
    stop: oneshot::Receiver<()>,
) where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Clone + 'static,
    S::Error: Into<BoxError>,
    S::Future: 'static,
    B: http_body::Body + 'static,
    B::Error: Into<BoxError>,
{
    let builder = Rc::new(connection_builder(&config));
    let connections = Rc::new(Semaphore::new(config.connections_per_core_max as u64));
    // Never signalled, only closed: closing wakes every task waiting on it (shutdown).
    let stopping = Rc::new(Semaphore::new(0));
    let mut loops = Vec::with_capacity(listeners.len());
    for ((listener, fd), listen) in listeners.into_iter().zip(config.listen.iter()) {
        loops.push(glommio::spawn_local(accept_loop(
            listener,
            fd,
            listen.wrapper.clone(),
            Rc::clone(&builder),
            service.clone(),
            Rc::clone(&connections),
            Rc::clone(&stopping),
        )));
    }
    // Runs until shutdown is requested (or the handle is gone and never will be).
    let _ = stop.await;
    stopping.close();
    connections.close();
    // Wait for the accept loops to drop their listeners (closing the sockets) before the
    // executor exits; open connections see `stopping` and close themselves.
    for l in loops {
        l.await;
    }
}

/// Resolves once `stopping` is closed.
async fn stopped(stopping: &Semaphore) {
    let _ = stopping.acquire(1).await;
}

async fn accept_loop<S, B>(
    listener: TcpListener,
    listener_fd: RawFd,
    wrapper: Option<Arc<dyn StreamWrapper>>,
    builder: Rc<auto::Builder<LocalExec>>,
    service: S,
    connections: Rc<Semaphore>,
    stopping: Rc<Semaphore>,
) where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Clone + 'static,
    S::Error: Into<BoxError>,
    S::Future: 'static,
    B: http_body::Body + 'static,
    B::Error: Into<BoxError>,
{
    loop {
        let Ok(permit) = connections.acquire_static_permit(1).await else {
            return; // closed: shutting down
        };
        let accepted = futures_lite::future::or(async { Some(listener.accept().await) }, async {
            stopped(&stopping).await;
            None
        })
        .await;
        let stream = match accepted {
            None => {
                // An accept may still be in flight in io_uring, holding the socket open after
                // the fd is closed; shutting the socket down stops it listening right now, so
                // the port is free when `ServerHandle::shutdown` returns.
                // SAFETY: `listener` owns `listener_fd` and is alive for this whole scope.
                let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(listener_fd) };
                let _ = socket2::SockRef::from(&fd).shutdown(std::net::Shutdown::Both);
                return;
            }
            Some(Ok(s)) => s,
            Some(Err(_)) => {
                // EMFILE/ENFILE/ENOBUFS or a connection reset before accept: back off briefly
                // instead of spinning, then keep serving.
                glommio::timer::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let wrapper = wrapper.clone();
        let builder = Rc::clone(&builder);
        let service = service.clone();
        let stopping = Rc::clone(&stopping);
        glommio::spawn_local(async move {
            let _permit = permit;
            let (io, info): (BoxStream, http::Extensions) = match wrapper {
                None => (Box::new(stream), http::Extensions::new()),
                Some(w) => match w.wrap_with_info(stream).await {
                    Ok(x) => x,
                    Err(_) => return,
                },
            };
            let service = WithConnInfo {
                inner: service,
                info,
            };
            // Errors here are the peer going away or speaking bad HTTP; the connection is
            // closed either way and nothing else is affected.
            let conn = builder.serve_connection(HyperIo::new(io), service);
            futures_lite::future::or(async { drop(conn.await) }, stopped(&stopping)).await;
        })
        .detach();
    }
}
