//! gRPC end to end between two independent peers: Google's gRPC (Debian's python3-grpcio,
//! the C core) as client and as server (tests/grpc/peer.py), gatewayd between them on an
//! Istio Gateway whose upstream Service port is named `grpc` (h2c upstream). Calls of
//! every kind keep their messages, metadata, trailers and statuses; the gateway's own
//! answers reach the client as gRPC statuses, as Envoy sends them.

use std::{net::SocketAddr, process::Command};

use anyhow::{Context as _, bail};
use gateway_tests::{
    Gateway, TempDir, curl, free_port,
    grpc::{GrpcServer, PYTHON, peer_script},
};
use serde_json::{Value, json};

const AUTHORITY: &str = "grpc.example";
const ECHO: &str = "/gatewayd.test.Echo";
/// Longer than the route timeout and the client deadlines below, so they always expire.
const SLOW_SECONDS: &str = "3";
/// One message bigger than any single HTTP/2 frame or flow-control window.
const LARGE_MESSAGE_BYTES: u64 = 1 << 20;

/// One call by the gRPC client peer through `target`; its outcome (code, details,
/// messages, initial and trailing metadata) as peer.py prints it.
pub(crate) fn call(target: &str, call: Value) -> anyhow::Result<Value> {
    let out = Command::new(PYTHON)
        .arg(peer_script())
        .args(["client", target, AUTHORITY])
        .arg(call.to_string())
        .output()
        .context("running the gRPC client peer")?;
    if !out.status.success() {
        bail!(
            "gRPC client peer failed on {call}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "client output is not JSON: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// A GRPC server on the gateway for `grpc.example`; routes by header (faults, a route
/// timeout) before routes by service: Echo to the server peer, Missing to a Service with
/// no endpoints; anything else has no route.
fn config(bind_port: u16, server: SocketAddr) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: gw, namespace: default}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 80, name: grpc, protocol: GRPC}}
    hosts: ["{AUTHORITY}"]
---
apiVersion: v1
kind: Service
metadata: {{name: istio-ingressgateway, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  ports: [{{name: grpc, port: 80, targetPort: {bind_port}}}]
---
apiVersion: v1
kind: Service
metadata: {{name: echo, namespace: default}}
spec:
  ports: [{{name: grpc, port: 50051, targetPort: {server_port}}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: echo-1, namespace: default, labels: {{kubernetes.io/service-name: echo}}}}
addressType: IPv4
ports: [{{name: grpc, port: {server_port}}}]
endpoints:
- addresses: ["{server_ip}"]
---
apiVersion: v1
kind: Service
metadata: {{name: missing, namespace: default}}
spec:
  ports: [{{name: grpc, port: 50051}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: grpc, namespace: default}}
spec:
  hosts: ["{AUTHORITY}"]
  gateways: [gw]
  http:
  - match: [{{headers: {{x-fault: {{exact: grpc}}}}}}]
    fault: {{abort: {{grpcStatus: RESOURCE_EXHAUSTED, percentage: {{value: 100}}}}}}
    route: [{{destination: {{host: echo}}}}]
  - match: [{{headers: {{x-fault: {{exact: http}}}}}}]
    fault: {{abort: {{httpStatus: 403, percentage: {{value: 100}}}}}}
    route: [{{destination: {{host: echo}}}}]
  - match: [{{headers: {{x-route: {{exact: short-timeout}}}}}}]
    timeout: 300ms
    route: [{{destination: {{host: echo}}}}]
  - match: [{{uri: {{prefix: {ECHO}/}}}}]
    route: [{{destination: {{host: echo}}}}]
  - match: [{{uri: {{prefix: /gatewayd.test.Missing/}}}}]
    route: [{{destination: {{host: missing}}}}]
"#,
        server_port = server.port(),
        server_ip = server.ip(),
    )
}

fn start(label: &str) -> anyhow::Result<(GrpcServer, Gateway, TempDir, String)> {
    let server = GrpcServer::start("echo")?;
    let dir = TempDir::new(label)?;
    let bind_port = free_port();
    dir.write("config.yaml", &config(bind_port, server.addr))?;
    let gateway = Gateway::start(dir.path(), &["--ebpf", "off"], None, &dir)?;
    Ok((server, gateway, dir, format!("127.0.0.1:{bind_port}")))
}

