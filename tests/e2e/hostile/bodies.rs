//! Hostile clients: request bodies. Stalled uploads over HTTP/1.1 and HTTP/2 reach the
//! upstream at once and hold little memory (the gateway's RSS, from /proc, is bounded per
//! upload); retries replay small bodies and forward large ones once; a body that stops
//! arriving is closed after the stream idle timeout (408 SI); a DestinationRule's
//! connectionPool limits what one client can open upstream (503 UO); mirrors to a black
//! hole are dropped, not queued.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use bytes::Bytes;
use gateway_tests::{Gateway, TempDir, curl, free_port, service_with_endpoint};
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;

const HOST: &str = "bodies.example";
/// How long a test waits for something to happen before calling it missing.
const PATIENCE: Duration = Duration::from_secs(20);
/// What each stalled upload declares.
const DECLARED: usize = 1 << 20;

/// What the test upstream has seen.
#[derive(Default)]
struct Seen {
    connections: AtomicUsize,
    /// Requests whose head arrived (their bodies may still be coming).
    started: AtomicUsize,
    body_bytes: AtomicU64,
    /// (path, body length) of every request whose body ended.
    completed: Mutex<Vec<(String, usize)>>,
}

impl Seen {
    fn completed(&self, path: &str) -> Vec<usize> {
        self.completed
            .lock()
            .map(|c| {
                c.iter()
                    .filter(|(p, _)| p == path)
                    .map(|(_, n)| *n)
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// An HTTP/1.1 upstream that reads every body to its end and then answers `got N`;
/// paths under `/fail-once/` are answered 503 the first time each is seen, those under
/// `/slow-503/` always, after a second.
struct TestUpstream {
    addr: SocketAddr,
    seen: Arc<Seen>,
}

impl TestUpstream {
    fn start() -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let seen = Arc::new(Seen::default());
        let state = seen.clone();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::spawn(move || {
            runtime.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                    return;
                };
                while let Ok((stream, _)) = listener.accept().await {
                    state.connections.fetch_add(1, Ordering::SeqCst);
                    let state = state.clone();
                    tokio::spawn(async move {
                        let service = service_fn(move |request| answer(state.clone(), request));
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            });
        });
        Ok(TestUpstream { addr, seen })
    }
}

async fn answer(
    seen: Arc<Seen>,
    request: Request<Incoming>,
) -> anyhow::Result<Response<Full<Bytes>>> {
    seen.started.fetch_add(1, Ordering::SeqCst);
    let path = request.uri().path().to_owned();
    let mut body = request.into_body();
    let mut length = 0;
    while let Some(frame) = body.frame().await {
        if let Some(data) = frame?.data_ref() {
            length += data.len();
            seen.body_bytes
                .fetch_add(data.len() as u64, Ordering::SeqCst);
        }
    }
    let first = {
        let mut completed = seen
            .completed
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?;
        let first = !completed.iter().any(|(p, _)| *p == path);
        completed.push((path.clone(), length));
        first
    };
    if path.starts_with("/slow-503/") {
        tokio::time::sleep(Duration::from_secs(1)).await;
        return Ok(Response::builder()
            .status(503)
            .body(Full::new(Bytes::from_static(b"unavailable")))?);
    }
    let status = if path.starts_with("/fail-once/") && first {
        503
    } else {
        200
    };
    Ok(Response::builder()
        .status(status)
        .body(Full::new(Bytes::from(format!("got {length}"))))?)
}

/// Accepts connections and never reads or answers: a mirror target gone silent.
fn black_hole() -> anyhow::Result<(SocketAddr, Arc<AtomicUsize>)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            count.fetch_add(1, Ordering::SeqCst);
            held.push(stream);
        }
    });
    Ok((addr, accepted))
}

/// A gateway for `bodies.example` with `routes` (VirtualService `http:` entries) and
/// `extra` resources.
fn start(label: &str, routes: &str, extra: &str, flags: &[&str]) -> anyhow::Result<Setup> {
    let dir = TempDir::new(label)?;
    let bind_port = free_port();
    let config = format!(
        r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: gw, namespace: default}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 80, name: http, protocol: HTTP}}
    hosts: ["{HOST}"]
