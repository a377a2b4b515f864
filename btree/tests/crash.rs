//! Crash tests: the same workload is cut after every single write / sync / resize, and the disk
//! image left behind (synced bytes, plus each unsynced write kept, dropped or torn at a sector)
//! must reopen as exactly one of the durable commits the workload had reached.

use std::collections::HashMap;
use std::sync::Arc;

use ferrite_btree::{MvccStore, RangeOptions, SimStorage, StoreError, StoreOptions};

/// What a commit left: revision, every live kv, the hash of the history.
type Fingerprint = (i64, Vec<(Vec<u8>, Vec<u8>, i64)>, u32);

fn fingerprint(s: &MvccStore) -> Fingerprint {
    let v = s.read();
    let r = v
        .range(&RangeOptions {
            key: vec![0],
            range_end: vec![0],
            ..RangeOptions::default()
        })
        .unwrap();
    let kvs = r
        .kvs
        .into_iter()
        .map(|kv| (kv.key, kv.value, kv.version))
        .collect();
    (v.revision(), kvs, s.hash_kv(0).unwrap().0)
}

fn opts() -> StoreOptions {
    let mut o = StoreOptions {
        compaction_entries_per_commit: 7,
        defrag_pages_per_slice: 4,
        ..StoreOptions::default()
    };
    o.db.grow_bytes_min = 16 << 10;
    // Small, so that some non-durable commits are forced durable.
    o.db.unsynced_freed_bytes_max = 40 * 4096;
    o
}

/// Runs the workload until an operation fails. Calls `on_commit(n, store)` after each
/// successful commit `n` and returns the durable commits reached (by number).
fn workload(s: &MvccStore, mut on_commit: impl FnMut(u64, &MvccStore)) -> Result<(), StoreError> {
    let mut w = s.writer();
    let big: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
    for n in 1..=40u64 {
        {
            let mut t = w.txn();
            for j in 0..(n % 5 + 1) {
                let k = format!("key/{:03}", (n * 7 + j * 13) % 50);
                t.put(
                    k.as_bytes(),
                    format!("v{n}.{j}").repeat((n % 9) as usize).as_bytes(),
                    0,
                );
            }
            if n % 6 == 0 {
                t.delete_range(b"key/01", b"key/02");
            }
            if n % 10 == 3 {
                t.put(b"big", &big[..(n as usize * 2000)], 0);
            }
            t.end();
        }
        w.put_meta(b"commit", &n.to_le_bytes());
        w.commit(n % 4 == 0)?;
        on_commit(n, s);
        if n == 20 {
            let rev = s.read().revision();
            s.compact(rev - 5).map_err(|e| match e {
                ferrite_btree::MvccError::Store(e) => e,
                e => panic!("{e}"),
            })?;
        }
        if n == 30 {
            s.defragment()?;
        }
    }
    Ok(())
}

#[test]
fn crash_at_every_io_reopens_a_durable_commit() {
    // Reference run: fingerprints of every commit and the op count.
    let sim = Arc::new(SimStorage::new(Vec::new()));
    let s = MvccStore::open_storage(sim.clone(), opts()).unwrap();
    let mut prints: HashMap<u64, Fingerprint> = HashMap::new();
    prints.insert(0, fingerprint(&s));
    let ops_at_open = sim.ops_done();
    workload(&s, |n, s| {
        let commit = s
            .read()
            .get_meta(b"commit")
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()));
        assert_eq!(commit, Some(n));
        prints.insert(n, fingerprint(s));
    })
    .unwrap();
    let total_ops = sim.ops_done() - ops_at_open;
    assert!(
        total_ops > 60,
        "workload too small: {total_ops} I/O operations"
    );

    let mut reopened_at = std::collections::BTreeSet::new();
    for cut in 0..total_ops {
        let sim = Arc::new(SimStorage::new(Vec::new()));
        let s = MvccStore::open_storage(sim.clone(), opts()).unwrap();
        sim.fail_after_ops(Some(cut));
        let mut last_ok = 0;
        let r = workload(&s, |n, _| last_ok = n);
        assert!(
            r.is_err(),
            "cut {cut} of {total_ops} did not fail the workload"
        );
        drop(s);
        for seed in 0..4 {
            let img = sim.crash_image(seed * 7919 + cut);
            let sim2 = Arc::new(SimStorage::new(img));
            let s2 = MvccStore::open_storage(sim2, opts())
                .unwrap_or_else(|e| panic!("cut {cut} seed {seed}: reopen failed: {e}"));
            let commit = s2
                .read()
                .get_meta(b"commit")
                .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
                .unwrap_or(0);
            assert!(
                commit <= last_ok + 1,
                "cut {cut}: reopened at commit {commit}, but only {last_ok} completed"
            );
            assert_eq!(
                fingerprint(&s2),
                prints[&commit],
                "cut {cut} seed {seed}: state differs from commit {commit}"
            );
            reopened_at.insert(commit);
            s2.check()
                .unwrap_or_else(|e| panic!("cut {cut} seed {seed}: {e}"));
            // The reopened store keeps working.
            let mut w = s2.writer();
            let mut t = w.txn();
            t.put(b"after", b"crash", 0);
            t.end();
            w.commit(true).unwrap();
        }
    }
    // The cuts landed on many different durable commits.
    assert!(reopened_at.len() > 8, "reopened only at {reopened_at:?}");
}
