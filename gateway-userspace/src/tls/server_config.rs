//! One Gateway server's TLS settings → a rustls [`ServerConfig`]: certificates chosen by
//! what the client can verify, client-certificate verification (with Istio's
//! `subjectAltNames`), protocol versions, cipher suites, ALPN and session tickets.

use std::sync::Arc;

use rustls::{
    DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme,
    SupportedCipherSuite, SupportedProtocolVersion,
    client::danger::HandshakeSignatureValid,
    crypto::CryptoProvider,
    server::{
        ClientHello, ResolvesServerCert, WebPkiClientVerifier,
        danger::{ClientCertVerified, ClientCertVerifier},
    },
    sign::CertifiedKey,
};
use rustls_pki_types::{CertificateDer, UnixTime};
use thiserror::Error;

use super::{
    client_cert::{self, ClientAuth},
    sessions::{ScopeKey, SessionScopes},
};

/// ALPN on HTTPS servers: HTTP/2 preferred, as Envoy offers.
pub const HTTPS_ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

#[derive(Debug, Error)]
pub enum ServerConfigError {
    #[error("unknown TLS version {0:?}: expected TLS_AUTO, TLSV1_0, TLSV1_1, TLSV1_2 or TLSV1_3")]
    UnknownVersion(String),
    #[error(
        "no TLS version between minProtocolVersion and maxProtocolVersion is offered (TLS 1.2 and 1.3 are)"
    )]
    NoVersion,
    #[error(
        "cipher suite {0:?} is not offered (use e.g. ECDHE-ECDSA-AES128-GCM-SHA256 or TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384)"
    )]
    UnknownCipherSuite(String),
    #[error("client CA certificates: {0}")]
    ClientCa(String),
    #[error("{0}")]
    Rustls(#[from] rustls::Error),
}

/// Istio's `minProtocolVersion`/`maxProtocolVersion` values, ordered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    V1_0,
    V1_1,
    V1_2,
    V1_3,
}

impl TlsVersion {
    /// None for `TLS_AUTO` (the default).
    pub fn parse(value: &str) -> Result<Option<Self>, ServerConfigError> {
        match value.to_ascii_uppercase().as_str() {
            "TLS_AUTO" | "" => Ok(None),
            "TLSV1_0" => Ok(Some(TlsVersion::V1_0)),
            "TLSV1_1" => Ok(Some(TlsVersion::V1_1)),
            "TLSV1_2" => Ok(Some(TlsVersion::V1_2)),
            "TLSV1_3" => Ok(Some(TlsVersion::V1_3)),
            _ => Err(ServerConfigError::UnknownVersion(value.to_owned())),
        }
    }
}

/// Everything a server's rustls configuration is built from.
#[derive(Debug)]
pub struct ServerSettings {
    /// Leaf-first chains with keys; with several (RSA and ECDSA), the client's signature
    /// schemes choose.
    pub certificates: Vec<Arc<CertifiedKey>>,
    pub client_auth: Option<ClientAuth>,
    pub min_version: Option<TlsVersion>,
    pub max_version: Option<TlsVersion>,
    /// Istio `cipherSuites` (TLS 1.2 only, as in Envoy); empty: rustls' defaults.
    pub cipher_suites: Vec<String>,
    pub alpn: Vec<Vec<u8>>,
}

/// The process's crypto provider: aws-lc-rs with its default suites and groups.
pub fn provider() -> CryptoProvider {
    rustls::crypto::aws_lc_rs::default_provider()
}

/// Validates versions and suites without building anything (for `validate`).
pub fn check(
    min_version: Option<TlsVersion>,
    max_version: Option<TlsVersion>,
    cipher_suites_named: &[String],
) -> Result<(), ServerConfigError> {
    versions(min_version, max_version)?;
    cipher_suites(&provider(), cipher_suites_named)?;
    Ok(())
}

