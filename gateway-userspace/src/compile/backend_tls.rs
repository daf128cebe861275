//! Gateway API BackendTLSPolicy → a Service cluster's [`UpstreamTls`], the same TLS
//! origination a DestinationRule's `tls` gives (`upstream_tls`): the policy's
//! `validation.hostname` is the SNI and, without `subjectAltNames`, the name the
//! backend's certificate must carry; with them, one of them (DNS names or URIs); the
//! chain is checked against the `caCertificateRefs` ConfigMaps' `ca.crt`, or the system
//! trust store (`wellKnownCACertificates: System`).
//!
//! Which policy applies to a Service port: one naming the port (`sectionName`) over one
//! naming the whole Service; among equals the oldest, then the first by namespace/name
//! (the spec's precedence); the others are `Conflicted`. A policy that applies but cannot
//! be honoured (no usable CA certificate, an unknown `wellKnownCACertificates`) refuses
//! the cluster's connections (503 `UF`), never sends them in plaintext; so does the
//! stand-in of a policy that does not parse or was dropped for its errors
//! (`config::stand_in`): it is not accepted (Invalid).

mod ancestors;

use std::{cmp::Ordering, sync::Arc};

use rustls_pki_types::{CertificateDer, ServerName};

pub(super) use ancestors::policy_statuses;

use super::{index::Index, name_of, sink::Sink, status::reason};
use crate::{
    config::{
        Diagnostic, Kind, Resources, Sourced,
        resources::gateway_api::{BackendTlsPolicy, PolicyTargetReference},
    },
    snapshot::{Cluster, EndpointSource, UpstreamProtocol},
    tls::{
        certs, server_config,
        upstream::{ClientSettings, UpstreamTls},
    },
};

/// A reason and its message, as status conditions carry them.
type Finding = (&'static str, String);

/// What a policy's own fields and references come to, whatever it targets.
pub(super) struct Judgement {
    /// Err: `Accepted=False` with this reason (Invalid, NoValidCACertificate).
    pub(super) accepted: Result<(), Finding>,
    /// Err: `ResolvedRefs=False` (InvalidKind, InvalidCACertificateRef).
    pub(super) resolved: Result<(), Finding>,
    /// The CA certificates of the references that resolved; None: the system store.
    roots: Option<Vec<CertificateDer<'static>>>,
}

/// Whether `target` names Service `name` (port `port_name` or all of it).
fn names_service(target: &PolicyTargetReference, name: &str) -> bool {
    target.group.is_empty() && target.kind == "Service" && target.name == name
}

/// The spec's precedence: the older first, then by namespace/name. A policy without a
/// creation time (from a file) comes after those with one.
fn precedence(a: &BackendTlsPolicy, b: &BackendTlsPolicy) -> Ordering {
    let key = |p: &BackendTlsPolicy| {
        let ts = p.metadata.creation_timestamp.clone();
        (ts.is_none(), ts, name_of(&p.metadata))
    };
    key(a).cmp(&key(b))
}

/// The policy that applies to port `port_name` of Service `namespace/name`.
pub(super) fn policy_for<'a>(
    resources: &'a Resources,
    namespace: &str,
    name: &str,
    port_name: &str,
) -> Option<&'a Sourced<BackendTlsPolicy>> {
    let targeting = |section: bool| {
        resources
            .backend_tls_policies
            .iter()
            .filter(move |p| {
                p.resource.metadata.namespace() == namespace
                    && p.resource.spec.target_refs.iter().any(|t| {
                        names_service(t, name)
                            && match t.section_name.as_deref().filter(|s| !s.is_empty()) {
                                Some(section_name) => section && section_name == port_name,
                                None => !section,
                            }
                    })
            })
            .min_by(|a, b| precedence(&a.resource, &b.resource))
    };
    targeting(true).or_else(|| targeting(false))
}

/// The policy that takes precedence over `policy` for one of its targets, if any.
pub(super) fn conflicting<'a>(
    resources: &'a Resources,
    policy: &BackendTlsPolicy,
) -> Option<&'a Sourced<BackendTlsPolicy>> {
    let namespace = policy.metadata.namespace();
    let section = |t: &PolicyTargetReference| t.section_name.clone().filter(|s| !s.is_empty());
    resources.backend_tls_policies.iter().find(|other| {
        let o = &other.resource;
        o.metadata.namespace() == namespace
            && precedence(o, policy) == Ordering::Less
            && policy.spec.target_refs.iter().any(|t| {
                o.spec.target_refs.iter().any(|u| {
                    t.group == u.group
                        && t.kind == u.kind
                        && t.name == u.name
                        && section(t) == section(u)
                })
            })
    })
}

