use std::time::Duration;

use k8s_openapi::api::coordination::v1::LeaseSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use serde_json::json;
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use super::{Elector, Timing, held_by_other, next_record};
use fake_apiserver::{FakeApi, Options};

const LEASES: &str = "coordination.k8s.io/v1";

/// Short periods so that take-overs happen within the test; the ratios are client-go's.
const FAST: Timing = Timing {
    lease_duration: Duration::from_secs(2),
    renew_deadline: Duration::from_millis(1200),
    retry_period: Duration::from_millis(100),
};

fn spec(holder: Option<&str>, seconds: Option<i32>) -> LeaseSpec {
    LeaseSpec {
        holder_identity: holder.map(str::to_owned),
        lease_duration_seconds: seconds,
        ..LeaseSpec::default()
    }
}

#[test]
fn a_lease_is_held_by_another_until_its_duration_passes_since_we_saw_it_change() {
    let timing = Timing::default();
    let seen = Instant::now();
    let later = |secs| seen + Duration::from_secs(secs);
    let cases: &[(&str, LeaseSpec, Instant, Option<&str>)] = &[
        ("no holder", spec(None, Some(15)), later(1), None),
        (
            "released (empty holder)",
            spec(Some(""), Some(1)),
            seen,
            None,
        ),
        ("held by us", spec(Some("me"), Some(15)), later(1), None),
        (
            "held by another, fresh",
            spec(Some("other"), Some(15)),
            later(14),
            Some("other"),
        ),
        (
            "held by another, expired",
            spec(Some("other"), Some(15)),
            later(15),
            None,
        ),
        (
            "the holder's own duration counts",
            spec(Some("other"), Some(60)),
            later(30),
            Some("other"),
        ),
        (
            "no duration: ours (15 s)",
            spec(Some("other"), None),
            later(14),
            Some("other"),
        ),
        (
            "negative duration: ours",
            spec(Some("other"), Some(-5)),
            later(16),
            None,
        ),
        (
            "huge duration never expires",
            spec(Some("other"), Some(i32::MAX)),
            later(1_000_000),
            Some("other"),
        ),
    ];
    for (name, spec, now, expected) in cases {
        assert_eq!(
            held_by_other(spec, "me", seen, *now, &timing),
            *expected,
            "{name}"
        );
    }
}

#[test]
fn taking_over_starts_a_new_term_and_renewing_keeps_it() {
    let timing = Timing::default();
    let before = Timestamp::from_second(1_000).expect("time");
    let now = Timestamp::from_second(2_000).expect("time");

    let created = next_record("me", &timing, None, now);
    assert_eq!(created.holder_identity.as_deref(), Some("me"));
    assert_eq!(created.lease_duration_seconds, Some(15));
    assert_eq!(created.lease_transitions, Some(0));
    assert_eq!(created.acquire_time, Some(MicroTime(now)));

    let theirs = LeaseSpec {
        holder_identity: Some("other".into()),
        acquire_time: Some(MicroTime(before)),
        renew_time: Some(MicroTime(before)),
        lease_transitions: Some(3),
        lease_duration_seconds: Some(30),
        ..LeaseSpec::default()
    };
    let taken = next_record("me", &timing, Some(theirs), now);
    assert_eq!(taken.holder_identity.as_deref(), Some("me"));
    assert_eq!(taken.lease_transitions, Some(4));
    assert_eq!(taken.acquire_time, Some(MicroTime(now)));
    assert_eq!(taken.lease_duration_seconds, Some(15));

    let ours = LeaseSpec {
        holder_identity: Some("me".into()),
        acquire_time: Some(MicroTime(before)),
        lease_transitions: Some(4),
        ..LeaseSpec::default()
    };
    let renewed = next_record("me", &timing, Some(ours), now);
    assert_eq!(renewed.lease_transitions, Some(4));
    assert_eq!(renewed.acquire_time, Some(MicroTime(before)));
    assert_eq!(renewed.renew_time, Some(MicroTime(now)));
}

/// Runs an elector until the returned sender fires (or is dropped).
fn spawn(
    api: &FakeApi,
    identity: &str,
) -> (
    watch::Receiver<bool>,
    oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let (elector, leader) =
        Elector::new(client(api), "default", "status-leader", identity.to_owned());
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(elector.with_timing(FAST).run(async move {
        let _ = stopped.await;
    }));
    (leader, stop, task)
}

