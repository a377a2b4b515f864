//! The v3lock service (`v3lockpb.Lock`: Lock, Unlock), with etcd's semantics, on top of the
//! KV and Watch services — plus the concurrency recipes it shares with [`crate::election`].
//!
//! What it is: etcd implements Lock server-side with its client's `concurrency.Mutex`; this
//! module does the same steps against any `Kv` + `Watch` implementation (the server's own
//! services, called in-process through their tonic traits):
//!
//! 1. the lock key is `<name>/<lease id in lower-case hex>`;
//! 2. one Txn: if the key's create_revision is 0, put it (empty value, attached to the lease)
//!    else get it; either way also read the first-created key under `<name>/`;
//! 3. if no key under the prefix is older than ours, the lock is held; otherwise wait, one
//!    at a time, for the deletion of the newest key created before ours (`waitDeletes`), then
//!    answer with the header of the final read.
//!
//! Unlock deletes the key. A Lock whose caller goes away while waiting deletes its key
//! (best effort, as etcd does with the client's context), so it never holds the lock later.
//!
//! Invariants: the owner of a lock is always the key with the lowest create_revision under
//! `<name>/`; Lock answers only once every earlier key is gone; the lease of the key is the
//! caller's, so an expired lease releases the lock through the normal lease path.
//!
//! Non-goals: fairness beyond etcd's (create-revision order), lock keys outside a lease.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use ferrite_net::pb::etcdserverpb::{
    compare, kv_server::Kv, range_request, request_op, response_op, watch_request,
    watch_server::Watch, Compare, DeleteRangeRequest, PutRequest, RangeRequest, RangeResponse,
    RequestOp, ResponseHeader, TxnRequest, TxnResponse, WatchCreateRequest, WatchRequest,
    WatchResponse,
};
use ferrite_net::pb::mvccpb::event::EventType;
use ferrite_net::pb::v3lockpb::{
    lock_server::Lock, LockRequest, LockResponse, UnlockRequest, UnlockResponse,
};
use futures_channel::mpsc;
use futures_util::StreamExt;
use prost::Message;
use tonic::{Request, Response, Status};

/// The v3lock service over a KV and a Watch service.
pub struct LockService<K, W> {
    kv: Arc<K>,
    watch: Arc<W>,
    /// The caller's credentials, forwarded to the KV and Watch calls made on its behalf.
    creds: crate::authz::Credentials,
}

impl<K, W> LockService<K, W> {
    pub fn new(kv: Arc<K>, watch: Arc<W>) -> Self {
        LockService {
            kv,
            watch,
            creds: Default::default(),
        }
    }

    /// A copy acting for the caller of `req`.
    fn for_caller<T>(&self, req: &Request<T>) -> Self {
        LockService {
            kv: self.kv.clone(),
            watch: self.watch.clone(),
            creds: crate::authz::Credentials::of(req),
        }
    }
}

impl<K, W> Clone for LockService<K, W> {
    fn clone(&self) -> Self {
        LockService {
            kv: self.kv.clone(),
            watch: self.watch.clone(),
            creds: self.creds.clone(),
        }
    }
}

/// `<prefix>/<lease hex>` as etcd's concurrency package formats it (`%s%x`).
pub fn owner_key(prefix_with_slash: &[u8], lease: i64) -> Bytes {
    let mut k = BytesMut::with_capacity(prefix_with_slash.len() + 16);
    k.put_slice(prefix_with_slash);
    k.put_slice(format!("{lease:x}").as_bytes());
    k.freeze()
}

/// `name` + `/`.
pub fn with_slash(name: &[u8]) -> Bytes {
    let mut p = BytesMut::with_capacity(name.len() + 1);
    p.put_slice(name);
    p.put_u8(b'/');
    p.freeze()
}

/// etcd's `GetPrefixRangeEnd`: the smallest key greater than every key with this prefix
/// (`\0` when the prefix is all 0xff, i.e. "to the end").
pub fn prefix_range_end(prefix: &[u8]) -> Bytes {
    let mut end = prefix.to_vec();
    while let Some(last) = end.last_mut() {
        if *last < 0xff {
            *last += 1;
            return Bytes::from(end);
        }
        end.pop();
    }
    Bytes::from_static(b"\0")
}

