//! Placeholder: owned by the "front" engineer.
