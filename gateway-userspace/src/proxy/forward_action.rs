//! A Forward route: CORS, fault injection, cluster choice, the request as the upstream
//! gets it, mirrors, then the tries (`tries.rs`), and the upstream's answer as the client
//! gets it.

use std::sync::Arc;

use http::{HeaderName, HeaderValue, Request, StatusCode, Version, header};
use http_body_util::BodyExt;
use hyper::body::Body as _;
use hyper_util::rt::TokioIo;

use super::{
    body::{ClientBody, DownstreamBody},
    context::ProxyContext,
    flags::ResponseFlags,
    hash_key,
    http1::{
        PendingUpgrade, Upgraded,
        passed::{self, ResponseFields},
        request_fields::{self, RequestFields},
    },
    limits,
    local_reply::LocalReply,
    mirror,
    outcome::{Answer, Outcome},
    replay::ReplayBody,
    route_actions,
    route_clock::{self, RequestEnd},
    tries::{self, Ending, RequestBody},
    tunnel,
    upstream::{self, UpstreamBody, UpstreamUpgrade},
    upstream_head::{Downstream, UpstreamHead, strip_hop_by_hop},
};
use crate::{
    route_table::Route,
    runtime::Live,
    snapshot::{Cluster, CorsPolicy, Forward, Redirect, RouteAction, WeightedCluster},
};

const X_ENVOY_UPSTREAM_SERVICE_TIME: HeaderName =
    HeaderName::from_static("x-envoy-upstream-service-time");

