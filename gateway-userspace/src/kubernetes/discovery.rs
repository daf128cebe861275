//! Which of the kinds we watch the cluster serves, and in which version: a cluster may
//! lack a CRD (Gateway API not installed, no TCPRoute), or serve an older version of it.

use std::collections::HashMap;

use kube::{Client, core::ApiResource};

use super::kinds::{WATCHED, WatchedKind};

/// What discovery found.
#[derive(Debug, Default)]
pub struct Discovered {
    /// Kinds served, by index into `WATCHED`, with the resource to watch.
    pub served: Vec<(usize, ApiResource)>,
    /// Kinds the cluster does not serve (in any version we read).
    pub missing: Vec<usize>,
}

/// Asks the API server which groups and versions it serves.
pub async fn discover(client: &Client) -> Result<Discovered, kube::Error> {
    let groups = client.list_api_groups().await?;
    let served_versions: HashMap<&str, Vec<&str>> = groups
        .groups
        .iter()
        .map(|g| {
            let versions = g.versions.iter().map(|v| v.version.as_str()).collect();
            (g.name.as_str(), versions)
        })
        .collect();
    // Each group/version's resource list, fetched once.
    let mut resource_lists: HashMap<String, Vec<(String, String)>> = HashMap::new();
    let mut discovered = Discovered::default();
    for (index, kind) in WATCHED.iter().enumerate() {
        if kind.group.is_empty() {
            // The core group is always there, in v1.
            discovered
                .served
                .push((index, resource(kind, "v1", kind.plural)));
            continue;
        }
        let Some(versions) = served_versions.get(kind.group) else {
            discovered.missing.push(index);
            continue;
        };
        let mut found = None;
        for version in kind.versions.iter().filter(|v| versions.contains(v)) {
            let group_version = format!("{}/{version}", kind.group);
            if !resource_lists.contains_key(&group_version) {
                let list = client.list_api_group_resources(&group_version).await?;
                let names = list
                    .resources
                    .into_iter()
                    // `httproutes/status` and the like are subresources.
                    .filter(|r| !r.name.contains('/'))
                    .map(|r| (r.kind, r.name))
                    .collect();
                resource_lists.insert(group_version.clone(), names);
            }
            let plural = resource_lists[&group_version]
                .iter()
                .find(|(k, _)| k == kind.kind)
                .map(|(_, plural)| plural.clone());
            if let Some(plural) = plural {
                found = Some(resource(kind, version, &plural));
                break;
            }
        }
        match found {
            Some(resource) => discovered.served.push((index, resource)),
            None => discovered.missing.push(index),
        }
    }
    Ok(discovered)
}

fn resource(kind: &WatchedKind, version: &str, plural: &str) -> ApiResource {
    let api_version = if kind.group.is_empty() {
        version.to_owned()
    } else {
        format!("{}/{version}", kind.group)
    };
    ApiResource {
        group: kind.group.to_owned(),
        version: version.to_owned(),
        api_version,
        kind: kind.kind.to_owned(),
        plural: plural.to_owned(),
    }
}
