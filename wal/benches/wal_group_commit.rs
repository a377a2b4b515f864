//! WAL benchmark (a bench program, not a timed test):
//!
//! ```text
//! CARGO_TARGET_DIR=/work/target-wal cargo bench -p ferrite-wal --bench wal_group_commit
//! ```
//!
//! 1. The raw floor: one writer, 4 KiB overwrite of a preallocated zero-filled file +
//!    fdatasync per op (std pwrite on a plain thread).
//! 2. The same pattern issued from a glommio executor through each I/O path we could use:
//!    glommio DmaFile (O_DIRECT, io_uring), glommio BufferedFile (io_uring), std pwrite on
//!    glommio's blocking pool, and std pwrite on a dedicated thread with a hand-off (what
//!    `GroupWal` does).
//! 3. `GroupWal`: appends/s and p50/p99 acknowledgement latency for 1, 16 and 256
//!    concurrent appenders with 256 B and 4 KiB records.
//!
//! Env: `WAL_BENCH_SECS` (per configuration, default 2), `WAL_BENCH_DIR` (default: the
//! system temp dir; must be on the disk you want to measure).

use std::cell::{Cell, RefCell};
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferrite_wal::{GroupWal, WalOptions, WalRecord};
use glommio::io::{BufferedFile, DmaFile};
use glommio::{LocalExecutorBuilder, Placement};

const OP_BYTES: usize = 4096;
/// The preallocated file the single-writer patterns overwrite, round robin.
const FLOOR_FILE_BYTES: u64 = 16 * 1024 * 1024;

struct Row {
    name: String,
    ops_per_sec: f64,
    p50_us: f64,
    p99_us: f64,
    note: String,
}

fn summarize(name: String, lats: &mut [Duration], elapsed: Duration, note: String) -> Row {
    lats.sort_unstable();
    let pct = |p: f64| {
        if lats.is_empty() {
            return 0.0;
        }
        let i = ((lats.len() as f64 - 1.0) * p).round() as usize;
        lats[i].as_secs_f64() * 1e6
    };
    Row {
        name,
        ops_per_sec: lats.len() as f64 / elapsed.as_secs_f64(),
        p50_us: pct(0.50),
        p99_us: pct(0.99),
        note,
    }
}

fn zero_file(path: &Path) {
    let f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .read(true)
        .open(path)
        .unwrap();
    let zeros = vec![0u8; 1 << 20];
    for i in 0..FLOOR_FILE_BYTES / (1 << 20) {
        f.write_all_at(&zeros, i * (1 << 20)).unwrap();
    }
    f.sync_all().unwrap();
}

fn floor(dir: &Path, secs: Duration, op_bytes: usize, name: &str) -> Row {
    let path = dir.join("floor.dat");
    zero_file(&path);
    let f = OpenOptions::new().write(true).open(&path).unwrap();
    let buf = vec![0xabu8; op_bytes];
    let mut lats = Vec::new();
    let start = Instant::now();
    let mut off = 0u64;
    while start.elapsed() < secs {
        let t = Instant::now();
        f.write_all_at(&buf, off).unwrap();
        f.sync_data().unwrap();
        lats.push(t.elapsed());
        off = (off + op_bytes as u64) % FLOOR_FILE_BYTES;
    }
    let el = start.elapsed();
    let mb_per_sec = lats.len() as f64 * op_bytes as f64 / el.as_secs_f64() / 1e6;
    summarize(name.into(), &mut lats, el, format!("{mb_per_sec:.0} MB/s"))
}

fn executor<T: Send + 'static>(f: impl AsyncFnOnce() -> T + Send + 'static) -> T {
    LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(4 << 20)
        .spawn(move || async move { f().await })
        .unwrap()
        .join()
        .unwrap()
}

