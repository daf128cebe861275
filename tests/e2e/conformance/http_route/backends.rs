//! HTTPRoute backend cases: Services of other shapes (headless, EndpointSlices written by
//! hand) and Service ports whose `appProtocol` asks for HTTP/2 in cleartext or WebSocket.

use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    thread,
    time::Duration,
};

use gateway_tests::{TempDir, Upstream, free_port, h2c::H2cClient};
use tungstenite::{Message, client::IntoClientRequest as _};

use super::{Case, route_with_rules, same_namespace_gateway};
use crate::conformance::{INFRA, class_and_ports, serve};

/// An EndpointSlice `name` for Service `service` with port `first-port` at `port` and
/// these addresses (none: an empty slice, as the suite leaves its IPv6 ones).
fn slice(name: &str, service: &str, family: &str, port: u16, addresses: &[String]) -> String {
    let endpoints: String = addresses
        .iter()
        .map(|a| format!("- addresses: [\"{a}\"]\n"))
        .collect();
    let endpoints = if endpoints.is_empty() {
        String::new()
    } else {
        format!("endpoints:\n{endpoints}")
    };
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}, namespace: {INFRA}, labels: {{kubernetes.io/service-name: {service}}}}}\naddressType: {family}\nports:\n- {{name: first-port, port: {port}, protocol: TCP}}\n{endpoints}---\n"
    )
}

/// A Service `name` on 8080 → `target` (port `first-port`), headless when asked.
fn service(name: &str, headless: bool, selector: bool, target: u16) -> String {
    let cluster_ip = if headless { "  clusterIP: None\n" } else { "" };
    let selector = if selector {
        "  selector: {app: infra-backend-v1}\n"
    } else {
        ""
    };
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {INFRA}}}\nspec:\n{cluster_ip}{selector}  ports:\n  - {{name: first-port, protocol: TCP, port: 8080, targetPort: {target}}}\n---\n"
    )
}

/// HTTPRouteServiceTypes: one route to a Service with hand-written EndpointSlices, a
/// headless Service (its slice as the EndpointSlice controller writes it for the
/// selector), and a headless Service with hand-written slices; each answers 200 from
/// infra-backend-v1. The IPv6 slices stay empty (the backend has no IPv6 address), as
/// the suite leaves them.
#[test]
fn http_route_service_types() -> anyhow::Result<()> {
    let v1 = Upstream::start(None, "127.0.0.1:0", "infra-backend-v1")?;
    let (ip, target) = (v1.addr.ip().to_string(), v1.addr.port());
    let mut routes = route_with_rules(
        "service-types",
        "  - matches: [{path: {type: Exact, value: /manual-endpointslices}}]\n    backendRefs: [{name: manual-endpointslices, port: 8080}]\n  - matches: [{path: {type: Exact, value: /headless}}]\n    backendRefs: [{name: headless, port: 8080}]\n  - matches: [{path: {type: Exact, value: /headless-manual-endpointslices}}]\n    backendRefs: [{name: headless-manual-endpointslices, port: 8080}]\n",
    );
    for (name, headless, selector) in [
        ("manual-endpointslices", false, false),
        ("headless", true, true),
        ("headless-manual-endpointslices", true, false),
    ] {
        routes += &service(name, headless, selector, target);
        if selector {
            // What the EndpointSlice controller writes for the selector's pods.
            routes += &slice(
                &format!("{name}-abcde"),
                name,
                "IPv4",
                target,
                std::slice::from_ref(&ip),
            );
        } else {
            routes += &slice(
                &format!("{name}-ip4"),
                name,
                "IPv4",
                target,
                std::slice::from_ref(&ip),
            );
            routes += &slice(&format!("{name}-ip6"), name, "IPv6", target, &[]);
        }
    }
    let case = Case::start("conf-service-types", &routes)?;
    for path in [
        "/manual-endpointslices",
        "/headless-manual-endpointslices",
        "/headless",
    ] {
        let answer = case.get(path)?;
        assert_eq!(answer.status, 200, "{path}: {answer:?}");
        assert_eq!(answer.answered_by(), "infra-backend-v1", "{path}");
    }
    Ok(())
}

/// The suite's `infra-backend-v1` Service with its three ports: `first-port` (8080),
/// `second-port` (8081, appProtocol `kubernetes.io/h2c`), `third-port` (8082,
/// appProtocol `kubernetes.io/ws`), all on the one demo upstream (which speaks
/// HTTP/1.1, HTTP/2 prior knowledge and upgrades on one port).
fn infra_backend_v1_ports(endpoint: SocketAddr) -> String {
    let port = endpoint.port();
    format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: infra-backend-v1, namespace: {INFRA}}}
