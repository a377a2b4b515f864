//! The Maintenance service: Status, Hash/HashKV, Snapshot, Defragment, Alarm, MoveLeader.
//!
//! Snapshot stream format (what `etcdctl snapshot save` writes to its file): the MVCC store's
//! own snapshot image (`MvccStore::write_snapshot`, self-delimiting, with its own crc32c),
//! zero padding up to a multiple of 512 bytes, then the SHA-256 of everything before it
//! (32 bytes) — etcd 3.4's client checks that `size % 512 == 32`. Restorable by ferrite
//! (`MvccStore::restore` reads the image and ignores the padding); not by etcd.

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use ferrite_net::pb::etcdserverpb::{
    maintenance_server::Maintenance, AlarmRequest, AlarmResponse, AlarmType, DefragmentRequest,
    DefragmentResponse, HashKvRequest, HashKvResponse, HashRequest, HashResponse,
    MoveLeaderRequest, MoveLeaderResponse, SnapshotRequest, SnapshotResponse, StatusRequest,
    StatusResponse,
};
use futures_util::Stream;
use sha2::{Digest, Sha256};
use tonic::{Code, Request, Response, Status};

use crate::errors::EtcdError;
use crate::internal::Op;
use crate::kvops::mvcc_err;
use crate::state::{ApplyResult, Shared};

/// Bytes per snapshot stream message.
pub const SNAPSHOT_CHUNK_BYTES: usize = 32 * 1024;
/// Chunks buffered between the snapshot writer thread and the stream.
pub const SNAPSHOT_CHUNKS_BUFFERED_MAX: usize = 16;

#[derive(Clone)]
pub struct MaintenanceService {
    pub shared: Arc<Shared>,
}

impl MaintenanceService {
    pub fn status(&self) -> StatusResponse {
        let sh = &self.shared;
        let errors = sh
            .alarms
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|a| {
                let name = AlarmType::try_from(a.alarm)
                    .map(|t| t.as_str_name().to_string())
                    .unwrap_or_else(|_| a.alarm.to_string());
                format!("memberID:{} alarm:{}", a.member_id, name)
            })
            .collect();
        StatusResponse {
            header: Some(sh.header(sh.current_revision())),
            version: crate::config::ETCD_SERVER_VERSION.to_string(),
            db_size: sh.store.size_bytes() as i64,
            leader: sh.leader.load(Ordering::Acquire),
            raft_index: sh.raft_index.load(Ordering::Acquire),
            raft_term: sh.raft_term.load(Ordering::Acquire),
            raft_applied_index: sh.applied_index.load(Ordering::Acquire),
            errors,
            db_size_in_use: sh.store.size_in_use_bytes() as i64,
            is_learner: sh
                .members()
                .members
                .get(&sh.member_id)
                .is_some_and(|m| m.is_learner),
        }
    }
}

/// A `Write` that only folds the bytes into a CRC-32C, remembering the value before the last
/// write: the snapshot stream ends with its own CRC-32C (4 bytes, one write), and a CRC over
/// data followed by its own CRC is a constant, so the hash is the CRC of everything before it.
struct Crc32cWriter {
    crc: u32,
    before_last: u32,
}

impl std::io::Write for Crc32cWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.before_last = self.crc;
        self.crc = crc32c::crc32c_append(self.crc, data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A `Write` that hands fixed-size chunks to the stream and hashes everything.
struct ChunkWriter {
    buf: Vec<u8>,
    hasher: Sha256,
    written: u64,
    tx: tokio::sync::mpsc::Sender<Result<Vec<u8>, Status>>,
}

impl ChunkWriter {
    fn flush_chunk(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(SNAPSHOT_CHUNK_BYTES));
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "client went away"))
    }
}

