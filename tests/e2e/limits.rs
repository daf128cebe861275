//! Connection and request limits, with raw sockets and curl against the real gatewayd:
//! the header-read timeout (408 for a head that comes too slowly), the idle keep-alive
//! timeout (kept well past the header-read timeout, closed after its own), the request
//! body limit (413, and the upstream never sees the request), and access-log lines and
//! metrics for the answers that never reach the router (400, 431, 408).

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use gateway_tests::{
    Gateway, TempDir, Upstream, curl, free_port, h2c, http_get, httpbin_config,
    service_with_endpoint,
};

/// Short clocks keep the suite fast; each test's bounds leave seconds of slack.
const HEADER_READ_TIMEOUT: &str = "1s";
const IDLE_TIMEOUT: &str = "4s";
const BODY_LIMIT: usize = 1000;
/// How long a test waits for the gateway to act on a timeout before calling it missing.
const PATIENCE: Duration = Duration::from_secs(15);

struct Setup {
    upstream: Upstream,
    gateway: Gateway,
    _dir: TempDir,
    addr: SocketAddr,
}

fn start(extra: &[&str]) -> anyhow::Result<Setup> {
    let upstream = Upstream::start(None, "127.0.0.1:0", "httpbin")?;
    let dir = TempDir::new("limits")?;
    let bind_port = free_port();
    dir.write("config.yaml", &httpbin_config(bind_port, upstream.addr))?;
    let mut args = vec!["--ebpf", "off"];
    args.extend_from_slice(extra);
    let gateway = Gateway::start(dir.path(), &args, None, &dir)?;
    Ok(Setup {
        upstream,
        gateway,
        _dir: dir,
        addr: SocketAddr::from(([127, 0, 0, 1], bind_port)),
    })
}

fn start_with_clocks() -> anyhow::Result<Setup> {
    start(&[
        "--header-read-timeout",
        HEADER_READ_TIMEOUT,
        "--idle-timeout",
        IDLE_TIMEOUT,
    ])
}

fn connect(addr: SocketAddr) -> anyhow::Result<TcpStream> {
    let stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(PATIENCE))?;
    Ok(stream)
}

/// Reads one response with a Content-Length body; returns its head and body.
fn read_response(stream: &mut TcpStream) -> anyhow::Result<(String, String)> {
    let mut bytes = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&bytes[..end]).into_owned();
            let length: usize = head
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse().ok())?
                })
                .unwrap_or(0);
            if bytes.len() >= end + 4 + length {
                let body = String::from_utf8_lossy(&bytes[end + 4..end + 4 + length]);
                return Ok((head, body.into_owned()));
            }
        }
        let n = stream.read(&mut buf)?;
        anyhow::ensure!(n > 0, "connection closed mid-response: {bytes:?}");
        bytes.extend_from_slice(&buf[..n]);
    }
}

/// Everything the gateway sends until it closes the connection, and how long that took.
fn read_until_closed(stream: &mut TcpStream) -> anyhow::Result<(String, Duration)> {
    let started = Instant::now();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => anyhow::bail!("no close within {PATIENCE:?}: {e}; got {answer:?}"),
        }
    }
    Ok((
        String::from_utf8_lossy(&answer).into_owned(),
        started.elapsed(),
    ))
}

fn requests_seen(upstream: &Upstream) -> anyhow::Result<usize> {
    let (_, seen) = http_get(upstream.addr, "/__requests")?;
    Ok(seen.matches("\"path\"").count())
}

const GET_STATUS: &[u8] = b"GET /status/200 HTTP/1.1\r\nHost: httpbin.example.com\r\n\r\n";

/// `istio_requests_total` for an answer the gateway gave before any route was chosen.
fn local_answers(gateway: &Gateway, code: u16, flags: &str) -> anyhow::Result<f64> {
    let sample = format!(
        "istio_requests_total{{response_code=\"{code}\",response_flags=\"{flags}\",request_protocol=\"http\",destination_service=\"unknown\",destination_service_name=\"unknown\",destination_service_namespace=\"unknown\"}}"
    );
    Ok(gateway.metric(&sample)?.unwrap_or(0.0))
}