/// The rustls configuration, resuming only sessions of its own scope (see `sessions`),
/// and what the connection may trust of the client certificate it accepted.
pub fn build(
    settings: ServerSettings,
    scopes: &SessionScopes,
) -> Result<(Arc<ServerConfig>, ClientTrust), ServerConfigError> {
    let scope = scopes.scope(ScopeKey::of(
        settings.client_auth.as_ref(),
        &settings.certificates,
    ));
    let mut provider = provider();
    provider.cipher_suites = cipher_suites(&provider, &settings.cipher_suites)?;
    let provider = Arc::new(provider);
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions(settings.min_version, settings.max_version)?)?;
    let mut trust = ClientTrust::Verified;
    let builder = match settings.client_auth {
        None => builder.with_no_client_auth(),
        Some(auth) => {
            let mut roots = RootCertStore::empty();
            for cert in auth.roots {
                roots
                    .add(cert)
                    .map_err(|e| ServerConfigError::ClientCa(e.to_string()))?;
            }
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
            let verifier = if auth.optional || auth.insecure_fallback {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            let verifier = verifier
                .build()
                .map_err(|e| ServerConfigError::ClientCa(e.to_string()))?;
            let verifier: Arc<dyn ClientCertVerifier> = if auth.subject_alt_names.is_empty() {
                verifier
            } else {
                Arc::new(SubjectAltNameVerifier {
                    inner: verifier,
                    allowed: auth.subject_alt_names,
                })
            };
            let verifier: Arc<dyn ClientCertVerifier> = if auth.insecure_fallback {
                trust = ClientTrust::Recheck(verifier.clone());
                Arc::new(InsecureFallbackVerifier { inner: verifier })
            } else {
                verifier
            };
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config =
        builder.with_cert_resolver(Arc::new(ByClientSupport::new(settings.certificates)));
    config.alpn_protocols = settings.alpn;
    config.ticketer = scope.ticketer;
    config.session_storage = scope.sessions;
    // No 0-RTT: replayable early data is not something a gateway should accept blindly.
    config.max_early_data_size = 0;
    Ok((Arc::new(config), trust))
}

/// What a terminated connection may trust of the client certificate rustls accepted.
#[derive(Clone, Debug, Default)]
pub enum ClientTrust {
    /// rustls verified every certificate it accepted (MUTUAL, OPTIONAL_MUTUAL,
    /// AllowValidOnly), or asked for none.
    #[default]
    Verified,
    /// AllowInsecureFallback: the handshake accepted any certificate, so the connection
    /// checks its client's chain again with this (the strict) verifier; one that fails
    /// is marked unverified and serves as no certificate at all.
    Recheck(Arc<dyn ClientCertVerifier>),
}

/// The client certificate of a terminated connection, as far as it may be trusted.
#[derive(Debug)]
pub enum PeerCertificate<'c> {
    /// The client sent none.
    Absent,
    /// The leaf of a chain the CAs verified.
    Trusted(&'c CertificateDer<'static>),
    /// A certificate that did not verify, served under AllowInsecureFallback: the
    /// connection's "unverified" mark; it stands for no identity.
    Unverified,
}

impl ClientTrust {
    /// What the connection may make of the chain rustls accepted.
    pub fn check<'c>(&self, chain: Option<&'c [CertificateDer<'static>]>) -> PeerCertificate<'c> {
        let Some((leaf, intermediates)) = chain.and_then(<[_]>::split_first) else {
            return PeerCertificate::Absent;
        };
        match self {
            ClientTrust::Verified => PeerCertificate::Trusted(leaf),
            ClientTrust::Recheck(strict) => {
                match strict.verify_client_cert(leaf, intermediates, UnixTime::now()) {
                    Ok(_) => PeerCertificate::Trusted(leaf),
                    Err(_) => PeerCertificate::Unverified,
                }
            }
        }
    }
}

/// Gateway API `AllowInsecureFallback`: a client certificate that does not verify
/// against the CA still completes the handshake (its signature over the handshake is
/// still checked), as the conformance suite expects; [`ClientTrust::Recheck`] then keeps
/// it from becoming an identity.
#[derive(Debug)]
struct InsecureFallbackVerifier {
    inner: Arc<dyn ClientCertVerifier>,
}

impl ClientCertVerifier for InsecureFallbackVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        // Verified or not, the handshake goes on; the connection tells the two apart.
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// TLS 1.2 unless `minProtocolVersion` says 1.3; rustls offers nothing older, so an
/// older minimum means 1.2.
fn versions(
    min: Option<TlsVersion>,
    max: Option<TlsVersion>,
) -> Result<Vec<&'static SupportedProtocolVersion>, ServerConfigError> {
    let min = min.unwrap_or(TlsVersion::V1_2).max(TlsVersion::V1_2);
    let max = max.unwrap_or(TlsVersion::V1_3);
    let mut versions = Vec::new();
    if max >= TlsVersion::V1_3 && min <= TlsVersion::V1_3 {
        versions.push(&rustls::version::TLS13);
    }
    if max >= TlsVersion::V1_2 && min <= TlsVersion::V1_2 {
        versions.push(&rustls::version::TLS12);
    }
    if versions.is_empty() {
        return Err(ServerConfigError::NoVersion);
    }
    Ok(versions)
}

/// TLS 1.3 suites always; TLS 1.2 suites restricted to the named ones (OpenSSL names
/// such as `ECDHE-RSA-AES128-GCM-SHA256`, or IANA names).
fn cipher_suites(
    provider: &CryptoProvider,
    names: &[String],
) -> Result<Vec<SupportedCipherSuite>, ServerConfigError> {
    if names.is_empty() {
        return Ok(provider.cipher_suites.clone());
    }
    let mut tls12 = Vec::new();
    for name in names {
        let iana = iana_name(name);
        let suite = provider
            .cipher_suites
            .iter()
            .find(|s| format!("{:?}", s.suite()) == iana)
            .ok_or_else(|| ServerConfigError::UnknownCipherSuite(name.clone()))?;
        if matches!(suite, SupportedCipherSuite::Tls12(_)) && !tls12.contains(suite) {
            tls12.push(*suite);
        }
    }
    Ok(provider
        .cipher_suites
        .iter()
        .filter(|s| matches!(s, SupportedCipherSuite::Tls13(_)))
        .copied()
        .chain(tls12)
        .collect())
}

/// OpenSSL's suite names (which Istio documents) → IANA names (which rustls uses).
fn iana_name(name: &str) -> String {
    let openssl = [
        (
            "ECDHE-ECDSA-AES128-GCM-SHA256",
            "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
        ),
        (
            "ECDHE-ECDSA-AES256-GCM-SHA384",
            "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
        ),
        (
            "ECDHE-ECDSA-CHACHA20-POLY1305",
            "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
        ),
        (
            "ECDHE-RSA-AES128-GCM-SHA256",
            "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
        ),
        (
            "ECDHE-RSA-AES256-GCM-SHA384",
            "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
        ),
        (
            "ECDHE-RSA-CHACHA20-POLY1305",
            "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
        ),
    ];
    let upper = name.trim().to_ascii_uppercase();
    openssl
        .iter()
        .find(|(o, _)| *o == upper)
        .map_or(upper.clone(), |(_, iana)| (*iana).to_owned())
}

/// Serves the first certificate (ECDSA and Ed25519 ahead of RSA: cheaper handshakes)
/// whose key can sign with a scheme the client offered.
#[derive(Debug)]
struct ByClientSupport {
    certificates: Vec<Arc<CertifiedKey>>,
}

impl ByClientSupport {
    fn new(mut certificates: Vec<Arc<CertifiedKey>>) -> Self {
        certificates.sort_by_key(|c| c.key.algorithm() == rustls::SignatureAlgorithm::RSA);
        ByClientSupport { certificates }
    }
}

impl ResolvesServerCert for ByClientSupport {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let offered = hello.signature_schemes();
        self.certificates
            .iter()
            .find(|c| c.key.choose_scheme(offered).is_some())
            .or_else(|| self.certificates.first())
            .cloned()
    }
}

