//! `/metrics` and `--listen-metrics-urls` against the real binary: etcd's metric names move
//! with the operations etcdctl performs, on the client port and on the separate metrics
//! listener (which also serves `/health`, as etcd's does).
//!
//! `FERRITE_TEST_TARGET=etcd cargo test --release -p ferrite --test metrics` runs the same
//! checks against Debian's etcd 3.4.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{err_text, free_port, ok_text, Server, Target};

/// One plain HTTP/1.1 GET; returns (status, body).
fn http_get(port: u16, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read response");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("HTTP response");
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status code");
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    (status, body)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        s = &rest[n..];
        s = s.strip_prefix("\r\n").unwrap_or(s);
    }
    out
}

/// Sample lines `name{labels} value` → value (comments skipped).
fn parse(text: &str) -> HashMap<String, f64> {
    let mut m = HashMap::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (name, value) = line.rsplit_once(' ').expect("sample line");
        m.insert(
            name.to_string(),
            value.parse::<f64>().unwrap_or_else(|_| panic!("{line}")),
        );
    }
    m
}

fn get(m: &HashMap<String, f64>, name: &str) -> f64 {
    *m.get(name)
        .unwrap_or_else(|| panic!("metric {name} missing"))
}

fn grpc(kind: &str, method: &str, code: Option<&str>) -> String {
    match code {
        Some(c) => format!(
            "grpc_server_{kind}_total{{grpc_code=\"{c}\",grpc_method=\"{method}\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"}}"
        ),
        None => format!(
            "grpc_server_{kind}_total{{grpc_method=\"{method}\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"}}"
        ),
    }
}

#[test]
fn metrics_move_with_operations_on_both_listeners() {
    let metrics_port = free_port();
    let metrics_url = format!("--listen-metrics-urls=http://127.0.0.1:{metrics_port}");
    let s = Server::start_target(Target::from_env(), &[&metrics_url]);

    let (code, body) = http_get(s.client_port, "/metrics");
    assert_eq!(code, 200);
    let before = parse(&body);
    assert_eq!(get(&before, "etcd_server_has_leader"), 1.0);
    assert!(get(&before, "etcd_server_leader_changes_seen_total") >= 1.0);
    assert!(before.contains_key("etcd_server_version{server_version=\"3.4.23\"}"));
    assert!(get(&before, "process_resident_memory_bytes") > 0.0);
    assert!(get(&before, "etcd_mvcc_db_total_size_in_bytes") > 0.0);

    ok_text(&s.etcdctl(&["put", "k1", "v1"]), "put k1");
    ok_text(&s.etcdctl(&["put", "k2", "v2"]), "put k2");
    ok_text(&s.etcdctl(&["get", "k1"]), "get k1");
    ok_text(&s.etcdctl(&["del", "k1"]), "del k1");
    let txn = "value(\"k2\") = \"v2\"\n\nput k3 v3\nget k2\n\n\n";
    let out = ok_text(
        &s.etcdctl_with(&["txn"], Some(txn), common::ETCDCTL_TIMEOUT),
        "txn",
    );
    assert!(out.starts_with("SUCCESS"), "{out}");
    // A put with a lease that does not exist: NotFound.
    let e = err_text(
        &s.etcdctl(&["put", "k4", "v4", "--lease=1234abcd"]),
        "put with a missing lease",
    );
    assert!(e.contains("requested lease not found"), "{e}");

    // Scraped from the metrics listener this time: the same process-wide values.
    let (code, body) = http_get(metrics_port, "/metrics");
    assert_eq!(code, 200);
    let after = parse(&body);
    let delta = |name: &str| get(&after, name) - get(&before, name);

    // Puts: k1, k2 and the txn's k3; deletes: k1; the txn has two ops.
    assert_eq!(delta("etcd_mvcc_put_total"), 3.0);
    assert_eq!(delta("etcd_mvcc_delete_total"), 1.0);
    assert_eq!(delta("etcd_mvcc_txn_total"), 1.0);
    assert!(delta("etcd_mvcc_range_total") >= 2.0);
    assert_eq!(get(&after, "etcd_debugging_mvcc_keys_total"), 2.0);
    assert!(delta("etcd_server_proposals_committed_total") >= 4.0);
    assert!(delta("etcd_server_proposals_applied_total") >= 4.0);
    assert_eq!(get(&after, "etcd_server_proposals_pending"), 0.0);
    assert!(delta("etcd_disk_wal_fsync_duration_seconds_count") >= 4.0);
    // etcd commits its backend on a 100 ms timer, ferrite once per applied batch: only the
    // histogram's presence and monotonicity are common.
    assert!(delta("etcd_disk_backend_commit_duration_seconds_count") >= 0.0);
    assert!(delta("etcd_network_client_grpc_received_bytes_total") > 0.0);
    assert!(delta("etcd_network_client_grpc_sent_bytes_total") > 0.0);
    assert_eq!(
        get(&after, "etcd_debugging_mvcc_current_revision"),
        get(&before, "etcd_debugging_mvcc_current_revision") + 4.0
    );

    assert_eq!(delta(&grpc("started", "Put", None)), 3.0);
    assert_eq!(delta(&grpc("handled", "Put", Some("OK"))), 2.0);
    assert_eq!(delta(&grpc("handled", "Put", Some("NotFound"))), 1.0);
    assert_eq!(delta(&grpc("handled", "Txn", Some("OK"))), 1.0);
    assert_eq!(delta(&grpc("handled", "Range", Some("OK"))), 1.0);
    assert_eq!(delta(&grpc("handled", "DeleteRange", Some("OK"))), 1.0);

    // The metrics listener serves /health too.
    let (code, body) = http_get(metrics_port, "/health");
    assert_eq!(code, 200);
    assert!(body.contains("\"health\":\"true\""), "{body}");
}
