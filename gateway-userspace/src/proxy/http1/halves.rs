//! The connection's two halves for the time of one request: its body is read while the
//! response is written, by one task (the exchange's `select!`), so the lock is never
//! contended. Unlike `tokio::io::split` this allocates nothing per request, and the read
//! half still says when the socket is readable (`IdleWait`), so a stalled body can wait
//! without holding a read buffer.

use std::{
    io::IoSlice,
    pin::Pin,
    sync::{Mutex, MutexGuard, PoisonError},
    task::{Context, Poll},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::idle::IdleWait;

/// One half of `io`; both halves of a request share the same lock.
pub(super) struct Half<'a, S>(&'a Mutex<S>);

/// Both halves of `io` (a `&mut` to the connection, so that nothing moves).
pub(super) fn split<S>(io: &Mutex<S>) -> (Half<'_, S>, Half<'_, S>) {
    (Half(io), Half(io))
}

impl<S> Half<'_, S> {
    fn lock(&self) -> MutexGuard<'_, S> {
        // A panic while holding the lock leaves the stream as it was; keep using it.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Half<'_, S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.lock()).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Half<'_, S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut *self.lock()).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut *self.lock()).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.lock().is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.lock()).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.lock()).poll_shutdown(cx)
    }
}

impl<S: IdleWait> IdleWait for Half<'_, S> {
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.lock().poll_idle(cx)
    }
}
