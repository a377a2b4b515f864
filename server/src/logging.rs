//! Logs in etcd's shapes: zap JSON lines (the default) or capnslog text lines.
//!
//! What it is: a `tracing` subscriber layer that writes every event as one line, plus helpers
//! for the startup messages etcd prints (scripts and operators grep for them:
//! "starting an etcd server", "published local member to cluster through raft",
//! "enabled capabilities for version", "ready to serve client requests").
//!
//! zap (`--logger=zap`), one JSON object per line, keys in this order:
//! `{"level":"info","ts":"2026-11-22T01:42:01.570Z","caller":"server/raft.rs:12","msg":"...",<fields>}`
//! — `ts` is UTC with milliseconds, `caller` is `crate-dir/file.rs:line` without `src/`, fields
//! keep their `tracing` names (use etcd's hyphenated names: `"local-member-id" = ..`), numbers
//! and booleans stay JSON numbers and booleans, everything else is a string.
//!
//! capnslog (`--logger=capnslog`): `2026-11-22 01:42:37.629261 I | server: msg, key=value`.
//!
//! Outputs (`--log-outputs`): stderr (`default`), stdout, or files (appended). A write error on
//! an output is ignored: logging never stops the server.
//!
//! Invariants: one event is one `write_all` of one complete line per output, under one lock, so
//! lines from different cores never interleave.
//!
//! Non-goals: journald, log rotation, per-package levels.

use crate::config::{Config, LogLevel, LogOutput, Logger, Notice, Url};
use serde_json::{Map, Value};
use std::fmt::Write as _;
use std::io::Write;
use std::sync::{Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

/// The cluster version ferrite announces (etcd's "3.4" capability level).
pub const CLUSTER_VERSION_MAJOR_MINOR: &str = "3.4";

struct Sink {
    logger: Logger,
    level: LogLevel,
    outputs: Mutex<Vec<Box<dyn Write + Send>>>,
}

static SINK: OnceLock<Sink> = OnceLock::new();

/// Installs the global logger for `config` (zap or capnslog, level, outputs) and logs the
/// notices collected while parsing flags. Errors: an output file that cannot be opened, or a
/// global subscriber already installed.
pub fn init(config: &Config) -> Result<(), String> {
    let mut outputs: Vec<Box<dyn Write + Send>> = Vec::new();
    for out in &config.log_outputs {
        match out {
            LogOutput::Stderr => outputs.push(Box::new(std::io::stderr())),
            LogOutput::Stdout => outputs.push(Box::new(std::io::stdout())),
            LogOutput::File(path) => {
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| format!("cannot open log output {}: {e}", path.display()))?;
                outputs.push(Box::new(file));
            }
        }
    }
    let sink = Sink {
        logger: config.logger,
        level: config.log_level,
        outputs: Mutex::new(outputs),
    };
    SINK.set(sink)
        .map_err(|_| "logging already initialised".to_string())?;
    let filter =
        tracing_subscriber::filter::LevelFilter::from_level(to_tracing_level(config.log_level));
    let subscriber = tracing_subscriber::registry().with(EtcdLayer).with(filter);
    tracing::subscriber::set_global_default(subscriber)
        .map_err(|e| format!("cannot install the logger: {e}"))?;
    for Notice { level, msg } in &config.notices {
        emit(*level, "server/config.rs:0", msg, Map::new());
    }
    Ok(())
}

fn to_tracing_level(level: LogLevel) -> Level {
    match level {
        LogLevel::Debug => Level::DEBUG,
        LogLevel::Info => Level::INFO,
        LogLevel::Warn => Level::WARN,
        LogLevel::Error | LogLevel::Panic | LogLevel::Fatal => Level::ERROR,
    }
}

fn from_tracing_level(level: &Level) -> LogLevel {
    match *level {
        Level::TRACE | Level::DEBUG => LogLevel::Debug,
        Level::INFO => LogLevel::Info,
        Level::WARN => LogLevel::Warn,
        Level::ERROR => LogLevel::Error,
    }
}

/// Before [`init`] (flag errors): one zap-shaped `fatal` line on stderr, as etcd's
/// "failed to verify flags".
pub fn early_fatal(error: &str) {
    fatal("failed to verify flags", error);
}

/// A `fatal` record (`msg` with an `error` field), written even before [`init`]; the caller
/// exits afterwards, as zap's Fatal does.
#[track_caller]
pub fn fatal(msg: &str, error: &str) {
    let mut fields = Map::new();
    fields.insert("error".into(), Value::String(error.to_string()));
    emit(LogLevel::Fatal, &here(), msg, fields);
}

/// `file:line` of the code that called a `#[track_caller]` helper.
#[track_caller]
fn here() -> String {
    let loc = std::panic::Location::caller();
    short_caller(loc.file(), Some(loc.line()))
}

