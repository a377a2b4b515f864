//! Errors of the page layer and the store.

use std::fmt;

/// An error opening, reading or committing the store. Nothing is lost on error: the last
/// committed tree stays intact.
#[derive(Debug)]
pub enum StoreError {
    /// The operating system refused a read, write, sync or map.
    Io(std::io::Error),
    /// A page failed validation. `page` is the page id (byte offset `page * PAGE_SIZE`).
    Corrupt { page: u64, reason: String },
    /// The caller's input is outside a documented limit (key or value too large, ...).
    Invalid(String),
    /// An earlier I/O error left the writer unable to continue; reopen the store.
    Poisoned,
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Io(e) => write!(f, "btree: I/O error: {e}"),
            StoreError::Corrupt { page, reason } => {
                write!(f, "btree: corrupt page {page}: {reason}")
            }
            StoreError::Invalid(s) => write!(f, "btree: invalid input: {s}"),
            StoreError::Poisoned => {
                write!(
                    f,
                    "btree: writer poisoned by an earlier I/O error; reopen the store"
                )
            }
        }
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StoreError::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<std::io::Error> for StoreError {
    fn from(e: std::io::Error) -> Self {
        StoreError::Io(e)
    }
}
