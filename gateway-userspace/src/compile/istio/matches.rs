//! VirtualService `match` entries → compiled request matches, with Istio's reading of
//! who a match is for (`gateways`, `sourceLabels`, `sourceNamespace`, `port`) and of
//! references to Gateways and short hosts.

use std::collections::BTreeMap;

use crate::{
    config::resources::{HttpMatchRequest, StringMatch},
    route_table::{RequestMatch, StringMatcher},
};

/// What a match is compiled for: the listener port, the Gateways (`namespace/name`) of
/// ours on that port that bind the VirtualService, and this proxy's labels and namespace.
pub(super) struct MatchTarget<'t> {
    pub port: u16,
    pub gateways: &'t [String],
    pub labels: &'t BTreeMap<String, String>,
    pub namespace: &'t str,
}

/// Istio's `gateways` reference forms, resolved against the VirtualService's namespace:
/// `name`, `ns/name`, `./name`, and the legacy `name.ns` / `name.ns.svc.cluster.local`.
pub(crate) fn resolve_gateway_name<'r>(
    reference: &'r str,
    vs_namespace: &'r str,
) -> (&'r str, &'r str) {
    if let Some((namespace, name)) = reference.split_once('/') {
        let namespace = if namespace == "." {
            vs_namespace
        } else {
            namespace
        };
        return (namespace, name);
    }
    match reference.split_once('.') {
        None => (vs_namespace, reference),
        Some((name, rest)) => {
            let namespace = rest.split_once('.').map_or(rest, |(ns, _)| ns);
            (namespace, name)
        }
    }
}

/// A short VirtualService host (no dot) names a Service in the VirtualService's
/// namespace: Istio spells it in full (`web` → `web.ns.svc.cluster.local`) before it
/// meets a server's hosts. `*` and IP addresses stay as they are.
pub(crate) fn resolve_short_host(host: &str, vs_namespace: &str) -> String {
    if host == "*" || host.contains('.') || host.parse::<std::net::IpAddr>().is_ok() {
        return host.to_owned();
    }
    format!("{host}.{vs_namespace}.{}", crate::compile::CLUSTER_DOMAIN)
}

/// Does this match apply to the target at all? Istio drops, for a gateway, a match that
/// names only other gateways, asks for source labels the gateway's pods do not carry or
/// another source namespace, or names another port.
pub(super) fn applies(m: &HttpMatchRequest, vs_namespace: &str, target: &MatchTarget) -> bool {
    if m.port.is_some_and(|p| p != u32::from(target.port)) {
        return false;
    }
    if !m.gateways.is_empty() {
        return m.gateways.iter().filter(|g| *g != "mesh").any(|g| {
            let (ns, name) = resolve_gateway_name(g, vs_namespace);
            target.gateways.contains(&format!("{ns}/{name}"))
        });
    }
    m.source_labels
        .iter()
        .all(|(k, v)| target.labels.get(k) == Some(v))
        && m.source_namespace
            .as_deref()
            .is_none_or(|ns| ns == target.namespace)
}

/// A match that applies, compiled. The port is checked by `applies` and dropped here:
/// Istio builds routes per port, so a match on this port is no condition at all.
pub(super) fn compile_match(m: &HttpMatchRequest) -> Result<RequestMatch, (String, String)> {
    // An empty StringMatch on the URI, method, scheme or authority asks for nothing.
    let string = |field: &str,
                  s: &Option<StringMatch>,
                  ignore_case: bool|
     -> Result<Option<StringMatcher>, (String, String)> {
        s.as_ref()
            .filter(|s| !is_empty(s))
            .map(|s| compile_string_match(s, ignore_case).map_err(|e| (field.to_owned(), e)))
            .transpose()
    };
    let map = |field: &str,
               entries: &BTreeMap<String, StringMatch>|
     -> Result<Vec<(String, StringMatcher)>, (String, String)> {
        entries
            .iter()
            .map(|(name, s)| {
                let matcher = if is_presence(s) {
                    Ok(StringMatcher::Present)
                } else {
                    compile_string_match(s, false)
                };
                matcher
                    .map(|m| (name.to_ascii_lowercase(), m))
                    .map_err(|e| (format!("{field}.{name}"), e))
            })
            .collect()
    };
    Ok(RequestMatch {
        path: string("uri", &m.uri, m.ignore_uri_case)?,
        method: string("method", &m.method, false)?,
        scheme: string("scheme", &m.scheme, false)?,
        authority: string("authority", &m.authority, false)?,
        headers: map("headers", &m.headers)?,
        without_headers: map("withoutHeaders", &m.without_headers)?,
        query_params: map("queryParams", &m.query_params)?,
        port: None,
    })
}

fn is_empty(s: &StringMatch) -> bool {
    s.exact.is_none() && s.prefix.is_none() && s.regex.is_none()
}

/// Istio turns an empty StringMatch, and the regex `*` (not RE2, but users write it),
/// into a presence check.
fn is_presence(s: &StringMatch) -> bool {
    is_empty(s) || (s.exact.is_none() && s.prefix.is_none() && s.regex.as_deref() == Some("*"))
}

pub(super) fn compile_string_match(
    s: &StringMatch,
    ignore_case: bool,
) -> Result<StringMatcher, String> {
    match (&s.exact, &s.prefix, &s.regex) {
        (Some(exact), None, None) => Ok(StringMatcher::Exact {
            value: exact.clone(),
            ignore_case,
        }),
        (None, Some(prefix), None) => Ok(StringMatcher::Prefix {
            value: prefix.clone(),
            ignore_case,
        }),
        (None, None, Some(regex)) => {
            StringMatcher::regex(regex, ignore_case).map_err(|e| format!("invalid regex: {e}"))
        }
        _ => Err("expected exactly one of exact, prefix or regex".to_owned()),
    }
}
