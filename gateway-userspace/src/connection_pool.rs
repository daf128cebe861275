//! A cluster's connection pool limits (DestinationRule `trafficPolicy.connectionPool`)
//! and the circuit breakers that enforce them, as Istio translates them for Envoy:
//! `tcp.maxConnections` → `max_connections`, `http.http1MaxPendingRequests` →
//! `max_pending_requests`, `http.http2MaxRequests` → `max_requests` (every request in
//! flight, whatever the protocol), `http.maxRetries` → `max_retries` (retries in flight),
//! `http.maxRequestsPerConnection` and `http.idleTimeout` on each upstream connection.
//! Unset limits are unlimited, as Istio leaves them. A request over a limit is answered
//! 503 with flag `UO` (Envoy's upstream overflow); a retry over `maxRetries` is not made.
//!
//! The counters are per cluster and shared by every worker thread (Envoy's circuit
//! breakers are per cluster across its workers, too), while the connections themselves
//! are pooled per worker. A reload builds new clusters whose counters start at zero.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use serde::Serialize;

/// Idle upstream connections are closed after this long when the rule sets no
/// `http.idleTimeout` (Envoy's default is 1 h; upstream servers usually close sooner,
/// nginx after 75 s, so a connection older than that is likely dead).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// The limits of one cluster's connection pool.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionPool {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http1_max_pending_requests: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http2_max_requests: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_requests_per_connection: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "seconds")]
    pub idle_timeout: Option<Duration>,
}

impl ConnectionPool {
    pub fn is_unlimited(&self) -> bool {
        self == &ConnectionPool::default()
    }

    pub fn idle_timeout(&self) -> Duration {
        self.idle_timeout.unwrap_or(DEFAULT_IDLE_TIMEOUT)
    }
}

fn seconds<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_str(&format!("{}s", d.as_secs_f64())),
        None => s.serialize_none(),
    }
}

/// What a cluster has in flight, across worker threads.
#[derive(Debug, Default)]
pub struct CircuitBreakers {
    connections: AtomicUsize,
    pending: AtomicUsize,
    requests: AtomicUsize,
    retries: AtomicUsize,
}

#[derive(Clone, Copy, Debug)]
enum Resource {
    Connection,
    Pending,
    Request,
    Retry,
}

/// One unit of a resource, given back when dropped.
#[derive(Debug)]
pub struct Slot {
    breakers: Arc<CircuitBreakers>,
    resource: Resource,
}

impl CircuitBreakers {
    fn counter(&self, resource: Resource) -> &AtomicUsize {
        match resource {
            Resource::Connection => &self.connections,
            Resource::Pending => &self.pending,
            Resource::Request => &self.requests,
            Resource::Retry => &self.retries,
        }
    }

    fn take(self: &Arc<Self>, resource: Resource, max: Option<u32>) -> Option<Slot> {
        let counter = self.counter(resource);
        match max {
            None => {
                counter.fetch_add(1, Ordering::Relaxed);
            }
            Some(max) => {
                let max = max as usize;
                counter
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                        (n < max).then_some(n + 1)
                    })
                    .ok()?;
            }
        }
        Some(Slot {
            breakers: self.clone(),
            resource,
        })
    }

    /// A new upstream connection, if `max_connections` allows one.
    pub fn connection(self: &Arc<Self>, pool: &ConnectionPool) -> Option<Slot> {
        self.take(Resource::Connection, pool.max_connections)
    }

    /// A connection beyond the limit: Envoy opens one anyway when the worker has none to
    /// the endpoint, so its queued requests are not stranded by other workers' connections.
    pub fn connection_anyway(self: &Arc<Self>) -> Slot {
        self.counter(Resource::Connection)
            .fetch_add(1, Ordering::Relaxed);
        Slot {
            breakers: self.clone(),
            resource: Resource::Connection,
        }
    }

    /// A place among the requests waiting for a connection.
    pub fn pending(self: &Arc<Self>, pool: &ConnectionPool) -> Option<Slot> {
        self.take(Resource::Pending, pool.http1_max_pending_requests)
    }

    /// A request in flight (until its response ends); unlike Envoy, which counts a
    /// request once it has a connection, one queued for a connection counts too.
    pub fn request(self: &Arc<Self>, pool: &ConnectionPool) -> Option<Slot> {
        self.take(Resource::Request, pool.http2_max_requests)
    }

    /// A retry in flight.
    pub fn retry(self: &Arc<Self>, pool: &ConnectionPool) -> Option<Slot> {
        self.take(Resource::Retry, pool.max_retries)
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.breakers
            .counter(self.resource)
            .fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_given_back_when_slots_drop() {
        let breakers = Arc::new(CircuitBreakers::default());
        let pool = ConnectionPool {
            http2_max_requests: Some(2),
            ..ConnectionPool::default()
        };
        let first = breakers.request(&pool);
        let second = breakers.request(&pool);
        assert!(first.is_some() && second.is_some());
        assert!(breakers.request(&pool).is_none(), "third overflows");
        drop(first);
        assert!(breakers.request(&pool).is_some());
        // Unset limits never overflow.
        let slots: Vec<_> = (0..100)
            .filter_map(|_| breakers.connection(&pool))
            .collect();
        assert_eq!(slots.len(), 100);
        assert_eq!(breakers.connections(), 100);
        drop(slots);
        assert_eq!(breakers.connections(), 0);
    }
}
