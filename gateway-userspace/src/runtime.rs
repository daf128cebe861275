//! Runtime state: what serving learns while it runs (requests in flight per endpoint,
//! outlier ejections, circuit-breaker counts, the round-robin position, resolved metric
//! handles), kept beside the compiled `Snapshot` instead of inside it.
//!
//! A `Live` pairs one snapshot with the state of its clusters, and the pair is swapped
//! whole, so a request that loaded it sees endpoint lists and their state line up. A new
//! snapshot takes over the state of the previous one by cluster name and endpoint address
//! (`Live::succeed`): a reload or an endpoint update keeps ejections, in-flight counts and
//! breaker counts of everything that still exists, and drops the state of endpoints and
//! clusters that went away.
//!
//! The state is shared by all workers (atomics, one small struct per endpoint): Envoy's
//! outlier detector likewise decides per cluster, not per thread, so an endpoint is
//! ejected once for everyone.

mod balancer;
pub mod hash_ring;

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicU32, AtomicU64, AtomicUsize},
    },
};

pub use balancer::PickedEndpoint;

use crate::{
    connection_pool::CircuitBreakers,
    metrics::RequestStatsCache,
    snapshot::{Cluster, LoadBalancer, Snapshot},
};

/// The configuration every request reads, and the runtime state of its clusters.
#[derive(Debug)]
pub struct Live {
    pub snapshot: Arc<Snapshot>,
    /// By `Cluster::id`.
    clusters: Vec<Arc<ClusterState>>,
}

/// A previous snapshot's cluster state, its endpoints and its balancer.
type Previous<'a> = (&'a Arc<ClusterState>, &'a [SocketAddr], LoadBalancer);

/// A snapshot's cluster states, with the endpoints and balancer they are for, by name.
type ByName<'a> = HashMap<&'a str, Previous<'a>>;

/// One cluster's runtime state. Its `endpoints` line up with the snapshot's endpoint list
/// for the cluster; breakers and metric handles follow the cluster's name.
#[derive(Debug, Default)]
pub struct ClusterState {
    /// What the cluster has in flight, counted against its `connectionPool` limits.
    pub breakers: Arc<CircuitBreakers>,
    /// The cluster's request metrics, resolved once per label set.
    pub stats: Arc<RequestStatsCache>,
    round_robin: Arc<AtomicUsize>,
    endpoints: Vec<Arc<EndpointState>>,
    /// The ring or Maglev table of a hashing cluster, built from `endpoints` on first use.
    hash_table: OnceLock<Option<hash_ring::HashTable>>,
}

/// One endpoint's in-flight requests and health.
#[derive(Debug, Default)]
struct EndpointState {
    active: AtomicUsize,
    consecutive_errors: AtomicU32,
    /// Milliseconds since `balancer::now_ms()`'s epoch until which it is ejected.
    ejected_until_ms: AtomicU64,
}

/// A cluster as one request sees it: its definition, its endpoints and their state.
#[derive(Clone, Copy)]
pub struct LiveCluster<'a> {
    pub cluster: &'a Cluster,
    pub endpoints: &'a [SocketAddr],
    pub state: &'a ClusterState,
}

/// A live cluster reads as its definition; its state is `state`.
impl std::ops::Deref for LiveCluster<'_> {
    type Target = Cluster;
    fn deref(&self) -> &Cluster {
        self.cluster
    }
}

impl Live {
    /// A first snapshot: fresh state for every cluster.
    pub fn new(snapshot: Arc<Snapshot>) -> Live {
        let clusters = snapshot
            .clusters
            .iter()
            .map(|cluster| {
                ClusterState::carried(None, snapshot.endpoints_of(cluster), cluster.load_balancer)
            })
            .collect();
        Live { snapshot, clusters }
    }

