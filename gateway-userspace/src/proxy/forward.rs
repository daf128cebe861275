//! One request: route it, rewrite its headers as Istio's gateway does, forward it, and
//! answer locally (404, 501, 503, 502) when it cannot be forwarded.

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Instant, SystemTime},
};

use bytes::Bytes;
use http::{
    HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, Uri, Version, header,
};
use http_body_util::{BodyExt, Empty, Full, combinators::BoxBody};
use hyper::body::Incoming;

use super::{ProxyContext, access_log::AccessLogEntry};
use crate::{
    metrics::RequestLabels,
    route_table::RequestInfo,
    snapshot::{Cluster, Listener, RouteAction, Snapshot},
};

pub type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// Envoy's response flags, as its access log and Istio's metrics spell them.
pub mod flags {
    pub const NONE: &str = "-";
    /// No route matched.
    pub const NO_ROUTE: &str = "NR";
    /// No healthy (ready) upstream endpoint.
    pub const NO_HEALTHY_UPSTREAM: &str = "UH";
    /// Upstream connection failure.
    pub const UPSTREAM_FAILURE: &str = "UF";
    /// Upstream protocol error.
    pub const UPSTREAM_PROTOCOL_ERROR: &str = "UPE";
    /// Downstream protocol error (bad request).
    pub const DOWNSTREAM_PROTOCOL_ERROR: &str = "DPE";
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) that one connection must not pass to the next.
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_FORWARDED_CLIENT_CERT: HeaderName = HeaderName::from_static("x-forwarded-client-cert");
const X_ENVOY_EXTERNAL_ADDRESS: HeaderName = HeaderName::from_static("x-envoy-external-address");

/// One accepted connection and the snapshot it is served by.
pub struct Connection {
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub snapshot: Arc<Snapshot>,
    pub ctx: Arc<ProxyContext>,
    /// Set on connections that TLS terminated: scheme https, SNI's server (421), XFCC.
    pub tls: Option<Arc<crate::tls::TlsConnectionInfo>>,
}

/// What the access log and metrics need about the outcome.
struct Outcome<'a> {
    flags: &'static str,
    cluster: Option<&'a Cluster>,
    upstream: Option<SocketAddr>,
}

