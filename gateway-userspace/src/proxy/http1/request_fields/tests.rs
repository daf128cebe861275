//! The upstream gets the same bytes whether a request's head went through the map (as
//! every request did before `request_fields`) or was kept as its fields.

use http::{HeaderMap, HeaderValue, Request};
use http_body_util::{BodyExt, Empty};

use super::super::{
    Http1Client,
    fuzzing::reference::{self, Setting, plain_route_head},
    head,
};
use super::*;
use crate::{
    proxy::{
        upstream::Outgoing,
        upstream_head::{UpstreamHead, new_request_id},
    },
    snapshot::UpstreamProtocol,
};

/// The map as the codec built it before: every field as httparse gave it, in order.
fn map_as_before(bytes: &[u8]) -> HeaderMap {
    reference::request_map(bytes)
        .expect("parses")
        .expect("a map")
}

/// Heads as clients send them: the plain ones, and every edit the proxy makes.
const HEADS: &[&str] = &[
    // h2load, curl, wrk, a browser.
    "GET /item HTTP/1.1\r\nHost: 127.0.0.1:18580\r\nUser-Agent: h2load nghttp2/1.59.0\r\n\r\n",
    "GET /item?q=1 HTTP/1.1\r\nHost: a.example\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n",
    "GET / HTTP/1.1\r\nHost: a.example\r\n\r\n",
    "GET /page HTTP/1.1\r\nHost: a.example\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64)\r\n\
     Accept: text/html,application/xhtml+xml;q=0.9\r\nAccept-Language: en-US,en;q=0.5\r\n\
     Accept-Encoding: gzip, deflate, br\r\nCookie: a=1; b=2\r\nSec-Fetch-Mode: navigate\r\n\
     Upgrade-Insecure-Requests: 1\r\nDNT: 1\r\n\r\n",
    // Hop-by-hop fields in the middle: each removal moves the last field up.
    "GET / HTTP/1.1\r\nConnection: keep-alive\r\nHost: a.example\r\nKeep-Alive: timeout=5\r\n\
     X-A: 1\r\nX-B: 2\r\nProxy-Connection: keep-alive\r\nX-C: 3\r\n\r\n",
    "POST /up HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: chunked\r\nTE: trailers\r\n\
     Trailer: x-sum\r\nContent-Type: application/octet-stream\r\nX-Last: 1\r\n\r\n",
    "POST /up HTTP/1.1\r\nHost: a.example\r\nTE: gzip\r\nProxy-Authenticate: Basic\r\n\
     Content-Length: 3\r\nX-Last: 1\r\n\r\n",
    "PUT /up HTTP/1.1\r\nExpect: 100-continue\r\nHost: a.example\r\nContent-Length: 10\r\n\
     X-Last: 1\r\n\r\n",
    "PUT /up HTTP/1.1\r\nHost: a.example\r\nExpect: something-else\r\nContent-Length: 10\r\n\r\n",
    // Forwarding headers the client sent: replaced in place, joined, or removed.
    "GET / HTTP/1.1\r\nX-Forwarded-For: 1.2.3.4\r\nHost: a.example\r\nX-Forwarded-Proto: https\r\n\
     X-Request-Id: client-id\r\nX-Forwarded-Client-Cert: By=forged\r\nX-Last: 1\r\n\r\n",
    "GET / HTTP/1.1\r\nHost: a.example\r\nX-Forwarded-For:\r\nX-Last: 1\r\n\r\n",
    "GET / HTTP/1.1\r\nX-Forwarded-Client-Cert: By=forged\r\nHost: a.example\r\nX-Z: 1\r\n\r\n",
    // HTTP/1.0, absolute form (Host replaced by the target's authority), no Host.
    "GET / HTTP/1.0\r\nConnection: Keep-Alive\r\nHost: a.example\r\n\r\n",
    "GET http://other.example/p HTTP/1.1\r\nHost: a.example\r\nX-Last: 1\r\n\r\n",
    "GET http://other.example/p HTTP/1.0\r\nX-Last: 1\r\n\r\n",
    // Odd but admitted values: obs-text, empty, tabs, mixed-case names.
    "GET / HTTP/1.1\r\nhOsT: a.example\r\nX-Obs: caf\u{e9}\r\nX-Empty:\r\nX-Tab: a\tb\r\n\r\n",
    "POST / HTTP/1.1\r\nHost: a.example\r\nContent-Length: 0\r\n\r\n",
    "POST / HTTP/1.1\r\nHost: a.example\r\nContent-Length: 12\r\nX-Last: 1\r\n\r\n",
    // Lines not as the codec writes them: no space, trailing spaces, an empty value.
    "GET / HTTP/1.1\r\nHost:a.example\r\nX-Sp: v  \r\nX-Empty: \r\nX-Last:  1\r\n\r\n",
    "DELETE /x HTTP/1.1\r\nHost: a.example\r\nContent-Type: application/grpc\r\n\r\n",
    // Heads that take the map at once: a name twice, a Connection naming a field, an
    // x-envoy- name, an upgrade.
    "GET / HTTP/1.1\r\nHost: a.example\r\nCookie: a=1\r\nX-A: 1\r\nCookie: b=2\r\n\r\n",
    "GET / HTTP/1.1\r\nHost: a.example\r\nConnection: close, x-hop\r\nX-Hop: 1\r\n\r\n",
    "GET / HTTP/1.1\r\nHost: a.example\r\nX-Envoy-Retry-On: 5xx\r\n\r\n",
    "GET /ws HTTP/1.1\r\nHost: a.example\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
];

