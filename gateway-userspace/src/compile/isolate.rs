//! Per-object isolation: one broken object must not freeze everyone else's changes.
//!
//! An error attributed to one object (`Diagnostic::object`: a field that does not parse,
//! a regex that does not compile, a listener that repeats a name) drops that object, and
//! the configuration is compiled again without it; what depended only on it (a route bound
//! to a dropped Gateway, a listener of a dropped Gateway) falls away in that recompile,
//! with the usual warnings. The rest is served, and the dropped objects are reported: a
//! warning each in the log, `gateway_config_objects_dropped{group,kind}`, and the report
//! in `/config_dump`.
//!
//! A dropped object that kept traffic safe leaves a stand-in that keeps doing so: an
//! AuthorizationPolicy that does not parse denies (`AuthorizationPolicy::fail_closed`);
//! a BackendTLSPolicy, or a DestinationRule that asked for TLS, whether it does not parse
//! or has an error on another field (a duration, say), refuses its Services'
//! connections (503 `UF`) rather than let them go in plaintext (`config::stand_in`).
//!
//! Errors that cannot be attributed to one object refuse the whole reload, and the last
//! good configuration keeps serving: an unreadable path, a document that is not YAML, a
//! document without `apiVersion`, `kind` or `metadata.name`. We cannot know what such a
//! document held, so dropping it could silently take live routes away.

use std::{collections::BTreeMap, sync::Arc};

use tracing::warn;

use super::{Identity, RouteMemo, compile_reusing, report::DroppedObject};
use crate::{
    config::{Diagnostic, Diagnostics, Kind, ObjectRef, Resources, Sourced, stand_in},
    snapshot::Snapshot,
    tls::TlsState,
};

/// Each round drops at least one object; a chain of drops this long means something is
/// wrong with attribution, and refusing is the safe answer.
const MAX_ROUNDS: usize = 8;

/// A compile that served what it could.
pub struct Isolated {
    /// Its report lists `dropped` too.
    pub snapshot: Snapshot,
    /// The warnings of the compile that was kept; the errors are in `dropped`.
    pub diagnostics: Diagnostics,
    pub dropped: Vec<DroppedObject>,
    /// What the next compile may reuse (`compile_reusing`).
    pub memo: RouteMemo,
}

/// Compiles `resources` (loaded with `load_diagnostics`), dropping the objects that have
/// errors. Refuses, with every diagnostic, when an error names no object.
pub fn compile_isolating(
    resources: &Resources,
    load_diagnostics: Diagnostics,
    identity: &Identity,
    tls: &TlsState,
    previous: Option<(&Snapshot, &RouteMemo)>,
) -> Result<Isolated, Diagnostics> {
    if load_diagnostics.errors().any(|d| d.object.is_none()) {
        return Err(load_diagnostics);
    }
    let mut dropped: BTreeMap<ObjectRef, Vec<Diagnostic>> = BTreeMap::new();
    for d in load_diagnostics.errors() {
        if let Some(object) = &d.object {
            dropped.entry(object.clone()).or_default().push(d.clone());
        }
    }
    let mut kept = Diagnostics(load_diagnostics.warnings().cloned().collect());
    let mut remaining: Option<Resources> = None;
    for _ in 0..MAX_ROUNDS {
        let current = remaining.as_ref().unwrap_or(resources);
        let (mut snapshot, diagnostics, memo) = compile_reusing(current, identity, tls, previous);
        if diagnostics.errors().any(|d| d.object.is_none()) {
            let mut all = load_diagnostics;
            all.extend(diagnostics);
            return Err(all);
        }
        let mut new = false;
        for d in diagnostics.errors() {
            if let Some(object) = &d.object {
                new |= !dropped.contains_key(object);
                dropped.entry(object.clone()).or_default().push(d.clone());
            }
        }
        if !diagnostics.has_errors() {
            kept.extend(diagnostics);
            let dropped: Vec<DroppedObject> = dropped
                .into_iter()
                .map(|(object, errors)| DroppedObject { object, errors })
                .collect();
            let report = std::sync::Arc::make_mut(&mut snapshot.report);
            report.dropped = dropped.clone();
            super::status::add_dropped(report, resources, identity);
            return Ok(Isolated {
                snapshot,
                diagnostics: kept,
                dropped,
                memo,
            });
        }
        if !new {
            // Errors on objects already left out: attribution went wrong somewhere.
            break;
        }
        remaining = Some(without(resources, &dropped));
    }
    let mut all = load_diagnostics;
    all.extend(Diagnostics(dropped.into_values().flatten().collect()));
    Err(all)
}

