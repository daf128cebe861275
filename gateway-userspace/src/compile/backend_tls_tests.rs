use std::path::Path;

use super::super::{Identity, compile};
use crate::{config, snapshot::Snapshot};

const CA: &str = include_str!("../tls/testdata/unit.crt");

/// A Gateway with an HTTP listener, a route to `svc` ports 443 and 8443 and to `plain`
/// port 80, `svc` with ports `https-1` (443) and `https-2` (8443), the CA ConfigMap
/// `ca` and an empty one, `empty`; then `policies`.
fn compile_with(policies: &str) -> (Snapshot, String) {
    let (resources, diagnostics) = config::load_text(Path::new("btls.yaml"), &manifest(policies));
    assert!(!diagnostics.has_errors(), "{diagnostics}");
    let (snapshot, more) = compile(&resources, &Identity::default());
    (snapshot, more.to_string())
}

/// As a reload compiles `compile_with`'s manifest: objects with errors dropped (and
/// their stand-ins kept); what was said, load diagnostics included.
fn compile_isolating_with(policies: &str) -> (Snapshot, String) {
    let (resources, diagnostics) = config::load_text(Path::new("btls.yaml"), &manifest(policies));
    let said = diagnostics.to_string();
    let isolated = super::super::isolate::compile_isolating(
        &resources,
        diagnostics,
        &Identity::default(),
        &crate::tls::TlsState::default(),
        None,
    )
    .expect("served");
    (
        isolated.snapshot,
        format!("{said}\n{}", isolated.diagnostics),
    )
}

fn manifest(policies: &str) -> String {
    let indented: String = CA.lines().map(|l| format!("    {l}\n")).collect();
    format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: gw}}
spec:
  gatewayClassName: istio
  listeners: [{{name: http, port: 80, protocol: HTTP}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: r}}
spec:
  parentRefs: [{{name: gw}}]
  rules:
  - matches: [{{path: {{type: Exact, value: /a}}}}]
    backendRefs: [{{name: svc, port: 443}}]
  - matches: [{{path: {{type: Exact, value: /b}}}}]
    backendRefs: [{{name: svc, port: 8443}}]
  - matches: [{{path: {{type: Exact, value: /c}}}}]
    backendRefs: [{{name: plain, port: 80}}]
---
apiVersion: v1
kind: Service
metadata: {{name: svc}}
spec: {{ports: [{{name: https-1, port: 443}}, {{name: https-2, port: 8443}}]}}
---
apiVersion: v1
kind: Service
metadata: {{name: plain}}
spec: {{ports: [{{name: http, port: 80}}]}}
---
apiVersion: v1
kind: ConfigMap
metadata: {{name: ca}}
data:
  ca.crt: |
{indented}---
apiVersion: v1
kind: ConfigMap
metadata: {{name: empty}}
data: {{}}
---
{policies}"#
    )
}

fn policy(name: &str, created: &str, target: &str, validation: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: BackendTLSPolicy
metadata: {{name: {name}, creationTimestamp: '{created}'}}
spec:
  targetRefs: [{target}]
  validation: {validation}
---
"
    )
}

const SVC: &str = "{group: '', kind: Service, name: svc}";
const GOOD: &str =
    "{caCertificateRefs: [{group: '', kind: ConfigMap, name: ca}], hostname: abc.example.com}";

/// (sni, origin, refused?) of the cluster of `svc` port `port`; None: plaintext.
fn tls_of(snapshot: &Snapshot, port: u16) -> Option<(String, String, bool)> {
    let cluster = snapshot
        .clusters
        .iter()
        .find(|c| c.name == format!("outbound|{port}||svc.default.svc.cluster.local"))
        .expect("the cluster");
    cluster.tls.as_ref().map(|t| {
        (
            t.sni.to_str().into_owned(),
            t.origin.clone(),
            t.refused.is_some(),
        )
    })
}

#[test]
fn a_policy_originates_tls_with_its_hostname_as_sni() {
    let (snapshot, said) = compile_with(&policy("p", "2026-01-01T00:00:00Z", SVC, GOOD));
    let expected = Some((
        "abc.example.com".to_owned(),
        "BackendTLSPolicy default/p".to_owned(),
        false,
    ));
    assert_eq!(tls_of(&snapshot, 443), expected, "{said}");
    assert_eq!(tls_of(&snapshot, 8443), expected);
    // A Service no policy targets stays plaintext.
    let plain = snapshot
        .clusters
        .iter()
        .find(|c| c.service_name == "plain")
        .expect("plain");
    assert!(plain.tls.is_none());
}

