//! AuthorizationPolicy end to end: the real gatewayd, the demo upstream and curl, with
//! client addresses picked from 127.0.0.0/8 (`curl --interface`), client certificates
//! made by openssl on a MUTUAL server, and a raw TCP port.

use std::net::SocketAddr;

use anyhow::Context as _;
use gateway_tests::{
    CurlResponse, Gateway, TempDir, Upstream, curl, free_port, service_with_endpoint,
    write_atomically,
};

use crate::tls::{Key, Pki, tls_secret};

/// A Gateway for every host on port 80 (bound to `bind_port`) and 9000 (TCP, bound to
/// `tcp_port`), routed to the demo upstream, plus `policies`.
pub(crate) fn config(
    bind_port: u16,
    tcp_port: u16,
    upstream: SocketAddr,
    policies: &str,
) -> String {
    format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: istio-ingressgateway, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  ports:
  - {{name: http, port: 80, targetPort: {bind_port}}}
  - {{name: tcp, port: 9000, targetPort: {tcp_port}}}
---
{upstream_service}apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: gw, namespace: default}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 80, name: http, protocol: HTTP}}
    hosts: ["*"]
  - port: {{number: 9000, name: tcp, protocol: TCP}}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: web, namespace: default}}
spec:
  hosts: ["*"]
  gateways: [gw]
  http:
  - route: [{{destination: {{host: httpbin, port: {{number: 8000}}}}}}]
  tcp:
  - match: [{{port: 9000}}]
    route: [{{destination: {{host: httpbin, port: {{number: 8000}}}}}}]
{policies}"#,
        upstream_service = service_with_endpoint("httpbin", 8000, upstream)
    )
}

/// An AuthorizationPolicy document.
pub(crate) fn policy(name: &str, namespace: &str, spec: &str) -> String {
    let spec: String = spec.lines().map(|l| format!("  {l}\n")).collect();
    format!(
        "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec:\n{spec}"
    )
}

/// curl from `source` (a 127/8 address) to the gateway's HTTP port.
fn get_from(source: &str, port: u16, path: &str, extra: &[&str]) -> anyhow::Result<CurlResponse> {
    let url = format!("http://127.0.0.1:{port}{path}");
    let mut args = vec!["--interface", source, "--path-as-is"];
    args.extend_from_slice(extra);
    args.push(&url);
    curl(None, &args)
}

pub(crate) fn decisions(gateway: &Gateway, action: &str, decision: &str) -> anyhow::Result<f64> {
    Ok(gateway
        .metric(&format!(
            "gateway_authz_decisions_total{{action=\"{action}\",decision=\"{decision}\"}}"
        ))?
        .unwrap_or(0.0))
}

const ALLOW_TRUSTED: &str = r#"selector: {matchLabels: {istio: ingressgateway}}
action: ALLOW
rules:
- from: [{source: {ipBlocks: [127.0.0.2, 127.0.0.3/32]}}]
- to: [{operation: {paths: ["/public/*"], methods: [GET]}}]
- to: [{operation: {hosts: ["open.example"]}}]
- to: [{operation: {paths: ["/api/{*}/items"]}}]"#;

const DENY_ADMIN: &str = r#"action: DENY
rules:
- to: [{operation: {paths: ["/admin*"]}}]
- to: [{operation: {methods: [DELETE]}}]
- when: [{key: "request.headers[x-block]", values: ["yes"]}]"#;

