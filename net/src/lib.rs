//! ferrite-net: ferrite's transport layer — etcd's v3 API types, and gRPC + HTTP serving with
//! hyper on glommio's thread-per-core runtime (no tokio runtime).
//!
//! # What it provides
//!
//! - [`pb`]: etcd's v3 API as Rust types, generated at build time (protox + tonic-prost-build,
//!   no `protoc`) from our own copy of etcd's .proto files in `net/proto/`: prost messages, tonic
//!   server traits and clients, and serde impls speaking etcd's JSON gateway dialect.
//! - [`serve`]: starts one glommio executor per core; each binds every listen address with
//!   SO_REUSEPORT and serves HTTP/2 (gRPC) and HTTP/1.1 (JSON gateway, health, metrics) on the
//!   same port, detected per connection, with a service built on that core by a caller-supplied
//!   factory. [`Router`] is the service most callers want.
//! - [`run_local`] and [`CoreLocal`]: let tonic's `Send` handlers reach the `!Send` state of
//!   the core they run on.
//! - [`rt`]: hyper's runtime hooks on glommio (executor, timer, I/O adapter).
//! - [`peer`]: the peer transport — Raft messages between members (flatbuffers frames over
//!   TCP or TLS, batched per peer, reconnecting with backoff) and the cluster-info request.
//!
//! # Example
//!
//! ```no_run
//! use ferrite_net::pb::etcdserverpb::{kv_server::{Kv, KvServer}, *};
//! use ferrite_net::{serve, text_response, Listen, Router, ServeConfig};
//! use tonic::{Request, Response, Status};
//!
//! struct MyKv;
//!
//! #[tonic::async_trait]
//! impl Kv for MyKv {
//!     async fn range(&self, _: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
//!         Ok(Response::new(RangeResponse::default()))
//!     }
//!     // ... put, delete_range, txn, compact
//! #   async fn put(&self, _: Request<PutRequest>) -> Result<Response<PutResponse>, Status> { todo!() }
//! #   async fn delete_range(&self, _: Request<DeleteRangeRequest>) -> Result<Response<DeleteRangeResponse>, Status> { todo!() }
//! #   async fn txn(&self, _: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> { todo!() }
//! #   async fn compact(&self, _: Request<CompactionRequest>) -> Result<Response<CompactionResponse>, Status> { todo!() }
//! }
//!
//! let listen = Listen::parse_urls("http://127.0.0.1:2379,http://127.0.0.1:22379").unwrap();
//! let config = ServeConfig::new(listen, 2);
//! let request_bytes_max = 1536 * 1024;
//! let server = serve(config, move |core| async move {
//!     // Runs once on each core's thread: build (and spawn) that core's state here.
//!     let _ = core.index;
//!     let limit = ferrite_net::grpc_decoding_limit_bytes(request_bytes_max);
//!     Ok(Router::builder()
//!         // Oversize messages get grpc-go's RESOURCE_EXHAUSTED answer, as from etcd.
//!         .grpc_message_bytes_max(limit)
//!         .grpc(
//!             KvServer::new(MyKv).max_decoding_message_size(limit),
//!         )
//!         .route("/health", |_req| async {
//!             text_response(http::StatusCode::OK, "{\"health\":\"true\"}")
//!         })
//!         .build())
//! })
//! .unwrap();
//! println!("serving on {:?}", server.local_addrs());
//! server.join();
//! ```
//!
//! # Invariants
//!
//! - A connection is served entirely on the core that accepted it: every hyper task, every
//!   tonic handler future and every body is polled on that core's thread. Handlers may thus
//!   reach the core's state through [`CoreLocal`] (checked at run time) without locks.
//! - Every core listens on every address; port 0 is resolved once, so all cores share it.
//! - Limits are enforced here, not by tonic's (absent) transport: connections per core
//!   (excess waits in the kernel accept queue), HTTP/2 concurrent streams per connection,
//!   header sizes; gRPC message size per router (`RouterBuilder::grpc_message_bytes_max`, checked
//!   on each message's length prefix) and per service (tonic's `max_decoding_message_size`).
//!
//! # Non-goals
//!
//! - No TLS yet: [`StreamWrapper`] is the seam an acceptor plugs into.
//! - No server-side `grpc-timeout`, load shedding or graceful drain: shutdown drops open
//!   connections.
//! - No request routing across cores: the kernel's SO_REUSEPORT hashing spreads connections.

#![forbid(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod local;
pub mod pb;
pub mod peer;
pub mod router;
pub mod rt;
pub mod server;

pub use local::{run_local, CoreLocal, LocalCall, LocalTaskCanceled};
pub use router::{
    box_body, full_body, grpc_error_response, is_grpc, read_body_limited, text_response, BodyError,
    BoxBody, BoxError, GrpcGuard, LocalBoxFuture, Router, RouterBuilder,
};
pub use server::{
    serve, BoxStream, ByteStream, CoreInfo, Listen, ServeConfig, ServeError, ServerHandle,
    StreamWrapper,
};

/// Headroom etcd adds to `--max-request-bytes` for gRPC's own message limit (etcd's
/// `grpcOverheadBytes`): a request a bit over the limit decodes and is then rejected by the
/// server with "etcdserver: request is too large"; one far over it is refused by gRPC itself.
pub const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

/// The `max_decoding_message_size` to give each tonic service for a given
/// `--max-request-bytes`, as etcd configures gRPC.
pub fn grpc_decoding_limit_bytes(request_bytes_max: usize) -> usize {
    request_bytes_max.saturating_add(GRPC_OVERHEAD_BYTES)
}
