//! The synchronous WAL on the simulated disk: crashes at every I/O boundary, torn writes,
//! bit rot in the middle and at the tail, EIO and ENOSPC.

mod common;

use common::{assert_acked_prefix, small_options, summary, workload, Model, Step};
use ferrite_wal::format::{self, SEGMENT_HEADER_BYTES};
use ferrite_wal::sim::{Fault, SimDisk, SimRng};
use ferrite_wal::{Storage, Wal, WalError, WalOptions, WalRecord};

/// What a run of a workload left: the model of everything acknowledged and the records
/// of the group that was in flight when the run stopped.
struct Run {
    acked: Model,
    in_flight: Vec<WalRecord>,
    stopped_by: Option<WalError>,
}

/// Runs `steps` on `disk` until the first error.
fn run(disk: &SimDisk, steps: &[Step], options: WalOptions) -> Run {
    let mut acked = Model::default();
    let mut wal = match Wal::open(disk.storage(), options) {
        Ok((wal, rec)) => {
            assert_eq!(rec, acked.recovered(), "a fresh log is empty");
            wal
        }
        Err(e) => {
            return Run {
                acked,
                in_flight: vec![],
                stopped_by: Some(e),
            }
        }
    };
    for step in steps {
        match step {
            Step::Group(group) => {
                let results = wal.commit_group(group);
                let mut failed = None;
                for (recs, r) in group.iter().zip(&results) {
                    match r {
                        Ok(()) if failed.is_none() => recs.iter().for_each(|r| acked.apply(r)),
                        Ok(()) => panic!("an append acknowledged after a failed one in its group"),
                        Err(e) => {
                            failed
                                .get_or_insert((e.clone(), Vec::new()))
                                .1
                                .extend(recs.iter().cloned());
                        }
                    }
                }
                if let Some((e, in_flight)) = failed {
                    return Run {
                        acked,
                        in_flight,
                        stopped_by: Some(e),
                    };
                }
            }
            Step::Release(index) => {
                if let Err(e) = wal.release_below(*index) {
                    return Run {
                        acked,
                        in_flight: vec![],
                        stopped_by: Some(e),
                    };
                }
            }
        }
    }
    Run {
        acked,
        in_flight: vec![],
        stopped_by: None,
    }
}

fn reopen(disk: &SimDisk, options: WalOptions) -> ferrite_wal::Recovered {
    match Wal::open(disk.storage(), options) {
        Ok((_, rec)) => rec,
        Err(e) => panic!("recovery failed: {e}"),
    }
}

