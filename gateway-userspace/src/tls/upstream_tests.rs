use std::sync::Arc;

use rustls::{RootCertStore, client::danger::ServerCertVerifier};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use super::{NameCheck, Names, no_server_name};
use crate::tls::{certs, server_config};

/// A certificate naming `leaf.example.com` and `backend.example.internal`, signed by the
/// CA `check` trusts, judged for a connection opened for `server_name`.
fn verify(names: Names, server_name: &ServerName<'_>) -> Result<(), rustls::Error> {
    let pem = |file: &str| {
        let path = format!("{}/src/tls/testdata/{file}", env!("CARGO_MANIFEST_DIR"));
        let pem = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        certs::certificates(&pem).expect("certificates")
    };
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(pem("upstream-ca.crt"));
    let check = NameCheck {
        roots: Arc::new(roots),
        names,
        algorithms: server_config::provider().signature_verification_algorithms,
    };
    let leaf: CertificateDer<'static> = pem("upstream-leaf.crt").remove(0);
    check
        .verify_server_cert(&leaf, &[], server_name, &[], UnixTime::now())
        .map(|_| ())
}

fn name(host: &'static str) -> ServerName<'static> {
    ServerName::try_from(host).expect("a server name")
}

fn checked(server_name: bool, any_of: &[&str]) -> Names {
    Names::Checked {
        server_name,
        any_of: any_of.iter().map(|s| (*s).to_owned()).collect(),
    }
}

/// `auto_san_validation`: the name the connection was opened for; a connection with no
/// name (a TCP route without `sni`) has the chain checked only, as Envoy's TCP proxy.
#[test]
fn the_server_name_is_checked_unless_the_connection_has_none() {
    assert!(verify(checked(true, &[]), &name("leaf.example.com")).is_ok());
    assert!(verify(checked(true, &[]), &name("other.example.com")).is_err());
    assert!(verify(checked(true, &[]), &no_server_name()).is_ok());
    // The chain is still checked: an address that names nothing is no way around it.
    assert!(verify(checked(false, &[]), &name("other.example.com")).is_ok());
}

/// `subjectAltNames` (the rule's or the ServiceEntry's) with `auto_san_validation`: the
/// certificate must carry one of them and the server name both (Envoy checks its SAN
/// list and its matchers each); with no server name, the names alone.
#[test]
fn subject_alt_names_and_the_server_name_are_each_checked() {
    let entry = ["backend.example.internal"];
    let elsewhere = ["elsewhere.example.internal"];
    assert!(verify(checked(true, &entry), &name("leaf.example.com")).is_ok());
    assert!(verify(checked(true, &elsewhere), &name("leaf.example.com")).is_err());
    assert!(verify(checked(true, &entry), &name("other.example.com")).is_err());
    assert!(verify(checked(true, &entry), &no_server_name()).is_ok());
    assert!(verify(checked(true, &elsewhere), &no_server_name()).is_err());
    assert!(verify(checked(false, &elsewhere), &name("leaf.example.com")).is_err());
    assert!(verify(Names::Nothing, &name("other.example.com")).is_ok());
}
