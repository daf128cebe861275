//! One request, from the top: `handle` reads the live configuration, `route` checks the
//! request and finds its route, the route's action answers (a redirect or a direct
//! response here; a forward in `forward_action.rs`), and `handle` records the outcome in
//! the metrics and the access log.

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Instant, SystemTime},
};

use http::{HeaderValue, Method, Request, Response, Uri, Version, header};

use super::{
    access_log::{AccessLogEntry, AccessLogFormat, ClientCertificate},
    body::{ClientBody, ProxyBody},
    boxed,
    context::ProxyContext,
    edge_headers, forward_action,
    head_facts::{HeadFacts, Upgrade},
    http1::{
        passed::{self, PassedFields, ResponseFields},
        request_fields,
    },
    limits,
    local_reply::LocalReply,
    outcome::Outcome,
    replay::ReplayBudget,
    route_actions, tunnel,
    upstream_head::{Downstream, RequestId, X_FORWARDED_FOR, new_request_id},
};
use crate::{
    authz::{Attributes, HttpAttributes},
    metrics::{Destination, RequestKey},
    route_table::{RequestInfo, Route},
    runtime::Live,
    snapshot::{Listener, LocalCors, RouteAction, Transport},
};

/// An address as a header value, formatted on the stack: the value's own copy is the one
/// allocation (a `to_string` first would add two, at every accepted connection). IPv4 is
/// written digit by digit: `core::fmt` spent ~1 000 instructions per connection on it
/// (callgrind, `xtask/scripts/conn_callgrind.py`).
fn ip_header_value(ip: std::net::IpAddr) -> HeaderValue {
    use std::io::Write as _;
    if let std::net::IpAddr::V4(v4) = ip {
        let mut text = [0u8; 15];
        let mut len = 0;
        for (i, octet) in v4.octets().into_iter().enumerate() {
            if i > 0 {
                text[len] = b'.';
                len += 1;
            }
            if octet >= 100 {
                text[len] = b'0' + octet / 100;
                len += 1;
            }
            if octet >= 10 {
                text[len] = b'0' + octet / 10 % 10;
                len += 1;
            }
            text[len] = b'0' + octet % 10;
            len += 1;
        }
        return HeaderValue::from_bytes(&text[..len])
            .unwrap_or_else(|_| HeaderValue::from_static("-"));
    }
    // The longest IPv6 text (`ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255`) is 45.
    let mut text = [0u8; 48];
    let mut cursor = std::io::Cursor::new(&mut text[..]);
    write!(cursor, "{ip}")
        .ok()
        .and_then(|()| usize::try_from(cursor.position()).ok())
        .and_then(|len| HeaderValue::from_bytes(&text[..len]).ok())
        .unwrap_or_else(|| HeaderValue::from_static("-"))
}

/// The client's address as a header value, from this worker's last one when the client is
/// the same (a busy client opens connection after connection): formatted and copied once
/// per worker and address, and shared by count after (a fresh value was two allocations
/// per connection, its copy and the count it took at its first clone).
fn peer_ip_value(ip: std::net::IpAddr) -> HeaderValue {
    thread_local! {
        static LAST: std::cell::RefCell<Option<(std::net::IpAddr, HeaderValue)>> =
            const { std::cell::RefCell::new(None) };
    }
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        match &*last {
            Some((cached, value)) if *cached == ip => value.clone(),
            _ => {
                let value = ip_header_value(ip);
                *last = Some((ip, value.clone()));
                value
            }
        }
    })
}

/// The `server` header of every answer, as Istio's gateways send it.
const SERVER_NAME: &str = "istio-envoy";

/// One accepted connection. Each of its requests is served by the configuration that is
/// live when the request arrives; only the TLS session (the server SNI chose, the client
/// certificate) belongs to the connection.
pub(super) struct Connection {
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub ctx: Arc<ProxyContext>,
    /// Set on connections that TLS terminated: scheme https, SNI's server (421), XFCC;
    /// with the listener's TLS servers as they were at the handshake.
    pub tls: Option<(Arc<crate::tls::TlsConnectionInfo>, Arc<Transport>)>,
    /// The client's address as x-forwarded-for and x-envoy-external-address carry it.
    peer_ip: HeaderValue,
    /// The listener's drain: the connection closes between requests once it stops, and
    /// at its deadline; upgraded connections that outlive the request end then too.
    drain: tunnel::Drain,
    /// What the replay copies of this connection's requests may hold together.
    replay_budget: ReplayBudget,
}