/// Heads `HEADS` lists after the plain ones, which the codec keeps as a map.
const MAP_HEADS: usize = 4;

fn as_text(head: &str) -> Vec<u8> {
    // `\xe9` above is a char; the head carries the byte.
    head.chars()
        .map(|c| u8::try_from(u32::from(c)).expect("byte"))
        .collect()
}

fn written(head: &mut UpstreamHead) -> Vec<u8> {
    let body = Empty::new().map_err(|never| match never {}).boxed();
    match head.outgoing(UpstreamProtocol::Http1, Http1Client::Own, body, false) {
        Ok(Outgoing::Http1(outbound)) => outbound.head().to_vec(),
        _ => panic!("not the codec's head"),
    }
}

fn request_map(head: &mut UpstreamHead) -> Vec<(String, Vec<u8>)> {
    let body = Empty::new().map_err(|never| match never {}).boxed();
    let request: Request<_> = head
        .request(UpstreamProtocol::Http1, body, false)
        .expect("request");
    request
        .headers()
        .iter()
        .map(|(name, value)| (name.to_string(), value.as_bytes().to_vec()))
        .collect()
}

#[test]
fn kept_fields_write_what_the_map_wrote() {
    let request_id = new_request_id();
    let settings = [
        Setting {
            client_cert: None,
            rewritten_authority: None,
        },
        Setting {
            client_cert: Some("Hash=abc;Subject=\"CN=client\""),
            rewritten_authority: None,
        },
        Setting {
            client_cert: None,
            rewritten_authority: Some("rewritten.example"),
        },
    ];
    for (index, text) in HEADS.iter().enumerate() {
        let bytes = as_text(text);
        let parsed = head::parse(&bytes).expect("admitted").expect("whole");
        assert_eq!(
            parsed.facts.fields.is_some(),
            index < HEADS.len() - MAP_HEADS,
            "{text:?}: kept as fields"
        );
        for &setting in &settings {
            // The codec's head now: fields when it kept them.
            let parsed = head::parse(&bytes).expect("admitted").expect("whole");
            let (parts, ()) = parsed.request.into_parts();
            let mut kept =
                plain_route_head(parts, parsed.facts.fields, setting, &request_id).expect("a head");
            // The map the codec made before, from the same bytes.
            let mut parts = head::parse(&bytes)
                .expect("admitted")
                .expect("whole")
                .request
                .into_parts()
                .0;
            parts.headers = map_as_before(&bytes);
            let mut mapped = plain_route_head(parts, None, setting, &request_id).expect("a head");
            let (kept_bytes, mapped_bytes) = (written(&mut kept), written(&mut mapped));
            assert_eq!(
                String::from_utf8_lossy(&kept_bytes),
                String::from_utf8_lossy(&mapped_bytes),
                "{text:?}"
            );
            assert_eq!(kept_bytes, mapped_bytes, "{text:?}");
            assert_eq!(kept.authority, mapped.authority, "{text:?}");
            // Other clients (and mirrors) get the map: the same, entry by entry.
            assert_eq!(request_map(&mut kept), request_map(&mut mapped), "{text:?}");
        }
    }
}

#[test]
fn kept_fields_make_the_map_the_codec_made() {
    for text in &HEADS[..HEADS.len() - MAP_HEADS] {
        let bytes = as_text(text);
        let mut parsed = head::parse(&bytes).expect("admitted").expect("whole");
        let map = whole(parsed.request.headers_mut(), &mut parsed.facts.fields);
        let entries = |map: &HeaderMap| {
            map.iter()
                .map(|(name, value)| (name.clone(), value.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(entries(map), entries(&map_as_before(&bytes)), "{text:?}");
    }
}

#[test]
fn lines_as_the_codec_writes_them_are_copied_whole() {
    let lines = |text: &str| {
        let bytes = as_text(text);
        let parsed = head::parse(&bytes).expect("admitted").expect("whole");
        parsed
            .facts
            .fields
            .and_then(|fields| fields.lines().map(<[u8]>::to_vec))
    };
    assert_eq!(
        lines(HEADS[1]).as_deref(),
        Some(&b"host: a.example\r\nuser-agent: curl/8.5.0\r\naccept: */*\r\n"[..])
    );
    assert_eq!(lines("GET / HTTP/1.1\r\nHost:a.example\r\n\r\n"), None);
    assert_eq!(lines("GET / HTTP/1.1\r\nHost: a\r\nX-Sp: v \r\n\r\n"), None);
}

#[test]
fn look_ups_read_the_kept_fields() {
    let bytes = as_text(HEADS[1]);
    let parsed = head::parse(&bytes).expect("admitted").expect("whole");
    let fields = parsed.facts.fields.as_deref();
    let map = parsed.request.headers();
    assert!(map.is_empty(), "the map is made only when asked for");
    assert_eq!(
        get_value(map, fields, &http::header::USER_AGENT),
        Some(HeaderValue::from_static("curl/8.5.0"))
    );
    assert_eq!(get_value(map, fields, &http::header::COOKIE), None);
    assert_eq!(
        parsed.facts.host,
        Some(HeaderValue::from_static("a.example"))
    );
}
