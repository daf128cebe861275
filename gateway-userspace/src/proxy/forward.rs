//! One request: route it, apply the route's action (redirect, direct response, or a
//! forward with rewrites, header operations, faults, CORS, mirrors, retries and timeouts),
//! rewrite its headers as Istio's gateway does, and answer locally (404, 503, 502, 504)
//! when it cannot be forwarded.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use bytes::Bytes;
use http::{
    HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri, Version,
    header, uri::PathAndQuery,
};
use http_body_util::{BodyExt, Empty, Full, combinators::BoxBody};
use hyper::body::{Body as _, Incoming};
use hyper_util::rt::TokioIo;

use super::{
    ProxyContext,
    access_log::{AccessLogEntry, AccessLogFormat},
    edge_headers, grpc, limits,
    replay::{ReplayBody, ReplayBudget},
    route_actions::{self, TryFailure},
    tunnel,
    upstream::{self, UpstreamBody},
};
use crate::{
    metrics::{Destination, RequestKey},
    route_table::{RequestInfo, Route},
    snapshot::{
        Cluster, Forward, Listener, RouteAction, Snapshot, UpstreamProtocol, WeightedCluster,
    },
};

/// Bodies in both directions: a request body can fail for a reason of ours (the body
/// limit), not only hyper's.
pub(super) type ProxyBody = BoxBody<Bytes, BoxError>;
pub(super) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Envoy's response flags, as its access log and Istio's metrics spell them.
pub(super) mod flags {
    pub(crate) const NONE: &str = "-";
    /// No route matched.
    pub(crate) const NO_ROUTE: &str = "NR";
    /// No healthy (ready) upstream endpoint.
    pub(crate) const NO_HEALTHY_UPSTREAM: &str = "UH";
    /// Upstream connection failure.
    pub(crate) const UPSTREAM_FAILURE: &str = "UF";
    /// Upstream protocol error.
    pub(crate) const UPSTREAM_PROTOCOL_ERROR: &str = "UPE";
    /// Downstream protocol error (bad request).
    pub(crate) const DOWNSTREAM_PROTOCOL_ERROR: &str = "DPE";
    /// The upstream closed or reset the connection before answering.
    pub(crate) const UPSTREAM_CONNECTION_TERMINATION: &str = "UC";
    /// The route's timeout (or the last per-try timeout) expired.
    pub(crate) const UPSTREAM_REQUEST_TIMEOUT: &str = "UT";
    /// Retries were exhausted; the last answer is passed on.
    pub(crate) const UPSTREAM_RETRY_LIMIT_EXCEEDED: &str = "URX";
    pub(crate) const UPSTREAM_FAILURE_RETRIES_EXCEEDED: &str = "UF,URX";
    pub(crate) const UPSTREAM_CONNECTION_TERMINATION_RETRIES_EXCEEDED: &str = "UC,URX";
    /// The upstream reset the stream (HTTP/2 RST_STREAM, here REFUSED_STREAM).
    pub(crate) const UPSTREAM_REMOTE_RESET: &str = "UR";
    pub(crate) const UPSTREAM_REMOTE_RESET_RETRIES_EXCEEDED: &str = "UR,URX";
    pub(crate) const UPSTREAM_REQUEST_TIMEOUT_RETRIES_EXCEEDED: &str = "UT,URX";
    /// Fault injection delayed / aborted the request.
    pub(crate) const DELAY_INJECTED: &str = "DI";
    pub(crate) const FAULT_INJECTED: &str = "FI";
    pub(crate) const DELAY_AND_FAULT_INJECTED: &str = "DI,FI";
    /// The request body stopped arriving for the stream idle timeout.
    pub(crate) const STREAM_IDLE_TIMEOUT: &str = "SI";
    /// The cluster's connection pool limits were reached (circuit breaking).
    pub(crate) const UPSTREAM_OVERFLOW: &str = "UO";
}

/// Mirrored requests in flight at once (all workers); more are dropped, not queued.
const MAX_MIRRORS_IN_FLIGHT: usize = 256;
/// A mirrored request gets the route's timeout, or this long when the route has none
/// (Istio's routes have none by default); its answer is never waited for by anyone.
const DEFAULT_MIRROR_TIMEOUT: Duration = Duration::from_secs(15);
static MIRRORS_IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);
/// First retry back-off; doubled per retry up to `RETRY_BACKOFF_MAX` (Envoy's 25 ms base).
const RETRY_BACKOFF_BASE: Duration = Duration::from_millis(25);
const RETRY_BACKOFF_MAX: Duration = Duration::from_millis(250);

/// Hop-by-hop headers (RFC 9110 §7.6.1) that one connection must not pass to the next.
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_FORWARDED_CLIENT_CERT: HeaderName = HeaderName::from_static("x-forwarded-client-cert");
const X_ENVOY_EXTERNAL_ADDRESS: HeaderName = HeaderName::from_static("x-envoy-external-address");
const X_ENVOY_UPSTREAM_SERVICE_TIME: HeaderName =
    HeaderName::from_static("x-envoy-upstream-service-time");
/// The `server` header of every answer, as Istio's gateways send it.
const SERVER_NAME: &str = "istio-envoy";