/// Crash before every I/O operation of a workload (every write, fsync, segment preparation
/// and removal), with unsynced sectors kept or dropped at random (torn writes): recovery
/// returns exactly the acknowledged records, plus possibly an in-order prefix of the
/// unacknowledged group, and the recovered log takes appends again.
#[test]
fn crash_at_every_io_boundary() {
    let options = small_options();
    // More seeds: WAL_CRASH_SEEDS=200 cargo test -p ferrite-wal --release --test sim_log crash
    let seeds: u64 = std::env::var("WAL_CRASH_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8);
    for seed in 0..seeds {
        let steps = workload(seed, 60, 300);
        let full = SimDisk::new();
        let r = run(&full, &steps, options);
        assert!(
            r.stopped_by.is_none(),
            "seed {seed}: clean run failed: {:?}",
            r.stopped_by
        );
        let total_ops = full.ops();
        assert!(
            total_ops > 100,
            "the workload is big enough to cross segments ({total_ops} ops)"
        );
        for cut in 0..=total_ops {
            for tear_seed in 0..3u64 {
                let disk = SimDisk::new();
                disk.crash_at_op(cut);
                let r = run(&disk, &steps, options);
                let ctx = format!("seed {seed} cut {cut} tear {tear_seed}");
                if cut < total_ops {
                    assert!(r.stopped_by.is_some(), "{ctx}: the crash stopped the run");
                }
                let after = disk.after_crash(&mut SimRng::new(seed * 1000 + cut * 7 + tear_seed));
                let got = reopen(&after, options);
                assert_acked_prefix(&got, &r.acked, &r.in_flight, &ctx);
                // The recovered log keeps working: append the next entry and find it again.
                let (mut wal, again) = Wal::open(after.storage(), options).expect("second open");
                assert_eq!(again, got, "{ctx}: recovery is stable");
                let next = got
                    .entries
                    .last()
                    .map(|e| e.index)
                    .or(got.snapshot.map(|s| s.0))
                    .unwrap_or(0)
                    + 1;
                let rec = WalRecord::Entry {
                    index: next,
                    term: 99,
                    data: b"after".to_vec(),
                };
                wal.append(std::slice::from_ref(&rec))
                    .expect("append after recovery");
                drop(wal);
                let third = reopen(&after.after_crash(&mut SimRng::new(tear_seed)), options);
                let last = third.entries.last().expect("the new entry");
                assert_eq!(
                    (last.index, last.term, &last.data[..]),
                    (next, 99, &b"after"[..]),
                    "{ctx}"
                );
            }
        }
    }
}

/// Builds a log of several segments on a sim disk; returns the disk and the model.
fn several_segments(options: WalOptions) -> (SimDisk, Model) {
    let disk = SimDisk::new();
    let (mut wal, _) = Wal::open(disk.storage(), options).unwrap();
    let mut m = Model::default();
    for i in 1..=60u64 {
        let r = WalRecord::Entry {
            index: i,
            term: 1,
            data: vec![i as u8; 200],
        };
        wal.append(std::slice::from_ref(&r)).unwrap();
        m.apply(&r);
    }
    assert!(wal.segment_seqs().len() >= 3, "{:?}", wal.segment_seqs());
    (disk, m)
}

/// A flipped bit in a middle segment refuses to open, naming the file and the offset of
/// the damaged record.
#[test]
fn bit_rot_in_middle_segment_is_an_error_naming_file_and_offset() {
    let options = small_options();
    let (disk, _) = several_segments(options);
    let name = format::segment_file_name(1);
    // Inside the payload of the first record after the header.
    disk.flip_bit(
        &name,
        SEGMENT_HEADER_BYTES + format::RECORD_HEADER_BYTES + 20,
        3,
    );
    match Wal::open(disk.storage(), options) {
        Err(WalError::Corrupt {
            file,
            offset,
            reason,
        }) => {
            assert!(file.ends_with(&name), "{file}");
            assert_eq!(offset, SEGMENT_HEADER_BYTES as u64, "{reason}");
            let msg = WalError::Corrupt {
                file,
                offset,
                reason,
            }
            .to_string();
            assert!(
                msg.contains(&name) && msg.contains(&format!("offset {}", SEGMENT_HEADER_BYTES)),
                "{msg}"
            );
        }
        other => panic!("expected a corruption error, got {other:?}"),
    }
    // Refusing lost nothing: the file is untouched, so the bytes are still there.
    assert!(disk.file_names().contains(&name));
}

/// A flipped bit in the last record of the last segment is a torn tail: it is truncated
/// (zeroed) and everything before it survives.
#[test]
fn bit_rot_at_the_tail_is_truncated() {
    let options = small_options();
    let (disk, m) = several_segments(options);
    let last_seq = *disk
        .file_names()
        .iter()
        .filter_map(|n| format::parse_segment_file_name(n))
        .collect::<Vec<_>>()
        .iter()
        .max()
        .unwrap();
    // Find the last written segment and its last record.
    let mut seq = last_seq;
    let (name, bytes) = loop {
        let name = format::segment_file_name(seq);
        let b = disk.file_bytes(&name).unwrap();
        if b[SEGMENT_HEADER_BYTES..].iter().any(|&x| x != 0) {
            break (name, b);
        }
        seq -= 1;
    };
    let mut off = SEGMENT_HEADER_BYTES;
    let mut last_off = off;
    while let Ok((_, n)) = format::decode_record(&bytes[off..]) {
        last_off = off;
        off += n;
    }
    disk.flip_bit(&name, last_off + format::RECORD_HEADER_BYTES + 5, 0);
    let got = reopen(&disk, options);
    let mut expect = m.clone();
    expect.entries.pop();
    assert_eq!(got, expect.recovered(), "{}", summary(&got));
    assert!(
        disk.file_bytes(&name).unwrap()[last_off..]
            .iter()
            .all(|&x| x == 0),
        "torn tail zeroed"
    );
}

/// Bad bytes in the last segment with written records beyond the torn-write window are
/// bit rot, not a torn tail: an error, not a truncation.
#[test]
fn bit_rot_early_in_a_big_last_segment_is_an_error() {
    let options = WalOptions {
        segment_bytes: 1 << 20,
        batch_bytes_max: 1024,
    };
    let disk = SimDisk::new();
    let (mut wal, _) = Wal::open(disk.storage(), options).unwrap();
    for i in 1..=100u64 {
        wal.append(&[WalRecord::Entry {
            index: i,
            term: 1,
            data: vec![7; 100],
        }])
        .unwrap();
    }
    assert_eq!(wal.segment_seqs(), vec![0]);
    drop(wal);
    let name = format::segment_file_name(0);
    disk.flip_bit(&name, SEGMENT_HEADER_BYTES + 30, 1);
    match Wal::open(disk.storage(), options) {
        Err(WalError::Corrupt { file, offset, .. }) => {
            assert!(file.ends_with(&name));
            assert_eq!(offset, SEGMENT_HEADER_BYTES as u64);
        }
        other => panic!("expected corruption, got {other:?}"),
    }
}

/// A missing middle segment is an error naming it.
#[test]
fn missing_middle_segment_is_an_error() {
    let options = small_options();
    let (disk, _) = several_segments(options);
    let name = format::segment_file_name(1);
    disk.storage().remove(&name).unwrap();
    match Wal::open(disk.storage(), options) {
        Err(WalError::Corrupt { file, .. }) => assert!(file.ends_with(&name), "{file}"),
        other => panic!("expected corruption, got {other:?}"),
    }
}

/// EIO or ENOSPC at every I/O operation of a workload: the failing append reports the
/// error; a failed segment preparation (ENOSPC on the next segment) fails only that
/// append and a retry succeeds; a failed write or sync poisons the log; after a crash
/// nothing acknowledged is lost.
#[test]
fn eio_and_enospc_at_every_operation() {
    let options = small_options();
    let steps = workload(42, 40, 300);
    let full = SimDisk::new();
    assert!(run(&full, &steps, options).stopped_by.is_none());
    let total_ops = full.ops();
    for fault in [Fault::Eio, Fault::Enospc] {
        for at in 1..total_ops {
            let ctx = format!("{fault:?} at op {at}");
            let disk = SimDisk::new();
            disk.inject(at, fault);
            let (mut wal, _) = Wal::open(disk.storage(), options).expect(&ctx);
            let mut acked = Model::default();
            let mut in_flight = Vec::new();
            let mut saw_error = false;
            'steps: for step in &steps {
                match step {
                    Step::Group(group) => {
                        for recs in group {
                            match wal.append(recs) {
                                Ok(()) => recs.iter().for_each(|r| acked.apply(r)),
                                Err(e) => {
                                    saw_error = true;
                                    match fault {
                                        Fault::Enospc => assert_eq!(
                                            e.io_kind(),
                                            Some(std::io::ErrorKind::StorageFull),
                                            "{ctx}: {e}"
                                        ),
                                        Fault::Eio => assert!(
                                            e.to_string().contains("Input/output error"),
                                            "{ctx}: {e}"
                                        ),
                                    }
                                    if wal.poisoned().is_some() {
                                        let again = wal.append(recs);
                                        assert!(
                                            matches!(again, Err(WalError::Poisoned { .. })),
                                            "{ctx}"
                                        );
                                        in_flight = recs.clone();
                                        break 'steps;
                                    }
                                    // Not poisoned: nothing was written; a retry works.
                                    wal.append(recs)
                                        .unwrap_or_else(|e| panic!("{ctx}: retry: {e}"));
                                    recs.iter().for_each(|r| acked.apply(r));
                                }
                            }
                        }
                    }
                    Step::Release(index) => {
                        if let Err(e) = wal.release_below(*index) {
                            saw_error = true;
                            assert!(e.io_kind().is_some(), "{ctx}: {e}");
                            wal.release_below(*index)
                                .unwrap_or_else(|e| panic!("{ctx}: retry: {e}"));
                        }
                    }
                }
            }
            assert!(saw_error, "{ctx}: the fault surfaced");
            drop(wal);
            let got = reopen(&disk.after_crash(&mut SimRng::new(at)), options);
            assert_acked_prefix(&got, &acked, &in_flight, &ctx);
        }
    }
}

