use super::*;

fn spec(yaml: &str) -> DestinationRuleSpec {
    serde_yaml::from_str(yaml).expect("a DestinationRule spec")
}

fn chosen(spec: &DestinationRuleSpec, port: u32, subset: Option<&str>) -> Option<String> {
    selected_tls(spec, Some(port), subset)
        .map(|(tls, field)| format!("{:?} {field}", tls.sni.as_deref().unwrap_or("-")))
}

#[test]
fn subset_port_beats_subset_beats_port_beats_rule() {
    let spec = spec(
        r#"
host: web
trafficPolicy:
  tls: {mode: SIMPLE, sni: rule}
  portLevelSettings:
  - port: {number: 443}
    tls: {mode: SIMPLE, sni: rule-port}
  - port: {number: 8080}
    loadBalancer: {simple: RANDOM}
subsets:
- name: v1
  labels: {version: v1}
  trafficPolicy:
    tls: {mode: MUTUAL, sni: subset}
    portLevelSettings:
    - port: {number: 9443}
      tls: {mode: SIMPLE, sni: subset-port}
- name: v2
  labels: {version: v2}
- name: v3
  labels: {version: v3}
  trafficPolicy:
    portLevelSettings:
    - port: {number: 443}
      loadBalancer: {simple: RANDOM}
"#,
    );
    let cases = [
        (80, None, Some(r#""rule" spec.trafficPolicy.tls"#)),
        (
            443,
            None,
            Some(r#""rule-port" spec.trafficPolicy.portLevelSettings[0].tls"#),
        ),
        // A matching port entry without tls: no TLS (no inheritance).
        (8080, None, None),
        (
            80,
            Some("v1"),
            Some(r#""subset" spec.subsets[0].trafficPolicy.tls"#),
        ),
        (
            443,
            Some("v1"),
            Some(r#""subset" spec.subsets[0].trafficPolicy.tls"#),
        ),
        (
            9443,
            Some("v1"),
            Some(r#""subset-port" spec.subsets[0].trafficPolicy.portLevelSettings[0].tls"#),
        ),
        // A subset without a policy keeps the rule's (port-level included).
        (
            443,
            Some("v2"),
            Some(r#""rule-port" spec.trafficPolicy.portLevelSettings[0].tls"#),
        ),
        (80, Some("v2"), Some(r#""rule" spec.trafficPolicy.tls"#)),
        // The subset's own port entry without tls turns TLS off for that port.
        (443, Some("v3"), None),
        (80, Some("v3"), Some(r#""rule" spec.trafficPolicy.tls"#)),
        (
            80,
            Some("unknown"),
            Some(r#""rule" spec.trafficPolicy.tls"#),
        ),
    ];
    for (port, subset, want) in cases {
        assert_eq!(
            chosen(&spec, port, subset).as_deref(),
            want,
            "port {port} subset {subset:?}"
        );
    }
}

#[test]
fn clusters_carry_their_tls_and_what_cannot_be_honoured_refuses_connections() {
    let yaml = r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: ["*"]}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api, namespace: istio-system}
spec:
  hosts: [api.example.com]
  ports: [{number: 443, name: https, protocol: HTTPS}]
  resolution: STATIC
  endpoints:
  - {address: 192.0.2.1, labels: {version: v1}}
  - {address: 192.0.2.2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: api, namespace: istio-system}
spec:
  host: api.example.com
  trafficPolicy:
    tls: {mode: MUTUAL, credentialName: missing-client}
  subsets:
  - name: v1
    labels: {version: v1}
    trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}
  - name: v2
    labels: {version: v2}
    trafficPolicy: {tls: {mode: SIMPLE, sni: origin.example.com, insecureSkipVerify: true}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: api, namespace: istio-system}
spec:
  hosts: [api.local]
  gateways: [gw]
  http:
  - match: [{uri: {prefix: /v1}}]
    route: [{destination: {host: api.example.com, subset: v1}}]
  - match: [{uri: {prefix: /v2}}]
    route: [{destination: {host: api.example.com, subset: v2}}]
  - route: [{destination: {host: api.example.com}}]
"#;
    let (resources, mut diagnostics) =
        crate::config::load_text(std::path::Path::new("dr.yaml"), yaml);
    let (snapshot, more) = super::super::compile(&resources, &Default::default());
    diagnostics.extend(more);
    let tls = |name: &str| {
        snapshot
            .clusters
            .iter()
            .find(|c| c.name == name)
            .and_then(|c| c.tls.clone())
            .unwrap_or_else(|| panic!("{name} has no TLS"))
    };
    let v2 = tls("outbound|443|v2|api.example.com");
    assert_eq!(
        (v2.mode, v2.sni.to_str().as_ref()),
        ("SIMPLE", "origin.example.com")
    );
    assert!(v2.config.is_ok(), "{:?}", v2.refused);
    let v1 = tls("outbound|443|v1|api.example.com");
    assert!(v1.config.is_err());
    let top = tls("outbound|443||api.example.com");
    assert!(top.config.is_err());
    let warned = |field: &str, text: &str| {
        diagnostics.warnings().any(|d| {
            d.field.as_deref() == Some(field)
                && d.message.contains(text)
                && d.message.contains("refused (503 UF)")
        })
    };
    assert!(
        warned("spec.subsets[0].trafficPolicy.tls.mode", "ISTIO_MUTUAL"),
        "{diagnostics}"
    );
    assert!(
        warned("spec.trafficPolicy.tls.credentialName", "missing-client"),
        "{diagnostics}"
    );
    // Applied: `validate` does not call it unapplied.
    assert!(
        !diagnostics
            .warnings()
            .any(|d| d.message.starts_with("not applied")),
        "{diagnostics}"
    );
}

#[test]
fn no_tls_anywhere_is_none() {
    let spec = spec("host: web\ntrafficPolicy: {loadBalancer: {simple: RANDOM}}\n");
    assert_eq!(chosen(&spec, 80, None), None);
}

/// The TLS of the cluster of `host` (a ServiceEntry, resolution STATIC) under a
/// DestinationRule whose `tls` is `tls`.
fn compiled_tls(host: &str, tls: &str) -> Arc<UpstreamTls> {
    compiled_tls_of_entry(host, tls, "")
}

/// `compiled_tls` with `entry` added to the ServiceEntry's spec (flow-style fields).
fn compiled_tls_of_entry(host: &str, tls: &str, entry: &str) -> Arc<UpstreamTls> {
    let ca = concat!(env!("CARGO_MANIFEST_DIR"), "/src/tls/testdata/unit.crt");
    let yaml = format!(
        r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: gw, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  servers: [{{port: {{number: 80, name: http, protocol: HTTP}}, hosts: ["*"]}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: api, namespace: istio-system}}
spec:
  hosts: ["{host}"]
  ports: [{{number: 443, name: https, protocol: HTTPS}}]
  resolution: STATIC
  endpoints: [{{address: 192.0.2.1}}]
  {entry}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: api, namespace: istio-system}}
spec:
  host: "{host}"
  trafficPolicy:
    tls: {{mode: SIMPLE, caCertificates: {ca}, {tls}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: api, namespace: istio-system}}
spec:
  hosts: [api.local]
  gateways: [gw]
  http:
  - route: [{{destination: {{host: "{host}"}}}}]
"#
    );
    let (resources, _) = crate::config::load_text(std::path::Path::new("dr.yaml"), &yaml);
    let (snapshot, diagnostics) = super::super::compile(&resources, &Default::default());
    let name = format!("outbound|443||{host}");
    let tls = snapshot
        .clusters
        .iter()
        .find(|c| c.name == name)
        .and_then(|c| c.tls.clone())
        .unwrap_or_else(|| panic!("{name} has no TLS: {diagnostics}"));
    assert!(tls.config.is_ok(), "{:?} {diagnostics}", tls.refused);
    tls
}

/// Istio's `setAutoSniAndAutoSanValidation`: `auto_sni` without `sni`;
/// `auto_san_validation` when, besides, there are no `subjectAltNames` and no
/// `insecureSkipVerify`.
#[test]
fn auto_sni_and_auto_san_validation_are_set_as_istio_sets_them() {
    let cases = [
        ("", true, true),
        ("sni: ''", true, true),
        ("sni: origin.example.com", false, false),
        ("subjectAltNames: [api.example.com]", true, false),
        ("insecureSkipVerify: true", true, false),
        ("insecureSkipVerify: false", true, true),
        (
            "sni: origin.example.com, subjectAltNames: [api.example.com]",
            false,
            false,
        ),
        (
            "sni: origin.example.com, insecureSkipVerify: true",
            false,
            false,
        ),
    ];
    for (tls, auto_sni, auto_san_validation) in cases {
        let compiled = compiled_tls("api.example.com", tls);
        assert_eq!(
            (compiled.auto_sni, compiled.auto_san_validation),
            (auto_sni, auto_san_validation),
            "{tls}"
        );
        // TCP routes send `sni`, else none (an address), as Envoy's TCP proxy.
        let sni = if auto_sni {
            no_server_name()
        } else {
            ServerName::try_from("origin.example.com").expect("a name")
        };
        assert_eq!(compiled.sni, sni, "{tls}");
    }
}

/// A wildcard host has no name for a TCP route to send, but HTTP requests send their own
/// host: the cluster is served, not refused (the egress case: `*.wikipedia.org`).
#[test]
fn a_wildcard_host_without_sni_is_served_by_auto_sni() {
    let compiled = compiled_tls("*.wiki.example", "");
    assert!(compiled.auto_sni && compiled.auto_san_validation);
    assert_eq!(compiled.sni, no_server_name(), "no SNI for TCP routes");
}

/// Istio's `constructUpstreamTLS`: a rule without `subjectAltNames` takes the
/// ServiceEntry's, which leave `auto_san_validation` as the rule alone sets it (an HTTP
/// request's host is checked besides them); the rule's own win; insecureSkipVerify
/// checks none.
#[test]
fn a_service_entrys_subject_alt_names_stand_in_for_the_rules() {
    let entry = "subjectAltNames: [backend.example.net, spiffe://example.net/ns/api]";
    let from_entry = ["backend.example.net", "spiffe://example.net/ns/api"];
    let cases: [(&str, &[&str], bool); 6] = [
        ("", &from_entry, true),
        ("sni: origin.example.com", &from_entry, false),
        ("insecureSkipVerify: false", &from_entry, true),
        (
            "subjectAltNames: [rule.example.net]",
            &["rule.example.net"],
            false,
        ),
        (
            "sni: origin.example.com, subjectAltNames: [rule.example.net]",
            &["rule.example.net"],
            false,
        ),
        ("insecureSkipVerify: true", &[], false),
    ];
    for (tls, sans, auto_san_validation) in cases {
        let compiled = compiled_tls_of_entry("api.example.com", tls, entry);
        assert_eq!(compiled.subject_alt_names, sans, "{tls}");
        assert_eq!(compiled.auto_san_validation, auto_san_validation, "{tls}");
    }
    // Without them on the entry, the rule alone.
    assert!(
        compiled_tls("api.example.com", "")
            .subject_alt_names
            .is_empty()
    );
}
