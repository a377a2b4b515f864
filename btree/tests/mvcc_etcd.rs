//! etcd 3.4 MVCC semantics, case by case (expected values worked out from etcd's
//! mvcc/kvstore_txn.go, mvcc/index.go and etcdserver/apply.go).

use ferrite_btree::{EventKind, KeyValue, MvccError, MvccStore, RangeOptions, StoreOptions};

fn store() -> (tempfile::TempDir, MvccStore) {
    let dir = tempfile::tempdir().unwrap();
    let s = MvccStore::open(&dir.path().join("db"), StoreOptions::default()).unwrap();
    (dir, s)
}

fn put(s: &MvccStore, k: &str, v: &str, lease: i64) -> i64 {
    let mut w = s.writer();
    let mut t = w.txn();
    t.put(k.as_bytes(), v.as_bytes(), lease);
    let rev = t.end().revision;
    w.commit(false).unwrap();
    rev
}

fn del(s: &MvccStore, k: &str, end: &str) -> Vec<KeyValue> {
    let mut w = s.writer();
    let mut t = w.txn();
    let d = t.delete_range(k.as_bytes(), end.as_bytes());
    t.end();
    w.commit(false).unwrap();
    d
}

fn get(s: &MvccStore, k: &str, rev: i64) -> Result<Option<KeyValue>, MvccError> {
    let r = s.read().range(&RangeOptions {
        key: k.into(),
        revision: rev,
        ..Default::default()
    })?;
    assert!(r.kvs.len() <= 1);
    Ok(r.kvs.into_iter().next())
}

#[test]
fn versions_create_revision_lease_and_restart_after_delete() {
    let (_d, s) = store();
    assert_eq!(s.read().revision(), 1);
    assert_eq!(put(&s, "foo", "a", 0), 2);
    assert_eq!(put(&s, "foo", "b", 7), 3);
    let kv = get(&s, "foo", 0).unwrap().unwrap();
    assert_eq!(
        kv,
        KeyValue {
            key: b"foo".to_vec(),
            create_revision: 2,
            mod_revision: 3,
            version: 2,
            value: b"b".to_vec(),
            lease: 7
        }
    );
    let d = del(&s, "foo", "");
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].version, 2);
    assert_eq!(s.read().revision(), 4);
    assert_eq!(get(&s, "foo", 0).unwrap(), None);
    // Deleting a missing key writes nothing and does not advance the revision.
    assert!(del(&s, "foo", "").is_empty());
    assert_eq!(s.read().revision(), 4);
    assert_eq!(put(&s, "foo", "c", 0), 5);
    let kv = get(&s, "foo", 0).unwrap().unwrap();
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (5, 5, 1));
    // History stays readable.
    assert_eq!(get(&s, "foo", 2).unwrap().unwrap().value, b"a");
    assert_eq!(get(&s, "foo", 4).unwrap(), None);
}

