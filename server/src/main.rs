//! The `ferrite` binary: etcd's flags in, an etcd-compatible server out.

/// mimalloc instead of glibc malloc: under a put load glibc's allocator (with frees on another
/// thread than the allocation) was ~30% of the server's CPU (`perf record`, docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
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
