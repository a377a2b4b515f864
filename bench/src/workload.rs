//! The workloads: each client task loops issuing one kind of request until the operation cap or
//! the deadline, timing every request; failures are counted by message and never as successes.

use crate::lean::{self, LeanKv};
use crate::procfs;
use crate::stats::{error_text, kind_report, Recorder, Report};
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, KvClient, PutOptions, Txn, TxnOp,
    TxnOpResponse, WatchOptions,
};
use ferrite_net::pb::etcdserverpb as pb;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// Put to random keys of the key space.
    Put,
    /// Linearizable single-key range on random existing keys.
    RangeLinearizable,
    /// Serializable single-key range on random existing keys.
    RangeSerializable,
    /// Paginated prefix range over the whole key space (a Kubernetes LIST).
    List,
    /// Compare mod_revision then put, else get (Kubernetes GuaranteedUpdate).
    TxnCas,
    /// W watchers on one prefix while clients put; delivery latency, exactly-once, in order.
    WatchFanout,
    /// Lease keep-alive round trips on many leases.
    LeaseKeepalive,
    /// Kubernetes-like: /registry/<resource>/<ns>/<name>, 1-10 KiB values, CAS updates,
    /// creates, deletes, lists and a watch per resource.
    Mixed,
}

impl Workload {
    pub fn name(self) -> &'static str {
        match self {
            Workload::Put => "put",
            Workload::RangeLinearizable => "range-linearizable",
            Workload::RangeSerializable => "range-serializable",
            Workload::List => "list",
            Workload::TxnCas => "txn-cas",
            Workload::WatchFanout => "watch-fanout",
            Workload::LeaseKeepalive => "lease-keepalive",
            Workload::Mixed => "mixed",
        }
    }

    /// The operation kind a summary quotes for this workload.
    pub fn primary(self) -> &'static str {
        match self {
            Workload::Put => "put",
            Workload::RangeLinearizable | Workload::RangeSerializable => "range",
            Workload::List => "list",
            Workload::TxnCas => "txn_cas",
            Workload::WatchFanout => "watch_delivery",
            Workload::LeaseKeepalive => "keepalive",
            Workload::Mixed => "update",
        }
    }

    pub const ALL: [Workload; 8] = [
        Workload::Put,
        Workload::RangeLinearizable,
        Workload::RangeSerializable,
        Workload::List,
        Workload::TxnCas,
        Workload::WatchFanout,
        Workload::LeaseKeepalive,
        Workload::Mixed,
    ];
}

/// Which client library speaks to the server during the measured phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClientKind {
    /// [`crate::lean`]: HTTP/2 with `h2` on current-thread runtimes, for put, range-linearizable,
    /// range-serializable and txn-cas; the other workloads use etcd-client regardless.
    Lean,
    /// The `etcd-client` crate (tonic) on the multi-thread runtime: every workload.
    EtcdClient,
}

impl ClientKind {
    pub fn name(self) -> &'static str {
        match self {
            ClientKind::Lean => "lean",
            ClientKind::EtcdClient => "etcd-client",
        }
    }
}

/// Everything a run needs. `Default` gives small, quick settings.
#[derive(Clone, Debug)]
pub struct Config {
    pub workload: Workload,
    /// The client asked for; see [`Config::client_used`].
    pub client: ClientKind,
    /// Threads (one current-thread runtime each) of the lean client; connections are spread
    /// over them. At most `connections`.
    pub lean_threads: usize,
    pub endpoints: Vec<String>,
    /// Concurrent client tasks, each with at most one request in flight.
    pub clients: usize,
    /// gRPC connections (HTTP/2) shared round-robin by the clients.
    pub connections: usize,
    pub key_size: usize,
    pub value_size: usize,
    /// Number of distinct keys (objects in `mixed`).
    pub key_space: u64,
    /// Cap on measured primary operations.
    pub total_ops_max: u64,
    /// Cap on the measured phase.
    pub duration_max: Duration,
    /// Watchers for `watch-fanout` (per resource in `mixed`).
    pub watchers: usize,
    /// Leases for `lease-keepalive`.
    pub leases: usize,
    /// Page size of `list` and of the lists in `mixed`.
    pub page_size: i64,
    /// Fraction of `mixed` operations that are lists.
    pub list_fraction: f64,
    /// Skip writing the key space before measuring.
    pub no_prepare: bool,
    /// Per-request deadline; a request past it counts as an error "timeout".
    pub op_timeout: Duration,
    pub progress_every: Option<Duration>,
    /// Server processes whose CPU time and RSS are measured.
    pub server_pids: Vec<u32>,
    pub seed: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            workload: Workload::Put,
            client: ClientKind::Lean,
            lean_threads: default_lean_threads(),
            endpoints: vec!["127.0.0.1:2379".into()],
            clients: 16,
            connections: 4,
            key_size: 16,
            value_size: 256,
            key_space: 10_000,
            total_ops_max: u64::MAX,
            duration_max: Duration::from_secs(10),
            watchers: 8,
            leases: 1000,
            page_size: 500,
            list_fraction: 0.01,
            no_prepare: false,
            op_timeout: Duration::from_secs(10),
            progress_every: Some(Duration::from_secs(5)),
            server_pids: vec![],
            seed: 1,
        }
    }
}

