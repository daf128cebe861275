//! An HTTP/2 client (prior knowledge, cleartext) on one connection for all its requests,
//! as gRPC and other HTTP/2 clients multiplex: hyper's client, driven from a test thread.
//! And `post_held`: one POST whose body stops partway, for answers given before it ends.

use std::{
    convert::Infallible,
    net::SocketAddr,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

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

/// POST `path` on a new HTTP/2 connection, declaring `declared` body bytes (none: no
/// Content-Length), sending `sent` and then holding the rest back for good: what a
/// client uploading sees of an answer given before its body ends (a 413 at the body
/// limit). A server answering early resets the stream once the answer is whole (RFC
/// 9113 §8.1, `NO_ERROR`): the answer is still the answer, as for any HTTP/2 client
/// but curl before 8.1, which can lose it to its upload's error (exit 92).
pub fn post_held(
    addr: SocketAddr,
    authority: &str,
    path: &str,
    declared: Option<u64>,
    sent: &'static [u8],
) -> anyhow::Result<CurlResponse> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        tokio::time::timeout(ANSWER_TIMEOUT, async {
            let stream = tokio::net::TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            let (mut sender, connection) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                    .await
                    .context("HTTP/2 handshake")?;
            tokio::spawn(connection);
            let mut request = http::Request::post(format!("http://{authority}{path}"));
            if let Some(length) = declared {
                request = request.header(http::header::CONTENT_LENGTH, length);
            }
            let request = request.body(Held(Some(Bytes::from_static(sent))))?;
            let response = sender
                .send_request(request)
                .await
                .with_context(|| format!("POST {path}"))?;
            let status = response.status().as_u16();
            let body = response.into_body().collect().await?.to_bytes();
            anyhow::Ok(CurlResponse {
                status,
                head: format!("HTTP/2 {status}"),
                body: String::from_utf8_lossy(&body).into_owned(),
            })
        })
        .await
        .with_context(|| format!("no answer to POST {path} within {ANSWER_TIMEOUT:?}"))?
    })
}

/// A request body that sends its bytes, then never ends.
struct Held(Option<Bytes>);

impl hyper::body::Body for Held {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        match self.0.take() {
            Some(data) => Poll::Ready(Some(Ok(hyper::body::Frame::data(data)))),
            // Nothing wakes it: the rest of the body is never sent.
            None => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        false
    }
}
