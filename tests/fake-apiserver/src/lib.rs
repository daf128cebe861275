//! A protocol-faithful stand-in for the Kubernetes API server, for tests and benches where no
//! cluster can run. It speaks plain HTTP/1.1 JSON on loopback: discovery, paged LIST, WATCH
//! with bookmarks and 410 ERROR events, selectors, writes with resourceVersion
//! compare-and-swap, the status subresource, and fault knobs. See README.md for its limits.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use fake_apiserver::{FakeApi, Options};
//! let api = FakeApi::start(Options::default()).await?;
//! api.write_kubeconfig(std::path::Path::new("/tmp/kubeconfig"))?;
//! api.apply(serde_json::json!({
//!     "apiVersion": "v1", "kind": "Service",
//!     "metadata": {"name": "web", "namespace": "default"},
//!     "spec": {"ports": [{"port": 80}]},
//! })).expect("a valid Service");
//! # Ok(()) }
//! ```

mod discovery;
mod errors;
mod faults;
mod handlers;
mod openapi;
mod patch;
mod query;
mod resources;
mod routes;
mod selectors;
mod server;
mod state;
mod store;
mod time;
mod watch;
mod writes;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long `set_outage` waits for the open watch streams to end.
const WATCHES_END_TIMEOUT: Duration = Duration::from_secs(10);

use serde_json::Value;

pub use errors::ApiError;
pub use faults::{Outage, RequestRecord};
pub use resources::{Crd, Resource};

use state::{Shared, lock};
use store::{Filter, Store, WriteMode};

/// How a fake server starts.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where to listen; port 0 picks a free port.
    pub addr: SocketAddr,
    /// Custom resources installed at start (all of them by default).
    pub crds: Vec<Crd>,
    /// How often open watches that allow bookmarks get one.
    pub bookmark_interval: Duration,
    /// The kubeconfig context's namespace.
    pub namespace: String,
    /// Events an open watch may fall behind by before it is ended with 410.
    pub watch_buffer: usize,
    /// Events kept for watches to resume from; older resourceVersions get 410.
    pub event_log_limit: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            crds: Crd::ALL.to_vec(),
            bookmark_interval: Duration::from_secs(60),
            namespace: "default".into(),
            watch_buffer: 1 << 16,
            event_log_limit: 1 << 20,
        }
    }
}

impl Options {
    /// The default options with only these custom resources installed.
    pub fn with_crds(crds: &[Crd]) -> Self {
        Options {
            crds: crds.to_vec(),
            ..Options::default()
        }
    }
}

/// A running fake API server; dropping it stops it.
pub struct FakeApi {
    shared: Arc<Shared>,
    addr: SocketAddr,
    namespace: String,
    /// Set when the server runs on its own runtime ([`FakeApi::start_blocking`]).
    runtime: Option<tokio::runtime::Runtime>,
}

impl FakeApi {
    /// Starts serving on the current tokio runtime.
    pub async fn start(options: Options) -> std::io::Result<FakeApi> {
        let listener = server::bind(options.addr)?;
        let addr = match &listener {
            server::Listener::Bound(l) => l.local_addr()?,
            _ => options.addr,
        };
        let mut store = Store::new(options.watch_buffer, options.event_log_limit);
        // The namespaces every cluster has, and the kubeconfig's.
        for ns in ["default", "kube-system", "kube-public", "kube-node-lease"]
            .into_iter()
            .chain([options.namespace.as_str()])
        {
            store
                .ensure_namespace(ns)
                .map_err(|e| std::io::Error::other(e.to_string()))?;
        }
        let mut served: Vec<Resource> = resources::CORE.to_vec();
        served.extend(options.crds.iter().map(|c| c.resource()));
        let shared = Arc::new(Shared {
            store: Mutex::new(store),
            served: Mutex::new(served),
            faults: Mutex::default(),
            requests: Mutex::default(),
            drop_watches: tokio::sync::watch::Sender::new(0),
            cut_connections: tokio::sync::watch::Sender::new(0),
            outage: tokio::sync::watch::Sender::new(Outage::None),
            shutdown: tokio::sync::watch::Sender::new(false),
            listener: Mutex::new(listener),
            open_watches: Mutex::default(),
            bookmark_interval: options.bookmark_interval,
        });
        tokio::spawn(server::serve(shared.clone()));
        Ok(FakeApi {
            shared,
            addr,
            namespace: options.namespace,
            runtime: None,
        })
    }

