//! Request smuggling and limits: exact bytes over a TcpStream to the real gatewayd, and
//! proof from the demo upstream that rejected requests never reached it.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use gateway_tests::{Gateway, TempDir, Upstream, free_port, http_get, httpbin_config};

/// Both HTTP/1 servers answer by the same rules: hyper behind the framing guard (the
/// default) and our own codec (`--http1-server own`, issue 15).
const SERVERS: [&str; 2] = ["hyper", "own"];

fn start(server: &str) -> anyhow::Result<(Upstream, Gateway, TempDir, SocketAddr)> {
    eprintln!("--http1-server {server}");
    let upstream = Upstream::start(None, "127.0.0.1:0", "httpbin")?;
    let dir = TempDir::new("http-safety")?;
    let bind_port = free_port();
    dir.write("config.yaml", &httpbin_config(bind_port, upstream.addr))?;
    let gateway = Gateway::start(
        dir.path(),
        &["--ebpf", "off", "--http1-server", server],
        None,
        &dir,
    )?;
    Ok((
        upstream,
        gateway,
        dir,
        SocketAddr::from(([127, 0, 0, 1], bind_port)),
    ))
}

/// Sends `bytes` on a fresh connection and returns everything the gateway answers
/// before it closes the connection (or goes quiet for two seconds).
fn exchange(addr: SocketAddr, bytes: &[u8]) -> anyhow::Result<String> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.write_all(bytes)?;
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
        }
    }
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

fn status_line(answer: &str) -> &str {
    answer.lines().next().unwrap_or_default()
}

#[test]
fn ambiguous_requests_get_400_and_never_reach_the_upstream() -> anyhow::Result<()> {
    SERVERS
        .into_iter()
        .try_for_each(ambiguous_requests_get_400_and_never_reach_the_upstream_on)
}

fn ambiguous_requests_get_400_and_never_reach_the_upstream_on(server: &str) -> anyhow::Result<()> {
    let (upstream, gateway, _dir, addr) = start(server)?;
    let cases: [(&str, &[u8], &str); 10] = [
        (
            "Content-Length beside Transfer-Encoding",
            b"POST /status/200 HTTP/1.1\r\nHost: httpbin.example.com\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /status/201 HTTP/1.1\r\nHost: httpbin.example.com\r\n\r\n",
            "HTTP/1.1 400",
        ),
        (
            "duplicate Content-Length, same value",
            b"POST /status/200 HTTP/1.1\r\nHost: httpbin.example.com\r\nContent-Length: 4\r\nContent-Length: 4\r\n\r\nabcd",
            "HTTP/1.1 400",
        ),
        (
            "duplicate Content-Length, different values",
            b"POST /status/200 HTTP/1.1\r\nHost: httpbin.example.com\r\nContent-Length: 4\r\nContent-Length: 40\r\n\r\nabcd",
            "HTTP/1.1 400",
        ),
        (
            "invalid chunk size",
            b"POST /status/200 HTTP/1.1\r\nHost: httpbin.example.com\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
            "HTTP/1.1 400",
        ),
        (
            "bare LF line endings",
            b"GET /status/200 HTTP/1.1\nHost: httpbin.example.com\n\n",
            "HTTP/1.1 400",
        ),
        (
            "obs-fold",
            b"GET /status/200 HTTP/1.1\r\nHost: httpbin.example.com\r\nX-Folded: a\r\n b\r\n\r\n",
            "HTTP/1.1 400",
        ),
        (
            "control character in a header value",
            b"GET /status/200 HTTP/1.1\r\nHost: httpbin.example.com\r\nX-Bad: a\x01b\r\n\r\n",
            "HTTP/1.1 400",
        ),
        (
            "space before the colon",
            b"GET /status/200 HTTP/1.1\r\nHost: httpbin.example.com\r\nX-Bad : b\r\n\r\n",
            "HTTP/1.1 400",
        ),
        (
            "a body with no framing (a transfer coding that does not end in chunked)",
            b"POST /status/200 HTTP/1.1\r\nHost: httpbin.example.com\r\nTransfer-Encoding: gzip\r\n\r\nxyz",
            "HTTP/1.1 400",
        ),
        (
            "a transfer coding the gateway cannot pass on",
            b"POST /status/200 HTTP/1.1\r\nHost: httpbin.example.com\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
            "HTTP/1.1 501",
        ),
    ];
    for (what, bytes, expected) in cases {
        let answer = exchange(addr, bytes)?;
        assert!(
            status_line(&answer).starts_with(expected),
            "{what}: {answer:?}\n{}",
            gateway.stderr()
        );
        // Never a second response: whatever followed was not read as a request.
        assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "{what}: {answer:?}");
    }
    let (_, seen) = http_get(upstream.addr, "/__requests")?;
    assert_eq!(seen.trim(), "[]", "the upstream saw requests");
    Ok(())
}

#[test]
fn limits_on_header_size_and_count() -> anyhow::Result<()> {
    SERVERS
        .into_iter()
        .try_for_each(limits_on_header_size_and_count_on)
}

fn limits_on_header_size_and_count_on(server: &str) -> anyhow::Result<()> {
    let (upstream, _gateway, _dir, addr) = start(server)?;
    let big = format!(
        "GET /status/200 HTTP/1.1\r\nHost: httpbin.example.com\r\nX-Big: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    assert!(status_line(&exchange(addr, big.as_bytes())?).starts_with("HTTP/1.1 431"));
    let many: String = (0..150).map(|i| format!("X-{i}: v\r\n")).collect();
    let many = format!("GET /status/200 HTTP/1.1\r\nHost: httpbin.example.com\r\n{many}\r\n");
    assert!(status_line(&exchange(addr, many.as_bytes())?).starts_with("HTTP/1.1 431"));
    let (_, seen) = http_get(upstream.addr, "/__requests")?;
    assert_eq!(seen.trim(), "[]");
    Ok(())
}

#[test]
fn pipelined_keep_alive_requests_with_chunked_bodies() -> anyhow::Result<()> {
    SERVERS
        .into_iter()
        .try_for_each(pipelined_keep_alive_requests_with_chunked_bodies_on)
}

fn pipelined_keep_alive_requests_with_chunked_bodies_on(server: &str) -> anyhow::Result<()> {
    let (upstream, _gateway, _dir, addr) = start(server)?;
    let answer = exchange(
        addr,
        b"POST /status/201 HTTP/1.1\r\nHost: httpbin.example.com\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n\
GET /status/202 HTTP/1.1\r\nHost: httpbin.example.com\r\nContent-Length: 0\r\n\r\n\
GET /headers HTTP/1.1\r\nHost: httpbin.example.com\r\nConnection: close\r\n\r\n",
    )?;
    let statuses: Vec<&str> = answer
        .lines()
        .filter(|l| l.starts_with("HTTP/1.1 "))
        .collect();
    assert_eq!(
        statuses,
        [
            "HTTP/1.1 201 Created",
            "HTTP/1.1 202 Accepted",
            "HTTP/1.1 200 OK"
        ],
        "{answer}"
    );
    assert!(answer.contains("\"body_bytes\": 11"), "{answer}");
    let (_, seen) = http_get(upstream.addr, "/__requests")?;
    assert_eq!(seen.matches("\"path\"").count(), 3, "{seen}");
    Ok(())
}
