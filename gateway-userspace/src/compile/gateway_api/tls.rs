//! Gateway API TLS listeners: terminating configurations, passthrough SNI routes from
//! TLSRoutes, TCPRoute backends, frontend client-certificate validation.

use std::sync::Arc;

use crate::compile::{
    Built,
    clusters::At,
    gateway_api::{GATEWAY_API_GROUP, PortListener, reference_grant::Reference},
    index::Index,
    sink::Sink,
    status::reason,
    tls::{TerminatingConfig, Wanted},
};
use crate::{
    config::{
        Diagnostic, Kind, ObjectRef, Sourced,
        resources::{
            Destination, ObjectMeta, PortSelector,
            gateway_api::{ApiGateway, L4RouteRule, TlsMode as ApiTlsMode, TlsRoute},
        },
    },
    snapshot::{
        AfterTermination, ListenerTls, Protocol, ServedCredential, SniRoute, TlsMode, TlsServer,
        Transport, WeightedCluster,
    },
    tls::{
        certs::{self},
        client_cert::ClientAuth,
        credentials::Credential,
        server_config::{self, HTTPS_ALPN, ServerSettings},
    },
};

/// Gateway API HTTPS listeners on one port (`tls.mode: Terminate`, the default): each
/// becomes a TLS server for its hostname (`*` without one) with the certificates of its
/// `certificateRefs` (Secrets; another namespace's only with a ReferenceGrant there).
/// None when no listener on the port is HTTPS.
pub(super) fn gateway_api_tls<'a>(
    ix: &Index<'a>,
    sink: &mut Sink,
    built: &mut Built,
    listeners: &[PortListener<'a>],
) -> (Protocol, Option<Arc<Transport>>) {
    let mut servers = Vec::new();
    let mut any_https = false;
    let mut any_tls = false;
    let mut tcp_clusters: Option<Vec<WeightedCluster>> = None;
    for port_listener in listeners {
        let (gateway, name) = (port_listener.gateway, port_listener.name);
        let Some((index, listener)) = gateway
            .resource
            .spec
            .listeners
            .iter()
            .enumerate()
            .find(|(_, l)| l.name == name)
        else {
            continue;
        };
        let resource = gateway.resource.object_ref();
        if listener.protocol.eq_ignore_ascii_case("TCP") {
            let clusters = port_listener
                .tcp_route
                .map(|route| {
                    api_backends(
                        ix,
                        sink,
                        built,
                        &route.resource.spec.rules,
                        &route.resource.metadata,
                        "TCPRoute",
                        route.location.as_ref(),
                    )
                })
                .unwrap_or_default();
            tcp_clusters.get_or_insert_with(Vec::new).extend(clusters);
            continue;
        }
        if listener.protocol.eq_ignore_ascii_case("TLS") {
            any_tls = true;
            let host = listener
                .hostname
                .as_deref()
                .map_or_else(|| "*".to_owned(), str::to_ascii_lowercase);
            let mode = listener.tls.as_ref().and_then(|t| t.mode);
            if mode != Some(ApiTlsMode::Passthrough) {
                // Terminate (the default): the gateway's certificate, then each
                // TLSRoute's hostnames get the decrypted stream to its backends.
                let Some((config, mut served)) =
                    api_terminating_config(ix, sink, built, gateway, index, Vec::new())
                else {
                    continue;
                };
                for (route, sni_hosts) in &port_listener.tls_routes {
                    let clusters = api_backends(
                        ix,
                        sink,
                        built,
                        &route.resource.spec.rules,
                        &route.resource.metadata,
                        "TLSRoute",
                        route.location.as_ref(),
                    );
                    servers.push(TlsServer {
                        name: format!(
                            "{resource} {} {}",
                            listener.name,
                            route.resource.object_ref()
                        ),
                        hosts: sni_hosts.clone(),
                        mode: TlsMode::Terminate {
                            config: config.0.clone(),
                            trust: config.1.clone(),
                            after: AfterTermination::Tcp(clusters),
                        },
                        // Listed once, on the listener's first server.
                        credentials: std::mem::take(&mut served),
                    });
                }
                continue;
            }
            let routes = api_sni_routes(ix, sink, built, &port_listener.tls_routes);
            servers.push(TlsServer {
                name: format!("{resource} {}", listener.name),
                hosts: vec![host],
                mode: TlsMode::Passthrough { routes },
                credentials: Vec::new(),
            });
            continue;
        }
        if !listener.protocol.eq_ignore_ascii_case("HTTPS") {
            continue;
        }
        any_https = true;
        let alpn = HTTPS_ALPN.iter().map(|p| p.to_vec()).collect();
        let Some((config, served)) = api_terminating_config(ix, sink, built, gateway, index, alpn)
        else {
            continue;
        };
        let host = listener
            .hostname
            .as_deref()
            .map_or_else(|| "*".to_owned(), str::to_ascii_lowercase);
        servers.push(TlsServer {
            name: format!("{resource} {}", listener.name),
            hosts: vec![host],
            mode: TlsMode::Terminate {
                config: config.0,
                trust: config.1,
                after: AfterTermination::Http,
            },
            credentials: served,
        });
    }
    if let Some(clusters) = tcp_clusters {
        return (Protocol::Tcp, Some(Arc::new(Transport::Tcp(clusters))));
    }
    if any_https || any_tls {
        let protocol = if any_https {
            Protocol::Https
        } else {
            Protocol::Tls
        };
        return (
            protocol,
            Some(Arc::new(Transport::Tls(ListenerTls { servers }))),
        );
    }
    (Protocol::Http, None)
}

