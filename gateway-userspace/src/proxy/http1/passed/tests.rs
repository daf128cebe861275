use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, Version};
use http_body_util::{BodyExt, Full};

use super::super::fuzzing::reference::{self, edit_map, edit_passed, listed};
use super::super::{
    client::{HeadFields, parse_response},
    response::{Answering, write},
};
use super::*;

/// httparse admits exactly the name and value bytes that `HeaderName` and `HeaderValue`
/// do: a passed head's fields need no second look, and `into_map` never drops one.
#[test]
fn httparse_admits_the_bytes_the_map_s_types_admit() {
    for byte in 0..=255u8 {
        if byte == b':' {
            // Ends the name.
            continue;
        }
        let name = [b'x', byte];
        let head = [b"HTTP/1.1 200 OK\r\n".as_slice(), &name, b": v\r\n\r\n"].concat();
        let parsed = parse_response(&head, false);
        let admitted = matches!(parsed, Ok(Some(_)));
        assert_eq!(
            admitted,
            HeaderName::from_bytes(&name).is_ok(),
            "name byte {byte:#x}"
        );
        let value = [b'v', byte, b'v'];
        let head = [b"HTTP/1.1 200 OK\r\nx: ".as_slice(), &value, b"\r\n\r\n"].concat();
        let parsed = parse_response(&head, false);
        let admitted = matches!(parsed, Ok(Some(_)));
        assert_eq!(
            admitted,
            HeaderValue::from_bytes(&value).is_ok(),
            "value byte {byte:#x}"
        );
    }
}

/// The head's fields as the client made them into a map before heads were passed.
fn reference_map(head: &[u8]) -> HeaderMap {
    reference::response_map(head)
        .expect("a head")
        .expect("a map")
}

const HEADS: &[&[u8]] = &[
    b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Thu, 03 Dec 2026 05:00:00 GMT\r\nContent-Type: text/plain\r\nContent-Length: 9\r\nConnection: keep-alive\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\nX-A: 1\r\nTrailer: x-sum\r\nX-B: 2\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTE: trailers\r\nX-A: 1\r\nUpgrade: h2c\r\nProxy-Connection: x\r\nX-B: 2\r\nProxy-Authenticate: Basic\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTE: gzip\r\nX-A: 1\r\ncontent-length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nx-envoy-upstream-service-time: 99\r\nX-A: 1\r\nserver: up\r\nKeep-Alive: timeout=5\r\ncontent-length: 2\r\n\r\n",
    b"HTTP/1.1 204 No Content\r\nSet-Cookie: a=1\r\nX-A: 1\r\nSet-Cookie: b=2\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nConnection: close, x-hop\r\nx-hop: 1\r\nX-A: 1\r\ncontent-length: 2\r\n\r\n",
    b"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\nContent-Length: 20\r\n\r\n",
    b"HTTP/1.0 200 OK\r\nX-A: \t v\xff \r\n\r\n",
    b"HTTP/1.1 404 Not Found\r\n\r\n",
    // Lines copied whole and not: no space after the colon, an empty value, a tab, a
    // name all capitals, a value with a space inside.
    b"HTTP/1.1 200 OK\r\nServer:nginx\r\nX-Empty: \r\nX-Tab:\tv\r\nCONTENT-TYPE: text/html\r\nX-Env: a b\r\ncontent-length: 5\r\nDate: x\r\nKeep-Alive: timeout=5\r\n\r\n",
    // Kinds known by name in any case, the service time's among them.
    b"HTTP/1.1 200 OK\r\nSERVER: a\r\nX-Envoy-Upstream-Service-Time: 7\r\nDATE: x\r\nContent-LENGTH: 0\r\nconnection: Keep-Alive\r\n\r\n",
];

