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

/// Opens `path`'s newer meta page through the file and returns its root.
fn root_of(path: &std::path::Path) -> u64 {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::open(path).unwrap();
    let mut metas = Vec::new();
    for slot in 0..2u64 {
        let mut b = vec![0u8; PAGE_SIZE];
        file.read_exact_at(&mut b, slot * PAGE_SIZE as u64).unwrap();
        if let Ok(m) = Meta::decode(&b, slot) {
            metas.push(m);
        }
    }
    metas.iter().max_by_key(|m| m.txn).unwrap().root
}

/// Flips a byte in the body of page `id` (its crc32c is left stale).
fn flip_last_byte(path: &std::path::Path, id: u64) {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let off = id * PAGE_SIZE as u64 + PAGE_SIZE as u64 - 1;
    let mut b = [0u8; 1];
    file.read_exact_at(&mut b, off).unwrap();
    file.write_all_at(&[b[0] ^ 0x5A], off).unwrap();
}

/// The writer trusts the pages it wrote itself since open (it skips their crc32c); readers
/// still verify every page they read, so a page changed under the writer is caught by them.
#[test]
fn readers_verify_pages_the_writer_wrote() {
    use ferrite_btree::{Db, DbOptions};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let db = Db::open(&path, DbOptions::default()).unwrap();
    let mut w = db.writer();
    w.insert(b"k", b"v").unwrap();
    w.commit(true).unwrap();
    // One key: the root is the only tree page.
    let root = root_of(&path);
    assert!(root >= 2);
    flip_last_byte(&path, root);
    w.commit(false).unwrap();
    match db.read().get(b"k") {
        Err(StoreError::Corrupt { page, .. }) => assert_eq!(page, root),
        other => panic!("expected corruption of page {root}, got {other:?}"),
    }
}

/// A page the writer neither wrote nor verified since open is verified when the writer first
/// reads it (a get, or the copy-on-write of an insert): corruption on disk is an error naming
/// the page, every time it is read, until the page is fixed.
#[test]
fn writer_verifies_pages_it_did_not_write_since_open() {
    use ferrite_btree::db::{NodeRef, PageSource};
    use ferrite_btree::{Db, DbOptions};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let value = [9u8; 200];
    {
        let db = Db::open(&path, DbOptions::default()).unwrap();
        let mut w = db.writer();
        for i in 0..400u32 {
            w.insert(format!("a/{i:05}").as_bytes(), &value).unwrap();
        }
        w.commit(true).unwrap();
        // A second durable commit that rewrites only the right edge of the tree: the leftmost
        // leaf is not in its commit record, so open does not check it.
        for i in 0..10u32 {
            w.insert(format!("z/{i:05}").as_bytes(), &value).unwrap();
        }
        w.commit(true).unwrap();
    }
    // The leftmost leaf (it holds "a/00000").
    let leaf = {
        let db = Db::open(&path, DbOptions::default()).unwrap();
        let snap = db.read();
        let mut id = snap.root();
        loop {
            match snap.node(id).unwrap() {
                NodeRef::Page(p) if p.is_leaf() => break id,
                n => id = n.child(0),
            }
        }
    };
    flip_last_byte(&path, leaf);
    let db = Db::open(&path, DbOptions::default()).unwrap();
    assert!(db.writer().open_report().discarded.is_none());
    let mut w = db.writer();
    // Keys elsewhere in the tree still read and write.
    assert!(w.get(b"z/00003").unwrap().is_some());
    w.insert(b"z/99999", &value).unwrap();
    for _ in 0..2 {
        match w.get(b"a/00000") {
            Err(StoreError::Corrupt { page, reason }) => {
                assert_eq!(page, leaf);
                assert!(reason.contains("checksum"), "{reason}");
            }
            other => panic!("expected corruption of page {leaf}, got {other:?}"),
        }
    }
    match w.insert(b"a/00000x", &value) {
        Err(StoreError::Corrupt { page, .. }) => assert_eq!(page, leaf),
        other => panic!("expected corruption of page {leaf}, got {other:?}"),
    }
}
