//! Destinations → clusters: Service host resolution, Service port → EndpointSlice port
//! (or core Endpoints when a Service has no EndpointSlice), ready endpoints; ServiceEntry
//! hosts with static endpoints; DestinationRule subsets.
//!
//! Subsets select endpoints by labels. EndpointSlice endpoints do not carry their pods'
//! labels, so a subset's labels are matched against the labels of the EndpointSlice
//! itself (publish one slice per version, labelled `version: v1`, …) and against
//! ServiceEntry endpoint labels.
//!
//! `ClusterTable` (here) is what a compile builds; `service` and `service_entry` make
//! the clusters of each kind of destination, `policy` applies a DestinationRule to them,
//! `endpoints` reads a Service's endpoints (also for endpoint-only updates).

mod endpoints;
mod policy;
mod service;
mod service_entry;

use std::{collections::HashMap, net::SocketAddr, sync::Arc};

pub use endpoints::{ClustersByService, update_endpoints, update_endpoints_indexed};
pub(super) use service::resolve_service_host;

use super::{
    Built, RouteMemo,
    index::Index,
    memo::{ClusterNotes, Naming},
    sink::Sink,
    tls::CompiledCredentials,
};
use crate::{
    config::{
        Diagnostic, Kind, Location, ObjectRef, Sourced,
        resources::{Destination, VirtualService},
    },
    snapshot::{Cluster, Snapshot},
};

/// Where a route names a cluster: what is said of the cluster at its making is said
/// there.
#[derive(Clone, Copy)]
pub(super) struct At<'r> {
    pub(super) location: Option<&'r Location>,
    pub(super) object: &'r ObjectRef,
    pub(super) field: &'r str,
}

impl At<'_> {
    fn place(&self, diagnostic: Diagnostic) -> Diagnostic {
        diagnostic
            .at(self.location.cloned())
            .object(self.object)
            .field(self.field.to_owned())
    }

    fn warning(&self, message: String) -> Diagnostic {
        self.place(Diagnostic::warning(message))
    }
}

/// A cluster being made: where what is said of it starts in the sink's diagnostics, and
/// the route (location, object, field) that names it; see `memo::ClusterNotes`.
struct Making<'r> {
    said_from: usize,
    at: Option<At<'r>>,
    endpoints: Vec<Diagnostic>,
    when_empty: Option<String>,
}

/// The clusters a compile builds: shared between routes that name the same service port,
/// numbered in the order they are first named, with what is said of each.
#[derive(Default)]
pub(super) struct ClusterTable {
    /// By name (`outbound|PORT|SUBSET|HOST`).
    pub(super) by_name: HashMap<String, Arc<Cluster>>,
    /// The same clusters by id, and their endpoints (`Snapshot::clusters`, `endpoints`).
    pub(super) list: Vec<Arc<Cluster>>,
    pub(super) endpoints: Vec<Arc<[SocketAddr]>>,
    /// By cluster id: what is said of it at the first route naming it (`memo::ClusterNotes`),
    /// carried over with the clusters by a reusing compile.
    pub(super) notes: Arc<Vec<ClusterNotes>>,
    /// By cluster id: whether a route of this compile named it yet.
    pub(super) named: Vec<bool>,
    /// The clusters routes named, in order: a VirtualService's are kept in its memo entry.
    pub(super) namings: Vec<Naming>,
    /// What was said of clusters at their first naming: kept apart from the sink, so that
    /// no route's memoized diagnostics hold them (another route may name the cluster
    /// first at the next compile).
    pub(super) said: Vec<Diagnostic>,
    /// The upstream TLS configurations these clusters use (`tls::upstream::ClientConfigs`).
    pub(super) upstream_tls_keys: Vec<u64>,
}

impl ClusterTable {
    /// The previous compile's clusters, kept with their numbering: routes taken from its
    /// memo name them by id.
    pub(super) fn carried_over(snapshot: &Snapshot, memo: &RouteMemo) -> Self {
        let mut table = ClusterTable::default();
        for cluster in snapshot.clusters.iter() {
            table
                .by_name
                .insert(cluster.name.clone(), Arc::clone(cluster));
            if let Some(tls) = &cluster.tls {
                table.upstream_tls_keys.push(tls.key);
            }
        }
        table.list = snapshot.clusters.to_vec();
        table.endpoints = snapshot.endpoints.clone();
        table.named = vec![false; snapshot.clusters.len()];
        table.notes = Arc::clone(&memo.clusters);
        table
    }
}

impl ClusterTable {
    /// The cluster a destination names; one with no endpoints (503 at request time) when
    /// the Service, its port or its endpoints are missing, with a warning saying which.
    /// The first route of a compile to name a cluster is told what is said of the
    /// cluster (`name_cluster`), whether this compile made it or took it over.
    pub(super) fn cluster(
        &mut self,
        ix: &Index<'_>,
        sink: &mut Sink,
        credentials: &mut CompiledCredentials,
        destination: &Destination,
        vs_namespace: &str,
        at: At<'_>,
    ) -> Arc<Cluster> {
        let cluster = self.find_cluster(ix, sink, credentials, destination, vs_namespace, at);
        self.namings.push(Naming {
            cluster: cluster.id,
            field: at.field.to_owned(),
        });
        if self.first_naming(cluster.id) {
            self.say_of_cluster(cluster.id, at);
        }
        cluster
    }

