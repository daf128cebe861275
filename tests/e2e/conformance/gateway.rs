//! Gateway-level cases: several Gateways of our class on one port, frontend
//! client-certificate validation.

use gateway_tests::{CurlResponse, Gateway, TempDir, Upstream, curl, free_port};

use super::{INFRA, WEB, backend, class_and_ports, report, serve};
use crate::tls::{Key, Pki, https, tls_secret};

/// Gateway `name` in the infra namespace, created at `created`, with `listeners`.
fn gateway(name: &str, created: &str, listeners: &str) -> String {
    format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: {name}, namespace: {INFRA}, creationTimestamp: "{created}"}}
spec:
  gatewayClassName: gateway-conformance
  listeners:
{listeners}---
"#
    )
}

/// An HTTPRoute to `backend_ref` with `parents` and `hostnames`, paths under `prefix`.
fn route(name: &str, parents: &str, hostnames: &str, prefix: &str, to: &str) -> String {
    format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {name}, namespace: {INFRA}}}
spec:
  parentRefs: {parents}
  hostnames: {hostnames}
  rules:
  - matches: [{{path: {{type: PathPrefix, value: {prefix}}}}}]
    backendRefs: [{{name: {to}, port: 8080}}]
---
"#
    )
}

/// HTTPRouteMultipleGateways, on one address: the suite's `same-namespace` and
/// `all-namespaces` Gateways both listen on port 80 with no hostname. A node-local data
/// plane serves them on one port, so the listeners merge: a route attached to both
/// serves through both, and each Gateway's dedicated route serves its own hostname (the
/// suite tells the Gateways apart by address, which one port cannot; distinct hostnames
/// do). A third, younger Gateway whose TCP listener wants port 80 is the one conflicted
/// (`ProtocolConflict`), and a fourth whose routes want a hostname the oldest already
/// serves is conflicted (`HostnameConflict`); the older Gateways keep serving.
#[test]
fn http_route_multiple_gateways_on_one_port() -> anyhow::Result<()> {
    let dir = TempDir::new("conf-multiple-gateways")?;
    let v1 = Upstream::start(None, "127.0.0.1:0", "infra-backend-v1")?;
    let v2 = Upstream::start(None, "127.0.0.1:0", "infra-backend-v2")?;
    let v3 = Upstream::start(None, "127.0.0.1:0", "infra-backend-v3")?;
    let port = free_port();
    let http =
        "  - {name: http, port: 80, protocol: HTTP, allowedRoutes: {namespaces: {from: All}}}\n";
    let config = class_and_ports(&[(80, port)])
        + &gateway("same-namespace", "2025-01-01T00:00:00Z", http)
        + &gateway("all-namespaces", "2025-02-01T00:00:00Z", http)
        + &gateway(
            "tcp-latecomer",
            "2025-03-01T00:00:00Z",
            "  - {name: tcp, port: 80, protocol: TCP}\n",
        )
        + &gateway("http-latecomer", "2025-04-01T00:00:00Z", http)
        + &backend("infra-backend-v1", INFRA, 8080, v1.addr)
        + &backend("infra-backend-v2", INFRA, 8080, v2.addr)
        + &backend("infra-backend-v3", INFRA, 8080, v3.addr)
        + &route(
            "multiple-gateways-shared-route",
            "[{name: same-namespace}, {name: all-namespaces}]",
            "[shared.example.com]",
            "/shared",
            "infra-backend-v1",
        )
        + &route(
            "same-namespace-dedicated-route",
            "[{name: same-namespace}]",
            "[same.example.com]",
            "/",
            "infra-backend-v2",
        )
        + &route(
            "all-namespaces-dedicated-route",
            "[{name: all-namespaces}]",
            "[all.example.com]",
            "/",
            "infra-backend-v3",
        )
        + &route(
            "latecomer-route",
            "[{name: http-latecomer}]",
            "[same.example.com]",
            "/",
            "infra-backend-v3",
        );
    let _gateway = serve(&dir, &config)?;
    let cases = [
        ("shared.example.com", "/shared", 200, "infra-backend-v1"),
        ("same.example.com", "/", 200, "infra-backend-v2"),
        ("all.example.com", "/", 200, "infra-backend-v3"),
        ("shared.example.com", "/other", 404, ""),
    ];
    for (host, path, status, want) in cases {
        let url = format!("http://127.0.0.1:{port}{path}");
        let header = format!("Host: {host}");
        let answer = curl(None, &["-H", &header, &url])?;
        assert_eq!(answer.status, status, "{host}{path}: {answer:?}");
        if status == 200 {
            assert_eq!(answer.json()?["upstream"], want, "{host}{path}");
        }
    }
    let report = report(dir.path())?;
    let listener = |gateway: &str, name: &str| {
        let start = report
            .find(&format!("\nGateway {INFRA}/{gateway}: Accepted"))
            .unwrap_or(report.len());
        let rest = &report[start..];
        let at = rest
            .find(&format!("\n  listener {name}:"))
            .map_or("", |i| &rest[i..]);
        at.lines().nth(1).unwrap_or("").to_owned()
    };
    for gateway in ["same-namespace", "all-namespaces"] {
        let line = listener(gateway, "http");
        assert!(line.contains("Programmed=True"), "{gateway}: {report}");
        assert!(
            line.contains("Conflicted=False NoConflicts"),
            "{gateway}: {report}"
        );
    }
    let tcp = listener("tcp-latecomer", "tcp");
    assert!(tcp.contains("Accepted=False ProtocolConflict"), "{report}");
    assert!(
        tcp.contains("Programmed=False ProtocolConflict"),
        "{report}"
    );
    assert!(tcp.contains("Conflicted=True ProtocolConflict"), "{report}");
    let late = listener("http-latecomer", "http");
    assert!(
        late.contains("Conflicted=True HostnameConflict"),
        "{report}"
    );
    assert!(late.contains("same.example.com"), "{report}");
    Ok(())
}

