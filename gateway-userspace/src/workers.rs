//! Worker threads, one single-threaded tokio runtime each. Every listener has one
//! `SO_REUSEPORT` socket per worker and the kernel spreads new connections over them;
//! a connection and all it causes (its requests, upstream connections from the
//! worker's own pools, timers) then stay on one thread: no work stealing, no wake-ups
//! across threads, no locks around upstream pools. Envoy's workers and nginx's worker
//! processes divide the work the same way. The control plane (configuration reloads,
//! admin endpoints, signals) runs on the main thread's runtime.

use std::thread::JoinHandle;

use thiserror::Error;
use tokio::{runtime::Handle, sync::oneshot};

#[derive(Debug, Error)]
pub enum WorkerError {
    #[error("starting worker thread {index}: {source}")]
    Start {
        index: usize,
        source: std::io::Error,
    },
    #[error("worker thread {index} stopped while starting")]
    Died { index: usize },
}

pub struct Workers {
    handles: Vec<Handle>,
    /// Dropping a sender ends its worker's runtime (and the tasks left on it).
    stops: Vec<oneshot::Sender<()>>,
    threads: Vec<JoinHandle<()>>,
}

impl Workers {
    /// Starts `count` worker threads (at least one).
    pub fn start(count: usize) -> Result<Workers, WorkerError> {
        let mut workers = Workers {
            handles: Vec::new(),
            stops: Vec::new(),
            threads: Vec::new(),
        };
        for index in 0..count.max(1) {
            let (handle_tx, handle_rx) = std::sync::mpsc::channel();
            let (stop, stopped) = oneshot::channel::<()>();
            let thread = std::thread::Builder::new()
                .name(format!("worker-{index}"))
                .spawn(move || {
                    let runtime = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(runtime) => runtime,
                        Err(e) => {
                            tracing::error!(index, error = %e, "worker runtime not built");
                            return;
                        }
                    };
                    if handle_tx.send(runtime.handle().clone()).is_err() {
                        return;
                    }
                    // The runtime runs the tasks spawned onto it until told to stop.
                    let _ = runtime.block_on(stopped);
                })
                .map_err(|source| WorkerError::Start { index, source })?;
            let handle = handle_rx.recv().map_err(|_| WorkerError::Died { index })?;
            workers.handles.push(handle);
            workers.stops.push(stop);
            workers.threads.push(thread);
        }
        Ok(workers)
    }

    pub fn handles(&self) -> &[Handle] {
        &self.handles
    }

    pub fn len(&self) -> usize {
        self.handles.len()
    }

    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stops.clear();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// Worker threads when `--worker-threads` is not given: one per CPU this process may
/// run on.
pub fn default_count() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
