//! Istio resources read as Istio reads them: config it accepts, matches meant for other
//! proxies, delegates, retries, `httpsRedirect`, ordering (issue 14).

use std::path::Path;

use http::{HeaderMap, HeaderValue};

use super::{Identity, compile};
use crate::{
    config::{self, Diagnostics},
    route_table::{RequestInfo, Route},
    snapshot::{RetryOn, RouteAction, Snapshot, SniRoute},
};

fn load(yaml: &str) -> (Snapshot, Diagnostics) {
    let (resources, mut diagnostics) = config::load_text(Path::new("istio.yaml"), yaml);
    let (snapshot, more) = compile(&resources, &Identity::default());
    diagnostics.extend(more);
    (snapshot, diagnostics)
}

/// The Gateway `istio-system/public` on port 80 for `hosts`, then `rest`.
fn with_gateway(hosts: &str, rest: &str) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: public, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 80, name: http, protocol: HTTP}}
    hosts: {hosts}
{rest}"#
    )
}

fn find<'s>(
    snapshot: &'s Snapshot,
    host: &str,
    path_and_query: &str,
    headers: &[(&'static str, &'static str)],
) -> Option<&'s Route<RouteAction>> {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        map.append(*name, HeaderValue::from_static(value));
    }
    let (path, query) = match path_and_query.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (path_and_query, None),
    };
    let request = RequestInfo {
        authority: host,
        path,
        query,
        method: "GET",
        scheme: "http",
        port: 80,
        headers: &map,
    };
    let listener = snapshot.listeners.iter().find(|l| l.port == 80)?;
    listener.routes.find(&request)
}

fn name(
    snapshot: &Snapshot,
    host: &str,
    path: &str,
    headers: &[(&'static str, &'static str)],
) -> String {
    find(snapshot, host, path, headers).map_or_else(|| "404".to_owned(), |r| r.name.clone())
}

#[test]
fn presence_matches_mean_present() {
    let yaml = with_gateway(
        r#"["*"]"#,
        r#"---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: vs, namespace: istio-system}
spec:
  hosts: [a.example.com]
  gateways: [public]
  http:
  - name: header
    match: [{headers: {x-canary: {}}}]
    directResponse: {status: 200}
  - name: query
    match: [{queryParams: {debug: {}}}]
    directResponse: {status: 200}
  - name: star
    match: [{headers: {x-star: {regex: "*"}}}]
    directResponse: {status: 200}
  - name: without
    match: [{uri: {prefix: /w}, withoutHeaders: {x-block: {}}}]
    directResponse: {status: 200}
  - name: rest
    directResponse: {status: 404}
"#,
    );
    let (snapshot, diagnostics) = load(&yaml);
    assert_eq!(diagnostics.errors().count(), 0, "{diagnostics}");
    let host = "a.example.com";
    assert_eq!(
        name(&snapshot, host, "/", &[("x-canary", "")]),
        "istio-system/vs.header"
    );
    assert_eq!(
        name(&snapshot, host, "/", &[("x-canary", "1")]),
        "istio-system/vs.header"
    );
    assert_eq!(
        name(&snapshot, host, "/?debug", &[]),
        "istio-system/vs.query"
    );
    assert_eq!(
        name(&snapshot, host, "/?a=1&debug=0", &[]),
        "istio-system/vs.query"
    );
    assert_eq!(
        name(&snapshot, host, "/", &[("x-star", "x")]),
        "istio-system/vs.star"
    );
    assert_eq!(name(&snapshot, host, "/w", &[]), "istio-system/vs.without");
    assert_eq!(
        name(&snapshot, host, "/w", &[("x-block", "")]),
        "istio-system/vs.rest"
    );
    assert_eq!(name(&snapshot, host, "/", &[]), "istio-system/vs.rest");
}

