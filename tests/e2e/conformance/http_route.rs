//! HTTPRoute conformance cases: matching, invalid backendRefs, retries and timeouts.

use gateway_tests::{
    CurlResponse, TempDir, Upstream, curl, free_port, status_upstream::StatusUpstream,
};

use super::{INFRA, WEB, backend, class_and_ports, report, serve};

mod attachment;
mod backends;
mod filters;
mod listeners;
mod mirrors;
mod retries;

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
/// `infra-backend-v1` and `-v2` (demo upstreams named so) and `web-backend` (in the web
/// namespace), plus `routes`.
struct Case {
    dir: TempDir,
    port: u16,
    _gateway: gateway_tests::Gateway,
    upstreams: [Upstream; 3],
}

impl Case {
    fn start(label: &str, routes: &str) -> anyhow::Result<Self> {
        let dir = TempDir::new(label)?;
        let v1 = Upstream::start(None, "127.0.0.1:0", "infra-backend-v1")?;
        let v2 = Upstream::start(None, "127.0.0.1:0", "infra-backend-v2")?;
        let v3 = Upstream::start(None, "127.0.0.1:0", "infra-backend-v3")?;
        let port = free_port();
        let config = class_and_ports(&[(80, port)])
            + &same_namespace_gateway()
            + &backend("infra-backend-v1", INFRA, 8080, v1.addr)
            + &backend("infra-backend-v2", INFRA, 8080, v2.addr)
            + &backend("infra-backend-v3", INFRA, 8080, v3.addr)
            + &backend("web-backend", WEB, 8080, v1.addr)
            + routes;
        let gateway = serve(&dir, &config)?;
        Ok(Case {
            dir,
            port,
            _gateway: gateway,
            upstreams: [v1, v2, v3],
        })
    }

    /// The address of `infra-backend-v{version}` (1, 2 or 3).
    fn backend_addr(&self, version: usize) -> std::net::SocketAddr {
        self.upstreams[version - 1].addr
    }

    fn get(&self, path: &str) -> anyhow::Result<CurlResponse> {
        self.request("example.com", "GET", path, &[])
    }

    /// `method` `path` for `host` with these headers (`name: value`).
    fn request(
        &self,
        host: &str,
        method: &str,
        path: &str,
        headers: &[&str],
    ) -> anyhow::Result<CurlResponse> {
        let url = format!("http://127.0.0.1:{}{path}", self.port);
        let host = format!("Host: {host}");
        let mut args = vec!["-X", method, "-H", &host];
        for header in headers {
            args.extend(["-H", header]);
        }
        args.push(&url);
        curl(None, &args)
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

/// HTTPRouteMatchingAcrossRoutes: two routes sharing `example.com`, each with a path and
/// a header match, are merged by precedence: `/v2` and `version: two` reach v2, the rest
/// v1, and `example.net` (part 1's alone) never reaches v2.
#[test]
fn http_route_matching_across_routes() -> anyhow::Result<()> {
    let routes = format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: matching-part1, namespace: {INFRA}}}
spec:
  parentRefs: [{{name: same-namespace}}]
  hostnames: [example.com, example.net]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: /}}}}, {{headers: [{{name: version, value: one}}]}}]
    backendRefs: [{{name: infra-backend-v1, port: 8080}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: matching-part2, namespace: {INFRA}}}
spec:
  parentRefs: [{{name: same-namespace}}]
  hostnames: [example.com]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: /v2}}}}, {{headers: [{{name: version, value: two}}]}}]
    backendRefs: [{{name: infra-backend-v2, port: 8080}}]
"#
    );
    let case = Case::start("conf-across-routes", &routes)?;
    let cases: [(&str, &str, &[&str], &str); 8] = [
        ("example.com", "/", &[], "infra-backend-v1"),
        ("example.com", "/example", &[], "infra-backend-v1"),
        ("example.net", "/example", &[], "infra-backend-v1"),
        (
            "example.com",
            "/example",
            &["Version: one"],
            "infra-backend-v1",
        ),
        ("example.com", "/v2", &[], "infra-backend-v2"),
        ("example.net", "/v2", &[], "infra-backend-v1"),
        ("example.com", "/v2/example", &[], "infra-backend-v2"),
        ("example.com", "/", &["Version: two"], "infra-backend-v2"),
    ];
    for (host, path, headers, want) in cases {
        let answer = case.request(host, "GET", path, headers)?;
        assert_eq!(answer.status, 200, "{host}{path} {headers:?}: {answer:?}");
        assert_eq!(answer.json()?["upstream"], want, "{host}{path} {headers:?}");
    }
    Ok(())
}

