//! RBAC against what the code does: list and watch on every kind in
//! `gateway::kubernetes::kinds::WATCHED` where it watches it, status writes on the Gateway
//! API objects it reports on, the Lease and its own pods in its namespace; and no grant
//! beyond those (no wildcard, no Secrets cluster-wide, no delete).

use anyhow::{Context as _, ensure};
use gateway::kubernetes::kinds::{Scope, WATCHED};
use k8s_openapi::api::rbac::v1::{PolicyRule, Subject};

use super::{Manifests, load, pod_spec};

const GATEWAY_API: &str = "gateway.networking.k8s.io";
const READ: &[&str] = &["get", "list", "watch"];

/// Where a rule applies.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Reach {
    Cluster,
    Namespace(String),
}

impl Reach {
    /// Whether `self` reaches at least as far as `other`.
    fn covers(&self, other: &Reach) -> bool {
        *self == Reach::Cluster || self == other
    }
}

/// One rule of a role bound to gatewayd's ServiceAccount, and how far the binding takes it.
struct Grant<'a> {
    reach: Reach,
    rule: &'a PolicyRule,
    role: String,
}

/// What gatewayd needs: these verbs on this resource, this far.
struct Need {
    group: &'static str,
    resource: String,
    verbs: &'static [&'static str],
    reach: Reach,
}

/// The deployment as gatewayd sees it: its namespace and what it may do.
struct Access<'a> {
    namespace: String,
    grants: Vec<Grant<'a>>,
}

fn is_subject(subject: &Subject, account: &str, namespace: &str) -> bool {
    subject.kind == "ServiceAccount"
        && subject.name == account
        && subject.namespace.as_deref() == Some(namespace)
}

fn access(m: &Manifests) -> anyhow::Result<Access<'_>> {
    let daemon_set = &m.daemon_sets[0];
    let namespace = daemon_set
        .metadata
        .namespace
        .clone()
        .context("the DaemonSet has no namespace")?;
    let account = pod_spec(daemon_set)?
        .service_account_name
        .clone()
        .context("serviceAccountName")?;
    ensure!(
        m.service_accounts.iter().any(|a| {
            a.metadata.name.as_deref() == Some(account.as_str())
                && a.metadata.namespace.as_deref() == Some(namespace.as_str())
        }),
        "no ServiceAccount {namespace}/{account}"
    );

    let mut grants = Vec::new();
    for binding in &m.cluster_role_bindings {
        let subjects = binding.subjects.as_deref().unwrap_or_default();
        ensure!(
            subjects.iter().all(|s| is_subject(s, &account, &namespace)),
            "ClusterRoleBinding {:?} binds someone besides gatewayd",
            binding.metadata.name
        );
        let name = &binding.role_ref.name;
        let role = m
            .cluster_roles
            .iter()
            .find(|r| r.metadata.name.as_ref() == Some(name))
            .with_context(|| format!("ClusterRole {name} is not in the manifests"))?;
        for rule in role.rules.iter().flatten() {
            grants.push(Grant {
                reach: Reach::Cluster,
                rule,
                role: name.clone(),
            });
        }
    }
    for binding in &m.role_bindings {
        let subjects = binding.subjects.as_deref().unwrap_or_default();
        ensure!(
            subjects.iter().all(|s| is_subject(s, &account, &namespace)),
            "RoleBinding {:?} binds someone besides gatewayd",
            binding.metadata.name
        );
        let bound_in = binding
            .metadata
            .namespace
            .clone()
            .context("a RoleBinding without a namespace")?;
        let name = &binding.role_ref.name;
        let rules = match binding.role_ref.kind.as_str() {
            "Role" => m
                .roles
                .iter()
                .find(|r| {
                    r.metadata.name.as_ref() == Some(name)
                        && r.metadata.namespace.as_ref() == Some(&bound_in)
                })
                .and_then(|r| r.rules.as_deref()),
            _ => m
                .cluster_roles
                .iter()
                .find(|r| r.metadata.name.as_ref() == Some(name))
                .and_then(|r| r.rules.as_deref()),
        }
        .with_context(|| format!("role {name} in {bound_in} is not in the manifests"))?;
        for rule in rules {
            grants.push(Grant {
                reach: Reach::Namespace(bound_in.clone()),
                rule,
                role: name.clone(),
            });
        }
    }
    Ok(Access { namespace, grants })
}