#[test]
fn gateway_references_resolve_in_every_form() {
    let vs = |name: &str, namespace: &str, reference: &str| {
        format!(
            "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec:\n  hosts: [{name}.example.com]\n  gateways: [\"{reference}\"]\n  http: [{{name: r, directResponse: {{status: 200}}}}]\n"
        )
    };
    let yaml = with_gateway(
        r#"["*/*.example.com"]"#,
        &[
            vs("short", "istio-system", "public"),
            vs("dot", "istio-system", "./public"),
            vs("slash", "apps", "istio-system/public"),
            vs("fqdn", "apps", "public.istio-system.svc.cluster.local"),
            vs("legacy", "apps", "public.istio-system"),
            vs("elsewhere", "apps", "public"),
        ]
        .concat(),
    );
    let (snapshot, diagnostics) = load(&yaml);
    for (host, want) in [
        ("short.example.com", "istio-system/short.r"),
        ("dot.example.com", "istio-system/dot.r"),
        ("slash.example.com", "apps/slash.r"),
        ("fqdn.example.com", "apps/fqdn.r"),
        ("legacy.example.com", "apps/legacy.r"),
        // `public` from namespace apps is apps/public, which does not exist.
        ("elsewhere.example.com", "404"),
    ] {
        assert_eq!(name(&snapshot, host, "/", &[]), want, "{host}");
    }
    let text = diagnostics.to_string();
    assert!(
        text.contains("gateway apps/public does not exist"),
        "{text}"
    );
    assert_eq!(text.matches("does not exist").count(), 1, "{text}");
}

#[test]
fn short_virtual_service_hosts_resolve_in_its_namespace() {
    let yaml = with_gateway(
        r#"["*"]"#,
        r#"---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: vs, namespace: shop}
spec:
  hosts: [web]
  gateways: [istio-system/public]
  http: [{name: r, directResponse: {status: 200}}]
"#,
    );
    let (snapshot, _) = load(&yaml);
    assert_eq!(
        name(&snapshot, "web.shop.svc.cluster.local", "/", &[]),
        "shop/vs.r"
    );
    assert_eq!(name(&snapshot, "web", "/", &[]), "404");
}

const DELEGATING_ROOT: &str = r#"---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: root, namespace: istio-system}
spec:
  hosts: [shop.example.com]
  gateways: [public]
  http:
  - name: api
    match: [{uri: {prefix: /api}}]
    delegate: {name: api, namespace: team}
    timeout: 7s
  - name: hidden
    match: [{uri: {prefix: /hidden}}]
    delegate: {name: hidden, namespace: team}
  - name: rest
    directResponse: {status: 404}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: api, namespace: team}
spec:
  http:
  - name: v1
    match: [{uri: {prefix: /api/v1}}]
    route: [{destination: {host: v1}}]
  - name: other
    match: [{uri: {prefix: /other}}]
    route: [{destination: {host: other}}]
  - name: fallback
    route: [{destination: {host: fallback}}]
    timeout: 2s
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: hidden, namespace: team}
spec:
  exportTo: ["."]
  http: [{name: h, directResponse: {status: 200}}]
"#;

