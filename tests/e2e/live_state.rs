//! Live state (issue 12): every request on a connection that stays open sees the current
//! endpoints and routes, and what the gateway learnt about its endpoints (outlier
//! ejections) outlives reloads that do not touch them. Long-lived clients of each kind
//! (HTTP/1.1 keep-alive, HTTP/2, gRPC) stay connected while the configuration files
//! change under them, as EndpointSlices change during a rollout.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::PathBuf,
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use gateway_tests::{
    CurlResponse, Gateway, TempDir, Upstream, endpoint_slices, free_port,
    grpc::{GrpcServer, GrpcSession},
    h2c::H2cClient,
    http1::KeepAliveClient,
    service, skip_unless_root,
    status_upstream::StatusUpstream,
    write_atomically,
};
use serde_json::json;

const HOST: &str = "live.example.com";
const SERVICE: &str = "backend";
const SERVICE_PORT: u16 = 8000;
/// How long an open connection may take to reach an endpoint after a reload named it.
const MOVE_PATIENCE: Duration = Duration::from_secs(10);
/// Requests checked once the connection has moved: none may fail or go elsewhere.
const REQUESTS_AFTER_MOVE: usize = 30;

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

/// The backend's EndpointSlices move from the `old` upstream to `new`, then `old` stops
/// (its handle is dropped), as in a rollout. `ask` sends one request on the long-lived connection and names who
/// answered (an error: the connection itself failed); `ask_fresh` does the same on a new
/// connection. Within `MOVE_PATIENCE` the open connection must reach `new`, and from
/// then on every request must.
fn follows_the_move(
    live: &Live,
    old: impl Sized,
    new: SocketAddr,
    mut ask: impl FnMut() -> anyhow::Result<String>,
    mut ask_fresh: impl FnMut() -> anyhow::Result<String>,
) -> anyhow::Result<()> {
    let first = ask()?;
    ensure!(first == "old", "before the move: {first}");
    live.change(
        "endpoints.yaml",
        &endpoint_slices(SERVICE, live.listener.port_name(), &[new]),
    )?;
    drop(old);
    let fresh = ask_fresh()?;
    ensure!(
        fresh == "new",
        "a connection opened after the reload got {fresh}\n{}",
        live.gateway.stderr()
    );

    let deadline = Instant::now() + MOVE_PATIENCE;
    let mut answers = Vec::new();
    loop {
        let answer = ask().context("the open connection failed after the move")?;
        if answer == "new" {
            break;
        }
        answers.push(answer);
        if Instant::now() > deadline {
            let last = answers.last().cloned().unwrap_or_default();
            bail!(
                "{MOVE_PATIENCE:?} after the EndpointSlice moved the service to `new` (and `old` \
                 stopped), the connection opened before still got no answer from `new` in {} \
                 requests; the last: {last}",
                answers.len()
            );
        }
        thread::sleep(Duration::from_millis(50));
    }
    for i in 0..REQUESTS_AFTER_MOVE {
        let answer = ask().with_context(|| format!("request {i} after the move"))?;
        ensure!(answer == "new", "request {i} after the move got {answer}");
    }
    Ok(())
}

#[test]
fn a_keep_alive_connection_follows_an_endpoint_slice_change() -> anyhow::Result<()> {
    let old = Upstream::start(None, "127.0.0.1:0", "old")?;
    let new = Upstream::start(None, "127.0.0.1:0", "new")?;
    let routes = virtual_service("live", HOST, &["/"]);
    let live = Live::start("live-h1", Listener::Http, &routes, &[old.addr], "")?;
    // The client never reconnects: an answer on it is an answer on the first connection.
    let mut client = KeepAliveClient::connect(live.addr, HOST)?;
    follows_the_move(
        &live,
        old,
        new.addr,
        || Ok(client.get("/headers")?.answered_by()),
        || Ok(live.fresh_get("/headers")?.answered_by()),
    )
}

