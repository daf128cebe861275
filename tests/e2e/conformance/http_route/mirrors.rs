//! HTTPRoute RequestMirror cases: one mirror, several, and a share of requests
//! mirrored. The suite reads the mirror backends' logs for the request's path; ours ask
//! the demo upstreams what they received (`/__requests`), which lists the path with its
//! query, so each request carries a unique `requestID` as the suite's do.

use std::{
    net::SocketAddr,
    sync::atomic::{AtomicUsize, Ordering},
    thread,
    time::{Duration, Instant},
};

use gateway_tests::{curl, http1::KeepAliveClient};

use super::{Case, route_with_rules};
use crate::conformance::INFRA;

/// The suite's header changes beside a mirror, what it sends and what the primary
/// backend must see.
const MODIFIER: &str = "{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: X-Header-Set, value: set-overwrites-values}], add: [{name: X-Header-Add, value: header-val-1}, {name: X-Header-Add-Append, value: header-val-2}], remove: [X-Header-Remove]}}";
const SENT: &[&str] = &[
    "X-Header-Remove: remove-val",
    "X-Header-Add-Append: append-val-1",
];
const SEEN: &[(&str, &str)] = &[
    ("x-header-add", "header-val-1"),
    ("x-header-add-append", "append-val-1,header-val-2"),
    ("x-header-set", "set-overwrites-values"),
];

/// A RequestMirror filter to `infra-backend-{to}`, with `share` (`percent: 20`, …) if any.
fn mirror(to: &str, share: &str) -> String {
    let share = if share.is_empty() {
        String::new()
    } else {
        format!(", {share}")
    };
    format!(
        "{{type: RequestMirror, requestMirror: {{backendRef: {{name: infra-backend-{to}, namespace: {INFRA}, port: 8080}}{share}}}}}"
    )
}

/// A rule on PathPrefix `prefix` with `filters` to infra-backend-v1.
fn mirrored_rule(prefix: &str, filters: &[String]) -> String {
    format!(
        "  - matches: [{{path: {{type: PathPrefix, value: {prefix}}}}}]\n    filters: [{}]\n    backendRefs: [{{name: infra-backend-v1, port: 8080, namespace: {INFRA}}}]\n",
        filters.join(", ")
    )
}

/// `path` with a query no other request of this process carries.
fn unique(path: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{path}?requestID={}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// How many requests for exactly `path_and_query` the demo upstream at `addr` received.
fn received(addr: SocketAddr, path_and_query: &str) -> anyhow::Result<usize> {
    let answer = curl(None, &[&format!("http://{addr}/__requests")])?;
    let seen: serde_json::Value = serde_json::from_str(&answer.body)?;
    Ok(seen.as_array().map_or(0, |list| {
        list.iter().filter(|r| r["path"] == path_and_query).count()
    }))
}

/// Waits (mirrors are sent on the side, not awaited) until the upstream at `addr` has
/// received `path_and_query`; false after five seconds.
fn mirrored_to(addr: SocketAddr, path_and_query: &str) -> anyhow::Result<bool> {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if received(addr, path_and_query)? > 0 {
            return Ok(true);
        }
        thread::sleep(Duration::from_millis(50));
    }
    Ok(false)
}

/// The suite's request: `path` (made unique) answered by infra-backend-v1, with the
/// header changes checked when `sent` is not empty; returns the path sent.
fn primary(case: &Case, path: &str, sent: &[&str]) -> anyhow::Result<String> {
    let path = unique(path);
    let answer = case.request("example.com", "GET", &path, sent)?;
    assert_eq!(answer.status, 200, "{path}: {answer:?}");
    let json = answer.json()?;
    assert_eq!(json["upstream"], "infra-backend-v1", "{path}");
    assert_eq!(json["path"], path, "{path}");
    if !sent.is_empty() {
        for (name, value) in SEEN {
            let got = json["headers"][name].as_str().map(|v| v.replace(' ', ""));
            assert_eq!(got.as_deref(), Some(*value), "{path}: {name}");
        }
        assert!(json["headers"]["x-header-remove"].is_null(), "{path}");
    }
    Ok(path)
}

/// HTTPRouteRequestMirror: `/mirror` reaches infra-backend-v1 and a copy reaches
/// infra-backend-v2; also with header changes beside the mirror.
#[test]
fn http_route_request_mirror() -> anyhow::Result<()> {
    let rules = mirrored_rule("/mirror", &[mirror("v2", "")])
        + &mirrored_rule(
            "/mirror-and-modify-headers",
            &[MODIFIER.to_owned(), mirror("v2", "")],
        );
    let case = Case::start(
        "conf-request-mirror",
        &route_with_rules("request-mirror", &rules),
    )?;
    let v2 = case.backend_addr(2);
    for (path, sent) in [("/mirror", &[][..]), ("/mirror-and-modify-headers", SENT)] {
        let sent_path = primary(&case, path, sent)?;
        assert!(mirrored_to(v2, &sent_path)?, "{sent_path} not mirrored");
    }
    Ok(())
}

