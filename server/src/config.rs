//! etcd 3.4's server flags, their `ETCD_*` environment variables, and their validation.
//!
//! What it is: the command line of the `ferrite` binary. Flags are declared with clap (derive),
//! which also renders `--help`; the *syntax* follows Go's `flag` package, as etcd's does:
//! `-flag value`, `--flag value`, `-flag=value` and `--flag=value` are all accepted; a boolean
//! flag takes its value only with `=` (`--client-cert-auth=false`), never from the next argument;
//! a repeated flag keeps its last value; `--` ends the flags.
//!
//! Environment: every flag `--some-flag` is also read from `ETCD_SOME_FLAG` (upper snake case),
//! exactly as etcd 3.4 does it: an empty variable is ignored; a variable whose flag is also given
//! on the command line is a fatal conflict (etcd 3.4's behaviour, not "the flag wins"); an unknown
//! `ETCD_*` variable is a warning.
//!
//! Errors mirror etcd's, byte for byte where etcd's are useful:
//! - syntax and value errors (`flag provided but not defined: -bogus`,
//!   `invalid value "abc" for flag -snapshot-count: parse error`) print the message and the short
//!   usage to stderr and exit with status 2 (Go's `flag` convention, which etcd keeps);
//! - semantic errors (`error verifying flags, ...`, a bad environment value, a conflict between
//!   the initial cluster and the advertised peer URLs, TLS requested) exit with status 1.
//!
//! Invariants of a returned [`Config`]: every URL has a scheme, a host and a port and no path;
//! `election_timeout_ms >= 5 * heartbeat_interval_ms`; the initial cluster names this member with
//! exactly its advertised peer URLs; an https listen URL comes with a certificate or auto-TLS.
//!
//! Non-goals: `--config-file`, discovery (`--discovery*`), the v2 API and v2 proxy, unixs. They are
//! accepted syntactically where etcd accepts them and refused with a clear error when they would
//! change behaviour, so nothing is silently served differently from what was asked.

use clap::{CommandFactory, FromArgMatches, Parser};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// The etcd server version ferrite's API is compatible with (reported by `/version`, `Status`,
/// `--version`).
pub const ETCD_SERVER_VERSION: &str = "3.4.23";
/// The etcd cluster version ferrite reports (`/version`'s `etcdcluster`).
pub const ETCD_CLUSTER_VERSION: &str = "3.4.0";
/// ferrite's own version.
pub const FERRITE_VERSION: &str = env!("CARGO_PKG_VERSION");

/// etcd's default backend quota when `--quota-backend-bytes` is 0 (2 GiB).
pub const QUOTA_BACKEND_BYTES_DEFAULT: u64 = 2 * 1024 * 1024 * 1024;
/// etcd's suggested maximum backend quota (8 GiB); above it etcd warns.
pub const QUOTA_BACKEND_BYTES_SUGGESTED_MAX: u64 = 8 * 1024 * 1024 * 1024;
/// etcd refuses election timeouts above this.
pub const ELECTION_TIMEOUT_MS_MAX: u64 = 50_000;
/// Upper bound on `--cores`: one executor per core, and no machine we target has more.
pub const CORES_MAX: usize = 1024;

const _: () = assert!(QUOTA_BACKEND_BYTES_DEFAULT < QUOTA_BACKEND_BYTES_SUGGESTED_MAX);

/// The raw flags, as clap sees them after [`normalize_args`] has turned Go's flag syntax into
/// `--flag=value` pairs. Defaults are etcd 3.4's.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "ferrite",
    about = "ferrite: an etcd-compatible key-value store (etcd v3 API, etcd 3.4's flags).",
    disable_help_flag = true,
    disable_version_flag = true,
    after_help = "Every flag may also be given as an environment variable: --some-flag as ETCD_SOME_FLAG.\n\
                  Flags accept Go's syntax as etcd does: -flag value, --flag=value, -flag=value."
)]
struct Flags {
    // ---- Member ----
    /// Human-readable name for this member.
    #[arg(long, default_value = "default", help_heading = "Member")]
    name: String,
    /// Path to the data directory (default '${name}.etcd').
    #[arg(long, default_value = "", help_heading = "Member")]
    data_dir: String,
    /// Path to the dedicated wal directory.
    #[arg(long, default_value = "", help_heading = "Member")]
    wal_dir: String,
    /// Number of committed transactions to trigger a snapshot to disk.
    #[arg(long, default_value = "100000", value_parser = parse_u64, help_heading = "Member")]
    snapshot_count: u64,
    /// Time (in milliseconds) of a heartbeat interval.
    #[arg(long, default_value = "100", value_parser = parse_u64, help_heading = "Member")]
    heartbeat_interval: u64,
    /// Time (in milliseconds) for an election to timeout.
    #[arg(long, default_value = "1000", value_parser = parse_u64, help_heading = "Member")]
    election_timeout: u64,
    /// Whether to fast-forward initial election ticks on boot for faster election.
    #[arg(long, default_value = "true", value_name = "BOOL", action = clap::ArgAction::Set, value_parser = parse_go_bool, help_heading = "Member")]
    initial_election_tick_advance: bool,
    /// List of URLs to listen on for peer traffic.
    #[arg(long, default_value = "http://localhost:2380", value_parser = parse_urls, help_heading = "Member")]
    listen_peer_urls: Urls,
    /// List of URLs to listen on for client traffic.
    #[arg(long, default_value = "http://localhost:2379", value_parser = parse_urls, help_heading = "Member")]
    listen_client_urls: Urls,
    /// Maximum number of snapshot files to retain (0 is unlimited).
    #[arg(long, default_value = "5", value_parser = parse_u64, help_heading = "Member")]
    max_snapshots: u64,
    /// Maximum number of wal files to retain (0 is unlimited).
    #[arg(long, default_value = "5", value_parser = parse_u64, help_heading = "Member")]
    max_wals: u64,
    /// Raise alarms when backend size exceeds the given quota (0 defaults to 2 GiB).
    #[arg(long, default_value = "0", value_parser = parse_u64, help_heading = "Member")]
    quota_backend_bytes: u64,
    /// Maximum time before commit the backend transaction (accepted, ignored).
    #[arg(long, default_value = "", help_heading = "Member")]
    backend_batch_interval: String,
    /// Maximum operations before commit the backend transaction (accepted, ignored).
    #[arg(long, default_value = "0", value_parser = parse_u64, help_heading = "Member")]
    backend_batch_limit: u64,
    /// Maximum number of operations permitted in a transaction.
    #[arg(long, default_value = "128", value_parser = parse_u64, help_heading = "Member")]
    max_txn_ops: u64,
    /// Maximum client request size in bytes the server will accept.
    #[arg(long, default_value = "1572864", value_parser = parse_u64, help_heading = "Member")]
    max_request_bytes: u64,
    /// Maximum concurrent streams that each client can open at a time.
    #[arg(long, default_value = "4294967295", value_parser = parse_u64, help_heading = "Member")]
    max_concurrent_streams: u64,
    /// Minimum duration interval that a client should wait before pinging server.
    #[arg(long, default_value = "5s", value_parser = parse_go_duration, help_heading = "Member")]
    grpc_keepalive_min_time: Duration,
    /// Frequency duration of server-to-client ping to check if a connection is alive.
    #[arg(long, default_value = "2h", value_parser = parse_go_duration, help_heading = "Member")]
    grpc_keepalive_interval: Duration,
    /// Additional duration of wait before closing a non-responsive connection.
    #[arg(long, default_value = "20s", value_parser = parse_go_duration, help_heading = "Member")]
    grpc_keepalive_timeout: Duration,
    /// ferrite: number of cores (one glommio executor each); default all available.
    #[arg(long, default_value = "0", value_parser = parse_u64, help_heading = "Member")]
    cores: u64,

