//! Gateway API → the same listeners and route tables the Istio resources compile to.
//!
//! Gateways are ours by `gatewayClassName`. Their HTTP listeners on one port merge into
//! one route table; an HTTPRoute (or GRPCRoute) attaches through `parentRefs` (by
//! `sectionName` and/or `port`) to the listeners that allow its namespace and kind, for the
//! hostnames both accept; so do TLSRoutes and TCPRoutes, for `gateway_api/tls.rs`. Rules are
//! ordered by Gateway API precedence (Exact path, then the longest PathPrefix, then
//! RegularExpression as Istio ranks it; then method, header count, query count; then the
//! oldest route, then `namespace/name`; GRPCRoute: service characters, then method
//! characters, then header count), so the first-match table serves them.
//! A host's routes are followed by those of the wildcard hosts that cover it on the same
//! listeners: a more specific hostname wins, a less specific one still catches the rest.

mod attach;
mod filters;
mod grpc_route;
mod http_route;
mod listeners;
mod reference_grant;
mod rules;
mod tls;

use http_route::route_table;
use std::{collections::BTreeSet, net::IpAddr, sync::Arc};

use crate::compile::{Built, index::Index, name_of, ports, sink::Sink};
use crate::config::Kind;
use crate::{
    config::{
        Location, ObjectRef, Sourced,
        resources::{
            ObjectMeta, Service,
            gateway_api::{
                ApiGateway, FromNamespaces, GrpcRoute, HttpBackendRef, HttpRoute, HttpRouteFilter,
                HttpRouteRetry, HttpRouteTimeouts, LabelSelector, ParentReference, TcpRoute,
                TlsRoute,
            },
        },
    },
    route_table::{RequestMatch, Route, StringMatcher},
    snapshot::{Listener, RouteAction},
};

pub(super) use crate::config::object_ref::GATEWAY_API_GROUP;
/// Istio's backendRef kind for a ServiceEntry host (`group: networking.istio.io`).
const ISTIO_GROUP: &str = "networking.istio.io";
/// Gateway API's default backend weight.
const DEFAULT_BACKEND_WEIGHT: u32 = 1;
/// What a request gets when its rule cannot be served as written (an invalid or
/// unpermitted backend, an unsupported filter): the spec asks for 500.
const INVALID_RULE_STATUS: u16 = 500;
/// RequestRedirect's default status code.
const DEFAULT_REDIRECT_STATUS: u16 = 302;

/// One of our Gateways' listeners that serves HTTP.
struct ApiListener<'a> {
    gateway: &'a Sourced<ApiGateway>,
    name: &'a str,
    port: u16,
    /// The addresses it binds on (its Gateway's `spec.addresses`, compile/addresses.rs);
    /// None is every address of the node.
    binds: Arc<[Option<IpAddr>]>,
    /// Lowercased; None accepts every host.
    hostname: Option<String>,
    protocol: &'a str,
    from: FromNamespaces,
    /// For `from: Selector`: the namespaces whose labels it matches admit their routes.
    selector: Option<&'a LabelSelector>,
    /// Route kinds allowed; empty means the protocol's defaults (HTTPRoute, GRPCRoute).
    kinds: Vec<String>,
}

/// A route kind, for attachment (`allowedRoutes.kinds`, the listener's protocol).
#[derive(Clone, Copy, PartialEq, Eq)]
enum RouteKind {
    Http,
    Grpc,
    Tls,
    Tcp,
}

/// What attachment reads of each route kind.
trait AttachedRoute: Kind {
    const ROUTE_KIND: RouteKind;
    fn parent_refs(&self) -> &[ParentReference];
    fn hostnames(&self) -> &[String];
}

macro_rules! attached_routes {
    ($($type:ty => $kind:ident),* $(,)?) => {$(
        impl AttachedRoute for $type {
            const ROUTE_KIND: RouteKind = RouteKind::$kind;
            fn parent_refs(&self) -> &[ParentReference] {
                &self.spec.parent_refs
            }
            fn hostnames(&self) -> &[String] {
                &self.spec.hostnames
            }
        }
    )*};
}

attached_routes! {
    HttpRoute => Http,
    GrpcRoute => Grpc,
    TlsRoute => Tls,
}

