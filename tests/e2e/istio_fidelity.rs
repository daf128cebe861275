//! Istio resources behave as they do with Istio's ingress gateway (issue 14): one test
//! per behaviour, with the VirtualService a user would write, the real gatewayd, real
//! upstreams and curl.

use std::{
    collections::HashMap,
    io::{Read, Write},
    net::{SocketAddr, TcpListener},
    process::Command,
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use gateway_tests::{
    CurlResponse, Gateway, TempDir, Upstream, curl, free_port, gatewayd_bin,
    status_upstream::StatusUpstream,
};

/// Port 80 for every host, the Gateway `istio-system/gw`'s default servers.
pub(crate) const HTTP_SERVER: &str =
    "  - port: {number: 80, name: http, protocol: HTTP}\n    hosts: [\"*/*\"]\n";

pub(crate) struct Setup {
    _gateway: Gateway,
    pub(crate) dir: TempDir,
    pub(crate) http: String,
    tls_port: u16,
}

/// gatewayd with the Gateway `istio-system/gw` (`servers`), its own Service mapping 80
/// and 443 to free ports, and `extra` documents.
pub(crate) fn start(label: &str, servers: &str, extra: &str) -> anyhow::Result<Setup> {
    let dir = TempDir::new(label)?;
    let (http_port, tls_port) = (free_port(), free_port());
    let config = format!(
        r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: gw, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
{servers}---
apiVersion: v1
kind: Service
metadata: {{name: istio-ingressgateway, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  ports:
  - {{name: http2, port: 80, targetPort: {http_port}}}
  - {{name: tls, port: 443, targetPort: {tls_port}}}
{extra}"#
    );
    dir.write("config.yaml", &config)?;
    let gateway = Gateway::start(dir.path(), &["--ebpf", "off"], None, &dir)?;
    Ok(Setup {
        _gateway: gateway,
        dir,
        http: format!("http://127.0.0.1:{http_port}"),
        tls_port,
    })
}

impl Setup {
    pub(crate) fn get(
        &self,
        host: &str,
        path: &str,
        extra: &[&str],
    ) -> anyhow::Result<CurlResponse> {
        let host = format!("Host: {host}");
        let url = format!("{}{path}", self.http);
        let mut args = vec!["-H", host.as_str()];
        args.extend_from_slice(extra);
        args.push(&url);
        curl(None, &args)
    }

    /// The body of a 200 answer.
    pub(crate) fn body(&self, host: &str, path: &str, extra: &[&str]) -> anyhow::Result<String> {
        let answer = self.get(host, path, extra)?;
        anyhow::ensure!(answer.status == 200, "{host}{path} {extra:?}: {answer:?}");
        Ok(answer.body)
    }
}

/// A VirtualService; `meta` goes into its metadata after the name.
pub(crate) fn virtual_service(name: &str, namespace: &str, meta: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {name}, namespace: {namespace}{meta}}}\nspec:\n{spec}"
    )
}

/// A route that answers 200 with `body`.
pub(crate) fn answer(body: &str) -> String {
    format!("directResponse: {{status: 200, body: {{string: {body}}}}}")
}

/// Service `name` in `namespace`, port `port`, its one endpoint `endpoint`.
pub(crate) fn service(namespace: &str, name: &str, port: u16, endpoint: SocketAddr) -> String {
    format!(
        r#"---
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  ports: [{{name: http, port: {port}, targetPort: {target}}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: {name}-1, namespace: {namespace}, labels: {{kubernetes.io/service-name: {name}}}}}
addressType: IPv4
ports: [{{name: http, port: {target}}}]
endpoints:
- addresses: ["{ip}"]
"#,
        target = endpoint.port(),
        ip = endpoint.ip(),
    )
}

#[test]
fn presence_matches_select_by_presence() -> anyhow::Result<()> {
    let routes = format!(
        r#"  hosts: [p.example.com]
  gateways: [istio-system/gw]
  http:
  - match: [{{headers: {{x-canary: {{}}}}}}]
    {}
  - match: [{{queryParams: {{debug: {{}}}}}}]
    {}
  - match: [{{uri: {{prefix: /open}}, withoutHeaders: {{authorization: {{}}}}}}]
    {}
  - {}
"#,
        answer("canary"),
        answer("debug"),
        answer("anonymous"),
        answer("rest")
    );
    let setup = start(
        "istio-presence",
        HTTP_SERVER,
        &virtual_service("vs", "default", "", &routes),
    )?;
    // `validate` accepts what Istio accepts.
    let out = Command::new(gatewayd_bin())
        .args(["validate", "--config"])
        .arg(setup.dir.path())
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let host = "p.example.com";
    assert_eq!(setup.body(host, "/", &["-H", "x-canary: yes"])?, "canary");
    assert_eq!(setup.body(host, "/?debug", &[])?, "debug");
    assert_eq!(setup.body(host, "/?a=1&debug=", &[])?, "debug");
    assert_eq!(setup.body(host, "/open", &[])?, "anonymous");
    assert_eq!(
        setup.body(host, "/open", &["-H", "authorization: Bearer x"])?,
        "rest"
    );
    assert_eq!(setup.body(host, "/", &[])?, "rest");
    Ok(())
}

