//! A strict HTTP/1 framing check in front of hyper, on the bytes a client sends.
//!
//! hyper's parser (httparse) is lenient where a proxy must not be: it accepts bare LF line
//! endings, merges identical duplicate `Content-Length` headers, and quietly lets
//! `Transfer-Encoding` win over `Content-Length`. A backend that reads such a request
//! differently could see a second, smuggled request. This guard follows the message
//! framing of every request on the connection (heads, Content-Length bodies, chunked
//! bodies), holds each head back until it is complete, and when a head or a chunk-size
//! line is ambiguous it corrupts its first byte before hyper sees it. hyper then rejects
//! the request with 400 (or fails the body, which the proxy answers with 400), so the
//! request never reaches an upstream. HTTP/2 (the connection preface, as a connection's
//! first bytes) and upgraded connections pass through untouched. A request asking for an
//! upgrade (`Upgrade`, `CONNECT`) does not switch the checks off by itself: the bytes
//! after it wait until the answer is written, and only a `101` (a 2xx to `CONNECT`) hands
//! the connection over; any other answer and those bytes are framed as the next request.
//!
//! Because it knows where each request begins, the guard also keeps the connection's
//! clocks (`limits.rs`): the header-read timeout runs from a head's first byte until the
//! head is complete (408, then close), the idle timeout while a keep-alive connection
//! waits between requests (close; on HTTP/2, while no bytes move either way, since the
//! guard does not follow HTTP/2's streams). It cuts off a chunked body that grows past the body
//! limit, so that hyper fails the body with `BodyTooLarge` and the proxy answers 413.

use std::{
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
    time::{Duration, SystemTime},
};

use http::StatusCode;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    time::{Instant, Sleep},
};
use tracing::debug;

use super::{
    connection_log,
    context::ProxyContext,
    limits::{BodyTooLarge, Limits},
};

/// Heads longer than this are passed on unchecked; hyper answers them 431 anyway (its
/// limit is lower).
const MAX_HELD_HEAD: usize = 128 * 1024;
/// A chunk-size line longer than this (extensions included) is rejected.
const MAX_CHUNK_LINE: usize = 4096;
/// What hyper sees instead of the first byte of a rejected head: not a token character,
/// so the request line fails to parse (400).
const POISON_HEAD: u8 = 0x01;
/// What hyper sees instead of the first byte of a rejected chunk-size line: not a hex
/// digit, so the body fails (the proxy answers 400).
const POISON_CHUNK: u8 = b'z';
/// Envoy's answer when a head's time runs out; the connection closes after it.
const REQUEST_TIMEOUT_ANSWER: &[u8] =
    b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
/// HTTP/2's connection preface: only a connection's first bytes, whole, switch to HTTP/2.
const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Bytes a client may send after an upgrade request before it is answered; beyond it the
/// guard stops reading until the answer decides what they are.
const MAX_PENDING_UPGRADE: usize = 64 * 1024;
/// Largest read of request-body bytes (nginx's default `client_body_buffer_size` on
/// 64-bit systems): hyper's read buffer grows only when a read fills it.
const BODY_READ_CHUNK: usize = 16 * 1024;

#[derive(Debug)]
enum State {
    /// Reading a request head (held back until complete).
    Head,
    /// A Content-Length body: this many bytes to pass.
    Body(u64),
    /// A chunk-size line (held back until complete).
    ChunkSize,
    ChunkData(u64),
    /// The CRLF after a chunk's data.
    ChunkDataEnd(u8),
    /// Trailer lines after the last chunk, until an empty line.
    Trailers {
        line_len: usize,
    },
    /// An upgraded connection (after its 101), or a request hyper will reject anyway.
    Passthrough,
    /// HTTP/2 (the connection preface): passed through; only the idle clock runs, over
    /// bytes in either direction, as hyper has no idle timeout of its own for HTTP/2.
    Http2,
    /// A chunked body grew past the body limit: reads fail with `BodyTooLarge`.
    Cut(u64),
    /// A timeout closed the connection: reads end.
    Closed,
}

/// Which wait the guard's timer measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wait {
    /// Between requests, nothing of the next head yet: the idle timeout.
    Idle,
    /// A head has begun: the header-read timeout.
    Head,
}

/// Whom the guard's own answers are logged for.
struct Origin {
    ctx: Arc<ProxyContext>,
    peer: SocketAddr,
    local: SocketAddr,
}

pub(super) struct H1Guard<S> {
    inner: S,
    state: State,
    /// Bytes held back: the head or chunk-size line being read.
    held: Vec<u8>,
    /// Bytes cleared to go up to hyper, from `released_pos` on.
    released: Vec<u8>,
    released_pos: usize,
    limits: Limits,
    /// None in unit tests.
    origin: Option<Origin>,
    /// Armed the first time the guard waits for the client; reset only when the kind of
    /// wait changes or it fires, so a keep-alive request costs no timer operation.
    timer: Option<Pin<Box<Sleep>>>,
    wait: Wait,
    /// When bytes last went out (on HTTP/2: moved either way), if since the timer was
    /// armed: the deadline counts from then (a response in progress, or answers on a
    /// connection that is not idle).
    last_activity: Option<Instant>,
    /// Bytes went out while the current head was being read: a response may still be
    /// unfinished, so a 408 could land inside it; such a connection just closes.
    wrote_during_head: bool,
    /// A head went up to hyper and nothing has been written since: its answer is being
    /// worked on, and no clock runs (a pipelined head waits its turn).
    awaiting_answer: bool,
    /// When the head being read began, for the access log.
    head_started: SystemTime,
    /// Body bytes of the current chunked request so far.
    body_bytes: u64,
    /// Nothing but a prefix of the HTTP/2 preface has arrived on this connection yet.
    preface_possible: bool,
    /// An upgrade (or CONNECT) request went up and its answer is not decided yet.
    upgrade: Option<PendingUpgrade>,
}

