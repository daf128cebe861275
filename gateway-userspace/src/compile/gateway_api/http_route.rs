//! HTTPRoute rules → route table entries ordered by Gateway API precedence.

use std::collections::{BTreeMap, BTreeSet};

use super::{
    AnyRoute, ApiListener, AttachedRoute, Entry, Precedence, RuleSpec, Specificity, attach,
};
use crate::compile::{Built, hosts::covers, index::Index, name_of, sink::Sink};
use crate::{
    config::{
        Diagnostic, Sourced,
        resources::gateway_api::{
            HttpPathMatch, HttpRoute, HttpRouteMatch, HttpRouteRule, NameMatch, PathMatchType,
            ValueMatchType,
        },
    },
    route_table::{RequestMatch, Route, RouteTable, StringMatcher, VirtualHost},
    snapshot::{Redirect, RedirectPort, RouteAction},
};

/// What the HTTPRoute and GRPCRoute compilers differ in: how a rule's matches compile
/// and what policy a rule carries. The rest (attachment, rule actions, precedence) is
/// `route_entries`' for both.
pub(super) trait RuleRoute: AttachedRoute {
    type Rule;
    fn rules(&self) -> &[Self::Rule];
    fn rule_name(rule: &Self::Rule) -> Option<&String>;
    fn spec(rule: &Self::Rule) -> RuleSpec<'_>;
    /// Each of the rule's matches with its precedence, or the field under `matches[i]`
    /// at fault and why. A rule without matches matches every request.
    fn compile_matches(
        rule: &Self::Rule,
    ) -> Vec<Result<(RequestMatch, Specificity), (String, String)>>;
}

impl RuleRoute for HttpRoute {
    type Rule = HttpRouteRule;
    fn rules(&self) -> &[HttpRouteRule] {
        &self.spec.rules
    }
    fn rule_name(rule: &HttpRouteRule) -> Option<&String> {
        rule.name.as_ref()
    }
    fn spec(rule: &HttpRouteRule) -> RuleSpec<'_> {
        RuleSpec {
            filters: &rule.filters,
            backend_refs: &rule.backend_refs,
            timeouts: rule.timeouts.as_ref(),
            retry: rule.retry.as_ref(),
        }
    }
    fn compile_matches(
        rule: &HttpRouteRule,
    ) -> Vec<Result<(RequestMatch, Specificity), (String, String)>> {
        let everything = [HttpRouteMatch::default()];
        let written = match rule.matches.is_empty() {
            true => &everything[..],
            false => &rule.matches,
        };
        written
            .iter()
            .map(|m| {
                let compiled =
                    compile_http_match(m).map_err(|(sub, why)| (format!(".{sub}"), why))?;
                let specificity = Specificity::http(&compiled);
                Ok((compiled, specificity))
            })
            .collect()
    }
}

/// A route's rules → route table entries on the listeners it attaches to; a rule with
/// a match that does not compile is left out, with an error.
pub(super) fn route_entries<'a, R: RuleRoute>(
    ix: &Index<'a>,
    sink: &mut Sink,
    built: &mut Built,
    route: &'a Sourced<R>,
    listeners: &[ApiListener<'a>],
    entries: &mut Vec<(String, Entry)>,
) {
    let any = AnyRoute::of(route);
    let attached = attach::attachments(ix, sink, &any, listeners);
    if attached.is_empty() {
        return;
    }
    let resource = any.object_ref();
    for (r_index, rule) in route.resource.rules().iter().enumerate() {
        let field = format!("spec.rules[{r_index}]");
        let mut matches = Vec::new();
        let mut failed = false;
        for (m_index, compiled) in R::compile_matches(rule).into_iter().enumerate() {
            match compiled {
                Ok(compiled) => matches.push(compiled),
                Err((sub, message)) => {
                    sink.push(
                        Diagnostic::error(message)
                            .at(route.location.clone())
                            .object(&resource)
                            .field(format!("{field}.matches[{m_index}]{sub}")),
                    );
                    failed = true;
                }
            }
        }
        if failed {
            continue;
        }
        let action =
            super::rules::rule_action(ix, sink, built, &any, &resource, &field, R::spec(rule));
        let rule_name = R::rule_name(rule)
            .cloned()
            .unwrap_or_else(|| r_index.to_string());
        push_entries(
            entries, listeners, &attached, &any, &rule_name, r_index, matches, &action,
        );
    }
}