#[test]
fn gateway_references_bind_in_every_form_istio_resolves() -> anyhow::Result<()> {
    let bound = |name: &str, namespace: &str, reference: &str| {
        virtual_service(
            name,
            namespace,
            "",
            &format!(
                "  hosts: [{name}.example.com]\n  gateways: [\"{reference}\"]\n  http: [{{{}}}]\n",
                answer(name)
            ),
        )
    };
    let extra = [
        bound("short", "istio-system", "gw"),
        bound("dot", "istio-system", "./gw"),
        bound("slash", "apps", "istio-system/gw"),
        bound("fqdn", "apps", "gw.istio-system.svc.cluster.local"),
        bound("legacy", "apps", "gw.istio-system"),
    ]
    .concat();
    let setup = start("istio-gateway-refs", HTTP_SERVER, &extra)?;
    for name in ["short", "dot", "slash", "fqdn", "legacy"] {
        assert_eq!(
            setup.body(&format!("{name}.example.com"), "/", &[])?,
            name,
            "{name}"
        );
    }
    Ok(())
}

#[test]
fn short_virtual_service_hosts_are_the_full_service_name() -> anyhow::Result<()> {
    let spec = format!(
        "  hosts: [web]\n  gateways: [istio-system/gw]\n  http: [{{{}}}]\n",
        answer("web")
    );
    let setup = start(
        "istio-short-hosts",
        HTTP_SERVER,
        &virtual_service("vs", "shop", "", &spec),
    )?;
    assert_eq!(setup.body("web.shop.svc.cluster.local", "/", &[])?, "web");
    assert_eq!(setup.get("web", "/", &[])?.status, 404);
    Ok(())
}

#[test]
fn delegate_virtual_services_serve_under_their_root() -> anyhow::Result<()> {
    let backend = Upstream::start(None, "127.0.0.1:0", "team-backend")?;
    let root = format!(
        r#"  hosts: [d.example.com]
  gateways: [gw]
  http:
  - match: [{{uri: {{prefix: /anything}}}}]
    delegate: {{name: api, namespace: team}}
    headers: {{response: {{set: {{x-root: "yes"}}}}}}
  - {}
"#,
        answer("rest")
    );
    // The delegate's short destination host is a Service in its own namespace.
    let delegate = format!(
        r#"  http:
  - match: [{{uri: {{prefix: /anything/v1}}}}]
    route: [{{destination: {{host: backend, port: {{number: 8000}}}}}}]
  - match: [{{uri: {{prefix: /elsewhere}}}}]
    {}
  - {}
"#,
        answer("conflict"),
        answer("fallback")
    );
    let extra = virtual_service("root", "istio-system", "", &root)
        + &virtual_service("api", "team", "", &delegate)
        + &service("team", "backend", 8000, backend.addr);
    let setup = start("istio-delegate", HTTP_SERVER, &extra)?;
    let host = "d.example.com";
    let v1 = setup.get(host, "/anything/v1/x", &[])?;
    assert_eq!(v1.answered_by(), "team-backend", "{v1:?}");
    // The root's header policy, which the delegate route does not set itself.
    assert_eq!(v1.header("x-root"), Some("yes"), "{v1:?}");
    let fallback = setup.get(host, "/anything/v2", &[])?;
    assert_eq!(fallback.body, "fallback");
    assert_eq!(fallback.header("x-root"), Some("yes"));
    // A delegate route outside the root's match is dropped.
    assert_eq!(setup.body(host, "/elsewhere", &[])?, "rest");
    Ok(())
}

#[test]
fn matches_for_other_proxies_are_dropped_not_widened() -> anyhow::Result<()> {
    let spec = format!(
        r#"  hosts: [m.example.com]
  gateways: [istio-system/gw, mesh]
  http:
  - match: [{{gateways: [mesh]}}]
    {}
  - match: [{{sourceLabels: {{app: reviews}}}}]
    {}
  - match: [{{sourceNamespace: bookinfo, uri: {{prefix: /}}}}]
    {}
  - match: [{{gateways: [mesh], uri: {{prefix: /}}}}, {{gateways: [istio-system/gw], uri: {{prefix: /gw}}}}]
    {}
  - {}
"#,
        answer("mesh"),
        answer("reviews"),
        answer("bookinfo"),
        answer("gateway-only"),
        answer("rest")
    );
    let setup = start(
        "istio-dropped-matches",
        HTTP_SERVER,
        &virtual_service("vs", "default", "", &spec),
    )?;
    assert_eq!(setup.body("m.example.com", "/", &[])?, "rest");
    assert_eq!(setup.body("m.example.com", "/gw", &[])?, "gateway-only");
    Ok(())
}