#[test]
fn a_section_name_targets_one_port_and_beats_a_whole_service_policy() {
    let section = "{group: '', kind: Service, name: svc, sectionName: https-1}";
    let (snapshot, _) = compile_with(&format!(
        "{}{}",
        policy("whole", "2026-01-01T00:00:00Z", SVC, GOOD),
        policy(
            "port",
            "2026-02-01T00:00:00Z",
            section,
            "{caCertificateRefs: [{group: '', kind: ConfigMap, name: ca}], hostname: other.example.com}"
        ),
    ));
    let origin = |port| tls_of(&snapshot, port).map(|(sni, origin, _)| format!("{sni} {origin}"));
    assert_eq!(
        origin(443).as_deref(),
        Some("other.example.com BackendTLSPolicy default/port")
    );
    assert_eq!(
        origin(8443).as_deref(),
        Some("abc.example.com BackendTLSPolicy default/whole")
    );
}

#[test]
fn the_older_policy_wins_a_conflict_then_the_first_by_name() {
    let other = "{caCertificateRefs: [{group: '', kind: ConfigMap, name: ca}], hostname: other.example.com}";
    let (snapshot, said) = compile_with(&format!(
        "{}{}",
        policy("a-young", "2026-03-01T00:00:00Z", SVC, GOOD),
        policy("z-old", "2026-01-01T00:00:00Z", SVC, other),
    ));
    assert_eq!(
        tls_of(&snapshot, 443).map(|t| t.0).as_deref(),
        Some("other.example.com")
    );
    assert!(
        said.contains("BackendTLSPolicy default/z-old targets the same Service"),
        "{said}"
    );
    let (snapshot, _) = compile_with(&format!(
        "{}{}",
        policy("b", "2026-01-01T00:00:00Z", SVC, other),
        policy("a", "2026-01-01T00:00:00Z", SVC, GOOD),
    ));
    assert_eq!(
        tls_of(&snapshot, 443).map(|t| t.0).as_deref(),
        Some("abc.example.com")
    );
}

#[test]
fn a_policy_without_a_usable_ca_refuses_connections_rather_than_plaintext() {
    for (validation, said) in [
        (
            "{caCertificateRefs: [{group: '', kind: ConfigMap, name: missing}], hostname: abc.example.com}",
            "ConfigMap default/missing not found (InvalidCACertificateRef)",
        ),
        (
            "{caCertificateRefs: [{group: '', kind: ConfigMap, name: empty}], hostname: abc.example.com}",
            "ConfigMap default/empty has no ca.crt (InvalidCACertificateRef)",
        ),
        (
            "{caCertificateRefs: [{group: invalid.io, kind: InvalidKind, name: x}], hostname: abc.example.com}",
            "expected a core ConfigMap (InvalidKind)",
        ),
        (
            "{wellKnownCACertificates: example.com/mine, hostname: abc.example.com}",
            "is not supported (only System)",
        ),
        // An address would send no SNI (Gateway API's PreciseHostname is a DNS name).
        (
            "{wellKnownCACertificates: System, hostname: 192.0.2.1}",
            "validation.hostname \"192.0.2.1\" is not a DNS name",
        ),
    ] {
        let (snapshot, diagnostics) =
            compile_with(&policy("p", "2026-01-01T00:00:00Z", SVC, validation));
        assert_eq!(
            tls_of(&snapshot, 443).map(|t| t.2),
            Some(true),
            "{validation}"
        );
        assert!(diagnostics.contains(said), "{validation}: {diagnostics}");
    }
}

#[test]
fn system_roots_and_subject_alt_names_are_accepted() {
    let (snapshot, said) = compile_with(&policy(
        "p",
        "2026-01-01T00:00:00Z",
        SVC,
        "{wellKnownCACertificates: System, hostname: abc.example.com, subjectAltNames: [{type: URI, uri: 'spiffe://abc.example.com/x'}, {type: Hostname, hostname: abc.example.com}]}",
    ));
    // An empty system store (a minimal container) refuses; either way never plaintext.
    let tls = tls_of(&snapshot, 443).expect("TLS");
    assert_eq!(tls.0, "abc.example.com", "{said}");
}

