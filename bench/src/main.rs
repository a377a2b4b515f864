//! `ferrite-bench`: `run` one workload against any etcd v3 endpoint, or `side-by-side` to compare
//! etcd and ferrite. See `ferrite-bench --help`.

use clap::{Parser, Subcommand};
use ferrite_bench::compare::{self, CompareConfig};
use ferrite_bench::stats::render;
use ferrite_bench::workload::{self, ClientKind, Config, Workload};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "ferrite-bench",
    about = "Load generator for etcd v3 API servers (ferrite, etcd)"
)]
struct Cli {
    /// Tokio worker threads of the load generator (default: all cores).
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run one workload against running endpoints.
    Run(RunArgs),
    /// Start etcd and ferrite (fresh, on loopback) and run the same workloads on both, A/B/A/B.
    SideBySide(SbsArgs),
    /// Leader failover time (kill -9 of the leader to the first acknowledged write), etcd and
    /// ferrite alternating, a fresh cluster per trial.
    Failover(FailoverArgs),
}

#[derive(clap::Args)]
struct FailoverArgs {
    #[arg(long, default_value = "/usr/bin/etcd")]
    etcd: PathBuf,
    /// The ferrite binary (omit to measure etcd only).
    #[arg(long)]
    ferrite: Option<PathBuf>,
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Trials per server.
    #[arg(long, default_value_t = 10)]
    trials: usize,
    #[arg(long, default_value = "/tmp")]
    work_dir: PathBuf,
    #[arg(long)]
    pidfile: Option<PathBuf>,
}

#[derive(clap::Args)]
struct RunArgs {
    #[arg(long, value_enum, default_value = "put")]
    workload: Workload,
    /// Comma-separated client URLs or host:port.
    #[arg(long, default_value = "127.0.0.1:2379", value_delimiter = ',')]
    endpoints: Vec<String>,
    #[arg(long, default_value_t = 16)]
    clients: usize,
    #[arg(long, default_value_t = 4)]
    connections: usize,
    #[arg(long, default_value_t = 16)]
    key_size: usize,
    #[arg(long, default_value_t = 256)]
    value_size: usize,
    #[arg(long, default_value_t = 10_000)]
    key_space: u64,
    /// Cap on measured operations.
    #[arg(long)]
    total: Option<u64>,
    /// Cap on the measured phase, seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    #[arg(long, default_value_t = 8)]
    watchers: usize,
    #[arg(long, default_value_t = 1000)]
    leases: usize,
    #[arg(long, default_value_t = 500)]
    page_size: i64,
    #[arg(long, default_value_t = 0.01)]
    list_fraction: f64,
    /// Do not write the key space before measuring.
    #[arg(long)]
    no_prepare: bool,
    /// Per-request timeout, seconds (a timed-out request is an error).
    #[arg(long, default_value_t = 10.0)]
    op_timeout: f64,
    /// Progress line every N seconds on stderr (0: none).
    #[arg(long, default_value_t = 5.0)]
    progress: f64,
    /// Server process(es) whose CPU time per operation and RSS are reported (repeatable).
    #[arg(long)]
    server_pid: Vec<u32>,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[command(flatten)]
    client: ClientArgs,
    /// Write the report as JSON to this file ("-" for stdout, replacing the table).
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(clap::Args, Clone, Copy)]
struct ClientArgs {
    /// The client of the measured phase: `lean` (HTTP/2 on current-thread runtimes; put,
    /// range-*, txn-cas; other workloads fall back to etcd-client) or `etcd-client`.
    #[arg(long, value_enum, default_value = "lean")]
    client: ClientKind,
    /// Threads of the lean client (one current-thread runtime each, at most --connections;
    /// default: one per core, as many as etcd-client's runtime has).
    #[arg(long)]
    lean_threads: Option<usize>,
}

