//! The v3election service (`v3electionpb.Election`: Campaign, Proclaim, Leader, Observe,
//! Resign), with etcd's semantics, on top of the KV and Watch services.
//!
//! What it is: etcd implements elections server-side with its client's
//! `concurrency.Election`; this module does the same steps against any `Kv` + `Watch`:
//!
//! - a candidate's key is `<name>/<lease hex>`, put with the candidate's lease only if absent
//!   (a repeated Campaign with the same lease resumes, and proclaims a changed value);
//! - the leader is the key with the lowest create_revision under `<name>/`; Campaign answers
//!   once every earlier key is deleted (`waitDeletes`);
//! - Proclaim and Resign act only while the leader key still has the campaign's
//!   create_revision ("election: not leader" otherwise); Resign of a non-leader is a no-op;
//! - Leader reads the first-created key ("election: no leader" when none);
//! - Observe streams the current leader, every new value the leader proclaims, and each
//!   successor, as etcd's `observe` loop does.
//!
//! Invariants: the same as [`crate::lock`]: ownership is create-revision order under the
//! prefix, and every key is bound to its candidate's lease.
//!
//! Non-goals: anything beyond etcd's recipe (no fencing tokens besides the revision).

use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use ferrite_net::pb::etcdserverpb::{
    kv_server::Kv, watch_server::Watch, RangeRequest, TxnRequest, WatchCreateRequest,
};
use ferrite_net::pb::mvccpb::{event::EventType, KeyValue};
use ferrite_net::pb::v3electionpb::{
    election_server::Election, CampaignRequest, CampaignResponse, LeaderKey, LeaderRequest,
    LeaderResponse, ProclaimRequest, ProclaimResponse, ResignRequest, ResignResponse,
};
use futures_util::StreamExt;
use tonic::{Request, Response, Status};

use crate::lock::{
    cmp_create_revision, first_create, op_delete, op_put, op_range, open_watch, owner_key,
    txn_range, wait_deletes, with_slash, DeleteOnDrop,
};

/// etcd's `ErrElectionNotLeader`.
pub const ERR_NOT_LEADER: &str = "election: not leader";
/// etcd's `ErrElectionNoLeader`.
pub const ERR_NO_LEADER: &str = "election: no leader";
/// etcd's `ErrMissingLeaderKey`.
pub const ERR_MISSING_LEADER_KEY: &str = "\"leader\" field must be provided";

/// Bound on Observe's buffered leader updates: a slow observer stops the observing task
/// (which then resumes from the store) instead of growing memory.
pub const OBSERVE_BUFFER_RESPONSES_MAX: usize = 16;

/// The v3election service over a KV and a Watch service.
pub struct ElectionService<K, W> {
    kv: Arc<K>,
    watch: Arc<W>,
    /// The caller's credentials, forwarded to the KV and Watch calls made on its behalf.
    creds: crate::authz::Credentials,
}

impl<K, W> ElectionService<K, W> {
    pub fn new(kv: Arc<K>, watch: Arc<W>) -> Self {
        ElectionService {
            kv,
            watch,
            creds: Default::default(),
        }
    }

    /// A copy acting for the caller of `req`.
    fn for_caller<T>(&self, req: &Request<T>) -> Self {
        ElectionService {
            kv: self.kv.clone(),
            watch: self.watch.clone(),
            creds: crate::authz::Credentials::of(req),
        }
    }
}

impl<K, W> Clone for ElectionService<K, W> {
    fn clone(&self) -> Self {
        ElectionService {
            kv: self.kv.clone(),
            watch: self.watch.clone(),
            creds: self.creds.clone(),
        }
    }
}

/// The stream of Observe responses.
pub type ObserveStream =
    Pin<Box<dyn futures_util::Stream<Item = Result<LeaderResponse, Status>> + Send>>;

/// Observe's response stream: the responses, plus a sender whose drop (the client went away)
/// stops the observing task even while it waits on a watch.
struct Observed {
    rx: futures_channel::mpsc::Receiver<Result<LeaderResponse, Status>>,
    _gone: futures_channel::oneshot::Sender<()>,
}

impl futures_util::Stream for Observed {
    type Item = Result<LeaderResponse, Status>;
    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.rx.poll_next_unpin(cx)
    }
}

/// The next item of `stream`, or `None` once the observer is gone.
async fn next_or_gone<S>(
    stream: &mut S,
    gone: &mut futures_channel::oneshot::Receiver<()>,
) -> Option<S::Item>
where
    S: futures_util::Stream + Unpin,
{
    match futures_util::future::select(stream.next(), gone).await {
        futures_util::future::Either::Left((item, _)) => item,
        futures_util::future::Either::Right(_) => None,
    }
}

