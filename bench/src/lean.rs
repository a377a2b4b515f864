//! The lean client: etcd's v3 KV calls (Put, Range, Txn) over HTTP/2 with the `h2` crate
//! directly, meant to run on current-thread tokio runtimes.
//!
//! Why: the `etcd-client` crate (tonic, tower's buffer, a multi-thread runtime) costs more client
//! CPU per request than the servers it measures; on a machine where client and server share the
//! cores that caps every server's throughput (docs/benchmarks.md, "The ceiling"). This client does
//! one HTTP/2 stream per call and nothing else: prost encoding with gRPC's 5-byte frame, the
//! `content-type: application/grpc` and `te: trailers` headers, then the answer's frame and its
//! `grpc-status`.
//!
//! Invariants:
//! - A call succeeds only with HTTP 200, `grpc-status: 0` (trailers, or the headers of a
//!   trailers-only answer) and exactly one uncompressed message that decodes as the answer type.
//!   Anything else is an error whose text names the gRPC code and message ("Unavailable: ..."),
//!   in the same form as [`crate::stats::error_text`] gives for `etcd-client` errors.
//! - Plain text only: an `https://` endpoint is refused with a message (TLS stays on etcd-client).

use bytes::{BufMut, Bytes, BytesMut};
use ferrite_net::pb::etcdserverpb::{
    PutRequest, PutResponse, RangeRequest, RangeResponse, TxnRequest, TxnResponse,
};
use http::header::{CONTENT_TYPE, TE};
use http::{HeaderMap, HeaderValue, Method, Request, Uri};
use prost::Message;
use std::net::ToSocketAddrs;
use std::time::Duration;

/// Largest answer message accepted, bytes (a single-key range or a put answer is far smaller).
pub const RESPONSE_BYTES_MAX: usize = 16 << 20;
/// HTTP/2 flow-control window the client grants per stream and per connection: large, so
/// WINDOW_UPDATE frames are rare.
const WINDOW_BYTES: u32 = 1 << 20;
/// gRPC's message prefix: 1 byte compressed flag, 4 bytes big-endian length.
const GRPC_PREFIX_BYTES: usize = 5;

const PUT_PATH: &str = "/etcdserverpb.KV/Put";
const RANGE_PATH: &str = "/etcdserverpb.KV/Range";
const TXN_PATH: &str = "/etcdserverpb.KV/Txn";

/// The `host:port` of a plain-text endpoint (`host:port` or `http://host:port`).
pub fn plain_address(endpoint: &str) -> Result<String, String> {
    let rest = match endpoint.split_once("://") {
        None => endpoint,
        Some(("http", rest)) => rest,
        Some(_) => {
            return Err(format!(
                "lean client: {endpoint}: plain-text (http://) endpoints only; \
                 use --client etcd-client for TLS"
            ))
        }
    };
    let rest = rest.trim_end_matches('/');
    if rest.is_empty() || rest.contains('/') {
        return Err(format!("lean client: {endpoint}: expected host:port"));
    }
    Ok(rest.to_string())
}

/// Opens a TCP connection to `endpoint` (blocking, bounded by `timeout`), with TCP_NODELAY and
/// non-blocking mode set, ready for [`LeanKv::handshake`] on the runtime that will drive it.
pub fn connect_tcp(endpoint: &str, timeout: Duration) -> Result<std::net::TcpStream, String> {
    let addr = plain_address(endpoint)?;
    let sa = addr
        .to_socket_addrs()
        .map_err(|e| format!("lean client: resolving {addr}: {e}"))?
        .next()
        .ok_or_else(|| format!("lean client: {addr} resolves to no address"))?;
    let s = std::net::TcpStream::connect_timeout(&sa, timeout)
        .map_err(|e| format!("lean client: connecting to {addr}: {e}"))?;
    s.set_nodelay(true)
        .and_then(|()| s.set_nonblocking(true))
        .map_err(|e| format!("lean client: socket options for {addr}: {e}"))?;
    Ok(s)
}

