//! Just enough OpenAPI v3 for kubectl: it validates on the client unless the server's
//! OpenAPI says a kind's PATCH takes `fieldValidation` (then it leaves validation to the
//! server, which the fake does not do). Paths carry no schemas.

use serde_json::{Map, Value, json};

use crate::resources::Resource;

fn group_version_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// `/openapi/v3`: one entry per served group version.
pub(crate) fn root(resources: &[Resource]) -> Value {
    let mut paths = Map::new();
    for res in resources {
        for version in res.versions {
            let path = group_version_path(res.group, version);
            let url = format!("/openapi/v3/{path}?hash=fake");
            paths.insert(path, json!({"serverRelativeURL": url}));
        }
    }
    json!({"paths": paths})
}

/// `/openapi/v3/{api/v1 | apis/g/v}`: the item PATCH operation of each served kind.
pub(crate) fn group_version(resources: &[Resource], path: &str) -> Option<Value> {
    let mut paths = Map::new();
    for res in resources {
        for version in res.versions {
            if group_version_path(res.group, version) != path {
                continue;
            }
            let scope = if res.namespaced {
                "namespaces/{namespace}/"
            } else {
                ""
            };
            let item = format!("/{path}/{scope}{}/{{name}}", res.plural);
            let patch = json!({"patch": {
                "x-kubernetes-group-version-kind":
                    {"group": res.group, "version": version, "kind": res.kind},
                "parameters": [
                    {"name": "fieldValidation", "in": "query", "schema": {"type": "string"}},
                ],
                "responses": {},
            }});
            paths.insert(item, patch);
        }
    }
    (!paths.is_empty()).then(|| {
        json!({
            "openapi": "3.0.0",
            "info": {"title": "Kubernetes (fake)", "version": "v1.33.0"},
            "paths": paths,
            "components": {"schemas": {}},
        })
    })
}
