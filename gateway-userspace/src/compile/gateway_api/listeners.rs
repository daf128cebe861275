//! Our Gateways' listeners: which Gateways are ours (by class), the addresses they bind,
//! and the conflicts between listeners on one port.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    sync::Arc,
};

use super::attach::age;
use super::{Admission, ApiListener, RouteKind};
use crate::compile::{
    addresses,
    index::Index,
    sink::Sink,
    status::{Finding, reason},
};
use crate::config::{
    Diagnostic, Kind, Location, ObjectRef, Sourced,
    resources::{
        Labels,
        gateway_api::{ApiGateway, FromNamespaces, LabelSelector},
    },
};

impl<'a> Index<'a> {
    pub(super) fn is_our_class(&self, gateway: &ApiGateway) -> bool {
        crate::compile::status::is_our_class(self.resources, self.identity, gateway)
    }

    /// Whether `allowedRoutes.namespaces.selector` admits routes of `namespace` (by the
    /// labels of its Namespace object; a namespace we have no object for has none). No
    /// selector selects nothing, as the spec requires one with `from: Selector`.
    pub(super) fn namespace_selected(
        &self,
        namespace: &str,
        selector: Option<&LabelSelector>,
    ) -> bool {
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
    pub(super) fn conflicts(&self, found: &[&ApiListener<'a>]) -> BTreeMap<usize, Finding> {
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
}

/// Our Gateways' HTTP listeners; conflicts (the same port and hostname twice) are
/// reported and, as the spec says, neither conflicted listener is served.
pub(super) fn api_listeners<'a>(
    ix: &Index<'a>,
    sink: &mut Sink,
    taken: &BTreeSet<u16>,
) -> Vec<ApiListener<'a>> {
    let mut found: Vec<(ApiListener<'a>, Option<Location>, String)> = Vec::new();
    for gateway in &ix.resources.api_gateways {
        if !ix.is_our_class(&gateway.resource) {
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
                sink.push(
                    Diagnostic::warning(message)
                        .at(gateway.location.clone())
                        .object(&resource)
                        .field(field),
                );
            }
        }
        let Some(binds) = gateway_binds(ix, sink, gateway) else {
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
                sink.push(
                    Diagnostic::warning(format!(
                        "TLS options {} are not applied: this gateway defines no listener TLS options",
                        keys.join(", ")
                    ))
                    .at(gateway.location.clone())
                    .object(&resource)
                    .field(format!("{field}.tls.options")),
                );
            }
            sink.status.listener(&resource, &listener.name);
            let error = |message: String, sub: &str| {
                Diagnostic::error(message)
                    .at(gateway.location.clone())
                    .object(&resource)
                    .field(format!("{field}{sub}"))
            };
            if !names.insert(listener.name.as_str()) {
                sink.push(error(
                    format!(
                        "listener name {:?} is used twice: listener names must be unique within a Gateway",
                        listener.name
                    ),
                    ".name",
                ));
                continue;
            }
            let Some(port) = u16::try_from(listener.port).ok().filter(|p| *p != 0) else {
                sink.push(error(
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
                sink.status.listener(&resource, &listener.name).not_accepted =
                    Some((reason::UNSUPPORTED_PROTOCOL, message.clone()));
                sink.push(
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
                sink.status.listener(&resource, &listener.name).not_accepted =
                    Some((reason::PORT_UNAVAILABLE, message.clone()));
                sink.push(
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
                sink.push(error(format!("hostname {h:?}: {why}"), ".hostname"));
                continue;
            }
            let allowed = &listener.allowed_routes;
            if allowed.namespaces.from == FromNamespaces::Selector
                && ix.resources.namespaces.is_empty()
            {
                sink.push(
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
    let conflicted = ix.conflicts(&found.iter().map(|(l, _, _)| l).collect::<Vec<_>>());
    let mut listeners = Vec::new();
    for (index, (listener, location, place)) in found.into_iter().enumerate() {
        if let Some((why, message)) = conflicted.get(&index) {
            let findings = sink
                .status
                .listener(&listener.gateway.resource.object_ref(), listener.name);
            findings.conflicted = Some((why, message.clone()));
            findings.not_accepted = Some((why, message.clone()));
            sink.push(Diagnostic::warning(format!("{place}: {message}")).at(location));
            continue;
        }
        listeners.push(listener);
    }
    listeners
}

/// Where `gateway`'s listeners bind (compile/addresses.rs), its findings recorded for
/// status; None when none is served: an address of a type we do not support (the
/// Gateway is not accepted) or none of its addresses usable here.
fn gateway_binds<'a>(
    ix: &Index<'a>,
    sink: &mut Sink,
    gateway: &'a Sourced<ApiGateway>,
) -> Option<Arc<[Option<IpAddr>]>> {
    let resource = gateway.resource.object_ref();
    let spec = &gateway.resource.spec;
    let resolved = addresses::resolve(&spec.addresses, ix.identity.address_check);
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
        sink.push(warn(message.clone()));
        sink.status.gateway(&resource).unsupported_address = Some(message);
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
        sink.push(warn(message.clone()));
        sink.status.gateway(&resource).unusable_address = Some(message);
    }
    sink.status.gateway(&resource).addresses = resolved.reported;
    let not_served = not_served.or_else(|| {
        resolved.binds.is_empty().then_some(
            "none of the Gateway's addresses can be used on this node (AddressNotUsable)",
        )
    });
    if let Some(why) = not_served {
        for listener in &spec.listeners {
            sink.status
                .listener(&resource, &listener.name)
                .not_programmed = Some(why.to_owned());
        }
        return None;
    }
    Some(resolved.binds.into())
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
