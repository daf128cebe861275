//! Builds the Gateway API part of the compile's [`Report`]: the compile records what it
//! found while attaching listeners, routes and references ([`StatusRecorder`]), and
//! [`build`] turns that into the conditions the spec names, with its reasons.

use std::collections::{BTreeSet, HashMap};

use super::{
    Identity,
    report::{
        Condition, GatewayStatus, GroupKind, ListenerStatus, ObjectStatus, ParentRef, PolicyStatus,
        Report, RouteParentStatus, RouteStatus,
    },
};
use crate::config::{
    Kind, ObjectRef, Resources,
    object_ref::GATEWAY_API_GROUP,
    resources::{
        ObjectMeta,
        gateway_api::{ApiGateway, Listener, ParentReference},
    },
};

/// Istio's reason strings are the spec's; these are the ones the compile produces.
pub mod reason {
    pub const ACCEPTED: &str = "Accepted";
    pub const PROGRAMMED: &str = "Programmed";
    pub const INVALID: &str = "Invalid";
    pub const LISTENERS_NOT_VALID: &str = "ListenersNotValid";
    pub const INVALID_PARAMETERS: &str = "InvalidParameters";
    pub const PORT_UNAVAILABLE: &str = "PortUnavailable";
    pub const UNSUPPORTED_PROTOCOL: &str = "UnsupportedProtocol";
    pub const UNSUPPORTED_VALUE: &str = "UnsupportedValue";
    pub const RESOLVED_REFS: &str = "ResolvedRefs";
    pub const INVALID_CERTIFICATE_REF: &str = "InvalidCertificateRef";
    pub const INVALID_CA_CERTIFICATE_REF: &str = "InvalidCACertificateRef";
    pub const INVALID_CA_CERTIFICATE_KIND: &str = "InvalidCACertificateKind";
    pub const NO_VALID_CA_CERTIFICATE: &str = "NoValidCACertificate";
    pub const REF_NOT_PERMITTED: &str = "RefNotPermitted";
    pub const INVALID_ROUTE_KINDS: &str = "InvalidRouteKinds";
    pub const NO_CONFLICTS: &str = "NoConflicts";
    pub const HOSTNAME_CONFLICT: &str = "HostnameConflict";
    pub const PROTOCOL_CONFLICT: &str = "ProtocolConflict";
    pub const NOT_ALLOWED_BY_LISTENERS: &str = "NotAllowedByListeners";
    pub const NO_MATCHING_LISTENER_HOSTNAME: &str = "NoMatchingListenerHostname";
    pub const NO_MATCHING_PARENT: &str = "NoMatchingParent";
    pub const INVALID_KIND: &str = "InvalidKind";
    pub const BACKEND_NOT_FOUND: &str = "BackendNotFound";
    pub const CONFIGURATION_CHANGED: &str = "ConfigurationChanged";
    pub const UNSUPPORTED_ADDRESS: &str = "UnsupportedAddress";
    pub const ADDRESS_NOT_USABLE: &str = "AddressNotUsable";
    pub const CONFLICTED: &str = "Conflicted";
}

