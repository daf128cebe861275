//! The wire protocol, checked with a raw HTTP client: what kube-rs and client-go rely on.

mod common;

use common::{call, call_typed, rv, service, watch};
use fake_apiserver::{Crd, FakeApi, Options, Outage};
use serde_json::{Value, json};

async fn fake() -> FakeApi {
    FakeApi::start(Options::default())
        .await
        .expect("start the fake")
}

fn names(list: &Value) -> Vec<String> {
    list["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|o| o["metadata"]["name"].as_str().unwrap_or("").to_string())
        .collect()
}

#[tokio::test]
async fn discovery_lists_resources_and_follows_installed_crds() {
    let api = FakeApi::start(Options::with_crds(&[Crd::HttpRoute]))
        .await
        .expect("start");
    let addr = api.addr();
    let (code, core) = call(addr, "GET", "/api/v1", None).await;
    assert_eq!(code, 200);
    let resources = core["resources"].as_array().expect("resources");
    let find = |list: &[Value], name: &str| list.iter().find(|r| r["name"] == name).cloned();
    let services = find(resources, "services").expect("services");
    assert_eq!(services["kind"], "Service");
    assert_eq!(services["namespaced"], true);
    assert_eq!(services["singularName"], "service");
    assert!(
        services["verbs"]
            .as_array()
            .expect("verbs")
            .contains(&json!("watch"))
    );
    assert!(find(resources, "services/status").is_some());
    assert_eq!(
        call(addr, "GET", "/api", None).await.1["versions"],
        json!(["v1"])
    );
    assert_eq!(call(addr, "GET", "/version", None).await.1["major"], "1");

    let group = "/apis/gateway.networking.k8s.io/v1";
    let (_, gw) = call(addr, "GET", group, None).await;
    let gw = gw["resources"].as_array().expect("resources").clone();
    assert!(find(&gw, "httproutes").is_some());
    assert!(find(&gw, "gatewayclasses").is_none());

    // A CRD appearing while clients run: discovery and the collection show up.
    let classes = "/apis/gateway.networking.k8s.io/v1/gatewayclasses";
    assert_eq!(call(addr, "GET", classes, None).await.0, 404);
    api.install_crd(Crd::GatewayClass);
    let (_, gw) = call(addr, "GET", group, None).await;
    let class = find(
        gw["resources"].as_array().expect("resources"),
        "gatewayclasses",
    );
    assert_eq!(class.expect("gatewayclasses")["namespaced"], false);
    assert_eq!(call(addr, "GET", classes, None).await.0, 200);
    let (_, groups) = call(addr, "GET", "/apis", None).await;
    let group_names: Vec<&Value> = groups["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .map(|g| &g["name"])
        .collect();
    assert!(group_names.contains(&&json!("gateway.networking.k8s.io")));
    assert!(!group_names.contains(&&json!("networking.istio.io")));
}

#[tokio::test]
async fn paged_list_follows_continue_and_expires_after_compaction() {
    let api = fake().await;
    for i in 0..5 {
        api.apply(service("a", &format!("s{i}"), json!({})))
            .expect("apply");
    }
    let (code, first) = call(api.addr(), "GET", "/api/v1/services?limit=2", None).await;
    assert_eq!(code, 200);
    assert_eq!(first["kind"], "ServiceList");
    assert_eq!(first["apiVersion"], "v1");
    assert!(!rv(&first).is_empty());
    assert_eq!(names(&first), ["s0", "s1"]);
    let token = first["metadata"]["continue"]
        .as_str()
        .expect("a continue token")
        .to_string();

    let (_, second) = call(
        api.addr(),
        "GET",
        &format!("/api/v1/services?limit=2&continue={token}"),
        None,
    )
    .await;
    assert_eq!(names(&second), ["s2", "s3"]);
    let token2 = second["metadata"]["continue"]
        .as_str()
        .expect("a continue token")
        .to_string();
    let (_, last) = call(
        api.addr(),
        "GET",
        &format!("/api/v1/services?limit=2&continue={token2}"),
        None,
    )
    .await;
    assert_eq!(names(&last), ["s4"]);
    assert!(last["metadata"]["continue"].is_null());

    api.apply(service("a", "s5", json!({}))).expect("apply");
    api.compact();
    let (code, status) = call(
        api.addr(),
        "GET",
        &format!("/api/v1/services?limit=2&continue={token}"),
        None,
    )
    .await;
    assert_eq!(code, 410);
    assert_eq!(status["kind"], "Status");
    assert_eq!(status["reason"], "Expired");
}

#[tokio::test]
async fn watch_replays_after_a_resource_version_then_follows() {
    let api = fake().await;
    let a = api.apply(service("ns", "a", json!({}))).expect("apply");
    api.apply(service("ns", "b", json!({}))).expect("apply");
    let mut changed = service("ns", "a", json!({}));
    changed["spec"]["ports"][0]["port"] = json!(81);
    api.apply(changed).expect("apply");
    api.apply(service("other", "c", json!({}))).expect("apply");

    let path = format!(
        "/api/v1/namespaces/ns/services?watch=true&resourceVersion={}",
        rv(&a)
    );
    let mut events = watch(api.addr(), &path).await;
    assert_eq!(events.status, 200);
    assert_eq!(
        events.next_named().await,
        Some(("ADDED".into(), "b".into()))
    );
    let modified = events.next().await.expect("MODIFIED a");
    assert_eq!(modified["type"], "MODIFIED");
    assert_eq!(modified["object"]["spec"]["ports"][0]["port"], 81);
    assert_eq!(modified["object"]["kind"], "Service");
    api.delete("v1", "Service", "ns", "b").expect("delete");
    let deleted = events.next().await.expect("DELETED b");
    assert_eq!(deleted["type"], "DELETED");
    assert_eq!(deleted["object"]["metadata"]["name"], "b");
    assert_eq!(rv(&deleted["object"]), api.resource_version().to_string());

    // "0" (and "" or absent) means: the current state as ADDED, then changes.
    let mut events = watch(api.addr(), "/api/v1/services?watch=1&resourceVersion=0").await;
    assert_eq!(
        events.next_named().await,
        Some(("ADDED".into(), "a".into()))
    );
    assert_eq!(
        events.next_named().await,
        Some(("ADDED".into(), "c".into()))
    );
    api.apply(service("ns", "d", json!({}))).expect("apply");
    assert_eq!(
        events.next_named().await,
        Some(("ADDED".into(), "d".into()))
    );
}

#[tokio::test]
async fn a_too_old_resource_version_is_an_error_event_in_a_200_stream() {
    let api = fake().await;
    let a = api.apply(service("ns", "a", json!({}))).expect("apply");
    api.apply(service("ns", "b", json!({}))).expect("apply");
    api.compact();
    let path = format!("/api/v1/services?watch=true&resourceVersion={}", rv(&a));
    let mut events = watch(api.addr(), &path).await;
    assert_eq!(events.status, 200);
    let error = events.next().await.expect("an ERROR event");
    assert_eq!(error["type"], "ERROR");
    assert_eq!(error["object"]["kind"], "Status");
    assert_eq!(error["object"]["code"], 410);
    assert_eq!(error["object"]["reason"], "Expired");
    assert_eq!(events.next().await, None);

    // From the current version, watching works again.
    let path = format!(
        "/api/v1/services?watch=true&resourceVersion={}",
        api.resource_version()
    );
    let mut events = watch(api.addr(), &path).await;
    api.apply(service("ns", "c", json!({}))).expect("apply");
    assert_eq!(
        events.next_named().await,
        Some(("ADDED".into(), "c".into()))
    );
}

#[tokio::test]
async fn selectors_filter_lists_and_watches() {
    let api = fake().await;
    api.apply(service("ns", "web", json!({"app": "web", "tier": "front"})))
        .expect("apply");
    api.apply(service("ns", "db", json!({"app": "db"})))
        .expect("apply");
    api.apply(service("ns", "bare", json!({}))).expect("apply");
    let list = |selector: &'static str| {
        let addr = api.addr();
        async move {
            let (code, list) =
                call(addr, "GET", &format!("/api/v1/services?{selector}"), None).await;
            assert_eq!(code, 200, "{selector}");
            names(&list)
        }
    };
    assert_eq!(list("labelSelector=app%3Dweb").await, ["web"]);
    assert_eq!(list("labelSelector=app%21%3Dweb").await, ["bare", "db"]);
    assert_eq!(
        list("labelSelector=app+in+%28db%2Cweb%29").await,
        ["db", "web"]
    );
    assert_eq!(
        list("labelSelector=app+notin+%28db%29").await,
        ["bare", "web"]
    );
    assert_eq!(list("labelSelector=%21app").await, ["bare"]);
    assert_eq!(list("labelSelector=tier").await, ["web"]);
    assert_eq!(list("fieldSelector=metadata.name%3Ddb").await, ["db"]);
    let (code, _) = call(
        api.addr(),
        "GET",
        "/api/v1/services?fieldSelector=type%3Dx",
        None,
    )
    .await;
    assert_eq!(code, 400, "type is a Secret field only");

    for (name, kind) in [("tls", "kubernetes.io/tls"), ("opaque", "Opaque")] {
        api.apply(json!({"apiVersion": "v1", "kind": "Secret", "type": kind,
            "metadata": {"name": name, "namespace": "ns"}}))
            .expect("apply");
    }
    let (_, secrets) = call(
        api.addr(),
        "GET",
        "/api/v1/namespaces/ns/secrets?fieldSelector=type%3Dkubernetes.io%2Ftls",
        None,
    )
    .await;
    assert_eq!(names(&secrets), ["tls"]);

    // Objects moving in and out of a watch's selector are ADDED and DELETED.
    let mut events = watch(
        api.addr(),
        "/api/v1/services?watch=true&labelSelector=app%3Dweb",
    )
    .await;
    assert_eq!(
        events.next_named().await,
        Some(("ADDED".into(), "web".into()))
    );
    api.apply(service("ns", "web", json!({"app": "old"})))
        .expect("apply");
    let left = events.next().await.expect("DELETED web");
    assert_eq!(left["type"], "DELETED");
    assert_eq!(left["object"]["metadata"]["labels"]["app"], "web");
    assert_eq!(rv(&left["object"]), api.resource_version().to_string());
    api.apply(service("ns", "db", json!({"app": "web"})))
        .expect("apply");
    assert_eq!(
        events.next_named().await,
        Some(("ADDED".into(), "db".into()))
    );
}

#[tokio::test]
async fn writes_use_resource_version_compare_and_swap() {
    let api = fake().await;
    let path = "/apis/gateway.networking.k8s.io/v1/namespaces/ns/httproutes";
    let route = json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": "r"}, "spec": {"hostnames": ["a.example"]},
        "status": {"parents": [{"x": 1}]}});
    let (code, missing) = call(api.addr(), "POST", path, Some(&route)).await;
    assert_eq!(code, 404, "the namespace does not exist yet");
    assert_eq!(missing["message"], r#"namespaces "ns" not found"#);
    let namespace = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ns"}});
    let (code, namespace) = call(api.addr(), "POST", "/api/v1/namespaces", Some(&namespace)).await;
    assert_eq!(code, 201);
    assert_eq!(namespace["status"]["phase"], "Active");

    let (code, created) = call(api.addr(), "POST", path, Some(&route)).await;
    assert_eq!(code, 201);
    assert_eq!(created["metadata"]["generation"], 1);
    assert_eq!(created["metadata"]["namespace"], "ns");
    assert!(
        created["metadata"]["uid"]
            .as_str()
            .is_some_and(|u| !u.is_empty())
    );
    assert!(created["metadata"]["creationTimestamp"].is_string());
    assert!(
        created["status"].is_null(),
        "status is written through the subresource"
    );
    let (code, exists) = call(api.addr(), "POST", path, Some(&route)).await;
    assert_eq!(
        (code, exists["reason"].clone()),
        (409, json!("AlreadyExists"))
    );

    let one = format!("{path}/r");
    let mut update = created.clone();
    update["spec"]["hostnames"] = json!(["b.example"]);
    update["status"] = json!({"ignored": true});
    let (code, updated) = call(api.addr(), "PUT", &one, Some(&update)).await;
    assert_eq!(code, 200);
    assert_eq!(updated["metadata"]["generation"], 2);
    assert!(
        updated["status"].is_null(),
        "status in a PUT of the main resource is ignored"
    );
    assert_ne!(rv(&updated), rv(&created));

    let (code, conflict) = call(api.addr(), "PUT", &one, Some(&update)).await;
    assert_eq!(code, 409, "the resourceVersion is stale");
    assert_eq!(conflict["reason"], "Conflict");
    assert_eq!(conflict["kind"], "Status");

    // Leases go through the same generic path.
    let leases = "/apis/coordination.k8s.io/v1/namespaces/ns/leases";
    let lease = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "leader"}, "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15}});
    let (code, held) = call(api.addr(), "POST", leases, Some(&lease)).await;
    assert_eq!(code, 201);
    let mut take = held.clone();
    take["spec"]["holderIdentity"] = json!("b");
    assert_eq!(
        call(api.addr(), "PUT", &format!("{leases}/leader"), Some(&take))
            .await
            .0,
        200
    );
    take["spec"]["holderIdentity"] = json!("c");
    assert_eq!(
        call(api.addr(), "PUT", &format!("{leases}/leader"), Some(&take))
            .await
            .0,
        409
    );
}

