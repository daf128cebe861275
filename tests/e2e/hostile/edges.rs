//! Hostile clients at the edges of HTTP: heads that used to switch the framing guard and
//! its clocks off (a refused `Upgrade`, `CONNECT`, `PRI ` that is not a connection's
//! HTTP/2 preface), WebSocket and TCP tunnels left idle, a drain with a WebSocket open,
//! headers a client should not be trusted with (`x-envoy-*`, `x-request-id`), upgrades
//! no route allows, and paths that climb out of their route with dot segments. Raw
//! sockets and curl against the real gatewayd and the demo upstream.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use anyhow::{Context as _, ensure};
use gateway_tests::{
    Gateway, TempDir, Upstream, curl, free_port, http_get, httpbin_config, service_with_endpoint,
};

/// How long a test waits for the gateway to act on a timeout before calling it missing.
const PATIENCE: Duration = Duration::from_secs(15);
const HOST: &str = "httpbin.example.com";

struct Setup {
    upstream: Upstream,
    gateway: Gateway,
    dir: TempDir,
    addr: SocketAddr,
}

/// The gateway in front of the demo upstream, with `config(bind_port, upstream)`.
fn start_with(config: impl Fn(u16, SocketAddr) -> String, extra: &[&str]) -> anyhow::Result<Setup> {
    let upstream = Upstream::start(None, "127.0.0.1:0", "httpbin")?;
    let dir = TempDir::new("edges")?;
    let bind_port = free_port();
    dir.write("config.yaml", &config(bind_port, upstream.addr))?;
    let mut args = vec!["--ebpf", "off"];
    args.extend_from_slice(extra);
    let gateway = Gateway::start(dir.path(), &args, None, &dir)?;
    Ok(Setup {
        upstream,
        gateway,
        dir,
        addr: SocketAddr::from(([127, 0, 0, 1], bind_port)),
    })
}

fn start(extra: &[&str]) -> anyhow::Result<Setup> {
    start_with(httpbin_config, extra)
}

fn connect(addr: SocketAddr) -> anyhow::Result<TcpStream> {
    let stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(PATIENCE))?;
    Ok(stream)
}

/// Reads one response head (and its Content-Length body); returns the head.
fn read_response(stream: &mut TcpStream) -> anyhow::Result<String> {
    let mut bytes = Vec::new();
    let mut byte = [0u8; 1];
    while !bytes.ends_with(b"\r\n\r\n") {
        let n = stream.read(&mut byte)?;
        ensure!(n > 0, "connection closed mid-response: {bytes:?}");
        bytes.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&bytes).into_owned();
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body)?;
    Ok(head)
}

/// Everything the gateway sends until it closes the connection.
fn read_until_closed(stream: &mut TcpStream) -> anyhow::Result<Vec<u8>> {
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Ok(answer),
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(answer),
            Err(e) => anyhow::bail!("not closed within {PATIENCE:?}: {e}; got {answer:?}"),
        }
    }
}

/// After `opener` (answered with a status that starts with `expect`), a head that stops
/// halfway still gets its 408, and a smuggling attempt on the same kind of connection is
/// still refused: the guard kept framing.
fn slow_head_after(addr: SocketAddr, opener: &[u8], expect: &str) -> anyhow::Result<()> {
    let mut stream = connect(addr)?;
    stream.write_all(opener)?;
    let head = read_response(&mut stream)?;
    ensure!(
        head.starts_with(expect),
        "{}: {head}",
        String::from_utf8_lossy(opener)
    );
    stream.write_all(b"GET /status/200 HTTP/1.1\r\nHost: httpbin.exa")?;
    let answer = String::from_utf8_lossy(&read_until_closed(&mut stream)?).into_owned();
    ensure!(
        answer.starts_with("HTTP/1.1 408"),
        "after {}: {answer:?}",
        String::from_utf8_lossy(opener)
    );

    // A bare-LF head, which hyper alone would take: still refused after the opener.
    let mut stream = connect(addr)?;
    stream.write_all(opener)?;
    read_response(&mut stream)?;
    stream.write_all(b"GET /status/201 HTTP/1.1\nHost: httpbin.example.com\n\n")?;
    let answer = String::from_utf8_lossy(&read_until_closed(&mut stream)?).into_owned();
    ensure!(
        answer.starts_with("HTTP/1.1 400"),
        "smuggled after {}: {answer:?}",
        String::from_utf8_lossy(opener)
    );
    Ok(())
}