#[test]
fn http_requests_are_allowed_and_denied_as_istio_decides() -> anyhow::Result<()> {
    let dir = TempDir::new("authz-http")?;
    let upstream = Upstream::start(None, "127.0.0.1:0", "httpbin")?;
    let (port, tcp_port) = (free_port(), free_port());
    let policies = policy("allow-trusted", "istio-system", ALLOW_TRUSTED)
        + &policy("deny-admin", "istio-system", DENY_ADMIN)
        + &policy(
            "audit-status",
            "istio-system",
            "action: AUDIT\nrules: [{to: [{operation: {paths: ['/status/*']}}]}]",
        )
        // Another namespace's policy without a selector is not ours.
        + &policy("elsewhere", "default", "action: DENY\nrules: [{}]");
    let file = dir.write(
        "config.yaml",
        &config(port, tcp_port, upstream.addr, &policies),
    )?;
    let gateway = Gateway::start(dir.path(), &["--ebpf", "off"], None, &dir)?;
    let answered = |source: &str, path: &str, extra: &[&str]| -> anyhow::Result<String> {
        Ok(get_from(source, port, path, extra)?.answered_by())
    };
    let denied = "403 \"RBAC: access denied\"";

    // ipBlocks: the trusted peers pass; any other peer matches no ALLOW rule: denied.
    assert_eq!(answered("127.0.0.2", "/get", &[])?, "httpbin");
    assert_eq!(answered("127.0.0.3", "/get", &[])?, "httpbin");
    assert_eq!(answered("127.0.0.4", "/get", &[])?, denied);
    let refused = get_from("127.0.0.4", port, "/get", &[])?;
    assert_eq!(refused.header("content-type"), Some("text/plain"));
    // Over HTTP/2 too.
    assert_eq!(
        answered("127.0.0.4", "/get", &["--http2-prior-knowledge"])?,
        denied
    );
    assert_eq!(
        answered("127.0.0.2", "/get", &["--http2-prior-knowledge"])?,
        "httpbin"
    );
    // paths with methods, hosts, and path templates open other doors for everyone.
    assert_eq!(answered("127.0.0.4", "/public/a", &[])?, "httpbin");
    assert_eq!(answered("127.0.0.4", "/public/a", &["-X", "POST"])?, denied);
    assert_eq!(
        answered("127.0.0.4", "/get", &["-H", "Host: OPEN.example"])?,
        "httpbin"
    );
    assert_eq!(answered("127.0.0.4", "/api/v1/items", &[])?, "httpbin");
    assert_eq!(answered("127.0.0.4", "/api/v1/x/items", &[])?, denied);
    // DENY beats ALLOW: paths, methods, headers; on the normalized path.
    assert_eq!(answered("127.0.0.2", "/admin/users", &[])?, denied);
    assert_eq!(answered("127.0.0.2", "/public/../admin", &[])?, denied);
    assert_eq!(answered("127.0.0.2", "/get", &["-X", "DELETE"])?, denied);
    assert_eq!(
        answered("127.0.0.2", "/get", &["-H", "x-block: yes"])?,
        denied
    );
    // AUDIT only logs.
    assert_eq!(get_from("127.0.0.2", port, "/status/201", &[])?.status, 201);

    let log = gateway.access_log();
    assert!(
        log.lines()
            .any(|l| l.contains("\"GET /admin/users HTTP/1.1\" 403 RBAC ")),
        "{log}"
    );
    assert!(decisions(&gateway, "DENY", "deny")? >= 4.0);
    assert!(decisions(&gateway, "ALLOW", "deny")? >= 4.0);
    assert!(decisions(&gateway, "ALLOW", "allow")? >= 6.0);
    assert_eq!(decisions(&gateway, "AUDIT", "audit")?, 1.0);
    assert!(gateway.stderr().contains("authorization audit"));

    // Policies follow reloads: without the ALLOW policy nothing is denied by default.
    gateway.reload_after(|| {
        write_atomically(
            &file,
            &config(
                port,
                tcp_port,
                upstream.addr,
                &policy("deny-admin", "istio-system", DENY_ADMIN),
            ),
        )
    })?;
    assert_eq!(answered("127.0.0.4", "/get", &[])?, "httpbin");
    assert_eq!(answered("127.0.0.4", "/admin", &[])?, denied);
    Ok(())
}

