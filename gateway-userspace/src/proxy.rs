//! Serving: one accept loop per listener, HTTP/1.1 and h2c on every connection (told
//! apart by the HTTP/2 preface), each request routed by the configuration live when it
//! arrives and forwarded to an upstream endpoint.

mod accept;
mod access_log;
mod authz;
mod body;
mod boxed;
mod connection_log;
mod context;
mod drain;
mod edge_headers;
mod flags;
mod forward;
mod forward_action;
mod grpc;
mod h1_guard;
mod hash_key;
mod head_facts;
mod http1;
mod limits;
mod local_reply;
mod log_sink;
mod mirror;
mod normalize;
mod outcome;
mod replay;
mod route_actions;
mod route_clock;
mod tcp;
mod tls;
mod tries;
mod tunnel;
mod turned;
mod upstream;
mod upstream_head;
mod upstream_tls;

use std::{net::SocketAddr, pin::Pin, sync::Arc, task::Poll, time::Duration};

use hyper::{body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use thiserror::Error;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
    sync::watch,
};
use tracing::{Instrument, debug, debug_span, info, warn};

use drain::{Drain, Listening};

pub use access_log::AccessLogFormat;
pub use context::ProxyContext;
#[doc(hidden)]
pub use h1_guard::fuzzing as h1_fuzzing;
#[doc(hidden)]
pub use http1::fuzzing as h1_codec_fuzzing;
pub use http1::{Http1Client, Http1Server};
pub use limits::Limits;
pub use log_sink::flush as flush_access_log;
pub use normalize::PathNormalization;

/// Backlog of each listening socket: bursts of new connections queue in the kernel.
pub(crate) const LISTEN_BACKLOG: u32 = 4096;
/// The head limits are the codec's (`http1/rules.rs`); hyper's server gets the same.
const MAX_REQUEST_HEAD_BYTES: usize = http1::rules::MAX_HEAD_BYTES;
const MAX_REQUEST_HEADERS: usize = http1::rules::MAX_HEADERS;
/// Concurrent streams per HTTP/2 connection: a client cannot pin unbounded work on one
/// connection.
const MAX_CONCURRENT_STREAMS: u32 = 1024;
/// Streams a client may open and reset before the server accepted them: the HTTP/2
/// rapid-reset flood guard (CVE-2023-44487); beyond it the connection gets GOAWAY.
const MAX_PENDING_RESET_STREAMS: usize = 20;
/// Streams the server may reset because of client protocol errors before it gives up on
/// the connection (the "MadeYouReset" guard).
const MAX_LOCAL_ERROR_RESET_STREAMS: usize = 1024;
/// HTTP/2 flow control: request DATA a client may send that the gateway has not passed
/// on yet, over all streams of its connection, and on one stream (hyper's defaults, set
/// here because they are the bound): 1024 stalled streams park at most 1 MiB unread, not
/// 1024 windows' worth. Data passed on is released as the upstream takes it.
const H2_CONNECTION_WINDOW: u32 = 1024 * 1024;
const H2_STREAM_WINDOW: u32 = 1024 * 1024;
/// hyper's server settings, shared by a listener's connections.
type ServerBuilder = Arc<auto::Builder<TokioExecutor>>;
/// After a failed accept (EMFILE and the like), pause instead of spinning.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

#[derive(Debug, Error)]
pub enum ProxyError {
    #[error("binding port {port}{}: {source}", address.map_or_else(String::new, |a| format!(" on {a}")))]
    Bind {
        port: u16,
        /// None: every address.
        address: Option<std::net::IpAddr>,
        source: std::io::Error,
    },
}

/// Closes the pooled upstream connections of the worker it runs on when their endpoint
/// leaves the configuration; one per worker, for the process's life.
pub async fn sweep_upstream_pools(ctx: Arc<ProxyContext>) {
    upstream::sweep_removed_endpoints(ctx.live.clone()).await;
}

