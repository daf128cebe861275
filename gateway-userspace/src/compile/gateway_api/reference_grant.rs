//! ReferenceGrants: whether an object in one namespace may name one in another (a route's
//! backend, a Gateway's certificate Secret or CA ConfigMap).

use super::GATEWAY_API_GROUP;
use crate::compile::index::Index;

/// A reference across namespaces: a Gateway API `from_kind` object in `from_namespace`
/// names the core `to_kind` object `name` in `to_namespace`.
pub(super) struct Reference<'r> {
    pub(super) from_kind: &'r str,
    pub(super) from_namespace: &'r str,
    pub(super) to_kind: &'r str,
    pub(super) to_namespace: &'r str,
    pub(super) name: &'r str,
}

impl Index<'_> {
    /// Whether a ReferenceGrant in the target's namespace allows `reference`.
    pub(super) fn reference_granted(&self, reference: &Reference<'_>) -> bool {
        self.resources.reference_grants.iter().any(|grant| {
            grant.resource.metadata.namespace() == reference.to_namespace
                && grant.resource.spec.from.iter().any(|from| {
                    from.group == GATEWAY_API_GROUP
                        && from.kind == reference.from_kind
                        && from.namespace == reference.from_namespace
                })
                && grant.resource.spec.to.iter().any(|to| {
                    to.group.is_empty()
                        && to.kind == reference.to_kind
                        && to.name.as_deref().is_none_or(|n| n == reference.name)
                })
        })
    }
}