async fn until(leader: &mut watch::Receiver<bool>, leading: bool) {
    tokio::time::timeout(Duration::from_secs(20), leader.wait_for(|l| *l == leading))
        .await
        .expect("leadership did not change in time")
        .expect("elector gone");
}

fn client(api: &FakeApi) -> kube::Client {
    kube::Client::try_from(kube::Config::new(api.url().parse().expect("url"))).expect("client")
}

fn lease(api: &FakeApi) -> Option<serde_json::Value> {
    api.get(LEASES, "Lease", "default", "status-leader")
}

fn holder(api: &FakeApi) -> String {
    let lease = lease(api).expect("the lease exists");
    lease["spec"]["holderIdentity"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn the_first_candidate_creates_the_lease_and_leads() {
    let api = FakeApi::start(Options::default())
        .await
        .expect("fake API server");
    let (mut leader, stop, task) = spawn(&api, "pod-a");
    until(&mut leader, true).await;
    let lease = lease(&api).expect("created");
    assert_eq!(lease["spec"]["holderIdentity"], json!("pod-a"));
    assert_eq!(lease["spec"]["leaseDurationSeconds"], json!(2));
    assert_eq!(lease["spec"]["leaseTransitions"], json!(0));
    drop(stop);
    task.await.expect("elector");
}

#[tokio::test]
async fn of_two_candidates_one_leads_and_the_other_takes_over_when_it_releases() {
    let api = FakeApi::start(Options::default())
        .await
        .expect("fake API server");
    let (mut a, stop_a, task_a) = spawn(&api, "pod-a");
    until(&mut a, true).await;
    let (mut b, stop_b, task_b) = spawn(&api, "pod-b");
    // b keeps reading a renewed lease: it must not lead while a renews.
    while api.requests().iter().filter(|r| r.verb == "get").count() < 6 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!*b.borrow(), "b leads while a renews");
    assert!(*a.borrow());
    assert_eq!(holder(&api), "pod-a");

    stop_a.send(()).expect("a runs");
    task_a.await.expect("a");
    assert!(!*a.borrow(), "a still leads after shutdown");
    until(&mut b, true).await;
    let lease = lease(&api).expect("lease");
    assert_eq!(lease["spec"]["holderIdentity"], json!("pod-b"));
    assert_eq!(lease["spec"]["leaseTransitions"], json!(1));
    drop(stop_b);
    task_b.await.expect("b");
    assert_eq!(holder(&api), "", "b released the lease on shutdown");
}

#[tokio::test]
async fn a_leader_that_stops_renewing_is_replaced_after_the_lease_expires() {
    let api = FakeApi::start(Options::default())
        .await
        .expect("fake API server");
    let (mut a, _stop_a, task_a) = spawn(&api, "pod-a");
    until(&mut a, true).await;
    let (mut b, stop_b, task_b) = spawn(&api, "pod-b");
    // Killed: no release.
    task_a.abort();
    until(&mut b, true).await;
    assert_eq!(holder(&api), "pod-b");
    drop(stop_b);
    task_b.await.expect("b");
}

#[tokio::test]
async fn a_leader_that_cannot_renew_within_the_deadline_stops_leading() {
    let api = FakeApi::start(Options::default())
        .await
        .expect("fake API server");
    let (mut a, stop, task) = spawn(&api, "pod-a");
    until(&mut a, true).await;
    api.fail(LEASES, "Lease", Some(500)).expect("a served kind");
    until(&mut a, false).await;
    api.fail(LEASES, "Lease", None).expect("a served kind");
    until(&mut a, true).await;
    drop(stop);
    task.await.expect("elector");
}

#[tokio::test]
async fn a_lease_held_by_someone_who_renews_is_never_taken() {
    let api = FakeApi::start(Options::default())
        .await
        .expect("fake API server");
    let lease = |renewed: i64| {
        json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "status-leader", "namespace": "default"},
            "spec": {"holderIdentity": "pod-z", "leaseDurationSeconds": 2,
                     "renewTime": format!("2026-01-01T00:00:{:02}.000000Z", renewed % 60)},
        })
    };
    api.apply(lease(0)).expect("a lease");
    let (b, stop, task) = spawn(&api, "pod-b");
    // Renew every 500 ms for longer than two lease durations.
    for renewal in 1..=10 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        api.apply(lease(renewal)).expect("a lease");
        assert!(!*b.borrow(), "took a lease that was being renewed");
    }
    drop(stop);
    task.await.expect("elector");
    assert_eq!(holder(&api), "pod-z", "released a lease it did not hold");
}
