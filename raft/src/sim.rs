//! A deterministic, seeded whole-cluster simulator (test and benchmark support; no I/O).
//!
//! One thread, a virtual clock (a tick is `SUBSTEPS_PER_TICK` network steps), a virtual network
//! that loses, duplicates, delays and reorders messages and cuts links (one direction at a
//! time), and a virtual disk per node that persists a `Ready` only after a random delay: a crash
//! drops everything not yet persisted. Chaos (crashes, restarts, partitions, membership changes,
//! leadership transfers, snapshots) runs for a while, then the network heals and the cluster
//! must make progress.
//!
//! Checked after every step: election safety (one leader per term), log matching (same index
//! and term means same entry and same predecessor term), leader completeness (a new leader has
//! every entry known committed), state-machine safety (every applied prefix hashes the same on
//! every node), commit agreement (no two nodes commit different terms at one index, so no
//! committed entry is lost across crashes), linearizable ReadIndex (a read index covers every
//! commit that happened before the read was asked), and liveness after healing.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use crate::*;

/// Network steps per tick.
pub const SUBSTEPS_PER_TICK: u64 = 4;
/// Lines of trace kept for a failure report.
const TRACE_LINES_MAX: usize = 60;

/// A small deterministic RNG (splitmix64).
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x5DEE_CE66_D1CE_4E5B)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    /// True with probability `pct` percent (may be fractional: per-mille via `pct * 10`).
    pub fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }
}

/// What a run does; derived from the seed by [`SimOptions::from_seed`].
#[derive(Clone, Debug)]
pub struct SimOptions {
    pub seed: u64,
    pub nodes: usize,
    pub chaos_ticks: u64,
    pub heal_ticks_max: u64,
    pub loss_per_mille: u64,
    pub dup_per_mille: u64,
    /// Max extra network delay in substeps.
    pub delay_substeps_max: u64,
    pub disk_delay_substeps_max: u64,
    pub crashes: bool,
    pub partitions: bool,
    pub membership: bool,
    pub transfers: bool,
    pub snapshots: bool,
    pub pre_vote: bool,
    pub check_quorum: bool,
    pub lease_read: bool,
    pub snapshot_chunk_bytes: u64,
    pub inflight_msgs_max: usize,
    pub inflight_bytes_max: u64,
    pub msg_bytes_max: u64,
}

impl SimOptions {
    pub fn from_seed(seed: u64) -> SimOptions {
        let mut r = Rng::new(seed.wrapping_mul(31).wrapping_add(7));
        let membership = r.chance(500);
        let check_quorum = membership || r.chance(600);
        SimOptions {
            seed,
            nodes: 3 + r.below(5) as usize,
            chaos_ticks: 150 + r.below(150),
            heal_ticks_max: 400,
            loss_per_mille: [0, 20, 100, 250][r.below(4) as usize],
            dup_per_mille: [0, 20, 100][r.below(3) as usize],
            delay_substeps_max: [0, 2, 8, 20][r.below(4) as usize],
            disk_delay_substeps_max: [0, 2, 6, 12][r.below(4) as usize],
            crashes: r.chance(600),
            partitions: r.chance(500),
            membership,
            transfers: r.chance(400),
            snapshots: r.chance(500),
            pre_vote: r.chance(700),
            check_quorum,
            lease_read: check_quorum && r.chance(300),
            snapshot_chunk_bytes: [7, 64, 1024][r.below(3) as usize],
            inflight_msgs_max: [1, 4, 64][r.below(3) as usize],
            msg_bytes_max: [1, 200, 1 << 20][r.below(3) as usize],
            inflight_bytes_max: [100, 1000, 1 << 30][r.below(3) as usize],
        }
    }
}

/// Counters from one run.
#[derive(Clone, Debug, Default)]
pub struct SimStats {
    pub ticks: u64,
    pub messages: u64,
    pub committed: u64,
    pub elections: u64,
    pub crashes: u64,
    pub snapshots_installed: u64,
    pub conf_changes: u64,
    pub reads: u64,
}

