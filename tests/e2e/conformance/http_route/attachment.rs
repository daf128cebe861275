//! HTTPRoute attachment and backend cases: routes from another namespace, backends in
//! another namespace by ReferenceGrant, listener hostnames, weights.

use super::{Case, route_to};
use crate::conformance::{INFRA, WEB, report};

/// The suite's `backend-namespaces` Gateway (routes from namespaces labelled
/// `gateway-conformance: backend`) and the web namespace so labelled.
fn backend_namespaces_gateway() -> String {
    format!(
        r#"apiVersion: v1
kind: Namespace
metadata: {{name: {WEB}, labels: {{gateway-conformance: backend}}}}
---
apiVersion: v1
kind: Namespace
metadata: {{name: {INFRA}, labels: {{gateway-conformance: infra}}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: backend-namespaces, namespace: {INFRA}}}
spec:
  gatewayClassName: gateway-conformance
  listeners:
  - name: http
    port: 80
    protocol: HTTP
    allowedRoutes: {{namespaces: {{from: Selector, selector: {{matchLabels: {{gateway-conformance: backend}}}}}}}}
---
"#
    )
}

/// The report's lines for route `namespace/name`.
fn route_lines(report: &str, namespace: &str, name: &str) -> Vec<String> {
    report
        .lines()
        .filter(|l| l.starts_with(&format!("HTTPRoute {namespace}/{name}:")))
        .map(str::to_owned)
        .collect()
}

/// HTTPRouteCrossNamespace: a route in the web namespace attaches to the infra
/// namespace's `backend-namespaces` Gateway (its namespace selected by label), resolves
/// its same-namespace backend and serves.
#[test]
fn http_route_cross_namespace() -> anyhow::Result<()> {
    let routes = backend_namespaces_gateway()
        + &format!(
            r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: cross-namespace, namespace: {WEB}}}
spec:
  parentRefs: [{{name: backend-namespaces, namespace: {INFRA}}}]
  rules:
  - backendRefs: [{{name: web-backend, port: 8080}}]
---
"#
        );
    let case = Case::start("conf-cross-namespace", &routes)?;
    let answer = case.get("/")?;
    assert_eq!(answer.status, 200, "{answer:?}");
    // The web backend's one endpoint is the demo upstream named infra-backend-v1.
    assert_eq!(answer.json()?["upstream"], "infra-backend-v1");
    let report = report(case.dir.path())?;
    let lines = route_lines(&report, WEB, "cross-namespace");
    assert_eq!(lines.len(), 1, "{report}");
    assert!(lines[0].contains("Accepted=True"), "{report}");
    assert!(lines[0].contains("ResolvedRefs=True"), "{report}");
    Ok(())
}

/// HTTPRouteReferenceGrant: a backendRef to the web namespace's Service resolves while
/// that namespace's ReferenceGrant allows it (200); without the grant it is 500.
#[test]
fn http_route_reference_grant() -> anyhow::Result<()> {
    let grant = format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: ReferenceGrant
metadata: {{name: reference-grant, namespace: {WEB}}}
spec:
  from: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: {INFRA}}}]
  to: [{{group: "", kind: Service, name: web-backend}}]
---
"#
    );
    let route = route_to(
        "reference-grant",
        &format!("{{name: web-backend, namespace: {WEB}, port: 8080}}"),
    );
    let granted = Case::start("conf-reference-grant", &format!("{grant}{route}"))?;
    let answer = granted.request("example.com", "GET", "/", &[])?;
    assert_eq!(answer.status, 200, "{answer:?}");
    let report = report(granted.dir.path())?;
    let lines = route_lines(&report, INFRA, "reference-grant");
    assert!(
        lines.len() == 1 && lines[0].contains("ResolvedRefs=True"),
        "{report}"
    );
    // The suite deletes the grant; here it is a configuration without it.
    let revoked = Case::start("conf-reference-grant-revoked", &route)?;
    assert_eq!(revoked.get("/")?.status, 500);
    Ok(())
}

