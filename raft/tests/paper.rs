//! Rules of the Raft paper (Ongaro & Ousterhout, "In Search of an Understandable Consensus
//! Algorithm", sections 5.2–5.4 and 6) and of pre-vote / check-quorum / ReadIndex / leadership
//! transfer (Ongaro's thesis §6.4, §9.6, §3.10), one test per rule, on a tiny deterministic
//! network that persists every `Ready` at once.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use ferrite_raft::*;

struct Node {
    raw: RawNode,
    disk: PersistedState,
    applied: Vec<Entry>,
    read_states: Vec<ReadState>,
    snapshots: Vec<Snapshot>,
}

struct Net {
    nodes: BTreeMap<u64, Node>,
    cut: BTreeSet<(u64, u64)>,
    queue: VecDeque<Message>,
    /// Every message handed to the network (delivered or not).
    log: Vec<Message>,
    /// Those that were sent before the Ready was persisted.
    early_log: Vec<Message>,
    tweak: fn(&mut Config),
}

fn base_cfg(id: u64) -> Config {
    let mut c = Config::new(id);
    c.election_ticks = 10;
    c.heartbeat_ticks = 1;
    c.pre_vote = false;
    c.check_quorum = false;
    c.seed = 42;
    c
}

fn no_tweak(_: &mut Config) {}

impl Net {
    fn new(n: u64, tweak: fn(&mut Config)) -> Net {
        let voters: Vec<u64> = (1..=n).collect();
        let mut net = Net {
            nodes: BTreeMap::new(),
            cut: BTreeSet::new(),
            queue: VecDeque::new(),
            log: Vec::new(),
            early_log: Vec::new(),
            tweak,
        };
        for &id in &voters {
            net.start(id, PersistedState::bootstrap(&voters));
        }
        net
    }

    fn cfg(&self, id: u64) -> Config {
        let mut c = base_cfg(id);
        (self.tweak)(&mut c);
        c
    }

    fn start(&mut self, id: u64, disk: PersistedState) {
        let mut cfg = self.cfg(id);
        cfg.applied = disk.snapshot.meta.index;
        let raw = RawNode::new(cfg, disk.clone()).expect("start");
        self.nodes.insert(
            id,
            Node {
                raw,
                disk,
                applied: Vec::new(),
                read_states: Vec::new(),
                snapshots: Vec::new(),
            },
        );
    }

    fn restart(&mut self, id: u64) {
        let disk = self.nodes[&id].disk.clone();
        self.start(id, disk);
    }

    fn raw(&mut self, id: u64) -> &mut RawNode {
        &mut self.nodes.get_mut(&id).expect("node").raw
    }

    fn node(&self, id: u64) -> &RawNode {
        &self.nodes[&id].raw
    }

    /// Handles every pending Ready of `id`: persist, queue messages, apply, advance.
    fn ready(&mut self, id: u64) {
        let n = self.nodes.get_mut(&id).expect("node");
        while n.raw.has_ready() {
            let rd = n.raw.ready();
            if let Some(s) = &rd.snapshot {
                n.disk.snapshot = s.clone();
                n.disk.entries.clear();
                n.snapshots.push(s.clone());
            }
            if let Some(first) = rd.entries.first() {
                let fi = first.index;
                n.disk.entries.retain(|e| e.index < fi);
                n.disk.entries.extend(rd.entries.iter().cloned());
            }
            if let Some(hs) = rd.hard_state {
                n.disk.hard_state = hs;
            }
            n.applied.extend(rd.committed_entries.iter().cloned());
            n.read_states.extend(rd.read_states.iter().cloned());
            self.early_log.extend(rd.early_messages.iter().cloned());
            for m in rd.early_messages.into_iter().chain(rd.messages) {
                self.log.push(m.clone());
                self.queue.push_back(m);
            }
            n.raw.advance();
        }
    }

    fn deliver_one(&mut self) -> Option<Message> {
        let m = self.queue.pop_front()?;
        if self.cut.contains(&(m.from, m.to)) {
            return Some(m);
        }
        if let Some(n) = self.nodes.get_mut(&m.to) {
            n.raw.step(m.clone()).expect("step");
            let to = m.to;
            self.ready(to);
        }
        Some(m)
    }

    /// Runs until no message is in flight, calling `check` after each delivery.
    fn stabilize_with(&mut self, check: &mut dyn FnMut(&Net)) {
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for id in ids {
            self.ready(id);
        }
        let mut steps = 0;
        while self.deliver_one().is_some() {
            check(self);
            steps += 1;
            assert!(steps < 1_000_000, "no quiescence");
        }
    }

    fn stabilize(&mut self) {
        self.stabilize_with(&mut |_| {});
    }

