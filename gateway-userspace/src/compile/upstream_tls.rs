//! DestinationRule `tls` → a cluster's [`UpstreamTls`]: which settings apply to a
//! cluster (Istio's precedence over subsets and `portLevelSettings`), and its client
//! credentials (a Secret named by `credentialName`, or files), kept like the server
//! side's: a Secret that breaks keeps its last good version.
//!
//! A setting that cannot be honoured (ISTIO_MUTUAL, a credential that never loaded, a bad
//! `sni`) is a warning, and the cluster refuses its connections (503 `UF`): never an
//! error, which would drop the whole rule and send its traffic in plaintext. A rule that
//! does not parse, or is dropped for an error elsewhere, and asked for TLS leaves a
//! stand-in (`config::stand_in`) that refuses every cluster of its host.

use std::sync::Arc;

use rustls_pki_types::{CertificateDer, ServerName};

use super::{
    index::Index,
    name_of,
    sink::Sink,
    tls::{CompiledCredentials, Wanted},
};
use crate::{
    config::{
        Diagnostic, Kind, Sourced,
        resources::{
            DestinationRule, Secret,
            istio::{ClientTlsMode, ClientTlsSettings, DestinationRuleSpec, TrafficPolicy},
        },
    },
    snapshot::{Cluster, EndpointSource, UpstreamProtocol},
    tls::{
        certs::{self, CA_KEYS, CA_SECRET_SUFFIX},
        credentials::{Credential, read_capped},
        server_config,
        upstream::{ClientSettings, UpstreamTls, no_server_name},
    },
};

/// What happens to a cluster whose TLS settings cannot be honoured.
const CONNECTIONS_REFUSED: &str =
    "connections to this destination are refused (503 UF) rather than sent in plaintext";

/// The `tls` settings that apply to a cluster of `port` and `subset`, with the field they
/// come from. Istio's precedence (`MergeTrafficPolicy`): the subset's matching
/// `portLevelSettings` entry, else the subset's own `tls`, else the rule's matching
/// `portLevelSettings` entry, else the rule's `tls`. A matching port entry decides even
/// without `tls` (port-level settings do not inherit), and then there is no TLS.
pub(super) fn selected_tls<'r>(
    spec: &'r DestinationRuleSpec,
    port: Option<u32>,
    subset: Option<&str>,
) -> Option<(&'r ClientTlsSettings, String)> {
    let mut chosen = None;
    let mut apply = |policy: &'r TrafficPolicy, prefix: String| {
        if let Some(tls) = &policy.tls {
            chosen = Some((tls, format!("{prefix}.tls")));
        }
        let matching = policy
            .port_level_settings
            .iter()
            .enumerate()
            .find(|(_, p)| p.port.as_ref().map(|s| s.number) == port && port.is_some());
        if let Some((index, port_policy)) = matching {
            chosen = port_policy
                .tls
                .as_ref()
                .map(|tls| (tls, format!("{prefix}.portLevelSettings[{index}].tls")));
        }
    };
    if let Some(policy) = &spec.traffic_policy {
        apply(policy, "spec.trafficPolicy".to_owned());
    }
    let subset = subset.and_then(|name| {
        spec.subsets
            .iter()
            .enumerate()
            .find(|(_, s)| s.name == name)
    });
    if let Some((index, policy)) =
        subset.and_then(|(index, s)| Some((index, s.traffic_policy.as_ref()?)))
    {
        apply(policy, format!("spec.subsets[{index}].trafficPolicy"));
    }
    chosen
}

/// Where a rule's TLS settings are, for diagnostics.
struct RulePlace<'a> {
    rule: &'a Sourced<DestinationRule>,
    field: String,
}