#[test]
fn an_http2_connection_follows_an_endpoint_slice_change() -> anyhow::Result<()> {
    let old = Upstream::start(None, "127.0.0.1:0", "old")?;
    let new = Upstream::start(None, "127.0.0.1:0", "new")?;
    let routes = virtual_service("live", HOST, &["/"]);
    let live = Live::start("live-h2", Listener::Http, &routes, &[old.addr], "")?;
    let mut client = H2cClient::connect(live.addr, HOST)?;
    follows_the_move(
        &live,
        old,
        new.addr,
        || Ok(client.get("/headers")?.answered_by()),
        || {
            Ok(H2cClient::connect(live.addr, HOST)?
                .get("/headers")?
                .answered_by())
        },
    )
}

#[test]
fn a_grpc_channel_follows_an_endpoint_slice_change() -> anyhow::Result<()> {
    let old = GrpcServer::start("old")?;
    let new = GrpcServer::start("new")?;
    let routes = virtual_service("live", HOST, &["/"]);
    let live = Live::start("live-grpc", Listener::Grpc, &routes, &[old.addr], "")?;
    let target = live.addr.to_string();
    let name = |session: &mut GrpcSession| -> anyhow::Result<String> {
        let outcome =
            session.call(&json!({"method": "/gatewayd.test.Echo/Name", "messages": ["who"]}))?;
        Ok(match outcome["code"].as_str() {
            Some("OK") => outcome["responses"][0]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            _ => format!("{} {}", outcome["code"], outcome["details"]),
        })
    };
    let mut session = GrpcSession::open(&target, HOST)?;
    follows_the_move(
        &live,
        old,
        new.addr,
        || name(&mut session),
        || name(&mut GrpcSession::open(&target, HOST)?),
    )
}

#[test]
fn a_route_removed_by_a_reload_answers_404_on_open_connections() -> anyhow::Result<()> {
    let upstream = Upstream::start(None, "127.0.0.1:0", "backend")?;
    let both = virtual_service("live", HOST, &["/kept", "/removed"]);
    let live = Live::start("live-route", Listener::Http, &both, &[upstream.addr], "")?;
    let mut h1 = KeepAliveClient::connect(live.addr, HOST)?;
    let mut h2 = H2cClient::connect(live.addr, HOST)?;
    ensure!(
        h1.get("/removed")?.status == 200,
        "served before the reload"
    );
    ensure!(
        h2.get("/removed")?.status == 200,
        "served before the reload"
    );

    live.change("routes.yaml", &virtual_service("live", HOST, &["/kept"]))?;
    let fresh = live.fresh_get("/removed")?;
    ensure!(
        fresh.status == 404,
        "new connection after the reload: {fresh:?}"
    );
    let on_h1 = h1.get("/removed")?;
    ensure!(
        on_h1.status == 404,
        "the removed route still answered {} on the HTTP/1.1 connection opened before the reload",
        on_h1.answered_by()
    );
    let on_h2 = h2.get("/removed")?;
    ensure!(
        on_h2.status == 404,
        "the removed route still answered {} on the HTTP/2 connection opened before the reload",
        on_h2.answered_by()
    );
    ensure!(h1.get("/kept")?.status == 200 && h2.get("/kept")?.status == 200);
    Ok(())
}

/// Probes on fresh connections, so each meets whatever the gateway holds now.
const PROBES: usize = 20;

#[test]
fn an_outlier_ejection_survives_an_unrelated_reload() -> anyhow::Result<()> {
    let failing = StatusUpstream::start("failing", 500)?;
    let healthy = Upstream::start(None, "127.0.0.1:0", "healthy")?;
    let policy = format!(
        r#"apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: {SERVICE}, namespace: default}}
spec:
  host: {SERVICE}
  trafficPolicy:
    loadBalancer: {{simple: ROUND_ROBIN}}
    outlierDetection: {{consecutive5xxErrors: 1, interval: 1s, baseEjectionTime: 300s, maxEjectionPercent: 100}}
---
"#
    );
    let routes = virtual_service("live", HOST, &["/"]);
    let endpoints = [healthy.addr, failing.addr];
    let live = Live::start("live-outlier", Listener::Http, &routes, &endpoints, &policy)?;

    // Round robin reaches the failing endpoint within two requests; its one 500 ejects it.
    for _ in 0..2 {
        live.fresh_get("/headers")?;
    }
    ensure!(
        failing.requests() == 1,
        "failing endpoint saw {}",
        failing.requests()
    );
    for i in 0..PROBES {
        let answer = live.fresh_get("/headers")?.answered_by();
        ensure!(
            answer == "healthy",
            "request {i} after the ejection got {answer}"
        );
    }

    live.change(
        "other.yaml",
        &virtual_service("other", "other.example.com", &["/"]),
    )?;
    let answers: Vec<String> = (0..PROBES)
        .map(|_| Ok(live.fresh_get("/headers")?.answered_by()))
        .collect::<anyhow::Result<_>>()?;
    let reached = failing.requests() - 1;
    ensure!(
        reached == 0,
        "the endpoint ejected for 300 s got {reached} of {PROBES} requests after a \
         reload that only added another host's VirtualService (its ejection was forgotten): \
         {answers:?}"
    );
    Ok(())
}

