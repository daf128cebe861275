//! A request head: found in the connection's buffer, checked against `rules.rs`, parsed
//! by httparse, and turned into the `http::Request` parts the handler takes.

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Uri, Version};

use crate::proxy::head_facts::{HeadFacts, Upgrade};

use super::request_fields::{Field, Kind, RequestFields, name_bit};

use super::rules::{HeadError, MAX_HEAD_BYTES, MAX_HEADERS, MAX_REQUEST_LINE_BYTES};

/// How the body after a head is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum BodyFraming {
    None,
    Length(u64),
    Chunked,
}

/// A parsed head and what the connection must know about it.
#[derive(Debug)]
pub(super) struct Head {
    pub request: Request<()>,
    pub framing: BodyFraming,
    /// Bytes of the buffer the head took (empty lines before it included).
    pub len: usize,
    /// The connection may carry another request after this one.
    pub keep_alive: bool,
    /// `Expect: 100-continue` on an HTTP/1.1 request with a body.
    pub expect_continue: bool,
    /// `Upgrade` on HTTP/1.1, or CONNECT: a 101 (2xx) hands the connection over.
    pub upgrade: bool,
    /// What the fields say that the handler asks about (read in the same pass).
    pub facts: HeadFacts,
}

/// The head at the start of `buf`: None while it is incomplete (and within the limits).
///
/// Boxed here, where it is made: the connection hands it on boxed, and a head returned
/// by value was copied once more into its box.
pub(super) fn parse(buf: &[u8]) -> Result<Option<Box<Head>>, HeadError> {
    // Empty lines before a request line are ignored (RFC 9112 §2.2).
    let mut skipped = 0;
    while buf[skipped..].starts_with(b"\r\n") {
        skipped += 2;
    }
    let rest = &buf[skipped..];
    let Some(end) = head_end(rest)? else {
        return Ok(None);
    };
    // Uninitialized: httparse writes the fields it finds, and zeroing all
    // `MAX_HEADERS` (3.2 KB) first cost more than parsing a small head.
    let mut fields = [const { std::mem::MaybeUninit::<httparse::Header>::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut []);
    match parsed.parse_with_uninit_headers(&rest[..end], &mut fields) {
        Ok(httparse::Status::Complete(n)) if n == end => {}
        Ok(_) => return Err(HeadError::Malformed(httparse::Error::Token)),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooManyHeaders),
        Err(e) => return Err(HeadError::Malformed(e)),
    }
    let version = match parsed.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let method = Method::from_bytes(parsed.method.unwrap_or_default().as_bytes())
        .map_err(|_| HeadError::Invalid)?;
    let head = &rest[..end];
    // Where each field is in the head, and what its name says, in one pass.
    let mut framing = Framing::default();
    let mut facts = HeadFacts::default();
    let mut spans = Vec::with_capacity(parsed.headers.len() + 2);
    let mut host = None;
    // A name twice makes the map (which groups a name's values); `seen` is a filter on
    // (length, first and last byte) that lets most heads skip comparing names.
    let mut seen = 0u64;
    let mut passable = true;
    let mut edited = false;
    // One copy of the head, which the target and every field point into, names
    // lowercased in it: no allocation per header (a slice of the connection's buffer
    // would keep the whole buffer alive and shared, see `buffer.rs`).
    let copy = shared_copy_with(head, |copy| -> Result<(), HeadError> {
        for field in parsed.headers.iter() {
            let name = offsets(head, field.name.as_bytes()).ok_or(HeadError::Invalid)?;
            let value = offsets(head, field.value).ok_or(HeadError::Invalid)?;
            copy.get_mut(name.0..name.1)
                .ok_or(HeadError::Invalid)?
                .make_ascii_lowercase();
            let view: &[u8] = copy;
            let lower = view.get(name.0..name.1).unwrap_or_default();
            let kind = Kind::of(lower);
            framing.observe(kind, field.value)?;
            facts.observe(kind, field.value);
            if kind == Kind::Host && host.is_none() {
                host = Some(value);
            }
            edited |= kind.edited();
            passable &= !matches!(kind, Kind::Upgrade | Kind::EnvoyPrefixed);
            if passable {
                let bit = name_bit(lower);
                if seen & bit != 0 {
                    passable = !spans.iter().any(|field: &Field| {
                        field
                            .name_at()
                            .and_then(|(start, end)| view.get(start..end))
                            == Some(lower)
                    });
                }
                seen |= bit;
            }
            spans.push(Field::at(name, value));
        }
        Ok(())
    })?;
    let shared = |part: &[u8]| shared_part(&copy, head, part).ok_or(HeadError::Invalid);
    let target = shared(parsed.path.unwrap_or_default().as_bytes())?;
    let uri = Uri::from_maybe_shared(target).map_err(|_| HeadError::Invalid)?;
    facts.host = match host {
        Some((start, end)) => Some(
            HeaderValue::from_maybe_shared(copy.slice(start..end))
                .map_err(|_| HeadError::Invalid)?,
        ),
        None => None,
    };
    let passable = passable && !framing.names_others && method != Method::CONNECT;
    // `seen` has every name's bit when the fields are kept (`passable`): their look-ups'
    // filter.
    let fields = RequestFields::new(copy, spans, edited, seen);
    // Passed fields leave the request's own (empty) map as `Request::new` makes it.
    let mut headers = None;
    if passable {
        // Boxed: the facts move with the request through the handler's futures.
        facts.fields = Some(Box::new(fields));
    } else {
        headers = Some(fields.into_map_checked().ok_or(HeadError::Invalid)?);
    }
    let body = framing.body()?;
    let keep_alive = match version {
        Version::HTTP_10 => framing.keep_alive_token,
        _ => !framing.close_token,
    };
    let upgrade = method == Method::CONNECT
        || (version == Version::HTTP_11 && facts.upgrade != Upgrade::None);
    let expect_continue =
        version == Version::HTTP_11 && framing.expect_continue && body != BodyFraming::None;

    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = version;
    if let Some(headers) = headers {
        *request.headers_mut() = headers;
    }
    Ok(Some(Box::new(Head {
        request,
        framing: body,
        len: skipped + end,
        keep_alive,
        expect_continue,
        upgrade,
        facts,
    })))
}

