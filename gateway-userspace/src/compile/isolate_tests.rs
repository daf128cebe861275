use std::path::Path;

use super::*;
use crate::{config, snapshot::Snapshot};

/// Compiles as a reload does; the hosts each port serves and what was dropped.
fn isolate(yaml: &str) -> Result<Isolated, Diagnostics> {
    let (resources, diagnostics) = config::load_text(Path::new("isolate.yaml"), yaml);
    compile_isolating(
        &resources,
        diagnostics,
        &Identity::default(),
        &TlsState::default(),
        None,
    )
}

fn hosts(snapshot: &Snapshot, port: u16) -> Vec<String> {
    snapshot
        .listeners
        .iter()
        .filter(|l| l.port == port)
        .flat_map(|l| l.routes.virtual_hosts.iter().map(|v| v.host.clone()))
        .collect()
}

fn dropped(isolated: &Isolated) -> Vec<String> {
    isolated
        .dropped
        .iter()
        .map(|d| format!("{} {}", d.object.qualified_kind(), d.object))
        .collect()
}

const ISTIO_GATEWAY: &str = r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: default}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["*"]
"#;

fn virtual_service(name: &str, uri: &str) -> String {
    format!(
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: {name}, namespace: default}}
spec:
  hosts: [{name}.example.com]
  gateways: [gw]
  http:
  - match: [{{uri: {uri}}}]
    route: [{{destination: {{host: backend}}}}]
"#
    )
}

#[test]
fn a_bad_virtual_service_is_dropped_and_the_good_ones_are_served() {
    let yaml = [
        ISTIO_GATEWAY.to_owned(),
        virtual_service("one", "{prefix: /}"),
        virtual_service("broken", "{regex: \"(\"}"),
        virtual_service("two", "{exact: /two}"),
    ]
    .join("---\n");
    let isolated = isolate(&yaml).expect("served around the broken object");
    assert_eq!(
        hosts(&isolated.snapshot, 80),
        ["one.example.com", "two.example.com"]
    );
    assert_eq!(
        dropped(&isolated),
        ["VirtualService.networking.istio.io VirtualService default/broken"]
    );
    assert!(
        isolated.dropped[0].reason().contains("regex"),
        "{}",
        isolated.dropped[0].reason()
    );
    assert!(!isolated.diagnostics.has_errors());
    assert_eq!(isolated.snapshot.report.dropped, isolated.dropped);
}

#[test]
fn an_object_that_does_not_parse_is_dropped_and_reported() {
    let broken = virtual_service("broken", "{prefix: /}").replace("hosts: [", "hosts: {oops: [");
    let broken = broken.replace(".example.com]", ".example.com]}");
    let yaml = [
        ISTIO_GATEWAY.to_owned(),
        virtual_service("one", "{prefix: /}"),
        broken,
    ]
    .join("---\n");
    let isolated = isolate(&yaml).expect("served");
    assert_eq!(hosts(&isolated.snapshot, 80), ["one.example.com"]);
    assert_eq!(
        dropped(&isolated),
        ["VirtualService.networking.istio.io VirtualService default/broken"]
    );
    let location = isolated.dropped[0].errors[0].location.as_ref();
    assert!(location.is_some_and(|l| l.line > 1), "{location:?}");
}

#[test]
fn errors_that_name_no_object_refuse_the_whole_configuration() {
    for broken in [
        "kind: [unclosed\n",
        "apiVersion: v1\nmetadata: {name: x}\n",
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nspec: {hosts: [x]}\n",
    ] {
        let yaml = [
            ISTIO_GATEWAY.to_owned(),
            virtual_service("one", "{prefix: /}"),
            broken.to_owned(),
        ]
        .join("---\n");
        let refused = isolate(&yaml).err().expect("refused");
        assert!(refused.errors().all(|d| d.object.is_none()), "{refused}");
    }
}

const API_GATEWAYS: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw, namespace: default}
spec:
  gatewayClassName: istio
  listeners:
  - {name: http, port: 8080, protocol: HTTP}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: other, namespace: default}
spec:
  gatewayClassName: istio
  listeners:
  - {name: http, port: 9090, protocol: HTTP}
"#;

fn http_route(name: &str, parents: &str, path: &str) -> String {
    format!(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {name}, namespace: default}}