/// Forwards `request` by `forward`, its route's action.
///
/// Not an async fn, and inlined: made by a call (in another codegen unit), the future was
/// made whole on the stack and then copied into the box `Connection::route` keeps it in (a
/// memcpy of its size per request); made in the caller (`boxed::pinned`), only its
/// arguments are written, into the box.
#[allow(clippy::manual_async_fn)] // on purpose: see above
#[inline]
pub(super) fn forward<'s>(
    ctx: &Arc<ProxyContext>,
    live: &'s Arc<Live>,
    (mut request, mut fields): (Request<ClientBody>, Option<Box<RequestFields>>),
    route: &'s Route<RouteAction>,
    forward: &'s Forward,
    downstream: &Downstream<'_>,
    drain: &tunnel::Drain,
) -> impl Future<Output = Outcome<'s>> {
    async move {
        // `fields`: the request's head as it came, when the codec kept it so; what reads
        // headers by name below takes the whole map first.
        let cors_origin = match &forward.cors {
            Some(cors) => match cors_check(cors, forward, &mut request, &mut fields) {
                Ok(origin) => origin.map(|origin| (cors, origin)),
                Err(preflight) => return preflight.into(),
            },
            None => None,
        };

        let mut fault_flags = ResponseFlags::NONE;
        if let Some(fault) = &forward.fault {
            if let Some(delay) = &fault.delay
                && route_actions::chance(delay.percentage)
            {
                tokio::time::sleep(delay.delay).await;
                fault_flags = ResponseFlags::DELAY_INJECTED;
            }
            if let Some(abort) = &fault.abort
                && route_actions::chance(abort.percentage)
            {
                let delayed = fault_flags == ResponseFlags::DELAY_INJECTED;
                return LocalReply::fault_abort(abort, delayed).into();
            }
        }

        let Some(weighted) = RouteAction::pick_cluster(&forward.clusters) else {
            return LocalReply::no_healthy_upstream().into();
        };
        if weighted.invalid {
            return LocalReply::invalid_backend().into();
        }
        if let Some(redirect) = &weighted.redirect {
            return backend_redirect(redirect, &request, route, downstream).into();
        }
        let Some(cluster) = live.cluster(&weighted.cluster) else {
            return LocalReply::no_healthy_upstream().into();
        };

        // Upgrades (WebSocket and friends): the client's side of the upgraded connection,
        // joined to the upstream's once it answers 101.
        let is_upgrade = request.version() == Version::HTTP_11 && downstream.upgrade_asked;
        let downstream_upgrade = is_upgrade.then(|| ClientUpgrade::on(&mut request));

        if cluster.hash_policy.is_some() {
            request_fields::whole(request.headers_mut(), &mut fields);
        }
        let hash = cluster.hash_policy.as_ref().and_then(|policy| {
            hash_key::request_key(
                policy,
                request.headers(),
                request.uri().query(),
                downstream.peer,
            )
        });
        let Some(mut head) = UpstreamHead::new(
            &mut request,
            fields,
            route,
            forward,
            weighted,
            downstream,
            is_upgrade,
        ) else {
            return LocalReply::bad_request().into();
        };
        let body = request.into_body();

        // Only a request with a body can break off (no allocation for the others).
        let mut body_failed = None;
        // The body streams to the first try at once; a bounded copy is kept when a retry
        // or a mirror may need it again (an upgrade's body is the tunnel: sent once).
        let wants_replay =
            !is_upgrade && (forward.retry.attempts > 0 || !forward.mirrors.is_empty());
        // The request's own clock read, unless a fault delay came after it.
        let first_try_at = if fault_flags == ResponseFlags::DELAY_INJECTED {
            std::time::Instant::now()
        } else {
            downstream.started
        };
        let (request_end, mut body) = if body.is_end_stream() {
            (RequestEnd::at(first_try_at), RequestBody::Empty)
        } else {
            let (request_end, mark) = RequestEnd::pending();
            let failure = Arc::new(limits::BodyFailure::default());
            body_failed = Some(failure.clone());
            let streamed = DownstreamBody::new(body, failure, &ctx.limits, mark).boxed();
            let body = if wants_replay {
                RequestBody::Replay(ReplayBody::new(
                    streamed,
                    ctx.limits.max_replay_body_bytes,
                    downstream.replay_budget.clone(),
                    Some(ctx.metrics.retry_or_shadow_abandoned.clone()),
                ))
            } else {
                RequestBody::Once(Some(streamed))
            };
            (request_end, body)
        };

        if !forward.mirrors.is_empty() {
            send_mirrors(ctx, live, &head, forward, &body);
        }

        let clock = tries::Clock {
            request_end: &request_end,
            route_timeout: forward.timeout,
            first_try_at,
        };
        let tried = tries::run(
            &cluster,
            &mut head,
            &mut body,
            &forward.retry,
            clock,
            hash.as_ref().map(|k| k.hash),
            ctx.http1_client,
        )
        .await;
        let retried = tried.retried();
        let answered_at = match &tried.ending {
            Ending::Answered { at, .. } => Some(*at),
            _ => None,
        };
        let answered = |answer: Answer| Outcome {
            answer,
            cluster: Some(cluster),
            upstream: tried.endpoint,
            answered_at,
        };
        let (mut response, took, retry_overflowed) = match tried.ending {
            Ending::Answered {
                response,
                took,
                retry_overflowed,
                ..
            } => (response, took, retry_overflowed),
            Ending::NoEndpoint => return answered(LocalReply::no_healthy_upstream().into()),
            Ending::TimedOut => return answered(LocalReply::route_timeout(retried).into()),
            Ending::Failed(failure) => {
                // The client's body broke off: the failure is the client's, and the rest of
                // its body (if any) is not read, so the connection ends.
                let reply = match body_failed.as_ref().and_then(|failed| failed.broken()) {
                    Some(broken) => LocalReply::broken_body(broken).closing(),
                    None => LocalReply::try_failed(failure, retried),
                };
                return answered(reply.into());
            }
        };

        // The head's fields as the upstream sent them, when the client passed them so
        // (`http1::passed`): the edits below go beside them, and only those that need more
        // than an insert turn them into the map (`passed::whole`).
        let mut passed = response.body_mut().take_passed();
        // Envoy tells the client how long the upstream took (the last try, to its response
        // headers), in milliseconds.
        ResponseFields {
            map: response.headers_mut(),
            passed: &mut passed,
        }
        .insert_of(
            passed::Kind::ServiceTime,
            X_ENVOY_UPSTREAM_SERVICE_TIME,
            millis(took.as_millis() as u64),
        );
        let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
        if switching && let Some(client_side) = downstream_upgrade {
            spawn_upgraded(ctx, drain, client_side, &mut response);
        } else if passed
            .as_deref_mut()
            .is_none_or(|passed| passed.strip_hop_by_hop().is_err())
        {
            strip_hop_by_hop(passed::whole(response.headers_mut(), &mut passed));
        }
        let cookie = hash.and_then(|k| k.set_cookie);
        if !forward.headers.response.is_empty()
            || !weighted.headers.response.is_empty()
            || cors_origin.is_some()
            || cookie.is_some()
        {
            edit_response(
                passed::whole(response.headers_mut(), &mut passed),
                forward,
                weighted,
                cors_origin.as_ref(),
                cookie,
            );
        }
        let retried_status = retried
            && route_actions::retriable_response(
                &forward.retry.retry_on,
                response.status(),
                || {
                    passed::get(
                        response.headers(),
                        passed.as_deref(),
                        &route_actions::GRPC_STATUS,
                    )
                },
            );
        let flags = if retry_overflowed {
            ResponseFlags::UPSTREAM_OVERFLOW
        } else if retried_status {
            ResponseFlags::UPSTREAM_RETRY_LIMIT_EXCEEDED
        } else {
            fault_flags
        };
        // The route's timeout runs on to the end of the response (a tunnel has no end).
        let expiry = match forward.timeout {
            Some(timeout) if !switching => {
                Some(Box::pin(route_clock::expiry(request_end, timeout)) as route_clock::Expiry)
            }
            _ => None,
        };
        answered(Answer::Upstream {
            response,
            passed,
            flags,
            expiry,
        })
    }
}

