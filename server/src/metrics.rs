//! Prometheus metrics with etcd's names, updated lock-free from any core.
//!
//! What it is: one process-wide [`Metrics`] (reach it with [`metrics()`]) holding etcd 3.4's
//! metrics — `etcd_server_*`, `etcd_mvcc_*`, `etcd_debugging_mvcc_*`, `etcd_disk_*`,
//! `etcd_network_client_grpc_*`, `grpc_server_*` and `process_*` — and [`Metrics::render`],
//! which writes them in Prometheus' text exposition format 0.0.4 (what etcd serves on
//! `/metrics`, and what `prometheus` and `kube-prometheus` scrape).
//!
//! Why hand-rolled rather than the `prometheus`/`prometheus-client` crates: etcd's names and
//! types must be kept exactly (etcd exports `etcd_server_proposals_committed_total` as a
//! *gauge*; prometheus-client appends `_total` to counters and writes OpenMetrics), and every
//! update here is one relaxed atomic operation with no registry lock, so the Raft core and the
//! accepting cores can update on their hot paths.
//!
//! Invariants: counters only increase; a histogram's `_count` equals its `+Inf` bucket; the
//! gRPC method table is fixed at start (etcd pre-registers every method with every code, so
//! does this), so recording a call never allocates or locks.
//!
//! Non-goals: arbitrary label sets, summaries, push gateways.

use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use ferrite_btree::{Event, EventKind, RangeOptions};
use ferrite_net::pb::etcdserverpb::TxnResponse;
use ferrite_net::{BoxBody, Router};

use crate::state::{ApplyResult, Shared};

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down (integer).
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
    pub fn add(&self, n: i64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// etcd's disk latency buckets: 1 ms doubling 14 times (to 8.192 s).
pub const DISK_BUCKETS_COUNT: usize = 14;

/// A histogram with etcd's exponential buckets `start * factor^i`.
#[derive(Debug)]
pub struct Histogram {
    upper_bounds: Vec<f64>,
    /// Non-cumulative counts; the last slot is `+Inf`.
    counts: Vec<AtomicU64>,
    sum_bits: AtomicU64,
}

impl Histogram {
    pub fn exponential(start: f64, factor: f64, count: usize) -> Histogram {
        assert!(start > 0.0 && factor > 1.0 && count >= 1);
        let upper_bounds: Vec<f64> = (0..count).map(|i| start * factor.powi(i as i32)).collect();
        let counts = (0..=count).map(|_| AtomicU64::new(0)).collect();
        Histogram {
            upper_bounds,
            counts,
            sum_bits: AtomicU64::new(0f64.to_bits()),
        }
    }

    pub fn observe(&self, value: f64) {
        let slot = self
            .upper_bounds
            .iter()
            .position(|b| value <= *b)
            .unwrap_or(self.upper_bounds.len());
        self.counts[slot].fetch_add(1, Ordering::Relaxed);
        let mut current = self.sum_bits.load(Ordering::Relaxed);
        loop {
            let next = (f64::from_bits(current) + value).to_bits();
            match self.sum_bits.compare_exchange_weak(
                current,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(actual) => current = actual,
            }
        }
    }

    pub fn observe_duration(&self, d: Duration) {
        self.observe(d.as_secs_f64());
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        header(out, name, help, "histogram");
        let mut cumulative = 0u64;
        for (i, bound) in self.upper_bounds.iter().enumerate() {
            cumulative += self.counts[i].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{}\"}} {cumulative}",
                fmt_float(*bound)
            );
        }
        cumulative += self.counts[self.upper_bounds.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let _ = writeln!(
            out,
            "{name}_sum {}",
            fmt_float(f64::from_bits(self.sum_bits.load(Ordering::Relaxed)))
        );
        let _ = writeln!(out, "{name}_count {cumulative}");
    }
}

/// gRPC kinds as grpc-prometheus labels them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrpcType {
    Unary,
    ServerStream,
    BidiStream,
}

impl GrpcType {
    fn as_str(self) -> &'static str {
        match self {
            GrpcType::Unary => "unary",
            GrpcType::ServerStream => "server_stream",
            GrpcType::BidiStream => "bidi_stream",
        }
    }
}

