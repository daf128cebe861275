//! VirtualService `tls` and `tcp` routes: PASSTHROUGH servers get the `tls` routes matched
//! by `sniHosts`; TCP servers and terminating TLS servers get the `tcp` routes.

use super::{bind::binds, servers::ServerRef};
use crate::compile::{Built, clusters::At, hosts::intersect_hosts, index::Index, sink::Sink};
use crate::{
    config::{
        Diagnostic, Kind, Sourced,
        resources::{Gateway, Lenient, RouteDestination, VirtualService},
    },
    snapshot::{SniRoute, WeightedCluster},
};

/// Weight of a destination that names none: all of the traffic when it is alone.
const SOLE_DESTINATION_WEIGHT: u32 = 100;

/// PASSTHROUGH: `tls` routes of VirtualServices bound to the server's Gateway whose
/// `sniHosts` the server accepts.
pub(super) fn sni_routes<'a>(
    ix: &Index<'_>,
    sink: &mut Sink,
    built: &mut Built,
    port: u16,
    server: &ServerRef<'a>,
    virtual_services: &[&'a Sourced<VirtualService>],
) -> Vec<SniRoute> {
    let mut routes = Vec::new();
    for vs in virtual_services {
        if !binds(&vs.resource, server.gateway) {
            continue;
        }
        for (index, route) in vs.resource.spec.tls.iter().enumerate() {
            let field = format!("spec.tls[{index}]");
            let Some(route) = l4_route(sink, vs, route, &field) else {
                continue;
            };
            for m in &route.matches {
                if !l4_match_applies(m.port, &m.gateways, port, server.gateway, vs) {
                    continue;
                }
                let wanted: Vec<String> = if m.sni_hosts.is_empty() {
                    vs.resource.resolved_hosts().collect()
                } else {
                    m.sni_hosts.clone()
                };
                let sni_hosts: Vec<String> = wanted
                    .iter()
                    .flat_map(|sni| {
                        server
                            .hosts
                            .iter()
                            .filter_map(move |h| intersect_hosts(sni, h))
                    })
                    .collect();
                if sni_hosts.is_empty() {
                    continue;
                }
                let clusters = l4_clusters(ix, sink, built, vs, &route.route, &field);
                routes.push(SniRoute {
                    sni_hosts,
                    clusters,
                });
            }
        }
    }
    routes
}

/// TCP servers and terminating TLS servers: the first `tcp` route of a VirtualService
/// bound to the Gateway, with a host the server accepts, that matches the port.
pub(super) fn tcp_clusters<'a>(
    ix: &Index<'_>,
    sink: &mut Sink,
    built: &mut Built,
    port: u16,
    server: &ServerRef<'a>,
    virtual_services: &[&'a Sourced<VirtualService>],
) -> Vec<WeightedCluster> {
    for vs in virtual_services {
        if !binds(&vs.resource, server.gateway) {
            continue;
        }
        let host_ok = vs.resource.resolved_hosts().any(|vs_host| {
            server
                .hosts
                .iter()
                .any(|h| intersect_hosts(&vs_host, h).is_some())
        });
        if !host_ok {
            continue;
        }
        for (index, route) in vs.resource.spec.tcp.iter().enumerate() {
            let field = format!("spec.tcp[{index}]");
            let Some(route) = l4_route(sink, vs, route, &field) else {
                continue;
            };
            let applies = route.matches.is_empty()
                || route
                    .matches
                    .iter()
                    .any(|m| l4_match_applies(m.port, &m.gateways, port, server.gateway, vs));
            if applies {
                return l4_clusters(ix, sink, built, vs, &route.route, &field);
            }
        }
    }
    Vec::new()
}

/// A `tls` or `tcp` route as written, or None (reported at the field that is not of
/// its type) when it is not one.
fn l4_route<'r, T>(
    sink: &mut Sink,
    vs: &Sourced<VirtualService>,
    route: &'r Lenient<T>,
    field: &str,
) -> Option<&'r T> {
    match route.at(field) {
        Ok(route) => Some(route),
        Err((field, message)) => {
            sink.push(
                Diagnostic::error(message)
                    .at(vs.location.clone())
                    .object(&vs.resource.object_ref())
                    .field(field),
            );
            None
        }
    }
}

fn l4_match_applies(
    match_port: Option<u32>,
    gateways: &[String],
    port: u16,
    gateway: &Sourced<Gateway>,
    vs: &Sourced<VirtualService>,
) -> bool {
    let port_ok = match_port.is_none_or(|p| p == u32::from(port));
    let vs_namespace = vs.resource.metadata.namespace();
    let gateway_ok = gateways.is_empty()
        || gateways.iter().any(|g| {
            let (ns, name) = super::matches::resolve_gateway_name(g, vs_namespace);
            ns == gateway.resource.metadata.namespace() && name == gateway.resource.metadata.name
        });
    port_ok && gateway_ok
}

fn l4_clusters(
    ix: &Index<'_>,
    sink: &mut Sink,
    built: &mut Built,
    vs: &Sourced<VirtualService>,
    destinations: &[RouteDestination],
    field: &str,
) -> Vec<WeightedCluster> {
    let resource = vs.resource.object_ref();
    let vs_namespace = vs.resource.metadata.namespace().to_owned();
    let sole = destinations.len() == 1;
    destinations
        .iter()
        .enumerate()
        .map(|(index, d)| {
            let field = format!("{field}.route[{index}].destination");
            let at = At {
                location: vs.location.as_ref(),
                object: &resource,
                field: &field,
            };
            let cluster = built.cluster(ix, sink, &d.destination, &vs_namespace, at);
            let weight = d
                .weight
                .unwrap_or(if sole { SOLE_DESTINATION_WEIGHT } else { 0 });
            WeightedCluster::new(weight, cluster)
        })
        .collect()
}