    // ---- Clustering ----
    /// List of this member's peer URLs to advertise to the rest of the cluster.
    #[arg(long, default_value = "http://localhost:2380", value_parser = parse_urls, help_heading = "Clustering")]
    initial_advertise_peer_urls: Urls,
    /// Initial cluster configuration for bootstrapping (default '${name}=<initial-advertise-peer-urls>').
    #[arg(long, default_value = "", help_heading = "Clustering")]
    initial_cluster: String,
    /// Initial cluster state ('new' or 'existing').
    #[arg(long, default_value = "new", value_parser = parse_cluster_state, help_heading = "Clustering")]
    initial_cluster_state: ClusterState,
    /// Initial cluster token for the etcd cluster during bootstrap.
    #[arg(long, default_value = "etcd-cluster", help_heading = "Clustering")]
    initial_cluster_token: String,
    /// List of this member's client URLs to advertise to the public.
    #[arg(long, default_value = "http://localhost:2379", value_parser = parse_urls, help_heading = "Clustering")]
    advertise_client_urls: Urls,
    /// Discovery URL used to bootstrap the cluster (not supported by ferrite).
    #[arg(long, default_value = "", help_heading = "Clustering")]
    discovery: String,
    /// Expected behavior ('exit' or 'proxy') when discovery services fails.
    #[arg(long, default_value = "proxy", help_heading = "Clustering")]
    discovery_fallback: String,
    /// HTTP proxy to use for traffic to discovery service.
    #[arg(long, default_value = "", help_heading = "Clustering")]
    discovery_proxy: String,
    /// DNS srv domain used to bootstrap the cluster (not supported by ferrite).
    #[arg(long, default_value = "", help_heading = "Clustering")]
    discovery_srv: String,
    /// Suffix to the dns srv name queried when bootstrapping.
    #[arg(long, default_value = "", help_heading = "Clustering")]
    discovery_srv_name: String,
    /// Reject reconfiguration requests that would cause quorum loss.
    #[arg(long, default_value = "true", value_name = "BOOL", action = clap::ArgAction::Set, value_parser = parse_go_bool, help_heading = "Clustering")]
    strict_reconfig_check: bool,
    /// Enable to run an additional Raft election phase.
    #[arg(long, default_value = "false", value_name = "BOOL", action = clap::ArgAction::Set, value_parser = parse_go_bool, help_heading = "Clustering")]
    pre_vote: bool,
    /// Auto compaction retention length. 0 means disable auto compaction.
    #[arg(long, default_value = "0", help_heading = "Clustering")]
    auto_compaction_retention: String,
    /// Interpret 'auto-compaction-retention' one of: periodic|revision.
    #[arg(long, default_value = "periodic", help_heading = "Clustering")]
    auto_compaction_mode: String,
    /// Accept etcd V2 client requests (not supported by ferrite).
    #[arg(long, default_value = "false", value_name = "BOOL", action = clap::ArgAction::Set, value_parser = parse_go_bool, help_heading = "Clustering")]
    enable_v2: bool,

    // ---- Security ----
    /// Path to the client server TLS cert file.
    #[arg(long, default_value = "", help_heading = "Security")]
    cert_file: String,
    /// Path to the client server TLS key file.
    #[arg(long, default_value = "", help_heading = "Security")]
    key_file: String,
    /// Enable client cert authentication.
    #[arg(long, default_value = "false", value_name = "BOOL", action = clap::ArgAction::Set, value_parser = parse_go_bool, help_heading = "Security")]
    client_cert_auth: bool,
    /// Path to the client certificate revocation list file.
    #[arg(long, default_value = "", help_heading = "Security")]
    client_crl_file: String,
    /// Allowed TLS hostname for client cert authentication.
    #[arg(long, default_value = "", help_heading = "Security")]
    client_cert_allowed_hostname: String,
    /// Path to the client server TLS trusted CA cert file.
    #[arg(long, default_value = "", help_heading = "Security")]
    trusted_ca_file: String,
    /// Client TLS using generated certificates.
    #[arg(long, default_value = "false", value_name = "BOOL", action = clap::ArgAction::Set, value_parser = parse_go_bool, help_heading = "Security")]
    auto_tls: bool,
    /// Path to the peer server TLS cert file.
    #[arg(long, default_value = "", help_heading = "Security")]
    peer_cert_file: String,
    /// Path to the peer server TLS key file.
    #[arg(long, default_value = "", help_heading = "Security")]
    peer_key_file: String,
    /// Enable peer client cert authentication.
    #[arg(long, default_value = "false", value_name = "BOOL", action = clap::ArgAction::Set, value_parser = parse_go_bool, help_heading = "Security")]
    peer_client_cert_auth: bool,
    /// Path to the peer server TLS trusted CA file.
    #[arg(long, default_value = "", help_heading = "Security")]
    peer_trusted_ca_file: String,
    /// Required CN for client certs connecting to the peer endpoint.
    #[arg(long, default_value = "", help_heading = "Security")]
    peer_cert_allowed_cn: String,
    /// Allowed TLS hostname for inter peer authentication.
    #[arg(long, default_value = "", help_heading = "Security")]
    peer_cert_allowed_hostname: String,
    /// Peer TLS using self-generated certificates.
    #[arg(long, default_value = "false", value_name = "BOOL", action = clap::ArgAction::Set, value_parser = parse_go_bool, help_heading = "Security")]
    peer_auto_tls: bool,
    /// Path to the peer certificate revocation list file.
    #[arg(long, default_value = "", help_heading = "Security")]
    peer_crl_file: String,
    /// Comma-separated list of supported TLS cipher suites between client/server and peers.
    #[arg(long, default_value = "", help_heading = "Security")]
    cipher_suites: String,
    /// Comma-separated whitelist of origins for CORS (empty or * means allow all).
    #[arg(long, default_value = "*", help_heading = "Security")]
    cors: String,
    /// Acceptable hostnames from HTTP client requests (empty or * means allow all).
    #[arg(long, default_value = "*", help_heading = "Security")]
    host_whitelist: String,

    // ---- Auth ----
    /// Specify a v3 authentication token type and its options ('simple' or 'jwt').
    #[arg(long, default_value = "simple", help_heading = "Auth")]
    auth_token: String,
    /// Specify the cost / strength of the bcrypt algorithm for hashing auth passwords (4..=31).
    #[arg(long, default_value = "10", value_parser = parse_u64, help_heading = "Auth")]
    bcrypt_cost: u64,
    /// Time (in seconds) of the auth-token-ttl.
    #[arg(long, default_value = "300", value_parser = parse_u64, help_heading = "Auth")]
    auth_token_ttl: u64,

    // ---- Profiling and Monitoring ----
    /// Enable runtime profiling data via HTTP server (accepted; ferrite has no pprof).
    #[arg(long, default_value = "false", value_name = "BOOL", action = clap::ArgAction::Set, value_parser = parse_go_bool, help_heading = "Profiling and Monitoring")]
    enable_pprof: bool,
    /// Set level of detail for exported metrics ('basic' or 'extensive').
    #[arg(
        long,
        default_value = "basic",
        help_heading = "Profiling and Monitoring"
    )]
    metrics: String,
    /// List of URLs to listen on for the metrics and health endpoints.
    #[arg(long, default_value = "", value_parser = parse_urls_or_empty, help_heading = "Profiling and Monitoring")]
    listen_metrics_urls: Urls,

    // ---- Logging ----
    /// Specify 'zap' for structured (JSON) logging or 'capnslog'.
    #[arg(long, default_value = "zap", help_heading = "Logging")]
    logger: String,
    /// 'stdout', 'stderr' or 'default' (stderr), or a comma-separated list of file paths.
    #[arg(long, default_value = "default", help_heading = "Logging")]
    log_outputs: String,
    /// Configures log level. Only supports debug, info, warn, error, panic, or fatal.
    #[arg(long, default_value = "info", help_heading = "Logging")]
    log_level: String,
    /// Enable debug-level logging (deprecated; use --log-level=debug).
    #[arg(long, default_value = "false", value_name = "BOOL", action = clap::ArgAction::Set, value_parser = parse_go_bool, help_heading = "Logging")]
    debug: bool,
    /// Per-package log levels (accepted, ignored).
    #[arg(long, default_value = "", help_heading = "Logging")]
    log_package_levels: String,

    // ---- v2 proxy (not supported) ----
    /// Proxy mode setting ('off', 'readonly' or 'on'); only 'off' is supported.
    #[arg(long, default_value = "off", help_heading = "v2 Proxy (not supported)")]
    proxy: String,
    #[arg(long, default_value = "5000", value_parser = parse_u64, help_heading = "v2 Proxy (not supported)")]
    proxy_failure_wait: u64,
    #[arg(long, default_value = "30000", value_parser = parse_u64, help_heading = "v2 Proxy (not supported)")]
    proxy_refresh_interval: u64,
    #[arg(long, default_value = "1000", value_parser = parse_u64, help_heading = "v2 Proxy (not supported)")]
    proxy_dial_timeout: u64,
    #[arg(long, default_value = "5000", value_parser = parse_u64, help_heading = "v2 Proxy (not supported)")]
    proxy_write_timeout: u64,
    #[arg(long, default_value = "0", value_parser = parse_u64, help_heading = "v2 Proxy (not supported)")]
    proxy_read_timeout: u64,

    // ---- Experimental ----
    /// Enable to check data corruption before serving any client/peer traffic.
    #[arg(long, default_value = "false", value_name = "BOOL", action = clap::ArgAction::Set, value_parser = parse_go_bool, help_heading = "Experimental feature")]
    experimental_initial_corrupt_check: bool,
    /// Duration of time between cluster corruption check passes.
    #[arg(long, default_value = "0s", value_parser = parse_go_duration, help_heading = "Experimental feature")]
    experimental_corrupt_check_time: Duration,
    /// Serve v2 requests through the v3 backend under a given prefix (not supported).
    #[arg(long, default_value = "", help_heading = "Experimental feature")]
    experimental_enable_v2v3: String,
    /// Freelist type of bbolt (accepted, ignored: ferrite has its own B+tree).
    #[arg(long, default_value = "array", help_heading = "Experimental feature")]
    experimental_backend_bbolt_freelist_type: String,
    /// Leader sends regular lease checkpoints.
    #[arg(long, default_value = "false", value_name = "BOOL", action = clap::ArgAction::Set, value_parser = parse_go_bool, help_heading = "Experimental feature")]
    experimental_enable_lease_checkpoint: bool,
    /// Persist lease remaining TTL (requires --experimental-enable-lease-checkpoint).
    #[arg(long, default_value = "false", value_name = "BOOL", action = clap::ArgAction::Set, value_parser = parse_go_bool, help_heading = "Experimental feature")]
    experimental_enable_lease_checkpoint_persist: bool,
    /// Maximum revisions deleted in each compaction batch.
    #[arg(long, default_value = "1000", value_parser = parse_u64, help_heading = "Experimental feature")]
    experimental_compaction_batch_limit: u64,
    /// Skip verification of SAN field in client certificate for peer connections.
    #[arg(long, default_value = "false", value_name = "BOOL", action = clap::ArgAction::Set, value_parser = parse_go_bool, help_heading = "Experimental feature")]
    experimental_peer_skip_client_san_verification: bool,
    /// Duration of periodic watch progress notifications.
    #[arg(long, default_value = "10m", value_parser = parse_go_duration, help_heading = "Experimental feature")]
    experimental_watch_progress_notify_interval: Duration,
    /// Warning is generated if requests take more than this duration.
    #[arg(long, default_value = "100ms", value_parser = parse_go_duration, help_heading = "Experimental feature")]
    experimental_warning_apply_duration: Duration,

    // ---- Unsafe ----
    /// Force to create a new one-member cluster.
    #[arg(long, default_value = "false", value_name = "BOOL", action = clap::ArgAction::Set, value_parser = parse_go_bool, help_heading = "Unsafe feature")]
    force_new_cluster: bool,

    // ---- Other ----
    /// Path to a configuration file (not supported by ferrite).
    #[arg(long, default_value = "", help_heading = "Other")]
    config_file: String,
    /// Print the version and exit.
    #[arg(long, default_value = "false", value_name = "BOOL", action = clap::ArgAction::Set, value_parser = parse_go_bool, help_heading = "Other")]
    version: bool,
}

