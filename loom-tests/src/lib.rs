//! loom models of ferrite's cross-thread hand-offs; run with RUSTFLAGS="--cfg loom".