/// The TLS origination of `cluster` (named `outbound|PORT|SUBSET|HOST`) by `rule`.
pub(super) fn upstream_tls<'a>(
    ix: &Index<'a>,
    sink: &mut Sink,
    credentials: &mut CompiledCredentials,
    rule: &'a Sourced<DestinationRule>,
    cluster: &Cluster,
    port: Option<u32>,
    subset: Option<&str>,
) -> Option<Arc<UpstreamTls>> {
    if let Some(why) = &rule.resource.fail_closed {
        return Some(fail_closed(sink, rule, cluster, why));
    }
    let (settings, field) = selected_tls(&rule.resource.spec, port, subset)?;
    let place = RulePlace { rule, field };
    let origin = format!(
        "DestinationRule {} {}",
        name_of(&rule.resource.metadata),
        place.field
    );
    let mode = match settings.mode.unwrap_or(ClientTlsMode::Disable) {
        ClientTlsMode::Disable => return None,
        ClientTlsMode::Simple => "SIMPLE",
        ClientTlsMode::Mutual => "MUTUAL",
        ClientTlsMode::IstioMutual => "ISTIO_MUTUAL",
    };
    // Shown for a refused cluster: its host, else (a wildcard) no name.
    let placeholder = no_server_name();
    let default_sni = ServerName::try_from(cluster.service.clone()).ok();
    let refuse = |sink: &mut Sink, field: &str, why: String, sni: ServerName<'static>| {
        warn_rule(sink, &place, field, format!("{why}; {CONNECTIONS_REFUSED}"));
        let why: Arc<str> = why.into();
        Some(Arc::new(UpstreamTls {
            mode,
            sni,
            auto_sni: false,
            auto_san_validation: false,
            subject_alt_names: Vec::new(),
            origin: origin.clone(),
            config: Err(why.clone()),
            refused: Some(why),
            key: 0,
        }))
    };
    if mode == "ISTIO_MUTUAL" {
        // Istio's gateways present their SPIFFE identity from istiod; this gateway has
        // none, and plaintext to a mesh workload would break the mesh's promise.
        return refuse(
            sink,
            "mode",
            "ISTIO_MUTUAL needs an Istio mesh identity (a SPIFFE certificate from istiod), which this gateway does not have; use MUTUAL with credentialName".to_owned(),
            default_sni.unwrap_or(placeholder),
        );
    }
    let insecure_skip_verify = settings.insecure_skip_verify.unwrap_or(false);
    // Istio's `setAutoSniAndAutoSanValidation`. Without `sni`, TCP routes send none and
    // check no name but `subjectAltNames`: Istio leaves the cluster's `sni` empty, and
    // Envoy's TCP proxy has no request host for auto_sni/auto_san_validation.
    let (sni, auto_sni) = match settings.sni.as_deref().filter(|s| !s.is_empty()) {
        Some(sni) => match ServerName::try_from(sni.to_owned()) {
            Ok(name) => (name, false),
            Err(_) => {
                return refuse(
                    sink,
                    "sni",
                    format!("sni {sni:?} is not a DNS name or IP address"),
                    default_sni.unwrap_or(placeholder),
                );
            }
        },
        None => (no_server_name(), true),
    };
    let auto_san_validation =
        auto_sni && settings.subject_alt_names.is_empty() && !insecure_skip_verify;
    // Istio's `constructUpstreamTLS` (SIMPLE and MUTUAL): a rule without
    // `subjectAltNames` takes its ServiceEntry's, after `auto_san_validation` was set from
    // the rule alone, so an HTTP request's host is checked too. insecureSkipVerify checks
    // none of them.
    let subject_alt_names = if insecure_skip_verify {
        Vec::new()
    } else if settings.subject_alt_names.is_empty() {
        entry_subject_alt_names(ix, cluster).to_vec()
    } else {
        settings.subject_alt_names.clone()
    };
    let client = match client_credentials(ix, sink, credentials, &place, settings, mode == "MUTUAL")
    {
        Ok(client) => client,
        Err((field, why)) => return refuse(sink, &field, why, sni),
    };
    let client_settings = ClientSettings {
        mode,
        sni: sni.clone(),
        verify_server_name: auto_san_validation,
        subject_alt_names: subject_alt_names.clone(),
        roots: client.roots,
        client_certificate: client.certificate,
        insecure_skip_verify,
        alpn: match cluster.protocol {
            UpstreamProtocol::Http2 => vec![b"h2".to_vec()],
            UpstreamProtocol::Http1 => vec![b"http/1.1".to_vec()],
        },
    };
    let key = client_settings.key();
    // The same settings as the last compile: the same configuration, so its TLS
    // sessions resume across reloads.
    let config = match ix.tls.upstream.get(key) {
        Some(config) => config,
        None => match client_settings.build(&Arc::new(server_config::provider())) {
            Ok(config) => {
                ix.tls.upstream.insert(key, config.clone());
                config
            }
            Err(why) => return refuse(sink, "caCertificates", why, sni),
        },
    };
    Some(Arc::new(UpstreamTls {
        mode,
        sni,
        auto_sni,
        auto_san_validation,
        subject_alt_names,
        origin,
        config: Ok(config),
        refused: None,
        key,
    }))
}