---
apiVersion: v1
kind: Service
metadata: {{name: istio-ingressgateway, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  ports: [{{name: http2, port: 80, targetPort: {bind_port}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: bodies, namespace: default}}
spec:
  hosts: ["{HOST}"]
  gateways: [gw]
  http:
{routes}
---
{extra}"#
    );
    dir.write("config.yaml", &config)?;
    let mut args = vec!["--ebpf", "off"];
    args.extend_from_slice(flags);
    let gateway = Gateway::start(dir.path(), &args, None, &dir)?;
    Ok(Setup {
        gateway,
        addr: SocketAddr::from(([127, 0, 0, 1], bind_port)),
        _dir: dir,
    })
}

struct Setup {
    gateway: Gateway,
    addr: SocketAddr,
    _dir: TempDir,
}

impl Setup {
    fn rss_kib(&self) -> anyhow::Result<u64> {
        rss_kib(self.gateway.process.child.id())
    }

    fn counter(&self, sample: &str) -> anyhow::Result<f64> {
        Ok(self.gateway.metric(sample)?.unwrap_or(0.0))
    }
}

/// The process's resident set (VmRSS) in KiB.
fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS")
}

/// Polls `done` until it holds or PATIENCE runs out; says whether it held.
fn wait_for(mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + PATIENCE;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    done()
}

fn upload_head(path: &str, length: usize) -> String {
    format!("POST {path} HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: {length}\r\n\r\n")
}

/// Opens `count` uploads that each declare 1 MiB, send `sent` bytes and stop; returns
/// them once the upstream has seen them all start and received their bytes, with the
/// gateway's RSS growth in KiB.
fn stall_uploads(
    setup: &Setup,
    upstream: &TestUpstream,
    count: usize,
    sent: usize,
) -> anyhow::Result<(Vec<TcpStream>, u64)> {
    let before = setup.rss_kib()?;
    let (started_before, bytes_before) = (
        upstream.seen.started.load(Ordering::SeqCst),
        upstream.seen.body_bytes.load(Ordering::SeqCst),
    );
    let chunk = vec![b'x'; 16 * 1024];
    let mut clients = Vec::new();
    for _ in 0..count {
        let mut client = TcpStream::connect(setup.addr)?;
        client.set_write_timeout(Some(PATIENCE))?;
        client.write_all(upload_head("/upload", DECLARED).as_bytes())?;
        let mut left = sent;
        while left > 0 {
            let n = left.min(chunk.len());
            client.write_all(&chunk[..n])?;
            left -= n;
        }
        clients.push(client);
    }
    let started =
        wait_for(|| upstream.seen.started.load(Ordering::SeqCst) >= started_before + count);
    let forwarded = wait_for(|| {
        upstream.seen.body_bytes.load(Ordering::SeqCst) >= bytes_before + (count * sent) as u64
    });
    let after = setup.rss_kib()?;
    let growth = after.saturating_sub(before);
    eprintln!(
        "stalled uploads: RSS {before} KiB -> {after} KiB with {count} uploads of {sent} bytes held: {} KiB per upload",
        growth / count as u64
    );
    anyhow::ensure!(
        started,
        "the upstream saw {} of {count} requests start: bodies are gathered before forwarding",
        upstream.seen.started.load(Ordering::SeqCst) - started_before
    );
    anyhow::ensure!(forwarded, "the bodies' bytes did not reach the upstream");
    Ok((clients, growth))
}

