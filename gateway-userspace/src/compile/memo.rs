//! What one compile keeps for the next to reuse (`compile_reusing`), so that a change of
//! one VirtualService among thousands costs about one VirtualService's work, and an edit
//! of one `http` entry about one route's:
//!
//! - per VirtualService and port, its binding: the Gateways it is bound through there and
//!   the hosts their servers accept (the loop over every server and host). Valid while
//!   the VirtualService and the port's servers are the same allocations;
//! - per VirtualService and port, its compiled routes and the diagnostics compiling them
//!   gave, and which of those each `http` entry gave: an edited VirtualService takes the
//!   entries it did not edit from its previous entry (found by namespace and name);
//! - per cluster (by id), what is said of it when a compile first names it
//!   (`ClusterNotes`): the clusters carry over into the next compile, which does not make
//!   them again, and each route keeps which clusters it named (`Naming`) so that a route
//!   taken from the memo names them again. Where a full compile says such a warning
//!   depends on which route names the cluster first, so it is never part of a route's
//!   diagnostics.
//!
//! A VirtualService is known by its allocation: the reload's parse cache keeps it for as
//! long as its document's text is unchanged, even when the document moved in its file
//! (and the memo holds it, so the address cannot be reused by another). The caller
//! reuses only across changes of VirtualServices and endpoints (`reload`), which is what
//! the routes depend on beside the VirtualService itself and its bindings.

use std::{collections::HashMap, ops::Range, sync::Arc};

use rustc_hash::FxBuildHasher;

use super::{PortServers, name_of};
use crate::{
    config::{
        Diagnostic, Location, Sourced,
        resources::{Gateway, HttpRoute, VirtualService},
    },
    route_table::Route,
    snapshot::RouteAction,
};

#[derive(Default)]
pub struct RouteMemo {
    /// By (allocation, port).
    pub(super) entries: HashMap<(usize, u16), MemoEntry, FxBuildHasher>,
    /// By (allocation, port); valid while the port's servers are `servers`'.
    pub(super) bindings: HashMap<(usize, u16), BindingEntry, FxBuildHasher>,
    /// Each port's servers when its bindings were found.
    pub(super) servers: HashMap<u16, ServersSeen, FxBuildHasher>,
    /// How many VirtualService `http` entries the compile compiled, rather than took
    /// from the previous one.
    pub(super) compiled_routes: usize,
    /// By cluster id: what is said of each cluster when a compile first names it.
    pub(super) clusters: Arc<Vec<ClusterNotes>>,
}

/// What a compile says of a cluster at the first route that names it. A full compile
/// says it when it makes the cluster; a compile that reuses the cluster says it again,
/// at its own first route naming it, and nothing when no route names it.
#[derive(Clone, Debug, Default)]
pub(super) struct ClusterNotes {
    /// Said when it was made (a DestinationRule's warnings, a ServiceEntry's), with
    /// whether it is said at the naming route (`true`) or at its own object.
    pub(super) made: Vec<(Diagnostic, bool)>,
    /// Its endpoints' warnings (an address that is no IP address), read again with the
    /// endpoints at each endpoint update (`RouteMemo::endpoints_read`).
    pub(super) endpoints: Vec<Diagnostic>,
    /// A Service port's warning when it has no ready endpoints: said when its endpoint
    /// list is empty at the compile (which may be an endpoint update's list).
    pub(super) when_empty: Option<String>,
}

/// A cluster a route named, and the field that named it.
#[derive(Clone, Debug)]
pub(super) struct Naming {
    pub(super) cluster: usize,
    pub(super) field: String,
}

impl RouteMemo {
    /// How many VirtualService `http` entries the compile that made this memo compiled
    /// (the others it took from the previous compile's memo): what a reload logs.
    pub fn compiled_routes(&self) -> usize {
        self.compiled_routes
    }

