//! What a request from outside may not bring in, as Envoy treats external requests at an
//! edge (`use_remote_address`, no internal addresses: Istio's gateway): `x-envoy-*`
//! headers that would steer this proxy or the next one are removed
//! (`ConnectionManagerUtility::cleanInternalHeaders`), its path is normalized
//! (`normalize.rs`), and upgrades other than WebSocket (the only `upgrade_configs`
//! Istio enables on a gateway) are refused with 403 (`upgrade_failed`), except
//! `h2c`, whose headers Envoy's HTTP/1 codec strips so the request is served as a plain
//! one.

use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Uri, header};

use super::{
    head_facts::{HeadFacts, Upgrade},
    normalize::{self, PathNormalization},
};

/// Client-sent headers Envoy removes from an external request at the edge (a static: a
/// const array is built and dropped at every use).
static EXTERNAL_STRIPPED: [HeaderName; 19] = [
    HeaderName::from_static("x-envoy-decorator-operation"),
    HeaderName::from_static("x-envoy-downstream-service-cluster"),
    HeaderName::from_static("x-envoy-downstream-service-node"),
    HeaderName::from_static("x-envoy-retriable-status-codes"),
    HeaderName::from_static("x-envoy-retriable-header-names"),
    HeaderName::from_static("x-envoy-retry-on"),
    HeaderName::from_static("x-envoy-retry-grpc-on"),
    HeaderName::from_static("x-envoy-max-retries"),
    HeaderName::from_static("x-envoy-upstream-alt-stat-name"),
    HeaderName::from_static("x-envoy-upstream-rq-timeout-ms"),
    HeaderName::from_static("x-envoy-upstream-rq-per-try-timeout-ms"),
    HeaderName::from_static("x-envoy-upstream-rq-timeout-alt-response"),
    HeaderName::from_static("x-envoy-expected-rq-timeout-ms"),
    HeaderName::from_static("x-envoy-force-trace"),
    HeaderName::from_static("x-envoy-ip-tags"),
    HeaderName::from_static("x-envoy-original-url"),
    HeaderName::from_static("x-envoy-hedge-on-per-try-timeout"),
    // Removed from every request (it is set only for internal ones, never here).
    HeaderName::from_static("x-envoy-internal"),
    // Envoy overwrites it when it rewrites a path; a client's copy would pose as one.
    HeaderName::from_static("x-envoy-original-path"),
];
const HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");

/// A request's answer decided at the edge, before routing.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Refusal {
    /// The path cannot be normalized.
    BadPath,
}

/// The request as the router and the upstream see it: edge headers removed, an `h2c`
/// upgrade dropped, the path normalized.
pub(super) fn admit<B>(
    request: &mut Request<B>,
    paths: PathNormalization,
    facts: &mut HeadFacts,
) -> Result<(), Refusal> {
    let headers = request.headers_mut();
    // Every stripped name starts with `x-envoy-`, which almost no request carries: the
    // head's one pass over the names tells, instead of 19 hashed removals.
    if facts.envoy_prefixed {
        for name in &EXTERNAL_STRIPPED {
            headers.remove(name);
        }
    }
    if facts.upgrade == Upgrade::H2c {
        drop_h2c_upgrade(headers);
        facts.upgrade = Upgrade::None;
    }
    if let Some(uri) = normalized_uri(request.method(), request.uri(), paths)? {
        *request.uri_mut() = uri;
    }
    Ok(())
}

/// The request's URI as the access log shows it: normalized as `admit` routes it (what
/// Envoy's `%REQ(:PATH)%` shows once it normalizes paths; before any route rewrite, as
/// Istio's `%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%`), or as sent when it cannot be (400).
pub(super) fn logged_uri(method: &Method, uri: &Uri, paths: PathNormalization) -> Uri {
    match normalized_uri(method, uri, paths) {
        Ok(Some(normal)) => normal,
        Ok(None) | Err(_) => uri.clone(),
    }
}

/// Whether the request asks for an upgrade the gateway does not do (anything but
/// WebSocket), or is a CONNECT: Envoy answers it 403 once a route matched, and closes.
pub(super) fn refused_upgrade(method: &Method, upgrade: Upgrade) -> bool {
    *method == Method::CONNECT || !matches!(upgrade, Upgrade::None | Upgrade::WebSocket)
}

/// Envoy's answer to a refused upgrade (empty body; the connection closes after it).
pub(super) const REFUSED_UPGRADE_STATUS: StatusCode = StatusCode::FORBIDDEN;

/// Envoy's HTTP/1 codec: `Upgrade: h2c` and its `HTTP2-Settings` are removed, and so
/// are those tokens from `Connection`.
fn drop_h2c_upgrade(headers: &mut HeaderMap) {
    headers.remove(header::UPGRADE);
    headers.remove(&HTTP2_SETTINGS);
    let kept: Vec<&str> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| {
            !t.is_empty()
                && !t.eq_ignore_ascii_case("upgrade")
                && !t.eq_ignore_ascii_case("http2-settings")
        })
        .collect();
    let joined = HeaderValue::from_str(&kept.join(", ")).ok();
    headers.remove(header::CONNECTION);
    if let Some(value) = joined.filter(|v| !v.is_empty()) {
        headers.insert(header::CONNECTION, value);
    }
}

