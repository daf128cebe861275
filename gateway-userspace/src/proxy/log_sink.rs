//! The access log's way to stdout. Requests never wait for stdout, take a lock another
//! worker holds, or wake another thread while the log is busy: each worker thread
//! appends its lines to a buffer of its own, and one writer thread collects the buffers
//! every few milliseconds and writes them to fd 1. Only a line that finds the writer
//! asleep (the log was idle) wakes it. When the reader of stdout stops (a stuck log
//! shipper, a full pipe), the buffers fill and further lines are dropped and counted in
//! `gateway_access_log_dropped_total` instead of stalling the workers.

use std::{
    cell::OnceCell,
    io::Write as _,
    sync::{
        Arc, Condvar, LazyLock, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use crate::metrics::ACCESS_LOG_DROPPED;

/// Bytes of lines one thread may have waiting for stdout (some 4000 lines): enough to
/// ride out a slow reader, small enough not to matter for memory.
const THREAD_CAPACITY: usize = 1024 * 1024;
/// How long the writer lets lines gather before it collects them again while the log
/// is busy: one write per round instead of one per line.
const ROUND: Duration = Duration::from_millis(5);
/// An idle writer looks again after this long even if nobody woke it.
const IDLE_CHECK: Duration = Duration::from_secs(1);

struct Sink {
    /// Every thread's buffer, registered on the thread's first line.
    buffers: Mutex<Vec<Arc<ThreadBuffer>>>,
    /// The writer waits here when the log is idle, and `flush` when lines are pending.
    sleeping: AtomicBool,
    wake: Condvar,
    wake_lock: Mutex<Progress>,
}

/// One thread's pending lines; locked by its thread for an append and by the writer for
/// a swap every round, so it is almost never contended.
#[derive(Default)]
struct ThreadBuffer(Mutex<Vec<u8>>);

impl ThreadBuffer {
    fn has_lines(&self) -> bool {
        !self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_empty()
    }
}

/// What `flush` waits on.
#[derive(Default)]
struct Progress {
    started: bool,
    /// Rounds the writer has finished.
    rounds: u64,
}

static SINK: LazyLock<Sink> = LazyLock::new(|| Sink {
    buffers: Mutex::default(),
    sleeping: AtomicBool::new(false),
    wake: Condvar::new(),
    wake_lock: Mutex::default(),
});

thread_local! {
    static BUFFER: OnceCell<Option<Arc<ThreadBuffer>>> = const { OnceCell::new() };
}

/// Queues one whole line for stdout, or drops and counts it when this thread's buffer
/// is full.
pub(super) fn push(line: &[u8]) {
    let pushed = BUFFER.with(|buffer| {
        let Some(buffer) = buffer.get_or_init(|| SINK.register()) else {
            return false;
        };
        let mut pending = buffer.0.lock().unwrap_or_else(PoisonError::into_inner);
        if pending.len() + line.len() > THREAD_CAPACITY {
            return false;
        }
        pending.extend_from_slice(line);
        true
    });
    if !pushed {
        ACCESS_LOG_DROPPED.inc();
        return;
    }
    // Only when the writer went to sleep on an idle log. Taking the lock it sleeps
    // under means the wake-up cannot fall between its last look and its wait.
    if SINK.sleeping.load(Ordering::Relaxed) && SINK.sleeping.swap(false, Ordering::AcqRel) {
        let _progress = SINK.progress();
        SINK.wake.notify_one();
    }
}

/// Waits up to `timeout` for the lines logged so far to reach stdout (at exit).
pub fn flush(timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let mut progress = SINK.progress();
    if !progress.started {
        return;
    }
    // A round that starts after this call has taken every line logged before it.
    let done = progress.rounds + 2;
    while progress.rounds < done {
        SINK.sleeping.store(false, Ordering::Release);
        SINK.wake.notify_all();
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        progress = SINK
            .wake
            .wait_timeout(progress, left.min(ROUND))
            .unwrap_or_else(PoisonError::into_inner)
            .0;
    }
}

impl Sink {
    fn progress(&self) -> std::sync::MutexGuard<'_, Progress> {
        self.wake_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// This thread's buffer, and the writer thread on the first line of all; None when
    /// the writer cannot be started (its lines are dropped and counted).
    fn register(&'static self) -> Option<Arc<ThreadBuffer>> {
        {
            let mut progress = self.progress();
            if !progress.started {
                std::thread::Builder::new()
                    .name("access-log".into())
                    .spawn(move || self.write_rounds())
                    .ok()?;
                progress.started = true;
            }
        }
        let buffer = Arc::new(ThreadBuffer::default());
        self.buffers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(buffer.clone());
        Some(buffer)
    }

    /// The writer thread: every round, takes each thread's lines and writes them in one
    /// go (blocking here is what the buffers are for); sleeps while the log is idle.
    fn write_rounds(&self) {
        let mut batch = Vec::new();
        let mut taken = Vec::new();
        loop {
            let buffers = self
                .buffers
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            for buffer in &buffers {
                std::mem::swap(
                    &mut *buffer.0.lock().unwrap_or_else(PoisonError::into_inner),
                    &mut taken,
                );
                batch.extend_from_slice(&taken);
                taken.clear();
            }
            let idle = batch.is_empty();
            if !idle {
                // A closed stdout loses the lines; nothing else can be done with them.
                let mut stdout = std::io::stdout().lock();
                let _ = stdout.write_all(&batch).and_then(|()| stdout.flush());
                batch.clear();
                // Do not keep a burst's allocations for ever.
                batch.shrink_to(64 * 1024);
                taken.shrink_to(64 * 1024);
            }
            let mut progress = self.progress();
            progress.rounds += 1;
            self.wake.notify_all();
            if idle {
                // Asleep until a line (or a flush) wakes us. Announced before the last
                // look, so a line pushed after the look wakes us (under `progress`).
                self.sleeping.store(true, Ordering::Release);
                let registered = self.buffers.lock().unwrap_or_else(PoisonError::into_inner);
                if registered.iter().any(|b| b.has_lines()) {
                    self.sleeping.store(false, Ordering::Release);
                    continue;
                }
                drop(registered);
                let _ = self
                    .wake
                    .wait_timeout(progress, IDLE_CHECK)
                    .unwrap_or_else(PoisonError::into_inner);
                self.sleeping.store(false, Ordering::Release);
            } else {
                drop(progress);
                std::thread::sleep(ROUND);
            }
        }
    }
}
