//! A per-core request router: gRPC services by service name, plain HTTP handlers by path.
//!
//! A [`Router`] is built on each core by the caller's factory and cloned per connection
//! (cheaply: an `Rc`). It need not be `Send`; handlers may hold `Rc` state of their core.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use tower_service::Service;

/// Boxed error of response bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The response body type every route returns: any body with `Bytes` chunks, boxed. It need not
/// be `Send` (a streaming body may read a core-local channel).
pub type BoxBody = Pin<Box<dyn http_body::Body<Data = Bytes, Error = BoxError>>>;

/// A boxed, core-local future.
pub type LocalBoxFuture<T> = Pin<Box<dyn Future<Output = T>>>;

type Handler = Rc<dyn Fn(Request<Incoming>) -> LocalBoxFuture<Response<BoxBody>>>;
type GrpcHandler = Rc<dyn Fn(Request<GrpcRequestBody>) -> LocalBoxFuture<Response<BoxBody>>>;

/// Boxes any `Bytes` body into a [`BoxBody`].
pub fn box_body<B>(body: B) -> BoxBody
where
    B: http_body::Body<Data = Bytes> + 'static,
    B::Error: Into<BoxError>,
{
    Box::pin(body.map_err(Into::into))
}

/// A complete body from bytes.
pub fn full_body(bytes: impl Into<Bytes>) -> BoxBody {
    box_body(Full::new(bytes.into()).map_err(|never: Infallible| -> BoxError { match never {} }))
}

/// A plain-text response with the given status.
pub fn text_response(status: StatusCode, text: impl Into<Bytes>) -> Response<BoxBody> {
    let mut resp = Response::new(full_body(text));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// Why [`read_body_limited`] failed.
#[derive(Debug)]
pub enum BodyError {
    /// The body is longer than the limit.
    TooLarge {
        /// The limit that was exceeded.
        bytes_max: usize,
    },
    /// The connection failed while reading.
    Transport(BoxError),
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BodyError::TooLarge { bytes_max } => {
                write!(f, "request body larger than {bytes_max} bytes")
            }
            BodyError::Transport(e) => write!(f, "reading request body: {e}"),
        }
    }
}

impl std::error::Error for BodyError {}

/// Reads a whole request body, failing (without buffering the rest) once it exceeds
/// `bytes_max`. For the JSON gateway and other plain HTTP routes.
pub async fn read_body_limited(body: Incoming, bytes_max: usize) -> Result<Bytes, BodyError> {
    match Limited::new(body, bytes_max).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) => {
            if e.is::<http_body_util::LengthLimitError>() {
                Err(BodyError::TooLarge { bytes_max })
            } else {
                Err(BodyError::Transport(e))
            }
        }
    }
}

/// A trailers-only gRPC response carrying an error status (HTTP 200, `grpc-status` header).
pub fn grpc_error_response(code: tonic::Code, message: &str) -> Response<BoxBody> {
    let mut resp = Response::new(full_body(Bytes::new()));
    let headers = resp.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert("grpc-status", HeaderValue::from(code as i32));
    // grpc-message is percent-encoded; keep to visible ASCII without '%'.
    let sanitized: String = message
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '%' || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect();
    if let Ok(v) = HeaderValue::from_str(&sanitized) {
        headers.insert("grpc-message", v);
    }
    resp
}

