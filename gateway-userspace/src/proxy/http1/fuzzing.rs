//! The codec's framing without sockets, for the fuzz target (`fuzz/fuzz_targets/
//! h1_codec.rs`) and tests: what a byte stream becomes, request by request.

use bytes::{Buf, BytesMut};

use super::{
    chunked::{ChunkedDecoder, Decoded},
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
    let mut more = |buf: &mut BytesMut| match pieces.next() {
        Some(piece) => {
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
            fields: parsed.request.headers().len(),
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
                    buf.advance(take);
                    bytes += take as u64;
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
    }
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
}
