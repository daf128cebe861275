//! Binding a port's listening sockets, IPv4 and IPv6.
//!
//! Like Istio's gateway on a dual-stack node (a listener on `0.0.0.0` with `::` as an
//! additional address, which Envoy binds as a second, IPv6-only socket), each port gets
//! an IPv4 socket on `0.0.0.0` and an IPv6 socket on `::` with IPV6_V6ONLY set, rather
//! than one dual-stack socket: IPv4 clients keep plain IPv4 addresses (not
//! `::ffff:a.b.c.d`) in `x-forwarded-for`, policies and logs, and the kernel's
//! per-family socket lookup (SO_REUSEPORT groups, sk_lookup steering) sees one group per
//! family. On a node without IPv6 (the module not loaded, `ipv6.disable=1`) the port is
//! served over IPv4 alone, with a warning.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::AsRawFd,
    sync::Once,
};

use tokio::net::TcpSocket;

use crate::proxy::{LISTEN_BACKLOG, ProxyError};

/// Binds `count` listening sockets for `port` on every IPv4 address and `count` on every
/// IPv6 address (IPv4 first), one of each per worker: a `SO_REUSEPORT` group per family
/// when there are several, among which the kernel spreads new connections. With an
/// `address` (a Gateway's `spec.addresses`), `count` sockets on that address alone.
/// The sockets are handed to the workers' runtimes (`proxy::serve`) unregistered.
///
/// Every socket has `SO_REUSEPORT`, so that one address and every address can listen on
/// one port side by side (Linux refuses `10.0.0.1:80` beside a listening `0.0.0.0:80`
/// otherwise); the kernel gives a connection to the socket of its exact address first,
/// and a reuse-port group holds sockets of one address only. `probe` first binds the
/// address without `SO_REUSEPORT`, which fails while anything holds it, even another
/// process's reuse-port group that ours would silently join; the caller leaves it out
/// where a socket of its own on the port overlaps the address (and would fail it).
pub(super) fn bind_port(
    port: u16,
    address: Option<IpAddr>,
    count: usize,
    probe: bool,
) -> Result<Vec<std::net::TcpListener>, ProxyError> {
    let error = |source| ProxyError::Bind {
        port,
        address,
        source,
    };
    if let Some(address) = address {
        let family = if address.is_ipv6() {
            Family::V6
        } else {
            Family::V4
        };
        return bind_family(family, address, port, count, probe).map_err(error);
    }
    let v4 = IpAddr::from(Ipv4Addr::UNSPECIFIED);
    let mut sockets = bind_family(Family::V4, v4, port, count, probe).map_err(error)?;
    match bind_family(Family::V6, Ipv6Addr::UNSPECIFIED.into(), port, count, probe) {
        Ok(v6) => sockets.extend(v6),
        Err(e) if no_ipv6(&e) => {
            static WARNED: Once = Once::new();
            WARNED.call_once(|| {
                tracing::warn!(error = %e, "IPv6 is not available on this node: listeners serve IPv4 only");
            });
        }
        Err(e) => return Err(error(e)),
    }
    Ok(sockets)
}

/// Binds one listening socket for an admin address (readiness, metrics, admin). An
/// unspecified IPv4 address (`0.0.0.0`, the probes' default) also gets an IPv6-only socket
/// on `::`, as the listeners do, so that a kubelet probing an IPv6 pod address is answered;
/// any other address is bound as given.
pub(crate) fn bind_admin(address: SocketAddr) -> io::Result<Vec<std::net::TcpListener>> {
    let v4 = std::net::TcpListener::bind(address)?;
    // Port 0 asks for any port: IPv6 takes the one IPv4 was given.
    let port = v4.local_addr()?.port();
    let mut sockets = vec![v4];
    if address.ip() != std::net::Ipv4Addr::UNSPECIFIED {
        return Ok(sockets);
    }
    match bind_family(Family::V6, Ipv6Addr::UNSPECIFIED.into(), port, 1, true) {
        Ok(v6) => sockets.extend(v6),
        Err(e) if no_ipv6(&e) => {
            tracing::warn!(error = %e, %address, "IPv6 is not available on this node: served over IPv4 only");
        }
        Err(e) => return Err(e),
    }
    Ok(sockets)
}

#[derive(Clone, Copy)]
enum Family {
    V4,
    V6,
}