/// `release_below` frees whole segments below a snapshot, never the current one, and the
/// log recovers from the remaining suffix with its hard state and snapshot marker.
#[test]
fn release_below_frees_prefix_and_keeps_state() {
    let options = small_options();
    let disk = SimDisk::new();
    let (mut wal, _) = Wal::open(disk.storage(), options).unwrap();
    let mut m = Model::default();
    let hs = WalRecord::HardState {
        term: 3,
        vote: 2,
        commit: 5,
    };
    wal.append(std::slice::from_ref(&hs)).unwrap();
    m.apply(&hs);
    for i in 1..=80u64 {
        let r = WalRecord::Entry {
            index: i,
            term: 3,
            data: vec![1; 150],
        };
        wal.append(std::slice::from_ref(&r)).unwrap();
        m.apply(&r);
    }
    assert!(matches!(
        wal.release_below(10),
        Err(WalError::NoSnapshot { .. })
    ));
    let snap = WalRecord::Snapshot { index: 60, term: 3 };
    wal.append(std::slice::from_ref(&snap)).unwrap();
    m.apply(&snap);
    let before = wal.segment_seqs();
    let freed = wal.release_below(61).unwrap();
    let after = wal.segment_seqs();
    assert!(freed >= 2, "freed {freed} of {before:?}");
    assert_eq!(after.len(), before.len() - freed);
    assert!(matches!(
        wal.release_below(62),
        Err(WalError::NoSnapshot { .. })
    ));
    // Invalid appends are rejected without effect.
    let gap = wal.append(&[WalRecord::Entry {
        index: 90,
        term: 3,
        data: vec![],
    }]);
    assert!(
        matches!(gap, Err(WalError::InvalidRecord { .. })),
        "{gap:?}"
    );
    let below = wal.append(&[WalRecord::Entry {
        index: 60,
        term: 3,
        data: vec![],
    }]);
    assert!(
        matches!(below, Err(WalError::InvalidRecord { .. })),
        "{below:?}"
    );
    drop(wal);
    let got = reopen(&disk, options);
    assert_eq!(got, m.recovered(), "{}", summary(&got));
    assert_eq!(got.entries.first().map(|e| e.index), Some(61));
    assert_eq!(got.hard_state.map(|h| h.vote), Some(2));
}

