//! Accepting connections from a listening socket without the failed `accept4` that
//! ends every burst.
//!
//! The runtime registers sockets edge-triggered, so an accept loop on tokio's
//! `TcpListener` must accept until `EAGAIN` before it may wait: a second connection
//! queued with the first raises no new event. That last, failed `accept4` is dear: the
//! kernel allocates a socket and a file for it before it looks at the queue, and frees
//! them again (≈3.8 µs on the 2-core benchmark machine, against ≈0.46 µs for the
//! `TCP_INFO` read below). With one connection per wake-up, the usual case for a proxy
//! that is not saturated, it was one failed `accept4` per connection.
//!
//! Here, after each connection accepted, the listener's accept queue is read
//! (`TCP_INFO` of a listening socket carries its length in `tcpi_unacked`): when it is
//! empty, the readiness is cleared and the loop waits for the next event, which every
//! connection queued later raises (the kernel signals each arrival on a listening
//! socket, and tokio does not clear a readiness that a newer event set). A kernel that
//! does not report the queue (checked once at start) gets tokio's way instead.

use std::{
    io,
    mem::{MaybeUninit, size_of},
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6},
    os::fd::{AsRawFd, FromRawFd, RawFd},
    sync::LazyLock,
    task::{Context, Poll},
};

use tokio::{
    io::{Interest, unix::AsyncFd},
    net::TcpStream,
};

/// A listening socket registered with the worker's runtime.
pub(super) struct Acceptor {
    listener: AsyncFd<std::net::TcpListener>,
    /// Connections the queue was last seen to hold behind the one accepted then, less
    /// those accepted since: a burst costs one look at the queue, not one per connection.
    behind: u32,
}

impl Acceptor {
    /// Registers `listener` (non-blocking) with the runtime of the calling task.
    pub(super) fn new(listener: std::net::TcpListener) -> io::Result<Self> {
        listener.set_nonblocking(true)?;
        // At start, not in the first connection's way.
        LazyLock::force(&QUEUE_LENGTH_READS);
        // SAFETY: the listener is owned by the AsyncFd, so its fd stays open and the same
        // for the AsyncFd's whole life.
        let listener = unsafe { AsyncFd::register_with_interest(listener, Interest::READABLE) }
            .map_err(io::Error::from)?;
        Ok(Acceptor {
            listener,
            behind: 0,
        })
    }

