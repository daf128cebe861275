//! What every connection handler shares: the live configuration, the metrics, the
//! access log's format, the limits, the connection limit.

use std::sync::Arc;

use arc_swap::ArcSwap;

use super::{access_log::AccessLogFormat, limits::Limits};
use crate::{
    connections::ConnectionLimit,
    metrics::{Metrics, RequestStatsCache},
    runtime::Live,
};

/// What every connection handler shares.
pub struct ProxyContext {
    /// The configuration and cluster state every request reads (swapped by reloads).
    pub live: Arc<ArcSwap<Live>>,
    pub metrics: Arc<Metrics>,
    pub access_log: AccessLogFormat,
    /// Timeouts and the body limit (set with `with_limits`).
    pub limits: Limits,
    /// Request metrics of the answers no cluster gave (404, direct responses, ...).
    pub(super) local_stats: RequestStatsCache,
    /// Open downstream connections, all listeners and workers (`--max-connections`).
    pub connections: Arc<ConnectionLimit>,
    /// `--num-trusted-proxies`: how the client address is read from x-forwarded-for
    /// for AuthorizationPolicy (`proxy/authz.rs`).
    pub num_trusted_proxies: usize,
    /// `--http1-server`: which HTTP/1 server answers downstream connections.
    pub http1_server: super::http1::Http1Server,
    /// `--http1-client`: which HTTP/1 client carries requests to HTTP/1.1 upstreams.
    pub http1_client: super::http1::Http1Client,
    /// `--path-normalization`: Istio's mesh `pathNormalization` (`normalize.rs`).
    pub path_normalization: super::PathNormalization,
}

impl ProxyContext {
    pub fn new(
        live: Arc<ArcSwap<Live>>,
        metrics: Arc<Metrics>,
        access_log: AccessLogFormat,
    ) -> Self {
        ProxyContext {
            connections: ConnectionLimit::unlimited(&metrics),
            live,
            metrics,
            access_log,
            limits: Limits::default(),
            local_stats: Default::default(),
            num_trusted_proxies: 0,
            http1_server: Default::default(),
            http1_client: Default::default(),
            path_normalization: Default::default(),
        }
    }

    pub fn with_num_trusted_proxies(mut self, hops: usize) -> Self {
        self.num_trusted_proxies = hops;
        self
    }

    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Which HTTP/1 server answers downstream connections (`--http1-server`).
    pub fn with_http1_server(mut self, server: super::http1::Http1Server) -> Self {
        self.http1_server = server;
        self
    }

    /// Which HTTP/1 client carries requests to HTTP/1.1 upstreams (`--http1-client`).
    pub fn with_http1_client(mut self, client: super::http1::Http1Client) -> Self {
        self.http1_client = client;
        self
    }

    /// How request paths are normalized before routing (`--path-normalization`).
    pub fn with_path_normalization(mut self, paths: super::PathNormalization) -> Self {
        self.path_normalization = paths;
        self
    }

    /// Serve at most `max` downstream connections at once.
    pub fn with_connection_limit(mut self, max: usize) -> Self {
        self.connections = ConnectionLimit::for_metrics(max, &self.metrics);
        self
    }
}
