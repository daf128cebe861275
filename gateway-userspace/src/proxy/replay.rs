//! A request body forwarded as it arrives, with a bounded copy kept for retries and
//! mirrors, as Envoy's router does: the first try starts at once and streams the client's
//! body; what has passed is kept (up to `--max-replay-body-bytes`) so a retry can send it
//! again and then go on with the rest of the live body. A body that outgrows the copy
//! gives up replay (no more retries, no mirrors), never the request.
//!
//! The copies of all requests of one client connection also share a budget
//! (`--max-replay-bytes-per-connection`): an HTTP/2 client cannot make the gateway keep a
//! copy for each of its 1024 streams. Envoy bounds each stream's buffers by the
//! connection's `per_connection_buffer_limit_bytes` (32 KiB on Istio's gateways) and the
//! rest with its overload manager; a shared budget is the bound this gateway has instead.
//! A request whose copy does not fit the budget gives up replay as one past the limit does.

use std::{
    pin::Pin,
    sync::{
        Arc, Mutex, MutexGuard, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
};

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use hyper::body::{Body, Frame, SizeHint};
use prometheus_client::metrics::counter::Counter;
use thiserror::Error;

use super::body::{BoxError, ProxyBody};

/// Called once: with the whole body when it ended within the replay limit, or with None
/// when it outgrew it (mirrors are sent, or dropped, on that).
pub(super) type OnComplete = Box<dyn FnOnce(Option<Bytes>) + Send>;

/// The body of a try that a later try replaced: its upstream request is aborted.
#[derive(Debug, Error)]
#[error("request body taken over by a retry")]
struct Superseded;

/// The client's body broke off (or was cut) on an earlier read; its cause was recorded then.
#[derive(Debug, Error)]
#[error("request body broke off")]
struct Broken;

/// Bytes the replay copies of one client connection's requests may hold together. The
/// count is shared by the copies, and allocated when the first one is made: most
/// connections never make one (a request without a body, or a route without retries
/// and mirrors), and each connection would otherwise pay an allocation for it.
#[derive(Debug)]
pub(super) struct ReplayBudget {
    bytes: u64,
    left: OnceLock<Arc<AtomicU64>>,
}

impl Clone for ReplayBudget {
    fn clone(&self) -> Self {
        ReplayBudget {
            bytes: self.bytes,
            left: OnceLock::from(self.left().clone()),
        }
    }
}

impl ReplayBudget {
    pub(super) fn new(bytes: u64) -> Self {
        ReplayBudget {
            bytes,
            left: OnceLock::new(),
        }
    }

    fn left(&self) -> &Arc<AtomicU64> {
        self.left
            .get_or_init(|| Arc::new(AtomicU64::new(self.bytes)))
    }

    /// Takes `bytes` from the budget if that many are left.
    fn take(&self, bytes: u64) -> bool {
        self.left()
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |left| {
                left.checked_sub(bytes)
            })
            .is_ok()
    }

    fn give_back(&self, bytes: u64) {
        self.left().fetch_add(bytes, Ordering::AcqRel);
    }

    #[cfg(test)]
    fn remaining(&self) -> u64 {
        self.left().load(Ordering::Acquire)
    }
}

/// The client's body and its replay copy, shared by the tries of one request.
pub(super) struct ReplayBody {
    shared: Arc<Mutex<Shared>>,
}

struct Shared {
    source: ProxyBody,
    /// The length every try announces: the client's own.
    hint: SizeHint,
    /// What has arrived so far, while it fits `limit`; emptied for good when it does not.
    kept: Vec<Bytes>,
    /// Taken from `budget` and given back when the copy is dropped.
    kept_bytes: u64,
    limit: u64,
    budget: ReplayBudget,
    overflowed: bool,
    ended: bool,
    broken: bool,
    trailers: Option<HeaderMap>,
    /// Counts bodies that outgrew the copy (None: replay was not wanted anyway).
    abandoned: Option<Counter>,
    /// The try allowed to read: older tries' bodies fail instead.
    generation: u64,
    on_complete: Option<OnComplete>,
}

impl ReplayBody {
    pub(super) fn new(
        source: ProxyBody,
        limit: u64,
        budget: ReplayBudget,
        abandoned: Option<Counter>,
    ) -> Self {
        let hint = source.size_hint();
        ReplayBody {
            shared: Arc::new(Mutex::new(Shared {
                source,
                hint,
                kept: Vec::new(),
                kept_bytes: 0,
                limit,
                budget,
                overflowed: false,
                ended: false,
                broken: false,
                trailers: None,
                abandoned,
                generation: 0,
                on_complete: None,
            })),
        }
    }

