//! Waiting for a client's next bytes without holding a buffer (`IdleWait`): what the
//! keep-alive loop (`serve`) and the read half of a split connection (`halves`) wait on.

use std::{
    io,
    mem::MaybeUninit,
    os::fd::AsRawFd,
    task::{Context, Poll},
};

use bytes::BytesMut;
use tokio::{io::Interest, net::TcpStream};

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

    /// After `poll_idle` said ready: reads what is there as `read_now` does, and when
    /// nothing is (a stale readiness: the bytes were taken by a read that left it held),
    /// clears the readiness, so the connection waits again holding no buffer rather
    /// than in a read with a buffer taken for it. None: not read this way.
    fn read_ready(&mut self, _buf: &mut BytesMut) -> Option<io::Result<usize>> {
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
        Some(recv_landing(self, buf))
    }

    fn read_ready(&mut self, buf: &mut BytesMut) -> Option<io::Result<usize>> {
        // try_io runs the read only while the runtime holds the socket readable, and
        // clears that when it finds nothing.
        let stream: &TcpStream = self;
        Some(stream.try_io(Interest::READABLE, || recv_landing(stream, buf)))
    }

    fn shutdown_before_close(&self) -> bool {
        false
    }
}

/// One recv(2) into the stack, copied into `buf` only when something came: a client that
/// has sent nothing yet costs no buffer's allocation and release.
fn recv_landing(stream: &TcpStream, buf: &mut BytesMut) -> io::Result<usize> {
    let mut landing = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
    // SAFETY: recv(2) on the socket's open descriptor writes at most `landing.len()`
    // bytes into `landing`, memory we own. The socket is non-blocking.
    let read = unsafe {
        libc::recv(
            stream.as_raw_fd(),
            landing.as_mut_ptr().cast(),
            landing.len(),
            0,
        )
    };
    let read = usize::try_from(read).map_err(|_| io::Error::last_os_error())?;
    if read > 0 {
        // SAFETY: recv initialised the first `read` bytes of `landing`.
        let landed = unsafe { std::slice::from_raw_parts(landing.as_ptr().cast::<u8>(), read) };
        buffer::make_room(buf);
        buf.extend_from_slice(landed);
    }
    if read > 0 && read < landing.len() {
        forget_readiness(stream);
    }
    Ok(read)
}

/// After a read that took less than it asked for, the socket had nothing more: the
/// runtime still holds it readable (it clears that only when a read fails with
/// EWOULDBLOCK), so the wait after the answer would begin with a recv(2) that finds
/// nothing, one system call per kept-alive request whenever the client is slower than
/// the answer. The readiness is cleared here instead, at no system call's cost. Nothing
/// is lost: bytes or a FIN that arrive later raise a new edge-triggered event; an event
/// the runtime has recorded since it last reported (a newer tick) is not cleared; and a
/// FIN it has recorded stays (tokio never clears a closed state).
fn forget_readiness(stream: &TcpStream) {
    let _ = stream.try_io(Interest::READABLE, || {
        Err::<(), _>(io::Error::from(io::ErrorKind::WouldBlock))
    });
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

    fn read_ready(&mut self, buf: &mut BytesMut) -> Option<io::Result<usize>> {
        (**self).read_ready(buf)
    }

    fn shutdown_before_close(&self) -> bool {
        (**self).shutdown_before_close()
    }
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;

    use tokio::{io::AsyncWriteExt, net::TcpListener};

    use super::*;

    /// A connected pair on loopback.
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let client = TcpStream::connect(address).await.expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        (client, server)
    }

    /// Waits for the idle wait to end, failing the test rather than hanging it.
    async fn readable(server: &mut TcpStream) {
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            poll_fn(|cx| server.poll_idle(cx)),
        )
        .await
        .expect("the wait ended")
        .expect("readable");
    }

    /// The client sends an 18-byte request and the server's wait ends for it.
    async fn request_arrives(client: &mut TcpStream, server: &mut TcpStream) {
        client
            .write_all(b"GET / HTTP/1.1\r\n\r\n")
            .await
            .expect("write");
        readable(server).await;
    }

    /// `read_ready` on a TCP stream: how many bytes came.
    fn read(server: &mut TcpStream, buf: &mut BytesMut) -> usize {
        server.read_ready(buf).expect("a TCP read").expect("read")
    }

    /// Whether the idle wait would end at once (a readiness held), polled once.
    async fn idle_ready(server: &mut TcpStream) -> bool {
        poll_fn(|cx| Poll::Ready(server.poll_idle(cx).is_ready())).await
    }

    /// A readiness the runtime still holds after the bytes were taken is stale (here a
    /// read of exactly what was there, which tokio does not count as draining). The
    /// wait must end in a wait again, holding no buffer, not in a read with a buffer
    /// taken for it.
    #[tokio::test]
    async fn a_stale_readiness_is_cleared_without_taking_a_buffer() {
        let (mut client, mut server) = pair().await;
        request_arrives(&mut client, &mut server).await;
        let mut exact = [0u8; 18];
        assert_eq!(server.try_read(&mut exact).expect("read"), 18);

        let mut idle = BytesMut::new();
        readable(&mut server).await; // the stale readiness
        let stale = server.read_ready(&mut idle).expect("a TCP read");
        assert_eq!(
            stale.map_err(|e| e.kind()).err(),
            Some(io::ErrorKind::WouldBlock)
        );
        assert_eq!(idle.capacity(), 0, "nothing came, no buffer taken");
        assert!(
            !idle_ready(&mut server).await,
            "the readiness was cleared: the connection waits again"
        );

        client.write_all(b"x").await.expect("write");
        readable(&mut server).await;
        let read = read(&mut server, &mut idle);
        assert_eq!((read, &idle[..]), (1, &b"x"[..]));
    }

    /// A read that takes all the socket had leaves no readiness behind: the next wait
    /// begins waiting, with no recv(2) that finds nothing, and still ends for the bytes
    /// and the FIN that come later.
    #[tokio::test]
    async fn a_short_read_leaves_the_wait_waiting_and_loses_nothing() {
        let (mut client, mut server) = pair().await;
        request_arrives(&mut client, &mut server).await;
        let mut buf = BytesMut::new();
        assert_eq!(read(&mut server, &mut buf), 18);
        assert!(
            !idle_ready(&mut server).await,
            "a short read took everything: nothing left to be ready for"
        );

        client.write_all(b"x").await.expect("write");
        readable(&mut server).await;
        assert_eq!(read(&mut server, &mut buf), 1);

        client.shutdown().await.expect("FIN");
        readable(&mut server).await;
        assert_eq!(read(&mut server, &mut buf), 0, "the FIN is seen");
    }

    /// Bytes and the FIN in one go: the short read that takes the bytes must not hide
    /// the FIN the runtime has already heard of.
    #[tokio::test]
    async fn a_fin_behind_the_request_survives_the_short_read() {
        let (mut client, mut server) = pair().await;
        client
            .write_all(b"GET / HTTP/1.1\r\n\r\n")
            .await
            .expect("write");
        client.shutdown().await.expect("FIN");
        readable(&mut server).await;
        let mut buf = BytesMut::new();
        assert_eq!(read(&mut server, &mut buf), 18);
        readable(&mut server).await; // the FIN
        assert_eq!(read(&mut server, &mut buf), 0);
    }
}
