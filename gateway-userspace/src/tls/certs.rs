//! Credentials: PEM certificate chains and private keys (PKCS#8, PKCS#1 and SEC1; RSA,
//! ECDSA P-256/P-384 and Ed25519) → rustls [`CertifiedKey`]s, and the Kubernetes Secrets
//! that hold them.

use std::sync::Arc;

use base64::Engine;
use rustls::{crypto::CryptoProvider, sign::CertifiedKey};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use thiserror::Error;

use crate::config::resources::Secret;

/// Secret keys Istio reads, in order: `kubernetes.io/tls` first, then the generic form.
pub const CERT_KEYS: [&str; 2] = ["tls.crt", "cert"];
pub const KEY_KEYS: [&str; 2] = ["tls.key", "key"];
pub const CA_KEYS: [&str; 2] = ["ca.crt", "cacert"];
/// Istio looks for a server's client CA in `<credentialName>-cacert` when the credential
/// itself has none.
pub const CA_SECRET_SUFFIX: &str = "-cacert";

#[derive(Debug, Error)]
pub enum CredentialError {
    #[error("no PEM certificate found")]
    NoCertificate,
    #[error("certificate PEM: {0}")]
    CertificatePem(rustls_pki_types::pem::Error),
    #[error("private key PEM (PKCS#8, PKCS#1 or SEC1 expected): {0}")]
    KeyPem(rustls_pki_types::pem::Error),
    #[error("private key: {0}")]
    Key(rustls::Error),
    #[error("the private key does not belong to the certificate")]
    KeyMismatch,
    #[error("Secret has no {0}")]
    MissingKey(String),
    #[error("Secret data {key}: not base64: {source}")]
    Base64 {
        key: String,
        source: base64::DecodeError,
    },
}

/// A certificate chain (leaf first) with its signing key.
pub fn certified_key(
    cert_pem: &[u8],
    key_pem: &[u8],
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, CredentialError> {
    let chain = certificates(cert_pem)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(CredentialError::KeyPem)?;
    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .map_err(CredentialError::Key)?;
    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        Ok(()) => Ok(Arc::new(certified)),
        // Keys whose public half the provider cannot derive are served unchecked.
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            Ok(Arc::new(certified))
        }
        Err(_) => Err(CredentialError::KeyMismatch),
    }
}

/// Every certificate in a PEM bundle; at least one.
pub fn certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, CredentialError> {
    let chain = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(CredentialError::CertificatePem)?;
    if chain.is_empty() {
        return Err(CredentialError::NoCertificate);
    }
    Ok(chain)
}

/// One entry of a Secret: `stringData` as written, `data` base64-decoded.
pub fn secret_entry(secret: &Secret, key: &str) -> Result<Option<Vec<u8>>, CredentialError> {
    if let Some(text) = secret.string_data.get(key) {
        return Ok(Some(text.as_bytes().to_vec()));
    }
    let Some(encoded) = secret.data.get(key) else {
        return Ok(None);
    };
    // Hand-written YAML wraps long base64 over lines.
    let compact: String = encoded.split_whitespace().collect();
    base64::engine::general_purpose::STANDARD
        .decode(compact)
        .map(Some)
        .map_err(|source| CredentialError::Base64 {
            key: key.to_owned(),
            source,
        })
}

/// The first of `keys` the Secret has.
pub fn secret_first(secret: &Secret, keys: &[&str]) -> Result<Option<Vec<u8>>, CredentialError> {
    for key in keys {
        if let Some(value) = secret_entry(secret, key)? {
            return Ok(Some(value));
        }
    }
    Ok(None)
}

/// The server credential a Secret holds.
pub fn secret_certified_key(
    secret: &Secret,
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, CredentialError> {
    let cert = secret_first(secret, &CERT_KEYS)?
        .ok_or_else(|| CredentialError::MissingKey(CERT_KEYS.join(" or ")))?;
    let key = secret_first(secret, &KEY_KEYS)?
        .ok_or_else(|| CredentialError::MissingKey(KEY_KEYS.join(" or ")))?;
    certified_key(&cert, &key, provider)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_and_empty_pem_are_reported() {
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        assert!(matches!(
            certified_key(b"not pem", b"not pem", &provider),
            Err(CredentialError::NoCertificate)
        ));
        assert!(certificates(b"-----BEGIN CERTIFICATE-----\nAAAA\n").is_err());
    }

    #[test]
    fn secrets_decode_data_and_string_data() {
        let mut secret = Secret {
            metadata: Default::default(),
            secret_type: Some("kubernetes.io/tls".into()),
            data: Default::default(),
            string_data: Default::default(),
        };
        secret.data.insert("tls.crt".into(), "aGVs\n bG8=".into());
        secret.string_data.insert("cert".into(), "plain".into());
        assert_eq!(
            secret_first(&secret, &CERT_KEYS).ok().flatten(),
            Some(b"hello".to_vec())
        );
        assert_eq!(
            secret_entry(&secret, "cert").ok().flatten(),
            Some(b"plain".to_vec())
        );
        secret.data.insert("tls.key".into(), "%%%".into());
        assert!(matches!(
            secret_first(&secret, &KEY_KEYS),
            Err(CredentialError::Base64 { .. })
        ));
    }
}
