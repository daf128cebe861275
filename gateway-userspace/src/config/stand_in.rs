//! Stand-ins for upstream TLS settings that are dropped: a BackendTLSPolicy, or a
//! DestinationRule asking for TLS, that does not parse (or is dropped for a compile
//! error: `compile::isolate`). Dropped outright, its Service would get plaintext
//! connections: traffic the user asked to encrypt would leave in clear. Istio rejects such
//! a rule at admission; without admission, failing closed is the rule here, as for
//! `AuthorizationPolicy::fail_closed`: when what the broken object targets can still be
//! read, a stand-in is kept whose targets refuse their connections (503 `UF`) until the
//! object is fixed. Neither kind has a dry-run mode (Istio's `istio.io/dry-run` is for
//! AuthorizationPolicy only), so a stand-in is always kept.
//!
//! A stand-in holds what was read and nothing that can fail to compile: it must never
//! have errors of its own, or isolation would refuse the whole reload.

use std::sync::Arc;

use serde_yaml::Value;

use super::resources::{
    DestinationRule, Labels, ObjectMeta,
    gateway_api::{BackendTlsPolicy, BackendTlsPolicySpec, PolicyTargetReference},
    istio::{ClientTlsMode, DestinationRuleSpec, Subset, TrafficPolicy},
};

/// What a BackendTLSPolicy stand-in does, for the warning.
pub const BACKEND_TLS_POLICY_EFFECT: &str = "connections to the Service (ports) it targets are refused (503 UF) rather than sent in plaintext";
/// What a DestinationRule stand-in does, for the warning.
pub const DESTINATION_RULE_EFFECT: &str =
    "every connection to its host is refused (503 UF) rather than sent in plaintext";

/// A stand-in for a BackendTLSPolicy that does not parse, if its `spec.targetRefs`
/// still say which Services it targets (entries that name nothing are left out).
pub fn backend_tls_policy(
    metadata: &ObjectMeta,
    document: &Value,
    why: &str,
) -> Option<BackendTlsPolicy> {
    let refs = document.get("spec")?.get("targetRefs")?.as_sequence()?;
    let target_refs: Vec<PolicyTargetReference> = refs
        .iter()
        .filter_map(|r| {
            let field = |name: &str| r.get(name).and_then(scalar);
            Some(PolicyTargetReference {
                group: field("group").unwrap_or_default(),
                kind: field("kind")?,
                name: field("name").filter(|n| !n.is_empty())?,
                section_name: field("sectionName"),
            })
        })
        .collect();
    if target_refs.is_empty() {
        return None;
    }
    Some(BackendTlsPolicy {
        metadata: metadata.clone(),
        spec: BackendTlsPolicySpec {
            target_refs,
            fail_closed: Some(why.into()),
            ..BackendTlsPolicySpec::default()
        },
    })
}

/// The stand-in for a parsed BackendTLSPolicy dropped for its errors: its targets only.
pub fn backend_tls_policy_from(policy: &BackendTlsPolicy, why: &str) -> BackendTlsPolicy {
    BackendTlsPolicy {
        metadata: policy.metadata.clone(),
        spec: BackendTlsPolicySpec {
            target_refs: policy.spec.target_refs.clone(),
            fail_closed: Some(why.into()),
            ..BackendTlsPolicySpec::default()
        },
    }
}

/// A stand-in for a DestinationRule that does not parse, if its `spec.host` can be read
/// and it asks for TLS: a `tls` (top level, `portLevelSettings`, subsets) whose mode is
/// not DISABLE, unreadable ones included. Its subsets are kept (name, labels where they
/// read) so that routes to them find them, and are refused like the rest.
pub fn destination_rule(
    metadata: &ObjectMeta,
    document: &Value,
    why: &str,
) -> Option<DestinationRule> {
    let spec = document.get("spec")?;
    let host = spec.get("host").and_then(Value::as_str)?;
    if host.is_empty() || !document_asks_for_tls(spec) {
        return None;
    }
    let subsets = spec
        .get("subsets")
        .and_then(Value::as_sequence)
        .into_iter()
        .flatten()
        .filter_map(|s| {
            Some(Subset {
                name: s.get("name").and_then(scalar)?,
                labels: s
                    .get("labels")
                    .and_then(|l| serde_yaml::from_value::<Labels>(l.clone()).ok())
                    .unwrap_or_default(),
                traffic_policy: None,
            })
        })
        .collect();
    Some(stand_in_rule(metadata, host, subsets, why))
}

/// The stand-in for a parsed DestinationRule dropped for its errors, if it asks for TLS:
/// its host and subsets (without their traffic policies: those had the errors).
pub fn destination_rule_from(rule: &DestinationRule, why: &str) -> Option<DestinationRule> {
    if !asks_for_tls(rule) {
        return None;
    }
    let subsets = rule
        .spec
        .subsets
        .iter()
        .map(|s| Subset {
            name: s.name.clone(),
            labels: s.labels.clone(),
            traffic_policy: None,
        })
        .collect();
    Some(stand_in_rule(&rule.metadata, &rule.spec.host, subsets, why))
}

fn stand_in_rule(
    metadata: &ObjectMeta,
    host: &str,
    subsets: Vec<Subset>,
    why: &str,
) -> DestinationRule {
    DestinationRule {
        metadata: metadata.clone(),
        spec: DestinationRuleSpec {
            host: host.to_owned(),
            subsets,
            ..DestinationRuleSpec::default()
        },
        fail_closed: Some(Arc::from(why)),
    }
}

/// Whether a parsed rule originates TLS anywhere (a mode other than DISABLE).
fn asks_for_tls(rule: &DestinationRule) -> bool {
    let policy_asks = |p: &TrafficPolicy| {
        p.tls
            .iter()
            .chain(p.port_level_settings.iter().filter_map(|l| l.tls.as_ref()))
            .any(|tls| !matches!(tls.mode, None | Some(ClientTlsMode::Disable)))
    };
    rule.spec
        .traffic_policy
        .iter()
        .chain(
            rule.spec
                .subsets
                .iter()
                .filter_map(|s| s.traffic_policy.as_ref()),
        )
        .any(policy_asks)
}

/// Whether an unparsed rule's spec has a `tls` whose mode is not DISABLE (or absent,
/// Istio's default). A `tls` or mode that cannot be read counts as asking: closed.
fn document_asks_for_tls(spec: &Value) -> bool {
    let tls_asks = |tls: &Value| match tls.as_mapping() {
        None => !tls.is_null(),
        Some(_) => match tls.get("mode") {
            None | Some(Value::Null) => false,
            Some(mode) => !mode
                .as_str()
                .is_some_and(|m| m.eq_ignore_ascii_case("DISABLE")),
        },
    };
    let policy_asks = |policy: &Value| {
        policy.get("tls").is_some_and(tls_asks)
            || any_in(policy, "portLevelSettings", |p| {
                p.get("tls").is_some_and(tls_asks)
            })
    };
    spec.get("trafficPolicy").is_some_and(policy_asks)
        || any_in(spec, "subsets", |s| {
            s.get("trafficPolicy").is_some_and(policy_asks)
        })
}

/// Whether `f` holds for any item of the sequence under `key`.
fn any_in(value: &Value, key: &str, f: impl FnMut(&Value) -> bool) -> bool {
    value
        .get(key)
        .and_then(Value::as_sequence)
        .into_iter()
        .flatten()
        .any(f)
}

/// A scalar as the string it reads as (`sectionName: 443` is the name "443").
fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

#[cfg(test)]
#[path = "stand_in_tests.rs"]
mod tests;
