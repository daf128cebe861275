//! A response as the client gets it: the head written with the first body bytes that
//! are ready in one write, then the body framed by Content-Length, chunked (with
//! trailers) when its length is unknown, or by closing the connection for HTTP/1.0.

use std::{cell::RefCell, io, time::SystemTime};

use bytes::Buf;
use futures::FutureExt;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode, Version, header};
use http_body_util::BodyExt;
use hyper::body::Body;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::field_line::push_crlf;
use super::passed::{self, CONNECTION, KEEP_ALIVE, Kind, Name, PassedFields, TRANSFER_ENCODING};

/// Body bytes copied behind the head (or a chunk's size line) so that both go in one
/// write; larger data is written on its own.
const COALESCE_BYTES: usize = 16 * 1024;

/// How the response's body is delimited on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ResponseFraming {
    /// No body may follow (HEAD, 1xx, 204, 304).
    NoBody,
    Length(u64),
    Chunked,
    /// HTTP/1.0 client, unknown length: the body ends when the connection closes.
    UntilClose,
}

/// What the request tells about how to answer it.
#[derive(Clone, Copy, Debug)]
pub(super) struct Answering<'a> {
    pub method: &'a Method,
    pub version: Version,
    /// The connection stays open after this response (the client allows it, the
    /// request was framed soundly and read whole so far).
    pub keep_alive: bool,
}

/// How the response ended.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Written {
    /// Whole, and the connection may carry another request.
    KeepAlive,
    /// Whole (or cut), and the connection must close.
    Close,
}

/// Why writing a response failed: the client went away, or the body broke off midway
/// (the client sees a truncated body, as the connection closes).
#[derive(Debug, thiserror::Error)]
pub(super) enum WriteError {
    #[error("writing to the client: {0}")]
    Io(#[from] io::Error),
    #[error("response body: {0}")]
    Body(Box<dyn std::error::Error + Send + Sync>),
    #[error("response body longer than its Content-Length")]
    TooLong,
}

/// Writes `response`; `passed`, when the upstream head's fields are passed as they came
/// (`passed.rs`), holds its fields (the response's map is empty then).
pub(super) async fn write<W, B>(
    writer: &mut W,
    response: Response<B>,
    passed: Option<&PassedFields>,
    answering: Answering<'_>,
) -> Result<Written, WriteError>
where
    W: AsyncWrite + Unpin,
    B: Body<Data = bytes::Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (parts, mut body) = response.into_parts();
    let fields = match passed {
        Some(passed) => Fields::Passed(passed),
        None => Fields::Map(&parts.headers),
    };
    let framing = framing(&parts.status, fields, &body, answering);
    let close_asked = match fields {
        Fields::Map(map) => map
            .get_all(header::CONNECTION)
            .iter()
            .any(|v| has_token(v.as_bytes(), b"close")),
        // One entry per name.
        Fields::Passed(passed) => passed.connection().is_some_and(|v| has_token(v, b"close")),
    };
    let keep_alive = answering.keep_alive && !close_asked && framing != ResponseFraming::UntilClose;

    let mut out = Vec::with_capacity(512);
    write_head(
        &mut out,
        &parts.status,
        fields,
        framing,
        keep_alive,
        answering.version,
    );
    if framing == ResponseFraming::NoBody {
        writer.write_all(&out).await?;
        writer.flush().await?;
        return Ok(if keep_alive {
            Written::KeepAlive
        } else {
            Written::Close
        });
    }
    let mut sent = 0u64;
    let mut pending_out = out;
    loop {
        // What is ready now goes out with what is already waiting; otherwise that is
        // written first, so the client is not kept waiting for a slow body.
        let frame = match body.frame().now_or_never() {
            Some(frame) => frame,
            None => {
                if !pending_out.is_empty() {
                    writer.write_all(&pending_out).await?;
                    writer.flush().await?;
                    pending_out.clear();
                }
                body.frame().await
            }
        };
        let frame = match frame {
            None => break,
            Some(Err(e)) => {
                if !pending_out.is_empty() {
                    writer.write_all(&pending_out).await?;
                }
                return Err(WriteError::Body(e.into()));
            }
            Some(Ok(frame)) => frame,
        };
        let frame = match frame.into_data() {
            Ok(mut data) => {
                sent += data.len() as u64;
                if let ResponseFraming::Length(length) = framing
                    && sent > length
                {
                    writer.write_all(&pending_out).await?;
                    return Err(WriteError::TooLong);
                }
                if data.is_empty() {
                    continue;
                }
                if framing == ResponseFraming::Chunked {
                    push_hex(&mut pending_out, data.len());
                    pending_out.extend_from_slice(b"\r\n");
                }
                if data.len() <= COALESCE_BYTES {
                    pending_out.extend_from_slice(&data);
                } else {
                    writer.write_all(&pending_out).await?;
                    pending_out.clear();
                    while data.has_remaining() {
                        writer.write_buf(&mut data).await?;
                    }
                }
                if framing == ResponseFraming::Chunked {
                    pending_out.extend_from_slice(b"\r\n");
                }
                continue;
            }
            Err(frame) => frame,
        };
        if let Ok(trailers) = frame.into_trailers()
            && framing == ResponseFraming::Chunked
        {
            pending_out.extend_from_slice(b"0\r\n");
            write_fields(&mut pending_out, &trailers);
            pending_out.extend_from_slice(b"\r\n");
            writer.write_all(&pending_out).await?;
            writer.flush().await?;
            return Ok(if keep_alive {
                Written::KeepAlive
            } else {
                Written::Close
            });
        }
    }
    if framing == ResponseFraming::Chunked {
        pending_out.extend_from_slice(b"0\r\n\r\n");
    }
    writer.write_all(&pending_out).await?;
    writer.flush().await?;
    let whole = match framing {
        ResponseFraming::Length(length) => sent == length,
        _ => true,
    };
    Ok(if keep_alive && whole {
        Written::KeepAlive
    } else {
        Written::Close
    })
}

