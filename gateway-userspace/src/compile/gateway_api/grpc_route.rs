//! GRPCRoute rules → route table entries (service and method matches).

use super::http_route::{RuleRoute, compile_name_matches};
use super::{RuleSpec, Specificity};
use crate::{
    config::resources::gateway_api::{GrpcRoute, GrpcRouteMatch, GrpcRouteRule, ValueMatchType},
    route_table::{RequestMatch, StringMatcher},
};

impl RuleRoute for GrpcRoute {
    type Rule = GrpcRouteRule;
    fn rules(&self) -> &[GrpcRouteRule] {
        &self.spec.rules
    }
    fn rule_name(rule: &GrpcRouteRule) -> Option<&String> {
        rule.name.as_ref()
    }
    /// GRPCRoute rules have neither timeouts nor retry.
    fn spec(rule: &GrpcRouteRule) -> RuleSpec<'_> {
        RuleSpec {
            filters: &rule.filters,
            backend_refs: &rule.backend_refs,
            timeouts: None,
            retry: None,
        }
    }
    fn compile_matches(
        rule: &GrpcRouteRule,
    ) -> Vec<Result<(RequestMatch, Specificity), (String, String)>> {
        if rule.matches.is_empty() {
            return vec![Ok((RequestMatch::default(), Specificity::grpc(None, None)))];
        }
        rule.matches.iter().map(compile_grpc_match).collect()
    }
}

/// A GRPCRoute match: its method as a path match, its headers.
fn compile_grpc_match(m: &GrpcRouteMatch) -> Result<(RequestMatch, Specificity), (String, String)> {
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
            (_, None, None) => Err("a method match needs a service, a method or both".to_owned()),
        }
    });
    compiled.path = path
        .transpose()
        .map_err(|message| (".method".to_owned(), message))?;
    compiled.headers = compile_name_matches(&m.headers, true)
        .map_err(|(sub, message)| (format!(".headers{sub}"), message))?;
    let method = m.method.as_ref();
    let specificity = Specificity::grpc(
        method.and_then(|m| m.service.as_deref()),
        method.and_then(|m| m.method.as_deref()),
    );
    Ok((compiled, specificity))
}
