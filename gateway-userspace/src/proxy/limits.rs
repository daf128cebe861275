//! Limits on what one client may hold: time for a request's head, time idle between
//! requests on a keep-alive connection, and the size of a request body. The framing
//! guard (`h1_guard.rs`, on plaintext and TLS ports alike) enforces the two timeouts
//! (on HTTP/2 only the idle one, as time without a byte either way) and the size of
//! chunked HTTP/1 bodies; a declared length over the limit is refused before routing.

use std::{
    error::Error,
    sync::atomic::{AtomicU8, Ordering},
    time::Duration,
};

use thiserror::Error;

/// `start + length`, saturated a year out: the duration flags take any number of
/// seconds, and `Instant + Duration` panics past what the clock can hold.
pub(super) fn deadline_after(
    start: tokio::time::Instant,
    length: Duration,
) -> tokio::time::Instant {
    start
        .checked_add(length)
        .unwrap_or(start + Duration::from_secs(86_400 * 365))
}

/// Slowloris guard: once a request head has begun, the client gets this long to finish
/// it (Envoy's `request_headers_timeout` is off by default; a gateway facing the
/// internet needs one, and 10 s covers the slowest honest client).
pub(super) const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// A keep-alive connection with no request in flight is closed after this long:
/// Envoy's connection manager `idle_timeout` default, which Istio's gateway keeps (1 h).
pub(super) const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60 * 60);
/// An HTTP stream (a request body still arriving, a response still being sent, an
/// upgraded WebSocket) with no bytes either way for this long is closed: Envoy's
/// `stream_idle_timeout` default (5 min).
pub(super) const DEFAULT_STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(5 * 60);
/// A TCP or TLS-passthrough stream with no bytes either way for this long is closed:
/// Envoy's tcp_proxy `idle_timeout` default (1 h).
pub(super) const DEFAULT_TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(60 * 60);
/// A connection on a PROXY protocol listener must deliver its header within this long:
/// Envoy's `listener_filters_timeout` default (15 s).
pub(super) const DEFAULT_PROXY_PROTOCOL_TIMEOUT: Duration = Duration::from_secs(15);
/// The copy of a request body kept so that a retry or a mirror can send it again; a body
/// that outgrows it is still forwarded, once, without retries (Istio's gateway buffers
/// at most 32 KiB per request for replay).
pub(super) const DEFAULT_MAX_REPLAY_BODY_BYTES: u64 = 32 * 1024;
/// What the replay copies of all requests of one client connection may hold together:
/// four whole copies, so an HTTP/2 client's 1024 streams cannot hold 1024 of them.
pub(super) const DEFAULT_MAX_REPLAY_BYTES_PER_CONNECTION: u64 = 4 * DEFAULT_MAX_REPLAY_BODY_BYTES;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    /// None: bodies stream through whatever their size, as Envoy streams them unless a
    /// filter buffers.
    pub max_request_body_bytes: Option<u64>,
    /// HTTP streams (bodies, upgraded connections) idle this long either way are closed.
    pub stream_idle_timeout: Duration,
    /// TCP and TLS-passthrough streams idle this long either way are closed.
    pub tcp_idle_timeout: Duration,
    /// Largest request body kept for replay (retries, mirrors).
    pub max_replay_body_bytes: u64,
    /// What the replay copies of one connection's requests may hold together.
    pub max_replay_bytes_per_connection: u64,
    /// Downstream connections served at once (all listeners, all workers); beyond it new
    /// connections wait in the kernel's backlog. None: sized from the descriptor limit.
    pub max_connections: Option<usize>,
    /// A PROXY protocol header not complete within this long closes the connection.
    pub proxy_protocol_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_request_body_bytes: None,
            stream_idle_timeout: DEFAULT_STREAM_IDLE_TIMEOUT,
            tcp_idle_timeout: DEFAULT_TCP_IDLE_TIMEOUT,
            max_replay_body_bytes: DEFAULT_MAX_REPLAY_BODY_BYTES,
            max_replay_bytes_per_connection: DEFAULT_MAX_REPLAY_BYTES_PER_CONNECTION,
            max_connections: None,
            proxy_protocol_timeout: DEFAULT_PROXY_PROTOCOL_TIMEOUT,
        }
    }
}