/// One accepted connection and the snapshot it is served by.
pub(super) struct Connection {
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub snapshot: Arc<Snapshot>,
    pub ctx: Arc<ProxyContext>,
    /// Set on connections that TLS terminated: scheme https, SNI's server (421), XFCC.
    pub tls: Option<Arc<crate::tls::TlsConnectionInfo>>,
    /// The client's address as x-forwarded-for and x-envoy-external-address carry it.
    peer_ip: HeaderValue,
    /// The listener's drain deadline, for upgraded connections that outlive the request.
    drain: tunnel::Drain,
    /// What the replay copies of this connection's requests may hold together.
    replay_budget: ReplayBudget,
}

/// What the access log and metrics need about the outcome.
struct Outcome<'a> {
    flags: &'static str,
    cluster: Option<&'a Cluster>,
    upstream: Option<SocketAddr>,
}

impl Connection {
    pub(super) fn new(
        peer: SocketAddr,
        local: SocketAddr,
        snapshot: Arc<Snapshot>,
        ctx: Arc<ProxyContext>,
        tls: Option<Arc<crate::tls::TlsConnectionInfo>>,
    ) -> Self {
        let peer_ip = HeaderValue::from_str(&peer.ip().to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("-"));
        Connection {
            peer,
            local,
            snapshot,
            tls,
            peer_ip,
            drain: tunnel::Drain::default(),
            replay_budget: ReplayBudget::new(ctx.limits.max_replay_bytes_per_connection),
            ctx,
        }
    }

    /// Upgraded connections of this connection end at `drain`'s deadline.
    pub(super) fn with_drain(mut self, drain: tunnel::Drain) -> Self {
        self.drain = drain;
        self
    }

    /// The clocks of an upgraded connection: the stream idle timeout and the drain.
    fn upgrade_clocks(&self) -> tunnel::Clocks {
        tunnel::Clocks {
            idle: self.ctx.limits.stream_idle_timeout,
            drain: self.drain.clone(),
            websocket: true,
        }
    }

