//! Removing an XDP program of ours that a killed gatewayd left attached through netlink.
//!
//! Before Linux 5.9 XDP has no bpf links, and aya attaches through netlink with
//! XDP_FLAGS_UPDATE_IF_NOEXIST: a leftover program (with the dead daemon's last policy)
//! keeps filtering, and makes the next attach fail. aya exposes no query of the attached
//! program, so this asks the kernel directly: RTM_GETLINK for the interface's attached
//! program id, its name from the bpf program info, and RTM_SETLINK with fd -1 to detach
//! it, in the mode it is attached in. Only a program named like ours and not loaded by
//! this process is removed.

use std::{io, mem::size_of};

const IFLA_XDP: u16 = 43;
const IFLA_XDP_FD: u16 = 1;
const IFLA_XDP_ATTACHED: u16 = 2;
const IFLA_XDP_FLAGS: u16 = 3;
const IFLA_XDP_PROG_ID: u16 = 4;
const NLA_F_NESTED: u16 = 1 << 15;
const NLA_TYPE_MASK: u16 = !(NLA_F_NESTED | (1 << 14));
/// XDP_ATTACHED_* → the XDP_FLAGS_*_MODE to detach with.
const fn mode_flags(attached: u8) -> Option<u32> {
    match attached {
        1 => Some(1 << 2), // DRV
        2 => Some(1 << 1), // SKB (generic)
        3 => Some(1 << 3), // HW
        _ => None,
    }
}

/// (attached mode, program id) of the interface's XDP program, if one is attached
/// through netlink (a program attached through a link is reported too; the caller
/// checks it is not its own).
pub(super) fn attached_program(if_index: u32) -> io::Result<Option<(u8, u32)>> {
    let socket = NetlinkSocket::open()?;
    let mut request = Message::new(libc::RTM_GETLINK, libc::NLM_F_REQUEST as u16, if_index);
    let reply = socket.request(request.finish())?;
    let mut found = None;
    for (kind, value) in attributes(link_attributes(&reply)?) {
        if kind & NLA_TYPE_MASK != IFLA_XDP {
            continue;
        }
        let (mut mode, mut id) = (0u8, 0u32);
        for (kind, value) in attributes(value) {
            match kind & NLA_TYPE_MASK {
                IFLA_XDP_ATTACHED => mode = value.first().copied().unwrap_or(0),
                IFLA_XDP_PROG_ID if value.len() >= 4 => {
                    id = u32::from_ne_bytes([value[0], value[1], value[2], value[3]]);
                }
                _ => {}
            }
        }
        if mode != 0 && id != 0 {
            found = Some((mode, id));
        }
    }
    Ok(found)
}

/// Detaches the interface's XDP program attached in `attached` mode (netlink only).
pub(super) fn detach(if_index: u32, attached: u8) -> io::Result<()> {
    let flags = mode_flags(attached)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "unknown XDP mode"))?;
    let socket = NetlinkSocket::open()?;
    let mut request = Message::new(
        libc::RTM_SETLINK,
        (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16,
        if_index,
    );
    let nest = request.begin_nested(IFLA_XDP | NLA_F_NESTED);
    request.attribute(IFLA_XDP_FD, &(-1i32).to_ne_bytes());
    request.attribute(IFLA_XDP_FLAGS, &flags.to_ne_bytes());
    request.end_nested(nest);
    socket.request(request.finish()).map(drop)
}

/// A request: nlmsghdr + ifinfomsg + attributes.
struct Message(Vec<u8>);

const NLMSG_HDR: usize = size_of::<libc::nlmsghdr>();
const IFINFO: usize = size_of::<libc::ifinfomsg>();

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

impl Message {
    fn new(kind: u16, flags: u16, if_index: u32) -> Self {
        let mut buf = vec![0u8; NLMSG_HDR + IFINFO];
        buf[4..6].copy_from_slice(&kind.to_ne_bytes());
        buf[6..8].copy_from_slice(&flags.to_ne_bytes());
        buf[8..12].copy_from_slice(&1u32.to_ne_bytes()); // sequence
        buf[NLMSG_HDR] = libc::AF_UNSPEC as u8;
        buf[NLMSG_HDR + 4..NLMSG_HDR + 8].copy_from_slice(&(if_index as i32).to_ne_bytes());
        Message(buf)
    }

