//! Leases across a restart: the lessor is rebuilt from the store (the leases' metadata, then
//! every key's lease field, scanned in pages), so after a kill -9 each lease still owns exactly
//! its keys: TimeToLive lists them and a revoke deletes them, and only them.
//!
//! Against the reference: `FERRITE_TEST_TARGET=etcd cargo test -p ferrite --test lease_restart`.

mod common;

use common::Server;
use etcd_client::{Client, GetOptions, LeaseTimeToLiveOptions, PutOptions};
use std::collections::BTreeSet;
use std::time::Duration;

/// More keys than two pages of the re-attach scan (`LEASE_SCAN_PAGE_KEYS_MIN` = 10,000 in
/// `server/src/server.rs`), so leased keys sit in every page and on the pages' boundaries.
const KEYS: usize = 21_000;
const WRITERS: usize = 32;
const LEASES: usize = 3;
/// Leased keys put again without a lease before the restart (detached: not the lease's).
const DETACHED: usize = 60;
const RPC_TIMEOUT: Duration = Duration::from_secs(20);

fn key(i: usize) -> String {
    format!("/lr/{i:06}")
}

/// Key `i` carries lease `leases[i % (LEASES + 1) - 1]`, or none when `i % (LEASES + 1) == 0`;
/// the first `DETACHED` leased keys are put again without a lease.
fn lease_of(i: usize, leases: &[i64]) -> i64 {
    match i % (LEASES + 1) {
        0 => 0,
        _ if i < DETACHED * (LEASES + 1) => 0,
        r => leases[r - 1],
    }
}

async fn put_all(c: &Client, leases: &[i64]) {
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let mut kv = c.kv_client();
        let leases = leases.to_vec();
        tasks.push(tokio::spawn(async move {
            for i in (w..KEYS).step_by(WRITERS) {
                let lease = match i % (LEASES + 1) {
                    0 => 0,
                    r => leases[r - 1],
                };
                let opts = (lease != 0).then(|| PutOptions::new().with_lease(lease));
                tokio::time::timeout(RPC_TIMEOUT, kv.put(key(i), format!("v{i}"), opts))
                    .await
                    .unwrap_or_else(|_| panic!("put {} timed out", key(i)))
                    .unwrap_or_else(|e| panic!("put {}: {e}", key(i)));
            }
        }));
    }
    for t in tasks {
        t.await.expect("writer task");
    }
    let mut kv = c.kv_client();
    for i in (0..DETACHED * (LEASES + 1)).filter(|i| i % (LEASES + 1) != 0) {
        kv.put(key(i), "detached", None).await.expect("put again");
    }
}

async fn attached(c: &mut Client, lease: i64) -> BTreeSet<String> {
    let r = tokio::time::timeout(
        RPC_TIMEOUT,
        c.lease_time_to_live(lease, Some(LeaseTimeToLiveOptions::new().with_keys())),
    )
    .await
    .expect("timetolive timed out")
    .expect("timetolive");
    assert!(r.ttl() > 0, "lease {lease:x} still alive");
    r.keys()
        .iter()
        .map(|k| String::from_utf8(k.clone()).expect("utf-8 key"))
        .collect()
}

async fn count(c: &mut Client) -> i64 {
    c.get(
        "/lr/",
        Some(GetOptions::new().with_prefix().with_count_only()),
    )
    .await
    .expect("count")
    .count()
}

#[test]
fn many_leased_keys_stay_attached_after_kill_and_restart() {
    // Durable snapshots during the load (etcd's flag too): at the restart most keys are in the
    // store the lessor is rebuilt from, not replayed from the WAL.
    let mut s = Server::start_target(common::Target::from_env(), &["--snapshot-count=2000"]);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let connect = |ep: String| async move { Client::connect([ep], None).await.expect("connect") };

    let leases: Vec<i64> = rt.block_on(async {
        let mut c = connect(s.endpoint.clone()).await;
        let mut leases = Vec::new();
        for _ in 0..LEASES {
            leases.push(c.lease_grant(3600, None).await.expect("grant").id());
        }
        put_all(&c, &leases).await;
        leases
    });
    let expected = |lease: i64| -> BTreeSet<String> {
        (0..KEYS)
            .filter(|&i| lease_of(i, &leases) == lease)
            .map(key)
            .collect()
    };
    let before: Vec<BTreeSet<String>> = rt.block_on(async {
        let mut c = connect(s.endpoint.clone()).await;
        let mut v = Vec::new();
        for &l in &leases {
            v.push(attached(&mut c, l).await);
        }
        v
    });
    for (l, keys) in leases.iter().zip(&before) {
        assert_eq!(keys, &expected(*l), "lease {l:x} before the restart");
    }

    s.restart(); // SIGKILL, then the same command line on the same data dir

    rt.block_on(async {
        let mut c = connect(s.endpoint.clone()).await;
        for &l in &leases {
            let keys = attached(&mut c, l).await;
            assert_eq!(keys.len(), expected(l).len(), "lease {l:x}: attached keys");
            assert_eq!(keys, expected(l), "lease {l:x} after the restart");
        }
        assert_eq!(count(&mut c).await, KEYS as i64);
        // Revoking one lease deletes exactly its keys.
        let revoked = leases[1];
        c.lease_revoke(revoked).await.expect("revoke");
        assert_eq!(count(&mut c).await, (KEYS - expected(revoked).len()) as i64);
        for k in expected(revoked).iter().step_by(97) {
            let r = c.get(k.as_str(), None).await.expect("get revoked key");
            assert!(r.kvs().is_empty(), "{k} outlived its lease");
        }
        // The others' keys and the unleased ones are still there, still attached.
        for &l in [leases[0], leases[2]].iter() {
            assert_eq!(attached(&mut c, l).await, expected(l), "lease {l:x}");
        }
        for i in (0..KEYS)
            .filter(|&i| lease_of(i, &leases) == 0)
            .step_by(101)
        {
            let r = c.get(key(i), None).await.expect("get unleased key");
            assert_eq!(r.kvs().len(), 1, "{} kept", key(i));
            assert_eq!(r.kvs()[0].lease(), 0, "{} carries no lease", key(i));
        }
    });
}