/// HTTPRouteListenerHostnameMatching: four listeners on port 80 with hostnames
/// `bar.com`, `foo.bar.com`, `*.bar.com`, `*.foo.com`; a route per listener by
/// `sectionName`. The most specific listener hostname wins, the wildcards take any
/// number of labels, and `foo.com` or an unknown host get 404.
#[test]
fn http_route_listener_hostname_matching() -> anyhow::Result<()> {
    let listener = |name: &str, host: &str| {
        format!(
            "  - {{name: {name}, port: 80, protocol: HTTP, hostname: \"{host}\", allowedRoutes: {{namespaces: {{from: Same}}}}}}\n"
        )
    };
    let route = |name: &str, sections: &[&str], to: &str| {
        let parents: Vec<String> = sections
            .iter()
            .map(|s| format!("{{name: httproute-listener-hostname-matching, namespace: {INFRA}, sectionName: {s}}}"))
            .collect();
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: {INFRA}}}\nspec:\n  parentRefs: [{}]\n  rules:\n  - backendRefs: [{{name: {to}, port: 8080}}]\n---\n",
            parents.join(", ")
        )
    };
    let routes = format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: httproute-listener-hostname-matching, namespace: {INFRA}}}\nspec:\n  gatewayClassName: gateway-conformance\n  listeners:\n{}{}{}{}---\n",
        listener("listener-1", "bar.com"),
        listener("listener-2", "foo.bar.com"),
        listener("listener-3", "*.bar.com"),
        listener("listener-4", "*.foo.com"),
    ) + &route("backend-v1", &["listener-1"], "infra-backend-v1")
        + &route("backend-v2", &["listener-2"], "infra-backend-v2")
        + &route(
            "backend-v3",
            &["listener-3", "listener-4"],
            "infra-backend-v3",
        );
    let case = Case::start("conf-listener-hostname-matching", &routes)?;
    for (host, want) in [
        ("bar.com", "infra-backend-v1"),
        ("foo.bar.com", "infra-backend-v2"),
        ("baz.bar.com", "infra-backend-v3"),
        ("boo.bar.com", "infra-backend-v3"),
        ("multiple.prefixes.bar.com", "infra-backend-v3"),
        ("multiple.prefixes.foo.com", "infra-backend-v3"),
        ("foo.com", "404"),
        ("no.matching.host", "404"),
    ] {
        let answer = case.request(host, "GET", "/", &[])?;
        if want == "404" {
            assert_eq!(answer.status, 404, "{host}: {answer:?}");
        } else {
            assert_eq!(answer.status, 200, "{host}: {answer:?}");
            assert_eq!(answer.json()?["upstream"], want, "{host}");
        }
    }
    Ok(())
}

/// HTTPRouteWeight: weights 70, 30 and 0 share the requests in proportion; the
/// zero-weight backend gets none. (The suite allows each share a small deviation; with
/// 400 requests a share off by more than 0.1 is about five standard deviations away.)
#[test]
fn http_route_weight() -> anyhow::Result<()> {
    let case = Case::start(
        "conf-weight",
        &route_to(
            "weighted-backends",
            "{name: infra-backend-v1, port: 8080, weight: 70}, {name: infra-backend-v2, port: 8080, weight: 30}, {name: infra-backend-v3, port: 8080, weight: 0}",
        ),
    )?;
    let total = 400;
    let mut counts = std::collections::BTreeMap::new();
    for _ in 0..total {
        let answer = case.get("/")?;
        assert_eq!(answer.status, 200, "{answer:?}");
        *counts
            .entry(answer.json()?["upstream"].as_str().unwrap_or("").to_owned())
            .or_insert(0u32) += 1;
    }
    let share = |name: &str| f64::from(counts.get(name).copied().unwrap_or(0)) / f64::from(total);
    assert!((share("infra-backend-v1") - 0.7).abs() < 0.1, "{counts:?}");
    assert!((share("infra-backend-v2") - 0.3).abs() < 0.1, "{counts:?}");
    assert_eq!(counts.get("infra-backend-v3"), None, "{counts:?}");
    Ok(())
}
