//! CPU time spent by the calling thread, for the reload log's `cpu_ms`: on a shared core
//! the wall-clock `elapsed_ms` of a reload includes time other processes ran, and the
//! figure that matters for "a reload costs little" is the CPU it took.

use std::time::Duration;

/// The calling thread's CPU time so far (user + system); zero if the clock is unreadable.
pub(super) fn thread_cpu() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    let status = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    if status != 0 {
        return Duration::ZERO;
    }
    let seconds = u64::try_from(now.tv_sec).unwrap_or(0);
    let nanos = u32::try_from(now.tv_nsec).unwrap_or(0);
    Duration::new(seconds, nanos)
}

/// CPU time summed over the stretches of a reload that run on one thread.
#[derive(Default)]
pub(super) struct CpuLaps {
    total: Duration,
    since: Option<Duration>,
}

impl CpuLaps {
    /// Starts counting this thread's CPU time.
    pub(super) fn resume(&mut self) {
        self.since = Some(thread_cpu());
    }

    /// Stops counting (before waiting on another thread, whose time is added apart).
    pub(super) fn pause(&mut self) {
        if let Some(since) = self.since.take() {
            self.total += thread_cpu().saturating_sub(since);
        }
    }

    /// Adds time measured elsewhere (the compile's blocking thread).
    pub(super) fn add(&mut self, other: Duration) {
        self.total += other;
    }

    /// Milliseconds counted so far, the running stretch included.
    pub(super) fn ms(&self) -> f64 {
        let running = self
            .since
            .map_or(Duration::ZERO, |since| thread_cpu().saturating_sub(since));
        (self.total + running).as_secs_f64() * 1000.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_on_this_thread_counts_and_waiting_does_not() {
        let mut laps = CpuLaps::default();
        laps.resume();
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
        }
        laps.pause();
        let busy = laps.ms();
        assert!(busy > 0.0);
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(laps.ms(), busy);
        laps.add(Duration::from_millis(2));
        assert!((laps.ms() - busy - 2.0).abs() < 1e-9);
    }
}