/// An upstream that answers `/.../grpc/N` with HTTP 200 and `grpc-status: N` in the
/// headers (a trailers-only gRPC answer), anything else with 503, and counts requests by
/// path.
struct GrpcStatusUpstream {
    addr: SocketAddr,
    seen: Arc<Mutex<HashMap<String, usize>>>,
}

impl GrpcStatusUpstream {
    fn start() -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let seen: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let counts = Arc::clone(&seen);
        thread::spawn(move || {
            for mut stream in listener.incoming().flatten() {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap_or(0) == 1 {
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                let path = head.split_whitespace().nth(1).unwrap_or("").to_owned();
                *counts
                    .lock()
                    .expect("counts")
                    .entry(path.clone())
                    .or_default() += 1;
                let reply = match path.rsplit_once("/grpc/") {
                    Some((_, code)) => format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/grpc\r\ngrpc-status: {code}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                    ),
                    None => "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_owned(),
                };
                let _ = stream.write_all(reply.as_bytes());
            }
        });
        Ok(GrpcStatusUpstream { addr, seen })
    }

    fn tries(&self, path: &str) -> usize {
        self.seen
            .lock()
            .expect("counts")
            .get(path)
            .copied()
            .unwrap_or(0)
    }
}

/// Routes on `r.example.com` to the gRPC status upstream: `/default` with Istio's
/// default policy, `/attempts` with `attempts: 1` only, `/internal` retrying `internal`.
fn retry_setup(label: &str) -> anyhow::Result<(Setup, GrpcStatusUpstream)> {
    let upstream = GrpcStatusUpstream::start()?;
    let spec = r#"  hosts: [r.example.com]
  gateways: [istio-system/gw]
  http:
  - match: [{uri: {prefix: /attempts}}]
    retries: {attempts: 1}
    route: [{destination: {host: grpc, port: {number: 8000}}}]
  - match: [{uri: {prefix: /internal}}]
    retries: {attempts: 1, retryOn: internal}
    route: [{destination: {host: grpc, port: {number: 8000}}}]
  - route: [{destination: {host: grpc, port: {number: 8000}}}]
"#;
    let extra = virtual_service("vs", "default", "", spec)
        + &service("default", "grpc", 8000, upstream.addr);
    Ok((start(label, HTTP_SERVER, &extra)?, upstream))
}

#[test]
fn default_retries_leave_a_503_alone() -> anyhow::Result<()> {
    let failing = StatusUpstream::start("failing", 503)?;
    let spec = "  hosts: [r.example.com]\n  gateways: [istio-system/gw]\n  http: [{route: [{destination: {host: failing, port: {number: 8000}}}]}]\n";
    let extra = virtual_service("vs", "default", "", spec)
        + &service("default", "failing", 8000, failing.addr);
    let setup = start("istio-retry-503", HTTP_SERVER, &extra)?;
    let post = setup.get("r.example.com", "/orders", &["-X", "POST", "-d", "item=1"])?;
    assert_eq!(post.status, 503, "{post:?}");
    assert_eq!(failing.requests(), 1, "a 503 POST is not tried again");
    Ok(())
}

#[test]
fn grpc_retry_conditions_retry_on_grpc_status() -> anyhow::Result<()> {
    let (setup, upstream) = retry_setup("istio-retry-grpc")?;
    let host = "r.example.com";
    // The default policy retries `unavailable` (14) and `cancelled` (1) twice...
    assert_eq!(setup.get(host, "/default/grpc/14", &[])?.status, 200);
    assert_eq!(upstream.tries("/default/grpc/14"), 3);
    assert_eq!(setup.get(host, "/default/grpc/1", &[])?.status, 200);
    assert_eq!(upstream.tries("/default/grpc/1"), 3);
    // ...but not `internal` (13), which a route can ask for.
    setup.get(host, "/default/grpc/13", &[])?;
    assert_eq!(upstream.tries("/default/grpc/13"), 1);
    setup.get(host, "/internal/grpc/13", &[])?;
    assert_eq!(upstream.tries("/internal/grpc/13"), 2);
    Ok(())
}

