//! The request path in process: a snapshot compiled from YAML and wrapped in a `Live`,
//! `serve` on a port-0 listener of the test's runtime, upstreams that are small servers
//! on port 0 in the same test, and a hyper client. Retries, timeouts, response flags and
//! the rules for state across reloads, tested without the binary or root.
//!
//! Upstream connection pools are per thread (`upstream.rs`); every `#[tokio::test]` runs
//! on a runtime of its own thread, so tests share no pools.

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
use hyper::{body::Incoming, client::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::{
    io::AsyncReadExt,
    net::{TcpListener, TcpStream},
    sync::watch,
};

use super::{AccessLogFormat, ProxyContext, serve};
use crate::{
    compile::{Identity, compile},
    config,
    metrics::Metrics,
    runtime::Live,
    snapshot::Snapshot,
};

const HOST: &str = "test.example";

/// What a test upstream does with each request.
#[derive(Clone, Copy, Debug)]
enum Behaviour {
    /// Answers with this status.
    Status(u16),
    /// Answers 200 after this long.
    Slow(Duration),
    /// Reads the request and closes the connection without an answer.
    Reset,
}

struct Upstream {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
}

impl Upstream {
    async fn start(behaviour: Behaviour) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let hits = Arc::new(AtomicUsize::new(0));
        let counted = hits.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(answer(stream, behaviour, counted.clone()));
            }
        });
        Upstream { addr, hits }
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
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
fn refusing_address() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("address")
}