/// Writes one record to the configured outputs (stderr in zap form before [`init`]).
pub fn emit(level: LogLevel, caller: &str, msg: &str, fields: Map<String, Value>) {
    let Some(sink) = SINK.get() else {
        let line = format_zap(level, &now_zap_ts(), caller, msg, &fields);
        let _ = std::io::stderr().write_all(line.as_bytes());
        return;
    };
    if level < sink.level {
        return;
    }
    let line = match sink.logger {
        Logger::Zap => format_zap(level, &now_zap_ts(), caller, msg, &fields),
        Logger::Capnslog => format_capnslog(level, &now_capnslog_ts(), caller, msg, &fields),
    };
    let mut outputs = sink.outputs.lock().unwrap_or_else(|p| p.into_inner());
    for out in outputs.iter_mut() {
        let _ = out.write_all(line.as_bytes());
        let _ = out.flush();
    }
}

/// One zap JSON line (with its newline).
pub fn format_zap(
    level: LogLevel,
    ts: &str,
    caller: &str,
    msg: &str,
    fields: &Map<String, Value>,
) -> String {
    let mut line = String::with_capacity(128);
    line.push_str("{\"level\":");
    line.push_str(&Value::String(level.as_str().into()).to_string());
    line.push_str(",\"ts\":");
    line.push_str(&Value::String(ts.into()).to_string());
    line.push_str(",\"caller\":");
    line.push_str(&Value::String(caller.into()).to_string());
    line.push_str(",\"msg\":");
    line.push_str(&Value::String(msg.into()).to_string());
    for (k, v) in fields {
        line.push(',');
        line.push_str(&Value::String(k.clone()).to_string());
        line.push(':');
        line.push_str(&v.to_string());
    }
    line.push_str("}\n");
    line
}

/// One capnslog text line (with its newline).
pub fn format_capnslog(
    level: LogLevel,
    ts: &str,
    caller: &str,
    msg: &str,
    fields: &Map<String, Value>,
) -> String {
    let letter = match level {
        LogLevel::Debug => 'D',
        LogLevel::Info => 'I',
        LogLevel::Warn => 'W',
        LogLevel::Error => 'E',
        LogLevel::Panic | LogLevel::Fatal => 'C',
    };
    // capnslog names the package: the file stem of the caller.
    let package = caller
        .rsplit('/')
        .next()
        .and_then(|f| f.split(['.', ':']).next())
        .unwrap_or("ferrite");
    let mut line = format!("{ts} {letter} | {package}: {msg}");
    for (k, v) in fields {
        match v {
            Value::String(s) => {
                let _ = write!(line, ", {k}={s}");
            }
            other => {
                let _ = write!(line, ", {k}={other}");
            }
        }
    }
    line.push('\n');
    line
}

/// `2026-11-22T01:42:01.570Z`
pub fn now_zap_ts() -> String {
    let (y, mo, d, h, mi, s, micros) = civil_now();
    format!(
        "{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{:03}Z",
        micros / 1000
    )
}

/// `2026-11-22 01:42:37.629261`
pub fn now_capnslog_ts() -> String {
    let (y, mo, d, h, mi, s, micros) = civil_now();
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}.{micros:06}")
}

fn civil_now() -> (i64, u32, u32, u32, u32, u32, u32) {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    civil_from_unix(since.as_secs() as i64, since.subsec_micros())
}

/// Unix seconds → UTC calendar fields (Howard Hinnant's days-from-civil inverse).
fn civil_from_unix(secs: i64, micros: u32) -> (i64, u32, u32, u32, u32, u32, u32) {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (
        y,
        m,
        d,
        (rem / 3600) as u32,
        ((rem % 3600) / 60) as u32,
        (rem % 60) as u32,
        micros,
    )
}

/// `server/src/raft.rs` → `server/raft.rs` (etcd's `pkg/file.go` form).
fn short_caller(file: &str, line: Option<u32>) -> String {
    let file = file.replacen("/src/", "/", 1);
    match line {
        Some(l) => format!("{file}:{l}"),
        None => file,
    }
}

/// The `tracing` layer writing etcd-shaped lines.
struct EtcdLayer;

#[derive(Default)]
struct JsonVisitor {
    msg: String,
    fields: Map<String, Value>,
}

