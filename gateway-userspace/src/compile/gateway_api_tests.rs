use std::path::Path;

use super::super::{Identity, compile};
use crate::{
    config::{self, Diagnostics},
    route_table::RequestInfo,
    snapshot::{RouteAction, Snapshot, TlsMode, Transport, WeightedCluster},
};

fn compile_yaml(yaml: &str) -> (Snapshot, Diagnostics) {
    let (resources, mut diagnostics) = config::load_text(Path::new("gw-api.yaml"), yaml);
    assert!(!diagnostics.has_errors(), "{diagnostics}");
    let (snapshot, more) = compile(&resources, &Identity::default());
    diagnostics.extend(more);
    (snapshot, diagnostics)
}

/// What a request gets: the endpoint it goes to, `404`, `500`, `503 <cluster>`,
/// `redirect <status> <authority>`.
fn outcome(
    snapshot: &Snapshot,
    port: u16,
    host: &str,
    request: &str,
    headers: &[(&'static str, &'static str)],
) -> String {
    let (method, path_and_query) = request.split_once(' ').unwrap_or(("GET", request));
    let (path, query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path_and_query, None),
    };
    let Some(listener) = snapshot.listeners.iter().find(|l| l.port == port) else {
        return "no listener".into();
    };
    let mut header_map = http::HeaderMap::new();
    for (name, value) in headers {
        header_map.append(
            http::HeaderName::from_static(name),
            http::HeaderValue::from_static(value),
        );
    }
    let info = RequestInfo {
        authority: host,
        path,
        query,
        method,
        scheme: "http",
        port,
        headers: &header_map,
    };
    match listener.routes.find(&info).map(|r| &r.action) {
        None => "404".into(),
        Some(RouteAction::Unsupported(what)) => format!("501 {what}"),
        Some(RouteAction::Redirect(r)) => format!(
            "redirect {} {}",
            r.status,
            r.authority.as_deref().unwrap_or("-")
        ),
        Some(RouteAction::DirectResponse(d)) => d.status.to_string(),
        Some(RouteAction::Forward(forward)) if forward.clusters[0].invalid => "500".into(),
        Some(RouteAction::Forward(forward)) => {
            let cluster = &forward.clusters[0].cluster;
            // Every test backend has one endpoint: the first is the one picked.
            snapshot
                .endpoints_of(cluster)
                .first()
                .map_or_else(|| format!("503 {}", cluster.name), |e| e.to_string())
        }
    }
}

