//! Upstream connections. Each worker thread keeps its own pool per endpoint and
//! protocol, as Envoy's workers do, so a request never waits on a lock or on another
//! thread's connection: HTTP/1.1 connections carry one request at a time and go back to
//! the pool when their response body ends (last in, first out, so a warm few carry the
//! load and the rest age out); an HTTP/2 (h2c) connection is shared by every request of
//! the thread to that endpoint. Each cluster's connection pool limits (DestinationRule
//! `connectionPool`, `connection_pool.rs`) are counted across threads: beyond
//! `maxConnections` an HTTP/1.1 request queues for a connection of its worker (up to
//! `http1MaxPendingRequests`), beyond that or `http2MaxRequests` it overflows (503 `UO`).

use std::{
    cell::RefCell,
    collections::{HashMap, HashSet},
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{HeaderName, Request, Response};
use hyper::{
    body::{Body, Frame, Incoming, SizeHint},
    client::conn::{http1, http2},
};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustc_hash::FxBuildHasher;
use tokio::{net::TcpStream, sync::Notify};

use super::{
    body::{BoxError, ProxyBody},
    http1::{
        Http1Client, Upgraded,
        client::{self, ClientError, ResponseBody},
        passed::{self, PassedFields},
    },
    route_actions::TryFailure,
    upstream_tls::{self, UpstreamStream},
};
use crate::{
    connection_pool::{ConnectionPool, Slot},
    runtime::LiveCluster,
    snapshot::UpstreamProtocol,
};

/// Idle HTTP/1.1 connections kept per endpoint and thread; more are closed when they
/// come back (a burst's connections do not stay open forever).
const MAX_IDLE_PER_ENDPOINT: usize = 256;
/// A pooled HTTP/1.1 connection whose previous exchange is still finishing (its request
/// body still being written) gets this long before a fresh connection is used instead.
const POOLED_READY_WAIT: Duration = Duration::from_millis(10);
/// An HTTP/1.1 upstream connection's buffers: hyper's default (~400 KiB) let it queue 16
/// request-body frames ahead of a slow upstream socket, 256 KiB per upload in flight; the
/// kernel's socket buffer queues enough. Also the largest response head (Envoy's
/// `max_response_headers_kb` is 60).
const UPSTREAM_H1_MAX_BUF: usize = 64 * 1024;

/// Connections are shared by requests to the same endpoint, protocol and TLS settings
/// (`UpstreamTls::key`, 0 for plaintext): two clusters that reach one endpoint with
/// different client certificates never share a connection. On an auto-SNI cluster the
/// server name counts too (`sni`, `upstream_tls::server_name_key`): a connection opened
/// for one host never carries a request for another.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct PoolKey {
    endpoint: SocketAddr,
    protocol: UpstreamProtocol,
    tls: u64,
}

impl PoolKey {
    fn new(
        cluster: &LiveCluster<'_>,
        endpoint: SocketAddr,
        protocol: UpstreamProtocol,
        sni: Option<&[u8]>,
    ) -> Self {
        let tls = match (&cluster.tls, sni) {
            (None, _) => 0,
            (Some(tls), None) => tls.key,
            (Some(tls), Some(host)) => upstream_tls::server_name_key(tls.key, host),
        };
        PoolKey {
            endpoint,
            protocol,
            tls,
        }
    }
}

thread_local! {
    /// This worker thread's pools (each worker is a single-threaded runtime).
    static POOLS: RefCell<Pools> = const {
        RefCell::new(Pools {
            ids: HashMap::with_hasher(FxBuildHasher),
            slots: Vec::new(),
            vacant: Vec::new(),
        })
    };
}

/// A worker's pools, each in a slot of its own: a request looks its key up once (at
/// checkout), and its connection and response body keep the pool's place, so that
/// giving the connection back (and counting it out) needs no hash of the 48-byte key.
struct Pools {
    ids: HashMap<PoolKey, PoolId, FxBuildHasher>,
    /// None: a removed pool's slot, reused by the next new pool.
    slots: Vec<Option<EndpointPool>>,
    vacant: Vec<usize>,
}

/// A pool's slot, and its serial: a slot reused by another pool is told apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct PoolId {
    index: usize,
    serial: u32,
}

/// Serials of pools, across threads.
static POOL_SERIALS: AtomicU32 = AtomicU32::new(0);

