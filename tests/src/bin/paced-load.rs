//! `paced-load --connect ADDR --host HOST --path PATH --rate N --seconds S [--connections C]`
//!
//! Open-loop HTTP/1.1 load at a fixed rate (what wrk2 does; it is not packaged here):
//! C keep-alive connections, each sending its share of the requests on a fixed schedule,
//! the connections offset evenly. A request's latency counts from when it was due, not
//! from when it went out, so a stalled server is charged for the requests that queued
//! behind the stall (no coordinated omission); a connection still waiting for a response
//! sends its next request as soon as the response is in.
//!
//! One thread drives every connection from one epoll set, woken by the sockets and by a
//! timerfd armed at the next due time (the kernel's high-resolution timers: tens of µs
//! late at most, where an async runtime's millisecond timer wheel would add up to a
//! millisecond to every figure). A thread per connection measured its own scheduling as
//! well: a response waited for its thread to be picked among sixteen and the upstream
//! sharing its core (the benchmarks' upstream alone at 6 000 requests/s: p50/p99 ~100/250
//! µs, against ~57/137 µs from one thread). One thread costs more CPU per request on this
//! VM (~22 against ~16 µs at 30 000/s, `perf stat -e task-clock`), so the core it shares
//! with the upstream fills sooner; `bench latency` flags the load levels where it does.
//! Prints one line: `sent=… ok=… errors=… p50_us=… p90_us=… p99_us=… max_us=…`.

use std::{
    io::{ErrorKind, Read, Write},
    net::{SocketAddr, TcpStream},
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use clap::Parser;

#[derive(Parser)]
struct Args {
    #[arg(long)]
    connect: SocketAddr,
    #[arg(long)]
    host: String,
    #[arg(long, default_value = "/")]
    path: String,
    /// Requests per second, over all connections.
    #[arg(long)]
    rate: f64,
    #[arg(long)]
    seconds: f64,
    #[arg(long, default_value_t = 16)]
    connections: usize,
}

/// One connection's schedule and what it is waiting for.
struct Connection {
    stream: TcpStream,
    /// When this connection's first request is due.
    first: Instant,
    /// The index of its next request to send.
    next: u64,
    /// The due time of the request sent and not yet answered.
    awaiting: Option<Instant>,
    /// Response bytes read and not yet parsed.
    read: Vec<u8>,
    /// Closed or failed: the rest of its schedule counted as errors.
    gone: bool,
    /// Still in the epoll set (a closed socket stays readable, so a gone one is taken out).
    watched: bool,
}

#[derive(Default)]
struct Tally {
    latencies_us: Vec<u64>,
    errors: u64,
}

/// The epoll key of the timer; a connection's key is its index.
const TIMER_KEY: u64 = u64::MAX;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.rate > 0.0 && args.connections > 0,
        "rate and connections > 0"
    );
    // Each connection sends every `period`; connections are offset evenly.
    let period = Duration::from_secs_f64(args.connections as f64 / args.rate);
    let per_connection = (args.seconds * args.rate / args.connections as f64).ceil() as u64;
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: paced-load\r\n\r\n",
        args.path, args.host
    );
    let start = Instant::now() + Duration::from_millis(100);
    let mut connections = Vec::with_capacity(args.connections);
    for index in 0..args.connections {
        let stream = TcpStream::connect(args.connect)
            .with_context(|| format!("connecting to {}", args.connect))?;
        stream.set_nodelay(true)?;
        stream.set_nonblocking(true)?;
        connections.push(Connection {
            stream,
            first: start + period.mul_f64(index as f64 / args.connections as f64),
            next: 0,
            awaiting: None,
            read: Vec::with_capacity(1024),
            gone: false,
            watched: true,
        });
    }
    let tally = drive(&mut connections, request.as_bytes(), period, per_connection)?;

    let mut latencies = tally.latencies_us;
    latencies.sort_unstable();
    let at = |q: f64| {
        let index = ((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1));
        latencies.get(index).copied().unwrap_or(0)
    };
    println!(
        "sent={} ok={} errors={} p50_us={} p90_us={} p99_us={} max_us={}",
        latencies.len() as u64 + tally.errors,
        latencies.len(),
        tally.errors,
        at(0.50),
        at(0.90),
        at(0.99),
        latencies.last().copied().unwrap_or(0)
    );
    Ok(())
}

