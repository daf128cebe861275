//! What a verified client certificate tells the upstream: Envoy's
//! `x-forwarded-client-cert` (`Hash=…;Subject="…";URI=…;DNS=…`), and the subject
//! alternative names Istio's `subjectAltNames` are checked against; and what a server asks of
//! client certificates.

use std::fmt::Write;

use rustls_pki_types::CertificateDer;
use x509_parser::{
    certificate::X509Certificate,
    extensions::GeneralName,
    objects::{oid_registry, oid2abbrev},
    prelude::FromDer,
    x509::X509Name,
};

/// Client certificates (MUTUAL, OPTIONAL_MUTUAL).
#[derive(Debug)]
pub struct ClientAuth {
    pub roots: Vec<CertificateDer<'static>>,
    /// OPTIONAL_MUTUAL: a client without a certificate is served too.
    pub optional: bool,
    /// Gateway API `AllowInsecureFallback`: a client whose certificate does not verify is
    /// served too, as if it had sent none (implies `optional`). Its certificate is never
    /// trusted: see [`ClientTrust`].
    pub insecure_fallback: bool,
    /// Istio `subjectAltNames`: a client certificate must carry one of these (DNS or URI).
    pub subject_alt_names: Vec<String>,
}

/// Whether the certificate carries one of `wanted` (Istio's and BackendTLSPolicy's
/// `subjectAltNames`), as Envoy's exact SAN matchers judge: a URI name must be equal; a
/// DNS name matches as DNS names do (RFC 6125), case-insensitively, and a certificate's
/// `*.` first label stands for one whole label. False when the certificate does not parse.
pub fn carries_any_name(cert: &CertificateDer<'_>, wanted: &[String]) -> bool {
    let Ok((_, parsed)) = X509Certificate::from_der(cert.as_ref()) else {
        return false;
    };
    let (dns, uri) = names(&parsed);
    wanted.iter().any(|want| {
        uri.contains(want)
            || dns
                .iter()
                .any(|presented| dns_name_matches(want, presented))
    })
}

