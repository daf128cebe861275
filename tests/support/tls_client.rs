//! A TLS client (rustls over a blocking socket) that keeps its connection: for tests that
//! hold a stream open through the gateway (TLS passthrough) and talk HTTP/1.1 keep-alive
//! on it at their own pace, or stay silent, and watch when it is closed.

use std::{
    io::{ErrorKind, Read, Write},
    net::{SocketAddr, TcpStream},
    path::Path,
    sync::Arc,
    time::Duration,
};

use anyhow::{Context as _, bail, ensure};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned, crypto::aws_lc_rs};
use rustls_pki_types::{CertificateDer, ServerName, pem::PemObject};

/// How long a handshake or an answer may take before the test calls it missing.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// One TLS connection, handshake done.
pub struct TlsClient {
    stream: StreamOwned<ClientConnection, TcpStream>,
    sni: String,
}

/// Whether the peer is still there after a wait.
#[derive(Debug, PartialEq, Eq)]
pub enum Liveness {
    Open,
    Closed,
}

impl TlsClient {
    /// Connects to `addr`, sends `sni`, and completes the handshake trusting only the CA
    /// certificates in `ca_file` (so a handshake with anyone but the intended server
    /// fails). ALPN offers only `http/1.1`.
    pub fn connect(addr: SocketAddr, sni: &str, ca_file: &Path) -> anyhow::Result<Self> {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(ca_file)
            .with_context(|| format!("reading {}", ca_file.display()))?
        {
            roots.add(cert?)?;
        }
        let mut config =
            ClientConfig::builder_with_provider(Arc::new(aws_lc_rs::default_provider()))
                .with_safe_default_protocol_versions()?
                .with_root_certificates(roots)
                .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let name = ServerName::try_from(sni.to_owned())?;
        let connection = ClientConnection::new(Arc::new(config), name)?;
        let socket = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
        socket.set_nodelay(true)?;
        socket.set_read_timeout(Some(IO_TIMEOUT))?;
        let mut stream = StreamOwned::new(connection, socket);
        while stream.conn.is_handshaking() {
            stream
                .conn
                .complete_io(&mut stream.sock)
                .with_context(|| format!("TLS handshake with {addr} for {sni}"))?;
        }
        Ok(TlsClient {
            stream,
            sni: sni.to_owned(),
        })
    }

    /// One GET on the kept-alive connection: the status and the body.
    pub fn get(&mut self, path: &str) -> anyhow::Result<(u16, String)> {
        self.stream.sock.set_read_timeout(Some(IO_TIMEOUT))?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {}\r\n\r\n", self.sni);
        self.stream.write_all(request.as_bytes())?;
        self.stream.flush()?;
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            let n = self.stream.read(&mut byte)?;
            ensure!(n > 0, "connection closed mid-response: {head:?}");
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head).into_owned();
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("no status in {head:?}"))?;
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse().ok())?
            })
            .with_context(|| format!("no content-length in {head:?}"))?;
        let mut body = vec![0u8; length];
        self.stream.read_exact(&mut body)?;
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }

    /// Waits up to `wait` for the connection to be closed (a FIN with or without
    /// close_notify, or a reset). Bytes arriving instead are an error: nothing was asked.
    pub fn closed_within(&mut self, wait: Duration) -> anyhow::Result<Liveness> {
        self.stream.sock.set_read_timeout(Some(wait))?;
        let mut buf = [0u8; 256];
        match self.stream.read(&mut buf) {
            Ok(0) => Ok(Liveness::Closed),
            Ok(n) => bail!("unasked bytes: {:?}", String::from_utf8_lossy(&buf[..n])),
            Err(e) => match e.kind() {
                ErrorKind::WouldBlock | ErrorKind::TimedOut => Ok(Liveness::Open),
                // A passthrough hop closes the TCP connection without a TLS alert.
                ErrorKind::UnexpectedEof
                | ErrorKind::ConnectionReset
                | ErrorKind::ConnectionAborted => Ok(Liveness::Closed),
                _ => Err(e.into()),
            },
        }
    }
}
