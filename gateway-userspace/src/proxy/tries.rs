//! The tries of one forwarded request: an endpoint by the cluster's load balancer, the
//! request sent within the per-try and the route's timeouts, and retries (Istio's
//! `retries`: attempts, `retryOn`, a back-off, another endpoint when there is one)
//! while the answer or failure is one the policy retries and the body can be replayed.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use http_body_util::{BodyExt, Empty};

use super::{
    body::ProxyBody,
    boxed,
    http1::Http1Client,
    replay::ReplayBody,
    route_actions::{self, TryFailure},
    route_clock::RequestEnd,
    upstream::{self, UpstreamBody},
    upstream_head::UpstreamHead,
};
use crate::{runtime::LiveCluster, snapshot::RetryPolicy};

/// First retry back-off; doubled per retry up to `RETRY_BACKOFF_MAX` (Envoy's 25 ms base).
const RETRY_BACKOFF_BASE: Duration = Duration::from_millis(25);
const RETRY_BACKOFF_MAX: Duration = Duration::from_millis(250);
/// A configured back-off grows up to this many times itself (Envoy's max_interval default).
const RETRY_BACKOFF_MAX_FACTOR: u32 = 10;

/// A request's body as its tries send it.
pub(super) enum RequestBody {
    /// No body: every try sends an empty one.
    Empty,
    /// Streamed to each try, with a bounded copy for the next (retries, mirrors).
    Replay(ReplayBody),
    /// Sent once (upgrades, routes without retries or mirrors); None once taken.
    Once(Option<ProxyBody>),
}

impl RequestBody {
    pub(super) fn for_try(&mut self) -> Option<ProxyBody> {
        match self {
            RequestBody::Empty => Some(Empty::new().map_err(|never| match never {}).boxed()),
            RequestBody::Replay(replay) => Some(replay.for_try()),
            RequestBody::Once(body) => body.take(),
        }
    }

    pub(super) fn can_replay(&self) -> bool {
        match self {
            RequestBody::Empty => true,
            RequestBody::Replay(replay) => replay.can_replay(),
            RequestBody::Once(_) => false,
        }
    }

    /// The try that just failed stops reading the client's body.
    pub(super) fn supersede(&self) {
        if let RequestBody::Replay(replay) = self {
            replay.supersede();
        }
    }
}

/// How the tries of a request ended.
pub(super) struct Tried {
    pub ending: Ending,
    /// The endpoint of the last try; None when there was none to try.
    pub endpoint: Option<SocketAddr>,
    /// Tries after the first.
    pub retries: u32,
}

pub(super) enum Ending {
    /// The last try's answer, and how long the upstream took to its response headers.
    Answered {
        response: upstream::Answered,
        took: Duration,
        /// When it came.
        at: Instant,
        /// A retry was due but the cluster's `maxRetries` were in flight.
        retry_overflowed: bool,
    },
    /// The last try failed without an answer.
    Failed(TryFailure),
    /// The route's timeout expired during a try.
    TimedOut,
    /// No endpoint to send the request to.
    NoEndpoint,
}

impl Tried {
    pub(super) fn retried(&self) -> bool {
        self.retries > 0
    }
}

/// The clocks of a request's tries: the route's timeout counts from the end of the
/// client's request (`route_clock`).
#[derive(Clone, Copy)]
pub(super) struct Clock<'a> {
    pub request_end: &'a RequestEnd,
    pub route_timeout: Option<Duration>,
    /// When the first try may start: the request's own clock read, reused.
    pub first_try_at: Instant,
}

