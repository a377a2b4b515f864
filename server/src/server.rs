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
use sha1::{Digest, Sha1};

use crate::config::Config;
use crate::lessor::{Lessor, LEASES_META_KEY};
use crate::raft_core::{self, CoreOptions, ALARMS_META_KEY};
use crate::state::{Limits, Shared};
use crate::transport::NoPeers;
use crate::watch_hub::WatchHub;

/// gRPC responses may be larger than requests (a range returns many keys): etcd's client
/// accepts up to 2 GiB; we cap encoding at this.
pub const GRPC_RESPONSE_BYTES_MAX: usize = 512 * 1024 * 1024;

/// etcd's member id: sha1 of the sorted peer URLs and the cluster token, first 8 bytes BE.
pub fn member_id(peer_urls: &[String], cluster_token: &str) -> u64 {
    let mut urls = peer_urls.to_vec();
    urls.sort();
    let mut h = Sha1::new();
    for u in &urls {
        h.update(u.as_bytes());
    }
    h.update(cluster_token.as_bytes());
    let d = h.finalize();
    u64::from_be_bytes(d[..8].try_into().expect("8 bytes"))
}

/// etcd's cluster id: sha1 of the sorted member ids (8 bytes BE each), first 8 bytes BE.
pub fn cluster_id(member_ids: &[u64]) -> u64 {
    let mut ids = member_ids.to_vec();
    ids.sort_unstable();
    let mut h = Sha1::new();
    for id in ids {
        h.update(id.to_be_bytes());
    }
    let d = h.finalize();
    u64::from_be_bytes(d[..8].try_into().expect("8 bytes"))
}

/// Rebuilds the lessor from the metadata and the keys' lease fields.
fn recover_lessor(store: &MvccStore, ttl_min: i64) -> Result<Lessor, String> {
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
    // Attach keys, scanning the keyspace in pages.
    let mut key = vec![0u8];
    loop {
        let rr = view
            .range(&RangeOptions {
                key: key.clone(),
                range_end: vec![0],
                limit: 10_000,
                keys_only: true,
                ..Default::default()
            })
            .map_err(|e| format!("scanning keys for leases: {e}"))?;
        for kv in &rr.kvs {
            if kv.lease != 0 {
                lessor.attach(kv.lease, &kv.key);
            }
        }
        match rr.kvs.last() {
            Some(last) if rr.more || rr.kvs.len() == 10_000 => {
                key = last.key.clone();
                key.push(0);
            }
            _ => break,
        }
    }
    Ok(lessor)
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
        MvccStore::open(&db_path, StoreOptions::default())
            .map_err(|e| format!("opening the store {}: {e}", db_path.display()))?,
    );

    let peer_urls: Vec<String> = config
        .initial_advertise_peer_urls
        .0
        .iter()
        .map(|u| u.to_string())
        .collect();
    let mid = member_id(&peer_urls, &config.initial_cluster_token);
    let cid = cluster_id(&[mid]);

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

    let quota = config.quota_backend_bytes_effective() as i64;
    let (to_core, core_rx) = mpsc::unbounded();
    let client_urls: Vec<String> = config
        .advertise_client_urls
        .0
        .iter()
        .map(|u| u.to_string())
        .collect();
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
            request_timeout: Duration::from_secs(7),
        },
        store: store.clone(),
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
    });

    let mut listen = Vec::new();
    for u in &config.listen_client_urls.0 {
        listen.push(Listen::parse_url(&u.to_string()).map_err(|e| format!("listen URL {u}: {e}"))?);
    }
    let serve_config = ServeConfig::new(listen, config.cores);
    let core_rx = Arc::new(Mutex::new(Some(core_rx)));
    let core_opts = Arc::new(Mutex::new(Some(CoreOptions {
        tick,
        auto_compaction: config.auto_compaction,
        election_ticks,
        snapshot_count: config.snapshot_count,
        pre_vote: config.pre_vote,
    })));
    let factory_shared = shared.clone();
    let wal_dir2 = wal_dir.clone();
    let handle = serve(serve_config, move |core| {
        let shared = factory_shared.clone();
        let core_rx = core_rx.clone();
        let core_opts = core_opts.clone();
        let wal_dir = wal_dir2.clone();
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
                let raft = raft_core::start(shared.clone(), &wal_dir, opts, Box::new(NoPeers))
                    .await
                    .map_err(|e| -> ferrite_net::BoxError { e.into() })?;
                glommio::spawn_local(raft.run(rx)).detach();
            } else {
                while !shared.ready.load(Ordering::Acquire) {
                    glommio::timer::sleep(Duration::from_millis(2)).await;
                }
            }
            Ok::<crate::metrics::Metered, ferrite_net::BoxError>(crate::metrics::Metered {
                inner: build_router(&shared),
            })
        }
    })
    .map_err(|e| format!("serving: {e}"))?;
    crate::metrics::register_source(&shared);
    let metrics_handle = serve_metrics(&config, &shared)?;

    crate::logging::log_local_member(
        member_initialized,
        mid,
        cid,
        shared.raft_index.load(Ordering::Acquire),
    );
    // Wait for the first leadership before announcing readiness, as etcd does.
    let start = Instant::now();
    while shared.leader.load(Ordering::Acquire) == 0 && start.elapsed() < Duration::from_secs(30) {
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
fn serve_metrics(
    config: &Config,
    shared: &Arc<Shared>,
) -> Result<Option<ferrite_net::ServerHandle>, String> {
    if config.listen_metrics_urls.0.is_empty() {
        return Ok(None);
    }
    let mut listen = Vec::new();
    for u in &config.listen_metrics_urls.0 {
        listen
            .push(Listen::parse_url(&u.to_string()).map_err(|e| format!("metrics URL {u}: {e}"))?);
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

/// The metrics listener's router: `/metrics` and `/health` only.
pub fn build_metrics_router(shared: &Arc<Shared>) -> Router {
    let services = crate::http::Services::new(
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
    );
    let gateway = std::rc::Rc::new(crate::http::Gateway {
        backend: services,
        request_bytes_max: shared.limits.request_bytes_max,
    });
    crate::http::add_metrics_routes(Router::builder(), gateway).build()
}

/// The per-core router: every etcd gRPC service (plus v3lock and v3election) and the front's
/// HTTP routes (health, version, metrics, JSON gateway) calling the same service objects.
pub fn build_router(shared: &Arc<Shared>) -> Router {
    use ferrite_net::pb::v3electionpb::election_server::ElectionServer;
    use ferrite_net::pb::v3lockpb::lock_server::LockServer;
    let limit = grpc_decoding_limit_bytes(shared.limits.request_bytes_max);
    let services = crate::http::Services::new(
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
    );
    let out = GRPC_RESPONSE_BYTES_MAX;
    let builder = Router::builder()
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
    });
    crate::http::add_routes(builder, gateway).build()
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
