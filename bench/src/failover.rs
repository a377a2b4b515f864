//! Leader failover time: a fresh N-member cluster per trial (etcd's default heartbeat 100 ms and
//! election timeout 1000 ms for both servers), kill -9 of the leader, then the time from the kill
//! to the first write acknowledged by a surviving member.
//!
//! Measurement: every `ATTEMPT_EVERY` a new put is sent to each survivor (each with its own
//! `ATTEMPT_TIMEOUT`); the earliest acknowledgement ends the trial. Overlapping attempts make the
//! resolution `ATTEMPT_EVERY` whether a server fails a leaderless proposal fast (ferrite queues
//! it until a leader is known) or lets it hang (etcd drops it inside Raft and the client waits).
//! Bounded: every client call has a timeout and a trial gives up after `TRIAL_TIMEOUT` (counted as
//! a failed trial, never as a time).

use crate::cluster::{Cluster, Kind, Spec};
use crate::workload::connect;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// A new put is sent to each survivor this often until one is acknowledged.
pub const ATTEMPT_EVERY: Duration = Duration::from_millis(10);
/// Each put attempt's own bound.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);
/// A trial without an acknowledged write this long after the kill fails.
pub const TRIAL_TIMEOUT: Duration = Duration::from_secs(20);
/// Bound on a Status call and on finding an agreed leader before the kill.
const STATUS_TIMEOUT: Duration = Duration::from_secs(2);
const LEADER_WAIT: Duration = Duration::from_secs(20);
/// The cluster runs this long (with a write every few ms) before the kill, so the leader is
/// settled and every connection is warm.
const SETTLE: Duration = Duration::from_millis(1500);

#[derive(Clone, Debug)]
pub struct FailoverConfig {
    pub kind: Kind,
    pub binary: PathBuf,
    pub nodes: usize,
    pub trials: usize,
    pub work_dir: PathBuf,
    pub pidfile: Option<PathBuf>,
}

/// One trial: the time from kill -9 to the first acknowledged write, or why it failed.
pub type Trial = Result<Duration, String>;

/// Index of the member every member agrees leads (bounded by `LEADER_WAIT`).
async fn agreed_leader(clients: &[etcd_client::Client]) -> Result<usize, String> {
    let deadline = Instant::now() + LEADER_WAIT;
    loop {
        let mut ids = Vec::new();
        let mut leaders = Vec::new();
        for c in clients {
            let mut m = c.maintenance_client();
            match tokio::time::timeout(STATUS_TIMEOUT, m.status()).await {
                Ok(Ok(s)) => {
                    ids.push(s.header().map_or(0, |h| h.member_id()));
                    leaders.push(s.leader());
                }
                _ => break,
            }
        }
        if leaders.len() == clients.len()
            && leaders[0] != 0
            && leaders.iter().all(|l| *l == leaders[0])
        {
            if let Some(i) = ids.iter().position(|id| *id == leaders[0]) {
                return Ok(i);
            }
        }
        if Instant::now() >= deadline {
            return Err(format!("no agreed leader after {LEADER_WAIT:?}"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn trial(cfg: &FailoverConfig, n: usize) -> Trial {
    let spec = Spec {
        kind: cfg.kind,
        binary: cfg.binary.clone(),
        nodes: cfg.nodes,
        work_dir: cfg.work_dir.clone(),
        pidfile: cfg.pidfile.clone(),
    };
    let mut cluster = Cluster::start(&spec).await?;
    let mut clients = Vec::new();
    for ep in &cluster.endpoints {
        let c = tokio::time::timeout(Duration::from_secs(10), connect(std::slice::from_ref(ep)))
            .await
            .map_err(|_| format!("connecting to {ep}: timed out"))??;
        clients.push(c);
    }
    let leader = agreed_leader(&clients).await?;
    // Warm up: writes through every member until the cluster has settled.
    let settle_until = Instant::now() + SETTLE;
    let mut k = 0u64;
    while Instant::now() < settle_until {
        for c in &clients {
            let mut kv = c.kv_client();
            k += 1;
            let r = tokio::time::timeout(
                ATTEMPT_TIMEOUT,
                kv.put(format!("failover/warm/{}", k % 64), "x", None),
            )
            .await;
            if !matches!(r, Ok(Ok(_))) {
                return Err(format!("warm-up put failed: {r:?}"));
            }
        }
    }
    if agreed_leader(&clients).await? != leader {
        return Err("the leader changed during the warm-up".into());
    }
    let survivors: Vec<etcd_client::Client> = clients
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != leader)
        .map(|(_, c)| c.clone())
        .collect();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    let killed_at = Instant::now();
    cluster.kill(leader);
    let mut attempts = Vec::new();
    let mut a = 0u64;
    let result = loop {
        for c in &survivors {
            let mut kv = c.kv_client();
            let tx = tx.clone();
            a += 1;
            let key = format!("failover/{n}/{a}");
            attempts.push(tokio::spawn(async move {
                if let Ok(Ok(_)) =
                    tokio::time::timeout(ATTEMPT_TIMEOUT, kv.put(key, "y", None)).await
                {
                    let _ = tx.send(Instant::now());
                }
            }));
        }
        match tokio::time::timeout(ATTEMPT_EVERY, rx.recv()).await {
            Ok(Some(at)) => break Ok(at.duration_since(killed_at)),
            Ok(None) => unreachable!("the sender is held here"),
            Err(_) => {}
        }
        if killed_at.elapsed() >= TRIAL_TIMEOUT {
            break Err(format!(
                "no write acknowledged {TRIAL_TIMEOUT:?} after the kill"
            ));
        }
    };
    for t in attempts {
        t.abort();
    }
    cluster.stop();
    result
}

/// Runs `cfg.trials` trials, each on a fresh cluster.
pub async fn run(cfg: &FailoverConfig) -> Vec<Trial> {
    let mut out = Vec::new();
    for n in 0..cfg.trials {
        let t = trial(cfg, n).await;
        match &t {
            Ok(d) => eprintln!(
                "{} trial {}/{}: {:.0} ms",
                cfg.kind.name(),
                n + 1,
                cfg.trials,
                d.as_secs_f64() * 1000.0
            ),
            Err(e) => eprintln!(
                "{} trial {}/{}: failed: {e}",
                cfg.kind.name(),
                n + 1,
                cfg.trials
            ),
        }
        out.push(t);
    }
    out
}

/// (median, min, max) in milliseconds of the successful trials.
pub fn summary(trials: &[Trial]) -> Option<(f64, f64, f64)> {
    let mut ms: Vec<f64> = trials
        .iter()
        .filter_map(|t| t.as_ref().ok())
        .map(|d| d.as_secs_f64() * 1000.0)
        .collect();
    if ms.is_empty() {
        return None;
    }
    ms.sort_by(f64::total_cmp);
    let mid = ms.len() / 2;
    let median = if ms.len() % 2 == 1 {
        ms[mid]
    } else {
        (ms[mid - 1] + ms[mid]) / 2.0
    };
    Some((median, ms[0], ms[ms.len() - 1]))
}
