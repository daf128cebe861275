//! Which object a diagnostic, a dropped object or a status entry is about. Kinds alone are
//! ambiguous (Istio's `Gateway` and Gateway API's `Gateway` share a name), so objects are
//! known by group, kind, namespace and name, never by parsing a `Kind ns/name` string.

use std::fmt;

use serde::Serialize;

use super::resources::{
    ConfigMap, DestinationRule, EndpointSlice, Endpoints, Gateway, Namespace, ObjectMeta, Secret,
    Service, ServiceEntry, VirtualService,
    gateway_api::{
        ApiGateway, BackendTlsPolicy, GatewayClass, GrpcRoute, HttpRoute, ReferenceGrant, TcpRoute,
        TlsRoute,
    },
};

pub const CORE_GROUP: &str = "";
pub const ISTIO_GROUP: &str = "networking.istio.io";
pub const ISTIO_SECURITY_GROUP: &str = "security.istio.io";
pub const GATEWAY_API_GROUP: &str = "gateway.networking.k8s.io";
pub const DISCOVERY_GROUP: &str = "discovery.k8s.io";

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ObjectRef {
    /// API group, empty for the core group.
    pub group: String,
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

impl ObjectRef {
    pub fn new(group: &str, kind: &str, meta: &ObjectMeta) -> Self {
        ObjectRef {
            group: group.to_owned(),
            kind: kind.to_owned(),
            namespace: meta.namespace().to_owned(),
            name: meta.name.clone(),
        }
    }

    /// `Kind.group` as Kubernetes spells a qualified kind (`Gateway.gateway.networking.k8s.io`),
    /// the kind alone for the core group.
    pub fn qualified_kind(&self) -> String {
        if self.group.is_empty() {
            self.kind.clone()
        } else {
            format!("{}.{}", self.kind, self.group)
        }
    }
}

/// `Kind namespace/name`, as diagnostics have always named resources.
impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// A resource type that knows its group and kind.
pub trait Kind {
    const GROUP: &'static str;
    const KIND: &'static str;
    fn meta(&self) -> &ObjectMeta;

    fn object_ref(&self) -> ObjectRef {
        ObjectRef::new(Self::GROUP, Self::KIND, self.meta())
    }
}

macro_rules! kinds {
    ($($type:ty => ($group:expr, $kind:literal)),* $(,)?) => {$(
        impl Kind for $type {
            const GROUP: &'static str = $group;
            const KIND: &'static str = $kind;
            fn meta(&self) -> &ObjectMeta {
                &self.metadata
            }
        }
    )*};
}

kinds! {
    Gateway => (ISTIO_GROUP, "Gateway"),
    VirtualService => (ISTIO_GROUP, "VirtualService"),
    DestinationRule => (ISTIO_GROUP, "DestinationRule"),
    ServiceEntry => (ISTIO_GROUP, "ServiceEntry"),
    Service => (CORE_GROUP, "Service"),
    Endpoints => (CORE_GROUP, "Endpoints"),
    Secret => (CORE_GROUP, "Secret"),
    ConfigMap => (CORE_GROUP, "ConfigMap"),
    Namespace => (CORE_GROUP, "Namespace"),
    EndpointSlice => (DISCOVERY_GROUP, "EndpointSlice"),
    GatewayClass => (GATEWAY_API_GROUP, "GatewayClass"),
    ApiGateway => (GATEWAY_API_GROUP, "Gateway"),
    HttpRoute => (GATEWAY_API_GROUP, "HTTPRoute"),
    GrpcRoute => (GATEWAY_API_GROUP, "GRPCRoute"),
    TlsRoute => (GATEWAY_API_GROUP, "TLSRoute"),
    TcpRoute => (GATEWAY_API_GROUP, "TCPRoute"),
    ReferenceGrant => (GATEWAY_API_GROUP, "ReferenceGrant"),
    BackendTlsPolicy => (GATEWAY_API_GROUP, "BackendTLSPolicy"),
    super::resources::security::AuthorizationPolicy => (ISTIO_SECURITY_GROUP, "AuthorizationPolicy"),
}
