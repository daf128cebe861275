//! The gateway's own answers (no route, no healthy upstream, timeouts, refused requests,
//! redirects, direct responses), built in one place: the status, Envoy's body text, the
//! response flags, whether the connection closes after it, and the gRPC form a gRPC
//! client gets instead.
//!
//! A gRPC request the gateway answers itself gets what Envoy sends: HTTP 200 with a
//! trailers-only response, `content-type: application/grpc`, `grpc-status` mapped from
//! the HTTP status the answer would have had, and the body text as a percent-encoded
//! `grpc-message`. A gRPC client reads nothing from an HTTP error status, so this is what
//! lets it see UNIMPLEMENTED or UNAVAILABLE instead of a bare protocol error. Answers
//! that came from an upstream are never touched.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, Empty, Full};

use super::{
    body::ProxyBody,
    flags::ResponseFlags,
    grpc,
    limits::BrokenBody,
    route_actions::{self, TryFailure},
    upstream_tls::TlsFailure,
};
use crate::snapshot::{CorsPolicy, DirectResponse, FaultAbort, Redirect};

/// Envoy's body for its 413 (the status's reason phrase).
const PAYLOAD_TOO_LARGE_BODY: &str = "Payload Too Large";
const NO_HEALTHY_UPSTREAM: &str = "no healthy upstream";
const UPSTREAM_TIMEOUT: &str = "upstream request timeout";

/// One answer of the gateway's own.
#[derive(Debug)]
pub(super) struct LocalReply {
    status: StatusCode,
    text: Bytes,
    pub flags: ResponseFlags,
    /// The reply's headers: its content type and, as the reply is built, a redirect's
    /// Location, a route's response header operations, CORS headers.
    headers: HeaderMap,
    /// Overrides the gRPC status mapped from `status` (a fault abort's `grpcStatus`).
    grpc_status: Option<u16>,
    /// Envoy's `%UPSTREAM_TRANSPORT_FAILURE_REASON%` (a failed upstream TLS handshake).
    pub transport_failure: Option<&'static str>,
}

impl LocalReply {
    /// An empty `text/plain` answer; Envoy's 404 has no content type.
    fn new(status: StatusCode, flags: ResponseFlags) -> Self {
        let mut headers = HeaderMap::new();
        if status != StatusCode::NOT_FOUND {
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        }
        LocalReply {
            status,
            text: Bytes::new(),
            flags,
            headers,
            grpc_status: None,
            transport_failure: None,
        }
    }

    /// The body: a short text (the `grpc-message` of a gRPC answer).
    fn text(mut self, text: impl Into<Bytes>) -> Self {
        self.text = text.into();
        self
    }

    /// Asks the client to close the connection after this answer: the request's framing
    /// is in doubt, or its body was left unread.
    pub(super) fn closing(mut self) -> Self {
        self.headers
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        self
    }

    /// No content type (an empty answer that is not text: a CORS preflight, a refused
    /// upgrade).
    fn untyped(mut self) -> Self {
        self.headers.remove(header::CONTENT_TYPE);
        self
    }

    /// No route matched: Envoy's 404, with an empty body.
    pub(super) fn no_route() -> Self {
        LocalReply::new(StatusCode::NOT_FOUND, ResponseFlags::NO_ROUTE)
    }

    /// A request whose framing two parsers could read differently (400, or 501 for a
    /// transfer coding no proxy can frame): nothing after it is read on the connection.
    pub(super) fn ambiguous_framing(status: StatusCode) -> Self {
        LocalReply::new(status, ResponseFlags::DOWNSTREAM_PROTOCOL_ERROR).closing()
    }

    /// A Host that another TLS server of the port serves (HTTP/2 coalescing across SNI).
    pub(super) fn misdirected() -> Self {
        LocalReply::new(StatusCode::MISDIRECTED_REQUEST, ResponseFlags::NONE)
            .text("misdirected request\n")
    }

    /// An upgrade other than WebSocket; the connection closes, as the client may already
    /// be speaking the other protocol.
    pub(super) fn refused_upgrade(status: StatusCode) -> Self {
        LocalReply::new(status, ResponseFlags::NONE)
            .untyped()
            .closing()
    }

    /// An AuthorizationPolicy denied the request: Envoy's RBAC filter's answer.
    pub(super) fn rbac_denied() -> Self {
        LocalReply::new(StatusCode::FORBIDDEN, ResponseFlags::RBAC_ACCESS_DENIED)
            .text("RBAC: access denied")
    }