/// `OpGet(prefix, WithFirstCreate())`: the oldest key under the prefix.
pub fn first_create(prefix: &Bytes) -> RangeRequest {
    RangeRequest {
        key: prefix.clone(),
        range_end: prefix_range_end(prefix),
        limit: 1,
        sort_order: range_request::SortOrder::Ascend as i32,
        sort_target: range_request::SortTarget::Create as i32,
        ..Default::default()
    }
}

/// `OpGet(prefix, WithLastCreate(), WithMaxCreateRev(rev))`: the newest key under the prefix
/// created at or before `max_create_revision`.
fn last_create_before(prefix: &Bytes, max_create_revision: i64) -> RangeRequest {
    RangeRequest {
        key: prefix.clone(),
        range_end: prefix_range_end(prefix),
        limit: 1,
        sort_order: range_request::SortOrder::Descend as i32,
        sort_target: range_request::SortTarget::Create as i32,
        max_create_revision,
        ..Default::default()
    }
}

pub(crate) fn op_range(r: RangeRequest) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestRange(r)),
    }
}

pub(crate) fn op_put(key: Bytes, value: Bytes, lease: i64) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key,
            value,
            lease,
            ..Default::default()
        })),
    }
}

pub(crate) fn op_delete(key: Bytes) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestDeleteRange(
            DeleteRangeRequest {
                key,
                ..Default::default()
            },
        )),
    }
}

/// `Compare(CreateRevision(key), "=", rev)`.
pub(crate) fn cmp_create_revision(key: Bytes, rev: i64) -> Compare {
    Compare {
        result: compare::CompareResult::Equal as i32,
        target: compare::CompareTarget::Create as i32,
        key,
        target_union: Some(compare::TargetUnion::CreateRevision(rev)),
        ..Default::default()
    }
}

/// The range response at position `i` of a txn's responses (etcd's recipes index them).
pub(crate) fn txn_range(resp: &TxnResponse, i: usize) -> Result<&RangeResponse, Status> {
    match resp.responses.get(i).and_then(|r| r.response.as_ref()) {
        Some(response_op::Response::ResponseRange(r)) => Ok(r),
        _ => Err(Status::internal(
            "concurrency: unexpected txn response shape",
        )),
    }
}

/// A gRPC request body fed from memory: length-prefixed protobuf frames written by the
/// gateway or a recipe, so a tonic streaming service can be called in-process.
pub struct ChannelBody {
    rx: mpsc::UnboundedReceiver<Bytes>,
}

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        self.rx
            .poll_next_unpin(cx)
            .map(|o| o.map(|b| Ok(http_body::Frame::data(b))))
    }
}

/// Frames one message as gRPC does on the wire: flag 0, u32 big-endian length, message.
pub fn grpc_frame<M: Message>(m: &M) -> Bytes {
    let len = m.encoded_len();
    let mut buf = BytesMut::with_capacity(5 + len);
    buf.put_u8(0);
    buf.put_u32(u32::try_from(len).expect("message under 4 GiB"));
    m.encode(&mut buf).expect("BytesMut grows");
    buf.freeze()
}

/// An in-process client stream to a tonic service: send requests with [`RequestSender::send`];
/// dropping it ends the request stream.
pub struct RequestSender {
    tx: mpsc::UnboundedSender<Bytes>,
}

impl RequestSender {
    /// Queues one request; false if the service stopped reading.
    pub fn send<M: Message>(&self, m: &M) -> bool {
        self.tx.unbounded_send(grpc_frame(m)).is_ok()
    }
}

/// A `tonic::Streaming` of `M` fed from memory, and the sender feeding it.
pub fn in_process_stream<M: Message + Default + Send + 'static>(
) -> (RequestSender, tonic::Streaming<M>) {
    let (tx, rx) = mpsc::unbounded();
    let streaming = tonic::Streaming::new_request(
        tonic_prost::ProstDecoder::<M>::default(),
        ChannelBody { rx },
        None,
        None,
    );
    (RequestSender { tx }, streaming)
}