/// Two backends (`a` and `b`, one endpoint each) in `default`, `other` in namespace `other`.
const BACKENDS: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: a}
spec: {ports: [{name: http, port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: a-1, labels: {kubernetes.io/service-name: a}}
endpoints: [{addresses: [10.0.0.1]}]
ports: [{name: http, port: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: b}
spec: {ports: [{name: http, port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: b-1, labels: {kubernetes.io/service-name: b}}
endpoints: [{addresses: [10.0.0.2]}]
ports: [{name: http, port: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: other, namespace: other}
spec: {ports: [{name: http, port: 80}]}
---
apiVersion: v1
kind: Endpoints
metadata: {name: other, namespace: other}
subsets:
- addresses: [{ip: 10.0.0.3}]
  notReadyAddresses: [{ip: 10.0.0.99}]
  ports: [{name: http, port: 9090}]
"#;

const GATEWAY: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: istio}
spec: {controllerName: istio.io/gateway-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw}
spec:
  gatewayClassName: istio
  listeners:
  - {name: http, port: 80, protocol: HTTP, allowedRoutes: {namespaces: {from: All}}}
  - {name: shop, port: 8080, protocol: HTTP, hostname: "*.shop.example"}
---
apiVersion: gateway.networking.k8s.io/v1beta1
kind: Gateway
metadata: {name: someone-elses}
spec:
  gatewayClassName: nginx
  listeners:
  - {name: http, port: 9999, protocol: HTTP}
"#;

fn with(parts: &[&str]) -> String {
    parts.join("\n---\n")
}

/// Request headers of a case.
type Headers = &'static [(&'static str, &'static str)];

#[test]
fn precedence_orders_rules_across_routes() {
    let routes = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: older, creationTimestamp: "2024-01-01T00:00:00Z"}
spec:
  parentRefs: [{name: gw}]
  hostnames: [example.com]
  rules:
  - matches: [{path: {type: PathPrefix, value: /}}]
    backendRefs: [{name: a, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /api}}]
    backendRefs: [{name: a, port: 80}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: newer, creationTimestamp: "2025-01-01T00:00:00Z"}
spec:
  parentRefs: [{name: gw, sectionName: http}]
  hostnames: [example.com]
  rules:
  - matches: [{path: {type: PathPrefix, value: /api/v2}}]
    backendRefs: [{name: b, port: 80}]
  - matches: [{path: {type: Exact, value: /api}}]
    backendRefs: [{name: b, port: 80}]
  - matches:
    - path: {type: PathPrefix, value: /api}
      method: POST
    backendRefs: [{name: b, port: 80}]
  - matches:
    - path: {type: PathPrefix, value: /}
      headers: [{name: X-Canary, value: "yes"}]
    backendRefs: [{name: b, port: 80}]
  - matches:
    - path: {type: PathPrefix, value: /}
      queryParams: [{name: v, value: "2"}]
    backendRefs: [{name: b, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /}}]
    backendRefs: [{name: b, port: 80}]
"#;
    let (snapshot, diagnostics) = compile_yaml(&with(&[BACKENDS, GATEWAY, routes]));
    assert_eq!(diagnostics.warnings().count(), 0, "{diagnostics}");
    let a = "10.0.0.1:8080";
    let b = "10.0.0.2:8080";
    let cases: [(&str, Headers, &str); 11] = [
        ("GET /api", &[], b),                     // Exact beats every prefix
        ("GET /api/v2/x", &[], b),                // longest prefix
        ("GET /api/v2", &[], b),                  // whole segment
        ("GET /api/v20", &[], a),                 // not a segment of /api/v2: /api
        ("POST /api/x", &[], b),                  // method match beats an older route's same prefix
        ("GET /api/x", &[], a),                   // same prefix, no method: the older route
        ("GET /apix", &[("x-canary", "yes")], b), // header count beats the older `/`
        ("GET /apix?v=2", &[], b),                // query count too
        ("GET /apix", &[], a),                    // `/` twice: the older route wins
        ("GET /", &[], a),
        ("GET /other?v=3", &[], a),
    ];
    for (request, headers, want) in cases {
        assert_eq!(
            outcome(&snapshot, 80, "example.com", request, headers),
            want,
            "{request} {headers:?}"
        );
    }
    assert_eq!(outcome(&snapshot, 80, "example.org", "GET /", &[]), "404");
    assert!(
        !snapshot.listeners.iter().any(|l| l.port == 9999),
        "a Gateway of another class is not ours"
    );
}

#[test]
fn hostnames_intersect_with_listener_hostnames() {
    let routes = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: shop}
spec:
  parentRefs: [{name: gw, port: 8080}]
  hostnames: ["www.shop.example", "shop.example", "other.example"]
  rules: [{backendRefs: [{name: a, port: 80}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: any-shop}
spec:
  parentRefs: [{name: gw, sectionName: shop}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /b}}]
    backendRefs: [{name: b, port: 80}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: nowhere}
spec:
  parentRefs: [{name: gw, sectionName: shop}]
  hostnames: [elsewhere.example]
  rules: [{backendRefs: [{name: b, port: 80}]}]
"#;
    let (snapshot, diagnostics) = compile_yaml(&with(&[BACKENDS, GATEWAY, routes]));
    let cases = [
        ("www.shop.example", "/", "10.0.0.1:8080"),
        // The specific hostname's rules come first, the listener-wide route's after.
        ("www.shop.example", "/b", "10.0.0.1:8080"),
        ("x.shop.example", "/b", "10.0.0.2:8080"),
        ("x.shop.example", "/", "404"),
        ("shop.example", "/", "404"),
        ("other.example", "/", "404"),
        ("WWW.Shop.Example:8080", "/", "10.0.0.1:8080"),
    ];
    for (host, path, want) in cases {
        assert_eq!(
            outcome(&snapshot, 8080, host, path, &[]),
            want,
            "{host}{path}"
        );
    }
    let text = diagnostics.to_string();
    assert!(
        text.contains("HTTPRoute default/nowhere: spec.parentRefs[0]: not attached to Gateway default/gw: none of its hostnames intersects"),
        "{text}"
    );
}

#[test]
fn cross_namespace_backends_need_a_reference_grant() {
    let route = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r}
spec:
  parentRefs: [{name: gw}]
  hostnames: [x.example]
  rules:
  - backendRefs: [{name: other, namespace: other, port: 80}]
"#;
    let grant = r#"
apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {name: from-default, namespace: other}
spec:
  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: default}]
  to: [{group: "", kind: Service}]