#[test]
fn range_limit_count_more_and_filters() {
    let (_d, s) = store();
    for (i, k) in ["a", "b", "c", "d", "e"].iter().enumerate() {
        assert_eq!(put(&s, k, "v", 0), i as i64 + 2);
    }
    put(&s, "b", "v2", 0); // rev 7
    let v = s.read();
    let all = |limit, extra: fn(&mut RangeOptions)| {
        let mut o = RangeOptions {
            key: b"a".to_vec(),
            range_end: vec![0],
            limit,
            ..Default::default()
        };
        extra(&mut o);
        v.range(&o).unwrap()
    };
    let r = all(0, |_| {});
    assert_eq!((r.kvs.len(), r.count, r.more), (5, 5, false));
    let r = all(2, |_| {});
    assert_eq!((r.kvs.len(), r.count, r.more), (2, 5, true));
    assert_eq!(r.kvs[1].key, b"b");
    let r = all(5, |_| {});
    assert_eq!((r.kvs.len(), r.count, r.more), (5, 5, false));
    // The server's paged scans stop one key past the limit instead of counting the rest.
    let r = all(2, |o| o.stop_at_limit = true);
    assert_eq!((r.kvs.len(), r.count, r.more), (2, 3, true));
    let r = all(5, |o| o.stop_at_limit = true);
    assert_eq!((r.kvs.len(), r.count, r.more), (5, 5, false));
    let r = all(0, |o| o.count_only = true);
    assert_eq!((r.kvs.len(), r.count, r.more), (0, 5, false));
    let r = all(0, |o| o.keys_only = true);
    assert!(r.kvs.iter().all(|kv| kv.value.is_empty() && kv.version > 0));
    // Filters apply after counting, as in etcd's apply.go.
    let r = all(0, |o| o.min_mod_revision = 5);
    assert_eq!(r.count, 5);
    assert_eq!(
        r.kvs.iter().map(|k| k.key.clone()).collect::<Vec<_>>(),
        vec![b"b".to_vec(), b"d".to_vec(), b"e".to_vec()]
    );
    let r = all(1, |o| o.max_create_revision = 3);
    assert_eq!((r.kvs.len(), r.count, r.more), (1, 5, true));
    let r = all(0, |o| o.min_create_revision = 4);
    assert_eq!(r.kvs.len(), 3);
    let r = all(0, |o| o.max_mod_revision = 4);
    assert_eq!(r.kvs.len(), 2); // a@2, c@4 (b is at 7 now)
                                // [b, d)
    let r = v
        .range(&RangeOptions {
            key: b"b".to_vec(),
            range_end: b"d".to_vec(),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(
        r.kvs.iter().map(|k| k.key.clone()).collect::<Vec<_>>(),
        vec![b"b".to_vec(), b"c".to_vec()]
    );
    // At an old revision.
    let r = v
        .range(&RangeOptions {
            key: b"a".to_vec(),
            range_end: vec![0],
            revision: 3,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(r.count, 2);
    assert_eq!(r.kvs[1].value, b"v");
}

#[test]
fn compacted_and_future_revisions() {
    let (_d, s) = store();
    for i in 0..5 {
        put(&s, "k", &i.to_string(), 0);
    }
    let err = get(&s, "k", 7).unwrap_err();
    assert!(matches!(err, MvccError::FutureRevision));
    assert_eq!(
        err.to_string(),
        "mvcc: required revision is a future revision"
    );
    s.compact(4).unwrap();
    let err = get(&s, "k", 3).unwrap_err();
    assert_eq!(
        err.to_string(),
        "mvcc: required revision has been compacted"
    );
    assert_eq!(get(&s, "k", 4).unwrap().unwrap().value, b"2");
    assert!(matches!(s.compact(4), Err(MvccError::Compacted)));
    assert!(matches!(s.compact(10), Err(MvccError::FutureRevision)));
    assert!(matches!(
        s.read().events(3, b"k", b"", 0),
        Err(MvccError::Compacted)
    ));
    assert_eq!(s.read().events(4, b"k", b"", 0).unwrap().len(), 3);
    assert!(matches!(s.hash_kv(4), Err(MvccError::Compacted)));
    assert!(matches!(s.hash_kv(7), Err(MvccError::FutureRevision)));
}

#[test]
fn compaction_keeps_newest_at_or_below_and_drops_tombstoned_keys() {
    let dir = tempfile::tempdir().unwrap();
    let opts = StoreOptions {
        compaction_entries_per_commit: 1,
        ..StoreOptions::default()
    };
    let s = MvccStore::open(&dir.path().join("db"), opts).unwrap();
    put(&s, "a", "1", 0); // 2
    put(&s, "a", "2", 0); // 3
    put(&s, "b", "1", 0); // 4
    del(&s, "b", ""); // 5
    put(&s, "a", "3", 0); // 6
    put(&s, "c", "1", 0); // 7
    let uncompacted = s.hash_kv(0).unwrap();
    s.compact(5).unwrap();
    // One entry examined so far: the hash already leaves out what compaction will remove.
    let before = s.hash_kv(0).unwrap();
    assert_ne!(uncompacted.0, before.0);
    let size_before = s.read().events(5, b"\0", &[0], 0).unwrap().len();
    s.finish_compaction().unwrap();
    let after = s.hash_kv(0).unwrap();
    assert_eq!(before, after, "physical removal changed the hash");
    assert_eq!(after.1, 5);
    assert_eq!(size_before, 2);
    let v = s.read();
    assert_eq!(get(&s, "a", 5).unwrap().unwrap().value, b"2");
    assert_eq!(get(&s, "b", 5).unwrap(), None);
    // The revision log kept a@3 only below the compaction (b's history is gone).
    let ev = v.events(5, b"\0", &[0], 0).unwrap();
    assert_eq!(
        ev.iter().map(|e| e.kv.mod_revision).collect::<Vec<_>>(),
        vec![6, 7]
    );
    // prev_kv of a@6 is the kept a@3.
    assert_eq!(ev[0].prev_kv.as_ref().unwrap().mod_revision, 3);
}

#[test]
fn txn_sees_own_writes_and_sub_revisions() {
    let (_d, s) = store();
    put(&s, "x", "0", 0);
    let mut w = s.writer();
    let mut t = w.txn();
    assert!(t.put(b"y", b"1", 0).is_none());
    let prev = t.put(b"x", b"2", 0).unwrap();
    assert_eq!(prev.value, b"0");
    let r = t
        .range(&RangeOptions {
            key: b"x".to_vec(),
            range_end: b"z".to_vec(),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(r.count, 2);
    let d = t.delete_range(b"y", b"");
    assert_eq!(d[0].mod_revision, 3);
    let out = t.end();
    assert_eq!(out.revision, 3);
    assert_eq!(out.events.len(), 3);
    assert_eq!(out.events[2].kind, EventKind::Delete);
    assert_eq!(out.events[2].kv.mod_revision, 3);
    // Not yet visible to readers.
    assert_eq!(s.read().revision(), 2);
    w.put_meta(b"applied", b"42");
    w.commit(true).unwrap();
    let v = s.read();
    assert_eq!(v.revision(), 3);
    assert_eq!(v.get_meta(b"applied").unwrap(), b"42");
    let ev = v.events(3, b"\0", &[0], 0).unwrap();
    assert_eq!(ev, out.events);
    // A read-only txn does not advance the revision.
    let t = w.txn();
    assert_eq!(t.end().revision, 3);
}

#[test]
fn large_values_and_keys_with_zero_bytes_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let big: Vec<u8> = (0..1_600_000u32).map(|i| (i * 7 % 251) as u8).collect();
    {
        let s = MvccStore::open(&path, StoreOptions::default()).unwrap();
        let mut w = s.writer();
        let mut t = w.txn();
        t.put(b"big", &big, 0);
        t.put(b"a\0b", b"z0", 0);
        t.put(b"a", b"z1", 0);
        t.put(b"a\0", b"z2", 0);
        t.end();
        w.commit(true).unwrap();
    }
    let s = MvccStore::open(&path, StoreOptions::default()).unwrap();
    let v = s.read();
    assert_eq!(get(&s, "big", 0).unwrap().unwrap().value, big);
    let r = v
        .range(&RangeOptions {
            key: b"a".to_vec(),
            range_end: b"b".to_vec(),
            ..Default::default()
        })
        .unwrap();
    let keys: Vec<_> = r.kvs.iter().map(|k| k.key.clone()).collect();
    assert_eq!(keys, vec![b"a".to_vec(), b"a\0".to_vec(), b"a\0b".to_vec()]);
    // Overwrite the big value: its overflow pages return to the free list eventually.
    let mut w = s.writer();
    for i in 0..3 {
        let mut t = w.txn();
        t.put(b"big", &big[..1000 * (i + 1)], 0);
        t.end();
        w.commit(true).unwrap();
    }
    drop(v);
    s.compact(s.read().revision()).unwrap();
    s.finish_compaction().unwrap();
    w.commit(true).unwrap();
    s.defragment().unwrap();
    assert!(s.size_bytes() < 1 << 20, "file {}", s.size_bytes());
    assert_eq!(get(&s, "big", 0).unwrap().unwrap().value, &big[..3000]);
    assert!(
        s.size_in_use_bytes() < 200 * 4096,
        "in use {}",
        s.size_in_use_bytes()
    );
}

#[test]
fn snapshot_roundtrip() {
    let (_d, s) = store();
    for i in 0..500 {
        put(
            &s,
            &format!("key{i:04}"),
            &"v".repeat(i % 300),
            i as i64 % 3,
        );
    }
    s.compact(101).unwrap();
    let mut buf = Vec::new();
    s.write_snapshot(&mut buf).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let r = MvccStore::restore(
        &dir.path().join("db2"),
        &mut buf.as_slice(),
        StoreOptions::default(),
    )
    .unwrap();
    assert_eq!(r.hash_kv(0).unwrap(), s.hash_kv(0).unwrap());
    assert_eq!(r.read().revision(), 501);
    assert_eq!(r.read().compact_revision(), 101);
    buf[20] ^= 1;
    let dir2 = tempfile::tempdir().unwrap();
    assert!(MvccStore::restore(
        &dir2.path().join("db3"),
        &mut buf.as_slice(),
        StoreOptions::default()
    )
    .is_err());
}

#[test]
fn handles_cross_threads() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<MvccStore>();
    send::<ferrite_btree::ReadView>();
    send::<ferrite_btree::Writer>();
}

#[test]
fn events_never_split_a_revision() {
    let (_d, s) = store();
    let mut w = s.writer();
    for r in 0..3 {
        let mut t = w.txn();
        for i in 0..4 {
            t.put(format!("k{r}{i}").as_bytes(), b"v", 0);
        }
        t.end();
    }
    w.commit(false).unwrap();
    let v = s.read();
    let ev = v.events(2, &[0], &[0], 5).unwrap();
    assert_eq!(
        ev.len(),
        8,
        "5 requested: the second revision is finished, not split"
    );
    assert!(ev.iter().all(|e| e.kv.mod_revision <= 3));
    let ev = v.events(3, b"k20", b"k30", 1).unwrap();
    assert_eq!(ev.len(), 4);
    assert!(ev.iter().all(|e| e.kv.mod_revision == 4));
}

#[test]
fn compaction_then_defragment_shrinks_the_file() {
    let (_d, s) = store();
    let mut w = s.writer();
    let value = [9u8; 256];
    // 20k keys, then every key overwritten twice: two thirds of the versions are history.
    for round in 0..3 {
        for chunk in 0..20 {
            for i in 0..1000u32 {
                let mut t = w.txn();
                let k = (i * 7919 + chunk * 1000) % 20_000;
                t.put(
                    format!("key/{k:08}/{round}").as_bytes()[..12].as_ref(),
                    &value,
                    0,
                );
                t.end();
            }
            w.commit(false).unwrap();
        }
    }
    w.commit(true).unwrap();
    let full = s.size_bytes();
    s.compact(s.read().revision()).unwrap();
    s.finish_compaction().unwrap();
    w.commit(true).unwrap();
    s.defragment().unwrap();
    s.check().unwrap();
    let after = s.size_bytes();
    assert!(
        after * 2 < full,
        "defragment after compacting 2/3 of the versions: {full} -> {after} bytes"
    );
    let r = s
        .read()
        .range(&RangeOptions {
            key: b"key/".to_vec(),
            range_end: b"key0".to_vec(),
            count_only: true,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(r.count, 20_000);
}

#[test]
fn oversized_key_poisons_the_batch_instead_of_publishing_it() {
    let (_d, s) = store();
    put(&s, "ok", "1", 0);
    let mut w = s.writer();
    let mut t = w.txn();
    t.put(b"fine", b"v", 0);
    assert!(t
        .put(&vec![b'x'; ferrite_btree::mvcc::KEY_BYTES_MAX + 1], b"v", 0)
        .is_none());
    t.end();
    let e = w.commit(false).unwrap_err();
    assert!(e.to_string().contains("KEY_BYTES_MAX"), "{e}");
    assert!(matches!(
        w.commit(false),
        Err(ferrite_btree::StoreError::Poisoned)
    ));
    assert!(s.compact(2).is_err());
    // Readers still see the last good commit.
    assert_eq!(s.read().revision(), 2);
    assert_eq!(get(&s, "fine", 0).unwrap(), None);
}

/// A put finds the key's latest version in the leaf it inserts into, or, when that version
/// starts the next leaf, with a second lookup. Values of ~1 KiB (four entries a leaf) and a few
/// overflow values put many keys' latest versions at leaf boundaries; every put's prev_kv,
/// create_revision and version must match a model, across deletes and twice-put keys in a txn.
#[test]
fn put_finds_the_latest_version_across_leaf_boundaries() {
    use std::collections::BTreeMap;
    let (_d, s) = store();
    // key -> (create_revision, mod_revision, version, value, lease) of the live version.
    let mut model: BTreeMap<Vec<u8>, KeyValue> = BTreeMap::new();
    let mut w = s.writer();
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for round in 0..400u64 {
        let rev = w.revision() + 1;
        let mut t = w.txn();
        let mut sub_puts = 0;
        for _ in 0..1 + rnd() % 4 {
            let key = format!("key{:02}", rnd() % 40).into_bytes();
            if rnd() % 10 == 0 {
                let gone = t.delete_range(&key, &[]);
                assert_eq!(gone, model.remove(&key).into_iter().collect::<Vec<_>>());
                continue;
            }
            let len = if rnd() % 20 == 0 {
                5000
            } else {
                900 + (rnd() % 200) as usize
            };
            let value = vec![(round % 251) as u8; len];
            let lease = (rnd() % 3) as i64;
            let prev = t.put(&key, &value, lease);
            let want_prev = model.get(&key).cloned();
            assert_eq!(prev, want_prev, "prev of {key:?} in round {round}");
            let (create, version) = match &want_prev {
                Some(p) => (p.create_revision, p.version + 1),
                None => (rev, 1),
            };
            let kv = KeyValue {
                key: key.clone(),
                create_revision: create,
                mod_revision: rev,
                version,
                value,
                lease,
            };
            model.insert(key, kv);
            sub_puts += 1;
        }
        let out = t.end();
        if sub_puts > 0 {
            assert_eq!(out.revision, rev);
        }
        w.commit(round % 7 == 0).unwrap();
        if round % 50 == 49 {
            let all = s
                .read()
                .range(&RangeOptions {
                    key: vec![0],
                    range_end: vec![0],
                    ..Default::default()
                })
                .unwrap();
            assert_eq!(all.kvs, model.values().cloned().collect::<Vec<_>>());
        }
    }
    s.check().unwrap();
}