    /// Runs `f` once the body is complete (with it) or outgrew the copy (with None).
    pub(super) fn on_complete(&self, f: OnComplete) {
        let mut shared = lock(&self.shared);
        if shared.overflowed || shared.broken {
            drop(shared);
            f(None);
        } else if shared.ended {
            let whole = shared.whole();
            drop(shared);
            f(Some(whole));
        } else {
            shared.on_complete = Some(f);
        }
    }

    /// Whether another try can send the whole body again.
    pub(super) fn can_replay(&self) -> bool {
        let shared = lock(&self.shared);
        !shared.overflowed && !shared.broken
    }

    /// Ends the current try's hold on the body: from now on its reads fail (aborting its
    /// upstream request), so nothing is read while no try is sending.
    pub(super) fn supersede(&self) {
        lock(&self.shared).generation += 1;
    }

    /// The body of the next try: the kept copy, then the rest as it arrives.
    pub(super) fn for_try(&self) -> ProxyBody {
        let generation = lock(&self.shared).generation;
        http_body_util::BodyExt::boxed(TryBody {
            shared: self.shared.clone(),
            generation,
            position: 0,
            trailers_sent: false,
        })
    }
}

fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    // A panic while holding the lock leaves plain data behind; keep using it.
    shared
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shared {
    fn whole(&self) -> Bytes {
        match self.kept.as_slice() {
            [] => Bytes::new(),
            [one] => one.clone(),
            many => {
                let mut joined = BytesMut::with_capacity(self.kept_bytes as usize);
                for chunk in many {
                    joined.extend_from_slice(chunk);
                }
                joined.freeze()
            }
        }
    }

    /// Keeps a copy of `data` while the copy fits its limit and the connection's budget;
    /// past either, drops it for good.
    fn keep(&mut self, data: &Bytes) -> Option<OnComplete> {
        if self.overflowed {
            return None;
        }
        let total = self.kept_bytes.saturating_add(data.len() as u64);
        if total > self.limit || !self.budget.take(data.len() as u64) {
            self.overflowed = true;
            self.kept = Vec::new();
            self.budget.give_back(std::mem::take(&mut self.kept_bytes));
            if let Some(abandoned) = &self.abandoned {
                abandoned.inc();
            }
            return self.on_complete.take();
        }
        self.kept.push(data.clone());
        self.kept_bytes = total;
        None
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.budget.give_back(self.kept_bytes);
    }
}

/// One try's view of the body.
struct TryBody {
    shared: Arc<Mutex<Shared>>,
    generation: u64,
    /// Next kept chunk to send again.
    position: usize,
    trailers_sent: bool,
}

