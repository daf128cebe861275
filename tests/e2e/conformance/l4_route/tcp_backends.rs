//! TCPRoute backend and attachment cases (and TLSRoute invalid backends): a backend that
//! does not exist, one in another namespace with and without a ReferenceGrant, a route
//! attached to every listener. The backends are demo upstreams; HTTP through the TCP
//! listener shows which one answered.

use gateway_tests::{TempDir, Upstream, curl, free_port};

use crate::conformance::{INFRA, WEB, backend, class_and_ports, report, serve};

/// A Gateway `name` with TCP listeners (name, port) that allow TCPRoutes.
fn tcp_gateway(name: &str, listeners: &[(&str, u16)]) -> String {
    let listeners: String = listeners
        .iter()
        .map(|(listener, port)| {
            format!(
                "  - {{name: {listener}, protocol: TCP, port: {port}, allowedRoutes: {{kinds: [{{kind: TCPRoute}}]}}}}\n"
            )
        })
        .collect();
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: {name}, namespace: {INFRA}}}\nspec:\n  gatewayClassName: gateway-conformance\n  listeners:\n{listeners}---\n"
    )
}

/// A TCPRoute `name` with `parent` (inside the parentRef) to `backend_ref` (flow YAML).
fn tcp_route(name: &str, parent: &str, backend_ref: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1alpha2\nkind: TCPRoute\nmetadata: {{name: {name}, namespace: {INFRA}}}\nspec:\n  parentRefs: [{{{parent}}}]\n  rules: [{{backendRefs: [{backend_ref}]}}]\n---\n"
    )
}

/// The report's line for TCPRoute `name`.
fn route_line(report: &str, name: &str) -> String {
    report
        .lines()
        .find(|l| l.starts_with(&format!("TCPRoute {INFRA}/{name}:")))
        .unwrap_or_default()
        .to_owned()
}

/// TCPRouteInvalidBackendRefNonexistent: a backendRef to a Service that does not exist
/// is ResolvedRefs=False BackendNotFound; a connection reaches nothing.
#[test]
fn tcp_route_invalid_backend_ref_nonexistent() -> anyhow::Result<()> {
    let dir = TempDir::new("conf-tcp-nonexistent")?;
    let port = free_port();
    let config = class_and_ports(&[(9300, port)])
        + &tcp_gateway("tcp-gateway-invalid-backend", &[("tcp", 9300)])
        + &tcp_route(
            "tcp-route-invalid-backend-ref-nonexistent",
            "name: tcp-gateway-invalid-backend, sectionName: tcp",
            "{name: nonexistent-service, port: 8080}",
        );
    let _gateway = serve(&dir, &config)?;
    let report = report(dir.path())?;
    let line = route_line(&report, "tcp-route-invalid-backend-ref-nonexistent");
    assert!(
        line.contains("ResolvedRefs=False BackendNotFound"),
        "{report}"
    );
    assert!(
        curl(None, &[&format!("http://127.0.0.1:{port}/")]).is_err(),
        "a connection to a route without a backend is answered"
    );
    Ok(())
}

/// TCPRouteInvalidCrossNamespaceBackendRef: a backendRef to another namespace's Service
/// without a ReferenceGrant is ResolvedRefs=False RefNotPermitted (the route is still
/// accepted), and no connection reaches that Service.
#[test]
fn tcp_route_invalid_cross_namespace_backend_ref() -> anyhow::Result<()> {
    let dir = TempDir::new("conf-tcp-invalid-xns")?;
    let upstream = Upstream::start(None, "127.0.0.1:0", "tcp-invalid-xns-backend")?;
    let port = free_port();
    let config = class_and_ports(&[(9321, port)])
        + &tcp_gateway(
            "tcp-invalid-cross-namespace-backend-ref-gateway",
            &[("tcp", 9321)],
        )
        + &backend("tcp-invalid-xns-backend", WEB, 3000, upstream.addr)
        + &tcp_route(
            "tcp-invalid-cross-namespace-backend-ref",
            "name: tcp-invalid-cross-namespace-backend-ref-gateway, sectionName: tcp",
            &format!("{{name: tcp-invalid-xns-backend, namespace: {WEB}, port: 3000}}"),
        );
    let _gateway = serve(&dir, &config)?;
    let report = report(dir.path())?;
    let line = route_line(&report, "tcp-invalid-cross-namespace-backend-ref");
    assert!(line.contains("Accepted=True"), "{report}");
    assert!(
        line.contains("ResolvedRefs=False RefNotPermitted"),
        "{report}"
    );
    assert!(
        curl(None, &[&format!("http://127.0.0.1:{port}/")]).is_err(),
        "a connection reached the Service no grant allows"
    );
    Ok(())
}

