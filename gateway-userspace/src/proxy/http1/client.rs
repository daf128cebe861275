//! The codec's client side: one request and its response on an upstream HTTP/1.1
//! connection, driven by the request's own futures (no connection task, no channels).
//! The request head goes out in one write (with the first body bytes when they are
//! ready), the body follows as the downstream framing says (Content-Length or chunked)
//! one frame at a time, and the response head is parsed in place from a buffer taken
//! when the first bytes arrive. The response body is framed by Content-Length, chunked
//! (with trailers) or the connection's close, and none for HEAD, 1xx, 204 and 304; a 101
//! hands the connection to the upgrade. The connection is offered back for another
//! request only when both messages were framed soundly and read whole, and the upstream
//! keeps it alive; the read buffer goes with the exchange, so a pooled connection holds
//! no buffer.
//!
//! While the response body streams, whatever is left of the request body is written from
//! the same polls (an upstream may answer before it has read the whole request).

use std::{
    future::Future as _,
    io::{self, IoSlice},
    pin::Pin,
    task::{Context, Poll, ready},
};

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Version};
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};

use super::{
    buffer,
    chunked::{ChunkError, ChunkedDecoder, Decoded},
    passed::{self, PassedFields},
    response::{push_decimal, push_hex},
    rules::{MAX_HEAD_BYTES, MAX_HEADERS},
    upgrade::{ClientIo, Upgraded},
};
use crate::proxy::body::{BoxError, ProxyBody};

/// Body data up to this size is copied behind the head (or its chunk-size line) so that
/// both go in one write; larger data is written from its own buffer (one `writev`).
const COALESCE_BYTES: usize = 4 * 1024;
/// Room for copied bytes kept once they are written: a chunk-size line and small data
/// reuse it; a head with coalesced data is let go, so a request whose upload stalls
/// after its head does not hold what the head needed.
const KEPT_COPY_BYTES: usize = 512;