/// Judges a policy's validation settings and CA certificate references.
pub(super) fn judge(resources: &Resources, policy: &BackendTlsPolicy) -> Judgement {
    let validation = &policy.spec.validation;
    let invalid = |message: String| Judgement {
        accepted: Err((reason::INVALID, message)),
        resolved: Ok(()),
        roots: None,
    };
    if let Some(why) = &policy.spec.fail_closed {
        return invalid(format!(
            "the policy {why}; it fails closed until it is fixed"
        ));
    }
    // A DNS name (Gateway API's PreciseHostname): no address, which would send no SNI.
    if !matches!(
        ServerName::try_from(validation.hostname.as_str()),
        Ok(ServerName::DnsName(_))
    ) {
        return invalid(format!(
            "validation.hostname {:?} is not a DNS name",
            validation.hostname
        ));
    }
    for (i, san) in validation.subject_alt_names.iter().enumerate() {
        let value = match san.san_type.as_str() {
            "Hostname" => san.hostname.as_deref(),
            "URI" => san.uri.as_deref(),
            other => {
                return invalid(format!(
                    "validation.subjectAltNames[{i}].type {other:?} is not Hostname or URI"
                ));
            }
        };
        if value.is_none_or(str::is_empty) {
            return invalid(format!(
                "validation.subjectAltNames[{i}] has no {}",
                san.san_type.to_lowercase()
            ));
        }
    }
    let well_known = validation
        .well_known_ca_certificates
        .as_deref()
        .filter(|w| !w.is_empty());
    let refs = &validation.ca_certificate_refs;
    match (well_known, refs.is_empty()) {
        (Some(_), false) => {
            return invalid(
                "validation has both caCertificateRefs and wellKnownCACertificates".to_owned(),
            );
        }
        (Some("System"), true) => {
            return Judgement {
                accepted: Ok(()),
                resolved: Ok(()),
                roots: None,
            };
        }
        (Some(other), true) => {
            return invalid(format!(
                "wellKnownCACertificates {other:?} is not supported (only System)"
            ));
        }
        (None, true) => {
            return invalid(
                "validation needs caCertificateRefs or wellKnownCACertificates".to_owned(),
            );
        }
        (None, false) => {}
    }
    let namespace = policy.metadata.namespace();
    let mut roots = Vec::new();
    let mut resolved = Ok(());
    for (i, reference) in refs.iter().enumerate() {
        let problem = if !reference.group.is_empty() || reference.kind != "ConfigMap" {
            Some((
                reason::INVALID_KIND,
                format!(
                    "caCertificateRefs[{i}] is a {} (group {:?}): expected a core ConfigMap",
                    reference.kind, reference.group
                ),
            ))
        } else {
            let found = resources.config_maps.iter().find(|c| {
                c.resource.metadata.name == reference.name
                    && c.resource.metadata.namespace() == namespace
            });
            let shown = format!("ConfigMap {namespace}/{}", reference.name);
            match found.map(|c| c.resource.data.get("ca.crt")) {
                None => Some((
                    reason::INVALID_CA_CERTIFICATE_REF,
                    format!("caCertificateRefs[{i}]: {shown} not found"),
                )),
                Some(None) => Some((
                    reason::INVALID_CA_CERTIFICATE_REF,
                    format!("caCertificateRefs[{i}]: {shown} has no ca.crt"),
                )),
                Some(Some(pem)) => match certs::certificates(pem.as_bytes()) {
                    Ok(certificates) => {
                        roots.extend(certificates);
                        None
                    }
                    Err(e) => Some((
                        reason::INVALID_CA_CERTIFICATE_REF,
                        format!("caCertificateRefs[{i}]: {shown} ca.crt is not usable: {e}"),
                    )),
                },
            }
        };
        if let Some(problem) = problem
            && resolved.is_ok()
        {
            resolved = Err(problem);
        }
    }
    let accepted = if roots.is_empty() {
        Err((
            reason::NO_VALID_CA_CERTIFICATE,
            "no caCertificateRefs entry gives a usable CA certificate".to_owned(),
        ))
    } else {
        Ok(())
    };
    Judgement {
        accepted,
        resolved,
        roots: Some(roots),
    }
}