#[tokio::test]
async fn status_subresource_changes_status_only_without_a_generation_bump() {
    let api = fake().await;
    let created = api
        .apply(
            json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": "r", "namespace": "ns"}, "spec": {"hostnames": ["a.example"]}}),
        )
        .expect("apply");
    let status_path = "/apis/gateway.networking.k8s.io/v1/namespaces/ns/httproutes/r/status";
    let mut put = created.clone();
    put["status"] = json!({"parents": [{"controllerName": "x"}]});
    put["spec"]["hostnames"] = json!(["ignored.example"]);
    let (code, after) = call(api.addr(), "PUT", status_path, Some(&put)).await;
    assert_eq!(code, 200);
    assert_eq!(after["status"]["parents"][0]["controllerName"], "x");
    assert_eq!(after["spec"]["hostnames"], json!(["a.example"]));
    assert_eq!(after["metadata"]["generation"], 1);

    let patch = json!({"status": {"conditions": [{"type": "Accepted"}]}});
    let (code, patched) = call_typed(
        api.addr(),
        "PATCH",
        status_path,
        "application/merge-patch+json",
        Some(&patch),
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(patched["status"]["conditions"][0]["type"], "Accepted");
    assert_eq!(patched["status"]["parents"][0]["controllerName"], "x");
    assert_eq!(patched["metadata"]["generation"], 1);
    let (code, _) = call(api.addr(), "GET", status_path, None).await;
    assert_eq!(code, 200);

    // A stale resourceVersion in a status patch is a conflict too.
    let stale = json!({"metadata": {"resourceVersion": rv(&created)}, "status": {}});
    let (code, _) = call_typed(
        api.addr(),
        "PATCH",
        status_path,
        "application/merge-patch+json",
        Some(&stale),
    )
    .await;
    assert_eq!(code, 409);
}

#[tokio::test]
async fn delete_sends_the_final_object_and_404s_when_missing() {
    let api = fake().await;
    api.apply(service("ns", "a", json!({}))).expect("apply");
    let mut events = watch(
        api.addr(),
        &format!(
            "/api/v1/services?watch=true&resourceVersion={}",
            api.resource_version()
        ),
    )
    .await;
    let (code, last) = call(
        api.addr(),
        "DELETE",
        "/api/v1/namespaces/ns/services/a",
        None,
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(last["metadata"]["name"], "a");
    let deleted = events.next().await.expect("DELETED");
    assert_eq!(deleted["type"], "DELETED");
    assert_eq!(deleted["object"]["spec"]["ports"][0]["port"], 80);
    let (code, missing) = call(
        api.addr(),
        "DELETE",
        "/api/v1/namespaces/ns/services/a",
        None,
    )
    .await;
    assert_eq!((code, missing["reason"].clone()), (404, json!("NotFound")));
    assert_eq!(
        call(api.addr(), "GET", "/api/v1/namespaces/ns/services/a", None)
            .await
            .0,
        404
    );
}

#[tokio::test]
async fn bookmarks_timeouts_and_dropped_streams() {
    let api = fake().await;
    let path = "/apis/discovery.k8s.io/v1/endpointslices?watch=true&allowWatchBookmarks=true";
    let mut events = watch(api.addr(), path).await;
    api.apply(service("ns", "unrelated", json!({})))
        .expect("apply");
    api.bookmark_now();
    let bookmark = events.next().await.expect("a BOOKMARK");
    assert_eq!(bookmark["type"], "BOOKMARK");
    assert_eq!(bookmark["object"]["apiVersion"], "discovery.k8s.io/v1");
    assert_eq!(bookmark["object"]["kind"], "EndpointSlice");
    assert_eq!(rv(&bookmark["object"]), api.resource_version().to_string());
    api.drop_watches();
    assert_eq!(events.next().await, None, "a dropped watch ends cleanly");

    let mut events = watch(api.addr(), "/api/v1/services?watch=true&timeoutSeconds=1").await;
    assert_eq!(
        events.next_named().await,
        Some(("ADDED".into(), "unrelated".into()))
    );
    assert_eq!(
        events.next().await,
        None,
        "the stream ends at timeoutSeconds"
    );
}

#[tokio::test]
async fn faults_and_the_request_log() {
    let api = fake().await;
    api.fail("v1", "Secret", Some(403)).expect("a served kind");
    let (code, denied) = call(api.addr(), "GET", "/api/v1/secrets", None).await;
    assert_eq!((code, denied["reason"].clone()), (403, json!("Forbidden")));
    assert_eq!(
        call(api.addr(), "GET", "/api/v1/services", None).await.0,
        200
    );
    api.fail("v1", "Secret", None).expect("a served kind");
    assert_eq!(
        call(api.addr(), "GET", "/api/v1/secrets", None).await.0,
        200
    );

    api.set_outage(Outage::Unavailable).expect("outage");
    assert_eq!(
        call(api.addr(), "GET", "/api/v1/services", None).await.0,
        503
    );
    api.set_outage(Outage::Refuse).expect("outage");
    assert!(
        tokio::net::TcpStream::connect(api.addr()).await.is_err(),
        "connections are refused"
    );
    api.set_outage(Outage::None)
        .expect("the same address again");
    assert_eq!(
        call(api.addr(), "GET", "/api/v1/services", None).await.0,
        200
    );

    api.clear_requests();
    call(api.addr(), "GET", "/api/v1/services?limit=500", None).await;
    let events = watch(api.addr(), "/api/v1/services?watch=true&resourceVersion=7").await;
    drop(events);
    let log = api.requests();
    assert_eq!(log.len(), 2);
    assert!(log[0].is_list());
    assert_eq!(
        (log[0].path.as_str(), log[0].query.as_str()),
        ("/api/v1/services", "limit=500")
    );
    assert!(log[1].is_watch());
    assert_eq!(log[1].resource_version.as_deref(), Some("7"));
    assert_eq!(log[1].status, 200);
}

#[tokio::test]
async fn custom_resource_write_rules_and_delete_preconditions() {
    let api = fake().await;
    api.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ns"}}))
        .expect("apply");
    let one = "/apis/gateway.networking.k8s.io/v1/namespaces/ns/httproutes/r";
    let route = json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": "r", "namespace": "ns"}, "spec": {"hostnames": ["a.example"]}});

    let merge = "application/merge-patch+json";
    let apply = "application/apply-patch+yaml";
    let (code, _) = call_typed(api.addr(), "PATCH", one, apply, Some(&route)).await;
    assert_eq!(code, 400, "an apply patch needs a fieldManager");
    let with_manager = format!("{one}?fieldManager=gatewayd");
    let (code, created) = call_typed(api.addr(), "PATCH", &with_manager, apply, Some(&route)).await;
    assert_eq!(code, 201, "an apply patch creates a missing object");
    assert_eq!(created["metadata"]["generation"], 1);

    let (code, _) = call(api.addr(), "PUT", one, Some(&route)).await;
    assert_eq!(code, 422, "custom resources refuse unconditional updates");
    let smp = "application/strategic-merge-patch+json";
    let (code, _) = call_typed(api.addr(), "PATCH", one, smp, Some(&json!({"spec": {}}))).await;
    assert_eq!(code, 415, "no strategic merge for custom resources");
    let patch = json!({"spec": {"hostnames": ["b.example"]}});
    let (code, patched) = call_typed(api.addr(), "PATCH", one, merge, Some(&patch)).await;
    assert_eq!(
        (code, patched["metadata"]["generation"].clone()),
        (200, json!(2))
    );

    let stale = json!({"preconditions": {"resourceVersion": rv(&created)}});
    assert_eq!(call(api.addr(), "DELETE", one, Some(&stale)).await.0, 409);
    let current = json!({"preconditions": {"uid": patched["metadata"]["uid"], "resourceVersion": rv(&patched)}});
    assert_eq!(call(api.addr(), "DELETE", one, Some(&current)).await.0, 200);
}

#[tokio::test]
async fn send_initial_events_ends_with_an_annotated_bookmark() {
    let api = fake().await;
    api.apply(service("ns", "a", json!({}))).expect("apply");
    let path = "/api/v1/services?watch=1&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true";
    let mut events = watch(api.addr(), path).await;
    assert_eq!(
        events.next_named().await,
        Some(("ADDED".into(), "a".into()))
    );
    let end = events.next().await.expect("a BOOKMARK");
    assert_eq!(end["type"], "BOOKMARK");
    assert_eq!(
        end["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"],
        "true"
    );
}

#[tokio::test]
async fn a_bounded_event_log_expires_old_resource_versions() {
    let api = FakeApi::start(Options {
        event_log_limit: 2,
        ..Options::default()
    })
    .await
    .expect("start the fake");
    let first = api.apply(service("ns", "a", json!({}))).expect("apply");
    for name in ["b", "c", "d"] {
        api.apply(service("ns", name, json!({}))).expect("apply");
    }
    let path = format!("/api/v1/services?watch=true&resourceVersion={}", rv(&first));
    let error = watch(api.addr(), &path)
        .await
        .next()
        .await
        .expect("an event");
    assert_eq!(
        (error["type"].clone(), error["object"]["code"].clone()),
        (json!("ERROR"), json!(410))
    );
    // The last two events are still there to resume from.
    let recent = api.resource_version() - 2;
    let mut events = watch(
        api.addr(),
        &format!("/api/v1/services?watch=true&resourceVersion={recent}"),
    )
    .await;
    assert_eq!(
        events.next_named().await,
        Some(("ADDED".into(), "c".into()))
    );
    assert_eq!(
        events.next_named().await,
        Some(("ADDED".into(), "d".into()))
    );
}