/// HTTPRouteMultipleGateways: the suite's `same-namespace` and `all-namespaces` Gateways
/// both listen on port 80 with no hostname, and the suite tells them apart by address
/// (each Gateway gets its own). Here each names its address in `spec.addresses`
/// (127.0.0.2 and 127.0.0.3, on the loopback): the shared route serves `/shared` through
/// both, and each Gateway's catch-all route serves `/` on its own address only. Status
/// reports each Gateway's address; neither Gateway is served on other addresses.
#[test]
fn http_route_multiple_gateways() -> anyhow::Result<()> {
    let dir = TempDir::new("conf-http-route-multiple-gateways")?;
    let v1 = Upstream::start(None, "127.0.0.1:0", "infra-backend-v1")?;
    let v2 = Upstream::start(None, "127.0.0.1:0", "infra-backend-v2")?;
    let v3 = Upstream::start(None, "127.0.0.1:0", "infra-backend-v3")?;
    let port = free_port();
    let with_address = |name: &str, from: &str, address: &str| {
        format!(
            r#"apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: {name}, namespace: {INFRA}}}
spec:
  gatewayClassName: gateway-conformance
  addresses: [{{type: IPAddress, value: {address}}}]
  listeners:
  - {{name: http, port: 80, protocol: HTTP, allowedRoutes: {{namespaces: {{from: {from}}}}}}}
---
"#
        )
    };
    let config = class_and_ports(&[(80, port)])
        + &with_address("same-namespace", "Same", "127.0.0.2")
        + &with_address("all-namespaces", "All", "127.0.0.3")
        + &backend("infra-backend-v1", INFRA, 8080, v1.addr)
        + &backend("infra-backend-v2", INFRA, 8080, v2.addr)
        + &backend("infra-backend-v3", INFRA, 8080, v3.addr)
        + &route(
            "multiple-gateways-shared-route",
            "[{name: same-namespace}, {name: all-namespaces}]",
            "[]",
            "/shared",
            "infra-backend-v1",
        )
        + &route(
            "same-namespace-dedicated-route",
            "[{name: same-namespace}]",
            "[]",
            "/",
            "infra-backend-v2",
        )
        + &route(
            "all-namespaces-dedicated-route",
            "[{name: all-namespaces}]",
            "[]",
            "/",
            "infra-backend-v3",
        );
    let _gateway = serve(&dir, &config)?;
    let cases = [
        ("127.0.0.2", "/shared", "infra-backend-v1"),
        ("127.0.0.2", "/", "infra-backend-v2"),
        ("127.0.0.3", "/shared", "infra-backend-v1"),
        ("127.0.0.3", "/", "infra-backend-v3"),
    ];
    for (address, path, want) in cases {
        let answer = curl(None, &[&format!("http://{address}:{port}{path}")])?;
        assert_eq!(answer.status, 200, "{address}{path}: {answer:?}");
        assert_eq!(answer.json()?["upstream"], want, "{address}{path}");
    }
    assert!(
        curl(None, &[&format!("http://127.0.0.1:{port}/shared")]).is_err(),
        "served on an address neither Gateway asked for"
    );
    let report = report(dir.path())?;
    for (gateway, address) in [
        ("same-namespace", "127.0.0.2"),
        ("all-namespaces", "127.0.0.3"),
    ] {
        let line = report
            .lines()
            .find(|l| l.starts_with(&format!("Gateway {INFRA}/{gateway}:")))
            .unwrap_or_default();
        assert!(line.contains("Accepted=True Accepted"), "{report}");
        assert!(line.contains("Programmed=True Programmed"), "{report}");
        assert!(
            line.ends_with(&format!("addresses: [{address}]")),
            "{report}"
        );
    }
    assert!(!report.contains("Conflicted=True"), "{report}");
    for route in [
        "multiple-gateways-shared-route",
        "same-namespace-dedicated-route",
        "all-namespaces-dedicated-route",
    ] {
        let parents: Vec<&str> = report
            .lines()
            .filter(|l| l.starts_with(&format!("HTTPRoute {INFRA}/{route}:")))
            .collect();
        assert!(!parents.is_empty(), "{route}: {report}");
        assert!(
            parents.iter().all(|l| l.contains("Accepted=True")),
            "{route}: {report}"
        );
    }
    Ok(())
}

/// GatewayStaticAddresses: a Gateway with an address of a type we do not support is
/// not accepted (UnsupportedAddress); without it, one the node cannot listen on
/// (192.0.2.1, TEST-NET-1) leaves it accepted but not programmed (AddressNotUsable);
/// without that too, it is programmed and reports the usable address (127.0.0.2) alone,
/// where it serves. The suite patches one Gateway three times; here each step is a
/// configuration of its own, read by `gatewayd validate`, and the last one is served.
#[test]
fn gateway_static_addresses() -> anyhow::Result<()> {
    let upstream = Upstream::start(None, "127.0.0.1:0", "infra-backend-v1")?;
    let port = free_port();
    let invalid = "  - {type: test/fake-invalid-type, value: \"fake address teehee!\"}\n";
    let unusable = "  - {value: 192.0.2.1}\n";
    let usable = "  - {value: 127.0.0.2}\n";
    let config = |addresses: &str| {
        class_and_ports(&[(8080, port)])
            + &format!(
                r#"apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: gateway-static-addresses, namespace: {INFRA}}}
spec:
  gatewayClassName: gateway-conformance
  addresses:
{addresses}  listeners:
  - {{name: http, port: 8080, protocol: HTTP}}
---
"#
            )
            + &backend("infra-backend-v1", INFRA, 8080, upstream.addr)
            + &route(
                "static-addresses-route",
                "[{name: gateway-static-addresses}]",
                "[]",
                "/",
                "infra-backend-v1",
            )
    };
    let gateway_line = |dir: &TempDir| -> anyhow::Result<String> {
        let report = report(dir.path())?;
        Ok(report
            .lines()
            .find(|l| l.starts_with(&format!("Gateway {INFRA}/gateway-static-addresses:")))
            .unwrap_or_default()
            .to_owned())
    };
    let steps = TempDir::new("conf-static-addresses-steps")?;
    steps.write(
        "config.yaml",
        &config(&format!("{invalid}{unusable}{usable}")),
    )?;
    let line = gateway_line(&steps)?;
    assert!(line.contains("Accepted=False UnsupportedAddress"), "{line}");
    steps.write("config.yaml", &config(&format!("{unusable}{usable}")))?;
    let line = gateway_line(&steps)?;
    assert!(line.contains("Accepted=True Accepted"), "{line}");
    assert!(line.contains("Programmed=False AddressNotUsable"), "{line}");
    assert!(
        line.contains("192.0.2.1"),
        "the message names the address: {line}"
    );

    let dir = TempDir::new("conf-static-addresses")?;
    let _gateway = serve(&dir, &config(usable))?;
    let line = gateway_line(&dir)?;
    assert!(line.contains("Accepted=True Accepted"), "{line}");
    assert!(line.contains("Programmed=True Programmed"), "{line}");
    assert!(line.ends_with("addresses: [127.0.0.2]"), "{line}");
    let report = report(dir.path())?;
    assert!(
        report.contains("listener http: attachedRoutes 1; Accepted=True Accepted; Programmed=True Programmed; ResolvedRefs=True"),
        "{report}"
    );
    let answer = curl(None, &[&format!("http://127.0.0.2:{port}/")])?;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.json()?["upstream"], "infra-backend-v1");
    Ok(())
}

/// A ConfigMap `name` in the infra namespace holding `ca` as `ca.crt`.
fn ca_config_map(name: &str, ca: &str) -> String {
    let block: String = ca.lines().map(|l| format!("    {l}\n")).collect();
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}, namespace: {INFRA}}}\ndata:\n  ca.crt: |\n{block}---\n"
    )
}

/// The suite's certificates: the server's (`tls-validity-checks-certificate`, for
/// `example.org` and `second-example.org`) and two client CAs, each with a client.
struct FrontendPki {
    _dirs: [TempDir; 2],
    server: Pki,
    per_port: Pki,
}

