//! What a verified client certificate tells the upstream: Envoy's
//! `x-forwarded-client-cert` (`Hash=…;Subject="…";URI=…;DNS=…`), and the subject
//! alternative names Istio's `subjectAltNames` are checked against.

use std::fmt::Write;

use rustls_pki_types::CertificateDer;
use x509_parser::{certificate::X509Certificate, extensions::GeneralName, prelude::FromDer};

/// DNS and URI subject alternative names; empty when the certificate does not parse.
pub fn subject_alt_names(cert: &CertificateDer<'_>) -> Vec<String> {
    let Ok((_, parsed)) = X509Certificate::from_der(cert.as_ref()) else {
        return Vec::new();
    };
    let (dns, uri) = names(&parsed);
    dns.into_iter().chain(uri).collect()
}

fn names(cert: &X509Certificate<'_>) -> (Vec<String>, Vec<String>) {
    let mut dns = Vec::new();
    let mut uri = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(n) => dns.push((*n).to_owned()),
                GeneralName::URI(u) => uri.push((*u).to_owned()),
                _ => {}
            }
        }
    }
    (dns, uri)
}

/// The `x-forwarded-client-cert` element for the client's leaf certificate, as Envoy
/// sets it with `SANITIZE_SET` (Istio's gateway default): the certificate's SHA-256, its
/// subject, and its URI and DNS names.
pub fn forwarded_client_cert(cert: &CertificateDer<'_>) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, cert.as_ref());
    let mut value = String::from("Hash=");
    for byte in digest.as_ref() {
        let _ = write!(value, "{byte:02x}");
    }
    if let Ok((_, parsed)) = X509Certificate::from_der(cert.as_ref()) {
        let subject = parsed.subject().to_string().replace('"', "\\\"");
        let _ = write!(value, ";Subject=\"{subject}\"");
        let (dns, uri) = names(&parsed);
        for u in uri {
            let _ = write!(value, ";URI={u}");
        }
        for d in dns {
            let _ = write!(value, ";DNS={d}");
        }
    }
    value
}
