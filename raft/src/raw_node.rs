//! `RawNode`: the Raft state machine. See the crate docs for the `Ready` contract.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;

use crate::codec;
use crate::log::RaftLog;
use crate::progress::{Progress, ProgressState};
use crate::types::*;

/// Tunables. Ticks are the caller's unit of time (etcd: 100 ms).
#[derive(Clone, Debug)]
pub struct Config {
    /// This node's id (non-zero).
    pub id: NodeId,
    /// A follower campaigns after a randomized timeout in `[election_ticks, 2 * election_ticks)`.
    pub election_ticks: u32,
    /// A leader sends heartbeats every `heartbeat_ticks` (must be `< election_ticks`).
    pub heartbeat_ticks: u32,
    /// Pre-vote (thesis §9.6): a candidate first asks whether it could win, without raising
    /// terms, so a partitioned node cannot disrupt a working leader when it rejoins.
    pub pre_vote: bool,
    /// A leader steps down after an election timeout without hearing from a quorum; followers
    /// that heard from a leader within the election timeout ignore vote requests.
    pub check_quorum: bool,
    /// Serve ReadIndex from the leader lease instead of a heartbeat round. Requires
    /// `check_quorum`. The lease: a quorum of voters acknowledged a heartbeat the leader sent
    /// less than `election_ticks - 1` of its ticks ago; each of those voters, on receiving it,
    /// ignores vote requests for `election_ticks` of *its* ticks (check-quorum's lease), and a
    /// restarted node ignores them for its first `election_ticks` (startup guard). So no other
    /// leader can be elected while the lease holds **provided every node's tick rate is within
    /// one tick per election timeout of the leader's** (clock drift, VM pauses and stalled tick
    /// loops break this: a leader paused past its lease then resumed may serve one stale read
    /// before it learns of the new term). The lease is never used after a TimeoutNow was sent
    /// in the term (a transfer target is allowed to ignore leases).
    pub lease_read: bool,
    /// Max bytes of entries per Append message (at least one entry is always sent).
    pub msg_bytes_max: u64,
    /// Max Append messages in flight per follower in Replicate state.
    pub inflight_msgs_max: usize,
    /// Max bytes of entries in flight per follower in Replicate state.
    pub inflight_bytes_max: u64,
    /// A leader refuses proposals while this many bytes of entries are uncommitted.
    pub uncommitted_bytes_max: u64,
    /// Max bytes of entries in one `Ready::committed_entries` (at least one entry).
    pub committed_bytes_per_ready_max: u64,
    /// InstallSnapshot chunk size in bytes.
    pub snapshot_chunk_bytes: u64,
    /// A follower refuses a snapshot image larger than this.
    pub snapshot_bytes_max: u64,
    /// The caller's applied index at restart (entries after it are handed out again).
    pub applied: u64,
    /// Seed of the election-timeout randomizer (mixed with `id`).
    pub seed: u64,
}

impl Config {
    pub fn new(id: NodeId) -> Config {
        Config {
            id,
            election_ticks: 10,
            heartbeat_ticks: 1,
            pre_vote: true,
            check_quorum: true,
            lease_read: false,
            msg_bytes_max: 1 << 20,
            inflight_msgs_max: 256,
            inflight_bytes_max: 32 << 20,
            uncommitted_bytes_max: 256 << 20,
            committed_bytes_per_ready_max: 64 << 20,
            snapshot_chunk_bytes: 1 << 20,
            snapshot_bytes_max: 8 << 30,
            applied: 0,
            seed: 0,
        }
    }

    fn validate(&self) -> Result<(), RaftError> {
        let bad = |s: &str| Err(RaftError::InvalidConfig(s.to_string()));
        if self.id == NO_NODE {
            return bad("id must be non-zero");
        }
        if self.heartbeat_ticks == 0 || self.heartbeat_ticks >= self.election_ticks {
            return bad("need 0 < heartbeat_ticks < election_ticks");
        }
        if self.inflight_msgs_max == 0 || self.inflight_bytes_max == 0 {
            return bad("inflight limits must be positive");
        }
        if self.snapshot_chunk_bytes == 0 || self.msg_bytes_max == 0 {
            return bad("message/chunk sizes must be positive");
        }
        if self.lease_read && !self.check_quorum {
            return bad("lease_read requires check_quorum");
        }
        Ok(())
    }
}

/// What the caller persisted, handed back at start.
#[derive(Clone, Debug, Default)]
pub struct PersistedState {
    pub hard_state: HardState,
    /// The latest snapshot (index 0 and empty if none; see [`PersistedState::bootstrap`]).
    pub snapshot: Snapshot,
    /// Log entries after `snapshot.meta.index`, contiguous (entries at or below it are skipped).
    pub entries: Vec<Entry>,
}

impl PersistedState {
    /// The first start of a member of a new cluster (etcd's bootstrap): one committed
    /// `AddVoter` entry per initial voter at indexes `1..=n`, term 1. Every initial member must
    /// bootstrap with the same list; a node joining later starts from `PersistedState::default()`
    /// and receives these entries (or a snapshot) from the leader.
    pub fn bootstrap(voters: &[NodeId]) -> PersistedState {
        let mut ids = voters.to_vec();
        ids.sort_unstable();
        ids.dedup();
        let entries: Vec<Entry> = ids
            .iter()
            .enumerate()
            .map(|(k, &id)| Entry {
                index: k as u64 + 1,
                term: 1,
                kind: EntryKind::ConfChange,
                data: codec::encode_conf_change(&ConfChange {
                    kind: ConfChangeKind::AddVoter,
                    node_id: id,
                    context: Vec::new(),
                }),
            })
            .collect();
        PersistedState {
            hard_state: HardState {
                term: 1,
                vote: NO_NODE,
                commit: entries.len() as u64,
            },
            snapshot: Snapshot::default(),
            entries,
        }
    }
}

/// Errors returned to the caller. None of them changes state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RaftError {
    /// No leader known, leadership transfer in progress, or too many uncommitted bytes.
    ProposalDropped,
    /// A membership change is already in flight (one at a time).
    ConfChangePending,
    /// The request needs a leader and this node is not one.
    NotLeader,
    InvalidConfig(String),
    /// The persisted state handed to `RawNode::new` is inconsistent.
    Corrupt(String),
    /// `compact` index is not after the current snapshot, not yet applied, or precedes the
    /// last applied membership change.
    BadCompactIndex,
    /// A peer message contradicts itself (see `RawNode::step`).
    InvalidMessage(&'static str),
}

impl fmt::Display for RaftError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RaftError::ProposalDropped => write!(f, "raft: proposal dropped"),
            RaftError::ConfChangePending => write!(f, "raft: a membership change is pending"),
            RaftError::NotLeader => write!(f, "raft: not the leader"),
            RaftError::InvalidConfig(s) => write!(f, "raft: invalid config: {s}"),
            RaftError::Corrupt(s) => write!(f, "raft: corrupt persisted state: {s}"),
            RaftError::BadCompactIndex => write!(f, "raft: bad compaction index"),
            RaftError::InvalidMessage(s) => write!(f, "raft: invalid message: {s}"),
        }
    }
}

