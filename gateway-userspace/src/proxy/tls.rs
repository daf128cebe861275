//! HTTPS, TLS and TCP listeners. A TLS connection's ClientHello is read first and picks
//! the server by SNI; a name no server accepts is refused before any handshake. Then the
//! server terminates (rustls) and serves HTTP or proxies TCP, or passes the raw bytes,
//! ClientHello included, through to the destination.

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustls::server::Acceptor;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf},
    net::TcpStream,
};
use tokio_rustls::LazyConfigAcceptor;
use tracing::debug;

use super::{context::ProxyContext, forward, tcp, tunnel};
use crate::{
    authz::{Attributes, ListenerAuthz},
    metrics::HandshakeLabels,
    runtime::Live,
    snapshot::{AfterTermination, ListenerTls, SniRoute, TlsMode, Transport},
    tls::{TlsConnectionInfo, client_cert, server_config::PeerCertificate},
};

/// A client gets this long to send its ClientHello and finish the handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// ClientHellos larger than this are refused (real ones, post-quantum key shares
/// included, are under 2 KiB; a record is at most 16 KiB).
const MAX_CLIENT_HELLO: usize = 32 * 1024;
/// Bytes read from the socket at a time while waiting for the ClientHello.
const HELLO_READ_CHUNK: usize = 2048;

/// An accepted connection on an HTTPS, TLS or TCP listener.
pub(super) struct Accepted {
    pub stream: TcpStream,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    /// The configuration live at accept: it decides the connection's TLS server, and
    /// the upstream of TCP and passthrough streams.
    pub live: Arc<Live>,
    pub transport: Arc<Transport>,
    /// The listener's AuthorizationPolicies, as they were at accept.
    pub authz: Arc<ListenerAuthz>,
    pub ctx: Arc<ProxyContext>,
    /// The listener's drain: the codec's connections close between requests once it
    /// stops, and everything at its deadline.
    pub drain: tunnel::Drain,
}

impl Accepted {
    /// The clocks of a TCP or passthrough stream: the TCP idle timeout and the drain.
    /// Whether the listener's policies let this connection through, by what a connection
    /// tells (Istio's TCP RBAC: addresses, port, SNI, client certificate; no HTTP fields).
    fn connection_allowed(&self, sni: Option<&str>, principal: Option<&str>) -> bool {
        let attributes = Attributes {
            peer: self.peer.ip(),
            // No x-forwarded-for on a byte stream: the peer is the client.
            remote: self.peer.ip(),
            destination: self.local,
            sni,
            principal,
            http: None,
        };
        super::authz::allowed(&self.ctx, &self.authz.tcp, &attributes)
    }

    fn stream_clocks(&self) -> tunnel::Clocks {
        tunnel::Clocks {
            idle: self.ctx.limits.tcp_idle_timeout,
            drain: self.drain.clone(),
            websocket: false,
        }
    }
}

/// Serves a TCP listener's connection, or reads a TLS connection's ClientHello and
/// passes it through or terminates it; an HTTP connection served by the codec is
/// returned once terminated, for the caller to run (`Serving`), so that nothing of the
/// handshake stays allocated while it is idle.
pub(super) async fn serve(accepted: Accepted, builder: super::ServerBuilder) -> Option<Serving> {
    let transport = accepted.transport.clone();
    match &*transport {
        Transport::Tcp(clusters) => {
            if !accepted.connection_allowed(None, None) {
                // Closed before any upstream connection, as Envoy's network RBAC filter does.
                return None;
            }
            let clocks = accepted.stream_clocks();
            // Boxed: a TLS connection's future need not hold room for a TCP proxy's.
            Box::pin(tcp::proxy(
                &accepted.live,
                accepted.stream,
                &[],
                clusters,
                clocks,
            ))
            .await;
            None
        }
        Transport::Tls(tls) => serve_tls(accepted, tls, builder).await,
    }
}

