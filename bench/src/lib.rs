//! ferrite-bench: a load generator speaking etcd's v3 API, and a side-by-side runner that
//! measures ferrite against a real etcd on the same machine.
//!
//! What it is:
//! - [`workload::run`] drives any etcd-compatible endpoint with one workload (put, ranges, paginated
//!   lists, Kubernetes-style CAS txns, watch fan-out, lease keep-alive storms, a mixed Kubernetes-like
//!   load) from many concurrent clients over a chosen number of gRPC connections, and returns a
//!   [`stats::Report`]: p50/p90/p99/p99.9/max latency per operation kind, throughput, errors by
//!   message, server CPU per operation and RSS (from /proc, given the server's pid), and the load
//!   generator's own CPU per operation.
//! - [`lean`] is the default client of the put, range and txn-cas workloads: etcd's KV calls as
//!   plain HTTP/2 streams (h2 + prost) on current-thread runtimes, about a third of the CPU per
//!   request of the `etcd-client` crate, which the other workloads (and `--client etcd-client`) use.
//! - [`cluster`] starts etcd or ferrite with etcd's flags on loopback (1 or 3 members), waits until
//!   it serves, and kills it by pid when dropped.
//! - [`floor`] probes the fsync floor (4 KiB overwrite + fdatasync) and `grpc-echo` (src/bin) is a
//!   trivial gRPC server on ferrite's own transport: the baselines the targets are stated against.
//! - [`compare`] runs the same workloads alternately against both (A/B/A/B), prints medians and the
//!   ferrite/etcd ratio, and appends a Markdown section to docs/benchmarks.md.
//!
//! Invariants:
//! - A failed request is never counted as a success: it goes to the error counts, by message, and
//!   not into the latency histogram. A request past `op_timeout` is an error ("timeout").
//! - Watch workloads check exactly-once, in-order delivery: revisions strictly increase per watcher,
//!   and the multiset of revisions seen equals the acknowledged writes (count, sum and hash); any
//!   difference is a violation, reported and failing the run.
//! - Every server this crate starts is stopped by its pid (Drop, and the runner script's trap).
//!
//! Non-goals: it is not a correctness test suite (see server/tests), and it never asserts on
//! timings: numbers are reported, not judged.

pub mod cluster;
pub mod compare;
pub mod failover;
pub mod floor;
pub mod lean;
pub mod procfs;
pub mod stats;
pub mod workload;
