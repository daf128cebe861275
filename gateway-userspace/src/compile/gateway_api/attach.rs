//! Route attachment: which listeners a route's `parentRefs` name, and whether each admits
//! it (namespace, kind, hostname), for every route kind.

use super::{Admission, AnyRoute, ApiListener, GATEWAY_API_GROUP, RouteKind};
use crate::compile::{hosts::intersect_hosts, index::Index, sink::Sink, status::reason};
use crate::config::{
    Diagnostic, Kind, Sourced,
    resources::{
        ObjectMeta,
        gateway_api::{FromNamespaces, ParentReference, TcpRoute, TlsRoute},
    },
};

impl<'a> Index<'a> {
    /// Every route of every kind, for attachment.
    pub(super) fn all_routes(&self) -> Vec<AnyRoute<'a>> {
        self.resources
            .http_routes
            .iter()
            .map(AnyRoute::of)
            .chain(self.resources.grpc_routes.iter().map(AnyRoute::of))
            .chain(self.resources.tls_routes.iter().map(AnyRoute::of))
            .chain(self.resources.tcp_routes.iter().map(AnyRoute::of))
            .collect()
    }

    /// Whether `listener` takes `route` through `parent`, and for which hosts (none: no
    /// hostname in common). Pure: the status report is the caller's.
    pub(super) fn admission(
        &self,
        route: &AnyRoute<'_>,
        parent: &ParentReference,
        listener: &ApiListener<'a>,
    ) -> Admission {
        let route_ns = route.meta.namespace();
        let gw_ns = parent.namespace.as_deref().unwrap_or(route_ns);
        let gateway = &listener.gateway.resource.metadata;
        if !is_gateway_ref(parent)
            || gateway.name != parent.name
            || gateway.namespace() != gw_ns
            || parent
                .section_name
                .as_deref()
                .is_some_and(|s| s != listener.name)
            || parent.port.is_some_and(|p| p != u32::from(listener.port))
        {
            return Admission::Elsewhere;
        }
        let namespace_ok = match listener.from {
            FromNamespaces::All => true,
            FromNamespaces::Selector if !self.resources.namespaces.is_empty() => {
                self.namespace_selected(route_ns, listener.selector)
            }
            FromNamespaces::Same | FromNamespaces::Selector => route_ns == gateway.namespace(),
            FromNamespaces::None => false,
        };
        // An HTTPRoute never attaches to a TLS or TCP listener, whatever its kinds say.
        let kind_ok = crate::compile::status::kinds_for(listener.protocol)
            .contains(&route.kind.name())
            && (listener.kinds.is_empty() || listener.kinds.iter().any(|k| k == route.kind.name()));
        if !namespace_ok || !kind_ok {
            return Admission::NotAllowed;
        }
        // TCP carries no hostname: a TCPRoute takes the whole listener.
        Admission::Hosts(if route.kind == RouteKind::Tcp {
            vec!["*".to_owned()]
        } else {
            listener_hosts(listener.hostname.as_deref(), route.hostnames)
        })
    }
}