    /// The endpoints of cluster `id` were read again (an endpoint update of the snapshot
    /// this memo's compile made), with these warnings.
    pub(super) fn endpoints_read(&mut self, id: usize, warnings: Vec<Diagnostic>) {
        let changed = self
            .clusters
            .get(id)
            .is_some_and(|notes| notes.endpoints != warnings);
        if changed && let Some(notes) = Arc::make_mut(&mut self.clusters).get_mut(id) {
            notes.endpoints = warnings;
        }
    }
}

/// The servers of one port, as (Gateway allocation, index in its `spec.servers`): a
/// Gateway that changed is another allocation. The Gateways are held so that their
/// addresses are not reused while the memo lives.
pub(super) struct ServersSeen {
    keys: Vec<(usize, usize)>,
    _gateways: Vec<Arc<Gateway>>,
}

impl ServersSeen {
    pub(super) fn of(servers: &PortServers<'_>) -> ServersSeen {
        ServersSeen {
            keys: servers
                .server_indices
                .iter()
                .map(|(gateway, index)| (Arc::as_ptr(&gateway.resource) as usize, *index))
                .collect(),
            _gateways: servers
                .server_indices
                .iter()
                .map(|(gateway, _)| Arc::clone(&gateway.resource))
                .collect(),
        }
    }

    pub(super) fn same_as(&self, other: &ServersSeen) -> bool {
        self.keys == other.keys
    }
}

/// A VirtualService's binding on one port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Binding {
    /// The Gateways (`namespace/name`) it is bound through on this port.
    pub(super) gateways: Vec<String>,
    /// The hosts their servers accept of its hosts; empty: not bound here (warned).
    pub(super) hosts: Vec<String>,
}

pub(super) struct BindingEntry {
    pub(super) _resource: Arc<VirtualService>,
    /// None: bound through no server on this port.
    pub(super) binding: Option<Arc<Binding>>,
}

/// Where an entry's `http[i]` went: its route's position in `routes` (none when it gave
/// no route), its diagnostics' in `diagnostics` and its namings' in `namings`.
#[derive(Clone)]
pub(super) struct Written {
    pub(super) route: Option<usize>,
    pub(super) diagnostics: Range<usize>,
    pub(super) namings: Range<usize>,
}

/// One VirtualService's compile on one port. Cloned for every VirtualService at every
/// reusing compile: what it compiled is shared.
#[derive(Clone)]
pub(super) struct MemoEntry {
    pub(super) resource: Arc<VirtualService>,
    /// Where its document started when it was compiled.
    pub(super) location: Option<Location>,
    pub(super) compiled: Arc<Compiled>,
}

pub(super) struct Compiled {
    /// The Gateways it was bound through: its routes' matches may name them.
    pub(super) gateways: Vec<String>,
    pub(super) routes: Arc<Vec<Route<RouteAction>>>,
    /// Not yet moved to their fields' lines (`Resources::locate` runs after the compile).
    pub(super) diagnostics: Vec<Diagnostic>,
    /// The clusters its routes named, in order (at its document, under `spec.http`).
    pub(super) namings: Vec<Naming>,
    /// By `http` index, up to the last one compiled (a catch-all ends the list).
    pub(super) written: Vec<Written>,
}

impl MemoEntry {
    /// This entry for the same VirtualService whose document now starts at `location`.
    /// Routes hold no lines, so they are kept whole; the diagnostics that point at the
    /// document (all of them, but for a DestinationRule's, which did not move: a moved
    /// DestinationRule is no route change, and nothing is reused then) move with it.
    pub(super) fn moved_to(&self, location: &Option<Location>) -> MemoEntry {
        let mut entry = self.clone();
        if entry.location != *location {
            if self
                .compiled
                .diagnostics
                .iter()
                .any(|d| d.location == self.location)
            {
                let mut diagnostics = self.compiled.diagnostics.clone();
                for diagnostic in &mut diagnostics {
                    if diagnostic.location == self.location {
                        diagnostic.location.clone_from(location);
                    }
                }
                entry.compiled = Arc::new(Compiled {
                    gateways: self.compiled.gateways.clone(),
                    routes: Arc::clone(&self.compiled.routes),
                    diagnostics,
                    namings: self.compiled.namings.clone(),
                    written: self.compiled.written.clone(),
                });
            }
            entry.location.clone_from(location);
        }
        entry
    }