/// One lean client thread per core (what etcd-client's multi-thread runtime has by default).
pub fn default_lean_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

impl Config {
    /// The client the measured phase uses: lean where it covers the workload, else etcd-client.
    pub fn client_used(&self) -> ClientKind {
        match (self.client, self.workload) {
            (
                ClientKind::Lean,
                Workload::Put
                | Workload::RangeLinearizable
                | Workload::RangeSerializable
                | Workload::TxnCas,
            ) => ClientKind::Lean,
            _ => ClientKind::EtcdClient,
        }
    }
}

/// A tiny deterministic generator (splitmix64): no dependency, seeded per client.
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0);
        self.next_u64() % n
    }
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n)
            .map(|_| b'a' + (self.next_u64() % 26) as u8)
            .collect()
    }
}

const PREFIX_KV: &str = "/bench/kv/";
const PREFIX_WATCH: &str = "/bench/watch/";
const MIXED_RESOURCES: [&str; 5] = ["pods", "configmaps", "services", "endpointslices", "leases"];
const MIXED_NAMESPACES: u64 = 20;
const MIXED_VALUE_BYTES_MIN: usize = 1024;
const MIXED_VALUE_BYTES_MAX: usize = 10 * 1024;

/// Key number `i` under `prefix`, zero-padded so all keys have `key_size` bytes when possible.
fn key_of(prefix: &str, i: u64, key_size: usize) -> Vec<u8> {
    let digits = key_size.saturating_sub(prefix.len()).max(1);
    format!("{prefix}{i:0digits$}").into_bytes()
}

fn mixed_key(i: u64) -> (usize, Vec<u8>) {
    let r = (i % MIXED_RESOURCES.len() as u64) as usize;
    let ns = (i / MIXED_RESOURCES.len() as u64) % MIXED_NAMESPACES;
    (
        r,
        format!("/registry/{}/ns-{ns:03}/obj-{i:08}", MIXED_RESOURCES[r]).into_bytes(),
    )
}

fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// Shared state of a run: the operation budget and live progress counters.
struct Shared {
    cfg: Config,
    deadline: Instant,
    issued: AtomicU64,
    done_ok: AtomicU64,
    done_err: AtomicU64,
    stop: AtomicBool,
    epoch: Instant,
    /// For exactly-once checks: count, sum and xor-hash of revisions written, per stream
    /// (one stream for watch-fanout, one per resource in mixed).
    written: Vec<WriteLog>,
    /// The last mod_revision seen per key (0: absent), shared by all clients like the
    /// apiserver's watch cache, so CAS conflicts come from real races only.
    mod_revs: Vec<AtomicI64>,
}

#[derive(Default)]
struct WriteLog {
    count: AtomicU64,
    sum: AtomicU64,
    hash: AtomicU64,
    max_rev: AtomicU64,
}

fn rev_hash(rev: u64) -> u64 {
    Rng::new(rev).next_u64()
}

impl WriteLog {
    fn add(&self, rev: u64) {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(rev, Ordering::Relaxed);
        self.hash.fetch_xor(rev_hash(rev), Ordering::Relaxed);
        self.max_rev.fetch_max(rev, Ordering::Relaxed);
    }
}

impl Shared {
    /// Claims one operation from the budget; false once the cap or the deadline is reached.
    fn take(&self) -> bool {
        if self.stop.load(Ordering::Relaxed) || Instant::now() >= self.deadline {
            return false;
        }
        self.issued.fetch_add(1, Ordering::Relaxed) < self.cfg.total_ops_max
    }
    fn ok(&self) {
        self.done_ok.fetch_add(1, Ordering::Relaxed);
    }
    fn err(&self) {
        self.done_err.fetch_add(1, Ordering::Relaxed);
    }
}

async fn timed<T>(
    sh: &Shared,
    fut: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> (Duration, Result<T, String>) {
    timed_text(sh, async { fut.await.map_err(|e| error_text(&e)) }).await
}

pub async fn connect(endpoints: &[String]) -> Result<Client, String> {
    let opts = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(5))
        .with_timeout(Duration::from_secs(30));
    Client::connect(endpoints, Some(opts))
        .await
        .map_err(|e| format!("connecting to {endpoints:?}: {e}"))
}

