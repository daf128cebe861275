//! Tricky Istio cases: merging VirtualServices, catch-alls, wildcards, conflicts.

use std::path::Path;

use super::{Identity, compile};
use crate::{
    config::{self, Diagnostics},
    route_table::RequestInfo,
    snapshot::{RouteAction, Snapshot},
};

fn load(yaml: &str) -> (Snapshot, Diagnostics) {
    let (resources, mut diagnostics) = config::load_text(Path::new("istio.yaml"), yaml);
    let (snapshot, more) = compile(&resources, &Identity::default());
    diagnostics.extend(more);
    (snapshot, diagnostics)
}

/// The route name a request on port 80 reaches, or "404".
fn route_name(snapshot: &Snapshot, host: &str, path: &str) -> String {
    let headers = http::HeaderMap::new();
    let request = RequestInfo {
        authority: host,
        path,
        query: None,
        method: "GET",
        scheme: "http",
        port: 80,
        headers: &headers,
    };
    snapshot
        .listeners
        .iter()
        .find(|l| l.port == 80)
        .and_then(|l| l.routes.find(&request))
        .map_or_else(
            || "404".to_owned(),
            |r| match &r.action {
                RouteAction::Forward(_) => r.name.clone(),
                _ => format!("{} (not forward)", r.name),
            },
        )
}

const GATEWAYS: &str = r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: public, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["*.example.com", "team-a/*.team-a.io"]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: second, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["shop.example.com"]
"#;

#[test]
fn virtual_services_merge_oldest_first_with_catch_alls_last() {
    let yaml = format!(
        "{GATEWAYS}---\n{}",
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: old, namespace: istio-system, creationTimestamp: "2024-01-01T00:00:00Z"}
spec:
  hosts: [shop.example.com]
  gateways: [public, second]
  http:
  - name: cart
    match: [{uri: {prefix: /cart}}]
    route: [{destination: {host: cart}}]
  - name: everything
    route: [{destination: {host: web}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: new, namespace: istio-system, creationTimestamp: "2025-01-01T00:00:00Z"}
spec:
  hosts: [shop.example.com]
  gateways: [public]
  http:
  - name: api
    match: [{uri: {prefix: /api}}]
    route: [{destination: {host: api}}]
  - name: root
    match: [{uri: {prefix: /}}]
    route: [{destination: {host: web2}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: wild, namespace: istio-system}
spec:
  hosts: ["*.example.com"]
  gateways: [public]
  http:
  - name: any
    route: [{destination: {host: web}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: team-a, namespace: team-a}
spec:
  hosts: ["app.team-a.io"]
  gateways: [istio-system/public]
  http: [{name: a, route: [{destination: {host: a}}]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: team-b, namespace: team-b}
spec:
  hosts: ["app.team-a.io"]
  gateways: [istio-system/public]
  http: [{name: b, route: [{destination: {host: b}}]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: elsewhere, namespace: istio-system}
spec:
  hosts: [shop.example.org]
  gateways: [public]
  http: [{name: x, route: [{destination: {host: web}}]}]
"#
    );
    let (snapshot, diagnostics) = load(&yaml);
    let cases = [
        ("shop.example.com", "/cart/1", "istio-system/old.cart"),
        // The newer VirtualService's specific route beats the older one's catch-all.
        ("shop.example.com", "/api/v1", "istio-system/new.api"),
        // Catch-alls keep their age order among themselves.
        ("shop.example.com", "/", "istio-system/old.everything"),
        // A more specific host's virtual host wins over the wildcard's.
        ("other.example.com", "/", "istio-system/wild.any"),
        ("example.com", "/", "404"),
        // `team-a/*.team-a.io` admits only VirtualServices in team-a.
        ("app.team-a.io", "/", "team-a/team-a.a"),
        ("shop.example.org", "/", "404"),
    ];
    for (host, path, want) in cases {
        assert_eq!(route_name(&snapshot, host, path), want, "{host}{path}");
    }
    let text = diagnostics.to_string();
    assert!(
        text.contains("VirtualService team-b/team-b: spec.hosts: none of its hosts [\"app.team-a.io\"] is accepted by a server on port 80"),
        "{text}"
    );
    assert!(
        text.contains("VirtualService istio-system/elsewhere: spec.hosts: none of its hosts"),
        "{text}"
    );
}

#[test]
fn duplicate_port_names_are_reported() {
    let yaml = r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: dup, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: web, protocol: HTTP}
    hosts: ["a.example.com"]
  - port: {number: 8080, name: web, protocol: HTTP}
    hosts: ["b.example.com"]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: other, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 81, name: web, protocol: HTTP}
    hosts: ["c.example.com"]
"#;
    let (_, diagnostics) = load(yaml);
    let errors: Vec<String> = diagnostics.errors().map(ToString::to_string).collect();
    assert_eq!(
        errors,
        [
            "error: istio.yaml:10: Gateway istio-system/dup: spec.servers[1].port.name: port name \"web\" is also used by spec.servers[0]: port names in a Gateway's servers must be unique"
        ]
    );
    assert!(
        diagnostics.to_string().contains("Gateway istio-system/other: spec.servers[0].port.name: port name \"web\" is port 80 in Gateway istio-system/dup"),
        "{diagnostics}"
    );
}

/// Each route field is type-checked on its own (`config::resources::Lenient`): a wrong
/// one is an error at its file, line and field path, its route is skipped, and the rest
/// of the VirtualService (and of the file) is still served.
#[test]
fn a_wrongly_typed_route_field_is_reported_at_its_path_and_the_rest_is_served() {
    let yaml = r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: edge, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["*"]
  - port: {number: 9000, name: tcp, protocol: TCP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: typed, namespace: istio-system}
spec:
  hosts: [typed.example.com]
  gateways: [edge]
  http:
  - name: bad
    match: [{uri: {prefix: /bad}}]
    retries: {attempts: many}
    route: [{destination: {host: web}}]
  - name: good
    route: [{destination: {host: web}}]
  tcp:
  - route: [{destination: {host: web}, weight: heavy}]
  - route: [{destination: {host: web}}]
"#;
    let (snapshot, diagnostics) = load(yaml);
    let text = diagnostics.to_string();
    assert!(
        text.contains("istio.yaml:22: VirtualService istio-system/typed: spec.http[0].retries.attempts: invalid type: string \"many\", expected u32"),
        "{text}"
    );
    assert!(
        text.contains("VirtualService istio-system/typed: spec.tcp[0].route[0].weight: invalid type: string \"heavy\", expected u32"),
        "{text}"
    );
    assert_eq!(
        route_name(&snapshot, "typed.example.com", "/bad"),
        "istio-system/typed.good"
    );
    let tcp = snapshot
        .listeners
        .iter()
        .find(|l| l.port == 9000)
        .expect("the TCP listener");
    assert!(tcp.transport.is_some(), "the second tcp route is served");
}