/// HTTPRouteCORS: preflights from allowed origins (exact, `https://*.bar.com` over any
/// number of labels, `*`) are answered by the gateway with the policy's headers;
/// credentials only where allowed; a preflight or a simple request from another origin
/// gets no `access-control-allow-origin`; a simple request from an allowed origin gets
/// it on the backend's answer.
#[test]
fn http_route_cors() -> anyhow::Result<()> {
    let routes = format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: cors-multiple-origins-methods-headers, namespace: {INFRA}}}
spec:
  parentRefs: [{{name: same-namespace}}]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: /cors-1}}}}]
    filters:
    - type: CORS
      cors:
        allowOrigins: ["https://www.foo.com", "https://*.bar.com"]
        allowMethods: [GET, OPTIONS]
        allowHeaders: [x-header-1, x-header-2]
        exposeHeaders: [x-header-3, x-header-4]
        allowCredentials: true
        maxAge: 3600
    backendRefs: [{{name: infra-backend-v1, port: 8080}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: cors-wildcard-methods, namespace: {INFRA}}}
spec:
  parentRefs: [{{name: same-namespace}}]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: /cors-2}}}}]
    filters: [{{type: CORS, cors: {{allowOrigins: ["https://www.foo.com"], allowMethods: ["*"]}}}}]
    backendRefs: [{{name: infra-backend-v1, port: 8080}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: cors-wildcard-origin, namespace: {INFRA}}}
spec:
  parentRefs: [{{name: same-namespace}}]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: /cors-wildcard-origin}}}}]
    filters: [{{type: CORS, cors: {{allowOrigins: ["*"], allowMethods: [PUT], allowCredentials: false}}}}]
    backendRefs: [{{name: infra-backend-v1, port: 8080}}]
"#
    );
    let case = Case::start("conf-cors", &routes)?;
    let no_space = |v: Option<&str>| v.map(|v| v.replace(' ', ""));
    let preflight = |path: &str, origin: &str, method: &str| {
        case.request(
            "example.com",
            "OPTIONS",
            path,
            &[
                &format!("Origin: {origin}"),
                &format!("access-control-request-method: {method}"),
                "access-control-request-headers: x-header-1, x-header-2",
            ],
        )
    };
    for origin in [
        "https://www.foo.com",
        "https://www.bar.com",
        "https://xpto.www.bar.com",
    ] {
        let answer = preflight("/cors-1", origin, "GET")?;
        assert!([200, 204].contains(&answer.status), "{answer:?}");
        assert_eq!(answer.header("access-control-allow-origin"), Some(origin));
        let methods = no_space(answer.header("access-control-allow-methods"));
        assert!(
            ["GET,OPTIONS", "OPTIONS,GET"]
                .map(Some)
                .contains(&methods.as_deref()),
            "{answer:?}"
        );
        let headers = no_space(answer.header("access-control-allow-headers"));
        assert!(
            ["x-header-1,x-header-2", "x-header-2,x-header-1"]
                .map(Some)
                .contains(&headers.as_deref()),
            "{answer:?}"
        );
        let expose = no_space(answer.header("access-control-expose-headers"));
        assert!(
            ["x-header-3,x-header-4", "x-header-4,x-header-3"]
                .map(Some)
                .contains(&expose.as_deref()),
            "{answer:?}"
        );
        assert_eq!(answer.header("access-control-max-age"), Some("3600"));
        assert_eq!(
            answer.header("access-control-allow-credentials"),
            Some("true")
        );
    }
    let refused = preflight("/cors-1", "https://foobar.com", "GET")?;
    assert!([200, 204, 403].contains(&refused.status), "{refused:?}");
    assert_eq!(refused.header("access-control-allow-origin"), None);

    for origin in ["https://www.foo.com", "https://www.bar.com"] {
        let simple = case.request(
            "example.com",
            "GET",
            "/cors-1",
            &[&format!("Origin: {origin}")],
        )?;
        assert_eq!(simple.status, 200);
        assert_eq!(simple.header("access-control-allow-origin"), Some(origin));
    }
    let foreign = case.request(
        "example.com",
        "GET",
        "/cors-1",
        &["Origin: https://foobar.com"],
    )?;
    assert_eq!(foreign.header("access-control-allow-origin"), None);

    let any_method = preflight("/cors-2", "https://www.foo.com", "POST")?;
    assert!([200, 204].contains(&any_method.status), "{any_method:?}");
    assert!(
        [Some("POST"), Some("*")].contains(&any_method.header("access-control-allow-methods")),
        "{any_method:?}"
    );
    assert_eq!(
        any_method.header("access-control-allow-origin"),
        Some("https://www.foo.com")
    );
    assert_eq!(any_method.header("access-control-allow-credentials"), None);

    for origin in ["https://foobar.com", "https://foobar.com:12345"] {
        let answer = preflight("/cors-wildcard-origin", origin, "PUT")?;
        assert!([200, 204].contains(&answer.status), "{answer:?}");
        assert!(
            [Some(origin), Some("*")].contains(&answer.header("access-control-allow-origin")),
            "{answer:?}"
        );
        assert_eq!(answer.header("access-control-allow-methods"), Some("PUT"));
        assert_eq!(answer.header("access-control-allow-credentials"), None);
        let simple = case.request(
            "example.com",
            "PUT",
            "/cors-wildcard-origin",
            &[&format!("Origin: {origin}")],
        )?;
        assert_eq!(simple.status, 200);
        assert!(
            [Some(origin), Some("*")].contains(&simple.header("access-control-allow-origin")),
            "{simple:?}"
        );
    }
    Ok(())
}