impl Body for TryBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let mut shared = lock(&this.shared);
        if shared.generation != this.generation {
            return Poll::Ready(Some(Err(Superseded.into())));
        }
        if shared.broken {
            return Poll::Ready(Some(Err(Broken.into())));
        }
        if let Some(chunk) = shared.kept.get(this.position) {
            this.position += 1;
            return Poll::Ready(Some(Ok(Frame::data(chunk.clone()))));
        }
        if shared.ended {
            if !this.trailers_sent
                && let Some(trailers) = shared.trailers.clone()
            {
                this.trailers_sent = true;
                return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
            }
            return Poll::Ready(None);
        }
        let polled = Pin::new(&mut shared.source).poll_frame(cx);
        let mut completed = None;
        let result = match polled {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    completed = shared.keep(data);
                    // This try sent everything kept so far.
                    this.position = shared.kept.len();
                } else if let Some(trailers) = frame.trailers_ref() {
                    shared.trailers = Some(trailers.clone());
                    this.trailers_sent = true;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                shared.broken = true;
                completed = shared.on_complete.take();
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                shared.ended = true;
                if let Some(f) = shared.on_complete.take() {
                    let whole = (!shared.overflowed).then(|| shared.whole());
                    drop(shared);
                    f(whole);
                }
                return Poll::Ready(None);
            }
        };
        drop(shared);
        if let Some(f) = completed {
            f(None);
        }
        result
    }

    fn is_end_stream(&self) -> bool {
        let shared = lock(&self.shared);
        shared.generation == self.generation
            && shared.ended
            && self.position >= shared.kept.len()
            && (self.trailers_sent || shared.trailers.is_none())
    }

    fn size_hint(&self) -> SizeHint {
        lock(&self.shared).hint
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use http_body_util::BodyExt;

    use super::*;

    /// A client body that arrives in the given chunks.
    struct Chunks(VecDeque<Bytes>);

    impl Body for Chunks {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            Poll::Ready(self.0.pop_front().map(|c| Ok(Frame::data(c))))
        }
    }

    fn source(chunks: &[&'static [u8]]) -> ProxyBody {
        Chunks(chunks.iter().map(|c| Bytes::from_static(c)).collect()).boxed()
    }

    async fn read(body: ProxyBody) -> Result<Vec<u8>, BoxError> {
        Ok(body.collect().await?.to_bytes().to_vec())
    }

    fn plenty() -> ReplayBudget {
        ReplayBudget::new(u64::MAX / 2)
    }

    #[tokio::test]
    async fn requests_of_one_connection_share_the_replay_budget() {
        let abandoned = Counter::<u64>::default();
        let budget = ReplayBudget::new(10);
        let first = ReplayBody::new(
            source(&[b"abcd", b"efgh"]),
            8,
            budget.clone(),
            Some(abandoned.clone()),
        );
        let second = ReplayBody::new(
            source(&[b"ijkl"]),
            8,
            budget.clone(),
            Some(abandoned.clone()),
        );
        assert_eq!(
            read(first.for_try()).await.ok().as_deref(),
            Some(&b"abcdefgh"[..])
        );
        assert!(first.can_replay());
        assert_eq!(budget.remaining(), 2);
        // Within its own limit, but the connection's budget is spent: sent, not kept.
        assert_eq!(
            read(second.for_try()).await.ok().as_deref(),
            Some(&b"ijkl"[..])
        );
        assert!(!second.can_replay());
        assert_eq!(abandoned.get(), 1);
        // A finished request gives its share back to the next one.
        drop(first);
        assert_eq!(budget.remaining(), 10);
        let third = ReplayBody::new(source(&[b"mnop"]), 8, budget.clone(), None);
        assert_eq!(
            read(third.for_try()).await.ok().as_deref(),
            Some(&b"mnop"[..])
        );
        assert!(third.can_replay());
        assert_eq!(budget.remaining(), 6);
    }

    #[tokio::test]
    async fn a_retry_sends_the_kept_copy_then_the_rest() {
        let replay = ReplayBody::new(source(&[b"ab", b"cd", b"ef"]), 100, plenty(), None);
        let mut first = replay.for_try();
        // The first try reads part of the body, then fails.
        let frame = first.frame().await.and_then(Result::ok);
        assert_eq!(
            frame.and_then(|f| f.into_data().ok()).as_deref(),
            Some(&b"ab"[..])
        );
        assert!(replay.can_replay());
        replay.supersede();
        assert!(
            first.frame().await.is_some_and(|r| r.is_err()),
            "old try cut"
        );
        let second = replay.for_try();
        assert_eq!(read(second).await.ok().as_deref(), Some(&b"abcdef"[..]));
        // A third try replays the whole body from the copy.
        replay.supersede();
        assert_eq!(
            read(replay.for_try()).await.ok().as_deref(),
            Some(&b"abcdef"[..])
        );
    }

    #[tokio::test]
    async fn a_body_past_the_limit_is_sent_once_and_not_replayed() {
        let abandoned = Counter::<u64>::default();
        let replay = ReplayBody::new(
            source(&[b"abcd", b"efgh", b"ij"]),
            5,
            plenty(),
            Some(abandoned.clone()),
        );
        let (sender, receiver) = std::sync::mpsc::channel();
        replay.on_complete(Box::new(move |whole| {
            let _ = sender.send(whole);
        }));
        assert_eq!(
            read(replay.for_try()).await.ok().as_deref(),
            Some(&b"abcdefghij"[..])
        );
        assert!(!replay.can_replay());
        assert_eq!(receiver.try_recv().ok(), Some(None));
        assert_eq!(abandoned.get(), 1);
    }

    #[tokio::test]
    async fn mirrors_get_the_whole_body_once_it_ended() {
        let replay = ReplayBody::new(source(&[b"ab", b"cd"]), 5, plenty(), None);
        let (sender, receiver) = std::sync::mpsc::channel();
        replay.on_complete(Box::new(move |whole| {
            let _ = sender.send(whole);
        }));
        assert!(receiver.try_recv().is_err(), "not before the body ended");
        assert_eq!(
            read(replay.for_try()).await.ok().as_deref(),
            Some(&b"abcd"[..])
        );
        assert_eq!(
            receiver.try_recv().ok(),
            Some(Some(Bytes::from_static(b"abcd")))
        );
    }
}
