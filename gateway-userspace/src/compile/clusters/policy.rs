//! DestinationRules applied to clusters: which rule a host has, its subsets, and its
//! traffic policy (load balancer, consistent hash, outlier detection, connection pool,
//! TLS origination), the subset's over the port's over the rule's, as Istio merges them.

use super::{
    super::{
        CLUSTER_DOMAIN, index::Index, name_of, routes::parse_duration, sink::Sink,
        tls::CompiledCredentials, upstream_tls::upstream_tls,
    },
    resolve_service_host,
};
use crate::{
    config::{
        Diagnostic, Kind, Sourced,
        resources::{
            DestinationRule, Labels,
            istio::{ConsistentHash, SimpleLoadBalancer},
        },
    },
    connection_pool::ConnectionPool,
    runtime::hash_ring::{DEFAULT_MAGLEV_TABLE_SIZE, DEFAULT_MINIMUM_RING_SIZE},
    snapshot::{Cluster, HashPolicy, LoadBalancer, OutlierDetection},
};

/// Envoy's outlier-detection defaults, which Istio keeps for fields a rule leaves out.
const DEFAULT_CONSECUTIVE_ERRORS: u32 = 5;
const DEFAULT_BASE_EJECTION_TIME: std::time::Duration = std::time::Duration::from_secs(30);
const DEFAULT_MAX_EJECTION_PERCENT: u32 = 10;

impl<'a> Index<'a> {
    /// The DestinationRule for a host (FQDN or ServiceEntry host): the one in the host's
    /// namespace wins over others, as Istio prefers; then the oldest.
    pub(super) fn destination_rule(&self, host: &str) -> Option<&'a Sourced<DestinationRule>> {
        let resources: &'a crate::config::Resources = self.resources;
        let matching = resources.destination_rules.iter().filter(|dr| {
            let (name, namespace) =
                resolve_service_host(&dr.resource.spec.host, dr.resource.metadata.namespace());
            let fqdn = format!("{name}.{namespace}.{CLUSTER_DOMAIN}");
            fqdn == host || dr.resource.spec.host.eq_ignore_ascii_case(host)
        });
        let host_namespace = host.split('.').nth(1).unwrap_or_default();
        let mut first = None;
        for dr in matching {
            if dr.resource.metadata.namespace() == host_namespace {
                return Some(dr);
            }
            first.get_or_insert(dr);
        }
        first
    }

    /// The labels of a DestinationRule subset, or why there are none.
    pub(super) fn subset_labels(&self, host: &str, subset: &str) -> Result<Labels, String> {
        let Some(rule) = self.destination_rule(host) else {
            return Err(format!(
                "subset {subset:?} needs a DestinationRule for {host}, and there is none"
            ));
        };
        rule.resource
            .spec
            .subsets
            .iter()
            .find(|s| s.name == subset)
            .map(|s| s.labels.clone())
            .ok_or_else(|| {
                let have: Vec<&str> = rule
                    .resource
                    .spec
                    .subsets
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect();
                format!(
                    "DestinationRule {} has no subset {subset:?} (it has {have:?})",
                    name_of(&rule.resource.metadata)
                )
            })
    }
}