"#;
    let (without, diagnostics) = compile_yaml(&with(&[BACKENDS, GATEWAY, route]));
    assert_eq!(outcome(&without, 80, "x.example", "/", &[]), "500");
    assert!(
        diagnostics.to_string().contains("spec.rules[0].backendRefs[0]: Service other/other is in another namespace and no ReferenceGrant there allows HTTPRoute from default (RefNotPermitted)"),
        "{diagnostics}"
    );
    let (with_grant, diagnostics) = compile_yaml(&with(&[BACKENDS, GATEWAY, route, grant]));
    // Core Endpoints serve a Service without EndpointSlices; not-ready addresses are left out.
    assert_eq!(
        outcome(&with_grant, 80, "x.example", "/", &[]),
        "10.0.0.3:9090",
        "{diagnostics}"
    );
}

#[test]
fn filters_and_invalid_rules() {
    let routes = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r}
spec:
  parentRefs: [{name: gw}]
  hostnames: [x.example]
  rules:
  - matches: [{path: {type: PathPrefix, value: /old}}]
    filters:
    - type: RequestRedirect
      requestRedirect: {hostname: new.example}
  - matches: [{path: {type: PathPrefix, value: /missing}}]
    backendRefs: [{name: nope, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /ext}}]
    filters: [{type: ExtensionRef, extensionRef: {group: x, kind: Y, name: z}}]
    backendRefs: [{name: a, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /none}}]
  - matches: [{path: {type: RegularExpression, value: "/re/[0-9]+"}}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {set: [{name: X-Via, value: gw}], remove: [x-drop]}
    backendRefs: [{name: b, port: 80}]
"#;
    let (snapshot, diagnostics) = compile_yaml(&with(&[BACKENDS, GATEWAY, routes]));
    let cases = [
        ("/old/page", "redirect 302 new.example"),
        ("/missing", "500"),
        ("/ext", "500"),
        ("/none", "500"),
        ("/re/42", "10.0.0.2:8080"),
        ("/re/x", "404"),
    ];
    for (path, want) in cases {
        assert_eq!(
            outcome(&snapshot, 80, "x.example", path, &[]),
            want,
            "{path}"
        );
    }
    let text = diagnostics.to_string();
    assert!(
        text.contains("spec.rules[1].backendRefs[0]: no Service default/nope (BackendNotFound)"),
        "{text}"
    );
    assert!(
        text.contains("spec.rules[2].filters[0]: filter type ExtensionRef is not supported"),
        "{text}"
    );
    let listener = &snapshot.listeners[0];
    let regex_route = listener
        .routes
        .virtual_hosts
        .iter()
        .flat_map(|v| v.routes.iter())
        .find_map(|r| match &r.action {
            RouteAction::Forward(f) if !f.headers.request.is_empty() => Some(f),
            _ => None,
        })
        .expect("the header-modifying rule");
    assert_eq!(regex_route.headers.request.set[0].0.as_str(), "x-via");
    assert_eq!(regex_route.headers.request.remove[0].as_str(), "x-drop");
}

#[test]
fn listeners_conflicts_and_missing_parents_are_reported() {
    let gateways = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: one}
spec:
  gatewayClassName: istio
  listeners:
  - {name: a, port: 80, protocol: HTTP, hostname: same.example}
  - {name: b, port: 80, protocol: HTTP, hostname: same.example}
  - {name: c, port: 80, protocol: HTTP, hostname: fine.example}
  - {name: d, port: 443, protocol: HTTPS, hostname: fine.example}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: apps}
spec:
  parentRefs: [{name: one, namespace: default}, {name: ghost}]
  rules: [{backendRefs: [{name: a, namespace: default, port: 80}]}]
"#;
    let (snapshot, diagnostics) = compile_yaml(&with(&[BACKENDS, gateways]));
    let text = diagnostics.to_string();
    assert!(text.contains("Gateway default/one: spec.listeners[0]: another listener has the same port 80 and hostname same.example"), "{text}");
    assert!(
        text.contains("spec.listeners[1]: another listener"),
        "{text}"
    );
    assert!(
        text.contains("spec.listeners[3].tls.certificateRefs: no usable certificateRefs"),
        "{text}"
    );
    assert!(text.contains("HTTPRoute apps/r: spec.parentRefs[0]: not attached to Gateway default/one: the listeners' allowedRoutes do not admit it (NotAllowedByListeners)"), "{text}");
    assert!(
        text.contains("HTTPRoute apps/r: spec.parentRefs[1]: Gateway apps/ghost does not exist"),
        "{text}"
    );
    let ports: Vec<u16> = snapshot.listeners.iter().map(|l| l.port).collect();
    assert_eq!(ports, [80]);
    assert_eq!(outcome(&snapshot, 80, "same.example", "/", &[]), "404");
}