#[test]
fn slow_heads_after_upgrade_connect_and_pri_still_get_408() -> anyhow::Result<()> {
    let setup = start(&["--header-read-timeout", "1s"])?;
    let addr = setup.addr;
    // A WebSocket upgrade no route takes: 404, and the connection stays HTTP/1.
    slow_head_after(
        addr,
        b"GET /nowhere HTTP/1.1\r\nHost: httpbin.example.com\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        "HTTP/1.1 404",
    )?;
    // h2c: the upgrade is dropped and the request served as a plain one.
    slow_head_after(
        addr,
        b"GET /status/200 HTTP/1.1\r\nHost: httpbin.example.com\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n",
        "HTTP/1.1 200",
    )?;
    // CONNECT that no route takes.
    slow_head_after(
        addr,
        b"CONNECT httpbin.example.com:443 HTTP/1.1\r\nHost: httpbin.example.com:443\r\n\r\n",
        "HTTP/1.1 404",
    )?;

    // `PRI ` after a request is no HTTP/2 preface: its slow head gets 408.
    let mut stream = connect(addr)?;
    stream.write_all(b"GET /status/200 HTTP/1.1\r\nHost: httpbin.example.com\r\n\r\n")?;
    read_response(&mut stream)?;
    stream.write_all(b"PRI * HTTP/2.0\r\n")?;
    let answer = String::from_utf8_lossy(&read_until_closed(&mut stream)?).into_owned();
    ensure!(answer.starts_with("HTTP/1.1 408"), "after PRI: {answer:?}");

    // Nor is an unfinished preface as a connection's first bytes.
    let mut stream = connect(addr)?;
    stream.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n")?;
    let answer = String::from_utf8_lossy(&read_until_closed(&mut stream)?).into_owned();
    ensure!(
        answer.starts_with("HTTP/1.1 408"),
        "unfinished preface: {answer:?}\n{}",
        setup.gateway.stderr()
    );
    Ok(())
}

const WEBSOCKET_HANDSHAKE: &[u8] = b"GET /headers HTTP/1.1\r\nHost: httpbin.example.com\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

/// A WebSocket through the gateway to the demo upstream, which echoes its bytes.
fn open_websocket(addr: SocketAddr) -> anyhow::Result<TcpStream> {
    let mut stream = connect(addr)?;
    stream.write_all(WEBSOCKET_HANDSHAKE)?;
    let head = read_response(&mut stream)?;
    ensure!(head.starts_with("HTTP/1.1 101"), "{head}");
    Ok(stream)
}

/// Sends one masked text frame and reads the echo of its bytes.
fn echo(stream: &mut TcpStream) -> anyhow::Result<()> {
    let frame = [0x81, 0x82, 0, 0, 0, 0, b'h', b'i'];
    stream.write_all(&frame)?;
    let mut back = [0u8; 8];
    stream.read_exact(&mut back)?;
    ensure!(back == frame, "{back:?}");
    Ok(())
}

#[test]
fn an_idle_websocket_is_closed_after_the_stream_idle_timeout() -> anyhow::Result<()> {
    let setup = start(&["--stream-idle-timeout", "1s"])?;
    let mut socket = open_websocket(setup.addr)?;
    // Traffic more often than the timeout keeps it open past it.
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(400));
        echo(&mut socket)?;
    }
    // Silence closes it.
    let rest = read_until_closed(&mut socket)
        .with_context(|| format!("idle WebSocket still open\n{}", setup.gateway.stderr()))?;
    ensure!(rest.is_empty(), "{rest:?}");
    Ok(())
}