/// What a node has made durable.
#[derive(Clone, Debug, Default)]
struct Disk {
    hs: HardState,
    snapshot: Snapshot,
    entries: Vec<Entry>,
}

struct SimNode {
    raw: Option<RawNode>,
    disk: Disk,
    pending: Option<(Ready, u64)>,
    /// State machine: last applied index and the hash chain over applied entries.
    applied: u64,
    digest: u64,
    /// Highest commit index already cross-checked.
    commit_checked: u64,
    checked_leader_term: u64,
    restart_at: Option<u64>,
    /// Permanently stopped (removed from the cluster).
    stopped: bool,
}

struct InFlight {
    at: u64,
    seq: u64,
    msg: Message,
}

/// The simulated cluster.
pub struct Sim {
    pub opts: SimOptions,
    rng: Rng,
    now: u64,
    nodes: BTreeMap<NodeId, SimNode>,
    net: Vec<InFlight>,
    net_seq: u64,
    blocked: BTreeSet<(NodeId, NodeId)>,
    healed: bool,
    next_id: NodeId,
    next_payload: u64,
    // checker state
    leaders: HashMap<u64, NodeId>,
    entries_seen: HashMap<(u64, u64), (u64, u64)>,
    committed_terms: Vec<u64>,
    digests: Vec<u64>,
    reads_asked: HashMap<u64, u64>,
    trace: VecDeque<String>,
    pub stats: SimStats,
}

fn entry_hash(e: &Entry) -> u64 {
    // FNV-1a over kind and data.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let kind = match e.kind {
        EntryKind::Normal => 1u8,
        EntryKind::ConfChange => 2u8,
    };
    for b in std::iter::once(kind).chain(e.data.iter().copied()) {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn chain(digest: u64, e: &Entry) -> u64 {
    (digest ^ entry_hash(e) ^ e.term.rotate_left(17) ^ e.index.rotate_left(41))
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .rotate_left(23)
}

/// Snapshot image: applied index, digest, then padding so images need several chunks.
fn snapshot_image(applied: u64, digest: u64) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&applied.to_le_bytes());
    v.extend_from_slice(&digest.to_le_bytes());
    v.resize(16 + (applied % 97) as usize * 3, 0xAB);
    v
}

fn parse_image(data: &[u8]) -> Option<(u64, u64)> {
    if data.len() < 16 {
        return None;
    }
    let a = u64::from_le_bytes(data[0..8].try_into().ok()?);
    let d = u64::from_le_bytes(data[8..16].try_into().ok()?);
    Some((a, d))
}

type SimResult<T> = Result<T, String>;

impl Sim {
    pub fn new(opts: SimOptions) -> Sim {
        let mut sim = Sim {
            rng: Rng::new(opts.seed),
            now: 0,
            nodes: BTreeMap::new(),
            net: Vec::new(),
            net_seq: 0,
            blocked: BTreeSet::new(),
            healed: false,
            next_id: opts.nodes as u64 + 1,
            next_payload: 1,
            leaders: HashMap::new(),
            entries_seen: HashMap::new(),
            committed_terms: vec![0],
            digests: vec![0],
            reads_asked: HashMap::new(),
            trace: VecDeque::new(),
            stats: SimStats::default(),
            opts,
        };
        let voters: Vec<NodeId> = (1..=sim.opts.nodes as u64).collect();
        for &id in &voters {
            let b = PersistedState::bootstrap(&voters);
            let disk = Disk {
                hs: b.hard_state,
                snapshot: Snapshot {
                    meta: b.snapshot.meta,
                    data: snapshot_image(0, 0),
                },
                entries: b.entries,
            };
            sim.add_node(id, disk);
        }
        sim
    }

