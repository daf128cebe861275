//! BackendTLSPolicy conformance cases: the suite's manifests (namespace, Services, the
//! `same-namespace` Gateway, HTTPRoutes and policies) against real TLS backends,
//! `openssl s_server` with one certificate for `abc.example.com`, `other.example.com` and
//! `spiffe://abc.example.com/test-identity`. Each backend refuses a ClientHello whose SNI
//! is not its name (`-servername_fatal`), as the suite's backend checks the SNI it got.
//! Status is read from `gatewayd validate`.

use gateway_tests::{
    Gateway, Process, TempDir, curl, free_port, status_upstream::StatusUpstream, write_atomically,
};

use super::{INFRA, class_and_ports, report, serve};
use crate::{
    tls::{Key, Pki},
    upstream_tls::s_server,
};

/// The suite's TLS backends and CA ConfigMaps.
struct TlsBackends {
    _pki_dir: TempDir,
    /// Accepts SNI `abc.example.com` only.
    abc: (Process, u16),
    /// Accepts SNI `other.example.com` only.
    other: (Process, u16),
    /// `tls-checks-ca-certificate` (the backends' CA) and `mismatch-ca-certificate`.
    config_maps: String,
}

impl TlsBackends {
    fn start() -> anyhow::Result<Self> {
        let pki_dir = TempDir::new("btls-pki")?;
        let pki = Pki::new(pki_dir.path(), "btls-ca")?;
        let mismatch = Pki::new(pki_dir.path(), "mismatch-ca")?;
        pki.issue(
            "backend",
            "tls-backend",
            "DNS:abc.example.com,DNS:other.example.com,URI:spiffe://abc.example.com/test-identity",
            Key::EcP256Pkcs8,
            false,
        )?;
        let cert = pki.path("backend.crt");
        let key = pki.path("backend.key");
        let only = |name: &str| {
            s_server(
                &pki,
                "backend",
                &[
                    "-servername",
                    name,
                    "-servername_fatal",
                    "-cert2",
                    &cert,
                    "-key2",
                    &key,
                ],
            )
        };
        let abc = only("abc.example.com")?;
        let other = only("other.example.com")?;
        let config_maps = config_map("tls-checks-ca-certificate", &pki.ca_pem()?)
            + &config_map("mismatch-ca-certificate", &mismatch.ca_pem()?);
        Ok(TlsBackends {
            _pki_dir: pki_dir,
            abc,
            other,
            config_maps,
        })
    }
}

fn config_map(name: &str, pem: &str) -> String {
    let indented: String = pem.lines().map(|l| format!("    {l}\n")).collect();
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}, namespace: {INFRA}}}\ndata:\n  ca.crt: |\n{indented}---\n"
    )
}

/// Service `name` with these (port name, port, backend port) entries, each one's
/// endpoint on 127.0.0.1 at its backend port.
fn tls_service(name: &str, ports: &[(&str, u16, u16)]) -> String {
    let service_ports: Vec<String> = ports
        .iter()
        .map(|(port_name, port, target)| {
            format!("{{name: {port_name}, port: {port}, targetPort: {target}}}")
        })
        .collect();
    let slice_ports: Vec<String> = ports
        .iter()
        .map(|(port_name, _, target)| format!("{{name: {port_name}, port: {target}}}"))
        .collect();
    format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: {INFRA}}}
spec:
  ports: [{}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: {name}-1, namespace: {INFRA}, labels: {{kubernetes.io/service-name: {name}}}}}
addressType: IPv4
ports: [{}]
endpoints:
- addresses: ["127.0.0.1"]
---
"#,
        service_ports.join(", "),
        slice_ports.join(", "),
    )
}