/// A reason and the message that explains it.
pub(super) type Finding = (&'static str, String);

/// What compiling one listener found; nothing means all is well.
#[derive(Default)]
pub(super) struct ListenerFindings {
    pub not_accepted: Option<Finding>,
    pub unresolved: Option<Finding>,
    pub conflicted: Option<Finding>,
    pub not_programmed: Option<String>,
    /// Routes accepted on it.
    pub attached: BTreeSet<ObjectRef>,
}

/// What compiling a Gateway's `spec.addresses` found (compile/addresses.rs).
#[derive(Default)]
pub(super) struct GatewayFindings {
    /// Why it is not accepted: an address of a type we do not support.
    pub unsupported_address: Option<String>,
    /// Addresses it asked for that this node cannot listen on.
    pub unusable_address: Option<String>,
    /// The addresses it is served on, for `status.addresses`; None: the node's.
    pub addresses: Option<Vec<std::net::IpAddr>>,
}

#[derive(Default)]
pub(super) struct StatusRecorder {
    listeners: HashMap<(ObjectRef, String), ListenerFindings>,
    gateways: HashMap<ObjectRef, GatewayFindings>,
    /// (route, index in its parentRefs) → attached somewhere, or why not.
    parents: HashMap<(ObjectRef, usize), Result<(), Finding>>,
    /// A route's first reference that did not resolve.
    unresolved: HashMap<ObjectRef, Finding>,
}

impl StatusRecorder {
    pub(super) fn listener(&mut self, gateway: &ObjectRef, name: &str) -> &mut ListenerFindings {
        self.listeners
            .entry((gateway.clone(), name.to_owned()))
            .or_default()
    }

    pub(super) fn gateway(&mut self, gateway: &ObjectRef) -> &mut GatewayFindings {
        self.gateways.entry(gateway.clone()).or_default()
    }

    /// An attachment wins over any reason for not attaching through the same parentRef.
    pub(super) fn parent(&mut self, route: &ObjectRef, index: usize, outcome: Result<(), Finding>) {
        let entry = self
            .parents
            .entry((route.clone(), index))
            .or_insert_with(|| outcome.clone());
        if outcome.is_ok() {
            *entry = Ok(());
        }
    }

    pub(super) fn unresolved(&mut self, route: &ObjectRef, reason: &'static str, message: String) {
        self.unresolved
            .entry(route.clone())
            .or_insert((reason, message));
    }
}

/// Is this Gateway's class ours: named by `--gateway-class`, or a GatewayClass whose
/// `spec.controllerName` is our controller name?
pub(super) fn is_our_class(
    resources: &Resources,
    identity: &Identity,
    gateway: &ApiGateway,
) -> bool {
    let class = &gateway.spec.gateway_class_name;
    *class == identity.gateway_class
        || resources.gateway_classes.iter().any(|c| {
            c.resource.metadata.name == *class
                && c.resource.spec.controller_name == identity.controller_name
        })
}

fn generation(meta: &ObjectMeta, mut conditions: Vec<Condition>) -> Vec<Condition> {
    for c in &mut conditions {
        c.observed_generation = meta.generation;
    }
    conditions
}

/// Route kinds a listener of `protocol` can carry.
pub(super) fn kinds_for(protocol: &str) -> &'static [&'static str] {
    match protocol.to_ascii_uppercase().as_str() {
        "HTTP" | "HTTPS" => &["HTTPRoute", "GRPCRoute"],
        "TLS" => &["TLSRoute"],
        "TCP" => &["TCPRoute"],
        _ => &[],
    }
}

/// supportedKinds, and the kinds asked for in allowedRoutes that this listener cannot carry.
fn supported_kinds(listener: &Listener) -> (Vec<GroupKind>, Vec<String>) {
    let possible = kinds_for(&listener.protocol);
    let wanted = &listener.allowed_routes.kinds;
    if wanted.is_empty() {
        let kinds = possible
            .iter()
            .map(|k| GroupKind {
                group: GATEWAY_API_GROUP.to_owned(),
                kind: (*k).to_owned(),
            })
            .collect();
        return (kinds, Vec::new());
    }
    let mut kinds = Vec::new();
    let mut invalid = Vec::new();
    for k in wanted {
        let group = k.group.as_deref().unwrap_or(GATEWAY_API_GROUP);
        if group == GATEWAY_API_GROUP && possible.contains(&k.kind.as_str()) {
            kinds.push(GroupKind {
                group: group.to_owned(),
                kind: k.kind.clone(),
            });
        } else {
            invalid.push(format!("{group}/{}", k.kind));
        }
    }
    (kinds, invalid)
}

fn listener_status(
    gateway: &ObjectRef,
    listener: &Listener,
    recorder: &StatusRecorder,
) -> ListenerStatus {
    let empty = ListenerFindings::default();
    let found = recorder
        .listeners
        .get(&(gateway.clone(), listener.name.clone()))
        .unwrap_or(&empty);
    let (supported, invalid_kinds) = supported_kinds(listener);
    let accepted = match &found.not_accepted {
        Some((reason, message)) => Condition::new("Accepted", false, reason, message),
        None => Condition::new("Accepted", true, reason::ACCEPTED, ""),
    };
    let resolved = match (&found.unresolved, invalid_kinds.is_empty()) {
        (Some((reason, message)), _) => Condition::new("ResolvedRefs", false, reason, message),
        (None, false) => Condition::new(
            "ResolvedRefs",
            false,
            reason::INVALID_ROUTE_KINDS,
            format!(
                "route kinds {} cannot attach to a {} listener",
                invalid_kinds.join(", "),
                listener.protocol
            ),
        ),
        (None, true) => Condition::new("ResolvedRefs", true, reason::RESOLVED_REFS, ""),
    };
    let conflicted = match &found.conflicted {
        Some((reason, message)) => Condition::new("Conflicted", true, reason, message),
        None => Condition::new("Conflicted", false, reason::NO_CONFLICTS, ""),
    };
    // A conflicted listener is neither accepted nor programmed, for the conflict's reason
    // (as the spec's ListenerSet conflict tests expect of merged listeners).
    let why_not = if let Some((reason, message)) = &found.conflicted {
        Some((*reason, message.clone()))
    } else if !accepted.is_true() {
        Some((reason::INVALID, accepted.message.clone()))
    } else {
        found.not_programmed.clone().map(|m| (reason::INVALID, m))
    };
    let programmed = match why_not {
        Some((reason, message)) => Condition::new("Programmed", false, reason, message),
        None => Condition::new("Programmed", true, reason::PROGRAMMED, ""),
    };
    ListenerStatus {
        name: listener.name.clone(),
        supported_kinds: supported,
        attached_routes: u32::try_from(found.attached.len()).unwrap_or(u32::MAX),
        conditions: vec![accepted, programmed, resolved, conflicted],
    }
}