/// What an HTTPS connection does once terminated: the codec's loop over the TLS stream.
pub(super) type Serving = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Reads the ClientHello and passes the connection through, or terminates it and
/// proxies TCP or serves HTTP under hyper; an HTTP connection served by the codec is
/// returned to the caller to run (`Serving`).
async fn serve_tls(
    accepted: Accepted,
    tls: &ListenerTls,
    builder: super::ServerBuilder,
) -> Option<Serving> {
    let clocks = accepted.stream_clocks();
    let mut accepted = accepted;
    let hello = match tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        read_client_hello(&mut accepted.stream),
    )
    .await
    {
        Ok(Ok(Some(hello))) => hello,
        Ok(Ok(None)) => return None,
        Ok(Err(e)) => {
            debug!(error = %e, "reading the ClientHello failed");
            return None;
        }
        Err(_) => {
            debug!("no ClientHello in time");
            return None;
        }
    };
    let passthrough = tls
        .select(hello.sni.as_deref())
        .is_some_and(|(_, server)| matches!(server.mode, TlsMode::Passthrough { .. }));
    if passthrough && !accepted.connection_allowed(hello.sni.as_deref(), None) {
        return None;
    }
    let Accepted {
        stream,
        peer,
        local,
        live,
        transport,
        authz,
        ctx,
        drain,
    } = accepted;
    let handshakes = |result| {
        ctx.metrics
            .tls_handshakes
            .get_or_create(&HandshakeLabels {
                port: local.port(),
                result,
            })
            .inc();
    };
    let Some((index, server)) = tls.select(hello.sni.as_deref()) else {
        handshakes("refused_sni");
        // Closing without a handshake, as Envoy does when no filter chain matches.
        debug!(sni = ?hello.sni, "refused: no server accepts this SNI");
        return None;
    };
    match &server.mode {
        TlsMode::Passthrough { routes } => {
            let Some(route) = SniRoute::find(routes, hello.sni.as_deref()) else {
                debug!(sni = ?hello.sni, server = %server.name, "refused: no tls route for this SNI");
                return None;
            };
            tcp::proxy(&live, stream, &hello.bytes, &route.clusters, clocks).await;
        }
        TlsMode::Terminate {
            config,
            trust,
            after,
        } => {
            let rewound = Rewind {
                prefix: hello.bytes,
                position: 0,
                inner: stream,
            };
            let handshake = async {
                let start = LazyConfigAcceptor::new(Acceptor::default(), rewound).await?;
                start.into_stream(config.clone()).await
            };
            let tls_stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
                Ok(Ok(tls_stream)) => {
                    handshakes("success");
                    tls_stream
                }
                Ok(Err(e)) => {
                    handshakes("failure");
                    debug!(error = %e, sni = ?hello.sni, "TLS handshake failed");
                    return None;
                }
                Err(_) => {
                    handshakes("failure");
                    debug!(sni = ?hello.sni, "TLS handshake timed out");
                    return None;
                }
            };
            // A certificate that did not verify (AllowInsecureFallback) is served as
            // none: never an identity, never forwarded.
            let (leaf, unverified_client_cert) = match trust
                .check(tls_stream.get_ref().1.peer_certificates())
            {
                PeerCertificate::Absent => (None, false),
                PeerCertificate::Trusted(leaf) => (Some(leaf), false),
                PeerCertificate::Unverified => {
                    debug!(sni = ?hello.sni, "client certificate did not verify: served as unverified");
                    (None, true)
                }
            };
            let principal = leaf.and_then(client_cert::principal);
            match after {
                AfterTermination::Tcp(clusters) => {
                    let attributes = Attributes {
                        peer: peer.ip(),
                        remote: peer.ip(),
                        destination: local,
                        sni: hello.sni.as_deref(),
                        principal: principal.as_deref(),
                        http: None,
                    };
                    if !super::authz::allowed(&ctx, &authz.tcp, &attributes) {
                        return None;
                    }
                    // Boxed: an HTTP connection's task need not hold a TCP proxy's state.
                    Box::pin(tcp::proxy(&live, tls_stream, &[], clusters, clocks)).await;
                }
                AfterTermination::Http => {
                    let client_cert = leaf.map(client_cert::forwarded_client_cert);
                    let info = TlsConnectionInfo {
                        sni: hello.sni,
                        server: index,
                        client_cert,
                        principal,
                        unverified_client_cert,
                    };
                    if ctx.http1_server == super::http1::Http1Server::Own {
                        let connection = forward::Connection::new(
                            peer,
                            local,
                            ctx.clone(),
                            Some((Arc::new(info), transport.clone())),
                        )
                        .with_drain(drain);
                        let client = super::CodecClient {
                            connection: Arc::new(connection),
                            ctx,
                        };
                        return Some(Box::pin(super::serve_with_codec(
                            tls_stream, client, builder,
                        )));
                    }
                    // The framing guard and the connection's clocks, as on plaintext ports.
                    let log_ctx = ctx.clone();
                    let guarded = super::h1_guard::H1Guard::new(tls_stream, &ctx, peer, local);
                    let connection = Arc::new(
                        forward::Connection::new(
                            peer,
                            local,
                            ctx,
                            Some((Arc::new(info), transport.clone())),
                        )
                        .with_drain(drain),
                    );
                    let held = connection.clone();
                    let service = service_fn(move |request| {
                        let connection = connection.clone();
                        async move {
                            let request = request.map(super::body::ClientBody::Hyper);
                            Ok::<_, std::convert::Infallible>(connection.handle(request).await)
                        }
                    });
                    let conn = builder
                        .serve_connection_with_upgrades(TokioIo::new(guarded), service)
                        .into_owned();
                    // Boxed: the codec's connections need no room for hyper's.
                    let mut conn = Box::pin(conn);
                    let ended = held.drain().serve_hyper(conn.as_mut()).await;
                    super::served_by_hyper(ended, &log_ctx, local, peer);
                }
            }
        }
    }
    None
}

