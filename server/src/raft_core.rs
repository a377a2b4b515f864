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
//! Every `snapshot_count` applied entries or requests (whichever comes first: an entry carries a
//! batch of requests, etcd's entries one each) the store is committed durably, a snapshot marker
//! is logged, WAL segments below it are released and Raft's in-memory log is compacted.
//!
//! A lone voter groups its commits (`hold`, `linger_or_release`): while its sync is in flight,
//! client proposals wait; after the sync's callers are answered it lingers briefly (at most
//! `LINGER_MAX`, half the last sync) for their next requests, so one fdatasync carries most of
//! the clients instead of every other sync carrying half of them.
//!
//! Under light load (one entry, and no other client proposal or linearizable read since the
//! previous append) a lone voter appends with `GroupWal::append_inline`: the write and fdatasync run
//! on this thread if the WAL's I/O thread is idle, blocking the core for one sync but saving
//! the two thread wake-ups a lone client's put would otherwise wait for.

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
    ConfChange, ConfChangeKind, ConfState, Entry, EntryKind, HardState, Message, PersistedState,
    RawNode, Ready, Role, Snapshot, SnapshotMeta,
};
use ferrite_wal::{GroupWal, WalError, WalRecord};
use futures_channel::{mpsc, oneshot};
use futures_util::StreamExt;
use prost::Message as _;

use crate::apply::{self, ApplyCtx};
use crate::errors::EtcdError;
use crate::internal::{
    InternalRequest, MemberAttr, Op, RaftBatch, MEMBER_ATTR_CLUSTER_VERSION, MEMBER_ATTR_PEER_URLS,
    MEMBER_ATTR_PUBLISH,
};
use crate::lessor::LEASES_META_KEY;
use crate::membership::{ConfChangeCtx, MemberPb, Membership, MEMBERSHIP_META_KEY};
use crate::state::{ApplyReply, CoreMsg, MemberChange, Shared};
use crate::transport::Transport;
use crate::watch_hub::HubBatch;

/// Metadata key of the last applied Raft index (u64 LE).
pub const APPLIED_INDEX_META_KEY: &[u8] = b"ferrite/applied_index";
/// The cluster version set through Raft (`MEMBER_ATTR_CLUSTER_VERSION`).
pub const CLUSTER_VERSION_META_KEY: &[u8] = b"ferrite/cluster_version";
/// The cluster version a leader sets (etcd 3.4 stores "3.4.0").
const CLUSTER_VERSION: &[u8] = b"3.4.0";
/// Whether the store holds the cluster version a leader set (`MEMBER_ATTR_CLUSTER_VERSION`).
fn cluster_version_set(shared: &Shared) -> bool {
    shared
        .store
        .read()
        .get_meta(CLUSTER_VERSION_META_KEY)
        .is_some()
}
/// Metadata key of the applied term (u64 LE), for the snapshot marker.
pub const APPLIED_TERM_META_KEY: &[u8] = b"ferrite/applied_term";
/// Metadata key of the active alarms.
pub const ALARMS_META_KEY: &[u8] = b"ferrite/alarms";
/// Largest payload of one proposal batch entry.
pub const PROPOSAL_BATCH_BYTES_MAX: usize = 2 * 1024 * 1024;
/// Requests per proposal batch entry.
pub const PROPOSAL_BATCH_REQUESTS_MAX: usize = 4096;
/// Peer messages stepped per loop turn before the loop looks at its other inputs.
pub const PEER_MESSAGES_PER_TURN_MAX: usize = 1024;
/// Leases revoked per expiry check.
pub const LEASE_EXPIRE_PER_TICK_MAX: usize = 500;
/// A lease whose revoke was proposed this long ago without effect is proposed again.
pub const LEASE_REVOKE_RETRY: Duration = Duration::from_secs(3);

/// The snapshot image is built in memory (and held by Raft to send to followers): a store whose
/// image is larger than this cannot snapshot (documented limit).
pub const SNAPSHOT_IMAGE_BYTES_MAX: u64 = 1 << 30;
/// A member retries publishing its attributes this often until it succeeds.
pub const PUBLISH_RETRY: Duration = Duration::from_millis(500);

/// A lone voter with at least this many callers answered by one sync lingers before its next
/// sync (see `RaftCore::linger_or_release`).
pub const LINGER_ANSWERED_MIN: usize = 4;
/// Longest linger; it is also at most half the last sync's duration.
pub const LINGER_MAX: Duration = Duration::from_millis(2);
/// A lone voter under light load writes and syncs a Ready of at most this many entries on
/// the Raft core's own thread when the WAL's I/O thread is idle (`GroupWal::append_inline`):
/// one client's put skips two thread wake-ups. "Light": no more client proposals or
/// linearizable reads arrived since the previous append started than this one proposal, so
/// little waits behind the blocked core. What can wait: serializable reads on core 0's own
/// connections (they never reach the Raft core), for at most one sync (measured in
/// docs/benchmarks.md, "Session 7").
pub const INLINE_APPEND_ENTRIES_MAX: usize = 1;

/// A lone voter (the only member) drops applied entries from Raft's in-memory log once this
/// many requests were applied since the last drop: nobody can ask for them (no follower; a
/// member added later gets a snapshot image) and they are in the WAL until the next
/// `--snapshot-count` snapshot. Keeping them until then held up to `--snapshot-count`
/// requests (~27 MiB of a 1M-key load of 256 B values; docs/benchmarks.md, "Performance pass 3").
pub const SOLO_LOG_REQUESTS_MAX: u64 = 1024;

/// How often revision-mode auto-compaction checks (etcd 3.4: 5 minutes).
pub const AUTO_COMPACTION_REVISION_CHECK: Duration = Duration::from_secs(300);

/// First byte of a WAL entry's data: the Raft entry kind (the rest is the entry's data).
pub const WAL_ENTRY_KIND_NORMAL: u8 = 0;
pub const WAL_ENTRY_KIND_CONF_CHANGE: u8 = 1;

pub struct CoreOptions {
    pub tick: Duration,
    pub bootstrap: Bootstrap,
    /// The store's file (a snapshot image is restored next to it, then renamed over it).
    pub db_path: std::path::PathBuf,
    /// The lessor's minimum TTL (rebuilt from an installed image).
    pub lease_ttl_min: i64,
    /// `--force-new-cluster`: at restart, commit the removal of every other member.
    pub force_new_cluster: bool,
    /// `--auto-compaction-mode` / `--auto-compaction-retention`.
    pub auto_compaction: crate::config::AutoCompaction,
    pub election_ticks: u32,
    pub snapshot_count: u64,
    pub pre_vote: bool,
    /// `--strict-reconfig-check`: refuse member changes that would leave too few started or
    /// connected voters (etcd's `mayAddMember` / `mayRemoveMember` / `mayPromoteMember`).
    pub strict_reconfig_check: bool,
    /// The peer client TLS configuration (for the removal check's cluster-info request to
    /// `https://` peer URLs).
    pub peer_client_tls: Option<std::sync::Arc<ferrite_auth::rustls::ClientConfig>>,
}

/// How long a peer must have been connected before this member counts it as healthy for a
/// reconfiguration (etcd's `HealthInterval`).
pub const RECONFIG_CONNECTED_MIN: Duration = Duration::from_secs(5);

/// A voter is started once it has published its name (etcd's `Member.IsStarted`).
fn started(m: &Membership, id: u64) -> bool {
    m.members.get(&id).is_some_and(|mm| !mm.name.is_empty())
}

/// etcd's `IsReadyToAddVotingMember`: with the new voter counted (and not started), the
/// started voters are still a quorum; a 1-member cluster may always grow to 2.
fn ready_to_add_voter(m: &Membership) -> bool {
    let voters = m.voters();
    let started_n = voters.iter().filter(|&&id| started(m, id)).count();
    let members_n = voters.len() + 1;
    (started_n == 1 && members_n == 2) || started_n > members_n / 2
}

/// etcd's `IsReadyToRemoveVotingMember`: without `id`, the started voters are a quorum of
/// the rest.
fn ready_to_remove_voter(m: &Membership, id: u64) -> bool {
    let rest: Vec<u64> = m.voters().into_iter().filter(|&v| v != id).collect();
    let started_n = rest.iter().filter(|&&v| started(m, v)).count();
    started_n > rest.len() / 2
}