fn tcp_config(bind_port: u16, upstream: SocketAddr) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: raw, namespace: default}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: {bind_port}, name: tcp, protocol: TCP}}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: raw, namespace: default}}
spec:
  hosts: ["*"]
  gateways: [raw]
  tcp:
  - route:
    - destination: {{host: httpbin, port: {{number: 8000}}}}
---
{}"#,
        service_with_endpoint("httpbin", 8000, upstream)
    )
}

#[test]
fn an_idle_tcp_stream_is_closed_after_the_tcp_idle_timeout() -> anyhow::Result<()> {
    let setup = start_with(tcp_config, &["--tcp-idle-timeout", "1s"])?;
    // HTTP keep-alive through the TCP proxy: the upstream would hold it open forever.
    let mut stream = connect(setup.addr)?;
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(400));
        stream.write_all(b"GET /status/200 HTTP/1.1\r\nHost: raw\r\n\r\n")?;
        let head = read_response(&mut stream)?;
        ensure!(head.starts_with("HTTP/1.1 200"), "{head}");
    }
    let rest = read_until_closed(&mut stream)
        .with_context(|| format!("idle TCP stream still open\n{}", setup.gateway.stderr()))?;
    ensure!(rest.is_empty(), "{rest:?}");
    Ok(())
}

#[test]
fn the_drain_sends_an_open_websocket_a_close_frame() -> anyhow::Result<()> {
    let setup = start(&["--drain-timeout", "1s"])?;
    let mut socket = open_websocket(setup.addr)?;
    echo(&mut socket)?;
    let pid = libc::pid_t::try_from(setup.gateway.process.child.id())?;
    // SAFETY: kill(2) has no memory-safety preconditions; the pid is our unreaped child.
    ensure!(
        unsafe { libc::kill(pid, libc::SIGTERM) } == 0,
        "kill failed"
    );
    let rest = read_until_closed(&mut socket)?;
    // Close, status 1001 (going away), unmasked from the server.
    ensure!(
        rest == [0x88, 0x02, 0x03, 0xE9],
        "{rest:?}\n{}",
        setup.gateway.stderr()
    );
    Ok(())
}

#[test]
fn steering_headers_from_clients_do_not_reach_the_upstream() -> anyhow::Result<()> {
    let setup = start(&[])?;
    let url = format!("http://{}/headers", setup.addr);
    let mut args = vec!["-H", "Host: httpbin.example.com"];
    let sent = [
        "x-envoy-retry-on: 5xx",
        "x-envoy-max-retries: 100",
        "x-envoy-upstream-rq-timeout-ms: 1",
        "x-envoy-internal: true",
        "x-envoy-original-path: /admin",
        "x-envoy-decorator-operation: admin",
        "x-envoy-force-trace: 1",
        "x-request-id: chosen-by-the-client",
        "x-envoy-external-address: 10.0.0.1",
    ];
    for header in &sent {
        args.extend(["-H", header]);
    }
    args.push(&url);
    let response = curl(None, &args)?;
    ensure!(response.status == 200, "{response:?}");
    let echo = response.json()?;
    let headers = &echo["headers"];
    for header in &sent[..7] {
        let name = header.split(':').next().unwrap_or_default();
        ensure!(
            headers.get(name).is_none(),
            "{name} reached the upstream: {echo}"
        );
    }
    let id = headers["x-request-id"].as_str().unwrap_or_default();
    ensure!(id.len() == 36 && id != "chosen-by-the-client", "{echo}");
    ensure!(headers["x-envoy-external-address"] == "127.0.0.1", "{echo}");
    Ok(())
}