#[test]
fn grpc_routes_match_service_and_method() {
    let routes = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: g}
spec:
  parentRefs: [{name: gw}]
  hostnames: [grpc.example]
  rules:
  - matches: [{method: {service: echo.Echo, method: Say}}]
    backendRefs: [{name: b, port: 80}]
  - matches: [{method: {service: echo.Echo}}]
    backendRefs: [{name: a, port: 80}]
"#;
    let (snapshot, _) = compile_yaml(&with(&[BACKENDS, GATEWAY, routes]));
    let cases = [
        ("POST /echo.Echo/Say", "10.0.0.2:8080"),
        ("POST /echo.Echo/Other", "10.0.0.1:8080"),
        ("POST /other.Svc/Say", "404"),
    ];
    for (request, want) in cases {
        assert_eq!(
            outcome(&snapshot, 80, "grpc.example", request, &[]),
            want,
            "{request}"
        );
    }
}

#[test]
fn broken_gateway_api_fields_name_line_and_path() {
    let text = "\
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: typo}
spec:
  rules:
  - matches:
    - path:
        type: Prefix
        value: /x
";
    let (_, diagnostics) = config::load_text(Path::new("broken.yaml"), text);
    let error = diagnostics.errors().next().expect("an error");
    let shown = error.to_string();
    assert!(shown.starts_with("error: broken.yaml:8: HTTPRoute default/typo: spec.rules[0].matches[0].path.type: unknown variant `Prefix`, expected one of `Exact`, `PathPrefix`, `RegularExpression`"), "{shown}");
    let (_, diagnostics) = config::load_text(
        Path::new("v.yaml"),
        "apiVersion: gateway.networking.k8s.io/v1alpha1\nkind: HTTPRoute\nmetadata: {name: old}\n",
    );
    assert!(
        diagnostics
            .to_string()
            .contains("unknown version v1alpha1 of HTTPRoute: expected one of v1, v1beta1"),
        "{diagnostics}"
    );
}

#[test]
fn cors_filter_compiles_to_the_route_policy() {
    let routes = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: cors}
spec:
  parentRefs: [{name: gw}]
  hostnames: [x.example]
  rules:
  - filters:
    - type: CORS
      cors:
        allowOrigins: ["https://app.example", "https://*.shop.example"]
        allowMethods: [GET, POST]
        allowCredentials: true
    backendRefs: [{name: a, port: 80}]
"#;
    let (snapshot, diagnostics) = compile_yaml(&with(&[BACKENDS, GATEWAY, routes]));
    assert_eq!(diagnostics.warnings().count(), 0, "{diagnostics}");
    let cors = snapshot.listeners[0]
        .routes
        .virtual_hosts
        .iter()
        .flat_map(|v| v.routes.iter())
        .find_map(|r| match &r.action {
            RouteAction::Forward(f) => f.cors.clone(),
            _ => None,
        })
        .expect("a CORS policy");
    let allowed = |origin: &str| cors.allow_origins.iter().any(|m| m.matches(origin));
    let cases = [
        ("https://app.example", true),
        ("https://APP.example", true),
        ("https://a.shop.example", true),
        ("https://a.b.shop.example", true),
        ("https://shop.example", false),
        ("http://a.shop.example", false),
        ("https://evil.example/https://a.shop.example", false),
    ];
    for (origin, want) in cases {
        assert_eq!(allowed(origin), want, "{origin}");
    }
    assert_eq!(cors.allow_methods, "GET,POST");
    assert_eq!(cors.max_age, Some(5));
    assert!(cors.allow_credentials);
}

#[test]
fn a_namespace_selector_admits_routes_of_the_namespaces_it_selects() {
    let gateway = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: istio}
spec: {controllerName: istio.io/gateway-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw, namespace: infra}
spec:
  gatewayClassName: istio
  listeners:
  - name: http
    port: 80
    protocol: HTTP
    allowedRoutes:
      namespaces: {from: Selector, selector: {matchLabels: {expose: "yes"}}}
