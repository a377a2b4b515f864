//! Any bytes as a page, and any bytes written over a real store's file: decoding returns a
//! value or an error naming the page, never panics.
#![no_main]

use std::sync::Arc;

use ferrite_btree::page::{decode_record_page, Meta, PageRef, PAGE_SIZE};
use ferrite_btree::{MvccStore, RangeOptions, SimStorage, StoreOptions};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut page = vec![0u8; PAGE_SIZE];
    let n = data.len().min(PAGE_SIZE);
    page[..n].copy_from_slice(&data[..n]);
    for verify in [true, false] {
        if let Ok(p) = PageRef::parse(&page, 7, verify) {
            for i in 0..p.len() {
                let _ = p.key(i);
                if p.is_leaf() {
                    let _ = p.value(i);
                } else {
                    let _ = p.child(i);
                }
            }
        }
    }
    let _ = Meta::decode(&page, 0);
    for verify_crc in [true, false] {
        let mut p = page.clone();
        if !verify_crc {
            // Fix the checksum so the entries themselves are decoded.
            let crc = crc32c_of(&p[4..]);
            p[..4].copy_from_slice(&crc.to_le_bytes());
        }
        let mut crc = 0;
        let _ = decode_record_page(&p, 7, &mut crc);
    }
    // As page 2 (usually the root) of a small store, checksum fixed so structure is exercised.
    if data.len() > 4 {
        let mut img = base_image();
        let at = 2 * PAGE_SIZE;
        img[at + 4..at + PAGE_SIZE].copy_from_slice(&page[4..]);
        let crc = crc32c_of(&img[at + 4..at + PAGE_SIZE]);
        img[at..at + 4].copy_from_slice(&crc.to_le_bytes());
        if let Ok(s) = MvccStore::open_storage(Arc::new(SimStorage::new(img)), StoreOptions::default()) {
            let v = s.read();
            let _ = v.range(&RangeOptions { key: vec![0], range_end: vec![0], ..Default::default() });
            let _ = v.events(0, &[0], &[0], 0);
            let _ = s.hash_kv(0);
        }
    }
});

fn crc32c_of(b: &[u8]) -> u32 {
    // Same polynomial as the store (Castagnoli), bitwise to avoid another dependency.
    let mut crc = !0u32;
    for &x in b {
        crc ^= x as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0x82F6_3B78 } else { crc >> 1 };
        }
    }
    !crc
}

fn base_image() -> Vec<u8> {
    let sim = Arc::new(SimStorage::new(Vec::new()));
    let s = MvccStore::open_storage(sim.clone(), StoreOptions::default()).unwrap();
    let mut w = s.writer();
    let mut t = w.txn();
    for i in 0..20u32 {
        t.put(format!("k{i}").as_bytes(), &[i as u8; 10], 0);
    }
    t.end();
    w.commit(true).unwrap();
    sim.written_image()
}
