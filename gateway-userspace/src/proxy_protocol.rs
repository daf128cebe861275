//! The PROXY protocol (HAProxy's spec, versions 1 and 2): a load balancer in front of a
//! node port opens its own connection to us and first sends a header naming the client's
//! address and the address the client connected to. On a listener configured for it the
//! header is read before anything else (TLS, HTTP) and its addresses replace the
//! connection's for `x-forwarded-for`, `x-envoy-external-address`, authorization and the
//! access log, as Envoy's `proxy_protocol` listener filter restores them.
//!
//! The header is consumed exactly: bytes after it (a ClientHello, a request) stay in the
//! socket for the code that serves the connection. Everything is bounded: version 1 lines
//! by the spec's 107 bytes, version 2 headers (TLVs included) by `MAX_V2_HEADER_BYTES`,
//! and the whole read by the caller's timeout.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use thiserror::Error;
use tokio::{io::AsyncReadExt, net::TcpStream};

/// The longest version 1 header, CRLF included (the spec's figure).
pub const MAX_V1_HEADER_BYTES: usize = 107;
/// The longest version 2 header accepted, TLVs included. The spec allows 16 + 65 535;
/// real balancers send tens of bytes of TLVs (AWS NLB's VPC endpoint id, GCP's PSC
/// connection id), so a larger header is refused rather than buffered.
pub const MAX_V2_HEADER_BYTES: usize = 4096;

/// Which listeners expect the header: `--proxy-protocol all` or a list of Gateway ports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ProxyProtocolPorts {
    #[default]
    None,
    All,
    Ports(Vec<u16>),
}

impl ProxyProtocolPorts {
    /// Whether the listener for the Gateway port `port` reads a header first.
    pub fn applies_to(&self, port: u16) -> bool {
        match self {
            ProxyProtocolPorts::None => false,
            ProxyProtocolPorts::All => true,
            ProxyProtocolPorts::Ports(ports) => ports.contains(&port),
        }
    }
}

impl std::str::FromStr for ProxyProtocolPorts {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.eq_ignore_ascii_case("all") {
            return Ok(ProxyProtocolPorts::All);
        }
        text.split(',')
            .map(|port| match port.trim().parse::<u16>() {
                Ok(port) if port != 0 => Ok(port),
                _ => Err(format!(
                    "{port:?} is not a port: expected `all` or PORT,PORT,..."
                )),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(ProxyProtocolPorts::Ports)
    }
}

const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
const V2_FIXED_BYTES: usize = 16;
const V1_PREFIX: &[u8] = b"PROXY ";
/// The shortest header of either version ("PROXY UNKNOWN\r\n"): read before deciding,
/// so that nothing past a header is consumed.
const SHORTEST_HEADER: usize = 15;

/// What the header says about the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Header {
    /// The balancer speaks for itself (version 2 `LOCAL`, e.g. its health checks) or does
    /// not know the client (`UNKNOWN`, an unspecified or UNIX family): keep the
    /// connection's own addresses.
    Local,
    /// A client's connection: `source` connected to `destination`.
    Proxied {
        source: SocketAddr,
        destination: SocketAddr,
    },
}

