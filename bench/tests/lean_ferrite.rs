//! The lean client (`bench/src/lean.rs`) against a real ferrite server binary: its answers are
//! decoded right (revisions, values, CAS outcomes), gRPC errors come back as errors, and the
//! workloads on it count what the server refused as errors, never as successes.
//!
//! Needs the ferrite binary: `$FERRITE_BIN`, else `ferrite` in this test's target directory
//! (`cargo build --release -p ferrite` first; scripts/test.sh builds every binary before testing).
//! `FERRITE_BENCH_PORTS=FROM-TO` keeps the server's ports in that range (default: the OS picks).

use bytes::Bytes;
use ferrite_bench::cluster::{self, Cluster, Kind, Spec};
use ferrite_bench::lean::{self, CasOutcome, LeanKv};
use ferrite_bench::workload::{self, ClientKind, Config, Workload};
use ferrite_net::pb::etcdserverpb::{PutRequest, RangeRequest};
use std::path::PathBuf;
use std::time::Duration;

fn ferrite_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("FERRITE_BIN") {
        return PathBuf::from(p);
    }
    // <target>/release/deps/lean_ferrite-<hash> -> <target>/release/ferrite
    let exe = std::env::current_exe().expect("current exe");
    let p = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target dir")
        .join("ferrite");
    assert!(
        p.exists(),
        "{} missing: build it with `cargo build --release -p ferrite` (or set FERRITE_BIN)",
        p.display()
    );
    p
}

async fn start_ferrite(name: &str) -> Cluster {
    if let Ok(r) = std::env::var("FERRITE_BENCH_PORTS") {
        let (lo, hi) = r.split_once('-').expect("FERRITE_BENCH_PORTS=FROM-TO");
        cluster::set_port_range(lo.parse().expect("FROM"), hi.parse().expect("TO"));
    }
    // The cluster's own data directory (under the temp dir) is removed when it is dropped.
    let spec = Spec {
        kind: Kind::Ferrite,
        binary: ferrite_binary(),
        nodes: 1,
        work_dir: std::env::temp_dir(),
        pidfile: None,
    };
    Cluster::start(&spec)
        .await
        .unwrap_or_else(|e| panic!("ferrite starts ({name}): {e}"))
}

async fn lean_kv(endpoint: &str) -> LeanKv {
    let tcp = lean::connect_tcp(endpoint, Duration::from_secs(5)).expect("tcp connect");
    LeanKv::handshake(tcp, endpoint)
        .await
        .expect("http2 handshake")
}