/// Runs one workload to completion and returns its report.
pub async fn run(cfg: Config) -> Result<Report, String> {
    if cfg.clients == 0 || cfg.connections == 0 || cfg.key_space == 0 {
        return Err("clients, connections and key space must be at least 1".into());
    }
    let mut conns = Vec::with_capacity(cfg.connections);
    for _ in 0..cfg.connections {
        conns.push(connect(&cfg.endpoints).await?);
    }
    let value = Rng::new(cfg.seed).bytes(cfg.value_size);
    let mod_revs: Vec<AtomicI64> = match cfg.workload {
        Workload::TxnCas | Workload::Mixed => {
            (0..cfg.key_space).map(|_| AtomicI64::new(0)).collect()
        }
        _ => Vec::new(),
    };
    if !cfg.no_prepare {
        prepare(&cfg, &conns, &value, &mod_revs).await?;
    }

    let streams = match cfg.workload {
        Workload::WatchFanout => 1,
        Workload::Mixed => MIXED_RESOURCES.len(),
        _ => 0,
    };
    let start_rev = {
        let mut kv = conns[0].kv_client();
        let r = kv.get("/", None).await.map_err(|e| error_text(&e))?;
        r.header().map(|h| h.revision()).unwrap_or(0)
    };

    // Watchers are created (and confirmed) before the clock starts.
    let mut watcher_tasks = Vec::new();
    let watch_done = Arc::new(AtomicBool::new(false));
    let epoch = Instant::now();
    let mut leases = Vec::new();
    if cfg.workload == Workload::LeaseKeepalive {
        let mut lc = conns[0].lease_client();
        for _ in 0..cfg.leases.max(1) {
            let g = lc.grant(60, None).await.map_err(|e| error_text(&e))?;
            leases.push(g.id());
        }
    }

    // The lean client's sockets are opened before the clock starts.
    let lean_sockets = match cfg.client_used() {
        ClientKind::Lean => Some(
            (0..cfg.connections)
                .map(|i| {
                    let ep = &cfg.endpoints[i % cfg.endpoints.len()];
                    lean::connect_tcp(ep, LEAN_CONNECT_TIMEOUT).map(|s| (ep.clone(), s))
                })
                .collect::<Result<Vec<_>, String>>()?,
        ),
        ClientKind::EtcdClient => None,
    };
    let cpu_before: Option<f64> = cpu_total(&cfg.server_pids)?;
    let sh = Arc::new(Shared {
        deadline: Instant::now() + cfg.duration_max,
        issued: AtomicU64::new(0),
        done_ok: AtomicU64::new(0),
        done_err: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        epoch,
        written: (0..streams).map(|_| WriteLog::default()).collect(),
        mod_revs,
        cfg: cfg.clone(),
    });
    let watch_specs: Vec<(usize, Vec<u8>)> = match cfg.workload {
        Workload::WatchFanout => (0..cfg.watchers)
            .map(|_| (0usize, PREFIX_WATCH.as_bytes().to_vec()))
            .collect(),
        Workload::Mixed => (0..cfg.watchers.max(1))
            .flat_map(|_| {
                MIXED_RESOURCES
                    .iter()
                    .enumerate()
                    .map(|(i, r)| (i, format!("/registry/{r}/").into_bytes()))
            })
            .collect(),
        _ => vec![],
    };
    for (n, (stream, prefix)) in watch_specs.into_iter().enumerate() {
        let mut wc = conns[n % conns.len()].watch_client();
        let opts = WatchOptions::new()
            .with_prefix()
            .with_start_revision(start_rev + 1);
        let mut ws = wc
            .watch(prefix.clone(), Some(opts))
            .await
            .map_err(|e| error_text(&e))?;
        match tokio::time::timeout(Duration::from_secs(10), ws.message()).await {
            Ok(Ok(Some(r))) if r.created() => {}
            other => return Err(format!("watch on {prefix:?} not created: {other:?}")),
        }
        let sh2 = sh.clone();
        let done = watch_done.clone();
        watcher_tasks.push(tokio::spawn(async move {
            watcher(sh2, ws, stream, start_rev, done).await
        }));
    }

    let progress = cfg.progress_every.map(|every| {
        let sh = sh.clone();
        tokio::spawn(async move {
            let t0 = Instant::now();
            let mut last = 0;
            loop {
                tokio::time::sleep(every).await;
                let ok = sh.done_ok.load(Ordering::Relaxed);
                eprintln!(
                    "  [{:>5.1}s] {} ok ({:.0}/s now), {} errors",
                    t0.elapsed().as_secs_f64(),
                    ok,
                    (ok - last) as f64 / every.as_secs_f64(),
                    sh.done_err.load(Ordering::Relaxed)
                );
                last = ok;
            }
        })
    });

    let client_cpu_before = procfs::cpu_secs(std::process::id()).ok();
    let measured_start = Instant::now();
    // Every client stops at the deadline; one stuck past it (plus a request timeout) is aborted
    // and reported, so a run is always bounded.
    let hard_stop = sh.deadline + cfg.op_timeout + Duration::from_secs(5);
    let mut total = match lean_sockets {
        Some(socks) => lean_phase(&sh, socks, &value, hard_stop).await?,
        None => etcd_client_phase(&sh, &conns, &value, &leases, hard_stop).await?,
    };
    let elapsed = measured_start.elapsed();
    sh.stop.store(true, Ordering::Relaxed);
    let cpu_after = cpu_total(&cfg.server_pids)?;
    let client_cpu_secs = match (client_cpu_before, procfs::cpu_secs(std::process::id()).ok()) {
        (Some(b), Some(a)) => Some(a - b),
        _ => None,
    };
    if let Some(p) = progress {
        p.abort();
    }

    // Let watchers drain up to the last written revision, then check what they saw.
    watch_done.store(true, Ordering::Relaxed);
    for t in watcher_tasks {
        total.merge(t.await.map_err(|e| format!("watcher task panicked: {e}"))?);
    }
    if !leases.is_empty() {
        let mut lc = conns[0].lease_client();
        for id in leases {
            let _ = lc.revoke(id).await;
        }
    }

    let primary = cfg.workload.primary();
    let mut ops = std::collections::BTreeMap::new();
    for (k, s) in &total.kinds {
        ops.insert(k.to_string(), kind_report(s, elapsed));
    }
    let total_ok = total.kinds.values().map(|s| s.hist.len()).sum();
    let total_errors = total
        .kinds
        .values()
        .map(|s| s.errors.values().sum::<u64>())
        .sum();
    let server_cpu_secs = match (cpu_before, cpu_after) {
        (Some(b), Some(a)) => Some(a - b),
        _ => None,
    };
    let primary_ok = ops.get(primary).map(|k| k.ok).unwrap_or(0);
    let primary_ok = if cfg.workload == Workload::WatchFanout {
        // CPU per put (the write that produced W deliveries).
        ops.get("put").map(|k| k.ok).unwrap_or(0)
    } else {
        primary_ok
    };
    let mut rss = Vec::new();
    for pid in &cfg.server_pids {
        rss.push(procfs::rss_bytes(*pid)?);
    }
    Ok(Report {
        workload: cfg.workload.name().into(),
        endpoints: cfg.endpoints.clone(),
        clients: cfg.clients,
        connections: cfg.connections,
        key_size: cfg.key_size,
        value_size: cfg.value_size,
        key_space: cfg.key_space,
        elapsed_secs: elapsed.as_secs_f64(),
        primary: primary.into(),
        ops,
        counters: total
            .counters
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect(),
        violations: total.violations.clone(),
        total_ok,
        total_errors,
        server_cpu_us_per_op: server_cpu_secs
            .filter(|_| primary_ok > 0)
            .map(|s| s * 1e6 / primary_ok as f64),
        client: cfg.client_used().name().into(),
        client_cpu_secs,
        client_cpu_us_per_op: client_cpu_secs
            .filter(|_| primary_ok > 0)
            .map(|s| s * 1e6 / primary_ok as f64),
        server_cpu_secs,
        server_rss_bytes: rss,
    })
}