#[test]
fn audit_and_deny_without_rules_let_everything_through() -> anyhow::Result<()> {
    let dir = TempDir::new("authz-audit")?;
    let upstream = Upstream::start(None, "127.0.0.1:0", "httpbin")?;
    let (port, tcp_port) = (free_port(), free_port());
    let policies = policy("audit-all", "istio-system", "action: AUDIT\nrules: [{}]")
        + &policy("deny-nothing", "istio-system", "action: DENY");
    dir.write(
        "config.yaml",
        &config(port, tcp_port, upstream.addr, &policies),
    )?;
    let gateway = Gateway::start(dir.path(), &["--ebpf", "off"], None, &dir)?;
    assert_eq!(
        get_from("127.0.0.5", port, "/get", &[])?.answered_by(),
        "httpbin"
    );
    assert_eq!(decisions(&gateway, "AUDIT", "audit")?, 1.0);
    assert_eq!(decisions(&gateway, "NONE", "allow")?, 1.0);
    Ok(())
}

#[test]
fn remote_ip_blocks_read_x_forwarded_for_behind_trusted_proxies() -> anyhow::Result<()> {
    let dir = TempDir::new("authz-xff")?;
    let upstream = Upstream::start(None, "127.0.0.1:0", "httpbin")?;
    let (port, tcp_port) = (free_port(), free_port());
    let policies = policy(
        "clients",
        "istio-system",
        "rules:\n- from: [{source: {remoteIpBlocks: [203.0.113.0/24]}}]\n- when: [{key: remote.ip, values: [198.51.100.7]}]",
    );
    dir.write(
        "config.yaml",
        &config(port, tcp_port, upstream.addr, &policies),
    )?;
    let behind_one_proxy = Gateway::start(
        dir.path(),
        &["--ebpf", "off", "--num-trusted-proxies", "1"],
        None,
        &dir,
    )?;
    let answered = |xff: Option<&str>| -> anyhow::Result<u16> {
        let header = xff.map(|x| format!("x-forwarded-for: {x}"));
        let extra: Vec<&str> = header.iter().flat_map(|h| ["-H", h.as_str()]).collect();
        Ok(get_from("127.0.0.1", port, "/get", &extra)?.status)
    };
    // One trusted proxy: the client is the last entry the proxy appended.
    assert_eq!(answered(Some("192.0.2.1, 203.0.113.9"))?, 200);
    assert_eq!(answered(Some("203.0.113.9, 192.0.2.1"))?, 403);
    assert_eq!(answered(Some("198.51.100.7"))?, 200);
    // No header: the peer is the client (and 127.0.0.1 is not allowed).
    assert_eq!(answered(None)?, 403);
    drop(behind_one_proxy);

    // Without trusted proxies x-forwarded-for is the client's to forge: it is ignored.
    let edge = Gateway::start(dir.path(), &["--ebpf", "off"], None, &dir)?;
    assert_eq!(answered(Some("203.0.113.9"))?, 403);
    drop(edge);
    Ok(())
}

#[test]
fn principals_come_from_client_certificates_on_mutual_servers() -> anyhow::Result<()> {
    let dir = TempDir::new("authz-mtls")?;
    let pki_dir = TempDir::new("authz-mtls-pki")?;
    let pki = Pki::new(pki_dir.path(), "mesh-ca")?;
    let (server_crt, server_key) = pki.issue(
        "server",
        "secure.example.com",
        "DNS:secure.example.com",
        Key::EcP256Pkcs8,
        false,
    )?;
    for (name, uri) in [
        ("web", "spiffe://cluster.local/ns/frontend/sa/web"),
        ("batch", "spiffe://cluster.local/ns/jobs/sa/batch"),
    ] {
        pki.issue(name, name, &format!("URI:{uri}"), Key::EcP256Pkcs8, true)?;
    }
    let upstream = Upstream::start(None, "127.0.0.1:0", "httpbin")?;
    let (port, tcp_port, https_port) = (free_port(), free_port(), free_port());
    let mut extra = tls_secret(
        "secure-cred",
        "istio-system",
        &server_crt,
        &server_key,
        Some(&pki.ca_pem()?),
    );
    extra = format!("---\n{extra}");
    // Not a port of our Service: the server binds its own number.
    extra += &format!(
        r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: secure, namespace: default}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: {https_port}, name: https, protocol: HTTPS}}
    hosts: ["secure.example.com"]
    tls: {{mode: MUTUAL, credentialName: secure-cred}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: secure, namespace: default}}
