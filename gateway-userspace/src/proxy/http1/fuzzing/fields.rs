//! The kept-fields paths against the map they stand for, for the fuzz targets: a request
//! head kept as its fields (`request_fields.rs`) must reach the upstream as the bytes the
//! map it was parsed into before would have written, and an upstream's response head
//! passed as it came (`passed.rs`) must reach the client as its map's bytes. The same
//! properties as `request_fields::tests` and `passed::tests`, on any bytes.

use std::{
    pin::pin,
    task::{Context, Poll, Waker},
};

use bytes::Bytes;
use http::{HeaderMap, Method, Response, Version};
use http_body_util::{BodyExt, Empty, Full};

use super::super::{
    Http1Client,
    client::{HeadFields, parse_response},
    head, passed,
    response::{Answering, write},
};
use super::reference::{
    Setting, edit_map, edit_passed, listed, plain_route_head, request_map, response_map,
};
use crate::{
    proxy::{
        upstream::Outgoing,
        upstream_head::{UpstreamHead, new_request_id},
    },
    snapshot::UpstreamProtocol,
};

/// What one head became both ways: kept (or passed) first, then through the map.
#[derive(Debug, PartialEq, Eq)]
pub struct Both<T> {
    pub kept: T,
    pub mapped: T,
}

/// The upstream's view of a request whose head the codec kept as its fields.
#[derive(Debug, PartialEq, Eq)]
pub struct Upstream {
    /// The head the codec's client writes.
    pub written: Vec<u8>,
    /// The Host (HTTP/2's `:authority`).
    pub authority: Vec<u8>,
    /// The map other clients (and mirrors) get, entry by entry.
    pub entries: Vec<(String, Vec<u8>)>,
}

/// The first request head in `input`, when the codec keeps it as its fields, forwarded
/// both ways under `setting` (bit 0: a client certificate; bit 1: a rewritten
/// authority). `Err` names a field of a kept head that the map's types refuse (the map
/// would drop it, where a head made into a map at once is refused).
pub fn kept_request(input: &[u8], setting: u8) -> Result<Option<Both<Upstream>>, String> {
    let Ok(Some(parsed)) = head::parse(input) else {
        return Ok(None);
    };
    if parsed.facts.fields.is_none() {
        return Ok(None);
    }
    let mapped_headers = match request_map(&input[..parsed.len]) {
        Some(Ok(map)) => map,
        Some(Err(field)) => return Err(field),
        None => return Ok(None),
    };
    let (parts, ()) = parsed.request.into_parts();
    // The same head again, for its method and target (`Parts` is not `Clone`).
    let Ok(Some(again)) = head::parse(input) else {
        return Ok(None);
    };
    let (mut mapped_parts, ()) = again.request.into_parts();
    mapped_parts.headers = mapped_headers;
    let request_id = new_request_id();
    let setting = Setting {
        client_cert: (setting & 1 != 0).then_some("Hash=abc;Subject=\"CN=client\""),
        rewritten_authority: (setting & 2 != 0).then_some("rewritten.example"),
    };
    let forwarded = |parts, fields| plain_route_head(parts, fields, setting, &request_id);
    let (Some(mut kept), Some(mut mapped)) = (
        forwarded(parts, parsed.facts.fields),
        forwarded(mapped_parts, None),
    ) else {
        return Ok(None);
    };
    Ok(Some(Both {
        kept: upstream(&mut kept),
        mapped: upstream(&mut mapped),
    }))
}

fn upstream(head: &mut UpstreamHead) -> Upstream {
    let body = || Empty::new().map_err(|never| match never {}).boxed();
    let written = match head.outgoing(UpstreamProtocol::Http1, Http1Client::Own, body(), false) {
        Ok(Outgoing::Http1(outbound)) => outbound.head().to_vec(),
        _ => Vec::new(),
    };
    let entries = match head.request(UpstreamProtocol::Http1, body(), false) {
        Ok(request) => listed(request.headers()),
        Err(_) => Vec::new(),
    };
    Upstream {
        written,
        authority: head.authority.as_bytes().to_vec(),
        entries,
    }
}

