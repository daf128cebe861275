//! Which AuthorizationPolicies apply to which listener, as istiod selects them for a
//! gateway's pods: a policy in the root namespace (`istio-system`) or in the gateway's own
//! namespace applies when it has no selector or its `selector.matchLabels` are among our
//! labels (`--selector`); a policy with `targetRefs` applies to the listeners of the
//! Gateway API Gateways it names (in its own namespace). The policies are compiled into
//! each listener (`authz.rs`), so they follow reloads with the rest of the snapshot.

use std::sync::Arc;

use super::{index::Index, sink::Sink};
use crate::{
    authz::{ListenerAuthz, Problem},
    config::{
        Diagnostic, Kind, Sourced,
        resources::{
            gateway_api::ApiGateway,
            security::{Action, AuthorizationPolicy, PolicyTargetReference},
        },
    },
};

/// Istio's root namespace (`meshConfig.rootNamespace`'s default): its policies without a
/// selector apply to every workload.
const ROOT_NAMESPACE: &str = "istio-system";
const GATEWAY_API_GROUP: &str = "gateway.networking.k8s.io";

/// `targetRefs`, or the deprecated single `targetRef`.
fn targets(policy: &AuthorizationPolicy) -> impl Iterator<Item = &PolicyTargetReference> {
    policy
        .spec
        .target_refs
        .iter()
        .chain(policy.spec.target_ref.as_ref())
}

fn targets_gateway(policy: &AuthorizationPolicy, gateway: &ApiGateway) -> bool {
    let namespace = policy.metadata.namespace();
    namespace == gateway.metadata.namespace()
        && targets(policy).any(|t| {
            t.group == GATEWAY_API_GROUP
                && t.kind == "Gateway"
                && t.name == gateway.metadata.name
                && t.namespace.as_deref().is_none_or(|n| n == namespace)
        })
}

impl<'a> Index<'a> {
    /// Whether `policy` selects our pods (not through `targetRefs`).
    fn selects_us(&self, policy: &AuthorizationPolicy) -> bool {
        if targets(policy).next().is_some() {
            return false;
        }
        let namespace = policy.metadata.namespace();
        if namespace != ROOT_NAMESPACE && namespace != self.identity.namespace {
            return false;
        }
        policy.spec.selector.as_ref().is_none_or(|selector| {
            selector
                .match_labels
                .iter()
                .all(|(k, v)| self.identity.labels.get(k) == Some(v))
        })
    }

    /// The policies of a listener that `gateways` (Gateway API Gateways; none for Istio's)
    /// serve. Listeners no `targetRefs` name share one compile.
    pub(super) fn listener_authz(&self, gateways: &[&ApiGateway]) -> Arc<ListenerAuthz> {
        let resources = self.resources;
        let targeted: Vec<&Sourced<AuthorizationPolicy>> = resources
            .authorization_policies
            .iter()
            .filter(|p| gateways.iter().any(|g| targets_gateway(&p.resource, g)))
            .collect();
        if targeted.is_empty()
            && let Some(shared) = self.workload_authz.get()
        {
            return shared.clone();
        }
        let mut policies: Vec<&Sourced<AuthorizationPolicy>> = resources
            .authorization_policies
            .iter()
            .filter(|p| self.selects_us(&p.resource))
            .collect();
        let shared = targeted.is_empty();
        policies.extend(targeted);
        let compiled = Arc::new(build(&policies));
        if shared {
            let _ = self.workload_authz.set(compiled.clone());
        }
        compiled
    }
}

/// Reports, once per policy that applies to us, what is not enforced as written.
pub(super) fn check_authorization_policies<'a>(ix: &Index<'a>, sink: &mut Sink) {
    let resources = ix.resources;
    let our_gateways: Vec<&ApiGateway> = resources
        .api_gateways
        .iter()
        .map(|g| &*g.resource)
        .filter(|g| super::status::is_our_class(resources, ix.identity, g))
        .collect();
    for sourced in &resources.authorization_policies {
        let policy = &*sourced.resource;
        let object = policy.object_ref();
        let warn = |message: String, field: &str| {
            Diagnostic::warning(message)
                .at(sourced.location.clone())
                .object(&object)
                .field(field.to_owned())
        };
        let mut found = Vec::new();
        for (index, target) in targets(policy).enumerate() {
            if target.group != GATEWAY_API_GROUP || target.kind != "Gateway" {
                found.push(warn(
                    format!(
                        "targetRefs to {}.{} are not supported (a gateway is targeted as a Gateway API Gateway); this reference selects nothing",
                        target.kind, target.group
                    ),
                    &format!("spec.targetRefs[{index}]"),
                ));
            }
        }
        if policy.spec.selector.is_some() && targets(policy).next().is_some() {
            found.push(warn(
                "selector and targetRefs are exclusive (Istio refuses the policy); targetRefs decide".to_owned(),
                "spec.selector",
            ));
        }
        let applies =
            ix.selects_us(policy) || our_gateways.iter().any(|g| targets_gateway(policy, g));
        if !applies {
            // Reports about policies for other workloads would only be noise.
            continue;
        }
        for diagnostic in found {
            sink.push(diagnostic);
        }
        if policy.spec.action == Some(Action::Custom) {
            sink.push(warn(
                "action CUSTOM is not supported (no extension provider can be called): requests its rules match are denied, as Istio does when the provider is missing".to_owned(),
                "spec.action",
            ));
        }
        let mut problems: Vec<Problem> = Vec::new();
        let mut scratch = crate::authz::Engine::default();
        scratch.add(policy, policy.dry_run, false, &mut problems);
        for problem in problems {
            sink.push(warn(problem.message, &problem.field));
        }
    }
}

