//! `GroupWal`: the group-commit front end used from a glommio executor.
//!
//! Appenders on the executor stage their records; the first append of an executor turn
//! spawns a flush task that, once the tasks already runnable have run, moves the turn's
//! requests into a queue shared with one WAL I/O thread (a plain OS thread, so no blocking
//! syscall ever runs on an executor thread). Each appender awaits a completion. The I/O
//! thread takes everything queued, writes it with one pwrite and makes it durable with one
//! fdatasync, then completes every appender of the group. While it syncs, new appends
//! queue up and become the next group: batching adapts to load and a lone append on an
//! idle log is written at once (no timer, no linger).
//!
//! The hand-off protocol (queue under a mutex + condvar to the I/O thread; a one-shot
//! completion holding a result and a waker back to the appender) is modelled with loom
//! in `loom-tests/tests/wal_handoff.rs`.

use std::cell::RefCell;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll, Waker};

use crate::core::Wal;
use crate::error::WalError;
use crate::storage::{FileStorage, Storage};
use crate::{Recovered, WalOptions, WalRecord};

/// The result (once sent) and the waker of the task awaiting it.
type Slot<T> = (Option<Result<T, WalError>>, Option<Waker>);

/// A one-shot result slot with the waker of the task awaiting it.
struct Completion<T> {
    slot: Mutex<Slot<T>>,
}

impl<T> Completion<T> {
    fn new() -> Arc<Completion<T>> {
        Arc::new(Completion {
            slot: Mutex::new((None, None)),
        })
    }

