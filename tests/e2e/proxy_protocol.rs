//! PROXY protocol listeners end to end: HAProxy (`send-proxy`, `send-proxy-v2`) in TCP
//! mode as the real load balancer in front of gatewayd, curl as the client from its own
//! 127/8 address, HAProxy connecting from another, so the upstream and the access log
//! show whose address the gateway took.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::Context as _;
use gateway_tests::{Gateway, Process, TempDir, Upstream, curl, free_port, service_with_endpoint};

use crate::tls::{Key, Pki, tls_secret};

/// The client curl connects from, and the balancer's own address toward the gateway.
const CLIENT: &str = "127.0.0.5";
const BALANCER: &str = "127.0.0.9";

/// An HTTP server (port 80, bound to `http_port`) and an HTTPS one (443 → `https_port`)
/// for `web.example.com`, routed to the demo upstream; our Service carries `annotations`.
fn config(http_port: u16, https_port: u16, upstream: SocketAddr, annotations: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Service
metadata:
  name: istio-ingressgateway
  namespace: istio-system
  annotations: {annotations}
spec:
  selector: {{istio: ingressgateway}}
  ports:
  - {{name: http2, port: 80, targetPort: {http_port}}}
  - {{name: https, port: 443, targetPort: {https_port}}}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: web, namespace: default}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 80, name: http, protocol: HTTP}}
    hosts: ["web.example.com"]
  - port: {{number: 443, name: https, protocol: HTTPS}}
    hosts: ["web.example.com"]
    tls: {{mode: SIMPLE, credentialName: web-cred}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: web, namespace: default}}
spec:
  hosts: ["web.example.com"]
  gateways: [web]
  http:
  - route: [{{destination: {{host: httpbin, port: {{number: 8000}}}}}}]
---
{}"#,
        service_with_endpoint("httpbin", 8000, upstream)
    )
}

/// HAProxy in TCP mode: `(listen port, gateway port, server option)` per frontend; it
/// connects to the gateway from `BALANCER`.
fn start_haproxy(dir: &TempDir, frontends: &[(u16, u16, &str)]) -> anyhow::Result<Process> {
    let mut conf = String::from(
        "global\n  maxconn 100\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n",
    );
    for (i, (listen, gateway, option)) in frontends.iter().enumerate() {
        conf += &format!(
            "listen lb{i}\n  bind 127.0.0.1:{listen}\n  server gw 127.0.0.1:{gateway} {option} source {BALANCER}\n"
        );
    }
    let path = dir.write("haproxy.cfg", &conf)?;
    let check = Command::new(haproxy())
        .arg("-c")
        .arg("-f")
        .arg(&path)
        .output()?;
    anyhow::ensure!(
        check.status.success(),
        "haproxy refused its config: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    let child = Command::new(haproxy())
        .args(["-db", "-f"])
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting haproxy (cargo xtask setup installs it)")?;
    let process = Process { child };
    for (listen, _, _) in frontends {
        wait_listening(SocketAddr::from(([127, 0, 0, 1], *listen)))?;
    }
    Ok(process)
}

fn haproxy() -> &'static Path {
    Path::new("/usr/sbin/haproxy")
}

