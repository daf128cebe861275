//! Arbitrary client bytes through the HTTP/1 framing guard: it must never panic, must
//! reach the same verdict however the bytes are split across reads, must pass bytes on
//! unchanged but for a poisoned first byte, and must agree with httparse (hyper's
//! parser) on where a request head ends and how its body is framed.
#![no_main]

use gateway::proxy::h1_fuzzing::{POISON_CHUNK, POISON_HEAD, feed};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let whole = feed(data, data.len());
    // Segmentation: the same bytes in different reads, the same outcome.
    for step in [1, 3, 17] {
        assert_eq!(feed(data, step), whole, "step {step}");
    }
    // Bytes go up as sent, or held, or poisoned at the first byte of a head or chunk-size
    // line; never invented.
    assert!(whole.released.len() <= data.len());
    for (index, (&out, &sent)) in whole.released.iter().zip(data).enumerate() {
        assert!(
            out == sent || out == POISON_HEAD || out == POISON_CHUNK,
            "byte {index} changed"
        );
    }
    differential(data);
});

/// The first head, as httparse reads it, against the guard's verdict on it.
fn differential(data: &[u8]) {
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut request = httparse::Request::new(&mut headers);
    let Ok(httparse::Status::Complete(head_len)) = request.parse(data) else {
        return;
    };
    let head = &data[..head_len];
    // httparse skips empty lines before a request and accepts bare LF line ends; the
    // guard releases the former separately and refuses the latter: compare clean heads.
    let bare_lf = head
        .iter()
        .enumerate()
        .any(|(i, &b)| b == b'\n' && (i == 0 || head[i - 1] != b'\r'));
    if bare_lf || head.starts_with(b"\r\n") || head.starts_with(b"PRI ") {
        return;
    }
    let fed = feed(head, head.len());
    assert_eq!(fed.held, 0, "httparse ended the head, the guard did not");
    assert_eq!(fed.released.len(), head_len);

    let named = |name: &str| {
        request
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
            .collect::<Vec<_>>()
    };
    let lengths = named("content-length");
    let encodings = named("transfer-encoding");
    let ambiguous = lengths.len() > 1 || (!lengths.is_empty() && !encodings.is_empty());
    let poisoned = fed.released[0] == POISON_HEAD && data[0] != POISON_HEAD;
    // A value with a CR or obs-fold is the guard's to refuse as well; only clean values
    // are compared.
    let clean = request
        .headers
        .iter()
        .all(|h| !h.value.contains(&b'\r') && !h.value.contains(&b'\n'));
    if !clean {
        return;
    }
    if ambiguous {
        assert!(poisoned, "ambiguous framing passed: {lengths:?} {encodings:?}");
        return;
    }
    assert!(!poisoned, "a clean head was refused");
    let upgrade = request.method == Some("CONNECT") || !named("upgrade").is_empty();
    if upgrade {
        assert!(fed.awaiting_upgrade.is_some(), "an upgrade request was not held");
    }
    let expected = match (lengths.as_slice(), encodings.last()) {
        ([], None) => Some("Head".to_owned()),
        ([length], None) => match std::str::from_utf8(length)
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
        {
            Some(0) => Some("Head".to_owned()),
            Some(n) => Some(format!("Body({n})")),
            None => Some("Passthrough".to_owned()),
        },
        ([], Some(last)) => {
            let chunked = last
                .rsplit(|&b| b == b',')
                .next()
                .is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            Some(if chunked { "ChunkSize" } else { "Passthrough" }.to_owned())
        }
        _ => None,
    };
    if let Some(expected) = expected {
        assert_eq!(fed.state, expected);
    }
}
