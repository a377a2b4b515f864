//! Does a burst of wrong-password attempts stall the other clients of a glommio executor?
//!
//! One glommio executor runs a "client" task that wakes every 1 ms and records how late it
//! woke (its latency floor as seen by any other request on that core), while a burst of
//! Authenticate-style password checks against a bcrypt hash runs on the same executor:
//! - `inline`: `verify_password` called directly in the task (what the server must not do);
//! - `pool`: `HashPool::verify(..).await` (dedicated bcrypt threads, Send oneshot reply).
//!
//! Prints p50 / p99 / max lateness for each, and the burst's wall time.
//!
//! Run: `cargo bench -p ferrite-auth --bench bcrypt_burst` (env BCRYPT_COST, default 10 =
//! etcd's --bcrypt-cost default; BURST, default 20 attempts).

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use ferrite_auth::{hash_password, verify_password, HashPool, HashPoolOptions};
use glommio::{timer::sleep, LocalExecutorBuilder, Placement};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Idle,
    Inline,
    Pool,
}

struct Result {
    mode: Mode,
    samples: Vec<Duration>,
    burst: Duration,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

fn run(mode: Mode, cost: u32, burst: usize) -> Result {
    LocalExecutorBuilder::new(Placement::Unbound)
        .spawn(move || async move {
            let hash = hash_password("right password", cost);
            let pool = HashPool::new(HashPoolOptions {
                threads: 1,
                queue_len_max: 1024,
            })
            .unwrap();
            let samples = Rc::new(RefCell::new(Vec::new()));
            let done = Rc::new(RefCell::new(false));
            let tick = Duration::from_millis(1);
            let ticker = {
                let samples = samples.clone();
                let done = done.clone();
                glommio::spawn_local(async move {
                    while !*done.borrow() {
                        let t0 = Instant::now();
                        sleep(tick).await;
                        samples.borrow_mut().push(t0.elapsed().saturating_sub(tick));
                    }
                })
            };
            sleep(Duration::from_millis(20)).await; // ticker warm-up
            samples.borrow_mut().clear();
            let start = Instant::now();
            let mut tasks = Vec::new();
            for i in 0..burst {
                let hash = hash.clone();
                let fut = pool.verify(format!("wrong password {i}"), hash.clone());
                tasks.push(glommio::spawn_local(async move {
                    match mode {
                        Mode::Inline => {
                            drop(fut);
                            assert!(!verify_password(&format!("wrong password {i}"), &hash));
                        }
                        Mode::Pool => assert!(!fut.await.unwrap()),
                        Mode::Idle => drop(fut),
                    }
                }));
            }
            for t in tasks {
                t.await;
            }
            if mode == Mode::Idle {
                sleep(Duration::from_millis(500)).await;
            }
            let burst_time = start.elapsed();
            *done.borrow_mut() = true;
            ticker.await;
            let mut s = samples.borrow().clone();
            s.sort();
            Result {
                mode,
                samples: s,
                burst: burst_time,
            }
        })
        .unwrap()
        .join()
        .unwrap()
}

fn main() {
    let cost: u32 = std::env::var("BCRYPT_COST")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let burst: usize = std::env::var("BURST")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let t = Instant::now();
    let h = hash_password("x", cost);
    let _ = verify_password("y", &h);
    println!(
        "bcrypt cost {cost}: one hash + one verify took {:?}; burst of {burst} wrong passwords",
        t.elapsed()
    );
    println!("| mode | ticks | p50 lateness | p99 lateness | max lateness | burst wall time |");
    println!("|---|---|---|---|---|---|");
    for mode in [Mode::Idle, Mode::Inline, Mode::Pool] {
        let r = run(mode, cost, burst);
        println!(
            "| {:?} | {} | {:?} | {:?} | {:?} | {:?} |",
            r.mode,
            r.samples.len(),
            percentile(&r.samples, 0.50),
            percentile(&r.samples, 0.99),
            r.samples.last().copied().unwrap_or_default(),
            r.burst
        );
    }
}
