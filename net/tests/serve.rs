//! End-to-end: `ferrite_net::serve` on glommio, driven by a tonic client and raw HTTP/1.1 on
//! tokio (a different runtime in other threads, as a real client would be).

use std::cell::Cell;
use std::net::SocketAddr;
use std::time::Duration;

use ferrite_net::pb::etcdserverpb::kv_client::KvClient;
use ferrite_net::pb::etcdserverpb::kv_server::{Kv, KvServer};
use ferrite_net::pb::etcdserverpb::watch_client::WatchClient;
use ferrite_net::pb::etcdserverpb::*;
use ferrite_net::pb::mvccpb::KeyValue;
use ferrite_net::{
    run_local, serve, text_response, CoreLocal, Listen, Router, ServeConfig, ServerHandle,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::{Code, Request, Response, Status};

/// Answers Range with the requested key echoed back and, in the header, the core that served it
/// and how many Range calls that core has served (state reached through run_local).
struct EchoKv {
    core: u64,
    served: CoreLocal<Cell<i64>>,
}

#[tonic::async_trait]
impl Kv for EchoKv {
    async fn range(&self, req: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        let req = req.into_inner();
        let served = self.served.rc();
        let count = run_local(async move {
            served.set(served.get() + 1);
            served.get()
        })
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(Response::new(RangeResponse {
            header: Some(ResponseHeader {
                cluster_id: 7,
                member_id: self.core,
                revision: count,
                raft_term: 1,
            }),
            kvs: vec![KeyValue {
                key: req.key.clone(),
                value: req.range_end.clone(),
                version: req.limit,
                ..Default::default()
            }],
            more: false,
            count: 1,
        }))
    }
    async fn put(&self, _: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        Err(Status::unimplemented("put"))
    }
    async fn delete_range(
        &self,
        _: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        Err(Status::unimplemented("delete_range"))
    }
    async fn txn(&self, _: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        Err(Status::unimplemented("txn"))
    }
    async fn compact(
        &self,
        _: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        Err(Status::unimplemented("compact"))
    }
}

const MESSAGE_BYTES_MAX: usize = 4096;

fn start(cores: usize, listeners: usize, tweak: impl FnOnce(&mut ServeConfig)) -> ServerHandle {
    let urls = vec!["http://127.0.0.1:0"; listeners].join(",");
    let mut config = ServeConfig::new(Listen::parse_urls(&urls).unwrap(), cores);
    tweak(&mut config);
    start_with(config)
}

fn start_with(config: ServeConfig) -> ServerHandle {
    serve(config, |core| async move {
        let kv = EchoKv {
            core: core.index as u64,
            served: CoreLocal::new(Cell::new(0)),
        };
        Ok(Router::builder()
            .grpc(KvServer::new(kv).max_decoding_message_size(MESSAGE_BYTES_MAX))
            .route("/health", |_req| async {
                text_response(http::StatusCode::OK, "{\"health\":\"true\"}")
            })
            .build())
    })
    .expect("server starts")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

async fn kv_client(addr: SocketAddr) -> KvClient<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .expect("connects");
    KvClient::new(channel)
}

/// Sends one HTTP/1.1 request on a fresh connection and returns the whole response text.
async fn http1_get(addr: SocketAddr, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

#[test]
fn grpc_range_and_http_on_every_listener() {
    let server = start(2, 2, |_| {});
    let addrs = server.local_addrs().to_vec();
    assert_eq!(addrs.len(), 2);
    assert_ne!(addrs[0].port(), addrs[1].port());
    let rt = runtime();
    rt.block_on(async {
        for addr in &addrs {
            let mut client = kv_client(*addr).await;
            let mut last_revision = 0;
            for i in 0..20i64 {
                let key = format!("key-{i}").into_bytes();
                let resp = client
                    .range(RangeRequest {
                        key: key.clone().into(),
                        range_end: b"end".to_vec().into(),
                        limit: i,
                        ..Default::default()
                    })
                    .await
                    .expect("range succeeds")
                    .into_inner();
                let header = resp.header.expect("header present");
                assert_eq!(header.cluster_id, 7);
                assert!(header.member_id < 2);
                assert_eq!(resp.kvs.len(), 1);
                assert_eq!(&resp.kvs[0].key[..], &key[..]);
                assert_eq!(&resp.kvs[0].value[..], b"end");
                assert_eq!(resp.kvs[0].version, i);
                // One connection stays on one core: its per-core count only grows.
                assert!(header.revision > last_revision);
                last_revision = header.revision;
            }

            let health = http1_get(*addr, "/health").await;
            assert!(health.starts_with("HTTP/1.1 200 OK\r\n"), "{health}");
            assert!(health.ends_with("{\"health\":\"true\"}"), "{health}");
            let missing = http1_get(*addr, "/nope").await;
            assert!(
                missing.starts_with("HTTP/1.1 404 Not Found\r\n"),
                "{missing}"
            );
        }
    });
    // An idle connection open at shutdown is closed by the server.
    let mut idle = std::net::TcpStream::connect(addrs[0]).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    std::thread::sleep(Duration::from_millis(50)); // let a core accept it
    server.shutdown();
    let mut buf = [0u8; 16];
    let n = std::io::Read::read(&mut idle, &mut buf).expect("EOF, not a timeout");
    assert_eq!(n, 0);
    // After shutdown nothing listens any more.
    for addr in addrs {
        assert!(std::net::TcpStream::connect(addr).is_err());
    }
}

#[test]
fn grpc_errors_unknown_service_and_oversize_message() {
    let server = start(1, 1, |_| {});
    let addr = server.local_addrs()[0];
    runtime().block_on(async {
        // A service that is not registered: UNIMPLEMENTED, and the connection stays usable.
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut watch = WatchClient::new(channel.clone());
        let err = watch
            .watch(futures_lite::stream::once(WatchRequest::default()))
            .await
            .expect_err("watch is not served");
        assert_eq!(err.code(), Code::Unimplemented, "{err:?}");

        // A method the handler refuses.
        let mut kv = KvClient::new(channel);
        let err = kv
            .put(PutRequest::default())
            .await
            .expect_err("put refused");
        assert_eq!(err.code(), Code::Unimplemented);

        // Over the per-service decoding limit: refused before the handler runs, worded as
        // grpc-go (and so etcd) words it (router::as_grpc_go_status).
        let err = kv
            .range(RangeRequest {
                key: vec![b'k'; MESSAGE_BYTES_MAX + 1].into(),
                ..Default::default()
            })
            .await
            .expect_err("oversize message refused");
        assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
        assert_eq!(
            err.message(),
            format!(
                "grpc: received message larger than max ({} vs. {MESSAGE_BYTES_MAX})",
                MESSAGE_BYTES_MAX + 4
            ),
            "{err:?}"
        );

        // Just under the limit still works on the same connection.
        let ok = kv
            .range(RangeRequest {
                key: vec![b'k'; MESSAGE_BYTES_MAX - 16].into(),
                ..Default::default()
            })
            .await
            .expect("message under the limit is served");
        assert_eq!(ok.into_inner().kvs[0].key.len(), MESSAGE_BYTES_MAX - 16);
    });
    server.shutdown();
}

#[test]
fn connection_limit_queues_excess_connections() {
    let server = start(1, 1, |c| c.connections_per_core_max = 1);
    let addr = server.local_addrs()[0];
    runtime().block_on(async {
        let request = format!("GET /health HTTP/1.1\r\nHost: {addr}\r\n\r\n");
        // First connection: served, kept alive.
        let mut first = tokio::net::TcpStream::connect(addr).await.unwrap();
        first.write_all(request.as_bytes()).await.unwrap();
        let mut buf = [0u8; 1024];
        let n = first.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200 OK"));

        // Second connection: the kernel accepts it, but the server does not serve it while
        // the first is open.
        let mut second = tokio::net::TcpStream::connect(addr).await.unwrap();
        second.write_all(request.as_bytes()).await.unwrap();
        let waited = tokio::time::timeout(Duration::from_millis(300), second.read(&mut buf)).await;
        assert!(waited.is_err(), "second connection served over the limit");

        // Closing the first frees the slot.
        drop(first);
        let n = tokio::time::timeout(Duration::from_secs(10), second.read(&mut buf))
            .await
            .expect("second connection served once the first closed")
            .unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200 OK"));
    });
    server.shutdown();
}

#[test]
fn bad_listen_urls_are_clear_errors() {
    for (url, needle) in [
        ("127.0.0.1:2379", "scheme"),
        ("ftp://127.0.0.1:2379", "unsupported scheme"),
        ("https://127.0.0.1:2379", "TLS"),
        ("http://127.0.0.1", "invalid"),
        ("http://127.0.0.1:2379/path", "path"),
    ] {
        let err = Listen::parse_url(url).expect_err(url).to_string();
        assert!(err.contains(url), "{err}");
        assert!(err.contains(needle), "{url}: {err}");
    }
    // Binding an address already bound without SO_REUSEPORT fails with the address named.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let config = ServeConfig::new(Listen::parse_urls(&format!("http://{addr}")).unwrap(), 1);
    let err = serve(config, |_| async { Ok(Router::builder().build()) })
        .err()
        .expect("bind conflict");
    assert!(err.to_string().contains(&addr.to_string()), "{err}");
}

#[test]
fn factory_error_is_reported_and_nothing_keeps_running() {
    let config = ServeConfig::new(Listen::parse_urls("http://127.0.0.1:0").unwrap(), 2);
    let err = serve(config, |core| async move {
        if core.index == 1 {
            Err("no disk".into())
        } else {
            Ok(Router::builder().build())
        }
    })
    .err()
    .expect("factory failure");
    assert_eq!(err.to_string(), "core 1: no disk");
}

/// Answers each create request on a watch stream with `created` and the client's watch id, and
/// each cancel with `canceled`; ends when the client closes its side.
struct EchoWatch;

#[tonic::async_trait]
impl ferrite_net::pb::etcdserverpb::watch_server::Watch for EchoWatch {
    type WatchStream = std::pin::Pin<
        Box<dyn futures_lite::Stream<Item = Result<WatchResponse, Status>> + Send + 'static>,
    >;

    async fn watch(
        &self,
        req: Request<tonic::Streaming<WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let inbound = req.into_inner();
        let out = futures_lite::stream::unfold(inbound, |mut inbound| async move {
            let next = inbound.message().await;
            match next {
                Ok(Some(WatchRequest {
                    request_union: Some(watch_request::RequestUnion::CreateRequest(c)),
                })) => Some((
                    Ok(WatchResponse {
                        watch_id: c.watch_id,
                        created: true,
                        ..Default::default()
                    }),
                    inbound,
                )),
                Ok(Some(WatchRequest {
                    request_union: Some(watch_request::RequestUnion::CancelRequest(c)),
                })) => Some((
                    Ok(WatchResponse {
                        watch_id: c.watch_id,
                        canceled: true,
                        ..Default::default()
                    }),
                    inbound,
                )),
                Ok(Some(_)) => Some((Err(Status::invalid_argument("unexpected")), inbound)),
                Ok(None) | Err(_) => None,
            }
        });
        Ok(Response::new(Box::pin(out)))
    }
}

#[test]
fn bidi_stream_and_large_messages() {
    const LARGE_BYTES_MAX: usize = 4 * 1024 * 1024;
    let config = ServeConfig::new(Listen::parse_urls("http://127.0.0.1:0").unwrap(), 1);
    let server = serve(config, |core| async move {
        let kv = EchoKv {
            core: core.index as u64,
            served: CoreLocal::new(Cell::new(0)),
        };
        Ok(Router::builder()
            .grpc(
                KvServer::new(kv)
                    .max_decoding_message_size(LARGE_BYTES_MAX)
                    .max_encoding_message_size(LARGE_BYTES_MAX),
            )
            .grpc(ferrite_net::pb::etcdserverpb::watch_server::WatchServer::new(EchoWatch))
            .build())
    })
    .unwrap();
    let addr = server.local_addrs()[0];
    runtime().block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();

        // 3 MiB each way: many HTTP/2 frames and flow-control window updates.
        let mut kv = KvClient::new(channel.clone())
            .max_decoding_message_size(LARGE_BYTES_MAX)
            .max_encoding_message_size(LARGE_BYTES_MAX);
        let big: Vec<u8> = (0..3 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
        let resp = kv
            .range(RangeRequest {
                key: big.clone().into(),
                ..Default::default()
            })
            .await
            .expect("large request served")
            .into_inner();
        assert_eq!(&resp.kvs[0].key[..], &big[..]);

        // A bidirectional stream: requests and responses interleave.
        let (tx, rx) = tokio::sync::mpsc::channel::<WatchRequest>(4);
        let outbound =
            futures_lite::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|m| (m, rx)) },
            );
        let mut watch = WatchClient::new(channel);
        let mut inbound = watch
            .watch(outbound)
            .await
            .expect("stream opens")
            .into_inner();
        for id in [5i64, 9, 12] {
            tx.send(WatchRequest {
                request_union: Some(watch_request::RequestUnion::CreateRequest(
                    WatchCreateRequest {
                        key: b"k".to_vec().into(),
                        watch_id: id,
                        ..Default::default()
                    },
                )),
            })
            .await
            .unwrap();
            let r = inbound
                .message()
                .await
                .unwrap()
                .expect("a response per request");
            assert!(r.created);
            assert_eq!(r.watch_id, id);
        }
        tx.send(WatchRequest {
            request_union: Some(watch_request::RequestUnion::CancelRequest(
                WatchCancelRequest { watch_id: 9 },
            )),
        })
        .await
        .unwrap();
        let r = inbound.message().await.unwrap().unwrap();
        assert!(r.canceled);
        assert_eq!(r.watch_id, 9);
        drop(tx);
        assert!(
            inbound.message().await.unwrap().is_none(),
            "stream ends with the client's"
        );
    });
    server.shutdown();
}

