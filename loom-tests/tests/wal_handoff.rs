//! loom model of `ferrite_wal::GroupWal`'s hand-off (wal/src/group.rs): appenders push a
//! request into a mutex-guarded queue and notify a condvar only when the queue was empty;
//! the I/O thread takes the whole queue, "writes and syncs" it, then completes each
//! request through a one-shot slot holding the result and the appender's waker.
//!
//! Checked for every interleaving loom explores: no lost wake-up (a request pushed while
//! the I/O thread is busy or about to sleep is still served: otherwise loom reports a
//! deadlock), each append resolves exactly once, and only after a sync that covered it.
//!
//! ```text
//! RUSTFLAGS="--cfg loom" cargo test -p loom-tests --release --test wal_handoff
//! ```
#![cfg(loom)]

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Wake, Waker};

use loom::sync::atomic::{AtomicU64, Ordering};
use loom::sync::{Arc, Condvar, Mutex};
use loom::thread;

/// Result slot + waker, as `Completion` in group.rs. The result is the sync generation
/// that made the append durable.
struct Completion {
    slot: Mutex<(Option<u64>, Option<Waker>)>,
}

impl Completion {
    fn complete(&self, r: u64) {
        let waker = {
            let mut s = self.slot.lock().unwrap();
            assert!(s.0.is_none(), "completed once");
            s.0 = Some(r);
            s.1.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

struct Wait(Arc<Completion>);

impl Future for Wait {
    type Output = u64;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<u64> {
        let mut s = self.0.slot.lock().unwrap();
        if let Some(r) = s.0.take() {
            return Poll::Ready(r);
        }
        match &s.1 {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => s.1 = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

/// A minimal executor for one future, parking on a loom condvar (the executor's side of
/// a cross-thread wake).
struct Parker {
    woken: Mutex<bool>,
    cond: Condvar,
}

impl Wake for Parker {
    fn wake(self: std::sync::Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &std::sync::Arc<Self>) {
        *self.woken.lock().unwrap() = true;
        self.cond.notify_one();
    }
}

fn block_on<F: Future>(f: F) -> F::Output {
    let parker = std::sync::Arc::new(Parker {
        woken: Mutex::new(false),
        cond: Condvar::new(),
    });
    let waker = Waker::from(parker.clone());
    let mut cx = Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        let mut woken = parker.woken.lock().unwrap();
        while !*woken {
            woken = parker.cond.wait(woken).unwrap();
        }
        *woken = false;
    }
}

struct Queue {
    requests: Vec<(u64, Arc<Completion>)>,
    closed: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    wake_io: Condvar,
    /// Bit `t` is set once ticket `t` was written and synced (the "disk").
    durable_mask: AtomicU64,
    syncs: AtomicU64,
}

fn push(shared: &Shared, ticket: u64) -> Arc<Completion> {
    let c = Arc::new(Completion {
        slot: Mutex::new((None, None)),
    });
    let mut q = shared.queue.lock().unwrap();
    assert!(!q.closed);
    let was_empty = q.requests.is_empty();
    q.requests.push((ticket, c.clone()));
    drop(q);
    if was_empty {
        shared.wake_io.notify_one();
    }
    c
}

fn io_thread(shared: Arc<Shared>) {
    loop {
        let batch = {
            let mut q = shared.queue.lock().unwrap();
            while q.requests.is_empty() && !q.closed {
                q = shared.wake_io.wait(q).unwrap();
            }
            if q.requests.is_empty() {
                break;
            }
            std::mem::take(&mut q.requests)
        };
        // One write + one sync for the whole group.
        let mask = batch.iter().fold(0u64, |m, (t, _)| m | 1 << t);
        shared.durable_mask.fetch_or(mask, Ordering::SeqCst);
        let generation = shared.syncs.fetch_add(1, Ordering::SeqCst) + 1;
        for (_, c) in batch {
            c.complete(generation);
        }
    }
}

#[test]
fn appends_complete_once_after_their_sync() {
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(3);
    b.check(|| {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                requests: Vec::new(),
                closed: false,
            }),
            wake_io: Condvar::new(),
            durable_mask: AtomicU64::new(0),
            syncs: AtomicU64::new(0),
        });
        let io = {
            let s = shared.clone();
            thread::spawn(move || io_thread(s))
        };
        let appenders: Vec<_> = (1..=2u64)
            .map(|ticket| {
                let s = shared.clone();
                thread::spawn(move || {
                    let c = push(&s, ticket);
                    let generation = block_on(Wait(c));
                    assert!(generation >= 1);
                    // Acknowledged only after a sync that covered this ticket.
                    assert!(s.durable_mask.load(Ordering::SeqCst) & (1 << ticket) != 0);
                    assert!(s.syncs.load(Ordering::SeqCst) >= generation);
                })
            })
            .collect();
        for a in appenders {
            a.join().unwrap();
        }
        {
            let mut q = shared.queue.lock().unwrap();
            q.closed = true;
        }
        shared.wake_io.notify_one();
        io.join().unwrap();
        assert!(shared.syncs.load(Ordering::SeqCst) <= 2);
    });
}
