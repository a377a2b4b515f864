//! The data Raft exchanges with its caller and its peers. No I/O here; the byte encoding of
//! `Entry` and `Message` lives in `codec.rs` and is drawn in docs/format.md.

/// A node id. `0` (`NO_NODE`) means "nobody" (no vote, no known leader).
pub type NodeId = u64;
/// "Nobody": no vote cast, no leader known.
pub const NO_NODE: NodeId = 0;

/// What an entry carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EntryKind {
    /// Application data (the server's request), or empty (a new leader's no-op).
    Normal,
    /// An encoded [`ConfChange`]; takes effect when handed out in `Ready::committed_entries`.
    ConfChange,
}

/// One log entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub index: u64,
    pub term: u64,
    pub kind: EntryKind,
    pub data: Vec<u8>,
}

impl Entry {
    /// Bytes this entry counts against flow-control and message-size limits: its data plus a
    /// fixed overhead, so that empty entries are not free.
    pub fn size_bytes(&self) -> u64 {
        self.data.len() as u64 + ENTRY_OVERHEAD_BYTES
    }
}

/// Fixed per-entry overhead counted by the size limits (index, term, kind, length).
pub const ENTRY_OVERHEAD_BYTES: u64 = 24;

/// What must be durable before this node may vote or acknowledge: term, vote and commit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HardState {
    pub term: u64,
    pub vote: NodeId,
    pub commit: u64,
}

/// The cluster membership: voters and learners (disjoint, each sorted ascending).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfState {
    pub voters: Vec<NodeId>,
    pub learners: Vec<NodeId>,
}

impl ConfState {
    /// A configuration of voters only.
    pub fn with_voters(voters: &[NodeId]) -> ConfState {
        let mut v = voters.to_vec();
        v.sort_unstable();
        v.dedup();
        ConfState {
            voters: v,
            learners: Vec::new(),
        }
    }

    pub fn is_voter(&self, id: NodeId) -> bool {
        self.voters.binary_search(&id).is_ok()
    }

    pub fn is_learner(&self, id: NodeId) -> bool {
        self.learners.binary_search(&id).is_ok()
    }

    pub fn contains(&self, id: NodeId) -> bool {
        self.is_voter(id) || self.is_learner(id)
    }

    /// Applies one change. Returns false (and changes nothing) when the change is a no-op or
    /// not allowed (demoting a voter to learner, which etcd 3.4 also refuses).
    pub fn apply(&mut self, cc: &ConfChange) -> bool {
        let id = cc.node_id;
        if id == NO_NODE {
            return false;
        }
        match cc.kind {
            ConfChangeKind::AddVoter => {
                if self.is_voter(id) {
                    return false;
                }
                self.learners.retain(|&l| l != id);
                insert_sorted(&mut self.voters, id);
            }
            ConfChangeKind::AddLearner => {
                if self.contains(id) {
                    return false;
                }
                insert_sorted(&mut self.learners, id);
            }
            ConfChangeKind::Remove => {
                if !self.contains(id) {
                    return false;
                }
                self.voters.retain(|&v| v != id);
                self.learners.retain(|&l| l != id);
            }
        }
        true
    }
}

fn insert_sorted(v: &mut Vec<NodeId>, id: NodeId) {
    if let Err(pos) = v.binary_search(&id) {
        v.insert(pos, id);
    }
}

/// One membership change (etcd's ConfChange v1: one node at a time).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConfChangeKind {
    /// Add a voter, or promote a learner to voter.
    AddVoter,
    /// Add a learner (receives the log, does not vote, does not count in quorums).
    AddLearner,
    /// Remove a voter or learner. A removed node steps down and never campaigns again.
    Remove,
}

/// A membership change, stored encoded in an `EntryKind::ConfChange` entry's data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfChange {
    pub kind: ConfChangeKind,
    pub node_id: NodeId,
    /// Opaque to Raft (etcd puts the member's attributes here).
    pub context: Vec<u8>,
}

/// Metadata of a snapshot: the last index and term it covers and the membership at that index.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnapshotMeta {
    pub index: u64,
    pub term: u64,
    pub conf_state: ConfState,
}

/// A snapshot: metadata plus the caller's state-machine image (opaque to Raft).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub meta: SnapshotMeta,
    pub data: Vec<u8>,
}

