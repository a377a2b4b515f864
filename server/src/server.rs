//! Startup: open the store, recover leases and alarms, start the Raft core on core 0, serve
//! every core with ferrite-net, and log etcd's startup messages.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferrite_btree::{MvccStore, RangeOptions, StoreOptions};
use ferrite_net::pb::etcdserverpb::{
    auth_server::AuthServer, cluster_server::ClusterServer, kv_server::KvServer,
    lease_server::LeaseServer, maintenance_server::MaintenanceServer, watch_server::WatchServer,
};
use ferrite_net::{grpc_decoding_limit_bytes, serve, Listen, Router, ServeConfig};
use futures_channel::mpsc;

use std::collections::BTreeMap;

use crate::config::{ClusterState, Config};
use crate::lessor::{Lessor, LEASES_META_KEY};
use crate::membership::{Identity, MemberPb, Membership, MEMBERSHIP_META_KEY};
use crate::raft_core::{self, Bootstrap, CoreOptions, ALARMS_META_KEY};
use crate::state::{Limits, Shared, StoreCell};
use crate::watch_hub::WatchHub;

/// gRPC responses may be larger than requests (a range returns many keys): etcd's client
/// accepts up to 2 GiB; we cap encoding at this.
pub const GRPC_RESPONSE_BYTES_MAX: usize = 512 * 1024 * 1024;

pub use crate::membership::{cluster_id, member_id as member_id_of};

/// etcd's member id of an initial member (no timestamp).
pub fn member_id(peer_urls: &[String], cluster_token: &str) -> u64 {
    member_id_of(peer_urls, cluster_token, None)
}

/// How long startup waits for this member's publish before logging readiness anyway.
pub const PUBLISH_WAIT_MAX: Duration = Duration::from_secs(60);

/// How long a joining member waits for the cluster's membership from its peers.
pub const JOIN_FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Who this member is and what cluster it belongs to, decided before Raft starts:
/// - a data dir with an identity file: that identity and the stored membership (the initial
///   cluster flags are ignored, as etcd ignores them once the data dir exists);
/// - a new cluster: etcd's ids from `--initial-cluster` and `--initial-cluster-token`;
/// - joining (`--initial-cluster-state=existing`): the membership fetched from the peers
///   listed in `--initial-cluster`, and the id of the member with our peer URLs.
fn decide_identity(
    config: &Config,
    store: &MvccStore,
    wal_has_data: bool,
    peer_tls: Option<&crate::tls::PeerTls>,
) -> Result<(Identity, Membership, Bootstrap), String> {
    let member_dir = config.member_dir();
    let peer_urls: Vec<String> = config
        .initial_advertise_peer_urls
        .0
        .iter()
        .map(|u| u.to_string())
        .collect();
    let stored = match store
        .read()
        .try_get_meta(MEMBERSHIP_META_KEY)
        .map_err(|e| e.to_string())?
    {
        Some(b) => Some(Membership::decode(&b)?),
        None => None,
    };
    if let Some(id) = Identity::load(&member_dir)? {
        let m = match stored {
            Some(m) => m,
            None if !wal_has_data && config.initial_cluster_state == ClusterState::Existing => {
                // Joined but nothing was stored yet: fetch again.
                return join_identity(config, &peer_urls, peer_tls);
            }
            None => {
                return Err(format!(
                    "{} names member {:x} of cluster {:x} but the store has no membership",
                    member_dir.display(),
                    id.member_id,
                    id.cluster_id
                ))
            }
        };
        if m.cluster_id != id.cluster_id {
            return Err(format!(
                "the data dir {} belongs to cluster {:x} but its store holds cluster {:x}: \
                 refusing to mix clusters",
                config.data_dir.display(),
                id.cluster_id,
                m.cluster_id
            ));
        }
        let bootstrap = if wal_has_data {
            Bootstrap::New
        } else if config.initial_cluster_state == ClusterState::Existing {
            Bootstrap::Join
        } else {
            Bootstrap::New
        };
        return Ok((id, m, bootstrap));
    }
    if wal_has_data {
        // A data dir from before identities were recorded: a single member.
        let mid = member_id(&peer_urls, &config.initial_cluster_token);
        let m = stored.unwrap_or_else(|| {
            let mut init = BTreeMap::new();
            init.insert(config.name.clone(), peer_urls.clone());
            Membership::from_initial(&init, &config.initial_cluster_token)
        });
        let id = Identity {
            member_id: mid,
            cluster_id: m.cluster_id,
        };
        return Ok((id, m, Bootstrap::New));
    }
    match config.initial_cluster_state {
        ClusterState::New => {
            let init: BTreeMap<String, Vec<String>> = config
                .initial_cluster
                .iter()
                .map(|(n, u)| (n.clone(), u.0.iter().map(|u| u.to_string()).collect()))
                .collect();
            let m = Membership::from_initial(&init, &config.initial_cluster_token);
            let me = m.find_by_peer_urls(&peer_urls).ok_or_else(|| {
                format!(
                    "couldn't find local name {:?} in the initial cluster configuration",
                    config.name
                )
            })?;
            let id = Identity {
                member_id: me.id,
                cluster_id: m.cluster_id,
            };
            Ok((id, m, Bootstrap::New))
        }
        ClusterState::Existing => join_identity(config, &peer_urls, peer_tls),
    }
}

