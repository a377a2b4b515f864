//! ferrite-raft (placeholder; see the crate's issue).
