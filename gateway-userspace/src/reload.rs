//! Hot reload: the config paths are watched (inotify through `notify`) and SIGHUP asks for
//! a reload too. A reload runs load → validate → compile on a blocking thread, away from
//! the accept loops, then binds the ports the new snapshot adds, swaps the snapshot in one
//! atomic store, starts and stops listeners, and rewrites the kernel policy. An object
//! with errors is dropped and the rest served (`compile::isolate`); a configuration with
//! errors that name no object (not YAML, no name) changes nothing: the last good snapshot
//! keeps serving, the diagnostics are logged, `gateway_config_reloads_total{result="failure"}`
//! counts it, and readiness stays up. Every request after the swap reads the new snapshot
//! (see runtime.rs).
//!
//! With `--kubernetes`, the cluster's objects (kubernetes.rs) wake this same loop and are
//! compiled together with the files.
//!
//! Kubernetes updates a ConfigMap or Secret volume by writing a new timestamped directory
//! and renaming a `..data` symlink over the old one; a recursive watch of the mounted
//! directory sees that rename, so volume updates reload like edits do.

use std::{
    collections::BTreeSet,
    ffi::OsString,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;
use notify::{
    EventKind, RecursiveMode, Watcher as _,
    event::{AccessKind, AccessMode, ModifyKind},
};
use thiserror::Error;
use tokio::{
    signal::unix::SignalKind,
    sync::{mpsc, watch},
};
use tracing::{debug, error, info, warn};

mod cpu_time;
use cpu_time::{CpuLaps, thread_cpu};

use crate::{
    compile::{self, Identity},
    config::{
        self, Diagnostics, SourceError,
        cache::{Change, ParseCache, ServiceKey, ServiceSet},
    },
    dns::{self, DnsAnswers},
    ebpf::{KernelError, NodePortRoute},
    kubernetes::store::ClusterStore,
    listeners::ListenerSet,
    metrics::{CredentialLabels, Metrics, ReloadLabels, SharedKernelPath},
    proxy::ProxyError,
    runtime::Live,
    snapshot::Snapshot,
    tls::{TlsState, credentials::CredentialReport},
};

/// Writers rarely finish in one event (an editor writes, renames, chmods; kubelet swaps
/// several links): a reload waits for this much quiet after the last event...
const DEBOUNCE: Duration = Duration::from_millis(20);
/// ...but no longer than this after the first, so a steady trickle of writes still loads.
const DEBOUNCE_MAX: Duration = Duration::from_millis(500);

#[derive(Debug, Error)]
pub enum ReloadError {
    #[error("reading the configuration: {0}")]
    Source(#[from] SourceError),
    #[error("the configuration has {} error(s)", .0.errors().count())]
    Invalid(Diagnostics),
    #[error("binding a new listener: {0}")]
    Bind(#[from] ProxyError),
    #[error("the compile task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("installing the SIGHUP handler: {0}")]
    Signal(std::io::Error),
    #[error("watching {path}: {source}")]
    Watch {
        path: PathBuf,
        source: notify::Error,
    },
}

/// Where the configuration comes from and whose view of it we compile.
#[derive(Clone, Debug)]
pub struct ConfigSource {
    pub paths: Vec<PathBuf>,
    pub identity: Identity,
    /// TLS session scopes and last good credentials, kept across compiles.
    pub tls: Arc<TlsState>,
    /// The cluster's objects (`--kubernetes`), compiled together with the files'.
    pub cluster: Option<Arc<ClusterStore>>,
    /// The last DNS answers for ServiceEntry hosts (dns.rs): a compile's DNS clusters
    /// start with them.
    pub dns: Option<Arc<DnsAnswers>>,
}

impl ConfigSource {
    /// load → validate → compile, the first time. Objects with errors are dropped
    /// (`compile::isolate`); errors that name no object fail the whole compile. It goes
    /// through `cache` so that the reload loop starts from it: the
    /// files parsed, the cluster's changes taken, the route memo kept. Call
    /// `CompileCache::applied` once the snapshot is live.
    pub fn compile_first(
        &self,
        cache: &mut CompileCache,
    ) -> Result<(Snapshot, Diagnostics), ReloadError> {
        cache.files.refresh(&self.paths)?;
        let (mut resources, mut loaded) = cache.files.resources();
        if let Some(cluster) = &self.cluster {
            cluster.take_change();
            let (objects, more) = cluster.resources();
            resources.append(objects);
            loaded.extend(more);
        }
        let isolated =
            compile::compile_isolating(&resources, loaded, &self.identity, &self.tls, None)
                .map_err(ReloadError::Invalid)?;
        cache.clusters_at_full = isolated.snapshot.clusters.len();
        cache.memo = Some(isolated.memo);
        Ok((
            self.with_dns_answers(isolated.snapshot),
            isolated.diagnostics,
        ))
    }

    /// The same as `compile`, re-parsing only the files whose text changed since `cache`
    /// last saw them; when only endpoints changed (and `previous` is up to date with
    /// everything else), `previous` with those endpoints updated.
    fn compile_cached(
        &self,
        cache: &mut CompileCache,
        previous: &Snapshot,
        trigger: &Trigger,
    ) -> Result<Compiled, ReloadError> {
        let change = match &trigger.touched {
            Some(touched) if cache.previous_is_current => {
                cache.files.refresh_touched(&self.paths, touched)?
            }
            _ => cache.files.refresh(&self.paths)?,
        };
        let change = match &self.cluster {
            Some(cluster) => change.merge(cluster.take_change()),
            None => change,
        };
        let beyond_config = trigger.beyond_config;
        debug!(change = change.summary(), "configuration files read");
        if change == Change::Unchanged && !beyond_config && cache.previous_is_current {
            return Ok(Compiled::Nothing);
        }
        if let Change::EndpointsOnly(services) = &change
            && cache.previous_is_current
        {
            let resources = self.endpoint_resources(cache, services);
            let index = cache
                .clusters_by_service
                .take()
                .filter(|index| index.is_for(&previous.clusters))
                .unwrap_or_else(|| compile::ClustersByService::of(&previous.clusters));
            // The memo learns the endpoints' warnings, for the next reusing compile.
            let (snapshot, diagnostics) = compile::update_endpoints_indexed(
                previous,
                &resources,
                services,
                &index,
                cache.memo.as_mut(),
            );
            cache.clusters_by_service = Some(index);
            return Ok(Compiled::Endpoints {
                snapshot,
                diagnostics,
                services: services.len(),
            });
        }
        // Only VirtualServices changed: the routes of the others are reused, as long as
        // the clusters carried over (some perhaps no longer named) stay few, and they were
        // made with every DestinationRule this compile has: one dropped for its errors
        // (which a rule is given when a cluster is made with it) is back in this
        // compile's first round, and only making its clusters again finds them.
        let reusable = matches!(change, Change::Routes(_))
            && cache.previous_is_current
            && previous.clusters.len() <= 2 * cache.clusters_at_full + 64
            && !previous
                .report
                .dropped
                .iter()
                .any(|d| d.object.kind == "DestinationRule");
        // The carried-over clusters get the changed Services' endpoints first, so that
        // the compile says what a full one says of them (no ready endpoints, say).
        let patched;
        let previous = match &change {
            Change::Routes(services) if reusable && !services.is_empty() => {
                let endpoints = self.endpoint_resources(cache, services);
                let (updated, _) =
                    compile::update_endpoints(previous, &endpoints, services, cache.memo.as_mut());
                patched = updated;
                &patched
            }
            _ => previous,
        };
        let reuse = cache
            .memo
            .as_ref()
            .filter(|_| reusable)
            .map(|memo| (previous, memo));
        let reused = reuse.is_some();
        let (mut resources, mut loaded) = cache.files.resources();
        if let Some(cluster) = &self.cluster {
            let (objects, more) = cluster.resources();
            resources.append(objects);
            loaded.extend(more);
        }
        let isolated =
            compile::compile_isolating(&resources, loaded, &self.identity, &self.tls, reuse);
        // Until this compile is applied, the live snapshot lags the files.
        cache.previous_is_current = false;
        cache.memo = None;
        let compile::Isolated {
            snapshot,
            diagnostics,
            memo,
            ..
        } = isolated.map_err(ReloadError::Invalid)?;
        if !reused {
            cache.clusters_at_full = snapshot.clusters.len();
        }
        cache.memo = Some(memo);
        Ok(Compiled::Full(self.with_dns_answers(snapshot), diagnostics))
    }

    /// `snapshot` with its DNS clusters' endpoints from the answers known now.
    fn with_dns_answers(&self, snapshot: Snapshot) -> Snapshot {
        self.dns
            .as_ref()
            .and_then(|answers| dns::apply_answers(&snapshot, answers))
            .unwrap_or(snapshot)
    }

    /// The EndpointSlices and Endpoints of `services`, from the files and the cluster.
    fn endpoint_resources(
        &self,
        cache: &CompileCache,
        services: &BTreeSet<ServiceKey>,
    ) -> config::Resources {
        let services = ServiceSet::new(services);
        let mut resources = cache.files.endpoint_resources(&services);
        if let Some(cluster) = &self.cluster {
            resources.append(cluster.endpoint_resources(&services));
        }
        resources
    }
}

/// What a reload applied.
#[derive(Debug, PartialEq, Eq)]
pub enum Applied {
    /// Nothing had changed.
    Nothing,
    /// Endpoints only.
    Endpoints,
    /// A new snapshot, except `failing` TLS credentials that did not load (their servers
    /// keep the last good version, or are not served).
    Full { failing: usize },
}

/// What a reload compiled.
enum Compiled {
    /// Nothing: the configuration files are as the live snapshot was compiled from.
    Nothing,
    /// Everything, from all the resources.
    Full(Snapshot, Diagnostics),
    /// The live snapshot with the endpoints of `services` Services read again.
    Endpoints {
        snapshot: Snapshot,
        diagnostics: Diagnostics,
        services: usize,
    },
}

/// What reloads keep between them.
#[derive(Default)]
pub struct CompileCache {
    /// The configuration files, parsed.
    files: ParseCache,
    /// Whether the live snapshot was compiled from everything `files` held before the
    /// current refresh (false after a full compile that was refused or not applied):
    /// only then can an endpoint update patch it, or a route change reuse its parts.
    previous_is_current: bool,
    /// What the last compile's VirtualServices gave (see `compile::compile_reusing`).
    memo: Option<compile::RouteMemo>,
    /// Clusters after the last compile that reused nothing.
    clusters_at_full: usize,
    /// The live cluster list's clusters by Service, kept for the endpoint updates that
    /// share the list.
    clusters_by_service: Option<compile::ClustersByService>,
}

impl CompileCache {
    /// The snapshot of `ConfigSource::compile_first` is live.
    pub fn applied(&mut self) {
        self.previous_is_current = true;
    }
}

/// Tells the kernel programs what a snapshot wants of them. Runs after every successful
/// reload (and could run at start); the single place the kernel policy is rewritten.
pub fn apply_kernel_policy(
    kernel: &SharedKernelPath,
    snapshot: &Snapshot,
) -> Result<(), KernelError> {
    let Ok(mut slot) = kernel.lock() else {
        return Ok(());
    };
    match slot.as_mut() {
        Some(path) => {
            let applied = path.apply_policy(&snapshot.kernel);
            path.log_unpoliced();
            applied
        }
        None => Ok(()),
    }
}

/// Node-port mode: points each node port of the snapshot at its bind port's listening
/// socket. Call after the snapshot's listeners are started.
pub fn steer_node_ports(
    kernel: &SharedKernelPath,
    snapshot: &Snapshot,
    listeners: &ListenerSet,
) -> Result<(), KernelError> {
    let sockets = listeners.sockets();
    let routes: Vec<NodePortRoute> = snapshot
        .kernel
        .node_ports
        .iter()
        .filter_map(|&(node_port, bind_port)| {
            sockets
                .iter()
                .find(|(port, _)| *port == bind_port)
                .and_then(|&(_, sockets)| {
                    Some(NodePortRoute {
                        node_port,
                        bind_port,
                        socket: sockets.v4?,
                        socket_v6: sockets.v6,
                    })
                })
        })
        .collect();
    let Ok(mut slot) = kernel.lock() else {
        return Ok(());
    };
    match slot.as_mut() {
        Some(path) => path.steer_node_ports(&routes),
        None => Ok(()),
    }
}

/// The niceness a compile runs at: when it shares a CPU with a worker, the worker's
/// requests go first (a 20 ms compile would otherwise sit in their tail latency).
const COMPILE_NICENESS: libc::c_int = 10;

/// Runs the calling thread (a blocking-pool thread, reused later for other work) at
/// `COMPILE_NICENESS` until dropped. Linux applies `setpriority` on a thread id to that
/// thread alone.
struct BackgroundPriority {
    thread: libc::id_t,
    before: libc::c_int,
}

impl BackgroundPriority {
    fn enter() -> Option<BackgroundPriority> {
        // SAFETY: gettid has no preconditions; getpriority/setpriority read and set the
        // scheduling priority of this thread only.
        unsafe {
            let thread = libc::gettid() as libc::id_t;
            let before = libc::getpriority(libc::PRIO_PROCESS, thread);
            if libc::setpriority(libc::PRIO_PROCESS, thread, COMPILE_NICENESS) != 0 {
                return None;
            }
            Some(BackgroundPriority { thread, before })
        }
    }
}

impl Drop for BackgroundPriority {
    fn drop(&mut self) {
        // SAFETY: as in `enter`. Lowering the niceness back may need CAP_SYS_NICE; without
        // it the thread stays in the background, which only slows later blocking work.
        unsafe {
            libc::setpriority(libc::PRIO_PROCESS, self.thread, self.before);
        }
    }
}

/// How often replaced configurations are checked for release.
const RETIRED_SWEEP: Duration = Duration::from_secs(1);

/// Replaced configurations, kept until no request holds them any more, so that the last
/// reference is dropped here on the control thread: freeing a large route table costs
/// milliseconds that would otherwise land on whichever worker's request let go last.
#[derive(Default)]
pub struct Retired(Mutex<Vec<Arc<Live>>>);

impl Retired {
    fn retire(&self, live: Arc<Live>) {
        self.sweep();
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(live);
    }

    /// Drops what no request holds any more.
    pub fn sweep(&self) {
        let mut retired = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        retired.retain(|old| Arc::strong_count(old) > 1);
    }
}

/// Everything a reload touches.
pub struct Reloader {
    pub source: ConfigSource,
    /// The configuration and cluster state the proxy reads.
    pub live: Arc<ArcSwap<Live>>,
    /// Replaced configurations that requests may still hold; start with
    /// `Default::default()`. See `Retired`.
    pub retired: Retired,
    pub listeners: Arc<ListenerSet>,
    pub kernel: SharedKernelPath,
    pub metrics: Arc<Metrics>,
    /// What the last reload parsed, file by file; start with `Default::default()`.
    pub compile_cache: Arc<Mutex<CompileCache>>,
    /// Each new compile's report, for the Gateway API status writer (`--kubernetes`).
    pub reports: Option<watch::Sender<Arc<crate::compile::Report>>>,
    /// The names the live snapshot's DNS clusters resolve, for the resolver task.
    pub dns_names: Option<watch::Sender<Arc<BTreeSet<String>>>>,
}

impl Reloader {
    /// Compiles the configuration again and, if it is good, makes it the live one; only
    /// what changed is recompiled, and nothing when the configuration files are unchanged
    /// and `beyond_config` is false.
    pub async fn reload(&self, trigger: Trigger) -> Result<Applied, ReloadError> {
        let started = Instant::now();
        // CPU time of this thread's stretches and of the compile's blocking thread.
        let mut cpu = CpuLaps::default();
        cpu.resume();
        let (source, cache) = (self.source.clone(), self.compile_cache.clone());
        let previous = self.live.load().snapshot.clone();
        cpu.pause();
        let (compiled, compile_cpu) = tokio::task::spawn_blocking(move || {
            let before = thread_cpu();
            let _background = BackgroundPriority::enter();
            let mut cache = cache.lock().unwrap_or_else(PoisonError::into_inner);
            let compiled = source.compile_cached(&mut cache, &previous, &trigger);
            (compiled, thread_cpu().saturating_sub(before))
        })
        .await?;
        cpu.resume();
        cpu.add(compile_cpu);
        let compiled = compiled?;
        let (snapshot, diagnostics) = match compiled {
            Compiled::Nothing => return Ok(Applied::Nothing),
            Compiled::Full(snapshot, diagnostics) => (snapshot, diagnostics),
            Compiled::Endpoints {
                snapshot,
                diagnostics,
                services,
            } => {
                // Listeners, TLS and the kernel policy are the previous snapshot's.
                for d in diagnostics.warnings() {
                    warn!("{d}");
                }
                self.publish(Arc::new(snapshot));
                info!(
                    elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
                    cpu_ms = cpu.ms(),
                    services,
                    "endpoints updated"
                );
                return Ok(Applied::Endpoints);
            }
        };
        let credentials = self.source.tls.credentials.staged_report();
        log_diagnostics(&diagnostics, &credentials);
        compile::isolate::log_dropped(&snapshot.report.dropped);
        cpu.pause();
        let bound = self.listeners.bind_new(&snapshot).await?;
        cpu.resume();
        let added = bound.ports();
        let snapshot = Arc::new(snapshot);
        self.publish(snapshot.clone());
        if let Some(names) = &self.dns_names {
            let wanted = dns::wanted_names(&snapshot);
            names.send_if_modified(|names| {
                let new = **names != wanted;
                if new {
                    *names = Arc::new(wanted);
                }
                new
            });
        }
        self.compile_cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .previous_is_current = true;
        let credentials = self.source.tls.credentials.commit();
        report_credentials(&self.metrics, &credentials);
        self.metrics.report_dropped(&snapshot.report.dropped);
        self.listeners.start(bound, &snapshot);
        if let Err(e) = steer_node_ports(&self.kernel, &snapshot, &self.listeners) {
            error!(error = %e, "reload: node-port steering could not be updated");
        }
        if let Err(e) = apply_kernel_policy(&self.kernel, &snapshot) {
            error!(error = %e, "reload: the kernel policy could not be written; the kernel filter polices nothing until the next reload (fail open), userspace still checks SNI");
        }
        let routes: usize = snapshot
            .listeners
            .iter()
            .flat_map(|l| &l.routes.virtual_hosts)
            .map(|v| v.routes.len())
            .sum();
        let failing = credentials.failing().len();
        if failing == 0 {
            info!(
                elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
                cpu_ms = cpu.ms(),
                listeners = snapshot.listeners.len(),
                routes,
                new_ports = ?added,
                "configuration reloaded"
            );
        } else {
            error!(
                elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
                cpu_ms = cpu.ms(),
                listeners = snapshot.listeners.len(),
                routes,
                new_ports = ?added,
                credentials_not_applied = ?credentials.failing(),
                "configuration reloaded EXCEPT {failing} TLS credential(s) that did not load"
            );
        }
        Ok(Applied::Full { failing })
    }

    /// Makes `snapshot` the live configuration, carrying over the cluster state of the
    /// one it replaces.
    pub fn publish(&self, snapshot: Arc<Snapshot>) {
        if let Some(reports) = &self.reports {
            // Endpoint updates carry the report over: nothing new to write then.
            reports.send_if_modified(|report| {
                let new = !Arc::ptr_eq(report, &snapshot.report);
                if new {
                    *report = snapshot.report.clone();
                }
                new
            });
        }
        let next = self.live.load().succeed(snapshot);
        let previous = self.live.swap(Arc::new(next));
        self.retired.retire(previous);
    }

    /// Puts the DNS answers known now into the live snapshot's endpoint lists (nothing
    /// else is recompiled), when they differ from what it serves.
    pub fn apply_dns_answers(&self) {
        let Some(answers) = &self.source.dns else {
            return;
        };
        let live = self.live.load();
        if let Some(snapshot) = dns::apply_answers(&live.snapshot, answers) {
            drop(live);
            self.publish(Arc::new(snapshot));
            info!("DNS answers applied to the endpoints");
        }
    }

    /// Reloads, and reports the outcome in logs and metrics; never stops serving.
    pub async fn reload_and_report(&self, cause: &str, trigger: Trigger) {
        let result = match self.reload(trigger).await {
            Ok(Applied::Nothing) => {
                debug!(cause, "configuration files unchanged; nothing to reload");
                return;
            }
            Ok(Applied::Endpoints) | Ok(Applied::Full { failing: 0 }) => "success",
            // Applied, but not all of it: a reload is successful only for what it applied.
            Ok(Applied::Full { .. }) => "partial",
            Err(ReloadError::Invalid(diagnostics)) => {
                for d in diagnostics.errors() {
                    error!("{d}");
                }
                error!(
                    cause,
                    errors = diagnostics.errors().count(),
                    "reload refused: the configuration has errors; still serving the last good one"
                );
                "failure"
            }
            Err(e) => {
                error!(cause, error = %e, "reload failed; still serving the last good configuration");
                "failure"
            }
        };
        self.metrics
            .config_reloads
            .get_or_create(&ReloadLabels { result })
            .inc();
        self.metrics
            .config_last_reload_successful
            .set(i64::from(result == "success"));
    }

    /// The loop that reloads on the changes and SIGHUPs `changes` saw (those from before
    /// this call first) until `shutdown` turns true.
    pub fn watch(
        self,
        changes: ChangeWatch,
        mut shutdown: watch::Receiver<bool>,
    ) -> impl Future<Output = ()> + Send + 'static {
        let ChangeWatch {
            watcher,
            sender: _,
            mut changed,
            mut hangup,
        } = changes;
        async move {
            let mut watcher = watcher;
            let _ = watcher.follow_credentials(&self.source.tls.credentials.files());
            // Parse everything once now, so the first reload re-parses only what changed
            // (unless the first compile went through the cache: `compile_first`).
            let (paths, cache) = (self.source.paths.clone(), self.compile_cache.clone());
            let _ = tokio::task::spawn_blocking(move || {
                let mut cache = cache.lock().unwrap_or_else(PoisonError::into_inner);
                if cache.previous_is_current {
                    return;
                }
                let _ = cache.files.refresh(&paths);
                // The live snapshot may predate what this read saw (a change while
                // starting): the first reload compiles everything.
                cache.previous_is_current = false;
            })
            .await;
            let mut sweep = tokio::time::interval(RETIRED_SWEEP);
            loop {
                let mut touched = Vec::new();
                let cause = tokio::select! {
                    _ = shutdown.wait_for(|stop| *stop) => return,
                    _ = sweep.tick() => {
                        self.retired.sweep();
                        continue;
                    }
                    Some(first) = changed.recv() => {
                        if first == Touched::Dns {
                            // The answers are stored already: only endpoint lists change.
                            self.apply_dns_answers();
                            continue;
                        }
                        let cause = match first {
                            Touched::Cluster => "cluster change",
                            _ => "file change",
                        };
                        touched.push(first);
                        cause
                    }
                    Some(()) = hangup.recv() => {
                        // Everything is read again, and compiled even if unchanged.
                        touched.push(Touched::Unknown);
                        "SIGHUP"
                    }
                };
                // Let the writer finish: wait for a quiet moment, folding in further events.
                let first = Instant::now();
                while first.elapsed() < DEBOUNCE_MAX {
                    match tokio::time::timeout(DEBOUNCE, changed.recv()).await {
                        Ok(Some(more)) => touched.push(more),
                        _ => break,
                    }
                }
                // Looked at now that the writer is done: its temporary files are gone.
                let trigger = Trigger::of(&touched);
                self.reload_and_report(cause, trigger).await;
                let _ = watcher.follow_credentials(&self.source.tls.credentials.files());
                if touched.contains(&Touched::Dns) {
                    // An unchanged configuration compiles nothing, and a refused one
                    // leaves the live snapshot: either way the answers still apply.
                    self.apply_dns_answers();
                }
            }
        }
    }
}

/// Why a reload runs.
#[derive(Debug, Default)]
pub struct Trigger {
    /// The paths the watcher saw change; None when it could not tell (SIGHUP, lost
    /// events, start-up), and then every file is looked at.
    pub touched: Option<Vec<PathBuf>>,
    /// The change may concern files other than the configuration files (see `Touched`):
    /// a reload compiles even when those are unchanged.
    pub beyond_config: bool,
}

impl Trigger {
    /// Anything may have changed.
    pub fn anything() -> Trigger {
        Trigger {
            touched: None,
            beyond_config: true,
        }
    }

    fn of(events: &[Touched]) -> Trigger {
        let mut touched = Vec::new();
        for event in events {
            match event {
                Touched::Paths(paths) => touched.extend(paths.iter().cloned()),
                // The cluster store says itself what changed (`ClusterStore::take_change`).
                Touched::Cluster => {}
                // DNS answers are applied after the reload (`Reloader::watch`).
                Touched::Dns => {}
                Touched::Unknown => return Trigger::anything(),
            }
        }
        Trigger {
            beyond_config: events.iter().any(Touched::beyond_config),
            touched: Some(touched),
        }
    }
}

/// What a watch event touched.
#[derive(Debug, PartialEq, Eq)]
pub enum Touched {
    Paths(Vec<PathBuf>),
    /// The watch lost events (its queue overflowed): anything may have changed.
    Unknown,
    /// Objects of the Kubernetes API changed.
    Cluster,
    /// A ServiceEntry host's DNS answer changed (dns.rs).
    Dns,
}

impl Touched {
    /// Whether the change may concern more than the configuration files the parse cache
    /// compares (certificate files, a volume's `..data` link): then a reload that finds
    /// the configuration files unchanged compiles anyway. A path that is gone (a
    /// writer's temporary file, renamed into place) cannot.
    fn beyond_config(&self) -> bool {
        match self {
            Touched::Unknown => true,
            Touched::Cluster | Touched::Dns => false,
            Touched::Paths(paths) => paths.iter().any(|path| {
                !config::source::is_config_file(path) && path.symlink_metadata().is_ok()
            }),
        }
    }
}

/// The configuration's watches and the SIGHUP handler, set up before the first compile:
/// a change or a SIGHUP that comes while the daemon starts is kept for the reload loop
/// (`Reloader::watch`) instead of being missed or, for SIGHUP, killing the process.
pub struct ChangeWatch {
    watcher: FileWatch,
    sender: mpsc::UnboundedSender<Touched>,
    changed: mpsc::UnboundedReceiver<Touched>,
    hangup: tokio::signal::unix::Signal,
}

impl ChangeWatch {
    /// What wakes the reload loop when the cluster's objects change (the cluster store's
    /// waker): the same queue, so file and cluster changes debounce together.
    pub fn cluster_waker(&self) -> impl Fn() + Send + Sync + 'static {
        let sender = self.sender.clone();
        move || {
            let _ = sender.send(Touched::Cluster);
        }
    }

    /// What wakes the reload loop when a DNS answer changed (the resolver's callback).
    pub fn dns_waker(&self) -> impl Fn() + Send + Sync + 'static {
        let sender = self.sender.clone();
        move || {
            let _ = sender.send(Touched::Dns);
        }
    }

    /// Watches `paths` (config paths and `--watch` paths) and SIGHUP. Call it within
    /// the control plane's runtime.
    pub fn start(paths: &[PathBuf]) -> Result<Self, ReloadError> {
        let hangup =
            tokio::signal::unix::signal(SignalKind::hangup()).map_err(ReloadError::Signal)?;
        let (changed_tx, changed) = mpsc::unbounded_channel();
        let watcher = watch_paths(paths, changed_tx.clone())?;
        info!(paths = ?paths, "watching the configuration; SIGHUP reloads too");
        Ok(ChangeWatch {
            watcher,
            sender: changed_tx,
            changed,
            hangup,
        })
    }
}