    /// Which of this entry's `http` entries compiled what `route` at `index` of `vs`
    /// compiles to: the same index with the same text, or, when entries were added or
    /// removed before it, the one as far from the end (`shift`: how many more entries
    /// `vs` has). Each is taken once (`taken`), so its diagnostics are said once.
    pub(super) fn same_route(
        &self,
        index: usize,
        route: &HttpRoute,
        shift: isize,
        taken: &mut [bool],
    ) -> Option<usize> {
        let http = &self.resource.spec.http;
        let candidates = [Some(index), index.checked_add_signed(-shift)];
        candidates.into_iter().flatten().find(|&old| {
            let fits = old < self.compiled.written.len()
                && !taken.get(old).copied().unwrap_or(true)
                && http.get(old) == Some(route)
                && (old == index || self.renumberable(old));
            if fits && let Some(taken) = taken.get_mut(old) {
                *taken = true;
            }
            fits
        })
    }

    /// Whether what `http[old]` gave can be said of another index: its diagnostics are
    /// either about another object or name a field under `spec.http[old]`.
    fn renumberable(&self, old: usize) -> bool {
        let prefix = format!("spec.http[{old}]");
        let compiled = &self.compiled;
        compiled.written.get(old).is_some_and(|written| {
            compiled
                .diagnostics
                .get(written.diagnostics.clone())
                .unwrap_or_default()
                .iter()
                .all(|d| {
                    d.location != self.location
                        || d.field.as_deref().is_some_and(|f| under(f, &prefix))
                })
        })
    }

    /// What `http[old]` gave, for `http[index]` of `vs` (the same text): its route
    /// (renamed when it is known by its index), its diagnostics, at `vs`'s document and
    /// under `spec.http[index]`, and the clusters it named.
    pub(super) fn reuse(
        &self,
        old: usize,
        index: usize,
        vs: &Sourced<VirtualService>,
    ) -> (Option<Route<RouteAction>>, Vec<Diagnostic>, Vec<Naming>) {
        let compiled = &self.compiled;
        let Some(written) = compiled.written.get(old) else {
            return (None, Vec::new(), Vec::new());
        };
        let mut route = written
            .route
            .and_then(|at| compiled.routes.get(at))
            .map(super::routes::clone_route);
        let mut diagnostics = compiled
            .diagnostics
            .get(written.diagnostics.clone())
            .unwrap_or_default()
            .to_vec();
        let (from, to) = (format!("spec.http[{old}]"), format!("spec.http[{index}]"));
        let mut namings = compiled
            .namings
            .get(written.namings.clone())
            .unwrap_or_default()
            .to_vec();
        if old != index {
            for naming in &mut namings {
                if under(&naming.field, &from) {
                    naming.field.replace_range(..from.len(), &to);
                }
            }
        }
        for d in &mut diagnostics {
            if d.location != self.location {
                continue;
            }
            d.location.clone_from(&vs.location);
            if old != index
                && let Some(field) = &mut d.field
                && under(field, &from)
            {
                field.replace_range(..from.len(), &to);
            }
        }
        if old != index
            && let Some(route) = &mut route
            && vs
                .resource
                .spec
                .http
                .get(index)
                .is_some_and(|r| r.name.is_none())
        {
            route.name = format!("{}.{index}", name_of(&vs.resource.metadata));
        }
        (route, diagnostics, namings)
    }
}

/// Whether `field` is `prefix` or a field under it.
fn under(field: &str, prefix: &str) -> bool {
    field
        .strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
}
