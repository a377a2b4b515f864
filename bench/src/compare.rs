//! The side-by-side runner: the same workloads against etcd and ferrite, alternating A/B/A/B with a
//! fresh cluster for every run, medians per workload, the ferrite/etcd ratio, RSS and data size.

use crate::cluster::{Cluster, Echo, Kind, Spec};
use crate::floor::{self, FloorSample};
use crate::stats::Report;
use crate::workload::{self, ClientKind, Config, Workload};
use std::path::PathBuf;
use std::time::Duration;

/// One named workload setting of the comparison.
#[derive(Clone, Debug)]
pub struct Preset {
    pub name: &'static str,
    pub config: Config,
}

/// The comparison's workloads, shaped after the server's targets (issue 5).
pub fn presets(duration: Duration) -> Vec<Preset> {
    let base = Config {
        duration_max: duration,
        progress_every: None,
        ..Config::default()
    };
    let with = |name, workload, clients: usize, f: &dyn Fn(&mut Config)| {
        let mut c = Config {
            workload,
            clients,
            connections: clients.clamp(1, 10),
            ..base.clone()
        };
        f(&mut c);
        Preset { name, config: c }
    };
    vec![
        with("put-1-client", Workload::Put, 1, &|_| {}),
        with("put-100-clients", Workload::Put, 100, &|_| {}),
        with("range-lin-100", Workload::RangeLinearizable, 100, &|_| {}),
        with("range-ser-100", Workload::RangeSerializable, 100, &|_| {}),
        with("txn-cas-100", Workload::TxnCas, 100, &|_| {}),
        with("list-10", Workload::List, 10, &|c| c.key_space = 5000),
        with("watch-100-watchers", Workload::WatchFanout, 10, &|c| {
            c.watchers = 100
        }),
        with(
            "lease-keepalive-100",
            Workload::LeaseKeepalive,
            100,
            &|_| {},
        ),
        with("mixed-k8s-100", Workload::Mixed, 100, &|c| {
            c.key_space = 5000
        }),
    ]
}

pub struct CompareConfig {
    pub etcd: PathBuf,
    pub ferrite: Option<PathBuf>,
    pub node_counts: Vec<usize>,
    pub rounds: usize,
    pub presets: Vec<Preset>,
    pub work_dir: PathBuf,
    pub pidfile: Option<PathBuf>,
    /// Markdown file to append the results to (under "## Server vs etcd (bench/)").
    pub append_to: Option<PathBuf>,
    /// Where the JSON of every run is written (one file).
    pub json_out: Option<PathBuf>,
    pub command_line: String,
    /// The `grpc-echo` binary: the put presets also run against it, every round (baseline of
    /// the targets). None: no echo rows.
    pub echo: Option<PathBuf>,
    /// fsync-floor probe operations per round of `put-1-client` (0: no probe).
    pub floor_iterations: usize,
}

/// Presets that also run against the echo server (it answers Put; it stores nothing).
pub const ECHO_PRESETS: [&str; 2] = ["put-1-client", "put-100-clients"];

#[derive(Default, Clone, serde::Serialize)]
pub struct Sample {
    pub ops_per_sec: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub errors: u64,
    pub violations: usize,
    pub rss_bytes: u64,
    pub data_bytes: u64,
    pub cpu_us_per_op: Option<f64>,
    /// The load generator's own CPU per operation (this process).
    pub client_cpu_us_per_op: Option<f64>,
}

