//! Leader election and Gateway API status writes against the protocol-faithful fake API
//! server (tests/fake-apiserver), through kube-rs as gatewayd uses it.

use std::time::Duration;

use fake_apiserver::{FakeApi, Options};
use gateway::kubernetes::lease::{Elector, Timing};
use gateway::kubernetes::status_writer::{
    Condition, Desired, DesiredStatus, ParentRef, RouteParentStatus, StatusWriter, WriteSummary,
    gateway_api_resource,
};
use kube::api::DynamicObject;
use serde_json::{Value, json};
use tokio::sync::{oneshot, watch};

const OURS: &str = "gatewayd.dev/gateway-controller";

/// Short periods so that take-overs happen within the test; the ratios are client-go's.
const FAST: Timing = Timing {
    lease_duration: Duration::from_secs(2),
    renew_deadline: Duration::from_millis(1200),
    retry_period: Duration::from_millis(100),
};

fn client(api: &FakeApi) -> kube::Client {
    let config = kube::Config::new(api.url().parse().expect("url"));
    kube::Client::try_from(config).expect("client")
}

struct Candidate {
    leader: watch::Receiver<bool>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

fn candidate(api: &FakeApi, identity: &str) -> Candidate {
    let (elector, leader) = Elector::new(
        client(api),
        "default",
        "gatewayd-status-leader",
        identity.into(),
    );
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(elector.with_timing(FAST).run(async move {
        let _ = stopped.await;
    }));
    Candidate {
        leader,
        stop: Some(stop),
        task,
    }
}

/// Shuts the candidate down as SIGTERM would: it releases the lease.
fn stop(candidate: &mut Candidate) {
    if let Some(stop) = candidate.stop.take() {
        let _ = stop.send(());
    }
}

async fn until(leader: &mut watch::Receiver<bool>, leading: bool) {
    tokio::time::timeout(Duration::from_secs(20), leader.wait_for(|l| *l == leading))
        .await
        .expect("leadership did not change in time")
        .expect("elector gone");
}

fn holder(api: &FakeApi) -> Value {
    let lease = api
        .get(
            "coordination.k8s.io/v1",
            "Lease",
            "default",
            "gatewayd-status-leader",
        )
        .expect("the lease");
    lease["spec"]["holderIdentity"].clone()
}

#[tokio::test]
async fn one_of_two_pods_leads_and_the_other_takes_over_on_release_and_on_a_kill() {
    let api = FakeApi::start(Options::default())
        .await
        .expect("fake API server");
    let mut a = candidate(&api, "gatewayd-a");
    until(&mut a.leader, true).await;
    let mut b = candidate(&api, "gatewayd-b");
    // b reads the lease a renews, several times, and stays a follower.
    while api
        .requests()
        .iter()
        .filter(|r| r.verb == "get" && r.path.contains("leases"))
        .count()
        < 5
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!*b.leader.borrow(), "two leaders");
    assert_eq!(holder(&api), json!("gatewayd-a"));

    // a shuts down (SIGTERM): it releases and b takes over.
    stop(&mut a);
    (&mut a.task).await.expect("a");
    until(&mut b.leader, true).await;
    assert_eq!(holder(&api), json!("gatewayd-b"));

    // c joins; b is killed (no release): c takes over once the lease expires.
    let mut c = candidate(&api, "gatewayd-c");
    b.task.abort();
    until(&mut c.leader, true).await;
    assert_eq!(holder(&api), json!("gatewayd-c"));
    let lease = api
        .get(
            "coordination.k8s.io/v1",
            "Lease",
            "default",
            "gatewayd-status-leader",
        )
        .expect("the lease");
    assert_eq!(lease["spec"]["leaseTransitions"], json!(2));
    stop(&mut c);
    c.task.await.expect("c");
}

fn route(parents: Vec<Value>) -> Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": "web", "namespace": "apps"},
        "spec": {"parentRefs": [{"name": "gw"}, {"name": "istio-gw"}],
                 "rules": [{"backendRefs": [{"name": "web", "port": 80}]}]},
        "status": {"parents": parents},
    })
}

fn istio_parent() -> Value {
    json!({
        "parentRef": {"name": "istio-gw"},
        "controllerName": "istio.io/gateway-controller",
        "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted", "message": "",
                        "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": 1}],
    })
}

