//! Parsed configuration files kept between loads. YAML parsing is most of a reload's
//! cost (about 100 ms for 10 000 routes), and a reload usually changes one file of many:
//! unchanged files keep their parsed resources, and files whose size, inode and
//! modification time are unchanged are not even read again. The cache also says what
//! kind of change a refresh saw, so that a change to endpoints alone can skip the full
//! compile (`compile::update_endpoints`).

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime},
};

use rustc_hash::FxBuildHasher;

use super::{
    Diagnostics, Object, Resources, SourceError,
    documents::{ParsedDocuments, load_text_reusing},
    resources::{EndpointSlice, Endpoints},
    source::config_files,
};

/// A file modified this close to when it was read may have changed again within the
/// same timestamp tick: it is read again rather than trusted by its stamp (git's
/// "racily clean" rule).
const RACY_WINDOW: Duration = Duration::from_secs(2);

/// A Service, as `(namespace, name)`.
pub type ServiceKey = (String, String);

/// Services by `(namespace, name)`, looked up without allocating a key: an endpoint
/// update asks it once per endpoint object and once per cluster.
pub struct ServiceSet<'a>(HashSet<(&'a str, &'a str), FxBuildHasher>);

impl<'a> ServiceSet<'a> {
    pub fn new(services: &'a BTreeSet<ServiceKey>) -> Self {
        ServiceSet(
            services
                .iter()
                .map(|(namespace, name)| (namespace.as_str(), name.as_str()))
                .collect(),
        )
    }

    pub fn contains(&self, service: (&str, &str)) -> bool {
        self.0.contains(&service)
    }

    /// The Services, as `(namespace, name)`, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&'a str, &'a str)> + '_ {
        self.0.iter().copied()
    }

    /// Whether an EndpointSlice or Endpoints object feeds one of these Services.
    pub fn feeds(&self, object: &Object) -> bool {
        match object {
            Object::EndpointSlice(slice) => self.feeds_slice(&slice.resource),
            Object::Endpoints(endpoints) => self.feeds_endpoints(&endpoints.resource),
            _ => false,
        }
    }

    fn feeds_slice(&self, slice: &EndpointSlice) -> bool {
        slice_service(slice).is_some_and(|service| self.contains(service))
    }

    fn feeds_endpoints(&self, endpoints: &Endpoints) -> bool {
        self.contains(endpoints_service(endpoints))
    }
}

/// The Service an EndpointSlice feeds: the one its service-name label names.
fn slice_service(slice: &EndpointSlice) -> Option<(&str, &str)> {
    slice.service()
}

/// The Service a core Endpoints object feeds: the one of its own name.
fn endpoints_service(endpoints: &Endpoints) -> (&str, &str) {
    let meta = &endpoints.metadata;
    (meta.namespace(), &meta.name)
}

/// What a refresh found.
#[derive(Debug, PartialEq, Eq)]
pub enum Change {
    /// Every file as before.
    Unchanged,
    /// Only EndpointSlices and Endpoints changed, of these Services.
    EndpointsOnly(BTreeSet<ServiceKey>),
    /// Only VirtualServices changed, and the endpoints of these Services.
    Routes(BTreeSet<ServiceKey>),
    /// Anything else.
    Other,
}

impl Change {
    /// The change of two sources (files and the cluster) together.
    pub fn merge(self, other: Change) -> Change {
        match (self, other) {
            (Change::Unchanged, change) | (change, Change::Unchanged) => change,
            (Change::Other, _) | (_, Change::Other) => Change::Other,
            (Change::EndpointsOnly(mut a), Change::EndpointsOnly(b)) => {
                a.extend(b);
                Change::EndpointsOnly(a)
            }
            (Change::Routes(mut a), Change::Routes(b) | Change::EndpointsOnly(b))
            | (Change::EndpointsOnly(mut a), Change::Routes(b)) => {
                a.extend(b);
                Change::Routes(a)
            }
        }
    }