#[derive(serde::Serialize)]
pub struct Row {
    pub nodes: usize,
    pub preset: String,
    pub etcd: Vec<Sample>,
    pub ferrite: Vec<Sample>,
    pub ferrite_skipped: Option<String>,
    /// The same preset against `grpc-echo`, per round (put presets only).
    pub echo: Vec<Sample>,
    /// The fsync floor probed in each round (`put-1-client` only).
    pub floor: Vec<FloorSample>,
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

async fn echo_run(
    binary: &std::path::Path,
    pidfile: Option<&std::path::Path>,
    preset: &Preset,
) -> Result<(Sample, Report), String> {
    let echo = Echo::start(binary, pidfile).await?;
    let mut cfg = preset.config.clone();
    cfg.endpoints = vec![echo.endpoint.clone()];
    cfg.server_pids = vec![echo.pid()];
    cfg.no_prepare = true;
    let report = workload::run(cfg).await?;
    let p = report.primary_stats().cloned();
    let s = Sample {
        ops_per_sec: p.as_ref().map(|p| p.ops_per_sec).unwrap_or(0.0),
        p50_us: p.as_ref().map(|p| p.p50_us).unwrap_or(0.0),
        p99_us: p.as_ref().map(|p| p.p99_us).unwrap_or(0.0),
        errors: report.total_errors,
        violations: report.violations.len(),
        rss_bytes: crate::procfs::rss_bytes(echo.pid()).unwrap_or(0),
        data_bytes: 0,
        cpu_us_per_op: report.server_cpu_us_per_op,
        client_cpu_us_per_op: report.client_cpu_us_per_op,
    };
    drop(echo);
    Ok((s, report))
}

async fn probe_floor(cc: &CompareConfig, round: usize, row: &mut Row) {
    let (dir, n) = (cc.work_dir.clone(), cc.floor_iterations);
    match tokio::task::spawn_blocking(move || floor::probe(&dir, n))
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r)
    {
        Ok(f) => {
            eprintln!(
                "== fsync floor, round {}: p50 {:.0} µs p99 {:.0} µs",
                round + 1,
                f.p50_us,
                f.p99_us
            );
            row.floor.push(f);
        }
        Err(e) => eprintln!("   fsync floor probe failed: {e}"),
    }
}

/// Prints one run's summary line and keeps its sample (for the row) and its whole report
/// (for the JSON output), tagged with the server and preset.
fn record(
    samples: &mut Vec<Sample>,
    reports: &mut Vec<serde_json::Value>,
    server: &str,
    preset: &Preset,
    s: Sample,
    rep: Report,
    nodes: usize,
) {
    eprintln!(
        "   {:.0} ops/s p50 {:.3} ms, {} errors",
        s.ops_per_sec,
        s.p50_us / 1000.0,
        s.errors
    );
    samples.push(s);
    reports.push(
        serde_json::json!({"nodes": nodes, "server": server, "preset": preset.name, "report": rep}),
    );
}

async fn one_run(spec: &Spec, preset: &Preset) -> Result<(Sample, Report), String> {
    let cluster = Cluster::start(spec).await?;
    let mut cfg = preset.config.clone();
    cfg.endpoints = cluster.endpoints.clone();
    cfg.server_pids = cluster.pids();
    let report = workload::run(cfg).await?;
    let p = report.primary_stats().cloned();
    let s = Sample {
        ops_per_sec: p.as_ref().map(|p| p.ops_per_sec).unwrap_or(0.0),
        p50_us: p.as_ref().map(|p| p.p50_us).unwrap_or(0.0),
        p99_us: p.as_ref().map(|p| p.p99_us).unwrap_or(0.0),
        errors: report.total_errors,
        violations: report.violations.len(),
        rss_bytes: cluster.rss_bytes(),
        data_bytes: cluster.data_bytes(),
        cpu_us_per_op: report.server_cpu_us_per_op,
        client_cpu_us_per_op: report.client_cpu_us_per_op,
    };
    drop(cluster);
    Ok((s, report))
}

