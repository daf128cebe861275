//! The walking skeleton: routing, 503, the XDP counter on a veth pair, eBPF fallback, validate.

use std::process::Command;

use gateway_tests::{
    Gateway, NetnsPair, TempDir, Upstream, curl, free_port, gatewayd_bin, httpbin_config,
    skip_unless_root,
};

const HOST: &str = "Host: httpbin.example.com";

/// One GET on a kept-alive connection; the demo upstream's JSON echo.
fn keep_alive_get(
    client: &mut std::net::TcpStream,
    path: &str,
) -> anyhow::Result<serde_json::Value> {
    use std::io::{BufRead as _, BufReader, Read as _, Write as _};
    write!(client, "GET {path} HTTP/1.1\r\n{HOST}\r\n\r\n")?;
    let mut reader = BufReader::new(client);
    let mut content_length = 0;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            content_length = value.trim().parse()?;
        }
    }
    let mut body = vec![0; content_length];
    reader.read_exact(&mut body)?;
    Ok(serde_json::from_slice(&body)?)
}

/// Userspace only (`--ebpf off`), so it runs anywhere.
#[test]
fn routes_by_host_and_prefix_to_the_upstream() -> anyhow::Result<()> {
    let upstream = Upstream::start(None, "127.0.0.1:0", "httpbin")?;
    let dir = TempDir::new("routing")?;
    let bind_port = free_port();
    dir.write("config.yaml", &httpbin_config(bind_port, upstream.addr))?;
    let gateway = Gateway::start(dir.path(), &["--ebpf", "off"], None, &dir)?;
    let base = format!("http://127.0.0.1:{bind_port}");

    // Routed: the upstream sees the path and Host as sent and the forwarding headers.
    let routed = curl(None, &["-H", HOST, &format!("{base}/status/200?probe=1")])?;
    assert_eq!(routed.status, 200, "{routed:?}\n{}", gateway.stderr());
    let echo = routed.json()?;
    assert_eq!(echo["path"], "/status/200?probe=1");
    // Istio's gateway names itself and says how long the upstream took.
    let head = routed.head.to_ascii_lowercase();
    assert!(head.contains("\r\nserver: istio-envoy"), "{}", routed.head);
    let service_time = head
        .lines()
        .find_map(|l| l.strip_prefix("x-envoy-upstream-service-time: "))
        .map(|v| v.trim().parse::<u64>());
    assert!(matches!(service_time, Some(Ok(_))), "{}", routed.head);
    assert_eq!(echo["host"], "httpbin.example.com");
    assert_eq!(echo["headers"]["x-forwarded-for"], "127.0.0.1");
    assert_eq!(echo["headers"]["x-forwarded-proto"], "http");
    assert_eq!(echo["headers"]["x-envoy-external-address"], "127.0.0.1");
    assert_eq!(
        echo["headers"]["x-request-id"].as_str().map(str::len),
        Some(36)
    );

    // The upstream's status passes through; an existing X-Forwarded-For is appended to.
    let teapot = curl(
        None,
        &[
            "-H",
            HOST,
            "-H",
            "X-Forwarded-For: 203.0.113.9",
            &format!("{base}/status/418"),
        ],
    )?;
    assert_eq!(teapot.status, 418);
    assert_eq!(
        teapot.json()?["headers"]["x-forwarded-for"],
        "203.0.113.9,127.0.0.1"
    );

    // Keep-alive upstream: two requests on one client connection (so on one worker
    // thread, whose pool it is) reach the upstream over one pooled connection.
    let mut client = std::net::TcpStream::connect(("127.0.0.1", bind_port))?;
    let first = keep_alive_get(&mut client, "/headers")?;
    let second = keep_alive_get(&mut client, "/headers")?;
    assert_eq!(
        first["client"], second["client"],
        "upstream connection reused"
    );

    // HTTP/2 with prior knowledge on the same plaintext port.
    let h2 = curl(
        None,
        &[
            "--http2-prior-knowledge",
            "-H",
            HOST,
            &format!("{base}/status/201"),
        ],
    )?;
    assert_eq!(h2.status, 201);
    assert!(h2.head.starts_with("HTTP/2"), "{}", h2.head);

    // Unrouted path and unknown host: Envoy's 404 with an empty body.
    let unrouted = curl(None, &["-H", HOST, &format!("{base}/nothing-here")])?;
    assert_eq!((unrouted.status, unrouted.body.as_str()), (404, ""));
    assert!(
        unrouted
            .head
            .to_ascii_lowercase()
            .contains("\r\nserver: istio-envoy"),
        "{}",
        unrouted.head
    );
    let unknown = curl(
        None,
        &[
            "-H",
            "Host: unknown.example.com",
            &format!("{base}/status/200"),
        ],
    )?;
    assert_eq!((unknown.status, unknown.body.as_str()), (404, ""));

    // What operators see: access log lines and Istio's request metric.
    let log = gateway.access_log();
    assert!(
        log.contains("\"GET /status/200?probe=1 HTTP/1.1\" 200 - "),
        "{log}"
    );
    assert!(
        log.contains("\"GET /nothing-here HTTP/1.1\" 404 NR "),
        "{log}"
    );
    let not_routed = gateway.metric(
        "istio_requests_total{response_code=\"404\",response_flags=\"NR\",request_protocol=\"http\",destination_service=\"unknown\",destination_service_name=\"unknown\",destination_service_namespace=\"unknown\"}",
    )?;
    assert_eq!(not_routed, Some(2.0));
    Ok(())
}

