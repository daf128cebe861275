//! The Istio front end: our Gateways (`networking.istio.io`, ours when their selector is
//! a subset of our labels) and the VirtualServices bound to their servers → listeners.
//!
//! `servers` groups the servers by port; `bind` decides which VirtualServices a port's
//! servers bind and for which hosts (host intersection, `exportTo`, `gateways`
//! references); `route_table` orders the bound routes (oldest VirtualService first,
//! catch-alls last, routes after a catch-all dropped), compiled by `http_routes` from
//! `matches`, `http_actions` and `delegate`; `server_tls` and `l4_routes` give TLS and TCP
//! servers their transport.

mod bind;
mod delegate;
mod http_actions;
mod http_routes;
mod l4_routes;
mod matches;
mod route_fields;
mod route_table;
mod server_tls;
mod servers;

use std::collections::BTreeMap;

pub(super) use servers::{PortServers, istio_servers};

use super::{Built, index::Index, name_of, ports, sink::Sink};
use crate::{
    config::resources::Service,
    config::{Sourced, resources::VirtualService},
    snapshot::Listener,
};

/// The VirtualServices exported to us, in Istio's order: oldest first, then by name,
/// then by namespace. Their `gateways` references and our Gateways' port names are
/// checked on the way.
pub(super) fn istio_virtual_services<'a>(
    ix: &Index<'a>,
    sink: &mut Sink,
) -> Vec<&'a Sourced<VirtualService>> {
    let resources = ix.resources;
    let mut virtual_services: Vec<&Sourced<VirtualService>> = Vec::new();
    for vs in &resources.virtual_services {
        if bind::exported_to_us(ix, sink, vs) {
            virtual_services.push(vs);
        }
    }
    // Oldest first, then by name, then by namespace, as Istio orders them (creation
    // timestamps are RFC 3339 and sort as strings; none counts as the oldest).
    virtual_services.sort_by(|a, b| {
        let (a, b) = (&a.resource.metadata, &b.resource.metadata);
        let created = |m: &'a crate::config::resources::ObjectMeta| {
            m.creation_timestamp.as_deref().unwrap_or_default()
        };
        (created(a), a.name.as_str(), a.namespace()).cmp(&(
            created(b),
            b.name.as_str(),
            b.namespace(),
        ))
    });
    bind::check_gateway_references(ix, sink, &virtual_services);
    servers::check_port_names(ix, sink);
    virtual_services
}

/// One listener per port of our Gateways' servers, with the routes of the
/// VirtualServices bound to it (HTTP) or its TLS/TCP transport.
pub(super) fn istio_listeners<'a>(
    ix: &Index<'a>,
    sink: &mut Sink,
    built: &mut Built,
    ports: BTreeMap<u16, PortServers<'a>>,
    virtual_services: &[&'a Sourced<VirtualService>],
    own_service: Option<&'a Service>,
) -> Vec<Listener> {
    let mut listeners = Vec::new();
    for (port, servers) in ports {
        let (bind_port, node_port) = ports::bind_port(sink, port, own_service);
        let routes = route_table::route_table(ix, sink, built, port, &servers, virtual_services);
        let transport = server_tls::transport(ix, sink, built, port, &servers, virtual_services);
        listeners.push(Listener {
            port,
            bind_port,
            address: None,
            node_port,
            protocol: servers.protocol,
            servers: servers
                .servers
                .iter()
                .map(|(g, _)| name_of(&g.resource.metadata))
                .collect(),
            routes,
            transport,
            authz: ix.listener_authz(&[]),
            proxy_protocol: ix.proxy_protocol(port, own_service),
        });
    }
    listeners
}
