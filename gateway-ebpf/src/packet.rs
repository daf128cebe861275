//! Ethernet / VLAN / IPv4 / IPv6 / TCP header parsing with every offset bounds-checked.
//!
//! The parser reads through the [`Bytes`] trait instead of a slice so the eBPF side can
//! supply an implementation whose index arithmetic the verifier accepts (masked reads
//! from a per-CPU scratch copy), while host tests use a plain `[u8]`.

/// Read-only byte access; every read returns `None` past the end.
pub trait Bytes {
    fn len(&self) -> usize;
    fn at(&self, off: usize) -> Option<u8>;

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    #[inline(always)]
    fn be16(&self, off: usize) -> Option<u16> {
        Some(u16::from_be_bytes([self.at(off)?, self.at(off + 1)?]))
    }
}

impl Bytes for [u8] {
    #[inline(always)]
    fn len(&self) -> usize {
        <[u8]>::len(self)
    }

    #[inline(always)]
    fn at(&self, off: usize) -> Option<u8> {
        self.get(off).copied()
    }
}

pub const ETH_HEADER_LEN: usize = 14;
const VLAN_TAG_LEN: usize = 4;
/// Ethernet payload types we look through or into.
const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
/// QinQ is the deepest tagging seen in practice; more tags are treated as not-IP.
const MAX_VLAN_TAGS: usize = 2;
const IPPROTO_TCP: u8 = 6;
const IPV6_HEADER_LEN: usize = 40;
const TCP_MIN_HEADER_LEN: usize = 20;

/// The first bytes a program must copy to parse headers of any supported shape:
/// Ethernet + 2 VLAN tags + the longest IPv4 header (60) + the TCP fixed header (20).
pub const MAX_HEADER_BYTES: usize =
    ETH_HEADER_LEN + MAX_VLAN_TAGS * VLAN_TAG_LEN + 60 + TCP_MIN_HEADER_LEN;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IpVersion {
    V4,
    V6,
}

/// The parts of a TCP/IP frame the programs decide on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Headers {
    pub ip: IpVersion,
    /// Offset of the IP header (after Ethernet and VLAN tags).
    pub l3_offset: usize,
    /// Offset of the TCP header.
    pub l4_offset: usize,
    /// Offset of the TCP payload (TLS records start here).
    pub payload_offset: usize,
    /// Length of the TCP payload according to the IP header (Ethernet padding excluded).
    pub payload_len: usize,
    pub src_port: u16,
    pub dst_port: u16,
    pub tcp_flags: u8,
}

/// Why a frame was not parsed down to TCP. Each is a reason to pass the packet untouched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderError {
    NotIp,
    NotTcp,
    Fragment,
    Malformed,
}

/// Parses an Ethernet frame down to its TCP header.
#[inline(always)]
pub fn parse_headers<B: Bytes + ?Sized>(frame: &B) -> Result<Headers, HeaderError> {
    let mut ethertype = frame.be16(12).ok_or(HeaderError::Malformed)?;
    let mut l3_offset = ETH_HEADER_LEN;
    let mut tags = 0;
    while (ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD) && tags < MAX_VLAN_TAGS {
        ethertype = frame.be16(l3_offset + 2).ok_or(HeaderError::Malformed)?;
        l3_offset += VLAN_TAG_LEN;
        tags += 1;
    }
    match ethertype {
        ETH_P_IPV4 => parse_ipv4(frame, l3_offset),
        ETH_P_IPV6 => parse_ipv6(frame, l3_offset),
        _ => Err(HeaderError::NotIp),
    }
}

#[inline(always)]
fn parse_ipv4<B: Bytes + ?Sized>(frame: &B, l3: usize) -> Result<Headers, HeaderError> {
    let version_ihl = frame.at(l3).ok_or(HeaderError::Malformed)?;
    if version_ihl >> 4 != 4 {
        return Err(HeaderError::Malformed);
    }
    let header_len = usize::from(version_ihl & 0x0f) * 4;
    if header_len < 20 {
        return Err(HeaderError::Malformed);
    }
    let total_len = usize::from(frame.be16(l3 + 2).ok_or(HeaderError::Malformed)?);
    let flags_fragment = frame.be16(l3 + 6).ok_or(HeaderError::Malformed)?;
    // More-fragments set or a non-zero offset: only the first fragment has a TCP header,
    // and even that one may not carry the whole of it.
    if flags_fragment & 0x3fff != 0 {
        return Err(HeaderError::Fragment);
    }
    if frame.at(l3 + 9).ok_or(HeaderError::Malformed)? != IPPROTO_TCP {
        return Err(HeaderError::NotTcp);
    }
    if total_len < header_len {
        return Err(HeaderError::Malformed);
    }
    parse_tcp(frame, IpVersion::V4, l3, l3 + header_len, l3 + total_len)
}

#[inline(always)]
fn parse_ipv6<B: Bytes + ?Sized>(frame: &B, l3: usize) -> Result<Headers, HeaderError> {
    let version = frame.at(l3).ok_or(HeaderError::Malformed)? >> 4;
    if version != 6 {
        return Err(HeaderError::Malformed);
    }
    let payload_len = usize::from(frame.be16(l3 + 4).ok_or(HeaderError::Malformed)?);
    // Extension headers (hop-by-hop, routing, fragment, ...) are passed, not walked:
    // legitimate TLS clients do not send them, and walking them costs verifier budget.
    if frame.at(l3 + 6).ok_or(HeaderError::Malformed)? != IPPROTO_TCP {
        return Err(HeaderError::NotTcp);
    }
    let l4 = l3 + IPV6_HEADER_LEN;
    parse_tcp(frame, IpVersion::V6, l3, l4, l4 + payload_len)
}

/// `ip_end` is where the IP header says the packet ends; Ethernet padding lies beyond it.
#[inline(always)]
fn parse_tcp<B: Bytes + ?Sized>(
    frame: &B,
    ip: IpVersion,
    l3_offset: usize,
    l4_offset: usize,
    ip_end: usize,
) -> Result<Headers, HeaderError> {
    let src_port = frame.be16(l4_offset).ok_or(HeaderError::Malformed)?;
    let dst_port = frame.be16(l4_offset + 2).ok_or(HeaderError::Malformed)?;
    let data_offset = frame.at(l4_offset + 12).ok_or(HeaderError::Malformed)?;
    let tcp_flags = frame.at(l4_offset + 13).ok_or(HeaderError::Malformed)?;
    let tcp_header_len = usize::from(data_offset >> 4) * 4;
    if tcp_header_len < TCP_MIN_HEADER_LEN {
        return Err(HeaderError::Malformed);
    }
    let payload_offset = l4_offset + tcp_header_len;
    if payload_offset > ip_end {
        return Err(HeaderError::Malformed);
    }
    let payload_len = ip_end - payload_offset;
    Ok(Headers {
        ip,
        l3_offset,
        l4_offset,
        payload_offset,
        payload_len,
        src_port,
        dst_port,
        tcp_flags,
    })
}

#[cfg(test)]
#[path = "packet_tests.rs"]
mod tests;