    /// The next connection, and its peer's address.
    pub(super) fn poll_accept(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<(TcpStream, SocketAddr)>> {
        loop {
            let mut ready = std::task::ready!(self.listener.poll_read_ready(cx))?;
            // `try_io` clears the readiness when the accept finds the queue empty after
            // all (a connection reset while queued, a stale event).
            let Ok(accepted) = ready.try_io(|listener| accept(listener.as_raw_fd())) else {
                continue;
            };
            let (fd, peer) = accepted?;
            if self.behind > 1 {
                self.behind -= 1;
            } else if *QUEUE_LENGTH_READS {
                self.behind = queue_length(self.listener.as_raw_fd()).unwrap_or(1);
                if self.behind == 0 {
                    ready.clear_ready();
                }
            }
            // SAFETY: `fd` is a connected socket accept4 just returned, owned by nobody else.
            let stream = unsafe { std::net::TcpStream::from_raw_fd(fd) };
            return Poll::Ready(TcpStream::from_std(stream).map(|stream| (stream, peer)));
        }
    }
}

/// One `accept4`, the socket made non-blocking and close-on-exec by it (no `fcntl`s).
fn accept(listener: RawFd) -> io::Result<(RawFd, SocketAddr)> {
    let mut storage = MaybeUninit::<libc::sockaddr_storage>::zeroed();
    let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    loop {
        // SAFETY: `storage` has room for any address and `len` says how much.
        let fd = unsafe {
            libc::accept4(
                listener,
                storage.as_mut_ptr().cast(),
                &mut len,
                libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            )
        };
        if fd >= 0 {
            // SAFETY: the kernel wrote the peer's address (it was zeroed before).
            let storage = unsafe { storage.assume_init_ref() };
            return match socket_addr(storage) {
                Some(peer) => Ok((fd, peer)),
                None => {
                    // SAFETY: our own fd, not handed out.
                    unsafe { libc::close(fd) };
                    Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "accepted a connection of neither IPv4 nor IPv6",
                    ))
                }
            };
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
}

/// The address in `storage`, if it is IPv4's or IPv6's.
fn socket_addr(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match libc::c_int::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: an AF_INET address is a sockaddr_in, which sockaddr_storage holds.
            let v4 =
                unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(v4.sin_addr.s_addr)),
                u16::from_be(v4.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: an AF_INET6 address is a sockaddr_in6, which sockaddr_storage holds.
            let v6 = unsafe {
                &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(v6.sin6_addr.s6_addr),
                u16::from_be(v6.sin6_port),
                v6.sin6_flowinfo,
                v6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// `tcpi_state` of a listening socket (include/net/tcp_states.h; not in the libc crate).
const TCP_LISTEN: u8 = 10;

/// Whether this kernel reports a listener's queue as `queue_length` reads it, checked
/// once on a loopback listener of our own (a sandboxed network stack may answer
/// `TCP_INFO` without it). If not, the loop accepts until `EAGAIN`, as tokio's does:
/// a queue wrongly read as empty would leave its connections waiting for the next one.
static QUEUE_LENGTH_READS: LazyLock<bool> = LazyLock::new(|| {
    let works = queue_length_reads();
    if !works {
        tracing::warn!(
            "the kernel does not report a listener's queue length (TCP_INFO): \
             each accept loop ends its bursts with a failed accept4"
        );
    }
    works
});

fn queue_length_reads() -> bool {
    let Ok(listener) = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)) else {
        return false;
    };
    let fd = listener.as_raw_fd();
    let Ok(address) = listener.local_addr() else {
        return false;
    };
    if queue_length(fd) != Some(0) {
        return false;
    }
    let Ok(_client) = std::net::TcpStream::connect(address) else {
        return false;
    };
    // The handshake completes in the kernel; the connection is queued by the time
    // connect returns on loopback.
    if queue_length(fd) != Some(1) {
        return false;
    }
    listener.accept().is_ok() && queue_length(fd) == Some(0)
}

/// How many connections wait in the listening socket's accept queue: `TCP_INFO` of a
/// listening socket reports it as `tcpi_unacked`. None when it cannot be read (or the
/// socket is not listening): the caller then accepts again and finds out as tokio's
/// loop would.
fn queue_length(listener: RawFd) -> Option<u32> {
    let mut info = MaybeUninit::<libc::tcp_info>::zeroed();
    let mut len = size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: `info` has room for `len` bytes; the kernel writes at most that.
    let rc = unsafe {
        libc::getsockopt(
            listener,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    // Past `tcpi_unacked`: the kernel wrote the field.
    let written =
        usize::try_from(len).unwrap_or(0) >= std::mem::offset_of!(libc::tcp_info, tcpi_sacked);
    if rc != 0 || !written {
        return None;
    }
    // SAFETY: zeroed first, and the kernel wrote at least through `tcpi_unacked`.
    let info = unsafe { info.assume_init_ref() };
    (info.tcpi_state == TCP_LISTEN).then_some(info.tcpi_unacked)
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use super::*;

    /// Connections queued together are all accepted on the first wake-up's readiness,
    /// and a connection made after the queue was found empty wakes the loop again.
    #[tokio::test]
    async fn a_burst_is_accepted_whole_and_a_later_connection_wakes_the_loop() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = listener.local_addr().expect("address");
        let mut acceptor = Acceptor::new(listener).expect("register");
        let burst: Vec<_> = (0..5)
            .map(|_| std::net::TcpStream::connect(address).expect("connect"))
            .collect();
        let mut peers = Vec::new();
        for _ in &burst {
            let (stream, peer) = tokio::time::timeout(
                std::time::Duration::from_secs(5),
                std::future::poll_fn(|cx| acceptor.poll_accept(cx)),
            )
            .await
            .expect("a queued connection is accepted without a new event")
            .expect("accept");
            assert_eq!(stream.local_addr().expect("local"), address);
            peers.push(peer);
        }
        let mut sent: Vec<_> = burst
            .iter()
            .map(|s| s.local_addr().expect("peer"))
            .collect();
        sent.sort();
        peers.sort();
        assert_eq!(
            peers, sent,
            "every queued connection, with its peer's address"
        );
        assert_eq!(queue_length(acceptor.listener.as_raw_fd()), Some(0));

        let later = std::net::TcpStream::connect(address).expect("connect");
        let accepted = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            std::future::poll_fn(|cx| acceptor.poll_accept(cx)),
        )
        .await
        .expect("the later connection woke the loop")
        .expect("accept");
        assert_eq!(accepted.1, later.local_addr().expect("peer"));
    }

    /// This kernel reports the queue's length, so the loops use it.
    #[test]
    fn the_queue_length_check_passes_here() {
        assert!(queue_length_reads());
    }

    /// The queue's length as the kernel reports it; none for a socket that is not
    /// listening.
    #[test]
    fn the_queue_length_is_read_from_the_listening_socket() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let fd = listener.as_raw_fd();
        assert_eq!(queue_length(fd), Some(0));
        let address = listener.local_addr().expect("address");
        let _clients: Vec<_> = (0..2)
            .map(|_| std::net::TcpStream::connect(address).expect("connect"))
            .collect();
        assert_eq!(
            queue_length(fd),
            Some(2),
            "two connections wait in the queue"
        );
        let (accepted, _) = listener.accept().expect("accept");
        assert_eq!(queue_length(fd), Some(1));
        assert_eq!(queue_length(accepted.as_raw_fd()), None);
    }

    #[test]
    fn ipv6_peers_keep_their_address() {
        let Ok(listener) = TcpListener::bind("[::1]:0") else {
            return; // no IPv6 on this machine
        };
        let client =
            std::net::TcpStream::connect(listener.local_addr().expect("address")).expect("connect");
        let (fd, peer) = accept(listener.as_raw_fd()).expect("accept");
        // SAFETY: the accepted socket is ours.
        drop(unsafe { std::net::TcpStream::from_raw_fd(fd) });
        assert_eq!(peer, client.local_addr().expect("peer"));
    }
}
