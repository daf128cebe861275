//! ReferenceGrants: whether an object in one namespace may name one in another (a route's
//! backend, a Gateway's certificate Secret or CA ConfigMap).

use super::{AnyRoute, GATEWAY_API_GROUP};
use crate::compile::index::Index;

impl<'a> Index<'a> {
    /// Does a ReferenceGrant in `namespace` let this route refer to Service `name`?
    pub(super) fn reference_granted(
        &self,
        route: &AnyRoute<'_>,
        namespace: &str,
        name: &str,
    ) -> bool {
        self.resources.reference_grants.iter().any(|grant| {
            grant.resource.metadata.namespace() == namespace
                && grant.resource.spec.from.iter().any(|from| {
                    from.group == GATEWAY_API_GROUP
                        && from.kind == route.kind.name()
                        && from.namespace == route.meta.namespace()
                })
                && grant.resource.spec.to.iter().any(|to| {
                    to.group.is_empty()
                        && to.kind == "Service"
                        && to.name.as_deref().is_none_or(|n| n == name)
                })
        })
    }

    /// Whether a ReferenceGrant in `target_namespace` lets Gateways of
    /// `gateway_namespace` refer to the core `kind` object `name`.
    pub(super) fn reference_granted_to(
        &self,
        gateway_namespace: &str,
        target_namespace: &str,
        kind: &str,
        name: &str,
    ) -> bool {
        self.resources.reference_grants.iter().any(|grant| {
            grant.resource.metadata.namespace() == target_namespace
                && grant.resource.spec.from.iter().any(|from| {
                    from.group == GATEWAY_API_GROUP
                        && from.kind == "Gateway"
                        && from.namespace == gateway_namespace
                })
                && grant.resource.spec.to.iter().any(|to| {
                    to.group.is_empty()
                        && to.kind == kind
                        && to.name.as_deref().is_none_or(|n| n == name)
                })
        })
    }

    pub(super) fn secret_reference_granted(
        &self,
        gateway_namespace: &str,
        secret_namespace: &str,
        name: &str,
    ) -> bool {
        self.resources.reference_grants.iter().any(|grant| {
            grant.resource.metadata.namespace() == secret_namespace
                && grant.resource.spec.from.iter().any(|from| {
                    from.group == GATEWAY_API_GROUP
                        && from.kind == "Gateway"
                        && from.namespace == gateway_namespace
                })
                && grant.resource.spec.to.iter().any(|to| {
                    to.group.is_empty()
                        && to.kind == "Secret"
                        && to.name.as_deref().is_none_or(|n| n == name)
                })
        })
    }
}