/// A passed head edited as every answer is gives the map, and the bytes, that the map
/// the head was parsed into before gives.
#[tokio::test]
async fn passed_heads_give_what_their_maps_gave() {
    let mut passed_any = false;
    for head in HEADS {
        let mut map = reference_map(head);
        edit_map(&mut map);
        let parsed = parse_response(head, false)
            .expect("parsed")
            .expect("complete");
        let status = parsed.status;
        passed_any |= matches!(parsed.headers, HeadFields::Passed(_));
        let (mut own_map, mut passed) = parsed.headers.split();
        edit_passed(&mut ResponseFields {
            map: &mut own_map,
            passed: &mut passed,
        });
        for (method, version) in [
            (Method::GET, Version::HTTP_11),
            (Method::HEAD, Version::HTTP_11),
            (Method::GET, Version::HTTP_10),
        ] {
            let answer = |headers: HeaderMap| {
                let mut response = Response::new(Full::new(Bytes::from_static(b"ok")).boxed());
                *response.status_mut() = status;
                *response.headers_mut() = headers;
                response
            };
            let answering = Answering {
                method: &method,
                version,
                keep_alive: true,
            };
            let mut before = Vec::new();
            let before_end = write(&mut before, answer(map.clone()), None, answering).await;
            let mut after = Vec::new();
            let after_end = write(
                &mut after,
                answer(own_map.clone()),
                passed.as_deref(),
                answering,
            )
            .await;
            assert_eq!(
                String::from_utf8_lossy(&before),
                String::from_utf8_lossy(&after),
                "{}",
                String::from_utf8_lossy(head)
            );
            assert_eq!(format!("{before_end:?}"), format!("{after_end:?}"));
        }
        let whole = whole(&mut own_map, &mut passed);
        assert_eq!(
            listed(whole),
            listed(&map),
            "{}",
            String::from_utf8_lossy(head)
        );
    }
    assert!(passed_any);
}

/// Heads that a map would order differently, or whose Connection names fields, or a
/// 101's, are not passed.
#[test]
fn heads_a_map_would_reorder_are_not_passed() {
    let passed = |head: &[u8]| {
        matches!(
            parse_response(head, false)
                .expect("parsed")
                .expect("complete")
                .headers,
            HeadFields::Passed(_)
        )
    };
    assert!(passed(HEADS[0]));
    assert!(passed(HEADS[2]));
    assert!(!passed(HEADS[5]), "a name twice");
    assert!(!passed(HEADS[6]), "Connection naming a field");
    assert!(passed(HEADS[10]));
    assert!(passed(HEADS[11]));
    assert!(!passed(
        b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n"
    ));
    let many: Vec<u8> = (0..=MAX_FIELDS)
        .flat_map(|i| format!("x-{i}: v\r\n").into_bytes())
        .collect();
    let head = [b"HTTP/1.1 200 OK\r\n".as_slice(), &many, b"\r\n"].concat();
    assert!(!passed(&head));
}

/// Inserts beyond the passed fields' room go to the map, in order.
#[test]
fn inserts_beyond_the_room_make_the_map() {
    let parsed = parse_response(b"HTTP/1.1 200 OK\r\nX-A: 1\r\nx-c: 3\r\n\r\n", false)
        .expect("parsed")
        .expect("complete");
    let (mut map, mut passed) = parsed.headers.split();
    let mut fields = ResponseFields {
        map: &mut map,
        passed: &mut passed,
    };
    for name in ["x-b", "x-c", "x-d", "x-e", "x-f", "x-g", "x-a"] {
        fields.insert(
            HeaderName::from_static(name),
            HeaderValue::from_static("new"),
        );
    }
    assert_eq!(
        get(
            fields.map,
            fields.passed.as_deref(),
            &HeaderName::from_static("x-a")
        ),
        Some(b"new".as_slice())
    );
    let whole = fields.whole();
    let names: Vec<&str> = whole.keys().map(HeaderName::as_str).collect();
    assert_eq!(names, ["x-a", "x-c", "x-b", "x-d", "x-e", "x-f", "x-g"]);
}

/// The word compares of `Pattern` agree with `eq_ignore_ascii_case` on every byte at
/// every place of each name the proxy knows (and of the Connection tokens).
#[test]
fn patterns_match_as_eq_ignore_ascii_case() {
    for known in [
        "te",
        "date",
        "close",
        "server",
        "trailer",
        "upgrade",
        "connection",
        "keep-alive",
        "content-length",
        "proxy-connection",
        "transfer-encoding",
        "proxy-authenticate",
        "x-envoy-upstream-service-time",
    ] {
        let pattern = Pattern::new(known);
        assert!(pattern.matches(known.as_bytes()));
        assert!(pattern.matches(known.to_ascii_uppercase().as_bytes()));
        let mut name = known.as_bytes().to_vec();
        for at in 0..name.len() {
            let kept = name[at];
            for byte in 0..=255u8 {
                name[at] = byte;
                assert_eq!(
                    pattern.matches(&name),
                    name.eq_ignore_ascii_case(known.as_bytes()),
                    "{known} with {byte:#x} at {at}"
                );
            }
            name[at] = kept;
        }
        assert!(!pattern.matches(&name[1..]));
        assert!(!pattern.matches(&[known.as_bytes(), b"x"].concat()));
    }
}