/// Why a Gateway's `spec.infrastructure.parametersRef` is invalid, as Istio judges it: only
/// a ConfigMap in the Gateway's namespace that exists. The Gateway is still served (Istio
/// keeps it programmed); its `Accepted` condition says what is wrong.
fn invalid_parameters(gateway: &ApiGateway, resources: &Resources) -> Option<String> {
    let params = gateway
        .spec
        .infrastructure
        .as_ref()?
        .parameters_ref
        .as_ref()?;
    if params.kind != "ConfigMap" || !params.group.is_empty() {
        return Some(format!(
            "unsupported parametersRef group/kind {}/{}: only a core ConfigMap is supported",
            params.group, params.kind
        ));
    }
    let namespace = gateway.metadata.namespace();
    let exists = resources.config_maps.iter().any(|c| {
        c.resource.metadata.namespace() == namespace && c.resource.metadata.name == params.name
    });
    (!exists).then(|| {
        format!(
            "parametersRef ConfigMap {namespace}/{} does not exist",
            params.name
        )
    })
}

fn gateway_status(
    gateway: &ApiGateway,
    resources: &Resources,
    recorder: &StatusRecorder,
) -> GatewayStatus {
    let object = gateway.object_ref();
    let listeners: Vec<ListenerStatus> = gateway
        .spec
        .listeners
        .iter()
        .map(|l| listener_status(&object, l, recorder))
        .collect();
    let condition =
        |l: &ListenerStatus, kind: &str| l.conditions.iter().any(|c| c.kind == kind && c.is_true());
    let valid = listeners
        .iter()
        .filter(|l| condition(l, "Accepted"))
        .count();
    let programmed = listeners
        .iter()
        .filter(|l| condition(l, "Programmed"))
        .count();
    let empty = GatewayFindings::default();
    let found = recorder.gateways.get(&object).unwrap_or(&empty);
    let accepted = if let Some(message) = &found.unsupported_address {
        Condition::new("Accepted", false, reason::UNSUPPORTED_ADDRESS, message)
    } else if let Some(message) = invalid_parameters(gateway, resources) {
        Condition::new("Accepted", false, reason::INVALID_PARAMETERS, message)
    } else if valid == listeners.len() {
        Condition::new("Accepted", true, reason::ACCEPTED, "")
    } else {
        Condition::new(
            "Accepted",
            valid > 0,
            reason::LISTENERS_NOT_VALID,
            format!(
                "{} of {} listeners are not valid",
                listeners.len() - valid,
                listeners.len()
            ),
        )
    };
    let programmed = if found.unsupported_address.is_some() {
        Condition::new(
            "Programmed",
            false,
            reason::INVALID,
            "the Gateway is not accepted: no listener is served",
        )
    } else if let Some(message) = &found.unusable_address {
        Condition::new("Programmed", false, reason::ADDRESS_NOT_USABLE, message)
    } else if programmed > 0 {
        Condition::new("Programmed", true, reason::PROGRAMMED, "")
    } else {
        Condition::new(
            "Programmed",
            false,
            reason::INVALID,
            "no listener is served",
        )
    };
    let mut conditions = vec![accepted, programmed];
    // Present only while some port allows unverified clients, as the spec asks.
    if let Some(frontend) = gateway.spec.tls.as_ref().and_then(|t| t.frontend.as_ref()) {
        let insecure = std::iter::once(&frontend.default)
            .chain(frontend.per_port.iter().map(|p| &p.tls))
            .filter_map(|tls| tls.validation.as_ref())
            .any(|v| v.mode.as_deref() == Some("AllowInsecureFallback"));
        if insecure {
            conditions.push(Condition::new(
                "InsecureFrontendValidationMode",
                true,
                reason::CONFIGURATION_CHANGED,
                "client certificates that do not verify are accepted (AllowInsecureFallback); they are served as no certificate",
            ));
        }
    }
    GatewayStatus {
        generation: gateway.metadata.generation,
        conditions: generation(&gateway.metadata, conditions),
        listeners: listeners
            .into_iter()
            .map(|mut l| {
                l.conditions = generation(&gateway.metadata, l.conditions);
                l
            })
            .collect(),
        object,
        addresses: found.addresses.clone(),
    }
}