/// The `subjectAltNames` of the ServiceEntry behind `cluster` (Istio's service accounts
/// of a service from the External registry); none for a Service's cluster.
fn entry_subject_alt_names<'a>(ix: &Index<'a>, cluster: &Cluster) -> &'a [String] {
    if matches!(cluster.endpoint_source, EndpointSource::Service { .. }) {
        return &[];
    }
    ix.service_entry(&cluster.service)
        .map_or(&[], |entry| &entry.resource.spec.subject_alt_names)
}

/// The refusal of every cluster of a stand-in's host (`config::stand_in`): what the
/// rule asked for of each port and subset is unknown, so none is sent in plaintext.
fn fail_closed(
    sink: &mut Sink,
    rule: &Sourced<DestinationRule>,
    cluster: &Cluster,
    why: &Arc<str>,
) -> Arc<UpstreamTls> {
    let origin = format!("DestinationRule {}", name_of(&rule.resource.metadata));
    let why: Arc<str> = format!("{origin} {why}; it fails closed until it is fixed").into();
    sink.push(
        Diagnostic::warning(format!("{why}; {CONNECTIONS_REFUSED}"))
            .at(rule.location.clone())
            .object(&rule.resource.object_ref())
            .field("spec"),
    );
    Arc::new(UpstreamTls {
        mode: "SIMPLE",
        sni: ServerName::try_from(cluster.service.clone()).unwrap_or_else(|_| no_server_name()),
        auto_sni: false,
        auto_san_validation: false,
        subject_alt_names: Vec::new(),
        origin,
        config: Err(why.clone()),
        refused: Some(why),
        key: 0,
    })
}

/// The client certificate (MUTUAL) and the CA, from `credentialName` or the files.
/// Err: the field at fault and why.
fn client_credentials<'a>(
    ix: &Index<'a>,
    sink: &mut Sink,
    credentials: &mut CompiledCredentials,
    place: &RulePlace<'a>,
    settings: &ClientTlsSettings,
    mutual: bool,
) -> Result<ClientCredentials, (String, String)> {
    if let Some(name) = settings
        .credential_name
        .as_deref()
        .filter(|n| !n.is_empty())
    {
        return secret_credentials(ix, sink, credentials, place, name, mutual);
    }
    let certificate = if mutual {
        let (Some(cert), Some(key)) = (
            settings.client_certificate.as_deref(),
            settings.private_key.as_deref(),
        ) else {
            return Err((
                "clientCertificate".to_owned(),
                "MUTUAL needs credentialName, or clientCertificate and privateKey".to_owned(),
            ));
        };
        credentials.read_files(&[cert, key]);
        let loaded = (|| {
            let cert_pem = read_capped(cert.as_ref()).map_err(|e| e.to_string())?;
            let key_pem = read_capped(key.as_ref()).map_err(|e| e.to_string())?;
            certs::certified_key(&cert_pem, &key_pem, &server_config::provider())
                .map(Credential::Served)
                .map_err(|e| e.to_string())
        })();
        match client_credential(
            ix,
            sink,
            credentials,
            place,
            "clientCertificate",
            format!("file {cert} (key {key})"),
            loaded,
        ) {
            Some(Credential::Served(key)) => Some(key),
            _ => return Err(unloaded("clientCertificate")),
        }
    } else {
        None
    };
    let roots = match settings
        .ca_certificates
        .as_deref()
        .filter(|p| !p.is_empty())
    {
        Some(path) => {
            credentials.read_files(&[path]);
            let loaded = read_capped(path.as_ref())
                .map_err(|e| e.to_string())
                .and_then(|pem| certs::certificates(&pem).map_err(|e| e.to_string()))
                .map(Credential::ClientCa);
            match client_credential(
                ix,
                sink,
                credentials,
                place,
                "caCertificates",
                format!("file {path} (CA)"),
                loaded,
            ) {
                Some(Credential::ClientCa(roots)) => Some(roots),
                _ => return Err(unloaded("caCertificates")),
            }
        }
        None => None,
    };
    Ok(ClientCredentials { certificate, roots })
}

