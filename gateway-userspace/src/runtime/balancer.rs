//! Endpoint choice: the cluster's load balancer over its endpoints, skipping ejected ones
//! and the ones a retry already tried; and outlier detection's bookkeeping.

use std::{
    net::SocketAddr,
    sync::{OnceLock, atomic::Ordering},
    time::Instant,
};

use super::{EndpointState, LiveCluster, hash_ring::HashTable};
use crate::snapshot::LoadBalancer;

impl<'a> LiveCluster<'a> {
    /// One endpoint by the load balancer; None when there are none (503).
    pub fn pick(&self) -> Option<PickedEndpoint<'a>> {
        self.pick_avoiding(&[], None)
    }

    /// One endpoint by the load balancer, skipping ejected endpoints (all of them are
    /// candidates again when every one is ejected, as Envoy's panic threshold does) and,
    /// while others are left, the endpoints this request already tried: Istio's retries
    /// carry Envoy's `previous_hosts` predicate. A hashing cluster takes the endpoint that
    /// owns `hash` in its table, else the next one in table order that qualifies (only
    /// the left-out endpoint's keys move); without a key it picks at random, as Envoy.
    /// The returned guard counts the request as in flight until it is dropped.
    pub fn pick_avoiding(&self, tried: &[usize], hash: Option<u64>) -> Option<PickedEndpoint<'a>> {
        let count = self.endpoints.len();
        if count == 0 {
            return None;
        }
        let state = |i: usize| self.state.endpoints.get(i);
        // Read only for an endpoint ever ejected (0: never was): no clock read per pick
        // on a cluster without outlier ejections.
        let now = std::cell::OnceCell::new();
        let healthy = |i: usize| {
            state(i).is_none_or(|s| {
                let until = s.ejected_until_ms.load(Ordering::Relaxed);
                until == 0 || until <= *now.get_or_init(now_ms)
            })
        };
        let fresh = |i: usize| !tried.contains(&i);
        // The strictest filter that leaves someone: healthy and untried, healthy, anyone.
        let any_fresh_healthy = (0..count).any(|i| healthy(i) && fresh(i));
        let any_healthy = any_fresh_healthy || (0..count).any(healthy);
        let candidate = |i: usize| {
            if any_fresh_healthy {
                healthy(i) && fresh(i)
            } else {
                !any_healthy || healthy(i)
            }
        };
        let index = match self.cluster.load_balancer {
            _ if count == 1 => 0,
            LoadBalancer::RoundRobin => {
                let start = self.state.round_robin.fetch_add(1, Ordering::Relaxed);
                (0..count)
                    .map(|k| (start + k) % count)
                    .find(|&i| candidate(i))
                    .unwrap_or(start % count)
            }
            LoadBalancer::RingHash { .. } | LoadBalancer::Maglev { .. }
                if let Some(key) = hash
                    && let Some(table) = self.hash_table() =>
            {
                let mut owners = table.candidates(key);
                let first = owners.next().unwrap_or(0);
                std::iter::once(first)
                    .chain(owners)
                    .find(|&i| candidate(i))
                    .unwrap_or(first)
            }
            LoadBalancer::Random | LoadBalancer::RingHash { .. } | LoadBalancer::Maglev { .. } => {
                let start = fastrand::usize(..count);
                (0..count)
                    .map(|k| (start + k) % count)
                    .find(|&i| candidate(i))
                    .unwrap_or(start)
            }
            LoadBalancer::LeastRequest => {
                // Power of two choices among candidates.
                let active = |i: usize| state(i).map_or(0, |s| s.active.load(Ordering::Relaxed));
                let first = fastrand::usize(..count);
                let second = (first + 1 + fastrand::usize(..count - 1)) % count;
                match (candidate(first), candidate(second)) {
                    (true, true) if active(second) < active(first) => second,
                    (true, _) => first,
                    (false, true) => second,
                    (false, false) => (0..count).find(|&i| candidate(i)).unwrap_or(first),
                }
            }
        };
        let addr = *self.endpoints.get(index)?;
        let endpoint = state(index);
        if let Some(endpoint) = endpoint {
            endpoint.active.fetch_add(1, Ordering::Relaxed);
        }
        Some(PickedEndpoint {
            cluster: *self,
            endpoint,
            index,
            addr,
        })
    }

    fn hash_table(&self) -> Option<&'a HashTable> {
        let endpoints = self.endpoints;
        let balancer = self.cluster.load_balancer;
        self.state
            .hash_table
            .get_or_init(|| HashTable::build(balancer, endpoints))
            .as_ref()
    }

    /// Records an answer from (or a failure to reach) an endpoint for outlier detection.
    fn record(&self, endpoint: &EndpointState, failed: bool) {
        let Some(policy) = &self.cluster.outlier_detection else {
            return;
        };
        if !failed {
            endpoint.consecutive_errors.store(0, Ordering::Relaxed);
            return;
        }
        let errors = endpoint.consecutive_errors.fetch_add(1, Ordering::Relaxed) + 1;
        if policy.consecutive_errors == 0 || errors < policy.consecutive_errors {
            return;
        }
        let now = now_ms();
        let ejected = self
            .state
            .endpoints
            .iter()
            .filter(|s| s.ejected_until_ms.load(Ordering::Relaxed) > now)
            .count();
        let limit =
            (self.state.endpoints.len() * policy.max_ejection_percent as usize).div_ceil(100);
        if ejected < limit {
            let until = now + u64::try_from(policy.base_ejection_time.as_millis()).unwrap_or(0);
            endpoint.ejected_until_ms.store(until, Ordering::Relaxed);
            endpoint.consecutive_errors.store(0, Ordering::Relaxed);
        }
    }
}

/// An endpoint chosen for one try; counts as in flight while alive.
pub struct PickedEndpoint<'a> {
    cluster: LiveCluster<'a>,
    endpoint: Option<&'a std::sync::Arc<EndpointState>>,
    index: usize,
    pub addr: SocketAddr,
}

impl PickedEndpoint<'_> {
    /// The endpoint's position in its cluster (what `pick_avoiding` takes).
    pub fn index(&self) -> usize {
        self.index
    }

    /// Outlier detection's input: a 5xx or a failure to connect counts against the endpoint.
    pub fn record(&self, failed: bool) {
        if let Some(endpoint) = self.endpoint {
            self.cluster.record(endpoint, failed);
        }
    }
}

impl Drop for PickedEndpoint<'_> {
    fn drop(&mut self) {
        if let Some(endpoint) = self.endpoint {
            endpoint.active.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Milliseconds since the first call: a monotonic clock that fits in an atomic.
fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = EPOCH.get_or_init(Instant::now);
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
}