/// An upgrade request waiting for its answer, and what the client sent after it.
#[derive(Debug, Default)]
struct PendingUpgrade {
    connect: bool,
    /// Bytes after the request, unframed until the answer says what they are.
    after: Vec<u8>,
    /// The start of the answer's status line ("HTTP/1.1 101").
    status_line: Vec<u8>,
    /// Inside an interim (1xx) answer's head: its last bytes, to find its end.
    interim_tail: Option<[u8; 4]>,
}

/// What the answer's first bytes decided for an upgrade request.
#[derive(Debug, PartialEq, Eq)]
enum UpgradeVerdict {
    Undecided,
    Upgraded,
    Refused,
}

impl PendingUpgrade {
    /// Follows the answer's bytes: interim 1xx answers (other than 101) are skipped, the
    /// first final status decides.
    fn observe(&mut self, mut written: &[u8]) -> UpgradeVerdict {
        const STATUS_LINE: usize = b"HTTP/1.1 101".len();
        while !written.is_empty() {
            if let Some(tail) = &mut self.interim_tail {
                let byte = written[0];
                written = &written[1..];
                tail.rotate_left(1);
                tail[3] = byte;
                if tail == b"\r\n\r\n" {
                    self.interim_tail = None;
                    self.status_line.clear();
                }
                continue;
            }
            let take = (STATUS_LINE - self.status_line.len()).min(written.len());
            self.status_line.extend_from_slice(&written[..take]);
            written = &written[take..];
            if self.status_line.len() < STATUS_LINE {
                return UpgradeVerdict::Undecided;
            }
            let status = &self.status_line[9..];
            let upgraded = if self.connect {
                status.first() == Some(&b'2')
            } else {
                status == b"101"
            };
            if upgraded {
                return UpgradeVerdict::Upgraded;
            }
            if status.first() == Some(&b'1') && status != b"101" {
                self.interim_tail = Some([0; 4]);
                continue;
            }
            return UpgradeVerdict::Refused;
        }
        UpgradeVerdict::Undecided
    }
}

impl<S> H1Guard<S> {
    pub(super) fn new(
        inner: S,
        ctx: &Arc<ProxyContext>,
        peer: SocketAddr,
        local: SocketAddr,
    ) -> Self {
        let origin = Origin {
            ctx: ctx.clone(),
            peer,
            local,
        };
        let mut guard = Self::with_limits(inner, ctx.limits);
        guard.origin = Some(origin);
        guard
    }

    fn with_limits(inner: S, limits: Limits) -> Self {
        H1Guard {
            inner,
            state: State::Head,
            held: Vec::new(),
            released: Vec::new(),
            released_pos: 0,
            limits,
            origin: None,
            timer: None,
            wait: Wait::Idle,
            last_activity: None,
            wrote_during_head: false,
            awaiting_answer: false,
            head_started: SystemTime::UNIX_EPOCH,
            body_bytes: 0,
            preface_possible: true,
            upgrade: None,
        }
    }

