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
    net::{Ipv6Addr, SocketAddr},
    os::fd::AsRawFd,
    sync::Once,
};

use tokio::net::TcpSocket;

use crate::proxy::{LISTEN_BACKLOG, ProxyError};

/// Binds `count` listening sockets for `port` on every IPv4 address and `count` on every
/// IPv6 address (IPv4 first), one of each per worker: a `SO_REUSEPORT` group per family
/// when there are several, among which the kernel spreads new connections. The sockets
/// are handed to the workers' runtimes (`proxy::serve`) unregistered.
pub(super) fn bind_port(port: u16, count: usize) -> Result<Vec<std::net::TcpListener>, ProxyError> {
    let error = |source| ProxyError::Bind { port, source };
    let mut sockets = bind_family(Family::V4, port, count).map_err(error)?;
    match bind_family(Family::V6, port, count) {
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
    match bind_family(Family::V6, port, 1) {
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

fn bind_family(family: Family, port: u16, count: usize) -> io::Result<Vec<std::net::TcpListener>> {
    let bind = |reuse_port: bool| -> io::Result<std::net::TcpListener> {
        let (socket, address) = match family {
            Family::V4 => (TcpSocket::new_v4()?, SocketAddr::from(([0, 0, 0, 0], port))),
            Family::V6 => {
                let socket = TcpSocket::new_v6()?;
                v6_only(&socket)?;
                (socket, SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)))
            }
        };
        socket.set_reuseaddr(true)?;
        socket.set_reuseport(reuse_port)?;
        socket.set_nodelay(true)?;
        socket.bind(address)?;
        socket.listen(LISTEN_BACKLOG)?.into_std()
    };
    let group = count > 1;
    if group {
        // A plain bind first: it fails while anything holds the port, even another
        // process's reuse-port group, which the group below would silently join.
        drop(bind(false)?);
    }
    (0..count.max(1)).map(|_| bind(group)).collect()
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
        let sockets = bind_port(port, 1).expect("bind");
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

    /// The port taken over IPv6 alone still fails the bind (no silent IPv4-only port).
    #[tokio::test]
    async fn a_port_taken_over_ipv6_fails_the_bind() {
        let Ok(holder) = std::net::TcpListener::bind(("::1", 0)) else {
            return;
        };
        let port = holder.local_addr().expect("addr").port();
        match bind_port(port, 2) {
            Err(ProxyError::Bind { port: p, source }) => {
                assert_eq!(p, port);
                assert_eq!(source.kind(), io::ErrorKind::AddrInUse);
            }
            Ok(_) => panic!("bound a port another socket holds over IPv6"),
        }
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