#[test]
fn an_idle_keep_alive_connection_outlives_the_header_read_timeout_then_closes() -> anyhow::Result<()>
{
    let setup = start_with_clocks()?;
    let mut stream = connect(setup.addr)?;
    stream.write_all(GET_STATUS)?;
    let (head, _) = read_response(&mut stream)?;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");

    // Idle for well over the header-read timeout: the connection stays open.
    std::thread::sleep(Duration::from_millis(2500));
    stream.write_all(GET_STATUS)?;
    let (head, _) = read_response(&mut stream)?;
    assert!(
        head.starts_with("HTTP/1.1 200"),
        "second request on the idle connection: {head}\n{}",
        setup.gateway.stderr()
    );

    // Then idle for longer than the idle timeout: closed, without an answer.
    let (answer, waited) = read_until_closed(&mut stream)?;
    assert_eq!(answer, "", "an idle close sends nothing");
    assert!(
        waited >= Duration::from_secs(3),
        "closed after {waited:?}, before the idle timeout ({IDLE_TIMEOUT})"
    );

    // A connection that never sends anything is idle from the start.
    let mut silent = connect(setup.addr)?;
    let (answer, waited) = read_until_closed(&mut silent)?;
    assert_eq!(answer, "");
    assert!(waited >= Duration::from_secs(3), "closed after {waited:?}");

    // HTTP/2 (prior knowledge): the preface and an empty SETTINGS frame, then silence.
    let mut http2 = connect(setup.addr)?;
    http2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")?;
    let (_, waited) = read_until_closed(&mut http2)?;
    assert!(waited >= Duration::from_secs(3), "closed after {waited:?}");
    assert_eq!(requests_seen(&setup.upstream)?, 2);
    Ok(())
}