/// `credentialName`: a Secret in the gateway's namespace (where Istio reads it), else
/// in the rule's; `tls.crt`/`tls.key` for MUTUAL, `ca.crt` (or the `-cacert` Secret).
fn secret_credentials<'a>(
    ix: &Index<'a>,
    sink: &mut Sink,
    credentials: &mut CompiledCredentials,
    place: &RulePlace<'a>,
    name: &str,
    mutual: bool,
) -> Result<ClientCredentials, (String, String)> {
    let namespaces = [
        ix.identity.namespace.clone(),
        place.rule.resource.metadata.namespace().to_owned(),
    ];
    let find = |wanted: &str| -> Option<&'a Secret> {
        let resources: &'a crate::config::Resources = ix.resources;
        namespaces.iter().find_map(|ns| {
            resources
                .secrets
                .iter()
                .map(|s| &*s.resource)
                .find(|s| s.metadata.name == wanted && s.metadata.namespace() == ns)
        })
    };
    let secret = find(name);
    let ca_secret = find(&format!("{name}{CA_SECRET_SUFFIX}"));
    let shown = |s: Option<&Secret>| match s {
        Some(s) => format!("Secret {}", name_of(&s.metadata)),
        None => format!("Secret {}/{name}", namespaces[0]),
    };
    let certificate = if mutual {
        let loaded = match secret {
            Some(secret) => certs::secret_certified_key(secret, &server_config::provider())
                .map(Credential::Served)
                .map_err(|e| e.to_string()),
            None => Err(format!(
                "not found in namespace {}",
                namespaces.join(" or ")
            )),
        };
        match client_credential(
            ix,
            sink,
            credentials,
            place,
            "credentialName",
            shown(secret),
            loaded,
        ) {
            Some(Credential::Served(key)) => Some(key),
            _ => return Err(unloaded("credentialName")),
        }
    } else {
        if secret.is_none() && ca_secret.is_none() {
            return Err((
                "credentialName".to_owned(),
                format!(
                    "Secret {name} not found in namespace {}",
                    namespaces.join(" or ")
                ),
            ));
        }
        None
    };
    let mut roots = None;
    for candidate in secret.into_iter().chain(ca_secret) {
        let loaded: Result<Vec<CertificateDer<'static>>, String> =
            match certs::secret_first(candidate, &CA_KEYS) {
                Ok(Some(pem)) => certs::certificates(&pem).map_err(|e| e.to_string()),
                Ok(None) => continue,
                Err(e) => Err(e.to_string()),
            };
        let credential = format!("Secret {} (CA)", name_of(&candidate.metadata));
        match client_credential(
            ix,
            sink,
            credentials,
            place,
            "credentialName",
            credential,
            loaded.map(Credential::ClientCa),
        ) {
            Some(Credential::ClientCa(ca)) => roots = Some(ca),
            _ => return Err(unloaded("credentialName")),
        }
        break;
    }
    Ok(ClientCredentials { certificate, roots })
}

/// One credential through the server side's memory: this version, else the last
/// good one (with a warning), else None (warned, counted, reported).
fn client_credential<'a>(
    ix: &Index<'a>,
    sink: &mut Sink,
    credentials: &mut CompiledCredentials,
    place: &RulePlace<'a>,
    field: &str,
    name: String,
    loaded: Result<Credential, String>,
) -> Option<Credential> {
    let diagnostic = place.at(field, Diagnostic::warning(""));
    let user = format!(
        "DestinationRule {} {}",
        name_of(&place.rule.resource.metadata),
        place.field
    );
    let wanted = Wanted {
        name,
        user: &user,
        place: diagnostic,
        unserved: CONNECTIONS_REFUSED,
    };
    credentials.credential(ix, sink, wanted, loaded, &mut Vec::new())
}

fn warn_rule(sink: &mut Sink, place: &RulePlace<'_>, field: &str, message: String) {
    sink.push(place.at(field, Diagnostic::warning(message)));
}

impl RulePlace<'_> {
    /// `diagnostic` placed at `field` of the rule's TLS settings.
    fn at(&self, field: &str, diagnostic: Diagnostic) -> Diagnostic {
        diagnostic
            .at(self.rule.location.clone())
            .object(&self.rule.resource.object_ref())
            .field(format!("{}.{field}", self.field))
    }
}

struct ClientCredentials {
    certificate: Option<Arc<rustls::sign::CertifiedKey>>,
    roots: Option<Vec<CertificateDer<'static>>>,
}

/// A credential `client_credential` already warned about.
fn unloaded(field: &str) -> (String, String) {
    (
        field.to_owned(),
        "its credential has no version that loaded".to_owned(),
    )
}

#[cfg(test)]
#[path = "upstream_tls_tests.rs"]
mod tests;