fn field<'a>(outcome: &'a Value, name: &str) -> &'a str {
    outcome[name].as_str().unwrap_or_default()
}

fn metadata<'a>(outcome: &'a Value, kind: &str, key: &str) -> Option<&'a str> {
    outcome[kind][key].as_str()
}

/// (code, details) of a call.
fn status(outcome: &Value) -> (&str, &str) {
    (field(outcome, "code"), field(outcome, "details"))
}

#[test]
fn calls_of_every_kind_keep_messages_metadata_trailers_and_statuses() -> anyhow::Result<()> {
    let (_server, gateway, _dir, target) = start("grpc-calls")?;

    // Unary: the payload comes back; the request's metadata reached the server (it echoes
    // x-* metadata in its trailers), with the forwarding headers the gateway adds.
    let unary = call(
        &target,
        json!({"method": format!("{ECHO}/Unary"), "messages": ["hello through the gateway"],
               "metadata": {"x-test-tag": "abc"}}),
    )?;
    assert_eq!(status(&unary), ("OK", ""), "{unary}\n{}", gateway.stderr());
    assert_eq!(unary["responses"], json!(["hello through the gateway"]));
    assert_eq!(metadata(&unary, "trailing", "echo-x-test-tag"), Some("abc"));
    assert_eq!(
        metadata(&unary, "trailing", "echo-x-forwarded-proto"),
        Some("http")
    );
    assert!(
        metadata(&unary, "trailing", "echo-x-request-id").is_some_and(|id| !id.is_empty()),
        "{unary}"
    );
    // Initial metadata and custom trailers, text and binary, arrive unchanged.
    assert_eq!(metadata(&unary, "initial", "x-initial"), Some("hello"));
    assert_eq!(metadata(&unary, "trailing", "x-trailer"), Some("kept"));
    assert_eq!(
        metadata(&unary, "trailing", "x-trailer-bin"),
        Some("\u{0}\u{1}\u{fe}\u{ff}")
    );

    // A server's error status, its percent-encoded details and its trailers pass as sent.
    let failed = call(
        &target,
        json!({"method": format!("{ECHO}/Fail"), "messages": ["id-7"]}),
    )?;
    assert_eq!(
        status(&failed),
        ("NOT_FOUND", "no such item: caf\u{e9} 100%"),
        "{failed}"
    );
    assert_eq!(metadata(&failed, "trailing", "x-reason"), Some("missing"));

    // Server streaming: every message, in order.
    let streamed = call(
        &target,
        json!({"method": format!("{ECHO}/ServerStream"), "kind": "server_stream",
               "messages": ["200"]}),
    )?;
    assert_eq!(status(&streamed), ("OK", ""), "{streamed}");
    let items: Vec<String> = (0..200).map(|i| format!("item-{i}")).collect();
    assert_eq!(streamed["responses"], json!(items));

    // Client streaming: the server counted every message and byte.
    let messages: Vec<String> = (0..100).map(|i| format!("part-{i:03}")).collect();
    let uploaded = call(
        &target,
        json!({"method": format!("{ECHO}/ClientStream"), "kind": "client_stream",
               "messages": messages}),
    )?;
    assert_eq!(status(&uploaded), ("OK", ""), "{uploaded}");
    assert_eq!(uploaded["responses"], json!(["messages=100 bytes=800"]));

    // Bidirectional ping-pong: each message is sent only after the previous answer came
    // back, so this completes only if the gateway streams both ways.
    let pings: Vec<String> = (0..20).map(|i| format!("ping-{i}")).collect();
    let pongs: Vec<String> = pings.iter().map(|p| format!("re:{p}")).collect();
    let bidi = call(
        &target,
        json!({"method": format!("{ECHO}/Bidi"), "kind": "bidi", "messages": pings,
               "timeout": 5}),
    )?;
    assert_eq!(status(&bidi), ("OK", ""), "{bidi}");
    assert_eq!(bidi["responses"], json!(pongs));

    // A 1 MiB message both ways, byte for byte.
    let large = call(
        &target,
        json!({"method": format!("{ECHO}/Unary"), "size": LARGE_MESSAGE_BYTES}),
    )?;
    assert_eq!(status(&large), ("OK", ""), "{large}");
    assert_eq!(large["received"], large["sent"]);
    assert_eq!(large["sent"][0]["len"], json!(LARGE_MESSAGE_BYTES));

    // The client's deadline is the client's: DEADLINE_EXCEEDED, not a gateway error.
    let late = call(
        &target,
        json!({"method": format!("{ECHO}/Slow"), "messages": [SLOW_SECONDS], "timeout": 0.3}),
    )?;
    assert_eq!(field(&late, "code"), "DEADLINE_EXCEEDED", "{late}");
    Ok(())
}