fn join_identity(
    config: &Config,
    peer_urls: &[String],
    peer_tls: Option<&crate::tls::PeerTls>,
) -> Result<(Identity, Membership, Bootstrap), String> {
    let others: Vec<String> = config
        .initial_cluster
        .iter()
        .filter(|(n, _)| **n != config.name)
        .flat_map(|(_, u)| u.0.iter().map(|u| u.to_string()))
        .collect();
    if others.is_empty() {
        return Err(
            "--initial-cluster-state=existing needs the other members' peer URLs in \
             --initial-cluster"
                .into(),
        );
    }
    let client_tls = peer_tls.map(|t| t.client.clone());
    let info = crate::transport::fetch_cluster_info(&others, client_tls, JOIN_FETCH_TIMEOUT)
        .map_err(|e| format!("cannot fetch cluster info from peer urls: {e}"))?;
    let mut m = Membership {
        cluster_id: info.cluster_id,
        ..Default::default()
    };
    for mi in info.members {
        let mut urls = mi.peer_urls.clone();
        urls.sort();
        m.members.insert(
            mi.id,
            MemberPb {
                id: mi.id,
                name: mi.name,
                peer_urls: urls,
                client_urls: mi.client_urls,
                is_learner: mi.is_learner,
            },
        );
    }
    let me = m.find_by_peer_urls(peer_urls).ok_or_else(|| {
        format!(
            "error validating peerURLs: member with peer URLs {} not found in cluster {:x} \
             (add it with member add first)",
            peer_urls.join(","),
            m.cluster_id
        )
    })?;
    let id = Identity {
        member_id: me.id,
        cluster_id: m.cluster_id,
    };
    Ok((id, m, Bootstrap::Join))
}

/// Keys per page of the lease re-attach scan at start.
const LEASE_SCAN_PAGE_KEYS: i64 = 10_000;