spec:
  selector: {{app: infra-backend-v1}}
  ports:
  - {{name: first-port, protocol: TCP, port: 8080, targetPort: {port}}}
  - {{name: second-port, protocol: TCP, appProtocol: kubernetes.io/h2c, port: 8081, targetPort: {port}}}
  - {{name: third-port, protocol: TCP, appProtocol: kubernetes.io/ws, port: 8082, targetPort: {port}}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: infra-backend-v1-abcde, namespace: {INFRA}, labels: {{kubernetes.io/service-name: infra-backend-v1}}}}
addressType: IPv4
ports:
- {{name: first-port, port: {port}}}
- {{name: second-port, port: {port}, appProtocol: kubernetes.io/h2c}}
- {{name: third-port, port: {port}, appProtocol: kubernetes.io/ws}}
endpoints:
- addresses: ["{ip}"]
---
"#,
        ip = endpoint.ip(),
    )
}

/// HTTPRouteBackendProtocolH2C: a route to the `kubernetes.io/h2c` port; an HTTP/2
/// prior-knowledge request reaches infra-backend-v1, which sees HTTP/2 (the suite's
/// backend on that port speaks nothing else).
#[test]
fn http_route_backend_protocol_h2c() -> anyhow::Result<()> {
    let dir = TempDir::new("conf-backend-h2c")?;
    let v1 = Upstream::start(None, "127.0.0.1:0", "infra-backend-v1")?;
    let port = free_port();
    let config = class_and_ports(&[(80, port)])
        + &same_namespace_gateway()
        + &infra_backend_v1_ports(v1.addr)
        + &route_with_rules(
            "backend-protocol-h2c",
            "  - backendRefs: [{name: infra-backend-v1, port: 8081}]\n",
        );
    let _gateway = serve(&dir, &config)?;
    let mut client = H2cClient::connect(SocketAddr::from(([127, 0, 0, 1], port)), "example.com")?;
    let answer = client.get("/")?;
    assert_eq!(answer.status, 200, "{answer:?}");
    let json = answer.json()?;
    assert_eq!(json["upstream"], "infra-backend-v1");
    assert_eq!(json["version"], "HTTP/2.0", "the backend saw {json}");
    Ok(())
}

/// A WebSocket echo backend (tungstenite's server handshake and framing): every text
/// or binary message comes back as it was, on a thread per connection.
fn websocket_echo() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            thread::spawn(move || {
                let Ok(mut socket) = tungstenite::accept(stream) else {
                    return;
                };
                while let Ok(message) = socket.read() {
                    if (message.is_text() || message.is_binary()) && socket.send(message).is_err() {
                        return;
                    }
                }
            });
        }
    });
    Ok(addr)
}

/// HTTPRouteBackendProtocolWebSocket: a route to the `kubernetes.io/ws` port; a
/// WebSocket client (tungstenite) opens `ws://…/ws` through the gateway and gets its
/// text frame and its binary frame echoed by the backend.
#[test]
fn http_route_backend_protocol_websocket() -> anyhow::Result<()> {
    let dir = TempDir::new("conf-backend-ws")?;
    let echo = websocket_echo()?;
    let port = free_port();
    let config = class_and_ports(&[(80, port)])
        + &same_namespace_gateway()
        + &infra_backend_v1_ports(echo)
        + &route_with_rules(
            "backend-protocol-ws",
            "  - backendRefs: [{name: infra-backend-v1, port: 8082}]\n",
        );
    let _gateway = serve(&dir, &config)?;
    let stream = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port)))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut request = "ws://example.com/ws".into_client_request()?;
    request.headers_mut().insert(
        "origin",
        http::HeaderValue::from_static("ws://gateway/http_route_backend_protocol_websocket"),
    );
    let (mut socket, response) = tungstenite::client(request, stream)?;
    assert_eq!(response.status(), 101, "{response:?}");
    let mut echoed = |sent: Message| -> anyhow::Result<Message> {
        socket.send(sent)?;
        loop {
            let message = socket.read()?;
            if message.is_text() || message.is_binary() {
                return Ok(message);
            }
        }
    };
    let text = Message::text("Websocket Support!");
    assert_eq!(echoed(text.clone())?, text);
    let binary = Message::binary(vec![1, 2, 3, 4, 5, 6, 7]);
    assert_eq!(echoed(binary.clone())?, binary);
    socket.close(None)?;
    Ok(())
}
