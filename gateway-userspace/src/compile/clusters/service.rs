//! Clusters of Kubernetes Services: the Service port a destination names, its
//! endpoints, and a 503 cluster with a warning saying what is missing.

use std::sync::Arc;

use super::{
    super::{CLUSTER_DOMAIN, index::Index, sink::Sink, tls::CompiledCredentials},
    At, ClusterTable, Making,
    endpoints::service_endpoints,
};
use crate::{
    config::{
        Diagnostics,
        resources::{Destination, IntOrString},
    },
    snapshot::{Cluster, EndpointSource, UpstreamProtocol},
};

impl ClusterTable {
    pub(super) fn find_cluster(
        &mut self,
        ix: &Index<'_>,
        sink: &mut Sink,
        credentials: &mut CompiledCredentials,
        destination: &Destination,
        vs_namespace: &str,
        at: At<'_>,
    ) -> Arc<Cluster> {
        let (name, namespace) = resolve_service_host(&destination.host, vs_namespace);
        let fqdn = format!("{name}.{namespace}.{CLUSTER_DOMAIN}");
        let service = ix
            .resources
            .services
            .iter()
            .map(|s| &s.resource)
            .find(|s| s.metadata.name == name && s.metadata.namespace() == namespace);
        if service.is_none()
            && let Some(entry) = ix.service_entry(&destination.host)
        {
            return self.service_entry_cluster(ix, sink, credentials, entry, destination, at);
        }
        let subset_labels = match &destination.subset {
            Some(subset) => match ix.subset_labels(&fqdn, subset) {
                Ok(labels) => Some(labels),
                Err(message) => {
                    sink.push(at.warning(format!("{message}; requests get 503")));
                    let port = destination.port.as_ref().map_or(0, |p| p.number);
                    let mut cluster = Cluster::new(fqdn.clone(), name, namespace, port as u16);
                    cluster.name = format!("outbound|{port}|{subset}|{fqdn}");
                    return self.intern(ix, sink, credentials, cluster);
                }
            },
            None => None,
        };
        let Some(service) = service else {
            sink.push(at.warning(format!(
                "no Service {namespace}/{name} for host {}; requests get 503",
                destination.host
            )));
            let port = destination.port.as_ref().map_or(0, |p| p.number);
            return self.intern(
                ix,
                sink,
                credentials,
                Cluster::new(fqdn, name, namespace, port as u16),
            );
        };
        let service_port = match &destination.port {
            Some(p) => service.spec.ports.iter().find(|sp| sp.port == p.number),
            None if service.spec.ports.len() == 1 => service.spec.ports.first(),
            None => None,
        };
        let Some(service_port) = service_port else {
            let have: Vec<u32> = service.spec.ports.iter().map(|p| p.port).collect();
            sink.push(at.warning(match &destination.port {
                    Some(p) => format!(
                        "Service {namespace}/{name} has no port {} (it has {have:?}); requests get 503",
                        p.number
                    ),
                    None => format!(
                        "Service {namespace}/{name} has ports {have:?}: say which with destination.port.number"
                    ),
                }));
            return self.intern(
                ix,
                sink,
                credentials,
                Cluster::new(fqdn, name, namespace, 0),
            );
        };
        let port = u16::try_from(service_port.port).unwrap_or(0);
        let subset = destination.subset.as_deref().unwrap_or_default();
        let key = format!("outbound|{port}|{subset}|{fqdn}");
        if let Some(existing) = self.by_name.get(&key) {
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
        let endpoints = service_endpoints(ix.resources, ix.slices(), &source, &mut read);
        let which = if subset.is_empty() {
            String::new()
        } else {
            format!(" in subset {subset}")
        };
        let making = Making {
            said_from: sink.diagnostics.0.len(),
            at: Some(at),
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
        self.intern_with(ix, sink, credentials, cluster, endpoints, making)
    }
}

/// `httpbin` → (httpbin, vs namespace); `httpbin.ns` and `httpbin.ns.svc.cluster.local`
/// → (httpbin, ns).
pub(in crate::compile) fn resolve_service_host(host: &str, vs_namespace: &str) -> (String, String) {
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