spec:
  hosts: ["secure.example.com"]
  gateways: [secure]
  http:
  - route: [{{destination: {{host: httpbin, port: {{number: 8000}}}}}}]
"#
    );
    extra += &policy(
        "frontend-only",
        "istio-system",
        "rules:\n- from: [{source: {principals: [cluster.local/ns/frontend/sa/web]}}]",
    );
    extra += &policy(
        "no-admin-for-frontend",
        "istio-system",
        "action: DENY\nrules:\n- from: [{source: {namespaces: [frontend]}}]\n  to: [{operation: {paths: [/admin]}}]",
    );
    dir.write(
        "config.yaml",
        &config(port, tcp_port, upstream.addr, &extra),
    )?;
    let gateway = Gateway::start(dir.path(), &["--ebpf", "off"], None, &dir)?;
    let ca = pki.path("mesh-ca.crt");
    let with_cert = |name: &str, path: &str| -> anyhow::Result<String> {
        let (cert, key) = (
            pki.path(&format!("{name}.crt")),
            pki.path(&format!("{name}.key")),
        );
        let url = format!("https://secure.example.com:{https_port}{path}");
        let resolve = format!("secure.example.com:{https_port}:127.0.0.1");
        let response = curl(
            None,
            &[
                "--resolve",
                &resolve,
                "--cacert",
                &ca,
                "--cert",
                &cert,
                "--key",
                &key,
                &url,
            ],
        )
        .with_context(|| gateway.stderr())?;
        Ok(response.answered_by())
    };
    let denied = "403 \"RBAC: access denied\"";
    assert_eq!(with_cert("web", "/get")?, "httpbin");
    assert_eq!(with_cert("batch", "/get")?, denied);
    assert_eq!(with_cert("web", "/admin")?, denied);
    // The plain HTTP port has no client certificate: no principal, denied.
    assert_eq!(
        get_from("127.0.0.1", port, "/get", &[])?.answered_by(),
        denied
    );
    Ok(())
}

#[test]
fn tcp_connections_from_denied_addresses_are_closed() -> anyhow::Result<()> {
    let dir = TempDir::new("authz-tcp")?;
    let upstream = Upstream::start(None, "127.0.0.1:0", "httpbin")?;
    let (port, tcp_port) = (free_port(), free_port());
    let policies = policy(
        "no-bad-peer",
        "istio-system",
        "action: DENY\nrules: [{from: [{source: {ipBlocks: [127.0.0.6]}}]}]",
    ) + &policy(
        // On the TCP port the paths rule cannot be read: only the ports rule can allow.
        "tcp-port",
        "istio-system",
        &format!(
            "rules:\n- to: [{{operation: {{ports: ['{tcp_port}']}}}}]\n- to: [{{operation: {{paths: ['/*']}}}}]"
        ),
    );
    dir.write(
        "config.yaml",
        &config(port, tcp_port, upstream.addr, &policies),
    )?;
    let gateway = Gateway::start(dir.path(), &["--ebpf", "off"], None, &dir)?;
    let through_tcp = |source: &str| get_from(source, tcp_port, "/get", &[]);
    assert_eq!(through_tcp("127.0.0.7")?.answered_by(), "httpbin");
    let closed = through_tcp("127.0.0.6");
    assert!(closed.is_err(), "{closed:?}");
    assert!(decisions(&gateway, "DENY", "deny")? >= 1.0);
    // The HTTP port: the paths rule allows, the DENY rule still closes the door.
    assert_eq!(
        get_from("127.0.0.7", port, "/get", &[])?.answered_by(),
        "httpbin"
    );
    assert_eq!(get_from("127.0.0.6", port, "/get", &[])?.status, 403);
    Ok(())
}

