//! gRPC as the gateway's own answers need it: telling a gRPC request, and the HTTP to
//! gRPC status mapping and message encoding of Envoy's local replies (`local_reply.rs`).

use http::{HeaderMap, HeaderName, StatusCode, header};

pub(super) const CONTENT_TYPE: &str = "application/grpc";
pub(super) const STATUS: HeaderName = HeaderName::from_static("grpc-status");
pub(super) const MESSAGE: HeaderName = HeaderName::from_static("grpc-message");

/// gRPC status codes (grpc/doc/statuscodes.md) that the HTTP mapping produces.
pub(super) mod code {
    pub(crate) const UNKNOWN: u16 = 2;
    pub(crate) const PERMISSION_DENIED: u16 = 7;
    pub(crate) const UNIMPLEMENTED: u16 = 12;
    pub(crate) const INTERNAL: u16 = 13;
    pub(crate) const UNAVAILABLE: u16 = 14;
    pub(crate) const UNAUTHENTICATED: u16 = 16;
}

/// A gRPC request, as Envoy tells it: `content-type` exactly `application/grpc` or
/// `application/grpc+FORMAT` (`application/grpc-web` is another protocol).
pub(super) fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| is_grpc_content_type(v.as_bytes()))
}

/// A `content-type` value that says gRPC.
pub(super) fn is_grpc_content_type(value: &[u8]) -> bool {
    value
        .strip_prefix(CONTENT_TYPE.as_bytes())
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(b"+"))
}

/// Envoy's `Grpc::Utility::httpToGrpcStatus` (after gRPC's http-grpc-status-mapping.md).
pub(super) fn status_from_http(status: StatusCode) -> u16 {
    match status.as_u16() {
        400 => code::INTERNAL,
        401 => code::UNAUTHENTICATED,
        403 => code::PERMISSION_DENIED,
        404 => code::UNIMPLEMENTED,
        429 | 502 | 503 | 504 => code::UNAVAILABLE,
        _ => code::UNKNOWN,
    }
}

/// `grpc-message` encoding (gRPC's PROTOCOL-HTTP2.md): bytes outside printable ASCII, and
/// `%` itself, become `%XX`.
pub(super) fn percent_encode(message: &str) -> String {
    let mut encoded = String::with_capacity(message.len());
    for &byte in message.as_bytes() {
        if (0x20..=0x7e).contains(&byte) && byte != b'%' {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn content_type(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_str(value).expect("valid"),
        );
        headers
    }

    #[test]
    fn grpc_is_told_by_content_type_as_envoy_does() {
        assert!(is_grpc(&content_type("application/grpc")));
        assert!(is_grpc(&content_type("application/grpc+proto")));
        assert!(!is_grpc(&content_type("application/grpc-web")));
        assert!(!is_grpc(&content_type("application/json")));
        assert!(!is_grpc(&HeaderMap::new()));
    }

    #[test]
    fn http_statuses_map_as_in_envoy() {
        let mapped = |s: u16| status_from_http(StatusCode::from_u16(s).expect("valid"));
        assert_eq!(mapped(400), code::INTERNAL);
        assert_eq!(mapped(401), code::UNAUTHENTICATED);
        assert_eq!(mapped(403), code::PERMISSION_DENIED);
        assert_eq!(mapped(404), code::UNIMPLEMENTED);
        for unavailable in [429, 502, 503, 504] {
            assert_eq!(mapped(unavailable), code::UNAVAILABLE, "{unavailable}");
        }
        for unknown in [200, 301, 418, 421, 431, 500, 501] {
            assert_eq!(mapped(unknown), code::UNKNOWN, "{unknown}");
        }
    }

    #[test]
    fn messages_are_percent_encoded_as_grpc_requires() {
        assert_eq!(percent_encode("no healthy upstream"), "no healthy upstream");
        assert_eq!(percent_encode("100% done\n"), "100%25 done%0A");
        assert_eq!(percent_encode("café"), "caf%C3%A9");
    }
}
