//! Long-lived connections across an EndpointSlice move and a route removal.

use std::{
    net::SocketAddr,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use gateway_tests::{
    Upstream, endpoint_slices,
    grpc::{GrpcServer, GrpcSession},
    h2c::H2cClient,
    http1::KeepAliveClient,
};
use serde_json::json;

use super::{HOST, Listener, Live, SERVICE, virtual_service};

/// How long an open connection may take to reach an endpoint after a reload named it.
const MOVE_PATIENCE: Duration = Duration::from_secs(10);
/// Requests checked once the connection has moved: none may fail or go elsewhere.
const REQUESTS_AFTER_MOVE: usize = 30;

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
    // Both connections are asked before judging, so a failure names both.
    let (on_h1, on_h2) = (h1.get("/removed")?, h2.get("/removed")?);
    ensure!(
        on_h1.status == 404 && on_h2.status == 404,
        "the removed route still answered on connections opened before the reload: \
         HTTP/1.1 {} from `{}`, HTTP/2 {} from `{}`",
        on_h1.status,
        on_h1.answered_by(),
        on_h2.status,
        on_h2.answered_by()
    );
    ensure!(h1.get("/kept")?.status == 200 && h2.get("/kept")?.status == 200);
    Ok(())
}
