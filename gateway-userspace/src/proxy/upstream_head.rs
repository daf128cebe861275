//! The request as the upstream gets it: hop-by-hop headers removed, forwarding headers
//! (x-forwarded-for, x-forwarded-proto, XFCC, x-envoy-external-address) and the request
//! id set as Istio's gateway sets them, the route's rewrites and header operations applied.

use bytes::Bytes;
use http::{
    HeaderMap, HeaderName, HeaderValue, Method, Request, Uri, Version, header, uri::PathAndQuery,
};

use super::{
    body::ProxyBody,
    http1::{
        Http1Client,
        client::{Lines, Outbound},
        request_fields::{self, RequestFields},
    },
    route_actions,
    upstream::Outgoing,
};
use crate::{
    route_table::Route,
    snapshot::{Forward, PathRewrite, RouteAction, UpstreamProtocol, WeightedCluster},
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
    /// The same, as the header value it came in.
    pub authority_value: &'a HeaderValue,
    pub request_id: &'a RequestId,
    /// What the replay copies of the connection's requests may hold together.
    pub replay_budget: &'a super::replay::ReplayBudget,
    /// The request carries an Upgrade header (once the edge dropped h2c's).
    pub upgrade_asked: bool,
    /// When the request's head was taken up: the one clock read its timing shares (the
    /// first try's start, a bodiless request's end for the route timeout).
    pub started: std::time::Instant,
}

/// A request's head as every try and mirror sends it.
#[derive(Clone)]
pub(super) struct UpstreamHead {
    pub method: Method,
    pub path_and_query: PathAndQuery,
    /// The Host header's value: HTTP/2 upstreams get it as `:authority`.
    pub authority: HeaderValue,
    /// Empty while `fields` holds the head (`map` makes it whole).
    headers: HeaderMap,
    /// The client's fields as they came, with the edits (`http1::request_fields`), on
    /// plain routes; written from directly by the codec's client.
    fields: Option<Box<RequestFields>>,
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
    /// The client's address: the value of x-forwarded-for and of
    /// x-envoy-external-address, whichever of them are appended (one value, one count).
    peer_ip: Option<HeaderValue>,
    forwarded_for: bool,
    external_address: bool,
    /// The scheme: static text, no value made.
    forwarded_proto: Option<&'static str>,
    request_id: Option<RequestId>,
}

/// Room for the encoded forwarding headers: their names, an id, two IPv6 addresses.
const APPENDED_ROOM: usize = 256;

/// `Appended::encode`'s room and how much of it is written.
struct Room<'r> {
    room: &'r mut [u8; APPENDED_ROOM],
    len: usize,
}

impl Room<'_> {
    fn bytes(&mut self, bytes: &[u8]) -> Option<()> {
        let end = self.len + bytes.len();
        self.room.get_mut(self.len..end)?.copy_from_slice(bytes);
        self.len = end;
        Some(())
    }

    /// Bytes of a length known here: copied as an array, in a few moves (`bytes`'
    /// `copy_from_slice` is a call, and a `memcpy` call, each time).
    fn fixed<const N: usize>(&mut self, bytes: &[u8; N]) -> Option<()> {
        let end = self.len + N;
        let to: &mut [u8; N] = self.room.get_mut(self.len..end)?.try_into().ok()?;
        *to = *bytes;
        self.len = end;
        Some(())
    }
}

impl Appended {
    /// x-forwarded-for appended, the client's address.
    fn forwarded_for(&mut self, peer_ip: &HeaderValue) {
        self.forwarded_for = true;
        self.peer_ip.get_or_insert_with(|| peer_ip.clone());
    }

    /// x-envoy-external-address appended, the client's address.
    fn external_address(&mut self, peer_ip: &HeaderValue) {
        self.external_address = true;
        self.peer_ip.get_or_insert_with(|| peer_ip.clone());
    }

    /// The fields, as name and value, in their order.
    pub(super) fn fields(&self) -> impl Iterator<Item = (&'static str, &[u8])> + Clone {
        let peer_ip = |appended: bool| {
            self.peer_ip
                .as_ref()
                .filter(|_| appended)
                .map(HeaderValue::as_bytes)
        };
        [
            ("x-forwarded-for", peer_ip(self.forwarded_for)),
            ("x-forwarded-proto", self.forwarded_proto.map(str::as_bytes)),
            (
                "x-request-id",
                self.request_id.as_ref().map(RequestId::as_bytes),
            ),
            ("x-envoy-external-address", peer_ip(self.external_address)),
        ]
        .into_iter()
        .filter_map(|(name, value)| value.map(|value| (name, value)))
    }

