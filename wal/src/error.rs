use std::fmt;
use std::io;

/// Everything that can go wrong in the WAL. `Clone` so one failed group commit can hand
/// the same error to every appender in the group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WalError {
    /// An I/O operation failed. If it was a segment write or sync the log is now poisoned
    /// (every later append fails with `Poisoned`); reopen to recover.
    Io {
        op: &'static str,
        file: String,
        kind: io::ErrorKind,
        message: String,
    },
    /// A segment holds bytes that do not decode, before the tail of the last segment (bit
    /// rot, a lost or foreign file): the log refuses to open rather than lose records.
    Corrupt {
        file: String,
        offset: u64,
        reason: String,
    },
    /// An append was rejected before anything was written (e.g. an entry index that leaves
    /// a gap, or a snapshot index going backwards). Nothing of that append was logged.
    InvalidRecord { reason: String },
    /// One append's encoded records exceed `batch_bytes_max`.
    TooLarge {
        bytes: usize,
        batch_bytes_max: usize,
    },
    /// An earlier write or sync failed; the unsynced state of the file is unknown, so the
    /// log takes no more appends. Acknowledged records are safe: reopen the log.
    Poisoned { reason: String },
    /// The options are inconsistent.
    InvalidOptions { reason: String },
    /// `release_below` without a covering snapshot marker.
    NoSnapshot { index: u64 },
    /// The log was closed (or its I/O thread died) before the request was served.
    Closed,
}

impl WalError {
    pub(crate) fn io(op: &'static str, file: String, e: &io::Error) -> WalError {
        WalError::Io {
            op,
            file,
            kind: e.kind(),
            message: e.to_string(),
        }
    }

    /// The raw OS error kind, if this is an I/O error.
    pub fn io_kind(&self) -> Option<io::ErrorKind> {
        match self {
            WalError::Io { kind, .. } => Some(*kind),
            _ => None,
        }
    }
}

impl fmt::Display for WalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WalError::Io {
                op, file, message, ..
            } => write!(f, "wal: {op} {file}: {message}"),
            WalError::Corrupt {
                file,
                offset,
                reason,
            } => {
                write!(
                    f,
                    "wal: corrupt segment {file} at byte offset {offset}: {reason}"
                )
            }
            WalError::InvalidRecord { reason } => write!(f, "wal: append rejected: {reason}"),
            WalError::TooLarge {
                bytes,
                batch_bytes_max,
            } => write!(
                f,
                "wal: append of {bytes} encoded bytes exceeds batch_bytes_max {batch_bytes_max}"
            ),
            WalError::Poisoned { reason } => {
                write!(
                    f,
                    "wal: log stopped after an earlier I/O failure ({reason}); reopen it"
                )
            }
            WalError::InvalidOptions { reason } => write!(f, "wal: invalid options: {reason}"),
            WalError::NoSnapshot { index } => write!(
                f,
                "wal: release_below({index}) needs a logged snapshot marker at index >= {}",
                index.saturating_sub(1)
            ),
            WalError::Closed => write!(f, "wal: closed"),
        }
    }
}

impl std::error::Error for WalError {}