/// The clients on etcd-client: tasks on the multi-thread runtime, one per client.
async fn etcd_client_phase(
    sh: &Arc<Shared>,
    conns: &[Client],
    value: &[u8],
    leases: &[i64],
    hard_stop: Instant,
) -> Result<Recorder, String> {
    let cfg = &sh.cfg;
    let mut tasks = Vec::with_capacity(cfg.clients);
    let per_client_leases = leases.len().div_ceil(cfg.clients).max(1);
    for c in 0..cfg.clients {
        let client = conns[c % conns.len()].clone();
        let sh = sh.clone();
        let value = value.to_vec();
        let mine: Vec<i64> = leases
            .iter()
            .skip(c * per_client_leases)
            .take(per_client_leases)
            .copied()
            .collect();
        tasks.push(tokio::spawn(async move {
            let mut rec = Recorder::default();
            let mut rng = Rng::new(client_seed(sh.cfg.seed, c));
            client_loop(&sh, client, &value, &mut rng, &mut rec, mine).await;
            rec
        }));
    }
    join_clients(cfg.workload.primary(), tasks, hard_stop).await
}

/// Waits for the client tasks (on the current runtime); one stuck past `hard_stop` is aborted
/// and counted as an error.
async fn join_clients(
    primary: &'static str,
    tasks: Vec<tokio::task::JoinHandle<Recorder>>,
    hard_stop: Instant,
) -> Result<Recorder, String> {
    let mut total = Recorder::default();
    for t in tasks {
        let abort = t.abort_handle();
        match tokio::time::timeout_at(hard_stop.into(), t).await {
            Ok(r) => total.merge(r.map_err(|e| format!("client task panicked: {e}"))?),
            Err(_) => {
                abort.abort();
                total.err(primary, "client stuck past the deadline, aborted");
            }
        }
    }
    Ok(total)
}

fn client_seed(seed: u64, client: usize) -> u64 {
    seed.wrapping_mul(1_000_003).wrapping_add(client as u64)
}

const LEAN_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The clients on the lean client: `lean_threads` OS threads, each a current-thread runtime
/// driving its share of the connections and their clients (client c uses connection
/// c mod connections, as on etcd-client), so a request never crosses threads.
async fn lean_phase(
    sh: &Arc<Shared>,
    sockets: Vec<(String, std::net::TcpStream)>,
    value: &[u8],
    hard_stop: Instant,
) -> Result<Recorder, String> {
    let connections = sockets.len();
    let threads = sh.cfg.lean_threads.clamp(1, connections);
    let mut per_thread: Vec<Vec<(usize, String, std::net::TcpStream)>> =
        (0..threads).map(|_| Vec::new()).collect();
    for (i, (ep, s)) in sockets.into_iter().enumerate() {
        per_thread[i % threads].push((i, ep, s));
    }
    let value = bytes::Bytes::copy_from_slice(value);
    let mut results = Vec::with_capacity(threads);
    for (t, mine) in per_thread.into_iter().enumerate() {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (sh, value) = (sh.clone(), value.clone());
        std::thread::Builder::new()
            .name(format!("lean-{t}"))
            .spawn(move || {
                let _ = tx.send(lean_thread(&sh, mine, connections, value, hard_stop));
            })
            .map_err(|e| format!("starting lean client thread: {e}"))?;
        results.push(rx);
    }
    let mut total = Recorder::default();
    for rx in results {
        total.merge(
            rx.await
                .map_err(|_| "lean client thread panicked".to_string())??,
        );
    }
    Ok(total)
}