    fn config(&self, id: NodeId) -> Config {
        let mut c = Config::new(id);
        c.election_ticks = 10;
        c.heartbeat_ticks = 2;
        c.pre_vote = self.opts.pre_vote;
        c.check_quorum = self.opts.check_quorum;
        c.lease_read = self.opts.lease_read;
        c.snapshot_chunk_bytes = self.opts.snapshot_chunk_bytes;
        c.inflight_msgs_max = self.opts.inflight_msgs_max;
        c.msg_bytes_max = self.opts.msg_bytes_max;
        c.inflight_bytes_max = self.opts.inflight_bytes_max;
        c.seed = self.opts.seed;
        c
    }

    fn add_node(&mut self, id: NodeId, disk: Disk) {
        let mut n = SimNode {
            raw: None,
            disk,
            pending: None,
            applied: 0,
            digest: 0,
            commit_checked: 0,
            checked_leader_term: 0,
            restart_at: None,
            stopped: false,
        };
        let raw = Self::boot(self.config(id), &mut n).expect("boot");
        n.raw = Some(raw);
        self.nodes.insert(id, n);
    }

    fn boot(mut cfg: Config, n: &mut SimNode) -> SimResult<RawNode> {
        let (a, d) = parse_image(&n.disk.snapshot.data).ok_or("bad snapshot image")?;
        if a != n.disk.snapshot.meta.index {
            return Err(format!(
                "snapshot image at {a} labelled {}",
                n.disk.snapshot.meta.index
            ));
        }
        n.applied = a;
        n.digest = d;
        n.commit_checked = a;
        n.pending = None;
        cfg.applied = a;
        RawNode::new(
            cfg,
            PersistedState {
                hard_state: n.disk.hs,
                snapshot: n.disk.snapshot.clone(),
                entries: n.disk.entries.clone(),
            },
        )
        .map_err(|e| format!("restart failed: {e}"))
    }

    fn trace(&mut self, s: String) {
        if self.trace.len() >= TRACE_LINES_MAX {
            self.trace.pop_front();
        }
        self.trace.push_back(format!("[t={}] {s}", self.now));
    }

    fn fail(&self, what: String) -> String {
        let mut s = format!(
            "raft sim seed {} failed at substep {}: {what}\n  options: {:?}\n  last events:\n",
            self.opts.seed, self.now, self.opts
        );
        for l in &self.trace {
            s.push_str("    ");
            s.push_str(l);
            s.push('\n');
        }
        s.push_str(&format!(
            "  replay: RAFT_SIM_SEED={} cargo test -p ferrite-raft --release sim_replay -- --nocapture\n",
            self.opts.seed
        ));
        s
    }

