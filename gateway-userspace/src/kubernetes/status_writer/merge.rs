//! Pure merges of a desired status into an object's current `status` JSON, as the Gateway
//! API asks implementations to write it: conditions merged by type, lastTransitionTime
//! kept while a condition's status holds, a condition with a newer observedGeneration
//! than ours left alone, other controllers' route parents preserved, and `None` when the
//! result equals what the object already carries (so nothing is written).

use serde_json::{Map, Value, json};

use super::desired::{
    Condition, Desired, GatewayStatus, MAX_GATEWAY_ADDRESSES, MAX_POLICY_ANCESTORS,
    MAX_ROUTE_PARENTS, ParentRef, RouteParentStatus,
};

/// What a merge needs besides the two statuses.
#[derive(Clone, Copy, Debug)]
pub struct MergeContext<'a> {
    pub controller_name: &'a str,
    /// The object's namespace: a route's parentRef without a namespace means this one.
    pub namespace: &'a str,
    /// RFC 3339 UTC, seconds: the lastTransitionTime of conditions whose status changes.
    pub now: &'a str,
}

/// The status to write, or None when the object's `current` status already is it.
pub fn merge_status(
    current: Option<&Value>,
    desired: &Desired,
    ctx: &MergeContext<'_>,
) -> Option<Value> {
    let current = current.filter(|status| !status.is_null());
    let merged = match desired {
        Desired::GatewayClass { conditions } => {
            let mut status = base(current);
            let merged = merge_conditions(status.get("conditions"), conditions, ctx.now);
            status.insert("conditions".into(), merged);
            Value::Object(status)
        }
        Desired::Gateway(gateway) => merge_gateway(current, gateway, ctx.now),
        Desired::Route { parents } => merge_route(current, parents, ctx, &ROUTE_PARENTS)?,
        Desired::Policy { ancestors } => merge_route(current, ancestors, ctx, &POLICY_ANCESTORS)?,
    };
    (Some(&merged) != current).then_some(merged)
}

/// The current status object, keeping fields we do not own (e.g. a GatewayClass's
/// `supportedFeatures`); a status that is not an object is replaced.
fn base(current: Option<&Value>) -> Map<String, Value> {
    current
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default()
}

/// Conditions by type: types we set are updated where they stand (so an order someone
/// else chose does not cause a write), new types appended, and types we no longer set
/// dropped unless a writer with a newer observedGeneration put them there.
pub(super) fn merge_conditions(
    existing: Option<&Value>,
    desired: &[Condition],
    now: &str,
) -> Value {
    let existing = existing
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let our_generation = desired.iter().map(|c| c.observed_generation).max();
    let mut placed = vec![false; desired.len()];
    let mut merged = Vec::with_capacity(desired.len());
    for old in existing {
        let old_type = old.get("type").and_then(Value::as_str);
        match desired
            .iter()
            .position(|d| Some(d.condition_type.as_str()) == old_type)
        {
            // A second condition of the same type is malformed: the first one stands.
            Some(i) if placed[i] => {}
            Some(i) => {
                placed[i] = true;
                merged.push(merge_condition(old, &desired[i], now));
            }
            None => {
                if let (Some(theirs), Some(ours)) = (generation(old), our_generation)
                    && theirs > ours
                {
                    merged.push(old.clone());
                }
            }
        }
    }
    for (condition, placed) in desired.iter().zip(placed) {
        if !placed {
            merged.push(condition_json(condition, now));
        }
    }
    Value::Array(merged)
}

fn merge_condition(old: &Value, desired: &Condition, now: &str) -> Value {
    if generation(old).is_some_and(|theirs| theirs > desired.observed_generation) {
        return old.clone();
    }
    let same_status = old.get("status").and_then(Value::as_str) == Some(desired.status.as_str());
    let since = old
        .get("lastTransitionTime")
        .and_then(Value::as_str)
        .filter(|_| same_status)
        .unwrap_or(now);
    condition_json(desired, since)
}

fn generation(condition: &Value) -> Option<i64> {
    condition.get("observedGeneration").and_then(Value::as_i64)
}

fn condition_json(condition: &Condition, last_transition_time: &str) -> Value {
    json!({
        "type": condition.condition_type,
        "status": condition.status.as_str(),
        "observedGeneration": condition.observed_generation,
        "lastTransitionTime": last_transition_time,
        "reason": condition.reason,
        "message": condition.message,
    })
}