/// A reference-counted copy of a head, for its values to be slices of: one allocation.
/// (`Bytes::copy_from_slice` makes a `Bytes` from a `Vec`, which allocates again, for its
/// count, when it is first sliced.) Heads up to 1 KiB (nearly all) are copied into an
/// array owned by the `Bytes`; larger ones as before.
pub(super) fn shared_copy(head: &[u8]) -> Bytes {
    shared_copy_with(head, |_| Ok::<(), std::convert::Infallible>(())).unwrap_or_default()
}

/// `shared_copy`, with `edit` run on the copy before it is shared.
fn shared_copy_with<E>(
    head: &[u8],
    edit: impl FnOnce(&mut [u8]) -> Result<(), E>,
) -> Result<Bytes, E> {
    fn inline<const N: usize, E>(
        head: &[u8],
        edit: impl FnOnce(&mut [u8]) -> Result<(), E>,
    ) -> Result<Bytes, E> {
        let mut owner = [0u8; N];
        owner[..head.len()].copy_from_slice(head);
        edit(&mut owner[..head.len()])?;
        Ok(Bytes::from_owner(owner).slice(..head.len()))
    }
    match head.len() {
        0..=256 => inline::<256, E>(head, edit),
        257..=1024 => inline::<1024, E>(head, edit),
        _ => {
            let mut owned = head.to_vec();
            edit(&mut owned)?;
            Ok(Bytes::from(owned))
        }
    }
}

/// Where `part` (a slice of `parsed`) is in `parsed`, as offsets.
fn offsets(parsed: &[u8], part: &[u8]) -> Option<(usize, usize)> {
    if part.is_empty() {
        return Some((0, 0));
    }
    let start = (part.as_ptr() as usize).checked_sub(parsed.as_ptr() as usize)?;
    let end = start.checked_add(part.len())?;
    (end <= parsed.len()).then_some((start, end))
}

/// `part` of `parsed` (a slice httparse returned) as the same bytes of `copy`, a copy of
/// `parsed`: a reference-counted slice, no allocation. None if `part` is not inside
/// `parsed` (it always is).
pub(super) fn shared_part(copy: &Bytes, parsed: &[u8], part: &[u8]) -> Option<Bytes> {
    if part.is_empty() {
        return Some(Bytes::new());
    }
    let offset = (part.as_ptr() as usize).checked_sub(parsed.as_ptr() as usize)?;
    let end = offset.checked_add(part.len())?;
    (end <= copy.len() && end <= parsed.len()).then(|| copy.slice(offset..end))
}

