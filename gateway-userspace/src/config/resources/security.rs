//! `security.istio.io` AuthorizationPolicy, field for field. Values stay strings as users
//! wrote them (ports too: Istio's API has them as strings); `authz` gives them meaning.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::ObjectMeta;

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct AuthorizationPolicy {
    pub metadata: ObjectMeta,
    pub spec: AuthorizationPolicySpec,
    /// Istio's `istio.io/dry-run: "true"` annotation: evaluated and logged, not enforced.
    /// Read by the loader (`ObjectMeta` keeps no annotations: they can be large).
    #[serde(skip)]
    pub dry_run: bool,
    /// A stand-in for a policy that does not parse (`fail_closed`): kept when the broken
    /// object itself is dropped from the configuration.
    #[serde(skip)]
    pub fail_closed: bool,
}

impl AuthorizationPolicy {
    /// What a policy that does not parse enforces until it is fixed: it must not simply
    /// vanish, or a broken DENY policy would stop denying. Istio widens what it cannot
    /// read in a DENY policy (a value left out matches more), and an ALLOW rule it cannot
    /// read allows nothing; a whole unreadable policy is the limit of both: a DENY (or
    /// CUSTOM, or unreadable action) policy denies everything on the workloads it selects,
    /// an ALLOW policy allows nothing. AUDIT and dry-run policies only log: None.
    /// The selector and targets are read where they parse; where they do not, the policy
    /// applies to everything its namespace reaches (closed again).
    pub fn fail_closed(metadata: ObjectMeta, document: &serde_yaml::Value) -> Option<Self> {
        let spec = document.get("spec");
        let field = |name: &str| spec.and_then(|s| s.get(name)).cloned();
        let action = match field("action") {
            None => Action::Allow,
            Some(value) => match serde_yaml::from_value::<Action>(value) {
                Ok(Action::Audit) => return None,
                Ok(Action::Allow) => Action::Allow,
                Ok(Action::Deny | Action::Custom) | Err(_) => Action::Deny,
            },
        };
        fn read<T: serde::de::DeserializeOwned>(value: Option<serde_yaml::Value>) -> Option<T> {
            value.and_then(|v| serde_yaml::from_value(v).ok())
        }
        let rules = match action {
            Action::Allow => Vec::new(),
            _ => vec![Rule::default()],
        };
        Some(AuthorizationPolicy {
            metadata,
            spec: AuthorizationPolicySpec {
                selector: read(field("selector")),
                target_ref: read(field("targetRef")),
                target_refs: read(field("targetRefs")).unwrap_or_default(),
                rules,
                action: Some(action),
                provider: None,
            },
            dry_run: false,
            fail_closed: true,
        })
    }
}

/// The annotation that makes a policy dry-run.
pub const DRY_RUN_ANNOTATION: &str = "istio.io/dry-run";

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct AuthorizationPolicySpec {
    pub selector: Option<WorkloadSelector>,
    pub target_ref: Option<PolicyTargetReference>,
    pub target_refs: Vec<PolicyTargetReference>,
    pub rules: Vec<Rule>,
    pub action: Option<Action>,
    /// CUSTOM's extension provider.
    pub provider: Option<ExtensionProvider>,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Action {
    Allow,
    Deny,
    Audit,
    Custom,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct WorkloadSelector {
    pub match_labels: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct PolicyTargetReference {
    pub group: String,
    pub kind: String,
    pub name: String,
    pub namespace: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct ExtensionProvider {
    pub name: String,
}

/// A rule matches when one of `from`, one of `to` and all of `when` match (an absent
/// list matches anything).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct Rule {
    pub from: Vec<From>,
    pub to: Vec<To>,
    pub when: Vec<Condition>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct From {
    pub source: Option<Source>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct Source {
    pub principals: Vec<String>,
    pub not_principals: Vec<String>,
    pub request_principals: Vec<String>,
    pub not_request_principals: Vec<String>,
    pub namespaces: Vec<String>,
    pub not_namespaces: Vec<String>,
    pub ip_blocks: Vec<String>,
    pub not_ip_blocks: Vec<String>,
    pub remote_ip_blocks: Vec<String>,
    pub not_remote_ip_blocks: Vec<String>,
    pub service_accounts: Vec<String>,
    pub not_service_accounts: Vec<String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct To {
    pub operation: Option<Operation>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct Operation {
    pub hosts: Vec<String>,
    pub not_hosts: Vec<String>,
    pub ports: Vec<String>,
    pub not_ports: Vec<String>,
    pub methods: Vec<String>,
    pub not_methods: Vec<String>,
    pub paths: Vec<String>,
    pub not_paths: Vec<String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct Condition {
    pub key: String,
    pub values: Vec<String>,
    pub not_values: Vec<String>,
}
