//! Shared by the B+tree's benchmark and its profiling examples (`#[path]`-included): the same
//! workload generator, so the examples reproduce the benchmark's keys exactly.

/// xorshift64: deterministic, seedable, no dependency.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A random key of 8–64 bytes (the benchmark's key sizes).
    pub fn key(&mut self) -> Vec<u8> {
        let len = 8 + (self.next() % 57) as usize;
        (0..len).map(|_| self.next() as u8).collect()
    }
}

/// An environment variable as a number, or `default` when unset or not a number.
pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