impl Pools {
    /// The pool for `key`, made when there is none.
    fn id(&mut self, key: PoolKey) -> PoolId {
        let Pools { ids, slots, vacant } = self;
        *ids.entry(key).or_insert_with(|| {
            let serial = POOL_SERIALS.fetch_add(1, Ordering::Relaxed);
            let pool = EndpointPool {
                serial,
                ..EndpointPool::default()
            };
            let index = match vacant.pop() {
                Some(index) => {
                    slots[index] = Some(pool);
                    index
                }
                None => {
                    slots.push(Some(pool));
                    slots.len() - 1
                }
            };
            PoolId { index, serial }
        })
    }

    /// The pool `id` names, unless it has been removed.
    fn get_mut(&mut self, id: PoolId) -> Option<&mut EndpointPool> {
        self.slots
            .get_mut(id.index)?
            .as_mut()
            .filter(|pool| pool.serial == id.serial)
    }
}

#[derive(Default)]
struct EndpointPool {
    /// Tells this pool from an earlier one in its slot (`PoolId`).
    serial: u32,
    /// HTTP/1.1 connections waiting for a request, most recently used last.
    idle: Vec<Pooled<Http1Connection>>,
    /// The shared HTTP/2 connection.
    shared: Option<Pooled<http2::SendRequest<ProxyBody>>>,
    /// This worker's connections to the endpoint, open or opening.
    open: usize,
    /// Told when a connection comes back or closes: requests queued for a connection
    /// (`http1MaxPendingRequests`) look again.
    freed: Arc<Notify>,
}

/// An HTTP/1.1 connection as the pool keeps it: hyper's handle (its connection task
/// owns the socket), or the socket itself for the codec's client (no task, no buffer).
enum Http1Connection {
    Hyper(http1::SendRequest<ProxyBody>),
    Own(OwnConnection),
}

struct OwnConnection {
    io: UpstreamStream,
    /// Counted among the worker's connections to the endpoint while the socket is open.
    open: OpenConnection,
}

impl Http1Connection {
    /// Closed by the upstream (or useless: it sent bytes nobody asked for). The codec's
    /// connections are looked at without a syscall unless the socket has become readable.
    fn is_closed(&mut self) -> bool {
        match self {
            Http1Connection::Hyper(sender) => sender.is_closed(),
            Http1Connection::Own(own) => !upstream_tls::idle_and_open(&mut own.io),
        }
    }
}

/// A pooled connection, when it was last used, and how many requests it has carried.
struct Pooled<S> {
    sender: S,
    since: Instant,
    served: u32,
}

/// An upstream's response, boxed where it is made: it is ~600 bytes (the response body
/// holds the connection and both messages' state), and each future between the client
/// and the forward (the try, the tries, their timeouts) would otherwise move it whole.
pub(super) type Answered = Box<Response<UpstreamBody>>;

/// A request for an upstream: as hyper's clients take it, or with its head already
/// encoded for the codec's HTTP/1.1 client (`client::Outbound`).
pub(super) enum Outgoing {
    Request(Request<ProxyBody>),
    Http1(client::Outbound),
}

/// Sends `request` (origin-form URI and Host header for HTTP/1.1; absolute URI for
/// HTTP/2) to `endpoint` of `cluster`, over a pooled connection when one is free, within
/// the cluster's connection pool limits (`TryFailure::Overflow` beyond them). `authority`
/// is the request's Host as sent: an auto-SNI cluster's connection is opened for it.
/// `started`: when the try began, read already (pooled connections' idle age is
/// measured to it).
///
/// Not an async fn, and inlined, for the reason `forward_action::forward` gives (its box is
/// `tries::send`'s).
#[allow(clippy::manual_async_fn)] // on purpose: see above
#[inline]
pub(super) fn send(
    cluster: &LiveCluster<'_>,
    (endpoint, started): (SocketAddr, Instant),
    request: Outgoing,
    client: Http1Client,
    authority: &[u8],
) -> impl Future<Output = Result<Answered, TryFailure>> {
    async move {
        let sni = upstream_tls::auto_sni_host(cluster, authority);
        let in_flight = cluster
            .state
            .breakers
            .request(&cluster.connection_pool)
            .ok_or(TryFailure::Overflow)?;
        // The exchanges' futures are awaited pinned where they are made (`pin!`): awaited as
        // values, each was made and then copied whole into this future (a memcpy per request).
        let mut response = match (cluster.protocol, request) {
            (UpstreamProtocol::Http1, Outgoing::Http1(request)) => {
                std::pin::pin!(send_http1_own(cluster, (endpoint, started), request, sni)).await
            }
            (UpstreamProtocol::Http1, Outgoing::Request(request)) => match client {
                Http1Client::Hyper => {
                    send_http1_hyper(cluster, (endpoint, started), request, sni).await
                }
                Http1Client::Own => {
                    std::pin::pin!(send_http1_own(
                        cluster,
                        (endpoint, started),
                        request.into(),
                        sni
                    ))
                    .await
                }
            },
            (UpstreamProtocol::Http2, Outgoing::Request(request)) => {
                send_http2(cluster, endpoint, request, sni).await
            }
            // An encoded HTTP/1.1 head is made only for HTTP/1.1 clusters (`tries::send`).
            (UpstreamProtocol::Http2, Outgoing::Http1(_)) => Err(TryFailure::ProtocolError),
        }?;
        response.body_mut().in_flight = Some(in_flight);
        Ok(response)
    }
}

