//! The log lines and request counts of connections that end without reaching the
//! router: a head that did not parse, was too large or came too slowly.

use std::{net::SocketAddr, time::SystemTime};

use http::{StatusCode, Version};

use super::{
    access_log::{AccessLogEntry, ClientCertificate},
    context::ProxyContext,
    flags::ResponseFlags,
};
use crate::metrics::RequestLabels;

/// A connection's own answer to a request that never reached the router (a head that
/// did not parse, was too large, or came too slowly): logged as Envoy logs a downstream
/// protocol error, `DPE`, with `-` for what the head never told.
pub(super) fn connection_answer(
    ctx: &ProxyContext,
    local: SocketAddr,
    peer: SocketAddr,
    status: StatusCode,
    start_time: SystemTime,
) {
    let labels = RequestLabels {
        response_code: status.as_u16(),
        response_flags: ResponseFlags::DOWNSTREAM_PROTOCOL_ERROR.as_str(),
        request_protocol: "http",
        destination_service: "unknown".into(),
        destination_service_name: "unknown".into(),
        destination_service_namespace: "unknown".into(),
    };
    ctx.metrics.requests.get_or_create(&labels).inc();
    ctx.access_log.write(&AccessLogEntry {
        start_time,
        method: "-",
        path: "-",
        version: Version::HTTP_11,
        status: status.as_u16(),
        flags: ResponseFlags::DOWNSTREAM_PROTOCOL_ERROR.as_str(),
        transport_failure: None,
        response_bytes: Some("0"),
        duration: start_time.elapsed().unwrap_or_default(),
        forwarded_for: None,
        user_agent: None,
        request_id: "-",
        authority: None,
        upstream: None,
        cluster: None,
        downstream_local: local,
        downstream_peer: peer,
        requested_server_name: None,
        client_certificate: ClientCertificate::None,
    });
}

/// Logs the answer hyper sent itself before it gave up on a connection (`error` is what
/// serving the connection returned): 431 for a head over the size or header-count limit,
/// 400 for one that did not parse (the framing guard's rejections included). Other
/// errors (resets, clients that left) had no answer and leave no line.
pub(super) fn connection_error(
    ctx: &ProxyContext,
    local: SocketAddr,
    peer: SocketAddr,
    error: &(dyn std::error::Error + 'static),
) {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(hyper_error) = e.downcast_ref::<hyper::Error>() {
            let status = if hyper_error.is_parse_too_large() {
                // hyper's 414 (a URI over 64 KiB) cannot happen: the head limit is lower.
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
            } else if hyper_error.is_parse()
                && !hyper_error.is_parse_status()
                && !hyper_error.is_parse_version_h2()
            {
                // (hyper answers neither a status-line error, a client's, nor an HTTP/2
                // preface after HTTP/1 requests: it just closes.)
                StatusCode::BAD_REQUEST
            } else {
                return;
            };
            connection_answer(ctx, local, peer, status, SystemTime::now());
            return;
        }
        current = e.source();
    }
}