/// Where the head ends (after its empty line), refusing bare LFs and heads or request
/// lines over their limits as soon as the bytes show them.
fn head_end(rest: &[u8]) -> Result<Option<usize>, HeadError> {
    let mut request_line_ended = false;
    // memchr finds the few LFs a word at a time (a byte-by-byte scan was the head's
    // largest cost after httparse).
    for index in memchr::memchr_iter(b'\n', rest) {
        if index == 0 || rest[index - 1] != b'\r' {
            return Err(HeadError::BareLf);
        }
        if !request_line_ended {
            request_line_ended = true;
            if index + 1 > MAX_REQUEST_LINE_BYTES {
                return Err(HeadError::RequestLineTooLong);
            }
        }
        if index >= 3 && &rest[index - 3..=index] == b"\r\n\r\n" {
            let end = index + 1;
            if end > MAX_HEAD_BYTES {
                return Err(HeadError::HeadTooLarge);
            }
            return Ok(Some(end));
        }
    }
    if !request_line_ended && rest.len() > MAX_REQUEST_LINE_BYTES {
        return Err(HeadError::RequestLineTooLong);
    }
    if rest.len() >= MAX_HEAD_BYTES {
        return Err(HeadError::HeadTooLarge);
    }
    Ok(None)
}

/// What the framing and connection headers of a head say.
#[derive(Debug, Default)]
struct Framing {
    content_lengths: usize,
    content_length: u64,
    transfer_encoding: bool,
    /// The last transfer coding seen is `chunked`.
    chunked_last: bool,
    close_token: bool,
    keep_alive_token: bool,
    expect_continue: bool,
    /// The Connection header names a field (a token other than close, keep-alive and
    /// upgrade): its fields are stripped by the map (`upstream_head::strip_hop_by_hop`).
    names_others: bool,
}

impl Framing {
    fn observe(&mut self, kind: Kind, value: &[u8]) -> Result<(), HeadError> {
        match kind {
            Kind::ContentLength => {
                self.content_lengths += 1;
                self.content_length = content_length(value)?;
            }
            Kind::TransferEncoding => {
                self.transfer_encoding = true;
                self.chunked_last = value
                    .rsplit(|&b| b == b',')
                    .next()
                    .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            }
            // The usual values whole first: no token split (~100 instructions a
            // `Connection: close` request spent here).
            Kind::Connection if value.eq_ignore_ascii_case(b"close") => self.close_token = true,
            Kind::Connection if value.eq_ignore_ascii_case(b"keep-alive") => {
                self.keep_alive_token = true;
            }
            Kind::Connection => {
                for token in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                    let close = token.eq_ignore_ascii_case(b"close");
                    let keep_alive = token.eq_ignore_ascii_case(b"keep-alive");
                    self.close_token |= close;
                    self.keep_alive_token |= keep_alive;
                    self.names_others |= !(token.is_empty()
                        || close
                        || keep_alive
                        || token.eq_ignore_ascii_case(b"upgrade"));
                }
            }
            Kind::Expect => {
                self.expect_continue = value.trim_ascii().eq_ignore_ascii_case(b"100-continue");
            }
            _ => {}
        }
        Ok(())
    }

    fn body(&self) -> Result<BodyFraming, HeadError> {
        if self.content_lengths > 1 {
            return Err(HeadError::DuplicateContentLength);
        }
        if self.transfer_encoding {
            if self.content_lengths > 0 {
                return Err(HeadError::LengthBesideEncoding);
            }
            if !self.chunked_last {
                return Err(HeadError::UnframedEncoding);
            }
            return Ok(BodyFraming::Chunked);
        }
        Ok(match (self.content_lengths, self.content_length) {
            (0, _) | (_, 0) => BodyFraming::None,
            (_, length) => BodyFraming::Length(length),
        })
    }
}

/// Digits only (no sign, no list, no spaces inside): at most 18, so no overflow.
fn content_length(value: &[u8]) -> Result<u64, HeadError> {
    let value = value.trim_ascii();
    if value.is_empty() || value.len() > 18 || !value.iter().all(u8::is_ascii_digit) {
        return Err(HeadError::InvalidContentLength);
    }
    Ok(value.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

#[cfg(test)]
mod tests;
