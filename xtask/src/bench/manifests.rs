//! The Kubernetes and Istio objects the benches hand gatewayd, written as a user would
//! declare them: gatewayd's own Service, a Gateway, a VirtualService (one route, or the
//! caller's), an upstream Service and its EndpointSlices. Each function returns one YAML
//! document, ending in a newline; a configuration joins them with `---\n`.

use std::net::SocketAddr;

/// gatewayd's own Service, as Istio names it: maps Gateway `port` to the port it binds (and a node port).
pub(super) fn ingress_service_yaml(
    port_name: &str,
    port: u16,
    target_port: u16,
    node_port: Option<u16>,
) -> String {
    let (node_port_type, node_port) = match node_port {
        Some(node_port) => ("  type: NodePort\n", format!(", nodePort: {node_port}")),
        None => ("", String::new()),
    };
    format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: istio-ingressgateway, namespace: istio-system}}
spec:
{node_port_type}  selector: {{istio: ingressgateway}}
  ports: [{{name: {port_name}, port: {port}, targetPort: {target_port}{node_port}}}]
"#
    )
}

/// An Istio Gateway on gatewayd's pods with one server, its port named after `protocol` as Istio's are.
pub(super) fn gateway_yaml(
    name: &str,
    namespace: &str,
    port: u16,
    protocol: &str,
    hosts: &[&str],
    tls: Option<&str>,
) -> String {
    let port_name = protocol.to_lowercase();
    let tls = tls.map_or(String::new(), |tls| format!("    tls: {tls}\n"));
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: {port}, name: {port_name}, protocol: {protocol}}}
    hosts: [{hosts}]
{tls}"#,
        hosts = quoted(hosts),
    )
}

/// A VirtualService: `hosts` on `gateway` to `routes`, its `http:` or `tcp:` section as written under spec.
pub(super) fn virtual_service_yaml(
    name: &str,
    namespace: &str,
    hosts: &[&str],
    gateway: &str,
    routes: &str,
) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  hosts: [{hosts}]
  gateways: [{gateway}]
{routes}"#,
        hosts = quoted(hosts),
    )
}

/// The least a bench can route: every HTTP request for `hosts` to one Service port, no match, in default.
pub(super) fn one_route_yaml(
    name: &str,
    gateway: &str,
    hosts: &[&str],
    destination: &str,
    port: u16,
) -> String {
    let route = format!(
        "  http:\n  - route: [{{destination: {{host: {destination}, port: {{number: {port}}}}}}}]\n"
    );
    virtual_service_yaml(name, "default", hosts, gateway, &route)
}

/// A Service in default with one port, named as its EndpointSlices name theirs; `target_port` optional.
pub(super) fn service_yaml(
    name: &str,
    port_name: &str,
    port: u16,
    target_port: Option<u16>,
) -> String {
    let target_port = target_port.map_or(String::new(), |t| format!(", targetPort: {t}"));
    format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: default}}
spec:
  ports: [{{name: {port_name}, port: {port}{target_port}}}]
"#
    )
}

/// EndpointSlice `{service}-{index}`: one IPv4 `endpoint`, tied to its Service by label and port name.
pub(super) fn endpoint_slice_yaml(
    service: &str,
    index: usize,
    port_name: &str,
    endpoint: SocketAddr,
) -> String {
    format!(
        r#"apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: {service}-{index}, namespace: default, labels: {{kubernetes.io/service-name: {service}}}}}
addressType: IPv4
ports: [{{name: {port_name}, port: {port}}}]
endpoints:
- addresses: ["{ip}"]
"#,
        port = endpoint.port(),
        ip = endpoint.ip(),
    )
}

/// The single-upstream backend: Service `name` and its one EndpointSlice, on the upstream at `endpoint`.
pub(super) fn upstream_service_yaml(
    name: &str,
    port_name: &str,
    port: u16,
    endpoint: SocketAddr,
) -> String {
    [
        service_yaml(name, port_name, port, Some(endpoint.port())),
        endpoint_slice_yaml(name, 1, port_name, endpoint),
    ]
    .join("---\n")
}

/// `"a", "b"`: a YAML flow list's items, quoted so that `*` and `*.example.com` stay strings.
fn quoted(items: &[&str]) -> String {
    items
        .iter()
        .map(|item| format!("\"{item}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A NodePort Service says so and carries the node port beside the target port.
    #[test]
    fn node_port_service() {
        let yaml = ingress_service_yaml("http", 80, 8080, Some(30080));
        assert!(yaml.contains("  type: NodePort\n  selector: {istio: ingressgateway}\n"));
        assert!(yaml.contains("[{name: http, port: 80, targetPort: 8080, nodePort: 30080}]"));
        assert!(!ingress_service_yaml("http", 80, 8080, None).contains("NodePort"));
    }

    /// The server's port is named after its protocol; the tls map comes last when given.
    #[test]
    fn gateway_server() {
        let yaml = gateway_yaml(
            "gw",
            "default",
            443,
            "HTTPS",
            &["a.example", "*"],
            Some("{mode: SIMPLE}"),
        );
        assert!(yaml.ends_with(
            "  - port: {number: 443, name: https, protocol: HTTPS}\n    hosts: [\"a.example\", \"*\"]\n    tls: {mode: SIMPLE}\n"
        ));
    }

    /// The single-upstream backend: the Service's target port is the slice's port.
    #[test]
    fn upstream_service() {
        let yaml = upstream_service_yaml("up", "tcp", 80, ([127, 0, 0, 1], 18081).into());
        assert!(yaml.contains("ports: [{name: tcp, port: 80, targetPort: 18081}]\n---\n"));
        assert!(yaml.contains(
            "{name: up-1, namespace: default, labels: {kubernetes.io/service-name: up}}"
        ));
        assert!(yaml.ends_with(
            "ports: [{name: tcp, port: 18081}]\nendpoints:\n- addresses: [\"127.0.0.1\"]\n"
        ));
    }
}
