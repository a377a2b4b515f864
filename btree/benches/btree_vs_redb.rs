//! ferrite-btree vs redb, side by side in one run (criterion).
//!
//! Full run (1M keys for reads, scans and file sizes; ~10 min on 2 shared cores):
//!     cargo bench -p ferrite-btree --bench btree_vs_redb
//! Quick run: BENCH_KEYS=100000 cargo bench -p ferrite-btree --bench btree_vs_redb
//!
//! Keys are 8–64 random bytes, values 256 bytes. Inserts: a fresh database per iteration,
//! `INSERT_KEYS` random keys in batches of 1 / 100 / 10k per durable commit (fdatasync on both
//! sides: ferrite `commit(true)`, redb `Durability::Immediate`). Reads and 1k-key scans run on
//! a database of BENCH_KEYS keys. Sizes and RSS are printed once.

use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ferrite_btree::db::Db;
use ferrite_btree::{DbOptions, MvccStore, StoreOptions};
use redb::TableDefinition;

#[allow(dead_code)] // the examples use the rest
mod support;
use support::Rng;

const T: TableDefinition<&[u8], &[u8]> = TableDefinition::new("t");
const VALUE_BYTES: usize = 256;

fn keys(n: usize, seed: u64) -> Vec<Vec<u8>> {
    let mut r = Rng(seed);
    (0..n).map(|_| r.key()).collect()
}