    /// Whether this is the first naming of cluster `id` in this compile (which it marks)
    /// with something to say of the cluster.
    pub(super) fn first_naming(&mut self, id: usize) -> bool {
        match self.named.get_mut(id) {
            Some(named) if !*named => *named = true,
            _ => return false,
        }
        self.notes.get(id).is_some_and(|notes| {
            !notes.made.is_empty()
                || !notes.endpoints.is_empty()
                || (notes.when_empty.is_some()
                    && self.endpoints.get(id).is_some_and(|e| e.is_empty()))
        })
    }

    /// Says what is said of cluster `id` (`memo::ClusterNotes`) at the route that names
    /// it first.
    pub(super) fn say_of_cluster(&mut self, id: usize, at: At<'_>) {
        let Some(notes) = self.notes.get(id) else {
            return;
        };
        for (said, at_naming) in &notes.made {
            self.said.push(match at_naming {
                true => at.place(said.clone()),
                false => said.clone(),
            });
        }
        self.said.extend(notes.endpoints.iter().cloned());
        if let Some(message) = &notes.when_empty
            && self.endpoints.get(id).is_some_and(|e| e.is_empty())
        {
            self.said.push(at.warning(message.clone()));
        }
    }

    /// The namings of routes taken from the memo for `vs`: the clusters they name first in
    /// this compile are said of there, as when the routes were compiled.
    pub(super) fn name_again(&mut self, vs: &Sourced<VirtualService>, namings: &[Naming]) {
        let mut object = None;
        for naming in namings {
            if self.first_naming(naming.cluster) {
                let object = object.get_or_insert_with(|| vs.resource.object_ref());
                let at = At {
                    location: vs.location.as_ref(),
                    object,
                    field: &naming.field,
                };
                self.say_of_cluster(naming.cluster, at);
            }
        }
    }

    /// A cluster with no endpoints (its requests get 503), or the one of that name.
    pub(super) fn intern(
        &mut self,
        ix: &Index<'_>,
        sink: &mut Sink,
        credentials: &mut CompiledCredentials,
        cluster: Cluster,
    ) -> Arc<Cluster> {
        let making = Making {
            said_from: sink.diagnostics.0.len(),
            at: None,
            endpoints: Vec::new(),
            when_empty: None,
        };
        self.intern_with(ix, sink, credentials, cluster, Vec::new(), making)
    }

    /// The cluster of that name if there is one already, else this one with these
    /// endpoints, numbered in the order clusters are first named. What was said in making
    /// it (from `making.said_from`, and its traffic policy's) is taken out of the
    /// diagnostics into its notes, for the route that names it first to say.
    fn intern_with(
        &mut self,
        ix: &Index<'_>,
        sink: &mut Sink,
        credentials: &mut CompiledCredentials,
        mut cluster: Cluster,
        endpoints: Vec<SocketAddr>,
        making: Making<'_>,
    ) -> Arc<Cluster> {
        if let Some(existing) = self.by_name.get(&cluster.name) {
            return existing.clone();
        }
        policy::apply_traffic_policy(ix, sink, credentials, &mut cluster);
        super::backend_tls::apply(ix, sink, &mut cluster);
        if let Some(tls) = &cluster.tls
            && tls.config.is_ok()
        {
            self.upstream_tls_keys.push(tls.key);
        }
        let made = sink
            .diagnostics
            .0
            .drain(making.said_from.min(sink.diagnostics.0.len())..)
            .map(|d| {
                let at_naming = making.at.is_some_and(|at| {
                    d.location.as_ref() == at.location
                        && d.object.as_ref() == Some(at.object)
                        && d.field.as_deref() == Some(at.field)
                });
                (d, at_naming)
            })
            .collect();
        cluster.id = self.list.len();
        let cluster = Arc::new(cluster);
        self.by_name.insert(cluster.name.clone(), cluster.clone());
        self.list.push(cluster.clone());
        self.endpoints.push(endpoints.into());
        self.named.push(false);
        Arc::make_mut(&mut self.notes).push(ClusterNotes {
            made,
            endpoints: making.endpoints,
            when_empty: making.when_empty,
        });
        cluster
    }
}

impl Built {
    /// The cluster a destination names, made with the credentials its DestinationRule's
    /// TLS needs (`ClusterTable::cluster`).
    pub(super) fn cluster(
        &mut self,
        ix: &Index<'_>,
        sink: &mut Sink,
        destination: &Destination,
        vs_namespace: &str,
        at: At<'_>,
    ) -> Arc<Cluster> {
        self.clusters.cluster(
            ix,
            sink,
            &mut self.credentials,
            destination,
            vs_namespace,
            at,
        )
    }
}

#[cfg(test)]
#[path = "clusters_tests.rs"]
mod tests;
