//! Every workload of the load generator, briefly, against a real etcd 3.4 started by the crate's
//! own cluster code: no request may fail and the watch checks (exactly-once, in order) must hold.
//! Skipped with a message when /usr/bin/etcd is absent (scripts/test.sh installs it).

use ferrite_bench::cluster::{Cluster, Kind, Spec};
use ferrite_bench::workload::{run, ClientKind, Config, Workload};
use std::path::PathBuf;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_workload_runs_clean_against_etcd() {
    let etcd = PathBuf::from("/usr/bin/etcd");
    if !etcd.exists() {
        eprintln!("skipped: /usr/bin/etcd not installed");
        return;
    }
    let spec = Spec {
        kind: Kind::Etcd,
        binary: etcd,
        nodes: 1,
        work_dir: std::env::temp_dir(),
        pidfile: None,
    };
    let cluster = Cluster::start(&spec).await.expect("etcd starts");
    // Both clients where the lean one covers the workload (it falls back to etcd-client elsewhere).
    let runs = Workload::ALL.iter().flat_map(|&w| {
        [ClientKind::Lean, ClientKind::EtcdClient]
            .into_iter()
            .map(move |c| (w, c))
    });
    for (w, client) in runs {
        let cfg = Config {
            workload: w,
            client,
            endpoints: cluster.endpoints.clone(),
            clients: 8,
            connections: 2,
            key_space: 300,
            duration_max: Duration::from_millis(800),
            watchers: 3,
            leases: 20,
            page_size: 50,
            list_fraction: 0.05,
            progress_every: None,
            server_pids: cluster.pids(),
            ..Config::default()
        };
        let used = cfg.client_used().name();
        let r = run(cfg)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", w.name()));
        assert_eq!(r.client, used);
        assert_eq!(r.total_errors, 0, "{}: {:?}", w.name(), r.ops);
        assert!(r.violations.is_empty(), "{}: {:?}", w.name(), r.violations);
        let p = r
            .primary_stats()
            .unwrap_or_else(|| panic!("{}: no {} ops", w.name(), r.primary));
        assert!(p.ok > 0, "{}: nothing done", w.name());
        assert!(p.p50_us > 0.0 && p.p50_us <= p.p99_us && p.p99_us <= p.max_us);
        assert!(r.server_cpu_secs.is_some() && r.server_rss_bytes[0] > 0);
        if w == Workload::WatchFanout {
            // Every acknowledged put reached every watcher.
            let puts = r.ops["put"].ok;
            assert_eq!(
                r.counters["watch_checked_events"],
                puts * 3,
                "{:?}",
                r.counters
            );
        }
    }
    // An operation cap is honoured exactly, by both clients.
    for client in [ClientKind::Lean, ClientKind::EtcdClient] {
        let r = run(Config {
            workload: Workload::Put,
            client,
            endpoints: cluster.endpoints.clone(),
            clients: 4,
            connections: 1,
            total_ops_max: 37,
            progress_every: None,
            ..Config::default()
        })
        .await
        .unwrap();
        assert_eq!(r.ops["put"].ok, 37);
    }
    // Dropping the cluster kills and reaps its servers.
    let pids = cluster.pids();
    drop(cluster);
    for p in pids {
        assert!(
            !std::path::Path::new(&format!("/proc/{p}")).exists(),
            "pid {p} still there"
        );
    }
}
