//! `ferrite-soak`: many seeded fault runs against a ferrite or etcd cluster. See the crate docs.

use clap::Parser;
use ferrite_chaos::checker::{self, Limits};
use ferrite_chaos::cluster::Target;
use ferrite_chaos::history::History;
use ferrite_chaos::run::{run, RunConfig};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(about = "Seeded fault-injection runs against a ferrite or etcd cluster")]
struct Args {
    /// ferrite or etcd.
    #[arg(long, default_value = "ferrite")]
    target: String,
    /// Path of the ferrite binary (default: target/release/ferrite next to this binary).
    #[arg(long)]
    ferrite_bin: Option<PathBuf>,
    /// Path of the etcd binary.
    #[arg(long, default_value = "/usr/bin/etcd")]
    etcd_bin: PathBuf,
    #[arg(long, default_value_t = 3)]
    members: usize,
    #[arg(long, default_value_t = 100)]
    runs: u64,
    /// Seed of the first run; run i uses seed + i.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Minimum load time of each run, in seconds.
    #[arg(long, default_value_t = 20)]
    secs: u64,
    #[arg(long, default_value_t = 6)]
    clients: u32,
    /// Directory for failing runs' histories.
    #[arg(long)]
    artifacts: Option<PathBuf>,
    /// Only check a saved history (the register keys are c/k/0..c/k/63).
    #[arg(long)]
    check_history: Option<PathBuf>,
    /// Keep going after a failing run.
    #[arg(long)]
    keep_going: bool,
}

fn main() {
    let args = Args::parse();
    if let Some(p) = &args.check_history {
        let h = History::load(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        let keys: Vec<String> = (0..64).map(|i| format!("c/k/{i}")).collect();
        let r = checker::check(&h, &keys, Limits::default());
        println!("{}", r.summary());
        std::process::exit(if r.verdict() == checker::Verdict::Ok {
            0
        } else {
            1
        });
    }
    let target = match args.target.as_str() {
        "etcd" => Target::Etcd(args.etcd_bin.clone()),
        "ferrite" => Target::Ferrite(args.ferrite_bin.clone().unwrap_or_else(|| {
            let me = std::env::current_exe().expect("current exe");
            me.with_file_name("ferrite")
        })),
        other => panic!("--target {other:?}: expected ferrite or etcd"),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut failed = Vec::new();
    for i in 0..args.runs {
        let seed = args.seed + i;
        let mut cfg = RunConfig::new(target.clone(), args.members, seed);
        cfg.duration = Duration::from_secs(args.secs);
        cfg.clients = args.clients;
        cfg.artifacts = args.artifacts.clone();
        let report = rt.block_on(run(&cfg));
        println!("run {}/{}: {}", i + 1, args.runs, report.summary());
        if !report.passed() {
            println!(
                "replay: cargo run --release -p ferrite-chaos --bin ferrite-soak -- --target {} \
                 --members {} --runs 1 --seed {seed} --secs {}",
                args.target, args.members, args.secs
            );
            failed.push(seed);
            if !args.keep_going {
                break;
            }
        }
        for f in &report.history.faults {
            println!("    fault {f}");
        }
    }
    if failed.is_empty() {
        println!("soak: all runs passed");
    } else {
        println!("soak: failing seeds {failed:?}");
        std::process::exit(1);
    }
}
