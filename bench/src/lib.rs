//! ferrite-bench (placeholder; see the crate's issue).
