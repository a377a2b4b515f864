//! loom model of ferrite-btree's snapshot pinning and page reclamation (`btree/src/db.rs`,
//! `DbWriter::commit` / `reclaim`): the writer publishes a new snapshot by swapping the current
//! one, keeps a handle to the old one, and reuses the old snapshot's pages only once no reader
//! holds it (the real code tracks `Weak` handles and checks `strong_count`; loom's `Arc` has no
//! `Weak`, so the model keeps the strong handle and checks `strong_count == 1`, the same rule).
//! A reader that pinned a snapshot must never see one of its pages rewritten.
//!
//!     RUSTFLAGS="--cfg loom" cargo test -p loom-tests --release --test btree_pinning
#![cfg(loom)]

use loom::sync::atomic::{AtomicU64, Ordering};
use loom::sync::{Arc, Mutex};
use loom::thread;

/// One page per tree keeps the model small: snapshot `txn` lives on page `page`.
struct Snapshot {
    txn: u64,
    page: usize,
}

const PAGES: usize = 3;

struct Shared {
    /// Page contents: the txn that last wrote the page.
    pages: [AtomicU64; PAGES],
    /// The published snapshot (the real code swaps it with arc-swap, lock-free).
    current: Mutex<Arc<Snapshot>>,
}

struct Writer {
    shared: Arc<Shared>,
    free: Vec<usize>,
    /// Old snapshots that readers may still hold, with the page each one pins.
    retired: Vec<Arc<Snapshot>>,
}

impl Writer {
    fn reclaim(&mut self) {
        let free = &mut self.free;
        self.retired.retain(|s| {
            if Arc::strong_count(s) == 1 {
                free.push(s.page);
                false
            } else {
                true
            }
        });
    }

    fn commit(&mut self, txn: u64) {
        self.reclaim();
        let page = self
            .free
            .pop()
            .expect("model sized so a page is always free");
        // Copy-on-write: only a page no snapshot can reach is written.
        self.shared.pages[page].store(txn, Ordering::Release);
        let new = Arc::new(Snapshot { txn, page });
        let old = std::mem::replace(&mut *self.shared.current.lock().unwrap(), new);
        self.retired.push(old);
    }
}

fn pin_and_read(shared: &Shared) {
    let snap = shared.current.lock().unwrap().clone();
    for _ in 0..2 {
        let seen = shared.pages[snap.page].load(Ordering::Acquire);
        assert_eq!(
            seen, snap.txn,
            "page {} of pinned txn {} was reused",
            snap.page, snap.txn
        );
        thread::yield_now();
    }
}

#[test]
fn pinned_snapshot_pages_are_never_reused() {
    loom::model(|| {
        let shared = Arc::new(Shared {
            pages: [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)],
            current: Mutex::new(Arc::new(Snapshot { txn: 0, page: 0 })),
        });
        let mut w = Writer {
            shared: shared.clone(),
            free: vec![2, 1],
            retired: Vec::new(),
        };
        let r = {
            let shared = shared.clone();
            thread::spawn(move || pin_and_read(&shared))
        };
        for txn in 1..=3 {
            w.commit(txn);
        }
        r.join().unwrap();
        // With the reader gone, every retired page comes back.
        w.reclaim();
        assert_eq!(w.free.len() + 1, PAGES);
    });
}
