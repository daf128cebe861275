//! The in-process gateway and its surroundings: `Gateway` serves a configuration from YAML
//! on port 0 and can reload it, `Upstream`s answer as a test needs, `Client` keeps one
//! connection.

use std::{
    convert::Infallible,
    net::SocketAddr,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Empty, Full};
use hyper::{
    body::Incoming,
    client::conn::{http1, http2},
    service::service_fn,
};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::{
    io::AsyncReadExt,
    net::{TcpListener, TcpStream},
    sync::watch,
};

use crate::{
    compile::{Identity, compile},
    config,
    metrics::Metrics,
    proxy::{AccessLogFormat, ProxyContext, serve},
    runtime::Live,
    snapshot::Snapshot,
};

pub(super) const HOST: &str = "test.example";

/// What a test upstream does with each request.
#[derive(Clone, Copy, Debug)]
pub(super) enum Behaviour {
    /// Answers with this status.
    Status(u16),
    /// Answers 200 after this long.
    Slow(Duration),
    /// Reads the request and closes the connection without an answer.
    Reset,
}

pub(super) struct Upstream {
    pub addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    open: Arc<AtomicUsize>,
}

impl Upstream {
    pub(super) async fn start(behaviour: Behaviour) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let hits = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let (counted, connections) = (hits.clone(), open.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (counted, connections) = (counted.clone(), connections.clone());
                connections.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    answer(stream, behaviour, counted).await;
                    connections.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Upstream { addr, hits, open }
    }

    pub(super) fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// Connections from the gateway this upstream still holds open.
    pub(super) fn open_connections(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }
}

async fn answer(mut stream: TcpStream, behaviour: Behaviour, hits: Arc<AtomicUsize>) {
    if let Behaviour::Reset = behaviour {
        let mut head = [0u8; 4096];
        if matches!(stream.read(&mut head).await, Ok(n) if n > 0) {
            hits.fetch_add(1, Ordering::SeqCst);
        }
        return;
    }
    let service = service_fn(move |_: Request<Incoming>| {
        let hits = hits.clone();
        async move {
            hits.fetch_add(1, Ordering::SeqCst);
            let status = match behaviour {
                Behaviour::Status(status) => status,
                Behaviour::Slow(delay) => {
                    tokio::time::sleep(delay).await;
                    200
                }
                Behaviour::Reset => 200,
            };
            let mut response = Response::new(Full::new(Bytes::from_static(b"upstream")));
            *response.status_mut() = StatusCode::from_u16(status).expect("status");
            Ok::<_, Infallible>(response)
        }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

/// An address where nothing listens: connecting is refused.
pub(super) fn refusing_address() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("address")
}

/// The configuration of a test: a Gateway on `port` for `HOST`, a VirtualService whose
/// HTTP routes are `routes` (a YAML flow sequence's items), the Services named in
/// `services` with their endpoints (one EndpointSlice per endpoint, as each has its own
/// port), and `extra` documents.
pub(super) fn config(
    port: u16,
    routes: &str,
    services: &[(&str, &[SocketAddr])],
    extra: &str,
) -> String {
    let mut yaml = format!(
        r#"
apiVersion: networking.istio.io/v1alpha3
kind: Gateway
metadata: {{name: gw}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: {port}, name: http, protocol: HTTP}}
    hosts: ["{HOST}"]
---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {{name: vs}}
spec:
  hosts: ["{HOST}"]
  gateways: [gw]
  http: [{routes}]
"#
    );
    for (name, endpoints) in services {
        yaml.push_str(&format!(
            r#"---
apiVersion: v1
kind: Service
metadata: {{name: {name}}}
spec:
  ports:
  - {{name: http, port: 80}}
"#
        ));
        for (i, endpoint) in endpoints.iter().enumerate() {
            yaml.push_str(&format!(
                r#"---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {name}-{i}
  labels: {{kubernetes.io/service-name: {name}}}
addressType: IPv4
ports: [{{name: http, port: {port}}}]
endpoints:
- addresses: ["{ip}"]
"#,
                port = endpoint.port(),
                ip = endpoint.ip(),
            ));
        }
    }
    if !extra.is_empty() {
        yaml.push_str("---\n");
        yaml.push_str(extra);
    }
    yaml
}

/// A route to Service `service` with `more` fields (`retries: {...}`, `timeout: 1s`).
pub(super) fn route_to(service: &str, more: &str) -> String {
    let more = if more.is_empty() {
        String::new()
    } else {
        format!(", {more}")
    };
    format!("{{route: [{{destination: {{host: {service}, port: {{number: 80}}}}}}]{more}}}")
}

/// Round robin and one 5xx ejects an endpoint for a minute, up to all of them.
pub(super) fn ejecting(service: &str) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata: {{name: {service}}}
spec:
  host: {service}
  trafficPolicy:
    loadBalancer: {{simple: ROUND_ROBIN}}
    outlierDetection: {{consecutive5xxErrors: 1, interval: 1s, baseEjectionTime: 60s, maxEjectionPercent: 100}}
"#
    )
}

