//! ferrite: the etcd-v3-compatible server (the `ferrite` binary's library).
//!
//! What it is: the composition root of ferrite. It wires the engine crates together —
//! `ferrite-wal` (group-committed log), `ferrite-raft` (Raft as a pure state machine),
//! `ferrite-btree` (copy-on-write B+tree with etcd's MVCC) — behind etcd's v3 gRPC services
//! served by `ferrite-net` on glommio, one executor per core.
//!
//! Threads: core 0 is the *Raft core*; it owns the `RawNode`, the `GroupWal` and the single
//! MVCC `Writer`, batches proposals from every core, persists, applies and answers. Every core
//! accepts client connections; serializable reads run on the accepting core from a B+tree
//! snapshot, linearizable reads wait for a ReadIndex from the Raft core. See docs/ARCHITECTURE.md.
//!
//! Invariants:
//! - Every write (KV, lease grant/revoke/expiry, compaction) goes through Raft and the WAL before
//!   it is applied; a client is answered only after its entry is durable and applied.
//! - The MVCC store's metadata holds `applied_index`; entries up to it are never re-applied, and
//!   entries after it are replayed from the WAL on restart (apply is deterministic).
//! - Watchers never block the apply loop: events go out through bounded buffers; a watcher that
//!   falls behind catches up from the store's history.
//!
//! Clusters: members exchange Raft messages over the peer port (`ferrite_net::peer`); followers
//! forward proposals and ReadIndex requests to the leader; membership is replicated state
//! (`membership.rs`); a lagging or new member installs the leader's store image.
//!
//! Non-goals (for now): joint consensus (one membership change at a time, as etcd 3.4);
//! streaming snapshot images from disk (an image is built in memory, bounded by
//! `raft_core::SNAPSHOT_IMAGE_BYTES_MAX`); more than `state::STORE_SWAPS_MAX - 1` snapshot
//! installs per process.
//!
//! Learners refuse every client RPC but Status and serializable Range with etcd 3.4's
//! "etcdserver: rpc not supported for learner" (`Shared::learner_refuses`). Watchers on a member
//! that installs a snapshot image catch up from the new store (`watch_hub::HubBatch::reset`).

pub mod config;
pub mod election;
pub mod http;
pub mod lock;
pub mod logging;
pub mod metrics;

pub mod apply;
pub mod auth_svc;
pub mod authz;
pub mod cluster;
pub mod errors;
pub mod internal;
pub mod kv;
pub mod kvops;
pub mod lease;
pub mod lessor;
pub mod maintenance;
pub mod membership;
pub mod raft_core;
pub mod server;
pub mod snapshot_cmd;
pub mod state;
pub mod tls;
pub mod transport;
pub mod watch;
pub mod watch_hub;

pub use server::run;
