//! The Raft core (core 0): owns the `RawNode`, the `GroupWal` and the MVCC `Writer`.
//!
//! One task runs the loop:
//! 1. take every message waiting on the channel from the cores: write proposals are packed into
//!    one `RaftBatch` entry per loop turn (up to `PROPOSAL_BATCH_BYTES_MAX`); ReadIndex requests
//!    share one read context per turn;
//! 2. when Raft has a `Ready` and none is in flight: queue its entries and hard state on the
//!    WAL (the append is queued at once and synced by the WAL's I/O thread), apply the committed
//!    entries that are already durable *while that sync is in flight*, and keep taking
//!    proposals (they go into the next `Ready`);
//! 3. when the sync completes: send messages, apply the rest, `advance()`.
//!
//! Applying a batch of committed entries is one MVCC commit (`durable = false`) carrying
//! `applied_index` in the metadata; then waiters are answered and events go to the watch hub.
//! Every `snapshot_count` applied entries the store is committed durably, a snapshot marker is
//! logged, WAL segments below it are released and Raft's in-memory log is compacted.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use ferrite_btree::{Event, Writer};
use ferrite_raft::{
    ConfState, Entry, EntryKind, HardState, PersistedState, RawNode, Ready, Role, Snapshot,
    SnapshotMeta,
};
use ferrite_wal::{GroupWal, WalError, WalRecord};
use futures_channel::{mpsc, oneshot};
use futures_util::StreamExt;
use prost::Message as _;

use crate::apply::{self, ApplyCtx};
use crate::errors::EtcdError;
use crate::internal::{InternalRequest, Op, RaftBatch};
use crate::lessor::LEASES_META_KEY;
use crate::state::{ApplyReply, CoreMsg, Shared};
use crate::transport::Transport;
use crate::watch_hub::HubBatch;

/// Metadata key of the last applied Raft index (u64 LE).
pub const APPLIED_INDEX_META_KEY: &[u8] = b"ferrite/applied_index";
/// Metadata key of the applied term (u64 LE), for the snapshot marker.
pub const APPLIED_TERM_META_KEY: &[u8] = b"ferrite/applied_term";
/// Metadata key of the active alarms.
pub const ALARMS_META_KEY: &[u8] = b"ferrite/alarms";
/// Largest payload of one proposal batch entry.
pub const PROPOSAL_BATCH_BYTES_MAX: usize = 2 * 1024 * 1024;
/// Requests per proposal batch entry.
pub const PROPOSAL_BATCH_REQUESTS_MAX: usize = 4096;
/// Leases revoked per expiry check.
pub const LEASE_EXPIRE_PER_TICK_MAX: usize = 500;
/// A lease whose revoke was proposed this long ago without effect is proposed again.
pub const LEASE_REVOKE_RETRY: Duration = Duration::from_secs(3);

/// How often revision-mode auto-compaction checks (etcd 3.4: 5 minutes).
pub const AUTO_COMPACTION_REVISION_CHECK: Duration = Duration::from_secs(300);

/// First byte of a WAL entry's data: the Raft entry kind (the rest is the entry's data).
pub const WAL_ENTRY_KIND_NORMAL: u8 = 0;
pub const WAL_ENTRY_KIND_CONF_CHANGE: u8 = 1;

pub struct CoreOptions {
    pub tick: Duration,
    /// `--auto-compaction-mode` / `--auto-compaction-retention`.
    pub auto_compaction: crate::config::AutoCompaction,
    pub election_ticks: u32,
    pub snapshot_count: u64,
    pub pre_vote: bool,
}

pub fn wal_record_of(e: &Entry) -> WalRecord {
    let mut data = Vec::with_capacity(e.data.len() + 1);
    data.push(match e.kind {
        EntryKind::Normal => WAL_ENTRY_KIND_NORMAL,
        EntryKind::ConfChange => WAL_ENTRY_KIND_CONF_CHANGE,
    });
    data.extend_from_slice(&e.data);
    WalRecord::Entry {
        index: e.index,
        term: e.term,
        data,
    }
}

pub fn entry_of_wal(e: ferrite_wal::Entry) -> Result<Entry, String> {
    let (kind, data) = match e.data.split_first() {
        Some((&WAL_ENTRY_KIND_NORMAL, rest)) => (EntryKind::Normal, rest.to_vec()),
        Some((&WAL_ENTRY_KIND_CONF_CHANGE, rest)) => (EntryKind::ConfChange, rest.to_vec()),
        Some((k, _)) => return Err(format!("WAL entry {} has unknown kind byte {k}", e.index)),
        None => return Err(format!("WAL entry {} has no kind byte", e.index)),
    };
    Ok(Entry {
        index: e.index,
        term: e.term,
        kind,
        data,
    })
}