/// The client's view of a response whose head the codec's client passed as it came.
#[derive(Debug, PartialEq, Eq)]
pub struct Answer {
    /// The head (and body `ok`) written to a GET/1.1, a HEAD/1.1 and a GET/1.0 request,
    /// with how each ended.
    pub written: Vec<(Vec<u8>, String)>,
    /// The map other servers (HTTP/2) get, entry by entry.
    pub entries: Vec<(String, Vec<u8>)>,
}

/// The response head at the start of `input`, when the client passes its fields as they
/// came, edited as every forwarded answer is and written both ways. `Err` names a passed
/// field the map's types refuse.
pub fn passed_response(input: &[u8]) -> Result<Option<Both<Answer>>, String> {
    let Ok(Some(parsed)) = parse_response(input, false) else {
        return Ok(None);
    };
    let status = parsed.status;
    let HeadFields::Passed(passed) = parsed.headers else {
        return Ok(None);
    };
    let mut map = match response_map(&input[..parsed.len]) {
        Some(Ok(map)) => map,
        Some(Err(field)) => return Err(field),
        None => return Ok(None),
    };
    edit_map(&mut map);
    let mut own = HeaderMap::new();
    let mut passed = Some(passed);
    edit_passed(&mut passed::ResponseFields {
        map: &mut own,
        passed: &mut passed,
    });
    let answer = |headers: &HeaderMap, passed: Option<&passed::PassedFields>| {
        let mut written = Vec::new();
        for (method, version) in [
            (Method::GET, Version::HTTP_11),
            (Method::HEAD, Version::HTTP_11),
            (Method::GET, Version::HTTP_10),
        ] {
            let mut response = Response::new(Full::new(Bytes::from_static(b"ok")));
            *response.status_mut() = status;
            *response.headers_mut() = headers.clone();
            let answering = Answering {
                method: &method,
                version,
                keep_alive: true,
            };
            let mut out = Vec::new();
            let end = at_once(write(&mut out, response, passed, answering));
            written.push((out, format!("{end:?}")));
        }
        written
    };
    let kept_written = answer(&own, passed.as_deref());
    let mapped_written = answer(&map, None);
    let kept_entries = listed(passed::whole(&mut own, &mut passed));
    Ok(Some(Both {
        kept: Answer {
            written: kept_written,
            entries: kept_entries,
        },
        mapped: Answer {
            written: mapped_written,
            entries: listed(&map),
        },
    }))
}

/// A future that never waits (writes into a `Vec`, a body that is whole) run to its end.
fn at_once<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
    }
}

/// `passed::Kind::of` against the names compared byte by byte, ignoring case.
pub fn response_kind_is_the_names(name: &[u8]) -> bool {
    use passed::Kind;
    let named = |lower: &str| name.eq_ignore_ascii_case(lower.as_bytes());
    let reference = [
        ("te", Kind::HopByHop(4)),
        ("date", Kind::Date),
        ("server", Kind::Server),
        ("trailer", Kind::HopByHop(5)),
        ("upgrade", Kind::Upgrade),
        ("connection", Kind::HopByHop(passed::CONNECTION)),
        ("keep-alive", Kind::HopByHop(passed::KEEP_ALIVE)),
        ("content-length", Kind::ContentLength),
        ("proxy-connection", Kind::HopByHop(2)),
        (
            "transfer-encoding",
            Kind::HopByHop(passed::TRANSFER_ENCODING),
        ),
        ("proxy-authenticate", Kind::HopByHop(3)),
        ("x-envoy-upstream-service-time", Kind::ServiceTime),
    ]
    .into_iter()
    .find(|(lower, _)| named(lower))
    .map_or(Kind::Other, |(_, kind)| kind);
    Kind::of(name) == reference
}