/// A terminating Gateway API listener's (HTTPS, or TLS with `mode: Terminate`) server
/// configuration from its `certificateRefs` (Secrets; another namespace's only with a
/// ReferenceGrant there), offering `alpn`, and the credentials it serves. None (with
/// the listener's status and a warning) when no certificate is usable.
fn api_terminating_config<'a>(
    ix: &Index<'a>,
    sink: &mut Sink,
    built: &mut Built,
    gateway: &'a Sourced<ApiGateway>,
    index: usize,
    alpn: Vec<Vec<u8>>,
) -> Option<(TerminatingConfig, Vec<ServedCredential>)> {
    let listener = gateway.resource.spec.listeners.get(index)?;
    let resource = gateway.resource.object_ref();
    let field = format!("spec.listeners[{index}].tls");
    let warn = |diagnostics: &mut crate::config::Diagnostics, message: String, sub: &str| {
        diagnostics.push(
            Diagnostic::warning(message)
                .at(gateway.location.clone())
                .object(&resource)
                .field(format!("{field}{sub}")),
        );
    };
    let tls = listener.tls.clone().unwrap_or_default();
    if tls.mode == Some(ApiTlsMode::Passthrough) {
        sink.status.listener(&resource, &listener.name).not_accepted = Some((
            reason::UNSUPPORTED_VALUE,
            "an HTTPS listener terminates TLS (Passthrough needs protocol TLS)".to_owned(),
        ));
        warn(
            &mut sink.diagnostics,
            "an HTTPS listener terminates TLS (Passthrough needs protocol TLS); this listener is skipped".into(),
            ".mode",
        );
        return None;
    }
    let gw_namespace = gateway.resource.metadata.namespace();
    let provider = server_config::provider();
    let mut certificates = Vec::new();
    let mut served = Vec::new();
    for (ref_index, reference) in tls.certificate_refs.iter().enumerate() {
        let sub = format!(".certificateRefs[{ref_index}]");
        let kind_ok = reference.group.as_deref().unwrap_or("").is_empty()
            && reference.kind.as_deref().unwrap_or("Secret") == "Secret";
        if !kind_ok {
            listener_unresolved(
                sink,
                &resource,
                &listener.name,
                reason::INVALID_CERTIFICATE_REF,
                format!("certificateRefs[{ref_index}] is not a core Secret"),
            );
            warn(
                &mut sink.diagnostics,
                "only core Secrets are served as certificates; this reference is skipped".into(),
                &sub,
            );
            continue;
        }
        let namespace = reference.namespace.as_deref().unwrap_or(gw_namespace);
        if namespace != gw_namespace
            && !ix.reference_granted(&Reference {
                from_kind: "Gateway",
                from_namespace: gw_namespace,
                to_kind: "Secret",
                to_namespace: namespace,
                name: &reference.name,
            })
        {
            listener_unresolved(
                sink,
                &resource,
                &listener.name,
                reason::REF_NOT_PERMITTED,
                format!(
                    "Secret {namespace}/{} is in another namespace and no ReferenceGrant there allows it",
                    reference.name
                ),
            );
            warn(
                &mut sink.diagnostics,
                format!(
                    "Secret {namespace}/{} is in another namespace and no ReferenceGrant there allows it (RefNotPermitted); this reference is skipped",
                    reference.name
                ),
                &sub,
            );
            continue;
        }
        let secret = ix.resources.secrets.iter().find(|s| {
            s.resource.metadata.name == reference.name
                && s.resource.metadata.namespace() == namespace
        });
        let credential = format!("Secret {namespace}/{}", reference.name);
        let server_name = format!("{resource} {}", listener.name);
        let place = Diagnostic::warning("")
            .at(gateway.location.clone())
            .object(&resource)
            .field(format!("{field}{sub}"));
        let wanted = Wanted {
            name: credential.clone(),
            user: &server_name,
            place,
            unserved: "this reference is skipped",
        };
        let Some(secret) = secret else {
            let what = format!("{credential} not found");
            listener_unresolved(
                sink,
                &resource,
                &listener.name,
                reason::INVALID_CERTIFICATE_REF,
                what.clone(),
            );
            built.credentials.missing(sink, wanted, &what);
            continue;
        };
        let loaded = certs::secret_certified_key(&secret.resource, &provider)
            .map(Credential::Served)
            .map_err(|e| e.to_string());
        let unusable = format!("{credential} does not hold a usable certificate and key");
        if let Some(Credential::Served(key)) =
            built
                .credentials
                .credential(ix, sink, wanted, loaded, &mut served)
        {
            certificates.push(key);
        } else {
            listener_unresolved(
                sink,
                &resource,
                &listener.name,
                reason::INVALID_CERTIFICATE_REF,
                unusable,
            );
        }
    }
    if certificates.is_empty() {
        sink.status
            .listener(&resource, &listener.name)
            .not_programmed = Some("no usable certificateRefs".to_owned());
        warn(
            &mut sink.diagnostics,
            "no usable certificateRefs: this listener is not served (the others are)".into(),
            ".certificateRefs",
        );
        return None;
    }
    let Ok(client_auth) = api_client_auth(ix, sink, gateway, index) else {
        return None;
    };
    let settings = ServerSettings {
        certificates,
        client_auth,
        min_version: None,
        max_version: None,
        cipher_suites: Vec::new(),
        alpn,
    };
    let config = match server_config::build(settings, &ix.tls.sessions) {
        Ok(config) => config,
        Err(e) => {
            sink.status
                .listener(&resource, &listener.name)
                .not_programmed = Some(e.to_string());
            warn(&mut sink.diagnostics, e.to_string(), "");
            return None;
        }
    };
    Some((config, served))
}

