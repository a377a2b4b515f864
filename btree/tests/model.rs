//! Model-based property tests: the page layer against a `BTreeMap`, and the MVCC layer against
//! a replay of its history, with commits, crashes (reopening a torn image of the simulated
//! disk), compactions and old snapshots kept alive across commits.
//!
//! More cases: `PROPTEST_CASES=1000 cargo test -p ferrite-btree --release --test model`.

use std::collections::BTreeMap;
use std::sync::Arc;

use ferrite_btree::db::Db;
use ferrite_btree::{
    DbOptions, EventKind, KeyValue, MvccError, MvccStore, RangeOptions, SimStorage, StoreOptions,
};
use proptest::prelude::*;

type Map = BTreeMap<Vec<u8>, Vec<u8>>;
type EventBrief = (EventKind, Vec<u8>, i64, i64, i64, Option<i64>);

fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

// ------------------------------------------------------------------ page layer

#[derive(Clone, Debug)]
enum DbOp {
    Insert { key: u16, len: usize, fill: u8 },
    Remove { key: u16 },
    Commit { durable: bool },
    Crash { seed: u64 },
    PinSnapshot,
}

fn db_key(k: u16) -> Vec<u8> {
    // Lengths 1..=90, shared prefixes, some zero bytes.
    let len = 1 + (k as usize * 7) % 90;
    let mut v: Vec<u8> = format!("{k:05}").into_bytes();
    v.resize(len.max(5), (k % 3) as u8);
    v
}

fn db_op() -> impl Strategy<Value = DbOp> {
    prop_oneof![
        20 => (0u16..600, prop_oneof![8 => 0usize..300, 2 => 300usize..3000, 1 => 3000usize..20_000], any::<u8>())
            .prop_map(|(key, len, fill)| DbOp::Insert { key, len, fill }),
        8 => (0u16..600).prop_map(|key| DbOp::Remove { key }),
        3 => any::<bool>().prop_map(|durable| DbOp::Commit { durable }),
        1 => any::<u64>().prop_map(|seed| DbOp::Crash { seed }),
        1 => Just(DbOp::PinSnapshot),
    ]
}

fn value(len: usize, fill: u8) -> Vec<u8> {
    (0..len).map(|i| fill.wrapping_add(i as u8)).collect()
}

mod common;
use common::scan_snapshot;

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(128), ..ProptestConfig::default() })]

    #[test]
    fn db_matches_btreemap(ops in prop::collection::vec(db_op(), 1..300)) {
        let opts = DbOptions { grow_bytes_min: 64 << 10, ..DbOptions::default() };
        let mut sim = Arc::new(SimStorage::new(Vec::new()));
        let mut db = Db::open_storage(sim.clone(), opts.clone()).unwrap();
        let mut working: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        let mut committed = working.clone();
        let mut durable = working.clone();
        let mut pinned: Vec<(Arc<ferrite_btree::Snapshot>, Map)> = Vec::new();
        for op in ops {
            match op {
                DbOp::Insert { key, len, fill } => {
                    let (k, v) = (db_key(key), value(len, fill));
                    db.writer().insert(&k, &v).unwrap();
                    working.insert(k, v);
                }
                DbOp::Remove { key } => {
                    let k = db_key(key);
                    let had = db.writer().remove(&k).unwrap();
                    prop_assert_eq!(had, working.remove(&k).is_some());
                }
                DbOp::Commit { durable: d } => {
                    db.writer().commit(d).unwrap();
                    if let Err(e) = db.writer().check() { prop_assert!(false, "{}", e); }
                    committed = working.clone();
                    if d { durable = working.clone(); }
                    prop_assert_eq!(&scan_snapshot(&db.read()), &committed);
                }
                DbOp::Crash { seed } => {
                    pinned.clear();
                    drop(db);
                    let img = sim.crash_image(seed);
                    sim = Arc::new(SimStorage::new(img));
                    db = Db::open_storage(sim.clone(), opts.clone()).unwrap();
                    if let Err(e) = db.writer().check() { prop_assert!(false, "after reopen: {}", e); }
                    let got = scan_snapshot(&db.read());
                    // A forced durable commit (free-space pressure) may have moved "durable" on.
                    prop_assert!(got == durable || got == committed, "reopened state is neither the durable nor the last commit");
                    durable = got.clone();
                    committed = got.clone();
                    working = got;
                }
                DbOp::PinSnapshot => {
                    pinned.push((db.read(), committed.clone()));
                }
            }
            // The writer's own view always matches.
            let w = db.writer();
            for k in working.keys().take(3) {
                let got = w.get(k).unwrap();
                prop_assert_eq!(got.as_ref(), working.get(k));
            }
        }
        for (snap, model) in &pinned {
            prop_assert_eq!(&scan_snapshot(snap), model);
        }
    }
}