    /// The fields as the codec writes them (`name: value\r\n`), in `room`; None if
    /// they do not fit.
    fn encode<'r>(&self, room: &'r mut [u8; APPENDED_ROOM]) -> Option<&'r [u8]> {
        let mut out = Room { room, len: 0 };
        let peer_ip = self
            .peer_ip
            .as_ref()
            .map_or(&b""[..], HeaderValue::as_bytes);
        if self.forwarded_for {
            out.fixed(b"x-forwarded-for: ")?;
            out.bytes(peer_ip)?;
            out.fixed(b"\r\n")?;
        }
        if let Some(scheme) = self.forwarded_proto {
            out.fixed(b"x-forwarded-proto: ")?;
            out.bytes(scheme.as_bytes())?;
            out.fixed(b"\r\n")?;
        }
        if let Some(id) = &self.request_id {
            out.fixed(b"x-request-id: ")?;
            out.fixed(&id.0)?;
            out.fixed(b"\r\n")?;
        }
        if self.external_address {
            out.fixed(b"x-envoy-external-address: ")?;
            out.bytes(peer_ip)?;
            out.fixed(b"\r\n")?;
        }
        out.room.get(..out.len)
    }

    /// Moves the fields into `headers` (none of them is there).
    fn move_into(&mut self, headers: &mut HeaderMap) {
        let names = [
            X_FORWARDED_FOR,
            X_FORWARDED_PROTO,
            X_REQUEST_ID,
            X_ENVOY_EXTERNAL_ADDRESS,
        ];
        let peer_ip = self.peer_ip.take();
        let values = [
            peer_ip
                .clone()
                .filter(|_| std::mem::take(&mut self.forwarded_for)),
            self.forwarded_proto.take().map(HeaderValue::from_static),
            self.request_id.take().map(|id| id.value()),
            peer_ip.filter(|_| std::mem::take(&mut self.external_address)),
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
            // The forwarding headers the request lacked, encoded at once (their names are
            // constants: no copy call per name); field by field if they do not fit.
            let mut room = [0u8; APPENDED_ROOM];
            let encoded = self.appended.encode(&mut room);
            let after = encoded.unwrap_or_default();
            let appended = || {
                self.appended
                    .fields()
                    .filter(|_| encoded.is_none())
                    .map(|(name, value)| (name.as_bytes(), value))
            };
            let path = self.path_and_query.as_str();
            let outbound = match &self.fields {
                // The client's lines as they came, when no edit touched them: one copy.
                Some(fields) if let Some(bytes) = fields.lines() => {
                    let lines = Lines {
                        bytes,
                        content_length: fields.get("content-length"),
                        after,
                    };
                    Outbound::new(&self.method, path, lines, appended, body)
                }
                _ => self.outbound_edited(after, encoded.is_none(), body),
            };
            return Ok(Outgoing::Http1(outbound));
        }
        self.request(protocol, body, last_try)
            .map(Outgoing::Request)
    }

    /// `outgoing`'s head for the codec's client from edited fields or the map (`after`:
    /// the appended fields encoded, else `field_by_field`). Out of line: the plain
    /// request's path (its lines as they came) stays small.
    #[inline(never)]
    fn outbound_edited(&self, after: &[u8], field_by_field: bool, body: ProxyBody) -> Outbound {
        let appended = || {
            self.appended
                .fields()
                .filter(|_| field_by_field)
                .map(|(name, value)| (name.as_bytes(), value))
        };
        let path = self.path_and_query.as_str();
        let lines = Lines {
            after,
            ..Lines::default()
        };
        match &self.fields {
            Some(fields) => Outbound::new(
                &self.method,
                path,
                lines,
                || fields.iter().chain(appended()),
                body,
            ),
            None => {
                let fields = || {
                    self.headers
                        .iter()
                        .map(|(name, value)| (name.as_str().as_bytes(), value.as_bytes()))
                        .chain(appended())
                };
                Outbound::new(&self.method, path, lines, fields, body)
            }
        }
    }

    /// The request of one try: origin-form with a Host header for HTTP/1.1, absolute
    /// (`:authority`, no Host) for HTTP/2. The last try takes the headers instead of
    /// copying them. Out of line: the codec's client (`outgoing`) needs no request.
    #[inline(never)]
    pub(super) fn request(
        &mut self,
        protocol: UpstreamProtocol,
        body: ProxyBody,
        last_try: bool,
    ) -> Result<Request<ProxyBody>, http::Error> {
        self.map();
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
    /// The head's header map, made whole from the fields if they were kept (the
    /// forwarding headers the request lacked stay in `appended`).
    pub(super) fn map(&mut self) -> &mut HeaderMap {
        request_fields::whole(&mut self.headers, &mut self.fields)
    }

    /// The request as the upstream gets it: same method, path, Host and body unless the
    /// route rewrites them; hop-by-hop headers removed; forwarding headers set as Istio's
    /// gateway sets them; then the route's and the destination's header operations.
    ///
    /// The request is taken by reference (its method and headers taken out of it): moved
    /// in whole, its parts were copied per request.
    pub(super) fn new<B>(
        request: &mut Request<B>,
        mut fields: Option<Box<RequestFields>>,
        route: &Route<RouteAction>,
        forward: &Forward,
        weighted: &WeightedCluster,
        downstream: &Downstream<'_>,
        is_upgrade: bool,
    ) -> Option<UpstreamHead> {
        // A backendRef's own URLRewrite replaces the route's for its share.
        let rewrite = weighted.rewrite.as_ref().or(forward.rewrite.as_ref());
        let path_and_query = match rewrite.and_then(|r| r.path.as_ref()) {
            Some(rewrite) => rewritten_path(rewrite, request.uri(), route)?,
            None => request
                .uri()
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
        };
        let no_rules = forward.headers.request.is_empty() && weighted.headers.request.is_empty();
        let method = std::mem::take(request.method_mut());
        if no_rules
            && !is_upgrade
            && let Some(fields) = fields.take()
        {
            return edit_fields(
                fields,
                method,
                path_and_query,
                rewrite.and_then(|r| r.authority.as_deref()),
                downstream,
            );
        }
        edit_map(
            request.headers_mut(),
            fields,
            (method, path_and_query),
            rewrite.and_then(|r| r.authority.as_deref()),
            (forward, weighted),
            downstream,
            is_upgrade,
        )
    }
}