/// A TCP stream that says it has no vectored writes. h2 then copies DATA payloads of up to 1 KiB
/// into its write buffer instead of chaining them (the threshold is 256 bytes with vectored
/// writes, and a chained payload is flushed before the next frame): a put with a 256-byte value
/// no longer costs one `writev` of its own, the frames of all requests queued since the last
/// flush go out in one `write` (measured: 1.0 writev per put before, docs/benchmarks.md).
struct Unvectored(tokio::net::TcpStream);

impl tokio::io::AsyncRead for Unvectored {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Unvectored {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
    // is_write_vectored: the default, false.
}

/// One HTTP/2 connection's KV calls. Clones share the connection (one stream per call).
#[derive(Clone)]
pub struct LeanKv {
    send: h2::client::SendRequest<Bytes>,
    put_uri: Uri,
    range_uri: Uri,
    txn_uri: Uri,
}

impl LeanKv {
    /// The HTTP/2 handshake over `tcp` (from [`connect_tcp`]); the connection's driver task is
    /// spawned on the current tokio runtime. `endpoint` gives the `:authority`.
    pub async fn handshake(tcp: std::net::TcpStream, endpoint: &str) -> Result<LeanKv, String> {
        let authority = plain_address(endpoint)?;
        let tcp = tokio::net::TcpStream::from_std(tcp)
            .map_err(|e| format!("lean client: registering socket of {authority}: {e}"))?;
        let tcp = Unvectored(tcp);
        let (send, conn) = h2::client::Builder::new()
            .initial_window_size(WINDOW_BYTES)
            .initial_connection_window_size(WINDOW_BYTES)
            .handshake::<_, Bytes>(tcp)
            .await
            .map_err(|e| format!("lean client: http2 handshake with {authority}: {e}"))?;
        // The driver's own error also fails every open stream, which is where it is counted.
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let uri = |path: &str| {
            Uri::builder()
                .scheme("http")
                .authority(authority.as_str())
                .path_and_query(path)
                .build()
                .map_err(|e| format!("lean client: uri for {authority}{path}: {e}"))
        };
        Ok(LeanKv {
            send,
            put_uri: uri(PUT_PATH)?,
            range_uri: uri(RANGE_PATH)?,
            txn_uri: uri(TXN_PATH)?,
        })
    }

    pub async fn put(&mut self, req: &PutRequest) -> Result<PutResponse, String> {
        let uri = self.put_uri.clone();
        self.unary(uri, req).await
    }

    pub async fn range(&mut self, req: &RangeRequest) -> Result<RangeResponse, String> {
        let uri = self.range_uri.clone();
        self.unary(uri, req).await
    }

    pub async fn txn(&mut self, req: &TxnRequest) -> Result<TxnResponse, String> {
        let uri = self.txn_uri.clone();
        self.unary(uri, req).await
    }