/// The parentRefs that name one of our Gateways, with their index and that Gateway.
fn our_parents<'r>(
    resources: &'r Resources,
    identity: &Identity,
    route_namespace: &str,
    parents: &'r [ParentReference],
) -> Vec<(usize, &'r ParentReference, &'r ApiGateway)> {
    parents
        .iter()
        .enumerate()
        .filter(|(_, p)| {
            p.group.as_deref().unwrap_or(GATEWAY_API_GROUP) == GATEWAY_API_GROUP
                && p.kind.as_deref().unwrap_or("Gateway") == "Gateway"
        })
        .filter_map(|(index, p)| {
            let namespace = p.namespace.as_deref().unwrap_or(route_namespace);
            let gateway = resources.api_gateways.iter().find(|g| {
                g.resource.metadata.name == p.name && g.resource.metadata.namespace() == namespace
            })?;
            is_our_class(resources, identity, &gateway.resource).then_some((
                index,
                p,
                &*gateway.resource,
            ))
        })
        .collect()
}

fn route_status(
    object: ObjectRef,
    meta: &ObjectMeta,
    parents: &[ParentReference],
    resources: &Resources,
    identity: &Identity,
    recorder: &StatusRecorder,
) -> Option<RouteStatus> {
    let ours = our_parents(resources, identity, meta.namespace(), parents);
    if ours.is_empty() {
        return None;
    }
    let resolved = match recorder.unresolved.get(&object) {
        Some((reason, message)) => Condition::new("ResolvedRefs", false, reason, message),
        None => Condition::new("ResolvedRefs", true, reason::RESOLVED_REFS, ""),
    };
    let parents = ours
        .into_iter()
        .map(|(index, p, gateway)| {
            let accepted = match recorder.parents.get(&(object.clone(), index)) {
                Some(Ok(())) => Condition::new("Accepted", true, reason::ACCEPTED, ""),
                Some(Err((reason, message))) => Condition::new("Accepted", false, reason, message),
                None => {
                    // Not attached and no reason recorded: a listener that matches the
                    // sectionName/port exists but took no route of this kind, or none does.
                    let matches = gateway.spec.listeners.iter().any(|l| {
                        p.section_name.as_deref().is_none_or(|s| s == l.name)
                            && p.port.is_none_or(|port| port == l.port)
                    });
                    if matches {
                        Condition::new(
                            "Accepted",
                            false,
                            reason::NOT_ALLOWED_BY_LISTENERS,
                            format!(
                                "no listener of Gateway {} takes this {}",
                                p.name, object.kind
                            ),
                        )
                    } else {
                        Condition::new(
                            "Accepted",
                            false,
                            reason::NO_MATCHING_PARENT,
                            "no listener matches its sectionName/port",
                        )
                    }
                }
            };
            RouteParentStatus {
                parent_ref: ParentRef {
                    group: GATEWAY_API_GROUP.to_owned(),
                    kind: "Gateway".to_owned(),
                    namespace: p
                        .namespace
                        .clone()
                        .unwrap_or_else(|| meta.namespace().to_owned()),
                    name: p.name.clone(),
                    section_name: p.section_name.clone(),
                    port: p.port,
                },
                conditions: generation(meta, vec![accepted, resolved.clone()]),
            }
        })
        .collect();
    Some(RouteStatus {
        object,
        generation: meta.generation,
        parents,
    })
}

