//! Istio's delegate VirtualServices: a root route with `delegate` is replaced by the
//! delegate's routes, each narrowed by the root's matches (a delegate match must fit in
//! a root match, or the delegate route is dropped) and given the root's policies where
//! it has none of its own.

use std::{borrow::Cow, collections::BTreeMap};

use crate::{
    compile::{index::Index, sink::Sink},
    config::{
        Diagnostic, Kind, Sourced,
        resources::{HttpMatchRequest, HttpRoute, Lenient, StringMatch, VirtualService},
    },
};

/// May a root in `root_namespace` use this delegate? Without `exportTo` a VirtualService
/// is visible everywhere (Istio's default); `.` is its own namespace, `*` everywhere.
pub(super) fn exported_to(delegate: &VirtualService, root_namespace: &str) -> bool {
    let own = delegate.metadata.namespace();
    let export_to = &delegate.spec.export_to;
    export_to.is_empty()
        || export_to.iter().any(|e| match e.as_str() {
            "*" => true,
            "." => own == root_namespace,
            ns => ns == root_namespace,
        })
}

/// The delegate route merged under the root route, or None when one of its matches fits
/// in none of the root's (Istio ignores such a delegate route).
fn merge_route(root: &HttpRoute, leaf: &HttpRoute) -> Option<HttpRoute> {
    let mut merged = leaf.clone();
    merged.matches = merge_matches(&root.matches, &leaf.matches)?;
    merged.name = joined_name(&root.name, &leaf.name);
    inherit(&mut merged, root);
    Some(merged)
}

/// The root route fields a delegate route takes when it has none of its own (Istio's
/// `mergeHTTPRoute`; `redirect` and the destinations are the delegate's alone).
fn inherit(leaf: &mut HttpRoute, root: &HttpRoute) {
    fn field<T: Clone>(leaf: &mut Option<T>, root: &Option<T>) {
        if leaf.is_none() {
            leaf.clone_from(root);
        }
    }
    field(&mut leaf.rewrite, &root.rewrite);
    field(&mut leaf.direct_response, &root.direct_response);
    field(&mut leaf.timeout, &root.timeout);
    field(&mut leaf.retries, &root.retries);
    field(&mut leaf.fault, &root.fault);
    field(&mut leaf.mirror, &root.mirror);
    field(&mut leaf.mirror_percent, &root.mirror_percent);
    field(&mut leaf.mirror_percent_snake, &root.mirror_percent_snake);
    field(&mut leaf.mirror_percentage, &root.mirror_percentage);
    field(&mut leaf.cors_policy, &root.cors_policy);
    field(&mut leaf.mirrors, &root.mirrors);
    field(&mut leaf.headers, &root.headers);
}

fn joined_name(root: &Option<String>, leaf: &Option<String>) -> Option<String> {
    match (root, leaf) {
        (Some(root), Some(leaf)) => Some(format!("{root}-{leaf}")),
        (root, None) => root.clone(),
        (None, leaf) => leaf.clone(),
    }
}

fn merge_matches(
    root: &[HttpMatchRequest],
    leaf: &[HttpMatchRequest],
) -> Option<Vec<HttpMatchRequest>> {
    if root.is_empty() {
        return Some(leaf.to_vec());
    }
    if leaf.is_empty() {
        return Some(root.to_vec());
    }
    let mut out = Vec::new();
    for sub in leaf {
        let before = out.len();
        for parent in root.iter().filter(|parent| !conflicts(parent, sub)) {
            out.push(merge_match(parent, sub));
        }
        if out.len() == before {
            return None;
        }
    }
    Some(out)
}

fn merge_match(root: &HttpMatchRequest, leaf: &HttpMatchRequest) -> HttpMatchRequest {
    pub(super) fn maps(
        root: &BTreeMap<String, StringMatch>,
        leaf: &BTreeMap<String, StringMatch>,
    ) -> BTreeMap<String, StringMatch> {
        let mut out = root.clone();
        out.extend(leaf.iter().map(|(k, v)| (k.clone(), v.clone())));
        out
    }
    let mut out = leaf.clone();
    out.name = joined_name(&root.name, &leaf.name);
    out.uri = leaf.uri.clone().or_else(|| root.uri.clone());
    out.scheme = leaf.scheme.clone().or_else(|| root.scheme.clone());
    out.method = leaf.method.clone().or_else(|| root.method.clone());
    out.authority = leaf.authority.clone().or_else(|| root.authority.clone());
    out.headers = maps(&root.headers, &leaf.headers);
    out.without_headers = maps(&root.without_headers, &leaf.without_headers);
    out.query_params = maps(&root.query_params, &leaf.query_params);
    out.port = leaf.port.or(root.port);
    let mut labels = root.source_labels.clone();
    labels.extend(leaf.source_labels.clone());
    out.source_labels = labels;
    out.source_namespace = leaf
        .source_namespace
        .clone()
        .or_else(|| root.source_namespace.clone());
    if out.gateways.is_empty() {
        out.gateways = root.gateways.clone();
    }
    out
}

