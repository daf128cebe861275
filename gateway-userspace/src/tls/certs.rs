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

/// What went wrong with a credential. None of these quote what was read: the messages
/// reach logs, `validate` and metrics, and the input may be a private key.
#[derive(Debug, Error)]
pub enum CredentialError {
    #[error("no PEM certificate found")]
    NoCertificate,
    #[error("certificate PEM: {0}")]
    CertificatePem(&'static str),
    #[error("private key PEM (PKCS#8, PKCS#1 or SEC1 expected): {0}")]
    KeyPem(&'static str),
    #[error("private key: {0}")]
    Key(rustls::Error),
    #[error("the private key does not belong to the certificate")]
    KeyMismatch,
    #[error("Secret has no {0}")]
    MissingKey(String),
    #[error("Secret data {key}: not base64 ({problem})")]
    Base64 { key: String, problem: String },
}

/// A PEM error without the bytes some variants carry (a line of the input).
fn pem_problem(error: &rustls_pki_types::pem::Error) -> &'static str {
    use rustls_pki_types::pem::Error;
    match error {
        Error::MissingSectionEnd { .. } => "a section has no END line",
        Error::IllegalSectionStart { .. } => "a malformed BEGIN line",
        Error::Base64Decode(_) => "a section is not valid base64",
        Error::NoItemsFound => "no PEM section of the expected type",
        Error::SectionTooLarge => "a section is too large",
        _ => "unreadable PEM",
    }
}

/// A base64 error by position only, never by the offending symbol.
fn base64_problem(error: &base64::DecodeError) -> String {
    match error {
        base64::DecodeError::InvalidByte(offset, _) => {
            format!("an invalid character at offset {offset}")
        }
        base64::DecodeError::InvalidLastSymbol(offset, _) => {
            format!("an invalid last symbol at offset {offset}")
        }
        base64::DecodeError::InvalidLength(length) => format!("a length of {length}"),
        base64::DecodeError::InvalidPadding => "bad padding".to_owned(),
    }
}

/// A certificate chain (leaf first) with its signing key.
pub fn certified_key(
    cert_pem: &[u8],
    key_pem: &[u8],
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, CredentialError> {
    let chain = certificates(cert_pem)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| CredentialError::KeyPem(pem_problem(&e)))?;
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
        .map_err(|e| CredentialError::CertificatePem(pem_problem(&e)))?;
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
        .map_err(|e| CredentialError::Base64 {
            key: key.to_owned(),
            problem: base64_problem(&e),
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

    #[test]
    fn errors_never_quote_what_was_read() {
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        let secret_line = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7";
        let cases: [&[u8]; 3] = [
            // No END line, a bad BEGIN line, bad base64 inside.
            b"-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7\n",
            b"-----BEGIN PRIVATE KEY MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7\n",
            b"-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7%\n-----END PRIVATE KEY-----\n",
        ];
        for key in cases {
            let error = certified_key(CERT, key, &provider)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(error.starts_with("private key PEM"), "{error}");
            assert!(!error.contains(&secret_line[..16]), "{error}");
        }
        let mut secret = Secret {
            metadata: Default::default(),
            secret_type: None,
            data: Default::default(),
            string_data: Default::default(),
        };
        secret
            .data
            .insert("tls.key".into(), format!("{secret_line}!!!!"));
        let error = secret_first(&secret, &KEY_KEYS)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert_eq!(
            error,
            "Secret data tls.key: not base64 (an invalid character at offset 52)"
        );
    }

    /// PEM of arbitrary bytes: certificates are not parsed before the key fails.
    const CERT: &[u8] = b"-----BEGIN CERTIFICATE-----
MIIBfTCCASOgAwIBAgIUJ8i7NVTcjJ8b4a3CCmhxhEJgQ7IwCgYIKoZIzj0EAwIw
FDESMBAGA1UEAwwJdW5pdC10ZXN0MB4XDTI2MDEwMTAwMDAwMFoXDTM2MDEwMTAw
MDAwMFowFDESMBAGA1UEAwwJdW5pdC10ZXN0MFkwEwYHKoZIzj0CAQYIKoZIzj0D
AQcDQgAEN4P5Kp1bNkXQ2Zl8bHn6g3h1dF0vW1y0K3V4Q8zqHq1sC0P1yX4c8f6y
Q2K8u0w9S8B8l0m3m3Qk0qkqM4bYZqNTMFEwHQYDVR0OBBYEFJ1jHn9e2Cq6k4ZR
-----END CERTIFICATE-----
";
}