/// Logs a compile's warnings; those about credentials that did not load at error level,
/// since each means a host serves a stale certificate or none.
pub fn log_diagnostics(diagnostics: &Diagnostics, credentials: &CredentialReport) {
    for warning in diagnostics.warnings() {
        if credentials.is_problem(warning) {
            error!("{warning}");
        } else {
            warn!("{warning}");
        }
    }
}

/// Counts each credential that failed in a compile now live, and sets every credential's
/// validity gauge (credentials no longer used disappear from it).
pub fn report_credentials(metrics: &Metrics, credentials: &CredentialReport) {
    metrics.tls_credential_valid.clear();
    for name in &credentials.loaded {
        let labels = CredentialLabels {
            credential: name.clone(),
        };
        metrics.tls_credential_valid.get_or_create(&labels).set(1);
    }
    for name in credentials.failing() {
        let labels = CredentialLabels {
            credential: name.to_owned(),
        };
        metrics.tls_credential_errors.get_or_create(&labels).inc();
        metrics.tls_credential_valid.get_or_create(&labels).set(0);
    }
}

/// What one config path asks to watch: a directory recursively, or a file through its
/// directory (editors and kubelet replace files by renaming rather than writing them in
/// place, which a watch on the file itself would lose).
#[derive(Debug)]
struct Watched {
    dir: PathBuf,
    /// For a file: its name in `dir`; only it and `..data` matter there.
    file: Option<OsString>,
}

