//! VirtualService `http` routes → compiled routes: matches and actions.

use std::collections::BTreeMap;

use super::{Compiler, UNSUPPORTED_ACTIONS, name_of};
use crate::{
    config::{
        Diagnostic, Sourced,
        resources::{HttpMatchRequest, HttpRoute, StringMatch, VirtualService},
    },
    route_table::{RequestMatch, Route, StringMatcher},
    snapshot::{Forward, RouteAction, WeightedCluster},
};

impl Compiler<'_> {
    pub(super) fn route(
        &mut self,
        vs: &Sourced<VirtualService>,
        index: usize,
        route: &HttpRoute,
        port: u16,
    ) -> Option<Route<RouteAction>> {
        let meta = &vs.resource.metadata;
        let resource = format!("VirtualService {}", name_of(meta));
        let field = format!("spec.http[{index}]");
        let name = format!(
            "{}.{}",
            name_of(meta),
            route.name.clone().unwrap_or_else(|| index.to_string())
        );
        let mut matches = Vec::new();
        for (m_index, m) in route.matches.iter().enumerate() {
            match compile_match(m) {
                Ok(compiled) => matches.push(compiled),
                Err((sub_field, message)) => {
                    self.diagnostics.push(
                        Diagnostic::error(message)
                            .at(vs.location.clone())
                            .resource(&resource)
                            .field(format!("{field}.match[{m_index}].{sub_field}")),
                    );
                    return None;
                }
            }
        }
        for key in route.other.keys() {
            if !UNSUPPORTED_ACTIONS.contains(&key.as_str()) {
                self.diagnostics.push(
                    Diagnostic::warning(format!(
                        "`{key}` is not applied yet; the route forwards without it"
                    ))
                    .at(vs.location.clone())
                    .resource(&resource)
                    .field(format!("{field}.{key}")),
                );
            }
        }
        if let Some(key) = route
            .other
            .keys()
            .find(|k| UNSUPPORTED_ACTIONS.contains(&k.as_str()))
        {
            self.diagnostics.push(
                Diagnostic::warning(format!(
                    "`{key}` is not served yet; requests that reach this route get 501"
                ))
                .at(vs.location.clone())
                .resource(&resource)
                .field(format!("{field}.{key}")),
            );
            return Some(Route {
                name,
                matches,
                action: RouteAction::Unsupported(key.clone()),
            });
        }
        if route.route.is_empty() {
            self.diagnostics.push(
                Diagnostic::error("a route needs at least one destination under `route`")
                    .at(vs.location.clone())
                    .resource(&resource)
                    .field(format!("{field}.route")),
            );
            return None;
        }
        let mut clusters = Vec::new();
        for (d_index, destination) in route.route.iter().enumerate() {
            let d_field = format!("{field}.route[{d_index}].destination");
            let cluster = self.cluster(
                &destination.destination,
                meta.namespace(),
                vs.location.as_ref(),
                &resource,
                &d_field,
            );
            let weight = destination
                .weight
                .unwrap_or(if route.route.len() == 1 { 100 } else { 0 });
            clusters.push(WeightedCluster::new(weight, cluster));
        }
        let _ = port;
        Some(Route {
            name,
            matches,
            action: RouteAction::Forward(Box::new(Forward::to(clusters))),
        })
    }
}

pub(super) fn clone_route(route: &Route<RouteAction>) -> Route<RouteAction> {
    route.clone()
}

fn compile_match(m: &HttpMatchRequest) -> Result<RequestMatch, (String, String)> {
    let string = |field: &str,
                  s: &Option<StringMatch>,
                  ignore_case: bool|
     -> Result<Option<StringMatcher>, (String, String)> {
        s.as_ref()
            .map(|s| compile_string_match(s, ignore_case).map_err(|e| (field.to_owned(), e)))
            .transpose()
    };
    let map = |field: &str,
               entries: &BTreeMap<String, StringMatch>|
     -> Result<Vec<(String, StringMatcher)>, (String, String)> {
        entries
            .iter()
            .map(|(name, s)| {
                compile_string_match(s, false)
                    .map(|m| (name.to_ascii_lowercase(), m))
                    .map_err(|e| (format!("{field}.{name}"), e))
            })
            .collect()
    };
    let port = match m.port {
        Some(p) => Some(
            u16::try_from(p)
                .map_err(|_| ("port".to_owned(), format!("port {p} is not a TCP port")))?,
        ),
        None => None,
    };
    Ok(RequestMatch {
        path: string("uri", &m.uri, m.ignore_uri_case)?,
        method: string("method", &m.method, false)?,
        scheme: string("scheme", &m.scheme, false)?,
        authority: string("authority", &m.authority, false)?,
        headers: map("headers", &m.headers)?,
        without_headers: map("withoutHeaders", &m.without_headers)?,
        query_params: map("queryParams", &m.query_params)?,
        port,
    })
}

fn compile_string_match(s: &StringMatch, ignore_case: bool) -> Result<StringMatcher, String> {
    match (&s.exact, &s.prefix, &s.regex) {
        (Some(exact), None, None) => Ok(StringMatcher::Exact {
            value: exact.clone(),
            ignore_case,
        }),
        (None, Some(prefix), None) => Ok(StringMatcher::Prefix {
            value: prefix.clone(),
            ignore_case,
        }),
        (None, None, Some(regex)) => {
            StringMatcher::regex(regex, ignore_case).map_err(|e| format!("invalid regex: {e}"))
        }
        _ => Err("expected exactly one of exact, prefix or regex".to_owned()),
    }
}
