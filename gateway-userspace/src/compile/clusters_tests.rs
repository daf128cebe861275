use std::{collections::BTreeSet, path::Path, sync::Arc};

use super::super::{
    ClustersByService, Identity, compile, update_endpoints, update_endpoints_indexed,
};
use crate::{
    config::{self, Diagnostics},
    route_table::RequestInfo,
    snapshot::{RouteAction, Snapshot},
};

fn compile_yaml(yaml: &str) -> (Snapshot, Diagnostics) {
    let (resources, mut diagnostics) = config::load_text(Path::new("dest.yaml"), yaml);
    assert!(!diagnostics.has_errors(), "{diagnostics}");
    let (snapshot, more) = compile(&resources, &Identity::default());
    diagnostics.extend(more);
    (snapshot, diagnostics)
}

/// Cluster name and endpoints each route of `host` on port 80 forwards to, in order.
fn destinations(snapshot: &Snapshot, host: &str, path: &str) -> Vec<(String, Vec<String>)> {
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
    let Some(route) = snapshot.listeners[0].routes.find(&request) else {
        return Vec::new();
    };
    match &route.action {
        RouteAction::Forward(forward) => forward
            .clusters
            .iter()
            .map(|c| {
                (
                    c.cluster.name.clone(),
                    snapshot
                        .endpoints_of(&c.cluster)
                        .iter()
                        .map(ToString::to_string)
                        .collect(),
                )
            })
            .collect(),
        _ => Vec::new(),
    }
}

const GATEWAY: &str = r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["*"]
"#;