/// An HTTP/1.1 connection for one exchange: the most recently pooled live one, else a
/// new one within `maxConnections`, else the first one a finished exchange frees (this
/// request queued, within `http1MaxPendingRequests`, while `queued` holds its place).
/// With how many requests it carried before, whether it was pooled, and its pool.
/// `now`: the time, read already.
async fn acquire_http1(
    cluster: &LiveCluster<'_>,
    (endpoint, mut now): (SocketAddr, Instant),
    (key, sni): (PoolKey, Option<&[u8]>),
    client: Http1Client,
    queued: &mut Option<Slot>,
) -> Result<(Http1Connection, u32, bool, PoolId), TryFailure> {
    let limits = &cluster.connection_pool;
    loop {
        // Looked up again after each wait: the pool of an endpoint no cluster has any
        // more is removed once nothing counts on it (`drain_pools_outside`).
        let (pool, pooled) = checkout_http1(key, limits, now);
        if let Some(pooled) = pooled {
            return Ok((pooled.sender, pooled.served, true, pool));
        }
        if let Some(slot) = new_connection_slot(cluster, pool, key.protocol) {
            // Boxed: a connect's future holds a TLS handshake (rustls' whole connection
            // state) and is rare, while this future is moved with every request's.
            let connection = match client {
                Http1Client::Hyper => Http1Connection::Hyper(
                    Box::pin(connect_http1(cluster, endpoint, slot, sni)).await?,
                ),
                Http1Client::Own => Http1Connection::Own(OwnConnection {
                    io: Box::pin(connect(cluster, endpoint, sni)).await?,
                    open: slot,
                }),
            };
            return Ok((connection, 0, false, pool));
        }
        if queued.is_none() {
            *queued = Some(
                cluster
                    .state
                    .breakers
                    .pending(limits)
                    .ok_or(TryFailure::Overflow)?,
            );
        }
        let Some(freed) = with_pool(pool, |p| p.freed.clone()) else {
            continue;
        };
        freed.notified().await;
        now = Instant::now();
    }
}

/// Whether an HTTP/1.1 connection may go back to the pool after an answer with `status`
/// as its `served`th request: an upgraded connection belongs to the upgrade, never to
/// the pool; nor does one that carried its `maxRequestsPerConnection`.
fn reusable(limits: &ConnectionPool, status: http::StatusCode, served: u32) -> bool {
    status != http::StatusCode::SWITCHING_PROTOCOLS
        && limits
            .max_requests_per_connection
            .is_none_or(|max| served < max)
}

/// An HTTP/1.1 exchange by the codec's client, on the connection itself (no task).
async fn send_http1_own(
    cluster: &LiveCluster<'_>,
    (endpoint, mut started): (SocketAddr, Instant),
    mut request: client::Outbound,
    sni: Option<&[u8]>,
) -> Result<Answered, TryFailure> {
    let limits = &cluster.connection_pool;
    let key = PoolKey::new(cluster, endpoint, UpstreamProtocol::Http1, sni);
    // Held while this request waits for a connection.
    let mut queued: Option<Slot> = None;
    loop {
        // Pinned where it is made, as in `send`.
        let (connection, served, reused, pool) = std::pin::pin!(acquire_http1(
            cluster,
            (endpoint, started),
            (key, sni),
            Http1Client::Own,
            &mut queued
        ))
        .await?;
        // A pool holds one client's connections (the client is chosen per process);
        // another's is let go.
        let Http1Connection::Own(OwnConnection { io, open }) = connection else {
            continue;
        };
        let served = served.saturating_add(1);
        // Not boxed: the exchange's state is boxed where it is made (`client::send`).
        match client::send(io, request).await {
            Ok(response) => {
                let reuse = OwnReuse {
                    open,
                    served,
                    reusable: reusable(limits, response.status(), served),
                };
                let idle_timeout = limits.idle_timeout();
                return Ok(Box::new(response.map(|body| {
                    UpstreamBody::new(Inner::Own(body), pool, Reuse::Own(reuse), idle_timeout)
                })));
            }
            Err(failed) => match failed.unsent {
                // A kept-alive connection the upstream had just closed: the request
                // never left, so it goes out again on another one.
                Some(unsent) if reused => {
                    request = unsent;
                    started = Instant::now();
                }
                _ => return Err(classify_own(cluster, &failed.error)),
            },
        }
    }
}

