//! This node's gateway addresses, kept in the kernel filter's GATEWAY_ADDRS map so it
//! polices only traffic addressed to the gateway, never TLS to a pod routed over the
//! same interface on a gateway port number.
//!
//! Listeners bind the wildcard address, so the gateway addresses are all the node's
//! local addresses (IPv4 and IPv6). They change (DHCP, a VIP moved by keepalived or
//! MetalLB, an interface coming up): a netlink socket subscribed to address changes
//! wakes the refresh at once, and the refresh re-reads the whole list with getifaddrs.
//! The netlink messages themselves are not parsed (a wake-up is all they are used for,
//! so there is no parser to get wrong), and a slow periodic refresh backs them up,
//! since netlink multicast drops messages when its buffer overflows.

use std::{
    io,
    net::IpAddr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::Duration,
};

use tokio::io::{Interest, unix::AsyncFd};
use tracing::{debug, warn};

use crate::metrics::SharedKernelPath;

/// The backstop: how stale the map may get if netlink notifications are lost.
const REFRESH_EVERY: Duration = Duration::from_secs(30);

/// Every address of every interface of this network namespace.
pub fn local_addresses() -> io::Result<Vec<IpAddr>> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list` with a linked list we free below.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut addresses = Vec::new();
    let mut entry = list;
    while !entry.is_null() {
        // SAFETY: a node of the list getifaddrs returned, alive until freeifaddrs.
        let ifa = unsafe { &*entry };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: ifa_addr points at a sockaddr whose family says its real type.
            match i32::from(unsafe { (*ifa.ifa_addr).sa_family }) {
                libc::AF_INET => {
                    // SAFETY: an AF_INET sockaddr is a sockaddr_in.
                    let sin = unsafe { &*ifa.ifa_addr.cast::<libc::sockaddr_in>() };
                    addresses.push(IpAddr::from(sin.sin_addr.s_addr.to_ne_bytes()));
                }
                libc::AF_INET6 => {
                    // SAFETY: an AF_INET6 sockaddr is a sockaddr_in6.
                    let sin6 = unsafe { &*ifa.ifa_addr.cast::<libc::sockaddr_in6>() };
                    addresses.push(IpAddr::from(sin6.sin6_addr.s6_addr));
                }
                _ => {}
            }
        }
        entry = ifa.ifa_next;
    }
    // SAFETY: the list getifaddrs returned, freed once.
    unsafe { libc::freeifaddrs(list) };
    addresses.sort();
    addresses.dedup();
    Ok(addresses)
}

/// Writes the current addresses into the kernel path (if there is one).
pub fn refresh(kernel: &SharedKernelPath) -> io::Result<usize> {
    let addresses = local_addresses()?;
    if let Ok(mut slot) = kernel.lock()
        && let Some(path) = slot.as_mut()
        && let Err(e) = path.set_gateway_addresses(&addresses)
    {
        warn!(error = %e, "the kernel filter's gateway addresses could not be updated");
    }
    Ok(addresses.len())
}

/// Keeps the kernel's gateway addresses in step with the node's, for the process's life.
pub async fn keep_gateway_addresses(kernel: SharedKernelPath) {
    let changes = match address_changes() {
        Ok(fd) => Some(fd),
        Err(e) => {
            warn!(error = %e, every = ?REFRESH_EVERY, "no netlink address notifications; the kernel filter's addresses are refreshed periodically only");
            None
        }
    };
    loop {
        match refresh(&kernel) {
            Ok(count) => debug!(count, "kernel filter: gateway addresses refreshed"),
            Err(e) => warn!(error = %e, "listing local addresses"),
        }
        match &changes {
            Some(fd) => {
                let _ = tokio::time::timeout(REFRESH_EVERY, wait_and_drain(fd)).await;
            }
            None => tokio::time::sleep(REFRESH_EVERY).await,
        }
    }
}

/// A netlink route socket that becomes readable when an IPv4 or IPv6 address is added
/// or removed anywhere in this network namespace.
fn address_changes() -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: plain socket(2); the fd is owned at once.
    let raw = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd we own.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: sockaddr_nl is plain data; all-zero is a valid start.
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    addr.nl_groups = (libc::RTMGRP_IPV4_IFADDR | libc::RTMGRP_IPV6_IFADDR) as u32;
    // SAFETY: binds our socket to a sockaddr_nl of the size given.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the AsyncFd owns the fd for its whole life, so it stays open and the same.
    unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
        .map_err(|e| io::Error::other(e.to_string()))
}

/// Waits for a notification, then reads everything queued (a burst of changes is one
/// refresh).
async fn wait_and_drain(fd: &AsyncFd<OwnedFd>) {
    let Ok(mut guard) = fd.readable().await else {
        // The fd is broken: fall back to the timer.
        std::future::pending::<()>().await;
        return;
    };
    let mut buf = [0u8; 8192];
    loop {
        // SAFETY: reads into our buffer, of the length given.
        let n = unsafe {
            libc::recv(
                fd.get_ref().as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n > 0 {
            continue;
        }
        let error = io::Error::last_os_error();
        if n < 0 && error.kind() == io::ErrorKind::WouldBlock {
            guard.clear_ready();
        }
        // ENOBUFS (lost notifications) and anything else: refresh now regardless.
        return;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_a_local_address() {
        let addresses = local_addresses().expect("getifaddrs");
        assert!(
            addresses.contains(&IpAddr::from([127, 0, 0, 1])),
            "{addresses:?}"
        );
    }
}
