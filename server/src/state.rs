//! State shared by every core (`Arc<Shared>`, `Send + Sync`): the MVCC store (readers open
//! snapshots without locks), the channel to the Raft core, the lessor, the watch hub, and the
//! observable Raft status (term, leader, indexes) as atomics.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use ferrite_btree::MvccStore;
use ferrite_net::pb::etcdserverpb::{
    AlarmMember, AlarmResponse, CompactionResponse, DeleteRangeResponse, LeaseGrantResponse,
    LeaseRevokeResponse, PutResponse, ResponseHeader, TxnResponse,
};
use futures_channel::{mpsc, oneshot};

use crate::errors::EtcdError;
use crate::internal::Op;
use crate::lessor::Lessor;
use crate::membership::Membership;
use crate::watch_hub::WatchHub;

/// Limits and identity, fixed at start.
#[derive(Clone, Debug)]
pub struct Limits {
    pub request_bytes_max: usize,
    pub txn_ops_max: usize,
    /// 0 = etcd's default (2 GiB); negative disables.
    pub quota_backend_bytes: i64,
    /// How long a client waits for its write or linearizable read before `request timed out`.
    pub request_timeout: Duration,
}

/// The result of applying one request, sent back to the waiting handler.
#[derive(Debug)]
pub enum ApplyResult {
    Put(PutResponse),
    DeleteRange(DeleteRangeResponse),
    Txn(TxnResponse),
    Compaction(CompactionResponse),
    LeaseGrant(LeaseGrantResponse),
    LeaseRevoke(LeaseRevokeResponse),
    Alarm(AlarmResponse),
    Auth(AuthApplied),
}

/// The result of an applied auth mutation: the token for Authenticate.
#[derive(Debug)]
pub struct AuthApplied {
    pub token: Option<String>,
}

pub type ApplyReply = oneshot::Sender<Result<ApplyResult, EtcdError>>;

/// A message from any core to the Raft core.
pub enum CoreMsg {
    /// Propose a write; the reply comes after it is durable and applied.
    Propose {
        op: Op,
        /// The caller, checked at apply (etcd's request header username/auth revision).
        caller: Option<ferrite_auth::AuthInfo>,
        reply: ApplyReply,
    },
    /// Wait for a linearizable read point: replies once the state machine has applied up to
    /// a ReadIndex taken after this message arrived.
    ReadIndex {
        reply: oneshot::Sender<Result<(), EtcdError>>,
    },
    /// A membership change (Cluster API); replies with the member id once applied.
    Member {
        change: MemberChange,
        reply: oneshot::Sender<Result<u64, EtcdError>>,
    },
    /// Maintenance.MoveLeader: replies once `target` leads (or the request timed out).
    MoveLeader {
        target: u64,
        reply: oneshot::Sender<Result<(), EtcdError>>,
    },
}

/// A Cluster API request, validated and proposed by the Raft core.
#[derive(Clone, Debug)]
pub enum MemberChange {
    Add {
        peer_urls: Vec<String>,
        is_learner: bool,
    },
    Remove {
        id: u64,
    },
    Promote {
        id: u64,
    },
    UpdatePeerUrls {
        id: u64,
        peer_urls: Vec<String>,
    },
    /// This member publishes its name and client URLs (etcd's `publish`, at start).
    Publish {
        name: String,
        client_urls: Vec<String>,
    },
}

