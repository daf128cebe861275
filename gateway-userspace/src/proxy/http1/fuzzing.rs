//! The codec's framing without sockets, for the fuzz targets (`fuzz/fuzz_targets/
//! h1_codec.rs`, `h1_response.rs`) and tests: what a byte stream becomes, request by
//! request, and what an upstream's bytes become as the client reads one response.
//! `fields`: the kept request fields and passed response fields against their maps.

pub mod fields;
pub(super) mod reference;

use bytes::{Buf, BytesMut};

use super::{
    buffer,
    chunked::{ChunkedDecoder, Decoded},
    client::{self, BodyDecoder},
    head::{self, BodyFraming},
};

/// One step of what the codec made of a byte stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A request head: its method, target, body framing (`None`, `Length(n)`,
    /// `Chunked`), and the number of header fields.
    Head {
        method: String,
        target: String,
        framing: String,
        fields: usize,
    },
    /// A body ended soundly with this many bytes (and trailer fields).
    Body { bytes: u64, trailers: usize },
    /// The head was refused with this status; nothing after it is read.
    Refused(u16),
    /// The body broke off (bad chunk framing); nothing after it is read.
    BrokenBody,
    /// An upgrade request: what follows depends on the answer, so framing stops here.
    Upgrade,
    /// The bytes ended inside a head or body.
    Incomplete,
}

/// Frames `input` as the codec would on one connection (every answer keeping it open),
/// fed in pieces of `step` bytes (at least 1).
pub fn frame(input: &[u8], step: usize) -> Vec<Event> {
    let mut pieces = input.chunks(step.max(1));
    let mut buf = BytesMut::new();
    let mut events = Vec::new();
    // The buffer is handled as the connection handles it (`buffer.rs`): room made before
    // each read (a spare taken when it has none), body bytes taken, and settled between
    // requests (given back to the spares when empty).
    let mut more = |buf: &mut BytesMut| match pieces.next() {
        Some(piece) => {
            buffer::make_room(buf);
            buf.extend_from_slice(piece);
            true
        }
        None => false,
    };
    loop {
        let parsed = match head::parse(&buf) {
            Ok(Some(parsed)) => parsed,
            Ok(None) => {
                if more(&mut buf) {
                    continue;
                }
                if !buf.is_empty() {
                    events.push(Event::Incomplete);
                }
                return events;
            }
            Err(e) => {
                events.push(Event::Refused(e.status().as_u16()));
                return events;
            }
        };
        buf.advance(parsed.len);
        events.push(Event::Head {
            method: parsed.request.method().to_string(),
            target: parsed.request.uri().to_string(),
            framing: format!("{:?}", parsed.framing),
            fields: parsed.request.headers().len()
                + parsed
                    .facts
                    .fields
                    .as_ref()
                    .map_or(0, |fields| fields.len()),
        });
        if parsed.upgrade {
            events.push(Event::Upgrade);
            return events;
        }
        let mut bytes = 0u64;
        let trailers = match parsed.framing {
            BodyFraming::None => 0,
            BodyFraming::Length(length) => {
                while bytes < length {
                    if buf.is_empty() && !more(&mut buf) {
                        events.push(Event::Incomplete);
                        return events;
                    }
                    let take = usize::try_from(length - bytes)
                        .unwrap_or(usize::MAX)
                        .min(buf.len());
                    bytes += buffer::take(&mut buf, take).len() as u64;
                }
                0
            }
            BodyFraming::Chunked => {
                let mut decoder = ChunkedDecoder::new();
                loop {
                    match decoder.decode(&mut buf) {
                        Ok(Decoded::Data(data)) => bytes += data.len() as u64,
                        Ok(Decoded::End(trailers)) => break trailers.len(),
                        Ok(Decoded::NeedMore) => {
                            if !more(&mut buf) {
                                events.push(Event::Incomplete);
                                return events;
                            }
                        }
                        Err(_) => {
                            events.push(Event::BrokenBody);
                            return events;
                        }
                    }
                }
            }
        };
        events.push(Event::Body { bytes, trailers });
        buffer::settle(&mut buf);
    }
}

/// What the client made of an upstream's bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResponseEvent {
    /// A response head (interim ones too): its status, framing and field count, and
    /// whether the connection may carry another request after it.
    Head {
        status: u16,
        framing: String,
        fields: usize,
        keep_alive: bool,
    },
    /// The body ended soundly: this many bytes and trailer fields.
    Body { bytes: u64, trailers: usize },
    /// The head or body could not be framed (502 `UPE` before the head is passed on).
    ProtocolError,
    /// The bytes ended inside a head or a length-framed or chunked body.
    Incomplete,
}

