//! TLSRoute and TCPRoute conformance cases: attachment and backend references.

use gateway_tests::{TempDir, Upstream, curl, free_port};

use super::{INFRA, WEB, backend, class_and_ports, report, serve};
use crate::tls::{Key, Pki, https, served_subject, tls_secret, tls_upstream};

mod tcp_backends;

/// The suite's `gateway-tlsroute`: a Passthrough listener for `*.example.com` that admits
/// TLSRoutes of its own namespace.
fn tls_gateway() -> String {
    format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: gateway-tlsroute, namespace: {INFRA}}}
spec:
  gatewayClassName: gateway-conformance
  listeners:
  - name: https
    port: 443
    protocol: TLS
    hostname: "*.example.com"
    allowedRoutes: {{namespaces: {{from: Same}}, kinds: [{{kind: TLSRoute}}]}}
    tls: {{mode: Passthrough}}
---
"#
    )
}

/// TLSRoute `name` in `namespace` on `gateway-tlsroute` for `hostnames`, to `backend_ref`.
fn tls_route(
    name: &str,
    namespace: &str,
    extra_meta: &str,
    hostnames: &str,
    backend_ref: &str,
) -> String {
    format!(
        r#"apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TLSRoute
metadata: {{name: {name}, namespace: {namespace}{extra_meta}}}
spec:
  parentRefs: [{{name: gateway-tlsroute, namespace: {INFRA}}}]
  hostnames: {hostnames}
  rules: [{{backendRefs: [{backend_ref}]}}]
---
"#
    )
}

/// TLSRouteSimpleSameNamespace: a TLSRoute for `abc.example.com` passes the connection
/// through to its backend, whose certificate the client sees.
#[test]
fn tls_route_simple_same_namespace() -> anyhow::Result<()> {
    let dir = TempDir::new("conf-tls-simple")?;
    let pki_dir = TempDir::new("conf-tls-simple-pki")?;
    let pki = Pki::new(pki_dir.path(), "test-ca")?;
    pki.issue(
        "backend",
        "abc.example.com",
        "DNS:abc.example.com",
        Key::EcP256Pkcs8,
        false,
    )?;
    let (_backend, backend_port) = tls_upstream(&pki, "backend")?;
    let port = free_port();
    let config = class_and_ports(&[(443, port)])
        + &tls_gateway()
        + &backend(
            "tcp-backend",
            INFRA,
            8443,
            ([127, 0, 0, 1], backend_port).into(),
        )
        + &tls_route(
            "gateway-conformance-infra-test",
            INFRA,
            "",
            "[abc.example.com]",
            "{name: tcp-backend, port: 8443}",
        );
    let _gateway = serve(&dir, &config)?;
    let answer = https("abc.example.com", port, &pki.path("test-ca.crt"), "/", &[])?;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert!(answer.body.contains("s_server"), "{}", answer.body);
    Ok(())
}

/// TLSRouteInvalidReferenceGrant: a backendRef to another namespace whose ReferenceGrant
/// does not cover the Service gives ResolvedRefs=False RefNotPermitted; the hostname
/// reaches nothing.
#[test]
fn tls_route_invalid_reference_grant() -> anyhow::Result<()> {
    let dir = TempDir::new("conf-tls-grant")?;
    let pki_dir = TempDir::new("conf-tls-grant-pki")?;
    let pki = Pki::new(pki_dir.path(), "test-ca")?;
    pki.issue(
        "backend",
        "abc.example.com",
        "DNS:abc.example.com",
        Key::EcP256Pkcs8,
        false,
    )?;
    let (_backend, backend_port) = tls_upstream(&pki, "backend")?;
    let port = free_port();
    let config = class_and_ports(&[(443, port)])
        + &tls_gateway()
        + &backend(
            "tls-backend",
            WEB,
            443,
            ([127, 0, 0, 1], backend_port).into(),
        )
        + &format!(
            r#"apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {{name: reference-grant-wrong-name, namespace: {WEB}}}
spec:
  from: [{{group: gateway.networking.k8s.io, kind: TLSRoute, namespace: {INFRA}}}]
  to: [{{group: "", kind: Service, name: not-tls-backend}}]
---
"#
        )
        + &tls_route(
            "gateway-conformance-infra",
            INFRA,
            "",
            "[abc.example.com]",
            &format!("{{name: tls-backend, namespace: {WEB}, port: 443}}"),
        );
    let _gateway = serve(&dir, &config)?;
    assert_eq!(served_subject(port, Some("abc.example.com"))?, None);
    let report = report(dir.path())?;
    assert!(
        report.contains("ResolvedRefs=False RefNotPermitted"),
        "{report}"
    );
    Ok(())
}

