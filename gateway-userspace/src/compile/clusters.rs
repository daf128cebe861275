//! Destinations → clusters: Service host resolution, Service port → EndpointSlice port,
//! ready endpoints.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use super::{CLUSTER_DOMAIN, Compiler, name_of};
use crate::{
    config::{
        Diagnostic, Diagnostics, Location,
        resources::{Destination, IntOrString, SERVICE_NAME_LABEL, Service, ServicePort},
    },
    snapshot::{Cluster, UpstreamProtocol},
};

impl Compiler<'_> {
    /// The cluster a destination names; one with no endpoints (503 at request time) when
    /// the Service, its port or its endpoints are missing, with a warning saying which.
    pub(super) fn cluster(
        &mut self,
        destination: &Destination,
        vs_namespace: &str,
        location: Option<&Location>,
        resource: &str,
        field: &str,
    ) -> Arc<Cluster> {
        let (name, namespace) = resolve_service_host(&destination.host, vs_namespace);
        let fqdn = format!("{name}.{namespace}.{CLUSTER_DOMAIN}");
        let service = self
            .resources
            .services
            .iter()
            .map(|s| &s.resource)
            .find(|s| s.metadata.name == name && s.metadata.namespace() == namespace);
        let warn = |diagnostics: &mut Diagnostics, message: String| {
            diagnostics.push(
                Diagnostic::warning(message)
                    .at(location.cloned())
                    .resource(resource)
                    .field(field.to_owned()),
            );
        };
        let Some(service) = service else {
            warn(
                &mut self.diagnostics,
                format!(
                    "no Service {namespace}/{name} for host {}; requests get 503",
                    destination.host
                ),
            );
            let port = destination.port.as_ref().map_or(0, |p| p.number);
            return self.intern(Cluster::new(fqdn, name, namespace, port as u16, Vec::new()));
        };
        let service_port = match &destination.port {
            Some(p) => service.spec.ports.iter().find(|sp| sp.port == p.number),
            None if service.spec.ports.len() == 1 => service.spec.ports.first(),
            None => None,
        };
        let Some(service_port) = service_port else {
            let have: Vec<u32> = service.spec.ports.iter().map(|p| p.port).collect();
            warn(
                &mut self.diagnostics,
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
            return self.intern(Cluster::new(fqdn, name, namespace, 0, Vec::new()));
        };
        let port = u16::try_from(service_port.port).unwrap_or(0);
        let key = format!("outbound|{port}||{fqdn}");
        if let Some(existing) = self.clusters.get(&key) {
            return existing.clone();
        }
        let endpoints = self.endpoints(service, service_port);
        if endpoints.is_empty() {
            warn(
                &mut self.diagnostics,
                format!(
                    "Service {namespace}/{name} port {port} has no ready endpoints; requests get 503"
                ),
            );
        }
        let mut cluster = Cluster::new(fqdn, name, namespace, port, endpoints);
        cluster.protocol = UpstreamProtocol::from_service_port(
            service_port.app_protocol.as_deref(),
            &service_port.name,
        );
        self.intern(cluster)
    }

    pub(super) fn intern(&mut self, cluster: Cluster) -> Arc<Cluster> {
        self.clusters
            .entry(cluster.name.clone())
            .or_insert_with(|| Arc::new(cluster))
            .clone()
    }

    /// Ready endpoints of a Service port: EndpointSlice ports carry the Service port's name.
    pub(super) fn endpoints(
        &mut self,
        service: &Service,
        service_port: &ServicePort,
    ) -> Vec<SocketAddr> {
        let namespace = service.metadata.namespace();
        let mut endpoints = Vec::new();
        for slice in &self.resources.endpoint_slices {
            let slice = &slice.resource;
            if slice.metadata.namespace() != namespace
                || slice.metadata.labels.get(SERVICE_NAME_LABEL) != Some(&service.metadata.name)
            {
                continue;
            }
            let target = slice
                .ports
                .iter()
                .find(|p| p.name.as_deref().unwrap_or_default() == service_port.name)
                .map(|p| p.port)
                .or(match &service_port.target_port {
                    Some(IntOrString::Int(n)) => Some(*n),
                    Some(IntOrString::String(_)) => None,
                    None => Some(service_port.port),
                });
            let Some(target) = target.and_then(|t| u16::try_from(t).ok()) else {
                continue;
            };
            for endpoint in &slice.endpoints {
                if endpoint.conditions.ready == Some(false) {
                    continue;
                }
                for address in &endpoint.addresses {
                    match address.parse::<IpAddr>() {
                        Ok(ip) => endpoints.push(SocketAddr::new(ip, target)),
                        Err(_) => self.diagnostics.push(
                            Diagnostic::warning(format!(
                                "endpoint address {address:?} is not an IP address; skipped"
                            ))
                            .resource(format!("EndpointSlice {}", name_of(&slice.metadata))),
                        ),
                    }
                }
            }
        }
        endpoints.sort_unstable();
        endpoints.dedup();
        endpoints
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
