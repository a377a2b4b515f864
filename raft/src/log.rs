//! The in-memory Raft log: entries after the last snapshot, plus the indexes that track how far
//! the caller has persisted, been handed out for persisting, and applied.

use crate::types::{Entry, SnapshotMeta};

/// Invariants (asserted in `check`):
/// `snap_index <= applied <= committed <= last_index()`, `persisted <= last_index()`,
/// `snap_index + 1 <= unstable <= last_index() + 1`, entries are contiguous from `snap_index + 1`
/// with non-decreasing terms, each term `>= snap_term`.
#[derive(Debug, Clone)]
pub(crate) struct RaftLog {
    pub snap_index: u64,
    pub snap_term: u64,
    pub entries: Vec<Entry>,
    pub committed: u64,
    /// Last index handed out in `Ready::committed_entries`.
    pub applied: u64,
    /// First index not yet handed out in `Ready::entries`.
    pub unstable: u64,
    /// Last index known durable (reported by `advance`).
    pub persisted: u64,
}

impl RaftLog {
    pub fn new(snap_index: u64, snap_term: u64) -> RaftLog {
        RaftLog {
            snap_index,
            snap_term,
            entries: Vec::new(),
            committed: snap_index,
            applied: snap_index,
            unstable: snap_index + 1,
            persisted: snap_index,
        }
    }

    pub fn first_index(&self) -> u64 {
        self.snap_index + 1
    }

    pub fn last_index(&self) -> u64 {
        self.snap_index + self.entries.len() as u64
    }

    pub fn last_term(&self) -> u64 {
        self.entries.last().map_or(self.snap_term, |e| e.term)
    }

    /// Term of entry `index`; `None` when compacted away or beyond the end.
    pub fn term(&self, index: u64) -> Option<u64> {
        if index == self.snap_index {
            return Some(self.snap_term);
        }
        if index < self.snap_index || index > self.last_index() {
            return None;
        }
        Some(self.entries[(index - self.snap_index - 1) as usize].term)
    }

    pub fn match_term(&self, index: u64, term: u64) -> bool {
        self.term(index) == Some(term)
    }

    pub fn entry(&self, index: u64) -> Option<&Entry> {
        if index <= self.snap_index || index > self.last_index() {
            return None;
        }
        Some(&self.entries[(index - self.snap_index - 1) as usize])
    }

    /// Entries `[lo, hi]` (inclusive), at most `bytes_max` bytes but always at least one when
    /// the range is non-empty. `None` if `lo` was compacted.
    pub fn slice(&self, lo: u64, hi: u64, bytes_max: u64) -> Option<Vec<Entry>> {
        if lo <= self.snap_index {
            return None;
        }
        let hi = hi.min(self.last_index());
        let mut out = Vec::new();
        let mut bytes = 0u64;
        let mut i = lo;
        while i <= hi {
            let e = &self.entries[(i - self.snap_index - 1) as usize];
            bytes += e.size_bytes();
            if !out.is_empty() && bytes > bytes_max {
                break;
            }
            out.push(e.clone());
            i += 1;
        }
        Some(out)
    }

    /// Raft's up-to-date rule (paper §5.4.1): is a log ending at (`index`, `term`) at least as
    /// up-to-date as ours?
    pub fn is_up_to_date(&self, index: u64, term: u64) -> bool {
        term > self.last_term() || (term == self.last_term() && index >= self.last_index())
    }

    /// The largest index `<= index` whose term is `<= term` (and that term), stopping at the
    /// snapshot. Used on both sides of fast backtracking.
    pub fn find_conflict_by_term(&self, index: u64, term: u64) -> (u64, u64) {
        let mut i = index.min(self.last_index());
        loop {
            match self.term(i) {
                Some(t) if t > term && i > self.snap_index => i -= 1,
                Some(t) => return (i, t),
                None => return (i, 0),
            }
        }
    }

    /// Appends entries that follow the leader's; truncates a conflicting suffix first.
    /// Never truncates committed entries (asserted: that would lose a committed entry).
    pub fn append(&mut self, ents: &[Entry]) {
        let Some(first) = ents.first() else { return };
        assert!(
            first.index > self.committed,
            "raft: truncating committed entry {} (committed {})",
            first.index,
            self.committed
        );
        assert!(first.index <= self.last_index() + 1, "raft: log gap");
        let keep = (first.index - self.snap_index - 1) as usize;
        self.entries.truncate(keep);
        self.entries.extend_from_slice(ents);
        if first.index < self.unstable {
            self.unstable = first.index;
        }
        if first.index <= self.persisted {
            self.persisted = first.index - 1;
        }
    }

    /// Follower side of AppendEntries: if our log has (`prev_index`, `prev_term`), appends the
    /// new entries (skipping those we already have) and returns the last index of the message.
    pub fn maybe_append(&mut self, prev_index: u64, prev_term: u64, ents: &[Entry]) -> Option<u64> {
        if !self.match_term(prev_index, prev_term) {
            return None;
        }
        let last_new = prev_index + ents.len() as u64;
        // Find the first entry we don't already have (paper §5.3: delete only on conflict).
        let mut conflict = None;
        for (k, e) in ents.iter().enumerate() {
            if !self.match_term(e.index, e.term) {
                conflict = Some(k);
                break;
            }
        }
        if let Some(k) = conflict {
            self.append(&ents[k..]);
        }
        Some(last_new)
    }

    pub fn commit_to(&mut self, index: u64) -> bool {
        if index > self.committed {
            assert!(index <= self.last_index(), "raft: commit beyond last index");
            self.committed = index;
            return true;
        }
        false
    }

    /// Replaces the whole log with a snapshot's position.
    pub fn restore(&mut self, meta: &SnapshotMeta) {
        assert!(
            meta.index > self.committed,
            "raft: restoring an old snapshot"
        );
        self.snap_index = meta.index;
        self.snap_term = meta.term;
        self.entries.clear();
        self.committed = meta.index;
        self.applied = meta.index;
        self.unstable = meta.index + 1;
        self.persisted = self.persisted.min(meta.index);
    }

    /// Drops entries up to `index` (covered by a caller-made snapshot).
    pub fn compact(&mut self, index: u64) {
        if index <= self.snap_index {
            return;
        }
        assert!(index <= self.applied, "raft: compacting unapplied entries");
        let term = self.term(index).expect("raft: compact index in log");
        let n = (index - self.snap_index) as usize;
        self.entries.drain(..n);
        self.snap_index = index;
        self.snap_term = term;
        if self.unstable <= index {
            self.unstable = index + 1;
        }
    }

    pub fn check(&self) {
        assert!(
            self.snap_index <= self.applied,
            "raft: applied below snapshot"
        );
        assert!(
            self.applied <= self.committed,
            "raft: applied beyond commit"
        );
        assert!(
            self.committed <= self.last_index(),
            "raft: commit beyond log"
        );
        assert!(
            self.persisted <= self.last_index(),
            "raft: persisted beyond log"
        );
        assert!(self.unstable > self.snap_index && self.unstable <= self.last_index() + 1);
        if cfg!(debug_assertions) {
            let mut t = self.snap_term;
            for (k, e) in self.entries.iter().enumerate() {
                assert_eq!(
                    e.index,
                    self.snap_index + 1 + k as u64,
                    "raft: log not contiguous"
                );
                assert!(e.term >= t, "raft: terms decrease");
                t = e.term;
            }
        }
    }
}
