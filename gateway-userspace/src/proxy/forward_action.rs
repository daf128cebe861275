//! A Forward route: CORS, fault injection, cluster choice, mirrors, then tries (retries
//! and timeouts) against the cluster's endpoints, and the upstream's answer as the
//! client gets it.

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use http::{HeaderName, HeaderValue, Request, Response, StatusCode, Version, header};
use http_body_util::BodyExt;
use hyper::body::{Body as _, Incoming};
use hyper_util::rt::TokioIo;

use super::{
    body::{BoxError, DownstreamBody, ProxyBody, RequestBody},
    flags,
    forward::{Connection, Outcome},
    grpc, limits,
    local_reply::local_response,
    mirror,
    replay::ReplayBody,
    route_actions::{self, TryFailure},
    tunnel,
    upstream::{self, UpstreamBody},
    upstream_head::{UpstreamHead, strip_hop_by_hop},
};
use crate::{
    route_table::Route,
    runtime::{Live, LiveCluster},
    snapshot::{Cluster, Forward, RouteAction},
};

/// First retry back-off; doubled per retry up to `RETRY_BACKOFF_MAX` (Envoy's 25 ms base).
const RETRY_BACKOFF_BASE: Duration = Duration::from_millis(25);
const RETRY_BACKOFF_MAX: Duration = Duration::from_millis(250);
const X_ENVOY_UPSTREAM_SERVICE_TIME: HeaderName =
    HeaderName::from_static("x-envoy-upstream-service-time");

impl Connection {
    /// A forwarded route: CORS, fault injection, cluster choice, mirrors, then tries
    /// (retries and timeouts) against the cluster's endpoints.
    pub(super) async fn forward<'s>(
        &'s self,
        live: &'s Arc<Live>,
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
        let Some(cluster) = live.cluster(&weighted.cluster) else {
            return (
                local_response(StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream"),
                Outcome::local(flags::NO_HEALTHY_UPSTREAM),
            );
        };

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
            mirror::send(&self.ctx, live, &head, mirrors, forward.timeout, &body);
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
            let Some(picked) = cluster.pick_avoiding(&tried) else {
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
            let attempt = Self::send(&mut head, endpoint, &cluster, try_body, last_try);
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
            retrying = cluster.state.breakers.retry(&cluster.connection_pool);
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
        cluster: &LiveCluster<'_>,
        body: ProxyBody,
        last_try: bool,
    ) -> Result<Response<UpstreamBody>, TryFailure> {
        let request = head
            .request(cluster.protocol, body, last_try)
            .map_err(|_| TryFailure::ProtocolError)?;
        upstream::send(cluster, endpoint, request).await
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