/// `--initial-cluster-state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterState {
    New,
    Existing,
}

impl fmt::Display for ClusterState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ClusterState::New => "new",
            ClusterState::Existing => "existing",
        })
    }
}

/// `--logger`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logger {
    /// etcd's structured JSON logs (ferrite's default; etcd 3.5's default).
    Zap,
    /// etcd's older text format: `2026-11-22 01:42:37.629261 I | pkg: message`.
    Capnslog,
}

/// `--log-level`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
    Panic,
    Fatal,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
            LogLevel::Panic => "panic",
            LogLevel::Fatal => "fatal",
        }
    }
}

/// Where logs go (`--log-outputs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogOutput {
    Stderr,
    Stdout,
    File(PathBuf),
}

/// `--auto-compaction-mode` with its retention, already interpreted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AutoCompaction {
    /// Retention 0: no automatic compaction.
    Disabled,
    /// Keep this much history by time (etcd: a bare integer means hours).
    Periodic(Duration),
    /// Keep this many revisions.
    Revision(u64),
}

/// A parsed `scheme://host:port` URL, as etcd's `types.NewURLs` accepts them.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Url {
    /// `http`, `https`, `unix` or `unixs`.
    pub scheme: String,
    /// Host name or IP literal, without IPv6 brackets.
    pub host: String,
    pub port: u16,
}

impl Url {
    /// `host:port`, with brackets around an IPv6 literal: what `bind`/`connect` take.
    pub fn host_port(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Display for Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme, self.host_port())
    }
}

/// A list of URLs, sorted as etcd sorts them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Urls(pub Vec<Url>);

impl fmt::Display for Urls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|u| u.to_string()).collect();
        f.write_str(&parts.join(","))
    }
}

/// TLS settings (etcd's flags); turned into rustls configurations by `crate::tls`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsConfig {
    pub cert_file: String,
    pub key_file: String,
    pub trusted_ca_file: String,
    pub client_cert_auth: bool,
    pub client_crl_file: String,
    pub client_cert_allowed_hostname: String,
    pub auto_tls: bool,
    pub cipher_suites: Vec<String>,
    pub peer_cert_file: String,
    pub peer_key_file: String,
    pub peer_trusted_ca_file: String,
    pub peer_client_cert_auth: bool,
    pub peer_auto_tls: bool,
    pub peer_cert_allowed_cn: String,
    pub peer_cert_allowed_hostname: String,
    pub peer_crl_file: String,
}

impl TlsConfig {
    /// The TLS flags that are set, as `--flag` names (empty: plaintext was asked for).
    pub fn flags_set(&self) -> Vec<&'static str> {
        let mut set = Vec::new();
        let strings: [(&'static str, &str); 12] = [
            ("--cert-file", &self.cert_file),
            ("--key-file", &self.key_file),
            ("--trusted-ca-file", &self.trusted_ca_file),
            ("--client-crl-file", &self.client_crl_file),
            (
                "--client-cert-allowed-hostname",
                &self.client_cert_allowed_hostname,
            ),
            ("--peer-cert-file", &self.peer_cert_file),
            ("--peer-key-file", &self.peer_key_file),
            ("--peer-trusted-ca-file", &self.peer_trusted_ca_file),
            ("--peer-cert-allowed-cn", &self.peer_cert_allowed_cn),
            (
                "--peer-cert-allowed-hostname",
                &self.peer_cert_allowed_hostname,
            ),
            ("--peer-crl-file", &self.peer_crl_file),
            ("", ""),
        ];
        for (flag, value) in strings {
            if !value.is_empty() {
                set.push(flag);
            }
        }
        let bools = [
            ("--client-cert-auth", self.client_cert_auth),
            ("--auto-tls", self.auto_tls),
            ("--peer-client-cert-auth", self.peer_client_cert_auth),
            ("--peer-auto-tls", self.peer_auto_tls),
        ];
        for (flag, value) in bools {
            if value {
                set.push(flag);
            }
        }
        if !self.cipher_suites.is_empty() {
            set.push("--cipher-suites");
        }
        set
    }
}

/// Auth flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthConfig {
    /// `simple` or `jwt,...` (the raw option string).
    pub token: String,
    pub bcrypt_cost: u32,
    pub token_ttl_s: u64,
}

/// `--experimental-*` flags ferrite accepts (kube setups pass several of them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExperimentalConfig {
    pub initial_corrupt_check: bool,
    pub corrupt_check_time: Duration,
    pub enable_lease_checkpoint: bool,
    pub enable_lease_checkpoint_persist: bool,
    pub compaction_batch_limit: u64,
    pub watch_progress_notify_interval: Duration,
    pub warning_apply_duration: Duration,
}

/// The validated server configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub name: String,
    pub data_dir: PathBuf,
    /// Dedicated WAL directory; `None`: `<data-dir>/member/wal`.
    pub wal_dir: Option<PathBuf>,
    pub listen_client_urls: Urls,
    pub advertise_client_urls: Urls,
    pub listen_peer_urls: Urls,
    pub initial_advertise_peer_urls: Urls,
    /// Member name → its peer URLs (sorted).
    pub initial_cluster: BTreeMap<String, Urls>,
    pub initial_cluster_state: ClusterState,
    pub initial_cluster_token: String,
    pub snapshot_count: u64,
    /// As given; 0 means etcd's default (see [`Config::quota_backend_bytes_effective`]).
    pub quota_backend_bytes: u64,
    pub max_request_bytes: u64,
    pub max_txn_ops: u64,
    pub max_concurrent_streams: u64,
    pub auto_compaction: AutoCompaction,
    pub heartbeat_interval_ms: u64,
    pub election_timeout_ms: u64,
    pub initial_election_tick_advance: bool,
    pub pre_vote: bool,
    pub strict_reconfig_check: bool,
    pub log_level: LogLevel,
    pub logger: Logger,
    pub log_outputs: Vec<LogOutput>,
    pub listen_metrics_urls: Urls,
    /// `--metrics extensive`.
    pub metrics_extensive: bool,
    pub enable_pprof: bool,
    pub force_new_cluster: bool,
    pub tls: TlsConfig,
    pub auth: AuthConfig,
    pub experimental: ExperimentalConfig,
    pub grpc_keepalive_min_time: Duration,
    pub grpc_keepalive_interval: Duration,
    pub grpc_keepalive_timeout: Duration,
    /// Number of glommio executors (cores); >= 1.
    pub cores: usize,
    /// Messages to log once logging is set up (as etcd logs them after parsing): unknown
    /// `ETCD_*` variables, variables used, flags accepted but ignored.
    pub notices: Vec<Notice>,
}

/// A message produced while parsing, to be logged once the logger exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub level: LogLevel,
    pub msg: String,
}

/// What went wrong (or what to print instead of starting).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigError {
    /// `-h`/`--help`: print this to stdout, exit 0.
    Help(String),
    /// `--version`: print this to stdout, exit 0.
    Version(String),
    /// Flag syntax or value error: print the message and the short usage to stderr, exit 2.
    Flag(String),
    /// A semantic error ("error verifying flags, ..."): print, exit 1.
    Verify(String),
}