#[test]
fn the_gateways_own_answers_reach_grpc_clients_as_grpc_statuses() -> anyhow::Result<()> {
    let (_server, gateway, _dir, target) = start("grpc-local")?;

    // No route: Envoy's 404 becomes UNIMPLEMENTED.
    let unrouted = call(
        &target,
        json!({"method": "/gatewayd.test.Nowhere/Call", "messages": ["x"]}),
    )?;
    assert_eq!(
        status(&unrouted),
        ("UNIMPLEMENTED", ""),
        "{unrouted}\n{}",
        gateway.stderr()
    );

    // A Service without endpoints: 503 "no healthy upstream" becomes UNAVAILABLE.
    let no_endpoints = call(
        &target,
        json!({"method": "/gatewayd.test.Missing/Call", "messages": ["x"]}),
    )?;
    assert_eq!(
        status(&no_endpoints),
        ("UNAVAILABLE", "no healthy upstream"),
        "{no_endpoints}"
    );

    // The route's timeout (shorter than the client's deadline): 504 becomes UNAVAILABLE.
    let timed_out = call(
        &target,
        json!({"method": format!("{ECHO}/Slow"), "messages": [SLOW_SECONDS],
               "metadata": {"x-route": "short-timeout"}, "timeout": 10}),
    )?;
    assert_eq!(
        status(&timed_out),
        ("UNAVAILABLE", "upstream request timeout"),
        "{timed_out}"
    );

    // Fault aborts: grpcStatus is sent as it is named, httpStatus is mapped (403).
    let grpc_abort = call(
        &target,
        json!({"method": format!("{ECHO}/Unary"), "messages": ["x"],
               "metadata": {"x-fault": "grpc"}}),
    )?;
    assert_eq!(
        status(&grpc_abort),
        ("RESOURCE_EXHAUSTED", "fault filter abort"),
        "{grpc_abort}"
    );
    let http_abort = call(
        &target,
        json!({"method": format!("{ECHO}/Unary"), "messages": ["x"],
               "metadata": {"x-fault": "http"}}),
    )?;
    assert_eq!(
        status(&http_abort),
        ("PERMISSION_DENIED", "fault filter abort"),
        "{http_abort}"
    );

    // The access log records what went on the wire (200) with Envoy's flags, as Envoy does.
    let log = gateway.access_log();
    for (path, flags) in [
        ("/gatewayd.test.Nowhere/Call", "NR"),
        ("/gatewayd.test.Missing/Call", "UH"),
        ("/gatewayd.test.Echo/Slow", "UT"),
    ] {
        let line = format!("\"POST {path} HTTP/2\" 200 {flags} ");
        assert!(log.contains(&line), "no {line:?} in the access log:\n{log}");
    }

    // A plain HTTP request on the same port still gets Envoy's plain 404.
    let plain = curl(
        None,
        &[
            "-H",
            &format!("Host: {AUTHORITY}"),
            &format!("http://{target}/gatewayd.test.Nowhere/Call"),
        ],
    )?;
    assert_eq!(plain.status, 404, "{plain:?}");
    assert!(!plain.head.contains("grpc-status"), "{plain:?}");
    Ok(())
}
