//! # ferrite-auth: etcd's authentication, authorization and TLS for ferrite
//!
//! What it is: the security pieces of the `ferrite` server, testable on their own.
//! - [`AuthStore`]: users, roles, permissions, the enabled flag and the auth revision, as a
//!   pure state machine applied from committed Raft entries, with etcd 3.4's exact semantics
//!   and errors ([`AuthError`], whose `Display` is etcd's message and `grpc_code()` its status).
//!   Persisted with [`AuthStore::encode`] / [`AuthStore::decode`] (docs/format.md, "Auth store").
//! - [`TokenProvider`]: simple tokens and JWT, parsed from `--auth-token` as etcd does.
//! - [`HashPool`]: bcrypt on dedicated threads, awaited through `Send` oneshots, so password
//!   checks never block a glommio executor.
//! - [`tls`]: rustls server/client configurations from etcd's TLS flags, --auto-tls, the
//!   allowed-CN/hostname peer checks, and the verified client certificate's common name.
//! - [`gosort`]: Go 1.19's unstable `sort.Sort`, so that permissions with equal keys are
//!   ordered exactly as etcd orders them.
//!
//! Invariants: `AuthStore::apply` is deterministic (no clock, no randomness, passwords arrive
//! hashed); the auth revision starts at 1 and only grows; when auth is enabled the user `root`
//! exists and holds the role `root`; every decode of persisted bytes is checksummed and
//! validated (corruption is an error, never a panic or a silently different store).
//!
//! Non-goals: networking, the gRPC services and Raft (the server wires them, see
//! docs/security.md); etcd v2 auth; certificate hot reload.

pub mod codec;
pub mod error;
pub mod gosort;
pub mod hash;
pub mod perm;
pub mod store;
pub mod tls;
pub mod tokens;

pub use codec::DecodeError;
pub use error::{AuthError, GrpcCode};
pub use hash::{effective_bcrypt_cost, hash_password, verify_password, HashPool, HashPoolOptions};
pub use store::{
    prefix_range_end, Applied, AuthCommand, AuthInfo, AuthStore, KeyAccess, PermType, Permission,
    Role, User, ROOT_ROLE, ROOT_USER,
};
pub use tokens::{TokenCheck, TokenConfigError, TokenProvider};

/// The rustls the configurations are built with, and its async adapter for glommio streams
/// (`futures_rustls::TlsAcceptor::from(server_config)`), re-exported so the server links the
/// same versions.
pub use futures_rustls;
pub use futures_rustls::rustls;

/// The server shares these across cores (in an `Arc`, the token provider behind a `Mutex`).
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<AuthStore>();
    send_sync::<TokenProvider>();
    send_sync::<HashPool>();
    send_sync::<AuthError>();
};
