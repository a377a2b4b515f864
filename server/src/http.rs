//! The plain-HTTP routes of the client port: `/health`, `/livez`, `/readyz`, `/version`,
//! `/metrics` and etcd's JSON gateway (`POST /v3/...`), served next to gRPC on one port.
//!
//! What it is: [`add_routes`] registers these routes on a core's [`ferrite_net::RouterBuilder`].
//! The gateway translates JSON to the same tonic service implementations the gRPC side uses
//! ([`Services`]: the server's KV, Watch, Lease, Cluster, Maintenance and Auth, plus this
//! crate's [`LockService`] and [`ElectionService`]) and back, exactly as etcd 3.4's
//! grpc-gateway does (captured from Debian's etcd 3.4.23):
//!
//! - request and response bodies use proto field names (`create_revision`, `dbSize`, `TTL`),
//!   64-bit integers as strings, bytes as base64, enums by name, default values omitted (the
//!   pbjson impls of `ferrite_net::pb`); an empty request body is the default message;
//! - errors: `{"error":"<msg>","message":"<msg>","code":<grpc code>}` with grpc-gateway's HTTP
//!   status for the code (OutOfRange → 400, NotFound → 404, Unknown → 500, ...);
//! - a method other than POST is 405 `Method Not Allowed`; an unknown `/v3/` path is 404;
//! - streaming calls (`/v3/watch`, `/v3/lease/keepalive`, `/v3/maintenance/snapshot`,
//!   `/v3/election/observe`) answer with one `{"result":{...}}` JSON object per line, and read
//!   their requests as a stream of JSON objects from the request body;
//! - `/health` is etcd 3.4's: `{"health":"true"}` (200) only when no alarm is raised (except
//!   those named by `?exclude=`), a leader is known and a linearizable read completes within
//!   one second; otherwise `{"health":"false"}` (503).
//!
//! Invariants: a request body is read only up to `request_bytes_max` plus gRPC's overhead, so
//! an oversized body cannot exhaust memory; every streaming response owns the request stream
//! feeding its service, so dropping the HTTP connection ends the service call.
//!
//! Non-goals: CORS preflight handling and the `/v2` API.

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use ferrite_net::pb::etcdserverpb::{
    alarm_request::AlarmAction, auth_server::Auth, cluster_server::Cluster, kv_server::Kv,
    lease_server::Lease, maintenance_server::Maintenance, watch_server::Watch, AlarmRequest,
    AlarmType, RangeRequest, StatusRequest,
};
use ferrite_net::pb::v3electionpb::election_server::Election;
use ferrite_net::pb::v3lockpb::lock_server::Lock;
use ferrite_net::{read_body_limited, text_response, BodyError, BoxBody, RouterBuilder};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::Status;

use crate::election::ElectionService;
use crate::lock::{in_process_stream, LockService, RequestSender};
use crate::metrics::metrics;

/// How long `/health`'s linearizable read may take before the member counts as unhealthy
/// (etcd 3.4: one second).
pub const HEALTH_READ_TIMEOUT_MS: u64 = 1000;

/// The services the gateway calls: the same objects registered as gRPC services.
pub struct Services<K, W, L, C, M, A> {
    pub kv: Arc<K>,
    pub watch: Arc<W>,
    pub lease: Arc<L>,
    pub cluster: Arc<C>,
    pub maintenance: Arc<M>,
    pub auth: Arc<A>,
    pub lock: Arc<LockService<K, W>>,
    pub election: Arc<ElectionService<K, W>>,
}

impl<K, W, L, C, M, A> Services<K, W, L, C, M, A> {
    /// Bundles the server's services and builds the Lock and Election services over its KV
    /// and Watch (register `LockServer::from_arc(services.lock.clone())` and
    /// `ElectionServer::from_arc(services.election.clone())` for gRPC too).
    pub fn new(
        kv: Arc<K>,
        watch: Arc<W>,
        lease: Arc<L>,
        cluster: Arc<C>,
        maintenance: Arc<M>,
        auth: Arc<A>,
    ) -> Self {
        let lock = Arc::new(LockService::new(kv.clone(), watch.clone()));
        let election = Arc::new(ElectionService::new(kv.clone(), watch.clone()));
        Services {
            kv,
            watch,
            lease,
            cluster,
            maintenance,
            auth,
            lock,
            election,
        }
    }
}

impl<K, W, L, C, M, A> Clone for Services<K, W, L, C, M, A> {
    fn clone(&self) -> Self {
        Services {
            kv: self.kv.clone(),
            watch: self.watch.clone(),
            lease: self.lease.clone(),
            cluster: self.cluster.clone(),
            maintenance: self.maintenance.clone(),
            auth: self.auth.clone(),
            lock: self.lock.clone(),
            election: self.election.clone(),
        }
    }
}