impl ConfigError {
    /// The process exit status etcd uses for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            ConfigError::Help(_) | ConfigError::Version(_) => 0,
            ConfigError::Flag(_) => 2,
            ConfigError::Verify(_) => 1,
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Help(s) | ConfigError::Version(s) => f.write_str(s),
            ConfigError::Flag(s) => write!(f, "{s}"),
            ConfigError::Verify(s) => {
                write!(f, "error verifying flags, {s}. See 'ferrite --help'.")
            }
        }
    }
}

impl std::error::Error for ConfigError {}

/// The short usage etcd prints after a flag error.
pub const SHORT_USAGE: &str = "Usage:

  ferrite [flags]
    Start a ferrite (etcd-compatible) server.

  ferrite --version
    Show the version of ferrite and of the etcd API it serves.

  ferrite -h | --help
    Show the help information about ferrite.
";

impl Config {
    /// Parses `std::env::args()` and the process environment. On `--help`/`--version` prints
    /// and exits 0; on an error prints etcd's message and exits with etcd's status (2 for flag
    /// syntax, 1 for verification).
    pub fn from_args_and_env() -> Config {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let env: Vec<(String, String)> = std::env::vars().collect();
        match Config::parse(&args, &env) {
            Ok(config) => config,
            Err(err) => {
                match &err {
                    ConfigError::Help(s) | ConfigError::Version(s) => print!("{s}"),
                    ConfigError::Flag(s) => eprintln!("{s}\n{SHORT_USAGE}"),
                    ConfigError::Verify(_) => crate::logging::early_fatal(&err.to_string()),
                }
                std::process::exit(err.exit_code());
            }
        }
    }

    /// Parses arguments (without the program name) and environment pairs. Pure: no I/O.
    pub fn parse(args: &[String], env: &[(String, String)]) -> Result<Config, ConfigError> {
        let command = Flags::command();
        let spec = FlagSpec::of(&command);
        let given = normalize_args(args, &spec)?;

        // Environment: ETCD_<FLAG> for every flag not on the command line.
        let mut notices = Vec::new();
        let mut from_env: Vec<(String, String)> = Vec::new();
        let mut used_env: Vec<String> = Vec::new();
        let env_map: HashMap<&str, &str> =
            env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        for flag in &spec.names {
            let key = flag_to_env(flag);
            let Some(value) = env_map.get(key.as_str()) else {
                continue;
            };
            if value.is_empty() {
                continue;
            }
            if given.contains_key(flag) {
                return Err(ConfigError::Verify(format!(
                    "conflicting environment variable \"{key}\" is shadowed by corresponding \
                     command-line flag (either unset environment variable or disable flag)"
                )));
            }
            let value = if spec.bools.contains(flag) {
                match parse_go_bool(value) {
                    Ok(b) => b.to_string(),
                    Err(_) => {
                        return Err(ConfigError::Verify(format!(
                            "invalid value \"{value}\" for {key}: parse error"
                        )))
                    }
                }
            } else {
                (*value).to_string()
            };
            notices.push(Notice {
                level: LogLevel::Info,
                msg: format!("recognized and used environment variable {key}={value}"),
            });
            used_env.push(key);
            from_env.push((flag.clone(), value));
        }
        for (key, value) in env {
            if key.starts_with("ETCD_") && !used_env.contains(key) && !value.is_empty() {
                notices.push(Notice {
                    level: LogLevel::Warn,
                    msg: format!("unrecognized environment variable {key}={value}"),
                });
            }
        }

        let mut argv = vec!["ferrite".to_string()];
        for (flag, value) in given.iter().chain(from_env.iter().map(|(f, v)| (f, v))) {
            argv.push(format!("--{flag}={value}"));
        }
        let env_flags: Vec<&String> = from_env.iter().map(|(f, _)| f).collect();
        let matches = command
            .try_get_matches_from(&argv)
            .map_err(|err| clap_error_to_etcd(&err, &given, &env_flags, &env_map))?;
        let flags =
            Flags::from_arg_matches(&matches).map_err(|e| ConfigError::Flag(e.to_string()))?;
        if flags.version {
            return Err(ConfigError::Version(version_text()));
        }
        let explicitly_set =
            |flag: &str| given.contains_key(flag) || from_env.iter().any(|(f, _)| f == flag);
        Config::validate(flags, &explicitly_set, notices)
    }

    fn validate(
        flags: Flags,
        explicitly_set: &dyn Fn(&str) -> bool,
        mut notices: Vec<Notice>,
    ) -> Result<Config, ConfigError> {
        let verify = |s: String| Err(ConfigError::Verify(s));

        // Logging first, as etcd's Validate does.
        let logger = match flags.logger.as_str() {
            "zap" => Logger::Zap,
            "capnslog" => Logger::Capnslog,
            other => return verify(format!("unknown logger option {other:?}")),
        };
        let mut log_level = match flags.log_level.as_str() {
            "debug" => LogLevel::Debug,
            "info" => LogLevel::Info,
            "warn" => LogLevel::Warn,
            "error" => LogLevel::Error,
            "panic" | "dpanic" => LogLevel::Panic,
            "fatal" => LogLevel::Fatal,
            other => return verify(format!("unknown level {other:?}")),
        };
        if flags.debug {
            log_level = LogLevel::Debug;
        }
        let mut log_outputs = Vec::new();
        for out in flags
            .log_outputs
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            let parsed = match out {
                "default" | "stderr" => LogOutput::Stderr,
                "stdout" => LogOutput::Stdout,
                path => LogOutput::File(PathBuf::from(path)),
            };
            if !log_outputs.contains(&parsed) {
                log_outputs.push(parsed);
            }
        }
        if log_outputs.is_empty() {
            log_outputs.push(LogOutput::Stderr);
        }

        // Features ferrite refuses rather than ignores.
        if !flags.config_file.is_empty() {
            return verify("--config-file is not supported by ferrite; pass flags or ETCD_* environment variables".into());
        }
        if !flags.discovery.is_empty() || !flags.discovery_srv.is_empty() {
            return verify("discovery (--discovery, --discovery-srv) is not supported by ferrite; use --initial-cluster".into());
        }
        if flags.proxy != "off" {
            if flags.proxy != "readonly" && flags.proxy != "on" {
                return verify(format!("invalid value {:?} for --proxy", flags.proxy));
            }
            return verify("the v2 proxy (--proxy) is not supported by ferrite".into());
        }
        if flags.enable_v2 || !flags.experimental_enable_v2v3.is_empty() {
            return verify(
                "the v2 API (--enable-v2, --experimental-enable-v2v3) is not supported by ferrite"
                    .into(),
            );
        }

        for (flag, urls) in [
            ("--listen-peer-urls", &flags.listen_peer_urls),
            ("--listen-client-urls", &flags.listen_client_urls),
            ("--listen-metrics-urls", &flags.listen_metrics_urls),
        ] {
            for url in &urls.0 {
                if url.scheme == "unix" || url.scheme == "unixs" || url.host == "localhost" {
                    continue;
                }
                if url.host.parse::<std::net::IpAddr>().is_err() {
                    return verify(format!("expected IP in URL for binding ({url}) in {flag}"));
                }
            }
        }
        for (flag, urls) in [
            (
                "--initial-advertise-peer-urls",
                &flags.initial_advertise_peer_urls,
            ),
            ("--advertise-client-urls", &flags.advertise_client_urls),
        ] {
            for url in &urls.0 {
                if url.host.is_empty() {
                    return verify(format!(
                        "{flag} {:?} must be \"host:port\" (unexpected empty host ({url}))",
                        urls.to_string()
                    ));
                }
            }
        }
        if flags.heartbeat_interval == 0 {
            return verify("--heartbeat-interval must be >0 (set to 0ms)".into());
        }
        if flags.election_timeout == 0 {
            return verify("--election-timeout must be >0 (set to 0ms)".into());
        }
        if flags.heartbeat_interval.saturating_mul(5) > flags.election_timeout {
            return verify(format!(
                "--election-timeout[{}ms] should be at least as 5 times as --heartbeat-interval[{}ms]",
                flags.election_timeout, flags.heartbeat_interval
            ));
        }
        if flags.election_timeout > ELECTION_TIMEOUT_MS_MAX {
            return verify(format!(
                "--election-timeout[{}ms] is too long, and should be set less than {}ms",
                flags.election_timeout, ELECTION_TIMEOUT_MS_MAX
            ));
        }
        if explicitly_set("listen-client-urls") && !explicitly_set("advertise-client-urls") {
            return verify(
                "--advertise-client-urls is required when --listen-client-urls is set explicitly"
                    .into(),
            );
        }
        let auto_compaction = parse_auto_compaction(
            &flags.auto_compaction_mode,
            &flags.auto_compaction_retention,
        )
        .map_err(ConfigError::Verify)?;
        if flags.experimental_enable_lease_checkpoint_persist
            && !flags.experimental_enable_lease_checkpoint
        {
            return verify("setting experimental-enable-lease-checkpoint-persist requires experimental-enable-lease-checkpoint".into());
        }
        if !(4..=31).contains(&flags.bcrypt_cost) {
            return verify(format!(
                "invalid bcrypt-cost {} (valid values are between 4 and 31)",
                flags.bcrypt_cost
            ));
        }
        let auth_token_kind = flags.auth_token.split(',').next().unwrap_or("");
        if auth_token_kind != "simple" && auth_token_kind != "jwt" {
            return verify(format!("unknown token type: {auth_token_kind}"));
        }
        if flags.metrics != "basic" && flags.metrics != "extensive" {
            return verify(format!("unknown metrics option {:?}", flags.metrics));
        }
        if flags.max_request_bytes == 0 || flags.max_request_bytes > u64::from(u32::MAX) {
            return verify(format!(
                "--max-request-bytes {} out of range (1..={})",
                flags.max_request_bytes,
                u32::MAX
            ));
        }
        if flags.max_txn_ops == 0 {
            return verify("--max-txn-ops must be >0".into());
        }