/// HTTPRouteRequestHeaderModifierBackendWeights: each weighted backendRef's own
/// RequestHeaderModifier applies to the requests sent to that backend only.
#[test]
fn http_route_request_header_modifier_backend_weights() -> anyhow::Result<()> {
    let routes = format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: request-header-modifier-backend-weights, namespace: {INFRA}}}
spec:
  parentRefs: [{{name: same-namespace}}]
  rules:
  - backendRefs:
    - name: infra-backend-v1
      port: 8080
      weight: 10
      filters: [{{type: RequestHeaderModifier, requestHeaderModifier: {{set: [{{name: Backend, value: infra-backend-v1}}]}}}}]
    - name: infra-backend-v2
      port: 8080
      weight: 10
      filters: [{{type: RequestHeaderModifier, requestHeaderModifier: {{set: [{{name: Backend, value: infra-backend-v2}}]}}}}]
"#
    );
    let case = Case::start("conf-backend-weights-headers", &routes)?;
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..40 {
        let answer = case.get("/")?;
        assert_eq!(answer.status, 200, "{answer:?}");
        let echoed = answer.json()?;
        assert_eq!(echoed["headers"]["backend"], echoed["upstream"], "{echoed}");
        seen.insert(echoed["upstream"].to_string());
    }
    assert_eq!(seen.len(), 2, "both backends get their share: {seen:?}");
    Ok(())
}

/// HTTPRouteInvalidParentRefNotMatchingListenerPort and
/// HTTPRouteInvalidParentRefNotMatchingSectionName: a parentRef whose `port` or
/// `sectionName` no listener has is Accepted=False NoMatchingParent, and the route serves
/// nothing.
#[test]
fn http_route_invalid_parent_ref_not_matching_listener_port_or_section_name() -> anyhow::Result<()>
{
    let routes = format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: httproute-listener-not-matching-route-port, namespace: {INFRA}}}
spec:
  parentRefs: [{{name: same-namespace, port: 81}}]
  hostnames: [port.example.com]
  rules: [{{backendRefs: [{{name: infra-backend-v1, port: 8080}}]}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: httproute-listener-not-matching-section-name, namespace: {INFRA}}}
spec:
  parentRefs: [{{name: same-namespace, sectionName: nonexistent}}]
  hostnames: [section.example.com]
  rules: [{{backendRefs: [{{name: infra-backend-v1, port: 8080}}]}}]
"#
    );
    let case = Case::start("conf-parent-ref-mismatch", &routes)?;
    for host in ["port.example.com", "section.example.com"] {
        assert_eq!(case.request(host, "GET", "/", &[])?.status, 404, "{host}");
    }
    let report = report(case.dir.path())?;
    for name in [
        "httproute-listener-not-matching-route-port",
        "httproute-listener-not-matching-section-name",
    ] {
        assert!(
            report
                .lines()
                .any(|l| l.contains(&format!("HTTPRoute {INFRA}/{name}"))
                    && l.contains("Accepted=False NoMatchingParent")),
            "{report}"
        );
    }
    Ok(())
}