/// An HTTP/1.1 exchange by hyper's client (`--http1-client hyper`).
async fn send_http1_hyper(
    cluster: &LiveCluster<'_>,
    (endpoint, mut started): (SocketAddr, Instant),
    mut request: Request<ProxyBody>,
    sni: Option<&[u8]>,
) -> Result<Answered, TryFailure> {
    let limits = &cluster.connection_pool;
    let key = PoolKey::new(cluster, endpoint, UpstreamProtocol::Http1, sni);
    // Held while this request waits for a connection.
    let mut queued: Option<Slot> = None;
    loop {
        let (connection, served, reused, pool) = acquire_http1(
            cluster,
            (endpoint, started),
            (key, sni),
            Http1Client::Hyper,
            &mut queued,
        )
        .await?;
        let Http1Connection::Hyper(mut sender) = connection else {
            continue;
        };
        let served = served.saturating_add(1);
        if reused
            && !sender.is_ready()
            && !matches!(
                tokio::time::timeout(POOLED_READY_WAIT, sender.ready()).await,
                Ok(Ok(()))
            )
        {
            continue;
        }
        match sender.try_send_request(request).await {
            Ok(response) => {
                let connection = reusable(limits, response.status(), served).then(|| Pooled {
                    sender: Http1Connection::Hyper(sender),
                    since: Instant::now(),
                    served,
                });
                let idle_timeout = limits.idle_timeout();
                return Ok(Box::new(response.map(|body| {
                    UpstreamBody::new(
                        Inner::Hyper(body),
                        pool,
                        Reuse::Hyper(connection),
                        idle_timeout,
                    )
                })));
            }
            Err(mut failed) => match failed.take_message() {
                // A kept-alive connection the upstream had just closed: the request
                // never left, so it goes out again on another connection.
                Some(unsent) if reused => {
                    request = unsent;
                    started = Instant::now();
                }
                _ => return Err(classify(cluster, failed.error())),
            },
        }
    }
}

async fn send_http2(
    cluster: &LiveCluster<'_>,
    endpoint: SocketAddr,
    mut request: Request<ProxyBody>,
    sni: Option<&[u8]>,
) -> Result<Answered, TryFailure> {
    let limits = &cluster.connection_pool;
    let key = PoolKey::new(cluster, endpoint, UpstreamProtocol::Http2, sni);
    // Held while this request waits for the worker's connection to be established.
    let mut queued: Option<Slot> = None;
    loop {
        let pool = pool_id(key);
        let (mut sender, reused) = match checkout_http2(pool, limits, false) {
            Some(sender) => (sender, true),
            None => match new_connection_slot(cluster, pool, key.protocol) {
                Some(slot) => {
                    // Boxed, as in `acquire_http1`.
                    let sender = Box::pin(connect_http2(cluster, endpoint, slot, sni)).await?;
                    with_pool(pool, |pool| {
                        pool.shared = Some(Pooled {
                            sender: sender.clone(),
                            since: Instant::now(),
                            served: 1,
                        });
                        // Requests that waited for this connection take it.
                        pool.freed.notify_waiters();
                    });
                    (sender, false)
                }
                // At `maxConnections`: the connection that carried its
                // `maxRequestsPerConnection` carries this one too rather than fail it;
                // while the worker's connection is still being set up, wait for it.
                None => match checkout_http2(pool, limits, true) {
                    Some(sender) => (sender, true),
                    None => {
                        if queued.is_none() {
                            queued = Some(
                                cluster
                                    .state
                                    .breakers
                                    .pending(limits)
                                    .ok_or(TryFailure::Overflow)?,
                            );
                        }
                        if let Some(freed) = with_pool(pool, |p| p.freed.clone()) {
                            freed.notified().await;
                        }
                        continue;
                    }
                },
            },
        };
        match sender.try_send_request(request).await {
            Ok(response) => {
                let idle_timeout = limits.idle_timeout();
                return Ok(Box::new(response.map(|body| {
                    UpstreamBody::new(Inner::Hyper(body), pool, Reuse::None, idle_timeout)
                })));
            }
            Err(mut failed) => match failed.take_message() {
                Some(unsent) if reused => {
                    with_pool(pool, |pool| pool.shared = None);
                    request = unsent;
                }
                _ => return Err(classify(cluster, failed.error())),
            },
        }
    }
}

