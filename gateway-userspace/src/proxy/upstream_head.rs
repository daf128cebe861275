//! The request as the upstream gets it: hop-by-hop headers removed, forwarding headers
//! (x-forwarded-for, x-forwarded-proto, XFCC, x-envoy-external-address) and the request
//! id set as Istio's gateway sets them, the route's rewrites and header operations applied.

use bytes::Bytes;
use http::{
    HeaderMap, HeaderName, HeaderValue, Method, Request, Uri, Version, header, uri::PathAndQuery,
};

use super::{
    body::ProxyBody,
    http1::{Http1Client, client::Outbound},
    route_actions,
    upstream::Outgoing,
};
use crate::{
    route_table::Route,
    snapshot::{Forward, RouteAction, UpstreamProtocol, WeightedCluster},
};

/// Hop-by-hop headers (RFC 9110 §7.6.1) that one connection must not pass to the next.
/// A static, not a const: a const array of names is built and dropped at every use.
static HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];
pub(super) const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_FORWARDED_CLIENT_CERT: HeaderName = HeaderName::from_static("x-forwarded-client-cert");
const X_ENVOY_EXTERNAL_ADDRESS: HeaderName = HeaderName::from_static("x-envoy-external-address");

/// The downstream side of a request, as the upstream is told of it.
pub(super) struct Downstream<'a> {
    /// The client's address and port (consistent hashing by source IP, generated cookies).
    pub peer: std::net::SocketAddr,
    /// The client's address, as x-forwarded-for and x-envoy-external-address carry it.
    pub peer_ip: &'a HeaderValue,
    /// `https` on connections TLS terminated.
    pub scheme: &'static str,
    /// The client's TLS certificate, as x-forwarded-client-cert carries it.
    pub client_cert: Option<&'a str>,
    /// The request's authority (HTTP/2's :authority, else Host).
    pub authority: &'a str,
    pub request_id: &'a HeaderValue,
    /// What the replay copies of the connection's requests may hold together.
    pub replay_budget: &'a super::replay::ReplayBudget,
    /// The request carries an Upgrade header (once the edge dropped h2c's).
    pub upgrade_asked: bool,
}

/// A request's head as every try and mirror sends it.
#[derive(Clone)]
pub(super) struct UpstreamHead {
    pub method: Method,
    pub path_and_query: PathAndQuery,
    /// The Host header's value: HTTP/2 upstreams get it as `:authority`.
    pub authority: HeaderValue,
    pub headers: HeaderMap,
    /// Forwarding headers the request did not carry, set after `headers`.
    pub appended: Appended,
}

/// Forwarding headers the client did not send, on a route without request header rules:
/// kept out of the header map (each insert there hashes the name, and the map is only
/// read again to write it), written after the map's fields by the codec's client, put
/// into the map by `UpstreamHead::request` for the other clients. The order is the one
/// the inserts had.
#[derive(Clone, Default)]
pub(super) struct Appended {
    forwarded_for: Option<HeaderValue>,
    forwarded_proto: Option<HeaderValue>,
    request_id: Option<HeaderValue>,
    external_address: Option<HeaderValue>,
}

impl Appended {
    /// The fields, as name and value, in their order.
    pub(super) fn fields(&self) -> impl Iterator<Item = (&'static str, &HeaderValue)> + Clone {
        [
            ("x-forwarded-for", &self.forwarded_for),
            ("x-forwarded-proto", &self.forwarded_proto),
            ("x-request-id", &self.request_id),
            ("x-envoy-external-address", &self.external_address),
        ]
        .into_iter()
        .filter_map(|(name, value)| value.as_ref().map(|value| (name, value)))
    }

    /// Moves the fields into `headers` (none of them is there).
    fn move_into(&mut self, headers: &mut HeaderMap) {
        let names = [
            X_FORWARDED_FOR,
            X_FORWARDED_PROTO,
            X_REQUEST_ID,
            X_ENVOY_EXTERNAL_ADDRESS,
        ];
        let values = [
            self.forwarded_for.take(),
            self.forwarded_proto.take(),
            self.request_id.take(),
            self.external_address.take(),
        ];
        for (name, value) in names.into_iter().zip(values) {
            if let Some(value) = value {
                headers.insert(name, value);
            }
        }
    }
}

impl UpstreamHead {
    /// What one try sends: for the codec's HTTP/1.1 client, the head encoded straight
    /// from this one (no header map copied per try); else `request`.
    pub(super) fn outgoing(
        &mut self,
        protocol: UpstreamProtocol,
        client: Http1Client,
        body: ProxyBody,
        last_try: bool,
    ) -> Result<Outgoing, http::Error> {
        if protocol == UpstreamProtocol::Http1 && client == Http1Client::Own {
            return Ok(Outgoing::Http1(Outbound::new(
                &self.method,
                self.path_and_query.as_str(),
                &self.headers,
                self.appended.fields(),
                body,
            )));
        }
        self.request(protocol, body, last_try)
            .map(Outgoing::Request)
    }