impl std::io::Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.hasher.update(data);
        self.written += data.len() as u64;
        let mut rest = data;
        while !rest.is_empty() {
            let room = SNAPSHOT_CHUNK_BYTES - self.buf.len();
            let n = room.min(rest.len());
            self.buf.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
            if self.buf.len() == SNAPSHOT_CHUNK_BYTES {
                self.flush_chunk()?;
            }
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

type SnapshotStream = Pin<Box<dyn Stream<Item = Result<SnapshotResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn alarm(&self, req: Request<AlarmRequest>) -> Result<Response<AlarmResponse>, Status> {
        match self.shared.propose(Op::Alarm(req.into_inner())).await? {
            ApplyResult::Alarm(mut a) => {
                a.header = Some(self.shared.header(self.shared.current_revision()));
                Ok(Response::new(a))
            }
            _ => Err(EtcdError::Internal("unexpected apply result".into()).status()),
        }
    }
    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        Ok(Response::new(self.status()))
    }
    async fn defragment(
        &self,
        req: Request<DefragmentRequest>,
    ) -> Result<Response<DefragmentResponse>, Status> {
        crate::authz::check_admin(&self.shared, &crate::authz::Credentials::of(&req)).await?;
        self.shared
            .store
            .defragment()
            .map_err(|e| Status::new(Code::Unknown, e.to_string()))?;
        Ok(Response::new(DefragmentResponse {
            header: Some(self.shared.header(self.shared.current_revision())),
        }))
    }
    /// etcd's Hash covers the whole backend (every bucket), not only the keys: ours is the
    /// CRC-32C (Castagnoli, as etcd's) of the store's snapshot stream — every key revision,
    /// tombstone and metadata entry (leases, alarms, applied Raft index) of the latest commit.
    /// It changes with every applied entry — so also when a restart's election applies its
    /// empty entry (the applied index is etcd's consistent index) — and is stable otherwise.
    /// HashKV covers the keys only. Computed on its own thread (it reads the whole store).
    async fn hash(&self, req: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        crate::authz::check_admin(&self.shared, &crate::authz::Credentials::of(&req)).await?;
        let store = self.shared.store.current();
        let (tx, rx) = futures_channel::oneshot::channel();
        let revision = self.shared.current_revision();
        std::thread::Builder::new()
            .name("hash".into())
            .spawn(move || {
                let mut w = Crc32cWriter {
                    crc: 0,
                    before_last: 0,
                };
                let r = store.write_snapshot(&mut w).map(|()| w.before_last);
                let _ = tx.send(r.map_err(|e| e.to_string()));
            })
            .map_err(|e| Status::new(Code::Internal, format!("spawning hash thread: {e}")))?;
        let hash = rx
            .await
            .map_err(|_| Status::new(Code::Internal, "hash thread vanished"))?
            .map_err(|e| Status::new(Code::Unknown, e))?;
        Ok(Response::new(HashResponse {
            header: Some(self.shared.header(revision)),
            hash,
        }))
    }
    async fn hash_kv(
        &self,
        req: Request<HashKvRequest>,
    ) -> Result<Response<HashKvResponse>, Status> {
        crate::authz::check_admin(&self.shared, &crate::authz::Credentials::of(&req)).await?;
        let rev = req.into_inner().revision;
        let (hash, compact_revision) = self.shared.store.hash_kv(rev).map_err(mvcc_err)?;
        Ok(Response::new(HashKvResponse {
            header: Some(self.shared.header(self.shared.current_revision())),
            hash,
            compact_revision,
        }))
    }
    type SnapshotStream = SnapshotStream;
    async fn snapshot(
        &self,
        req: Request<SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        crate::authz::check_admin(&self.shared, &crate::authz::Credentials::of(&req)).await?;
        let (tx, rx) = tokio::sync::mpsc::channel(SNAPSHOT_CHUNKS_BUFFERED_MAX);
        let store = self.shared.store.current();
        std::thread::Builder::new()
            .name("snapshot".into())
            .spawn(move || {
                let mut w = ChunkWriter {
                    buf: Vec::with_capacity(SNAPSHOT_CHUNK_BYTES),
                    hasher: Sha256::new(),
                    written: 0,
                    tx,
                };
                let res = store.write_snapshot(&mut w).map_err(|e| e.to_string());
                let res = res.and_then(|()| {
                    use std::io::Write;
                    let pad = (512 - (w.written % 512) as usize) % 512;
                    w.write_all(&vec![0u8; pad]).map_err(|e| e.to_string())?;
                    let sum = w.hasher.clone().finalize();
                    w.buf.extend_from_slice(&sum);
                    w.flush_chunk().map_err(|e| e.to_string())
                });
                if let Err(e) = res {
                    let _ = w
                        .tx
                        .blocking_send(Err(Status::new(Code::Unknown, format!("snapshot: {e}"))));
                }
            })
            .map_err(|e| Status::new(Code::Internal, format!("spawning snapshot thread: {e}")))?;
        let header = self.shared.header(self.shared.current_revision());
        let stream = futures_util::stream::unfold(rx, move |mut rx| async move {
            let item = rx.recv().await?;
            let item = item.map(|blob| SnapshotResponse {
                header: Some(header),
                remaining_bytes: 0,
                blob: blob.into(),
            });
            Some((item, rx))
        });
        Ok(Response::new(Box::pin(stream)))
    }
    async fn move_leader(
        &self,
        req: Request<MoveLeaderRequest>,
    ) -> Result<Response<MoveLeaderResponse>, Status> {
        let target = req.into_inner().target_id;
        self.shared.move_leader(target).await?;
        Ok(Response::new(MoveLeaderResponse {
            header: Some(self.shared.header(self.shared.current_revision())),
        }))
    }
}