/// A local answer to a request the codec refused (400, 408, 414, 431); the connection
/// closes after it.
pub(super) fn refusal(status: StatusCode) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    write_head(
        &mut out,
        &status,
        Fields::Map(&HeaderMap::new()),
        ResponseFraming::Length(0),
        false,
        Version::HTTP_11,
    );
    out
}

/// A response's fields: its map, or the passed fields of an upstream's head.
#[derive(Clone, Copy)]
enum Fields<'a> {
    Map(&'a HeaderMap),
    Passed(&'a PassedFields),
}

impl<'a> Fields<'a> {
    fn get(self, name: &HeaderName) -> Option<&'a [u8]> {
        match self {
            Fields::Map(map) => map.get(name).map(HeaderValue::as_bytes),
            Fields::Passed(passed) => passed.get(name),
        }
    }

    /// Each field as written (its name lowercase by `Name::push_to`), with its kind.
    fn for_each(self, mut each: impl FnMut(Name<'a>, &'a [u8], Kind)) {
        match self {
            Fields::Map(map) => {
                for (name, value) in map {
                    let kind = Kind::of(name.as_str().as_bytes());
                    each(Name::Inserted(name), value.as_bytes(), kind);
                }
            }
            Fields::Passed(passed) => passed.for_each(each),
        }
    }
}

fn framing<B: Body>(
    status: &StatusCode,
    headers: Fields<'_>,
    body: &B,
    answering: Answering<'_>,
) -> ResponseFraming {
    if answering.method == Method::HEAD
        || status.is_informational()
        || *status == StatusCode::NO_CONTENT
        || *status == StatusCode::NOT_MODIFIED
    {
        return ResponseFraming::NoBody;
    }
    let length = match headers {
        // As the client parsed it: the same value the text gives.
        Fields::Passed(passed) => passed.content_length(),
        Fields::Map(_) => headers
            .get(&header::CONTENT_LENGTH)
            .and_then(passed::as_text)
            .and_then(|v| v.trim().parse::<u64>().ok()),
    };
    if let Some(length) = length {
        return ResponseFraming::Length(length);
    }
    if body.is_end_stream() {
        return ResponseFraming::Length(0);
    }
    if let Some(length) = body.size_hint().exact() {
        return ResponseFraming::Length(length);
    }
    if answering.version == Version::HTTP_10 {
        ResponseFraming::UntilClose
    } else {
        ResponseFraming::Chunked
    }
}