/// The service bundle as one type parameter.
pub trait Backend: 'static {
    type Kv: Kv;
    type Watch: Watch;
    type Lease: Lease;
    type Cluster: Cluster;
    type Maintenance: Maintenance;
    type Auth: Auth;
    fn kv(&self) -> &Self::Kv;
    fn watch(&self) -> &Self::Watch;
    fn lease(&self) -> &Self::Lease;
    fn cluster(&self) -> &Self::Cluster;
    fn maintenance(&self) -> &Self::Maintenance;
    fn auth(&self) -> &Self::Auth;
    fn lock(&self) -> &LockService<Self::Kv, Self::Watch>;
    fn election(&self) -> &ElectionService<Self::Kv, Self::Watch>;
}

impl<K: Kv, W: Watch, L: Lease, C: Cluster, M: Maintenance, A: Auth> Backend
    for Services<K, W, L, C, M, A>
{
    type Kv = K;
    type Watch = W;
    type Lease = L;
    type Cluster = C;
    type Maintenance = M;
    type Auth = A;
    fn kv(&self) -> &K {
        &self.kv
    }
    fn watch(&self) -> &W {
        &self.watch
    }
    fn lease(&self) -> &L {
        &self.lease
    }
    fn cluster(&self) -> &C {
        &self.cluster
    }
    fn maintenance(&self) -> &M {
        &self.maintenance
    }
    fn auth(&self) -> &A {
        &self.auth
    }
    fn lock(&self) -> &LockService<K, W> {
        &self.lock
    }
    fn election(&self) -> &ElectionService<K, W> {
        &self.election
    }
}

/// What the gateway needs besides the services.
pub struct Gateway<B> {
    pub backend: B,
    /// `--max-request-bytes`: bodies up to this plus gRPC's overhead are read.
    pub request_bytes_max: usize,
    /// Refuses a call by its gateway path before it reaches the service, as the gRPC
    /// interceptors etcd's gateway goes through do (a learner's restrictions).
    pub guard: Option<ferrite_net::GrpcGuard>,
}

/// Registers `/health`, `/livez`, `/readyz`, `/version`, `/metrics` and the `/v3/` gateway
/// (also under `/v3beta/`, as etcd 3.4).
pub fn add_routes<B: Backend>(builder: RouterBuilder, gateway: Rc<Gateway<B>>) -> RouterBuilder {
    let g_health = gateway.clone();
    let g_v3 = gateway;
    builder
        .route("/health", move |req| {
            let g = g_health.clone();
            async move { health_route(&g, req).await }
        })
        .route("/livez", |_req| async {
            text_response(StatusCode::OK, "ok")
        })
        .route("/readyz", |_req| async {
            text_response(StatusCode::OK, "ok")
        })
        .route("/version", |req| async move { version_route(&req) })
        .route("/metrics", |req| async move { metrics_route(&req) })
        .route_prefix("/v3/", {
            let g_v3 = g_v3.clone();
            move |req| {
                let g = g_v3.clone();
                async move { v3_route(&g, req).await }
            }
        })
        // etcd 3.4 still answers the 3.3 gateway's `/v3beta/` paths as `/v3/` ones.
        .route_prefix("/v3beta/", move |req| {
            let g = g_v3.clone();
            async move { v3_route(&g, req).await }
        })
}

/// Registers what etcd serves on `--listen-metrics-urls`: `/metrics` and `/health`.
pub fn add_metrics_routes<B: Backend>(
    builder: RouterBuilder,
    gateway: Rc<Gateway<B>>,
) -> RouterBuilder {
    builder
        .route("/health", move |req| {
            let g = gateway.clone();
            async move { health_route(&g, req).await }
        })
        .route("/metrics", |req| async move { metrics_route(&req) })
}