    pub(super) async fn handle(&self, request: Request<Incoming>) -> Response<ProxyBody> {
        let started = Instant::now();
        let version = request.version();
        // What the access log needs from the request, kept only when there is a log (the
        // values are reference-counted, not copied).
        let logged = (self.ctx.access_log != AccessLogFormat::Off).then(|| LoggedRequest {
            start_time: SystemTime::now(),
            method: request.method().clone(),
            uri: edge_headers::logged_uri(request.method(), request.uri()),
            user_agent: request.headers().get(header::USER_AGENT).cloned(),
            forwarded_for: request.headers().get(&X_FORWARDED_FOR).cloned(),
        });
        let authority = request_authority(&request);
        // Every request here is external: Envoy replaces a client's x-request-id at the
        // edge (`preserve_external_request_id` off, as Istio leaves it).
        let request_id = new_request_id();
        let request_is_grpc = grpc::is_grpc(request.headers());

        let (response, outcome) = self
            .route_and_forward(
                request,
                authority.as_ref().and_then(|a| a.to_str().ok()),
                &request_id,
            )
            .await;
        // The gateway's own answers to gRPC become trailers-only gRPC responses (status 200
        // in the log and metrics, as Envoy records them); upstream answers pass unchanged.
        let mut response = grpc::local_reply(request_is_grpc, response).await;
        // Istio names its gateway in every answer, the upstream's Server header replaced
        // (Envoy's default server_header_transformation, OVERWRITE).
        response
            .headers_mut()
            .insert(header::SERVER, HeaderValue::from_static(SERVER_NAME));

        let status = response.status();
        let key = RequestKey {
            response_code: status.as_u16(),
            response_flags: outcome.flags,
            http2: version == Version::HTTP_2,
        };
        let stats = match outcome.cluster {
            Some(cluster) => self.ctx.metrics.request_stats(
                &cluster.stats,
                &Destination {
                    service: &cluster.service,
                    name: &cluster.service_name,
                    namespace: &cluster.service_namespace,
                },
                key,
            ),
            None => {
                self.ctx
                    .metrics
                    .request_stats(&self.ctx.local_stats, &Destination::UNKNOWN, key)
            }
        };
        stats.count.inc();
        let elapsed = started.elapsed();
        stats.duration_ms.observe(elapsed.as_secs_f64() * 1000.0);
        let Some(logged) = logged else {
            return response;
        };
        self.ctx.access_log.write(&AccessLogEntry {
            start_time: logged.start_time,
            method: logged.method.as_str(),
            path: logged.uri.path_and_query().map_or("/", |p| p.as_str()),
            version,
            status: status.as_u16(),
            flags: outcome.flags,
            response_bytes: response
                .headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()),
            duration: elapsed,
            forwarded_for: logged.forwarded_for.as_ref().and_then(|v| v.to_str().ok()),
            user_agent: logged.user_agent.as_ref().and_then(|v| v.to_str().ok()),
            request_id: request_id.to_str().unwrap_or("-"),
            authority: authority.as_ref().and_then(|a| a.to_str().ok()),
            upstream: outcome.upstream,
            cluster: outcome.cluster.map(|c| c.name.as_str()),
            downstream_local: self.local,
            downstream_peer: self.peer,
        });
        response
    }

    async fn route_and_forward<'s>(
        &'s self,
        request: Request<Incoming>,
        authority: Option<&str>,
        request_id: &HeaderValue,
    ) -> (Response<ProxyBody>, Outcome<'s>) {
        if let Some(status) = framing_problem(&request) {
            // The message boundaries are in doubt: answer and close the connection so
            // nothing after this request is read with the wrong framing.
            let mut response = local_response(status, "");
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return (response, Outcome::local(flags::DOWNSTREAM_PROTOCOL_ERROR));
        }
        if limits::declared_body_too_large(&request, &self.ctx.limits) {
            // Refused before anything is forwarded; the unread body ends the connection.
            let mut response = local_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                limits::PAYLOAD_TOO_LARGE_BODY,
            );
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return (response, Outcome::local(flags::NONE));
        }
        let Some(authority) = authority else {
            return (
                local_response(StatusCode::BAD_REQUEST, ""),
                Outcome::local(flags::DOWNSTREAM_PROTOCOL_ERROR),
            );
        };
        let Some(listener) = self.listener() else {
            return (
                local_response(StatusCode::NOT_FOUND, ""),
                Outcome::local(flags::NO_ROUTE),
            );
        };
        if let (Some(tls), Some(listener_tls)) =
            (&self.tls, listener.transport.as_ref().and_then(|t| t.tls()))
            && tls.is_misdirected(listener_tls, authority)
        {
            return (
                local_response(StatusCode::MISDIRECTED_REQUEST, "misdirected request\n"),
                Outcome::local(flags::NONE),
            );
        }
        let request = match edge_headers::admit(request) {
            Ok(request) => request,
            Err(edge_headers::Refusal::BadPath) => {
                return (
                    local_response(StatusCode::BAD_REQUEST, ""),
                    Outcome::local(flags::DOWNSTREAM_PROTOCOL_ERROR),
                );
            }
        };
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
            // Envoy answers an unrouted request with 404 and an empty body.
            return (
                local_response(StatusCode::NOT_FOUND, ""),
                Outcome::local(flags::NO_ROUTE),
            );
        };
        if edge_headers::refused_upgrade(&request) {
            self.ctx.metrics.upgrades_refused.inc();
            let mut response = local_response(edge_headers::REFUSED_UPGRADE_STATUS, "");
            response.headers_mut().remove(header::CONTENT_TYPE);
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return (response, Outcome::local(flags::NONE));
        }
        match &route.action {
            RouteAction::Forward(forward) => {
                self.forward(request, route, forward, authority, request_id)
                    .await
            }
            RouteAction::Redirect(redirect) => {
                let path_and_query = request.uri().path_and_query().map_or("/", |p| p.as_str());
                let location = route_actions::redirect_location(
                    redirect,
                    self.scheme(),
                    authority,
                    path_and_query,
                    &route.matches,
                );
                let status =
                    StatusCode::from_u16(redirect.status).unwrap_or(StatusCode::MOVED_PERMANENTLY);
                let mut response = local_response(status, "");
                if let Ok(location) = HeaderValue::from_str(&location) {
                    response.headers_mut().insert(header::LOCATION, location);
                }
                redirect.headers.response.apply(response.headers_mut());
                (response, Outcome::local(flags::NONE))
            }
            RouteAction::DirectResponse(direct) => {
                let status = StatusCode::from_u16(direct.status).unwrap_or(StatusCode::OK);
                let mut response = local_response(status, direct.body.as_deref().unwrap_or(""));
                direct.headers.response.apply(response.headers_mut());
                (response, Outcome::local(flags::NONE))
            }
            RouteAction::Unsupported(what) => {
                let body = format!("route action `{what}` is not supported by this gateway yet\n");
                (
                    local_response(StatusCode::NOT_IMPLEMENTED, &body),
                    Outcome::local(flags::NONE),
                )
            }
        }
    }

    /// A forwarded route: CORS, fault injection, cluster choice, mirrors, then tries
    /// (retries and timeouts) against the cluster's endpoints.
    async fn forward<'s>(
        &'s self,
        mut request: Request<Incoming>,
        route: &'s Route<RouteAction>,
        forward: &'s Forward,
        authority: &str,
        request_id: &HeaderValue,
    ) -> (Response<ProxyBody>, Outcome<'s>) {
        let cors_origin = forward.cors.as_ref().and_then(|cors| {
            route_actions::allowed_origin(cors, request.headers()).map(|o| (cors, o.clone()))
        });
        if let Some((cors, origin)) = &cors_origin
            && route_actions::is_preflight(request.method(), request.headers())
        {
            let mut response = local_response(StatusCode::OK, "");
            response.headers_mut().remove(header::CONTENT_TYPE);
            route_actions::preflight_headers(cors, origin, response.headers_mut());
            return (response, Outcome::local(flags::NONE));
        }

        let mut fault_flags = flags::NONE;
        if let Some(fault) = &forward.fault {
            if let Some(delay) = &fault.delay
                && route_actions::chance(delay.percentage)
            {
                tokio::time::sleep(delay.delay).await;
                fault_flags = flags::DELAY_INJECTED;
            }
            if let Some(abort) = &fault.abort
                && route_actions::chance(abort.percentage)
            {
                let status =
                    StatusCode::from_u16(abort.status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
                let flags = if fault_flags == flags::DELAY_INJECTED {
                    flags::DELAY_AND_FAULT_INJECTED
                } else {
                    flags::FAULT_INJECTED
                };
                return (
                    grpc::mark_local(
                        local_response(status, "fault filter abort"),
                        abort.grpc_status,
                    ),
                    Outcome::local(flags),
                );
            }
        }

        let Some(weighted) = RouteAction::pick_cluster(&forward.clusters) else {
            return (
                local_response(StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream"),
                Outcome::local(flags::NO_HEALTHY_UPSTREAM),
            );
        };
        let cluster: &'s Cluster = &weighted.cluster;

        // Upgrades (WebSocket and friends): the client's side of the upgraded connection,
        // joined to the upstream's once it answers 101.
        let is_upgrade = request.version() == Version::HTTP_11
            && request.headers().contains_key(header::UPGRADE);
        let downstream_upgrade = is_upgrade.then(|| hyper::upgrade::on(&mut request));

        let (parts, body) = request.into_parts();
        let Some(mut head) = self.upstream_head(
            parts, route, forward, weighted, authority, request_id, is_upgrade,
        ) else {
            return (
                local_response(StatusCode::BAD_REQUEST, ""),
                Outcome::local(flags::DOWNSTREAM_PROTOCOL_ERROR),
            );
        };

        let body_failed = Arc::new(limits::BodyFailure::default());
        // The body streams to the first try at once; a bounded copy is kept when a retry
        // or a mirror may need it again (an upgrade's body is the tunnel: sent once).
        let wants_replay =
            !is_upgrade && (forward.retry.attempts > 0 || !forward.mirrors.is_empty());
        let mut body = if body.is_end_stream() {
            RequestBody::Empty
        } else {
            let downstream =
                DownstreamBody::new(body, body_failed.clone(), &self.ctx.limits).boxed();
            if wants_replay {
                RequestBody::Replay(ReplayBody::new(
                    downstream,
                    self.ctx.limits.max_replay_body_bytes,
                    self.replay_budget.clone(),
                    Some(self.ctx.metrics.retry_or_shadow_abandoned.clone()),
                ))
            } else {
                RequestBody::Once(Some(downstream))
            }
        };

        let mirrors: Vec<Arc<Cluster>> = forward
            .mirrors
            .iter()
            .filter(|m| route_actions::chance(m.percentage))
            .map(|m| m.cluster.clone())
            .collect();
        if !mirrors.is_empty() {
            self.mirror(&head, mirrors, forward.timeout, &body);
        }

        let deadline = forward.timeout.map(|t| tokio::time::Instant::now() + t);
        let retry = &forward.retry;
        let mut retries_done = 0u32;
        let mut backoff = RETRY_BACKOFF_BASE;
        // Endpoints this request tried: a retry goes elsewhere when it can.
        let mut tried: Vec<usize> = Vec::new();
        let mut try_started = Instant::now();
        let mut overflowed_retry = false;
        let mut retrying = None;
        let (response, endpoint) = loop {
            let Some(picked) = cluster.pick_endpoint_avoiding(&tried) else {
                return (
                    local_response(StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream"),
                    Outcome {
                        flags: flags::NO_HEALTHY_UPSTREAM,
                        cluster: Some(cluster),
                        upstream: None,
                    },
                );
            };
            let endpoint = picked.addr;
            let Some(try_body) = body.for_try() else {
                break (Err(TryFailure::Reset), endpoint);
            };
            let last_try = retries_done >= retry.attempts || !body.can_replay();
            try_started = Instant::now();
            let attempt = Self::send(&mut head, endpoint, cluster, try_body, last_try);
            let attempt = async {
                match retry.per_try_timeout {
                    Some(t) => tokio::time::timeout(t, attempt)
                        .await
                        .unwrap_or(Err(TryFailure::Timeout)),
                    None => attempt.await,
                }
            };
            let result = match deadline {
                Some(deadline) => match tokio::time::timeout_at(deadline, attempt).await {
                    Ok(result) => result,
                    Err(_) => {
                        picked.record(true);
                        let flags = if retries_done > 0 {
                            flags::UPSTREAM_REQUEST_TIMEOUT_RETRIES_EXCEEDED
                        } else {
                            flags::UPSTREAM_REQUEST_TIMEOUT
                        };
                        return (
                            local_response(StatusCode::GATEWAY_TIMEOUT, "upstream request timeout"),
                            Outcome {
                                flags,
                                cluster: Some(cluster),
                                upstream: Some(endpoint),
                            },
                        );
                    }
                },
                None => attempt.await,
            };
            picked.record(match &result {
                Ok(response) => response.status().is_server_error(),
                Err(_) => true,
            });
            let retriable = match &result {
                Ok(response) => route_actions::retriable_status(&retry.retry_on, response.status()),
                Err(failure) => route_actions::retriable_failure(&retry.retry_on, *failure),
            };
            if !retriable || retries_done >= retry.attempts || !body.can_replay() {
                break (result, endpoint);
            }
            // Retries in flight are bounded too (`maxRetries`); past it the answer stands.
            // The slot is held until the retry's try has ended.
            drop(retrying.take());
            retrying = cluster.breakers.retry(&cluster.connection_pool);
            if retrying.is_none() {
                overflowed_retry = true;
                break (result, endpoint);
            }
            // The failed try lets go of the body before the next one replays it.
            body.supersede();
            retries_done += 1;
            tried.push(picked.index());
            let jitter = Duration::from_millis(fastrand::u64(..=backoff.as_millis() as u64 / 2));
            tokio::time::sleep(backoff / 2 + jitter).await;
            backoff = (backoff * 2).min(RETRY_BACKOFF_MAX);
        };
        if response.is_err()
            && let Some((status, text, failure_flags)) = body_failed.answer()
        {
            let mut response = local_response(status, text);
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return (
                response,
                Outcome {
                    flags: failure_flags,
                    cluster: Some(cluster),
                    upstream: Some(endpoint),
                },
            );
        }
        let exhausted = |plain, exceeded| if retries_done > 0 { exceeded } else { plain };
        let outcome = |flags| Outcome {
            flags,
            cluster: Some(cluster),
            upstream: Some(endpoint),
        };
        match response {
            Ok(mut upstream_response) => {
                // Envoy tells the client how long the upstream took (the last try, to
                // its response headers), in milliseconds.
                upstream_response.headers_mut().insert(
                    X_ENVOY_UPSTREAM_SERVICE_TIME,
                    HeaderValue::from(try_started.elapsed().as_millis() as u64),
                );
                let switching = upstream_response.status() == StatusCode::SWITCHING_PROTOCOLS;
                if switching && let Some(downstream) = downstream_upgrade {
                    let upstream = hyper::upgrade::on(&mut upstream_response);
                    tokio::spawn(join_upgraded(downstream, upstream, self.upgrade_clocks()));
                } else {
                    strip_hop_by_hop(upstream_response.headers_mut());
                }
                forward
                    .headers
                    .response
                    .apply(upstream_response.headers_mut());
                weighted
                    .headers
                    .response
                    .apply(upstream_response.headers_mut());
                if let Some((cors, origin)) = &cors_origin {
                    route_actions::cors_response_headers(
                        cors,
                        origin,
                        upstream_response.headers_mut(),
                    );
                }
                let retried_status = retries_done > 0
                    && route_actions::retriable_status(&retry.retry_on, upstream_response.status());
                let flags = if overflowed_retry {
                    flags::UPSTREAM_OVERFLOW
                } else if retried_status {
                    flags::UPSTREAM_RETRY_LIMIT_EXCEEDED
                } else {
                    fault_flags
                };
                (
                    upstream_response.map(|body| body.map_err(BoxError::from).boxed()),
                    outcome(flags),
                )
            }
            Err(TryFailure::ConnectFailure) => (
                local_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "upstream connect error or disconnect/reset before headers. reset reason: connection failure",
                ),
                outcome(exhausted(
                    flags::UPSTREAM_FAILURE,
                    flags::UPSTREAM_FAILURE_RETRIES_EXCEEDED,
                )),
            ),
            Err(TryFailure::RefusedStream) => (
                local_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "upstream connect error or disconnect/reset before headers. reset reason: remote refused stream reset",
                ),
                outcome(exhausted(
                    flags::UPSTREAM_REMOTE_RESET,
                    flags::UPSTREAM_REMOTE_RESET_RETRIES_EXCEEDED,
                )),
            ),
            Err(TryFailure::Reset) => (
                local_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "upstream connect error or disconnect/reset before headers. reset reason: connection termination",
                ),
                outcome(exhausted(
                    flags::UPSTREAM_CONNECTION_TERMINATION,
                    flags::UPSTREAM_CONNECTION_TERMINATION_RETRIES_EXCEEDED,
                )),
            ),
            Err(TryFailure::Timeout) => (
                local_response(StatusCode::GATEWAY_TIMEOUT, "upstream request timeout"),
                outcome(exhausted(
                    flags::UPSTREAM_REQUEST_TIMEOUT,
                    flags::UPSTREAM_REQUEST_TIMEOUT_RETRIES_EXCEEDED,
                )),
            ),
            Err(TryFailure::ProtocolError) => (
                local_response(StatusCode::BAD_GATEWAY, "upstream protocol error"),
                outcome(flags::UPSTREAM_PROTOCOL_ERROR),
            ),
            Err(TryFailure::Overflow) => (
                local_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "upstream connect error or disconnect/reset before headers. reset reason: overflow",
                ),
                outcome(flags::UPSTREAM_OVERFLOW),
            ),
        }
    }

    /// One try: the request to one endpoint, over the cluster's protocol.
    async fn send(
        head: &mut UpstreamHead,
        endpoint: SocketAddr,
        cluster: &Cluster,
        body: ProxyBody,
        last_try: bool,
    ) -> Result<Response<UpstreamBody>, TryFailure> {
        let request = head
            .request(cluster.protocol, body, last_try)
            .map_err(|_| TryFailure::ProtocolError)?;
        upstream::send(cluster, endpoint, request).await
    }

    /// Copies of the request to mirror clusters; their answers are ignored. Envoy marks a
    /// copy by appending `-shadow` to the host. As Envoy shadows a buffered request, a
    /// copy leaves once the whole body is in the replay copy, and is dropped when the body
    /// outgrows it. Mirrors never queue: past `MAX_MIRRORS_IN_FLIGHT` they are dropped,
    /// and each gets the route's timeout (or `DEFAULT_MIRROR_TIMEOUT`); drops are counted.
    fn mirror(
        &self,
        head: &UpstreamHead,
        clusters: Vec<Arc<Cluster>>,
        timeout: Option<Duration>,
        body: &RequestBody,
    ) {
        let mut head = head.clone();
        let shadow_host = head
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(|host| {
                let (host, port) = route_actions::split_authority(host);
                match port {
                    Some(port) => format!("{host}-shadow:{port}"),
                    None => format!("{host}-shadow"),
                }
            });
        if let Some(value) = shadow_host.and_then(|h| HeaderValue::from_str(&h).ok()) {
            head.headers.insert(header::HOST, value);
        }
        let ctx = self.ctx.clone();
        let timeout = timeout.unwrap_or(DEFAULT_MIRROR_TIMEOUT);
        let send_all = move |body: Option<Bytes>| {
            let dropped = |reason| {
                ctx.metrics
                    .mirror_dropped
                    .get_or_create(&crate::metrics::MirrorDropLabels { reason })
                    .inc();
            };
            let Some(body) = body else {
                clusters.iter().for_each(|_| dropped("body"));
                return;
            };
            for cluster in clusters {
                let Some(endpoint) = cluster.pick() else {
                    continue;
                };
                let Some(in_flight) = MirrorInFlight::take() else {
                    dropped("overflow");
                    continue;
                };
                let mut head = head.clone();
                let ctx = ctx.clone();
                let body = body.clone();
                tokio::spawn(async move {
                    let _in_flight = in_flight;
                    let body = Full::new(body).map_err(|never| match never {}).boxed();
                    let Ok(request) = head.request(cluster.protocol, body, true) else {
                        return;
                    };
                    let exchange = async {
                        if let Ok(response) = upstream::send(&cluster, endpoint, request).await {
                            // Drain so the pooled connection can be reused.
                            let _ = response.into_body().collect().await;
                        }
                    };
                    if tokio::time::timeout(timeout, exchange).await.is_err() {
                        ctx.metrics
                            .mirror_dropped
                            .get_or_create(&crate::metrics::MirrorDropLabels { reason: "timeout" })
                            .inc();
                    }
                });
            }
        };
        match body {
            RequestBody::Replay(replay) => replay.on_complete(Box::new(send_all)),
            RequestBody::Empty => send_all(Some(Bytes::new())),
            // Not replayable (an upgrade): nothing to send again.
            RequestBody::Once(_) => send_all(None),
        }
    }

    /// `https` on connections TLS terminated.
    fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    /// The snapshot's listener for the port this connection arrived on: its bind port, or
    /// its node port when node-port mode steered the connection (sk_lookup keeps the
    /// port the client dialled as the socket's local port).
    fn listener(&self) -> Option<&Listener> {
        let port = self.local.port();
        self.snapshot
            .listeners
            .iter()
            .find(|l| l.bind_port == port || l.node_port == Some(port))
    }

    /// The request as the upstream gets it: same method, path, Host and body unless the
    /// route rewrites them; hop-by-hop headers removed; forwarding headers set as Istio's
    /// gateway sets them; then the route's and the destination's header operations.
    #[allow(clippy::too_many_arguments)]
    fn upstream_head(
        &self,
        parts: http::request::Parts,
        route: &Route<RouteAction>,
        forward: &Forward,
        weighted: &WeightedCluster,
        authority: &str,
        request_id: &HeaderValue,
        is_upgrade: bool,
    ) -> Option<UpstreamHead> {
        let path_and_query = match forward.rewrite.as_ref().and_then(|r| r.path.as_ref()) {
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
        let upgrade = if is_upgrade {
            headers.get(header::UPGRADE).cloned()
        } else {
            None
        };
        strip_hop_by_hop(&mut headers);
        if let Some(upgrade) = upgrade {
            headers.insert(header::UPGRADE, upgrade);
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        }
        // Host: the rewritten authority, else the request's (HTTP/2 requests carry it as
        // :authority only; an HTTP/1.1 Host header that already says it stays as is).
        let new_host = match forward
            .rewrite
            .as_ref()
            .and_then(|r| r.authority.as_deref())
        {
            Some(rewritten) => Some(rewritten),
            None if headers.get(header::HOST).is_some_and(|h| h == authority) => None,
            None => Some(authority),
        };
        if let Some(host) = new_host.and_then(|h| HeaderValue::from_str(h).ok()) {
            headers.insert(header::HOST, host);
        }
        let host = headers.get(header::HOST).cloned()?;
        let forwarded_for = match headers.get(&X_FORWARDED_FOR) {
            Some(existing) if !existing.is_empty() => {
                let mut joined = Vec::with_capacity(existing.len() + 1 + self.peer_ip.len());
                joined.extend_from_slice(existing.as_bytes());
                joined.push(b',');
                joined.extend_from_slice(self.peer_ip.as_bytes());
                HeaderValue::from_maybe_shared(Bytes::from(joined)).ok()
            }
            _ => Some(self.peer_ip.clone()),
        };
        if let Some(v) = forwarded_for {
            headers.insert(X_FORWARDED_FOR, v);
        }
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(self.scheme()));
        // Envoy's SANITIZE_SET (Istio's gateway default): never trust the client's XFCC.
        headers.remove(X_FORWARDED_CLIENT_CERT);
        if let Some(v) = self
            .tls
            .as_ref()
            .and_then(|tls| tls.client_cert.as_deref())
            .and_then(|cert| HeaderValue::from_str(cert).ok())
        {
            headers.insert(X_FORWARDED_CLIENT_CERT, v);
        }
        headers.insert(X_REQUEST_ID, request_id.clone());
        headers.insert(X_ENVOY_EXTERNAL_ADDRESS, self.peer_ip.clone());
        forward.headers.request.apply(&mut headers);
        weighted.headers.request.apply(&mut headers);
        Some(UpstreamHead {
            method: parts.method,
            path_and_query,
            authority: host,
            headers,
        })
    }
}