impl FrontendPki {
    fn new(label: &str) -> anyhow::Result<Self> {
        let dirs = [
            TempDir::new(&format!("{label}-pki"))?,
            TempDir::new(&format!("{label}-pki2"))?,
        ];
        let server = Pki::new(dirs[0].path(), "test-ca")?;
        server.issue(
            "server",
            "example.org",
            "DNS:example.org,DNS:second-example.org",
            Key::EcP256Pkcs8,
            false,
        )?;
        server.issue(
            "client",
            "client",
            "DNS:client.example.org",
            Key::EcP256Pkcs8,
            true,
        )?;
        let per_port = Pki::new(dirs[1].path(), "per-port-ca")?;
        per_port.issue(
            "client",
            "per-port-client",
            "DNS:client.example.org",
            Key::EcP256Pkcs8,
            true,
        )?;
        Ok(FrontendPki {
            _dirs: dirs,
            server,
            per_port,
        })
    }

    /// The Secret and ConfigMaps the suite's manifests name.
    fn config(&self) -> anyhow::Result<String> {
        let read = |pki: &Pki, file: &str| std::fs::read_to_string(pki.path(file));
        Ok(tls_secret(
            "tls-validity-checks-certificate",
            INFRA,
            &read(&self.server, "server.crt")?,
            &read(&self.server, "server.key")?,
            None,
        ) + &ca_config_map(
            "tls-validity-checks-ca-certificate",
            &read(&self.server, "test-ca.crt")?,
        ) + &ca_config_map(
            "tls-validity-checks-per-port-ca-certificate",
            &read(&self.per_port, "per-port-ca.crt")?,
        ))
    }

    /// GET / for `host` on `port` with the client certificate of `client` (none: no
    /// certificate); Err when the handshake is refused.
    fn get(&self, host: &str, port: u16, client: Option<&Pki>) -> anyhow::Result<CurlResponse> {
        let ca = self.server.path("test-ca.crt");
        let Some(pki) = client else {
            return https(host, port, &ca, "/", &[]);
        };
        let (cert, key) = (pki.path("client.crt"), pki.path("client.key"));
        https(host, port, &ca, "/", &["--cert", &cert, "--key", &key])
    }
}

/// The suite's `client-validation-default` Gateway: HTTPS on 443 and on 8443 (for
/// `second-example.org`) with `frontend` validation `validation` (YAML under
/// `spec.tls.frontend`), and its two routes.
fn client_validation_gateway(frontend: &str) -> String {
    format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: client-validation-default, namespace: {INFRA}}}
spec:
  gatewayClassName: gateway-conformance
  tls:
    frontend:
{frontend}  listeners:
  - name: https
    port: 443
    protocol: HTTPS
    allowedRoutes: {{namespaces: {{from: Same}}}}
    tls: {{certificateRefs: [{{group: "", kind: Secret, name: tls-validity-checks-certificate, namespace: {INFRA}}}]}}
  - name: https-with-hostname
    port: 8443
    hostname: second-example.org
    protocol: HTTPS
    allowedRoutes: {{namespaces: {{from: Same}}}}
    tls: {{certificateRefs: [{{group: "", kind: Secret, name: tls-validity-checks-certificate, namespace: {INFRA}}}]}}
---
"#
    ) + &route(
        "client-certificate-validation-https-test",
        "[{name: client-validation-default}]",
        "[example.org]",
        "/",
        "infra-backend-v1",
    ) + &route(
        "client-certificate-validation-https-test-no-hostname",
        "[{name: client-validation-default, sectionName: https-with-hostname}]",
        "[]",
        "/",
        "infra-backend-v2",
    )
}

/// gatewayd with `client_validation_gateway(frontend)` and the suite's backends; the
/// bound ports for 443 and 8443.
fn serve_client_validation(
    label: &str,
    pki: &FrontendPki,
    frontend: &str,
) -> anyhow::Result<(TempDir, gateway_tests::Gateway, [Upstream; 2], u16, u16)> {
    let dir = TempDir::new(label)?;
    let v1 = Upstream::start(None, "127.0.0.1:0", "infra-backend-v1")?;
    let v2 = Upstream::start(None, "127.0.0.1:0", "infra-backend-v2")?;
    let (p443, p8443) = (free_port(), free_port());
    let config = class_and_ports(&[(443, p443), (8443, p8443)])
        + &pki.config()?
        + &backend("infra-backend-v1", INFRA, 8080, v1.addr)
        + &backend("infra-backend-v2", INFRA, 8080, v2.addr)
        + &client_validation_gateway(frontend);
    let gateway = serve(&dir, &config)?;
    Ok((dir, gateway, [v1, v2], p443, p8443))
}

/// GatewayFrontendClientCertificateValidation: `default` validation asks every HTTPS
/// port for a client certificate from its CA, a `perPort` entry replaces it on its port;
/// a client of the other CA is refused at the handshake.
#[test]
fn gateway_frontend_client_certificate_validation() -> anyhow::Result<()> {
    let pki = FrontendPki::new("conf-frontend-validation")?;
    let frontend = "      default:\n        validation:\n          caCertificateRefs: [{kind: ConfigMap, group: \"\", name: tls-validity-checks-ca-certificate}]\n      perPort:\n      - port: 8443\n        tls:\n          validation:\n            caCertificateRefs: [{kind: ConfigMap, group: \"\", name: tls-validity-checks-per-port-ca-certificate}]\n";
    let (dir, gateway, _upstreams, p443, p8443) =
        serve_client_validation("conf-frontend-validation", &pki, frontend)?;
    let answer = pki.get("example.org", p443, Some(&pki.server))?;
    assert_eq!(answer.status, 200, "{answer:?}\n{}", gateway.stderr());
    assert_eq!(answer.json()?["upstream"], "infra-backend-v1");
    assert!(pki.get("example.org", p443, Some(&pki.per_port)).is_err());
    assert!(pki.get("example.org", p443, None).is_err());
    let answer = pki.get("second-example.org", p8443, Some(&pki.per_port))?;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.json()?["upstream"], "infra-backend-v2");
    assert!(
        pki.get("second-example.org", p8443, Some(&pki.server))
            .is_err()
    );
    let report = report(dir.path())?;
    assert!(!report.contains("NoValidCACertificate"), "{report}");
    assert!(
        !report.contains("InsecureFrontendValidationMode"),
        "{report}"
    );
    Ok(())
}

/// GatewayFrontendClientCertificateValidationInsecureFallback: with
/// `mode: AllowInsecureFallback` (on `default` and on the `perPort` entry for 8443) every
/// client is served on both ports: one with a certificate of the port's CA, one with a
/// certificate of the other CA, and one without a certificate; the Gateway reports
/// `InsecureFrontendValidationMode=True ConfigurationChanged`.
#[test]
fn gateway_frontend_client_certificate_validation_insecure_fallback() -> anyhow::Result<()> {
    let pki = FrontendPki::new("conf-frontend-fallback")?;
    let frontend = "      default:\n        validation:\n          mode: AllowInsecureFallback\n          caCertificateRefs: [{kind: ConfigMap, group: \"\", name: tls-validity-checks-ca-certificate}]\n      perPort:\n      - port: 8443\n        tls:\n          validation:\n            mode: AllowInsecureFallback\n            caCertificateRefs: [{kind: ConfigMap, group: \"\", name: tls-validity-checks-per-port-ca-certificate}]\n";
    let (dir, gateway, _upstreams, p443, p8443) =
        serve_client_validation("conf-frontend-fallback", &pki, frontend)?;
    let text = report(dir.path())?;
    assert!(
        text.contains("InsecureFrontendValidationMode=True ConfigurationChanged"),
        "{text}"
    );
    for (host, port, upstream) in [
        ("example.org", p443, "infra-backend-v1"),
        ("second-example.org", p8443, "infra-backend-v2"),
    ] {
        for client in [Some(&pki.server), Some(&pki.per_port), None] {
            let answer = pki.get(host, port, client)?;
            assert_eq!(answer.status, 200, "{answer:?}\n{}", gateway.stderr());
            assert_eq!(answer.json()?["upstream"], upstream);
        }
    }
    Ok(())
}