impl Access<'_> {
    fn own_namespace(&self) -> Reach {
        Reach::Namespace(self.namespace.clone())
    }

    /// Everything gatewayd does with the API, from the code's table of watched kinds.
    fn needs(&self) -> Vec<Need> {
        let mut needs: Vec<Need> = WATCHED
            .iter()
            .map(|kind| Need {
                group: kind.group,
                resource: kind.plural.to_owned(),
                verbs: READ,
                reach: match kind.scope {
                    Scope::Cluster | Scope::Namespaced => Reach::Cluster,
                    Scope::Secrets => self.own_namespace(),
                },
            })
            .collect();
        needs.extend(status_kinds().map(|plural| Need {
            group: GATEWAY_API,
            resource: format!("{plural}/status"),
            verbs: &["update", "patch"],
            reach: Reach::Cluster,
        }));
        needs.push(Need {
            group: "coordination.k8s.io",
            resource: "leases".to_owned(),
            verbs: &["get", "create", "update"],
            reach: self.own_namespace(),
        });
        needs.push(Need {
            group: "",
            resource: "pods".to_owned(),
            verbs: READ,
            reach: self.own_namespace(),
        });
        needs
    }

    /// Whether some grant allows `verb` on `group`/`resource` as far as `reach`.
    fn allows(&self, group: &str, resource: &str, verb: &str, reach: &Reach) -> bool {
        self.grants.iter().any(|g| {
            let rule = g.rule;
            g.reach.covers(reach)
                // A rule limited to names grants no list or watch; treat it as no grant.
                && rule.resource_names.as_deref().unwrap_or_default().is_empty()
                && rule.api_groups.iter().flatten().any(|g| g == group)
                && rule.resources.iter().flatten().any(|r| r == resource)
                && rule.verbs.iter().any(|v| v == verb)
        })
    }
}

/// The Gateway API kinds whose status gatewayd writes: every watched one that has a status
/// (ReferenceGrant has none).
fn status_kinds() -> impl Iterator<Item = &'static str> {
    WATCHED
        .iter()
        .filter(|k| k.group == GATEWAY_API && k.kind != "ReferenceGrant")
        .map(|k| k.plural)
}

#[test]
fn rbac_lets_gatewayd_list_and_watch_every_kind_it_watches() -> anyhow::Result<()> {
    let m = load()?;
    let access = access(&m)?;
    for kind in &WATCHED {
        let reach = match kind.scope {
            Scope::Cluster | Scope::Namespaced => Reach::Cluster,
            Scope::Secrets => access.own_namespace(),
        };
        for verb in ["list", "watch"] {
            assert!(
                access.allows(kind.group, kind.plural, verb, &reach),
                "{} {verb} is not granted ({reach:?})",
                kind.label()
            );
        }
    }
    Ok(())
}

#[test]
fn rbac_lets_gatewayd_write_gateway_api_status() -> anyhow::Result<()> {
    let m = load()?;
    let access = access(&m)?;
    let kinds: Vec<&str> = status_kinds().collect();
    for expected in [
        "gatewayclasses",
        "gateways",
        "httproutes",
        "grpcroutes",
        "tlsroutes",
        "tcproutes",
    ] {
        assert!(kinds.contains(&expected), "{expected} is not watched");
    }
    for plural in kinds {
        let status = format!("{plural}/status");
        for verb in ["update", "patch"] {
            assert!(
                access.allows(GATEWAY_API, &status, verb, &Reach::Cluster),
                "{verb} {status} is not granted cluster-wide"
            );
        }
        // Status only: the main resource stays read-only.
        assert!(!access.allows(GATEWAY_API, plural, "update", &Reach::Cluster));
    }
    Ok(())
}

#[test]
fn rbac_grants_the_lease_and_pods_in_the_gateway_namespace() -> anyhow::Result<()> {
    let m = load()?;
    let access = access(&m)?;
    let own = access.own_namespace();
    for verb in ["get", "create", "update"] {
        assert!(
            access.allows("coordination.k8s.io", "leases", verb, &own),
            "leases {verb} in {own:?}"
        );
    }
    for verb in ["get", "list"] {
        assert!(
            access.allows("", "pods", verb, &own),
            "pods {verb} in {own:?}"
        );
    }
    Ok(())
}

#[test]
fn no_rule_grants_secrets_cluster_wide() -> anyhow::Result<()> {
    let m = load()?;
    let access = access(&m)?;
    for grant in access.grants.iter().filter(|g| g.reach == Reach::Cluster) {
        let resources = grant.rule.resources.as_deref().unwrap_or_default();
        assert!(
            !resources.iter().any(|r| r == "secrets" || r == "*"),
            "{}: Secrets of every namespace on every node",
            grant.role
        );
    }
    Ok(())
}

/// Every verb of every rule is one gatewayd uses, on a resource it uses, no farther than
/// it needs: no wildcards, no delete, create only on the Lease, writes only on status
/// and the Lease, nothing cluster-wide that is needed in one namespace.
#[test]
fn no_rule_grants_more_than_gatewayd_uses() -> anyhow::Result<()> {
    let m = load()?;
    let access = access(&m)?;
    let needs = access.needs();
    for grant in &access.grants {
        let rule = grant.rule;
        let role = &grant.role;
        ensure!(
            rule.non_resource_urls
                .as_deref()
                .unwrap_or_default()
                .is_empty(),
            "{role}: nonResourceURLs"
        );
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                for verb in &rule.verbs {
                    let needed = needs.iter().any(|n| {
                        n.group == group
                            && n.resource == *resource
                            && n.verbs.contains(&verb.as_str())
                            // Granted no farther than needed.
                            && n.reach.covers(&grant.reach)
                    });
                    ensure!(
                        needed,
                        "{role}: {verb} on {resource:?} in group {group:?} ({:?}) is more than gatewayd uses",
                        grant.reach
                    );
                }
            }
        }
    }
    Ok(())
}
