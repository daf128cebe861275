//! The codec's rules in one place: what a request may look like before it reaches the
//! request handler, each limit with its default and the answer for going over it.

use http::StatusCode;

/// Largest request head (request line, headers, the empty line): Envoy's default
/// `max_request_headers_kb` (60 KiB). Larger heads get 431.
pub(in crate::proxy) const MAX_HEAD_BYTES: usize = 60 * 1024;
/// Most header fields in one request: Envoy's default `max_headers_count`. More get 431.
pub(in crate::proxy) const MAX_HEADERS: usize = 100;
/// Longest request line: URIs longer than browsers send (16 KiB, twice nginx's
/// `large_client_header_buffers` line) get 414 before the rest of the head is read.
pub(super) const MAX_REQUEST_LINE_BYTES: usize = 16 * 1024;
/// Longest chunk-size line, extensions included; longer ones fail the body (400).
pub(super) const MAX_CHUNK_LINE_BYTES: usize = 4096;
/// Most hex digits in a chunk size: 15 keep every size below 2^60, no overflow.
pub(super) const MAX_CHUNK_SIZE_DIGITS: usize = 15;
/// Largest trailer section of a chunked body.
pub(super) const MAX_TRAILER_BYTES: usize = 16 * 1024;
/// Largest read from the socket: nginx's `client_body_buffer_size` on 64-bit systems.
pub(super) const READ_CHUNK: usize = 16 * 1024;
/// HTTP/2's connection preface: only a connection's first bytes switch it to hyper's h2.
pub(super) const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Why a request head is refused, each with its answer (the connection closes after it).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(in crate::proxy) enum HeadError {
    /// A line ends in LF without CR: parsers that accept it disagree on where lines end.
    #[error("bare LF line ending")]
    BareLf,
    /// httparse's verdict: obs-fold, a space before a colon, control characters, a
    /// malformed request line or version.
    #[error("malformed request head: {0}")]
    Malformed(httparse::Error),
    #[error("more than {MAX_HEADERS} header fields")]
    TooManyHeaders,
    #[error("request head over {MAX_HEAD_BYTES} bytes")]
    HeadTooLarge,
    #[error("request line over {MAX_REQUEST_LINE_BYTES} bytes")]
    RequestLineTooLong,
    /// Two parsers could pick different lengths (RFC 9112 §6.3).
    #[error("Content-Length more than once")]
    DuplicateContentLength,
    #[error("Content-Length beside Transfer-Encoding")]
    LengthBesideEncoding,
    #[error("invalid Content-Length")]
    InvalidContentLength,
    /// A Transfer-Encoding whose last coding is not chunked leaves the body unframed.
    #[error("Transfer-Encoding does not end in chunked")]
    UnframedEncoding,
    #[error("invalid method, request target or header")]
    Invalid,
}

impl HeadError {
    pub(in crate::proxy) fn status(&self) -> StatusCode {
        match self {
            HeadError::TooManyHeaders | HeadError::HeadTooLarge => {
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
            }
            HeadError::RequestLineTooLong => StatusCode::URI_TOO_LONG,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}