/// AllowInsecureFallback serves a certificate the CA did not sign, but never trusts it:
/// an impostor whose certificate (from another CA) names the same SPIFFE identity as a
/// real client gets no `x-forwarded-client-cert` (a forged one is dropped too) and is
/// not that principal for an AuthorizationPolicy, exactly as a client without a
/// certificate; the real client is both. The JSON access log marks each request's
/// certificate (verified, unverified, none) and names the SNI.
#[test]
fn insecure_fallback_never_trusts_an_unverified_certificate() -> anyhow::Result<()> {
    let dirs = [
        TempDir::new("conf-fallback-trust-pki")?,
        TempDir::new("conf-fallback-trust-pki2")?,
    ];
    let pki = Pki::new(dirs[0].path(), "test-ca")?;
    pki.issue(
        "server",
        "example.org",
        "DNS:example.org,DNS:second-example.org",
        Key::EcP256Pkcs8,
        false,
    )?;
    let identity = "URI:spiffe://cluster.local/ns/frontend/sa/web";
    pki.issue("client", "web", identity, Key::EcP256Pkcs8, true)?;
    let impostor = Pki::new(dirs[1].path(), "impostor-ca")?;
    impostor.issue("client", "web", identity, Key::EcP256Pkcs8, true)?;
    let read = |pki: &Pki, file: &str| std::fs::read_to_string(pki.path(file));
    let dir = TempDir::new("conf-fallback-trust")?;
    let v1 = Upstream::start(None, "127.0.0.1:0", "infra-backend-v1")?;
    let p443 = free_port();
    let frontend = "      default:\n        validation:\n          mode: AllowInsecureFallback\n          caCertificateRefs: [{kind: ConfigMap, group: \"\", name: tls-validity-checks-ca-certificate}]\n";
    let config = class_and_ports(&[(443, p443), (8443, free_port())])
        + &tls_secret(
            "tls-validity-checks-certificate",
            INFRA,
            &read(&pki, "server.crt")?,
            &read(&pki, "server.key")?,
            None,
        )
        + &ca_config_map(
            "tls-validity-checks-ca-certificate",
            &read(&pki, "test-ca.crt")?,
        )
        + &backend("infra-backend-v1", INFRA, 8080, v1.addr)
        + &backend("infra-backend-v2", INFRA, 8080, v1.addr)
        + &client_validation_gateway(frontend)
        + &crate::authz::policy(
            "web-only",
            "istio-system",
            "rules:\n- from: [{source: {principals: [cluster.local/ns/frontend/sa/web]}}]\n  to: [{operation: {paths: [/web/*]}}]\n- to: [{operation: {paths: [/open/*]}}]",
        );
    dir.write("config.yaml", &config)?;
    let gateway = Gateway::start(
        dir.path(),
        &["--ebpf", "off", "--access-log", "json"],
        None,
        &dir,
    )?;
    let ca = pki.path("test-ca.crt");
    let get = |client: Option<&Pki>, path: &str| {
        let mut args = vec![
            "-H",
            "x-forwarded-client-cert: Hash=forged;URI=spiffe://cluster.local/ns/frontend/sa/web",
        ];
        let (cert, key);
        if let Some(client) = client {
            (cert, key) = (client.path("client.crt"), client.path("client.key"));
            args.extend(["--cert", &cert, "--key", &key]);
        }
        https("example.org", p443, &ca, path, &args)
    };
    let xfcc = |answer: &CurlResponse| -> anyhow::Result<Option<String>> {
        Ok(answer.json()?["headers"]["x-forwarded-client-cert"]
            .as_str()
            .map(str::to_owned))
    };
    // The real client: its identity is forwarded and allowed.
    let answer = get(Some(&pki), "/web/a")?;
    assert_eq!(answer.status, 200, "{answer:?}\n{}", gateway.stderr());
    let forwarded = xfcc(&answer)?.unwrap_or_default();
    assert!(
        forwarded.contains("URI=spiffe://cluster.local/ns/frontend/sa/web")
            && !forwarded.contains("forged"),
        "{forwarded}"
    );
    // The impostor and the client without a certificate: served where anyone is, with no
    // identity forwarded, and refused where the identity is required.
    for client in [Some(&impostor), None] {
        let answer = get(client, "/open/a")?;
        assert_eq!(answer.status, 200, "{answer:?}");
        assert_eq!(xfcc(&answer)?, None, "{answer:?}");
        let answer = get(client, "/web/a")?;
        assert_eq!(answer.status, 403, "{answer:?}");
    }
    // One line per request above, in order: the real client, then the impostor's two
    // requests, then the two without a certificate.
    let lines: Vec<serde_json::Value> = gateway
        .access_log()
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let marks: Vec<_> = lines
        .iter()
        .map(|l| l["downstream_peer_certificate"].as_str())
        .collect();
    assert_eq!(
        marks,
        [
            Some("verified"),
            Some("unverified"),
            Some("unverified"),
            None,
            None
        ],
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .all(|l| l["requested_server_name"] == "example.org"),
        "{lines:?}"
    );
    Ok(())
}

/// GatewayInvalidFrontendClientCertificateValidation: a port whose caCertificateRefs
/// name a missing ConfigMap (InvalidCACertificateRef), or a Service
/// (InvalidCACertificateKind), has no valid CA: its listener is not accepted
/// (NoValidCACertificate) nor served, while the default's port serves.
#[test]
fn gateway_invalid_frontend_client_certificate_validation() -> anyhow::Result<()> {
    let pki = FrontendPki::new("conf-frontend-invalid")?;
    let frontend = "      default:\n        validation:\n          caCertificateRefs: [{kind: ConfigMap, group: \"\", name: tls-validity-checks-ca-certificate}]\n      perPort:\n      - port: 8443\n        tls:\n          validation:\n            caCertificateRefs: [{kind: ConfigMap, group: \"\", name: non-exisitng-cm}]\n";
    let (dir, gateway, _upstreams, p443, p8443) =
        serve_client_validation("conf-frontend-invalid", &pki, frontend)?;
    let answer = pki.get("example.org", p443, Some(&pki.server))?;
    assert_eq!(answer.status, 200, "{answer:?}\n{}", gateway.stderr());
    assert!(
        pki.get("second-example.org", p8443, Some(&pki.per_port))
            .is_err()
    );
    let text = report(dir.path())?;
    let listener = text
        .lines()
        .find(|l| l.trim_start().starts_with("listener https-with-hostname:"))
        .unwrap_or_default();
    assert!(
        listener.contains("ResolvedRefs=False InvalidCACertificateRef"),
        "{text}"
    );
    assert!(
        listener.contains("Accepted=False NoValidCACertificate"),
        "{text}"
    );
    assert!(listener.contains("Programmed=False"), "{text}");

    let dir = TempDir::new("conf-frontend-invalid-kind")?;
    let frontend = "      default:\n        validation:\n          caCertificateRefs: [{kind: Service, group: \"\", name: infra-backend-v2}]\n";
    dir.write(
        "config.yaml",
        &(class_and_ports(&[(443, free_port())])
            + &pki.config()?
            + &client_validation_gateway(frontend)),
    )?;
    let text = report(dir.path())?;
    let listener = text
        .lines()
        .find(|l| l.trim_start().starts_with("listener https:"))
        .unwrap_or_default();
    assert!(
        listener.contains("ResolvedRefs=False InvalidCACertificateKind"),
        "{text}"
    );
    assert!(
        listener.contains("Accepted=False NoValidCACertificate"),
        "{text}"
    );
    Ok(())
}

