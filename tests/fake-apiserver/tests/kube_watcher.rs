//! Cross-check with kube-rs 5 (what gatewayd uses): its watcher syncs, follows changes,
//! resumes a dropped watch without relisting, and relists after a 410.

use std::fmt::Debug;
use std::path::PathBuf;

use fake_apiserver::{Crd, FakeApi, Options};
use futures::{Stream, StreamExt};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Client, ResourceExt};
use serde_json::json;

/// Guards against hangs only.
const PATIENCE: std::time::Duration = std::time::Duration::from_secs(20);

async fn client(api: &FakeApi, test: &str) -> Client {
    let path: PathBuf = std::env::temp_dir().join(format!(
        "fake-apiserver-{test}-{}.kubeconfig",
        std::process::id()
    ));
    api.write_kubeconfig(&path).expect("write the kubeconfig");
    let kubeconfig = Kubeconfig::read_from(&path).expect("a kubeconfig kube can read");
    let _ = std::fs::remove_file(&path);
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("a client configuration");
    assert_eq!(config.default_namespace, "default");
    Client::try_from(config).expect("a client")
}

fn slice(name: &str, address: &str) -> serde_json::Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": "ns",
            "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [address], "conditions": {"ready": true}}],
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
    })
}

/// Waits until the fake has ended every EndpointSlice watch stream.
async fn until_no_watches(api: &FakeApi) {
    let ended = async {
        while api.open_watches("discovery.k8s.io/v1", "EndpointSlice") > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(PATIENCE, ended)
        .await
        .expect("the streams end in time");
}

/// The next event, skipping errors (a watcher reports a failed reconnect as one).
async fn next<K: Debug>(
    events: &mut (impl Stream<Item = Result<Event<K>, watcher::Error>> + Unpin),
) -> Event<K> {
    loop {
        let item = tokio::time::timeout(PATIENCE, events.next())
            .await
            .expect("a watcher event in time")
            .expect("the watcher stream goes on");
        if let Ok(event) = item {
            return event;
        }
    }
}

/// The objects of one initial sync (Init, InitApply..., InitDone), by name.
async fn initial_sync<K: Debug + ResourceExt>(
    events: &mut (impl Stream<Item = Result<Event<K>, watcher::Error>> + Unpin),
) -> Vec<String> {
    assert!(matches!(next(events).await, Event::Init));
    let mut names = Vec::new();
    loop {
        match next(events).await {
            Event::InitApply(object) => names.push(object.name_any()),
            Event::InitDone => return names,
            other => panic!("unexpected event during the initial sync: {other:?}"),
        }
    }
}

fn applied_name<K: Debug + ResourceExt>(event: Event<K>) -> String {
    match event {
        Event::Apply(object) => object.name_any(),
        other => panic!("expected Apply, got {other:?}"),
    }
}

#[tokio::test]
async fn endpointslice_watcher_syncs_resumes_and_relists() {
    let api = FakeApi::start(Options::default())
        .await
        .expect("start the fake");
    api.apply(slice("web-1", "10.0.0.1")).expect("apply");
    let slices: Api<EndpointSlice> = Api::all(client(&api, "slices").await);
    let mut events = watcher::watcher(slices, watcher::Config::default())
        .default_backoff()
        .boxed();
    assert_eq!(initial_sync(&mut events).await, ["web-1"]);

    api.apply(slice("web-2", "10.0.0.2")).expect("apply");
    assert_eq!(applied_name(next(&mut events).await), "web-2");
    api.apply(slice("web-1", "10.0.0.9")).expect("apply");
    match next(&mut events).await {
        Event::Apply(s) => assert_eq!(s.endpoints[0].addresses, ["10.0.0.9"]),
        other => panic!("expected Apply, got {other:?}"),
    }
    api.delete("discovery.k8s.io/v1", "EndpointSlice", "ns", "web-2")
        .expect("delete");
    match next(&mut events).await {
        Event::Delete(s) => assert_eq!(s.name_any(), "web-2"),
        other => panic!("expected Delete, got {other:?}"),
    }
    let last_seen = api.resource_version().to_string();

    // A dropped stream is re-watched from the last resourceVersion, without a LIST.
    api.clear_requests();
    api.drop_watches();
    // Applied once the old stream is over, so that only a resumed watch can carry it (the
    // watcher is not polled meanwhile, so it has not reconnected yet).
    until_no_watches(&api).await;
    api.apply(slice("web-3", "10.0.0.3")).expect("apply");
    assert_eq!(applied_name(next(&mut events).await), "web-3");
    let requests = api.requests();
    assert!(
        !requests.iter().any(|r| r.is_list()),
        "no relist: {requests:?}"
    );
    let resumed = requests.iter().find(|r| r.is_watch()).expect("a new watch");
    assert_eq!(
        resumed.resource_version.as_deref(),
        Some(last_seen.as_str())
    );

    // A deletion while the watcher is cut off and the log is compacted: the resumed watch
    // gets 410, the watcher relists and the deleted slice is gone from its sync.
    api.drop_watches();
    until_no_watches(&api).await;
    api.delete("discovery.k8s.io/v1", "EndpointSlice", "ns", "web-1")
        .expect("delete");
    api.compact();
    api.clear_requests();
    assert_eq!(initial_sync(&mut events).await, ["web-3"]);
    let requests = api.requests();
    let expired = requests
        .iter()
        .position(|r| r.is_watch())
        .expect("a resumed watch");
    let relist = requests.iter().position(|r| r.is_list()).expect("a relist");
    assert!(
        expired < relist,
        "the 410 came before the relist: {requests:?}"
    );
}

#[tokio::test]
async fn dynamic_object_watcher_on_a_custom_resource() {
    let api = FakeApi::start(Options::default())
        .await
        .expect("start the fake");
    let route = |name: &str, host: &str| {
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": name, "namespace": "ns"},
            "spec": {"hostnames": [host]}})
    };
    api.apply(route("a", "a.example")).expect("apply");
    let gvk = GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "HTTPRoute");
    let resource = ApiResource::from_gvk_with_plural(&gvk, "httproutes");
    let routes: Api<DynamicObject> =
        Api::namespaced_with(client(&api, "routes").await, "ns", &resource);
    let mut events = watcher::watcher(routes, watcher::Config::default())
        .default_backoff()
        .boxed();
    assert_eq!(initial_sync(&mut events).await, ["a"]);

    api.apply(route("b", "b.example")).expect("apply");
    assert_eq!(applied_name(next(&mut events).await), "b");
    api.apply(route("a", "changed.example")).expect("apply");
    match next(&mut events).await {
        Event::Apply(r) => {
            assert_eq!(r.data["spec"]["hostnames"][0], "changed.example");
            assert_eq!(r.metadata.generation, Some(2));
        }
        other => panic!("expected Apply, got {other:?}"),
    }
    api.delete("gateway.networking.k8s.io/v1", "HTTPRoute", "ns", "a")
        .expect("delete");
    match next(&mut events).await {
        Event::Delete(r) => assert_eq!(r.name_any(), "a"),
        other => panic!("expected Delete, got {other:?}"),
    }
}

