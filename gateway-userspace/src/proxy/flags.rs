//! Envoy's response flags, as its access log and Istio's metrics spell them.

pub(crate) const NONE: &str = "-";
/// No route matched.
pub(crate) const NO_ROUTE: &str = "NR";
/// No healthy (ready) upstream endpoint.
pub(crate) const NO_HEALTHY_UPSTREAM: &str = "UH";
/// Upstream connection failure.
pub(crate) const UPSTREAM_FAILURE: &str = "UF";
/// Upstream protocol error.
pub(crate) const UPSTREAM_PROTOCOL_ERROR: &str = "UPE";
/// Downstream protocol error (bad request).
pub(crate) const DOWNSTREAM_PROTOCOL_ERROR: &str = "DPE";
/// The upstream closed or reset the connection before answering.
pub(crate) const UPSTREAM_CONNECTION_TERMINATION: &str = "UC";
/// The route's timeout (or the last per-try timeout) expired.
pub(crate) const UPSTREAM_REQUEST_TIMEOUT: &str = "UT";
/// Retries were exhausted; the last answer is passed on.
pub(crate) const UPSTREAM_RETRY_LIMIT_EXCEEDED: &str = "URX";
pub(crate) const UPSTREAM_FAILURE_RETRIES_EXCEEDED: &str = "UF,URX";
pub(crate) const UPSTREAM_CONNECTION_TERMINATION_RETRIES_EXCEEDED: &str = "UC,URX";
/// The upstream reset the stream (HTTP/2 RST_STREAM, here REFUSED_STREAM).
pub(crate) const UPSTREAM_REMOTE_RESET: &str = "UR";
pub(crate) const UPSTREAM_REMOTE_RESET_RETRIES_EXCEEDED: &str = "UR,URX";
pub(crate) const UPSTREAM_REQUEST_TIMEOUT_RETRIES_EXCEEDED: &str = "UT,URX";
/// Fault injection delayed / aborted the request.
pub(crate) const DELAY_INJECTED: &str = "DI";
pub(crate) const FAULT_INJECTED: &str = "FI";
pub(crate) const DELAY_AND_FAULT_INJECTED: &str = "DI,FI";
/// The request body stopped arriving for the stream idle timeout.
pub(crate) const STREAM_IDLE_TIMEOUT: &str = "SI";
/// The cluster's connection pool limits were reached (circuit breaking).
pub(crate) const UPSTREAM_OVERFLOW: &str = "UO";