        // Initial cluster: default '<name>=<initial-advertise-peer-urls>' (etcd's
        // InitialClusterFromName).
        let initial_cluster_text = if flags.initial_cluster.is_empty() {
            flags
                .initial_advertise_peer_urls
                .0
                .iter()
                .map(|u| format!("{}={u}", flags.name))
                .collect::<Vec<_>>()
                .join(",")
        } else {
            flags.initial_cluster.clone()
        };
        let initial_cluster = parse_initial_cluster(&initial_cluster_text)
            .map_err(|e| ConfigError::Verify(format!("error setting up initial cluster: {e}")))?;
        if initial_cluster.is_empty() {
            return verify("initial cluster unset and no discovery URL found".into());
        }
        check_local_member(
            &flags.name,
            &initial_cluster,
            &flags.initial_advertise_peer_urls,
        )
        .map_err(ConfigError::Verify)?;
        let mut seen = Vec::new();
        for urls in initial_cluster.values() {
            for u in &urls.0 {
                if seen.contains(u) {
                    return verify(format!(
                        "initial cluster {initial_cluster_text} has duplicate url"
                    ));
                }
                seen.push(u.clone());
            }
        }

        let tls = TlsConfig {
            cert_file: flags.cert_file,
            key_file: flags.key_file,
            trusted_ca_file: flags.trusted_ca_file,
            client_cert_auth: flags.client_cert_auth,
            client_crl_file: flags.client_crl_file,
            client_cert_allowed_hostname: flags.client_cert_allowed_hostname,
            auto_tls: flags.auto_tls,
            cipher_suites: flags
                .cipher_suites
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect(),
            peer_cert_file: flags.peer_cert_file,
            peer_key_file: flags.peer_key_file,
            peer_trusted_ca_file: flags.peer_trusted_ca_file,
            peer_client_cert_auth: flags.peer_client_cert_auth,
            peer_auto_tls: flags.peer_auto_tls,
            peer_cert_allowed_cn: flags.peer_cert_allowed_cn,
            peer_cert_allowed_hostname: flags.peer_cert_allowed_hostname,
            peer_crl_file: flags.peer_crl_file,
        };
        // etcd's listener checks: an https URL needs a certificate (or --auto-tls).
        let client_tls = (!tls.cert_file.is_empty() && !tls.key_file.is_empty()) || tls.auto_tls;
        let peer_tls =
            (!tls.peer_cert_file.is_empty() && !tls.peer_key_file.is_empty()) || tls.peer_auto_tls;
        for u in flags
            .listen_client_urls
            .0
            .iter()
            .chain(flags.listen_metrics_urls.0.iter())
        {
            if u.scheme == "https" && !client_tls {
                return verify(format!(
                    "TLS key/cert (--cert-file, --key-file) must be provided for client url {u} with HTTPS scheme"
                ));
            }
        }
        for u in &flags.listen_peer_urls.0 {
            if u.scheme == "https" && !peer_tls {
                return verify(format!(
                    "TLS key/cert (--peer-cert-file, --peer-key-file) must be provided for peer url {u} with HTTPS scheme"
                ));
            }
        }
        if tls.client_cert_auth && tls.trusted_ca_file.is_empty() && !tls.auto_tls {
            return verify(
                "--client-cert-auth needs --trusted-ca-file (the CA that signs client certificates)"
                    .into(),
            );
        }
        for (flag, urls) in [
            ("--listen-client-urls", &flags.listen_client_urls),
            ("--advertise-client-urls", &flags.advertise_client_urls),
            ("--listen-peer-urls", &flags.listen_peer_urls),
            (
                "--initial-advertise-peer-urls",
                &flags.initial_advertise_peer_urls,
            ),
            ("--listen-metrics-urls", &flags.listen_metrics_urls),
        ] {
            if let Some(u) = urls.0.iter().find(|u| u.scheme == "unixs") {
                return verify(format!(
                    "TLS on {flag} is not implemented in ferrite ({u}); serve TLS on the client \
                     port (https:// in --listen-client-urls)"
                ));
            }
        }

        let available = std::thread::available_parallelism().map_or(1, |n| n.get());
        let cores = if flags.cores == 0 {
            available
        } else {
            flags.cores as usize
        };
        if cores > CORES_MAX {
            return verify(format!(
                "--cores {cores} is more than the supported {CORES_MAX}"
            ));
        }

        if flags.enable_pprof {
            notices.push(Notice {
                level: LogLevel::Warn,
                msg: "--enable-pprof is accepted but ignored: ferrite has no pprof endpoint".into(),
            });
        }
        if flags.quota_backend_bytes > QUOTA_BACKEND_BYTES_SUGGESTED_MAX {
            notices.push(Notice {
                level: LogLevel::Warn,
                msg: format!(
                    "quota exceeds the maximum value: --quota-backend-bytes {} > suggested {}",
                    flags.quota_backend_bytes, QUOTA_BACKEND_BYTES_SUGGESTED_MAX
                ),
            });
        }

        let data_dir = if flags.data_dir.is_empty() {
            PathBuf::from(format!("{}.etcd", flags.name))
        } else {
            PathBuf::from(&flags.data_dir)
        };
        let config = Config {
            name: flags.name,
            data_dir,
            wal_dir: (!flags.wal_dir.is_empty()).then(|| PathBuf::from(flags.wal_dir)),
            listen_client_urls: flags.listen_client_urls,
            advertise_client_urls: flags.advertise_client_urls,
            listen_peer_urls: flags.listen_peer_urls,
            initial_advertise_peer_urls: flags.initial_advertise_peer_urls,
            initial_cluster,
            initial_cluster_state: flags.initial_cluster_state,
            initial_cluster_token: flags.initial_cluster_token,
            snapshot_count: flags.snapshot_count,
            quota_backend_bytes: flags.quota_backend_bytes,
            max_request_bytes: flags.max_request_bytes,
            max_txn_ops: flags.max_txn_ops,
            max_concurrent_streams: flags.max_concurrent_streams,
            auto_compaction,
            heartbeat_interval_ms: flags.heartbeat_interval,
            election_timeout_ms: flags.election_timeout,
            initial_election_tick_advance: flags.initial_election_tick_advance,
            pre_vote: flags.pre_vote,
            strict_reconfig_check: flags.strict_reconfig_check,
            log_level,
            logger,
            log_outputs,
            listen_metrics_urls: flags.listen_metrics_urls,
            metrics_extensive: flags.metrics == "extensive",
            enable_pprof: flags.enable_pprof,
            force_new_cluster: flags.force_new_cluster,
            tls,
            auth: AuthConfig {
                token: flags.auth_token,
                bcrypt_cost: flags.bcrypt_cost as u32,
                token_ttl_s: flags.auth_token_ttl,
            },
            experimental: ExperimentalConfig {
                initial_corrupt_check: flags.experimental_initial_corrupt_check,
                corrupt_check_time: flags.experimental_corrupt_check_time,
                enable_lease_checkpoint: flags.experimental_enable_lease_checkpoint,
                enable_lease_checkpoint_persist: flags.experimental_enable_lease_checkpoint_persist,
                compaction_batch_limit: flags.experimental_compaction_batch_limit,
                watch_progress_notify_interval: flags.experimental_watch_progress_notify_interval,
                warning_apply_duration: flags.experimental_warning_apply_duration,
            },
            grpc_keepalive_min_time: flags.grpc_keepalive_min_time,
            grpc_keepalive_interval: flags.grpc_keepalive_interval,
            grpc_keepalive_timeout: flags.grpc_keepalive_timeout,
            cores,
            notices,
        };
        config.assert_invariants();
        Ok(config)
    }

    fn assert_invariants(&self) {
        assert!(self.cores >= 1 && self.cores <= CORES_MAX);
        assert!(self.election_timeout_ms >= 5 * self.heartbeat_interval_ms);
        assert!(self.initial_cluster.contains_key(&self.name));
        assert!(self.max_request_bytes >= 1);
    }

    /// The backend quota in force: etcd's 2 GiB default when the flag is 0.
    pub fn quota_backend_bytes_effective(&self) -> u64 {
        if self.quota_backend_bytes == 0 {
            QUOTA_BACKEND_BYTES_DEFAULT
        } else {
            self.quota_backend_bytes
        }
    }

    /// Where the WAL lives: `--wal-dir`, or `<data-dir>/member/wal` as etcd lays it out.
    pub fn wal_dir_effective(&self) -> PathBuf {
        self.wal_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("member").join("wal"))
    }

    /// Where the MVCC store lives: `<data-dir>/member/snap` (etcd keeps `db` there).
    pub fn member_dir(&self) -> PathBuf {
        self.data_dir.join("member")
    }

    /// Election timeout in heartbeat ticks (etcd's ElectionTicks).
    pub fn election_ticks(&self) -> u64 {
        self.election_timeout_ms / self.heartbeat_interval_ms
    }

    /// `name=url,...` for the initial cluster, as etcd prints it (sorted by name).
    pub fn initial_cluster_string(&self) -> String {
        let mut parts = Vec::new();
        for (name, urls) in &self.initial_cluster {
            for u in &urls.0 {
                parts.push(format!("{name}={u}"));
            }
        }
        parts.join(",")
    }
}

