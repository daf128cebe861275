//! Arbitrary client bytes through our HTTP/1 codec's framing: it must never panic, must
//! frame the bytes the same way however they are split across reads, and must agree with
//! httparse on every head httparse parses strictly (and with a reference model of RFC
//! 9112 §6.3 on how its body is framed). A head the codec keeps as its fields must
//! reach the upstream as the bytes (and map) the map it was parsed into before gave.
#![no_main]

use gateway::proxy::h1_codec_fuzzing::{Event, fields::kept_request, frame};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let whole = frame(data, data.len());
    // Segmentation: the same bytes in different reads, the same requests.
    for step in [1, 3, 17] {
        assert_eq!(frame(data, step), whole, "step {step}");
    }
    differential(data, whole.first());
    // Every setting: plain, a client certificate, a rewritten authority, both.
    for setting in 0..4 {
        match kept_request(data, setting) {
            Ok(Some(both)) => assert_eq!(both.kept, both.mapped, "setting {setting}"),
            Ok(None) => break,
            Err(field) => panic!("a kept field the map refuses: {field}"),
        }
    }
});

/// The first head, as httparse reads it, against the codec's verdict on it.
fn differential(data: &[u8], first: Option<&Event>) {
    let mut headers = [httparse::EMPTY_HEADER; 100];
    let mut request = httparse::Request::new(&mut headers);
    let parsed = request.parse(data);
    match parsed {
        Ok(httparse::Status::Complete(head_len)) => {
            let head = &data[..head_len];
            // httparse accepts bare LF line ends (and skips empty lines of either kind):
            // the codec refuses the former, so only clean heads are compared.
            let bare_lf = head
                .iter()
                .enumerate()
                .any(|(i, &b)| b == b'\n' && (i == 0 || head[i - 1] != b'\r'));
            if bare_lf || head.len() > 16 * 1024 {
                return;
            }
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
            let expected = reference_framing(&lengths, &encodings);
            match (first, expected) {
                (Some(Event::Head { framing, fields, .. }), Ok(expected)) => {
                    assert_eq!(framing, &expected);
                    assert_eq!(*fields, request.headers.len());
                }
                (Some(Event::Refused(400)), Err(())) => {}
                // The method, target or a header value is outside what `http` takes.
                (Some(Event::Refused(400)), Ok(_)) => {}
                (other, expected) => panic!("codec {other:?}, reference {expected:?}"),
            }
        }
        Ok(httparse::Status::Partial) => {}
        Err(_) => {
            // What httparse refuses, the codec refuses too (or never sees whole).
            assert!(
                matches!(
                    first,
                    Some(Event::Refused(_)) | Some(Event::Incomplete) | None
                ),
                "httparse refused, codec {first:?}"
            );
        }
    }
}

/// RFC 9112 §6.3 as the codec applies it: one Content-Length of digits, or a
/// Transfer-Encoding ending in chunked, never both.
fn reference_framing(lengths: &[&[u8]], encodings: &[&[u8]]) -> Result<String, ()> {
    match (lengths, encodings) {
        ([], []) => Ok("None".to_owned()),
        ([length], []) => {
            let digits = length.trim_ascii();
            if digits.is_empty() || digits.len() > 18 || !digits.iter().all(u8::is_ascii_digit) {
                return Err(());
            }
            let n: u64 = std::str::from_utf8(digits).map_err(|_| ())?.parse().map_err(|_| ())?;
            Ok(if n == 0 { "None".to_owned() } else { format!("Length({n})") })
        }
        ([], [.., last]) => {
            let chunked = last
                .rsplit(|&b| b == b',')
                .next()
                .is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            if chunked { Ok("Chunked".to_owned()) } else { Err(()) }
        }
        _ => Err(()),
    }
}