    /// The next snapshot, taking over this one's state where cluster names and endpoint
    /// addresses match. An endpoint update or a route change shares most cluster
    /// definitions with the previous snapshot, at the same ids: those are matched by
    /// pointer, and only the others by name, so the work follows what changed.
    pub fn succeed(&self, snapshot: Arc<Snapshot>) -> Live {
        let shared = Arc::ptr_eq(&self.snapshot.clusters, &snapshot.clusters);
        let mut by_name: Option<ByName<'_>> = None;
        // Clusters are numbered by their position (`Cluster::id`): comparing the lists'
        // pointers and endpoint slices reads no cluster.
        let clusters = snapshot
            .clusters
            .iter()
            .enumerate()
            .map(|(id, cluster)| {
                let endpoints = snapshot.endpoints.get(id).map_or(&[][..], |e| e);
                let same_id = self
                    .snapshot
                    .clusters
                    .get(id)
                    .filter(|before| shared || Arc::ptr_eq(before, cluster))
                    .and(self.clusters.get(id));
                let previous = match same_id {
                    Some(state) => {
                        let before = self.snapshot.endpoints.get(id).map_or(&[][..], |e| e);
                        Some((state, before, cluster.load_balancer))
                    }
                    None => by_name
                        .get_or_insert_with(|| self.by_name())
                        .get(cluster.name.as_str())
                        .copied(),
                };
                ClusterState::carried(previous, endpoints, cluster.load_balancer)
            })
            .collect();
        Live { snapshot, clusters }
    }

    /// This snapshot's cluster states and endpoints by cluster name.
    fn by_name(&self) -> ByName<'_> {
        self.snapshot
            .clusters
            .iter()
            .zip(&self.clusters)
            .map(|(cluster, state)| {
                let endpoints = self.snapshot.endpoints_of(cluster);
                (
                    cluster.name.as_str(),
                    (state, endpoints, cluster.load_balancer),
                )
            })
            .collect()
    }

    /// `cluster` (from this snapshot's routes) with its endpoints and state; None for a
    /// cluster of another snapshot, whose id means nothing here.
    pub fn cluster<'a>(&'a self, cluster: &'a Cluster) -> Option<LiveCluster<'a>> {
        let ours = self.snapshot.clusters.get(cluster.id)?;
        if !std::ptr::eq(&**ours, cluster) {
            return None;
        }
        Some(LiveCluster {
            cluster,
            endpoints: self.snapshot.endpoints.get(cluster.id)?,
            state: self.clusters.get(cluster.id)?,
        })
    }
}

impl ClusterState {
    /// The state of a cluster now serving `endpoints`, from its state over `before` in
    /// the previous snapshot if it was there.
    fn carried(
        previous: Option<Previous<'_>>,
        endpoints: &[SocketAddr],
        balancer: LoadBalancer,
    ) -> Arc<ClusterState> {
        match previous {
            // Same endpoints in the same order and the same balancer (its hash table
            // follows both): the whole state stays as it is.
            Some((state, before, was))
                if was == balancer && (std::ptr::eq(before, endpoints) || before == endpoints) =>
            {
                Arc::clone(state)
            }
            Some((state, before, _)) => Arc::new(state.moved_to(before, endpoints)),
            None => Arc::new(ClusterState::fresh(endpoints.len())),
        }
    }

    fn fresh(endpoints: usize) -> ClusterState {
        ClusterState {
            endpoints: (0..endpoints).map(|_| Arc::default()).collect(),
            ..ClusterState::default()
        }
    }

    /// The same cluster over a changed endpoint list: endpoints that stayed keep their
    /// state (wherever they moved in the list), new ones start fresh.
    fn moved_to(&self, before: &[SocketAddr], after: &[SocketAddr]) -> ClusterState {
        let kept: HashMap<SocketAddr, &Arc<EndpointState>> =
            before.iter().copied().zip(&self.endpoints).collect();
        ClusterState {
            breakers: Arc::clone(&self.breakers),
            stats: Arc::clone(&self.stats),
            round_robin: Arc::clone(&self.round_robin),
            endpoints: after
                .iter()
                .map(|addr| kept.get(addr).map_or_else(Arc::default, |s| Arc::clone(s)))
                .collect(),
            hash_table: OnceLock::new(),
        }
    }
}

#[cfg(test)]
mod tests;