    fn tick(&mut self, id: u64, n: u32) {
        for _ in 0..n {
            self.raw(id).tick();
            self.ready(id);
        }
    }

    fn tick_all(&mut self, n: u32) {
        for _ in 0..n {
            let ids: Vec<u64> = self.nodes.keys().copied().collect();
            for id in ids {
                self.tick(id, 1);
            }
            self.stabilize();
        }
    }

    fn elect(&mut self, id: u64) {
        self.raw(id).campaign_now();
        self.ready(id);
        self.stabilize();
        assert_eq!(self.node(id).role(), Role::Leader, "node {id} should lead");
    }

    fn isolate(&mut self, id: u64) {
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for o in ids {
            if o != id {
                self.cut.insert((id, o));
                self.cut.insert((o, id));
            }
        }
    }

    fn heal(&mut self) {
        self.cut.clear();
    }

    fn propose(&mut self, id: u64, data: &[u8]) -> Result<(), RaftError> {
        let r = self.raw(id).propose(data.to_vec());
        self.ready(id);
        r
    }

    fn applied_data(&self, id: u64) -> Vec<Vec<u8>> {
        self.nodes[&id]
            .applied
            .iter()
            .filter(|e| e.kind == EntryKind::Normal && !e.data.is_empty())
            .map(|e| e.data.clone())
            .collect()
    }

    fn log_terms(&self, id: u64) -> Vec<u64> {
        let r = self.node(id);
        (r.first_index()..=r.last_index())
            .map(|i| r.log_term(i).expect("in log"))
            .collect()
    }
}

fn entries(from: u64, to: u64, term: u64) -> Vec<Entry> {
    (from..=to)
        .map(|i| Entry {
            index: i,
            term,
            kind: EntryKind::Normal,
            data: format!("e{i}t{term}").into_bytes(),
        })
        .collect()
}

/// A persisted state: bootstrap of `n` voters, then `extra` entries, at hard-state `term`.
fn disk_with(n: u64, extra: Vec<Entry>, term: u64) -> PersistedState {
    let voters: Vec<u64> = (1..=n).collect();
    let mut d = PersistedState::bootstrap(&voters);
    d.entries.extend(extra);
    d.hard_state.term = term;
    d
}

// ----- single voter -----

/// A lone voter elects itself at start and commits an entry only once its own append is
/// reported durable (advance).
#[test]
fn single_voter_elects_itself_and_commits_after_persist() {
    let mut raw = RawNode::new(base_cfg(1), PersistedState::bootstrap(&[1])).unwrap();
    assert_eq!(raw.role(), Role::Leader);
    let rd = raw.ready();
    assert!(rd.must_sync);
    raw.advance();
    while raw.has_ready() {
        let _ = raw.ready();
        raw.advance();
    }
    let commit = raw.committed();
    raw.propose(b"x".to_vec()).unwrap();
    let rd = raw.ready();
    assert_eq!(rd.entries.len(), 1);
    assert!(rd.committed_entries.iter().all(|e| e.data != b"x"));
    assert_eq!(raw.committed(), commit, "not durable yet: not committed");
    raw.advance();
    assert_eq!(raw.committed(), commit + 1);
    let rd = raw.ready();
    assert_eq!(rd.committed_entries.last().unwrap().data, b"x");
    assert_eq!(rd.hard_state.unwrap().commit, commit + 1);
    raw.advance();
}

// ----- §5.2 leader election -----

/// §5.2: "If a follower receives no communication over a period of time called the election
/// timeout, then it ... begins an election": it increments its term, votes for itself and
/// sends RequestVote to every other server.
#[test]
fn s5_2_follower_starts_election_after_timeout() {
    let mut net = Net::new(3, no_tweak);
    net.tick(1, 20);
    let r = net.node(1);
    assert_eq!(r.role(), Role::Candidate);
    assert_eq!(r.term(), 2);
    let votes: Vec<&Message> = net
        .queue
        .iter()
        .filter(|m| m.kind == MessageKind::Vote)
        .collect();
    assert_eq!(votes.len(), 2);
    assert!(votes.iter().all(|m| m.term == 2 && m.from == 1));
    assert_eq!(net.nodes[&1].disk.hard_state.vote, 1, "own vote persisted");
}

/// §5.2: election timeouts are chosen randomly from a fixed interval ([T, 2T) here).
#[test]
fn s5_2_election_timeouts_are_randomized() {
    let mut seen = BTreeSet::new();
    for id in 1..=20u64 {
        let mut cfg = base_cfg(id);
        cfg.seed = id * 7;
        let mut raw = RawNode::new(cfg, PersistedState::bootstrap(&[id, 100, 101])).unwrap();
        let mut ticks = 0;
        while raw.role() == Role::Follower {
            raw.tick();
            ticks += 1;
            assert!(ticks < 100);
        }
        assert!(
            (10..20).contains(&ticks),
            "timeout {ticks} outside [10, 20)"
        );
        seen.insert(ticks);
    }
    assert!(seen.len() >= 3, "timeouts not randomized: {seen:?}");
}

