//! Gateway API `spec.addresses`: where listeners bind, what status says, and which
//! listener a connection gets. The node's addresses are faked: `10.0.0.x` are ours.

use std::{
    net::{IpAddr, SocketAddr},
    path::Path,
};

use super::{
    Identity,
    addresses::{GatewayAddresses, resolve},
    compile,
    report::Report,
};
use crate::{
    config::{self, Diagnostics, resources::gateway_api::GatewaySpecAddress},
    route_table::RequestInfo,
    snapshot::{RouteAction, Snapshot},
};

fn ours(ip: IpAddr) -> Result<(), String> {
    if ip.to_string().starts_with("10.0.0.") {
        Ok(())
    } else {
        Err("it is not an address of this node".to_owned())
    }
}

fn identity() -> Identity {
    Identity {
        address_check: ours,
        ..Identity::default()
    }
}

fn address(kind: Option<&str>, value: &str) -> GatewaySpecAddress {
    GatewaySpecAddress {
        address_type: kind.map(str::to_owned),
        value: Some(value.to_owned()),
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("an IP")
}

#[test]
fn addresses_resolve_to_binds_and_findings() {
    // None: every address, reported by the cluster.
    assert_eq!(
        resolve(&[], ours),
        GatewayAddresses {
            binds: vec![None],
            ..GatewayAddresses::default()
        }
    );
    // The type defaults to IPAddress; a repeated address binds once.
    let both = resolve(
        &[
            address(None, "10.0.0.1"),
            address(Some("IPAddress"), "10.0.0.2"),
            address(None, "10.0.0.1"),
        ],
        ours,
    );
    assert_eq!(both.binds, [Some(ip("10.0.0.1")), Some(ip("10.0.0.2"))]);
    assert_eq!(both.reported, Some(vec![ip("10.0.0.1"), ip("10.0.0.2")]));
    assert!(both.unsupported.is_empty() && both.unusable.is_empty());
    // One usable, one not: served on the usable one, the other reported.
    let partly = resolve(
        &[address(None, "192.0.2.1"), address(None, "10.0.0.3")],
        ours,
    );
    assert_eq!(partly.binds, [Some(ip("10.0.0.3"))]);
    assert_eq!(partly.reported, Some(vec![ip("10.0.0.3")]));
    assert_eq!(partly.unusable.len(), 1);
    assert!(
        partly.unusable[0]
            .starts_with("192.0.2.1 cannot be used: it is not an address of this node")
    );
    // None usable: nowhere.
    let none = resolve(&[address(None, "192.0.2.1")], ours);
    assert!(none.binds.is_empty(), "{none:?}");
    // Hostname, implementation-specific types and non-IP values are unsupported.
    let odd = resolve(
        &[
            address(Some("Hostname"), "gw.example.com"),
            address(Some("test/fake-invalid-type"), "fake address teehee!"),
            address(None, "not-an-ip"),
        ],
        ours,
    );
    assert_eq!(odd.unsupported.len(), 3, "{odd:?}");
    assert!(odd.unsupported[0].starts_with("Hostname \"gw.example.com\": only IPAddress"));
    // An empty value asks us to choose: every address (the named ones included).
    let chosen = resolve(&[address(None, ""), address(None, "10.0.0.1")], ours);
    assert_eq!(chosen.binds, [None]);
    assert_eq!(chosen.reported, None);
    let unspecified = resolve(&[address(None, "0.0.0.0")], ours);
    assert_eq!(unspecified.binds, [None]);
}

/// The conformance suite's HTTPRouteMultipleGateways, with an address each: the
/// Gateways share port 80, each with a catch-all route of its own and one route shared.
const MULTIPLE_GATEWAYS: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: same-namespace, creationTimestamp: "2025-01-01T00:00:00Z"}
spec:
  gatewayClassName: istio
  addresses: [{type: IPAddress, value: 10.0.0.1}]
  listeners: [{name: http, port: 80, protocol: HTTP}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: all-namespaces, creationTimestamp: "2025-02-01T00:00:00Z"}