#[test]
fn upgrades_other_than_websocket_are_refused_with_403() -> anyhow::Result<()> {
    let setup = start(&[])?;
    let mut stream = connect(setup.addr)?;
    stream.write_all(
        b"GET /headers HTTP/1.1\r\nHost: httpbin.example.com\r\nUpgrade: foo\r\nConnection: Upgrade\r\n\r\nGET /status/202 HTTP/1.1\r\nHost: httpbin.example.com\r\n\r\n",
    )?;
    let answer = String::from_utf8_lossy(&read_until_closed(&mut stream)?).into_owned();
    ensure!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    // Envoy closes after a refused upgrade: what followed is never served.
    ensure!(answer.matches("HTTP/1.1").count() == 1, "{answer}");
    let (_, seen) = http_get(setup.upstream.addr, "/__requests")?;
    ensure!(
        !seen.contains("/headers") && !seen.contains("/status/202"),
        "{seen}"
    );
    let mut stream = connect(setup.addr)?;
    stream.write_all(
        b"GET /headers HTTP/1.1\r\nHost: httpbin.example.com\r\nUpgrade: TLS/1.2\r\nConnection: Upgrade\r\n\r\n",
    )?;
    let answer = String::from_utf8_lossy(&read_until_closed(&mut stream)?).into_owned();
    ensure!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    // Each refusal is counted, so an operator sees clients trying.
    let refused = setup.gateway.metric("gateway_upgrades_refused_total")?;
    ensure!(
        refused == Some(2.0),
        "gateway_upgrades_refused_total {refused:?}"
    );

    // h2c is not refused but not tunnelled either: served as a plain request.
    let h2c = curl(
        None,
        &[
            "--http2",
            "-H",
            "Host: httpbin.example.com",
            &format!("http://{}/headers", setup.addr),
        ],
    )?;
    ensure!(h2c.status == 200, "{h2c:?}");
    let echo = h2c.json()?;
    ensure!(echo["headers"].get("upgrade").is_none(), "{echo}");
    ensure!(echo["version"] == "HTTP/1.1", "{echo}");

    // WebSocket is allowed.
    open_websocket(setup.addr)?;
    let refused = setup.gateway.metric("gateway_upgrades_refused_total")?;
    ensure!(
        refused == Some(2.0),
        "h2c or WebSocket counted: {refused:?}"
    );
    Ok(())
}

fn admin_config(bind_port: u16, upstream: SocketAddr) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: site, namespace: default}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: {bind_port}, name: http, protocol: HTTP}}
    hosts: ["{HOST}"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: site, namespace: default}}
spec:
  hosts: ["{HOST}"]
  gateways: [site]
  http:
  - match: [{{uri: {{prefix: /admin}}}}]
    headers: {{request: {{set: {{x-route: admin}}}}}}
    route: [{{destination: {{host: httpbin, port: {{number: 8000}}}}}}]
  - match: [{{uri: {{prefix: /public}}}}]
    headers: {{request: {{set: {{x-route: public}}}}}}
    route: [{{destination: {{host: httpbin, port: {{number: 8000}}}}}}]
---
{}"#,
        service_with_endpoint("httpbin", 8000, upstream)
    )
}

#[test]
fn dot_segments_meet_the_route_of_the_path_they_resolve_to() -> anyhow::Result<()> {
    let setup = start_with(admin_config, &[])?;
    let get = |path: &str| {
        curl(
            None,
            &[
                "--path-as-is",
                "-H",
                "Host: httpbin.example.com",
                &format!("http://{}{path}", setup.addr),
            ],
        )
    };
    for path in [
        "/public/../admin",
        "/public/%2e%2e/admin",
        "/public/..;x=y/admin",
        "/public/./../%61dmin",
    ] {
        let response = get(path)?;
        ensure!(response.status == 200, "{path}: {response:?}");
        let echo = response.json()?;
        ensure!(echo["path"] == "/admin", "{path}: {echo}");
        ensure!(echo["headers"]["x-route"] == "admin", "{path}: {echo}");
    }
    // Escaped slashes and backslashes stay as sent (Istio's default), queries untouched.
    let kept = get("/public/a%2Fb/..%5Cc?q=/../x")?.json()?;
    ensure!(kept["path"] == "/public/a%2Fb/..%5Cc?q=/../x", "{kept}");
    ensure!(kept["headers"]["x-route"] == "public", "{kept}");
    let refused = get("/public/%zz")?;
    ensure!(refused.status == 400, "{refused:?}");
    // The access log shows the path as routed and forwarded, as Envoy logs `:path` once
    // it normalizes; one that cannot be normalized is logged as sent.
    let log = setup.gateway.access_log();
    ensure!(
        log.matches("\"GET /admin HTTP/1.1\" 200 ").count() == 4,
        "normalized paths not logged:\n{log}"
    );
    ensure!(!log.contains("/public/../admin"), "{log}");
    ensure!(log.contains("\"GET /public/%zz HTTP/1.1\" 400 "), "{log}");
    Ok(())
}