/// The TLSRoutes attached to a listener (oldest first, with the SNI hosts each
/// serves there, `attach.rs`) → its passthrough routes.
fn api_sni_routes<'a>(
    ix: &Index<'a>,
    sink: &mut Sink,
    built: &mut Built,
    routes: &[(&'a Sourced<TlsRoute>, Vec<String>)],
) -> Vec<SniRoute> {
    routes
        .iter()
        .map(|(route, sni_hosts)| SniRoute {
            sni_hosts: sni_hosts.clone(),
            clusters: api_backends(
                ix,
                sink,
                built,
                &route.resource.spec.rules,
                &route.resource.metadata,
                "TLSRoute",
                route.location.as_ref(),
            ),
        })
        .collect()
}

/// The first rule's Service backends (same namespace, or another with a
/// ReferenceGrant from this route kind), weighted (default 1).
fn api_backends<'a>(
    ix: &Index<'a>,
    sink: &mut Sink,
    built: &mut Built,
    rules: &[L4RouteRule],
    meta: &ObjectMeta,
    kind: &str,
    location: Option<&crate::config::Location>,
) -> Vec<WeightedCluster> {
    let resource = ObjectRef::new(GATEWAY_API_GROUP, kind, meta);
    let route_ns = meta.namespace().to_owned();
    let Some(rule) = rules.first() else {
        return Vec::new();
    };
    let mut clusters = Vec::new();
    for (index, backend) in rule.backend_refs.iter().enumerate() {
        let field = format!("spec.rules[0].backendRefs[{index}]");
        let namespace = backend
            .namespace
            .clone()
            .unwrap_or_else(|| route_ns.clone());
        let is_service = backend.group.as_deref().unwrap_or("").is_empty()
            && backend.kind.as_deref().unwrap_or("Service") == "Service";
        let granted = namespace == route_ns
            || ix.resources.reference_grants.iter().any(|grant| {
                grant.resource.metadata.namespace() == namespace
                    && grant.resource.spec.from.iter().any(|from| {
                        from.group == GATEWAY_API_GROUP
                            && from.kind == kind
                            && from.namespace == route_ns
                    })
                    && grant.resource.spec.to.iter().any(|to| {
                        to.group.is_empty()
                            && to.kind == "Service"
                            && to.name.as_deref().is_none_or(|n| n == backend.name)
                    })
            });
        // The spec's BackendNotFound: a Service that does not exist is not a backend
        // (as for HTTPRoutes, `rules.rs`).
        let exists = ix.resources.services.iter().any(|s| {
            s.resource.metadata.name == backend.name && s.resource.metadata.namespace() == namespace
        });
        if !is_service || !granted || backend.port.is_none() || !exists {
            let (why, message) = if !is_service {
                (
                    reason::INVALID_KIND,
                    "a backend must be a Service".to_owned(),
                )
            } else if !granted {
                (
                    reason::REF_NOT_PERMITTED,
                    "the Service is in another namespace and no ReferenceGrant there allows it"
                        .to_owned(),
                )
            } else if backend.port.is_none() {
                (
                    reason::BACKEND_NOT_FOUND,
                    "a Service backend needs a port".to_owned(),
                )
            } else {
                (
                    reason::BACKEND_NOT_FOUND,
                    format!("no Service {namespace}/{} (BackendNotFound)", backend.name),
                )
            };
            sink.status.unresolved(&resource, why, message.clone());
            sink.push(
                Diagnostic::warning(format!(
                    "{message}: a backend must be an existing Service with a port, in the route's namespace or granted by a ReferenceGrant; skipped",
                ))
                .at(location.cloned())
                .object(&resource)
                .field(field),
            );
            continue;
        }
        let destination = Destination {
            host: format!("{}.{namespace}", backend.name),
            subset: None,
            port: backend.port.map(|number| PortSelector { number }),
        };
        let at = At {
            location,
            object: &resource,
            field: &field,
        };
        let cluster = built.cluster(ix, sink, &destination, &namespace, at);
        clusters.push(WeightedCluster::new(backend.weight.unwrap_or(1), cluster));
    }
    clusters
}