    /// A word for logs.
    pub fn summary(&self) -> &'static str {
        match self {
            Change::Unchanged => "unchanged",
            Change::EndpointsOnly(_) => "endpoints",
            Change::Routes(_) => "routes",
            Change::Other => "other",
        }
    }
}

#[derive(Default)]
pub struct ParseCache {
    files: HashMap<PathBuf, CachedFile, FxBuildHasher>,
    /// The files of the last refresh, in load order.
    order: Vec<PathBuf>,
}

struct CachedFile {
    /// The file's stamp when it was read, and when that was.
    stamp: Option<Stamp>,
    read_at: SystemTime,
    text: String,
    resources: Resources,
    diagnostics: Diagnostics,
    /// What each of its documents gave: when the file changes, its unchanged documents
    /// are taken from here rather than parsed (`config::documents`).
    documents: ParsedDocuments,
    /// Its EndpointSlices and Endpoints by Service: an endpoint update looks up the
    /// changed Services instead of going through every slice of the file.
    endpoint_index: EndpointIndex,
}

/// Positions in a file's `endpoint_slices` and `endpoints` lists, by the Service they
/// feed: namespace → name → (slices, Endpoints), each in file order.
#[derive(Default)]
struct EndpointIndex(HashMap<String, ByName, FxBuildHasher>);

/// A namespace's Services: name → (slice positions, Endpoints positions).
type ByName = HashMap<String, Positions, FxBuildHasher>;
type Positions = (Vec<usize>, Vec<usize>);

impl EndpointIndex {
    fn of(resources: &Resources) -> EndpointIndex {
        let mut index = EndpointIndex::default();
        for (position, slice) in resources.endpoint_slices.iter().enumerate() {
            if let Some(service) = slice_service(&slice.resource) {
                index.entry(service).0.push(position);
            }
        }
        for (position, endpoints) in resources.endpoints.iter().enumerate() {
            index
                .entry(endpoints_service(&endpoints.resource))
                .1
                .push(position);
        }
        index
    }

    fn entry(&mut self, (namespace, name): (&str, &str)) -> &mut Positions {
        self.0
            .entry(namespace.to_owned())
            .or_default()
            .entry(name.to_owned())
            .or_default()
    }

    fn get(&self, (namespace, name): (&str, &str)) -> Option<&Positions> {
        self.0.get(namespace)?.get(name)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    len: u64,
    inode: u64,
    modified: SystemTime,
}

impl Stamp {
    fn of(path: &Path) -> Option<Stamp> {
        let metadata = std::fs::metadata(path).ok()?;
        Some(Stamp {
            len: metadata.len(),
            inode: metadata.ino(),
            modified: metadata.modified().ok()?,
        })
    }
}

impl ParseCache {
    /// What `config::load(paths)` returns, in the same order, parsing only changed files.
    pub fn load(&mut self, paths: &[PathBuf]) -> Result<(Resources, Diagnostics), SourceError> {
        self.refresh(paths)?;
        Ok(self.resources())
    }

    /// Brings the cache up to date with the files of `paths` and says what changed.
    pub fn refresh(&mut self, paths: &[PathBuf]) -> Result<Change, SourceError> {
        let files = config_files(paths)?;
        let mut change = Tally::default();
        let present: HashSet<&PathBuf, FxBuildHasher> = files.iter().collect();
        for gone in self.order.iter().filter(|f| !present.contains(f)) {
            if let Some(cached) = self.files.remove(gone) {
                change.saw(&cached.resources, &cached.diagnostics);
            }
        }
        // Files that came or went count by what they hold; the order of files matters
        // only among resources of a kind, and a change of routes or endpoints recomputes
        // that order from all of them.
        for file in &files {
            self.reread(file, true, &mut change)?;
        }
        self.order = files;
        Ok(change.into_change())
    }

