use std::time::Duration;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

use super::*;

fn addr(text: &str) -> SocketAddr {
    text.parse().expect("test fixture")
}

fn proxied(source: &str, destination: &str) -> Result<Header, ProxyHeaderError> {
    Ok(Header::Proxied {
        source: addr(source),
        destination: addr(destination),
    })
}

#[test]
fn version_1_lines() {
    use ProxyHeaderError::*;
    let cases: &[(&str, Result<Header, ProxyHeaderError>)] = &[
        (
            "PROXY TCP4 192.0.2.7 198.51.100.1 56324 443\r\n",
            proxied("192.0.2.7:56324", "198.51.100.1:443"),
        ),
        (
            "PROXY TCP6 2001:db8::7 2001:db8::1 65535 0\r\n",
            proxied("[2001:db8::7]:65535", "[2001:db8::1]:0"),
        ),
        ("PROXY UNKNOWN\r\n", Ok(Header::Local)),
        ("PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n", Ok(Header::Local)),
        (
            "PROXY TCP4 192.0.2.7 198.51.100.1 56324 443\n",
            Err(V1Malformed("the line does not end in CRLF")),
        ),
        (
            "PROXY TCP4 2001:db8::7 198.51.100.1 1 2\r\n",
            Err(V1Malformed("an address does not match the protocol")),
        ),
        (
            "PROXY TCP6 192.0.2.7 2001:db8::1 1 2\r\n",
            Err(V1Malformed("an address does not match the protocol")),
        ),
        (
            "PROXY TCP4 192.0.2.7 198.51.100.1 65536 443\r\n",
            Err(V1Malformed("a port is not a number from 0 to 65535")),
        ),
        (
            "PROXY TCP4 192.0.2.7 198.51.100.1 +80 443\r\n",
            Err(V1Malformed("a port is not a number from 0 to 65535")),
        ),
        (
            "PROXY TCP4 192.0.2.7 198.51.100.1 080 443\r\n",
            Err(V1Malformed("a port is not a number from 0 to 65535")),
        ),
        (
            "PROXY TCP4 192.0.2.7  198.51.100.1 80 443\r\n",
            Err(V1Malformed(
                "expected four fields after the protocol, single-spaced",
            )),
        ),
        (
            "PROXY TCP4 192.0.2.7 198.51.100.1 80\r\n",
            Err(V1Malformed(
                "expected four fields after the protocol, single-spaced",
            )),
        ),
        (
            "PROXY TCP4 192.0.2.7 198.51.100.1 80 443 extra\r\n",
            Err(V1Malformed(
                "expected four fields after the protocol, single-spaced",
            )),
        ),
        (
            "PROXY UDP4 192.0.2.7 198.51.100.1 80 443\r\n",
            Err(V1Malformed("the protocol is not TCP4, TCP6 or UNKNOWN")),
        ),
        ("GET / HTTP/1.1\r\n", Err(Missing)),
    ];
    for (line, want) in cases {
        assert_eq!(&parse_v1(line.as_bytes()), want, "{line:?}");
    }
    let long = format!("PROXY UNKNOWN {}\r\n", "x".repeat(100));
    assert_eq!(parse_v1(long.as_bytes()), Err(V1TooLong));
}

/// A version 2 header: command byte, family/transport byte, then the body.
fn v2(command: u8, family: u8, body: &[u8]) -> Vec<u8> {
    let mut header = V2_SIGNATURE.to_vec();
    header.push(command);
    header.push(family);
    header.extend_from_slice(&(body.len() as u16).to_be_bytes());
    header.extend_from_slice(body);
    header
}

fn inet_body(tlvs: &[u8]) -> Vec<u8> {
    let mut body = vec![192, 0, 2, 7, 198, 51, 100, 1];
    body.extend_from_slice(&56324u16.to_be_bytes());
    body.extend_from_slice(&443u16.to_be_bytes());
    body.extend_from_slice(tlvs);
    body
}