/// Says what was dropped, at warn: one line per object, with the reason.
pub fn log_dropped(dropped: &[DroppedObject]) {
    for d in dropped {
        let at = d.errors.first().and_then(|e| e.location.as_ref());
        warn!(
            object = %d.object,
            group = d.object.group,
            location = at.map(ToString::to_string),
            reason = d.reason(),
            "object dropped from the configuration: it has errors; everything else is served"
        );
    }
}

/// `resources` without the `dropped` objects (with their errors), but for the stand-ins
/// that fail closed in their place: AuthorizationPolicies that do not parse
/// (`AuthorizationPolicy::fail_closed`), and upstream TLS settings: a BackendTLSPolicy,
/// or a DestinationRule asking for TLS, dropped for any error still refuses its
/// connections rather than let them go in plaintext (`config::stand_in`). Destructured
/// without `..`: a new kind must be isolated too.
pub fn without(resources: &Resources, dropped: &BTreeMap<ObjectRef, Vec<Diagnostic>>) -> Resources {
    let Resources {
        gateways,
        virtual_services,
        services,
        endpoint_slices,
        endpoints,
        destination_rules,
        service_entries,
        gateway_classes,
        api_gateways,
        http_routes,
        grpc_routes,
        tls_routes,
        tcp_routes,
        reference_grants,
        backend_tls_policies,
        secrets,
        config_maps,
        namespaces,
        authorization_policies,
        skipped,
        documents,
    } = resources;
    Resources {
        gateways: keep(gateways, dropped),
        virtual_services: keep(virtual_services, dropped),
        services: keep(services, dropped),
        endpoint_slices: keep(endpoint_slices, dropped),
        endpoints: keep(endpoints, dropped),
        destination_rules: keep_failing_closed(
            destination_rules,
            dropped,
            |r| r.fail_closed.is_some(),
            stand_in::destination_rule_from,
        ),
        service_entries: keep(service_entries, dropped),
        gateway_classes: keep(gateway_classes, dropped),
        api_gateways: keep(api_gateways, dropped),
        http_routes: keep(http_routes, dropped),
        grpc_routes: keep(grpc_routes, dropped),
        tls_routes: keep(tls_routes, dropped),
        tcp_routes: keep(tcp_routes, dropped),
        reference_grants: keep(reference_grants, dropped),
        backend_tls_policies: keep_failing_closed(
            backend_tls_policies,
            dropped,
            |p| p.spec.fail_closed.is_some(),
            |p, why| Some(stand_in::backend_tls_policy_from(p, why)),
        ),
        secrets: keep(secrets, dropped),
        config_maps: keep(config_maps, dropped),
        namespaces: keep(namespaces, dropped),
        authorization_policies: keep_failing_closed(
            authorization_policies,
            dropped,
            |p| p.fail_closed,
            |_, _| None,
        ),
        skipped: skipped.clone(),
        documents: documents.clone(),
    }
}

/// Objects as `keep` keeps them, but for the stand-ins of dropped ones: those the load
/// made in their place (`is_stand_in`: kept as they are), and those `stand_in` makes of
/// a dropped object, told why it was dropped.
fn keep_failing_closed<T: Kind + Clone>(
    list: &[Sourced<T>],
    dropped: &BTreeMap<ObjectRef, Vec<Diagnostic>>,
    is_stand_in: impl Fn(&T) -> bool,
    stand_in: impl Fn(&T, &str) -> Option<T>,
) -> Vec<Sourced<T>> {
    list.iter()
        .filter_map(|s| match dropped.get(&s.resource.object_ref()) {
            None => Some(s.clone()),
            Some(_) if is_stand_in(&s.resource) => Some(s.clone()),
            Some(errors) => {
                let reason = DroppedObject {
                    object: s.resource.object_ref(),
                    errors: errors.iter().take(1).cloned().collect(),
                };
                let why = format!("has errors ({})", reason.reason());
                stand_in(&s.resource, &why).map(|r| Sourced {
                    resource: Arc::new(r),
                    location: s.location.clone(),
                })
            }
        })
        .collect()
}

fn keep<T: Kind + Clone>(
    list: &[Sourced<T>],
    dropped: &BTreeMap<ObjectRef, Vec<Diagnostic>>,
) -> Vec<Sourced<T>> {
    let this_kind = |o: &ObjectRef| o.group == T::GROUP && o.kind == T::KIND;
    if !dropped.keys().any(this_kind) {
        return list.to_vec();
    }
    list.iter()
        .filter(|s| !dropped.contains_key(&s.resource.object_ref()))
        .cloned()
        .collect()
}

#[cfg(test)]
#[path = "isolate_tests.rs"]
mod tests;
