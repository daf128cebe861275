use std::path::Path;

use super::{clusters::resolve_service_host, *};
use crate::{
    config, config::source::split_documents, route_table::RequestInfo, snapshot::RouteAction,
};

fn compile_yaml(yaml: &str) -> (Snapshot, Diagnostics) {
    let mut resources = Resources::default();
    let mut diagnostics = Diagnostics::default();
    for doc in split_documents(Path::new("test.yaml"), yaml) {
        config::tests_support::parse(&doc, &mut resources, &mut diagnostics);
    }
    assert!(!diagnostics.has_errors(), "{diagnostics}");
    let (snapshot, more) = compile(&resources, &Identity::default());
    diagnostics.extend(more);
    (snapshot, diagnostics)
}

/// (listener port, host, path) → the endpoint the request would be sent to, "404", "503".
fn route(snapshot: &Snapshot, port: u16, host: &str, path: &str) -> String {
    let Some(listener) = snapshot.listeners.iter().find(|l| l.port == port) else {
        return "no listener".into();
    };
    let headers = http::HeaderMap::new();
    let request = RequestInfo {
        authority: host,
        path,
        query: None,
        method: "GET",
        scheme: "http",
        port,
        headers: &headers,
    };
    match listener.routes.find(&request).map(|r| &r.action) {
        None => "404".into(),
        Some(RouteAction::Unsupported(what)) => format!("501 {what}"),
        Some(RouteAction::Redirect(redirect)) => format!("redirect {}", redirect.status),
        Some(RouteAction::DirectResponse(direct)) => format!("direct {}", direct.status),
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

const HTTPBIN: &str = r#"
apiVersion: networking.istio.io/v1alpha3
kind: Gateway
metadata: {name: httpbin-gateway}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["httpbin.example.com"]
---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {name: httpbin}
spec:
  hosts: ["httpbin.example.com"]
  gateways: [httpbin-gateway]
  http:
  - match:
    - uri: {prefix: /status}
    - uri: {prefix: /delay}
    route:
    - destination:
        port: {number: 8000}
        host: httpbin
---
apiVersion: v1
kind: Service
metadata: {name: httpbin}
spec:
  selector: {app: httpbin}
  ports:
  - {name: http, port: 8000, targetPort: 8080}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: httpbin-abc
  labels: {kubernetes.io/service-name: httpbin}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
- addresses: ["10.1.0.5"]
- addresses: ["10.1.0.6"]
  conditions: {ready: false}
"#;

#[test]
fn istio_ingress_task_routes_status_and_delay_only() {
    let (snapshot, diagnostics) = compile_yaml(HTTPBIN);
    assert_eq!(diagnostics.0, vec![], "clean config, no diagnostics");
    assert_eq!(snapshot.listeners.len(), 1);
    assert_eq!(
        snapshot.listeners[0].bind_port, 80,
        "no own Service: the port itself"
    );
    assert_eq!(snapshot.kernel.ports, vec![80]);
    let cases = [
        ("httpbin.example.com", "/status/200", "10.1.0.5:8080"),
        ("httpbin.example.com:80", "/delay/1", "10.1.0.5:8080"),
        ("httpbin.example.com", "/headers", "404"),
        ("other.example.com", "/status/200", "404"),
    ];
    for (host, path, want) in cases {
        assert_eq!(route(&snapshot, 80, host, path), want, "{host}{path}");
    }
}

#[test]
fn own_service_maps_port_to_target_port_and_node_port() {
    let yaml = format!(
        "{HTTPBIN}---\n{}",
        r#"
apiVersion: v1
kind: Service
metadata: {name: istio-ingressgateway, namespace: istio-system}
spec:
  type: NodePort
  selector: {istio: ingressgateway}
  ports:
  - {name: http2, port: 80, targetPort: 8080, nodePort: 31380}
"#
    );
    let (snapshot, _) = compile_yaml(&yaml);
    let listener = &snapshot.listeners[0];
    assert_eq!(
        (listener.port, listener.bind_port, listener.node_port),
        (80, 8080, Some(31380))
    );
    assert_eq!(snapshot.kernel.ports, vec![8080]);
}

#[test]
fn gateways_of_other_workloads_are_not_ours() {
    let yaml = HTTPBIN.replace(
        "selector: {istio: ingressgateway}",
        "selector: {istio: egressgateway}",
    );
    let (snapshot, _) = compile_yaml(&yaml);
    assert!(snapshot.listeners.is_empty());
}

#[test]
fn host_intersection_picks_the_more_specific_host() {
    let cases = [
        ("httpbin.example.com", "*", Some("httpbin.example.com")),
        ("*", "httpbin.example.com", Some("httpbin.example.com")),
        ("*.example.com", "a.example.com", Some("a.example.com")),
        ("a.example.com", "*.example.com", Some("a.example.com")),
        ("*.a.example.com", "*.example.com", Some("*.a.example.com")),
        ("*.example.com", "example.com", None),
        ("a.example.com", "b.example.com", None),
        ("A.Example.com", "a.example.COM", Some("a.example.com")),
    ];
    for (vs, server, want) in cases {
        assert_eq!(
            intersect_hosts(vs, server).as_deref(),
            want,
            "{vs} ∩ {server}"
        );
    }
}

#[test]
fn unbound_and_dangling_references_are_reported() {
    let yaml = HTTPBIN.replace(
        "hosts: [\"httpbin.example.com\"]\n  gateways",
        "hosts: [\"other.example.com\"]\n  gateways",
    );
    let (snapshot, diagnostics) = compile_yaml(&yaml);
    assert_eq!(
        route(&snapshot, 80, "httpbin.example.com", "/status/1"),
        "404"
    );
    assert!(
        diagnostics.warnings().any(|d| d.message.contains("is not bound") && d.field.as_deref() == Some("spec.hosts")),
        "{diagnostics}"
    );

    let yaml = HTTPBIN.replace(
        "gateways: [httpbin-gateway]",
        "gateways: [istio-system/missing]",
    );
    let (_, diagnostics) = compile_yaml(&yaml);
    assert!(
        diagnostics
            .warnings()
            .any(|d| d.message.contains("istio-system/missing does not exist")),
        "{diagnostics}"
    );

    let yaml = HTTPBIN.replace("gateways: [httpbin-gateway]", "gateways: []");
    let (snapshot, _) = compile_yaml(&yaml);
    assert_eq!(
        route(&snapshot, 80, "httpbin.example.com", "/status/1"),
        "404",
        "no gateways = mesh only"
    );
}

#[test]
fn missing_services_and_endpoints_compile_to_503() {
    let yaml = HTTPBIN.replace("host: httpbin", "host: nothere");
    let (snapshot, diagnostics) = compile_yaml(&yaml);
    assert_eq!(
        route(&snapshot, 80, "httpbin.example.com", "/status/1"),
        "503 outbound|8000||nothere.default.svc.cluster.local"
    );
    assert!(
        diagnostics
            .warnings()
            .any(|d| d.message.contains("no Service default/nothere")),
        "{diagnostics}"
    );

    let yaml = HTTPBIN.replace("- addresses: [\"10.1.0.5\"]\n", "");
    let (snapshot, diagnostics) = compile_yaml(&yaml);
    assert_eq!(
        route(&snapshot, 80, "httpbin.example.com", "/status/1"),
        "503 outbound|8000||httpbin.default.svc.cluster.local"
    );
    assert!(
        diagnostics
            .warnings()
            .any(|d| d.message.contains("no ready endpoints")),
        "{diagnostics}"
    );
}

#[test]
fn service_hosts_resolve_like_kubernetes_dns() {
    let cases = [
        ("httpbin", ("httpbin", "default")),
        ("httpbin.web", ("httpbin", "web")),
        ("httpbin.web.svc", ("httpbin", "web")),
        ("httpbin.web.svc.cluster.local", ("httpbin", "web")),
        ("httpbin.web.svc.cluster.local.", ("httpbin", "web")),
    ];
    for (host, (name, ns)) in cases {
        assert_eq!(
            resolve_service_host(host, "default"),
            (name.to_owned(), ns.to_owned()),
            "{host}"
        );
    }
}

#[test]
fn virtual_services_for_one_host_concatenate_oldest_first() {
    let yaml = format!(
        "{HTTPBIN}---\n{}",
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: older, creationTimestamp: "2020-01-01T00:00:00Z"}
spec:
  hosts: ["httpbin.example.com"]
  gateways: [httpbin-gateway]
  http:
  - match: [{uri: {prefix: /status/5}}]
    route: [{destination: {host: nothere, port: {number: 1}}}]
"#
    );
    let (snapshot, _) = compile_yaml(&yaml.replace(
        "metadata: {name: httpbin}",
        "metadata: {name: httpbin, creationTimestamp: \"2021-01-01T00:00:00Z\"}",
    ));
    assert_eq!(
        route(&snapshot, 80, "httpbin.example.com", "/status/500"),
        "503 outbound|1||nothere.default.svc.cluster.local"
    );
    assert_eq!(
        route(&snapshot, 80, "httpbin.example.com", "/status/200"),
        "10.1.0.5:8080"
    );
}

#[test]
fn a_delegate_that_does_not_exist_skips_its_route_and_warns() {
    let yaml = HTTPBIN.replace(
        "  - match:\n",
        "  - delegate: {name: elsewhere}\n  - match:\n",
    );
    let (snapshot, diagnostics) = compile_yaml(&yaml);
    // Istio ignores the route; the next ones still serve.
    assert_eq!(
        route(&snapshot, 80, "httpbin.example.com", "/status/200"),
        "10.1.0.5:8080"
    );
    assert!(
        diagnostics.warnings().any(|d| {
            d.field.as_deref() == Some("spec.http[0].delegate")
                && d.message
                    .contains("delegate default/elsewhere does not exist")
        }),
        "{diagnostics}"
    );
}

#[test]
fn bad_matches_are_errors_naming_the_field() {
    let yaml = HTTPBIN.replace("- uri: {prefix: /delay}", "- uri: {regex: \"(unclosed\"}");
    let mut resources = Resources::default();
    let mut diagnostics = Diagnostics::default();
    for doc in split_documents(Path::new("test.yaml"), &yaml) {
        config::tests_support::parse(&doc, &mut resources, &mut diagnostics);
    }
    let (_, diagnostics) = compile(&resources, &Identity::default());
    let error = diagnostics.errors().next().expect("an error");
    assert_eq!(error.field.as_deref(), Some("spec.http[0].match[1].uri"));
    assert!(error.message.starts_with("invalid regex"), "{error}");
}

#[test]
fn a_recompile_reuses_the_routes_of_unchanged_virtual_services() {
    // httpbin.example.com from HTTPBIN, plus a second host whose VirtualService changes.
    let second = |path: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: other}}\nspec:\n  hosts: [\"other.example.com\"]\n  gateways: [httpbin-gateway]\n  http:\n  - match: [{{uri: {{prefix: {path}}}}}]\n    route: [{{destination: {{host: httpbin, port: {{number: 8000}}}}}}]\n"
        )
    };
    let yaml = HTTPBIN.replace(
        "hosts: [\"httpbin.example.com\"]\n---\napiVersion: networking.istio.io/v1alpha3\nkind: VirtualService",
        "hosts: [\"httpbin.example.com\", \"other.example.com\"]\n---\napiVersion: networking.istio.io/v1alpha3\nkind: VirtualService",
    );
    let (resources, diagnostics) = config::load_text(
        Path::new("test.yaml"),
        &format!("{yaml}---\n{}", second("/old")),
    );
    assert!(!diagnostics.has_errors(), "{diagnostics}");
    let tls = crate::tls::TlsState::default();
    let (first, _, memo) = compile_reusing(&resources, &Identity::default(), &tls, None);
    assert_eq!(
        route(&first, 80, "other.example.com", "/old"),
        "10.1.0.5:8080"
    );

    // The second VirtualService is parsed again (as the reload cache does for its file);
    // everything else is the same allocation.
    let mut changed = resources.clone();
    let (reparsed, _) = config::load_text(Path::new("other.yaml"), &second("/new"));
    changed.virtual_services[1] = reparsed.virtual_services[0].clone();
    let (reused, diagnostics, _) =
        compile_reusing(&changed, &Identity::default(), &tls, Some((&first, &memo)));
    assert!(!diagnostics.has_errors(), "{diagnostics}");
    let (full, _) = compile(&changed, &Identity::default());
    for (host, path) in [
        ("other.example.com", "/new"),
        ("other.example.com", "/old"),
        ("httpbin.example.com", "/status/200"),
        ("httpbin.example.com", "/headers"),
    ] {
        assert_eq!(
            route(&reused, 80, host, path),
            route(&full, 80, host, path),
            "{host}{path}"
        );
    }
    assert_eq!(
        route(&reused, 80, "other.example.com", "/new"),
        "10.1.0.5:8080"
    );
    let vhost = |snapshot: &Snapshot, host: &str| {
        let table = &snapshot.listeners[0].routes;
        let found = table.virtual_hosts.iter().find(|v| v.host == host);
        Arc::clone(&found.expect("the host").routes)
    };
    assert!(Arc::ptr_eq(
        &vhost(&first, "httpbin.example.com"),
        &vhost(&reused, "httpbin.example.com")
    ));
    assert!(!Arc::ptr_eq(
        &vhost(&first, "other.example.com"),
        &vhost(&reused, "other.example.com")
    ));
}