#[test]
fn v1alpha3_is_read_and_other_kinds_are_not_targets() {
    let text = policy(
        "p",
        "2026-01-01T00:00:00Z",
        "{group: '', kind: ConfigMap, name: svc}",
        GOOD,
    )
    .replace(
        "gateway.networking.k8s.io/v1",
        "gateway.networking.k8s.io/v1alpha3",
    );
    let (snapshot, said) = compile_with(&text);
    assert_eq!(tls_of(&snapshot, 443), None, "{said}");
}

/// (Accepted, ResolvedRefs) of policy `name` at ancestor `default/gw`, as
/// `status=reason`, with the observedGeneration of both.
fn status_of(snapshot: &Snapshot, name: &str) -> Option<(String, String, Vec<Option<i64>>)> {
    let policy = snapshot.report.policy("default", name)?;
    let ancestor = policy.ancestors.iter().find(|a| {
        a.parent_ref.name == "gw"
            && a.parent_ref.namespace == "default"
            && a.parent_ref.kind == "Gateway"
    })?;
    let shown = |kind: &str| {
        ancestor
            .conditions
            .iter()
            .find(|c| c.kind == kind)
            .map(|c| format!("{}={}", c.is_true(), c.reason))
            .unwrap_or_default()
    };
    Some((
        shown("Accepted"),
        shown("ResolvedRefs"),
        ancestor
            .conditions
            .iter()
            .map(|c| c.observed_generation)
            .collect(),
    ))
}

#[test]
fn status_names_the_gateway_as_ancestor_with_the_specs_reasons() {
    let with_generation = |text: String, generation: i64| {
        text.replace(
            "creationTimestamp:",
            &format!("generation: {generation}, creationTimestamp:"),
        )
    };
    let (snapshot, _) = compile_with(&format!(
        "{}{}{}{}",
        with_generation(policy("good", "2026-01-01T00:00:00Z", SVC, GOOD), 4),
        policy("loser", "2026-02-01T00:00:00Z", SVC, GOOD),
        policy(
            "missing",
            "2026-01-01T00:00:00Z",
            "{group: '', kind: Service, name: plain}",
            "{caCertificateRefs: [{group: '', kind: ConfigMap, name: missing}], hostname: abc.example.com}"
        ),
        policy(
            "unrouted",
            "2026-01-01T00:00:00Z",
            "{group: '', kind: Service, name: nobody}",
            GOOD
        ),
    ));
    assert_eq!(
        status_of(&snapshot, "good"),
        Some((
            "true=Accepted".into(),
            "true=ResolvedRefs".into(),
            vec![Some(4), Some(4)]
        )),
        "{}",
        snapshot.report
    );
    assert_eq!(
        status_of(&snapshot, "loser").map(|s| s.0),
        Some("false=Conflicted".into())
    );
    assert_eq!(
        status_of(&snapshot, "missing").map(|s| (s.0, s.1)),
        Some((
            "false=NoValidCACertificate".into(),
            "false=InvalidCACertificateRef".into()
        ))
    );
    // No route of ours reaches its Service: no ancestor, no status.
    assert!(snapshot.report.policy("default", "unrouted").is_none());
}

#[test]
fn an_invalid_kind_is_reported_as_such() {
    let (snapshot, _) = compile_with(&policy(
        "p",
        "2026-01-01T00:00:00Z",
        SVC,
        "{caCertificateRefs: [{group: invalid.io, kind: InvalidKind, name: x}], hostname: abc.example.com}",
    ));
    assert_eq!(
        status_of(&snapshot, "p").map(|s| (s.0, s.1)),
        Some((
            "false=NoValidCACertificate".into(),
            "false=InvalidKind".into()
        ))
    );
}