/// Not a test of the suite but the rule its attachment tests check (allowedRoutes
/// `from: Same`), for the case that matters most at L4: a TLSRoute from another
/// namespace, older than the owner's, asks for the owner's hostname on a `Same`
/// listener. It is refused (NotAllowedByListeners) and the owner's backend keeps the
/// hostname; its other hostname reaches nothing.
#[test]
fn tls_route_from_another_namespace_cannot_take_a_hostname() -> anyhow::Result<()> {
    let dir = TempDir::new("conf-tls-takeover")?;
    let pki_dir = TempDir::new("conf-tls-takeover-pki")?;
    let pki = Pki::new(pki_dir.path(), "test-ca")?;
    pki.issue(
        "owner",
        "owner",
        "DNS:abc.example.com",
        Key::EcP256Pkcs8,
        false,
    )?;
    pki.issue(
        "thief",
        "thief",
        "DNS:abc.example.com,DNS:loot.example.com",
        Key::EcP256Pkcs8,
        false,
    )?;
    let (_owner, owner_port) = tls_upstream(&pki, "owner")?;
    let (_thief, thief_port) = tls_upstream(&pki, "thief")?;
    let port = free_port();
    let config = class_and_ports(&[(443, port)])
        + &tls_gateway()
        + &backend("owner", INFRA, 443, ([127, 0, 0, 1], owner_port).into())
        + &backend("thief", "tenant", 443, ([127, 0, 0, 1], thief_port).into())
        + &tls_route(
            "owner",
            INFRA,
            ", creationTimestamp: \"2025-01-01T00:00:00Z\"",
            "[abc.example.com]",
            "{name: owner, port: 443}",
        )
        + &tls_route(
            "thief",
            "tenant",
            ", creationTimestamp: \"2020-01-01T00:00:00Z\"",
            "[abc.example.com, loot.example.com]",
            "{name: thief, port: 443}",
        );
    let _gateway = serve(&dir, &config)?;
    let subject = served_subject(port, Some("abc.example.com"))?.unwrap_or_default();
    assert!(subject.contains("CN=owner"), "{subject}");
    assert_eq!(served_subject(port, Some("loot.example.com"))?, None);
    let report = report(dir.path())?;
    assert!(
        report.lines().any(|l| l.contains("TLSRoute tenant/thief")
            && l.contains("Accepted=False NotAllowedByListeners")),
        "{report}"
    );
    Ok(())
}