#[test]
fn service_entries_route_to_static_addresses_and_subsets_pick_by_labels() {
    let yaml = format!(
        "{GATEWAY}---\n{}",
        r#"
apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {name: legacy, namespace: istio-system}
spec:
  hosts: [legacy.internal]
  ports: [{number: 80, name: http, protocol: HTTP, targetPort: 8080}]
  resolution: STATIC
  endpoints:
  - {address: 192.0.2.1, labels: {version: v1}}
  - {address: 192.0.2.2, labels: {version: v2}, ports: {http: 9090}}
  - {address: legacy-3.example, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata: {name: legacy, namespace: istio-system}
spec:
  host: legacy.internal
  trafficPolicy:
    loadBalancer: {simple: ROUND_ROBIN}
    outlierDetection: {consecutive5xxErrors: 3, interval: 10s, baseEjectionTime: 30s}
    connectionPool:
      tcp: {connectTimeout: 250ms, maxConnections: 4}
      http: {http1MaxPendingRequests: 2, http2MaxRequests: 8, maxRequestsPerConnection: 0, maxRetries: 1, idleTimeout: 30s}
  subsets:
  - name: v1
    labels: {version: v1}
    trafficPolicy: {loadBalancer: {simple: RANDOM}, connectionPool: {tcp: {connectTimeout: 2s}}}
  - {name: v2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: legacy, namespace: istio-system}
spec:
  hosts: [legacy.example.com]
  gateways: [gw]
  http:
  - match: [{uri: {prefix: /v2}}]
    route: [{destination: {host: legacy.internal, subset: v2}}]
  - match: [{uri: {prefix: /missing}}]
    route: [{destination: {host: legacy.internal, subset: v3}}]
  - route:
    - destination: {host: legacy.internal, port: {number: 80}}
      weight: 90
    - destination: {host: legacy.internal, subset: v1}
      weight: 10
"#
    );
    let (snapshot, diagnostics) = compile_yaml(&yaml);
    assert_eq!(
        destinations(&snapshot, "legacy.example.com", "/v2/x"),
        [(
            "outbound|80|v2|legacy.internal".to_owned(),
            vec!["192.0.2.2:9090".to_owned()]
        )]
    );
    assert_eq!(
        destinations(&snapshot, "legacy.example.com", "/"),
        [
            (
                "outbound|80||legacy.internal".to_owned(),
                vec!["192.0.2.1:8080".to_owned(), "192.0.2.2:9090".to_owned()]
            ),
            (
                "outbound|80|v1|legacy.internal".to_owned(),
                vec!["192.0.2.1:8080".to_owned()]
            )
        ]
    );
    assert_eq!(
        destinations(&snapshot, "legacy.example.com", "/missing"),
        [("outbound|80|v3|legacy.internal".to_owned(), Vec::new())]
    );
    let text = diagnostics.to_string();
    assert!(
        text.contains("spec.http[1].route[0].destination: DestinationRule istio-system/legacy has no subset \"v3\" (it has [\"v1\", \"v2\"]); requests get 503"),
        "{text}"
    );
    assert!(
        text.contains("endpoint \"legacy-3.example\": only IP addresses are served"),
        "{text}"
    );

    // The rule's traffic policy reaches the clusters; a subset's own policy wins for it.
    let headers = http::HeaderMap::new();
    let request = RequestInfo {
        authority: "legacy.example.com",
        path: "/",
        query: None,
        method: "GET",
        scheme: "http",
        port: 80,
        headers: &headers,
    };
    let Some(RouteAction::Forward(forward)) = snapshot.listeners[0]
        .routes
        .find(&request)
        .map(|r| &r.action)
    else {
        panic!("the catch-all route forwards");
    };
    let (plain, v1) = (&forward.clusters[0].cluster, &forward.clusters[1].cluster);
    assert_eq!(
        plain.load_balancer,
        crate::snapshot::LoadBalancer::RoundRobin
    );
    assert_eq!(v1.load_balancer, crate::snapshot::LoadBalancer::Random);
    assert_eq!(
        (plain.connect_timeout, v1.connect_timeout),
        (
            std::time::Duration::from_millis(250),
            std::time::Duration::from_secs(2)
        )
    );
    // connectionPool: positive limits apply (0 is Istio's "unset"); the subset's pool
    // replaces the rule's whole.
    assert_eq!(
        plain.connection_pool,
        crate::connection_pool::ConnectionPool {
            max_connections: Some(4),
            http1_max_pending_requests: Some(2),
            http2_max_requests: Some(8),
            max_requests_per_connection: None,
            max_retries: Some(1),
            idle_timeout: Some(std::time::Duration::from_secs(30)),
        }
    );
    assert!(v1.connection_pool.is_unlimited());
    let outlier = plain
        .outlier_detection
        .as_ref()
        .expect("outlier detection from the rule");
    assert_eq!(
        (
            outlier.consecutive_errors,
            outlier.base_ejection_time.as_secs(),
            outlier.max_ejection_percent
        ),
        (3, 30, 10)
    );
}

const BOOKINFO: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: istio-system}
spec: {ports: [{name: http, port: 9080}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: reviews-v1
  namespace: istio-system
  labels: {kubernetes.io/service-name: reviews, version: v1}
endpoints: [{addresses: [10.1.0.1]}, {addresses: [10.1.0.9], conditions: {ready: false}}]
ports: [{name: http, port: 9080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: reviews-v2
  namespace: istio-system
  labels: {kubernetes.io/service-name: reviews, version: v2}
endpoints: [{addresses: [10.1.0.2]}]
ports: [{name: http, port: 9080}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: istio-system}
spec:
  host: reviews
  subsets: [{name: v2, labels: {version: v2}}]
---
apiVersion: v1
kind: Service
metadata: {name: ratings, namespace: istio-system}
spec: {ports: [{name: http, port: 9080}]}
---
apiVersion: v1
kind: Endpoints
metadata: {name: ratings, namespace: istio-system}
subsets:
- addresses: [{ip: 10.2.0.1}, {ip: 10.2.0.2}]
  notReadyAddresses: [{ip: 10.2.0.3}]
  ports: [{name: http, port: 8080}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: bookinfo, namespace: istio-system}
spec:
  hosts: [bookinfo.example.com]
  gateways: [gw]
  http:
  - match: [{uri: {prefix: /ratings}}]
    route: [{destination: {host: ratings}}]
  - match: [{uri: {prefix: /v2}}]
    route: [{destination: {host: reviews.istio-system.svc.cluster.local, subset: v2}}]
  - route: [{destination: {host: reviews}}]
"#;

#[test]
fn service_subsets_match_endpoint_slice_labels_and_endpoints_fill_in() {
    let yaml = format!("{GATEWAY}---\n{BOOKINFO}");
    let (snapshot, diagnostics) = compile_yaml(&yaml);
    let cases: [(&str, &str, &[&str]); 3] = [
        (
            "/v2",
            "outbound|9080|v2|reviews.istio-system.svc.cluster.local",
            &["10.1.0.2:9080"],
        ),
        (
            "/",
            "outbound|9080||reviews.istio-system.svc.cluster.local",
            &["10.1.0.1:9080", "10.1.0.2:9080"],
        ),
        (
            "/ratings",
            "outbound|9080||ratings.istio-system.svc.cluster.local",
            &["10.2.0.1:8080", "10.2.0.2:8080"],
        ),
    ];
    for (path, cluster, endpoints) in cases {
        let want = vec![(
            cluster.to_owned(),
            endpoints
                .iter()
                .map(|e| (*e).to_owned())
                .collect::<Vec<_>>(),
        )];
        assert_eq!(
            destinations(&snapshot, "bookinfo.example.com", path),
            want,
            "{path}\n{diagnostics}"
        );
    }
}

#[test]
fn an_endpoint_update_gives_what_a_full_compile_gives_and_shares_the_rest() {
    let before = format!("{GATEWAY}---\n{BOOKINFO}");
    let after = before.replace("addresses: [10.1.0.2]", "addresses: [10.1.0.3, 10.1.0.4]");
    assert_ne!(before, after);
    let (previous, _) = compile_yaml(&before);
    let (recompiled, _) = compile_yaml(&after);
    let (resources, _) = config::load_text(Path::new("dest.yaml"), &after);
    let services = BTreeSet::from([("istio-system".to_owned(), "reviews".to_owned())]);
    let (updated, diagnostics) = update_endpoints(&previous, &resources, &services, None);
    assert!(diagnostics.0.is_empty(), "{diagnostics}");
    for path in ["/v2", "/", "/ratings"] {
        assert_eq!(
            destinations(&updated, "bookinfo.example.com", path),
            destinations(&recompiled, "bookinfo.example.com", path),
            "{path}"
        );
    }
    assert_eq!(
        destinations(&updated, "bookinfo.example.com", "/v2")[0].1,
        ["10.1.0.3:9080", "10.1.0.4:9080"]
    );
    // Routes, cluster definitions and untouched endpoint lists are the previous ones.
    assert!(Arc::ptr_eq(&updated.listeners, &previous.listeners));
    let ratings = previous
        .clusters
        .iter()
        .find(|c| c.service_name == "ratings")
        .expect("the ratings cluster");
    assert!(Arc::ptr_eq(
        &updated.endpoints[ratings.id],
        &previous.endpoints[ratings.id]
    ));
    assert!(Arc::ptr_eq(&updated.clusters, &previous.clusters));
    // Through an index kept from an earlier update: the same; an index of another
    // cluster list is not trusted.
    let index = ClustersByService::of(&previous.clusters);
    let (indexed, _) = update_endpoints_indexed(&previous, &resources, &services, &index, None);
    assert_eq!(indexed.endpoints, updated.endpoints);
    let (other, _) = compile_yaml(&before);
    let stale = ClustersByService::of(&other.clusters);
    let (checked, _) = update_endpoints_indexed(&previous, &resources, &services, &stale, None);
    assert_eq!(checked.endpoints, updated.endpoints);
}

/// A dual-stack Service has an IPv4 and an IPv6 slice: both families' endpoints serve.
/// An FQDN slice names hosts, not endpoints: skipped without a warning, as Istio does.
#[test]
fn ipv6_slices_serve_beside_ipv4_and_fqdn_slices_are_skipped() {
    let yaml = format!(
        r#"{GATEWAY}---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: web, namespace: istio-system}}
spec:
  hosts: [web.example.com]
  gateways: [gw]
  http:
  - route: [{{destination: {{host: web}}}}]
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: istio-system}}
spec:
  ipFamilies: [IPv4, IPv6]
  ports: [{{name: http, port: 80, targetPort: 8080}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: web-v4, namespace: istio-system, labels: {{kubernetes.io/service-name: web}}}}
addressType: IPv4
ports: [{{name: http, port: 8080}}]
endpoints: [{{addresses: [10.0.0.1]}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: web-v6, namespace: istio-system, labels: {{kubernetes.io/service-name: web}}}}
addressType: IPv6
ports: [{{name: http, port: 8080}}]
endpoints: [{{addresses: ["fd00::1"]}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: web-fqdn, namespace: istio-system, labels: {{kubernetes.io/service-name: web}}}}
addressType: FQDN
ports: [{{name: http, port: 8080}}]
endpoints: [{{addresses: [web.internal.example]}}]
"#
    );
    let (snapshot, diagnostics) = compile_yaml(&yaml);
    assert_eq!(
        destinations(&snapshot, "web.example.com", "/"),
        vec![(
            "outbound|80||web.istio-system.svc.cluster.local".to_owned(),
            vec!["10.0.0.1:8080".to_owned(), "[fd00::1]:8080".to_owned()]
        )],
        "{diagnostics}"
    );
    assert!(
        !diagnostics.to_string().contains("web.internal.example"),
        "no warning for the FQDN slice: {diagnostics}"
    );
}
