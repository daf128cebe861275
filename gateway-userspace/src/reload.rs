//! Hot reload: the config paths are watched (inotify through `notify`) and SIGHUP asks for
//! a reload too. A reload runs load → validate → compile on a blocking thread, away from
//! the accept loops, then binds the ports the new snapshot adds, swaps the snapshot in one
//! atomic store, starts and stops listeners, and rewrites the kernel policy. A broken
//! configuration changes nothing: the last good snapshot keeps serving, the diagnostics
//! are logged, `gateway_config_reloads_total{result="failure"}` counts it, and readiness
//! stays up. Connections keep the snapshot they were accepted with until they close.
//!
//! Kubernetes updates a ConfigMap or Secret volume by writing a new timestamped directory
//! and renaming a `..data` symlink over the old one; a recursive watch of the mounted
//! directory sees that rename, so volume updates reload like edits do.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
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
use tracing::{error, info, warn};

use crate::{
    compile::{self, Identity},
    config::{self, Diagnostics, SourceError},
    ebpf::KernelError,
    listeners::ListenerSet,
    metrics::{Metrics, ReloadLabels, SharedKernelPath},
    proxy::ProxyError,
    snapshot::Snapshot,
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
}

impl ConfigSource {
    /// load → validate → compile. Errors in any document fail the whole compile; warnings
    /// come back with the snapshot.
    pub fn compile(&self) -> Result<(Snapshot, Diagnostics), ReloadError> {
        let (resources, mut diagnostics) = config::load(&self.paths)?;
        let (snapshot, more) = compile::compile(&resources, &self.identity);
        diagnostics.extend(more);
        if diagnostics.has_errors() {
            return Err(ReloadError::Invalid(diagnostics));
        }
        Ok((snapshot, diagnostics))
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
        Some(path) => path.apply_policy(&snapshot.kernel),
        None => Ok(()),
    }
}

/// Everything a reload touches.
pub struct Reloader {
    pub source: ConfigSource,
    pub snapshots: Arc<ArcSwap<Snapshot>>,
    pub listeners: Arc<ListenerSet>,
    pub kernel: SharedKernelPath,
    pub metrics: Arc<Metrics>,
}

impl Reloader {
    /// Compiles the configuration again and, if it is good, makes it the live one.
    pub async fn reload(&self) -> Result<(), ReloadError> {
        let started = Instant::now();
        let source = self.source.clone();
        let (snapshot, diagnostics) =
            tokio::task::spawn_blocking(move || source.compile()).await??;
        for warning in diagnostics.warnings() {
            warn!("{warning}");
        }
        let bound = self.listeners.bind_new(&snapshot).await?;
        let added = bound.ports();
        let snapshot = Arc::new(snapshot);
        self.snapshots.store(snapshot.clone());
        self.listeners.start(bound, &snapshot);
        if let Err(e) = apply_kernel_policy(&self.kernel, &snapshot) {
            error!(error = %e, "reload: the kernel policy could not be updated; the kernel path keeps the previous one");
        }
        let routes: usize = snapshot
            .listeners
            .iter()
            .flat_map(|l| &l.routes.virtual_hosts)
            .map(|v| v.routes.len())
            .sum();
        info!(
            elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
            listeners = snapshot.listeners.len(),
            routes,
            new_ports = ?added,
            "configuration reloaded"
        );
        Ok(())
    }

