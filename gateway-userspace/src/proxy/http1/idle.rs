//! Waiting for a client's next bytes without holding a buffer (`IdleWait`): what the
//! keep-alive loop (`serve`) and the read half of a split connection (`halves`) wait on.

use std::task::{Context, Poll};

use tokio::net::TcpStream;

/// Waiting for a client's next bytes without a buffer, so an idle keep-alive connection
/// holds none: a TCP socket tells when it is readable; a TLS stream when rustls holds
/// decrypted bytes already or its socket is readable.
pub(in crate::proxy) trait IdleWait {
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>>;
}

impl IdleWait for TcpStream {
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.poll_read_ready(cx)
    }
}

/// rustls wants more of the socket's bytes only when it holds no decrypted bytes (a read
/// returned all of them) and no close_notify: then the socket's readiness is the wait,
/// and the connection holds no buffer of ours meanwhile.
impl<S: IdleWait> IdleWait for tokio_rustls::server::TlsStream<S> {
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let (io, tls) = self.get_mut();
        if tls.wants_read() {
            io.poll_idle(cx)
        } else {
            Poll::Ready(Ok(()))
        }
    }
}

impl<S: IdleWait + ?Sized> IdleWait for &mut S {
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        (**self).poll_idle(cx)
    }
}