/// The request's URI with its path normalized; None when it already is (or has no
/// path to normalize: CONNECT's authority, `OPTIONS *`).
fn normalized_uri(
    method: &Method,
    uri: &Uri,
    paths: PathNormalization,
) -> Result<Option<Uri>, Refusal> {
    let path = uri.path();
    if method == Method::CONNECT || path.is_empty() || path == "*" {
        return Ok(None);
    }
    let normal = match normalize::normalize_path(path, paths) {
        Ok(std::borrow::Cow::Borrowed(_)) => return Ok(None),
        Ok(std::borrow::Cow::Owned(normal)) => normal,
        Err(e) => {
            tracing::debug!(error = %e, "path refused");
            return Err(Refusal::BadPath);
        }
    };
    let path_and_query = match uri.query() {
        Some(query) => format!("{normal}?{query}"),
        None => normal,
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(path_and_query.parse().map_err(|_| Refusal::BadPath)?);
    Uri::from_parts(parts)
        .map(Some)
        .map_err(|_| Refusal::BadPath)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_stripped_name_has_the_prefix_admit_looks_for() {
        for name in &EXTERNAL_STRIPPED {
            assert!(
                name.as_str()
                    .starts_with(super::super::head_facts::ENVOY_PREFIX),
                "{name}"
            );
        }
    }

    fn admit<B>(request: Request<B>, paths: PathNormalization) -> Result<Request<B>, Refusal> {
        let mut facts = HeadFacts::of(request.headers());
        let mut request = request;
        super::admit(&mut request, paths, &mut facts).map(|()| request)
    }

    fn refused_upgrade<B>(request: &Request<B>) -> bool {
        super::refused_upgrade(request.method(), HeadFacts::of(request.headers()).upgrade)
    }

    fn request(method: &str, uri: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut builder = Request::builder().method(method).uri(uri);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap_or_default()
    }

    #[test]
    fn steering_headers_from_outside_are_removed() {
        let stripped = &EXTERNAL_STRIPPED;
        let mut sent = vec![("x-envoy-custom", "kept"), ("x-kept", "1")];
        sent.extend(stripped.iter().map(|n| (n.as_str(), "5")));
        let admitted =
            admit(request("GET", "/", &sent), PathNormalization::Base).expect("admitted");
        let left: Vec<&str> = admitted.headers().keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["x-envoy-custom", "x-kept"]);
    }

    #[test]
    fn paths_are_normalized_and_queries_kept() {
        let admitted = admit(
            request("GET", "/public/../admin?a=../b", &[]),
            PathNormalization::Base,
        )
        .expect("admitted");
        assert_eq!(admitted.uri(), "/admin?a=../b");
        let admitted = admit(
            request("GET", "http://h/%61/./b", &[]),
            PathNormalization::Base,
        )
        .expect("admitted");
        assert_eq!(admitted.uri(), "http://h/a/b");
        assert_eq!(
            admit(request("GET", "/a%zz", &[]), PathNormalization::Base).map(|_| ()),
            Err(Refusal::BadPath)
        );
        let connect =
            admit(request("CONNECT", "h:443", &[]), PathNormalization::Base).expect("admitted");
        assert_eq!(connect.uri(), "h:443");
        let options =
            admit(request("OPTIONS", "*", &[]), PathNormalization::Base).expect("admitted");
        assert_eq!(options.uri(), "*");
    }

    #[test]
    fn the_log_shows_the_path_as_routed() {
        let logged = |method: &str, uri: &str| {
            let uri: Uri = uri.parse().unwrap_or_default();
            logged_uri(
                &Method::from_bytes(method.as_bytes()).unwrap_or_default(),
                &uri,
                PathNormalization::Base,
            )
        };
        assert_eq!(logged("GET", "/public/../admin?a=../b"), "/admin?a=../b");
        assert_eq!(logged("GET", "/already/normal"), "/already/normal");
        // Refused with 400: logged as sent.
        assert_eq!(logged("GET", "/a%zz"), "/a%zz");
        assert_eq!(logged("CONNECT", "h:443"), "h:443");
    }

    #[test]
    fn only_websocket_upgrades_are_allowed_and_h2c_is_dropped() {
        let upgrade = |token| {
            request(
                "GET",
                "/",
                &[
                    ("upgrade", token),
                    ("connection", "Upgrade, HTTP2-Settings, x-a"),
                ],
            )
        };
        assert!(!refused_upgrade(&upgrade("WebSocket")));
        assert!(refused_upgrade(&upgrade("foo")));
        assert!(refused_upgrade(&upgrade("websocket, foo")));
        assert!(refused_upgrade(&request("CONNECT", "h:443", &[])));
        assert!(!refused_upgrade(&request("GET", "/", &[])));
        let h2c = admit(
            request(
                "GET",
                "/",
                &[
                    ("upgrade", "h2c"),
                    ("http2-settings", "AAMAAABkAAQAAP__"),
                    ("connection", "Upgrade, HTTP2-Settings, x-a"),
                ],
            ),
            PathNormalization::Base,
        )
        .expect("admitted");
        assert!(!refused_upgrade(&h2c));
        assert!(h2c.headers().get(header::UPGRADE).is_none());
        assert!(h2c.headers().get(&HTTP2_SETTINGS).is_none());
        assert_eq!(
            h2c.headers().get(header::CONNECTION).map(|v| v.as_bytes()),
            Some(&b"x-a"[..])
        );
    }
}
