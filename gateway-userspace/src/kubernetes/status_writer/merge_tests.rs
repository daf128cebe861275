use serde_json::{Value, json};

use super::{MergeContext, merge_status};
use crate::kubernetes::status_writer::desired::{
    Condition, ConditionStatus, Desired, GatewayAddress, GatewayStatus, ListenerStatus, ParentRef,
    RouteGroupKind, RouteParentStatus,
};

const OURS: &str = "gatewayd.dev/gateway-controller";
const THEIRS: &str = "istio.io/gateway-controller";
const EARLIER: &str = "2026-01-01T00:00:00Z";
const NOW: &str = "2026-12-01T12:00:00Z";

fn ctx() -> MergeContext<'static> {
    MergeContext {
        controller_name: OURS,
        namespace: "apps",
        now: NOW,
    }
}

fn condition(
    condition_type: &str,
    status: ConditionStatus,
    reason: &str,
    generation: i64,
) -> Condition {
    Condition::new(
        condition_type,
        status,
        reason,
        format!("{condition_type} {reason}"),
        generation,
    )
}

/// The JSON a condition has once written at `since`.
fn written(condition: &Condition, since: &str) -> Value {
    json!({
        "type": condition.condition_type,
        "status": condition.status.as_str(),
        "observedGeneration": condition.observed_generation,
        "lastTransitionTime": since,
        "reason": condition.reason,
        "message": condition.message,
    })
}

fn class(conditions: Vec<Condition>) -> Desired {
    Desired::GatewayClass { conditions }
}

fn accepted(generation: i64) -> Condition {
    condition("Accepted", ConditionStatus::True, "Accepted", generation)
}

#[test]
fn a_status_written_for_the_first_time_has_transition_time_now() {
    let merged = merge_status(None, &class(vec![accepted(1)]), &ctx()).expect("a write");
    assert_eq!(merged, json!({"conditions": [written(&accepted(1), NOW)]}));
    let merged =
        merge_status(Some(&Value::Null), &class(vec![accepted(1)]), &ctx()).expect("a write");
    assert_eq!(merged, json!({"conditions": [written(&accepted(1), NOW)]}));
}

#[test]
fn the_same_status_again_is_no_write_whatever_the_clock_says() {
    let current = json!({"conditions": [written(&accepted(2), EARLIER)]});
    assert_eq!(
        merge_status(Some(&current), &class(vec![accepted(2)]), &ctx()),
        None
    );
}

#[test]
fn transition_time_is_kept_while_the_status_holds_and_bumped_when_it_flips() {
    let current = json!({"conditions": [written(&accepted(1), EARLIER)]});

    // Same status, new generation and message: kept.
    let mut newer = accepted(2);
    newer.message = "reworded".into();
    let merged =
        merge_status(Some(&current), &class(vec![newer.clone()]), &ctx()).expect("a write");
    assert_eq!(merged, json!({"conditions": [written(&newer, EARLIER)]}));

    // Status flips: now.
    let refused = condition("Accepted", ConditionStatus::False, "InvalidParameters", 2);
    let merged =
        merge_status(Some(&current), &class(vec![refused.clone()]), &ctx()).expect("a write");
    assert_eq!(merged, json!({"conditions": [written(&refused, NOW)]}));

    // A condition without a transition time gets one.
    let current =
        json!({"conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted"}]});
    let merged = merge_status(Some(&current), &class(vec![accepted(1)]), &ctx()).expect("a write");
    assert_eq!(merged, json!({"conditions": [written(&accepted(1), NOW)]}));
}

#[test]
fn a_condition_with_a_newer_observed_generation_is_not_overwritten() {
    let theirs = condition("Accepted", ConditionStatus::False, "Invalid", 5);
    let current = json!({"conditions": [written(&theirs, EARLIER)]});
    // Ours was computed from generation 4: stale; nothing else to write.
    assert_eq!(
        merge_status(Some(&current), &class(vec![accepted(4)]), &ctx()),
        None
    );

    // Other types are still written beside it.
    let programmed = condition("Programmed", ConditionStatus::True, "Programmed", 4);
    let merged = merge_status(
        Some(&current),
        &class(vec![accepted(4), programmed.clone()]),
        &ctx(),
    )
    .expect("a write");
    assert_eq!(
        merged,
        json!({"conditions": [written(&theirs, EARLIER), written(&programmed, NOW)]})
    );

    // Same generation: ours wins.
    let merged = merge_status(Some(&current), &class(vec![accepted(5)]), &ctx()).expect("a write");
    assert_eq!(merged, json!({"conditions": [written(&accepted(5), NOW)]}));
}