/// Rewrites the status of a trailers-only gRPC response (the form every error before the
/// handler runs takes: unknown method, undecodable request) from tonic's wording to grpc-go's,
/// which is what etcd's clients see from etcd:
///
/// | tonic | grpc-go (etcd) |
/// |---|---|
/// | UNIMPLEMENTED, no message | UNIMPLEMENTED "unknown method M for service S" |
/// | INTERNAL "failed to decode Protobuf message: D" | INTERNAL "grpc: error unmarshalling request: D" |
/// | INTERNAL "Unexpected EOF decoding stream." | UNKNOWN "unexpected EOF" |
/// | INTERNAL "...compressed-flag but no grpc-encoding..." | INTERNAL "grpc: compressed flag set with identity or empty encoding" |
/// | OUT_OF_RANGE "...decoded message length too large: found N bytes, the limit is: M bytes" | RESOURCE_EXHAUSTED "grpc: received message larger than max (N vs. M)" |
///
/// The decoder's detail `D` stays prost's (Go's proto library words it differently).
/// Statuses the handlers return, and errors in a stream's trailers, are left alone.
pub fn as_grpc_go_status(path: &str, headers: &mut http::HeaderMap) {
    let Some(code) = headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
    else {
        return;
    };
    let message = headers
        .get("grpc-message")
        .and_then(|v| v.to_str().ok())
        .map(percent_decode)
        .unwrap_or_default();
    let unimplemented = tonic::Code::Unimplemented as i32;
    let internal = tonic::Code::Internal as i32;
    let rewritten = if code == unimplemented && message.is_empty() {
        let mut parts = path.trim_start_matches('/').splitn(2, '/');
        let service = parts.next().unwrap_or("");
        let method = parts.next().unwrap_or("");
        Some((
            tonic::Code::Unimplemented,
            format!("unknown method {method} for service {service}"),
        ))
    } else if let Some(detail) = message
        .strip_prefix("failed to decode Protobuf message: ")
        .filter(|_| code == internal)
    {
        Some((
            tonic::Code::Internal,
            format!("grpc: error unmarshalling request: {detail}"),
        ))
    } else if code == internal && message == "Unexpected EOF decoding stream." {
        Some((tonic::Code::Unknown, "unexpected EOF".to_string()))
    } else if code == internal && message.contains("compressed-flag but no grpc-encoding") {
        Some((
            tonic::Code::Internal,
            "grpc: compressed flag set with identity or empty encoding".to_string(),
        ))
    } else if code == tonic::Code::OutOfRange as i32 {
        decoded_too_large(&message).map(|(found, limit)| {
            (
                tonic::Code::ResourceExhausted,
                format!("grpc: received message larger than max ({found} vs. {limit})"),
            )
        })
    } else {
        None
    };
    if let Some((code, message)) = rewritten {
        let fresh = grpc_error_response(code, &message);
        for name in ["grpc-status", "grpc-message"] {
            headers.remove(name);
            if let Some(v) = fresh.headers().get(name) {
                headers.insert(name, v.clone());
            }
        }
    }
}

/// `(found, limit)` of tonic's "decoded message length too large: found N bytes, the limit
/// is: M bytes".
fn decoded_too_large(message: &str) -> Option<(u64, u64)> {
    let rest = message.split("found ").nth(1)?;
    let (found, rest) = rest.split_once(" bytes, the limit is: ")?;
    let limit = rest.strip_suffix(" bytes")?;
    Some((found.parse().ok()?, limit.parse().ok()?))
}