    /// A route's redirect to `location`.
    pub(super) fn redirect(redirect: &Redirect, location: &str) -> Self {
        let status = StatusCode::from_u16(redirect.status).unwrap_or(StatusCode::MOVED_PERMANENTLY);
        let mut reply = LocalReply::new(status, ResponseFlags::NONE);
        if let Ok(location) = HeaderValue::from_str(location) {
            reply.headers.insert(header::LOCATION, location);
        }
        redirect.headers.response.apply(&mut reply.headers);
        reply
    }

    /// A route's direct response.
    pub(super) fn direct_response(direct: &DirectResponse) -> Self {
        let status = StatusCode::from_u16(direct.status).unwrap_or(StatusCode::OK);
        let mut reply = LocalReply::new(status, ResponseFlags::NONE).text(direct.body.clone());
        direct.headers.response.apply(&mut reply.headers);
        reply
    }

    /// A route action the gateway does not implement.
    pub(super) fn unsupported(what: &str) -> Self {
        LocalReply::new(StatusCode::NOT_IMPLEMENTED, ResponseFlags::NONE).text(format!(
            "route action `{what}` is not supported by this gateway yet\n"
        ))
    }

    /// The CORS headers `cors` gives a request from an allowed origin (none otherwise), as
    /// Envoy's CORS filter adds them to every answer, local ones included.
    pub(super) fn add_cors(&mut self, cors: Option<&CorsPolicy>, request: &http::HeaderMap) {
        if let Some(cors) = cors
            && let Some(origin) = route_actions::allowed_origin(cors, request)
        {
            route_actions::cors_response_headers(cors, origin, &mut self.headers);
        }
    }

    /// The answer to a CORS preflight (`origin`: the allowed origin, None when the
    /// policy does not allow it and unmatched preflights are answered here).
    pub(super) fn preflight(
        cors: &CorsPolicy,
        origin: Option<&HeaderValue>,
        request: &http::HeaderMap,
    ) -> Self {
        let mut reply = LocalReply::new(StatusCode::OK, ResponseFlags::NONE).untyped();
        route_actions::preflight_headers(cors, origin, request, &mut reply.headers);
        reply
    }

    /// A fault injection's abort (`delayed`: a delay was injected first).
    pub(super) fn fault_abort(abort: &FaultAbort, delayed: bool) -> Self {
        let status = StatusCode::from_u16(abort.status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        let flags = if delayed {
            ResponseFlags::DELAY_INJECTED.with(ResponseFlags::FAULT_INJECTED)
        } else {
            ResponseFlags::FAULT_INJECTED
        };
        let mut reply = LocalReply::new(status, flags).text("fault filter abort");
        reply.grpc_status = abort.grpc_status;
        reply
    }

    /// A request body over `--max-request-body-bytes`.
    pub(super) fn payload_too_large() -> Self {
        LocalReply::new(StatusCode::PAYLOAD_TOO_LARGE, ResponseFlags::NONE)
            .text(PAYLOAD_TOO_LARGE_BODY)
    }

    /// The request itself is malformed (no authority, a path that cannot be forwarded).
    pub(super) fn bad_request() -> Self {
        LocalReply::new(
            StatusCode::BAD_REQUEST,
            ResponseFlags::DOWNSTREAM_PROTOCOL_ERROR,
        )
    }

    /// The share of a Gateway API rule weighted to a backendRef that could not be
    /// resolved: the spec asks for 500.
    pub(super) fn invalid_backend() -> Self {
        LocalReply::new(StatusCode::INTERNAL_SERVER_ERROR, ResponseFlags::NONE)
    }

    /// No cluster or no endpoint to send the request to.
    pub(super) fn no_healthy_upstream() -> Self {
        LocalReply::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ResponseFlags::NO_HEALTHY_UPSTREAM,
        )
        .text(NO_HEALTHY_UPSTREAM)
    }

    /// The route's timeout expired before an upstream answered.
    pub(super) fn route_timeout(retried: bool) -> Self {
        LocalReply::new(
            StatusCode::GATEWAY_TIMEOUT,
            ResponseFlags::UPSTREAM_REQUEST_TIMEOUT.retried(retried),
        )
        .text(UPSTREAM_TIMEOUT)
    }

    /// 503 with Envoy's text for a TLS failure: the reset reason, then the transport
    /// failure reason (also in the access log's `%UPSTREAM_TRANSPORT_FAILURE_REASON%`).
    fn tls_failure(flags: ResponseFlags, reset: &str, tls: TlsFailure) -> Self {
        let mut reply = LocalReply::new(StatusCode::SERVICE_UNAVAILABLE, flags).text(Bytes::from(
            [
                "upstream connect error or disconnect/reset before headers. reset reason: ",
                reset,
                ", transport failure reason: ",
                tls.reason(),
            ]
            .concat(),
        ));
        reply.transport_failure = Some(tls.reason());
        reply
    }