fn lean_thread(
    sh: &Arc<Shared>,
    mine: Vec<(usize, String, std::net::TcpStream)>,
    connections: usize,
    value: bytes::Bytes,
    hard_stop: Instant,
) -> Result<Recorder, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("lean client runtime: {e}"))?;
    rt.block_on(async {
        let mut tasks = Vec::new();
        for (i, ep, sock) in mine {
            let kv = LeanKv::handshake(sock, &ep).await?;
            for c in (i..sh.cfg.clients).step_by(connections) {
                let (sh, kv, value) = (sh.clone(), kv.clone(), value.clone());
                tasks.push(tokio::spawn(async move {
                    let mut rec = Recorder::default();
                    let mut rng = Rng::new(client_seed(sh.cfg.seed, c));
                    lean_loop(&sh, kv, value, &mut rng, &mut rec).await;
                    rec
                }));
            }
        }
        join_clients(sh.cfg.workload.primary(), tasks, hard_stop).await
    })
}

/// Times `fut` (bounded by the op timeout, which is the error "timeout"); errors as text.
async fn timed_text<T>(
    sh: &Shared,
    fut: impl std::future::Future<Output = Result<T, String>>,
) -> (Duration, Result<T, String>) {
    let start = Instant::now();
    let r = match tokio::time::timeout(sh.cfg.op_timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err("timeout".to_string()),
    };
    (start.elapsed(), r)
}

/// One client of the lean client: the same requests and checks as [`client_loop`].
async fn lean_loop(
    sh: &Shared,
    mut kv: LeanKv,
    value: bytes::Bytes,
    rng: &mut Rng,
    rec: &mut Recorder,
) {
    let cfg = &sh.cfg;
    match cfg.workload {
        Workload::Put => {
            let mut req = pb::PutRequest {
                value,
                ..Default::default()
            };
            while sh.take() {
                req.key = key_of(PREFIX_KV, rng.below(cfg.key_space), cfg.key_size).into();
                let (took, r) = timed_text(sh, kv.put(&req)).await;
                record(
                    sh,
                    rec,
                    "put",
                    took,
                    r.and_then(|p| lean::put_revision(&p).map(|_| ())),
                );
            }
        }
        Workload::RangeLinearizable | Workload::RangeSerializable => {
            let mut req = pb::RangeRequest {
                serializable: cfg.workload == Workload::RangeSerializable,
                ..Default::default()
            };
            while sh.take() {
                req.key = key_of(PREFIX_KV, rng.below(cfg.key_space), cfg.key_size).into();
                let (took, r) = timed_text(sh, kv.range(&req)).await;
                let r = r.and_then(|g| {
                    if cfg.no_prepare {
                        return Ok(());
                    }
                    match g.kvs.as_slice() {
                        [kv] if kv.key == req.key => Ok(()),
                        [kv] => Err(format!("asked for {:?}, got {:?}", req.key, kv.key)),
                        kvs => Err(format!("expected 1 kv, got {}", kvs.len())),
                    }
                });
                record(sh, rec, "range", took, r);
            }
        }
        Workload::TxnCas => {
            while sh.take() {
                let i = rng.below(cfg.key_space);
                let key = key_of(PREFIX_KV, i, cfg.key_size).into();
                let known = &sh.mod_revs[i as usize];
                let req = lean::cas_request(key, known.load(Ordering::Relaxed), value.clone());
                let (took, r) = timed_text(sh, kv.txn(&req)).await;
                let r = r.and_then(|t| match lean::cas_outcome(&t)? {
                    lean::CasOutcome::Wrote(rev) => {
                        known.fetch_max(rev, Ordering::Relaxed);
                        Ok(())
                    }
                    lean::CasOutcome::Conflict(current) => {
                        rec.count("cas_conflicts", 1);
                        known.store(current, Ordering::Relaxed);
                        Ok(())
                    }
                });
                record(sh, rec, "txn_cas", took, r);
            }
        }
        other => unreachable!("{other:?} has no lean client (Config::client_used)"),
    }
}

fn cpu_total(pids: &[u32]) -> Result<Option<f64>, String> {
    if pids.is_empty() {
        return Ok(None);
    }
    let mut sum = 0.0;
    for p in pids {
        sum += procfs::cpu_secs(*p)?;
    }
    Ok(Some(sum))
}