#[tokio::test]
async fn lean_calls_decode_ferrite_answers() {
    let c = start_ferrite("calls").await;
    let mut kv = lean_kv(&c.endpoints[0]).await;
    let key = Bytes::from_static(b"/lean/a");
    let put = |value: &'static str| PutRequest {
        key: key.clone(),
        value: Bytes::from_static(value.as_bytes()),
        ..Default::default()
    };

    // Each put is one revision more than the one before.
    let r1 = lean::put_revision(&kv.put(&put("v1")).await.expect("put")).expect("revision");
    let r2 = lean::put_revision(&kv.put(&put("v2")).await.expect("put")).expect("revision");
    assert_eq!(r2, r1 + 1);

    // A range returns the value put last, with its mod_revision, linearizable or serializable.
    for serializable in [false, true] {
        let g = kv
            .range(&RangeRequest {
                key: key.clone(),
                serializable,
                ..Default::default()
            })
            .await
            .expect("range");
        assert_eq!(g.kvs.len(), 1);
        assert_eq!(g.kvs[0].key, key);
        assert_eq!(g.kvs[0].value, Bytes::from_static(b"v2"));
        assert_eq!(g.kvs[0].mod_revision, r2);
        assert_eq!(g.header.expect("header").revision, r2);
    }
    let absent = kv
        .range(&RangeRequest {
            key: Bytes::from_static(b"/lean/absent"),
            ..Default::default()
        })
        .await
        .expect("range");
    assert!(absent.kvs.is_empty());

    // CAS at the current mod_revision writes; at a stale one it fails the compare and reports
    // the key's current mod_revision, and the value stays.
    let v3 = Bytes::from_static(b"v3");
    let t = kv
        .txn(&lean::cas_request(key.clone(), r2, v3.clone()))
        .await
        .expect("txn");
    let r3 = match lean::cas_outcome(&t).expect("outcome") {
        CasOutcome::Wrote(r) => r,
        other => panic!("CAS at the current mod_revision: {other:?}"),
    };
    assert_eq!(r3, r2 + 1);
    let t = kv
        .txn(&lean::cas_request(
            key.clone(),
            r2,
            Bytes::from_static(b"stale"),
        ))
        .await
        .expect("txn");
    assert_eq!(
        lean::cas_outcome(&t).expect("outcome"),
        CasOutcome::Conflict(r3)
    );
    let g = kv
        .range(&RangeRequest {
            key: key.clone(),
            ..Default::default()
        })
        .await
        .expect("range");
    assert_eq!((g.kvs[0].value.clone(), g.kvs[0].mod_revision), (v3, r3));
    // CAS on an absent key with mod_revision 0 creates it.
    let t = kv
        .txn(&lean::cas_request(
            Bytes::from_static(b"/lean/new"),
            0,
            Bytes::from_static(b"n"),
        ))
        .await
        .expect("txn");
    assert_eq!(
        lean::cas_outcome(&t).expect("outcome"),
        CasOutcome::Wrote(r3 + 1)
    );

    // gRPC errors are errors, with the code's name and the server's message.
    let e = kv
        .range(&RangeRequest {
            key: key.clone(),
            revision: r3 + 1000,
            ..Default::default()
        })
        .await
        .expect_err("a future revision is refused");
    assert_eq!(
        e,
        "OutOfRange: etcdserver: mvcc: required revision is a future revision"
    );
    let e = kv
        .put(&PutRequest::default())
        .await
        .expect_err("an empty key is refused");
    assert!(e.starts_with("InvalidArgument: "), "{e}");
    // The connection still serves after the errors.
    assert_eq!(
        lean::put_revision(&kv.put(&put("v4")).await.expect("put")).expect("revision"),
        r3 + 2
    );
}

fn config(workload: Workload, endpoints: &[String]) -> Config {
    Config {
        workload,
        client: ClientKind::Lean,
        lean_threads: 2,
        endpoints: endpoints.to_vec(),
        clients: 8,
        connections: 3,
        key_space: 100,
        total_ops_max: 1000,
        duration_max: Duration::from_secs(60),
        progress_every: None,
        ..Config::default()
    }
}

#[tokio::test]
async fn lean_workloads_on_ferrite_count_successes_and_errors() {
    let c = start_ferrite("workloads").await;
    for w in [
        Workload::Put,
        Workload::RangeLinearizable,
        Workload::RangeSerializable,
        Workload::TxnCas,
    ] {
        let r = workload::run(config(w, &c.endpoints)).await.expect("run");
        assert_eq!(r.client, "lean", "{w:?}");
        let p = r.primary_stats().expect("primary op");
        assert_eq!(
            (p.ok, r.total_errors),
            (1000, 0),
            "{w:?}: {:?}",
            p.error_kinds
        );
        assert!(r.client_cpu_us_per_op.is_some());
    }
    // 8 clients CAS-updating 3 keys: conflicts happen and are successes of the workload (the
    // txn answered), counted apart.
    let mut cfg = config(Workload::TxnCas, &c.endpoints);
    cfg.key_space = 3;
    let r = workload::run(cfg).await.expect("run");
    assert_eq!(r.primary_stats().expect("txn_cas").ok, 1000);
    assert!(r.counters.get("cas_conflicts").copied().unwrap_or(0) > 0);

    // Puts over the server's request size limit: every one is an error, by message, none a success.
    let mut cfg = config(Workload::Put, &c.endpoints);
    cfg.value_size = 1_600_000; // over --max-request-bytes' default 1.5 MiB, under gRPC's 2 MiB
    cfg.total_ops_max = 20;
    let r = workload::run(cfg).await.expect("run");
    let p = r.primary_stats().expect("put");
    assert_eq!((p.ok, p.errors), (0, 20));
    assert_eq!(
        p.error_kinds.keys().collect::<Vec<_>>(),
        ["InvalidArgument: etcdserver: request is too large"]
    );
    assert_eq!(r.total_ok, 0);
}
