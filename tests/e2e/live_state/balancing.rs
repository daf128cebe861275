//! What the gateway learnt about its endpoints (an outlier ejection, requests in flight
//! for least-request balancing) outlives a reload that does not touch them.

use std::{thread, time::Duration};

use anyhow::{Context as _, ensure};
use gateway_tests::{Upstream, http1::KeepAliveClient, status_upstream::StatusUpstream};

use super::{HOST, Listener, Live, destination_rule, virtual_service};

/// Probes on fresh connections, so each meets whatever the gateway holds now.
const PROBES: usize = 20;

#[test]
fn an_outlier_ejection_survives_an_unrelated_reload() -> anyhow::Result<()> {
    let failing = StatusUpstream::start("failing", 500)?;
    let healthy = Upstream::start(None, "127.0.0.1:0", "healthy")?;
    let policy = destination_rule(
        "{loadBalancer: {simple: ROUND_ROBIN}, outlierDetection: {consecutive5xxErrors: 1, \
         interval: 1s, baseEjectionTime: 300s, maxEjectionPercent: 100}}",
    );
    let routes = virtual_service("live", HOST, &["/"]);
    let endpoints = [healthy.addr, failing.addr];
    let live = Live::start("live-outlier", Listener::Http, &routes, &endpoints, &policy)?;

    // Round robin soon reaches the failing endpoint; its first 500 ejects it.
    let mut sent = 0;
    while failing.requests() == 0 {
        ensure!(sent < PROBES, "{PROBES} requests, none reached `failing`");
        live.fresh_get("/headers")?;
        sent += 1;
    }
    let ejected_at = failing.requests();
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
    let reached = failing.requests() - ejected_at;
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
    let policy = destination_rule("{loadBalancer: {simple: LEAST_REQUEST}}");
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