/// §5.2: a candidate wins with votes from a majority; others learn of it from AppendEntries.
#[test]
fn s5_2_candidate_with_majority_becomes_leader() {
    let mut net = Net::new(5, no_tweak);
    net.cut.insert((1, 4));
    net.cut.insert((1, 5));
    net.elect(1);
    assert_eq!(net.node(2).leader(), 1);
    assert_eq!(net.node(3).leader(), 1);
}

/// §5.2: without a majority the candidate does not win.
#[test]
fn s5_2_candidate_without_majority_does_not_win() {
    let mut net = Net::new(5, no_tweak);
    for o in [3, 4, 5] {
        net.cut.insert((1, o));
    }
    net.raw(1).campaign_now();
    net.stabilize();
    assert_eq!(net.node(1).role(), Role::Candidate);
}

/// §5.2: "Each server will vote for at most one candidate in a given term, on a
/// first-come-first-served basis."
#[test]
fn s5_2_votes_at_most_once_per_term() {
    let mut raw = RawNode::new(base_cfg(1), PersistedState::bootstrap(&[1, 2, 3])).unwrap();
    let vote = |from| {
        let mut m = Message::new(MessageKind::Vote, from, 1, 2);
        m.index = 3;
        m.log_term = 1;
        m
    };
    raw.step(vote(2)).unwrap();
    raw.step(vote(3)).unwrap();
    raw.step(vote(2)).unwrap();
    let rd = raw.ready();
    let resp: Vec<(u64, bool)> = rd.messages.iter().map(|m| (m.to, m.reject)).collect();
    assert_eq!(resp, vec![(2, false), (3, true), (2, false)]);
    assert_eq!(rd.hard_state.unwrap().vote, 2);
    assert!(
        rd.early_messages.is_empty(),
        "votes wait for the vote to be durable"
    );
}

/// §5.1: a server that sees a higher term reverts to follower; a candidate that receives
/// AppendEntries from a leader of its term steps down.
#[test]
fn s5_1_higher_term_makes_leader_and_candidate_step_down() {
    let mut net = Net::new(3, no_tweak);
    net.elect(1);
    let t = net.node(1).term();
    net.raw(1)
        .step(Message::new(MessageKind::Heartbeat, 2, 1, t + 3))
        .unwrap();
    assert_eq!(net.node(1).role(), Role::Follower);
    assert_eq!(net.node(1).term(), t + 3);

    let mut net = Net::new(3, no_tweak);
    net.isolate(2);
    net.raw(2).campaign_now();
    net.ready(2);
    let t = net.node(2).term();
    let mut app = Message::new(MessageKind::Append, 3, 2, t);
    app.index = 3;
    app.log_term = 1;
    net.raw(2).step(app).unwrap();
    assert_eq!(net.node(2).role(), Role::Follower);
    assert_eq!(net.node(2).leader(), 3);
}

// ----- §5.3 log replication -----

/// §5.3: the leader commits an entry once a majority has it, then followers learn the commit
/// index and apply; a lagging follower is brought up to date later.
#[test]
fn s5_3_commit_on_majority_and_catch_up() {
    let mut net = Net::new(3, no_tweak);
    net.elect(1);
    net.cut.insert((1, 3));
    net.propose(1, b"a").unwrap();
    net.stabilize();
    assert_eq!(net.applied_data(1), vec![b"a".to_vec()]);
    assert_eq!(net.applied_data(2), vec![b"a".to_vec()]);
    assert!(net.applied_data(3).is_empty());
    net.heal();
    net.tick_all(3);
    assert_eq!(net.applied_data(3), vec![b"a".to_vec()]);
}

