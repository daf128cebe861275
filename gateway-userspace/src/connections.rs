//! Descriptors and the downstream connection limit. Every connection costs a descriptor
//! (two when it is proxied), so the process first raises its soft `RLIMIT_NOFILE` to the
//! hard limit, as Envoy's and nginx's packaging do, and then serves at most
//! `--max-connections` downstream connections at once across all listeners and workers
//! (default: half the descriptors, leaving the rest for upstream connections, the admin
//! ports and files). Beyond it the accept loops stop accepting: new connections wait in
//! the kernel's backlog instead of being accepted into `EMFILE`.

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use prometheus_client::metrics::{counter::Counter, gauge::Gauge};
use thiserror::Error;
use tokio::sync::Notify;

use crate::metrics::Metrics;

#[derive(Debug, Error)]
pub enum DescriptorError {
    #[error("reading RLIMIT_NOFILE: {0}")]
    Get(std::io::Error),
    #[error("raising RLIMIT_NOFILE to {hard}: {source}")]
    Set { hard: u64, source: std::io::Error },
}

/// The soft descriptor limit before and after `raise_descriptor_limit`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DescriptorLimit {
    pub was: u64,
    pub now: u64,
}

fn get_descriptor_limit() -> Result<libc::rlimit, DescriptorError> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(DescriptorError::Get(std::io::Error::last_os_error()));
    }
    Ok(limit)
}

/// The soft `RLIMIT_NOFILE` in force.
pub fn soft_descriptor_limit() -> Option<u64> {
    get_descriptor_limit().ok().map(|l| l.rlim_cur)
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit. An unlimited hard limit cannot be
/// a soft one for descriptors; the kernel's `fs.nr_open` ceiling is used then.
pub fn raise_descriptor_limit() -> Result<DescriptorLimit, DescriptorError> {
    let mut limit = get_descriptor_limit()?;
    let was = limit.rlim_cur;
    let mut hard = limit.rlim_max;
    if hard == libc::RLIM_INFINITY {
        hard = std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(1024 * 1024);
    }
    if was >= hard {
        return Ok(DescriptorLimit { was, now: was });
    }
    limit.rlim_cur = hard;
    // SAFETY: setrlimit reads the struct we own.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        return Err(DescriptorError::Set {
            hard,
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(DescriptorLimit { was, now: hard })
}

/// `--max-connections` when not given: half the descriptors, since a proxied connection
/// holds a second one upstream.
pub fn default_max_connections(descriptors: u64) -> usize {
    usize::try_from(descriptors / 2)
        .unwrap_or(usize::MAX)
        .max(1)
}

/// The count of open downstream connections, shared by every accept loop.
#[derive(Debug)]
pub struct ConnectionLimit {
    max: usize,
    open: AtomicUsize,
    /// Accept loops waiting for a connection to close.
    freed: Notify,
    /// Open downstream connections (`gateway_downstream_connections_active`).
    active: Gauge,
    /// Times an accept loop stopped at the limit (`gateway_downstream_cx_overflow`).
    overflow: Counter,
}

impl ConnectionLimit {
    pub fn new(max: usize, active: Gauge, overflow: Counter) -> Arc<Self> {
        Arc::new(ConnectionLimit {
            max: max.max(1),
            open: AtomicUsize::new(0),
            freed: Notify::new(),
            active,
            overflow,
        })
    }

    /// No limit but the descriptors; the metrics still count.
    pub fn unlimited(metrics: &Metrics) -> Arc<Self> {
        Self::for_metrics(usize::MAX, metrics)
    }

    /// A limit reporting in `metrics`.
    pub fn for_metrics(max: usize, metrics: &Metrics) -> Arc<Self> {
        Self::new(
            max,
            metrics.downstream_connections_active.clone(),
            metrics.downstream_cx_overflow.clone(),
        )
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// A slot for one more connection, waiting while `max` are open. Each wait counts
    /// once in the overflow metric.
    pub async fn acquire(self: &Arc<Self>) -> ConnectionSlot {
        // Below the limit (nearly always), no wait is registered: registering one takes
        // and frees the notifier's lock, at every accept of every listener.
        if let Some(slot) = self.try_acquire() {
            return slot;
        }
        let mut counted = false;
        loop {
            // Registered before the check, so a close between the two still wakes us.
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if let Some(slot) = self.try_acquire() {
                return slot;
            }
            if !counted {
                counted = true;
                self.overflow.inc();
            }
            freed.await;
        }
    }

    pub fn try_acquire(self: &Arc<Self>) -> Option<ConnectionSlot> {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < self.max).then_some(open + 1)
            })
            .ok()?;
        self.active.inc();
        Some(ConnectionSlot {
            limit: self.clone(),
        })
    }

    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }
}

/// One open downstream connection; dropping it (the connection's task ends) frees it.
#[derive(Debug)]
pub struct ConnectionSlot {
    limit: Arc<ConnectionLimit>,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let before = self.limit.open.fetch_sub(1, Ordering::AcqRel);
        self.limit.active.dec();
        if before >= self.limit.max {
            self.limit.freed.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepts_wait_at_the_limit_until_a_connection_closes() {
        let (active, overflow) = (Gauge::default(), Counter::default());
        let limit = ConnectionLimit::new(2, active.clone(), overflow.clone());
        let first = limit.acquire().await;
        let _second = limit.acquire().await;
        assert!(limit.try_acquire().is_none());
        assert_eq!(active.get(), 2);
        let waiting = tokio::spawn({
            let limit = limit.clone();
            async move { limit.acquire().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        drop(first);
        let third = waiting.await.ok();
        assert!(third.is_some());
        assert_eq!(overflow.get(), 1);
        assert_eq!(limit.open(), 2);
    }

    #[test]
    fn the_soft_descriptor_limit_rises_to_the_hard_one() {
        let raised = raise_descriptor_limit().ok();
        assert!(raised.is_some_and(|l| l.now >= l.was));
        assert_eq!(default_max_connections(1024), 512);
        assert_eq!(default_max_connections(1), 1);
    }
}