#[test]
fn attempts_without_retry_on_use_the_default_conditions() -> anyhow::Result<()> {
    let (setup, upstream) = retry_setup("istio-retry-attempts")?;
    let host = "r.example.com";
    setup.get(host, "/attempts/grpc/14", &[])?;
    assert_eq!(upstream.tries("/attempts/grpc/14"), 2);
    assert_eq!(setup.get(host, "/attempts/status", &[])?.status, 503);
    assert_eq!(upstream.tries("/attempts/status"), 1);
    Ok(())
}

#[test]
fn https_redirect_covers_every_host_of_its_server() -> anyhow::Result<()> {
    let servers = r#"  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["bare.example.com", "*.wild.example.com"]
    tls: {httpsRedirect: true}
  - port: {number: 80, name: http-plain, protocol: HTTP}
    hosts: ["plain.example.com"]
"#;
    let setup = start("istio-https-redirect", servers, "")?;
    for host in ["bare.example.com", "a.wild.example.com"] {
        let answer = setup.get(host, "/x?y=1", &[])?;
        assert_eq!(answer.status, 301, "{host}: {answer:?}");
        assert_eq!(
            answer.header("location"),
            Some(format!("https://{host}/x?y=1").as_str()),
            "{host}"
        );
    }
    assert_eq!(setup.get("plain.example.com", "/x", &[])?.status, 404);
    Ok(())
}

#[test]
fn virtual_services_for_a_host_apply_oldest_then_by_name() -> anyhow::Result<()> {
    let page = |name: &str, created: &str, path: &str| {
        virtual_service(
            name,
            "default",
            &format!(", creationTimestamp: \"{created}\""),
            &format!(
                "  hosts: [o.example.com]\n  gateways: [istio-system/gw]\n  http: [{{match: [{{uri: {{prefix: {path}}}}}], {}}}]\n",
                answer(name)
            ),
        )
    };
    // File order is the reverse of Istio's order each time.
    let extra = [
        page("newer", "2025-06-01T00:00:00Z", "/page"),
        page("older", "2020-06-01T00:00:00Z", "/page"),
        page("tie-b", "2024-01-01T00:00:00Z", "/tie"),
        page("tie-a", "2024-01-01T00:00:00Z", "/tie"),
    ]
    .concat();
    let setup = start("istio-vs-order", HTTP_SERVER, &extra)?;
    assert_eq!(setup.body("o.example.com", "/page", &[])?, "older");
    assert_eq!(setup.body("o.example.com", "/tie", &[])?, "tie-a");
    Ok(())
}

#[test]
fn routes_after_a_catch_all_are_dropped() -> anyhow::Result<()> {
    let first = format!(
        "  hosts: [c.example.com]\n  gateways: [istio-system/gw]\n  http:\n  - {}\n  - match: [{{uri: {{prefix: /api}}}}]\n    {}\n",
        answer("first-rest"),
        answer("unreachable")
    );
    let second = format!(
        "  hosts: [c.example.com]\n  gateways: [istio-system/gw]\n  http:\n  - match: [{{uri: {{prefix: /api}}}}]\n    {}\n",
        answer("second-api")
    );
    let extra = virtual_service(
        "first",
        "default",
        ", creationTimestamp: \"2020-01-01T00:00:00Z\"",
        &first,
    ) + &virtual_service(
        "second",
        "default",
        ", creationTimestamp: \"2021-01-01T00:00:00Z\"",
        &second,
    );
    let setup = start("istio-catch-all", HTTP_SERVER, &extra)?;
    // The first VirtualService's catch-all goes last among the host's routes, and its
    // `/api` route after it is gone: the second VirtualService's `/api` answers.
    assert_eq!(setup.body("c.example.com", "/api", &[])?, "second-api");
    assert_eq!(setup.body("c.example.com", "/", &[])?, "first-rest");
    Ok(())
}

#[test]
fn exact_sni_hosts_beat_wildcards_for_passthrough() -> anyhow::Result<()> {
    let wild = TcpListener::bind("127.0.0.1:0")?;
    let exact = TcpListener::bind("127.0.0.1:0")?;
    let servers = r#"  - port: {number: 443, name: tls, protocol: TLS}
    hosts: ["*.example.com"]
    tls: {mode: PASSTHROUGH}
"#;
    // The wildcard comes first; Envoy picks the filter chain by the most specific name.
    let spec = r#"  hosts: ["*.example.com"]
  gateways: [istio-system/gw]
  tls:
  - match: [{sniHosts: ["*.example.com"]}]
    route: [{destination: {host: wild, port: {number: 443}}}]
  - match: [{sniHosts: ["a.example.com"]}]
    route: [{destination: {host: exact, port: {number: 443}}}]
"#;
    let extra = virtual_service("pass", "default", "", spec)
        + &service("default", "wild", 443, wild.local_addr()?)
        + &service("default", "exact", 443, exact.local_addr()?);
    let setup = start("istio-sni-order", servers, &extra)?;
    let reached = |sni: &str| -> anyhow::Result<&'static str> {
        let url = format!("https://{sni}:{}/", setup.tls_port);
        let resolve = format!("{sni}:{}:127.0.0.1", setup.tls_port);
        // The upstreams never answer the handshake: curl gives up, which is expected.
        let _ = curl(
            None,
            &["-k", "--max-time", "2", "--resolve", &resolve, &url],
        );
        accepted(&wild, &exact)
    };
    assert_eq!(reached("a.example.com")?, "exact");
    assert_eq!(reached("b.example.com")?, "wild");
    Ok(())
}

