use super::*;

fn meta() -> ObjectMeta {
    serde_yaml::from_str("{name: broken, namespace: apps}").expect("metadata")
}

#[test]
fn a_destination_rule_stand_in_is_kept_only_when_tls_was_asked_for() {
    for (spec, kept) in [
        // The mode misspelt: it asked for TLS.
        ("{host: a, trafficPolicy: {tls: {mode: SIMPEL}}}", true),
        // Another field broken, TLS readable.
        (
            "{host: a, trafficPolicy: {tls: {mode: SIMPLE}, loadBalancer: 3}}",
            true,
        ),
        (
            "{host: a, trafficPolicy: {portLevelSettings: [{port: {number: x}, tls: {mode: MUTUAL}}]}}",
            true,
        ),
        (
            "{host: a, subsets: [{name: v1, trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}}], x: 1}",
            true,
        ),
        (
            "{host: a, subsets: [{name: v1, trafficPolicy: {portLevelSettings: [{tls: {mode: SIMPLE}}]}}]}",
            true,
        ),
        // A tls that cannot be read: closed.
        ("{host: a, trafficPolicy: {tls: SIMPLE}}", true),
        ("{host: a, trafficPolicy: {tls: {mode: [SIMPLE]}}}", true),
        // No TLS asked for: dropped, as before.
        (
            "{host: a, trafficPolicy: {tls: {mode: DISABLE}, loadBalancer: 3}}",
            false,
        ),
        ("{host: a, trafficPolicy: {tls: {mode: disable}}}", false),
        (
            "{host: a, trafficPolicy: {tls: {sni: x}, loadBalancer: 3}}",
            false,
        ),
        (
            "{host: a, trafficPolicy: {tls: null, loadBalancer: 3}}",
            false,
        ),
        ("{host: a, trafficPolicy: {loadBalancer: 3}}", false),
        // No host to refuse.
        ("{host: [a], trafficPolicy: {tls: {mode: SIMPLE}}}", false),
        ("{trafficPolicy: {tls: {mode: SIMPLE}}}", false),
        ("{host: '', trafficPolicy: {tls: {mode: SIMPLE}}}", false),
    ] {
        let document: Value =
            serde_yaml::from_str(&format!("{{metadata: {{name: broken}}, spec: {spec}}}"))
                .expect("yaml");
        let stand_in = destination_rule(&meta(), &document, "does not parse (x)");
        assert_eq!(stand_in.is_some(), kept, "{spec}");
        if let Some(rule) = stand_in {
            assert_eq!(rule.spec.host, "a");
            assert_eq!(rule.metadata.name, "broken");
            assert_eq!(rule.fail_closed.as_deref(), Some("does not parse (x)"));
            assert!(rule.spec.traffic_policy.is_none(), "{spec}");
        }
    }
}

#[test]
fn a_destination_rule_stand_in_keeps_the_subsets_it_can_read() {
    let document: Value = serde_yaml::from_str(
        "spec: {host: a, trafficPolicy: {tls: {mode: SIMPEL}}, subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: 7}, {labels: {a: b}}]}",
    )
    .expect("yaml");
    let rule = destination_rule(&meta(), &document, "why").expect("a stand-in");
    let subsets: Vec<(&str, usize)> = rule
        .spec
        .subsets
        .iter()
        .map(|s| (s.name.as_str(), s.labels.len()))
        .collect();
    assert_eq!(subsets, [("v1", 1), ("v2", 0)]);
}

#[test]
fn a_parsed_destination_rule_fails_closed_only_when_it_originates_tls() {
    for (spec, kept) in [
        ("{host: a, trafficPolicy: {tls: {mode: SIMPLE}}}", true),
        (
            "{host: a, trafficPolicy: {portLevelSettings: [{tls: {mode: MUTUAL}}]}}",
            true,
        ),
        (
            "{host: a, subsets: [{name: v1, trafficPolicy: {tls: {mode: SIMPLE}}}]}",
            true,
        ),
        ("{host: a, trafficPolicy: {tls: {mode: DISABLE}}}", false),
        ("{host: a, trafficPolicy: {tls: {}}}", false),
        ("{host: a}", false),
    ] {
        let rule: DestinationRule =
            serde_yaml::from_str(&format!("{{metadata: {{name: r}}, spec: {spec}}}"))
                .expect("a rule");
        let stand_in = destination_rule_from(&rule, "has errors (x)");
        assert_eq!(stand_in.is_some(), kept, "{spec}");
        if let Some(stand_in) = stand_in {
            assert!(stand_in.spec.traffic_policy.is_none());
            assert!(
                stand_in
                    .spec
                    .subsets
                    .iter()
                    .all(|s| s.traffic_policy.is_none())
            );
        }
    }
}

#[test]
fn a_backend_tls_policy_stand_in_keeps_the_targets_it_can_read() {
    for (targets, want) in [
        (
            "[{group: '', kind: Service, name: a}]",
            vec![("Service", "a", None)],
        ),
        (
            "[{group: '', kind: Service, name: a, sectionName: 443}, {kind: Service}, 7]",
            vec![("Service", "a", Some("443"))],
        ),
        ("[{kind: Service, name: ''}]", vec![]),
        ("{kind: Service, name: a}", vec![]),
    ] {
        let document: Value = serde_yaml::from_str(&format!(
            "spec: {{targetRefs: {targets}, validation: {{hostname: [bad]}}}}"
        ))
        .expect("yaml");
        let stand_in = backend_tls_policy(&meta(), &document, "does not parse (x)");
        let got: Vec<(&str, &str, Option<&str>)> = stand_in
            .iter()
            .flat_map(|p| &p.spec.target_refs)
            .map(|t| (t.kind.as_str(), t.name.as_str(), t.section_name.as_deref()))
            .collect();
        assert_eq!(got, want, "{targets}");
        if let Some(policy) = stand_in {
            assert_eq!(
                policy.spec.fail_closed.as_deref(),
                Some("does not parse (x)")
            );
            assert_eq!(policy.metadata.namespace(), "apps");
        }
    }
}
