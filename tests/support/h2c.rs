//! An HTTP/2 client (prior knowledge, cleartext) on one connection for all its requests,
//! as gRPC and other HTTP/2 clients multiplex: hyper's client, driven from a test thread.

use std::{net::SocketAddr, time::Duration};

use anyhow::{Context as _, ensure};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::CurlResponse;

/// How long one answer may take before the client gives up.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

pub struct H2cClient {
    runtime: tokio::runtime::Runtime,
    sender: SendRequest<Empty<Bytes>>,
    authority: String,
}

impl H2cClient {
    pub fn connect(addr: SocketAddr, authority: &str) -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let sender = runtime.block_on(async {
            let stream = tokio::net::TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            let (sender, connection) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                    .await
                    .context("HTTP/2 handshake")?;
            tokio::spawn(connection);
            anyhow::Ok(sender)
        })?;
        Ok(H2cClient {
            runtime,
            sender,
            authority: authority.to_owned(),
        })
    }

    /// GET `path` as a new stream on this connection. An error means the connection or
    /// the stream failed (GOAWAY, reset, closed), never an HTTP status.
    pub fn get(&mut self, path: &str) -> anyhow::Result<CurlResponse> {
        ensure!(
            !self.sender.is_closed(),
            "the server closed this HTTP/2 connection"
        );
        let request = http::Request::get(format!("http://{}{path}", self.authority))
            .body(Empty::<Bytes>::new())?;
        let sender = &mut self.sender;
        self.runtime.block_on(async {
            tokio::time::timeout(ANSWER_TIMEOUT, async {
                sender
                    .ready()
                    .await
                    .context("HTTP/2 connection not ready")?;
                let response = sender
                    .send_request(request)
                    .await
                    .with_context(|| format!("GET {path} on the kept HTTP/2 connection"))?;
                let status = response.status().as_u16();
                let head = response
                    .headers()
                    .iter()
                    .map(|(name, value)| format!("{name}: {}", value.to_str().unwrap_or("?")))
                    .collect::<Vec<_>>()
                    .join("\r\n");
                let body = response.into_body().collect().await?.to_bytes();
                anyhow::Ok(CurlResponse {
                    status,
                    head: format!("HTTP/2 {status}\r\n{head}"),
                    body: String::from_utf8_lossy(&body).into_owned(),
                })
            })
            .await
            .with_context(|| format!("no answer to GET {path} within {ANSWER_TIMEOUT:?}"))?
        })
    }
}
