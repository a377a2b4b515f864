//! Bridges between tonic's `Send` world and a core's `!Send` state.
//!
//! tonic's service traits require `Send + Sync` handlers and `Send` futures, but a core's state
//! (`Rc`, `RefCell`, glommio channels and files) is `!Send`. Handlers run on the core that
//! accepted the connection, so they can reach that core's state without locks:
//!
//! - [`CoreLocal<T>`]: a `Send + Sync` handle to a value owned by one core thread; only that
//!   thread may touch the value (checked on every access).
//! - [`run_local`]: starts a `!Send` future as a task on the current core and returns a `Send`
//!   future of its output, so a tonic handler can `.await` it.
//!
//! ```no_run
//! use ferrite_net::{run_local, CoreLocal};
//! use std::rc::Rc;
//! use std::cell::Cell;
//!
//! struct Counter { hits: CoreLocal<Cell<u64>> }
//!
//! impl Counter {
//!     // Called from a tonic handler: the returned future is `Send`.
//!     async fn hit(&self) -> u64 {
//!         let hits = self.hits.rc(); // Rc<Cell<u64>>, only used inside the local task
//!         run_local(async move {
//!             hits.set(hits.get() + 1);
//!             hits.get()
//!         })
//!         .await
//!         .expect("core shutting down")
//!     }
//! }
//! ```

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::thread::ThreadId;

use futures_channel::oneshot;

/// The local task behind a [`run_local`] call was dropped before finishing (the executor is
/// shutting down).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalTaskCanceled;

impl std::fmt::Display for LocalTaskCanceled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("local task was dropped before completing (executor shutting down)")
    }
}

impl std::error::Error for LocalTaskCanceled {}

/// Spawns `fut` as a task on the current glommio executor and returns a `Send` future of its
/// output. `fut` itself need not be `Send`. Must be called on a glommio executor thread.
///
/// The task runs to completion even if the returned future is dropped (a client that cancels a
/// write must not cancel the write half-way).
pub fn run_local<F>(fut: F) -> LocalCall<F::Output>
where
    F: Future + 'static,
    F::Output: Send + 'static,
{
    let (tx, rx) = oneshot::channel();
    glommio::spawn_local(async move {
        let out = fut.await;
        let _ = tx.send(out);
    })
    .detach();
    LocalCall { rx }
}

/// The `Send` future returned by [`run_local`].
#[derive(Debug)]
pub struct LocalCall<T> {
    rx: oneshot::Receiver<T>,
}

impl<T> Future for LocalCall<T> {
    type Output = Result<T, LocalTaskCanceled>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.rx)
            .poll(cx)
            .map(|r| r.map_err(|_| LocalTaskCanceled))
    }
}

/// A `Send + Sync` handle to a value that lives on one core thread.
///
/// Every access checks that it happens on the owning thread and panics otherwise. If the
/// handle is dropped on another thread the value is leaked instead of dropped there (an `Rc`
/// must not be touched from two threads).
pub struct CoreLocal<T: 'static> {
    // `Option` so a drop on a foreign thread can leak the Rc instead of decrementing it.
    value: Option<Rc<T>>,
    owner: ThreadId,
}

// SAFETY: the `Rc<T>` inside is only ever dereferenced, cloned or dropped on the `owner`
// thread: `rc`, `get` and `clone` assert the current thread is `owner`, and `drop` leaks the Rc
// (never touching its counts) when run on any other thread. So sending or sharing the handle
// across threads never lets two threads touch the Rc or the `T`.
unsafe impl<T: 'static> Send for CoreLocal<T> {}
// SAFETY: see `Send` above; `&CoreLocal<T>` gives access to `T` only on the owner thread.
unsafe impl<T: 'static> Sync for CoreLocal<T> {}

impl<T: 'static> CoreLocal<T> {
    /// Takes ownership of `value` on the current thread.
    pub fn new(value: T) -> Self {
        Self::from_rc(Rc::new(value))
    }

    /// Wraps an existing `Rc` owned by the current thread.
    pub fn from_rc(value: Rc<T>) -> Self {
        CoreLocal {
            value: Some(value),
            owner: std::thread::current().id(),
        }
    }

    fn check_owner(&self) {
        assert_eq!(
            std::thread::current().id(),
            self.owner,
            "CoreLocal accessed from a thread other than the core that owns it"
        );
    }

    /// The value. Panics off the owning thread.
    pub fn get(&self) -> &T {
        self.check_owner();
        self.value
            .as_deref()
            .expect("CoreLocal value present until drop")
    }

    /// A clone of the `Rc`, to move into a [`run_local`] task. Panics off the owning thread.
    pub fn rc(&self) -> Rc<T> {
        self.check_owner();
        Rc::clone(
            self.value
                .as_ref()
                .expect("CoreLocal value present until drop"),
        )
    }

    /// Whether the current thread owns the value.
    pub fn is_owner(&self) -> bool {
        std::thread::current().id() == self.owner
    }
}

impl<T: 'static> Clone for CoreLocal<T> {
    fn clone(&self) -> Self {
        CoreLocal {
            value: Some(self.rc()),
            owner: self.owner,
        }
    }
}

impl<T: 'static> Drop for CoreLocal<T> {
    fn drop(&mut self) {
        if !self.is_owner() {
            if let Some(rc) = self.value.take() {
                std::mem::forget(rc);
            }
        }
    }
}

impl<T: 'static> std::fmt::Debug for CoreLocal<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoreLocal")
            .field("owner", &self.owner)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn owner_thread_reads_and_clones() {
        let v = CoreLocal::new(Cell::new(3));
        v.get().set(4);
        let c = v.clone();
        assert_eq!(c.rc().get(), 4);
        assert!(v.is_owner());
        assert_eq!(Rc::strong_count(&v.rc()), 3); // v, c and the temporary
    }

    #[test]
    fn other_threads_cannot_touch_the_value() {
        let v = CoreLocal::new(Cell::new(1u32));
        let shared = std::sync::Arc::new(v);
        let remote = std::sync::Arc::clone(&shared);
        let outcome = std::thread::spawn(move || {
            assert!(!remote.is_owner());
            let get = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| remote.get().get()));
            let clone = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                CoreLocal::clone(&remote)
            }));
            (get.is_err(), clone.is_err())
        })
        .join()
        .unwrap();
        assert_eq!(outcome, (true, true));
        assert_eq!(shared.get().get(), 1);
    }

    #[test]
    fn drop_on_another_thread_leaks_instead_of_touching_the_rc() {
        let v = CoreLocal::new(Cell::new(1u32));
        let keep = v.rc();
        std::thread::spawn(move || drop(v)).join().unwrap();
        // The foreign drop did not decrement the count (it leaked its reference).
        assert_eq!(Rc::strong_count(&keep), 2);
    }
}