/// Every gRPC method ferrite serves: (service, method, type).
pub const GRPC_METHODS: &[(&str, &str, GrpcType)] = &[
    ("etcdserverpb.KV", "Range", GrpcType::Unary),
    ("etcdserverpb.KV", "Put", GrpcType::Unary),
    ("etcdserverpb.KV", "DeleteRange", GrpcType::Unary),
    ("etcdserverpb.KV", "Txn", GrpcType::Unary),
    ("etcdserverpb.KV", "Compact", GrpcType::Unary),
    ("etcdserverpb.Watch", "Watch", GrpcType::BidiStream),
    ("etcdserverpb.Lease", "LeaseGrant", GrpcType::Unary),
    ("etcdserverpb.Lease", "LeaseRevoke", GrpcType::Unary),
    ("etcdserverpb.Lease", "LeaseKeepAlive", GrpcType::BidiStream),
    ("etcdserverpb.Lease", "LeaseTimeToLive", GrpcType::Unary),
    ("etcdserverpb.Lease", "LeaseLeases", GrpcType::Unary),
    ("etcdserverpb.Cluster", "MemberAdd", GrpcType::Unary),
    ("etcdserverpb.Cluster", "MemberRemove", GrpcType::Unary),
    ("etcdserverpb.Cluster", "MemberUpdate", GrpcType::Unary),
    ("etcdserverpb.Cluster", "MemberList", GrpcType::Unary),
    ("etcdserverpb.Cluster", "MemberPromote", GrpcType::Unary),
    ("etcdserverpb.Maintenance", "Alarm", GrpcType::Unary),
    ("etcdserverpb.Maintenance", "Status", GrpcType::Unary),
    ("etcdserverpb.Maintenance", "Defragment", GrpcType::Unary),
    ("etcdserverpb.Maintenance", "Hash", GrpcType::Unary),
    ("etcdserverpb.Maintenance", "HashKV", GrpcType::Unary),
    (
        "etcdserverpb.Maintenance",
        "Snapshot",
        GrpcType::ServerStream,
    ),
    ("etcdserverpb.Maintenance", "MoveLeader", GrpcType::Unary),
    ("etcdserverpb.Auth", "AuthEnable", GrpcType::Unary),
    ("etcdserverpb.Auth", "AuthDisable", GrpcType::Unary),
    ("etcdserverpb.Auth", "Authenticate", GrpcType::Unary),
    ("etcdserverpb.Auth", "UserAdd", GrpcType::Unary),
    ("etcdserverpb.Auth", "UserGet", GrpcType::Unary),
    ("etcdserverpb.Auth", "UserList", GrpcType::Unary),
    ("etcdserverpb.Auth", "UserDelete", GrpcType::Unary),
    ("etcdserverpb.Auth", "UserChangePassword", GrpcType::Unary),
    ("etcdserverpb.Auth", "UserGrantRole", GrpcType::Unary),
    ("etcdserverpb.Auth", "UserRevokeRole", GrpcType::Unary),
    ("etcdserverpb.Auth", "RoleAdd", GrpcType::Unary),
    ("etcdserverpb.Auth", "RoleGet", GrpcType::Unary),
    ("etcdserverpb.Auth", "RoleList", GrpcType::Unary),
    ("etcdserverpb.Auth", "RoleDelete", GrpcType::Unary),
    ("etcdserverpb.Auth", "RoleGrantPermission", GrpcType::Unary),
    ("etcdserverpb.Auth", "RoleRevokePermission", GrpcType::Unary),
    ("v3lockpb.Lock", "Lock", GrpcType::Unary),
    ("v3lockpb.Lock", "Unlock", GrpcType::Unary),
    ("v3electionpb.Election", "Campaign", GrpcType::Unary),
    ("v3electionpb.Election", "Proclaim", GrpcType::Unary),
    ("v3electionpb.Election", "Leader", GrpcType::Unary),
    ("v3electionpb.Election", "Observe", GrpcType::ServerStream),
    ("v3electionpb.Election", "Resign", GrpcType::Unary),
];

/// gRPC status code names, indexed by code (grpc-prometheus' `grpc_code` label).
pub const GRPC_CODE_NAMES: [&str; 17] = [
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];

#[derive(Debug)]
struct GrpcMethodStats {
    started: Counter,
    msg_received: Counter,
    msg_sent: Counter,
    handled: [Counter; 17],
}

impl Default for GrpcMethodStats {
    fn default() -> Self {
        GrpcMethodStats {
            started: Counter::default(),
            msg_received: Counter::default(),
            msg_sent: Counter::default(),
            handled: std::array::from_fn(|_| Counter::default()),
        }
    }
}

