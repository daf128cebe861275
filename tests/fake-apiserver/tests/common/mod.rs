//! A raw HTTP/1.1 client (hyper's connection API, no Kubernetes client) for protocol tests.
#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use serde_json::Value;
use tokio::net::TcpStream;

/// Guards against hangs only: nothing here asserts on timing.
pub const PATIENCE: Duration = Duration::from_secs(10);

async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    content_type: &str,
    body: Option<&Value>,
) -> hyper::Response<Incoming> {
    let stream = TcpStream::connect(addr).await.expect("connect to the fake");
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .expect("HTTP/1.1 handshake");
    tokio::spawn(conn);
    let body = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
    let request = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string())
        .header("accept", "application/json")
        .header("content-type", content_type)
        .body(Full::new(body))
        .expect("a valid request");
    tokio::time::timeout(PATIENCE, sender.send_request(request))
        .await
        .expect("a response in time")
        .expect("a response")
}

/// One request; the body parsed as JSON.
pub async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> (u16, Value) {
    call_typed(addr, method, path, "application/json", body).await
}

pub async fn call_typed(
    addr: SocketAddr,
    method: &str,
    path: &str,
    content_type: &str,
    body: Option<&Value>,
) -> (u16, Value) {
    let response = send(addr, method, path, content_type, body).await;
    let status = response.status().as_u16();
    let bytes = tokio::time::timeout(PATIENCE, response.into_body().collect())
        .await
        .expect("a body in time")
        .expect("a body")
        .to_bytes();
    let value = serde_json::from_slice(&bytes).expect("a JSON body");
    (status, value)
}

/// An open watch: one JSON event per line.
pub struct Watch {
    pub status: u16,
    body: Incoming,
    buffer: Vec<u8>,
}

pub async fn watch(addr: SocketAddr, path: &str) -> Watch {
    let response = send(addr, "GET", path, "application/json", None).await;
    Watch {
        status: response.status().as_u16(),
        body: response.into_body(),
        buffer: Vec::new(),
    }
}

impl Watch {
    /// The next event, or None when the server ended the stream.
    pub async fn next(&mut self) -> Option<Value> {
        loop {
            if let Some(end) = self.buffer.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=end).collect();
                return Some(serde_json::from_slice(&line).expect("one JSON event per line"));
            }
            let frame = tokio::time::timeout(PATIENCE, self.body.frame())
                .await
                .expect("an event in time");
            match frame {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buffer.extend_from_slice(&data);
                    }
                }
                _ => {
                    assert!(
                        self.buffer.is_empty(),
                        "a partial event at the end of the stream"
                    );
                    return None;
                }
            }
        }
    }

    /// The next event's type and object name.
    pub async fn next_named(&mut self) -> Option<(String, String)> {
        let event = self.next().await?;
        Some((
            event["type"].as_str().unwrap_or("").to_string(),
            event["object"]["metadata"]["name"]
                .as_str()
                .unwrap_or("")
                .to_string(),
        ))
    }
}

pub fn service(ns: &str, name: &str, labels: Value) -> Value {
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {"ports": [{"port": 80, "protocol": "TCP"}]},
    })
}

pub fn rv(object: &Value) -> String {
    object["metadata"]["resourceVersion"]
        .as_str()
        .expect("a resourceVersion")
        .to_string()
}
