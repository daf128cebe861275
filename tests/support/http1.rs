//! An HTTP/1.1 client that keeps one connection for all its requests, as browsers and
//! connection-pooling clients do, and says so when the server closes it.

use std::{
    io::{BufRead as _, BufReader, ErrorKind, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use anyhow::{Context as _, bail, ensure};

use crate::CurlResponse;

/// How long one answer may take before the client gives up.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

pub struct KeepAliveClient {
    connection: BufReader<TcpStream>,
    host: String,
    /// Set once the server announced `Connection: close`.
    closed_by_server: bool,
    /// How long an answer may take.
    patience: Duration,
}

impl KeepAliveClient {
    pub fn connect(addr: SocketAddr, host: &str) -> anyhow::Result<Self> {
        Self::connect_waiting(addr, host, ANSWER_TIMEOUT)
    }

    /// Like `connect`, giving up on an answer after `patience`.
    pub fn connect_waiting(
        addr: SocketAddr,
        host: &str,
        patience: Duration,
    ) -> anyhow::Result<Self> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        stream.set_read_timeout(Some(patience))?;
        stream.set_nodelay(true)?;
        Ok(KeepAliveClient {
            connection: BufReader::new(stream),
            host: host.to_owned(),
            closed_by_server: false,
            patience,
        })
    }

    /// GET `path` on this connection. An error means the connection is gone (closed by
    /// the server or broken) or no answer came in time, never an HTTP status.
    pub fn get(&mut self, path: &str) -> anyhow::Result<CurlResponse> {
        self.send_get(path)?;
        self.read_response().map_err(|err| {
            let timed_out = err
                .downcast_ref::<std::io::Error>()
                .is_some_and(|io| matches!(io.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut));
            if timed_out {
                anyhow::anyhow!("no answer to GET {path} within {:?}", self.patience)
            } else {
                err.context(format!(
                    "reading the answer to GET {path} on the kept connection"
                ))
            }
        })
    }

    /// The Host the next requests carry.
    pub fn set_host(&mut self, host: &str) {
        host.clone_into(&mut self.host);
    }

    /// Sends GET `path` without reading the answer (a request left in flight).
    pub fn send_get(&mut self, path: &str) -> anyhow::Result<()> {
        ensure!(
            !self.closed_by_server,
            "the server closed this keep-alive connection (Connection: close)"
        );
        write!(
            self.connection.get_mut(),
            "GET {path} HTTP/1.1\r\nHost: {}\r\n\r\n",
            self.host
        )
        .context("writing a request on the keep-alive connection")
    }

    fn read_response(&mut self) -> anyhow::Result<CurlResponse> {
        let mut head = String::new();
        loop {
            let mut line = String::new();
            if self.connection.read_line(&mut line)? == 0 {
                bail!("the server closed the connection");
            }
            if line == "\r\n" && !head.is_empty() {
                break;
            }
            head.push_str(&line);
        }
        let header = |name: &str| {
            head.lines().skip(1).find_map(|line| {
                let (key, value) = line.split_once(':')?;
                key.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| value.trim().to_owned())
            })
        };
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("not an HTTP response: {head:?}"))?;
        let body = if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            self.read_chunked()?
        } else {
            let length = header("content-length").map_or(Ok(0), |v| v.parse())?;
            let mut body = vec![0; length];
            self.connection.read_exact(&mut body)?;
            body
        };
        self.closed_by_server =
            header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
        Ok(CurlResponse {
            status,
            head: head.trim_end().to_owned(),
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }

    fn read_chunked(&mut self) -> anyhow::Result<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            let mut size_line = String::new();
            self.connection.read_line(&mut size_line)?;
            let size_hex = size_line.trim().split(';').next().unwrap_or_default();
            let size = usize::from_str_radix(size_hex, 16)
                .with_context(|| format!("bad chunk size {size_line:?}"))?;
            if size == 0 {
                // Trailers, up to the empty line.
                loop {
                    let mut line = String::new();
                    if self.connection.read_line(&mut line)? == 0 || line == "\r\n" {
                        return Ok(body);
                    }
                }
            }
            let start = body.len();
            body.resize(start + size + 2, 0);
            self.connection.read_exact(&mut body[start..])?;
            body.truncate(start + size);
        }
    }
}