// ------------------------------------------------------------------ MVCC layer

#[derive(Clone, Debug)]
enum TxnOp {
    Put { key: u8, len: usize, lease: i64 },
    Delete { key: u8, end: Option<u8> },
}

#[derive(Clone, Debug)]
enum MOp {
    Txn(Vec<TxnOp>),
    Commit {
        durable: bool,
    },
    Compact {
        frac: u8,
    },
    Range {
        key: u8,
        end: Option<u8>,
        rev_frac: u8,
        limit: u8,
        count_only: bool,
        keys_only: bool,
        filter: u8,
        filter_frac: u8,
    },
    Events {
        from_frac: u8,
    },
    Crash {
        seed: u64,
    },
    Defragment,
}

const KEYS: &[&[u8]] = &[
    b"a", b"a\0", b"a\0b", b"ab", b"b", b"ba", b"c", b"\0", b"d/1", b"d/2", b"d/3", b"z",
];

fn ukey(i: u8) -> Vec<u8> {
    KEYS[i as usize % KEYS.len()].to_vec()
}

fn txn_op() -> impl Strategy<Value = TxnOp> {
    prop_oneof![
        4 => (any::<u8>(), prop_oneof![6 => 0usize..64, 1 => 64usize..6000], 0i64..3)
            .prop_map(|(key, len, lease)| TxnOp::Put { key, len, lease }),
        1 => (any::<u8>(), prop::option::of(any::<u8>())).prop_map(|(key, end)| TxnOp::Delete { key, end }),
    ]
}

fn m_op() -> impl Strategy<Value = MOp> {
    prop_oneof![
        10 => prop::collection::vec(txn_op(), 0..4).prop_map(MOp::Txn),
        3 => any::<bool>().prop_map(|durable| MOp::Commit { durable }),
        1 => any::<u8>().prop_map(|frac| MOp::Compact { frac }),
        6 => (any::<u8>(), prop::option::of(any::<u8>()), any::<u8>(), 0u8..5, any::<bool>(), any::<bool>(), 0u8..5, any::<u8>())
            .prop_map(|(key, end, rev_frac, limit, count_only, keys_only, filter, filter_frac)| MOp::Range { key, end, rev_frac, limit, count_only, keys_only, filter, filter_frac }),
        2 => any::<u8>().prop_map(|from_frac| MOp::Events { from_frac }),
        1 => any::<u64>().prop_map(|seed| MOp::Crash { seed }),
        1 => Just(MOp::Defragment),
    ]
}

/// The history: every write as (main, sub, key, kv or None for a delete).
#[derive(Clone, Default, Debug, PartialEq)]
struct Model {
    hist: Vec<(i64, i64, Vec<u8>, Option<KeyValue>)>,
    rev: i64,
    compact: i64,
    meta: i64,
}

impl Model {
    fn state_at(&self, rev: i64) -> BTreeMap<Vec<u8>, KeyValue> {
        let mut m = BTreeMap::new();
        for (main, _, k, kv) in &self.hist {
            if *main > rev {
                break;
            }
            match kv {
                Some(kv) => m.insert(k.clone(), kv.clone()),
                None => m.remove(k),
            };
        }
        m
    }
    fn latest(&self, key: &[u8]) -> Option<KeyValue> {
        self.state_at(i64::MAX).get(key).cloned()
    }
    fn is_keeper(&self, idx: usize) -> bool {
        let (main, _, key, kv) = &self.hist[idx];
        if *main > self.compact {
            return true;
        }
        let newest = self
            .hist
            .iter()
            .enumerate()
            .filter(|(_, (m, _, k, _))| k == key && *m <= self.compact)
            .map(|(i, _)| i)
            .next_back();
        newest == Some(idx) && kv.is_some()
    }
}

fn in_range(k: &[u8], start: &[u8], end: &[u8]) -> bool {
    if end.is_empty() {
        k == start
    } else if end == [0] {
        k >= start
    } else {
        k >= start && k < end
    }
}

