//! HTTPS, TLS and TCP servers → [`Transport`]: each TLS server's credentials (Secrets
//! named by `credentialName(s)`, or files), client-certificate policy, versions and
//! suites become a rustls configuration; PASSTHROUGH servers get the VirtualService `tls`
//! routes matched by `sniHosts`; TCP servers and terminating TLS servers get `tcp` routes.
//!
//! A credential that cannot be read keeps its last good version (from the last applied
//! compile, in [`TlsState`](crate::tls::TlsState)); one that never loaded skips its
//! server. Either way a warning names the Secret or file, the report staged for the
//! reload lists it, and every other host on the port keeps serving.

use std::{collections::HashMap, sync::Arc};

use rustls::sign::CertifiedKey;
use rustls_pki_types::CertificateDer;
use serde::Deserialize;

use super::{
    Compiler, PortServers, binds,
    gateway_api::{GATEWAY_API_GROUP, PortListener},
    intersect_hosts, name_of,
    status::reason,
};
use crate::{
    config::{
        Diagnostic, Kind, ObjectRef, Sourced,
        resources::{
            Destination, Gateway, ObjectMeta, PortSelector, Secret, Server, ServerTls,
            VirtualService,
            gateway_api::{ApiGateway, L4RouteRule, TlsMode as ApiTlsMode, TlsRoute},
        },
    },
    snapshot::{
        AfterTermination, ListenerTls, Protocol, ServedCredential, SniRoute, TlsMode, TlsServer,
        Transport, WeightedCluster,
    },
    tls::{
        certs::{self, CA_KEYS, CA_SECRET_SUFFIX},
        client_cert::ClientAuth,
        credentials::{Credential, CredentialProblem, CredentialReport, read_capped},
        server_config::{self, HTTPS_ALPN, ServerConfigError, ServerSettings, TlsVersion},
    },
};

/// Weight of a destination that names none: all of the traffic when it is alone.
const SOLE_DESTINATION_WEIGHT: u32 = 100;

/// VirtualService `tls` and `tcp` routes (kept as YAML by `config`, typed here).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct L4Route {
    #[serde(rename = "match")]
    matches: Vec<L4Match>,
    route: Vec<L4Destination>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct L4Match {
    sni_hosts: Vec<String>,
    port: Option<u32>,
    gateways: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct L4Destination {
    destination: Destination,
    #[serde(default)]
    weight: Option<u32>,
}

/// What happens to an Istio server whose credential has no version to serve.
const SERVER_UNSERVED: &str = "this server is NOT served (the other servers are)";

/// What a compile loaded or kept, and what it could not, by credential name.
#[derive(Default)]
pub(super) struct CompiledCredentials {
    used: HashMap<String, Credential>,
    report: CredentialReport,
}

/// Where a server and its diagnostics come from.
struct ServerRef<'a> {
    gateway: &'a Sourced<Gateway>,
    server: &'a Server,
    resource: ObjectRef,
    field: String,
    /// Lowercase, `namespace/` removed.
    hosts: Vec<String>,
}