/// TCPRouteReferenceGrant: the web namespace's ReferenceGrant lets the infra namespace's
/// TCPRoute reach its Service; without the grant (the suite deletes it; here a second
/// configuration) the route is ResolvedRefs=False RefNotPermitted.
#[test]
fn tcp_route_reference_grant() -> anyhow::Result<()> {
    let upstream = Upstream::start(None, "127.0.0.1:0", "tcp-reference-grant-backend")?;
    let port = free_port();
    let grant = format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: ReferenceGrant\nmetadata: {{name: tcp-reference-grant, namespace: {WEB}}}\nspec:\n  from: [{{group: gateway.networking.k8s.io, kind: TCPRoute, namespace: {INFRA}}}]\n  to: [{{group: \"\", kind: Service, name: tcp-reference-grant-backend}}]\n---\n"
    );
    let config = class_and_ports(&[(9320, port)])
        + &tcp_gateway("tcp-reference-grant-gateway", &[("tcp", 9320)])
        + &backend("tcp-reference-grant-backend", WEB, 3000, upstream.addr)
        + &tcp_route(
            "tcp-reference-grant",
            "name: tcp-reference-grant-gateway, sectionName: tcp",
            &format!("{{name: tcp-reference-grant-backend, namespace: {WEB}, port: 3000}}"),
        );
    let dir = TempDir::new("conf-tcp-reference-grant")?;
    let gateway = serve(&dir, &format!("{config}{grant}"))?;
    let answer = curl(None, &[&format!("http://127.0.0.1:{port}/")])?;
    assert_eq!(answer.json()?["upstream"], "tcp-reference-grant-backend");
    let line = route_line(&report(dir.path())?, "tcp-reference-grant");
    assert!(
        line.contains("Accepted=True") && line.contains("ResolvedRefs=True"),
        "{line}"
    );
    drop(gateway);

    let revoked = TempDir::new("conf-tcp-reference-grant-revoked")?;
    revoked.write("config.yaml", &config)?;
    let line = route_line(&report(revoked.path())?, "tcp-reference-grant");
    assert!(
        line.contains("ResolvedRefs=False RefNotPermitted"),
        "{line}"
    );
    Ok(())
}

/// TCPRouteParentRefAttachAll: a TCPRoute whose parentRef names the Gateway alone (no
/// `sectionName`, no `port`) attaches to each of its four TCP listeners and is served on
/// every one of their ports.
#[test]
fn tcp_route_parent_ref_attach_all() -> anyhow::Result<()> {
    let dir = TempDir::new("conf-tcp-attach-all")?;
    let upstream = Upstream::start(None, "127.0.0.1:0", "tcp-echo-attach-all")?;
    let ports = [9310, 9311, 9312, 9313].map(|p| (p, free_port()));
    let names = ["one", "two", "three", "four"];
    let listeners: Vec<(&str, u16)> = names
        .iter()
        .zip(&ports)
        .map(|(n, (p, _))| (*n, *p))
        .collect();
    let config = class_and_ports(&ports)
        + &tcp_gateway("tcp-attach-all-gateway", &listeners)
        + &backend("tcp-echo-attach-all", INFRA, 3000, upstream.addr)
        + &tcp_route(
            "tcp-route-attach-all",
            "name: tcp-attach-all-gateway",
            "{name: tcp-echo-attach-all, port: 3000}",
        );
    let _gateway = serve(&dir, &config)?;
    for (port, bind) in ports {
        let answer = curl(None, &[&format!("http://127.0.0.1:{bind}/")])?;
        assert_eq!(
            answer.json()?["upstream"],
            "tcp-echo-attach-all",
            "port {port}"
        );
    }
    let report = report(dir.path())?;
    let line = route_line(&report, "tcp-route-attach-all");
    assert!(line.contains("Accepted=True Accepted"), "{report}");
    for name in names {
        assert!(
            report.contains(&format!("listener {name}: attachedRoutes 1")),
            "{name}: {report}"
        );
    }
    Ok(())
}

/// TCPRouteWeightedRouting: a TCPRoute with weights 70, 30 and 0 shares the connections
/// in proportion, and the zero-weight backend gets none. (The suite sends 500
/// connections and allows each share 0.05, retrying the whole run up to ten times; here
/// 400 connections, each share within 0.1, about five standard deviations, in one run.)
#[test]
fn tcp_route_weighted_routing() -> anyhow::Result<()> {
    let dir = TempDir::new("conf-tcp-weighted")?;
    let names = ["tcp-backend-v1", "tcp-backend-v2", "tcp-backend-v3"];
    let port = free_port();
    let mut config =
        class_and_ports(&[(9300, port)]) + &tcp_gateway("tcp-weighted-gateway", &[("tcp", 9300)]);
    let mut upstreams = Vec::new();
    for name in names {
        let upstream = Upstream::start(None, "127.0.0.1:0", name)?;
        config += &backend(name, INFRA, 3000, upstream.addr);
        upstreams.push(upstream);
    }
    config += &tcp_route(
        "tcp-weighted-route",
        "name: tcp-weighted-gateway, sectionName: tcp",
        "{name: tcp-backend-v1, port: 3000, weight: 70}, {name: tcp-backend-v2, port: 3000, weight: 30}, {name: tcp-backend-v3, port: 3000, weight: 0}",
    );
    let _gateway = serve(&dir, &config)?;
    let line = route_line(&report(dir.path())?, "tcp-weighted-route");
    assert!(
        line.contains("Accepted=True") && line.contains("ResolvedRefs=True"),
        "{line}"
    );
    let total = 400;
    let mut counts = std::collections::BTreeMap::new();
    for _ in 0..total {
        // A connection of its own each time: a TCPRoute picks its backend per connection.
        let answer = curl(None, &[&format!("http://127.0.0.1:{port}/")])?;
        let upstream = answer.json()?["upstream"].as_str().unwrap_or("").to_owned();
        *counts.entry(upstream).or_insert(0u32) += 1;
    }
    let share = |name: &str| f64::from(counts.get(name).copied().unwrap_or(0)) / f64::from(total);
    assert!((share("tcp-backend-v1") - 0.7).abs() < 0.1, "{counts:?}");
    assert!((share("tcp-backend-v2") - 0.3).abs() < 0.1, "{counts:?}");
    assert_eq!(counts.get("tcp-backend-v3"), None, "{counts:?}");
    Ok(())
}

/// A Passthrough TLS listener `tls` on Gateway `gateway` and a TLSRoute `route` for
/// `example.com` to `backend_ref`: what `validate` reports of the route.
fn tls_route_report(gateway: &str, route: &str, backend_ref: &str) -> anyhow::Result<String> {
    let dir = TempDir::new("conf-tls-invalid-backend")?;
    let config = class_and_ports(&[(443, free_port())])
        + &format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: {gateway}, namespace: {INFRA}}}\nspec:\n  gatewayClassName: gateway-conformance\n  listeners:\n  - {{name: tls, protocol: TLS, port: 443, allowedRoutes: {{namespaces: {{from: Same}}}}, tls: {{mode: Passthrough}}}}\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: TLSRoute\nmetadata: {{name: {route}, namespace: {INFRA}}}\nspec:\n  parentRefs: [{{name: {gateway}, namespace: {INFRA}}}]\n  hostnames: [example.com]\n  rules: [{{backendRefs: [{backend_ref}]}}]\n---\n"
        );
    dir.write("config.yaml", &config)?;
    let report = report(dir.path())?;
    Ok(report
        .lines()
        .find(|l| l.starts_with(&format!("TLSRoute {INFRA}/{route}:")))
        .map_or_else(|| report.clone(), str::to_owned))
}