/// Rebuilds the lessor from the metadata and the keys' lease fields.
pub fn recover_lessor(store: &MvccStore, ttl_min: i64) -> Result<Lessor, String> {
    let view = store.read();
    let mut lessor = Lessor::new(ttl_min);
    let now = Instant::now();
    if let Some(b) = view
        .try_get_meta(LEASES_META_KEY)
        .map_err(|e| e.to_string())?
    {
        for (id, ttl) in Lessor::decode_meta(&b)? {
            lessor.restore(id, ttl, now);
        }
    }
    // Attach keys, scanning the keyspace in pages of keys only. Without leases no key can carry
    // one (a revoke deletes its keys), and the scan is skipped. Each page stops at its limit
    // (`stop_at_limit`) instead of counting the rest of the keyspace as etcd's `count` does,
    // so the scan visits each key once (pages that counted made it quadratic: 1M keys,
    // 25-116 s).
    if lessor.ids().is_empty() {
        return Ok(lessor);
    }
    let mut key = vec![0u8];
    let mut pages = 0usize;
    loop {
        let rr = view
            .range(&RangeOptions {
                key: key.clone(),
                range_end: vec![0],
                limit: LEASE_SCAN_PAGE_KEYS,
                keys_only: true,
                stop_at_limit: true,
                ..Default::default()
            })
            .map_err(|e| format!("scanning keys for leases: {e}"))?;
        pages += 1;
        for kv in &rr.kvs {
            if kv.lease != 0 {
                lessor.attach(kv.lease, &kv.key);
            }
        }
        match rr.kvs.last() {
            Some(last) if rr.more => {
                key = last.key.clone();
                key.push(0);
            }
            _ => break,
        }
    }
    tracing::debug!(pages, "lease keys attached");
    Ok(lessor)
}

/// Restores the auth store from the MVCC metadata and builds the token provider and the
/// bcrypt pool from the flags (docs/security.md, "Start-up").
fn open_auth(store: &MvccStore, config: &Config) -> Result<crate::authz::Auth, String> {
    let auth_store = match store
        .read()
        .try_get_meta(crate::authz::AUTH_META_KEY)
        .map_err(|e| e.to_string())?
    {
        Some(b) => ferrite_auth::AuthStore::decode(&b)
            .map_err(|e| format!("the auth store in the data dir is corrupt: {e}"))?,
        None => ferrite_auth::AuthStore::new(),
    };
    let tokens = ferrite_auth::TokenProvider::from_flags(
        &config.auth.token,
        Duration::from_secs(config.auth.token_ttl_s),
    )
    .map_err(|e| format!("failed to create token provider: {e}"))?;
    let (cost, invalid) = ferrite_auth::effective_bcrypt_cost(config.auth.bcrypt_cost);
    if invalid {
        tracing::warn!(
            "bcrypt-cost" = config.auth.bcrypt_cost,
            "use default bcrypt cost instead of the invalid given cost"
        );
    }
    crate::authz::Auth::new(auth_store, tokens, cost, config.tls.client_cert_auth)
        .map_err(|e| format!("starting the bcrypt threads: {e}"))
}

/// One client (or metrics) listen URL; `https://` gets the TLS acceptor.
fn listen_url(
    url: &str,
    tls: Option<&Arc<ferrite_auth::rustls::ServerConfig>>,
) -> Result<Listen, String> {
    match (url.strip_prefix("https://"), tls) {
        (Some(rest), Some(cfg)) => {
            let mut l = Listen::parse_url(&format!("http://{rest}"))
                .map_err(|e| format!("listen URL {url}: {e}"))?;
            l.url = url.to_string();
            l.wrapper = Some(Arc::new(crate::tls::TlsWrapper::new(
                cfg.clone(),
                url.to_string(),
            )));
            Ok(l)
        }
        _ => Listen::parse_url(url).map_err(|e| format!("listen URL {url}: {e}")),
    }
}