/// Gateway `name` with one HTTPS listener `https` on 443 for routes of every namespace,
/// its certificate `certificate_ref` (flow YAML); `addresses` (flow YAML, `[]` for the
/// node's) where the suite gives each Gateway an address of its own.
fn https_gateway(name: &str, addresses: &str, certificate_ref: &str) -> String {
    format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: {name}, namespace: {INFRA}}}
spec:
  gatewayClassName: gateway-conformance
  addresses: {addresses}
  listeners:
  - name: https
    port: 443
    protocol: HTTPS
    allowedRoutes: {{namespaces: {{from: All}}}}
    tls: {{certificateRefs: [{certificate_ref}]}}
---
"#
    )
}

/// A ReferenceGrant `name` in `namespace` from `from` to `to` (each flow YAML).
fn reference_grant(name: &str, namespace: &str, from: &str, to: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: ReferenceGrant\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec:\n  from: [{from}]\n  to: [{to}]\n---\n"
    )
}

/// The report's status line of listener `listener` of Gateway `gateway`.
fn listener_line(report: &str, gateway: &str, listener: &str) -> String {
    let start = report
        .find(&format!("\nGateway {INFRA}/{gateway}: "))
        .map_or(report.len(), |at| at + 1);
    report[start..]
        .lines()
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .find(|l| l.trim_start().starts_with(&format!("listener {listener}:")))
        .unwrap_or_default()
        .to_owned()
}

/// The suite's `certificate` Secret in the web-backend namespace (for `example.org`),
/// its CA's path, and the temp dir holding them.
fn web_certificate(label: &str) -> anyhow::Result<(String, String, TempDir)> {
    let dir = TempDir::new(label)?;
    let pki = Pki::new(dir.path(), "test-ca")?;
    let (cert, key) = pki.issue(
        "server",
        "example.org",
        "DNS:example.org",
        Key::EcP256Pkcs8,
        false,
    )?;
    Ok((
        tls_secret("certificate", WEB, &cert, &key, None),
        pki.path("test-ca.crt"),
        dir,
    ))
}

/// The certificateRef of the suite's Secret-reference cases.
fn web_certificate_ref() -> String {
    format!("{{group: \"\", kind: Secret, name: certificate, namespace: {WEB}}}")
}

/// A Gateway whose listener takes the web namespace's `certificate` under `grant`
/// (YAML, possibly empty): the listener's report line, and whether a client trusting
/// the certificate's CA completes a handshake for `example.org` (no route is attached,
/// so a served listener answers 404).
fn secret_reference_case(
    label: &str,
    gateway: &str,
    grants: &str,
) -> anyhow::Result<(String, bool)> {
    let (secret, ca, _pki) = web_certificate(&format!("{label}-pki"))?;
    let dir = TempDir::new(label)?;
    let port = free_port();
    let config = class_and_ports(&[(443, port)])
        + &secret
        + &https_gateway(gateway, "[]", &web_certificate_ref())
        + grants;
    let _gateway = serve(&dir, &config)?;
    let served = match https("example.org", port, &ca, "/", &[]) {
        Ok(answer) => {
            assert_eq!(answer.status, 404, "{answer:?}");
            true
        }
        Err(_) => false,
    };
    Ok((
        listener_line(&report(dir.path())?, gateway, "https"),
        served,
    ))
}

/// GatewaySecretReferenceGrantAllInNamespace: a ReferenceGrant in the Secret's namespace
/// for every Secret there, from Gateways of the infra namespace, lets the listener use
/// it: ResolvedRefs=True and Programmed=True, no routes attached, and the listener
/// serves the certificate.
#[test]
fn gateway_secret_reference_grant_all_in_namespace() -> anyhow::Result<()> {
    let grant = reference_grant(
        "reference-grant-all-in-namespace",
        WEB,
        &format!("{{group: gateway.networking.k8s.io, kind: Gateway, namespace: {INFRA}}}"),
        "{group: \"\", kind: Secret}",
    );
    let (line, served) = secret_reference_case(
        "conf-secret-grant-all",
        "gateway-secret-reference-grant-all-in-namespace",
        &grant,
    )?;
    assert!(
        line.contains("attachedRoutes 0; Accepted=True Accepted; Programmed=True Programmed; ResolvedRefs=True"),
        "{line}"
    );
    assert!(served, "the granted certificate is not served");
    Ok(())
}

/// GatewaySecretReferenceGrantSpecific: a ReferenceGrant naming the Secret lets the
/// listener use it: ResolvedRefs=True and Programmed=True, and it serves the certificate.
#[test]
fn gateway_secret_reference_grant_specific() -> anyhow::Result<()> {
    let grant = reference_grant(
        "reference-grant-specific",
        WEB,
        &format!("{{group: gateway.networking.k8s.io, kind: Gateway, namespace: {INFRA}}}"),
        "{group: \"\", kind: Secret, name: certificate}",
    );
    let (line, served) = secret_reference_case(
        "conf-secret-grant-specific",
        "gateway-secret-reference-grant-specific",
        &grant,
    )?;
    assert!(
        line.contains("attachedRoutes 0; Accepted=True Accepted; Programmed=True Programmed; ResolvedRefs=True"),
        "{line}"
    );
    assert!(served, "the granted certificate is not served");
    Ok(())
}

/// GatewaySecretMissingReferenceGrant: without a ReferenceGrant the Secret in another
/// namespace is not used: ResolvedRefs=False RefNotPermitted, the listener is not
/// programmed and no handshake completes.
#[test]
fn gateway_secret_missing_reference_grant() -> anyhow::Result<()> {
    let (line, served) = secret_reference_case(
        "conf-secret-grant-missing",
        "gateway-secret-missing-reference-grant",
        "",
    )?;
    assert!(line.contains("attachedRoutes 0"), "{line}");
    assert!(
        line.contains("ResolvedRefs=False RefNotPermitted"),
        "{line}"
    );
    assert!(line.contains("Programmed=False"), "{line}");
    assert!(!served, "a certificate no grant allows is served");
    Ok(())
}