    /// `refresh` when the caller knows which files changed (the watcher's events): when
    /// each of `touched` is a file the cache holds, or a path that is gone and was never
    /// read (a writer's temporary file, renamed into place), only those are read again.
    /// Anything else (a configuration file that came or went, a directory, a link) reads
    /// everything.
    pub fn refresh_touched(
        &mut self,
        paths: &[PathBuf],
        touched: &[PathBuf],
    ) -> Result<Change, SourceError> {
        let mut known = Vec::new();
        for path in touched {
            let cached = self.files.contains_key(path);
            match std::fs::symlink_metadata(path) {
                Ok(metadata) if cached && metadata.is_file() => known.push(path),
                Err(_) if !cached => {}
                _ => return self.refresh(paths),
            }
        }
        let mut change = Tally::default();
        for file in known {
            self.reread(file, false, &mut change)?;
        }
        Ok(change.into_change())
    }

    /// Reads `file` again unless its stamp says it is unchanged (when `trust_stamp`), and
    /// parses it if its text changed, tallying what it held before and holds now.
    fn reread(
        &mut self,
        file: &PathBuf,
        trust_stamp: bool,
        change: &mut Tally,
    ) -> Result<(), SourceError> {
        let stamp = Stamp::of(file);
        if let Some(cached) = self.files.get(file)
            && trust_stamp
            && cached.stamp == stamp
            && stamp.is_some_and(|s| s.modified + RACY_WINDOW < cached.read_at)
        {
            return Ok(());
        }
        let read_at = SystemTime::now();
        let text = std::fs::read_to_string(file).map_err(|source| SourceError::Io {
            path: file.clone(),
            source,
        })?;
        if let Some(cached) = self.files.get_mut(file)
            && cached.text == text
        {
            cached.stamp = stamp;
            cached.read_at = read_at;
            return Ok(());
        }
        let none = ParsedDocuments::default();
        let before = self
            .files
            .get(file)
            .map_or(&none, |cached| &cached.documents);
        let (resources, diagnostics, documents, _) = load_text_reusing(file, &text, before);
        // Only the documents that changed or moved count: one VirtualService edited in a
        // file that also holds a Gateway is a change of routes.
        for (resources, diagnostics) in documents.differences(before) {
            change.saw(resources, diagnostics);
        }
        let fresh = CachedFile {
            stamp,
            read_at,
            text,
            documents,
            endpoint_index: EndpointIndex::of(&resources),
            resources,
            diagnostics,
        };
        self.files.insert(file.clone(), fresh);
        Ok(())
    }

    /// Everything the cached files hold, in load order. Each reload of a one-route change
    /// goes through every file here: the lists are copied by pointer, and the documents
    /// of all files are put in their map in one go (sorted already, mostly, as files are
    /// read in name order) rather than one insertion each.
    pub fn resources(&self) -> (Resources, Diagnostics) {
        let (mut resources, mut diagnostics) = (Resources::default(), Diagnostics::default());
        let mut documents = Vec::new();
        for file in &self.order {
            if let Some(cached) = self.files.get(file) {
                resources.extend_from(&cached.resources);
                documents.extend(
                    cached
                        .resources
                        .documents
                        .iter()
                        .map(|(key, text)| (key.clone(), Arc::clone(text))),
                );
                diagnostics.0.extend_from_slice(&cached.diagnostics.0);
            }
        }
        resources.documents = documents.into_iter().collect();
        (resources, diagnostics)
    }