/// TCP_NODELAY on a listening socket: every socket it accepts inherits it, so that an
/// answer's last small write leaves at once instead of waiting for the client's ACK.
fn set_nodelay(socket: &impl std::os::fd::AsRawFd) -> std::io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: a valid socket fd and a c_int option value of the right size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Accepts until `shutdown` turns true, then lets open connections finish their
/// in-flight requests for up to `drain_timeout`.
pub async fn serve(
    listener: std::net::TcpListener,
    ctx: Arc<ProxyContext>,
    shutdown: watch::Receiver<bool>,
    drain_timeout: Duration,
) {
    let bind_port = listener.local_addr().map(|a| a.port()).unwrap_or_default();
    // Set once here for every connection the socket will accept (they inherit it).
    if let Err(e) = set_nodelay(&listener) {
        warn!(port = bind_port, error = %e, "TCP_NODELAY not set on the listener");
    }
    // Registered with the runtime of the worker this task runs on.
    let mut listener = match accept::Acceptor::new(listener) {
        Ok(listener) => listener,
        Err(e) => {
            warn!(port = bind_port, error = %e, "listener not served");
            return;
        }
    };
    // This loop's connections' drain (`drain.rs`): told when the listener stops and at
    // the deadline; it counts them until the last has ended.
    let listening = Listening::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // The framing guard times heads from their first byte (limits.rs); hyper's
        // clock would also run while a keep-alive connection sits idle.
        .header_read_timeout(None)
        .max_buf_size(MAX_REQUEST_HEAD_BYTES)
        .max_headers(MAX_REQUEST_HEADERS);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .initial_connection_window_size(H2_CONNECTION_WINDOW)
        .initial_stream_window_size(H2_STREAM_WINDOW)
        .max_header_list_size(MAX_REQUEST_HEAD_BYTES as u32)
        .max_pending_accept_reset_streams(MAX_PENDING_RESET_STREAMS)
        .max_local_error_reset_streams(MAX_LOCAL_ERROR_RESET_STREAMS);
    // Shared: a connection needs it only when it turns out to be HTTP/2.
    let builder: ServerBuilder = Arc::new(builder);
    // The port's accepted-connections counter, looked up once (the family's lookup takes
    // its lock and hashes the labels) and counted per connection.
    let accepted_total = ctx
        .metrics
        .downstream_connections
        .get_or_create(&crate::metrics::PortLabels { port: bind_port })
        .clone();
    info!(port = bind_port, "listening");
    // The connection spans below are debug spans, made only with debug logs on, where
    // they tag every event with the client.

    // The shutdown wait, registered once for the loop's life: a `wait_for` made per
    // accept registered with the watch's notifier, and unregistered, each time (a lock
    // the listener's other workers take too).
    let mut stopping = turned::turned(shutdown.clone());
    loop {
        // A slot first: at --max-connections, new connections wait in the backlog.
        let slot = match ctx.connections.try_acquire() {
            Some(slot) => slot,
            None => tokio::select! {
                biased;
                () = &mut stopping => break,
                slot = ctx.connections.acquire() => slot,
            },
        };
        // Polled rather than awaited as a future of its own: one registration of the
        // task with the socket, not one per accept (`accept.rs`: and no failed
        // `accept4` after each burst).
        let accepted = std::future::poll_fn(|cx| {
            if Pin::new(&mut stopping).poll(cx).is_ready() {
                return Poll::Ready(None);
            }
            listener.poll_accept(cx).map(Some)
        })
        .await;
        let (stream, peer) = match accepted {
            None => break,
            Some(Ok(accepted)) => accepted,
            Some(Err(e)) => {
                warn!(port = bind_port, error = %e, "accept failed");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        accepted_total.inc();
        // Not the listener's address: a wildcard socket accepts for every local address,
        // and node-port steering hands it connections to another port.
        let local = stream
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], bind_port)));
        // TCP_NODELAY is not set here: accepted sockets inherit it from the listening
        // socket (`listeners/bind.rs`), a system call saved per connection.
        let accepted = AcceptedConnection {
            slot,
            stream,
            peer,
            local,
            ctx: ctx.clone(),
            builder: builder.clone(),
            drain: listening.drain(),
        };
        // The connection's span only where debug logs are on: a disabled span still costs
        // its wrapper's enter and exit at every poll of the connection's task.
        // Boxed where it is made: tokio moves a spawned future several times on its way
        // into the task's cell, and writes its whole stage again when the task ends.
        if tracing::enabled!(tracing::Level::DEBUG) {
            let span = debug_span!("conn", %peer);
            tokio::spawn(boxed::pinned(|| accepted.serve().instrument(span)));
        } else {
            tokio::spawn(boxed::pinned(|| accepted.serve()));
        }
    }

    drop(listener);
    // Idle connections close, busy ones after their answer (`Connection: close`), hyper's
    // are told to shut down gracefully.
    listening.stop();
    info!(port = bind_port, open = listening.open(), "draining");
    // Every connection, tunnel and stream holds a `Drain` until it ends.
    if tokio::time::timeout(drain_timeout, listening.emptied())
        .await
        .is_err()
    {
        warn!(
            port = bind_port,
            "drain timeout: closing the remaining connections"
        );
        listening.pass_deadline();
        // WebSockets send their close frames before the process may exit.
        let _ = tokio::time::timeout(tunnel::CLOSE_GRACE * 2, listening.emptied()).await;
    }
}