/// The right to open a connection: within `maxConnections`, or beyond it when this
/// worker has no connection to the endpoint at all (as Envoy's pools do, so requests
/// queued here are not stranded by other workers' connections).
fn new_connection_slot(
    cluster: &LiveCluster<'_>,
    pool: PoolId,
    protocol: UpstreamProtocol,
) -> Option<OpenConnection> {
    let slot = match cluster.state.breakers.connection(&cluster.connection_pool) {
        Some(slot) => slot,
        None if with_pool(pool, |p| p.open).is_none_or(|open| open == 0) => {
            cluster.state.breakers.connection_anyway()
        }
        None => return None,
    };
    with_pool(pool, |p| p.open += 1);
    Some(OpenConnection {
        _slot: slot,
        pool,
        protocol,
    })
}

/// One of this worker's connections to an endpoint, counted until its task ends (hyper)
/// or its socket is closed (the codec's client).
struct OpenConnection {
    _slot: Slot,
    pool: PoolId,
    protocol: UpstreamProtocol,
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        // Not through `with_pool`: this may run while the thread's pools are borrowed or
        // gone (runtime shutdown); then there is nobody left to tell.
        let _ = POOLS.try_with(|pools| {
            if let Ok(mut pools) = pools.try_borrow_mut()
                && let Some(pool) = pools.get_mut(self.pool)
            {
                pool.open = pool.open.saturating_sub(1);
                match self.protocol {
                    // One HTTP/1.1 connection fewer: one queued request may open one.
                    UpstreamProtocol::Http1 => pool.freed.notify_one(),
                    // The shared connection failed or closed: everyone waiting looks again.
                    UpstreamProtocol::Http2 => pool.freed.notify_waiters(),
                }
            }
        });
    }
}

/// The pool for `key` (made when there is none): the one lookup of a request's try.
fn pool_id(key: PoolKey) -> PoolId {
    POOLS.with_borrow_mut(|pools| pools.id(key))
}

/// `f` on the pool `id` names; None when that pool has been removed.
fn with_pool<T>(id: PoolId, f: impl FnOnce(&mut EndpointPool) -> T) -> Option<T> {
    POOLS.with_borrow_mut(|pools| pools.get_mut(id).map(f))
}

/// The pool for `key`, and its most recently used live idle connection; expired (idle
/// too long at `now`) and closed ones are dropped.
fn checkout_http1(
    key: PoolKey,
    limits: &ConnectionPool,
    now: Instant,
) -> (PoolId, Option<Pooled<Http1Connection>>) {
    let idle_timeout = limits.idle_timeout();
    // The lookup and the first pop under one borrow of the pools.
    let (pool, mut popped) = POOLS.with_borrow_mut(|pools| {
        let id = pools.id(key);
        (id, pools.get_mut(id).and_then(|pool| pool.idle.pop()))
    });
    loop {
        // Looked at, and dropped if closed or expired, outside the pool's borrow: the
        // count of open connections a dropped one holds is given back through it.
        let Some(mut pooled) = popped else {
            return (pool, None);
        };
        if !pooled.sender.is_closed() && now.saturating_duration_since(pooled.since) < idle_timeout
        {
            return (pool, Some(pooled));
        }
        drop(pooled);
        popped = with_pool(pool, |pool| pool.idle.pop()).flatten();
    }
}

/// The shared HTTP/2 connection while it is live, not idle too long and (unless
/// `exhausted_ok`) under its `maxRequestsPerConnection`; counts the request on it.
fn checkout_http2(
    pool: PoolId,
    limits: &ConnectionPool,
    exhausted_ok: bool,
) -> Option<http2::SendRequest<ProxyBody>> {
    let idle_timeout = limits.idle_timeout();
    with_pool(pool, |pool| {
        let shared = pool.shared.as_mut()?;
        if shared.sender.is_closed() || shared.since.elapsed() >= idle_timeout {
            pool.shared = None;
            return None;
        }
        let exhausted = limits
            .max_requests_per_connection
            .is_some_and(|max| shared.served >= max);
        if exhausted && !exhausted_ok {
            // Streams in flight keep the connection until they end; new ones go to a
            // new connection.
            return None;
        }
        shared.served = shared.served.saturating_add(1);
        shared.since = Instant::now();
        Some(shared.sender.clone())
    })
    .flatten()
}