impl<K: Kv, W: Watch> ElectionService<K, W> {
    pub async fn do_campaign(&self, req: CampaignRequest) -> Result<CampaignResponse, Status> {
        let prefix = with_slash(&req.name);
        let key = owner_key(&prefix, req.lease);
        let txn = TxnRequest {
            compare: vec![cmp_create_revision(key.clone(), 0)],
            success: vec![op_put(key.clone(), req.value.clone(), req.lease)],
            failure: vec![op_range(RangeRequest {
                key: key.clone(),
                ..Default::default()
            })],
        };
        let resp = self.kv.txn(self.creds.request(txn)).await?.into_inner();
        // etcd answers with the header of the campaign txn.
        let header = resp.header;
        let mut leader_rev = header.as_ref().map_or(0, |h| h.revision);
        if !resp.succeeded {
            let existing = txn_range(&resp, 0)?
                .kvs
                .first()
                .cloned()
                .ok_or_else(|| Status::unknown(ERR_NOT_LEADER))?;
            leader_rev = existing.create_revision;
            if existing.value != req.value {
                if let Err(e) = self
                    .proclaim(&key, leader_rev, req.lease, req.value.clone())
                    .await
                {
                    let _ = self.resign(&key, leader_rev).await;
                    return Err(e);
                }
            }
        }
        let guard = DeleteOnDrop::new(self.kv.clone(), self.creds.clone(), key.clone(), leader_rev);
        match wait_deletes(
            &*self.kv,
            &*self.watch,
            &self.creds,
            &prefix,
            leader_rev - 1,
        )
        .await
        {
            Ok(_) => guard.disarm(),
            Err(e) => {
                drop(guard);
                return Err(e);
            }
        }
        Ok(CampaignResponse {
            header,
            leader: Some(LeaderKey {
                name: req.name,
                key,
                rev: leader_rev,
                lease: req.lease,
            }),
        })
    }

    async fn proclaim(
        &self,
        key: &Bytes,
        rev: i64,
        lease: i64,
        value: Bytes,
    ) -> Result<Option<ferrite_net::pb::etcdserverpb::ResponseHeader>, Status> {
        let txn = TxnRequest {
            compare: vec![cmp_create_revision(key.clone(), rev)],
            success: vec![op_put(key.clone(), value, lease)],
            failure: vec![],
        };
        let resp = self.kv.txn(self.creds.request(txn)).await?.into_inner();
        if !resp.succeeded {
            return Err(Status::unknown(ERR_NOT_LEADER));
        }
        Ok(resp.header)
    }

    async fn resign(
        &self,
        key: &Bytes,
        rev: i64,
    ) -> Result<Option<ferrite_net::pb::etcdserverpb::ResponseHeader>, Status> {
        let txn = TxnRequest {
            compare: vec![cmp_create_revision(key.clone(), rev)],
            success: vec![op_delete(key.clone())],
            failure: vec![],
        };
        Ok(self
            .kv
            .txn(self.creds.request(txn))
            .await?
            .into_inner()
            .header)
    }

    pub async fn do_proclaim(&self, req: ProclaimRequest) -> Result<ProclaimResponse, Status> {
        let leader = req
            .leader
            .ok_or_else(|| Status::unknown(ERR_MISSING_LEADER_KEY))?;
        let header = self
            .proclaim(&leader.key, leader.rev, leader.lease, req.value)
            .await?;
        Ok(ProclaimResponse { header })
    }

    pub async fn do_resign(&self, req: ResignRequest) -> Result<ResignResponse, Status> {
        let leader = req
            .leader
            .ok_or_else(|| Status::unknown(ERR_MISSING_LEADER_KEY))?;
        let header = self.resign(&leader.key, leader.rev).await?;
        Ok(ResignResponse { header })
    }

    pub async fn do_leader(&self, req: LeaderRequest) -> Result<LeaderResponse, Status> {
        let prefix = with_slash(&req.name);
        let resp = self
            .kv
            .range(self.creds.request(first_create(&prefix)))
            .await?
            .into_inner();
        match resp.kvs.into_iter().next() {
            Some(kv) => Ok(LeaderResponse {
                header: resp.header,
                kv: Some(kv),
            }),
            None => Err(Status::unknown(ERR_NO_LEADER)),
        }
    }