/// etcd's `IsReadyToPromoteMember`: the learner counted as a started voter, the started
/// voters are a quorum.
fn ready_to_promote(m: &Membership) -> bool {
    let voters = m.voters();
    let started_n = 1 + voters.iter().filter(|&&id| started(m, id)).count();
    let members_n = voters.len() + 1;
    started_n > members_n / 2
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

/// How a fresh data dir starts (ignored once the WAL holds anything, as etcd ignores
/// `--initial-cluster` once the data dir exists).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bootstrap {
    /// `--initial-cluster-state=new`: log one AddVoter per initial member (the membership in
    /// `Shared::membership`).
    New,
    /// `--initial-cluster-state=existing`: start with an empty log; the leader sends entries or
    /// a snapshot.
    Join,
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
    drop(view);
    let id = shared.member_id;
    let membership = shared.members();
    let fresh = rec.hard_state.is_none() && rec.entries.is_empty() && rec.snapshot.is_none();
    let persisted = if fresh {
        if applied != 0 {
            return Err(format!(
                "the WAL in {} is empty but the store has applied index {applied}: the WAL was lost",
                wal_dir.display()
            ));
        }
        let st = match opts.bootstrap {
            Bootstrap::New => bootstrap_state(&membership, id),
            Bootstrap::Join => PersistedState::default(),
        };
        if !st.entries.is_empty() {
            let mut recs: Vec<WalRecord> = st.entries.iter().map(wal_record_of).collect();
            recs.push(hs_record(&st.hard_state));
            wal.append(recs)
                .await
                .map_err(|e| format!("writing the bootstrap entries: {e}"))?;
        }
        st
    } else {
        let snapshot = match rec.snapshot {
            Some((index, term)) => Snapshot {
                meta: SnapshotMeta {
                    index,
                    term,
                    // The membership as of `applied` (>= index): replaying the committed changes
                    // after `index` on top of it is idempotent (see membership.rs).
                    conf_state: conf_state_of(&membership, id),
                },
                // The image sent to a follower that needs the compacted entries: the store as
                // of `applied` (a follower skips entries up to the image's applied index).
                data: snapshot_image(&shared, &membership)?,
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
        // The store only holds applied entries, and only committed entries are applied: the
        // commit index is at least the applied one (bounded by the log), even when the last
        // commit-only hard state was not written yet (it rides with the next append, see
        // `unsynced_hard_state`). --force-new-cluster keeps exactly the committed entries.
        let log_last = entries.last().map_or(snapshot.meta.index, |e| e.index);
        let commit = hs.commit.max(applied.min(log_last));
        PersistedState {
            hard_state: HardState {
                term: hs.term,
                vote: hs.vote,
                commit,
            },
            snapshot,
            entries,
        }
    };
    let mut persisted = persisted;
    if opts.force_new_cluster && !fresh {
        force_new_cluster(&wal, &mut persisted, &membership, id).await?;
    }
    let last_index = persisted
        .entries
        .last()
        .map_or(persisted.snapshot.meta.index, |e| e.index);
    if applied > last_index.max(persisted.hard_state.commit) && !fresh {
        tracing::warn!(
            applied,
            last_index,
            "store applied index is past the WAL's last index (installed snapshot image)"
        );
    }
    let mut cfg = ferrite_raft::Config::new(id);
    cfg.election_ticks = opts.election_ticks.max(2);
    cfg.heartbeat_ticks = 1;
    cfg.pre_vote = opts.pre_vote;
    cfg.applied = applied.max(persisted.snapshot.meta.index).min(
        persisted
            .hard_state
            .commit
            .max(persisted.snapshot.meta.index),
    );
    cfg.seed = id;
    let commit_at_start = persisted.hard_state.commit;
    let mut node = RawNode::new(cfg, persisted).map_err(|e| format!("starting raft: {e}"))?;
    if node.conf_state().voters == [id] {
        // A single voter need not wait an election timeout.
        node.campaign_now();
    }
    shared.raft_index.store(commit_at_start, Ordering::Release);
    shared.applied_index.store(applied, Ordering::Release);
    let mut transport = transport;
    for m in membership.members.values() {
        if m.id != id {
            transport.set_peer(m.id, m.peer_urls.clone());
        }
    }
    Ok(RaftCore {
        shared: shared.clone(),
        writer: shared.store.writer(),
        node,
        wal: Rc::new(wal),
        transport,
        opts,
        waiters: HashMap::new(),
        member_waiters: HashMap::new(),
        deadlines: VecDeque::new(),
        next_waiter: boot_id_base(),
        queued: VecDeque::new(),
        proposals_since_append: 0,
        read_ctx_next: 1,
        read_waiting: HashMap::new(),
        read_parked: BTreeMap::new(),
        reads_pending: Vec::new(),
        move_waiters: Vec::new(),
        applied,
        compaction_samples: VecDeque::new(),
        next_compaction_check: Instant::now(),
        last_snapshot_index: last_index.min(applied),
        requests_since_snapshot: 0,
        requests_in_memory_log: 0,
        durable_index: last_index,
        force_snapshot: false,
        publish_waiter: None,
        store_sync: None,
        cluster_version_set: cluster_version_set(&shared),
        cluster_version_retry_at: Instant::now(),
        publish_applied: false,
        log_last_at_start: last_index,
        publish_retry_at: Instant::now(),
        member_answers: Vec::new(),
        leaderless_since: None,
        removal_check_at: Instant::now(),
        unsynced_hard_state: None,
        last_append_at: Instant::now(),
        hold: false,
        linger_until: None,
        answered_since_sync: 0,
        last_sync: Duration::ZERO,
    })
}

/// etcd's `--force-new-cluster`: drop the uncommitted tail and commit, at once, the removal of
/// every other member (logged like any entry), so this member restarts as a one-voter cluster
/// keeping its data. `membership` is already rewritten to this member alone.
async fn force_new_cluster(
    wal: &GroupWal,
    st: &mut PersistedState,
    membership: &Membership,
    id: u64,
) -> Result<(), String> {
    let commit = st.hard_state.commit.max(st.snapshot.meta.index);
    st.entries.retain(|e| e.index <= commit);
    // Raft's membership at `commit`: the snapshot's plus the committed changes after it.
    let mut conf = st.snapshot.meta.conf_state.clone();
    for e in &st.entries {
        if e.kind == EntryKind::ConfChange {
            if let Ok(cc) = ferrite_raft::decode_conf_change(&e.data) {
                conf.apply(&cc);
            }
        }
    }
    let term = st.hard_state.term.max(1);
    let mut next = commit + 1;
    let mut added = Vec::new();
    let others: Vec<u64> = conf
        .voters
        .iter()
        .chain(conf.learners.iter())
        .copied()
        .filter(|v| *v != id)
        .collect();
    let mut ensure: Vec<Entry> = Vec::new();
    if !conf.is_voter(id) {
        ensure.push(Entry {
            index: 0,
            term,
            kind: EntryKind::ConfChange,
            data: ferrite_raft::encode_conf_change(&ConfChange {
                kind: ConfChangeKind::AddVoter,
                node_id: id,
                context: ConfChangeCtx {
                    waiter: 0,
                    proposer: 0,
                    member: membership.members.get(&id).cloned(),
                }
                .encode_to_vec(),
            }),
        });
    }
    for o in others {
        ensure.push(Entry {
            index: 0,
            term,
            kind: EntryKind::ConfChange,
            data: ferrite_raft::encode_conf_change(&ConfChange {
                kind: ConfChangeKind::Remove,
                node_id: o,
                context: Vec::new(),
            }),
        });
    }
    for mut e in ensure {
        e.index = next;
        next += 1;
        added.push(e);
    }
    if added.is_empty() {
        return Ok(());
    }
    let last = next - 1;
    let hs = HardState {
        term,
        vote: 0,
        commit: last,
    };
    let mut recs: Vec<WalRecord> = added.iter().map(wal_record_of).collect();
    recs.push(hs_record(&hs));
    wal.append(recs)
        .await
        .map_err(|e| format!("logging the forced membership: {e}"))?;
    tracing::warn!(
        "local-member-id" = format!("{id:x}"),
        "commit-index" = last,
        "forcing restart member as a one-member cluster (--force-new-cluster)"
    );
    st.entries.extend(added);
    st.hard_state = hs;
    Ok(())
}

/// The bootstrap log of a new cluster: one committed AddVoter per initial member at indexes
/// `1..=n` (sorted by id), each carrying the member in its context, as etcd's bootstrap does.
pub fn bootstrap_state(membership: &Membership, local: u64) -> PersistedState {
    assert!(
        membership.members.contains_key(&local),
        "the local member is in the initial cluster"
    );
    let entries: Vec<Entry> = membership
        .members
        .values()
        .enumerate()
        .map(|(k, m)| Entry {
            index: k as u64 + 1,
            term: 1,
            kind: EntryKind::ConfChange,
            data: ferrite_raft::encode_conf_change(&ConfChange {
                kind: ConfChangeKind::AddVoter,
                node_id: m.id,
                context: ConfChangeCtx {
                    waiter: 0,
                    proposer: 0,
                    member: Some(m.clone()),
                }
                .encode_to_vec(),
            }),
        })
        .collect();
    PersistedState {
        hard_state: HardState {
            term: 1,
            vote: 0,
            commit: entries.len() as u64,
        },
        snapshot: Snapshot::default(),
        entries,
    }
}

/// Raft's membership from ours.
pub fn conf_state_of(m: &Membership, local: u64) -> ConfState {
    let mut cs = ConfState::default();
    for mm in m.members.values() {
        if mm.is_learner {
            cs.learners.push(mm.id);
        } else {
            cs.voters.push(mm.id);
        }
    }
    if m.members.is_empty() {
        cs.voters.push(local);
    }
    cs
}

/// The store's snapshot image for followers, or nothing for a lone member (nobody to send it to;
/// a member added later forces a fresh snapshot with an image, see `force_snapshot`).
fn snapshot_image(shared: &Shared, m: &Membership) -> Result<Vec<u8>, String> {
    if m.members.len() <= 1 {
        return Ok(Vec::new());
    }
    let mut buf = Vec::new();
    shared
        .store
        .write_snapshot(&mut buf)
        .map_err(|e| format!("writing the snapshot image: {e}"))?;
    if buf.len() as u64 > SNAPSHOT_IMAGE_BYTES_MAX {
        return Err(format!(
            "the snapshot image is {} bytes, above ferrite's in-memory limit of {} bytes",
            buf.len(),
            SNAPSHOT_IMAGE_BYTES_MAX
        ));
    }
    Ok(buf)
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
    /// Membership changes waiting to be applied (answered with the member id).
    member_waiters: HashMap<u64, MemberReply>,
    /// (deadline, waiter id) in arrival order: a waiter still present at its deadline is
    /// answered "request timed out" and dropped.
    deadlines: VecDeque<(Instant, u64)>,
    next_waiter: u64,
    /// Proposals not yet handed to Raft (no leader yet).
    queued: VecDeque<InternalRequest>,
    /// Client proposals and linearizable reads received since the last WAL append started
    /// (for the inline rule: a core blocked in fdatasync serves neither).
    proposals_since_append: usize,
    read_ctx_next: u64,
    /// ReadIndex context -> callers waiting for its read state.
    read_waiting: HashMap<u64, (Instant, Vec<ReadWaiter>)>,
    /// Read index -> callers waiting for apply to reach it.
    read_parked: BTreeMap<u64, Vec<ReadWaiter>>,
    /// Reads waiting for a leader to be known.
    reads_pending: Vec<ReadWaiter>,
    /// MoveLeader callers: (target, deadline, reply).
    move_waiters: Vec<(u64, Instant, UnitReply)>,
    applied: u64,
    /// (time, revision) samples for periodic auto-compaction.
    compaction_samples: VecDeque<(Instant, i64)>,
    next_compaction_check: Instant,
    last_snapshot_index: u64,
    /// Requests applied since the last snapshot (an entry carries a batch of them).
    requests_since_snapshot: u64,
    /// Requests applied since Raft's in-memory log was last compacted (`compact_solo_log`).
    requests_in_memory_log: u64,
    /// Highest log index known durable in the WAL.
    durable_index: u64,
    /// Take a snapshot (with an image) at the next opportunity: a member was added while
    /// Raft's snapshot had no image.
    force_snapshot: bool,
    /// Waiter id of this member's pending publish.
    publish_waiter: Option<u64>,
    /// The cluster version entry has been applied (`maybe_set_cluster_version`).
    cluster_version_set: bool,
    /// A leader proposes the cluster version again after this if it was not applied.
    cluster_version_retry_at: Instant,
    /// A forced durable store commit whose fdatasync runs on a `store-sync` thread
    /// (`sync_store_in_background`): its result arrives here.
    store_sync: Option<std::sync::mpsc::Receiver<std::io::Result<ferrite_btree::SyncedCommit>>>,
    /// This member's publish entry was applied in the batch being applied: `shared.published`
    /// is raised only after that batch's store commit, so a client served from then on sees
    /// the publish in every read (Maintenance.Hash included).
    publish_applied: bool,
    /// The last log index found at start: entries after it were proposed in this run.
    log_last_at_start: u64,
    publish_retry_at: Instant,
    leaderless_since: Option<Instant>,
    removal_check_at: Instant,
    /// Membership answers of the slice being applied (sent after its commit).
    member_answers: Vec<(MemberReply, Result<u64, EtcdError>)>,
    /// The latest hard state not yet logged (it only moved the commit index). It rides with
    /// the next append, or is logged on its own once the log has been idle for a tick (so a
    /// member's commit index reaches the disk soon, as etcd writes it with every Ready: a
    /// restart with --force-new-cluster keeps exactly what this member knew was committed).
    unsynced_hard_state: Option<HardState>,
    /// When the last append (entries or hard state) was started.
    last_append_at: Instant,
    /// Group commit for a lone voter: while its sync is in flight (and while lingering after
    /// it), client proposals wait in `queued` instead of going into Raft's next `Ready`.
    hold: bool,
    /// Lingering until then (or until most answered callers have sent their next request).
    linger_until: Option<Instant>,
    /// Local callers answered since the last held sync was taken.
    answered_since_sync: usize,
    /// Duration of the last WAL sync (append to durable).
    last_sync: Duration,
}

type MemberReply = oneshot::Sender<Result<u64, EtcdError>>;
type UnitReply = oneshot::Sender<Result<(), EtcdError>>;
/// A linearizable read waiting: (deadline, reply).
type ReadWaiter = (Instant, oneshot::Sender<Result<(), EtcdError>>);

type AppendFuture = Pin<Box<dyn Future<Output = Result<(), WalError>>>>;

enum Wake {
    Msg(Option<CoreMsg>),
    Peer(Option<Message>),
    Tick,
    Linger,
    Synced(Result<(), WalError>),
    /// The idle flush of a commit-only hard state is durable.
    HardStateFlushed(Result<(), WalError>),
}

impl RaftCore {
    /// Runs the loop. `peer_rx` carries Raft messages from the peer transport (none for a
    /// member that has no peer listener).
    pub async fn run(
        mut self,
        mut rx: mpsc::UnboundedReceiver<CoreMsg>,
        mut peer_rx: Option<mpsc::UnboundedReceiver<Message>>,
    ) {
        let mut ticker = glommio::timer::Timer::new(self.opts.tick);
        let mut ticker: Pin<&mut glommio::timer::Timer> = Pin::new(&mut ticker);
        let mut in_flight: Option<(Ready, AppendFuture)> = None;
        let mut closed = false;
        let mut linger_timer: Option<Pin<Box<glommio::timer::Timer>>> = None;
        let mut hs_flush: Option<AppendFuture> = None;
        self.shared.ready.store(true, Ordering::Release);
        loop {
            if in_flight.is_none() && !self.node.has_ready() && self.hold {
                match self.linger_or_release() {
                    Some(d) if linger_timer.is_none() => {
                        linger_timer = Some(Box::pin(glommio::timer::Timer::new(d)))
                    }
                    Some(_) => {}
                    None => linger_timer = None,
                }
            }
            // Take a Ready if possible, start its sync and apply what is already durable.
            if in_flight.is_none() && self.node.has_ready() {
                let mut rd = self.node.ready();
                self.on_soft_state(&rd);
                let mut recs: Vec<WalRecord> = Vec::new();
                if let Some(snap) = rd.snapshot.take() {
                    // Install the image first (the store is then durable at its applied index),
                    // then log the marker: a crash in between restarts from the image.
                    self.install_snapshot(&snap);
                    recs.push(WalRecord::Snapshot {
                        index: snap.meta.index,
                        term: snap.meta.term,
                    });
                    self.durable_index = self.durable_index.min(snap.meta.index);
                }
                if let Some(first) = rd.entries.first() {
                    // Entries from `first` on supersede what the WAL holds there.
                    self.durable_index = self.durable_index.min(first.index - 1);
                }
                recs.extend(rd.entries.iter().map(wal_record_of));
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
                    if self.solo_leader() {
                        self.hold = true;
                        self.answered_since_sync = 0;
                    }
                    // Light load: no more client proposals or linearizable reads arrived since
                    // the previous append started than this one proposal (see
                    // `INLINE_APPEND_ENTRIES_MAX`).
                    let light = self.proposals_since_append <= 1;
                    self.proposals_since_append = 0;
                    // An inline append has written and synced before `append_inline` returns.
                    let started = Instant::now();
                    let append: AppendFuture = if self.solo_leader()
                        && light
                        && rd.entries.len() <= INLINE_APPEND_ENTRIES_MAX
                    {
                        Box::pin(self.wal.append_inline(recs))
                    } else {
                        Box::pin(self.wal.append(recs))
                    };
                    self.last_append_at = started;
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
                let peer_rx = &mut peer_rx;
                let linger_timer = &mut linger_timer;
                let hs_flush = &mut hs_flush;
                std::future::poll_fn(|cx| {
                    if let Some((_, fut)) = in_flight.as_mut() {
                        if let Poll::Ready(r) = fut.as_mut().poll(cx) {
                            return Poll::Ready(Wake::Synced(r));
                        }
                    }
                    if let Some(fut) = hs_flush.as_mut() {
                        if let Poll::Ready(r) = fut.as_mut().poll(cx) {
                            *hs_flush = None;
                            return Poll::Ready(Wake::HardStateFlushed(r));
                        }
                    }
                    if let Some(p) = peer_rx.as_mut() {
                        if let Poll::Ready(m) = p.poll_next_unpin(cx) {
                            return Poll::Ready(Wake::Peer(m));
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
                    if let Some(t) = linger_timer.as_mut() {
                        if t.as_mut().poll(cx).is_ready() {
                            *linger_timer = None;
                            return Poll::Ready(Wake::Linger);
                        }
                    }
                    Poll::Pending
                })
                .await
            };
            match wake {
                Wake::Synced(r) => {
                    let (mut rd, _) = in_flight.take().expect("a sync was in flight");
                    if let Err(e) = r {
                        self.wal_failed(e);
                    }
                    if let Some(last) = rd.entries.last() {
                        self.durable_index = last.index;
                        // No other append starts while one is in flight: `last_append_at` is
                        // this sync's start.
                        self.last_sync = self.last_append_at.elapsed();
                    }
                    self.transport.send(std::mem::take(&mut rd.messages));
                    let rest = std::mem::take(&mut rd.committed_entries);
                    self.apply_entries(rest);
                    for rs in std::mem::take(&mut rd.read_states) {
                        self.on_read_state(rs.index, &rs.context);
                    }
                    self.node.advance();
                    self.publish_status();
                    self.check_move_leader();
                    if self.node.is_removed() {
                        self.on_removed();
                    }
                    self.maybe_snapshot().await;
                }
                // The loop's top decides whether the linger is over.
                Wake::Linger => {}
                Wake::HardStateFlushed(r) => {
                    if let Err(e) = r {
                        self.wal_failed(e);
                    }
                }
                Wake::Msg(None) => closed = true,
                Wake::Peer(None) => peer_rx = None,
                Wake::Peer(Some(m)) => {
                    self.step(m);
                    if let Some(p) = peer_rx.as_mut() {
                        for _ in 0..PEER_MESSAGES_PER_TURN_MAX {
                            match p.try_recv() {
                                Ok(m) => self.step(m),
                                _ => break,
                            }
                        }
                    }
                    self.propose_queued();
                }
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
                    self.proposals_since_append += batch.len() + reads.len();
                    self.queued.extend(batch);
                    self.propose_queued();
                    if !reads.is_empty() {
                        self.start_read(reads);
                    }
                }
                Wake::Tick => {
                    ticker.set(glommio::timer::Timer::new(self.opts.tick));
                    self.sync_store_in_background();
                    self.node.tick();
                    for id in self.transport.take_unreachable() {
                        self.node.report_unreachable(id);
                    }
                    self.propose_queued();
                    self.retry_reads();
                    self.expire_waiters();
                    self.maybe_publish();
                    self.maybe_set_cluster_version();
                    self.maybe_check_removed();
                    self.expire_leases();
                    self.auto_compact();
                    // An idle log: write the commit-only hard state on its own.
                    if hs_flush.is_none()
                        && in_flight.is_none()
                        && self.last_append_at.elapsed() >= self.opts.tick
                    {
                        if let Some(hs) = self.unsynced_hard_state.take() {
                            self.last_append_at = Instant::now();
                            hs_flush = Some(Box::pin(self.wal.append(vec![hs_record(&hs)])));
                        }
                    }
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
            CoreMsg::Propose { op, caller, reply } => {
                let id = self.new_waiter_id();
                self.waiters.insert(id, reply);
                let (username, auth_revision) =
                    caller.map_or((String::new(), 0), |c| (c.username, c.revision));
                batch.push(InternalRequest {
                    id,
                    member_id: self.shared.member_id,
                    op: Some(op),
                    username,
                    auth_revision,
                    member_attr: None,
                });
            }
            CoreMsg::ReadIndex { reply } => reads.push(reply),
            CoreMsg::Member { change, reply } => self.member_change(change, reply),
            CoreMsg::MoveLeader { target, reply } => self.move_leader(target, reply),
        }
    }

    /// A new waiter id, with its deadline (etcd's request timeout) queued.
    fn new_waiter_id(&mut self) -> u64 {
        let id = self.next_waiter;
        self.next_waiter += 1;
        self.deadlines
            .push_back((Instant::now() + self.shared.limits.request_timeout, id));
        id
    }

    fn step(&mut self, m: Message) {
        if let Err(e) = self.node.step(m) {
            tracing::warn!(error = %e, "dropped an invalid raft message");
        }
    }

    /// Validates a Cluster API request against the applied membership (etcd's checks and
    /// errors) and proposes it.
    fn member_change(&mut self, change: MemberChange, reply: MemberReply) {
        let m = self.shared.members();
        let leader = self.node.role() == Role::Leader;
        let check = |id: u64| -> Result<&MemberPb, EtcdError> {
            if m.removed.contains(&id) {
                return Err(EtcdError::IdRemoved);
            }
            m.members.get(&id).ok_or(EtcdError::MemberNotFound)
        };
        let (cc, attr) = match change {
            MemberChange::Add {
                peer_urls,
                is_learner,
            } => {
                // etcd checks the quorum before proposing, and the URLs only when applying.
                if let Err(e) = self.may_add_member(&m, is_learner) {
                    let _ = reply.send(Err(e));
                    return;
                }
                if m.peer_url_taken(&peer_urls, 0) {
                    let _ = reply.send(Err(EtcdError::PeerUrlExists));
                    return;
                }
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                let id =
                    crate::membership::member_id(&peer_urls, &self.shared.cluster_token, Some(now));
                if m.members.contains_key(&id) {
                    let _ = reply.send(Err(EtcdError::MemberExists));
                    return;
                }
                if m.removed.contains(&id) {
                    let _ = reply.send(Err(EtcdError::IdRemoved));
                    return;
                }
                let mut urls = peer_urls;
                urls.sort();
                let member = MemberPb {
                    id,
                    name: String::new(),
                    peer_urls: urls,
                    client_urls: Vec::new(),
                    is_learner,
                };
                let kind = if is_learner {
                    ConfChangeKind::AddLearner
                } else {
                    ConfChangeKind::AddVoter
                };
                ((kind, member), None)
            }
            MemberChange::Remove { id } => match check(id) {
                Err(e) => {
                    let _ = reply.send(Err(e));
                    return;
                }
                Ok(mm) => {
                    if let Err(e) = self.may_remove_member(&m, mm) {
                        let _ = reply.send(Err(e));
                        return;
                    }
                    ((ConfChangeKind::Remove, mm.clone()), None)
                }
            },
            MemberChange::Promote { id } => match check(id) {
                Err(e) => {
                    let _ = reply.send(Err(e));
                    return;
                }
                Ok(mm) if !mm.is_learner => {
                    let _ = reply.send(Err(EtcdError::NotLearner));
                    return;
                }
                Ok(mm) => {
                    if leader && !self.learner_in_sync(id) {
                        let _ = reply.send(Err(EtcdError::LearnerNotReady));
                        return;
                    }
                    if self.opts.strict_reconfig_check && !ready_to_promote(&m) {
                        let _ = reply.send(Err(EtcdError::NotEnoughStartedMembers));
                        return;
                    }
                    let mut mm = mm.clone();
                    mm.is_learner = false;
                    ((ConfChangeKind::AddVoter, mm), None)
                }
            },
            MemberChange::UpdatePeerUrls { id, peer_urls } => match check(id) {
                Err(e) => {
                    let _ = reply.send(Err(e));
                    return;
                }
                Ok(mm) => {
                    if m.peer_url_taken(&peer_urls, id) {
                        let _ = reply.send(Err(EtcdError::PeerUrlExists));
                        return;
                    }
                    let mut mm = mm.clone();
                    mm.peer_urls = peer_urls;
                    mm.peer_urls.sort();
                    (
                        (ConfChangeKind::AddVoter, mm.clone()),
                        Some(MEMBER_ATTR_PEER_URLS),
                    )
                }
            },
            MemberChange::Publish { name, client_urls } => {
                let mm = MemberPb {
                    id: self.shared.member_id,
                    name,
                    peer_urls: Vec::new(),
                    client_urls,
                    is_learner: false,
                };
                ((ConfChangeKind::AddVoter, mm), Some(MEMBER_ATTR_PUBLISH))
            }
        };
        let id = self.new_waiter_id();
        self.member_waiters.insert(id, reply);
        let ((kind, member), attr) = (cc, attr);
        if let Some(k) = attr {
            // Attribute changes are ordinary entries.
            self.queued.push_back(InternalRequest {
                id,
                member_id: self.shared.member_id,
                op: None,
                member_attr: Some(MemberAttr {
                    kind: k,
                    member: Some(member),
                }),
                ..Default::default()
            });
            self.propose_queued();
            return;
        }
        let cc = ConfChange {
            kind,
            node_id: member.id,
            context: ConfChangeCtx {
                waiter: id,
                proposer: self.shared.member_id,
                member: Some(member),
            }
            .encode_to_vec(),
        };
        if self.node.leader() == 0 {
            if let Some(w) = self.member_waiters.remove(&id) {
                let _ = w.send(Err(EtcdError::NoLeader));
            }
            return;
        }
        if let Err(e) = self.node.propose_conf_change(&cc) {
            tracing::warn!(error = %e, "membership change refused by raft");
            if let Some(w) = self.member_waiters.remove(&id) {
                // etcd answers a change while another is pending as a timeout-like retryable
                // error; "unhealthy cluster" is the closest of its messages.
                let _ = w.send(Err(match e {
                    ferrite_raft::RaftError::ConfChangePending => EtcdError::Unhealthy,
                    _ => EtcdError::NoLeader,
                }));
            }
        }
    }

    /// etcd's `mayAddMember` (with `--strict-reconfig-check`): a voter may be added only if
    /// the started voters stay a quorum, and any member only if this member has been
    /// connected to every voter for [`RECONFIG_CONNECTED_MIN`].
    fn may_add_member(&self, m: &Membership, is_learner: bool) -> Result<(), EtcdError> {
        if !self.opts.strict_reconfig_check {
            return Ok(());
        }
        if !is_learner && !ready_to_add_voter(m) {
            tracing::warn!("rejecting member add request; not enough healthy members");
            return Err(EtcdError::NotEnoughStartedMembers);
        }
        let voters = m.voters();
        if self.connected_voters(&voters) != voters.len() {
            tracing::warn!(
                "rejecting member add request; local member has not been connected to all \
                 peers, reconfigure breaks active quorum"
            );
            return Err(EtcdError::Unhealthy);
        }
        Ok(())
    }

    /// etcd's `mayRemoveMember`: removing a learner or a peer that is down is always allowed;
    /// otherwise the remaining started voters must be a quorum, and so must the voters this
    /// member has been connected to for [`RECONFIG_CONNECTED_MIN`], less the one removed.
    fn may_remove_member(&self, m: &Membership, target: &MemberPb) -> Result<(), EtcdError> {
        if !self.opts.strict_reconfig_check || target.is_learner {
            return Ok(());
        }
        if !ready_to_remove_voter(m, target.id) {
            tracing::warn!("rejecting member remove request; not enough healthy members");
            return Err(EtcdError::NotEnoughStartedMembers);
        }
        if target.id != self.shared.member_id && self.transport.active_since(target.id).is_none() {
            return Ok(());
        }
        let voters = m.voters();
        let active = self.connected_voters(&voters);
        if active.saturating_sub(1) < 1 + (voters.len().saturating_sub(1)) / 2 {
            tracing::warn!(
                active_peers = active,
                "rejecting member remove request; local member has not been connected to all \
                 peers, reconfigure breaks active quorum"
            );
            return Err(EtcdError::Unhealthy);
        }
        Ok(())
    }

    /// etcd's `numConnectedSince(now - HealthInterval)`: this member plus the voters whose
    /// connection has been up for at least [`RECONFIG_CONNECTED_MIN`].
    fn connected_voters(&self, voters: &[u64]) -> usize {
        voters
            .iter()
            .filter(|&&id| {
                id == self.shared.member_id
                    || self
                        .transport
                        .active_since(id)
                        .is_some_and(|t| t.elapsed() >= RECONFIG_CONNECTED_MIN)
            })
            .count()
    }

    /// etcd's `isLearnerReady`: the learner's match is at least 90% of the leader's commit.
    fn learner_in_sync(&self, id: u64) -> bool {
        let st = self.node.status();
        let Some(&(_, matched, _, _)) = st.progress.iter().find(|p| p.0 == id) else {
            return false;
        };
        let commit = self.node.committed();
        (matched as f64) >= (commit as f64) * 0.9
    }

    fn move_leader(&mut self, target: u64, reply: oneshot::Sender<Result<(), EtcdError>>) {
        if self.node.role() != Role::Leader {
            let _ = reply.send(Err(EtcdError::NotLeader));
            return;
        }
        let m = self.shared.members();
        match m.members.get(&target) {
            Some(mm) if !mm.is_learner => {}
            _ => {
                let _ = reply.send(Err(EtcdError::BadLeaderTransferee));
                return;
            }
        }
        if target == self.shared.member_id {
            let _ = reply.send(Ok(()));
            return;
        }
        if let Err(e) = self.node.transfer_leader(target) {
            tracing::warn!(error = %e, "leader transfer refused");
            let _ = reply.send(Err(EtcdError::NotLeader));
            return;
        }
        tracing::info!(
            "local-member-id" = format!("{:x}", self.shared.member_id),
            transferee = format!("{target:x}"),
            "leadership transfer starting"
        );
        let deadline = Instant::now() + self.shared.limits.request_timeout;
        self.move_waiters.push((target, deadline, reply));
    }

    fn check_move_leader(&mut self) {
        if self.move_waiters.is_empty() {
            return;
        }
        let leader = self.node.leader();
        let now = Instant::now();
        for (target, deadline, reply) in std::mem::take(&mut self.move_waiters) {
            if leader == target {
                let _ = reply.send(Ok(()));
            } else if now >= deadline {
                let _ = reply.send(Err(EtcdError::Timeout));
            } else {
                self.move_waiters.push((target, deadline, reply));
            }
        }
    }

    /// Answers "request timed out" to every waiter past its deadline (the request may still be
    /// applied later: a forwarded proposal can also be lost, as with etcd).
    fn expire_waiters(&mut self) {
        let now = Instant::now();
        while let Some(&(deadline, id)) = self.deadlines.front() {
            if deadline > now {
                break;
            }
            self.deadlines.pop_front();
            if let Some(w) = self.waiters.remove(&id) {
                let _ = w.send(Err(EtcdError::Timeout));
            }
            if let Some(w) = self.member_waiters.remove(&id) {
                let _ = w.send(Err(EtcdError::Timeout));
            }
            if self.publish_waiter == Some(id) {
                self.publish_waiter = None;
            }
        }
        let expire = |v: &mut Vec<ReadWaiter>| {
            let mut keep = Vec::with_capacity(v.len());
            for (d, w) in v.drain(..) {
                if d <= now {
                    let _ = w.send(Err(EtcdError::Timeout));
                } else {
                    keep.push((d, w));
                }
            }
            *v = keep;
        };
        for (_, v) in self.read_waiting.values_mut() {
            expire(v);
        }
        self.read_waiting.retain(|_, (_, v)| !v.is_empty());
        for v in self.read_parked.values_mut() {
            expire(v);
        }
        self.read_parked.retain(|_, v| !v.is_empty());
        expire(&mut self.reads_pending);
        self.check_move_leader();
    }

    /// Publishes this member's name and client URLs once a leader is known, until applied.
    fn maybe_publish(&mut self) {
        if self.shared.published.load(Ordering::Acquire)
            || self.publish_waiter.is_some()
            || self.node.leader() == 0
            || self.node.is_removed()
        {
            return;
        }
        let now = Instant::now();
        if now < self.publish_retry_at {
            return;
        }
        self.publish_retry_at = now + PUBLISH_RETRY;
        let (tx, _rx) = oneshot::channel();
        let id = self.next_waiter;
        self.member_change(
            MemberChange::Publish {
                name: self.shared.member_name.clone(),
                client_urls: self.shared.client_urls.clone(),
            },
            tx,
        );
        self.publish_waiter = Some(id);
    }

    /// As etcd 3.4's leader (`monitorVersions`): once this member has published, a leader of a
    /// cluster whose version is not yet set proposes it, in an entry of its own.
    fn maybe_set_cluster_version(&mut self) {
        if self.cluster_version_set
            || self.node.role() != Role::Leader
            || !self.shared.published.load(Ordering::Acquire)
        {
            return;
        }
        let now = Instant::now();
        if now < self.cluster_version_retry_at {
            return;
        }
        self.cluster_version_retry_at = now + PUBLISH_RETRY;
        let id = self.new_waiter_id();
        self.queued.push_back(InternalRequest {
            id,
            member_id: self.shared.member_id,
            op: None,
            member_attr: Some(MemberAttr {
                kind: MEMBER_ATTR_CLUSTER_VERSION,
                member: None,
            }),
            ..Default::default()
        });
        self.propose_queued();
    }

    /// Without a leader for two election timeouts, ask the peers whether this member is still
    /// one of them (a removed member is not told by Raft; see `transport::spawn_removal_check`).
    fn maybe_check_removed(&mut self) {
        let now = Instant::now();
        if self.node.leader() != 0 {
            self.leaderless_since = None;
            return;
        }
        let since = *self.leaderless_since.get_or_insert(now);
        let period = self.opts.tick * self.opts.election_ticks * 2;
        if now.duration_since(since) < period || now < self.removal_check_at {
            return;
        }
        self.removal_check_at = now + period;
        let me = self.shared.member_id;
        let urls: Vec<String> = self
            .shared
            .members()
            .members
            .values()
            .filter(|m| m.id != me)
            .flat_map(|m| m.peer_urls.clone())
            .collect();
        if !urls.is_empty() {
            crate::transport::spawn_removal_check(
                me,
                urls,
                self.opts.peer_client_tls.clone(),
                self.opts.tick * self.opts.election_ticks,
            );
        }
    }

    /// This member was removed from the cluster: etcd exits.
    fn on_removed(&mut self) {
        tracing::error!(
            "local-member-id" = format!("{:x}", self.shared.member_id),
            "the member has been permanently removed from the cluster"
        );
        eprintln!("ferrite: the member has been permanently removed from the cluster");
        self.fail_all(EtcdError::Stopped);
        std::process::exit(1);
    }

    /// This member is the leader and the only voter (no replication: its own sync commits).
    fn solo_leader(&self) -> bool {
        let cs = self.node.conf_state();
        self.node.role() == Role::Leader && cs.voters.len() == 1 && cs.learners.is_empty()
    }

    /// Group commit of a lone voter. Its callers are answered right after a sync; if the next
    /// sync started at once it would carry only the requests that arrived during the previous
    /// one, and each closed-loop client would ride every other sync (two cohorts alternating,
    /// ~half the clients per fdatasync). So, while a sync is in flight, proposals wait in
    /// `queued` (`hold`); once its entries are applied and answered, the core lingers for at
    /// most min(`LINGER_MAX`, half the last sync) or until 3/4 as many requests as were just
    /// answered are queued, then proposes them all as the next sync. Returns how long to
    /// linger, or None once released. A lone client (fewer than `LINGER_ANSWERED_MIN` answers)
    /// never lingers.
    fn linger_or_release(&mut self) -> Option<Duration> {
        let answered = self.answered_since_sync;
        if self.solo_leader() && answered >= LINGER_ANSWERED_MIN {
            let now = Instant::now();
            let until = *self
                .linger_until
                .get_or_insert_with(|| now + LINGER_MAX.min(self.last_sync / 2));
            if now < until && self.queued.len() * 4 < answered * 3 {
                return Some(until - now);
            }
        }
        self.hold = false;
        self.linger_until = None;
        self.answered_since_sync = 0;
        self.propose_queued();
        None
    }

    fn propose_queued(&mut self) {
        if self.queued.is_empty() || self.node.leader() == 0 || self.hold {
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
        let deadline = Instant::now() + self.shared.limits.request_timeout;
        let reads: Vec<ReadWaiter> = reads.into_iter().map(|r| (deadline, r)).collect();
        self.start_read_waiters(reads);
    }

    fn start_read_waiters(&mut self, reads: Vec<ReadWaiter>) {
        if self.node.leader() == 0 {
            self.reads_pending.extend(reads);
            return;
        }
        let ctx = self.read_ctx_next;
        self.read_ctx_next += 1;
        match self.node.read_index(ctx.to_le_bytes().to_vec()) {
            Ok(()) => {
                self.read_waiting.insert(ctx, (Instant::now(), reads));
            }
            Err(_) => self.reads_pending.extend(reads),
        }
    }

    /// Reads that waited for a leader, and ReadIndex requests a leader change may have lost,
    /// are asked again.
    fn retry_reads(&mut self) {
        if self.node.leader() == 0 {
            return;
        }
        let mut reads = std::mem::take(&mut self.reads_pending);
        if self.node.role() != Role::Leader {
            // A forwarded ReadIndex can be lost; re-ask for contexts older than a few ticks.
            let after = self.opts.tick * self.opts.election_ticks;
            let now = Instant::now();
            let stale: Vec<u64> = self
                .read_waiting
                .iter()
                .filter(|(_, (asked, _))| now.duration_since(*asked) >= after)
                .map(|(c, _)| *c)
                .collect();
            for c in stale {
                if let Some((_, v)) = self.read_waiting.remove(&c) {
                    reads.extend(v);
                }
            }
        }
        if !reads.is_empty() {
            self.start_read_waiters(reads);
        }
    }

    fn on_read_state(&mut self, index: u64, ctx: &[u8]) {
        let Ok(b) = <[u8; 8]>::try_from(ctx) else {
            return;
        };
        let Some((_, waiters)) = self.read_waiting.remove(&u64::from_le_bytes(b)) else {
            return;
        };
        if index <= self.applied {
            for (_, w) in waiters {
                let _ = w.send(Ok(()));
            }
        } else {
            self.read_parked.entry(index).or_default().extend(waiters);
        }
    }

    /// Replaces the state machine with the leader's snapshot image: restore it into a new file,
    /// rename it over the store's, swap the store in `Shared`, and reload what lives in it
    /// (applied index, membership, leases, alarms). Entries up to the image's applied index
    /// are then skipped. A corrupt image is fatal (Raft already took the snapshot's log).
    fn install_snapshot(&mut self, snap: &Snapshot) {
        let path = &self.opts.db_path;
        let tmp = path.with_extension("install");
        let _ = std::fs::remove_file(&tmp);
        let store = match ferrite_btree::MvccStore::restore(
            &tmp,
            &mut snap.data.as_slice(),
            crate::server::store_options(),
        ) {
            Ok(s) => Arc::new(s),
            Err(e) => panic!(
                "ferrite: installing the snapshot at index {} failed: {e}",
                snap.meta.index
            ),
        };
        let sync_dir = || -> std::io::Result<()> {
            std::fs::rename(&tmp, path)?;
            if let Some(dir) = path.parent() {
                std::fs::File::open(dir)?.sync_all()?;
            }
            Ok(())
        };
        if let Err(e) = sync_dir() {
            panic!("ferrite: renaming the installed snapshot into place failed: {e}");
        }
        let view = store.read();
        let applied = view
            .try_get_meta(APPLIED_INDEX_META_KEY)
            .ok()
            .flatten()
            .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
            .map_or(snap.meta.index, u64::from_le_bytes);
        let membership = match view.try_get_meta(MEMBERSHIP_META_KEY) {
            Ok(Some(b)) => Membership::decode(&b)
                .unwrap_or_else(|e| panic!("ferrite: snapshot membership: {e}")),
            _ => self.shared.members(),
        };
        let alarms = match view.try_get_meta(ALARMS_META_KEY) {
            Ok(Some(b)) => apply::decode_alarms(&b).unwrap_or_default(),
            _ => Vec::new(),
        };
        let auth_store = match view.try_get_meta(crate::authz::AUTH_META_KEY) {
            Ok(Some(b)) => ferrite_auth::AuthStore::decode(&b)
                .unwrap_or_else(|e| panic!("ferrite: snapshot auth store: {e}")),
            _ => ferrite_auth::AuthStore::new(),
        };
        let revision = view.revision();
        drop(view);
        self.shared.auth.restore(auth_store);
        let lessor = crate::server::recover_lessor(&store, self.opts.lease_ttl_min)
            .unwrap_or_else(|e| panic!("ferrite: snapshot leases: {e}"));
        if let Err(e) = self.shared.store.swap(store) {
            panic!("ferrite: {e}");
        }
        self.writer = self.shared.store.writer();
        // A sync still running was the old store's; the new one starts durable.
        self.store_sync = None;
        self.cluster_version_set = cluster_version_set(&self.shared);
        *self.shared.lessor.lock().unwrap_or_else(|p| p.into_inner()) = lessor;
        let nospace = alarms
            .iter()
            .any(|a| a.alarm == ferrite_net::pb::etcdserverpb::AlarmType::Nospace as i32);
        *self.shared.alarms.lock().unwrap_or_else(|p| p.into_inner()) = alarms;
        self.shared.nospace.store(nospace, Ordering::Release);
        let me = self.shared.member_id;
        let old = self.shared.members();
        for id in old.members.keys() {
            if !membership.members.contains_key(id) && *id != me {
                self.transport.remove_peer(*id);
            }
        }
        for m in membership.members.values() {
            if m.id != me {
                self.transport.set_peer(m.id, m.peer_urls.clone());
            }
        }
        self.shared.set_membership(membership);
        self.applied = self.applied.max(applied);
        self.last_snapshot_index = snap.meta.index;
        self.requests_since_snapshot = 0;
        self.requests_in_memory_log = 0;
        self.shared
            .applied_index
            .store(self.applied, Ordering::Release);
        self.shared.revision_hint.store(revision, Ordering::Release);
        // Watchers on this member never saw the revisions the image skipped.
        self.shared.hub.publish_reset(revision);
        tracing::info!(
            "local-member-id" = format!("{me:x}"),
            "snapshot-index" = snap.meta.index,
            "applied-index" = applied,
            "snapshot-size-bytes" = snap.data.len(),
            "applied snapshot"
        );
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
        let shared = self.shared.clone();
        let mut lessor = shared.lessor.lock().unwrap_or_else(|p| p.into_inner());
        let mut alarms = shared.alarms.lock().unwrap_or_else(|p| p.into_inner());
        let mut auth = shared.auth.lock();
        let mut ctx = ApplyCtx {
            lessor: &mut lessor,
            compact_rev,
            member_id: self.shared.member_id,
            alarms: &mut alarms,
            now: Instant::now(),
            leases_dirty: false,
            alarms_dirty: false,
            compactions: Vec::new(),
            auth: &mut auth,
            auth_dirty: false,
        };
        let mut membership: Option<Membership> = None;
        for e in &entries {
            if e.index <= self.applied {
                continue;
            }
            if e.kind == EntryKind::ConfChange {
                self.requests_since_snapshot += 1;
                self.requests_in_memory_log += 1;
                let m = membership.get_or_insert_with(|| self.shared.members());
                self.apply_conf_change(e, m);
                continue;
            }
            if e.data.is_empty() {
                self.requests_since_snapshot += 1;
                self.requests_in_memory_log += 1;
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
            self.requests_since_snapshot += batch.requests.len().max(1) as u64;
            self.requests_in_memory_log += batch.requests.len().max(1) as u64;
            for req in batch.requests {
                if let Some(attr) = &req.member_attr {
                    let m = membership.get_or_insert_with(|| self.shared.members());
                    self.apply_member_attr(e.index, &req, attr, m);
                    continue;
                }
                if req.op.is_none() {
                    continue;
                }
                let (res, evs) = apply::apply_request(&mut self.writer, &mut ctx, e.index, &req);
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
        let auth_meta = ctx.auth_dirty.then(|| ctx.auth.store.encode());
        let nospace = ctx
            .alarms
            .iter()
            .any(|a| a.alarm == ferrite_net::pb::etcdserverpb::AlarmType::Nospace as i32);
        drop(ctx);
        if auth_meta.is_some() {
            self.shared.auth.publish_enabled(&auth);
        }
        drop(auth);
        drop(alarms);
        drop(lessor);
        if let Some(m) = auth_meta {
            self.writer.put_meta(crate::authz::AUTH_META_KEY, &m);
        }
        if let Some(m) = leases_meta {
            self.writer.put_meta(LEASES_META_KEY, &m);
        }
        if let Some(m) = alarms_meta {
            self.writer.put_meta(ALARMS_META_KEY, &m);
        }
        self.shared.nospace.store(nospace, Ordering::Release);
        if let Some(m) = membership {
            self.writer.put_meta(MEMBERSHIP_META_KEY, &m.encode());
            self.shared.set_membership(m);
        }
        self.writer
            .put_meta(APPLIED_INDEX_META_KEY, &last_index.to_le_bytes());
        self.writer
            .put_meta(APPLIED_TERM_META_KEY, &last_term.to_le_bytes());
        let commit_started = Instant::now();
        if let Err(e) = self.writer.commit(false) {
            panic!("ferrite: MVCC commit failed at applied index {last_index}: {e}");
        }
        self.sync_store_in_background();
        crate::metrics::metrics()
            .backend_commit_seconds
            .observe_duration(commit_started.elapsed());
        if std::mem::take(&mut self.publish_applied) {
            self.shared.published.store(true, Ordering::Release);
            // Queued before any client request can be (the port opens only now), as etcd
            // sets the version before it serves.
            self.maybe_set_cluster_version();
        }
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
        self.shared.hub.publish(HubBatch {
            revision,
            events,
            reset: false,
        });
        self.answered_since_sync += answers.len();
        for (w, r) in answers {
            let _ = w.send(r);
        }
        for (w, r) in std::mem::take(&mut self.member_answers) {
            let _ = w.send(r);
        }
        let applied = self.applied;
        while let Some(entry) = self.read_parked.first_entry() {
            if *entry.key() > applied {
                break;
            }
            for (_, w) in entry.remove() {
                let _ = w.send(Ok(()));
            }
        }
    }

    /// Applies a committed membership change to `m` (Raft applied it to its ConfState when it
    /// handed the entry out) and to the transport.
    fn apply_conf_change(&mut self, e: &Entry, m: &mut Membership) {
        let cc = match ferrite_raft::decode_conf_change(&e.data) {
            Ok(cc) => cc,
            Err(err) => panic!(
                "ferrite: committed conf change {} does not decode: {err}",
                e.index
            ),
        };
        let ctx = ConfChangeCtx::decode(cc.context.as_slice()).unwrap_or_default();
        let me = self.shared.member_id;
        let id = cc.node_id;
        match cc.kind {
            ConfChangeKind::AddVoter | ConfChangeKind::AddLearner => {
                let learner = cc.kind == ConfChangeKind::AddLearner;
                if m.removed.contains(&id) {
                    // A removed id never comes back (Raft refuses it too).
                } else if let Some(existing) = m.members.get_mut(&id) {
                    if !learner {
                        existing.is_learner = false;
                    }
                } else if let Some(mut member) = ctx.member.clone() {
                    member.id = id;
                    member.is_learner = learner;
                    if id != me {
                        self.transport.set_peer(id, member.peer_urls.clone());
                    }
                    tracing::info!(
                        "local-member-id" = format!("{me:x}"),
                        "added-peer-id" = format!("{id:x}"),
                        "added-peer-peer-urls" = ?member.peer_urls,
                        learner,
                        "added member"
                    );
                    m.members.insert(id, member);
                    if self.node.snapshot().is_some_and(|s| s.data.is_empty()) {
                        self.force_snapshot = true;
                    }
                }
            }
            ConfChangeKind::Remove => {
                if m.members.remove(&id).is_some() {
                    tracing::info!(
                        "local-member-id" = format!("{me:x}"),
                        "removed-remote-peer-id" = format!("{id:x}"),
                        "removed member"
                    );
                }
                m.removed.insert(id);
                if id != me {
                    self.transport.remove_peer(id);
                }
            }
        }
        if ctx.proposer == me && ctx.waiter != 0 {
            if let Some(w) = self.member_waiters.remove(&ctx.waiter) {
                self.member_answers.push((w, Ok(id)));
            }
        }
    }

    /// Applies a member's published attributes or a peer URL update.
    fn apply_member_attr(
        &mut self,
        index: u64,
        req: &InternalRequest,
        attr: &MemberAttr,
        m: &mut Membership,
    ) {
        let me = self.shared.member_id;
        if attr.kind == MEMBER_ATTR_CLUSTER_VERSION {
            self.writer
                .put_meta(CLUSTER_VERSION_META_KEY, CLUSTER_VERSION);
            self.cluster_version_set = true;
            return;
        }
        let Some(upd) = &attr.member else { return };
        let result = match m.members.get_mut(&upd.id) {
            None => Err(EtcdError::MemberNotFound),
            Some(existing) => {
                match attr.kind {
                    MEMBER_ATTR_PUBLISH => {
                        existing.name = upd.name.clone();
                        existing.client_urls = upd.client_urls.clone();
                        // Only this run's publish opens the client port: one replayed from
                        // the WAL at restart may be applied before later entries are (a
                        // client would read the store as of before them).
                        if upd.id == me && index > self.log_last_at_start {
                            self.publish_applied = true;
                        }
                    }
                    MEMBER_ATTR_PEER_URLS => {
                        existing.peer_urls = upd.peer_urls.clone();
                        if upd.id != me {
                            self.transport.set_peer(upd.id, upd.peer_urls.clone());
                        }
                    }
                    k => tracing::warn!(kind = k, "unknown member attribute change ignored"),
                }
                Ok(upd.id)
            }
        };
        if req.member_id == me {
            if let Some(w) = self.member_waiters.remove(&req.id) {
                self.member_answers.push((w, result));
            }
            if self.publish_waiter == Some(req.id) {
                self.publish_waiter = None;
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
                ..Default::default()
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
                ..Default::default()
            });
            self.propose_queued();
        }
    }

    /// The store's pages freed since its last durable commit cannot be reused before the next
    /// one, so past `unsynced_freed_bytes_max` (64 MiB) a durable commit is due. Its
    /// fdatasync writes back everything the non-durable commits wrote since (tens of MiB): run
    /// inline it blocked this core, its client connections and every put for 100+ ms. So the
    /// commit is written here and synced on a `store-sync` thread; the next call after the
    /// sync returned records it (the WAL, not the store, is what acknowledges writes, so
    /// nothing waits for it). Called after each apply commit and at each tick.
    fn sync_store_in_background(&mut self) {
        if let Some(rx) = &self.store_sync {
            match rx.try_recv() {
                Ok(Ok(done)) => {
                    self.store_sync = None;
                    if let Err(e) = self.writer.commit_durable_finish(done) {
                        panic!("ferrite: finishing a durable MVCC commit failed: {e}");
                    }
                }
                Ok(Err(e)) => panic!("ferrite: syncing the store failed: {e}"),
                Err(std::sync::mpsc::TryRecvError::Empty) => return,
                Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                    panic!("ferrite: the store-sync thread ended without a result")
                }
            }
        }
        if !self.writer.wants_durable() {
            return;
        }
        let pending = match self.writer.commit_durable_start() {
            Ok(p) => p,
            Err(e) => panic!("ferrite: durable MVCC commit failed: {e}"),
        };
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("store-sync".into())
            .spawn(move || {
                // The receiver is gone only if the store was replaced meanwhile.
                let _ = tx.send(pending.sync());
            })
            .expect("spawning the store-sync thread");
        self.store_sync = Some(rx);
    }

    /// Every `snapshot_count` applied entries: make the store durable, log a snapshot marker,
    /// free old WAL segments and compact Raft's in-memory log.
    async fn maybe_snapshot(&mut self) {
        // etcd counts applied entries, one request each; a ferrite entry carries a batch of
        // requests, so requests are counted too. Counting entries alone let a 1M-key load sit
        // in the WAL and in Raft's in-memory log (all replayed at restart: 100 s, 635 MiB RSS).
        let count = self.opts.snapshot_count.max(1);
        let due = self.applied >= self.last_snapshot_index + count
            || (self.applied > self.last_snapshot_index && self.requests_since_snapshot >= count);
        let forced = self.force_snapshot && self.applied > self.last_snapshot_index;
        if !due && !forced {
            self.compact_solo_log();
            return;
        }
        self.force_snapshot = false;
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
        let image = match snapshot_image(&self.shared, &self.shared.members()) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(index, error = %e, "no snapshot taken");
                return;
            }
        };
        // The in-memory log may already be compacted up to `index` (`compact_solo_log`).
        let compacted = self.node.snapshot().map_or(0, |s| s.meta.index);
        if index > compacted {
            if let Err(e) = self.node.compact(index, image) {
                tracing::warn!(index, error = %e, "raft log compaction refused");
                return;
            }
        }
        self.requests_in_memory_log = 0;
        match self.wal.release_below(index + 1).await {
            Ok(n) => tracing::debug!(index, segments = n, "released WAL segments"),
            Err(e) => tracing::warn!(index, error = %e, "releasing WAL segments failed"),
        }
        self.last_snapshot_index = index;
        self.requests_since_snapshot = 0;
    }

    /// A lone member drops applied entries from Raft's in-memory log every
    /// `SOLO_LOG_REQUESTS_MAX` requests (see there); the WAL, the store and the WAL snapshot
    /// marker are untouched (`maybe_snapshot` does those every `--snapshot-count`).
    fn compact_solo_log(&mut self) {
        if self.requests_in_memory_log < SOLO_LOG_REQUESTS_MAX
            || !self.solo_leader()
            || self.shared.members().members.len() > 1
        {
            return;
        }
        let index = self.applied;
        if self.node.snapshot().map_or(0, |s| s.meta.index) >= index {
            return;
        }
        // Refused below a configuration change not yet applied: retried after the next apply.
        match self.node.compact(index, Vec::new()) {
            Ok(()) => self.requests_in_memory_log = 0,
            Err(e) => tracing::debug!(index, error = %e, "in-memory raft log not compacted"),
        }
    }

    /// The log is poisoned: nothing more can be acknowledged safely.
    fn wal_failed(&mut self, e: WalError) -> ! {
        tracing::error!(error = %e, "WAL append failed; stopping the raft core");
        self.fail_all(EtcdError::Stopped);
        panic!("ferrite: WAL append failed: {e}");
    }

    fn fail_all(&mut self, e: EtcdError) {
        for (_, w) in self.waiters.drain() {
            let _ = w.send(Err(e.clone()));
        }
    }
}