fn frac(f: u8, max: i64) -> i64 {
    (f as i64 * (max + 2)) / 256 - 1
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(128), ..ProptestConfig::default() })]

    #[test]
    fn mvcc_matches_model(ops in prop::collection::vec(m_op(), 1..150)) {
        let opts = StoreOptions { compaction_entries_per_commit: 3, ..StoreOptions::default() };
        let mut sim = Arc::new(SimStorage::new(Vec::new()));
        let mut store = MvccStore::open_storage(sim.clone(), opts.clone()).unwrap();
        // A fresh store is at etcd's first revision.
        let mut working = Model { rev: ferrite_btree::mvcc::FIRST_REVISION, ..Model::default() };
        let mut committed = working.clone();
        let mut durable = working.clone();
        let mut commits = 0i64;
        for op in ops {
            match op {
                MOp::Txn(tops) => {
                    let mut w = store.writer();
                    let mut t = w.txn();
                    let rev = working.rev + 1;
                    let mut sub = 0;
                    let mut wrote = false;
                    for top in tops {
                        match top {
                            TxnOp::Put { key, len, lease } => {
                                let k = ukey(key);
                                let v = value(len, key);
                                let prev = working.latest(&k);
                                let got = t.put(&k, &v, lease);
                                prop_assert_eq!(&got, &prev);
                                let (c, ver) = prev.map(|p| (p.create_revision, p.version + 1)).unwrap_or((rev, 1));
                                working.hist.push((rev, sub, k.clone(), Some(KeyValue { key: k, create_revision: c, mod_revision: rev, version: ver, value: v, lease })));
                                sub += 1;
                                wrote = true;
                            }
                            TxnOp::Delete { key, end } => {
                                let k = ukey(key);
                                let e = end.map(ukey).unwrap_or_default();
                                let expect: Vec<KeyValue> = working.state_at(i64::MAX).into_iter().filter(|(kk, _)| in_range(kk, &k, &e)).map(|(_, v)| v).collect();
                                let got = t.delete_range(&k, &e);
                                prop_assert_eq!(&got, &expect);
                                for kv in expect {
                                    working.hist.push((rev, sub, kv.key.clone(), None));
                                    sub += 1;
                                    wrote = true;
                                }
                            }
                        }
                    }
                    let out = t.end();
                    if wrote { working.rev = rev; }
                    prop_assert_eq!(out.revision, working.rev);
                    prop_assert_eq!(out.events.len() as i64, sub);
                }
                MOp::Commit { durable: d } => {
                    commits += 1;
                    store.writer().put_meta(b"commits", &commits.to_le_bytes());
                    working.meta = commits;
                    store.writer().commit(d).unwrap();
                    if let Err(e) = store.check() { prop_assert!(false, "{}", e); }
                    committed = working.clone();
                    if d { durable = working.clone(); }
                }
                MOp::Compact { frac: f } => {
                    let c = frac(f, working.rev);
                    let r = store.compact(c);
                    if c <= working.compact {
                        prop_assert!(matches!(r, Err(MvccError::Compacted)), "{:?}", r);
                    } else if c > working.rev {
                        prop_assert!(matches!(r, Err(MvccError::FutureRevision)), "{:?}", r);
                    } else {
                        prop_assert!(r.is_ok());
                        working.compact = c;
                        committed.compact = committed.compact.max(c);
                        // Readers see the compaction at once.
                        prop_assert_eq!(store.read().compact_revision(), c);
                    }
                }
                MOp::Range { key, end, rev_frac, limit, count_only, keys_only, filter, filter_frac } => {
                    let view = store.read();
                    prop_assert_eq!(view.revision(), committed.rev);
                    let mut o = RangeOptions {
                        key: ukey(key),
                        range_end: match end { None => vec![], Some(255) => vec![0], Some(e) => ukey(e) },
                        revision: frac(rev_frac, committed.rev),
                        limit: limit as i64,
                        count_only,
                        keys_only,
                        ..RangeOptions::default()
                    };
                    let fv = frac(filter_frac, committed.rev).max(0);
                    match filter {
                        1 => o.min_mod_revision = fv,
                        2 => o.max_mod_revision = fv,
                        3 => o.min_create_revision = fv,
                        4 => o.max_create_revision = fv,
                        _ => {}
                    }
                    let got = view.range(&o);
                    let rev = if o.revision <= 0 { committed.rev } else { o.revision };
                    if o.revision > committed.rev {
                        prop_assert!(matches!(got, Err(MvccError::FutureRevision)));
                    } else if rev < committed.compact {
                        prop_assert!(matches!(got, Err(MvccError::Compacted)));
                    } else {
                        let got = got.unwrap();
                        let all: Vec<KeyValue> = committed.state_at(rev).into_iter().filter(|(k, _)| in_range(k, &o.key, &o.range_end)).map(|(_, v)| v).collect();
                        prop_assert_eq!(got.count, all.len() as i64);
                        if count_only {
                            prop_assert!(got.kvs.is_empty() && !got.more);
                        } else {
                            let mut f: Vec<KeyValue> = all.into_iter().filter(|kv| {
                                (o.min_mod_revision == 0 || kv.mod_revision >= o.min_mod_revision)
                                    && (o.max_mod_revision == 0 || kv.mod_revision <= o.max_mod_revision)
                                    && (o.min_create_revision == 0 || kv.create_revision >= o.min_create_revision)
                                    && (o.max_create_revision == 0 || kv.create_revision <= o.max_create_revision)
                            }).collect();
                            let more = o.limit > 0 && f.len() > o.limit as usize;
                            if o.limit > 0 { f.truncate(o.limit as usize); }
                            if keys_only { for kv in &mut f { kv.value.clear(); } }
                            prop_assert_eq!(got.more, more);
                            prop_assert_eq!(&got.kvs, &f);
                        }
                    }
                }
                MOp::Events { from_frac } => {
                    let view = store.read();
                    let from = frac(from_frac, committed.rev).max(0);
                    let got = view.events(from, b"\0", &[0], 0);
                    if from < committed.compact {
                        prop_assert!(matches!(got, Err(MvccError::Compacted)));
                    } else {
                        let got = got.unwrap();
                        let mut want = Vec::new();
                        for (i, (main, _, k, kv)) in committed.hist.iter().enumerate() {
                            if *main < from || !committed.is_keeper(i) { continue; }
                            // The next older version, unless compaction removed it.
                            let prev = committed.hist[..i].iter().enumerate().rev().find(|(_, (_, _, pk, _))| pk == k).filter(|(j, _)| committed.is_keeper(*j)).and_then(|(_, (_, _, _, p))| p.clone());
                            want.push(match kv {
                                Some(kv) => (EventKind::Put, kv.clone(), prev),
                                None => (EventKind::Delete, KeyValue { key: k.clone(), mod_revision: *main, ..KeyValue::default() }, prev),
                            });
                        }
                        let got: Vec<_> = got.into_iter().map(|e| (e.kind, e.kv, e.prev_kv)).collect();
                        let brief = |v: &Vec<(EventKind, KeyValue, Option<KeyValue>)>| -> Vec<EventBrief> {
                            v.iter().map(|(k, kv, p)| (*k, kv.key.clone(), kv.mod_revision, kv.version, kv.create_revision, p.as_ref().map(|p| p.mod_revision))).collect()
                        };
                        prop_assert_eq!(brief(&got), brief(&want), "from {} compact {}", from, committed.compact);
                        prop_assert_eq!(got, want);
                    }
                }
                MOp::Defragment => {
                    let clean = working == committed;
                    store.defragment().unwrap();
                    if clean {
                        // Each slice is a durable commit of the unchanged state.
                        durable = committed.clone();
                        if let Err(e) = store.check() { prop_assert!(false, "after defragment: {}", e); }
                    }
                }
                MOp::Crash { seed } => {
                    drop(store);
                    sim = Arc::new(SimStorage::new(sim.crash_image(seed)));
                    store = MvccStore::open_storage(sim.clone(), opts.clone()).unwrap();
                    let v = store.read();
                    let meta = v.get_meta(b"commits").map(|b| i64::from_le_bytes(b.try_into().unwrap())).unwrap_or(0);
                    // Back to the last durable commit, or a later commit that free-space
                    // pressure made durable.
                    prop_assert!(meta == durable.meta || meta == committed.meta, "reopened at commit {} (durable {}, last {})", meta, durable.meta, committed.meta);
                    if meta == committed.meta { durable = committed.clone(); }
                    prop_assert_eq!(v.revision(), durable.rev);
                    let h1 = store.hash_kv(0);
                    working = durable.clone();
                    // A compaction recorded after the durable commit is forgotten with it.
                    working.compact = v.compact_revision();
                    committed = working.clone();
                    store.finish_compaction().unwrap();
                    if let Err(e) = store.check() { prop_assert!(false, "after reopen: {}", e); }
                    if let Ok(h1) = h1 { prop_assert_eq!(h1, store.hash_kv(0).unwrap()); }
                }
            }
        }
    }
}