/// HTTPRoute `name` on `same-namespace` for `abc.example.com`: each (path, Service, port)
/// an Exact path rule.
fn route(name: &str, rules: &[(&str, &str, u16)]) -> String {
    let rules: String = rules
        .iter()
        .map(|(path, service, port)| {
            format!(
                "  - matches: [{{path: {{type: Exact, value: {path}}}}}]\n    backendRefs: [{{group: '', kind: Service, name: {service}, port: {port}}}]\n"
            )
        })
        .collect();
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: {INFRA}}}\nspec:\n  parentRefs: [{{name: same-namespace, namespace: {INFRA}}}]\n  hostnames: [abc.example.com]\n  rules:\n{rules}---\n"
    )
}

/// A path and a Service for each case `name` (`/backendtlspolicy-{name}` and
/// `backendtlspolicy-{name}-test`), and the HTTPRoute `route_name` from each path to its
/// Service's port 443.
fn routed_services<'a>(
    route_name: &str,
    names: impl Iterator<Item = &'a str>,
) -> (Vec<(String, String)>, String) {
    let services: Vec<(String, String)> = names
        .map(|name| {
            (
                format!("/backendtlspolicy-{name}"),
                format!("backendtlspolicy-{name}-test"),
            )
        })
        .collect();
    let rules: Vec<(&str, &str, u16)> = services
        .iter()
        .map(|(path, service)| (path.as_str(), service.as_str(), 443))
        .collect();
    let route = route(route_name, &rules);
    (services, route)
}

/// BackendTLSPolicy `name` with this target (flow YAML) and validation (flow YAML).
fn policy(name: &str, target: &str, validation: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: BackendTLSPolicy\nmetadata: {{name: {name}, namespace: {INFRA}, generation: 1}}\nspec:\n  targetRefs: [{target}]\n  validation: {validation}\n---\n"
    )
}

fn service_target(service: &str, section: Option<&str>) -> String {
    match section {
        Some(section) => {
            format!("{{group: '', kind: Service, name: {service}, sectionName: {section}}}")
        }
        None => format!("{{group: '', kind: Service, name: {service}}}"),
    }
}

/// Validation with the `tls-checks-ca-certificate` ConfigMap (or `ca`), `hostname` and
/// these subjectAltNames (flow YAML items).
fn validation(ca: &str, hostname: &str, sans: &[&str]) -> String {
    let sans = if sans.is_empty() {
        String::new()
    } else {
        format!(", subjectAltNames: [{}]", sans.join(", "))
    };
    format!(
        "{{caCertificateRefs: [{{group: '', kind: ConfigMap, name: {ca}}}], hostname: {hostname}{sans}}}"
    )
}

const SAME_NAMESPACE: &str = "same-namespace";

/// gatewayd with the suite's `same-namespace` Gateway on port 80 and `resources`.
fn start(dir: &TempDir, backends: &TlsBackends, resources: &str) -> anyhow::Result<(Gateway, u16)> {
    let port = free_port();
    Ok((serve(dir, &config(port, backends, resources))?, port))
}

/// `start`'s configuration, the Gateway listening on `port`.
fn config(port: u16, backends: &TlsBackends, resources: &str) -> String {
    class_and_ports(&[(80, port)])
        + &format!(
            r#"apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: {SAME_NAMESPACE}, namespace: {INFRA}}}
spec:
  gatewayClassName: gateway-conformance
  listeners:
  - {{name: http, port: 80, protocol: HTTP, allowedRoutes: {{namespaces: {{from: Same}}}}}}
---
"#
        )
        + &backends.config_maps
        + resources
}

fn get(port: u16, path: &str) -> anyhow::Result<gateway_tests::CurlResponse> {
    curl(
        None,
        &[
            "-H",
            "Host: abc.example.com",
            &format!("http://127.0.0.1:{port}{path}"),
        ],
    )
}

/// The report line of policy `name`'s ancestor `same-namespace`.
fn policy_line(report: &str, name: &str) -> String {
    let prefix = format!("BackendTLSPolicy {INFRA}/{name}: ancestor {INFRA}/{SAME_NAMESPACE}: ");
    report
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no status for {name}:\n{report}"))
        .to_owned()
}