    /// The last try failed without an answer: Envoy's status, text and flags for it.
    pub(super) fn try_failed(failure: TryFailure, retried: bool) -> Self {
        const RESET: &str =
            "upstream connect error or disconnect/reset before headers. reset reason: ";
        let unavailable = |flags: ResponseFlags, reason: &'static str| {
            LocalReply::new(StatusCode::SERVICE_UNAVAILABLE, flags)
                .text(Bytes::from([RESET, reason].concat()))
        };
        match failure {
            TryFailure::ConnectFailure => unavailable(
                ResponseFlags::UPSTREAM_CONNECTION_FAILURE.retried(retried),
                "connection failure",
            ),
            TryFailure::RefusedStream => unavailable(
                ResponseFlags::UPSTREAM_REMOTE_RESET.retried(retried),
                "remote refused stream reset",
            ),
            TryFailure::Reset => unavailable(
                ResponseFlags::UPSTREAM_CONNECTION_TERMINATION.retried(retried),
                "connection termination",
            ),
            TryFailure::Tls(tls) => LocalReply::tls_failure(
                ResponseFlags::UPSTREAM_CONNECTION_FAILURE.retried(retried),
                "connection failure",
                tls,
            ),
            TryFailure::ResetTls(tls) => LocalReply::tls_failure(
                ResponseFlags::UPSTREAM_CONNECTION_TERMINATION.retried(retried),
                "connection termination",
                tls,
            ),
            TryFailure::Overflow => unavailable(ResponseFlags::UPSTREAM_OVERFLOW, "overflow"),
            TryFailure::Timeout => LocalReply::route_timeout(retried),
            TryFailure::ProtocolError => LocalReply::new(
                StatusCode::BAD_GATEWAY,
                ResponseFlags::UPSTREAM_PROTOCOL_ERROR,
            )
            .text("upstream protocol error"),
        }
    }

    /// The client's request body broke off: the failure is the client's. 400 for a
    /// malformed or truncated body (a downstream protocol error), 413 for one cut at the
    /// body limit, 408 `SI` (Envoy's "stream timeout") for one that stopped.
    pub(super) fn broken_body(broken: BrokenBody) -> Self {
        match broken {
            BrokenBody::Malformed => LocalReply::bad_request(),
            BrokenBody::TooLarge => LocalReply::payload_too_large(),
            BrokenBody::Idle => LocalReply::new(
                StatusCode::REQUEST_TIMEOUT,
                ResponseFlags::STREAM_IDLE_TIMEOUT,
            )
            .text("stream timeout"),
        }
    }

    /// The HTTP status the answer has (a gRPC client gets 200 and this as `grpc-status`).
    #[cfg(test)]
    pub(super) fn status(&self) -> StatusCode {
        self.status
    }

    /// The answer on the wire: as it is, or for a gRPC request as a trailers-only gRPC
    /// response (the headers a route or fault added stay, as Envoy keeps them).
    pub(super) fn into_response(self, request_is_grpc: bool) -> Response<ProxyBody> {
        if request_is_grpc {
            return self.into_grpc();
        }
        let body: ProxyBody = if self.text.is_empty() {
            Empty::new().map_err(|never| match never {}).boxed()
        } else {
            Full::new(self.text).map_err(|never| match never {}).boxed()
        };
        let mut response = Response::new(body);
        *response.status_mut() = self.status;
        *response.headers_mut() = self.headers;
        response
    }

    fn into_grpc(self) -> Response<ProxyBody> {
        let mut headers = self.headers;
        headers.remove(header::CONTENT_LENGTH);
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(grpc::CONTENT_TYPE),
        );
        // A grpc-status that the route's response headers set is kept, as in Envoy.
        if !headers.contains_key(&grpc::STATUS) {
            let status = self
                .grpc_status
                .unwrap_or_else(|| grpc::status_from_http(self.status));
            headers.insert(grpc::STATUS, HeaderValue::from(status));
        }
        let message = grpc::percent_encode(&String::from_utf8_lossy(&self.text));
        if let Ok(message) = HeaderValue::from_str(&message)
            && !message.is_empty()
        {
            headers.insert(grpc::MESSAGE, message);
        }
        // No body: the headers frame ends the stream and carries the status.
        let mut response = Response::new(Empty::new().map_err(|never| match never {}).boxed());
        *response.headers_mut() = headers;
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header<'a>(response: &'a Response<ProxyBody>, name: &str) -> Option<&'a str> {
        response.headers().get(name).and_then(|v| v.to_str().ok())
    }

    async fn body(response: Response<ProxyBody>) -> Bytes {
        let collected = response.into_body().collect().await.expect("in memory");
        collected.to_bytes()
    }

    #[tokio::test]
    async fn plain_replies_carry_their_status_text_and_type() {
        let reply = LocalReply::no_healthy_upstream().into_response(false);
        assert_eq!(reply.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(header(&reply, "content-type"), Some("text/plain"));
        assert_eq!(body(reply).await, "no healthy upstream");

        let not_found = LocalReply::no_route().into_response(false);
        assert_eq!(not_found.status(), StatusCode::NOT_FOUND);
        assert_eq!(header(&not_found, "content-type"), None);
        assert!(body(not_found).await.is_empty());

        let closing = LocalReply::bad_request().closing().into_response(false);
        assert_eq!(header(&closing, "connection"), Some("close"));
    }

    #[test]
    fn failed_tries_answer_as_envoy_does() {
        let cases = [
            (TryFailure::ConnectFailure, false, 503, "UF"),
            (TryFailure::ConnectFailure, true, 503, "UF,URX"),
            (TryFailure::Reset, true, 503, "UC,URX"),
            (TryFailure::RefusedStream, false, 503, "UR"),
            (TryFailure::Timeout, true, 504, "UT,URX"),
            (TryFailure::ProtocolError, true, 502, "UPE"),
            (TryFailure::Overflow, true, 503, "UO"),
        ];
        for (failure, retried, status, flags) in cases {
            let reply = LocalReply::try_failed(failure, retried);
            assert_eq!(reply.status().as_u16(), status, "{failure:?}");
            assert_eq!(reply.flags.as_str(), flags, "{failure:?}");
        }
        let reset = LocalReply::try_failed(TryFailure::Reset, false);
        assert_eq!(
            reset.text,
            "upstream connect error or disconnect/reset before headers. reset reason: connection termination"
        );
        // TLS 1.3: the upstream refuses our (missing) client certificate after the
        // handshake; Envoy reports the termination with BoringSSL's reason.
        let refused = TlsFailure::PeerAlert(super::super::upstream_tls::Alert::CertificateRequired);
        let reply = LocalReply::try_failed(TryFailure::ResetTls(refused), false);
        assert_eq!(reply.flags.as_str(), "UC");
        assert_eq!(
            reply.text,
            "upstream connect error or disconnect/reset before headers. reset reason: connection termination, transport failure reason: TLS_error:|SSL routines:TLSV1_ALERT_CERTIFICATE_REQUIRED:TLS_error_end"
        );
        assert_eq!(reply.transport_failure, Some(refused.reason()));
    }

    #[tokio::test]
    async fn a_local_answer_to_grpc_becomes_trailers_only() {
        let converted = LocalReply::no_healthy_upstream().into_response(true);
        assert_eq!(converted.status(), StatusCode::OK);
        assert_eq!(header(&converted, "content-type"), Some("application/grpc"));
        assert_eq!(header(&converted, "grpc-status"), Some("14"));
        assert_eq!(
            header(&converted, "grpc-message"),
            Some("no healthy upstream")
        );
        assert_eq!(header(&converted, "content-length"), None);
        assert!(body(converted).await.is_empty());
    }

    #[test]
    fn an_empty_local_body_sends_no_message_and_an_override_wins() {
        let converted = LocalReply::no_route().into_response(true);
        assert_eq!(header(&converted, "grpc-status"), Some("12"));
        assert_eq!(header(&converted, "grpc-message"), None);

        let abort = FaultAbort {
            status: 200,
            grpc_status: Some(8),
            percentage: 100.0,
        };
        let aborted = LocalReply::fault_abort(&abort, true);
        assert_eq!(aborted.flags.as_str(), "DI,FI");
        let aborted = aborted.into_response(true);
        assert_eq!(header(&aborted, "grpc-status"), Some("8"));
        assert_eq!(header(&aborted, "grpc-message"), Some("fault filter abort"));
    }

    #[test]
    fn a_grpc_status_the_route_set_is_kept() {
        let mut reply = LocalReply::new(StatusCode::SERVICE_UNAVAILABLE, ResponseFlags::NONE);
        reply
            .headers
            .insert(grpc::STATUS, HeaderValue::from_static("5"));
        let converted = reply.into_response(true);
        assert_eq!(header(&converted, "grpc-status"), Some("5"));
    }
}
