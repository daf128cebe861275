//! The set of listening sockets, keyed by bind port. The first snapshot opens it; each
//! reload diffs it against the new snapshot: ports that appear are bound *before* the new
//! snapshot is swapped in (so a port that cannot be bound fails the reload and nothing
//! changes), ports that disappear stop accepting and drain like a shutdown does.

use std::{
    collections::{BTreeMap, BTreeSet},
    os::fd::{AsRawFd, RawFd},
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use tokio::{net::TcpListener, sync::watch, task::JoinHandle};
use tracing::info;

use crate::{
    proxy::{self, ProxyContext, ProxyError},
    snapshot::{Protocol, Snapshot},
};

/// A port that just stopped accepting may still be held for a moment by its accept loop;
/// rebinding it (removed, then added back by a quick second reload) retries this often.
const REBIND_ATTEMPTS: u32 = 20;
const REBIND_PAUSE: Duration = Duration::from_millis(10);

/// One accept loop and the switch that stops it.
struct Running {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    /// The listening socket (owned by the accept loop), for node-port steering.
    socket: RawFd,
}

/// Ports bound for a snapshot that is not yet serving; `ListenerSet::start` takes them.
pub struct Bound {
    listeners: Vec<(u16, TcpListener)>,
}

impl Bound {
    pub fn ports(&self) -> Vec<u16> {
        self.listeners.iter().map(|(port, _)| *port).collect()
    }
}

pub struct ListenerSet {
    ctx: Arc<ProxyContext>,
    drain_timeout: Duration,
    running: Mutex<BTreeMap<u16, Running>>,
    /// Accept loops of removed ports, finishing their drain.
    draining: Mutex<Vec<JoinHandle<()>>>,
}

impl ListenerSet {
    pub fn new(ctx: Arc<ProxyContext>, drain_timeout: Duration) -> Self {
        ListenerSet {
            ctx,
            drain_timeout,
            running: Mutex::default(),
            draining: Mutex::default(),
        }
    }

    /// The bind ports accepting right now.
    pub fn ports(&self) -> BTreeSet<u16> {
        self.lock_running().keys().copied().collect()
    }

    /// The listening socket of each bind port accepting right now.
    pub fn sockets(&self) -> Vec<(u16, RawFd)> {
        self.lock_running()
            .iter()
            .map(|(port, r)| (*port, r.socket))
            .collect()
    }

    /// Binds every port of `snapshot` that is not bound yet. Nothing is served from them
    /// until `start`; on error the ports bound so far are closed again.
    pub async fn bind_new(&self, snapshot: &Snapshot) -> Result<Bound, ProxyError> {
        let running = self.ports();
        let wanted: BTreeSet<u16> = snapshot.listeners.iter().map(|l| l.bind_port).collect();
        let mut listeners = Vec::new();
        for port in wanted.difference(&running) {
            let listener = bind_with_retry(*port).await?;
            let tls = snapshot.listeners.iter().any(|l| {
                l.bind_port == *port && matches!(l.protocol, Protocol::Https | Protocol::Tls)
            });
            // TLS clients speak first: the connection waits in the kernel for its
            // ClientHello, where the kernel path can still refuse it (issue: SNI early
            // rejection); an idle connect never reaches accept().
            if tls && let Err(e) = crate::ebpf::defer_accept(&listener) {
                tracing::warn!(port, error = %e, "TCP_DEFER_ACCEPT not set");
            }
            listeners.push((*port, listener));
        }
        Ok(Bound { listeners })
    }

    /// Starts accepting on the newly bound ports and stops the ports `snapshot` no longer
    /// has. Call it after `snapshot` is the live one, so new ports serve the new routes.
    pub fn start(&self, bound: Bound, snapshot: &Snapshot) {
        let wanted: BTreeSet<u16> = snapshot.listeners.iter().map(|l| l.bind_port).collect();
        let mut running = self.lock_running();
        for (port, listener) in bound.listeners {
            let socket = listener.as_raw_fd();
            let (stop, stop_rx) = watch::channel(false);
            let task = tokio::spawn(proxy::serve(
                listener,
                self.ctx.clone(),
                stop_rx,
                self.drain_timeout,
            ));
            running.insert(port, Running { stop, task, socket });
        }
        let removed: Vec<u16> = running
            .keys()
            .filter(|port| !wanted.contains(port))
            .copied()
            .collect();
        let mut draining = self.draining.lock().unwrap_or_else(PoisonError::into_inner);
        for port in removed {
            if let Some(listener) = running.remove(&port) {
                info!(port, "listener removed by reload: draining it");
                let _ = listener.stop.send(true);
                draining.push(listener.task);
            }
        }
        draining.retain(|task| !task.is_finished());
    }

    /// Stops every accept loop and waits until each has drained (or hit the drain timeout).
    pub async fn shutdown(&self) {
        let mut tasks: Vec<JoinHandle<()>> = {
            let mut running = self.lock_running();
            std::mem::take(&mut *running)
                .into_values()
                .map(|listener| {
                    let _ = listener.stop.send(true);
                    listener.task
                })
                .collect()
        };
        tasks.extend(std::mem::take(
            &mut *self.draining.lock().unwrap_or_else(PoisonError::into_inner),
        ));
        for task in tasks {
            let _ = task.await;
        }
    }

    fn lock_running(&self) -> std::sync::MutexGuard<'_, BTreeMap<u16, Running>> {
        self.running.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

async fn bind_with_retry(port: u16) -> Result<TcpListener, ProxyError> {
    let mut attempt = 1;
    loop {
        match proxy::bind_port(port) {
            Err(ProxyError::Bind { source, .. })
                if source.kind() == std::io::ErrorKind::AddrInUse && attempt < REBIND_ATTEMPTS =>
            {
                attempt += 1;
                tokio::time::sleep(REBIND_PAUSE).await;
            }
            result => return result,
        }
    }
}
