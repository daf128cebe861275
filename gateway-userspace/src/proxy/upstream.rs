//! Upstream connections. Each worker thread keeps its own pool per endpoint and
//! protocol, as Envoy's workers do, so a request never waits on a lock or on another
//! thread's connection: HTTP/1.1 connections carry one request at a time and go back to
//! the pool when their response body ends (last in, first out, so a warm few carry the
//! load and the rest age out); an HTTP/2 (h2c) connection is shared by every request of
//! the thread to that endpoint.

use std::{
    cell::RefCell,
    collections::HashMap,
    net::SocketAddr,
    pin::Pin,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{Request, Response};
use hyper::{
    body::{Body, Frame, Incoming, SizeHint},
    client::conn::{http1, http2},
};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustc_hash::FxBuildHasher;
use tokio::net::TcpStream;

use super::{forward::ProxyBody, route_actions::TryFailure};
use crate::snapshot::UpstreamProtocol;

/// Idle HTTP/1.1 connections kept per endpoint and thread; more are closed when they
/// come back (a burst's connections do not stay open forever).
const MAX_IDLE_PER_ENDPOINT: usize = 256;
/// Idle upstream connections are closed after this long (Envoy's upstream idle
/// timeout is 1 h; upstream servers usually close sooner, nginx after 75 s).
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// A pooled HTTP/1.1 connection whose previous exchange is still finishing (its request
/// body still being written) gets this long before a fresh connection is used instead.
const POOLED_READY_WAIT: Duration = Duration::from_millis(10);

type Pools = HashMap<(SocketAddr, UpstreamProtocol), EndpointPool, FxBuildHasher>;

thread_local! {
    /// This worker thread's pools (each worker is a single-threaded runtime).
    static POOLS: RefCell<Pools> = const { RefCell::new(HashMap::with_hasher(FxBuildHasher)) };
}

#[derive(Default)]
struct EndpointPool {
    /// HTTP/1.1 connections waiting for a request, most recently used last.
    idle: Vec<(http1::SendRequest<ProxyBody>, Instant)>,
    /// The shared HTTP/2 connection.
    shared: Option<http2::SendRequest<ProxyBody>>,
}

/// Sends `request` (origin-form URI and Host header for HTTP/1.1; absolute URI for
/// HTTP/2) to `endpoint`, over a pooled connection when one is free.
pub(super) async fn send(
    endpoint: SocketAddr,
    protocol: UpstreamProtocol,
    connect_timeout: Duration,
    request: Request<ProxyBody>,
) -> Result<Response<UpstreamBody>, TryFailure> {
    match protocol {
        UpstreamProtocol::Http1 => send_http1(endpoint, connect_timeout, request).await,
        UpstreamProtocol::Http2 => send_http2(endpoint, connect_timeout, request).await,
    }
}

async fn send_http1(
    endpoint: SocketAddr,
    connect_timeout: Duration,
    mut request: Request<ProxyBody>,
) -> Result<Response<UpstreamBody>, TryFailure> {
    loop {
        let (mut sender, reused) = match checkout_http1(endpoint) {
            Some(sender) => (sender, true),
            None => (connect_http1(endpoint, connect_timeout).await?, false),
        };
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
                // An upgraded connection belongs to the upgrade, never to the pool.
                let reusable =
                    (response.status() != http::StatusCode::SWITCHING_PROTOCOLS).then_some(sender);
                return Ok(response.map(|body| UpstreamBody::new(body, endpoint, reusable)));
            }
            Err(mut failed) => match failed.take_message() {
                // A kept-alive connection the upstream had just closed: the request
                // never left, so it goes out again on another connection.
                Some(unsent) if reused => request = unsent,
                _ => return Err(classify(failed.error())),
            },
        }
    }
}

async fn send_http2(
    endpoint: SocketAddr,
    connect_timeout: Duration,
    mut request: Request<ProxyBody>,
) -> Result<Response<UpstreamBody>, TryFailure> {
    loop {
        let (mut sender, reused) = match checkout_http2(endpoint) {
            Some(sender) => (sender, true),
            None => {
                let sender = connect_http2(endpoint, connect_timeout).await?;
                with_pool(endpoint, UpstreamProtocol::Http2, |pool| {
                    pool.shared = Some(sender.clone());
                });
                (sender, false)
            }
        };
        match sender.try_send_request(request).await {
            Ok(response) => return Ok(response.map(|body| UpstreamBody::new(body, endpoint, None))),
            Err(mut failed) => match failed.take_message() {
                Some(unsent) if reused => {
                    with_pool(endpoint, UpstreamProtocol::Http2, |pool| pool.shared = None);
                    request = unsent;
                }
                _ => return Err(classify(failed.error())),
            },
        }
    }
}

