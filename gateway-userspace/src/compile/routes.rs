//! VirtualService `http` routes → compiled routes: matches and actions (redirect, direct
//! response, rewrite, header operations, timeout, retries, fault, mirrors, CORS).

use std::{collections::BTreeMap, time::Duration};

use http::{HeaderName, HeaderValue, header};
use regex::Regex;
use serde::Deserialize;

use super::{
    Compiler,
    istio_match::{MatchTarget, applies, compile_match, compile_string_match},
    name_of,
};
use crate::{
    config::{
        Diagnostic, Kind, ObjectRef, Sourced,
        resources::{
            Destination, HeaderOperations, Headers, HttpRoute, StringMatch, VirtualService,
        },
    },
    route_table::{Route, StringMatcher},
    snapshot::{
        CorsPolicy, DirectResponse, Fault, FaultAbort, FaultDelay, Forward, HeaderOps,
        HeaderPolicy, LocalCors, Mirror, PathRewrite, Redirect, RedirectPort, RetryOn, RetryPolicy,
        Rewrite, RouteAction, WeightedCluster,
    },
};

impl Compiler<'_> {
    pub(super) fn route(
        &mut self,
        vs: &Sourced<VirtualService>,
        index: usize,
        route: &HttpRoute,
        target: &MatchTarget,
    ) -> Option<Route<RouteAction>> {
        let meta = &vs.resource.metadata;
        let resource = vs.resource.object_ref();
        let field = format!("spec.http[{index}]");
        let name = format!(
            "{}.{}",
            name_of(meta),
            route.name.clone().unwrap_or_else(|| index.to_string())
        );
        let vs_namespace = meta.namespace();
        let mut matches = Vec::new();
        for (m_index, m) in route.matches.iter().enumerate() {
            // Istio leaves out, for this gateway, a match meant for other proxies.
            if !applies(m, vs_namespace, target) {
                continue;
            }
            match compile_match(m) {
                Ok(compiled) => matches.push(compiled),
                Err((sub_field, message)) => {
                    self.diagnostics.push(
                        Diagnostic::error(message)
                            .at(vs.location.clone())
                            .object(&resource)
                            .field(format!("{field}.match[{m_index}].{sub_field}")),
                    );
                    return None;
                }
            }
        }
        // Every match was for someone else: the route is not this gateway's at all.
        if !route.matches.is_empty() && matches.is_empty() {
            return None;
        }
        let actions = match RouteFields::parse(&route.other) {
            Ok(actions) => actions,
            Err((key, message)) => {
                self.diagnostics.push(
                    Diagnostic::error(message)
                        .at(vs.location.clone())
                        .object(&resource)
                        .field(format!("{field}.{key}")),
                );
                return None;
            }
        };
        for key in &actions.unknown {
            self.diagnostics.push(
                Diagnostic::warning(format!(
                    "`{key}` is not a field this gateway knows; ignored"
                ))
                .at(vs.location.clone())
                .object(&resource)
                .field(format!("{field}.{key}")),
            );
        }
        // A root's delegates are merged before routes get here: this one is a delegate's
        // own, and Istio follows one level only.
        if actions.delegate {
            self.diagnostics.push(
                Diagnostic::warning(
                    "a delegate VirtualService's route cannot delegate again; this route is skipped",
                )
                .at(vs.location.clone())
                .object(&resource)
                .field(format!("{field}.delegate")),
            );
            return None;
        }
        let action = match self.action(vs, &resource, &field, route, actions) {
            Ok(action) => action,
            Err((sub_field, message)) => {
                self.diagnostics.push(
                    Diagnostic::error(message)
                        .at(vs.location.clone())
                        .object(&resource)
                        .field(format!("{field}.{sub_field}")),
                );
                return None;
            }
        };
        Some(Route {
            name,
            matches,
            action,
        })
    }

    /// The route's action: redirect, direct response, or forward with its policies.
    fn action(
        &mut self,
        vs: &Sourced<VirtualService>,
        resource: &ObjectRef,
        field: &str,
        route: &HttpRoute,
        fields: RouteFields,
    ) -> Result<RouteAction, FieldError> {
        let mut headers = fields
            .headers
            .as_ref()
            .map(|h| compile_headers(h).map_err(|(f, e)| (format!("headers.{f}"), e)))
            .transpose()?
            .unwrap_or_default();
        // `rewrite.authority` over the route's `host` header over a destination's (Istio).
        let header_authority =
            take_authority(&mut headers.request).and_then(|v| v.to_str().ok().map(str::to_owned));
        let route_authority = fields
            .rewrite
            .as_ref()
            .and_then(|r| r.authority.clone())
            .or(header_authority);
        // Istio sets a route's CORS policy whatever its action; Envoy's CORS filter runs
        // before the router, so redirects and direct responses get it too.
        let local_cors = match &fields.cors_policy {
            Some(cors) => Some(Box::new(LocalCors {
                policy: compile_cors(cors)?,
                answers_unmatched_preflights: unmatched_preflights(cors)?,
            })),
            None => None,
        };
        if let Some(redirect) = fields.redirect {
            let mut redirect = compile_redirect(&redirect, headers)?;
            redirect.cors = local_cors;
            return Ok(RouteAction::Redirect(Box::new(redirect)));
        }
        if let Some(direct) = fields.direct_response {
            let status = u16::try_from(direct.status)
                .ok()
                .filter(|s| (200..=599).contains(s))
                .ok_or_else(|| {
                    (
                        "directResponse.status".to_owned(),
                        format!("status {} is not an HTTP status (200–599)", direct.status),
                    )
                })?;
            return Ok(RouteAction::DirectResponse(Box::new(DirectResponse {
                status,
                body: direct.body.and_then(|b| b.string),
                headers,
                cors: local_cors,
            })));
        }
        if route.route.is_empty() {
            return Err((
                "route".to_owned(),
                "a route needs at least one destination under `route` (or a redirect or directResponse)"
                    .to_owned(),
            ));
        }
        let mut clusters = Vec::new();
        for (d_index, destination) in route.route.iter().enumerate() {
            let d_field = format!("{field}.route[{d_index}].destination");
            let cluster = self.cluster(
                &destination.destination,
                vs.resource.metadata.namespace(),
                vs.location.as_ref(),
                resource,
                &d_field,
            );
            let weight = destination
                .weight
                .unwrap_or(if route.route.len() == 1 { 100 } else { 0 });
            let mut weighted = WeightedCluster::new(weight, cluster);
            if let Some(h) = &destination.headers {
                weighted.headers = compile_headers(h)
                    .map_err(|(f, e)| (format!("route[{d_index}].headers.{f}"), e))?;
                // A destination's authority is applied last, so it stays a `host` set;
                // with one destination the route's own authority wins, as Istio has it.
                let authority = take_authority(&mut weighted.headers.request);
                if let Some(authority) = authority
                    && (route.route.len() > 1 || route_authority.is_none())
                {
                    weighted.headers.request.set.push((header::HOST, authority));
                }
            }
            clusters.push(weighted);
        }
        let mut forward = Forward::to(clusters);
        forward.headers = headers;
        if let Some(rewrite) = &fields.rewrite {
            forward.rewrite = Some(compile_rewrite(rewrite)?);
        }
        if let Some(authority) = route_authority {
            forward
                .rewrite
                .get_or_insert_with(|| Rewrite {
                    path: None,
                    authority: None,
                })
                .authority = Some(authority);
        }
        if let Some(timeout) = &fields.timeout {
            let timeout = parse_duration(timeout).map_err(|e| ("timeout".to_owned(), e))?;
            // Istio: 0s means no timeout.
            forward.timeout = (!timeout.is_zero()).then_some(timeout);
        }
        if let Some(retries) = &fields.retries {
            forward.retry = compile_retries(retries)?;
        }
        if let Some(fault) = &fields.fault {
            forward.fault = Some(compile_fault(fault)?);
        }
        let mut mirrors = Vec::new();
        if let Some(mirror) = &fields.mirror {
            let percentage = fields.mirror_percentage.as_ref().map_or(100.0, |p| p.value);
            mirrors.push((mirror.clone(), percentage, "mirror".to_owned()));
        }
        for (m_index, m) in fields.mirrors.iter().enumerate() {
            let percentage = m.percentage.as_ref().map_or(100.0, |p| p.value);
            mirrors.push((
                m.destination.clone(),
                percentage,
                format!("mirrors[{m_index}]"),
            ));
        }
        for (destination, percentage, m_field) in mirrors {
            let cluster = self.cluster(
                &destination,
                vs.resource.metadata.namespace(),
                vs.location.as_ref(),
                resource,
                &format!("{field}.{m_field}"),
            );
            forward.mirrors.push(Mirror {
                cluster,
                percentage: check_percentage(percentage, &m_field)?,
            });
        }
        if let Some(cors) = &fields.cors_policy {
            forward.cors = Some(compile_cors(cors)?);
            forward.cors_answers_unmatched_preflights = unmatched_preflights(cors)?;
        }
        Ok(RouteAction::Forward(Box::new(forward)))
    }
}

