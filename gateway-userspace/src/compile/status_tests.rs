//! Each reason the report gives, produced by a minimal configuration.

use std::path::Path;

use super::{Identity, compile_isolating, report::Report};
use crate::{config, tls::TlsState};

fn report(yaml: &str) -> Report {
    let (resources, diagnostics) = config::load_text(Path::new("status.yaml"), yaml);
    let isolated = compile_isolating(
        &resources,
        diagnostics,
        &Identity::default(),
        &TlsState::default(),
        None,
    )
    .expect("compiles");
    (*isolated.snapshot.report).clone()
}

/// What a case looks at: a class, a Gateway, a Gateway's listener, or a route's first
/// parent of ours; and the condition type.
enum At {
    Class(&'static str),
    Gateway(&'static str),
    Listener(&'static str, &'static str),
    Route(&'static str, &'static str),
}

/// (status, reason) of a condition, or why it was not found.
fn condition(report: &Report, at: &At, kind: &str) -> Result<(bool, String), String> {
    let conditions = match at {
        At::Class(name) => report
            .gateway_classes
            .iter()
            .find(|c| c.object.name == *name)
            .map(|c| &c.conditions),
        At::Gateway(name) => report.gateway("default", name).map(|g| &g.conditions),
        At::Listener(gateway, listener) => report
            .gateway("default", gateway)
            .and_then(|g| g.listeners.iter().find(|l| l.name == *listener))
            .map(|l| &l.conditions),
        At::Route(route_kind, name) => report
            .route(route_kind, "default", name)
            .and_then(|r| r.parents.first())
            .map(|p| &p.conditions),
    }
    .ok_or_else(|| format!("no status entry:\n{report}"))?;
    let c = conditions
        .iter()
        .find(|c| c.kind == kind)
        .ok_or_else(|| format!("no {kind} condition:\n{report}"))?;
    Ok((c.is_true(), c.reason.to_owned()))
}

const CLASS: &str = "apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: istio}
spec: {controllerName: istio.io/gateway-controller}
";

const BACKEND: &str = "apiVersion: v1
kind: Service
metadata: {name: backend, namespace: default}
spec: {ports: [{name: http, port: 80}]}
";

/// Gateway `gw` of class istio with these listeners (flow-style YAML list items).
fn gateway(listeners: &[&str]) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: gw, namespace: default, generation: 3}}
spec:
  gatewayClassName: istio
  listeners:
{}
",
        listeners
            .iter()
            .map(|l| format!("  - {l}\n"))
            .collect::<String>()
    )
}

const HTTP: &str = "{name: http, port: 80, protocol: HTTP}";

/// An HTTPRoute `r` in `namespace` with this parentRef, hostnames and backendRef.
fn http_route(namespace: &str, parent: &str, hostnames: &str, backend: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: r, namespace: {namespace}, generation: 7}}
spec:
  parentRefs: [{parent}]
  hostnames: {hostnames}
  rules:
  - backendRefs: [{backend}]
"
    )
}

const GOOD_BACKEND: &str = "{name: backend, port: 80}";

fn yaml(parts: &[&str]) -> String {
    parts.join("---\n")
}

