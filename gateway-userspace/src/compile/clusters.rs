//! Destinations → clusters: Service host resolution, Service port → EndpointSlice port
//! (or core Endpoints when a Service has no EndpointSlice), ready endpoints; ServiceEntry
//! hosts with static endpoints; DestinationRule subsets.
//!
//! Subsets select endpoints by labels. EndpointSlice endpoints do not carry their pods'
//! labels, so a subset's labels are matched against the labels of the EndpointSlice
//! itself (publish one slice per version, labelled `version: v1`, …) and against
//! ServiceEntry endpoint labels.

use std::{
    collections::{BTreeSet, HashMap},
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use super::{
    CLUSTER_DOMAIN, Compiler, RouteMemo,
    memo::{ClusterNotes, Naming},
    name_of,
    routes::parse_duration,
};
use crate::config::resources::istio::{ConsistentHash, SimpleLoadBalancer};
use crate::connection_pool::ConnectionPool;
use crate::{
    config::{
        Diagnostic, Diagnostics, Kind, Location, ObjectRef, Resources, Sourced,
        cache::ServiceKey,
        resources::{
            Destination, DestinationRule, EndpointSlice, IntOrString, Labels, SERVICE_NAME_LABEL,
            ServiceEntry, VirtualService, istio::Resolution,
        },
    },
    runtime::hash_ring::{DEFAULT_MAGLEV_TABLE_SIZE, DEFAULT_MINIMUM_RING_SIZE},
    snapshot::{
        Cluster, DnsPick, DnsTarget, EndpointSource, HashPolicy, LoadBalancer, OutlierDetection,
        Snapshot, UpstreamProtocol,
    },
};

/// Envoy's outlier-detection defaults, which Istio keeps for fields a rule leaves out.
const DEFAULT_CONSECUTIVE_ERRORS: u32 = 5;
const DEFAULT_BASE_EJECTION_TIME: std::time::Duration = std::time::Duration::from_secs(30);
const DEFAULT_MAX_EJECTION_PERCENT: u32 = 10;

/// A cluster being made: where what is said of it starts in `Compiler::diagnostics`, and
/// the route (location, object, field) that names it; see `memo::ClusterNotes`.
struct Making<'r> {
    said_from: usize,
    at: Option<(Option<&'r Location>, &'r ObjectRef, &'r str)>,
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

impl<'a> Compiler<'a> {
    /// The cluster a destination names; one with no endpoints (503 at request time) when
    /// the Service, its port or its endpoints are missing, with a warning saying which.
    /// The first route of a compile to name a cluster is told what is said of the
    /// cluster (`name_cluster`), whether this compile made it or took it over.
    pub(super) fn cluster(
        &mut self,
        destination: &Destination,
        vs_namespace: &str,
        location: Option<&Location>,
        resource: &ObjectRef,
        field: &str,
    ) -> Arc<Cluster> {
        let cluster = self.find_cluster(destination, vs_namespace, location, resource, field);
        self.clusters.namings.push(Naming {
            cluster: cluster.id,
            field: field.to_owned(),
        });
        if self.first_naming(cluster.id) {
            self.say_of_cluster(cluster.id, location, resource, field);
        }
        cluster
    }

    /// Whether this is the first naming of cluster `id` in this compile (which it marks)
    /// with something to say of the cluster.
    pub(super) fn first_naming(&mut self, id: usize) -> bool {
        match self.clusters.named.get_mut(id) {
            Some(named) if !*named => *named = true,
            _ => return false,
        }
        self.clusters.notes.get(id).is_some_and(|notes| {
            !notes.made.is_empty()
                || !notes.endpoints.is_empty()
                || (notes.when_empty.is_some()
                    && self
                        .clusters
                        .endpoints
                        .get(id)
                        .is_some_and(|e| e.is_empty()))
        })
    }

    /// Says what is said of cluster `id` (`memo::ClusterNotes`) at the route that names
    /// it first.
    pub(super) fn say_of_cluster(
        &mut self,
        id: usize,
        location: Option<&Location>,
        resource: &ObjectRef,
        field: &str,
    ) {
        let Some(notes) = self.clusters.notes.get(id) else {
            return;
        };
        let at_route = |d: Diagnostic| d.at(location.cloned()).object(resource).field(field);
        for (said, at_naming) in &notes.made {
            self.clusters.said.push(match at_naming {
                true => at_route(said.clone()),
                false => said.clone(),
            });
        }
        self.clusters.said.extend(notes.endpoints.iter().cloned());
        if let Some(message) = &notes.when_empty
            && self
                .clusters
                .endpoints
                .get(id)
                .is_some_and(|e| e.is_empty())
        {
            self.clusters
                .said
                .push(at_route(Diagnostic::warning(message.clone())));
        }
    }

    /// The namings of routes taken from the memo for `vs`: the clusters they name first in
    /// this compile are said of there, as when the routes were compiled.
    pub(super) fn name_again(&mut self, vs: &Sourced<VirtualService>, namings: &[Naming]) {
        let mut object = None;
        for naming in namings {
            if self.first_naming(naming.cluster) {
                let object = object.get_or_insert_with(|| vs.resource.object_ref());
                self.say_of_cluster(naming.cluster, vs.location.as_ref(), object, &naming.field);
            }
        }
    }

    fn find_cluster(
        &mut self,
        destination: &Destination,
        vs_namespace: &str,
        location: Option<&Location>,
        resource: &ObjectRef,
        field: &str,
    ) -> Arc<Cluster> {
        let (name, namespace) = resolve_service_host(&destination.host, vs_namespace);
        let fqdn = format!("{name}.{namespace}.{CLUSTER_DOMAIN}");
        let service = self
            .index
            .resources
            .services
            .iter()
            .map(|s| &s.resource)
            .find(|s| s.metadata.name == name && s.metadata.namespace() == namespace);
        let warn = |diagnostics: &mut Diagnostics, message: String| {
            diagnostics.push(
                Diagnostic::warning(message)
                    .at(location.cloned())
                    .object(resource)
                    .field(field.to_owned()),
            );
        };
        if service.is_none()
            && let Some(entry) = self.service_entry(&destination.host)
        {
            return self.service_entry_cluster(entry, destination, location, resource, field);
        }
        let subset_labels = match &destination.subset {
            Some(subset) => match self.subset_labels(&fqdn, subset) {
                Ok(labels) => Some(labels),
                Err(message) => {
                    warn(
                        &mut self.sink.diagnostics,
                        format!("{message}; requests get 503"),
                    );
                    let port = destination.port.as_ref().map_or(0, |p| p.number);
                    let mut cluster = Cluster::new(fqdn.clone(), name, namespace, port as u16);
                    cluster.name = format!("outbound|{port}|{subset}|{fqdn}");
                    return self.intern(cluster);
                }
            },
            None => None,
        };
        let Some(service) = service else {
            warn(
                &mut self.sink.diagnostics,
                format!(
                    "no Service {namespace}/{name} for host {}; requests get 503",
                    destination.host
                ),
            );
            let port = destination.port.as_ref().map_or(0, |p| p.number);
            return self.intern(Cluster::new(fqdn, name, namespace, port as u16));
        };
        let service_port = match &destination.port {
            Some(p) => service.spec.ports.iter().find(|sp| sp.port == p.number),
            None if service.spec.ports.len() == 1 => service.spec.ports.first(),
            None => None,
        };
        let Some(service_port) = service_port else {
            let have: Vec<u32> = service.spec.ports.iter().map(|p| p.port).collect();
            warn(
                &mut self.sink.diagnostics,
                match &destination.port {
                    Some(p) => format!(
                        "Service {namespace}/{name} has no port {} (it has {have:?}); requests get 503",
                        p.number
                    ),
                    None => format!(
                        "Service {namespace}/{name} has ports {have:?}: say which with destination.port.number"
                    ),
                },
            );
            return self.intern(Cluster::new(fqdn, name, namespace, 0));
        };
        let port = u16::try_from(service_port.port).unwrap_or(0);
        let subset = destination.subset.as_deref().unwrap_or_default();
        let key = format!("outbound|{port}|{subset}|{fqdn}");
        if let Some(existing) = self.clusters.by_name.get(&key) {
            return existing.clone();
        }
        let source = EndpointSource::Service {
            namespace: namespace.clone(),
            name: name.clone(),
            port_name: service_port.name.clone(),
            fallback_port: match &service_port.target_port {
                Some(IntOrString::Int(n)) => u16::try_from(*n).ok(),
                Some(IntOrString::String(_)) => None,
                None => Some(port),
            },
            subset_labels,
        };
        let mut read = Diagnostics::default();
        let endpoints = service_endpoints(
            self.index.resources,
            self.index.slices(),
            &source,
            &mut read,
        );
        let which = if subset.is_empty() {
            String::new()
        } else {
            format!(" in subset {subset}")
        };
        let making = Making {
            said_from: self.sink.diagnostics.0.len(),
            at: Some((location, resource, field)),
            endpoints: read.0,
            when_empty: Some(format!(
                "Service {namespace}/{name} port {port} has no ready endpoints{which}; requests get 503"
            )),
        };
        let mut cluster = Cluster::new(fqdn, name, namespace, port);
        cluster.name = key;
        cluster.endpoint_source = source;
        cluster.protocol = UpstreamProtocol::from_service_port(
            service_port.app_protocol.as_deref(),
            &service_port.name,
        );
        self.intern_with(cluster, endpoints, making)
    }

    /// A cluster with no endpoints (its requests get 503), or the one of that name.
    pub(super) fn intern(&mut self, cluster: Cluster) -> Arc<Cluster> {
        let making = Making {
            said_from: self.sink.diagnostics.0.len(),
            at: None,
            endpoints: Vec::new(),
            when_empty: None,
        };
        self.intern_with(cluster, Vec::new(), making)
    }

    /// The cluster of that name if there is one already, else this one with these
    /// endpoints, numbered in the order clusters are first named. What was said in making
    /// it (from `making.said_from`, and its traffic policy's) is taken out of the
    /// diagnostics into its notes, for the route that names it first to say.
    fn intern_with(
        &mut self,
        mut cluster: Cluster,
        endpoints: Vec<SocketAddr>,
        making: Making<'_>,
    ) -> Arc<Cluster> {
        if let Some(existing) = self.clusters.by_name.get(&cluster.name) {
            return existing.clone();
        }
        self.apply_traffic_policy(&mut cluster);
        let made = self
            .sink
            .diagnostics
            .0
            .drain(making.said_from.min(self.sink.diagnostics.0.len())..)
            .map(|d| {
                let at_naming = making.at.is_some_and(|(location, object, field)| {
                    d.location.as_ref() == location
                        && d.object.as_ref() == Some(object)
                        && d.field.as_deref() == Some(field)
                });
                (d, at_naming)
            })
            .collect();
        cluster.id = self.clusters.list.len();
        let cluster = Arc::new(cluster);
        self.clusters
            .by_name
            .insert(cluster.name.clone(), cluster.clone());
        self.clusters.list.push(cluster.clone());
        self.clusters.endpoints.push(endpoints.into());
        self.clusters.named.push(false);
        Arc::make_mut(&mut self.clusters.notes).push(ClusterNotes {
            made,
            endpoints: making.endpoints,
            when_empty: making.when_empty,
        });
        cluster
    }

    /// The DestinationRule's load balancer and outlier detection for this cluster: the
    /// subset's policy over the port-level one over the rule's, as Istio merges them.
    /// Without a rule, Istio's defaults (least request, no ejection).
    fn apply_traffic_policy(&mut self, cluster: &mut Cluster) {
        let Some(rule) = self.destination_rule(&cluster.service) else {
            return;
        };
        // outbound|PORT|SUBSET|HOST
        let mut parts = cluster.name.split('|').skip(1);
        let port: Option<u32> = parts.next().and_then(|p| p.parse().ok());
        let subset = parts.next().filter(|s| !s.is_empty());
        cluster.tls = self.upstream_tls(rule, cluster, port, subset);
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
            let (balancer, policy) = self.consistent_hash(rule, hash);
            cluster.load_balancer = balancer;
            cluster.hash_policy = policy;
        }
        let outlier = subset_policy
            .and_then(|t| t.outlier_detection.as_ref())
            .or(port_level.and_then(|p| p.outlier_detection.as_ref()))
            .or(top.and_then(|t| t.outlier_detection.as_ref()));
        if let Some(outlier) = outlier {
            let base_ejection_time = match outlier.base_ejection_time.as_deref().map(parse_duration)
            {
                Some(Ok(d)) => d,
                Some(Err(message)) => {
                    self.sink.push(
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
            Some(Err(message)) => self.sink.push(
                Diagnostic::error(message)
                    .at(rule.location.clone())
                    .object(&rule.resource.object_ref())
                    .field("spec.trafficPolicy.connectionPool.http.idleTimeout"),
            ),
        }
        let connect_timeout = tcp.and_then(|tcp| tcp.connect_timeout.as_deref());
        match connect_timeout.map(parse_duration) {
            Some(Ok(timeout)) if !timeout.is_zero() => cluster.connect_timeout = timeout,
            Some(result) => self.sink.push(
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

    /// The ServiceEntry whose `hosts` hold this host (exactly, or by a `*.` wildcard).
    fn service_entry(&self, host: &str) -> Option<&'a Sourced<ServiceEntry>> {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let resources: &'a crate::config::Resources = self.index.resources;
        resources
            .service_entries
            .iter()
            .find(|e| {
                e.resource
                    .spec
                    .hosts
                    .iter()
                    .any(|h| h.eq_ignore_ascii_case(&host))
            })
            .or_else(|| {
                resources.service_entries.iter().find(|e| {
                    e.resource.spec.hosts.iter().any(|h| {
                        h.strip_prefix('*').is_some_and(|s| {
                            host.len() > s.len() && host.ends_with(&s.to_ascii_lowercase())
                        })
                    })
                })
            })
    }

    /// A ServiceEntry destination: its port by number (or its only port), static endpoint
    /// addresses with their per-port-name target ports, subsets by endpoint labels.
    fn service_entry_cluster(
        &mut self,
        entry: &Sourced<ServiceEntry>,
        destination: &Destination,
        location: Option<&Location>,
        resource: &ObjectRef,
        field: &str,
    ) -> Arc<Cluster> {
        let spec = &entry.resource.spec;
        let namespace = entry.resource.metadata.namespace().to_owned();
        let host = destination.host.trim_end_matches('.').to_ascii_lowercase();
        let warn = |diagnostics: &mut Diagnostics, message: String| {
            diagnostics.push(
                Diagnostic::warning(message)
                    .at(location.cloned())
                    .object(resource)
                    .field(field.to_owned()),
            );
        };
        let entry_port = match &destination.port {
            Some(p) => spec.ports.iter().find(|sp| sp.number == p.number),
            None if spec.ports.len() == 1 => spec.ports.first(),
            None => None,
        };
        let subset = destination.subset.clone().unwrap_or_default();
        let Some(entry_port) = entry_port else {
            let have: Vec<u32> = spec.ports.iter().map(|p| p.number).collect();
            warn(
                &mut self.sink.diagnostics,
                format!(
                    "ServiceEntry {} has no port {} (it has {have:?}); requests get 503",
                    name_of(&entry.resource.metadata),
                    destination
                        .port
                        .as_ref()
                        .map_or("(none given)".to_owned(), |p| p.number.to_string())
                ),
            );
            return self.intern(Cluster::new(host.clone(), host, namespace, 0));
        };
        let port = u16::try_from(entry_port.number).unwrap_or(0);
        let key = format!("outbound|{port}|{subset}|{host}");
        if let Some(existing) = self.clusters.by_name.get(&key) {
            return existing.clone();
        }
        // From here on, what is said is said of the cluster being made.
        let making = Making {
            said_from: self.sink.diagnostics.0.len(),
            at: Some((location, resource, field)),
            endpoints: Vec::new(),
            when_empty: None,
        };
        let subset_labels = if subset.is_empty() {
            None
        } else {
            match self.subset_labels(&host, &subset) {
                Ok(labels) => Some(labels),
                Err(message) => {
                    warn(
                        &mut self.sink.diagnostics,
                        format!("{message}; requests get 503"),
                    );
                    let mut cluster = Cluster::new(host.clone(), host, namespace, port);
                    cluster.name = key;
                    return self.intern_with(cluster, Vec::new(), making);
                }
            }
        };
        let default_target = entry_port.target_port.unwrap_or(entry_port.number);
        let resolution = spec.resolution.unwrap_or(Resolution::None);
        let resolves = matches!(resolution, Resolution::Dns | Resolution::DnsRoundRobin);
        let entry_name = name_of(&entry.resource.metadata);
        let mut endpoints = Vec::new();
        let mut names = Vec::new();
        for workload in &spec.endpoints {
            if subset_labels
                .as_ref()
                .is_some_and(|want| !workload.labels.contains_all(want))
            {
                continue;
            }
            let target = workload
                .ports
                .get(&entry_port.name)
                .copied()
                .unwrap_or(default_target);
            let Ok(target) = u16::try_from(target) else {
                warn(
                    &mut self.sink.diagnostics,
                    format!(
                        "ServiceEntry {entry_name} endpoint {:?}: port {target} is out of range; skipped",
                        workload.address
                    ),
                );
                continue;
            };
            match workload.address.parse::<IpAddr>() {
                Ok(ip) => endpoints.push(SocketAddr::new(ip, target)),
                Err(_) if resolves && is_dns_name(&workload.address) => names.push(DnsTarget {
                    name: dns_name(&workload.address),
                    port: target,
                }),
                Err(_) => warn(
                    &mut self.sink.diagnostics,
                    format!(
                        "ServiceEntry {entry_name} endpoint {:?}: only IP addresses are served with resolution {resolution:?} (DNS and DNS_ROUND_ROBIN resolve names); skipped",
                        workload.address
                    ),
                ),
            }
        }
        let target = u16::try_from(default_target).unwrap_or(port);
        let mut explained = false;
        if spec.endpoints.is_empty() && resolves {
            // Istio makes the host its one endpoint, for Envoy to resolve; `addresses`
            // are the VIPs sidecars capture, not endpoints.
            match host.parse::<IpAddr>() {
                Ok(ip) => endpoints.push(SocketAddr::new(ip, target)),
                Err(_) if is_dns_name(&host) => names.push(DnsTarget {
                    name: dns_name(&host),
                    port: target,
                }),
                Err(_) => {
                    warn(
                        &mut self.sink.diagnostics,
                        format!(
                            "ServiceEntry {entry_name}: {host} is a wildcard, which names no address to resolve; requests get 503"
                        ),
                    );
                    explained = true;
                }
            }
        } else if spec.endpoints.is_empty() {
            // Literal IP hosts (and `addresses`) are served as they are.
            for address in spec.hosts.iter().chain(&spec.addresses) {
                if let Ok(ip) = address.parse::<IpAddr>() {
                    endpoints.push(SocketAddr::new(ip, target));
                }
            }
            if endpoints.is_empty() && resolution == Resolution::None {
                // Istio gives gateways no original-destination clusters (a gateway is the
                // connection's original destination): NONE serves the entry's endpoints.
                warn(
                    &mut self.sink.diagnostics,
                    format!(
                        "ServiceEntry {entry_name}: resolution NONE at a gateway serves the entry's endpoints only, as Istio does, and {host} has none; set resolution: DNS to have it looked up; requests get 503"
                    ),
                );
                explained = true;
            }
        }
        endpoints.sort_unstable();
        endpoints.dedup();
        if resolution == Resolution::DnsRoundRobin && names.len() + endpoints.len() > 1 {
            // Envoy's LOGICAL_DNS clusters have exactly one endpoint; Istio refuses more.
            warn(
                &mut self.sink.diagnostics,
                format!(
                    "ServiceEntry {entry_name}: DNS_ROUND_ROBIN takes one endpoint; only the first is served"
                ),
            );
            if names.is_empty() {
                endpoints.truncate(1);
            } else {
                names.truncate(1);
                endpoints.clear();
            }
        }
        if endpoints.is_empty() && names.is_empty() && !explained {
            warn(
                &mut self.sink.diagnostics,
                format!(
                    "ServiceEntry {entry_name} has no endpoint addresses for {host} port {port}; requests get 503"
                ),
            );
        }
        let source = match names.is_empty() {
            true => EndpointSource::Fixed,
            false => EndpointSource::Dns {
                targets: names,
                pick: match resolution {
                    Resolution::DnsRoundRobin => DnsPick::First,
                    _ => DnsPick::All,
                },
                fixed: endpoints.clone(),
            },
        };
        let mut cluster = Cluster::new(host.clone(), host, namespace, port);
        cluster.name = key;
        cluster.endpoint_source = source;
        cluster.protocol = UpstreamProtocol::from_service_port(
            entry_port
                .protocol
                .as_deref()
                .map(str::to_ascii_lowercase)
                .as_deref(),
            &entry_port.name,
        );
        self.intern_with(cluster, endpoints, making)
    }

    /// The DestinationRule for a host (FQDN or ServiceEntry host): the one in the host's
    /// namespace wins over others, as Istio prefers; then the oldest.
    pub(super) fn destination_rule(&self, host: &str) -> Option<&'a Sourced<DestinationRule>> {
        let resources: &'a crate::config::Resources = self.index.resources;
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
    fn subset_labels(&self, host: &str, subset: &str) -> Result<Labels, String> {
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

/// `httpbin` → (httpbin, vs namespace); `httpbin.ns` and `httpbin.ns.svc.cluster.local`
/// → (httpbin, ns).
pub(super) fn resolve_service_host(host: &str, vs_namespace: &str) -> (String, String) {
    let host = host.trim_end_matches('.');
    let short = host
        .strip_suffix(&format!(".{CLUSTER_DOMAIN}"))
        .or_else(|| host.strip_suffix(".svc"))
        .unwrap_or(host);
    match short.split_once('.') {
        Some((name, namespace)) if !namespace.contains('.') => {
            (name.to_owned(), namespace.to_owned())
        }
        Some(_) => (host.to_owned(), vs_namespace.to_owned()),
        None => (short.to_owned(), vs_namespace.to_owned()),
    }
}

impl Compiler<'_> {
    /// `consistentHash` as Istio turns it into Envoy's: `maglev` or `ringHash` when named,
    /// else a ring hash of at least the deprecated `minimumRingSize` (1024 when unset);
    /// the key is the one field set among header, cookie, source IP and query parameter.
    fn consistent_hash(
        &mut self,
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
                    self.sink.push(
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
}

#[cfg(test)]
#[path = "clusters_tests.rs"]
mod tests;

/// EndpointSlices by the Service they belong to (namespace, `kubernetes.io/service-name`):
/// a cluster's slices are then a lookup, not a scan of every slice (which made 1 000
/// Services × 10 000 slices most of a compile's time).
/// By namespace, then Service name.
type SlicesByService<'a> = HashMap<&'a str, HashMap<&'a str, Vec<&'a Sourced<EndpointSlice>>>>;

pub(crate) struct SliceIndex<'a>(SlicesByService<'a>);

impl<'a> SliceIndex<'a> {
    pub(crate) fn new(resources: &'a Resources) -> Self {
        let mut index: SlicesByService<'a> = HashMap::new();
        for slice in &resources.endpoint_slices {
            let meta = &slice.resource.metadata;
            if let Some(service) = meta.labels.get(SERVICE_NAME_LABEL) {
                index
                    .entry(meta.namespace())
                    .or_default()
                    .entry(service.as_str())
                    .or_default()
                    .push(slice);
            }
        }
        SliceIndex(index)
    }

    /// The slices of Service `namespace/name`, in load order.
    fn of(&self, namespace: &str, name: &str) -> &[&'a Sourced<EndpointSlice>] {
        self.0
            .get(namespace)
            .and_then(|services| services.get(name))
            .map_or(&[], Vec::as_slice)
    }
}

/// Whether a ServiceEntry host or endpoint address is a name a resolver can look up (not
/// a wildcard, not empty).
fn is_dns_name(name: &str) -> bool {
    let name = name.trim_end_matches('.');
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
}

/// A name as the resolver and its answer table keep it.
fn dns_name(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

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
