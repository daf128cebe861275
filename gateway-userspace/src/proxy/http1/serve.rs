//! One client connection under the codec: read a head (idle and header-read clocks),
//! hand the request to the handler while its body is decoded into a channel, write the
//! response, and start over; pipelined requests wait in the buffer and are answered in
//! order. A 101 (a 2xx to CONNECT) hands the connection to the upgrade's owner.

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::SystemTime,
};

use bytes::{Buf, Bytes, BytesMut};
use http::{Method, StatusCode};
use hyper::body::Frame;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    sync::oneshot,
    time::{Instant, Sleep, sleep_until},
};
use tracing::debug;

use super::{
    body::{BodyError, BodyFrame, RequestBody},
    buffer,
    chunked::{ChunkedDecoder, Decoded},
    halves, handoff,
    head::{self, BodyFraming, Head},
    idle::IdleWait,
    response::{self, Answering, Written},
    rules::HTTP2_PREFACE,
    upgrade::{PendingUpgrade, Upgraded},
};
use crate::proxy::{
    body::ClientBody, boxed, connection_log, context::ProxyContext, forward, limits::deadline_after,
};

const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// How a connection left the codec.
pub(in crate::proxy) enum Ending<S> {
    Closed,
    /// It opened with the HTTP/2 preface: the bytes read so far, for hyper's h2 server.
    Http2 {
        read: Vec<u8>,
        /// Boxed: the connection's futures need no room for the stream's value beside
        /// the loop that holds it.
        io: Box<S>,
    },
}

/// What the handler needs, and the clocks' limits.
struct Client {
    connection: Arc<forward::Connection>,
    ctx: Arc<ProxyContext>,
}

/// Not an async fn: an async fn moves each argument into a local of its body, and the
/// argument's room stays in the future beside it (rust-lang/rust#62958), so the stream
/// (rustls' whole connection, on TLS) would be held twice. The block below uses `io` in
/// place.
#[allow(clippy::manual_async_fn)] // on purpose: see above
#[inline] // into `proxy::serve_with_codec`, which makes the future in its box
pub(in crate::proxy) fn serve<S>(
    mut io: S,
    connection: Arc<forward::Connection>,
    ctx: Arc<ProxyContext>,
) -> impl Future<Output = Ending<S>> + Send
where
    S: AsyncRead + AsyncWrite + IdleWait + Unpin + Send + 'static,
{
    async move {
        let client = Client { connection, ctx };
        let mut buf = BytesMut::new();
        let mut first = true;
        // The idle and header-read clocks of every request on the connection: one timer,
        // moved rather than registered anew per request (a later deadline is a store),
        // and made only when a head is first waited for.
        let mut clock = Clock(None);
        loop {
            let read = read_head(&mut io, &mut buf, &client, first, &mut clock);
            let head = match read.await {
                HeadRead::Head(head) => head,
                HeadRead::Closed => break,
                HeadRead::Http2 => {
                    return Ending::Http2 {
                        read: buf.to_vec(),
                        io: Box::new(io),
                    };
                }
                HeadRead::Refused(status, started) => {
                    let _ = io.write_all(&response::refusal(status)).await;
                    let _ = io.flush().await;
                    let (local, peer) = (client.connection.local, client.connection.peer);
                    connection_log::connection_answer(&client.ctx, local, peer, status, started);
                    break;
                }
            };
            first = false;
            buf.advance(head.len);
            let upgrading = head.upgrade;
            let exchange = {
                // Split only while a request is in flight: its body is read while the
                // handler runs and while the response is written.
                let shared = std::sync::Mutex::new(&mut io);
                let (mut reader, mut writer) = halves::split(&shared);
                // Boxed for the time of the request: the handler's future is large, and the
                // connection's own future (what an idle connection costs) must not be.
                // Made in its box (`boxed::pinned`).
                boxed::pinned(|| exchange(head, &mut reader, &mut writer, &mut buf, &client)).await
            };
            match exchange {
                Exchanged::KeepAlive if !client.connection.drain().stopping() => {}
                Exchanged::KeepAlive | Exchanged::Close => break,
                Exchanged::Upgrade(sender) if upgrading => {
                    let upgraded = Upgraded {
                        prefix: Bytes::copy_from_slice(&buf),
                        io: Box::new(io),
                    };
                    let _ = sender.send(upgraded);
                    return Ending::Closed;
                }
                Exchanged::Upgrade(_) => break,
            }
            buffer::settle(&mut buf);
        }
        // Whatever is left is not read now: the buffer goes back to the worker's spares.
        buffer::give_back(&mut buf);
        if io.shutdown_before_close() {
            let _ = io.shutdown().await;
        }
        Ending::Closed
    }
}