impl AttachedRoute for TcpRoute {
    const ROUTE_KIND: RouteKind = RouteKind::Tcp;
    fn parent_refs(&self) -> &[ParentReference] {
        &self.spec.parent_refs
    }
    /// A TCPRoute has no hostnames: it takes a whole listener.
    fn hostnames(&self) -> &[String] {
        &[]
    }
}

impl<'a> AnyRoute<'a> {
    fn of<R: AttachedRoute>(route: &'a Sourced<R>) -> Self {
        let resource: &'a R = &route.resource;
        AnyRoute {
            kind: R::ROUTE_KIND,
            meta: resource.meta(),
            location: route.location.as_ref(),
            parent_refs: resource.parent_refs(),
            hostnames: resource.hostnames(),
        }
    }

    fn object_ref(&self) -> ObjectRef {
        ObjectRef::new(GATEWAY_API_GROUP, self.kind.name(), self.meta)
    }
}

impl RouteKind {
    fn name(self) -> &'static str {
        match self {
            RouteKind::Http => "HTTPRoute",
            RouteKind::Grpc => "GRPCRoute",
            RouteKind::Tls => "TLSRoute",
            RouteKind::Tcp => "TCPRoute",
        }
    }
}

/// What every route kind is, for attachment.
struct AnyRoute<'a> {
    kind: RouteKind,
    meta: &'a ObjectMeta,
    location: Option<&'a Location>,
    parent_refs: &'a [ParentReference],
    hostnames: &'a [String],
}

/// What a listener makes of a route's parentRef.
enum Admission {
    /// The parentRef names another Gateway, listener or port.
    Elsewhere,
    /// `allowedRoutes` refuses the route's namespace or kind.
    NotAllowed,
    /// Attached for these hosts (none: no hostname in common).
    Hosts(Vec<String>),
}

/// One of our listeners on a port, with the TLSRoutes (and the SNI hosts each serves
/// there) and the TCPRoute that attached to it, for `gateway_api/tls.rs`.
pub(super) struct PortListener<'a> {
    pub gateway: &'a Sourced<ApiGateway>,
    pub name: &'a str,
    /// Oldest first (creationTimestamp, then namespace/name): the oldest wins a hostname.
    pub tls_routes: Vec<(&'a Sourced<TlsRoute>, Vec<String>)>,
    /// The oldest attached TCPRoute: a TCP listener has one destination.
    pub tcp_route: Option<&'a Sourced<TcpRoute>>,
}

/// What a rule asks of a matching request: its filters and backends, and (HTTPRoute
/// only: GRPCRoute rules have neither) its timeouts and retry.
struct RuleSpec<'r> {
    filters: &'r [HttpRouteFilter],
    backend_refs: &'r [HttpBackendRef],
    timeouts: Option<&'r HttpRouteTimeouts>,
    retry: Option<&'r HttpRouteRetry>,
}

/// A compiled match of one rule, with what orders it.
struct Entry {
    listener: usize,
    precedence: Precedence,
    route: Route<RouteAction>,
}

/// Sort key: smaller first.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Precedence {
    specificity: Specificity,
    no_method: bool,
    headers: std::cmp::Reverse<usize>,
    query_params: std::cmp::Reverse<usize>,
    created: String,
    name: String,
    rule: usize,
    matched: usize,
}

/// How specific a match's path is; smaller first.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Specificity {
    /// HTTPRoute: 0 Exact, 1 PathPrefix, 2 RegularExpression (Istio's order for the
    /// implementation-specific regex). GRPCRoute: always 0.
    path_rank: u8,
    /// HTTPRoute: the path's characters, more first. GRPCRoute: the service's.
    path_len: std::cmp::Reverse<usize>,
    /// GRPCRoute: the method's characters, ranked after the service's as the spec says.
    method_len: std::cmp::Reverse<usize>,
}

impl Specificity {
    fn http(m: &RequestMatch) -> Self {
        let (path_rank, path_len) = match &m.path {
            Some(StringMatcher::Exact { value, .. }) => (0, value.len()),
            // `value` is kept without its trailing `/`: count it back.
            Some(StringMatcher::PathPrefix { value }) => (1, value.len() + 1),
            Some(StringMatcher::Prefix { value, .. }) => (1, value.len()),
            Some(StringMatcher::Regex(re)) => (2, re.as_str().len()),
            // Only Istio's presence matches make these; a path is always present.
            Some(StringMatcher::Present) | None => (1, 0),
        };
        Specificity {
            path_rank,
            path_len: std::cmp::Reverse(path_len),
            method_len: std::cmp::Reverse(0),
        }
    }