    /// One unary gRPC call: a stream with the request's frame, then the answer's frame and status.
    async fn unary<Q: Message, A: Message + Default>(
        &mut self,
        uri: Uri,
        req: &Q,
    ) -> Result<A, String> {
        let len = req.encoded_len();
        let len_u32 = u32::try_from(len).map_err(|_| format!("request of {len} bytes"))?;
        let mut frame = BytesMut::with_capacity(GRPC_PREFIX_BYTES + len);
        frame.put_u8(0);
        frame.put_u32(len_u32);
        req.encode(&mut frame)
            .expect("the buffer holds encoded_len bytes");
        let mut head = Request::new(());
        *head.method_mut() = Method::POST;
        *head.uri_mut() = uri;
        let h = head.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        h.insert(TE, HeaderValue::from_static("trailers"));

        std::future::poll_fn(|cx| self.send.poll_ready(cx))
            .await
            .map_err(|e| format!("http2: {e}"))?;
        let (answer, mut body_tx) = self
            .send
            .send_request(head, false)
            .map_err(|e| format!("http2: {e}"))?;
        body_tx
            .send_data(frame.freeze(), true)
            .map_err(|e| format!("http2: {e}"))?;
        let (parts, mut body) = answer
            .await
            .map_err(|e| format!("http2: {e}"))?
            .into_parts();
        if parts.status != http::StatusCode::OK {
            return Err(format!("http status {}", parts.status));
        }
        // A trailers-only answer (how errors usually come) has its status in the headers.
        if parts.headers.contains_key("grpc-status") {
            grpc_status(&parts.headers)?;
        }
        let mut first: Option<Bytes> = None;
        let mut more: Option<BytesMut> = None;
        let mut received = 0usize;
        while let Some(chunk) = body.data().await {
            let chunk = chunk.map_err(|e| format!("http2: {e}"))?;
            let _ = body.flow_control().release_capacity(chunk.len());
            received += chunk.len();
            if received > GRPC_PREFIX_BYTES + RESPONSE_BYTES_MAX {
                return Err(format!("answer larger than {RESPONSE_BYTES_MAX} bytes"));
            }
            match (&mut first, &mut more) {
                (None, _) => first = Some(chunk),
                (Some(f), None) => {
                    let mut m = BytesMut::with_capacity(f.len() + chunk.len());
                    m.extend_from_slice(f);
                    m.extend_from_slice(&chunk);
                    more = Some(m);
                }
                (Some(_), Some(m)) => m.extend_from_slice(&chunk),
            }
        }
        let trailers = body.trailers().await.map_err(|e| format!("http2: {e}"))?;
        match &trailers {
            Some(t) if t.contains_key("grpc-status") => grpc_status(t)?,
            _ if parts.headers.contains_key("grpc-status") => {}
            _ => return Err("answer without grpc-status".into()),
        }
        let data: Bytes = match (first, more) {
            (_, Some(m)) => m.freeze(),
            (Some(f), None) => f,
            (None, None) => Bytes::new(),
        };
        decode_frame(&data)
    }
}

/// The revision a put answer reports (its header's); an answer without one is an error.
pub fn put_revision(p: &PutResponse) -> Result<i64, String> {
    match &p.header {
        Some(h) if h.revision > 0 => Ok(h.revision),
        Some(h) => Err(format!("put answered with revision {}", h.revision)),
        None => Err("put answered without a header".into()),
    }
}

/// Kubernetes' GuaranteedUpdate as one txn: if `key`'s mod_revision is still `mod_rev`, put
/// `value`; else read the key.
pub fn cas_request(key: Bytes, mod_rev: i64, value: Bytes) -> TxnRequest {
    use ferrite_net::pb::etcdserverpb::{compare, request_op, Compare, RequestOp};
    TxnRequest {
        compare: vec![Compare {
            result: compare::CompareResult::Equal as i32,
            target: compare::CompareTarget::Mod as i32,
            key: key.clone(),
            range_end: Bytes::new(),
            target_union: Some(compare::TargetUnion::ModRevision(mod_rev)),
        }],
        success: vec![RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: key.clone(),
                value,
                ..Default::default()
            })),
        }],
        failure: vec![RequestOp {
            request: Some(request_op::Request::RequestRange(RangeRequest {
                key,
                ..Default::default()
            })),
        }],
    }
}

/// What a [`cas_request`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CasOutcome {
    /// The compare held and the put was written at this revision (the answer's header).
    Wrote(i64),
    /// The compare failed; the key's current mod_revision (0: absent), from the else-branch read.
    Conflict(i64),
}

/// Reads a [`cas_request`]'s answer; an answer missing what it must carry is an error.
pub fn cas_outcome(t: &TxnResponse) -> Result<CasOutcome, String> {
    use ferrite_net::pb::etcdserverpb::response_op::Response;
    if t.succeeded {
        let rev = t.header.as_ref().map(|h| h.revision).unwrap_or(0);
        if rev <= 0 {
            return Err(format!("txn succeeded with header revision {rev}"));
        }
        return Ok(CasOutcome::Wrote(rev));
    }
    match t.responses.first().and_then(|r| r.response.as_ref()) {
        Some(Response::ResponseRange(g)) => Ok(CasOutcome::Conflict(
            g.kvs.first().map(|kv| kv.mod_revision).unwrap_or(0),
        )),
        _ => Err("txn compare failed without the else-branch's range".into()),
    }
}

