//! Mirrors (Istio's `mirror`, Envoy's request shadowing): copies of a request sent to
//! other clusters, whose answers nobody waits for.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderValue, header};
use http_body_util::{BodyExt, Full};

use super::{
    context::ProxyContext, route_actions, tries::RequestBody, upstream, upstream_head::UpstreamHead,
};
use crate::{runtime::Live, snapshot::Cluster};

/// Mirrored requests in flight at once (all workers); more are dropped, not queued.
const MAX_MIRRORS_IN_FLIGHT: usize = 256;
/// A mirrored request gets the route's timeout, or this long when the route has none
/// (Istio's routes have none by default); its answer is never waited for by anyone.
const DEFAULT_MIRROR_TIMEOUT: Duration = Duration::from_secs(15);
static MIRRORS_IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// Copies of the request to mirror clusters; their answers are ignored. Envoy marks a
/// copy by appending `-shadow` to the host: its Host, or `:authority` over HTTP/2, and the
/// name an auto-SNI cluster's connection is opened for (Envoy's shadow router takes the
/// host from the headers already marked). As Envoy shadows a buffered request, a
/// copy leaves once the whole body is in the replay copy, and is dropped when the body
/// outgrows it. Mirrors never queue: past `MAX_MIRRORS_IN_FLIGHT` they are dropped,
/// and each gets the route's timeout (or `DEFAULT_MIRROR_TIMEOUT`); drops are counted.
pub(super) fn send(
    ctx: &Arc<ProxyContext>,
    live: &Arc<Live>,
    head: &UpstreamHead,
    clusters: Vec<Arc<Cluster>>,
    timeout: Option<Duration>,
    body: &RequestBody,
) {
    let mut head = head.clone();
    let shadow_host = head
        .map()
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
        head.map().insert(header::HOST, value.clone());
        head.authority = value;
    }
    let ctx = ctx.clone();
    // The copies go out when the body is complete; they use the configuration the
    // request was routed by.
    let live = live.clone();
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
            if live
                .cluster(&cluster)
                .is_none_or(|c| c.endpoints.is_empty())
            {
                continue;
            }
            let Some(in_flight) = MirrorInFlight::take() else {
                dropped("overflow");
                continue;
            };
            let mut head = head.clone();
            let ctx = ctx.clone();
            let body = body.clone();
            let live = live.clone();
            tokio::spawn(async move {
                let _in_flight = in_flight;
                let Some(target) = live.cluster(&cluster) else {
                    return;
                };
                let Some(endpoint) = target.pick() else {
                    return;
                };
                let body = Full::new(body).map_err(|never| match never {}).boxed();
                let Ok(request) = head.outgoing(cluster.protocol, ctx.http1_client, body, true)
                else {
                    return;
                };
                let exchange = async {
                    if let Ok(response) = upstream::send(
                        &target,
                        (endpoint.addr, std::time::Instant::now()),
                        request,
                        ctx.http1_client,
                        head.authority.as_bytes(),
                    )
                    .await
                    {
                        // Drain so the pooled connection can be reused.
                        let _ = (*response).into_body().collect().await;
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
