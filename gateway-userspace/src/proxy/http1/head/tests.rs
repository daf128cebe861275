use super::*;

const HOST: &str = "Host: a.example\r\n";

fn head(lines: &str) -> Vec<u8> {
    format!("{lines}\r\n").into_bytes()
}

#[test]
fn framing_of_sound_heads() {
    let cases: [(&str, BodyFraming, bool); 8] = [
        ("GET / HTTP/1.1\r\nHost: a\r\n", BodyFraming::None, true),
        (
            "POST / HTTP/1.1\r\nContent-Length: 5\r\n",
            BodyFraming::Length(5),
            true,
        ),
        (
            "POST / HTTP/1.1\r\nContent-Length: 0\r\n",
            BodyFraming::None,
            true,
        ),
        (
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n",
            BodyFraming::Chunked,
            true,
        ),
        (
            "POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n",
            BodyFraming::Chunked,
            true,
        ),
        (
            "GET / HTTP/1.1\r\nConnection: close\r\n",
            BodyFraming::None,
            false,
        ),
        ("GET / HTTP/1.0\r\n", BodyFraming::None, false),
        (
            "GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n",
            BodyFraming::None,
            true,
        ),
    ];
    for (lines, framing, keep_alive) in cases {
        let parsed = parse(&head(lines)).ok().flatten();
        let parsed = parsed.unwrap_or_else(|| panic!("{lines:?} did not parse"));
        assert_eq!(parsed.framing, framing, "{lines:?}");
        assert_eq!(parsed.keep_alive, keep_alive, "{lines:?}");
        assert_eq!(parsed.len, lines.len() + 2, "{lines:?}");
    }
}

#[test]
fn smuggling_and_malformed_heads_are_refused() {
    let cases: [(&[u8], HeadError); 11] = [
        (
            b"POST / HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n",
            HeadError::LengthBesideEncoding,
        ),
        (
            b"POST / HTTP/1.1\r\nContent-Length: 4\r\nContent-Length: 4\r\n\r\n",
            HeadError::DuplicateContentLength,
        ),
        (
            b"POST / HTTP/1.1\r\nContent-Length: +4\r\n\r\n",
            HeadError::InvalidContentLength,
        ),
        (
            b"POST / HTTP/1.1\r\nContent-Length: 4, 4\r\n\r\n",
            HeadError::InvalidContentLength,
        ),
        (
            b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
            HeadError::UnframedEncoding,
        ),
        (
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            HeadError::UnframedEncoding,
        ),
        (b"GET / HTTP/1.1\nHost: a\n\n", HeadError::BareLf),
        (b"GET / HTTP/1.1\r\nHost: a\n\r\n", HeadError::BareLf),
        (
            b"GET / HTTP/1.1\r\nX-Folded: a\r\n b\r\n\r\n",
            HeadError::Malformed(httparse::Error::HeaderName),
        ),
        (
            b"GET / HTTP/1.1\r\nX-Bad : b\r\n\r\n",
            HeadError::Malformed(httparse::Error::HeaderName),
        ),
        (
            b"GET / HTTP/1.1\r\nX-Bad: a\x01b\r\n\r\n",
            HeadError::Malformed(httparse::Error::HeaderValue),
        ),
    ];
    for (bytes, expected) in cases {
        assert_eq!(
            parse(bytes).err(),
            Some(expected),
            "{:?}",
            String::from_utf8_lossy(bytes)
        );
    }
    assert!(matches!(
        parse(b"GET / HTTP/1.1 extra\r\n\r\n"),
        Err(HeadError::Malformed(_))
    ));
}

#[test]
fn limits_give_431_and_414() {
    let big = format!(
        "GET / HTTP/1.1\r\n{HOST}X-Big: {}\r\n\r\n",
        "a".repeat(MAX_HEAD_BYTES)
    );
    assert_eq!(parse(big.as_bytes()).err(), Some(HeadError::HeadTooLarge));
    // Over the limit before the end arrived: refused without waiting.
    assert_eq!(
        parse(&big.as_bytes()[..MAX_HEAD_BYTES + 10]).err(),
        Some(HeadError::HeadTooLarge)
    );
    let many: String = (0..=MAX_HEADERS).map(|i| format!("X-{i}: v\r\n")).collect();
    let many = format!("GET / HTTP/1.1\r\n{many}\r\n");
    assert_eq!(
        parse(many.as_bytes()).err(),
        Some(HeadError::TooManyHeaders)
    );
    let long = format!("GET /{} HTTP/1.1\r\n", "a".repeat(MAX_REQUEST_LINE_BYTES));
    assert_eq!(
        parse(long.as_bytes()).err(),
        Some(HeadError::RequestLineTooLong)
    );
    assert_eq!(HeadError::RequestLineTooLong.status().as_u16(), 414);
    assert_eq!(HeadError::TooManyHeaders.status().as_u16(), 431);
    assert_eq!(HeadError::BareLf.status().as_u16(), 400);
}

#[test]
fn partial_heads_wait_and_empty_lines_before_are_skipped() {
    let whole = b"\r\n\r\nGET /x?y HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc";
    for cut in 0..whole.len() - 3 {
        assert!(matches!(parse(&whole[..cut]), Ok(None)), "cut at {cut}");
    }
    let parsed = parse(whole).ok().flatten();
    let mut parsed = parsed.unwrap_or_else(|| panic!("no head"));
    assert_eq!(parsed.len, whole.len() - 3);
    assert!(parsed.expect_continue);
    assert_eq!(parsed.request.uri().path(), "/x");
    let map =
        super::super::request_fields::whole(parsed.request.headers_mut(), &mut parsed.facts.fields);
    assert_eq!(map["host"], "a");
}

#[test]
fn upgrades_and_connect() {
    let upgrade = parse(b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n");
    assert!(upgrade.ok().flatten().is_some_and(|h| h.upgrade));
    let connect = parse(b"CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\n\r\n");
    assert!(connect.ok().flatten().is_some_and(|h| h.upgrade));
    // HTTP/1.0 has no upgrades.
    let old = parse(b"GET /ws HTTP/1.0\r\nUpgrade: websocket\r\n\r\n");
    assert!(old.ok().flatten().is_some_and(|h| !h.upgrade));
}

#[test]
fn shared_copies_hold_the_head_whatever_its_size() {
    for len in [0, 1, 255, 256, 257, 1024, 1025, 5000] {
        let head: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let copy = shared_copy(&head);
        assert_eq!(&copy[..], &head[..], "{len}");
        let part = &head[len / 3..len / 2];
        let shared = shared_part(&copy, &head, part).expect("inside");
        assert_eq!(&shared[..], part, "{len}");
    }
}
