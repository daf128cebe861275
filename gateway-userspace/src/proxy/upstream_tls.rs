//! The TLS half of an upstream connection: a cluster with DestinationRule `tls` gets its
//! TCP stream wrapped in a TLS client session (its SNI, ALPN, verification and resumed
//! sessions come from the compiled [`UpstreamTls`]); a failed handshake is sorted by
//! reason as Envoy reports it (`transport failure reason: TLS_error:…`) and counted in
//! `gateway_upstream_tls_handshake_errors_total{cluster,reason}`.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll, ready},
    time::Duration,
};

use rustls::{AlertDescription, CertificateError};
use rustls_pki_types::ServerName;
use tokio::{
    io::{AsyncBufRead, AsyncRead, AsyncWrite, Interest, ReadBuf},
    net::TcpStream,
};
use tokio_rustls::{TlsConnector, client::TlsStream};

use crate::{
    metrics::{UPSTREAM_TLS_HANDSHAKE_ERRORS, UpstreamTlsLabels},
    snapshot::Cluster,
    tls::upstream::{UpstreamTls, no_server_name},
};

/// Why an upstream TLS handshake failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TlsFailure {
    /// The chain does not lead to a trusted CA (or is otherwise invalid).
    CertificateUntrusted,
    /// The certificate has expired or is not valid yet.
    CertificateExpired,
    /// The certificate carries none of the names asked for (`subjectAltNames` or SNI).
    NameMismatch,
    /// The upstream sent an alert: it refused us (our client certificate, say).
    PeerAlert(Alert),
    /// What came back is not TLS (a plaintext server).
    NotTls,
    /// The upstream closed the connection during the handshake.
    Closed,
    /// The handshake did not finish within the connect timeout.
    Timeout,
    /// The cluster's TLS settings could not be honoured (see the DestinationRule's
    /// warnings): no handshake is attempted.
    Unconfigured,
    Other,
}

/// The alerts an upstream sends when it refuses a client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Alert {
    HandshakeFailure,
    CertificateRequired,
    BadCertificate,
    UnknownCa,
    Other,
}

impl TlsFailure {
    /// The `reason` label of the metric.
    pub(crate) fn label(self) -> &'static str {
        match self {
            TlsFailure::CertificateUntrusted => "certificate_untrusted",
            TlsFailure::CertificateExpired => "certificate_expired",
            TlsFailure::NameMismatch => "name_mismatch",
            TlsFailure::PeerAlert(_) => "peer_alert",
            TlsFailure::NotTls => "not_tls",
            TlsFailure::Closed => "closed",
            TlsFailure::Timeout => "timeout",
            TlsFailure::Unconfigured => "unconfigured",
            TlsFailure::Other => "handshake_failure",
        }
    }

    /// Envoy's `%UPSTREAM_TRANSPORT_FAILURE_REASON%`, with BoringSSL's names for what
    /// BoringSSL would have said (without its numeric error codes).
    pub(crate) fn reason(self) -> &'static str {
        match self {
            TlsFailure::CertificateUntrusted
            | TlsFailure::CertificateExpired
            | TlsFailure::NameMismatch => {
                "TLS_error:|SSL routines:CERTIFICATE_VERIFY_FAILED:TLS_error_end"
            }
            TlsFailure::PeerAlert(Alert::HandshakeFailure) => {
                "TLS_error:|SSL routines:SSLV3_ALERT_HANDSHAKE_FAILURE:TLS_error_end"
            }
            TlsFailure::PeerAlert(Alert::CertificateRequired) => {
                "TLS_error:|SSL routines:TLSV1_ALERT_CERTIFICATE_REQUIRED:TLS_error_end"
            }
            TlsFailure::PeerAlert(Alert::BadCertificate) => {
                "TLS_error:|SSL routines:SSLV3_ALERT_BAD_CERTIFICATE:TLS_error_end"
            }
            TlsFailure::PeerAlert(Alert::UnknownCa) => {
                "TLS_error:|SSL routines:TLSV1_ALERT_UNKNOWN_CA:TLS_error_end"
            }
            TlsFailure::PeerAlert(Alert::Other) => {
                "TLS_error:|SSL routines:TLS_ALERT_RECEIVED:TLS_error_end"
            }
            TlsFailure::NotTls => "TLS_error:|SSL routines:WRONG_VERSION_NUMBER:TLS_error_end",
            TlsFailure::Closed => "TLS_error:|SSL routines:CONNECTION_CLOSED:TLS_error_end",
            TlsFailure::Timeout => "TLS_error:|SSL routines:HANDSHAKE_TIMEOUT:TLS_error_end",
            TlsFailure::Unconfigured => {
                "TLS_error:|no usable client TLS settings (see the DestinationRule's warnings):TLS_error_end"
            }
            TlsFailure::Other => "TLS_error:|SSL routines:HANDSHAKE_FAILURE:TLS_error_end",
        }
    }

    fn of(error: &io::Error) -> Self {
        if error.kind() == io::ErrorKind::UnexpectedEof
            || error.kind() == io::ErrorKind::ConnectionReset
        {
            return TlsFailure::Closed;
        }
        match error
            .get_ref()
            .and_then(|e| e.downcast_ref::<rustls::Error>())
        {
            Some(rustls_error) => TlsFailure::of_rustls(rustls_error),
            None => TlsFailure::Other,
        }
    }

    /// A TLS error found under a failed exchange: with TLS 1.3 an upstream that refuses
    /// our client certificate says so only after our side of the handshake is done, when
    /// the request is already on its way.
    pub(crate) fn under(error: &(dyn std::error::Error + 'static)) -> Option<Self> {
        let mut source = Some(error);
        while let Some(e) = source {
            if let Some(rustls_error) = e.downcast_ref::<rustls::Error>() {
                return Some(TlsFailure::of_rustls(rustls_error));
            }
            // An io::Error's source() is its inner error's source, skipping the inner
            // error itself, where tokio-rustls puts the rustls error: look inside.
            if let Some(rustls_error) = e
                .downcast_ref::<io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            {
                return Some(TlsFailure::of_rustls(rustls_error));
            }
            source = e.source();
        }
        None
    }

    fn of_rustls(rustls_error: &rustls::Error) -> Self {
        match rustls_error {
            rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            ) => TlsFailure::NameMismatch,
            rustls::Error::InvalidCertificate(
                CertificateError::Expired
                | CertificateError::ExpiredContext { .. }
                | CertificateError::NotValidYet
                | CertificateError::NotValidYetContext { .. },
            ) => TlsFailure::CertificateExpired,
            rustls::Error::InvalidCertificate(_) => TlsFailure::CertificateUntrusted,
            rustls::Error::AlertReceived(alert) => TlsFailure::PeerAlert(match alert {
                AlertDescription::HandshakeFailure => Alert::HandshakeFailure,
                AlertDescription::CertificateRequired => Alert::CertificateRequired,
                AlertDescription::BadCertificate => Alert::BadCertificate,
                AlertDescription::UnknownCA => Alert::UnknownCa,
                _ => Alert::Other,
            }),
            rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
                TlsFailure::NotTls
            }
            _ => TlsFailure::Other,
        }
    }
}

