//! The pure parts of route actions: redirect locations, path rewrites, CORS decisions,
//! retry decisions. No I/O, so they are tested here with plain values.

use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};

use crate::{
    route_table::{RequestMatch, StringMatcher},
    snapshot::{CorsPolicy, PathRewrite, Redirect, RedirectPort, RetryOn},
};

/// The Location of a redirect for a request to `scheme://authority/path_and_query`.
pub(super) fn redirect_location(
    redirect: &Redirect,
    scheme: &str,
    authority: &str,
    path_and_query: &str,
    matches: &[RequestMatch],
) -> String {
    let new_scheme = redirect.scheme.as_deref().unwrap_or(scheme);
    if redirect.port == RedirectPort::KeepAuthority && redirect.authority.is_none() {
        let path_and_query = match &redirect.path {
            None => path_and_query.to_owned(),
            Some(rewrite) => rewrite_path_and_query(rewrite, path_and_query, matches),
        };
        return format!("{new_scheme}://{authority}{path_and_query}");
    }
    let (request_host, request_port) = split_authority(authority);
    let host = redirect.authority.as_deref().unwrap_or(request_host);
    let port = match redirect.port {
        RedirectPort::Fixed(port) => Some(port),
        RedirectPort::ProtocolDefault => None,
        // Envoy keeps the request's port, unless the scheme changes and it is the old
        // scheme's default (`http://a:80` → `https://a`, `http://a:8080` → `https://a:8080`).
        RedirectPort::FromRequest | RedirectPort::KeepAuthority
            if new_scheme.eq_ignore_ascii_case(scheme) =>
        {
            request_port
        }
        RedirectPort::FromRequest | RedirectPort::KeepAuthority => {
            request_port.filter(|&p| !is_default_port(scheme, p))
        }
    };
    let port = port.filter(|&p| !is_default_port(new_scheme, p));
    let path_and_query = match &redirect.path {
        None => path_and_query.to_owned(),
        Some(rewrite) => rewrite_path_and_query(rewrite, path_and_query, matches),
    };
    match port {
        Some(port) => format!("{new_scheme}://{host}:{port}{path_and_query}"),
        None => format!("{new_scheme}://{host}{path_and_query}"),
    }
}

fn is_default_port(scheme: &str, port: u16) -> bool {
    matches!(
        (scheme.to_ascii_lowercase().as_str(), port),
        ("http", 80) | ("https", 443)
    )
}

/// `host:port` → (host, port); IPv6 literals keep their brackets.
pub(super) fn split_authority(authority: &str) -> (&str, Option<u16>) {
    match authority.rsplit_once(':') {
        Some((host, port)) if !port.contains(']') => match port.parse() {
            Ok(port) => (host, Some(port)),
            Err(_) => (authority, None),
        },
        _ => (authority, None),
    }
}

/// Applies a path rewrite to a path with its query; the query is kept unless the
/// replacement brings its own.
pub(super) fn rewrite_path_and_query(
    rewrite: &PathRewrite,
    path_and_query: &str,
    matches: &[RequestMatch],
) -> String {
    let (path, query) = match path_and_query.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (path_and_query, None),
    };
    let new_path = match rewrite {
        PathRewrite::Full(replacement) => replacement.clone(),
        PathRewrite::Prefix(replacement) => match matched_prefix(path, matches) {
            Some(MatchedPrefix::Chars(len)) => format!("{replacement}{}", &path[len..]),
            // Gateway API ReplacePrefixMatch: whole segments are replaced, so `/foo` → `/`
            // turns `/foo/bar` into `/bar`, not `//bar`.
            Some(MatchedPrefix::Segments(len)) => {
                let joined = format!("{}{}", replacement.trim_end_matches('/'), &path[len..]);
                if joined.is_empty() {
                    "/".to_owned()
                } else {
                    joined
                }
            }
            None => replacement.clone(),
        },
        PathRewrite::Regex {
            pattern,
            substitution,
        } => pattern
            .replace_all(path, substitution.as_str())
            .into_owned(),
    };
    match query {
        Some(query) if !new_path.contains('?') => format!("{new_path}?{query}"),
        _ => new_path,
    }
}