/// Says what is wrong with each policy, at the policy.
pub(super) fn check_backend_tls_policies(ix: &Index<'_>, sink: &mut Sink) {
    for sourced in &ix.resources.backend_tls_policies {
        let policy = &sourced.resource;
        let judgement = judge(ix.resources, policy);
        let mut warn = |field: &str, message: String| {
            sink.push(
                Diagnostic::warning(message)
                    .at(sourced.location.clone())
                    .object(&policy.object_ref())
                    .field(field.to_owned()),
            );
        };
        if let Err((why, message)) = &judgement.resolved {
            warn(
                "spec.validation.caCertificateRefs",
                format!("{message} ({why})"),
            );
        }
        if let Err((why, message)) = &judgement.accepted {
            let stand_in = policy.spec.fail_closed.is_some();
            warn(
                if stand_in { "spec" } else { "spec.validation" },
                format!("{message} ({why}); connections to its targets are refused (503 UF)"),
            );
        }
        if let Some(winner) = conflicting(ix.resources, policy) {
            warn(
                "spec.targetRefs",
                format!(
                    "BackendTLSPolicy {} targets the same Service (port) and takes precedence (Conflicted); this policy is not applied there",
                    name_of(&winner.resource.metadata)
                ),
            );
        }
    }
}

/// The TLS origination of a Service cluster by the BackendTLSPolicy that applies to its
/// port, if any; it replaces a DestinationRule's `tls` (with a warning).
pub(super) fn apply(ix: &Index<'_>, sink: &mut Sink, cluster: &mut Cluster) {
    let EndpointSource::Service {
        namespace,
        name,
        port_name,
        ..
    } = &cluster.endpoint_source
    else {
        return;
    };
    let Some(sourced) = policy_for(ix.resources, namespace, name, port_name) else {
        return;
    };
    let policy = &sourced.resource;
    let origin = format!("BackendTLSPolicy {}", name_of(&policy.metadata));
    if let Some(tls) = &cluster.tls {
        sink.push(
            Diagnostic::warning(format!(
                "{origin} originates TLS to {}; the {} is not applied there",
                cluster.name, tls.origin
            ))
            .at(sourced.location.clone())
            .object(&policy.object_ref())
            .field("spec.targetRefs"),
        );
    }
    let judgement = judge(ix.resources, policy);
    let validation = &policy.spec.validation;
    let placeholder = ServerName::IpAddress(std::net::Ipv4Addr::UNSPECIFIED.into());
    let sni = ServerName::try_from(validation.hostname.clone()).unwrap_or(placeholder);
    let refuse = |why: String| {
        let why: Arc<str> = why.into();
        Some(Arc::new(UpstreamTls {
            mode: "SIMPLE",
            sni: sni.clone(),
            auto_sni: false,
            auto_san_validation: false,
            subject_alt_names: Vec::new(),
            origin: origin.clone(),
            config: Err(why.clone()),
            refused: Some(why),
            key: 0,
        }))
    };
    if let Err((why, message)) = judgement.accepted {
        cluster.tls = refuse(format!("{origin} is not accepted ({why}): {message}"));
        return;
    }
    let subject_alt_names: Vec<String> = validation
        .subject_alt_names
        .iter()
        .filter_map(|san| match san.san_type.as_str() {
            "Hostname" => san.hostname.clone(),
            _ => san.uri.clone(),
        })
        .collect();
    let settings = ClientSettings {
        mode: "SIMPLE",
        sni: sni.clone(),
        // Without subjectAltNames the hostname is the name checked; with them, they alone.
        verify_server_name: subject_alt_names.is_empty(),
        subject_alt_names: subject_alt_names.clone(),
        roots: judgement.roots,
        client_certificate: None,
        insecure_skip_verify: false,
        alpn: match cluster.protocol {
            UpstreamProtocol::Http2 => vec![b"h2".to_vec()],
            UpstreamProtocol::Http1 => vec![b"http/1.1".to_vec()],
        },
    };
    let key = settings.key();
    let config = match ix.tls.upstream.get(key) {
        Some(config) => config,
        None => match settings.build(&Arc::new(server_config::provider())) {
            Ok(config) => {
                ix.tls.upstream.insert(key, config.clone());
                config
            }
            Err(why) => {
                cluster.tls = refuse(format!("{origin}: {why}"));
                return;
            }
        },
    };
    cluster.tls = Some(Arc::new(UpstreamTls {
        mode: "SIMPLE",
        sni,
        // The policy's hostname is the SNI of every connection (Gateway API).
        auto_sni: false,
        auto_san_validation: false,
        subject_alt_names,
        origin,
        config: Ok(config),
        refused: None,
        key,
    }));
}

#[cfg(test)]
#[path = "backend_tls_tests.rs"]
mod tests;