/// Runs the server until it stops. Errors are startup failures (bad data dir, bind failure).
pub fn run(config: Config) -> Result<(), String> {
    let member_dir = config.member_dir();
    let snap_dir = member_dir.join("snap");
    std::fs::create_dir_all(&snap_dir)
        .map_err(|e| format!("cannot create {}: {e}", snap_dir.display()))?;
    let wal_dir = config.wal_dir_effective();
    std::fs::create_dir_all(&wal_dir)
        .map_err(|e| format!("cannot create {}: {e}", wal_dir.display()))?;
    let db_path = snap_dir.join("db");
    let member_initialized = std::fs::metadata(&db_path)
        .map(|m| m.len() > 0)
        .unwrap_or(false);
    crate::logging::log_starting(&config, member_initialized);

    let store = Arc::new(
        MvccStore::open(&db_path, store_options())
            .map_err(|e| format!("opening the store {}: {e}", db_path.display()))?,
    );
    let report = store.open_report();
    if let Some((txn, why)) = &report.discarded {
        // A durable store commit cut by a crash before its fdatasync returned: never
        // relied on (the WAL replays everything after the commit opened instead).
        tracing::warn!(
            path = %db_path.display(),
            "discarded-txn" = txn,
            reason = %why,
            "opened-txn" = report.txn,
            "store: passed over a torn commit; opened the previous durable one"
        );
    } else {
        tracing::debug!(
            path = %db_path.display(),
            txn = report.txn,
            "verified-pages" = report.verified_pages,
            "store opened"
        );
    }

    let peer_urls: Vec<String> = config
        .initial_advertise_peer_urls
        .0
        .iter()
        .map(|u| u.to_string())
        .collect();
    let wal_has_data = std::fs::read_dir(&wal_dir)
        .map(|mut d| d.next().is_some())
        .unwrap_or(false);
    // Built and validated before anything talks to a peer (bad files fail here): a joining
    // member's cluster-info request already dials https:// peer URLs with it.
    let peer_tls = crate::tls::peer_configs(&config)?;
    if peer_tls.is_some() {
        tracing::info!(
            "peer-cert-allowed-cn" = %config.tls.peer_cert_allowed_cn,
            "peer-cert-allowed-hostname" = %config.tls.peer_cert_allowed_hostname,
            "peer-client-cert-auth" = config.tls.peer_client_cert_auth,
            "peer TLS configured"
        );
    }
    let (identity, mut membership, bootstrap) =
        decide_identity(&config, &store, wal_has_data, peer_tls.as_ref())?;
    if config.force_new_cluster {
        // etcd's --force-new-cluster: this member alone, keeping its data. Raft's side (the
        // removal entries) is done by the Raft core at start.
        let me = identity.member_id;
        let others: Vec<u64> = membership
            .members
            .keys()
            .copied()
            .filter(|i| *i != me)
            .collect();
        for o in others {
            membership.members.remove(&o);
            membership.removed.insert(o);
        }
        if let Some(m) = membership.members.get_mut(&me) {
            m.is_learner = false;
        }
    }
    {
        // The membership is stored with the state machine from the first start on.
        let mut w = store.writer();
        w.put_meta(MEMBERSHIP_META_KEY, &membership.encode());
        w.commit(true)
            .map_err(|e| format!("storing the membership: {e}"))?;
    }
    identity.store(&config.member_dir())?;
    let mid = identity.member_id;
    let cid = identity.cluster_id;

    // etcd's minimum lease TTL: ceil(1.5 * election timeout), in seconds.
    let election_ticks = config.election_ticks().max(2) as u32;
    let tick = Duration::from_millis(config.heartbeat_interval_ms.max(1));
    let min_ttl_ms = (3 * election_ticks as u64 / 2) * config.heartbeat_interval_ms;
    let ttl_min = min_ttl_ms.div_ceil(1000).max(1) as i64;
    let lessor = recover_lessor(&store, ttl_min)?;
    let alarms = match store
        .read()
        .try_get_meta(ALARMS_META_KEY)
        .map_err(|e| e.to_string())?
    {
        Some(b) => crate::apply::decode_alarms(&b)?,
        None => Vec::new(),
    };
    let nospace = alarms
        .iter()
        .any(|a| a.alarm == ferrite_net::pb::etcdserverpb::AlarmType::Nospace as i32);

    let auth = open_auth(&store, &config)?;

    let quota = config.quota_backend_bytes_effective() as i64;
    let (to_core, core_rx) = mpsc::unbounded();
    let client_urls: Vec<String> = config
        .advertise_client_urls
        .0
        .iter()
        .map(|u| u.to_string())
        .collect();
    let election_ms = config.election_ticks().max(2) * config.heartbeat_interval_ms;
    let shared = Arc::new(Shared {
        cluster_id: cid,
        member_id: mid,
        member_name: config.name.clone(),
        peer_urls,
        client_urls,
        limits: Limits {
            request_bytes_max: config.max_request_bytes as usize,
            txn_ops_max: config.max_txn_ops as usize,
            quota_backend_bytes: quota,
            // etcd's ReqTimeout: 5 s + 2 x election timeout.
            request_timeout: Duration::from_secs(5) + Duration::from_millis(2 * election_ms),
        },
        store: StoreCell::new(store.clone()),
        to_core,
        lessor: Mutex::new(lessor),
        hub: WatchHub::new(),
        raft_term: AtomicU64::new(0),
        leader: AtomicU64::new(0),
        raft_index: AtomicU64::new(0),
        applied_index: AtomicU64::new(0),
        ready: AtomicBool::new(false),
        alarms: Mutex::new(alarms),
        nospace: AtomicBool::new(nospace),
        revision_hint: AtomicI64::new(0),
        progress_interval: config.experimental.watch_progress_notify_interval,
        auth,
        learner: AtomicBool::new(membership.members.get(&mid).is_some_and(|m| m.is_learner)),
        membership: Mutex::new(membership),
        cluster_token: config.initial_cluster_token.clone(),
        published: AtomicBool::new(false),
    });

    let client_tls = crate::tls::client_server_config(&config)?;
    let mut listen = Vec::new();
    for u in &config.listen_client_urls.0 {
        listen.push(listen_url(&u.to_string(), client_tls.as_ref())?);
    }
    let serve_config = ServeConfig::new(listen, config.cores);
    let core_rx = Arc::new(Mutex::new(Some(core_rx)));
    let core_opts = Arc::new(Mutex::new(Some(CoreOptions {
        tick,
        bootstrap,
        db_path: db_path.clone(),
        lease_ttl_min: ttl_min,
        force_new_cluster: config.force_new_cluster,
        auto_compaction: config.auto_compaction,
        election_ticks,
        snapshot_count: config.snapshot_count,
        pre_vote: config.pre_vote,
        strict_reconfig_check: config.strict_reconfig_check,
        peer_client_tls: peer_tls.as_ref().map(|t| t.client.clone()),
    })));
    let factory_shared = shared.clone();
    let peer_listen: Vec<String> = config
        .listen_peer_urls
        .0
        .iter()
        .map(|u| u.to_string())
        .collect();
    let wal_dir2 = wal_dir.clone();
    // Before serving: a /metrics scrape answered before this would show the store's gauges as 0
    // (metrics.rs test failed that way when clients were served quickly after the publish).
    crate::metrics::register_source(&shared);
    let handle = serve(serve_config, move |core| {
        let shared = factory_shared.clone();
        let core_rx = core_rx.clone();
        let core_opts = core_opts.clone();
        let wal_dir = wal_dir2.clone();
        let peer_listen = peer_listen.clone();
        let peer_tls = peer_tls.clone();
        async move {
            if core.index == 0 {
                let rx = core_rx
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .take()
                    .expect("core 0 starts once");
                let opts = core_opts
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .take()
                    .expect("core 0 starts once");
                let (transport, peer_rx) =
                    crate::transport::start_peer_net(&shared, &peer_listen, peer_tls)
                        .map_err(|e| -> ferrite_net::BoxError { e.into() })?;
                let raft = raft_core::start(shared.clone(), &wal_dir, opts, transport)
                    .await
                    .map_err(|e| -> ferrite_net::BoxError { e.into() })?;
                glommio::spawn_local(raft.run(rx, peer_rx)).detach();
            } else {
                while !shared.ready.load(Ordering::Acquire) {
                    glommio::timer::sleep(Duration::from_millis(2)).await;
                }
            }
            // As etcd, serve clients only once this member has published itself through Raft
            // (so MemberList shows its client URLs to anyone who can reach it). Connections
            // wait in the listening sockets' backlog meanwhile.
            while !shared.published.load(Ordering::Acquire) {
                glommio::timer::sleep(Duration::from_millis(2)).await;
            }
            Ok::<crate::metrics::Metered, ferrite_net::BoxError>(crate::metrics::Metered {
                inner: build_router(&shared),
            })
        }
    })
    .map_err(|e| format!("serving: {e}"))?;
    let metrics_handle = serve_metrics(&config, &shared, client_tls.as_ref())?;

    crate::logging::log_local_member(
        member_initialized,
        mid,
        cid,
        shared.raft_index.load(Ordering::Acquire),
    );
    // Wait until this member published itself through Raft (which needs a leader) before
    // announcing readiness, as etcd does.
    let start = Instant::now();
    while !shared.published.load(Ordering::Acquire) && start.elapsed() < PUBLISH_WAIT_MAX {
        std::thread::sleep(Duration::from_millis(5));
    }
    crate::logging::log_published_local_member(
        mid,
        cid,
        &config.name,
        &config.advertise_client_urls.0,
    );
    crate::logging::log_cluster_version(mid, cid);
    for addr in handle.local_addrs() {
        crate::logging::log_ready_to_serve(&addr.to_string());
    }
    handle.join();
    if let Some(h) = metrics_handle {
        h.shutdown();
    }
    Ok(())
}

