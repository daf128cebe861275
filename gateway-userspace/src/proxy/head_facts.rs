//! What a request's head says that the handler asks about more than once: its Host,
//! Upgrade, framing (Content-Length, Transfer-Encoding), whether it is gRPC, whether it
//! carries `x-envoy-*` names. The codec learns all of it in its one pass over the fields
//! (`http1::head`); requests hyper read (HTTP/2, `--http1-server hyper`) have it looked up
//! (`of`). Each hashed look-up it saves was one per request (issue 15).

use http::{HeaderMap, HeaderValue, StatusCode, header};

use super::{
    grpc,
    http1::{
        passed,
        request_fields::{Kind, RequestFields},
    },
};

/// The Upgrade header's first value, as the edge rules sort it (`edge_headers`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) enum Upgrade {
    #[default]
    None,
    WebSocket,
    /// `h2c`: dropped at the edge, served as a plain request.
    H2c,
    Other,
}

impl Upgrade {
    pub(super) fn of(value: &[u8]) -> Upgrade {
        let token = value.trim_ascii();
        if token.eq_ignore_ascii_case(b"websocket") {
            Upgrade::WebSocket
        } else if token.eq_ignore_ascii_case(b"h2c") {
            Upgrade::H2c
        } else {
            Upgrade::Other
        }
    }
}

#[derive(Clone, Debug, Default)]
pub(super) struct HeadFacts {
    /// The first Host header.
    pub host: Option<HeaderValue>,
    pub upgrade: Upgrade,
    /// `content-type` says gRPC (`grpc::is_grpc`).
    pub grpc: bool,
    pub content_lengths: u8,
    /// The first Content-Length, when it is a number.
    pub declared_length: Option<u64>,
    pub transfer_encodings: u8,
    /// The one Transfer-Encoding is exactly `chunked`.
    pub chunked_only: bool,
    /// Some name starts with `x-envoy-` (`edge_headers::admit` removes those).
    pub envoy_prefixed: bool,
    content_type_seen: bool,
    /// The head's fields as they came, when the codec kept them so
    /// (`http1::request_fields`): the request's map is empty until something needs it
    /// (`request_fields::whole`).
    pub fields: Option<Box<RequestFields>>,
}

impl HeadFacts {
    /// The facts of `headers`, looked up (for requests the codec did not read).
    pub(super) fn of(headers: &HeaderMap) -> HeadFacts {
        let transfer_encodings = headers.get_all(header::TRANSFER_ENCODING);
        let mut chunked_only = false;
        let mut count = 0u8;
        for value in transfer_encodings {
            count = count.saturating_add(1);
            chunked_only = count == 1 && value.as_bytes().eq_ignore_ascii_case(b"chunked");
        }
        HeadFacts {
            host: headers.get(header::HOST).cloned(),
            upgrade: headers
                .get(header::UPGRADE)
                .map_or(Upgrade::None, |v| Upgrade::of(v.as_bytes())),
            grpc: grpc::is_grpc(headers),
            content_lengths: headers
                .get_all(header::CONTENT_LENGTH)
                .iter()
                .count()
                .try_into()
                .unwrap_or(u8::MAX),
            declared_length: headers
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok()),
            transfer_encodings: count,
            chunked_only,
            envoy_prefixed: headers
                .keys()
                .any(|name| name.as_str().starts_with(ENVOY_PREFIX)),
            content_type_seen: false,
            fields: None,
        }
    }

    /// Notes one field, in the head's order (the codec's pass over the fields), but for
    /// Host (the codec keeps the first as a value of its copy of the head).
    pub(super) fn observe(&mut self, kind: Kind, value: &[u8]) {
        match kind {
            Kind::ContentLength => {
                if self.content_lengths == 0 {
                    // As `HeaderValue::to_str`, then `str::trim` and `parse`.
                    self.declared_length =
                        passed::as_text(value).and_then(|v| v.trim().parse::<u64>().ok());
                }
                self.content_lengths = self.content_lengths.saturating_add(1);
            }
            Kind::ContentType if !self.content_type_seen => {
                self.content_type_seen = true;
                self.grpc = grpc::is_grpc_content_type(value);
            }
            Kind::Upgrade if self.upgrade == Upgrade::None => {
                self.upgrade = Upgrade::of(value);
            }
            Kind::TransferEncoding => {
                self.transfer_encodings = self.transfer_encodings.saturating_add(1);
                self.chunked_only =
                    self.transfer_encodings == 1 && value.eq_ignore_ascii_case(b"chunked");
            }
            Kind::EnvoyPrefixed => self.envoy_prefixed = true,
            _ => {}
        }
    }

    /// Requests whose body length two parsers could read differently (RFC 9112 §6.1,
    /// §6.3): Content-Length beside Transfer-Encoding, Content-Length more than once, or
    /// a Transfer-Encoding other than `chunked` (501, which no proxy can frame). The
    /// codec refuses the first two itself; hyper's parser rejects conflicting
    /// Content-Length values, and lets these through.
    pub(super) fn framing_problem(&self) -> Option<StatusCode> {
        if self.content_lengths > 1 || (self.content_lengths > 0 && self.transfer_encodings > 0) {
            return Some(StatusCode::BAD_REQUEST);
        }
        match self.transfer_encodings {
            0 => None,
            1 if self.chunked_only => None,
            _ => Some(StatusCode::NOT_IMPLEMENTED),
        }
    }
}

/// What the names `edge_headers::admit` removes start with.
pub(super) const ENVOY_PREFIX: &str = "x-envoy-";