fn with_etcd_headers(mut resp: Response<BoxBody>) -> Response<BoxBody> {
    let h = resp.headers_mut();
    h.insert(
        "access-control-allow-headers",
        HeaderValue::from_static("accept, content-type, authorization"),
    );
    h.insert(
        "access-control-allow-methods",
        HeaderValue::from_static("POST, GET, OPTIONS, PUT, DELETE"),
    );
    h.insert("access-control-allow-origin", HeaderValue::from_static("*"));
    resp
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response<BoxBody> {
    let mut resp = Response::new(ferrite_net::full_body(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    with_etcd_headers(resp)
}

fn method_not_allowed(allow: &'static str) -> Response<BoxBody> {
    let mut resp = text_response(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed\n");
    resp.headers_mut()
        .insert(http::header::ALLOW, HeaderValue::from_static(allow));
    with_etcd_headers(resp)
}

fn version_route(req: &Request<Incoming>) -> Response<BoxBody> {
    if req.method() != Method::GET {
        return method_not_allowed("GET");
    }
    json_response(StatusCode::OK, version_body().into_bytes())
}

/// `/version`'s body: `{"etcdserver":"3.4.23","etcdcluster":"3.4.0"}`.
pub fn version_body() -> String {
    format!(
        "{{\"etcdserver\":\"{}\",\"etcdcluster\":\"{}\"}}",
        crate::config::ETCD_SERVER_VERSION,
        crate::config::ETCD_CLUSTER_VERSION
    )
}

fn metrics_route(req: &Request<Incoming>) -> Response<BoxBody> {
    if req.method() != Method::GET {
        return method_not_allowed("GET");
    }
    crate::metrics::refresh_from_source();
    let mut resp = Response::new(ferrite_net::full_body(metrics().render()));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    resp
}

/// `?exclude=NOSPACE&exclude=CORRUPT` → the alarm names to ignore.
fn excluded_alarms(query: Option<&str>) -> Vec<String> {
    let Some(q) = query else { return Vec::new() };
    q.split('&')
        .filter_map(|kv| kv.split_once('='))
        .filter(|(k, _)| *k == "exclude")
        .map(|(_, v)| v.to_string())
        .collect()
}

async fn health_route<B: Backend>(g: &Gateway<B>, req: Request<Incoming>) -> Response<BoxBody> {
    if req.method() != Method::GET {
        return method_not_allowed("GET");
    }
    let excluded = excluded_alarms(req.uri().query());
    let healthy = check_health(&g.backend, &excluded).await;
    if healthy {
        metrics().health_success.inc();
        let mut resp = text_response(StatusCode::OK, "{\"health\":\"true\"}");
        resp = with_etcd_headers(resp);
        resp
    } else {
        metrics().health_failures.inc();
        // Go's http.Error: the body plus a newline, text/plain, 503.
        with_etcd_headers(text_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "{\"health\":\"false\"}\n",
        ))
    }
}

/// etcd 3.4's health check: no (non-excluded) alarm, a known leader, and a linearizable read
/// within [`HEALTH_READ_TIMEOUT_MS`].
pub async fn check_health<B: Backend>(b: &B, excluded_alarms: &[String]) -> bool {
    let alarms = b
        .maintenance()
        .alarm(tonic::Request::new(AlarmRequest {
            action: AlarmAction::Get as i32,
            member_id: 0,
            alarm: AlarmType::None as i32,
        }))
        .await;
    let Ok(alarms) = alarms else { return false };
    for a in &alarms.get_ref().alarms {
        let name = AlarmType::try_from(a.alarm).map_or("UNKNOWN", |t| t.as_str_name());
        if !excluded_alarms.iter().any(|e| e == name) {
            return false;
        }
    }
    let Ok(status) = b
        .maintenance()
        .status(tonic::Request::new(StatusRequest {}))
        .await
    else {
        return false;
    };
    if status.get_ref().leader == 0 {
        return false;
    }
    let mut probe = tonic::Request::new(RangeRequest {
        key: Bytes::from_static(b"health"),
        ..Default::default()
    });
    probe.extensions_mut().insert(crate::kv::InternalProbe);
    let read = b.kv().range(probe);
    let timeout = glommio::timer::sleep(Duration::from_millis(HEALTH_READ_TIMEOUT_MS));
    let read = std::pin::pin!(read);
    let timeout = std::pin::pin!(timeout);
    match futures_util::future::select(read, timeout).await {
        futures_util::future::Either::Left((result, _)) => result.is_ok(),
        futures_util::future::Either::Right(_) => false,
    }
}

/// grpc-gateway's `HTTPStatusFromCode`.
pub fn http_status_for(code: tonic::Code) -> StatusCode {
    use tonic::Code::*;
    match code {
        Ok => StatusCode::OK,
        Cancelled => StatusCode::REQUEST_TIMEOUT,
        Unknown => StatusCode::INTERNAL_SERVER_ERROR,
        InvalidArgument => StatusCode::BAD_REQUEST,
        DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        NotFound => StatusCode::NOT_FOUND,
        AlreadyExists => StatusCode::CONFLICT,
        PermissionDenied => StatusCode::FORBIDDEN,
        Unauthenticated => StatusCode::UNAUTHORIZED,
        ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        FailedPrecondition => StatusCode::BAD_REQUEST,
        Aborted => StatusCode::CONFLICT,
        OutOfRange => StatusCode::BAD_REQUEST,
        Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Internal => StatusCode::INTERNAL_SERVER_ERROR,
        Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// `{"error":"..","message":"..","code":N}`, grpc-gateway's unary error body.
pub fn error_body(code: tonic::Code, message: &str) -> Vec<u8> {
    let m = serde_json::Value::String(message.to_string()).to_string();
    format!("{{\"error\":{m},\"message\":{m},\"code\":{}}}", code as i32).into_bytes()
}

fn error_response(code: tonic::Code, message: &str) -> Response<BoxBody> {
    json_response(http_status_for(code), error_body(code, message))
}

/// `{"error":{"grpc_code":N,"http_code":N,"message":"..","http_status":".."}}`: an error in
/// the middle of a stream, as grpc-gateway writes it.
pub fn stream_error_line(status: &Status) -> Vec<u8> {
    let http = http_status_for(status.code());
    let v = serde_json::json!({
        "error": {
            "grpc_code": status.code() as i32,
            "http_code": http.as_u16(),
            "message": status.message(),
            "http_status": http.canonical_reason().unwrap_or(""),
        }
    });
    let mut line = v.to_string().into_bytes();
    line.push(b'\n');
    line
}

/// Decodes a gateway request body: empty means the default message. Unknown fields are
/// ignored, as etcd's gateway ignores them.
pub fn decode_json<T: DeserializeOwned + Default>(body: &[u8]) -> Result<T, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    match serde_json::from_slice(body) {
        Ok(v) => Ok(v),
        Err(e) if unknown_field(&e.to_string()).is_some() => {
            // Slow path, only for bodies naming fields the proto does not have: drop them and
            // decode again.
            let mut value: serde_json::Value =
                serde_json::from_slice(body).map_err(|e| e.to_string())?;
            let mut err = e.to_string();
            for _ in 0..UNKNOWN_FIELDS_MAX {
                let Some(name) = unknown_field(&err) else {
                    break;
                };
                remove_key(&mut value, &name);
                match serde_json::from_value(value.clone()) {
                    Ok(v) => return Ok(v),
                    Err(e) => err = e.to_string(),
                }
            }
            Err(err)
        }
        Err(e) => Err(e.to_string()),
    }
}

/// How many distinct unknown field names one request may carry before it is refused.
const UNKNOWN_FIELDS_MAX: usize = 32;

/// The field name in serde's "unknown field `name`, expected ..." message.
fn unknown_field(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    Some(rest.split('`').next()?.to_string())
}

fn remove_key(value: &mut serde_json::Value, name: &str) {
    match value {
        serde_json::Value::Object(map) => {
            map.shift_remove(name);
            for v in map.values_mut() {
                remove_key(v, name);
            }
        }
        serde_json::Value::Array(items) => {
            for v in items {
                remove_key(v, name);
            }
        }
        _ => {}
    }
}

async fn unary<Req, Resp, F, Fut>(
    body: &[u8],
    creds: &crate::authz::Credentials,
    call: F,
) -> Response<BoxBody>
where
    Req: DeserializeOwned + Default,
    Resp: Serialize,
    F: FnOnce(tonic::Request<Req>) -> Fut,
    Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
{
    let req: Req = match decode_json(body) {
        Ok(r) => r,
        Err(e) => return error_response(tonic::Code::InvalidArgument, &e),
    };
    match call(creds.request(req)).await {
        Ok(resp) => match serde_json::to_vec(resp.get_ref()) {
            Ok(json) => {
                let mut r = json_response(StatusCode::OK, json);
                r.headers_mut().insert(
                    "grpc-metadata-content-type",
                    HeaderValue::from_static("application/grpc"),
                );
                r
            }
            Err(e) => error_response(tonic::Code::Internal, &e.to_string()),
        },
        Err(status) => error_response(status.code(), status.message()),
    }
}

/// A response body writing one `{"result":...}` line per stream item (and an error line
/// before ending on an error). It holds the request sender, if any, so the service's request
/// stream lives exactly as long as the HTTP response.
struct JsonLinesBody<S> {
    stream: Pin<Box<S>>,
    _requests: Option<Rc<RequestSender>>,
    done: bool,
}

impl<S, T> http_body::Body for JsonLinesBody<S>
where
    S: futures_util::Stream<Item = Result<T, Status>>,
    T: Serialize,
{
    type Data = Bytes;
    type Error = ferrite_net::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        if self.done {
            return Poll::Ready(None);
        }
        match self.stream.as_mut().poll_next(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                self.done = true;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Ok(item))) => {
                let mut line = b"{\"result\":".to_vec();
                if let Err(e) = serde_json::to_writer(&mut line, &item) {
                    return Poll::Ready(Some(Err(Box::new(e))));
                }
                line.push(b'}');
                line.push(b'\n');
                Poll::Ready(Some(Ok(http_body::Frame::data(Bytes::from(line)))))
            }
            Poll::Ready(Some(Err(status))) => {
                self.done = true;
                Poll::Ready(Some(Ok(http_body::Frame::data(Bytes::from(
                    stream_error_line(&status),
                )))))
            }
        }
    }
}

fn streaming_response<S, T>(stream: S, requests: Option<Rc<RequestSender>>) -> Response<BoxBody>
where
    S: futures_util::Stream<Item = Result<T, Status>> + 'static,
    T: Serialize + 'static,
{
    let body = JsonLinesBody {
        stream: Box::pin(stream),
        _requests: requests,
        done: false,
    };
    let mut resp = Response::new(Box::pin(body) as BoxBody);
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp.headers_mut().insert(
        "grpc-metadata-content-type",
        HeaderValue::from_static("application/grpc"),
    );
    with_etcd_headers(resp)
}

/// Splits a byte stream of concatenated JSON objects into messages. Returns the messages
/// complete so far; keeps the incomplete tail buffered.
#[derive(Default)]
pub struct JsonSplitter {
    buf: Vec<u8>,
}

impl JsonSplitter {
    pub fn push<T: DeserializeOwned>(&mut self, chunk: &[u8]) -> Result<Vec<T>, String> {
        self.buf.extend_from_slice(chunk);
        let mut out = Vec::new();
        let mut consumed = 0;
        {
            let mut it = serde_json::Deserializer::from_slice(&self.buf).into_iter::<T>();
            loop {
                match it.next() {
                    None => {
                        consumed = it.byte_offset();
                        break;
                    }
                    Some(Ok(v)) => {
                        out.push(v);
                        consumed = it.byte_offset();
                    }
                    Some(Err(e)) if e.is_eof() => break,
                    Some(Err(e)) => return Err(e.to_string()),
                }
            }
        }
        self.buf.drain(..consumed);
        Ok(out)
    }

    /// Whether only whitespace is left over.
    pub fn is_clean(&self) -> bool {
        self.buf.iter().all(u8::is_ascii_whitespace)
    }
}

/// A bidirectional or client-streaming call: request JSON objects are read from the body as
/// they arrive (by a task on this core) and fed to the service.
async fn bidi<Req, Resp, S, F, Fut>(
    body: Incoming,
    bytes_max: usize,
    creds: &crate::authz::Credentials,
    call: F,
) -> Response<BoxBody>
where
    Req: DeserializeOwned + prost::Message + Default + Send + 'static,
    Resp: Serialize + 'static,
    S: futures_util::Stream<Item = Result<Resp, Status>> + 'static,
    F: FnOnce(tonic::Request<tonic::Streaming<Req>>) -> Fut,
    Fut: Future<Output = Result<tonic::Response<S>, Status>>,
{
    let (sender, streaming) = in_process_stream::<Req>();
    let sender = Rc::new(sender);
    let feeder = sender.clone();
    glommio::spawn_local(async move {
        let mut body = body;
        let mut splitter = JsonSplitter::default();
        let mut total = 0usize;
        while let Some(frame) = http_body_util::BodyExt::frame(&mut body).await {
            let Ok(frame) = frame else { return };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            total += data.len();
            if total > bytes_max.saturating_mul(16) {
                return; // a runaway request stream ends the call
            }
            match splitter.push::<Req>(&data) {
                Ok(msgs) => {
                    for m in msgs {
                        if !feeder.send(&m) {
                            return;
                        }
                    }
                }
                Err(_) => return,
            }
        }
        // The body ended; the response body keeps its own sender so the call goes on.
    })
    .detach();
    match call(creds.request(streaming)).await {
        Ok(resp) => streaming_response(resp.into_inner(), Some(sender)),
        Err(status) => error_response(status.code(), status.message()),
    }
}

/// A server-streaming call: one JSON request, a stream of responses.
async fn server_stream<Req, Resp, S, F, Fut>(
    body: &[u8],
    creds: &crate::authz::Credentials,
    call: F,
) -> Response<BoxBody>
where
    Req: DeserializeOwned + Default,
    Resp: Serialize + 'static,
    S: futures_util::Stream<Item = Result<Resp, Status>> + 'static,
    F: FnOnce(tonic::Request<Req>) -> Fut,
    Fut: Future<Output = Result<tonic::Response<S>, Status>>,
{
    let req: Req = match decode_json(body) {
        Ok(r) => r,
        Err(e) => return error_response(tonic::Code::InvalidArgument, &e),
    };
    match call(creds.request(req)).await {
        Ok(resp) => streaming_response(resp.into_inner(), None),
        Err(status) => error_response(status.code(), status.message()),
    }
}

async fn v3_route<B: Backend>(g: &Gateway<B>, req: Request<Incoming>) -> Response<BoxBody> {
    let path = req.uri().path();
    let path = match path.strip_prefix("/v3beta/") {
        Some(rest) => format!("/v3/{rest}"),
        None => path.to_string(),
    };
    if !is_gateway_path(&path) {
        return with_etcd_headers(text_response(StatusCode::NOT_FOUND, "Not Found\n"));
    }
    if req.method() != Method::POST {
        return method_not_allowed("POST");
    }
    if let Some((code, msg)) = g.guard.as_ref().and_then(|guard| guard(&path)) {
        return error_response(code, &msg);
    }
    let bytes_max = ferrite_net::grpc_decoding_limit_bytes(g.request_bytes_max);
    let b = &g.backend;
    // grpc-gateway passes `Authorization` on as metadata; etcd reads it like `token`. The
    // gateway's callers are never identified by a TLS certificate (etcd's gateway dials
    // itself with its own).
    let creds = crate::authz::Credentials {
        token: req
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        common_name: None,
    };
    let creds = &creds;
    // Streaming requests read their body incrementally.
    match path.as_str() {
        "/v3/watch" => {
            return bidi(req.into_body(), bytes_max, creds, |r| b.watch().watch(r)).await;
        }
        "/v3/lease/keepalive" => {
            return bidi(req.into_body(), bytes_max, creds, |r| {
                b.lease().lease_keep_alive(r)
            })
            .await;
        }
        _ => {}
    }
    let body = match read_body_limited(req.into_body(), bytes_max).await {
        Ok(body) => body,
        Err(BodyError::TooLarge { .. }) => {
            return error_response(
                tonic::Code::InvalidArgument,
                "etcdserver: request is too large",
            )
        }
        Err(BodyError::Transport(e)) => {
            return error_response(tonic::Code::Unknown, &e.to_string());
        }
    };
    let body = &body[..];
    match path.as_str() {
        "/v3/kv/range" => unary(body, creds, |r| b.kv().range(r)).await,
        "/v3/kv/put" => unary(body, creds, |r| b.kv().put(r)).await,
        "/v3/kv/deleterange" => unary(body, creds, |r| b.kv().delete_range(r)).await,
        "/v3/kv/txn" => unary(body, creds, |r| b.kv().txn(r)).await,
        "/v3/kv/compaction" => unary(body, creds, |r| b.kv().compact(r)).await,
        "/v3/lease/grant" => unary(body, creds, |r| b.lease().lease_grant(r)).await,
        "/v3/lease/revoke" | "/v3/kv/lease/revoke" => {
            unary(body, creds, |r| b.lease().lease_revoke(r)).await
        }
        "/v3/lease/timetolive" | "/v3/kv/lease/timetolive" => {
            unary(body, creds, |r| b.lease().lease_time_to_live(r)).await
        }
        "/v3/lease/leases" | "/v3/kv/lease/leases" => {
            unary(body, creds, |r| b.lease().lease_leases(r)).await
        }
        "/v3/cluster/member/add" => unary(body, creds, |r| b.cluster().member_add(r)).await,
        "/v3/cluster/member/remove" => unary(body, creds, |r| b.cluster().member_remove(r)).await,
        "/v3/cluster/member/update" => unary(body, creds, |r| b.cluster().member_update(r)).await,
        "/v3/cluster/member/list" => unary(body, creds, |r| b.cluster().member_list(r)).await,
        "/v3/cluster/member/promote" => unary(body, creds, |r| b.cluster().member_promote(r)).await,
        "/v3/maintenance/alarm" => unary(body, creds, |r| b.maintenance().alarm(r)).await,
        "/v3/maintenance/status" => unary(body, creds, |r| b.maintenance().status(r)).await,
        "/v3/maintenance/defragment" => unary(body, creds, |r| b.maintenance().defragment(r)).await,
        "/v3/maintenance/hash" => unary(body, creds, |r| b.maintenance().hash(r)).await,
        "/v3/maintenance/transfer-leadership" => {
            unary(body, creds, |r| b.maintenance().move_leader(r)).await
        }
        "/v3/maintenance/snapshot" => {
            server_stream(body, creds, |r| b.maintenance().snapshot(r)).await
        }
        "/v3/auth/enable" => unary(body, creds, |r| b.auth().auth_enable(r)).await,
        "/v3/auth/disable" => unary(body, creds, |r| b.auth().auth_disable(r)).await,
        "/v3/auth/authenticate" => unary(body, creds, |r| b.auth().authenticate(r)).await,
        "/v3/auth/user/add" => unary(body, creds, |r| b.auth().user_add(r)).await,
        "/v3/auth/user/get" => unary(body, creds, |r| b.auth().user_get(r)).await,
        "/v3/auth/user/list" => unary(body, creds, |r| b.auth().user_list(r)).await,
        "/v3/auth/user/delete" => unary(body, creds, |r| b.auth().user_delete(r)).await,
        "/v3/auth/user/changepw" => unary(body, creds, |r| b.auth().user_change_password(r)).await,
        "/v3/auth/user/grant" => unary(body, creds, |r| b.auth().user_grant_role(r)).await,
        "/v3/auth/user/revoke" => unary(body, creds, |r| b.auth().user_revoke_role(r)).await,
        "/v3/auth/role/add" => unary(body, creds, |r| b.auth().role_add(r)).await,
        "/v3/auth/role/get" => unary(body, creds, |r| b.auth().role_get(r)).await,
        "/v3/auth/role/list" => unary(body, creds, |r| b.auth().role_list(r)).await,
        "/v3/auth/role/delete" => unary(body, creds, |r| b.auth().role_delete(r)).await,
        "/v3/auth/role/grant" => unary(body, creds, |r| b.auth().role_grant_permission(r)).await,
        "/v3/auth/role/revoke" => unary(body, creds, |r| b.auth().role_revoke_permission(r)).await,
        "/v3/lock/lock" => unary(body, creds, |r| b.lock().lock(r)).await,
        "/v3/lock/unlock" => unary(body, creds, |r| b.lock().unlock(r)).await,
        "/v3/election/campaign" => unary(body, creds, |r| b.election().campaign(r)).await,
        "/v3/election/proclaim" => unary(body, creds, |r| b.election().proclaim(r)).await,
        "/v3/election/leader" => unary(body, creds, |r| b.election().leader(r)).await,
        "/v3/election/resign" => unary(body, creds, |r| b.election().resign(r)).await,
        "/v3/election/observe" => server_stream(body, creds, |r| b.election().observe(r)).await,
        _ => with_etcd_headers(text_response(StatusCode::NOT_FOUND, "Not Found\n")),
    }
}

/// Every path etcd 3.4's gateway serves.
pub const GATEWAY_PATHS: &[&str] = &[
    "/v3/kv/range",
    "/v3/kv/put",
    "/v3/kv/deleterange",
    "/v3/kv/txn",
    "/v3/kv/compaction",
    "/v3/watch",
    "/v3/lease/grant",
    "/v3/lease/revoke",
    "/v3/kv/lease/revoke",
    "/v3/lease/keepalive",
    "/v3/lease/timetolive",
    "/v3/kv/lease/timetolive",
    "/v3/lease/leases",
    "/v3/kv/lease/leases",
    "/v3/cluster/member/add",
    "/v3/cluster/member/remove",
    "/v3/cluster/member/update",
    "/v3/cluster/member/list",
    "/v3/cluster/member/promote",
    "/v3/maintenance/alarm",
    "/v3/maintenance/status",
    "/v3/maintenance/defragment",
    "/v3/maintenance/hash",
    "/v3/maintenance/snapshot",
    "/v3/maintenance/transfer-leadership",
    "/v3/auth/enable",
    "/v3/auth/disable",
    "/v3/auth/authenticate",
    "/v3/auth/user/add",
    "/v3/auth/user/get",
    "/v3/auth/user/list",
    "/v3/auth/user/delete",
    "/v3/auth/user/changepw",
    "/v3/auth/user/grant",
    "/v3/auth/user/revoke",
    "/v3/auth/role/add",
    "/v3/auth/role/get",
    "/v3/auth/role/list",
    "/v3/auth/role/delete",
    "/v3/auth/role/grant",
    "/v3/auth/role/revoke",
    "/v3/lock/lock",
    "/v3/lock/unlock",
    "/v3/election/campaign",
    "/v3/election/proclaim",
    "/v3/election/leader",
    "/v3/election/observe",
    "/v3/election/resign",
];

fn is_gateway_path(path: &str) -> bool {
    GATEWAY_PATHS.contains(&path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrite_net::pb::etcdserverpb::{
        compare, PutResponse, RangeResponse, ResponseHeader, TxnRequest, WatchRequest,
    };
    use ferrite_net::pb::mvccpb::KeyValue;

    #[test]
    fn response_json_matches_etcd_gateway() {
        let header = ResponseHeader {
            cluster_id: 324952591200643719,
            member_id: 3319814642761637952,
            revision: 2,
            raft_term: 2,
        };
        let put = PutResponse {
            header: Some(header),
            prev_kv: None,
        };
        assert_eq!(
            serde_json::to_string(&put).unwrap(),
            r#"{"header":{"cluster_id":"324952591200643719","member_id":"3319814642761637952","revision":"2","raft_term":"2"}}"#
        );
        let range = RangeResponse {
            header: Some(header),
            kvs: vec![KeyValue {
                key: Bytes::from_static(b"foo"),
                create_revision: 2,
                mod_revision: 2,
                version: 1,
                value: Bytes::from_static(b"bar"),
                lease: 0,
            }],
            more: false,
            count: 1,
        };
        assert_eq!(
            serde_json::to_string(&range).unwrap(),
            r#"{"header":{"cluster_id":"324952591200643719","member_id":"3319814642761637952","revision":"2","raft_term":"2"},"kvs":[{"key":"Zm9v","create_revision":"2","mod_revision":"2","version":"1","value":"YmFy"}],"count":"1"}"#
        );
    }

    #[test]
    fn request_json_like_etcd_gateway() {
        let r: RangeRequest =
            decode_json(br#"{"key":"Zm9v","limit":"2","sort_order":"DESCEND","keys_only":true}"#)
                .unwrap();
        assert_eq!(&r.key[..], b"foo");
        assert_eq!(r.limit, 2);
        assert_eq!(r.sort_order, 2);
        assert!(r.keys_only);
        let r: RangeRequest = decode_json(br#"{"key":"Zm9v","limit":2,"sort_order":2}"#).unwrap();
        assert_eq!((r.limit, r.sort_order), (2, 2));
        let r: RangeRequest = decode_json(b"").unwrap();
        assert_eq!(r, RangeRequest::default());
        let t: TxnRequest = decode_json(br#"{"compare":[{"key":"YQ==","result":"EQUAL","target":"VALUE","value":"Mg=="}],"success":[{"request_range":{"key":"YQ=="}}]}"#).unwrap();
        assert_eq!(t.compare[0].target, compare::CompareTarget::Value as i32);
        assert!(decode_json::<RangeRequest>(b"{bad").is_err());
        // Unknown fields are ignored, at any depth, as etcd's gateway does.
        let r: RangeRequest =
            decode_json(br#"{"key":"Zm9v","bogus":1,"other":{"x":[1]}}"#).unwrap();
        assert_eq!(&r.key[..], b"foo");
        let t: TxnRequest =
            decode_json(br#"{"success":[{"request_put":{"key":"YQ==","nope":true}}]}"#).unwrap();
        assert_eq!(t.success.len(), 1);
        assert!(decode_json::<RangeRequest>(br#"{"key":"!!!"}"#).is_err());
    }

    #[test]
    fn errors_like_grpc_gateway() {
        let body = error_body(
            tonic::Code::OutOfRange,
            "etcdserver: mvcc: required revision is a future revision",
        );
        assert_eq!(
            String::from_utf8(body).unwrap(),
            r#"{"error":"etcdserver: mvcc: required revision is a future revision","message":"etcdserver: mvcc: required revision is a future revision","code":11}"#
        );
        assert_eq!(
            http_status_for(tonic::Code::OutOfRange),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            http_status_for(tonic::Code::NotFound),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            http_status_for(tonic::Code::Unknown),
            StatusCode::INTERNAL_SERVER_ERROR
        );
        let line = stream_error_line(&Status::out_of_range("x"));
        assert_eq!(
            String::from_utf8(line).unwrap(),
            "{\"error\":{\"grpc_code\":11,\"http_code\":400,\"message\":\"x\",\"http_status\":\"Bad Request\"}}\n"
        );
    }

    #[test]
    fn json_splitter_handles_partial_and_concatenated_objects() {
        let mut s = JsonSplitter::default();
        let a: Vec<WatchRequest> = s
            .push(br#"{"create_request":{"key":"YQ=="}}{"create_"#)
            .unwrap();
        assert_eq!(a.len(), 1);
        assert!(!s.is_clean());
        let b: Vec<WatchRequest> = s
            .push(
                br#"request":{"key":"Yg=="}}
"#,
            )
            .unwrap();
        assert_eq!(b.len(), 1);
        assert!(s.is_clean());
        assert!(s.push::<WatchRequest>(b"}").is_err());
    }

    #[test]
    fn version_and_paths() {
        assert_eq!(
            version_body(),
            r#"{"etcdserver":"3.4.23","etcdcluster":"3.4.0"}"#
        );
        assert!(is_gateway_path("/v3/kv/range"));
        assert!(!is_gateway_path("/v3/kv/nope"));
        assert_eq!(
            excluded_alarms(Some("exclude=NOSPACE&x=1&exclude=CORRUPT")),
            vec!["NOSPACE", "CORRUPT"]
        );
    }
}
