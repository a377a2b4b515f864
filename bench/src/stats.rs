//! Latency histograms, error counts and the machine-readable report.

use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// Longest latency a histogram can hold; slower operations are clamped to it and counted.
pub const LATENCY_NS_MAX: u64 = 120_000_000_000;
/// Error messages are truncated to this many bytes before being used as a counter key.
pub const ERROR_MESSAGE_BYTES_MAX: usize = 160;

/// Per operation kind: successes in a histogram, failures counted by message.
#[derive(Clone)]
pub struct KindStats {
    pub hist: Histogram<u64>,
    pub errors: BTreeMap<String, u64>,
}

impl KindStats {
    fn new() -> Self {
        KindStats {
            hist: Histogram::new_with_bounds(1, LATENCY_NS_MAX, 3).expect("valid histogram bounds"),
            errors: BTreeMap::new(),
        }
    }
}

/// What one task measured. Merged at the end of a run.
#[derive(Clone, Default)]
pub struct Recorder {
    pub kinds: BTreeMap<&'static str, KindStats>,
    pub counters: BTreeMap<&'static str, u64>,
    /// Correctness violations (watch order, lost events, ...). Any entry fails the run.
    pub violations: Vec<String>,
}

impl Recorder {
    pub fn ok(&mut self, kind: &'static str, took: Duration) {
        let ns = (took.as_nanos() as u64).clamp(1, LATENCY_NS_MAX);
        self.kinds
            .entry(kind)
            .or_insert_with(KindStats::new)
            .hist
            .record(ns)
            .expect("clamped into the histogram's bounds");
    }

    pub fn err(&mut self, kind: &'static str, message: &str) {
        let mut m = message.to_string();
        if m.len() > ERROR_MESSAGE_BYTES_MAX {
            let mut cut = ERROR_MESSAGE_BYTES_MAX;
            while !m.is_char_boundary(cut) {
                cut -= 1;
            }
            m.truncate(cut);
        }
        *self
            .kinds
            .entry(kind)
            .or_insert_with(KindStats::new)
            .errors
            .entry(m)
            .or_insert(0) += 1;
    }

    pub fn count(&mut self, name: &'static str, n: u64) {
        *self.counters.entry(name).or_insert(0) += n;
    }

    pub fn violation(&mut self, what: String) {
        const VIOLATIONS_KEPT_MAX: usize = 100;
        if self.violations.len() < VIOLATIONS_KEPT_MAX {
            self.violations.push(what);
        }
        self.count("violations", 1);
    }

    pub fn merge(&mut self, other: Recorder) {
        for (k, s) in other.kinds {
            let mine = self.kinds.entry(k).or_insert_with(KindStats::new);
            mine.hist.add(&s.hist).expect("same bounds");
            for (m, n) in s.errors {
                *mine.errors.entry(m).or_insert(0) += n;
            }
        }
        for (k, n) in other.counters {
            *self.counters.entry(k).or_insert(0) += n;
        }
        for v in other.violations {
            self.violation(v);
        }
    }
}

/// Short, stable text for an etcd-client error: the gRPC code and message when there is one.
pub fn error_text(e: &etcd_client::Error) -> String {
    match e {
        etcd_client::Error::GRpcStatus(s) => format!("{:?}: {}", s.code(), s.message()),
        other => other.to_string(),
    }
}

