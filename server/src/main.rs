//! The `ferrite` binary: etcd's flags in, an etcd-compatible server out.

/// mimalloc instead of glibc malloc: under a put load glibc's allocator (with frees on another
/// thread than the allocation) was ~30% of the server's CPU (`perf record`, docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("snapshot") {
        std::process::exit(ferrite::snapshot_cmd::run(&args[2..]));
    }
    let config = ferrite::config::Config::from_args_and_env();
    if let Err(e) = ferrite::logging::init(&config) {
        eprintln!("ferrite: {e}");
        std::process::exit(1);
    }
    if let Err(e) = ferrite::run(config) {
        ferrite::logging::early_fatal(&e);
        std::process::exit(1);
    }
}
