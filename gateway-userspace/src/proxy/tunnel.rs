//! Byte tunnels: an upgraded (WebSocket) connection, a TCP or TLS-passthrough stream.
//! Bytes are copied both ways until either side closes, with two clocks hyper does not
//! keep for them: an idle timeout over bytes in either direction (Envoy's
//! `stream_idle_timeout` for upgrades, tcp_proxy's `idle_timeout` for streams), and the
//! listener's drain deadline, at which a WebSocket gets a close frame (1001, going away)
//! on each side that is between frames, and any other tunnel is closed.

use std::{
    io,
    pin::Pin,
    sync::atomic::{AtomicU64, Ordering},
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf, copy_bidirectional},
    time::Instant,
};

/// WebSocket close frame, status 1001 (going away), server to client (unmasked).
const CLOSE_GOING_AWAY: [u8; 4] = [0x88, 0x02, 0x03, 0xE9];
/// How long the close frames get to go out at the drain deadline.
pub(super) const CLOSE_GRACE: Duration = Duration::from_secs(1);

pub(super) use super::drain::Drain;

/// What a tunnel needs besides its two ends.
#[derive(Clone, Debug)]
pub(super) struct Clocks {
    pub idle: Duration,
    pub drain: Drain,
    /// The tunnel carries WebSocket frames: it gets close frames at the drain deadline.
    pub websocket: bool,
}

/// Why a tunnel ended.
#[derive(Debug)]
pub(super) enum Ending {
    /// One side closed; bytes sent downstream-to-upstream and back.
    Closed {
        sent: u64,
        received: u64,
    },
    Failed(io::Error),
    /// No byte either way for the idle timeout.
    Idle,
    /// The listener's drain deadline.
    Drained,
}

/// Copies both ways between `downstream` (the client) and `upstream` until one closes,
/// the tunnel idles out, or the drain deadline passes.
pub(super) async fn run<D, U>(downstream: &mut D, upstream: &mut U, clocks: Clocks) -> Ending
where
    D: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let activity = Activity::new();
    let mut client = Watched::new(downstream, &activity, clocks.websocket);
    let mut server = Watched::new(upstream, &activity, clocks.websocket);
    let ending = {
        let copy = copy_bidirectional(&mut client, &mut server);
        tokio::pin!(copy);
        loop {
            let deadline = activity.last().checked_add(clocks.idle);
            tokio::select! {
                copied = &mut copy => break match copied {
                    Ok((sent, received)) => Ending::Closed { sent, received },
                    Err(e) => Ending::Failed(e),
                },
                _ = sleep_until(deadline) => {
                    if activity.last().checked_add(clocks.idle).is_some_and(|d| d <= Instant::now()) {
                        break Ending::Idle;
                    }
                }
                _ = clocks.drain.deadline() => break Ending::Drained,
            }
        }
    };
    if matches!(ending, Ending::Drained) && clocks.websocket {
        let farewell = async {
            // Only between frames: a close inside one would corrupt it.
            if client.frames.as_ref().is_some_and(Frames::at_boundary) {
                client.inner.write_all(&CLOSE_GOING_AWAY).await?;
                client.inner.flush().await?;
            }
            if server.frames.as_ref().is_some_and(Frames::at_boundary) {
                server.inner.write_all(&masked_close()).await?;
                server.inner.flush().await?;
            }
            client.inner.shutdown().await
        };
        let _ = tokio::time::timeout(CLOSE_GRACE, farewell).await;
    }
    ending
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Client-to-server frames are masked (RFC 6455 §5.3).
fn masked_close() -> [u8; 8] {
    let mask = fastrand::u32(..).to_be_bytes();
    let [m0, m1, m2, m3] = mask;
    [0x88, 0x82, m0, m1, m2, m3, 0x03 ^ m0, 0xE9 ^ m1]
}

/// When bytes last moved either way, in milliseconds since the tunnel began.
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Activity {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

/// One end of the tunnel: notes activity, and follows the WebSocket frames written to it.
struct Watched<'a, S> {
    inner: &'a mut S,
    activity: &'a Activity,
    frames: Option<Frames>,
}

