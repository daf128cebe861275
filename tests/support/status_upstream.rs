//! An upstream that answers every request with one fixed status, or never answers, and
//! counts what it got: a failing endpoint for outlier detection, a busy one for
//! least-request balancing; told to, it fails the next N requests with another status
//! (answered late if asked) or by resetting the connection first (a backend that
//! recovers, for retries).

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    sync::{
        Arc,
        atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering},
    },
    thread,
    time::Duration,
};

/// Request bodies the tests send are small; a larger length is not read whole.
const MAX_BODY: usize = 1 << 20;

pub struct StatusUpstream {
    pub addr: SocketAddr,
    requests: Arc<AtomicUsize>,
    failing: Arc<Failing>,
}

/// Requests still to fail, and with what status.
#[derive(Default)]
struct Failing {
    remaining: AtomicUsize,
    /// 0: reset the connection instead of answering.
    status: AtomicU16,
    /// How long a failing answer waits, in milliseconds.
    delay_ms: AtomicU64,
}

impl StatusUpstream {
    /// Answers `status`, named `name` (`x-upstream-name`, `{"upstream": name}`), on keep-alive
    /// connections, a thread per connection, for the rest of the test process.
    pub fn start(name: &str, status: u16) -> anyhow::Result<Self> {
        Self::listen(name, Some(status))
    }

    /// Never answers: each request stays in flight until the gateway gives it up.
    pub fn holding(name: &str) -> anyhow::Result<Self> {
        Self::listen(name, None)
    }

    fn listen(name: &str, status: Option<u16>) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let requests = Arc::new(AtomicUsize::new(0));
        let failing = Arc::new(Failing::default());
        let counter = Arc::clone(&requests);
        let failures = Arc::clone(&failing);
        let name = name.to_owned();
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (counter, failures, name) =
                    (Arc::clone(&counter), Arc::clone(&failures), name.clone());
                thread::spawn(move || serve(stream, status, &name, &counter, &failures));
            }
        });
        Ok(StatusUpstream {
            addr,
            requests,
            failing,
        })
    }

    /// The next `count` requests get `status`; the ones after, the usual answer.
    pub fn fail_next(&self, count: usize, status: u16) {
        self.fail_next_late(count, status, Duration::ZERO);
    }

    /// The next `count` requests get `status` after `delay`.
    pub fn fail_next_late(&self, count: usize, status: u16, delay: Duration) {
        self.failing.status.store(status, Ordering::SeqCst);
        let delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.failing.delay_ms.store(delay_ms, Ordering::SeqCst);
        self.failing.remaining.store(count, Ordering::SeqCst);
    }

    /// The next `count` requests are read whole and then get their connection reset
    /// (RST), no answer.
    pub fn reset_next(&self, count: usize) {
        self.fail_next_late(count, 0, Duration::ZERO);
    }

    /// Requests received so far.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

fn serve(
    stream: TcpStream,
    status: Option<u16>,
    name: &str,
    requests: &AtomicUsize,
    failing: &Failing,
) {
    // Named as the demo upstream names itself, in a header and in the JSON body.
    let body = format!("{{\"upstream\": \"{name}\"}}");
    let Ok(writer) = stream.try_clone() else {
        return;
    };
    let mut writer = writer;
    let mut reader = BufReader::new(stream);
    loop {
        let mut content_length = 0;
        let mut lines = 0;
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            if line == "\r\n" {
                break;
            }
            lines += 1;
            if let Some((header, value)) = line.split_once(':')
                && header.eq_ignore_ascii_case("content-length")
            {
                content_length = value.trim().parse().unwrap_or(0).min(MAX_BODY);
            }
        }
        if lines == 0 {
            continue;
        }
        let mut request_body = vec![0; content_length];
        if reader.read_exact(&mut request_body).is_err() {
            return;
        }
        requests.fetch_add(1, Ordering::SeqCst);
        let failed = failing
            .remaining
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        let status = if failed {
            thread::sleep(Duration::from_millis(
                failing.delay_ms.load(Ordering::SeqCst),
            ));
            match failing.status.load(Ordering::SeqCst) {
                0 => {
                    reset(&writer);
                    return;
                }
                code => Some(code),
            }
        } else {
            status
        };
        let Some(status) = status else {
            // Held: wait for the gateway to close the connection.
            let _ = std::io::copy(&mut reader, &mut std::io::sink());
            return;
        };
        let answer = format!(
            "HTTP/1.1 {status} Fixed\r\nx-upstream-name: {name}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        if writer.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

/// Closes `stream` with a RST rather than a FIN: SO_LINGER on, zero seconds, then the
/// close when the caller drops its handles.
fn reset(stream: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket descriptor and a `linger` of the size passed.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            std::ptr::from_ref(&linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}