#[test]
fn http1_header_timeout_closes_slow_clients() {
    let server = start(1, 1, |c| {
        c.http1_header_read_timeout = Duration::from_millis(200)
    });
    let addr = server.local_addrs()[0];
    runtime().block_on(async {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        // Start a request but never finish its headers.
        s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
            .await
            .expect("server closed the connection after the header timeout")
            .ok();
        let text = String::from_utf8_lossy(&out);
        assert!(
            text.is_empty() || text.starts_with("HTTP/1.1 408"),
            "unexpected answer {text:?}"
        );
    });
    server.shutdown();
}

/// Range sleeps `delay` on the core and reports, in `header.revision`, the most Range calls it
/// has seen in flight at once on this core.
struct SlowKv {
    delay: Duration,
    in_flight: CoreLocal<Cell<(i64, i64)>>, // (now, most)
}

#[tonic::async_trait]
impl Kv for SlowKv {
    async fn range(&self, _: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        let state = self.in_flight.rc();
        let delay = self.delay;
        let most = run_local(async move {
            let (now, most) = state.get();
            state.set((now + 1, most.max(now + 1)));
            glommio::timer::sleep(delay).await;
            let (now, most) = state.get();
            state.set((now - 1, most));
            most
        })
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(Response::new(RangeResponse {
            header: Some(ResponseHeader {
                revision: most,
                ..Default::default()
            }),
            ..Default::default()
        }))
    }
    async fn put(&self, _: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        Err(Status::unimplemented("put"))
    }
    async fn delete_range(
        &self,
        _: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        Err(Status::unimplemented("delete_range"))
    }
    async fn txn(&self, _: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        Err(Status::unimplemented("txn"))
    }
    async fn compact(
        &self,
        _: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        Err(Status::unimplemented("compact"))
    }
}