    /// The EndpointSlices and Endpoints of `services` in the cached files, in load order:
    /// what an endpoint update reads. Each file's index is asked for the Services, so
    /// the work follows the change, not the number of slices.
    pub fn endpoint_resources(&self, services: &ServiceSet<'_>) -> Resources {
        let mut resources = Resources::default();
        let (mut slices, mut endpoints) = (Vec::new(), Vec::new());
        for cached in self.order.iter().filter_map(|f| self.files.get(f)) {
            if cached.endpoint_index.0.is_empty() {
                continue;
            }
            slices.clear();
            endpoints.clear();
            for service in services.iter() {
                if let Some((s, e)) = cached.endpoint_index.get(service) {
                    slices.extend_from_slice(s);
                    endpoints.extend_from_slice(e);
                }
            }
            // Several Services' positions interleave in the file.
            slices.sort_unstable();
            endpoints.sort_unstable();
            let file = &cached.resources;
            resources.endpoint_slices.extend(
                slices
                    .iter()
                    .filter_map(|&i| file.endpoint_slices.get(i))
                    .cloned(),
            );
            resources.endpoints.extend(
                endpoints
                    .iter()
                    .filter_map(|&i| file.endpoints.get(i))
                    .cloned(),
            );
        }
        resources
    }
}

/// The changed contents (files, or objects of the Kubernetes API), before and after,
/// summed up.
#[derive(Default)]
pub struct Tally {
    any: bool,
    routes: bool,
    other: bool,
    services: BTreeSet<ServiceKey>,
}

impl Tally {
    /// Counts what one changed file or object held before or holds now.
    pub fn saw(&mut self, resources: &Resources, diagnostics: &Diagnostics) {
        self.any = true;
        if !resources.holds_only_routes_and_endpoints() || diagnostics.has_errors() {
            self.other = true;
            return;
        }
        self.routes |= !resources.virtual_services.is_empty();
        for slice in &resources.endpoint_slices {
            if let Some((namespace, service)) = slice.resource.service() {
                self.services
                    .insert((namespace.to_owned(), service.to_owned()));
            }
        }
        for endpoints in &resources.endpoints {
            let meta = &endpoints.resource.metadata;
            self.services
                .insert((meta.namespace().to_owned(), meta.name.clone()));
        }
    }