/// Stalled uploads: clients declare 1 MiB, send part of it and stop. The upstream sees
/// every request start at once (the body is streamed, not gathered first), and the
/// gateway holds buffers and at most the replay copy per upload, not the body. A few
/// KiB sent: within the 64 KiB goal; half the body sent in one burst: bounded by the
/// buffers the burst grew, whatever the body's size (today's code held the body).
#[test]
fn stalled_uploads_reach_the_upstream_at_once_and_hold_little_memory() -> anyhow::Result<()> {
    const UPLOADS: usize = 100;
    let upstream = TestUpstream::start()?;
    let routes = "  - route: [{destination: {host: sink}}]";
    let setup = start(
        "stalled-uploads",
        routes,
        &service_with_endpoint("sink", 80, upstream.addr),
        &[],
    )?;
    // One whole upload first, so what the first request allocates is in the baseline.
    let warm = curl(
        None,
        &[
            "-H",
            &format!("Host: {HOST}"),
            "-H",
            "Expect:",
            "--data-binary",
            "warm",
            &format!("http://{}/warm", setup.addr),
        ],
    )?;
    assert_eq!((warm.status, warm.body.as_str()), (200, "got 4"));

    let (few, growth) = stall_uploads(&setup, &upstream, UPLOADS, 4 * 1024)?;
    let bound = UPLOADS as u64 * 64 + 4 * 1024;
    assert!(
        growth < bound,
        "RSS grew {growth} KiB for {UPLOADS} uploads stalled after 4 KiB (bound {bound} KiB)"
    );
    // Measured 50 KiB each in a debug build (28 after 4 KiB; docs/benchmarks.md has the
    // release figures): a stalled body holds no read buffer, whatever burst came before.
    // The bound is not the goal: it catches a return to buffers that grow with the burst
    // (179-192 KiB each while frames were slices of the codec's read buffer, 195 before
    // hyper's body reads were capped at 16 KiB), not a few KiB of futures more.
    let (half, growth) = stall_uploads(&setup, &upstream, UPLOADS, DECLARED / 2)?;
    let bound = UPLOADS as u64 * 112 + 4 * 1024;
    assert!(
        growth < bound,
        "RSS grew {growth} KiB for {UPLOADS} uploads stalled after 512 KiB (bound {bound} KiB)"
    );
    // Nothing was answered: the requests are still open, the gateway still serves.
    let served = curl(
        None,
        &[
            "-H",
            &format!("Host: {HOST}"),
            &format!("http://{}/after", setup.addr),
        ],
    )?;
    assert_eq!(served.status, 200);
    drop((few, half));
    Ok(())
}

/// Retries (on 503, which Istio's default policy no longer names) replay a body that
/// fits the replay copy; a larger one is forwarded once and its first answer passed on
/// (Envoy gives up retrying, not the request, and counts `retry_or_shadow_abandoned`).
#[test]
fn retries_replay_small_bodies_and_forward_large_ones_once() -> anyhow::Result<()> {
    let upstream = TestUpstream::start()?;
    let routes = "  - route: [{destination: {host: flaky}}]\n    retries: {attempts: 2, retryOn: \"connect-failure,refused-stream,503\"}";
    let setup = start(
        "replay",
        routes,
        &service_with_endpoint("flaky", 80, upstream.addr),
        &["--max-replay-body-bytes", "16384"],
    )?;
    let dir = TempDir::new("replay-bodies")?;
    let small = dir.write("small", &"s".repeat(10 * 1024))?;
    let large = dir.write("large", &"l".repeat(100 * 1024))?;
    let post = |path: &str, file: &std::path::Path| {
        curl(
            None,
            &[
                "-H",
                &format!("Host: {HOST}"),
                "-H",
                "Expect:",
                "--data-binary",
                &format!("@{}", file.display()),
                &format!("http://{}{path}", setup.addr),
            ],
        )
    };

    let retried = post("/fail-once/small", &small)?;
    assert_eq!(
        (retried.status, retried.body.as_str()),
        (200, "got 10240"),
        "{retried:?}"
    );
    assert_eq!(upstream.seen.completed("/fail-once/small"), [10240, 10240]);

    let once = post("/fail-once/large", &large)?;
    assert_eq!(once.status, 503, "{once:?}");
    assert_eq!(upstream.seen.completed("/fail-once/large"), [102400]);
    assert!(setup.counter("gateway_retry_or_shadow_abandoned_total")? >= 1.0);
    Ok(())
}