#[test]
fn slashes_are_merged_and_escaped_slashes_decoded_only_when_asked() -> anyhow::Result<()> {
    // (mode, path, the route it must meet or None for 404, the path the upstream gets)
    let cases: [(&str, &str, Option<&str>, &str); 6] = [
        ("base", "//admin//x", None, ""),
        (
            "base",
            "/public%2F..%2Fadmin",
            Some("public"),
            "/public%2F..%2Fadmin",
        ),
        ("merge-slashes", "//admin//x", Some("admin"), "/admin/x"),
        (
            "merge-slashes",
            "/public%2F..%2Fadmin",
            Some("public"),
            "/public%2F..%2Fadmin",
        ),
        (
            "decode-and-merge-slashes",
            "/public%2F..%2Fadmin",
            Some("admin"),
            "/admin",
        ),
        (
            "decode-and-merge-slashes",
            "/public%5C%5Cx",
            Some("public"),
            "/public/x",
        ),
    ];
    for mode in ["base", "merge-slashes", "decode-and-merge-slashes"] {
        let setup = start_with(admin_config, &["--path-normalization", mode])?;
        for (_, path, route, forwarded) in cases.iter().filter(|case| case.0 == mode) {
            let response = curl(
                None,
                &[
                    "--path-as-is",
                    "-H",
                    "Host: httpbin.example.com",
                    &format!("http://{}{path}", setup.addr),
                ],
            )?;
            match route {
                None => ensure!(response.status == 404, "{mode} {path}: {response:?}"),
                Some(route) => {
                    ensure!(response.status == 200, "{mode} {path}: {response:?}");
                    let echo = response.json()?;
                    ensure!(
                        echo["headers"]["x-route"] == *route,
                        "{mode} {path}: {echo}"
                    );
                    ensure!(echo["path"] == *forwarded, "{mode} {path}: {echo}");
                }
            }
        }
    }
    Ok(())
}

#[test]
fn the_largest_timeouts_istio_accepts_are_served_without_overflow() -> anyhow::Result<()> {
    // Routes: protobuf's largest Duration (10 000 years, what Istio accepts); flags: the
    // largest `u64` of seconds, past which `Instant + Duration` overflows, so every
    // deadline must saturate instead of panicking the worker.
    const HUGE: &str = "315576000000s";
    const LARGEST: &str = "18446744073709551615s";
    let config = |bind_port: u16, upstream: SocketAddr| {
        admin_config(bind_port, upstream).replace(
            "    route: [{destination: {host: httpbin, port: {number: 8000}}}]\n  - match: [{uri: {prefix: /public}}]",
            &format!(
                "    timeout: {HUGE}\n    retries: {{attempts: 2, perTryTimeout: {HUGE}}}\n    route: [{{destination: {{host: httpbin, port: {{number: 8000}}}}}}]\n  - match: [{{uri: {{prefix: /public}}}}]"
            ),
        )
    };
    let flags = [
        "--header-read-timeout",
        "--idle-timeout",
        "--stream-idle-timeout",
        "--tcp-idle-timeout",
        "--drain-timeout",
        "--proxy-protocol-timeout",
    ];
    let mut args = Vec::new();
    for flag in flags {
        args.extend([flag, LARGEST]);
    }
    let setup = start_with(config, &args)?;
    ensure!(
        std::fs::read_to_string(setup.dir.path().join("config.yaml"))?.contains(HUGE),
        "the route timeout was not written into the config"
    );
    for _ in 0..2 {
        let response = curl(
            None,
            &[
                "-d",
                "body",
                "-H",
                "Host: httpbin.example.com",
                &format!("http://{}/admin/x", setup.addr),
            ],
        )
        .map_err(|e| anyhow::anyhow!("{e}; gatewayd:\n{}", setup.gateway.stderr()))?;
        ensure!(response.status == 200, "{response:?}");
        ensure!(response.json()?["headers"]["x-route"] == "admin");
    }
    Ok(())
}

