//! State shared by every core (`Arc<Shared>`, `Send + Sync`): the MVCC store (readers open
//! snapshots without locks), the channel to the Raft core, the lessor, the watch hub, and the
//! observable Raft status (term, leader, indexes) as atomics.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
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
}

pub type ApplyReply = oneshot::Sender<Result<ApplyResult, EtcdError>>;

/// A message from any core to the Raft core.
pub enum CoreMsg {
    /// Propose a write; the reply comes after it is durable and applied.
    Propose { op: Op, reply: ApplyReply },
    /// Wait for a linearizable read point: replies once the state machine has applied up to
    /// a ReadIndex taken after this message arrived.
    ReadIndex {
        reply: oneshot::Sender<Result<(), EtcdError>>,
    },
}

pub struct Shared {
    pub cluster_id: u64,
    pub member_id: u64,
    pub member_name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
    pub limits: Limits,
    pub store: Arc<MvccStore>,
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
        let m = crate::metrics::metrics();
        let (tx, rx) = oneshot::channel();
        m.proposals_pending.inc();
        if self
            .to_core
            .unbounded_send(CoreMsg::Propose { op, reply: tx })
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