/// All of ferrite's metrics. Fields are public: update them directly
/// (`metrics().proposals_committed.set(i)`), or through the helper methods.
#[derive(Debug)]
pub struct Metrics {
    // etcd_server_*
    pub has_leader: Gauge,
    pub is_leader: Gauge,
    pub leader_changes_seen: Counter,
    pub proposals_committed: Gauge,
    pub proposals_applied: Gauge,
    pub proposals_pending: Gauge,
    pub proposals_failed: Counter,
    pub quota_backend_bytes: Gauge,
    pub health_success: Counter,
    pub health_failures: Counter,
    pub read_indexes_failed: Counter,
    pub slow_apply: Counter,
    /// The member id (hex), set once at start.
    member_id: AtomicU64,
    // etcd_mvcc_* and etcd_debugging_mvcc_*
    pub db_total_size_bytes: Gauge,
    pub db_total_size_in_use_bytes: Gauge,
    pub keys_total: Gauge,
    pub current_revision: Gauge,
    pub compact_revision: Gauge,
    pub range_total: Counter,
    pub put_total: Counter,
    pub delete_total: Counter,
    pub txn_total: Counter,
    pub events_total: Counter,
    pub watch_streams: Gauge,
    pub watchers: Gauge,
    pub slow_watchers: Gauge,
    // etcd_disk_*
    pub wal_fsync_seconds: Histogram,
    pub backend_commit_seconds: Histogram,
    pub backend_defrag_seconds: Histogram,
    pub backend_snapshot_seconds: Histogram,
    pub wal_write_bytes: Counter,
    // etcd_network_client_grpc_*
    pub grpc_received_bytes: Counter,
    pub grpc_sent_bytes: Counter,
    // grpc_server_*
    grpc_index: HashMap<&'static str, usize>,
    grpc: Vec<GrpcMethodStats>,
    start_time_seconds: f64,
}

static METRICS: OnceLock<Metrics> = OnceLock::new();