    fn attribute(&mut self, kind: u16, value: &[u8]) {
        let len = 4 + value.len();
        self.0.extend_from_slice(&(len as u16).to_ne_bytes());
        self.0.extend_from_slice(&kind.to_ne_bytes());
        self.0.extend_from_slice(value);
        self.0.resize(align4(self.0.len()), 0);
    }

    fn begin_nested(&mut self, kind: u16) -> usize {
        let at = self.0.len();
        self.0.extend_from_slice(&[0, 0]);
        self.0.extend_from_slice(&kind.to_ne_bytes());
        at
    }

    fn end_nested(&mut self, at: usize) {
        let len = (self.0.len() - at) as u16;
        self.0[at..at + 2].copy_from_slice(&len.to_ne_bytes());
    }

    fn finish(&mut self) -> &[u8] {
        let len = self.0.len() as u32;
        self.0[0..4].copy_from_slice(&len.to_ne_bytes());
        &self.0
    }
}

/// The attributes after the ifinfomsg of an RTM_NEWLINK reply.
fn link_attributes(reply: &[u8]) -> io::Result<&[u8]> {
    reply
        .get(NLMSG_HDR + IFINFO..)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "short RTM_NEWLINK"))
}

/// (type, value) of each attribute in `buf`; stops at the first malformed one.
fn attributes(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        let len = usize::from(u16::from_ne_bytes([*buf.first()?, *buf.get(1)?]));
        let kind = u16::from_ne_bytes([*buf.get(2)?, *buf.get(3)?]);
        let value = buf.get(4..len)?;
        buf = buf.get(align4(len)..).unwrap_or(&[]);
        Some((kind, value))
    })
}

struct NetlinkSocket(std::os::fd::OwnedFd);

impl NetlinkSocket {
    fn open() -> io::Result<Self> {
        use std::os::fd::FromRawFd;
        // SAFETY: plain socket(2); the fd is owned at once.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh fd we own.
        Ok(NetlinkSocket(unsafe {
            std::os::fd::OwnedFd::from_raw_fd(fd)
        }))
    }

    /// Sends one request and returns the first reply message (payload included), or the
    /// error the kernel answered with.
    fn request(&self, message: &[u8]) -> io::Result<Vec<u8>> {
        use std::os::fd::AsRawFd;
        let fd = self.0.as_raw_fd();
        // SAFETY: sends our buffer, of the length given, to the kernel (address 0).
        let sent = unsafe { libc::send(fd, message.as_ptr().cast(), message.len(), 0) };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut buf = vec![0u8; 32 * 1024];
        // SAFETY: reads into our buffer, of the length given.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        buf.truncate(n as usize);
        let kind = buf
            .get(4..6)
            .map(|b| u16::from_ne_bytes([b[0], b[1]]))
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "short netlink reply"))?;
        if kind == libc::NLMSG_ERROR as u16 {
            let code = buf
                .get(NLMSG_HDR..NLMSG_HDR + 4)
                .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                .unwrap_or(-libc::EIO);
            if code != 0 {
                return Err(io::Error::from_raw_os_error(-code));
            }
        }
        Ok(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_are_read_back_as_written() {
        let mut m = Message::new(libc::RTM_SETLINK, 0, 7);
        let nest = m.begin_nested(IFLA_XDP | NLA_F_NESTED);
        m.attribute(IFLA_XDP_FD, &(-1i32).to_ne_bytes());
        m.attribute(IFLA_XDP_ATTACHED, &[2]);
        m.end_nested(nest);
        let bytes = m.finish().to_vec();
        let outer: Vec<_> = attributes(link_attributes(&bytes).expect("attrs")).collect();
        assert_eq!(outer.len(), 1);
        assert_eq!(outer[0].0 & NLA_TYPE_MASK, IFLA_XDP);
        let inner: Vec<_> = attributes(outer[0].1).collect();
        assert_eq!(
            inner,
            vec![
                (IFLA_XDP_FD, &(-1i32).to_ne_bytes()[..]),
                (IFLA_XDP_ATTACHED, &[2u8][..])
            ]
        );
    }
}