/// A connection to an upstream endpoint, plaintext or TLS.
pub(crate) enum UpstreamStream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// Whether a pooled connection nobody reads is still open and silent (an idle HTTP/1.1
/// upstream connection must send nothing): looked at without waiting, and without a
/// syscall unless the reactor has seen the socket become readable.
pub(crate) fn idle_and_open(stream: &mut UpstreamStream) -> bool {
    let mut cx = Context::from_waker(std::task::Waker::noop());
    let tcp = match &*stream {
        UpstreamStream::Plain(tcp) => tcp,
        UpstreamStream::Tls(tls) => tls.get_ref().0,
    };
    // First the reactor's flag alone (an atomic load): `poll_read_ready` also takes the
    // socket's waiter lock and stores the waker when it is not readable, which is nearly
    // always, at each checkout.
    if tcp.try_io(Interest::READABLE, || Ok(())).is_err()
        || tcp.poll_read_ready(&mut cx).is_pending()
    {
        return true;
    }
    // Readable: the end of the stream, stray bytes, or (TLS) a record with no data in
    // it, such as a session ticket, which leaves the read pending.
    let mut byte = [0u8; 1];
    let mut buf = ReadBuf::new(&mut byte);
    Pin::new(stream).poll_read(&mut cx, &mut buf).is_pending()
}

/// The host an HTTP request's connection to an auto-SNI cluster (`UpstreamTls::auto_sni`)
/// is opened for: the request's authority as sent upstream (after the route's rewrite, as
/// Envoy's router takes it) without its port, and an IPv6 address without its brackets,
/// as Envoy's `parseAuthority` leaves it. None for other clusters, whose connections are
/// opened for their `sni` whatever the request.
/// Inlined: other clusters pay one test per request.
#[inline]
pub(crate) fn auto_sni_host<'a>(cluster: &Cluster, authority: &'a [u8]) -> Option<&'a [u8]> {
    if cluster.tls.as_ref().is_some_and(|tls| tls.auto_sni) {
        Some(authority_host(authority))
    } else {
        None
    }
}

/// `authority` without its port, as Envoy's `parseAuthority` takes the host.
fn authority_host(authority: &[u8]) -> &[u8] {
    let host = match authority.iter().rposition(|&b| b == b':') {
        // A port: digits, at most 65535. Otherwise the authority is taken whole (an IPv6
        // address without brackets, or something odd, which no name will match).
        Some(colon) if authority.last() != Some(&b']') => {
            let port = &authority[colon + 1..];
            let is_port = !port.is_empty()
                && port.len() <= 5
                && port.iter().all(u8::is_ascii_digit)
                && port.iter().fold(0u32, |n, d| n * 10 + u32::from(d - b'0')) <= 65535;
            if is_port {
                &authority[..colon]
            } else {
                authority
            }
        }
        _ => authority,
    };
    match host {
        [b'[', inner @ .., b']']
            if std::str::from_utf8(inner)
                .is_ok_and(|s| s.parse::<std::net::Ipv6Addr>().is_ok()) =>
        {
            inner
        }
        host => host,
    }
}