/// The report's line for listener `listener` of Gateway `name` in the infra namespace.
fn listener_line(report: &str, name: &str, listener: &str) -> String {
    let start = report
        .find(&format!("\nGateway {INFRA}/{name}: "))
        .map_or(report.len(), |at| at + 1);
    report[start..]
        .lines()
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .find(|l| l.trim_start().starts_with(&format!("listener {listener}:")))
        .unwrap_or_default()
        .to_owned()
}

/// HTTPRouteInvalidCrossNamespaceParentRef: a route in the web namespace naming the
/// infra namespace's `same-namespace` Gateway (routes from its own namespace only) is
/// Accepted=False NotAllowedByListeners with its backends resolved; the Gateway counts
/// no route and the route serves nothing.
#[test]
fn http_route_invalid_cross_namespace_parent_ref() -> anyhow::Result<()> {
    let routes = format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: invalid-cross-namespace-parent-ref, namespace: {WEB}}}
spec:
  parentRefs: [{{name: same-namespace, namespace: {INFRA}}}]
  rules: [{{backendRefs: [{{name: web-backend, port: 8080}}]}}]
"#
    );
    let case = Case::start("conf-cross-namespace-parent-ref", &routes)?;
    let answer = case.get("/")?;
    assert_eq!(answer.status, 404, "{answer:?}");
    let report = report(case.dir.path())?;
    let route = report
        .lines()
        .find(|l| {
            l.starts_with(&format!(
                "HTTPRoute {WEB}/invalid-cross-namespace-parent-ref"
            ))
        })
        .unwrap_or_default();
    assert!(
        route.contains("Accepted=False NotAllowedByListeners")
            && route.contains("ResolvedRefs=True"),
        "{report}"
    );
    let listener = listener_line(&report, "same-namespace", "http");
    assert!(listener.contains("attachedRoutes 0"), "{report}");
    Ok(())
}

/// HTTPRouteInvalidParentRefSectionNameNotMatchingPort: a parentRef naming listener
/// `http` (port 80) with `port: 81` is Accepted=False NoMatchingParent; the Gateway
/// counts no route and the route serves nothing.
#[test]
fn http_route_invalid_parent_ref_section_name_not_matching_port() -> anyhow::Result<()> {
    let gateway = "gateway-with-one-not-matching-port-and-section-name-route";
    let routes = format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: {gateway}, namespace: {INFRA}}}
spec:
  gatewayClassName: gateway-conformance
  listeners:
  - {{name: http, port: 80, protocol: HTTP, allowedRoutes: {{kinds: [{{kind: HTTPRoute}}], namespaces: {{from: All}}}}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: httproute-listener-section-name-not-matching-port, namespace: {INFRA}}}
spec:
  parentRefs: [{{name: {gateway}, namespace: {INFRA}, sectionName: http, port: 81}}]
  rules: [{{backendRefs: [{{name: infra-backend-v1, kind: Service, port: 8080}}]}}]
"#
    );
    let case = Case::start("conf-section-name-not-matching-port", &routes)?;
    let answer = case.get("/")?;
    assert_eq!(answer.status, 404, "{answer:?}");
    let report = report(case.dir.path())?;
    assert!(
        report.lines().any(|l| l.contains(&format!(
            "HTTPRoute {INFRA}/httproute-listener-section-name-not-matching-port"
        )) && l.contains("Accepted=False NoMatchingParent")),
        "{report}"
    );
    let listener = listener_line(&report, gateway, "http");
    assert!(listener.contains("attachedRoutes 0"), "{report}");
    Ok(())
}

/// HTTPRouteBackendURLRewrite: a URLRewrite on a backendRef rewrites the path of the
/// requests sent to it (full path, and prefix).
#[test]
fn http_route_backend_url_rewrite() -> anyhow::Result<()> {
    let routes = format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: backend-url-rewrite, namespace: {INFRA}}}
spec:
  parentRefs: [{{name: same-namespace}}]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: /full}}}}]
    backendRefs:
    - name: infra-backend-v1
      port: 8080
      filters: [{{type: URLRewrite, urlRewrite: {{path: {{type: ReplaceFullPath, replaceFullPath: /rewritten-full}}}}}}]
  - matches: [{{path: {{type: PathPrefix, value: /prefix}}}}]
    backendRefs:
    - name: infra-backend-v1
      port: 8080
      filters: [{{type: URLRewrite, urlRewrite: {{path: {{type: ReplacePrefixMatch, replacePrefixMatch: /rewritten-prefix}}}}}}]