/// A too-large append is refused before anything is written.
#[test]
fn oversized_append_is_rejected() {
    let options = small_options();
    let disk = SimDisk::new();
    let (mut wal, _) = Wal::open(disk.storage(), options).unwrap();
    let big = WalRecord::Entry {
        index: 1,
        term: 1,
        data: vec![0; 2000],
    };
    assert!(matches!(wal.append(&[big]), Err(WalError::TooLarge { .. })));
    wal.append(&[WalRecord::Entry {
        index: 1,
        term: 1,
        data: vec![0; 10],
    }])
    .unwrap();
    assert!(WalOptions {
        segment_bytes: 1000,
        batch_bytes_max: 1024
    }
    .validate()
    .is_err());
}

/// The append rules: a fresh log starts at index 1; after a snapshot marker past the last
/// entry the next entry is exactly one past the marker; nothing at or below the marker; a
/// marker never goes backwards. Rejected appends change nothing.
#[test]
fn entry_rules_around_snapshot_markers() {
    let options = small_options();
    let disk = SimDisk::new();
    let (mut wal, _) = Wal::open(disk.storage(), options).unwrap();
    let e = |index| WalRecord::Entry {
        index,
        term: 1,
        data: vec![],
    };
    let rejected = |r: Result<(), WalError>| matches!(r, Err(WalError::InvalidRecord { .. }));
    assert!(rejected(wal.append(&[e(2)])), "a fresh log starts at 1");
    assert!(rejected(wal.append(&[e(0)])));
    wal.append(&[e(1), e(2), e(3)]).unwrap();
    wal.append(&[WalRecord::Snapshot { index: 10, term: 1 }])
        .unwrap();
    assert_eq!(wal.last_index(), 10);
    assert!(rejected(wal.append(&[e(4)])), "at or below the marker");
    assert!(rejected(wal.append(&[e(12)])), "gap after the marker");
    assert!(rejected(
        wal.append(&[WalRecord::Snapshot { index: 9, term: 1 }])
    ));
    // A rejected record rejects its whole append.
    assert!(rejected(wal.append(&[e(11), e(13)])));
    assert_eq!(wal.last_index(), 10);
    wal.append(&[e(11)]).unwrap();
    drop(wal);
    let (wal, got) = Wal::open(disk.storage(), options).unwrap();
    assert_eq!(got.snapshot, Some((10, 1)));
    assert_eq!(
        got.entries.iter().map(|e| e.index).collect::<Vec<_>>(),
        vec![11]
    );
    assert_eq!(wal.last_index(), 11);
}