/// `--listen-metrics-urls`: `/metrics` and `/health` on their own listener (one core), as
/// etcd serves them.
/// An `https://` metrics URL is served with the client port's TLS configuration, as etcd
/// does.
fn serve_metrics(
    config: &Config,
    shared: &Arc<Shared>,
    client_tls: Option<&Arc<ferrite_auth::rustls::ServerConfig>>,
) -> Result<Option<ferrite_net::ServerHandle>, String> {
    if config.listen_metrics_urls.0.is_empty() {
        return Ok(None);
    }
    let mut listen = Vec::new();
    for u in &config.listen_metrics_urls.0 {
        listen.push(listen_url(&u.to_string(), client_tls).map_err(|e| format!("metrics {e}"))?);
    }
    let shared = shared.clone();
    let handle = serve(ServeConfig::new(listen, 1), move |_core| {
        let shared = shared.clone();
        async move {
            let router = build_metrics_router(&shared);
            Ok::<Router, ferrite_net::BoxError>(router)
        }
    })
    .map_err(|e| format!("serving metrics: {e}"))?;
    for addr in handle.local_addrs() {
        tracing::info!(address = %addr, "serving metrics");
    }
    Ok(Some(handle))
}

/// The service objects the HTTP front (gateway, metrics) calls, all over one `Shared`.
fn gateway_services(
    shared: &Arc<Shared>,
) -> crate::http::Services<
    crate::kv::KvService,
    crate::watch::WatchService,
    crate::lease::LeaseService,
    crate::cluster::ClusterService,
    crate::maintenance::MaintenanceService,
    crate::auth_svc::AuthService,