/// Decodes a `grpc-message` value, which is percent-encoded (gRPC's HTTP/2 protocol spec).
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether a request is gRPC (by content type).
pub fn is_grpc(req: &Request<Incoming>) -> bool {
    req.headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// Decides, from its path (`/etcdserverpb.KV/Put`), whether a gRPC call is refused before it
/// reaches its service: `Some((code, message))` refuses it.
pub type GrpcGuard = Rc<dyn Fn(&str) -> Option<(tonic::Code, String)>>;

struct Routes {
    grpc: HashMap<String, GrpcHandler>,
    grpc_guard: Option<GrpcGuard>,
    grpc_message_bytes_max: Option<usize>,
    exact: HashMap<String, Handler>,
    prefixes: Vec<(String, Handler)>,
    fallback: Option<Handler>,
}

/// Routes requests of one core.
///
/// - gRPC requests (`content-type: application/grpc*`) go to the service registered under the
///   first path segment (`/etcdserverpb.KV/Range` → `etcdserverpb.KV`); an unknown service is
///   answered with gRPC status UNIMPLEMENTED.
/// - Other requests go to the handler registered for the exact path, else to the longest
///   registered prefix, else to the fallback (404 by default).
#[derive(Clone)]
pub struct Router {
    routes: Rc<Routes>,
}

/// Builds a [`Router`].
pub struct RouterBuilder {
    routes: Routes,
}

impl Router {
    /// Starts an empty router.
    #[allow(clippy::new_ret_no_self)]
    pub fn builder() -> RouterBuilder {
        RouterBuilder {
            routes: Routes {
                grpc: HashMap::new(),
                grpc_guard: None,
                grpc_message_bytes_max: None,
                exact: HashMap::new(),
                prefixes: Vec::new(),
                fallback: None,
            },
        }
    }

    /// Routes one request.
    pub fn route(&self, req: Request<Incoming>) -> LocalBoxFuture<Response<BoxBody>> {
        let routes = &self.routes;
        if is_grpc(&req) {
            let path = req.uri().path();
            let service = path.trim_start_matches('/');
            let service = service.split('/').next().unwrap_or("");
            return match routes.grpc.get(service) {
                Some(h) => {
                    if let Some((code, msg)) = routes.grpc_guard.as_ref().and_then(|g| g(path)) {
                        return Box::pin(async move { grpc_error_response(code, &msg) });
                    }
                    let limit = routes.grpc_message_bytes_max;
                    h(req.map(|body| GrpcRequestBody::new(body, limit)))
                }
                None => {
                    let msg = format!("unknown service {service}");
                    Box::pin(async move { grpc_error_response(tonic::Code::Unimplemented, &msg) })
                }
            };
        }
        let path = req.uri().path();
        if let Some(h) = routes.exact.get(path) {
            return h(req);
        }
        if let Some((_, h)) = routes
            .prefixes
            .iter()
            .find(|(p, _)| path.starts_with(p.as_str()))
        {
            return h(req);
        }
        match &routes.fallback {
            Some(h) => h(req),
            None => {
                Box::pin(async { text_response(StatusCode::NOT_FOUND, "404 page not found\n") })
            }
        }
    }
}

impl RouterBuilder {
    /// Registers a tonic codegen server (e.g. `KvServer::new(handler)`), under its
    /// `NamedService::NAME`. Configure its limits (`max_decoding_message_size`,
    /// `max_encoding_message_size`) before adding it; see [`crate::grpc_decoding_limit_bytes`].
    pub fn grpc<S, B>(mut self, service: S) -> Self
    where
        S: Service<Request<GrpcRequestBody>, Response = Response<B>, Error = Infallible>
            + tonic::server::NamedService
            + Clone
            + 'static,
        S::Future: 'static,
        B: http_body::Body<Data = Bytes> + 'static,
        B::Error: Into<BoxError>,
    {
        let handler: GrpcHandler = Rc::new(move |req: Request<GrpcRequestBody>| {
            // (Cheaper than copying the path: a Uri's bytes are reference-counted.)
            let uri = req.uri().clone();
            // tonic's generated servers are always ready; a clone per call is the tower idiom.
            let mut svc = service.clone();
            let fut = svc.call(req);
            Box::pin(async move {
                match fut.await {
                    Ok(mut resp) => {
                        as_grpc_go_status(uri.path(), resp.headers_mut());
                        resp.map(box_body)
                    }
                    Err(never) => match never {},
                }
            })
        });
        let name = S::NAME.to_string();
        assert!(
            self.routes.grpc.insert(name.clone(), handler).is_none(),
            "gRPC service {name} registered twice"
        );
        self
    }

    /// Refuses any gRPC request message longer than `bytes_max` as grpc-go (and so etcd) does:
    /// status RESOURCE_EXHAUSTED, "grpc: received message larger than max (N vs. M)", checked
    /// on the 5-byte message header before the message is buffered. Set it at or below every
    /// service's `max_decoding_message_size` (tonic's own check answers OUT_OF_RANGE).
    pub fn grpc_message_bytes_max(mut self, bytes_max: usize) -> Self {
        self.routes.grpc_message_bytes_max = Some(bytes_max);
        self
    }

    /// Every gRPC call to a registered service is first shown to `guard` (by its path), which
    /// may refuse it with a status (as a grpc-go interceptor does).
    pub fn grpc_guard(
        mut self,
        guard: impl Fn(&str) -> Option<(tonic::Code, String)> + 'static,
    ) -> Self {
        self.routes.grpc_guard = Some(Rc::new(guard));
        self
    }

    /// Registers a handler for one exact path (any method).
    pub fn route<F, Fut>(mut self, path: &str, handler: F) -> Self
    where
        F: Fn(Request<Incoming>) -> Fut + 'static,
        Fut: Future<Output = Response<BoxBody>> + 'static,
    {
        let handler: Handler = Rc::new(move |req| Box::pin(handler(req)));
        assert!(
            self.routes
                .exact
                .insert(path.to_string(), handler)
                .is_none(),
            "route {path} registered twice"
        );
        self
    }

    /// Registers a handler for every path starting with `prefix` (longest prefix wins).
    pub fn route_prefix<F, Fut>(mut self, prefix: &str, handler: F) -> Self
    where
        F: Fn(Request<Incoming>) -> Fut + 'static,
        Fut: Future<Output = Response<BoxBody>> + 'static,
    {
        let handler: Handler = Rc::new(move |req| Box::pin(handler(req)));
        self.routes.prefixes.push((prefix.to_string(), handler));
        self.routes
            .prefixes
            .sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        self
    }

    /// Handler for every non-gRPC request no route matched (default: 404).
    pub fn fallback<F, Fut>(mut self, handler: F) -> Self
    where
        F: Fn(Request<Incoming>) -> Fut + 'static,
        Fut: Future<Output = Response<BoxBody>> + 'static,
    {
        self.routes.fallback = Some(Rc::new(move |req| Box::pin(handler(req))));
        self
    }

    /// Finishes the router.
    pub fn build(self) -> Router {
        Router {
            routes: Rc::new(self.routes),
        }
    }
}

impl hyper::service::Service<Request<Incoming>> for Router {
    type Response = Response<BoxBody>;
    type Error = Infallible;
    type Future = RouteFuture;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        RouteFuture {
            inner: self.route(req),
        }
    }
}

