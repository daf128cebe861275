//! Live state (issue 12): every request on a connection that stays open sees the current
//! endpoints and routes, and what the gateway learnt about its endpoints (outlier
//! ejections) outlives reloads that do not touch them. Long-lived clients of each kind
//! (HTTP/1.1 keep-alive, HTTP/2, gRPC) stay connected while the configuration files
//! change under them, as EndpointSlices change during a rollout.
//!
//! `moves`: clients stay connected across an endpoint move and a route removal;
//! `balancing`: outlier ejections and least-request counts outlive unrelated reloads;
//! `churn`: a minute of endpoint changes under load.

mod balancing;
mod churn;
mod moves;

use std::{net::SocketAddr, path::PathBuf};

use gateway_tests::{
    CurlResponse, Gateway, TempDir, endpoint_slices, free_port, http1::KeepAliveClient, service,
    write_atomically,
};

const HOST: &str = "live.example.com";
const SERVICE: &str = "backend";
const SERVICE_PORT: u16 = 8000;

/// The listener's protocol, which names the backend Service's port too (`grpc`: h2c).
#[derive(Clone, Copy)]
enum Listener {
    Http,
    Grpc,
}

impl Listener {
    fn protocol(self) -> &'static str {
        match self {
            Listener::Http => "HTTP",
            Listener::Grpc => "GRPC",
        }
    }

    fn port_name(self) -> &'static str {
        match self {
            Listener::Http => "http",
            Listener::Grpc => "grpc",
        }
    }
}

/// A gateway whose configuration is split as Kubernetes objects change: the Gateway
/// (`gateway.yaml`), the VirtualServices (`routes.yaml`), the backend Service and its
/// policy (`service.yaml`) and its EndpointSlices (`endpoints.yaml`), each file
/// rewritten on its own.
struct Live {
    gateway: Gateway,
    addr: SocketAddr,
    listener: Listener,
    dir: TempDir,
}

impl Live {
    fn start(
        label: &str,
        listener: Listener,
        routes: &str,
        endpoints: &[SocketAddr],
        policy: &str,
    ) -> anyhow::Result<Self> {
        let dir = TempDir::new(label)?;
        let port = free_port();
        dir.write("gateway.yaml", &gateway_config(port, listener))?;
        dir.write("routes.yaml", routes)?;
        dir.write(
            "service.yaml",
            &format!(
                "{}{policy}",
                service(SERVICE, SERVICE_PORT, listener.port_name())
            ),
        )?;
        dir.write(
            "endpoints.yaml",
            &endpoint_slices(SERVICE, listener.port_name(), endpoints),
        )?;
        let gateway = Gateway::start(dir.path(), &["--ebpf", "off"], None, &dir)?;
        Ok(Live {
            gateway,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            listener,
            dir,
        })
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Rewrites the backend's EndpointSlices (without waiting for the reload).
    fn write_endpoints(&self, endpoints: &[SocketAddr]) -> anyhow::Result<()> {
        write_atomically(
            &self.file("endpoints.yaml"),
            &endpoint_slices(SERVICE, self.listener.port_name(), endpoints),
        )
    }

    /// Rewrites `name` and waits until the gateway has reloaded.
    fn change(&self, name: &str, text: &str) -> anyhow::Result<()> {
        self.gateway
            .reload_after(|| write_atomically(&self.file(name), text))
    }

    /// GET `path` on a connection of its own; who answered.
    fn fresh_get(&self, path: &str) -> anyhow::Result<CurlResponse> {
        KeepAliveClient::connect(self.addr, HOST)?.get(path)
    }
}

fn gateway_config(bind_port: u16, listener: Listener) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: live, namespace: default}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 80, name: {name}, protocol: {protocol}}}
    hosts: ["*.example.com"]
---
apiVersion: v1
kind: Service
metadata: {{name: istio-ingressgateway, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  ports: [{{name: {name}, port: 80, targetPort: {bind_port}}}]
"#,
        name = listener.port_name(),
        protocol = listener.protocol(),
    )
}

/// VirtualService `name` for `host`: each prefix to the backend.
fn virtual_service(name: &str, host: &str, prefixes: &[&str]) -> String {
    let routes: String = prefixes
        .iter()
        .map(|prefix| {
            format!(
                "  - match: [{{uri: {{prefix: \"{prefix}\"}}}}]\n    route: [{{destination: {{host: {SERVICE}, port: {{number: {SERVICE_PORT}}}}}}}]\n"
            )
        })
        .collect();
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  hosts: [\"{host}\"]\n  gateways: [live]\n  http:\n{routes}---\n"
    )
}

/// A DestinationRule for the backend with `traffic_policy` (flow-style YAML).
fn destination_rule(traffic_policy: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: {SERVICE}, namespace: default}}\nspec:\n  host: {SERVICE}\n  trafficPolicy: {traffic_policy}\n---\n"
    )
}