impl Watched {
    fn of(path: &Path) -> Self {
        if path.is_dir() {
            return Watched {
                dir: path.to_owned(),
                file: None,
            };
        }
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        Watched {
            dir: dir.to_owned(),
            file: path.file_name().map(ToOwned::to_owned),
        }
    }

    /// Whether a change at `path` can change what a load reads. The loader skips hidden
    /// entries, so their changes cannot, except a volume's `..data` link, through which
    /// the visible names of a ConfigMap or Secret volume point.
    fn concerns(&self, path: &Path) -> bool {
        let Ok(relative) = path.strip_prefix(&self.dir) else {
            return false;
        };
        let is_data_link = |name: &str| name.starts_with("..data") && !name.ends_with("_tmp");
        let mut names = relative
            .components()
            .map(|c| c.as_os_str().to_string_lossy());
        let Some(first) = names.next() else {
            return false;
        };
        if first.starts_with('.') && !is_data_link(&first) {
            return false;
        }
        if names.any(|name| name.starts_with('.')) {
            return false;
        }
        match &self.file {
            None => true,
            Some(file) => is_data_link(&first) || first == file.to_string_lossy(),
        }
    }
}

/// The configuration's watches, and those of the credential files the live
/// configuration reads (DestinationRule and Gateway certificate, key and CA files):
/// those follow each compile, so a rotated client certificate reloads like an edit.
struct FileWatch {
    watcher: notify::RecommendedWatcher,
    /// What the event filter looks at: the configuration paths (the first `fixed`),
    /// then the credential files.
    watched: Arc<Mutex<Vec<Watched>>>,
    fixed: usize,
    /// Directories watched for credential files alone (none of the configuration's
    /// watches covers them).
    credential_dirs: Vec<PathBuf>,
    /// Credential directories in use that could not be watched, already warned about:
    /// tried again at each reload, but warned about again only once they have been
    /// out of use (or watched) in between.
    unwatchable: Vec<PathBuf>,
}

