//! What TLS compiles carry over: session scopes and the last good credentials.

use std::{path::Path, sync::Arc};

use rustls::ServerConfig;

use super::super::{Identity, compile_with};
use crate::{
    config::{self, Diagnostics},
    snapshot::{Snapshot, TlsMode, TlsServer, Transport},
    tls::TlsState,
};

/// A long-lived self-signed certificate for unit.example.com, its key, and an unrelated
/// key, made with the `openssl` CLI for these tests only.
const CERT: &str = include_str!("../tls/testdata/unit.crt");
const KEY: &str = include_str!("../tls/testdata/unit.key");
const OTHER_KEY: &str = include_str!("../tls/testdata/other.key");

fn secret(name: &str, cert: &str, key: &str, ca: Option<&str>) -> String {
    let block = |text: &str| -> String { text.lines().map(|l| format!("    {l}\n")).collect() };
    let ca = ca.map_or_else(String::new, |ca| format!("  ca.crt: |\n{}", block(ca)));
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: istio-system}}\nstringData:\n  tls.crt: |\n{}  tls.key: |\n{}{ca}---\n",
        block(cert),
        block(key)
    )
}

/// A SIMPLE server on 443 and 444 and a MUTUAL one on 8443, all for unit.example.com.
const GATEWAY: &str = "\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: web, namespace: default}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 443, name: a, protocol: HTTPS}
    hosts: [unit.example.com]
    tls: {mode: SIMPLE, credentialName: simple}
  - port: {number: 444, name: b, protocol: HTTPS}
    hosts: [unit.example.com]
    tls: {mode: SIMPLE, credentialName: simple}
  - port: {number: 8443, name: c, protocol: HTTPS}
    hosts: [unit.example.com]
    tls: {mode: MUTUAL, credentialName: mutual}
";

fn compiled(yaml: &str, tls: &TlsState) -> (Snapshot, Diagnostics) {
    let (resources, mut diagnostics) = config::load_text(Path::new("gw.yaml"), yaml);
    let (snapshot, more) = compile_with(&resources, &Identity::default(), tls);
    diagnostics.extend(more);
    (snapshot, diagnostics)
}

fn server(snapshot: &Snapshot, port: u16) -> Option<&TlsServer> {
    let listener = snapshot.listeners.iter().find(|l| l.port == port)?;
    match listener.transport.as_deref()? {
        Transport::Tls(tls) => tls.servers.first(),
        Transport::Tcp(_) => None,
    }
}

fn config(snapshot: &Snapshot, port: u16) -> Option<Arc<ServerConfig>> {
    match &server(snapshot, port)?.mode {
        TlsMode::Terminate { config, .. } => Some(config.clone()),
        TlsMode::Passthrough { .. } => None,
    }
}

#[test]
fn servers_share_resumption_only_within_one_client_auth_policy() {
    let tls = TlsState::default();
    let yaml = format!(
        "{GATEWAY}---\n{}{}",
        secret("simple", CERT, KEY, None),
        secret("mutual", CERT, KEY, Some(CERT))
    );
    let (snapshot, diagnostics) = compiled(&yaml, &tls);
    assert!(!diagnostics.has_errors(), "{diagnostics}");
    let (a, b, mutual) = (
        config(&snapshot, 443).expect("443"),
        config(&snapshot, 444).expect("444"),
        config(&snapshot, 8443).expect("8443"),
    );
    assert!(Arc::ptr_eq(&a.ticketer, &b.ticketer));
    assert!(Arc::ptr_eq(&a.session_storage, &b.session_storage));
    assert!(!Arc::ptr_eq(&a.ticketer, &mutual.ticketer));
    assert!(!Arc::ptr_eq(&a.session_storage, &mutual.session_storage));
    // A reload with the same policy keeps the scope (sessions survive reloads)...
    let (again, _) = compiled(&yaml, &tls);
    let mutual_again = config(&again, 8443).expect("8443");
    assert!(Arc::ptr_eq(&mutual.ticketer, &mutual_again.ticketer));
    // ...and one that changes the SAN rule moves to a new one.
    let other_sans = yaml.replace(
        "{mode: MUTUAL, credentialName: mutual}",
        "{mode: MUTUAL, credentialName: mutual, subjectAltNames: [spiffe://x]}",
    );
    assert_ne!(other_sans, yaml);
    let (changed, diagnostics) = compiled(&other_sans, &tls);
    assert!(!diagnostics.has_errors(), "{diagnostics}");
    let mutual_changed = config(&changed, 8443).expect("8443");
    assert!(!Arc::ptr_eq(&mutual.ticketer, &mutual_changed.ticketer));
}

#[test]
fn a_broken_update_keeps_the_last_applied_credential() {
    let tls = TlsState::default();
    let good = format!("{GATEWAY}---\n{}", secret("simple", CERT, KEY, None));
    let broken = format!("{GATEWAY}---\n{}", secret("simple", CERT, OTHER_KEY, None));

    // Never applied: a broken Secret leaves its servers out, loudly.
    let (snapshot, diagnostics) = compiled(&broken, &tls);
    assert!(server(&snapshot, 443).is_none());
    let text = diagnostics.to_string();
    assert!(
        text.contains("Secret istio-system/simple: the private key does not belong to the certificate; no valid version of it has ever loaded, so this server is NOT served"),
        "{text}"
    );
    let report = tls.credentials.staged_report();
    assert!(report.failing().contains(&"Secret istio-system/simple"));
    assert!(report.problems.iter().all(|p| p.kept.is_none()));

    // Applied once, then broken: the last good version serves, marked stale.
    let (_, _) = compiled(&good, &tls);
    let report = tls.credentials.commit();
    assert!(
        report
            .loaded
            .contains(&"Secret istio-system/simple".to_owned())
    );
    let (snapshot, diagnostics) = compiled(&broken, &tls);
    let served = server(&snapshot, 443).expect("still served");
    assert_eq!(served.credentials.len(), 1);
    assert!(
        served.credentials[0]
            .certificate
            .contains("CN=unit.example.com")
    );
    assert_eq!(
        served.credentials[0].stale.as_deref(),
        Some("the private key does not belong to the certificate")
    );
    let text = diagnostics.to_string();
    assert!(
        text.contains("this version is NOT applied: the server keeps serving the last good one (subject CN=unit.example.com"),
        "{text}"
    );
    assert!(!diagnostics.has_errors(), "{text}");
    // The broken compile stays broken in a later compile (it was never applied, and the
    // good version is what is remembered); and the config dump tells.
    tls.credentials.commit();
    let (snapshot, _) = compiled(&broken, &tls);
    assert!(server(&snapshot, 443).is_some());
    let dump = serde_json::to_string(&snapshot).unwrap_or_default();
    assert!(dump.contains("\"stale\":\"the private key"), "{dump}");
    assert!(!dump.contains(KEY.lines().nth(1).unwrap_or("-")), "{dump}");
}
