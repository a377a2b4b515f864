//! The KV service (etcdserverpb.KV). Serializable reads run on the accepting core from a store
//! snapshot; linearizable reads first wait for a ReadIndex from the Raft core; writes are
//! proposed through Raft and answered once applied.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use ferrite_btree::{KeyValue, MvccError, RangeOptions, RangeResult, ReadView};
use ferrite_net::pb::etcdserverpb::{
    kv_server::Kv, request_op, CompactionRequest, CompactionResponse, DeleteRangeRequest,
    DeleteRangeResponse, PutRequest, PutResponse, RangeRequest, RangeResponse, TxnRequest,
    TxnResponse,
};
use prost::Message;
use tonic::{Request, Response, Status};

use crate::authz::{self, Credentials};
use crate::errors::EtcdError;
use crate::internal::Op;
use crate::kvops::{self, RangeSource, WriteTxn};
use crate::state::{ApplyResult, Shared};

/// A committed snapshot as a range source (and as a read-only txn).
pub struct ViewSource(pub ReadView);

impl RangeSource for ViewSource {
    fn range_raw(&mut self, opts: &RangeOptions) -> Result<RangeResult, MvccError> {
        self.0.range(opts)
    }
    fn current_revision(&self) -> i64 {
        self.0.revision()
    }
    fn compact_revision(&self) -> i64 {
        self.0.compact_revision()
    }
}

impl WriteTxn for ViewSource {
    fn put(&mut self, _: &[u8], _: &[u8], _: i64) -> Option<KeyValue> {
        unreachable!("a read-only txn has no put")
    }
    fn delete_range(&mut self, _: &[u8], _: &[u8]) -> Vec<KeyValue> {
        unreachable!("a read-only txn has no delete")
    }
    fn lease_exists(&self, _: i64) -> bool {
        false
    }
}

#[derive(Clone)]
pub struct KvService {
    pub shared: Arc<Shared>,
}

fn txn_is_serializable(r: &TxnRequest) -> bool {
    r.success
        .iter()
        .chain(r.failure.iter())
        .all(|op| match &op.request {
            Some(request_op::Request::RequestRange(rr)) => rr.serializable,
            Some(request_op::Request::RequestTxn(t)) => txn_is_serializable(t),
            _ => true,
        })
}

impl KvService {
    /// etcd's quota check before proposing: a write that may grow the store while it is
    /// above its quota raises the NOSPACE alarm and fails.
    async fn check_quota(&self, cost_bytes: usize) -> Result<(), EtcdError> {
        let sh = &self.shared;
        if sh.nospace.load(Ordering::Acquire) {
            return Err(EtcdError::NoSpace);
        }
        let quota = sh.limits.quota_backend_bytes;
        if quota <= 0 {
            return Ok(());
        }
        let size = sh.store.size_bytes() as i64;
        if size + cost_bytes as i64 > quota {
            let _ = sh
                .propose(Op::Alarm(ferrite_net::pb::etcdserverpb::AlarmRequest {
                    action: ferrite_net::pb::etcdserverpb::alarm_request::AlarmAction::Activate
                        as i32,
                    member_id: sh.member_id,
                    alarm: ferrite_net::pb::etcdserverpb::AlarmType::Nospace as i32,
                }))
                .await;
            return Err(EtcdError::NoSpace);
        }
        Ok(())
    }

    pub async fn propose_checked(
        &self,
        op: Op,
        creds: &Credentials,
    ) -> Result<ApplyResult, EtcdError> {
        let size = match &op {
            Op::Put(p) => p.encoded_len(),
            Op::DeleteRange(d) => d.encoded_len(),
            Op::Txn(t) => t.encoded_len(),
            Op::Compaction(c) => c.encoded_len(),
            Op::LeaseGrant(g) => g.encoded_len(),
            Op::LeaseRevoke(r) => r.encoded_len(),
            Op::Alarm(a) => a.encoded_len(),
            Op::Auth(a) => a.encoded_len(),
        };
        if size > self.shared.limits.request_bytes_max {
            return Err(EtcdError::RequestTooLarge);
        }
        let who = authz::caller(&self.shared, creds).await?;
        self.shared.propose_as(op, who).await
    }

    pub async fn do_range(
        &self,
        r: RangeRequest,
        creds: &Credentials,
    ) -> Result<RangeResponse, EtcdError> {
        kvops::check_range(&r)?;
        if !r.serializable {
            self.shared.read_index().await?;
        }
        let who = authz::check(&self.shared, creds, |s, c| {
            s.is_range_permitted(c, &r.key, &r.range_end)
        })
        .await?;
        let mut src = ViewSource(self.shared.store.read());
        let mut resp = kvops::range(&mut src, &r)?;
        authz::check_still_current(&self.shared, who.as_ref())?;
        crate::metrics::metrics().record_read_txn(None);
        self.shared.fill(&mut resp.header);
        Ok(resp)
    }

