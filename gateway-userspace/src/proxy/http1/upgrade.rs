//! An upgraded connection (after a 101, or a 2xx to CONNECT): handed from the connection
//! loop to whoever kept the request's `PendingUpgrade`, with the bytes the client sent
//! after its request head.

use std::{
    io,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use bytes::{Buf, Bytes};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    sync::oneshot,
};

/// The client's connection, whatever carries it (TCP, TLS).
pub(in crate::proxy) trait ClientIo:
    AsyncRead + AsyncWrite + Unpin + Send
{
}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> ClientIo for T {}

/// In an upgrade request's extensions: resolves to the connection once the answer
/// switched protocols. (Extensions must be `Clone`, hence the shared slot.)
#[derive(Clone)]
pub(in crate::proxy) struct PendingUpgrade(Arc<Mutex<Option<oneshot::Receiver<Upgraded>>>>);

impl PendingUpgrade {
    pub(super) fn new() -> (Self, oneshot::Sender<Upgraded>) {
        let (sender, receiver) = oneshot::channel();
        (PendingUpgrade(Arc::new(Mutex::new(Some(receiver)))), sender)
    }

    /// The connection, once handed over; None if the answer did not switch protocols.
    pub(in crate::proxy) async fn upgraded(self) -> Option<Upgraded> {
        let receiver = self.0.lock().ok()?.take()?;
        receiver.await.ok()
    }
}

pub(in crate::proxy) struct Upgraded {
    /// Bytes read after the request head, replayed first.
    pub(super) prefix: Bytes,
    pub(super) io: Box<dyn ClientIo>,
}

impl AsyncRead for Upgraded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Upgraded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