/// TCPRouteMultipleRoutesAttachment: two TCPRoutes on one TCP listener are both
/// Accepted and counted (attachedRoutes 2), and only the older one gets connections.
#[test]
fn tcp_route_multiple_routes_attachment() -> anyhow::Result<()> {
    let dir = TempDir::new("conf-tcp-multi")?;
    let older = Upstream::start(None, "127.0.0.1:0", "tcp-attach-backend-1")?;
    let newer = Upstream::start(None, "127.0.0.1:0", "tcp-attach-backend-2")?;
    let port = free_port();
    let route = |name: &str, created: &str, backend: &str| {
        format!(
            r#"apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TCPRoute
metadata: {{name: {name}, namespace: {INFRA}, creationTimestamp: "{created}"}}
spec:
  parentRefs: [{{name: tcp-multi-route-attach-gateway, sectionName: tcp}}]
  rules: [{{backendRefs: [{{name: {backend}, port: 3000}}]}}]
---
"#
        )
    };
    let config = class_and_ports(&[(9000, port)])
        + &format!(
            r#"apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: tcp-multi-route-attach-gateway, namespace: {INFRA}}}
spec:
  gatewayClassName: gateway-conformance
  listeners:
  - {{name: tcp, port: 9000, protocol: TCP, allowedRoutes: {{kinds: [{{kind: TCPRoute}}]}}}}
---
"#
        )
        + &backend("tcp-attach-backend-1", INFRA, 3000, older.addr)
        + &backend("tcp-attach-backend-2", INFRA, 3000, newer.addr)
        // The newer one first in the file: age decides, not order.
        + &route("tcproute-attach-newer", "2025-06-01T00:00:01Z", "tcp-attach-backend-2")
        + &route("tcproute-attach-older", "2025-06-01T00:00:00Z", "tcp-attach-backend-1");
    let _gateway = serve(&dir, &config)?;
    for _ in 0..10 {
        let answer = curl(None, &[&format!("http://127.0.0.1:{port}/")])?;
        assert_eq!(
            answer.json()?["upstream"],
            "tcp-attach-backend-1",
            "{answer:?}"
        );
    }
    let report = report(dir.path())?;
    assert!(
        report.contains("listener tcp: attachedRoutes 2"),
        "{report}"
    );
    for name in ["tcproute-attach-older", "tcproute-attach-newer"] {
        assert!(
            report
                .lines()
                .any(|l| l.contains(&format!("TCPRoute {INFRA}/{name}"))
                    && l.contains("Accepted=True")),
            "{report}"
        );
    }
    Ok(())
}

/// TLSRouteTerminateSimpleSameNamespace: a TLS listener with `mode: Terminate` presents
/// its certificate and hands the decrypted stream to the TLSRoute's plain-text backend.
#[test]
fn tls_route_terminate_simple_same_namespace() -> anyhow::Result<()> {
    let dir = TempDir::new("conf-tls-terminate")?;
    let pki_dir = TempDir::new("conf-tls-terminate-pki")?;
    let pki = Pki::new(pki_dir.path(), "test-ca")?;
    let (crt, key) = pki.issue(
        "gateway",
        "tls.example.com",
        "DNS:tls.example.com",
        Key::EcP256Pkcs8,
        false,
    )?;
    let plain = Upstream::start(None, "127.0.0.1:0", "tcp-backend")?;
    let port = free_port();
    let config = class_and_ports(&[(8443, port)])
        + &tls_secret("tls-terminate-checks-certificate", INFRA, &crt, &key, None)
        + &format!(
            r#"apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: gateway-tlsroute-terminate, namespace: {INFRA}}}
spec:
  gatewayClassName: gateway-conformance
  listeners:
  - name: tlsterminate
    port: 8443
    protocol: TLS
    hostname: tls.example.com
    allowedRoutes: {{namespaces: {{from: Same}}, kinds: [{{kind: TLSRoute}}]}}
    tls:
      mode: Terminate
      certificateRefs: [{{name: tls-terminate-checks-certificate}}]
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TLSRoute
metadata: {{name: tlsroute-terminated-test, namespace: {INFRA}}}
spec:
  parentRefs: [{{name: gateway-tlsroute-terminate, namespace: {INFRA}}}]
  hostnames: [tls.example.com]
  rules: [{{backendRefs: [{{name: tcp-backend, port: 3000}}]}}]
---
"#
        )
        + &backend("tcp-backend", INFRA, 3000, plain.addr);
    let _gateway = serve(&dir, &config)?;
    let subject = served_subject(port, Some("tls.example.com"))?.unwrap_or_default();
    assert!(subject.contains("CN=tls.example.com"), "{subject}");
    let answer = https("tls.example.com", port, &pki.path("test-ca.crt"), "/", &[])?;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.json()?["upstream"], "tcp-backend");
    Ok(())
}