fn with_pool<T>(
    endpoint: SocketAddr,
    protocol: UpstreamProtocol,
    f: impl FnOnce(&mut EndpointPool) -> T,
) -> T {
    POOLS.with_borrow_mut(|pools| f(pools.entry((endpoint, protocol)).or_default()))
}

/// The most recently used live idle connection; expired and closed ones are dropped.
fn checkout_http1(endpoint: SocketAddr) -> Option<http1::SendRequest<ProxyBody>> {
    with_pool(endpoint, UpstreamProtocol::Http1, |pool| {
        while let Some((sender, since)) = pool.idle.pop() {
            if !sender.is_closed() && since.elapsed() < IDLE_TIMEOUT {
                return Some(sender);
            }
        }
        None
    })
}

fn checkout_http2(endpoint: SocketAddr) -> Option<http2::SendRequest<ProxyBody>> {
    with_pool(endpoint, UpstreamProtocol::Http2, |pool| {
        match &pool.shared {
            Some(sender) if !sender.is_closed() => Some(sender.clone()),
            _ => {
                pool.shared = None;
                None
            }
        }
    })
}

/// A connection back from a finished exchange. The oldest idle one is closed when it
/// has been idle too long, so a pool that shrinks after a burst gives its connections
/// back to the upstream without a sweeper.
fn checkin_http1(endpoint: SocketAddr, sender: http1::SendRequest<ProxyBody>) {
    if sender.is_closed() {
        return;
    }
    with_pool(endpoint, UpstreamProtocol::Http1, |pool| {
        if pool
            .idle
            .first()
            .is_some_and(|(_, since)| since.elapsed() >= IDLE_TIMEOUT)
        {
            pool.idle.remove(0);
        }
        if pool.idle.len() < MAX_IDLE_PER_ENDPOINT {
            pool.idle.push((sender, Instant::now()));
        }
    });
}

async fn connect(endpoint: SocketAddr, timeout: Duration) -> Result<TcpStream, TryFailure> {
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
    Ok(stream)
}

async fn connect_http1(
    endpoint: SocketAddr,
    timeout: Duration,
) -> Result<http1::SendRequest<ProxyBody>, TryFailure> {
    let stream = connect(endpoint, timeout).await?;
    let (sender, connection) = http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|_| TryFailure::ConnectFailure)?;
    // Upgrades (WebSocket) take the connection over once the upstream answers 101.
    tokio::spawn(async move {
        if let Err(e) = connection.with_upgrades().await {
            tracing::debug!(%endpoint, error = %e, "upstream connection ended");
        }
    });
    Ok(sender)
}

async fn connect_http2(
    endpoint: SocketAddr,
    timeout: Duration,
) -> Result<http2::SendRequest<ProxyBody>, TryFailure> {
    let stream = connect(endpoint, timeout).await?;
    let (sender, connection) = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|_| TryFailure::ConnectFailure)?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(%endpoint, error = %e, "upstream connection ended");
        }
    });
    Ok(sender)
}

/// Sorts a failed exchange into what `retry_on` and the response flags speak of.
fn classify(error: &hyper::Error) -> TryFailure {
    if error.is_parse() || error.is_parse_status() {
        return TryFailure::ProtocolError;
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

/// An upstream response body that gives its HTTP/1.1 connection back to the pool once
/// the body has been read to its end (a body dropped half-read closes the connection,
/// as its framing is lost).
pub struct UpstreamBody {
    inner: Incoming,
    endpoint: SocketAddr,
    connection: Option<http1::SendRequest<ProxyBody>>,
}

impl UpstreamBody {
    fn new(
        inner: Incoming,
        endpoint: SocketAddr,
        connection: Option<http1::SendRequest<ProxyBody>>,
    ) -> Self {
        let mut body = UpstreamBody {
            inner,
            endpoint,
            connection,
        };
        body.release_if_done();
        body
    }

    fn release_if_done(&mut self) {
        if self.inner.is_end_stream()
            && let Some(connection) = self.connection.take()
        {
            checkin_http1(self.endpoint, connection);
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.release_if_done(),
            Poll::Ready(Some(Ok(_))) => self.release_if_done(),
            Poll::Ready(Some(Err(_))) => self.connection = None,
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        self.release_if_done();
    }
}
