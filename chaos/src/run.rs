//! One fault run: start a cluster, run the workload while a seeded schedule injects faults, then
//! the end-of-run checks and the history checker.

use crate::checker::{self, CheckReport, Limits, Verdict, FINAL_CLIENT};
use crate::cluster::{Cluster, Target, HEALTHY_TIMEOUT};
use crate::history::{Call, History, Op, Ret};
use crate::rng::Rng;
use crate::workload::{self, Shared, WatchGoal, OP_TIMEOUT};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Faults the schedule draws from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// kill -9 of the leader, restart on the same data directory.
    KillLeader,
    /// kill -9 of a follower, restart.
    KillFollower,
    /// SIGSTOP of a member (the leader half of the time), SIGCONT later.
    Pause,
    /// One member (the leader half of the time) cut from every other member, healed later.
    Partition,
    /// MemberAdd of a new member started with state=existing, then MemberRemove of an old one.
    MemberChurn,
}

impl Fault {
    /// Every fault that makes sense for `members` members.
    pub fn all_for(members: usize) -> Vec<Fault> {
        if members == 1 {
            vec![Fault::KillLeader, Fault::Pause]
        } else {
            vec![
                Fault::KillLeader,
                Fault::KillFollower,
                Fault::Pause,
                Fault::Partition,
                Fault::MemberChurn,
            ]
        }
    }
}

#[derive(Clone, Debug)]
pub struct RunConfig {
    pub target: Target,
    pub members: usize,
    pub seed: u64,
    /// Minimum load time; the run goes on until every fault kind was injected once.
    pub duration: Duration,
    pub clients: u32,
    pub watchers: u32,
    pub keys: usize,
    pub faults: Vec<Fault>,
    /// Where a failing run's history is saved (default: the system temp dir).
    pub artifacts: Option<PathBuf>,
    pub limits: Limits,
}

impl RunConfig {
    pub fn new(target: Target, members: usize, seed: u64) -> RunConfig {
        RunConfig {
            target,
            members,
            seed,
            duration: Duration::from_secs(15),
            clients: 6,
            watchers: 2,
            keys: 6,
            faults: Fault::all_for(members),
            artifacts: None,
            limits: Limits::default(),
        }
    }
}

/// The outcome of one run.
pub struct RunReport {
    pub seed: u64,
    pub history: History,
    pub check: CheckReport,
    /// Failed end-of-run checks (recovery, convergence, HashKV, final reads).
    pub end_failures: Vec<String>,
    pub ops: usize,
    pub acked: usize,
    pub unknown: usize,
    pub history_file: Option<PathBuf>,
    pub elapsed: Duration,
}

impl RunReport {
    pub fn passed(&self) -> bool {
        self.end_failures.is_empty() && self.check.verdict() == Verdict::Ok
    }

    pub fn summary(&self) -> String {
        let mut s = format!(
            "seed {}: {} in {:.1}s; {} ops ({} acknowledged, {} indeterminate), {} watch \
             segments, final revision {}, faults: {}\n  checker: {}",
            self.seed,
            if self.passed() { "PASS" } else { "FAIL" },
            self.elapsed.as_secs_f64(),
            self.ops,
            self.acked,
            self.unknown,
            self.history.watches.len(),
            self.history.final_rev,
            self.history.faults.len(),
            self.check.summary()
        );
        for f in &self.end_failures {
            s.push_str("\n  end-of-run: ");
            s.push_str(f);
        }
        if let Some(p) = &self.history_file {
            s.push_str(&format!("\n  history saved to {}", p.display()));
        }
        s
    }
}

const PREFIX: &str = "c/";
/// Bound on the end-of-run convergence and hash checks.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on the watchers' catching up after the load stopped.
const WATCH_DRAIN_TIMEOUT: Duration = Duration::from_secs(45);

