//! Route lookup: host, then the first route whose matches accept the request — Istio's
//! first-match semantics. Pure and I/O-free: it reads only what the compiled snapshot
//! holds and what the request says, so it is table-tested without sockets.
//!
//! Generic over the action type so tests can route to plain labels.

use std::{collections::HashMap, sync::Arc};

use http::HeaderMap;
use regex::Regex;
use serde::{Serialize, Serializer, ser::SerializeMap};

/// A compiled route table for one listener.
#[derive(Clone, Debug, Serialize)]
pub struct RouteTable<A> {
    pub virtual_hosts: Vec<VirtualHost<A>>,
    #[serde(skip)]
    hosts: HostIndex,
    /// Some route matches on headers: routing reads the request's header map.
    #[serde(skip)]
    reads_headers: bool,
}

/// Routes for one host pattern (`example.com`, `*.example.com` or `*`).
#[derive(Clone, Debug, Serialize)]
pub struct VirtualHost<A> {
    pub host: String,
    /// Shared with the compile that made them, so that a recompile reuses the routes of
    /// hosts it did not change.
    pub routes: Arc<Vec<Route<A>>>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Route<A> {
    /// `VirtualService namespace/name` and the route's name or index, for logs and dumps.
    pub name: String,
    /// Any one match accepts the request; no matches accepts every request.
    pub matches: Vec<RequestMatch>,
    pub action: A,
}

/// All conditions must hold.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RequestMatch {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<StringMatcher>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<StringMatcher>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheme: Option<StringMatcher>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authority: Option<StringMatcher>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<(String, StringMatcher)>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub without_headers: Vec<(String, StringMatcher)>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub query_params: Vec<(String, StringMatcher)>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

/// Istio's StringMatch, compiled. `Prefix` is a plain string prefix (Istio's `prefix` is
/// not segment-aware: `/status` matches `/statusfoo`); `Regex` must match the whole value.
/// `PathPrefix` is Gateway API's segment-wise prefix.
#[derive(Clone, Debug)]
pub enum StringMatcher {
    Exact {
        value: String,
        ignore_case: bool,
    },
    Prefix {
        value: String,
        ignore_case: bool,
    },
    Regex(Regex),
    /// Gateway API `PathPrefix`: whole segments, so `/abc` matches `/abc`, `/abc/` and
    /// `/abc/def` but not `/abcd`. `value` is kept without its trailing `/` (`/` is "").
    PathPrefix {
        value: String,
    },
    /// Istio's empty `StringMatch` (or regex `*`) on a header or query parameter: any
    /// value, as long as it is there (Envoy's `present_match`).
    Present,
}

/// What a request says that routing can look at.
#[derive(Clone, Copy, Debug)]
pub struct RequestInfo<'a> {
    /// Host or :authority as sent; the port, if any, is ignored for host matching.
    pub authority: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub method: &'a str,
    pub scheme: &'a str,
    pub port: u16,
    pub headers: &'a HeaderMap,
}

/// Host → virtual host: exact names, then the longest wildcard suffix, then `*`. Both
/// lookups are hash probes (one per label of the request's host), never a scan of the
/// table, so lookup time does not grow with the number of hosts.
#[derive(Clone, Debug, Default)]
struct HostIndex {
    exact: HashMap<String, usize>,
    /// `.example.com` (the suffix of `*.example.com`, leading dot kept) → index.
    dot_wildcards: HashMap<String, usize>,
    /// Wildcards whose suffix does not start at a label (`*foo.com`), longest first;
    /// rare, so scanned.
    other_wildcards: Vec<(String, usize)>,
    any: Option<usize>,
}

