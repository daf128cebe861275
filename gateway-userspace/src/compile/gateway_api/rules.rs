//! A route rule's action: its filters applied, its backends resolved to clusters.

use std::sync::Arc;

use super::filters::{Filter, compile_filter, merge_ops};
use super::reference_grant::Reference;
use super::{AnyRoute, DEFAULT_BACKEND_WEIGHT, INVALID_RULE_STATUS, ISTIO_GROUP, RuleSpec};
use crate::compile::{
    Built, CLUSTER_DOMAIN,
    clusters::At,
    index::Index,
    sink::Sink,
    status::{Finding, reason},
};
use crate::{
    config::{
        Diagnostic, ObjectRef,
        resources::{Destination, PortSelector, gateway_api::BackendRef},
    },
    snapshot::{
        Cluster, DirectResponse, Forward, HeaderPolicy, Mirror, RouteAction, WeightedCluster,
    },
};

/// A rule's filters and backends → what a matching request gets.
pub(super) fn rule_action<'a>(
    ix: &Index<'a>,
    sink: &mut Sink,
    built: &mut Built,
    route: &AnyRoute<'_>,
    resource: &ObjectRef,
    field: &str,
    rule: RuleSpec<'_>,
) -> RouteAction {
    let RuleSpec {
        filters,
        backend_refs,
        timeouts,
        retry,
    } = rule;
    let location = route.location.cloned();
    let invalid = |sink: &mut Sink, sub: String, message: String| {
        sink.push(
            Diagnostic::warning(format!(
                "{message}; requests matching this rule get {INVALID_RULE_STATUS}"
            ))
            .at(location.clone())
            .object(resource)
            .field(format!("{field}.{sub}")),
        );
        RouteAction::DirectResponse(Box::new(DirectResponse {
            status: INVALID_RULE_STATUS,
            body: bytes::Bytes::new(),
            headers: HeaderPolicy::default(),
            cors: None,
        }))
    };
    let mut forward = Forward::default();
    let mut redirect = None;
    for (f_index, filter) in filters.iter().enumerate() {
        let f_field = format!("filters[{f_index}]");
        match compile_filter(filter) {
            Ok(Filter::Headers { request, ops }) => {
                let target = if request {
                    &mut forward.headers.request
                } else {
                    &mut forward.headers.response
                };
                merge_ops(target, ops);
            }
            Ok(Filter::Redirect(r)) => redirect = Some(r),
            Ok(Filter::Rewrite(r)) => forward.rewrite = Some(r),
            Ok(Filter::Cors(cors)) => forward.cors = Some(cors),
            Ok(Filter::Mirror {
                backend,
                percentage,
            }) => {
                match backend_cluster(
                    ix,
                    sink,
                    built,
                    route,
                    resource,
                    &format!("{field}.{f_field}.requestMirror.backendRef"),
                    &backend,
                ) {
                    Ok(cluster) => forward.mirrors.push(Mirror {
                        cluster,
                        percentage,
                    }),
                    Err((why, message)) => {
                        sink.status
                            .unresolved(&route.object_ref(), why, message.clone());
                        sink.push(
                            Diagnostic::warning(format!("{message}; not mirrored"))
                                .at(location.clone())
                                .object(resource)
                                .field(format!("{field}.{f_field}.requestMirror.backendRef")),
                        );
                    }
                }
            }
            Err(message) => return invalid(sink, f_field, message),
        }
    }
    if let Some(mut redirect) = redirect {
        redirect.headers = forward.headers;
        return RouteAction::Redirect(Box::new(redirect));
    }
    let duration = |sink: &mut Sink, value: Option<&str>, sub: &str| {
        let value = value?;
        match crate::compile::routes::parse_duration(value) {
            // 0s disables the timeout.
            Ok(t) => (!t.is_zero()).then_some(t),
            Err(e) => {
                sink.push(
                    Diagnostic::error(format!("{sub} {value:?}: {e}"))
                        .at(location.clone())
                        .object(resource)
                        .field(format!("{field}.{sub}")),
                );
                None
            }
        }
    };
    if let Some(timeouts) = timeouts {
        // `request` bounds the whole exchange, retries included; `backendRequest`
        // each try towards a backend.
        forward.timeout = duration(sink, timeouts.request.as_deref(), "timeouts.request");
        forward.retry.per_try_timeout = duration(
            sink,
            timeouts.backend_request.as_deref(),
            "timeouts.backendRequest",
        );
    }
    if let Some(retry) = retry {
        // As Istio converts it: the codes replace the default ones (a code not
        // listed is not retried, as HTTPRouteRetry checks) beside the default
        // connection conditions, attempts replace the default count, and a back-off
        // sets the first interval.
        if let Some(attempts) = retry.attempts {
            forward.retry.attempts = attempts;
        }
        // The spec: with a retry stanza, connection errors (disconnect, reset,
        // timeout) SHOULD be retried too, which Envoy's `reset` condition covers, an
        // expired backendRequest timeout included (HTTPRouteRetryConnectionError,
        // HTTPRouteRetryWithTimeouts).
        forward.retry.retry_on.reset = true;
        if !retry.codes.is_empty() {
            forward.retry.retry_on.status_codes = retry
                .codes
                .iter()
                .copied()
                .filter(|c| (500..600).contains(c))
                .collect();
        }
        if let Some(code) = retry.codes.iter().find(|c| !(500..600).contains(*c)) {
            sink.push(
                Diagnostic::warning(format!(
                    "retry code {code} is not retried: the spec allows 500-599"
                ))
                .at(location.clone())
                .object(resource)
                .field(format!("{field}.retry.codes")),
            );
        }
        forward.retry.backoff = duration(sink, retry.backoff.as_deref(), "retry.backoff");
    }
    if backend_refs.is_empty() {
        return invalid(
            sink,
            "backendRefs".to_owned(),
            "the rule has no backendRefs and no redirect".to_owned(),
        );
    }
    let mut clusters = Vec::new();
    let mut problems = Vec::new();
    for (b_index, backend) in backend_refs.iter().enumerate() {
        let b_field = format!("{field}.backendRefs[{b_index}]");
        let weight = backend.backend.weight.unwrap_or(DEFAULT_BACKEND_WEIGHT);
        let cluster =
            match backend_cluster(ix, sink, built, route, resource, &b_field, &backend.backend) {
                Ok(cluster) => cluster,
                Err((why, message)) => {
                    sink.status
                        .unresolved(&route.object_ref(), why, message.clone());
                    problems.push((b_index, message.clone()));
                    sink.push(
                        Diagnostic::warning(format!(
                            "{message}; its share of requests gets an error"
                        ))
                        .at(location.clone())
                        .object(resource)
                        .field(b_field.clone()),
                    );
                    continue;
                }
            };
        let mut weighted = WeightedCluster::new(weight, cluster);
        for (f_index, filter) in backend.filters.iter().enumerate() {
            match compile_filter(filter) {
                Ok(Filter::Headers { request, ops }) => merge_ops(
                    if request {
                        &mut weighted.headers.request
                    } else {
                        &mut weighted.headers.response
                    },
                    ops,
                ),
                Ok(Filter::Rewrite(rewrite)) => weighted.rewrite = Some(rewrite),
                Ok(Filter::Redirect(mut redirect)) => {
                    redirect.headers = weighted.headers.clone();
                    weighted.redirect = Some(Box::new(redirect));
                }
                Ok(_) | Err(_) => {
                    return invalid(
                        sink,
                        format!("backendRefs[{b_index}].filters[{f_index}]"),
                        "only header modifiers, URLRewrite and RequestRedirect are applied on a backendRef".to_owned(),
                    );
                }
            }
        }
        clusters.push(weighted);
    }
    if clusters.is_empty() {
        let (b_index, message) = problems.swap_remove(0);
        return invalid(sink, format!("backendRefs[{b_index}]"), message);
    }
    if clusters.iter().all(|c| c.weight == 0) {
        return invalid(
            sink,
            "backendRefs".to_owned(),
            "every backend has weight 0".to_owned(),
        );
    }
    // Requests weighted to an invalid backend get 500 (the spec's answer); a
    // cluster without endpoints stands in for it, marked invalid.
    for (b_index, _) in problems {
        let weight = backend_refs[b_index]
            .backend
            .weight
            .unwrap_or(DEFAULT_BACKEND_WEIGHT);
        let name = &backend_refs[b_index].backend.name;
        let placeholder = built.clusters.intern(
            ix,
            sink,
            &mut built.credentials,
            Cluster::new(
                format!("invalid-backend-ref.{name}"),
                name.clone(),
                route.meta.namespace().to_owned(),
                0,
            ),
        );
        let b_field = format!("{field}.backendRefs[{b_index}]");
        if built.clusters.first_naming(placeholder.id) {
            let at = At {
                location: location.as_ref(),
                object: resource,
                field: &b_field,
            };
            built.clusters.say_of_cluster(placeholder.id, at);
        }
        let mut invalid = WeightedCluster::new(weight, placeholder);
        invalid.invalid = true;
        clusters.push(invalid);
    }
    forward.clusters = clusters;
    RouteAction::Forward(Box::new(forward))
}

