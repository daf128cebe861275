//! A port's route table from the VirtualServices bound to it: hosts in first-seen order,
//! several VirtualServices of one host concatenated oldest first with catch-alls last,
//! routes after a catch-all dropped, `tls.httpsRedirect` servers answering 301; each
//! VirtualService's routes taken from the previous compile's memo where they still apply.

use std::{collections::HashMap, sync::Arc};

use super::{
    PortServers, bind::binding, delegate, http_routes, http_routes::https_redirect, matches,
};
use crate::{
    compile::{Built, hosts::intersect_hosts, index::Index, memo, routes, sink::Sink},
    config::{Diagnostic, Kind, Sourced, resources::VirtualService},
    route_table::{Route, RouteTable, VirtualHost},
    snapshot::RouteAction,
};

pub(super) fn route_table<'a>(
    ix: &Index<'a>,
    sink: &mut Sink,
    built: &mut Built,
    port: u16,
    servers: &PortServers<'a>,
    virtual_services: &[&'a Sourced<VirtualService>],
) -> RouteTable<RouteAction> {
    // host → routes, in first-seen host order so output is stable.
    let mut hosts: Vec<(String, Arc<Vec<Route<RouteAction>>>)> = Vec::new();
    // host → index in `hosts`: thousands of VirtualServices must not scan the list.
    let mut host_index: HashMap<String, usize> = HashMap::new();
    // Bindings found against other servers are not this port's.
    let seen = memo::ServersSeen::of(servers);
    let bindings_valid = ix
        .reusable
        .and_then(|memo| memo.servers.get(&port))
        .is_some_and(|previous| previous.same_as(&seen));
    built.memo.servers.insert(port, seen);
    for vs in virtual_services {
        let Some(binding) = binding(ix, sink, built, vs, port, servers, bindings_valid) else {
            continue;
        };
        let routes = virtual_service_routes(ix, sink, built, vs, port, &binding.gateways);
        for host in &binding.hosts {
            match host_index.get(host).and_then(|&i| hosts.get_mut(i)) {
                // Several VirtualServices for one host: routes concatenate oldest
                // first, and catch-all routes move to the end so that an older
                // VirtualService's catch-all does not shadow a newer one's specific
                // routes (Istio's CombineVHostRoutes).
                Some((_, existing)) => {
                    let mut combined: Vec<Route<RouteAction>> = Vec::new();
                    let mut catch_alls: Vec<Route<RouteAction>> = Vec::new();
                    for route in existing.iter().chain(routes.iter()) {
                        let route = routes::clone_route(route);
                        if is_catch_all(&route) {
                            catch_alls.push(route);
                        } else {
                            combined.push(route);
                        }
                    }
                    combined.extend(catch_alls);
                    *existing = Arc::new(combined);
                }
                // The common case, one VirtualService per host: its routes as they
                // are, shared with the memo.
                None => {
                    host_index.insert(host.clone(), hosts.len());
                    hosts.push((host.clone(), Arc::clone(&routes)));
                }
            }
        }
    }
    // Istio's `tls.httpsRedirect`: every request to such a server's hosts gets 301,
    // whether or not a VirtualService is bound to them.
    let redirect_hosts: Vec<&str> = servers
        .servers
        .iter()
        .zip(&servers.server_indices)
        .filter(|(_, (gateway, index))| {
            gateway
                .resource
                .spec
                .servers
                .get(*index)
                .and_then(|s| s.tls.as_ref())
                .is_some_and(|t| t.https_redirect)
        })
        .flat_map(|((_, server_hosts), _)| server_hosts.iter().map(|h| h.host.as_str()))
        .collect();
    for (host, routes) in &mut hosts {
        if redirect_hosts
            .iter()
            .any(|server_host| intersect_hosts(host, server_host).as_deref() == Some(host))
        {
            *routes = Arc::new(vec![https_redirect(host)]);
        }
    }
    for server_host in redirect_hosts {
        if !host_index.contains_key(server_host) {
            host_index.insert(server_host.to_owned(), hosts.len());
            hosts.push((
                server_host.to_owned(),
                Arc::new(vec![https_redirect(server_host)]),
            ));
        }
    }
    RouteTable::new(
        hosts
            .into_iter()
            .map(|(host, routes)| VirtualHost { host, routes })
            .collect(),
    )
}

