//! hyper's runtime hooks implemented on glommio: an executor that `spawn_local`s, a timer, and an
//! I/O adapter. All of them must be used from inside a glommio executor thread.

use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_channel::oneshot;
use futures_lite::io::{AsyncRead, AsyncWrite};

/// Largest slice handed to one `read` call. hyper offers its read buffer's spare capacity, which
/// is uninitialised; it is zeroed before the read (safe code cannot pass uninitialised memory
/// to `AsyncRead`), so the window is bounded to keep the zeroing cheap.
const READ_WINDOW_BYTES_MAX: usize = 64 * 1024;

/// hyper executor that runs hyper's background tasks (HTTP/2 streams) on the current glommio
/// executor with `spawn_local`. hyper's futures need not be `Send` with it.
#[derive(Clone, Copy, Debug, Default)]
pub struct LocalExec;

impl<F> hyper::rt::Executor<F> for LocalExec
where
    F: Future + 'static,
{
    fn execute(&self, fut: F) {
        glommio::spawn_local(fut).detach();
    }
}

/// hyper timer on glommio's timers.
///
/// hyper requires its `Sleep` to be `Send + Sync`, glommio's `Timer` is neither: each sleep spawns
/// a local task that waits on a glommio timer and completes a (`Send`) oneshot. Dropping the
/// sleep cancels the task's wait, so abandoned timeouts do not pile up.
#[derive(Clone, Copy, Debug, Default)]
pub struct GlommioTimer;

impl hyper::rt::Timer for GlommioTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(BridgedSleep::new(duration))
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(BridgedSleep::new(
            deadline.saturating_duration_since(Instant::now()),
        ))
    }
}

/// A `Send + Sync` sleep completed by a glommio-local timer task.
pub struct BridgedSleep {
    done: oneshot::Receiver<()>,
}

impl BridgedSleep {
    /// Starts the timer. Must be called on a glommio executor thread.
    pub fn new(duration: Duration) -> Self {
        let (mut tx, rx) = oneshot::channel();
        glommio::spawn_local(async move {
            let cancelled = tx.cancellation();
            // Whichever comes first: the deadline, or the Sleep being dropped.
            futures_lite::future::or(glommio::timer::sleep(duration), cancelled).await;
            let _ = tx.send(());
        })
        .detach();
        BridgedSleep { done: rx }
    }
}

impl Future for BridgedSleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        // Err(Canceled) only happens if the executor dropped the timer task (shutdown):
        // treat it as expired rather than hanging forever.
        Pin::new(&mut self.done).poll(cx).map(|_| ())
    }
}

impl hyper::rt::Sleep for BridgedSleep {}

/// Adapts a futures-io byte stream (glommio's `TcpStream`, or a TLS stream over it) to hyper's
/// `Read`/`Write` traits.
#[derive(Debug)]
pub struct HyperIo<T> {
    inner: T,
}

impl<T> HyperIo<T> {
    /// Wraps a stream.
    pub fn new(inner: T) -> Self {
        HyperIo { inner }
    }

    /// The wrapped stream.
    pub fn into_inner(self) -> T {
        self.inner
    }
}

impl<T: AsyncRead + Unpin> hyper::rt::Read for HyperIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        // SAFETY: we only write initialised bytes into the slice (zeroes, then what `read`
        // returns) and never read uninitialised ones.
        let spare = unsafe { buf.as_mut() };
        let window = spare.len().min(READ_WINDOW_BYTES_MAX);
        let spare = &mut spare[..window];
        spare.fill(MaybeUninit::new(0));
        // SAFETY: every element of `spare` was initialised by the fill above, and
        // `MaybeUninit<u8>` has the same layout as `u8`.
        let init: &mut [u8] =
            unsafe { std::slice::from_raw_parts_mut(spare.as_mut_ptr().cast::<u8>(), window) };
        match Pin::new(&mut self.inner).poll_read(cx, init) {
            Poll::Ready(Ok(n)) => {
                assert!(
                    n <= window,
                    "read reported more bytes than the buffer holds"
                );
                // SAFETY: the first `n` bytes were initialised above and filled by `read`.
                unsafe { buf.advance(n) };
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: AsyncWrite + Unpin> hyper::rt::Write for HyperIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }

    fn is_write_vectored(&self) -> bool {
        false
    }
}