/// A connection served by the codec, and whom its answers are logged for.
struct CodecClient {
    /// Carries the client's peer and local addresses too.
    connection: Arc<forward::Connection>,
    ctx: Arc<ProxyContext>,
}

/// One downstream HTTP connection (plaintext or TLS-terminated) under `--http1-server
/// own`: HTTP/1 by the codec until the connection ends or the drain deadline; a
/// connection that opens with the HTTP/2 preface goes to hyper's h2 server behind the
/// framing guard (which keeps HTTP/2's idle clock).
///
/// Not an async fn: the codec's loop is boxed here, from `io` given by value, so no
/// future holds the stream as an argument besides the loop that uses it (an async fn
/// keeps its arguments' room for its whole life: rust-lang/rust#62958). What an idle
/// connection costs is the loop's state once, and this wrapper's few words.
fn serve_with_codec<S>(
    io: S,
    client: CodecClient,
    builder: ServerBuilder,
) -> impl Future<Output = ()> + Send
where
    S: AsyncRead + AsyncWrite + http1::IdleWait + Unpin + Send + 'static,
{
    // Made in its box (`boxed::pinned`): `Box::pin` made the loop's future on the stack
    // and copied it in (320 bytes on plain TCP, per connection).
    let (connection, ctx) = (client.connection.clone(), client.ctx.clone());
    let served = boxed::pinned(|| http1::serve(io, connection, ctx));
    until_drained(served, client, builder)
}

/// The codec's loop until it ends or the drain deadline; HTTP/2 after it when the
/// connection opened with the preface. A block, not an async fn, for the reason above.
///
/// The connection's one registration with its listener's drain (`drain::Watch`) is made
/// here, in the connection's outermost future: it wakes the task at each change of
/// phase, and the codec's loop, polled at that wake-up, reads the phase (`Drain::stopping`)
/// without a wait of its own.
#[allow(clippy::manual_async_fn)] // on purpose: see above
fn until_drained<S>(
    mut served: Pin<Box<impl Future<Output = http1::Ending<S>> + Send>>,
    client: CodecClient,
    builder: ServerBuilder,
) -> impl Future<Output = ()> + Send
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    async move {
        let ending = {
            let mut watch = client.connection.drain().watch();
            std::future::poll_fn(|cx| {
                // Registered first, so that the loop's look at the phase is never missed.
                if watch.poll_deadline(cx).is_ready() {
                    return Poll::Ready(None);
                }
                served.as_mut().poll(cx).map(Some)
            })
            .await
        };
        drop(served);
        let Some(ending) = ending else {
            debug!("connection closed at the drain deadline");
            return;
        };
        let http1::Ending::Http2 { read, io } = ending else {
            return;
        };
        // Boxed, out of line (`boxed::Cold`): HTTP/2 connections are the few here, and an
        // HTTP/1 connection's task need not carry room for hyper's HTTP/2 server (nor for
        // building it).
        boxed::Cold::new(|| serve_h2_after_preface(read, io, client, builder)).await;
    }
}