/// Length of the prefix that a route's prefix match accepted; a route without a path
/// match is a `/` prefix match (Istio's implied match); None for exact and regex matches,
/// whose rewrite replaces the whole path.
fn matched_prefix(path: &str, matches: &[RequestMatch]) -> Option<MatchedPrefix> {
    if matches.is_empty() || matches.iter().any(|m| m.path.is_none()) {
        return path.starts_with('/').then_some(MatchedPrefix::Chars(1));
    }
    matches.iter().find_map(|m| match &m.path {
        Some(matcher @ StringMatcher::Prefix { value, .. }) if matcher.matches(path) => {
            Some(MatchedPrefix::Chars(value.len()))
        }
        Some(matcher @ StringMatcher::PathPrefix { value }) if matcher.matches(path) => {
            Some(MatchedPrefix::Segments(value.len()))
        }
        _ => None,
    })
}

/// How much of the path a prefix match accepted: Istio's string prefix, or Gateway API's
/// whole segments (stored without a trailing `/`).
enum MatchedPrefix {
    Chars(usize),
    Segments(usize),
}

/// The request's Origin when the CORS policy allows it. As Envoy's filter, a matcher
/// that accepts `*` itself (`exact: "*"`, `regex: ".*"`) allows every origin.
pub(super) fn allowed_origin<'h>(
    cors: &CorsPolicy,
    headers: &'h HeaderMap,
) -> Option<&'h HeaderValue> {
    let origin = headers.get(header::ORIGIN).filter(|o| !o.is_empty())?;
    let text = origin.to_str().ok()?;
    cors.allow_origins
        .iter()
        .any(|m| m.matches("*") || m.matches(text))
        .then_some(origin)
}

pub(super) fn is_preflight(method: &Method, headers: &HeaderMap) -> bool {
    let present = |name| {
        headers
            .get(name)
            .is_some_and(|v: &HeaderValue| !v.is_empty())
    };
    method == Method::OPTIONS
        && present(header::ORIGIN)
        && present(header::ACCESS_CONTROL_REQUEST_METHOD)
}

/// Headers of a preflight answer: allow-origin for an allowed `origin` only, the rest
/// from the policy; `*` in allow-methods or allow-headers echoes what the browser asked.
pub(super) fn preflight_headers(
    cors: &CorsPolicy,
    origin: Option<&HeaderValue>,
    request: &HeaderMap,
    headers: &mut HeaderMap,
) {
    if let Some(origin) = origin {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        // Envoy's CORS filter answers the preflight through its own encoder, which adds
        // the exposed headers as on any response (HTTPRouteCORS expects them there too).
        if !cors.expose_headers.is_empty()
            && let Ok(value) = HeaderValue::from_str(&cors.expose_headers)
        {
            headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, value);
        }
    }
    if cors.allow_credentials {
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
    let mut set = |name: header::HeaderName, value: &str, asked: header::HeaderName| {
        let value = match value {
            "" => return,
            "*" => match request.get(&asked) {
                Some(asked) => asked.clone(),
                None => return,
            },
            value => match HeaderValue::from_str(value) {
                Ok(value) => value,
                Err(_) => return,
            },
        };
        headers.insert(name, value);
    };
    set(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        &cors.allow_methods,
        header::ACCESS_CONTROL_REQUEST_METHOD,
    );
    set(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        &cors.allow_headers,
        header::ACCESS_CONTROL_REQUEST_HEADERS,
    );
    if let Some(age) = cors.max_age {
        headers.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from(age));
    }
}

/// Headers added to an actual (non-preflight) response for an allowed origin.
pub(super) fn cors_response_headers(
    cors: &CorsPolicy,
    origin: &HeaderValue,
    headers: &mut HeaderMap,
) {
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    if cors.allow_credentials {
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
    if !cors.expose_headers.is_empty()
        && let Ok(value) = HeaderValue::from_str(&cors.expose_headers)
    {
        headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, value);
    }
}

/// How one try failed, in the terms `retry_on` speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum TryFailure {
    ConnectFailure,
    /// The TLS handshake with the upstream failed (Envoy counts it a connect failure).
    Tls(super::upstream_tls::TlsFailure),
    /// Closed or reset before a response.
    Reset,
    /// Ended by a TLS alert after the handshake, before a response: with TLS 1.3 that is
    /// how an upstream refuses our client certificate. A connection termination, as for
    /// Envoy, with the TLS reason as its transport failure reason.
    ResetTls(super::upstream_tls::TlsFailure),
    /// Unparseable response.
    ProtocolError,
    /// The per-try timeout expired.
    Timeout,
    /// An HTTP/2 upstream refused the stream (REFUSED_STREAM): it did no work on it.
    RefusedStream,
    /// The cluster's connection pool limits were reached (Envoy's circuit breakers).
    Overflow,
}