/// Chain verification by webpki, then Istio's `subjectAltNames`: the client certificate
/// must name one of them (a failed check fails the handshake, as in Envoy).
#[derive(Debug)]
struct SubjectAltNameVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    allowed: Vec<String>,
}

impl ClientCertVerifier for SubjectAltNameVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        if client_cert::carries_any_name(end_entity, &self.allowed) {
            Ok(verified)
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_default_to_tls12_and_up() {
        let names = |v: Vec<&'static SupportedProtocolVersion>| {
            v.iter()
                .map(|v| format!("{:?}", v.version))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            names(versions(None, None).expect("default")),
            ["TLSv1_3", "TLSv1_2"]
        );
        assert_eq!(
            names(versions(Some(TlsVersion::V1_3), None).expect("1.3 only")),
            ["TLSv1_3"]
        );
        assert_eq!(
            names(versions(Some(TlsVersion::V1_0), Some(TlsVersion::V1_2)).expect("1.2")),
            ["TLSv1_2"]
        );
        assert!(versions(None, Some(TlsVersion::V1_1)).is_err());
        assert!(TlsVersion::parse("TLSV9").is_err());
    }

    #[test]
    fn cipher_suites_take_openssl_and_iana_names_and_refuse_unknown_ones() {
        let provider = provider();
        let suites = cipher_suites(
            &provider,
            &[
                "ECDHE-RSA-AES128-GCM-SHA256".into(),
                "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384".into(),
            ],
        )
        .expect("known suites");
        let tls12: Vec<String> = suites
            .iter()
            .filter(|s| matches!(s, SupportedCipherSuite::Tls12(_)))
            .map(|s| format!("{:?}", s.suite()))
            .collect();
        assert_eq!(
            tls12,
            [
                "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
                "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384"
            ]
        );
        assert!(
            suites
                .iter()
                .any(|s| matches!(s, SupportedCipherSuite::Tls13(_)))
        );
        assert!(matches!(
            cipher_suites(&provider, &["AES128-SHA".into()]),
            Err(ServerConfigError::UnknownCipherSuite(name)) if name == "AES128-SHA"
        ));
    }
}
