//! The set of listening sockets, keyed by bind port and address (every address, or one a
//! Gateway's `spec.addresses` names). The first snapshot opens it; each reload diffs it
//! against the new snapshot: ports that appear are bound *before* the new snapshot is
//! swapped in (so a port that cannot be bound fails the reload and nothing changes),
//! ports that disappear stop accepting and drain like a shutdown does. Each port has one
//! socket and accept loop per worker thread (workers.rs) and address family (`bind.rs`).
//! Which listener of the snapshot serves a connection is decided by its local address
//! (`Snapshot::listener_for`), not by the socket that accepted it.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    os::fd::{AsRawFd, RawFd},
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use tokio::{runtime::Handle, sync::watch, task::JoinHandle};
use tracing::info;

use crate::{
    proxy::{self, ProxyContext, ProxyError},
    snapshot::{Protocol, Snapshot},
};

mod bind;

pub(crate) use bind::bind_admin;

/// A port that just stopped accepting may still be held for a moment by its accept loop;
/// rebinding it (removed, then added back by a quick second reload) retries this often.
const REBIND_ATTEMPTS: u32 = 20;
const REBIND_PAUSE: Duration = Duration::from_millis(10);

/// A bind port and the address bound there: None is every address.
pub type BindKey = (u16, Option<IpAddr>);

/// What `snapshot` wants bound.
fn wanted(snapshot: &Snapshot) -> BTreeSet<BindKey> {
    snapshot
        .listeners
        .iter()
        .map(|l| (l.bind_port, l.address))
        .collect()
}

/// A port's accept loops (one per worker) and the switch that stops them.
struct Running {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    /// A listening socket of the port per family (owned by accept loops), for node-port
    /// steering: the kernel picks among the port's reuse-port group from it.
    sockets: ListenerSockets,
}

/// A listening socket of a port for each address family it is bound in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListenerSockets {
    /// None for a port bound on one IPv6 address.
    pub v4: Option<RawFd>,
    /// None where the node has no IPv6, or for one IPv4 address.
    pub v6: Option<RawFd>,
}

/// Ports bound for a snapshot that is not yet serving; `ListenerSet::start` takes them.
pub struct Bound {
    listeners: Vec<(BindKey, Vec<std::net::TcpListener>)>,
}

impl Bound {
    pub fn ports(&self) -> Vec<u16> {
        let mut ports: Vec<u16> = self.listeners.iter().map(|((port, _), _)| *port).collect();
        ports.dedup();
        ports
    }
}

pub struct ListenerSet {
    ctx: Arc<ProxyContext>,
    /// The worker runtimes the accept loops run on.
    workers: Vec<Handle>,
    drain_timeout: Duration,
    running: Mutex<BTreeMap<BindKey, Running>>,
    /// Accept loops of removed ports, finishing their drain.
    draining: Mutex<Vec<JoinHandle<()>>>,
}

impl ListenerSet {
    pub fn new(ctx: Arc<ProxyContext>, workers: Vec<Handle>, drain_timeout: Duration) -> Self {
        ListenerSet {
            ctx,
            workers,
            drain_timeout,
            running: Mutex::default(),
            draining: Mutex::default(),
        }
    }

    /// The bind ports and addresses accepting right now.
    pub fn keys(&self) -> BTreeSet<BindKey> {
        self.lock_running().keys().copied().collect()
    }

    /// The listening sockets of each bind port accepting right now on every address
    /// (node-port steering leads a node port to these).
    pub fn sockets(&self) -> Vec<(u16, ListenerSockets)> {
        self.lock_running()
            .iter()
            .filter(|((_, address), _)| address.is_none())
            .map(|((port, _), r)| (*port, r.sockets))
            .collect()
    }

    /// Binds every port of `snapshot` that is not bound yet. Nothing is served from them
    /// until `start`; on error the ports bound so far are closed again.
    pub async fn bind_new(&self, snapshot: &Snapshot) -> Result<Bound, ProxyError> {
        let mut held = self.keys();
        let wanted = wanted(snapshot);
        let mut listeners = Vec::new();
        // Every address comes first on a port (None sorts first), with the probe.
        for (port, address) in wanted.difference(&held.clone()).copied() {
            // One address beside every address on a port (or the other way round) is
            // ours to share: the exclusive probe would fail on our own socket.
            let probe = !held
                .iter()
                .any(|&(p, a)| p == port && a != address && (a.is_none() || address.is_none()));
            let sockets = bind_with_retry(port, address, self.workers.len(), probe).await?;
            held.insert((port, address));
            let tls = snapshot.listeners.iter().any(|l| {
                (l.bind_port, l.address) == (port, address)
                    && matches!(l.protocol, Protocol::Https | Protocol::Tls)
            });
            // TLS clients speak first: the connection waits in the kernel for its
            // ClientHello, where the kernel path can still refuse it (issue: SNI early
            // rejection); an idle connect never reaches accept().
            for socket in sockets.iter().filter(|_| tls) {
                if let Err(e) = crate::ebpf::defer_accept(socket) {
                    tracing::warn!(port, error = %e, "TCP_DEFER_ACCEPT not set");
                }
            }
            listeners.push(((port, address), sockets));
        }
        Ok(Bound { listeners })
    }

    /// Starts accepting on the newly bound ports and stops the ports `snapshot` no longer
    /// has. Call it after `snapshot` is the live one, so new ports serve the new routes.
    pub fn start(&self, bound: Bound, snapshot: &Snapshot) {
        let wanted = wanted(snapshot);
        let mut running = self.lock_running();
        for (key, sockets) in bound.listeners {
            let family = |v6: bool| {
                sockets
                    .iter()
                    .find(|s| s.local_addr().is_ok_and(|a| a.is_ipv6() == v6))
                    .map(AsRawFd::as_raw_fd)
            };
            let fds = ListenerSockets {
                v4: family(false),
                v6: family(true),
            };
            let (stop, stop_rx) = watch::channel(false);
            // The sockets come per family, one per worker each: every worker accepts on
            // one socket of each family.
            let tasks = sockets
                .into_iter()
                .zip(self.workers.iter().cycle())
                .map(|(listener, worker)| {
                    worker.spawn(proxy::serve(
                        listener,
                        self.ctx.clone(),
                        stop_rx.clone(),
                        self.drain_timeout,
                    ))
                })
                .collect();
            running.insert(
                key,
                Running {
                    stop,
                    tasks,
                    sockets: fds,
                },
            );
        }
        let removed: Vec<BindKey> = running
            .keys()
            .filter(|key| !wanted.contains(key))
            .copied()
            .collect();
        let mut draining = self.draining.lock().unwrap_or_else(PoisonError::into_inner);
        for key in removed {
            if let Some(listener) = running.remove(&key) {
                let (port, address) = key;
                info!(port, ?address, "listener removed by reload: draining it");
                let _ = listener.stop.send(true);
                draining.extend(listener.tasks);
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
                .flat_map(|listener| {
                    let _ = listener.stop.send(true);
                    listener.tasks
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

    fn lock_running(&self) -> std::sync::MutexGuard<'_, BTreeMap<BindKey, Running>> {
        self.running.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

async fn bind_with_retry(
    port: u16,
    address: Option<IpAddr>,
    count: usize,
    probe: bool,
) -> Result<Vec<std::net::TcpListener>, ProxyError> {
    let mut attempt = 1;
    loop {
        match bind::bind_port(port, address, count, probe) {
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