/// How long a probe waits for an answer before it counts as sent to the busy endpoint.
const BUSY_PATIENCE: Duration = Duration::from_secs(2);

#[test]
fn least_request_counts_survive_an_unrelated_reload() -> anyhow::Result<()> {
    let busy = StatusUpstream::holding("busy")?;
    let idle = Upstream::start(None, "127.0.0.1:0", "idle")?;
    let policy = format!(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: {SERVICE}, namespace: default}}\nspec:\n  host: {SERVICE}\n  trafficPolicy: {{loadBalancer: {{simple: LEAST_REQUEST}}}}\n---\n"
    );
    let routes = virtual_service("live", HOST, &["/"]);
    let endpoints = [idle.addr, busy.addr];
    let live = Live::start("live-least", Listener::Http, &routes, &endpoints, &policy)?;

    // Requests left in flight until one sits on `busy` (a tie between two idle endpoints
    // goes either way; those that reach `idle` are answered at once).
    let mut in_flight = Vec::new();
    while busy.requests() == 0 {
        ensure!(in_flight.len() < 20, "20 requests, none reached `busy`");
        let mut client = KeepAliveClient::connect(live.addr, HOST)?;
        client.send_get("/headers")?;
        in_flight.push(client);
        thread::sleep(Duration::from_millis(200));
    }
    // Requests in flight on `busy`, none on `idle`: least request picks `idle`.
    let held = busy.requests();
    let probe = || -> anyhow::Result<String> {
        Ok(
            KeepAliveClient::connect_waiting(live.addr, HOST, BUSY_PATIENCE)?
                .get("/headers")?
                .answered_by(),
        )
    };
    for i in 0..PROBES {
        let answer = probe().with_context(|| format!("probe {i} before the reload"))?;
        ensure!(answer == "idle", "probe {i} before the reload got {answer}");
    }

    live.change(
        "other.yaml",
        &virtual_service("other", "other.example.com", &["/"]),
    )?;
    for i in 0..PROBES {
        let answer = probe();
        ensure!(
            busy.requests() == held,
            "probe {i} after a reload that only added another host's VirtualService went to \
             the endpoint with a request in flight rather than the idle one (least-request \
             counts were reset): {}",
            answer.unwrap_or_else(|err| format!("{err:#}"))
        );
    }
    Ok(())
}

/// Churn: the EndpointSlices change this often, for this long, under load.
const CHURN_INTERVAL: Duration = Duration::from_millis(20);
const CHURN_FOR: Duration = Duration::from_secs(60);

/// What one load client saw: answers by upstream, and its failures (the first few kept).
#[derive(Debug, Default)]
struct Tally {
    by_upstream: BTreeMap<String, usize>,
    failed: usize,
    first_failures: Vec<String>,
}

/// Sends requests through `get` until `stop` and tallies them; `get` reports a broken
/// connection as an error (a failure; the client then reconnects).
fn load(stop: &AtomicBool, mut get: impl FnMut() -> anyhow::Result<CurlResponse>) -> Tally {
    let mut tally = Tally::default();
    while !stop.load(Ordering::Relaxed) {
        match get() {
            Ok(answer) if answer.status == 200 => {
                *tally.by_upstream.entry(answer.answered_by()).or_default() += 1;
            }
            failed => {
                tally.failed += 1;
                if tally.first_failures.len() < 5 {
                    tally.first_failures.push(match failed {
                        Ok(answer) => answer.answered_by(),
                        Err(err) => format!("{err:#}"),
                    });
                }
            }
        }
    }
    tally
}