---
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {expose: "yes"}}
---
apiVersion: v1
kind: Namespace
metadata: {name: internal, labels: {expose: "no"}}
"#;
    let route = |namespace: &str| {
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r, namespace: {namespace}}}\nspec:\n  parentRefs: [{{name: gw, namespace: infra}}]\n  hostnames: [\"{namespace}.example\"]\n  rules:\n  - backendRefs: [{{name: svc, port: 80}}]\n"
        )
    };
    let (snapshot, diagnostics) = compile_yaml(&with(&[
        gateway,
        &route("shop"),
        &route("internal"),
        &route("infra"),
    ]));
    let served = |host: &str| outcome(&snapshot, 80, host, "GET /", &[]) != "404";
    assert!(served("shop.example"), "{diagnostics}");
    assert!(!served("internal.example"), "{diagnostics}");
    // The Gateway's own namespace is not selected either: no label says so.
    assert!(!served("infra.example"), "{diagnostics}");
    let rejected = snapshot
        .report
        .route("HTTPRoute", "internal", "r")
        .expect("a status for the route");
    assert_eq!(
        rejected.parents[0].conditions[0].reason, "NotAllowedByListeners",
        "{rejected:?}"
    );
}

/// The endpoints behind weighted clusters, as `ip:port` (the test backends have one each).
fn endpoints(snapshot: &Snapshot, clusters: &[WeightedCluster]) -> Vec<String> {
    clusters
        .iter()
        .flat_map(|c| snapshot.endpoints_of(&c.cluster))
        .map(|e| e.to_string())
        .collect()
}

/// A passthrough port's routes: (SNI hosts, endpoints), in the order they are tried.
fn sni_routes(snapshot: &Snapshot, port: u16) -> Vec<(Vec<String>, Vec<String>)> {
    let Some(listener) = snapshot.listeners.iter().find(|l| l.port == port) else {
        return Vec::new();
    };
    let Some(Transport::Tls(tls)) = listener.transport.as_deref() else {
        return Vec::new();
    };
    tls.servers
        .iter()
        .filter_map(|server| match &server.mode {
            TlsMode::Passthrough { routes } => Some(routes),
            _ => None,
        })
        .flatten()
        .map(|r| (r.sni_hosts.clone(), endpoints(snapshot, &r.clusters)))
        .collect()
}

/// A TCP port's destinations.
fn tcp_endpoints(snapshot: &Snapshot, port: u16) -> Vec<String> {
    match snapshot
        .listeners
        .iter()
        .find(|l| l.port == port)
        .and_then(|l| l.transport.as_deref())
    {
        Some(Transport::Tcp(clusters)) => endpoints(snapshot, clusters),
        _ => Vec::new(),
    }
}

const L4_GATEWAY: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: istio}
spec: {controllerName: istio.io/gateway-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw}
spec:
  gatewayClassName: istio
  listeners:
  - {name: tls, port: 443, protocol: TLS, hostname: "*.example.com", tls: {mode: Passthrough}}
  - name: shared
    port: 8443
    protocol: TLS
    tls: {mode: Passthrough}
    allowedRoutes: {namespaces: {from: All}}
  - {name: tcp, port: 9000, protocol: TCP}
  - name: tcp-no-tls-routes
    port: 9001
    protocol: TCP
    allowedRoutes: {namespaces: {from: All}, kinds: [{kind: TCPRoute}]}
"#;

/// A TLSRoute `name` in `namespace` with this parentRef and hostnames, to Service `a`
/// (or `b` in `default`, by the last argument).
fn tls_route(name: &str, namespace: &str, parent: &str, hostnames: &str, backend: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1alpha2\nkind: TLSRoute\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec:\n  parentRefs: [{parent}]\n  hostnames: {hostnames}\n  rules: [{{backendRefs: [{{name: {backend}, namespace: default, port: 80}}]}}]\n"
    )
}