spec:
  parentRefs: [{parents}]
  hostnames: [{name}.example.com]
  rules:
  - matches: [{{path: {path}}}]
    backendRefs: [{{name: backend, port: 80}}]
"#
    )
}

#[test]
fn a_bad_http_route_is_dropped_and_its_gateway_still_served() {
    let yaml = [
        API_GATEWAYS.to_owned(),
        http_route("good", "{name: gw}", "{type: PathPrefix, value: /}"),
        http_route(
            "bad",
            "{name: gw}",
            "{type: RegularExpression, value: \"(\"}",
        ),
    ]
    .join("---\n");
    let isolated = isolate(&yaml).expect("served");
    assert_eq!(hosts(&isolated.snapshot, 8080), ["good.example.com"]);
    assert_eq!(
        dropped(&isolated),
        ["HTTPRoute.gateway.networking.k8s.io HTTPRoute default/bad"]
    );
}

#[test]
fn a_bad_gateway_drops_its_listeners_and_the_routes_bound_only_to_it() {
    let broken = API_GATEWAYS.replace(
        "  - {name: http, port: 8080, protocol: HTTP}",
        "  - {name: http, port: 8080, protocol: HTTP}\n  - {name: http, port: 8081, protocol: HTTP}",
    );
    let yaml = [
        broken,
        http_route("only", "{name: gw}", "{type: PathPrefix, value: /}"),
        http_route(
            "both",
            "{name: gw}, {name: other}",
            "{type: PathPrefix, value: /}",
        ),
    ]
    .join("---\n");
    let isolated = isolate(&yaml).expect("served");
    assert_eq!(
        dropped(&isolated),
        ["Gateway.gateway.networking.k8s.io Gateway default/gw"]
    );
    assert!(hosts(&isolated.snapshot, 8080).is_empty());
    assert!(!isolated.snapshot.listeners.iter().any(|l| l.port == 8080));
    assert_eq!(hosts(&isolated.snapshot, 9090), ["both.example.com"]);
    // The route bound only to the dropped Gateway says why it is not served.
    assert!(
        isolated
            .diagnostics
            .warnings()
            .any(|d| d.resource.as_deref() == Some("HTTPRoute default/only")),
        "{}",
        isolated.diagnostics
    );
}

#[test]
fn istio_and_gateway_api_gateways_of_one_name_are_told_apart() {
    // The Istio Gateway default/gw repeats a port name (an error); the Gateway API
    // Gateway default/gw is fine and keeps serving.
    let broken_istio = ISTIO_GATEWAY.replace(
        "    hosts: [\"*\"]",
        "    hosts: [\"*\"]\n  - port: {number: 81, name: http, protocol: HTTP}\n    hosts: [\"*\"]",
    );
    let yaml = [
        broken_istio,
        virtual_service("one", "{prefix: /}"),
        API_GATEWAYS.to_owned(),
        http_route("good", "{name: gw}", "{type: PathPrefix, value: /}"),
    ]
    .join("---\n");
    let isolated = isolate(&yaml).expect("served");
    assert_eq!(
        dropped(&isolated),
        ["Gateway.networking.istio.io Gateway default/gw"]
    );
    assert!(hosts(&isolated.snapshot, 80).is_empty());
    assert_eq!(hosts(&isolated.snapshot, 8080), ["good.example.com"]);
}

#[test]
fn without_keeps_every_other_object_as_the_same_allocation() {
    let yaml = [
        ISTIO_GATEWAY.to_owned(),
        virtual_service("one", "{prefix: /}"),
    ]
    .join("---\n");
    let (resources, _) = config::load_text(Path::new("x.yaml"), &yaml);
    let gone = BTreeMap::from([(resources.gateways[0].resource.object_ref(), Vec::new())]);
    let kept = without(&resources, &gone);
    assert!(kept.gateways.is_empty());
    assert!(std::sync::Arc::ptr_eq(
        &kept.virtual_services[0].resource,
        &resources.virtual_services[0].resource
    ));
}

/// A route to the Service `backend` (port 80) and its subset `v1`, and `rule`.
fn with_destination_rule(rule: &str) -> String {
    let routes = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: routes, namespace: default}
spec:
  hosts: [app.example.com]
  gateways: [gw]
  http:
  - match: [{uri: {prefix: /v1}}]
    route: [{destination: {host: backend, subset: v1}}]
  - route: [{destination: {host: backend}}]