impl std::error::Error for RaftError {}

/// Everything the caller must do, produced by `RawNode::ready`. See the crate docs for the
/// ordering rules; in short:
/// 1. `early_messages` may be sent at once (leader traffic in an already-durable term).
/// 2. Persist `snapshot` (if any), then `entries` (truncating the log at the first entry's
///    index: it supersedes every entry at or after it), then `hard_state` (if any).
/// 3. Only then send `messages`.
/// 4. Apply `snapshot` then `committed_entries` to the state machine (after step 2); serve
///    `read_states` once applied up to their index.
/// 5. Call `advance()`.
#[derive(Debug, Default)]
pub struct Ready {
    pub soft_state: Option<SoftState>,
    pub hard_state: Option<HardState>,
    pub entries: Vec<Entry>,
    pub snapshot: Option<Snapshot>,
    pub committed_entries: Vec<Entry>,
    pub messages: Vec<Message>,
    pub early_messages: Vec<Message>,
    pub read_states: Vec<ReadState>,
    /// The membership after applying `snapshot` and `committed_entries`, if it changed.
    pub conf_state: Option<ConfState>,
    /// True when `entries` or `hard_state` (term/vote) must be synced before `messages` go out.
    pub must_sync: bool,
}

/// Observable state for status endpoints and tests.
#[derive(Clone, Debug)]
pub struct Status {
    pub id: NodeId,
    pub hard_state: HardState,
    pub soft_state: SoftState,
    pub applied: u64,
    pub last_index: u64,
    pub first_index: u64,
    pub removed: bool,
    /// Leader only: (peer, matched, next, state).
    pub progress: Vec<(NodeId, u64, u64, ProgressState)>,
}

struct InProgress {
    last_index: u64,
    last_term: u64,
    hard_state: Option<HardState>,
    snapshot_index: u64,
}

struct IncomingSnapshot {
    meta: SnapshotMeta,
    total_len: u64,
    buf: Vec<u8>,
}

struct PendingRead {
    seq: u64,
    index: u64,
    ctx: Vec<u8>,
    from: NodeId,
}

/// The Raft state machine, driven by the caller.
pub struct RawNode {
    cfg: Config,
    id: NodeId,
    term: u64,
    vote: NodeId,
    role: Role,
    leader: NodeId,
    log: RaftLog,
    conf: ConfState,
    /// Index of the last applied membership change (or of the snapshot carrying it).
    conf_index: u64,
    conf_changed: bool,
    removed: bool,
    progress: BTreeMap<NodeId, Progress>,
    votes: BTreeMap<NodeId, bool>,
    election_elapsed: u32,
    heartbeat_elapsed: u32,
    randomized_election_ticks: u32,
    rng: u64,
    msgs: Vec<Message>,
    early_msgs: Vec<Message>,
    read_states: Vec<ReadState>,
    pending_reads: VecDeque<PendingRead>,
    reads_before_commit: Vec<(Vec<u8>, NodeId)>,
    /// Sequence of the last heartbeat broadcast (heartbeats double as ReadIndex rounds).
    read_seq: u64,
    /// Leader: ticks since it became leader, and (seq, tick) of recent heartbeat broadcasts,
    /// for the lease.
    leader_ticks: u64,
    hb_sent: VecDeque<(u64, u64)>,
    /// Leader: a TimeoutNow was sent this term, so followers may vote despite their lease.
    lease_broken: bool,
    /// With `lease_read`: after a (re)start, behave as if a leader was heard just now, so a
    /// restarted follower does not break a live leader's lease by voting at once.
    startup_guard: bool,
    transferee: NodeId,
    pending_conf_index: u64,
    uncommitted_bytes: u64,
    pending_bcast: bool,
    snapshot: Option<Snapshot>,
    incoming: Option<IncomingSnapshot>,
    ready_snapshot: Option<Snapshot>,
    prev_soft: SoftState,
    prev_hard: HardState,
    /// Term of the last hard state reported durable by `advance` (or restored at start).
    durable_term: u64,
    in_progress: Option<InProgress>,
}

impl RawNode {
    /// Starts (or restarts) a node from what the caller persisted.
    pub fn new(cfg: Config, st: PersistedState) -> Result<RawNode, RaftError> {
        cfg.validate()?;
        let snap = st.snapshot;
        let mut log = RaftLog::new(snap.meta.index, snap.meta.term);
        for e in st.entries {
            if e.index <= snap.meta.index {
                continue;
            }
            if e.index != log.last_index() + 1 {
                return Err(RaftError::Corrupt(format!(
                    "entry {} follows {}",
                    e.index,
                    log.last_index()
                )));
            }
            if e.term < log.last_term() {
                return Err(RaftError::Corrupt(format!(
                    "entry {} term decreases",
                    e.index
                )));
            }
            log.entries.push(e);
        }
        let hs = st.hard_state;
        if hs.commit > log.last_index() {
            return Err(RaftError::Corrupt(format!(
                "commit {} beyond last index {}",
                hs.commit,
                log.last_index()
            )));
        }
        if hs.term < log.last_term() {
            return Err(RaftError::Corrupt("hard state term below log term".into()));
        }
        log.committed = hs.commit.max(snap.meta.index);
        log.persisted = log.last_index();
        log.unstable = log.last_index() + 1;
        log.applied = cfg.applied.clamp(snap.meta.index, log.committed);
        // Membership = the snapshot's + every committed change after it (changes take effect
        // once committed; entries up to `conf_index` are not applied again when handed out).
        let mut conf = snap.meta.conf_state.clone();
        let mut conf_index = snap.meta.index;
        let mut removed = false;
        for i in (snap.meta.index + 1)..=log.committed {
            let e = log.entry(i).expect("entry in log");
            if e.kind == EntryKind::ConfChange {
                let cc = codec::decode_conf_change(&e.data)
                    .map_err(|err| RaftError::Corrupt(format!("entry {i}: {err}")))?;
                conf.apply(&cc);
                conf_index = i;
                if cc.kind == ConfChangeKind::Remove && cc.node_id == cfg.id {
                    removed = true;
                } else if cc.node_id == cfg.id && conf.contains(cfg.id) {
                    removed = false;
                }
            }
        }
        let id = cfg.id;
        let mut rng = cfg.seed ^ id.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
        if rng == 0 {
            rng = 1;
        }
        let mut node = RawNode {
            id,
            term: hs.term,
            vote: hs.vote,
            role: Role::Follower,
            leader: NO_NODE,
            log,
            conf,
            conf_index,
            conf_changed: false,
            removed,
            progress: BTreeMap::new(),
            votes: BTreeMap::new(),
            election_elapsed: 0,
            heartbeat_elapsed: 0,
            randomized_election_ticks: cfg.election_ticks,
            rng,
            msgs: Vec::new(),
            early_msgs: Vec::new(),
            read_states: Vec::new(),
            pending_reads: VecDeque::new(),
            reads_before_commit: Vec::new(),
            read_seq: 0,
            leader_ticks: 0,
            hb_sent: VecDeque::new(),
            lease_broken: false,
            startup_guard: cfg.lease_read,
            transferee: NO_NODE,
            pending_conf_index: 0,
            uncommitted_bytes: 0,
            pending_bcast: false,
            snapshot: if snap.meta.index > 0 {
                Some(snap)
            } else {
                None
            },
            incoming: None,
            ready_snapshot: None,
            prev_soft: SoftState {
                leader: NO_NODE,
                role: Role::Follower,
            },
            prev_hard: hs,
            durable_term: hs.term,
            in_progress: None,
            cfg,
        };
        node.reset_randomized_timeout();
        // A lone voter need not wait for an election timeout.
        if node.promotable() && node.conf.voters.len() == 1 {
            node.campaign(false);
        }
        node.log.check();
        Ok(node)
    }