pub struct Shared {
    pub cluster_id: u64,
    pub member_id: u64,
    pub member_name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
    pub limits: Limits,
    /// The MVCC store. Replaced (rarely: a follower installing a leader's snapshot image) by
    /// the Raft core; see [`StoreCell`].
    pub store: StoreCell,
    pub to_core: mpsc::UnboundedSender<CoreMsg>,
    pub lessor: Mutex<Lessor>,
    pub hub: WatchHub,
    pub raft_term: AtomicU64,
    pub leader: AtomicU64,
    pub raft_index: AtomicU64,
    pub applied_index: AtomicU64,
    /// Set once the Raft core has replayed the WAL and serves.
    pub ready: AtomicBool,
    /// Active alarms (member id, alarm type), as etcd's alarm store.
    pub alarms: Mutex<Vec<AlarmMember>>,
    pub nospace: AtomicBool,
    /// Last revision observed by a response (for Status when idle).
    pub revision_hint: AtomicI64,
    /// Watch progress notification interval (etcd's 10 minutes by default).
    pub progress_interval: Duration,
    /// Users, roles, tokens and the bcrypt pool.
    pub auth: crate::authz::Auth,
    /// The cluster membership as of the last applied entry (see `membership.rs`). Replace it
    /// with [`Shared::set_membership`] (which keeps `learner` in step).
    pub membership: Mutex<Membership>,
    /// This member is a learner in the applied membership: client RPCs other than Status and
    /// serializable Range are refused, as etcd 3.4 does (see [`Shared::learner_refuses`]).
    pub learner: AtomicBool,
    /// `--initial-cluster-token`, for the ids of members added at runtime.
    pub cluster_token: String,
    /// Set once this member's name and client URLs are applied (etcd's `publish`).
    pub published: AtomicBool,
}

impl Shared {
    /// etcd's `header.fill`: cluster, member and term; the revision comes from the request.
    pub fn header(&self, revision: i64) -> ResponseHeader {
        ResponseHeader {
            cluster_id: self.cluster_id,
            member_id: self.member_id,
            revision,
            raft_term: self.raft_term.load(Ordering::Acquire),
        }
    }

    pub fn fill(&self, h: &mut Option<ResponseHeader>) {
        let rev = h.as_ref().map_or(0, |h| h.revision);
        *h = Some(self.header(rev));
    }

    pub fn current_revision(&self) -> i64 {
        self.store.read().revision()
    }

    /// Proposes `op` through Raft and waits until it is applied.
    pub async fn propose(&self, op: Op) -> Result<ApplyResult, EtcdError> {
        self.propose_as(op, None).await
    }

    /// Proposes `op` on behalf of `caller` (checked at apply when auth is enabled).
    pub async fn propose_as(
        &self,
        op: Op,
        caller: Option<ferrite_auth::AuthInfo>,
    ) -> Result<ApplyResult, EtcdError> {
        let m = crate::metrics::metrics();
        let (tx, rx) = oneshot::channel();
        m.proposals_pending.inc();
        if self
            .to_core
            .unbounded_send(CoreMsg::Propose {
                op,
                caller,
                reply: tx,
            })
            .is_err()
        {
            m.proposals_pending.dec();
            m.proposals_failed.inc();
            return Err(EtcdError::Stopped);
        }
        let r = match rx.await {
            Ok(r) => r,
            Err(_) => Err(EtcdError::Stopped),
        };
        m.proposals_pending.dec();
        // etcd counts proposals that never applied (stopped, no leader, timed out), not
        // requests that applied with an error.
        if matches!(
            r,
            Err(EtcdError::Stopped
                | EtcdError::NoLeader
                | EtcdError::NotLeader
                | EtcdError::Timeout)
        ) {
            m.proposals_failed.inc();
        }
        r
    }

    /// Waits for a linearizable read point (ReadIndex, then applied >= read index).
    pub async fn read_index(&self) -> Result<(), EtcdError> {
        let (tx, rx) = oneshot::channel();
        self.to_core
            .unbounded_send(CoreMsg::ReadIndex { reply: tx })
            .map_err(|_| EtcdError::Stopped)?;
        match rx.await {
            Ok(r) => r,
            Err(_) => Err(EtcdError::Stopped),
        }
    }
}

impl Shared {
    /// Sends a membership change to the Raft core and waits until it is applied.
    pub async fn member_change(&self, change: MemberChange) -> Result<u64, EtcdError> {
        let (tx, rx) = oneshot::channel();
        self.to_core
            .unbounded_send(CoreMsg::Member { change, reply: tx })
            .map_err(|_| EtcdError::Stopped)?;
        rx.await.unwrap_or(Err(EtcdError::Stopped))
    }