/// Runs every connection's schedule to its end.
fn drive(
    connections: &mut [Connection],
    request: &[u8],
    period: Duration,
    requests: u64,
) -> anyhow::Result<Tally> {
    let epoll = Epoll::new()?;
    let timer = Timer::new()?;
    epoll.add(timer.fd(), TIMER_KEY)?;
    for (key, connection) in connections.iter().enumerate() {
        epoll.add(connection.stream.as_raw_fd(), key as u64)?;
    }
    let mut tally = Tally::default();
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; connections.len() + 1];
    loop {
        // Send every request that is due on a connection free to send it.
        let now = Instant::now();
        let mut next_due: Option<Instant> = None;
        let mut running = false;
        for connection in connections.iter_mut() {
            if connection.gone || (connection.next >= requests && connection.awaiting.is_none()) {
                continue;
            }
            running = true;
            if connection.awaiting.is_some() {
                continue;
            }
            let due = connection.first + period.mul_f64(connection.next as f64);
            if due > now {
                next_due = Some(next_due.map_or(due, |d| d.min(due)));
                continue;
            }
            // An idle keep-alive socket takes a short request whole.
            match connection.stream.write(request) {
                Ok(n) if n == request.len() => {
                    connection.awaiting = Some(due);
                    connection.next += 1;
                }
                _ => lose(connection, requests, &mut tally),
            }
        }
        if !running {
            return Ok(tally);
        }
        // Connections lost since the last wait (a failed write above, a failed read or a
        // close below) leave the set before the next one.
        for connection in connections.iter_mut().filter(|c| c.gone && c.watched) {
            epoll.remove(connection.stream.as_raw_fd())?;
            connection.watched = false;
        }
        timer.arm(next_due)?;
        for event in epoll.wait(&mut events)? {
            if event == TIMER_KEY {
                timer.clear();
                continue;
            }
            let Some(connection) = usize::try_from(event)
                .ok()
                .and_then(|i| connections.get_mut(i))
            else {
                continue;
            };
            receive(connection, requests, &mut tally);
        }
    }
}

/// Reads what the socket has and completes the awaited request if its response is in.
fn receive(connection: &mut Connection, requests: u64, tally: &mut Tally) {
    if connection.gone {
        return;
    }
    // One read is usually the whole response; a part of one waits for the next event
    // (the set is level-triggered), which saves the read that would find nothing.
    let mut chunk = [0u8; 4096];
    loop {
        match connection.stream.read(&mut chunk) {
            Ok(0) => return lose(connection, requests, tally),
            Ok(n) => {
                connection.read.extend_from_slice(&chunk[..n]);
                break;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return lose(connection, requests, tally),
        }
    }
    match parse_response(&connection.read) {
        Ok(None) => {}
        Ok(Some((status, length))) => {
            connection.read.drain(..length);
            match connection.awaiting.take() {
                Some(due) if (200..300).contains(&status) => {
                    tally.latencies_us.push(due.elapsed().as_micros() as u64);
                }
                Some(_) => tally.errors += 1,
                // A response nobody asked for: the connection's framing is lost.
                None => lose(connection, requests, tally),
            }
        }
        Err(_) => lose(connection, requests, tally),
    }
}

/// The connection is gone: its unanswered request and the rest of its schedule count as
/// errors, and it sends no more.
fn lose(connection: &mut Connection, requests: u64, tally: &mut Tally) {
    if connection.gone {
        return;
    }
    connection.gone = true;
    tally.errors +=
        requests.saturating_sub(connection.next) + u64::from(connection.awaiting.is_some());
    connection.awaiting = None;
}

/// One response with a Content-Length body (what the benchmarks' upstream sends):
/// `Some((status, bytes))` once it is all in `buf`.
fn parse_response(buf: &[u8]) -> anyhow::Result<Option<(u16, usize)>> {
    let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..head_end]).context("head not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let Some(status) = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
    else {
        bail!("bad status line {status_line:?}");
    };
    let mut length = 0usize;
    for line in lines {
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse()?;
        }
    }
    let total = head_end + 4 + length;
    Ok((buf.len() >= total).then_some((status, total)))
}