fn tcp_route(name: &str, created: &str, parent: &str, backend: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1alpha2\nkind: TCPRoute\nmetadata: {{name: {name}, creationTimestamp: \"{created}\"}}\nspec:\n  parentRefs: [{parent}]\n  rules: [{{backendRefs: [{{name: {backend}, port: 80}}]}}]\n"
    )
}

#[test]
fn tls_routes_attach_only_where_listeners_allow_them() {
    let grant_all = r#"
apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {name: routes-may-use-a, namespace: default}
spec:
  from: [{group: gateway.networking.k8s.io, kind: TLSRoute, namespace: evil}]
  to: [{group: "", kind: Service}]
"#;
    let (snapshot, diagnostics) = compile_yaml(&with(&[
        BACKENDS,
        L4_GATEWAY,
        grant_all,
        &tls_route(
            "bank",
            "default",
            "{name: gw, sectionName: tls}",
            "[bank.example.com]",
            "a",
        ),
        // Another namespace asks for the same hostname on the `Same` listener: refused,
        // whatever it names (the takeover this guards against).
        &tls_route(
            "thief",
            "evil",
            "{name: gw, namespace: default}",
            "[bank.example.com, loot.example.com]",
            "b",
        ),
        // By port: only the listener on 8443.
        &tls_route(
            "by-port",
            "default",
            "{name: gw, port: 8443}",
            "[port.example.org]",
            "b",
        ),
        // A port no listener has.
        &tls_route("nowhere", "default", "{name: gw, port: 7777}", "[]", "b"),
    ]));
    assert_eq!(
        sni_routes(&snapshot, 443),
        [(
            vec!["bank.example.com".to_owned()],
            vec!["10.0.0.1:8080".to_owned()]
        )],
    );
    // 8443 admits every namespace: the thief's hostnames are served there (and the port
    // route's); the Same listener on 443 kept them out.
    let shared = sni_routes(&snapshot, 8443);
    assert!(
        shared.contains(&(
            vec!["bank.example.com".to_owned(), "loot.example.com".to_owned()],
            vec!["10.0.0.2:8080".to_owned()]
        )),
        "{shared:?}"
    );
    assert!(
        shared.contains(&(
            vec!["port.example.org".to_owned()],
            vec!["10.0.0.2:8080".to_owned()]
        )),
        "{shared:?}"
    );
    assert!(
        !shared.iter().any(|(hosts, _)| hosts.is_empty()),
        "{shared:?}"
    );
    // The TCP listener that allows only TCPRoutes takes no TLSRoute.
    assert!(tcp_endpoints(&snapshot, 9001).is_empty());
    let text = diagnostics.to_string();
    assert!(
        text.contains("not attached to Gateway default/gw: no listener matches its sectionName/port (NoMatchingParent)"),
        "{text}"
    );
}

#[test]
fn the_oldest_tcp_route_takes_a_tcp_listener() {
    let (snapshot, diagnostics) = compile_yaml(&with(&[
        BACKENDS,
        L4_GATEWAY,
        &tcp_route(
            "newer",
            "2025-01-01T00:00:00Z",
            "{name: gw, sectionName: tcp}",
            "b",
        ),
        &tcp_route(
            "older",
            "2024-01-01T00:00:00Z",
            "{name: gw, sectionName: tcp}",
            "a",
        ),
        &tcp_route(
            "wrong-port",
            "2023-01-01T00:00:00Z",
            "{name: gw, port: 9002}",
            "b",
        ),
    ]));
    assert_eq!(tcp_endpoints(&snapshot, 9000), ["10.0.0.1:8080"]);
    let text = diagnostics.to_string();
    assert!(
        text.contains("TCPRoute default/newer") && text.contains("which an older TCPRoute serves"),
        "{text}"
    );
}

#[test]
fn weighted_invalid_backends_get_500_for_their_share() {
    let routes = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r}
spec:
  parentRefs: [{name: gw}]
  hostnames: [x.example]
  rules:
  - backendRefs:
    - {name: a, port: 80, weight: 1}
    - {name: nope, port: 80, weight: 1}
    - {group: example.com, kind: Bucket, name: unknown, weight: 2}
    - {name: other, namespace: other, port: 80, weight: 3}
"#;
    let (snapshot, _) = compile_yaml(&with(&[BACKENDS, GATEWAY, routes]));
    let listener = snapshot
        .listeners
        .iter()
        .find(|l| l.port == 80)
        .expect("port 80");
    let forward = listener
        .routes
        .virtual_hosts
        .iter()
        .flat_map(|v| v.routes.iter())
        .find_map(|r| match &r.action {
            RouteAction::Forward(f) => Some(f),
            _ => None,
        })
        .expect("a forward");
    let shares: Vec<(u32, bool)> = forward
        .clusters
        .iter()
        .map(|c| (c.weight, c.invalid))
        .collect();
    // The valid backend keeps its share; each invalid one's share (missing Service,
    // unknown kind, refused cross-namespace reference) is answered with 500.
    assert_eq!(shares, [(1, false), (1, true), (2, true), (3, true)]);
}