/// The one route of a host whose server says `tls.httpsRedirect`: 301 to the same URL
/// over https with the request's Host kept as it is (port included), as Envoy's
/// `require_tls` answers (Istio's translation of `httpsRedirect`).
pub(super) fn https_redirect(host: &str) -> Route<RouteAction> {
    Route {
        name: format!("https-redirect.{host}"),
        matches: Vec::new(),
        action: RouteAction::Redirect(Box::new(Redirect {
            scheme: Some("https".to_owned()),
            authority: None,
            port: RedirectPort::KeepAuthority,
            path: None,
            status: 301,
            headers: HeaderPolicy::default(),
            cors: None,
        })),
    }
}

/// A field path below the route and what is wrong there.
type FieldError = (String, String);

/// The VirtualService route fields beyond `match` and `route`, typed.
#[derive(Default)]
struct RouteFields {
    redirect: Option<IstioRedirect>,
    direct_response: Option<IstioDirectResponse>,
    rewrite: Option<IstioRewrite>,
    headers: Option<Headers>,
    timeout: Option<String>,
    retries: Option<IstioRetries>,
    fault: Option<IstioFault>,
    mirror: Option<Destination>,
    mirror_percentage: Option<Percent>,
    mirrors: Vec<IstioMirror>,
    cors_policy: Option<IstioCors>,
    delegate: bool,
    /// Keys this gateway does not know at all.
    unknown: Vec<String>,
}