/// A passthrough server on 443 and our Service with `annotations`.
fn proxy_protocol_yaml(annotations: &str) -> String {
    format!(
        r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: pass, namespace: default}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 443, name: tls, protocol: TLS}}
    hosts: ["pass.example.com"]
    tls: {{mode: PASSTHROUGH}}
---
apiVersion: v1
kind: Service
metadata:
  name: istio-ingressgateway
  namespace: istio-system
  annotations: {annotations}
spec:
  selector: {{istio: ingressgateway}}
  ports: [{{name: tls, port: 443, targetPort: 8443}}]
"#
    )
}

#[test]
fn the_proxy_config_annotation_or_the_flag_turns_the_proxy_protocol_on() {
    let policed = |snapshot: &Snapshot| -> Vec<u16> {
        snapshot.kernel.tls_ports.iter().map(|p| p.port).collect()
    };
    let (plain, _) = compile_yaml(&proxy_protocol_yaml("{}"));
    assert!(!plain.listeners[0].proxy_protocol);
    assert_eq!(policed(&plain), vec![8443]);

    for annotation in [
        r#"{"proxy.istio.io/config": "gatewayTopology: {proxyProtocol: {}}"}"#,
        r#"{"proxy.istio.io/config": "{\"gatewayTopology\": {\"numTrustedProxies\": 1, \"proxyProtocol\": {}}}"}"#,
    ] {
        let (snapshot, diagnostics) = compile_yaml(&proxy_protocol_yaml(annotation));
        assert!(snapshot.listeners[0].proxy_protocol, "{annotation}");
        assert!(
            !diagnostics.to_string().contains("proxy.istio.io"),
            "{diagnostics}"
        );
        // The ClientHello follows the balancer's header: the kernel does not judge it.
        assert_eq!(policed(&snapshot), Vec::<u16>::new(), "{annotation}");
    }

    let (snapshot, _) = compile_yaml(&proxy_protocol_yaml(
        r#"{"proxy.istio.io/config": "gatewayTopology: {numTrustedProxies: 2}"}"#,
    ));
    assert!(!snapshot.listeners[0].proxy_protocol);

    let (snapshot, diagnostics) = compile_yaml(&proxy_protocol_yaml(
        r#"{"proxy.istio.io/config": "gatewayTopology: ["}"#,
    ));
    assert!(!snapshot.listeners[0].proxy_protocol);
    let warning = diagnostics.to_string();
    assert!(
        warning.contains("Service istio-system/istio-ingressgateway")
            && warning.contains("metadata.annotations")
            && warning.contains("proxy.istio.io/config"),
        "{warning}"
    );

    // `--proxy-protocol 443` names the Gateway port, not the bind port.
    let mut resources = Resources::default();
    let mut diagnostics = Diagnostics::default();
    for doc in split_documents(Path::new("test.yaml"), &proxy_protocol_yaml("{}")) {
        config::tests_support::parse(&doc, &mut resources, &mut diagnostics);
    }
    for (ports, expected) in [("443", true), ("8443", false), ("all", true)] {
        let identity = Identity {
            proxy_protocol: ports.parse().expect("a valid --proxy-protocol"),
            ..Identity::default()
        };
        let (snapshot, _) = compile(&resources, &identity);
        assert_eq!(snapshot.listeners[0].proxy_protocol, expected, "{ports}");
    }
}