#[tokio::test]
async fn a_crd_installed_while_the_watcher_runs() {
    let api = FakeApi::start(Options::with_crds(&[]))
        .await
        .expect("start the fake");
    let route = json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": "a", "namespace": "ns"}, "spec": {}});
    assert_eq!(
        api.apply(route.clone()).map_err(|e| e.code),
        Err(404),
        "not served yet"
    );
    let gvk = GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "HTTPRoute");
    let resource = ApiResource::from_gvk_with_plural(&gvk, "httproutes");
    let routes: Api<DynamicObject> = Api::all_with(client(&api, "late-crd").await, &resource);
    let mut events = watcher::watcher(routes, watcher::Config::default())
        .default_backoff()
        .boxed();
    assert!(matches!(next(&mut events).await, Event::Init));
    let failed = tokio::time::timeout(PATIENCE, events.next())
        .await
        .expect("in time");
    assert!(
        matches!(failed, Some(Err(_))),
        "the LIST fails while the CRD is missing"
    );

    api.install_crd(Crd::HttpRoute);
    api.apply(route).expect("served now");
    // Each failed attempt starts over with Init; the first that succeeds lists the route.
    let listed = loop {
        match next(&mut events).await {
            Event::Init => continue,
            Event::InitApply(r) => break r.name_any(),
            other => panic!("expected the initial sync, got {other:?}"),
        }
    };
    assert_eq!(listed, "a");
    assert!(matches!(next(&mut events).await, Event::InitDone));
    let mut later = api
        .get("gateway.networking.k8s.io/v1", "HTTPRoute", "ns", "a")
        .expect("stored");
    later["metadata"]["name"] = json!("b");
    api.apply(later).expect("apply");
    assert_eq!(applied_name(next(&mut events).await), "b");
}