/// §5.3: on a consistency-check failure the leader backs up and the follower deletes its
/// conflicting entries. Fast backtracking (the follower's hint of (index, term)) skips a whole
/// divergent term in one round trip instead of one entry per round trip.
#[test]
fn s5_3_conflicting_entries_truncated_with_fast_backtracking() {
    let mut net = Net::new(3, no_tweak);
    let mut l1 = entries(4, 5, 2);
    l1.extend(entries(6, 7, 4));
    let mut l2 = entries(4, 5, 2);
    l2.extend(entries(6, 50, 3));
    net.start(1, disk_with(3, l1.clone(), 4));
    net.start(2, disk_with(3, l2, 4));
    net.start(3, disk_with(3, l1, 4));
    net.elect(1);
    net.stabilize();
    assert_eq!(net.log_terms(2), net.log_terms(1));
    let rejects = net
        .log
        .iter()
        .filter(|m| m.kind == MessageKind::AppendResp && m.reject && m.from == 2)
        .count();
    assert!(
        rejects <= 2,
        "{rejects} rejections: backtracking is not fast"
    );
    net.propose(1, b"z").unwrap();
    net.stabilize();
    assert_eq!(net.applied_data(2).last().unwrap(), b"z");
    // The divergent term-3 entries were never applied anywhere.
    assert!(net.nodes[&2].applied.iter().all(|e| e.term != 3));
}

/// Flow control: in Replicate state at most `inflight_msgs_max` appends are unacknowledged;
/// batching puts many proposals in one message, bounded by `msg_bytes_max`.
#[test]
fn s5_3_pipelining_window_and_batching() {
    let mut net = Net::new(3, |c| {
        c.inflight_msgs_max = 4;
        c.msg_bytes_max = 10 * (ENTRY_OVERHEAD_BYTES + 8);
    });
    net.elect(1);
    net.stabilize();
    // Follower 2 stops answering: count appends to it.
    net.cut.insert((2, 1));
    let before = net.log.len();
    for i in 0..40u64 {
        net.propose(1, &i.to_le_bytes()).unwrap();
    }
    net.stabilize();
    let to2: Vec<&Message> = net.log[before..]
        .iter()
        .filter(|m| m.kind == MessageKind::Append && m.to == 2 && !m.entries.is_empty())
        .collect();
    assert_eq!(to2.len(), 4, "window of 4 appends in flight");
    // Batching: one ready after many proposals gives full messages (10 entries each).
    let mut net = Net::new(3, |c| c.msg_bytes_max = 10 * (ENTRY_OVERHEAD_BYTES + 8));
    net.elect(1);
    net.stabilize();
    let before = net.log.len();
    for i in 0..40u64 {
        net.raw(1).propose(i.to_le_bytes().to_vec()).unwrap();
    }
    net.stabilize();
    let sizes: Vec<usize> = net.log[before..]
        .iter()
        .filter(|m| m.kind == MessageKind::Append && m.to == 2 && !m.entries.is_empty())
        .map(|m| m.entries.len())
        .collect();
    assert_eq!(sizes, vec![10, 10, 10, 10]);
    assert_eq!(net.applied_data(2).len(), 40);
}

// ----- §5.4 safety -----

/// §5.4.1: a voter denies its vote if its own log is more up-to-date than the candidate's.
#[test]
fn s5_4_1_stale_candidate_is_refused() {
    let mut net = Net::new(3, no_tweak);
    net.start(1, disk_with(3, entries(4, 6, 2), 2));
    net.start(2, disk_with(3, entries(4, 6, 2), 2));
    net.start(3, disk_with(3, entries(4, 4, 2), 2));
    net.raw(3).campaign_now();
    net.stabilize();
    assert_ne!(net.node(3).role(), Role::Leader);
    assert!(net
        .log
        .iter()
        .filter(|m| m.kind == MessageKind::VoteResp)
        .all(|m| m.reject));
    // Same last term, longer log: wins.
    net.elect(1);
}

/// §5.4.2 (Figure 8): a leader never commits an entry from a previous term by counting
/// replicas; it becomes committed only together with an entry of the leader's term.
#[test]
fn s5_4_2_no_commit_of_previous_term_entry_by_counting() {
    let mut net = Net::new(3, |c| {
        c.msg_bytes_max = 1; // one entry per message
        c.inflight_msgs_max = 1;
    });
    net.start(1, disk_with(3, entries(4, 4, 2), 3));
    net.start(2, disk_with(3, vec![], 3));
    net.start(3, disk_with(3, vec![], 3));
    net.isolate(3);
    net.raw(1).campaign_now();
    let mut saw_4_replicated_alone = false;
    net.stabilize_with(&mut |n| {
        let c = n.node(1).committed();
        assert!(
            c == 3 || c >= 5,
            "committed {c}: entry 4 (term 2) committed by counting"
        );
        if n.node(2).last_index() == 4 {
            saw_4_replicated_alone = true;
        }
    });
    assert!(
        saw_4_replicated_alone,
        "scenario did not replicate entry 4 alone"
    );
    assert_eq!(net.node(1).committed(), 5);
}

// ----- crash and restart -----