/// The DestinationRule's load balancer and outlier detection for this cluster: the
/// subset's policy over the port-level one over the rule's, as Istio merges them.
/// Without a rule, Istio's defaults (least request, no ejection).
pub(super) fn apply_traffic_policy(
    ix: &Index<'_>,
    sink: &mut Sink,
    credentials: &mut CompiledCredentials,
    cluster: &mut Cluster,
) {
    let Some(rule) = ix.destination_rule(&cluster.service) else {
        return;
    };
    // outbound|PORT|SUBSET|HOST
    let mut parts = cluster.name.split('|').skip(1);
    let port: Option<u32> = parts.next().and_then(|p| p.parse().ok());
    let subset = parts.next().filter(|s| !s.is_empty());
    cluster.tls = upstream_tls(ix, sink, credentials, rule, cluster, port, subset);
    let spec = &rule.resource.spec;
    let top = spec.traffic_policy.as_ref();
    let port_level = top.and_then(|t| {
        t.port_level_settings
            .iter()
            .find(|p| p.port.as_ref().map(|s| s.number) == port)
    });
    let subset_policy = subset
        .and_then(|name| spec.subsets.iter().find(|s| s.name == name))
        .and_then(|s| s.traffic_policy.as_ref());
    let load_balancer = subset_policy
        .and_then(|t| t.load_balancer.as_ref())
        .or(port_level.and_then(|p| p.load_balancer.as_ref()))
        .or(top.and_then(|t| t.load_balancer.as_ref()));
    if let Some(simple) = load_balancer.and_then(|lb| lb.simple) {
        cluster.load_balancer = match simple {
            SimpleLoadBalancer::Random => LoadBalancer::Random,
            SimpleLoadBalancer::RoundRobin => LoadBalancer::RoundRobin,
            _ => LoadBalancer::LeastRequest,
        };
    }
    if let Some(hash) = load_balancer.and_then(|lb| lb.consistent_hash.as_ref()) {
        let (balancer, policy) = consistent_hash(sink, rule, hash);
        cluster.load_balancer = balancer;
        cluster.hash_policy = policy;
    }
    let outlier = subset_policy
        .and_then(|t| t.outlier_detection.as_ref())
        .or(port_level.and_then(|p| p.outlier_detection.as_ref()))
        .or(top.and_then(|t| t.outlier_detection.as_ref()));
    if let Some(outlier) = outlier {
        let base_ejection_time = match outlier.base_ejection_time.as_deref().map(parse_duration) {
            Some(Ok(d)) => d,
            Some(Err(message)) => {
                sink.push(
                    Diagnostic::error(message)
                        .at(rule.location.clone())
                        .object(&rule.resource.object_ref())
                        .field("spec.trafficPolicy.outlierDetection.baseEjectionTime"),
                );
                DEFAULT_BASE_EJECTION_TIME
            }
            None => DEFAULT_BASE_EJECTION_TIME,
        };
        cluster.outlier_detection = Some(OutlierDetection {
            consecutive_errors: outlier
                .consecutive_5xx_errors
                .or(outlier.consecutive_errors)
                .or(outlier.consecutive_gateway_errors)
                .unwrap_or(DEFAULT_CONSECUTIVE_ERRORS),
            base_ejection_time,
            max_ejection_percent: outlier
                .max_ejection_percent
                .unwrap_or(DEFAULT_MAX_EJECTION_PERCENT)
                .min(100),
        });
    }
    let pool = subset_policy
        .and_then(|t| t.connection_pool.as_ref())
        .or(port_level.and_then(|p| p.connection_pool.as_ref()))
        .or(top.and_then(|t| t.connection_pool.as_ref()));
    let (tcp, http) = (
        pool.and_then(|p| p.tcp.as_ref()),
        pool.and_then(|p| p.http.as_ref()),
    );
    // Istio applies only positive limits; zero leaves Envoy's (unlimited) default.
    let positive = |n: Option<u32>| n.filter(|&n| n > 0);
    cluster.connection_pool = ConnectionPool {
        max_connections: positive(tcp.and_then(|t| t.max_connections)),
        http1_max_pending_requests: positive(http.and_then(|h| h.http1_max_pending_requests)),
        http2_max_requests: positive(http.and_then(|h| h.http2_max_requests)),
        max_requests_per_connection: positive(http.and_then(|h| h.max_requests_per_connection)),
        max_retries: positive(http.and_then(|h| h.max_retries)),
        idle_timeout: None,
    };
    match http
        .and_then(|h| h.idle_timeout.as_deref())
        .map(parse_duration)
    {
        Some(Ok(timeout)) if !timeout.is_zero() => {
            cluster.connection_pool.idle_timeout = Some(timeout);
        }
        Some(Ok(_)) | None => {}
        Some(Err(message)) => sink.push(
            Diagnostic::error(message)
                .at(rule.location.clone())
                .object(&rule.resource.object_ref())
                .field("spec.trafficPolicy.connectionPool.http.idleTimeout"),
        ),
    }
    let connect_timeout = tcp.and_then(|tcp| tcp.connect_timeout.as_deref());
    match connect_timeout.map(parse_duration) {
        Some(Ok(timeout)) if !timeout.is_zero() => cluster.connect_timeout = timeout,
        Some(result) => sink.push(
            Diagnostic::error(result.err().unwrap_or_else(|| {
                "a zero connect timeout would fail every connection".to_owned()
            }))
            .at(rule.location.clone())
            .object(&rule.resource.object_ref())
            .field("spec.trafficPolicy.connectionPool.tcp.connectTimeout"),
        ),
        None => {}
    }
}

/// `consistentHash` as Istio turns it into Envoy's: `maglev` or `ringHash` when named,
/// else a ring hash of at least the deprecated `minimumRingSize` (1024 when unset);
/// the key is the one field set among header, cookie, source IP and query parameter.
fn consistent_hash(
    sink: &mut Sink,
    rule: &Sourced<DestinationRule>,
    hash: &ConsistentHash,
) -> (LoadBalancer, Option<HashPolicy>) {
    let positive = |n: Option<u64>| n.filter(|&n| n > 0);
    let balancer = if let Some(maglev) = &hash.maglev {
        LoadBalancer::Maglev {
            table_size: positive(maglev.table_size).unwrap_or(DEFAULT_MAGLEV_TABLE_SIZE),
        }
    } else {
        let size = hash
            .ring_hash
            .as_ref()
            .map_or(hash.minimum_ring_size, |ring| ring.minimum_ring_size);
        LoadBalancer::RingHash {
            minimum_ring_size: positive(size).unwrap_or(DEFAULT_MINIMUM_RING_SIZE),
        }
    };
    let policy = if let Some(header) = &hash.http_header_name {
        Some(HashPolicy::Header(header.to_ascii_lowercase()))
    } else if let Some(cookie) = &hash.http_cookie {
        let ttl = match cookie.ttl.as_deref().map(parse_duration) {
            Some(Ok(ttl)) => Some(ttl),
            Some(Err(message)) => {
                sink.push(
                    Diagnostic::error(message)
                        .at(rule.location.clone())
                        .object(&rule.resource.object_ref())
                        .field("loadBalancer.consistentHash.httpCookie.ttl"),
                );
                None
            }
            None => None,
        };
        Some(HashPolicy::Cookie {
            name: cookie.name.clone(),
            path: cookie.path.clone().filter(|p| !p.is_empty()),
            ttl,
        })
    } else if hash.use_source_ip == Some(true) {
        Some(HashPolicy::SourceIp)
    } else {
        hash.http_query_parameter_name
            .clone()
            .map(HashPolicy::QueryParameter)
    };
    (balancer, policy)
}
