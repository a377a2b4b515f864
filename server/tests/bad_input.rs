//! Bad input on the client port, answered as etcd 3.4 answers it: the same raw gRPC requests
//! (hand-built HTTP/2 frames and protobuf bodies, so nothing in a client library can paper over
//! a difference) go to ferrite and to Debian's etcd, and the `grpc-status` / `grpc-message`
//! trailers are compared. Cases: unknown service and method, malformed and truncated protobuf,
//! a compressed frame without an encoding, oversize requests (both etcd's own limit and the gRPC
//! receive limit above it), empty keys, compacted and future revisions, an inverted range,
//! duplicate keys and too many operations in a Txn, a missing lease.
//!
//! After the bad input the server must still serve, and have lost nothing: a key written before
//! is read back at the end from both.
//!
//! Needs `/usr/bin/etcd` (the README's test command installs it); without it the test compares
//! nothing and fails, rather than passing vacuously.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{Server, Target};
use ferrite_net::pb::etcdserverpb as pb;
use prost::Message;

/// One raw unary gRPC call's outcome: the trailers' status code and message, and the response
/// message bytes (empty on error).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Answer {
    code: u32,
    message: String,
    body: Vec<u8>,
}

/// A gRPC length-prefixed frame: compressed flag, 4-byte big-endian length, message.
fn frame(compressed: bool, declared_len: u32, msg: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(5 + msg.len());
    v.push(u8::from(compressed));
    v.extend_from_slice(&declared_len.to_be_bytes());
    v.extend_from_slice(msg);
    v
}

fn whole(msg: &[u8]) -> Vec<u8> {
    frame(false, msg.len() as u32, msg)
}

/// Sends `body` as the whole request stream of `path` and waits (bounded) for the trailers.
async fn call(port: u16, path: &str, body: Vec<u8>) -> Answer {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let (client, conn) = h2::client::Builder::new()
        .max_frame_size(1 << 20)
        .handshake::<_, Bytes>(tcp)
        .await
        .expect("h2 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut client = client.ready().await.expect("h2 ready");
    let req = http::Request::builder()
        .method("POST")
        .uri(format!("http://127.0.0.1:{port}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (resp, mut send) = client.send_request(req, false).expect("send request");
    send.reserve_capacity(body.len());
    // A server may answer (and close the stream) before the whole body is sent: the answer
    // is what counts.
    let _ = send.send_data(Bytes::from(body), true);
    let resp = resp.await.expect("response headers");
    let (parts, mut recv) = resp.into_parts();
    // A trailers-only response carries the status in the headers.
    let mut status = parts.headers.clone();
    let mut data = Vec::new();
    while let Some(chunk) = recv.data().await {
        let chunk = chunk.expect("response data");
        let _ = recv.flow_control().release_capacity(chunk.len());
        data.extend_from_slice(&chunk);
    }
    if let Some(t) = recv.trailers().await.expect("trailers") {
        status = t;
    }
    let code = status
        .get("grpc-status")
        .map(|v| v.to_str().unwrap().parse().unwrap())
        .unwrap_or_else(|| panic!("{path}: no grpc-status in {status:?}"));
    let message = status
        .get("grpc-message")
        .map(|v| ferrite_net::router::percent_decode(v.to_str().unwrap()))
        .unwrap_or_default();
    let body = if data.len() >= 5 {
        data[5..].to_vec()
    } else {
        Vec::new()
    };
    Answer {
        code,
        message,
        body,
    }
}

/// How two answers must agree.
#[derive(Clone, Copy)]
enum Same {
    /// Code and message exactly.
    Exactly,
    /// Code exactly; the message starts with the same text up to the first ':' (Go's decoder
    /// details after it are Go's own).
    CodeAndPrefix,
}

struct Case {
    name: &'static str,
    path: &'static str,
    body: Vec<u8>,
    same: Same,
}

fn put(key: &[u8], value: Vec<u8>, lease: i64) -> Vec<u8> {
    pb::PutRequest {
        key: key.to_vec().into(),
        value: value.into(),
        lease,
        ..Default::default()
    }
    .encode_to_vec()
}

fn range(key: &[u8], end: &[u8], revision: i64) -> Vec<u8> {
    pb::RangeRequest {
        key: key.to_vec().into(),
        range_end: end.to_vec().into(),
        revision,
        ..Default::default()
    }
    .encode_to_vec()
}

fn txn_puts(keys: &[Vec<u8>]) -> Vec<u8> {
    pb::TxnRequest {
        success: keys
            .iter()
            .map(|k| pb::RequestOp {
                request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
                    key: k.clone().into(),
                    value: b"v".to_vec().into(),
                    ..Default::default()
                })),
            })
            .collect(),
        ..Default::default()
    }
    .encode_to_vec()
}