fn bind_family(
    family: Family,
    ip: IpAddr,
    port: u16,
    count: usize,
    probe: bool,
) -> io::Result<Vec<std::net::TcpListener>> {
    let address = SocketAddr::new(ip, port);
    let bind = |reuse_port: bool| -> io::Result<std::net::TcpListener> {
        let socket = match family {
            Family::V4 => TcpSocket::new_v4()?,
            Family::V6 => {
                let socket = TcpSocket::new_v6()?;
                v6_only(&socket)?;
                socket
            }
        };
        socket.set_reuseaddr(true)?;
        socket.set_reuseport(reuse_port)?;
        // Accepted sockets inherit TCP_NODELAY from the listening one, so the accept
        // loop need not set it on each (`proxy::serve` sets it again on what it is given).
        socket.set_nodelay(true)?;
        socket.bind(address)?;
        socket.listen(LISTEN_BACKLOG)?.into_std()
    };
    if probe {
        // A plain bind first: it fails while anything holds the address and port, even
        // another process's reuse-port group, which the sockets below would silently join.
        drop(bind(false)?);
    }
    (0..count.max(1)).map(|_| bind(true)).collect()
}

/// IPV6_V6ONLY: the `::` socket takes IPv6 only, the `0.0.0.0` one IPv4 (set explicitly,
/// since the default follows the `net.ipv6.bindv6only` sysctl).
fn v6_only(socket: &TcpSocket) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: a valid socket fd and a c_int option value of the right size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IPV6,
            libc::IPV6_V6ONLY,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The errors that mean this node has no IPv6 to listen on, rather than a port problem.