impl<A> RouteTable<A> {
    /// Builds the table; `virtual_hosts` should hold each host pattern once (the first
    /// one of a duplicate host wins, as compile merges duplicates before this).
    pub fn new(virtual_hosts: Vec<VirtualHost<A>>) -> Self {
        let mut hosts = HostIndex::default();
        for (index, vh) in virtual_hosts.iter().enumerate() {
            let host = vh.host.to_ascii_lowercase();
            if host == "*" {
                hosts.any.get_or_insert(index);
            } else if let Some(suffix) = host.strip_prefix('*') {
                if suffix.starts_with('.') {
                    hosts
                        .dot_wildcards
                        .entry(suffix.to_owned())
                        .or_insert(index);
                } else if !hosts.other_wildcards.iter().any(|(s, _)| s == suffix) {
                    hosts.other_wildcards.push((suffix.to_owned(), index));
                }
            } else {
                hosts.exact.entry(host).or_insert(index);
            }
        }
        hosts
            .other_wildcards
            .sort_by_key(|(suffix, _)| std::cmp::Reverse(suffix.len()));
        let reads_headers = virtual_hosts.iter().any(|vh| {
            vh.routes.iter().any(|route| {
                route
                    .matches
                    .iter()
                    .any(|m| !m.headers.is_empty() || !m.without_headers.is_empty())
            })
        });
        RouteTable {
            virtual_hosts,
            hosts,
            reads_headers,
        }
    }

    /// Whether some route matches on headers (else `find` reads none of them).
    pub fn reads_headers(&self) -> bool {
        self.reads_headers
    }

    pub fn virtual_host(&self, authority: &str) -> Option<&VirtualHost<A>> {
        let host = host_without_port(authority);
        let index = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            self.host_index(&host.to_ascii_lowercase())
        } else {
            self.host_index(host)
        }?;
        self.virtual_hosts.get(index)
    }

    fn host_index(&self, host: &str) -> Option<usize> {
        if let Some(&index) = self.hosts.exact.get(host) {
            return Some(index);
        }
        // `*.example.com` matches `a.example.com` and `a.b.example.com` (Envoy's suffix
        // semantics) but not `example.com`: the wildcard stands for at least one character.
        // Suffixes are tried from the longest (the first dot after the first character).
        let longest_other = |min_len: usize| {
            self.hosts
                .other_wildcards
                .iter()
                .find(|(suffix, _)| {
                    suffix.len() >= min_len
                        && host.len() > suffix.len()
                        && host.ends_with(suffix.as_str())
                })
                .map(|&(ref suffix, index)| (suffix.len(), index))
        };
        let dotted = if self.hosts.dot_wildcards.is_empty() {
            None
        } else {
            host.char_indices()
                .skip(1)
                .filter(|&(_, c)| c == '.')
                .find_map(|(at, _)| {
                    let suffix = &host[at..];
                    self.hosts
                        .dot_wildcards
                        .get(suffix)
                        .map(|&index| (suffix.len(), index))
                })
        };
        let best = match (dotted, self.hosts.other_wildcards.is_empty()) {
            (Some((len, index)), true) => Some((len, index)),
            (dotted, false) => {
                let other = longest_other(dotted.map_or(0, |(len, _)| len + 1));
                other.or(dotted)
            }
            (None, true) => None,
        };
        best.map(|(_, index)| index).or(self.hosts.any)
    }

    /// The route for a request, or None (the caller answers 404).
    pub fn find(&self, request: &RequestInfo<'_>) -> Option<&Route<A>> {
        self.virtual_host(request.authority)?
            .routes
            .iter()
            .find(|route| {
                route.matches.is_empty() || route.matches.iter().any(|m| m.accepts(request))
            })
    }
}

impl RequestMatch {
    pub fn accepts(&self, request: &RequestInfo<'_>) -> bool {
        fn opt(m: &Option<StringMatcher>, value: &str) -> bool {
            m.as_ref().is_none_or(|m| m.matches(value))
        }
        opt(&self.path, request.path)
            && opt(&self.method, request.method)
            && opt(&self.scheme, request.scheme)
            && opt(&self.authority, request.authority)
            && self.port.is_none_or(|p| p == request.port)
            && self
                .headers
                .iter()
                .all(|(name, m)| header_value(request.headers, name).is_some_and(|v| m.matches(&v)))
            && self.without_headers.iter().all(|(name, m)| {
                let value = header_value(request.headers, name);
                match m {
                    StringMatcher::Present => value.is_none(),
                    // Istio inverts the match and treats a missing header as empty.
                    m => !m.matches(value.as_deref().unwrap_or_default()),
                }
            })
            && self
                .query_params
                .iter()
                .all(|(name, m)| query_value(request.query, name).is_some_and(|v| m.matches(v)))
    }
}