fn cases() -> Vec<Case> {
    let small_put = put(b"k", b"v".to_vec(), 0);
    let mut cases = vec![
        Case {
            name: "unknown service",
            path: "/foo.Bar/Baz",
            body: whole(&[]),
            same: Same::Exactly,
        },
        Case {
            name: "unknown method",
            path: "/etcdserverpb.KV/Nope",
            body: whole(&[]),
            same: Same::Exactly,
        },
        Case {
            name: "malformed protobuf (field with a wire type that does not exist)",
            path: "/etcdserverpb.KV/Put",
            body: whole(&[0x0f, 0xff, 0xff]),
            same: Same::CodeAndPrefix,
        },
        Case {
            name: "malformed protobuf (length past the end)",
            path: "/etcdserverpb.KV/Range",
            body: whole(&[0x0a, 0x40, b'a']),
            same: Same::CodeAndPrefix,
        },
        Case {
            name: "truncated gRPC frame",
            path: "/etcdserverpb.KV/Put",
            body: frame(false, 100, &small_put),
            same: Same::CodeAndPrefix,
        },
        Case {
            name: "compressed flag without grpc-encoding",
            path: "/etcdserverpb.KV/Put",
            body: frame(true, small_put.len() as u32, &small_put),
            same: Same::CodeAndPrefix,
        },
        Case {
            name: "value over --max-request-bytes",
            path: "/etcdserverpb.KV/Put",
            body: whole(&put(b"big", vec![b'x'; 1_700_000], 0)),
            same: Same::Exactly,
        },
        Case {
            name: "message over the gRPC receive limit",
            path: "/etcdserverpb.KV/Put",
            body: whole(&put(b"huge", vec![b'x'; 2_200_000], 0)),
            same: Same::CodeAndPrefix,
        },
        Case {
            name: "put with an empty key",
            path: "/etcdserverpb.KV/Put",
            body: whole(&put(b"", b"v".to_vec(), 0)),
            same: Same::Exactly,
        },
        Case {
            name: "range with an empty key",
            path: "/etcdserverpb.KV/Range",
            body: whole(&range(b"", b"", 0)),
            same: Same::Exactly,
        },
        Case {
            name: "delete with an empty key",
            path: "/etcdserverpb.KV/DeleteRange",
            body: whole(&pb::DeleteRangeRequest::default().encode_to_vec()),
            same: Same::Exactly,
        },
        Case {
            name: "range at a compacted revision",
            path: "/etcdserverpb.KV/Range",
            body: whole(&range(b"keep", b"", 2)),
            same: Same::Exactly,
        },
        Case {
            name: "range at a future revision",
            path: "/etcdserverpb.KV/Range",
            body: whole(&range(b"keep", b"", 1_000_000)),
            same: Same::Exactly,
        },
        Case {
            name: "inverted range (end before key) is empty, not an error",
            path: "/etcdserverpb.KV/Range",
            body: whole(&range(b"zzz", b"a", 0)),
            same: Same::Exactly,
        },
        Case {
            name: "txn with a duplicate key",
            path: "/etcdserverpb.KV/Txn",
            body: whole(&txn_puts(&[b"d".to_vec(), b"d".to_vec()])),
            same: Same::Exactly,
        },
        Case {
            name: "txn with too many operations",
            path: "/etcdserverpb.KV/Txn",
            body: whole(&txn_puts(
                &(0..129)
                    .map(|i| format!("t{i}").into_bytes())
                    .collect::<Vec<_>>(),
            )),
            same: Same::Exactly,
        },
        Case {
            name: "put with a lease that does not exist",
            path: "/etcdserverpb.KV/Put",
            body: whole(&put(b"l", b"v".to_vec(), 0x1234)),
            same: Same::Exactly,
        },
        Case {
            name: "compact to a future revision",
            path: "/etcdserverpb.KV/Compact",
            body: whole(
                &pb::CompactionRequest {
                    revision: 1_000_000,
                    physical: false,
                }
                .encode_to_vec(),
            ),
            same: Same::Exactly,
        },
        Case {
            name: "compact to an already compacted revision",
            path: "/etcdserverpb.KV/Compact",
            body: whole(
                &pb::CompactionRequest {
                    revision: 2,
                    physical: false,
                }
                .encode_to_vec(),
            ),
            same: Same::Exactly,
        },
        Case {
            name: "lease time-to-live of a lease that does not exist",
            path: "/etcdserverpb.Lease/LeaseTimeToLive",
            body: whole(&pb::LeaseTimeToLiveRequest { id: 77, keys: true }.encode_to_vec()),
            same: Same::Exactly,
        },
        Case {
            name: "lease grant with a negative id",
            path: "/etcdserverpb.Lease/LeaseGrant",
            body: whole(&pb::LeaseGrantRequest { ttl: 10, id: -5 }.encode_to_vec()),
            same: Same::Exactly,
        },
    ];
    // Still serving, nothing lost: read the key written before the bad input.
    cases.push(Case {
        name: "the key written first is still there",
        path: "/etcdserverpb.KV/Range",
        body: whole(&range(b"keep", b"", 0)),
        same: Same::Exactly,
    });
    cases
}