/// The Gateway API status of everything a compile was given, with the policies' statuses
/// (`backend_tls::policy_statuses`, which reads this module's reasons).
pub(super) fn build(
    resources: &Resources,
    identity: &Identity,
    recorder: &StatusRecorder,
    policies: Vec<PolicyStatus>,
) -> Report {
    let gateway_classes = resources
        .gateway_classes
        .iter()
        .map(|c| &c.resource)
        .filter(|c| {
            c.metadata.name == identity.gateway_class
                || c.spec.controller_name == identity.controller_name
        })
        .map(|c| ObjectStatus {
            object: c.object_ref(),
            generation: c.metadata.generation,
            conditions: generation(
                &c.metadata,
                vec![Condition::new("Accepted", true, reason::ACCEPTED, "")],
            ),
        })
        .collect();
    let gateways = resources
        .api_gateways
        .iter()
        .filter(|g| is_our_class(resources, identity, &g.resource))
        .map(|g| gateway_status(&g.resource, resources, recorder))
        .collect();
    let mut routes = Vec::new();
    let mut add = |object: ObjectRef, meta: &ObjectMeta, parents: &[ParentReference]| {
        routes.extend(route_status(
            object, meta, parents, resources, identity, recorder,
        ));
    };
    for r in &resources.http_routes {
        add(
            r.resource.object_ref(),
            &r.resource.metadata,
            &r.resource.spec.parent_refs,
        );
    }
    for r in &resources.grpc_routes {
        add(
            r.resource.object_ref(),
            &r.resource.metadata,
            &r.resource.spec.parent_refs,
        );
    }
    for r in &resources.tls_routes {
        add(
            r.resource.object_ref(),
            &r.resource.metadata,
            &r.resource.spec.parent_refs,
        );
    }
    for r in &resources.tcp_routes {
        add(
            r.resource.object_ref(),
            &r.resource.metadata,
            &r.resource.spec.parent_refs,
        );
    }
    Report {
        controller_name: identity.controller_name.clone(),
        dropped: Vec::new(),
        gateway_classes,
        gateways,
        routes,
        policies,
    }
}

/// Status for the Gateway API objects isolation dropped: a Gateway is neither accepted nor
/// programmed, a route is not accepted by any of our parents (`UnsupportedValue`, with the
/// error). `original` holds them as loaded (objects that did not parse are not there, and
/// are only in `Report::dropped`).
pub(super) fn add_dropped(report: &mut Report, original: &Resources, identity: &Identity) {
    let dropped: Vec<(ObjectRef, String)> = report
        .dropped
        .iter()
        .map(|d| (d.object.clone(), d.reason()))
        .collect();
    for (object, why) in dropped {
        if object.group != GATEWAY_API_GROUP {
            continue;
        }
        let same =
            |meta: &ObjectMeta| meta.name == object.name && meta.namespace() == object.namespace;
        let route_parents = match object.kind.as_str() {
            "Gateway" => {
                if let Some(g) = original
                    .api_gateways
                    .iter()
                    .find(|g| same(&g.resource.metadata))
                    && is_our_class(original, identity, &g.resource)
                {
                    let meta = &g.resource.metadata;
                    report.gateways.push(GatewayStatus {
                        object: object.clone(),
                        generation: meta.generation,
                        conditions: generation(
                            meta,
                            vec![
                                Condition::new("Accepted", false, reason::INVALID, why.clone()),
                                Condition::new("Programmed", false, reason::INVALID, why.clone()),
                            ],
                        ),
                        listeners: Vec::new(),
                        addresses: None,
                    });
                }
                continue;
            }
            "HTTPRoute" => original
                .http_routes
                .iter()
                .find(|r| same(&r.resource.metadata))
                .map(|r| (&r.resource.metadata, &r.resource.spec.parent_refs)),
            "GRPCRoute" => original
                .grpc_routes
                .iter()
                .find(|r| same(&r.resource.metadata))
                .map(|r| (&r.resource.metadata, &r.resource.spec.parent_refs)),
            "TLSRoute" => original
                .tls_routes
                .iter()
                .find(|r| same(&r.resource.metadata))
                .map(|r| (&r.resource.metadata, &r.resource.spec.parent_refs)),
            "TCPRoute" => original
                .tcp_routes
                .iter()
                .find(|r| same(&r.resource.metadata))
                .map(|r| (&r.resource.metadata, &r.resource.spec.parent_refs)),
            _ => None,
        };
        let Some((meta, parents)) = route_parents else {
            continue;
        };
        let mut recorder = StatusRecorder::default();
        for (index, _) in parents.iter().enumerate() {
            recorder.parent(
                &object,
                index,
                Err((reason::UNSUPPORTED_VALUE, why.clone())),
            );
        }
        report.routes.extend(route_status(
            object.clone(),
            meta,
            parents,
            original,
            identity,
            &recorder,
        ));
    }
    report.gateways.sort_by(|a, b| a.object.cmp(&b.object));
    report.routes.sort_by(|a, b| a.object.cmp(&b.object));
}
