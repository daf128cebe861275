//! WATCH responses: a 200 chunked body with one `{"type","object"}` JSON document per line.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame};
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;

use crate::errors::ApiError;
use crate::resources::Resource;
use crate::state::{OpenWatch, Shared};
use crate::store::{Filter, Signal, WatchStart, visible};

/// A response body fed from a channel; it ends when the sender is dropped.
pub(crate) struct ChannelBody(mpsc::Receiver<Bytes>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|c| Ok(Frame::data(c))))
    }
}

pub(crate) struct WatchRequest {
    pub(crate) res: Resource,
    pub(crate) version: String,
    pub(crate) filter: Filter,
    pub(crate) timeout: Option<Duration>,
    pub(crate) bookmarks: bool,
    /// `sendInitialEvents=true`: synthetic ADDED events end with an annotated BOOKMARK.
    pub(crate) initial_events_end: bool,
}

impl WatchRequest {
    fn line(&self, kind: &str, object: &Value) -> Bytes {
        let mut object = object.clone();
        if let Some(map) = object.as_object_mut() {
            map.insert(
                "apiVersion".into(),
                self.res.api_version(&self.version).into(),
            );
            map.insert("kind".into(), self.res.kind.into());
        }
        let mut line = json!({"type": kind, "object": object}).to_string();
        line.push('\n');
        Bytes::from(line)
    }

    fn bookmark(&self, rv: u64, initial_events_end: bool) -> Bytes {
        let mut metadata = json!({"resourceVersion": rv.to_string()});
        if initial_events_end {
            metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        self.line("BOOKMARK", &json!({"metadata": metadata}))
    }
}

/// A body that holds just one ERROR event: how the apiserver says "too old" to a watch.
pub(crate) fn error_body(error: &ApiError) -> ChannelBody {
    let (tx, rx) = mpsc::channel(1);
    let _ = tx.try_send(error_line(error));
    ChannelBody(rx)
}

fn error_line(error: &ApiError) -> Bytes {
    let mut line = json!({"type": "ERROR", "object": error.status()}).to_string();
    line.push('\n');
    Bytes::from(line)
}

pub(crate) fn stream(shared: Arc<Shared>, request: WatchRequest, start: WatchStart) -> ChannelBody {
    let (tx, rx) = mpsc::channel(256);
    let open = OpenWatch::new(shared.clone(), request.res.key());
    tokio::spawn(async move {
        run(shared, request, start, tx).await;
        drop(open);
    });
    ChannelBody(rx)
}

async fn run(shared: Arc<Shared>, req: WatchRequest, start: WatchStart, tx: mpsc::Sender<Bytes>) {
    let mut drops = shared.drop_watches.subscribe();
    drops.mark_unchanged();
    for (kind, object) in &start.initial {
        if tx.send(req.line(kind.as_str(), object)).await.is_err() {
            return;
        }
    }
    // Everything up to here is sent: a bookmark at this version loses nothing.
    let mut last_rv = start.rv;
    if req.initial_events_end && tx.send(req.bookmark(last_rv, true)).await.is_err() {
        return;
    }
    let deadline = req.timeout.map(|t| Instant::now() + t);
    let mut ticks = tokio::time::interval_at(
        Instant::now() + shared.bookmark_interval,
        shared.bookmark_interval,
    );
    let mut signals = start.signals;
    loop {
        let line = tokio::select! {
            signal = signals.recv() => match signal {
                Ok(Signal::Event(event)) => {
                    last_rv = event.rv;
                    if event.key != req.res.key() {
                        continue;
                    }
                    match visible(&event, &req.filter) {
                        Some((kind, object)) => req.line(kind.as_str(), &object),
                        None => continue,
                    }
                }
                Ok(Signal::Bookmark) if req.bookmarks => req.bookmark(last_rv, false),
                Ok(Signal::Bookmark) => continue,
                // A watcher too slow for the event buffer: like the apiserver's cacher, end it
                // with 410 so that the client relists.
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    let error = ApiError::expired("too old resource version: watcher fell behind");
                    let _ = tx.send(error_line(&error)).await;
                    return;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = ticks.tick(), if req.bookmarks => req.bookmark(last_rv, false),
            _ = sleep_until(deadline) => return,
            _ = drops.changed() => return,
            _ = tx.closed() => return,
        };
        if tx.send(line).await.is_err() {
            return;
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