#[test]
fn half_a_head_gets_408_after_the_header_read_timeout() -> anyhow::Result<()> {
    let setup = start_with_clocks()?;

    // Half a head, then nothing.
    let mut stream = connect(setup.addr)?;
    stream.write_all(b"GET /status/200 HTTP/1.1\r\nHost: httpbin.example.com\r\n")?;
    let (answer, waited) = read_until_closed(&mut stream)?;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert!(
        waited < Duration::from_millis(3500),
        "cut off after {waited:?}, the header-read timeout is {HEADER_READ_TIMEOUT}"
    );

    // A head dribbled a byte at a time: reading more does not buy more time.
    let mut stream = connect(setup.addr)?;
    stream.write_all(GET_STATUS)?;
    read_response(&mut stream)?;
    let started = Instant::now();
    for byte in b"GET /status/200 HTTP/1.1\r\nHost: httpbin.example.com\r\nX-Slow: yes\r\n\r\n" {
        // Writes fail once the gateway has reset the connection.
        if stream.write_all(&[*byte]).is_err() || started.elapsed() > Duration::from_secs(3) {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let (answer, _) = read_until_closed(&mut stream)?;
    assert!(answer.starts_with("HTTP/1.1 408"), "slow head: {answer:?}");

    // Neither slow head reached the upstream; both are logged and counted.
    assert_eq!(requests_seen(&setup.upstream)?, 1);
    let log = setup.gateway.access_log();
    assert_eq!(
        log.matches("\"- - HTTP/1.1\" 408 DPE ").count(),
        2,
        "access log:\n{log}"
    );
    assert_eq!(local_answers(&setup.gateway, 408, "DPE")?, 2.0);
    Ok(())
}

#[test]
fn answers_hyper_sends_itself_are_logged_and_counted() -> anyhow::Result<()> {
    let setup = start(&[])?;
    let cases: [(&str, Vec<u8>, &str); 3] = [
        (
            "an unparsable request line",
            b"GET /status/200 HTTP/1.1 extra\r\nHost: httpbin.example.com\r\n\r\n".to_vec(),
            "400",
        ),
        (
            "a head the framing guard rejects (bare LF)",
            b"GET /status/200 HTTP/1.1\nHost: httpbin.example.com\n\n".to_vec(),
            "400",
        ),
        (
            "a head over the size limit",
            format!(
                "GET /status/200 HTTP/1.1\r\nHost: httpbin.example.com\r\nX-Big: {}\r\n\r\n",
                "a".repeat(64 * 1024)
            )
            .into_bytes(),
            "431",
        ),
    ];
    for (what, bytes, status) in &cases {
        let mut stream = connect(setup.addr)?;
        stream.write_all(bytes)?;
        let (answer, _) = read_until_closed(&mut stream)?;
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "{what}: {answer:?}"
        );
    }
    // Access-log lines are written when the connection ends, just after the answer.
    let deadline = Instant::now() + PATIENCE;
    while setup.gateway.access_log().lines().count() < cases.len() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = setup.gateway.access_log();
    assert_eq!(log.matches("\"- - HTTP/1.1\" 400 DPE ").count(), 2, "{log}");
    assert_eq!(log.matches("\"- - HTTP/1.1\" 431 DPE ").count(), 1, "{log}");
    assert_eq!(local_answers(&setup.gateway, 400, "DPE")?, 2.0);
    assert_eq!(local_answers(&setup.gateway, 431, "DPE")?, 1.0);
    assert_eq!(requests_seen(&setup.upstream)?, 0);
    Ok(())
}

#[test]
fn bodies_over_the_limit_get_413_and_never_reach_the_upstream() -> anyhow::Result<()> {
    let limit = BODY_LIMIT.to_string();
    let setup = start(&["--max-request-body-bytes", &limit])?;
    let dir = TempDir::new("limits-bodies")?;
    let small = dir.write("small", &"s".repeat(BODY_LIMIT))?;
    let large = dir.write("large", &"l".repeat(BODY_LIMIT + 1))?;
    let url = format!("http://{}/status/200", setup.addr);
    let post = |file: &std::path::Path, chunked: bool| {
        let data = format!("@{}", file.display());
        let mut args = vec!["-H", "Host: httpbin.example.com", "--data-binary", &data];
        if chunked {
            args.extend(["-H", "Transfer-Encoding: chunked"]);
        }
        args.push(&url);
        curl(None, &args)
    };

    // At the limit: forwarded, with either framing.
    assert_eq!(post(&small, false)?.status, 200);
    assert_eq!(post(&small, true)?.status, 200);
    assert_eq!(requests_seen(&setup.upstream)?, 2);

    // Over it: a declared length is refused before routing, a chunked body when it
    // crosses the limit.
    let refused = post(&large, false)?;
    assert_eq!(refused.status, 413, "{refused:?}");
    assert_eq!(refused.body, "Payload Too Large");
    let cut = post(&large, true)?;
    assert_eq!(cut.status, 413, "{cut:?}\n{}", setup.gateway.stderr());
    // HTTP/2: by the declared length, before the body is read, and cut when a body that
    // declared none grows past the limit, before it ends. The client holds the rest of
    // its body back, so the answer must come without it (curl, whose upload raced the
    // early answer and its stream reset, lost the 413 to exit 92 now and then).
    let http2 = |declared: Option<u64>, sent: &'static [u8]| {
        h2c::post_held(
            setup.addr,
            "httpbin.example.com",
            "/status/200",
            declared,
            sent,
        )
    };
    let over = (BODY_LIMIT + 1) as u64;
    let declared = http2(Some(over), b"l")?;
    assert_eq!(
        (declared.status, declared.body.as_str()),
        (413, "Payload Too Large"),
        "HTTP/2: {declared:?}"
    );
    static OVER_THE_LIMIT: [u8; BODY_LIMIT + 1] = [b'l'; BODY_LIMIT + 1];
    let streamed = http2(None, &OVER_THE_LIMIT)?;
    assert_eq!(
        (streamed.status, streamed.body.as_str()),
        (413, "Payload Too Large"),
        "HTTP/2 without a length: {streamed:?}\n{}",
        setup.gateway.stderr()
    );

    // The same over a raw socket, chunk by chunk: the third chunk crosses the limit,
    // and what follows (the last chunk, another request) is never read as a request.
    let mut stream = connect(setup.addr)?;
    stream.write_all(
        b"POST /status/200 HTTP/1.1\r\nHost: httpbin.example.com\r\nTransfer-Encoding: chunked\r\n\r\n",
    )?;
    let chunk = format!("190\r\n{}\r\n", "c".repeat(400));
    for _ in 0..3 {
        stream.write_all(chunk.as_bytes())?;
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ =
        stream.write_all(b"0\r\n\r\nGET /status/201 HTTP/1.1\r\nHost: httpbin.example.com\r\n\r\n");
    let (answer, _) = read_until_closed(&mut stream)?;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer:?}");
    assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "{answer:?}");

    assert_eq!(
        requests_seen(&setup.upstream)?,
        2,
        "an oversized request reached the upstream"
    );
    let log = setup.gateway.access_log();
    assert_eq!(
        log.matches("\"POST /status/200 HTTP/1.1\" 413 - ").count(),
        3,
        "{log}"
    );
    assert_eq!(
        log.matches("\"POST /status/200 HTTP/2\" 413 - ").count(),
        2,
        "{log}"
    );
    Ok(())
}