pub async fn run(cc: CompareConfig) -> Result<String, String> {
    let mut rows = Vec::new();
    let mut reports = Vec::new();
    for &nodes in &cc.node_counts {
        let etcd = Spec {
            kind: Kind::Etcd,
            binary: cc.etcd.clone(),
            nodes,
            work_dir: cc.work_dir.clone(),
            pidfile: cc.pidfile.clone(),
        };
        let mut ferrite_skip: Option<String> = match &cc.ferrite {
            None => Some("no ferrite binary given".into()),
            Some(p) if !p.exists() => Some(format!("{} does not exist", p.display())),
            Some(_) => None,
        };
        for preset in &cc.presets {
            let mut row = Row {
                nodes,
                preset: preset.name.into(),
                etcd: vec![],
                ferrite: vec![],
                ferrite_skipped: None,
                echo: vec![],
                floor: vec![],
            };
            for round in 0..cc.rounds {
                if preset.name == "put-1-client" && cc.floor_iterations > 0 {
                    probe_floor(&cc, round, &mut row).await;
                }
                eprintln!(
                    "== {nodes} node(s), {}, round {}: etcd",
                    preset.name,
                    round + 1
                );
                let (s, rep) = one_run(&etcd, preset).await?;
                record(&mut row.etcd, &mut reports, "etcd", preset, s, rep, nodes);
                if ferrite_skip.is_none() {
                    let spec = Spec {
                        kind: Kind::Ferrite,
                        binary: cc.ferrite.clone().expect("checked"),
                        ..etcd.clone()
                    };
                    eprintln!(
                        "== {nodes} node(s), {}, round {}: ferrite",
                        preset.name,
                        round + 1
                    );
                    match one_run(&spec, preset).await {
                        Ok((s, rep)) => {
                            record(
                                &mut row.ferrite,
                                &mut reports,
                                "ferrite",
                                preset,
                                s,
                                rep,
                                nodes,
                            );
                        }
                        Err(e) => {
                            let first = e.lines().take(12).collect::<Vec<_>>().join("\n    ");
                            eprintln!("   ferrite skipped for {nodes} node(s): {first}");
                            ferrite_skip = Some(e.lines().next().unwrap_or("").to_string());
                        }
                    }
                }
                if let (Some(bin), true) = (&cc.echo, ECHO_PRESETS.contains(&preset.name)) {
                    eprintln!("== {}, round {}: grpc-echo", preset.name, round + 1);
                    match echo_run(bin, cc.pidfile.as_deref(), preset).await {
                        Ok((s, rep)) => {
                            record(
                                &mut row.echo,
                                &mut reports,
                                "grpc-echo",
                                preset,
                                s,
                                rep,
                                nodes,
                            );
                        }
                        Err(e) => eprintln!("   grpc-echo failed: {e}"),
                    }
                }
                if preset.name == "put-1-client" && cc.floor_iterations > 0 {
                    probe_floor(&cc, round, &mut row).await;
                }
            }
            row.ferrite_skipped = ferrite_skip.clone();
            rows.push(row);
        }
    }
    let md = markdown(&cc, &rows);
    if let Some(p) = &cc.json_out {
        let j = serde_json::json!({"rows": rows, "runs": reports});
        std::fs::write(p, serde_json::to_string_pretty(&j).expect("json"))
            .map_err(|e| format!("writing {}: {e}", p.display()))?;
    }
    if let Some(p) = &cc.append_to {
        append_section(p, &md)?;
    }
    Ok(md)
}

fn fmt_opt(v: Option<f64>, scale: f64, digits: usize) -> String {
    v.map(|x| format!("{:.*}", digits, x / scale))
        .unwrap_or_else(|| "–".into())
}

fn ratio(f: Option<f64>, e: Option<f64>) -> String {
    match (f, e) {
        (Some(f), Some(e)) if e > 0.0 => format!("{:.2}", f / e),
        _ => "–".into(),
    }
}

pub fn machine_description() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown cpu".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|k| k.parse::<u64>().ok())
        })
        .map(|kib| format!("{:.1} GiB", kib as f64 / 1048576.0))
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    format!(
        "{cpu}, {cores} cores, {mem} RAM, Linux {}, load average at the end {}",
        kernel.trim(),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    )
}

