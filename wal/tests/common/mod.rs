//! A reference model of the log and a seeded workload generator, shared by the tests.
#![allow(dead_code)]

use ferrite_wal::sim::SimRng;
use ferrite_wal::{Entry, HardState, Recovered, WalOptions, WalRecord};

/// The log as the tests expect it, written independently of the crate's recovery code.
#[derive(Debug, Clone, Default)]
pub struct Model {
    pub hard_state: Option<HardState>,
    pub snapshot: Option<(u64, u64)>,
    pub entries: Vec<Entry>,
    /// Last entry index ever appended and not superseded or snapshotted away.
    pub last: u64,
}

impl Model {
    pub fn apply(&mut self, r: &WalRecord) {
        match r {
            WalRecord::Entry { index, term, data } => {
                self.entries.retain(|e| e.index < *index);
                self.entries.push(Entry {
                    index: *index,
                    term: *term,
                    data: data.clone(),
                });
                self.last = *index;
            }
            WalRecord::HardState { term, vote, commit } => {
                self.hard_state = Some(HardState {
                    term: *term,
                    vote: *vote,
                    commit: *commit,
                })
            }
            WalRecord::Snapshot { index, term } => {
                self.snapshot = Some((*index, *term));
                self.entries.retain(|e| e.index > *index);
                self.last = self.last.max(*index);
            }
        }
    }

    pub fn recovered(&self) -> Recovered {
        Recovered {
            hard_state: self.hard_state,
            snapshot: self.snapshot,
            entries: self.entries.clone(),
        }
    }
}

/// One step of a workload.
#[derive(Debug, Clone)]
pub enum Step {
    /// Appends committed together as one group.
    Group(Vec<Vec<WalRecord>>),
    /// `release_below(index)`.
    Release(u64),
}

/// A valid workload: groups of appends (entries, conflicting rewrites, hard states,
/// snapshot markers) with releases, generated from `seed`.
pub fn workload(seed: u64, steps: usize, data_bytes_max: usize) -> Vec<Step> {
    let mut rng = SimRng::new(seed);
    let mut m = Model::default();
    let mut term = 1;
    let mut out = Vec::new();
    for _ in 0..steps {
        if rng.below(10) == 0 {
            if let Some((s, _)) = m.snapshot {
                out.push(Step::Release(s + 1 - rng.below(3).min(s)));
                continue;
            }
        }
        let group_len = 1 + rng.below(4) as usize;
        let mut group = Vec::new();
        for _ in 0..group_len {
            let mut recs = Vec::new();
            for _ in 0..1 + rng.below(3) {
                let r = match rng.below(12) {
                    0 => {
                        term += 1;
                        WalRecord::HardState {
                            term,
                            vote: rng.below(3),
                            commit: m.last / 2,
                        }
                    }
                    1 if m.last > 0 => {
                        let floor = m.snapshot.map_or(0, |s| s.0);
                        let index = (m.last / 2).max(floor) + 1;
                        WalRecord::Snapshot {
                            index: index - 1,
                            term,
                        }
                    }
                    2 if m.last > 2 => {
                        // A Raft conflict: rewrite from an earlier index.
                        let floor = m.snapshot.map_or(0, |s| s.0) + 1;
                        let index = (m.last - rng.below(3)).max(floor);
                        term += 1;
                        WalRecord::Entry {
                            index,
                            term,
                            data: data(&mut rng, data_bytes_max),
                        }
                    }
                    _ => WalRecord::Entry {
                        index: m.last + 1,
                        term,
                        data: data(&mut rng, data_bytes_max),
                    },
                };
                m.apply(&r);
                recs.push(r);
            }
            group.push(recs);
        }
        out.push(Step::Group(group));
    }
    out
}

fn data(rng: &mut SimRng, max: usize) -> Vec<u8> {
    let n = rng.below(max as u64 + 1) as usize;
    let tag = rng.next_u64().to_le_bytes();
    (0..n).map(|i| tag[i % 8] ^ i as u8).collect()
}

/// Small segments and batches so tests roll segments and split groups often.
pub fn small_options() -> WalOptions {
    WalOptions {
        segment_bytes: 4096,
        batch_bytes_max: 1024,
    }
}

/// Recovery must equal the model after all acknowledged records plus some prefix of the
/// records that were in flight when the crash came (the unacknowledged may or may not
/// survive, but only in order and only whole).
pub fn assert_acked_prefix(got: &Recovered, acked: &Model, in_flight: &[WalRecord], ctx: &str) {
    let mut m = acked.clone();
    if m.recovered() == *got {
        return;
    }
    for r in in_flight {
        m.apply(r);
        if m.recovered() == *got {
            return;
        }
    }
    panic!(
        "{ctx}: recovered log is not the acknowledged records plus an in-flight prefix\n got: {:?}\n acked: {:?}\n in flight: {} records",
        summary(got),
        summary(&acked.recovered()),
        in_flight.len()
    );
}

pub fn summary(r: &Recovered) -> String {
    let idx: Vec<(u64, u64)> = r.entries.iter().map(|e| (e.index, e.term)).collect();
    format!(
        "hs={:?} snap={:?} entries={:?}",
        r.hard_state, r.snapshot, idx
    )
}