/// A node restarts from its persisted hard state and log with the same term, vote, commit and
/// entries, and the cluster carries on.
#[test]
fn restart_from_persisted_state() {
    let mut net = Net::new(3, no_tweak);
    net.elect(1);
    for i in 0..5u8 {
        net.propose(1, &[i]).unwrap();
    }
    net.stabilize();
    let before = (
        net.node(2).term(),
        net.node(2).committed(),
        net.log_terms(2),
    );
    net.restart(2);
    assert_eq!(
        (
            net.node(2).term(),
            net.node(2).committed(),
            net.log_terms(2)
        ),
        before
    );
    assert_eq!(net.nodes[&2].disk.hard_state.vote, 1);
    net.propose(1, b"after").unwrap();
    net.stabilize();
    // Restarted with applied = 0: everything is applied again, then the new entry.
    assert_eq!(net.applied_data(2).last().unwrap(), b"after");
    // Corrupt persisted state is refused with an error.
    let mut bad = net.nodes[&2].disk.clone();
    bad.hard_state.commit = 1_000;
    assert!(matches!(
        RawNode::new(base_cfg(2), bad),
        Err(RaftError::Corrupt(_))
    ));
}

// ----- Ready contract -----

/// A leader sends Append before persisting (early) only in a term whose vote is durable;
/// followers acknowledge only after persisting.
#[test]
fn ready_contract_early_and_late_messages() {
    let mut net = Net::new(3, no_tweak);
    net.raw(1).campaign_now();
    let rd = net.raw(1).ready();
    assert!(rd.early_messages.is_empty());
    assert!(rd.messages.iter().all(|m| m.kind == MessageKind::Vote));
    net.raw(1).advance();
    for m in rd.messages {
        net.raw(m.to).step(m).unwrap();
    }
    for id in [2, 3] {
        let rd = net.raw(id).ready();
        assert!(rd.early_messages.is_empty());
        for m in rd.messages {
            net.raw(1).step(m).unwrap();
        }
        net.raw(id).advance();
    }
    assert_eq!(net.node(1).role(), Role::Leader);
    let rd = net.raw(1).ready();
    // The vote for this term is durable, so the new leader's appends may go early.
    assert!(rd
        .early_messages
        .iter()
        .any(|m| m.kind == MessageKind::Append && !m.entries.is_empty()));
    assert!(rd.messages.is_empty());
    net.queue.extend(rd.early_messages);
    net.raw(1).advance();
    net.stabilize();
    net.propose(1, b"p").unwrap();
    net.stabilize();
    // Only the leader's replication traffic ever goes early; acks and votes never do.
    assert!(!net.early_log.is_empty());
    assert!(net
        .early_log
        .iter()
        .all(|m| m.from == 1 && matches!(m.kind, MessageKind::Append | MessageKind::Heartbeat)));
    assert!(net.log.iter().any(|m| m.kind == MessageKind::AppendResp));
}

// ----- §6 membership -----

/// §6 / learners: a learner receives the log but does not count toward commit; promoting it
/// makes it a voter.
#[test]
fn s6_learner_does_not_count_and_can_be_promoted() {
    let mut net = Net::new(3, no_tweak);
    net.start(4, PersistedState::default());
    net.elect(1);
    net.stabilize();
    let cc = |kind, id| ConfChange {
        kind,
        node_id: id,
        context: b"url".to_vec(),
    };
    net.raw(1)
        .propose_conf_change(&cc(ConfChangeKind::AddLearner, 4))
        .unwrap();
    net.stabilize();
    net.tick_all(2);
    assert!(net.node(1).conf_state().is_learner(4));
    assert!(net.node(4).conf_state().is_learner(4));
    // Voters 2 and 3 unreachable: the learner's ack does not commit.
    net.cut.insert((1, 2));
    net.cut.insert((1, 3));
    let c = net.node(1).committed();
    net.propose(1, b"x").unwrap();
    net.stabilize();
    assert_eq!(net.node(1).committed(), c);
    assert_eq!(net.node(4).last_index(), c + 1, "learner has the entry");
    net.heal();
    net.tick_all(2);
    assert_eq!(net.node(1).committed(), c + 1);
    net.raw(1)
        .propose_conf_change(&cc(ConfChangeKind::AddVoter, 4))
        .unwrap();
    net.stabilize();
    net.tick_all(2);
    assert_eq!(net.node(4).conf_state().voters, vec![1, 2, 3, 4]);
    assert_eq!(
        net.nodes[&4].applied.last().unwrap().kind,
        EntryKind::ConfChange
    );
}

