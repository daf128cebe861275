//! Istio HTTPS, TLS and TCP servers → [`Transport`]: each TLS server's credentials (Secrets
//! named by `credentialName(s)`, or files), client-certificate policy, versions and suites.

use std::sync::Arc;

use rustls::sign::CertifiedKey;
use rustls_pki_types::CertificateDer;

use super::l4_routes::{sni_routes, tcp_clusters};
use super::{PortServers, servers::ServerRef};
use crate::compile::{Built, index::Index, name_of, sink::Sink, tls::Wanted};
use crate::{
    config::{
        Diagnostic, Kind, Sourced,
        resources::{Gateway, Secret, ServerTls, VirtualService},
    },
    snapshot::{
        AfterTermination, ListenerTls, Protocol, ServedCredential, TlsMode, TlsServer, Transport,
    },
    tls::{
        certs::{self, CA_KEYS, CA_SECRET_SUFFIX},
        client_cert::ClientAuth,
        credentials::{Credential, read_capped},
        server_config::{self, HTTPS_ALPN, ServerConfigError, ServerSettings, TlsVersion},
    },
};

/// What happens to an Istio server whose credential has no version to serve.
const SERVER_UNSERVED: &str = "this server is NOT served (the other servers are)";

impl Index<'_> {
    /// Where a Gateway's credential Secrets are looked for: our namespace (as Istio reads
    /// them), then the Gateway resource's own.
    fn secret_namespaces(&self, gateway: &Sourced<Gateway>) -> Vec<String> {
        let mut namespaces = vec![self.identity.namespace.clone()];
        let own = gateway.resource.metadata.namespace().to_owned();
        if !namespaces.contains(&own) {
            namespaces.push(own);
        }
        namespaces
    }
}

/// The TLS or TCP part of a listener; None for plaintext HTTP ports.
pub(super) fn transport<'a>(
    ix: &Index<'a>,
    sink: &mut Sink,
    built: &mut Built,
    port: u16,
    servers: &PortServers<'a>,
    virtual_services: &[&'a Sourced<VirtualService>],
) -> Option<Arc<Transport>> {
    let refs: Vec<ServerRef<'a>> = servers
        .server_indices
        .iter()
        .filter_map(|&(gateway, index)| {
            let server = gateway.resource.spec.servers.get(index)?;
            let resource = gateway.resource.object_ref();
            let field = format!("spec.servers[{index}]");
            Some(ServerRef {
                gateway,
                server,
                name: format!("{resource} {field}"),
                resource,
                field,
                hosts: server
                    .hosts
                    .iter()
                    .map(|h| {
                        h.rsplit_once('/')
                            .map_or(h.as_str(), |(_, host)| host)
                            .to_ascii_lowercase()
                    })
                    .collect(),
            })
        })
        .collect();
    match servers.protocol {
        Protocol::Http | Protocol::Http2 | Protocol::Grpc => None,
        Protocol::Tcp => {
            let clusters = refs
                .iter()
                .map(|r| tcp_clusters(ix, sink, built, port, r, virtual_services))
                .find(|c| !c.is_empty())
                .unwrap_or_default();
            Some(Arc::new(Transport::Tcp(clusters)))
        }
        Protocol::Https | Protocol::Tls => {
            let tls_servers: Vec<TlsServer> = refs
                .iter()
                .filter_map(|r| tls_server(ix, sink, built, port, r, virtual_services))
                .collect();
            let listener_tls = ListenerTls {
                servers: tls_servers,
            };
            if !listener_tls.servers.is_empty()
                && listener_tls.select(None).is_none()
                && let Some(first) = refs.first()
            {
                sink.push(
                        Diagnostic::warning(format!(
                            "no server on port {port} has host `*`: clients that send no SNI (an IP address in the URL, old clients) are refused there"
                        ))
                        .at(first.gateway.location.clone())
                        .object(&first.resource)
                        .field(format!("{}.hosts", first.field)),
                    );
            }
            Some(Arc::new(Transport::Tls(listener_tls)))
        }
    }
}