/// HTTPRouteRequestMultipleMirrors: two RequestMirror filters, a copy to each of
/// infra-backend-v2 and -v3; also with header changes beside them.
#[test]
fn http_route_request_multiple_mirrors() -> anyhow::Result<()> {
    let both = [mirror("v2", ""), mirror("v3", "")];
    let rules = mirrored_rule("/multi-mirror", &both)
        + &mirrored_rule(
            "/multi-mirror-and-modify-request-headers",
            &[MODIFIER.to_owned(), both[0].clone(), both[1].clone()],
        );
    let case = Case::start(
        "conf-multiple-mirrors",
        &route_with_rules("request-multiple-mirrors", &rules),
    )?;
    for (path, sent) in [
        ("/multi-mirror", &[][..]),
        ("/multi-mirror-and-modify-request-headers", SENT),
    ] {
        let sent_path = primary(&case, path, sent)?;
        for version in [2, 3] {
            assert!(
                mirrored_to(case.backend_addr(version), &sent_path)?,
                "{sent_path} not mirrored to v{version}"
            );
        }
    }
    Ok(())
}

/// The suite's distribution check: this many requests, the mirrored count within three
/// standard deviations of the share asked for.
const TOTAL: usize = 500;
const TOLERANCE_STD_DEVS: f64 = 3.0;
const DISTRIBUTION_CHECKS: usize = 5;

/// Sends 500 requests for one unique `path` on a kept connection, each answered by
/// infra-backend-v1, and returns how many reached the mirror at `mirror`.
fn mirrored_of_500(case: &Case, mirror: SocketAddr, path: &str) -> anyhow::Result<usize> {
    // One path for all 500, as the suite's: the mirror counts requests for it.
    let path = unique(path);
    let mut client =
        KeepAliveClient::connect(SocketAddr::from(([127, 0, 0, 1], case.port)), "example.com")?;
    for _ in 0..TOTAL {
        let answer = client.get(&path)?;
        assert_eq!(answer.status, 200, "{path}: {answer:?}");
        assert_eq!(answer.json()?["upstream"], "infra-backend-v1", "{path}");
    }
    // Mirrors finish on their own time: wait until the count settles.
    let mut mirrored = received(mirror, &path)?;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        thread::sleep(Duration::from_millis(200));
        let now = received(mirror, &path)?;
        if now == mirrored || Instant::now() > deadline {
            return Ok(now);
        }
        mirrored = now;
    }
}

/// HTTPRouteRequestPercentageMirror: `percent: 20`, `fraction: 25/50` and `percent: 35`
/// (with header changes) mirror that share of 500 requests to infra-backend-v2, each
/// request still answered by infra-backend-v1.
#[test]
fn http_route_request_percentage_mirror() -> anyhow::Result<()> {
    let rules = mirrored_rule("/percent-mirror", &[mirror("v2", "percent: 20")])
        + &mirrored_rule(
            "/percent-mirror-fraction",
            &[mirror("v2", "fraction: {numerator: 25, denominator: 50}")],
        )
        + &mirrored_rule(
            "/percent-mirror-and-modify-headers",
            &[MODIFIER.to_owned(), mirror("v2", "percent: 35")],
        );
    let case = Case::start(
        "conf-percentage-mirror",
        &route_with_rules("request-percentage-mirror", &rules),
    )?;
    let v2 = case.backend_addr(2);
    for (path, percent, sent) in [
        ("/percent-mirror", 20.0, &[][..]),
        ("/percent-mirror-fraction", 50.0, &[][..]),
        ("/percent-mirror-and-modify-headers", 35.0, SENT),
    ] {
        primary(&case, path, sent)?;
        let p = percent / 100.0;
        let expected = TOTAL as f64 * p;
        let margin = TOLERANCE_STD_DEVS * (TOTAL as f64 * p * (1.0 - p)).sqrt();
        // As the suite: up to five rounds of 500, the first within tolerance passes
        // (a fair share falls outside three deviations once in 370 rounds).
        let mut rounds = Vec::new();
        for _ in 0..DISTRIBUTION_CHECKS {
            let mirrored = mirrored_of_500(&case, v2, path)?;
            rounds.push(mirrored);
            if (expected - margin..=expected + margin).contains(&(mirrored as f64)) {
                break;
            }
        }
        let last = rounds.last().copied().unwrap_or_default() as f64;
        assert!(
            (expected - margin..=expected + margin).contains(&last),
            "{path}: {rounds:?} of {TOTAL} mirrored, {percent}% asked (±{margin:.0})"
        );
    }
    Ok(())
}
