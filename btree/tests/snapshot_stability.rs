//! A reader's snapshot stays byte-for-byte identical while the writer commits 10k
//! transactions (overwrites, deletes, compactions and defragmentation that free and reuse
//! pages), and concurrent readers always see whole transactions.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use ferrite_btree::{MvccStore, RangeOptions, StoreOptions};

fn all() -> RangeOptions {
    RangeOptions {
        key: vec![0],
        range_end: vec![0],
        ..RangeOptions::default()
    }
}

#[test]
fn reader_snapshot_identical_across_10k_commits() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = StoreOptions::default();
    opts.db.unsynced_freed_bytes_max = 16 << 20;
    let store = Arc::new(MvccStore::open(&dir.path().join("db"), opts).unwrap());
    let mut w = store.writer();
    {
        let mut t = w.txn();
        for i in 0..2000u32 {
            t.put(
                format!("k/{i:05}").as_bytes(),
                &vec![(i % 251) as u8; 40 + (i % 300) as usize],
                0,
            );
        }
        t.put(b"pair/a", b"0", 0);
        t.put(b"pair/b", b"0", 0);
        t.end();
    }
    w.commit(true).unwrap();
    let view = store.read();
    let pinned_rev = view.revision();
    let expected = view.range(&all()).unwrap();
    let expected_events = view.events(1, &[0], &[0], 0).unwrap();
    let done = Arc::new(AtomicBool::new(false));

    let pinned_reader = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut rounds = 0u64;
            while !done.load(Ordering::Acquire) || rounds < 3 {
                let got = view.range(&all()).unwrap();
                assert_eq!(
                    got, expected,
                    "pinned snapshot changed after {rounds} rounds"
                );
                assert_eq!(view.revision(), pinned_rev);
                rounds += 1;
            }
            assert_eq!(view.events(1, &[0], &[0], 0).unwrap(), expected_events);
            rounds
        })
    };
    let fresh_reader = {
        let done = done.clone();
        let store = store.clone();
        std::thread::spawn(move || {
            let mut last_rev = 0;
            let mut reads = 0u64;
            while !done.load(Ordering::Acquire) {
                let v = store.read();
                assert!(v.revision() >= last_rev, "revision went backwards");
                last_rev = v.revision();
                let r = v
                    .range(&RangeOptions {
                        key: b"pair/".to_vec(),
                        range_end: b"pair0".to_vec(),
                        ..RangeOptions::default()
                    })
                    .unwrap();
                assert_eq!(r.kvs.len(), 2);
                assert_eq!(
                    r.kvs[0].value, r.kvs[1].value,
                    "a half-applied txn is visible"
                );
                reads += 1;
            }
            reads
        })
    };

    for n in 1..=10_000u32 {
        {
            let mut t = w.txn();
            let i = n.wrapping_mul(2_654_435_761) % 2000;
            t.put(
                format!("k/{i:05}").as_bytes(),
                &vec![(n % 251) as u8; 30 + (n % 500) as usize],
                0,
            );
            if n % 7 == 0 {
                t.delete_range(format!("k/{:05}", (i + 1) % 2000).as_bytes(), b"");
            }
            let v = n.to_string();
            t.put(b"pair/a", v.as_bytes(), 0);
            t.put(b"pair/b", v.as_bytes(), 0);
            t.end();
        }
        w.commit(n % 1000 == 0).unwrap();
        if n % 2500 == 0 {
            let rev = store.read().revision();
            store.compact(rev - 100).unwrap();
        }
        if n == 9000 {
            store.defragment().unwrap();
        }
    }
    done.store(true, Ordering::Release);
    let rounds = pinned_reader.join().unwrap();
    let reads = fresh_reader.join().unwrap();
    assert!(rounds >= 3 && reads > 0);
    // While pinned, no page of the snapshot was reused, so the file grew. Once it is dropped the
    // space is reused: 2k more commits do not grow the file.
    store.finish_compaction().unwrap();
    w.commit(true).unwrap();
    w.commit(true).unwrap();
    let grown = store.size_bytes();
    for n in 0..2000u32 {
        let mut t = w.txn();
        t.put(format!("k/{:05}", n % 2000).as_bytes(), &[7u8; 200], 0);
        t.end();
        w.commit(n % 500 == 0).unwrap();
    }
    w.commit(true).unwrap();
    assert!(
        store.size_bytes() <= grown,
        "file grew from {grown} to {}",
        store.size_bytes()
    );
    let rev = store.read().revision();
    store.compact(rev).unwrap();
    store.finish_compaction().unwrap();
    w.commit(true).unwrap();
    store.defragment().unwrap();
    let after = store.size_bytes();
    assert!(
        after < grown / 4,
        "defragment left {after} of {grown} bytes"
    );
    // Every key was rewritten by the last loop and survives compaction + defragmentation.
    let r = store
        .read()
        .range(&RangeOptions {
            key: b"k/".to_vec(),
            range_end: b"k0".to_vec(),
            ..RangeOptions::default()
        })
        .unwrap();
    assert_eq!(r.count, 2000);
    assert!(r.kvs.iter().all(|kv| kv.value == [7u8; 200]));
}