/// GatewaySecretInvalidReferenceGrant: seven ReferenceGrants that each get one thing
/// wrong (their namespace, the from group, kind or namespace, the to group, kind or
/// name) grant nothing: ResolvedRefs=False RefNotPermitted, not programmed, not served.
#[test]
fn gateway_secret_invalid_reference_grant() -> anyhow::Result<()> {
    let from = format!("{{group: gateway.networking.k8s.io, kind: Gateway, namespace: {INFRA}}}");
    let to = "{group: \"\", kind: Secret, name: certificate}";
    let grants = [
        reference_grant(
            "reference-grant-wrong-namespace",
            "gateway-conformance-app-backend",
            &from,
            to,
        ),
        reference_grant(
            "reference-grant-wrong-from-group",
            WEB,
            &format!("{{group: not-the-group-youre-looking-for, kind: Gateway, namespace: {INFRA}}}"),
            to,
        ),
        reference_grant(
            "reference-grant-wrong-from-kind",
            WEB,
            &format!("{{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: {INFRA}}}"),
            to,
        ),
        reference_grant(
            "reference-grant-wrong-from-namespace",
            WEB,
            "{group: gateway.networking.k8s.io, kind: Gateway, namespace: not-the-namespace-youre-looking-for}",
            to,
        ),
        reference_grant(
            "reference-grant-wrong-to-group",
            WEB,
            &from,
            "{group: not-the-group-youre-looking-for, kind: Secret, name: not-the-certificate-youre-looking-for}",
        ),
        reference_grant(
            "reference-grant-wrong-to-kind",
            WEB,
            &from,
            "{group: \"\", kind: Service, name: certificate}",
        ),
        reference_grant(
            "reference-grant-wrong-to-name",
            WEB,
            &from,
            "{group: \"\", kind: Secret, name: not-the-certificate-youre-looking-for}",
        ),
    ]
    .concat();
    let (line, served) = secret_reference_case(
        "conf-secret-grant-invalid",
        "gateway-secret-invalid-reference-grant",
        &grants,
    )?;
    assert!(line.contains("attachedRoutes 0"), "{line}");
    assert!(
        line.contains("ResolvedRefs=False RefNotPermitted"),
        "{line}"
    );
    assert!(line.contains("Programmed=False"), "{line}");
    assert!(!served, "a certificate no grant allows is served");
    Ok(())
}

/// GatewayInvalidTLSConfiguration: four Gateways whose HTTPS listener names a Secret
/// that does not exist, a Secret of another group, a kind that is not a Secret, or a
/// Secret that holds no certificate (the suite's "Hello world" PEM): each listener is
/// ResolvedRefs=False InvalidCertificateRef with no routes, and none is programmed. The
/// suite gives each Gateway an address of its own; here each names one in
/// `spec.addresses` (127.0.0.2 to 127.0.0.5), so they share port 443 without conflict.
#[test]
fn gateway_invalid_tls_configuration() -> anyhow::Result<()> {
    let dir = TempDir::new("conf-invalid-tls")?;
    let pki_dir = TempDir::new("conf-invalid-tls-pki")?;
    let pki = Pki::new(pki_dir.path(), "test-ca")?;
    let (cert, key) = pki.issue(
        "server",
        "example.org",
        "DNS:example.org",
        Key::EcP256Pkcs8,
        false,
    )?;
    let port = free_port();
    let gateways = [
        (
            "gateway-certificate-nonexistent-secret",
            "127.0.0.2",
            "{group: \"\", kind: Secret, name: nonexistent-certificate}",
        ),
        (
            "gateway-certificate-unsupported-group",
            "127.0.0.3",
            "{group: wrong.group.company.io, kind: Secret, name: tls-validity-checks-certificate}",
        ),
        (
            "gateway-certificate-unsupported-kind",
            "127.0.0.4",
            "{group: \"\", kind: WrongKind, name: tls-validity-checks-certificate}",
        ),
        (
            "gateway-certificate-malformed-secret",
            "127.0.0.5",
            "{group: \"\", kind: Secret, name: malformed-certificate}",
        ),
    ];
    let mut config = class_and_ports(&[(443, port)])
        // The suite's valid Secret, which the wrong group and the wrong kind name: only
        // the reference's group and kind make those invalid.
        + &tls_secret("tls-validity-checks-certificate", INFRA, &cert, &key, None)
        // base64 of "Hello world\n" for both the certificate and the key, as the suite's.
        + &format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: malformed-certificate, namespace: {INFRA}}}\ntype: kubernetes.io/tls\ndata: {{tls.crt: SGVsbG8gd29ybGQK, tls.key: SGVsbG8gd29ybGQK}}\n---\n"
        );
    for (name, address, certificate_ref) in gateways {
        config += &https_gateway(name, &format!("[{{value: {address}}}]"), certificate_ref);
    }
    dir.write("config.yaml", &config)?;
    let report = report(dir.path())?;
    for (name, _, _) in gateways {
        let line = listener_line(&report, name, "https");
        assert!(line.contains("attachedRoutes 0"), "{name}: {report}");
        assert!(
            line.contains("ResolvedRefs=False InvalidCertificateRef"),
            "{name}: {report}"
        );
        assert!(line.contains("Programmed=False"), "{name}: {report}");
        assert!(!line.contains("Conflicted=True"), "{name}: {report}");
    }
    Ok(())
}

/// The `supportedKinds` and conditions the suite asks of an HTTP listener here, with
/// `attached` routes.
fn expect_http_listener(report: &str, gateway: &str, listener: &str, attached: usize) {
    let line = listener_line(report, gateway, listener);
    assert!(
        line.contains(&format!("attachedRoutes {attached}; Accepted=True"))
            && line.contains("ResolvedRefs=True"),
        "{gateway} {listener}: {report}"
    );
}

/// GatewayWithAttachedRoutesWithPort8080: of a Gateway's two HTTP listeners, on 8080 and
/// 80, the route names `http` (80) by `sectionName`: both listeners are accepted with
/// their references resolved, `http` counts the route and `http-unattached` none. Port
/// 80 serves the route; 8080 has no route (404).
#[test]
fn gateway_with_attached_routes_with_port_8080() -> anyhow::Result<()> {
    let name = "gateway-with-two-listeners-and-one-attached-route";
    let upstream = Upstream::start(None, "127.0.0.1:0", "infra-backend-v1")?;
    let (http, http_8080) = (free_port(), free_port());
    let config = class_and_ports(&[(80, http), (8080, http_8080)])
        + &backend("infra-backend-v1", INFRA, 8080, upstream.addr)
        + &gateway(
            name,
            "2024-01-01T00:00:00Z",
            "  - {name: http-unattached, port: 8080, protocol: HTTP, allowedRoutes: {kinds: [{kind: HTTPRoute}], namespaces: {from: All}}}\n  - {name: http, port: 80, protocol: HTTP, allowedRoutes: {kinds: [{kind: HTTPRoute}], namespaces: {from: All}}}\n",
        )
        + &format!(
            r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: http-route-4-port-8080, namespace: {INFRA}}}
spec:
  parentRefs: [{{kind: Gateway, name: {name}, namespace: {INFRA}, sectionName: http}}]
  rules: [{{backendRefs: [{{name: infra-backend-v1, port: 8080}}]}}]
