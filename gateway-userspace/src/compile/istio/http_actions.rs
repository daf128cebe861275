//! VirtualService `http` route actions → compiled ones: redirect, rewrite, header
//! operations, retries, fault, CORS, with Istio's defaults and spellings.

use std::collections::BTreeMap;

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, header};
use regex::Regex;

use super::route_fields::{
    FieldError, IstioCors, IstioFault, IstioRedirect, IstioRetries, IstioRewrite,
};
use crate::compile::istio::matches::compile_string_match;
use crate::compile::routes::parse_duration;
use crate::{
    config::resources::{HeaderOperations, Headers, http_route::IstioBody},
    route_table::StringMatcher,
    snapshot::{
        CorsPolicy, Fault, FaultAbort, FaultDelay, HeaderOps, HeaderPolicy, PathRewrite, Redirect,
        RedirectPort, RetryOn, RetryPolicy, Rewrite,
    },
};

/// Istio's default redirect status.
const DEFAULT_REDIRECT_CODE: u16 = 301;

pub(super) fn compile_redirect(
    r: &IstioRedirect,
    headers: HeaderPolicy,
) -> Result<Redirect, FieldError> {
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

pub(super) fn compile_rewrite(r: &IstioRewrite) -> Result<Rewrite, FieldError> {
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
pub(super) fn compile_headers(h: &Headers) -> Result<HeaderPolicy, FieldError> {
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
pub(super) fn take_authority(ops: &mut HeaderOps) -> Option<HeaderValue> {
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
pub(super) fn compile_retries(r: &IstioRetries) -> Result<RetryPolicy, FieldError> {
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

pub(super) fn compile_fault(f: &IstioFault) -> Result<Fault, FieldError> {
    let delay = match &f.delay {
        None => None,
        // Istio drops a delay it cannot express in Envoy (`exponentialDelay`), with a
        // warning; `unapplied` says so here too.
        Some(d) if d.fixed_delay.is_none() && d.exponential_delay.is_some() => None,
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
        // The same for an abort with only `http2Error`.
        Some(a)
            if a.http_status.is_none() && a.grpc_status.is_none() && a.http2_error.is_some() =>
        {
            None
        }
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
pub(super) fn unmatched_preflights(c: &IstioCors) -> Result<bool, FieldError> {
    match c.unmatched_preflights.as_deref() {
        None | Some("UNSPECIFIED" | "FORWARD") => Ok(false),
        Some("IGNORE") => Ok(true),
        Some(other) => Err((
            "corsPolicy.unmatchedPreflights".to_owned(),
            format!("{other:?} is not one of UNSPECIFIED, FORWARD, IGNORE"),
        )),
    }
}

pub(super) fn compile_cors(c: &IstioCors) -> Result<CorsPolicy, FieldError> {
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

/// `directResponse.body`: `string` as written, or `bytes` decoded from base64 (protobuf's
/// JSON form, as Istio reads it); one of the two.
pub(super) fn direct_response_body(body: &IstioBody) -> Result<Bytes, FieldError> {
    match (&body.string, &body.bytes) {
        (Some(_), Some(_)) => Err((
            "directResponse.body".to_owned(),
            "set `string` or `bytes`, not both".to_owned(),
        )),
        (Some(text), None) => Ok(Bytes::from(text.clone())),
        (None, Some(encoded)) => base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .map(Bytes::from)
            .map_err(|e| {
                (
                    "directResponse.body.bytes".to_owned(),
                    format!("not base64: {e}"),
                )
            }),
        (None, None) => Ok(Bytes::new()),
    }
}

pub(super) fn check_percentage(value: f64, field: &str) -> Result<f64, FieldError> {
    if (0.0..=100.0).contains(&value) {
        Ok(value)
    } else {
        Err((
            field.to_owned(),
            format!("{value} is not a percentage (0–100)"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::resources::http_route::IstioAbort;

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
                    ..IstioAbort::default()
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
    fn faults_istio_cannot_express_are_dropped_not_refused() {
        let fault: IstioFault = serde_yaml::from_str(
            "{delay: {exponentialDelay: 1s}, abort: {http2Error: REFUSED_STREAM}}",
        )
        .expect("a fault");
        let compiled = compile_fault(&fault).expect("accepted, as Istio does");
        assert!(compiled.delay.is_none() && compiled.abort.is_none());
        // Beside a fixed delay or an HTTP status, they change nothing.
        let fault: IstioFault = serde_yaml::from_str(
            "{delay: {fixedDelay: 2s, exponentialDelay: 1s}, abort: {httpStatus: 503, http2Error: X}}",
        )
        .expect("a fault");
        let compiled = compile_fault(&fault).expect("valid");
        assert_eq!(compiled.delay.map(|d| d.delay.as_secs()), Some(2));
        assert_eq!(compiled.abort.map(|a| a.status), Some(503));
        // A delay with neither is still an error.
        let fault: IstioFault = serde_yaml::from_str("{delay: {percent: 5}}").expect("a fault");
        assert!(compile_fault(&fault).is_err());
    }

    #[test]
    fn direct_response_bodies_from_text_or_base64() {
        let body = |yaml: &str| {
            let body: IstioBody = serde_yaml::from_str(yaml).expect("a body");
            direct_response_body(&body)
        };
        assert_eq!(body("{string: hi}"), Ok(Bytes::from_static(b"hi")));
        assert_eq!(
            body("{bytes: AAEC/w==}"),
            Ok(Bytes::from_static(&[0, 1, 2, 255]))
        );
        let (field, message) = body("{bytes: 'not base64!'}").expect_err("refused");
        assert_eq!(field, "directResponse.body.bytes");
        assert!(message.contains("base64"), "{message}");
        assert!(body("{string: a, bytes: YQ==}").is_err());
        assert!(serde_yaml::from_str::<IstioBody>("{text: a}").is_err());
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