/// Which client the presets' runs used, e.g. "lean (1 thread) for put-1-client, ...;
/// etcd-client for list-10".
fn client_description(presets: &[Preset]) -> String {
    let mut lean = Vec::new();
    let mut other = Vec::new();
    for p in presets {
        match p.config.client_used() {
            ClientKind::Lean => lean.push(p.name),
            ClientKind::EtcdClient => other.push(p.name),
        }
    }
    let mut parts = Vec::new();
    if !lean.is_empty() {
        let threads = presets[0].config.lean_threads;
        parts.push(format!(
            "lean (`bench/src/lean.rs`, {threads} thread(s)) for {}",
            lean.join(", ")
        ));
    }
    if !other.is_empty() {
        parts.push(format!("etcd-client for {}", other.join(", ")));
    }
    parts.join("; ")
}

fn markdown(cc: &CompareConfig, rows: &[Row]) -> String {
    let now = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let etcd_version = std::process::Command::new(&cc.etcd)
        .arg("--version")
        .output()
        .ok()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_string()
        })
        .unwrap_or_default();
    let mut s = format!(
        "\n### Run of {now}\n\nMachine: {}. Reference: {etcd_version}. {} round(s) per server, alternating, a fresh \
         cluster per run; medians shown; throughput and latency are of each workload's primary operation; \
         RSS and data size at the end of the run, summed over members. Client: {}.\n\nCommand: `{}`\n\n",
        machine_description(),
        cc.rounds,
        client_description(&cc.presets),
        cc.command_line
    );
    s.push_str("| nodes | workload | etcd ops/s | ferrite ops/s | ratio | etcd p50 ms | ferrite p50 ms | etcd p99 ms | ferrite p99 ms | etcd cpu µs/op | ferrite cpu µs/op | client cpu µs/op e/f | etcd RSS MiB | ferrite RSS MiB | etcd data MiB | ferrite data MiB | errors e/f |\n");
    s.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    let mut skipped = Vec::new();
    for r in rows {
        let m = |v: &[Sample], f: &dyn Fn(&Sample) -> f64| median(v.iter().map(f).collect());
        let mc = |v: &[Sample]| median(v.iter().filter_map(|s| s.cpu_us_per_op).collect());
        let mcc = |v: &[Sample]| median(v.iter().filter_map(|s| s.client_cpu_us_per_op).collect());
        let (e, f) = (&r.etcd, &r.ferrite);
        let tput = (m(e, &|s| s.ops_per_sec), m(f, &|s| s.ops_per_sec));
        let errs = |v: &[Sample]| {
            v.iter()
                .map(|s| s.errors + s.violations as u64)
                .sum::<u64>()
        };
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {}/{} | {} | {} | {} | {} | {}/{} |\n",
            r.nodes,
            r.preset,
            fmt_opt(tput.0, 1.0, 0),
            fmt_opt(tput.1, 1.0, 0),
            ratio(tput.1, tput.0),
            fmt_opt(m(e, &|s| s.p50_us), 1000.0, 3),
            fmt_opt(m(f, &|s| s.p50_us), 1000.0, 3),
            fmt_opt(m(e, &|s| s.p99_us), 1000.0, 3),
            fmt_opt(m(f, &|s| s.p99_us), 1000.0, 3),
            fmt_opt(mc(e), 1.0, 1),
            fmt_opt(mc(f), 1.0, 1),
            fmt_opt(mcc(e), 1.0, 1),
            fmt_opt(mcc(f), 1.0, 1),
            fmt_opt(m(e, &|s| s.rss_bytes as f64), 1048576.0, 1),
            fmt_opt(m(f, &|s| s.rss_bytes as f64), 1048576.0, 1),
            fmt_opt(m(e, &|s| s.data_bytes as f64), 1048576.0, 1),
            fmt_opt(m(f, &|s| s.data_bytes as f64), 1048576.0, 1),
            errs(e),
            if f.is_empty() { "–".to_string() } else { errs(f).to_string() },
        ));
        if let Some(why) = &r.ferrite_skipped {
            let line = format!("{} node(s): {why}", r.nodes);
            if !skipped.contains(&line) {
                skipped.push(line);
            }
        }
    }
    for line in skipped {
        s.push_str(&format!("\nferrite skipped, {line}\n"));
    }
    s.push_str(&baselines_markdown(rows));
    s
}