fn hs_record(hs: &HardState) -> WalRecord {
    WalRecord::HardState {
        term: hs.term,
        vote: hs.vote,
        commit: hs.commit,
    }
}

/// Opens the WAL, bootstraps or recovers Raft, and returns the core ready to run.
pub async fn start(
    shared: Arc<Shared>,
    wal_dir: &std::path::Path,
    opts: CoreOptions,
    transport: Box<dyn Transport>,
) -> Result<RaftCore, String> {
    let (wal, rec) = GroupWal::open(wal_dir, ferrite_wal::WalOptions::default())
        .await
        .map_err(|e| format!("opening WAL in {}: {e}", wal_dir.display()))?;
    let view = shared.store.read();
    let meta_u64 = |k: &[u8]| -> Result<u64, String> {
        match view.try_get_meta(k).map_err(|e| e.to_string())? {
            None => Ok(0),
            Some(b) => Ok(u64::from_le_bytes(b.as_slice().try_into().map_err(
                |_| format!("metadata {:?} is not 8 bytes", String::from_utf8_lossy(k)),
            )?)),
        }
    };
    let applied = meta_u64(APPLIED_INDEX_META_KEY)?;
    let id = shared.member_id;
    let fresh = rec.hard_state.is_none() && rec.entries.is_empty() && rec.snapshot.is_none();
    let persisted = if fresh {
        if applied != 0 {
            return Err(format!(
                "the WAL in {} is empty but the store has applied index {applied}: the WAL was lost",
                wal_dir.display()
            ));
        }
        let st = PersistedState::bootstrap(&[id]);
        let mut recs: Vec<WalRecord> = st.entries.iter().map(wal_record_of).collect();
        recs.push(hs_record(&st.hard_state));
        wal.append(recs)
            .await
            .map_err(|e| format!("writing the bootstrap entries: {e}"))?;
        st
    } else {
        let snapshot = match rec.snapshot {
            Some((index, term)) => Snapshot {
                meta: SnapshotMeta {
                    index,
                    term,
                    conf_state: ConfState::with_voters(&[id]),
                },
                data: Vec::new(),
            },
            None => Snapshot::default(),
        };
        if applied < snapshot.meta.index {
            return Err(format!(
                "store applied index {applied} is below the WAL snapshot marker {}",
                snapshot.meta.index
            ));
        }
        let hs = rec.hard_state.unwrap_or_default();
        let mut entries = Vec::with_capacity(rec.entries.len());
        for e in rec.entries {
            entries.push(entry_of_wal(e)?);
        }
        PersistedState {
            hard_state: HardState {
                term: hs.term,
                vote: hs.vote,
                commit: hs.commit,
            },
            snapshot,
            entries,
        }
    };
    let last_index = persisted
        .entries
        .last()
        .map_or(persisted.snapshot.meta.index, |e| e.index);
    if applied > last_index.max(persisted.hard_state.commit) {
        return Err(format!(
            "store applied index {applied} is past the WAL's last index {last_index}"
        ));
    }
    let mut cfg = ferrite_raft::Config::new(id);
    cfg.election_ticks = opts.election_ticks.max(2);
    cfg.heartbeat_ticks = 1;
    cfg.pre_vote = opts.pre_vote;
    cfg.applied = applied.max(persisted.snapshot.meta.index);
    cfg.seed = id;
    let commit_at_start = persisted.hard_state.commit;
    let mut node = RawNode::new(cfg, persisted).map_err(|e| format!("starting raft: {e}"))?;
    if node.conf_state().voters == [id] {
        // A single voter need not wait an election timeout.
        node.campaign_now();
    }
    shared.raft_index.store(commit_at_start, Ordering::Release);
    shared.applied_index.store(applied, Ordering::Release);
    Ok(RaftCore {
        shared: shared.clone(),
        writer: shared.store.writer(),
        node,
        wal: Rc::new(wal),
        transport,
        opts,
        waiters: HashMap::new(),
        next_waiter: boot_id_base(),
        queued: VecDeque::new(),
        read_ctx_next: 1,
        read_waiting: HashMap::new(),
        read_parked: BTreeMap::new(),
        applied,
        compaction_samples: VecDeque::new(),
        next_compaction_check: Instant::now(),
        last_snapshot_index: last_index.min(applied),
        durable_index: last_index,
        unsynced_hard_state: None,
    })
}

