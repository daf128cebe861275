//! Arbitrary upstream bytes through our HTTP/1 client's response framing: it must never
//! panic, must frame the bytes the same way however they are split across reads, must
//! agree with httparse on whether a head is complete, and must never report more body
//! bytes than the upstream sent. The first input byte picks the request's method (HEAD
//! or not). A head passed as it came must reach the client as the bytes (and map) the
//! map it was parsed into before gave, and `Kind::of` must read names as their bytes.
#![no_main]

use gateway::proxy::h1_codec_fuzzing::{
    ResponseEvent,
    fields::{passed_response, response_kind_is_the_names},
    frame_response,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, data)) = data.split_first() else {
        return;
    };
    let head_only = flags & 1 == 1;
    let whole = frame_response(data, head_only, data.len());
    for step in [1, 3, 17] {
        assert_eq!(frame_response(data, head_only, step), whole, "step {step}");
    }
    if let Some(ResponseEvent::Body { bytes, .. }) = whole.last() {
        assert!(*bytes <= data.len() as u64);
    }
    let mut headers = [httparse::EMPTY_HEADER; 100];
    let mut response = httparse::Response::new(&mut headers);
    let parsed = response.parse(data);
    for field in response.headers.iter() {
        assert!(
            response_kind_is_the_names(field.name.as_bytes()),
            "{:?}",
            field.name
        );
    }
    match passed_response(data) {
        Ok(Some(mut both)) => {
            // The writer dates an answer that has no Date when it writes it: the two
            // writes may fall in different seconds.
            for (written, _) in both.kept.written.iter_mut().chain(&mut both.mapped.written) {
                undated(written);
            }
            assert_eq!(both.kept, both.mapped);
        }
        Ok(None) => {}
        Err(field) => panic!("a passed field the map refuses: {field}"),
    }
    match parsed {
        // A head httparse finds whole, the client read as a head or refused.
        Ok(httparse::Status::Complete(_)) => assert!(
            matches!(
                whole.first(),
                Some(ResponseEvent::Head { .. } | ResponseEvent::ProtocolError)
            ),
            "{whole:?}"
        ),
        Ok(httparse::Status::Partial) => {}
        Err(_) => assert_eq!(whole.first(), Some(&ResponseEvent::ProtocolError)),
    }
});

/// `written` with the value of each `date` line of its head made `-`.
fn undated(written: &mut Vec<u8>) {
    let Some(end) = written.windows(4).position(|w| w == b"\r\n\r\n") else {
        return;
    };
    let mut out = Vec::with_capacity(written.len());
    for line in written[..end].split(|&b| b == b'\n') {
        if line.starts_with(b"date: ") {
            out.extend_from_slice(b"date: -");
            if line.ends_with(b"\r") {
                out.push(b'\r');
            }
        } else {
            out.extend_from_slice(line);
        }
        out.push(b'\n');
    }
    out.pop();
    out.extend_from_slice(&written[end..]);
    *written = out;
}
