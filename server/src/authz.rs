//! Authentication and authorization wiring (etcd's `authStore` seen from the server): who is
//! calling (a `token` / `authorization` metadata value, or the common name of a verified client
//! certificate), and the permission checks etcd 3.4 makes on each request.
//!
//! The [`AuthStore`] and the node-local [`TokenProvider`] live together behind one mutex in
//! [`Auth`]; the Raft core mutates them when it applies auth entries (and persists the store in
//! the MVCC metadata under [`AUTH_META_KEY`], in the same commit), the serving cores read them.
//! bcrypt runs on the [`HashPool`]'s threads, never on an executor.
//!
//! Invariants: writes are checked at apply, against the caller carried in the Raft entry, so
//! every member decides the same; reads are checked on the serving core against its applied
//! store; when auth is disabled every check passes (as etcd).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

use ferrite_auth::{
    AuthError, AuthInfo, AuthStore, HashPool, HashPoolOptions, TokenCheck, TokenProvider,
};
use ferrite_net::pb::etcdserverpb::{request_op, RequestOp, TxnRequest};

use crate::errors::EtcdError;

/// Metadata key of the encoded auth store (`AuthStore::encode`, docs/format.md).
pub const AUTH_META_KEY: &[u8] = b"ferrite/auth";
/// Waiting jobs the bcrypt pool accepts before refusing with "too many requests".
pub const HASH_QUEUE_LEN_MAX: usize = 1024;

/// The auth store and the token provider, mutated together at apply.
pub struct AuthState {
    pub store: AuthStore,
    pub tokens: TokenProvider,
}

/// Everything auth on one member (in `Shared`).
pub struct Auth {
    state: Mutex<AuthState>,
    /// Mirrors `store.is_enabled()` for the lock-free fast path.
    enabled: AtomicBool,
    pub pool: HashPool,
    pub bcrypt_cost: u32,
    /// `--client-cert-auth`: a verified client certificate's CN is a user name.
    pub client_cert_auth: bool,
}

/// The verified client certificate's common name of a TLS connection: put into every
/// request's extensions by the TLS acceptor.
#[derive(Clone, Debug)]
pub struct PeerCommonName(pub String);

/// The caller's credentials as received, forwarded to in-process calls (Lock and Election
/// issue KV requests on the caller's behalf; the JSON gateway turns `Authorization` into one).
#[derive(Clone, Debug, Default)]
pub struct Credentials {
    pub token: Option<String>,
    pub common_name: Option<String>,
}

impl Credentials {
    /// etcd's `AuthInfoFromCtx`: metadata `token`, else `authorization`; and the TLS CN.
    pub fn of<T>(req: &tonic::Request<T>) -> Credentials {
        Credentials::from_parts(req.metadata(), req.extensions())
    }

    pub fn from_parts(md: &tonic::metadata::MetadataMap, ext: &http::Extensions) -> Credentials {
        let token = md
            .get("token")
            .or_else(|| md.get("authorization"))
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        Credentials {
            token,
            common_name: ext.get::<PeerCommonName>().map(|c| c.0.clone()),
        }
    }

    /// Attaches these credentials to an in-process request.
    pub fn attach<T>(&self, req: &mut tonic::Request<T>) {
        if let Some(t) = &self.token {
            if let Ok(v) = t.parse() {
                req.metadata_mut().insert("token", v);
            }
        }
        if let Some(cn) = &self.common_name {
            req.extensions_mut().insert(PeerCommonName(cn.clone()));
        }
    }

