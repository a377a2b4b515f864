//! `GroupWal` on real files under a glommio executor.

use std::cell::Cell;
use std::rc::Rc;

use ferrite_wal::{format, GroupWal, WalError, WalOptions, WalRecord};
use glommio::{LocalExecutorBuilder, Placement};

fn on_executor<T: Send + 'static>(f: impl AsyncFnOnce() -> T + Send + 'static) -> T {
    LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(1 << 20)
        .spawn(move || async move { f().await })
        .expect("executor")
        .join()
        .expect("executor thread")
}

fn entry(index: u64) -> WalRecord {
    WalRecord::Entry {
        index,
        term: 1,
        data: index.to_le_bytes().repeat(1 + (index % 7) as usize),
    }
}

/// Concurrent appenders share writes and syncs; every acknowledged entry is recovered, in
/// call order; release frees the prefix.
#[test]
fn concurrent_appends_are_grouped_and_recovered() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let options = WalOptions {
        segment_bytes: 16 * 1024,
        batch_bytes_max: 4 * 1024,
    };
    const TASKS: u64 = 32;
    const PER_TASK: u64 = 25;
    let p = path.clone();
    let (stats, freed) = on_executor(async move || {
        let (wal, rec) = GroupWal::open(&p, options).await.unwrap();
        assert!(rec.entries.is_empty() && rec.hard_state.is_none());
        let wal = Rc::new(wal);
        let next = Rc::new(Cell::new(1u64));
        let mut tasks = Vec::new();
        for _ in 0..TASKS {
            let (wal, next) = (wal.clone(), next.clone());
            tasks.push(glommio::spawn_local(async move {
                for _ in 0..PER_TASK {
                    let i = next.get();
                    next.set(i + 1);
                    wal.append(vec![entry(i)]).await.unwrap();
                }
            }));
        }
        for t in tasks {
            t.await;
        }
        let last = next.get() - 1;
        wal.append(vec![WalRecord::Snapshot {
            index: last / 2,
            term: 1,
        }])
        .await
        .unwrap();
        let freed = wal.release_below(last / 2 + 1).await.unwrap();
        let bad = wal.append(vec![entry(last + 5)]).await;
        assert!(
            matches!(bad, Err(WalError::InvalidRecord { .. })),
            "{bad:?}"
        );
        let stats = wal.stats();
        Rc::try_unwrap(wal).ok().expect("sole owner").close().await;
        (stats, freed)
    });
    let total = TASKS * PER_TASK;
    assert_eq!(stats.appends, total + 2);
    assert!(
        stats.groups < stats.appends,
        "appends were grouped: {stats:?}"
    );
    let names: Vec<_> = std::fs::read_dir(&path)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.file_name(), e.metadata().unwrap().len())
        })
        .collect();
    assert!(freed >= 1, "released a segment: {names:?}");
    let p = path.clone();
    let rec = on_executor(async move || {
        let (wal, rec) = GroupWal::open(&p, options).await.unwrap();
        wal.close().await;
        rec
    });
    assert_eq!(rec.snapshot, Some((total / 2, 1)));
    let want: Vec<u64> = (total / 2 + 1..=total).collect();
    let got: Vec<u64> = rec.entries.iter().map(|e| e.index).collect();
    assert_eq!(got, want);
    for e in &rec.entries {
        assert_eq!(
            WalRecord::Entry {
                index: e.index,
                term: e.term,
                data: e.data.clone()
            },
            entry(e.index)
        );
    }
}

/// On real files, a flipped bit in a middle segment refuses to open with the file's path
/// and the byte offset in the error.
#[test]
fn real_file_corruption_names_path_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let options = WalOptions {
        segment_bytes: 8192,
        batch_bytes_max: 2048,
    };
    let p = path.clone();
    on_executor(async move || {
        let (wal, _) = GroupWal::open(&p, options).await.unwrap();
        for i in 1..=60 {
            wal.append(vec![WalRecord::Entry {
                index: i,
                term: 2,
                data: vec![9; 300],
            }])
            .await
            .unwrap();
        }
        wal.close().await;
    });
    let victim = path.join(format::segment_file_name(1));
    let mut bytes = std::fs::read(&victim).unwrap();
    let off = format::SEGMENT_HEADER_BYTES + 40;
    bytes[off] ^= 0x10;
    std::fs::write(&victim, &bytes).unwrap();
    let p = path.clone();
    let err = on_executor(async move || GroupWal::open(&p, options).await.err());
    let msg = err.expect("refuses to open").to_string();
    assert!(msg.contains(&victim.display().to_string()), "{msg}");
    assert!(
        msg.contains(&format!("offset {}", format::SEGMENT_HEADER_BYTES)),
        "{msg}"
    );
}