/// A connection that opened with the HTTP/2 preface: hyper's h2 server behind the
/// framing guard, fed the bytes the codec read first.
async fn serve_h2_after_preface<S>(
    read: Vec<u8>,
    io: S,
    client: CodecClient,
    builder: ServerBuilder,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let CodecClient { connection, ctx } = client;
    let (peer, local) = (connection.peer, connection.local);
    let held = connection.clone();
    let service = service_fn(move |request: hyper::Request<Incoming>| {
        let connection = connection.clone();
        let request = request.map(body::ClientBody::Hyper);
        async move { Ok::<_, std::convert::Infallible>(connection.handle(request).await) }
    });
    let guarded = h1_guard::H1Guard::new(tls::Rewind::new(read, io), &ctx, peer, local);
    let conn = builder
        .serve_connection_with_upgrades(TokioIo::new(guarded), service)
        .into_owned();
    let conn = std::pin::pin!(conn);
    served_by_hyper(held.drain().serve_hyper(conn).await, &ctx, local, peer);
}

/// Logs how a connection served by hyper ended.
fn served_by_hyper(
    ended: Option<Result<(), Box<dyn std::error::Error + Send + Sync>>>,
    ctx: &ProxyContext,
    local: SocketAddr,
    peer: SocketAddr,
) {
    match ended {
        Some(Ok(())) => {}
        Some(Err(e)) => {
            connection_log::connection_error(ctx, local, peer, &*e);
            debug!(error = %e, "connection ended with an error");
        }
        None => debug!("connection closed at the drain deadline"),
    }
}

#[cfg(test)]
mod tests;

/// One accepted connection and what its listener's loop shares with it.
struct AcceptedConnection {
    /// Held until the connection ends. Inside the connection's future rather than
    /// around it: an async fn that awaits a future it was given keeps room for it twice
    /// (rust-lang/rust#62958), and the task is what every idle connection costs.
    slot: crate::connections::ConnectionSlot,
    stream: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    ctx: Arc<ProxyContext>,
    builder: ServerBuilder,
    drain: Drain,
}