impl FileWatch {
    /// Watches the directories of `files` that no watch covers yet and drops the watches
    /// of credential directories no longer used. A directory that cannot be watched is
    /// logged once (its files are still re-read on every reload) and returned, so every
    /// reload does not repeat the same warning.
    fn follow_credentials(&mut self, files: &[PathBuf]) -> Vec<PathBuf> {
        let mut watched = self.watched.lock().unwrap_or_else(PoisonError::into_inner);
        watched.truncate(self.fixed);
        let mut dirs: Vec<PathBuf> = Vec::new();
        for file in files {
            let entry = Watched::of(file);
            let covered = watched[..self.fixed].iter().any(|w| match w.file {
                None => entry.dir.starts_with(&w.dir),
                Some(_) => entry.dir == w.dir,
            });
            if !covered && !dirs.contains(&entry.dir) {
                dirs.push(entry.dir.clone());
            }
            watched.push(entry);
        }
        drop(watched);
        for dir in self.credential_dirs.iter().filter(|d| !dirs.contains(d)) {
            let _ = self.watcher.unwatch(dir);
        }
        let mut now = Vec::new();
        let mut unwatchable = Vec::new();
        let mut warned = Vec::new();
        for dir in dirs {
            if self.credential_dirs.contains(&dir) {
                now.push(dir);
                continue;
            }
            match self.watcher.watch(&dir, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    info!(dir = %dir.display(), "watching credential files");
                    now.push(dir);
                }
                Err(e) if self.unwatchable.contains(&dir) => {
                    debug!(dir = %dir.display(), error = %e, "credential files still not watched");
                    unwatchable.push(dir);
                }
                Err(e) => {
                    warn!(
                        dir = %dir.display(),
                        error = %e,
                        "credential files here are not watched: a change applies at the next reload"
                    );
                    warned.push(dir.clone());
                    unwatchable.push(dir);
                }
            }
        }
        self.credential_dirs = now;
        self.unwatchable = unwatchable;
        warned
    }
}