    // ----- public API -----

    pub fn id(&self) -> NodeId {
        self.id
    }

    pub fn term(&self) -> u64 {
        self.term
    }

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn leader(&self) -> NodeId {
        self.leader
    }

    pub fn conf_state(&self) -> &ConfState {
        &self.conf
    }

    /// True once this node applied its own removal: it no longer campaigns or replicates.
    pub fn is_removed(&self) -> bool {
        self.removed
    }

    pub fn committed(&self) -> u64 {
        self.log.committed
    }

    pub fn applied(&self) -> u64 {
        self.log.applied
    }

    pub fn last_index(&self) -> u64 {
        self.log.last_index()
    }

    pub fn first_index(&self) -> u64 {
        self.log.first_index()
    }

    /// Term of log entry `index` (None if compacted or absent).
    pub fn log_term(&self, index: u64) -> Option<u64> {
        self.log.term(index)
    }

    /// Log entry `index` if still in memory.
    pub fn log_entry(&self, index: u64) -> Option<&Entry> {
        self.log.entry(index)
    }

    /// The latest snapshot this node holds (made by `compact` or received from a leader).
    pub fn snapshot(&self) -> Option<&Snapshot> {
        self.snapshot.as_ref()
    }

    pub fn status(&self) -> Status {
        Status {
            id: self.id,
            hard_state: self.hard_state(),
            soft_state: self.soft_state(),
            applied: self.log.applied,
            last_index: self.log.last_index(),
            first_index: self.log.first_index(),
            removed: self.removed,
            progress: self
                .progress
                .iter()
                .map(|(&id, p)| (id, p.matched, p.next, p.state))
                .collect(),
        }
    }

    /// Advances the logical clock by one tick.
    pub fn tick(&mut self) {
        if self.removed {
            return;
        }
        self.election_elapsed = self.election_elapsed.saturating_add(1);
        if self.election_elapsed >= self.cfg.election_ticks {
            self.startup_guard = false;
        }
        if self.role == Role::Leader {
            self.tick_leader();
        } else if self.promotable() && self.election_elapsed >= self.randomized_election_ticks {
            self.election_elapsed = 0;
            self.campaign(false);
        }
    }

    /// Starts an election now (etcd's `Campaign`), subject to pre-vote.
    pub fn campaign_now(&mut self) {
        if self.role != Role::Leader && !self.removed {
            self.campaign(false);
        }
    }

    /// Proposes application data. On a follower it is forwarded to the leader (and may be lost:
    /// the caller must time out and retry, as with etcd).
    pub fn propose(&mut self, data: Vec<u8>) -> Result<(), RaftError> {
        self.propose_local(vec![(EntryKind::Normal, data)])
    }

    /// Proposes several entries at once (one message, one log append).
    pub fn propose_batch(&mut self, batch: Vec<Vec<u8>>) -> Result<(), RaftError> {
        self.propose_local(batch.into_iter().map(|d| (EntryKind::Normal, d)).collect())
    }

    /// Proposes one membership change. Only one may be in flight: a leader refuses a new one
    /// until the previous is applied, and a new leader until its first entry is applied.
    pub fn propose_conf_change(&mut self, cc: &ConfChange) -> Result<(), RaftError> {
        self.propose_local(vec![(EntryKind::ConfChange, codec::encode_conf_change(cc))])
    }

    /// Requests a linearizable read point. The answer arrives as a `ReadState` with the same
    /// context in a later `Ready` (possibly never, if leadership changes: retry on timeout).
    pub fn read_index(&mut self, ctx: Vec<u8>) -> Result<(), RaftError> {
        if self.removed {
            return Err(RaftError::ProposalDropped);
        }
        if self.role == Role::Leader {
            self.leader_read(ctx, self.id);
            return Ok(());
        }
        if self.leader == NO_NODE {
            return Err(RaftError::ProposalDropped);
        }
        let mut m = Message::new(MessageKind::ReadIndex, self.id, self.leader, 0);
        m.context = ctx;
        self.send(m);
        Ok(())
    }

    /// Asks the leader to hand leadership to `target` (etcd's MoveLeader).
    pub fn transfer_leader(&mut self, target: NodeId) -> Result<(), RaftError> {
        if self.role == Role::Leader {
            self.leader_transfer(target);
            return Ok(());
        }
        if self.leader == NO_NODE {
            return Err(RaftError::NotLeader);
        }
        let mut m = Message::new(MessageKind::TransferLeader, self.id, self.leader, 0);
        m.index = target;
        self.send(m);
        Ok(())
    }

    /// The transport could not deliver to `id` (etcd's `ReportUnreachable`): a leader stops
    /// pipelining to it and probes one append at a time until it answers again.
    pub fn report_unreachable(&mut self, id: NodeId) {
        if self.role != Role::Leader || id == self.id {
            return;
        }
        if let Some(pr) = self.progress.get_mut(&id) {
            if pr.state == ProgressState::Replicate {
                pr.become_probe();
            }
        }
    }

    /// Records a snapshot of the state machine at `index` (which must be applied, after the
    /// current snapshot, and not before the last applied membership change) and drops the log up
    /// to it. The caller must have made the snapshot durable first. The leader sends it to
    /// followers that need compacted entries.
    pub fn compact(&mut self, index: u64, data: Vec<u8>) -> Result<(), RaftError> {
        if index <= self.log.snap_index || index > self.log.applied || index < self.conf_index {
            return Err(RaftError::BadCompactIndex);
        }
        let term = self.log.term(index).expect("applied entry in log");
        self.snapshot = Some(Snapshot {
            meta: SnapshotMeta {
                index,
                term,
                conf_state: self.conf.clone(),
            },
            data,
        });
        self.log.compact(index);
        self.log.check();
        Ok(())
    }

    /// Feeds a message from a peer.
    /// Feeds a message from a peer. A message that is internally inconsistent (entries not
    /// contiguous after `index`, terms decreasing or above the message's term, a snapshot chunk
    /// past its total length) is refused with `InvalidMessage` and changes nothing; messages
    /// for another node, from node 0, or reaching a removed node are ignored.
    pub fn step(&mut self, m: Message) -> Result<(), RaftError> {
        if m.to != self.id || m.from == NO_NODE || self.removed {
            return Ok(());
        }
        validate_message(&m)?;
        self.step_inner(m);
        self.log.check();
        Ok(())
    }

