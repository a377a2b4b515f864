//! The server's apply path in isolation, for profiling (`perf record -g`): a store of
//! `APPLY_KEYS` random keys (default 100k, 256-byte values), then batches of one-put txns (one
//! revision each, `APPLY_BATCH` per `commit(false)`, default 100) for `APPLY_SECS` seconds.
//!
//!     cargo run --release -p ferrite-btree --example apply_loop
use std::time::{Duration, Instant};

use ferrite_btree::{MvccStore, StoreOptions};

#[allow(dead_code)] // each example uses part of it
#[path = "../benches/support/mod.rs"]
mod support;
use support::{env_usize, Rng};

/// CPU time of this thread so far (ns), from the scheduler: steadier than wall time on a
/// shared machine.
fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn main() {
    let keys_n = env_usize("APPLY_KEYS", 100_000);
    let batch = env_usize("APPLY_BATCH", 100);
    let secs = env_usize("APPLY_SECS", 5);
    let dir = tempfile::tempdir().expect("tempdir");
    let s = MvccStore::open(&dir.path().join("m"), StoreOptions::default()).expect("open");
    let mut r = Rng(0x9E37_79B9_7F4A_7C15);
    let ks: Vec<Vec<u8>> = (0..keys_n)
        .map(|_| {
            let len = 8 + (r.next() % 57) as usize;
            (0..len).map(|_| b'a' + (r.next() % 26) as u8).collect()
        })
        .collect();
    let value = [7u8; 256];
    let mut w = s.writer();
    let t0 = Instant::now();
    for chunk in ks.chunks(10_000) {
        for k in chunk {
            let mut t = w.txn();
            t.put(k, &value, 0);
            t.end();
        }
        w.commit(true).expect("commit");
    }
    eprintln!("loaded {keys_n} keys in {:?}", t0.elapsed());
    let t0 = Instant::now();
    let cpu0 = thread_cpu_ns();
    let mut puts = 0u64;
    let mut commit_times = Vec::new();
    while t0.elapsed() < Duration::from_secs(secs as u64) {
        for _ in 0..batch {
            let mut t = w.txn();
            let prev = t.put(&ks[(r.next() % ks.len() as u64) as usize], &value, 0);
            assert!(prev.is_some());
            t.end();
        }
        let c0 = Instant::now();
        w.commit(false).expect("commit");
        commit_times.push(c0.elapsed());
        puts += batch as u64;
    }
    let el = t0.elapsed();
    let cpu = thread_cpu_ns() - cpu0;
    println!(
        "apply: {puts} puts in {el:?}: {:.0} puts/s, {:.1} µs CPU/put, batch {batch}, file {:.1} MiB",
        puts as f64 / el.as_secs_f64(),
        cpu as f64 / 1e3 / puts as f64,
        s.size_bytes() as f64 / 1048576.0
    );
    commit_times.sort();
    let total: Duration = commit_times.iter().sum();
    println!(
        "commits: {}, total {total:?}, p50 {:?}, p99 {:?}, max {:?}",
        commit_times.len(),
        commit_times[commit_times.len() / 2],
        commit_times[commit_times.len() * 99 / 100],
        commit_times.last().copied().unwrap_or_default()
    );
}