/// TLSRoutes (with the SNI hosts each gets) and the TCPRoute attached to each
/// listener (by index). Routes are taken oldest first (creationTimestamp, then
/// namespace/name), as the spec orders routes that want the same thing: the oldest
/// TLSRoute comes first for a hostname, the oldest TCPRoute takes a TCP listener's
/// connections (the later ones are attached, with a warning).
#[allow(clippy::type_complexity)]
pub(super) fn l4_attachments<'a>(
    ix: &Index<'a>,
    sink: &mut Sink,
    listeners: &[ApiListener<'a>],
) -> (
    Vec<Vec<(&'a Sourced<TlsRoute>, Vec<String>)>>,
    Vec<Option<&'a Sourced<TcpRoute>>>,
) {
    let mut tls: Vec<Vec<(&'a Sourced<TlsRoute>, Vec<String>)>> = vec![Vec::new(); listeners.len()];
    let mut tls_routes: Vec<&'a Sourced<TlsRoute>> = ix.resources.tls_routes.iter().collect();
    tls_routes.sort_by_key(|r| age(&r.resource.metadata));
    for route in tls_routes {
        let any = AnyRoute::of(route);
        for (_, listener, host) in attachments_by_parent(ix, sink, &any, listeners) {
            let served = &mut tls[listener];
            match served.iter_mut().find(|(r, _)| std::ptr::eq(*r, route)) {
                Some((_, hosts)) if !hosts.contains(&host) => hosts.push(host),
                Some(_) => {}
                None => served.push((route, vec![host])),
            }
        }
    }
    let mut tcp: Vec<Option<&'a Sourced<TcpRoute>>> = vec![None; listeners.len()];
    let mut tcp_routes: Vec<&'a Sourced<TcpRoute>> = ix.resources.tcp_routes.iter().collect();
    tcp_routes.sort_by_key(|r| age(&r.resource.metadata));
    for route in tcp_routes {
        let any = AnyRoute::of(route);
        // Every one attaches (Accepted, counted in attachedRoutes), as the
        // conformance suite's TCPRouteMultipleRoutesAttachment expects; the oldest
        // gets the connections.
        for (_, listener, _) in attachments_by_parent(ix, sink, &any, listeners) {
            if tcp[listener].is_none() {
                tcp[listener] = Some(route);
            } else {
                sink.push(
                    Diagnostic::warning(format!(
                        "attached to listener {}, which an older TCPRoute serves: a TCP listener forwards to its oldest route",
                        listeners[listener].name
                    ))
                    .at(route.location.clone())
                    .object(&any.object_ref()),
                );
            }
        }
    }
    (tls, tcp)
}

/// Warnings for parentRefs naming a Gateway that does not exist.
pub(super) fn check_route_parents<'a>(
    ix: &Index<'a>,
    sink: &mut Sink,
    _listeners: &[ApiListener<'a>],
) {
    let routes = ix.all_routes();
    for route in routes {
        for (index, parent) in route.parent_refs.iter().enumerate() {
            if !is_gateway_ref(parent) {
                continue;
            }
            let namespace = parent
                .namespace
                .as_deref()
                .unwrap_or(route.meta.namespace());
            let exists = ix.resources.api_gateways.iter().any(|g| {
                g.resource.metadata.name == parent.name
                    && g.resource.metadata.namespace() == namespace
            });
            if !exists {
                sink.push(
                    Diagnostic::warning(format!(
                        "Gateway {namespace}/{} does not exist; the route is not attached through it",
                        parent.name
                    ))
                    .at(route.location.cloned())
                    .object(&route.object_ref())
                    .field(format!("spec.parentRefs[{index}]")),
                );
            }
        }
    }
}

/// (listener index, host) pairs a route attaches to, with a warning for each parentRef
/// to one of our Gateways that attaches nowhere.
pub(super) fn attachments<'a>(
    ix: &Index<'a>,
    sink: &mut Sink,
    route: &AnyRoute<'_>,
    listeners: &[ApiListener<'a>],
) -> Vec<(usize, String)> {
    let mut pairs: Vec<(usize, String)> = Vec::new();
    for (_, listener, host) in attachments_by_parent(ix, sink, route, listeners) {
        if !pairs.contains(&(listener, host.clone())) {
            pairs.push((listener, host));
        }
    }
    pairs
}

/// (parentRef index, listener index, host) triples a route attaches to, honouring
/// `sectionName`, `port`, `allowedRoutes.namespaces` and `.kinds` and hostnames, for
/// every route kind. Each parentRef's outcome goes to the status report; one to our
/// Gateways that attaches nowhere gets a warning.
fn attachments_by_parent<'a>(
    ix: &Index<'a>,
    sink: &mut Sink,
    route: &AnyRoute<'_>,
    listeners: &[ApiListener<'a>],
) -> Vec<(usize, usize, String)> {
    let resource = route.object_ref();
    let route_ns = route.meta.namespace();
    let mut attached: Vec<(usize, usize, String)> = Vec::new();
    for (p_index, parent) in route.parent_refs.iter().enumerate() {
        if !is_gateway_ref(parent) {
            continue;
        }
        let gw_ns = parent.namespace.as_deref().unwrap_or(route_ns);
        let ours = listeners.iter().any(|l| {
            l.gateway.resource.metadata.name == parent.name
                && l.gateway.resource.metadata.namespace() == gw_ns
        });
        if !ours {
            continue;
        }
        let mut why = (
            reason::NO_MATCHING_PARENT,
            "no listener matches its sectionName/port (NoMatchingParent)",
        );
        let before = attached.len();
        for (l_index, listener) in listeners.iter().enumerate() {
            let hosts = match ix.admission(route, parent, listener) {
                Admission::Elsewhere => continue,
                Admission::NotAllowed => {
                    why = (
                        reason::NOT_ALLOWED_BY_LISTENERS,
                        "the listeners' allowedRoutes do not admit it (NotAllowedByListeners)",
                    );
                    continue;
                }
                Admission::Hosts(hosts) if hosts.is_empty() => {
                    if why.0 != reason::NOT_ALLOWED_BY_LISTENERS {
                        why = (
                            reason::NO_MATCHING_LISTENER_HOSTNAME,
                            "none of its hostnames intersects the listeners' hostnames (NoMatchingListenerHostname)",
                        );
                    }
                    continue;
                }
                Admission::Hosts(hosts) => hosts,
            };
            sink.status
                .listener(&listener.gateway.resource.object_ref(), listener.name)
                .attached
                .insert(resource.clone());
            for host in hosts {
                attached.push((p_index, l_index, host));
            }
        }
        let outcome = if attached.len() == before {
            Err((why.0, why.1.to_owned()))
        } else {
            Ok(())
        };
        sink.status.parent(&resource, p_index, outcome);
        if attached.len() == before {
            let reason = why.1;
            sink.push(
                Diagnostic::warning(format!(
                    "not attached to Gateway {gw_ns}/{}: {reason}",
                    parent.name
                ))
                .at(route.location.cloned())
                .object(&resource)
                .field(format!("spec.parentRefs[{p_index}]")),
            );
        }
    }
    attached
}

/// The spec's order among routes that want the same thing: the oldest, then the first by
/// namespace/name. (A route without a creationTimestamp, from a file, counts as oldest.)
pub(super) fn age(meta: &ObjectMeta) -> (String, String, String) {
    (
        meta.creation_timestamp.clone().unwrap_or_default(),
        meta.namespace().to_owned(),
        meta.name.clone(),
    )
}

fn is_gateway_ref(parent: &ParentReference) -> bool {
    parent.group.as_deref().unwrap_or(GATEWAY_API_GROUP) == GATEWAY_API_GROUP
        && parent.kind.as_deref().unwrap_or("Gateway") == "Gateway"
}

/// The hosts a route serves on a listener: its hostnames ∩ the listener's hostname.
fn listener_hosts(listener: Option<&str>, route: &[String]) -> Vec<String> {
    let route: Vec<String> = route.iter().map(|h| h.to_ascii_lowercase()).collect();
    match (listener, route.is_empty()) {
        (None, true) => vec!["*".to_owned()],
        (None, false) => route,
        (Some(l), true) => vec![l.to_owned()],
        (Some(l), false) => {
            let mut hosts = Vec::new();
            for h in &route {
                if let Some(both) = intersect_hosts(h, l)
                    && !hosts.contains(&both)
                {
                    hosts.push(both);
                }
            }
            hosts
        }
    }
}