/// The process-wide metrics (created on first use).
pub fn metrics() -> &'static Metrics {
    METRICS.get_or_init(Metrics::new)
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// A fresh set of metrics (tests; the server uses [`metrics()`]).
    pub fn new() -> Metrics {
        let disk = || Histogram::exponential(0.001, 2.0, DISK_BUCKETS_COUNT);
        let mut grpc_index = HashMap::new();
        for (i, (service, method, _)) in GRPC_METHODS.iter().enumerate() {
            let path: &'static str = Box::leak(format!("/{service}/{method}").into_boxed_str());
            grpc_index.insert(path, i);
        }
        let start_time_seconds = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        Metrics {
            has_leader: Gauge::default(),
            is_leader: Gauge::default(),
            leader_changes_seen: Counter::default(),
            proposals_committed: Gauge::default(),
            proposals_applied: Gauge::default(),
            proposals_pending: Gauge::default(),
            proposals_failed: Counter::default(),
            quota_backend_bytes: Gauge::default(),
            health_success: Counter::default(),
            health_failures: Counter::default(),
            read_indexes_failed: Counter::default(),
            slow_apply: Counter::default(),
            member_id: AtomicU64::new(0),
            db_total_size_bytes: Gauge::default(),
            db_total_size_in_use_bytes: Gauge::default(),
            keys_total: Gauge::default(),
            current_revision: Gauge::default(),
            compact_revision: Gauge::default(),
            range_total: Counter::default(),
            put_total: Counter::default(),
            delete_total: Counter::default(),
            txn_total: Counter::default(),
            events_total: Counter::default(),
            watch_streams: Gauge::default(),
            watchers: Gauge::default(),
            slow_watchers: Gauge::default(),
            wal_fsync_seconds: disk(),
            backend_commit_seconds: disk(),
            backend_defrag_seconds: Histogram::exponential(0.1, 2.0, 13),
            backend_snapshot_seconds: Histogram::exponential(0.01, 2.0, 17),
            wal_write_bytes: Counter::default(),
            grpc_received_bytes: Counter::default(),
            grpc_sent_bytes: Counter::default(),
            grpc: GRPC_METHODS
                .iter()
                .map(|_| GrpcMethodStats::default())
                .collect(),
            grpc_index,
            start_time_seconds,
        }
    }

    /// Records this member's id (exported as `etcd_server_id{server_id="<hex>"} 1`).
    pub fn set_member_id(&self, id: u64) {
        self.member_id.store(id, Ordering::Relaxed);
    }

    /// Leader changes as the Raft core sees them: sets has/is_leader and counts a change
    /// whenever the known leader differs from the previous one (0 = none).
    pub fn observe_leader(&self, previous_leader: u64, leader: u64, self_id: u64) {
        self.has_leader.set(i64::from(leader != 0));
        self.is_leader
            .set(i64::from(leader != 0 && leader == self_id));
        if leader != 0 && leader != previous_leader {
            self.leader_changes_seen.inc();
        }
    }

    fn grpc_stats(&self, path: &str) -> Option<&GrpcMethodStats> {
        self.grpc_index.get(path).map(|i| &self.grpc[*i])
    }

    /// A gRPC call began (`path`: `/etcdserverpb.KV/Range`). Unknown paths are ignored.
    pub fn grpc_started(&self, path: &str) {
        if let Some(s) = self.grpc_stats(path) {
            s.started.inc();
        }
    }

    /// A gRPC call ended with `code` (tonic's numeric code).
    pub fn grpc_handled(&self, path: &str, code: i32) {
        if let Some(s) = self.grpc_stats(path) {
            let i = usize::try_from(code).unwrap_or(2).min(16);
            s.handled[i].inc();
        }
    }

    /// One stream message received / sent on a gRPC call.
    pub fn grpc_msg_received(&self, path: &str) {
        if let Some(s) = self.grpc_stats(path) {
            s.msg_received.inc();
        }
    }

    pub fn grpc_msg_sent(&self, path: &str) {
        if let Some(s) = self.grpc_stats(path) {
            s.msg_sent.inc();
        }
    }

    /// The whole exposition, text format 0.0.4.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(64 * 1024);
        let o = &mut out;
        gauge(
            o,
            "etcd_cluster_version",
            "Which version is running. 1 for 'cluster_version' label with current cluster version",
            &format!(
                "{{cluster_version=\"{}\"}}",
                crate::logging::CLUSTER_VERSION_MAJOR_MINOR
            ),
            1,
        );
        gauge(
            o,
            "etcd_server_version",
            "Which version is running. 1 for 'server_version' label with current version.",
            &format!(
                "{{server_version=\"{}\"}}",
                crate::config::ETCD_SERVER_VERSION
            ),
            1,
        );
        gauge(
            o,
            "etcd_server_id",
            "Server or member ID in hexadecimal format. 1 for 'server_id' label with current ID.",
            &format!(
                "{{server_id=\"{:x}\"}}",
                self.member_id.load(Ordering::Relaxed)
            ),
            1,
        );
        gauge(
            o,
            "etcd_server_has_leader",
            "Whether or not a leader exists. 1 is existence, 0 is not.",
            "",
            self.has_leader.get(),
        );
        gauge(
            o,
            "etcd_server_is_leader",
            "Whether or not this member is a leader. 1 if is, 0 otherwise.",
            "",
            self.is_leader.get(),
        );
        gauge(
            o,
            "etcd_server_is_learner",
            "Whether or not this member is a learner. 1 if is, 0 otherwise.",
            "",
            0,
        );
        counter(
            o,
            "etcd_server_leader_changes_seen_total",
            "The number of leader changes seen.",
            self.leader_changes_seen.get(),
        );
        gauge(
            o,
            "etcd_server_proposals_committed_total",
            "The total number of consensus proposals committed.",
            "",
            self.proposals_committed.get(),
        );
        gauge(
            o,
            "etcd_server_proposals_applied_total",
            "The total number of consensus proposals applied.",
            "",
            self.proposals_applied.get(),
        );
        gauge(
            o,
            "etcd_server_proposals_pending",
            "The current number of pending proposals to commit.",
            "",
            self.proposals_pending.get(),
        );
        counter(
            o,
            "etcd_server_proposals_failed_total",
            "The total number of failed proposals seen.",
            self.proposals_failed.get(),
        );
        gauge(
            o,
            "etcd_server_quota_backend_bytes",
            "Current backend storage quota size in bytes.",
            "",
            self.quota_backend_bytes.get(),
        );
        counter(
            o,
            "etcd_server_health_success",
            "The total number of successful health checks",
            self.health_success.get(),
        );
        counter(
            o,
            "etcd_server_health_failures",
            "The total number of failed health checks",
            self.health_failures.get(),
        );
        counter(
            o,
            "etcd_server_read_indexes_failed_total",
            "The total number of failed read indexes seen.",
            self.read_indexes_failed.get(),
        );
        counter(
            o,
            "etcd_server_slow_apply_total",
            "The total number of slow apply requests (likely overloaded from slow disk).",
            self.slow_apply.get(),
        );

        gauge(
            o,
            "etcd_mvcc_db_total_size_in_bytes",
            "Total size of the underlying database physically allocated in bytes.",
            "",
            self.db_total_size_bytes.get(),
        );
        gauge(
            o,
            "etcd_mvcc_db_total_size_in_use_in_bytes",
            "Total size of the underlying database logically in use in bytes.",
            "",
            self.db_total_size_in_use_bytes.get(),
        );
        gauge(
            o,
            "etcd_debugging_mvcc_db_total_size_in_bytes",
            "Total size of the underlying database physically allocated in bytes.",
            "",
            self.db_total_size_bytes.get(),
        );
        gauge(
            o,
            "etcd_debugging_mvcc_keys_total",
            "Total number of keys.",
            "",
            self.keys_total.get(),
        );
        gauge(
            o,
            "etcd_debugging_mvcc_current_revision",
            "The current revision of store.",
            "",
            self.current_revision.get(),
        );
        gauge(
            o,
            "etcd_debugging_mvcc_compact_revision",
            "The revision of the last compaction in store.",
            "",
            self.compact_revision.get(),
        );
        for prefix in ["etcd_mvcc", "etcd_debugging_mvcc"] {
            counter(
                o,
                &format!("{prefix}_range_total"),
                "Total number of ranges seen by this member.",
                self.range_total.get(),
            );
            counter(
                o,
                &format!("{prefix}_put_total"),
                "Total number of puts seen by this member.",
                self.put_total.get(),
            );
            counter(
                o,
                &format!("{prefix}_delete_total"),
                "Total number of deletes seen by this member.",
                self.delete_total.get(),
            );
            counter(
                o,
                &format!("{prefix}_txn_total"),
                "Total number of txns seen by this member.",
                self.txn_total.get(),
            );
        }
        counter(
            o,
            "etcd_debugging_mvcc_events_total",
            "Total number of events sent by this member.",
            self.events_total.get(),
        );
        gauge(
            o,
            "etcd_debugging_mvcc_watch_stream_total",
            "Total number of watch streams.",
            "",
            self.watch_streams.get(),
        );
        gauge(
            o,
            "etcd_debugging_mvcc_watcher_total",
            "Total number of watchers.",
            "",
            self.watchers.get(),
        );
        gauge(
            o,
            "etcd_debugging_mvcc_slow_watcher_total",
            "Total number of unsynced slow watchers.",
            "",
            self.slow_watchers.get(),
        );

        self.wal_fsync_seconds.render(
            o,
            "etcd_disk_wal_fsync_duration_seconds",
            "The latency distributions of fsync called by WAL.",
        );
        self.backend_commit_seconds.render(
            o,
            "etcd_disk_backend_commit_duration_seconds",
            "The latency distributions of commit called by backend.",
        );
        self.backend_defrag_seconds.render(
            o,
            "etcd_disk_backend_defrag_duration_seconds",
            "The latency distribution of backend defragmentation.",
        );
        self.backend_snapshot_seconds.render(
            o,
            "etcd_disk_backend_snapshot_duration_seconds",
            "The latency distribution of backend snapshots.",
        );
        counter(
            o,
            "etcd_disk_wal_write_bytes_total",
            "Total number of bytes written in WAL.",
            self.wal_write_bytes.get(),
        );

        counter(
            o,
            "etcd_network_client_grpc_received_bytes_total",
            "The total number of bytes received from grpc clients.",
            self.grpc_received_bytes.get()
                + ferrite_net::router::GRPC_RECEIVED_BYTES_TOTAL.load(Ordering::Relaxed),
        );
        counter(
            o,
            "etcd_network_client_grpc_sent_bytes_total",
            "The total number of bytes sent to grpc clients.",
            self.grpc_sent_bytes.get(),
        );

        self.render_grpc(o);
        render_process(o, self.start_time_seconds);
        out
    }

    fn render_grpc(&self, o: &mut String) {
        header(
            o,
            "grpc_server_handled_total",
            "Total number of RPCs completed on the server, regardless of success or failure.",
            "counter",
        );
        for ((service, method, kind), stats) in GRPC_METHODS.iter().zip(&self.grpc) {
            for (code, name) in GRPC_CODE_NAMES.iter().enumerate() {
                let _ = writeln!(o,
                    "grpc_server_handled_total{{grpc_code=\"{name}\",grpc_method=\"{method}\",grpc_service=\"{service}\",grpc_type=\"{}\"}} {}",
                    kind.as_str(), stats.handled[code].get());
            }
        }
        for (metric, help, pick) in [
            (
                "grpc_server_msg_received_total",
                "Total number of RPC stream messages received on the server.",
                0,
            ),
            (
                "grpc_server_msg_sent_total",
                "Total number of gRPC stream messages sent by the server.",
                1,
            ),
            (
                "grpc_server_started_total",
                "Total number of RPCs started on the server.",
                2,
            ),
        ] {
            header(o, metric, help, "counter");
            for ((service, method, kind), stats) in GRPC_METHODS.iter().zip(&self.grpc) {
                let v = match pick {
                    0 => stats.msg_received.get(),
                    1 => stats.msg_sent.get(),
                    _ => stats.started.get(),
                };
                let _ = writeln!(o,
                    "{metric}{{grpc_method=\"{method}\",grpc_service=\"{service}\",grpc_type=\"{}\"}} {v}",
                    kind.as_str());
            }
        }
    }
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn gauge(out: &mut String, name: &str, help: &str, labels: &str, v: i64) {
    header(out, name, help, "gauge");
    let _ = writeln!(out, "{name}{labels} {v}");
}