---
"#
        );
    let dir = TempDir::new("conf-attached-routes-8080")?;
    let _gateway = serve(&dir, &config)?;
    let report = report(dir.path())?;
    expect_http_listener(&report, name, "http-unattached", 0);
    expect_http_listener(&report, name, "http", 1);
    let served = curl(None, &[&format!("http://127.0.0.1:{http}/")])?;
    assert_eq!(served.status, 200, "{served:?}");
    assert_eq!(served.json()?["upstream"], "infra-backend-v1");
    let unattached = curl(None, &[&format!("http://127.0.0.1:{http_8080}/")])?;
    assert_eq!(unattached.status, 404, "{unattached:?}");
    Ok(())
}

/// GatewayModifyListeners: the suite's two Gateways, `gateway-add-listener` (HTTPS for
/// `secure.test.com`) and `gateway-remove-listener` (that and HTTP on 80), each with a
/// route attached to the whole Gateway. Adding an HTTP listener for `data.test.com` to
/// the first gives it two listeners each counting the route, and its address starts
/// serving `data.test.com` on port 80; removing the HTTPS listener from the second
/// leaves its `http` listener with the route, and its address stops serving HTTPS. The
/// suite patches the Gateways; here each step is a configuration of its own, and each
/// Gateway names its address (127.0.0.2, 127.0.0.3) where the suite's implementation
/// gives each its own (on one address their HTTPS listeners' equal hostnames conflict).
#[test]
fn gateway_modify_listeners() -> anyhow::Result<()> {
    let pki_dir = TempDir::new("conf-modify-listeners-pki")?;
    let pki = Pki::new(pki_dir.path(), "test-ca")?;
    let (cert, key) = pki.issue(
        "server",
        "secure.test.com",
        "DNS:secure.test.com",
        Key::EcP256Pkcs8,
        false,
    )?;
    let ca = pki.path("test-ca.crt");
    let secret = tls_secret("tls-validity-checks-certificate", INFRA, &cert, &key, None);
    let upstream = Upstream::start(None, "127.0.0.1:0", "infra-backend-v1")?;
    let (http, https_port) = (free_port(), free_port());
    let https_listener = format!(
        "  - {{name: https, port: 443, protocol: HTTPS, hostname: secure.test.com, allowedRoutes: {{namespaces: {{from: All}}}}, tls: {{certificateRefs: [{{group: \"\", kind: Secret, name: tls-validity-checks-certificate, namespace: {INFRA}}}]}}}}\n"
    );
    let http_listener = |hostname: &str| {
        format!(
            "  - {{name: http, port: 80, protocol: HTTP{hostname}, allowedRoutes: {{namespaces: {{from: All}}}}}}\n"
        )
    };
    let gateway_at = |name: &str, address: &str, listeners: &str| {
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: {name}, namespace: {INFRA}}}\nspec:\n  gatewayClassName: gateway-conformance\n  addresses: [{{type: IPAddress, value: {address}}}]\n  listeners:\n{listeners}---\n"
        )
    };
    let route = |name: &str, parent: &str| {
        format!(
            r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {name}, namespace: {INFRA}}}
spec:
  parentRefs: [{{kind: Gateway, name: {parent}, namespace: {INFRA}}}]
  rules: [{{backendRefs: [{{name: infra-backend-v1, port: 8080}}]}}]
---
"#
        )
    };
    let config = |add: &str, remove: &str| {
        class_and_ports(&[(80, http), (443, https_port)])
            + &secret
            + &backend("infra-backend-v1", INFRA, 8080, upstream.addr)
            + &gateway_at("gateway-add-listener", "127.0.0.2", add)
            + &route("http-route-1", "gateway-add-listener")
            + &gateway_at("gateway-remove-listener", "127.0.0.3", remove)
            + &route("http-route-2", "gateway-remove-listener")
    };
    let plain = |address: &str, host: &str| {
        curl(
            None,
            &[
                "-H",
                &format!("Host: {host}"),
                &format!("http://{address}:{http}/"),
            ],
        )
    };
    let secure = |address: &str| {
        curl(
            None,
            &[
                "--resolve",
                &format!("secure.test.com:{https_port}:{address}"),
                "--cacert",
                &ca,
                &format!("https://secure.test.com:{https_port}/"),
            ],
        )
    };
    let both = format!("{https_listener}{}", http_listener(""));

    // As applied: the first Gateway has its HTTPS listener only.
    let dir = TempDir::new("conf-modify-listeners-before")?;
    let gatewayd = serve(&dir, &config(&https_listener, &both))?;
    let text = report(dir.path())?;
    expect_http_listener(&text, "gateway-add-listener", "https", 1);
    assert_eq!(
        listener_line(&text, "gateway-add-listener", "http"),
        "",
        "{text}"
    );
    expect_http_listener(&text, "gateway-remove-listener", "https", 1);
    expect_http_listener(&text, "gateway-remove-listener", "http", 1);
    assert_eq!(secure("127.0.0.2")?.status, 200);
    assert!(
        plain("127.0.0.2", "data.test.com").is_err(),
        "no HTTP listener yet"
    );
    drop(gatewayd);

    // Add: an HTTP listener for data.test.com on the first Gateway.
    let added = format!(
        "{https_listener}{}",
        http_listener(", hostname: data.test.com")
    );
    let dir = TempDir::new("conf-modify-listeners-added")?;
    let gatewayd = serve(&dir, &config(&added, &both))?;
    let text = report(dir.path())?;
    expect_http_listener(&text, "gateway-add-listener", "https", 1);
    expect_http_listener(&text, "gateway-add-listener", "http", 1);
    let data = plain("127.0.0.2", "data.test.com")?;
    assert_eq!(data.status, 200, "{data:?}");
    assert_eq!(data.json()?["upstream"], "infra-backend-v1");
    assert_eq!(secure("127.0.0.3")?.status, 200);
    drop(gatewayd);

    // Remove: the second Gateway keeps its `http` listener only.
    let dir = TempDir::new("conf-modify-listeners-removed")?;
    let _gatewayd = serve(&dir, &config(&added, &http_listener("")))?;
    let text = report(dir.path())?;
    expect_http_listener(&text, "gateway-remove-listener", "http", 1);
    assert_eq!(
        listener_line(&text, "gateway-remove-listener", "https"),
        "",
        "{text}"
    );
    assert_eq!(plain("127.0.0.3", "example.com")?.status, 200);
    assert!(
        secure("127.0.0.3").is_err(),
        "the removed HTTPS listener still serves"
    );
    assert_eq!(secure("127.0.0.2")?.status, 200);
    Ok(())
}