/// The future of [`Router`]'s `hyper::service::Service::call`.
pub struct RouteFuture {
    inner: LocalBoxFuture<Response<BoxBody>>,
}

impl Future for RouteFuture {
    type Output = Result<Response<BoxBody>, Infallible>;

    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        self.inner.as_mut().poll(cx).map(Ok)
    }
}

/// Bytes of gRPC request bodies received by every router of the process (etcd's
/// `etcd_network_client_grpc_received_bytes_total`).
pub static GRPC_RECEIVED_BYTES_TOTAL: AtomicU64 = AtomicU64::new(0);

/// The request body handed to gRPC services: hyper's body, with grpc-go's message size check
/// when the router has a [`RouterBuilder::grpc_message_bytes_max`].
pub struct GrpcRequestBody {
    inner: Incoming,
    bytes_max: Option<usize>,
    /// Bytes of the current message's 5-byte header seen so far.
    header: [u8; 5],
    header_len: usize,
    /// Bytes of the current message still to come after its header.
    message_remaining: u64,
}

impl GrpcRequestBody {
    fn new(inner: Incoming, bytes_max: Option<usize>) -> Self {
        GrpcRequestBody {
            inner,
            bytes_max,
            header: [0; 5],
            header_len: 0,
            message_remaining: 0,
        }
    }

    /// Follows the length-prefixed messages through one chunk; the first oversize message
    /// header is an error.
    fn check(&mut self, mut chunk: &[u8], bytes_max: usize) -> Result<(), tonic::Status> {
        while !chunk.is_empty() {
            if self.message_remaining > 0 {
                let skip = (self.message_remaining.min(chunk.len() as u64)) as usize;
                self.message_remaining -= skip as u64;
                chunk = &chunk[skip..];
                continue;
            }
            let take = (5 - self.header_len).min(chunk.len());
            self.header[self.header_len..self.header_len + take].copy_from_slice(&chunk[..take]);
            self.header_len += take;
            chunk = &chunk[take..];
            if self.header_len == 5 {
                self.header_len = 0;
                let len = u32::from_be_bytes([
                    self.header[1],
                    self.header[2],
                    self.header[3],
                    self.header[4],
                ]);
                if len as usize > bytes_max {
                    return Err(tonic::Status::resource_exhausted(format!(
                        "grpc: received message larger than max ({len} vs. {bytes_max})"
                    )));
                }
                self.message_remaining = u64::from(len);
            }
        }
        Ok(())
    }
}

impl http_body::Body for GrpcRequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let frame = match Pin::new(&mut this.inner).poll_frame(cx) {
            std::task::Poll::Pending => return std::task::Poll::Pending,
            std::task::Poll::Ready(f) => f,
        };
        let Some(Ok(frame)) = frame else {
            return std::task::Poll::Ready(frame.map(|r| r.map_err(Into::into)));
        };
        if let Some(data) = frame.data_ref() {
            GRPC_RECEIVED_BYTES_TOTAL.fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        if let (Some(bytes_max), Some(data)) = (this.bytes_max, frame.data_ref()) {
            if let Err(status) = this.check(data, bytes_max) {
                return std::task::Poll::Ready(Some(Err(Box::new(status))));
            }
        }
        std::task::Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
