//! The client workload: concurrent etcd-client clients spread over every member, each doing a
//! seeded mix of puts, deletes, compare-and-set txns, linearizable and serializable reads (of one
//! key and of the whole prefix) and lease operations, recording every operation; and watchers
//! that follow the whole prefix from a start revision, reconnecting (to any member) from the last
//! revision they saw when a stream breaks.

use crate::history::{Call, Cond, Event, EventKind, Kv, Op, Recorder, Ret, WatchSegment};
use crate::rng::Rng;
use etcd_client::{
    Client, Compare, CompareOp, EventType, GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse,
    WatchOptions,
};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// Bound on one client operation; past it the outcome is unknown (writes) or failed (reads).
pub const OP_TIMEOUT: Duration = Duration::from_secs(5);
/// Lease TTL: far longer than a run, so no lease expires by itself during a run.
pub const LEASE_TTL_S: i64 = 600;
/// Pause after a failed operation before the client reconnects.
const RETRY_DELAY: Duration = Duration::from_millis(50);

/// Shared by the workload's tasks.
#[derive(Clone)]
pub struct Shared {
    pub rec: Recorder,
    pub endpoints: Arc<RwLock<Vec<String>>>,
    pub stop: Arc<AtomicBool>,
    /// Root prefix of every key the run touches.
    pub prefix: String,
    /// The register keys.
    pub keys: Vec<String>,
}

impl Shared {
    fn pick_endpoint(&self, rng: &mut Rng) -> Option<String> {
        let eps = self.endpoints.read().expect("endpoints lock");
        (!eps.is_empty()).then(|| eps[rng.below(eps.len() as u64) as usize].clone())
    }
}

pub fn to_kv(kv: &etcd_client::KeyValue) -> Kv {
    Kv {
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        value: String::from_utf8_lossy(kv.value()).into_owned(),
        mod_rev: kv.mod_revision(),
        create_rev: kv.create_revision(),
        version: kv.version(),
        lease: kv.lease(),
    }
}

fn header_rev(h: Option<&etcd_client::ResponseHeader>) -> i64 {
    h.map(|h| h.revision()).unwrap_or(0)
}

/// Executes one call; Err is the client error text.
pub async fn execute(c: &mut Client, call: &Call) -> Result<Ret, String> {
    let e = |e: etcd_client::Error| e.to_string();
    Ok(match call {
        Call::Put { key, value, lease } => {
            let opts = (*lease != 0).then(|| PutOptions::new().with_lease(*lease));
            let r = c.put(key.as_str(), value.as_str(), opts).await.map_err(e)?;
            Ret::Put {
                rev: header_rev(r.header()),
            }
        }
        Call::Delete { key } => {
            let r = c.delete(key.as_str(), None).await.map_err(e)?;
            Ret::Delete {
                rev: header_rev(r.header()),
                deleted: r.deleted(),
            }
        }
        Call::Cas { key, cond, value } => {
            let cmp = match cond {
                Cond::ModRev(m) => Compare::mod_revision(key.as_str(), CompareOp::Equal, *m),
                Cond::Value(v) => Compare::value(key.as_str(), CompareOp::Equal, v.as_str()),
            };
            let txn = Txn::new()
                .when([cmp])
                .and_then([TxnOp::put(key.as_str(), value.as_str(), None)])
                .or_else([TxnOp::get(key.as_str(), None)]);
            let r = c.txn(txn).await.map_err(e)?;
            let current = if r.succeeded() {
                None
            } else {
                r.op_responses().into_iter().find_map(|o| match o {
                    TxnOpResponse::Get(g) => g.kvs().first().map(to_kv),
                    _ => None,
                })
            };
            Ret::Cas {
                succeeded: r.succeeded(),
                rev: header_rev(r.header()),
                current,
            }
        }
        Call::Get {
            key,
            prefix,
            serializable,
        } => {
            let mut opts = GetOptions::new();
            if key.is_none() {
                opts = opts.with_prefix();
            }
            if *serializable {
                opts = opts.with_serializable();
            }
            let k = key.clone().unwrap_or_else(|| prefix.clone());
            let r = c.get(k, Some(opts)).await.map_err(e)?;
            Ret::Get {
                rev: header_rev(r.header()),
                kvs: r.kvs().iter().map(to_kv).collect(),
            }
        }
        Call::LeaseGrant { ttl_s } => {
            let r = c.lease_grant(*ttl_s, None).await.map_err(e)?;
            Ret::LeaseGrant {
                id: r.id(),
                rev: header_rev(r.header()),
            }
        }
        Call::LeaseKeepAlive { id } => {
            let (mut keeper, mut stream) = c.lease_keep_alive(*id).await.map_err(e)?;
            keeper.keep_alive().await.map_err(e)?;
            match stream.message().await.map_err(e)? {
                Some(r) if r.ttl() > 0 => Ret::LeaseKeepAlive { ttl_s: r.ttl() },
                Some(_) => return Err("lease not found (ttl 0)".into()),
                None => return Err("keep-alive stream ended".into()),
            }
        }
        Call::LeaseRevoke { id } => {
            let r = c.lease_revoke(*id).await.map_err(e)?;
            Ret::LeaseRevoke {
                rev: header_rev(r.header()),
            }
        }
    })
}