/// Frames `input` as the client reads one response to a request (HEAD when
/// `head_only`), fed in pieces of `step` bytes; the end of `input` is the upstream
/// closing the connection.
pub fn frame_response(input: &[u8], head_only: bool, step: usize) -> Vec<ResponseEvent> {
    let mut pieces = input.chunks(step.max(1));
    let mut buf = BytesMut::new();
    let mut events = Vec::new();
    let mut more = |buf: &mut BytesMut| match pieces.next() {
        Some(piece) => {
            buf.extend_from_slice(piece);
            true
        }
        None => false,
    };
    let head = loop {
        match client::parse_response(&buf, head_only) {
            Ok(Some(head)) => {
                buf.advance(head.len);
                events.push(ResponseEvent::Head {
                    status: head.status.as_u16(),
                    framing: format!("{:?}", head.framing),
                    fields: head.headers.len(),
                    keep_alive: head.keep_alive,
                });
                if head.status.is_informational() && head.status.as_u16() != 101 {
                    continue;
                }
                break head;
            }
            Ok(None) => {
                if !more(&mut buf) {
                    events.push(ResponseEvent::Incomplete);
                    return events;
                }
            }
            Err(_) => {
                events.push(ResponseEvent::ProtocolError);
                return events;
            }
        }
    };
    if head.status.as_u16() == 101 {
        return events;
    }
    let mut decoder = BodyDecoder::new(head.framing);
    let (mut bytes, mut trailers) = (0u64, 0usize);
    loop {
        match client::decode_body(&mut decoder, &mut buf) {
            Ok(Some(frame)) => match frame.into_data() {
                Ok(data) => bytes += data.len() as u64,
                Err(frame) => trailers = frame.into_trailers().map_or(0, |t| t.len()),
            },
            Ok(None) if matches!(decoder, BodyDecoder::Done) => break,
            Ok(None) => {
                if !more(&mut buf) {
                    if matches!(decoder, BodyDecoder::UntilClose) {
                        break;
                    }
                    events.push(ResponseEvent::Incomplete);
                    return events;
                }
            }
            Err(_) => {
                events.push(ResponseEvent::ProtocolError);
                return events;
            }
        }
    }
    events.push(ResponseEvent::Body { bytes, trailers });
    events
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fuzz target's first property on its seeds: the same requests however the
    /// bytes are split across reads.
    #[test]
    fn framing_does_not_depend_on_how_reads_split_the_bytes() {
        let seeds: [&[u8]; 6] = [
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\nPOST /p HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET /x HTTP/1.1\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-T: 1\r\n\r\nGET / HTTP/1.1\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\n\r\n\x81\x00",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"\r\n\r\nGET / HTTP/1.1\nHost: a\n\n",
        ];
        for seed in seeds {
            let whole = frame(seed, seed.len());
            assert!(!whole.is_empty(), "{seed:?}");
            for step in 1..seed.len() {
                assert_eq!(frame(seed, step), whole, "{seed:?} step {step}");
            }
        }
        let pipelined = frame(seeds[0], 5);
        assert_eq!(pipelined.len(), 6, "{pipelined:?}");
        assert_eq!(frame(seeds[2], 1), [Event::Refused(400)]);
        assert_eq!(frame(seeds[4], 3).last(), Some(&Event::BrokenBody));
    }

    /// The response fuzz target's property on its seeds: one framing however the
    /// upstream's bytes are split across reads.
    #[test]
    fn response_framing_does_not_depend_on_how_reads_split_the_bytes() {
        let seeds: [(&[u8], bool); 6] = [
            (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nabc", false),
            (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nx-t: 1\r\n\r\n", false),
            (b"HTTP/1.1 200 OK\r\n\r\nclose-delimited", false),
            (b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n", true),
            (b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nab", false),
            (b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort", false),
        ];
        for (seed, head_only) in seeds {
            let whole = frame_response(seed, head_only, seed.len());
            for step in 1..seed.len() {
                assert_eq!(
                    frame_response(seed, head_only, step),
                    whole,
                    "{seed:?} step {step}"
                );
            }
        }
        let body = |seed: &[u8], head_only| frame_response(seed, head_only, 4).pop();
        assert_eq!(
            body(seeds[0].0, false),
            Some(ResponseEvent::Body {
                bytes: 3,
                trailers: 0
            })
        );
        assert_eq!(
            body(seeds[1].0, false),
            Some(ResponseEvent::Body {
                bytes: 3,
                trailers: 1
            })
        );
        assert_eq!(
            body(seeds[2].0, false),
            Some(ResponseEvent::Body {
                bytes: 15,
                trailers: 0
            })
        );
        assert_eq!(
            body(seeds[3].0, true),
            Some(ResponseEvent::Body {
                bytes: 0,
                trailers: 0
            })
        );
        assert_eq!(body(seeds[4].0, false), Some(ResponseEvent::ProtocolError));
        assert_eq!(body(seeds[5].0, false), Some(ResponseEvent::Incomplete));
    }
}
