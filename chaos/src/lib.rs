//! # ferrite-chaos: cluster fault injection and a linearizability checker
//!
//! What it is: a harness that starts N (1, 3, 5, ...) real member processes — `ferrite` or
//! Debian's `etcd` 3.4, with etcd's flags — on 127.0.0.1, drives them with concurrent
//! `etcd-client` clients spread over every member (puts, deletes, compare-and-set txns,
//! linearizable and serializable ranges, watches from a start revision, leases), injects a seeded
//! schedule of faults, records every operation with monotonic invoke/complete times, and checks
//! the history.
//!
//! - [`cluster`]: processes (start, health, leader via Maintenance.Status, kill -9 and restart on
//!   the same data dir, SIGSTOP/SIGCONT, MemberAdd + start with state=existing, MemberRemove);
//!   everything is killed by pid on drop, also on panic.
//! - [`proxy`]: one TCP proxy per member in front of its peer port (the advertised peer URL), which
//!   identifies the dialling member from the kernel's socket table and cuts/heals links per pair.
//! - [`workload`]: the clients and watchers.
//! - [`checker`]: per-key Wing–Gong/Porcupine linearizability search over a (value, mod_revision)
//!   register model with indeterminate operations, bounded (a hit bound is reported *unknown*,
//!   never ok); global revision facts; snapshot consistency of every read; leases; watch streams
//!   against the full history.
//! - [`run`]: one run (cluster + workload + faults + end-of-run checks: nothing acknowledged lost,
//!   no revision reused, every member converges to the same revision and HashKV).
//!
//! Soak (a failure prints the seed, the replay command, and saves the history as JSON):
//!
//! ```text
//! cargo run --release -p ferrite-chaos --bin ferrite-soak -- --target etcd --members 3 --runs 100 --seed 1
//! cargo run --release -p ferrite-chaos --bin ferrite-soak -- --target ferrite --members 3 --runs 100 --seed 1
//! cargo run --release -p ferrite-chaos --bin ferrite-soak -- --check-history /tmp/ferrite-chaos-....json
//! ```
//!
//! Invariants: every process the harness starts is killed by pid when its [`cluster::Cluster`]
//! drops; every client operation is bounded by [`workload::OP_TIMEOUT`]; a run is replayable in its
//! schedule from its seed (the interleaving with real processes is not deterministic).
//!
//! Non-goals: deterministic simulation (that is `raft/`'s simulator); disk faults; clock faults;
//! partitions of client traffic (only peer links are cut); TLS.

pub mod checker;
pub mod cluster;
pub mod history;
pub mod proxy;
pub mod rng;
pub mod run;
pub mod workload;