/// The baselines (grpc-echo, fsync floor) and issue 5's targets, for the 1-node rows.
fn baselines_markdown(rows: &[Row]) -> String {
    let find = |name: &str| rows.iter().find(|r| r.nodes == 1 && r.preset == name);
    let mut s = String::new();
    let echo_rows: Vec<&Row> = rows.iter().filter(|r| !r.echo.is_empty()).collect();
    let floors: Vec<FloorSample> = rows.iter().flat_map(|r| r.floor.clone()).collect();
    if echo_rows.is_empty() && floors.is_empty() {
        return s;
    }
    let m = |v: &[Sample], f: &dyn Fn(&Sample) -> f64| median(v.iter().map(f).collect());
    let mc = |v: &[Sample]| median(v.iter().filter_map(|s| s.cpu_us_per_op).collect());
    s.push_str(
        "\nBaselines in the same run (grpc-echo: `bench/src/bin/grpc-echo.rs`, ferrite's transport \
         answering at once, same client and preset; fsync floor: 4 KiB overwrite of a preallocated \
         zero-filled file + fdatasync in the work dir, probed before and after each put-1-client \
         round):\n\n",
    );
    s.push_str("| baseline | ops/s | p50 ms | p99 ms | server cpu µs/op | client cpu µs/op | rounds |\n|---|---|---|---|---|---|---|\n");
    for r in &echo_rows {
        s.push_str(&format!(
            "| grpc-echo {} | {} | {} | {} | {} | {} | {} |\n",
            r.preset,
            fmt_opt(m(&r.echo, &|s| s.ops_per_sec), 1.0, 0),
            fmt_opt(m(&r.echo, &|s| s.p50_us), 1000.0, 3),
            fmt_opt(m(&r.echo, &|s| s.p99_us), 1000.0, 3),
            fmt_opt(mc(&r.echo), 1.0, 1),
            fmt_opt(
                median(
                    r.echo
                        .iter()
                        .filter_map(|s| s.client_cpu_us_per_op)
                        .collect()
                ),
                1.0,
                1
            ),
            r.echo.len()
        ));
    }
    let floor_p50 = median(floors.iter().map(|f| f.p50_us).collect());
    if !floors.is_empty() {
        s.push_str(&format!(
            "| fsync floor ({} ops per probe) | {} | {} | {} | – | – | {} probes |\n",
            floors[0].iterations,
            fmt_opt(
                median(floors.iter().map(|f| f.ops_per_sec).collect()),
                1.0,
                0
            ),
            fmt_opt(floor_p50, 1000.0, 3),
            fmt_opt(median(floors.iter().map(|f| f.p99_us).collect()), 1000.0, 3),
            floors.len()
        ));
    }
    s.push_str("\nIssue 5's targets, 1 node, from the medians above:\n\n| target | measured | goal | met |\n|---|---|---|---|\n");
    let verdict = |v: Option<f64>, goal: f64, at_least: bool| match v {
        Some(v) if (at_least && v >= goal) || (!at_least && v <= goal) => "yes",
        Some(_) => "no",
        None => "–",
    };
    let ops = |r: Option<&Row>, echo: bool, ferrite: bool| {
        r.and_then(|r| {
            let v = if echo {
                &r.echo
            } else if ferrite {
                &r.ferrite
            } else {
                &r.etcd
            };
            m(v, &|s| s.ops_per_sec)
        })
    };
    let div = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    };
    let mut line = |what: &str, v: Option<f64>, goal: f64, at_least: bool| {
        s.push_str(&format!(
            "| {what} | {} | {} {goal} | {} |\n",
            fmt_opt(v, 1.0, 2),
            if at_least { "≥" } else { "≤" },
            verdict(v, goal, at_least)
        ));
    };
    let put100 = find("put-100-clients");
    line(
        "put-100: ferrite ÷ etcd ops/s",
        div(ops(put100, false, true), ops(put100, false, false)),
        8.0,
        true,
    );
    line(
        "put-100: ferrite ÷ grpc-echo ops/s",
        div(ops(put100, false, true), ops(put100, true, false)),
        0.5,
        true,
    );
    let put1 = find("put-1-client");
    let f_p50 = put1.and_then(|r| m(&r.ferrite, &|s| s.p50_us));
    let e_p50 = put1.and_then(|r| m(&r.echo, &|s| s.p50_us));
    let floor_sum = match (floor_p50, e_p50) {
        (Some(a), Some(b)) => Some(a + b),
        _ => None,
    };
    line(
        &format!(
            "put-1 p50 ÷ (fsync p50 + echo p50) = {} ÷ ({} + {}) ms",
            fmt_opt(f_p50, 1000.0, 3),
            fmt_opt(floor_p50, 1000.0, 3),
            fmt_opt(e_p50, 1000.0, 3)
        ),
        div(f_p50, floor_sum),
        1.5,
        false,
    );
    for (name, what, goal) in [
        ("range-lin-100", "range-lin-100: ferrite ÷ etcd ops/s", 5.0),
        ("range-ser-100", "range-ser-100: ferrite ÷ etcd ops/s", 5.0),
        ("txn-cas-100", "txn-cas-100: ferrite ÷ etcd ops/s", 8.0),
    ] {
        let r = find(name);
        line(
            what,
            div(ops(r, false, true), ops(r, false, false)),
            goal,
            true,
        );
    }
    s
}

