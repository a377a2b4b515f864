//! Latency of the GroupWal hand-off alone (simulated disk, no device I/O): one appender,
//! append -> acknowledged. `cargo run --release -p ferrite-wal --example handoff_latency`
use std::time::{Duration, Instant};

use ferrite_wal::sim::SimDisk;
use ferrite_wal::{GroupWal, WalOptions, WalRecord};
use glommio::{LocalExecutorBuilder, Placement};

fn main() {
    let disk = SimDisk::new();
    let lats = LocalExecutorBuilder::new(Placement::Unbound)
        .spawn(move || async move {
            let options = WalOptions {
                segment_bytes: 64 << 20,
                batch_bytes_max: 1 << 20,
            };
            let (wal, _) = GroupWal::open_with(move || Ok(disk.storage()), options, "sim".into())
                .await
                .unwrap();
            let mut lats = Vec::new();
            for i in 1..=20_000u64 {
                let t = Instant::now();
                wal.append(vec![WalRecord::Entry {
                    index: i,
                    term: 1,
                    data: vec![0; 200],
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
        .unwrap();
    let mut lats: Vec<Duration> = lats;
    lats.sort_unstable();
    let p = |q: f64| lats[((lats.len() - 1) as f64 * q) as usize];
    println!(
        "hand-off round trip: p50 {:?} p90 {:?} p99 {:?}",
        p(0.5),
        p(0.9),
        p(0.99)
    );
}