/// Which of the two listeners got the connection the gateway passed through.
fn accepted(wild: &TcpListener, exact: &TcpListener) -> anyhow::Result<&'static str> {
    wild.set_nonblocking(true)?;
    exact.set_nonblocking(true)?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if wild.accept().is_ok() {
            return Ok("wild");
        }
        if exact.accept().is_ok() {
            return Ok("exact");
        }
        thread::sleep(Duration::from_millis(20));
    }
    anyhow::bail!("neither upstream got a connection")
}

#[test]
fn cors_preflights_as_envoys_filter() -> anyhow::Result<()> {
    let upstream = Upstream::start(None, "127.0.0.1:0", "web")?;
    let spec = r#"  hosts: [cors.example.com]
  gateways: [istio-system/gw]
  http:
  - match: [{uri: {prefix: /star}}]
    corsPolicy:
      allowOrigins: [{exact: "*"}]
      allowMethods: ["*"]
      allowHeaders: ["*"]
      allowCredentials: true
    route: [{destination: {host: web, port: {number: 8000}}}]
  - match: [{uri: {prefix: /strict}}]
    corsPolicy:
      allowOrigins: [{prefix: "https://app."}]
      maxAge: 10s
      unmatchedPreflights: IGNORE
    route: [{destination: {host: web, port: {number: 8000}}}]
  - corsPolicy: {allowOrigins: [{exact: "https://app.example"}]}
    route: [{destination: {host: web, port: {number: 8000}}}]
"#;
    let extra = virtual_service("vs", "default", "", spec)
        + &service("default", "web", 8000, upstream.addr);
    let setup = start("istio-cors", HTTP_SERVER, &extra)?;
    let preflight = |path: &str, origin: &str| {
        let origin = format!("Origin: {origin}");
        setup.get(
            "cors.example.com",
            path,
            &[
                "-X",
                "OPTIONS",
                "-H",
                &origin,
                "-H",
                "Access-Control-Request-Method: PUT",
                "-H",
                "Access-Control-Request-Headers: x-a,x-b",
            ],
        )
    };
    // `*` allows any origin; `*` methods and headers echo what the browser asked.
    let star = preflight("/star", "https://anyone.example")?;
    assert_eq!(star.status, 200, "{star:?}");
    assert_eq!(
        star.header("x-upstream-name"),
        None,
        "answered by the gateway"
    );
    assert_eq!(
        star.header("access-control-allow-origin"),
        Some("https://anyone.example")
    );
    assert_eq!(star.header("access-control-allow-methods"), Some("PUT"));
    assert_eq!(star.header("access-control-allow-headers"), Some("x-a,x-b"));
    assert_eq!(
        star.header("access-control-allow-credentials"),
        Some("true")
    );
    // `unmatchedPreflights: IGNORE`: an origin the policy refuses gets the gateway's
    // answer without allow-origin, so the browser stops there.
    let refused = preflight("/strict", "https://evil.example")?;
    assert_eq!(refused.status, 200, "{refused:?}");
    assert_eq!(refused.header("x-upstream-name"), None);
    assert_eq!(refused.header("access-control-allow-origin"), None);
    assert_eq!(refused.header("access-control-max-age"), Some("10"));
    let allowed = preflight("/strict", "https://app.example")?;
    assert_eq!(
        allowed.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    // By default (FORWARD) an unmatched preflight goes to the upstream.
    let forwarded = preflight("/other", "https://evil.example")?;
    assert_eq!(
        forwarded.header("x-upstream-name"),
        Some("web"),
        "{forwarded:?}"
    );
    assert_eq!(forwarded.header("access-control-allow-origin"), None);
    Ok(())
}

#[test]
fn validate_names_destination_rule_fields_not_applied() -> anyhow::Result<()> {
    let dir = TempDir::new("istio-unapplied")?;
    let config = dir.write(
        "config.yaml",
        r#"apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: web, namespace: default}
spec:
  host: web
  trafficPolicy:
    loadBalancer: {consistentHash: {httpCookie: {name: user, ttl: 0s}}}
    connectionPool: {tcp: {maxConnectionDuration: 1h}}
    tls: {mode: SIMPLE}
"#,
    )?;
    let out = Command::new(gatewayd_bin())
        .args(["validate", "--config"])
        .arg(&config)
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "warnings only: {stdout}");
    let field = "DestinationRule default/web: spec.trafficPolicy.connectionPool.tcp.maxConnectionDuration: not applied";
    assert!(stdout.contains(field), "{field} not in\n{stdout}");
    // Consistent hashing and upstream TLS origination (issue 17) are applied: not listed.
    assert!(!stdout.contains("consistentHash"), "{stdout}");
    assert!(
        !stdout.contains("spec.trafficPolicy.tls: not applied"),
        "{stdout}"
    );
    Ok(())
}

