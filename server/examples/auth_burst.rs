//! Other clients' put latency during a burst of wrong-password Authenticate calls, against a
//! running server with auth enabled and a user `root` / `rootpw` (ferrite or etcd: the same
//! client code). Put clients authenticate once as root and put in a loop; attackers call
//! Authenticate with a wrong password as fast as the server answers. Two phases of
//! `PHASE_SECONDS` each: without and with the attackers.
//!
//! `cargo run --release -p ferrite --example auth_burst -- http://127.0.0.1:24001 [attackers]`
//! (set up the server with `etcdctl user add root:rootpw; etcdctl role add root;
//! etcdctl user grant-role root root; etcdctl auth enable`).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions};

const PHASE_SECONDS: u64 = 8;
const PUT_CLIENTS: usize = 4;

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort_unstable();
    if v.is_empty() {
        return Duration::ZERO;
    }
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

async fn phase(endpoint: &str, attackers: usize) -> (Vec<Duration>, u64, u64) {
    let stop = Arc::new(AtomicBool::new(false));
    let tried = Arc::new(AtomicU64::new(0));
    let refused_busy = Arc::new(AtomicU64::new(0));
    let mut attack = Vec::new();
    for _ in 0..attackers {
        let (stop, tried, busy) = (stop.clone(), tried.clone(), refused_busy.clone());
        let c = Client::connect([endpoint], None).await.expect("connect");
        attack.push(tokio::spawn(async move {
            let mut a = c.auth_client();
            while !stop.load(Ordering::Relaxed) {
                match a.authenticate("root".into(), "wrong".into()).await {
                    Ok(_) => panic!("a wrong password was accepted"),
                    Err(e) if e.to_string().contains("too many requests") => {
                        busy.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => {}
                }
                tried.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let mut puts = Vec::new();
    for i in 0..PUT_CLIENTS {
        let stop = stop.clone();
        let mut c = Client::connect(
            [endpoint],
            Some(ConnectOptions::new().with_user("root", "rootpw")),
        )
        .await
        .expect("connect as root");
        puts.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                c.put(format!("bench/{i}/{}", n % 1000), "v".repeat(256), None)
                    .await
                    .expect("put");
                lat.push(t.elapsed());
                n += 1;
            }
            lat
        }));
    }
    tokio::time::sleep(Duration::from_secs(PHASE_SECONDS)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for p in puts {
        all.extend(p.await.expect("put task"));
    }
    for a in attack {
        a.await.expect("attack task");
    }
    (
        all,
        tried.load(Ordering::Relaxed),
        refused_busy.load(Ordering::Relaxed),
    )
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let endpoint = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "http://127.0.0.1:24001".into());
    let attackers: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(16);
    println!("| phase | puts/s | put p50 | put p99 | put max | wrong-password calls answered | of which too many requests |");
    println!("|---|---|---|---|---|---|---|");
    for n in [0, attackers] {
        let (mut lat, tried, busy) = phase(&endpoint, n).await;
        let rate = lat.len() as f64 / PHASE_SECONDS as f64;
        let (p50, p99, max) = (pct(&mut lat, 0.5), pct(&mut lat, 0.99), pct(&mut lat, 1.0));
        println!(
            "| {} | {rate:.0} | {:.2} ms | {:.2} ms | {:.1} ms | {tried} | {busy} |",
            if n == 0 {
                "no burst".to_string()
            } else {
                format!("{n} wrong-password clients")
            },
            p50.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3,
            max.as_secs_f64() * 1e3,
        );
    }
}