/// Reads more of a request body into `buf`. A buffer the body has emptied is let go
/// while the client sends nothing (a stalled upload holds none, whatever burst came
/// before), and a new one is taken when the connection is readable again.
fn poll_body_read<R: AsyncRead + IdleWait + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<std::io::Result<usize>> {
    if buf.capacity() == 0 {
        std::task::ready!(reader.poll_idle(cx))?;
    }
    buffer::make_room(buf);
    let read = {
        let read = reader.read_buf(buf);
        std::pin::pin!(read).poll(cx)
    };
    if read.is_pending() && buf.is_empty() {
        buffer::give_back(buf);
    }
    read
}

async fn read_body<R: AsyncRead + IdleWait + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
) -> std::io::Result<usize> {
    std::future::poll_fn(|cx| poll_body_read(reader, buf, cx)).await
}

enum HeadRead {
    /// Boxed: a head is large, and read once per request anyway.
    Head(Box<Head>),
    Closed,
    Http2,
    Refused(StatusCode, SystemTime),
}

/// The connection's one timer, for the idle and header-read clocks; None until a head
/// is waited for (a new connection's request that came with it needs none).
struct Clock(Option<Timer>);

/// The timer moves lazily: a later deadline is only noted, and the timer, when it runs
/// out before it, is moved to it then. Moved to each request's idle deadline, it cost a
/// reset in tokio's timer wheel per request (~300 instructions with the clock read).
struct Timer {
    sleep: Pin<Box<Sleep>>,
    /// When the clock runs out: the sleep's deadline or later.
    deadline: Instant,
}

impl Clock {
    /// Runs out at `deadline` (the time read now plus `after`); returns the time read.
    fn set(&mut self, after: std::time::Duration) -> Instant {
        let now = Instant::now();
        let deadline = deadline_after(now, after);
        match &mut self.0 {
            Some(timer) => {
                if deadline < timer.sleep.deadline() {
                    timer.sleep.as_mut().reset(deadline);
                }
                timer.deadline = deadline;
            }
            None => {
                self.0 = Some(Timer {
                    sleep: Box::pin(sleep_until(deadline)),
                    deadline,
                });
            }
        }
        now
    }

    /// The timer; `set` first.
    fn timer(&mut self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(|cx| {
            let Some(timer) = &mut self.0 else {
                return Poll::Pending;
            };
            loop {
                std::task::ready!(timer.sleep.as_mut().poll(cx));
                if timer.sleep.deadline() >= timer.deadline {
                    return Poll::Ready(());
                }
                // An earlier deadline, since moved on: the sleep goes on to the clock's.
                let deadline = timer.deadline;
                timer.sleep.as_mut().reset(deadline);
            }
        })
    }
}