/// Writes the key space (not measured), with bounded concurrency.
async fn prepare(
    cfg: &Config,
    conns: &[Client],
    value: &[u8],
    mod_revs: &[AtomicI64],
) -> Result<(), String> {
    let keys: u64 = match cfg.workload {
        Workload::RangeLinearizable
        | Workload::RangeSerializable
        | Workload::List
        | Workload::TxnCas
        | Workload::Mixed => cfg.key_space,
        _ => 0,
    };
    if keys == 0 {
        return Ok(());
    }
    const PREPARE_CONCURRENCY: u64 = 64;
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..PREPARE_CONCURRENCY.min(keys) {
        let mut kv = conns[w as usize % conns.len()].kv_client();
        let cfg = cfg.clone();
        let value = value.to_vec();
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng::new(cfg.seed ^ w);
            let mut i = w;
            let mut revs = Vec::new();
            while i < keys {
                let (key, val) = match cfg.workload {
                    Workload::Mixed => {
                        let n = MIXED_VALUE_BYTES_MIN
                            + rng.below((MIXED_VALUE_BYTES_MAX - MIXED_VALUE_BYTES_MIN) as u64)
                                as usize;
                        (mixed_key(i).1, rng.bytes(n))
                    }
                    _ => (key_of(PREFIX_KV, i, cfg.key_size), value.clone()),
                };
                let p = kv
                    .put(key, val, None)
                    .await
                    .map_err(|e| format!("prepare put: {}", error_text(&e)))?;
                revs.push((i, p.header().map(|h| h.revision()).unwrap_or(0)));
                i += PREPARE_CONCURRENCY;
            }
            Ok::<_, String>(revs)
        }));
    }
    for t in tasks {
        for (i, rev) in t.await.map_err(|e| e.to_string())?? {
            if let Some(slot) = mod_revs.get(i as usize) {
                slot.store(rev, Ordering::Relaxed);
            }
        }
    }
    if cfg.progress_every.is_some() {
        eprintln!(
            "  prepared {keys} keys in {:.1} s",
            t0.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

async fn client_loop(
    sh: &Shared,
    client: Client,
    value: &[u8],
    rng: &mut Rng,
    rec: &mut Recorder,
    leases: Vec<i64>,
) {
    let cfg = &sh.cfg;
    let mut kv = client.kv_client();
    match cfg.workload {
        Workload::Put => {
            while sh.take() {
                let key = key_of(PREFIX_KV, rng.below(cfg.key_space), cfg.key_size);
                let (took, r) = timed(sh, kv.put(key, value.to_vec(), None)).await;
                record(sh, rec, "put", took, r.map(|_| ()));
            }
        }
        Workload::RangeLinearizable | Workload::RangeSerializable => {
            let serializable = cfg.workload == Workload::RangeSerializable;
            while sh.take() {
                let key = key_of(PREFIX_KV, rng.below(cfg.key_space), cfg.key_size);
                let opts = serializable.then(|| GetOptions::new().with_serializable());
                let (took, r) = timed(sh, kv.get(key, opts)).await;
                let r = r.and_then(|g| {
                    if g.kvs().len() == 1 || cfg.no_prepare {
                        Ok(())
                    } else {
                        Err(format!("expected 1 kv, got {}", g.kvs().len()))
                    }
                });
                record(sh, rec, "range", took, r);
            }
        }
        Workload::List => {
            while sh.take() {
                let t0 = Instant::now();
                let r = list(sh, &mut kv, PREFIX_KV.as_bytes(), rec).await;
                let r = r.and_then(|n| {
                    if n == cfg.key_space || cfg.no_prepare {
                        Ok(())
                    } else {
                        Err(format!(
                            "list returned {n} keys, expected {}",
                            cfg.key_space
                        ))
                    }
                });
                record(sh, rec, "list", t0.elapsed(), r);
            }
        }
        Workload::TxnCas => {
            while sh.take() {
                let i = rng.below(cfg.key_space);
                let key = key_of(PREFIX_KV, i, cfg.key_size);
                let rev = sh.mod_revs[i as usize].load(Ordering::Relaxed);
                let (took, r) = timed(sh, kv.txn(cas_txn(&key, rev, value.to_vec()))).await;
                let r = r.map(|t| learn(&t, &sh.mod_revs[i as usize], rec));
                record(sh, rec, "txn_cas", took, r);
            }
        }
        Workload::WatchFanout => {
            while sh.take() {
                let key = key_of(PREFIX_WATCH, rng.below(cfg.key_space), cfg.key_size);
                let mut val = (sh.epoch.elapsed().as_nanos() as u64)
                    .to_le_bytes()
                    .to_vec();
                val.resize(cfg.value_size.max(8), b'v');
                let (took, r) = timed(sh, kv.put(key, val, None)).await;
                let r = r.map(|p| {
                    if let Some(h) = p.header() {
                        sh.written[0].add(h.revision() as u64);
                    }
                });
                record(sh, rec, "put", took, r);
            }
        }
        Workload::LeaseKeepalive => {
            let mut lc = client.lease_client();
            let mut keepers = Vec::new();
            for id in leases {
                // keep_alive() sends the first request and consumes its answer itself.
                match tokio::time::timeout(cfg.op_timeout, lc.keep_alive(id)).await {
                    Ok(Ok(pair)) => keepers.push(pair),
                    Ok(Err(e)) => rec.err("keepalive", &error_text(&e)),
                    Err(_) => rec.err("keepalive", "timeout opening keep-alive stream"),
                }
            }
            if keepers.is_empty() {
                return;
            }
            let mut n = 0;
            while sh.take() {
                let which = n % keepers.len();
                let (k, s) = &mut keepers[which];
                n += 1;
                let t0 = Instant::now();
                let r = async {
                    k.keep_alive().await.map_err(|e| error_text(&e))?;
                    match s.message().await {
                        Ok(Some(resp)) if resp.ttl() > 0 => Ok(()),
                        Ok(Some(resp)) => Err(format!("lease {} expired", resp.id())),
                        Ok(None) => Err("keep-alive stream closed".to_string()),
                        Err(e) => Err(error_text(&e)),
                    }
                };
                let r = match tokio::time::timeout(cfg.op_timeout, r).await {
                    Ok(r) => r,
                    Err(_) => Err("timeout".into()),
                };
                record(sh, rec, "keepalive", t0.elapsed(), r);
            }
        }
        Workload::Mixed => mixed_loop(sh, &mut kv, rng, rec).await,
    }
}

fn record(
    sh: &Shared,
    rec: &mut Recorder,
    kind: &'static str,
    took: Duration,
    r: Result<(), String>,
) {
    match r {
        Ok(()) => {
            rec.ok(kind, took);
            sh.ok();
        }
        Err(e) => {
            rec.err(kind, &e);
            sh.err();
        }
    }
}

/// Kubernetes' GuaranteedUpdate: if mod_revision is still what we read, put; else read it again.
fn cas_txn(key: &[u8], mod_rev: i64, value: Vec<u8>) -> Txn {
    Txn::new()
        .when(vec![Compare::mod_revision(
            key.to_vec(),
            CompareOp::Equal,
            mod_rev,
        )])
        .and_then(vec![TxnOp::put(key.to_vec(), value, None)])
        .or_else(vec![TxnOp::get(key.to_vec(), None)])
}

/// Updates the cached mod_revision of key `i` from a CAS txn's answer; counts conflicts.
fn learn(t: &etcd_client::TxnResponse, known: &AtomicI64, rec: &mut Recorder) {
    if t.succeeded() {
        if let Some(h) = t.header() {
            known.fetch_max(h.revision(), Ordering::Relaxed);
        }
    } else {
        rec.count("cas_conflicts", 1);
        let mut rev = 0;
        for op in t.op_responses() {
            if let TxnOpResponse::Get(g) = op {
                rev = g.kvs().first().map(|kv| kv.mod_revision()).unwrap_or(0);
            }
        }
        known.store(rev, Ordering::Relaxed);
    }
}

/// A paginated prefix list; returns the number of keys seen. Pages are counted.
async fn list(
    sh: &Shared,
    kv: &mut KvClient,
    prefix: &[u8],
    rec: &mut Recorder,
) -> Result<u64, String> {
    let end = prefix_end(prefix);
    let mut from = prefix.to_vec();
    let mut n = 0u64;
    let mut rev = 0i64;
    loop {
        let mut opts = GetOptions::new()
            .with_range(end.clone())
            .with_limit(sh.cfg.page_size);
        if rev != 0 {
            // Later pages read at the first page's revision, as the Kubernetes reflector does.
            opts = opts.with_revision(rev);
        }
        let g =
            match tokio::time::timeout(sh.cfg.op_timeout, kv.get(from.clone(), Some(opts))).await {
                Ok(Ok(g)) => g,
                Ok(Err(e)) => return Err(error_text(&e)),
                Err(_) => return Err("timeout".into()),
            };
        rec.count("list_pages", 1);
        if rev == 0 {
            rev = g.header().map(|h| h.revision()).unwrap_or(0);
        }
        n += g.kvs().len() as u64;
        match g.kvs().last() {
            Some(last) if g.more() => {
                from = last.key().to_vec();
                from.push(0);
            }
            _ => return Ok(n),
        }
    }
}

async fn mixed_loop(sh: &Shared, kv: &mut KvClient, rng: &mut Rng, rec: &mut Recorder) {
    let cfg = &sh.cfg;
    while sh.take() {
        if rng.chance(cfg.list_fraction) {
            let r = MIXED_RESOURCES[rng.below(MIXED_RESOURCES.len() as u64) as usize];
            let t0 = Instant::now();
            let res = list(sh, kv, format!("/registry/{r}/").as_bytes(), rec).await;
            record(sh, rec, "list", t0.elapsed(), res.map(|_| ()));
            continue;
        }
        let i = rng.below(cfg.key_space);
        let (stream, key) = mixed_key(i);
        let size = MIXED_VALUE_BYTES_MIN
            + rng.below((MIXED_VALUE_BYTES_MAX - MIXED_VALUE_BYTES_MIN) as u64) as usize;
        let dice = rng.below(100);
        let known = &sh.mod_revs[i as usize];
        let rev = known.load(Ordering::Relaxed);
        let (kind, txn) = if dice < 90 {
            ("update", cas_txn(&key, rev, rng.bytes(size)))
        } else if dice < 95 {
            // Create: only if absent (create_revision == 0).
            let t = Txn::new()
                .when(vec![Compare::create_revision(
                    key.clone(),
                    CompareOp::Equal,
                    0,
                )])
                .and_then(vec![TxnOp::put(
                    key.clone(),
                    rng.bytes(size),
                    None::<PutOptions>,
                )])
                .or_else(vec![TxnOp::get(key.clone(), None)]);
            ("create", t)
        } else {
            let t = Txn::new()
                .when(vec![Compare::mod_revision(
                    key.clone(),
                    CompareOp::Equal,
                    rev,
                )])
                .and_then(vec![TxnOp::delete(key.clone(), None)])
                .or_else(vec![TxnOp::get(key.clone(), None)]);
            ("delete", t)
        };
        let (took, r) = timed(sh, kv.txn(txn)).await;
        let r = r.map(|t| {
            if t.succeeded() {
                let rev = t.header().map(|h| h.revision()).unwrap_or(0);
                // A delete of an absent key succeeds without writing (mod_revision 0 matched).
                let wrote = match kind {
                    "delete" => t
                        .op_responses()
                        .iter()
                        .any(|o| matches!(o, TxnOpResponse::Delete(d) if d.deleted() > 0)),
                    // An "update" of an absent key (cached 0) is a put: it writes.
                    _ => true,
                };
                if wrote {
                    sh.written[stream].add(rev as u64);
                }
                known.store(if kind == "delete" { 0 } else { rev }, Ordering::Relaxed);
            } else {
                rec.count("cas_conflicts", 1);
                let mut cur = 0;
                for op in t.op_responses() {
                    if let TxnOpResponse::Get(g) = op {
                        cur = g.kvs().first().map(|kv| kv.mod_revision()).unwrap_or(0);
                    }
                }
                known.store(cur, Ordering::Relaxed);
            }
        });
        record(sh, rec, kind, took, r);
    }
}

/// One watcher: checks revisions arrive strictly increasing; at the end checks it saw exactly
/// the revisions written to its stream (count, sum and hash) and records delivery latency.
async fn watcher(
    sh: Arc<Shared>,
    mut ws: etcd_client::WatchStream,
    stream: usize,
    start_rev: i64,
    done: Arc<AtomicBool>,
) -> Recorder {
    let mut rec = Recorder::default();
    let (mut count, mut sum, mut hash) = (0u64, 0u64, 0u64);
    let mut last_rev = start_rev;
    const DRAIN_WAIT: Duration = Duration::from_secs(10);
    let mut drain_deadline: Option<Instant> = None;
    loop {
        if done.load(Ordering::Relaxed) {
            let target = sh.written[stream].max_rev.load(Ordering::Relaxed) as i64;
            if last_rev >= target {
                break;
            }
            let d = *drain_deadline.get_or_insert_with(|| Instant::now() + DRAIN_WAIT);
            if Instant::now() >= d {
                rec.violation(format!(
                    "watcher on stream {stream}: reached revision {last_rev}, writes went to {target}"
                ));
                break;
            }
        }
        let msg = match tokio::time::timeout(Duration::from_millis(100), ws.message()).await {
            Err(_) => continue,
            Ok(Ok(Some(m))) => m,
            Ok(Ok(None)) => {
                rec.violation(format!("watch stream {stream} closed by the server"));
                break;
            }
            Ok(Err(e)) => {
                rec.err("watch_delivery", &error_text(&e));
                break;
            }
        };
        if msg.canceled() {
            rec.violation(format!("watch canceled: {}", msg.cancel_reason()));
            break;
        }
        let now_ns = sh.epoch.elapsed().as_nanos() as u64;
        for ev in msg.events() {
            let Some(kv) = ev.kv() else { continue };
            let rev = kv.mod_revision();
            // Our writes change one key per revision, so revisions must strictly increase.
            if rev <= last_rev {
                rec.violation(format!(
                    "watcher on stream {stream}: revision {rev} after {last_rev} (duplicate or out of order)"
                ));
            }
            last_rev = last_rev.max(rev);
            count += 1;
            sum = sum.wrapping_add(rev as u64);
            hash ^= rev_hash(rev as u64);
            if sh.cfg.workload == Workload::WatchFanout && kv.value().len() >= 8 {
                let sent = u64::from_le_bytes(kv.value()[..8].try_into().expect("8 bytes"));
                rec.ok(
                    "watch_delivery",
                    Duration::from_nanos(now_ns.saturating_sub(sent)),
                );
            } else if sh.cfg.workload == Workload::Mixed {
                rec.count("watch_events", 1);
            }
        }
    }
    let w = &sh.written[stream];
    let (wc, wsum, wh) = (
        w.count.load(Ordering::Relaxed),
        w.sum.load(Ordering::Relaxed),
        w.hash.load(Ordering::Relaxed),
    );
    if (count, sum, hash) != (wc, wsum, wh) {
        rec.violation(format!(
            "watcher on stream {stream}: saw {count} events, {wc} writes acknowledged (sum {sum} vs {wsum}): lost, duplicated or foreign events"
        ));
    }
    rec.count("watch_checked_events", count);
    rec
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_requested_size_and_order() {
        let a = key_of(PREFIX_KV, 5, 16);
        let b = key_of(PREFIX_KV, 40, 16);
        assert_eq!(a.len(), 16);
        assert!(a < b);
        assert_eq!(prefix_end(b"/a/"), b"/a0".to_vec());
        assert_eq!(prefix_end(&[b'a', 0xff]), b"b".to_vec());
    }

    #[test]
    fn rng_is_deterministic_and_bounded() {
        let mut a = Rng::new(7);
        let mut b = Rng::new(7);
        for _ in 0..1000 {
            let x = a.below(10);
            assert_eq!(x, b.below(10));
            assert!(x < 10);
        }
    }
}
