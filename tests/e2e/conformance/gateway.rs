//! Gateway-level cases: several Gateways of our class on one port.

use gateway_tests::{TempDir, Upstream, curl, free_port};

use super::{INFRA, backend, class_and_ports, report, serve};

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