/// A VirtualService's HTTP routes as compiled for `port`: taken from the previous
/// compile's memo when it has them, compiled (and remembered) otherwise; a changed
/// VirtualService takes the `http` entries it did not change from its previous
/// compile (`memo::MemoEntry::same_route`).
fn virtual_service_routes<'a>(
    ix: &Index<'a>,
    sink: &mut Sink,
    built: &mut Built,
    vs: &'a Sourced<VirtualService>,
    port: u16,
    gateways: &[String],
) -> Arc<Vec<Route<RouteAction>>> {
    let key = (Arc::as_ptr(&vs.resource) as usize, port);
    // A root's routes depend on its delegates too, which the memo does not follow.
    let delegates = vs.resource.spec.http.iter().any(|r| r.delegate.is_some());
    if !delegates && let Some(entry) = ix.reusable.and_then(|memo| memo.entries.get(&key)) {
        // A document that moved in its file (an earlier one grew or shrank) keeps its
        // allocation (`config::documents`): its diagnostics must say the new line.
        let entry = entry.moved_to(&vs.location);
        sink.diagnostics
            .0
            .extend(entry.compiled.diagnostics.iter().cloned());
        built.clusters.name_again(vs, &entry.compiled.namings);
        let routes = Arc::clone(&entry.compiled.routes);
        built.memo.entries.insert(key, entry);
        return routes;
    }
    let previous = if delegates {
        None
    } else {
        previous_entry(ix, vs, port, gateways)
    };
    let before = sink.diagnostics.0.len();
    // The namings of routes compiled elsewhere (Gateway API, TLS) are kept by no one.
    built.clusters.namings.clear();
    let namings_before = built.clusters.namings.len();
    let target = matches::MatchTarget {
        port,
        gateways,
        labels: &ix.identity.labels,
        namespace: &ix.identity.namespace,
    };
    let written = delegate::with_delegates(ix, sink, vs);
    // How many more `http` entries than before: entries after an added or removed
    // one are found as far from the end as they were.
    let shift = previous.map_or(0, |p| {
        written.len() as isize - p.resource.spec.http.len() as isize
    });
    let mut taken = vec![false; previous.map_or(0, |p| p.compiled.written.len())];
    let mut routes = Vec::new();
    let mut entries = Vec::new();
    for (position, (owner, index, route)) in written.iter().enumerate() {
        let from = sink.diagnostics.0.len() - before;
        let namings_from = built.clusters.namings.len() - namings_before;
        let same =
            previous.and_then(|p| Some((p, p.same_route(*index, route, shift, &mut taken)?)));
        let compiled = match same {
            Some((previous, old)) => {
                let (route, diagnostics, namings) = previous.reuse(old, *index, vs);
                sink.diagnostics.0.extend(diagnostics);
                built.clusters.name_again(vs, &namings);
                built.clusters.namings.extend(namings);
                route
            }
            None => {
                built.memo.compiled_routes += 1;
                http_routes::route(ix, sink, built, owner, *index, route, &target)
            }
        };
        entries.push(memo::Written {
            route: compiled.as_ref().map(|_| routes.len()),
            diagnostics: from..sink.diagnostics.0.len() - before,
            namings: namings_from..built.clusters.namings.len() - namings_before,
        });
        let Some(route) = compiled else {
            continue;
        };
        let catch_all = is_catch_all(&route);
        routes.push(route);
        // Istio stops at a route that accepts every request: later ones are dropped.
        if catch_all && let Some((later, later_index, _)) = written.get(position + 1) {
            sink.push(
                    Diagnostic::warning(format!(
                        "never reached: spec.http[{index}] of {} before it accepts every request; Istio drops the routes after it",
                        owner.resource.object_ref()
                    ))
                    .at(later.location.clone())
                    .object(&later.resource.object_ref())
                    .field(format!("spec.http[{later_index}]")),
                );
            break;
        }
    }
    let routes = Arc::new(routes);
    if delegates {
        built.clusters.namings.truncate(namings_before);
        return routes;
    }
    let entry = memo::MemoEntry {
        resource: Arc::clone(&vs.resource),
        location: vs.location.clone(),
        compiled: Arc::new(memo::Compiled {
            gateways: gateways.to_vec(),
            routes: Arc::clone(&routes),
            diagnostics: sink
                .diagnostics
                .0
                .get(before..)
                .unwrap_or_default()
                .to_vec(),
            namings: built.clusters.namings.split_off(namings_before),
            written: entries,
        }),
    };
    built.memo.entries.insert(key, entry);
    routes
}

/// The previous compile's entry for a VirtualService of `vs`'s namespace and name on
/// `port`, bound through the same Gateways, when this compile reuses one.
fn previous_entry<'a>(
    ix: &Index<'a>,
    vs: &Sourced<VirtualService>,
    port: u16,
    gateways: &[String],
) -> Option<&'a memo::MemoEntry> {
    let meta = &vs.resource.metadata;
    ix.previous_by_name(meta.namespace(), &meta.name, port)
        .filter(|entry| entry.compiled.gateways == gateways)
}

/// A route that accepts every request: no match, or a match on nothing but the `/`
/// prefix (or a regex that accepts any path).
fn is_catch_all(route: &Route<RouteAction>) -> bool {
    use crate::route_table::StringMatcher;
    route.matches.is_empty()
        || route.matches.iter().any(|m| {
            let any_path = match &m.path {
                None => true,
                Some(StringMatcher::Prefix { value, .. }) => value == "/",
                Some(StringMatcher::PathPrefix { value }) => value.is_empty(),
                Some(StringMatcher::Regex(re)) => matches!(re.as_str(), "^(?:.*)$" | "^(?:/.*)$"),
                Some(StringMatcher::Exact { .. }) => false,
                Some(StringMatcher::Present) => true,
            };
            any_path
                && m.method.is_none()
                && m.scheme.is_none()
                && m.authority.is_none()
                && m.headers.is_empty()
                && m.without_headers.is_empty()
                && m.query_params.is_empty()
                && m.port.is_none()
        })
}