    fn complete(&self, r: Result<T, WalError>) {
        let waker = {
            let mut s = self.slot.lock().unwrap_or_else(|p| p.into_inner());
            assert!(s.0.is_none(), "a completion is completed once");
            s.0 = Some(r);
            s.1.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// Awaits a [`Completion`].
struct Wait<T>(Arc<Completion<T>>);

impl<T> Future for Wait<T> {
    type Output = Result<T, WalError>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut s = self.0.slot.lock().unwrap_or_else(|p| p.into_inner());
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

/// The I/O thread's end of a completion: completes with `Closed` if dropped unanswered
/// (so no appender waits forever, even if the I/O thread panics).
struct Responder<T>(Option<Arc<Completion<T>>>);

impl<T> Responder<T> {
    fn send(mut self, r: Result<T, WalError>) {
        self.0.take().expect("unanswered").complete(r);
    }
}

impl<T> Drop for Responder<T> {
    fn drop(&mut self) {
        if let Some(c) = self.0.take() {
            c.complete(Err(WalError::Closed));
        }
    }
}

enum Request {
    Append(Vec<WalRecord>, Responder<()>),
    Release(u64, Responder<usize>),
}

#[derive(Default)]
struct Queue {
    requests: Vec<Request>,
    closed: bool,
}

struct Shared {
    /// Set once the log is closing: no more requests are taken.
    closed: AtomicBool,
    queue: Mutex<Queue>,
    wake_io: Condvar,
    groups: AtomicU64,
    appends: AtomicU64,
}

/// Counters of the group commit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GroupStats {
    /// Groups written (each one write + one fdatasync, more if a group filled a segment).
    pub groups: u64,
    /// Appends acknowledged or failed.
    pub appends: u64,
}

/// The group-committed WAL for use on one glommio executor (the Raft core).
pub struct GroupWal {
    shared: Arc<Shared>,
    exited: Arc<Completion<()>>,
    /// Requests made during the current executor turn, handed to the I/O thread together
    /// by a flush task that runs after the tasks already runnable (no timer, no linger).
    staged: Rc<RefCell<Vec<Request>>>,
}

impl GroupWal {
    /// Opens (creating if needed) the log in `dir`, recovers it, and starts its I/O thread.
    /// Recovery runs on that thread, not on the calling executor.
    pub async fn open(
        dir: impl AsRef<Path>,
        options: WalOptions,
    ) -> Result<(GroupWal, Recovered), WalError> {
        let dir = dir.as_ref().to_path_buf();
        let name = dir.display().to_string();
        GroupWal::open_with(
            move || {
                FileStorage::open_dir(&dir)
                    .map_err(|e| WalError::io("open directory", dir.display().to_string(), &e))
            },
            options,
            name,
        )
        .await
    }

    /// Like [`GroupWal::open`] on any [`Storage`] (tests use the simulated disk), made by
    /// `make_storage` on the I/O thread. `name` names the log in errors.
    pub async fn open_with<S: Storage>(
        make_storage: impl FnOnce() -> Result<S, WalError> + Send + 'static,
        options: WalOptions,
        name: String,
    ) -> Result<(GroupWal, Recovered), WalError> {
        options.validate()?;
        let shared = Arc::new(Shared {
            closed: AtomicBool::new(false),
            queue: Mutex::new(Queue::default()),
            wake_io: Condvar::new(),
            groups: AtomicU64::new(0),
            appends: AtomicU64::new(0),
        });
        let opened = Completion::new();
        let exited = Completion::new();
        let (t_shared, t_opened, t_exited) = (
            shared.clone(),
            Responder(Some(opened.clone())),
            Responder(Some(exited.clone())),
        );
        std::thread::Builder::new()
            .name("wal-io".into())
            .spawn(move || {
                let wal = make_storage().and_then(|storage| Wal::open(storage, options));
                io_thread(wal, t_shared, t_opened, t_exited)
            })
            .map_err(|e| WalError::io("spawn I/O thread for", name, &e))?;
        let recovered = Wait(opened).await?;
        let staged = Rc::new(RefCell::new(Vec::new()));
        Ok((
            GroupWal {
                shared,
                exited,
                staged,
            },
            recovered,
        ))
    }

    fn push(&self, r: Request) -> Result<(), WalError> {
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(WalError::Closed);
        }
        let first_of_turn = {
            let mut staged = self.staged.borrow_mut();
            staged.push(r);
            staged.len() == 1
        };
        if first_of_turn {
            // First request of this turn: hand the turn's requests over once the tasks
            // already runnable (e.g. appenders just woken by the last group) have run.
            let (staged, shared) = (self.staged.clone(), self.shared.clone());
            glommio::spawn_local(async move { hand_over(&shared, &staged) }).detach();
        }
        Ok(())
    }

    /// Appends `records` and resolves once they are durable (after fdatasync). Concurrent
    /// calls share one write and one sync. Entry `i` supersedes logged entries `>= i`.
    /// The append is queued when this is called, not when the future is first polled, so
    /// the order of calls is the order in the log. Dropping the future does not withdraw it.
    pub fn append(
        &self,
        records: Vec<WalRecord>,
    ) -> impl Future<Output = Result<(), WalError>> + 'static {
        let c = Completion::new();
        let queued = self.push(Request::Append(records, Responder(Some(c.clone()))));
        async move {
            queued?;
            Wait(c).await
        }
    }

    /// Frees the segments whose entries are all below `index` (at most one past the
    /// logged snapshot marker), after every append queued before this call. Returns the
    /// number of segments freed.
    pub fn release_below(
        &self,
        index: u64,
    ) -> impl Future<Output = Result<usize, WalError>> + 'static {
        let c = Completion::new();
        let queued = self.push(Request::Release(index, Responder(Some(c.clone()))));
        async move {
            queued?;
            Wait(c).await
        }
    }

    pub fn stats(&self) -> GroupStats {
        GroupStats {
            groups: self.shared.groups.load(Ordering::Relaxed),
            appends: self.shared.appends.load(Ordering::Relaxed),
        }
    }

    /// Serves every queued request, stops the I/O thread and waits for it to exit.
    pub async fn close(self) {
        self.shut();
        let _ = Wait(self.exited.clone()).await;
    }