"#
    );
    let case = Case::start("conf-backend-rewrite", &routes)?;
    for (path, upstream_path) in [
        ("/full/original", "/rewritten-full"),
        ("/prefix/original", "/rewritten-prefix/original"),
    ] {
        let answer = case.get(path)?;
        assert_eq!(answer.status, 200, "{answer:?}");
        let echoed = answer.json()?;
        assert_eq!(echoed["path"], upstream_path, "{path}");
        assert_eq!(echoed["upstream"], "infra-backend-v1");
    }
    Ok(())
}

/// HTTPRouteBackendRequestRedirect: a RequestRedirect on a backendRef answers its share
/// with a 302 to the rewritten path.
#[test]
fn http_route_backend_request_redirect() -> anyhow::Result<()> {
    let routes = format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: backend-request-redirect, namespace: {INFRA}}}
spec:
  parentRefs: [{{name: same-namespace}}]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: /full}}}}]
    backendRefs:
    - name: infra-backend-v1
      port: 8080
      filters: [{{type: RequestRedirect, requestRedirect: {{path: {{type: ReplaceFullPath, replaceFullPath: /redirected-full}}}}}}]
  - matches: [{{path: {{type: PathPrefix, value: /prefix}}}}]
    backendRefs:
    - name: infra-backend-v1
      port: 8080
      filters: [{{type: RequestRedirect, requestRedirect: {{path: {{type: ReplacePrefixMatch, replacePrefixMatch: /redirected-prefix}}}}}}]
"#
    );
    let case = Case::start("conf-backend-redirect", &routes)?;
    for (path, location) in [
        ("/full/original", "http://example.com/redirected-full"),
        (
            "/prefix/original",
            "http://example.com/redirected-prefix/original",
        ),
    ] {
        let answer = case.get(path)?;
        assert_eq!(answer.status, 302, "{answer:?}");
        assert_eq!(answer.header("location"), Some(location), "{answer:?}");
    }
    Ok(())
}

/// HTTPRouteMethodMatching: rules by method alone, with a path, with headers, with both,
/// several matches in one rule, and method-less rules after method rules; an unmatched
/// method gets 404.
#[test]
fn http_route_method_matching() -> anyhow::Result<()> {
    let rule = |matches: &str, to: &str| {
        format!(
            "  - matches: {matches}\n    backendRefs: [{{name: infra-backend-{to}, port: 8080}}]\n"
        )
    };
    let routes = format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: method-matching, namespace: {INFRA}}}\nspec:\n  parentRefs: [{{name: same-namespace}}]\n  rules:\n{}",
        [
            rule("[{method: POST}]", "v1"),
            rule("[{method: GET}]", "v2"),
            rule("[{path: {type: PathPrefix, value: /path1}, method: GET}]", "v1"),
            rule("[{headers: [{name: version, value: one}], method: PUT}]", "v2"),
            rule("[{path: {type: PathPrefix, value: /path2}, headers: [{name: version, value: two}], method: POST}]", "v3"),
            rule("[{path: {type: PathPrefix, value: /path3}, method: PATCH}, {path: {type: PathPrefix, value: /path4}, headers: [{name: version, value: three}], method: DELETE}]", "v1"),
            rule("[{path: {type: PathPrefix, value: /path5}}]", "v1"),
            rule("[{method: PATCH}]", "v2"),
            rule("[{headers: [{name: version, value: four}]}]", "v3"),
        ]
        .concat()
    );
    let case = Case::start("conf-method-matching", &routes)?;
    let cases: [(&str, &str, &[&str], &str); 13] = [
        ("POST", "/", &[], "infra-backend-v1"),
        ("GET", "/", &[], "infra-backend-v2"),
        ("HEAD", "/", &[], "404"),
        ("GET", "/path1", &[], "infra-backend-v1"),
        ("PUT", "/", &["version: one"], "infra-backend-v2"),
        ("POST", "/path2", &["version: two"], "infra-backend-v3"),
        ("PATCH", "/path3", &[], "infra-backend-v1"),
        ("DELETE", "/path4", &["version: three"], "infra-backend-v1"),
        ("PUT", "/", &[], "404"),
        ("DELETE", "/path4", &[], "404"),
        ("PATCH", "/path5", &[], "infra-backend-v1"),
        ("PATCH", "/", &["version: four"], "infra-backend-v2"),
        ("PUT", "/", &["version: four"], "infra-backend-v3"),
    ];
    for (method, path, headers, want) in cases {
        // curl's own HEAD (-I), which does not wait for a body.
        let answer = if method == "HEAD" {
            curl(
                None,
                &[
                    "-I",
                    "-H",
                    "Host: example.com",
                    &format!("http://127.0.0.1:{}{path}", case.port),
                ],
            )?
        } else {
            case.request("example.com", method, path, headers)?
        };
        if want == "404" {
            assert_eq!(
                answer.status, 404,
                "{method} {path} {headers:?}: {answer:?}"
            );
            continue;
        }
        assert_eq!(
            answer.status, 200,
            "{method} {path} {headers:?}: {answer:?}"
        );
        assert_eq!(
            answer.json()?["upstream"],
            want,
            "{method} {path} {headers:?}"
        );
    }
    Ok(())
}

