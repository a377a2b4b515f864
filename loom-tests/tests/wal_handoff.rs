//! loom model of `ferrite_wal::GroupWal`'s hand-off (wal/src/group.rs): appenders push a
//! request into a mutex-guarded queue and notify a condvar only when the queue was empty;
//! the I/O thread takes the whole queue, "writes and syncs" it, then completes each
//! request through a one-shot slot holding the result and the appender's waker.
//!
//! Checked for every interleaving loom explores: no lost wake-up (a request pushed while
//! the I/O thread is busy or about to sleep is still served: otherwise loom reports a
//! deadlock), each append resolves exactly once, and only after a sync that covered it.
//!
//! The second model adds `GroupWal::append_inline`: an appender that finds the I/O thread
//! idle with nothing queued claims `busy` under the queue's lock and writes on its own
//! thread; otherwise it queues. Checked: the I/O thread and an inline writer never write
//! at the same time, and nothing is lost or left waiting.
//!
//! ```text
//! RUSTFLAGS="--cfg loom" cargo test -p loom-tests --release --test wal_handoff
//! ```
#![cfg(loom)]

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Wake, Waker};

use loom::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
    /// Someone (the I/O thread or an inline writer) is writing.
    busy: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    wake_io: Condvar,
    /// Bit `t` is set once ticket `t` was written and synced (the "disk").
    durable_mask: AtomicU64,
    syncs: AtomicU64,
    /// Set while a group is being written; two writers at once is a bug.
    writing: AtomicBool,
}

impl Shared {
    fn new() -> Arc<Shared> {
        Arc::new(Shared {
            queue: Mutex::new(Queue {
                requests: Vec::new(),
                closed: false,
                busy: false,
            }),
            wake_io: Condvar::new(),
            durable_mask: AtomicU64::new(0),
            syncs: AtomicU64::new(0),
            writing: AtomicBool::new(false),
        })
    }

    /// "Writes and syncs" one group; returns its sync generation.
    fn write_group(&self, mask: u64) -> u64 {
        assert!(
            !self.writing.swap(true, Ordering::SeqCst),
            "two writers at once"
        );
        self.durable_mask.fetch_or(mask, Ordering::SeqCst);
        let generation = self.syncs.fetch_add(1, Ordering::SeqCst) + 1;
        self.writing.store(false, Ordering::SeqCst);
        generation
    }
}

/// `write_inline` in group.rs: write on the caller's thread if the I/O thread is idle with
/// nothing queued, else queue. Returns the completion either way.
fn append_inline(shared: &Shared, ticket: u64) -> Arc<Completion> {
    {
        let mut q = shared.queue.lock().unwrap();
        if q.closed || q.busy || !q.requests.is_empty() {
            drop(q);
            return push(shared, ticket);
        }
        q.busy = true;
    }
    let c = Arc::new(Completion {
        slot: Mutex::new((None, None)),
    });
    c.complete(shared.write_group(1 << ticket));
    // `InlineBusy::drop`.
    let mut q = shared.queue.lock().unwrap();
    q.busy = false;
    let wake = !q.requests.is_empty() || q.closed;
    drop(q);
    if wake {
        shared.wake_io.notify_one();
    }
    c
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
            while q.busy || (q.requests.is_empty() && !q.closed) {
                q = shared.wake_io.wait(q).unwrap();
            }
            if q.requests.is_empty() {
                break;
            }
            q.busy = true;
            std::mem::take(&mut q.requests)
        };
        // One write + one sync for the whole group.
        let mask = batch.iter().fold(0u64, |m, (t, _)| m | 1 << t);
        let generation = shared.write_group(mask);
        for (_, c) in batch {
            c.complete(generation);
        }
        shared.queue.lock().unwrap().busy = false;
    }
}

/// A fresh log and its running I/O thread.
fn start() -> (Arc<Shared>, thread::JoinHandle<()>) {
    let shared = Shared::new();
    let s = shared.clone();
    (shared, thread::spawn(move || io_thread(s)))
}

/// Closes the queue, wakes the I/O thread and waits for it to drain and exit.
fn close_and_join(shared: &Shared, io: thread::JoinHandle<()>) {
    shared.queue.lock().unwrap().closed = true;
    shared.wake_io.notify_one();
    io.join().unwrap();
}

#[test]
fn appends_complete_once_after_their_sync() {
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(3);
    b.check(|| {
        let (shared, io) = start();
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
        close_and_join(&shared, io);
        assert!(shared.syncs.load(Ordering::SeqCst) <= 2);
    });
}

#[test]
fn inline_writer_and_io_thread_never_write_at_once() {
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(3);
    b.check(|| {
        let (shared, io) = start();
        // Ticket 1 appends inline twice (the second may find the I/O thread busy with
        // ticket 2's group and queue instead); ticket 2 queues.
        let inline = {
            let s = shared.clone();
            thread::spawn(move || {
                for ticket in [1u64, 3] {
                    let generation = block_on(Wait(append_inline(&s, ticket)));
                    assert!(s.durable_mask.load(Ordering::SeqCst) & (1 << ticket) != 0);
                    assert!(s.syncs.load(Ordering::SeqCst) >= generation);
                }
            })
        };
        let queued = {
            let s = shared.clone();
            thread::spawn(move || {
                let generation = block_on(Wait(push(&s, 2)));
                assert!(s.durable_mask.load(Ordering::SeqCst) & (1 << 2) != 0);
                assert!(s.syncs.load(Ordering::SeqCst) >= generation);
            })
        };
        inline.join().unwrap();
        queued.join().unwrap();
        close_and_join(&shared, io);
        assert_eq!(shared.durable_mask.load(Ordering::SeqCst), 0b1110);
        assert!(!shared.queue.lock().unwrap().busy);
    });
}