#[test]
fn version_2_headers() {
    use ProxyHeaderError::*;
    let mut inet6 = Vec::new();
    inet6.extend_from_slice(
        &"2001:db8::7"
            .parse::<Ipv6Addr>()
            .expect("test fixture")
            .octets(),
    );
    inet6.extend_from_slice(
        &"2001:db8::1"
            .parse::<Ipv6Addr>()
            .expect("test fixture")
            .octets(),
    );
    inet6.extend_from_slice(&[0xdc, 0x04, 0x01, 0xbb]);
    // An AWS-style TLV (type 0xEA, a VPC endpoint id) and a NOOP.
    let tlvs = [&[0xea, 0, 5][..], b"vpce-", &[0x04, 0, 0]].concat();
    let cases: Vec<(&str, Vec<u8>, Result<Header, ProxyHeaderError>)> = vec![
        (
            "PROXY TCP over IPv4",
            v2(0x21, 0x11, &inet_body(&[])),
            proxied("192.0.2.7:56324", "198.51.100.1:443"),
        ),
        (
            "PROXY TCP over IPv6",
            v2(0x21, 0x21, &inet6),
            proxied("[2001:db8::7]:56324", "[2001:db8::1]:443"),
        ),
        (
            "TLVs after the addresses",
            v2(0x21, 0x11, &inet_body(&tlvs)),
            proxied("192.0.2.7:56324", "198.51.100.1:443"),
        ),
        (
            "LOCAL (a health check) ignores the addresses",
            v2(0x20, 0x11, &inet_body(&[])),
            Ok(Header::Local),
        ),
        (
            "LOCAL with no addresses",
            v2(0x20, 0x00, &[]),
            Ok(Header::Local),
        ),
        ("UNSPEC family", v2(0x21, 0x00, &[]), Ok(Header::Local)),
        ("UNIX family", v2(0x21, 0x31, &[0; 216]), Ok(Header::Local)),
        (
            "UDP",
            v2(0x21, 0x12, &inet_body(&[])),
            Err(V2Malformed("the transport is not STREAM")),
        ),
        (
            "version 1 in a version 2 header",
            v2(0x11, 0x11, &inet_body(&[])),
            Err(V2Malformed("the version is not 2")),
        ),
        (
            "unknown command",
            v2(0x22, 0x11, &inet_body(&[])),
            Err(V2Malformed("the command is neither LOCAL nor PROXY")),
        ),
        (
            "unknown family",
            v2(0x21, 0x41, &inet_body(&[])),
            Err(V2Malformed("unknown address family")),
        ),
        (
            "addresses cut short",
            v2(0x21, 0x21, &inet_body(&[])),
            Err(V2Malformed("the addresses are longer than the header")),
        ),
        (
            "a TLV longer than the header",
            v2(0x21, 0x11, &inet_body(&[0xea, 0, 9, b'x'])),
            Err(V2Malformed("a TLV runs past the header")),
        ),
        (
            "a TLV header cut short",
            v2(0x21, 0x11, &inet_body(&[0xea, 0])),
            Err(V2Malformed("a TLV is cut short")),
        ),
    ];
    for (what, header, want) in cases {
        assert_eq!(parse_v2(&header), want, "{what}");
    }
    let huge = v2(0x21, 0x11, &inet_body(&vec![0x04; MAX_V2_HEADER_BYTES]));
    assert!(matches!(parse_v2(&huge), Err(V2TooLong(_))));
}

/// Writes `sent` to a fresh loopback connection and reads the header on the other end;
/// returns what the header read said and the bytes left after it.
async fn read_from(sent: Vec<u8>) -> (Result<Header, ProxyHeaderError>, Vec<u8>) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("test fixture");
    let to = listener.local_addr().expect("test fixture");
    let writer = tokio::spawn(async move {
        let mut client = TcpStream::connect(to).await.expect("test fixture");
        // Byte by byte: the reader must cope with a header arriving in pieces.
        for byte in sent {
            client.write_all(&[byte]).await.expect("test fixture");
            client.flush().await.expect("test fixture");
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
    });
    let (mut server, _) = listener.accept().await.expect("test fixture");
    let header = tokio::time::timeout(Duration::from_secs(10), read_header(&mut server))
        .await
        .expect("the header read finished");
    writer.await.expect("test fixture");
    let mut rest = Vec::new();
    if header.is_ok() {
        server.read_to_end(&mut rest).await.expect("test fixture");
    }
    (header, rest)
}

#[tokio::test]
async fn reading_consumes_the_header_and_nothing_more() {
    let payload = b"GET / HTTP/1.1\r\n\r\n".to_vec();
    for header in [
        b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 443\r\n".to_vec(),
        b"PROXY UNKNOWN\r\n".to_vec(),
        v2(0x21, 0x11, &inet_body(&[0xea, 0, 1, b'x'])),
        v2(0x20, 0x00, &[]),
    ] {
        let (read, rest) = read_from([header.clone(), payload.clone()].concat()).await;
        assert!(read.is_ok(), "{header:?}: {read:?}");
        assert_eq!(rest, payload, "{header:?}");
    }
}

#[tokio::test]
async fn reading_refuses_what_is_not_a_header() {
    let (read, _) = read_from(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n".to_vec()).await;
    assert_eq!(read, Err(ProxyHeaderError::Missing));
    let (read, _) = read_from(b"PROXY TCP4 1.2.3.4".to_vec()).await;
    assert_eq!(read, Err(ProxyHeaderError::Truncated));
    let (read, _) = read_from(format!("PROXY UNKNOWN {}", "x".repeat(200)).into_bytes()).await;
    assert_eq!(read, Err(ProxyHeaderError::V1TooLong));
    let (read, _) = read_from(b"PROXY X\r\nGET / HTTP/1.1\r\n\r\n".to_vec()).await;
    assert_eq!(
        read,
        Err(ProxyHeaderError::V1Malformed(
            "the line does not end in CRLF"
        ))
    );
    let mut huge = v2(0x21, 0x11, &[]);
    huge[14..16].copy_from_slice(&u16::MAX.to_be_bytes());
    let (read, _) = read_from(huge).await;
    assert!(matches!(read, Err(ProxyHeaderError::V2TooLong(_))));
}

#[test]
fn the_flag_names_all_or_gateway_ports() {
    use ProxyProtocolPorts::*;
    assert_eq!("all".parse(), Ok(All));
    assert_eq!("443".parse(), Ok(Ports(vec![443])));
    assert_eq!("80, 443".parse(), Ok(Ports(vec![80, 443])));
    for bad in ["", "0", "https", "80,", "70000"] {
        assert!(bad.parse::<ProxyProtocolPorts>().is_err(), "{bad:?}");
    }
    assert!(Ports(vec![443]).applies_to(443) && !Ports(vec![443]).applies_to(80));
    assert!(All.applies_to(1) && !None.applies_to(443));
}