fn counter(out: &mut String, name: &str, help: &str, v: u64) {
    header(out, name, help, "counter");
    let _ = writeln!(out, "{name} {v}");
}

/// Go's `%g`-like float formatting as Prometheus' Go client writes it (`0.001`, `8.192`,
/// `1.2e+07`).
fn fmt_float(v: f64) -> String {
    if v == v.trunc() && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else if (1e-4..1e21).contains(&v.abs()) {
        format!("{v}")
    } else {
        format!("{v:e}")
    }
}

/// `process_*` from /proc (Linux), read at scrape time.
fn render_process(o: &mut String, start_time_seconds: f64) {
    let page_bytes = 4096.0;
    let ticks_per_second = 100.0;
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
        // Fields after the command name (which may contain spaces) in parentheses.
        if let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) {
            let f: Vec<&str> = rest.split_whitespace().collect();
            // f[0] is field 3 (state); utime=14, stime=15, vsize=23, rss=24 (1-based).
            let num = |i: usize| {
                f.get(i - 3)
                    .and_then(|s| s.parse::<f64>().ok())
                    .unwrap_or(0.0)
            };
            let cpu = (num(14) + num(15)) / ticks_per_second;
            header(
                o,
                "process_cpu_seconds_total",
                "Total user and system CPU time spent in seconds.",
                "counter",
            );
            let _ = writeln!(o, "process_cpu_seconds_total {}", fmt_float(cpu));
            header(
                o,
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                "gauge",
            );
            let _ = writeln!(
                o,
                "process_resident_memory_bytes {}",
                fmt_float(num(24) * page_bytes)
            );
            header(
                o,
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
                "gauge",
            );
            let _ = writeln!(o, "process_virtual_memory_bytes {}", fmt_float(num(23)));
        }
    }
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        header(
            o,
            "process_open_fds",
            "Number of open file descriptors.",
            "gauge",
        );
        let _ = writeln!(o, "process_open_fds {}", dir.count());
    }
    if let Ok(limits) = std::fs::read_to_string("/proc/self/limits") {
        if let Some(line) = limits.lines().find(|l| l.starts_with("Max open files")) {
            if let Some(soft) = line.split_whitespace().nth(3) {
                header(
                    o,
                    "process_max_fds",
                    "Maximum number of open file descriptors.",
                    "gauge",
                );
                let _ = writeln!(o, "process_max_fds {soft}");
            }
        }
    }
    header(
        o,
        "process_start_time_seconds",
        "Start time of the process since unix epoch in seconds.",
        "gauge",
    );
    let _ = writeln!(
        o,
        "process_start_time_seconds {}",
        fmt_float(start_time_seconds)
    );
}

