//! ferrite-wal (placeholder; see the crate's issue).
