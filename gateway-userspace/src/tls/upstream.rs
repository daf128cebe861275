//! TLS origination (DestinationRule `trafficPolicy.tls`, modes SIMPLE and MUTUAL): the
//! rustls client configuration of one cluster, built at compile time and kept in the
//! snapshot's cluster, and the server-certificate check Istio asks Envoy for.
//!
//! Verification follows Istio (`cluster_tls.go`): the chain is checked against
//! `caCertificates` (or the credential Secret's `ca.crt`), else against the system trust
//! store (Istio's `VERIFY_CERTIFICATE_AT_CLIENT`, on by default since 1.20). The names:
//! when the rule has neither `sni` nor `subjectAltNames`, the name the connection was
//! opened for (Envoy's `auto_san_validation`: an HTTP request's host with `auto_sni`);
//! and the `subjectAltNames`, the rule's or else its ServiceEntry's, as Istio fills them
//! in: with both, the certificate must carry both, as Envoy checks its SAN list and its
//! matchers each. Neither: the chain only. `insecureSkipVerify` checks nothing.

use std::{
    collections::HashMap,
    hash::{DefaultHasher, Hash, Hasher},
    sync::{Arc, Mutex, OnceLock, PoisonError},
};

use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
    client::{
        ClientSessionMemoryCache, ResolvesClientCert, Resumption,
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
        verify_server_cert_signed_by_trust_anchor, verify_server_name,
    },
    crypto::{CryptoProvider, WebPkiSupportedAlgorithms},
    server::ParsedCertificate,
    sign::CertifiedKey,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use serde::Serialize;

use super::client_cert;

/// TLS sessions remembered per cluster for resumption: one per endpoint of a large
/// cluster, with room to spare.
const SESSIONS_PER_CLUSTER: usize = 256;

/// How a cluster's upstream connections are secured.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UpstreamTls {
    /// `SIMPLE` or `MUTUAL`.
    pub mode: &'static str,
    /// The name TCP routes' connections are opened for (HTTP requests' too without
    /// `auto_sni`): the rule's `sni`, else none ([`no_server_name`]), as Envoy's TCP proxy
    /// sends the cluster's `sni`, which Istio leaves empty without one.
    #[serde(serialize_with = "server_name")]
    pub sni: ServerName<'static>,
    /// Envoy's `auto_sni`, which Istio sets when the rule has no `sni`: the connection
    /// for an HTTP request is opened for the request's host (its Host after the route's
    /// rewrite, port stripped) rather than for `sni`; an IP address sends no SNI.
    pub auto_sni: bool,
    /// Envoy's `auto_san_validation`, which Istio sets when, besides, the rule has no
    /// `subjectAltNames` and does not `insecureSkipVerify`: the certificate must name the
    /// host the connection was opened for.
    pub auto_san_validation: bool,
    /// One of these the certificate must carry: the rule's `subjectAltNames`, else its
    /// ServiceEntry's (Istio's `constructUpstreamTLS`), which leave `auto_san_validation`
    /// as the rule alone sets it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub subject_alt_names: Vec<String>,
    /// Where the settings come from: `DestinationRule ns/name spec.trafficPolicy.tls`.
    pub origin: String,
    /// The client configuration, or why none could be built: then every connection is
    /// refused (503 `UF`) rather than sent in plaintext.
    #[serde(skip)]
    pub config: Result<Arc<ClientConfig>, Arc<str>>,
    /// Set when `config` is an error: the reason, for the config dump.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused: Option<Arc<str>>,
    /// Identifies the settings and credentials: pooled connections are shared only by
    /// clusters (and snapshots) with the same key, so a rotated client certificate is
    /// used by the next connection while open ones finish.
    #[serde(skip)]
    pub key: u64,
}

/// The name of a connection with no name to send or check: an address, so rustls sends
/// no SNI, and one the certificate is not checked against (`auto_san_validation` has no
/// name then: Envoy's TCP proxy checks the chain, and any `subjectAltNames`, only).
pub fn no_server_name() -> ServerName<'static> {
    ServerName::IpAddress(std::net::Ipv4Addr::UNSPECIFIED.into())
}

fn server_name<S: serde::Serializer>(name: &ServerName<'static>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&name.to_str())
}

/// What a cluster's TLS client is made of, as read from the rule and its credentials.
pub struct ClientSettings {
    pub mode: &'static str,
    pub sni: ServerName<'static>,
    /// Whether the certificate must name the server name the connection is opened for
    /// (`sni`, or the request's host with `auto_sni`), besides one of `subject_alt_names`
    /// if any: Envoy's `auto_san_validation`, and a BackendTLSPolicy's hostname.
    pub verify_server_name: bool,
    pub subject_alt_names: Vec<String>,
    /// None: the system trust store.
    pub roots: Option<Vec<CertificateDer<'static>>>,
    pub client_certificate: Option<Arc<CertifiedKey>>,
    pub insecure_skip_verify: bool,
    /// `h2` for HTTP/2 clusters, `http/1.1` otherwise.
    pub alpn: Vec<Vec<u8>>,
}