// ----- updates from the server -----

/// Counts the ops of a txn response as etcd's `metricsTxnWrite` does (nested txns included).
fn count_txn_ops(t: &TxnResponse, ranges: &mut u64, puts: &mut u64, deletes: &mut u64) {
    use ferrite_net::pb::etcdserverpb::response_op::Response as R;
    for op in &t.responses {
        match &op.response {
            Some(R::ResponseRange(_)) => *ranges += 1,
            Some(R::ResponsePut(_)) => *puts += 1,
            Some(R::ResponseDeleteRange(_)) => *deletes += 1,
            Some(R::ResponseTxn(inner)) => count_txn_ops(inner, ranges, puts, deletes),
            None => {}
        }
    }
}

impl Metrics {
    /// One applied request (on the Raft core): etcd's per-op counters, the event count and
    /// the key count (a put creating a key adds one, a delete removes one).
    pub fn record_apply(&self, r: &ApplyResult, events: &[Event]) {
        let (mut ranges, mut puts, mut deletes) = (0u64, 0u64, 0u64);
        match r {
            ApplyResult::Put(_) => puts = 1,
            ApplyResult::DeleteRange(_) => deletes = 1,
            ApplyResult::Txn(t) => {
                count_txn_ops(t, &mut ranges, &mut puts, &mut deletes);
                if ranges + puts + deletes > 1 {
                    self.txn_total.inc();
                }
            }
            _ => {}
        }
        if ranges > 0 {
            self.range_total.add(ranges);
        }
        if puts > 0 {
            self.put_total.add(puts);
        }
        if deletes > 0 {
            self.delete_total.add(deletes);
        }
        if events.is_empty() {
            return;
        }
        self.events_total.add(events.len() as u64);
        let mut keys = 0i64;
        for e in events {
            match e.kind {
                EventKind::Put if e.kv.version == 1 => keys += 1,
                EventKind::Put => {}
                EventKind::Delete => keys -= 1,
            }
        }
        if keys != 0 {
            self.keys_total.add(keys);
        }
    }