/// Waits for the next head: the idle clock until its first byte, then the header-read
/// clock until it is whole (408 when it runs out). Both are `clock`, the connection's one
/// timer, moved to each deadline. A new connection's first read is tried before any
/// wait (`IdleWait::read_now`).
async fn read_head<R: AsyncRead + IdleWait + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
    client: &Client,
    first: bool,
    clock: &mut Clock,
) -> HeadRead {
    let limits = &client.ctx.limits;
    // The listener stopped: no wait of its own, the connection's drain registration
    // (`proxy::until_drained`) wakes the task when it does.
    let drain = client.connection.drain();
    let mut stopping = std::future::poll_fn(|_| {
        if drain.stopping() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    });
    // When the head's first bytes were seen, once a read left it incomplete: a head that
    // arrives whole (the usual case) never starts the header-read clock.
    let mut head_started: Option<Instant> = None;
    // Whether the idle clock runs: set when the head's first byte is waited for.
    let mut idle = false;
    if first && buf.capacity() == 0 {
        match reader.read_now(buf) {
            Some(Ok(0)) => return HeadRead::Closed,
            Some(Err(e))
                if !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
                ) =>
            {
                return HeadRead::Closed;
            }
            _ => {}
        }
    }
    loop {
        if !buf.is_empty() {
            if first && buf.len() <= HTTP2_PREFACE.len() && HTTP2_PREFACE.starts_with(buf) {
                if buf.len() == HTTP2_PREFACE.len() {
                    return HeadRead::Http2;
                }
            } else if first && buf.starts_with(HTTP2_PREFACE) {
                return HeadRead::Http2;
            } else {
                match head::parse(buf) {
                    Ok(Some(head)) => return HeadRead::Head(head),
                    Ok(None) => {}
                    Err(e) => {
                        debug!(error = %e, "request head refused");
                        let started = head_started.map_or_else(SystemTime::now, wall_clock_at);
                        return HeadRead::Refused(e.status(), started);
                    }
                }
            }
            if head_started.is_none() {
                head_started = Some(clock.set(limits.header_read_timeout));
            }
        } else if !idle {
            clock.set(limits.idle_timeout);
            idle = true;
        }
        if buf.capacity() == 0 {
            tokio::select! {
                ready = std::future::poll_fn(|cx| reader.poll_idle(cx)) => {
                    if ready.is_err() {
                        return HeadRead::Closed;
                    }
                }
                () = clock.timer() => {
                    debug!("idle keep-alive connection closed");
                    return HeadRead::Closed;
                }
                () = &mut stopping => return HeadRead::Closed,
            }
            match reader.read_ready(buf) {
                Some(Ok(0)) => return HeadRead::Closed,
                Some(Ok(_)) => continue,
                Some(Err(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
                    ) =>
                {
                    continue;
                }
                Some(Err(_)) => return HeadRead::Closed,
                None => {}
            }
        }
        buffer::make_room(buf);
        // The read first: it is ready at once after the idle wait, and then neither the
        // clock nor the shutdown watch is polled (and registered) for nothing.
        tokio::select! {
            biased;
            read = reader.read_buf(buf) => match read {
                Ok(0) | Err(_) => return HeadRead::Closed,
                Ok(_) => {}
            },
            () = clock.timer() => {
                return match head_started {
                    Some(started) => {
                        debug!("request head too slow: 408");
                        HeadRead::Refused(StatusCode::REQUEST_TIMEOUT, wall_clock_at(started))
                    }
                    None => {
                        debug!("idle keep-alive connection closed");
                        HeadRead::Closed
                    }
                };
            }
            () = &mut stopping, if buf.is_empty() => return HeadRead::Closed,
        }
    }
}

/// The wall-clock time of `instant`, for the log of a refused head: read only then.
fn wall_clock_at(instant: Instant) -> SystemTime {
    let now = SystemTime::now();
    now.checked_sub(instant.elapsed()).unwrap_or(now)
}

enum Exchanged {
    KeepAlive,
    Close,
    /// The answer switched protocols: the connection goes to the request's upgrade.
    Upgrade(oneshot::Sender<Upgraded>),
}