/// The `--version` text. The first line is etcd's, so scripts that parse `etcd Version: X`
/// (`etcd --version | head -1`) keep seeing the API version ferrite serves; the second names
/// ferrite and its own version.
pub fn version_text() -> String {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    format!(
        "etcd Version: {ETCD_SERVER_VERSION}\nferrite Version: {FERRITE_VERSION}\n\
         Git SHA: Not provided\nGo Version: not applicable (ferrite is written in Rust)\n\
         Go OS/Arch: {}/{arch}\n",
        std::env::consts::OS
    )
}

/// `--some-flag` → `ETCD_SOME_FLAG`.
pub fn flag_to_env(flag: &str) -> String {
    format!("ETCD_{}", flag.replace('-', "_").to_uppercase())
}

/// The flag names clap knows, and which of them are booleans.
struct FlagSpec {
    names: Vec<String>,
    bools: Vec<String>,
}

impl FlagSpec {
    fn of(command: &clap::Command) -> FlagSpec {
        let mut names = Vec::new();
        let mut bools = Vec::new();
        for arg in command.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            names.push(long.to_string());
            let is_bool = arg
                .get_value_names()
                .is_some_and(|v| v.len() == 1 && v[0].as_str() == "BOOL");
            if is_bool {
                bools.push(long.to_string());
            }
        }
        FlagSpec { names, bools }
    }
}

/// Go's `flag` syntax → `flag name → raw value` (last occurrence wins, as in Go).
fn normalize_args(
    args: &[String],
    spec: &FlagSpec,
) -> Result<BTreeMap<String, String>, ConfigError> {
    let mut given = BTreeMap::new();
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        i += 1;
        if arg == "--" {
            break;
        }
        let body = if let Some(rest) = arg.strip_prefix("--") {
            rest
        } else if let Some(rest) = arg.strip_prefix('-') {
            rest
        } else {
            return Err(ConfigError::Verify(format!("'{arg}' is not a valid flag")));
        };
        if body.is_empty() || body.starts_with('-') || body.starts_with('=') {
            return Err(ConfigError::Flag(format!("bad flag syntax: {arg}")));
        }
        let (name, inline_value) = match body.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (body, None),
        };
        if !spec.names.iter().any(|n| n == name) {
            if name == "h" || name == "help" {
                let help = Flags::command().render_help().to_string();
                return Err(ConfigError::Help(help));
            }
            return Err(ConfigError::Flag(format!(
                "flag provided but not defined: -{name}"
            )));
        }
        let value = if spec.bools.iter().any(|n| n == name) {
            match inline_value {
                None => "true".to_string(),
                Some(v) => match parse_go_bool(&v) {
                    Ok(b) => b.to_string(),
                    Err(_) => {
                        return Err(ConfigError::Flag(format!(
                            "invalid boolean value \"{v}\" for -{name}: parse error"
                        )))
                    }
                },
            }
        } else if let Some(v) = inline_value {
            v
        } else if i < args.len() {
            i += 1;
            args[i - 1].clone()
        } else {
            return Err(ConfigError::Flag(format!(
                "flag needs an argument: -{name}"
            )));
        };
        given.insert(name.to_string(), value);
    }
    if i < args.len() {
        // Go's flag stops at `--`; etcd then rejects any leftover argument.
        return Err(ConfigError::Verify(format!(
            "'{}' is not a valid flag",
            args[i]
        )));
    }
    Ok(given)
}

fn clap_error_to_etcd(
    err: &clap::Error,
    given: &BTreeMap<String, String>,
    env_flags: &[&String],
    env: &HashMap<&str, &str>,
) -> ConfigError {
    use clap::error::{ContextKind, ContextValue};
    let arg = match err.get(ContextKind::InvalidArg) {
        Some(ContextValue::String(s)) => s.clone(),
        _ => String::new(),
    };
    // "--snapshot-count <SNAPSHOT_COUNT>" or "--snapshot-count=<..>" → "snapshot-count".
    let name: String = arg
        .trim_start_matches('-')
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
        .collect();
    let reason = std::error::Error::source(err)
        .map(|s| s.to_string())
        .unwrap_or_else(|| "parse error".to_string());
    if env_flags.iter().any(|f| **f == name) && !given.contains_key(&name) {
        let key = flag_to_env(&name);
        let value = env.get(key.as_str()).copied().unwrap_or("");
        return ConfigError::Verify(format!("invalid value \"{value}\" for {key}: {reason}"));
    }
    if let Some(value) = given.get(&name) {
        return ConfigError::Flag(format!(
            "invalid value \"{value}\" for flag -{name}: {reason}"
        ));
    }
    ConfigError::Flag(err.to_string().trim_end().to_string())
}

/// Go's strconv.ParseBool.
pub fn parse_go_bool(s: &str) -> Result<bool, String> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        _ => Err("parse error".into()),
    }
}

/// Go's unsigned integer flag parsing (decimal, `0x` hex, `0` octal), "parse error" otherwise.
pub fn parse_u64(s: &str) -> Result<u64, String> {
    let (digits, radix) = if let Some(h) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        (h, 16)
    } else if s.len() > 1 && s.starts_with('0') {
        (&s[1..], 8)
    } else {
        (s, 10)
    };
    let digits = digits.replace('_', "");
    u64::from_str_radix(&digits, radix).map_err(|_| "parse error".to_string())
}

/// Go's time.ParseDuration: `300ms`, `1.5h`, `2h45m`, `0` (shared with the token options).
pub use ferrite_auth::tokens::go_duration as parse_go_duration;

/// One URL as etcd's `types.NewURLs` checks it.
pub fn parse_url(input: &str) -> Result<Url, String> {
    let s = input.trim();
    let Some((scheme, rest)) = s.split_once("://") else {
        return Err(format!(
            "URL scheme must be http, https, unix, or unixs: {s}"
        ));
    };
    if !matches!(scheme, "http" | "https" | "unix" | "unixs") {
        return Err(format!(
            "URL scheme must be http, https, unix, or unixs: {s}"
        ));
    }
    let (authority, path) = match rest.find(['/', '?', '#']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let authority = authority.rsplit('@').next().unwrap_or(authority);
    let not_host_port = || format!("URL address does not have the form \"host:port\": {s}");
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6.split_once(']').ok_or_else(not_host_port)?;
        let p = after.strip_prefix(':').ok_or_else(not_host_port)?;
        (h, p)
    } else {
        let (h, p) = authority.rsplit_once(':').ok_or_else(not_host_port)?;
        if h.contains(':') {
            return Err(not_host_port());
        }
        (h, p)
    };
    if path.starts_with('/') {
        return Err(format!("URL must not contain a path: {s}"));
    }
    let port: u16 = if port.is_empty() {
        0
    } else {
        port.parse()
            .map_err(|_| format!("parse \"{s}\": invalid port \":{port}\" after host"))?
    };
    Ok(Url {
        scheme: scheme.to_string(),
        host: host.to_string(),
        port,
    })
}

/// A comma-separated URL list (etcd's URLsValue); sorted like etcd's `types.NewURLs`.
pub fn parse_urls(s: &str) -> Result<Urls, String> {
    let mut urls = Vec::new();
    for part in s.split(',') {
        urls.push(parse_url(part)?);
    }
    urls.sort_by_key(|u| u.to_string());
    Ok(Urls(urls))
}

fn parse_urls_or_empty(s: &str) -> Result<Urls, String> {
    if s.trim().is_empty() {
        Ok(Urls::default())
    } else {
        parse_urls(s)
    }
}

fn parse_cluster_state(s: &str) -> Result<ClusterState, String> {
    match s {
        "new" => Ok(ClusterState::New),
        "existing" => Ok(ClusterState::Existing),
        _ => Err("invalid value".into()),
    }
}