/// HTTPRoute `name` on `same-namespace` with `rules` (YAML list items, indented by two).
fn route_with_rules(name: &str, rules: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: {INFRA}}}\nspec:\n  parentRefs: [{{name: same-namespace}}]\n  rules:\n{rules}---\n"
    )
}

/// One rule: `matches` (a flow list) to `infra-backend-{to}`.
fn rule(matches: &str, to: &str) -> String {
    format!("  - matches: {matches}\n    backendRefs: [{{name: infra-backend-{to}, port: 8080}}]\n")
}

/// GET `path` for example.com with `headers`: the backend's name, or "404".
fn expect_each(case: &Case, cases: &[(&str, &[&str], &str)]) -> anyhow::Result<()> {
    for (path, headers, want) in cases {
        let answer = case.request("example.com", "GET", path, headers)?;
        if *want == "404" {
            assert_eq!(answer.status, 404, "{path} {headers:?}: {answer:?}");
            continue;
        }
        assert_eq!(answer.status, 200, "{path} {headers:?}: {answer:?}");
        assert_eq!(answer.json()?["upstream"], *want, "{path} {headers:?}");
    }
    Ok(())
}

/// HTTPRouteMatching: a rule's matches are ORed; `PathPrefix /v2` matches by path
/// segment (`/v2/`, `/v2/example`, not `/v2example`), and wins over `/`.
#[test]
fn http_route_matching() -> anyhow::Result<()> {
    let routes = route_with_rules(
        "matching",
        &[
            rule(
                "[{path: {type: PathPrefix, value: /}}, {headers: [{name: version, value: one}]}]",
                "v1",
            ),
            rule(
                "[{path: {type: PathPrefix, value: /v2}}, {headers: [{name: version, value: two}]}]",
                "v2",
            ),
        ]
        .concat(),
    );
    let case = Case::start("conf-matching", &routes)?;
    let (v1, v2) = ("infra-backend-v1", "infra-backend-v2");
    expect_each(
        &case,
        &[
            ("/", &[], v1),
            ("/example", &[], v1),
            ("/", &["Version: one"], v1),
            ("/v2", &[], v2),
            ("/v2/example", &[], v2),
            ("/", &["Version: two"], v2),
            ("/v2/", &[], v2),
            ("/v2example", &[], v1),
            ("/foo/v2/example", &[], v1),
        ],
    )
}

/// HTTPRouteHeaderMatching: header matches are ANDed within a match and ORed across
/// matches; more headers win (`version: two` + `color: orange`), and between rules with
/// as many headers the first rule does (`version: two` + `color: blue` → v2).
#[test]
fn http_route_header_matching() -> anyhow::Result<()> {
    let routes = route_with_rules(
        "header-matching",
        &[
            rule("[{headers: [{name: version, value: one}]}]", "v1"),
            rule("[{headers: [{name: version, value: two}]}]", "v2"),
            rule(
                "[{headers: [{name: version, value: two}, {name: color, value: orange}]}]",
                "v1",
            ),
            rule(
                "[{headers: [{name: color, value: blue}]}, {headers: [{name: color, value: green}]}]",
                "v1",
            ),
            rule(
                "[{headers: [{name: color, value: red}]}, {headers: [{name: color, value: yellow}]}]",
                "v2",
            ),
        ]
        .concat(),
    );
    let case = Case::start("conf-header-matching", &routes)?;
    let (v1, v2) = ("infra-backend-v1", "infra-backend-v2");
    expect_each(
        &case,
        &[
            ("/", &["Version: one"], v1),
            ("/", &["Version: two"], v2),
            ("/", &["Version: two", "Color: orange"], v1),
            ("/", &["Version: two", "Color: blue"], v2),
            ("/", &["Color: orange"], "404"),
            ("/", &["Some-Other-Header: one"], "404"),
            ("/", &["Color: blue"], v1),
            ("/", &["Color: green"], v1),
            ("/", &["Color: red"], v2),
            ("/", &["Color: yellow"], v2),
            ("/", &["Color: purple"], "404"),
        ],
    )
}

