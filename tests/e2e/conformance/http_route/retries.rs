//! HTTPRoute retry cases beyond status codes: connection resets, and retries bounded by
//! `timeouts.backendRequest` and `timeouts.request`. The suite's backend simulates the
//! failures by query (`succeedAfter`, `responseCode`, `delayRetry`); ours is told the
//! same before each request (`StatusUpstream::fail_next_late`, `reset_next`).

use std::time::Duration;

use gateway_tests::{TempDir, curl, free_port, status_upstream::StatusUpstream};

use super::{route_with_rules, same_namespace_gateway};
use crate::conformance::{INFRA, backend, class_and_ports, serve};

/// gatewayd on port 80 with `rules` to `infra-backend-v3`, a backend that fails when
/// told to; returns what must stay alive and the bound port.
fn serve_v3(
    label: &str,
    name: &str,
    rules: &str,
) -> anyhow::Result<(TempDir, gateway_tests::Gateway, StatusUpstream, u16)> {
    let dir = TempDir::new(label)?;
    let v3 = StatusUpstream::start("infra-backend-v3", 200)?;
    let port = free_port();
    let config = class_and_ports(&[(80, port)])
        + &same_namespace_gateway()
        + &backend("infra-backend-v3", INFRA, 8080, v3.addr)
        + &route_with_rules(name, rules);
    let gateway = serve(&dir, &config)?;
    Ok((dir, gateway, v3, port))
}

/// HTTPRouteRetryConnectionError: `retry: {attempts: 3}` and no codes; a backend that
/// resets the connection twice then answers gives 200, one that resets four times
/// (more than the three retries) gives 500 or 503.
#[test]
fn http_route_retry_connection_error() -> anyhow::Result<()> {
    let (_dir, _gateway, v3, port) = serve_v3(
        "conf-retry-connection-error",
        "retries-connection-error",
        "  - matches: [{path: {type: PathPrefix, value: /retry/no-status-code-attempts-3}}]\n    retry: {attempts: 3}\n    backendRefs: [{name: infra-backend-v3, port: 8080}]\n",
    )?;
    let url = format!("http://127.0.0.1:{port}/retry/no-status-code-attempts-3");
    for (resets, want) in [(2, &[200][..]), (4, &[500, 503][..])] {
        v3.reset_next(resets);
        let before = v3.requests();
        let answer = curl(None, &[&url])?;
        assert!(
            want.contains(&answer.status),
            "{resets} resets first: {answer:?}"
        );
        // Each try reached the backend: the first and the three retries at most.
        let tries = v3.requests() - before;
        assert_eq!(tries, (resets + 1).min(4), "{resets} resets first");
    }
    Ok(())
}

/// HTTPRouteRetryWithTimeouts: retries end when `backendRequest` expires on each try
/// (`attempts: 2`: two late answers are outlived, three are not and give 504) and when
/// `request` expires over all of them (one 500 retried in time gives 200; four 500s
/// 100 ms apart outlast 400 ms and give 504).
#[test]
fn http_route_retry_with_timeouts() -> anyhow::Result<()> {
    let (_dir, _gateway, v3, port) = serve_v3(
        "conf-retry-with-timeouts",
        "retries-with-timeouts",
        "  - matches: [{path: {type: PathPrefix, value: /retry/backend-request-timeout-200ms}}]\n    retry: {attempts: 2}\n    timeouts: {backendRequest: 200ms}\n    backendRefs: [{name: infra-backend-v3, port: 8080}]\n  - matches: [{path: {type: PathPrefix, value: /retry/request-timeout-200ms}}]\n    retry: {codes: [500], attempts: 5}\n    timeouts: {backendRequest: 200ms, request: 400ms}\n    backendRefs: [{name: infra-backend-v3, port: 8080}]\n",
    )?;
    let ms = Duration::from_millis;
    for (path, failures, delay, want) in [
        ("/retry/backend-request-timeout-200ms", 2, ms(300), 200),
        ("/retry/backend-request-timeout-200ms", 3, ms(300), 504),
        ("/retry/request-timeout-200ms", 1, Duration::ZERO, 200),
        ("/retry/request-timeout-200ms", 4, ms(100), 504),
    ] {
        v3.fail_next_late(failures, 500, delay);
        let answer = curl(None, &[&format!("http://127.0.0.1:{port}{path}")])?;
        assert_eq!(
            answer.status, want,
            "{path}: {failures} × 500 after {delay:?} first: {answer:?}"
        );
        if want == 200 {
            assert_eq!(answer.answered_by(), "infra-backend-v3", "{path}");
        }
        // Let the late answers of abandoned tries drain before the next case counts.
        std::thread::sleep(ms(400));
    }
    Ok(())
}
