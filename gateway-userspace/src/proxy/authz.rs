//! Enforcing AuthorizationPolicy (`authz.rs` decides): the client address behind trusted
//! proxies, and each decision counted, and logged when audited or denied.

use std::net::IpAddr;

use http::HeaderMap;
use tracing::{debug, info};

use super::{context::ProxyContext, upstream_head::X_FORWARDED_FOR};
use crate::authz::{Attributes, Engine};

/// The client's address for `remoteIpBlocks` and `remote.ip`: with `hops` trusted proxies
/// in front, the `hops`-th x-forwarded-for entry from the right (as Envoy reads it with
/// `xff_num_trusted_hops`, before appending the peer); the peer itself when `hops` is 0
/// or that entry is missing or not an address.
pub(super) fn remote_address(peer: IpAddr, headers: &HeaderMap, hops: usize) -> IpAddr {
    if hops == 0 {
        return peer;
    }
    let entries: Vec<&str> = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    entries
        .len()
        .checked_sub(hops)
        .and_then(|index| entries.get(index))
        .and_then(|entry| entry.parse().ok())
        .unwrap_or(peer)
}

/// Evaluates, counts and logs; whether the request or connection may go on.
pub(super) fn allowed(ctx: &ProxyContext, engine: &Engine, attributes: &Attributes<'_>) -> bool {
    if engine.is_empty() {
        return true;
    }
    let verdict = engine.evaluate(attributes);
    ctx.metrics.authz_decisions.record(&verdict);
    if let Some(policy) = verdict.audited {
        info!(
            policy,
            peer = %attributes.peer,
            remote = %attributes.remote,
            path = attributes.http.map(|h| h.path),
            allowed = verdict.allowed,
            "authorization audit"
        );
    }
    if !verdict.allowed {
        debug!(
            policy = verdict.policy,
            action = verdict.decided_by.action_label(),
            peer = %attributes.peer,
            "denied by authorization policy"
        );
    }
    verdict.allowed
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    #[test]
    fn remote_address_counts_trusted_hops_from_the_right() {
        let peer: IpAddr = "10.0.0.9".parse().expect("ip");
        let mut headers = HeaderMap::new();
        headers.append(
            &X_FORWARDED_FOR,
            HeaderValue::from_static("203.0.113.1, 198.51.100.2"),
        );
        headers.append(&X_FORWARDED_FOR, HeaderValue::from_static("192.0.2.3"));
        let cases = [
            (0, "10.0.0.9"),
            (1, "192.0.2.3"),
            (2, "198.51.100.2"),
            (3, "203.0.113.1"),
            (4, "10.0.0.9"),
        ];
        for (hops, expected) in cases {
            assert_eq!(
                remote_address(peer, &headers, hops).to_string(),
                expected,
                "{hops} hops"
            );
        }
        let junk =
            HeaderMap::from_iter([(X_FORWARDED_FOR.clone(), HeaderValue::from_static("unknown"))]);
        assert_eq!(remote_address(peer, &junk, 1), peer);
    }
}