/// How often each worker looks for pooled connections to endpoints that went away.
pub(super) const SWEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Closes this worker's pooled connections to endpoints no cluster has any more, as
/// Envoy drains a removed host's pools: idle HTTP/1.1 connections close now, the shared
/// HTTP/2 connection once its streams end; exchanges in flight finish. Without it they
/// would stay open until the upstream or the idle timeout closed them.
pub(super) async fn sweep_removed_endpoints(live: Arc<arc_swap::ArcSwap<crate::runtime::Live>>) {
    let mut seen: Option<Arc<crate::runtime::Live>> = None;
    let mut current: HashSet<SocketAddr, FxBuildHasher> = HashSet::default();
    let mut clock = tokio::time::interval(SWEEP_INTERVAL);
    clock.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        clock.tick().await;
        let now = live.load_full();
        if !seen.as_ref().is_some_and(|seen| Arc::ptr_eq(seen, &now)) {
            current = now
                .snapshot
                .endpoints
                .iter()
                .flat_map(|endpoints| endpoints.iter().copied())
                .collect();
            seen = Some(now);
        }
        drain_pools_outside(&current);
    }
}

fn drain_pools_outside(current: &HashSet<SocketAddr, FxBuildHasher>) {
    POOLS.with_borrow_mut(|pools| {
        let Pools { ids, slots, vacant } = pools;
        ids.retain(|key, id| {
            let Some(pool) = slots.get_mut(id.index).and_then(Option::as_mut) else {
                return false;
            };
            if current.contains(&key.endpoint) {
                drop_closed_idle(pool);
                return true;
            }
            // The codec's connections count themselves out when dropped, which needs
            // this borrow: count them out here instead.
            for pooled in pool.idle.drain(..) {
                if matches!(pooled.sender, Http1Connection::Own(_)) {
                    pool.open = pool.open.saturating_sub(1);
                }
            }
            pool.shared = None;
            // Kept while connections are open or requests wait on `freed`: their
            // counts and wake-ups live here.
            let kept = pool.open > 0 || Arc::strong_count(&pool.freed) > 1;
            if !kept {
                slots[id.index] = None;
                vacant.push(id.index);
            }
            kept
        });
    });
}

/// Idle HTTP/1.1 connections the upstream has closed since they were pooled (hyper's
/// connection task noticed at once; the codec's connections have no task, so the sweep
/// looks): their sockets close and stop counting against the pool's limits now, not at
/// the next checkout. No syscall unless the reactor has seen a socket become readable.
fn drop_closed_idle(pool: &mut EndpointPool) {
    let before = pool.idle.len();
    pool.idle.retain_mut(|pooled| {
        !(matches!(pooled.sender, Http1Connection::Own(_)) && pooled.sender.is_closed())
    });
    // The codec's connections count themselves out when dropped, which needs this
    // borrow: count them out here instead, and let queued requests look again.
    for _ in pool.idle.len()..before {
        pool.open = pool.open.saturating_sub(1);
        pool.freed.notify_one();
    }
}

/// A connection back from a finished exchange. The oldest idle one is closed when it
/// has been idle too long, so a pool that shrinks after a burst gives its connections
/// back to the upstream without a sweeper.
fn checkin_http1(pool: PoolId, mut sender: Http1Connection, served: u32, idle_timeout: Duration) {
    // Hyper's handle says so for free. The codec's connection was just read to the end of
    // its response: it is looked at again when checked out (or swept) before any use,
    // and a look here too cost a readiness poll per request.
    if matches!(sender, Http1Connection::Hyper(_)) && sender.is_closed() {
        return;
    }
    // One clock read for both the oldest idle connection's age and this one's start.
    let now = Instant::now();
    // What is closed here is dropped after the pool's borrow (see `checkout_http1`).
    let mut closed = Vec::new();
    // A removed pool (its endpoint gone) takes nothing back: the connection closes.
    with_pool(pool, |pool| {
        if pool
            .idle
            .first()
            .is_some_and(|p| now.saturating_duration_since(p.since) >= idle_timeout)
        {
            closed.push(pool.idle.remove(0));
        }
        if pool.idle.len() < MAX_IDLE_PER_ENDPOINT {
            pool.idle.push(Pooled {
                sender,
                since: now,
                served,
            });
            pool.freed.notify_one();
        } else {
            closed.push(Pooled {
                sender,
                since: now,
                served,
            });
        }
    });
    drop(closed);
}