impl StringMatcher {
    pub fn matches(&self, value: &str) -> bool {
        match self {
            StringMatcher::Exact {
                value: want,
                ignore_case: false,
            } => value == want,
            StringMatcher::Exact {
                value: want,
                ignore_case: true,
            } => value.eq_ignore_ascii_case(want),
            StringMatcher::Prefix {
                value: want,
                ignore_case: false,
            } => value.starts_with(want.as_str()),
            StringMatcher::Prefix {
                value: want,
                ignore_case: true,
            } => value
                .get(..want.len())
                .is_some_and(|head| head.eq_ignore_ascii_case(want)),
            StringMatcher::Regex(re) => re.is_match(value),
            StringMatcher::PathPrefix { value: want } => {
                value.starts_with(want.as_str())
                    && matches!(value.as_bytes().get(want.len()), None | Some(b'/'))
            }
            // Presence is the caller's part: a value it has is there.
            StringMatcher::Present => true,
        }
    }

    /// Gateway API `PathPrefix`: a trailing `/` in the value is ignored.
    pub fn path_prefix(value: &str) -> Self {
        StringMatcher::PathPrefix {
            value: value.trim_end_matches('/').to_owned(),
        }
    }

    /// Compiles an RE2-style regex that must match the whole value, as Istio's do.
    pub fn regex(pattern: &str, ignore_case: bool) -> Result<Self, regex::Error> {
        let flags = if ignore_case { "(?i)" } else { "" };
        Ok(StringMatcher::Regex(Regex::new(&format!(
            "^{flags}(?:{pattern})$"
        ))?))
    }
}

impl Serialize for StringMatcher {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        match self {
            StringMatcher::Exact { value, ignore_case } => {
                map.serialize_entry("exact", value)?;
                if *ignore_case {
                    map.serialize_entry("ignoreCase", &true)?;
                }
            }
            StringMatcher::Prefix { value, ignore_case } => {
                map.serialize_entry("prefix", value)?;
                if *ignore_case {
                    map.serialize_entry("ignoreCase", &true)?;
                }
            }
            StringMatcher::Regex(re) => map.serialize_entry("regex", re.as_str())?,
            StringMatcher::PathPrefix { value } => {
                let shown = if value.is_empty() { "/" } else { value };
                map.serialize_entry("pathPrefix", shown)?
            }
            StringMatcher::Present => map.serialize_entry("present", &true)?,
        }
        map.end()
    }
}

/// `host`, `host:port`, `[v6]`, `[v6]:port` → the host part.
pub fn host_without_port(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split_once(']').map_or(authority, |(v6, _)| v6);
    }
    // The last `:` and a port of digits after it (maybe none), by one backwards walk
    // over the port (`rsplit_once` and the checks after it were ~120 instructions a
    // request).
    let bytes = authority.as_bytes();
    let digits = bytes
        .iter()
        .rev()
        .take_while(|b| b.is_ascii_digit())
        .count();
    let colon = bytes.len() - digits;
    match colon.checked_sub(1).map(|at| (at, bytes[at])) {
        Some((at, b':')) if !bytes[..at].contains(&b':') => &authority[..at],
        _ => authority,
    }
}

/// Several values of one header are matched as Envoy does: joined with ",".
fn header_value(headers: &HeaderMap, name: &str) -> Option<String> {
    let mut values = headers.get_all(name).iter().filter_map(|v| v.to_str().ok());
    let first = values.next()?;
    Some(values.fold(first.to_owned(), |mut joined, v| {
        joined.push(',');
        joined.push_str(v);
        joined
    }))
}

fn query_value<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then_some(value)
    })
}

#[cfg(test)]
#[path = "route_table_tests.rs"]
mod tests;
