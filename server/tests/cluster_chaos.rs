//! Cluster fault tests: real member processes (ferrite, or etcd 3.4 with
//! `FERRITE_TEST_TARGET=etcd`), a concurrent client workload, a seeded fault schedule (kill -9 of
//! leader and followers, SIGSTOP, peer partitions through the ferrite-chaos proxies, member add and
//! remove), then the history checker (per-key linearizability, revision facts, watch streams
//! against the full history) and the end-of-run checks (nothing acknowledged lost, every member at
//! the same revision and HashKV). The harness lives in `chaos/` (ferrite-chaos); see its crate
//! docs and docs/testing.md.
//!
//! All three run against ferrite in CI (1, 3 and 5 members; each about 15–40 s on 2 cores). The
//! same tests prove the harness against etcd 3.4:
//!
//!     FERRITE_TEST_TARGET=etcd cargo test -p ferrite --release --test cluster_chaos
//!
//! `FERRITE_CHAOS_SEED=N` replays one schedule.

mod common;

use ferrite_chaos::cluster::Target;
use ferrite_chaos::run::{run, Fault, RunConfig};
use std::path::PathBuf;
use std::time::Duration;

fn target() -> Target {
    match common::Target::from_env() {
        common::Target::Ferrite => Target::Ferrite(PathBuf::from(env!("CARGO_BIN_EXE_ferrite"))),
        common::Target::Etcd => Target::Etcd(common::Target::Etcd.binary()),
    }
}

fn seed(default: u64) -> u64 {
    std::env::var("FERRITE_CHAOS_SEED")
        .ok()
        .map(|s| s.parse().expect("FERRITE_CHAOS_SEED is a number"))
        .unwrap_or(default)
}

/// Minimum acknowledged operations for a run to count as having exercised anything.
const ACKED_MIN: usize = 200;

async fn run_and_check(cfg: RunConfig) {
    let report = run(&cfg).await;
    println!("{}", report.summary());
    for f in &report.history.faults {
        println!("  fault {f}");
    }
    assert!(
        report.passed(),
        "{}\nreplay: FERRITE_CHAOS_SEED={} (target {})",
        report.summary(),
        cfg.seed,
        cfg.target.name()
    );
    assert!(
        report.history.faults.len() >= cfg.faults.len(),
        "not every fault kind was injected: {:?}",
        report.history.faults
    );
    assert!(
        report.acked >= ACKED_MIN,
        "only {} operations acknowledged: the workload did not run",
        report.acked
    );
    assert!(
        !report.history.full.is_empty() && !report.history.watches.is_empty(),
        "the watch checks did not run"
    );
}

/// One member: load while it is killed with SIGKILL and restarted on its data directory (twice)
/// and paused with SIGSTOP; the history must be linearizable and nothing acknowledged lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_member_kill9_restart_and_pause() {
    let mut cfg = RunConfig::new(target(), 1, seed(11));
    cfg.duration = Duration::from_secs(8);
    cfg.clients = 4;
    cfg.faults = vec![Fault::KillLeader, Fault::Pause, Fault::KillLeader];
    run_and_check(cfg).await;
}

/// Three members: kill -9 of the leader and of a follower, SIGSTOP, a partition, member add and
/// remove, under load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_all_faults() {
    let mut cfg = RunConfig::new(target(), 3, seed(31));
    cfg.duration = Duration::from_secs(12);
    run_and_check(cfg).await;
}

/// Five members, the same fault kinds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_members_all_faults() {
    let mut cfg = RunConfig::new(target(), 5, seed(51));
    cfg.duration = Duration::from_secs(12);
    run_and_check(cfg).await;
}