/// Sends the request to `cluster` until an answer stands, by `retry` and within the
/// route's timeout.
pub(super) async fn run(
    cluster: &LiveCluster<'_>,
    head: &mut UpstreamHead,
    body: &mut RequestBody,
    retry: &RetryPolicy,
    clock: Clock<'_>,
    hash: Option<u64>,
    client: Http1Client,
) -> Tried {
    let mut retries = 0u32;
    let mut backoff = retry.backoff.unwrap_or(RETRY_BACKOFF_BASE);
    let backoff_max = retry
        .backoff
        .map_or(RETRY_BACKOFF_MAX, |b| b * RETRY_BACKOFF_MAX_FACTOR);
    // Endpoints this request tried: a retry goes elsewhere when it can.
    let mut tried: Vec<usize> = Vec::new();
    // Retries in flight are bounded too (`maxRetries`); the slot is held until the
    // retry's try has ended.
    let mut retrying = None;
    loop {
        let ended = |ending, endpoint| Tried {
            ending,
            endpoint,
            retries,
        };
        let Some(picked) = cluster.pick_avoiding(&tried, hash) else {
            return ended(Ending::NoEndpoint, None);
        };
        let endpoint = picked.addr;
        let Some(try_body) = body.for_try() else {
            return ended(Ending::Failed(TryFailure::Reset), Some(endpoint));
        };
        let last_try = retries >= retry.attempts || !body.can_replay();
        let started = if retries == 0 {
            clock.first_try_at
        } else {
            Instant::now()
        };
        // Made where it is awaited: made first into a local, the try's future was
        // copied whole into the await's slot.
        let result = if retry.per_try_timeout.is_none() && clock.route_timeout.is_none() {
            send(
                head,
                (endpoint, started),
                cluster,
                try_body,
                last_try,
                client,
            )
            .await
        } else {
            let attempt = send(
                head,
                (endpoint, started),
                cluster,
                try_body,
                last_try,
                client,
            );
            // Boxed: the clocks' futures would otherwise take room in this future (and
            // in every future above it, moved with each request) on routes without them.
            match Box::pin(timed(attempt, clock, retry.per_try_timeout, started)).await {
                Some(result) => result,
                None => {
                    picked.record(true);
                    return ended(Ending::TimedOut, Some(endpoint));
                }
            }
        };
        picked.record(match &result {
            Ok(response) => response.status().is_server_error(),
            Err(_) => true,
        });
        let retriable = match &result {
            Ok(response) => {
                route_actions::retriable_response(&retry.retry_on, response.status(), || {
                    UpstreamBody::field(response, &route_actions::GRPC_STATUS)
                })
            }
            Err(failure) => route_actions::retriable_failure(&retry.retry_on, *failure),
        };
        let mut retry_overflowed = false;
        if retriable && retries < retry.attempts && body.can_replay() {
            drop(retrying.take());
            retrying = cluster.state.breakers.retry(&cluster.connection_pool);
            retry_overflowed = retrying.is_none();
            if !retry_overflowed {
                // The failed try lets go of the body before the next one replays it.
                body.supersede();
                retries += 1;
                if retry.avoid_previous_hosts {
                    tried.push(picked.index());
                }
                let jitter =
                    Duration::from_millis(fastrand::u64(..=backoff.as_millis() as u64 / 2));
                tokio::time::sleep(backoff / 2 + jitter).await;
                backoff = (backoff * 2).min(backoff_max);
                continue;
            }
        }
        let ending = match result {
            Ok(response) => {
                let at = Instant::now();
                Ending::Answered {
                    response,
                    took: at.saturating_duration_since(started),
                    at,
                    retry_overflowed,
                }
            }
            Err(failure) => Ending::Failed(failure),
        };
        return ended(ending, Some(endpoint));
    }
}

/// A try within its per-try timeout and the route's: None when the route's ran out.
async fn timed(
    attempt: impl Future<Output = Result<upstream::Answered, TryFailure>>,
    clock: Clock<'_>,
    per_try_timeout: Option<Duration>,
    started: Instant,
) -> Option<Result<upstream::Answered, TryFailure>> {
    let attempt = async {
        match per_try_timeout {
            Some(t) => {
                let since = Some(tokio::time::Instant::from_std(started));
                tokio::select! {
                    result = attempt => result,
                    () = clock.request_end.expired(t, since) => Err(TryFailure::Timeout),
                }
            }
            None => attempt.await,
        }
    };
    match clock.route_timeout {
        Some(timeout) => tokio::select! {
            result = attempt => Some(result),
            () = clock.request_end.expired(timeout, None) => None,
        },
        None => Some(attempt.await),
    }
}

/// One try: the request to one endpoint, over the cluster's protocol.
///
/// The exchange with the upstream (pool checkout, connect, the client) is boxed here:
/// otherwise this future and every one above it (the tries, the forward) carry room for
/// it, and each is moved whole per request (a memcpy per level).
async fn send(
    head: &mut UpstreamHead,
    (endpoint, started): (SocketAddr, Instant),
    cluster: &LiveCluster<'_>,
    body: ProxyBody,
    last_try: bool,
    client: Http1Client,
) -> Result<upstream::Answered, TryFailure> {
    let request = head
        .outgoing(cluster.protocol, client, body, last_try)
        .map_err(|_| TryFailure::ProtocolError)?;
    let authority = head.authority.as_bytes();
    boxed::pinned(|| upstream::send(cluster, (endpoint, started), request, client, authority)).await
}