impl RouteFields {
    fn parse(other: &BTreeMap<String, serde_yaml::Value>) -> Result<Self, FieldError> {
        fn typed<T: serde::de::DeserializeOwned>(
            key: &str,
            value: &serde_yaml::Value,
        ) -> Result<T, FieldError> {
            serde_path_to_error::deserialize(value.clone()).map_err(|e| {
                let path = e.path().to_string();
                let field = if path == "." || path.is_empty() {
                    key.to_owned()
                } else {
                    format!("{key}.{path}")
                };
                (field, e.into_inner().to_string())
            })
        }
        let mut fields = RouteFields::default();
        for (key, value) in other {
            match key.as_str() {
                "redirect" => fields.redirect = Some(typed(key, value)?),
                "directResponse" => fields.direct_response = Some(typed(key, value)?),
                "rewrite" => fields.rewrite = Some(typed(key, value)?),
                "headers" => fields.headers = Some(typed(key, value)?),
                "timeout" => fields.timeout = Some(typed(key, value)?),
                "retries" => fields.retries = Some(typed(key, value)?),
                "fault" => fields.fault = Some(typed(key, value)?),
                "mirror" => fields.mirror = Some(typed(key, value)?),
                "mirrorPercentage" => fields.mirror_percentage = Some(typed(key, value)?),
                "mirrors" => fields.mirrors = typed(key, value)?,
                "corsPolicy" => fields.cors_policy = Some(typed(key, value)?),
                "delegate" => fields.delegate = true,
                // Mesh-only or informational fields: nothing for an ingress gateway to do.
                "mirror_percent" | "mirrorPercent" => {
                    let percent: u32 = typed(key, value)?;
                    fields.mirror_percentage = Some(Percent {
                        value: f64::from(percent),
                    });
                }
                _ => fields.unknown.push(key.clone()),
            }
        }
        Ok(fields)
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
struct IstioRedirect {
    uri: Option<String>,
    authority: Option<String>,
    port: Option<u32>,
    derive_port: Option<String>,
    scheme: Option<String>,
    redirect_code: Option<u32>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
struct IstioRewrite {
    uri: Option<String>,
    authority: Option<String>,
    uri_regex_rewrite: Option<IstioRegexRewrite>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IstioRegexRewrite {
    #[serde(rename = "match")]
    pattern: String,
    rewrite: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IstioDirectResponse {
    status: u32,
    #[serde(default)]
    body: Option<IstioBody>,
}

#[derive(Clone, Debug, Deserialize)]
struct IstioBody {
    #[serde(default)]
    string: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct IstioRetries {
    attempts: Option<u32>,
    per_try_timeout: Option<String>,
    retry_on: Option<String>,
    retry_ignore_previous_hosts: Option<bool>,
    backoff: Option<String>,
    /// Locality-aware retries: one locality here, nothing to do.
    #[allow(dead_code)]
    retry_remote_localities: Option<bool>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
struct IstioFault {
    delay: Option<IstioDelay>,
    abort: Option<IstioAbort>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct IstioDelay {
    fixed_delay: Option<String>,
    percentage: Option<Percent>,
    /// Deprecated integer percentage.
    percent: Option<u32>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct IstioAbort {
    http_status: Option<u32>,
    grpc_status: Option<String>,
    percentage: Option<Percent>,
}

#[derive(Clone, Debug, Deserialize)]
struct Percent {
    value: f64,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct IstioMirror {
    destination: Destination,
    #[serde(default)]
    percentage: Option<Percent>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct IstioCors {
    allow_origins: Vec<StringMatch>,
    /// Deprecated exact origins.
    allow_origin: Vec<String>,
    allow_methods: Vec<String>,
    allow_headers: Vec<String>,
    expose_headers: Vec<String>,
    max_age: Option<String>,
    allow_credentials: Option<bool>,
    /// `FORWARD` (the default) or `IGNORE`: what happens to a preflight from an origin
    /// the policy does not allow.
    unmatched_preflights: Option<String>,
}

/// Istio's default redirect status.
const DEFAULT_REDIRECT_CODE: u16 = 301;

fn compile_redirect(r: &IstioRedirect, headers: HeaderPolicy) -> Result<Redirect, FieldError> {
    let status = match r.redirect_code {
        None => DEFAULT_REDIRECT_CODE,
        Some(code @ (301 | 302 | 303 | 307 | 308)) => code as u16,
        Some(code) => {
            return Err((
                "redirect.redirectCode".to_owned(),
                format!("{code} is not a redirect status (301, 302, 303, 307, 308)"),
            ));
        }
    };
    let port = match (r.port, r.derive_port.as_deref()) {
        (Some(p), _) => RedirectPort::Fixed(u16::try_from(p).map_err(|_| {
            (
                "redirect.port".to_owned(),
                format!("port {p} is not a TCP port"),
            )
        })?),
        (None, Some("FROM_PROTOCOL_DEFAULT")) => RedirectPort::ProtocolDefault,
        (None, None | Some("FROM_REQUEST_PORT")) => RedirectPort::FromRequest,
        (None, Some(other)) => {
            return Err((
                "redirect.derivePort".to_owned(),
                format!("{other:?}: expected FROM_PROTOCOL_DEFAULT or FROM_REQUEST_PORT"),
            ));
        }
    };
    // Envoy takes the request's port from its Host only when the host is kept: with a
    // `host_redirect` (Istio `authority`) the Location has no port unless one is set.
    let port = match port {
        RedirectPort::FromRequest if r.authority.is_some() => RedirectPort::ProtocolDefault,
        other => other,
    };
    Ok(Redirect {
        scheme: r.scheme.clone(),
        authority: r.authority.clone(),
        port,
        path: r.uri.clone().map(PathRewrite::Full),
        status,
        headers,
        cors: None,
    })
}

fn compile_rewrite(r: &IstioRewrite) -> Result<Rewrite, FieldError> {
    let path = match (&r.uri, &r.uri_regex_rewrite) {
        (Some(_), Some(_)) => {
            return Err((
                "rewrite".to_owned(),
                "uri and uriRegexRewrite cannot both be set".to_owned(),
            ));
        }
        (Some(uri), None) => Some(PathRewrite::Prefix(uri.clone())),
        (None, Some(re)) => Some(PathRewrite::Regex {
            pattern: Regex::new(&re.pattern).map_err(|e| {
                (
                    "rewrite.uriRegexRewrite.match".to_owned(),
                    format!("invalid regex: {e}"),
                )
            })?,
            // RE2 writes groups as \1; the regex crate as ${1}.
            substitution: re2_substitution(&re.rewrite),
        }),
        (None, None) => None,
    };
    Ok(Rewrite {
        path,
        authority: r.authority.clone(),
    })
}

/// `\1` → `${1}`, and a literal `$` escaped, so RE2 rewrite strings work with `regex`.
fn re2_substitution(rewrite: &str) -> String {
    let mut out = String::with_capacity(rewrite.len());
    let mut chars = rewrite.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek().is_some_and(char::is_ascii_digit) => {
                let mut group = String::new();
                while let Some(d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                    group.push(*d);
                    chars.next();
                }
                out.push_str(&format!("${{{group}}}"));
            }
            '$' => out.push_str("$$"),
            c => out.push(c),
        }
    }
    out
}

/// Istio's header operations: `host` and `:authority` are no header to set but the
/// authority (see `take_authority`), other pseudo-headers are left alone, as Istio drops
/// its "internal" headers.
fn compile_headers(h: &Headers) -> Result<HeaderPolicy, FieldError> {
    let mut policy = HeaderPolicy {
        request: compile_header_ops(&h.request).map_err(|(f, e)| (format!("request.{f}"), e))?,
        response: compile_header_ops(&h.response).map_err(|(f, e)| (format!("response.{f}"), e))?,
    };
    policy.request.remove.retain(|n| n != header::HOST);
    let response = &mut policy.response;
    response.set.retain(|(n, _)| n != header::HOST);
    response.add.retain(|(n, _)| n != header::HOST);
    response.remove.retain(|n| n != header::HOST);
    Ok(policy)
}

/// Takes `host` out of request header operations: the authority they ask for (`set`
/// over `add`), which Istio turns into the route's (or destination's) host rewrite.
fn take_authority(ops: &mut HeaderOps) -> Option<HeaderValue> {
    let take = |list: &mut Vec<(HeaderName, HeaderValue)>| {
        let found = list
            .iter()
            .rev()
            .find(|(n, _)| n == header::HOST)
            .map(|(_, v)| v.clone());
        list.retain(|(n, _)| n != header::HOST);
        found
    };
    let set = take(&mut ops.set);
    let add = take(&mut ops.add);
    set.or(add)
}

pub(crate) fn compile_header_ops(ops: &HeaderOperations) -> Result<HeaderOps, FieldError> {
    // `:authority` is the Host header; other pseudo-headers cannot be set.
    let pseudo = |name: &str| name.starts_with(':') && !name.eq_ignore_ascii_case(":authority");
    let real = |name: &str| {
        if name.eq_ignore_ascii_case(":authority") {
            "host".to_owned()
        } else {
            name.to_owned()
        }
    };
    let pairs = |kind: &str, map: &BTreeMap<String, String>| {
        map.iter()
            .filter(|(name, _)| !pseudo(name))
            .map(|(name, value)| {
                let n = HeaderName::from_bytes(real(name).as_bytes()).map_err(|_| {
                    (
                        format!("{kind}.{name}"),
                        format!("{name:?} is not a header name"),
                    )
                })?;
                let v = HeaderValue::from_str(value).map_err(|_| {
                    (
                        format!("{kind}.{name}"),
                        format!("{value:?} is not a valid header value"),
                    )
                })?;
                Ok((n, v))
            })
            .collect::<Result<Vec<_>, FieldError>>()
    };
    Ok(HeaderOps {
        set: pairs("set", &ops.set)?,
        add: pairs("add", &ops.add)?,
        remove: ops
            .remove
            .iter()
            .filter(|name| !name.starts_with(':'))
            .map(|name| {
                HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                    (
                        "remove".to_owned(),
                        format!("{name:?} is not a header name"),
                    )
                })
            })
            .collect::<Result<_, _>>()?,
    })
}

/// Istio's conversion: no `attempts` (or 0) disables retries; `attempts` alone keeps the
/// default conditions.
fn compile_retries(r: &IstioRetries) -> Result<RetryPolicy, FieldError> {
    let attempts = r.attempts.unwrap_or(0);
    if attempts == 0 {
        return Ok(RetryPolicy::none());
    }
    let mut policy = RetryPolicy {
        attempts,
        ..RetryPolicy::default()
    };
    if let Some(t) = &r.per_try_timeout {
        policy.per_try_timeout =
            Some(parse_duration(t).map_err(|e| ("retries.perTryTimeout".to_owned(), e))?);
    }
    if let Some(on) = r.retry_on.as_deref().filter(|on| !on.trim().is_empty()) {
        policy.retry_on = parse_retry_on(on).map_err(|e| ("retries.retryOn".to_owned(), e))?;
    }
    // Istio sets Envoy's `base_interval` from `backoff`, and drops the previous-hosts
    // predicate only for an explicit `retryIgnorePreviousHosts: false`.
    if let Some(b) = &r.backoff {
        policy.backoff = Some(parse_duration(b).map_err(|e| ("retries.backoff".to_owned(), e))?);
    }
    policy.avoid_previous_hosts = r.retry_ignore_previous_hosts != Some(false);
    Ok(policy)
}

/// Envoy's `retry_on` list (`5xx,gateway-error,connect-failure,reset,503`) and its
/// `retry_grpc_on` conditions, which Istio writes in the same list.
pub(crate) fn parse_retry_on(list: &str) -> Result<RetryOn, String> {
    let mut on = RetryOn::default();
    for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match item {
            "5xx" => on.server_error = true,
            "gateway-error" => on.gateway_error = true,
            "connect-failure" => on.connect_failure = true,
            "reset" | "reset-before-request" => on.reset = true,
            "refused-stream" => on.refused_stream = true,
            "retriable-4xx" => on.retriable_4xx = true,
            // The codes come as bare numbers in Istio's list.
            "retriable-status-codes" => {}
            "cancelled" => on.grpc_statuses.push(RetryOn::GRPC_CANCELLED),
            "deadline-exceeded" => on.grpc_statuses.push(RetryOn::GRPC_DEADLINE_EXCEEDED),
            "internal" => on.grpc_statuses.push(RetryOn::GRPC_INTERNAL),
            "resource-exhausted" => on.grpc_statuses.push(RetryOn::GRPC_RESOURCE_EXHAUSTED),
            "unavailable" => on.grpc_statuses.push(RetryOn::GRPC_UNAVAILABLE),
            // Conditions on headers or rate limiting that this gateway does not observe.
            "retriable-headers" | "envoy-ratelimited" | "http3-post-connect-failure" => {}
            code => match code.parse::<u16>() {
                Ok(code) if (100..=599).contains(&code) => on.status_codes.push(code),
                _ => return Err(format!("unknown retry condition {code:?}")),
            },
        }
    }
    Ok(on)
}

fn compile_fault(f: &IstioFault) -> Result<Fault, FieldError> {
    let delay = match &f.delay {
        None => None,
        Some(d) => {
            let fixed = d.fixed_delay.as_deref().ok_or_else(|| {
                (
                    "fault.delay.fixedDelay".to_owned(),
                    "a delay needs fixedDelay".to_owned(),
                )
            })?;
            let percentage = d
                .percentage
                .as_ref()
                .map(|p| p.value)
                .or(d.percent.map(f64::from))
                .unwrap_or(100.0);
            Some(FaultDelay {
                delay: parse_duration(fixed)
                    .map_err(|e| ("fault.delay.fixedDelay".to_owned(), e))?,
                percentage: check_percentage(percentage, "fault.delay.percentage")?,
            })
        }
    };
    let abort = match &f.abort {
        None => None,
        Some(a) => {
            // httpStatus wins when both are set, as in Envoy's fault filter.
            let (status, grpc_status) = match (a.http_status, &a.grpc_status) {
                (Some(s), _) => (
                    u16::try_from(s)
                        .ok()
                        .filter(|s| (200..=599).contains(s))
                        .ok_or_else(|| {
                            (
                                "fault.abort.httpStatus".to_owned(),
                                format!("{s} is not an HTTP status (200–599)"),
                            )
                        })?,
                    None,
                ),
                // Envoy answers a gRPC abort with HTTP 200 (the status is in grpc-status).
                (None, Some(name)) => (200, Some(grpc_status_code(name)?)),
                (None, None) => {
                    return Err((
                        "fault.abort".to_owned(),
                        "an abort needs httpStatus or grpcStatus".to_owned(),
                    ));
                }
            };
            let percentage = a.percentage.as_ref().map_or(100.0, |p| p.value);
            Some(FaultAbort {
                status,
                grpc_status,
                percentage: check_percentage(percentage, "fault.abort.percentage")?,
            })
        }
    };
    Ok(Fault { delay, abort })
}

/// `corsPolicy.unmatchedPreflights`: whether the gateway answers a preflight its
/// policy does not allow (IGNORE) rather than passing it on (FORWARD, the default).
fn unmatched_preflights(c: &IstioCors) -> Result<bool, FieldError> {
    match c.unmatched_preflights.as_deref() {
        None | Some("UNSPECIFIED" | "FORWARD") => Ok(false),
        Some("IGNORE") => Ok(true),
        Some(other) => Err((
            "corsPolicy.unmatchedPreflights".to_owned(),
            format!("{other:?} is not one of UNSPECIFIED, FORWARD, IGNORE"),
        )),
    }
}

fn compile_cors(c: &IstioCors) -> Result<CorsPolicy, FieldError> {
    let mut allow_origins = Vec::new();
    for (i, origin) in c.allow_origins.iter().enumerate() {
        allow_origins.push(
            compile_string_match(origin, false)
                .map_err(|e| (format!("corsPolicy.allowOrigins[{i}]"), e))?,
        );
    }
    for origin in &c.allow_origin {
        allow_origins.push(StringMatcher::Exact {
            value: origin.clone(),
            ignore_case: false,
        });
    }
    let max_age = c
        .max_age
        .as_deref()
        .map(|a| parse_duration(a).map_err(|e| ("corsPolicy.maxAge".to_owned(), e)))
        .transpose()?
        .map(|d| d.as_secs());
    Ok(CorsPolicy {
        allow_origins,
        allow_methods: c.allow_methods.join(","),
        allow_headers: c.allow_headers.join(","),
        expose_headers: c.expose_headers.join(","),
        max_age,
        allow_credentials: c.allow_credentials.unwrap_or(false),
    })
}

/// gRPC status codes by the names Istio's `grpcStatus` takes (the index is the code).
const GRPC_STATUS_NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// Istio takes the status by name in capitals (`UNAVAILABLE`, not `14`).
fn grpc_status_code(name: &str) -> Result<u16, FieldError> {
    GRPC_STATUS_NAMES
        .iter()
        .position(|known| *known == name)
        .and_then(|code| u16::try_from(code).ok())
        .ok_or_else(|| {
            (
                "fault.abort.grpcStatus".to_owned(),
                format!(
                    "{name:?} is not a gRPC status name (one of {})",
                    GRPC_STATUS_NAMES.join(", ")
                ),
            )
        })
}

fn check_percentage(value: f64, field: &str) -> Result<f64, FieldError> {
    if (0.0..=100.0).contains(&value) {
        Ok(value)
    } else {
        Err((
            field.to_owned(),
            format!("{value} is not a percentage (0–100)"),
        ))
    }
}

/// Durations as Istio accepts them: `1s`, `0.5s`, `250ms`, `1m30s`, `1h`.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("{text:?} is not a duration (e.g. 1s, 250ms, 1m30s)");
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let number: f64 = rest[..number_len].parse().map_err(|_| bad())?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return Err(bad()),
        };
        total += number * seconds;
        rest = &rest[unit_len..];
    }
    if total > MAX_DURATION_SECS {
        return Err(format!(
            "{text:?} is longer than the longest duration Istio accepts ({MAX_DURATION_SECS}s, \
             protobuf's Duration limit)"
        ));
    }
    Duration::try_from_secs_f64(total).map_err(|_| bad())
}

/// The longest `google.protobuf.Duration` (10 000 years), which is what Istio's API
/// takes: longer values are refused there, and here they would overflow clocks.
const MAX_DURATION_SECS: f64 = 315_576_000_000.0;

pub(super) fn clone_route(route: &Route<RouteAction>) -> Route<RouteAction> {
    route.clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_as_istio_writes_them() {
        assert_eq!(parse_duration("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_duration("0.5s"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("1 fortnight").is_err());
        assert_eq!(
            parse_duration("315576000000s"),
            Ok(Duration::from_secs(315_576_000_000))
        );
        assert!(parse_duration("99999999999999999s").is_err());
        assert!(parse_duration("1e300s").is_err());
    }

    #[test]
    fn re2_groups_become_regex_crate_groups() {
        assert_eq!(re2_substitution("/v2/\\1/x"), "/v2/${1}/x");
        assert_eq!(re2_substitution("/a$b"), "/a$$b");
    }

    #[test]
    fn grpc_aborts_by_status_name() {
        let abort = |http_status, grpc_status: Option<&str>| {
            let fault = IstioFault {
                delay: None,
                abort: Some(IstioAbort {
                    http_status,
                    grpc_status: grpc_status.map(str::to_owned),
                    percentage: None,
                }),
            };
            compile_fault(&fault).map(|f| f.abort.map(|a| (a.status, a.grpc_status)))
        };
        assert_eq!(abort(None, Some("UNAVAILABLE")), Ok(Some((200, Some(14)))));
        assert_eq!(abort(None, Some("OK")), Ok(Some((200, Some(0)))));
        assert_eq!(abort(Some(503), Some("NOT_FOUND")), Ok(Some((503, None))));
        let (field, message) = abort(None, Some("14")).expect_err("numbers are refused");
        assert_eq!(field, "fault.abort.grpcStatus");
        assert!(message.contains("UNAUTHENTICATED"), "{message}");
        assert!(abort(None, Some("unavailable")).is_err());
        assert!(abort(None, None).is_err());
    }

    #[test]
    fn retry_conditions() {
        let on = parse_retry_on("gateway-error,connect-failure,retriable-status-codes,409")
            .expect("valid");
        assert!(on.gateway_error && on.connect_failure && !on.server_error);
        assert_eq!(on.status_codes, [409]);
        assert!(parse_retry_on("sometimes").is_err());
    }
}