#[derive(clap::Args)]
struct SbsArgs {
    #[arg(long, default_value = "/usr/bin/etcd")]
    etcd: PathBuf,
    /// The ferrite binary; skipped with a message when missing or when it fails to start.
    #[arg(long)]
    ferrite: Option<PathBuf>,
    /// Cluster sizes to compare.
    #[arg(long, default_value = "1,3", value_delimiter = ',')]
    nodes: Vec<usize>,
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Seconds per measured run.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Only these presets (names as printed); default all.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    #[arg(long, default_value = "/tmp")]
    work_dir: PathBuf,
    #[arg(long)]
    pidfile: Option<PathBuf>,
    /// Append the Markdown results to this file's "## Server vs etcd (bench/)" section.
    #[arg(long)]
    append_to: Option<PathBuf>,
    #[arg(long)]
    json: Option<PathBuf>,
    /// The grpc-echo baseline binary (default: `grpc-echo` next to this program, if present).
    #[arg(long)]
    echo: Option<PathBuf>,
    /// Do not run the grpc-echo baseline.
    #[arg(long)]
    no_echo: bool,
    /// fsync-floor probe operations, before and after each round of put-1-client (0: none).
    #[arg(long, default_value_t = 1000)]
    floor_iterations: usize,
    #[command(flatten)]
    client: ClientArgs,
    /// Loopback ports for the servers, FROM-TO (default: ports the OS picks).
    #[arg(long)]
    ports: Option<String>,
}

fn main() {
    let cli = Cli::parse();
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all();
    if let Some(t) = cli.threads {
        rt.worker_threads(t.max(1));
    }
    let rt = rt.build().expect("tokio runtime");
    let code = rt.block_on(async move {
        let work = async move {
            match cli.cmd {
                Cmd::Run(a) => run_one(a).await,
                Cmd::SideBySide(a) => side_by_side(a).await,
                Cmd::Failover(a) => failover(a).await,
            }
        };
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        // Dropping `work` on a signal drops any running cluster, which kills its servers by pid.
        tokio::select! {
            r = work => match r {
                Ok(code) => code,
                Err(e) => { eprintln!("ferrite-bench: {e}"); 1 }
            },
            _ = tokio::signal::ctrl_c() => { eprintln!("ferrite-bench: interrupted"); 130 }
            _ = term.recv() => { eprintln!("ferrite-bench: terminated"); 143 }
        }
    });
    // Do not wait for stuck client tasks.
    rt.shutdown_timeout(Duration::from_secs(1));
    std::process::exit(code);
}

async fn failover(a: FailoverArgs) -> Result<i32, String> {
    use ferrite_bench::cluster::Kind;
    use ferrite_bench::failover::{self, FailoverConfig, Trial};
    let mut servers = vec![(Kind::Etcd, a.etcd.clone())];
    if let Some(f) = &a.ferrite {
        servers.push((Kind::Ferrite, f.clone()));
    }
    let mut results: Vec<(Kind, Vec<Trial>)> =
        servers.iter().map(|(k, _)| (*k, Vec::new())).collect();
    // Alternate one trial at a time so both see the same machine load.
    for _ in 0..a.trials {
        for (i, (kind, bin)) in servers.iter().enumerate() {
            let cfg = FailoverConfig {
                kind: *kind,
                binary: bin.clone(),
                nodes: a.nodes,
                trials: 1,
                work_dir: a.work_dir.clone(),
                pidfile: a.pidfile.clone(),
            };
            results[i].1.extend(failover::run(&cfg).await);
        }
    }
    println!("| server | members | trials ok | median ms | min ms | max ms | every trial (ms) |");
    println!("|---|---|---|---|---|---|---|");
    for (kind, trials) in &results {
        let ok = trials.iter().filter(|t| t.is_ok()).count();
        let all: Vec<String> = trials
            .iter()
            .map(|t| match t {
                Ok(d) => format!("{:.0}", d.as_secs_f64() * 1000.0),
                Err(_) => "fail".into(),
            })
            .collect();
        let (med, min, max) = failover::summary(trials)
            .map(|(a, b, c)| (format!("{a:.0}"), format!("{b:.0}"), format!("{c:.0}")))
            .unwrap_or_else(|| ("–".into(), "–".into(), "–".into()));
        println!(
            "| {} | {} | {ok}/{} | {med} | {min} | {max} | {} |",
            kind.name(),
            a.nodes,
            trials.len(),
            all.join(" ")
        );
    }
    Ok(0)
}