/// TCPRouteParentRefPortAndSectionName: three TCPRoutes on one Gateway's three TCP
/// listeners, attached by `port`, by `sectionName` and by both; each listener's
/// connections reach its route's backend only.
#[test]
fn tcp_route_parent_ref_port_and_section_name() -> anyhow::Result<()> {
    let dir = TempDir::new("conf-tcp-parentref")?;
    let names = ["tcp-echo-one", "tcp-echo-two", "tcp-echo-three"];
    let upstreams = names
        .iter()
        .map(|name| Upstream::start(None, "127.0.0.1:0", name))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let binds = [free_port(), free_port(), free_port()];
    let mut config = class_and_ports(&[(9001, binds[0]), (9002, binds[1]), (9003, binds[2])])
        + &format!(
            r#"apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: tcp-parentref-gateway, namespace: {INFRA}}}
spec:
  gatewayClassName: gateway-conformance
  listeners:
  - {{name: one, port: 9001, protocol: TCP}}
  - {{name: two, port: 9002, protocol: TCP}}
  - {{name: three, port: 9003, protocol: TCP}}
---
"#
        );
    let parents = [
        "{name: tcp-parentref-gateway, port: 9001}",
        "{name: tcp-parentref-gateway, sectionName: two}",
        "{name: tcp-parentref-gateway, sectionName: three, port: 9003}",
    ];
    for ((name, upstream), parent) in names.iter().zip(&upstreams).zip(parents) {
        config += &backend(name, INFRA, 3000, upstream.addr);
        config += &format!(
            r#"apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TCPRoute
metadata: {{name: {name}, namespace: {INFRA}}}
spec:
  parentRefs: [{parent}]
  rules: [{{backendRefs: [{{name: {name}, port: 3000}}]}}]
---
"#
        );
    }
    let _gateway = serve(&dir, &config)?;
    for (bind, name) in binds.iter().zip(names) {
        let answer = curl(None, &[&format!("http://127.0.0.1:{bind}/")])?;
        assert_eq!(answer.json()?["upstream"], name, "port {bind}: {answer:?}");
    }
    Ok(())
}

/// TCPRouteInvalidNonTCPListener: a TCPRoute naming an HTTP listener that allows only
/// HTTPRoutes is Accepted=False NotAllowedByListeners, and the listener counts no route.
#[test]
fn tcp_route_invalid_non_tcp_listener() -> anyhow::Result<()> {
    let dir = TempDir::new("conf-tcp-non-tcp")?;
    let upstream = Upstream::start(None, "127.0.0.1:0", "tcp-echo-backend")?;
    let config = class_and_ports(&[(5300, free_port())])
        + &format!(
            r#"apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: tcp-mixed-protocol-gateway, namespace: {INFRA}}}
spec:
  gatewayClassName: gateway-conformance
  listeners:
  - {{name: only-allow-http-routes, protocol: HTTP, port: 5300, allowedRoutes: {{kinds: [{{kind: HTTPRoute}}]}}}}
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TCPRoute
metadata: {{name: tcp-route, namespace: {INFRA}}}
spec:
  parentRefs: [{{name: tcp-mixed-protocol-gateway, sectionName: only-allow-http-routes}}]
  rules: [{{backendRefs: [{{name: tcp-echo-backend, port: 8080}}]}}]
---
"#
        )
        + &backend("tcp-echo-backend", INFRA, 8080, upstream.addr);
    dir.write("config.yaml", &config)?;
    let report = report(dir.path())?;
    assert!(
        report
            .lines()
            .any(|l| l.contains(&format!("TCPRoute {INFRA}/tcp-route"))
                && l.contains("Accepted=False NotAllowedByListeners")),
        "{report}"
    );
    assert!(
        report.contains("listener only-allow-http-routes: attachedRoutes 0"),
        "{report}"
    );
    Ok(())
}