fn merge_gateway(current: Option<&Value>, desired: &GatewayStatus, now: &str) -> Value {
    let mut status = base(current);
    let conditions = merge_conditions(status.get("conditions"), &desired.conditions, now);
    status.insert("conditions".into(), conditions);
    if desired.addresses.is_empty() {
        status.remove("addresses");
    } else {
        let addresses = &desired.addresses[..desired.addresses.len().min(MAX_GATEWAY_ADDRESSES)];
        status.insert("addresses".into(), json!(addresses));
    }
    let old_listeners = status
        .get("listeners")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let listeners: Vec<Value> = desired
        .listeners
        .iter()
        .map(|listener| {
            let old = old_listeners.iter().find(|old| {
                old.get("name").and_then(Value::as_str) == Some(listener.name.as_str())
            });
            let mut entry = old.and_then(Value::as_object).cloned().unwrap_or_default();
            let conditions = merge_conditions(entry.get("conditions"), &listener.conditions, now);
            entry.insert("name".into(), json!(listener.name));
            entry.insert("supportedKinds".into(), json!(listener.supported_kinds));
            entry.insert("attachedRoutes".into(), json!(listener.attached_routes));
            entry.insert("conditions".into(), conditions);
            Value::Object(entry)
        })
        .collect();
    if listeners.is_empty() {
        status.remove("listeners");
    } else {
        status.insert("listeners".into(), Value::Array(listeners));
    }
    Value::Object(status)
}

/// Where a list of per-parent entries lives: a route's `status.parents[].parentRef`, a
/// policy's `status.ancestors[].ancestorRef`, and the spec's cap on it.
struct ParentList {
    list: &'static str,
    reference: &'static str,
    max: usize,
}

const ROUTE_PARENTS: ParentList = ParentList {
    list: "parents",
    reference: "parentRef",
    max: MAX_ROUTE_PARENTS,
};

const POLICY_ANCESTORS: ParentList = ParentList {
    list: "ancestors",
    reference: "ancestorRef",
    max: MAX_POLICY_ANCESTORS,
};

/// Our entries of `status.parents` (or a policy's `status.ancestors`) replaced by the desired ones (matched by parentRef,
/// so their conditions keep their transition times), others' entries untouched and in
/// place. Ours are cut to what fits in the spec's 32 beside the others'. None when we
/// have nothing to write and nothing of ours to remove.
fn merge_route(
    current: Option<&Value>,
    desired: &[RouteParentStatus],
    ctx: &MergeContext<'_>,
    at: &ParentList,
) -> Option<Value> {
    let mut status = base(current);
    let existing = status
        .get(at.list)
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let is_ours = |entry: &Value| {
        entry.get("controllerName").and_then(Value::as_str) == Some(ctx.controller_name)
    };
    if desired.is_empty() && !existing.iter().any(is_ours) {
        return None;
    }
    let room = at
        .max
        .saturating_sub(existing.iter().filter(|e| !is_ours(e)).count());
    let mut placed = vec![false; desired.len()];
    let mut parents = Vec::with_capacity(existing.len() + desired.len());
    let mut ours = 0;
    for old in &existing {
        if !is_ours(old) {
            parents.push(old.clone());
            continue;
        }
        let old_ref = old
            .get(at.reference)
            .and_then(|r| serde_json::from_value::<ParentRef>(r.clone()).ok());
        let matched = old_ref.and_then(|old_ref| {
            (0..desired.len())
                .find(|&i| !placed[i] && desired[i].parent_ref.same_parent(&old_ref, ctx.namespace))
        });
        // An entry of ours for a parent we no longer attach to is dropped.
        if let Some(i) = matched {
            placed[i] = true;
            if ours < room {
                parents.push(parent_json(&desired[i], old.get("conditions"), ctx, at));
                ours += 1;
            }
        }
    }
    for (parent, placed) in desired.iter().zip(placed) {
        if !placed && ours < room {
            parents.push(parent_json(parent, None, ctx, at));
            ours += 1;
        }
    }
    status.insert(at.list.into(), Value::Array(parents));
    Some(Value::Object(status))
}

fn parent_json(
    parent: &RouteParentStatus,
    old_conditions: Option<&Value>,
    ctx: &MergeContext<'_>,
    at: &ParentList,
) -> Value {
    let mut entry = Map::new();
    entry.insert(at.reference.into(), json!(parent.parent_ref));
    entry.insert("controllerName".into(), json!(ctx.controller_name));
    entry.insert(
        "conditions".into(),
        merge_conditions(old_conditions, &parent.conditions, ctx.now),
    );
    Value::Object(entry)
}

#[cfg(test)]
#[path = "merge_tests.rs"]
mod tests;