    /// A request carrying these credentials.
    pub fn request<T>(&self, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        self.attach(&mut r);
        r
    }
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Auth {
    pub fn new(
        store: AuthStore,
        mut tokens: TokenProvider,
        bcrypt_cost: u32,
        client_cert_auth: bool,
    ) -> std::io::Result<Auth> {
        if store.is_enabled() {
            tokens.on_applied(&ferrite_auth::Applied::Enabled);
        }
        let enabled = AtomicBool::new(store.is_enabled());
        Ok(Auth {
            state: Mutex::new(AuthState { store, tokens }),
            enabled,
            pool: HashPool::new(HashPoolOptions {
                threads: 1,
                queue_len_max: HASH_QUEUE_LEN_MAX,
            })?,
            bcrypt_cost,
            client_cert_auth,
        })
    }

    pub fn lock(&self) -> MutexGuard<'_, AuthState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Replaces the store with one restored from a snapshot image; the token provider
    /// follows its enabled flag (simple tokens are node-local and start over).
    pub fn restore(&self, store: AuthStore) {
        let mut st = self.lock();
        let applied = if store.is_enabled() {
            ferrite_auth::Applied::Enabled
        } else {
            ferrite_auth::Applied::Disabled
        };
        st.store = store;
        st.tokens.on_applied(&applied);
        self.publish_enabled(&st);
    }

    /// Called by the apply loop after it changed the store.
    pub fn publish_enabled(&self, state: &AuthState) {
        self.enabled
            .store(state.store.is_enabled(), Ordering::Release);
    }

    pub fn is_enabled(&self) -> bool {
        self.enabled.load(Ordering::Acquire)
    }

    /// Resolves a token (one lookup; `WaitForIndex` is returned to the caller to wait on).
    fn token_info(&self, token: &str, applied_index: u64) -> TokenCheck {
        let mut st = self.lock();
        let rev = st.store.revision();
        st.tokens.info(token, rev, applied_index, now_ms())
    }

    /// The identity of a verified client certificate (only with `--client-cert-auth`).
    fn cn_info(&self, cn: &str) -> AuthInfo {
        self.lock().store.auth_info_from_common_name(cn)
    }

    /// Runs `f` on the applied store.
    pub fn with_store<R>(&self, f: impl FnOnce(&AuthStore) -> R) -> R {
        f(&self.lock().store)
    }
}

/// etcd's `EtcdServer.AuthInfoFromCtx`: the token if one was sent (an unknown token is an
/// error even while auth is disabled, as in etcd), else the client certificate's CN with
/// `--client-cert-auth`, else nobody.
pub async fn caller(
    shared: &crate::state::Shared,
    creds: &Credentials,
) -> Result<Option<AuthInfo>, EtcdError> {
    let auth = &shared.auth;
    if let Some(token) = &creds.token {
        let applied = shared.applied_index.load(Ordering::Acquire);
        let mut check = auth.token_info(token, applied);
        if let TokenCheck::WaitForIndex(_) = check {
            // A simple token minted at an index this member has not applied yet: a read
            // index covers it (it was committed before the client saw it).
            shared.read_index().await?;
            let applied = shared.applied_index.load(Ordering::Acquire);
            check = auth.token_info(token, applied);
        }
        return match check {
            TokenCheck::Valid(info) => Ok(Some(info)),
            TokenCheck::Invalid | TokenCheck::WaitForIndex(_) => {
                tracing::warn!(token = %token, "invalid auth token");
                Err(AuthError::InvalidAuthToken.into())
            }
        };
    }
    if auth.client_cert_auth {
        if let Some(cn) = &creds.common_name {
            return Ok(Some(auth.cn_info(cn)));
        }
    }
    Ok(None)
}

/// Caller resolution plus a check against the applied store, for the calls that are checked
/// on the serving member (reads, watch, admin-only calls). While auth is disabled every check
/// passes and the store is not locked.
pub async fn check(
    shared: &crate::state::Shared,
    creds: &Credentials,
    f: impl FnOnce(&AuthStore, Option<&AuthInfo>) -> Result<(), AuthError>,
) -> Result<Option<AuthInfo>, EtcdError> {
    let who = caller(shared, creds).await?;
    if who.is_none() && !shared.auth.is_enabled() {
        return Ok(None);
    }
    let st = shared.auth.lock();
    f(&st.store, who.as_ref())?;
    Ok(who)
}

/// etcd's `doSerialize` tail: a read served while the auth store moved past the caller's
/// revision is refused.
pub fn check_still_current(
    shared: &crate::state::Shared,
    who: Option<&AuthInfo>,
) -> Result<(), EtcdError> {
    match who {
        Some(w) if w.revision != 0 && w.revision != shared.auth.lock().store.revision() => {
            Err(AuthError::AuthOldRevision.into())
        }
        _ => Ok(()),
    }
}

/// Admin-only calls (Compact, Defragment, Snapshot, Hash, HashKV, member changes, ...).
pub async fn check_admin(
    shared: &crate::state::Shared,
    creds: &Credentials,
) -> Result<Option<AuthInfo>, EtcdError> {
    check(shared, creds, |s, c| s.is_admin_permitted(c)).await
}

/// etcd's `checkTxnAuth`: every compare READ, then every op of success and failure (nested
/// txns too, where etcd 3.4 does not look: stricter).
pub fn check_txn(
    store: &AuthStore,
    who: Option<&AuthInfo>,
    t: &TxnRequest,
) -> Result<(), AuthError> {
    if !store.is_enabled() {
        return Ok(());
    }
    for c in &t.compare {
        store.is_range_permitted(who, &c.key, &c.range_end)?;
    }
    check_ops(store, who, &t.success)?;
    check_ops(store, who, &t.failure)
}

fn check_ops(
    store: &AuthStore,
    who: Option<&AuthInfo>,
    ops: &[RequestOp],
) -> Result<(), AuthError> {
    for op in ops {
        match &op.request {
            Some(request_op::Request::RequestRange(r)) => {
                store.is_range_permitted(who, &r.key, &r.range_end)?
            }
            Some(request_op::Request::RequestPut(p)) => store.is_put_permitted(who, &p.key)?,
            Some(request_op::Request::RequestDeleteRange(d)) => {
                if d.prev_kv {
                    store.is_range_permitted(who, &d.key, &d.range_end)?;
                }
                store.is_delete_range_permitted(who, &d.key, &d.range_end)?;
            }
            Some(request_op::Request::RequestTxn(t)) => check_txn(store, who, t)?,
            None => {}
        }
    }
    Ok(())
}
