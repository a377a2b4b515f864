//! `GroupWal`: the group-commit front end used from a glommio executor.
//!
//! Each append goes at once into a queue shared with one WAL I/O thread (a plain OS
//! thread, so no blocking syscall runs on an executor thread) and its appender awaits a
//! completion. The I/O thread takes everything queued, writes it with one pwrite and makes
//! it durable with one fdatasync, then completes every appender of the group. While it
//! syncs, new appends queue up and become the next group: batching adapts to load and a
//! lone append on an idle log is written at once (no timer, no linger).
//!
//! (An earlier version staged a turn's appends and handed them over from a spawned task,
//! meant to run after the tasks already runnable. glommio's `spawn_local` polls a task
//! spawned from a running task at once, so that task handed each append over as it was
//! made; the hand-over is now direct, with the same behaviour.)
//!
//! An append made with [`GroupWal::append_inline`] is instead written and synced on the
//! caller's thread, before the call returns, when the I/O thread has nothing queued and is
//! not writing: a lone appender (a lone voter under light load) then skips the two thread
//! wake-ups (to the I/O thread and back) at the price of blocking its executor for one
//! write + sync. The I/O thread and an inline writer share the log core under a mutex; a
//! `busy` flag kept under the queue's lock says which of them writes, so groups are never
//! reordered.
//!
//! The hand-off protocol (queue under a mutex + condvar to the I/O thread; a one-shot
//! completion holding a result and a waker back to the appender; the `busy` claim of an
//! inline write) is modelled with loom in `loom-tests/tests/wal_handoff.rs`.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
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
    /// A group is being written (by the I/O thread, or inline by the executor): whoever
    /// set it is the only one touching the log core until it clears it.
    busy: bool,
}

/// The log core, behind the queue, as the I/O thread and an inline writer use it.
trait Core: Send {
    fn commit_group(&mut self, appends: &[Vec<WalRecord>]) -> Vec<Result<(), WalError>>;
    fn release_below(&mut self, index: u64) -> Result<usize, WalError>;
}

impl<S: Storage> Core for Wal<S> {
    fn commit_group(&mut self, appends: &[Vec<WalRecord>]) -> Vec<Result<(), WalError>> {
        Wal::commit_group(self, appends)
    }
    fn release_below(&mut self, index: u64) -> Result<usize, WalError> {
        Wal::release_below(self, index)
    }
}

struct Shared {
    /// Set once the log is closing: no more requests are taken.
    closed: AtomicBool,
    queue: Mutex<Queue>,
    wake_io: Condvar,
    /// The log core; `None` until the I/O thread has opened it and after it exits. Locked
    /// only by the holder of `Queue::busy`, so never contended.
    core: Mutex<Option<Box<dyn Core>>>,
    groups: AtomicU64,
    appends: AtomicU64,
    /// Groups written inline on the executor's thread (a subset of `groups`).
    inline_groups: AtomicU64,
}

/// Counters of the group commit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GroupStats {
    /// Groups written (each one write + one fdatasync, more if a group filled a segment).
    pub groups: u64,
    /// Appends acknowledged or failed.
    pub appends: u64,
    /// Groups written on the executor's thread by [`GroupWal::append_inline`].
    pub inline_groups: u64,
}