    /// Follows the framing over `bytes`, moving what may go up into `released`.
    fn process(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            match &mut self.state {
                State::Passthrough | State::Http2 => {
                    self.released.extend_from_slice(bytes);
                    return;
                }
                // Nothing after the cut goes up.
                State::Cut(_) | State::Closed => return,
                State::Body(remaining) | State::ChunkData(remaining) => {
                    let take = usize::try_from(*remaining)
                        .unwrap_or(usize::MAX)
                        .min(bytes.len());
                    self.released.extend_from_slice(&bytes[..take]);
                    bytes = &bytes[take..];
                    *remaining -= take as u64;
                    if *remaining == 0 {
                        self.state = match self.state {
                            State::ChunkData(_) => State::ChunkDataEnd(2),
                            _ => State::Head,
                        };
                    }
                }
                State::ChunkDataEnd(left) => {
                    let take = usize::from(*left).min(bytes.len());
                    self.released.extend_from_slice(&bytes[..take]);
                    bytes = &bytes[take..];
                    *left -= take as u8;
                    if *left == 0 {
                        self.state = State::ChunkSize;
                    }
                }
                State::Trailers { line_len } => {
                    let byte = bytes[0];
                    bytes = &bytes[1..];
                    self.released.push(byte);
                    match byte {
                        b'\n' if *line_len == 0 => self.state = State::Head,
                        b'\n' => *line_len = 0,
                        b'\r' => {}
                        _ => *line_len += 1,
                    }
                }
                State::Head if self.upgrade.is_some() => {
                    // After an upgrade request: what these bytes are depends on the answer.
                    if let Some(pending) = &mut self.upgrade {
                        pending.after.extend_from_slice(bytes);
                    }
                    return;
                }
                State::Head if self.preface_possible => {
                    let seen = self.held.len();
                    let take = (HTTP2_PREFACE.len() - seen).min(bytes.len());
                    if bytes[..take] == HTTP2_PREFACE[seen..seen + take] {
                        self.held.extend_from_slice(&bytes[..take]);
                        bytes = &bytes[take..];
                        if self.held.len() == HTTP2_PREFACE.len() {
                            self.preface_possible = false;
                            self.state = State::Http2;
                            self.release_held();
                        }
                        continue;
                    }
                    // Not HTTP/2: what was held is the start of an HTTP/1 head.
                    self.preface_possible = false;
                    let held = std::mem::take(&mut self.held);
                    self.process(&held);
                }
                State::Head | State::ChunkSize => {
                    let Some(newline) = bytes.iter().position(|&b| b == b'\n') else {
                        self.held.extend_from_slice(bytes);
                        self.check_held_size();
                        return;
                    };
                    self.held.extend_from_slice(&bytes[..=newline]);
                    bytes = &bytes[newline + 1..];
                    if matches!(self.state, State::ChunkSize) {
                        self.end_chunk_size_line();
                    } else if self.held.ends_with(b"\r\n\r\n")
                        || self.held.ends_with(b"\n\n")
                        || self.held.ends_with(b"\n\r\n") && self.held.len() > 3
                    {
                        self.end_head();
                    } else if self.held == b"\r\n" || self.held == b"\n" {
                        // Empty lines before a request line are ignored (RFC 9112 §2.2).
                        self.preface_possible = false;
                        self.release_held();
                    } else {
                        self.check_held_size();
                    }
                }
            }
        }
    }

    /// The common case without a copy: nothing held and the read is exactly one whole
    /// head (a keep-alive request without a body, or whose body comes in later reads).
    /// Reaches the verdict `process` would (same head end, same framing check, the
    /// same poisoned first byte) with the bytes left where they are; false for anything
    /// else, which `process` handles.
    fn pass_whole_head(&mut self, fresh: &mut [u8]) -> bool {
        if !matches!(self.state, State::Head)
            || self.upgrade.is_some()
            || !self.held.is_empty()
            || !self.released.is_empty()
            || fresh.len() > MAX_HELD_HEAD
            || !fresh.ends_with(b"\r\n\r\n")
            || fresh.starts_with(b"PRI ")
        {
            return false;
        }
        // `process` ends a head at the first empty line after the request line (and
        // skips empty lines before it): that line must be the read's last.
        let mut line_start = 0;
        for (index, &byte) in fresh.iter().enumerate() {
            if byte != b'\n' {
                continue;
            }
            let line = &fresh[line_start..=index];
            let empty = line == b"\n" || line == b"\r\n";
            if empty {
                if line_start == 0 || index + 1 != fresh.len() {
                    return false;
                }
                break;
            }
            line_start = index + 1;
        }
        self.preface_possible = false;
        self.awaiting_answer = true;
        self.body_bytes = 0;
        self.state = match head_framing(fresh) {
            Ok(framing) => self.follow(framing),
            Err(()) => {
                fresh[0] = POISON_HEAD;
                State::Passthrough
            }
        };
        true
    }

    /// The state after a sound head; an upgrade request's answer is awaited.
    fn follow(&mut self, framing: Framing) -> State {
        if let Some(connect) = framing.upgrade {
            self.upgrade = Some(PendingUpgrade {
                connect,
                ..PendingUpgrade::default()
            });
        }
        framing.next
    }

    /// Follows the answer to a pending upgrade request; true once it decided: the
    /// connection handed over (101, or 2xx to CONNECT), or what followed the request
    /// framed as HTTP/1.
    fn decide_upgrade(&mut self, written: &[u8]) -> bool {
        let Some(pending) = &mut self.upgrade else {
            return false;
        };
        let verdict = pending.observe(written);
        if verdict == UpgradeVerdict::Undecided {
            return false;
        }
        let after = self.upgrade.take().map(|p| p.after).unwrap_or_default();
        if verdict == UpgradeVerdict::Upgraded {
            self.state = State::Passthrough;
            self.released.extend_from_slice(&after);
        } else {
            self.process(&after);
        }
        true
    }

    fn check_held_size(&mut self) {
        let limit = match self.state {
            State::ChunkSize => MAX_CHUNK_LINE,
            _ => MAX_HELD_HEAD,
        };
        if self.held.len() > limit {
            // Something hyper will refuse by size: not ours to frame.
            if matches!(self.state, State::ChunkSize)
                && let Some(first) = self.held.first_mut()
            {
                *first = POISON_CHUNK;
            }
            self.state = State::Passthrough;
            self.release_held();
        }
    }

    fn release_held(&mut self) {
        if self.released.is_empty() {
            self.released = std::mem::take(&mut self.held);
        } else {
            self.released.append(&mut self.held);
            self.held = Vec::new();
        }
    }

    fn end_head(&mut self) {
        self.awaiting_answer = true;
        self.body_bytes = 0;
        self.preface_possible = false;
        let verdict = head_framing(&self.held);
        self.state = match verdict {
            Ok(framing) => self.follow(framing),
            Err(()) => {
                if let Some(first) = self.held.first_mut() {
                    *first = POISON_HEAD;
                }
                State::Passthrough
            }
        };
        self.release_held();
    }

    fn end_chunk_size_line(&mut self) {
        match chunk_size(&self.held) {
            Some(0) => self.state = State::Trailers { line_len: 0 },
            Some(size) => {
                self.body_bytes = self.body_bytes.saturating_add(size);
                if let Some(limit) = self.limits.max_request_body_bytes
                    && self.body_bytes > limit
                {
                    // This chunk would cross the limit: it and everything after stay here.
                    self.held.clear();
                    self.state = State::Cut(limit);
                    return;
                }
                self.state = State::ChunkData(size);
            }
            None => {
                if let Some(first) = self.held.first_mut() {
                    *first = POISON_CHUNK;
                }
                self.state = State::Passthrough;
            }
        }
        self.release_held();
    }
}

