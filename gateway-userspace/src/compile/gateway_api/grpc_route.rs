//! GRPCRoute rules → route table entries (service and method matches).

use super::http_route::{compile_name_matches, push_entries};
use super::{AnyRoute, ApiListener, Entry, RouteKind, RulePolicy, Specificity, attach};
use crate::compile::Compiler;
use crate::{
    config::{
        Diagnostic, Sourced,
        resources::gateway_api::{GrpcRoute, ValueMatchType},
    },
    route_table::{RequestMatch, StringMatcher},
};

impl<'a> Compiler<'a> {
    pub(super) fn grpc_route_entries(
        &mut self,
        route: &'a Sourced<GrpcRoute>,
        listeners: &[ApiListener<'a>],
        entries: &mut Vec<(String, Entry)>,
    ) {
        let spec = &route.resource.spec;
        let any = AnyRoute {
            kind: RouteKind::Grpc,
            meta: &route.resource.metadata,
            location: route.location.as_ref(),
            parent_refs: &spec.parent_refs,
            hostnames: &spec.hostnames,
        };
        let attached = attach::attachments(&self.index, &mut self.sink, &any, listeners);
        if attached.is_empty() {
            return;
        }
        let resource = any.object_ref();
        for (r_index, rule) in spec.rules.iter().enumerate() {
            let field = format!("spec.rules[{r_index}]");
            let mut matches = Vec::new();
            let mut failed = false;
            for (m_index, m) in rule.matches.iter().enumerate() {
                let mut compiled = RequestMatch::default();
                let path = m.method.as_ref().map(|method| {
                    let service = method.service.as_deref();
                    let name = method.method.as_deref();
                    match (method.match_type, service, name) {
                        (ValueMatchType::Exact, Some(s), Some(n)) => Ok(StringMatcher::Exact {
                            value: format!("/{s}/{n}"),
                            ignore_case: false,
                        }),
                        (ValueMatchType::Exact, Some(s), None) => Ok(StringMatcher::Prefix {
                            value: format!("/{s}/"),
                            ignore_case: false,
                        }),
                        (ValueMatchType::Exact, None, Some(n)) => {
                            StringMatcher::regex(&format!("/[^/]+/{}", regex::escape(n)), false)
                                .map_err(|e| e.to_string())
                        }
                        (ValueMatchType::RegularExpression, s, n) => StringMatcher::regex(
                            &format!("/{}/{}", s.unwrap_or("[^/]+"), n.unwrap_or("[^/]+")),
                            false,
                        )
                        .map_err(|e| format!("invalid regex: {e}")),
                        (_, None, None) => {
                            Err("a method match needs a service, a method or both".to_owned())
                        }
                    }
                });
                match path.transpose() {
                    Ok(path) => compiled.path = path,
                    Err(message) => {
                        self.sink.push(
                            Diagnostic::error(message)
                                .at(route.location.clone())
                                .object(&resource)
                                .field(format!("{field}.matches[{m_index}].method")),
                        );
                        failed = true;
                        continue;
                    }
                }
                match compile_name_matches(&m.headers, true) {
                    Ok(headers) => compiled.headers = headers,
                    Err((sub, message)) => {
                        self.sink.push(
                            Diagnostic::error(message)
                                .at(route.location.clone())
                                .object(&resource)
                                .field(format!("{field}.matches[{m_index}].headers{sub}")),
                        );
                        failed = true;
                        continue;
                    }
                }
                let method = m.method.as_ref();
                let specificity = Specificity::grpc(
                    method.and_then(|m| m.service.as_deref()),
                    method.and_then(|m| m.method.as_deref()),
                );
                matches.push((compiled, specificity));
            }
            if failed {
                continue;
            }
            if matches.is_empty() {
                matches.push((RequestMatch::default(), Specificity::grpc(None, None)));
            }
            let action = self.rule_action(
                &any,
                &resource,
                &field,
                &rule.filters,
                &rule.backend_refs,
                RulePolicy::default(),
            );
            let rule_name = rule.name.clone().unwrap_or_else(|| r_index.to_string());
            push_entries(
                entries, listeners, &attached, &any, &rule_name, r_index, matches, &action,
            );
        }
    }
}
