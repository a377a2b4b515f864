//! A small closed-loop gRPC load generator (tonic on tokio) for the `grpc_echo` example, or any
//! etcd endpoint: N clients spread over M HTTP/2 connections, each sending one unary call at a
//! time. Prints throughput and latency percentiles.
//!
//! ```text
//! cargo run --release -p ferrite-net --example grpc_load -- --endpoint http://127.0.0.1:2379 \
//!     --rpc range|put --clients 100 --connections 4 --seconds 10 [--threads 2]
//! ```

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferrite_net::pb::etcdserverpb::kv_client::KvClient;
use ferrite_net::pb::etcdserverpb::{PutRequest, RangeRequest};

fn usage() -> ! {
    eprintln!(
        "usage: grpc_load [--endpoint URL] [--rpc range|put] [--clients N] [--connections N] \
         [--seconds S] [--threads N]"
    );
    std::process::exit(2)
}

fn main() {
    let mut endpoint = "http://127.0.0.1:2379".to_string();
    let mut rpc = "range".to_string();
    let mut clients = 100usize;
    let mut connections = 4usize;
    let mut seconds = 10f64;
    let mut threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut val = || args.next().unwrap_or_else(|| usage());
        match arg.as_str() {
            "--endpoint" => endpoint = val(),
            "--rpc" => rpc = val(),
            "--clients" => clients = val().parse().unwrap_or_else(|_| usage()),
            "--connections" => connections = val().parse().unwrap_or_else(|_| usage()),
            "--seconds" => seconds = val().parse().unwrap_or_else(|_| usage()),
            "--threads" => threads = val().parse().unwrap_or_else(|_| usage()),
            _ => usage(),
        }
    }
    if !matches!(rpc.as_str(), "range" | "put") || clients == 0 || connections == 0 {
        usage();
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let mut channels = Vec::new();
        for _ in 0..connections {
            let ch = tonic::transport::Endpoint::from_shared(endpoint.clone())
                .unwrap()
                .tcp_nodelay(true)
                .connect()
                .await
                .unwrap_or_else(|e| {
                    eprintln!("connect {endpoint}: {e}");
                    std::process::exit(1)
                });
            channels.push(ch);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for i in 0..clients {
            let mut client = KvClient::new(channels[i % connections].clone());
            let stop = Arc::clone(&stop);
            let rpc = rpc.clone();
            tasks.push(tokio::spawn(async move {
                let mut lat_us = Vec::with_capacity(1 << 16);
                let mut errors = 0u64;
                let key = format!("key-{i:08}").into_bytes();
                let value = vec![b'v'; 256];
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    let ok = if rpc == "range" {
                        client
                            .range(RangeRequest {
                                key: key.clone().into(),
                                serializable: true,
                                ..Default::default()
                            })
                            .await
                            .is_ok()
                    } else {
                        client
                            .put(PutRequest {
                                key: key.clone().into(),
                                value: value.clone().into(),
                                ..Default::default()
                            })
                            .await
                            .is_ok()
                    };
                    if ok {
                        lat_us.push(t.elapsed().as_micros() as u64);
                    } else {
                        errors += 1;
                    }
                }
                (lat_us, errors)
            }));
        }
        let start = Instant::now();
        tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
        stop.store(true, Ordering::Relaxed);
        let mut all = Vec::new();
        let mut errors = 0;
        for t in tasks {
            let (l, e) = t.await.unwrap();
            all.extend(l);
            errors += e;
        }
        let elapsed = start.elapsed().as_secs_f64();
        all.sort_unstable();
        let pct = |p: f64| {
            if all.is_empty() {
                0
            } else {
                all[((all.len() - 1) as f64 * p) as usize]
            }
        };
        println!(
            "rpc={rpc} clients={clients} connections={connections}: {} ok, {errors} errors, \
             {:.0} req/s, p50 {} us, p99 {} us, max {} us",
            all.len(),
            all.len() as f64 / elapsed,
            pct(0.50),
            pct(0.99),
            pct(1.0)
        );
    });
}