/// A ReferenceGrant in `secret_namespace` that lets Gateways of `gateway_namespace`
/// use Secret `name`.
/// The client certificates a terminating listener asks for: the Gateway's
/// `spec.tls.frontend` validation for the listener's port (`perPort`), else its
/// `default`. CA bundles come from ConfigMaps (`ca.crt`; another namespace's only with
/// a ReferenceGrant there). Err (the listener is not served, `Accepted=False
/// NoValidCACertificate`) when validation is asked for and no CA certificate is usable.
#[allow(clippy::result_unit_err)]
fn api_client_auth<'a>(
    ix: &Index<'a>,
    sink: &mut Sink,
    gateway: &'a Sourced<ApiGateway>,
    index: usize,
) -> Result<Option<ClientAuth>, ()> {
    let Some(listener) = gateway.resource.spec.listeners.get(index) else {
        return Ok(None);
    };
    let Some(frontend) = gateway
        .resource
        .spec
        .tls
        .as_ref()
        .and_then(|t| t.frontend.as_ref())
    else {
        return Ok(None);
    };
    let (validation, field) = match frontend
        .per_port
        .iter()
        .enumerate()
        .find(|(_, p)| p.port == listener.port)
    {
        Some((i, p)) => (
            p.tls.validation.as_ref(),
            format!("spec.tls.frontend.perPort[{i}].tls.validation"),
        ),
        None => (
            frontend.default.validation.as_ref(),
            "spec.tls.frontend.default.validation".to_owned(),
        ),
    };
    let Some(validation) = validation else {
        return Ok(None);
    };
    let resource = gateway.resource.object_ref();
    let gw_namespace = gateway.resource.metadata.namespace();
    let mut roots = Vec::new();
    for (i, reference) in validation.ca_certificate_refs.iter().enumerate() {
        let group = reference.group.as_deref().unwrap_or("");
        let kind = reference.kind.as_deref().unwrap_or("ConfigMap");
        let namespace = reference.namespace.as_deref().unwrap_or(gw_namespace);
        let problem = if !group.is_empty() || kind != "ConfigMap" {
            Some((
                reason::INVALID_CA_CERTIFICATE_KIND,
                format!(
                    "caCertificateRefs[{i}] is a {kind} (group {group:?}): expected a core ConfigMap"
                ),
            ))
        } else if namespace != gw_namespace
            && !ix.reference_granted(&Reference {
                from_kind: "Gateway",
                from_namespace: gw_namespace,
                to_kind: "ConfigMap",
                to_namespace: namespace,
                name: &reference.name,
            })
        {
            Some((
                reason::REF_NOT_PERMITTED,
                format!(
                    "ConfigMap {namespace}/{} is in another namespace and no ReferenceGrant there allows it",
                    reference.name
                ),
            ))
        } else {
            let found = ix.resources.config_maps.iter().find(|c| {
                c.resource.metadata.name == reference.name
                    && c.resource.metadata.namespace() == namespace
            });
            match found.map(|c| c.resource.data.get("ca.crt")) {
                None => Some((
                    reason::INVALID_CA_CERTIFICATE_REF,
                    format!("ConfigMap {namespace}/{} not found", reference.name),
                )),
                Some(None) => Some((
                    reason::INVALID_CA_CERTIFICATE_REF,
                    format!("ConfigMap {namespace}/{} has no ca.crt", reference.name),
                )),
                Some(Some(pem)) => match certs::certificates(pem.as_bytes()) {
                    Ok(certificates) => {
                        roots.extend(certificates);
                        None
                    }
                    Err(e) => Some((
                        reason::INVALID_CA_CERTIFICATE_REF,
                        format!(
                            "ConfigMap {namespace}/{} ca.crt is not usable: {e}",
                            reference.name
                        ),
                    )),
                },
            }
        };
        if let Some((why, message)) = problem {
            listener_unresolved(sink, &resource, &listener.name, why, message.clone());
            sink.push(
                Diagnostic::warning(format!("{message} ({why}); this reference is skipped"))
                    .at(gateway.location.clone())
                    .object(&resource)
                    .field(format!("{field}.caCertificateRefs[{i}]")),
            );
        }
    }
    if roots.is_empty() {
        let message = "client-certificate validation has no usable CA certificate; this listener is not served".to_owned();
        sink.status.listener(&resource, &listener.name).not_accepted =
            Some((reason::NO_VALID_CA_CERTIFICATE, message.clone()));
        sink.push(
            Diagnostic::warning(format!("listener {}: {message}", listener.name))
                .at(gateway.location.clone())
                .object(&resource)
                .field(format!("{field}.caCertificateRefs")),
        );
        return Err(());
    }
    let optional = match validation.mode.as_deref() {
        None | Some("AllowValidOnly") => false,
        Some("AllowInsecureFallback") => true,
        Some(other) => {
            sink.push(
                Diagnostic::warning(format!(
                    "mode {other:?} is not a validation mode (AllowValidOnly, AllowInsecureFallback); AllowValidOnly applies"
                ))
                .at(gateway.location.clone())
                .object(&resource)
                .field(format!("{field}.mode")),
            );
            false
        }
    };
    Ok(Some(ClientAuth {
        roots,
        optional,
        insecure_fallback: optional,
        subject_alt_names: Vec::new(),
    }))
}

fn listener_unresolved(
    sink: &mut Sink,
    gateway: &ObjectRef,
    listener: &str,
    reason: &'static str,
    message: String,
) {
    sink.status
        .listener(gateway, listener)
        .unresolved
        .get_or_insert((reason, message));
}