/// A body that stops arriving is closed after `--stream-idle-timeout`: 408 before any
/// answer (flag SI, Envoy's "stream timeout"), on HTTP/1.1 and on an HTTP/2 stream, and
/// the upstream's request is aborted rather than left waiting.
#[test]
fn a_stalled_body_is_closed_after_the_stream_idle_timeout() -> anyhow::Result<()> {
    let upstream = TestUpstream::start()?;
    let routes = "  - route: [{destination: {host: sink}}]";
    let setup = start(
        "stream-idle",
        routes,
        &service_with_endpoint("sink", 80, upstream.addr),
        &["--stream-idle-timeout", "1s"],
    )?;
    let mut client = TcpStream::connect(setup.addr)?;
    client.set_read_timeout(Some(PATIENCE))?;
    client.write_all(upload_head("/stalled", 1000).as_bytes())?;
    client.write_all(b"only ten..")?;
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match client.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => anyhow::bail!("no answer within {PATIENCE:?}: {e}; got {answer:?}"),
        }
    }
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.ends_with("stream timeout"), "{answer}");
    assert_eq!(upstream.seen.started.load(Ordering::SeqCst), 1);
    // The upstream's request ended with the client's (aborted, never completed).
    assert!(upstream.seen.completed("/stalled").is_empty());

    let status = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async {
            let (mut client, _streams) = h2_client(setup.addr).await?;
            let request = http::Request::post(format!("http://{HOST}/stalled-h2"))
                .header("content-length", "1000")
                .body(())?;
            let (response, mut stream) = client.send_request(request, false)?;
            stream.send_data(Bytes::from_static(b"only ten.."), false)?;
            let response = tokio::time::timeout(PATIENCE, response).await??;
            anyhow::Ok(response.status())
        })?;
    assert_eq!(status, 408);
    let log = setup.gateway.access_log();
    assert!(
        log.contains("\"POST /stalled HTTP/1.1\" 408 SI "),
        "no 408 SI line in\n{log}"
    );
    assert!(
        log.contains("\"POST /stalled-h2 HTTP/2\" 408 SI "),
        "no HTTP/2 408 SI line in\n{log}"
    );
    Ok(())
}

/// An HTTP/2 (prior knowledge) client connection; its driver runs on the current runtime.
async fn h2_client(
    addr: SocketAddr,
) -> anyhow::Result<(h2::client::SendRequest<Bytes>, tokio::task::JoinHandle<()>)> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let (client, connection) = h2::client::handshake(tcp).await?;
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok((client, driver))
}

/// Opens `count` streams on one HTTP/2 connection, each declaring `declared` bytes and
/// sending `sent`; returns the streams (kept open) and the statuses answered so far.
async fn open_stalled_streams(
    client: &mut h2::client::SendRequest<Bytes>,
    path: &str,
    count: usize,
    declared: usize,
    sent: usize,
) -> anyhow::Result<(Vec<h2::SendStream<Bytes>>, Arc<Mutex<Vec<u16>>>)> {
    let statuses = Arc::new(Mutex::new(Vec::new()));
    let mut streams = Vec::new();
    let data = Bytes::from(vec![b'x'; sent]);
    for _ in 0..count {
        let mut ready = client.clone().ready().await?;
        let request = http::Request::post(format!("http://{HOST}{path}"))
            .header("content-length", declared.to_string())
            .body(())?;
        let whole = sent >= declared;
        let (response, mut stream) = ready.send_request(request, whole && sent == 0)?;
        if sent > 0 {
            stream.send_data(data.clone(), whole)?;
        }
        streams.push(stream);
        let statuses = statuses.clone();
        tokio::spawn(async move {
            if let Ok(response) = response.await
                && let Ok(mut statuses) = statuses.lock()
            {
                statuses.push(response.status().as_u16());
            }
        });
    }
    Ok((streams, statuses))
}

/// What one HTTP/2 connection with stalled streams costs: RSS before and after, streams
/// the upstream saw start, body bytes it received.
struct StalledStreams {
    before: u64,
    after: u64,
    started: usize,
    forwarded: u64,
}

impl StalledStreams {
    fn growth_per_stream(&self, streams: usize) -> u64 {
        self.after.saturating_sub(self.before) / streams as u64
    }
}

