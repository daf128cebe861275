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
use tokio::{
    io::{AsyncBufRead, AsyncRead, AsyncWrite, Interest, ReadBuf},
    net::TcpStream,
};
use tokio_rustls::{TlsConnector, client::TlsStream};

use crate::{
    metrics::{UPSTREAM_TLS_HANDSHAKE_ERRORS, UpstreamTlsLabels},
    snapshot::Cluster,
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

/// `stream` as `cluster` wants it: wrapped in TLS when the cluster originates TLS (the
/// handshake bounded by `timeout`), as it is otherwise. A failed handshake is counted.
pub(crate) async fn secure(
    stream: TcpStream,
    cluster: &Cluster,
    timeout: Duration,
) -> Result<UpstreamStream, TlsFailure> {
    let Some(tls) = &cluster.tls else {
        return Ok(UpstreamStream::Plain(stream));
    };
    let result = match &tls.config {
        Ok(config) => {
            let connector = TlsConnector::from(config.clone());
            match tokio::time::timeout(timeout, connector.connect(tls.sni.clone(), stream)).await {
                Ok(Ok(stream)) => Ok(UpstreamStream::Tls(Box::new(stream))),
                Ok(Err(e)) => {
                    tracing::debug!(cluster = %cluster.name, error = %e, "upstream TLS handshake failed");
                    Err(TlsFailure::of(&e))
                }
                Err(_) => Err(TlsFailure::Timeout),
            }
        }
        Err(_) => Err(TlsFailure::Unconfigured),
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
