//! One watch: kube-runtime's watcher (paged list, then watch from the list's
//! resourceVersion, resume after a dropped stream, relist on 410 Gone, backoff on errors)
//! feeding the store one parsed object at a time.

use std::sync::Arc;

use futures::StreamExt as _;
use kube::{
    Api, Client,
    api::DynamicObject,
    core::ApiResource,
    runtime::{WatchStreamExt as _, watcher},
};
use tracing::{debug, info, warn};

use super::{
    status_writer::GATEWAY_API_GROUP,
    store::{ClusterStore, Parsed, RouteParents, StreamKey},
};
use crate::config;

/// kubectl's copy of the whole object: as large as the object, and never read.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Follows one kind (in one namespace, or all) until the task is aborted.
pub async fn follow(
    client: Client,
    key: StreamKey,
    resource: ApiResource,
    store: Arc<ClusterStore>,
) {
    let api: Api<DynamicObject> = match &key.namespace {
        Some(namespace) => Api::namespaced_with(client, namespace, &resource),
        None => Api::all_with(client, &resource),
    };
    let label = key.kind().label();
    let namespace = key.namespace.as_deref().unwrap_or("*");
    info!(
        kind = label,
        version = resource.version,
        namespace,
        "watching"
    );
    let events = watcher(api, watcher::Config::default()).default_backoff();
    let mut events = std::pin::pin!(events);
    while let Some(event) = events.next().await {
        match event {
            Ok(watcher::Event::Init) => store.list_started(&key),
            Ok(watcher::Event::InitApply(object)) => {
                if let Some((name, parsed)) = parse(&resource, object) {
                    store.listed(&key, name, parsed);
                }
            }
            Ok(watcher::Event::InitDone) => {
                debug!(kind = label, namespace, "list complete");
                store.list_done(&key);
            }
            Ok(watcher::Event::Apply(object)) => {
                if let Some((name, parsed)) = parse(&resource, object) {
                    store.applied(&key, name, parsed);
                }
            }
            Ok(watcher::Event::Delete(object)) => {
                if let Some(name) = name_of(&object) {
                    store.deleted(&key, &name);
                }
            }
            Err(e) => {
                // The watcher retries with backoff; what the store holds keeps serving.
                warn!(kind = label, namespace, error = %e, "watch failed; retrying");
                store.failed(&key, e.to_string());
                if is_refused(&e) {
                    // Not allowed to list this kind (RBAC) or it went away: the first
                    // compile does not wait for it, and it keeps trying.
                    store.give_up_first_list(&key);
                }
            }
        }
    }
}

/// Whether the API server refused the list itself (403 Forbidden, 404 Not Found), which
/// retrying soon will not change.
fn is_refused(error: &watcher::Error) -> bool {
    match error {
        watcher::Error::InitialListFailed(kube::Error::Api(status)) => {
            matches!(status.code, 403 | 404)
        }
        _ => false,
    }
}

fn name_of(object: &DynamicObject) -> Option<(String, String)> {
    let name = object.metadata.name.clone()?;
    Some((object.metadata.namespace.clone().unwrap_or_default(), name))
}

/// The object in the loader's types. What the API server adds for its own bookkeeping is
/// dropped first: it can be larger than the object and is never read.
fn parse(resource: &ApiResource, mut object: DynamicObject) -> Option<((String, String), Parsed)> {
    let name = name_of(&object)?;
    let resource_version = object.metadata.resource_version.clone().unwrap_or_default();
    object.metadata.managed_fields = None;
    if let Some(annotations) = object.metadata.annotations.as_mut() {
        annotations.remove(LAST_APPLIED);
    }
    let mut value = serde_json::to_value(&object).ok()?;
    // Items of a list carry no apiVersion and kind; the resource says what they are.
    if let Some(fields) = value.as_object_mut() {
        fields.insert("apiVersion".into(), resource.api_version.clone().into());
        fields.insert("kind".into(), resource.kind.clone().into());
    }
    let (resources, diagnostics) = config::parse_object(&value);
    let route_parents = (resource.group == GATEWAY_API_GROUP && resource.kind.ends_with("Route"))
        .then(|| RouteParents {
            generation: object.metadata.generation.unwrap_or_default(),
            parent_refs: serde_json::from_value(value["spec"]["parentRefs"].clone())
                .unwrap_or_default(),
        });
    Some((
        name,
        Parsed {
            resource_version,
            object: config::Object::first(resources),
            diagnostics,
            route_parents,
        },
    ))
}