impl Visit for JsonVisitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.msg = value.to_string();
        } else {
            self.fields
                .insert(field.name().into(), Value::String(value.into()));
        }
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.fields.insert(field.name().into(), Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.fields.insert(field.name().into(), Value::from(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.fields.insert(field.name().into(), Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.fields.insert(field.name().into(), Value::from(value));
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.fields
            .insert(field.name().into(), Value::String(value.to_string()));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let text = format!("{value:?}");
        if field.name() == "message" {
            self.msg = text;
        } else {
            self.fields.insert(field.name().into(), Value::String(text));
        }
    }
}

impl<S: Subscriber> Layer<S> for EtcdLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let meta = event.metadata();
        let mut visitor = JsonVisitor::default();
        event.record(&mut visitor);
        let caller = match meta.file() {
            Some(file) => short_caller(file, meta.line()),
            None => meta.target().to_string(),
        };
        emit(
            from_tracing_level(meta.level()),
            &caller,
            &visitor.msg,
            visitor.fields,
        );
    }
}

/// Go's name for this architecture (`amd64`, `arm64`), as etcd reports it.
pub fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

fn urls_value(urls: &[Url]) -> Value {
    Value::Array(urls.iter().map(|u| Value::String(u.to_string())).collect())
}

fn id_hex(id: u64) -> Value {
    Value::String(format!("{id:x}"))
}

macro_rules! fields {
    ($($k:expr => $v:expr),* $(,)?) => {{
        let mut m = Map::new();
        $( m.insert(String::from($k), Value::from($v)); )*
        m
    }};
}

/// "starting an etcd server", with the configuration fields etcd prints.
#[track_caller]
pub fn log_starting(config: &Config, member_initialized: bool) {
    let caller = here();
    let mut f = fields! {
        "etcd-version" => crate::config::ETCD_SERVER_VERSION,
        "ferrite-version" => crate::config::FERRITE_VERSION,
        "go-os" => std::env::consts::OS,
        "go-arch" => go_arch(),
        "max-cpu-set" => config.cores as u64,
        "max-cpu-available" => std::thread::available_parallelism().map_or(1, |n| n.get()) as u64,
        "member-initialized" => member_initialized,
        "name" => config.name.clone(),
        "data-dir" => config.data_dir.display().to_string(),
        "wal-dir" => config.wal_dir.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
        "member-dir" => config.member_dir().display().to_string(),
        "force-new-cluster" => config.force_new_cluster,
        "heartbeat-interval" => format!("{}ms", config.heartbeat_interval_ms),
        "election-timeout" => format!("{}ms", config.election_timeout_ms),
        "initial-election-tick-advance" => config.initial_election_tick_advance,
        "snapshot-count" => config.snapshot_count,
    };
    f.insert(
        "initial-advertise-peer-urls".into(),
        urls_value(&config.initial_advertise_peer_urls.0),
    );
    f.insert(
        "listen-peer-urls".into(),
        urls_value(&config.listen_peer_urls.0),
    );
    f.insert(
        "advertise-client-urls".into(),
        urls_value(&config.advertise_client_urls.0),
    );
    f.insert(
        "listen-client-urls".into(),
        urls_value(&config.listen_client_urls.0),
    );
    f.insert(
        "listen-metrics-urls".into(),
        urls_value(&config.listen_metrics_urls.0),
    );
    f.insert(
        "initial-cluster".into(),
        Value::String(config.initial_cluster_string()),
    );
    f.insert(
        "initial-cluster-state".into(),
        Value::String(config.initial_cluster_state.to_string()),
    );
    f.insert(
        "initial-cluster-token".into(),
        Value::String(config.initial_cluster_token.clone()),
    );
    f.insert(
        "quota-backend-bytes".into(),
        Value::from(config.quota_backend_bytes_effective()),
    );
    f.insert(
        "max-request-bytes".into(),
        Value::from(config.max_request_bytes),
    );
    f.insert(
        "max-concurrent-streams".into(),
        Value::from(config.max_concurrent_streams),
    );
    f.insert("pre-vote".into(), Value::from(config.pre_vote));
    let (mode, retention) = match config.auto_compaction {
        crate::config::AutoCompaction::Disabled => ("periodic", "0s".to_string()),
        crate::config::AutoCompaction::Periodic(d) => ("periodic", format!("{}s", d.as_secs())),
        crate::config::AutoCompaction::Revision(n) => ("revision", n.to_string()),
    };
    f.insert("auto-compaction-mode".into(), Value::from(mode));
    f.insert("auto-compaction-retention".into(), Value::from(retention));
    f.insert("cores".into(), Value::from(config.cores as u64));
    emit(LogLevel::Info, &caller, "starting an etcd server", f);
}

/// "starting local member" / "restarting local member".
#[track_caller]
pub fn log_local_member(restarting: bool, member_id: u64, cluster_id: u64, commit_index: u64) {
    let caller = here();
    let msg = if restarting {
        "restarting local member"
    } else {
        "starting local member"
    };
    let mut f =
        fields! {"local-member-id" => id_hex(member_id), "cluster-id" => id_hex(cluster_id)};
    if restarting {
        f.insert("commit-index".into(), Value::from(commit_index));
    }
    emit(LogLevel::Info, &caller, msg, f);
}