#[derive(Serialize, Clone, Debug)]
pub struct KindReport {
    /// Successful operations.
    pub ok: u64,
    /// Failed operations (never counted in `ok` or in the latencies).
    pub errors: u64,
    pub error_kinds: BTreeMap<String, u64>,
    pub ops_per_sec: f64,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

#[derive(Serialize, Clone, Debug)]
pub struct Report {
    pub workload: String,
    pub endpoints: Vec<String>,
    pub clients: usize,
    pub connections: usize,
    pub key_size: usize,
    pub value_size: usize,
    pub key_space: u64,
    /// Wall-clock seconds of the measured phase (preparation excluded).
    pub elapsed_secs: f64,
    /// The workload's primary operation kind, whose numbers the summaries quote.
    pub primary: String,
    pub ops: BTreeMap<String, KindReport>,
    pub counters: BTreeMap<String, u64>,
    pub violations: Vec<String>,
    pub total_ok: u64,
    pub total_errors: u64,
    /// Server CPU (user + system) spent during the measured phase, summed over --server-pid.
    pub server_cpu_secs: Option<f64>,
    /// Server CPU microseconds per successful primary operation.
    pub server_cpu_us_per_op: Option<f64>,
    /// Resident set size of each --server-pid at the end, bytes.
    pub server_rss_bytes: Vec<u64>,
    /// The client used in the measured phase ("lean" or "etcd-client").
    pub client: String,
    /// CPU (user + system) of this load generator process during the measured phase.
    pub client_cpu_secs: Option<f64>,
    /// Load generator CPU microseconds per successful primary operation.
    pub client_cpu_us_per_op: Option<f64>,
}

impl Report {
    pub fn primary_stats(&self) -> Option<&KindReport> {
        self.ops.get(&self.primary)
    }
}

pub fn kind_report(s: &KindStats, elapsed: Duration) -> KindReport {
    let us = |ns: u64| ns as f64 / 1000.0;
    let h = &s.hist;
    let errors: u64 = s.errors.values().sum();
    let ok = h.len();
    KindReport {
        ok,
        errors,
        error_kinds: s.errors.clone(),
        ops_per_sec: ok as f64 / elapsed.as_secs_f64().max(1e-9),
        mean_us: if ok == 0 { 0.0 } else { h.mean() / 1000.0 },
        p50_us: us(h.value_at_quantile(0.50)),
        p90_us: us(h.value_at_quantile(0.90)),
        p99_us: us(h.value_at_quantile(0.99)),
        p999_us: us(h.value_at_quantile(0.999)),
        max_us: us(h.max()),
    }
}

/// The human-readable table of a report.
pub fn render(r: &Report) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "workload {} on {:?}: {} clients over {} connections ({} client), {:.1} s measured\n",
        r.workload, r.endpoints, r.clients, r.connections, r.client, r.elapsed_secs
    ));
    out.push_str(&format!(
        "{:<16} {:>10} {:>8} {:>11} {:>9} {:>9} {:>9} {:>9} {:>9}\n",
        "op", "ok", "errors", "ops/s", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms"
    ));
    for (k, s) in &r.ops {
        out.push_str(&format!(
            "{:<16} {:>10} {:>8} {:>11.0} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3}\n",
            k,
            s.ok,
            s.errors,
            s.ops_per_sec,
            s.p50_us / 1000.0,
            s.p90_us / 1000.0,
            s.p99_us / 1000.0,
            s.p999_us / 1000.0,
            s.max_us / 1000.0
        ));
        for (m, n) in &s.error_kinds {
            out.push_str(&format!("    error x{n}: {m}\n"));
        }
    }
    if !r.counters.is_empty() {
        let c: Vec<String> = r.counters.iter().map(|(k, v)| format!("{k}={v}")).collect();
        out.push_str(&format!("counters: {}\n", c.join(" ")));
    }
    if let Some(cpu) = r.server_cpu_secs {
        out.push_str(&format!(
            "server cpu: {:.2} s, {:.1} us per {} op\n",
            cpu,
            r.server_cpu_us_per_op.unwrap_or(0.0),
            if r.workload == "watch-fanout" {
                "put"
            } else {
                &r.primary
            }
        ));
    }
    if let Some(cpu) = r.client_cpu_secs {
        out.push_str(&format!(
            "client cpu: {:.2} s, {:.1} us per {} op\n",
            cpu,
            r.client_cpu_us_per_op.unwrap_or(0.0),
            r.primary
        ));
    }
    if !r.server_rss_bytes.is_empty() {
        let mib: Vec<String> = r
            .server_rss_bytes
            .iter()
            .map(|b| format!("{:.1} MiB", *b as f64 / 1048576.0))
            .collect();
        out.push_str(&format!("server rss: {}\n", mib.join(", ")));
    }
    for v in &r.violations {
        out.push_str(&format!("VIOLATION: {v}\n"));
    }
    out
}