/// The ClientHello's bytes as read from the socket, and its SNI (lowercase).
struct ClientHello {
    bytes: Vec<u8>,
    sni: Option<String>,
}

/// Reads until rustls has a whole ClientHello. None: the client closed, sent something
/// that is not a ClientHello, or sent too much.
async fn read_client_hello(stream: &mut TcpStream) -> io::Result<Option<ClientHello>> {
    let mut acceptor = Acceptor::default();
    let mut bytes = Vec::with_capacity(HELLO_READ_CHUNK);
    loop {
        let start = bytes.len();
        if start >= MAX_CLIENT_HELLO {
            return Ok(None);
        }
        bytes.resize(start + HELLO_READ_CHUNK, 0);
        let read = stream.read(&mut bytes[start..]).await?;
        bytes.truncate(start + read);
        if read == 0 {
            return Ok(None);
        }
        let mut fresh = &bytes[start..];
        while !fresh.is_empty() {
            if acceptor.read_tls(&mut fresh)? == 0 {
                break;
            }
        }
        match acceptor.accept() {
            Ok(None) => continue,
            Ok(Some(accepted)) => {
                let sni = accepted
                    .client_hello()
                    .server_name()
                    .map(str::to_ascii_lowercase);
                return Ok(Some(ClientHello { bytes, sni }));
            }
            Err((e, _alert)) => {
                debug!(error = %e, "not a TLS ClientHello");
                return Ok(None);
            }
        }
    }
}

/// A stream that first replays bytes already read from it (the ClientHello, or the
/// HTTP/2 preface the codec read), so the next reader sees it from its first byte.
pub(super) struct Rewind<S> {
    prefix: Vec<u8>,
    position: usize,
    inner: S,
}

impl<S> Rewind<S> {
    pub(super) fn new(prefix: Vec<u8>, inner: S) -> Self {
        Rewind {
            prefix,
            position: 0,
            inner,
        }
    }
}

/// Readable at once while the prefix lasts, then when the socket is.
impl<S: super::http1::IdleWait> super::http1::IdleWait for Rewind<S> {
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.position < self.prefix.len() {
            return Poll::Ready(Ok(()));
        }
        self.inner.poll_idle(cx)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.position < this.prefix.len() {
            let rest = &this.prefix[this.position..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.position += n;
            if this.position == this.prefix.len() {
                // Idle connections should not keep the hello's buffer.
                this.prefix = Vec::new();
                this.position = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