/// The cluster of a backendRef, or why it is invalid (the spec's `InvalidKind`,
/// `RefNotPermitted`, `BackendNotFound`).
fn backend_cluster<'a>(
    ix: &Index<'a>,
    sink: &mut Sink,
    built: &mut Built,
    route: &AnyRoute<'_>,
    resource: &ObjectRef,
    field: &str,
    backend: &BackendRef,
) -> Result<Arc<Cluster>, Finding> {
    let group = backend.group.as_deref().unwrap_or_default();
    let kind = backend.kind.as_deref().unwrap_or("Service");
    let route_ns = route.meta.namespace();
    let namespace = backend.namespace.as_deref().unwrap_or(route_ns);
    let port = backend.port.map(|number| PortSelector { number });
    let host = match (group, kind) {
        ("", "Service") => {
            if namespace != route_ns
                && !ix.reference_granted(&Reference {
                    from_kind: route.kind.name(),
                    from_namespace: route_ns,
                    to_kind: "Service",
                    to_namespace: namespace,
                    name: &backend.name,
                })
            {
                return Err((
                    reason::REF_NOT_PERMITTED,
                    format!(
                        "Service {namespace}/{} is in another namespace and no ReferenceGrant there allows {} from {route_ns} (RefNotPermitted)",
                        backend.name,
                        route.kind.name()
                    ),
                ));
            }
            let exists = ix.resources.services.iter().any(|s| {
                s.resource.metadata.name == backend.name
                    && s.resource.metadata.namespace() == namespace
            });
            if !exists {
                return Err((
                    reason::BACKEND_NOT_FOUND,
                    format!("no Service {namespace}/{} (BackendNotFound)", backend.name),
                ));
            }
            if port.is_none() {
                // The API server's validation rejects this; without it, no port means
                // no backend to reach.
                return Err((
                    reason::BACKEND_NOT_FOUND,
                    "a Service backendRef needs a port".to_owned(),
                ));
            }
            format!("{}.{namespace}.{CLUSTER_DOMAIN}", backend.name)
        }
        (ISTIO_GROUP, "Hostname") => backend.name.clone(),
        _ => {
            return Err((
                reason::INVALID_KIND,
                format!(
                    "backend kind {kind} (group {group:?}) is not supported: expected a Service, or an Istio Hostname (InvalidKind)"
                ),
            ));
        }
    };
    let destination = Destination {
        host,
        subset: None,
        port,
    };
    let at = At {
        location: route.location,
        object: resource,
        field,
    };
    Ok(built.cluster(ix, sink, &destination, namespace, at))
}
