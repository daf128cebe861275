use std::{net::SocketAddr, sync::Arc, time::Duration};

use super::*;
use crate::snapshot::{LoadBalancer, OutlierDetection};

fn addr(i: u8) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, i], 80))
}

/// A snapshot of one cluster `s` over `endpoints`, with the given policies.
fn snapshot(
    load_balancer: LoadBalancer,
    outlier: Option<OutlierDetection>,
    endpoints: &[SocketAddr],
) -> Arc<Snapshot> {
    let mut cluster = Cluster::new("s.ns.svc".into(), "s".into(), "ns".into(), 80);
    cluster.load_balancer = load_balancer;
    cluster.outlier_detection = outlier;
    Arc::new(Snapshot {
        clusters: Arc::new(vec![Arc::new(cluster)]),
        endpoints: vec![endpoints.into()],
        ..Snapshot::default()
    })
}

fn endpoints(n: u8) -> Vec<SocketAddr> {
    (1..=n).map(addr).collect()
}

fn only_cluster(live: &Live) -> LiveCluster<'_> {
    live.cluster(&live.snapshot.clusters[0])
        .expect("the snapshot's own cluster")
}

fn eject_after_one_failure(max_percent: u32) -> Option<OutlierDetection> {
    Some(OutlierDetection {
        consecutive_errors: 1,
        base_ejection_time: Duration::from_secs(60),
        max_ejection_percent: max_percent,
    })
}

/// Fails `bad` once through `cluster` (picking until it comes up).
fn fail(cluster: LiveCluster<'_>, bad: SocketAddr) {
    for _ in 0..1000 {
        let picked = cluster.pick().expect("an endpoint");
        if picked.addr == bad {
            picked.record(true);
            return;
        }
    }
    panic!("{bad} never picked");
}

#[test]
fn round_robin_takes_turns() {
    let live = Live::new(snapshot(LoadBalancer::RoundRobin, None, &endpoints(3)));
    let c = only_cluster(&live);
    let picked: Vec<SocketAddr> = (0..6).filter_map(|_| c.pick().map(|p| p.addr)).collect();
    assert_eq!(picked[..3], picked[3..]);
    assert_ne!(picked[0], picked[1]);
    assert_ne!(picked[1], picked[2]);
}

#[test]
fn least_request_avoids_the_busy_endpoint() {
    let live = Live::new(snapshot(LoadBalancer::LeastRequest, None, &endpoints(2)));
    let c = only_cluster(&live);
    // Hold one request on whichever endpoint comes first; the next 50 picks made while it
    // is in flight all go to the other one.
    let busy = c.pick().expect("an endpoint");
    for _ in 0..50 {
        let next = c.pick().expect("an endpoint");
        assert_ne!(next.addr, busy.addr);
    }
}

#[test]
fn retries_avoid_the_endpoints_already_tried_while_others_remain() {
    for load_balancer in [
        LoadBalancer::LeastRequest,
        LoadBalancer::RoundRobin,
        LoadBalancer::Random,
    ] {
        let live = Live::new(snapshot(load_balancer, None, &endpoints(3)));
        let c = only_cluster(&live);
        for _ in 0..20 {
            let mut tried = Vec::new();
            for _ in 0..3 {
                let picked = c.pick_avoiding(&tried, None).expect("an endpoint");
                assert!(!tried.contains(&picked.index()), "{load_balancer:?}");
                tried.push(picked.index());
            }
            // All tried: any endpoint again rather than none.
            assert!(c.pick_avoiding(&tried, None).is_some());
        }
    }
}

#[test]
fn consecutive_failures_eject_an_endpoint_until_all_would_be_ejected() {
    let outlier = Some(OutlierDetection {
        consecutive_errors: 3,
        base_ejection_time: Duration::from_secs(60),
        max_ejection_percent: 50,
    });
    let live = Live::new(snapshot(LoadBalancer::RoundRobin, outlier, &endpoints(2)));
    let c = only_cluster(&live);
    let bad = addr(1);
    for _ in 0..3 {
        fail(c, bad);
    }
    for _ in 0..10 {
        assert_ne!(
            c.pick().map(|p| p.addr),
            Some(bad),
            "ejected endpoint picked"
        );
    }
    // At most half may be out: failures of the other one do not eject it.
    for _ in 0..5 {
        c.pick().expect("an endpoint").record(true);
    }
    assert!(c.pick().is_some());
}

#[test]
fn an_ejection_survives_a_reload_that_keeps_the_endpoint() {
    let first = Live::new(snapshot(
        LoadBalancer::RoundRobin,
        eject_after_one_failure(50),
        &endpoints(2),
    ));
    fail(only_cluster(&first), addr(1));
    // A recompile: new snapshot, equal cluster; and an endpoint update adding a third.
    for next in [endpoints(2), endpoints(3)] {
        let next = first.succeed(snapshot(
            LoadBalancer::RoundRobin,
            eject_after_one_failure(50),
            &next,
        ));
        let c = only_cluster(&next);
        for _ in 0..12 {
            assert_ne!(c.pick().map(|p| p.addr), Some(addr(1)), "ejection lost");
        }
    }
}

