//! Bodies as the proxy passes them on (`ProxyBody`), and the client's request body as the
//! proxy reads it (`DownstreamBody`: body limit, stream idle timeout, failures
//! remembered).

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;

use super::{limits, route_clock::RequestEndMark};

/// Bodies in both directions: a request body can fail for a reason of ours (the body
/// limit), not only hyper's.
pub(super) type ProxyBody = BoxBody<Bytes, BoxError>;
pub(super) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A client's request body as the server that read its head delivers it: hyper's (HTTP/2,
/// or HTTP/1 under `--http1-server hyper`) or the codec's.
pub(super) enum ClientBody {
    Hyper(Incoming),
    Own(super::http1::RequestBody),
}

impl hyper::body::Body for ClientBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ClientBody::Hyper(body) => std::pin::Pin::new(body)
                .poll_frame(cx)
                .map(|f| f.map(|f| f.map_err(BoxError::from))),
            ClientBody::Own(body) => std::pin::Pin::new(body)
                .poll_frame(cx)
                .map(|f| f.map(|f| f.map_err(BoxError::from))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ClientBody::Hyper(body) => body.is_end_stream(),
            ClientBody::Own(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match self {
            ClientBody::Hyper(body) => body.size_hint(),
            ClientBody::Own(body) => body.size_hint(),
        }
    }
}

/// A client's request body that remembers whether it broke off (a malformed chunk, a
/// closed connection), so a failed try is blamed on the client (400), not the upstream;
/// and that breaks it off itself past the body limit (413), whatever its framing: the
/// framing guard cuts chunked HTTP/1 bodies earlier, this catches HTTP/2 bodies that
/// declared no length; and that breaks off when no bytes arrive for the stream idle
/// timeout (408). The error aborts the upstream request (a reset stream, or a
/// connection closed before the last chunk), so the upstream never gets a whole request.
pub(super) struct DownstreamBody {
    inner: ClientBody,
    failed: Arc<limits::BodyFailure>,
    received: u64,
    limit: Option<u64>,
    idle_timeout: Duration,
    /// Since when the body has been waited for without a frame: idleness is the client's
    /// only while someone reads (an upstream that does not take the body is not the
    /// client stalling). The timer is moved when it fires early, not per frame.
    waiting_since: Option<tokio::time::Instant>,
    idle: std::pin::Pin<Box<tokio::time::Sleep>>,
    /// Set when the last frame has been read: the route timeout's clock starts then.
    end: RequestEndMark,
}

impl DownstreamBody {
    pub(super) fn new(
        inner: ClientBody,
        failed: Arc<limits::BodyFailure>,
        limits: &limits::Limits,
        end: RequestEndMark,
    ) -> Self {
        let now = tokio::time::Instant::now();
        DownstreamBody {
            inner,
            failed,
            received: 0,
            limit: limits.max_request_body_bytes,
            idle_timeout: limits.stream_idle_timeout,
            waiting_since: None,
            idle: Box::pin(tokio::time::sleep_until(limits::deadline_after(
                now,
                limits.stream_idle_timeout,
            ))),
            end,
        }
    }

    /// Ready with the error once the body has been idle for the timeout.
    fn poll_idle(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<BoxError> {
        let since = *self
            .waiting_since
            .get_or_insert_with(tokio::time::Instant::now);
        loop {
            std::task::ready!(self.idle.as_mut().poll(cx));
            let deadline = limits::deadline_after(since, self.idle_timeout);
            if deadline <= tokio::time::Instant::now() {
                let idle = limits::StreamIdleTimeout(self.idle_timeout);
                self.failed.record(&idle);
                return std::task::Poll::Ready(idle.into());
            }
            self.idle.as_mut().reset(deadline);
        }
    }
}

impl hyper::body::Body for DownstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        let std::task::Poll::Ready(polled) = polled else {
            return self.poll_idle(cx).map(|e| Some(Err(e)));
        };
        let frame = match polled {
            Some(Ok(frame)) => frame,
            Some(Err(e)) => {
                self.failed.record(&*e);
                return std::task::Poll::Ready(Some(Err(e)));
            }
            None => {
                self.end.mark();
                return std::task::Poll::Ready(None);
            }
        };
        self.waiting_since = None;
        if let Some(data) = frame.data_ref() {
            self.received = self.received.saturating_add(data.len() as u64);
            if let Some(limit) = self.limit
                && self.received > limit
            {
                let cut = limits::BodyTooLarge { limit };
                self.failed.record(&cut);
                return std::task::Poll::Ready(Some(Err(cut.into())));
            }
        }
        if self.inner.is_end_stream() {
            self.end.mark();
        }
        std::task::Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}