fn tls_server<'a>(
    ix: &Index<'a>,
    sink: &mut Sink,
    built: &mut Built,
    port: u16,
    server: &ServerRef<'a>,
    virtual_services: &[&'a Sourced<VirtualService>],
) -> Option<TlsServer> {
    let Some(tls) = &server.server.tls else {
        server_error(
            sink,
            server,
            "tls",
            "an HTTPS or TLS server needs `tls` (mode and credentials)",
        );
        return None;
    };
    let mode = tls.mode.as_deref().unwrap_or("SIMPLE").to_ascii_uppercase();
    let name = server.name.clone();
    let protocol = Protocol::parse(&server.server.port.protocol);
    let mut credentials = Vec::new();
    let mode = match mode.as_str() {
        "PASSTHROUGH" => TlsMode::Passthrough {
            routes: sni_routes(ix, sink, built, port, server, virtual_services),
        },
        "SIMPLE" | "MUTUAL" | "OPTIONAL_MUTUAL" => {
            let settings = server_settings(ix, sink, built, server, tls, &mode, &mut credentials)?;
            let after = if protocol == Some(Protocol::Tls) {
                AfterTermination::Tcp(tcp_clusters(
                    ix,
                    sink,
                    built,
                    port,
                    server,
                    virtual_services,
                ))
            } else {
                AfterTermination::Http
            };
            match server_config::build(settings, &ix.tls.sessions) {
                Ok((config, trust)) => TlsMode::Terminate {
                    config,
                    trust,
                    after,
                },
                Err(e) => {
                    server_error(sink, server, "tls", &e.to_string());
                    return None;
                }
            }
        }
        other => {
            server_warning(
                sink,
                server,
                "tls.mode",
                &format!(
                    "mode {other} is not served (SIMPLE, MUTUAL, OPTIONAL_MUTUAL and PASSTHROUGH are); this server is skipped"
                ),
            );
            return None;
        }
    };
    Some(TlsServer {
        name,
        hosts: server.hosts.clone(),
        mode,
        credentials,
    })
}