/// §6: one change at a time — a second change is refused until the first is applied, and a
/// new leader refuses changes until its first entry is applied.
#[test]
fn s6_one_membership_change_at_a_time() {
    let mut net = Net::new(3, no_tweak);
    net.raw(1).campaign_now();
    net.ready(1);
    // Deliver votes but not yet the no-op's acks.
    net.stabilize();
    net.tick_all(1);
    let cc = |id| ConfChange {
        kind: ConfChangeKind::AddLearner,
        node_id: id,
        context: vec![],
    };
    net.raw(1).propose_conf_change(&cc(7)).unwrap();
    assert_eq!(
        net.raw(1).propose_conf_change(&cc(8)),
        Err(RaftError::ConfChangePending)
    );
    net.ready(1);
    net.stabilize();
    net.tick_all(1);
    net.raw(1).propose_conf_change(&cc(8)).unwrap();
    // A brand-new leader: refused until its no-op is applied.
    let mut net = Net::new(3, no_tweak);
    net.isolate(1);
    net.raw(1).campaign_now();
    net.ready(1);
    for m in std::mem::take(&mut net.queue) {
        let to = m.to;
        net.raw(to).step(m).unwrap();
        net.ready(to);
    }
    for m in std::mem::take(&mut net.queue) {
        if m.to == 1 {
            net.raw(1).step(m).unwrap();
        }
    }
    assert_eq!(net.node(1).role(), Role::Leader);
    assert_eq!(
        net.raw(1).propose_conf_change(&cc(9)),
        Err(RaftError::ConfChangePending)
    );
}

/// §6: a removed leader steps down once the removal commits, stops campaigning, and the
/// remaining voters elect a new leader.
#[test]
fn s6_removed_leader_steps_down_and_stops() {
    let mut net = Net::new(3, no_tweak);
    net.elect(1);
    net.stabilize();
    net.tick_all(1);
    net.raw(1)
        .propose_conf_change(&ConfChange {
            kind: ConfChangeKind::Remove,
            node_id: 1,
            context: vec![],
        })
        .unwrap();
    net.stabilize();
    net.tick_all(1);
    assert!(net.node(1).is_removed());
    assert_eq!(net.node(1).role(), Role::Follower);
    net.tick_all(40);
    let leaders: Vec<u64> = [2, 3]
        .into_iter()
        .filter(|&i| net.node(i).role() == Role::Leader)
        .collect();
    assert_eq!(leaders.len(), 1);
    assert_eq!(net.node(leaders[0]).conf_state().voters, vec![2, 3]);
    assert_eq!(
        net.node(1).role(),
        Role::Follower,
        "removed node never campaigns"
    );
    assert!(net.raw(1).propose(b"x".to_vec()).is_err());
}

// ----- pre-vote and check-quorum -----

/// Pre-vote (thesis §9.6): a partitioned node does not raise its term, so on rejoining it does
/// not depose the leader. Without pre-vote it does.
#[test]
fn prevote_partitioned_node_does_not_disrupt() {
    for pre_vote in [true, false] {
        let mut net = Net::new(
            3,
            if pre_vote {
                |c: &mut Config| c.pre_vote = true
            } else {
                no_tweak
            },
        );
        net.elect(1);
        let term = net.node(1).term();
        net.isolate(3);
        net.tick(3, 100);
        net.heal();
        net.tick_all(3);
        if pre_vote {
            assert_eq!(net.node(3).term(), term);
            assert_eq!(net.node(1).role(), Role::Leader);
            assert_eq!(net.node(1).term(), term);
        } else {
            assert!(
                net.node(1).term() > term,
                "without pre-vote the term is bumped"
            );
        }
    }
}

/// Pre-vote: a follower that heard from a leader within the election timeout refuses (ignores)
/// pre-votes, even for an up-to-date candidate.
#[test]
fn prevote_refused_while_leader_alive() {
    let mut net = Net::new(3, |c| c.pre_vote = true);
    net.elect(1);
    net.tick_all(1);
    let term = net.node(1).term();
    net.raw(2).campaign_now();
    net.stabilize();
    assert_eq!(net.node(2).role(), Role::PreCandidate);
    assert_eq!(net.node(1).role(), Role::Leader);
    assert_eq!(net.node(1).term(), term);
}

/// Check-quorum: an isolated leader steps down within two election timeouts.
#[test]
fn check_quorum_isolated_leader_steps_down() {
    let mut net = Net::new(3, |c| c.check_quorum = true);
    net.elect(1);
    net.isolate(1);
    net.tick(1, 20);
    assert_eq!(net.node(1).role(), Role::Follower);
}

// ----- ReadIndex and leases -----