#[test]
fn types_we_no_longer_set_are_dropped_unless_a_newer_writer_set_them() {
    let stale = condition(
        "PartiallyInvalid",
        ConditionStatus::True,
        "UnsupportedValue",
        2,
    );
    let current = json!({"conditions": [written(&accepted(2), EARLIER), written(&stale, EARLIER)]});
    let merged = merge_status(Some(&current), &class(vec![accepted(3)]), &ctx()).expect("a write");
    assert_eq!(
        merged,
        json!({"conditions": [written(&accepted(3), EARLIER)]})
    );

    let newer = condition(
        "SupportedVersion",
        ConditionStatus::True,
        "SupportedVersion",
        9,
    );
    let current = json!({"conditions": [written(&accepted(3), EARLIER), written(&newer, EARLIER)]});
    assert_eq!(
        merge_status(Some(&current), &class(vec![accepted(3)]), &ctx()),
        None
    );
}

#[test]
fn conditions_in_another_order_are_no_write_and_keep_that_order() {
    let programmed = condition("Programmed", ConditionStatus::True, "Programmed", 1);
    let current =
        json!({"conditions": [written(&programmed, EARLIER), written(&accepted(1), EARLIER)]});
    assert_eq!(
        merge_status(
            Some(&current),
            &class(vec![accepted(1), programmed]),
            &ctx()
        ),
        None
    );
}

#[test]
fn fields_we_do_not_own_are_kept() {
    let current = json!({
        "conditions": [written(&accepted(1), EARLIER)],
        "supportedFeatures": [{"name": "HTTPRoute"}],
    });
    assert_eq!(
        merge_status(Some(&current), &class(vec![accepted(1)]), &ctx()),
        None
    );
    let refused = condition("Accepted", ConditionStatus::False, "Unsupported", 1);
    let merged =
        merge_status(Some(&current), &class(vec![refused.clone()]), &ctx()).expect("a write");
    assert_eq!(merged["supportedFeatures"], json!([{"name": "HTTPRoute"}]));
}

#[test]
fn a_malformed_current_status_is_replaced() {
    for current in [
        json!("garbage"),
        json!({"conditions": "garbage"}),
        json!({"conditions": [1, null]}),
    ] {
        let merged =
            merge_status(Some(&current), &class(vec![accepted(1)]), &ctx()).expect("a write");
        assert_eq!(
            merged,
            json!({"conditions": [written(&accepted(1), NOW)]}),
            "{current}"
        );
    }
}

fn listener(name: &str, attached: i32, generation: i64) -> ListenerStatus {
    ListenerStatus {
        name: name.into(),
        supported_kinds: vec![RouteGroupKind {
            group: Some("gateway.networking.k8s.io".into()),
            kind: "HTTPRoute".into(),
        }],
        attached_routes: attached,
        conditions: vec![
            accepted(generation),
            condition(
                "Programmed",
                ConditionStatus::True,
                "Programmed",
                generation,
            ),
        ],
    }
}

fn gateway(listeners: Vec<ListenerStatus>, addresses: &[&str]) -> Desired {
    Desired::Gateway(GatewayStatus {
        conditions: vec![
            accepted(1),
            condition("Programmed", ConditionStatus::True, "Programmed", 1),
        ],
        addresses: addresses
            .iter()
            .map(|a| GatewayAddress {
                address_type: Some("IPAddress".into()),
                value: (*a).into(),
            })
            .collect(),
        listeners,
    })
}

