//! The "gRPC echo" baseline: etcd's KV service on ferrite-net's glommio server, answering every
//! call at once with an empty response carrying a header (no storage, no Raft). Measures the
//! transport alone; the server's targets are stated relative to it.
//!
//! `ferrite-bench side-by-side` starts it (next to itself, `--echo`) and runs the put presets
//! against it in every round, so the ratios the targets name come out of one run.
//!
//! ```text
//! cargo build --release -p ferrite-bench
//! target/release/grpc-echo --listen http://127.0.0.1:2379 --cores 2 [--via-local] [--spin-us 0]
//! # then, in another shell, either load generator:
//! cargo run --release -p ferrite-net --example grpc_load -- --endpoint http://127.0.0.1:2379 \
//!     --rpc put --clients 100 --connections 4 --seconds 10
//! ferrite-bench run --workload put --no-prepare --clients 100 --endpoints 127.0.0.1:2379
//! ```
//!
//! `--via-local` hands each call to a core-local task through `run_local` and awaits the `Send`
//! oneshot, as the real server's handlers do, to price that hop. `--tokio` serves the same
//! service with tonic's own transport on a tokio runtime of `--cores` threads instead, for
//! comparison.

use std::time::Duration;

use ferrite_net::pb::etcdserverpb::kv_server::{Kv, KvServer};
use ferrite_net::pb::etcdserverpb::*;
use ferrite_net::{run_local, serve, text_response, Listen, Router, ServeConfig};
use tonic::{Request, Response, Status};

#[derive(Clone, Copy)]
struct EchoKv {
    member_id: u64,
    via_local: bool,
}

impl EchoKv {
    async fn header(&self) -> Option<ResponseHeader> {
        let header = ResponseHeader {
            cluster_id: 1,
            member_id: self.member_id,
            revision: 1,
            raft_term: 1,
        };
        if self.via_local {
            Some(run_local(async move { header }).await.ok()?)
        } else {
            Some(header)
        }
    }
}

#[tonic::async_trait]
impl Kv for EchoKv {
    async fn range(&self, _: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        Ok(Response::new(RangeResponse {
            header: self.header().await,
            ..Default::default()
        }))
    }
    async fn put(&self, _: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        Ok(Response::new(PutResponse {
            header: self.header().await,
            ..Default::default()
        }))
    }
    async fn delete_range(
        &self,
        _: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        Ok(Response::new(DeleteRangeResponse {
            header: self.header().await,
            ..Default::default()
        }))
    }
    async fn txn(&self, _: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        Ok(Response::new(TxnResponse {
            header: self.header().await,
            succeeded: true,
            ..Default::default()
        }))
    }
    async fn compact(
        &self,
        _: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        Ok(Response::new(CompactionResponse {
            header: self.header().await,
        }))
    }
}

fn usage() -> ! {
    eprintln!(
        "usage: grpc-echo [--listen URL[,URL...]] [--cores N] [--pin] [--via-local] [--spin-us N] \
         [--tokio]"
    );
    std::process::exit(2)
}

fn main() {
    let mut listen = "http://127.0.0.1:2379".to_string();
    let mut cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut pin = false;
    let mut via_local = false;
    let mut spin_us = 0u64;
    let mut on_tokio = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => listen = args.next().unwrap_or_else(|| usage()),
            "--cores" => {
                cores = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| usage())
            }
            "--pin" => pin = true,
            "--via-local" => via_local = true,
            "--tokio" => on_tokio = true,
            "--spin-us" => {
                spin_us = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| usage())
            }
            _ => usage(),
        }
    }
    let listen = Listen::parse_urls(&listen).unwrap_or_else(|e| {
        eprintln!("{e}");
        std::process::exit(2)
    });
    if on_tokio {
        serve_on_tokio(&listen, cores);
        return;
    }
    let mut config = ServeConfig::new(listen, cores);
    config.pin_cores = pin;
    if spin_us > 0 {
        config.spin_before_park = Some(Duration::from_micros(spin_us));
    }
    let server = serve(config, move |core| async move {
        let kv = EchoKv {
            member_id: core.index as u64 + 1,
            via_local,
        };
        Ok(Router::builder()
            .grpc(KvServer::new(kv))
            .route("/health", |_req| async {
                text_response(http::StatusCode::OK, "{\"health\":\"true\"}")
            })
            .build())
    })
    .unwrap_or_else(|e| {
        eprintln!("{e}");
        std::process::exit(1)
    });
    eprintln!(
        "grpc-echo serving on {:?} with {cores} cores (via_local={via_local})",
        server.local_addrs()
    );
    server.join();
}

/// The same echo service on tonic's own HTTP/2 transport and a multi-threaded tokio runtime.
fn serve_on_tokio(listen: &[Listen], cores: usize) {
    let addr = listen[0].addr;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores)
        .enable_all()
        .build()
        .unwrap();
    eprintln!("grpc-echo (tonic on tokio) serving on {addr} with {cores} threads");
    rt.block_on(async move {
        tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .add_service(KvServer::new(EchoKv {
                member_id: 1,
                via_local: false,
            }))
            .serve(addr)
            .await
            .unwrap();
    });
}
