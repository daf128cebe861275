//! The compiled, immutable configuration that everything downstream of `compile` reads:
//! the proxy (listeners, route tables, clusters) and the kernel loader (ports).
//! A new one is built away from the hot path and swapped in whole.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use serde::Serialize;

use crate::route_table::RouteTable;

#[derive(Debug, Default, Serialize)]
pub struct Snapshot {
    pub listeners: Vec<Listener>,
    /// What the kernel programs are told; derived from `listeners`.
    pub kernel: KernelPolicy,
}

#[derive(Debug, Serialize)]
pub struct Listener {
    /// The Gateway's port number (the Service port).
    pub port: u16,
    /// Where the socket binds: the targetPort of our own Service, else `port`.
    pub bind_port: u16,
    /// The nodePort our Service maps to `port`, for node-port mode.
    pub node_port: Option<u16>,
    pub protocol: Protocol,
    /// `Gateway namespace/name` of each server merged into this listener.
    pub servers: Vec<String>,
    pub routes: RouteTable<RouteAction>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    Http,
    Http2,
    Grpc,
}

impl Protocol {
    pub fn parse(protocol: &str) -> Option<Self> {
        match protocol.to_ascii_uppercase().as_str() {
            "HTTP" => Some(Protocol::Http),
            "HTTP2" => Some(Protocol::Http2),
            "GRPC" | "GRPC-WEB" => Some(Protocol::Grpc),
            _ => None,
        }
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum RouteAction {
    /// Proxy to one of these clusters, chosen by weight.
    Forward(Vec<WeightedCluster>),
    /// The route asks for something the data plane does not do yet; answered with 501
    /// rather than silently proxying a request the user meant to be handled otherwise.
    Unsupported(String),
}

#[derive(Debug, Serialize)]
pub struct WeightedCluster {
    pub weight: u32,
    pub cluster: Arc<Cluster>,
}

/// A service port and its ready endpoints, named as Envoy names clusters
/// (`outbound|8000||httpbin.default.svc.cluster.local`) so metrics and logs read alike.
#[derive(Debug, Serialize)]
pub struct Cluster {
    pub name: String,
    /// The destination host as Istio reports it (`httpbin.default.svc.cluster.local`).
    pub service: String,
    pub service_name: String,
    pub service_namespace: String,
    pub endpoints: Vec<SocketAddr>,
    #[serde(skip)]
    next: AtomicUsize,
}

impl Cluster {
    pub fn new(
        service: String,
        service_name: String,
        service_namespace: String,
        port: u16,
        endpoints: Vec<SocketAddr>,
    ) -> Self {
        Cluster {
            name: format!("outbound|{port}||{service}"),
            service,
            service_name,
            service_namespace,
            endpoints,
            next: AtomicUsize::new(0),
        }
    }

    /// Round-robin over the ready endpoints; None when there are none (503).
    pub fn pick(&self) -> Option<SocketAddr> {
        if self.endpoints.is_empty() {
            return None;
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        self.endpoints.get(n % self.endpoints.len()).copied()
    }
}

impl RouteAction {
    /// Picks a cluster by weight (uniform when all weights are zero).
    pub fn pick_cluster(clusters: &[WeightedCluster]) -> Option<&Arc<Cluster>> {
        let total: u64 = clusters.iter().map(|c| u64::from(c.weight)).sum();
        if total == 0 {
            return clusters
                .get(fastrand::usize(..clusters.len().max(1)))
                .map(|c| &c.cluster);
        }
        let mut ticket = fastrand::u64(..total);
        for c in clusters {
            let weight = u64::from(c.weight);
            if ticket < weight {
                return Some(&c.cluster);
            }
            ticket -= weight;
        }
        None
    }
}

/// The kernel's view of the snapshot.
#[derive(Debug, Default, Serialize, PartialEq, Eq)]
pub struct KernelPolicy {
    /// Ports the programs count and (later) police: every listener's bind port.
    pub ports: Vec<u16>,
}