    /// The request of one try: origin-form with a Host header for HTTP/1.1, absolute
    /// (`:authority`, no Host) for HTTP/2. The last try takes the headers instead of
    /// copying them.
    pub(super) fn request(
        &mut self,
        protocol: UpstreamProtocol,
        body: ProxyBody,
        last_try: bool,
    ) -> Result<Request<ProxyBody>, http::Error> {
        self.appended.move_into(&mut self.headers);
        let mut headers = if last_try {
            std::mem::take(&mut self.headers)
        } else {
            self.headers.clone()
        };
        let (uri, version) = match protocol {
            UpstreamProtocol::Http1 => (Uri::from(self.path_and_query.clone()), Version::HTTP_11),
            UpstreamProtocol::Http2 => {
                headers.remove(header::HOST);
                let uri = Uri::builder()
                    .scheme("http")
                    .authority(self.authority.as_bytes())
                    .path_and_query(self.path_and_query.clone())
                    .build()?;
                (uri, Version::HTTP_2)
            }
        };
        let mut request = Request::new(body);
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = uri;
        *request.headers_mut() = headers;
        *request.version_mut() = version;
        Ok(request)
    }
}

impl UpstreamHead {
    /// The request as the upstream gets it: same method, path, Host and body unless the
    /// route rewrites them; hop-by-hop headers removed; forwarding headers set as Istio's
    /// gateway sets them; then the route's and the destination's header operations.
    pub(super) fn new(
        parts: http::request::Parts,
        route: &Route<RouteAction>,
        forward: &Forward,
        weighted: &WeightedCluster,
        downstream: &Downstream<'_>,
        is_upgrade: bool,
    ) -> Option<UpstreamHead> {
        let Downstream {
            peer: _,
            peer_ip,
            scheme,
            client_cert,
            authority,
            request_id,
            replay_budget: _,
            upgrade_asked: _,
        } = *downstream;
        // A backendRef's own URLRewrite replaces the route's for its share.
        let rewrite = weighted.rewrite.as_ref().or(forward.rewrite.as_ref());
        let path_and_query = match rewrite.and_then(|r| r.path.as_ref()) {
            Some(rewrite) => {
                let original = parts.uri.path_and_query().map_or("/", |p| p.as_str());
                let rewritten =
                    route_actions::rewrite_path_and_query(rewrite, original, &route.matches);
                PathAndQuery::try_from(rewritten).ok()?
            }
            None => parts
                .uri
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
        };
        let mut headers = parts.headers;
        // Which of the names below the request carries, from one pass over its names:
        // the ones it lacks are not looked up (hashed) at all.
        let carried = Carried::of(&headers);
        // Without request header rules nothing reads the map before it is written, so
        // forwarding headers the request lacks need not go into it (`Appended`).
        let no_rules = forward.headers.request.is_empty() && weighted.headers.request.is_empty();
        let mut appended = Appended::default();
        let upgrade = if is_upgrade {
            headers.get(header::UPGRADE).cloned()
        } else {
            None
        };
        strip_hop_by_hop(&mut headers);
        // The gateway answers `Expect: 100-continue` itself (the codec sends the 100 when
        // the body is first wanted) and the upstream is not asked again: Envoy's default
        // (`proxy_100_continue` off, as Istio leaves it) removes the header.
        if carried.expect
            && headers
                .get(header::EXPECT)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
        {
            headers.remove(header::EXPECT);
        }
        if let Some(upgrade) = upgrade {
            headers.insert(header::UPGRADE, upgrade);
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        }
        // Host: the rewritten authority, else the request's (HTTP/2 requests carry it as
        // :authority only; an HTTP/1.1 Host header that already says it stays as is).
        let mut host = headers.get(header::HOST).cloned();
        let new_host = match rewrite.and_then(|r| r.authority.as_deref()) {
            Some(rewritten) => Some(rewritten),
            None if host.as_ref().is_some_and(|h| h == authority) => None,
            None => Some(authority),
        };
        if let Some(new_host) = new_host.and_then(|h| HeaderValue::from_str(h).ok()) {
            headers.insert(header::HOST, new_host.clone());
            host = Some(new_host);
        }
        if no_rules && !carried.forwarded_for {
            appended.forwarded_for = Some(peer_ip.clone());
        } else {
            forwarded_for(&mut headers, peer_ip);
        }
        if no_rules && !carried.forwarded_proto {
            appended.forwarded_proto = Some(HeaderValue::from_static(scheme));
        } else {
            headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(scheme));
        }
        // Envoy's SANITIZE_SET (Istio's gateway default): never trust the client's XFCC.
        let client_cert = client_cert.and_then(|cert| HeaderValue::from_str(cert).ok());
        if carried.forwarded_client_cert || client_cert.is_some() {
            match (headers.entry(X_FORWARDED_CLIENT_CERT), client_cert) {
                (header::Entry::Occupied(mut sent), Some(ours)) => {
                    sent.insert(ours);
                }
                (header::Entry::Occupied(sent), None) => {
                    // Every value of it, as `remove` does.
                    drop(sent.remove_entry_mult());
                }
                (header::Entry::Vacant(vacant), Some(ours)) => {
                    vacant.insert(ours);
                }
                (header::Entry::Vacant(_), None) => {}
            }
        }
        if no_rules && !carried.request_id {
            appended.request_id = Some(request_id.clone());
        } else {
            headers.insert(X_REQUEST_ID, request_id.clone());
        }
        if no_rules && !carried.external_address {
            appended.external_address = Some(peer_ip.clone());
        } else {
            headers.insert(X_ENVOY_EXTERNAL_ADDRESS, peer_ip.clone());
        }
        if !no_rules {
            forward.headers.request.apply(&mut headers);
            weighted.headers.request.apply(&mut headers);
            // After the header operations: a destination's `host` set is the authority
            // HTTP/2 upstreams get too.
            host = headers.get(header::HOST).cloned();
        }
        Some(UpstreamHead {
            method: parts.method,
            path_and_query,
            authority: host?,
            headers,
            appended,
        })
    }
}