    /// etcd's `observe` loop, feeding `tx` until the receiver goes away or a read fails.
    async fn observe_loop(
        self,
        name: Bytes,
        tx: futures_channel::mpsc::Sender<Result<LeaderResponse, Status>>,
        mut gone: futures_channel::oneshot::Receiver<()>,
    ) {
        let mut tx = tx;
        let prefix = with_slash(&name);
        loop {
            let resp = match self
                .kv
                .range(self.creds.request(first_create(&prefix)))
                .await
            {
                Ok(r) => r.into_inner(),
                Err(e) => {
                    let _ = futures_util::SinkExt::send(&mut tx, Err(e)).await;
                    return;
                }
            };
            let (mut header, kv): (_, KeyValue) = match resp.kvs.into_iter().next() {
                Some(kv) => (resp.header, kv),
                None => {
                    // Wait for the first put under the prefix.
                    let start = resp.header.as_ref().map_or(0, |h| h.revision);
                    let create = WatchCreateRequest {
                        key: prefix.clone(),
                        range_end: crate::lock::prefix_range_end(&prefix),
                        start_revision: start,
                        ..Default::default()
                    };
                    let Ok((_keep, stream)) = open_watch(&*self.watch, create, &self.creds).await
                    else {
                        return;
                    };
                    let mut stream = Box::pin(stream);
                    let mut found = None;
                    while found.is_none() {
                        let Some(Ok(wr)) = next_or_gone(&mut stream, &mut gone).await else {
                            return;
                        };
                        if wr.canceled {
                            return;
                        }
                        for ev in wr.events {
                            if ev.r#type == EventType::Put as i32 {
                                if let Some(kv) = ev.kv {
                                    let mut h = wr.header;
                                    if let Some(h) = h.as_mut() {
                                        h.revision = kv.mod_revision;
                                    }
                                    found = Some((h, kv));
                                    break;
                                }
                            }
                        }
                    }
                    found.expect("loop exits only when found")
                }
            };
            let leader_rev = header.as_ref().map_or(0, |h| h.revision);
            let first = LeaderResponse {
                header,
                kv: Some(kv.clone()),
            };
            if futures_util::SinkExt::send(&mut tx, Ok(first))
                .await
                .is_err()
            {
                return;
            }
            // Follow this leader's key until it is deleted.
            let create = WatchCreateRequest {
                key: kv.key.clone(),
                start_revision: leader_rev + 1,
                ..Default::default()
            };
            let Ok((_keep, stream)) = open_watch(&*self.watch, create, &self.creds).await else {
                return;
            };
            let mut stream = Box::pin(stream);
            let mut deleted = false;
            while !deleted {
                let Some(Ok(wr)) = next_or_gone(&mut stream, &mut gone).await else {
                    return;
                };
                if wr.canceled {
                    return;
                }
                for ev in wr.events {
                    if ev.r#type == EventType::Delete as i32 {
                        deleted = true;
                        break;
                    }
                    header = wr.header;
                    let update = LeaderResponse { header, kv: ev.kv };
                    if futures_util::SinkExt::send(&mut tx, Ok(update))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
    }
}

#[tonic::async_trait]
impl<K: Kv, W: Watch> Election for ElectionService<K, W> {
    async fn campaign(
        &self,
        request: Request<CampaignRequest>,
    ) -> Result<Response<CampaignResponse>, Status> {
        self.for_caller(&request)
            .do_campaign(request.into_inner())
            .await
            .map(Response::new)
    }

    async fn proclaim(
        &self,
        request: Request<ProclaimRequest>,
    ) -> Result<Response<ProclaimResponse>, Status> {
        self.for_caller(&request)
            .do_proclaim(request.into_inner())
            .await
            .map(Response::new)
    }

    async fn leader(
        &self,
        request: Request<LeaderRequest>,
    ) -> Result<Response<LeaderResponse>, Status> {
        self.for_caller(&request)
            .do_leader(request.into_inner())
            .await
            .map(Response::new)
    }

    type ObserveStream = ObserveStream;

    async fn observe(
        &self,
        request: Request<LeaderRequest>,
    ) -> Result<Response<Self::ObserveStream>, Status> {
        let (tx, rx) = futures_channel::mpsc::channel(OBSERVE_BUFFER_RESPONSES_MAX);
        let (gone_tx, gone_rx) = futures_channel::oneshot::channel();
        let this = self.for_caller(&request);
        let name = request.into_inner().name;
        // The observing task runs on this core; it ends when the client drops the stream
        // (the send fails) or the store errors.
        glommio::spawn_local(this.observe_loop(name, tx, gone_rx)).detach();
        Ok(Response::new(Box::pin(Observed { rx, _gone: gone_tx })))
    }

    async fn resign(
        &self,
        request: Request<ResignRequest>,
    ) -> Result<Response<ResignResponse>, Status> {
        self.for_caller(&request)
            .do_resign(request.into_inner())
            .await
            .map(Response::new)
    }
}
