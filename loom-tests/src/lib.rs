//! loom models of ferrite's cross-thread hand-offs.
//!
//! Each model lives in `tests/<crate>_*.rs` and is compiled only under `--cfg loom`:
//!
//! ```text
//! RUSTFLAGS="--cfg loom" cargo test -p loom-tests --release
//! ```
//!
//! Without `--cfg loom` this crate is empty, so the ordinary test run skips it.