/// `UpstreamHead::new` on the header map: for a route with request header rules, an
/// upgrade, or a request whose fields the codec did not keep (hyper's server). Out of
/// line: the plain route's path (`edit_fields`) stays small.
#[inline(never)]
fn edit_map(
    request_headers: &mut HeaderMap,
    mut fields: Option<Box<RequestFields>>,
    (method, path_and_query): (Method, PathAndQuery),
    rewritten_authority: Option<&str>,
    (forward, weighted): (&Forward, &WeightedCluster),
    downstream: &Downstream<'_>,
    is_upgrade: bool,
) -> Option<UpstreamHead> {
    let Downstream {
        peer_ip,
        scheme,
        client_cert,
        authority,
        request_id,
        ..
    } = *downstream;
    let no_rules = forward.headers.request.is_empty() && weighted.headers.request.is_empty();
    let mut headers = std::mem::take(request_headers);
    request_fields::whole(&mut headers, &mut fields);
    // Which of the names below the request carries, from one pass over its names:
    // the ones it lacks are not looked up (hashed) at all.
    let carried = Carried::of(&headers);
    // Without request header rules nothing reads the map before it is written, so
    // forwarding headers the request lacks need not go into it (`Appended`).
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
    let new_host = match rewritten_authority {
        Some(rewritten) => Some(rewritten),
        None if host.as_ref().is_some_and(|h| h == authority) => None,
        None => Some(authority),
    };
    if let Some(new_host) = new_host.and_then(|h| HeaderValue::from_str(h).ok()) {
        headers.insert(header::HOST, new_host.clone());
        host = Some(new_host);
    }
    if no_rules && !carried.forwarded_for {
        appended.forwarded_for(peer_ip);
    } else {
        forwarded_for(&mut headers, peer_ip);
    }
    if no_rules && !carried.forwarded_proto {
        appended.forwarded_proto = Some(scheme);
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
        appended.request_id = Some(*request_id);
    } else {
        headers.insert(X_REQUEST_ID, request_id.value());
    }
    if no_rules && !carried.external_address {
        appended.external_address(peer_ip);
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
        method,
        path_and_query,
        authority: host?,
        headers,
        fields: None,
        appended,
    })
}

