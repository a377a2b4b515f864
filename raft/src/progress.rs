//! The leader's view of each follower: how much of the log it matches, what to send next, and
//! the flow-control window of appends in flight.

use std::collections::VecDeque;

/// How the leader is currently replicating to one follower.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressState {
    /// Searching for the match point: one append at a time, paused until answered.
    Probe,
    /// Matched: appends are pipelined, bounded by the inflight window.
    Replicate,
    /// The follower needs a snapshot; appends are paused while chunks are sent.
    Snapshot,
}

#[derive(Clone, Debug)]
pub(crate) struct Progress {
    pub matched: u64,
    pub next: u64,
    pub state: ProgressState,
    /// In Probe: an append was sent and not yet answered.
    pub probe_sent: bool,
    /// Heard from since the last check-quorum round.
    pub recent_active: bool,
    pub is_learner: bool,
    /// Appends in flight in Replicate: (last index, bytes).
    pub inflights: VecDeque<(u64, u64)>,
    pub inflight_bytes: u64,
    /// In Snapshot: the snapshot index being sent and the next byte offset to send.
    pub snap_index: u64,
    pub snap_offset: u64,
    /// Highest ReadIndex sequence this peer has confirmed by a heartbeat response.
    pub read_acked_seq: u64,
}

impl Progress {
    pub fn new(next: u64, is_learner: bool) -> Progress {
        Progress {
            matched: 0,
            next,
            state: ProgressState::Probe,
            probe_sent: false,
            recent_active: false,
            is_learner,
            inflights: VecDeque::new(),
            inflight_bytes: 0,
            snap_index: 0,
            snap_offset: 0,
            read_acked_seq: 0,
        }
    }

    fn reset(&mut self, state: ProgressState) {
        self.state = state;
        self.probe_sent = false;
        self.inflights.clear();
        self.inflight_bytes = 0;
        self.snap_index = 0;
        self.snap_offset = 0;
    }

    pub fn become_probe(&mut self) {
        let next = if self.state == ProgressState::Snapshot {
            (self.matched + 1).max(self.snap_index + 1)
        } else {
            self.matched + 1
        };
        self.reset(ProgressState::Probe);
        self.next = next;
    }

    pub fn become_replicate(&mut self) {
        self.reset(ProgressState::Replicate);
        self.next = self.matched + 1;
    }

    pub fn become_snapshot(&mut self, snap_index: u64) {
        self.reset(ProgressState::Snapshot);
        self.snap_index = snap_index;
    }

    /// A successful append response for `index`. Returns true if it told us something new.
    pub fn maybe_update(&mut self, index: u64) -> bool {
        let mut updated = false;
        if self.matched < index {
            self.matched = index;
            updated = true;
            self.probe_sent = false;
        }
        self.next = self.next.max(index + 1);
        updated
    }

    /// A rejection of the append at `rejected`; `probe_hint` is the leader's computed guess of
    /// the last index that may match. Returns false if the rejection is stale.
    pub fn maybe_decr_to(&mut self, rejected: u64, probe_hint: u64) -> bool {
        if self.state == ProgressState::Replicate {
            if rejected <= self.matched {
                return false;
            }
            self.next = (self.matched + 1).max(rejected.min(probe_hint + 1));
            return true;
        }
        if self.next == 0 || self.next - 1 != rejected {
            return false;
        }
        self.next = (self.matched + 1).max(rejected.min(probe_hint + 1));
        self.probe_sent = false;
        true
    }

    pub fn is_paused(&self, inflight_msgs_max: usize, inflight_bytes_max: u64) -> bool {
        match self.state {
            ProgressState::Probe => self.probe_sent,
            ProgressState::Replicate => {
                self.inflights.len() >= inflight_msgs_max
                    || self.inflight_bytes >= inflight_bytes_max
            }
            ProgressState::Snapshot => true,
        }
    }

    pub fn add_inflight(&mut self, last: u64, bytes: u64) {
        self.inflights.push_back((last, bytes));
        self.inflight_bytes += bytes;
    }

    /// Frees every inflight append whose last index is `<= index`.
    pub fn free_le(&mut self, index: u64) {
        while let Some(&(last, bytes)) = self.inflights.front() {
            if last > index {
                break;
            }
            self.inflights.pop_front();
            self.inflight_bytes -= bytes;
        }
    }

    pub fn free_first(&mut self) {
        if let Some((_, bytes)) = self.inflights.pop_front() {
            self.inflight_bytes -= bytes;
        }
    }
}
