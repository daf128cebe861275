//! Gateway API → the same listeners and route tables the Istio resources compile to.
//!
//! Gateways are ours by `gatewayClassName`. Their HTTP listeners on one port merge into
//! one route table; an HTTPRoute (or GRPCRoute) attaches through `parentRefs` (by
//! `sectionName` and/or `port`) to the listeners that allow its namespace and kind, for the
//! hostnames both accept; so do TLSRoutes and TCPRoutes, for compile/tls.rs. Rules are
//! ordered by Gateway API precedence (Exact path, then the longest PathPrefix, then
//! RegularExpression as Istio ranks it; then method, header count, query count; then the
//! oldest route, then `namespace/name`; GRPCRoute: service characters, then method
//! characters, then header count), so the first-match table serves them.
//! A host's routes are followed by those of the wildcard hosts that cover it on the same
//! listeners: a more specific hostname wins, a less specific one still catches the rest.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    sync::Arc,
};

use http::{HeaderName, HeaderValue};

use super::{
    CLUSTER_DOMAIN, Compiler, addresses, covers, intersect_hosts, name_of,
    status::{Finding, reason},
};
use crate::{
    config::{
        Diagnostic, Kind, Location, ObjectRef, Sourced,
        resources::{
            Destination, Labels, ObjectMeta, PortSelector, Service,
            gateway_api::{
                ApiGateway, BackendRef, FilterType, FromNamespaces, GrpcRoute, HeaderModifier,
                HttpBackendRef, HttpCors, HttpHeader, HttpPathMatch, HttpRoute, HttpRouteFilter,
                HttpRouteMatch, HttpRouteRetry, HttpRouteTimeouts, LabelSelector, NameMatch,
                ParentReference, PathMatchType, PathModifier, PathModifierType, TcpRoute, TlsRoute,
                ValueMatchType,
            },
        },
    },
    route_table::{RequestMatch, Route, RouteTable, StringMatcher, VirtualHost},
    snapshot::{
        Cluster, CorsPolicy, DirectResponse, Forward, HeaderOps, HeaderPolicy, Listener, Mirror,
        PathRewrite, Redirect, RedirectPort, Rewrite, RouteAction, WeightedCluster,
    },
};

pub(super) const GATEWAY_API_GROUP: &str = "gateway.networking.k8s.io";
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

impl AnyRoute<'_> {
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
/// there) and the TCPRoute that attached to it, for compile/tls.rs.
pub(super) struct PortListener<'a> {
    pub gateway: &'a Sourced<ApiGateway>,
    pub name: &'a str,
    /// Oldest first (creationTimestamp, then namespace/name): the oldest wins a hostname.
    pub tls_routes: Vec<(&'a Sourced<TlsRoute>, Vec<String>)>,
    /// The oldest attached TCPRoute: a TCP listener has one destination.
    pub tcp_route: Option<&'a Sourced<TcpRoute>>,
}

/// An HTTPRoute rule's timeouts and retry (GRPCRoute rules have neither).
#[derive(Default)]
struct RulePolicy<'r> {
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