impl AcceptedConnection {
    /// The balancer's PROXY protocol header, where the listener expects one; then TLS
    /// (HTTPS, TLS and TCP listeners) or plain HTTP/1.1 and h2c.
    ///
    /// A block using `self`'s fields in place rather than an async fn destructuring it:
    /// that would keep the struct's room beside the moved fields (rust-lang/rust#62958)
    /// in the task of every connection.
    #[allow(clippy::manual_async_fn)] // on purpose: see above
    fn serve(mut self) -> impl Future<Output = ()> + Send {
        async move {
            // Named, so that the block owns the slot until the connection ends: a block
            // captures only the fields it mentions, and one never mentioned would be
            // dropped when the block is made, freeing the slot at accept.
            let _slot = self.slot;
            // The configuration live at accept decides the connection's listener, found
            // once.
            let live = self.ctx.live.load_full();
            let listener = live.snapshot.listener_for(self.local);
            let proxy_protocol = listener.is_some_and(|l| l.proxy_protocol);
            let terminating = listener.and_then(|l| Some((l.transport.clone()?, l.authz.clone())));
            if proxy_protocol {
                // Boxed, out of line (`boxed::Cold`): only PROXY protocol listeners need
                // room for the header's read.
                let stream = &mut self.stream;
                let (ctx, local) = (&self.ctx, self.local);
                match boxed::Cold::new(|| read_proxy_header(stream, ctx, local)).await {
                    // The client's address stands for the balancer's. The local address
                    // stays the socket's: it names the listener the connection arrived on.
                    Some(header) => self.peer = header.addresses(self.peer, self.local).0,
                    None => return,
                }
            }
            let (peer, local) = (self.peer, self.local);
            if let Some((transport, authz)) = terminating {
                let accepted = tls::Accepted {
                    stream: self.stream,
                    peer,
                    local,
                    live,
                    transport,
                    authz,
                    ctx: self.ctx,
                    drain: self.drain,
                };
                // Boxed, out of line (`boxed::Cold`): otherwise every plaintext
                // connection's task (and its poll's stack frame) would be as large as the
                // TLS path's state (the handshake, rustls' connection). The box is freed
                // once the handshake is done: an HTTP connection then runs what it
                // returned.
                let builder = self.builder;
                let serving = boxed::Cold::new(|| tls::serve(accepted, builder)).await;
                if let Some(serving) = serving {
                    serving.await;
                }
                return;
            }
            drop(live);
            let ctx = self.ctx;
            // The connection holds the drain for its life (and its upgrades take copies).
            let connection =
                forward::Connection::new(peer, local, ctx.clone(), None).with_drain(self.drain);
            let own = ctx.http1_server == Http1Server::Own;
            let client = CodecClient {
                connection: Arc::new(connection),
                ctx,
            };
            if own {
                return serve_with_codec(self.stream, client, self.builder).await;
            }
            // Boxed, out of line (`boxed::Cold`): hyper's connection state would otherwise
            // make every connection's task, the codec's idle ones included, as large as
            // hyper's server.
            let (stream, builder) = (self.stream, self.builder);
            boxed::Cold::new(|| serve_with_hyper(stream, client, builder)).await;
        }
    }
}

/// One downstream plaintext connection under `--http1-server hyper`: hyper's server
/// behind the framing guard, until the connection ends or the drain deadline.
async fn serve_with_hyper(stream: TcpStream, client: CodecClient, builder: ServerBuilder) {
    let CodecClient { connection, ctx } = client;
    let (peer, local) = (connection.peer, connection.local);
    let held = connection.clone();
    let service = service_fn(move |request: hyper::Request<Incoming>| {
        let connection = connection.clone();
        let request = request.map(body::ClientBody::Hyper);
        async move { Ok::<_, std::convert::Infallible>(connection.handle(request).await) }
    });
    let conn = builder
        .serve_connection_with_upgrades(
            TokioIo::new(h1_guard::H1Guard::new(stream, &ctx, peer, local)),
            service,
        )
        .into_owned();
    let conn = std::pin::pin!(conn);
    served_by_hyper(held.drain().serve_hyper(conn).await, &ctx, local, peer);
}

/// Reads the PROXY protocol header within `--proxy-protocol-timeout`. A connection
/// without a valid one is closed (counted, logged at debug: a scanner can send many).
async fn read_proxy_header(
    stream: &mut TcpStream,
    ctx: &ProxyContext,
    local: SocketAddr,
) -> Option<crate::proxy_protocol::Header> {
    let read = tokio::time::timeout(
        ctx.limits.proxy_protocol_timeout,
        crate::proxy_protocol::read_header(stream),
    )
    .await;
    let error = match read {
        Ok(Ok(header)) => return Some(header),
        Ok(Err(e)) => e.to_string(),
        Err(_) => "no complete PROXY protocol header in time".to_owned(),
    };
    ctx.metrics
        .downstream_cx_proxy_proto_error
        .get_or_create(&crate::metrics::PortLabels { port: local.port() })
        .inc();
    debug!(error, "closing: no valid PROXY protocol header");
    None
}
