//! HTTPRoute conformance cases: invalid backendRefs, retries and timeouts.

use gateway_tests::{
    CurlResponse, TempDir, Upstream, curl, free_port, status_upstream::StatusUpstream,
};

use super::{INFRA, WEB, backend, class_and_ports, report, serve};

/// The suite's `same-namespace` Gateway: one HTTP listener on port 80 for routes of its
/// own namespace.
fn same_namespace_gateway() -> String {
    format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: same-namespace, namespace: {INFRA}}}
spec:
  gatewayClassName: gateway-conformance
  listeners:
  - {{name: http, port: 80, protocol: HTTP, allowedRoutes: {{namespaces: {{from: Same}}}}}}
---
"#
    )
}

/// A gateway on port 80 (bound to a free port) with the suite's backends
/// `infra-backend-v1` (the demo upstream) and `web-backend` (in the web namespace), plus
/// `routes`.
struct Case {
    dir: TempDir,
    port: u16,
    _gateway: gateway_tests::Gateway,
    _upstream: Upstream,
}

impl Case {
    fn start(label: &str, routes: &str) -> anyhow::Result<Self> {
        let dir = TempDir::new(label)?;
        let upstream = Upstream::start(None, "127.0.0.1:0", "infra-backend-v1")?;
        let port = free_port();
        let config = class_and_ports(&[(80, port)])
            + &same_namespace_gateway()
            + &backend("infra-backend-v1", INFRA, 8080, upstream.addr)
            + &backend("web-backend", WEB, 8080, upstream.addr)
            + routes;
        let gateway = serve(&dir, &config)?;
        Ok(Case {
            dir,
            port,
            _gateway: gateway,
            _upstream: upstream,
        })
    }

    fn get(&self, path: &str) -> anyhow::Result<CurlResponse> {
        curl(None, &[&format!("http://127.0.0.1:{}{path}", self.port)])
    }
}

/// An HTTPRoute `name` in the infra namespace on `same-namespace` with one rule to
/// `backend_ref` (a flow-style backendRef).
fn route_to(name: &str, backend_ref: &str) -> String {
    format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {name}, namespace: {INFRA}}}
spec:
  parentRefs: [{{name: same-namespace}}]
  rules:
  - backendRefs: [{backend_ref}]
"#
    )
}

/// HTTPRouteInvalidBackendRefUnknownKind: a backendRef of a kind we do not know gives
/// ResolvedRefs=False InvalidKind, and requests get 500.
#[test]
fn http_route_invalid_backend_ref_unknown_kind() -> anyhow::Result<()> {
    let case = Case::start(
        "conf-unknown-kind",
        &route_to(
            "invalid-backend-ref-unknown-kind",
            "{group: unknownkind.example.com, kind: NonExistent, name: infra-backend-v1, port: 8080}",
        ),
    )?;
    assert_eq!(case.get("/")?.status, 500);
    let report = report(case.dir.path())?;
    assert!(
        report.contains("ResolvedRefs=False InvalidKind"),
        "{report}"
    );
    Ok(())
}

/// HTTPRouteInvalidCrossNamespaceBackendRef: a backendRef to another namespace with no
/// ReferenceGrant gives ResolvedRefs=False RefNotPermitted, and requests get 500.
#[test]
fn http_route_invalid_cross_namespace_backend_ref() -> anyhow::Result<()> {
    let case = Case::start(
        "conf-cross-ns",
        &route_to(
            "invalid-cross-namespace-backend-ref",
            &format!("{{name: web-backend, namespace: {WEB}, port: 8080}}"),
        ),
    )?;
    assert_eq!(case.get("/")?.status, 500);
    let report = report(case.dir.path())?;
    assert!(
        report.contains("ResolvedRefs=False RefNotPermitted"),
        "{report}"
    );
    Ok(())
}

/// HTTPRouteInvalidNonExistentBackendRef: a backendRef to a Service that does not exist
/// gives ResolvedRefs=False BackendNotFound, and requests get 500.
#[test]
fn http_route_invalid_non_existent_backend_ref() -> anyhow::Result<()> {
    let case = Case::start(
        "conf-nonexistent",
        &route_to(
            "invalid-nonexistent-backend-ref",
            "{name: nonexistent, port: 8080}",
        ),
    )?;
    assert_eq!(case.get("/")?.status, 500);
    let report = report(case.dir.path())?;
    assert!(
        report.contains("ResolvedRefs=False BackendNotFound"),
        "{report}"
    );
    Ok(())
}

/// The spec's rule the suite's invalid-backend tests rest on, for a weighted rule: the
/// share of requests for the invalid backendRef gets 500, the rest reach the valid one.
#[test]
fn http_route_weighted_partially_invalid_backend_ref() -> anyhow::Result<()> {
    let case = Case::start(
        "conf-partly-invalid",
        &route_to(
            "partially-invalid",
            "{name: infra-backend-v1, port: 8080, weight: 1}, {name: nonexistent, port: 8080, weight: 1}",
        ),
    )?;
    let mut statuses = std::collections::BTreeMap::new();
    for _ in 0..40 {
        *statuses.entry(case.get("/")?.status).or_insert(0) += 1;
    }
    let seen: Vec<u16> = statuses.keys().copied().collect();
    assert_eq!(seen, [200, 500], "{statuses:?}");
    Ok(())
}