    /// Starts serving on a runtime of its own, for tests without one (plain `#[test]`).
    pub fn start_blocking(options: Options) -> std::io::Result<FakeApi> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("fake-apiserver")
            .enable_all()
            .build()?;
        let mut api = runtime.block_on(FakeApi::start(options))?;
        api.runtime = Some(runtime);
        Ok(api)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig with one cluster (`server: http://…`), one context with a namespace, and
    /// a user without credentials.
    pub fn write_kubeconfig(&self, path: &Path) -> std::io::Result<()> {
        let config = format!(
            "apiVersion: v1\n\
             kind: Config\n\
             clusters:\n\
             - name: fake\n  cluster:\n    server: {url}\n\
             users:\n\
             - name: fake\n  user: {{}}\n\
             contexts:\n\
             - name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: {ns}\n\
             current-context: fake\n\
             preferences: {{}}\n",
            url = self.url(),
            ns = self.namespace,
        );
        std::fs::write(path, config)
    }

    // ---- served resources

    /// Serves a custom resource (a CRD appearing: discovery changes).
    pub fn install_crd(&self, crd: Crd) {
        let res = crd.resource();
        let mut served = lock(&self.shared.served);
        if !served.contains(&res) {
            served.push(res);
        }
    }

    /// Stops serving a custom resource; its objects stay stored for a later install.
    pub fn remove_crd(&self, crd: Crd) {
        let res = crd.resource();
        lock(&self.shared.served).retain(|r| *r != res);
    }

    fn resource(&self, api_version: &str, kind: &str) -> Result<(Resource, String), ApiError> {
        self.shared.find_kind(api_version, kind).ok_or_else(|| {
            ApiError::new(
                404,
                "NotFound",
                format!("no kind {kind:?} is served in {api_version:?}"),
            )
        })
    }

    // ---- objects, from the test side

