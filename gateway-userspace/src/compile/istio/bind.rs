//! Which VirtualServices a port's servers bind: `exportTo`, the `gateways` references
//! in every form Istio resolves, and the hosts both the VirtualService and a server accept.

use std::sync::Arc;

use super::{PortServers, delegate, matches};
use crate::{
    compile::{Built, hosts::intersect_hosts, index::Index, memo, name_of, sink::Sink},
    config::{
        Diagnostic, Kind, Sourced,
        resources::{Gateway, VirtualService},
    },
};

/// The Gateways `vs` is bound through on `port` and the hosts their servers accept,
/// or None when it is not bound there (warned when it names a Gateway of the port
/// but none of its hosts is accepted). Taken from the previous compile's memo when
/// `valid` (the port's servers are the same) and it has them.
pub(super) fn binding<'a>(
    ix: &Index<'a>,
    sink: &mut Sink,
    built: &mut Built,
    vs: &'a Sourced<VirtualService>,
    port: u16,
    servers: &PortServers<'a>,
    valid: bool,
) -> Option<Arc<memo::Binding>> {
    let key = (Arc::as_ptr(&vs.resource) as usize, port);
    let found = if valid {
        ix.reusable.and_then(|memo| memo.bindings.get(&key))
    } else {
        None
    };
    let binding = match found {
        Some(entry) => entry.binding.clone(),
        None => bind(vs, servers).map(Arc::new),
    };
    built.memo.bindings.insert(
        key,
        memo::BindingEntry {
            _resource: Arc::clone(&vs.resource),
            binding: binding.clone(),
        },
    );
    let binding = binding?;
    if binding.hosts.is_empty() {
        sink.push(
                Diagnostic::warning(format!(
                    "none of its hosts {:?} is accepted by a server on port {port}; it is not bound there",
                    vs.resource.spec.hosts
                ))
                .at(vs.location.clone())
                .object(&vs.resource.object_ref())
                .field("spec.hosts"),
            );
        return None;
    }
    Some(binding)
}

/// Istio gives a gateway the VirtualServices exported to the gateway's own namespace
/// (`VirtualServicesForGateway` reads them by the proxy's namespace): one with
/// `exportTo: ["."]` in another namespace binds no gateway of ours. Delegates are
/// looked up apart, by their root's namespace.
pub(super) fn exported_to_us(
    ix: &Index<'_>,
    sink: &mut Sink,
    vs: &Sourced<VirtualService>,
) -> bool {
    let exported = delegate::exported_to(&vs.resource, &ix.identity.namespace);
    if !exported && !vs.resource.spec.gateways.is_empty() {
        sink.push(
            Diagnostic::warning(format!(
                "not exported to this gateway's namespace {:?} (exportTo): not bound, as Istio",
                ix.identity.namespace
            ))
            .at(vs.location.clone())
            .object(&vs.resource.object_ref())
            .field("spec.exportTo"),
        );
    }
    exported
}

pub(super) fn check_gateway_references(
    ix: &Index<'_>,
    sink: &mut Sink,
    virtual_services: &[&Sourced<VirtualService>],
) {
    for vs in virtual_services {
        let namespace = vs.resource.metadata.namespace();
        for (index, reference) in vs.resource.spec.gateways.iter().enumerate() {
            if reference == "mesh" {
                continue;
            }
            let (gw_ns, gw_name) = matches::resolve_gateway_name(reference, namespace);
            let exists = ix.resources.gateways.iter().any(|g| {
                g.resource.metadata.namespace() == gw_ns && g.resource.metadata.name == gw_name
            });
            if !exists {
                sink.push(
                    Diagnostic::warning(format!(
                        "gateway {gw_ns}/{gw_name} does not exist; nothing is bound through it"
                    ))
                    .at(vs.location.clone())
                    .object(&vs.resource.object_ref())
                    .field(format!("spec.gateways[{index}]")),
                );
            }
        }
    }
}

/// Does the VirtualService name this Gateway in `gateways` (in any of the forms Istio
/// resolves)? No `gateways` means the mesh only.
pub(super) fn binds(vs: &VirtualService, gateway: &Sourced<Gateway>) -> bool {
    let vs_namespace = vs.metadata.namespace();
    vs.spec
        .gateways
        .iter()
        .filter(|g| *g != "mesh")
        .any(|reference| {
            let (ns, name) = matches::resolve_gateway_name(reference, vs_namespace);
            ns == gateway.resource.metadata.namespace() && name == gateway.resource.metadata.name
        })
}

/// The Gateways among `servers` that `vs` names, and the hosts of `vs` their servers
/// accept (Istio's host intersection, with the servers' `namespace/` restrictions), or
/// None when it names none of them.
pub(super) fn bind(
    vs: &Sourced<VirtualService>,
    servers: &PortServers<'_>,
) -> Option<memo::Binding> {
    let vs_namespace = vs.resource.metadata.namespace();
    let mut binding = memo::Binding {
        gateways: Vec::new(),
        hosts: Vec::new(),
    };
    let mut vs_hosts: Option<Vec<String>> = None;
    for (gateway, server_hosts) in &servers.servers {
        if !binds(&vs.resource, gateway) {
            continue;
        }
        let gateway_name = name_of(&gateway.resource.metadata);
        if !binding.gateways.contains(&gateway_name) {
            binding.gateways.push(gateway_name);
        }
        let gw_namespace = gateway.resource.metadata.namespace();
        let vs_hosts = vs_hosts.get_or_insert_with(|| vs.resource.resolved_hosts().collect());
        for vs_host in vs_hosts.iter() {
            for server_host in server_hosts {
                let namespace_ok = match server_host.namespace.as_str() {
                    "*" => true,
                    "." => vs_namespace == gw_namespace,
                    ns => ns == vs_namespace,
                };
                if !namespace_ok {
                    continue;
                }
                if let Some(host) = intersect_hosts(vs_host, &server_host.host)
                    && !binding.hosts.contains(&host)
                {
                    binding.hosts.push(host);
                }
            }
        }
    }
    (!binding.gateways.is_empty()).then_some(binding)
}

impl VirtualService {
    /// `hosts` as Istio reads them: short names in full (`matches::resolve_short_host`).
    pub(super) fn resolved_hosts(&self) -> impl Iterator<Item = String> + '_ {
        let namespace = self.metadata.namespace();
        self.spec
            .hosts
            .iter()
            .map(move |h| matches::resolve_short_host(h, namespace))
    }
}