/// Runs one seeded fault run end to end. Never panics on a failed check: look at the report.
pub async fn run(cfg: &RunConfig) -> RunReport {
    let started = Instant::now();
    let mut rng = Rng::new(cfg.seed);
    let token = format!("chaos-{}", cfg.seed);
    let mut cluster = Cluster::start(cfg.target.clone(), cfg.members, &token).await;
    let keys: Vec<String> = (0..cfg.keys).map(|i| format!("{PREFIX}k/{i}")).collect();
    let sh = Shared {
        rec: crate::history::Recorder::new(),
        endpoints: cluster.endpoints.clone(),
        stop: Arc::new(AtomicBool::new(false)),
        prefix: PREFIX.to_string(),
        keys: keys.clone(),
    };
    let mut faults_log: Vec<String> = Vec::new();
    let mut end_failures: Vec<String> = Vec::new();
    let goal = WatchGoal::default();

    // Watchers first (from revision 1, or from the current revision for odd ones once some load
    // has run), then the clients.
    let mut watchers = Vec::new();
    for w in 0..cfg.watchers {
        let (sh, goal) = (sh.clone(), goal.clone());
        let seed = cfg.seed;
        let start_rev = 1 + i64::from(w) * 5;
        watchers.push(tokio::spawn(async move {
            workload::watcher(w, seed, start_rev, sh, goal).await
        }));
    }
    let mut clients = Vec::new();
    for c in 0..cfg.clients {
        let sh = sh.clone();
        let seed = cfg.seed;
        clients.push(tokio::spawn(
            async move { workload::client(c, seed, sh).await },
        ));
    }

    // The fault schedule: a seeded permutation of the fault kinds, cycled until the load time
    // is over and each kind ran once.
    let mut kinds = cfg.faults.clone();
    for i in (1..kinds.len()).rev() {
        kinds.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let mut n = 0usize;
    let t0 = Instant::now();
    tokio::time::sleep(rng.millis(500, 1500)).await;
    while !kinds.is_empty() && (n < kinds.len() || t0.elapsed() < cfg.duration) {
        let fault = kinds[n % kinds.len()];
        n += 1;
        let at = t0.elapsed().as_secs_f64();
        match inject(&mut cluster, fault, &mut rng).await {
            Ok(what) => faults_log.push(format!("{at:.1}s {what}")),
            Err(e) => {
                end_failures.push(format!("{at:.1}s {fault:?}: {e}"));
                break;
            }
        }
        if let Err(e) = cluster.wait_healthy(HEALTHY_TIMEOUT).await {
            end_failures.push(format!("cluster did not recover after {fault:?}: {e}"));
            break;
        }
        tokio::time::sleep(rng.millis(300, 1200)).await;
    }

    // Stop the load; every client operation is bounded by OP_TIMEOUT.
    sh.stop.store(true, Ordering::Relaxed);
    for c in clients {
        if tokio::time::timeout(OP_TIMEOUT * 3, c).await.is_err() {
            end_failures.push("a client did not stop".into());
        }
    }
    if end_failures.is_empty() {
        if let Err(e) = cluster.wait_healthy(HEALTHY_TIMEOUT).await {
            end_failures.push(format!("cluster unhealthy at the end: {e}"));
        }
    }

    // The final read of everything, through the leader.
    let mut final_rev = 0;
    let leader = cluster.leader(Duration::from_secs(20)).await;
    if let Some(l) = leader {
        let ep = cluster.members[l].endpoint();
        for _ in 0..10 {
            let call = Call::Get {
                key: None,
                prefix: PREFIX.to_string(),
                serializable: false,
            };
            let invoke_ns = sh.rec.now_ns();
            let ret = match crate::cluster::connect(&ep, OP_TIMEOUT).await {
                None => None,
                Some(mut c) => {
                    match tokio::time::timeout(OP_TIMEOUT, workload::execute(&mut c, &call)).await {
                        Ok(Ok(r)) => Some(r),
                        _ => None,
                    }
                }
            };
            if let Some(ret) = ret {
                if let Ret::Get { rev, .. } = ret {
                    final_rev = rev;
                }
                sh.rec.record(Op {
                    client: FINAL_CLIENT,
                    endpoint: ep.clone(),
                    invoke_ns,
                    complete_ns: sh.rec.now_ns(),
                    call,
                    ret,
                });
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        if final_rev == 0 {
            end_failures.push("the final read failed 10 times".into());
        }
    } else {
        end_failures.push("no leader at the end".into());
    }

    // Watchers drain up to the final revision.
    let mut history = History {
        seed: cfg.seed,
        final_rev,
        ..History::default()
    };
    *goal.final_rev.write().expect("goal lock") = Some(final_rev.max(1));
    *goal.deadline.write().expect("goal lock") = Some(Instant::now() + WATCH_DRAIN_TIMEOUT);
    for w in watchers {
        match tokio::time::timeout(WATCH_DRAIN_TIMEOUT + OP_TIMEOUT * 2, w).await {
            Ok(Ok((segs, done))) => {
                if let Some(s) = segs.first() {
                    if done {
                        history.watchers_done.push(s.watcher);
                    } else {
                        end_failures.push(format!(
                            "watcher {} did not reach the final revision (last end: {})",
                            s.watcher,
                            segs.last().map(|s| s.end.as_str()).unwrap_or("")
                        ));
                    }
                }
                history.watches.extend(segs);
            }
            _ => end_failures.push("a watcher did not stop".into()),
        }
    }

    if final_rev > 0 {
        if let Some(l) = leader {
            match workload::full_history(
                &cluster.members[l].endpoint(),
                PREFIX,
                final_rev,
                CONVERGE_TIMEOUT,
            )
            .await
            {
                Ok(events) => history.full = events,
                Err(e) => end_failures.push(e),
            }
        }
        converge(&cluster, final_rev, &mut end_failures).await;
    }
    if history.full.is_empty() && final_rev > 1 {
        // Without the full history the watch checks cannot run.
        history.final_rev = 0;
    }

    history.ops = sh.rec.take();
    history.faults = faults_log;
    let check = checker::check(&history, &keys, cfg.limits);
    let ops = history.ops.len();
    let unknown = history
        .ops
        .iter()
        .filter(|o| matches!(o.ret, Ret::Unknown { .. }))
        .count();
    let acked = history
        .ops
        .iter()
        .filter(|o| !matches!(o.ret, Ret::Unknown { .. } | Ret::Fail { .. }))
        .count();
    let mut report = RunReport {
        seed: cfg.seed,
        history,
        check,
        end_failures,
        ops,
        acked,
        unknown,
        history_file: None,
        elapsed: started.elapsed(),
    };
    if !report.passed() {
        let dir = cfg.artifacts.clone().unwrap_or_else(std::env::temp_dir);
        let path = dir.join(format!(
            "ferrite-chaos-{}-{}m-seed{}.json",
            cfg.target.name(),
            cfg.members,
            cfg.seed
        ));
        if report.history.save(&path).is_ok() {
            report.history_file = Some(path);
        }
        report
            .end_failures
            .iter()
            .for_each(|f| eprintln!("end-of-run failure: {f}"));
        eprintln!("{}", cluster.log_tails(1500));
    }
    report
}

/// Every member reaches `final_rev` and has the same HashKV there.
async fn converge(cluster: &Cluster, final_rev: i64, out: &mut Vec<String>) {
    let deadline = Instant::now() + CONVERGE_TIMEOUT;
    let mut hashes: Vec<(String, u32)> = Vec::new();
    for i in cluster.live() {
        let m = &cluster.members[i];
        loop {
            let rev = cluster.local_revision(i).await;
            if rev == Some(final_rev) {
                match cluster.hash_kv(i, final_rev).await {
                    Ok(h) => {
                        hashes.push((m.name.clone(), h));
                        break;
                    }
                    Err(e) if Instant::now() >= deadline => {
                        out.push(format!("{}: HashKV({final_rev}) failed: {e}", m.name));
                        break;
                    }
                    Err(_) => {}
                }
            } else if rev.is_some_and(|r| r > final_rev) {
                out.push(format!(
                    "{} is at revision {rev:?} beyond the final {final_rev} after the load stopped",
                    m.name
                ));
                break;
            } else if Instant::now() >= deadline {
                out.push(format!(
                    "{} did not converge: at revision {rev:?}, the final is {final_rev}",
                    m.name
                ));
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    if hashes.windows(2).any(|w| w[0].1 != w[1].1) {
        out.push(format!(
            "HashKV({final_rev}) differs between members: {hashes:?}"
        ));
    }
}

/// Injects one fault and heals it; returns what it did.
async fn inject(c: &mut Cluster, fault: Fault, rng: &mut Rng) -> Result<String, String> {
    let leader = c
        .leader(Duration::from_secs(20))
        .await
        .ok_or("no leader before the fault")?;
    let live = c.live();
    let followers: Vec<usize> = live.iter().copied().filter(|&i| i != leader).collect();
    let pick_any = |rng: &mut Rng| {
        if followers.is_empty() || rng.below(2) == 0 {
            leader
        } else {
            followers[rng.below(followers.len() as u64) as usize]
        }
    };
    match fault {
        Fault::KillLeader | Fault::KillFollower => {
            let victim = if fault == Fault::KillLeader || followers.is_empty() {
                leader
            } else {
                followers[rng.below(followers.len() as u64) as usize]
            };
            let down = rng.millis(200, 2000);
            c.kill(victim);
            tokio::time::sleep(down).await;
            c.restart(victim);
            Ok(format!(
                "kill -9 {} ({}) for {down:?}, restarted",
                c.members[victim].name,
                if victim == leader {
                    "leader"
                } else {
                    "follower"
                }
            ))
        }
        Fault::Pause => {
            let victim = pick_any(rng);
            let hold = rng.millis(500, 3000);
            c.pause(victim);
            tokio::time::sleep(hold).await;
            c.resume(victim);
            Ok(format!(
                "SIGSTOP {} ({}) for {hold:?}",
                c.members[victim].name,
                if victim == leader {
                    "leader"
                } else {
                    "follower"
                }
            ))
        }
        Fault::Partition => {
            let victim = pick_any(rng);
            let hold = rng.millis(1000, 4000);
            for &o in &live {
                if o != victim {
                    c.net.cut(victim, o);
                }
            }
            tokio::time::sleep(hold).await;
            let cut = c.net.cut_links();
            c.net.heal_all();
            let (known, unknown) = c.net.connections();
            Ok(format!(
                "partition isolating {} ({}) for {hold:?}: cut {cut:?} (peer connections so far: \
                 {known} identified, {unknown} not)",
                c.members[victim].name,
                if victim == leader {
                    "leader"
                } else {
                    "follower"
                }
            ))
        }
        Fault::MemberChurn => {
            let added = c.add_member(Duration::from_secs(30)).await?;
            c.wait_healthy(HEALTHY_TIMEOUT).await?;
            let old: Vec<usize> = live.clone();
            let victim = old[rng.below(old.len() as u64) as usize];
            // etcd refuses a removal until the new member has been connected for a while.
            c.remove_member(victim, Duration::from_secs(30)).await?;
            Ok(format!(
                "member add {} then member remove {} ({})",
                c.members[added].name,
                c.members[victim].name,
                if victim == leader {
                    "leader"
                } else {
                    "follower"
                }
            ))
        }
    }
}
