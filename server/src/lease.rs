//! The Lease service. Grant and revoke go through Raft; KeepAlive renews the leader-local
//! deadline (not replicated, as in etcd); TimeToLive and Leases read the lessor.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use ferrite_net::pb::etcdserverpb::{
    lease_server::Lease, LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest,
    LeaseKeepAliveResponse, LeaseLeasesRequest, LeaseLeasesResponse, LeaseRevokeRequest,
    LeaseRevokeResponse, LeaseStatus, LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
};
use futures_util::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use crate::errors::EtcdError;
use crate::internal::Op;
use crate::state::{ApplyResult, Shared};

#[derive(Clone)]
pub struct LeaseService {
    pub shared: Arc<Shared>,
}

/// A server-chosen lease id: positive, non-zero, unlikely to collide (etcd uses its request id
/// generator: member id bits, a timestamp and a counter).
fn new_lease_id(shared: &Shared) -> i64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let c = COUNTER.fetch_add(1, Ordering::Relaxed);
    let id = ((shared.member_id & 0xffff) << 47) ^ ((ms & 0xff_ffff_ffff) << 8) ^ c;
    let id = (id & ((1u64 << 63) - 1)) as i64;
    if id == 0 {
        1
    } else {
        id
    }
}

impl LeaseService {
    pub async fn do_grant(
        &self,
        mut r: LeaseGrantRequest,
    ) -> Result<LeaseGrantResponse, EtcdError> {
        if r.id == 0 {
            r.id = new_lease_id(&self.shared);
        }
        if self
            .shared
            .nospace
            .load(std::sync::atomic::Ordering::Acquire)
        {
            return Err(EtcdError::NoSpace);
        }
        match self.shared.propose(Op::LeaseGrant(r)).await? {
            ApplyResult::LeaseGrant(mut g) => {
                self.shared.fill(&mut g.header);
                Ok(g)
            }
            other => Err(EtcdError::Internal(format!(
                "unexpected apply result {other:?}"
            ))),
        }
    }

    pub async fn do_revoke(
        &self,
        r: LeaseRevokeRequest,
        creds: &crate::authz::Credentials,
    ) -> Result<LeaseRevokeResponse, EtcdError> {
        let who = crate::authz::caller(&self.shared, creds).await?;
        match self.shared.propose_as(Op::LeaseRevoke(r), who).await? {
            ApplyResult::LeaseRevoke(mut g) => {
                self.shared.fill(&mut g.header);
                Ok(g)
            }
            other => Err(EtcdError::Internal(format!(
                "unexpected apply result {other:?}"
            ))),
        }
    }

    /// etcd's LeaseTimeToLive: an unknown lease answers TTL -1 (not an error).
    pub fn do_time_to_live(&self, r: LeaseTimeToLiveRequest) -> LeaseTimeToLiveResponse {
        let l = self.shared.lessor.lock().unwrap_or_else(|p| p.into_inner());
        let header = Some(self.shared.header(self.shared.current_revision()));
        match l.time_to_live(r.id, Instant::now()) {
            Some((remaining, granted, keys)) => LeaseTimeToLiveResponse {
                header,
                id: r.id,
                ttl: remaining,
                granted_ttl: granted,
                keys: if r.keys {
                    keys.into_iter().map(Into::into).collect()
                } else {
                    Vec::new()
                },
            },
            None => LeaseTimeToLiveResponse {
                header,
                id: r.id,
                ttl: -1,
                granted_ttl: 0,
                keys: Vec::new(),
            },
        }
    }

    pub fn do_leases(&self) -> LeaseLeasesResponse {
        let l = self.shared.lessor.lock().unwrap_or_else(|p| p.into_inner());
        LeaseLeasesResponse {
            header: Some(self.shared.header(self.shared.current_revision())),
            leases: l.ids().into_iter().map(|id| LeaseStatus { id }).collect(),
        }
    }

    /// One keepalive: the new TTL, or 0 for an unknown lease (etcd's answer).
    pub fn keep_alive_once(&self, id: i64) -> LeaseKeepAliveResponse {
        let ttl = {
            let mut l = self.shared.lessor.lock().unwrap_or_else(|p| p.into_inner());
            l.renew(id, Instant::now()).unwrap_or(0)
        };
        LeaseKeepAliveResponse {
            header: Some(self.shared.header(self.shared.current_revision())),
            id,
            ttl,
        }
    }
}

type KeepAliveStream = Pin<Box<dyn Stream<Item = Result<LeaseKeepAliveResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Lease for LeaseService {
    async fn lease_grant(
        &self,
        req: Request<LeaseGrantRequest>,
    ) -> Result<Response<LeaseGrantResponse>, Status> {
        Ok(Response::new(self.do_grant(req.into_inner()).await?))
    }
    async fn lease_revoke(
        &self,
        req: Request<LeaseRevokeRequest>,
    ) -> Result<Response<LeaseRevokeResponse>, Status> {
        let creds = crate::authz::Credentials::of(&req);
        Ok(Response::new(
            self.do_revoke(req.into_inner(), &creds).await?,
        ))
    }
    type LeaseKeepAliveStream = KeepAliveStream;
    async fn lease_keep_alive(
        &self,
        req: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let svc = self.clone();
        let input = req.into_inner();
        let out = input.map(move |r| match r {
            Ok(r) => Ok(svc.keep_alive_once(r.id)),
            Err(s) => Err(s),
        });
        Ok(Response::new(Box::pin(out)))
    }
    async fn lease_time_to_live(
        &self,
        req: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        let r = req.get_ref();
        if r.keys {
            // etcd 3.4 (v3rpc): with keys, READ on every attached key.
            let keys = {
                let l = self.shared.lessor.lock().unwrap_or_else(|p| p.into_inner());
                l.keys_of(r.id).unwrap_or_default()
            };
            crate::authz::check(
                &self.shared,
                &crate::authz::Credentials::of(&req),
                |s, who| {
                    keys.iter()
                        .try_for_each(|k| s.is_range_permitted(who, k, &[]))
                },
            )
            .await?;
        }
        Ok(Response::new(self.do_time_to_live(req.into_inner())))
    }
    async fn lease_leases(
        &self,
        _req: Request<LeaseLeasesRequest>,
    ) -> Result<Response<LeaseLeasesResponse>, Status> {
        Ok(Response::new(self.do_leases()))
    }
}