    fn shut(&self) {
        hand_over(&self.shared, &self.staged);
        self.shared.closed.store(true, Ordering::Release);
        let mut q = self.shared.queue.lock().unwrap_or_else(|p| p.into_inner());
        q.closed = true;
        drop(q);
        self.shared.wake_io.notify_one();
    }
}

impl Drop for GroupWal {
    fn drop(&mut self) {
        // Tell the I/O thread to finish; it exits on its own (joining it here would block
        // the executor). Use `close` to wait for it.
        self.shut();
    }
}

/// Moves the staged requests into the I/O thread's queue (order kept) and wakes it.
fn hand_over(shared: &Shared, staged: &RefCell<Vec<Request>>) {
    let mut batch = std::mem::take(&mut *staged.borrow_mut());
    if batch.is_empty() {
        return;
    }
    let mut q = shared.queue.lock().unwrap_or_else(|p| p.into_inner());
    if q.closed {
        return; // dropping the requests answers them with `Closed`
    }
    let was_empty = q.requests.is_empty();
    q.requests.append(&mut batch);
    drop(q);
    if was_empty {
        shared.wake_io.notify_one();
    }
}

fn io_thread<S: Storage>(
    opened_wal: Result<(Wal<S>, Recovered), WalError>,
    shared: Arc<Shared>,
    opened: Responder<Recovered>,
    exited: Responder<()>,
) {
    // However this thread ends (even by a panic), the queue is closed and whatever is
    // still in it is answered with `Closed`, so no appender waits forever.
    let _closer = CloseOnExit(shared.clone());
    let mut wal = match opened_wal {
        Ok((wal, recovered)) => {
            opened.send(Ok(recovered));
            wal
        }
        Err(e) => {
            close_queue(&shared);
            return opened.send(Err(e));
        }
    };
    let mut appends: Vec<Vec<WalRecord>> = Vec::new();
    let mut waiting: Vec<Responder<()>> = Vec::new();
    loop {
        let batch = {
            let mut q = shared.queue.lock().unwrap_or_else(|p| p.into_inner());
            while q.requests.is_empty() && !q.closed {
                q = shared.wake_io.wait(q).unwrap_or_else(|p| p.into_inner());
            }
            if q.requests.is_empty() {
                break; // closed and drained
            }
            std::mem::take(&mut q.requests)
        };
        for req in batch {
            match req {
                Request::Append(records, r) => {
                    appends.push(records);
                    waiting.push(r);
                }
                Request::Release(index, r) => {
                    commit(&mut wal, &shared, &mut appends, &mut waiting);
                    r.send(wal.release_below(index));
                }
            }
        }
        commit(&mut wal, &shared, &mut appends, &mut waiting);
    }
    drop(wal); // waits for a segment preparation in flight
    exited.send(Ok(()));
}

fn commit<S: Storage>(
    wal: &mut Wal<S>,
    shared: &Shared,
    appends: &mut Vec<Vec<WalRecord>>,
    waiting: &mut Vec<Responder<()>>,
) {
    if appends.is_empty() {
        return;
    }
    let results = wal.commit_group(appends);
    assert_eq!(results.len(), waiting.len());
    shared.groups.fetch_add(1, Ordering::Relaxed);
    shared
        .appends
        .fetch_add(results.len() as u64, Ordering::Relaxed);
    appends.clear();
    for (r, w) in results.into_iter().zip(waiting.drain(..)) {
        w.send(r);
    }
}

struct CloseOnExit(Arc<Shared>);

impl Drop for CloseOnExit {
    fn drop(&mut self) {
        close_queue(&self.0);
        let left = std::mem::take(
            &mut self
                .0
                .queue
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .requests,
        );
        drop(left); // each unanswered Responder answers `Closed`
    }
}

fn close_queue(shared: &Shared) {
    shared.closed.store(true, Ordering::Release);
    shared
        .queue
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .closed = true;
}
