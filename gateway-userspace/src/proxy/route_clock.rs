//! The route's timeouts as Envoy's router counts them: the clock starts when the client's
//! request has arrived whole (its end of stream), not when the upload begins, and runs
//! until the upstream's response has ended. A slow upload is the stream idle timeout's
//! business; the route timeout bounds the upstream's answer. Per-try timeouts start at
//! the later of the try's start and the request's end, as Envoy arms them.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::{sync::watch, time::Instant};

/// When the client's request ended, as the tries wait for it.
#[derive(Clone)]
pub(super) enum RequestEnd {
    /// It had ended when the tries began (no body): no channel for the common GET.
    At(Instant),
    /// Its body is still arriving; the body's reader marks the end.
    Pending(watch::Receiver<Option<Instant>>),
}

/// Held by whoever reads the client's body: marks the request's end once.
pub(super) struct RequestEndMark(watch::Sender<Option<Instant>>);

impl RequestEnd {
    /// A request whose body has yet to arrive, and the mark its reader sets.
    pub(super) fn pending() -> (RequestEnd, RequestEndMark) {
        let (tx, rx) = watch::channel(None);
        (RequestEnd::Pending(rx), RequestEndMark(tx))
    }

    /// A request that had arrived whole (no body) at `at`.
    pub(super) fn at(at: std::time::Instant) -> RequestEnd {
        RequestEnd::At(Instant::from_std(at))
    }

    /// When the request ended; pends while it has not (forever if the body was dropped
    /// unfinished: the try fails of its own accord then).
    pub(super) async fn ended(&self) -> Instant {
        let mut rx = match self {
            RequestEnd::At(at) => return *at,
            RequestEnd::Pending(rx) => rx.clone(),
        };
        let ended = rx.wait_for(Option::is_some).await.ok().and_then(|at| *at);
        match ended {
            Some(at) => at,
            None => std::future::pending().await,
        }
    }

    /// Ready `timeout` after the later of the request's end and `since`.
    pub(super) async fn expired(&self, timeout: Duration, since: Option<Instant>) {
        let ended = self.ended().await;
        let start = since.map_or(ended, |since| since.max(ended));
        tokio::time::sleep_until(super::limits::deadline_after(start, timeout)).await;
    }
}

impl RequestEndMark {
    pub(super) fn mark(&self) {
        self.0.send_if_modified(|at| {
            let first = at.is_none();
            if first {
                *at = Some(Instant::now());
            }
            first
        });
    }
}

/// The upstream's response body, cut off when the route's timeout expires before its end
/// (Envoy resets the stream: the status has gone, so the client sees a truncated body).
pub(super) struct DeadlineBody<B> {
    inner: B,
    expiry: Expiry,
}

/// The route timeout's expiry, boxed (`expiry`'s future).
pub(super) type Expiry = Pin<Box<dyn Future<Output = ()> + Send + Sync>>;

/// The route timeout's expiry as a future, for `DeadlineBody`.
#[allow(
    clippy::manual_async_fn,
    reason = "spelled out for the Sync bound a boxed body needs"
)]
pub(super) fn expiry(end: RequestEnd, timeout: Duration) -> impl Future<Output = ()> + Send + Sync {
    async move { end.expired(timeout, None).await }
}

/// The route timeout ran out while the response body was still arriving.
#[derive(Debug, thiserror::Error)]
#[error("upstream response timed out (route timeout)")]
pub(super) struct ResponseTimedOut;

impl<B> DeadlineBody<B> {
    /// `expiry` comes boxed (`Expiry`): the answer carries it so until its body is made.
    pub(super) fn new(inner: B, expiry: Expiry) -> Self {
        DeadlineBody { inner, expiry }
    }
}

impl<B> Body for DeadlineBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: From<ResponseTimedOut>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        match self.expiry.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(ResponseTimedOut.into()))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_clock_starts_at_the_end_of_the_request_not_before() {
        let (end, mark) = RequestEnd::pending();
        let timeout = Duration::from_millis(10);
        let expired = end.expired(timeout, None);
        tokio::pin!(expired);
        // An upload ten timeouts long: the clock has not started.
        let upload = tokio::time::sleep(timeout * 10);
        tokio::select! {
            () = &mut expired => panic!("expired during the upload"),
            () = upload => {}
        }
        mark.mark();
        let ended = end.ended().await;
        expired.await;
        assert!(Instant::now() >= ended + timeout);
    }

    #[tokio::test]
    async fn a_per_try_clock_starts_at_the_later_of_the_try_and_the_request_end() {
        let end = RequestEnd::at(std::time::Instant::now());
        let ended = end.ended().await;
        let try_started = ended + Duration::from_millis(20);
        end.expired(Duration::from_millis(5), Some(try_started))
            .await;
        assert!(Instant::now() >= try_started + Duration::from_millis(5));
    }

    #[tokio::test]
    async fn marking_twice_keeps_the_first_end() {
        let (end, mark) = RequestEnd::pending();
        mark.mark();
        let first = end.ended().await;
        tokio::time::sleep(Duration::from_millis(5)).await;
        mark.mark();
        assert_eq!(end.ended().await, first);
    }
}