fn no_ipv6(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EAFNOSUPPORT | libc::EADDRNOTAVAIL | libc::EPROTONOSUPPORT)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both families listen on the port, each socket takes its own family only, and an
    /// IPv4 client's address stays plain IPv4.
    // tokio's listen() registers nothing but wants a runtime about.
    #[tokio::test]
    async fn a_port_listens_on_ipv4_and_ipv6_separately() {
        let port = std::net::TcpListener::bind(("127.0.0.1", 0))
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let sockets = bind_port(port, None, 1, true).expect("bind");
        let families: Vec<bool> = sockets
            .iter()
            .map(|s| s.local_addr().expect("addr").is_ipv6())
            .collect();
        if families == [false] {
            eprintln!("no IPv6 on this host: IPv4 only");
            return;
        }
        assert_eq!(families, [false, true], "IPv4 first, then IPv6");
        for s in &sockets {
            s.set_nonblocking(true).expect("nonblocking");
        }
        let accepted = |family: usize| {
            // The handshake completes in the kernel; accept may need a moment's retry.
            for _ in 0..100 {
                match sockets[family].accept() {
                    Ok((_, peer)) => return Some(peer),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        std::thread::sleep(std::time::Duration::from_millis(5));
                    }
                    Err(e) => panic!("accept: {e}"),
                }
            }
            None
        };
        let _v4 = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect over IPv4");
        let peer = accepted(0).expect("the IPv4 socket accepts IPv4");
        assert_eq!(peer.ip(), std::net::IpAddr::from([127, 0, 0, 1]));
        let _v6 = std::net::TcpStream::connect(("::1", port)).expect("connect over IPv6");
        let peer = accepted(1).expect("the IPv6 socket accepts IPv6");
        assert_eq!(peer.ip(), std::net::IpAddr::from(Ipv6Addr::LOCALHOST));
        assert!(
            sockets[1].accept().is_err() && sockets[0].accept().is_err(),
            "one connection each, none crossed over"
        );
    }

    /// Accepted connections have TCP_NODELAY without a system call of their own: they
    /// inherit it from the listening socket (IPv4 and IPv6 alike).
    #[tokio::test]
    async fn accepted_sockets_inherit_tcp_nodelay() {
        let port = std::net::TcpListener::bind(("127.0.0.1", 0))
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let sockets = bind_port(port, None, 1, true).expect("bind");
        for (socket, client) in sockets.iter().zip(["127.0.0.1", "::1"]) {
            let _client = std::net::TcpStream::connect((client, port)).expect("connect");
            // Non-blocking: the handshake completes in the kernel, accept may retry.
            let accepted = (0..100)
                .find_map(|_| match socket.accept() {
                    Ok((accepted, _)) => Some(accepted),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        std::thread::sleep(std::time::Duration::from_millis(5));
                        None
                    }
                    Err(e) => panic!("accept: {e}"),
                })
                .expect("accepted");
            let mut on: libc::c_int = 0;
            let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            // SAFETY: a valid socket fd and a c_int-sized out value.
            let rc = unsafe {
                libc::getsockopt(
                    accepted.as_raw_fd(),
                    libc::IPPROTO_TCP,
                    libc::TCP_NODELAY,
                    (&mut on as *mut libc::c_int).cast(),
                    &mut len,
                )
            };
            assert_eq!(rc, 0, "getsockopt: {}", io::Error::last_os_error());
            assert_eq!(
                on, 1,
                "a connection accepted over {client} lacks TCP_NODELAY"
            );
        }
    }

    /// The port taken over IPv6 alone still fails the bind (no silent IPv4-only port).
    #[tokio::test]
    async fn a_port_taken_over_ipv6_fails_the_bind() {
        let Ok(holder) = std::net::TcpListener::bind(("::1", 0)) else {
            return;
        };
        let port = holder.local_addr().expect("addr").port();
        match bind_port(port, None, 2, true) {
            Err(ProxyError::Bind {
                port: p, source, ..
            }) => {
                assert_eq!(p, port);
                assert_eq!(source.kind(), io::ErrorKind::AddrInUse);
            }
            Ok(_) => panic!("bound a port another socket holds over IPv6"),
        }
    }

    /// One address beside every address on one port: both bind, and the kernel hands a
    /// connection to the socket of its exact address first. A socket of someone else's
    /// on the port (no SO_REUSEPORT) still fails the bind of one address.
    #[tokio::test]
    async fn one_address_listens_beside_every_address_on_a_port() {
        let holder = std::net::TcpListener::bind(("127.0.0.1", 0)).expect("bind");
        let port = holder.local_addr().expect("addr").port();
        let two = IpAddr::from([127, 0, 0, 2]);
        assert!(
            bind_port(port, Some(IpAddr::from([127, 0, 0, 1])), 2, true).is_err(),
            "bound an address another socket holds"
        );
        drop(holder);
        let every = bind_port(port, None, 2, true).expect("bind every address");
        let one = bind_port(port, Some(two), 2, false).expect("bind one address beside it");
        assert_eq!(one.len(), 2);
        assert!(
            one.iter()
                .all(|s| s.local_addr().is_ok_and(|a| a.ip() == two))
        );
        for s in every.iter().chain(&one) {
            s.set_nonblocking(true).expect("nonblocking");
        }
        let accepted_on = |sockets: &[std::net::TcpListener]| {
            for _ in 0..100 {
                for s in sockets {
                    if let Ok((stream, _)) = s.accept() {
                        return stream.local_addr().ok();
                    }
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            None
        };
        let _c = std::net::TcpStream::connect((two, port)).expect("connect to 127.0.0.2");
        assert_eq!(
            accepted_on(&one).map(|a| a.ip()),
            Some(two),
            "127.0.0.2 goes to its own sockets"
        );
        let _d = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        assert_eq!(
            accepted_on(&every).map(|a| a.ip()),
            Some(IpAddr::from([127, 0, 0, 1])),
            "another address goes to every address's sockets"
        );
        assert!(
            accepted_on(&one).is_none(),
            "nothing else reached 127.0.0.2's"
        );
    }

    /// A probe address on `0.0.0.0` answers over IPv6 too (a kubelet probing an IPv6 pod
    /// address), on the same port; a specific address is bound alone.
    // tokio's listen() registers nothing but wants a runtime about.
    #[tokio::test]
    async fn an_unspecified_admin_address_listens_on_both_families() {
        let sockets = bind_admin(SocketAddr::from(([0, 0, 0, 0], 0))).expect("bind");
        let port = sockets[0].local_addr().expect("addr").port();
        let families: Vec<(bool, u16)> = sockets
            .iter()
            .map(|s| s.local_addr().expect("addr"))
            .map(|a| (a.is_ipv6(), a.port()))
            .collect();
        assert_eq!(families, [(false, port), (true, port)]);
        std::net::TcpStream::connect(("::1", port)).expect("connect over IPv6");
        std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect over IPv4");

        let one = bind_admin(SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind");
        assert_eq!(one.len(), 1);
    }
}