fn snapshot(yaml: &str) -> Arc<Snapshot> {
    let (resources, diagnostics) = config::load_text(Path::new("test.yaml"), yaml);
    assert!(!diagnostics.has_errors(), "{diagnostics}");
    let (snapshot, diagnostics) = compile(&resources, &Identity::default());
    assert!(!diagnostics.has_errors(), "{diagnostics}");
    Arc::new(snapshot)
}

/// `serve` on a port-0 listener, with the live configuration a test can replace.
pub(super) struct Gateway {
    addr: SocketAddr,
    ctx: Arc<ProxyContext>,
    shutdown: watch::Sender<bool>,
}

impl Gateway {
    /// Serves the configuration `config_for` returns for the gateway's port.
    pub(super) async fn start(config_for: impl FnOnce(u16) -> String) -> Gateway {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("non-blocking");
        let addr = listener.local_addr().expect("address");
        let live = Live::new(snapshot(&config_for(addr.port())));
        let metrics = Arc::new(Metrics::new(Arc::default()));
        let ctx = Arc::new(ProxyContext::new(
            Arc::new(ArcSwap::from_pointee(live)),
            metrics,
            AccessLogFormat::Off,
        ));
        let (shutdown, stop) = watch::channel(false);
        tokio::spawn(serve(listener, ctx.clone(), stop, Duration::from_secs(1)));
        tokio::spawn(crate::proxy::sweep_upstream_pools(ctx.clone()));
        Gateway {
            addr,
            ctx,
            shutdown,
        }
    }

    /// The listener stops, as at SIGTERM or when a reload removes its port: it drains.
    pub(super) fn stop(&self) {
        let _ = self.shutdown.send(true);
    }

    pub(super) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A reload: the configuration `config_for` returns replaces the live one, taking
    /// over its clusters' state, as `reload.rs` publishes it.
    pub(super) fn reload(&self, config_for: impl FnOnce(u16) -> String) {
        let next = snapshot(&config_for(self.addr.port()));
        let live = self.ctx.live.load();
        self.ctx.live.store(Arc::new(live.succeed(next)));
    }

    pub(super) async fn client(&self) -> Client {
        let stream = TcpStream::connect(self.addr).await.expect("connect");
        let (sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(connection);
        Client { sender }
    }

    /// An HTTP/2 connection (h2c with prior knowledge, as gRPC clients open them).
    pub(super) async fn h2_client(&self) -> H2Client {
        let stream = TcpStream::connect(self.addr).await.expect("connect");
        let (sender, connection) = http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(connection);
        H2Client { sender }
    }

    /// One request on a connection of its own.
    pub(super) async fn get(&self, path: &str) -> Answer {
        self.client().await.get(path).await
    }

    /// Requests counted with this status and these response flags (Istio's
    /// `istio_requests_total`).
    pub(super) fn requests(&self, status: u16, flags: &str) -> u64 {
        let code = format!("response_code=\"{status}\"");
        let flags = format!("response_flags=\"{flags}\"");
        self.ctx
            .metrics
            .encode()
            .lines()
            .filter(|l| l.starts_with("istio_requests_total{"))
            .filter(|l| l.contains(&code) && l.contains(&flags))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    }
}

pub(super) struct Client {
    sender: http1::SendRequest<Empty<Bytes>>,
}

#[derive(Debug)]
pub(super) struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Client {
    pub(super) async fn get(&mut self, path: &str) -> Answer {
        self.get_from(HOST, path).await
    }

    pub(super) async fn get_from(&mut self, host: &str, path: &str) -> Answer {
        let request = Request::get(path)
            .header(header::HOST, host)
            .body(Empty::new())
            .expect("request");
        self.sender.ready().await.expect("connection ready");
        let response = self.sender.send_request(request).await.expect("response");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await.expect("body");
        Answer {
            status,
            headers,
            body: body.to_bytes(),
        }
    }
}

pub(super) struct H2Client {
    sender: http2::SendRequest<Empty<Bytes>>,
}

impl H2Client {
    /// One stream: a GET of `path` at `HOST`.
    pub(super) async fn get(&mut self, path: &str) -> Answer {
        let request = Request::get(format!("http://{HOST}{path}"))
            .body(Empty::new())
            .expect("request");
        self.sender.ready().await.expect("connection ready");
        let response = self.sender.send_request(request).await.expect("response");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await.expect("body");
        Answer {
            status,
            headers,
            body: body.to_bytes(),
        }
    }
}