    pub async fn do_put(
        &self,
        r: PutRequest,
        creds: &Credentials,
    ) -> Result<PutResponse, EtcdError> {
        kvops::check_put(&r)?;
        self.check_quota(r.key.len() + r.value.len()).await?;
        match self.propose_checked(Op::Put(r), creds).await? {
            ApplyResult::Put(mut p) => {
                self.shared.fill(&mut p.header);
                Ok(p)
            }
            other => Err(EtcdError::Internal(format!(
                "unexpected apply result {other:?}"
            ))),
        }
    }

    pub async fn do_delete(
        &self,
        r: DeleteRangeRequest,
        creds: &Credentials,
    ) -> Result<DeleteRangeResponse, EtcdError> {
        kvops::check_delete(&r)?;
        match self.propose_checked(Op::DeleteRange(r), creds).await? {
            ApplyResult::DeleteRange(mut p) => {
                self.shared.fill(&mut p.header);
                Ok(p)
            }
            other => Err(EtcdError::Internal(format!(
                "unexpected apply result {other:?}"
            ))),
        }
    }

    pub async fn do_txn(
        &self,
        r: TxnRequest,
        creds: &Credentials,
    ) -> Result<TxnResponse, EtcdError> {
        kvops::check_txn(&r, self.shared.limits.txn_ops_max)?;
        if kvops::txn_is_read_only(&r) {
            if !txn_is_serializable(&r) {
                self.shared.read_index().await?;
            }
            let who = authz::check(&self.shared, creds, |s, c| authz::check_txn(s, c, &r)).await?;
            let mut src = ViewSource(self.shared.store.read());
            let mut resp = kvops::apply_txn(&mut src, &r)?;
            authz::check_still_current(&self.shared, who.as_ref())?;
            crate::metrics::metrics().record_read_txn(Some(&resp));
            self.shared.fill(&mut resp.header);
            return Ok(resp);
        }
        if kvops::txn_has_put(&r) {
            self.check_quota(r.encoded_len()).await?;
        }
        match self.propose_checked(Op::Txn(r), creds).await? {
            ApplyResult::Txn(mut p) => {
                self.shared.fill(&mut p.header);
                Ok(p)
            }
            other => Err(EtcdError::Internal(format!(
                "unexpected apply result {other:?}"
            ))),
        }
    }

    pub async fn do_compact(
        &self,
        r: CompactionRequest,
        creds: &Credentials,
    ) -> Result<CompactionResponse, EtcdError> {
        authz::check_admin(&self.shared, creds).await?;
        let physical = r.physical;
        let res = self.propose_checked(Op::Compaction(r), creds).await?;
        let ApplyResult::Compaction(mut p) = res else {
            return Err(EtcdError::Internal("unexpected apply result".into()));
        };
        if physical {
            self.shared
                .store
                .finish_compaction()
                .map_err(|e| EtcdError::Internal(e.to_string()))?;
        }
        self.shared.fill(&mut p.header);
        Ok(p)
    }
}

/// Marks a request the server makes to itself (the `/health` probe's read), which a learner's
/// RPC restrictions do not apply to.
#[derive(Clone, Copy, Debug)]
pub struct InternalProbe;

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(&self, req: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        // etcd 3.4's learner interceptor lets serializable ranges through only (the other RPCs
        // are refused by the router's guard and the gateway). The member's own health probe
        // is not a client RPC.
        if !req.get_ref().serializable
            && self.shared.is_learner()
            && req.extensions().get::<InternalProbe>().is_none()
        {
            return Err(EtcdError::NotSupportedForLearner.status());
        }
        Ok(Response::new({
            let c = Credentials::of(&req);
            self.do_range(req.into_inner(), &c).await?
        }))
    }
    async fn put(&self, req: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        Ok(Response::new({
            let c = Credentials::of(&req);
            self.do_put(req.into_inner(), &c).await?
        }))
    }
    async fn delete_range(
        &self,
        req: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        Ok(Response::new({
            let c = Credentials::of(&req);
            self.do_delete(req.into_inner(), &c).await?
        }))
    }
    async fn txn(&self, req: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        Ok(Response::new({
            let c = Credentials::of(&req);
            self.do_txn(req.into_inner(), &c).await?
        }))
    }
    async fn compact(
        &self,
        req: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        Ok(Response::new({
            let c = Credentials::of(&req);
            self.do_compact(req.into_inner(), &c).await?
        }))
    }
}