impl Outcome<'_> {
    fn local(flags: &'static str) -> Self {
        Outcome {
            flags,
            cluster: None,
            upstream: None,
        }
    }
}

/// A request's head as every try and mirror sends it.
#[derive(Clone)]
struct UpstreamHead {
    method: Method,
    path_and_query: PathAndQuery,
    /// The Host header's value: HTTP/2 upstreams get it as `:authority`.
    authority: HeaderValue,
    headers: HeaderMap,
}

impl UpstreamHead {
    /// The request of one try: origin-form with a Host header for HTTP/1.1, absolute
    /// (`:authority`, no Host) for HTTP/2. The last try takes the headers instead of
    /// copying them.
    fn request(
        &mut self,
        protocol: UpstreamProtocol,
        body: ProxyBody,
        last_try: bool,
    ) -> Result<Request<ProxyBody>, http::Error> {
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

/// What the access log needs of a request after the request itself has moved on.
struct LoggedRequest {
    start_time: SystemTime,
    method: Method,
    uri: Uri,
    user_agent: Option<HeaderValue>,
    forwarded_for: Option<HeaderValue>,
}

/// A request's body as its tries send it.
enum RequestBody {
    /// No body: every try sends an empty one.
    Empty,
    /// Streamed to each try, with a bounded copy for the next (retries, mirrors).
    Replay(ReplayBody),
    /// Sent once (upgrades, routes without retries or mirrors); None once taken.
    Once(Option<ProxyBody>),
}

impl RequestBody {
    fn for_try(&mut self) -> Option<ProxyBody> {
        match self {
            RequestBody::Empty => Some(Empty::new().map_err(|never| match never {}).boxed()),
            RequestBody::Replay(replay) => Some(replay.for_try()),
            RequestBody::Once(body) => body.take(),
        }
    }

    fn can_replay(&self) -> bool {
        match self {
            RequestBody::Empty => true,
            RequestBody::Replay(replay) => replay.can_replay(),
            RequestBody::Once(_) => false,
        }
    }

    /// The try that just failed stops reading the client's body.
    fn supersede(&self) {
        if let RequestBody::Replay(replay) = self {
            replay.supersede();
        }
    }
}

/// One mirrored request in flight, counted against `MAX_MIRRORS_IN_FLIGHT`.
struct MirrorInFlight;

impl MirrorInFlight {
    fn take() -> Option<Self> {
        MIRRORS_IN_FLIGHT
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_MIRRORS_IN_FLIGHT).then_some(n + 1)
            })
            .ok()
            .map(|_| MirrorInFlight)
    }
}

