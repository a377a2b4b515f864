//! cargo-fuzz target for recovery: arbitrary bytes after a valid segment header, as the
//! only (last) segment of a simulated disk. Recovery must not panic; it either refuses
//! with an error or returns a log that takes a new append.
//! `cd wal/fuzz && cargo +nightly fuzz run recover_segment -- -max_total_time=60`
#![no_main]

use ferrite_wal::format::{segment_file_name, SegmentHeader};
use ferrite_wal::sim::SimDisk;
use ferrite_wal::{Storage, StorageFile, Wal, WalOptions, WalRecord};
use libfuzzer_sys::fuzz_target;

const SEGMENT_BYTES: u64 = 8192;

fuzz_target!(|data: &[u8]| {
    let disk = SimDisk::new();
    let mut storage = disk.storage();
    let header = SegmentHeader { seq: 0, batch_bytes_max: 1024 }.encode().to_vec();
    storage.begin_prepare(&segment_file_name(0), "tmp", header.clone(), SEGMENT_BYTES);
    storage.finish_prepare().unwrap();
    let mut f = storage.open(&segment_file_name(0)).unwrap();
    let n = data.len().min(SEGMENT_BYTES as usize - header.len());
    f.write_all_at(&data[..n], header.len() as u64).unwrap();
    f.sync_data().unwrap();
    let options = WalOptions { segment_bytes: SEGMENT_BYTES, batch_bytes_max: 1024 };
    if let Ok((mut wal, rec)) = Wal::open(disk.storage(), options) {
        let next = rec.entries.last().map(|e| e.index).or(rec.snapshot.map(|s| s.0)).unwrap_or(0);
        if let Some(next) = next.checked_add(1) {
            wal.append(&[WalRecord::Entry { index: next, term: 1, data: vec![1] }]).unwrap();
        }
    }
});