fn is_read(call: &Call) -> bool {
    matches!(call, Call::Get { .. })
}

/// One client: runs until `stop`, recording every operation.
pub async fn client(id: u32, seed: u64, sh: Shared) {
    let mut rng = Rng::new(seed ^ (u64::from(id) + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut conn: Option<(String, Client)> = None;
    let mut seq = 0u64;
    let mut seen: HashMap<String, (String, i64)> = HashMap::new();
    let mut lease: Option<i64> = None;
    let mut lease_keys = 0u32;
    // After a failure the client only reads until one read succeeds, so a member that is down
    // does not turn every write into an indeterminate one (each of those widens the search).
    let mut recovering = false;
    while !sh.stop.load(Ordering::Relaxed) {
        if conn.is_none() {
            let Some(ep) = sh.pick_endpoint(&mut rng) else {
                tokio::time::sleep(RETRY_DELAY).await;
                continue;
            };
            match crate::cluster::connect(&ep, OP_TIMEOUT).await {
                Some(c) => conn = Some((ep, c)),
                None => {
                    tokio::time::sleep(RETRY_DELAY).await;
                    continue;
                }
            }
        }
        seq += 1;
        let value = format!("c{id}-{seq}");
        let key = sh.keys[rng.below(sh.keys.len() as u64) as usize].clone();
        let dice = if recovering { 52 } else { rng.below(100) };
        let call = match dice {
            0..25 => Call::Put {
                key,
                value,
                lease: 0,
            },
            25..45 => {
                let last = seen.get(&key);
                let cond = if rng.below(10) < 7 {
                    Cond::ModRev(last.map_or(0, |l| l.1))
                } else {
                    Cond::Value(last.map_or_else(|| "none".to_string(), |l| l.0.clone()))
                };
                Call::Cas { key, cond, value }
            }
            45..52 => Call::Delete { key },
            52..72 => Call::Get {
                key: Some(key.clone()),
                prefix: key,
                serializable: false,
            },
            72..80 => Call::Get {
                key: Some(key.clone()),
                prefix: key,
                serializable: true,
            },
            80..88 => Call::Get {
                key: None,
                prefix: sh.prefix.clone(),
                serializable: false,
            },
            _ => match lease {
                None => Call::LeaseGrant { ttl_s: LEASE_TTL_S },
                Some(l) => match rng.below(4) {
                    0 | 1 => {
                        lease_keys += 1;
                        Call::Put {
                            key: format!("{}l/{id}/{lease_keys}", sh.prefix),
                            value,
                            lease: l,
                        }
                    }
                    2 => Call::LeaseKeepAlive { id: l },
                    _ => {
                        lease = None;
                        Call::LeaseRevoke { id: l }
                    }
                },
            },
        };
        let (ep, c) = conn.as_mut().expect("connected");
        let endpoint = ep.clone();
        let invoke_ns = sh.rec.now_ns();
        let res = tokio::time::timeout(OP_TIMEOUT, execute(c, &call)).await;
        let complete_ns = sh.rec.now_ns();
        let ret = match res {
            Ok(Ok(r)) => r,
            Ok(Err(error)) => {
                if is_read(&call)
                    || (matches!(call, Call::LeaseKeepAlive { .. })
                        && error.contains("lease not found"))
                {
                    Ret::Fail { error }
                } else {
                    Ret::Unknown { error }
                }
            }
            Err(_) => {
                let error = "client timeout".to_string();
                if is_read(&call) {
                    Ret::Fail { error }
                } else {
                    Ret::Unknown { error }
                }
            }
        };
        match (&call, &ret) {
            (Call::Put { key, value, .. }, Ret::Put { rev })
            | (
                Call::Cas { key, value, .. },
                Ret::Cas {
                    succeeded: true,
                    rev,
                    ..
                },
            ) => {
                seen.insert(key.clone(), (value.clone(), *rev));
            }
            (Call::Get { .. }, Ret::Get { kvs, .. }) => {
                for kv in kvs {
                    seen.insert(kv.key.clone(), (kv.value.clone(), kv.mod_rev));
                }
            }
            (Call::Cas { key, .. }, Ret::Cas { current, .. }) => match current {
                Some(kv) => {
                    seen.insert(key.clone(), (kv.value.clone(), kv.mod_rev));
                }
                None => {
                    seen.remove(key);
                }
            },
            (Call::Delete { key }, Ret::Delete { .. }) => {
                seen.remove(key);
            }
            (Call::LeaseGrant { .. }, Ret::LeaseGrant { id, .. }) => lease = Some(*id),
            _ => {}
        }
        let failed = matches!(ret, Ret::Fail { .. } | Ret::Unknown { .. });
        sh.rec.record(Op {
            client: id,
            endpoint,
            invoke_ns,
            complete_ns,
            call,
            ret,
        });
        recovering = failed;
        if failed {
            conn = None;
            tokio::time::sleep(RETRY_DELAY).await;
        }
    }
}

/// When the watchers may stop: the final revision (once known) and a hard deadline.
#[derive(Clone, Default)]
pub struct WatchGoal {
    pub final_rev: Arc<RwLock<Option<i64>>>,
    pub deadline: Arc<RwLock<Option<Instant>>>,
}

/// Watch stall after which a watcher, once the goal is known, moves to another member.
const WATCH_STALL: Duration = Duration::from_secs(5);

/// One watcher of the whole prefix from `start_rev`. Returns its segments (one per stream) and
/// whether it reached the final revision.
pub async fn watcher(
    w: u32,
    seed: u64,
    start_rev: i64,
    sh: Shared,
    goal: WatchGoal,
) -> (Vec<WatchSegment>, bool) {
    let mut rng = Rng::new(seed ^ 0xA5A5_0000 ^ u64::from(w));
    let mut next = start_rev;
    let mut segs = Vec::new();
    loop {
        let target = *goal.final_rev.read().expect("goal lock");
        if target.is_some_and(|t| next > t) {
            if let Some(s) = segs.last_mut() {
                let s: &mut WatchSegment = s;
                s.end = "done".into();
            }
            return (segs, true);
        }
        if goal
            .deadline
            .read()
            .expect("goal lock")
            .is_some_and(|d| Instant::now() > d)
        {
            return (segs, false);
        }
        let Some(ep) = sh.pick_endpoint(&mut rng) else {
            tokio::time::sleep(RETRY_DELAY).await;
            continue;
        };
        let mut seg = WatchSegment {
            watcher: w,
            endpoint: ep.clone(),
            start_rev: next,
            events: Vec::new(),
            end: String::new(),
        };
        let stream = match crate::cluster::connect(&ep, OP_TIMEOUT).await {
            None => Err("connect failed".to_string()),
            Some(mut c) => {
                let opts = WatchOptions::new().with_prefix().with_start_revision(next);
                match tokio::time::timeout(OP_TIMEOUT, c.watch(sh.prefix.as_str(), Some(opts)))
                    .await
                {
                    Ok(Ok(s)) => Ok((c, s)),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err("watch create timeout".into()),
                }
            }
        };
        match stream {
            Err(e) => seg.end = e,
            Ok((_client, mut stream)) => {
                let mut last_progress = Instant::now();
                seg.end = loop {
                    let target = *goal.final_rev.read().expect("goal lock");
                    if target.is_some_and(|t| next > t) {
                        break "done".into();
                    }
                    if target.is_some() && last_progress.elapsed() > WATCH_STALL {
                        break "stalled after the goal was set".into();
                    }
                    if goal
                        .deadline
                        .read()
                        .expect("goal lock")
                        .is_some_and(|d| Instant::now() > d)
                    {
                        break "deadline".into();
                    }
                    match tokio::time::timeout(Duration::from_millis(500), stream.message()).await {
                        Err(_) => continue,
                        Ok(Err(e)) => break e.to_string(),
                        Ok(Ok(None)) => break "stream ended".into(),
                        Ok(Ok(Some(resp))) => {
                            if resp.canceled() {
                                break format!("canceled: {}", resp.cancel_reason());
                            }
                            for ev in resp.events() {
                                let Some(kv) = ev.kv() else { continue };
                                let kind = match ev.event_type() {
                                    EventType::Put => EventKind::Put,
                                    EventType::Delete => EventKind::Delete,
                                };
                                seg.events.push(Event {
                                    rev: kv.mod_revision(),
                                    key: String::from_utf8_lossy(kv.key()).into_owned(),
                                    kind,
                                    value: String::from_utf8_lossy(kv.value()).into_owned(),
                                });
                                next = kv.mod_revision() + 1;
                                last_progress = Instant::now();
                            }
                        }
                    }
                };
            }
        }
        let done = seg.end == "done";
        segs.push(seg);
        if done {
            return (segs, true);
        }
        tokio::time::sleep(RETRY_DELAY).await;
    }
}

/// Every event under `prefix` from revision 1 through `final_rev`, read with one watch.
pub async fn full_history(
    endpoint: &str,
    prefix: &str,
    final_rev: i64,
    limit: Duration,
) -> Result<Vec<Event>, String> {
    if final_rev <= 1 {
        return Ok(Vec::new());
    }
    let deadline = Instant::now() + limit;
    let mut last_err = String::new();
    while Instant::now() < deadline {
        let Some(mut c) = crate::cluster::connect(endpoint, OP_TIMEOUT).await else {
            last_err = "connect failed".into();
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let opts = WatchOptions::new().with_prefix().with_start_revision(1);
        let mut stream = match tokio::time::timeout(OP_TIMEOUT, c.watch(prefix, Some(opts))).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                last_err = e.to_string();
                continue;
            }
            Err(_) => {
                last_err = "watch create timeout".into();
                continue;
            }
        };
        let mut events = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, stream.message()).await {
                Ok(Ok(Some(resp))) => {
                    for ev in resp.events() {
                        let Some(kv) = ev.kv() else { continue };
                        if kv.mod_revision() > final_rev {
                            return Ok(events);
                        }
                        events.push(Event {
                            rev: kv.mod_revision(),
                            key: String::from_utf8_lossy(kv.key()).into_owned(),
                            kind: match ev.event_type() {
                                EventType::Put => EventKind::Put,
                                EventType::Delete => EventKind::Delete,
                            },
                            value: String::from_utf8_lossy(kv.value()).into_owned(),
                        });
                    }
                    if events.last().is_some_and(|e: &Event| e.rev >= final_rev) {
                        return Ok(events);
                    }
                }
                Ok(Ok(None)) => {
                    last_err = "stream ended".into();
                    break;
                }
                Ok(Err(e)) => {
                    last_err = e.to_string();
                    break;
                }
                Err(_) => {
                    return Err(format!(
                        "full history stopped at revision {:?} of {final_rev}",
                        events.last().map(|e: &Event| e.rev)
                    ))
                }
            }
        }
    }
    Err(format!("full history not read: {last_err}"))
}