#[test]
fn every_route_kind_makes_its_gateway_an_ancestor() {
    let gateway = |name: &str, listener: &str| {
        format!(
            "apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: {name}}}
spec:
  gatewayClassName: istio
  listeners: [{listener}]
---
"
        )
    };
    let route = |kind: &str, version: &str, name: &str, parent: &str, backend: &str| {
        format!(
            "apiVersion: gateway.networking.k8s.io/{version}
kind: {kind}
metadata: {{name: {name}}}
spec:
  parentRefs: [{{name: {parent}}}]
  rules: [{{backendRefs: [{{name: {backend}, port: 443}}]}}]
---
"
        )
    };
    let (snapshot, diagnostics) = compile_with(&format!(
        "{}{}{}{}{}{}{}{}apiVersion: v1
kind: Service
metadata: {{name: tsvc}}
spec: {{ports: [{{name: https, port: 443}}]}}
---
{}",
        gateway("grpc-gw", "{name: h, port: 81, protocol: HTTP}"),
        gateway(
            "tls-gw",
            "{name: t, port: 444, protocol: TLS, hostname: t.example.com, tls: {mode: Passthrough}}"
        ),
        gateway("tcp-gw", "{name: p, port: 9000, protocol: TCP}"),
        gateway("elsewhere-gw", "{name: e, port: 82, protocol: HTTP}"),
        route("GRPCRoute", "v1", "g", "grpc-gw", "tsvc"),
        route("TLSRoute", "v1alpha2", "t", "tls-gw", "tsvc"),
        route("TCPRoute", "v1alpha2", "p", "tcp-gw", "tsvc"),
        route("HTTPRoute", "v1", "e", "elsewhere-gw", "plain"),
        policy(
            "p",
            "2026-01-01T00:00:00Z",
            "{group: '', kind: Service, name: tsvc}",
            GOOD
        ),
    ));
    let policy = snapshot.report.policy("default", "p").expect(&diagnostics);
    let ancestors: Vec<&str> = policy
        .ancestors
        .iter()
        .map(|a| a.parent_ref.name.as_str())
        .collect();
    assert_eq!(ancestors, ["grpc-gw", "tcp-gw", "tls-gw"], "{diagnostics}");
}

/// A policy that does not parse fails closed on the targets it names: their clusters
/// refuse (503 UF), never plaintext; the others are untouched. Its status says why.
#[test]
fn a_policy_that_does_not_parse_fails_closed_on_its_targets() {
    let section = "{group: '', kind: Service, name: svc, sectionName: https-1}";
    // `hostname` is a string: a list does not parse.
    let broken = "{caCertificateRefs: [{group: '', kind: ConfigMap, name: ca}], hostname: [abc.example.com]}";
    for (target, validation, refused_443, refused_8443) in [
        (SVC, broken, Some(true), Some(true)),
        (section, broken, Some(true), None),
        // A broken target entry is left out; the readable one still fails closed.
        (
            "{group: '', kind: Service, name: svc, sectionName: https-2}, {kind: [Service]}",
            broken,
            None,
            Some(true),
        ),
        // Nothing says which Service it targets: dropped, as any broken object.
        (
            "{group: '', kind: Service, name: [svc]}",
            broken,
            None,
            None,
        ),
        // Fixed: TLS again.
        (SVC, GOOD, Some(false), Some(false)),
    ] {
        let (snapshot, said) =
            compile_isolating_with(&policy("p", "2026-01-01T00:00:00Z", target, validation));
        let refused = |port| tls_of(&snapshot, port).map(|t| t.2);
        assert_eq!(
            (refused(443), refused(8443)),
            (refused_443, refused_8443),
            "{target}: {said}"
        );
        if refused_443.or(refused_8443) == Some(true) {
            assert!(
                said.contains("BackendTLSPolicy default/p: spec.")
                    && said.contains("this BackendTLSPolicy does not parse (spec.")
                    && said.contains("fails closed until it is fixed"),
                "{said}"
            );
            let policy = snapshot.report.policy("default", "p").expect("a status");
            let accepted = &policy.ancestors[0].conditions;
            assert_eq!(accepted.len(), 1, "no ResolvedRefs: {accepted:?}");
            assert_eq!(
                (accepted[0].is_true(), accepted[0].reason),
                (false, "Invalid")
            );
            assert!(
                accepted[0].message.contains("does not parse (spec.")
                    && accepted[0].message.contains(": invalid type"),
                "{}",
                accepted[0].message
            );
        }
    }
}