/// Opens `streams` streams on one HTTP/2 connection, each declaring 1 MiB and sending
/// `sent` bytes before it stalls, and measures once the upstream has every byte.
fn stall_h2_streams(
    setup: &Setup,
    upstream: &TestUpstream,
    streams: usize,
    sent: usize,
) -> anyhow::Result<StalledStreams> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let (mut client, _driver) = h2_client(setup.addr).await?;
        // A first stream completes, so the baseline includes a warm connection.
        let (_warm, statuses) = open_stalled_streams(&mut client, "/warm", 1, 0, 0).await?;
        let warmed = async {
            while statuses.lock().map(|s| s.is_empty()).unwrap_or(true) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(PATIENCE, warmed).await?;
        let before = setup.rss_kib()?;
        let (_streams, _statuses) =
            open_stalled_streams(&mut client, "/upload", streams, DECLARED, sent).await?;
        let deadline = tokio::time::Instant::now() + PATIENCE;
        let target = (streams * sent) as u64;
        while upstream.seen.body_bytes.load(Ordering::SeqCst) < target
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let after = setup.rss_kib()?;
        let stalled = StalledStreams {
            before,
            after,
            started: upstream
                .seen
                .started
                .load(Ordering::SeqCst)
                .saturating_sub(1),
            forwarded: upstream.seen.body_bytes.load(Ordering::SeqCst),
        };
        eprintln!(
            "HTTP/2 streams: RSS {before} KiB -> {after} KiB with {streams} streams holding {sent} bytes each: {} KiB per stream",
            stalled.growth_per_stream(streams)
        );
        anyhow::Ok(stalled)
    })
}

/// One HTTP/2 connection with 1000 streams, each declaring 1 MiB and sending 64 KiB
/// (more than the replay copy) before it stalls: every request reaches the upstream and
/// the gateway's memory grows by a bounded amount per stream.
#[test]
fn http2_streams_with_unfinished_bodies_hold_bounded_memory() -> anyhow::Result<()> {
    const STREAMS: usize = 1000;
    const SENT: usize = 64 * 1024;
    let upstream = TestUpstream::start()?;
    let routes = "  - route: [{destination: {host: sink}}]";
    let setup = start(
        "h2-streams",
        routes,
        &service_with_endpoint("sink", 80, upstream.addr),
        &[],
    )?;
    let stalled = stall_h2_streams(&setup, &upstream, STREAMS, SENT)?;
    assert_eq!(
        stalled.started, STREAMS,
        "every stream's request reaches the upstream"
    );
    assert!(
        stalled.forwarded >= (STREAMS * SENT) as u64,
        "forwarded {}",
        stalled.forwarded
    );
    // Measured 32 KiB per stream (its upstream connection and buffers; docs/benchmarks.md).
    let bound = STREAMS as u64 * 40 + 8 * 1024;
    assert!(
        stalled.after.saturating_sub(stalled.before) < bound,
        "RSS grew {} KiB for {STREAMS} stalled streams (bound {bound} KiB)",
        stalled.after.saturating_sub(stalled.before)
    );
    Ok(())
}

/// The replay copies of one connection's requests share a budget
/// (`--max-replay-bytes-per-connection`, 128 KiB): 1000 streams that each send 24 KiB,
/// within the per-request copy, then stall do not make the gateway keep 1000 copies;
/// the streams past the budget give up retries and mirrors (counted), not their requests.
#[test]
fn http2_streams_share_one_replay_budget_per_connection() -> anyhow::Result<()> {
    const STREAMS: usize = 1000;
    const SENT: usize = 24 * 1024;
    let upstream = TestUpstream::start()?;
    let routes = "  - route: [{destination: {host: sink}}]";
    let setup = start(
        "h2-replay-budget",
        routes,
        &service_with_endpoint("sink", 80, upstream.addr),
        &[],
    )?;
    let stalled = stall_h2_streams(&setup, &upstream, STREAMS, SENT)?;
    assert_eq!(
        stalled.started, STREAMS,
        "every stream's request reaches the upstream"
    );
    assert!(
        stalled.forwarded >= (STREAMS * SENT) as u64,
        "forwarded {}",
        stalled.forwarded
    );
    // 128 KiB holds five 24 KiB copies; every other stream gave replay up.
    let abandoned = setup.counter("gateway_retry_or_shadow_abandoned_total")?;
    assert!(
        abandoned >= (STREAMS - 5) as f64,
        "{abandoned} of {STREAMS} streams gave up their replay copy"
    );
    // As many bytes as the streams that stall past the copy (the test above): before the
    // budget, each stream also kept its 24 KiB copy and the HTTP/2 buffers it pinned
    // (64 KiB per stream in all).
    let bound = STREAMS as u64 * 40 + 8 * 1024;
    assert!(
        stalled.after.saturating_sub(stalled.before) < bound,
        "RSS grew {} KiB for {STREAMS} stalled streams (bound {bound} KiB)",
        stalled.after.saturating_sub(stalled.before)
    );
    Ok(())
}

