//! What became of a request: the answer (the upstream's, or the gateway's own) with its
//! response flags, and the cluster and endpoint it went to, for the metrics and the
//! access log.

use std::{net::SocketAddr, time::Instant};

use http::Response;

use super::{
    body::ProxyBody, flags::ResponseFlags, http1::passed::PassedFields, local_reply::LocalReply,
};
use crate::runtime::LiveCluster;

pub(super) struct Outcome<'a> {
    pub answer: Answer,
    /// The cluster the route chose; None when none was (no route, a local action).
    pub cluster: Option<LiveCluster<'a>>,
    /// The endpoint of the last try.
    pub upstream: Option<SocketAddr>,
    /// When the upstream's answer came (its response head): the request's duration ends
    /// there without a clock read of its own.
    pub answered_at: Option<Instant>,
}

pub(super) enum Answer {
    /// An upstream's response, with what the flags say of how it came (`URX`, `UO`, `DI`).
    Upstream {
        response: Response<ProxyBody>,
        /// The upstream head's fields when passed as they came (`http1::passed`): the
        /// response's map is empty then.
        passed: Option<Box<PassedFields>>,
        flags: ResponseFlags,
    },
    Local(LocalReply),
}

impl Answer {
    /// The response to send, its passed fields (if any), and its flags.
    pub(super) fn into_response(
        self,
        request_is_grpc: bool,
    ) -> (
        Response<ProxyBody>,
        Option<Box<PassedFields>>,
        ResponseFlags,
    ) {
        match self {
            Answer::Upstream {
                response,
                passed,
                flags,
            } => (response, passed, flags),
            Answer::Local(reply) => {
                let flags = reply.flags;
                (reply.into_response(request_is_grpc), None, flags)
            }
        }
    }
}

impl Answer {
    /// Why the upstream connection failed, when a TLS handshake did.
    pub(super) fn transport_failure(&self) -> Option<&'static str> {
        match self {
            Answer::Upstream { .. } => None,
            Answer::Local(reply) => reply.transport_failure,
        }
    }
}

impl From<LocalReply> for Answer {
    fn from(reply: LocalReply) -> Self {
        Answer::Local(reply)
    }
}

/// An answer given before any cluster was chosen.
impl From<LocalReply> for Outcome<'_> {
    fn from(reply: LocalReply) -> Self {
        Outcome {
            answer: Answer::Local(reply),
            cluster: None,
            upstream: None,
            answered_at: None,
        }
    }
}