fn desired_route(generation: i64, current: Option<&Value>) -> DesiredStatus {
    DesiredStatus {
        resource: gateway_api_resource("v1", "HTTPRoute"),
        namespace: Some("apps".into()),
        name: "web".into(),
        current: current
            .map(|c| serde_json::from_value::<DynamicObject>(c.clone()).expect("an object")),
        status: Desired::Route {
            parents: vec![RouteParentStatus {
                parent_ref: ParentRef {
                    name: "gw".into(),
                    ..ParentRef::default()
                },
                conditions: vec![
                    Condition::new("Accepted", true, "Accepted", "", generation),
                    Condition::new(
                        "ResolvedRefs",
                        false,
                        "BackendNotFound",
                        "Service apps/web not found",
                        generation,
                    ),
                ],
            }],
        },
    }
}

fn status_puts(api: &FakeApi) -> usize {
    api.requests()
        .iter()
        .filter(|r| r.method == "PUT" && r.path.ends_with("/status"))
        .count()
}

#[tokio::test]
async fn the_leader_writes_route_status_through_the_status_subresource_and_only_when_it_changes() {
    let api = FakeApi::start(Options::default())
        .await
        .expect("fake API server");
    let stored = api.apply(route(vec![istio_parent()])).expect("the route");
    let generation = stored["metadata"]["generation"]
        .as_i64()
        .expect("a generation");

    let mut a = candidate(&api, "gatewayd-a");
    until(&mut a.leader, true).await;
    let b = candidate(&api, "gatewayd-b");
    let mut leader_writer = StatusWriter::new(client(&api), OURS, a.leader.clone());
    let mut follower_writer = StatusWriter::new(client(&api), OURS, b.leader.clone());

    let follower = follower_writer
        .apply(&[desired_route(generation, None)])
        .await;
    assert_eq!(
        follower,
        WriteSummary {
            not_leader: 1,
            ..WriteSummary::default()
        }
    );
    // From a copy that another controller has since changed: one 409, one re-read.
    let stale = api
        .get("gateway.networking.k8s.io/v1", "HTTPRoute", "apps", "web")
        .expect("route");
    api.apply(route(vec![istio_parent(), json!({"parentRef": {"name": "other"}, "controllerName": "example.com/other", "conditions": []})]))
        .expect("another controller's write");
    let summary = leader_writer
        .apply(&[desired_route(generation, Some(&stale))])
        .await;
    assert_eq!(
        summary,
        WriteSummary {
            written: 1,
            ..WriteSummary::default()
        }
    );
    assert_eq!(status_puts(&api), 2);

    let written = api
        .get("gateway.networking.k8s.io/v1", "HTTPRoute", "apps", "web")
        .expect("route");
    assert_eq!(
        written["metadata"]["generation"],
        json!(generation),
        "a status write bumped the generation"
    );
    assert_eq!(written["spec"], route(vec![])["spec"]);
    let parents = written["status"]["parents"].as_array().expect("parents");
    assert_eq!(parents.len(), 3);
    assert_eq!(parents[0], istio_parent());
    assert_eq!(parents[1]["controllerName"], json!("example.com/other"));
    assert_eq!(parents[2]["controllerName"], json!(OURS));
    assert_eq!(
        parents[2]["conditions"][1]["reason"],
        json!("BackendNotFound")
    );
    assert_eq!(
        parents[2]["conditions"][0]["observedGeneration"],
        json!(generation)
    );

    // Nothing changed: no write, from the watch's copy or from a fresh read.
    let summary = leader_writer
        .apply(&[desired_route(generation, Some(&written))])
        .await;
    assert_eq!(
        summary,
        WriteSummary {
            unchanged: 1,
            ..WriteSummary::default()
        }
    );
    let summary = leader_writer
        .apply(&[desired_route(generation, None)])
        .await;
    assert_eq!(
        summary,
        WriteSummary {
            unchanged: 1,
            ..WriteSummary::default()
        }
    );
    assert_eq!(status_puts(&api), 2);

    stop(&mut a);
    a.task.await.expect("a");
    drop(b);
}

fn our_parent(api: &FakeApi) -> Option<Value> {
    let route = api.get("gateway.networking.k8s.io/v1", "HTTPRoute", "apps", "web")?;
    route["status"]["parents"]
        .as_array()?
        .iter()
        .find(|p| p["controllerName"] == json!(OURS))
        .cloned()
}

