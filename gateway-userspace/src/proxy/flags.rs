//! Envoy's response flags: why an answer is not simply the upstream's, as Envoy's access
//! log and Istio's metrics spell them (`UF,URX`).

use std::{fmt, sync::OnceLock};

/// A set of response flags. Rendered in Envoy's order of the flags, which is the order
/// of the bits here, so that combinations read as Envoy writes them (`UF,URX`, `DI,FI`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub(super) struct ResponseFlags(u16);

impl ResponseFlags {
    pub(super) const NONE: Self = Self(0);
    /// No healthy (ready) upstream endpoint.
    pub(super) const NO_HEALTHY_UPSTREAM: Self = Self(1 << 0);
    /// The route's timeout (or the last per-try timeout) expired.
    pub(super) const UPSTREAM_REQUEST_TIMEOUT: Self = Self(1 << 1);
    /// The upstream reset the stream (HTTP/2 RST_STREAM, here REFUSED_STREAM).
    pub(super) const UPSTREAM_REMOTE_RESET: Self = Self(1 << 2);
    /// Upstream connection failure.
    pub(super) const UPSTREAM_CONNECTION_FAILURE: Self = Self(1 << 3);
    /// The upstream closed or reset the connection before answering.
    pub(super) const UPSTREAM_CONNECTION_TERMINATION: Self = Self(1 << 4);
    /// The cluster's connection pool limits were reached (circuit breaking).
    pub(super) const UPSTREAM_OVERFLOW: Self = Self(1 << 5);
    /// No route matched.
    pub(super) const NO_ROUTE: Self = Self(1 << 6);
    /// Fault injection delayed the request.
    pub(super) const DELAY_INJECTED: Self = Self(1 << 7);
    /// Fault injection aborted the request.
    pub(super) const FAULT_INJECTED: Self = Self(1 << 8);
    /// Retries were exhausted; the last answer is passed on.
    pub(super) const UPSTREAM_RETRY_LIMIT_EXCEEDED: Self = Self(1 << 9);
    /// The request body stopped arriving for the stream idle timeout.
    pub(super) const STREAM_IDLE_TIMEOUT: Self = Self(1 << 10);
    /// Downstream protocol error (bad request).
    pub(super) const DOWNSTREAM_PROTOCOL_ERROR: Self = Self(1 << 11);
    /// Upstream protocol error.
    pub(super) const UPSTREAM_PROTOCOL_ERROR: Self = Self(1 << 12);
    /// An AuthorizationPolicy denied the request (Envoy's RBAC filter).
    pub(super) const RBAC_ACCESS_DENIED: Self = Self(1 << 13);
}

/// The flags' short names, bit 0 first (Envoy's `ResponseFlagUtils` order).
const NAMES: [&str; 14] = [
    "UH", "UT", "UR", "UF", "UC", "UO", "NR", "DI", "FI", "URX", "SI", "DPE", "UPE", "RBAC",
];

/// Each set's text, made the first time it is written: the access log and the metrics'
/// labels take a `&'static str`, and a request should not allocate for its flags.
static RENDERED: [OnceLock<Box<str>>; 1 << NAMES.len()] =
    [const { OnceLock::new() }; 1 << NAMES.len()];

impl ResponseFlags {
    /// Both sets' flags.
    pub(super) const fn with(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    /// `URX` added when the request was retried.
    pub(super) const fn retried(self, retried: bool) -> Self {
        if retried {
            self.with(Self::UPSTREAM_RETRY_LIMIT_EXCEEDED)
        } else {
            self
        }
    }

    /// As Envoy writes them: `-` for none, else the names joined by commas.
    pub(super) fn as_str(self) -> &'static str {
        let Some(rendered) = RENDERED.get(usize::from(self.0)) else {
            return "-";
        };
        rendered.get_or_init(|| {
            if self.0 == 0 {
                return "-".into();
            }
            let names: Vec<&str> = NAMES
                .iter()
                .enumerate()
                .filter(|(bit, _)| self.0 & (1 << bit) != 0)
                .map(|(_, name)| *name)
                .collect();
            names.join(",").into()
        })
    }
}

impl fmt::Display for ResponseFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_render_in_envoys_order() {
        type F = ResponseFlags;
        let cases = [
            (F::NONE, "-"),
            (F::NO_ROUTE, "NR"),
            (F::UPSTREAM_CONNECTION_FAILURE.retried(true), "UF,URX"),
            (F::UPSTREAM_CONNECTION_TERMINATION.retried(true), "UC,URX"),
            (F::UPSTREAM_REMOTE_RESET.retried(true), "UR,URX"),
            (F::UPSTREAM_REQUEST_TIMEOUT.retried(true), "UT,URX"),
            (F::UPSTREAM_REQUEST_TIMEOUT.retried(false), "UT"),
            (F::FAULT_INJECTED.with(F::DELAY_INJECTED), "DI,FI"),
            (F::DOWNSTREAM_PROTOCOL_ERROR, "DPE"),
            (F::UPSTREAM_PROTOCOL_ERROR, "UPE"),
            (F::STREAM_IDLE_TIMEOUT, "SI"),
            (F::UPSTREAM_OVERFLOW, "UO"),
            (F::NO_HEALTHY_UPSTREAM, "UH"),
            (F::RBAC_ACCESS_DENIED, "RBAC"),
        ];
        for (flags, text) in cases {
            assert_eq!(flags.as_str(), text);
            assert_eq!(flags.to_string(), text);
        }
    }
}