/// One piece of a snapshot in flight (InstallSnapshot in chunks).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnapshotChunk {
    pub meta: SnapshotMeta,
    /// Byte offset of `data` within the whole snapshot image.
    pub offset: u64,
    /// Length of the whole snapshot image in bytes.
    pub total_len: u64,
    pub data: Vec<u8>,
}

/// Message types. Field use per type is documented on [`Message`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MessageKind {
    Append = 1,
    AppendResp = 2,
    Vote = 3,
    VoteResp = 4,
    PreVote = 5,
    PreVoteResp = 6,
    Heartbeat = 7,
    HeartbeatResp = 8,
    Snapshot = 9,
    SnapshotResp = 10,
    TimeoutNow = 11,
    ReadIndex = 12,
    ReadIndexResp = 13,
    Propose = 14,
    TransferLeader = 15,
}

impl MessageKind {
    pub fn from_u8(b: u8) -> Option<MessageKind> {
        use MessageKind::*;
        Some(match b {
            1 => Append,
            2 => AppendResp,
            3 => Vote,
            4 => VoteResp,
            5 => PreVote,
            6 => PreVoteResp,
            7 => Heartbeat,
            8 => HeartbeatResp,
            9 => Snapshot,
            10 => SnapshotResp,
            11 => TimeoutNow,
            12 => ReadIndex,
            13 => ReadIndexResp,
            14 => Propose,
            15 => TransferLeader,
            _ => return None,
        })
    }
}

/// `Message::seq` value on a `Vote` that a leadership transfer started: the voter ignores its
/// leader lease (the old leader asked for this election).
pub const VOTE_SEQ_TRANSFER: u64 = 1;

/// A message between peers.
///
/// Field use by kind:
/// - `Append`: `index`/`log_term` = the entry preceding `entries`; `commit` = leader's commit.
/// - `AppendResp`: success: `index` = last index the follower now matches. Reject: `index` = the
///   rejected `Append::index`, `reject_hint`/`log_term` = the follower's guess of the last index
///   that may match (the largest index `<= min(index, last)` whose term `<= ` the leader's
///   `log_term`) and its term, for fast backtracking.
/// - `Vote`/`PreVote`: `index`/`log_term` = candidate's last entry; `seq == VOTE_SEQ_TRANSFER`
///   marks an election forced by leadership transfer. A pre-vote carries the term the
///   candidate *would* use (current + 1) and changes no one's term.
/// - `VoteResp`/`PreVoteResp`: `reject`.
/// - `Heartbeat`: `commit` = min(leader commit, follower's match); `seq` = the leader's latest
///   ReadIndex sequence, echoed by `HeartbeatResp::seq`.
/// - `Snapshot`: `snapshot` = one chunk. `SnapshotResp`: `index` = snapshot index, `seq` = the
///   next byte offset the follower expects.
/// - `TimeoutNow`: campaign now (leadership transfer).
/// - `ReadIndex`: follower to leader, `context` = the caller's read ctx. `ReadIndexResp`:
///   `index` = read index, `context` echoed.
/// - `Propose`: follower forwards `entries` (index/term unset) to the leader.
/// - `TransferLeader`: follower forwards a transfer request; `index` = transferee id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub kind: MessageKind,
    pub from: NodeId,
    pub to: NodeId,
    pub term: u64,
    pub log_term: u64,
    pub index: u64,
    pub commit: u64,
    pub reject: bool,
    pub reject_hint: u64,
    pub seq: u64,
    pub context: Vec<u8>,
    pub entries: Vec<Entry>,
    pub snapshot: Option<SnapshotChunk>,
}

impl Message {
    /// A message with every optional field empty.
    pub fn new(kind: MessageKind, from: NodeId, to: NodeId, term: u64) -> Message {
        Message {
            kind,
            from,
            to,
            term,
            log_term: 0,
            index: 0,
            commit: 0,
            reject: false,
            reject_hint: 0,
            seq: 0,
            context: Vec::new(),
            entries: Vec::new(),
            snapshot: None,
        }
    }
}

/// The role of a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    Follower,
    PreCandidate,
    Candidate,
    Leader,
}

/// Volatile state the caller may want to observe (not persisted).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SoftState {
    pub leader: NodeId,
    pub role: Role,
}

/// The answer to a `read_index` request: once the caller has applied up to `index`, a read
/// made on its state machine is linearizable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadState {
    pub index: u64,
    pub context: Vec<u8>,
}
