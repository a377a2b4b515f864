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
/// call order; release frees the prefix. Every third appender appends inline
/// (`append_inline`): it writes on the executor's thread when the I/O thread is idle and
/// queues like the others when not, so inline and queued groups interleave.
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
        for t in 0..TASKS {
            let (wal, next) = (wal.clone(), next.clone());
            tasks.push(glommio::spawn_local(async move {
                for _ in 0..PER_TASK {
                    let i = next.get();
                    next.set(i + 1);
                    if t % 3 == 0 {
                        wal.append_inline(vec![entry(i)]).await.unwrap();
                    } else {
                        wal.append(vec![entry(i)]).await.unwrap();
                    }
                    // Let the I/O thread finish now and then, so some inline appends
                    // find it idle.
                    if i % 5 == 0 {
                        glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
                    }
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
    assert!(
        stats.inline_groups > 0 && stats.inline_groups < stats.groups,
        "some groups were written inline, not all: {stats:?}"
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

/// Runs 16 concurrent appenders (10 appends each) through `GroupWal` on `disk`; returns
/// the indexes acknowledged. Each appender stops at its first error. With `inline`, every
/// other appender uses `append_inline`.
fn concurrent_on_sim(
    disk: &ferrite_wal::sim::SimDisk,
    options: WalOptions,
    inline: bool,
) -> Vec<u64> {
    let d = disk.clone();
    on_executor(async move || {
        let opened = GroupWal::open_with(move || Ok(d.storage()), options, "sim".into()).await;
        let Ok((wal, _)) = opened else {
            return Vec::new();
        };
        let wal = Rc::new(wal);
        let next = Rc::new(Cell::new(1u64));
        let acked = Rc::new(std::cell::RefCell::new(Vec::new()));
        let mut tasks = Vec::new();
        for t in 0..16 {
            let (wal, next, acked) = (wal.clone(), next.clone(), acked.clone());
            tasks.push(glommio::spawn_local(async move {
                for _ in 0..10 {
                    let i = next.get();
                    next.set(i + 1);
                    let append: std::pin::Pin<
                        Box<dyn std::future::Future<Output = Result<(), WalError>>>,
                    > = if inline && t % 2 == 0 {
                        Box::pin(wal.append_inline(vec![entry(i)]))
                    } else {
                        Box::pin(wal.append(vec![entry(i)]))
                    };
                    match append.await {
                        Ok(()) => acked.borrow_mut().push(i),
                        Err(_) => return,
                    }
                }
            }));
        }
        for t in tasks {
            t.await;
        }
        let stats = wal.stats();
        Rc::try_unwrap(wal).ok().expect("sole owner").close().await;
        let acked = Rc::try_unwrap(acked).unwrap().into_inner();
        if acked.len() == 160 {
            // A run without a crash: inline appends happened exactly when asked for.
            assert_eq!(stats.inline_groups > 0, inline, "{stats:?}");
        }
        acked
    })
}

/// The whole front end (hand-off, I/O thread, group commit) on the simulated disk, cut by
/// a crash before each I/O operation in turn: every acknowledged append is recovered, the
/// recovered entries are contiguous from 1 and hold what was appended, and after a crash
/// no later append is acknowledged.
#[test]
fn group_wal_crash_at_every_operation_keeps_acknowledged_appends() {
    crash_at_every_operation(false);
}

/// As above with half the appenders writing inline (`append_inline`) when the I/O thread
/// is idle.
#[test]
fn group_wal_crash_at_every_operation_with_inline_appends() {
    crash_at_every_operation(true);
}

fn crash_at_every_operation(inline: bool) {
    use ferrite_wal::sim::{SimDisk, SimRng};
    let options = WalOptions {
        segment_bytes: 4096,
        batch_bytes_max: 1024,
    };
    let full = SimDisk::new();
    let all = concurrent_on_sim(&full, options, inline);
    assert_eq!(all.len(), 160);
    let total_ops = full.ops();
    assert!(
        total_ops > 20,
        "appends were spread over many syncs and segments: {total_ops} ops"
    );
    for cut in 0..total_ops {
        let disk = SimDisk::new();
        disk.crash_at_op(cut);
        let acked = concurrent_on_sim(&disk, options, inline);
        let after = disk.after_crash(&mut SimRng::new(cut));
        let (_, rec) = ferrite_wal::Wal::open(after.storage(), options)
            .unwrap_or_else(|e| panic!("cut {cut}: recovery failed: {e}"));
        let got: Vec<u64> = rec.entries.iter().map(|e| e.index).collect();
        assert_eq!(
            got,
            (1..=got.len() as u64).collect::<Vec<_>>(),
            "cut {cut}: contiguous"
        );
        for e in &rec.entries {
            let want = entry(e.index);
            assert_eq!(
                WalRecord::Entry {
                    index: e.index,
                    term: e.term,
                    data: e.data.clone()
                },
                want
            );
        }
        for i in &acked {
            assert!(
                *i <= got.len() as u64,
                "cut {cut}: acknowledged {i} lost ({} recovered)",
                got.len()
            );
        }
    }
}

/// Appends made before a `GroupWal` is dropped are still made durable and acknowledged.
#[test]
fn appends_made_before_drop_complete() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().to_path_buf();
    let options = WalOptions {
        segment_bytes: 16 * 1024,
        batch_bytes_max: 4 * 1024,
    };
    on_executor(async move || {
        let (wal, _) = GroupWal::open(&p, options).await.unwrap();
        let futures: Vec<_> = (1..=5).map(|i| wal.append(vec![entry(i)])).collect();
        drop(wal);
        for f in futures {
            f.await.unwrap();
        }
        // The dropped log's I/O thread may still be finishing (preparing the next segment):
        // it holds the directory's lock until it exits, and a second log is refused meanwhile.
        let mut tries = 0;
        let (wal, rec) = loop {
            match GroupWal::open(&p, options).await {
                Ok(opened) => break opened,
                Err(e) if e.io_kind() == Some(std::io::ErrorKind::WouldBlock) && tries < 500 => {
                    assert!(e.to_string().contains("in use"), "{e}");
                    tries += 1;
                    glommio::timer::sleep(std::time::Duration::from_millis(10)).await;
                }
                Err(e) => panic!("reopen: {e}"),
            }
        };
        let got: Vec<u64> = rec.entries.iter().map(|e| e.index).collect();
        assert_eq!(got, vec![1, 2, 3, 4, 5]);
        wal.close().await;
    });
}

/// Two logs on one directory: the second is refused while the first is open.
#[test]
fn a_directory_holds_one_log_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().to_path_buf();
    let small = WalOptions {
        segment_bytes: 64 * 1024,
        batch_bytes_max: 4 * 1024,
    };
    on_executor(async move || {
        let (wal, _) = GroupWal::open(&p, small).await.unwrap();
        let second = GroupWal::open(&p, small).await;
        let err = second.err().expect("refused");
        assert!(err.to_string().contains("in use"), "{err}");
        wal.close().await;
        let (wal, _) = GroupWal::open(&p, small).await.unwrap();
        wal.close().await;
    });
}

/// Through the front end: an fdatasync EIO fails the group with the I/O error, every later
/// append fails with `Poisoned`, and what was acknowledged before survives a crash.
#[test]
fn group_wal_eio_poisons_and_keeps_acknowledged() {
    use ferrite_wal::sim::{Fault, SimDisk, SimRng};
    let options = WalOptions {
        segment_bytes: 64 * 1024,
        batch_bytes_max: 4 * 1024,
    };
    let disk = SimDisk::new();
    let d = disk.clone();
    on_executor(async move || {
        let d2 = d.clone();
        let (wal, _) = GroupWal::open_with(move || Ok(d2.storage()), options, "sim".into())
            .await
            .unwrap();
        for i in 1..=3 {
            wal.append(vec![entry(i)]).await.unwrap();
        }
        // The next operations are this append's write, then its fdatasync: fail the sync.
        d.inject(d.ops() + 1, Fault::Eio);
        let err = wal.append(vec![entry(4)]).await.unwrap_err();
        assert!(err.to_string().contains("fdatasync"), "{err}");
        let later = wal.append(vec![entry(5)]).await;
        assert!(matches!(later, Err(WalError::Poisoned { .. })), "{later:?}");
        wal.close().await;
    });
    let (_, rec) =
        ferrite_wal::Wal::open(disk.after_crash(&mut SimRng::new(1)).storage(), options).unwrap();
    let got: Vec<u64> = rec.entries.iter().map(|e| e.index).collect();
    assert!(got == vec![1, 2, 3] || got == vec![1, 2, 3, 4], "{got:?}");
}
