use super::*;

/// Decodes `wire` fed `step` bytes at a time: the body, the trailers, the bytes left.
fn decode_all(wire: &[u8], step: usize) -> Result<(Vec<u8>, HeaderMap, Vec<u8>), ChunkError> {
    let mut decoder = ChunkedDecoder::new();
    let mut buf = BytesMut::new();
    let mut body = Vec::new();
    let mut fed = 0;
    loop {
        match decoder.decode(&mut buf)? {
            Decoded::Data(data) => body.extend_from_slice(&data),
            Decoded::End(trailers) => {
                // Nothing past the body is consumed: what is left is the tail of what was fed.
                assert!(wire[..fed].ends_with(&buf), "{wire:?} step {step}");
                return Ok((body, trailers, buf.to_vec()));
            }
            Decoded::NeedMore => {
                if fed == wire.len() {
                    return Err(ChunkError::InvalidSize);
                }
                let next = (fed + step).min(wire.len());
                buf.extend_from_slice(&wire[fed..next]);
                fed = next;
            }
        }
    }
}

#[test]
fn sound_bodies_whatever_the_reads() {
    let cases: [(&[u8], &[u8], usize); 4] = [
        (
            b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\nNEXT",
            b"hello world",
            0,
        ),
        (b"A\r\n0123456789\r\n0\r\n\r\n", b"0123456789", 0),
        (
            b"3  ;a=b\r\nabc\r\n0\r\nX-Sum: 1\r\nX-Two: 2\r\n\r\n",
            b"abc",
            2,
        ),
        (b"0\r\n\r\n", b"", 0),
    ];
    for (wire, expected, trailer_count) in cases {
        for step in [1, 2, 7, wire.len()] {
            let (body, trailers, left) =
                decode_all(wire, step).unwrap_or_else(|e| panic!("{wire:?} step {step}: {e}"));
            assert_eq!(body, expected, "{wire:?} step {step}");
            assert_eq!(trailers.len(), trailer_count);
            assert!(left.len() <= 4, "{wire:?}");
        }
    }
}

#[test]
fn malformed_bodies_fail() {
    let long_line = format!("1;{}\r\n", "e".repeat(MAX_CHUNK_LINE_BYTES));
    let cases: [(&[u8], ChunkError); 8] = [
        (b"zz\r\nabc\r\n0\r\n\r\n", ChunkError::InvalidSize),
        (b"-1\r\n", ChunkError::InvalidSize),
        (b"\r\n", ChunkError::InvalidSize),
        (b"1000000000000000\r\n", ChunkError::InvalidSize),
        (b"3\nabc\r\n", ChunkError::InvalidSize),
        (b"3\r\nabcX\r\n", ChunkError::MissingCrlf),
        (
            b"0\r\nX-Folded: a\r\n b\r\n\r\n",
            ChunkError::InvalidTrailers,
        ),
        (long_line.as_bytes(), ChunkError::SizeLineTooLong),
    ];
    for (wire, expected) in cases {
        assert_eq!(
            decode_all(wire, wire.len()).err(),
            Some(expected),
            "{wire:?}"
        );
    }
}