fn io_paths(dir: PathBuf, secs: Duration) -> Vec<Box<dyn Fn() -> Row>> {
    let mut rows: Vec<Box<dyn Fn() -> Row>> = Vec::new();
    // glommio DmaFile (O_DIRECT through io_uring).
    let path = dir.join("dma.dat");
    rows.push(Box::new(move || {
        zero_file(&path);
        let path = path.clone();
        executor(async move || {
            let f: DmaFile = glommio::io::OpenOptions::new()
                .read(true)
                .write(true)
                .dma_open(&path)
                .await
                .unwrap();
            let mut lats = Vec::new();
            let start = Instant::now();
            let mut off = 0u64;
            while start.elapsed() < secs {
                let t = Instant::now();
                let mut buf = f.alloc_dma_buffer(OP_BYTES);
                buf.as_bytes_mut().fill(0xab);
                f.write_at(buf, off).await.unwrap();
                f.fdatasync().await.unwrap();
                lats.push(t.elapsed());
                off = (off + OP_BYTES as u64) % FLOOR_FILE_BYTES;
            }
            f.close().await.unwrap();
            summarize(
                "glommio DmaFile write_at + fdatasync".into(),
                &mut lats,
                start.elapsed(),
                String::new(),
            )
        })
    }));
    // glommio BufferedFile (page cache writes through io_uring).
    let path = dir.join("buffered.dat");
    rows.push(Box::new(move || {
        zero_file(&path);
        let path = path.clone();
        executor(async move || {
            let f: BufferedFile = glommio::io::OpenOptions::new()
                .read(true)
                .write(true)
                .buffered_open(&path)
                .await
                .unwrap();
            let mut lats = Vec::new();
            let start = Instant::now();
            let mut off = 0u64;
            while start.elapsed() < secs {
                let t = Instant::now();
                f.write_at(vec![0xab; OP_BYTES], off).await.unwrap();
                f.fdatasync().await.unwrap();
                lats.push(t.elapsed());
                off = (off + OP_BYTES as u64) % FLOOR_FILE_BYTES;
            }
            f.close().await.unwrap();
            summarize(
                "glommio BufferedFile write_at + fdatasync".into(),
                &mut lats,
                start.elapsed(),
                String::new(),
            )
        })
    }));
    // std pwrite + fdatasync on glommio's blocking thread pool.
    let path = dir.join("pool.dat");
    rows.push(Box::new(move || {
        zero_file(&path);
        let path = path.clone();
        executor(async move || {
            let f = Arc::new(OpenOptions::new().write(true).open(&path).unwrap());
            let mut lats = Vec::new();
            let start = Instant::now();
            let mut off = 0u64;
            while start.elapsed() < secs {
                let t = Instant::now();
                let g = f.clone();
                glommio::executor()
                    .spawn_blocking(move || {
                        g.write_all_at(&[0xab; OP_BYTES], off).unwrap();
                        g.sync_data().unwrap();
                    })
                    .await;
                lats.push(t.elapsed());
                off = (off + OP_BYTES as u64) % FLOOR_FILE_BYTES;
            }
            summarize(
                "std pwrite + fdatasync on glommio's blocking pool".into(),
                &mut lats,
                start.elapsed(),
                String::new(),
            )
        })
    }));
    rows
}