/// A DestinationRule's connectionPool bounds what one client can open upstream: with
/// `maxConnections: 2` and `http1MaxPendingRequests: 1`, ten streams of one HTTP/2
/// connection get two upstream connections, one queued request and seven 503 UO; with
/// `http2MaxRequests: 3`, three in flight and seven 503 UO.
#[test]
fn connection_pool_overflow_is_answered_503_uo() -> anyhow::Result<()> {
    let by_connections = TestUpstream::start()?;
    let by_requests = TestUpstream::start()?;
    let one_each = TestUpstream::start()?;
    let short_idle = TestUpstream::start()?;
    let routes = r#"  - match: [{uri: {prefix: /connections}}]
    retries: {attempts: 0}
    route: [{destination: {host: narrow}}]
  - match: [{uri: {prefix: /requests}}]
    retries: {attempts: 0}
    route: [{destination: {host: few}}]
  - match: [{uri: {prefix: /once}}]
    route: [{destination: {host: once}}]
  - match: [{uri: {prefix: /idle}}]
    route: [{destination: {host: idle}}]"#;
    let extra = service_with_endpoint("narrow", 80, by_connections.addr)
        + &service_with_endpoint("few", 80, by_requests.addr)
        + &service_with_endpoint("once", 80, one_each.addr)
        + &service_with_endpoint("idle", 80, short_idle.addr)
        + r#"apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: narrow, namespace: default}
spec:
  host: narrow
  trafficPolicy:
    connectionPool:
      tcp: {maxConnections: 2}
      http: {http1MaxPendingRequests: 1}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: few, namespace: default}