/// An HTTPS server for httpbin.example.com (a self-signed certificate from `openssl`) on
/// `bind_port`, routing `/status` to `upstream`.
fn https_config(dir: &TempDir, bind_port: u16, upstream: SocketAddr) -> anyhow::Result<String> {
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=httpbin.example.com"])
        .args([
            "-addext",
            "subjectAltName=DNS:httpbin.example.com",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .context("running openssl")?;
    anyhow::ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(format!(
        r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: https, namespace: default}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 443, name: https, protocol: HTTPS}}
    hosts: ["httpbin.example.com"]
    tls: {{mode: SIMPLE, serverCertificate: "{cert}", privateKey: "{key}"}}
---
apiVersion: v1
kind: Service
metadata: {{name: istio-ingressgateway, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  ports: [{{name: https, port: 443, targetPort: {bind_port}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: httpbin, namespace: default}}
spec:
  hosts: ["httpbin.example.com"]
  gateways: [https]
  http:
  - match: [{{uri: {{prefix: /status}}}}]
    route: [{{destination: {{host: httpbin, port: {{number: 8000}}}}}}]
---
{}"#,
        service_with_endpoint("httpbin", 8000, upstream),
        cert = cert.display(),
        key = key.display(),
    ))
}

/// Sends `bytes` over TLS with `openssl s_client` (which keeps the connection open after
/// them) and returns what the gateway answered before it closed the connection.
fn tls_exchange(port: u16, bytes: &[u8]) -> anyhow::Result<String> {
    let mut client = Command::new("openssl")
        .args([
            "s_client",
            "-quiet",
            "-connect",
            &format!("127.0.0.1:{port}"),
        ])
        .args(["-servername", "httpbin.example.com"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("running openssl s_client")?;
    let mut stdout = client.stdout.take().context("s_client stdout")?;
    let (sender, answer) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        let _ = sender.send(text);
    });
    // s_client's stdin stays open (not dropped) until the gateway has answered.
    let mut stdin = client.stdin.take().context("s_client stdin")?;
    stdin.write_all(bytes)?;
    stdin.flush()?;
    let answer = answer.recv_timeout(PATIENCE);
    drop(stdin);
    let _ = client.kill();
    let _ = client.wait();
    answer.context("the gateway did not close the TLS connection")
}

#[test]
fn over_https_the_framing_guard_and_its_clocks_apply_too() -> anyhow::Result<()> {
    let upstream = Upstream::start(None, "127.0.0.1:0", "httpbin")?;
    let dir = TempDir::new("limits-https")?;
    let bind_port = free_port();
    dir.write(
        "config.yaml",
        &https_config(&dir, bind_port, upstream.addr)?,
    )?;
    let args = [
        "--ebpf",
        "off",
        "--header-read-timeout",
        HEADER_READ_TIMEOUT,
    ];
    let gateway = Gateway::start(dir.path(), &args, None, &dir)?;

    let answer = tls_exchange(
        bind_port,
        b"GET /status/200 HTTP/1.1\r\nHost: httpbin.example.com\r\n",
    )?;
    assert!(
        answer.starts_with("HTTP/1.1 408"),
        "half a head over TLS: {answer:?}\n{}",
        gateway.stderr()
    );
    let answer = tls_exchange(
        bind_port,
        b"GET /status/200 HTTP/1.1\nHost: httpbin.example.com\n\n",
    )?;
    assert!(
        answer.starts_with("HTTP/1.1 400"),
        "bare LF over TLS: {answer:?}"
    );
    let answer = tls_exchange(
        bind_port,
        b"GET /status/200 HTTP/1.1\r\nHost: httpbin.example.com\r\nConnection: close\r\n\r\n",
    )?;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    assert_eq!(requests_seen(&upstream)?, 1);
    Ok(())
}