> {
    crate::http::Services::new(
        Arc::new(crate::kv::KvService {
            shared: shared.clone(),
        }),
        Arc::new(crate::watch::WatchService {
            shared: shared.clone(),
        }),
        Arc::new(crate::lease::LeaseService {
            shared: shared.clone(),
        }),
        Arc::new(crate::cluster::ClusterService {
            shared: shared.clone(),
        }),
        Arc::new(crate::maintenance::MaintenanceService {
            shared: shared.clone(),
        }),
        Arc::new(crate::auth_svc::AuthService {
            shared: shared.clone(),
        }),
    )
}

/// Refuses what a learner does not serve (by gRPC or gateway path; see
/// `Shared::learner_refuses`).
fn learner_guard(shared: &Arc<Shared>) -> ferrite_net::GrpcGuard {
    let shared = shared.clone();
    std::rc::Rc::new(move |path: &str| {
        shared.learner_refuses(path).then(|| {
            let s = crate::errors::EtcdError::NotSupportedForLearner.status();
            (s.code(), s.message().to_string())
        })
    })
}

/// The metrics listener's router: `/metrics` and `/health` only.
pub fn build_metrics_router(shared: &Arc<Shared>) -> Router {
    let services = gateway_services(shared);
    let gateway = std::rc::Rc::new(crate::http::Gateway {
        backend: services,
        request_bytes_max: shared.limits.request_bytes_max,
        guard: Some(learner_guard(shared)),
    });
    crate::http::add_metrics_routes(Router::builder(), gateway).build()
}

