//! A request body as the handler reads it: frames the connection loop decodes and hands
//! over one at a time (`handoff.rs`), so the client is read only as fast as the body is
//! taken.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::oneshot;

use super::{chunked::ChunkError, handoff};

/// Why a request body broke off.
#[derive(Debug, thiserror::Error)]
pub(in crate::proxy) enum BodyError {
    #[error("chunked body: {0}")]
    Chunk(#[from] ChunkError),
    #[error("the client closed before the body ended")]
    Truncated,
    #[error("reading the body: {0}")]
    Io(#[from] std::io::Error),
}

pub(super) type BodyFrame = Result<Frame<Bytes>, BodyError>;

pub(in crate::proxy) struct RequestBody {
    /// None: no body.
    frames: Option<handoff::Receiver<BodyFrame>>,
    /// Told the first time the body is read: the connection answers 100 Continue then.
    wanted: Option<oneshot::Sender<()>>,
    /// Content-Length bytes not yet taken.
    remaining: Option<u64>,
}

impl RequestBody {
    pub(super) fn empty() -> Self {
        RequestBody {
            frames: None,
            wanted: None,
            remaining: Some(0),
        }
    }

    pub(super) fn streamed(
        frames: handoff::Receiver<BodyFrame>,
        wanted: Option<oneshot::Sender<()>>,
        length: Option<u64>,
    ) -> Self {
        RequestBody {
            frames: Some(frames),
            wanted,
            remaining: length,
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        if let Some(wanted) = self.wanted.take() {
            let _ = wanted.send(());
        }
        let Some(frames) = self.frames.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = std::task::ready!(frames.poll_recv(cx));
        if let Some(Ok(frame)) = &polled
            && let Some(data) = frame.data_ref()
            && let Some(remaining) = &mut self.remaining
        {
            *remaining = remaining.saturating_sub(data.len() as u64);
        }
        if polled.is_none() {
            self.frames = None;
        }
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        self.frames.is_none() || self.remaining == Some(0)
    }

    fn size_hint(&self) -> SizeHint {
        match self.remaining {
            Some(remaining) => SizeHint::with_exact(remaining),
            None => SizeHint::default(),
        }
    }
}