/// What a sound head says about what follows it.
struct Framing {
    /// The body's framing (State::Head when there is none).
    next: State,
    /// Some when the request asks for an upgrade: true for CONNECT.
    upgrade: Option<bool>,
}

/// The framing of the body after a complete head, or Err when the head is ambiguous:
/// a bare LF, Content-Length more than once, or Content-Length beside Transfer-Encoding.
fn head_framing(head: &[u8]) -> Result<Framing, ()> {
    let head = head.strip_suffix(b"\r\n\r\n").ok_or(())?;
    let lines: Vec<&[u8]> = head.split(|&b| b == b'\n').collect();
    let (request_line, header_lines) = lines.split_first().ok_or(())?;
    let last = header_lines.len().saturating_sub(1);
    // Every line ends in CRLF; the head's last line lost its CRLF to strip_suffix.
    let request_line = if header_lines.is_empty() {
        request_line
    } else {
        request_line.strip_suffix(b"\r").ok_or(())?
    };
    if request_line.contains(&b'\r') {
        return Err(());
    }
    let mut content_length: Option<u64> = None;
    let mut content_lengths = 0;
    let mut chunked = false;
    let mut transfer_encoding = false;
    let connect = request_line.starts_with(b"CONNECT ");
    let mut upgrade = connect;
    for (index, line) in header_lines.iter().enumerate() {
        let line = if index == last {
            line
        } else {
            line.strip_suffix(b"\r").ok_or(())?
        };
        if line.contains(&b'\r') {
            return Err(());
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            // No colon (or obs-fold): hyper rejects it; nothing to frame.
            return Ok(Framing {
                next: State::Passthrough,
                upgrade: None,
            });
        };
        let name = &line[..colon];
        let value = line[colon + 1..].trim_ascii();
        if name.eq_ignore_ascii_case(b"content-length") {
            content_lengths += 1;
            content_length = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok());
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            transfer_encoding = true;
            chunked = value
                .rsplit(|&b| b == b',')
                .next()
                .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if name.eq_ignore_ascii_case(b"upgrade") {
            upgrade = true;
        }
    }
    if content_lengths > 1 || (content_lengths > 0 && transfer_encoding) {
        return Err(());
    }
    let next = if transfer_encoding {
        if chunked {
            State::ChunkSize
        } else {
            State::Passthrough
        }
    } else {
        match (content_lengths, content_length) {
            (0, _) | (_, Some(0)) => State::Head,
            (_, Some(n)) => State::Body(n),
            // Unparseable length: hyper rejects it.
            (_, None) => State::Passthrough,
        }
    };
    Ok(Framing {
        next,
        upgrade: upgrade.then_some(connect),
    })
}

/// The size of a chunk-size line (`1a;ext=1\r\n`), None when malformed.
fn chunk_size(line: &[u8]) -> Option<u64> {
    let line = line.strip_suffix(b"\r\n")?;
    if line.contains(&b'\r') || line.contains(&b'\n') {
        return None;
    }
    let digits = line.split(|&b| b == b';').next()?.trim_ascii_end();
    if digits.is_empty() || digits.len() > 15 || !digits.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    u64::from_str_radix(std::str::from_utf8(digits).ok()?, 16).ok()
}

impl<S: AsyncWrite + Unpin> H1Guard<S> {
    /// The answer to a pending upgrade request is being written: hand the connection
    /// over on 101 (2xx to CONNECT), or frame what followed the request as HTTP/1.
    fn observe_answer(&mut self, cx: &mut Context<'_>, written: &[u8]) {
        if !self.decide_upgrade(written) {
            return;
        }
        if matches!(self.state, State::Head) && !self.awaiting_answer {
            self.start_clock_after_answer(cx);
        }
        // The read side may be parked on this decision.
        cx.waker().wake_by_ref();
    }