#[test]
fn validate_names_what_is_not_enforced() -> anyhow::Result<()> {
    let dir = TempDir::new("authz-validate")?;
    let upstream: SocketAddr = "127.0.0.1:9".parse()?;
    let policies = policy(
        "jwt",
        "istio-system",
        "rules:\n- from: [{source: {requestPrincipals: ['*']}}]\n  when: [{key: 'request.auth.claims[iss]', values: [x]}]",
    ) + &policy(
        "ext",
        "istio-system",
        "action: CUSTOM\nprovider: {name: oauth}\nrules: [{to: [{operation: {paths: [/x]}}]}]",
    );
    dir.write("config.yaml", &config(80, 9000, upstream, &policies))?;
    let report = crate::tls::validate(dir.path())?;
    assert!(
        report.contains("spec.rules[0].from[0].source.requestPrincipals")
            && report.contains("spec.rules[0].when[0].values")
            && report.contains("allows nothing"),
        "{report}"
    );
    assert!(
        report.contains("spec.action") && report.contains("CUSTOM is not supported"),
        "{report}"
    );
    Ok(())
}

/// A DENY policy that does not parse keeps denying, everything, until it is fixed: a
/// broken object is dropped from the configuration, but a DENY policy that vanished would
/// let through what it was written to stop.
#[test]
fn a_deny_policy_that_does_not_parse_fails_closed() -> anyhow::Result<()> {
    let dir = TempDir::new("authz-broken")?;
    let upstream = Upstream::start(None, "127.0.0.1:0", "httpbin")?;
    let (port, tcp_port) = (free_port(), free_port());
    // ipBlocks is a list: a plain string does not parse.
    let broken = policy(
        "no-bad-peer",
        "istio-system",
        "action: DENY\nrules: [{from: [{source: {ipBlocks: 127.0.0.6}}]}]",
    );
    let file = dir.write(
        "config.yaml",
        &config(port, tcp_port, upstream.addr, &broken),
    )?;
    let gateway = Gateway::start(dir.path(), &["--ebpf", "off"], None, &dir)?;
    let denied = "403 \"RBAC: access denied\"";
    assert_eq!(
        get_from("127.0.0.7", port, "/get", &[])?.answered_by(),
        denied
    );
    let closed = get_from("127.0.0.7", tcp_port, "/get", &[]);
    assert!(closed.is_err(), "the TCP port is closed too: {closed:?}");
    assert!(
        gateway.stderr().contains("fails closed"),
        "{}",
        gateway.stderr()
    );

    // Fixed: the policy denies what it says, and only that.
    let fixed = policy(
        "no-bad-peer",
        "istio-system",
        "action: DENY\nrules: [{from: [{source: {ipBlocks: [127.0.0.6]}}]}]",
    );
    gateway
        .reload_after(|| write_atomically(&file, &config(port, tcp_port, upstream.addr, &fixed)))?;
    assert_eq!(
        get_from("127.0.0.7", port, "/get", &[])?.answered_by(),
        "httpbin"
    );
    assert_eq!(
        get_from("127.0.0.6", port, "/get", &[])?.answered_by(),
        denied
    );
    Ok(())
}

/// The demo upstream's count of accepted TCP connections, asked directly over TLS (the
/// asking connection included).
fn upstream_connections(backend: SocketAddr, ca: &str) -> anyhow::Result<u64> {
    let resolve = format!("allowed.example.com:{}:127.0.0.1", backend.port());
    let url = format!(
        "https://allowed.example.com:{}/__connections",
        backend.port()
    );
    let answer = curl(None, &["--resolve", &resolve, "--cacert", ca, &url])?;
    anyhow::ensure!(answer.status == 200, "{answer:?}");
    Ok(answer.body.trim().parse()?)
}