    /// Creates or replaces an object whole (status included), as a controller or `kubectl`
    /// outside the system under test would leave it: resourceVersion is bumped, generation
    /// too when anything but metadata and status changed. Returns the stored object.
    pub fn apply(&self, object: Value) -> Result<Value, ApiError> {
        let field = |f: &str| {
            object
                .get(f)
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string()
        };
        let (res, version) = self.resource(&field("apiVersion"), &field("kind"))?;
        let mut store = lock(&self.shared.store);
        let ns = if res.namespaced {
            store::namespace_of(&object)
        } else {
            ""
        };
        store.ensure_namespace(ns)?;
        let exists = store.get(&res, ns, store::name_of(&object)).is_some();
        let mut object = object;
        if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.remove("resourceVersion");
        }
        let mut stored = if exists {
            store.replace(&res, object, WriteMode::Whole)?
        } else {
            store.create(&res, object)?
        };
        stored["apiVersion"] = res.api_version(&version).into();
        Ok(stored)
    }

    /// Deletes an object ("" namespace for cluster-scoped kinds); watches see DELETED.
    pub fn delete(
        &self,
        api_version: &str,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> Result<Value, ApiError> {
        let (res, _) = self.resource(api_version, kind)?;
        lock(&self.shared.store).delete(&res, namespace, name)
    }

    pub fn get(&self, api_version: &str, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let (res, version) = self.resource(api_version, kind).ok()?;
        let mut object = (*lock(&self.shared.store).get(&res, namespace, name)?).clone();
        object["apiVersion"] = res.api_version(&version).into();
        Some(object)
    }

    /// Objects of a kind, in one namespace or (None) all.
    pub fn list(&self, api_version: &str, kind: &str, namespace: Option<&str>) -> Vec<Value> {
        let Ok((res, _)) = self.resource(api_version, kind) else {
            return Vec::new();
        };
        let filter = Filter {
            namespace: namespace.map(str::to_string),
            ..Filter::default()
        };
        lock(&self.shared.store)
            .list(&res, &filter, 0, None)
            .map(|page| page.items)
            .unwrap_or_default()
    }

    /// The server's current resourceVersion (one counter for all kinds, as etcd's revision).
    pub fn resource_version(&self) -> u64 {
        lock(&self.shared.store).resource_version()
    }

    // ---- fault knobs

    /// Ends every open watch stream cleanly (the chunked body ends), as an apiserver restart
    /// or a load balancer's idle timeout does.
    pub fn drop_watches(&self) {
        Shared::bump(&self.shared.drop_watches);
    }

    /// Forgets the event log: a watch from an older resourceVersion gets a 410 ERROR event,
    /// an older continue token a 410 Status.
    pub fn compact(&self) {
        lock(&self.shared.store).compact();
    }

    /// Sends a BOOKMARK on every open watch that allows bookmarks.
    pub fn bookmark_now(&self) {
        lock(&self.shared.store).bookmark();
    }

    /// Answers every request on a kind with this HTTP status (403, 500, ...); None clears it.
    pub fn fail(&self, api_version: &str, kind: &str, code: Option<u16>) -> Result<(), ApiError> {
        let (res, _) = self.resource(api_version, kind)?;
        let mut faults = lock(&self.shared.faults);
        match code {
            Some(code) => faults.failures.insert(res.key(), code),
            None => faults.failures.remove(&res.key()),
        };
        Ok(())
    }

    /// Delays every request (watch streams included, before their first byte).
    pub fn set_delay(&self, delay: Duration) {
        lock(&self.shared.faults).delay = delay;
    }

    /// Starts or ends an outage, in effect when this returns; open watches end either way
    /// one starts. Ending a refused-connections outage binds the same address again.
    pub fn set_outage(&self, outage: Outage) -> std::io::Result<()> {
        {
            let mut slot = lock(&self.shared.listener);
            match (outage, &*slot) {
                (Outage::Refuse, _) => *slot = server::Listener::Closed,
                (_, server::Listener::Closed) => *slot = server::bind(self.addr)?,
                _ => {}
            }
        }
        self.shared.outage.send_replace(outage);
        match outage {
            Outage::Refuse => Shared::bump(&self.shared.cut_connections),
            Outage::Unavailable => Shared::bump(&self.shared.drop_watches),
            Outage::None => return Ok(()),
        }
        // The streams end on the server's own threads: until they have, a change made
        // next could still reach a client over a watch the outage was meant to end. (On
        // the caller's runtime they end at its next await: waiting here would stall them.)
        if self.runtime.is_none() {
            return Ok(());
        }
        let deadline = std::time::Instant::now() + WATCHES_END_TIMEOUT;
        while lock(&self.shared.open_watches)
            .values()
            .any(|open| *open > 0)
        {
            if std::time::Instant::now() > deadline {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "open watch streams did not end at the outage",
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }

    // ---- request log

    pub fn requests(&self) -> Vec<RequestRecord> {
        lock(&self.shared.requests).clone()
    }

    pub fn clear_requests(&self) {
        lock(&self.shared.requests).clear();
    }

    /// Watch streams open now on a kind: lets a test wait until a client watches (again)
    /// before changing objects, instead of sleeping.
    pub fn open_watches(&self, api_version: &str, kind: &str) -> usize {
        let Ok((res, _)) = self.resource(api_version, kind) else {
            return 0;
        };
        lock(&self.shared.open_watches)
            .get(&res.key())
            .copied()
            .unwrap_or(0)
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        *lock(&self.shared.listener) = server::Listener::Closed;
        self.shared.shutdown.send_replace(true);
        Shared::bump(&self.shared.cut_connections);
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}