/// Waiter ids start at a per-boot base (milliseconds since the epoch, shifted) so that an id
/// from before a restart, replayed from the WAL, never matches a new waiter.
fn boot_id_base() -> u64 {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_millis() as u64);
    (ms << 20) | 1
}

pub struct RaftCore {
    shared: Arc<Shared>,
    writer: Writer,
    node: RawNode,
    wal: Rc<GroupWal>,
    transport: Box<dyn Transport>,
    opts: CoreOptions,
    waiters: HashMap<u64, ApplyReply>,
    next_waiter: u64,
    /// Proposals not yet handed to Raft (no leader yet).
    queued: VecDeque<InternalRequest>,
    read_ctx_next: u64,
    /// ReadIndex context -> callers waiting for its read state.
    read_waiting: HashMap<u64, Vec<oneshot::Sender<Result<(), EtcdError>>>>,
    /// Read index -> callers waiting for apply to reach it.
    read_parked: BTreeMap<u64, Vec<oneshot::Sender<Result<(), EtcdError>>>>,
    applied: u64,
    /// (time, revision) samples for periodic auto-compaction.
    compaction_samples: VecDeque<(Instant, i64)>,
    next_compaction_check: Instant,
    last_snapshot_index: u64,
    /// Highest log index known durable in the WAL.
    durable_index: u64,
    /// The latest hard state not yet logged (it only moved the commit index).
    unsynced_hard_state: Option<HardState>,
}

type AppendFuture = Pin<Box<dyn Future<Output = Result<(), WalError>>>>;

enum Wake {
    Msg(Option<CoreMsg>),
    Tick,
    Synced(Result<(), WalError>),
}