#[test]
fn destinations_without_endpoints_answer_503() -> anyhow::Result<()> {
    let dir = TempDir::new("no-endpoints")?;
    let bind_port = free_port();
    // An endpoint that is not ready is not an endpoint.
    let config = httpbin_config(bind_port, "127.0.0.1:9".parse()?).replace(
        "- addresses: [\"127.0.0.1\"]",
        "- addresses: [\"127.0.0.1\"]\n  conditions: {ready: false}",
    );
    dir.write("config.yaml", &config)?;
    let gateway = Gateway::start(dir.path(), &["--ebpf", "off"], None, &dir)?;
    let response = curl(
        None,
        &[
            "-H",
            HOST,
            &format!("http://127.0.0.1:{bind_port}/status/200"),
        ],
    )?;
    assert_eq!(response.status, 503);
    assert_eq!(response.body, "no healthy upstream");
    assert!(
        gateway.access_log().contains(" 503 UH "),
        "{}",
        gateway.access_log()
    );
    Ok(())
}

/// The XDP program on the gateway's veth counts the request's packets on the gateway
/// port; the upstream sees the client namespace's address; after `kill -9` nothing is
/// left attached.
#[test]
fn xdp_counts_gateway_port_packets_on_a_veth_pair() -> anyhow::Result<()> {
    if skip_unless_root("creates network namespaces and attaches XDP") {
        return Ok(());
    }
    let net = NetnsPair::new("kern")?;
    let upstream = Upstream::start(Some(&net.gateway_ns), "127.0.0.1:0", "httpbin")?;
    let dir = TempDir::new("xdp")?;
    let bind_port = free_port();
    dir.write("config.yaml", &httpbin_config(bind_port, upstream.addr))?;
    let mut gateway = Gateway::start(
        dir.path(),
        &["--ebpf", "on", "--interface", &net.gateway_if],
        Some(&net.gateway_ns),
        &dir,
    )?;
    assert!(
        net.gateway_link()?.contains("prog/xdp"),
        "XDP attached: {}",
        net.gateway_link()?
    );
    let sample = format!("gateway_kernel_port_packets_total{{port=\"{bind_port}\"}}");
    assert_eq!(
        gateway.metric(&sample)?,
        Some(0.0),
        "nothing counted before traffic"
    );

    let url = format!("http://{}:{bind_port}/status/200", net.gateway_ip);
    let response = curl(Some(&net.client_ns), &["-H", HOST, &url])?;
    assert_eq!(response.status, 200, "{}", gateway.stderr());
    assert_eq!(
        response.json()?["headers"]["x-forwarded-for"],
        net.client_ip.as_str()
    );

    // SYN, ACK, request, ACKs and FIN at least: every client→gateway packet of the flow.
    let counted = gateway.metric(&sample)?.unwrap_or(0.0);
    assert!(
        counted >= 4.0,
        "kernel counted {counted} packets on port {bind_port}"
    );
    let attached = gateway.metric(&format!(
        "gateway_ebpf_attached{{interface=\"{}\"}}",
        net.gateway_if
    ))?;
    assert_eq!(attached, Some(1.0));

    // A crashed daemon leaves nothing behind: the link dies with the process.
    gateway.process.child.kill()?;
    gateway.process.child.wait()?;
    let link = net.gateway_link()?;
    assert!(
        !link.contains("prog/xdp"),
        "XDP still attached after kill -9: {link}"
    );
    Ok(())
}