impl Connection {
    pub(super) fn new(
        peer: SocketAddr,
        local: SocketAddr,
        ctx: Arc<ProxyContext>,
        tls: Option<(Arc<crate::tls::TlsConnectionInfo>, Arc<Transport>)>,
    ) -> Self {
        let peer_ip = peer_ip_value(peer.ip());
        Connection {
            peer,
            local,
            replay_budget: ReplayBudget::new(ctx.limits.max_replay_bytes_per_connection),
            ctx,
            tls,
            peer_ip,
            drain: tunnel::Drain::default(),
        }
    }

    /// Upgraded connections of this connection end at `drain`'s deadline.
    pub(super) fn with_drain(mut self, drain: tunnel::Drain) -> Self {
        self.drain = drain;
        self
    }

    /// The listener's drain, as this connection sees it.
    pub(super) fn drain(&self) -> &tunnel::Drain {
        &self.drain
    }

    /// The answer to `request` as a response with its whole header map (for hyper's
    /// servers).
    pub(super) async fn handle(&self, request: Request<ClientBody>) -> Response<ProxyBody> {
        let facts = HeadFacts::of(request.headers());
        self.answer(request, facts).await.into_response()
    }

    /// The answer to `request`: the response, and the upstream head's fields when they
    /// are passed as they came (`http1::passed`; the codec writes them). `facts`: what
    /// the request's head says (`head_facts.rs`).
    ///
    /// Not an async fn: an async fn copies its arguments (the request, ~270 bytes) into
    /// locals of its body first (rust-lang/rust#62958); the block uses them in place. Inlined,
    /// so that the request is written into the future where it is made.
    #[allow(clippy::manual_async_fn)] // on purpose: see above
    #[inline]
    pub(super) fn answer(
        &self,
        request: Request<ClientBody>,
        mut facts: HeadFacts,
    ) -> impl Future<Output = Answered> {
        async move {
            let started = Instant::now();
            let version = request.version();
            // What the access log needs from the request, kept only when there is a log (the
            // values are reference-counted, not copied; boxed, so that without a log this
            // future, moved with every request, carries a pointer's room for it).
            let logged = (self.ctx.access_log != AccessLogFormat::Off).then(|| {
                Box::new(LoggedRequest {
                    start_time: SystemTime::now(),
                    method: request.method().clone(),
                    uri: edge_headers::logged_uri(
                        request.method(),
                        request.uri(),
                        self.ctx.path_normalization,
                    ),
                    user_agent: request_fields::get_value(
                        request.headers(),
                        facts.fields.as_deref(),
                        &header::USER_AGENT,
                    ),
                    forwarded_for: request_fields::get_value(
                        request.headers(),
                        facts.fields.as_deref(),
                        &X_FORWARDED_FOR,
                    ),
                })
            });
            let authority = request_authority(&request, facts.host.take());
            // Every request here is external: Envoy replaces a client's x-request-id at the
            // edge (`preserve_external_request_id` off, as Istio leaves it).
            let request_id = new_request_id();
            let request_is_grpc = facts.grpc;
            // This request's configuration and cluster state, whatever reloads happen while
            // it is served; the next request on the connection reads the live one again.
            let live = self.ctx.live.load_full();

            // Pinned where it is made: awaited as a value, the route's future was made and
            // then copied whole into this one.
            let outcome = std::pin::pin!(self.route(
                &live,
                request,
                facts,
                (authority.as_ref(), &request_id),
                started
            ))
            .await;
            // The gateway's own answers to gRPC become trailers-only gRPC responses (status 200
            // in the log and metrics, as Envoy records them); upstream answers pass unchanged.
            let transport_failure = outcome.answer.transport_failure();
            let (mut response, mut passed, flags) = outcome.answer.into_response(request_is_grpc);
            // Istio names its gateway in every answer, the upstream's Server header replaced
            // (Envoy's default server_header_transformation, OVERWRITE).
            ResponseFields {
                map: response.headers_mut(),
                passed: &mut passed,
            }
            .insert_of(
                passed::Kind::Server,
                header::SERVER,
                HeaderValue::from_static(SERVER_NAME),
            );

            let status = response.status();
            let key = RequestKey {
                response_code: status.as_u16(),
                response_flags: flags.as_str(),
                http2: version == Version::HTTP_2,
            };
            let elapsed = match outcome.answered_at {
                Some(at) => at.saturating_duration_since(started),
                None => started.elapsed(),
            };
            let duration_ms = elapsed.as_secs_f64() * 1000.0;
            let metrics = &self.ctx.metrics;
            match outcome.cluster {
                Some(cluster) => metrics.record_request(
                    &cluster.state.stats,
                    &Destination {
                        service: &cluster.service,
                        name: &cluster.service_name,
                        namespace: &cluster.service_namespace,
                    },
                    key,
                    duration_ms,
                ),
                None => metrics.record_request(
                    &self.ctx.local_stats,
                    &Destination::UNKNOWN,
                    key,
                    duration_ms,
                ),
            }
            let Some(logged) = logged else {
                return Answered { response, passed };
            };
            self.ctx.access_log.write(&AccessLogEntry {
                start_time: logged.start_time,
                method: logged.method.as_str(),
                path: logged.uri.path_and_query().map_or("/", |p| p.as_str()),
                version,
                status: status.as_u16(),
                flags: flags.as_str(),
                transport_failure,
                response_bytes: passed::get(
                    response.headers(),
                    passed.as_deref(),
                    &header::CONTENT_LENGTH,
                )
                .and_then(passed::as_text),
                duration: elapsed,
                forwarded_for: logged.forwarded_for.as_ref().and_then(|v| v.to_str().ok()),
                user_agent: logged.user_agent.as_ref().and_then(|v| v.to_str().ok()),
                request_id: request_id.as_str(),
                authority: authority.as_ref().and_then(|a| a.to_str().ok()),
                upstream: outcome.upstream,
                cluster: outcome.cluster.map(|c| c.cluster.name.as_str()),
                downstream_local: self.local,
                downstream_peer: self.peer,
                requested_server_name: self.tls.as_ref().and_then(|(tls, _)| tls.sni.as_deref()),
                client_certificate: self.client_certificate(),
            });
            Answered { response, passed }
        }
    }