/// `wanted` against a certificate's DNS name `presented`: equal but for case, or
/// `presented` is `*.rest` and `wanted` is one non-empty label, a dot and `rest`
/// (`*.example.com` names `a.example.com`, not `example.com` nor `a.b.example.com`).
fn dns_name_matches(wanted: &str, presented: &str) -> bool {
    if wanted.eq_ignore_ascii_case(presented) {
        return true;
    }
    let Some(rest) = presented.strip_prefix("*.") else {
        return false;
    };
    wanted
        .split_once('.')
        .is_some_and(|(label, after)| !label.is_empty() && after.eq_ignore_ascii_case(rest))
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

/// The identity AuthorizationPolicy `principals` match: the first URI SAN (a SPIFFE ID
/// in a mesh), else the first DNS SAN, as Envoy's `principal_name` reads a certificate.
pub fn principal(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = X509Certificate::from_der(cert.as_ref()).ok()?;
    let (dns, uri) = names(&parsed);
    uri.into_iter().chain(dns).next()
}

/// The `x-forwarded-client-cert` element for the client's leaf certificate, as Envoy
/// sets it with `SANITIZE_SET` (Istio's gateway default): the certificate's SHA-256, its
/// subject (RFC 2253, escaped), and its URI and DNS names.
pub fn forwarded_client_cert(cert: &CertificateDer<'_>) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, cert.as_ref());
    let mut value = String::from("Hash=");
    for byte in digest.as_ref() {
        let _ = write!(value, "{byte:02x}");
    }
    if let Ok((_, parsed)) = X509Certificate::from_der(cert.as_ref()) {
        let subject = rfc2253_name(parsed.subject());
        let _ = write!(value, ";Subject=\"{subject}\"");
        let (dns, uri) = names(&parsed);
        for u in uri {
            let _ = write!(value, ";URI={}", xfcc_value(&u));
        }
        for d in dns {
            let _ = write!(value, ";DNS={}", xfcc_value(&d));
        }
    }
    value
}

/// A distinguished name as Envoy prints it for XFCC (OpenSSL's `XN_FLAG_RFC2253`): last
/// RDN first, `,` between RDNs and `+` within one, and every value escaped so that no
/// character of it can end the quoted Subject or pose as another attribute: `,+"\<>;`
/// behind a backslash, control and non-ASCII bytes as `\XX`.
fn rfc2253_name(name: &X509Name<'_>) -> String {
    let registry = oid_registry();
    let mut out = String::new();
    for (index, rdn) in name
        .iter_rdn()
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .enumerate()
    {
        if index > 0 {
            out.push(',');
        }
        for (position, attribute) in rdn.iter().enumerate() {
            if position > 0 {
                out.push('+');
            }
            match oid2abbrev(attribute.attr_type(), registry) {
                Ok(abbrev) => out.push_str(abbrev),
                Err(_) => out.push_str(&attribute.attr_type().to_id_string()),
            }
            out.push('=');
            match attribute.as_str() {
                Ok(text) => escape_rfc2253(text.as_bytes(), &mut out),
                // Not a string type: its DER, as OpenSSL dumps it.
                Err(_) => {
                    out.push('#');
                    for byte in attribute.attr_value().as_bytes() {
                        let _ = write!(out, "{byte:02X}");
                    }
                }
            }
        }
    }
    out
}

fn escape_rfc2253(value: &[u8], out: &mut String) {
    let last = value.len().saturating_sub(1);
    for (index, &byte) in value.iter().enumerate() {
        let edge_space = byte == b' ' && (index == 0 || index == last);
        match byte {
            b',' | b'+' | b'"' | b'\\' | b'<' | b'>' | b';' => {
                out.push('\\');
                out.push(byte as char);
            }
            b'#' if index == 0 => out.push_str("\\#"),
            _ if edge_space => out.push_str("\\ "),
            0x20..=0x7e => out.push(byte as char),
            _ => {
                let _ = write!(out, "\\{byte:02X}");
            }
        }
    }
}

/// A URI or DNS name as an XFCC value: as is when plain (as Envoy writes it), quoted
/// with `"` and `\` escaped when it holds a character that would end the element or
/// the pair (`,;="` or whitespace), control bytes as `\XX`.
fn xfcc_value(value: &str) -> String {
    let plain = value
        .bytes()
        .all(|b| b.is_ascii_graphic() && !matches!(b, b',' | b';' | b'=' | b'"' | b'\\'));
    if plain {
        return value.to_owned();
    }
    let mut out = String::from("\"");
    for byte in value.bytes() {
        match byte {
            b'"' | b'\\' => {
                out.push('\\');
                out.push(byte as char);
            }
            0x20..=0x7e => out.push(byte as char),
            _ => {
                let _ = write!(out, "\\{byte:02X}");
            }
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_values_cannot_break_out_of_the_quotes() {
        let escaped = |text: &str| {
            let mut out = String::new();
            escape_rfc2253(text.as_bytes(), &mut out);
            out
        };
        assert_eq!(escaped("client"), "client");
        assert_eq!(escaped("a\\"), "a\\\\");
        assert_eq!(
            escaped("x\";URI=spiffe://admin"),
            "x\\\"\\;URI=spiffe://admin"
        );
        assert_eq!(escaped("a,O=admin+b"), "a\\,O=admin\\+b");
        assert_eq!(escaped(" #lead "), "\\ #lead\\ ");
        assert_eq!(escaped("#x"), "\\#x");
        assert_eq!(escaped("caf\u{e9}\n"), "caf\\C3\\A9\\0A");
        // However a value is built, no unescaped quote remains to end the Subject.
        for hostile in ["\\\"", "\"\\", "\\\\\"", "a\\\";b"] {
            let out = escaped(hostile);
            let mut chars = out.chars();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        chars.next();
                    }
                    '"' => panic!("unescaped quote in {out:?}"),
                    _ => {}
                }
            }
        }
    }

    #[test]
    fn san_values_are_quoted_only_when_they_must_be() {
        assert_eq!(
            xfcc_value("spiffe://cluster.local/ns/a/sa/b"),
            "spiffe://cluster.local/ns/a/sa/b"
        );
        assert_eq!(xfcc_value("client.example.com"), "client.example.com");
        assert_eq!(xfcc_value("a;Hash=1"), "\"a;Hash=1\"");
        assert_eq!(xfcc_value("a\"b\\c"), "\"a\\\"b\\\\c\"");
        assert_eq!(xfcc_value("a b,c"), "\"a b,c\"");
    }
}