/// The configuration of a test: a Gateway on `port` for `HOST`, a VirtualService whose
/// HTTP routes are `routes` (a YAML flow sequence's items), the Services named in
/// `services` with their endpoints (one EndpointSlice per endpoint, as each has its own
/// port), and `extra` documents.
fn config(port: u16, routes: &str, services: &[(&str, &[SocketAddr])], extra: &str) -> String {
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
fn route_to(service: &str, more: &str) -> String {
    let more = if more.is_empty() {
        String::new()
    } else {
        format!(", {more}")
    };
    format!("{{route: [{{destination: {{host: {service}, port: {{number: 80}}}}}}]{more}}}")
}

/// Round robin and one 5xx ejects an endpoint for a minute, up to all of them.
fn ejecting(service: &str) -> String {
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
struct Gateway {
    addr: SocketAddr,
    ctx: Arc<ProxyContext>,
    _shutdown: watch::Sender<bool>,
}

impl Gateway {
    /// Serves the configuration `config_for` returns for the gateway's port.
    async fn start(config_for: impl FnOnce(u16) -> String) -> Gateway {
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
        Gateway {
            addr,
            ctx,
            _shutdown: shutdown,
        }
    }

    /// A reload: the configuration `config_for` returns replaces the live one, taking
    /// over its clusters' state, as `reload.rs` publishes it.
    fn reload(&self, config_for: impl FnOnce(u16) -> String) {
        let next = snapshot(&config_for(self.addr.port()));
        let live = self.ctx.live.load();
        self.ctx.live.store(Arc::new(live.succeed(next)));
    }

    async fn client(&self) -> Client {
        let stream = TcpStream::connect(self.addr).await.expect("connect");
        let (sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(connection);
        Client { sender }
    }

    /// One request on a connection of its own.
    async fn get(&self, path: &str) -> Answer {
        self.client().await.get(path).await
    }

    /// Requests counted with this status and these response flags (Istio's
    /// `istio_requests_total`).
    fn requests(&self, status: u16, flags: &str) -> u64 {
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

struct Client {
    sender: http1::SendRequest<Empty<Bytes>>,
}

#[derive(Debug)]
struct Answer {
    status: u16,
    headers: HeaderMap,
    body: Bytes,
}

impl Client {
    async fn get(&mut self, path: &str) -> Answer {
        self.get_from(HOST, path).await
    }

    async fn get_from(&mut self, host: &str, path: &str) -> Answer {
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

/// One row of the retry table: the route's retry policy, the upstream, and what the
/// client and the metrics see.
struct RetryCase {
    name: &'static str,
    retries: &'static str,
    upstream: Option<Behaviour>,
    status: u16,
    flags: &'static str,
    /// Requests that reached the upstream.
    hits: usize,
}

#[tokio::test]
async fn retries_follow_the_policy_and_flag_what_happened() {
    let cases = [
        RetryCase {
            name: "a 503 is retried on 5xx until the attempts run out",
            retries: r#"retries: {attempts: 2, retryOn: "5xx"}"#,
            upstream: Some(Behaviour::Status(503)),
            status: 503,
            flags: "URX",
            hits: 3,
        },
        RetryCase {
            name: "a status the policy does not name is not retried",
            retries: r#"retries: {attempts: 2, retryOn: "gateway-error"}"#,
            upstream: Some(Behaviour::Status(500)),
            status: 500,
            flags: "-",
            hits: 1,
        },
        RetryCase {
            name: "a status code named in retryOn is retried",
            retries: r#"retries: {attempts: 1, retryOn: "418"}"#,
            upstream: Some(Behaviour::Status(418)),
            status: 418,
            flags: "URX",
            hits: 2,
        },
        RetryCase {
            name: "no attempts: a 503 passes at once",
            retries: "retries: {attempts: 0}",
            upstream: Some(Behaviour::Status(503)),
            status: 503,
            flags: "-",
            hits: 1,
        },
        RetryCase {
            name: "a refused connection is retried on connect-failure",
            retries: r#"retries: {attempts: 2, retryOn: "connect-failure"}"#,
            upstream: None,
            status: 503,
            flags: "UF,URX",
            hits: 0,
        },
        RetryCase {
            name: "a refused connection without retries",
            retries: "retries: {attempts: 0}",
            upstream: None,
            status: 503,
            flags: "UF",
            hits: 0,
        },
        RetryCase {
            name: "a reset is retried on reset",
            retries: r#"retries: {attempts: 1, retryOn: "reset"}"#,
            upstream: Some(Behaviour::Reset),
            status: 503,
            flags: "UC,URX",
            hits: 2,
        },
        RetryCase {
            name: "5xx covers resets",
            retries: r#"retries: {attempts: 1, retryOn: "5xx"}"#,
            upstream: Some(Behaviour::Reset),
            status: 503,
            flags: "UC,URX",
            hits: 2,
        },
        RetryCase {
            name: "a reset is not retried on gateway-error",
            retries: r#"retries: {attempts: 1, retryOn: "gateway-error"}"#,
            upstream: Some(Behaviour::Reset),
            status: 503,
            flags: "UC",
            hits: 1,
        },
        RetryCase {
            name: "a per-try timeout is retried on gateway-error",
            retries: r#"retries: {attempts: 1, perTryTimeout: 100ms, retryOn: "gateway-error"}"#,
            upstream: Some(Behaviour::Slow(Duration::from_secs(30))),
            status: 504,
            flags: "UT,URX",
            hits: 2,
        },
    ];
    for case in cases {
        let upstream = match case.upstream {
            Some(behaviour) => Some(Upstream::start(behaviour).await),
            None => None,
        };
        let endpoint = upstream.as_ref().map_or_else(refusing_address, |u| u.addr);
        let route = route_to("a", case.retries);
        let gateway = Gateway::start(|port| config(port, &route, &[("a", &[endpoint])], "")).await;
        let answer = gateway.get("/").await;
        assert_eq!(answer.status, case.status, "{}: {answer:?}", case.name);
        assert_eq!(
            gateway.requests(case.status, case.flags),
            1,
            "{}",
            case.name
        );
        let hits = upstream.as_ref().map_or(0, Upstream::hits);
        assert_eq!(hits, case.hits, "{}", case.name);
    }
}

#[tokio::test]
async fn a_retry_goes_to_another_endpoint_and_its_answer_stands() {
    let failing = Upstream::start(Behaviour::Status(503)).await;
    let healthy = Upstream::start(Behaviour::Status(200)).await;
    let route = route_to("a", r#"retries: {attempts: 1, retryOn: "5xx"}"#);
    let endpoints = [failing.addr, healthy.addr];
    let dr = ejecting("a");
    let gateway = Gateway::start(|port| config(port, &route, &[("a", &endpoints)], &dr)).await;
    for _ in 0..4 {
        let answer = gateway.get("/").await;
        assert_eq!(answer.status, 200, "{answer:?}");
        assert_eq!(answer.body, "upstream");
    }
    // The failing endpoint was tried once at most, then ejected; every answer was the
    // healthy one's, retried or not, and none is flagged.
    assert!(failing.hits() <= 1, "{}", failing.hits());
    assert_eq!(gateway.requests(200, "-"), 4);
}

#[tokio::test]
async fn the_route_timeout_answers_504_ut() {
    let slow = Upstream::start(Behaviour::Slow(Duration::from_secs(30))).await;
    let route = route_to("a", "timeout: 200ms, retries: {attempts: 0}");
    let gateway = Gateway::start(|port| config(port, &route, &[("a", &[slow.addr])], "")).await;
    let answer = gateway.get("/").await;
    assert_eq!(answer.status, 504);
    assert_eq!(answer.body, "upstream request timeout");
    assert_eq!(
        answer.headers.get(header::SERVER).map(|v| v.as_bytes()),
        Some(&b"istio-envoy"[..])
    );
    assert_eq!(gateway.requests(504, "UT"), 1);
}

#[tokio::test]
async fn the_route_timeout_bounds_the_retries_too() {
    let slow = Upstream::start(Behaviour::Slow(Duration::from_secs(30))).await;
    let route = route_to(
        "a",
        r#"timeout: 500ms, retries: {attempts: 5, perTryTimeout: 100ms, retryOn: "gateway-error"}"#,
    );
    let gateway = Gateway::start(|port| config(port, &route, &[("a", &[slow.addr])], "")).await;
    let answer = gateway.get("/").await;
    assert_eq!(answer.status, 504);
    // Tried and retried, the route's clock ran out first: the request was retried.
    assert_eq!(gateway.requests(504, "UT,URX"), 1);
    assert!(slow.hits() >= 2, "{}", slow.hits());
}

#[tokio::test]
async fn unrouted_and_unhealthy_requests_are_answered_locally() {
    let gateway = Gateway::start(|port| config(port, &route_to("a", ""), &[("a", &[])], "")).await;
    let answer = gateway.get("/").await;
    assert_eq!(answer.status, 503);
    assert_eq!(answer.body, "no healthy upstream");
    assert_eq!(gateway.requests(503, "UH"), 1);

    let answer = gateway.client().await.get_from("other.example", "/").await;
    assert_eq!(answer.status, 404);
    assert!(answer.body.is_empty());
    assert_eq!(gateway.requests(404, "NR"), 1);
}

#[tokio::test]
async fn an_ejected_endpoint_stays_ejected_across_a_reload() {
    let failing = Upstream::start(Behaviour::Status(503)).await;
    let healthy = Upstream::start(Behaviour::Status(200)).await;
    let endpoints = [failing.addr, healthy.addr];
    let dr = ejecting("a");
    let with_route = |path_prefix: &'static str| {
        let route = route_to("a", "retries: {attempts: 0}");
        let other = format!(
            "{{match: [{{uri: {{prefix: {path_prefix}}}}}], {}",
            &route[1..]
        );
        let dr = dr.clone();
        move |port| {
            config(
                port,
                &format!("{other}, {route}"),
                &[("a", &endpoints)],
                &dr,
            )
        }
    };
    let gateway = Gateway::start(with_route("/one")).await;
    // Round robin reaches the failing endpoint within two requests; its 503 ejects it.
    for _ in 0..2 {
        gateway.get("/").await;
    }
    assert_eq!(failing.hits(), 1);
    // An unrelated change (another route's prefix): the cluster and its endpoints stay,
    // so does the ejection.
    gateway.reload(with_route("/two"));
    for _ in 0..6 {
        let answer = gateway.get("/").await;
        assert_eq!(answer.status, 200, "{answer:?}");
    }
    assert_eq!(
        failing.hits(),
        1,
        "the ejected endpoint got traffic after the reload"
    );
}

#[tokio::test]
async fn a_kept_alive_connection_follows_reloads() {
    let first = Upstream::start(Behaviour::Status(200)).await;
    let second = Upstream::start(Behaviour::Status(200)).await;
    let route = route_to("a", "");
    let gateway = Gateway::start(|port| config(port, &route, &[("a", &[first.addr])], "")).await;
    let mut client = gateway.client().await;
    assert_eq!(client.get("/").await.status, 200);
    assert_eq!(first.hits(), 1);

    // An endpoint update: the next request on the same connection goes to the new one.
    gateway.reload(|port| config(port, &route, &[("a", &[second.addr])], ""));
    assert_eq!(client.get("/").await.status, 200);
    assert_eq!((first.hits(), second.hits()), (1, 1));

    // A route change: the next request on the same connection meets the new routes.
    let elsewhere = format!("{{match: [{{uri: {{prefix: /only}}}}], {}", &route[1..]);
    gateway.reload(|port| config(port, &elsewhere, &[("a", &[second.addr])], ""));
    assert_eq!(client.get("/").await.status, 404);
    assert_eq!(client.get("/only").await.status, 200);
    assert_eq!(second.hits(), 2);
}