---
apiVersion: v1
kind: Service
metadata: {name: backend, namespace: default}
spec: {ports: [{name: http, port: 80}]}
"#;
    let rule = format!(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: backend, namespace: default}}\nspec:\n  host: backend\n{rule}\n"
    );
    [ISTIO_GATEWAY.to_owned(), routes.to_owned(), rule].join("---\n")
}

/// The TLS of each cluster of `backend` by name: None plaintext, Some(refused).
fn backend_tls(snapshot: &Snapshot) -> Vec<(String, Option<bool>)> {
    let mut clusters: Vec<(String, Option<bool>)> = snapshot
        .clusters
        .iter()
        .filter(|c| c.service_name == "backend")
        .map(|c| (c.name.clone(), c.tls.as_ref().map(|t| t.refused.is_some())))
        .collect();
    clusters.sort();
    clusters
}

/// A DestinationRule that asked for TLS and is dropped (it does not parse, or another
/// field has an error) fails closed: every cluster of its host refuses (503 UF) rather
/// than send plaintext. One that did not ask for TLS is dropped as before.
#[test]
fn a_dropped_destination_rule_that_asked_for_tls_fails_closed() {
    const SUBSET: &str = "  subsets: [{name: v1, labels: {version: v1}}]\n";
    let (refused, plain, tls) = (Some(true), None, Some(false));
    for (rule, want, fails_closed) in [
        // The mode misspelt.
        ("  trafficPolicy: {tls: {mode: SIMPEL}}", refused, true),
        // TLS in a subset only, another field unreadable: all of the host refuses.
        (
            "  trafficPolicy: {loadBalancer: {simple: FASTEST}}\n  subsets: [{name: v1, labels: {version: v1}, trafficPolicy: {tls: {mode: SIMPLE}}}]",
            refused,
            true,
        ),
        // It parses, but a duration is wrong: dropped by isolation, TLS asked for.
        (
            "  trafficPolicy: {tls: {mode: SIMPLE}, connectionPool: {tcp: {connectTimeout: soon}}}",
            refused,
            true,
        ),
        // No TLS asked for: dropped, plaintext as before.
        (
            "  trafficPolicy: {tls: {mode: DISABLE}, loadBalancer: {simple: FASTEST}}",
            plain,
            false,
        ),
        (
            "  trafficPolicy: {tls: {mode: DISABLE}, connectionPool: {tcp: {connectTimeout: soon}}}",
            plain,
            false,
        ),
        // Fixed.
        ("  trafficPolicy: {tls: {mode: SIMPLE}}", tls, false),
    ] {
        let rule = if rule.contains("subsets") {
            rule.to_owned()
        } else {
            format!("{rule}\n{SUBSET}")
        };
        let isolated = isolate(&with_destination_rule(&rule)).expect("served");
        let clusters = backend_tls(&isolated.snapshot);
        assert_eq!(clusters.len(), 2, "{clusters:?}");
        for (name, got) in &clusters {
            assert_eq!(*got, want, "{rule}: {name}\n{}", isolated.diagnostics);
        }
        let said = isolated.diagnostics.to_string();
        assert_eq!(
            said.contains("fails closed"),
            fails_closed,
            "{rule}: {said}"
        );
        if fails_closed {
            assert!(said.contains("DestinationRule default/backend"), "{said}");
            assert_eq!(
                dropped(&isolated),
                ["DestinationRule.networking.istio.io DestinationRule default/backend"]
            );
            // Its subset is still known: no route lost it.
            assert!(!said.contains("has no subset"), "{said}");
        }
    }
}

/// Stand-ins made at load stay in the rounds that drop other objects.
#[test]
fn stand_ins_survive_the_rounds_that_drop_other_objects() {
    let yaml = [
        with_destination_rule("  trafficPolicy: {tls: {mode: SIMPEL}}"),
        virtual_service("broken", "{regex: \"(\"}"),
    ]
    .join("---\n");
    let isolated = isolate(&yaml).expect("served");
    assert_eq!(dropped(&isolated).len(), 2, "{:?}", dropped(&isolated));
    let clusters = backend_tls(&isolated.snapshot);
    assert!(
        !clusters.is_empty() && clusters.iter().all(|(_, tls)| *tls == Some(true)),
        "{clusters:?}"
    );
}