/// Opens a watch on `watch` with one create request; returns the sender (keep it alive for
/// as long as the watch is wanted) and the response stream.
pub async fn open_watch<W: Watch>(
    watch: &W,
    create: WatchCreateRequest,
    creds: &crate::authz::Credentials,
) -> Result<(RequestSender, W::WatchStream), Status> {
    let (tx, streaming) = in_process_stream::<WatchRequest>();
    tx.send(&WatchRequest {
        request_union: Some(watch_request::RequestUnion::CreateRequest(create)),
    });
    let resp = watch.watch(creds.request(streaming)).await?;
    Ok((tx, resp.into_inner()))
}

/// Next response of a watch stream that carries events or ends the watch; `None` when the
/// stream ended.
async fn next_watch_response<S>(stream: &mut S) -> Option<Result<WatchResponse, Status>>
where
    S: futures_util::Stream<Item = Result<WatchResponse, Status>> + Unpin,
{
    stream.next().await
}

/// etcd's `waitDelete`: returns once `key` is deleted at or after `revision`.
pub(crate) async fn wait_delete<W: Watch>(
    watch: &W,
    creds: &crate::authz::Credentials,
    key: Bytes,
    revision: i64,
) -> Result<(), Status> {
    let (_tx, stream) = open_watch(
        watch,
        WatchCreateRequest {
            key,
            start_revision: revision,
            ..Default::default()
        },
        creds,
    )
    .await?;
    let mut stream = Box::pin(stream);
    while let Some(item) = next_watch_response(&mut stream).await {
        let resp = item?;
        if resp
            .events
            .iter()
            .any(|e| e.r#type == EventType::Delete as i32)
        {
            return Ok(());
        }
        if resp.canceled {
            let reason = if resp.cancel_reason.is_empty() {
                "lost watcher waiting for delete".to_string()
            } else {
                resp.cancel_reason
            };
            return Err(Status::unknown(reason));
        }
    }
    Err(Status::unknown("lost watcher waiting for delete"))
}

/// etcd's `waitDeletes`: waits until no key under `prefix` has create_revision <=
/// `max_create_revision`; returns the header of the final (empty) read.
pub(crate) async fn wait_deletes<K: Kv, W: Watch>(
    kv: &K,
    watch: &W,
    creds: &crate::authz::Credentials,
    prefix: &Bytes,
    max_create_revision: i64,
) -> Result<Option<ResponseHeader>, Status> {
    loop {
        let resp = kv
            .range(creds.request(last_create_before(prefix, max_create_revision)))
            .await?
            .into_inner();
        let Some(last) = resp.kvs.first() else {
            return Ok(resp.header);
        };
        let revision = resp.header.as_ref().map_or(0, |h| h.revision);
        wait_delete(watch, creds, last.key.clone(), revision).await?;
    }
}

/// Deletes `key` if the guarded operation is abandoned (its future dropped) before
/// completing: the equivalent of etcd's cleanup on a cancelled context. The cleanup task is
/// spawned up front on the current glommio executor (so this must be created on one) and
/// waits for either [`DeleteOnDrop::disarm`] or the guard's drop.
pub(crate) struct DeleteOnDrop {
    done: Option<futures_channel::oneshot::Sender<()>>,
}

impl DeleteOnDrop {
    pub(crate) fn new<K: Kv>(
        kv: Arc<K>,
        creds: crate::authz::Credentials,
        key: Bytes,
        create_revision: i64,
    ) -> Self {
        let (done, abandoned) = futures_channel::oneshot::channel::<()>();
        glommio::spawn_local(async move {
            if abandoned.await.is_ok() {
                return; // disarmed: the operation completed
            }
            let txn = TxnRequest {
                compare: vec![cmp_create_revision(key.clone(), create_revision)],
                success: vec![op_delete(key)],
                failure: vec![],
            };
            let _ = kv.txn(creds.request(txn)).await;
        })
        .detach();
        DeleteOnDrop { done: Some(done) }
    }

    pub(crate) fn disarm(mut self) {
        if let Some(done) = self.done.take() {
            let _ = done.send(());
        }
    }
}

impl<K: Kv, W: Watch> LockService<K, W> {
    /// etcd's `Mutex.Lock` with the caller's lease.
    pub async fn do_lock(&self, req: LockRequest) -> Result<LockResponse, Status> {
        let prefix = with_slash(&req.name);
        let my_key = owner_key(&prefix, req.lease);
        let txn = TxnRequest {
            compare: vec![cmp_create_revision(my_key.clone(), 0)],
            success: vec![
                op_put(my_key.clone(), Bytes::new(), req.lease),
                op_range(first_create(&prefix)),
            ],
            failure: vec![
                op_range(RangeRequest {
                    key: my_key.clone(),
                    ..Default::default()
                }),
                op_range(first_create(&prefix)),
            ],
        };
        let resp = self.kv.txn(self.creds.request(txn)).await?.into_inner();
        let mut my_rev = resp.header.as_ref().map_or(0, |h| h.revision);
        if !resp.succeeded {
            let mine = txn_range(&resp, 0)?;
            my_rev = mine.kvs.first().map_or(my_rev, |kv| kv.create_revision);
        }
        let owner = txn_range(&resp, 1)?;
        if owner
            .kvs
            .first()
            .is_none_or(|kv| kv.create_revision == my_rev)
        {
            return Ok(LockResponse {
                header: resp.header,
                key: my_key,
            });
        }
        let guard = DeleteOnDrop::new(self.kv.clone(), self.creds.clone(), my_key.clone(), my_rev);
        match wait_deletes(&*self.kv, &*self.watch, &self.creds, &prefix, my_rev - 1).await {
            Ok(header) => {
                guard.disarm();
                Ok(LockResponse {
                    header,
                    key: my_key,
                })
            }
            Err(e) => {
                // Release our place in the queue (etcd: m.Unlock on a failed wait).
                drop(guard);
                Err(e)
            }
        }
    }

    /// etcd's Unlock: delete the key.
    pub async fn do_unlock(&self, req: UnlockRequest) -> Result<UnlockResponse, Status> {
        let resp = self
            .kv
            .delete_range(self.creds.request(DeleteRangeRequest {
                key: req.key,
                ..Default::default()
            }))
            .await?
            .into_inner();
        Ok(UnlockResponse {
            header: resp.header,
        })
    }
}

#[tonic::async_trait]
impl<K: Kv, W: Watch> Lock for LockService<K, W> {
    async fn lock(&self, request: Request<LockRequest>) -> Result<Response<LockResponse>, Status> {
        self.for_caller(&request)
            .do_lock(request.into_inner())
            .await
            .map(Response::new)
    }

    async fn unlock(
        &self,
        request: Request<UnlockRequest>,
    ) -> Result<Response<UnlockResponse>, Status> {
        self.for_caller(&request)
            .do_unlock(request.into_inner())
            .await
            .map(Response::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_like_etcd() {
        assert_eq!(&owner_key(&with_slash(b"mylock"), 99)[..], b"mylock/63");
        assert_eq!(
            &owner_key(&with_slash(b"l"), 0x694d7c1bdf5c0c0a)[..],
            b"l/694d7c1bdf5c0c0a"
        );
        assert_eq!(&prefix_range_end(b"a/")[..], b"a0");
        assert_eq!(&prefix_range_end(b"a\xff")[..], b"b");
        assert_eq!(&prefix_range_end(b"\xff\xff")[..], b"\0");
    }

    #[test]
    fn grpc_frames() {
        let req = LockRequest {
            name: Bytes::from_static(b"n"),
            lease: 5,
        };
        let f = grpc_frame(&req);
        assert_eq!(f[0], 0);
        let len = u32::from_be_bytes([f[1], f[2], f[3], f[4]]) as usize;
        assert_eq!(len, f.len() - 5);
        assert_eq!(LockRequest::decode(&f[5..]).unwrap(), req);
    }
}