    /// A read-only Range or Txn served outside the apply loop.
    pub fn record_read_txn(&self, t: Option<&TxnResponse>) {
        match t {
            None => self.range_total.inc(),
            Some(t) => {
                let (mut ranges, mut puts, mut deletes) = (0u64, 0u64, 0u64);
                count_txn_ops(t, &mut ranges, &mut puts, &mut deletes);
                if ranges + puts + deletes > 1 {
                    self.txn_total.inc();
                }
                self.range_total.add(ranges);
            }
        }
    }
}

/// The server whose state `/metrics` reads at scrape time (gauges that are cheaper to read
/// when scraped than to maintain on the write path: sizes, revisions, Raft indexes).
static SCRAPE_SOURCE: OnceLock<Weak<Shared>> = OnceLock::new();

/// Registers the server's shared state (once per process) and seeds the key count from the
/// store (one count-only scan at start; from then on the apply loop keeps it).
pub fn register_source(shared: &Arc<Shared>) {
    if SCRAPE_SOURCE.set(Arc::downgrade(shared)).is_err() {
        return;
    }
    let m = metrics();
    m.set_member_id(shared.member_id);
    m.quota_backend_bytes.set(shared.limits.quota_backend_bytes);
    let all = RangeOptions {
        key: vec![0],
        range_end: vec![0],
        count_only: true,
        ..Default::default()
    };
    if let Ok(r) = shared.store.read().range(&all) {
        m.keys_total.set(r.count);
    }
}

/// Refreshes the scrape-time gauges from the registered server, if any.
pub fn refresh_from_source() {
    let Some(shared) = SCRAPE_SOURCE.get().and_then(Weak::upgrade) else {
        return;
    };
    let m = metrics();
    let leader = shared.leader.load(Ordering::Acquire);
    m.has_leader.set(i64::from(leader != 0));
    m.is_leader
        .set(i64::from(leader != 0 && leader == shared.member_id));
    m.proposals_committed
        .set(shared.raft_index.load(Ordering::Acquire) as i64);
    m.proposals_applied
        .set(shared.applied_index.load(Ordering::Acquire) as i64);
    m.db_total_size_bytes.set(shared.store.size_bytes() as i64);
    m.db_total_size_in_use_bytes
        .set(shared.store.size_in_use_bytes() as i64);
    let view = shared.store.read();
    m.current_revision.set(view.revision());
    m.compact_revision.set(view.compact_revision());
}

// ----- gRPC accounting around the router -----

/// Wraps a core's [`Router`]: counts every gRPC call's start, end (with its status code),
/// messages and bytes as grpc-prometheus and etcd's interceptors do. Plain HTTP requests
/// pass through untouched.
#[derive(Clone)]
pub struct Metered {
    pub inner: Router,
}

impl hyper::service::Service<http::Request<hyper::body::Incoming>> for Metered {
    type Response = http::Response<BoxBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<http::Response<BoxBody>, Infallible>>>>;

    fn call(&self, req: http::Request<hyper::body::Incoming>) -> Self::Future {
        let m = metrics();
        let method = if ferrite_net::is_grpc(&req) {
            m.grpc_index.get(req.uri().path()).copied()
        } else {
            None
        };
        let fut = self.inner.route(req);
        let Some(i) = method else {
            return Box::pin(async move { Ok(fut.await) });
        };
        let stats = &m.grpc[i];
        stats.started.inc();
        if GRPC_METHODS[i].2 != GrpcType::BidiStream {
            stats.msg_received.inc();
        }
        Box::pin(async move {
            let resp = fut.await;
            // A trailers-only response (an error before any message) carries the status in
            // its headers.
            if let Some(code) = grpc_status_of(resp.headers()) {
                metrics().grpc[i].handled[code].inc();
                return Ok(resp);
            }
            Ok(resp.map(|body| -> BoxBody {
                Box::pin(MeteredBody {
                    inner: body,
                    method: i,
                    done: false,
                })
            }))
        })
    }
}

fn grpc_status_of(headers: &http::HeaderMap) -> Option<usize> {
    let v = headers.get("grpc-status")?;
    let code: usize = v.to_str().ok()?.trim().parse().ok()?;
    Some(code.min(GRPC_CODE_NAMES.len() - 1))
}

/// A gRPC response body that counts its bytes and messages and, at its trailers, the call's
/// status.
struct MeteredBody {
    inner: BoxBody,
    method: usize,
    done: bool,
}