/// "published local member to cluster through raft".
#[track_caller]
pub fn log_published_local_member(
    member_id: u64,
    cluster_id: u64,
    name: &str,
    client_urls: &[Url],
) {
    let caller = here();
    let urls: Vec<String> = client_urls.iter().map(|u| u.to_string()).collect();
    let f = fields! {
        "local-member-id" => id_hex(member_id),
        "local-member-attributes" => format!("{{Name:{name} ClientURLs:[{}]}}", urls.join(" ")),
        "request-path" => format!("/0/members/{member_id:x}/attributes"),
        "cluster-id" => id_hex(cluster_id),
        "publish-timeout" => "7s",
    };
    emit(
        LogLevel::Info,
        &caller,
        "published local member to cluster through raft",
        f,
    );
}

/// The cluster-version messages etcd prints once the first leader is elected:
/// "set initial cluster version", "enabled capabilities for version", "cluster version is updated".
#[track_caller]
pub fn log_cluster_version(member_id: u64, cluster_id: u64) {
    let caller = here();
    let v = CLUSTER_VERSION_MAJOR_MINOR;
    emit(
        LogLevel::Info,
        &caller,
        "set initial cluster version",
        fields! {"cluster-id" => id_hex(cluster_id), "local-member-id" => id_hex(member_id), "cluster-version" => v},
    );
    emit(
        LogLevel::Info,
        &caller,
        "enabled capabilities for version",
        fields! {"cluster-version" => v},
    );
    emit(
        LogLevel::Info,
        &caller,
        "cluster version is updated",
        fields! {"cluster-version" => v},
    );
}

/// "ready to serve client requests" and etcd's plaintext warning for one client listener.
#[track_caller]
pub fn log_ready_to_serve(address: &str) {
    let caller = here();
    emit(
        LogLevel::Info,
        &caller,
        "ready to serve client requests",
        fields! {"address" => address},
    );
    emit(
        LogLevel::Info,
        &caller,
        "serving client traffic insecurely; this is strongly discouraged!",
        fields! {"address" => address},
    );
}

/// "serving metrics" for a `--listen-metrics-urls` listener.
#[track_caller]
pub fn log_serving_metrics(address: &str) {
    let caller = here();
    emit(
        LogLevel::Info,
        &caller,
        "serving metrics",
        fields! {"address" => address},
    );
}

/// Raft role changes, in etcd-raft's words ("became leader at term 2", ...).
pub fn log_raft(member_id: u64, text: &str) {
    emit(
        LogLevel::Info,
        "raft/raft.rs:0",
        &format!("{member_id:x} {text}"),
        Map::new(),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zap_line_shape() {
        let mut f = Map::new();
        f.insert("address".into(), Value::from("127.0.0.1:2379"));
        f.insert("n".into(), Value::from(3));
        let line = format_zap(
            LogLevel::Info,
            "2026-11-22T01:42:01.570Z",
            "server/x.rs:1",
            "ready to serve client requests",
            &f,
        );
        assert_eq!(
            line,
            "{\"level\":\"info\",\"ts\":\"2026-11-22T01:42:01.570Z\",\"caller\":\"server/x.rs:1\",\"msg\":\"ready to serve client requests\",\"address\":\"127.0.0.1:2379\",\"n\":3}\n"
        );
        let parsed: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(parsed["msg"], "ready to serve client requests");
    }

    #[test]
    fn capnslog_line_shape() {
        let mut f = Map::new();
        f.insert("address".into(), Value::from("127.0.0.1:2379"));
        let line = format_capnslog(
            LogLevel::Warn,
            "2026-11-22 01:42:37.629261",
            "server/etcdmain.rs:3",
            "hello",
            &f,
        );
        assert_eq!(
            line,
            "2026-11-22 01:42:37.629261 W | etcdmain: hello, address=127.0.0.1:2379\n"
        );
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_unix(0, 0), (1970, 1, 1, 0, 0, 0, 0));
        // 2026-11-22T01:42:01Z
        assert_eq!(
            civil_from_unix(1_795_311_721, 5),
            (2026, 11, 22, 1, 42, 1, 5)
        );
        // Leap day.
        assert_eq!(civil_from_unix(951_782_400, 0), (2000, 2, 29, 0, 0, 0, 0));
        let ts = now_zap_ts();
        assert_eq!(ts.len(), "2026-11-22T01:42:01.570Z".len());
        assert!(ts.ends_with('Z'));
    }

    #[test]
    fn caller_is_shortened() {
        assert_eq!(
            short_caller("server/src/raft.rs", Some(12)),
            "server/raft.rs:12"
        );
    }
}
