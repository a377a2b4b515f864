//! ferrite-btree (placeholder; see the crate's issue).