/// Writes revisions 2..=4 and compacts at 3, so revision 2 is compacted.
async fn prepare(port: u16) {
    for v in ["1", "2", "3"] {
        let a = call(
            port,
            "/etcdserverpb.KV/Put",
            whole(&put(b"keep", v.as_bytes().to_vec(), 0)),
        )
        .await;
        assert_eq!(a.code, 0, "prepare put: {a:?}");
    }
    let a = call(
        port,
        "/etcdserverpb.KV/Compact",
        whole(
            &pb::CompactionRequest {
                revision: 3,
                physical: true,
            }
            .encode_to_vec(),
        ),
    )
    .await;
    assert_eq!(a.code, 0, "prepare compact: {a:?}");
}

/// The comparable part of a successful Range answer (the header's ids differ by design).
fn range_view(body: &[u8]) -> String {
    let r = pb::RangeResponse::decode(body).expect("RangeResponse");
    let kvs: Vec<_> = r
        .kvs
        .iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(&kv.key).into_owned(),
                String::from_utf8_lossy(&kv.value).into_owned(),
                kv.create_revision,
                kv.mod_revision,
                kv.version,
            )
        })
        .collect();
    format!(
        "count {} more {} rev {} kvs {kvs:?}",
        r.count,
        r.more,
        r.header.map(|h| h.revision).unwrap_or(-1)
    )
}

async fn answers(port: u16) -> Vec<Answer> {
    prepare(port).await;
    let mut out = Vec::new();
    for c in cases() {
        let a = tokio::time::timeout(Duration::from_secs(10), call(port, c.path, c.body))
            .await
            .unwrap_or_else(|_| panic!("{}: no answer within 10 s", c.name));
        out.push(a);
    }
    out
}

#[test]
fn bad_input_is_answered_as_etcd_answers_it() {
    assert!(
        std::path::Path::new(&Target::Etcd.binary()).exists(),
        "this test compares with etcd 3.4 at {}: install Debian's etcd-server",
        Target::Etcd.binary().display()
    );
    let ferrite = Server::start_target(Target::Ferrite, &[]);
    let etcd = Server::start_target(Target::Etcd, &[]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let ours = rt.block_on(answers(ferrite.client_port));
    let theirs = rt.block_on(answers(etcd.client_port));
    let mut diffs = Vec::new();
    for ((c, a), b) in cases().iter().zip(&ours).zip(&theirs) {
        let agree = match c.same {
            Same::Exactly => a.code == b.code && a.message == b.message,
            Same::CodeAndPrefix => {
                let prefix = |m: &str| m.split(':').next().unwrap_or("").to_string();
                a.code == b.code
                    && !a.message.is_empty()
                    && prefix(&a.message) == prefix(&b.message)
            }
        };
        let bodies_agree = a.code != 0
            || c.path != "/etcdserverpb.KV/Range"
            || range_view(&a.body) == range_view(&b.body);
        if !agree || !bodies_agree {
            diffs.push(format!(
                "{}:\n  ferrite: {} {:?}\n  etcd:    {} {:?}",
                c.name, a.code, a.message, b.code, b.message
            ));
        }
        if c.path == "/etcdserverpb.KV/Range" && a.code == 0 {
            eprintln!("{}: {}", c.name, range_view(&a.body));
        }
    }
    assert!(
        diffs.is_empty(),
        "answers that differ from etcd 3.4:\n{}\nferrite log tail:\n{}",
        diffs.join("\n"),
        ferrite.log_tail(2000)
    );
    // The last case read the first key back: it must be there, with its three versions.
    let last = ours.last().unwrap();
    assert_eq!(last.code, 0);
    assert!(
        range_view(&last.body).contains("\"keep\", \"3\""),
        "{}",
        range_view(&last.body)
    );
}