fn write_head(
    out: &mut Vec<u8>,
    status: &StatusCode,
    headers: Fields<'_>,
    framing: ResponseFraming,
    keep_alive: bool,
    request_version: Version,
) {
    match usual_status_line(status) {
        Some(line) => out.extend_from_slice(line),
        None => {
            out.extend_from_slice(b"HTTP/1.1 ");
            out.extend_from_slice(status.as_str().as_bytes());
            out.push(b' ');
            out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
            push_crlf(out);
        }
    }
    let switching = *status == StatusCode::SWITCHING_PROTOCOLS;
    // Seen while writing, rather than looked up (hashed) again after.
    let mut dated = false;
    headers.for_each(|name, value, kind| {
        dated |= kind == Kind::Date;
        // The codec frames the body and says what becomes of the connection itself; a
        // 101 keeps its `Connection: upgrade`.
        let ours = match kind {
            Kind::ContentLength | Kind::HopByHop(TRANSFER_ENCODING) => true,
            Kind::HopByHop(CONNECTION | KEEP_ALIVE) => !switching,
            _ => false,
        };
        if ours {
            return;
        }
        name.push_field_to(value, out);
    });
    match framing {
        ResponseFraming::Length(length) => push_content_length(out, length),
        ResponseFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        ResponseFraming::NoBody | ResponseFraming::UntilClose => {
            // A HEAD answer says the length a GET would have had.
            if let Some(length) = headers.get(&header::CONTENT_LENGTH) {
                out.extend_from_slice(b"content-length: ");
                out.extend_from_slice(length);
                out.extend_from_slice(b"\r\n");
            }
        }
    }
    if !switching {
        if !keep_alive {
            out.extend_from_slice(b"connection: close\r\n");
        } else if request_version == Version::HTTP_10 {
            out.extend_from_slice(b"connection: keep-alive\r\n");
        }
    }
    if !dated {
        out.extend_from_slice(b"date: ");
        out.extend_from_slice(&http_date());
        out.extend_from_slice(b"\r\n");
    }
    push_crlf(out);
}

/// The status line of the usual statuses, whole: one copy rather than five.
fn usual_status_line(status: &StatusCode) -> Option<&'static [u8]> {
    Some(match status.as_u16() {
        200 => b"HTTP/1.1 200 OK\r\n",
        204 => b"HTTP/1.1 204 No Content\r\n",
        206 => b"HTTP/1.1 206 Partial Content\r\n",
        301 => b"HTTP/1.1 301 Moved Permanently\r\n",
        302 => b"HTTP/1.1 302 Found\r\n",
        304 => b"HTTP/1.1 304 Not Modified\r\n",
        400 => b"HTTP/1.1 400 Bad Request\r\n",
        404 => b"HTTP/1.1 404 Not Found\r\n",
        500 => b"HTTP/1.1 500 Internal Server Error\r\n",
        502 => b"HTTP/1.1 502 Bad Gateway\r\n",
        503 => b"HTTP/1.1 503 Service Unavailable\r\n",
        _ => return None,
    })
}

/// `content-length: N\r\n`, made on the stack and copied once.
fn push_content_length(out: &mut Vec<u8>, length: u64) {
    const NAME: &[u8; 16] = b"content-length: ";
    let mut line = [0u8; 16 + 20 + 2];
    let end = line.len() - 2;
    line[end..].copy_from_slice(b"\r\n");
    let mut at = decimal_digits(length, &mut line[..end]);
    at -= NAME.len();
    line[at..at + NAME.len()].copy_from_slice(NAME);
    out.extend_from_slice(&line[at..]);
}

fn write_fields(out: &mut Vec<u8>, fields: &HeaderMap) {
    for (name, value) in fields {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

/// `n` in decimal, without formatting machinery or an allocation.
pub(super) fn push_decimal(out: &mut Vec<u8>, n: u64) {
    let mut digits = [0u8; 20];
    let at = decimal_digits(n, &mut digits);
    out.extend_from_slice(&digits[at..]);
}

/// Writes `n`'s decimal digits at the end of `buf` (20 bytes hold any `u64`) and returns
/// where they start, so a caller can put text before them and copy the whole once.
fn decimal_digits(mut n: u64, buf: &mut [u8]) -> usize {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return at;
        }
    }
}

/// `n` in lowercase hexadecimal (a chunk-size line's number).
pub(super) fn push_hex(out: &mut Vec<u8>, n: usize) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digits = (usize::BITS - n.leading_zeros()).div_ceil(4).max(1);
    for shift in (0..digits).rev() {
        out.push(HEX[(n >> (shift * 4)) & 0xf]);
    }
}

pub(super) fn has_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// The `date` header's value, formatted once a second per worker thread.
fn http_date() -> [u8; 29] {
    thread_local! {
        static CACHED: RefCell<(u64, [u8; 29])> = const { RefCell::new((u64::MAX, [0; 29])) };
    }
    let now = SystemTime::now();
    let second = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    CACHED.with(|cached| {
        let mut cached = cached.borrow_mut();
        if cached.0 != second {
            let formatted = httpdate::fmt_http_date(now);
            let mut bytes = [b' '; 29];
            let len = formatted.len().min(29);
            bytes[..len].copy_from_slice(&formatted.as_bytes()[..len]);
            *cached = (second, bytes);
        }
        cached.1
    })
}

#[cfg(test)]
mod tests;