#[test]
fn each_reason_comes_from_a_minimal_configuration() {
    let good_route = http_route("default", "{name: gw}", "[]", GOOD_BACKEND);
    let cases: Vec<(&str, String, At, &str, bool, &str)> = vec![
        (
            "our class is accepted",
            yaml(&[CLASS, &gateway(&[HTTP])]),
            At::Class("istio"),
            "Accepted",
            true,
            "Accepted",
        ),
        (
            "a class with our controllerName is ours too",
            yaml(&[
                "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {name: mine}\nspec: {controllerName: gatewayd.dev/gateway-controller}\n",
                &gateway(&[HTTP]).replace("gatewayClassName: istio", "gatewayClassName: mine"),
            ]),
            At::Gateway("gw"),
            "Programmed",
            true,
            "Programmed",
        ),
        (
            "a good Gateway is accepted",
            yaml(&[CLASS, &gateway(&[HTTP])]),
            At::Gateway("gw"),
            "Accepted",
            true,
            "Accepted",
        ),
        (
            "some listeners invalid: accepted, ListenersNotValid",
            yaml(&[CLASS, &gateway(&[HTTP, "{name: udp, port: 53, protocol: UDP}"])]),
            At::Gateway("gw"),
            "Accepted",
            true,
            "ListenersNotValid",
        ),
        (
            "every listener invalid: not accepted",
            yaml(&[CLASS, &gateway(&["{name: udp, port: 53, protocol: UDP}"])]),
            At::Gateway("gw"),
            "Accepted",
            false,
            "ListenersNotValid",
        ),
        (
            "no listener served: not programmed",
            yaml(&[CLASS, &gateway(&["{name: udp, port: 53, protocol: UDP}"])]),
            At::Gateway("gw"),
            "Programmed",
            false,
            "Invalid",
        ),
        (
            "a Gateway with an error is dropped: Invalid",
            yaml(&[CLASS, &gateway(&[HTTP, "{name: http, port: 81, protocol: HTTP}"])]),
            At::Gateway("gw"),
            "Accepted",
            false,
            "Invalid",
        ),
        (
            "unsupported protocol",
            yaml(&[CLASS, &gateway(&["{name: udp, port: 53, protocol: UDP}"])]),
            At::Listener("gw", "udp"),
            "Accepted",
            false,
            "UnsupportedProtocol",
        ),
        (
            "a port an Istio Gateway serves",
            yaml(&[
                "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: istio-gw, namespace: default}\nspec:\n  selector: {istio: ingressgateway}\n  servers:\n  - port: {number: 80, name: http, protocol: HTTP}\n    hosts: [\"*\"]\n",
                CLASS,
                &gateway(&[HTTP]),
            ]),
            At::Listener("gw", "http"),
            "Accepted",
            false,
            "PortUnavailable",
        ),
        (
            "a good listener is programmed",
            yaml(&[CLASS, &gateway(&[HTTP])]),
            At::Listener("gw", "http"),
            "Programmed",
            true,
            "Programmed",
        ),
        (
            "no conflicts",
            yaml(&[CLASS, &gateway(&[HTTP])]),
            At::Listener("gw", "http"),
            "Conflicted",
            false,
            "NoConflicts",
        ),
        (
            "the same port and hostname twice",
            yaml(&[CLASS, &gateway(&[HTTP, "{name: again, port: 80, protocol: HTTP}"])]),
            At::Listener("gw", "again"),
            "Conflicted",
            true,
            "HostnameConflict",
        ),
        (
            "a conflicted listener is not programmed",
            yaml(&[CLASS, &gateway(&[HTTP, "{name: again, port: 80, protocol: HTTP}"])]),
            At::Listener("gw", "again"),
            "Programmed",
            false,
            "HostnameConflict",
        ),
        (
            "another protocol on a port an older Gateway serves",
            yaml(&[
                CLASS,
                &gateway(&[HTTP]),
                &gateway(&["{name: tcp, port: 80, protocol: TCP}"]).replace("name: gw,", "name: gw2,"),
            ]),
            At::Listener("gw2", "tcp"),
            "Conflicted",
            true,
            "ProtocolConflict",
        ),
        (
            "the older Gateway keeps its listener",
            yaml(&[
                CLASS,
                &gateway(&[HTTP]),
                &gateway(&["{name: tcp, port: 80, protocol: TCP}"]).replace("name: gw,", "name: gw2,"),
            ]),
            At::Listener("gw", "http"),
            "Conflicted",
            false,
            "NoConflicts",
        ),
        (
            "a conflicted listener is not accepted",
            yaml(&[CLASS, &gateway(&[HTTP, "{name: again, port: 80, protocol: HTTP}"])]),
            At::Listener("gw", "again"),
            "Accepted",
            false,
            "HostnameConflict",
        ),
        (
            "two protocols on one port",
            yaml(&[CLASS, &gateway(&[HTTP, "{name: tcp, port: 80, protocol: TCP}"])]),
            At::Listener("gw", "tcp"),
            "Conflicted",
            true,
            "ProtocolConflict",
        ),
        (
            "refs resolved",
            yaml(&[CLASS, &gateway(&[HTTP])]),
            At::Listener("gw", "http"),
            "ResolvedRefs",
            true,
            "ResolvedRefs",
        ),
        (
            "a route kind HTTP cannot carry",
            yaml(&[
                CLASS,
                &gateway(&["{name: http, port: 80, protocol: HTTP, allowedRoutes: {kinds: [{kind: TCPRoute}]}}"]),
            ]),
            At::Listener("gw", "http"),
            "ResolvedRefs",
            false,
            "InvalidRouteKinds",
        ),
        (
            "a certificate Secret that does not exist",
            yaml(&[
                CLASS,
                &gateway(&["{name: https, port: 443, protocol: HTTPS, tls: {certificateRefs: [{name: missing}]}}"]),
            ]),
            At::Listener("gw", "https"),
            "ResolvedRefs",
            false,
            "InvalidCertificateRef",
        ),
        (
            "a listener without a usable certificate is not programmed",
            yaml(&[
                CLASS,
                &gateway(&["{name: https, port: 443, protocol: HTTPS, tls: {certificateRefs: [{name: missing}]}}"]),
            ]),
            At::Listener("gw", "https"),
            "Programmed",
            false,
            "Invalid",
        ),
        (
            "a certificate in another namespace without a ReferenceGrant",
            yaml(&[
                CLASS,
                &gateway(&["{name: https, port: 443, protocol: HTTPS, tls: {certificateRefs: [{name: cert, namespace: certs}]}}"]),
            ]),
            At::Listener("gw", "https"),
            "ResolvedRefs",
            false,
            "RefNotPermitted",
        ),
        (
            "an attached route",
            yaml(&[CLASS, &gateway(&[HTTP]), BACKEND, &good_route]),
            At::Route("HTTPRoute", "r"),
            "Accepted",
            true,
            "Accepted",
        ),
        (
            "a listener that admits routes from no namespace",
            yaml(&[
                CLASS,
                &gateway(&[
                    "{name: http, port: 80, protocol: HTTP, allowedRoutes: {namespaces: {from: None}}}",
                ]),
                BACKEND,
                &good_route,
            ]),
            At::Route("HTTPRoute", "r"),
            "Accepted",
            false,
            "NotAllowedByListeners",
        ),
        (
            "no hostname in common",
            yaml(&[
                CLASS,
                &gateway(&["{name: http, port: 80, protocol: HTTP, hostname: a.example.com}"]),
                BACKEND,
                &http_route("default", "{name: gw}", "[b.example.com]", GOOD_BACKEND),
            ]),
            At::Route("HTTPRoute", "r"),
            "Accepted",
            false,
            "NoMatchingListenerHostname",
        ),
        (
            "a sectionName no listener has",
            yaml(&[
                CLASS,
                &gateway(&[HTTP]),
                BACKEND,
                &http_route("default", "{name: gw, sectionName: nope}", "[]", GOOD_BACKEND),
            ]),
            At::Route("HTTPRoute", "r"),
            "Accepted",
            false,
            "NoMatchingParent",
        ),
        (
            "a route with an error is dropped",
            yaml(&[
                CLASS,
                &gateway(&[HTTP]),
                BACKEND,
                &http_route("default", "{name: gw}", "[]", GOOD_BACKEND).replace(
                    "  - backendRefs",
                    "  - matches: [{path: {type: RegularExpression, value: \"(\"}}]\n    backendRefs",
                ),
            ]),
            At::Route("HTTPRoute", "r"),
            "Accepted",
            false,
            "UnsupportedValue",
        ),
        (
            "backends resolved",
            yaml(&[CLASS, &gateway(&[HTTP]), BACKEND, &good_route]),
            At::Route("HTTPRoute", "r"),
            "ResolvedRefs",
            true,
            "ResolvedRefs",
        ),
        (
            "a Service that does not exist",
            yaml(&[
                CLASS,
                &gateway(&[HTTP]),
                &http_route("default", "{name: gw}", "[]", GOOD_BACKEND),
            ]),
            At::Route("HTTPRoute", "r"),
            "ResolvedRefs",
            false,
            "BackendNotFound",
        ),
        (
            "a Service in another namespace without a ReferenceGrant",
            yaml(&[
                CLASS,
                &gateway(&[HTTP]),
                &http_route("default", "{name: gw}", "[]", "{name: backend, namespace: other, port: 80}"),
            ]),
            At::Route("HTTPRoute", "r"),
            "ResolvedRefs",
            false,
            "RefNotPermitted",
        ),
        (
            "a backend kind we do not serve",
            yaml(&[
                CLASS,
                &gateway(&[HTTP]),
                &http_route("default", "{name: gw}", "[]", "{group: example.com, kind: Bucket, name: b}"),
            ]),
            At::Route("HTTPRoute", "r"),
            "ResolvedRefs",
            false,
            "InvalidKind",
        ),
        (
            "a TCPRoute on an HTTP listener",
            yaml(&[
                CLASS,
                &gateway(&[HTTP]),
                "apiVersion: gateway.networking.k8s.io/v1alpha2\nkind: TCPRoute\nmetadata: {name: t, namespace: default}\nspec:\n  parentRefs: [{name: gw}]\n  rules: [{backendRefs: [{name: backend, port: 80}]}]\n",
            ]),
            At::Route("TCPRoute", "t"),
            "Accepted",
            false,
            "NotAllowedByListeners",
        ),
        (
            "HTTPRouteDisallowedKind: an HTTPRoute on a listener that admits TLSRoutes only",
            yaml(&[
                CLASS,
                &gateway(&["{name: tls, port: 443, protocol: TLS, tls: {mode: Passthrough}, allowedRoutes: {kinds: [{kind: TLSRoute}]}}"]),
                BACKEND,
                &good_route,
            ]),
            At::Route("HTTPRoute", "r"),
            "Accepted",
            false,
            "NotAllowedByListeners",
        ),
        (
            "TLSRouteInvalidNoMatchingListener: a TLSRoute on an HTTP listener",
            yaml(&[CLASS, &gateway(&[HTTP]), BACKEND, "apiVersion: gateway.networking.k8s.io/v1alpha2\nkind: TLSRoute\nmetadata: {name: t, namespace: default}\nspec:\n  parentRefs: [{name: gw}]\n  hostnames: [tls.example.com]\n  rules: [{backendRefs: [{name: backend, port: 80}]}]\n"]),
            At::Route("TLSRoute", "t"),
            "Accepted",
            false,
            "NotAllowedByListeners",
        ),
        (
            "TLSRouteInvalidNoMatchingListener: a TLSRoute on an HTTPS listener",
            yaml(&[
                CLASS,
                &gateway(&["{name: https, port: 443, protocol: HTTPS, tls: {mode: Terminate, certificateRefs: [{name: cert}]}}"]),
                BACKEND,
                "apiVersion: gateway.networking.k8s.io/v1alpha2\nkind: TLSRoute\nmetadata: {name: t, namespace: default}\nspec:\n  parentRefs: [{name: gw}]\n  hostnames: [tls.example.com]\n  rules: [{backendRefs: [{name: backend, port: 80}]}]\n",
            ]),
            At::Route("TLSRoute", "t"),
            "Accepted",
            false,
            "NotAllowedByListeners",
        ),
        (
            "TLSRouteInvalidNoMatchingListener: a TLSRoute whose sectionName no listener has",
            yaml(&[
                CLASS,
                &gateway(&["{name: tls-passthrough, port: 443, protocol: TLS, tls: {mode: Passthrough}}"]),
                BACKEND,
                "apiVersion: gateway.networking.k8s.io/v1alpha2\nkind: TLSRoute\nmetadata: {name: t, namespace: default}\nspec:\n  parentRefs: [{name: gw, sectionName: nonexistent-listener}]\n  hostnames: [tls.example.com]\n  rules: [{backendRefs: [{name: backend, port: 80}]}]\n",
            ]),
            At::Route("TLSRoute", "t"),
            "Accepted",
            false,
            "NoMatchingParent",
        ),
        (
            "a TLSRoute from another namespace on a listener that admits its own",
            yaml(&[
                CLASS,
                &gateway(&["{name: tls, port: 443, protocol: TLS, tls: {mode: Passthrough}}"])
                    .replace("namespace: default", "namespace: infra"),
                BACKEND,
                "apiVersion: gateway.networking.k8s.io/v1alpha2\nkind: TLSRoute\nmetadata: {name: t, namespace: default}\nspec:\n  parentRefs: [{name: gw, namespace: infra}]\n  hostnames: [a.example.com]\n  rules: [{backendRefs: [{name: backend, port: 80}]}]\n",
            ]),
            At::Route("TLSRoute", "t"),
            "Accepted",
            false,
            "NotAllowedByListeners",
        ),
        (
            "a TLSRoute whose parentRef port no listener has",
            yaml(&[
                CLASS,
                &gateway(&["{name: tls, port: 443, protocol: TLS, tls: {mode: Passthrough}}"]),
                BACKEND,
                "apiVersion: gateway.networking.k8s.io/v1alpha2\nkind: TLSRoute\nmetadata: {name: t, namespace: default}\nspec:\n  parentRefs: [{name: gw, port: 8443}]\n  rules: [{backendRefs: [{name: backend, port: 80}]}]\n",
            ]),
            At::Route("TLSRoute", "t"),
            "Accepted",
            false,
            "NoMatchingParent",
        ),
        (
            "a newer TCPRoute on a TCP listener an older one serves: accepted too",
            yaml(&[
                CLASS,
                &gateway(&["{name: tcp, port: 9000, protocol: TCP}"]),
                BACKEND,
                "apiVersion: gateway.networking.k8s.io/v1alpha2\nkind: TCPRoute\nmetadata: {name: t, namespace: default, creationTimestamp: \"2025-01-01T00:00:00Z\"}\nspec:\n  parentRefs: [{name: gw}]\n  rules: [{backendRefs: [{name: backend, port: 80}]}]\n",
                "apiVersion: gateway.networking.k8s.io/v1alpha2\nkind: TCPRoute\nmetadata: {name: first, namespace: default, creationTimestamp: \"2024-01-01T00:00:00Z\"}\nspec:\n  parentRefs: [{name: gw}]\n  rules: [{backendRefs: [{name: backend, port: 80}]}]\n",
            ]),
            At::Route("TCPRoute", "t"),
            "Accepted",
            true,
            "Accepted",
        ),
        (
            "a TCPRoute on a TCP listener",
            yaml(&[
                CLASS,
                &gateway(&["{name: tcp, port: 9000, protocol: TCP}"]),
                BACKEND,
                "apiVersion: gateway.networking.k8s.io/v1alpha2\nkind: TCPRoute\nmetadata: {name: t, namespace: default}\nspec:\n  parentRefs: [{name: gw}]\n  rules: [{backendRefs: [{name: backend, port: 80}]}]\n",
            ]),
            At::Route("TCPRoute", "t"),
            "Accepted",
            true,
            "Accepted",
        ),
        (
            "a TCPRoute to a Service that does not exist",
            yaml(&[
                CLASS,
                &gateway(&["{name: tcp, port: 9000, protocol: TCP}"]),
                "apiVersion: gateway.networking.k8s.io/v1alpha2\nkind: TCPRoute\nmetadata: {name: t, namespace: default}\nspec:\n  parentRefs: [{name: gw}]\n  rules: [{backendRefs: [{name: nonexistent, port: 80}]}]\n",
            ]),
            At::Route("TCPRoute", "t"),
            "ResolvedRefs",
            false,
            "BackendNotFound",
        ),
    ];
    let mut failures = Vec::new();
    for (name, config, at, kind, status, reason) in &cases {
        let report = report(config);
        match condition(&report, at, kind) {
            Ok(found) if found == (*status, (*reason).to_owned()) => {}
            Ok(found) => failures.push(format!(
                "{name}: {kind} is {found:?}, expected ({status}, {reason}):\n{report}"
            )),
            Err(why) => failures.push(format!("{name}: {why}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn attached_routes_supported_kinds_and_generations_are_reported() {
    let report = report(&yaml(&[
        CLASS,
        &gateway(&[HTTP, "{name: tcp, port: 9000, protocol: TCP}"]),
        BACKEND,
        &http_route("default", "{name: gw}", "[]", GOOD_BACKEND),
    ]));
    let gateway = report.gateway("default", "gw").expect("our Gateway");
    assert_eq!(gateway.generation, Some(3));
    assert!(
        gateway
            .conditions
            .iter()
            .all(|c| c.observed_generation == Some(3))
    );
    let http = &gateway.listeners[0];
    assert_eq!(http.attached_routes, 1);
    let kinds: Vec<&str> = http
        .supported_kinds
        .iter()
        .map(|k| k.kind.as_str())
        .collect();
    assert_eq!(kinds, ["HTTPRoute", "GRPCRoute"]);
    let tcp = &gateway.listeners[1];
    assert_eq!(tcp.attached_routes, 0);
    assert_eq!(tcp.supported_kinds[0].kind, "TCPRoute");
    let route = report.route("HTTPRoute", "default", "r").expect("route");
    assert_eq!(route.parents[0].conditions[0].observed_generation, Some(7));
    assert_eq!(route.parents[0].parent_ref.namespace, "default");
    assert_eq!(report.controller_name, "gatewayd.dev/gateway-controller");
    // Someone else's Gateway gets nothing from us.
    let other = report_of_other_class();
    assert!(
        other.gateways.is_empty() && other.routes.is_empty(),
        "{other}"
    );
}

fn report_of_other_class() -> Report {
    report(&yaml(&[
        &gateway(&[HTTP]).replace("gatewayClassName: istio", "gatewayClassName: nginx"),
        &http_route("default", "{name: gw}", "[]", GOOD_BACKEND),
    ]))
}

#[test]
fn validate_lines_name_route_parent_listener_and_reason() {
    let report = report(&yaml(&[
        CLASS,
        &gateway(&[HTTP]),
        BACKEND,
        &http_route(
            "default",
            "{name: gw, sectionName: nope}",
            "[]",
            GOOD_BACKEND,
        ),
    ]));
    let text = report.to_string();
    assert!(
        text.contains("HTTPRoute default/r: parent default/gw listener nope: Accepted=False NoMatchingParent: "),
        "{text}"
    );
    assert!(
        text.contains("  listener http: attachedRoutes 0; Accepted=True Accepted"),
        "{text}"
    );
}

/// `validate` prints each listener's supportedKinds (the conformance suite checks them):
/// a TLS listener allowing TCPRoute and TLSRoute supports TLSRoute only.
#[test]
fn validate_lines_name_supported_kinds() {
    let report = report(&yaml(&[
        CLASS,
        &gateway(&[
            HTTP,
            "{name: tls, port: 443, protocol: TLS, tls: {mode: Passthrough}, allowedRoutes: {kinds: [{kind: TCPRoute}, {kind: TLSRoute}]}}",
        ]),
    ]));
    let text = report.to_string();
    let line = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(&format!("  listener {name}:")))
            .unwrap_or_default()
            .to_owned()
    };
    assert!(
        line("http").ends_with("; supportedKinds: [HTTPRoute, GRPCRoute]"),
        "{text}"
    );
    let tls = line("tls");
    assert!(
        tls.contains("ResolvedRefs=False InvalidRouteKinds"),
        "{text}"
    );
    assert!(tls.ends_with("; supportedKinds: [TLSRoute]"), "{text}");
}