    fn grpc(service: Option<&str>, method: Option<&str>) -> Self {
        Specificity {
            path_rank: 0,
            path_len: std::cmp::Reverse(service.map_or(0, str::len)),
            method_len: std::cmp::Reverse(method.map_or(0, str::len)),
        }
    }
}

/// Listeners for our Gateway API Gateways, skipping ports in `taken` (served by Istio
/// Gateways, which win, with a warning).
pub(super) fn gateway_api_listeners<'a>(
    ix: &Index<'a>,
    sink: &mut Sink,
    built: &mut Built,
    own_service: Option<&Service>,
    taken: &BTreeSet<u16>,
) -> Vec<Listener> {
    let listeners = listeners::api_listeners(ix, sink, taken);
    if listeners.is_empty() {
        attach::check_route_parents(ix, sink, &[]);
        return Vec::new();
    }
    let mut entries: Vec<(String, Entry)> = Vec::new();
    let http_routes: Vec<&'a Sourced<HttpRoute>> = ix.resources.http_routes.iter().collect();
    for route in http_routes {
        http_route::route_entries(ix, sink, built, route, &listeners, &mut entries);
    }
    let grpc_routes: Vec<&'a Sourced<GrpcRoute>> = ix.resources.grpc_routes.iter().collect();
    for route in grpc_routes {
        http_route::route_entries(ix, sink, built, route, &listeners, &mut entries);
    }
    let (tls_attached, tcp_attached) = attach::l4_attachments(ix, sink, &listeners);
    attach::check_route_parents(ix, sink, &listeners);

    // One listener per port and address: Gateways with `spec.addresses` on a port
    // are served apart from each other and from those on every address.
    let keys: BTreeSet<(u16, Option<IpAddr>)> = listeners
        .iter()
        .flat_map(|l| l.binds.iter().map(|address| (l.port, *address)))
        .collect();
    let mut compiled = Vec::new();
    for (port, address) in keys {
        let serves = |l: &ApiListener<'_>| l.port == port && l.binds.contains(&address);
        let on_port: Vec<(String, &Entry)> = entries
            .iter()
            .filter(|(_, e)| serves(&listeners[e.listener]))
            .map(|(h, e)| (h.clone(), e))
            .collect();
        let (bind_port, node_port) = ports::bind_port(sink, port, own_service);
        let mut servers: Vec<String> = listeners
            .iter()
            .filter(|l| serves(l))
            .map(|l| format!("{}.{}", name_of(&l.gateway.resource.metadata), l.name))
            .collect();
        servers.dedup();
        // HTTPS listeners (`gateway_api/tls.rs`): certificates by hostname; a port whose
        // HTTPS listeners all lack usable certificates is not served.
        let api_on_port: Vec<PortListener<'a>> = listeners
            .iter()
            .enumerate()
            .filter(|(_, l)| serves(l))
            .map(|(index, l)| PortListener {
                gateway: l.gateway,
                name: l.name,
                // A Gateway with several addresses serves them on each.
                tls_routes: tls_attached[index].clone(),
                tcp_route: tcp_attached[index],
            })
            .collect();
        let (protocol, transport) = tls::gateway_api_tls(ix, sink, built, &api_on_port);
        if transport
            .as_ref()
            .and_then(|t| t.tls())
            .is_some_and(|tls| tls.servers.is_empty())
        {
            continue;
        }
        let gateways: Vec<&ApiGateway> = api_on_port.iter().map(|l| &*l.gateway.resource).collect();
        compiled.push(Listener {
            port,
            bind_port,
            address,
            node_port,
            protocol,
            servers,
            routes: route_table(on_port),
            transport,
            authz: ix.listener_authz(&gateways),
            proxy_protocol: ix.proxy_protocol(port, own_service),
        });
    }
    compiled
}

#[cfg(test)]
#[path = "gateway_api_tests.rs"]
mod tests;