fn wait_listening(addr: SocketAddr) -> anyhow::Result<()> {
    for _ in 0..100 {
        if TcpStream::connect(addr).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    anyhow::bail!("nothing listens on {addr}")
}

/// The headers the demo upstream saw, asked for through `url` from `CLIENT`.
fn upstream_headers(url: &str, extra: &[&str]) -> anyhow::Result<serde_json::Value> {
    let mut args = vec!["--interface", CLIENT];
    args.extend_from_slice(extra);
    args.push(url);
    let response = curl(None, &args)?;
    anyhow::ensure!(response.status == 200, "{response:?}");
    Ok(response.json()?["headers"].clone())
}

#[test]
fn haproxy_v1_and_v2_pass_the_client_address_over_http_and_https() -> anyhow::Result<()> {
    let dir = TempDir::new("proxy-protocol")?;
    let pki = Pki::new(dir.path(), "pp-ca")?;
    let (crt, key) = pki.issue(
        "web",
        "web.example.com",
        "DNS:web.example.com",
        Key::EcP256Pkcs8,
        false,
    )?;
    let upstream = Upstream::start(None, "127.0.0.1:0", "httpbin")?;
    let (http_port, https_port) = (free_port(), free_port());
    // Istio's way: the gateway's proxy config asks for the PROXY protocol on every
    // listener.
    let annotations = r#"{"proxy.istio.io/config": "gatewayTopology: {proxyProtocol: {}}"}"#;
    let mut yaml = config(http_port, https_port, upstream.addr, annotations);
    yaml += &tls_secret("web-cred", "istio-system", &crt, &key, None);
    dir.write("config.yaml", &yaml)?;
    let gateway = Gateway::start(dir.path(), &["--ebpf", "off"], None, &dir)?;
    let (v1, v2, tls_v2) = (free_port(), free_port(), free_port());
    let _haproxy = start_haproxy(
        &dir,
        &[
            (v1, http_port, "send-proxy"),
            (v2, http_port, "send-proxy-v2"),
            (tls_v2, https_port, "send-proxy-v2"),
        ],
    )?;

    for (version, port) in [("v1", v1), ("v2", v2)] {
        let seen = upstream_headers(
            &format!("http://127.0.0.1:{port}/headers"),
            &["-H", "Host: web.example.com"],
        )?;
        // The client's address, not the balancer's, as if it had connected directly.
        assert_eq!(seen["x-forwarded-for"], CLIENT, "{version}: {seen}");
        assert_eq!(
            seen["x-envoy-external-address"], CLIENT,
            "{version}: {seen}"
        );
    }
    let ca = dir.path().join("pp-ca.crt");
    let seen = upstream_headers(
        &format!("https://web.example.com:{tls_v2}/headers"),
        &[
            "--cacert",
            ca.to_str().context("path")?,
            "--resolve",
            &format!("web.example.com:{tls_v2}:127.0.0.1"),
        ],
    )?;
    assert_eq!(seen["x-forwarded-for"], CLIENT, "https: {seen}");
    assert_eq!(seen["x-forwarded-proto"], "https", "https: {seen}");

    let log = gateway.access_log();
    let requests: Vec<&str> = log.lines().filter(|l| l.contains("/headers")).collect();
    assert_eq!(requests.len(), 3, "{log}");
    for line in requests {
        assert!(line.contains(CLIENT), "{line}");
        assert!(!line.contains(BALANCER), "{line}");
    }
    Ok(())
}

#[test]
fn a_connection_without_a_valid_header_is_closed_unanswered() -> anyhow::Result<()> {
    let dir = TempDir::new("proxy-protocol-missing")?;
    let upstream = Upstream::start(None, "127.0.0.1:0", "httpbin")?;
    let (http_port, https_port) = (free_port(), free_port());
    dir.write(
        "config.yaml",
        &config(http_port, https_port, upstream.addr, "{}"),
    )?;
    // The flag's way, for the HTTP port only (Gateway port numbers).
    let gateway = Gateway::start(
        dir.path(),
        &[
            "--ebpf",
            "off",
            "--proxy-protocol",
            "80",
            "--proxy-protocol-timeout",
            "1s",
        ],
        None,
        &dir,
    )?;
    let gateway_addr = SocketAddr::from(([127, 0, 0, 1], http_port));
    let answer = |send: &[u8]| -> anyhow::Result<Vec<u8>> {
        let mut stream = TcpStream::connect(gateway_addr)?;
        stream.set_read_timeout(Some(Duration::from_secs(20)))?;
        stream.write_all(send)?;
        let mut answer = Vec::new();
        match stream.read_to_end(&mut answer) {
            Ok(_) => Ok(answer),
            // Closed with our request unread: the kernel resets instead of a FIN.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Ok(answer),
            Err(e) => Err(e).context("the gateway did not close the connection"),
        }
    };
    let request = b"GET /headers HTTP/1.1\r\nHost: web.example.com\r\nConnection: close\r\n\r\n";
    // A client that skipped the balancer: no answer, the connection closed.
    assert_eq!(answer(request)?, b"", "a request without a header");
    // A header the spec refuses (a v1 line with a UDP protocol).
    let bad = [&b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n"[..], request].concat();
    assert_eq!(answer(&bad)?, b"", "a malformed header");
    // Silence: closed at --proxy-protocol-timeout rather than held.
    assert_eq!(answer(b"")?, b"", "no header at all");
    // A header then the request: answered, for the header's client.
    let good = [
        &b"PROXY TCP4 198.51.100.20 127.0.0.1 40000 80\r\n"[..],
        request,
    ]
    .concat();
    let answered = String::from_utf8(answer(&good)?)?;
    assert!(answered.starts_with("HTTP/1.1 200"), "{answered}");
    assert!(answered.contains("198.51.100.20"), "{answered}");
    let errors = gateway
        .metric(&format!(
            "gateway_downstream_cx_proxy_proto_error_total{{port=\"{http_port}\"}}"
        ))?
        .unwrap_or(0.0);
    assert_eq!(errors, 3.0);
    Ok(())
}
