//! Legacy discovery documents (`/api`, `/api/v1`, `/apis`, `/apis/{g}`, `/apis/{g}/{v}`) and
//! `/version`. Aggregated discovery is answered in the legacy format with a plain
//! `application/json` Content-Type, which client-go takes as "not supported" and falls back.

use serde_json::{Value, json};

use crate::resources::Resource;

const VERBS: [&str; 7] = [
    "create", "delete", "get", "list", "patch", "update", "watch",
];

pub(crate) fn version() -> Value {
    json!({
        "major": "1",
        "minor": "33",
        "gitVersion": "v1.33.0-fake",
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "go1.24.0",
        "compiler": "gc",
        "platform": "linux/amd64"
    })
}

pub(crate) fn core_versions() -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [],
    })
}

fn short_names(res: &Resource) -> &'static [&'static str] {
    match (res.group, res.plural) {
        ("", "services") => &["svc"],
        ("", "namespaces") => &["ns"],
        ("", "pods") => &["po"],
        ("", "endpoints") => &["ep"],
        ("", "configmaps") => &["cm"],
        ("networking.istio.io", "gateways") => &["gw"],
        ("networking.istio.io", "virtualservices") => &["vs"],
        ("networking.istio.io", "destinationrules") => &["dr"],
        ("networking.istio.io", "serviceentries") => &["se"],
        ("gateway.networking.k8s.io", "gatewayclasses") => &["gc"],
        _ => &[],
    }
}

/// The groups served, in first-seen order, with their versions (preferred first).
fn groups(resources: &[Resource]) -> Vec<(&'static str, Vec<&'static str>)> {
    let mut groups: Vec<(&'static str, Vec<&'static str>)> = Vec::new();
    for res in resources.iter().filter(|r| !r.group.is_empty()) {
        let index = match groups.iter().position(|(g, _)| *g == res.group) {
            Some(i) => i,
            None => {
                groups.push((res.group, Vec::new()));
                groups.len() - 1
            }
        };
        for version in res.versions {
            if !groups[index].1.contains(version) {
                groups[index].1.push(version);
            }
        }
    }
    groups
}

fn group_document(name: &str, versions: &[&str]) -> Value {
    let versions: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{name}/{v}"), "version": v}))
        .collect();
    json!({
        "name": name,
        "versions": versions,
        "preferredVersion": versions.first().cloned().unwrap_or(Value::Null),
    })
}

pub(crate) fn group_list(resources: &[Resource]) -> Value {
    let groups: Vec<Value> = groups(resources)
        .iter()
        .map(|(name, versions)| group_document(name, versions))
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

pub(crate) fn group(resources: &[Resource], name: &str) -> Option<Value> {
    let (name, versions) = groups(resources).into_iter().find(|(g, _)| *g == name)?;
    let mut doc = group_document(name, &versions);
    if let Some(map) = doc.as_object_mut() {
        map.insert("kind".into(), "APIGroup".into());
        map.insert("apiVersion".into(), "v1".into());
    }
    Some(doc)
}

/// The APIResourceList of one group version, or None when nothing is served there.
pub(crate) fn resource_list(resources: &[Resource], group: &str, version: &str) -> Option<Value> {
    let served: Vec<&Resource> = resources
        .iter()
        .filter(|r| r.serves(group, version))
        .collect();
    if served.is_empty() {
        return None;
    }
    let mut entries = Vec::new();
    for res in served {
        entries.push(json!({
            "name": res.plural,
            "singularName": res.singular(),
            "namespaced": res.namespaced,
            "kind": res.kind,
            "verbs": VERBS,
            "shortNames": short_names(res),
        }));
        if res.status_subresource {
            entries.push(json!({
                "name": format!("{}/status", res.plural),
                "singularName": "",
                "namespaced": res.namespaced,
                "kind": res.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
    }
    let group_version = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": entries,
    }))
}