/// Why an exchange failed. `is_protocol` sorts the upstream's framing errors (502 `UPE`)
/// from connection failures (503 `UC`).
#[derive(Debug, thiserror::Error)]
pub(in crate::proxy) enum ClientError {
    #[error("upstream connection: {0}")]
    Io(#[from] io::Error),
    #[error("the upstream closed the connection before the response ended")]
    Closed,
    #[error("malformed response head: {0}")]
    Malformed(&'static str),
    #[error("response head over {MAX_HEAD_BYTES} bytes")]
    HeadTooLarge,
    #[error("response body: {0}")]
    Chunk(#[from] ChunkError),
    #[error("request body: {0}")]
    RequestBody(BoxError),
    #[error("request body does not match its Content-Length")]
    RequestLength,
}

impl ClientError {
    /// The upstream's answer could not be framed: a protocol error, not a reset.
    pub(in crate::proxy) fn is_protocol(&self) -> bool {
        matches!(
            self,
            ClientError::Malformed(_) | ClientError::HeadTooLarge | ClientError::Chunk(_)
        )
    }
}

/// A failed send, with the request when none of it reached the connection (a pooled
/// connection the upstream had closed: it can go out on another).
pub(in crate::proxy) struct SendError {
    pub error: ClientError,
    pub unsent: Option<Outbound>,
}

/// A request as the client sends it: its head already encoded (straight from the
/// proxy's `UpstreamHead`, without building a `Request` and its header map per try),
/// and its body.
pub(in crate::proxy) struct Outbound {
    head: Vec<u8>,
    encoder: Encoder,
    /// HEAD: no response body follows whatever the response head says.
    head_only: bool,
    /// An upgrade was asked for: a 101 is expected.
    upgrade: bool,
    body: ProxyBody,
}

impl Outbound {
    /// `method path` (origin-form) with `lines`, then the fields `fields` gives, name
    /// (lowercase) and value (asked twice: sizes, then bytes); the Host header among
    /// them.
    pub(in crate::proxy) fn new<'a, I: Iterator<Item = (&'a [u8], &'a [u8])>>(
        method: &Method,
        path: &str,
        lines: Lines<'_>,
        fields: impl Fn() -> I,
        body: ProxyBody,
    ) -> Self {
        let mut head = Vec::new();
        let (encoder, upgrade) = encode_head(&mut head, method, path, lines, fields, &body);
        Outbound {
            head,
            encoder,
            head_only: *method == Method::HEAD,
            upgrade,
            body,
        }
    }
}

/// Header lines already encoded as the codec writes them (`name: value\r\n`, names
/// lowercase, no Transfer-Encoding or Upgrade): a request head's fields passed as they
/// came, copied at once rather than field by field.
#[derive(Clone, Copy, Debug, Default)]
pub(in crate::proxy) struct Lines<'a> {
    pub bytes: &'a [u8],
    /// The Content-Length among them.
    pub content_length: Option<&'a [u8]>,
    /// Lines written after the fields (the proxy's forwarding headers), encoded so too.
    pub after: &'a [u8],
}

impl Outbound {
    /// The head as it will be written (tests and `fuzzing::fields`).
    pub(in crate::proxy) fn head(&self) -> &[u8] {
        &self.head
    }
}

impl From<Request<ProxyBody>> for Outbound {
    fn from(request: Request<ProxyBody>) -> Self {
        let (parts, body) = request.into_parts();
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let fields = || {
            parts
                .headers
                .iter()
                .map(|(name, value)| (name.as_str().as_bytes(), value.as_bytes()))
        };
        Outbound::new(&parts.method, path, Lines::default(), fields, body)
    }
}

/// Sends `request` (origin-form, with its Host header) on `io` and waits for the
/// response head.
///
/// Not an async fn, and the exchange boxed where it is made: the future then holds a
/// pointer and a few words, not the connection and both messages' state (nor the
/// arguments' room beside them, rust-lang/rust#62958), so it needs no box of its own
/// and every future above it, and the response, move a few words where they moved
/// ~500 bytes (a memcpy per level and request).
pub(in crate::proxy) fn send<S>(
    io: S,
    request: impl Into<Outbound>,
) -> impl Future<Output = Result<Response<ResponseBody<S>>, SendError>>
where
    S: AsyncRead + AsyncWrite + ReadReady + Unpin,
{
    let Outbound {
        head,
        encoder,
        head_only,
        upgrade,
        body,
    } = request.into();
    let mut exchange = Box::new(Exchange {
        io,
        buf: BytesMut::new(),
        request: RequestSide {
            out: Outgoing {
                head,
                ..Outgoing::default()
            },
            body: Some(body),
            encoder,
            coalesce: true,
            frame_taken: false,
            done: false,
            write_failed: None,
        },
        head_only,
        upgrade,
    });
    async move {
        let head = std::future::poll_fn(|cx| exchange.poll_response_head(cx)).await;
        let head = match head {
            Ok(head) => head,
            Err(error) => {
                let request = &mut exchange.request;
                // Nothing was written: the head is still whole in `out`.
                let unsent = (!request.out.written && !request.frame_taken)
                    .then(|| request.body.take())
                    .flatten()
                    .map(|body| Outbound {
                        head: std::mem::take(&mut request.out.head),
                        encoder,
                        head_only,
                        upgrade,
                        body,
                    });
                return Err(SendError { error, unsent });
            }
        };
        Ok(response_of(head, exchange))
    }
}

/// The response whose head the exchange read, its body read from the exchange.
fn response_of<S>(head: ResponseHead, exchange: Box<Exchange<S>>) -> Response<ResponseBody<S>> {
    let ResponseHead {
        status,
        version,
        headers,
        framing,
        keep_alive,
        ..
    } = head;
    let decoder = BodyDecoder::new(framing);
    let size_hint = match framing {
        Framing::NoBody => Some(0),
        Framing::Length(length) => Some(length),
        _ => None,
    };
    let upgraded = status == StatusCode::SWITCHING_PROTOCOLS;
    // Passed fields leave the response's own (empty) map as `Response::new` made it: an
    // empty map put in its place was one more map made and one dropped per response.
    let (map, passed) = match headers {
        HeadFields::Map(map) => (Some(map), None),
        HeadFields::Passed(passed) => (None, Some(passed)),
    };
    let body = ResponseBody {
        passed,
        exchange: Some(exchange),
        decoder: if upgraded { BodyDecoder::Done } else { decoder },
        remaining: size_hint,
        keep_alive: keep_alive && framing != Framing::UntilClose && !upgraded,
        upgraded,
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    *response.version_mut() = version;
    if let Some(map) = map {
        *response.headers_mut() = map;
    }
    response
}

/// The connection and both messages' state.
struct Exchange<S> {
    io: S,
    /// The response's bytes; empty (no allocation) until the first arrive.
    buf: BytesMut,
    request: RequestSide,
    /// The request was HEAD: no response body follows whatever the head says.
    head_only: bool,
    /// The request asked for an upgrade: a 101 is expected.
    upgrade: bool,
}

/// Waiting for a connection's next bytes without a buffer: a TCP socket tells when it is
/// readable, so an exchange takes its read buffer only when the response starts to
/// arrive (a request whose upload stalls holds none). A TLS stream is readable when
/// rustls holds decrypted bytes (or the peer's close) already, and otherwise when its
/// socket is: rustls processes every whole record it reads, so what it keeps back is
/// part of a record that only the socket can complete.
pub(in crate::proxy) trait ReadReady {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
}

impl ReadReady for tokio::net::TcpStream {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        tokio::net::TcpStream::poll_read_ready(self, cx)
    }
}

impl ReadReady for crate::proxy::upstream_tls::UpstreamStream {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Self::Plain(tcp) => tcp.poll_read_ready(cx),
            Self::Tls(tls) => {
                let (tcp, session) = tls.get_ref();
                if session.wants_read() {
                    tcp.poll_read_ready(cx)
                } else {
                    Poll::Ready(Ok(()))
                }
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + ReadReady + Unpin> Exchange<S> {
    /// Writes what it can of the request, and reads until a final response head.
    fn poll_response_head(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<ResponseHead, ClientError>> {
        self.poll_request(cx)?;
        loop {
            if !self.buf.is_empty() {
                if let Some(head) = parse_response(&self.buf, self.head_only)? {
                    self.buf.advance(head.len);
                    if head.status == StatusCode::SWITCHING_PROTOCOLS && !self.upgrade {
                        return Poll::Ready(Err(ClientError::Malformed("101 without an upgrade")));
                    }
                    // 100 Continue and other interim answers are not passed on.
                    if head.status.is_informational()
                        && head.status != StatusCode::SWITCHING_PROTOCOLS
                    {
                        continue;
                    }
                    return Poll::Ready(Ok(head));
                }
                if self.buf.len() >= MAX_HEAD_BYTES {
                    return Poll::Ready(Err(ClientError::HeadTooLarge));
                }
            }
            if ready!(self.poll_read(cx))? == 0 {
                // The upstream closed: a write error (a reset) says more than the EOF.
                return Poll::Ready(Err(match self.request.write_failed.take() {
                    Some(e) => ClientError::Io(e),
                    None => ClientError::Closed,
                }));
            }
        }
    }

    /// Progress on the request: Ready(Err) only for a request body that broke off (the
    /// exchange is abandoned); a failed write stops the request side and is kept, since
    /// the upstream may still answer (a 413 before it read the body).
    fn poll_request(&mut self, cx: &mut Context<'_>) -> Result<(), ClientError> {
        if self.request.done || self.request.write_failed.is_some() {
            return Ok(());
        }
        match self.request.poll(&mut self.io, cx) {
            Poll::Ready(Err(ClientError::Io(e))) => {
                self.request.write_failed = Some(e);
                Ok(())
            }
            Poll::Ready(Err(e)) => Err(e),
            _ => Ok(()),
        }
    }

    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() == 0 {
            ready!(self.io.poll_read_ready(cx))?;
        }
        buffer::make_room(&mut self.buf);
        let read = self.io.read_buf(&mut self.buf);
        std::pin::pin!(read).poll(cx)
    }
}

/// The request's side of the exchange.
struct RequestSide {
    out: Outgoing,
    /// None once its last frame has been taken.
    body: Option<ProxyBody>,
    encoder: Encoder,
    /// The first write may carry body bytes behind the head.
    coalesce: bool,
    frame_taken: bool,
    /// Written whole.
    done: bool,
    /// Writing failed: kept for the error when no response comes either.
    write_failed: Option<io::Error>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Encoder {
    /// Bytes still to come.
    Length(u64),
    Chunked,
}

impl RequestSide {
    /// Writes until the body has nothing ready or the connection takes no more.
    fn poll<S: AsyncWrite + Unpin>(
        &mut self,
        io: &mut S,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), ClientError>> {
        if std::mem::take(&mut self.coalesce)
            && self.body.as_ref().is_some_and(|b| !b.is_end_stream())
            && let Some(frame) = self.poll_frame(cx)
        {
            self.encode(frame?)?;
        }
        loop {
            if !self.out.is_empty() {
                ready!(self.out.poll_write(io, cx))?;
            }
            ready!(Pin::new(&mut *io).poll_flush(cx))?;
            let Some(body) = &self.body else {
                self.done = true;
                return Poll::Ready(Ok(()));
            };
            if body.is_end_stream() {
                self.finish()?;
                continue;
            }
            match self.poll_frame(cx) {
                Some(frame) => self.encode(frame?)?,
                None => return Poll::Pending,
            }
        }
    }

    /// The next frame, None while it is not ready; Some(Ok(None)) at the body's end.
    fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Option<Result<Option<Frame<Bytes>>, ClientError>> {
        let body = self.body.as_mut()?;
        match Pin::new(body).poll_frame(cx) {
            Poll::Pending => None,
            Poll::Ready(None) => Some(Ok(None)),
            Poll::Ready(Some(Ok(frame))) => {
                self.frame_taken = true;
                Some(Ok(Some(frame)))
            }
            Poll::Ready(Some(Err(e))) => Some(Err(ClientError::RequestBody(e))),
        }
    }

    fn encode(&mut self, frame: Option<Frame<Bytes>>) -> Result<(), ClientError> {
        let Some(frame) = frame else {
            return self.finish();
        };
        let frame = match frame.into_data() {
            Ok(data) => {
                if data.is_empty() {
                    return Ok(());
                }
                match &mut self.encoder {
                    Encoder::Length(remaining) => {
                        *remaining = remaining
                            .checked_sub(data.len() as u64)
                            .ok_or(ClientError::RequestLength)?;
                        self.out.push(data, b"");
                    }
                    Encoder::Chunked => {
                        push_hex(&mut self.out.head, data.len());
                        self.out.head.extend_from_slice(b"\r\n");
                        self.out.push(data, b"\r\n");
                    }
                }
                return Ok(());
            }
            Err(frame) => frame,
        };
        if let Ok(trailers) = frame.into_trailers() {
            if self.encoder == Encoder::Chunked {
                self.out.head.extend_from_slice(b"0\r\n");
                write_fields(&mut self.out.head, &trailers);
                self.out.head.extend_from_slice(b"\r\n");
                self.body = None;
                self.encoder = Encoder::Length(0);
                return Ok(());
            }
            // A body framed by length has nowhere to put trailers: they are dropped,
            // as hyper drops them.
            return self.finish();
        }
        Ok(())
    }

    /// The body ended: the last chunk, or the length must have been met.
    fn finish(&mut self) -> Result<(), ClientError> {
        self.body = None;
        match self.encoder {
            Encoder::Chunked => {
                self.out.head.extend_from_slice(b"0\r\n\r\n");
                self.encoder = Encoder::Length(0);
                Ok(())
            }
            Encoder::Length(0) => Ok(()),
            Encoder::Length(_) => Err(ClientError::RequestLength),
        }
    }
}

/// Bytes on their way to the connection: copied bytes (a head, chunk-size lines, small
/// data), then at most one data frame as it came and the bytes that follow it.
#[derive(Default)]
struct Outgoing {
    head: Vec<u8>,
    head_at: usize,
    data: Bytes,
    tail: &'static [u8],
    /// Some bytes have reached the connection.
    written: bool,
}

impl Outgoing {
    fn is_empty(&self) -> bool {
        self.head_at == self.head.len() && self.data.is_empty() && self.tail.is_empty()
    }

    /// `data` and then `tail` after what is queued; small data is copied.
    fn push(&mut self, data: Bytes, tail: &'static [u8]) {
        if data.len() <= COALESCE_BYTES || !self.data.is_empty() {
            self.head.extend_from_slice(&data);
            self.head.extend_from_slice(tail);
        } else {
            self.data = data;
            self.tail = tail;
        }
    }

    fn poll_write<S: AsyncWrite + Unpin>(
        &mut self,
        io: &mut S,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        while !self.is_empty() {
            let slices = [
                IoSlice::new(&self.head[self.head_at..]),
                IoSlice::new(&self.data),
                IoSlice::new(self.tail),
            ];
            let n = ready!(Pin::new(&mut *io).poll_write_vectored(cx, &slices))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written = true;
            let mut n = n;
            let from_head = n.min(self.head.len() - self.head_at);
            self.head_at += from_head;
            n -= from_head;
            let from_data = n.min(self.data.len());
            self.data.advance(from_data);
            n -= from_data;
            self.tail = &self.tail[n.min(self.tail.len())..];
        }
        if self.head.capacity() > KEPT_COPY_BYTES {
            self.head = Vec::new();
        } else {
            self.head.clear();
        }
        self.head_at = 0;
        Poll::Ready(Ok(()))
    }
}

fn write_fields(out: &mut Vec<u8>, fields: &HeaderMap) {
    for (name, value) in fields {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

/// The request head into `out`, and how its body is framed: the Content-Length the
/// request carries, else none for a body that has ended, else the exact size the body
/// knows, else chunked (as hyper's client decides).
fn encode_head<'a, I: Iterator<Item = (&'a [u8], &'a [u8])>>(
    out: &mut Vec<u8>,
    method: &Method,
    path: &str,
    lines: Lines<'_>,
    fields: impl Fn() -> I,
    body: &ProxyBody,
) -> (Encoder, bool) {
    let mut size = method.as_str().len() + path.len() + 16 + lines.bytes.len() + lines.after.len();
    for (name, value) in fields() {
        size += name.len() + value.len() + 4;
    }
    out.reserve(size + 32);
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    out.extend_from_slice(lines.bytes);
    let mut declared = lines.content_length.and_then(parse_length);
    // Seen while writing, rather than looked up (hashed) again after.
    let mut upgrade = false;
    for (name, value) in fields() {
        if name == b"transfer-encoding" {
            continue;
        }
        if name == b"content-length" {
            declared = parse_length(value);
        }
        upgrade |= name == b"upgrade";
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(lines.after);
    let encoder = match declared {
        Some(length) => Encoder::Length(length),
        None if body.is_end_stream() => {
            if matches!(*method, Method::POST | Method::PUT | Method::PATCH) {
                out.extend_from_slice(b"content-length: 0\r\n");
            }
            Encoder::Length(0)
        }
        None => match body.size_hint().exact() {
            Some(length) => {
                out.extend_from_slice(b"content-length: ");
                push_decimal(out, length);
                out.extend_from_slice(b"\r\n");
                Encoder::Length(length)
            }
            None => {
                out.extend_from_slice(b"transfer-encoding: chunked\r\n");
                Encoder::Chunked
            }
        },
    };
    out.extend_from_slice(b"\r\n");
    (encoder, upgrade)
}

/// How a response body is delimited (RFC 9112 §6.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Framing {
    NoBody,
    Length(u64),
    Chunked,
    /// Neither length nor chunked: the body ends when the upstream closes.
    UntilClose,
}

#[derive(Debug)]
pub(super) struct ResponseHead {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeadFields,
    pub framing: Framing,
    /// The upstream lets the connection carry another request.
    pub keep_alive: bool,
    /// Bytes of the buffer the head took.
    pub len: usize,
}

/// The response head at the start of `buf`, None while incomplete. `head_only`: the
/// request was HEAD.
pub(super) fn parse_response(
    buf: &[u8],
    head_only: bool,
) -> Result<Option<ResponseHead>, ClientError> {
    // Uninitialized, as for request heads (`head.rs`).
    let mut fields = [const { std::mem::MaybeUninit::<httparse::Header>::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut parsed,
        buf,
        &mut fields,
    ) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => {
            if buf.len() >= MAX_HEAD_BYTES {
                return Err(ClientError::HeadTooLarge);
            }
            return Ok(None);
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Err(ClientError::Malformed("too many header fields"));
        }
        Err(_) => return Err(ClientError::Malformed("not an HTTP/1.x response head")),
    };
    if len > MAX_HEAD_BYTES {
        return Err(ClientError::HeadTooLarge);
    }
    let version = match parsed.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let status = parsed
        .code
        .and_then(|code| StatusCode::from_u16(code).ok())
        .ok_or(ClientError::Malformed("invalid status code"))?;
    // One copy of the head for every value to point into: no allocation per header.
    let copy = super::head::shared_copy(&buf[..len]);
    let mut length: Option<u64> = None;
    let mut transfer_encoding = false;
    let mut chunked_last = false;
    let mut close = false;
    let mut keep_alive_token = false;
    // The fields as they came, passed on with the proxy's edits (`passed.rs`); a head
    // that cannot be passed so becomes a map below, as every head did before.
    let mut passing = passed::Builder::new();
    if !passes_by(status) {
        passing.refuse();
    }
    for field in parsed.headers.iter() {
        let kind = passed::Kind::of(field.name.as_bytes());
        match kind {
            passed::Kind::ContentLength => {
                let value = parse_length(field.value)
                    .ok_or(ClientError::Malformed("invalid Content-Length"))?;
                if length.is_some_and(|l| l != value) {
                    return Err(ClientError::Malformed("conflicting Content-Length"));
                }
                length = Some(value);
            }
            TRANSFER_ENCODING => {
                transfer_encoding = true;
                chunked_last = field
                    .value
                    .rsplit(|&b| b == b',')
                    .next()
                    .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            }
            CONNECTION => {
                let tokens = ConnectionTokens::of(field.value);
                close |= tokens.close;
                keep_alive_token |= tokens.keep_alive;
                // What it says is kept in `keep_alive`, and it is hop-by-hop: not passed
                // on, so not kept (the proxy would only look at it again to remove it),
                // unless it goes with a 101 or names headers that must go with it.
                if passes_by(status) && !tokens.other {
                    continue;
                }
                passing.refuse();
            }
            _ if dropped(kind, status, field.value) => continue,
            _ => {}
        }
        passing.push(&buf[..len], field.name.as_bytes(), field.value, kind);
    }
    let headers = match passing.finish(copy.clone(), length) {
        Some(passed) => HeadFields::Passed(passed),
        None => HeadFields::Map(fields_map(&parsed, &buf[..len], &copy, status)?),
    };
    let mut keep_alive = match version {
        Version::HTTP_10 => keep_alive_token && !close,
        _ => !close,
    };
    let framing = if head_only
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        Framing::NoBody
    } else if transfer_encoding {
        // Transfer-Encoding wins over a Content-Length beside it, and such a
        // connection is not trusted with another request (RFC 9112 §6.3).
        keep_alive &= length.is_none();
        if chunked_last {
            Framing::Chunked
        } else {
            Framing::UntilClose
        }
    } else {
        match length {
            Some(length) => Framing::Length(length),
            None => Framing::UntilClose,
        }
    };
    Ok(Some(ResponseHead {
        status,
        version,
        headers,
        framing,
        keep_alive,
        len,
    }))
}

const TRANSFER_ENCODING: passed::Kind = passed::Kind::HopByHop(passed::TRANSFER_ENCODING);
const CONNECTION: passed::Kind = passed::Kind::HopByHop(passed::CONNECTION);
const KEEP_ALIVE: passed::Kind = passed::Kind::HopByHop(passed::KEEP_ALIVE);

/// A field the client reads and does not keep: Connection (unless it goes with a 101 or
/// names other headers) and Keep-Alive (unless with a 101).
fn dropped(kind: passed::Kind, status: StatusCode, value: &[u8]) -> bool {
    match kind {
        CONNECTION => passes_by(status) && !ConnectionTokens::of(value).other,
        KEEP_ALIVE => passes_by(status),
        _ => false,
    }
}

/// The head's kept fields as a map, for a head whose fields cannot be passed as they
/// came; the values point into `copy`, the head's copy.
fn fields_map(
    parsed: &httparse::Response<'_, '_>,
    head: &[u8],
    copy: &Bytes,
    status: StatusCode,
) -> Result<HeaderMap, ClientError> {
    // Room for what the proxy adds to an answer (server, x-envoy-upstream-service-time,
    // a route's few), so that it does not grow the map.
    let mut headers = HeaderMap::with_capacity(parsed.headers.len() + 4);
    for field in parsed.headers.iter() {
        if dropped(passed::Kind::of(field.name.as_bytes()), status, field.value) {
            continue;
        }
        let name = HeaderName::from_bytes(field.name.as_bytes())
            .map_err(|_| ClientError::Malformed("invalid header name"))?;
        let value = super::head::shared_part(copy, head, field.value)
            .and_then(|value| HeaderValue::from_maybe_shared(value).ok())
            .ok_or(ClientError::Malformed("invalid header value"))?;
        headers.append(name, value);
    }
    Ok(headers)
}

/// A response head's fields: passed as they came, or (heads that cannot be) a map.
#[derive(Debug)]
pub(in crate::proxy) enum HeadFields {
    Map(HeaderMap),
    Passed(Box<PassedFields>),
}

impl HeadFields {
    /// The number of fields kept (as `HeaderMap::len`).
    pub(super) fn len(&self) -> usize {
        match self {
            HeadFields::Map(map) => map.len(),
            HeadFields::Passed(passed) => passed.len(),
        }
    }

    /// The map, and the passed fields (when there are, the map is empty).
    #[cfg(test)]
    pub(in crate::proxy) fn split(self) -> (HeaderMap, Option<Box<PassedFields>>) {
        match self {
            HeadFields::Map(map) => (map, None),
            HeadFields::Passed(passed) => (HeaderMap::new(), Some(passed)),
        }
    }

    /// The whole map.
    #[cfg(test)]
    pub(super) fn into_map(self) -> HeaderMap {
        match self {
            HeadFields::Map(map) => map,
            HeadFields::Passed(passed) => passed.into_map(),
        }
    }
}

/// A response whose hop-by-hop headers the proxy strips (all but a 101's, which the
/// upgraded connection keeps).
fn passes_by(status: StatusCode) -> bool {
    status != StatusCode::SWITCHING_PROTOCOLS
}

/// What a Connection value says, in one pass over its tokens.
#[derive(Default)]
struct ConnectionTokens {
    close: bool,
    keep_alive: bool,
    /// Any other token (`upgrade`, or the name of a header to remove).
    other: bool,
}

impl ConnectionTokens {
    fn of(value: &[u8]) -> Self {
        const KEEP_ALIVE_TOKEN: passed::Pattern = passed::Pattern::new("keep-alive");
        const CLOSE_TOKEN: passed::Pattern = passed::Pattern::new("close");
        let mut tokens = ConnectionTokens::default();
        // What upstreams send, one token alone, without splitting.
        if KEEP_ALIVE_TOKEN.matches(value) {
            tokens.keep_alive = true;
            return tokens;
        }
        if CLOSE_TOKEN.matches(value) {
            tokens.close = true;
            return tokens;
        }
        for token in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
            if token.eq_ignore_ascii_case(b"close") {
                tokens.close = true;
            } else if token.eq_ignore_ascii_case(b"keep-alive") {
                tokens.keep_alive = true;
            } else if !token.is_empty() {
                tokens.other = true;
            }
        }
        tokens
    }
}

/// Digits only: at most 18, so no overflow.
fn parse_length(value: &[u8]) -> Option<u64> {
    let value = value.trim_ascii();
    if value.is_empty() || value.len() > 18 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(value.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

impl BodyDecoder {
    pub(super) fn new(framing: Framing) -> Self {
        match framing {
            Framing::NoBody | Framing::Length(0) => BodyDecoder::Done,
            Framing::Length(length) => BodyDecoder::Length(length),
            Framing::Chunked => BodyDecoder::Chunked(ChunkedDecoder::new()),
            Framing::UntilClose => BodyDecoder::UntilClose,
        }
    }
}

/// The next piece of a response body out of `buf`: None when more bytes are needed or
/// the body has ended (the decoder is `Done` then).
pub(super) fn decode_body(
    decoder: &mut BodyDecoder,
    buf: &mut BytesMut,
) -> Result<Option<Frame<Bytes>>, ClientError> {
    match decoder {
        BodyDecoder::Done => Ok(None),
        BodyDecoder::Length(remaining) => {
            if buf.is_empty() {
                return Ok(None);
            }
            let take = usize::try_from(*remaining)
                .unwrap_or(usize::MAX)
                .min(buf.len());
            *remaining -= take as u64;
            if *remaining == 0 {
                *decoder = BodyDecoder::Done;
            }
            Ok(Some(Frame::data(buffer::take(buf, take))))
        }
        BodyDecoder::UntilClose => {
            if buf.is_empty() {
                return Ok(None);
            }
            let n = buf.len();
            Ok(Some(Frame::data(buffer::take(buf, n))))
        }
        BodyDecoder::Chunked(chunked) => match chunked.decode(buf)? {
            Decoded::NeedMore => Ok(None),
            Decoded::Data(data) => Ok(Some(Frame::data(data))),
            Decoded::End(trailers) => {
                *decoder = BodyDecoder::Done;
                Ok((!trailers.is_empty()).then(|| Frame::trailers(trailers)))
            }
        },
    }
}

#[derive(Debug)]
pub(super) enum BodyDecoder {
    Length(u64),
    Chunked(ChunkedDecoder),
    UntilClose,
    Done,
}

/// An upstream response's body, read from the connection as it is polled; it owns the
/// connection until the exchange is over (`take_reusable`, `take_upgraded`).
pub(in crate::proxy) struct ResponseBody<S> {
    /// The head's fields when passed as they came (`passed.rs`; the response's map is
    /// empty then), until the proxy takes them (`take_passed`).
    passed: Option<Box<PassedFields>>,
    /// None once the connection has been taken back (or failed). Boxed where the
    /// exchange began (`send`).
    exchange: Option<Box<Exchange<S>>>,
    decoder: BodyDecoder,
    /// Content-Length bytes not yet read.
    remaining: Option<u64>,
    keep_alive: bool,
    upgraded: bool,
}

impl<S: AsyncRead + AsyncWrite + ReadReady + Unpin> ResponseBody<S> {
    /// The connection once the exchange ended soundly and it may carry another request:
    /// the request written whole, the response read whole, nothing after it.
    pub(in crate::proxy) fn take_reusable(&mut self) -> Option<S> {
        if !matches!(self.decoder, BodyDecoder::Done) || !self.keep_alive {
            return None;
        }
        let mut exchange = self.exchange.take()?;
        if !exchange.request.done {
            // The last frame may be written with the body's end not yet seen: one more
            // look, without waiting.
            let _ = exchange.poll_request(&mut Context::from_waker(std::task::Waker::noop()));
        }
        let sound = exchange.request.done && exchange.buf.is_empty();
        buffer::give_back(&mut exchange.buf);
        sound.then_some(exchange.io)
    }

    /// The head's fields passed as they came, if they were (the response's map is empty
    /// then); see `passed.rs`.
    pub(in crate::proxy) fn passed(&self) -> Option<&PassedFields> {
        self.passed.as_deref()
    }

    pub(in crate::proxy) fn take_passed(&mut self) -> Option<Box<PassedFields>> {
        self.passed.take()
    }

    /// After a 101: the connection, with any bytes the upstream sent after the head.
    pub(in crate::proxy) fn take_upgraded(&mut self) -> Option<Upgraded>
    where
        S: ClientIo + 'static,
    {
        if !self.upgraded {
            return None;
        }
        let exchange = self.exchange.take()?;
        Some(Upgraded {
            prefix: Bytes::copy_from_slice(&exchange.buf),
            io: Box::new(exchange.io),
        })
    }

    fn decode(&mut self) -> Result<Option<Frame<Bytes>>, ClientError> {
        match self.exchange.as_mut() {
            Some(exchange) => decode_body(&mut self.decoder, &mut exchange.buf),
            None => Ok(None),
        }
    }

    fn fail(&mut self, error: ClientError) -> Poll<Option<Result<Frame<Bytes>, ClientError>>> {
        self.exchange = None;
        self.decoder = BodyDecoder::Done;
        self.keep_alive = false;
        Poll::Ready(Some(Err(error)))
    }
}

impl<S: AsyncRead + AsyncWrite + ReadReady + Unpin> Body for ResponseBody<S> {
    type Data = Bytes;
    type Error = ClientError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientError>>> {
        let this = &mut *self;
        loop {
            if matches!(this.decoder, BodyDecoder::Done) {
                return Poll::Ready(None);
            }
            let Some(exchange) = this.exchange.as_mut() else {
                return Poll::Ready(None);
            };
            if let Err(e) = exchange.poll_request(cx) {
                return this.fail(e);
            }
            match this.decode() {
                Ok(Some(frame)) => {
                    if let (Some(remaining), Some(data)) = (&mut this.remaining, frame.data_ref()) {
                        *remaining = remaining.saturating_sub(data.len() as u64);
                    }
                    return Poll::Ready(Some(Ok(frame)));
                }
                Ok(None) if matches!(this.decoder, BodyDecoder::Done) => {
                    return Poll::Ready(None);
                }
                Ok(None) => {}
                Err(e) => return this.fail(e),
            }
            let Some(exchange) = this.exchange.as_mut() else {
                return Poll::Ready(None);
            };
            match ready!(exchange.poll_read(cx)) {
                Ok(0) if matches!(this.decoder, BodyDecoder::UntilClose) => {
                    this.decoder = BodyDecoder::Done;
                    this.keep_alive = false;
                    return Poll::Ready(None);
                }
                Ok(0) => return this.fail(ClientError::Closed),
                Ok(_) => {}
                Err(e) => return this.fail(e.into()),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.decoder, BodyDecoder::Done)
    }

    fn size_hint(&self) -> SizeHint {
        match self.remaining {
            Some(remaining) => SizeHint::with_exact(remaining),
            None => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests;