/// Identifies the connections of an auto-SNI cluster opened for `host` among those of its
/// TLS settings (`UpstreamTls::key`), as Envoy pools connections by their server name: a
/// keyed hash, so a client cannot choose a host whose requests would share another host's
/// connections.
pub(crate) fn server_name_key(tls_key: u64, host: &[u8]) -> u64 {
    static KEYS: std::sync::LazyLock<std::hash::RandomState> =
        std::sync::LazyLock::new(std::hash::RandomState::new);
    std::hash::BuildHasher::hash_one(&*KEYS, (tls_key, host))
}

/// The name a connection is opened for: `host` (`auto_sni_host`) when given, else the
/// cluster's `sni`. An IP address sends no SNI (Envoy sets none for one) and is the name
/// checked. A host that is no server name cannot be named by any certificate: refused
/// when the name is checked (`auto_san_validation`, where Envoy's check fails too), else
/// the connection sends the cluster's `sni` (Envoy sends the odd name as it is). So is
/// the unspecified address, which stands for no name at all (`no_server_name`: a TCP
/// route's, whose certificate names are not checked).
fn server_name(tls: &UpstreamTls, host: Option<&[u8]>) -> Result<ServerName<'static>, TlsFailure> {
    let Some(host) = host else {
        return Ok(tls.sni.clone());
    };
    match ServerName::try_from(host) {
        Ok(name) if tls.auto_san_validation && name == no_server_name() => {
            Err(TlsFailure::NameMismatch)
        }
        Ok(name) => Ok(name.to_owned()),
        Err(_) if tls.auto_san_validation => Err(TlsFailure::NameMismatch),
        Err(_) => Ok(tls.sni.clone()),
    }
}

/// `stream` as `cluster` wants it: wrapped in TLS when the cluster originates TLS (the
/// handshake bounded by `timeout`), as it is otherwise; opened for `host` when an HTTP
/// request to an auto-SNI cluster asks (`auto_sni_host`). A failed handshake is counted.
pub(crate) async fn secure(
    stream: TcpStream,
    cluster: &Cluster,
    timeout: Duration,
    host: Option<&[u8]>,
) -> Result<UpstreamStream, TlsFailure> {
    let Some(tls) = &cluster.tls else {
        return Ok(UpstreamStream::Plain(stream));
    };
    let result = match (&tls.config, server_name(tls, host)) {
        (Ok(config), Ok(name)) => {
            let connector = TlsConnector::from(config.clone());
            match tokio::time::timeout(timeout, connector.connect(name, stream)).await {
                Ok(Ok(stream)) => Ok(UpstreamStream::Tls(Box::new(stream))),
                Ok(Err(e)) => {
                    tracing::debug!(cluster = %cluster.name, error = %e, "upstream TLS handshake failed");
                    Err(TlsFailure::of(&e))
                }
                Err(_) => Err(TlsFailure::Timeout),
            }
        }
        (Err(_), _) => Err(TlsFailure::Unconfigured),
        (Ok(_), Err(failure)) => Err(failure),
    };
    if let Err(failure) = result {
        count(&cluster.name, failure);
    }
    result
}

/// One more failed handshake of `cluster`.
pub(crate) fn count(cluster: &str, failure: TlsFailure) {
    UPSTREAM_TLS_HANDSHAKE_ERRORS
        .get_or_create(&UpstreamTlsLabels {
            cluster: cluster.to_owned(),
            reason: failure.label(),
        })
        .inc();
}

impl AsyncRead for UpstreamStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            // The plaintext rustls holds, read once: tokio-rustls' `poll_read` fills the
            // rest of `buf` from the socket too, a `recv` that finds nothing after nearly
            // every response (rustls reads all the socket had in its first read).
            UpstreamStream::Tls(s) => {
                let mut tls = Pin::new(s.as_mut());
                let data = ready!(tls.as_mut().poll_fill_buf(cx))?;
                let n = data.len().min(buf.remaining());
                buf.put_slice(&data[..n]);
                tls.consume(n);
                Poll::Ready(Ok(()))
            }
        }
    }
}

impl AsyncWrite for UpstreamStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            UpstreamStream::Tls(s) => {
                // rustls makes one record of all the slices it is given, but gathers
                // more than one into a Vec first: the HTTP/1 client's writes are mostly
                // a head with empty body slices, which go as the one slice they are.
                let mut given = bufs.iter().filter(|b| !b.is_empty());
                match (given.next(), given.next()) {
                    (None, _) => Poll::Ready(Ok(0)),
                    (Some(only), None) => Pin::new(s.as_mut()).poll_write(cx, only),
                    _ => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
                }
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            UpstreamStream::Plain(s) => s.is_write_vectored(),
            UpstreamStream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_flush(cx),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
#[path = "upstream_tls_tests.rs"]
mod tests;