impl Connection {
    pub async fn handle(&self, request: Request<Incoming>) -> Response<ProxyBody> {
        let started = Instant::now();
        let start_time = SystemTime::now();
        let method = request.method().clone();
        let version = request.version();
        let path_and_query = request
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_else(|| "/".into());
        let authority = request_authority(&request);
        let user_agent = header_str(request.headers(), &header::USER_AGENT);
        let request_id =
            header_str(request.headers(), &X_REQUEST_ID).unwrap_or_else(new_request_id);
        let forwarded_for = header_str(request.headers(), &X_FORWARDED_FOR);

        let (response, outcome) = self
            .route_and_forward(request, authority.as_deref(), &request_id)
            .await;

        let status = response.status();
        let labels = RequestLabels {
            response_code: status.as_u16(),
            response_flags: outcome.flags,
            request_protocol: if version == Version::HTTP_2 {
                "grpc_or_http2"
            } else {
                "http"
            },
            destination_service: outcome
                .cluster
                .map_or_else(|| "unknown".into(), |c| c.service.clone()),
            destination_service_name: outcome
                .cluster
                .map_or_else(|| "unknown".into(), |c| c.service_name.clone()),
            destination_service_namespace: outcome
                .cluster
                .map_or_else(|| "unknown".into(), |c| c.service_namespace.clone()),
        };
        let metrics = &self.ctx.metrics;
        metrics.requests.get_or_create(&labels).inc();
        let elapsed = started.elapsed();
        metrics
            .request_duration_ms
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64() * 1000.0);
        self.ctx.access_log.write(&AccessLogEntry {
            start_time,
            method: method.as_str(),
            path: &path_and_query,
            version,
            status: status.as_u16(),
            flags: outcome.flags,
            response_bytes: response
                .headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()),
            duration: elapsed,
            forwarded_for: forwarded_for.as_deref(),
            user_agent: user_agent.as_deref(),
            request_id: &request_id,
            authority: authority.as_deref(),
            upstream: outcome.upstream,
            cluster: outcome.cluster.map(|c| c.name.as_str()),
            downstream_local: self.local,
            downstream_peer: self.peer,
        });
        response
    }

    async fn route_and_forward<'s>(
        &'s self,
        request: Request<Incoming>,
        authority: Option<&str>,
        request_id: &str,
    ) -> (Response<ProxyBody>, Outcome<'s>) {
        let no_upstream = |flags| Outcome {
            flags,
            cluster: None,
            upstream: None,
        };
        let Some(authority) = authority else {
            return (
                local_response(StatusCode::BAD_REQUEST, ""),
                no_upstream(flags::DOWNSTREAM_PROTOCOL_ERROR),
            );
        };
        let Some(listener) = self.listener() else {
            return (
                local_response(StatusCode::NOT_FOUND, ""),
                no_upstream(flags::NO_ROUTE),
            );
        };
        if let (Some(tls), Some(listener_tls)) =
            (&self.tls, listener.transport.as_ref().and_then(|t| t.tls()))
            && tls.is_misdirected(listener_tls, authority)
        {
            return (
                local_response(StatusCode::MISDIRECTED_REQUEST, "misdirected request\n"),
                no_upstream(flags::NONE),
            );
        }
        let info = RequestInfo {
            authority,
            path: request.uri().path(),
            query: request.uri().query(),
            method: request.method().as_str(),
            scheme: self.scheme(),
            port: listener.port,
            headers: request.headers(),
        };
        let Some(route) = listener.routes.find(&info) else {
            // Envoy answers an unrouted request with 404 and an empty body.
            return (
                local_response(StatusCode::NOT_FOUND, ""),
                no_upstream(flags::NO_ROUTE),
            );
        };
        let clusters = match &route.action {
            RouteAction::Forward(forward) => &forward.clusters,
            RouteAction::Redirect(_) | RouteAction::DirectResponse(_) => {
                return (
                    local_response(StatusCode::NOT_IMPLEMENTED, ""),
                    no_upstream(flags::NONE),
                );
            }
            RouteAction::Unsupported(what) => {
                let body = format!("route action `{what}` is not supported by this gateway yet\n");
                return (
                    local_response(StatusCode::NOT_IMPLEMENTED, &body),
                    no_upstream(flags::NONE),
                );
            }
        };
        let Some(cluster) = RouteAction::pick_cluster(clusters).map(|c| &c.cluster) else {
            return (
                local_response(StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream"),
                no_upstream(flags::NO_HEALTHY_UPSTREAM),
            );
        };
        let Some(endpoint) = cluster.pick() else {
            let outcome = Outcome {
                flags: flags::NO_HEALTHY_UPSTREAM,
                cluster: Some(cluster),
                upstream: None,
            };
            return (
                local_response(StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream"),
                outcome,
            );
        };

        let upstream_request = match self.upstream_request(request, endpoint, authority, request_id)
        {
            Ok(r) => r,
            Err(_) => {
                return (
                    local_response(StatusCode::BAD_REQUEST, ""),
                    no_upstream(flags::DOWNSTREAM_PROTOCOL_ERROR),
                );
            }
        };
        match self.ctx.upstream.request(upstream_request).await {
            Ok(mut response) => {
                strip_hop_by_hop(response.headers_mut());
                let outcome = Outcome {
                    flags: flags::NONE,
                    cluster: Some(cluster),
                    upstream: Some(endpoint),
                };
                (response.map(BodyExt::boxed), outcome)
            }
            Err(e) if e.is_connect() => {
                tracing::debug!(%endpoint, error = %e, "upstream connect failed");
                let outcome = Outcome {
                    flags: flags::UPSTREAM_FAILURE,
                    cluster: Some(cluster),
                    upstream: Some(endpoint),
                };
                let body = "upstream connect error or disconnect/reset before headers. reset reason: connection failure";
                (
                    local_response(StatusCode::SERVICE_UNAVAILABLE, body),
                    outcome,
                )
            }
            Err(e) => {
                tracing::debug!(%endpoint, error = %e, "upstream request failed");
                let outcome = Outcome {
                    flags: flags::UPSTREAM_PROTOCOL_ERROR,
                    cluster: Some(cluster),
                    upstream: Some(endpoint),
                };
                (
                    local_response(StatusCode::BAD_GATEWAY, "upstream protocol error"),
                    outcome,
                )
            }
        }
    }

    /// `https` on connections TLS terminated.
    fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    /// The snapshot's listener for the port this connection arrived on.
    fn listener(&self) -> Option<&Listener> {
        self.snapshot
            .listeners
            .iter()
            .find(|l| l.bind_port == self.local.port())
    }

    /// The request as the upstream gets it: same method, path, Host and body; hop-by-hop
    /// headers removed; forwarding headers set as Istio's gateway sets them.
    fn upstream_request(
        &self,
        request: Request<Incoming>,
        endpoint: SocketAddr,
        authority: &str,
        request_id: &str,
    ) -> Result<Request<Incoming>, http::Error> {
        let (mut parts, body) = request.into_parts();
        let path_and_query = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        parts.uri = Uri::builder()
            .scheme("http")
            .authority(endpoint.to_string())
            .path_and_query(path_and_query)
            .build()?;
        // Upstreams speak HTTP/1.1 until appProtocol-based selection lands.
        parts.version = Version::HTTP_11;
        let headers = &mut parts.headers;
        strip_hop_by_hop(headers);
        if !headers.contains_key(header::HOST)
            && let Ok(host) = HeaderValue::from_str(authority)
        {
            headers.insert(header::HOST, host);
        }
        let client_ip = self.peer.ip().to_string();
        let forwarded_for = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
            Some(existing) if !existing.is_empty() => format!("{existing},{client_ip}"),
            _ => client_ip.clone(),
        };
        if let Ok(v) = HeaderValue::from_str(&forwarded_for) {
            headers.insert(X_FORWARDED_FOR, v);
        }
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(self.scheme()));
        // Envoy's SANITIZE_SET (Istio's gateway default): never trust the client's XFCC.
        headers.remove(X_FORWARDED_CLIENT_CERT);
        if let Some(v) = self
            .tls
            .as_ref()
            .and_then(|tls| tls.client_cert.as_deref())
            .and_then(|cert| HeaderValue::from_str(cert).ok())
        {
            headers.insert(X_FORWARDED_CLIENT_CERT, v);
        }
        if !headers.contains_key(&X_REQUEST_ID)
            && let Ok(v) = HeaderValue::from_str(request_id)
        {
            headers.insert(X_REQUEST_ID, v);
        }
        if let Ok(v) = HeaderValue::from_str(&client_ip) {
            headers.insert(X_ENVOY_EXTERNAL_ADDRESS, v);
        }
        Ok(Request::from_parts(parts, body))
    }
}