/// Why the framing guard cut a request body off; hyper hands it to the body's reader as
/// the source of its error, so the proxy answers 413 instead of 400.
#[derive(Debug, Error)]
#[error("request body larger than {limit} bytes")]
pub(super) struct BodyTooLarge {
    pub limit: u64,
}

/// A request body that stopped arriving for the stream idle timeout: the request ends
/// (408 `SI` before any answer, else a reset) and its upstream request is aborted.
#[derive(Debug, Error)]
#[error("no request body bytes for {0:?}")]
pub(super) struct StreamIdleTimeout(pub Duration);

/// A request whose declared `Content-Length` is over the body limit: answered 413
/// before anything reaches an upstream.
/// `declared`: the request's Content-Length (`HeadFacts::declared_length`).
pub(super) fn declared_body_too_large(declared: Option<u64>, limits: &Limits) -> bool {
    let Some(limit) = limits.max_request_body_bytes else {
        return false;
    };
    declared.is_some_and(|length| length > limit)
}

/// How a client's request body broke off, shared by the body (which sees the error)
/// and the request's handler (which answers for it once the upstream try failed).
#[derive(Debug, Default)]
pub(super) struct BodyFailure(AtomicU8);

const BODY_INTACT: u8 = 0;
const BODY_BROKEN: u8 = 1;
const BODY_TOO_LARGE: u8 = 2;
const BODY_IDLE: u8 = 3;

impl BodyFailure {
    pub(super) fn record(&self, error: &(dyn Error + 'static)) {
        let what = if is_body_too_large(error) {
            BODY_TOO_LARGE
        } else if error.is::<StreamIdleTimeout>() {
            BODY_IDLE
        } else {
            BODY_BROKEN
        };
        self.0.store(what, Ordering::Relaxed);
    }

    /// How the body broke off, if it did.
    pub(super) fn broken(&self) -> Option<BrokenBody> {
        match self.0.load(Ordering::Relaxed) {
            BODY_INTACT => None,
            BODY_TOO_LARGE => Some(BrokenBody::TooLarge),
            BODY_IDLE => Some(BrokenBody::Idle),
            _ => Some(BrokenBody::Malformed),
        }
    }
}

/// How a client's request body broke off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum BrokenBody {
    /// Malformed or truncated (a broken chunk, a closed connection).
    Malformed,
    /// Cut at the body limit.
    TooLarge,
    /// No bytes for the stream idle timeout.
    Idle,
}

/// Whether `error` (a request body's error, through its sources) is the guard's cut.
pub(super) fn is_body_too_large(error: &(dyn Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(e) = current {
        if e.is::<BodyTooLarge>() {
            return true;
        }
        // An io::Error's `source` skips the error it wraps; `get_ref` is that error.
        current = match e.downcast_ref::<std::io::Error>() {
            Some(io) => io.get_ref().map(|inner| inner as &(dyn Error + 'static)),
            None => e.source(),
        };
    }
    false
}

#[cfg(test)]
mod tests {
    use http::{Request, header};

    use super::*;

    #[test]
    fn declared_lengths_over_the_limit() {
        let request = |length: &str| {
            Request::builder()
                .header(header::CONTENT_LENGTH, length)
                .body(())
                .unwrap_or_default()
        };
        let limited = Limits {
            max_request_body_bytes: Some(10),
            ..Limits::default()
        };
        let declared =
            |r: Request<()>| super::super::head_facts::HeadFacts::of(r.headers()).declared_length;
        assert!(!declared_body_too_large(declared(request("10")), &limited));
        assert!(declared_body_too_large(declared(request("11")), &limited));
        assert!(!declared_body_too_large(
            declared(request("11")),
            &Limits::default()
        ));
        assert!(!declared_body_too_large(
            declared(Request::new(())),
            &limited
        ));
    }

    #[test]
    fn the_cut_is_found_through_wrapping_errors() {
        let io = std::io::Error::other(BodyTooLarge { limit: 1 });
        assert!(is_body_too_large(&io));
        let other = std::io::Error::other("reset");
        assert!(!is_body_too_large(&other));

        let failure = BodyFailure::default();
        assert_eq!(failure.broken(), None);
        failure.record(&other);
        assert_eq!(failure.broken(), Some(BrokenBody::Malformed));
        failure.record(&io);
        assert_eq!(failure.broken(), Some(BrokenBody::TooLarge));
        failure.record(&StreamIdleTimeout(Duration::from_secs(1)));
        assert_eq!(failure.broken(), Some(BrokenBody::Idle));
    }
}