/// An epoll set, level-triggered: a socket with unread bytes is reported again.
struct Epoll(OwnedFd);

impl Epoll {
    fn new() -> std::io::Result<Self> {
        // SAFETY: epoll_create1 takes no pointers; a valid result is a new descriptor.
        let fd = check(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        // SAFETY: `fd` was just returned to us and is owned by nothing else.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    fn add(&self, fd: RawFd, key: u64) -> std::io::Result<()> {
        let mut event = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: key,
        };
        // SAFETY: both descriptors are open; `event` outlives the call.
        check(unsafe { libc::epoll_ctl(self.0.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut event) })?;
        Ok(())
    }

    fn remove(&self, fd: RawFd) -> std::io::Result<()> {
        // SAFETY: both descriptors are open; DEL ignores the event argument.
        check(unsafe {
            libc::epoll_ctl(
                self.0.as_raw_fd(),
                libc::EPOLL_CTL_DEL,
                fd,
                std::ptr::null_mut(),
            )
        })?;
        Ok(())
    }

    /// Waits for at least one event; the keys of those that came.
    fn wait<'a>(
        &self,
        events: &'a mut [libc::epoll_event],
    ) -> std::io::Result<impl Iterator<Item = u64> + 'a> {
        let capacity = i32::try_from(events.len()).unwrap_or(i32::MAX);
        let ready = loop {
            // SAFETY: `events` has room for `capacity` entries.
            let n =
                unsafe { libc::epoll_wait(self.0.as_raw_fd(), events.as_mut_ptr(), capacity, -1) };
            match check(n) {
                Ok(n) => break n as usize,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        };
        Ok(events[..ready].iter().map(|e| e.u64))
    }
}

/// A monotonic timerfd armed at absolute times, so that a late wake-up does not push the
/// schedule back.
struct Timer {
    fd: OwnedFd,
    /// What it is armed for, so that an unchanged deadline costs no system call.
    armed: std::cell::Cell<Option<Instant>>,
    /// `Instant` and CLOCK_MONOTONIC read together, to turn one into the other.
    base: (Instant, Duration),
}

impl Timer {
    fn new() -> std::io::Result<Self> {
        // SAFETY: timerfd_create takes no pointers; a valid result is a new descriptor.
        let fd = check(unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        })?;
        // SAFETY: `fd` was just returned to us and is owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut now = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        let instant = Instant::now();
        // SAFETY: `now` is a valid timespec to write.
        check(unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) })?;
        let monotonic = Duration::new(now.tv_sec as u64, now.tv_nsec as u32);
        Ok(Self {
            fd,
            armed: std::cell::Cell::new(None),
            base: (instant, monotonic),
        })
    }

    fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Fires at `at` (at once if it has passed); `None` disarms it.
    fn arm(&self, at: Option<Instant>) -> std::io::Result<()> {
        if self.armed.get() == at {
            return Ok(());
        }
        self.armed.set(at);
        let value = match at {
            None => libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            Some(at) => {
                // Zero would disarm: a time already passed fires one nanosecond after base.
                let since = at
                    .saturating_duration_since(self.base.0)
                    .max(Duration::from_nanos(1));
                let when = self.base.1 + since;
                libc::timespec {
                    tv_sec: when.as_secs() as libc::time_t,
                    tv_nsec: when.subsec_nanos() as libc::c_long,
                }
            }
        };
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: value,
        };
        // SAFETY: `spec` is a valid itimerspec; the old value is not asked for.
        check(unsafe {
            libc::timerfd_settime(
                self.fd.as_raw_fd(),
                libc::TFD_TIMER_ABSTIME,
                &spec,
                std::ptr::null_mut(),
            )
        })?;
        Ok(())
    }

    /// Reads the expiry count, so that the level-triggered set stops reporting it; the
    /// timer is then disarmed.
    fn clear(&self) {
        self.armed.set(None);
        let mut expirations = [0u8; 8];
        // SAFETY: the buffer is 8 bytes, as a timerfd read needs.
        let _ = unsafe { libc::read(self.fd.as_raw_fd(), expirations.as_mut_ptr().cast(), 8) };
    }
}

fn check(result: i32) -> std::io::Result<i32> {
    if result < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(result)
    }
}