/// Which of the headers `UpstreamHead::new` sets or removes a request carries.
#[derive(Default)]
struct Carried {
    expect: bool,
    forwarded_for: bool,
    forwarded_proto: bool,
    forwarded_client_cert: bool,
    request_id: bool,
    external_address: bool,
}

impl Carried {
    fn of(headers: &HeaderMap) -> Carried {
        let mut carried = Carried::default();
        for name in headers.keys() {
            match name.as_str() {
                "expect" => carried.expect = true,
                "x-forwarded-for" => carried.forwarded_for = true,
                "x-forwarded-proto" => carried.forwarded_proto = true,
                "x-forwarded-client-cert" => carried.forwarded_client_cert = true,
                "x-request-id" => carried.request_id = true,
                "x-envoy-external-address" => carried.external_address = true,
                _ => {}
            }
        }
        carried
    }
}

/// x-forwarded-for with the client's address appended (set to it when empty).
fn forwarded_for(headers: &mut HeaderMap, peer_ip: &HeaderValue) {
    // An entry, not a look-up and then an insert: it hashes the name once.
    match headers.entry(X_FORWARDED_FOR) {
        header::Entry::Occupied(mut existing) if !existing.get().is_empty() => {
            let first = existing.get();
            let mut joined = Vec::with_capacity(first.len() + 1 + peer_ip.len());
            joined.extend_from_slice(first.as_bytes());
            joined.push(b',');
            joined.extend_from_slice(peer_ip.as_bytes());
            if let Ok(v) = HeaderValue::from_maybe_shared(Bytes::from(joined)) {
                // Replaces every value, as an insert does.
                existing.insert(v);
            }
        }
        header::Entry::Occupied(mut empty) => {
            empty.insert(peer_ip.clone());
        }
        header::Entry::Vacant(vacant) => {
            vacant.insert(peer_ip.clone());
        }
    }
}

/// `name`'s place in `HOP_BY_HOP`: one string match, not seven comparisons of names, for
/// every header of every message.
fn hop_by_hop_index(name: &str) -> Option<usize> {
    match name {
        "connection" => Some(0),
        "keep-alive" => Some(1),
        "proxy-connection" => Some(2),
        "proxy-authenticate" => Some(3),
        "te" => Some(4),
        "trailer" => Some(5),
        "transfer-encoding" => Some(6),
        _ => None,
    }
}

/// Removes hop-by-hop headers, including those the Connection header names.
pub(super) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none or only `Connection: keep-alive`: one pass over the names
    // tells which are there, and only those are removed (each removal hashes a name).
    let mut present = 0u8;
    let mut upgrade = false;
    for name in headers.keys() {
        match hop_by_hop_index(name.as_str()) {
            Some(index) => present |= 1 << index,
            None => upgrade |= name == header::UPGRADE,
        }
    }
    if present == 0 && !upgrade {
        return;
    }
    // Names the Connection header adds to the standard ones (rare: no allocation for
    // `keep-alive`, `close` or `upgrade`).
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|name| {
            !["close", "keep-alive", "upgrade"]
                .iter()
                .any(|standard| name.eq_ignore_ascii_case(standard))
        })
        .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok())
        .collect();
    // `TE: trailers` is the one TE value that crosses a proxy: gRPC needs it upstream.
    let te_trailers = headers
        .get(header::TE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    for name in &named {
        headers.remove(name);
    }
    for (index, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << index) != 0 {
            headers.remove(name);
        }
    }
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    // `Upgrade` is hop-by-hop too; an upgrade request puts it back explicitly.
    if upgrade {
        headers.remove(header::UPGRADE);
    }
}

