//! Waiting for a client's next bytes without holding a buffer (`IdleWait`): what the
//! keep-alive loop (`serve`) and the read half of a split connection (`halves`) wait on.

use std::{
    io,
    mem::MaybeUninit,
    os::fd::AsRawFd,
    task::{Context, Poll},
};

use bytes::BytesMut;
use tokio::net::TcpStream;

use super::{buffer, rules::READ_CHUNK};

/// Waiting for a client's next bytes without a buffer, so an idle keep-alive connection
/// holds none: a TCP socket tells when it is readable; a TLS stream when rustls holds
/// decrypted bytes already or its socket is readable.
pub(in crate::proxy) trait IdleWait {
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>>;

    /// Reads what the client has sent already, without waiting: a new connection's first
    /// request is usually there when it is accepted, before the runtime has heard that
    /// the socket is readable (it hears at its next look at epoll, so a read through it
    /// would first register a wait, the idle clock and the task's wake-up). None: not
    /// read (a TLS stream reads through rustls only). `buf` (empty, without capacity) gets
    /// one only when something was read.
    fn read_now(&mut self, _buf: &mut BytesMut) -> Option<io::Result<usize>> {
        None
    }

    /// Whether the stream must be shut down before it is dropped: TLS sends its
    /// close_notify then; closing a TCP socket sends its FIN by itself.
    fn shutdown_before_close(&self) -> bool {
        true
    }
}

impl IdleWait for TcpStream {
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.poll_read_ready(cx)
    }

    fn read_now(&mut self, buf: &mut BytesMut) -> Option<io::Result<usize>> {
        // Into the stack, and copied into a buffer only when something came: a client
        // that has sent nothing yet costs no buffer's allocation and release.
        let mut landing = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
        // SAFETY: recv(2) on the socket's open descriptor writes at most `landing.len()`
        // bytes into `landing`, memory we own. The socket is non-blocking.
        let read = unsafe {
            libc::recv(
                self.as_raw_fd(),
                landing.as_mut_ptr().cast(),
                landing.len(),
                0,
            )
        };
        let Ok(read) = usize::try_from(read) else {
            return Some(Err(io::Error::last_os_error()));
        };
        if read > 0 {
            // SAFETY: recv initialised the first `read` bytes of `landing`.
            let landed = unsafe { std::slice::from_raw_parts(landing.as_ptr().cast::<u8>(), read) };
            buffer::make_room(buf);
            buf.extend_from_slice(landed);
        }
        Some(Ok(read))
    }

    fn shutdown_before_close(&self) -> bool {
        false
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

    fn read_now(&mut self, buf: &mut BytesMut) -> Option<io::Result<usize>> {
        (**self).read_now(buf)
    }

    fn shutdown_before_close(&self) -> bool {
        (**self).shutdown_before_close()
    }
}
