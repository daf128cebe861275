use std::sync::Arc;
use std::time::Duration;

use kube::api::DynamicObject;
use serde_json::{Value, json};
use tokio::sync::{oneshot, watch};

use super::{
    Condition, Desired, DesiredStatus, ParentRef, RouteParentStatus, StatusWriter, WriteSummary,
    gateway_api_resource,
};
use fake_apiserver::{FakeApi, Options};

const OURS: &str = "gatewayd.dev/gateway-controller";
const GATEWAY_API: &str = "gateway.networking.k8s.io/v1";

fn istio_parent() -> Value {
    json!({
        "parentRef": {"name": "istio-gw"},
        "controllerName": "istio.io/gateway-controller",
        "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted", "message": "",
                        "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": 1}],
    })
}

fn route_object(parents: Vec<Value>) -> Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": "web", "namespace": "apps", "generation": 1},
        "spec": {"parentRefs": [{"name": "gw"}, {"name": "istio-gw"}]},
        "status": {"parents": parents},
    })
}

fn route_status(accepted: bool, current: Option<Value>) -> DesiredStatus {
    DesiredStatus {
        resource: gateway_api_resource("v1", "HTTPRoute"),
        namespace: Some("apps".into()),
        name: "web".into(),
        current: current.map(|c| serde_json::from_value::<DynamicObject>(c).expect("an object")),
        status: Desired::Route {
            parents: vec![RouteParentStatus {
                parent_ref: ParentRef {
                    name: "gw".into(),
                    ..ParentRef::default()
                },
                conditions: vec![Condition::new(
                    "Accepted",
                    accepted,
                    if accepted {
                        "Accepted"
                    } else {
                        "NotAllowedByListeners"
                    },
                    "",
                    1,
                )],
            }],
        },
    }
}

fn class_status(accepted: bool) -> DesiredStatus {
    DesiredStatus {
        resource: gateway_api_resource("v1", "GatewayClass"),
        namespace: None,
        name: "gatewayd".into(),
        current: None,
        status: Desired::GatewayClass {
            conditions: vec![Condition::new("Accepted", accepted, "Accepted", "", 1)],
        },
    }
}