/// A client that keeps its connection, and opens a new one only when it broke.
fn reconnecting<C>(
    connect: impl Fn() -> anyhow::Result<C>,
    get: impl Fn(&mut C) -> anyhow::Result<CurlResponse>,
) -> impl FnMut() -> anyhow::Result<CurlResponse> {
    let mut client: Option<C> = None;
    move || {
        let mut current = match client.take() {
            Some(current) => current,
            None => connect()?,
        };
        let answer = get(&mut current)?;
        client = Some(current);
        Ok(answer)
    }
}

/// A minute of EndpointSlice writes, 50 a second, toggling a second live endpoint in and
/// out beside a stable one, under load from a keep-alive HTTP/1.1 client, an HTTP/2
/// client and a client opening a connection per request: no request fails, and every
/// client, kept connections included, reaches the toggled endpoint while it is listed.
#[test]
fn endpoint_churn_under_load_fails_no_request_and_kept_connections_follow_it() -> anyhow::Result<()>
{
    if skip_unless_root("a minute of EndpointSlice churn, run by `cargo xtask test`") {
        return Ok(());
    }
    let stable = Upstream::start(None, "127.0.0.1:0", "stable")?;
    let toggled = Upstream::start(None, "127.0.0.1:0", "toggled")?;
    let routes = virtual_service("live", HOST, &["/"]);
    let live = Live::start("live-churn", Listener::Http, &routes, &[stable.addr], "")?;
    let reloads_before = live.gateway.reloads("success")?;
    let (addr, stop) = (live.addr, AtomicBool::new(false));
    let (writes, tallies) = thread::scope(|scope| -> anyhow::Result<_> {
        let stop = &stop;
        let clients = [
            (
                "HTTP/1.1 keep-alive",
                scope.spawn(move || {
                    let connect = || KeepAliveClient::connect(addr, HOST);
                    load(stop, reconnecting(connect, |c| c.get("/headers")))
                }),
            ),
            (
                "HTTP/2",
                scope.spawn(move || {
                    let connect = || H2cClient::connect(addr, HOST);
                    load(stop, reconnecting(connect, |c| c.get("/headers")))
                }),
            ),
            (
                "HTTP/1.1 connection per request",
                scope.spawn(move || {
                    load(stop, || {
                        KeepAliveClient::connect(addr, HOST)?.get("/headers")
                    })
                }),
            ),
        ];
        let writes = churn(&live, stable.addr, toggled.addr);
        stop.store(true, Ordering::Relaxed);
        let tallies = clients
            .into_iter()
            .map(|(label, client)| match client.join() {
                Ok(tally) => Ok((label, tally)),
                Err(_) => Err(anyhow::anyhow!("the {label} client panicked")),
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok((writes?, tallies))
    })?;
    let reloads = live.gateway.reloads("success")? - reloads_before;
    eprintln!("endpoint churn: {writes} EndpointSlice writes, {reloads} reloads, {tallies:#?}");
    for (label, tally) in &tallies {
        ensure!(
            tally.failed == 0,
            "{label}: {} requests failed during the churn; the first: {:#?}\n{}",
            tally.failed,
            tally.first_failures,
            live.gateway.stderr()
        );
    }
    ensure!(reloads > 0.0, "the churn reloaded nothing");
    for (label, tally) in &tallies {
        ensure!(
            tally.by_upstream.contains_key("toggled") && tally.by_upstream.contains_key("stable"),
            "{label} did not reach both endpoints during {writes} EndpointSlice writes and \
             {reloads} reloads: {:?}",
            tally.by_upstream
        );
    }
    Ok(())
}

/// Rewrites the EndpointSlices every `CHURN_INTERVAL` for `CHURN_FOR`, `toggled` listed
/// beside `stable` every other time; the number of writes.
fn churn(live: &Live, stable: SocketAddr, toggled: SocketAddr) -> anyhow::Result<u32> {
    let started = Instant::now();
    let mut writes: u32 = 0;
    while started.elapsed() < CHURN_FOR {
        let both = [stable, toggled];
        live.write_endpoints(if writes.is_multiple_of(2) {
            &both
        } else {
            &both[..1]
        })?;
        writes += 1;
        let next = started + CHURN_INTERVAL * writes;
        thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    Ok(writes)
}