    pub fn into_change(self) -> Change {
        match (self.any, self.other, self.routes) {
            (false, _, _) => Change::Unchanged,
            (true, true, _) => Change::Other,
            (true, false, true) => Change::Routes(self.services),
            (true, false, false) => Change::EndpointsOnly(self.services),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parse_cache_loads_what_the_loader_loads() -> Result<(), Box<dyn std::error::Error>> {
        let dir = std::env::temp_dir().join(format!("gatewayd-parse-cache-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("team"))?;
        let service = |name: &str, port: u16| {
            format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  ports: [{{port: {port}}}]\n---\n"
            )
        };
        std::fs::write(dir.join("a.yaml"), service("a", 80) + &service("b", 81))?;
        std::fs::write(
            dir.join("team/c.yaml"),
            service("c", 82) + "kind: Unknown\napiVersion: x/v1\n",
        )?;
        std::fs::write(
            dir.join("d.yaml"),
            "apiVersion: v1\nkind: Service\nmetadata: {name: d\n",
        )?;
        let paths = [dir.clone()];
        let mut cache = ParseCache::default();
        let same = |cache: &mut ParseCache| -> Result<bool, Box<dyn std::error::Error>> {
            let cached = cache.load(&paths)?;
            let loaded = super::super::load(&paths)?;
            Ok(format!("{cached:?}") == format!("{loaded:?}"))
        };
        assert!(same(&mut cache)?);
        // One file changes, one disappears: the cached files and the new text still add
        // up to what a full load gives.
        std::fs::write(dir.join("team/c.yaml"), service("c", 8082))?;
        std::fs::remove_file(dir.join("d.yaml"))?;
        assert!(same(&mut cache)?);
        assert_eq!(cache.files.len(), 2);
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }

    #[test]
    fn a_refresh_tells_endpoint_changes_from_others() -> Result<(), Box<dyn std::error::Error>> {
        let dir = std::env::temp_dir().join(format!("gatewayd-change-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let slice = |address: &str| {
            format!(
                "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: a-1, namespace: ns, labels: {{kubernetes.io/service-name: a}}}}\naddressType: IPv4\nports: [{{name: http, port: 80}}]\nendpoints: [{{addresses: [\"{address}\"]}}]\n"
            )
        };
        let service = "apiVersion: v1\nkind: Service\nmetadata: {name: a, namespace: ns}\nspec: {ports: [{name: http, port: 80}]}\n";
        std::fs::write(dir.join("service.yaml"), service)?;
        std::fs::write(dir.join("endpoints.yaml"), slice("10.0.0.1"))?;
        let paths = [dir.clone()];
        let mut cache = ParseCache::default();
        assert_eq!(cache.refresh(&paths)?, Change::Other);
        assert_eq!(cache.refresh(&paths)?, Change::Unchanged);
        std::fs::write(dir.join("endpoints.yaml"), slice("10.0.0.2"))?;
        let services = BTreeSet::from([("ns".to_owned(), "a".to_owned())]);
        assert_eq!(
            cache.refresh(&paths)?,
            Change::EndpointsOnly(services.clone())
        );
        let endpoints = cache.endpoint_resources(&ServiceSet::new(&services));
        assert_eq!(endpoints.endpoint_slices.len(), 1);
        assert!(endpoints.services.is_empty());
        // Only the changed Services' objects are read.
        let other = BTreeSet::from([("ns".to_owned(), "b".to_owned())]);
        let endpoints = cache.endpoint_resources(&ServiceSet::new(&other));
        assert!(endpoints.endpoint_slices.is_empty());
        // Told which files changed: only those are read (the gone temporary file of a
        // write-and-rename is no reason to look at more).
        std::fs::write(dir.join("endpoints.yaml"), slice("10.0.0.3"))?;
        let touched = [dir.join("endpoints.yaml"), dir.join("endpoints.yaml.tmp")];
        let services = BTreeSet::from([("ns".to_owned(), "a".to_owned())]);
        assert_eq!(
            cache.refresh_touched(&paths, &touched)?,
            Change::EndpointsOnly(services)
        );
        assert_eq!(cache.refresh_touched(&paths, &touched)?, Change::Unchanged);
        // A VirtualService beside the endpoints: routes change, clusters do not.
        let route = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: a, namespace: ns}\nspec: {hosts: [a.example.com], http: []}\n";
        std::fs::write(dir.join("routes.yaml"), route)?;
        // A file the cache does not know: everything is looked at, and it is found.
        let touched = [dir.join("routes.yaml")];
        assert_eq!(
            cache.refresh_touched(&paths, &touched)?,
            Change::Routes(BTreeSet::new())
        );
        // A file that held endpoints and now holds a Service is another kind of change.
        std::fs::write(
            dir.join("endpoints.yaml"),
            service.replace("name: a,", "name: b,"),
        )?;
        assert_eq!(cache.refresh(&paths)?, Change::Other);
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }

    #[test]
    fn endpoint_objects_are_found_by_service_in_load_order()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = std::env::temp_dir().join(format!("gatewayd-by-service-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let slice = |name: &str, service: &str| {
            format!(
                "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}, namespace: ns, labels: {{kubernetes.io/service-name: {service}}}}}\naddressType: IPv4\nports: []\nendpoints: []\n---\n"
            )
        };
        let endpoints =
            "apiVersion: v1\nkind: Endpoints\nmetadata: {name: c, namespace: ns}\nsubsets: []\n";
        std::fs::write(
            dir.join("a.yaml"),
            slice("a-1", "a") + &slice("b-1", "b") + &slice("a-2", "a") + endpoints,
        )?;
        std::fs::write(dir.join("b.yaml"), slice("b-2", "b"))?;
        let mut cache = ParseCache::default();
        cache.refresh(std::slice::from_ref(&dir))?;
        let names = |services: &[&str]| {
            let keys: BTreeSet<ServiceKey> = services
                .iter()
                .map(|s| ("ns".to_owned(), (*s).to_owned()))
                .collect();
            let found = cache.endpoint_resources(&ServiceSet::new(&keys));
            let mut names: Vec<String> = found
                .endpoint_slices
                .iter()
                .map(|s| s.resource.metadata.name.clone())
                .collect();
            names.extend(
                found
                    .endpoints
                    .iter()
                    .map(|e| e.resource.metadata.name.clone()),
            );
            names
        };
        assert_eq!(names(&["a", "b"]), ["a-1", "b-1", "a-2", "b-2"]);
        assert_eq!(names(&["a"]), ["a-1", "a-2"]);
        assert_eq!(names(&["c", "d"]), ["c"]);
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }
}