impl http_body::Body for MeteredBody {
    type Data = Bytes;
    type Error = ferrite_net::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let r = this.inner.as_mut().poll_frame(cx);
        let m = metrics();
        match &r {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    m.grpc_sent_bytes.add(d.len() as u64);
                    m.grpc[this.method].msg_sent.inc();
                } else if let Some(t) = frame.trailers_ref() {
                    if !this.done {
                        this.done = true;
                        let code = grpc_status_of(t).unwrap_or(2);
                        m.grpc[this.method].handled[code].inc();
                    }
                }
            }
            Poll::Ready(Some(Err(_))) | Poll::Ready(None) => {
                if !this.done {
                    this.done = true;
                    // A stream that ends without trailers: the peer went away.
                    m.grpc[this.method].handled[1].inc();
                }
            }
            Poll::Pending => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for MeteredBody {
    fn drop(&mut self) {
        if !self.done {
            // Dropped before its end: the client cancelled (grpc-go reports Canceled).
            metrics().grpc[self.method].handled[1].inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line<'a>(text: &'a str, prefix: &str) -> &'a str {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no line {prefix}"))
    }

    #[test]
    fn etcd_names_and_values() {
        let m = Metrics::new();
        m.observe_leader(0, 7, 7);
        m.observe_leader(7, 7, 7);
        m.proposals_committed.set(26);
        m.keys_total.set(3);
        m.grpc_started("/etcdserverpb.KV/Range");
        m.grpc_handled("/etcdserverpb.KV/Range", 0);
        m.grpc_handled("/etcdserverpb.KV/Range", 11);
        m.grpc_handled("/nope/Nope", 0);
        let text = m.render();
        assert_eq!(
            line(&text, "etcd_server_has_leader "),
            "etcd_server_has_leader 1"
        );
        assert_eq!(
            line(&text, "etcd_server_is_leader "),
            "etcd_server_is_leader 1"
        );
        assert_eq!(
            line(&text, "etcd_server_leader_changes_seen_total "),
            "etcd_server_leader_changes_seen_total 1"
        );
        assert!(text.contains("# TYPE etcd_server_proposals_committed_total gauge\netcd_server_proposals_committed_total 26\n"));
        assert_eq!(
            line(&text, "etcd_debugging_mvcc_keys_total "),
            "etcd_debugging_mvcc_keys_total 3"
        );
        assert!(text.contains("grpc_server_handled_total{grpc_code=\"OK\",grpc_method=\"Range\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"} 1\n"));
        assert!(text.contains("grpc_server_handled_total{grpc_code=\"OutOfRange\",grpc_method=\"Range\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"} 1\n"));
        assert!(text.contains("grpc_server_started_total{grpc_method=\"Range\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"} 1\n"));
        assert!(text.contains("etcd_server_version{server_version=\"3.4.23\"} 1\n"));
        assert!(text.contains("process_start_time_seconds "));
        assert!(text.contains("process_resident_memory_bytes "));
        // Every sample line belongs to a metric that has a TYPE line.
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            let name = l.split(['{', ' ']).next().unwrap();
            let base = name
                .trim_end_matches("_bucket")
                .trim_end_matches("_sum")
                .trim_end_matches("_count");
            assert!(
                text.contains(&format!("# TYPE {name} "))
                    || text.contains(&format!("# TYPE {base} histogram")),
                "{l}"
            );
        }
    }

    #[test]
    fn histogram_buckets_like_etcd() {
        let h = Histogram::exponential(0.001, 2.0, DISK_BUCKETS_COUNT);
        h.observe(0.0005);
        h.observe(0.003);
        h.observe(100.0);
        let mut out = String::new();
        h.render(&mut out, "etcd_disk_wal_fsync_duration_seconds", "x");
        assert!(out.contains("etcd_disk_wal_fsync_duration_seconds_bucket{le=\"0.001\"} 1\n"));
        assert!(out.contains("etcd_disk_wal_fsync_duration_seconds_bucket{le=\"0.004\"} 2\n"));
        assert!(out.contains("etcd_disk_wal_fsync_duration_seconds_bucket{le=\"8.192\"} 2\n"));
        assert!(out.contains("etcd_disk_wal_fsync_duration_seconds_bucket{le=\"+Inf\"} 3\n"));
        assert!(out.contains("etcd_disk_wal_fsync_duration_seconds_count 3\n"));
        assert!(out.contains("etcd_disk_wal_fsync_duration_seconds_sum 100.0035"));
        assert_eq!(h.count(), 3);
    }

    #[test]
    fn concurrent_updates_are_not_lost() {
        let m = std::sync::Arc::new(Metrics::new());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let m = m.clone();
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        m.put_total.inc();
                        m.wal_fsync_seconds.observe(0.002);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(m.put_total.get(), 40_000);
        assert_eq!(m.wal_fsync_seconds.count(), 40_000);
        let sum = f64::from_bits(m.wal_fsync_seconds.sum_bits.load(Ordering::Relaxed));
        assert!((sum - 80.0).abs() < 1e-6, "{sum}");
    }
}