async fn until_written(api: &FakeApi) -> Value {
    let wait = async {
        loop {
            if let Some(parent) = our_parent(api) {
                return parent;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(20), wait)
        .await
        .expect("status not written")
}

#[tokio::test]
async fn a_new_leader_reconciles_every_status_once_it_takes_over() {
    let api = FakeApi::start(Options::default())
        .await
        .expect("fake API server");
    api.apply(route(vec![istio_parent()])).expect("the route");
    let desired = std::sync::Arc::new(vec![desired_route(1, None)]);
    let (_desired_tx, desired_rx) = watch::channel(desired);

    let mut a = candidate(&api, "gatewayd-a");
    until(&mut a.leader, true).await;
    let mut b = candidate(&api, "gatewayd-b");
    let (stop_writer_a, writer_a_stopped) = oneshot::channel::<()>();
    let writer_a = tokio::spawn(StatusWriter::new(client(&api), OURS, a.leader.clone()).run(
        desired_rx.clone(),
        async move {
            let _ = writer_a_stopped.await;
        },
    ));
    let (_stop_writer_b, writer_b_stopped) = oneshot::channel::<()>();
    let writer_b = tokio::spawn(StatusWriter::new(client(&api), OURS, b.leader.clone()).run(
        desired_rx,
        async move {
            let _ = writer_b_stopped.await;
        },
    ));
    until_written(&api).await;

    // a goes away; meanwhile someone wipes our entry (as a stale client's update would).
    let _ = stop_writer_a.send(());
    writer_a.await.expect("a's writer");
    stop(&mut a);
    (&mut a.task).await.expect("a");
    api.apply(route(vec![istio_parent()])).expect("wiped");
    assert_eq!(our_parent(&api), None);

    until(&mut b.leader, true).await;
    let restored = until_written(&api).await;
    assert_eq!(
        restored["conditions"][1]["reason"],
        json!("BackendNotFound")
    );
    stop(&mut b);
    writer_b.abort();
}

#[tokio::test]
async fn gateway_class_and_gateway_status_carry_conditions_listeners_and_addresses() {
    use gateway::kubernetes::status_writer::{
        GatewayAddress, GatewayStatus, ListenerStatus, RouteGroupKind,
    };

    let api = FakeApi::start(Options::default())
        .await
        .expect("fake API server");
    api.apply(json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
        "metadata": {"name": "gatewayd"}, "spec": {"controllerName": OURS},
    }))
    .expect("the class");
    let gateway = api
        .apply(json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": {"name": "gw", "namespace": "apps"},
            "spec": {"gatewayClassName": "gatewayd", "listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}]},
        }))
        .expect("the gateway");
    let generation = gateway["metadata"]["generation"]
        .as_i64()
        .expect("a generation");
    let (_leader, leader_rx) = watch::channel(true);
    let mut writer = StatusWriter::new(client(&api), OURS, leader_rx);
    let desired = [
        DesiredStatus {
            resource: gateway_api_resource("v1", "GatewayClass"),
            namespace: None,
            name: "gatewayd".into(),
            current: None,
            status: Desired::GatewayClass {
                conditions: vec![Condition::new("Accepted", true, "Accepted", "", 1)],
            },
        },
        DesiredStatus {
            resource: gateway_api_resource("v1", "Gateway"),
            namespace: Some("apps".into()),
            name: "gw".into(),
            current: None,
            status: Desired::Gateway(GatewayStatus {
                conditions: vec![
                    Condition::new("Accepted", true, "Accepted", "", generation),
                    Condition::new("Programmed", true, "Programmed", "", generation),
                ],
                addresses: vec![GatewayAddress {
                    address_type: Some("IPAddress".into()),
                    value: "192.0.2.10".into(),
                }],
                listeners: vec![ListenerStatus {
                    name: "http".into(),
                    supported_kinds: vec![RouteGroupKind {
                        group: Some("gateway.networking.k8s.io".into()),
                        kind: "HTTPRoute".into(),
                    }],
                    attached_routes: 1,
                    conditions: vec![Condition::new(
                        "Programmed",
                        true,
                        "Programmed",
                        "",
                        generation,
                    )],
                }],
            }),
        },
    ];
    let summary = writer.apply(&desired).await;
    assert_eq!(
        summary,
        WriteSummary {
            written: 2,
            ..WriteSummary::default()
        }
    );
    let class = api
        .get(
            "gateway.networking.k8s.io/v1",
            "GatewayClass",
            "",
            "gatewayd",
        )
        .expect("class");
    assert_eq!(class["status"]["conditions"][0]["status"], json!("True"));
    let gateway = api
        .get("gateway.networking.k8s.io/v1", "Gateway", "apps", "gw")
        .expect("gateway");
    assert_eq!(
        gateway["status"]["addresses"],
        json!([{"type": "IPAddress", "value": "192.0.2.10"}])
    );
    assert_eq!(
        gateway["status"]["listeners"][0]["attachedRoutes"],
        json!(1)
    );
    assert_eq!(
        gateway["status"]["conditions"][1]["observedGeneration"],
        json!(generation)
    );
    let summary = writer.apply(&desired).await;
    assert_eq!(
        summary,
        WriteSummary {
            unchanged: 2,
            ..WriteSummary::default()
        }
    );
}
