//! The fsync floor under a write-ahead log, probed on the disk the servers use: 4 KiB `pwrite`
//! overwriting a preallocated, zero-filled file, then `fdatasync`, one at a time (what ferrite's
//! WAL does per group commit: its segments are preallocated and zero-filled). The server targets
//! compare a single client's put latency with this floor plus a gRPC echo round trip.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Instant;

/// Bytes written per operation.
pub const WRITE_BYTES: usize = 4096;
/// Size of the preallocated file the writes cycle through.
pub const FILE_BYTES: u64 = 16 << 20;

#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct FloorSample {
    pub iterations: usize,
    pub p50_us: f64,
    pub p99_us: f64,
    pub ops_per_sec: f64,
}

/// Runs `iterations` write + fdatasync operations in a fresh file under `dir` (removed after).
pub fn probe(dir: &Path, iterations: usize) -> Result<FloorSample, String> {
    let path = dir.join(format!("fsync-floor-{}", std::process::id()));
    let r = probe_file(&path, iterations.max(1));
    let _ = std::fs::remove_file(&path);
    r
}

fn probe_file(path: &Path, iterations: usize) -> Result<FloorSample, String> {
    let err = |e: std::io::Error| format!("fsync floor probe {}: {e}", path.display());
    let f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(path)
        .map_err(err)?;
    // Preallocate and zero-fill, then make that durable, so the probe measures overwrites.
    let zeros = vec![0u8; 1 << 20];
    for i in 0..FILE_BYTES / zeros.len() as u64 {
        f.write_all_at(&zeros, i * zeros.len() as u64)
            .map_err(err)?;
    }
    f.sync_all().map_err(err)?;
    let block = vec![0x5au8; WRITE_BYTES];
    let slots = FILE_BYTES / WRITE_BYTES as u64;
    let mut took = Vec::with_capacity(iterations);
    let started = Instant::now();
    for i in 0..iterations as u64 {
        let t = Instant::now();
        f.write_all_at(&block, (i % slots) * WRITE_BYTES as u64)
            .map_err(err)?;
        f.sync_data().map_err(err)?;
        took.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let elapsed = started.elapsed().as_secs_f64();
    took.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    let at = |q: f64| took[((took.len() as f64 * q) as usize).min(took.len() - 1)];
    Ok(FloorSample {
        iterations,
        p50_us: at(0.5),
        p99_us: at(0.99),
        ops_per_sec: iterations as f64 / elapsed.max(1e-9),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn probe_reports_what_it_did() {
        let s = super::probe(&std::env::temp_dir(), 5).unwrap();
        assert_eq!(s.iterations, 5);
        assert!(s.p50_us > 0.0 && s.p99_us >= s.p50_us);
    }
}
