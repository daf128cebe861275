//! What the gateway watches: every kind it compiles, where it lives and which versions of
//! it we read, most preferred first. RBAC (config/kubernetes/) must grant list and watch
//! on each of these; tests/manifests.rs checks that against this table.

/// Which objects of a kind are watched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// A cluster-scoped kind: all of them.
    Cluster,
    /// A namespaced kind: in `--watch-namespaces`, or everywhere.
    Namespaced,
    /// Secrets: only in the gateway's namespace and `--secret-namespaces` (key material
    /// read on every node: the narrower the better).
    Secrets,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WatchedKind {
    /// API group; empty for the core group.
    pub group: &'static str,
    pub kind: &'static str,
    /// The resource's URL name.
    pub plural: &'static str,
    /// Versions we can read, most preferred first; the first one the cluster serves is
    /// watched.
    pub versions: &'static [&'static str],
    pub scope: Scope,
}

impl WatchedKind {
    /// `kind.group` (or just `kind` for the core group), for logs and metric labels.
    pub fn label(&self) -> String {
        if self.group.is_empty() {
            self.kind.to_owned()
        } else {
            format!("{}.{}", self.kind, self.group)
        }
    }
}

const ISTIO: &str = "networking.istio.io";
const ISTIO_VERSIONS: &[&str] = &["v1", "v1beta1", "v1alpha3"];
const GATEWAY_API: &str = "gateway.networking.k8s.io";
const ISTIO_SECURITY: &str = "security.istio.io";

const fn kind(
    group: &'static str,
    kind: &'static str,
    plural: &'static str,
    versions: &'static [&'static str],
    scope: Scope,
) -> WatchedKind {
    WatchedKind {
        group,
        kind,
        plural,
        versions,
        scope,
    }
}

/// Every kind the gateway watches.
pub const WATCHED: [WatchedKind; 18] = [
    kind(
        ISTIO,
        "Gateway",
        "gateways",
        ISTIO_VERSIONS,
        Scope::Namespaced,
    ),
    kind(
        ISTIO,
        "VirtualService",
        "virtualservices",
        ISTIO_VERSIONS,
        Scope::Namespaced,
    ),
    kind(
        ISTIO,
        "DestinationRule",
        "destinationrules",
        ISTIO_VERSIONS,
        Scope::Namespaced,
    ),
    kind(
        ISTIO,
        "ServiceEntry",
        "serviceentries",
        ISTIO_VERSIONS,
        Scope::Namespaced,
    ),
    kind(
        ISTIO_SECURITY,
        "AuthorizationPolicy",
        "authorizationpolicies",
        &["v1", "v1beta1"],
        Scope::Namespaced,
    ),
    kind(
        GATEWAY_API,
        "GatewayClass",
        "gatewayclasses",
        &["v1", "v1beta1"],
        Scope::Cluster,
    ),
    kind(
        GATEWAY_API,
        "Gateway",
        "gateways",
        &["v1", "v1beta1"],
        Scope::Namespaced,
    ),
    kind(
        GATEWAY_API,
        "HTTPRoute",
        "httproutes",
        &["v1", "v1beta1"],
        Scope::Namespaced,
    ),
    kind(
        GATEWAY_API,
        "GRPCRoute",
        "grpcroutes",
        &["v1", "v1alpha2"],
        Scope::Namespaced,
    ),
    kind(
        GATEWAY_API,
        "TLSRoute",
        "tlsroutes",
        &["v1", "v1alpha3", "v1alpha2"],
        Scope::Namespaced,
    ),
    kind(
        GATEWAY_API,
        "TCPRoute",
        "tcproutes",
        &["v1", "v1alpha2"],
        Scope::Namespaced,
    ),
    kind(
        GATEWAY_API,
        "ReferenceGrant",
        "referencegrants",
        &["v1", "v1beta1", "v1alpha2"],
        Scope::Namespaced,
    ),
    kind(
        GATEWAY_API,
        "BackendTLSPolicy",
        "backendtlspolicies",
        &["v1", "v1alpha3"],
        Scope::Namespaced,
    ),
    kind("", "Service", "services", &["v1"], Scope::Namespaced),
    kind(
        "discovery.k8s.io",
        "EndpointSlice",
        "endpointslices",
        &["v1"],
        Scope::Namespaced,
    ),
    kind("", "Namespace", "namespaces", &["v1"], Scope::Cluster),
    kind("", "Secret", "secrets", &["v1"], Scope::Secrets),
    // CA bundles for frontend client-certificate validation: watched where Secrets are
    // (a cluster's ConfigMaps are many and mostly not ours).
    kind("", "ConfigMap", "configmaps", &["v1"], Scope::Secrets),
];

/// Whether objects of this kind only carry endpoints (a change to them takes the cheap
/// path that recompiles nothing).
pub fn is_endpoints(kind: &WatchedKind) -> bool {
    kind.kind == "EndpointSlice"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_the_loader_reads_from_files_is_watched() {
        // The loader's table of Gateway API versions and ours must not drift apart.
        for (kind, versions) in crate::config::GATEWAY_API_VERSIONS {
            let watched = WATCHED
                .iter()
                .find(|w| w.group == GATEWAY_API && w.kind == kind)
                .unwrap_or_else(|| panic!("{kind} is not watched"));
            for v in watched.versions {
                assert!(versions.contains(v), "{kind} {v} is watched but not parsed");
            }
        }
    }
}