#[test]
fn regular_expressions_rank_after_prefixes_and_grpc_services_before_methods() {
    let routes = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r}
spec:
  parentRefs: [{name: gw}]
  hostnames: [x.example]
  rules:
  - matches: [{path: {type: RegularExpression, value: "/api/[a-z]+"}}]
    backendRefs: [{name: b, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /}}]
    backendRefs: [{name: a, port: 80}]
  - matches: [{path: {type: Exact, value: /api/exact}}]
    backendRefs: [{name: b, port: 80}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: g}
spec:
  parentRefs: [{name: gw}]
  hostnames: [grpc.example]
  rules:
  - matches: [{method: {method: Say}}]
    backendRefs: [{name: a, port: 80}]
  - matches: [{method: {type: RegularExpression, service: "echo\\..*"}}]
    backendRefs: [{name: b, port: 80}]
"#;
    let (snapshot, _) = compile_yaml(&with(&[BACKENDS, GATEWAY, routes]));
    let (a, b) = ("10.0.0.1:8080", "10.0.0.2:8080");
    let cases = [
        ("x.example", "GET /api/x", a), // even `/` beats a regex (Istio's rank)
        ("x.example", "GET /api/exact", b),
        ("grpc.example", "POST /echo.Echo/Say", b), // a service's characters first
        ("grpc.example", "POST /other.Svc/Say", a),
    ];
    for (host, request, want) in cases {
        assert_eq!(
            outcome(&snapshot, 80, host, request, &[]),
            want,
            "{request}"
        );
    }
}

#[test]
fn retry_and_timeouts_compile_as_the_spec_says() {
    let routes = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r}
spec:
  parentRefs: [{name: gw}]
  hostnames: [x.example]
  rules:
  - backendRefs: [{name: a, port: 80}]
    timeouts: {request: 10s, backendRequest: 2s}
    retry: {codes: [500, 502], attempts: 3, backoff: 100ms}
"#;
    let (snapshot, diagnostics) = compile_yaml(&with(&[BACKENDS, GATEWAY, routes]));
    assert_eq!(diagnostics.warnings().count(), 0, "{diagnostics}");
    let forward = snapshot.listeners[0]
        .routes
        .virtual_hosts
        .iter()
        .flat_map(|v| v.routes.iter())
        .find_map(|r| match &r.action {
            RouteAction::Forward(f) => Some(f),
            _ => None,
        })
        .expect("a forward");
    let second = std::time::Duration::from_secs(1);
    assert_eq!(forward.timeout, Some(10 * second));
    assert_eq!(forward.retry.per_try_timeout, Some(2 * second));
    assert_eq!(forward.retry.attempts, 3);
    assert_eq!(forward.retry.backoff, Some(second / 10));
    assert!(forward.retry.retry_on.status_codes.contains(&500));
    assert!(forward.retry.retry_on.status_codes.contains(&502));
    assert!(forward.retry.retry_on.connect_failure);
    // A retry stanza retries connection errors (reset, disconnect, per-try timeout) too,
    // as the spec asks; without one the rule keeps Istio's default, which does not.
    assert!(forward.retry.retry_on.reset);
}

/// Several Gateways of our class on one port: HTTP listeners merge while their routes'
/// hostnames tell them apart; where they cannot be told apart, the younger Gateway's
/// listener is conflicted and the older keeps serving.
#[test]
fn several_gateways_on_one_port_merge_or_conflict_youngest_first() {
    let gateways = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: old, creationTimestamp: "2024-01-01T00:00:00Z"}
spec:
  gatewayClassName: istio
  listeners:
  - {name: http, port: 80, protocol: HTTP}
  - {name: tcp, port: 9000, protocol: TCP}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: young, creationTimestamp: "2025-01-01T00:00:00Z"}
spec:
  gatewayClassName: istio
  listeners:
  - {name: http, port: 80, protocol: HTTP}
  - {name: tcp, port: 9000, protocol: HTTP}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: newest, creationTimestamp: "2026-01-01T00:00:00Z"}
spec:
  gatewayClassName: istio
  listeners:
  - {name: http, port: 80, protocol: HTTP}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: old-route}