pub(super) fn retriable_failure(on: &RetryOn, failure: TryFailure) -> bool {
    match failure {
        TryFailure::ConnectFailure | TryFailure::Tls(_) => {
            on.connect_failure || on.gateway_error || on.server_error
        }
        TryFailure::Reset | TryFailure::ResetTls(_) => on.reset || on.server_error,
        // Envoy's router retries an expired per-try timeout as a local reset of the
        // stream: `reset` covers it, beside `5xx` and `gateway-error`.
        TryFailure::Timeout => on.gateway_error || on.server_error || on.reset,
        TryFailure::ProtocolError => on.server_error,
        TryFailure::RefusedStream => on.refused_stream || on.reset || on.server_error,
        // Envoy never retries an overflow: a retry would only add to the load.
        TryFailure::Overflow => false,
    }
}

/// Is this answer worth another try? Its status, or for gRPC the `grpc-status` in its
/// headers (a trailers-only answer), as Envoy's `retry_on` and `retry_grpc_on` read them.
/// A name, not a string: a `&str` key is parsed into a header name at every look-up.
pub(super) static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

/// `grpc_status` reads the answer's grpc-status (only when the policy retries on one).
pub(super) fn retriable_response<'a>(
    on: &RetryOn,
    status: StatusCode,
    grpc_status: impl FnOnce() -> Option<&'a [u8]>,
) -> bool {
    let code = status.as_u16();
    (on.server_error && status.is_server_error())
        || (on.gateway_error && matches!(code, 502..=504))
        || (on.retriable_4xx && code == 409)
        || on.status_codes.contains(&code)
        || (!on.grpc_statuses.is_empty()
            && grpc_status()
                .and_then(|v| super::http1::passed::as_text(v)?.parse::<u8>().ok())
                .is_some_and(|grpc| on.grpc_statuses.contains(&grpc)))
}

/// True for `percentage` percent of calls.
pub(super) fn chance(percentage: f64) -> bool {
    percentage >= 100.0 || fastrand::f64() * 100.0 < percentage
}

#[cfg(test)]
mod tests {
    use regex::Regex;

    use super::*;
    use crate::snapshot::HeaderPolicy;

    fn prefix(value: &str) -> RequestMatch {
        RequestMatch {
            path: Some(StringMatcher::Prefix {
                value: value.into(),
                ignore_case: false,
            }),
            ..RequestMatch::default()
        }
    }

    fn redirect(scheme: Option<&str>, port: RedirectPort, path: Option<PathRewrite>) -> Redirect {
        Redirect {
            scheme: scheme.map(str::to_owned),
            authority: None,
            port,
            path,
            status: 301,
            headers: HeaderPolicy::default(),
            cors: None,
        }
    }

    #[test]
    fn redirect_locations() {
        let to_https = redirect(Some("https"), RedirectPort::FromRequest, None);
        assert_eq!(
            redirect_location(&to_https, "http", "a.example:8080", "/x?y=1", &[]),
            "https://a.example:8080/x?y=1"
        );
        assert_eq!(
            redirect_location(&to_https, "http", "a.example:80", "/x", &[]),
            "https://a.example/x"
        );
        let require_tls = redirect(Some("https"), RedirectPort::KeepAuthority, None);
        assert_eq!(
            redirect_location(&require_tls, "http", "a.example:8080", "/x?y=1", &[]),
            "https://a.example:8080/x?y=1"
        );
        assert_eq!(
            redirect_location(&require_tls, "http", "a.example", "/x", &[]),
            "https://a.example/x"
        );
        let keep = redirect(
            None,
            RedirectPort::FromRequest,
            Some(PathRewrite::Full("/new".into())),
        );
        assert_eq!(
            redirect_location(&keep, "http", "a.example:8080", "/old?q", &[]),
            "http://a.example:8080/new?q"
        );
        let fixed = redirect(None, RedirectPort::Fixed(9000), None);
        assert_eq!(
            redirect_location(&fixed, "http", "a.example", "/", &[]),
            "http://a.example:9000/"
        );
    }

    #[test]
    fn path_rewrites() {
        let m = [prefix("/api/")];
        let p = PathRewrite::Prefix("/v2/".into());
        assert_eq!(
            rewrite_path_and_query(&p, "/api/users?x=1", &m),
            "/v2/users?x=1"
        );
        // No path match: Istio's implied `/` prefix.
        assert_eq!(rewrite_path_and_query(&p, "/users", &[]), "/v2/users");
        let r = PathRewrite::Regex {
            pattern: Regex::new("^/service/([^/]+)(/.*)$").expect("regex"),
            substitution: "${2}/instance/${1}".into(),
        };
        assert_eq!(
            rewrite_path_and_query(&r, "/service/foo/v1/api?x", &[]),
            "/v1/api/instance/foo?x"
        );
    }

