//! The resource types the fake serves: core kinds always, custom resources per test.

/// One served kind. Custom resources served in several versions share one storage: an
/// object written through any version is read back through every version, as with a CRD
/// whose versions have no schema differences.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    /// API group, "" for the core group.
    pub group: &'static str,
    /// Served versions, the storage (preferred) version first.
    pub versions: &'static [&'static str],
    pub kind: &'static str,
    pub plural: &'static str,
    pub namespaced: bool,
    /// Whether `{name}/status` is a subresource (PUT of the main resource ignores status).
    pub status_subresource: bool,
}

impl Resource {
    pub fn singular(&self) -> String {
        self.kind.to_ascii_lowercase()
    }

    pub fn list_kind(&self) -> String {
        format!("{}List", self.kind)
    }

    pub fn api_version(&self, version: &str) -> String {
        if self.group.is_empty() {
            version.to_string()
        } else {
            format!("{}/{}", self.group, version)
        }
    }

    /// Storage key shared by every version of the kind.
    pub(crate) fn key(&self) -> ResourceKey {
        ResourceKey {
            group: self.group,
            plural: self.plural,
        }
    }

    pub(crate) fn serves(&self, group: &str, version: &str) -> bool {
        self.group == group && self.versions.contains(&version)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct ResourceKey {
    pub(crate) group: &'static str,
    pub(crate) plural: &'static str,
}

const fn core(
    group: &'static str,
    version: &'static [&'static str],
    kind: &'static str,
    plural: &'static str,
    namespaced: bool,
    status_subresource: bool,
) -> Resource {
    Resource {
        group,
        versions: version,
        kind,
        plural,
        namespaced,
        status_subresource,
    }
}

/// The Namespace kind: objects of namespaced kinds need theirs to exist.
pub(crate) const NAMESPACE: &Resource = &CORE[0];

/// Always served, as on any cluster.
pub(crate) const CORE: &[Resource] = &[
    core("", &["v1"], "Namespace", "namespaces", false, true),
    core("", &["v1"], "Service", "services", true, true),
    core("", &["v1"], "Secret", "secrets", true, false),
    core("", &["v1"], "Pod", "pods", true, true),
    core("", &["v1"], "Endpoints", "endpoints", true, false),
    core("", &["v1"], "ConfigMap", "configmaps", true, false),
    core(
        "discovery.k8s.io",
        &["v1"],
        "EndpointSlice",
        "endpointslices",
        true,
        false,
    ),
    core(
        "coordination.k8s.io",
        &["v1"],
        "Lease",
        "leases",
        true,
        false,
    ),
];

const ISTIO: &str = "networking.istio.io";
const ISTIO_VERSIONS: &[&str] = &["v1", "v1beta1", "v1alpha3"];
const GATEWAY_API: &str = "gateway.networking.k8s.io";

/// The custom resources a test can install or leave out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Crd {
    IstioGateway,
    VirtualService,
    DestinationRule,
    ServiceEntry,
    GatewayClass,
    Gateway,
    HttpRoute,
    GrpcRoute,
    ReferenceGrant,
    TlsRoute,
    TcpRoute,
    AuthorizationPolicy,
    BackendTlsPolicy,
}

impl Crd {
    pub const ALL: [Crd; 13] = [
        Crd::IstioGateway,
        Crd::VirtualService,
        Crd::DestinationRule,
        Crd::ServiceEntry,
        Crd::GatewayClass,
        Crd::Gateway,
        Crd::HttpRoute,
        Crd::GrpcRoute,
        Crd::ReferenceGrant,
        Crd::TlsRoute,
        Crd::TcpRoute,
        Crd::AuthorizationPolicy,
        Crd::BackendTlsPolicy,
    ];

    pub fn resource(self) -> Resource {
        let crd = |group, versions, kind, plural, namespaced| Resource {
            group,
            versions,
            kind,
            plural,
            namespaced,
            status_subresource: true,
        };
        match self {
            Crd::IstioGateway => crd(ISTIO, ISTIO_VERSIONS, "Gateway", "gateways", true),
            Crd::VirtualService => crd(
                ISTIO,
                ISTIO_VERSIONS,
                "VirtualService",
                "virtualservices",
                true,
            ),
            Crd::DestinationRule => crd(
                ISTIO,
                ISTIO_VERSIONS,
                "DestinationRule",
                "destinationrules",
                true,
            ),
            Crd::ServiceEntry => crd(
                ISTIO,
                ISTIO_VERSIONS,
                "ServiceEntry",
                "serviceentries",
                true,
            ),
            Crd::GatewayClass => crd(
                GATEWAY_API,
                &["v1", "v1beta1"],
                "GatewayClass",
                "gatewayclasses",
                false,
            ),
            Crd::Gateway => crd(GATEWAY_API, &["v1", "v1beta1"], "Gateway", "gateways", true),
            Crd::HttpRoute => crd(
                GATEWAY_API,
                &["v1", "v1beta1"],
                "HTTPRoute",
                "httproutes",
                true,
            ),
            Crd::GrpcRoute => crd(GATEWAY_API, &["v1"], "GRPCRoute", "grpcroutes", true),
            Crd::ReferenceGrant => crd(
                GATEWAY_API,
                &["v1", "v1beta1"],
                "ReferenceGrant",
                "referencegrants",
                true,
            ),
            Crd::TlsRoute => crd(
                GATEWAY_API,
                &["v1alpha3", "v1alpha2"],
                "TLSRoute",
                "tlsroutes",
                true,
            ),
            Crd::TcpRoute => crd(
                GATEWAY_API,
                &["v1alpha2", "v1alpha3"],
                "TCPRoute",
                "tcproutes",
                true,
            ),
            Crd::AuthorizationPolicy => crd(
                "security.istio.io",
                &["v1", "v1beta1"],
                "AuthorizationPolicy",
                "authorizationpolicies",
                true,
            ),
            Crd::BackendTlsPolicy => crd(
                GATEWAY_API,
                &["v1", "v1alpha3"],
                "BackendTLSPolicy",
                "backendtlspolicies",
                true,
            ),
        }
    }
}

impl Resource {
    /// Whether `metadata.generation` is maintained: custom resources (and workloads, which
    /// the fake does not serve); core objects like Secrets and Services have none.
    pub(crate) fn tracks_generation(&self) -> bool {
        !matches!(self.group, "" | "discovery.k8s.io" | "coordination.k8s.io")
    }
}
