//! Entries committed per second through the pure state machine: a simulated 3-node cluster on
//! one thread (instant persistence, a network that delivers each hop one round later), with
//! and without batching and pipelining. Run: `cargo bench -p ferrite-raft --bench commit`.
//! Prints a markdown table (docs/benchmarks.md, "Raft").

use std::collections::BTreeMap;
use std::time::Instant;

use ferrite_raft::*;

const ENTRY_BYTES: usize = 128;
const WINDOW_ENTRIES_MAX: u64 = 4096;
/// Per-message byte limit when batching (about 430 entries of 128 B).
const MSG_BYTES_MAX_BATCHING: u64 = 64 << 10;
/// Network rounds per tick (a 100 ms tick over a ~2 ms round trip).
const ROUNDS_PER_TICK: u64 = 50;

struct Mode {
    name: &'static str,
    batching: bool,
    pipelining: bool,
}

struct Result {
    entries: u64,
    secs: f64,
    rounds: u64,
    messages: u64,
}

fn run(mode: &Mode, entries_total: u64) -> Result {
    let voters = [1u64, 2, 3];
    let mut nodes: BTreeMap<u64, RawNode> = BTreeMap::new();
    for &id in &voters {
        let mut c = Config::new(id);
        c.pre_vote = true;
        c.check_quorum = true;
        c.inflight_msgs_max = if mode.pipelining { 256 } else { 1 };
        c.msg_bytes_max = if mode.batching {
            MSG_BYTES_MAX_BATCHING
        } else {
            1
        };
        c.uncommitted_bytes_max = 1 << 30;
        nodes.insert(
            id,
            RawNode::new(c, PersistedState::bootstrap(&voters)).unwrap(),
        );
    }
    nodes.get_mut(&1).unwrap().campaign_now();
    let mut in_flight: Vec<Message> = Vec::new();
    let payload = vec![7u8; ENTRY_BYTES];
    let mut proposed = 0u64;
    let mut committed = 0u64;
    let mut rounds = 0u64;
    let mut messages = 0u64;
    let start = Instant::now();
    let handle = |n: &mut RawNode, out: &mut Vec<Message>, committed: &mut u64, is_leader: bool| {
        while n.has_ready() {
            let rd = n.ready();
            out.extend(rd.early_messages);
            out.extend(rd.messages);
            if is_leader {
                *committed += rd
                    .committed_entries
                    .iter()
                    .filter(|e| e.data.len() == ENTRY_BYTES)
                    .count() as u64;
            }
            n.advance();
        }
    };
    while committed < entries_total {
        rounds += 1;
        assert!(rounds < 100_000_000);
        let mut next: Vec<Message> = Vec::new();
        for m in in_flight.drain(..) {
            messages += 1;
            let to = m.to;
            let n = nodes.get_mut(&to).unwrap();
            n.step(m).unwrap();
            let lead = n.role() == Role::Leader;
            handle(n, &mut next, &mut committed, lead);
        }
        let leader = nodes.get_mut(&1).unwrap();
        if leader.role() == Role::Leader {
            let room = WINDOW_ENTRIES_MAX.saturating_sub(proposed - committed);
            let want = room.min(entries_total - proposed.min(entries_total));
            if mode.batching {
                if want > 0 {
                    leader
                        .propose_batch(vec![payload.clone(); want as usize])
                        .unwrap();
                    proposed += want;
                }
            } else {
                for _ in 0..want {
                    leader.propose(payload.clone()).unwrap();
                    proposed += 1;
                    handle(leader, &mut next, &mut committed, true);
                }
            }
        }
        for n in nodes.values_mut() {
            let lead = n.role() == Role::Leader;
            handle(n, &mut next, &mut committed, lead);
        }
        for n in nodes.values_mut() {
            if !rounds.is_multiple_of(ROUNDS_PER_TICK) {
                break;
            }
            n.tick();
            let lead = n.role() == Role::Leader;
            handle(n, &mut next, &mut committed, lead);
        }
        in_flight = next;
    }
    Result {
        entries: committed,
        secs: start.elapsed().as_secs_f64(),
        rounds,
        messages,
    }
}

fn main() {
    // `cargo test --benches` runs this with `--bench` absent: keep it short then.
    let quick = !std::env::args().any(|a| a == "--bench");
    let total = if quick { 2_000 } else { 200_000 };
    let modes = [
        Mode {
            name: "no batching, no pipelining",
            batching: false,
            pipelining: false,
        },
        Mode {
            name: "no batching, pipelining",
            batching: false,
            pipelining: true,
        },
        Mode {
            name: "batching, no pipelining",
            batching: true,
            pipelining: false,
        },
        Mode {
            name: "batching + pipelining",
            batching: true,
            pipelining: true,
        },
    ];
    println!("| mode ({ENTRY_BYTES} B entries, 3 nodes, window {WINDOW_ENTRIES_MAX}, {MSG_BYTES_MAX_BATCHING} B messages when batching) | entries committed/s (CPU) | entries per network round | messages per entry |");
    println!("|---|---|---|---|");
    for m in &modes {
        let r = run(m, total);
        println!(
            "| {} | {:.0} | {:.2} | {:.3} |",
            m.name,
            r.entries as f64 / r.secs,
            r.entries as f64 / r.rounds as f64,
            r.messages as f64 / r.entries as f64
        );
    }
}
