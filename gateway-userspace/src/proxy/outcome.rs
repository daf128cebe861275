//! What became of a request: the answer (the upstream's, or the gateway's own) with its
//! response flags, and the cluster and endpoint it went to, for the metrics and the
//! access log.

use std::{net::SocketAddr, time::Instant};

use http::Response;
use http_body_util::BodyExt;

use super::{
    body::ProxyBody,
    flags::ResponseFlags,
    http1::passed::PassedFields,
    local_reply::LocalReply,
    route_clock::{DeadlineBody, Expiry},
    upstream,
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
    /// Its body becomes the client's (`into_response`) after the futures return it: the
    /// answer they move is a few words, not a response (~130 bytes) per level.
    Upstream {
        response: upstream::Answered,
        /// The upstream head's fields when passed as they came (`http1::passed`): the
        /// response's map is empty then.
        passed: Option<Box<PassedFields>>,
        flags: ResponseFlags,
        /// The route timeout's expiry, which the response body's end must beat.
        expiry: Option<Expiry>,
    },
    /// Boxed: the gateway's own answers are rare, and a reply is bigger than the rest of
    /// an answer.
    Local(Box<LocalReply>),
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
                expiry,
            } => {
                let response = (*response).map(BodyExt::boxed);
                let response = match expiry {
                    Some(expiry) => response.map(|body| DeadlineBody::new(body, expiry).boxed()),
                    None => response,
                };
                (response, passed, flags)
            }
            Answer::Local(reply) => local_response(*reply, request_is_grpc),
        }
    }
}

/// A local reply's response: out of line, so that the common (upstream) answer's code
/// stays small.
#[cold]
#[inline(never)]
fn local_response(
    reply: LocalReply,
    request_is_grpc: bool,
) -> (
    Response<ProxyBody>,
    Option<Box<PassedFields>>,
    ResponseFlags,
) {
    let flags = reply.flags;
    (reply.into_response(request_is_grpc), None, flags)
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
    #[cold]
    #[inline(never)]
    fn from(reply: LocalReply) -> Self {
        Answer::Local(Box::new(reply))
    }
}

/// An answer given before any cluster was chosen.
impl From<LocalReply> for Outcome<'_> {
    #[cold]
    #[inline(never)]
    fn from(reply: LocalReply) -> Self {
        Outcome::from(Box::new(reply))
    }
}

/// The same, of a reply made in its box.
impl From<Box<LocalReply>> for Outcome<'_> {
    #[cold]
    fn from(reply: Box<LocalReply>) -> Self {
        Outcome {
            answer: Answer::Local(reply),
            cluster: None,
            upstream: None,
            answered_at: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Outcome;

    /// Every future between the forward and the connection moves the outcome: a response
    /// in it (rather than its box) or an unboxed local reply made it twice as big.
    #[test]
    fn an_outcome_is_a_few_words() {
        assert!(
            std::mem::size_of::<Outcome<'_>>() <= 128,
            "{}",
            std::mem::size_of::<Outcome<'_>>()
        );
    }
}