#[test]
fn a_gateway_gets_conditions_addresses_and_listeners_and_the_same_again_is_no_write() {
    let desired = gateway(vec![listener("http", 2, 1)], &["10.0.0.1"]);
    let merged = merge_status(None, &desired, &ctx()).expect("a write");
    assert_eq!(
        merged["addresses"],
        json!([{"type": "IPAddress", "value": "10.0.0.1"}])
    );
    assert_eq!(merged["listeners"][0]["name"], json!("http"));
    assert_eq!(merged["listeners"][0]["attachedRoutes"], json!(2));
    assert_eq!(
        merged["listeners"][0]["supportedKinds"],
        json!([{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute"}])
    );
    assert_eq!(
        merged["listeners"][0]["conditions"][0]["lastTransitionTime"],
        json!(NOW)
    );
    assert_eq!(merged["conditions"].as_array().map(Vec::len), Some(2));

    let later = MergeContext {
        now: "2027-01-01T00:00:00Z",
        ..ctx()
    };
    assert_eq!(merge_status(Some(&merged), &desired, &later), None);
}

#[test]
fn listeners_are_merged_by_name_and_removed_ones_dropped() {
    let before = merge_status(
        None,
        &gateway(vec![listener("http", 1, 1), listener("https", 0, 1)], &[]),
        &MergeContext {
            now: EARLIER,
            ..ctx()
        },
    )
    .expect("a write");
    // https goes, http gets a route more, tcp comes.
    let desired = gateway(vec![listener("tcp", 0, 1), listener("http", 2, 1)], &[]);
    let merged = merge_status(Some(&before), &desired, &ctx()).expect("a write");
    let listeners = merged["listeners"].as_array().expect("listeners");
    let names: Vec<&str> = listeners
        .iter()
        .filter_map(|l| l["name"].as_str())
        .collect();
    assert_eq!(names, ["tcp", "http"]);
    assert_eq!(listeners[1]["attachedRoutes"], json!(2));
    assert_eq!(
        listeners[1]["conditions"][0]["lastTransitionTime"],
        json!(EARLIER),
        "http's conditions did not change"
    );
    assert_eq!(
        listeners[0]["conditions"][0]["lastTransitionTime"],
        json!(NOW)
    );
    assert_eq!(
        merged["conditions"][0]["lastTransitionTime"],
        json!(EARLIER)
    );
}

#[test]
fn gateway_addresses_are_capped_at_sixteen_and_absent_when_none() {
    let many: Vec<String> = (0..20).map(|i| format!("10.0.0.{i}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let merged =
        merge_status(None, &gateway(vec![listener("http", 0, 1)], &many), &ctx()).expect("a write");
    assert_eq!(merged["addresses"].as_array().map(Vec::len), Some(16));

    let current = json!({"addresses": [{"type": "IPAddress", "value": "10.0.0.9"}]});
    let merged = merge_status(
        Some(&current),
        &gateway(vec![listener("http", 0, 1)], &[]),
        &ctx(),
    )
    .expect("a write");
    assert_eq!(merged.get("addresses"), None);
}

fn parent_ref(name: &str) -> ParentRef {
    ParentRef {
        name: name.into(),
        ..ParentRef::default()
    }
}

fn parent(name: &str, accepted_status: ConditionStatus, generation: i64) -> RouteParentStatus {
    RouteParentStatus {
        parent_ref: parent_ref(name),
        conditions: vec![
            condition("Accepted", accepted_status, "Accepted", generation),
            condition(
                "ResolvedRefs",
                ConditionStatus::True,
                "ResolvedRefs",
                generation,
            ),
        ],
    }
}

fn route(parents: Vec<RouteParentStatus>) -> Desired {
    Desired::Route { parents }
}

fn theirs(name: &str) -> Value {
    json!({
        "parentRef": {"name": name},
        "controllerName": THEIRS,
        "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted", "message": "",
                        "lastTransitionTime": EARLIER, "observedGeneration": 1}],
    })
}

fn ours_written(parent: &RouteParentStatus, since: &str) -> Value {
    json!({
        "parentRef": parent.parent_ref,
        "controllerName": OURS,
        "conditions": parent.conditions.iter().map(|c| written(c, since)).collect::<Vec<_>>(),
    })
}

#[test]
fn a_route_gets_our_parent_entries_beside_other_controllers_entries_in_place() {
    let current = json!({"parents": [theirs("istio-gw"), theirs("other-gw")]});
    let desired = route(vec![parent("gw", ConditionStatus::True, 1)]);
    let merged = merge_status(Some(&current), &desired, &ctx()).expect("a write");
    assert_eq!(
        merged,
        json!({"parents": [theirs("istio-gw"), theirs("other-gw"), ours_written(&parent("gw", ConditionStatus::True, 1), NOW)]})
    );
    assert_eq!(merge_status(Some(&merged), &desired, &ctx()), None);
}

#[test]
fn a_route_without_status_gets_a_parents_list() {
    let desired = route(vec![parent("gw", ConditionStatus::False, 3)]);
    let merged = merge_status(None, &desired, &ctx()).expect("a write");
    assert_eq!(
        merged,
        json!({"parents": [ours_written(&parent("gw", ConditionStatus::False, 3), NOW)]})
    );
}

#[test]
fn our_entries_are_matched_by_parent_ref_with_the_specs_defaults() {
    // Written earlier with group, kind and namespace spelled out.
    let spelled_out = json!({
        "parentRef": {"group": "gateway.networking.k8s.io", "kind": "Gateway", "namespace": "apps", "name": "gw"},
        "controllerName": OURS,
        "conditions": parent("gw", ConditionStatus::True, 1).conditions.iter().map(|c| written(c, EARLIER)).collect::<Vec<_>>(),
    });
    let current = json!({"parents": [spelled_out]});
    let desired = route(vec![parent("gw", ConditionStatus::True, 2)]);
    let merged = merge_status(Some(&current), &desired, &ctx()).expect("a write");
    assert_eq!(
        merged,
        json!({"parents": [ours_written(&parent("gw", ConditionStatus::True, 2), EARLIER)]})
    );

    // Another section of the same Gateway is another parent.
    let mut section = parent("gw", ConditionStatus::True, 2);
    section.parent_ref.section_name = Some("https".into());
    let merged =
        merge_status(Some(&merged), &route(vec![section.clone()]), &ctx()).expect("a write");
    assert_eq!(merged, json!({"parents": [ours_written(&section, NOW)]}));
}

#[test]
fn our_entries_for_parents_we_left_are_removed_and_others_kept() {
    let current = json!({"parents": [
        ours_written(&parent("old-gw", ConditionStatus::True, 1), EARLIER),
        theirs("istio-gw"),
    ]});
    let merged = merge_status(Some(&current), &route(vec![]), &ctx()).expect("a write");
    assert_eq!(merged, json!({"parents": [theirs("istio-gw")]}));
}

#[test]
fn nothing_of_ours_to_write_or_remove_is_no_write() {
    assert_eq!(merge_status(None, &route(vec![]), &ctx()), None);
    let current = json!({"parents": [theirs("istio-gw")]});
    assert_eq!(merge_status(Some(&current), &route(vec![]), &ctx()), None);
}

#[test]
fn a_route_has_at_most_32_parents_and_others_entries_are_never_cut() {
    let others: Vec<Value> = (0..31).map(|i| theirs(&format!("istio-{i}"))).collect();
    let current = json!({"parents": others});
    let desired = route(vec![
        parent("a", ConditionStatus::True, 1),
        parent("b", ConditionStatus::True, 1),
    ]);
    let merged = merge_status(Some(&current), &desired, &ctx()).expect("a write");
    let parents = merged["parents"].as_array().expect("parents");
    assert_eq!(parents.len(), 32);
    assert_eq!(parents[..31], others[..]);
    assert_eq!(parents[31]["parentRef"]["name"], json!("a"));

    let full: Vec<Value> = (0..32).map(|i| theirs(&format!("istio-{i}"))).collect();
    let current = json!({"parents": full});
    // No room left for ours: nothing to write.
    assert_eq!(merge_status(Some(&current), &desired, &ctx()), None);
}

#[test]
fn a_parent_condition_with_a_newer_generation_is_kept() {
    let newer = parent("gw", ConditionStatus::False, 7);
    let current = json!({"parents": [ours_written(&newer, EARLIER)]});
    assert_eq!(
        merge_status(
            Some(&current),
            &route(vec![parent("gw", ConditionStatus::True, 6)]),
            &ctx()
        ),
        None
    );
}

#[test]
fn a_policy_gets_our_ancestor_entries_beside_others_and_a_bump_rewrites_them() {
    let theirs_ancestor = json!({
        "ancestorRef": {"name": "istio-gw"},
        "controllerName": THEIRS,
        "conditions": [],
    });
    let current = json!({"ancestors": [theirs_ancestor]});
    let desired = |generation| Desired::Policy {
        ancestors: vec![parent("gw", ConditionStatus::True, generation)],
    };
    let merged = merge_status(Some(&current), &desired(1), &ctx()).expect("a write");
    let ours = |generation| {
        let p = parent("gw", ConditionStatus::True, generation);
        json!({
            "ancestorRef": p.parent_ref,
            "controllerName": OURS,
            "conditions": p.conditions.iter().map(|c| written(c, NOW)).collect::<Vec<_>>(),
        })
    };
    assert_eq!(merged, json!({"ancestors": [theirs_ancestor, ours(1)]}));
    assert_eq!(merge_status(Some(&merged), &desired(1), &ctx()), None);
    // BackendTLSPolicyObservedGenerationBump: a new generation is written.
    let bumped = merge_status(Some(&merged), &desired(2), &ctx()).expect("a write");
    assert_eq!(bumped, json!({"ancestors": [theirs_ancestor, ours(2)]}));
}
