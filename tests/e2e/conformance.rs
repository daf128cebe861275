//! Gateway API conformance, case by case: one test per test of the upstream suite
//! (`kubernetes-sigs/gateway-api`, `conformance/tests`) that we cover, named after it, with
//! its manifests' intent (the same namespaces, Gateway, routes and backends, written as
//! files) and its request/response expectations, against the real binary with curl and
//! openssl. Status expectations are read from `gatewayd validate`, which prints the
//! report the status writer would write.

mod backend_tls_policy;
mod gateway;
mod grpc_route;
mod http_route;
mod l4_route;

use std::{net::SocketAddr, path::Path};

use gateway_tests::{Gateway, TempDir};

/// The suite's namespaces.
pub(crate) const INFRA: &str = "gateway-conformance-infra";
pub(crate) const WEB: &str = "gateway-conformance-web-backend";

/// Our GatewayClass (the suite's `gateway-conformance`, with our controller name), and
/// the gateway's own Service mapping each listener port to the port gatewayd binds.
pub(crate) fn class_and_ports(ports: &[(u16, u16)]) -> String {
    let ports: String = ports
        .iter()
        .map(|(port, bind)| format!("  - {{name: p{port}, port: {port}, targetPort: {bind}}}\n"))
        .collect();
    format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: gateway-conformance}}
spec: {{controllerName: gatewayd.dev/gateway-controller}}
---
apiVersion: v1
kind: Service
metadata: {{name: istio-ingressgateway, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  ports:
{ports}---
"#
    )
}

/// Service `name` in `namespace` on port `port`, its one endpoint at `endpoint`; ends
/// with `---`.
pub(crate) fn backend(name: &str, namespace: &str, port: u16, endpoint: SocketAddr) -> String {
    format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  ports: [{{name: p, port: {port}, targetPort: {target}}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: {name}-1, namespace: {namespace}, labels: {{kubernetes.io/service-name: {name}}}}}
addressType: IPv4
ports: [{{name: p, port: {target}}}]
endpoints:
- addresses: ["{ip}"]
---
"#,
        target = endpoint.port(),
        ip = endpoint.ip(),
    )
}

/// gatewayd serving `config` (without the eBPF programs: these cases are about routing).
pub(crate) fn serve(dir: &TempDir, config: &str) -> anyhow::Result<Gateway> {
    dir.write("config.yaml", config)?;
    Gateway::start(dir.path(), &["--ebpf", "off"], None, dir)
}

/// What `gatewayd validate` says about `dir`: diagnostics and the status report lines.
pub(crate) fn report(dir: &Path) -> anyhow::Result<String> {
    crate::tls::validate(dir)
}
