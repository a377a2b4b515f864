//! Crash tests: the same workload is cut after every single write / sync / resize, and the disk
//! image left behind (synced bytes, plus each unsynced write kept, dropped or torn at a sector)
//! must reopen as exactly one of the durable commits the workload had reached.

use std::collections::HashMap;
use std::sync::Arc;

use ferrite_btree::db::Db;
use ferrite_btree::page::{Meta, PAGE_SIZE};
use ferrite_btree::{DbOptions, MvccStore, RangeOptions, SimStorage, StoreError, StoreOptions};

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

/// `deferred`: the server's way, forced durable commits are started by the caller and their
/// fdatasync runs later (`commit_durable_start` / `commit_durable_finish`).
fn opts_deferred(deferred: bool) -> StoreOptions {
    let mut o = StoreOptions {
        compaction_entries_per_commit: 7,
        defrag_pages_per_slice: 4,
        ..StoreOptions::default()
    };
    o.db.grow_bytes_min = 16 << 10;
    // Small, so that some non-durable commits are forced durable.
    o.db.unsynced_freed_bytes_max = 40 * 4096;
    o.db.defer_forced_sync = deferred;
    o
}

/// Runs the workload until an operation fails. Calls `on_commit(n, acked, store)` after each
/// successful commit `n`, `acked` being the newest commit known durable.
///
/// Not `deferred`: every fourth commit is durable (others may be forced durable). `deferred`:
/// every fourth commit, and any commit once the writer wants one, starts a durable commit
/// whose sync runs two commits later, with non-durable commits in between (as the server's
/// `store-sync` thread does).
fn workload(
    s: &MvccStore,
    deferred: bool,
    mut on_commit: impl FnMut(u64, u64, &MvccStore),
) -> Result<(), StoreError> {
    let mut w = s.writer();
    let mut acked = 0;
    let mut in_flight: Option<(u64, ferrite_btree::PendingSync)> = None;
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
        if !deferred {
            w.commit(n % 4 == 0)?;
            if n % 4 == 0 {
                acked = n;
            }
        } else {
            w.commit(false)?;
            if n % 4 == 0 || (in_flight.is_none() && w.wants_durable()) {
                if let Some((m, p)) = in_flight.take() {
                    // Starting another durable commit syncs the one in flight first.
                    drop(p);
                    w.commit_durable_start().map(|p| in_flight = Some((n, p)))?;
                    acked = m;
                } else {
                    w.commit_durable_start().map(|p| in_flight = Some((n, p)))?;
                }
            } else if n % 4 == 2 {
                if let Some((m, p)) = in_flight.take() {
                    w.commit_durable_finish(p.sync()?)?;
                    acked = m;
                }
            }
        }
        on_commit(n, acked, s);
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
    crash_at_every_io(false);
}

/// As above, with durable commits synced a few commits after they were written.
#[test]
fn crash_at_every_io_with_deferred_syncs_reopens_a_durable_commit() {
    crash_at_every_io(true);
}