/// A connection to `endpoint`, secured as `cluster` asks (TLS origination), for the
/// host `sni` names on an auto-SNI cluster (`upstream_tls::auto_sni_host`).
async fn connect(
    cluster: &LiveCluster<'_>,
    endpoint: SocketAddr,
    sni: Option<&[u8]>,
) -> Result<UpstreamStream, TryFailure> {
    let timeout = cluster.connect_timeout;
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(endpoint)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            tracing::debug!(%endpoint, error = %e, "upstream connect failed");
            return Err(TryFailure::ConnectFailure);
        }
        Err(_) => {
            tracing::debug!(%endpoint, "upstream connect timed out");
            return Err(TryFailure::ConnectFailure);
        }
    };
    let _ = stream.set_nodelay(true);
    upstream_tls::secure(stream, cluster, timeout, sni)
        .await
        .map_err(TryFailure::Tls)
}

async fn connect_http1(
    cluster: &LiveCluster<'_>,
    endpoint: SocketAddr,
    open: OpenConnection,
    sni: Option<&[u8]>,
) -> Result<http1::SendRequest<ProxyBody>, TryFailure> {
    let stream = connect(cluster, endpoint, sni).await?;
    let (sender, connection) = http1::Builder::new()
        .max_buf_size(UPSTREAM_H1_MAX_BUF)
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|_| TryFailure::ConnectFailure)?;
    // Upgrades (WebSocket) take the connection over once the upstream answers 101.
    let tls_cluster = cluster.tls.is_some().then(|| cluster.name.clone());
    tokio::spawn(async move {
        if let Err(e) = connection.with_upgrades().await {
            count_tls_refusal(tls_cluster.as_deref(), &e);
            tracing::debug!(%endpoint, error = %e, "upstream connection ended");
        }
        drop(open);
    });
    Ok(sender)
}

async fn connect_http2(
    cluster: &LiveCluster<'_>,
    endpoint: SocketAddr,
    open: OpenConnection,
    sni: Option<&[u8]>,
) -> Result<http2::SendRequest<ProxyBody>, TryFailure> {
    let stream = connect(cluster, endpoint, sni).await?;
    let (sender, connection) = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|_| TryFailure::ConnectFailure)?;
    let tls_cluster = cluster.tls.is_some().then(|| cluster.name.clone());
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            count_tls_refusal(tls_cluster.as_deref(), &e);
            tracing::debug!(%endpoint, error = %e, "upstream connection ended");
        }
        drop(open);
    });
    Ok(sender)
}

/// A TLS connection the upstream ended with an alert after our side of the handshake
/// was done: with TLS 1.3 that is how an upstream refuses our client certificate. The
/// request on it has already failed (a connection termination); the refusal is counted
/// as the failed handshake it is.
fn count_tls_refusal(cluster: Option<&str>, error: &hyper::Error) {
    if let Some(cluster) = cluster
        && let Some(failure) = upstream_tls::TlsFailure::under(error)
    {
        upstream_tls::count(cluster, failure);
    }
}

/// Sorts a failed exchange into what `retry_on` and the response flags speak of.
fn classify(cluster: &LiveCluster<'_>, error: &hyper::Error) -> TryFailure {
    if error.is_parse() || error.is_parse_status() {
        return TryFailure::ProtocolError;
    }
    // The handshake was done before the exchange began (a failed one never gets here):
    // a TLS error now is the upstream ending the connection with an alert, counted by
    // the connection's task (`count_tls_refusal`).
    if cluster.tls.is_some()
        && let Some(failure) = upstream_tls::TlsFailure::under(error)
    {
        return TryFailure::ResetTls(failure);
    }
    let mut source = std::error::Error::source(error);
    while let Some(e) = source {
        if let Some(h2) = e.downcast_ref::<h2::Error>()
            && h2.reason() == Some(h2::Reason::REFUSED_STREAM)
        {
            return TryFailure::RefusedStream;
        }
        source = e.source();
    }
    TryFailure::Reset
}

/// Sorts a failed exchange of the codec's client as `classify` sorts hyper's. A TLS
/// error after the handshake is the upstream ending the connection with an alert
/// (refusing our client certificate, with TLS 1.3): counted as the failed handshake it is.
fn classify_own(cluster: &LiveCluster<'_>, error: &ClientError) -> TryFailure {
    if error.is_protocol() {
        return TryFailure::ProtocolError;
    }
    if cluster.tls.is_some()
        && let Some(failure) = upstream_tls::TlsFailure::under(error)
    {
        upstream_tls::count(&cluster.name, failure);
        return TryFailure::ResetTls(failure);
    }
    TryFailure::Reset
}

/// The response body as the client that read its head delivers it.
#[allow(
    clippy::large_enum_variant,
    reason = "one per request, boxed with the response body (`ProxyBody`) right after"
)]
enum Inner {
    Hyper(Incoming),
    Own(ResponseBody<UpstreamStream>),
}