    /// Finds the request's route in `live` and applies its action.
    ///
    /// Not an async fn, and inlined, as `answer`.
    #[allow(clippy::manual_async_fn)] // on purpose: see above
    #[inline]
    fn route<'s>(
        &'s self,
        live: &'s Arc<Live>,
        mut request: Request<ClientBody>,
        mut facts: HeadFacts,
        (authority_value, request_id): (Option<&HeaderValue>, &RequestId),
        started: Instant,
    ) -> impl Future<Output = Outcome<'s>> {
        async move {
            let authority = authority_value.and_then(|a| a.to_str().ok());
            if let Some(status) = facts.framing_problem() {
                // The message boundaries are in doubt: answer and close the connection so
                // nothing after this request is read with the wrong framing.
                return LocalReply::ambiguous_framing(status).into();
            }
            if limits::declared_body_too_large(facts.declared_length, &self.ctx.limits) {
                // Refused before anything is forwarded; the unread body ends the connection.
                return LocalReply::payload_too_large().closing().into();
            }
            let (Some(authority), Some(authority_value)) = (authority, authority_value) else {
                return LocalReply::bad_request().into();
            };
            let Some(listener) = self.listener(live) else {
                return LocalReply::no_route().into();
            };
            // The head's fields as they came (`http1::request_fields`): authorization and
            // header matches read the map, which is made of them then; a plain route takes
            // them to the upstream as they are.
            if !listener.authz.http.is_empty() || listener.routes.reads_headers() {
                request_fields::whole(request.headers_mut(), &mut facts.fields);
            }
            if let Some((tls, transport)) = &self.tls
                && let Some(listener_tls) = transport.tls()
                && tls.is_misdirected(listener_tls, authority)
            {
                return LocalReply::misdirected().into();
            }
            if let Err(edge_headers::Refusal::BadPath) =
                edge_headers::admit(&mut request, self.ctx.path_normalization, &mut facts)
            {
                return LocalReply::bad_request().into();
            }
            if !self.authorized(listener, &request, authority) {
                return LocalReply::rbac_denied().into();
            }
            let info = RequestInfo {
                authority,
                path: request.uri().path(),
                query: request.uri().query(),
                method: request.method().as_str(),
                scheme: self.scheme(),
                port: listener.port,
                headers: request.headers(),
            };
            let Some(route) = listener.routes.find(&info) else {
                return LocalReply::no_route().into();
            };
            if edge_headers::refused_upgrade(request.method(), facts.upgrade) {
                self.ctx.metrics.upgrades_refused.inc();
                return LocalReply::refused_upgrade(edge_headers::REFUSED_UPGRADE_STATUS).into();
            }
            if !matches!(route.action, RouteAction::Forward(_)) {
                // The gateway's own answers read the request's headers (CORS).
                request_fields::whole(request.headers_mut(), &mut facts.fields);
            }
            match &route.action {
                RouteAction::Forward(forward) => {
                    let downstream = Downstream {
                        peer: self.peer,
                        peer_ip: &self.peer_ip,
                        scheme: self.scheme(),
                        client_cert: self
                            .tls
                            .as_ref()
                            .and_then(|(tls, _)| tls.client_cert.as_deref()),
                        authority,
                        authority_value,
                        request_id,
                        replay_budget: &self.replay_budget,
                        upgrade_asked: facts.upgrade != Upgrade::None,
                        started,
                    };
                    let ctx = &self.ctx;
                    // Boxed: a forward's future (the tries, the upstream exchange) is most of
                    // a request's, and each future it is nested in would carry room for it
                    // and be moved whole (a memcpy per level and request).
                    boxed::pinned(|| {
                        forward_action::forward(
                            ctx,
                            live,
                            (request, facts.fields.take()),
                            route,
                            forward,
                            &downstream,
                            &self.drain,
                        )
                    })
                    .await
                }
                _ => self.local_action(route, &request, authority).into(),
            }
        }
    }

    /// The answer of a route the gateway answers itself (a redirect, a direct response):
    /// out of line, as the rare path it is, so the forward's stays small.
    #[cold]
    #[inline(never)]
    fn local_action(
        &self,
        route: &Route<RouteAction>,
        request: &Request<ClientBody>,
        authority: &str,
    ) -> LocalReply {
        match &route.action {
            RouteAction::Redirect(redirect) => {
                if let Some(preflight) = local_preflight(redirect.cors.as_deref(), request) {
                    return preflight;
                }
                let path_and_query = request.uri().path_and_query().map_or("/", |p| p.as_str());
                let location = route_actions::redirect_location(
                    redirect,
                    self.scheme(),
                    authority,
                    path_and_query,
                    &route.matches,
                );
                let mut reply = LocalReply::redirect(redirect, &location);
                reply.add_cors(
                    redirect.cors.as_deref().map(|c| &c.policy),
                    request.headers(),
                );
                reply
            }
            RouteAction::DirectResponse(direct) => {
                if let Some(preflight) = local_preflight(direct.cors.as_deref(), request) {
                    return preflight;
                }
                let mut reply = LocalReply::direct_response(direct);
                reply.add_cors(direct.cors.as_deref().map(|c| &c.policy), request.headers());
                reply
            }
            RouteAction::Unsupported(what) => LocalReply::unsupported(what),
            // Forwarded by the caller.
            RouteAction::Forward(_) => LocalReply::no_route(),
        }
    }

    /// Whether the listener's AuthorizationPolicies let the request through: evaluated on
    /// the normalized path, before routing, as Envoy's RBAC filter runs before its router.
    fn authorized<B>(&self, listener: &Listener, request: &Request<B>, authority: &str) -> bool {
        let engine = &listener.authz.http;
        if engine.is_empty() {
            return true;
        }
        let tls = self.tls.as_ref().map(|(tls, _)| &**tls);
        let attributes = Attributes {
            peer: self.peer.ip(),
            remote: super::authz::remote_address(
                self.peer.ip(),
                request.headers(),
                self.ctx.num_trusted_proxies,
            ),
            destination: self.local,
            sni: tls.and_then(|t| t.sni.as_deref()),
            principal: tls.and_then(|t| t.principal.as_deref()),
            http: Some(HttpAttributes {
                host: authority,
                method: request.method().as_str(),
                path: request.uri().path(),
                headers: request.headers(),
            }),
        };
        super::authz::allowed(&self.ctx, engine, &attributes)
    }

    /// The connection's client certificate as the access log reports it.
    fn client_certificate(&self) -> ClientCertificate {
        match self.tls.as_ref() {
            Some((tls, _)) if tls.unverified_client_cert => ClientCertificate::Unverified,
            Some((tls, _)) if tls.client_cert.is_some() => ClientCertificate::Verified,
            _ => ClientCertificate::None,
        }
    }

    /// `https` on connections TLS terminated.
    fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    /// The snapshot's listener for the address and port this connection arrived on
    /// (`Snapshot::listener_for`).
    fn listener<'l>(&self, live: &'l Live) -> Option<&'l Listener> {
        live.snapshot.listener_for(self.local)
    }
}