/// Certificates, client CA, versions, suites and ALPN of a terminating server.
fn server_settings<'a>(
    ix: &Index<'a>,
    sink: &mut Sink,
    built: &mut Built,
    server: &ServerRef<'a>,
    tls: &ServerTls,
    mode: &str,
    served: &mut Vec<ServedCredential>,
) -> Option<ServerSettings> {
    let provider = server_config::provider();
    let mut min_max = [None, None];
    for (slot, (field, value)) in min_max.iter_mut().zip([
        ("tls.minProtocolVersion", &tls.min_protocol_version),
        ("tls.maxProtocolVersion", &tls.max_protocol_version),
    ]) {
        if let Some(value) = value {
            match TlsVersion::parse(value) {
                Ok(version) => *slot = version,
                Err(e) => {
                    server_error(sink, server, field, &e.to_string());
                    return None;
                }
            }
        }
    }
    // Configuration errors first: they do not depend on any Secret.
    if let Err(e) = server_config::check(min_max[0], min_max[1], &tls.cipher_suites) {
        let field = match e {
            ServerConfigError::UnknownCipherSuite(_) => "tls.cipherSuites",
            _ => "tls.maxProtocolVersion",
        };
        server_error(sink, server, field, &e.to_string());
        return None;
    }
    let mut credential_names: Vec<&String> = tls.credential_names.iter().collect();
    if let Some(name) = &tls.credential_name {
        credential_names.insert(0, name);
    }
    let mut certificates: Vec<Arc<CertifiedKey>> = Vec::new();
    let mut client_ca: Option<Vec<CertificateDer<'static>>> = None;
    for name in &credential_names {
        let secret = find_secret(ix, sink, built, server, name)?;
        let loaded = certs::secret_certified_key(&secret.resource, &provider)
            .map(Credential::Served)
            .map_err(|e| e.to_string());
        let credential = format!("Secret {}", name_of(&secret.resource.metadata));
        let wanted = server_wanted(server, "tls.credentialName", credential);
        let key = served_key(ix, sink, built, wanted, loaded, served);
        certificates.push(key?);
        if client_ca.is_none() && mode != "SIMPLE" {
            client_ca = secret_ca(ix, sink, built, server, &secret.resource, name, served)?;
        }
    }
    match (&tls.server_certificate, &tls.private_key) {
        (Some(cert_path), Some(key_path)) if certificates.is_empty() => {
            built
                .credentials
                .read_files(&[cert_path.as_str(), key_path.as_str()]);
            let read = |path: &String| read_capped(path.as_ref()).map_err(|e| e.to_string());
            let loaded = read(cert_path).and_then(|cert| {
                let key = read(key_path)?;
                certs::certified_key(&cert, &key, &provider)
                    .map(Credential::Served)
                    .map_err(|e| e.to_string())
            });
            let credential = format!("file {cert_path} (key {key_path})");
            let field = "tls.serverCertificate";
            let wanted = server_wanted(server, field, credential);
            certificates.push(served_key(ix, sink, built, wanted, loaded, served)?);
        }
        _ => {}
    }
    if certificates.is_empty() {
        server_error(
            sink,
            server,
            "tls",
            &format!(
                "mode {mode} needs credentialName, credentialNames or serverCertificate and privateKey"
            ),
        );
        return None;
    }
    if mode != "SIMPLE"
        && client_ca.is_none()
        && let Some(path) = &tls.ca_certificates
    {
        built.credentials.read_files(&[path.as_str()]);
        let loaded = read_capped(path.as_ref())
            .map_err(|e| e.to_string())
            .and_then(|pem| certs::certificates(&pem).map_err(|e| e.to_string()))
            .map(Credential::ClientCa);
        let credential = format!("file {path} (client CA)");
        let field = "tls.caCertificates";
        let wanted = server_wanted(server, field, credential);
        match built
            .credentials
            .credential(ix, sink, wanted, loaded, served)?
        {
            Credential::ClientCa(ca) => client_ca = Some(ca),
            Credential::Served(_) => return None,
        }
    }
    let client_auth = match (mode, client_ca) {
        ("SIMPLE", _) => None,
        (_, Some(roots)) => Some(ClientAuth {
            roots,
            optional: mode == "OPTIONAL_MUTUAL",
            insecure_fallback: false,
            subject_alt_names: tls.subject_alt_names.clone(),
        }),
        (_, None) => {
            server_error(
                sink,
                server,
                "tls",
                &format!(
                    "mode {mode} needs client CA certificates: ca.crt in the credential Secret, a `<credentialName>{CA_SECRET_SUFFIX}` Secret, or caCertificates"
                ),
            );
            return None;
        }
    };
    let is_https = Protocol::parse(&server.server.port.protocol) == Some(Protocol::Https);
    let settings = ServerSettings {
        certificates,
        client_auth,
        min_version: min_max[0],
        max_version: min_max[1],
        cipher_suites: tls.cipher_suites.clone(),
        alpn: if is_https {
            HTTPS_ALPN.iter().map(|p| p.to_vec()).collect()
        } else {
            Vec::new()
        },
    };
    Some(settings)
}

/// A credential Secret: in the gateway's namespace (as Istio reads it), then in the
/// Gateway resource's own namespace.
fn find_secret<'a>(
    ix: &Index<'a>,
    sink: &mut Sink,
    built: &mut Built,
    server: &ServerRef<'a>,
    name: &str,
) -> Option<&'a Sourced<Secret>> {
    let namespaces = ix.secret_namespaces(server.gateway);
    let found = namespaces.iter().find_map(|ns| {
        ix.resources
            .secrets
            .iter()
            .find(|s| s.resource.metadata.name == name && s.resource.metadata.namespace() == ns)
    });
    if found.is_none() {
        let error = format!("not found in namespace {}", namespaces.join(" or "));
        let wanted = Wanted {
            name: format!("Secret {}/{name}", namespaces[0]),
            user: &server.name,
            place: server_place(server, "tls.credentialName"),
            unserved: SERVER_UNSERVED,
        };
        let what = format!("Secret {name} {error}");
        built.credentials.missing(sink, wanted, &what);
    }
    found
}

