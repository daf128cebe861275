//! gRPC requests the gateway answers itself (no route, no healthy upstream, route timeout,
//! fault abort, …) get what Envoy sends them: HTTP 200 with a trailers-only response,
//! `content-type: application/grpc`, `grpc-status` mapped from the HTTP status the answer
//! would have had, and the local body text as a percent-encoded `grpc-message`. A gRPC
//! client reads nothing from an HTTP error status, so this is what lets it see
//! UNIMPLEMENTED or UNAVAILABLE instead of a bare protocol error. Answers that came from
//! an upstream are never touched.

use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, Empty};

use super::body::ProxyBody;

const GRPC_CONTENT_TYPE: &str = "application/grpc";
const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");

/// gRPC status codes (grpc/doc/statuscodes.md) that the HTTP mapping produces.
pub(super) mod code {
    pub(crate) const UNKNOWN: u16 = 2;
    pub(crate) const PERMISSION_DENIED: u16 = 7;
    pub(crate) const UNIMPLEMENTED: u16 = 12;
    pub(crate) const INTERNAL: u16 = 13;
    pub(crate) const UNAVAILABLE: u16 = 14;
    pub(crate) const UNAUTHENTICATED: u16 = 16;
}

/// Put on every response the gateway produces itself (as an HTTP response extension), so
/// that the gRPC conversion can tell it from an upstream's answer. `grpc_status`
/// overrides the status mapped from HTTP (a fault abort with `grpcStatus`).
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct LocalReply {
    pub grpc_status: Option<u16>,
}

/// A gRPC request, as Envoy tells it: `content-type` exactly `application/grpc` or
/// `application/grpc+FORMAT` (`application/grpc-web` is another protocol).
pub(super) fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.as_bytes().strip_prefix(GRPC_CONTENT_TYPE.as_bytes()))
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

/// Marks a local response, with the gRPC status a fault abort names (if any).
pub(super) fn mark_local(
    mut response: Response<ProxyBody>,
    grpc_status: Option<u16>,
) -> Response<ProxyBody> {
    response.extensions_mut().insert(LocalReply { grpc_status });
    response
}

/// For a gRPC request: the gateway's own answer as a trailers-only gRPC response (the
/// headers a route or fault added stay, as Envoy keeps them). Anything else, an
/// upstream's answer in particular, is returned as it is.
pub(super) async fn local_reply(
    request_is_grpc: bool,
    response: Response<ProxyBody>,
) -> Response<ProxyBody> {
    let Some(local) = request_is_grpc
        .then(|| response.extensions().get::<LocalReply>().copied())
        .flatten()
    else {
        return response;
    };
    let (mut parts, body) = response.into_parts();
    // Local bodies are in memory (a static text or a direct response's body).
    let text = body
        .collect()
        .await
        .map(|collected| collected.to_bytes())
        .unwrap_or_default();
    let grpc_status = local
        .grpc_status
        .unwrap_or_else(|| status_from_http(parts.status));
    parts.status = StatusCode::OK;
    let headers = &mut parts.headers;
    headers.remove(header::CONTENT_LENGTH);
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(GRPC_CONTENT_TYPE),
    );
    // A grpc-status that the route's response headers set is kept, as in Envoy.
    if !headers.contains_key(&GRPC_STATUS) {
        headers.insert(GRPC_STATUS, HeaderValue::from(grpc_status));
    }
    if let Ok(message) = HeaderValue::from_str(&percent_encode(&String::from_utf8_lossy(&text)))
        && !message.is_empty()
    {
        headers.insert(GRPC_MESSAGE, message);
    }
    // No body: the headers frame ends the stream and carries the status (trailers-only).
    let empty = Empty::new().map_err(|never| match never {}).boxed();
    Response::from_parts(parts, empty)
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use http_body_util::Full;

    use super::*;

    fn content_type(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_str(value).expect("valid"),
        );
        headers
    }

    fn response(status: StatusCode, body: &'static str) -> Response<ProxyBody> {
        let mut response = Response::new(
            Full::new(Bytes::from_static(body.as_bytes()))
                .map_err(|never| match never {})
                .boxed(),
        );
        *response.status_mut() = status;
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        response
            .headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        response
    }

    fn header<'a>(response: &'a Response<ProxyBody>, name: &str) -> Option<&'a str> {
        response.headers().get(name).and_then(|v| v.to_str().ok())
    }

    async fn body_len(response: Response<ProxyBody>) -> usize {
        let collected = response.into_body().collect().await.expect("in memory");
        collected.to_bytes().len()
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

    #[tokio::test]
    async fn a_local_answer_to_grpc_becomes_trailers_only() {
        let local = mark_local(
            response(StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream"),
            None,
        );
        let converted = local_reply(true, local).await;
        assert_eq!(converted.status(), StatusCode::OK);
        assert_eq!(header(&converted, "content-type"), Some("application/grpc"));
        assert_eq!(header(&converted, "grpc-status"), Some("14"));
        assert_eq!(
            header(&converted, "grpc-message"),
            Some("no healthy upstream")
        );
        assert_eq!(header(&converted, "content-length"), None);
        assert_eq!(body_len(converted).await, 0);
    }

    #[tokio::test]
    async fn an_empty_local_body_sends_no_message_and_an_override_wins() {
        let local = mark_local(response(StatusCode::NOT_FOUND, ""), None);
        let converted = local_reply(true, local).await;
        assert_eq!(header(&converted, "grpc-status"), Some("12"));
        assert_eq!(header(&converted, "grpc-message"), None);

        let aborted = mark_local(response(StatusCode::OK, "fault filter abort"), Some(8));
        let converted = local_reply(true, aborted).await;
        assert_eq!(header(&converted, "grpc-status"), Some("8"));
        assert_eq!(
            header(&converted, "grpc-message"),
            Some("fault filter abort")
        );
    }

    #[tokio::test]
    async fn upstream_answers_and_plain_http_requests_pass_unchanged() {
        // An upstream's 503 (no marker) stays what the upstream said.
        let upstream = local_reply(true, response(StatusCode::SERVICE_UNAVAILABLE, "busy")).await;
        assert_eq!(upstream.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(header(&upstream, "grpc-status"), None);
        assert_eq!(body_len(upstream).await, 4);
        // A local 404 to a request that is not gRPC stays Envoy's plain 404.
        let plain = local_reply(false, mark_local(response(StatusCode::NOT_FOUND, ""), None)).await;
        assert_eq!(plain.status(), StatusCode::NOT_FOUND);
        assert_eq!(header(&plain, "grpc-status"), None);
    }
}
