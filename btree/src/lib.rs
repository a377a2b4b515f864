//! ferrite-btree: a copy-on-write B+tree on ferrite's own page format, with etcd's MVCC on top.
//!
//! **What it is.** `db` is the page layer: fixed 4 KiB pages in one file, two checksummed meta
//! pages, copy-on-write commits (pwrite pages, a commit record of their crc32cs and the other
//! meta page, one fdatasync; open checks the record), reads through a shared
//! memory map, an on-disk free list, overflow chains for large values. `mvcc` is etcd's MVCC
//! keyspace (revisions, versions, leases, tombstones, compaction, hash, watch history) stored in
//! that tree. The server uses only `mvcc::MvccStore`.
//!
//! **Invariants.**
//! - A crash at any point of a commit leaves the last durable commit intact and openable.
//! - A page reachable from a live snapshot or from the durable meta page is never rewritten.
//! - One writer; any number of readers on any thread, each pinning a snapshot without locks.
//! - Every page read is validated (checksum, own id, kind, bounds); corruption is an error that
//!   names the page id, never a panic. The writer checks the checksum of a page once per open:
//!   it skips it for pages it wrote itself or verified since open (`db::Trusted`); readers
//!   check it on every read.
//! - The writer's kept copies of a light commit's pages (`DbWriter::recent`, at most
//!   `RECENT_PAGES_MAX`) equal those pages on disk: only `write_pages` writes tree pages and
//!   it replaces the whole set (debug builds compare each copy with the file when used).
//!
//! **Tests** (`cargo test -p ferrite-btree --release`, under a minute): `tests/model.rs`
//! (property tests against a `BTreeMap` and an MVCC history model, with crashes;
//! `PROPTEST_CASES=1000` for a longer run), `tests/crash.rs` (every write / sync / resize cut,
//! torn unsynced writes), `tests/corrupt.rs` (corrupt pages are errors naming the page),
//! `tests/leaf_spread.rs` (overfull leaves spread over neighbours keep the tree valid),
//! `tests/recent_pages.rs` (light and heavy commits interleaved: the kept pages never go
//! stale),
//! `tests/snapshot_stability.rs` (a pinned snapshot across 10k commits), `tests/mvcc_etcd.rs`
//! (etcd's semantics case by case). Fuzzing: `cd btree/fuzz && cargo +nightly fuzz run
//! page_decode`. loom: `loom-tests/tests/btree_pinning.rs`. Benchmark against redb:
//! `cargo bench -p ferrite-btree --bench btree_vs_redb` (numbers in docs/benchmarks.md).
//!
//! **Non-goals.** Multiple writers; multiple processes opening one file; keys larger than
//! `mvcc::KEY_BYTES_MAX`; page sizes other than 4 KiB (the meta page records it).

pub mod db;
pub mod error;
mod free;
pub mod mvcc;
pub mod page;
pub mod storage;

pub use db::{Db, DbOptions, DbWriter, PageReads, PendingSync, Snapshot, SyncedCommit};
pub use error::StoreError;
pub use mvcc::{
    Event, EventKind, KeyValue, MvccError, MvccStore, RangeOptions, RangeResult, ReadView,
    StoreOptions, Txn, TxnOutcome, Writer,
};
pub use storage::{FileStorage, SimStorage, Storage};