/// The group-committed WAL for use on one glommio executor (the Raft core).
pub struct GroupWal {
    shared: Arc<Shared>,
    exited: Arc<Completion<()>>,
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
            core: Mutex::new(None),
            groups: AtomicU64::new(0),
            appends: AtomicU64::new(0),
            inline_groups: AtomicU64::new(0),
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
        Ok((GroupWal { shared, exited }, recovered))
    }

    fn push(&self, r: Request, inline: bool) -> Result<(), WalError> {
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(WalError::Closed);
        }
        let r = match r {
            Request::Append(records, responder) if inline => {
                match write_inline(&self.shared, records, responder) {
                    None => return Ok(()),
                    Some((records, responder)) => Request::Append(records, responder),
                }
            }
            r => r,
        };
        hand_over(&self.shared, r);
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
        self.append_with(records, false)
    }

    /// Like [`GroupWal::append`], but if the I/O thread has nothing queued and is not
    /// writing, the records are written and synced on the calling thread before this
    /// returns (blocking it for that write + fdatasync, and for a segment preparation still
    /// in flight if the append fills the segment). For a lone appender under light load: it
    /// saves the wake-up of the I/O thread and the wake-up back. Ordering and durability
    /// are those of `append`.
    pub fn append_inline(
        &self,
        records: Vec<WalRecord>,
    ) -> impl Future<Output = Result<(), WalError>> + 'static {
        self.append_with(records, true)
    }

    fn append_with(
        &self,
        records: Vec<WalRecord>,
        inline: bool,
    ) -> impl Future<Output = Result<(), WalError>> + 'static {
        let c = Completion::new();
        let queued = self.push(Request::Append(records, Responder(Some(c.clone()))), inline);
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
        let queued = self.push(Request::Release(index, Responder(Some(c.clone()))), false);
        async move {
            queued?;
            Wait(c).await
        }
    }

    pub fn stats(&self) -> GroupStats {
        GroupStats {
            groups: self.shared.groups.load(Ordering::Relaxed),
            appends: self.shared.appends.load(Ordering::Relaxed),
            inline_groups: self.shared.inline_groups.load(Ordering::Relaxed),
        }
    }

    /// Serves every queued request, stops the I/O thread and waits for it to exit.
    pub async fn close(self) {
        self.shut();
        let _ = Wait(self.exited.clone()).await;
    }

    fn shut(&self) {
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

/// Puts a request into the I/O thread's queue (order kept) and wakes the thread if the
/// queue was empty.
fn hand_over(shared: &Shared, r: Request) {
    let mut q = shared.queue.lock().unwrap_or_else(|p| p.into_inner());
    if q.closed {
        return; // dropping the request answers it with `Closed`
    }
    let was_empty = q.requests.is_empty();
    q.requests.push(r);
    drop(q);
    if was_empty {
        shared.wake_io.notify_one();
    }
}

/// Writes and syncs one append on the calling thread if the I/O thread is idle with
/// nothing queued: claims `busy` under the queue's lock, commits the append as a group of
/// one with the core's lock held, answers it, then releases `busy` (waking the I/O thread
/// if requests arrived meanwhile). Gives the append back if the I/O thread is busy, has
/// requests queued, or the log is closing.
fn write_inline(
    shared: &Shared,
    records: Vec<WalRecord>,
    responder: Responder<()>,
) -> Option<(Vec<WalRecord>, Responder<()>)> {
    {
        let mut q = shared.queue.lock().unwrap_or_else(|p| p.into_inner());
        if q.closed || q.busy || !q.requests.is_empty() {
            return Some((records, responder));
        }
        q.busy = true;
    }
    // Releases `busy` however this ends (a panic included).
    let _busy = InlineBusy(shared);
    let mut appends = vec![records];
    let mut waiting = vec![responder];
    let mut core = shared.core.lock().unwrap_or_else(|p| p.into_inner());
    match core.as_mut() {
        Some(core) => {
            commit(core.as_mut(), shared, &mut appends, &mut waiting);
            shared.inline_groups.fetch_add(1, Ordering::Relaxed);
        }
        // The I/O thread has exited: dropping the responder answers `Closed`.
        None => drop(waiting),
    }
    None
}

/// An inline writer's claim on `Queue::busy`, released on drop.
struct InlineBusy<'a>(&'a Shared);

impl Drop for InlineBusy<'_> {
    fn drop(&mut self) {
        let mut q = self.0.queue.lock().unwrap_or_else(|p| p.into_inner());
        q.busy = false;
        let wake = !q.requests.is_empty() || q.closed;
        drop(q);
        if wake {
            self.0.wake_io.notify_one();
        }
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
    match opened_wal {
        Ok((wal, recovered)) => {
            *shared.core.lock().unwrap_or_else(|p| p.into_inner()) = Some(Box::new(wal));
            opened.send(Ok(recovered));
        }
        Err(e) => {
            close_queue(&shared);
            return opened.send(Err(e));
        }
    }
    let mut appends: Vec<Vec<WalRecord>> = Vec::new();
    let mut waiting: Vec<Responder<()>> = Vec::new();
    loop {
        let batch = {
            let mut q = shared.queue.lock().unwrap_or_else(|p| p.into_inner());
            // An inline writer holding `busy` finishes without waiting on this thread.
            while q.busy || (q.requests.is_empty() && !q.closed) {
                q = shared.wake_io.wait(q).unwrap_or_else(|p| p.into_inner());
            }
            if q.requests.is_empty() {
                break; // closed and drained
            }
            q.busy = true;
            std::mem::take(&mut q.requests)
        };
        {
            let mut core = shared.core.lock().unwrap_or_else(|p| p.into_inner());
            let wal = core
                .as_mut()
                .expect("the core is set while the thread runs");
            for req in batch {
                match req {
                    Request::Append(records, r) => {
                        appends.push(records);
                        waiting.push(r);
                    }
                    Request::Release(index, r) => {
                        commit(wal.as_mut(), &shared, &mut appends, &mut waiting);
                        r.send(wal.release_below(index));
                    }
                }
            }
            commit(wal.as_mut(), &shared, &mut appends, &mut waiting);
        }
        shared.queue.lock().unwrap_or_else(|p| p.into_inner()).busy = false;
    }
    // Waits for a segment preparation in flight.
    drop(shared.core.lock().unwrap_or_else(|p| p.into_inner()).take());
    exited.send(Ok(()));
}

fn commit(
    wal: &mut dyn Core,
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
