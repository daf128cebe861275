//! The status we want an object to carry, as plain data: what the compile report becomes
//! before it is merged into the object's current status (merge.rs).

use kube::api::{ApiResource, DynamicObject};
use kube::core::GroupVersionKind;
use serde::{Deserialize, Serialize};

pub const GATEWAY_API_GROUP: &str = "gateway.networking.k8s.io";

/// The Gateway API's cap on `status.parents` of a route.
pub const MAX_ROUTE_PARENTS: usize = 32;
/// The Gateway API's cap on `status.ancestors` of a policy.
pub(super) const MAX_POLICY_ANCESTORS: usize = 16;
/// The Gateway API's cap on `status.addresses` of a Gateway.
pub const MAX_GATEWAY_ADDRESSES: usize = 16;

/// One object's desired status.
#[derive(Clone, Debug, PartialEq)]
pub struct DesiredStatus {
    /// The object's kind as the cluster serves it (discovery), e.g. HTTPRoute v1.
    pub resource: ApiResource,
    /// None for cluster-scoped kinds (GatewayClass).
    pub namespace: Option<String>,
    pub name: String,
    /// The object as the watch last delivered it, if the caller has it: saves a GET.
    /// Stale is fine: a 409 makes the writer read the object again.
    pub current: Option<DynamicObject>,
    pub status: Desired,
}

/// What we own of an object's status, by kind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Desired {
    GatewayClass {
        conditions: Vec<Condition>,
    },
    Gateway(GatewayStatus),
    /// HTTPRoute, GRPCRoute, TLSRoute, TCPRoute: our `status.parents[]` entries (the
    /// writer adds our controllerName); other controllers' entries are left as they are.
    Route {
        parents: Vec<RouteParentStatus>,
    },
    /// BackendTLSPolicy: our `status.ancestors[]` entries, each `parent_ref` written as
    /// `ancestorRef`; other controllers' entries are left as they are.
    Policy {
        ancestors: Vec<RouteParentStatus>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayStatus {
    pub conditions: Vec<Condition>,
    pub addresses: Vec<GatewayAddress>,
    pub listeners: Vec<ListenerStatus>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayAddress {
    /// `IPAddress` or `Hostname`; absent means IPAddress.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub address_type: Option<String>,
    pub value: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerStatus {
    pub name: String,
    pub supported_kinds: Vec<RouteGroupKind>,
    pub attached_routes: i32,
    pub conditions: Vec<Condition>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RouteGroupKind {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    pub kind: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteParentStatus {
    pub parent_ref: ParentRef,
    pub conditions: Vec<Condition>,
}

/// A route's `parentRef`, as written in the route's spec.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ParentRef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i32>,
}

impl ParentRef {
    /// Whether two refs name the same parent once the spec's defaults are filled in
    /// (group `gateway.networking.k8s.io`, kind `Gateway`, the route's namespace).
    pub fn same_parent(&self, other: &ParentRef, route_namespace: &str) -> bool {
        let group = |r: &ParentRef| r.group.clone().unwrap_or_else(|| GATEWAY_API_GROUP.into());
        let kind = |r: &ParentRef| r.kind.clone().unwrap_or_else(|| "Gateway".into());
        let namespace = |r: &ParentRef| {
            r.namespace
                .clone()
                .unwrap_or_else(|| route_namespace.into())
        };
        group(self) == group(other)
            && kind(self) == kind(other)
            && namespace(self) == namespace(other)
            && self.name == other.name
            && self.section_name == other.section_name
            && self.port == other.port
    }
}

/// A `metav1.Condition` without its lastTransitionTime, which the merge decides.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Condition {
    /// `Accepted`, `Programmed`, `ResolvedRefs`, …
    pub condition_type: String,
    pub status: ConditionStatus,
    /// The spec's reason, e.g. `NotAllowedByListeners`.
    pub reason: String,
    pub message: String,
    /// The object's `metadata.generation` this condition was computed from.
    pub observed_generation: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConditionStatus {
    True,
    False,
    Unknown,
}

impl ConditionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ConditionStatus::True => "True",
            ConditionStatus::False => "False",
            ConditionStatus::Unknown => "Unknown",
        }
    }
}

impl From<bool> for ConditionStatus {
    fn from(value: bool) -> Self {
        if value {
            ConditionStatus::True
        } else {
            ConditionStatus::False
        }
    }
}

impl Condition {
    pub fn new(
        condition_type: &str,
        status: impl Into<ConditionStatus>,
        reason: &str,
        message: impl Into<String>,
        observed_generation: i64,
    ) -> Self {
        Condition {
            condition_type: condition_type.to_owned(),
            status: status.into(),
            reason: reason.to_owned(),
            message: message.into(),
            observed_generation,
        }
    }
}

/// The ApiResource of a Gateway API kind at `version`, for callers without discovery
/// (the plural is the kind's lower case plus `es`/`s`, or a consonant's `y` made `ies`, as the Gateway
/// API's CRDs name them).
pub fn gateway_api_resource(version: &str, kind: &str) -> ApiResource {
    let lower = kind.to_ascii_lowercase();
    let plural = if lower.ends_with("ss") {
        format!("{lower}es")
    } else if let Some(stem) = lower
        .strip_suffix('y')
        .filter(|stem| !stem.ends_with(['a', 'e', 'i', 'o', 'u']))
    {
        // BackendTLSPolicy → backendtlspolicies (but Gateway → gateways).
        format!("{stem}ies")
    } else {
        format!("{lower}s")
    };
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(GATEWAY_API_GROUP, version, kind),
        &plural,
    )
}
