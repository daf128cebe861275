//! Frames shaped like what a NIC hands the programs, for host tests and for
//! BPF_PROG_TEST_RUN in gatewayd's kernel tests. Each test states only what differs
//! from the default: IPv4 TCP to port 443 with a 5-byte payload.
extern crate std;
use std::{net::IpAddr, vec::Vec};

use crate::IpVersion;

/// Builds frames the way a NIC would hand them over, so each test states only what differs.
pub struct Frame {
    pub vlan_tags: usize,
    pub ip: IpVersion,
    pub ipv4_options: usize,
    pub tcp_options: usize,
    pub fragment: u16,
    pub protocol: u8,
    pub src_port: u16,
    pub dst_port: u16,
    pub payload: usize,
    /// PSH|ACK unless a test says otherwise (SYN: 0x02).
    pub tcp_flags: u8,
    /// (source, destination) when not the defaults (10.0.0.1 → 10.0.0.2, fdfd…fdfd twice);
    /// used when their family is the frame's.
    pub addresses: Option<(IpAddr, IpAddr)>,
}

/// The default frames' destinations, IPv4 and IPv6: a gateway address in tests.
pub const DEFAULT_DESTINATIONS: [IpAddr; 2] = [
    IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2)),
    IpAddr::V6(std::net::Ipv6Addr::from_bits(u128::from_be_bytes(
        [0xfd; 16],
    ))),
];

impl Default for Frame {
    fn default() -> Self {
        Frame {
            vlan_tags: 0,
            ip: IpVersion::V4,
            ipv4_options: 0,
            tcp_options: 0,
            fragment: 0x4000, // don't-fragment, offset 0
            protocol: 6,
            src_port: 40000,
            dst_port: 443,
            payload: 5,
            tcp_flags: 0x18,
            addresses: None,
        }
    }
}

impl Frame {
    /// The frame with `payload` filler bytes (0x16, a TLS handshake's content type).
    pub fn build(&self) -> Vec<u8> {
        self.build_with_payload(&std::vec![0x16u8; self.payload])
    }

    /// The frame carrying these payload bytes (`self.payload` is ignored).
    pub fn build_with_payload(&self, payload: &[u8]) -> Vec<u8> {
        let mut f = std::vec![0u8; 12]; // dst + src MAC
        for _ in 0..self.vlan_tags {
            f.extend_from_slice(&0x8100u16.to_be_bytes());
            f.extend_from_slice(&[0x00, 0x2a]);
        }
        let tcp_len = 20 + self.tcp_options;
        let l4_len = tcp_len + payload.len();
        match self.ip {
            IpVersion::V4 => {
                f.extend_from_slice(&0x0800u16.to_be_bytes());
                let ihl = 20 + self.ipv4_options;
                f.push(0x40 | (ihl / 4) as u8);
                f.push(0);
                f.extend_from_slice(&((ihl + l4_len) as u16).to_be_bytes());
                f.extend_from_slice(&[0, 1]);
                f.extend_from_slice(&self.fragment.to_be_bytes());
                f.extend_from_slice(&[64, self.protocol, 0, 0]);
                match self.addresses {
                    Some((IpAddr::V4(src), IpAddr::V4(dst))) => {
                        f.extend_from_slice(&src.octets());
                        f.extend_from_slice(&dst.octets());
                    }
                    _ => f.extend_from_slice(&[10, 0, 0, 1, 10, 0, 0, 2]),
                }
                f.extend(std::iter::repeat_n(1u8, self.ipv4_options));
            }
            IpVersion::V6 => {
                f.extend_from_slice(&0x86ddu16.to_be_bytes());
                f.extend_from_slice(&[0x60, 0, 0, 0]);
                f.extend_from_slice(&(l4_len as u16).to_be_bytes());
                f.extend_from_slice(&[self.protocol, 64]);
                match self.addresses {
                    Some((IpAddr::V6(src), IpAddr::V6(dst))) => {
                        f.extend_from_slice(&src.octets());
                        f.extend_from_slice(&dst.octets());
                    }
                    _ => f.extend(std::iter::repeat_n(0xfdu8, 32)),
                }
            }
        }
        f.extend_from_slice(&self.src_port.to_be_bytes());
        f.extend_from_slice(&self.dst_port.to_be_bytes());
        f.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0]);
        f.push(((tcp_len / 4) as u8) << 4);
        f.push(self.tcp_flags);
        f.extend_from_slice(&[0xff, 0xff, 0, 0, 0, 0]);
        f.extend(std::iter::repeat_n(1u8, self.tcp_options));
        f.extend_from_slice(payload);
        f
    }
}
