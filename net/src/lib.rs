//! ferrite-net (placeholder; see the crate's issue).