fn group(dir: &Path, secs: Duration, appenders: usize, record_bytes: usize) -> Row {
    let wal_dir = dir.join(format!("wal-{appenders}-{record_bytes}"));
    let _ = std::fs::remove_dir_all(&wal_dir);
    let d = wal_dir.clone();
    let (mut lats, elapsed, stats) = executor(async move || {
        let (wal, _) = GroupWal::open(&d, WalOptions::default()).await.unwrap();
        // Measure the steady state: wait until the spare segment the log prepares at open
        // is in place (its zero-fill would otherwise compete with the first commits).
        let spare = d.join(ferrite_wal::format::segment_file_name(1));
        let wait_start = Instant::now();
        while !spare.exists() && wait_start.elapsed() < Duration::from_secs(30) {
            glommio::timer::sleep(Duration::from_millis(20)).await;
        }
        let wal = Rc::new(wal);
        let next = Rc::new(Cell::new(1u64));
        let lats = Rc::new(RefCell::new(Vec::new()));
        let start = Instant::now();
        let payload = record_bytes
            - ferrite_wal::format::RECORD_HEADER_BYTES
            - ferrite_wal::format::ENTRY_PAYLOAD_FIXED_BYTES;
        let mut tasks = Vec::new();
        for _ in 0..appenders {
            let (wal, next, lats) = (wal.clone(), next.clone(), lats.clone());
            tasks.push(glommio::spawn_local(async move {
                while start.elapsed() < secs {
                    let i = next.get();
                    next.set(i + 1);
                    let rec = WalRecord::Entry {
                        index: i,
                        term: 1,
                        data: vec![i as u8; payload],
                    };
                    let t = Instant::now();
                    wal.append(vec![rec]).await.unwrap();
                    lats.borrow_mut().push(t.elapsed());
                }
            }));
        }
        for t in tasks {
            t.await;
        }
        let elapsed = start.elapsed();
        let stats = wal.stats();
        Rc::try_unwrap(wal).ok().unwrap().close().await;
        (Rc::try_unwrap(lats).unwrap().into_inner(), elapsed, stats)
    });
    let _ = std::fs::remove_dir_all(&wal_dir);
    let per_group = stats.appends as f64 / stats.groups.max(1) as f64;
    summarize(
        format!("GroupWal {appenders} appenders x {record_bytes} B"),
        &mut lats,
        elapsed,
        format!("{per_group:.1} appends/sync"),
    )
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing: run tiny then.
    let quick = !std::env::args().any(|a| a == "--bench");
    let secs = Duration::from_secs_f64(
        std::env::var("WAL_BENCH_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(if quick { 0.05 } else { 2.0 }),
    );
    let base: PathBuf = std::env::var_os("WAL_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::tempdir_in(base).unwrap();
    let d = dir.path().to_path_buf();
    let mut contenders: Vec<Box<dyn Fn() -> Row>> = Vec::new();
    let io = io_paths(d.clone(), secs);
    for f in io {
        contenders.push(f);
    }
    for &record_bytes in &[256usize, 4096] {
        for &appenders in &[1usize, 16, 256] {
            let d = d.clone();
            contenders.push(Box::new(move || group(&d, secs, appenders, record_bytes)));
        }
    }
    {
        let d = d.clone();
        contenders.push(Box::new(move || {
            floor(
                &d,
                secs,
                512 * 1024,
                "bandwidth: std pwrite 512 KiB + fdatasync",
            )
        }));
    }
    // The disk is shared and noisy: every contender runs between two floor runs and is
    // compared with their mean (side by side in time, not against one early number).
    let floor_name = "floor: std pwrite 4 KiB + fdatasync, plain thread";
    let mut before = floor(&d, secs, OP_BYTES, floor_name);
    let mut rows = Vec::new();
    for c in &contenders {
        let row = c();
        let after = floor(&d, secs, OP_BYTES, floor_name);
        let floor_ops = (before.ops_per_sec + after.ops_per_sec) / 2.0;
        let floor_p50 = (before.p50_us + after.p50_us) / 2.0;
        rows.push((row, floor_ops, floor_p50));
        before = after;
    }
    println!(
        "| pattern | ops/s | p50 µs | p99 µs | floor ops/s | floor p50 µs | ops/s ÷ floor | p50 ÷ floor p50 | note |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---|");
    for (r, fo, fp) in rows {
        println!(
            "| {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.1} | {:.2} | {} |",
            r.name,
            r.ops_per_sec,
            r.p50_us,
            r.p99_us,
            fo,
            fp,
            r.ops_per_sec / fo,
            r.p50_us / fp,
            r.note
        );
    }
}
