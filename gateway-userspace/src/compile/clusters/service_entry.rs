//! Clusters of Istio ServiceEntries: static endpoint addresses, or names resolved by
//! DNS (`resolution: DNS`, `DNS_ROUND_ROBIN`), and subsets by endpoint labels.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use super::{
    super::{index::Index, name_of, sink::Sink, tls::CompiledCredentials},
    At, ClusterTable, Making,
};
use crate::{
    config::{
        Sourced,
        resources::{Destination, ServiceEntry, istio::Resolution},
    },
    snapshot::{Cluster, DnsPick, DnsTarget, EndpointSource, UpstreamProtocol},
};

impl<'a> Index<'a> {
    /// The ServiceEntry whose `hosts` hold this host (exactly, or by a `*.` wildcard).
    pub(in crate::compile) fn service_entry(
        &self,
        host: &str,
    ) -> Option<&'a Sourced<ServiceEntry>> {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let resources: &'a crate::config::Resources = self.resources;
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
}

impl ClusterTable {
    /// A ServiceEntry destination: its port by number (or its only port), static endpoint
    /// addresses with their per-port-name target ports, subsets by endpoint labels.
    pub(super) fn service_entry_cluster(
        &mut self,
        ix: &Index<'_>,
        sink: &mut Sink,
        credentials: &mut CompiledCredentials,
        entry: &Sourced<ServiceEntry>,
        destination: &Destination,
        at: At<'_>,
    ) -> Arc<Cluster> {
        let spec = &entry.resource.spec;
        let namespace = entry.resource.metadata.namespace().to_owned();
        let host = destination.host.trim_end_matches('.').to_ascii_lowercase();
        let entry_port = match &destination.port {
            Some(p) => spec.ports.iter().find(|sp| sp.number == p.number),
            None if spec.ports.len() == 1 => spec.ports.first(),
            None => None,
        };
        let subset = destination.subset.clone().unwrap_or_default();
        let Some(entry_port) = entry_port else {
            let have: Vec<u32> = spec.ports.iter().map(|p| p.number).collect();
            sink.push(at.warning(format!(
                    "ServiceEntry {} has no port {} (it has {have:?}); requests get 503",
                    name_of(&entry.resource.metadata),
                    destination
                        .port
                        .as_ref()
                        .map_or("(none given)".to_owned(), |p| p.number.to_string())
                )));
            return self.intern(
                ix,
                sink,
                credentials,
                Cluster::new(host.clone(), host, namespace, 0),
            );
        };
        let port = u16::try_from(entry_port.number).unwrap_or(0);
        let key = format!("outbound|{port}|{subset}|{host}");
        if let Some(existing) = self.by_name.get(&key) {
            return existing.clone();
        }
        // From here on, what is said is said of the cluster being made.
        let making = Making {
            said_from: sink.diagnostics.0.len(),
            at: Some(at),
            endpoints: Vec::new(),
            when_empty: None,
        };
        let subset_labels = if subset.is_empty() {
            None
        } else {
            match ix.subset_labels(&host, &subset) {
                Ok(labels) => Some(labels),
                Err(message) => {
                    sink.push(at.warning(format!("{message}; requests get 503")));
                    let mut cluster = Cluster::new(host.clone(), host, namespace, port);
                    cluster.name = key;
                    return self.intern_with(ix, sink, credentials, cluster, Vec::new(), making);
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
                sink.push(at.warning(format!(
                        "ServiceEntry {entry_name} endpoint {:?}: port {target} is out of range; skipped",
                        workload.address
                    )));
                continue;
            };
            match workload.address.parse::<IpAddr>() {
                Ok(ip) => endpoints.push(SocketAddr::new(ip, target)),
                Err(_) if resolves && is_dns_name(&workload.address) => names.push(DnsTarget {
                    name: dns_name(&workload.address),
                    port: target,
                }),
                Err(_) => sink.push(at.warning(format!(
                        "ServiceEntry {entry_name} endpoint {:?}: only IP addresses are served with resolution {resolution:?} (DNS and DNS_ROUND_ROBIN resolve names); skipped",
                        workload.address
                    ))),
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
                    sink.push(at.warning(format!(
                            "ServiceEntry {entry_name}: {host} is a wildcard, which names no address to resolve; requests get 503"
                        )));
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
                sink.push(at.warning(format!(
                        "ServiceEntry {entry_name}: resolution NONE at a gateway serves the entry's endpoints only, as Istio does, and {host} has none; set resolution: DNS to have it looked up; requests get 503"
                    )));
                explained = true;
            }
        }
        endpoints.sort_unstable();
        endpoints.dedup();
        if resolution == Resolution::DnsRoundRobin && names.len() + endpoints.len() > 1 {
            // Envoy's LOGICAL_DNS clusters have exactly one endpoint; Istio refuses more.
            sink.push(at.warning(format!(
                    "ServiceEntry {entry_name}: DNS_ROUND_ROBIN takes one endpoint; only the first is served"
                )));
            if names.is_empty() {
                endpoints.truncate(1);
            } else {
                names.truncate(1);
                endpoints.clear();
            }
        }
        if endpoints.is_empty() && names.is_empty() && !explained {
            sink.push(at.warning(format!(
                    "ServiceEntry {entry_name} has no endpoint addresses for {host} port {port}; requests get 503"
                )));
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
        self.intern_with(ix, sink, credentials, cluster, endpoints, making)
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