    /// Is there anything for the caller to do? False while a `Ready` is outstanding.
    pub fn has_ready(&self) -> bool {
        if self.in_progress.is_some() {
            return false;
        }
        self.soft_state() != self.prev_soft
            || self.hard_state() != self.prev_hard
            || self.log.unstable <= self.log.last_index()
            || self.ready_snapshot.is_some()
            || !self.msgs.is_empty()
            || !self.early_msgs.is_empty()
            || !self.read_states.is_empty()
            || self.pending_bcast
            || self.log.applied < self.log.committed
    }

    /// Takes the pending work. Must be followed by `advance()` before the next `ready()`.
    /// `step`, `tick`, `propose` and `read_index` may be called in between.
    pub fn ready(&mut self) -> Ready {
        assert!(
            self.in_progress.is_none(),
            "raft: ready() called before advance()"
        );
        if self.pending_bcast {
            self.pending_bcast = false;
            if self.role == Role::Leader {
                self.bcast_append();
            }
        }
        let snapshot = self.ready_snapshot.take();
        let snapshot_index = snapshot.as_ref().map_or(0, |s| s.meta.index);
        // Committed entries (applies membership changes as they are handed out).
        let mut committed_entries = Vec::new();
        if self.log.applied < self.log.committed {
            let ents = self
                .log
                .slice(
                    self.log.applied + 1,
                    self.log.committed,
                    self.cfg.committed_bytes_per_ready_max,
                )
                .expect("unapplied entries are in the log");
            for e in &ents {
                self.log.applied = e.index;
                if e.kind == EntryKind::ConfChange {
                    self.apply_conf_entry(e);
                }
            }
            committed_entries = ents;
        }
        let entries = if self.log.unstable <= self.log.last_index() {
            self.log
                .slice(self.log.unstable, self.log.last_index(), u64::MAX)
                .expect("unstable entries are in the log")
        } else {
            Vec::new()
        };
        self.log.unstable = self.log.last_index() + 1;
        let soft = self.soft_state();
        let soft_state = (soft != self.prev_soft).then_some(soft);
        self.prev_soft = soft;
        let hard = self.hard_state();
        let hard_state = (hard != self.prev_hard).then_some(hard);
        let must_sync = !entries.is_empty()
            || snapshot.is_some()
            || hard_state
                .is_some_and(|h| h.term != self.prev_hard.term || h.vote != self.prev_hard.vote);
        self.prev_hard = hard;
        let conf_state = if self.conf_changed {
            self.conf_changed = false;
            Some(self.conf.clone())
        } else {
            None
        };
        let (last_index, last_term) = match entries.last() {
            Some(e) => (e.index, e.term),
            None => (0, 0),
        };
        self.in_progress = Some(InProgress {
            last_index,
            last_term,
            hard_state,
            snapshot_index,
        });
        self.log.check();
        Ready {
            soft_state,
            hard_state,
            entries,
            snapshot,
            committed_entries,
            messages: std::mem::take(&mut self.msgs),
            early_messages: std::mem::take(&mut self.early_msgs),
            read_states: std::mem::take(&mut self.read_states),
            conf_state,
            must_sync,
        }
    }

    /// Reports that the last `Ready` was fully handled (persisted, sent, applied).
    pub fn advance(&mut self) {
        let ip = self
            .in_progress
            .take()
            .expect("raft: advance() without ready()");
        if let Some(hs) = ip.hard_state {
            self.durable_term = hs.term;
        }
        if ip.snapshot_index > 0 && ip.snapshot_index <= self.log.snap_index {
            self.log.persisted = self.log.persisted.max(ip.snapshot_index);
        }
        if ip.last_index > 0
            && (ip.last_index <= self.log.snap_index
                || self.log.match_term(ip.last_index, ip.last_term))
        {
            self.log.persisted = self
                .log
                .persisted
                .max(ip.last_index)
                .min(self.log.last_index());
        }
        if self.role == Role::Leader {
            let persisted = self.log.persisted;
            if let Some(pr) = self.progress.get_mut(&self.id) {
                pr.maybe_update(persisted);
            }
            if self.maybe_commit() {
                self.pending_bcast = true;
            }
        }
        self.log.check();
    }

    // ----- internals -----

    fn soft_state(&self) -> SoftState {
        SoftState {
            leader: self.leader,
            role: self.role,
        }
    }

    fn hard_state(&self) -> HardState {
        HardState {
            term: self.term,
            vote: self.vote,
            commit: self.log.committed,
        }
    }

    fn promotable(&self) -> bool {
        !self.removed && self.conf.is_voter(self.id)
    }

    fn quorum(&self) -> usize {
        self.conf.voters.len() / 2 + 1
    }

