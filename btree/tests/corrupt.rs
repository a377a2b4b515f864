//! Corrupt pages are errors naming the page id, never panics: random bytes decoded as pages,
//! and real store files with bytes flipped (with the checksum left stale, and with it fixed up
//! so that the structural checks are what must catch it).

use std::sync::Arc;

use ferrite_btree::page::{Meta, PageRef, PAGE_SIZE};
use ferrite_btree::{MvccStore, RangeOptions, SimStorage, StoreError, StoreOptions};
use proptest::prelude::*;

fn image() -> Vec<u8> {
    let sim = Arc::new(SimStorage::new(Vec::new()));
    let s = MvccStore::open_storage(sim.clone(), StoreOptions::default()).unwrap();
    let mut w = s.writer();
    for r in 0..30u32 {
        let mut t = w.txn();
        for i in 0..20u32 {
            let k = format!("key/{:04}", (r * 37 + i * 11) % 300);
            t.put(
                k.as_bytes(),
                &vec![i as u8; (i * 13 % 150) as usize],
                i as i64 % 2,
            );
        }
        if r % 5 == 4 {
            t.delete_range(b"key/01", b"key/02");
        }
        if r == 10 {
            t.put(b"big", &vec![3u8; 30_000], 0);
        }
        t.end();
        w.put_meta(b"applied", &r.to_le_bytes());
        w.commit(r % 3 == 0).unwrap();
    }
    w.commit(true).unwrap();
    sim.written_image()
}

/// Reads everything; returns the first error.
fn read_all(img: Vec<u8>) -> Result<(), String> {
    let s = MvccStore::open_storage(Arc::new(SimStorage::new(img)), StoreOptions::default())
        .map_err(|e| e.to_string())?;
    let v = s.read();
    v.range(&RangeOptions {
        key: vec![0],
        range_end: vec![0],
        ..Default::default()
    })
    .map_err(|e| e.to_string())?;
    v.events(0, &[0], &[0], 0).map_err(|e| e.to_string())?;
    s.hash_kv(0).map_err(|e| e.to_string())?;
    v.try_get_meta(b"applied").map_err(|e| e.to_string())?;
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_as_pages(bytes in prop::collection::vec(any::<u8>(), PAGE_SIZE), kind in 1u8..6, count in 0u16..300) {
        let mut page = bytes;
        page[4] = kind;
        page[6..8].copy_from_slice(&count.to_le_bytes());
        page[8..16].copy_from_slice(&9u64.to_le_bytes());
        let crc = crc32c::crc32c(&page[4..]);
        page[..4].copy_from_slice(&crc.to_le_bytes());
        if let Ok(p) = PageRef::parse(&page, 9, true) {
            for i in 0..p.len() {
                let _ = p.key(i);
                if p.is_leaf() { let _ = p.value(i); } else { let _ = p.child(i); }
            }
        }
        let _ = Meta::decode(&page, 9);
    }
}

#[test]
fn flipped_bytes_in_every_page_are_caught_or_harmless() {
    let base = image();
    let pages = base.len() / PAGE_SIZE;
    assert!(pages > 20);
    let mut rng = 0x1234_5678_9abc_def0u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut errors = 0;
    for page in 2..pages {
        for fix_crc in [false, true] {
            let mut img = base.clone();
            let at = page * PAGE_SIZE;
            for _ in 0..4 {
                let off = 4 + (next() as usize) % (PAGE_SIZE - 4);
                img[at + off] ^= 1 << (next() % 8);
            }
            if fix_crc {
                let crc = crc32c::crc32c(&img[at + 4..at + PAGE_SIZE]);
                img[at..at + 4].copy_from_slice(&crc.to_le_bytes());
            }
            if let Err(e) = read_all(img) {
                errors += 1;
                assert!(
                    e.contains("corrupt page") || e.contains("mvcc:"),
                    "unexpected error: {e}"
                );
                if !fix_crc && e.contains("checksum") {
                    assert!(
                        e.contains(&format!("page {page}:")),
                        "error does not name page {page}: {e}"
                    );
                }
            }
        }
    }
    assert!(errors > 0);
}

#[test]
fn both_meta_pages_corrupt_is_an_error() {
    let mut img = image();
    img[100] ^= 1;
    img[PAGE_SIZE + 100] ^= 1;
    let e = MvccStore::open_storage(Arc::new(SimStorage::new(img)), StoreOptions::default())
        .err()
        .expect("open must fail");
    assert!(matches!(e, StoreError::Corrupt { page: 0, .. }), "{e}");
}

#[test]
fn one_meta_page_corrupt_falls_back_to_the_other() {
    let base = image();
    for slot in 0..2 {
        let mut img = base.clone();
        img[slot * PAGE_SIZE + 40] ^= 0xFF;
        read_all(img).unwrap();
    }
}

/// The writer skips the checksum of a page it verified earlier in the same commit (a put reads
/// its leaf twice); after any commit, a page corrupted on disk since is caught again.
#[test]
fn writer_rechecks_checksums_after_each_commit() {
    use ferrite_btree::{Db, DbOptions};
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let db = Db::open(&path, DbOptions::default()).unwrap();
    let mut w = db.writer();
    w.insert(b"k", b"v").unwrap();
    w.commit(true).unwrap();
    assert_eq!(w.get(b"k").unwrap().as_deref(), Some(&b"v"[..]));
    // One key: the root is the only tree page. Find it through the newer meta page.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let mut metas = Vec::new();
    for slot in 0..2u64 {
        let mut b = vec![0u8; PAGE_SIZE];
        file.read_exact_at(&mut b, slot * PAGE_SIZE as u64).unwrap();
        if let Ok(m) = Meta::decode(&b, slot) {
            metas.push(m);
        }
    }
    let root = metas.iter().max_by_key(|m| m.txn).unwrap().root;
    assert!(root >= 2);
    // Flip a byte of the page body; the crc32c in its header is now stale.
    let off = root * PAGE_SIZE as u64 + PAGE_SIZE as u64 - 1;
    let mut b = [0u8; 1];
    file.read_exact_at(&mut b, off).unwrap();
    file.write_all_at(&[b[0] ^ 0x5A], off).unwrap();
    w.commit(false).unwrap();
    match w.get(b"k") {
        Err(StoreError::Corrupt { page, .. }) => assert_eq!(page, root),
        other => panic!("expected corruption of page {root}, got {other:?}"),
    }
}