/// A random UUID (version 4), as Envoy generates for `x-request-id`.
pub(super) fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bits = fastrand::u128(..);
    let bits = (bits & !(0xf << 76) | (0x4 << 76)) & !(0x3 << 62) | (0x2 << 62);
    // The 32 digits from the two halves (64-bit shifts, not 128-bit ones), most
    // significant first, then the dashes put in.
    let mut digits = [0u8; 32];
    for (half, word) in [(bits >> 64) as u64, bits as u64].into_iter().enumerate() {
        for (i, out) in digits[half * 16..][..16].iter_mut().enumerate() {
            *out = HEX[((word >> (60 - 4 * i)) & 0xf) as usize];
        }
    }
    let mut id = [b'-'; 36];
    id[..8].copy_from_slice(&digits[..8]);
    id[9..13].copy_from_slice(&digits[8..12]);
    id[14..18].copy_from_slice(&digits[12..16]);
    id[19..23].copy_from_slice(&digits[16..20]);
    id[24..].copy_from_slice(&digits[20..]);
    // Owned by a reference-counted `Bytes` from the start: the copy that goes upstream
    // is a count, not a second allocation (a `Bytes` from a Vec allocates on its first clone).
    HeaderValue::from_maybe_shared(Bytes::from_owner(id))
        .unwrap_or_else(|_| HeaderValue::from_static("-"))
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    #[test]
    fn request_ids_are_version_4_uuids() {
        let id = new_request_id();
        let id = id.to_str().expect("ascii");
        assert!(
            id.bytes()
                .enumerate()
                .all(|(i, b)| if matches!(i, 8 | 13 | 18 | 23) {
                    b == b'-'
                } else {
                    b.is_ascii_hexdigit()
                }),
            "{id}"
        );
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4", "{id}");
        assert!(matches!(&id[19..20], "8" | "9" | "a" | "b"), "{id}");
        assert_ne!(new_request_id().to_str().ok(), Some(id));
    }

    fn head_with_appended() -> UpstreamHead {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("a.example"));
        headers.insert("x-kept", HeaderValue::from_static("1"));
        UpstreamHead {
            method: Method::GET,
            path_and_query: PathAndQuery::from_static("/item"),
            authority: HeaderValue::from_static("a.example"),
            headers,
            appended: Appended {
                forwarded_for: Some(HeaderValue::from_static("10.0.0.1")),
                forwarded_proto: Some(HeaderValue::from_static("http")),
                request_id: Some(HeaderValue::from_static("id-1")),
                external_address: Some(HeaderValue::from_static("10.0.0.1")),
            },
        }
    }

    #[test]
    fn appended_forwarding_headers_go_into_the_map_for_other_clients() {
        let mut head = head_with_appended();
        let names: Vec<_> = head.appended.fields().map(|(name, _)| name).collect();
        assert_eq!(
            names,
            [
                "x-forwarded-for",
                "x-forwarded-proto",
                "x-request-id",
                "x-envoy-external-address"
            ]
        );
        let body = http_body_util::Empty::new()
            .map_err(|never| match never {})
            .boxed();
        let request = head
            .request(UpstreamProtocol::Http1, body, false)
            .expect("request");
        let headers = request.headers();
        assert_eq!(headers["x-forwarded-for"], "10.0.0.1");
        assert_eq!(headers["x-forwarded-proto"], "http");
        assert_eq!(headers["x-request-id"], "id-1");
        assert_eq!(headers["x-envoy-external-address"], "10.0.0.1");
        assert_eq!(headers["x-kept"], "1");
        // Moved, not kept twice: a second try (or the codec's client) sees them once.
        assert_eq!(head.appended.fields().count(), 0);
        assert_eq!(head.headers.get_all("x-request-id").iter().count(), 1);
    }

    #[test]
    fn the_hop_by_hop_index_matches_the_list() {
        for (index, name) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_by_hop_index(name.as_str()), Some(index), "{name}");
        }
        for name in ["upgrade", "host", "x-te", "content-length", "connections"] {
            assert_eq!(hop_by_hop_index(name), None, "{name}");
        }
    }

    #[test]
    fn hop_by_hop_headers_and_the_ones_connection_names_are_removed() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret-hop"),
        );
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert("x-secret-hop", HeaderValue::from_static("1"));
        headers.insert(header::TE, HeaderValue::from_static("gzip"));
        headers.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut headers);
        let left: Vec<_> = headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["x-kept"]);
    }
}