#[test]
fn http2_concurrent_streams_are_capped_per_connection() {
    const STREAMS_MAX: u32 = 2;
    let mut config = ServeConfig::new(Listen::parse_urls("http://127.0.0.1:0").unwrap(), 1);
    config.http2_streams_per_connection_max = STREAMS_MAX;
    let server = serve(config, |_| async {
        Ok(Router::builder()
            .grpc(KvServer::new(SlowKv {
                delay: Duration::from_millis(100),
                in_flight: CoreLocal::new(Cell::new((0, 0))),
            }))
            .build())
    })
    .unwrap();
    let addr = server.local_addrs()[0];
    runtime().block_on(async {
        let client = kv_client(addr).await;
        // Warm up so the client has the server's SETTINGS before the burst.
        client.clone().range(RangeRequest::default()).await.unwrap();
        let calls: Vec<_> = (0..6)
            .map(|_| {
                let mut c = client.clone();
                tokio::spawn(async move { c.range(RangeRequest::default()).await })
            })
            .collect();
        let mut most = 0;
        for call in calls {
            let resp = call.await.unwrap().expect("queued calls complete");
            most = most.max(resp.into_inner().header.unwrap().revision);
        }
        // Concurrency happened, and never beyond the advertised limit.
        assert_eq!(most, STREAMS_MAX as i64);
    });
    server.shutdown();
}