/// TLSRouteInvalidNoMatchingListenerHostname: TLSRoutes whose hostnames neither an exact
/// (`www.example.com`) nor a wildcard (`*.example.com`) listener accepts are
/// Accepted=False NoMatchingListenerHostname, and their hostnames reach nothing.
#[test]
fn tls_route_invalid_no_matching_listener_hostname() -> anyhow::Result<()> {
    let dir = TempDir::new("conf-tls-no-hostname")?;
    let pki_dir = TempDir::new("conf-tls-no-hostname-pki")?;
    let pki = Pki::new(pki_dir.path(), "test-ca")?;
    pki.issue(
        "backend",
        "backend",
        "DNS:foo.bar.com",
        Key::EcP256Pkcs8,
        false,
    )?;
    let (_backend, backend_port) = tls_upstream(&pki, "backend")?;
    let (exact, wildcard) = (free_port(), free_port());
    let gateway = |name: &str, port: u16, hostname: &str| {
        format!(
            r#"apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: {name}, namespace: {INFRA}}}
spec:
  gatewayClassName: gateway-conformance
  listeners:
  - {{name: tls, port: {port}, protocol: TLS, hostname: "{hostname}", tls: {{mode: Passthrough}}}}
---
"#
        )
    };
    let config = class_and_ports(&[(443, exact), (8443, wildcard)])
        + &gateway("gateway-tls-exact-hostname", 443, "www.example.com")
        + &gateway("gateway-tls-wildcard-hostname", 8443, "*.example.com")
        + &backend(
            "tls-backend",
            INFRA,
            443,
            ([127, 0, 0, 1], backend_port).into(),
        )
        + &format!(
            r#"apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TLSRoute
metadata: {{name: tlsroute-hostname-mismatch-1, namespace: {INFRA}}}
spec:
  parentRefs: [{{name: gateway-tls-exact-hostname}}]
  hostnames: [foo.bar.com]
  rules: [{{backendRefs: [{{name: tls-backend, port: 443}}]}}]
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TLSRoute
metadata: {{name: tlsroute-hostname-mismatch-2, namespace: {INFRA}}}
spec:
  parentRefs: [{{name: gateway-tls-wildcard-hostname}}]
  hostnames: [foo.bar.com]
  rules: [{{backendRefs: [{{name: tls-backend, port: 443}}]}}]
---
"#
        );
    let _gateway = serve(&dir, &config)?;
    for port in [exact, wildcard] {
        assert_eq!(
            served_subject(port, Some("foo.bar.com"))?,
            None,
            "port {port}"
        );
    }
    let report = report(dir.path())?;
    for name in [
        "tlsroute-hostname-mismatch-1",
        "tlsroute-hostname-mismatch-2",
    ] {
        assert!(
            report
                .lines()
                .any(|l| l.contains(&format!("TLSRoute {INFRA}/{name}"))
                    && l.contains("Accepted=False NoMatchingListenerHostname")),
            "{report}"
        );
    }
    Ok(())
}