fn crash_at_every_io(deferred: bool) {
    // Reference run: fingerprints of every commit and the op count.
    let sim = Arc::new(SimStorage::new(Vec::new()));
    let s = MvccStore::open_storage(sim.clone(), opts_deferred(deferred)).unwrap();
    let mut prints: HashMap<u64, Fingerprint> = HashMap::new();
    prints.insert(0, fingerprint(&s));
    let ops_at_open = sim.ops_done();
    workload(&s, deferred, |n, _, s| {
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
    let mut discarded = 0;
    for cut in 0..total_ops {
        let sim = Arc::new(SimStorage::new(Vec::new()));
        let s = MvccStore::open_storage(sim.clone(), opts_deferred(deferred)).unwrap();
        sim.fail_after_ops(Some(cut));
        let (mut last_ok, mut acked) = (0, 0);
        let r = workload(&s, deferred, |n, a, _| (last_ok, acked) = (n, a));
        assert!(
            r.is_err(),
            "cut {cut} of {total_ops} did not fail the workload"
        );
        drop(s);
        for seed in 0..8 {
            let img = sim.crash_image(seed * 7919 + cut);
            let sim2 = Arc::new(SimStorage::new(img));
            let s2 = MvccStore::open_storage(sim2, opts_deferred(deferred))
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
            assert!(
                commit >= acked,
                "cut {cut} seed {seed}: reopened at commit {commit}, durable commit {acked} lost"
            );
            if s2.open_report().discarded.is_some() {
                discarded += 1;
            }
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
    // Some crash images held a newer meta page whose commit record did not verify.
    assert!(
        discarded > 10,
        "torn durable commits seen only {discarded} times"
    );
}

fn db_opts() -> DbOptions {
    DbOptions {
        grow_bytes_min: 16 << 10,
        ..DbOptions::default()
    }
}

fn contents(db: &Db) -> Vec<(Vec<u8>, Vec<u8>)> {
    let snap = db.read();
    let mut c = snap.cursor();
    c.seek_first().unwrap();
    let mut out = Vec::new();
    while let Some((k, v)) = c.current() {
        out.push((k.to_vec(), c.value(v).unwrap().into_owned()));
        c.next().unwrap();
    }
    out
}

/// A durable commit is one burst of writes and one fdatasync. Cut right before that sync, keep
/// a seeded random subset of its writes (each kept, dropped or torn), reopen: the tree is
/// exactly the previous durable commit or the new one, never a mix, and both happen.
#[test]
fn single_sync_commit_torn_in_random_subsets_opens_old_or_new() {
    let value = |i: u32, round: u32| format!("value {i} round {round}").repeat(1 + i as usize % 7);
    let fill = |db: &Db, round: u32, n: u32| {
        let mut w = db.writer();
        for i in 0..n {
            let k = format!("key{:05}", (i * 7919) % 2000);
            w.insert(k.as_bytes(), value(i, round).as_bytes()).unwrap();
        }
        if round == 2 {
            // A value in overflow pages and a removal, so the commit frees and allocates.
            w.insert(b"big", &vec![round as u8; 20_000]).unwrap();
            w.remove(b"key00000").unwrap();
        }
        w.commit(true)
    };
    // Reference run: the ops one durable commit takes, and the two states.
    let sim = Arc::new(SimStorage::new(Vec::new()));
    let db = Db::open_storage(sim.clone(), db_opts()).unwrap();
    fill(&db, 1, 600).unwrap();
    let old = contents(&db);
    let before = sim.ops_done();
    fill(&db, 2, 40).unwrap();
    let ops = sim.ops_done() - before;
    let new = contents(&db);
    assert_ne!(old, new);
    assert!(ops >= 3, "commit took {ops} I/O operations");
    drop(db);

    let (mut saw_old, mut saw_new) = (0, 0);
    for seed in 0..600u64 {
        let sim = Arc::new(SimStorage::new(Vec::new()));
        let db = Db::open_storage(sim.clone(), db_opts()).unwrap();
        fill(&db, 1, 600).unwrap();
        // Every write of the commit succeeds; its one sync is the crash.
        sim.fail_after_ops(Some(ops - 1));
        assert!(fill(&db, 2, 40).is_err());
        drop(db);
        let img = sim.crash_image(seed);
        let db2 = Db::open_storage(Arc::new(SimStorage::new(img)), db_opts())
            .unwrap_or_else(|e| panic!("seed {seed}: reopen failed: {e}"));
        let got = contents(&db2);
        let report = db2.writer().open_report().clone();
        if got == old {
            saw_old += 1;
        } else {
            assert!(got == new, "seed {seed}: a mix of two commits ({report:?})");
            assert!(report.discarded.is_none(), "seed {seed}: {report:?}");
            saw_new += 1;
        }
        db2.writer()
            .check()
            .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        // The reopened tree takes writes.
        let mut w = db2.writer();
        w.insert(b"after", b"crash").unwrap();
        w.commit(true).unwrap();
    }
    assert!(saw_old > 0 && saw_new > 0, "old {saw_old}, new {saw_new}");
}

/// Files written before the commit record existed (zeros after the application words) open.
#[test]
fn meta_without_a_commit_record_opens() {
    let sim = Arc::new(SimStorage::new(Vec::new()));
    let db = Db::open_storage(sim.clone(), db_opts()).unwrap();
    {
        let mut w = db.writer();
        for i in 0..500u32 {
            w.insert(format!("k{i}").as_bytes(), &[i as u8; 100])
                .unwrap();
        }
        w.commit(true).unwrap();
    }
    let want = contents(&db);
    drop(db);
    let mut img = sim.written_image();
    let mut cleared = 0;
    for slot in 0..2u64 {
        let at = slot as usize * PAGE_SIZE;
        if let Ok(mut m) = Meta::decode(&img[at..at + PAGE_SIZE], slot) {
            cleared += (m.record != 0) as u32;
            m.record = 0;
            m.record_entries = 0;
            m.record_crc = 0;
            img[at..at + PAGE_SIZE].copy_from_slice(&m.encode(slot));
        }
    }
    assert!(cleared > 0);
    let db = Db::open_storage(Arc::new(SimStorage::new(img)), db_opts()).unwrap();
    assert_eq!(contents(&db), want);
    assert_eq!(db.writer().open_report().verified_pages, 0);
}