/// `ca.crt`/`cacert` of the credential, else the `<name>-cacert` Secret's. Err (None
/// outer) when a CA is present but unreadable.
#[allow(clippy::option_option)]
fn secret_ca<'a>(
    ix: &Index<'a>,
    sink: &mut Sink,
    built: &mut Built,
    server: &ServerRef<'a>,
    secret: &Secret,
    name: &str,
    served: &mut Vec<ServedCredential>,
) -> Option<Option<Vec<CertificateDer<'static>>>> {
    let ca_secret_name = format!("{name}{CA_SECRET_SUFFIX}");
    let namespaces = ix.secret_namespaces(server.gateway);
    let ca_secret = namespaces.iter().find_map(|ns| {
        ix.resources.secrets.iter().find(|s| {
            s.resource.metadata.name == ca_secret_name && s.resource.metadata.namespace() == ns
        })
    });
    for candidate in std::iter::once(secret).chain(ca_secret.map(|s| &*s.resource)) {
        let loaded = match certs::secret_first(candidate, &CA_KEYS) {
            Ok(Some(pem)) => certs::certificates(&pem),
            Ok(None) => continue,
            Err(e) => Err(e),
        };
        let loaded = loaded.map(Credential::ClientCa).map_err(|e| e.to_string());
        let credential = format!("Secret {} (client CA)", name_of(&candidate.metadata));
        let field = "tls.credentialName";
        let wanted = server_wanted(server, field, credential);
        return match built
            .credentials
            .credential(ix, sink, wanted, loaded, served)?
        {
            Credential::ClientCa(ca) => Some(Some(ca)),
            Credential::Served(_) => None,
        };
    }
    Some(None)
}

/// A server's certificate and key through `CompiledCredentials::credential`: None when
/// neither this version nor a last good one can be served (the server is then left out).
fn served_key(
    ix: &Index<'_>,
    sink: &mut Sink,
    built: &mut Built,
    wanted: Wanted<'_>,
    loaded: Result<Credential, String>,
    served: &mut Vec<ServedCredential>,
) -> Option<Arc<CertifiedKey>> {
    match built
        .credentials
        .credential(ix, sink, wanted, loaded, served)?
    {
        Credential::Served(key) => Some(key),
        Credential::ClientCa(_) => None,
    }
}

/// A credential of a server, read at its `field`, for `CompiledCredentials::credential`:
/// as loaded now or, when that failed, the version the live configuration serves; with
/// neither the server is not served. Every failure is a warning and a problem in the
/// staged report.
fn server_wanted<'r>(server: &'r ServerRef<'_>, field: &str, credential: String) -> Wanted<'r> {
    Wanted {
        name: credential,
        user: &server.name,
        place: server_place(server, field),
        unserved: SERVER_UNSERVED,
    }
}

pub(super) fn server_error(sink: &mut Sink, server: &ServerRef<'_>, field: &str, message: &str) {
    sink.push(at_server(server, field, Diagnostic::error(message)));
}

fn server_warning(sink: &mut Sink, server: &ServerRef<'_>, field: &str, message: &str) {
    sink.push(at_server(server, field, Diagnostic::warning(message)));
}

/// `diagnostic` placed at a server's field.
fn at_server(server: &ServerRef<'_>, field: &str, diagnostic: Diagnostic) -> Diagnostic {
    diagnostic
        .at(server.gateway.location.clone())
        .object(&server.resource)
        .field(format!("{}.{field}", server.field))
}

/// An empty warning at a server's field, for a message to fill in.
fn server_place(server: &ServerRef<'_>, field: &str) -> Diagnostic {
    at_server(server, field, Diagnostic::warning(""))
}
