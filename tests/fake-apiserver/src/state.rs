//! The state shared by the server tasks and the test-side handle.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;

use crate::faults::{Faults, Outage, RequestRecord};
use crate::resources::{Resource, ResourceKey};
use crate::server::Listener;
use crate::store::Store;

pub(crate) struct Shared {
    pub(crate) store: Mutex<Store>,
    /// Served resources: the core kinds and the installed custom resources.
    pub(crate) served: Mutex<Vec<Resource>>,
    pub(crate) faults: Mutex<Faults>,
    pub(crate) requests: Mutex<Vec<RequestRecord>>,
    /// Bumped to end every open watch stream cleanly.
    pub(crate) drop_watches: watch::Sender<u64>,
    /// Bumped to cut every open connection (outage, shutdown).
    pub(crate) cut_connections: watch::Sender<u64>,
    pub(crate) outage: watch::Sender<Outage>,
    pub(crate) shutdown: watch::Sender<bool>,
    pub(crate) listener: Mutex<Listener>,
    /// Open watch streams per kind.
    pub(crate) open_watches: Mutex<HashMap<ResourceKey, usize>>,
    pub(crate) bookmark_interval: Duration,
}

/// A poisoned lock only means a test thread panicked while holding it; the data is still
/// consistent enough for a fake, and the server must keep answering.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shared {
    pub(crate) fn find(&self, group: &str, version: &str, plural: &str) -> Option<Resource> {
        lock(&self.served)
            .iter()
            .find(|r| r.serves(group, version) && r.plural == plural)
            .cloned()
    }

    pub(crate) fn find_kind(&self, api_version: &str, kind: &str) -> Option<(Resource, String)> {
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        lock(&self.served)
            .iter()
            .find(|r| r.serves(group, version) && r.kind == kind)
            .map(|r| (r.clone(), version.to_string()))
    }

    pub(crate) fn bump(sender: &watch::Sender<u64>) {
        sender.send_modify(|n| *n += 1);
    }
}

/// Counts an open watch stream for as long as it lives.
pub(crate) struct OpenWatch {
    shared: Arc<Shared>,
    key: ResourceKey,
}

impl OpenWatch {
    pub(crate) fn new(shared: Arc<Shared>, key: ResourceKey) -> Self {
        *lock(&shared.open_watches).entry(key).or_default() += 1;
        OpenWatch { shared, key }
    }
}

impl Drop for OpenWatch {
    fn drop(&mut self) {
        if let Some(count) = lock(&self.shared.open_watches).get_mut(&self.key) {
            *count = count.saturating_sub(1);
        }
    }
}