    fn next_rand(&mut self) -> u64 {
        // xorshift64*
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn reset_randomized_timeout(&mut self) {
        let e = self.cfg.election_ticks as u64;
        self.randomized_election_ticks = (e + self.next_rand() % e) as u32;
    }

    fn send(&mut self, mut m: Message) {
        m.from = self.id;
        let leader_traffic = matches!(
            m.kind,
            MessageKind::Append
                | MessageKind::Heartbeat
                | MessageKind::Snapshot
                | MessageKind::TimeoutNow
        );
        // A leader's replication traffic in a term whose vote is already durable may go out
        // before this Ready's entries are persisted (the leader counts itself only later).
        if self.role == Role::Leader && leader_traffic && self.durable_term == self.term {
            self.early_msgs.push(m);
        } else {
            self.msgs.push(m);
        }
    }

    fn reset(&mut self, term: u64) {
        if term != self.term {
            self.term = term;
            self.vote = NO_NODE;
        }
        self.leader = NO_NODE;
        self.election_elapsed = 0;
        self.heartbeat_elapsed = 0;
        self.reset_randomized_timeout();
        self.votes.clear();
        self.progress.clear();
        self.transferee = NO_NODE;
        self.pending_reads.clear();
        self.reads_before_commit.clear();
        self.hb_sent.clear();
        self.leader_ticks = 0;
        self.lease_broken = false;
        self.startup_guard = false;
        self.pending_bcast = false;
        self.uncommitted_bytes = 0;
    }

    fn become_follower(&mut self, term: u64, leader: NodeId) {
        self.reset(term);
        self.role = Role::Follower;
        self.leader = leader;
    }

    fn become_pre_candidate(&mut self) {
        assert!(
            self.role != Role::Leader,
            "raft: leader cannot pre-campaign"
        );
        // Pre-vote changes neither term nor vote.
        self.votes.clear();
        self.progress.clear();
        self.role = Role::PreCandidate;
        self.leader = NO_NODE;
    }

    fn become_candidate(&mut self) {
        assert!(self.role != Role::Leader, "raft: leader cannot campaign");
        let t = self.term + 1;
        self.reset(t);
        self.vote = self.id;
        self.role = Role::Candidate;
    }

    fn become_leader(&mut self) {
        assert!(
            self.role == Role::Candidate,
            "raft: only a candidate becomes leader"
        );
        let term = self.term;
        self.reset(term);
        self.role = Role::Leader;
        self.leader = self.id;
        let last = self.log.last_index();
        for &v in &self.conf.voters {
            self.progress.insert(v, Progress::new(last + 1, false));
        }
        for &l in &self.conf.learners {
            self.progress.insert(l, Progress::new(last + 1, true));
        }
        let persisted = self.log.persisted;
        if let Some(pr) = self.progress.get_mut(&self.id) {
            pr.matched = persisted;
            pr.become_replicate();
            pr.recent_active = true;
        }
        // A no-op entry of the new term: commits every earlier entry (§5.4.2) and fences
        // membership changes until it is applied.
        self.append_entries(vec![(EntryKind::Normal, Vec::new())]);
        self.pending_conf_index = self.log.last_index();
        self.bcast_append();
    }

    fn campaign(&mut self, transfer: bool) {
        if !self.promotable() {
            return;
        }
        let (kind, term) = if self.cfg.pre_vote && !transfer {
            self.become_pre_candidate();
            (MessageKind::PreVote, self.term + 1)
        } else {
            self.become_candidate();
            (MessageKind::Vote, self.term)
        };
        let id = self.id;
        if self.poll(id, true) == Some(true) {
            // Won with our own vote alone (single voter).
            if kind == MessageKind::PreVote {
                self.campaign(true);
            } else {
                self.become_leader();
            }
            return;
        }
        let voters = self.conf.voters.clone();
        for v in voters {
            if v == self.id {
                continue;
            }
            let mut m = Message::new(kind, self.id, v, term);
            m.index = self.log.last_index();
            m.log_term = self.log.last_term();
            if transfer {
                m.seq = VOTE_SEQ_TRANSFER;
            }
            self.send(m);
        }
    }

    /// Records a vote; returns Some(true) when won, Some(false) when lost.
    fn poll(&mut self, from: NodeId, granted: bool) -> Option<bool> {
        if self.conf.is_voter(from) {
            self.votes.entry(from).or_insert(granted);
        }
        let yes = self.votes.values().filter(|&&g| g).count();
        let no = self.votes.len() - yes;
        let q = self.quorum();
        if yes >= q {
            Some(true)
        } else if no > self.conf.voters.len() - q {
            Some(false)
        } else {
            None
        }
    }

    fn tick_leader(&mut self) {
        self.heartbeat_elapsed += 1;
        self.leader_ticks += 1;
        if self.election_elapsed >= self.cfg.election_ticks {
            self.election_elapsed = 0;
            if self.cfg.check_quorum {
                let active = self
                    .conf
                    .voters
                    .iter()
                    .filter(|&&v| {
                        v == self.id || self.progress.get(&v).is_some_and(|p| p.recent_active)
                    })
                    .count();
                if active < self.quorum() {
                    let t = self.term;
                    self.become_follower(t, NO_NODE);
                    return;
                }
                let me = self.id;
                for (id, p) in self.progress.iter_mut() {
                    if *id != me {
                        p.recent_active = false;
                    }
                }
            }
            // A transfer that did not finish within an election timeout is abandoned.
            self.transferee = NO_NODE;
        }
        if self.heartbeat_elapsed >= self.cfg.heartbeat_ticks {
            self.heartbeat_elapsed = 0;
            self.bcast_heartbeat();
        }
    }

    fn bcast_heartbeat(&mut self) {
        self.read_seq += 1;
        let seq = self.read_seq;
        if let Some(pr) = self.progress.get_mut(&self.id) {
            pr.read_acked_seq = seq;
        }
        self.hb_sent.push_back((seq, self.leader_ticks));
        while self
            .hb_sent
            .front()
            .is_some_and(|&(_, t)| t + (self.cfg.election_ticks as u64) < self.leader_ticks)
        {
            self.hb_sent.pop_front();
        }
        let peers: Vec<NodeId> = self
            .progress
            .keys()
            .copied()
            .filter(|&p| p != self.id)
            .collect();
        for p in peers {
            let pr = &self.progress[&p];
            let mut m = Message::new(MessageKind::Heartbeat, self.id, p, self.term);
            m.commit = pr.matched.min(self.log.committed);
            m.seq = self.read_seq;
            self.send(m);
        }
    }

    fn bcast_append(&mut self) {
        let peers: Vec<NodeId> = self
            .progress
            .keys()
            .copied()
            .filter(|&p| p != self.id)
            .collect();
        for p in peers {
            self.send_append(p, true);
            while self.send_append(p, false) {}
        }
    }

    /// Sends the next append (or snapshot) to `to` if its flow control allows. Returns true if
    /// a message was sent.
    fn send_append(&mut self, to: NodeId, send_if_empty: bool) -> bool {
        let Some(pr) = self.progress.get(&to) else {
            return false;
        };
        if pr.is_paused(self.cfg.inflight_msgs_max, self.cfg.inflight_bytes_max) {
            return false;
        }
        debug_assert!(pr.next <= self.log.last_index() + 1);
        let next = pr.next.min(self.log.last_index() + 1);
        let prev = next - 1;
        let prev_term = self.log.term(prev);
        let ents = self
            .log
            .slice(next, self.log.last_index(), self.cfg.msg_bytes_max);
        let (Some(prev_term), Some(ents)) = (prev_term, ents) else {
            return self.send_snapshot(to);
        };
        if ents.is_empty() && !send_if_empty {
            return false;
        }
        let pr = self.progress.get_mut(&to).expect("progress");
        match pr.state {
            ProgressState::Replicate => {
                if let Some(last) = ents.last() {
                    let bytes: u64 = ents.iter().map(|e| e.size_bytes()).sum();
                    pr.next = last.index + 1;
                    pr.add_inflight(last.index, bytes);
                }
            }
            ProgressState::Probe => pr.probe_sent = true,
            ProgressState::Snapshot => unreachable!("paused"),
        }
        let mut m = Message::new(MessageKind::Append, self.id, to, self.term);
        m.index = prev;
        m.log_term = prev_term;
        m.entries = ents;
        m.commit = self.log.committed;
        self.send(m);
        true
    }

    fn send_snapshot(&mut self, to: NodeId) -> bool {
        let snap_index = self
            .snapshot
            .as_ref()
            .expect("raft: log compacted without a snapshot")
            .meta
            .index;
        let pr = self.progress.get_mut(&to).expect("progress");
        pr.become_snapshot(snap_index);
        self.send_snapshot_chunk(to);
        true
    }

    fn send_snapshot_chunk(&mut self, to: NodeId) {
        let snap = self.snapshot.as_ref().expect("snapshot");
        let pr = self.progress.get_mut(&to).expect("progress");
        if pr.snap_index != snap.meta.index {
            pr.become_snapshot(snap.meta.index);
        }
        let total = snap.data.len() as u64;
        let off = pr.snap_offset.min(total);
        let end = (off + self.cfg.snapshot_chunk_bytes).min(total);
        let chunk = SnapshotChunk {
            meta: snap.meta.clone(),
            offset: off,
            total_len: total,
            data: snap.data[off as usize..end as usize].to_vec(),
        };
        let mut m = Message::new(MessageKind::Snapshot, self.id, to, self.term);
        m.snapshot = Some(chunk);
        self.send(m);
    }

    fn maybe_commit(&mut self) -> bool {
        let mut matched: Vec<u64> = self
            .conf
            .voters
            .iter()
            .map(|v| {
                if *v == self.id {
                    self.log.persisted
                } else {
                    self.progress.get(v).map_or(0, |p| p.matched)
                }
            })
            .collect();
        if matched.is_empty() {
            return false;
        }
        matched.sort_unstable_by(|a, b| b.cmp(a));
        let idx = matched[self.quorum() - 1];
        // §5.4.2: only entries of the current term are committed by counting replicas.
        if idx > self.log.committed && self.log.term(idx) == Some(self.term) {
            let old = self.log.committed;
            self.log.commit_to(idx);
            self.on_leader_commit(old);
            return true;
        }
        false
    }

    fn on_leader_commit(&mut self, old: u64) {
        for i in (old + 1)..=self.log.committed {
            if let Some(e) = self.log.entry(i) {
                self.uncommitted_bytes = self.uncommitted_bytes.saturating_sub(e.size_bytes());
            }
        }
        if self.log.term(self.log.committed) == Some(self.term)
            && !self.reads_before_commit.is_empty()
        {
            let waiting = std::mem::take(&mut self.reads_before_commit);
            for (ctx, from) in waiting {
                self.leader_read(ctx, from);
            }
        }
    }

    fn append_entries(&mut self, ents: Vec<(EntryKind, Vec<u8>)>) {
        let mut index = self.log.last_index();
        let term = self.term;
        let ents: Vec<Entry> = ents
            .into_iter()
            .map(|(kind, data)| {
                index += 1;
                Entry {
                    index,
                    term,
                    kind,
                    data,
                }
            })
            .collect();
        for e in &ents {
            self.uncommitted_bytes += e.size_bytes();
        }
        self.log.append(&ents);
        self.pending_bcast = true;
    }

    fn propose_local(&mut self, ents: Vec<(EntryKind, Vec<u8>)>) -> Result<(), RaftError> {
        if self.removed {
            return Err(RaftError::ProposalDropped);
        }
        match self.role {
            Role::Leader => self.leader_propose(ents, true),
            Role::Follower if self.leader != NO_NODE => {
                let mut m = Message::new(MessageKind::Propose, self.id, self.leader, 0);
                m.entries = ents
                    .into_iter()
                    .map(|(kind, data)| Entry {
                        index: 0,
                        term: 0,
                        kind,
                        data,
                    })
                    .collect();
                self.send(m);
                Ok(())
            }
            _ => Err(RaftError::ProposalDropped),
        }
    }

    fn leader_propose(
        &mut self,
        mut ents: Vec<(EntryKind, Vec<u8>)>,
        local: bool,
    ) -> Result<(), RaftError> {
        if self.transferee != NO_NODE {
            return Err(RaftError::ProposalDropped);
        }
        let bytes: u64 = ents
            .iter()
            .map(|(_, d)| d.len() as u64 + ENTRY_OVERHEAD_BYTES)
            .sum();
        if self.uncommitted_bytes > 0
            && self.uncommitted_bytes + bytes > self.cfg.uncommitted_bytes_max
        {
            return Err(RaftError::ProposalDropped);
        }
        let mut next_index = self.log.last_index();
        for (kind, data) in ents.iter_mut() {
            next_index += 1;
            if *kind != EntryKind::ConfChange {
                continue;
            }
            let ok = self.pending_conf_index <= self.log.applied
                && codec::decode_conf_change(data).is_ok();
            if ok {
                self.pending_conf_index = next_index;
            } else if local {
                return Err(RaftError::ConfChangePending);
            } else {
                // A forwarded change we must refuse becomes a no-op (keeps indexes simple).
                *kind = EntryKind::Normal;
                data.clear();
            }
        }
        self.append_entries(ents);
        Ok(())
    }

    fn leader_read(&mut self, ctx: Vec<u8>, from: NodeId) {
        // The read index must be at least the leader's first entry of its term (§6.4).
        if self.log.term(self.log.committed) != Some(self.term) {
            self.reads_before_commit.push((ctx, from));
            return;
        }
        let index = self.log.committed;
        let lone = self.conf.voters.len() == 1 && self.conf.is_voter(self.id);
        if lone || (self.cfg.lease_read && self.lease_valid()) {
            self.respond_read(index, ctx, from);
            return;
        }
        let seq = self.read_seq + 1;
        self.pending_reads.push_back(PendingRead {
            seq,
            index,
            ctx,
            from,
        });
        self.bcast_heartbeat();
    }

    /// The leader lease: a quorum acknowledged a heartbeat sent less than
    /// `election_ticks - 1` ticks ago (one tick of margin for tick phase between nodes). Those
    /// voters ignore vote requests for `election_ticks` after receiving it, so no other leader
    /// can exist yet — if every node's ticks run at the same rate (see `Config::lease_read`).
    fn lease_valid(&self) -> bool {
        if self.lease_broken || self.transferee != NO_NODE || self.cfg.election_ticks < 2 {
            return false;
        }
        let mut acked: Vec<u64> = self
            .conf
            .voters
            .iter()
            .map(|v| self.progress.get(v).map_or(0, |p| p.read_acked_seq))
            .collect();
        if acked.is_empty() {
            return false;
        }
        acked.sort_unstable_by(|a, b| b.cmp(a));
        let seq = acked[self.quorum() - 1];
        match self.hb_sent.iter().find(|&&(s, _)| s == seq) {
            Some(&(_, sent)) => self.leader_ticks - sent < (self.cfg.election_ticks - 1) as u64,
            None => false,
        }
    }

    fn respond_read(&mut self, index: u64, ctx: Vec<u8>, from: NodeId) {
        if from == self.id {
            self.read_states.push(ReadState {
                index,
                context: ctx,
            });
        } else {
            let mut m = Message::new(MessageKind::ReadIndexResp, self.id, from, self.term);
            m.index = index;
            m.context = ctx;
            self.send(m);
        }
    }

    fn release_reads(&mut self) {
        while let Some(front) = self.pending_reads.front() {
            let seq = front.seq;
            let acks = self
                .conf
                .voters
                .iter()
                .filter(|v| {
                    self.progress
                        .get(v)
                        .is_some_and(|p| p.read_acked_seq >= seq)
                })
                .count();
            if acks < self.quorum() {
                break;
            }
            let r = self.pending_reads.pop_front().expect("front");
            self.respond_read(r.index, r.ctx, r.from);
        }
    }

    fn leader_transfer(&mut self, target: NodeId) {
        if target == self.id || !self.conf.is_voter(target) || !self.progress.contains_key(&target)
        {
            return;
        }
        if self.transferee == target {
            return;
        }
        self.transferee = target;
        self.election_elapsed = 0;
        if self.progress[&target].matched == self.log.last_index() {
            self.lease_broken = true;
            self.send(Message::new(
                MessageKind::TimeoutNow,
                self.id,
                target,
                self.term,
            ));
        } else {
            self.send_append(target, true);
        }
    }

    fn apply_conf_entry(&mut self, e: &Entry) {
        // Entries were validated by the leader that proposed them; a corrupt one is a no-op
        // (it is in every replica's log, so every replica skips it alike).
        if e.index <= self.conf_index {
            return; // already in effect (applied at restart)
        }
        let Ok(cc) = codec::decode_conf_change(&e.data) else {
            return;
        };
        self.conf_index = e.index;
        if !self.conf.apply(&cc) {
            return;
        }
        self.conf_changed = true;
        if cc.node_id == self.id && !self.conf.contains(self.id) {
            // Removed: step down and stop. Tell followers the commit first.
            if self.role == Role::Leader {
                self.bcast_append();
            }
            let t = self.term;
            self.become_follower(t, NO_NODE);
            self.removed = true;
            return;
        }
        if self.role != Role::Leader {
            if self.role != Role::Follower && !self.conf.is_voter(self.id) {
                let t = self.term;
                self.become_follower(t, NO_NODE);
            }
            return;
        }
        match cc.kind {
            ConfChangeKind::AddVoter | ConfChangeKind::AddLearner => {
                let learner = cc.kind == ConfChangeKind::AddLearner;
                let next = self.log.last_index() + 1;
                match self.progress.get_mut(&cc.node_id) {
                    Some(p) => p.is_learner = learner,
                    None => {
                        let mut p = Progress::new(next, learner);
                        p.recent_active = true;
                        self.progress.insert(cc.node_id, p);
                    }
                }
                self.send_append(cc.node_id, true);
            }
            ConfChangeKind::Remove => {
                self.progress.remove(&cc.node_id);
                if self.transferee == cc.node_id {
                    self.transferee = NO_NODE;
                }
            }
        }
        // A smaller quorum may commit (or confirm reads) now.
        if self.maybe_commit() {
            self.bcast_append();
        }
        self.release_reads();
    }

    fn step_inner(&mut self, m: Message) {
        use MessageKind::*;
        // Forwarded requests carry no term.
        if matches!(m.kind, Propose | ReadIndex | TransferLeader) {
            self.step_request(m);
            return;
        }
        if m.term > self.term {
            if matches!(m.kind, Vote | PreVote) {
                let forced = m.kind == Vote && m.seq == VOTE_SEQ_TRANSFER;
                let heard_recently = (self.leader != NO_NODE || self.startup_guard)
                    && self.election_elapsed < self.cfg.election_ticks;
                // Leader lease (check-quorum) and pre-vote's rule (thesis §9.6): ignore
                // elections while a leader is known to be alive.
                let in_lease = heard_recently && (self.cfg.check_quorum || m.kind == PreVote);
                if !forced && in_lease {
                    return;
                }
            }
            match m.kind {
                PreVote => {}
                PreVoteResp if !m.reject => {}
                Append | Heartbeat | Snapshot => self.become_follower(m.term, m.from),
                _ => self.become_follower(m.term, NO_NODE),
            }
        } else if m.term < self.term {
            if (self.cfg.check_quorum || self.cfg.pre_vote) && matches!(m.kind, Append | Heartbeat)
            {
                // Tell a stale leader about the newer term so it steps down.
                let r = Message::new(AppendResp, self.id, m.from, self.term);
                self.send(r);
            } else if m.kind == PreVote {
                let mut r = Message::new(PreVoteResp, self.id, m.from, self.term);
                r.reject = true;
                self.send(r);
            }
            return;
        }
        match m.kind {
            Vote | PreVote => self.handle_vote(m),
            _ => match self.role {
                Role::Leader => self.step_leader(m),
                Role::Candidate | Role::PreCandidate => self.step_candidate(m),
                Role::Follower => self.step_follower(m),
            },
        }
    }

    fn step_request(&mut self, m: Message) {
        match m.kind {
            MessageKind::Propose => {
                if self.role == Role::Leader {
                    let ents = m.entries.into_iter().map(|e| (e.kind, e.data)).collect();
                    let _ = self.leader_propose(ents, false);
                } else if self.role == Role::Follower
                    && self.leader != NO_NODE
                    && self.leader != m.from
                {
                    let mut f = m;
                    f.to = self.leader;
                    self.send(f);
                }
            }
            MessageKind::ReadIndex => {
                if self.role == Role::Leader {
                    self.leader_read(m.context, m.from);
                }
            }
            MessageKind::TransferLeader => {
                if self.role == Role::Leader {
                    self.leader_transfer(m.index);
                }
            }
            _ => unreachable!(),
        }
    }

    fn handle_vote(&mut self, m: Message) {
        let pre = m.kind == MessageKind::PreVote;
        let can_vote = self.vote == m.from
            || (self.vote == NO_NODE && self.leader == NO_NODE)
            || (pre && m.term > self.term);
        let resp_kind = if pre {
            MessageKind::PreVoteResp
        } else {
            MessageKind::VoteResp
        };
        if can_vote && self.log.is_up_to_date(m.index, m.log_term) {
            let r = Message::new(resp_kind, self.id, m.from, m.term);
            if !pre {
                self.election_elapsed = 0;
                self.vote = m.from;
            }
            self.send(r);
        } else {
            let mut r = Message::new(resp_kind, self.id, m.from, self.term);
            r.reject = true;
            self.send(r);
        }
    }

    fn step_candidate(&mut self, m: Message) {
        use MessageKind::*;
        let my_resp = if self.role == Role::PreCandidate {
            PreVoteResp
        } else {
            VoteResp
        };
        match m.kind {
            Append => {
                self.become_follower(m.term, m.from);
                self.handle_append(m);
            }
            Heartbeat => {
                self.become_follower(m.term, m.from);
                self.handle_heartbeat(m);
            }
            Snapshot => {
                self.become_follower(m.term, m.from);
                self.handle_snapshot(m);
            }
            k if k == my_resp => match self.poll(m.from, !m.reject) {
                Some(true) => {
                    if self.role == Role::PreCandidate {
                        self.campaign(true);
                    } else {
                        self.become_leader();
                    }
                }
                Some(false) => {
                    let t = self.term;
                    self.become_follower(t, NO_NODE);
                }
                None => {}
            },
            _ => {}
        }
    }

    fn step_follower(&mut self, m: Message) {
        use MessageKind::*;
        match m.kind {
            Append => {
                self.election_elapsed = 0;
                self.leader = m.from;
                self.handle_append(m);
            }
            Heartbeat => {
                self.election_elapsed = 0;
                self.leader = m.from;
                self.handle_heartbeat(m);
            }
            Snapshot => {
                self.election_elapsed = 0;
                self.leader = m.from;
                self.handle_snapshot(m);
            }
            // Leadership transfer: campaign at once, skipping pre-vote and leases
            // (`campaign` checks that we may).
            TimeoutNow => self.campaign(true),
            ReadIndexResp => {
                self.read_states.push(ReadState {
                    index: m.index,
                    context: m.context,
                });
            }
            _ => {}
        }
    }

    fn handle_append(&mut self, m: Message) {
        let mut r = Message::new(MessageKind::AppendResp, self.id, m.from, self.term);
        if m.index < self.log.committed {
            r.index = self.log.committed;
            self.send(r);
            return;
        }
        match self.log.maybe_append(m.index, m.log_term, &m.entries) {
            Some(last_new) => {
                self.log.commit_to(m.commit.min(last_new));
                r.index = last_new;
            }
            None => {
                let hint = m.index.min(self.log.last_index());
                let (hi, ht) = self.log.find_conflict_by_term(hint, m.log_term);
                r.index = m.index;
                r.reject = true;
                r.reject_hint = hi;
                r.log_term = ht;
            }
        }
        self.send(r);
    }

    fn handle_heartbeat(&mut self, m: Message) {
        // The leader sends min(commit, our match), so this is within our log; the min only
        // guards against a confused peer.
        self.log.commit_to(m.commit.min(self.log.last_index()));
        let mut r = Message::new(MessageKind::HeartbeatResp, self.id, m.from, self.term);
        r.seq = m.seq;
        self.send(r);
    }

    fn handle_snapshot(&mut self, m: Message) {
        let Some(c) = m.snapshot else { return };
        let mut r = Message::new(MessageKind::AppendResp, self.id, m.from, self.term);
        if c.meta.index <= self.log.committed {
            self.incoming = None;
            r.index = self.log.committed;
            self.send(r);
            return;
        }
        if c.total_len > self.cfg.snapshot_bytes_max {
            return;
        }
        let same = self
            .incoming
            .as_ref()
            .is_some_and(|inc| inc.meta.index == c.meta.index && inc.meta.term == c.meta.term);
        if same {
            let inc = self.incoming.as_mut().expect("incoming");
            if c.offset == inc.buf.len() as u64 && c.total_len == inc.total_len {
                inc.buf.extend_from_slice(&c.data);
            }
        } else if c.offset == 0 {
            self.incoming = Some(IncomingSnapshot {
                meta: c.meta.clone(),
                total_len: c.total_len,
                buf: c.data.clone(),
            });
        } else {
            self.incoming = None;
        }
        let have = self.incoming.as_ref().map_or(0, |i| i.buf.len() as u64);
        let complete = self
            .incoming
            .as_ref()
            .is_some_and(|i| i.buf.len() as u64 >= i.total_len);
        if !complete {
            let mut r = Message::new(MessageKind::SnapshotResp, self.id, m.from, self.term);
            r.index = c.meta.index;
            r.seq = have;
            self.send(r);
            return;
        }
        let inc = self.incoming.take().expect("incoming");
        if inc.buf.len() as u64 != inc.total_len {
            return;
        }
        let snap = Snapshot {
            meta: inc.meta,
            data: inc.buf,
        };
        r.index = if self.restore(snap) {
            self.log.last_index()
        } else {
            self.log.committed
        };
        self.send(r);
    }

    /// Installs a leader's snapshot; false if our log already had its last entry.
    fn restore(&mut self, snap: Snapshot) -> bool {
        let meta = &snap.meta;
        if self.log.match_term(meta.index, meta.term) {
            // We already have the entries: just commit them.
            self.log.commit_to(meta.index);
            return false;
        }
        self.log.restore(meta);
        self.conf = meta.conf_state.clone();
        self.conf_index = meta.index;
        self.conf_changed = true;
        // A snapshot whose membership lacks us does not mark us removed: a joining node may
        // receive a snapshot taken before its own addition. Only applying our removal does.
        self.incoming = None;
        self.snapshot = Some(snap.clone());
        self.ready_snapshot = Some(snap);
        true
    }

    fn step_leader(&mut self, m: Message) {
        use MessageKind::*;
        let from = m.from;
        if !self.progress.contains_key(&from) {
            return;
        }
        match m.kind {
            AppendResp => {
                self.progress.get_mut(&from).expect("pr").recent_active = true;
                if !m.reject && m.index > self.log.last_index() {
                    return; // acknowledges entries we never had: a confused peer
                }
                if m.reject {
                    let probe_hint = if m.log_term > 0 {
                        self.log.find_conflict_by_term(m.reject_hint, m.log_term).0
                    } else {
                        m.reject_hint
                    };
                    let pr = self.progress.get_mut(&from).expect("pr");
                    if pr.maybe_decr_to(m.index, probe_hint) {
                        if pr.state == ProgressState::Replicate {
                            let next = pr.next;
                            pr.become_probe();
                            pr.next = next;
                        }
                        self.send_append(from, true);
                    }
                    return;
                }
                let pr = self.progress.get_mut(&from).expect("pr");
                let was_paused =
                    pr.is_paused(self.cfg.inflight_msgs_max, self.cfg.inflight_bytes_max);
                if !pr.maybe_update(m.index) {
                    return;
                }
                match pr.state {
                    ProgressState::Probe => pr.become_replicate(),
                    ProgressState::Snapshot if pr.matched >= pr.snap_index => pr.become_probe(),
                    ProgressState::Replicate => pr.free_le(m.index),
                    ProgressState::Snapshot => {}
                }
                if self.maybe_commit() {
                    self.bcast_append();
                } else if was_paused {
                    self.send_append(from, true);
                }
                while self.send_append(from, false) {}
                if self.transferee == from && self.progress[&from].matched == self.log.last_index()
                {
                    self.lease_broken = true;
                    self.send(Message::new(TimeoutNow, self.id, from, self.term));
                }
            }
            HeartbeatResp => {
                let pr = self.progress.get_mut(&from).expect("pr");
                pr.recent_active = true;
                pr.probe_sent = false;
                if pr.read_acked_seq < m.seq {
                    pr.read_acked_seq = m.seq;
                }
                // A full window whose acks were lost would stall forever: each heartbeat
                // response frees one slot so replication (or a rejection) resumes.
                if pr.state == ProgressState::Replicate
                    && pr.is_paused(self.cfg.inflight_msgs_max, self.cfg.inflight_bytes_max)
                {
                    pr.free_first();
                }
                let state = pr.state;
                let behind = pr.matched < self.log.last_index();
                if state == ProgressState::Snapshot {
                    self.send_snapshot_chunk(from);
                } else if behind {
                    self.send_append(from, true);
                }
                self.release_reads();
            }
            SnapshotResp => {
                let total = self.snapshot.as_ref().map_or(0, |s| s.data.len() as u64);
                let pr = self.progress.get_mut(&from).expect("pr");
                pr.recent_active = true;
                if pr.state != ProgressState::Snapshot
                    || pr.snap_index != m.index
                    || m.seq == pr.snap_offset
                    || m.seq > total
                {
                    return;
                }
                pr.snap_offset = m.seq;
                if m.seq < total {
                    self.send_snapshot_chunk(from);
                }
            }
            _ => {}
        }
    }
}

fn validate_message(m: &Message) -> Result<(), RaftError> {
    let bad = |s| Err(RaftError::InvalidMessage(s));
    if m.kind == MessageKind::Append {
        let mut prev_term = m.log_term;
        for (k, e) in m.entries.iter().enumerate() {
            if m.index.checked_add(k as u64 + 1) != Some(e.index) {
                return bad("append entries not contiguous after index");
            }
            if e.term < prev_term || e.term > m.term {
                return bad("append entry terms out of order");
            }
            prev_term = e.term;
        }
    }
    if let Some(c) = &m.snapshot {
        if c.offset
            .checked_add(c.data.len() as u64)
            .is_none_or(|end| end > c.total_len)
        {
            return bad("snapshot chunk beyond its total length");
        }
        if c.meta.index == 0 {
            return bad("snapshot at index 0");
        }
    }
    Ok(())
}