/// HTTPRouteQueryParamMatching: exact query parameter matches (names case-sensitive,
/// `ANIMAL=Whale` is another parameter), combined with path and header matches, ORed
/// across matches and ANDed within one, and ranked by the spec's precedence: a path
/// match beats a query parameter match (`/path5?animal=hydra` → v1), and so does a header
/// match (`version: four` with `animal=hydra` → v3).
#[test]
fn http_route_query_param_matching() -> anyhow::Result<()> {
    let q = |name: &str, value: &str| format!("{{name: {name}, value: {value}}}");
    let routes = route_with_rules(
        "query-param-matching",
        &[
            rule(&format!("[{{queryParams: [{}]}}]", q("animal", "whale")), "v1"),
            rule(&format!("[{{queryParams: [{}]}}]", q("animal", "dolphin")), "v2"),
            rule(
                &format!(
                    "[{{queryParams: [{}, {}]}}, {{queryParams: [{}]}}]",
                    q("animal", "dolphin"),
                    q("color", "blue"),
                    q("ANIMAL", "Whale")
                ),
                "v3",
            ),
            rule(
                &format!(
                    "[{{path: {{type: PathPrefix, value: /path1}}, queryParams: [{}]}}]",
                    q("animal", "whale")
                ),
                "v1",
            ),
            rule(
                &format!(
                    "[{{headers: [{}], queryParams: [{}]}}]",
                    q("version", "one"),
                    q("animal", "whale")
                ),
                "v2",
            ),
            rule(
                &format!(
                    "[{{path: {{type: PathPrefix, value: /path2}}, headers: [{}], queryParams: [{}]}}]",
                    q("version", "two"),
                    q("animal", "whale")
                ),
                "v3",
            ),
            rule(
                &format!(
                    "[{{path: {{type: PathPrefix, value: /path3}}, queryParams: [{}]}}, {{path: {{type: PathPrefix, value: /path4}}, headers: [{}], queryParams: [{}]}}]",
                    q("animal", "shark"),
                    q("version", "three"),
                    q("animal", "kraken")
                ),
                "v1",
            ),
            rule("[{path: {type: PathPrefix, value: /path5}}]", "v1"),
            rule(&format!("[{{queryParams: [{}]}}]", q("animal", "hydra")), "v2"),
            rule(&format!("[{{headers: [{}]}}]", q("version", "four")), "v3"),
        ]
        .concat(),
    );
    let case = Case::start("conf-query-param-matching", &routes)?;
    let (v1, v2, v3) = ("infra-backend-v1", "infra-backend-v2", "infra-backend-v3");
    expect_each(
        &case,
        &[
            ("/?animal=whale", &[], v1),
            ("/?animal=dolphin", &[], v2),
            ("/?animal=dolphin&color=blue", &[], v3),
            ("/?ANIMAL=Whale", &[], v3),
            ("/?animal=whale&otherparam=irrelevant", &[], v1),
            ("/?animal=dolphin&color=yellow", &[], v2),
            ("/?color=blue", &[], "404"),
            ("/?animal=dog", &[], "404"),
            ("/?animal=whaledolphin", &[], "404"),
            ("/", &[], "404"),
            ("/path1?animal=whale", &[], v1),
            ("/?animal=whale", &["version: one"], v2),
            ("/path2?animal=whale", &["version: two"], v3),
            ("/path3?animal=shark", &[], v1),
            ("/path4?animal=kraken", &["version: three"], v1),
            ("/?animal=shark", &[], "404"),
            ("/path4?animal=kraken", &[], "404"),
            ("/path5?animal=hydra", &[], v1),
            ("/?animal=hydra", &["version: four"], v3),
        ],
    )
}

/// HTTPRouteSimpleSameNamespace: a route of the Gateway's namespace with one backend and
/// no match serves `/`.
#[test]
fn http_route_simple_same_namespace() -> anyhow::Result<()> {
    let routes = route_to(
        "gateway-conformance-infra-test",
        "{name: infra-backend-v1, port: 8080}",
    );
    let case = Case::start("conf-simple-same-namespace", &routes)?;
    expect_each(&case, &[("/", &[], "infra-backend-v1")])
}