    /// Reloads, and reports the outcome in logs and metrics; never stops serving.
    pub async fn reload_and_report(&self, cause: &str) {
        let result = match self.reload().await {
            Ok(()) => "success",
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

    /// Sets up the watches and the SIGHUP handler now (so a SIGHUP from here on reloads
    /// instead of killing the process), and returns the loop that reloads on either until
    /// `shutdown` turns true.
    pub fn watch(
        self,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<impl Future<Output = ()> + Send + 'static, ReloadError> {
        let (changed_tx, mut changed) = mpsc::unbounded_channel();
        let watcher = watch_paths(&self.source.paths, changed_tx)?;
        let mut hangup =
            tokio::signal::unix::signal(SignalKind::hangup()).map_err(ReloadError::Signal)?;
        info!(paths = ?self.source.paths, "watching the configuration; SIGHUP reloads too");
        Ok(async move {
            let _watcher = watcher;
            loop {
                let cause = tokio::select! {
                    _ = shutdown.wait_for(|stop| *stop) => return,
                    Some(()) = changed.recv() => "file change",
                    Some(()) = hangup.recv() => "SIGHUP",
                };
                // Let the writer finish: wait for a quiet moment, folding in further events.
                let first = Instant::now();
                while first.elapsed() < DEBOUNCE_MAX {
                    match tokio::time::timeout(DEBOUNCE, changed.recv()).await {
                        Ok(Some(())) => continue,
                        _ => break,
                    }
                }
                self.reload_and_report(cause).await;
            }
        })
    }
}

/// Directories are watched recursively (a ConfigMap volume's `..data` swap happens inside
/// one); a file is watched through its directory, because editors and kubelet replace
/// files by renaming rather than writing them in place.
fn watch_paths(
    paths: &[PathBuf],
    changed: mpsc::UnboundedSender<()>,
) -> Result<notify::RecommendedWatcher, ReloadError> {
    let files: Vec<PathBuf> = paths.iter().filter(|p| !p.is_dir()).cloned().collect();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let relevant = match event {
            Ok(event) => {
                announces_new_content(&event.kind)
                    && (files.is_empty() || event.paths.iter().any(|p| concerns(p, &files)))
            }
            // Overflowed queue and the like: better one reload too many than one missed.
            Err(_) => true,
        };
        if relevant {
            let _ = changed.send(());
        }
    })
    .map_err(|source| ReloadError::Watch {
        path: PathBuf::new(),
        source,
    })?;
    for path in paths {
        let (target, mode) = if path.is_dir() {
            (path.as_path(), RecursiveMode::Recursive)
        } else {
            let parent = path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            (parent, RecursiveMode::NonRecursive)
        };
        watcher
            .watch(target, mode)
            .map_err(|source| ReloadError::Watch {
                path: target.to_owned(),
                source,
            })?;
    }
    Ok(watcher)
}

/// Whether an event can mean a finished change. Writes in place are acted on when the
/// writer closes the file, not at each write: a shell's `>` truncates first, and reading
/// the empty file in between would be a valid configuration with nothing in it.
fn announces_new_content(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        EventKind::Modify(ModifyKind::Data(_)) => false,
        _ => true,
    }
}

/// Whether an event's path matters when some config paths are files: anything inside a
/// watched directory does; in a file's directory only that file and hidden entries
/// (a volume's `..data` link) do.
fn concerns(event_path: &Path, files: &[PathBuf]) -> bool {
    let hidden = event_path
        .file_name()
        .is_some_and(|name| name.to_string_lossy().starts_with('.'));
    let watched_dir = !files.iter().any(|f| f.parent() == event_path.parent());
    watched_dir
        || hidden
        || files
            .iter()
            .any(|f| f.file_name() == event_path.file_name())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_in_place_reload_when_the_writer_closes() {
        use notify::event::{CreateKind, DataChange, RenameMode};
        assert!(!announces_new_content(&EventKind::Modify(
            ModifyKind::Data(DataChange::Any)
        )));
        assert!(announces_new_content(&EventKind::Access(
            AccessKind::Close(AccessMode::Write)
        )));
        assert!(!announces_new_content(&EventKind::Access(
            AccessKind::Close(AccessMode::Read)
        )));
        assert!(announces_new_content(&EventKind::Modify(ModifyKind::Name(
            RenameMode::To
        ))));
        assert!(announces_new_content(&EventKind::Create(CreateKind::File)));
    }

    #[test]
    fn file_watches_ignore_unrelated_siblings() {
        let files = [PathBuf::from("/etc/gatewayd/gateway.yaml")];
        assert!(concerns(Path::new("/etc/gatewayd/gateway.yaml"), &files));
        assert!(concerns(Path::new("/etc/gatewayd/..data"), &files));
        assert!(concerns(Path::new("/etc/gatewayd/..data_tmp"), &files));
        assert!(!concerns(Path::new("/etc/gatewayd/notes.txt"), &files));
        // Events from a directory given as a config path (watched recursively) all count.
        assert!(concerns(Path::new("/srv/routes/a.yaml"), &files));
    }
}