spec:
  parentRefs: [{name: old}]
  hostnames: [a.example]
  rules: [{backendRefs: [{name: a, port: 80}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: young-route}
spec:
  parentRefs: [{name: young, sectionName: http}]
  hostnames: [b.example]
  rules: [{backendRefs: [{name: b, port: 80}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: newest-route}
spec:
  parentRefs: [{name: newest}]
  hostnames: [a.example]
  rules: [{backendRefs: [{name: b, port: 80}]}]
"#;
    let (snapshot, diagnostics) = compile_yaml(&with(&[BACKENDS, gateways]));
    let text = diagnostics.to_string();
    assert_eq!(
        outcome(&snapshot, 80, "a.example", "/", &[]),
        "10.0.0.1:8080"
    );
    assert_eq!(
        outcome(&snapshot, 80, "b.example", "/", &[]),
        "10.0.0.2:8080"
    );
    assert!(
        text.contains("Gateway default/newest: spec.listeners[0]: port 80 is already served by the older Gateway default/old listener http: the routes of both serve a.example on it"),
        "{text}"
    );
    assert!(
        text.contains("Gateway default/young: spec.listeners[1]: port 9000 is already TCP on the older Gateway default/old listener tcp"),
        "{text}"
    );
    assert!(
        !text.contains("Gateway default/young: spec.listeners[0]"),
        "{text}"
    );
    let ports: Vec<u16> = snapshot.listeners.iter().map(|l| l.port).collect();
    assert_eq!(ports, [80, 9000]);
}

/// Gateway fields parsed but not applied are named by a warning.
#[test]
fn unapplied_gateway_fields_are_reported() {
    let gateway = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw}
spec:
  gatewayClassName: istio
  tls:
    backend: {clientCertificateRef: {name: client}}
  listeners:
  - {name: http, port: 80, protocol: HTTP}
  - name: https
    port: 443
    protocol: HTTPS
    tls: {certificateRefs: [{name: missing}], options: {example.com/cipher: fast}}
"#;
    let (_, diagnostics) = compile_yaml(&with(&[BACKENDS, gateway]));
    let text = diagnostics.to_string();
    assert!(
        text.contains(
            "spec.listeners[1].tls.options: TLS options example.com/cipher are not applied"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "spec.tls.backend: the Gateway's client certificate towards backends is not presented"
        ),
        "{text}"
    );
}

/// A RequestRedirect with neither port nor scheme goes to the port of the listener it
/// is served on (the spec; HTTPRouteRedirectPortAndScheme), one route on two listeners
/// getting each its own; a scheme alone gives the scheme's port, a port stays as given.
#[test]
fn redirects_without_port_or_scheme_keep_the_listener_port() {
    use crate::snapshot::RedirectPort;
    let routes = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r}
spec:
  parentRefs: [{name: gw, sectionName: http}, {name: gw, sectionName: shop}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /nil}}]
    filters: [{type: RequestRedirect, requestRedirect: {hostname: example.org}}]
  - matches: [{path: {type: PathPrefix, value: /https}}]
    filters: [{type: RequestRedirect, requestRedirect: {scheme: https}}]
  - matches: [{path: {type: PathPrefix, value: /port}}]
    filters: [{type: RequestRedirect, requestRedirect: {port: 9443}}]
"#;
    let (snapshot, diagnostics) = compile_yaml(&with(&[BACKENDS, GATEWAY, routes]));
    let port_of = |listener: u16, host: &str, path: &str| {
        let listener = snapshot
            .listeners
            .iter()
            .find(|l| l.port == listener)
            .expect("the listener");
        let header_map = http::HeaderMap::new();
        let info = RequestInfo {
            authority: host,
            path,
            query: None,
            method: "GET",
            scheme: "http",
            port: listener.port,
            headers: &header_map,
        };
        match listener.routes.find(&info).map(|r| &r.action) {
            Some(RouteAction::Redirect(r)) => r.port,
            other => panic!("{path}: {other:?}"),
        }
    };
    assert_eq!(
        port_of(80, "x.example", "/nil"),
        RedirectPort::Fixed(80),
        "{diagnostics}"
    );
    assert_eq!(
        port_of(8080, "a.shop.example", "/nil"),
        RedirectPort::Fixed(8080)
    );
    assert_eq!(
        port_of(8080, "a.shop.example", "/https"),
        RedirectPort::ProtocolDefault
    );
    assert_eq!(
        port_of(8080, "a.shop.example", "/port"),
        RedirectPort::Fixed(9443)
    );
}