impl ClientSettings {
    /// Identifies these settings (certificates included, the key by its certificate).
    pub fn key(&self) -> u64 {
        let mut hasher = DefaultHasher::new();
        self.mode.hash(&mut hasher);
        self.sni.to_str().hash(&mut hasher);
        self.verify_server_name.hash(&mut hasher);
        self.subject_alt_names.hash(&mut hasher);
        self.roots
            .iter()
            .flatten()
            .for_each(|c| c.as_ref().hash(&mut hasher));
        if let Some(key) = &self.client_certificate {
            key.cert.iter().for_each(|c| c.as_ref().hash(&mut hasher));
        }
        self.insecure_skip_verify.hash(&mut hasher);
        self.alpn.hash(&mut hasher);
        hasher.finish()
    }

    /// The rustls client configuration, with its own session cache.
    pub fn build(&self, provider: &Arc<CryptoProvider>) -> Result<Arc<ClientConfig>, String> {
        let roots = match &self.roots {
            // Nothing is checked: no trust store needed.
            _ if self.insecure_skip_verify => Arc::new(RootCertStore::empty()),
            Some(certificates) => {
                let mut roots = RootCertStore::empty();
                let (added, _) = roots.add_parsable_certificates(certificates.iter().cloned());
                if added == 0 {
                    return Err("caCertificates: no usable CA certificate".to_owned());
                }
                Arc::new(roots)
            }
            None => system_roots()?,
        };
        let verifier = Arc::new(NameCheck {
            roots,
            names: if self.insecure_skip_verify {
                Names::Nothing
            } else {
                Names::Checked {
                    server_name: self.verify_server_name,
                    any_of: self.subject_alt_names.clone(),
                }
            },
            algorithms: provider.signature_verification_algorithms,
        });
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let mut config = match &self.client_certificate {
            Some(key) => {
                builder.with_client_cert_resolver(Arc::new(ClientCertificate(key.clone())))
            }
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = self.alpn.clone();
        config.resumption = Resumption::store(Arc::new(ClientSessionMemoryCache::new(
            SESSIONS_PER_CLUSTER,
        )));
        Ok(Arc::new(config))
    }
}

/// The client configurations of the last compiles by [`ClientSettings::key`]: a reload
/// that leaves a cluster's TLS settings alone keeps its configuration, and with it the
/// TLS sessions it can resume.
#[derive(Default)]
pub struct ClientConfigs(Mutex<HashMap<u64, Arc<ClientConfig>>>);

impl ClientConfigs {
    pub fn get(&self, key: u64) -> Option<Arc<ClientConfig>> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
            .cloned()
    }

    pub fn insert(&self, key: u64, config: Arc<ClientConfig>) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key, config);
    }

    /// Forgets the configurations a compile did not use.
    pub fn keep_only(&self, used: &[u64]) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|key, _| used.contains(key));
    }
}

/// The client certificate of MUTUAL mode, sent whatever CAs the server names (Envoy
/// sends its one certificate too).
#[derive(Debug)]
struct ClientCertificate(Arc<CertifiedKey>);

impl ResolvesClientCert for ClientCertificate {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _schemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The system trust store, read once (Debian's `/etc/ssl/certs`, or `SSL_CERT_FILE`).
fn system_roots() -> Result<Arc<RootCertStore>, String> {
    static ROOTS: OnceLock<Result<Arc<RootCertStore>, String>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            let mut roots = RootCertStore::empty();
            roots.add_parsable_certificates(found.certs);
            if roots.is_empty() {
                return Err(
                    "no caCertificates given and the system trust store is empty".to_owned(),
                );
            }
            Ok(Arc::new(roots))
        })
        .clone()
}

/// What of the upstream's certificate is checked.
#[derive(Debug)]
enum Names {
    /// The chain, and then its names: neither asked for (an explicit `sni` without
    /// `subjectAltNames`) checks the chain only, as Envoy.
    Checked {
        /// The name the connection was opened for, if it has one: Envoy's
        /// `auto_san_validation`.
        server_name: bool,
        /// One of these (DNS names, IP addresses or URIs such as SPIFFE IDs); empty: any.
        any_of: Vec<String>,
    },
    /// Nothing at all (`insecureSkipVerify`).
    Nothing,
}

#[derive(Debug)]
struct NameCheck {
    roots: Arc<RootCertStore>,
    names: Names,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for NameCheck {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Names::Checked {
            server_name: check_server_name,
            any_of,
        } = &self.names
        else {
            return Ok(ServerCertVerified::assertion());
        };
        let cert = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        if *check_server_name && *server_name != no_server_name() {
            verify_server_name(&cert, server_name)?;
        }
        // Exact matchers, as Istio configures Envoy's: DNS names match as DNS names do (a
        // wildcard certificate names each host under it).
        if !any_of.is_empty() && !client_cert::carries_any_name(end_entity, any_of) {
            return Err(CertificateError::NotValidForName.into());
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
#[path = "upstream_tests.rs"]
mod tests;