/// HTTPRouteExactPathMatching: `Exact` matches the whole path, case-sensitively, with
/// no trailing slash or further segment.
#[test]
fn http_route_exact_path_matching() -> anyhow::Result<()> {
    let routes = route_with_rules(
        "exact-matching",
        &(rule("[{path: {type: Exact, value: /one}}]", "v1")
            + &rule("[{path: {type: Exact, value: /two}}]", "v2")),
    );
    let case = Case::start("conf-exact-path-matching", &routes)?;
    expect_each(
        &case,
        &[
            ("/one", &[], "infra-backend-v1"),
            ("/two", &[], "infra-backend-v2"),
            ("/", &[], "404"),
            ("/one/example", &[], "404"),
            ("/two/", &[], "404"),
            ("/Two", &[], "404"),
        ],
    )
}

/// HTTPRoutePathMatchOrder: Exact beats every prefix, and the longest prefix wins,
/// whatever the rules' order.
#[test]
fn http_route_path_match_order() -> anyhow::Result<()> {
    let routes = route_with_rules(
        "path-matching-order",
        &[
            rule("[{path: {type: Exact, value: /match}}]", "v1"),
            rule("[{path: {type: Exact, value: /match/exact}}]", "v2"),
            rule("[{path: {type: Exact, value: /match/exact/one}}]", "v3"),
            rule("[{path: {type: PathPrefix, value: /match/}}]", "v3"),
            rule("[{path: {type: PathPrefix, value: /match/prefix/}}]", "v1"),
            rule(
                "[{path: {type: PathPrefix, value: /match/prefix/one}}]",
                "v2",
            ),
        ]
        .concat(),
    );
    let case = Case::start("conf-path-match-order", &routes)?;
    expect_each(
        &case,
        &[
            ("/match/exact/one", &[], "infra-backend-v3"),
            ("/match/exact", &[], "infra-backend-v2"),
            ("/match", &[], "infra-backend-v1"),
            ("/match/prefix/one/any", &[], "infra-backend-v2"),
            ("/match/prefix/any", &[], "infra-backend-v1"),
            ("/match/any", &[], "infra-backend-v3"),
        ],
    )
}

/// A route whose rules each redirect (`filters` YAML per path prefix).
fn redirect_route(name: &str, rules: &[(&str, &str)]) -> String {
    let rules: String = rules
        .iter()
        .map(|(prefix, redirect)| {
            format!(
                "  - matches: [{{path: {{type: PathPrefix, value: {prefix}}}}}]\n    filters: [{{type: RequestRedirect, requestRedirect: {redirect}}}]\n"
            )
        })
        .collect();
    route_with_rules(name, &rules)
}

/// HTTPRoute303Redirect, HTTPRoute307Redirect, HTTPRoute308Redirect: the status code
/// asked for, the path kept (303 to a POST, as the suite sends).
#[test]
fn http_route_303_307_308_redirect() -> anyhow::Result<()> {
    let routes = redirect_route(
        "redirects",
        &[
            ("/see-other", "{statusCode: 303}"),
            ("/temporary", "{statusCode: 307}"),
            ("/permanent", "{statusCode: 308}"),
        ],
    );
    let case = Case::start("conf-redirect-codes", &routes)?;
    for (method, path, status) in [
        ("POST", "/see-other", 303),
        ("GET", "/temporary", 307),
        ("GET", "/permanent", 308),
    ] {
        let answer = case.request("example.com", method, path, &[])?;
        assert_eq!(answer.status, status, "{answer:?}");
        let location = format!("http://example.com{path}");
        assert_eq!(answer.header("location"), Some(&*location), "{answer:?}");
    }
    Ok(())
}

/// HTTPRouteRedirectHostAndStatus: `hostname` replaces the host (302 by default), with
/// `statusCode: 301` where asked.
#[test]
fn http_route_redirect_host_and_status() -> anyhow::Result<()> {
    let routes = redirect_route(
        "redirect-host-and-status",
        &[
            ("/hostname-redirect", "{hostname: example.org}"),
            (
                "/host-and-status",
                "{statusCode: 301, hostname: example.org}",
            ),
        ],
    );
    let case = Case::start("conf-redirect-host", &routes)?;
    for (path, status) in [("/hostname-redirect", 302), ("/host-and-status", 301)] {
        let answer = case.get(path)?;
        assert_eq!(answer.status, status, "{answer:?}");
        let location = format!("http://example.org{path}");
        assert_eq!(answer.header("location"), Some(&*location), "{answer:?}");
    }
    Ok(())
}