spec:
  host: few
  trafficPolicy: {connectionPool: {http: {http2MaxRequests: 3}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: once, namespace: default}
spec:
  host: once
  trafficPolicy: {connectionPool: {http: {maxRequestsPerConnection: 1}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: idle, namespace: default}
spec:
  host: idle
  trafficPolicy: {connectionPool: {http: {idleTimeout: 300ms}}}
"#;
    // One worker: one pool, whichever client connection a request comes on.
    let setup = start("pool-overflow", routes, &extra, &["--worker-threads", "1"])?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    for (path, upstream, in_flight) in [
        ("/connections", &by_connections, 2),
        ("/requests", &by_requests, 3),
    ] {
        let statuses = runtime.block_on(async {
            let (mut client, _driver) = h2_client(setup.addr).await?;
            let (_streams, statuses) =
                open_stalled_streams(&mut client, path, 10, 1000, 10).await?;
            let deadline = tokio::time::Instant::now() + PATIENCE;
            while statuses.lock().map(|s| s.len()).unwrap_or(0) < 10 - in_flight - 1
                && tokio::time::Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            // Anything else that was going to be answered has been by now.
            tokio::time::sleep(Duration::from_millis(300)).await;
            let answered = statuses.lock().map(|s| s.clone()).unwrap_or_default();
            anyhow::Ok(answered)
        })?;
        let overflowed = statuses.iter().filter(|&&s| s == 503).count();
        let opened = upstream.seen.connections.load(Ordering::SeqCst);
        let started = upstream.seen.started.load(Ordering::SeqCst);
        eprintln!("{path}: answered {statuses:?}, {opened} connections, {started} requests");
        assert!(opened <= in_flight, "{path}: {opened} upstream connections");
        assert!(started <= in_flight, "{path}: {started} requests upstream");
        // Ten streams: those in flight, at most one queued, the rest refused.
        assert!(
            overflowed >= 10 - in_flight - 1 && statuses.len() == overflowed,
            "{path}: {statuses:?}"
        );
    }
    let log = setup.gateway.access_log();
    assert!(
        log.contains("\"POST /connections HTTP/2\" 503 UO "),
        "no 503 UO line in\n{log}"
    );
    assert!(log.contains("\"POST /requests HTTP/2\" 503 UO "), "{log}");

    // `maxRequestsPerConnection: 1`: three requests one after the other on one client
    // connection take three upstream connections instead of one kept alive.
    let url = format!("http://{}/once", setup.addr);
    let host = format!("Host: {HOST}");
    let sequential = curl(None, &["-H", &host, &url, &url, &url])?;
    assert_eq!(sequential.status, 200, "{sequential:?}");
    assert_eq!(one_each.seen.completed("/once").len(), 3);
    assert_eq!(one_each.seen.connections.load(Ordering::SeqCst), 3);

    // `idleTimeout: 300ms`: back-to-back requests share a pooled connection; one after
    // the connection sat idle longer than that gets a new one.
    let url = format!("http://{}/idle", setup.addr);
    for pause in [Duration::ZERO, Duration::ZERO, Duration::from_secs(1)] {
        std::thread::sleep(pause);
        assert_eq!(curl(None, &["-H", &host, &url])?.status, 200);
    }
    assert_eq!(short_idle.seen.connections.load(Ordering::SeqCst), 2);
    Ok(())
}

/// Mirrors to a black hole (accepts, never answers) are capped and timed: past the cap
/// they are dropped and counted, each times out after the route's timeout, the primary
/// is unaffected and memory stays bounded.
#[test]
fn mirrors_to_a_black_hole_are_dropped_not_queued() -> anyhow::Result<()> {
    const REQUESTS: usize = 600;
    let upstream = TestUpstream::start()?;
    let (hole, accepted) = black_hole()?;
    // The mirrors must outlive the whole run of requests for the cap to be reached: a
    // timeout well beyond how long 610 requests take on a loaded machine (a debug build
    // beside other builds took over 2 s).
    let routes = r#"  - timeout: 12s
    mirror: {host: hole}
    route: [{destination: {host: primary}}]"#;
    let extra = service_with_endpoint("primary", 80, upstream.addr)
        + &service_with_endpoint("hole", 80, hole);
    let setup = start("mirror-hole", routes, &extra, &[])?;
    let url = format!("http://{}/mirrored", setup.addr);
    let run = |count: usize| -> anyhow::Result<Vec<String>> {
        let mut args = vec![
            "-s".to_owned(),
            "-w".to_owned(),
            "%{http_code}\\n".to_owned(),
            "-H".to_owned(),
            format!("Host: {HOST}"),
        ];
        for _ in 0..count {
            args.extend(["-o".to_owned(), "/dev/null".to_owned(), url.clone()]);
        }
        let out = std::process::Command::new("curl").args(&args).output()?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect())
    };
    run(10)?;
    let before = setup.rss_kib()?;
    let codes = run(REQUESTS)?;
    let after = setup.rss_kib()?;
    assert_eq!(codes.len(), REQUESTS);
    assert!(codes.iter().all(|c| c == "200"), "{codes:?}");
    let dropped = setup.counter("gateway_mirror_requests_dropped_total{reason=\"overflow\"}")?;
    let held = accepted.load(Ordering::SeqCst);
    eprintln!(
        "mirrors: {held} connections to the black hole, {dropped} dropped, RSS {before} -> {after} KiB"
    );
    assert!(
        dropped >= (REQUESTS + 10 - 256) as f64,
        "{dropped} dropped of {REQUESTS}"
    );
    assert!(held <= 256, "{held} mirrors in flight");
    assert!(
        after.saturating_sub(before) < 32 * 1024,
        "RSS grew {} KiB",
        after.saturating_sub(before)
    );
    // They time out with the route (12 s), and mirroring resumes.
    let timed_out = wait_for(|| {
        setup
            .counter("gateway_mirror_requests_dropped_total{reason=\"timeout\"}")
            .is_ok_and(|n| n >= 256.0)
    });
    assert!(timed_out, "mirrors never timed out");
    run(5)?;
    assert!(
        wait_for(|| accepted.load(Ordering::SeqCst) > held),
        "no mirror after the timeouts"
    );
    Ok(())
}