/// GatewayFrontendInvalidDefaultClientCertificateValidation: a `default` validation
/// naming a ConfigMap that does not exist (and a `perPort` entry for the HTTP port 80,
/// which has no TLS) makes the HTTPS listener ResolvedRefs=False InvalidCACertificateRef,
/// Accepted=False NoValidCACertificate, Programmed=False and refuses its handshake, while
/// the HTTP listener is accepted, programmed and serves the route.
#[test]
fn gateway_frontend_invalid_default_client_certificate_validation() -> anyhow::Result<()> {
    let pki = FrontendPki::new("conf-frontend-invalid-default")?;
    let name = "invalid-default-client-validation-config";
    let dir = TempDir::new("conf-frontend-invalid-default")?;
    let v1 = Upstream::start(None, "127.0.0.1:0", "infra-backend-v1")?;
    let (p80, p443) = (free_port(), free_port());
    let config = class_and_ports(&[(80, p80), (443, p443)])
        + &pki.config()?
        + &backend("infra-backend-v1", INFRA, 8080, v1.addr)
        + &format!(
            r#"apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: {name}, namespace: {INFRA}}}
spec:
  gatewayClassName: gateway-conformance
  tls:
    frontend:
      default:
        validation:
          caCertificateRefs: [{{kind: ConfigMap, group: "", name: does-not-exist}}]
      perPort:
      - port: 80
        tls:
          validation:
            caCertificateRefs: [{{kind: ConfigMap, group: "", name: tls-validity-checks-per-port-ca-certificate}}]
  listeners:
  - name: https
    port: 443
    protocol: HTTPS
    allowedRoutes: {{namespaces: {{from: Same}}}}
    tls: {{certificateRefs: [{{group: "", kind: Secret, name: tls-validity-checks-certificate, namespace: {INFRA}}}]}}
  - {{name: http, port: 80, protocol: HTTP, allowedRoutes: {{namespaces: {{from: Same}}}}}}
---
"#
        )
        + &route(
            name,
            &format!("[{{name: {name}}}]"),
            "[example.org]",
            "/",
            "infra-backend-v1",
        );
    let gateway = serve(&dir, &config)?;
    let text = report(dir.path())?;
    let http = listener_line(&text, name, "http");
    assert!(
        http.contains("Accepted=True")
            && http.contains("Programmed=True")
            && http.contains("ResolvedRefs=True"),
        "{text}"
    );
    let answer = curl(
        None,
        &[
            "-H",
            "Host: example.org",
            &format!("http://127.0.0.1:{p80}/"),
        ],
    )?;
    assert_eq!(answer.status, 200, "{answer:?}\n{}", gateway.stderr());
    assert_eq!(answer.json()?["upstream"], "infra-backend-v1");

    let https_line = listener_line(&text, name, "https");
    assert!(
        https_line.contains("ResolvedRefs=False InvalidCACertificateRef")
            && https_line.contains("Accepted=False NoValidCACertificate")
            && https_line.contains("Programmed=False"),
        "{text}"
    );
    // The suite's client trusts the server certificate and offers none of its own.
    assert!(pki.get("example.org", p443, None).is_err());
    assert!(pki.get("example.org", p443, Some(&pki.server)).is_err());
    Ok(())
}

/// GatewayInvalidParametersRef: a Gateway whose `spec.infrastructure.parametersRef` names
/// a kind we do not support, or a ConfigMap that does not exist, is `Accepted=False
/// InvalidParameters`, the message saying which; as Istio, its listeners keep serving. A
/// ConfigMap that exists in its namespace is accepted.
#[test]
fn gateway_invalid_parameters_ref() -> anyhow::Result<()> {
    let upstream = Upstream::start(None, "127.0.0.1:0", "infra-backend-v1")?;
    let port = free_port();
    let with_ref = |name: &str, group: &str, kind: &str, target: &str| {
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: {name}, namespace: {INFRA}}}\nspec:\n  gatewayClassName: gateway-conformance\n  listeners:\n  - {{name: http, port: 80, protocol: HTTP, hostname: {name}.example.com}}\n  infrastructure:\n    parametersRef: {{group: \"{group}\", kind: {kind}, name: {target}}}\n---\n"
        )
    };
    let config = class_and_ports(&[(80, port)])
        + &with_ref(
            "gateway-invalid-parameters-ref",
            "invalid.io",
            "InvalidParameters",
            "invalid",
        )
        + &with_ref("missing-parameters", "", "ConfigMap", "does-not-exist")
        + &with_ref("good-parameters", "", "ConfigMap", "gateway-params")
        + &format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: gateway-params, namespace: {INFRA}}}\ndata: {{replicas: \"2\"}}\n---\n"
        )
        + &backend("infra-backend-v1", INFRA, 8080, upstream.addr)
        + &route(
            "to-all",
            "[{name: gateway-invalid-parameters-ref}, {name: missing-parameters}, {name: good-parameters}]",
            "[]",
            "/",
            "infra-backend-v1",
        );
    let dir = TempDir::new("conf-invalid-parameters-ref")?;
    let gateway = serve(&dir, &config)?;
    let report = report(dir.path())?;
    let line = |name: &str| {
        report
            .lines()
            .find(|l| l.starts_with(&format!("Gateway {INFRA}/{name}:")))
            .unwrap_or_default()
            .to_owned()
    };
    let invalid = line("gateway-invalid-parameters-ref");
    assert!(
        invalid.contains("Accepted=False InvalidParameters")
            && invalid.contains("invalid.io/InvalidParameters"),
        "{report}"
    );
    let missing = line("missing-parameters");
    assert!(
        missing.contains("Accepted=False InvalidParameters") && missing.contains("does-not-exist"),
        "{report}"
    );
    assert!(
        line("good-parameters").contains("Accepted=True Accepted"),
        "{report}"
    );
    for name in [
        "gateway-invalid-parameters-ref",
        "missing-parameters",
        "good-parameters",
    ] {
        let answer = curl(
            None,
            &[
                "-H",
                &format!("host: {name}.example.com"),
                &format!("http://127.0.0.1:{port}/"),
            ],
        )?;
        assert_eq!(
            answer.status,
            200,
            "{name}: {answer:?}\n{}",
            gateway.stderr()
        );
    }
    Ok(())
}

/// GatewayNameMaximumLength: a Gateway with a 253-character name (the longest a
/// Kubernetes name may be) is reconciled and served like any other.
#[test]
fn gateway_name_maximum_length() -> anyhow::Result<()> {
    let prefix = "gateway-name-maximum-length-";
    let name = format!("{prefix}{}", "a".repeat(253 - prefix.len()));
    let upstream = Upstream::start(None, "127.0.0.1:0", "infra-backend-v1")?;
    let port = free_port();
    let config = class_and_ports(&[(80, port)])
        + &gateway(
            &name,
            "2026-01-01T00:00:00Z",
            "  - {name: http, port: 80, protocol: HTTP}\n",
        )
        + &backend("infra-backend-v1", INFRA, 8080, upstream.addr)
        + &route(
            "long-parent",
            &format!("[{{name: {name}}}]"),
            "[]",
            "/",
            "infra-backend-v1",
        );
    let dir = TempDir::new("conf-name-maximum-length")?;
    let gateway = serve(&dir, &config)?;
    let report = report(dir.path())?;
    let line = report
        .lines()
        .find(|l| l.starts_with(&format!("Gateway {INFRA}/{name}:")))
        .unwrap_or_default();
    assert!(
        line.contains("Accepted=True Accepted") && line.contains("Programmed=True Programmed"),
        "{report}"
    );
    let answer = curl(None, &[&format!("http://127.0.0.1:{port}/")])?;
    assert_eq!(answer.status, 200, "{answer:?}\n{}", gateway.stderr());
    assert_eq!(answer.json()?["upstream"], "infra-backend-v1");
    Ok(())
}