/// A stream wrapper standing in for a TLS acceptor: it consumes a 4-byte preamble before
/// handing the stream to HTTP, and refuses connections whose preamble is wrong.
struct PreambleWrapper;

impl ferrite_net::StreamWrapper for PreambleWrapper {
    fn wrap(
        &self,
        mut stream: glommio::net::TcpStream,
    ) -> ferrite_net::LocalBoxFuture<std::io::Result<ferrite_net::BoxStream>> {
        Box::pin(async move {
            use futures_lite::AsyncReadExt;
            let mut magic = [0u8; 4];
            stream.read_exact(&mut magic).await?;
            if &magic != b"FRT1" {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "bad preamble",
                ));
            }
            Ok(Box::new(stream) as ferrite_net::BoxStream)
        })
    }
}

#[test]
fn stream_wrapper_runs_before_http() {
    let mut listen = Listen::parse_urls("http://127.0.0.1:0,http://127.0.0.1:0").unwrap();
    listen[1].wrapper = Some(std::sync::Arc::new(PreambleWrapper));
    let server = start_with(ServeConfig::new(listen, 1));
    let plain = server.local_addrs()[0];
    let wrapped = server.local_addrs()[1];
    runtime().block_on(async {
        let request = "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        for (addr, preamble, served) in [
            (wrapped, "FRT1", true),
            (wrapped, "NOPE", false),
            (plain, "", true),
        ] {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(format!("{preamble}{request}").as_bytes())
                .await
                .unwrap();
            let mut out = String::new();
            let _ = s.read_to_string(&mut out).await;
            assert_eq!(
                out.starts_with("HTTP/1.1 200 OK"),
                served,
                "{preamble}: {out:?}"
            );
            if !served {
                assert!(out.is_empty(), "{out:?}");
            }
        }
    });
    server.shutdown();
}