/// Istio's `HTTPBody.bytes` (base64) is served; a fault Istio cannot express in Envoy
/// (`exponentialDelay`, `http2Error`) is dropped with a warning, the route still serves;
/// the sidecar-only conditions of `tls`/`tcp` matches and fields this gateway does not
/// know are named by `validate`.
#[test]
fn body_bytes_served_and_ignored_fields_named() -> anyhow::Result<()> {
    let spec = r#"  hosts: [bytes.example.com]
  gateways: [istio-system/gw]
  http:
  - match: [{uri: {prefix: /bytes}, statPrefix: bytes}]
    directResponse: {status: 200, body: {bytes: aGVsbG8gYnl0ZXMK}}
  - match: [{uri: {prefix: /faulty}}]
    fault: {delay: {exponentialDelay: 10s}, abort: {http2Error: REFUSED_STREAM}}
    retries: {attempts: 1, perTryTimout: 1s}
    directResponse: {status: 200, body: {string: unfaulted}}
  tcp:
  - match: [{port: 31400, sourceLabels: {app: sleep}}]
    route: [{destination: {host: web, port: {number: 8000}}}]
"#;
    let setup = start(
        "istio-body-bytes",
        HTTP_SERVER,
        &virtual_service("vs", "default", "", spec),
    )?;
    let bytes = setup.get("bytes.example.com", "/bytes", &[])?;
    assert_eq!((bytes.status, bytes.body.as_str()), (200, "hello bytes\n"));
    let faulty = setup.get("bytes.example.com", "/faulty", &[])?;
    assert_eq!((faulty.status, faulty.body.as_str()), (200, "unfaulted"));

    let out = Command::new(gatewayd_bin())
        .args(["validate", "--config"])
        .arg(setup.dir.path())
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "warnings only: {stdout}");
    for field in [
        "VirtualService default/vs: spec.http[1].fault.delay.exponentialDelay: ignored",
        "VirtualService default/vs: spec.http[1].fault.abort.http2Error: ignored",
        "VirtualService default/vs: spec.tcp[0].match[0].sourceLabels: ignored",
        // A field this gateway has no place for at all.
        "VirtualService default/vs: spec.http[0].match[0].statPrefix: `statPrefix` is not a field this gateway knows; ignored",
        "VirtualService default/vs: spec.http[1].retries.perTryTimout: `retries.perTryTimout` is not a field this gateway knows; ignored",
    ] {
        assert!(stdout.contains(field), "{field} not in\n{stdout}");
    }
    Ok(())
}

#[test]
fn host_header_set_rewrites_the_authority_for_http1_and_http2() -> anyhow::Result<()> {
    let upstream = Upstream::start(None, "127.0.0.1:0", "web")?;
    let spec = r#"  hosts: [h.example.com]
  gateways: [istio-system/gw]
  http:
  - match: [{uri: {prefix: /h1}}]
    headers: {request: {set: {host: h1.internal}}}
    route: [{destination: {host: web, port: {number: 8000}}}]
  - match: [{uri: {prefix: /h2}}]
    route:
    - destination: {host: web2, port: {number: 8000}}
      headers: {request: {set: {":authority": h2.internal}}}
  - match: [{uri: {prefix: /both}}]
    rewrite: {authority: rewrite.internal}
    headers: {request: {set: {host: header.internal}}}
    route: [{destination: {host: web2, port: {number: 8000}}}]
"#;
    let h2c_service = service("default", "web2", 8000, upstream.addr).replace(
        "{name: http, port: 8000,",
        "{name: http, port: 8000, appProtocol: kubernetes.io/h2c,",
    );
    let extra = virtual_service("vs", "default", "", spec)
        + &service("default", "web", 8000, upstream.addr)
        + &h2c_service;
    let setup = start("istio-host-rewrite", HTTP_SERVER, &extra)?;
    let h2 = setup.get("h.example.com", "/h2", &[])?.json()?;
    assert_eq!(h2["version"], "HTTP/2.0", "the upstream speaks HTTP/2");
    for path in ["/h1", "/both"] {
        assert_eq!(setup.get("h.example.com", path, &[])?.status, 200, "{path}");
    }
    let (_, seen) = gateway_tests::http_get(upstream.addr, "/__requests")?;
    let seen: serde_json::Value = serde_json::from_str(&seen)?;
    let host_of = |path: &str| {
        seen.as_array()
            .and_then(|all| all.iter().find(|r| r["path"] == path))
            .and_then(|r| r["host"].as_str())
            .map(str::to_owned)
    };
    assert_eq!(host_of("/h1").as_deref(), Some("h1.internal"));
    assert_eq!(host_of("/h2").as_deref(), Some("h2.internal"));
    assert_eq!(host_of("/both").as_deref(), Some("rewrite.internal"));
    Ok(())
}

