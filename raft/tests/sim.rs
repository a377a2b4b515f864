//! Deterministic cluster simulation over many seeds (see `ferrite_raft::sim`).
//!
//! Default: 2,000 seeds. Long run: `RAFT_SIM_SEEDS=100000 cargo test -p ferrite-raft --release sim_seeds`.
//! Replay one seed: `RAFT_SIM_SEED=123 cargo test -p ferrite-raft --release sim_replay -- --nocapture`.

use ferrite_raft::sim::{run_seed, SimOptions};

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

#[test]
fn sim_seeds() {
    let count = env_u64("RAFT_SIM_SEEDS").unwrap_or(2000);
    let start = env_u64("RAFT_SIM_SEED_START").unwrap_or(0);
    let mut failures = Vec::new();
    let mut total = ferrite_raft::sim::SimStats::default();
    for seed in start..start + count {
        match run_seed(seed) {
            Ok(s) => {
                total.ticks += s.ticks;
                total.committed += s.committed;
                total.elections += s.elections;
                total.crashes += s.crashes;
                total.snapshots_installed += s.snapshots_installed;
                total.conf_changes += s.conf_changes;
                total.reads += s.reads;
                total.messages += s.messages;
            }
            Err(e) => {
                eprintln!("{e}");
                failures.push(seed);
                if failures.len() >= 5 {
                    break;
                }
            }
        }
    }
    eprintln!("sim: {count} seeds from {start}: {total:?}");
    for s in &failures {
        eprintln!("FAILED seed {s}: RAFT_SIM_SEED={s} cargo test -p ferrite-raft --release sim_replay -- --nocapture");
    }
    assert!(failures.is_empty(), "failing seeds: {failures:?}");
    // The scenarios must actually exercise the machinery.
    assert!(total.committed > count * 10, "too few commits: {total:?}");
    assert!(total.elections >= count, "too few elections: {total:?}");
    if count >= 200 {
        assert!(
            total.snapshots_installed > 0
                && total.conf_changes > 0
                && total.crashes > 0
                && total.reads > 0,
            "{total:?}"
        );
    }
}

#[test]
fn sim_replay() {
    let seed = env_u64("RAFT_SIM_SEED").unwrap_or(1);
    eprintln!("{:?}", SimOptions::from_seed(seed));
    match run_seed(seed) {
        Ok(s) => eprintln!("seed {seed} ok: {s:?}"),
        Err(e) => panic!("{e}"),
    }
}

/// A seed replays exactly: same options, same trajectory, same counters.
#[test]
fn sim_is_deterministic() {
    for seed in [7u64, 1234, 99_999] {
        let a = format!("{:?}", run_seed(seed).unwrap());
        let b = format!("{:?}", run_seed(seed).unwrap());
        assert_eq!(a, b, "seed {seed} did not replay");
    }
}