fn watch_paths(
    paths: &[PathBuf],
    changed: mpsc::UnboundedSender<Touched>,
) -> Result<FileWatch, ReloadError> {
    let fixed: Vec<Watched> = paths.iter().map(|p| Watched::of(p)).collect();
    let targets: Vec<(PathBuf, RecursiveMode)> = fixed
        .iter()
        .map(|w| {
            let mode = match w.file {
                None => RecursiveMode::Recursive,
                Some(_) => RecursiveMode::NonRecursive,
            };
            (w.dir.clone(), mode)
        })
        .collect();
    let count = fixed.len();
    let watched = Arc::new(Mutex::new(fixed));
    let filter = watched.clone();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let touched = match event {
            Ok(event) => {
                let watched = filter.lock().unwrap_or_else(PoisonError::into_inner);
                let paths: Vec<PathBuf> = event
                    .paths
                    .into_iter()
                    .filter(|path| {
                        announces_new_content(&event.kind, path)
                            && watched.iter().any(|w| w.concerns(path))
                    })
                    .collect();
                if paths.is_empty() {
                    return;
                }
                Touched::Paths(paths)
            }
            // Overflowed queue and the like: better one reload too many than one missed.
            Err(_) => Touched::Unknown,
        };
        let _ = changed.send(touched);
    })
    .map_err(|source| ReloadError::Watch {
        path: PathBuf::new(),
        source,
    })?;
    for (dir, mode) in targets {
        watcher
            .watch(&dir, mode)
            .map_err(|source| ReloadError::Watch { path: dir, source })?;
    }
    Ok(FileWatch {
        watcher,
        watched,
        fixed: count,
        credential_dirs: Vec::new(),
        unwatchable: Vec::new(),
    })
}

