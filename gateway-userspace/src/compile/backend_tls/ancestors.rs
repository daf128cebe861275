//! BackendTLSPolicy status: an entry in `status.ancestors` for each of our Gateways
//! that routes traffic to a Service the policy targets (an HTTPRoute, GRPCRoute, TLSRoute
//! or TCPRoute with that Gateway as parent and the Service as backend), with `Accepted` and
//! `ResolvedRefs` as the spec words them.

use std::collections::BTreeSet;

use super::{conflicting, judge, names_service};
use crate::{
    compile::{
        Identity,
        report::{Condition, ParentRef, PolicyStatus, RouteParentStatus},
        status::{is_our_class, reason},
    },
    config::{
        Kind, Resources,
        object_ref::GATEWAY_API_GROUP,
        resources::gateway_api::{BackendRef, BackendTlsPolicy, ParentReference},
    },
};

/// The status of every BackendTLSPolicy that has one of our Gateways as ancestor.
pub(in crate::compile) fn policy_statuses(
    resources: &Resources,
    identity: &Identity,
) -> Vec<PolicyStatus> {
    let mut out = Vec::new();
    for sourced in &resources.backend_tls_policies {
        let policy = &sourced.resource;
        let ancestors = ancestors(resources, identity, policy);
        if ancestors.is_empty() {
            continue;
        }
        let judgement = judge(resources, policy);
        let accepted = match (conflicting(resources, policy), &judgement.accepted) {
            (Some(winner), _) => Condition::new(
                "Accepted",
                false,
                reason::CONFLICTED,
                format!(
                    "BackendTLSPolicy {}/{} targets the same Service and takes precedence",
                    winner.resource.metadata.namespace(),
                    winner.resource.metadata.name
                ),
            ),
            (None, Err((why, message))) => Condition::new("Accepted", false, why, message.clone()),
            (None, Ok(())) => Condition::new("Accepted", true, reason::ACCEPTED, ""),
        };
        // A stand-in (`config::stand_in`) read no references: nothing to say of them.
        let resolved = match &judgement.resolved {
            _ if policy.spec.fail_closed.is_some() => None,
            Err((why, message)) => {
                Some(Condition::new("ResolvedRefs", false, why, message.clone()))
            }
            Ok(()) => Some(Condition::new(
                "ResolvedRefs",
                true,
                reason::RESOLVED_REFS,
                "",
            )),
        };
        out.push(PolicyStatus {
            object: policy.object_ref(),
            generation: policy.metadata.generation,
            ancestors: ancestors
                .into_iter()
                .map(|(namespace, name)| RouteParentStatus {
                    parent_ref: ParentRef {
                        group: GATEWAY_API_GROUP.to_owned(),
                        kind: "Gateway".to_owned(),
                        namespace,
                        name,
                        section_name: None,
                        port: None,
                    },
                    conditions: [Some(accepted.clone()), resolved.clone()]
                        .into_iter()
                        .flatten()
                        .map(|mut c| {
                            c.observed_generation = policy.metadata.generation;
                            c
                        })
                        .collect(),
                })
                .collect(),
        });
    }
    out.sort_by(|a, b| a.object.cmp(&b.object));
    out
}

/// Our Gateways (namespace, name) parent to a route with a backend the policy targets.
fn ancestors(
    resources: &Resources,
    identity: &Identity,
    policy: &BackendTlsPolicy,
) -> BTreeSet<(String, String)> {
    let namespace = policy.metadata.namespace();
    let targeted = |route_namespace: &str, b: &BackendRef| {
        b.group.as_deref().unwrap_or_default().is_empty()
            && b.kind.as_deref().unwrap_or("Service") == "Service"
            && b.namespace.as_deref().unwrap_or(route_namespace) == namespace
            && policy
                .spec
                .target_refs
                .iter()
                .any(|t| names_service(t, &b.name))
    };
    let mut found = BTreeSet::new();
    let mut add = |route_namespace: &str, parents: &[ParentReference]| {
        for parent in parents {
            let group = parent.group.as_deref().unwrap_or(GATEWAY_API_GROUP);
            let kind = parent.kind.as_deref().unwrap_or("Gateway");
            if group != GATEWAY_API_GROUP || kind != "Gateway" {
                continue;
            }
            let gw_namespace = parent.namespace.as_deref().unwrap_or(route_namespace);
            let ours = resources.api_gateways.iter().any(|g| {
                g.resource.metadata.name == parent.name
                    && g.resource.metadata.namespace() == gw_namespace
                    && is_our_class(resources, identity, &g.resource)
            });
            if ours {
                found.insert((gw_namespace.to_owned(), parent.name.clone()));
            }
        }
    };
    for (route_namespace, parents, backends) in routes(resources) {
        if backends.into_iter().any(|b| targeted(route_namespace, b)) {
            add(route_namespace, parents);
        }
    }
    found
}

/// Every route of every kind, as its namespace, parentRefs and backendRefs.
fn routes(
    resources: &Resources,
) -> impl Iterator<Item = (&str, &[ParentReference], Vec<&BackendRef>)> {
    let http = resources.http_routes.iter().map(|r| {
        let (meta, spec) = (&r.resource.metadata, &r.resource.spec);
        let backends = spec.rules.iter().flat_map(|rule| &rule.backend_refs);
        (
            meta.namespace(),
            &spec.parent_refs[..],
            backends.map(|b| &b.backend).collect(),
        )
    });
    let grpc = resources.grpc_routes.iter().map(|r| {
        let (meta, spec) = (&r.resource.metadata, &r.resource.spec);
        let backends = spec.rules.iter().flat_map(|rule| &rule.backend_refs);
        (
            meta.namespace(),
            &spec.parent_refs[..],
            backends.map(|b| &b.backend).collect(),
        )
    });
    let tls = resources.tls_routes.iter().map(|r| {
        let (meta, spec) = (&r.resource.metadata, &r.resource.spec);
        let backends = spec.rules.iter().flat_map(|rule| &rule.backend_refs);
        (meta.namespace(), &spec.parent_refs[..], backends.collect())
    });
    let tcp = resources.tcp_routes.iter().map(|r| {
        let (meta, spec) = (&r.resource.metadata, &r.resource.spec);
        let backends = spec.rules.iter().flat_map(|rule| &rule.backend_refs);
        (meta.namespace(), &spec.parent_refs[..], backends.collect())
    });
    http.chain(grpc).chain(tls).chain(tcp)
}