#[allow(clippy::too_many_arguments)]
pub(super) fn push_entries(
    entries: &mut Vec<(String, Entry)>,
    listeners: &[ApiListener<'_>],
    attached: &[(usize, String)],
    route: &AnyRoute<'_>,
    rule_name: &str,
    rule: usize,
    matches: Vec<(RequestMatch, Specificity)>,
    action: &RouteAction,
) {
    let name = format!("{}.{rule_name}", name_of(route.meta));
    for (m_index, (m, specificity)) in matches.into_iter().enumerate() {
        let precedence = Precedence {
            specificity,
            no_method: m.method.is_none(),
            headers: std::cmp::Reverse(m.headers.len()),
            query_params: std::cmp::Reverse(m.query_params.len()),
            created: route.meta.creation_timestamp.clone().unwrap_or_default(),
            name: name_of(route.meta),
            rule,
            matched: m_index,
        };
        for (listener, host) in attached {
            entries.push((
                host.clone(),
                Entry {
                    listener: *listener,
                    precedence: precedence.clone(),
                    route: Route {
                        name: name.clone(),
                        matches: vec![m.clone()],
                        action: redirect_to_listener_port(
                            action,
                            listeners.get(*listener).map(|l| l.port),
                        ),
                    },
                },
            ));
        }
    }
}

/// A RequestRedirect with neither `port` nor `scheme` goes to the listener's port, as
/// the spec asks (HTTPRouteRedirectPortAndScheme): `FromRequest`, which only that case
/// compiles to here, becomes the port of the listener the rule is served on (left out
/// of the Location when it is the scheme's own). The route's and its backendRefs'.
pub(super) fn redirect_to_listener_port(action: &RouteAction, port: Option<u16>) -> RouteAction {
    let mut action = action.clone();
    let Some(port) = port else {
        return action;
    };
    let fix = |redirect: &mut Redirect| {
        if redirect.port == RedirectPort::FromRequest {
            redirect.port = RedirectPort::Fixed(port);
        }
    };
    match &mut action {
        RouteAction::Redirect(redirect) => fix(redirect),
        RouteAction::Forward(forward) => {
            for cluster in &mut forward.clusters {
                if let Some(redirect) = &mut cluster.redirect {
                    fix(redirect);
                }
            }
        }
        RouteAction::DirectResponse(_) | RouteAction::Unsupported(_) => {}
    }
    action
}

/// One port's entries → its route table: a virtual host per hostname, its rules in
/// precedence order, then the rules of the wildcard hosts covering it on the same
/// listeners.
pub(super) fn route_table(entries: Vec<(String, &Entry)>) -> RouteTable<RouteAction> {
    let mut by_host: BTreeMap<String, Vec<&Entry>> = BTreeMap::new();
    for (host, entry) in entries {
        by_host.entry(host).or_default().push(entry);
    }
    for list in by_host.values_mut() {
        list.sort_by(|a, b| a.precedence.cmp(&b.precedence));
    }
    let wildcards: Vec<(&String, &Vec<&Entry>)> =
        by_host.iter().filter(|(h, _)| h.starts_with('*')).collect();
    let mut virtual_hosts = Vec::new();
    for (host, list) in &by_host {
        let own_listeners: BTreeSet<usize> = list.iter().map(|e| e.listener).collect();
        let mut routes: Vec<Route<RouteAction>> = list.iter().map(|e| e.route.clone()).collect();
        // Covering wildcards from the longest (most specific) down.
        let mut covering: Vec<&(&String, &Vec<&Entry>)> = wildcards
            .iter()
            .filter(|(w, _)| *w != host && covers(w, host))
            .collect();
        covering.sort_by_key(|(w, _)| std::cmp::Reverse(w.len()));
        for (_, wildcard_entries) in covering {
            routes.extend(
                wildcard_entries
                    .iter()
                    .filter(|e| own_listeners.contains(&e.listener))
                    .map(|e| e.route.clone()),
            );
        }
        virtual_hosts.push(VirtualHost {
            host: host.clone(),
            routes: routes.into(),
        });
    }
    RouteTable::new(virtual_hosts)
}

fn compile_http_match(m: &HttpRouteMatch) -> Result<RequestMatch, (String, String)> {
    let mut compiled = RequestMatch::default();
    let path = m.path.clone().unwrap_or(HttpPathMatch {
        match_type: PathMatchType::PathPrefix,
        value: "/".to_owned(),
    });
    if path.match_type != PathMatchType::RegularExpression && !path.value.starts_with('/') {
        return Err((
            "path.value".to_owned(),
            format!("path {:?} must start with /", path.value),
        ));
    }
    compiled.path = Some(match path.match_type {
        PathMatchType::Exact => StringMatcher::Exact {
            value: path.value.clone(),
            ignore_case: false,
        },
        PathMatchType::PathPrefix => StringMatcher::path_prefix(&path.value),
        PathMatchType::RegularExpression => StringMatcher::regex(&path.value, false)
            .map_err(|e| ("path.value".to_owned(), format!("invalid regex: {e}")))?,
    });
    compiled.headers = compile_name_matches(&m.headers, true)
        .map_err(|(sub, message)| (format!("headers{sub}"), message))?;
    compiled.query_params = compile_name_matches(&m.query_params, false)
        .map_err(|(sub, message)| (format!("queryParams{sub}"), message))?;
    compiled.method = m.method.map(|method| StringMatcher::Exact {
        value: method.as_str().to_owned(),
        ignore_case: false,
    });
    Ok(compiled)
}

/// Header (names case-insensitive) or query (case-sensitive) matches; the first entry of
/// a repeated name wins, as the spec says.
pub(super) fn compile_name_matches(
    matches: &[NameMatch],
    fold_case: bool,
) -> Result<Vec<(String, StringMatcher)>, (String, String)> {
    let mut compiled: Vec<(String, StringMatcher)> = Vec::new();
    for (index, m) in matches.iter().enumerate() {
        let name = if fold_case {
            m.name.to_ascii_lowercase()
        } else {
            m.name.clone()
        };
        if compiled.iter().any(|(n, _)| *n == name) {
            continue;
        }
        let matcher = match m.match_type {
            ValueMatchType::Exact => StringMatcher::Exact {
                value: m.value.clone(),
                ignore_case: false,
            },
            ValueMatchType::RegularExpression => StringMatcher::regex(&m.value, false)
                .map_err(|e| (format!("[{index}].value"), format!("invalid regex: {e}")))?,
        };
        compiled.push((name, matcher));
    }
    Ok(compiled)
}