/// One request and its response; the body is read while the handler runs and while the
/// response is written (an upstream may answer before it has read the whole body).
///
/// The head comes boxed as it was read: unboxed, it would be copied out of its box and
/// into this future's arguments (and its room kept in the future beside its fields).
///
/// Not an async fn, and inlined: made by a call (in another codegen unit), the future
/// was made whole on the stack and then copied into the box `serve` keeps it in (a
/// memcpy of its ~4 KB per request); made in `serve` (`boxed::pinned`), only its
/// arguments are written, into the box. The block also uses the arguments in place (an
/// async fn copies them into locals, rust-lang/rust#62958).
#[allow(clippy::manual_async_fn)] // on purpose: see above
#[inline]
fn exchange<R, W>(
    head: Box<Head>,
    reader: &mut R,
    writer: &mut W,
    buf: &mut BytesMut,
    client: &Client,
) -> impl Future<Output = Exchanged>
where
    R: AsyncRead + IdleWait + Unpin,
    W: AsyncWrite + Unpin,
{
    async move {
        let Head {
            request,
            framing,
            keep_alive,
            expect_continue,
            upgrade,
            facts,
            ..
        } = *head;
        let method = request.method().clone();
        let version = request.version();
        let (mut pump, body, mut wanted) = BodyPump::new(framing, expect_continue);
        let mut request = request.map(|()| ClientBody::Own(body));
        let mut upgrade_sender = None;
        if upgrade {
            let (pending, sender) = PendingUpgrade::new();
            request.extensions_mut().insert(pending);
            upgrade_sender = Some(sender);
        }
        // In a block of its own: the handler's future (the largest part of this one) and
        // the response's writer then share their room in this future's layout.
        let forward::Answered { response, passed } = {
            // Made inside `pin!`: made first into a local, the future was copied whole into
            // the slot `pin!` keeps (the same below for the response's writer).
            let mut handler = std::pin::pin!(client.connection.answer(request, facts));
            loop {
                let need_read = pump.advance(buf);
                tokio::select! {
                    biased;
                    response = &mut handler => break response,
                    asked = async {
                        match wanted.as_mut() {
                            Some(wanted) => wanted.await.is_ok(),
                            None => false,
                        }
                    }, if wanted.is_some() => {
                        wanted = None;
                        if asked && writer.write_all(CONTINUE).await.is_err() {
                            return Exchanged::Close;
                        }
                    }
                    sent = pump.send(), if pump.pending.is_some() => sent,
                    read = read_body(reader, buf), if need_read && wanted.is_none() => {
                        pump.note_read(read);
                    }
                }
            }
        };
        let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS
            || (method == Method::CONNECT && response.status().is_success());
        let answering = Answering {
            method: &method,
            version,
            // Draining: the answer says `Connection: close`, and the connection closes after it.
            keep_alive: keep_alive && !client.connection.drain().stopping(),
        };
        // The 100 was never sent: the client still holds its body back.
        let body_withheld = wanted.is_some();
        let written = {
            let mut write = std::pin::pin!(response::write(
                writer,
                response,
                passed.as_deref(),
                answering
            ));
            loop {
                let need_read = !body_withheld && pump.advance(buf);
                tokio::select! {
                    biased;
                    written = &mut write => break written,
                    sent = pump.send(), if pump.pending.is_some() => sent,
                    read = read_body(reader, buf), if need_read => pump.note_read(read),
                }
            }
        };
        let written = match written {
            Ok(written) => written,
            Err(e) => {
                debug!(error = %e, "response not written whole");
                return Exchanged::Close;
            }
        };
        if switching && let Some(sender) = upgrade_sender {
            return Exchanged::Upgrade(sender);
        }
        if written == Written::Close || !pump.finished() {
            // Unread body bytes (abandoned by the handler, or never asked for) would be
            // read as the next request.
            return Exchanged::Close;
        }
        Exchanged::KeepAlive
    }
}

/// The request body's side of the connection loop: decodes frames out of the buffer and
/// sends them one at a time.
struct BodyPump {
    decoder: Decoder,
    sender: Option<handoff::Sender<BodyFrame>>,
    /// A frame decoded and not yet taken by the handler.
    pending: Option<BodyFrame>,
    /// The whole body came off the wire (or it broke, which also ends it).
    ended: bool,
    broken: bool,
}