#[test]
fn tls_passthrough_connections_denied_by_address_or_sni_never_reach_the_upstream()
-> anyhow::Result<()> {
    let dir = TempDir::new("authz-passthrough")?;
    let pki_dir = TempDir::new("authz-passthrough-pki")?;
    let pki = Pki::new(pki_dir.path(), "pass-ca")?;
    pki.issue(
        "backend",
        "backend",
        "DNS:allowed.example.com,DNS:denied.example.com",
        Key::EcP256Pkcs8,
        false,
    )?;
    let (_backend, backend) = crate::upstream_tls::tls_upstream(&pki, "backend")?;
    let upstream = Upstream::start(None, "127.0.0.1:0", "httpbin")?;
    let (port, tcp_port, pass_port) = (free_port(), free_port(), free_port());
    // Not a port of our Service: the server binds its own number.
    let mut extra = format!(
        r#"---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: pass, namespace: default}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: {pass_port}, name: tls-pass, protocol: TLS}}
    hosts: [allowed.example.com, denied.example.com]
    tls: {{mode: PASSTHROUGH}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: pass, namespace: default}}
spec:
  hosts: [allowed.example.com, denied.example.com]
  gateways: [pass]
  tls:
  - match: [{{sniHosts: [allowed.example.com, denied.example.com]}}]
    route: [{{destination: {{host: backend, port: {{number: 443}}}}}}]
---
{}"#,
        service_with_endpoint("backend", 443, backend).trim_end_matches("---\n")
    );
    extra += &policy(
        "no-bad-peer",
        "istio-system",
        "selector: {matchLabels: {istio: ingressgateway}}\naction: DENY\nrules: [{from: [{source: {ipBlocks: [127.0.0.6]}}]}]",
    );
    extra += &policy(
        "no-denied-name",
        "istio-system",
        "action: DENY\nrules: [{when: [{key: connection.sni, values: [denied.example.com]}]}]",
    );
    dir.write(
        "config.yaml",
        &config(port, tcp_port, upstream.addr, &extra),
    )?;
    let gateway = Gateway::start(dir.path(), &["--ebpf", "off"], None, &dir)?;
    let ca = pki.path("pass-ca.crt");
    // curl from `source` to `name` on the passthrough port: the handshake is the
    // backend's (curl trusts only its CA), so an answer means the bytes went through.
    let through = |source: &str, name: &str| {
        let resolve = format!("{name}:{pass_port}:127.0.0.1");
        let url = format!("https://{name}:{pass_port}/get");
        curl(
            None,
            &[
                "--interface",
                source,
                "--resolve",
                &resolve,
                "--cacert",
                &ca,
                &url,
            ],
        )
    };

    // Allowed address and name: passed through to the backend.
    let passed = through("127.0.0.7", "allowed.example.com").with_context(|| gateway.stderr())?;
    assert_eq!(passed.answered_by(), "backend", "{passed:?}");
    let echo = passed.json()?;
    assert_eq!(
        echo["host"],
        format!("allowed.example.com:{pass_port}"),
        "{echo}"
    );

    let before = upstream_connections(backend, &ca)?;
    // A denied address, and a denied name from an allowed address: closed.
    let by_address = through("127.0.0.6", "allowed.example.com");
    assert!(by_address.is_err(), "{by_address:?}");
    let by_name = through("127.0.0.7", "denied.example.com");
    assert!(by_name.is_err(), "{by_name:?}");
    // Neither reached the backend: the only new connection is the one asking.
    assert_eq!(upstream_connections(backend, &ca)?, before + 1);

    // Each decision counted: two denials, one connection allowed (no ALLOW policy).
    assert_eq!(decisions(&gateway, "DENY", "deny")?, 2.0);
    assert_eq!(decisions(&gateway, "NONE", "allow")?, 1.0);
    // And the allowed ones still pass after the denials.
    let again = through("127.0.0.8", "allowed.example.com")?;
    assert_eq!(again.answered_by(), "backend", "{again:?}");
    assert_eq!(decisions(&gateway, "NONE", "allow")?, 2.0);
    Ok(())
}