fn build(policies: &[&Sourced<AuthorizationPolicy>]) -> ListenerAuthz {
    let mut authz = ListenerAuthz::default();
    // Reported once by `check_authorization_policies`.
    let mut reported = Vec::new();
    for sourced in policies {
        let policy = &*sourced.resource;
        authz.http.add(policy, policy.dry_run, false, &mut reported);
        authz.tcp.add(policy, policy.dry_run, true, &mut reported);
        authz.policies.push(format!(
            "{}/{}",
            policy.metadata.namespace(),
            policy.metadata.name
        ));
    }
    authz
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::{
        compile::{Identity, compile},
        config,
    };

    const GATEWAYS: &str = r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: istio-gw, namespace: default}
spec:
  selector: {istio: ingressgateway}
  servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: ["*"]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: api, namespace: apps}
spec:
  gatewayClassName: istio
  listeners: [{name: web, port: 8080, protocol: HTTP}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: other, namespace: apps}
spec:
  gatewayClassName: istio
  listeners: [{name: web, port: 8081, protocol: HTTP}]
"#;

    /// Which policies each port's listener holds.
    fn selected(policies: &[(&str, &str, &str)]) -> Vec<(u16, Vec<String>)> {
        let mut yaml = GATEWAYS.to_owned();
        for (namespace, name, spec) in policies {
            yaml.push_str(&format!(
                "---\napiVersion: security.istio.io/v1beta1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec: {spec}\n"
            ));
        }
        let (resources, diagnostics) = config::load_text(Path::new("authz.yaml"), &yaml);
        assert!(!diagnostics.has_errors(), "{diagnostics}");
        let (snapshot, diagnostics) = compile(&resources, &Identity::default());
        assert!(!diagnostics.has_errors(), "{diagnostics}");
        snapshot
            .listeners
            .iter()
            .map(|l| (l.port, l.authz.policies.clone()))
            .collect()
    }

    #[test]
    fn policies_are_selected_as_istiod_selects_them_for_a_gateway() {
        let listeners = selected(&[
            ("istio-system", "root-wide", "{action: DENY}"),
            (
                "istio-system",
                "ours",
                "{selector: {matchLabels: {istio: ingressgateway}}}",
            ),
            (
                "istio-system",
                "egress",
                "{selector: {matchLabels: {istio: egressgateway}}}",
            ),
            ("default", "another-namespace", "{}"),
            (
                "apps",
                "api-only",
                "{targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: api}]}",
            ),
            (
                "default",
                "api-elsewhere",
                "{targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: api}]}",
            ),
        ]);
        let common = ["istio-system/root-wide", "istio-system/ours"];
        assert_eq!(
            listeners,
            [
                (80, common.map(String::from).to_vec()),
                (
                    8080,
                    [common.as_slice(), &["apps/api-only"]]
                        .concat()
                        .into_iter()
                        .map(String::from)
                        .collect()
                ),
                (8081, common.map(String::from).to_vec()),
            ]
        );
    }

    #[test]
    fn unknown_versions_are_errors_that_name_the_field() {
        let (_, diagnostics) = config::load_text(
            Path::new("authz.yaml"),
            "apiVersion: security.istio.io/v2\nkind: AuthorizationPolicy\nmetadata: {name: p}\nspec: {}\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: q}\nspec:\n  action: PERMIT\n",
        );
        let fields: Vec<_> = diagnostics
            .errors()
            .map(|d| (d.field.clone(), d.location.as_ref().map(|l| l.line)))
            .collect();
        assert_eq!(
            fields,
            [
                (Some("apiVersion".to_owned()), Some(1)),
                (Some("spec.action".to_owned()), Some(10)),
            ]
        );
    }
}