spec:
  gatewayClassName: istio
  addresses: [{value: 10.0.0.2}]
  listeners: [{name: http, port: 80, protocol: HTTP, allowedRoutes: {namespaces: {from: All}}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: everywhere, creationTimestamp: "2025-03-01T00:00:00Z"}
spec:
  gatewayClassName: istio
  listeners: [{name: http, port: 80, protocol: HTTP}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: shared}
spec:
  parentRefs: [{name: same-namespace}, {name: all-namespaces}]
  rules: [{matches: [{path: {type: PathPrefix, value: /shared}}], backendRefs: [{name: a, port: 80}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: same-dedicated}
spec:
  parentRefs: [{name: same-namespace}]
  rules: [{backendRefs: [{name: b, port: 80}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: all-dedicated}
spec:
  parentRefs: [{name: all-namespaces}]
  rules: [{backendRefs: [{name: c, port: 80}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: everywhere-dedicated}
spec:
  parentRefs: [{name: everywhere}]
  rules: [{backendRefs: [{name: a, port: 80}]}]
---
"#;

const BACKENDS: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: a}
spec: {ports: [{name: http, port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: a-1, labels: {kubernetes.io/service-name: a}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints: [{addresses: [192.168.0.1]}]
---
apiVersion: v1
kind: Service
metadata: {name: b}
spec: {ports: [{name: http, port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: b-1, labels: {kubernetes.io/service-name: b}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints: [{addresses: [192.168.0.2]}]
---
apiVersion: v1
kind: Service
metadata: {name: c}
spec: {ports: [{name: http, port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: c-1, labels: {kubernetes.io/service-name: c}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints: [{addresses: [192.168.0.3]}]
"#;

fn compile_yaml(yaml: &str) -> (Snapshot, Diagnostics) {
    let text = format!("{yaml}{BACKENDS}");
    let (resources, mut diagnostics) = config::load_text(Path::new("addresses.yaml"), &text);
    assert!(!diagnostics.has_errors(), "{diagnostics}");
    let (snapshot, more) = compile(&resources, &identity());
    diagnostics.extend(more);
    (snapshot, diagnostics)
}

/// The endpoint a request to `local` for `path` goes to, or `404`/`no listener`.
fn outcome(snapshot: &Snapshot, local: &str, path: &str) -> String {
    let local: SocketAddr = local.parse().expect("a socket address");
    let Some(listener) = snapshot.listener_for(local) else {
        return "no listener".into();
    };
    let headers = http::HeaderMap::new();
    let info = RequestInfo {
        authority: "any.example",
        path,
        query: None,
        method: "GET",
        scheme: "http",
        port: local.port(),
        headers: &headers,
    };
    match listener.routes.find(&info).map(|r| &r.action) {
        Some(RouteAction::Forward(forward)) => snapshot
            .endpoints_of(&forward.clusters[0].cluster)
            .first()
            .map_or_else(|| "503".to_owned(), |e| e.ip().to_string()),
        Some(_) => "other".into(),
        None => "404".into(),
    }
}

fn gateway_line(report: &Report, name: &str) -> String {
    let text = report.to_string();
    text.lines()
        .find(|l| l.starts_with(&format!("Gateway default/{name}:")))
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn gateways_on_one_port_are_told_apart_by_address() {
    let (snapshot, diagnostics) = compile_yaml(MULTIPLE_GATEWAYS);
    let keys: Vec<(u16, Option<IpAddr>)> = snapshot
        .listeners
        .iter()
        .map(|l| (l.port, l.address))
        .collect();
    assert_eq!(
        keys,
        [
            (80, None),
            (80, Some(ip("10.0.0.1"))),
            (80, Some(ip("10.0.0.2")))
        ]
    );
    let cases = [
        ("10.0.0.1:80", "/shared", "192.168.0.1"),
        ("10.0.0.1:80", "/", "192.168.0.2"),
        ("10.0.0.2:80", "/shared", "192.168.0.1"),
        ("10.0.0.2:80", "/", "192.168.0.3"),
        // Any other address: the Gateway on every address.
        ("10.0.0.9:80", "/", "192.168.0.1"),
        ("10.0.0.1:81", "/", "no listener"),
    ];
    for (local, path, want) in cases {
        assert_eq!(outcome(&snapshot, local, path), want, "{local}{path}");
    }
    assert!(
        !diagnostics.to_string().contains("Conflict"),
        "{diagnostics}"
    );
    let report = &snapshot.report;
    for name in ["same-namespace", "all-namespaces", "everywhere"] {
        let line = gateway_line(report, name);
        assert!(line.contains("Accepted=True"), "{line}");
        assert!(line.contains("Programmed=True"), "{line}");
    }
    assert!(
        gateway_line(report, "same-namespace").ends_with("addresses: [10.0.0.1]"),
        "{report}"
    );
    let addresses = |name: &str| {
        report
            .gateway("default", name)
            .and_then(|g| g.addresses.clone())
    };
    assert_eq!(addresses("all-namespaces"), Some(vec![ip("10.0.0.2")]));
    assert_eq!(addresses("everywhere"), None);
}

/// Two Gateways asking for the same address merge as Gateways on every address do: a
/// younger one whose routes want what the older one serves is conflicted.
#[test]
fn gateways_on_the_same_address_still_conflict() {
    let yaml = MULTIPLE_GATEWAYS.replace("value: 10.0.0.2", "value: 10.0.0.1");
    let (snapshot, diagnostics) = compile_yaml(&yaml);
    let text = diagnostics.to_string();
    assert!(
        text.contains("Gateway default/all-namespaces: spec.listeners[0]: port 80 is already served by the older Gateway default/same-namespace"),
        "{text}"
    );
    assert_eq!(outcome(&snapshot, "10.0.0.1:80", "/"), "192.168.0.2");
}

#[test]
fn an_unusable_address_is_not_programmed_and_the_usable_ones_serve() {
    let yaml = MULTIPLE_GATEWAYS.replace(
        "addresses: [{value: 10.0.0.2}]",
        "addresses: [{value: 192.0.2.7}, {value: 10.0.0.2}]",
    );
    let (snapshot, diagnostics) = compile_yaml(&yaml);
    let line = gateway_line(&snapshot.report, "all-namespaces");
    assert!(line.contains("Accepted=True"), "{line}");
    assert!(
        line.contains("Programmed=False AddressNotUsable: address not usable: 192.0.2.7 cannot be used: it is not an address of this node"),
        "{line}"
    );
    assert!(line.ends_with("addresses: [10.0.0.2]"), "{line}");
    assert_eq!(outcome(&snapshot, "10.0.0.2:80", "/"), "192.168.0.3");
    assert!(
        diagnostics
            .to_string()
            .contains("spec.addresses: address not usable: 192.0.2.7"),
        "{diagnostics}"
    );

    // Nothing usable: not served anywhere, the listener says why.
    let yaml = MULTIPLE_GATEWAYS.replace("value: 10.0.0.2", "value: 192.0.2.7");
    let (snapshot, _) = compile_yaml(&yaml);
    let text = snapshot.report.to_string();
    assert!(
        gateway_line(&snapshot.report, "all-namespaces")
            .contains("Programmed=False AddressNotUsable"),
        "{text}"
    );
    assert!(
        text.contains("listener http: attachedRoutes 0; Accepted=True Accepted; Programmed=False Invalid: none of the Gateway's addresses can be used on this node"),
        "{text}"
    );
    let addresses: Vec<Option<IpAddr>> = snapshot.listeners.iter().map(|l| l.address).collect();
    assert_eq!(addresses, [None, Some(ip("10.0.0.1"))]);
}

#[test]
fn a_hostname_address_is_unsupported_and_not_served() {
    let yaml = MULTIPLE_GATEWAYS.replace(
        "addresses: [{value: 10.0.0.2}]",
        "addresses: [{type: Hostname, value: gw.example.com}, {value: 10.0.0.2}]",
    );
    let (snapshot, diagnostics) = compile_yaml(&yaml);
    let line = gateway_line(&snapshot.report, "all-namespaces");
    assert!(
        line.contains("Accepted=False UnsupportedAddress: unsupported address: Hostname \"gw.example.com\": only IPAddress addresses are supported"),
        "{line}"
    );
    assert!(line.contains("Programmed=False"), "{line}");
    // Its address falls to the Gateway on every address.
    assert_eq!(outcome(&snapshot, "10.0.0.2:80", "/"), "192.168.0.1");
    assert!(
        snapshot
            .listeners
            .iter()
            .all(|l| l.address != Some(ip("10.0.0.2")))
    );
    assert!(
        diagnostics
            .to_string()
            .contains("spec.addresses: unsupported address"),
        "{diagnostics}"
    );
}