/// ReadIndex (thesis §6.4): the leader answers only after a heartbeat round confirms a
/// quorum still follows it; followers forward and get the leader's commit index.
#[test]
fn read_index_needs_quorum_confirmation() {
    let mut net = Net::new(3, no_tweak);
    net.elect(1);
    net.stabilize();
    net.isolate(1);
    net.raw(1).read_index(b"r1".to_vec()).unwrap();
    net.stabilize();
    assert!(net.nodes[&1].read_states.is_empty());
    net.heal();
    net.tick_all(2);
    let rs = &net.nodes[&1].read_states;
    assert_eq!(rs.len(), 1);
    assert_eq!(rs[0].context, b"r1");
    assert_eq!(rs[0].index, net.node(1).committed());
    net.raw(2).read_index(b"r2".to_vec()).unwrap();
    net.ready(2);
    net.stabilize();
    net.tick_all(2);
    let rs = &net.nodes[&2].read_states;
    assert_eq!(rs.len(), 1);
    assert_eq!(rs[0].index, net.node(1).committed());
}

/// Lease reads answer without a round trip while the lease holds and stop once it lapses.
#[test]
fn lease_read_answers_locally_then_expires() {
    let mut net = Net::new(3, |c| {
        c.check_quorum = true;
        c.lease_read = true;
    });
    net.tick_all(25);
    let leader = (1..=3)
        .find(|&i| net.node(i).role() == Role::Leader)
        .unwrap();
    net.tick_all(2);
    net.isolate(leader);
    net.raw(leader).read_index(b"fast".to_vec()).unwrap();
    net.ready(leader);
    assert_eq!(
        net.nodes[&leader].read_states.len(),
        1,
        "served from the lease"
    );
    net.tick(leader, 9);
    net.raw(leader).read_index(b"late".to_vec()).unwrap();
    net.ready(leader);
    net.stabilize();
    assert_eq!(net.nodes[&leader].read_states.len(), 1, "lease expired");
}

// ----- leadership transfer -----

/// Transfer (thesis §3.10): the target campaigns at once on TimeoutNow and wins; the old
/// leader refuses proposals while the transfer is in progress.
#[test]
fn leader_transfer() {
    let mut net = Net::new(3, |c| {
        c.pre_vote = true;
        c.check_quorum = true;
    });
    net.elect(1);
    net.stabilize();
    let term = net.node(1).term();
    net.cut.insert((1, 2));
    net.propose(1, b"a").unwrap();
    net.stabilize();
    net.raw(1).transfer_leader(2).unwrap();
    assert_eq!(
        net.raw(1).propose(b"b".to_vec()),
        Err(RaftError::ProposalDropped)
    );
    net.heal();
    net.tick_all(2);
    assert_eq!(net.node(2).role(), Role::Leader);
    assert_eq!(net.node(2).term(), term + 1);
    assert_eq!(net.node(1).leader(), 2);
}

// ----- snapshots -----

/// Log compaction and InstallSnapshot in chunks: a new node behind the leader's snapshot
/// receives it piece by piece and then the entries after it.
#[test]
fn snapshot_sent_in_chunks_to_new_node() {
    let mut net = Net::new(3, |c| c.snapshot_chunk_bytes = 16);
    net.elect(1);
    for i in 0..10u8 {
        net.propose(1, &[i]).unwrap();
    }
    net.stabilize();
    let applied = net.node(1).applied();
    let image: Vec<u8> = (0..100u8).collect();
    net.raw(1).compact(applied, image.clone()).unwrap();
    assert_eq!(net.node(1).first_index(), applied + 1);
    assert_eq!(
        net.raw(1).compact(applied, vec![]),
        Err(RaftError::BadCompactIndex)
    );
    net.start(4, PersistedState::default());
    net.raw(1)
        .propose_conf_change(&ConfChange {
            kind: ConfChangeKind::AddLearner,
            node_id: 4,
            context: vec![],
        })
        .unwrap();
    net.stabilize();
    net.tick_all(5);
    let chunks = net
        .log
        .iter()
        .filter(|m| m.kind == MessageKind::Snapshot && m.to == 4)
        .count();
    assert!(chunks >= 7, "{chunks} chunks for 100 bytes at 16 per chunk");
    let snaps = &net.nodes[&4].snapshots;
    assert_eq!(snaps.len(), 1);
    assert_eq!(snaps[0].data, image);
    assert_eq!(snaps[0].meta.index, applied);
    assert_eq!(snaps[0].meta.conf_state.voters, vec![1, 2, 3]);
    assert_eq!(net.node(4).last_index(), net.node(1).last_index());
    assert!(net.node(4).conf_state().is_learner(4));
}

// ----- limits and forwarding -----