/// Gateway API Gateways `api` and `internal` (ours, listeners on 8080 and 8081 bound to
/// `api_port` and `internal_port`) and `other` (another class's), each routing every
/// request to the demo upstream, plus `policies`.
fn api_gateways_config(
    api_port: u16,
    internal_port: u16,
    upstream: SocketAddr,
    policies: &str,
) -> String {
    let mut yaml = format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: istio-ingressgateway, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  ports:
  - {{name: api, port: 8080, targetPort: {api_port}}}
  - {{name: internal, port: 8081, targetPort: {internal_port}}}
---
{}"#,
        service_with_endpoint("httpbin", 8000, upstream)
    );
    for (name, class, port) in [
        ("api", "istio", 8080),
        ("internal", "istio", 8081),
        ("other", "nginx", 8082),
    ] {
        yaml += &format!(
            r#"apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: {name}, namespace: default}}
spec:
  gatewayClassName: {class}
  listeners: [{{name: http, port: {port}, protocol: HTTP}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {name}, namespace: default}}
spec:
  parentRefs: [{{name: {name}}}]
  rules: [{{backendRefs: [{{name: httpbin, port: 8000}}]}}]
"#
        );
        yaml += "---\n";
    }
    yaml.trim_end_matches("---\n").to_owned() + policies
}

/// A DENY policy for `/admin` attached by `targetRefs` to the Gateway `target`, in `namespace`.
fn deny_admin_on(name: &str, namespace: &str, target: &str) -> String {
    policy(
        name,
        namespace,
        &format!(
            "targetRefs: [{{group: gateway.networking.k8s.io, kind: Gateway, name: {target}}}]\naction: DENY\nrules: [{{to: [{{operation: {{paths: ['/admin*']}}}}]}}]"
        ),
    )
}

#[test]
fn target_refs_attach_a_policy_to_the_named_gateway_only() -> anyhow::Result<()> {
    let dir = TempDir::new("authz-target-refs")?;
    let upstream = Upstream::start(None, "127.0.0.1:0", "httpbin")?;
    let (api_port, internal_port) = (free_port(), free_port());
    let policies = |target: &str| {
        deny_admin_on("admin-closed", "default", target)
            // Policies that must not reach us: one attached to another class's Gateway,
            // one naming our Gateway from another namespace (a targetRef is local).
            + &policy(
                "deny-all-on-other",
                "default",
                "targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: other}]\naction: DENY\nrules: [{}]",
            )
            + &policy(
                "deny-all-from-elsewhere",
                "elsewhere",
                "targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: api}]\naction: DENY\nrules: [{}]",
            )
    };
    let file = dir.write(
        "config.yaml",
        &api_gateways_config(api_port, internal_port, upstream.addr, &policies("api")),
    )?;
    let gateway = Gateway::start(dir.path(), &["--ebpf", "off"], None, &dir)?;
    let denied = "403 \"RBAC: access denied\"";
    let answered = |port: u16, path: &str| -> anyhow::Result<String> {
        Ok(get_from("127.0.0.1", port, path, &[])
            .with_context(|| gateway.stderr())?
            .answered_by())
    };

    // The policy attached to `api` applies there, and nothing else is denied.
    assert_eq!(answered(api_port, "/admin/users")?, denied);
    assert_eq!(answered(api_port, "/get")?, "httpbin");
    // Not on our other Gateway's listener.
    assert_eq!(answered(internal_port, "/admin/users")?, "httpbin");
    assert_eq!(decisions(&gateway, "DENY", "deny")?, 1.0);

    // Attached to `internal` instead: it follows the name.
    gateway.reload_after(|| {
        write_atomically(
            &file,
            &api_gateways_config(
                api_port,
                internal_port,
                upstream.addr,
                &policies("internal"),
            ),
        )
    })?;
    assert_eq!(answered(api_port, "/admin/users")?, "httpbin");
    assert_eq!(answered(internal_port, "/admin/users")?, denied);

    // Attached to a Gateway that does not exist: applies nowhere.
    gateway.reload_after(|| {
        write_atomically(
            &file,
            &api_gateways_config(api_port, internal_port, upstream.addr, &policies("gone")),
        )
    })?;
    assert_eq!(answered(api_port, "/admin/users")?, "httpbin");
    assert_eq!(answered(internal_port, "/admin/users")?, "httpbin");
    Ok(())
}