fn handshake_errors(gateway: &Gateway, service: &str, reason: &str) -> anyhow::Result<f64> {
    Ok(gateway
        .metric(&format!(
            "gateway_upstream_tls_handshake_errors_total{{cluster=\"outbound|443||{service}.{INFRA}.svc.cluster.local\",reason=\"{reason}\"}}"
        ))?
        .unwrap_or(0.0))
}

/// BackendTLSPolicy: the request reaches the backend over TLS, verified against the
/// ConfigMap's CA for the policy's hostname (sent as SNI); a hostname the certificate
/// does not carry, or a CA that did not sign it, gets 503 with the TLS failure.
#[test]
fn backend_tls_policy() -> anyhow::Result<()> {
    let backends = TlsBackends::start()?;
    let abc = backends.abc.1;
    let dir = TempDir::new("btls-basic")?;
    let mut resources = route(
        "backendtlspolicy",
        &[
            ("/backendtlspolicy", "backendtlspolicy-test", 443),
            (
                "/backendtlspolicy-host-mismatch",
                "backendtlspolicy-host-mismatch-test",
                443,
            ),
            (
                "/backendtlspolicy-cert-mismatch",
                "backendtlspolicy-cert-mismatch-test",
                443,
            ),
            ("/plaintext", "plaintext-test", 443),
        ],
    );
    for (service, name, ca, hostname) in [
        (
            "backendtlspolicy-test",
            "normative-test",
            "tls-checks-ca-certificate",
            "abc.example.com",
        ),
        (
            "backendtlspolicy-host-mismatch-test",
            "host-mismatch",
            "tls-checks-ca-certificate",
            "mismatch.example.com",
        ),
        (
            "backendtlspolicy-cert-mismatch-test",
            "cert-mismatch",
            "mismatch-ca-certificate",
            "abc.example.com",
        ),
    ] {
        resources += &tls_service(service, &[("btls", 443, abc)]);
        resources += &policy(
            name,
            &service_target(service, Some("btls")),
            &validation(ca, hostname, &[]),
        );
    }
    // No policy: the gateway speaks plaintext HTTP to the TLS backend, which fails.
    resources += &tls_service("plaintext-test", &[("btls", 443, abc)]);
    let (gateway, port) = start(&dir, &backends, &resources)?;

    let ok = get(port, "/backendtlspolicy")?;
    assert_eq!(ok.status, 200, "{ok:?}\n{}", gateway.stderr());
    assert!(ok.body.contains("s_server"), "{}", ok.body);
    assert_ne!(get(port, "/plaintext")?.status, 200);

    let host = get(port, "/backendtlspolicy-host-mismatch")?;
    assert_eq!(host.status, 503, "{host:?}");
    // The backend refuses the SNI `mismatch.example.com`, or the name does not verify.
    assert!(host.body.contains("TLS_error"), "{}", host.body);

    let cert = get(port, "/backendtlspolicy-cert-mismatch")?;
    assert_eq!(cert.status, 503, "{cert:?}");
    assert!(
        cert.body.contains("CERTIFICATE_VERIFY_FAILED"),
        "{}",
        cert.body
    );
    assert!(
        handshake_errors(
            &gateway,
            "backendtlspolicy-cert-mismatch-test",
            "certificate_untrusted"
        )? >= 1.0
    );

    let report = report(dir.path())?;
    for name in ["normative-test", "host-mismatch", "cert-mismatch"] {
        let line = policy_line(&report, name);
        assert!(line.contains("Accepted=True Accepted"), "{line}");
        assert!(line.contains("ResolvedRefs=True ResolvedRefs"), "{line}");
    }
    Ok(())
}