/// HTTP/2's :authority, else the Host header.
fn request_authority<B>(request: &Request<B>) -> Option<String> {
    request
        .uri()
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| header_str(request.headers(), &header::HOST))
        .filter(|a| !a.is_empty())
}

fn header_str(headers: &HeaderMap, name: &HeaderName) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// Removes hop-by-hop headers, including those the Connection header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
    // `Upgrade` is hop-by-hop too; upgrades are passed through once WebSocket support lands.
    headers.remove(header::UPGRADE);
}

fn local_response(status: StatusCode, body: &str) -> Response<ProxyBody> {
    let body: ProxyBody = if body.is_empty() {
        Empty::new().map_err(|never| match never {}).boxed()
    } else {
        Full::new(Bytes::from(body.to_owned()))
            .map_err(|never| match never {})
            .boxed()
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    if status != StatusCode::NOT_FOUND {
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    }
    response
}

/// A random UUID (version 4), as Envoy generates for `x-request-id`.
fn new_request_id() -> String {
    let bits = fastrand::u128(..);
    let bits = (bits & !(0xf << 76) | (0x4 << 76)) & !(0x3 << 62) | (0x2 << 62);
    let hex = format!("{bits:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_version_4_uuids() {
        let id = new_request_id();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4", "{id}");
        assert!(matches!(&id[19..20], "8" | "9" | "a" | "b"), "{id}");
        assert_ne!(new_request_id(), id);
    }

    #[test]
    fn hop_by_hop_headers_and_the_ones_connection_names_are_removed() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret-hop"),
        );
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert("x-secret-hop", HeaderValue::from_static("1"));
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
        headers.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut headers);
        let left: Vec<_> = headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["x-kept"]);
    }
}