/// The message of exactly one uncompressed gRPC frame.
pub fn decode_frame<A: Message + Default>(data: &[u8]) -> Result<A, String> {
    if data.len() < GRPC_PREFIX_BYTES {
        return Err(format!("answer of {} bytes: no gRPC message", data.len()));
    }
    if data[0] != 0 {
        return Err(format!(
            "compressed answer (flag {}) not supported",
            data[0]
        ));
    }
    let len = u32::from_be_bytes(data[1..5].try_into().expect("4 bytes")) as usize;
    let body = &data[GRPC_PREFIX_BYTES..];
    if len != body.len() {
        return Err(format!(
            "gRPC frame says {len} bytes, the answer has {} after the prefix",
            body.len()
        ));
    }
    A::decode(body).map_err(|e| format!("decoding answer: {e}"))
}

/// Ok for `grpc-status: 0`; otherwise the code's name and the (percent-decoded) message.
fn grpc_status(h: &HeaderMap) -> Result<(), String> {
    let code = h
        .get("grpc-status")
        .map(|v| tonic::Code::from_bytes(v.as_bytes()))
        .unwrap_or(tonic::Code::Unknown);
    if code == tonic::Code::Ok {
        return Ok(());
    }
    let msg = h
        .get("grpc-message")
        .map(|v| percent_decode(v.as_bytes()))
        .unwrap_or_default();
    Err(format!("{code:?}: {msg}"))
}

/// gRPC's percent-encoding of `grpc-message` (RFC 3986 style, `%XX` for bytes outside ASCII
/// 0x20-0x7E and for `%`).
fn percent_decode(s: &[u8]) -> String {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if s[i] == b'%' && i + 2 < s.len() {
            if let (Some(a), Some(b)) = (hex(s[i + 1]), hex(s[i + 2])) {
                out.push((a * 16 + b) as u8);
                i += 3;
                continue;
            }
        }
        out.push(s[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert_eq!(plain_address("127.0.0.1:2379").unwrap(), "127.0.0.1:2379");
        assert_eq!(
            plain_address("http://127.0.0.1:2379/").unwrap(),
            "127.0.0.1:2379"
        );
        assert!(plain_address("https://127.0.0.1:2379")
            .unwrap_err()
            .contains("plain-text"));
        assert!(plain_address("http://h:1/x").is_err());
    }

    #[test]
    fn frames() {
        let r = PutResponse {
            header: Some(ferrite_net::pb::etcdserverpb::ResponseHeader {
                revision: 7,
                ..Default::default()
            }),
            prev_kv: None,
        };
        let mut f = vec![0u8];
        f.extend_from_slice(&(r.encoded_len() as u32).to_be_bytes());
        r.encode(&mut f).unwrap();
        let back: PutResponse = decode_frame(&f).unwrap();
        assert_eq!(back.header.unwrap().revision, 7);
        let mut short = f.clone();
        short.pop();
        assert!(decode_frame::<PutResponse>(&short)
            .unwrap_err()
            .contains("frame says"));
        let mut compressed = f.clone();
        compressed[0] = 1;
        assert!(decode_frame::<PutResponse>(&compressed).is_err());
        assert!(decode_frame::<PutResponse>(&f[..3]).is_err());
    }

    #[test]
    fn statuses() {
        let mut h = HeaderMap::new();
        h.insert("grpc-status", HeaderValue::from_static("0"));
        assert!(grpc_status(&h).is_ok());
        h.insert("grpc-status", HeaderValue::from_static("14"));
        h.insert(
            "grpc-message",
            HeaderValue::from_static("etcdserver: leader changed%21 100%25"),
        );
        assert_eq!(
            grpc_status(&h).unwrap_err(),
            "Unavailable: etcdserver: leader changed! 100%"
        );
        assert_eq!(percent_decode(b"a%2"), "a%2");
    }
}
