//! GRPCRoute conformance cases: matching by method and by header, with Google's gRPC as
//! client and servers (tests/grpc/peer.py, whose servers answer the suite's
//! `GrpcEcho` methods with their own name).

use gateway_tests::{TempDir, free_port, grpc::GrpcServer};
use serde_json::{Value, json};

use super::{INFRA, class_and_ports, serve};
use crate::grpc::call;

const SERVICE: &str = "gateway_api_conformance.echo_basic.grpcecho.GrpcEcho";

/// Service `name` on port 8080 with `appProtocol: kubernetes.io/h2c`, as the suite's
/// `grpc-infra-backend-*`, its endpoint the gRPC server `server`.
fn grpc_backend(name: &str, server: &GrpcServer) -> String {
    format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: {INFRA}}}
spec:
  ports: [{{name: grpc, port: 8080, targetPort: {port}, appProtocol: kubernetes.io/h2c}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: {name}-1, namespace: {INFRA}, labels: {{kubernetes.io/service-name: {name}}}}}
addressType: IPv4
ports: [{{name: grpc, port: {port}}}]
endpoints:
- addresses: ["{ip}"]
---
"#,
        port = server.addr.port(),
        ip = server.addr.ip(),
    )
}

/// gatewayd with the suite's `same-namespace` Gateway (HTTP on 80), the two gRPC
/// backends and GRPCRoute `name` with `rules`; the address to call.
struct GrpcCase {
    target: String,
    gateway: gateway_tests::Gateway,
    _dir: TempDir,
    _servers: [GrpcServer; 2],
}

impl GrpcCase {
    fn start(label: &str, name: &str, rules: &str) -> anyhow::Result<Self> {
        let servers = [
            GrpcServer::start("grpc-infra-backend-v1")?,
            GrpcServer::start("grpc-infra-backend-v2")?,
        ];
        let dir = TempDir::new(label)?;
        let port = free_port();
        let config = class_and_ports(&[(80, port)])
            + &format!(
                r#"apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: same-namespace, namespace: {INFRA}}}
spec:
  gatewayClassName: gateway-conformance
  listeners:
  - {{name: http, port: 80, protocol: HTTP, allowedRoutes: {{namespaces: {{from: Same}}}}}}
---
"#
            )
            + &grpc_backend("grpc-infra-backend-v1", &servers[0])
            + &grpc_backend("grpc-infra-backend-v2", &servers[1])
            + &format!(
                "apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {{name: {name}, namespace: {INFRA}}}\nspec:\n  parentRefs: [{{name: same-namespace}}]\n  rules:\n{rules}"
            );
        let gateway = serve(&dir, &config)?;
        Ok(GrpcCase {
            target: format!("127.0.0.1:{port}"),
            gateway,
            _dir: dir,
            _servers: servers,
        })
    }

    /// `GrpcEcho/method` with `metadata`: the backend that answered, or the status code.
    fn call(&self, method: &str, metadata: &[(&str, &str)]) -> anyhow::Result<String> {
        let metadata: serde_json::Map<String, Value> = metadata
            .iter()
            .map(|(k, v)| ((*k).to_owned(), json!(v)))
            .collect();
        let outcome = call(
            &self.target,
            json!({"method": format!("/{SERVICE}/{method}"), "messages": [""], "metadata": metadata}),
        )?;
        Ok(match outcome["code"].as_str() {
            Some("OK") => outcome["responses"][0]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            other => other.unwrap_or("no code").to_owned(),
        })
    }
}

/// One rule: `matches` (a flow list) to `grpc-infra-backend-{to}`.
fn rule(matches: &str, to: &str) -> String {
    format!(
        "  - matches: {matches}\n    backendRefs: [{{name: grpc-infra-backend-{to}, port: 8080}}]\n"
    )
}

/// GRPCExactMethodMatching: `Echo` and `EchoTwo` of the service go to their rules'
/// backends; `EchoThree` (which the backends do serve) has no rule and gets
/// UNIMPLEMENTED from the gateway.
#[test]
fn grpc_exact_method_matching() -> anyhow::Result<()> {
    let method = |m: &str| format!("[{{method: {{service: {SERVICE}, method: {m}}}}}]");
    let case = GrpcCase::start(
        "conf-grpc-exact-method",
        "exact-matching",
        &(rule(&method("Echo"), "v1") + &rule(&method("EchoTwo"), "v2")),
    )?;
    let answer = case.call("Echo", &[])?;
    assert_eq!(answer, "grpc-infra-backend-v1", "{}", case.gateway.stderr());
    assert_eq!(case.call("EchoTwo", &[])?, "grpc-infra-backend-v2");
    assert_eq!(case.call("EchoThree", &[])?, "UNIMPLEMENTED");
    Ok(())
}

/// GRPCRouteHeaderMatching: header matches ANDed within a match and ORed across
/// matches; more headers win, and between rules with as many the first; a call no rule
/// matches gets UNIMPLEMENTED.
#[test]
fn grpc_route_header_matching() -> anyhow::Result<()> {
    let rules = [
        rule("[{headers: [{name: version, value: one}]}]", "v1"),
        rule("[{headers: [{name: version, value: two}]}]", "v2"),
        rule(
            "[{headers: [{name: version, value: two}, {name: color, value: orange}]}]",
            "v1",
        ),
        rule(
            "[{headers: [{name: color, value: blue}]}, {headers: [{name: color, value: green}]}]",
            "v1",
        ),
        rule(
            "[{headers: [{name: color, value: red}]}, {headers: [{name: color, value: yellow}]}]",
            "v2",
        ),
    ]
    .concat();
    let case = GrpcCase::start("conf-grpc-header-matching", "grpc-header-matching", &rules)?;
    let (v1, v2, none) = (
        "grpc-infra-backend-v1",
        "grpc-infra-backend-v2",
        "UNIMPLEMENTED",
    );
    let cases: [(&[(&str, &str)], &str); 11] = [
        (&[("version", "one")], v1),
        (&[("version", "two")], v2),
        (&[("version", "two"), ("color", "orange")], v1),
        (&[("version", "two"), ("color", "blue")], v2),
        (&[("color", "orange")], none),
        (&[("some-other-header", "one")], none),
        (&[("color", "blue")], v1),
        (&[("color", "green")], v1),
        (&[("color", "red")], v2),
        (&[("color", "yellow")], v2),
        (&[("color", "purple")], none),
    ];
    for (metadata, want) in cases {
        let answer = case.call("Echo", metadata)?;
        assert_eq!(answer, want, "{metadata:?}\n{}", case.gateway.stderr());
    }
    Ok(())
}