impl<'a, S> Watched<'a, S> {
    fn new(inner: &'a mut S, activity: &'a Activity, websocket: bool) -> Self {
        Watched {
            inner,
            activity,
            frames: websocket.then(Frames::default),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<'_, S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let read = Pin::new(&mut *this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.activity.touch();
        }
        read
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<'_, S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut *this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = written
            && n > 0
        {
            this.activity.touch();
            if let Some(frames) = &mut this.frames {
                frames.feed(&buf[..n.min(buf.len())]);
            }
        }
        written
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Where a stream of WebSocket frames stands (RFC 6455 §5.2): inside a header, inside a
/// payload, or between frames.
#[derive(Debug, Default)]
struct Frames {
    header: [u8; 14],
    have: usize,
    payload_left: u64,
}

impl Frames {
    fn at_boundary(&self) -> bool {
        self.have == 0 && self.payload_left == 0
    }

    fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.payload_left > 0 {
                let take = usize::try_from(self.payload_left)
                    .unwrap_or(usize::MAX)
                    .min(bytes.len());
                self.payload_left -= take as u64;
                bytes = &bytes[take..];
                continue;
            }
            self.header[self.have] = bytes[0];
            self.have += 1;
            bytes = &bytes[1..];
            if self.have < 2 {
                continue;
            }
            let extended = match self.header[1] & 0x7f {
                126 => 2,
                127 => 8,
                _ => 0,
            };
            let mask = if self.header[1] & 0x80 != 0 { 4 } else { 0 };
            if self.have < 2 + extended + mask {
                continue;
            }
            self.payload_left = match extended {
                0 => u64::from(self.header[1] & 0x7f),
                _ => self.header[2..2 + extended]
                    .iter()
                    .fold(0u64, |n, &b| (n << 8) | u64::from(b)),
            };
            self.have = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[test]
    fn frame_boundaries_are_followed_across_writes() {
        assert!(Frames::default().at_boundary());
        // Unmasked text "hello", then a masked 300-byte binary frame, in pieces.
        let mut stream = vec![0x81, 0x05];
        stream.extend_from_slice(b"hello");
        stream.extend_from_slice(&[0x82, 0xFE, 0x01, 0x2C, 1, 2, 3, 4]);
        stream.extend_from_slice(&[0u8; 300]);
        let hello_end = 7;
        for step in [1, 3, 64, stream.len()] {
            let mut frames = Frames::default();
            let mut fed = 0;
            for piece in stream.chunks(step) {
                frames.feed(piece);
                fed += piece.len();
                if fed == hello_end {
                    assert!(frames.at_boundary(), "step {step}");
                } else if fed < stream.len() && fed > 0 && fed != hello_end {
                    assert!(!frames.at_boundary(), "step {step} fed {fed}");
                }
            }
            assert!(frames.at_boundary(), "step {step}");
        }
    }

    #[tokio::test]
    async fn an_idle_tunnel_ends_and_a_busy_one_does_not() -> io::Result<()> {
        let (mut client, mut downstream) = tokio::io::duplex(1024);
        let (mut upstream, mut server) = tokio::io::duplex(1024);
        let clocks = Clocks {
            idle: Duration::from_millis(200),
            drain: Drain::default(),
            websocket: false,
        };
        let tunnel = tokio::spawn(async move { run(&mut downstream, &mut upstream, clocks).await });
        let mut buf = [0u8; 8];
        for _ in 0..4 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            client.write_all(b"x").await?;
            server.read_exact(&mut buf[..1]).await?;
        }
        let ending = tokio::time::timeout(Duration::from_secs(2), tunnel).await;
        assert!(matches!(ending, Ok(Ok(Ending::Idle))), "{ending:?}");
        Ok(())
    }

    #[tokio::test]
    async fn a_websocket_gets_a_close_frame_at_the_drain_deadline() -> io::Result<()> {
        let (mut client, mut downstream) = tokio::io::duplex(1024);
        let (mut upstream, mut server) = tokio::io::duplex(1024);
        let listening = super::super::drain::Listening::new();
        let clocks = Clocks {
            idle: Duration::from_secs(60),
            drain: listening.drain(),
            websocket: true,
        };
        let tunnel = tokio::spawn(async move { run(&mut downstream, &mut upstream, clocks).await });
        server.write_all(&[0x81, 0x02, b'h', b'i']).await?;
        let mut buf = [0u8; 4];
        client.read_exact(&mut buf).await?;
        listening.pass_deadline();
        let ending = tokio::time::timeout(Duration::from_secs(2), tunnel).await;
        assert!(matches!(ending, Ok(Ok(Ending::Drained))), "{ending:?}");
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await?;
        assert_eq!(rest, CLOSE_GOING_AWAY);
        let mut close = [0u8; 8];
        server.read_exact(&mut close).await?;
        assert_eq!(close[..2], [0x88, 0x82]);
        Ok(())
    }
}