/// `name1=url1,name1=url2,name2=url3` (etcd's `types.NewURLsMap`; pieces without `=` are
/// skipped, as etcd skips them).
pub fn parse_initial_cluster(s: &str) -> Result<BTreeMap<String, Urls>, String> {
    let mut map: BTreeMap<String, Urls> = BTreeMap::new();
    for piece in s.split(',') {
        let Some((name, url)) = piece.split_once('=') else {
            continue;
        };
        let url = parse_url(url)?;
        map.entry(name.trim().to_string()).or_default().0.push(url);
    }
    for urls in map.values_mut() {
        urls.0.sort_by_key(|u| u.to_string());
    }
    Ok(map)
}

fn check_local_member(
    name: &str,
    cluster: &BTreeMap<String, Urls>,
    advertised: &Urls,
) -> Result<(), String> {
    let Some(urls) = cluster.get(name) else {
        return Err(format!(
            "couldn't find local name {name:?} in the initial cluster configuration"
        ));
    };
    let in_cluster: Vec<String> = urls.0.iter().map(|u| u.to_string()).collect();
    let in_advertised: Vec<String> = advertised.0.iter().map(|u| u.to_string()).collect();
    let missing: Vec<String> = in_cluster
        .iter()
        .filter(|u| !in_advertised.contains(u))
        .map(|u| format!("{name}={u}"))
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "--initial-cluster has {} but missing from --initial-advertise-peer-urls={}",
            missing.join(","),
            in_advertised.join(",")
        ));
    }
    let missing: Vec<&String> = in_advertised
        .iter()
        .filter(|u| !in_cluster.contains(u))
        .collect();
    if !missing.is_empty() {
        let missing: Vec<&str> = missing.iter().map(|s| s.as_str()).collect();
        let own: Vec<String> = in_advertised
            .iter()
            .map(|u| format!("{name}={u}"))
            .collect();
        return Err(format!(
            "--initial-advertise-peer-urls has {} but missing from --initial-cluster={}",
            missing.join(","),
            own.join(",")
        ));
    }
    Ok(())
}