/// At `maxConnections: 1` to an HTTP/2 (h2c) upstream, twenty streams that arrive at
/// once share the one connection: those that come while it is being set up wait for it
/// rather than overflow.
#[test]
fn http2_upstream_requests_wait_for_the_connection_being_set_up() -> anyhow::Result<()> {
    let upstream = gateway_tests::Upstream::start(None, "127.0.0.1:0", "h2up")?;
    let routes = "  - route: [{destination: {host: h2up}}]";
    let extra = format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: h2up, namespace: default}}
spec:
  ports: [{{name: http, port: 80, targetPort: {port}, appProtocol: kubernetes.io/h2c}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: h2up-1, namespace: default, labels: {{kubernetes.io/service-name: h2up}}}}
addressType: IPv4
ports: [{{name: http, port: {port}}}]
endpoints:
- addresses: ["127.0.0.1"]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: h2up, namespace: default}}
spec:
  host: h2up
  trafficPolicy: {{connectionPool: {{tcp: {{maxConnections: 1}}}}}}
"#,
        port = upstream.addr.port()
    );
    let setup = start("h2-upstream-pool", routes, &extra, &[])?;
    let statuses = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async {
            let (mut client, _driver) = h2_client(setup.addr).await?;
            let (_streams, statuses) =
                open_stalled_streams(&mut client, "/status/200", 20, 0, 0).await?;
            let deadline = tokio::time::Instant::now() + PATIENCE;
            while statuses.lock().map(|s| s.len()).unwrap_or(0) < 20
                && tokio::time::Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let answered = statuses.lock().map(|s| s.clone()).unwrap_or_default();
            anyhow::Ok(answered)
        })?;
    assert_eq!(statuses, [200; 20], "{}", setup.gateway.access_log());
    assert!(
        !setup.gateway.access_log().contains(" UO "),
        "{}",
        setup.gateway.access_log()
    );
    Ok(())
}

/// `maxRetries: 1`: of four requests failing at once, one is retried and the others'
/// first answers are passed on with flag UO (Envoy's retry overflow).
#[test]
fn retries_in_flight_are_bounded_by_max_retries() -> anyhow::Result<()> {
    let upstream = TestUpstream::start()?;
    let routes = r#"  - retries: {attempts: 2, retryOn: 5xx}
    route: [{destination: {host: failing}}]"#;
    let extra = service_with_endpoint("failing", 80, upstream.addr)
        + r#"apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: failing, namespace: default}
spec:
  host: failing
  trafficPolicy: {connectionPool: {http: {maxRetries: 1}}}
"#;
    let setup = start("max-retries", routes, &extra, &[])?;
    let url = format!("http://{}/slow-503/x", setup.addr);
    let host = format!("Host: {HOST}");
    let statuses: Vec<u16> = std::thread::scope(|scope| {
        let calls: Vec<_> = (0..4)
            .map(|_| scope.spawn(|| curl(None, &["-H", &host, &url]).map(|r| r.status)))
            .collect();
        calls
            .into_iter()
            .map(|c| c.join().unwrap_or_else(|_| Ok(0)))
            .collect::<anyhow::Result<_>>()
    })?;
    assert_eq!(statuses, [503; 4]);
    let log = setup.gateway.access_log();
    let overflowed = log.matches("\"GET /slow-503/x HTTP/1.1\" 503 UO ").count();
    assert!(overflowed >= 2, "{overflowed} retry overflows in\n{log}");
    // Without the limit, 4 requests x 3 tries.
    let tries = upstream.seen.started.load(Ordering::SeqCst);
    assert!(tries <= 4 + 2, "{tries} tries reached the upstream");
    Ok(())
}
