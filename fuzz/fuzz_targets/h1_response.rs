//! Arbitrary upstream bytes through our HTTP/1 client's response framing: it must never
//! panic, must frame the bytes the same way however they are split across reads, must
//! agree with httparse on whether a head is complete, and must never report more body
//! bytes than the upstream sent. The first input byte picks the request's method (HEAD
//! or not).
#![no_main]

use gateway::proxy::h1_codec_fuzzing::{ResponseEvent, frame_response};
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
    match response.parse(data) {
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