impl Drop for MirrorInFlight {
    fn drop(&mut self) {
        MIRRORS_IN_FLIGHT.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Copies bytes both ways between an upgraded client connection and upstream connection,
/// until either closes, neither sends for `--stream-idle-timeout`, or the drain deadline
/// (a WebSocket close frame, 1001, on each side). Only WebSocket upgrades get here.
async fn join_upgraded(
    downstream: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    clocks: tunnel::Clocks,
) {
    let (Ok(downstream), Ok(upstream)) = (downstream.await, upstream.await) else {
        tracing::debug!("upgrade failed on one side");
        return;
    };
    let mut downstream = TokioIo::new(downstream);
    let mut upstream = TokioIo::new(upstream);
    match tunnel::run(&mut downstream, &mut upstream, clocks).await {
        tunnel::Ending::Closed { .. } => {}
        tunnel::Ending::Failed(e) => tracing::debug!(error = %e, "upgraded connection ended"),
        tunnel::Ending::Idle => tracing::debug!("idle upgraded connection closed"),
        tunnel::Ending::Drained => tracing::debug!("upgraded connection closed by the drain"),
    }
}

/// Requests whose body length two parsers could read differently (RFC 9112 §6.1, §6.3):
/// Content-Length beside Transfer-Encoding, Content-Length more than once, or a
/// Transfer-Encoding other than `chunked` (501, which no proxy can frame). hyper's parser
/// rejects conflicting Content-Length values itself; these it lets through.
fn framing_problem<B>(request: &Request<B>) -> Option<StatusCode> {
    let headers = request.headers();
    let content_lengths = headers.get_all(header::CONTENT_LENGTH).iter().count();
    let transfer_encodings: Vec<&HeaderValue> =
        headers.get_all(header::TRANSFER_ENCODING).iter().collect();
    if content_lengths > 1 || (content_lengths > 0 && !transfer_encodings.is_empty()) {
        return Some(StatusCode::BAD_REQUEST);
    }
    match transfer_encodings.as_slice() {
        [] => None,
        [only] if only.as_bytes().eq_ignore_ascii_case(b"chunked") => None,
        _ => Some(StatusCode::NOT_IMPLEMENTED),
    }
}

/// A client's request body that remembers whether it broke off (a malformed chunk, a
/// closed connection), so a failed try is blamed on the client (400), not the upstream;
/// and that breaks it off itself past the body limit (413), whatever its framing: the
/// framing guard cuts chunked HTTP/1 bodies earlier, this catches HTTP/2 bodies that
/// declared no length; and that breaks off when no bytes arrive for the stream idle
/// timeout (408). The error aborts the upstream request (a reset stream, or a
/// connection closed before the last chunk), so the upstream never gets a whole request.
struct DownstreamBody {
    inner: Incoming,
    failed: Arc<limits::BodyFailure>,
    received: u64,
    limit: Option<u64>,
    idle_timeout: Duration,
    /// Since when the body has been waited for without a frame: idleness is the client's
    /// only while someone reads (an upstream that does not take the body is not the
    /// client stalling). The timer is moved when it fires early, not per frame.
    waiting_since: Option<tokio::time::Instant>,
    idle: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl DownstreamBody {
    fn new(inner: Incoming, failed: Arc<limits::BodyFailure>, limits: &limits::Limits) -> Self {
        let now = tokio::time::Instant::now();
        DownstreamBody {
            inner,
            failed,
            received: 0,
            limit: limits.max_request_body_bytes,
            idle_timeout: limits.stream_idle_timeout,
            waiting_since: None,
            idle: Box::pin(tokio::time::sleep_until(now + limits.stream_idle_timeout)),
        }
    }

    /// Ready with the error once the body has been idle for the timeout.
    fn poll_idle(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<BoxError> {
        let since = *self
            .waiting_since
            .get_or_insert_with(tokio::time::Instant::now);
        loop {
            std::task::ready!(self.idle.as_mut().poll(cx));
            let deadline = since + self.idle_timeout;
            if deadline <= tokio::time::Instant::now() {
                let idle = limits::StreamIdleTimeout(self.idle_timeout);
                self.failed.record(&idle);
                return std::task::Poll::Ready(idle.into());
            }
            self.idle.as_mut().reset(deadline);
        }
    }
}

impl hyper::body::Body for DownstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        let std::task::Poll::Ready(polled) = polled else {
            return self.poll_idle(cx).map(|e| Some(Err(e)));
        };
        let frame = match polled {
            Some(Ok(frame)) => frame,
            Some(Err(e)) => {
                self.failed.record(&e);
                return std::task::Poll::Ready(Some(Err(e.into())));
            }
            None => return std::task::Poll::Ready(None),
        };
        self.waiting_since = None;
        if let Some(data) = frame.data_ref() {
            self.received = self.received.saturating_add(data.len() as u64);
            if let Some(limit) = self.limit
                && self.received > limit
            {
                let cut = limits::BodyTooLarge { limit };
                self.failed.record(&cut);
                return std::task::Poll::Ready(Some(Err(cut.into())));
            }
        }
        std::task::Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// HTTP/2's :authority, else the Host header.
fn request_authority<B>(request: &Request<B>) -> Option<HeaderValue> {
    match request.uri().authority() {
        Some(authority) => HeaderValue::from_str(authority.as_str()).ok(),
        None => request.headers().get(header::HOST).cloned(),
    }
    .filter(|a| !a.is_empty())
}

/// Removes hop-by-hop headers, including those the Connection header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none: one pass over the names is cheaper than the removals.
    let hop_by_hop = |name: &HeaderName| HOP_BY_HOP.contains(name) || name == header::UPGRADE;
    if !headers.keys().any(hop_by_hop) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    // `TE: trailers` is the one TE value that crosses a proxy: gRPC needs it upstream.
    let te_trailers = headers
        .get(header::TE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    // `Upgrade` is hop-by-hop too; an upgrade request puts it back explicitly.
    headers.remove(header::UPGRADE);
}

fn local_response(status: StatusCode, body: &str) -> Response<ProxyBody> {
    let body: ProxyBody = if body.is_empty() {
        Empty::new().map_err(|never| match never {}).boxed()
    } else {
        Full::new(Bytes::from(body.to_owned()))
            .map_err(|never| match never {})
            .boxed()
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    if status != StatusCode::NOT_FOUND {
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    }
    grpc::mark_local(response, None)
}

/// A random UUID (version 4), as Envoy generates for `x-request-id`.
fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bits = fastrand::u128(..);
    let bits = (bits & !(0xf << 76) | (0x4 << 76)) & !(0x3 << 62) | (0x2 << 62);
    let mut id = [0u8; 36];
    let mut nibble = 32;
    for (i, out) in id.iter_mut().enumerate() {
        if matches!(i, 8 | 13 | 18 | 23) {
            *out = b'-';
        } else {
            nibble -= 1;
            *out = HEX[((bits >> (nibble * 4)) & 0xf) as usize];
        }
    }
    HeaderValue::from_bytes(&id).unwrap_or_else(|_| HeaderValue::from_static("-"))
}

#[cfg(test)]
mod tests {
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