/// Several Istio Gateways with servers on the same port and different hosts all serve,
/// as Istio merges servers by port: plain HTTP by Host, HTTPS by SNI with each
/// Gateway's own certificate; a VirtualService serves only through the Gateway it
/// names.
#[test]
fn several_gateways_on_one_port_all_serve() -> anyhow::Result<()> {
    use crate::tls::{Key, Pki, https, served_subject, tls_secret};
    let pki_dir = TempDir::new("istio-two-gateways-pki")?;
    let pki = Pki::new(pki_dir.path(), "test-ca")?;
    let (b_crt, b_key) = pki.issue(
        "b",
        "b.example.com",
        "DNS:b.example.com",
        Key::EcP256Pkcs8,
        false,
    )?;
    let (c_crt, c_key) = pki.issue(
        "c",
        "c.example.com",
        "DNS:c.example.com",
        Key::EcP256Pkcs8,
        false,
    )?;
    let servers = "  - port: {number: 80, name: http, protocol: HTTP}\n    hosts: [\"a.example.com\"]\n  - port: {number: 443, name: https, protocol: HTTPS}\n    hosts: [\"b.example.com\"]\n    tls: {mode: SIMPLE, credentialName: b-cred}\n";
    let bound = |name: &str, gateway: &str| {
        virtual_service(
            name,
            "apps",
            "",
            &format!(
                "  hosts: [{name}.example.com]\n  gateways: [\"{gateway}\"]\n  http: [{{{}}}]\n",
                answer(name)
            ),
        )
    };
    let extra = [
        "---\n".to_owned(),
        tls_secret("b-cred", "istio-system", &b_crt, &b_key, None),
        tls_secret("c-cred", "istio-system", &c_crt, &c_key, None),
        r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: other, namespace: apps}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["d.example.com"]
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: ["c.example.com"]
    tls: {mode: SIMPLE, credentialName: c-cred}
"#
        .to_owned(),
        bound("a", "istio-system/gw"),
        bound("b", "istio-system/gw"),
        bound("c", "apps/other"),
        bound("d", "apps/other"),
        // Bound to `gw`, whose servers do not have this host: not served.
        bound("e", "istio-system/gw"),
    ]
    .concat();
    let setup = start("istio-two-gateways", servers, &extra)?;
    assert_eq!(setup.body("a.example.com", "/", &[])?, "a");
    assert_eq!(setup.body("d.example.com", "/", &[])?, "d");
    assert_eq!(setup.get("e.example.com", "/", &[])?.status, 404);
    let ca = pki.path("test-ca.crt");
    for name in ["b", "c"] {
        let host = format!("{name}.example.com");
        assert_eq!(
            served_subject(setup.tls_port, Some(&host))?.as_deref(),
            Some(format!("CN={host}").as_str())
        );
        let answer = https(&host, setup.tls_port, &ca, "/", &[])?;
        assert_eq!(answer.status, 200, "{host}: {answer:?}");
        assert_eq!(answer.body, name, "{host}");
    }
    Ok(())
}

