//! The cluster's objects as the watches last saw them, parsed into the loader's resource
//! types one object at a time: a malformed object is one diagnostic for that object, and
//! the rest of its kind is served. The reload loop takes from here what changed since it
//! last looked (`take_change`) and everything there is (`resources`), exactly as it does
//! from the parse cache of files.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
};

use serde::Serialize;
use tokio::sync::watch;

use super::{
    kinds::{self, WatchedKind},
    status_writer::ParentRef,
};
use crate::config::{
    Diagnostics, Object, Resources,
    cache::{Change, ServiceSet, Tally},
};

/// One watch: a kind, in one namespace or all of them.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamKey {
    /// Index into `kinds::WATCHED`.
    pub kind: usize,
    /// None: every namespace (or a cluster-scoped kind).
    pub namespace: Option<String>,
}

impl Parsed {
    /// Counts it in a tally of changes.
    fn tally(&self, changes: &mut Tally) {
        let resources = self
            .object
            .as_ref()
            .map(Object::to_resources)
            .unwrap_or_default();
        changes.saw(&resources, &self.diagnostics);
    }
}

impl StreamKey {
    pub fn kind(&self) -> &'static WatchedKind {
        &kinds::WATCHED[self.kind]
    }
}

/// An object as parsed, and the version it was parsed from (a relist that finds the
/// same version changed nothing).
#[derive(Clone, Debug)]
pub struct Parsed {
    pub resource_version: String,
    /// None when it did not parse (`diagnostics` say why).
    pub object: Option<Object>,
    pub diagnostics: Diagnostics,
    /// For Gateway API routes: `metadata.generation` and `spec.parentRefs`, read loosely,
    /// so that a route dropped for its errors still gets `Accepted=False` on its parents.
    pub route_parents: Option<RouteParents>,
}

#[derive(Clone, Debug, Default)]
pub struct RouteParents {
    pub generation: i64,
    pub parent_refs: Vec<ParentRef>,
}

/// How a watch is doing, for `/config_dump` and the metrics.
#[derive(Clone, Debug, Serialize)]
pub struct StreamHealth {
    pub kind: String,
    pub version: String,
    pub namespace: Option<String>,
    /// Whether its first list has completed (the first compile waits for every one).
    pub synced: bool,
    /// Whether the last thing it did succeeded (false from an error until its next event).
    pub healthy: bool,
    pub objects: usize,
    pub errors: u64,
    pub last_error: Option<String>,
}

/// By (namespace, name). Boxed: a BTreeMap node holds eleven entries and is often half
/// full, so a small pointer there instead of the whole `Parsed` saves about 300 bytes per
/// object (a cluster has tens of thousands of EndpointSlices).
type Objects = BTreeMap<(String, String), Box<Parsed>>;

struct Stream {
    version: String,
    objects: Objects,
    /// A relist's objects, swapped in whole at its end so that deletions made while the
    /// watch was away disappear.
    relisting: Option<Objects>,
    synced: bool,
    healthy: bool,
    errors: u64,
    last_error: Option<String>,
}

#[derive(Default)]
struct Inner {
    streams: BTreeMap<StreamKey, Stream>,
    changes: Tally,
}

/// Shared by the watch tasks (writers) and the reload loop (reader).
pub struct ClusterStore {
    inner: Mutex<Inner>,
    /// A change arrived that no reload has taken yet: further changes need not wake the
    /// reload loop again.
    pending: AtomicBool,
    wake: Box<dyn Fn() + Send + Sync>,
    /// How many registered streams have synced, and how many there are.
    synced: watch::Sender<(usize, usize)>,
}

impl std::fmt::Debug for ClusterStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the objects: Secrets are among them.
        f.debug_struct("ClusterStore")
            .field("watches", &self.lock().streams.len())
            .finish_non_exhaustive()
    }
}

