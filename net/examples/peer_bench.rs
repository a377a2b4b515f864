//! Throughput of the peer transport between two PeerNets on 127.0.0.1, each on its own glommio
//! executor thread: messages/s and MB/s for Append messages of a few sizes.
//!
//! cargo run --release -p ferrite-net --example peer_bench [-- COUNT_SCALE]
//!
//! Each run sends `count` Append messages (one entry of `size` bytes) from member 1 to member
//! 2 in batches of 64 (as a Raft loop would hand them over) and times from the first send to
//! the last delivery on the receiver's channel.

use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use ferrite_net::peer::{ClusterInfo, PeerConfig, PeerNet};
use ferrite_raft::{Entry, EntryKind, Message, MessageKind};
use futures_lite::StreamExt;

const CLUSTER: u64 = 0xbe9c;
const BATCH_MSGS: usize = 64;
/// The sender keeps at most this many bytes sent but not yet delivered (a Raft leader's
/// inflight limits play this role), so the per-peer queue never overflows.
const WINDOW_BYTES: usize = 16 << 20;

fn executor(name: &str) -> glommio::LocalExecutor {
    glommio::LocalExecutorBuilder::default()
        .name(name)
        .io_memory(1 << 20)
        .make()
        .expect("executor")
}

fn info() -> Rc<dyn Fn() -> ClusterInfo> {
    Rc::new(|| ClusterInfo {
        cluster_id: CLUSTER,
        members: Vec::new(),
    })
}

fn run(count: usize, size: usize) -> (f64, f64) {
    let (addr_tx, addr_rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel();
    let delivered = Arc::new(AtomicUsize::new(0));
    let delivered_rx = delivered.clone();
    let receiver = std::thread::spawn(move || {
        executor("recv").run(async move {
            let cfg = PeerConfig::new(2, CLUSTER, vec!["127.0.0.1:0".parse().unwrap()]);
            let (net, mut rx) = PeerNet::start(cfg, info()).unwrap();
            addr_tx.send(net.local_addrs()[0]).unwrap();
            let mut n = 0;
            let mut bytes = 0;
            let deadline = Instant::now() + Duration::from_secs(120);
            while n < count && Instant::now() < deadline {
                match rx.next().await {
                    // Not the warm-up heartbeat.
                    Some(m) if m.kind != MessageKind::Append => {}
                    Some(m) => {
                        bytes += m.entries.iter().map(|e| e.data.len()).sum::<usize>();
                        n += 1;
                        delivered_rx.store(n, Ordering::Relaxed);
                    }
                    None => break,
                }
            }
            done_tx.send((Instant::now(), n, bytes)).unwrap();
            net.close().await;
        })
    });
    let addr = addr_rx.recv().unwrap();
    let (start_tx, start_rx) = mpsc::channel();
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let sender = std::thread::spawn(move || {
        executor("send").run(async move {
            let mut cfg = PeerConfig::new(1, CLUSTER, vec!["127.0.0.1:0".parse().unwrap()]);
            cfg.queue_msgs_max = 1 << 16;
            cfg.queue_bytes_max = 512 << 20;
            let (net, _rx) = PeerNet::start(cfg, info()).unwrap();
            net.set_peer(2, vec![format!("http://{addr}")]);
            // Warm the connection up.
            net.send(vec![Message::new(MessageKind::Heartbeat, 1, 2, 1)]);
            glommio::timer::sleep(Duration::from_millis(100)).await;
            let data = vec![0xabu8; size];
            let start = Instant::now();
            start_tx.send(start).unwrap();
            let mut sent = 0;
            while sent < count {
                let n = BATCH_MSGS.min(count - sent);
                let msgs = (0..n)
                    .map(|i| {
                        let mut m = Message::new(MessageKind::Append, 1, 2, 1);
                        m.index = (sent + i) as u64;
                        m.entries = vec![Entry {
                            index: (sent + i + 1) as u64,
                            term: 1,
                            kind: EntryKind::Normal,
                            data: data.clone(),
                        }];
                        m
                    })
                    .collect();
                net.send(msgs);
                sent += n;
                glommio::executor().yield_task_queue_now().await;
                while sent.saturating_sub(delivered.load(Ordering::Relaxed)) * (size + 64)
                    > WINDOW_BYTES
                {
                    glommio::timer::sleep(Duration::from_micros(100)).await;
                }
            }
            while stop_rx.try_recv().is_err() {
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
            assert!(net.take_unreachable().is_empty(), "messages were dropped");
            net.close().await;
        })
    });
    let start = start_rx.recv().unwrap();
    let (end, n, bytes) = done_rx.recv().unwrap();
    let _ = stop_tx.send(());
    sender.join().unwrap();
    receiver.join().unwrap();
    assert_eq!(n, count);
    let secs = (end - start).as_secs_f64();
    (n as f64 / secs, bytes as f64 / secs / 1e6)
}

fn main() {
    let scale: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    println!("| entry bytes | messages | msgs/s | MB/s (entry data) |");
    println!("|---|---|---|---|");
    for (size, count) in [
        (64, 200_000),
        (256, 200_000),
        (4096, 50_000),
        (65536, 4_000),
        (1 << 20, 300),
    ] {
        let count = count * scale;
        let (mps, mbs) = run(count, size);
        println!("| {size} | {count} | {mps:.0} | {mbs:.1} |");
    }
}