/// TLSRouteMixedTerminationSameNamespace: a Terminate and a Passthrough TLS listener on
/// one port, told apart by SNI: `tls.example.com` is terminated with the Gateway's
/// certificate and its plain stream reaches `tcp-backend:3000`; `abc.example.com` passes
/// through to `tcp-backend:8443`, whose certificate the client sees. Both listeners are
/// accepted with one route each.
#[test]
fn tls_route_mixed_termination_same_namespace() -> anyhow::Result<()> {
    let dir = TempDir::new("conf-tls-mixed")?;
    let pki_dir = TempDir::new("conf-tls-mixed-pki")?;
    let pki = Pki::new(pki_dir.path(), "test-ca")?;
    let (crt, key) = pki.issue(
        "gateway",
        "tls.example.com",
        "DNS:tls.example.com",
        Key::EcP256Pkcs8,
        false,
    )?;
    pki.issue(
        "backend",
        "abc.example.com",
        "DNS:abc.example.com",
        Key::EcP256Pkcs8,
        false,
    )?;
    let (_tls_backend, tls_port) = tls_upstream(&pki, "backend")?;
    let plain = Upstream::start(None, "127.0.0.1:0", "tcp-backend")?;
    let port = free_port();
    let config = class_and_ports(&[(8883, port)])
        + &tls_secret("tls-terminate-checks-certificate", INFRA, &crt, &key, None)
        + &format!(
            r#"apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: gateway-tlsroute-mixed-termination, namespace: {INFRA}}}
spec:
  gatewayClassName: gateway-conformance
  listeners:
  - name: tls-terminate
    port: 8883
    protocol: TLS
    hostname: tls.example.com
    allowedRoutes: {{namespaces: {{from: Same}}, kinds: [{{kind: TLSRoute}}]}}
    tls:
      mode: Terminate
      certificateRefs: [{{name: tls-terminate-checks-certificate}}]
  - name: tls-passthrough
    port: 8883
    protocol: TLS
    hostname: abc.example.com
    allowedRoutes: {{namespaces: {{from: Same}}, kinds: [{{kind: TLSRoute}}]}}
    tls: {{mode: Passthrough}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: TLSRoute
metadata: {{name: gateway-conformance-mixed-passthroughroute, namespace: {INFRA}}}
spec:
  parentRefs: [{{name: gateway-tlsroute-mixed-termination, namespace: {INFRA}}}]
  hostnames: [abc.example.com]
  rules: [{{backendRefs: [{{name: tcp-backend, port: 8443}}]}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: TLSRoute
metadata: {{name: gateway-conformance-mixed-terminateroute, namespace: {INFRA}}}
spec:
  parentRefs: [{{name: gateway-tlsroute-mixed-termination, namespace: {INFRA}}}]
  hostnames: [tls.example.com]
  rules: [{{backendRefs: [{{name: tcp-backend, port: 3000}}]}}]
---
apiVersion: v1
kind: Service
metadata: {{name: tcp-backend, namespace: {INFRA}}}
spec:
  ports:
  - {{name: tls, port: 8443, targetPort: {tls_port}}}
  - {{name: plain, port: 3000, targetPort: {plain_port}}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: tcp-backend-1, namespace: {INFRA}, labels: {{kubernetes.io/service-name: tcp-backend}}}}
addressType: IPv4
ports: [{{name: tls, port: {tls_port}}}, {{name: plain, port: {plain_port}}}]
endpoints:
- addresses: ["127.0.0.1"]
---
"#,
            plain_port = plain.addr.port(),
        );
    let _gateway = serve(&dir, &config)?;
    let ca = pki.path("test-ca.crt");
    // Terminated: the Gateway's certificate, the plain backend's answer.
    let subject = served_subject(port, Some("tls.example.com"))?.unwrap_or_default();
    assert!(subject.contains("CN=tls.example.com"), "{subject}");
    let answer = https("tls.example.com", port, &ca, "/", &[])?;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.json()?["upstream"], "tcp-backend");
    // Passed through: the backend's own certificate and answer.
    let subject = served_subject(port, Some("abc.example.com"))?.unwrap_or_default();
    assert!(subject.contains("CN=abc.example.com"), "{subject}");
    let answer = https("abc.example.com", port, &ca, "/", &[])?;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert!(answer.body.contains("s_server"), "{}", answer.body);
    let report = report(dir.path())?;
    for listener in ["tls-terminate", "tls-passthrough"] {
        let line = report
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("listener {listener}:")))
            .unwrap_or_default();
        assert!(line.contains("attachedRoutes 1"), "{report}");
        assert!(line.contains("Accepted=True Accepted"), "{report}");
    }
    Ok(())
}