fn bench_keys() -> usize {
    std::env::var("BENCH_KEYS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000)
}

fn ferrite_fill(path: &Path, keys: &[Vec<u8>], batch: usize) -> Db {
    let opts = DbOptions {
        // FERRITE_VERIFY=0 measures reads without per-read page checksums.
        verify_checksums: std::env::var("FERRITE_VERIFY")
            .map(|v| v != "0")
            .unwrap_or(true),
        ..DbOptions::default()
    };
    let db = Db::open(path, opts).unwrap();
    let value = [0xABu8; VALUE_BYTES];
    {
        let mut w = db.writer();
        for chunk in keys.chunks(batch) {
            for k in chunk {
                w.insert(k, &value).unwrap();
            }
            w.commit(true).unwrap();
        }
    }
    db
}

fn redb_fill(path: &Path, keys: &[Vec<u8>], batch: usize) -> redb::Database {
    let db = redb::Database::create(path).unwrap();
    let value = [0xABu8; VALUE_BYTES];
    for chunk in keys.chunks(batch) {
        let w = db.begin_write().unwrap();
        {
            let mut t = w.open_table(T).unwrap();
            for k in chunk {
                t.insert(k.as_slice(), value.as_slice()).unwrap();
            }
        }
        w.commit().unwrap();
    }
    db
}

fn inserts(c: &mut Criterion) {
    let mut g = c.benchmark_group("insert");
    g.sample_size(10).measurement_time(Duration::from_secs(20));
    for (batch, total) in [(1usize, 300usize), (100, 30_000), (10_000, 100_000)] {
        let ks = keys(total, 42 + batch as u64);
        g.throughput(Throughput::Elements(total as u64));
        g.bench_with_input(BenchmarkId::new("ferrite", batch), &batch, |b, &batch| {
            b.iter_custom(|iters| {
                let mut t = Duration::ZERO;
                for _ in 0..iters {
                    let dir = tempfile::tempdir().unwrap();
                    let start = Instant::now();
                    black_box(ferrite_fill(&dir.path().join("f"), &ks, batch));
                    t += start.elapsed();
                }
                t
            })
        });
        g.bench_with_input(BenchmarkId::new("redb", batch), &batch, |b, &batch| {
            b.iter_custom(|iters| {
                let mut t = Duration::ZERO;
                for _ in 0..iters {
                    let dir = tempfile::tempdir().unwrap();
                    let start = Instant::now();
                    black_box(redb_fill(&dir.path().join("r"), &ks, batch));
                    t += start.elapsed();
                }
                t
            })
        });
    }
    g.finish();
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

fn reads(c: &mut Criterion) {
    let n = bench_keys();
    let ks = keys(n, 7);
    let dir = tempfile::tempdir().unwrap();
    let t0 = Instant::now();
    let fdb = ferrite_fill(&dir.path().join("f"), &ks, 10_000);
    eprintln!(
        "ferrite: {n} keys loaded in {:?}, RSS {} MiB",
        t0.elapsed(),
        rss_kib() / 1024
    );
    let t0 = Instant::now();
    let rdb = redb_fill(&dir.path().join("r"), &ks, 10_000);
    eprintln!(
        "redb: {n} keys loaded in {:?}, RSS {} MiB",
        t0.elapsed(),
        rss_kib() / 1024
    );
    let mut sorted = ks.clone();
    sorted.sort();

    let mut g = c.benchmark_group("point_read");
    g.throughput(Throughput::Elements(1));
    let mut r = Rng(99);
    g.bench_function("ferrite", |b| {
        b.iter(|| {
            let snap = fdb.read();
            let k = &ks[(r.next() % n as u64) as usize];
            black_box(snap.get(k).unwrap().unwrap());
        })
    });
    let mut r = Rng(99);
    g.bench_function("redb", |b| {
        b.iter(|| {
            let tx = rdb.begin_read().unwrap();
            let t = tx.open_table(T).unwrap();
            let k = &ks[(r.next() % n as u64) as usize];
            black_box(t.get(k.as_slice()).unwrap().unwrap().value().to_vec());
        })
    });
    g.finish();

    let mut g = c.benchmark_group("scan_1k");
    g.throughput(Throughput::Elements(1000));
    let mut r = Rng(5);
    g.bench_function("ferrite", |b| {
        b.iter(|| {
            let snap = fdb.read();
            let start = &sorted[(r.next() % (n as u64 - 1000)) as usize];
            let mut cur = snap.cursor();
            cur.seek(start).unwrap();
            let mut bytes = 0;
            for _ in 0..1000 {
                let (k, v) = cur.current().unwrap();
                bytes += k.len() + cur.value(v).unwrap().len();
                cur.next().unwrap();
            }
            black_box(bytes)
        })
    });
    let mut r = Rng(5);
    g.bench_function("redb", |b| {
        b.iter(|| {
            let tx = rdb.begin_read().unwrap();
            let t = tx.open_table(T).unwrap();
            let start = &sorted[(r.next() % (n as u64 - 1000)) as usize];
            let mut bytes = 0;
            for e in t.range(start.as_slice()..).unwrap().take(1000) {
                let (k, v) = e.unwrap();
                bytes += k.value().len() + v.value().len();
            }
            black_box(bytes)
        })
    });
    g.finish();
    drop(fdb);
    drop(rdb);
    sizes(n);
}

/// File sizes after n inserts + n/2 overwrites, before and after compaction (printed once).
fn sizes(n: usize) {
    let ks = keys(n, 11);
    let dir = tempfile::tempdir().unwrap();
    let value = [0x5Au8; VALUE_BYTES];
    // ferrite's MVCC store, as the server uses it: one revision per put, 10k puts per commit.
    let s = MvccStore::open(&dir.path().join("m"), StoreOptions::default()).unwrap();
    let mut w = s.writer();
    let all: Vec<&Vec<u8>> = ks.iter().chain(ks.iter().step_by(2)).collect();
    let t0 = Instant::now();
    for chunk in all.chunks(10_000) {
        for k in chunk {
            let mut t = w.txn();
            t.put(k, &value, 0);
            t.end();
        }
        w.commit(false).unwrap();
    }
    w.commit(true).unwrap();
    let load = t0.elapsed();
    let before = s.size_bytes();
    let t0 = Instant::now();
    s.compact(s.read().revision()).unwrap();
    s.finish_compaction().unwrap();
    w.commit(true).unwrap();
    s.defragment().unwrap();
    let after = s.size_bytes();
    eprintln!(
        "SIZE ferrite-mvcc: {} puts ({} revisions) in {load:?}; file {:.1} MiB, after compact+defrag {:.1} MiB (compaction+defrag {:?}); RSS {} MiB",
        all.len(),
        s.read().revision(),
        before as f64 / 1048576.0,
        after as f64 / 1048576.0,
        t0.elapsed(),
        rss_kib() / 1024
    );
    drop(w);
    drop(s);
    let mut r = redb::Database::create(dir.path().join("r")).unwrap();
    let t0 = Instant::now();
    for chunk in all.chunks(10_000) {
        let w = r.begin_write().unwrap();
        {
            let mut t = w.open_table(T).unwrap();
            for k in chunk {
                t.insert(k.as_slice(), value.as_slice()).unwrap();
            }
        }
        w.commit().unwrap();
    }
    let load = t0.elapsed();
    let before = std::fs::metadata(dir.path().join("r")).unwrap().len();
    let t0 = Instant::now();
    while r.compact().unwrap() {}
    let after = std::fs::metadata(dir.path().join("r")).unwrap().len();
    eprintln!(
        "SIZE redb: {} puts (no history) in {load:?}; file {:.1} MiB, after compact {:.1} MiB ({:?}); RSS {} MiB",
        all.len(),
        before as f64 / 1048576.0,
        after as f64 / 1048576.0,
        t0.elapsed(),
        rss_kib() / 1024
    );
}

/// The server's apply path: N txns (one put each, one revision each) then `commit(false)`, on
/// a store of 100k keys. No redb counterpart (it has no MVCC); this is the number the apply loop
/// pays per batch.
fn mvcc_apply(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let s = MvccStore::open(&dir.path().join("m"), StoreOptions::default()).unwrap();
    let ks = keys(100_000, 3);
    let mut w = s.writer();
    let value = [1u8; VALUE_BYTES];
    for chunk in ks.chunks(10_000) {
        for k in chunk {
            let mut t = w.txn();
            t.put(k, &value, 0);
            t.end();
        }
        w.commit(true).unwrap();
    }
    let mut g = c.benchmark_group("mvcc_apply_commit_nondurable");
    let mut r = Rng(17);
    for batch in [1usize, 100, 1000] {
        g.throughput(Throughput::Elements(batch as u64));
        g.bench_with_input(BenchmarkId::from_parameter(batch), &batch, |b, &batch| {
            b.iter(|| {
                for _ in 0..batch {
                    let mut t = w.txn();
                    t.put(&ks[(r.next() % ks.len() as u64) as usize], &value, 0);
                    t.end();
                }
                w.commit(false).unwrap();
            })
        });
    }
    g.finish();
}

criterion_group!(benches, inserts, reads, mvcc_apply);
criterion_main!(benches);
