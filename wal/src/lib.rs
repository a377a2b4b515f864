//! ferrite-wal: the segmented, checksummed, group-committed write-ahead log under
//! ferrite's Raft log.
//!
//! # What it is
//! Records ([`WalRecord`]: Raft entries, hard state, snapshot markers) are framed with a
//! length, a type and a CRC32C and appended to preallocated, zero-filled segment files
//! (`docs/format.md`, "WAL segments"; constants in [`format`]). Two layers:
//! - [`Wal`]: a synchronous engine generic over a small I/O trait ([`Storage`]), with a
//!   real-file implementation ([`FileStorage`]) and a simulated disk ([`sim`]) that keeps
//!   written and synced bytes apart and injects crashes, torn writes, EIO and ENOSPC.
//! - [`GroupWal`]: the group-commit front end for a glommio executor. Concurrent
//!   `append`s share one write and one fdatasync, run on a dedicated I/O thread; each
//!   `append` future resolves only once its records are durable. The one exception is
//!   `append_inline`, asked for by a lone appender under light load: if the I/O thread is
//!   idle with nothing queued, the write and fdatasync run on the caller's thread (blocking
//!   its executor for one sync, saving two thread wake-ups). The next segment is prepared (zero-filled, synced) on its own thread
//!   while the current one fills.
//!
//! # Invariants
//! - An acknowledged append is durable: it was written and `fdatasync`ed before its
//!   result was reported, and it is returned by every later recovery.
//! - Only the bytes of the last unsynced write can be damaged by a crash; they lie in the
//!   last written segment, within `batch_bytes_max + PREAMBLE_BYTES_MAX` bytes of the first
//!   bad record, followed only by zeros. Recovery truncates such a torn tail; anything else
//!   that fails to decode is an error naming the file and byte offset (bit rot is never
//!   silently dropped, except within that last-batch window, where it cannot be told from a
//!   torn write).
//! - Logged entries form one contiguous run: an entry with index `i` must be at most one
//!   past Raft's last index (last entry or snapshot marker) and above the snapshot marker;
//!   it supersedes every entry `>= i`. Appends breaking this are refused, nothing written.
//! - One log per directory (an exclusive `flock` on `LOCK`); one writer at a time: the I/O
//!   thread, or an inline appender holding the queue's `busy` claim (loom:
//!   `loom-tests/tests/wal_handoff.rs`).
//! - Every segment begins with the hard state and snapshot marker current when it was
//!   started, so freeing a prefix of segments never loses them.
//! - After a failed segment write or sync the log is poisoned: it accepts no more
//!   appends (the kernel may have dropped the dirty pages), and a reopen recovers it.
//!
//! # Non-goals
//! - Reading the log while it is open (recovery returns everything the server needs).
//! - Sharing one log between executors or processes; the log is owned by one core.
//! - Limits beyond the named ones: `batch_bytes_max` bounds one append and one sync's
//!   bytes, `segment_bytes` a segment; the number of segments is the caller's to bound by
//!   logging snapshot markers and calling `release_below`.
//! - Surviving lost or corrupted acknowledged data beyond detecting it.
//! - Compression or encryption of records.

mod core;
mod error;
pub mod format;
mod group;
pub mod sim;
mod storage;

pub use crate::core::Wal;
pub use crate::error::WalError;
pub use crate::group::{GroupStats, GroupWal};
pub use crate::storage::{FileStorage, RealFile, Storage, StorageFile};

/// One record of the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WalRecord {
    /// A Raft log entry; supersedes every logged entry with index `>= index`.
    Entry {
        index: u64,
        term: u64,
        data: Vec<u8>,
    },
    /// Raft's hard state; the last one logged wins.
    HardState { term: u64, vote: u64, commit: u64 },
    /// Everything up to `index` is in a snapshot: entries at or below it are dropped from
    /// recovery, and `release_below(index + 1)` may free their segments.
    Snapshot { index: u64, term: u64 },
}

/// Raft's hard state as recovered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HardState {
    pub term: u64,
    pub vote: u64,
    pub commit: u64,
}

/// A recovered log entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub index: u64,
    pub term: u64,
    pub data: Vec<u8>,
}

/// What a log holds when opened.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Recovered {
    /// The last hard state logged.
    pub hard_state: Option<HardState>,
    /// The last snapshot marker logged: `(index, term)`.
    pub snapshot: Option<(u64, u64)>,
    /// The surviving entries above the snapshot marker, contiguous and in index order.
    pub entries: Vec<Entry>,
}

/// Tunables of the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalOptions {
    /// Size of every new segment file, preallocated and zero-filled.
    pub segment_bytes: u64,
    /// Most bytes written between two syncs (excluding a segment's preamble). One append
    /// larger than this is rejected. Also bounds what recovery treats as a torn tail.
    pub batch_bytes_max: u32,
}

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions {
            segment_bytes: 64 * 1024 * 1024,
            batch_bytes_max: 4 * 1024 * 1024,
        }
    }
}

impl WalOptions {
    /// Checks the options against each other and the format's limits.
    pub fn validate(&self) -> Result<(), WalError> {
        let bad = |reason: String| Err(WalError::InvalidOptions { reason });
        if !(format::BATCH_BYTES_MAX_MIN..=format::BATCH_BYTES_MAX_LIMIT)
            .contains(&self.batch_bytes_max)
        {
            return bad(format!(
                "batch_bytes_max {} outside {}..={}",
                self.batch_bytes_max,
                format::BATCH_BYTES_MAX_MIN,
                format::BATCH_BYTES_MAX_LIMIT
            ));
        }
        let min = (format::SEGMENT_HEADER_BYTES + format::PREAMBLE_BYTES_MAX) as u64
            + self.batch_bytes_max as u64;
        if self.segment_bytes < min {
            return bad(format!(
                "segment_bytes {} below header + preamble + batch_bytes_max = {min}",
                self.segment_bytes
            ));
        }
        if self.segment_bytes > 1 << 32 {
            return bad(format!("segment_bytes {} above 4 GiB", self.segment_bytes));
        }
        Ok(())
    }
}