impl RaftCore {
    pub async fn run(mut self, mut rx: mpsc::UnboundedReceiver<CoreMsg>) {
        let mut ticker = glommio::timer::Timer::new(self.opts.tick);
        let mut ticker: Pin<&mut glommio::timer::Timer> = Pin::new(&mut ticker);
        let mut in_flight: Option<(Ready, AppendFuture)> = None;
        let mut closed = false;
        self.shared.ready.store(true, Ordering::Release);
        loop {
            // Take a Ready if possible, start its sync and apply what is already durable.
            if in_flight.is_none() && self.node.has_ready() {
                let mut rd = self.node.ready();
                self.on_soft_state(&rd);
                let mut recs: Vec<WalRecord> = rd.entries.iter().map(wal_record_of).collect();
                // A hard state that only moves the commit index needs no sync of its own (as
                // etcd's MustSync): it rides with the next synced append. Waiting for its own
                // fdatasync cost every lone put a second sync before the next proposal.
                if let Some(hs) = rd.hard_state.take() {
                    self.unsynced_hard_state = Some(hs);
                }
                if rd.must_sync || !recs.is_empty() {
                    if let Some(hs) = self.unsynced_hard_state.take() {
                        recs.push(hs_record(&hs));
                    }
                }
                self.transport.send(std::mem::take(&mut rd.early_messages));
                let fut: AppendFuture = if recs.is_empty() {
                    Box::pin(async { Ok(()) })
                } else {
                    let append = self.wal.append(recs);
                    let started = Instant::now();
                    Box::pin(async move {
                        let r = append.await;
                        crate::metrics::metrics()
                            .wal_fsync_seconds
                            .observe_duration(started.elapsed());
                        r
                    })
                };
                // Committed entries already durable may be applied during the sync.
                let durable = self.durable_index;
                let split = rd
                    .committed_entries
                    .iter()
                    .position(|e| e.index > durable)
                    .unwrap_or(rd.committed_entries.len());
                let now: Vec<Entry> = rd.committed_entries.drain(..split).collect();
                self.apply_entries(now);
                in_flight = Some((rd, fut));
            }
            let wake = {
                let in_flight = &mut in_flight;
                let rx = &mut rx;
                let ticker = &mut ticker;
                std::future::poll_fn(|cx| {
                    if let Some((_, fut)) = in_flight.as_mut() {
                        if let Poll::Ready(r) = fut.as_mut().poll(cx) {
                            return Poll::Ready(Wake::Synced(r));
                        }
                    }
                    if !closed {
                        if let Poll::Ready(m) = rx.poll_next_unpin(cx) {
                            return Poll::Ready(Wake::Msg(m));
                        }
                    }
                    if ticker.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Wake::Tick);
                    }
                    Poll::Pending
                })
                .await
            };
            match wake {
                Wake::Synced(r) => {
                    let (mut rd, _) = in_flight.take().expect("a sync was in flight");
                    if let Err(e) = r {
                        // The log is poisoned: nothing more can be acknowledged safely.
                        tracing::error!(error = %e, "WAL append failed; stopping the raft core");
                        self.fail_all(EtcdError::Stopped);
                        panic!("ferrite: WAL append failed: {e}");
                    }
                    if let Some(last) = rd.entries.last() {
                        self.durable_index = last.index;
                    }
                    self.transport.send(std::mem::take(&mut rd.messages));
                    let rest = std::mem::take(&mut rd.committed_entries);
                    self.apply_entries(rest);
                    for rs in std::mem::take(&mut rd.read_states) {
                        self.on_read_state(rs.index, &rs.context);
                    }
                    self.node.advance();
                    self.publish_status();
                    self.maybe_snapshot().await;
                }
                Wake::Msg(None) => closed = true,
                Wake::Msg(Some(m)) => {
                    let mut batch = Vec::new();
                    let mut reads = Vec::new();
                    self.take_msg(m, &mut batch, &mut reads);
                    while batch.len() < PROPOSAL_BATCH_REQUESTS_MAX {
                        match rx.try_recv() {
                            Ok(m) => self.take_msg(m, &mut batch, &mut reads),
                            Err(mpsc::TryRecvError::Closed) => {
                                closed = true;
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    self.queued.extend(batch);
                    self.propose_queued();
                    if !reads.is_empty() {
                        self.start_read(reads);
                    }
                }
                Wake::Tick => {
                    ticker.set(glommio::timer::Timer::new(self.opts.tick));
                    self.node.tick();
                    self.propose_queued();
                    self.expire_leases();
                    self.auto_compact();
                }
            }
        }
    }

    fn take_msg(
        &mut self,
        m: CoreMsg,
        batch: &mut Vec<InternalRequest>,
        reads: &mut Vec<oneshot::Sender<Result<(), EtcdError>>>,
    ) {
        match m {
            CoreMsg::Propose { op, reply } => {
                let id = self.next_waiter;
                self.next_waiter += 1;
                self.waiters.insert(id, reply);
                batch.push(InternalRequest {
                    id,
                    member_id: self.shared.member_id,
                    op: Some(op),
                });
            }
            CoreMsg::ReadIndex { reply } => reads.push(reply),
        }
    }

    fn propose_queued(&mut self) {
        if self.queued.is_empty() || self.node.role() != Role::Leader {
            return;
        }
        while !self.queued.is_empty() {
            let mut reqs = Vec::new();
            let mut bytes = 0usize;
            while let Some(r) = self.queued.front() {
                let n = r.encoded_len();
                if !reqs.is_empty() && bytes + n > PROPOSAL_BATCH_BYTES_MAX {
                    break;
                }
                bytes += n;
                reqs.push(self.queued.pop_front().expect("front exists"));
            }
            let batch = RaftBatch { requests: reqs };
            if let Err(e) = self.node.propose(batch.encode_to_vec()) {
                // Put them back and retry on the next tick.
                tracing::warn!(error = %e, "proposal dropped by raft; will retry");
                for r in batch.requests.into_iter().rev() {
                    self.queued.push_front(r);
                }
                return;
            }
        }
    }

    fn start_read(&mut self, reads: Vec<oneshot::Sender<Result<(), EtcdError>>>) {
        let ctx = self.read_ctx_next;
        self.read_ctx_next += 1;
        match self.node.read_index(ctx.to_le_bytes().to_vec()) {
            Ok(()) => {
                self.read_waiting.insert(ctx, reads);
            }
            Err(_) => {
                for r in reads {
                    let _ = r.send(Err(EtcdError::NoLeader));
                }
            }
        }
    }

    fn on_read_state(&mut self, index: u64, ctx: &[u8]) {
        let Ok(b) = <[u8; 8]>::try_from(ctx) else {
            return;
        };
        let Some(waiters) = self.read_waiting.remove(&u64::from_le_bytes(b)) else {
            return;
        };
        if index <= self.applied {
            for w in waiters {
                let _ = w.send(Ok(()));
            }
        } else {
            self.read_parked.entry(index).or_default().extend(waiters);
        }
    }

    fn on_soft_state(&mut self, rd: &Ready) {
        if let Some(ss) = &rd.soft_state {
            let previous = self.shared.leader.swap(ss.leader, Ordering::AcqRel);
            crate::metrics::metrics().observe_leader(previous, ss.leader, self.shared.member_id);
            if ss.role == Role::Leader {
                tracing::info!(
                    "local-member-id" = format!("{:x}", self.shared.member_id),
                    term = self.node.term(),
                    "became leader"
                );
                // etcd refreshes every lease's deadline when a member becomes leader.
                let now = Instant::now();
                let mut l = self.shared.lessor.lock().unwrap_or_else(|p| p.into_inner());
                for id in l.ids() {
                    let _ = l.renew(id, now);
                }
            }
        }
        self.shared
            .raft_term
            .store(self.node.term(), Ordering::Release);
    }

    fn publish_status(&self) {
        self.shared
            .raft_index
            .store(self.node.committed(), Ordering::Release);
        self.shared
            .raft_term
            .store(self.node.term(), Ordering::Release);
        self.shared
            .leader
            .store(self.node.leader(), Ordering::Release);
    }

    /// Applies committed entries: one MVCC commit for the whole slice, then answers.
    fn apply_entries(&mut self, entries: Vec<Entry>) {
        let Some(last) = entries.last() else {
            return;
        };
        let (last_index, last_term) = (last.index, last.term);
        let mut answers: Vec<(ApplyReply, Result<crate::state::ApplyResult, EtcdError>)> =
            Vec::new();
        let mut events: Vec<Event> = Vec::new();
        let compact_rev = self.shared.store.read().compact_revision();
        let mut lessor = self.shared.lessor.lock().unwrap_or_else(|p| p.into_inner());
        let mut alarms = self.shared.alarms.lock().unwrap_or_else(|p| p.into_inner());
        let mut ctx = ApplyCtx {
            lessor: &mut lessor,
            compact_rev,
            member_id: self.shared.member_id,
            alarms: &mut alarms,
            now: Instant::now(),
            leases_dirty: false,
            alarms_dirty: false,
            compactions: Vec::new(),
        };
        for e in &entries {
            if e.index <= self.applied {
                continue;
            }
            if e.kind != EntryKind::Normal || e.data.is_empty() {
                continue;
            }
            let batch = match RaftBatch::decode(e.data.as_slice()) {
                Ok(b) => b,
                Err(err) => {
                    // A committed entry that does not decode: the log is corrupt. Applying
                    // around it would diverge from other members; stop.
                    panic!(
                        "ferrite: committed entry {} does not decode: {err}",
                        e.index
                    );
                }
            };
            for req in batch.requests {
                let Some(op) = &req.op else { continue };
                let (res, evs) = apply::apply_op(&mut self.writer, &mut ctx, op);
                events.extend(evs);
                if req.member_id == self.shared.member_id {
                    if let Some(w) = self.waiters.remove(&req.id) {
                        answers.push((w, res));
                    }
                }
            }
        }
        let leases_meta = ctx.leases_dirty.then(|| ctx.lessor.encode_meta());
        let alarms_meta = ctx.alarms_dirty.then(|| apply::encode_alarms(ctx.alarms));
        let compactions = std::mem::take(&mut ctx.compactions);
        let nospace = ctx
            .alarms
            .iter()
            .any(|a| a.alarm == ferrite_net::pb::etcdserverpb::AlarmType::Nospace as i32);
        drop(ctx);
        drop(alarms);
        drop(lessor);
        if let Some(m) = leases_meta {
            self.writer.put_meta(LEASES_META_KEY, &m);
        }
        if let Some(m) = alarms_meta {
            self.writer.put_meta(ALARMS_META_KEY, &m);
        }
        self.shared.nospace.store(nospace, Ordering::Release);
        self.writer
            .put_meta(APPLIED_INDEX_META_KEY, &last_index.to_le_bytes());
        self.writer
            .put_meta(APPLIED_TERM_META_KEY, &last_term.to_le_bytes());
        let commit_started = Instant::now();
        if let Err(e) = self.writer.commit(false) {
            panic!("ferrite: MVCC commit failed at applied index {last_index}: {e}");
        }
        crate::metrics::metrics()
            .backend_commit_seconds
            .observe_duration(commit_started.elapsed());
        for rev in compactions {
            if let Err(e) = self.shared.store.compact(rev) {
                tracing::warn!(revision = rev, error = %e, "compaction failed");
            }
        }
        assert!(last_index > self.applied || entries.iter().all(|e| e.index <= self.applied));
        self.applied = self.applied.max(last_index);
        self.shared
            .applied_index
            .store(self.applied, Ordering::Release);
        let revision = self.shared.store.read().revision();
        self.shared.revision_hint.store(revision, Ordering::Release);
        self.shared.hub.publish(HubBatch { revision, events });
        for (w, r) in answers {
            let _ = w.send(r);
        }
        let applied = self.applied;
        while let Some(entry) = self.read_parked.first_entry() {
            if *entry.key() > applied {
                break;
            }
            for w in entry.remove() {
                let _ = w.send(Ok(()));
            }
        }
    }

    fn expire_leases(&mut self) {
        if self.node.role() != Role::Leader {
            return;
        }
        let expired = {
            let mut l = self.shared.lessor.lock().unwrap_or_else(|p| p.into_inner());
            l.take_expired(
                Instant::now(),
                LEASE_REVOKE_RETRY,
                LEASE_EXPIRE_PER_TICK_MAX,
            )
        };
        for id in expired {
            self.queued.push_back(InternalRequest {
                id: 0,
                member_id: self.shared.member_id,
                op: Some(Op::LeaseRevoke(
                    ferrite_net::pb::etcdserverpb::LeaseRevokeRequest { id },
                )),
            });
        }
        self.propose_queued();
    }

    /// etcd's auto-compaction: `revision` mode keeps the last N revisions (checked every 5
    /// minutes); `periodic` mode keeps the given duration of history, sampling the revision every
    /// tenth of the retention (at most hourly) and compacting to the sample that is as old as
    /// the retention. Proposed through Raft like a client's Compact, only by the leader.
    fn auto_compact(&mut self) {
        use crate::config::AutoCompaction;
        if self.node.role() != Role::Leader {
            return;
        }
        let now = Instant::now();
        if now < self.next_compaction_check {
            return;
        }
        let view = self.shared.store.read();
        let (current, compacted) = (view.revision(), view.compact_revision());
        let target = match self.opts.auto_compaction {
            AutoCompaction::Disabled => return,
            AutoCompaction::Revision(keep) => {
                self.next_compaction_check = now + AUTO_COMPACTION_REVISION_CHECK;
                current - keep as i64
            }
            AutoCompaction::Periodic(retention) => {
                let step =
                    (retention / 10).clamp(Duration::from_secs(1), Duration::from_secs(3600));
                self.next_compaction_check = now + step;
                self.compaction_samples.push_back((now, current));
                let mut target = 0;
                while let Some(&(t, rev)) = self.compaction_samples.front() {
                    if now.duration_since(t) < retention {
                        break;
                    }
                    target = rev;
                    self.compaction_samples.pop_front();
                }
                target
            }
        };
        if target > compacted && target <= current {
            tracing::info!(revision = target, "starting auto compaction");
            self.queued.push_back(InternalRequest {
                id: 0,
                member_id: self.shared.member_id,
                op: Some(Op::Compaction(
                    ferrite_net::pb::etcdserverpb::CompactionRequest {
                        revision: target,
                        physical: false,
                    },
                )),
            });
            self.propose_queued();
        }
    }

    /// Every `snapshot_count` applied entries: make the store durable, log a snapshot marker,
    /// free old WAL segments and compact Raft's in-memory log.
    async fn maybe_snapshot(&mut self) {
        if self.applied < self.last_snapshot_index + self.opts.snapshot_count.max(1) {
            return;
        }
        let index = self.applied;
        let Some(term) = self.node.log_term(index) else {
            return;
        };
        if let Err(e) = self.writer.commit(true) {
            panic!("ferrite: durable MVCC commit failed: {e}");
        }
        if let Err(e) = self
            .wal
            .append(vec![WalRecord::Snapshot { index, term }])
            .await
        {
            panic!("ferrite: logging the snapshot marker failed: {e}");
        }
        if let Err(e) = self.node.compact(index, Vec::new()) {
            tracing::warn!(index, error = %e, "raft log compaction refused");
            return;
        }
        match self.wal.release_below(index + 1).await {
            Ok(n) => tracing::debug!(index, segments = n, "released WAL segments"),
            Err(e) => tracing::warn!(index, error = %e, "releasing WAL segments failed"),
        }
        self.last_snapshot_index = index;
    }

    fn fail_all(&mut self, e: EtcdError) {
        for (_, w) in self.waiters.drain() {
            let _ = w.send(Err(e.clone()));
        }
    }
}
