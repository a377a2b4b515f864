//! `FileStorage` releases the map's resident pages after `MAP_RELEASE_WRITTEN_BYTES` of page
//! writes, so pages read through the map do not pile up in the process's RSS; the bytes read
//! through the map afterwards are unchanged (they come back from the page cache).

use ferrite_btree::storage::MAP_RELEASE_WRITTEN_BYTES;
use ferrite_btree::{FileStorage, Storage};

/// Resident KiB of the mapping that starts at `addr`, from /proc/self/smaps.
fn mapping_rss_kib(addr: usize) -> u64 {
    let smaps = std::fs::read_to_string("/proc/self/smaps").expect("smaps");
    let mut in_it = false;
    for line in smaps.lines() {
        let first = line.split(' ').next().unwrap_or("");
        let header = first.split_once('-').and_then(|(a, b)| {
            Some((
                usize::from_str_radix(a, 16).ok()?,
                usize::from_str_radix(b, 16).ok()?,
            ))
        });
        if let Some((start, _)) = header {
            in_it = start == addr;
        } else if in_it {
            if let Some(v) = line.strip_prefix("Rss:") {
                return v.trim().trim_end_matches("kB").trim().parse().expect("Rss");
            }
        }
    }
    panic!("mapping at {addr:#x} not found in /proc/self/smaps");
}

#[test]
fn page_writes_release_the_maps_resident_pages() {
    let dir = tempfile::tempdir().unwrap();
    let s = FileStorage::open(&dir.path().join("f")).unwrap();
    const FILE_BYTES: u64 = 16 << 20;
    s.set_len(FILE_BYTES).unwrap();
    let page: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
    for off in (0..FILE_BYTES).step_by(4096) {
        s.write_at(&page, off).unwrap();
    }
    let map = s.map().unwrap();
    let bytes = map.bytes();
    let addr = bytes.as_ptr() as usize;
    // Read every page through the map: all of it becomes resident in this process.
    let sum: u64 = bytes.iter().step_by(4096).map(|b| u64::from(*b)).sum();
    assert_eq!(sum, 0, "every page starts with byte 0");
    let before = mapping_rss_kib(addr);
    assert!(
        before >= FILE_BYTES / 1024 / 2,
        "map resident: {before} KiB"
    );
    // Page writes past the threshold release the resident pages.
    let writes = MAP_RELEASE_WRITTEN_BYTES / 4096 + 1;
    for i in 0..writes {
        s.write_at(&page, (i % 16) * 4096).unwrap();
    }
    let after = mapping_rss_kib(addr);
    assert!(
        after < before / 4,
        "map resident after {writes} page writes: {after} KiB (was {before} KiB)"
    );
    // The bytes are the same when read again.
    assert!(bytes.chunks(4096).all(|p| p == page.as_slice()));
}
