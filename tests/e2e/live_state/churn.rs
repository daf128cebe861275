//! A minute of EndpointSlice churn under load from long-lived and short-lived clients.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::ensure;
use gateway_tests::{
    CurlResponse, Upstream, h2c::H2cClient, http1::KeepAliveClient, skip_unless_root,
};

use super::{HOST, Listener, Live, virtual_service};

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
