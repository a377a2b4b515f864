//! The recorded history of one run: every client operation with its invoke and complete times
//! (monotonic nanoseconds since the run started), its arguments and its outcome; every watch
//! stream's events; and the full event history read back at the end.
//!
//! Outcomes are one of: a definite result (`Ret::Put`, `Ret::Get`, ...), `Ret::Fail` (a read that
//! failed: it had no effect, so the checker ignores it) or `Ret::Unknown` (a write that failed or
//! timed out: it may or may not have taken effect, at any time after its invocation — the
//! checker treats its completion time as infinite).

use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Completion time of an operation whose outcome is unknown.
pub const NEVER_NS: u64 = u64::MAX;

/// One key-value as a read returned it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kv {
    pub key: String,
    pub value: String,
    pub mod_rev: i64,
    pub create_rev: i64,
    pub version: i64,
    pub lease: i64,
}

/// The compare of a compare-and-set transaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Cond {
    /// `mod_revision(key) == rev` (0 for an absent key, as etcd compares).
    ModRev(i64),
    /// `value(key) == value` (false for an absent key, as etcd compares).
    Value(String),
}

/// What a client asked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Call {
    /// Put `value` (unique in the run) at `key`, attached to `lease` when non-zero.
    Put {
        key: String,
        value: String,
        lease: i64,
    },
    /// Delete one key.
    Delete {
        key: String,
    },
    /// Txn: if `cond` then put(key, value) else get(key).
    Cas {
        key: String,
        cond: Cond,
        value: String,
    },
    /// Range of one key, or of every key under `prefix` when `key` is None.
    Get {
        key: Option<String>,
        prefix: String,
        serializable: bool,
    },
    LeaseGrant {
        ttl_s: i64,
    },
    LeaseKeepAlive {
        id: i64,
    },
    LeaseRevoke {
        id: i64,
    },
}

/// What the client got back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Ret {
    Put {
        rev: i64,
    },
    /// `rev` is the header revision: the delete's revision when `deleted > 0`, else the current one.
    Delete {
        rev: i64,
        deleted: i64,
    },
    /// `rev` is the header revision; `current` is the else-branch get when `succeeded` is false.
    Cas {
        succeeded: bool,
        rev: i64,
        current: Option<Kv>,
    },
    Get {
        rev: i64,
        kvs: Vec<Kv>,
    },
    LeaseGrant {
        id: i64,
        rev: i64,
    },
    LeaseKeepAlive {
        ttl_s: i64,
    },
    LeaseRevoke {
        rev: i64,
    },
    /// A definite failure (reads, and lease keep-alives answering "lease not found").
    Fail {
        error: String,
    },
    /// Indeterminate: the write may have been applied, at any time after its invocation.
    Unknown {
        error: String,
    },
}

/// One client operation.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Op {
    pub client: u32,
    /// The endpoint the client was connected to.
    pub endpoint: String,
    pub invoke_ns: u64,
    /// `NEVER_NS` when the outcome is unknown.
    pub complete_ns: u64,
    pub call: Call,
    pub ret: Ret,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    Put,
    Delete,
}

/// One watch event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub rev: i64,
    pub key: String,
    pub kind: EventKind,
    /// Empty for deletes.
    pub value: String,
}

/// The events one watch stream delivered, from `start_rev` until the stream broke or ended.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct WatchSegment {
    pub watcher: u32,
    pub endpoint: String,
    pub start_rev: i64,
    pub events: Vec<Event>,
    /// Why the segment ended (`"done"` for the last one of a watcher that reached the end).
    pub end: String,
}

/// Everything a run recorded; saved as JSON when a run fails.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct History {
    pub seed: u64,
    pub ops: Vec<Op>,
    pub watches: Vec<WatchSegment>,
    /// Every event under the run's prefix from revision 1 to `final_rev`, read back at the end
    /// (empty when the run ended before reading it).
    pub full: Vec<Event>,
    pub final_rev: i64,
    /// Watchers whose streams must cover `[first start_rev, final_rev]`.
    pub watchers_done: Vec<u32>,
    /// What the fault schedule did, with times.
    pub faults: Vec<String>,
}

impl History {
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let json = serde_json::to_vec(self).map_err(std::io::Error::other)?;
        std::fs::write(path, json)
    }

    pub fn load(path: &Path) -> std::io::Result<History> {
        let bytes = std::fs::read(path)?;
        serde_json::from_slice(&bytes).map_err(std::io::Error::other)
    }
}

/// Thread-safe recorder shared by every client task of a run.
#[derive(Clone)]
pub struct Recorder {
    start: Instant,
    ops: Arc<Mutex<Vec<Op>>>,
}

impl Recorder {
    pub fn new() -> Recorder {
        Recorder {
            start: Instant::now(),
            ops: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// Monotonic nanoseconds since the run started.
    pub fn now_ns(&self) -> u64 {
        let ns = self.start.elapsed().as_nanos();
        assert!(ns < u128::from(NEVER_NS));
        ns as u64
    }

    pub fn record(&self, mut op: Op) {
        if matches!(op.ret, Ret::Unknown { .. }) {
            op.complete_ns = NEVER_NS;
        }
        assert!(
            op.invoke_ns <= op.complete_ns,
            "completion before invocation"
        );
        self.ops.lock().expect("recorder lock").push(op);
    }

    pub fn take(&self) -> Vec<Op> {
        std::mem::take(&mut *self.ops.lock().expect("recorder lock"))
    }

    pub fn len(&self) -> usize {
        self.ops.lock().expect("recorder lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder::new()
    }
}