/// Inserts `text` at the end of the "## Server vs etcd (bench/)" section (before the next "## ").
pub fn append_section(path: &std::path::Path, text: &str) -> Result<(), String> {
    const HEADING: &str = "## Server vs etcd (bench/)";
    let doc =
        std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let new = match doc.find(HEADING) {
        Some(at) => {
            let body = at + HEADING.len();
            let end = doc[body..]
                .find("\n## ")
                .map(|i| body + i + 1)
                .unwrap_or(doc.len());
            let mut head = doc[..end].trim_end_matches('\n').to_string();
            head.push('\n');
            head.push_str(text);
            if end < doc.len() {
                head.push('\n');
            }
            format!("{head}{}", &doc[end..])
        }
        None => format!("{}\n{HEADING}\n{text}", doc.trim_end_matches('\n')),
    };
    std::fs::write(path, new).map_err(|e| format!("writing {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(vec![]), None);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
    }

    #[test]
    fn append_goes_into_our_section_only() {
        let p = std::env::temp_dir().join(format!("bench-md-{}.md", std::process::id()));
        std::fs::write(
            &p,
            "# B\n\n## WAL\nw\n\n## Server vs etcd (bench/)\nold\n\n## Later\nx\n",
        )
        .unwrap();
        append_section(&p, "\n### Run\nnew\n").unwrap();
        let s = std::fs::read_to_string(&p).unwrap();
        assert_eq!(
            s,
            "# B\n\n## WAL\nw\n\n## Server vs etcd (bench/)\nold\n\n### Run\nnew\n\n## Later\nx\n"
        );
        std::fs::write(&p, "# B\n\n## Server vs etcd (bench/)\n").unwrap();
        append_section(&p, "\n### Run\nnew\n").unwrap();
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            "# B\n\n## Server vs etcd (bench/)\n\n### Run\nnew\n"
        );
        std::fs::remove_file(&p).unwrap();
    }
}