#[test]
fn in_flight_counts_follow_an_endpoint_to_its_new_position() {
    let first = Live::new(snapshot(
        LoadBalancer::LeastRequest,
        None,
        &[addr(2), addr(3)],
    ));
    let busy = only_cluster(&first)
        .pick_avoiding(&[1], None)
        .expect("an endpoint");
    assert_eq!(busy.addr, addr(2));
    // addr(2) moves from index 0 to index 1; its in-flight request moves with it.
    let next = first.succeed(snapshot(
        LoadBalancer::LeastRequest,
        None,
        &[addr(1), addr(2)],
    ));
    let c = only_cluster(&next);
    for _ in 0..50 {
        assert_ne!(
            c.pick().map(|p| p.addr),
            Some(addr(2)),
            "busy endpoint picked"
        );
    }
    drop(busy);
}

#[test]
fn state_of_endpoints_and_clusters_that_went_away_is_dropped() {
    let first = Live::new(snapshot(
        LoadBalancer::RoundRobin,
        eject_after_one_failure(100),
        &endpoints(2),
    ));
    fail(only_cluster(&first), addr(1));
    // addr(1) leaves, then comes back: a new endpoint with a clean record.
    let without = first.succeed(snapshot(
        LoadBalancer::RoundRobin,
        eject_after_one_failure(100),
        &[addr(2)],
    ));
    let back = without.succeed(snapshot(
        LoadBalancer::RoundRobin,
        eject_after_one_failure(100),
        &endpoints(2),
    ));
    let c = only_cluster(&back);
    assert!((0..4).any(|_| c.pick().map(|p| p.addr) == Some(addr(1))));
}

#[test]
fn an_unchanged_cluster_keeps_its_state_object() {
    let first = Live::new(snapshot(LoadBalancer::RoundRobin, None, &endpoints(2)));
    let next = first.succeed(snapshot(LoadBalancer::RoundRobin, None, &endpoints(2)));
    assert!(Arc::ptr_eq(&first.clusters[0], &next.clusters[0]));
    let moved = next.succeed(snapshot(LoadBalancer::RoundRobin, None, &endpoints(3)));
    assert!(Arc::ptr_eq(
        &next.clusters[0].breakers,
        &moved.clusters[0].breakers
    ));
}

#[test]
fn a_cluster_of_another_snapshot_is_not_resolved() {
    let first = Live::new(snapshot(LoadBalancer::RoundRobin, None, &endpoints(2)));
    let other = snapshot(LoadBalancer::RoundRobin, None, &endpoints(2));
    assert!(first.cluster(&other.clusters[0]).is_none());
}

/// Two clusters, `a` and `b`, in that order or the other.
fn two_clusters(order: [&str; 2], endpoints_of_a: &[SocketAddr]) -> Snapshot {
    let mut snapshot = Snapshot::default();
    for (id, name) in order.into_iter().enumerate() {
        let mut cluster = Cluster::new(format!("{name}.ns.svc"), name.into(), "ns".into(), 80);
        cluster.id = id;
        Arc::make_mut(&mut snapshot.clusters).push(Arc::new(cluster));
        let endpoints: Vec<SocketAddr> = if name == "a" {
            endpoints_of_a.to_vec()
        } else {
            vec![addr(9)]
        };
        snapshot.endpoints.push(endpoints.into());
    }
    snapshot
}

#[test]
fn shared_and_renumbered_clusters_both_keep_their_state() {
    let first = Live::new(Arc::new(two_clusters(["a", "b"], &endpoints(2))));
    // An endpoint update: the same definitions, `a`'s endpoints replaced.
    let mut update = Snapshot {
        clusters: first.snapshot.clusters.clone(),
        endpoints: first.snapshot.endpoints.clone(),
        ..Snapshot::default()
    };
    update.endpoints[0] = endpoints(3).into();
    let updated = first.succeed(Arc::new(update));
    assert!(Arc::ptr_eq(&first.clusters[1], &updated.clusters[1]));
    assert!(Arc::ptr_eq(
        &first.clusters[0].endpoints[1],
        &updated.clusters[0].endpoints[1]
    ));
    // A recompile that numbers the clusters the other way round: matched by name.
    let renumbered = updated.succeed(Arc::new(two_clusters(["b", "a"], &endpoints(3))));
    assert!(Arc::ptr_eq(&updated.clusters[1], &renumbered.clusters[0]));
    assert!(Arc::ptr_eq(&updated.clusters[0], &renumbered.clusters[1]));
}
