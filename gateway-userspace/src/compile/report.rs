//! What a compile says about the objects it was given, as plain data: which objects were
//! dropped (`compile::isolate`) and, for Gateway API objects, the status a conformant
//! implementation writes (conditions with the spec's types and reasons, `observedGeneration`
//! from `metadata.generation`). A status writer and `gatewayd validate`/`routes` are built
//! from it; addresses are in it only where a Gateway's `spec.addresses` decide them (else
//! they come from the cluster, not the compile), and `Programmed` is the compile's view:
//! what the snapshot serves.

use std::fmt;

use serde::Serialize;

use crate::config::{Diagnostic, ObjectRef};

/// An object left out of the configuration, and the errors that made it so.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DroppedObject {
    pub object: ObjectRef,
    pub errors: Vec<Diagnostic>,
}

impl DroppedObject {
    /// The first error's message, with its field: what a log line or a status says.
    pub fn reason(&self) -> String {
        self.errors
            .first()
            .map(|d| match &d.field {
                Some(field) => format!("{field}: {}", d.message),
                None => d.message.clone(),
            })
            .unwrap_or_default()
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    /// Written in route `status.parents[].controllerName`; ours.
    pub controller_name: String,
    /// Objects left out for their errors.
    pub dropped: Vec<DroppedObject>,
    /// Classes we serve (by name, or by `spec.controllerName`), by object.
    pub gateway_classes: Vec<ObjectStatus>,
    /// Gateways of those classes, by object.
    pub gateways: Vec<GatewayStatus>,
    /// HTTPRoutes, GRPCRoutes, TLSRoutes and TCPRoutes with a parentRef to one of our
    /// Gateways, by object.
    pub routes: Vec<RouteStatus>,
    /// BackendTLSPolicies with one of our Gateways as ancestor, by object.
    pub policies: Vec<PolicyStatus>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum ConditionStatus {
    True,
    False,
}

/// A `metav1.Condition` without `lastTransitionTime` (the writer keeps or sets it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub status: ConditionStatus,
    pub reason: &'static str,
    pub message: String,
    pub observed_generation: Option<i64>,
}

impl Condition {
    pub fn new(
        kind: &'static str,
        ok: bool,
        reason: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Condition {
            kind,
            status: if ok {
                ConditionStatus::True
            } else {
                ConditionStatus::False
            },
            reason,
            message: message.into(),
            observed_generation: None,
        }
    }

    pub fn is_true(&self) -> bool {
        self.status == ConditionStatus::True
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectStatus {
    pub object: ObjectRef,
    pub generation: Option<i64>,
    pub conditions: Vec<Condition>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayStatus {
    pub object: ObjectRef,
    pub generation: Option<i64>,
    pub conditions: Vec<Condition>,
    pub listeners: Vec<ListenerStatus>,
    /// `status.addresses` where the Gateway's `spec.addresses` decide them (the ones it is
    /// served on); None leaves them to the cluster (the node's addresses).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub addresses: Option<Vec<std::net::IpAddr>>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ListenerStatus {
    pub name: String,
    pub supported_kinds: Vec<GroupKind>,
    pub attached_routes: u32,
    pub conditions: Vec<Condition>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GroupKind {
    pub group: String,
    pub kind: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteStatus {
    pub object: ObjectRef,
    pub generation: Option<i64>,
    pub parents: Vec<RouteParentStatus>,
}

/// A policy's `status.ancestors`: each entry's `parent_ref` is its `ancestorRef`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyStatus {
    pub object: ObjectRef,
    pub generation: Option<i64>,
    pub ancestors: Vec<RouteParentStatus>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteParentStatus {
    /// The parentRef as written, namespace filled in.
    pub parent_ref: ParentRef,
    pub conditions: Vec<Condition>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ParentRef {
    pub group: String,
    pub kind: String,
    pub namespace: String,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u32>,
}

impl Report {
    pub fn gateway(&self, namespace: &str, name: &str) -> Option<&GatewayStatus> {
        self.gateways
            .iter()
            .find(|g| g.object.namespace == namespace && g.object.name == name)
    }

    /// A BackendTLSPolicy by namespace and name.
    pub fn policy(&self, namespace: &str, name: &str) -> Option<&PolicyStatus> {
        self.policies
            .iter()
            .find(|p| p.object.namespace == namespace && p.object.name == name)
    }

    /// A route by kind (`HTTPRoute`, …), namespace and name.
    pub fn route(&self, kind: &str, namespace: &str, name: &str) -> Option<&RouteStatus> {
        self.routes.iter().find(|r| {
            r.object.kind == kind && r.object.namespace == namespace && r.object.name == name
        })
    }
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = match self.status {
            ConditionStatus::True => "True",
            ConditionStatus::False => "False",
        };
        write!(f, "{}={status} {}", self.kind, self.reason)?;
        if !self.message.is_empty() {
            write!(f, ": {}", self.message)?;
        }
        Ok(())
    }
}

fn conditions(f: &mut fmt::Formatter<'_>, conditions: &[Condition]) -> fmt::Result {
    for (i, c) in conditions.iter().enumerate() {
        let sep = if i == 0 { "" } else { "; " };
        write!(f, "{sep}{c}")?;
    }
    Ok(())
}

/// One line per class, Gateway, listener and route parent, as `validate` and `routes`
/// print them: `HTTPRoute ns/name: parent ns/gw listener http: Accepted=False …`.
impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for class in &self.gateway_classes {
            write!(f, "GatewayClass {}: ", class.object.name)?;
            conditions(f, &class.conditions)?;
            writeln!(f)?;
        }
        for gateway in &self.gateways {
            write!(f, "{}: ", gateway.object)?;
            conditions(f, &gateway.conditions)?;
            if let Some(addresses) = &gateway.addresses {
                let list: Vec<String> = addresses.iter().map(ToString::to_string).collect();
                write!(f, "; addresses: [{}]", list.join(", "))?;
            }
            writeln!(f)?;
            for listener in &gateway.listeners {
                write!(
                    f,
                    "  listener {}: attachedRoutes {}; ",
                    listener.name, listener.attached_routes
                )?;
                conditions(f, &listener.conditions)?;
                // The suite checks supportedKinds too (e.g. a TLS listener allowing
                // TCPRoute supports TLSRoute only); the Gateway API group goes unsaid.
                let kinds: Vec<String> = listener
                    .supported_kinds
                    .iter()
                    .map(|k| {
                        if k.group == crate::config::object_ref::GATEWAY_API_GROUP {
                            k.kind.clone()
                        } else {
                            format!("{}/{}", k.group, k.kind)
                        }
                    })
                    .collect();
                writeln!(f, "; supportedKinds: [{}]", kinds.join(", "))?;
            }
        }
        for route in &self.routes {
            for parent in &route.parents {
                let p = &parent.parent_ref;
                write!(f, "{}: parent {}/{}", route.object, p.namespace, p.name)?;
                if let Some(section) = &p.section_name {
                    write!(f, " listener {section}")?;
                }
                if let Some(port) = p.port {
                    write!(f, " port {port}")?;
                }
                write!(f, ": ")?;
                conditions(f, &parent.conditions)?;
                writeln!(f)?;
            }
        }
        for policy in &self.policies {
            for ancestor in &policy.ancestors {
                let a = &ancestor.parent_ref;
                write!(
                    f,
                    "{}: ancestor {}/{}: ",
                    policy.object, a.namespace, a.name
                )?;
                conditions(f, &ancestor.conditions)?;
                writeln!(f)?;
            }
        }
        Ok(())
    }
}
