//! One appender's latency through the real `GroupWal` on real files against a bare
//! pwrite + fdatasync loop on a zero-filled file in the same directory, alternated in rounds.
//! `WAL_DIR=/path cargo run --release -p ferrite-wal --example wal_vs_bare`
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ferrite_wal::{GroupWal, WalOptions, WalRecord};
use glommio::{LocalExecutorBuilder, Placement};

const APPENDS_PER_ROUND: usize = 2_000;
const ROUNDS: usize = 3;
const RECORD_BYTES: usize = 200;

fn pct(mut v: Vec<Duration>, q: f64) -> Duration {
    v.sort_unstable();
    v[((v.len() - 1) as f64 * q) as usize]
}

fn bare(dir: &std::path::Path) -> Vec<Duration> {
    let path = dir.join("bare.probe");
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    f.write_all(&vec![0u8; 16 << 20]).unwrap();
    f.sync_all().unwrap();
    let buf = vec![7u8; RECORD_BYTES + 24];
    let mut at = 4096u64;
    let mut lats = Vec::with_capacity(APPENDS_PER_ROUND);
    for _ in 0..APPENDS_PER_ROUND {
        let t = Instant::now();
        f.write_all_at(&buf, at).unwrap();
        f.sync_data().unwrap();
        lats.push(t.elapsed());
        at += buf.len() as u64;
    }
    std::fs::remove_file(&path).unwrap();
    lats
}

fn wal(dir: PathBuf, first_index: u64) -> Vec<Duration> {
    LocalExecutorBuilder::new(Placement::Unbound)
        .spawn(move || async move {
            let options = WalOptions {
                segment_bytes: 64 << 20,
                batch_bytes_max: 1 << 20,
            };
            let (wal, _) = GroupWal::open(&dir, options).await.unwrap();
            let settle_ms: u64 = std::env::var("SETTLE_MS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            glommio::timer::sleep(Duration::from_millis(settle_ms)).await;
            let mut lats = Vec::with_capacity(APPENDS_PER_ROUND);
            for i in 0..APPENDS_PER_ROUND as u64 {
                let t = Instant::now();
                wal.append(vec![WalRecord::Entry {
                    index: first_index + i,
                    term: 1,
                    data: vec![0; RECORD_BYTES],
                }])
                .await
                .unwrap();
                lats.push(t.elapsed());
            }
            wal.close().await;
            lats
        })
        .unwrap()
        .join()
        .unwrap()
}

fn main() {
    let dir = PathBuf::from(std::env::var("WAL_DIR").unwrap_or_else(|_| "/tmp/wal-vs-bare".into()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("wal")).unwrap();
    let mut next = 1u64;
    for round in 0..ROUNDS {
        let b = bare(&dir);
        let w = wal(dir.join("wal"), next);
        next += APPENDS_PER_ROUND as u64;
        println!(
            "round {round}: bare p50 {:?} p90 {:?} | wal p50 {:?} p90 {:?}",
            pct(b.clone(), 0.5),
            pct(b, 0.9),
            pct(w.clone(), 0.5),
            pct(w, 0.9)
        );
    }
}