/// `--ebpf auto` serves from userspace when the kernel path cannot be had, and says so in
/// a metric; `--ebpf on` refuses to start instead.
#[test]
fn ebpf_auto_falls_back_and_on_fails() -> anyhow::Result<()> {
    let upstream = Upstream::start(None, "127.0.0.1:0", "httpbin")?;
    let dir = TempDir::new("fallback")?;
    let bind_port = free_port();
    dir.write("config.yaml", &httpbin_config(bind_port, upstream.addr))?;
    let missing = ["--interface", "no-such-if0"];

    let gateway = Gateway::start(
        dir.path(),
        &[&["--ebpf", "auto"][..], &missing[..]].concat(),
        None,
        &dir,
    )?;
    assert_eq!(gateway.metric("gateway_ebpf_fallbacks_total")?, Some(1.0));
    assert!(
        gateway.stderr().contains("serving from userspace only"),
        "{}",
        gateway.stderr()
    );
    let response = curl(
        None,
        &[
            "-H",
            HOST,
            &format!("http://127.0.0.1:{bind_port}/status/200"),
        ],
    )?;
    assert_eq!(response.status, 200);
    drop(gateway);

    let out = Command::new(gatewayd_bin())
        .args([
            "run",
            "--ebpf",
            "on",
            "--interface",
            "no-such-if0",
            "--config",
        ])
        .arg(dir.path())
        .args(["--readiness-addr", &format!("127.0.0.1:{}", free_port())])
        .args(["--metrics-addr", &format!("127.0.0.1:{}", free_port())])
        .args(["--admin-addr", &format!("127.0.0.1:{}", free_port())])
        .output()?;
    assert!(
        !out.status.success(),
        "--ebpf on must fail without a kernel path"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--ebpf on"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[test]
fn validate_points_at_file_line_and_field() -> anyhow::Result<()> {
    let dir = TempDir::new("validate")?;
    let good = dir.write(
        "good.yaml",
        &httpbin_config(8080, "127.0.0.1:18000".parse()?),
    )?;
    let out = Command::new(gatewayd_bin())
        .args(["validate", "--config"])
        .arg(&good)
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("0 error(s), 0 warning(s)"));

    let broken = httpbin_config(8080, "127.0.0.1:18000".parse()?)
        .replace("{number: 8000}", "{number: http}");
    let bad = dir.write("broken.yaml", &broken)?;
    let line = broken
        .lines()
        .position(|l| l.contains("{number: http}"))
        .map(|i| i + 1)
        .unwrap_or_default();
    let out = Command::new(gatewayd_bin())
        .args(["validate", "--config"])
        .arg(&bad)
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let want = format!(
        "error: {}:{line}: VirtualService default/httpbin: spec.http[0].route[0].destination.port.number:",
        bad.display()
    );
    assert!(stdout.contains(&want), "expected {want:?} in:\n{stdout}");

    // Warnings alone still validate.
    let dangling = httpbin_config(8080, "127.0.0.1:18000".parse()?)
        .replace("host: httpbin,", "host: nowhere,");
    let warn = dir.write("warn.yaml", &dangling)?;
    let out = Command::new(gatewayd_bin())
        .args(["validate", "--config"])
        .arg(&warn)
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("warning:") && stdout.contains("no Service default/nowhere"),
        "{stdout}"
    );
    Ok(())
}