/// The route's CORS policy on the request: the allowed origin, if any, or (Err) the
/// preflight answer. Out of line: most routes have no policy.
#[inline(never)]
fn cors_check(
    cors: &CorsPolicy,
    forward: &Forward,
    request: &mut Request<ClientBody>,
    fields: &mut Option<Box<RequestFields>>,
) -> Result<Option<HeaderValue>, Box<LocalReply>> {
    request_fields::whole(request.headers_mut(), fields);
    let origin = route_actions::allowed_origin(cors, request.headers()).cloned();
    // Envoy's CORS filter answers a preflight it allows, and one it does not allow when
    // told not to pass those on; other preflights go to the upstream.
    if route_actions::is_preflight(request.method(), request.headers())
        && (origin.is_some() || forward.cors_answers_unmatched_preflights)
    {
        return Err(Box::new(LocalReply::preflight(
            cors,
            origin.as_ref(),
            request.headers(),
        )));
    }
    Ok(origin)
}

/// A backendRef's redirect filter's answer (rare: out of line).
#[cold]
#[inline(never)]
fn backend_redirect(
    redirect: &Redirect,
    request: &Request<ClientBody>,
    route: &Route<RouteAction>,
    downstream: &Downstream<'_>,
) -> LocalReply {
    let path_and_query = request.uri().path_and_query().map_or("/", |p| p.as_str());
    let location = route_actions::redirect_location(
        redirect,
        downstream.scheme,
        downstream.authority,
        path_and_query,
        &route.matches,
    );
    LocalReply::redirect(redirect, &location)
}

/// The route's mirrors, each by its chance, sent the request's copy. Out of line: most
/// routes have none.
#[inline(never)]
fn send_mirrors(
    ctx: &Arc<ProxyContext>,
    live: &Arc<Live>,
    head: &UpstreamHead,
    forward: &Forward,
    body: &RequestBody,
) {
    let mirrors: Vec<Arc<Cluster>> = forward
        .mirrors
        .iter()
        .filter(|m| route_actions::chance(m.percentage))
        .map(|m| m.cluster.clone())
        .collect();
    if !mirrors.is_empty() {
        mirror::send(ctx, live, head, mirrors, forward.timeout, body);
    }
}

/// The upgraded connections joined, in a task of their own (rare: out of line).
#[cold]
#[inline(never)]
fn spawn_upgraded(
    ctx: &ProxyContext,
    drain: &tunnel::Drain,
    client_side: ClientUpgrade,
    response: &mut upstream::Answered,
) {
    let upstream_side = UpstreamBody::upgrade(response);
    let clocks = tunnel::Clocks {
        idle: ctx.limits.stream_idle_timeout,
        drain: drain.clone(),
        websocket: true,
    };
    tokio::spawn(join_upgraded(client_side, upstream_side, clocks));
}

