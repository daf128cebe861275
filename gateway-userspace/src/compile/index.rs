//! The read-only side of a compile: the resources, who we are, the TLS state carried
//! between compiles, the previous compile's memo, and the lookups built over them once.
//!
//! Everything a front end reads comes from here through `&Index`; nothing here changes
//! while a compile runs, so lookups built on first use sit in `OnceCell`s and need no
//! `&mut`.

use std::{cell::OnceCell, collections::HashMap, sync::Arc};

use super::{
    Identity,
    memo::{MemoEntry, RouteMemo},
};
use crate::{
    authz::ListenerAuthz,
    config::{
        Resources, Sourced,
        resources::{EndpointSlice, SERVICE_NAME_LABEL},
    },
    tls::TlsState,
};

/// The previous compile's memo entries by (namespace, name, port).
type EntriesByName<'a> = HashMap<(&'a str, &'a str, u16), &'a MemoEntry>;

pub(super) struct Index<'a> {
    pub(super) resources: &'a Resources,
    pub(super) identity: &'a Identity,
    pub(super) tls: &'a TlsState,
    /// What the previous compile's VirtualServices gave, when it may be reused.
    pub(super) reusable: Option<&'a RouteMemo>,
    /// The EndpointSlices by Service, built when the first cluster needs it.
    slices: OnceCell<SliceIndex<'a>>,
    /// `reusable`'s entries by name, made when a VirtualService is not found there by
    /// allocation (it changed).
    previous_by_name: OnceCell<EntriesByName<'a>>,
    /// The policies selected onto every listener no `targetRefs` name, compiled once
    /// (`compile/authz.rs`).
    pub(super) workload_authz: OnceCell<Arc<ListenerAuthz>>,
}

impl<'a> Index<'a> {
    pub(super) fn new(
        resources: &'a Resources,
        identity: &'a Identity,
        tls: &'a TlsState,
        reusable: Option<&'a RouteMemo>,
    ) -> Self {
        Index {
            resources,
            identity,
            tls,
            reusable,
            slices: OnceCell::new(),
            previous_by_name: OnceCell::new(),
            workload_authz: OnceCell::new(),
        }
    }

    pub(super) fn slices(&self) -> &SliceIndex<'a> {
        self.slices.get_or_init(|| SliceIndex::new(self.resources))
    }

    /// The previous compile's entry for VirtualService `namespace/name` on `port`.
    pub(super) fn previous_by_name(
        &self,
        namespace: &str,
        name: &str,
        port: u16,
    ) -> Option<&'a MemoEntry> {
        let memo = self.reusable?;
        let by_name = self.previous_by_name.get_or_init(|| {
            memo.entries
                .iter()
                .map(|(&(_, port), entry)| {
                    let meta = &entry.resource.metadata;
                    ((meta.namespace(), meta.name.as_str(), port), entry)
                })
                .collect()
        });
        by_name.get(&(namespace, name, port)).copied()
    }
}

/// EndpointSlices by the Service they belong to (namespace, `kubernetes.io/service-name`):
/// a cluster's slices are then a lookup, not a scan of every slice (which made 1 000
/// Services × 10 000 slices most of a compile's time).
/// By namespace, then Service name.
type SlicesByService<'a> = HashMap<&'a str, HashMap<&'a str, Vec<&'a Sourced<EndpointSlice>>>>;

pub(in crate::compile) struct SliceIndex<'a>(SlicesByService<'a>);

impl<'a> SliceIndex<'a> {
    pub(in crate::compile) fn new(resources: &'a Resources) -> Self {
        let mut index: SlicesByService<'a> = HashMap::new();
        for slice in &resources.endpoint_slices {
            let meta = &slice.resource.metadata;
            if let Some(service) = meta.labels.get(SERVICE_NAME_LABEL) {
                index
                    .entry(meta.namespace())
                    .or_default()
                    .entry(service.as_str())
                    .or_default()
                    .push(slice);
            }
        }
        SliceIndex(index)
    }

    /// The slices of Service `namespace/name`, in load order.
    pub(in crate::compile) fn of(
        &self,
        namespace: &str,
        name: &str,
    ) -> &[&'a Sourced<EndpointSlice>] {
        self.0
            .get(namespace)
            .and_then(|services| services.get(name))
            .map_or(&[], Vec::as_slice)
    }
}