/// TLSRouteHostnameIntersection: each of the suite's four Gateways (listener hostname
/// exact, `*.example.com`, `*.com`, none) with its TLSRoutes, served on its own (the
/// suite gives each Gateway its own address): a TLSRoute serves the intersection of its
/// hostnames and the listener's, the more specific host wins, and an SNI name outside
/// every intersection is refused.
#[test]
fn tls_route_hostname_intersection() -> anyhow::Result<()> {
    let pki_dir = TempDir::new("conf-tls-intersection-pki")?;
    let pki = Pki::new(pki_dir.path(), "test-ca")?;
    let sans = "DNS:abc.example.com,DNS:other.example.com,DNS:non.matching.com";
    pki.issue("tls-backend", "tls-backend", sans, Key::EcP256Pkcs8, false)?;
    pki.issue(
        "tls-backend-2",
        "tls-backend-2",
        sans,
        Key::EcP256Pkcs8,
        false,
    )?;
    let (_b1, b1_port) = tls_upstream(&pki, "tls-backend")?;
    let (_b2, b2_port) = tls_upstream(&pki, "tls-backend-2")?;
    let route = |name: &str, gateway: &str, hostname: &str, backend: &str| {
        format!(
            r#"apiVersion: gateway.networking.k8s.io/v1
kind: TLSRoute
metadata: {{name: {name}, namespace: {INFRA}}}
spec:
  parentRefs: [{{name: {gateway}, namespace: {INFRA}}}]
  hostnames: ["{hostname}"]
  rules: [{{backendRefs: [{{name: {backend}, port: 443}}]}}]
---
"#
        )
    };
    // (Gateway, its listener hostname, its routes (name, hostname, backend), the SNI
    // names that must be refused).
    type Case<'c> = (
        &'c str,
        Option<&'c str>,
        Vec<(&'c str, &'c str, &'c str)>,
        &'c str,
    );
    let cases: [Case; 4] = [
        (
            "gw-tlsroute-exact-hostname-x-1",
            Some("abc.example.com"),
            vec![(
                "tlsroute-more-specific-wc-hostname-x-1",
                "*.example.com",
                "tls-backend",
            )],
            "non.matching.com",
        ),
        (
            "gw-tlsroute-more-specific-wc-hostname-x-2",
            Some("*.example.com"),
            vec![
                (
                    "tlsroute-exact-hostname-x-2",
                    "abc.example.com",
                    "tls-backend",
                ),
                (
                    "tlsroute-less-specific-wc-hostname-x-2",
                    "*.com",
                    "tls-backend-2",
                ),
            ],
            "non.matching.com",
        ),
        (
            "gw-tlsroute-less-specific-wc-hostname-x-3",
            Some("*.com"),
            vec![
                (
                    "tlsroute-exact-hostname-x-3",
                    "abc.example.com",
                    "tls-backend",
                ),
                (
                    "tlsroute-more-specific-wc-hostname-x-3",
                    "*.example.com",
                    "tls-backend-2",
                ),
            ],
            "non.matching.com",
        ),
        (
            "gw-tlsroute-empty-hostname-x-4",
            None,
            vec![
                (
                    "tlsroute-exact-hostname-x-4",
                    "abc.example.com",
                    "tls-backend",
                ),
                (
                    "tlsroute-less-specific-wc-hostname-x-4",
                    "*.com",
                    "tls-backend-2",
                ),
            ],
            "non.matching.org",
        ),
    ];
    for (gateway, hostname, routes, refused) in cases {
        let dir = TempDir::new("conf-tls-intersection")?;
        let port = free_port();
        let hostname = hostname.map_or(String::new(), |h| format!("\n    hostname: \"{h}\""));
        let mut config = class_and_ports(&[(443, port)])
            + &format!(
                r#"apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: {gateway}, namespace: {INFRA}}}
spec:
  gatewayClassName: gateway-conformance
  listeners:
  - name: listener
    protocol: TLS
    port: 443{hostname}
    allowedRoutes: {{namespaces: {{from: Same}}, kinds: [{{kind: TLSRoute}}]}}
    tls: {{mode: Passthrough}}
---
"#
            )
            + &backend("tls-backend", INFRA, 443, ([127, 0, 0, 1], b1_port).into())
            + &backend(
                "tls-backend-2",
                INFRA,
                443,
                ([127, 0, 0, 1], b2_port).into(),
            );
        for (name, host, to) in &routes {
            config += &route(name, gateway, host, to);
        }
        let _gateway = serve(&dir, &config)?;
        let wildcard_backend = if routes.len() > 1 {
            "tls-backend-2"
        } else {
            "tls-backend"
        };
        for (sni, want) in [
            ("abc.example.com", "tls-backend"),
            ("other.example.com", wildcard_backend),
        ] {
            if routes.len() == 1 && sni != "abc.example.com" {
                continue;
            }
            let subject = served_subject(port, Some(sni))?.unwrap_or_default();
            assert_eq!(subject, format!("CN={want}"), "{gateway}: {sni}");
        }
        assert_eq!(
            served_subject(port, Some(refused))?,
            None,
            "{gateway}: {refused}"
        );
    }
    Ok(())
}