impl<'a> Compiler<'a> {
    /// Listeners for our Gateway API Gateways, skipping ports in `taken` (served by Istio
    /// Gateways, which win, with a warning).
    pub(super) fn gateway_api_listeners(
        &mut self,
        own_service: Option<&Service>,
        taken: &BTreeSet<u16>,
    ) -> Vec<Listener> {
        let listeners = self.api_listeners(taken);
        if listeners.is_empty() {
            self.check_route_parents(&[]);
            return Vec::new();
        }
        let mut entries: Vec<(String, Entry)> = Vec::new();
        let http_routes: Vec<&'a Sourced<HttpRoute>> = self.resources.http_routes.iter().collect();
        for route in http_routes {
            self.http_route_entries(route, &listeners, &mut entries);
        }
        let grpc_routes: Vec<&'a Sourced<GrpcRoute>> = self.resources.grpc_routes.iter().collect();
        for route in grpc_routes {
            self.grpc_route_entries(route, &listeners, &mut entries);
        }
        let (tls_attached, tcp_attached) = self.l4_attachments(&listeners);
        self.check_route_parents(&listeners);

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
            let (bind_port, node_port) = self.bind_port(port, own_service);
            let mut servers: Vec<String> = listeners
                .iter()
                .filter(|l| serves(l))
                .map(|l| format!("{}.{}", name_of(&l.gateway.resource.metadata), l.name))
                .collect();
            servers.dedup();
            // HTTPS listeners (compile/tls.rs): certificates by hostname; a port whose
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
            let (protocol, transport) = self.gateway_api_tls(&api_on_port);
            if transport
                .as_ref()
                .and_then(|t| t.tls())
                .is_some_and(|tls| tls.servers.is_empty())
            {
                continue;
            }
            let gateways: Vec<&ApiGateway> =
                api_on_port.iter().map(|l| &*l.gateway.resource).collect();
            compiled.push(Listener {
                port,
                bind_port,
                address,
                node_port,
                protocol,
                servers,
                routes: route_table(on_port),
                transport,
                authz: self.listener_authz(&gateways),
                proxy_protocol: self.proxy_protocol(port, own_service),
            });
        }
        compiled
    }

    fn is_our_class(&self, gateway: &ApiGateway) -> bool {
        super::status::is_our_class(self.resources, self.identity, gateway)
    }

    /// Whether `allowedRoutes.namespaces.selector` admits routes of `namespace` (by the
    /// labels of its Namespace object; a namespace we have no object for has none). No
    /// selector selects nothing, as the spec requires one with `from: Selector`.
    fn namespace_selected(&self, namespace: &str, selector: Option<&LabelSelector>) -> bool {
        let Some(selector) = selector else {
            return false;
        };
        let no_labels = Labels::default();
        let labels = self
            .resources
            .namespaces
            .iter()
            .find(|n| n.resource.metadata.name == namespace)
            .map_or(&no_labels, |n| &n.resource.metadata.labels);
        selector.matches(labels)
    }

    /// Our Gateways' HTTP listeners; conflicts (the same port and hostname twice) are
    /// reported and, as the spec says, neither conflicted listener is served.
    fn api_listeners(&mut self, taken: &BTreeSet<u16>) -> Vec<ApiListener<'a>> {
        let mut found: Vec<(ApiListener<'a>, Option<Location>, String)> = Vec::new();
        for gateway in &self.resources.api_gateways {
            if !self.is_our_class(&gateway.resource) {
                continue;
            }
            let resource = gateway.resource.object_ref();
            // Parsed, not applied: said so rather than silently ignored.
            let spec = &gateway.resource.spec;
            let unapplied = [(
                spec.tls.as_ref().is_some_and(|t| t.backend.is_some()),
                "spec.tls.backend",
                "the Gateway's client certificate towards backends is not presented (BackendTLSPolicy is not supported)",
            )];
            for (present, field, message) in unapplied {
                if present {
                    self.diagnostics.push(
                        Diagnostic::warning(message)
                            .at(gateway.location.clone())
                            .object(&resource)
                            .field(field),
                    );
                }
            }
            let Some(binds) = self.gateway_binds(gateway) else {
                continue;
            };
            let mut names = BTreeSet::new();
            for (index, listener) in gateway.resource.spec.listeners.iter().enumerate() {
                let field = format!("spec.listeners[{index}]");
                // Implementation-specific TLS options: we define none.
                if let Some(options) = listener.tls.as_ref().map(|t| &t.options)
                    && !options.is_empty()
                {
                    let keys: Vec<&str> = options.keys().map(String::as_str).collect();
                    self.diagnostics.push(
                        Diagnostic::warning(format!(
                            "TLS options {} are not applied: this gateway defines no listener TLS options",
                            keys.join(", ")
                        ))
                        .at(gateway.location.clone())
                        .object(&resource)
                        .field(format!("{field}.tls.options")),
                    );
                }
                self.status.listener(&resource, &listener.name);
                let error = |message: String, sub: &str| {
                    Diagnostic::error(message)
                        .at(gateway.location.clone())
                        .object(&resource)
                        .field(format!("{field}{sub}"))
                };
                if !names.insert(listener.name.as_str()) {
                    self.diagnostics.push(error(
                        format!(
                            "listener name {:?} is used twice: listener names must be unique within a Gateway",
                            listener.name
                        ),
                        ".name",
                    ));
                    continue;
                }
                let Some(port) = u16::try_from(listener.port).ok().filter(|p| *p != 0) else {
                    self.diagnostics.push(error(
                        format!("port {} is not a TCP port: expected 1-65535", listener.port),
                        ".port",
                    ));
                    continue;
                };
                if !["HTTP", "HTTPS", "TLS", "TCP"]
                    .iter()
                    .any(|p| listener.protocol.eq_ignore_ascii_case(p))
                {
                    let message = format!(
                        "Gateway API listeners with protocol {} are not served yet (HTTP, HTTPS, TLS and TCP are); this listener is skipped",
                        listener.protocol
                    );
                    self.status.listener(&resource, &listener.name).not_accepted =
                        Some((reason::UNSUPPORTED_PROTOCOL, message.clone()));
                    self.diagnostics.push(
                        Diagnostic::warning(message)
                            .at(gateway.location.clone())
                            .object(&resource)
                            .field(format!("{field}.protocol")),
                    );
                    continue;
                }
                if taken.contains(&port) {
                    let message = format!(
                        "port {port} is already served by an Istio Gateway; this listener is skipped"
                    );
                    self.status.listener(&resource, &listener.name).not_accepted =
                        Some((reason::PORT_UNAVAILABLE, message.clone()));
                    self.diagnostics.push(
                        Diagnostic::warning(message)
                            .at(gateway.location.clone())
                            .object(&resource)
                            .field(format!("{field}.port")),
                    );
                    continue;
                }
                let hostname = listener.hostname.as_deref().map(str::to_ascii_lowercase);
                if let Some(h) = &hostname
                    && let Err(why) = check_hostname(h)
                {
                    self.diagnostics
                        .push(error(format!("hostname {h:?}: {why}"), ".hostname"));
                    continue;
                }
                let allowed = &listener.allowed_routes;
                if allowed.namespaces.from == FromNamespaces::Selector
                    && self.resources.namespaces.is_empty()
                {
                    self.diagnostics.push(
                        Diagnostic::warning(
                            "allowedRoutes.namespaces.from: Selector needs Namespace objects, which are not loaded; only routes in the Gateway's namespace attach",
                        )
                        .at(gateway.location.clone())
                        .object(&resource)
                        .field(format!("{field}.allowedRoutes.namespaces.from")),
                    );
                }
                let kinds = allowed.kinds.iter().map(|k| k.kind.clone()).collect();
                found.push((
                    ApiListener {
                        gateway,
                        name: &listener.name,
                        port,
                        binds: binds.clone(),
                        hostname,
                        protocol: &listener.protocol,
                        from: allowed.namespaces.from,
                        selector: allowed.namespaces.selector.as_ref(),
                        kinds,
                    },
                    gateway.location.clone(),
                    format!("{resource}: {field}"),
                ));
            }
        }
        let conflicted = self.conflicts(&found.iter().map(|(l, _, _)| l).collect::<Vec<_>>());
        let mut listeners = Vec::new();
        for (index, (listener, location, place)) in found.into_iter().enumerate() {
            if let Some((why, message)) = conflicted.get(&index) {
                let findings = self
                    .status
                    .listener(&listener.gateway.resource.object_ref(), listener.name);
                findings.conflicted = Some((why, message.clone()));
                findings.not_accepted = Some((why, message.clone()));
                self.diagnostics
                    .push(Diagnostic::warning(format!("{place}: {message}")).at(location));
                continue;
            }
            listeners.push(listener);
        }
        listeners
    }

    /// Where `gateway`'s listeners bind (compile/addresses.rs), its findings recorded for
    /// status; None when none is served: an address of a type we do not support (the
    /// Gateway is not accepted) or none of its addresses usable here.
    fn gateway_binds(&mut self, gateway: &'a Sourced<ApiGateway>) -> Option<Arc<[Option<IpAddr>]>> {
        let resource = gateway.resource.object_ref();
        let spec = &gateway.resource.spec;
        let resolved = addresses::resolve(&spec.addresses, self.identity.address_check);
        let warn = |message: String| {
            Diagnostic::warning(message)
                .at(gateway.location.clone())
                .object(&resource)
                .field("spec.addresses")
        };
        let not_served = if !resolved.unsupported.is_empty() {
            let message = format!(
                "unsupported address: {}; the Gateway is not accepted ({})",
                resolved.unsupported.join("; "),
                reason::UNSUPPORTED_ADDRESS
            );
            self.diagnostics.push(warn(message.clone()));
            self.status.gateway(&resource).unsupported_address = Some(message);
            Some("the Gateway is not accepted (UnsupportedAddress)")
        } else {
            None
        };
        if !resolved.unusable.is_empty() {
            let message = format!(
                "address not usable: {} ({})",
                resolved.unusable.join("; "),
                reason::ADDRESS_NOT_USABLE
            );
            self.diagnostics.push(warn(message.clone()));
            self.status.gateway(&resource).unusable_address = Some(message);
        }
        self.status.gateway(&resource).addresses = resolved.reported;
        let not_served = not_served.or_else(|| {
            resolved.binds.is_empty().then_some(
                "none of the Gateway's addresses can be used on this node (AddressNotUsable)",
            )
        });
        if let Some(why) = not_served {
            for listener in &spec.listeners {
                self.status
                    .listener(&resource, &listener.name)
                    .not_programmed = Some(why.to_owned());
            }
            return None;
        }
        Some(resolved.binds.into())
    }

    /// The listeners (by index) that cannot be served with the others, with the reason.
    ///
    /// Within one Gateway, the spec's distinctness: listeners on one port speak one
    /// protocol (HTTPS and TLS share a port: SNI tells them apart) and differ in hostname;
    /// every indistinct one is conflicted, none wins.
    ///
    /// Across Gateways that share an address (every address of the node, or the same one
    /// in `spec.addresses`), which this node-local data plane merges, the
    /// listeners are taken oldest Gateway first (creationTimestamp, then namespace/name, as
    /// the spec orders merged ListenerSets) and a younger Gateway's listener is conflicted
    /// where it cannot be told apart from an older one's: another protocol on the port
    /// (ProtocolConflict), a second TCP listener, or an HTTPS/TLS listener with the same
    /// hostname (SNI picks one; HostnameConflict). HTTP listeners with the same hostname
    /// merge as long as their routes' hostnames tell them apart (a host both serve with
    /// the same routes, one route attached to both, is fine); where other routes of both
    /// serve a hostname, the younger is conflicted (HostnameConflict). So a new Gateway never takes
    /// traffic from an existing one.
    fn conflicts(&self, found: &[&ApiListener<'a>]) -> BTreeMap<usize, Finding> {
        let family = |protocol: &str| {
            if protocol.eq_ignore_ascii_case("HTTPS") || protocol.eq_ignore_ascii_case("TLS") {
                "TLS"
            } else if protocol.eq_ignore_ascii_case("TCP") {
                "TCP"
            } else {
                "HTTP"
            }
        };
        let any_host = |h: &Option<String>| h.clone().unwrap_or_else(|| "(any)".to_owned());
        let mut conflicted: BTreeMap<usize, Finding> = BTreeMap::new();
        for (i, a) in found.iter().enumerate() {
            for (j, b) in found.iter().enumerate().skip(i + 1) {
                if a.port != b.port || !std::ptr::eq(a.gateway, b.gateway) {
                    continue;
                }
                let protocols_agree = a.protocol.eq_ignore_ascii_case(b.protocol)
                    || (family(a.protocol) == "TLS" && family(b.protocol) == "TLS");
                if !protocols_agree {
                    for k in [i, j] {
                        conflicted.insert(
                            k,
                            (
                                reason::PROTOCOL_CONFLICT,
                                format!(
                                    "another listener on port {} has a different protocol; conflicted listeners are not served ({})",
                                    a.port,
                                    reason::PROTOCOL_CONFLICT
                                ),
                            ),
                        );
                    }
                } else if a.hostname == b.hostname {
                    for k in [i, j] {
                        conflicted.entry(k).or_insert_with(|| {
                            (
                                reason::HOSTNAME_CONFLICT,
                                format!(
                                    "another listener has the same port {} and hostname {}; conflicted listeners are not served ({})",
                                    a.port,
                                    any_host(&a.hostname),
                                    reason::HOSTNAME_CONFLICT
                                ),
                            )
                        });
                    }
                }
            }
        }
        let routes = self.all_routes();
        // host → the routes serving it on a listener.
        let served = |l: &ApiListener<'a>| -> BTreeMap<String, BTreeSet<ObjectRef>> {
            let mut hosts: BTreeMap<String, BTreeSet<ObjectRef>> = BTreeMap::new();
            for route in routes
                .iter()
                .filter(|r| matches!(r.kind, RouteKind::Http | RouteKind::Grpc))
            {
                for parent in route.parent_refs {
                    if let Admission::Hosts(h) = self.admission(route, parent, l) {
                        for host in h {
                            hosts.entry(host).or_default().insert(route.object_ref());
                        }
                    }
                }
            }
            hosts
        };
        let mut order: Vec<usize> = (0..found.len())
            .filter(|i| !conflicted.contains_key(i))
            .collect();
        order.sort_by_key(|&i| age(&found[i].gateway.resource.metadata));
        let mut kept: Vec<usize> = Vec::new();
        for i in order {
            let a = found[i];
            let clash = kept.iter().map(|&k| found[k]).find_map(|b| {
                // Gateways on different addresses never meet: a connection is served by
                // the listener of its exact address, else by the one on every address.
                let shared_address = a.binds.iter().any(|x| b.binds.contains(x));
                if a.port != b.port || std::ptr::eq(a.gateway, b.gateway) || !shared_address {
                    return None;
                }
                let older = format!(
                    "Gateway {}/{} listener {}",
                    b.gateway.resource.metadata.namespace(),
                    b.gateway.resource.metadata.name,
                    b.name
                );
                let (fa, fb) = (family(a.protocol), family(b.protocol));
                if fa != fb {
                    return Some((
                        reason::PROTOCOL_CONFLICT,
                        format!(
                            "port {} is already {} on the older {older}; one port speaks one protocol, so this listener is not served ({})",
                            a.port,
                            b.protocol,
                            reason::PROTOCOL_CONFLICT
                        ),
                    ));
                }
                let why = match fa {
                    "TCP" => "a TCP listener has no hostname to tell them apart".to_owned(),
                    "TLS" if a.hostname == b.hostname => format!(
                        "it has the same hostname {}, and SNI picks one",
                        any_host(&a.hostname)
                    ),
                    "HTTP" if a.hostname == b.hostname => {
                        // A host both serve with the same routes (one route attached
                        // to both Gateways) is served alike whichever listener takes it.
                        let (mine, theirs) = (served(a), served(b));
                        let both: Vec<String> = mine
                            .iter()
                            .filter(|(host, routes)| {
                                theirs.get(*host).is_some_and(|other| other != *routes)
                            })
                            .map(|(host, _)| host.clone())
                            .collect();
                        if both.is_empty() {
                            return None;
                        }
                        format!(
                            "the routes of both serve {} on it",
                            both.join(", ")
                        )
                    }
                    _ => return None,
                };
                Some((
                    reason::HOSTNAME_CONFLICT,
                    format!(
                        "port {} is already served by the older {older}: {why}; this listener is not served ({})",
                        a.port,
                        reason::HOSTNAME_CONFLICT
                    ),
                ))
            });
            match clash {
                Some(finding) => {
                    conflicted.insert(i, finding);
                }
                None => kept.push(i),
            }
        }
        conflicted
    }

    /// TLSRoutes (with the SNI hosts each gets) and the TCPRoute attached to each
    /// listener (by index). Routes are taken oldest first (creationTimestamp, then
    /// namespace/name), as the spec orders routes that want the same thing: the oldest
    /// TLSRoute comes first for a hostname, the oldest TCPRoute takes a TCP listener's
    /// connections (the later ones are attached, with a warning).
    #[allow(clippy::type_complexity)]
    fn l4_attachments(
        &mut self,
        listeners: &[ApiListener<'a>],
    ) -> (
        Vec<Vec<(&'a Sourced<TlsRoute>, Vec<String>)>>,
        Vec<Option<&'a Sourced<TcpRoute>>>,
    ) {
        let mut tls: Vec<Vec<(&'a Sourced<TlsRoute>, Vec<String>)>> =
            vec![Vec::new(); listeners.len()];
        let mut tls_routes: Vec<&'a Sourced<TlsRoute>> = self.resources.tls_routes.iter().collect();
        tls_routes.sort_by_key(|r| age(&r.resource.metadata));
        for route in tls_routes {
            let any = AnyRoute {
                kind: RouteKind::Tls,
                meta: &route.resource.metadata,
                location: route.location.as_ref(),
                parent_refs: &route.resource.spec.parent_refs,
                hostnames: &route.resource.spec.hostnames,
            };
            for (_, listener, host) in self.attachments_by_parent(&any, listeners) {
                let served = &mut tls[listener];
                match served.iter_mut().find(|(r, _)| std::ptr::eq(*r, route)) {
                    Some((_, hosts)) if !hosts.contains(&host) => hosts.push(host),
                    Some(_) => {}
                    None => served.push((route, vec![host])),
                }
            }
        }
        let mut tcp: Vec<Option<&'a Sourced<TcpRoute>>> = vec![None; listeners.len()];
        let mut tcp_routes: Vec<&'a Sourced<TcpRoute>> = self.resources.tcp_routes.iter().collect();
        tcp_routes.sort_by_key(|r| age(&r.resource.metadata));
        for route in tcp_routes {
            let any = AnyRoute {
                kind: RouteKind::Tcp,
                meta: &route.resource.metadata,
                location: route.location.as_ref(),
                parent_refs: &route.resource.spec.parent_refs,
                hostnames: &[],
            };
            // Every one attaches (Accepted, counted in attachedRoutes), as the
            // conformance suite's TCPRouteMultipleRoutesAttachment expects; the oldest
            // gets the connections.
            for (_, listener, _) in self.attachments_by_parent(&any, listeners) {
                if tcp[listener].is_none() {
                    tcp[listener] = Some(route);
                } else {
                    self.diagnostics.push(
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

    /// Every route of every kind, for attachment.
    fn all_routes(&self) -> Vec<AnyRoute<'a>> {
        self.resources
            .http_routes
            .iter()
            .map(|r| AnyRoute {
                kind: RouteKind::Http,
                meta: &r.resource.metadata,
                location: r.location.as_ref(),
                parent_refs: &r.resource.spec.parent_refs,
                hostnames: &r.resource.spec.hostnames,
            })
            .chain(self.resources.grpc_routes.iter().map(|r| AnyRoute {
                kind: RouteKind::Grpc,
                meta: &r.resource.metadata,
                location: r.location.as_ref(),
                parent_refs: &r.resource.spec.parent_refs,
                hostnames: &r.resource.spec.hostnames,
            }))
            .chain(self.resources.tls_routes.iter().map(|r| AnyRoute {
                kind: RouteKind::Tls,
                meta: &r.resource.metadata,
                location: r.location.as_ref(),
                parent_refs: &r.resource.spec.parent_refs,
                hostnames: &r.resource.spec.hostnames,
            }))
            .chain(self.resources.tcp_routes.iter().map(|r| AnyRoute {
                kind: RouteKind::Tcp,
                meta: &r.resource.metadata,
                location: r.location.as_ref(),
                parent_refs: &r.resource.spec.parent_refs,
                hostnames: &[],
            }))
            .collect()
    }

    /// Warnings for parentRefs naming a Gateway that does not exist.
    fn check_route_parents(&mut self, _listeners: &[ApiListener<'a>]) {
        let routes = self.all_routes();
        for route in routes {
            for (index, parent) in route.parent_refs.iter().enumerate() {
                if !is_gateway_ref(parent) {
                    continue;
                }
                let namespace = parent
                    .namespace
                    .as_deref()
                    .unwrap_or(route.meta.namespace());
                let exists = self.resources.api_gateways.iter().any(|g| {
                    g.resource.metadata.name == parent.name
                        && g.resource.metadata.namespace() == namespace
                });
                if !exists {
                    self.diagnostics.push(
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
    fn attachments(
        &mut self,
        route: &AnyRoute<'_>,
        listeners: &[ApiListener<'a>],
    ) -> Vec<(usize, String)> {
        let mut pairs: Vec<(usize, String)> = Vec::new();
        for (_, listener, host) in self.attachments_by_parent(route, listeners) {
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
    fn attachments_by_parent(
        &mut self,
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
                let hosts = match self.admission(route, parent, listener) {
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
                self.status
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
            self.status.parent(&resource, p_index, outcome);
            if attached.len() == before {
                let reason = why.1;
                self.diagnostics.push(
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

    /// Whether `listener` takes `route` through `parent`, and for which hosts (none: no
    /// hostname in common). Pure: the status report is the caller's.
    fn admission(
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
        let kind_ok = super::status::kinds_for(listener.protocol).contains(&route.kind.name())
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

    fn http_route_entries(
        &mut self,
        route: &'a Sourced<HttpRoute>,
        listeners: &[ApiListener<'a>],
        entries: &mut Vec<(String, Entry)>,
    ) {
        let spec = &route.resource.spec;
        let any = AnyRoute {
            kind: RouteKind::Http,
            meta: &route.resource.metadata,
            location: route.location.as_ref(),
            parent_refs: &spec.parent_refs,
            hostnames: &spec.hostnames,
        };
        let attached = self.attachments(&any, listeners);
        if attached.is_empty() {
            return;
        }
        let resource = any.object_ref();
        for (r_index, rule) in spec.rules.iter().enumerate() {
            let field = format!("spec.rules[{r_index}]");
            let mut matches = Vec::new();
            let written: Vec<HttpRouteMatch> = if rule.matches.is_empty() {
                vec![HttpRouteMatch::default()]
            } else {
                rule.matches.clone()
            };
            let mut failed = false;
            for (m_index, m) in written.iter().enumerate() {
                match compile_http_match(m) {
                    Ok(compiled) => {
                        let specificity = Specificity::http(&compiled);
                        matches.push((compiled, specificity));
                    }
                    Err((sub, message)) => {
                        self.diagnostics.push(
                            Diagnostic::error(message)
                                .at(route.location.clone())
                                .object(&resource)
                                .field(format!("{field}.matches[{m_index}].{sub}")),
                        );
                        failed = true;
                    }
                }
            }
            if failed {
                continue;
            }
            let action = self.rule_action(
                &any,
                &resource,
                &field,
                &rule.filters,
                &rule.backend_refs,
                RulePolicy {
                    timeouts: rule.timeouts.as_ref(),
                    retry: rule.retry.as_ref(),
                },
            );
            let rule_name = rule.name.clone().unwrap_or_else(|| r_index.to_string());
            push_entries(
                entries, listeners, &attached, &any, &rule_name, r_index, matches, &action,
            );
        }
    }

    fn grpc_route_entries(
        &mut self,
        route: &'a Sourced<GrpcRoute>,
        listeners: &[ApiListener<'a>],
        entries: &mut Vec<(String, Entry)>,
    ) {
        let spec = &route.resource.spec;
        let any = AnyRoute {
            kind: RouteKind::Grpc,
            meta: &route.resource.metadata,
            location: route.location.as_ref(),
            parent_refs: &spec.parent_refs,
            hostnames: &spec.hostnames,
        };
        let attached = self.attachments(&any, listeners);
        if attached.is_empty() {
            return;
        }
        let resource = any.object_ref();
        for (r_index, rule) in spec.rules.iter().enumerate() {
            let field = format!("spec.rules[{r_index}]");
            let mut matches = Vec::new();
            let mut failed = false;
            for (m_index, m) in rule.matches.iter().enumerate() {
                let mut compiled = RequestMatch::default();
                let path = m.method.as_ref().map(|method| {
                    let service = method.service.as_deref();
                    let name = method.method.as_deref();
                    match (method.match_type, service, name) {
                        (ValueMatchType::Exact, Some(s), Some(n)) => Ok(StringMatcher::Exact {
                            value: format!("/{s}/{n}"),
                            ignore_case: false,
                        }),
                        (ValueMatchType::Exact, Some(s), None) => Ok(StringMatcher::Prefix {
                            value: format!("/{s}/"),
                            ignore_case: false,
                        }),
                        (ValueMatchType::Exact, None, Some(n)) => {
                            StringMatcher::regex(&format!("/[^/]+/{}", regex::escape(n)), false)
                                .map_err(|e| e.to_string())
                        }
                        (ValueMatchType::RegularExpression, s, n) => StringMatcher::regex(
                            &format!("/{}/{}", s.unwrap_or("[^/]+"), n.unwrap_or("[^/]+")),
                            false,
                        )
                        .map_err(|e| format!("invalid regex: {e}")),
                        (_, None, None) => {
                            Err("a method match needs a service, a method or both".to_owned())
                        }
                    }
                });
                match path.transpose() {
                    Ok(path) => compiled.path = path,
                    Err(message) => {
                        self.diagnostics.push(
                            Diagnostic::error(message)
                                .at(route.location.clone())
                                .object(&resource)
                                .field(format!("{field}.matches[{m_index}].method")),
                        );
                        failed = true;
                        continue;
                    }
                }
                match compile_name_matches(&m.headers, true) {
                    Ok(headers) => compiled.headers = headers,
                    Err((sub, message)) => {
                        self.diagnostics.push(
                            Diagnostic::error(message)
                                .at(route.location.clone())
                                .object(&resource)
                                .field(format!("{field}.matches[{m_index}].headers{sub}")),
                        );
                        failed = true;
                        continue;
                    }
                }
                let method = m.method.as_ref();
                let specificity = Specificity::grpc(
                    method.and_then(|m| m.service.as_deref()),
                    method.and_then(|m| m.method.as_deref()),
                );
                matches.push((compiled, specificity));
            }
            if failed {
                continue;
            }
            if matches.is_empty() {
                matches.push((RequestMatch::default(), Specificity::grpc(None, None)));
            }
            let action = self.rule_action(
                &any,
                &resource,
                &field,
                &rule.filters,
                &rule.backend_refs,
                RulePolicy::default(),
            );
            let rule_name = rule.name.clone().unwrap_or_else(|| r_index.to_string());
            push_entries(
                entries, listeners, &attached, &any, &rule_name, r_index, matches, &action,
            );
        }
    }

    /// A rule's filters and backends → what a matching request gets.
    fn rule_action(
        &mut self,
        route: &AnyRoute<'_>,
        resource: &ObjectRef,
        field: &str,
        filters: &[HttpRouteFilter],
        backend_refs: &[HttpBackendRef],
        policy: RulePolicy<'_>,
    ) -> RouteAction {
        let RulePolicy { timeouts, retry } = policy;
        let location = route.location.cloned();
        let invalid = |this: &mut Self, sub: String, message: String| {
            this.diagnostics.push(
                Diagnostic::warning(format!(
                    "{message}; requests matching this rule get {INVALID_RULE_STATUS}"
                ))
                .at(location.clone())
                .object(resource)
                .field(format!("{field}.{sub}")),
            );
            RouteAction::DirectResponse(Box::new(DirectResponse {
                status: INVALID_RULE_STATUS,
                body: None,
                headers: HeaderPolicy::default(),
                cors: None,
            }))
        };
        let mut forward = Forward::default();
        let mut redirect = None;
        for (f_index, filter) in filters.iter().enumerate() {
            let f_field = format!("filters[{f_index}]");
            match compile_filter(filter) {
                Ok(Filter::Headers { request, ops }) => {
                    let target = if request {
                        &mut forward.headers.request
                    } else {
                        &mut forward.headers.response
                    };
                    merge_ops(target, ops);
                }
                Ok(Filter::Redirect(r)) => redirect = Some(r),
                Ok(Filter::Rewrite(r)) => forward.rewrite = Some(r),
                Ok(Filter::Cors(cors)) => forward.cors = Some(cors),
                Ok(Filter::Mirror {
                    backend,
                    percentage,
                }) => {
                    match self.backend_cluster(
                        route,
                        resource,
                        &format!("{field}.{f_field}.requestMirror.backendRef"),
                        &backend,
                    ) {
                        Ok(cluster) => forward.mirrors.push(Mirror {
                            cluster,
                            percentage,
                        }),
                        Err((why, message)) => {
                            self.status
                                .unresolved(&route.object_ref(), why, message.clone());
                            self.diagnostics.push(
                                Diagnostic::warning(format!("{message}; not mirrored"))
                                    .at(location.clone())
                                    .object(resource)
                                    .field(format!("{field}.{f_field}.requestMirror.backendRef")),
                            );
                        }
                    }
                }
                Err(message) => return invalid(self, f_field, message),
            }
        }
        if let Some(mut redirect) = redirect {
            redirect.headers = forward.headers;
            return RouteAction::Redirect(Box::new(redirect));
        }
        let duration = |this: &mut Self, value: Option<&str>, sub: &str| {
            let value = value?;
            match super::routes::parse_duration(value) {
                // 0s disables the timeout.
                Ok(t) => (!t.is_zero()).then_some(t),
                Err(e) => {
                    this.diagnostics.push(
                        Diagnostic::error(format!("{sub} {value:?}: {e}"))
                            .at(location.clone())
                            .object(resource)
                            .field(format!("{field}.{sub}")),
                    );
                    None
                }
            }
        };
        if let Some(timeouts) = timeouts {
            // `request` bounds the whole exchange, retries included; `backendRequest`
            // each try towards a backend.
            forward.timeout = duration(self, timeouts.request.as_deref(), "timeouts.request");
            forward.retry.per_try_timeout = duration(
                self,
                timeouts.backend_request.as_deref(),
                "timeouts.backendRequest",
            );
        }
        if let Some(retry) = retry {
            // As Istio converts it: the codes replace the default ones (a code not
            // listed is not retried, as HTTPRouteRetry checks) beside the default
            // connection conditions, attempts replace the default count, and a back-off
            // sets the first interval.
            if let Some(attempts) = retry.attempts {
                forward.retry.attempts = attempts;
            }
            // The spec: with a retry stanza, connection errors (disconnect, reset,
            // timeout) SHOULD be retried too, which Envoy's `reset` condition covers, an
            // expired backendRequest timeout included (HTTPRouteRetryConnectionError,
            // HTTPRouteRetryWithTimeouts).
            forward.retry.retry_on.reset = true;
            if !retry.codes.is_empty() {
                forward.retry.retry_on.status_codes = retry
                    .codes
                    .iter()
                    .copied()
                    .filter(|c| (500..600).contains(c))
                    .collect();
            }
            if let Some(code) = retry.codes.iter().find(|c| !(500..600).contains(*c)) {
                self.diagnostics.push(
                    Diagnostic::warning(format!(
                        "retry code {code} is not retried: the spec allows 500-599"
                    ))
                    .at(location.clone())
                    .object(resource)
                    .field(format!("{field}.retry.codes")),
                );
            }
            forward.retry.backoff = duration(self, retry.backoff.as_deref(), "retry.backoff");
        }
        if backend_refs.is_empty() {
            return invalid(
                self,
                "backendRefs".to_owned(),
                "the rule has no backendRefs and no redirect".to_owned(),
            );
        }
        let mut clusters = Vec::new();
        let mut problems = Vec::new();
        for (b_index, backend) in backend_refs.iter().enumerate() {
            let b_field = format!("{field}.backendRefs[{b_index}]");
            let weight = backend.backend.weight.unwrap_or(DEFAULT_BACKEND_WEIGHT);
            let cluster = match self.backend_cluster(route, resource, &b_field, &backend.backend) {
                Ok(cluster) => cluster,
                Err((why, message)) => {
                    self.status
                        .unresolved(&route.object_ref(), why, message.clone());
                    problems.push((b_index, message.clone()));
                    self.diagnostics.push(
                        Diagnostic::warning(format!(
                            "{message}; its share of requests gets an error"
                        ))
                        .at(location.clone())
                        .object(resource)
                        .field(b_field.clone()),
                    );
                    continue;
                }
            };
            let mut weighted = WeightedCluster::new(weight, cluster);
            for (f_index, filter) in backend.filters.iter().enumerate() {
                match compile_filter(filter) {
                    Ok(Filter::Headers { request, ops }) => merge_ops(
                        if request {
                            &mut weighted.headers.request
                        } else {
                            &mut weighted.headers.response
                        },
                        ops,
                    ),
                    Ok(Filter::Rewrite(rewrite)) => weighted.rewrite = Some(rewrite),
                    Ok(Filter::Redirect(mut redirect)) => {
                        redirect.headers = weighted.headers.clone();
                        weighted.redirect = Some(Box::new(redirect));
                    }
                    Ok(_) | Err(_) => {
                        return invalid(
                            self,
                            format!("backendRefs[{b_index}].filters[{f_index}]"),
                            "only header modifiers, URLRewrite and RequestRedirect are applied on a backendRef".to_owned(),
                        );
                    }
                }
            }
            clusters.push(weighted);
        }
        if clusters.is_empty() {
            let (b_index, message) = problems.swap_remove(0);
            return invalid(self, format!("backendRefs[{b_index}]"), message);
        }
        if clusters.iter().all(|c| c.weight == 0) {
            return invalid(
                self,
                "backendRefs".to_owned(),
                "every backend has weight 0".to_owned(),
            );
        }
        // Requests weighted to an invalid backend get 500 (the spec's answer); a
        // cluster without endpoints stands in for it, marked invalid.
        for (b_index, _) in problems {
            let weight = backend_refs[b_index]
                .backend
                .weight
                .unwrap_or(DEFAULT_BACKEND_WEIGHT);
            let name = &backend_refs[b_index].backend.name;
            let placeholder = self.intern(Cluster::new(
                format!("invalid-backend-ref.{name}"),
                name.clone(),
                route.meta.namespace().to_owned(),
                0,
            ));
            let b_field = format!("{field}.backendRefs[{b_index}]");
            if self.first_naming(placeholder.id) {
                self.say_of_cluster(placeholder.id, location.as_ref(), resource, &b_field);
            }
            let mut invalid = WeightedCluster::new(weight, placeholder);
            invalid.invalid = true;
            clusters.push(invalid);
        }
        forward.clusters = clusters;
        RouteAction::Forward(Box::new(forward))
    }

    /// The cluster of a backendRef, or why it is invalid (the spec's `InvalidKind`,
    /// `RefNotPermitted`, `BackendNotFound`).
    fn backend_cluster(
        &mut self,
        route: &AnyRoute<'_>,
        resource: &ObjectRef,
        field: &str,
        backend: &BackendRef,
    ) -> Result<Arc<Cluster>, Finding> {
        let group = backend.group.as_deref().unwrap_or_default();
        let kind = backend.kind.as_deref().unwrap_or("Service");
        let route_ns = route.meta.namespace();
        let namespace = backend.namespace.as_deref().unwrap_or(route_ns);
        let port = backend.port.map(|number| PortSelector { number });
        let host = match (group, kind) {
            ("", "Service") => {
                if namespace != route_ns && !self.reference_granted(route, namespace, &backend.name)
                {
                    return Err((
                        reason::REF_NOT_PERMITTED,
                        format!(
                            "Service {namespace}/{} is in another namespace and no ReferenceGrant there allows {} from {route_ns} (RefNotPermitted)",
                            backend.name,
                            route.kind.name()
                        ),
                    ));
                }
                let exists = self.resources.services.iter().any(|s| {
                    s.resource.metadata.name == backend.name
                        && s.resource.metadata.namespace() == namespace
                });
                if !exists {
                    return Err((
                        reason::BACKEND_NOT_FOUND,
                        format!("no Service {namespace}/{} (BackendNotFound)", backend.name),
                    ));
                }
                if port.is_none() {
                    // The API server's validation rejects this; without it, no port means
                    // no backend to reach.
                    return Err((
                        reason::BACKEND_NOT_FOUND,
                        "a Service backendRef needs a port".to_owned(),
                    ));
                }
                format!("{}.{namespace}.{CLUSTER_DOMAIN}", backend.name)
            }
            (ISTIO_GROUP, "Hostname") => backend.name.clone(),
            _ => {
                return Err((
                    reason::INVALID_KIND,
                    format!(
                        "backend kind {kind} (group {group:?}) is not supported: expected a Service, or an Istio Hostname (InvalidKind)"
                    ),
                ));
            }
        };
        let destination = Destination {
            host,
            subset: None,
            port,
        };
        Ok(self.cluster(&destination, namespace, route.location, resource, field))
    }

    /// Does a ReferenceGrant in `namespace` let this route refer to Service `name`?
    fn reference_granted(&self, route: &AnyRoute<'_>, namespace: &str, name: &str) -> bool {
        self.resources.reference_grants.iter().any(|grant| {
            grant.resource.metadata.namespace() == namespace
                && grant.resource.spec.from.iter().any(|from| {
                    from.group == GATEWAY_API_GROUP
                        && from.kind == route.kind.name()
                        && from.namespace == route.meta.namespace()
                })
                && grant.resource.spec.to.iter().any(|to| {
                    to.group.is_empty()
                        && to.kind == "Service"
                        && to.name.as_deref().is_none_or(|n| n == name)
                })
        })
    }
}

/// The spec's order among routes that want the same thing: the oldest, then the first by
/// namespace/name. (A route without a creationTimestamp, from a file, counts as oldest.)
fn age(meta: &ObjectMeta) -> (String, String, String) {
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

/// RFC 1123 names with an optional leading `*.`; no IP addresses.
fn check_hostname(host: &str) -> Result<(), &'static str> {
    let name = host.strip_prefix("*.").unwrap_or(host);
    if name.is_empty() || name.len() > 253 {
        return Err("expected a DNS name such as example.com or *.example.com");
    }
    if name.parse::<std::net::IpAddr>().is_ok() {
        return Err("IP addresses are not hostnames");
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if name.split('.').all(label_ok) {
        Ok(())
    } else {
        Err("expected a DNS name such as example.com or *.example.com")
    }
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

#[allow(clippy::too_many_arguments)]
fn push_entries(
    entries: &mut Vec<(String, Entry)>,
    listeners: &[ApiListener<'_>],
    attached: &[(usize, String)],
    route: &AnyRoute<'_>,
    rule_name: &str,
    rule: usize,
    matches: Vec<(RequestMatch, Specificity)>,
    action: &RouteAction,
) {
    let name = format!("{}.{rule_name}", name_of(route.meta));
    for (m_index, (m, specificity)) in matches.into_iter().enumerate() {
        let precedence = Precedence {
            specificity,
            no_method: m.method.is_none(),
            headers: std::cmp::Reverse(m.headers.len()),
            query_params: std::cmp::Reverse(m.query_params.len()),
            created: route.meta.creation_timestamp.clone().unwrap_or_default(),
            name: name_of(route.meta),
            rule,
            matched: m_index,
        };
        for (listener, host) in attached {
            entries.push((
                host.clone(),
                Entry {
                    listener: *listener,
                    precedence: precedence.clone(),
                    route: Route {
                        name: name.clone(),
                        matches: vec![m.clone()],
                        action: redirect_to_listener_port(
                            action,
                            listeners.get(*listener).map(|l| l.port),
                        ),
                    },
                },
            ));
        }
    }
}

/// A RequestRedirect with neither `port` nor `scheme` goes to the listener's port, as
/// the spec asks (HTTPRouteRedirectPortAndScheme): `FromRequest`, which only that case
/// compiles to here, becomes the port of the listener the rule is served on (left out
/// of the Location when it is the scheme's own). The route's and its backendRefs'.
fn redirect_to_listener_port(action: &RouteAction, port: Option<u16>) -> RouteAction {
    let mut action = action.clone();
    let Some(port) = port else {
        return action;
    };
    let fix = |redirect: &mut Redirect| {
        if redirect.port == RedirectPort::FromRequest {
            redirect.port = RedirectPort::Fixed(port);
        }
    };
    match &mut action {
        RouteAction::Redirect(redirect) => fix(redirect),
        RouteAction::Forward(forward) => {
            for cluster in &mut forward.clusters {
                if let Some(redirect) = &mut cluster.redirect {
                    fix(redirect);
                }
            }
        }
        RouteAction::DirectResponse(_) | RouteAction::Unsupported(_) => {}
    }
    action
}

/// One port's entries → its route table: a virtual host per hostname, its rules in
/// precedence order, then the rules of the wildcard hosts covering it on the same
/// listeners.
fn route_table(entries: Vec<(String, &Entry)>) -> RouteTable<RouteAction> {
    let mut by_host: BTreeMap<String, Vec<&Entry>> = BTreeMap::new();
    for (host, entry) in entries {
        by_host.entry(host).or_default().push(entry);
    }
    for list in by_host.values_mut() {
        list.sort_by(|a, b| a.precedence.cmp(&b.precedence));
    }
    let wildcards: Vec<(&String, &Vec<&Entry>)> =
        by_host.iter().filter(|(h, _)| h.starts_with('*')).collect();
    let mut virtual_hosts = Vec::new();
    for (host, list) in &by_host {
        let own_listeners: BTreeSet<usize> = list.iter().map(|e| e.listener).collect();
        let mut routes: Vec<Route<RouteAction>> = list.iter().map(|e| e.route.clone()).collect();
        // Covering wildcards from the longest (most specific) down.
        let mut covering: Vec<&(&String, &Vec<&Entry>)> = wildcards
            .iter()
            .filter(|(w, _)| *w != host && covers(w, host))
            .collect();
        covering.sort_by_key(|(w, _)| std::cmp::Reverse(w.len()));
        for (_, wildcard_entries) in covering {
            routes.extend(
                wildcard_entries
                    .iter()
                    .filter(|e| own_listeners.contains(&e.listener))
                    .map(|e| e.route.clone()),
            );
        }
        virtual_hosts.push(VirtualHost {
            host: host.clone(),
            routes: routes.into(),
        });
    }
    RouteTable::new(virtual_hosts)
}

fn compile_http_match(m: &HttpRouteMatch) -> Result<RequestMatch, (String, String)> {
    let mut compiled = RequestMatch::default();
    let path = m.path.clone().unwrap_or(HttpPathMatch {
        match_type: PathMatchType::PathPrefix,
        value: "/".to_owned(),
    });
    if path.match_type != PathMatchType::RegularExpression && !path.value.starts_with('/') {
        return Err((
            "path.value".to_owned(),
            format!("path {:?} must start with /", path.value),
        ));
    }
    compiled.path = Some(match path.match_type {
        PathMatchType::Exact => StringMatcher::Exact {
            value: path.value.clone(),
            ignore_case: false,
        },
        PathMatchType::PathPrefix => StringMatcher::path_prefix(&path.value),
        PathMatchType::RegularExpression => StringMatcher::regex(&path.value, false)
            .map_err(|e| ("path.value".to_owned(), format!("invalid regex: {e}")))?,
    });
    compiled.headers = compile_name_matches(&m.headers, true)
        .map_err(|(sub, message)| (format!("headers{sub}"), message))?;
    compiled.query_params = compile_name_matches(&m.query_params, false)
        .map_err(|(sub, message)| (format!("queryParams{sub}"), message))?;
    compiled.method = m.method.map(|method| StringMatcher::Exact {
        value: method.as_str().to_owned(),
        ignore_case: false,
    });
    Ok(compiled)
}

/// Header (names case-insensitive) or query (case-sensitive) matches; the first entry of
/// a repeated name wins, as the spec says.
fn compile_name_matches(
    matches: &[NameMatch],
    fold_case: bool,
) -> Result<Vec<(String, StringMatcher)>, (String, String)> {
    let mut compiled: Vec<(String, StringMatcher)> = Vec::new();
    for (index, m) in matches.iter().enumerate() {
        let name = if fold_case {
            m.name.to_ascii_lowercase()
        } else {
            m.name.clone()
        };
        if compiled.iter().any(|(n, _)| *n == name) {
            continue;
        }
        let matcher = match m.match_type {
            ValueMatchType::Exact => StringMatcher::Exact {
                value: m.value.clone(),
                ignore_case: false,
            },
            ValueMatchType::RegularExpression => StringMatcher::regex(&m.value, false)
                .map_err(|e| (format!("[{index}].value"), format!("invalid regex: {e}")))?,
        };
        compiled.push((name, matcher));
    }
    Ok(compiled)
}

enum Filter {
    Headers {
        request: bool,
        ops: HeaderOps,
    },
    Redirect(Redirect),
    Rewrite(Rewrite),
    Cors(CorsPolicy),
    Mirror {
        backend: BackendRef,
        percentage: f64,
    },
}

fn compile_filter(filter: &HttpRouteFilter) -> Result<Filter, String> {
    let missing = |field: &str| {
        format!(
            "filter type {:?} needs its `{field}` field",
            filter.filter_type
        )
    };
    match filter.filter_type {
        FilterType::RequestHeaderModifier => Ok(Filter::Headers {
            request: true,
            ops: header_ops(
                filter
                    .request_header_modifier
                    .as_ref()
                    .ok_or_else(|| missing("requestHeaderModifier"))?,
            )?,
        }),
        FilterType::ResponseHeaderModifier => Ok(Filter::Headers {
            request: false,
            ops: header_ops(
                filter
                    .response_header_modifier
                    .as_ref()
                    .ok_or_else(|| missing("responseHeaderModifier"))?,
            )?,
        }),
        FilterType::RequestRedirect => {
            let r = filter
                .request_redirect
                .as_ref()
                .ok_or_else(|| missing("requestRedirect"))?;
            let status = r.status_code.unwrap_or(DEFAULT_REDIRECT_STATUS);
            if ![301, 302, 303, 307, 308].contains(&status) {
                return Err(format!(
                    "redirect statusCode {status}: expected 301, 302, 303, 307 or 308"
                ));
            }
            let port = match (r.port, &r.scheme) {
                (Some(p), _) => RedirectPort::Fixed(
                    u16::try_from(p)
                        .ok()
                        .filter(|p| *p != 0)
                        .ok_or_else(|| format!("redirect port {p}: expected 1-65535"))?,
                ),
                (None, Some(_)) => RedirectPort::ProtocolDefault,
                // The spec: the listener's port. Compiled as the request's and replaced
                // per listener in `push_entries` (`redirect_to_listener_port`).
                (None, None) => RedirectPort::FromRequest,
            };
            Ok(Filter::Redirect(Redirect {
                scheme: r.scheme.clone(),
                authority: r.hostname.clone(),
                port,
                path: r.path.as_ref().map(path_modifier).transpose()?,
                status,
                headers: HeaderPolicy::default(),
                cors: None,
            }))
        }
        FilterType::UrlRewrite => {
            let r = filter
                .url_rewrite
                .as_ref()
                .ok_or_else(|| missing("urlRewrite"))?;
            Ok(Filter::Rewrite(Rewrite {
                path: r.path.as_ref().map(path_modifier).transpose()?,
                authority: r.hostname.clone(),
            }))
        }
        FilterType::RequestMirror => {
            let m = filter
                .request_mirror
                .as_ref()
                .ok_or_else(|| missing("requestMirror"))?;
            let percentage = match (m.percent, &m.fraction) {
                (Some(p), _) => f64::from(p.min(100)),
                (None, Some(f)) => {
                    let denominator = f.denominator.unwrap_or(100).max(1);
                    100.0 * f64::from(f.numerator.min(denominator)) / f64::from(denominator)
                }
                (None, None) => 100.0,
            };
            Ok(Filter::Mirror {
                backend: m.backend_ref.clone(),
                percentage,
            })
        }
        FilterType::Cors => {
            let c = filter.cors.as_ref().ok_or_else(|| missing("cors"))?;
            Ok(Filter::Cors(compile_cors(c)?))
        }
        FilterType::ExternalAuth | FilterType::ExtensionRef => Err(format!(
            "filter type {:?} is not supported",
            filter.filter_type
        )),
    }
}

/// The spec's default `maxAge`.
const DEFAULT_CORS_MAX_AGE: u64 = 5;

fn compile_cors(c: &HttpCors) -> Result<CorsPolicy, String> {
    let mut allow_origins = Vec::new();
    for origin in &c.allow_origins {
        if origin == "*" {
            allow_origins
                .push(StringMatcher::regex(".*", false).map_err(|e| format!("allowOrigins: {e}"))?);
        } else if origin.contains('*') {
            // `*` stands for one or more DNS labels' worth of characters, not a `/` or `:`.
            let pattern = origin
                .split('*')
                .map(regex::escape)
                .collect::<Vec<_>>()
                .join("[^/:]+");
            allow_origins.push(
                StringMatcher::regex(&pattern, true)
                    .map_err(|e| format!("allowOrigins {origin:?}: {e}"))?,
            );
        } else {
            allow_origins.push(StringMatcher::Exact {
                value: origin.clone(),
                ignore_case: true,
            });
        }
    }
    Ok(CorsPolicy {
        allow_origins,
        allow_methods: c.allow_methods.join(","),
        allow_headers: c.allow_headers.join(","),
        expose_headers: c.expose_headers.join(","),
        max_age: Some(c.max_age.unwrap_or(DEFAULT_CORS_MAX_AGE)),
        allow_credentials: c.allow_credentials,
    })
}

fn path_modifier(m: &PathModifier) -> Result<PathRewrite, String> {
    match m.modifier_type {
        PathModifierType::ReplaceFullPath => Ok(PathRewrite::Full(
            m.replace_full_path
                .clone()
                .ok_or("ReplaceFullPath needs replaceFullPath")?,
        )),
        PathModifierType::ReplacePrefixMatch => Ok(PathRewrite::Prefix(
            m.replace_prefix_match
                .clone()
                .ok_or("ReplacePrefixMatch needs replacePrefixMatch")?,
        )),
    }
}

fn header_ops(modifier: &HeaderModifier) -> Result<HeaderOps, String> {
    let name = |n: &str| {
        HeaderName::from_bytes(n.to_ascii_lowercase().as_bytes())
            .map_err(|_| format!("{n:?} is not a valid header name"))
    };
    let value = |v: &str| {
        HeaderValue::from_str(v).map_err(|_| format!("{v:?} is not a valid header value"))
    };
    let pairs = |list: &[HttpHeader]| {
        list.iter()
            .map(|h| Ok((name(&h.name)?, value(&h.value)?)))
            .collect::<Result<Vec<_>, String>>()
    };
    Ok(HeaderOps {
        set: pairs(&modifier.set)?,
        add: pairs(&modifier.add)?,
        remove: modifier
            .remove
            .iter()
            .map(|n| name(n))
            .collect::<Result<_, _>>()?,
    })
}

fn merge_ops(target: &mut HeaderOps, ops: HeaderOps) {
    target.set.extend(ops.set);
    target.add.extend(ops.add);
    target.remove.extend(ops.remove);
}

#[cfg(test)]
#[path = "gateway_api_tests.rs"]
mod tests;
