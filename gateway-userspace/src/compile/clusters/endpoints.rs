//! A Service's ready endpoints, from its EndpointSlices (or its core `Endpoints`), for a
//! compile and for endpoint-only updates of a compiled snapshot.

use std::{
    collections::{BTreeSet, HashMap},
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use super::super::{RouteMemo, index::SliceIndex};
use crate::config::{Diagnostic, Diagnostics, Kind, Resources, cache::ServiceKey};
use crate::snapshot::{Cluster, EndpointSource, Snapshot};

/// Ready endpoints of a Service port (`source`): EndpointSlice ports carry the Service
/// port's name. Without any EndpointSlice for the Service, its core `Endpoints` object is
/// read. Sorted and without duplicates, so that equal sets compare equal.
pub(crate) fn service_endpoints(
    resources: &Resources,
    slices: &SliceIndex<'_>,
    source: &EndpointSource,
    diagnostics: &mut Diagnostics,
) -> Vec<SocketAddr> {
    let EndpointSource::Service {
        namespace,
        name,
        port_name,
        fallback_port,
        subset_labels,
    } = source
    else {
        return Vec::new();
    };
    let mut endpoints = Vec::new();
    let mut any_slice = false;
    for slice in slices.of(namespace, name) {
        let slice = &slice.resource;
        any_slice = true;
        // Istio's registry skips FQDN slices (deprecated in Kubernetes): they name hosts,
        // not endpoints, so they add none and need no warning.
        if slice.address_type.as_deref() == Some("FQDN") {
            continue;
        }
        if subset_labels
            .as_ref()
            .is_some_and(|want| !slice.metadata.labels.contains_all(want))
        {
            continue;
        }
        let target = slice
            .ports
            .iter()
            .find(|p| p.name.as_deref().unwrap_or_default() == port_name)
            .and_then(|p| u16::try_from(p.port).ok())
            .or(*fallback_port);
        let Some(target) = target else {
            continue;
        };
        for endpoint in &slice.endpoints {
            if endpoint.conditions.ready == Some(false) {
                continue;
            }
            for address in &endpoint.addresses {
                match address.parse::<IpAddr>() {
                    Ok(ip) => endpoints.push(SocketAddr::new(ip, target)),
                    Err(_) => diagnostics.push(
                        Diagnostic::warning(format!(
                            "endpoint address {address:?} is not an IP address; skipped"
                        ))
                        .object(&slice.object_ref()),
                    ),
                }
            }
        }
    }
    if !any_slice && subset_labels.is_none() {
        core_endpoints(
            resources,
            namespace,
            name,
            port_name,
            &mut endpoints,
            diagnostics,
        );
    }
    endpoints.sort_unstable();
    endpoints.dedup();
    endpoints
}

/// Ready addresses of the Service's core v1 `Endpoints` (same name and namespace); the
/// port is the Endpoints port of the Service port's name.
fn core_endpoints(
    resources: &Resources,
    namespace: &str,
    name: &str,
    port_name: &str,
    endpoints: &mut Vec<SocketAddr>,
    diagnostics: &mut Diagnostics,
) {
    for object in &resources.endpoints {
        let object = &object.resource;
        if object.metadata.namespace() != namespace || object.metadata.name != name {
            continue;
        }
        for subset in &object.subsets {
            let target = subset
                .ports
                .iter()
                .find(|p| p.name.as_deref().unwrap_or_default() == port_name)
                .or_else(|| subset.ports.first().filter(|_| subset.ports.len() == 1))
                .and_then(|p| u16::try_from(p.port).ok());
            let Some(target) = target else {
                continue;
            };
            for address in &subset.addresses {
                match address.ip.parse::<IpAddr>() {
                    Ok(ip) => endpoints.push(SocketAddr::new(ip, target)),
                    Err(_) => diagnostics.push(
                        Diagnostic::warning(format!(
                            "endpoint address {:?} is not an IP address; skipped",
                            address.ip
                        ))
                        .object(&object.object_ref()),
                    ),
                }
            }
        }
    }
}

/// The snapshot `previous` with the endpoints of `services`' clusters read again from
/// `resources` (which need hold only those Services' EndpointSlices and Endpoints): the
/// routes, TLS and cluster definitions are shared, not recompiled. Clusters whose
/// endpoints come out the same keep their list. `memo`, the one of the compile that made
/// `previous`, keeps the endpoints' warnings for the next compile that reuses it to say
/// (`memo::ClusterNotes`).
pub fn update_endpoints(
    previous: &Snapshot,
    resources: &Resources,
    services: &BTreeSet<ServiceKey>,
    memo: Option<&mut RouteMemo>,
) -> (Snapshot, Diagnostics) {
    let index = ClustersByService::of(&previous.clusters);
    update_endpoints_indexed(previous, resources, services, &index, memo)
}

/// `update_endpoints` with the clusters found through `index` (built for
/// `previous.clusters`, or it is built again here): only the changed Services' clusters
/// are looked at.
pub fn update_endpoints_indexed(
    previous: &Snapshot,
    resources: &Resources,
    services: &BTreeSet<ServiceKey>,
    index: &ClustersByService,
    mut memo: Option<&mut RouteMemo>,
) -> (Snapshot, Diagnostics) {
    if !index.is_for(&previous.clusters) {
        return update_endpoints(previous, resources, services, memo);
    }
    let mut diagnostics = Diagnostics::default();
    let slices = SliceIndex::new(resources);
    let mut endpoints = previous.endpoints.clone();
    for (namespace, name) in services {
        for &id in index.ids(namespace, name) {
            let (Some(cluster), Some(before)) = (previous.clusters.get(id), endpoints.get_mut(id))
            else {
                continue;
            };
            let mut read = Diagnostics::default();
            let after = service_endpoints(resources, &slices, &cluster.endpoint_source, &mut read);
            if *after != **before {
                *before = after.into();
            }
            if let Some(memo) = memo.as_deref_mut() {
                memo.endpoints_read(id, read.0.clone());
            }
            diagnostics.extend(read);
        }
    }
    let snapshot = Snapshot {
        listeners: Arc::clone(&previous.listeners),
        clusters: Arc::clone(&previous.clusters),
        endpoints,
        kernel: previous.kernel.clone(),
        report: Arc::clone(&previous.report),
    };
    (snapshot, diagnostics)
}

/// The ids of a cluster list's clusters by the Service whose endpoints they serve, kept
/// between endpoint updates while the list is shared (`Snapshot::clusters`).
pub struct ClustersByService {
    /// The list indexed; held so that its address stays its own.
    clusters: Arc<Vec<Arc<Cluster>>>,
    /// namespace → name → ids.
    ids: HashMap<String, HashMap<String, Vec<usize>>>,
}

impl ClustersByService {
    pub fn of(clusters: &Arc<Vec<Arc<Cluster>>>) -> ClustersByService {
        let mut ids: HashMap<String, HashMap<String, Vec<usize>>> = HashMap::new();
        for (id, cluster) in clusters.iter().enumerate() {
            if let Some((namespace, name)) = cluster.endpoint_source.service() {
                ids.entry(namespace.to_owned())
                    .or_default()
                    .entry(name.to_owned())
                    .or_default()
                    .push(id);
            }
        }
        ClustersByService {
            clusters: Arc::clone(clusters),
            ids,
        }
    }

    /// Whether this indexes `clusters`.
    pub fn is_for(&self, clusters: &Arc<Vec<Arc<Cluster>>>) -> bool {
        Arc::ptr_eq(&self.clusters, clusters)
    }

    fn ids(&self, namespace: &str, name: &str) -> &[usize] {
        self.ids
            .get(namespace)
            .and_then(|names| names.get(name))
            .map_or(&[], Vec::as_slice)
    }
}
