//! The chunked transfer coding (RFC 9112 §7.1), decoded from the connection's buffer one
//! piece at a time: chunk data is copied out of the buffer (see `buffer.rs` for why).

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue};

use super::buffer;
use super::rules::{MAX_CHUNK_LINE_BYTES, MAX_CHUNK_SIZE_DIGITS, MAX_HEADERS, MAX_TRAILER_BYTES};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(in crate::proxy) enum ChunkError {
    #[error("invalid chunk-size line")]
    InvalidSize,
    #[error("chunk-size line over {MAX_CHUNK_LINE_BYTES} bytes")]
    SizeLineTooLong,
    #[error("chunk data not followed by CRLF")]
    MissingCrlf,
    #[error("invalid trailer section")]
    InvalidTrailers,
    #[error("trailer section over {MAX_TRAILER_BYTES} bytes")]
    TrailersTooLarge,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
    Done,
}

/// What the buffer gave.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Decoded {
    Data(Bytes),
    /// The last chunk and its trailers (an empty map when there were none): the body ends.
    End(HeaderMap),
    /// More bytes are needed.
    NeedMore,
}

#[derive(Debug)]
pub(super) struct ChunkedDecoder {
    state: State,
}

impl ChunkedDecoder {
    pub(super) fn new() -> Self {
        ChunkedDecoder { state: State::Size }
    }

    /// The next piece of the body from `buf`, consuming what it used.
    pub(super) fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, ChunkError> {
        loop {
            match self.state {
                State::Size => {
                    let window = &buf[..buf.len().min(MAX_CHUNK_LINE_BYTES)];
                    let Some(newline) = window.iter().position(|&b| b == b'\n') else {
                        if buf.len() >= MAX_CHUNK_LINE_BYTES {
                            return Err(ChunkError::SizeLineTooLong);
                        }
                        return Ok(Decoded::NeedMore);
                    };
                    let size = chunk_size(&buf[..=newline])?;
                    buf.advance(newline + 1);
                    self.state = if size == 0 {
                        State::Trailers
                    } else {
                        State::Data(size)
                    };
                }
                State::Data(remaining) => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    let take = usize::try_from(remaining)
                        .unwrap_or(usize::MAX)
                        .min(buf.len());
                    let left = remaining - take as u64;
                    self.state = if left == 0 {
                        State::DataEnd
                    } else {
                        State::Data(left)
                    };
                    return Ok(Decoded::Data(buffer::take(buf, take)));
                }
                State::DataEnd => {
                    if buf.len() < 2 {
                        if buf.first().is_some_and(|&b| b != b'\r') {
                            return Err(ChunkError::MissingCrlf);
                        }
                        return Ok(Decoded::NeedMore);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(ChunkError::MissingCrlf);
                    }
                    buf.advance(2);
                    self.state = State::Size;
                }
                State::Trailers => {
                    let Some(len) = trailer_section_end(buf)? else {
                        return Ok(Decoded::NeedMore);
                    };
                    let trailers = trailers(&buf[..len]);
                    buf.advance(len);
                    self.state = State::Done;
                    return Ok(Decoded::End(trailers?));
                }
                State::Done => return Ok(Decoded::End(HeaderMap::new())),
            }
        }
    }
}

/// The size of a chunk-size line (`1a;ext=1\r\n`).
fn chunk_size(line: &[u8]) -> Result<u64, ChunkError> {
    let line = line.strip_suffix(b"\r\n").ok_or(ChunkError::InvalidSize)?;
    if line.iter().any(|&b| b.is_ascii_control() && b != b'\t') {
        return Err(ChunkError::InvalidSize);
    }
    let digits = line
        .split(|&b| b == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii_end();
    if digits.is_empty()
        || digits.len() > MAX_CHUNK_SIZE_DIGITS
        || !digits.iter().all(u8::is_ascii_hexdigit)
    {
        return Err(ChunkError::InvalidSize);
    }
    Ok(digits.iter().fold(0u64, |n, &d| {
        let digit = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            _ => d - b'A' + 10,
        };
        (n << 4) | u64::from(digit)
    }))
}

/// The length of the trailer section at the start of `buf` (its empty line included).
fn trailer_section_end(buf: &[u8]) -> Result<Option<usize>, ChunkError> {
    if buf.starts_with(b"\r\n") {
        return Ok(Some(2));
    }
    for (index, _) in buf.iter().enumerate().filter(|(_, b)| **b == b'\n') {
        if index == 0 || buf[index - 1] != b'\r' {
            return Err(ChunkError::InvalidTrailers);
        }
        if index >= 3 && &buf[index - 3..=index] == b"\r\n\r\n" {
            return Ok(Some(index + 1));
        }
    }
    if buf.len() >= MAX_TRAILER_BYTES {
        return Err(ChunkError::TrailersTooLarge);
    }
    Ok(None)
}

fn trailers(section: &[u8]) -> Result<HeaderMap, ChunkError> {
    let mut map = HeaderMap::new();
    if section == b"\r\n" {
        return Ok(map);
    }
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    match httparse::parse_headers(section, &mut fields) {
        Ok(httparse::Status::Complete((n, parsed))) if n == section.len() => {
            for field in parsed {
                let name = HeaderName::from_bytes(field.name.as_bytes())
                    .map_err(|_| ChunkError::InvalidTrailers)?;
                let value = HeaderValue::from_bytes(field.value)
                    .map_err(|_| ChunkError::InvalidTrailers)?;
                map.append(name, value);
            }
            Ok(map)
        }
        _ => Err(ChunkError::InvalidTrailers),
    }
}

#[cfg(test)]
mod tests;