/// The response edits beyond the proxy's own inserts: the route's and the destination's
/// header rules, CORS, a hash policy's cookie. Out of line: a plain route has none.
#[inline(never)]
fn edit_response(
    headers: &mut http::HeaderMap,
    forward: &Forward,
    weighted: &WeightedCluster,
    cors_origin: Option<&(&CorsPolicy, HeaderValue)>,
    cookie: Option<HeaderValue>,
) {
    for rules in [&forward.headers.response, &weighted.headers.response] {
        if !rules.is_empty() {
            rules.apply(headers);
        }
    }
    if let Some((cors, origin)) = cors_origin {
        route_actions::cors_response_headers(cors, origin, headers);
    }
    if let Some(cookie) = cookie {
        headers.append(header::SET_COOKIE, cookie);
    }
}

/// A count of milliseconds as a header value; the usual few (a nearby upstream) without
/// an allocation.
fn millis(ms: u64) -> HeaderValue {
    const SMALL: [&str; 10] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];
    match usize::try_from(ms).ok().and_then(|ms| SMALL.get(ms)) {
        Some(small) => HeaderValue::from_static(small),
        None => HeaderValue::from(ms),
    }
}

/// Copies bytes both ways between an upgraded client connection and upstream connection,
/// until either closes, neither sends for `--stream-idle-timeout`, or the drain deadline
/// (a WebSocket close frame, 1001, on each side). Only WebSocket upgrades get here.
async fn join_upgraded(
    downstream: ClientUpgrade,
    upstream: UpstreamUpgrade,
    clocks: tunnel::Clocks,
) {
    let upstream = match upstream {
        UpstreamUpgrade::Hyper(on) => on.await.ok().map(|u| UpgradedIo::Hyper(TokioIo::new(u))),
        UpstreamUpgrade::Own(upgraded) => Some(UpgradedIo::Own(upgraded)),
    };
    let (Some(mut downstream), Some(mut upstream)) = (downstream.upgraded().await, upstream) else {
        tracing::debug!("upgrade failed on one side");
        return;
    };
    match tunnel::run(&mut downstream, &mut upstream, clocks).await {
        tunnel::Ending::Closed { .. } => {}
        tunnel::Ending::Failed(e) => tracing::debug!(error = %e, "upgraded connection ended"),
        tunnel::Ending::Idle => tracing::debug!("idle upgraded connection closed"),
        tunnel::Ending::Drained => tracing::debug!("upgraded connection closed by the drain"),
    }
}

/// The client's side of an upgrade, from whichever server read the request.
enum ClientUpgrade {
    Hyper(hyper::upgrade::OnUpgrade),
    Own(PendingUpgrade),
}

/// An upgraded connection, client's or upstream's, from hyper or the codec.
enum UpgradedIo {
    Hyper(TokioIo<hyper::upgrade::Upgraded>),
    Own(Upgraded),
}

impl ClientUpgrade {
    fn on<B>(request: &mut Request<B>) -> Self {
        match request.extensions_mut().remove::<PendingUpgrade>() {
            Some(pending) => ClientUpgrade::Own(pending),
            None => ClientUpgrade::Hyper(hyper::upgrade::on(request)),
        }
    }

    async fn upgraded(self) -> Option<UpgradedIo> {
        match self {
            ClientUpgrade::Hyper(on) => on.await.ok().map(|u| UpgradedIo::Hyper(TokioIo::new(u))),
            ClientUpgrade::Own(pending) => pending.upgraded().await.map(UpgradedIo::Own),
        }
    }
}

impl tokio::io::AsyncRead for UpgradedIo {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpgradedIo::Hyper(io) => std::pin::Pin::new(io).poll_read(cx, buf),
            UpgradedIo::Own(io) => std::pin::Pin::new(io).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for UpgradedIo {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            UpgradedIo::Hyper(io) => std::pin::Pin::new(io).poll_write(cx, buf),
            UpgradedIo::Own(io) => std::pin::Pin::new(io).poll_write(cx, buf),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpgradedIo::Hyper(io) => std::pin::Pin::new(io).poll_flush(cx),
            UpgradedIo::Own(io) => std::pin::Pin::new(io).poll_flush(cx),
        }
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpgradedIo::Hyper(io) => std::pin::Pin::new(io).poll_shutdown(cx),
            UpgradedIo::Own(io) => std::pin::Pin::new(io).poll_shutdown(cx),
        }
    }
}
