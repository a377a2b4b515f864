//! The side-by-side insert benchmark's workload in isolation, for profiling (`perf record -g`,
//! `strace -c`): `INSERT_KEYS` random keys (8–64 bytes, 256-byte values; default 30k) into a
//! fresh database, `INSERT_BATCH` per durable commit (default 100), `INSERT_ROUNDS` times
//! (default 5); `INSERT_ENGINE=redb` runs redb 2 (`Durability::Immediate`) instead. Prints
//! keys/s (wall) and CPU µs per key of the whole process.
//!
//!     cargo run --release -p ferrite-btree --example insert_loop
use std::time::Instant;

use ferrite_btree::db::Db;
use ferrite_btree::DbOptions;

#[allow(dead_code)] // each example uses part of it
#[path = "../benches/support/mod.rs"]
mod support;
use support::{env_usize, Rng};

/// CPU time (user + system) of this process so far, in µs.
fn process_cpu_us() -> u64 {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a `rusage` into the pointer it is given, which is valid and
    // large enough.
    let ru = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, ru.as_mut_ptr());
        ru.assume_init()
    };
    let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    us(ru.ru_utime) + us(ru.ru_stime)
}

const T: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("t");

fn main() {
    let n = env_usize("INSERT_KEYS", 30_000);
    let batch = env_usize("INSERT_BATCH", 100);
    let rounds = env_usize("INSERT_ROUNDS", 5);
    let redb = std::env::var("INSERT_ENGINE").is_ok_and(|e| e == "redb");
    let mut r = Rng(42 + batch as u64);
    let ks: Vec<Vec<u8>> = (0..n).map(|_| r.key()).collect();
    let value = [0xABu8; 256];
    for round in 0..rounds {
        let dir = tempfile::tempdir().expect("tempdir");
        let dir = &dir;
        let (t0, c0) = (Instant::now(), process_cpu_us());
        if redb {
            let db = redb::Database::create(dir.path().join("r")).expect("create");
            for chunk in ks.chunks(batch) {
                let w = db.begin_write().expect("begin");
                {
                    let mut t = w.open_table(T).expect("table");
                    for k in chunk {
                        t.insert(k.as_slice(), value.as_slice()).expect("insert");
                    }
                }
                w.commit().expect("commit");
            }
        } else {
            let db = Db::open(&dir.path().join("f"), DbOptions::default()).expect("open");
            let mut w = db.writer();
            for chunk in ks.chunks(batch) {
                for k in chunk {
                    w.insert(k, &value).expect("insert");
                }
                w.commit(true).expect("commit");
            }
        }
        let (secs, cpu_us) = (t0.elapsed().as_secs_f64(), process_cpu_us() - c0);
        let file_bytes: u64 = std::fs::read_dir(dir.path())
            .expect("dir")
            .map(|e| e.expect("entry").metadata().expect("metadata").len())
            .sum();
        println!(
            "{} round {round}: {:.1}k keys/s, {:.2} CPU µs/key, {:.0} µs/commit, file {:.1} MiB",
            if redb { "redb" } else { "ferrite" },
            n as f64 / secs / 1000.0,
            cpu_us as f64 / n as f64,
            secs * 1e6 / n.div_ceil(batch) as f64,
            file_bytes as f64 / (1 << 20) as f64
        );
    }
}
