//! # ferrite-raft: Raft as a pure state machine
//!
//! What it is: the Raft consensus algorithm (leader election with randomized timeouts,
//! pre-vote and check-quorum; pipelined log replication with flow control and fast
//! backtracking; commit; snapshots sent in chunks; ReadIndex and lease reads; leadership
//! transfer; single-node-at-a-time membership with learners) with **no I/O, no clock, no
//! threads**. The caller drives a [`RawNode`] the way etcd's server drives etcd-raft's
//! `RawNode`: [`RawNode::tick`], [`RawNode::step`], [`RawNode::propose`],
//! [`RawNode::read_index`], [`RawNode::propose_conf_change`], [`RawNode::transfer_leader`],
//! then [`RawNode::has_ready`] / [`RawNode::ready`] / [`RawNode::advance`]. The caller persists,
//! sends and applies. [`sim`] holds a deterministic, seeded whole-cluster simulator used by
//! the tests and the benchmark.
//!
//! ## The `Ready` contract, field by field
//!
//! Take a [`Ready`] with `ready()`, do the following in order, then call `advance()` (exactly
//! once per `ready()`; `step`/`tick`/`propose` may be called in between, `ready` may not).
//!
//! 1. `early_messages`: may be sent **at once**, before or while persisting. They are a
//!    leader's Append/Heartbeat/Snapshot/TimeoutNow messages in a term whose vote is already
//!    durable. This is how the leader writes its own new entries in parallel with replicating
//!    them: the leader counts itself in the commit quorum only for entries reported durable by
//!    `advance()`, so followers can commit an entry the leader has not yet synced, but never on
//!    the leader's word alone.
//! 2. `snapshot` (if any): persist it (image + metadata). It replaces the whole log: discard
//!    every log entry. Then apply it to the state machine before any `committed_entries`.
//! 3. `entries`: append durably. The first entry's index supersedes every persisted entry at
//!    or after that index (truncate-from-index on conflict).
//! 4. `hard_state` (if `Some`): persist term, vote and commit. Steps 2–4 must be durable
//!    (fsync; `must_sync` says whether anything besides commit changed) **before** any of
//!    `messages` is sent: votes and append acknowledgements promise durable state.
//! 5. `messages`: send (any order, may be lost, duplicated or reordered by the network).
//! 6. `committed_entries`: apply in order, after step 2–4 are durable (they may include
//!    entries from this same `Ready`'s `entries`). `EntryKind::ConfChange` entries have already
//!    taken effect inside Raft when handed out; `conf_state` is the resulting membership, to be
//!    recorded with the state machine (and put in snapshots).
//! 7. `read_states`: a read with that context is linearizable once the state machine has
//!    applied up to `index`.
//! 8. `soft_state`: informational (leader id, role).
//!
//! Restart: hand [`RawNode::new`] the persisted hard state, latest snapshot (with its
//! membership) and the log entries after it, plus the applied index in [`Config::applied`].
//! Committed entries after `applied` are handed out again.
//!
//! ## Design choices
//!
//! - **Membership: one change at a time, effective when committed** (etcd's ConfChange v1), not
//!   joint consensus. A change takes effect on every node when its entry is handed out in
//!   `committed_entries`. The leader refuses a second change until the first is applied, and a
//!   new leader refuses changes until its first (no-op) entry is applied: this is the fix for
//!   the single-server-change bug Ongaro described (a change is never built on an uncommitted
//!   one from an older term). Any two configurations in force at once differ by one node, so
//!   their majorities overlap. A node applying its own removal steps down and stops (ignores
//!   ticks and messages); a learner is promoted with `AddVoter`. An `AddLearner` for a current
//!   voter (demotion, which etcd 3.4 also refuses) and other no-op changes commit but change
//!   nothing; the server should reject them before proposing.
//! - **Log in memory**: the node keeps entries after the last snapshot; the caller bounds memory
//!   with [`RawNode::compact`] after taking a state-machine snapshot (which the leader then
//!   streams, in `snapshot_chunk_bytes` chunks, to followers that fell behind it).
//! - **Lease reads** ([`Config::lease_read`]) assume bounded clock drift; see that field.
//!
//! ## Invariants (asserted in release builds)
//!
//! - A committed entry is never truncated; commit never passes the last index.
//! - `snapshot index <= applied <= committed <= last index`; the log is contiguous.
//! - Only a candidate becomes leader; a leader commits by counting only entries of its term.
//!
//! ## Tests
//!
//! - `cargo test -p ferrite-raft --release`: `tests/paper.rs` (one test per rule of the Raft
//!   paper §5.1–5.4 and §6, pre-vote, check-quorum, ReadIndex, lease, transfer, snapshots, the
//!   `Ready` contract), `tests/codec.rs` (round trips; truncated, mutated and random input), and
//!   `tests/sim.rs`: 2,000 simulator seeds (~20 s on 2 busy cores).
//! - Long run: `RAFT_SIM_SEEDS=100000 cargo test -p ferrite-raft --release sim_seeds`
//!   (`RAFT_SIM_SEED_START` picks the first seed).
//! - Replay a failing seed (the failure prints this line): `RAFT_SIM_SEED=123 cargo test -p
//!   ferrite-raft --release sim_replay -- --nocapture`.
//! - Fuzz the decoders: `cd raft/fuzz && cargo +nightly fuzz run decode_message`.
//! - Throughput: `cargo bench -p ferrite-raft --bench commit`.
//!
//! ## Non-goals
//!
//! No transport, storage, clock or threads (the server provides them); no joint consensus
//! (`ConfChangeV2`); no async storage writes beyond the leader's parallel append (one `Ready`
//! is outstanding at a time); no proposal acknowledgements (the caller matches applied entries
//! to its requests, as etcd does).

mod codec;
mod log;
mod progress;
mod raw_node;
pub mod sim;
mod types;

pub use codec::{
    decode_conf_change, decode_entry, decode_hard_state, decode_message, decode_snapshot_meta,
    encode_conf_change, encode_entry, encode_hard_state, encode_message, encode_snapshot_meta,
    DecodeError, CONF_CHANGE_FORMAT_VERSION, ENTRY_KIND_CONF_CHANGE, ENTRY_KIND_NORMAL,
    MESSAGE_FLAG_REJECT, MESSAGE_FLAG_SNAPSHOT, MESSAGE_FORMAT_VERSION,
};
pub use progress::ProgressState;
pub use raw_node::{Config, PersistedState, RaftError, RawNode, Ready, Status};
pub use types::*;