#[test]
fn delegate_routes_merge_under_the_root_route() {
    let (snapshot, diagnostics) = load(&with_gateway(r#"["*"]"#, DELEGATING_ROOT));
    let host = "shop.example.com";
    assert_eq!(name(&snapshot, host, "/api/v1/x", &[]), "team/api.api-v1");
    // A delegate route without matches takes the root's.
    assert_eq!(
        name(&snapshot, host, "/api/v2", &[]),
        "team/api.api-fallback"
    );
    // `/other` does not fit under `/api`: the delegate route is dropped.
    assert_eq!(
        name(&snapshot, host, "/other", &[]),
        "istio-system/root.rest"
    );
    // A delegate exported to its own namespace only is not the root's.
    assert_eq!(
        name(&snapshot, host, "/hidden", &[]),
        "istio-system/root.rest"
    );
    let timeout = |path| match &find(&snapshot, host, path, &[]).map(|r| &r.action) {
        Some(RouteAction::Forward(forward)) => forward.timeout.map(|t| t.as_secs()),
        _ => None,
    };
    // The root's timeout where the delegate route has none; its own otherwise.
    assert_eq!(timeout("/api/v1"), Some(7));
    assert_eq!(timeout("/api/v2"), Some(2));
    let text = diagnostics.to_string();
    assert!(
        text.contains("VirtualService team/api: spec.http[1].match: its matches fit in none"),
        "{text}"
    );
    assert!(
        text.contains("delegate team/hidden is not exported to namespace istio-system"),
        "{text}"
    );
    assert_eq!(diagnostics.errors().count(), 0, "{diagnostics}");
}

#[test]
fn matches_for_other_proxies_are_dropped_not_widened() {
    let yaml = with_gateway(
        r#"["*"]"#,
        r#"---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: vs, namespace: istio-system}
spec:
  hosts: [a.example.com]
  gateways: [public, mesh]
  http:
  - name: mesh-only
    match: [{gateways: [mesh]}]
    directResponse: {status: 500}
  - name: sidecars
    match: [{sourceLabels: {app: reviews}}, {sourceNamespace: bookinfo}]
    directResponse: {status: 500}
  - name: mixed
    match: [{gateways: [mesh], uri: {prefix: /}}, {gateways: [istio-system/public], uri: {prefix: /mixed}}]
    directResponse: {status: 200}
  - name: ours
    match: [{sourceLabels: {istio: ingressgateway}, sourceNamespace: istio-system, uri: {prefix: /ours}}]
    directResponse: {status: 200}
  - name: rest
    directResponse: {status: 404}
"#,
    );
    let (snapshot, diagnostics) = load(&yaml);
    let host = "a.example.com";
    assert_eq!(name(&snapshot, host, "/", &[]), "istio-system/vs.rest");
    assert_eq!(
        name(&snapshot, host, "/mixed", &[]),
        "istio-system/vs.mixed"
    );
    // Labels the gateway's own pods carry, in its namespace: the match is ours.
    assert_eq!(name(&snapshot, host, "/ours", &[]), "istio-system/vs.ours");
    assert_eq!(diagnostics.errors().count(), 0, "{diagnostics}");
}

fn retry_of(snapshot: &Snapshot, path: &str) -> (u32, RetryOn) {
    match find(snapshot, "a.example.com", path, &[]).map(|r| &r.action) {
        Some(RouteAction::Forward(forward)) => {
            (forward.retry.attempts, forward.retry.retry_on.clone())
        }
        other => panic!("{path}: {other:?}"),
    }
}

#[test]
fn retries_as_istio_1_24() {
    let yaml = with_gateway(
        r#"["*"]"#,
        r#"---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: vs, namespace: istio-system}
spec:
  hosts: [a.example.com]
  gateways: [public]
  http:
  - match: [{uri: {prefix: /attempts}}]
    retries: {attempts: 4}
    route: [{destination: {host: web}}]
  - match: [{uri: {prefix: /grpc}}]
    retries: {attempts: 3, retryOn: "deadline-exceeded,internal,resource-exhausted,503"}
    route: [{destination: {host: web}}]
  - match: [{uri: {prefix: /off}}]
    retries: {retryOn: 5xx}
    route: [{destination: {host: web}}]
  - route: [{destination: {host: web}}]
"#,
    );
    let (snapshot, diagnostics) = load(&yaml);
    assert_eq!(diagnostics.errors().count(), 0, "{diagnostics}");
    let (attempts, on) = retry_of(&snapshot, "/");
    assert_eq!(attempts, 2);
    assert_eq!(on, RetryOn::istio_default());
    assert!(on.status_codes.is_empty(), "no status code by default");
    assert_eq!(
        on.grpc_statuses,
        [RetryOn::GRPC_UNAVAILABLE, RetryOn::GRPC_CANCELLED]
    );
    assert_eq!(
        retry_of(&snapshot, "/attempts"),
        (4, RetryOn::istio_default())
    );
    let (attempts, on) = retry_of(&snapshot, "/grpc");
    assert_eq!(attempts, 3);
    assert_eq!(
        on.grpc_statuses,
        [
            RetryOn::GRPC_DEADLINE_EXCEEDED,
            RetryOn::GRPC_INTERNAL,
            RetryOn::GRPC_RESOURCE_EXHAUSTED
        ]
    );
    assert_eq!(on.status_codes, [503]);
    // No attempts: Istio writes no retry policy at all.
    assert_eq!(retry_of(&snapshot, "/off").0, 0);
}

#[test]
fn https_redirect_covers_hosts_without_virtual_services() {
    let yaml = r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: public, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["bare.example.com", "*.wild.example.com"]
    tls: {httpsRedirect: true}
  - port: {number: 80, name: http-other, protocol: HTTP}
    hosts: ["plain.example.com"]
"#;
    let (snapshot, _) = load(yaml);
    let redirected = |host| {
        matches!(
            find(&snapshot, host, "/x", &[]).map(|r| &r.action),
            Some(RouteAction::Redirect(r)) if r.status == 301 && r.scheme.as_deref() == Some("https")
        )
    };
    assert!(redirected("bare.example.com"));
    assert!(redirected("a.wild.example.com"));
    assert!(!redirected("plain.example.com"));
}

#[test]
fn virtual_services_order_by_creation_then_name_then_namespace() {
    let vs = |name: &str, namespace: &str, created: &str| {
        format!(
            "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {name}, namespace: {namespace}, creationTimestamp: \"{created}\"}}\nspec:\n  hosts: [a.example.com]\n  gateways: [istio-system/public]\n  http: [{{name: r, match: [{{uri: {{prefix: /}}, headers: {{x: {{exact: \"1\"}}}}}}], directResponse: {{status: 200}}}}]\n"
        )
    };
    // File order is the reverse of Istio's order.
    let yaml = with_gateway(
        r#"["*"]"#,
        &[
            vs("b", "ns1", "2024-01-01T00:00:00Z"),
            vs("a", "ns2", "2024-01-01T00:00:00Z"),
            vs("a", "ns1", "2024-01-01T00:00:00Z"),
            vs("z", "ns0", "2023-01-01T00:00:00Z"),
        ]
        .concat(),
    );
    let (snapshot, _) = load(&yaml);
    let listener = snapshot
        .listeners
        .iter()
        .find(|l| l.port == 80)
        .expect("80");
    let mut headers = HeaderMap::new();
    headers.insert("x", HeaderValue::from_static("1"));
    let routes = &listener
        .routes
        .find(&RequestInfo {
            authority: "a.example.com",
            path: "/",
            query: None,
            method: "GET",
            scheme: "http",
            port: 80,
            headers: &headers,
        })
        .expect("a route")
        .name;
    assert_eq!(routes, "ns0/z.r");
    let dump = serde_json::to_string(&listener.routes).expect("serialize");
    let order: Vec<usize> = ["ns0/z.r", "ns1/a.r", "ns2/a.r", "ns1/b.r"]
        .iter()
        .map(|n| dump.find(n).expect(n))
        .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{dump}");
}

#[test]
fn routes_after_a_catch_all_are_dropped_with_a_warning() {
    let yaml = with_gateway(
        r#"["*"]"#,
        r#"---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: vs, namespace: istio-system}
spec:
  hosts: [a.example.com]
  gateways: [public]
  http:
  - name: everything
    match: [{uri: {prefix: /}}]
    directResponse: {status: 200}
  - name: unreachable
    match: [{uri: {prefix: /api}}]
    directResponse: {status: 201}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: later, namespace: istio-system, creationTimestamp: "2030-01-01T00:00:00Z"}
spec:
  hosts: [a.example.com]
  gateways: [public]
  http:
  - name: api
    match: [{uri: {prefix: /api}}]
    directResponse: {status: 202}
"#,
    );
    let (snapshot, diagnostics) = load(&yaml);
    // The catch-all moves behind another VirtualService's specific route, but its own
    // later routes are gone.
    assert_eq!(
        name(&snapshot, "a.example.com", "/api", &[]),
        "istio-system/later.api"
    );
    let dump = serde_json::to_string(&snapshot.listeners[0].routes).expect("serialize");
    assert!(!dump.contains("unreachable"), "{dump}");
    let text = diagnostics.to_string();
    assert!(
        text.contains("VirtualService istio-system/vs: spec.http[1]: never reached: spec.http[0]"),
        "{text}"
    );
}

#[test]
fn exact_sni_hosts_beat_wildcards_regardless_of_order() {
    let route = |host: &str| SniRoute {
        sni_hosts: vec![host.to_owned()],
        clusters: Vec::new(),
    };
    let routes = [route("*"), route("*.example.com"), route("a.example.com")];
    let found = |sni| SniRoute::find(&routes, sni).map(|r| r.sni_hosts[0].as_str());
    assert_eq!(found(Some("a.example.com")), Some("a.example.com"));
    assert_eq!(found(Some("b.example.com")), Some("*.example.com"));
    assert_eq!(found(Some("other.org")), Some("*"));
    assert_eq!(found(None), Some("*"));
}

#[test]
fn cors_unmatched_preflights_follow_istio() {
    let yaml = with_gateway(
        r#"["*"]"#,
        r#"---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: vs, namespace: istio-system}
spec:
  hosts: [a.example.com]
  gateways: [public]
  http:
  - match: [{uri: {prefix: /ignore}}]
    corsPolicy: {allowOrigins: [{exact: "https://a"}], unmatchedPreflights: IGNORE}
    route: [{destination: {host: web}}]
  - corsPolicy: {allowOrigins: [{exact: "https://a"}]}
    route: [{destination: {host: web}}]
"#,
    );
    let (snapshot, diagnostics) = load(&yaml);
    assert_eq!(diagnostics.errors().count(), 0, "{diagnostics}");
    let answers = |path| match find(&snapshot, "a.example.com", path, &[]).map(|r| &r.action) {
        Some(RouteAction::Forward(forward)) => forward.cors_answers_unmatched_preflights,
        other => panic!("{path}: {other:?}"),
    };
    assert!(answers("/ignore"));
    assert!(!answers("/"), "FORWARD is the default");
}

#[test]
fn destination_rule_fields_not_applied_are_reported() {
    let yaml = with_gateway(
        r#"["*"]"#,
        r#"---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: web, namespace: istio-system}
spec:
  host: web
  trafficPolicy:
    loadBalancer: {consistentHash: {httpHeaderName: x-user}}
    connectionPool: {tcp: {maxConnections: 10, maxConnectionDuration: 1h}}
    portLevelSettings:
    - port: {number: 8443}
      tls: {mode: SIMPLE}
  subsets:
  - name: v1
    labels: {version: v1}
    trafficPolicy: {outlierDetection: {consecutive5xxErrors: 2, interval: 5s}}
"#,
    );
    let (_, diagnostics) = load(&yaml);
    let fields: Vec<&str> = diagnostics
        .warnings()
        .filter(|d| d.message.starts_with("not applied by this gateway yet"))
        .filter_map(|d| d.field.as_deref())
        .collect();
    assert_eq!(
        fields,
        [
            // `consistentHash` is applied (ring hash): not listed.
            "spec.trafficPolicy.connectionPool.tcp.maxConnectionDuration",
            // `tls` is applied (TLS origination): not listed.
            "spec.subsets[0].trafficPolicy.outlierDetection.interval",
        ]
    );
}

#[test]
fn host_header_operations_rewrite_the_authority() {
    let yaml = with_gateway(
        r#"["*"]"#,
        r#"---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: vs, namespace: istio-system}
spec:
  hosts: [a.example.com]
  gateways: [public]
  http:
  - match: [{uri: {prefix: /route}}]
    headers: {request: {set: {host: route.internal, x-kept: "1"}}}
    route: [{destination: {host: web}}]
  - match: [{uri: {prefix: /both}}]
    rewrite: {authority: rewrite.internal}
    headers: {request: {set: {host: header.internal}}}
    route: [{destination: {host: web}}]
  - route:
    - destination: {host: web}
      headers: {request: {set: {":authority": dest.internal, ":path": /ignored}}}
"#,
    );
    let (snapshot, diagnostics) = load(&yaml);
    assert_eq!(diagnostics.errors().count(), 0, "{diagnostics}");
    let forward = |path| match find(&snapshot, "a.example.com", path, &[]).map(|r| &r.action) {
        Some(RouteAction::Forward(forward)) => forward.clone(),
        other => panic!("{path}: {other:?}"),
    };
    let authority = |path| {
        forward(path)
            .rewrite
            .as_ref()
            .and_then(|r| r.authority.clone())
    };
    assert_eq!(authority("/route").as_deref(), Some("route.internal"));
    let route = forward("/route");
    let set: Vec<&str> = route
        .headers
        .request
        .set
        .iter()
        .map(|(n, _)| n.as_str())
        .collect();
    assert_eq!(set, ["x-kept"], "host is no header to set");
    assert_eq!(authority("/both").as_deref(), Some("rewrite.internal"));
    let other = forward("/");
    assert_eq!(authority("/"), None);
    let set: Vec<(&str, &str)> = other.clusters[0]
        .headers
        .request
        .set
        .iter()
        .map(|(n, v)| (n.as_str(), v.to_str().unwrap_or_default()))
        .collect();
    assert_eq!(set, [("host", "dest.internal")]);
}

#[test]
fn virtual_services_not_exported_to_the_gateways_namespace_do_not_bind() {
    let vs = |name: &str, namespace: &str, export_to: &str, host: &str| {
        format!(
            r#"---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  hosts: [{host}]
  gateways: [istio-system/public]
  exportTo: {export_to}
  http:
  - directResponse: {{status: 200}}
"#
        )
    };
    let yaml = with_gateway(
        r#"["*/*"]"#,
        &[
            vs("private", "team", r#"["."]"#, "private.example.com"),
            vs(
                "to-gateway",
                "team",
                r#"["istio-system"]"#,
                "shared.example.com",
            ),
            vs("public", "team", r#"["*"]"#, "public.example.com"),
            vs("local", "istio-system", r#"["."]"#, "local.example.com"),
        ]
        .concat(),
    );
    let (snapshot, diagnostics) = load(&yaml);
    let bound = |host| find(&snapshot, host, "/", &[]).is_some();
    assert!(!bound("private.example.com"));
    assert!(bound("shared.example.com"));
    assert!(bound("public.example.com"));
    assert!(bound("local.example.com"));
    assert!(
        diagnostics
            .warnings()
            .any(|d| d.field.as_deref() == Some("spec.exportTo")),
        "no warning for the unexported VirtualService"
    );
}

#[test]
fn retry_backoff_and_previous_hosts_as_istio_converts_them() {
    let yaml = with_gateway(
        r#"["*"]"#,
        r#"---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: vs, namespace: istio-system}
spec:
  hosts: [a.example.com]
  gateways: [public]
  http:
  - match: [{uri: {prefix: /same-host}}]
    retries: {attempts: 2, backoff: 100ms, retryIgnorePreviousHosts: false}
    route: [{destination: {host: web}}]
  - retries: {attempts: 2}
    route: [{destination: {host: web}}]
"#,
    );
    let (snapshot, diagnostics) = load(&yaml);
    assert_eq!(diagnostics.errors().count(), 0, "{diagnostics}");
    let policy = |path| match find(&snapshot, "a.example.com", path, &[]).map(|r| &r.action) {
        Some(RouteAction::Forward(forward)) => forward.retry.clone(),
        other => panic!("{path}: {other:?}"),
    };
    let same_host = policy("/same-host");
    assert_eq!(
        same_host.backoff,
        Some(std::time::Duration::from_millis(100))
    );
    assert!(!same_host.avoid_previous_hosts);
    let default = policy("/");
    assert_eq!(default.backoff, None);
    assert!(
        default.avoid_previous_hosts,
        "Istio adds previous_hosts by default"
    );
}