async fn run_one(a: RunArgs) -> Result<i32, String> {
    let cfg = Config {
        workload: a.workload,
        endpoints: a.endpoints,
        clients: a.clients,
        connections: a.connections,
        key_size: a.key_size,
        value_size: a.value_size,
        key_space: a.key_space,
        total_ops_max: a.total.unwrap_or(u64::MAX),
        duration_max: Duration::from_secs_f64(a.duration),
        watchers: a.watchers,
        leases: a.leases,
        page_size: a.page_size,
        list_fraction: a.list_fraction,
        no_prepare: a.no_prepare,
        op_timeout: Duration::from_secs_f64(a.op_timeout),
        progress_every: (a.progress > 0.0).then(|| Duration::from_secs_f64(a.progress)),
        server_pids: a.server_pid,
        seed: a.seed,
        client: a.client.client,
        lean_threads: a
            .client
            .lean_threads
            .unwrap_or_else(workload::default_lean_threads),
    };
    let report = workload::run(cfg).await?;
    let json = serde_json::to_string_pretty(&report).expect("report serializes");
    match a.json.as_deref() {
        Some(p) if p.as_os_str() == "-" => println!("{json}"),
        Some(p) => {
            std::fs::write(p, json).map_err(|e| format!("writing {}: {e}", p.display()))?;
            print!("{}", render(&report));
        }
        None => print!("{}", render(&report)),
    }
    // Errors are reported in the table; correctness violations fail the run.
    Ok(if report.violations.is_empty() { 0 } else { 2 })
}

async fn side_by_side(a: SbsArgs) -> Result<i32, String> {
    if let Some(r) = &a.ports {
        let (lo, hi) = r
            .split_once('-')
            .and_then(|(l, h)| Some((l.parse::<u16>().ok()?, h.parse::<u16>().ok()?)))
            .filter(|(l, h)| l < h)
            .ok_or_else(|| format!("--ports {r:?}: expected FROM-TO, e.g. 29000-29499"))?;
        ferrite_bench::cluster::set_port_range(lo, hi);
    }
    let mut presets = compare::presets(Duration::from_secs_f64(a.duration));
    for p in &mut presets {
        p.config.client = a.client.client;
        if let Some(t) = a.client.lean_threads {
            p.config.lean_threads = t;
        }
    }
    if !a.only.is_empty() {
        for o in &a.only {
            if !presets.iter().any(|p| p.name == o) {
                let names: Vec<&str> = presets.iter().map(|p| p.name).collect();
                return Err(format!(
                    "unknown preset {o:?}; presets: {}",
                    names.join(", ")
                ));
            }
        }
        presets.retain(|p| a.only.iter().any(|o| o == p.name));
    }
    let echo = if a.no_echo {
        None
    } else {
        a.echo.clone().or_else(|| {
            let p = std::env::current_exe().ok()?.with_file_name("grpc-echo");
            p.exists().then_some(p)
        })
    };
    if echo.is_none() && !a.no_echo {
        eprintln!("ferrite-bench: no grpc-echo binary next to this program: no echo baseline");
    }
    let md = compare::run(CompareConfig {
        echo,
        floor_iterations: a.floor_iterations,
        etcd: a.etcd,
        ferrite: a.ferrite,
        node_counts: a.nodes,
        rounds: a.rounds.max(1),
        presets,
        work_dir: a.work_dir,
        pidfile: a.pidfile,
        append_to: a.append_to,
        json_out: a.json,
        command_line: std::env::args().collect::<Vec<_>>().join(" "),
    })
    .await?;
    println!("{md}");
    Ok(0)
}