/// The report's line for listener `listener` of Gateway `gateway` (infra namespace).
fn l4_listener_line(report: &str, gateway: &str, listener: &str) -> String {
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

/// TLSRouteListenerPassthroughSupportedKinds: a Passthrough TLS listener that allows
/// TCPRoute and TLSRoute supports TLSRoute only: its supportedKinds is `[TLSRoute]` and
/// ResolvedRefs=False InvalidRouteKinds, with no route attached.
#[test]
fn tls_route_listener_passthrough_supported_kinds() -> anyhow::Result<()> {
    let dir = TempDir::new("conf-tls-passthrough-kinds")?;
    let name = "gateway-tlsroute-passthrough-supported-kind";
    let config = class_and_ports(&[(443, free_port())])
        + &format!(
            r#"apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: {name}, namespace: {INFRA}}}
spec:
  gatewayClassName: gateway-conformance
  listeners:
  - name: tls-passthrough
    port: 443
    protocol: TLS
    allowedRoutes: {{namespaces: {{from: Same}}, kinds: [{{kind: TCPRoute}}, {{kind: TLSRoute}}]}}
    tls: {{mode: Passthrough}}
---
"#
        );
    dir.write("config.yaml", &config)?;
    let text = report(dir.path())?;
    let line = l4_listener_line(&text, name, "tls-passthrough");
    assert!(line.contains("attachedRoutes 0;"), "{text}");
    assert!(
        line.contains("ResolvedRefs=False InvalidRouteKinds"),
        "{text}"
    );
    assert!(line.ends_with("supportedKinds: [TLSRoute]"), "{text}");
    Ok(())
}

/// TLSRouteListenerTerminateSupportedKinds: a TLS listener with `mode: Terminate`
/// (termination is supported here) is Accepted with supportedKinds `[TLSRoute]` and no
/// route attached.
#[test]
fn tls_route_listener_terminate_supported_kinds() -> anyhow::Result<()> {
    let dir = TempDir::new("conf-tls-terminate-kinds")?;
    let pki_dir = TempDir::new("conf-tls-terminate-kinds-pki")?;
    let pki = Pki::new(pki_dir.path(), "test-ca")?;
    let (crt, key) = pki.issue(
        "gateway",
        "terminate.example.com",
        "DNS:terminate.example.com",
        Key::EcP256Pkcs8,
        false,
    )?;
    let name = "gateway-tlsroute-terminate-supported";
    let config = class_and_ports(&[(8443, free_port())])
        + &tls_secret("tls-terminate-checks-certificate", INFRA, &crt, &key, None)
        + &format!(
            r#"apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: {name}, namespace: {INFRA}}}
spec:
  gatewayClassName: gateway-conformance
  listeners:
  - name: tls-terminate
    port: 8443
    protocol: TLS
    hostname: terminate.example.com
    allowedRoutes: {{namespaces: {{from: Same}}, kinds: [{{kind: TLSRoute}}]}}
    tls:
      mode: Terminate
      certificateRefs: [{{name: tls-terminate-checks-certificate}}]
---
"#
        );
    dir.write("config.yaml", &config)?;
    let text = report(dir.path())?;
    let line = l4_listener_line(&text, name, "tls-terminate");
    assert!(
        line.contains("attachedRoutes 0; Accepted=True Accepted;"),
        "{text}"
    );
    assert!(line.ends_with("supportedKinds: [TLSRoute]"), "{text}");
    Ok(())
}