    /// Gateway API ReplacePrefixMatch replaces whole segments.
    #[test]
    fn segment_prefix_rewrites() {
        let m = |value: &str| RequestMatch {
            path: Some(StringMatcher::PathPrefix {
                value: value.into(),
            }),
            ..RequestMatch::default()
        };
        let cases = [
            ("/foo", "/bar", "/foo/baz?q", "/bar/baz?q"),
            ("/foo", "/bar", "/foo", "/bar"),
            ("/foo", "/", "/foo/baz", "/baz"),
            ("/foo", "/", "/foo", "/"),
            ("/foo", "/bar/", "/foo/", "/bar/"),
            ("", "/v2", "/x/y", "/v2/x/y"),
        ];
        for (prefix, replacement, path, want) in cases {
            let rewrite = PathRewrite::Prefix(replacement.into());
            assert_eq!(
                rewrite_path_and_query(&rewrite, path, &[m(prefix)]),
                want,
                "{prefix} → {replacement} on {path}"
            );
        }
    }

    #[test]
    fn cors_as_envoys_filter() {
        let cors = CorsPolicy {
            allow_origins: vec![StringMatcher::Exact {
                value: "*".into(),
                ignore_case: false,
            }],
            allow_methods: "*".into(),
            allow_headers: "*".into(),
            allow_credentials: true,
            ..CorsPolicy::default()
        };
        let mut request = HeaderMap::new();
        request.insert(header::ORIGIN, HeaderValue::from_static("https://any"));
        request.insert(
            header::ACCESS_CONTROL_REQUEST_METHOD,
            HeaderValue::from_static("PUT"),
        );
        request.insert(
            header::ACCESS_CONTROL_REQUEST_HEADERS,
            HeaderValue::from_static("x-a,x-b"),
        );
        // `exact: "*"` allows every origin, which is echoed.
        let origin = allowed_origin(&cors, &request).expect("allowed");
        let mut answer = HeaderMap::new();
        preflight_headers(&cors, Some(origin), &request, &mut answer);
        assert_eq!(answer[header::ACCESS_CONTROL_ALLOW_ORIGIN], "https://any");
        assert_eq!(answer[header::ACCESS_CONTROL_ALLOW_METHODS], "PUT");
        assert_eq!(answer[header::ACCESS_CONTROL_ALLOW_HEADERS], "x-a,x-b");
        assert_eq!(answer[header::ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
        // An unmatched preflight answered here carries no allow-origin.
        let mut unmatched = HeaderMap::new();
        preflight_headers(&cors, None, &request, &mut unmatched);
        assert!(!unmatched.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN));
        let empty_origin = {
            let mut headers = request.clone();
            headers.insert(header::ORIGIN, HeaderValue::from_static(""));
            headers
        };
        assert!(allowed_origin(&cors, &empty_origin).is_none());
    }

    #[test]
    fn retry_decisions() {
        let default = RetryOn::istio_default();
        let none = || None;
        // Istio ≥ 1.24: no status code is retried by default...
        assert!(!retriable_response(
            &default,
            StatusCode::SERVICE_UNAVAILABLE,
            none
        ));
        // ...but gRPC's unavailable and cancelled are, and not internal.
        let grpc = |code: &'static str| move || Some(code.as_bytes());
        assert!(retriable_response(&default, StatusCode::OK, grpc("14")));
        assert!(retriable_response(&default, StatusCode::OK, grpc("1")));
        assert!(!retriable_response(&default, StatusCode::OK, grpc("13")));
        assert!(retriable_failure(&default, TryFailure::ConnectFailure));
        assert!(!retriable_failure(&default, TryFailure::Reset));
        assert!(!retriable_failure(&default, TryFailure::Overflow));
        assert!(!retriable_failure(&default, TryFailure::Timeout));
        // `reset` covers an upstream that does not answer at all, a per-try timeout too.
        let reset = RetryOn {
            reset: true,
            ..RetryOn::default()
        };
        assert!(retriable_failure(&reset, TryFailure::Reset));
        assert!(retriable_failure(&reset, TryFailure::Timeout));
        assert!(!retriable_response(
            &reset,
            StatusCode::GATEWAY_TIMEOUT,
            none
        ));
    }
}