fn our_parents(object: &Value) -> Vec<Value> {
    object["status"]["parents"]
        .as_array()
        .map(|parents| {
            parents
                .iter()
                .filter(|p| p["controllerName"] == json!(OURS))
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

fn client(api: &FakeApi) -> kube::Client {
    kube::Client::try_from(kube::Config::new(api.url().parse().expect("url"))).expect("client")
}

fn route(api: &FakeApi) -> Option<Value> {
    api.get(GATEWAY_API, "HTTPRoute", "apps", "web")
}

fn puts(api: &FakeApi) -> usize {
    api.requests().iter().filter(|r| r.method == "PUT").count()
}

fn leading() -> (watch::Sender<bool>, watch::Receiver<bool>) {
    watch::channel(true)
}

#[tokio::test]
async fn a_route_gets_our_parent_beside_others_and_the_same_status_is_not_written_again() {
    let api = FakeApi::start(Options::default())
        .await
        .expect("fake API server");
    api.apply(route_object(vec![istio_parent()]))
        .expect("stored");
    let (_leader, leader_rx) = leading();
    let mut writer = StatusWriter::new(client(&api), OURS, leader_rx);

    let summary = writer.apply(&[route_status(true, None)]).await;
    assert_eq!(
        summary,
        WriteSummary {
            written: 1,
            ..WriteSummary::default()
        }
    );
    let route = route(&api).expect("the route");
    assert_eq!(
        route["status"]["parents"][0],
        istio_parent(),
        "istio's entry kept in place"
    );
    let ours = our_parents(&route);
    assert_eq!(ours.len(), 1);
    assert_eq!(ours[0]["parentRef"], json!({"name": "gw"}));
    assert_eq!(ours[0]["conditions"][0]["status"], json!("True"));
    assert_eq!(
        route["spec"],
        route_object(vec![])["spec"],
        "the spec is not touched"
    );

    // From the object as the watch would deliver it now: no request at all.
    let writes = puts(&api);
    let summary = writer
        .apply(&[route_status(true, Some(route.clone()))])
        .await;
    assert_eq!(
        summary,
        WriteSummary {
            unchanged: 1,
            ..WriteSummary::default()
        }
    );
    // Without it: one GET, no PUT.
    let summary = writer.apply(&[route_status(true, None)]).await;
    assert_eq!(summary.unchanged, 1);
    assert_eq!(puts(&api), writes);

    let metrics = writer.metrics();
    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
    assert!(
        text.contains("gateway_status_writes_total{result=\"written\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("gateway_status_writes_total{result=\"unchanged\"} 2"),
        "{text}"
    );
}

#[tokio::test]
async fn a_stale_copy_conflicts_once_and_the_write_lands_on_the_fresh_object() {
    let api = FakeApi::start(Options::default())
        .await
        .expect("fake API server");
    api.apply(route_object(vec![])).expect("stored");
    let stale = route(&api).expect("the route");
    // Another controller writes its entry after our copy was taken.
    api.apply(route_object(vec![istio_parent()]))
        .expect("stored");
    let (_leader, leader_rx) = leading();
    let mut writer = StatusWriter::new(client(&api), OURS, leader_rx);

    let summary = writer.apply(&[route_status(false, Some(stale))]).await;
    assert_eq!(
        summary,
        WriteSummary {
            written: 1,
            ..WriteSummary::default()
        }
    );
    let route = route(&api).expect("the route");
    assert_eq!(
        route["status"]["parents"][0],
        istio_parent(),
        "the other writer's entry survives"
    );
    assert_eq!(
        our_parents(&route)[0]["conditions"][0]["reason"],
        json!("NotAllowedByListeners")
    );
    assert_eq!(puts(&api), 2, "one conflict, one retry");
}

#[tokio::test]
async fn objects_that_are_gone_are_skipped_and_cluster_scoped_classes_are_written() {
    let api = FakeApi::start(Options::default())
        .await
        .expect("fake API server");
    api.apply(json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
        "metadata": {"name": "gatewayd", "generation": 1},
        "spec": {"controllerName": OURS},
    }))
    .expect("stored");
    let (_leader, leader_rx) = leading();
    let mut writer = StatusWriter::new(client(&api), OURS, leader_rx);
    let summary = writer
        .apply(&[route_status(true, None), class_status(true)])
        .await;
    assert_eq!(
        summary,
        WriteSummary {
            written: 1,
            gone: 1,
            ..WriteSummary::default()
        }
    );
    let class = api
        .get(GATEWAY_API, "GatewayClass", "", "gatewayd")
        .expect("the class");
    assert_eq!(class["status"]["conditions"][0]["type"], json!("Accepted"));
    assert_eq!(
        class["status"]["conditions"][0]["observedGeneration"],
        json!(1)
    );
}

#[tokio::test]
async fn a_follower_writes_nothing_and_an_outage_counts_errors() {
    let api = FakeApi::start(Options::default())
        .await
        .expect("fake API server");
    api.apply(route_object(vec![])).expect("stored");
    let (leader, leader_rx) = watch::channel(false);
    let mut writer = StatusWriter::new(client(&api), OURS, leader_rx);
    let summary = writer
        .apply(&[route_status(true, None), class_status(true)])
        .await;
    assert_eq!(
        summary,
        WriteSummary {
            not_leader: 2,
            ..WriteSummary::default()
        }
    );
    assert!(
        api.requests().is_empty(),
        "a follower asked the API server: {:?}",
        api.requests()
    );

    leader.send_replace(true);
    api.fail(GATEWAY_API, "HTTPRoute", Some(500))
        .expect("a served kind");
    let summary = writer.apply(&[route_status(true, None)]).await;
    assert_eq!(
        summary,
        WriteSummary {
            errors: 1,
            ..WriteSummary::default()
        }
    );
}

async fn until_written(api: &FakeApi, accepted: &str) {
    let wait = async {
        loop {
            let status = route(api).map(|route| our_parents(&route));
            if status.is_some_and(|ours| {
                ours.first()
                    .is_some_and(|p| p["conditions"][0]["status"] == json!(accepted))
            }) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(20), wait)
        .await
        .expect("the status was not written");
}

#[tokio::test]
async fn run_writes_when_leadership_is_gained_and_when_the_desired_status_changes() {
    let api = FakeApi::start(Options::default())
        .await
        .expect("fake API server");
    api.apply(route_object(vec![])).expect("stored");
    let (leader, leader_rx) = watch::channel(false);
    let writer = StatusWriter::new(client(&api), OURS, leader_rx);
    let (desired, desired_rx) = watch::channel(Arc::new(vec![route_status(true, None)]));
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(writer.run(desired_rx, async move {
        let _ = stopped.await;
    }));

    leader.send_replace(true);
    until_written(&api, "True").await;
    desired.send_replace(Arc::new(vec![route_status(false, None)]));
    until_written(&api, "False").await;

    stop.send(()).expect("running");
    task.await.expect("writer");
}