/// The path a URLRewrite filter gives the request (rare: out of line).
#[cold]
#[inline(never)]
fn rewritten_path(
    rewrite: &PathRewrite,
    uri: &Uri,
    route: &Route<RouteAction>,
) -> Option<PathAndQuery> {
    let original = uri.path_and_query().map_or("/", |p| p.as_str());
    let rewritten = route_actions::rewrite_path_and_query(rewrite, original, &route.matches);
    PathAndQuery::try_from(rewritten).ok()
}

/// `UpstreamHead::new` on the fields as they came, for a route without request header
/// rules and a request that is not an upgrade: the same edits, in the same order, made
/// with the map's semantics (`request_fields`), so the upstream gets the same bytes.
fn edit_fields(
    mut fields: Box<RequestFields>,
    method: Method,
    path_and_query: PathAndQuery,
    rewritten_authority: Option<&str>,
    downstream: &Downstream<'_>,
) -> Option<UpstreamHead> {
    let Downstream {
        peer_ip,
        scheme,
        client_cert,
        authority,
        authority_value,
        request_id,
        ..
    } = *downstream;
    let mut appended = Appended::default();
    // A head none of whose names is hop-by-hop or forwarding (nearly all) skips the
    // look-ups: every forwarding header is appended.
    let edited = fields.edited;
    if edited {
        fields.strip_hop_by_hop();
        if fields
            .get("expect")
            .is_some_and(|v| v.eq_ignore_ascii_case(b"100-continue"))
        {
            fields.remove("expect");
        }
    }
    let sent_host = fields.get("host");
    let host_is_authority = sent_host.is_some_and(|h| h == authority.as_bytes());
    let new_host = match rewritten_authority {
        Some(rewritten) => Some(rewritten),
        None if host_is_authority => None,
        None => Some(authority),
    };
    let host = match new_host.and_then(|h| HeaderValue::from_str(h).ok()) {
        Some(new_host) => {
            fields.insert("host", new_host.clone());
            Some(new_host)
        }
        // The Host sent is the authority's value, already made (a count, no look-up).
        None if host_is_authority => Some(authority_value.clone()),
        None => fields.get_value("host"),
    };
    let carried = |fields: &RequestFields, name: &str| edited && fields.get(name).is_some();
    match fields.get("x-forwarded-for").filter(|_| edited) {
        Some(sent) if !sent.is_empty() => {
            if let Some(v) = joined_forwarded_for(sent, peer_ip) {
                fields.insert("x-forwarded-for", v);
            }
        }
        Some(_) => fields.insert("x-forwarded-for", peer_ip.clone()),
        None => appended.forwarded_for(peer_ip),
    }
    if carried(&fields, "x-forwarded-proto") {
        fields.insert("x-forwarded-proto", HeaderValue::from_static(scheme));
    } else {
        appended.forwarded_proto = Some(scheme);
    }
    // Envoy's SANITIZE_SET (Istio's gateway default): never trust the client's XFCC.
    match client_cert.and_then(|cert| HeaderValue::from_str(cert).ok()) {
        Some(ours) => fields.insert("x-forwarded-client-cert", ours),
        None if edited => {
            fields.remove("x-forwarded-client-cert");
        }
        None => {}
    }
    if carried(&fields, "x-request-id") {
        fields.insert("x-request-id", request_id.value());
    } else {
        appended.request_id = Some(*request_id);
    }
    if carried(&fields, "x-envoy-external-address") {
        fields.insert("x-envoy-external-address", peer_ip.clone());
    } else {
        appended.external_address(peer_ip);
    }
    Some(UpstreamHead {
        method,
        path_and_query,
        authority: host?,
        headers: HeaderMap::new(),
        fields: Some(fields),
        appended,
    })
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
            if let Some(v) = joined_forwarded_for(existing.get().as_bytes(), peer_ip) {
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

/// The x-forwarded-for a client sent (not empty) with its address appended. Out of line:
/// a client at the edge sends none.
#[cold]
#[inline(never)]
fn joined_forwarded_for(sent: &[u8], peer_ip: &HeaderValue) -> Option<HeaderValue> {
    let mut joined = Vec::with_capacity(sent.len() + 1 + peer_ip.len());
    joined.extend_from_slice(sent);
    joined.push(b',');
    joined.extend_from_slice(peer_ip.as_bytes());
    HeaderValue::from_maybe_shared(Bytes::from(joined)).ok()
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

/// A request's id: a random UUID (version 4), as Envoy generates for `x-request-id`,
/// kept as its text (no allocation unless a map needs it as a value).
#[derive(Clone, Copy)]
pub(super) struct RequestId([u8; 36]);

impl RequestId {
    pub(super) fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub(super) fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or("-")
    }

    /// The id as a header value (for a map).
    pub(super) fn value(&self) -> HeaderValue {
        // Owned by a reference-counted `Bytes` from the start: the copy that goes
        // upstream is a count, not a second allocation.
        HeaderValue::from_maybe_shared(Bytes::from_owner(self.0))
            .unwrap_or_else(|_| HeaderValue::from_static("-"))
    }
}

/// 16 hex digits (lowercase) of `word`, most significant first, without a loop over
/// the digits: each nibble spread to a byte, then turned into its digit all at once.
fn hex_digits(word: u64) -> [u8; 16] {
    fn eight(half: u32) -> u64 {
        let mut x = u64::from(half);
        x = (x | (x << 16)) & 0x0000_ffff_0000_ffff;
        x = (x | (x << 8)) & 0x00ff_00ff_00ff_00ff;
        x = (x | (x << 4)) & 0x0f0f_0f0f_0f0f_0f0f;
        // Nibble k is byte k now. 0x30 + n for 0-9; 0x61 + n - 10 for a-f (0x27 more):
        // n + 6 carries into bit 4 exactly when n > 9.
        let letters = ((x + 0x0606_0606_0606_0606) >> 4) & 0x0101_0101_0101_0101;
        x + 0x3030_3030_3030_3030 + letters * 0x27
    }
    // Joined as numbers: `copy_from_slice` is a call, and a `memcpy` call, per copy.
    ((u128::from(eight((word >> 32) as u32)) << 64) | u128::from(eight(word as u32))).to_be_bytes()
}

/// A random UUID (version 4), as Envoy generates for `x-request-id`.
pub(super) fn new_request_id() -> RequestId {
    let bits = fastrand::u128(..);
    let bits = (bits & !(0xf << 76) | (0x4 << 76)) & !(0x3 << 62) | (0x2 << 62);
    let high = hex_digits((bits >> 64) as u64);
    let low = hex_digits(bits as u64);
    // Byte by byte, as the compiler then moves them (five `copy_from_slice` were ten calls).
    let (h, l) = (high, low);
    RequestId([
        h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7], b'-', h[8], h[9], h[10], h[11], b'-',
        h[12], h[13], h[14], h[15], b'-', l[0], l[1], l[2], l[3], b'-', l[4], l[5], l[6], l[7],
        l[8], l[9], l[10], l[11], l[12], l[13], l[14], l[15],
    ])
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    #[test]
    fn request_ids_are_version_4_uuids() {
        let id = new_request_id();
        let id = id.as_str();
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
        assert_ne!(new_request_id().as_str(), id);
        assert_eq!(new_request_id().value().len(), 36);
    }

    #[test]
    fn hex_digits_are_format_s() {
        let mut words = vec![0, 1, 9, 10, 15, 16, u64::MAX, 0x0123_4567_89ab_cdef];
        words.extend((0..1000).map(|_| fastrand::u64(..)));
        for word in words {
            assert_eq!(
                hex_digits(word),
                *format!("{word:016x}").as_bytes(),
                "{word:x}"
            );
        }
    }

    fn head_with_appended(request_id: RequestId) -> UpstreamHead {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("a.example"));
        headers.insert("x-kept", HeaderValue::from_static("1"));
        UpstreamHead {
            method: Method::GET,
            path_and_query: PathAndQuery::from_static("/item"),
            authority: HeaderValue::from_static("a.example"),
            headers,
            fields: None,
            appended: Appended {
                peer_ip: Some(HeaderValue::from_static("10.0.0.1")),
                forwarded_for: true,
                external_address: true,
                forwarded_proto: Some("http"),
                request_id: Some(request_id),
            },
        }
    }

    #[test]
    fn appended_forwarding_headers_go_into_the_map_for_other_clients() {
        let id = new_request_id();
        let mut head = head_with_appended(id);
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
        assert_eq!(headers["x-request-id"], id.as_str());
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