    /// Called when the client has nothing more for now: runs the clock of the current
    /// wait. Pending while time remains; when it runs out, answers 408 if a head had
    /// begun (and nothing else is on the wire), closes, and reports end of stream.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !matches!(self.state, State::Head | State::Http2)
            || self.awaiting_answer
            || self.upgrade.is_some()
        {
            return Poll::Pending;
        }
        let (wait, length) = self.arm_clock();
        let Some(timer) = self.timer.as_mut() else {
            return Poll::Pending;
        };
        loop {
            ready!(timer.as_mut().poll(cx));
            let Some(active) = self.last_activity.take() else {
                break;
            };
            // Bytes moved since the timer was armed: measure from the last of them.
            self.wrote_during_head |= wait == Wait::Head;
            match active.checked_add(length) {
                Some(deadline) if deadline > Instant::now() => timer.as_mut().reset(deadline),
                _ => break,
            }
        }
        match wait {
            Wait::Idle => debug!(timeout = ?length, "idle keep-alive connection closed"),
            Wait::Head if self.wrote_during_head => {
                debug!(timeout = ?length, "request head too slow, behind a response: closed");
            }
            Wait::Head => {
                debug!(timeout = ?length, "request head too slow: 408");
                // Best effort: an answer that does not fit the send buffer at once is
                // dropped; the connection closes either way.
                let written = Pin::new(&mut self.inner).poll_write(cx, REQUEST_TIMEOUT_ANSWER);
                if let Poll::Ready(Ok(n)) = written
                    && n == REQUEST_TIMEOUT_ANSWER.len()
                {
                    let _ = Pin::new(&mut self.inner).poll_flush(cx);
                    if let Some(origin) = &self.origin {
                        connection_log::connection_answer(
                            &origin.ctx,
                            origin.local,
                            origin.peer,
                            StatusCode::REQUEST_TIMEOUT,
                            self.head_started,
                        );
                    }
                }
            }
        }
        self.state = State::Closed;
        self.held = Vec::new();
        self.timer = None;
        Poll::Ready(Ok(()))
    }

    /// The clock of the current wait (idle, or a head under way): armed when the kind of
    /// wait changes, kept otherwise.
    fn arm_clock(&mut self) -> (Wait, Duration) {
        let wait = if self.held.is_empty() {
            Wait::Idle
        } else {
            Wait::Head
        };
        let length = match wait {
            Wait::Idle => self.limits.idle_timeout,
            Wait::Head => self.limits.header_read_timeout,
        };
        if self.timer.is_none() || self.wait != wait {
            self.wait = wait;
            self.last_activity = None;
            if wait == Wait::Head {
                self.wrote_during_head = false;
                self.head_started = SystemTime::now();
            }
            let deadline = super::limits::deadline_after(Instant::now(), length);
            match &mut self.timer {
                Some(timer) => timer.as_mut().reset(deadline),
                None => self.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
        }
        (wait, length)
    }

    fn note_written(&mut self, cx: &mut Context<'_>, written: &Poll<io::Result<usize>>) {
        if let Poll::Ready(Ok(n)) = written
            && *n > 0
        {
            self.last_activity = Some(Instant::now());
            if std::mem::replace(&mut self.awaiting_answer, false) {
                self.start_clock_after_answer(cx);
            }
        }
    }

    /// hyper need not poll the read side again once it has answered (its interest in
    /// the socket is already registered), so the next wait's clock starts here, with
    /// this task's waker: when it runs out, hyper's next read finds it expired.
    fn start_clock_after_answer(&mut self, cx: &mut Context<'_>) {
        if !matches!(self.state, State::Head | State::Http2) || self.upgrade.is_some() {
            return;
        }
        self.arm_clock();
        if let Some(timer) = self.timer.as_mut()
            && timer.as_mut().poll(cx).is_ready()
        {
            cx.waker().wake_by_ref();
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for H1Guard<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            if this.released_pos < this.released.len() {
                let ready = &this.released[this.released_pos..];
                let n = ready.len().min(buf.remaining());
                buf.put_slice(&ready[..n]);
                this.released_pos += n;
                if this.released_pos == this.released.len() {
                    // Idle keep-alive connections hold no buffer.
                    this.released = Vec::new();
                    this.released_pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            match this.state {
                State::Passthrough if this.held.is_empty() => {
                    return Pin::new(&mut this.inner).poll_read(cx, buf);
                }
                State::Http2 if this.held.is_empty() => {
                    let before = buf.filled().len();
                    if Pin::new(&mut this.inner).poll_read(cx, buf)?.is_pending() {
                        return this.poll_deadline(cx);
                    }
                    if buf.filled().len() > before {
                        this.last_activity = Some(Instant::now());
                    }
                    return Poll::Ready(Ok(()));
                }
                State::Cut(limit) => {
                    return Poll::Ready(Err(io::Error::other(BodyTooLarge { limit })));
                }
                State::Closed => return Poll::Ready(Ok(())),
                State::Head
                    if this
                        .upgrade
                        .as_ref()
                        .is_some_and(|p| p.after.len() >= MAX_PENDING_UPGRADE) =>
                {
                    // Enough waits for the upgrade's answer, which wakes this side.
                    return Poll::Pending;
                }
                _ => {}
            }
            // Read into the caller's buffer, then take the new bytes back out through
            // the framing check: no buffer of our own lives between reads.
            let before = buf.filled().len();
            if matches!(this.state, State::Body(_) | State::ChunkData(_))
                && buf.remaining() > BODY_READ_CHUNK
            {
                // hyper grows its read buffer whenever a read fills it and keeps it
                // grown: a client that bursts its body and then stalls would leave its
                // connection holding that buffer. Body reads come in bounded pieces.
                let mut window = ReadBuf::new(buf.initialize_unfilled_to(BODY_READ_CHUNK));
                if Pin::new(&mut this.inner)
                    .poll_read(cx, &mut window)?
                    .is_pending()
                {
                    return this.poll_deadline(cx);
                }
                let read = window.filled().len();
                buf.advance(read);
            } else if Pin::new(&mut this.inner).poll_read(cx, buf)?.is_pending() {
                return this.poll_deadline(cx);
            }
            let filled = buf.filled().len() - before;
            if filled > 0 && this.pass_whole_head(&mut buf.filled_mut()[before..]) {
                return Poll::Ready(Ok(()));
            }
            if filled > 0 {
                let fresh = buf.filled()[before..].to_vec();
                buf.set_filled(before);
                this.process(&fresh);
            }
            if filled == 0 {
                // End of stream: whatever is held goes up; hyper sees the truncation.
                // Bytes after an unanswered upgrade request are dropped, never passed
                // unframed.
                this.upgrade = None;
                this.state = State::Passthrough;
                this.release_held();
                if this.released.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for H1Guard<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.note_written(cx, &written);
        if self.upgrade.is_some()
            && let Poll::Ready(Ok(n)) = written
        {
            self.observe_answer(cx, &buf[..n.min(buf.len())]);
        }
        written
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.note_written(cx, &written);
        if self.upgrade.is_some()
            && let Poll::Ready(Ok(mut n)) = written
        {
            for buf in bufs {
                if n == 0 || self.upgrade.is_none() {
                    break;
                }
                let take = n.min(buf.len());
                self.observe_answer(cx, &buf[..take]);
                n -= take;
            }
        }
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The framing check without a socket, for the fuzzer (`fuzz/fuzz_targets/h1_framing.rs`).
#[doc(hidden)]
pub mod fuzzing {
    use super::{H1Guard, Limits};

    /// The first byte of a head the guard refused, as hyper sees it.
    pub const POISON_HEAD: u8 = super::POISON_HEAD;
    /// The first byte of a chunk-size line the guard refused.
    pub const POISON_CHUNK: u8 = super::POISON_CHUNK;

    /// What the guard made of some client bytes.
    #[derive(Debug, PartialEq, Eq)]
    pub struct Fed {
        /// The bytes cleared to go up to hyper.
        pub released: Vec<u8>,
        /// Bytes still held back (an unfinished head or chunk-size line).
        pub held: usize,
        /// The framing state reached, e.g. `Head`, `Body(5)`, `ChunkSize`, `Passthrough`.
        pub state: String,
        /// Bytes waiting for the answer to an upgrade request.
        pub awaiting_upgrade: Option<usize>,
    }

    /// Feeds `input` to a fresh guard in pieces of `step` bytes (at least 1).
    pub fn feed(input: &[u8], step: usize) -> Fed {
        let mut guard = H1Guard::with_limits((), Limits::default());
        for piece in input.chunks(step.max(1)) {
            guard.process(piece);
        }
        Fed {
            released: guard.released,
            held: guard.held.len(),
            state: format!("{:?}", guard.state),
            awaiting_upgrade: guard.upgrade.map(|p| p.after.len()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What hyper would be handed for `input`, fed in pieces of `step` bytes.
    fn guarded(input: &[u8], step: usize) -> Vec<u8> {
        guarded_with(input, step, Limits::default()).0
    }

    /// The bytes released and the state the guard ended in, under `limits`.
    fn guarded_with(input: &[u8], step: usize, limits: Limits) -> (Vec<u8>, State) {
        let mut guard = H1Guard::with_limits((), limits);
        for piece in input.chunks(step) {
            guard.process(piece);
        }
        guard.release_held();
        (guard.released, guard.state)
    }

    /// The copy-free path for a read that is one whole head agrees with `process` on
    /// every head it takes, and leaves the rest to it.
    #[test]
    fn whole_head_fast_path_agrees_with_process() {
        let heads: [(&[u8], bool); 9] = [
            (b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", true),
            (b"GET / HTTP/1.1\r\n\r\n", true),
            (
                b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\n",
                true,
            ),
            (
                b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
                true,
            ),
            (b"GET / HTTP/1.1\nHost: h\r\n\r\n", true),
            (
                b"GET / HTTP/1.1\r\nHost: h\n\nGET /x HTTP/1.1\r\n\r\n",
                false,
            ),
            (b"\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n", false),
            (b"GET / HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n", false),
            (b"PRI * HTTP/2.0\r\n\r\n", false),
        ];
        for (head, taken) in heads {
            let mut fast = H1Guard::with_limits((), Limits::default());
            let mut bytes = head.to_vec();
            assert_eq!(fast.pass_whole_head(&mut bytes), taken, "{head:?}");
            if !taken {
                continue;
            }
            let mut slow = H1Guard::with_limits((), Limits::default());
            slow.process(head);
            slow.release_held();
            assert_eq!(bytes, slow.released, "{head:?}");
            assert_eq!(
                format!("{:?}", fast.state),
                format!("{:?}", slow.state),
                "{head:?}"
            );
        }
    }

    #[test]
    fn clean_pipelined_requests_pass_unchanged() {
        let input = b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello\
GET /b HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5;x=1\r\nhello\r\n0\r\nT: 1\r\n\r\n\
GET /c HTTP/1.1\r\nHost: h\r\n\r\n";
        for step in [1, 3, 7, input.len()] {
            assert_eq!(guarded(input, step), input.to_vec(), "step {step}");
        }
    }

    #[test]
    fn ambiguous_heads_are_poisoned() {
        for bad in [
            &b"GET / HTTP/1.1\nHost: h\n\n"[..],
            b"GET / HTTP/1.1\r\nHost: h\nX: y\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nContent-Length: 4\r\n\r\nabcd",
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ] {
            assert_eq!(guarded(bad, 2)[0], POISON_HEAD, "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn a_smuggled_request_in_a_body_is_not_a_head() {
        // The second request hides in the first one's body: it is passed as body bytes.
        let input = b"POST / HTTP/1.1\r\nContent-Length: 20\r\n\r\nGET /x HTTP/1.1\n\n\n\n";
        assert_eq!(guarded(input, 4), input.to_vec());
    }

    #[test]
    fn bad_chunk_sizes_are_poisoned() {
        let input = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n";
        let out = guarded(input, 5);
        let body_start = input.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(0) + 4;
        assert_eq!(out[body_start], POISON_CHUNK);
        assert_eq!(chunk_size(b"1a;ext\r\n"), Some(26));
        assert_eq!(chunk_size(b"1a\n"), None);
        assert_eq!(chunk_size(b"-1\r\n"), None);
        assert_eq!(chunk_size(b"ffffffffffffffffff\r\n"), None);
    }

    /// A guard that has sent `head` up and written `answer` back.
    fn answered(head: &[u8], answer: &[u8]) -> H1Guard<()> {
        let mut guard = H1Guard::with_limits((), Limits::default());
        guard.process(head);
        guard.decide_upgrade(answer);
        guard
    }

    #[test]
    fn a_refused_upgrade_leaves_the_next_request_framed() {
        let smuggle = b"GET /x HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nA";
        for upgrade in [
            &b"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: foo\r\nConnection: upgrade\r\n\r\n"[..],
            b"CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n",
        ] {
            let mut input = upgrade.to_vec();
            input.extend_from_slice(smuggle);
            for answer in [
                &b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n"[..],
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 404 Not Found\r\n\r\n",
            ] {
                let guard = answered(&input, answer);
                assert_eq!(guard.released.len(), upgrade.len() + smuggle.len());
                assert_eq!(guard.released[upgrade.len()], POISON_HEAD, "{answer:?}");
                assert!(guard.upgrade.is_none());
            }
        }
    }

    #[test]
    fn an_accepted_upgrade_passes_what_follows_untouched() {
        let head =
            b"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n";
        let frames = b"\x81\x85\x00\x00\x00\x00hello\nGET / HTTP/1.1\n\n";
        let mut input = head.to_vec();
        input.extend_from_slice(frames);
        // Nothing after the head goes up before the answer.
        let mut waiting = H1Guard::with_limits((), Limits::default());
        waiting.process(&input);
        assert_eq!(waiting.released, head.to_vec());
        let guard = answered(&input, b"HTTP/1.1 101 Switching Protocols\r\n\r\n");
        assert_eq!(guard.released, input);
        assert!(matches!(guard.state, State::Passthrough));
    }

    #[test]
    fn pri_is_http2_only_as_a_whole_preface_first_on_the_connection() {
        // Not first: an HTTP/1 request like any other (hyper refuses its version).
        let input = b"GET / HTTP/1.1\r\nHost: h\r\n\r\nPRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
        let mut guard = H1Guard::with_limits((), Limits::default());
        guard.process(input);
        assert!(matches!(guard.state, State::Head), "{:?}", guard.state);
        // First, but not the whole preface: still HTTP/1, framed.
        let input = b"PRI * HTTP/2.0\r\n\r\nXX / HTTP/1.1\r\n";
        let mut guard = H1Guard::with_limits((), Limits::default());
        guard.process(input);
        assert!(matches!(guard.state, State::Head), "{:?}", guard.state);
        assert_eq!(guard.held, b"XX / HTTP/1.1\r\n".to_vec());
        // A prefix of the preface is held (and timed) like a head.
        let mut guard = H1Guard::with_limits((), Limits::default());
        guard.process(b"PRI * HTTP/2");
        assert!(guard.released.is_empty());
        assert!(matches!(guard.state, State::Head));
    }

    #[test]
    fn http2_preface_passes_through() {
        let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04";
        assert_eq!(guarded(preface, 3), preface.to_vec());
    }

    #[test]
    fn a_chunked_body_past_the_limit_is_cut_before_the_crossing_chunk() {
        let input = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
        let limit = |bytes| Limits {
            max_request_body_bytes: Some(bytes),
            ..Limits::default()
        };
        let (out, state) = guarded_with(input, 4, limit(10));
        assert!(out.ends_with(b"\r\n\r\n5\r\nhello\r\n"), "{out:?}");
        assert!(matches!(state, State::Cut(10)), "{state:?}");
        let (out, state) = guarded_with(input, 4, limit(11));
        assert_eq!(out, input.to_vec());
        assert!(matches!(state, State::Head), "{state:?}");
    }

    use crate::proxy::limits::{
        DEFAULT_MAX_REPLAY_BODY_BYTES, DEFAULT_MAX_REPLAY_BYTES_PER_CONNECTION,
        DEFAULT_PROXY_PROTOCOL_TIMEOUT, DEFAULT_STREAM_IDLE_TIMEOUT, DEFAULT_TCP_IDLE_TIMEOUT,
    };

    const CLOCKS: Limits = Limits {
        header_read_timeout: Duration::from_millis(100),
        idle_timeout: Duration::from_millis(300),
        max_request_body_bytes: None,
        stream_idle_timeout: DEFAULT_STREAM_IDLE_TIMEOUT,
        tcp_idle_timeout: DEFAULT_TCP_IDLE_TIMEOUT,
        max_replay_body_bytes: DEFAULT_MAX_REPLAY_BODY_BYTES,
        max_replay_bytes_per_connection: DEFAULT_MAX_REPLAY_BYTES_PER_CONNECTION,
        max_connections: None,
        proxy_protocol_timeout: DEFAULT_PROXY_PROTOCOL_TIMEOUT,
    };

    #[tokio::test]
    async fn a_slow_head_gets_408_and_ends_the_stream() -> io::Result<()> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut client, server) = tokio::io::duplex(4096);
        let mut guard = H1Guard::with_limits(server, CLOCKS);
        client.write_all(b"GET / HTTP/1.1\r\nHost: h\r\n").await?;
        let mut buf = [0u8; 256];
        // Well within the idle timeout: the head's own clock ran out.
        let read = tokio::time::timeout(Duration::from_millis(250), guard.read(&mut buf)).await;
        assert!(matches!(read, Ok(Ok(0))), "{read:?}");
        drop(guard);
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await?;
        assert_eq!(answer, REQUEST_TIMEOUT_ANSWER);
        Ok(())
    }

    #[tokio::test]
    async fn a_slow_head_after_a_refused_upgrade_gets_408() -> io::Result<()> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut client, server) = tokio::io::duplex(4096);
        let mut guard = H1Guard::with_limits(server, CLOCKS);
        let upgrade = b"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: foo\r\nConnection: upgrade\r\n\r\n";
        client.write_all(upgrade).await?;
        client.write_all(b"GET /slow HTTP/1.1\r\n").await?;
        let mut buf = [0u8; 256];
        let n = guard.read(&mut buf).await?;
        assert_eq!(&buf[..n], upgrade);
        guard
            .write_all(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n")
            .await?;
        let read = tokio::time::timeout(Duration::from_millis(250), guard.read(&mut buf)).await;
        assert!(matches!(read, Ok(Ok(0))), "{read:?}");
        drop(guard);
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await?;
        assert!(answer.ends_with(REQUEST_TIMEOUT_ANSWER), "{answer:?}");
        Ok(())
    }

    #[tokio::test]
    async fn a_pipelined_head_waits_for_the_answer_before_its_clock_runs() -> io::Result<()> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut client, server) = tokio::io::duplex(4096);
        let mut guard = H1Guard::with_limits(server, CLOCKS);
        let first = b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n";
        client.write_all(first).await?;
        client.write_all(b"GET /b HTT").await?;
        let mut buf = [0u8; 256];
        let n = guard.read(&mut buf).await?;
        assert_eq!(&buf[..n], first);
        // The answer to /a is being worked on: no clock, however long it takes.
        let waited = tokio::time::timeout(Duration::from_millis(500), guard.read(&mut buf)).await;
        assert!(waited.is_err(), "{waited:?}");
        guard
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            .await?;
        // Answered: now the held head's clock runs, and the 408 follows the answer.
        let read = tokio::time::timeout(Duration::from_millis(250), guard.read(&mut buf)).await;
        assert!(matches!(read, Ok(Ok(0))), "{read:?}");
        drop(guard);
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await?;
        assert!(answer.ends_with(REQUEST_TIMEOUT_ANSWER), "{answer:?}");
        Ok(())
    }

    #[tokio::test]
    async fn an_http2_connection_ends_after_the_idle_timeout_without_traffic() -> io::Result<()> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut client, server) = tokio::io::duplex(4096);
        let mut guard = H1Guard::with_limits(server, CLOCKS);
        let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
        client.write_all(preface).await?;
        let mut buf = [0u8; 64];
        let n = guard.read(&mut buf).await?;
        assert_eq!(&buf[..n], preface);
        // Traffic keeps it open past the idle timeout...
        for _ in 0..4 {
            let quiet = tokio::time::timeout(Duration::from_millis(100), guard.read(&mut buf));
            assert!(quiet.await.is_err());
            client.write_all(b"x").await?;
            assert_eq!(guard.read(&mut buf).await?, 1);
        }
        // ...silence closes it, without a 408.
        let read = tokio::time::timeout(Duration::from_secs(2), guard.read(&mut buf)).await;
        assert!(matches!(read, Ok(Ok(0))), "{read:?}");
        drop(guard);
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await?;
        assert!(answer.is_empty(), "{answer:?}");
        Ok(())
    }

    #[tokio::test]
    async fn an_idle_connection_ends_after_the_idle_timeout_and_no_sooner() -> io::Result<()> {
        use tokio::io::AsyncReadExt;
        let (_client, server) = tokio::io::duplex(4096);
        let mut guard = H1Guard::with_limits(server, CLOCKS);
        let mut buf = [0u8; 16];
        let early = tokio::time::timeout(Duration::from_millis(150), guard.read(&mut buf)).await;
        assert!(early.is_err(), "closed before the idle timeout: {early:?}");
        let read = tokio::time::timeout(Duration::from_secs(2), guard.read(&mut buf)).await;
        assert!(matches!(read, Ok(Ok(0))), "{read:?}");
        Ok(())
    }
}