/// BackendTLSPolicySANValidation: with subjectAltNames the certificate must carry one
/// of them (DNS name or URI), the hostname still the SNI.
#[test]
fn backend_tls_policy_san_validation() -> anyhow::Result<()> {
    let backends = TlsBackends::start()?;
    let abc = backends.abc.1;
    let dir = TempDir::new("btls-san")?;
    let cases: [(&str, &[&str], u16); 6] = [
        (
            "san-dns",
            &["{type: Hostname, hostname: abc.example.com}"],
            200,
        ),
        (
            "san-dns-mismatch",
            &["{type: Hostname, hostname: dce.example.com}"],
            503,
        ),
        (
            "san-uri",
            &["{type: URI, uri: 'spiffe://abc.example.com/test-identity'}"],
            200,
        ),
        (
            "san-uri-mismatch",
            &["{type: URI, uri: 'spiffe://def.example.com/test-identity'}"],
            503,
        ),
        (
            "multiple-sans",
            &[
                "{type: URI, uri: 'spiffe://abc.example.com/test-identity'}",
                "{type: Hostname, hostname: abc.example.com}",
            ],
            200,
        ),
        (
            "multiple-mismatch-sans",
            &[
                "{type: URI, uri: 'spiffe://def.example.com/test-identity'}",
                "{type: Hostname, hostname: def.example.com}",
            ],
            503,
        ),
    ];
    let (services, mut resources) =
        routed_services("backendtlspolicy-san-test", cases.iter().map(|c| c.0));
    for ((name, sans, _), (_, service)) in cases.iter().zip(&services) {
        resources += &tls_service(service, &[("btls", 443, abc)]);
        resources += &policy(
            name,
            &service_target(service, Some("btls")),
            &validation("tls-checks-ca-certificate", "abc.example.com", sans),
        );
    }
    let (gateway, port) = start(&dir, &backends, &resources)?;
    for ((name, _, want), (path, _)) in cases.iter().zip(&services) {
        let answer = get(port, path)?;
        assert_eq!(
            answer.status,
            *want,
            "{name}: {answer:?}\n{}",
            gateway.stderr()
        );
        if *want != 200 {
            assert!(
                answer.body.contains("CERTIFICATE_VERIFY_FAILED"),
                "{name}: {}",
                answer.body
            );
        }
    }
    let report = report(dir.path())?;
    for (name, _, _) in cases {
        assert!(
            policy_line(&report, name).contains("Accepted=True Accepted"),
            "{report}"
        );
    }
    Ok(())
}

/// Policies whose only CA certificate reference is `missing` or `malformed` (a
/// ConfigMap without `ca.crt`), or of an unsupported kind: their Services' requests get
/// a 5xx, never plaintext, and the status says why.
fn invalid_references(label: &str, cases: &[(&str, &str, &str)]) -> anyhow::Result<()> {
    let backends = TlsBackends::start()?;
    let abc = backends.abc.1;
    let dir = TempDir::new(label)?;
    let (services, mut resources) = routed_services(label, cases.iter().map(|c| c.0));
    resources += &format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: malformed-ca-certificate, namespace: {INFRA}}}\ndata: {{}}\n---\n"
    );
    for ((name, reference, _), (_, service)) in cases.iter().zip(&services) {
        resources += &tls_service(service, &[("https", 443, abc)]);
        resources += &policy(
            name,
            &service_target(service, None),
            &format!("{{caCertificateRefs: [{reference}], hostname: abc.example.com}}"),
        );
    }
    let (gateway, port) = start(&dir, &backends, &resources)?;
    for (path, _) in &services {
        let answer = get(port, path)?;
        assert!(
            [500, 502, 503].contains(&answer.status),
            "{path}: {answer:?}\n{}",
            gateway.stderr()
        );
    }
    let report = report(dir.path())?;
    for (name, _, resolved_reason) in cases {
        let line = policy_line(&report, name);
        assert!(
            line.contains("Accepted=False NoValidCACertificate"),
            "{line}"
        );
        assert!(
            line.contains(&format!("ResolvedRefs=False {resolved_reason}")),
            "{line}"
        );
    }
    Ok(())
}