impl ClusterStore {
    /// `wake` is called when a change arrives and the last one has been taken.
    pub fn new(wake: impl Fn() + Send + Sync + 'static) -> Self {
        ClusterStore {
            inner: Mutex::default(),
            pending: AtomicBool::new(false),
            wake: Box::new(wake),
            synced: watch::Sender::new((0, 0)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A watch is about to start; until its first list completes, `wait_synced` waits.
    pub fn register(&self, key: StreamKey, version: &str) {
        let mut inner = self.lock();
        inner.streams.entry(key).or_insert_with(|| Stream {
            version: version.to_owned(),
            objects: BTreeMap::new(),
            relisting: None,
            synced: false,
            healthy: true,
            errors: 0,
            last_error: None,
        });
        self.publish_sync(&inner);
    }

    /// A (re)list begins.
    pub fn list_started(&self, key: &StreamKey) {
        if let Some(stream) = self.lock().streams.get_mut(key) {
            stream.relisting = Some(BTreeMap::new());
        }
    }

    /// An object of the list in progress.
    pub fn listed(&self, key: &StreamKey, name: (String, String), parsed: Parsed) {
        if let Some(list) = self
            .lock()
            .streams
            .get_mut(key)
            .and_then(|s| s.relisting.as_mut())
        {
            list.insert(name, Box::new(parsed));
        }
    }

    /// The list is complete: it replaces what the stream held, and whatever differs
    /// counts as changed.
    pub fn list_done(&self, key: &StreamKey) {
        let mut inner = self.lock();
        let Inner { streams, changes } = &mut *inner;
        let Some(stream) = streams.get_mut(key) else {
            return;
        };
        let Some(listed) = stream.relisting.take() else {
            return;
        };
        let before = std::mem::replace(&mut stream.objects, listed);
        let mut changed = false;
        for (name, old) in &before {
            match stream.objects.get(name) {
                Some(new) if new.resource_version == old.resource_version => {}
                _ => {
                    old.tally(changes);
                    changed = true;
                }
            }
        }
        for (name, new) in &stream.objects {
            if before
                .get(name)
                .is_none_or(|old| old.resource_version != new.resource_version)
            {
                new.tally(changes);
                changed = true;
            }
        }
        // The first list of a stream counts even if empty: the first compile follows it.
        let first = !stream.synced;
        stream.synced = true;
        stream.healthy = true;
        self.publish_sync(&inner);
        drop(inner);
        if changed || first {
            self.changed();
        }
    }

    /// An object was added or modified.
    pub fn applied(&self, key: &StreamKey, name: (String, String), parsed: Parsed) {
        let mut inner = self.lock();
        let Inner { streams, changes } = &mut *inner;
        let Some(stream) = streams.get_mut(key) else {
            return;
        };
        stream.healthy = true;
        if let Some(old) = stream.objects.get(&name) {
            if old.resource_version == parsed.resource_version {
                return;
            }
            old.tally(changes);
        }
        parsed.tally(changes);
        stream.objects.insert(name, Box::new(parsed));
        drop(inner);
        self.changed();
    }

    /// An object was deleted.
    pub fn deleted(&self, key: &StreamKey, name: &(String, String)) {
        let mut inner = self.lock();
        let Inner { streams, changes } = &mut *inner;
        let Some(stream) = streams.get_mut(key) else {
            return;
        };
        stream.healthy = true;
        let Some(old) = stream.objects.remove(name) else {
            return;
        };
        old.tally(changes);
        drop(inner);
        self.changed();
    }

    /// The watch failed (it retries with backoff); what it holds keeps serving.
    pub fn failed(&self, key: &StreamKey, error: String) {
        if let Some(stream) = self.lock().streams.get_mut(key) {
            stream.healthy = false;
            stream.errors += 1;
            stream.last_error = Some(error);
        }
    }

    /// The first list of a stream cannot be had (forbidden, not found): it counts as
    /// synced, empty, so that the first compile does not wait for it; a later list fills
    /// it in.
    pub fn give_up_first_list(&self, key: &StreamKey) {
        let mut inner = self.lock();
        let Some(stream) = inner.streams.get_mut(key) else {
            return;
        };
        if stream.synced {
            return;
        }
        stream.synced = true;
        self.publish_sync(&inner);
    }

    fn changed(&self) {
        if !self.pending.swap(true, Ordering::AcqRel) {
            (self.wake)();
        }
    }

    fn publish_sync(&self, inner: &Inner) {
        let synced = inner.streams.values().filter(|s| s.synced).count();
        self.synced.send_replace((synced, inner.streams.len()));
    }

    /// Waits until every registered watch has completed its first list.
    pub async fn wait_synced(&self) {
        let mut synced = self.synced.subscribe();
        let _ = synced.wait_for(|(done, all)| *all > 0 && done == all).await;
    }

    /// What changed since the last call.
    pub fn take_change(&self) -> Change {
        self.pending.store(false, Ordering::Release);
        std::mem::take(&mut self.lock().changes).into_change()
    }

    /// Every object, by kind in `kinds::WATCHED` order, then namespace and name.
    pub fn resources(&self) -> (Resources, Diagnostics) {
        let inner = self.lock();
        let (mut resources, mut diagnostics) = (Resources::default(), Diagnostics::default());
        for stream in inner.streams.values() {
            for parsed in stream.objects.values() {
                if let Some(object) = &parsed.object {
                    object.append_to(&mut resources);
                }
                diagnostics.extend(parsed.diagnostics.clone());
            }
        }
        (resources, diagnostics)
    }

    /// The EndpointSlices (and Endpoints) of `services`: what an endpoint update reads.
    pub fn endpoint_resources(&self, services: &ServiceSet<'_>) -> Resources {
        let inner = self.lock();
        let mut resources = Resources::default();
        for (key, stream) in &inner.streams {
            if !kinds::is_endpoints(key.kind()) {
                continue;
            }
            for object in stream.objects.values().filter_map(|p| p.object.as_ref()) {
                if services.feeds(object) {
                    object.append_to(&mut resources);
                }
            }
        }
        resources
    }

    /// The version watched of a Gateway API kind (`HTTPRoute`, …), once discovery found it.
    pub fn version_of(&self, kind: &str) -> Option<String> {
        self.lock()
            .streams
            .iter()
            .find(|(key, _)| {
                key.kind().group == super::status_writer::GATEWAY_API_GROUP
                    && key.kind().kind == kind
            })
            .map(|(_, stream)| stream.version.clone())
    }

    /// The parents a route names (see `Parsed::route_parents`).
    pub fn route_parents(
        &self,
        group: &str,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> Option<RouteParents> {
        let inner = self.lock();
        let name = (namespace.to_owned(), name.to_owned());
        inner
            .streams
            .iter()
            .filter(|(key, _)| key.kind().group == group && key.kind().kind == kind)
            .find_map(|(_, stream)| stream.objects.get(&name)?.route_parents.clone())
    }

    /// Every watch's health.
    pub fn health(&self) -> Vec<StreamHealth> {
        self.lock()
            .streams
            .iter()
            .map(|(key, stream)| StreamHealth {
                kind: key.kind().label(),
                version: stream.version.clone(),
                namespace: key.namespace.clone(),
                synced: stream.synced,
                healthy: stream.healthy,
                objects: stream.objects.len(),
                errors: stream.errors,
                last_error: stream.last_error.clone(),
            })
            .collect()
    }

    /// Objects held, by kind label (for the memory benchmark and metrics).
    pub fn counts(&self) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for (key, stream) in &self.lock().streams {
            *counts.entry(key.kind().label()).or_default() += stream.objects.len();
        }
        counts
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, atomic::AtomicUsize};

    use super::*;
    use crate::config::parse_object;

    fn slice(name: &str, service: &str, version: &str, ip: &str) -> ((String, String), Parsed) {
        let json = serde_json::json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": name, "namespace": "default",
                         "labels": {"kubernetes.io/service-name": service}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [ip]}], "ports": [{"port": 80}],
        });
        let (resources, diagnostics) = parse_object(&json);
        (
            ("default".into(), name.into()),
            Parsed {
                resource_version: version.into(),
                object: Object::first(resources),
                diagnostics,
                route_parents: None,
            },
        )
    }

    fn slices() -> StreamKey {
        let kind = kinds::WATCHED
            .iter()
            .position(|k| k.kind == "EndpointSlice")
            .expect("watched");
        StreamKey {
            kind,
            namespace: None,
        }
    }

    #[test]
    fn a_relist_swaps_in_whole_and_reports_what_it_changed() {
        let wakes = Arc::new(AtomicUsize::new(0));
        let counted = wakes.clone();
        let store = ClusterStore::new(move || {
            counted.fetch_add(1, Ordering::Relaxed);
        });
        let key = slices();
        store.register(key.clone(), "v1");
        store.list_started(&key);
        let (name, parsed) = slice("a-1", "a", "1", "10.0.0.1");
        store.listed(&key, name, parsed);
        let (name, parsed) = slice("b-1", "b", "2", "10.0.0.2");
        store.listed(&key, name, parsed);
        store.list_done(&key);
        assert_eq!(wakes.load(Ordering::Relaxed), 1);
        assert!(matches!(store.take_change(), Change::EndpointsOnly(s) if s.len() == 2));
        assert_eq!(store.resources().0.endpoint_slices.len(), 2);

        // A relist after a gap: b's slice was deleted meanwhile, a's unchanged.
        store.list_started(&key);
        let (name, parsed) = slice("a-1", "a", "1", "10.0.0.1");
        store.listed(&key, name, parsed);
        store.list_done(&key);
        let Change::EndpointsOnly(services) = store.take_change() else {
            panic!("expected an endpoint change");
        };
        assert_eq!(
            services.into_iter().collect::<Vec<_>>(),
            [("default".to_owned(), "b".to_owned())]
        );
        assert_eq!(store.resources().0.endpoint_slices.len(), 1);
    }

    #[test]
    fn one_wake_until_the_change_is_taken() {
        let wakes = Arc::new(AtomicUsize::new(0));
        let counted = wakes.clone();
        let store = ClusterStore::new(move || {
            counted.fetch_add(1, Ordering::Relaxed);
        });
        let key = slices();
        store.register(key.clone(), "v1");
        for version in 1..=3 {
            let (name, parsed) = slice("a-1", "a", &version.to_string(), "10.0.0.1");
            store.applied(&key, name, parsed);
        }
        assert_eq!(wakes.load(Ordering::Relaxed), 1);
        store.take_change();
        store.deleted(&key, &("default".into(), "a-1".into()));
        assert_eq!(wakes.load(Ordering::Relaxed), 2);
        assert_eq!(
            store.take_change(),
            Change::EndpointsOnly([("default".to_owned(), "a".to_owned())].into())
        );
    }

    #[test]
    fn a_malformed_object_is_its_own_diagnostic() {
        let store = ClusterStore::new(|| {});
        let kind = kinds::WATCHED
            .iter()
            .position(|k| k.kind == "HTTPRoute")
            .expect("watched");
        let key = StreamKey {
            kind,
            namespace: None,
        };
        store.register(key.clone(), "v1");
        let bad = serde_json::json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": "bad", "namespace": "team-a"},
            "spec": {"rules": [{"matches": [{"path": {"type": "PathPrefix", "value": 7}}]}]},
        });
        let (resources, diagnostics) = parse_object(&bad);
        store.applied(
            &key,
            ("team-a".into(), "bad".into()),
            Parsed {
                resource_version: "1".into(),
                object: Object::first(resources),
                diagnostics,
                route_parents: None,
            },
        );
        let (resources, diagnostics) = store.resources();
        assert!(resources.http_routes.is_empty());
        let error = diagnostics.errors().next().expect("an error").to_string();
        assert!(
            error.starts_with("error: HTTPRoute team-a/bad: spec.rules[0].matches[0].path.value:"),
            "{error}"
        );
    }
}