/// `httpbin_config` plus a second listener on `extra_port` serving the same routes.
fn two_listeners(bind_port: u16, upstream: SocketAddr, extra_port: u16) -> String {
    format!(
        r#"{}---
apiVersion: networking.istio.io/v1alpha3
kind: Gateway
metadata: {{name: extra, namespace: default}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: {extra_port}, name: http-extra, protocol: HTTP}}
    hosts: ["{HOST}"]
---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {{name: extra, namespace: default}}
spec:
  hosts: ["{HOST}"]
  gateways: [extra]
  http:
  - route: [{{destination: {{host: httpbin, port: {{number: 8000}}}}}}]
"#,
        httpbin_config(bind_port, upstream)
    )
}

#[test]
fn a_listener_removed_by_a_reload_closes_its_websockets_after_the_drain_timeout()
-> anyhow::Result<()> {
    let extra_port = free_port();
    let setup = start_with(
        |bind_port, upstream| two_listeners(bind_port, upstream, extra_port),
        &["--drain-timeout", "1s"],
    )?;
    let mut socket = open_websocket(SocketAddr::from(([127, 0, 0, 1], extra_port)))?;
    echo(&mut socket)?;
    reload(
        &setup,
        &httpbin_config(setup.addr.port(), setup.upstream.addr),
    )?;
    // Open until the drain timeout, then told to go away rather than left forever.
    let rest = read_until_closed(&mut socket).with_context(|| {
        format!(
            "WebSocket of a removed listener still open\n{}",
            setup.gateway.stderr()
        )
    })?;
    ensure!(rest == [0x88, 0x02, 0x03, 0xE9], "{rest:?}");
    Ok(())
}

/// Rewrites the configuration and waits for the gateway to apply it.
fn reload(setup: &Setup, config: &str) -> anyhow::Result<()> {
    let reloads = |gateway: &Gateway| -> anyhow::Result<f64> {
        Ok(gateway
            .metric("gateway_config_reloads_total{result=\"success\"}")?
            .unwrap_or(0.0))
    };
    let before = reloads(&setup.gateway)?;
    std::fs::write(setup.dir.path().join("config.yaml"), config)?;
    let deadline = std::time::Instant::now() + PATIENCE;
    while reloads(&setup.gateway)? <= before {
        ensure!(
            std::time::Instant::now() < deadline,
            "no reload\n{}",
            setup.gateway.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

#[test]
fn a_listener_removed_by_a_reload_closes_its_tcp_streams_after_the_drain_timeout()
-> anyhow::Result<()> {
    let tcp_port = free_port();
    let with_tcp = |bind_port: u16, upstream: SocketAddr| {
        format!(
            "{}{}",
            httpbin_config(bind_port, upstream),
            tcp_config(tcp_port, upstream)
                .split("---\napiVersion: v1\nkind: Service")
                .next()
                .unwrap_or_default()
        )
    };
    let setup = start_with(with_tcp, &["--drain-timeout", "1s"])?;
    let mut stream = connect(SocketAddr::from(([127, 0, 0, 1], tcp_port)))?;
    stream.write_all(b"GET /status/200 HTTP/1.1\r\nHost: raw\r\n\r\n")?;
    let head = read_response(&mut stream)?;
    ensure!(head.starts_with("HTTP/1.1 200"), "{head}");
    reload(
        &setup,
        &httpbin_config(setup.addr.port(), setup.upstream.addr),
    )?;
    // Idle far below --tcp-idle-timeout (1 h): only the drain can close it.
    let rest = read_until_closed(&mut stream).with_context(|| {
        format!(
            "TCP stream of a removed listener still open\n{}",
            setup.gateway.stderr()
        )
    })?;
    ensure!(rest.is_empty(), "{rest:?}");
    Ok(())
}