/// BackendTLSPolicyInvalidCACertificateRef.
#[test]
fn backend_tls_policy_invalid_ca_certificate_ref() -> anyhow::Result<()> {
    invalid_references(
        "backendtlspolicy-invalid-ca-certificate-ref",
        &[
            (
                "nonexistent-ca-certificate-ref",
                "{group: '', kind: ConfigMap, name: nonexistent-ca-certificate}",
                "InvalidCACertificateRef",
            ),
            (
                "malformed-ca-certificate-ref",
                "{group: '', kind: ConfigMap, name: malformed-ca-certificate}",
                "InvalidCACertificateRef",
            ),
        ],
    )
}

/// BackendTLSPolicyInvalidKind.
#[test]
fn backend_tls_policy_invalid_kind() -> anyhow::Result<()> {
    invalid_references(
        "backendtlspolicy-invalid-kind-test",
        &[(
            "invalid-kind",
            "{group: invalid.io, kind: InvalidKind, name: invalid-kind}",
            "InvalidKind",
        )],
    )
}

/// BackendTLSPolicyConflictResolution: of two policies for the same Service (port), the
/// older (here, with no creation times, the first by name) applies and the other is
/// `Conflicted`; a policy for one port and one for the whole Service do not conflict, the
/// port's applying to its port. Each backend accepts only the SNI it expects, so a
/// request that succeeds went with the winning policy's hostname.
#[test]
fn backend_tls_policy_conflict_resolution() -> anyhow::Result<()> {
    let backends = TlsBackends::start()?;
    let (abc, other) = (backends.abc.1, backends.other.1);
    let dir = TempDir::new("btls-conflict")?;
    let mut resources = route(
        "backendtlspolicy-conflict-resolution",
        &[
            (
                "/backendtlspolicy-conflicted-without-section-name",
                "backendtlspolicy-conflicted-without-section-name-test",
                443,
            ),
            (
                "/backendtlspolicy-conflicted-with-section-name",
                "backendtlspolicy-conflicted-with-section-name-test",
                443,
            ),
            (
                "/backendtlspolicy-not-conflicted-with-section-name",
                "backendtlspolicy-not-conflicted-test",
                443,
            ),
            (
                "/backendtlspolicy-not-conflicted-without-section-name",
                "backendtlspolicy-not-conflicted-test",
                8443,
            ),
        ],
    );
    resources += &tls_service(
        "backendtlspolicy-conflicted-without-section-name-test",
        &[("https", 443, other)],
    );
    resources += &tls_service(
        "backendtlspolicy-conflicted-with-section-name-test",
        &[("https-1", 443, other), ("https-2", 8443, abc)],
    );
    resources += &tls_service(
        "backendtlspolicy-not-conflicted-test",
        &[("https-1", 443, other), ("https-2", 8443, abc)],
    );
    let ca = "tls-checks-ca-certificate";
    for (name, service, section, hostname) in [
        (
            "conflicted-without-section-name-1",
            "backendtlspolicy-conflicted-without-section-name-test",
            None,
            "other.example.com",
        ),
        (
            "conflicted-without-section-name-2",
            "backendtlspolicy-conflicted-without-section-name-test",
            None,
            "abc.example.com",
        ),
        (
            "conflicted-with-section-name-1",
            "backendtlspolicy-conflicted-with-section-name-test",
            Some("https-1"),
            "other.example.com",
        ),
        (
            "conflicted-with-section-name-2",
            "backendtlspolicy-conflicted-with-section-name-test",
            Some("https-1"),
            "abc.example.com",
        ),
        (
            "not-conflicted-with-section-name",
            "backendtlspolicy-not-conflicted-test",
            Some("https-1"),
            "other.example.com",
        ),
        (
            "not-conflicted-without-section-name",
            "backendtlspolicy-not-conflicted-test",
            None,
            "abc.example.com",
        ),
    ] {
        resources += &policy(
            name,
            &service_target(service, section),
            &validation(ca, hostname, &[]),
        );
    }
    let (gateway, port) = start(&dir, &backends, &resources)?;
    for path in [
        "/backendtlspolicy-conflicted-without-section-name",
        "/backendtlspolicy-conflicted-with-section-name",
        "/backendtlspolicy-not-conflicted-with-section-name",
        "/backendtlspolicy-not-conflicted-without-section-name",
    ] {
        let answer = get(port, path)?;
        assert_eq!(
            answer.status,
            200,
            "{path}: {answer:?}\n{}",
            gateway.stderr()
        );
    }
    let report = report(dir.path())?;
    for name in [
        "conflicted-without-section-name-1",
        "conflicted-with-section-name-1",
        "not-conflicted-with-section-name",
        "not-conflicted-without-section-name",
    ] {
        assert!(
            policy_line(&report, name).contains("Accepted=True Accepted"),
            "{name}: {report}"
        );
    }
    for name in [
        "conflicted-without-section-name-2",
        "conflicted-with-section-name-2",
    ] {
        assert!(
            policy_line(&report, name).contains("Accepted=False Conflicted"),
            "{name}: {report}"
        );
    }
    Ok(())
}