/// TLSRouteInvalidBackendRefNonexistent: a TLSRoute whose one backendRef names a Service
/// that does not exist is ResolvedRefs=False BackendNotFound.
#[test]
fn tls_route_invalid_backend_ref_nonexistent() -> anyhow::Result<()> {
    let line = tls_route_report(
        "gateway-tlsroute-invalid-backend-ref-nonexistent",
        "invalid-backend-ref-nonexistent",
        &format!("{{name: nonexistent, namespace: {INFRA}, port: 443}}"),
    )?;
    assert!(
        line.contains("ResolvedRefs=False BackendNotFound"),
        "{line}"
    );
    Ok(())
}

/// TLSRouteInvalidBackendRefUnknownKind: a backendRef of a kind we do not know is
/// ResolvedRefs=False InvalidKind.
#[test]
fn tls_route_invalid_backend_ref_unknown_kind() -> anyhow::Result<()> {
    let line = tls_route_report(
        "gateway-tlsroute-invalid-backend-ref-unknown-kind",
        "invalid-backend-ref-unknown-kind",
        "{group: unknownkind.example.com, kind: NonExistent, name: tls-backend, port: 443}",
    )?;
    assert!(line.contains("ResolvedRefs=False InvalidKind"), "{line}");
    Ok(())
}