impl Header {
    /// (peer, local) for a connection whose socket addresses are `peer` and `local`.
    pub fn addresses(self, peer: SocketAddr, local: SocketAddr) -> (SocketAddr, SocketAddr) {
        match self {
            Header::Local => (peer, local),
            Header::Proxied {
                source,
                destination,
            } => (source, destination),
        }
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ProxyHeaderError {
    #[error("the connection does not start with a PROXY protocol header")]
    Missing,
    #[error("the connection closed inside the PROXY protocol header")]
    Truncated,
    #[error("PROXY protocol v1 header longer than {MAX_V1_HEADER_BYTES} bytes")]
    V1TooLong,
    #[error("PROXY protocol v1 header: {0}")]
    V1Malformed(&'static str),
    #[error("PROXY protocol v2 header of {0} bytes (at most {MAX_V2_HEADER_BYTES})")]
    V2TooLong(usize),
    #[error("PROXY protocol v2 header: {0}")]
    V2Malformed(&'static str),
    #[error("reading the PROXY protocol header: {0}")]
    Io(String),
}

/// Reads and consumes the PROXY protocol header at the start of `stream`, and no byte
/// more. The caller bounds the time it may take.
pub async fn read_header(stream: &mut TcpStream) -> Result<Header, ProxyHeaderError> {
    let mut start = [0u8; SHORTEST_HEADER];
    read_exact(stream, &mut start).await?;
    if start.starts_with(&V2_SIGNATURE) {
        let mut header = Vec::with_capacity(V2_FIXED_BYTES + 64);
        header.extend_from_slice(&start);
        let mut last = [0u8; V2_FIXED_BYTES - SHORTEST_HEADER];
        read_exact(stream, &mut last).await?;
        header.extend_from_slice(&last);
        let total = V2_FIXED_BYTES + usize::from(u16::from_be_bytes([header[14], header[15]]));
        if total > MAX_V2_HEADER_BYTES {
            return Err(ProxyHeaderError::V2TooLong(total));
        }
        header.resize(total, 0);
        read_exact(stream, &mut header[V2_FIXED_BYTES..]).await?;
        return parse_v2(&header);
    }
    if !start.starts_with(V1_PREFIX) {
        return Err(ProxyHeaderError::Missing);
    }
    let mut line = Vec::with_capacity(MAX_V1_HEADER_BYTES);
    line.extend_from_slice(&start);
    // The rest of the line: look ahead for its LF and consume through it. Bytes seen
    // without one are all header, so they are consumed and the next look waits for more.
    while !line.contains(&b'\n') {
        let mut ahead = [0u8; MAX_V1_HEADER_BYTES];
        let room = MAX_V1_HEADER_BYTES - line.len();
        if room == 0 {
            return Err(ProxyHeaderError::V1TooLong);
        }
        let seen = stream
            .peek(&mut ahead[..room])
            .await
            .map_err(|e| ProxyHeaderError::Io(e.to_string()))?;
        if seen == 0 {
            return Err(ProxyHeaderError::Truncated);
        }
        let take = ahead[..seen]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(seen, |lf| lf + 1);
        let from = line.len();
        line.resize(from + take, 0);
        read_exact(stream, &mut line[from..]).await?;
    }
    parse_v1(&line)
}

async fn read_exact(stream: &mut TcpStream, into: &mut [u8]) -> Result<(), ProxyHeaderError> {
    match stream.read_exact(into).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(ProxyHeaderError::Truncated),
        Err(e) => Err(ProxyHeaderError::Io(e.to_string())),
    }
}

/// A whole version 1 line, `PROXY ` through CRLF.
pub fn parse_v1(line: &[u8]) -> Result<Header, ProxyHeaderError> {
    use ProxyHeaderError::V1Malformed as Bad;
    if line.len() > MAX_V1_HEADER_BYTES {
        return Err(ProxyHeaderError::V1TooLong);
    }
    let text = line
        .strip_prefix(V1_PREFIX)
        .ok_or(ProxyHeaderError::Missing)?
        .strip_suffix(b"\r\n")
        .ok_or(Bad("the line does not end in CRLF"))?;
    let text = std::str::from_utf8(text).map_err(|_| Bad("not ASCII"))?;
    let mut fields = text.split(' ');
    let family = fields.next().unwrap_or_default();
    if family == "UNKNOWN" {
        // The spec: whatever follows UNKNOWN is ignored.
        return Ok(Header::Local);
    }
    let v6 = match family {
        "TCP4" => false,
        "TCP6" => true,
        _ => return Err(Bad("the protocol is not TCP4, TCP6 or UNKNOWN")),
    };
    let (Some(src), Some(dst), Some(sport), Some(dport), None) = (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    ) else {
        return Err(Bad(
            "expected four fields after the protocol, single-spaced",
        ));
    };
    let address = |text: &str| -> Result<IpAddr, ProxyHeaderError> {
        if v6 {
            text.parse::<Ipv6Addr>().map(IpAddr::V6)
        } else {
            text.parse::<Ipv4Addr>().map(IpAddr::V4)
        }
        .map_err(|_| Bad("an address does not match the protocol"))
    };
    let port = |text: &str| -> Result<u16, ProxyHeaderError> {
        // Decimal digits only (no sign), no leading zero, as the spec writes them.
        let canonical = !text.is_empty()
            && text.bytes().all(|b| b.is_ascii_digit())
            && (text == "0" || !text.starts_with('0'));
        canonical
            .then(|| text.parse().ok())
            .flatten()
            .ok_or(Bad("a port is not a number from 0 to 65535"))
    };
    Ok(Header::Proxied {
        source: SocketAddr::new(address(src)?, port(sport)?),
        destination: SocketAddr::new(address(dst)?, port(dport)?),
    })
}

/// A whole version 2 header: the 16 fixed bytes and the length they announce.
pub fn parse_v2(header: &[u8]) -> Result<Header, ProxyHeaderError> {
    use ProxyHeaderError::V2Malformed as Bad;
    if !header.starts_with(&V2_SIGNATURE) {
        return Err(ProxyHeaderError::Missing);
    }
    let fixed = header
        .get(..V2_FIXED_BYTES)
        .ok_or(ProxyHeaderError::Truncated)?;
    let length = usize::from(u16::from_be_bytes([fixed[14], fixed[15]]));
    if V2_FIXED_BYTES + length > MAX_V2_HEADER_BYTES {
        return Err(ProxyHeaderError::V2TooLong(V2_FIXED_BYTES + length));
    }
    if header.len() != V2_FIXED_BYTES + length {
        return Err(Bad("the length does not match the header"));
    }
    let body = &header[V2_FIXED_BYTES..];
    if fixed[12] >> 4 != 2 {
        return Err(Bad("the version is not 2"));
    }
    let local = match fixed[12] & 0x0f {
        0 => true,
        1 => false,
        _ => return Err(Bad("the command is neither LOCAL nor PROXY")),
    };
    let (family, transport) = (fixed[13] >> 4, fixed[13] & 0x0f);
    let address_bytes = match family {
        0 => 0,
        1 => 12,
        2 => 36,
        3 => 216,
        _ => return Err(Bad("unknown address family")),
    };
    let addresses = body
        .get(..address_bytes)
        .ok_or(Bad("the addresses are longer than the header"))?;
    check_tlvs(&body[address_bytes..])?;
    // LOCAL ignores the address block, whatever it holds (the spec).
    if local {
        return Ok(Header::Local);
    }
    if family != 0 && transport != 1 {
        return Err(Bad("the transport is not STREAM"));
    }
    let port = |at: usize| u16::from_be_bytes([addresses[at], addresses[at + 1]]);
    match family {
        1 => {
            let ip = |at: usize| {
                IpAddr::V4(Ipv4Addr::new(
                    addresses[at],
                    addresses[at + 1],
                    addresses[at + 2],
                    addresses[at + 3],
                ))
            };
            Ok(Header::Proxied {
                source: SocketAddr::new(ip(0), port(8)),
                destination: SocketAddr::new(ip(4), port(10)),
            })
        }
        2 => {
            let ip = |at: usize| {
                let mut octets = [0u8; 16];
                octets.copy_from_slice(&addresses[at..at + 16]);
                IpAddr::V6(Ipv6Addr::from(octets))
            };
            Ok(Header::Proxied {
                source: SocketAddr::new(ip(0), port(32)),
                destination: SocketAddr::new(ip(16), port(34)),
            })
        }
        // UNSPEC and UNIX: no IP address to restore.
        _ => Ok(Header::Local),
    }
}

/// TLVs are not used, but they must tile the rest of the header exactly.
fn check_tlvs(mut tlvs: &[u8]) -> Result<(), ProxyHeaderError> {
    while !tlvs.is_empty() {
        let [_kind, high, low, rest @ ..] = tlvs else {
            return Err(ProxyHeaderError::V2Malformed("a TLV is cut short"));
        };
        let length = usize::from(u16::from_be_bytes([*high, *low]));
        tlvs = rest
            .get(length..)
            .ok_or(ProxyHeaderError::V2Malformed("a TLV runs past the header"))?;
    }
    Ok(())
}

#[cfg(test)]
#[path = "proxy_protocol_tests.rs"]
mod tests;