/// Redirect ports as Envoy writes them: `tls.httpsRedirect` is the virtual host's
/// `require_tls`, whose Location is `https://` + the request's Host as sent (a port
/// included); a VirtualService redirect changing the scheme keeps a non-default request
/// port and drops the old scheme's default one; a new `authority` takes no port from the
/// request; `port` and `derivePort: FROM_PROTOCOL_DEFAULT` decide it outright.
#[test]
fn redirect_ports_as_envoy_writes_them() -> anyhow::Result<()> {
    let servers = r#"  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["secure.example.com"]
    tls: {httpsRedirect: true}
  - port: {number: 80, name: http-plain, protocol: HTTP}
    hosts: ["*.redirect.example.com"]
"#;
    let spec = r#"  hosts: ["*.redirect.example.com"]
  gateways: [istio-system/gw]
  http:
  - match: [{uri: {prefix: /scheme}}]
    redirect: {scheme: https}
  - match: [{uri: {prefix: /default}}]
    redirect: {scheme: https, derivePort: FROM_PROTOCOL_DEFAULT}
  - match: [{uri: {prefix: /fixed}}]
    redirect: {port: 9443, scheme: https}
  - match: [{uri: {prefix: /elsewhere}}]
    redirect: {authority: other.example.com}
  - match: [{uri: {prefix: /same}}]
    redirect: {uri: /moved}
"#;
    let setup = start(
        "istio-redirect-ports",
        servers,
        &virtual_service("r", "default", "", spec),
    )?;
    let location = |host: &str, path: &str| -> anyhow::Result<String> {
        let answer = setup.get(host, path, &[])?;
        anyhow::ensure!(answer.status == 301, "{host}{path}: {answer:?}");
        Ok(answer.header("location").unwrap_or_default().to_owned())
    };
    let cases = [
        (
            "secure.example.com",
            "/x?y=1",
            "https://secure.example.com/x?y=1",
        ),
        (
            "secure.example.com:8080",
            "/x",
            "https://secure.example.com:8080/x",
        ),
        (
            "a.redirect.example.com:8080",
            "/scheme",
            "https://a.redirect.example.com:8080/scheme",
        ),
        (
            "a.redirect.example.com:80",
            "/scheme",
            "https://a.redirect.example.com/scheme",
        ),
        (
            "a.redirect.example.com:8080",
            "/default",
            "https://a.redirect.example.com/default",
        ),
        (
            "a.redirect.example.com:8080",
            "/fixed",
            "https://a.redirect.example.com:9443/fixed",
        ),
        (
            "a.redirect.example.com:8080",
            "/elsewhere",
            "http://other.example.com/elsewhere",
        ),
        (
            "a.redirect.example.com:8080",
            "/same",
            "http://a.redirect.example.com:8080/moved",
        ),
    ];
    for (host, path, want) in cases {
        assert_eq!(location(host, path)?, want, "{host}{path}");
    }
    Ok(())
}

/// A VirtualService `corsPolicy` on a redirect or a direct response applies as Envoy's
/// CORS filter, which runs before the router: an allowed preflight is answered by the
/// filter (not redirected), and the redirect or direct response to an allowed origin
/// carries `access-control-allow-origin`; another origin gets neither.
#[test]
fn cors_applies_to_redirect_and_direct_response_routes() -> anyhow::Result<()> {
    let spec = r#"  hosts: [cors-local.example.com]
  gateways: [istio-system/gw]
  http:
  - match: [{uri: {prefix: /moved}}]
    corsPolicy: {allowOrigins: [{exact: "https://app.example"}], allowMethods: [GET, PUT]}
    redirect: {uri: /new}
  - match: [{uri: {prefix: /direct}}]
    corsPolicy: {allowOrigins: [{exact: "https://app.example"}], exposeHeaders: [x-trace]}
    directResponse: {status: 200, body: {string: direct}}
"#;
    let setup = start(
        "istio-cors-local",
        HTTP_SERVER,
        &virtual_service("vs", "default", "", spec),
    )?;
    let request = |path: &str, origin: &str, preflight: bool| {
        let origin = format!("Origin: {origin}");
        let mut extra = vec!["-H", origin.as_str()];
        if preflight {
            extra.extend(["-X", "OPTIONS", "-H", "Access-Control-Request-Method: PUT"]);
        }
        setup.get("cors-local.example.com", path, &extra)
    };
    for path in ["/moved", "/direct"] {
        let answer = request(path, "https://app.example", true)?;
        assert_eq!(answer.status, 200, "{path}: {answer:?}");
        assert_eq!(
            answer.header("access-control-allow-origin"),
            Some("https://app.example"),
            "{path}: {answer:?}"
        );
        assert_eq!(answer.header("location"), None, "{path}");
        let other = request(path, "https://evil.example", false)?;
        assert_eq!(other.header("access-control-allow-origin"), None, "{path}");
    }
    let moved = request("/moved", "https://app.example", false)?;
    assert_eq!(moved.status, 301, "{moved:?}");
    assert_eq!(
        moved.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    let direct = request("/direct", "https://app.example", false)?;
    assert_eq!(direct.status, 200, "{direct:?}");
    assert_eq!(direct.body, "direct");
    assert_eq!(
        direct.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    assert_eq!(
        direct.header("access-control-expose-headers"),
        Some("x-trace")
    );
    Ok(())
}