/// Does the leaf ask for something the root excludes (Istio's `hasConflict`)?
pub(super) fn conflicts(root: &HttpMatchRequest, leaf: &HttpMatchRequest) -> bool {
    let pairs = [
        (&root.uri, &leaf.uri),
        (&root.scheme, &leaf.scheme),
        (&root.method, &leaf.method),
        (&root.authority, &leaf.authority),
    ];
    if pairs
        .iter()
        .any(|(r, l)| string_conflict(r.as_ref(), l.as_ref()))
    {
        return true;
    }
    let map_conflict = |root: &BTreeMap<String, StringMatch>,
                        leaf: &BTreeMap<String, StringMatch>| {
        leaf.iter()
            .any(|(key, l)| string_conflict(root.get(key), Some(l)))
    };
    if map_conflict(&root.headers, &leaf.headers)
        || map_conflict(&root.without_headers, &leaf.without_headers)
        || map_conflict(&root.query_params, &leaf.query_params)
    {
        return true;
    }
    if root.ignore_uri_case != leaf.ignore_uri_case {
        return true;
    }
    if let (Some(r), Some(l)) = (root.port, leaf.port)
        && r != l
    {
        return true;
    }
    if let Some(ns) = &root.source_namespace
        && leaf.source_namespace.as_ref() != Some(ns)
    {
        return true;
    }
    if leaf
        .source_labels
        .iter()
        .any(|(k, v)| root.source_labels.get(k).is_some_and(|r| r != v))
    {
        return true;
    }
    !root.gateways.is_empty()
        && !leaf.gateways.is_empty()
        && leaf.gateways.iter().any(|g| !root.gateways.contains(g))
}

/// A leaf string match conflicts unless it only narrows the root's: same exact, or a
/// prefix/exact under the root's prefix. Regexes cannot be compared, so a regex on
/// either side conflicts with any other condition.
fn string_conflict(root: Option<&StringMatch>, leaf: Option<&StringMatch>) -> bool {
    let (Some(root), Some(leaf)) = (root, leaf) else {
        return false;
    };
    let text = |s: &Option<String>| s.clone().unwrap_or_default();
    let (r_exact, r_prefix, r_regex) = (text(&root.exact), text(&root.prefix), text(&root.regex));
    let (l_exact, l_prefix, l_regex) = (text(&leaf.exact), text(&leaf.prefix), text(&leaf.regex));
    let leaf_any = !(l_exact.is_empty() && l_prefix.is_empty() && l_regex.is_empty());
    let root_any = !(r_exact.is_empty() && r_prefix.is_empty() && r_regex.is_empty());
    if (!r_regex.is_empty() && leaf_any) || (!l_regex.is_empty() && root_any) {
        return true;
    }
    if !r_exact.is_empty() {
        return !l_prefix.is_empty() || l_exact != r_exact;
    }
    if !r_prefix.is_empty() {
        if !l_prefix.is_empty() {
            return !l_prefix.starts_with(&r_prefix);
        }
        if !l_exact.is_empty() {
            return !l_exact.starts_with(&r_prefix);
        }
    }
    true
}

/// A VirtualService's `http` routes with each `delegate` route replaced by its
/// delegate's routes merged under it: (the VirtualService a route is written in, its
/// index there, the route).
pub(super) fn with_delegates<'a>(
    ix: &Index<'a>,
    sink: &mut Sink,
    vs: &'a Sourced<VirtualService>,
) -> Vec<(&'a Sourced<VirtualService>, usize, Cow<'a, HttpRoute>)> {
    let mut out = Vec::new();
    let root_namespace = vs.resource.metadata.namespace();
    for (index, route) in vs.resource.spec.http.iter().enumerate() {
        let Some(reference) = &route.delegate else {
            out.push((vs, index, Cow::Borrowed(route)));
            continue;
        };
        let field = format!("spec.http[{index}].delegate");
        let problem = |message: String| {
            Diagnostic::warning(message)
                .at(vs.location.clone())
                .object(&vs.resource.object_ref())
                .field(field.clone())
        };
        let reference = match reference {
            Lenient::Valid(reference, _) => reference,
            Lenient::Invalid(invalid) => {
                sink.push(problem(format!(
                    "{}; expected {{name, namespace}}; this route is skipped",
                    invalid.message
                )));
                continue;
            }
        };
        let namespace = reference.namespace.as_deref().unwrap_or(root_namespace);
        // Istio's delegates are the VirtualServices without hosts.
        let found = ix.resources.virtual_services.iter().find(|d| {
            d.resource.metadata.name == reference.name
                && d.resource.metadata.namespace() == namespace
                && d.resource.spec.hosts.is_empty()
        });
        let Some(delegate_vs) = found else {
            sink.push(problem(format!(
                    "delegate {namespace}/{} does not exist (a delegate is a VirtualService without hosts); this route is skipped",
                    reference.name
                )));
            continue;
        };
        if !exported_to(&delegate_vs.resource, root_namespace) {
            sink.push(problem(format!(
                    "delegate {namespace}/{} is not exported to namespace {root_namespace}; this route is skipped",
                    reference.name
                )));
            continue;
        }
        for (d_index, leaf) in delegate_vs.resource.spec.http.iter().enumerate() {
            match merge_route(route, leaf) {
                    Some(merged) => out.push((delegate_vs, d_index, Cow::Owned(merged))),
                    None => sink.push(
                        Diagnostic::warning(format!(
                            "its matches fit in none of the matches of {}'s spec.http[{index}], which delegates here; Istio drops this route",
                            vs.resource.object_ref()
                        ))
                        .at(delegate_vs.location.clone())
                        .object(&delegate_vs.resource.object_ref())
                        .field(format!("spec.http[{d_index}].match")),
                    ),
                }
        }
    }
    out
}