fn parse_auto_compaction(mode: &str, retention: &str) -> Result<AutoCompaction, String> {
    match mode {
        "periodic" | "" => {
            let d = if let Ok(hours) = retention.parse::<u64>() {
                Duration::from_secs(hours.saturating_mul(3600))
            } else {
                parse_go_duration(retention)
                    .map_err(|e| format!("invalid auto-compaction-retention {retention:?} ({e})"))?
            };
            Ok(if d.is_zero() {
                AutoCompaction::Disabled
            } else {
                AutoCompaction::Periodic(d)
            })
        }
        "revision" => {
            let n: u64 = retention.parse().map_err(|_| {
                format!("invalid auto-compaction-retention {retention:?} (a revision count)")
            })?;
            Ok(if n == 0 {
                AutoCompaction::Disabled
            } else {
                AutoCompaction::Revision(n)
            })
        }
        other => Err(format!("unknown auto-compaction-mode {other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    fn parse(a: &[&str]) -> Result<Config, ConfigError> {
        Config::parse(&args(a), &[])
    }

    fn parse_env(a: &[&str], env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::parse(&args(a), &env)
    }

    #[test]
    fn defaults_are_etcds() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.name, "default");
        assert_eq!(c.data_dir, PathBuf::from("default.etcd"));
        assert_eq!(c.wal_dir, None);
        assert_eq!(c.listen_client_urls.to_string(), "http://localhost:2379");
        assert_eq!(c.advertise_client_urls.to_string(), "http://localhost:2379");
        assert_eq!(c.initial_cluster_string(), "default=http://localhost:2380");
        assert_eq!(c.snapshot_count, 100_000);
        assert_eq!(c.max_request_bytes, 1_572_864);
        assert_eq!(c.max_txn_ops, 128);
        assert_eq!(c.heartbeat_interval_ms, 100);
        assert_eq!(c.election_timeout_ms, 1000);
        assert_eq!(c.election_ticks(), 10);
        assert_eq!(
            c.quota_backend_bytes_effective(),
            QUOTA_BACKEND_BYTES_DEFAULT
        );
        assert_eq!(c.auto_compaction, AutoCompaction::Disabled);
        assert_eq!(c.initial_cluster_state, ClusterState::New);
        assert_eq!(c.initial_cluster_token, "etcd-cluster");
        assert_eq!(c.logger, Logger::Zap);
        assert_eq!(c.log_level, LogLevel::Info);
        assert_eq!(c.log_outputs, vec![LogOutput::Stderr]);
        assert!(c.cores >= 1);
        assert_eq!(
            c.wal_dir_effective(),
            PathBuf::from("default.etcd/member/wal")
        );
    }

    #[test]
    fn go_flag_syntax_forms() {
        for form in [
            &["--name", "n1"][..],
            &["-name", "n1"],
            &["--name=n1"],
            &["-name=n1"],
            &["--name", "x", "--name", "n1"],
        ] {
            let c = parse(form).unwrap();
            assert_eq!(c.name, "n1", "{form:?}");
            assert_eq!(c.data_dir, PathBuf::from("n1.etcd"));
            assert_eq!(c.initial_cluster_string(), "n1=http://localhost:2380");
        }
        let c = parse(&[
            "--force-new-cluster",
            "--pre-vote=true",
            "-strict-reconfig-check=0",
        ])
        .unwrap();
        assert!(c.force_new_cluster && c.pre_vote && !c.strict_reconfig_check);
        // A value may start with a dash when it follows its flag.
        let e = parse(&["--snapshot-count", "-5"]).unwrap_err();
        assert_eq!(
            e,
            ConfigError::Flag("invalid value \"-5\" for flag -snapshot-count: parse error".into())
        );
        // `--` ends the flags; anything after it is rejected like etcd does.
        assert_eq!(
            parse(&["--", "x"]).unwrap_err(),
            ConfigError::Verify("'x' is not a valid flag".into())
        );
    }

    #[test]
    fn errors_mirror_etcd() {
        let e = parse(&["--bogus"]).unwrap_err();
        assert_eq!(
            e,
            ConfigError::Flag("flag provided but not defined: -bogus".into())
        );
        assert_eq!(e.exit_code(), 2);
        let e = parse(&["--snapshot-count=abc"]).unwrap_err();
        assert_eq!(
            e,
            ConfigError::Flag("invalid value \"abc\" for flag -snapshot-count: parse error".into())
        );
        let e = parse(&["--name"]).unwrap_err();
        assert_eq!(e, ConfigError::Flag("flag needs an argument: -name".into()));
        let e = parse(&["--client-cert-auth=maybe"]).unwrap_err();
        assert_eq!(
            e,
            ConfigError::Flag(
                "invalid boolean value \"maybe\" for -client-cert-auth: parse error".into()
            )
        );
        // A bool flag never consumes the next argument.
        let e = parse(&["--force-new-cluster", "false"]).unwrap_err();
        assert_eq!(e, ConfigError::Verify("'false' is not a valid flag".into()));
        assert_eq!(e.exit_code(), 1);
        let e = parse(&["--listen-client-urls", "foo"]).unwrap_err();
        assert_eq!(e, ConfigError::Flag("invalid value \"foo\" for flag -listen-client-urls: URL scheme must be http, https, unix, or unixs: foo".into()));
        let e = parse(&["--listen-client-urls", "http://127.0.0.1"]).unwrap_err();
        assert_eq!(e, ConfigError::Flag("invalid value \"http://127.0.0.1\" for flag -listen-client-urls: URL address does not have the form \"host:port\": http://127.0.0.1".into()));
        let e = parse(&["--listen-client-urls", "http://127.0.0.1:1/x"]).unwrap_err();
        assert_eq!(e, ConfigError::Flag("invalid value \"http://127.0.0.1:1/x\" for flag -listen-client-urls: URL must not contain a path: http://127.0.0.1:1/x".into()));
        let e = parse(&["--initial-cluster-state", "bogus"]).unwrap_err();
        assert_eq!(
            e,
            ConfigError::Flag(
                "invalid value \"bogus\" for flag -initial-cluster-state: invalid value".into()
            )
        );
        let e = parse(&["--auto-compaction-mode", "foo"]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "error verifying flags, unknown auto-compaction-mode \"foo\". See 'ferrite --help'."
        );
        let e = parse(&["--logger", "foo"]).unwrap_err();
        assert_eq!(
            e,
            ConfigError::Verify("unknown logger option \"foo\"".into())
        );
        let e = parse(&["--heartbeat-interval", "1000", "--election-timeout", "500"]).unwrap_err();
        assert_eq!(e, ConfigError::Verify("--election-timeout[500ms] should be at least as 5 times as --heartbeat-interval[1000ms]".into()));
        let e = parse(&["--listen-client-urls", "http://127.0.0.1:2379"]).unwrap_err();
        assert_eq!(
            e,
            ConfigError::Verify(
                "--advertise-client-urls is required when --listen-client-urls is set explicitly"
                    .into()
            )
        );
        let e = parse(&[
            "--listen-client-urls",
            "http://example.com:2379",
            "--advertise-client-urls",
            "http://x:1",
        ])
        .unwrap_err();
        assert!(
            matches!(e, ConfigError::Verify(ref m) if m.starts_with("expected IP in URL for binding")),
            "{e:?}"
        );
    }

    #[test]
    fn initial_cluster_must_name_this_member_with_its_peer_urls() {
        let e = parse(&[
            "--name",
            "x",
            "--initial-cluster",
            "y=http://localhost:2380",
        ])
        .unwrap_err();
        assert_eq!(
            e,
            ConfigError::Verify(
                "couldn't find local name \"x\" in the initial cluster configuration".into()
            )
        );
        let e = parse(&["--initial-cluster", "default=http://10.0.0.1:2380"]).unwrap_err();
        assert_eq!(e, ConfigError::Verify("--initial-cluster has default=http://10.0.0.1:2380 but missing from --initial-advertise-peer-urls=http://localhost:2380".into()));
        let e = parse(&["--initial-cluster", "default=foo"]).unwrap_err();
        assert_eq!(e, ConfigError::Verify("error setting up initial cluster: URL scheme must be http, https, unix, or unixs: foo".into()));
        let c = parse(&[
            "--name=a",
            "--initial-advertise-peer-urls=http://127.0.0.1:2380",
            "--listen-peer-urls=http://127.0.0.1:2380",
            "--initial-cluster=a=http://127.0.0.1:2380,b=http://127.0.0.2:2380,c=http://127.0.0.3:2380",
            "--initial-cluster-state=existing",
        ])
        .unwrap();
        assert_eq!(c.initial_cluster.len(), 3);
        assert_eq!(c.initial_cluster_state, ClusterState::Existing);
        let e = parse(&["--initial-cluster=default=http://localhost:2380,b=http://localhost:2380"])
            .unwrap_err();
        assert!(
            matches!(e, ConfigError::Verify(ref m) if m.contains("duplicate url")),
            "{e:?}"
        );
    }

    #[test]
    fn environment_like_etcd() {
        let c = parse_env(
            &[],
            &[
                ("ETCD_NAME", "envname"),
                ("ETCD_SNAPSHOT_COUNT", "5"),
                ("ETCD_FORCE_NEW_CLUSTER", "true"),
                ("ETCD_DATA_DIR", ""),
            ],
        )
        .unwrap();
        assert_eq!(c.name, "envname");
        assert_eq!(c.data_dir, PathBuf::from("envname.etcd"));
        assert_eq!(c.snapshot_count, 5);
        assert!(c.force_new_cluster);
        let e = parse_env(&[], &[("ETCD_SNAPSHOT_COUNT", "abc")]).unwrap_err();
        assert_eq!(
            e,
            ConfigError::Verify(
                "invalid value \"abc\" for ETCD_SNAPSHOT_COUNT: parse error".into()
            )
        );
        assert_eq!(e.exit_code(), 1);
        let e = parse_env(&["--name", "b"], &[("ETCD_NAME", "a")]).unwrap_err();
        assert_eq!(e, ConfigError::Verify("conflicting environment variable \"ETCD_NAME\" is shadowed by corresponding command-line flag (either unset environment variable or disable flag)".into()));
        let c = parse_env(&[], &[("ETCD_BOGUS", "1"), ("ETCDCTL_API", "3")]).unwrap();
        assert!(c.notices.iter().any(|n| n.level == LogLevel::Warn
            && n.msg == "unrecognized environment variable ETCD_BOGUS=1"));
        assert!(!c.notices.iter().any(|n| n.msg.contains("ETCDCTL_API")));
        // Setting listen-client-urls through the environment counts as explicit, as in etcd.
        let e =
            parse_env(&[], &[("ETCD_LISTEN_CLIENT_URLS", "http://127.0.0.1:2379")]).unwrap_err();
        assert!(
            matches!(e, ConfigError::Verify(ref m) if m.starts_with("--advertise-client-urls is required"))
        );
    }

    #[test]
    fn tls_flags_are_checked_like_etcd() {
        let ok = parse(&[
            "--cert-file",
            "a.pem",
            "--key-file",
            "b.pem",
            "--listen-client-urls=https://127.0.0.1:2379,http://127.0.0.1:2378",
            "--advertise-client-urls=https://127.0.0.1:2379",
        ])
        .unwrap();
        assert_eq!(ok.tls.cert_file, "a.pem");
        let e = parse(&[
            "--listen-client-urls=https://127.0.0.1:2379",
            "--advertise-client-urls=https://127.0.0.1:2379",
        ])
        .unwrap_err();
        assert!(
            matches!(e, ConfigError::Verify(ref m) if m.starts_with("TLS key/cert (--cert-file, --key-file) must be provided for client url https://127.0.0.1:2379")),
            "{e:?}"
        );
        let e = parse(&["--client-cert-auth"]).unwrap_err();
        assert!(
            matches!(e, ConfigError::Verify(ref m) if m.starts_with("--client-cert-auth needs")),
            "{e:?}"
        );
        assert!(parse(&["--auto-tls", "--peer-auto-tls"]).is_ok());
    }

    #[test]
    fn kubeadm_style_command_line_parses() {
        let c = parse(&[
            "--advertise-client-urls=http://10.0.0.5:2379",
            "--data-dir=/var/lib/etcd",
            "--experimental-initial-corrupt-check=true",
            "--experimental-watch-progress-notify-interval=5s",
            "--initial-advertise-peer-urls=http://10.0.0.5:2380",
            "--initial-cluster=node1=http://10.0.0.5:2380",
            "--listen-client-urls=http://127.0.0.1:2379,http://10.0.0.5:2379",
            "--listen-metrics-urls=http://127.0.0.1:2381",
            "--listen-peer-urls=http://10.0.0.5:2380",
            "--name=node1",
            "--snapshot-count=10000",
            "--auto-compaction-mode=revision",
            "--auto-compaction-retention=1000",
            "--quota-backend-bytes=8589934592",
            "--cores=1",
        ])
        .unwrap();
        assert_eq!(c.listen_client_urls.0.len(), 2);
        assert_eq!(c.listen_client_urls.0[0].host_port(), "10.0.0.5:2379");
        assert_eq!(
            c.experimental.watch_progress_notify_interval,
            Duration::from_secs(5)
        );
        assert!(c.experimental.initial_corrupt_check);
        assert_eq!(c.auto_compaction, AutoCompaction::Revision(1000));
        assert_eq!(c.cores, 1);
        assert_eq!(c.listen_metrics_urls.to_string(), "http://127.0.0.1:2381");
    }

    #[test]
    fn auto_compaction_forms() {
        assert_eq!(
            parse_auto_compaction("periodic", "1").unwrap(),
            AutoCompaction::Periodic(Duration::from_secs(3600))
        );
        assert_eq!(
            parse_auto_compaction("periodic", "5m").unwrap(),
            AutoCompaction::Periodic(Duration::from_secs(300))
        );
        assert_eq!(
            parse_auto_compaction("periodic", "0").unwrap(),
            AutoCompaction::Disabled
        );
        assert!(parse_auto_compaction("revision", "5m").is_err());
        assert!(parse_auto_compaction("periodic", "5x").is_err());
    }

    #[test]
    fn go_durations() {
        assert_eq!(
            parse_go_duration("1h30m").unwrap(),
            Duration::from_secs(5400)
        );
        assert_eq!(
            parse_go_duration("100ms").unwrap(),
            Duration::from_millis(100)
        );
        assert_eq!(
            parse_go_duration("1.5s").unwrap(),
            Duration::from_millis(1500)
        );
        assert_eq!(parse_go_duration("0").unwrap(), Duration::ZERO);
        assert!(parse_go_duration("5").is_err());
        assert!(parse_go_duration("-5s").is_err());
        assert!(parse_go_duration("").is_err());
    }

    #[test]
    fn urls_parse_like_etcd() {
        let u = parse_url("http://[::1]:2379").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 2379));
        assert_eq!(u.to_string(), "http://[::1]:2379");
        assert_eq!(parse_url(" http://a:1 ").unwrap().host_port(), "a:1");
        assert!(parse_url("http://a:1/").is_err());
        assert!(parse_url("ftp://a:1").is_err());
        assert!(parse_url("http://a:99999").is_err());
        let us = parse_urls("http://b:2,http://a:1").unwrap();
        assert_eq!(us.to_string(), "http://a:1,http://b:2");
    }

    #[test]
    fn help_and_version() {
        let ConfigError::Help(h) = parse(&["--help"]).unwrap_err() else {
            panic!()
        };
        assert!(h.contains("--listen-client-urls"));
        assert!(matches!(parse(&["-h"]).unwrap_err(), ConfigError::Help(_)));
        let ConfigError::Version(v) = parse(&["--version"]).unwrap_err() else {
            panic!()
        };
        assert!(v.starts_with("etcd Version: 3.4.23\nferrite Version: "));
    }

    #[test]
    fn refused_features() {
        for a in [
            &["--config-file=x.yaml"][..],
            &["--discovery=http://d:1/x"],
            &["--proxy=on"],
            &["--enable-v2"],
        ] {
            assert!(
                matches!(parse(a).unwrap_err(), ConfigError::Verify(_)),
                "{a:?}"
            );
        }
        let c = parse(&["--enable-pprof"]).unwrap();
        assert!(c.notices.iter().any(|n| n.msg.contains("--enable-pprof")));
    }
}