    fn send(&mut self, m: Message) {
        self.stats.messages += 1;
        if self.blocked.contains(&(m.from, m.to)) {
            return;
        }
        if !self.healed && self.rng.chance(self.opts.loss_per_mille) {
            return;
        }
        let copies = if !self.healed && self.rng.chance(self.opts.dup_per_mille) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let d = if self.healed {
                self.rng.below(2)
            } else {
                self.rng.below(self.opts.delay_substeps_max + 1)
            };
            self.net_seq += 1;
            self.net.push(InFlight {
                at: self.now + 1 + d,
                seq: self.net_seq,
                msg: m.clone(),
            });
        }
    }

    fn alive(&self, id: NodeId) -> bool {
        self.nodes.get(&id).is_some_and(|n| n.raw.is_some())
    }

    /// Runs the whole scenario for this seed.
    pub fn run(&mut self) -> SimResult<SimStats> {
        let chaos_end = self.opts.chaos_ticks * SUBSTEPS_PER_TICK;
        while self.now < chaos_end {
            self.substep(true)?;
        }
        self.heal()?;
        Ok(self.stats.clone())
    }

    fn substep(&mut self, chaos: bool) -> SimResult<()> {
        self.now += 1;
        if chaos {
            self.chaos()?;
        }
        // Restarts due.
        let due: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|(_, n)| {
                n.raw.is_none() && !n.stopped && n.restart_at.is_some_and(|t| t <= self.now)
            })
            .map(|(&id, _)| id)
            .collect();
        for id in due {
            self.restart(id)?;
        }
        if self.now.is_multiple_of(SUBSTEPS_PER_TICK) {
            let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
            for id in ids {
                if let Some(raw) = self.nodes.get_mut(&id).and_then(|n| n.raw.as_mut()) {
                    raw.tick();
                }
                self.drive(id)?;
            }
            self.stats.ticks += 1;
        }
        // Deliver due messages in (time, random) order.
        let now = self.now;
        let mut due: Vec<InFlight> = Vec::new();
        let mut keep = Vec::with_capacity(self.net.len());
        for f in self.net.drain(..) {
            if f.at <= now {
                due.push(f);
            } else {
                keep.push(f);
            }
        }
        self.net = keep;
        due.sort_by_key(|f| (f.at, f.seq));
        for f in due {
            let to = f.msg.to;
            if let Some(raw) = self.nodes.get_mut(&to).and_then(|n| n.raw.as_mut()) {
                raw.step(f.msg).map_err(|e| format!("step: {e}"))?;
                self.drive(to)?;
            }
        }
        // Disks that finished.
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for id in ids {
            self.drive(id)?;
        }
        self.check_all()
    }

    fn chaos(&mut self) -> SimResult<()> {
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        let pick = ids[self.rng.below(ids.len() as u64) as usize];
        // Proposals.
        if self.rng.chance(150) {
            let p = self.next_payload;
            self.next_payload += 1;
            if let Some(raw) = self.nodes.get_mut(&pick).and_then(|n| n.raw.as_mut()) {
                let _ = raw.propose(p.to_le_bytes().to_vec());
            }
            self.drive(pick)?;
        }
        if self.rng.chance(30) {
            self.read(pick)?;
        }
        if self.opts.crashes && self.rng.chance(4) && self.alive(pick) {
            self.crash(pick);
            let back = self.now + 1 + self.rng.below(80 * SUBSTEPS_PER_TICK);
            self.nodes.get_mut(&pick).expect("node").restart_at = Some(back);
        }
        // Leaders crash more often, soon after replicating (the interesting moment for lost
        // unsynced entries and Figure 8 of the Raft paper).
        if self.opts.crashes && self.rng.chance(3) {
            if let Some(l) = self.current_leader() {
                self.crash(l);
                let back = self.now + 1 + self.rng.below(20 * SUBSTEPS_PER_TICK);
                self.nodes.get_mut(&l).expect("node").restart_at = Some(back);
            }
        }
        // Isolate the leader: the old leader must stop serving reads and writes in time.
        if self.opts.partitions && self.rng.chance(2) {
            if let Some(l) = self.current_leader() {
                for &o in &ids {
                    if o != l {
                        self.blocked.insert((l, o));
                        self.blocked.insert((o, l));
                    }
                }
                self.trace(format!("isolate leader {l}"));
            }
        }
        if self.opts.partitions && self.rng.chance(40) {
            // Reads at whoever believes it leads (possibly a deposed leader).
            let leaders: Vec<NodeId> = self
                .nodes
                .iter()
                .filter(|(_, n)| n.raw.as_ref().is_some_and(|r| r.role() == Role::Leader))
                .map(|(&id, _)| id)
                .collect();
            for l in leaders {
                self.read(l)?;
            }
        }
        if self.opts.partitions && self.rng.chance(6) {
            if self.rng.chance(300) {
                self.blocked.clear();
                self.trace("partition healed".into());
            } else {
                let a = ids[self.rng.below(ids.len() as u64) as usize];
                let b = ids[self.rng.below(ids.len() as u64) as usize];
                if a != b {
                    self.blocked.insert((a, b));
                    if self.rng.chance(500) {
                        self.blocked.insert((b, a));
                    }
                    self.trace(format!("cut {a}->{b}"));
                }
            }
        }
        if self.opts.transfers && self.rng.chance(3) {
            if let Some(l) = self.current_leader() {
                let voters = self.nodes[&l]
                    .raw
                    .as_ref()
                    .expect("alive")
                    .conf_state()
                    .voters
                    .clone();
                let t = voters[self.rng.below(voters.len() as u64) as usize];
                self.trace(format!("transfer {l} -> {t}"));
                let _ = self
                    .nodes
                    .get_mut(&l)
                    .and_then(|n| n.raw.as_mut())
                    .expect("alive")
                    .transfer_leader(t);
                self.drive(l)?;
            }
        }
        if self.opts.membership && self.rng.chance(4) {
            self.membership_change()?;
        }
        if self.opts.snapshots && self.rng.chance(20) && self.alive(pick) {
            self.compact(pick);
        }
        Ok(())
    }

    fn current_leader(&self) -> Option<NodeId> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.raw.as_ref().is_some_and(|r| r.role() == Role::Leader))
            .max_by_key(|(_, n)| n.raw.as_ref().map(|r| r.term()))
            .map(|(&id, _)| id)
    }

    fn membership_change(&mut self) -> SimResult<()> {
        let Some(l) = self.current_leader() else {
            return Ok(());
        };
        let conf = self.nodes[&l]
            .raw
            .as_ref()
            .expect("alive")
            .conf_state()
            .clone();
        let cc = if let Some(&learner) = conf.learners.first() {
            ConfChange {
                kind: ConfChangeKind::AddVoter,
                node_id: learner,
                context: Vec::new(),
            }
        } else if conf.voters.len() > 3 && self.rng.chance(600) {
            let v = conf.voters[self.rng.below(conf.voters.len() as u64) as usize];
            ConfChange {
                kind: ConfChangeKind::Remove,
                node_id: v,
                context: Vec::new(),
            }
        } else if conf.voters.len() + conf.learners.len() < 7 && self.nodes.len() < 12 {
            let id = self.next_id;
            self.next_id += 1;
            // A joining node starts empty and waits for the leader.
            let disk = Disk {
                hs: HardState::default(),
                snapshot: Snapshot {
                    meta: SnapshotMeta::default(),
                    data: snapshot_image(0, 0),
                },
                entries: Vec::new(),
            };
            self.add_node(id, disk);
            ConfChange {
                kind: ConfChangeKind::AddLearner,
                node_id: id,
                context: b"peer-url".to_vec(),
            }
        } else {
            return Ok(());
        };
        let res = self
            .nodes
            .get_mut(&l)
            .and_then(|n| n.raw.as_mut())
            .expect("alive")
            .propose_conf_change(&cc);
        self.trace(format!("leader {l} proposes {cc:?}: {res:?}"));
        self.drive(l)
    }

    fn compact(&mut self, id: NodeId) {
        let n = self.nodes.get_mut(&id).expect("node");
        if n.pending.is_some() {
            return;
        }
        let raw = n.raw.as_mut().expect("alive");
        if n.applied <= n.disk.snapshot.meta.index + 5 {
            return;
        }
        let image = snapshot_image(n.applied, n.digest);
        if raw.compact(n.applied, image).is_err() {
            return;
        }
        let snap = raw.snapshot().expect("just made").clone();
        // The caller makes the snapshot durable, then drops the covered log prefix.
        n.disk.entries.retain(|e| e.index > snap.meta.index);
        n.disk.snapshot = snap;
    }

    fn read(&mut self, id: NodeId) -> SimResult<()> {
        let max_commit = self
            .nodes
            .values()
            .filter_map(|n| n.raw.as_ref().map(|r| r.committed()))
            .max()
            .unwrap_or(0);
        let rid = self.next_payload;
        self.next_payload += 1;
        if let Some(raw) = self.nodes.get_mut(&id).and_then(|n| n.raw.as_mut()) {
            if raw.read_index(rid.to_le_bytes().to_vec()).is_ok() {
                self.reads_asked.insert(rid, max_commit);
            }
        }
        self.drive(id)
    }

    fn crash(&mut self, id: NodeId) {
        let n = self.nodes.get_mut(&id).expect("node");
        n.raw = None;
        n.pending = None;
        self.stats.crashes += 1;
        self.trace(format!("crash {id}"));
    }

    fn restart(&mut self, id: NodeId) -> SimResult<()> {
        let cfg = self.config(id);
        let n = self.nodes.get_mut(&id).expect("node");
        n.restart_at = None;
        let raw = match Self::boot(cfg, n) {
            Ok(r) => r,
            Err(e) => return Err(self.fail(format!("node {id}: {e}"))),
        };
        // No committed entry lost: the durable log must still agree with every commit known.
        let n = self.nodes.get_mut(&id).expect("node");
        let commit = raw.committed();
        n.raw = Some(raw);
        self.trace(format!("restart {id} (commit {commit})"));
        self.check_commits(id)
    }

    /// Handles ready/advance for one node: early messages at once, persistence after a
    /// random disk delay, then messages and apply.
    fn drive(&mut self, id: NodeId) -> SimResult<()> {
        for _ in 0..16 {
            let Some(n) = self.nodes.get_mut(&id) else {
                return Ok(());
            };
            let Some(raw) = n.raw.as_mut() else {
                return Ok(());
            };
            if let Some((_, due)) = &n.pending {
                if *due > self.now {
                    return Ok(());
                }
                let (rd, _) = n.pending.take().expect("pending");
                self.complete(id, rd)?;
                continue;
            }
            if !raw.has_ready() {
                return Ok(());
            }
            let mut rd = raw.ready();
            let delay = if self.healed {
                0
            } else {
                self.rng.below(self.opts.disk_delay_substeps_max + 1)
            };
            self.check_ready(id, &rd)?;
            let sent_early = !rd.early_messages.is_empty() && !rd.entries.is_empty();
            for m in std::mem::take(&mut rd.early_messages) {
                self.send(m);
            }
            // The sharpest crash point: a leader sent new entries but has not persisted them.
            if sent_early && !self.healed && self.opts.crashes && self.rng.chance(8) {
                self.crash(id);
                let back = self.now + 1 + self.rng.below(30 * SUBSTEPS_PER_TICK);
                self.nodes.get_mut(&id).expect("node").restart_at = Some(back);
                return Ok(());
            }
            let due = self.now + delay;
            self.nodes.get_mut(&id).expect("node").pending = Some((rd, due));
        }
        Ok(())
    }

    fn check_ready(&mut self, id: NodeId, rd: &Ready) -> SimResult<()> {
        let raw = self.nodes[&id].raw.as_ref().expect("alive");
        // Log matching: (index, term) determines the entry and its predecessor's term.
        for (k, e) in rd.entries.iter().enumerate() {
            let prev_term = if k == 0 {
                match raw.log_term(e.index - 1) {
                    Some(t) => t,
                    None => continue,
                }
            } else {
                rd.entries[k - 1].term
            };
            let v = (entry_hash(e), prev_term);
            match self.entries_seen.get(&(e.index, e.term)) {
                Some(&seen) if seen != v => {
                    return Err(self.fail(format!(
                        "log matching: node {id} entry ({}, {}) differs from another node's",
                        e.index, e.term
                    )))
                }
                Some(_) => {}
                None => {
                    self.entries_seen.insert((e.index, e.term), v);
                }
            }
        }
        if let Some(ss) = rd.soft_state {
            self.trace(format!(
                "node {id} {:?} leader {} term {}",
                ss.role,
                ss.leader,
                raw.term()
            ));
        }
        Ok(())
    }

    fn complete(&mut self, id: NodeId, mut rd: Ready) -> SimResult<()> {
        let n = self.nodes.get_mut(&id).expect("node");
        // Persist: snapshot, entries, hard state.
        if let Some(s) = &rd.snapshot {
            n.disk.snapshot = s.clone();
            n.disk.entries.clear();
        }
        if let Some(first) = rd.entries.first() {
            let fi = first.index;
            n.disk.entries.retain(|e| e.index < fi);
            n.disk.entries.extend(rd.entries.iter().cloned());
        }
        if let Some(hs) = rd.hard_state {
            n.disk.hs = hs;
        }
        // Apply.
        if let Some(s) = &rd.snapshot {
            let (a, d) = parse_image(&s.data).ok_or("bad image")?;
            if a != s.meta.index {
                return Err(self.fail(format!("snapshot image {a} != meta {}", s.meta.index)));
            }
            let n = self.nodes.get_mut(&id).expect("node");
            n.applied = a;
            n.digest = d;
            self.stats.snapshots_installed += 1;
            if let Some(&want) = self.digests.get(a as usize) {
                if want != d {
                    return Err(self.fail(format!(
                        "node {id} installed a snapshot at {a} that differs"
                    )));
                }
            }
        }
        for e in &rd.committed_entries {
            let applied = self.nodes[&id].applied;
            if e.index != applied + 1 {
                return Err(self.fail(format!("node {id} applies {} after {applied}", e.index)));
            }
            let n = self.nodes.get_mut(&id).expect("node");
            n.applied = e.index;
            n.digest = chain(n.digest, e);
            let (i, d) = (n.applied, n.digest);
            if e.kind == EntryKind::ConfChange {
                self.stats.conf_changes += 1;
            }
            if (i as usize) < self.digests.len() {
                if self.digests[i as usize] != d {
                    return Err(self.fail(format!(
                        "state machine safety: node {id} applied a different entry at {i}"
                    )));
                }
            } else if i as usize == self.digests.len() {
                self.digests.push(d);
                self.stats.committed += 1;
            }
        }
        for rs in std::mem::take(&mut rd.read_states) {
            let rid = u64::from_le_bytes(rs.context.as_slice().try_into().map_err(|_| "ctx")?);
            if let Some(&min) = self.reads_asked.get(&rid) {
                if rs.index < min {
                    return Err(self.fail(format!(
                        "stale read: node {id} got read index {} but {min} was committed before the read",
                        rs.index
                    )));
                }
                self.stats.reads += 1;
            }
        }
        for m in std::mem::take(&mut rd.messages) {
            self.send(m);
        }
        let n = self.nodes.get_mut(&id).expect("node");
        n.raw.as_mut().expect("alive").advance();
        Ok(())
    }

    fn check_commits(&mut self, id: NodeId) -> SimResult<()> {
        let n = self.nodes.get_mut(&id).expect("node");
        let Some(raw) = n.raw.as_ref() else {
            return Ok(());
        };
        let commit = raw.committed();
        let from = n.commit_checked.max(raw.first_index().saturating_sub(1)) + 1;
        let mut bad = None;
        for i in from..=commit {
            let Some(t) = raw.log_term(i) else { continue };
            if (i as usize) < self.committed_terms.len() {
                if self.committed_terms[i as usize] != t {
                    bad = Some((i, t));
                    break;
                }
            } else if i as usize == self.committed_terms.len() {
                self.committed_terms.push(t);
            }
        }
        n.commit_checked = n.commit_checked.max(commit);
        if let Some((i, t)) = bad {
            return Err(self.fail(format!(
                "node {id} committed term {t} at {i}, another node committed term {}",
                self.committed_terms[i as usize]
            )));
        }
        Ok(())
    }

    fn check_all(&mut self) -> SimResult<()> {
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for id in ids {
            self.check_commits(id)?;
            let n = &self.nodes[&id];
            let Some(raw) = n.raw.as_ref() else { continue };
            if raw.role() != Role::Leader {
                continue;
            }
            let term = raw.term();
            // Election safety.
            match self.leaders.get(&term) {
                Some(&other) if other != id => {
                    return Err(self.fail(format!("two leaders in term {term}: {other} and {id}")))
                }
                Some(_) => {}
                None => {
                    self.leaders.insert(term, id);
                    self.stats.elections += 1;
                }
            }
            // Leader completeness: every entry known committed is in the new leader's log.
            if n.checked_leader_term != term {
                let known = self.committed_terms.len() as u64 - 1;
                if raw.last_index() < known {
                    return Err(self.fail(format!(
                        "leader completeness: leader {id} term {term} ends at {} < commit {known}",
                        raw.last_index()
                    )));
                }
                for i in raw.first_index()..=known {
                    if raw.log_term(i) != Some(self.committed_terms[i as usize]) {
                        return Err(self.fail(format!(
                            "leader completeness: leader {id} term {term} lacks committed entry {i}"
                        )));
                    }
                }
                self.nodes.get_mut(&id).expect("node").checked_leader_term = term;
            }
        }
        Ok(())
    }

    /// Heals everything and requires progress: a marker proposed after healing must be applied
    /// by every member.
    fn heal(&mut self) -> SimResult<()> {
        self.healed = true;
        self.blocked.clear();
        self.trace("heal".into());
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for &id in &ids {
            let n = &self.nodes[&id];
            if n.raw.is_none() && !n.stopped {
                self.restart(id)?;
            }
        }
        let deadline = self.now + self.opts.heal_ticks_max * SUBSTEPS_PER_TICK;
        let mut marker: Option<u64> = None;
        let mut marker_at = 0;
        while self.now < deadline {
            self.substep(false)?;
            // Stop nodes that are no longer members (as a server stops a removed member).
            if let Some(l) = self.current_leader() {
                let conf = self.nodes[&l]
                    .raw
                    .as_ref()
                    .expect("alive")
                    .conf_state()
                    .clone();
                for n in self.nodes.values_mut() {
                    if n.raw.as_ref().is_some_and(|r| r.is_removed()) {
                        n.stopped = true;
                        n.raw = None;
                    }
                }
                if marker.is_none() || self.now > marker_at + 60 * SUBSTEPS_PER_TICK {
                    let target = self.nodes[&l].raw.as_ref().expect("alive").last_index() + 1;
                    let p = self.next_payload;
                    self.next_payload += 1;
                    let raw = self
                        .nodes
                        .get_mut(&l)
                        .and_then(|n| n.raw.as_mut())
                        .expect("alive");
                    if raw.propose(p.to_le_bytes().to_vec()).is_ok() {
                        marker = Some(target);
                        marker_at = self.now;
                    }
                    self.drive(l)?;
                }
                if let Some(mk) = marker {
                    let done = conf.voters.iter().chain(conf.learners.iter()).all(|m| {
                        self.nodes
                            .get(m)
                            .is_some_and(|n| n.raw.is_some() && n.applied >= mk)
                    });
                    if done {
                        return Ok(());
                    }
                }
            }
        }
        let summary: Vec<String> = self
            .nodes
            .iter()
            .map(|(id, n)| match &n.raw {
                Some(r) => format!(
                    "{id}:{:?} t{} lead{} commit{} applied{} last{} removed{} conf{:?}",
                    r.role(),
                    r.term(),
                    r.leader(),
                    r.committed(),
                    n.applied,
                    r.last_index(),
                    r.is_removed(),
                    r.conf_state()
                ),
                None => format!("{id}:down stopped={}", n.stopped),
            })
            .collect();
        Err(self.fail(format!(
            "liveness: no progress within {} ticks after healing; nodes: {}",
            self.opts.heal_ticks_max,
            summary.join("; ")
        )))
    }
}

/// Runs one seed with its derived options.
pub fn run_seed(seed: u64) -> Result<SimStats, String> {
    Sim::new(SimOptions::from_seed(seed)).run()
}