/// A response, and the upstream head's fields when they are passed as they came: its
/// map is empty then (`http1::passed`).
pub(super) struct Answered {
    pub response: Response<ProxyBody>,
    pub passed: Option<Box<PassedFields>>,
}

impl Answered {
    /// The response with its whole header map.
    pub(super) fn into_response(self) -> Response<ProxyBody> {
        let Answered {
            mut response,
            mut passed,
        } = self;
        passed::whole(response.headers_mut(), &mut passed);
        response
    }
}

/// What the access log needs of a request after the request itself has moved on.
struct LoggedRequest {
    start_time: SystemTime,
    method: Method,
    uri: Uri,
    user_agent: Option<HeaderValue>,
    forwarded_for: Option<HeaderValue>,
}

/// HTTP/2's :authority, else the Host header (`host`, the head's first).
fn request_authority<B>(request: &Request<B>, host: Option<HeaderValue>) -> Option<HeaderValue> {
    match request.uri().authority() {
        Some(authority) => HeaderValue::from_str(authority.as_str()).ok(),
        None => host,
    }
    .filter(|a| !a.is_empty())
}

/// Envoy's CORS filter ahead of a route the gateway answers itself: a preflight it allows
/// (or, with `unmatchedPreflights: IGNORE`, one it does not) is answered by the filter.
fn local_preflight<B>(cors: Option<&LocalCors>, request: &Request<B>) -> Option<LocalReply> {
    let cors = cors?;
    if !route_actions::is_preflight(request.method(), request.headers()) {
        return None;
    }
    match route_actions::allowed_origin(&cors.policy, request.headers()) {
        Some(origin) => Some(LocalReply::preflight(
            &cors.policy,
            Some(origin),
            request.headers(),
        )),
        None if cors.answers_unmatched_preflights => {
            Some(LocalReply::preflight(&cors.policy, None, request.headers()))
        }
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv6Addr};

    use super::{ip_header_value, peer_ip_value};

    #[test]
    fn addresses_become_header_values_as_written() {
        for ip in [
            IpAddr::from([10, 0, 0, 7]),
            IpAddr::from([255, 255, 255, 255]),
            IpAddr::from([0, 0, 0, 0]),
            IpAddr::from([192, 168, 100, 9]),
            IpAddr::from([1, 20, 100, 109]),
            IpAddr::from(Ipv6Addr::LOCALHOST),
            // The longest text an address has.
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
                .parse()
                .expect("ip"),
            "::ffff:255.255.255.255".parse().expect("ip"),
        ] {
            assert_eq!(
                ip_header_value(ip).to_str().ok(),
                Some(ip.to_string().as_str())
            );
        }
    }

    #[test]
    fn a_worker_s_peer_address_value_is_the_address_s() {
        let first = IpAddr::from([10, 0, 0, 7]);
        let second = IpAddr::from(Ipv6Addr::LOCALHOST);
        // The same address again (from the cache), another one, and the first again.
        for ip in [first, first, second, second, first] {
            assert_eq!(
                peer_ip_value(ip).to_str().ok(),
                Some(ip.to_string().as_str())
            );
        }
        // The cached value is shared, not copied: the same bytes.
        assert_eq!(
            peer_ip_value(first).as_bytes().as_ptr(),
            peer_ip_value(first).as_bytes().as_ptr()
        );
    }
}