/// HTTPRouteTimeoutRequest: `timeouts.request: 500ms` gives 504 to a request the backend
/// answers after a second; `0s` disables the timeout. (The suite's echo backend delays
/// by `?delay=1s`; ours by `/delay/1`, reached through a prefix rewrite.)
#[test]
fn http_route_timeout_request() -> anyhow::Result<()> {
    let routes = format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: request-timeout, namespace: {INFRA}}}
spec:
  parentRefs: [{{name: same-namespace}}]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: /request-timeout}}}}]
    filters: [{{type: URLRewrite, urlRewrite: {{path: {{type: ReplacePrefixMatch, replacePrefixMatch: /delay}}}}}}]
    backendRefs: [{{name: infra-backend-v1, port: 8080}}]
    timeouts: {{request: 500ms}}
  - matches: [{{path: {{type: PathPrefix, value: /disable-request-timeout}}}}]
    filters: [{{type: URLRewrite, urlRewrite: {{path: {{type: ReplacePrefixMatch, replacePrefixMatch: /delay}}}}}}]
    backendRefs: [{{name: infra-backend-v1, port: 8080}}]
    timeouts: {{request: 0s}}
"#
    );
    let case = Case::start("conf-request-timeout", &routes)?;
    assert_eq!(case.get("/request-timeout/0")?.status, 200);
    assert_eq!(case.get("/request-timeout/1")?.status, 504);
    assert_eq!(case.get("/disable-request-timeout/1")?.status, 200);
    Ok(())
}

/// HTTPRouteTimeoutBackendRequest: `timeouts.backendRequest: 500ms` gives 504 to a
/// request the backend answers after a second; `0s` disables it.
#[test]
fn http_route_timeout_backend_request() -> anyhow::Result<()> {
    let routes = format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: backend-request-timeout, namespace: {INFRA}}}
spec:
  parentRefs: [{{name: same-namespace}}]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: /backend-timeout}}}}]
    filters: [{{type: URLRewrite, urlRewrite: {{path: {{type: ReplacePrefixMatch, replacePrefixMatch: /delay}}}}}}]
    backendRefs: [{{name: infra-backend-v1, port: 8080}}]
    timeouts: {{backendRequest: 500ms}}
  - matches: [{{path: {{type: PathPrefix, value: /disable-backend-timeout}}}}]
    filters: [{{type: URLRewrite, urlRewrite: {{path: {{type: ReplacePrefixMatch, replacePrefixMatch: /delay}}}}}}]
    backendRefs: [{{name: infra-backend-v1, port: 8080}}]
    timeouts: {{backendRequest: 0s}}
"#
    );
    let case = Case::start("conf-backend-timeout", &routes)?;
    assert_eq!(case.get("/backend-timeout/0")?.status, 200);
    assert_eq!(case.get("/backend-timeout/1")?.status, 504);
    assert_eq!(case.get("/disable-backend-timeout/1")?.status, 200);
    Ok(())
}

/// HTTPRouteRetry: retries on the listed codes up to `attempts` times; a backend that
/// recovers within them answers, one that does not passes its error on, and a code not
/// listed is not retried. (The suite's backend fails `succeedAfter` times by query; ours
/// is told the same before each request.)
#[test]
fn http_route_retry() -> anyhow::Result<()> {
    let dir = TempDir::new("conf-retry")?;
    let flaky = StatusUpstream::start("infra-backend-v3", 200)?;
    let port = free_port();
    let config = class_and_ports(&[(80, port)])
        + &same_namespace_gateway()
        + &backend("infra-backend-v3", INFRA, 8080, flaky.addr)
        + &format!(
            r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: retries, namespace: {INFRA}}}
spec:
  parentRefs: [{{name: same-namespace}}]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: /retry/code-500-attempts-3}}}}]
    retry: {{codes: [500], attempts: 3}}
    backendRefs: [{{name: infra-backend-v3, port: 8080}}]
  - matches: [{{path: {{type: PathPrefix, value: /retry/code-all-attempts-2}}}}]
    retry: {{codes: [500, 502, 503, 504], attempts: 2}}
    backendRefs: [{{name: infra-backend-v3, port: 8080}}]
"#
        );
    let _gateway = serve(&dir, &config)?;
    let cases = [
        ("/retry/code-500-attempts-3", 500, 2, 200),
        ("/retry/code-500-attempts-3", 500, 4, 500),
        ("/retry/code-500-attempts-3", 503, 2, 503),
        ("/retry/code-all-attempts-2", 500, 1, 200),
        ("/retry/code-all-attempts-2", 500, 3, 500),
        ("/retry/code-all-attempts-2", 502, 1, 200),
        ("/retry/code-all-attempts-2", 503, 2, 200),
        ("/retry/code-all-attempts-2", 504, 3, 504),
    ];
    for (path, code, failures, want) in cases {
        flaky.fail_next(failures, code);
        let answer = curl(None, &[&format!("http://127.0.0.1:{port}{path}")])?;
        assert_eq!(
            answer.status, want,
            "{path}: {failures} × {code} first: {answer:?}"
        );
    }
    Ok(())
}