/// A terminating server's rustls configuration and what it may trust of client
/// certificates.
type TerminatingConfig = (Arc<rustls::ServerConfig>, server_config::ClientTrust);
impl<'a> Compiler<'a> {
    /// The TLS or TCP part of a listener; None for plaintext HTTP ports.
    pub(super) fn transport(
        &mut self,
        port: u16,
        servers: &PortServers<'a>,
        virtual_services: &[&'a Sourced<VirtualService>],
    ) -> Option<Arc<Transport>> {
        let refs: Vec<ServerRef<'a>> = servers
            .server_indices
            .iter()
            .filter_map(|&(gateway, index)| {
                let server = gateway.resource.spec.servers.get(index)?;
                Some(ServerRef {
                    gateway,
                    server,
                    resource: gateway.resource.object_ref(),
                    field: format!("spec.servers[{index}]"),
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
                    .map(|r| self.tcp_clusters(port, r, virtual_services))
                    .find(|c| !c.is_empty())
                    .unwrap_or_default();
                Some(Arc::new(Transport::Tcp(clusters)))
            }
            Protocol::Https | Protocol::Tls => {
                let tls_servers: Vec<TlsServer> = refs
                    .iter()
                    .filter_map(|r| self.tls_server(port, r, virtual_services))
                    .collect();
                let listener_tls = ListenerTls {
                    servers: tls_servers,
                };
                if !listener_tls.servers.is_empty()
                    && listener_tls.select(None).is_none()
                    && let Some(first) = refs.first()
                {
                    self.diagnostics.push(
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

    fn tls_server(
        &mut self,
        port: u16,
        server: &ServerRef<'a>,
        virtual_services: &[&'a Sourced<VirtualService>],
    ) -> Option<TlsServer> {
        let Some(tls) = &server.server.tls else {
            self.server_error(
                server,
                "tls",
                "an HTTPS or TLS server needs `tls` (mode and credentials)",
            );
            return None;
        };
        let mode = tls.mode.as_deref().unwrap_or("SIMPLE").to_ascii_uppercase();
        let name = format!("{} {}", server.resource, server.field);
        let protocol = Protocol::parse(&server.server.port.protocol);
        let mut credentials = Vec::new();
        let mode = match mode.as_str() {
            "PASSTHROUGH" => TlsMode::Passthrough {
                routes: self.sni_routes(port, server, virtual_services),
            },
            "SIMPLE" | "MUTUAL" | "OPTIONAL_MUTUAL" => {
                let settings = self.server_settings(server, tls, &mode, &mut credentials)?;
                let after = if protocol == Some(Protocol::Tls) {
                    AfterTermination::Tcp(self.tcp_clusters(port, server, virtual_services))
                } else {
                    AfterTermination::Http
                };
                match server_config::build(settings, &self.tls.sessions) {
                    Ok((config, trust)) => TlsMode::Terminate {
                        config,
                        trust,
                        after,
                    },
                    Err(e) => {
                        self.server_error(server, "tls", &e.to_string());
                        return None;
                    }
                }
            }
            other => {
                self.server_warning(
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
    fn server_settings(
        &mut self,
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
                        self.server_error(server, field, &e.to_string());
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
            self.server_error(server, field, &e.to_string());
            return None;
        }
        let mut credential_names: Vec<&String> = tls.credential_names.iter().collect();
        if let Some(name) = &tls.credential_name {
            credential_names.insert(0, name);
        }
        let mut certificates: Vec<Arc<CertifiedKey>> = Vec::new();
        let mut client_ca: Option<Vec<CertificateDer<'static>>> = None;
        for name in &credential_names {
            let secret = self.find_secret(server, name)?;
            let loaded = certs::secret_certified_key(&secret.resource, &provider)
                .map(Credential::Served)
                .map_err(|e| e.to_string());
            let credential = format!("Secret {}", name_of(&secret.resource.metadata));
            let place = self.server_place(server, "tls.credentialName");
            certificates.push(self.served_key(server, credential, loaded, place, served)?);
            if client_ca.is_none() && mode != "SIMPLE" {
                client_ca = self.secret_ca(server, &secret.resource, name, served)?;
            }
        }
        match (&tls.server_certificate, &tls.private_key) {
            (Some(cert_path), Some(key_path)) if certificates.is_empty() => {
                self.read_credential_files(&[cert_path.as_str(), key_path.as_str()]);
                let read = |path: &String| read_capped(path.as_ref()).map_err(|e| e.to_string());
                let loaded = read(cert_path).and_then(|cert| {
                    let key = read(key_path)?;
                    certs::certified_key(&cert, &key, &provider)
                        .map(Credential::Served)
                        .map_err(|e| e.to_string())
                });
                let credential = format!("file {cert_path} (key {key_path})");
                let place = self.server_place(server, "tls.serverCertificate");
                certificates.push(self.served_key(server, credential, loaded, place, served)?);
            }
            _ => {}
        }
        if certificates.is_empty() {
            self.server_error(
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
            self.read_credential_files(&[path.as_str()]);
            let loaded = read_capped(path.as_ref())
                .map_err(|e| e.to_string())
                .and_then(|pem| certs::certificates(&pem).map_err(|e| e.to_string()))
                .map(Credential::ClientCa);
            let credential = format!("file {path} (client CA)");
            let place = self.server_place(server, "tls.caCertificates");
            match self.credential(
                credential,
                &server_name(server),
                loaded,
                place,
                SERVER_UNSERVED,
                served,
            )? {
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
                self.server_error(
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
    fn find_secret(&mut self, server: &ServerRef<'a>, name: &str) -> Option<&'a Sourced<Secret>> {
        let namespaces = self.secret_namespaces(server.gateway);
        let found = namespaces.iter().find_map(|ns| {
            self.resources
                .secrets
                .iter()
                .find(|s| s.resource.metadata.name == name && s.resource.metadata.namespace() == ns)
        });
        if found.is_none() {
            let error = format!("not found in namespace {}", namespaces.join(" or "));
            let place = self.server_place(server, "tls.credentialName");
            self.credential_missing(
                format!("Secret {}/{name}", namespaces[0]),
                &server_name(server),
                &format!("Secret {name} {error}"),
                SERVER_UNSERVED,
                place,
            );
        }
        found
    }

    fn secret_namespaces(&self, gateway: &Sourced<Gateway>) -> Vec<String> {
        let mut namespaces = vec![self.identity.namespace.clone()];
        let own = gateway.resource.metadata.namespace().to_owned();
        if !namespaces.contains(&own) {
            namespaces.push(own);
        }
        namespaces
    }

    /// `ca.crt`/`cacert` of the credential, else the `<name>-cacert` Secret's. Err (None
    /// outer) when a CA is present but unreadable.
    #[allow(clippy::option_option)]
    fn secret_ca(
        &mut self,
        server: &ServerRef<'a>,
        secret: &Secret,
        name: &str,
        served: &mut Vec<ServedCredential>,
    ) -> Option<Option<Vec<CertificateDer<'static>>>> {
        let ca_secret_name = format!("{name}{CA_SECRET_SUFFIX}");
        let namespaces = self.secret_namespaces(server.gateway);
        let ca_secret = namespaces.iter().find_map(|ns| {
            self.resources.secrets.iter().find(|s| {
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
            let place = self.server_place(server, "tls.credentialName");
            return match self.credential(
                credential,
                &server_name(server),
                loaded,
                place,
                SERVER_UNSERVED,
                served,
            )? {
                Credential::ClientCa(ca) => Some(Some(ca)),
                Credential::Served(_) => None,
            };
        }
        Some(None)
    }

    /// A credential as loaded now or, when that failed, the version the live
    /// configuration serves. None: neither; the server must not be served. Every
    /// failure is a warning and a problem in the staged report.
    /// A server's certificate and key through `credential`: None when neither this
    /// version nor a last good one can be served (the server is then left out).
    fn served_key(
        &mut self,
        server: &ServerRef<'_>,
        credential: String,
        loaded: Result<Credential, String>,
        place: Diagnostic,
        served: &mut Vec<ServedCredential>,
    ) -> Option<Arc<CertifiedKey>> {
        let server = server_name(server);
        match self.credential(credential, &server, loaded, place, SERVER_UNSERVED, served)? {
            Credential::Served(key) => Some(key),
            Credential::ClientCa(_) => None,
        }
    }

    pub(super) fn credential(
        &mut self,
        name: String,
        server: &str,
        loaded: Result<Credential, String>,
        place: Diagnostic,
        unserved: &str,
        served: &mut Vec<ServedCredential>,
    ) -> Option<Credential> {
        let error = match loaded {
            Ok(credential) => {
                served.push(ServedCredential {
                    name: name.clone(),
                    certificate: credential.describe(),
                    stale: None,
                });
                if !self.credentials.report.loaded.contains(&name) {
                    self.credentials.report.loaded.push(name.clone());
                }
                self.credentials.used.insert(name, credential.clone());
                return Some(credential);
            }
            Err(error) => error,
        };
        let Some(last_good) = self.tls.credentials.last_good(&name) else {
            let what = format!("{name}: {error}");
            self.credential_missing(name, server, &what, unserved, place);
            return None;
        };
        let description = last_good.describe();
        let diagnostic = Diagnostic {
            message: format!(
                "{name}: {error}; this version is NOT applied: the server keeps serving the last good one ({description})"
            ),
            ..place
        };
        self.diagnostics.push(diagnostic.clone());
        self.credentials.report.problems.push(CredentialProblem {
            credential: name.clone(),
            server: server.to_owned(),
            error: error.clone(),
            kept: Some(description.clone()),
            diagnostic,
        });
        served.push(ServedCredential {
            name: name.clone(),
            certificate: description,
            stale: Some(error),
        });
        self.credentials.used.insert(name, last_good.clone());
        Some(last_good)
    }

    /// A credential with no version to serve: its server is skipped, loudly.
    fn credential_missing(
        &mut self,
        name: String,
        server: &str,
        what: &str,
        unserved: &str,
        place: Diagnostic,
    ) {
        let diagnostic = Diagnostic {
            message: format!("{what}; no valid version of it has ever loaded, so {unserved}"),
            ..place
        };
        self.diagnostics.push(diagnostic.clone());
        self.credentials.report.problems.push(CredentialProblem {
            credential: name,
            server: server.to_owned(),
            error: what.to_owned(),
            kept: None,
            diagnostic,
        });
    }

    /// Notes credential files this compile reads, for the reload loop to watch.
    pub(super) fn read_credential_files(&mut self, paths: &[&str]) {
        let files = &mut self.credentials.report.files;
        files.extend(paths.iter().map(std::path::PathBuf::from));
    }

    /// This compile's credentials, for the reload to commit once it is live.
    pub(super) fn stage_credentials(&mut self) {
        self.tls.upstream.keep_only(&self.upstream_tls_keys);
        let CompiledCredentials { used, report } = std::mem::take(&mut self.credentials);
        self.tls.credentials.stage(used, report);
    }

    /// An empty warning at a server's field, for a message to fill in.
    fn server_place(&self, server: &ServerRef<'a>, field: &str) -> Diagnostic {
        Diagnostic::warning("")
            .at(server.gateway.location.clone())
            .object(&server.resource)
            .field(format!("{}.{field}", server.field))
    }

    /// PASSTHROUGH: `tls` routes of VirtualServices bound to the server's Gateway whose
    /// `sniHosts` the server accepts.
    fn sni_routes(
        &mut self,
        port: u16,
        server: &ServerRef<'a>,
        virtual_services: &[&'a Sourced<VirtualService>],
    ) -> Vec<SniRoute> {
        let mut routes = Vec::new();
        for vs in virtual_services {
            if !binds(&vs.resource, server.gateway) {
                continue;
            }
            for (index, value) in vs.resource.spec.tls.iter().enumerate() {
                let field = format!("spec.tls[{index}]");
                let Some(route) = self.l4_route(vs, value, &field) else {
                    continue;
                };
                for m in &route.matches {
                    if !self.l4_match_applies(m, port, server.gateway, vs) {
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
                    let clusters = self.l4_clusters(vs, &route, &field);
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
    fn tcp_clusters(
        &mut self,
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
            for (index, value) in vs.resource.spec.tcp.iter().enumerate() {
                let field = format!("spec.tcp[{index}]");
                let Some(route) = self.l4_route(vs, value, &field) else {
                    continue;
                };
                let applies = route.matches.is_empty()
                    || route
                        .matches
                        .iter()
                        .any(|m| self.l4_match_applies(m, port, server.gateway, vs));
                if applies {
                    return self.l4_clusters(vs, &route, &field);
                }
            }
        }
        Vec::new()
    }

    fn l4_route(
        &mut self,
        vs: &Sourced<VirtualService>,
        value: &serde_yaml::Value,
        field: &str,
    ) -> Option<L4Route> {
        match serde_yaml::from_value::<L4Route>(value.clone()) {
            Ok(route) => Some(route),
            Err(e) => {
                self.diagnostics.push(
                    Diagnostic::error(e.to_string())
                        .at(vs.location.clone())
                        .object(&vs.resource.object_ref())
                        .field(field.to_owned()),
                );
                None
            }
        }
    }

    fn l4_match_applies(
        &self,
        m: &L4Match,
        port: u16,
        gateway: &Sourced<Gateway>,
        vs: &Sourced<VirtualService>,
    ) -> bool {
        let port_ok = m.port.is_none_or(|p| p == u32::from(port));
        let vs_namespace = vs.resource.metadata.namespace();
        let gateway_ok = m.gateways.is_empty()
            || m.gateways.iter().any(|g| {
                let (ns, name) = super::istio_match::resolve_gateway_name(g, vs_namespace);
                ns == gateway.resource.metadata.namespace()
                    && name == gateway.resource.metadata.name
            });
        port_ok && gateway_ok
    }

    fn l4_clusters(
        &mut self,
        vs: &Sourced<VirtualService>,
        route: &L4Route,
        field: &str,
    ) -> Vec<WeightedCluster> {
        let resource = vs.resource.object_ref();
        let vs_namespace = vs.resource.metadata.namespace().to_owned();
        let sole = route.route.len() == 1;
        route
            .route
            .iter()
            .enumerate()
            .map(|(index, d)| {
                let cluster = self.cluster(
                    &d.destination,
                    &vs_namespace,
                    vs.location.as_ref(),
                    &resource,
                    &format!("{field}.route[{index}].destination"),
                );
                let weight = d
                    .weight
                    .unwrap_or(if sole { SOLE_DESTINATION_WEIGHT } else { 0 });
                WeightedCluster::new(weight, cluster)
            })
            .collect()
    }

    /// Gateway API HTTPS listeners on one port (`tls.mode: Terminate`, the default): each
    /// becomes a TLS server for its hostname (`*` without one) with the certificates of its
    /// `certificateRefs` (Secrets; another namespace's only with a ReferenceGrant there).
    /// None when no listener on the port is HTTPS.
    pub(super) fn gateway_api_tls(
        &mut self,
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
                        self.api_backends(
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
                        self.api_terminating_config(gateway, index, Vec::new())
                    else {
                        continue;
                    };
                    for (route, sni_hosts) in &port_listener.tls_routes {
                        let clusters = self.api_backends(
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
                let routes = self.api_sni_routes(&port_listener.tls_routes);
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
            let Some((config, served)) = self.api_terminating_config(gateway, index, alpn) else {
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
    fn api_terminating_config(
        &mut self,
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
            self.status.listener(&resource, &listener.name).not_accepted = Some((
                reason::UNSUPPORTED_VALUE,
                "an HTTPS listener terminates TLS (Passthrough needs protocol TLS)".to_owned(),
            ));
            warn(
                &mut self.diagnostics,
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
                self.listener_unresolved(
                    &resource,
                    &listener.name,
                    reason::INVALID_CERTIFICATE_REF,
                    format!("certificateRefs[{ref_index}] is not a core Secret"),
                );
                warn(
                    &mut self.diagnostics,
                    "only core Secrets are served as certificates; this reference is skipped"
                        .into(),
                    &sub,
                );
                continue;
            }
            let namespace = reference.namespace.as_deref().unwrap_or(gw_namespace);
            if namespace != gw_namespace
                && !self.secret_reference_granted(gw_namespace, namespace, &reference.name)
            {
                self.listener_unresolved(
                    &resource,
                    &listener.name,
                    reason::REF_NOT_PERMITTED,
                    format!(
                        "Secret {namespace}/{} is in another namespace and no ReferenceGrant there allows it",
                        reference.name
                    ),
                );
                warn(
                    &mut self.diagnostics,
                    format!(
                        "Secret {namespace}/{} is in another namespace and no ReferenceGrant there allows it (RefNotPermitted); this reference is skipped",
                        reference.name
                    ),
                    &sub,
                );
                continue;
            }
            let secret = self.resources.secrets.iter().find(|s| {
                s.resource.metadata.name == reference.name
                    && s.resource.metadata.namespace() == namespace
            });
            let credential = format!("Secret {namespace}/{}", reference.name);
            let server_name = format!("{resource} {}", listener.name);
            let place = Diagnostic::warning("")
                .at(gateway.location.clone())
                .object(&resource)
                .field(format!("{field}{sub}"));
            let Some(secret) = secret else {
                let what = format!("{credential} not found");
                self.listener_unresolved(
                    &resource,
                    &listener.name,
                    reason::INVALID_CERTIFICATE_REF,
                    what.clone(),
                );
                self.credential_missing(
                    credential,
                    &server_name,
                    &what,
                    "this reference is skipped",
                    place,
                );
                continue;
            };
            let loaded = certs::secret_certified_key(&secret.resource, &provider)
                .map(Credential::Served)
                .map_err(|e| e.to_string());
            let unusable = format!("{credential} does not hold a usable certificate and key");
            if let Some(Credential::Served(key)) = self.credential(
                credential,
                &server_name,
                loaded,
                place,
                "this reference is skipped",
                &mut served,
            ) {
                certificates.push(key);
            } else {
                self.listener_unresolved(
                    &resource,
                    &listener.name,
                    reason::INVALID_CERTIFICATE_REF,
                    unusable,
                );
            }
        }
        if certificates.is_empty() {
            self.status
                .listener(&resource, &listener.name)
                .not_programmed = Some("no usable certificateRefs".to_owned());
            warn(
                &mut self.diagnostics,
                "no usable certificateRefs: this listener is not served (the others are)".into(),
                ".certificateRefs",
            );
            return None;
        }
        let Ok(client_auth) = self.api_client_auth(gateway, index) else {
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
        let config = match server_config::build(settings, &self.tls.sessions) {
            Ok(config) => config,
            Err(e) => {
                self.status
                    .listener(&resource, &listener.name)
                    .not_programmed = Some(e.to_string());
                warn(&mut self.diagnostics, e.to_string(), "");
                return None;
            }
        };
        Some((config, served))
    }

    /// The TLSRoutes attached to a listener (oldest first, with the SNI hosts each
    /// serves there, compile/gateway_api.rs) → its passthrough routes.
    fn api_sni_routes(&mut self, routes: &[(&'a Sourced<TlsRoute>, Vec<String>)]) -> Vec<SniRoute> {
        routes
            .iter()
            .map(|(route, sni_hosts)| SniRoute {
                sni_hosts: sni_hosts.clone(),
                clusters: self.api_backends(
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
    fn api_backends(
        &mut self,
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
                || self.resources.reference_grants.iter().any(|grant| {
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
            // (as for HTTPRoutes, compile/gateway_api.rs).
            let exists = self.resources.services.iter().any(|s| {
                s.resource.metadata.name == backend.name
                    && s.resource.metadata.namespace() == namespace
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
                self.status.unresolved(&resource, why, message.clone());
                self.diagnostics.push(
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
            let cluster = self.cluster(&destination, &namespace, location, &resource, &field);
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
    fn api_client_auth(
        &mut self,
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
                && !self.reference_granted_to(gw_namespace, namespace, "ConfigMap", &reference.name)
            {
                Some((
                    reason::REF_NOT_PERMITTED,
                    format!(
                        "ConfigMap {namespace}/{} is in another namespace and no ReferenceGrant there allows it",
                        reference.name
                    ),
                ))
            } else {
                let found = self.resources.config_maps.iter().find(|c| {
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
                self.listener_unresolved(&resource, &listener.name, why, message.clone());
                self.diagnostics.push(
                    Diagnostic::warning(format!("{message} ({why}); this reference is skipped"))
                        .at(gateway.location.clone())
                        .object(&resource)
                        .field(format!("{field}.caCertificateRefs[{i}]")),
                );
            }
        }
        if roots.is_empty() {
            let message = "client-certificate validation has no usable CA certificate; this listener is not served".to_owned();
            self.status.listener(&resource, &listener.name).not_accepted =
                Some((reason::NO_VALID_CA_CERTIFICATE, message.clone()));
            self.diagnostics.push(
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
                self.diagnostics.push(
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

    /// Whether a ReferenceGrant in `target_namespace` lets Gateways of
    /// `gateway_namespace` refer to the core `kind` object `name`.
    fn reference_granted_to(
        &self,
        gateway_namespace: &str,
        target_namespace: &str,
        kind: &str,
        name: &str,
    ) -> bool {
        self.resources.reference_grants.iter().any(|grant| {
            grant.resource.metadata.namespace() == target_namespace
                && grant.resource.spec.from.iter().any(|from| {
                    from.group == GATEWAY_API_GROUP
                        && from.kind == "Gateway"
                        && from.namespace == gateway_namespace
                })
                && grant.resource.spec.to.iter().any(|to| {
                    to.group.is_empty()
                        && to.kind == kind
                        && to.name.as_deref().is_none_or(|n| n == name)
                })
        })
    }

    fn secret_reference_granted(
        &self,
        gateway_namespace: &str,
        secret_namespace: &str,
        name: &str,
    ) -> bool {
        self.resources.reference_grants.iter().any(|grant| {
            grant.resource.metadata.namespace() == secret_namespace
                && grant.resource.spec.from.iter().any(|from| {
                    from.group == GATEWAY_API_GROUP
                        && from.kind == "Gateway"
                        && from.namespace == gateway_namespace
                })
                && grant.resource.spec.to.iter().any(|to| {
                    to.group.is_empty()
                        && to.kind == "Secret"
                        && to.name.as_deref().is_none_or(|n| n == name)
                })
        })
    }

    fn server_error(&mut self, server: &ServerRef<'a>, field: &str, message: &str) {
        self.diagnostics.push(
            Diagnostic::error(message)
                .at(server.gateway.location.clone())
                .object(&server.resource)
                .field(format!("{}.{field}", server.field)),
        );
    }

    fn server_warning(&mut self, server: &ServerRef<'a>, field: &str, message: &str) {
        self.diagnostics.push(
            Diagnostic::warning(message)
                .at(server.gateway.location.clone())
                .object(&server.resource)
                .field(format!("{}.{field}", server.field)),
        );
    }
}

fn server_name(server: &ServerRef<'_>) -> String {
    format!("{} {}", server.resource, server.field)
}

impl Compiler<'_> {
    fn listener_unresolved(
        &mut self,
        gateway: &ObjectRef,
        listener: &str,
        reason: &'static str,
        message: String,
    ) {
        self.status
            .listener(gateway, listener)
            .unresolved
            .get_or_insert((reason, message));
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::{
        compile::{Identity, compile},
        config::{Diagnostics, Resources, source::split_documents, tests_support::parse},
        snapshot::TlsPortPolicy,
    };

    fn compiled(text: &str) -> (crate::snapshot::Snapshot, Diagnostics) {
        let mut resources = Resources::default();
        let mut diagnostics = Diagnostics::default();
        for doc in split_documents(Path::new("gw.yaml"), text) {
            parse(&doc, &mut resources, &mut diagnostics);
        }
        let (snapshot, more) = compile(&resources, &Identity::default());
        diagnostics.extend(more);
        (snapshot, diagnostics)
    }

    const GATEWAY: &str = "\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: edge, namespace: default}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 443, name: a, protocol: TLS}
    hosts: [\"Pass.Example.com\", \"*.wild.example.com\"]
    tls: {mode: PASSTHROUGH}
  - port: {number: 443, name: b, protocol: HTTPS}
    hosts: [\"secure.example.com\"]
    tls: {mode: SIMPLE, credentialName: missing-cred}
  - port: {number: 443, name: c, protocol: HTTPS}
    hosts: [\"old.example.com\"]
    tls: {mode: SIMPLE, credentialName: missing-cred, cipherSuites: [DES-CBC3-SHA]}
";

    #[test]
    fn tls_ports_tell_the_kernel_their_names_and_bad_servers_are_reported() {
        let (snapshot, diagnostics) = compiled(GATEWAY);
        assert_eq!(
            snapshot.kernel.tls_ports,
            [TlsPortPolicy {
                port: 443,
                accept_any: false,
                names: vec!["*.wild.example.com".into(), "pass.example.com".into()],
                // The two terminating servers are skipped (bad Secret, bad suite).
                passthrough: true,
            }]
        );
        let text = diagnostics.to_string();
        assert!(
            text.contains("spec.servers[1].tls.credentialName: Secret missing-cred not found in namespace istio-system or default"),
            "{text}"
        );
        let error = diagnostics
            .errors()
            .next()
            .map(ToString::to_string)
            .unwrap_or_default();
        assert!(
            error.contains(
                "spec.servers[2].tls.cipherSuites: cipher suite \"DES-CBC3-SHA\" is not offered"
            ),
            "{text}"
        );
        assert!(
            text.contains("no server on port 443 has host `*`"),
            "{text}"
        );
    }
}

#[cfg(test)]
#[path = "tls_state_tests.rs"]
mod state_tests;
