//! What the kept-fields paths are checked against, shared by the fuzz targets (`fields`)
//! and the tests of `request_fields` and `passed`: the maps the codec built from heads
//! before it kept their fields, the edits every answer gets, and the upstream head of a
//! plain route.

use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue, header};

use super::super::{passed::ResponseFields, request_fields::RequestFields, rules::MAX_HEADERS};
use crate::{
    proxy::{
        replay::ReplayBudget,
        upstream_head::{Downstream, RequestId, UpstreamHead, strip_hop_by_hop},
    },
    route_table::Route,
    snapshot::{Cluster, Forward, Rewrite, RouteAction, WeightedCluster},
};

/// The map the codec built for a request head: every field as httparse gave it, in
/// order. None if httparse does not take the whole of `head`; `Err` names a field the
/// map's types refuse.
pub(in crate::proxy) fn request_map(head: &[u8]) -> Option<Result<HeaderMap, String>> {
    let mut fields = vec![httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut fields);
    if !matches!(parsed.parse(head), Ok(httparse::Status::Complete(n)) if n == head.len()) {
        return None;
    }
    Some(mapped(parsed.headers.iter().map(|f| (f.name, f.value))))
}

/// The map the client built for a response head: every field but a Connection that
/// names nothing else and Keep-Alive, which a 101 keeps. None and `Err` as for
/// `request_map`.
pub(in crate::proxy) fn response_map(head: &[u8]) -> Option<Result<HeaderMap, String>> {
    let mut fields = vec![httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut fields);
    if !matches!(parsed.parse(head), Ok(httparse::Status::Complete(n)) if n == head.len()) {
        return None;
    }
    let switching = parsed.code == Some(101);
    let dropped = |name: &str, value: &[u8]| {
        !switching
            && (name.eq_ignore_ascii_case("keep-alive")
                || name.eq_ignore_ascii_case("connection") && !names_others(value))
    };
    Some(mapped(
        parsed
            .headers
            .iter()
            .filter(|f| !dropped(f.name, f.value))
            .map(|f| (f.name, f.value)),
    ))
}

/// Whether a Connection value names a field, not just `close` or `keep-alive`.
fn names_others(value: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .any(|t| {
            !t.is_empty()
                && !t.eq_ignore_ascii_case(b"close")
                && !t.eq_ignore_ascii_case(b"keep-alive")
        })
}

fn mapped<'h>(fields: impl Iterator<Item = (&'h str, &'h [u8])>) -> Result<HeaderMap, String> {
    let mut map = HeaderMap::new();
    for (name, value) in fields {
        let (Ok(name_), Ok(value_)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(value),
        ) else {
            return Err(format!("{name}: {value:?}"));
        };
        map.append(name_, value_);
    }
    Ok(map)
}

/// A map entry by entry, to compare.
pub(in crate::proxy) fn listed(map: &HeaderMap) -> Vec<(String, Vec<u8>)> {
    map.iter()
        .map(|(name, value)| (name.as_str().to_owned(), value.as_bytes().to_vec()))
        .collect()
}

/// The edits the proxy makes to every upstream answer's map, in its order: the service
/// time (`forward_action`), the hop-by-hop strip, `server` (`forward.rs`).
pub(in crate::proxy) fn edit_map(map: &mut HeaderMap) {
    map.insert(
        "x-envoy-upstream-service-time",
        HeaderValue::from_static("3"),
    );
    strip_hop_by_hop(map);
    map.insert(header::SERVER, HeaderValue::from_static("istio-envoy"));
}

/// The same edits made to passed fields, as the proxy makes them.
pub(in crate::proxy) fn edit_passed(fields: &mut ResponseFields<'_>) {
    fields.insert(
        HeaderName::from_static("x-envoy-upstream-service-time"),
        HeaderValue::from_static("3"),
    );
    let stripped = fields
        .passed
        .as_deref_mut()
        .is_some_and(|p| p.strip_hop_by_hop().is_ok());
    if !stripped {
        strip_hop_by_hop(fields.whole());
    }
    fields.insert(header::SERVER, HeaderValue::from_static("istio-envoy"));
}

/// How a plain route forwards, for `plain_route_head`.
#[derive(Clone, Copy, Default)]
pub(in crate::proxy) struct Setting<'a> {
    /// The client certificate the request came with (`x-forwarded-client-cert`).
    pub client_cert: Option<&'a str>,
    /// The route's authority rewrite.
    pub rewritten_authority: Option<&'a str>,
}

/// `UpstreamHead::new` for a plain route to one cluster, as `forward_action` calls it.
/// None if the request's authority is no header value.
pub(in crate::proxy) fn plain_route_head(
    parts: http::request::Parts,
    fields: Option<Box<RequestFields>>,
    setting: Setting<'_>,
    request_id: &RequestId,
) -> Option<UpstreamHead> {
    let cluster = Arc::new(Cluster::new(
        "up.default.svc.cluster.local".into(),
        "up".into(),
        "default".into(),
        80,
    ));
    let weighted = WeightedCluster::new(100, cluster);
    let mut forward = Forward::to(vec![weighted.clone()]);
    if let Some(authority) = setting.rewritten_authority {
        forward.rewrite = Some(Rewrite {
            path: None,
            authority: Some(authority.into()),
        });
    }
    let route = Route {
        name: "r".into(),
        matches: Vec::new(),
        action: RouteAction::Forward(Box::new(forward.clone())),
    };
    // The request's authority as the handler takes it: the target's, else Host.
    let authority = match parts.uri.authority() {
        Some(authority) => authority.as_str().to_owned(),
        None => {
            let host = parts.headers.get(header::HOST).cloned();
            let host = host.or_else(|| fields.as_ref().and_then(|f| f.get_value("host")));
            host.and_then(|h| h.to_str().ok().map(str::to_owned))
                .unwrap_or_default()
        }
    };
    let peer_ip = HeaderValue::from_static("10.0.0.7");
    let authority_value = HeaderValue::from_str(&authority).ok()?;
    let budget = ReplayBudget::new(1 << 20);
    let downstream = Downstream {
        peer: std::net::SocketAddr::from(([10, 0, 0, 7], 40000)),
        peer_ip: &peer_ip,
        scheme: "http",
        client_cert: setting.client_cert,
        authority: &authority,
        authority_value: &authority_value,
        request_id,
        replay_budget: &budget,
        upgrade_asked: false,
        started: std::time::Instant::now(),
    };
    let mut request = http::Request::from_parts(parts, ());
    UpstreamHead::new(
        &mut request,
        fields,
        &route,
        &forward,
        &weighted,
        &downstream,
        false,
    )
}