/// A BackendTLSPolicy that does not parse fails closed: its Service's connections are
/// refused (503 UF), the plaintext backend behind it never sees a request; fixed, TLS
/// works again.
#[test]
fn a_backend_tls_policy_that_does_not_parse_fails_closed() -> anyhow::Result<()> {
    let backends = TlsBackends::start()?;
    let plain = StatusUpstream::start("plaintext", 200)?;
    let dir = TempDir::new("btls-broken")?;
    let resources = |endpoint: u16, hostname: &str| {
        route("broken", &[("/broken", "broken-test", 443)])
            + &tls_service("broken-test", &[("btls", 443, endpoint)])
            + &policy(
                "broken",
                &service_target("broken-test", None),
                &validation("tls-checks-ca-certificate", hostname, &[]),
            )
    };
    // `hostname` is a string: a list does not parse.
    let (gateway, port) = start(
        &dir,
        &backends,
        &resources(plain.addr.port(), "[abc.example.com]"),
    )?;
    let refused = get(port, "/broken")?;
    assert_eq!(refused.status, 503, "{refused:?}\n{}", gateway.stderr());
    assert_eq!(plain.requests(), 0, "plaintext reached the backend");
    let log = gateway.access_log();
    let line = log
        .lines()
        .find(|l| l.contains("GET /broken"))
        .unwrap_or_else(|| panic!("no access log line for /broken:\n{log}"));
    assert!(line.contains(" 503 UF"), "{line}");
    let stderr = gateway.stderr();
    assert!(
        stderr.contains("BackendTLSPolicy gateway-conformance-infra/broken")
            && stderr.contains("spec.validation.hostname")
            && stderr.contains("fails closed"),
        "{stderr}"
    );
    let status = policy_line(&report(dir.path())?, "broken");
    assert!(
        status.contains("Accepted=False Invalid") && status.contains("does not parse"),
        "{status}"
    );

    // Fixed, the Service's endpoint now the TLS backend: TLS again.
    let file = dir.path().join("config.yaml");
    let fixed = config(
        port,
        &backends,
        &resources(backends.abc.1, "abc.example.com"),
    );
    gateway.reload_after(|| write_atomically(&file, &fixed))?;
    let ok = get(port, "/broken")?;
    assert_eq!(ok.status, 200, "{ok:?}\n{}", gateway.stderr());
    assert!(ok.body.contains("s_server"), "{}", ok.body);
    assert_eq!(plain.requests(), 0);
    Ok(())
}