enum Decoder {
    Length(u64),
    Chunked(ChunkedDecoder),
}

impl BodyPump {
    /// The pump, the body the handler reads, and (for 100-continue) what tells when the
    /// body is first read.
    fn new(
        framing: BodyFraming,
        expect_continue: bool,
    ) -> (Self, RequestBody, Option<oneshot::Receiver<()>>) {
        let decoder = match framing {
            BodyFraming::None => {
                let pump = BodyPump {
                    decoder: Decoder::Length(0),
                    sender: None,
                    pending: None,
                    ended: true,
                    broken: false,
                };
                return (pump, RequestBody::empty(), None);
            }
            BodyFraming::Length(length) => Decoder::Length(length),
            BodyFraming::Chunked => Decoder::Chunked(ChunkedDecoder::new()),
        };
        let length = match decoder {
            Decoder::Length(length) => Some(length),
            Decoder::Chunked(_) => None,
        };
        let (sender, receiver) = handoff::channel();
        let (wanted_sender, wanted) = if expect_continue {
            let (sender, receiver) = oneshot::channel();
            (Some(sender), Some(receiver))
        } else {
            (None, None)
        };
        let pump = BodyPump {
            decoder,
            sender: Some(sender),
            pending: None,
            ended: false,
            broken: false,
        };
        (
            pump,
            RequestBody::streamed(receiver, wanted_sender, length),
            wanted,
        )
    }

    /// Decodes the next frame out of `buf` if none is waiting; true when bytes must be
    /// read first (`read_body`).
    fn advance(&mut self, buf: &mut BytesMut) -> bool {
        if self.ended || self.pending.is_some() || self.sender.is_none() {
            return false;
        }
        let decoded = match &mut self.decoder {
            Decoder::Length(remaining) => {
                if buf.is_empty() {
                    return true;
                }
                let take = usize::try_from(*remaining)
                    .unwrap_or(usize::MAX)
                    .min(buf.len());
                *remaining -= take as u64;
                if *remaining == 0 {
                    self.ended = true;
                }
                Ok(Decoded::Data(buffer::take(buf, take)))
            }
            Decoder::Chunked(decoder) => decoder.decode(buf),
        };
        match decoded {
            Ok(Decoded::NeedMore) => return true,
            Ok(Decoded::Data(data)) => self.pending = Some(Ok(Frame::data(data))),
            Ok(Decoded::End(trailers)) => {
                self.ended = true;
                if trailers.is_empty() {
                    self.sender = None;
                } else {
                    self.pending = Some(Ok(Frame::trailers(trailers)));
                }
            }
            Err(e) => {
                self.fail(e.into());
            }
        }
        false
    }

    fn fail(&mut self, error: BodyError) {
        self.ended = true;
        self.broken = true;
        self.pending = Some(Err(error));
    }

    fn note_read(&mut self, read: std::io::Result<usize>) {
        match read {
            Ok(0) => self.fail(BodyError::Truncated),
            Ok(_) => {}
            Err(e) => self.fail(e.into()),
        }
    }

    /// Hands the waiting frame to the handler when it has room for it; the channel
    /// closes after the last one.
    async fn send(&mut self) {
        let delivered = match &self.sender {
            Some(sender) => match sender.ready().await {
                Ok(()) => {
                    if let Some(frame) = self.pending.take() {
                        sender.put(frame);
                    }
                    true
                }
                // The handler dropped the body: nothing more is read.
                Err(_) => false,
            },
            None => false,
        };
        if !delivered {
            self.pending = None;
            self.sender = None;
        } else if self.ended && self.pending.is_none() {
            self.sender = None;
        }
    }

    /// The body was read whole and soundly: the next request starts right after it.
    fn finished(&self) -> bool {
        self.ended && !self.broken && self.pending.is_none()
    }
}