    /// Asks the Raft core to hand leadership to `target` and waits for it.
    pub async fn move_leader(&self, target: u64) -> Result<(), EtcdError> {
        let (tx, rx) = oneshot::channel();
        self.to_core
            .unbounded_send(CoreMsg::MoveLeader { target, reply: tx })
            .map_err(|_| EtcdError::Stopped)?;
        rx.await.unwrap_or(Err(EtcdError::Stopped))
    }

    /// Replaces the applied membership (Raft core only).
    pub fn set_membership(&self, m: Membership) {
        let learner = m
            .members
            .get(&self.member_id)
            .is_some_and(|mm| mm.is_learner);
        *self.membership.lock().unwrap_or_else(|p| p.into_inner()) = m;
        self.learner.store(learner, Ordering::Release);
    }

    pub fn is_learner(&self) -> bool {
        self.learner.load(Ordering::Acquire)
    }

    /// etcd 3.4's learner interceptor (`v3rpc/interceptor.go`): a learner serves
    /// `Maintenance.Status` and serializable `KV.Range` (checked in the handler: it needs the
    /// request) and refuses every other unary RPC and every stream (Watch, LeaseKeepAlive,
    /// Snapshot, Election.Observe) with UNAVAILABLE "etcdserver: rpc not supported for learner".
    /// `method` is the gRPC path (`/etcdserverpb.KV/Put`) or the JSON gateway's
    /// (`/v3/kv/put`), which etcd's gateway sends through the same interceptor.
    pub fn learner_refuses(&self, method: &str) -> bool {
        self.is_learner()
            && !matches!(
                method,
                "/etcdserverpb.Maintenance/Status"
                    | "/etcdserverpb.KV/Range"
                    | "/v3/maintenance/status"
                    | "/v3/kv/range"
            )
    }

    pub fn members(&self) -> Membership {
        self.membership
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Stores a process may install from snapshots before it must restart (each replaced store
/// stays allocated, with its file open, until the process exits).
pub const STORE_SWAPS_MAX: usize = 16;

/// The current MVCC store, replaceable without locks for readers: `Deref` gives the current
/// store. A replaced store is never freed (its slot keeps it) so a `&MvccStore` or a read view
/// taken from it on another core stays valid; readers simply see the old state until they look
/// again. Only the Raft core replaces it (`swap`), at most `STORE_SWAPS_MAX - 1` times.
pub struct StoreCell {
    slots: [OnceLock<Arc<MvccStore>>; STORE_SWAPS_MAX],
    current: AtomicUsize,
}

impl StoreCell {
    pub fn new(store: Arc<MvccStore>) -> StoreCell {
        let cell = StoreCell {
            slots: std::array::from_fn(|_| OnceLock::new()),
            current: AtomicUsize::new(0),
        };
        let _ = cell.slots[0].set(store);
        cell
    }

    /// The current store as an owned handle (for work on another thread).
    pub fn current(&self) -> Arc<MvccStore> {
        Arc::clone(self.slot())
    }

    fn slot(&self) -> &Arc<MvccStore> {
        self.slots[self.current.load(Ordering::Acquire)]
            .get()
            .expect("the current slot is set before it is published")
    }

    /// Replaces the store (Raft core only). Fails when every slot is used.
    pub fn swap(&self, store: Arc<MvccStore>) -> Result<(), String> {
        let next = self.current.load(Ordering::Acquire) + 1;
        if next >= STORE_SWAPS_MAX {
            return Err(format!(
                "this process installed {STORE_SWAPS_MAX} snapshots already; restart it"
            ));
        }
        self.slots[next]
            .set(store)
            .map_err(|_| "store slot already used".to_string())?;
        self.current.store(next, Ordering::Release);
        Ok(())
    }
}

impl std::ops::Deref for StoreCell {
    type Target = MvccStore;
    fn deref(&self) -> &MvccStore {
        self.slot()
    }
}