/// Followers forward proposals to the leader; a leader refuses proposals beyond
/// `uncommitted_bytes_max`; the inflight window is also bounded in bytes.
#[test]
fn forwarding_and_byte_limits() {
    let mut net = Net::new(3, |c| {
        c.uncommitted_bytes_max = 3 * (ENTRY_OVERHEAD_BYTES + 100);
        c.inflight_bytes_max = 2 * (ENTRY_OVERHEAD_BYTES + 100);
        c.msg_bytes_max = 1;
    });
    net.elect(1);
    net.stabilize();
    net.propose(2, &[2; 100]).unwrap();
    net.stabilize();
    assert_eq!(net.applied_data(3).last().unwrap(), &vec![2; 100]);
    // Nobody acknowledges: the leader accepts up to the uncommitted limit, then refuses.
    net.cut.insert((2, 1));
    net.cut.insert((3, 1));
    let before = net.log.len();
    let results: Vec<bool> = (0..5u8)
        .map(|i| net.propose(1, &[i; 100]).is_ok())
        .collect();
    assert_eq!(results, vec![true, true, true, false, false]);
    net.stabilize();
    let appends_to_2 = net.log[before..]
        .iter()
        .filter(|m| m.kind == MessageKind::Append && m.to == 2 && !m.entries.is_empty())
        .count();
    assert_eq!(
        appends_to_2, 2,
        "inflight bytes window holds two 100-byte entries"
    );
    net.heal();
    net.tick_all(3);
    assert_eq!(net.applied_data(2).len(), 4);
    assert!(
        net.propose(1, &[9; 100]).is_ok(),
        "accepted again once committed"
    );
}

/// A message that contradicts itself is refused with an error and changes nothing.
#[test]
fn invalid_messages_are_refused() {
    let mut net = Net::new(3, no_tweak);
    net.elect(1);
    net.stabilize();
    let t = net.node(2).term();
    let last = net.node(2).last_index();
    let mut m = Message::new(MessageKind::Append, 1, 2, t);
    m.index = last;
    m.log_term = t;
    m.entries = entries(last + 2, last + 2, t); // gap
    assert!(matches!(
        net.raw(2).step(m.clone()),
        Err(RaftError::InvalidMessage(_))
    ));
    m.entries = entries(last + 1, last + 1, t + 1); // term above the leader's
    assert!(matches!(
        net.raw(2).step(m),
        Err(RaftError::InvalidMessage(_))
    ));
    assert_eq!(net.node(2).last_index(), last);
    let mut s = Message::new(MessageKind::Snapshot, 1, 2, t);
    s.snapshot = Some(SnapshotChunk {
        meta: SnapshotMeta {
            index: 99,
            term: t,
            conf_state: ConfState::with_voters(&[1, 2, 3]),
        },
        offset: 10,
        total_len: 11,
        data: vec![0; 5],
    });
    assert!(matches!(
        net.raw(2).step(s),
        Err(RaftError::InvalidMessage(_))
    ));
}

/// `report_unreachable` drops a follower from pipelining back to one probe at a time.
#[test]
fn report_unreachable_returns_follower_to_probe() {
    let mut net = Net::new(3, no_tweak);
    net.elect(1);
    net.stabilize();
    let state = |net: &Net| {
        net.node(1)
            .status()
            .progress
            .iter()
            .find(|p| p.0 == 2)
            .unwrap()
            .3
    };
    assert_eq!(state(&net), ProgressState::Replicate);
    net.raw(1).report_unreachable(2);
    assert_eq!(state(&net), ProgressState::Probe);
    net.propose(1, b"x").unwrap();
    net.stabilize();
    assert_eq!(state(&net), ProgressState::Replicate);
    assert_eq!(net.applied_data(2).last().unwrap(), b"x");
}

/// `committed_bytes_per_ready_max` splits a long apply backlog over several Readies, in order.
#[test]
fn committed_entries_are_paged() {
    let mut net = Net::new(3, |c| {
        c.committed_bytes_per_ready_max = 3 * (ENTRY_OVERHEAD_BYTES + 10)
    });
    net.elect(1);
    net.stabilize();
    for i in 0..20u8 {
        net.raw(1).propose(vec![i; 10]).unwrap();
    }
    net.stabilize();
    net.tick_all(2);
    let applied = net.applied_data(2);
    assert_eq!(applied, (0..20u8).map(|i| vec![i; 10]).collect::<Vec<_>>());
    // Restart with applied = 0: the backlog comes back in pages of at most 3 entries.
    net.restart(2);
    let mut pages = Vec::new();
    while net.raw(2).has_ready() {
        let rd = net.raw(2).ready();
        if !rd.committed_entries.is_empty() {
            pages.push(rd.committed_entries.len());
        }
        net.raw(2).advance();
    }
    assert!(pages.iter().all(|&n| n <= 3), "{pages:?}");
    assert_eq!(pages.iter().sum::<usize>() as u64, net.node(2).committed());
}