/// The per-core router: every etcd gRPC service (plus v3lock and v3election) and the front's
/// HTTP routes (health, version, metrics, JSON gateway) calling the same service objects.
pub fn build_router(shared: &Arc<Shared>) -> Router {
    use ferrite_net::pb::v3electionpb::election_server::ElectionServer;
    use ferrite_net::pb::v3lockpb::lock_server::LockServer;
    let limit = grpc_decoding_limit_bytes(shared.limits.request_bytes_max);
    let services = gateway_services(shared);
    let out = GRPC_RESPONSE_BYTES_MAX;
    let guard = learner_guard(shared);
    let builder = Router::builder()
        .grpc_guard(move |path| guard(path))
        .grpc_message_bytes_max(limit)
        .grpc(
            KvServer::from_arc(services.kv.clone())
                .max_decoding_message_size(limit)
                .max_encoding_message_size(out),
        )
        .grpc(
            WatchServer::from_arc(services.watch.clone())
                .max_decoding_message_size(limit)
                .max_encoding_message_size(out),
        )
        .grpc(
            LeaseServer::from_arc(services.lease.clone())
                .max_decoding_message_size(limit)
                .max_encoding_message_size(out),
        )
        .grpc(
            MaintenanceServer::from_arc(services.maintenance.clone())
                .max_decoding_message_size(limit)
                .max_encoding_message_size(out),
        )
        .grpc(
            ClusterServer::from_arc(services.cluster.clone())
                .max_decoding_message_size(limit)
                .max_encoding_message_size(out),
        )
        .grpc(
            AuthServer::from_arc(services.auth.clone())
                .max_decoding_message_size(limit)
                .max_encoding_message_size(out),
        )
        .grpc(
            LockServer::from_arc(services.lock.clone())
                .max_decoding_message_size(limit)
                .max_encoding_message_size(out),
        )
        .grpc(
            ElectionServer::from_arc(services.election.clone())
                .max_decoding_message_size(limit)
                .max_encoding_message_size(out),
        );
    let gateway = std::rc::Rc::new(crate::http::Gateway {
        backend: services,
        request_bytes_max: shared.limits.request_bytes_max,
        guard: Some(learner_guard(shared)),
    });
    crate::http::add_routes(builder, gateway).build()
}

/// The store's options in the server: forced durable commits are synced off the Raft core
/// (`RaftCore::sync_store_in_background`).
pub(crate) fn store_options() -> StoreOptions {
    let mut o = StoreOptions::default();
    o.db.defer_forced_sync = true;
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_match_etcd_defaults() {
        // etcd 3.4 started with its defaults reports member 8e9e05c52164694d, cluster
        // cdf818194e3a8c32.
        let m = member_id(&["http://localhost:2380".to_string()], "etcd-cluster");
        assert_eq!(format!("{m:x}"), "8e9e05c52164694d");
        assert_eq!(format!("{:x}", cluster_id(&[m])), "cdf818194e3a8c32");
    }
}
