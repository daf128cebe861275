//! The request path in process: a snapshot compiled from YAML and wrapped in a `Live`,
//! `serve` on a port-0 listener of the test's runtime, upstreams that are small servers
//! on port 0 in the same test, and a hyper client. Retries, timeouts, response flags and
//! the rules for state across reloads, tested without the binary or root.
//!
//! Upstream connection pools are per thread (`upstream.rs`); every `#[tokio::test]` runs
//! on a runtime of its own thread, so tests share no pools.

mod harness;

use std::time::Duration;

use http::header;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use harness::{Behaviour, Gateway, HOST, Upstream, config, ejecting, refusing_address, route_to};

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

#[tokio::test]
async fn an_http2_connection_follows_an_endpoint_update() {
    let first = Upstream::start(Behaviour::Status(200)).await;
    let second = Upstream::start(Behaviour::Status(200)).await;
    let route = route_to("a", "");
    let gateway = Gateway::start(|port| config(port, &route, &[("a", &[first.addr])], "")).await;
    let mut client = gateway.h2_client().await;
    assert_eq!(client.get("/").await.status, 200);
    gateway.reload(|port| config(port, &route, &[("a", &[second.addr])], ""));
    for _ in 0..3 {
        assert_eq!(client.get("/").await.status, 200);
    }
    assert_eq!((first.hits(), second.hits()), (1, 3));
}

#[tokio::test]
async fn pooled_connections_to_a_removed_endpoint_are_closed() {
    let first = Upstream::start(Behaviour::Status(200)).await;
    let second = Upstream::start(Behaviour::Status(200)).await;
    let route = route_to("a", "");
    let gateway = Gateway::start(|port| config(port, &route, &[("a", &[first.addr])], "")).await;
    assert_eq!(gateway.get("/").await.status, 200);
    // The connection to `first` went back to the pool, kept alive.
    assert_eq!(first.open_connections(), 1);

    gateway.reload(|port| config(port, &route, &[("a", &[second.addr])], ""));
    let deadline = tokio::time::Instant::now() + super::upstream::SWEEP_INTERVAL * 3;
    while first.open_connections() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        first.open_connections(),
        0,
        "the pooled connection to the removed endpoint stayed open"
    );
    assert_eq!(gateway.get("/").await.status, 200);
    assert_eq!(
        second.open_connections(),
        1,
        "the kept endpoint's pool was closed"
    );
}

/// The gateway's sockets to `upstream` that the upstream has closed and the gateway not
/// yet (CLOSE_WAIT in /proc/net/tcp; this test process is the gateway).
fn half_closed_to(upstream: std::net::SocketAddr) -> usize {
    let port = format!(":{:04X}", upstream.port());
    std::fs::read_to_string("/proc/self/net/tcp")
        .expect("/proc/self/net/tcp")
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.get(2).is_some_and(|remote| remote.ends_with(&port))
                && fields.get(3) == Some(&"08")
        })
        .count()
}

/// An upstream that closes a kept-alive connection while it sits in the pool: the
/// gateway closes its side within the pool sweep, not only at the next checkout (hyper's
/// connection task noticed at once; the codec's pooled connections have no task), and the
/// next request opens a new connection and is answered.
#[tokio::test]
async fn a_pooled_connection_the_upstream_closed_is_closed_by_the_sweep() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let upstream = listener.local_addr().expect("address");
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut head = [0u8; 4096];
            if matches!(stream.read(&mut head).await, Ok(n) if n > 0) {
                // Kept alive as far as the gateway knows, then closed once it is pooled.
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    });
    let route = route_to("a", "");
    let gateway = Gateway::start(|port| config(port, &route, &[("a", &[upstream])], "")).await;
    assert_eq!(gateway.get("/").await.status, 200);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let deadline = tokio::time::Instant::now() + super::upstream::SWEEP_INTERVAL * 2;
    while half_closed_to(upstream) > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        half_closed_to(upstream),
        0,
        "the pooled connection the upstream closed stayed open"
    );
    assert_eq!(gateway.get("/").await.status, 200);
}

#[tokio::test]
async fn fault_aborts_and_delays_are_flagged() {
    let upstream = Upstream::start(Behaviour::Status(200)).await;
    let aborted = route_to(
        "a",
        "fault: {abort: {httpStatus: 418, percentage: {value: 100}}}",
    );
    let delayed = format!(
        "{{match: [{{uri: {{prefix: /delayed}}}}], {}",
        &route_to(
            "a",
            "fault: {delay: {fixedDelay: 1ms, percentage: {value: 100}}, abort: {httpStatus: 503, percentage: {value: 100}}}",
        )[1..]
    );
    let routes = format!("{delayed}, {aborted}");
    let gateway =
        Gateway::start(|port| config(port, &routes, &[("a", &[upstream.addr])], "")).await;
    let answer = gateway.get("/").await;
    assert_eq!(answer.status, 418);
    assert_eq!(answer.body, "fault filter abort");
    assert_eq!(gateway.requests(418, "FI"), 1);
    let answer = gateway.get("/delayed").await;
    assert_eq!(answer.status, 503);
    assert_eq!(gateway.requests(503, "DI,FI"), 1);
    assert_eq!(upstream.hits(), 0);
}

/// What a connection reads until the gateway closes it (at most 10 s).
async fn read_until_closed(stream: &mut TcpStream) -> String {
    let mut read = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut read)).await;
    assert!(
        closed.is_ok(),
        "not closed: {}",
        String::from_utf8_lossy(&read)
    );
    String::from_utf8_lossy(&read).into_owned()
}

/// The listener stops (SIGTERM, or a reload that removes its port): a request in flight
/// is answered, with `Connection: close`, and its connection closed after the answer; a
/// kept-alive connection waiting for its next request is closed; new connections are not
/// accepted.
#[tokio::test]
async fn the_drain_answers_busy_connections_with_close_and_closes_idle_ones() {
    let slow = Upstream::start(Behaviour::Slow(Duration::from_millis(300))).await;
    let route = route_to("a", "");
    let gateway = Gateway::start(|port| config(port, &route, &[("a", &[slow.addr])], "")).await;
    let request = format!("GET / HTTP/1.1\r\nHost: {HOST}\r\n\r\n");

    // Kept alive after one answer, then idle.
    let mut idle = TcpStream::connect(gateway.addr()).await.expect("connect");
    idle.write_all(request.as_bytes()).await.expect("write");
    let mut first = [0u8; 12];
    idle.read_exact(&mut first).await.expect("first answer");
    assert_eq!(&first, b"HTTP/1.1 200");

    let mut busy = TcpStream::connect(gateway.addr()).await.expect("connect");
    busy.write_all(request.as_bytes()).await.expect("write");
    while slow.hits() < 2 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    gateway.stop();

    let answer = read_until_closed(&mut busy).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("\r\nconnection: close\r\n"),
        "{answer}"
    );
    let rest = read_until_closed(&mut idle).await;
    assert!(!rest.contains("HTTP/1.1"), "a second answer: {rest}");
    assert!(
        TcpStream::connect(gateway.addr()).await.is_err(),
        "still accepting"
    );
}
