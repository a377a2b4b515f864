//! loom model of how a glommio executor goes to sleep and how another thread wakes it, as
//! ferrite's vendored glommio does it (vendor/glommio/FERRITE-PATCH.md): the membarrier
//! system call replaced by a `SeqCst` fence on each side.
//!
//! The sleeper (`Reactor::sleep`): set "notify me" (`SleepNotifier::prepare_to_sleep`), a
//! `SeqCst` fence (`membarrier::heavy`), one last look at the foreign-waker queue
//! (`process_remote_channels`); an empty queue means it blocks on its eventfd. The waker
//! (`SleepNotifier::queue_waker` → `notify`): push its waker, a `SeqCst` fence
//! (`membarrier::light`, the patch's addition), then take the flag with a compare-exchange
//! and, if it was set, write the eventfd.
//!
//! Checked for every interleaving and every value a load may read: an executor that found
//! the queue empty and blocked is always woken (the eventfd was written). The same model
//! without the fences loses that wake-up (the store-buffering outcome): `without_fences_...`
//! asserts loom finds it, so the model can fail.
//!
//! ```text
//! RUSTFLAGS="--cfg loom" cargo test -p loom-tests --release --test glommio_sleep
//! ```
#![cfg(loom)]

use loom::sync::atomic::{fence, AtomicBool, AtomicUsize, Ordering};
use loom::sync::Arc;
use loom::thread;

struct Notifier {
    /// `SleepNotifier::should_notify`.
    should_notify: AtomicBool,
    /// Wakers queued by other threads (glommio's crossbeam channel: release on send,
    /// acquire on receive).
    queued: AtomicUsize,
    /// eventfd writes.
    eventfd_writes: AtomicUsize,
}

/// One sleep attempt. Returns true if the executor blocked on its eventfd (it saw no waker).
fn sleeper(n: &Notifier, fenced: bool) -> bool {
    n.should_notify.store(true, Ordering::Relaxed);
    if fenced {
        fence(Ordering::SeqCst);
    }
    n.queued.load(Ordering::Acquire) == 0
}

/// One foreign wake.
fn waker(n: &Notifier, fenced: bool) {
    n.queued.fetch_add(1, Ordering::Release);
    if fenced {
        fence(Ordering::SeqCst);
    }
    if n.should_notify
        .compare_exchange(true, false, Ordering::Relaxed, Ordering::Relaxed)
        .is_ok()
    {
        n.eventfd_writes.fetch_add(1, Ordering::Relaxed);
    }
}

fn model(fenced: bool) {
    loom::model(move || {
        let n = Arc::new(Notifier {
            should_notify: AtomicBool::new(false),
            queued: AtomicUsize::new(0),
            eventfd_writes: AtomicUsize::new(0),
        });
        let n2 = n.clone();
        let w = thread::spawn(move || waker(&n2, fenced));
        let blocked = sleeper(&n, fenced);
        w.join().unwrap();
        if blocked {
            assert!(
                n.eventfd_writes.load(Ordering::Relaxed) > 0,
                "lost wake-up: the executor blocked with a waker queued and no eventfd write"
            );
        }
    });
}

#[test]
fn a_sleeping_executor_is_always_woken() {
    model(true);
}

#[test]
fn without_fences_the_model_finds_the_lost_wake_up() {
    let r = std::panic::catch_unwind(|| model(false));
    assert!(
        r.is_err(),
        "loom should find the store-buffering lost wake-up"
    );
}
