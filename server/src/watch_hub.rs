//! The watch hub: the Raft core publishes every applied batch of events here, after the MVCC
//! commit that makes them visible to readers; each watch stream (on any core) subscribes.
//!
//! The channel is a bounded broadcast ring (`HUB_BATCHES_MAX` batches). Publishing never waits:
//! a stream that falls behind loses the oldest batches, sees `Lagged`, and catches up by
//! reading the store's history (`ReadView::events`) — so a slow watcher never blocks writes.

use std::sync::Arc;

use ferrite_btree::Event;
use tokio::sync::broadcast;

/// Batches kept for subscribers before the slowest ones must catch up from the store.
pub const HUB_BATCHES_MAX: usize = 4096;

/// Events of consecutive revisions, in (revision, sub) order.
#[derive(Debug)]
pub struct HubBatch {
    /// The store revision after this batch (every event's revision is `<= revision`).
    pub revision: i64,
    pub events: Vec<Event>,
    /// The store was replaced (a follower installed the leader's snapshot image) and is now at
    /// `revision`: the events between each watcher's position and it were never published.
    /// Every watcher goes back to unsynced and catches up from the new store (or is canceled
    /// with the compact revision), as etcd's `watchableStore.Restore` does. `events` is empty.
    pub reset: bool,
}

pub struct WatchHub {
    tx: broadcast::Sender<Arc<HubBatch>>,
}

impl Default for WatchHub {
    fn default() -> Self {
        Self::new()
    }
}

impl WatchHub {
    pub fn new() -> WatchHub {
        let (tx, _rx) = broadcast::channel(HUB_BATCHES_MAX);
        WatchHub { tx }
    }

    /// Subscribes; the receiver sees every batch published after this call.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<HubBatch>> {
        self.tx.subscribe()
    }

    /// Publishes (never blocks; without subscribers the batch is dropped).
    pub fn publish(&self, batch: HubBatch) {
        if batch.events.is_empty() {
            return;
        }
        let _ = self.tx.send(Arc::new(batch));
    }

    /// Tells every stream that the store was replaced and is now at `revision`.
    pub fn publish_reset(&self, revision: i64) {
        let _ = self.tx.send(Arc::new(HubBatch {
            revision,
            events: Vec::new(),
            reset: true,
        }));
    }

    pub fn subscribers(&self) -> usize {
        self.tx.receiver_count()
    }
}