#[test]
fn router_message_limit_answers_like_grpc_go() {
    const ROUTER_BYTES_MAX: usize = 1000;
    let config = ServeConfig::new(Listen::parse_urls("http://127.0.0.1:0").unwrap(), 1);
    let server = serve(config, |core| async move {
        let kv = EchoKv {
            core: core.index as u64,
            served: CoreLocal::new(Cell::new(0)),
        };
        Ok(Router::builder()
            .grpc_message_bytes_max(ROUTER_BYTES_MAX)
            .grpc(KvServer::new(kv).max_decoding_message_size(MESSAGE_BYTES_MAX))
            .build())
    })
    .unwrap();
    let addr = server.local_addrs()[0];
    runtime().block_on(async {
        let mut kv = kv_client(addr).await;
        let encoded_len = |key_len: usize| {
            use prost::Message;
            RangeRequest {
                key: vec![b'k'; key_len].into(),
                ..Default::default()
            }
            .encoded_len()
        };
        for key_len in [10, 990, 2000, 3000] {
            let result = kv
                .range(RangeRequest {
                    key: vec![b'k'; key_len].into(),
                    ..Default::default()
                })
                .await;
            let len = encoded_len(key_len);
            if len <= ROUTER_BYTES_MAX {
                assert_eq!(
                    result.expect("under the limit").into_inner().kvs[0]
                        .key
                        .len(),
                    key_len
                );
            } else {
                let err = result.expect_err("over the limit");
                assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
                assert_eq!(
                    err.message(),
                    format!(
                        "grpc: received message larger than max ({len} vs. {ROUTER_BYTES_MAX})"
                    )
                );
            }
        }
    });
    server.shutdown();
}