/// What becomes of the HTTP/1.1 connection once the response has been read whole.
enum Reuse {
    /// HTTP/2, or a connection that will not carry another request.
    None,
    Hyper(Option<Pooled<Http1Connection>>),
    Own(OwnReuse),
}

struct OwnReuse {
    open: OpenConnection,
    served: u32,
    /// Within `maxRequestsPerConnection`, not upgraded.
    reusable: bool,
}

/// An upstream response body that gives its HTTP/1.1 connection back to the pool once
/// the body has been read to its end (a body dropped half-read closes the connection,
/// as its framing is lost), and counts as a request in flight until then.
pub(super) struct UpstreamBody {
    inner: Inner,
    pool: PoolId,
    reuse: Reuse,
    idle_timeout: Duration,
    /// The cluster's count of requests in flight (`http2MaxRequests`).
    in_flight: Option<Slot>,
}

/// The upstream's side of an upgraded (101) connection.
pub(super) enum UpstreamUpgrade {
    Hyper(hyper::upgrade::OnUpgrade),
    Own(Upgraded),
}

impl UpstreamBody {
    fn new(inner: Inner, pool: PoolId, reuse: Reuse, idle_timeout: Duration) -> Self {
        let mut body = UpstreamBody {
            inner,
            pool,
            reuse,
            idle_timeout,
            in_flight: None,
        };
        body.release_if_done();
        body
    }

    /// After a 101: the upstream's connection, for the tunnel.
    pub(super) fn upgrade(response: &mut Response<UpstreamBody>) -> UpstreamUpgrade {
        if let Inner::Own(body) = &mut response.body_mut().inner
            && let Some(upgraded) = body.take_upgraded()
        {
            return UpstreamUpgrade::Own(upgraded);
        }
        UpstreamUpgrade::Hyper(hyper::upgrade::on(response))
    }

    /// The response head's fields passed as they came, if they were: the response's
    /// map is empty then (`http1::passed`).
    pub(super) fn passed(&self) -> Option<&PassedFields> {
        match &self.inner {
            Inner::Own(body) => body.passed(),
            Inner::Hyper(_) => None,
        }
    }

    pub(super) fn take_passed(&mut self) -> Option<Box<PassedFields>> {
        match &mut self.inner {
            Inner::Own(body) => body.take_passed(),
            Inner::Hyper(_) => None,
        }
    }

    /// `name`'s value in `response`, wherever its fields are.
    pub(super) fn field<'a>(
        response: &'a Response<UpstreamBody>,
        name: &HeaderName,
    ) -> Option<&'a [u8]> {
        passed::get(response.headers(), response.body().passed(), name)
    }

    fn is_done(&self) -> bool {
        match &self.inner {
            Inner::Hyper(body) => body.is_end_stream(),
            Inner::Own(body) => body.is_end_stream(),
        }
    }

    fn release_if_done(&mut self) {
        if !self.is_done() {
            return;
        }
        self.in_flight = None;
        match std::mem::replace(&mut self.reuse, Reuse::None) {
            Reuse::None => {}
            Reuse::Hyper(connection) => {
                if let Some(connection) = connection {
                    checkin_http1(
                        self.pool,
                        connection.sender,
                        connection.served,
                        self.idle_timeout,
                    );
                }
            }
            Reuse::Own(reuse) => {
                let io = match &mut self.inner {
                    Inner::Own(body) if reuse.reusable => body.take_reusable(),
                    _ => None,
                };
                if let Some(io) = io {
                    let connection = Http1Connection::Own(OwnConnection {
                        io,
                        open: reuse.open,
                    });
                    checkin_http1(self.pool, connection, reuse.served, self.idle_timeout);
                }
            }
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = match &mut self.inner {
            Inner::Hyper(body) => Pin::new(body)
                .poll_frame(cx)
                .map(|f| f.map(|f| f.map_err(BoxError::from))),
            Inner::Own(body) => Pin::new(body)
                .poll_frame(cx)
                .map(|f| f.map(|f| f.map_err(BoxError::from))),
        };
        match &polled {
            Poll::Ready(None) => self.release_if_done(),
            Poll::Ready(Some(Ok(_))) => self.release_if_done(),
            Poll::Ready(Some(Err(_))) => {
                self.reuse = Reuse::None;
                self.in_flight = None;
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Hyper(body) => body.size_hint(),
            Inner::Own(body) => body.size_hint(),
        }
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        self.release_if_done();
    }
}