/// Whether an event can mean a finished change. A file's content is complete when its
/// writer closes it: a shell's `>` truncates first, and reading the empty file in between
/// would be a valid configuration with nothing in it. So data writes and the creation of
/// a (still empty) regular file wait for the close; renames, removals, attribute changes
/// and new symlinks count at once.
fn announces_new_content(kind: &EventKind, path: &Path) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) | EventKind::Modify(ModifyKind::Data(_)) => false,
        EventKind::Create(_) => path.symlink_metadata().is_ok_and(|m| m.is_symlink()),
        _ => true,
    }
}

#[cfg(test)]
mod incremental_tests;

#[cfg(test)]
mod tests {
    use super::*;

    /// The start-up race: a change written after the watch starts but before the reload
    /// loop runs (while the first snapshot compiles and the listeners bind) waits for it.
    #[tokio::test]
    async fn a_change_during_start_up_waits_for_the_reload_loop()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = std::env::temp_dir().join(format!("gatewayd-start-race-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let file = dir.join("gateway.yaml");
        std::fs::write(&file, "# first\n")?;
        let mut changes = ChangeWatch::start(std::slice::from_ref(&file))?;
        std::fs::write(&file, "# changed while starting\n")?;
        let seen = tokio::time::timeout(Duration::from_secs(10), changes.changed.recv()).await;
        std::fs::remove_dir_all(&dir)?;
        assert_eq!(seen, Ok(Some(Touched::Paths(vec![file]))));
        Ok(())
    }

    #[test]
    fn writes_in_place_reload_when_the_writer_closes() {
        use notify::event::{CreateKind, DataChange, RenameMode};
        let path = Path::new("/nonexistent/gateway.yaml");
        let data = EventKind::Modify(ModifyKind::Data(DataChange::Any));
        assert!(!announces_new_content(&data, path));
        let closed = EventKind::Access(AccessKind::Close(AccessMode::Write));
        assert!(announces_new_content(&closed, path));
        let read = EventKind::Access(AccessKind::Close(AccessMode::Read));
        assert!(!announces_new_content(&read, path));
        let renamed = EventKind::Modify(ModifyKind::Name(RenameMode::To));
        assert!(announces_new_content(&renamed, path));
        // A new regular file is still empty; its close follows.
        let created = EventKind::Create(CreateKind::File);
        assert!(!announces_new_content(&created, path));
    }

    /// A credential directory that cannot be watched (here: it does not exist yet) is
    /// warned about once while it stays in use, not at every reload; it is tried again
    /// each time, and watched once it can be.
    #[test]
    fn an_unwatchable_credential_directory_warns_once() -> Result<(), Box<dyn std::error::Error>> {
        let root = std::env::temp_dir().join(format!("gatewayd-cred-watch-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let config = root.join("config");
        std::fs::create_dir_all(&config)?;
        let (sender, _changes) = mpsc::unbounded_channel();
        let mut watch = watch_paths(std::slice::from_ref(&config), sender)?;
        let missing = root.join("certs");
        let files = [missing.join("client.pem"), missing.join("client.key")];

        assert_eq!(watch.follow_credentials(&files), vec![missing.clone()]);
        assert_eq!(
            watch.follow_credentials(&files),
            Vec::<PathBuf>::new(),
            "second reload"
        );
        assert_eq!(
            watch.follow_credentials(&files),
            Vec::<PathBuf>::new(),
            "third reload"
        );
        // Out of use, then used again: a new warning.
        assert_eq!(watch.follow_credentials(&[]), Vec::<PathBuf>::new());
        assert_eq!(watch.follow_credentials(&files), vec![missing.clone()]);
        // The directory appears: the next reload watches it.
        std::fs::create_dir_all(&missing)?;
        assert_eq!(watch.follow_credentials(&files), Vec::<PathBuf>::new());
        assert_eq!(watch.credential_dirs, vec![missing.clone()]);
        assert!(watch.unwatchable.is_empty());
        // Covered by the configuration's own (recursive) watch: nothing more to watch.
        assert_eq!(
            watch.follow_credentials(&[config.join("tls/ca.pem")]),
            Vec::<PathBuf>::new()
        );
        assert!(watch.credential_dirs.is_empty());
        std::fs::remove_dir_all(&root)?;
        Ok(())
    }

    #[test]
    fn only_what_the_loader_reads_matters() {
        let dir = Watched {
            dir: PathBuf::from("/srv/routes"),
            file: None,
        };
        assert!(dir.concerns(Path::new("/srv/routes/a.yaml")));
        assert!(dir.concerns(Path::new("/srv/routes/team/b.yaml")));
        assert!(dir.concerns(Path::new("/srv/routes/..data")));
        assert!(!dir.concerns(Path::new("/srv/routes/..data_tmp")));
        assert!(!dir.concerns(Path::new("/srv/routes/.a.yaml.swp")));
        assert!(!dir.concerns(Path::new("/srv/routes/..2026_11_22_00_00_00.1/a.yaml")));
        assert!(!dir.concerns(Path::new("/srv/other/a.yaml")));

        let file = Watched::of(Path::new("/etc/gatewayd/gateway.yaml"));
        assert!(file.concerns(Path::new("/etc/gatewayd/gateway.yaml")));
        assert!(file.concerns(Path::new("/etc/gatewayd/..data")));
        assert!(!file.concerns(Path::new("/etc/gatewayd/notes.yaml")));
    }
}
