//! HTTPRoute and GRPCRoute filters → header operations, redirects, rewrites, mirrors, CORS.

use http::{HeaderName, HeaderValue};

use super::DEFAULT_REDIRECT_STATUS;
use crate::{
    config::resources::gateway_api::{
        BackendRef, FilterType, HeaderModifier, HttpCors, HttpHeader, HttpRouteFilter,
        PathModifier, PathModifierType,
    },
    route_table::StringMatcher,
    snapshot::{CorsPolicy, HeaderOps, HeaderPolicy, PathRewrite, Redirect, RedirectPort, Rewrite},
};

pub(super) enum Filter {
    Headers {
        request: bool,
        ops: HeaderOps,
    },
    Redirect(Redirect),
    Rewrite(Rewrite),
    Cors(CorsPolicy),
    Mirror {
        backend: BackendRef,
        percentage: f64,
    },
}

pub(super) fn compile_filter(filter: &HttpRouteFilter) -> Result<Filter, String> {
    let missing = |field: &str| {
        format!(
            "filter type {:?} needs its `{field}` field",
            filter.filter_type
        )
    };
    match filter.filter_type {
        FilterType::RequestHeaderModifier => Ok(Filter::Headers {
            request: true,
            ops: header_ops(
                filter
                    .request_header_modifier
                    .as_ref()
                    .ok_or_else(|| missing("requestHeaderModifier"))?,
            )?,
        }),
        FilterType::ResponseHeaderModifier => Ok(Filter::Headers {
            request: false,
            ops: header_ops(
                filter
                    .response_header_modifier
                    .as_ref()
                    .ok_or_else(|| missing("responseHeaderModifier"))?,
            )?,
        }),
        FilterType::RequestRedirect => {
            let r = filter
                .request_redirect
                .as_ref()
                .ok_or_else(|| missing("requestRedirect"))?;
            let status = r.status_code.unwrap_or(DEFAULT_REDIRECT_STATUS);
            if ![301, 302, 303, 307, 308].contains(&status) {
                return Err(format!(
                    "redirect statusCode {status}: expected 301, 302, 303, 307 or 308"
                ));
            }
            let port = match (r.port, &r.scheme) {
                (Some(p), _) => RedirectPort::Fixed(
                    u16::try_from(p)
                        .ok()
                        .filter(|p| *p != 0)
                        .ok_or_else(|| format!("redirect port {p}: expected 1-65535"))?,
                ),
                (None, Some(_)) => RedirectPort::ProtocolDefault,
                // The spec: the listener's port. Compiled as the request's and replaced
                // per listener in `push_entries` (`redirect_to_listener_port`).
                (None, None) => RedirectPort::FromRequest,
            };
            Ok(Filter::Redirect(Redirect {
                scheme: r.scheme.clone(),
                authority: r.hostname.clone(),
                port,
                path: r.path.as_ref().map(path_modifier).transpose()?,
                status,
                headers: HeaderPolicy::default(),
                cors: None,
            }))
        }
        FilterType::UrlRewrite => {
            let r = filter
                .url_rewrite
                .as_ref()
                .ok_or_else(|| missing("urlRewrite"))?;
            Ok(Filter::Rewrite(Rewrite {
                path: r.path.as_ref().map(path_modifier).transpose()?,
                authority: r.hostname.clone(),
            }))
        }
        FilterType::RequestMirror => {
            let m = filter
                .request_mirror
                .as_ref()
                .ok_or_else(|| missing("requestMirror"))?;
            let percentage = match (m.percent, &m.fraction) {
                (Some(p), _) => f64::from(p.min(100)),
                (None, Some(f)) => {
                    let denominator = f.denominator.unwrap_or(100).max(1);
                    100.0 * f64::from(f.numerator.min(denominator)) / f64::from(denominator)
                }
                (None, None) => 100.0,
            };
            Ok(Filter::Mirror {
                backend: m.backend_ref.clone(),
                percentage,
            })
        }
        FilterType::Cors => {
            let c = filter.cors.as_ref().ok_or_else(|| missing("cors"))?;
            Ok(Filter::Cors(compile_cors(c)?))
        }
        FilterType::ExternalAuth | FilterType::ExtensionRef => Err(format!(
            "filter type {:?} is not supported",
            filter.filter_type
        )),
    }
}

/// The spec's default `maxAge`.
const DEFAULT_CORS_MAX_AGE: u64 = 5;

pub(super) fn compile_cors(c: &HttpCors) -> Result<CorsPolicy, String> {
    let mut allow_origins = Vec::new();
    for origin in &c.allow_origins {
        if origin == "*" {
            allow_origins
                .push(StringMatcher::regex(".*", false).map_err(|e| format!("allowOrigins: {e}"))?);
        } else if origin.contains('*') {
            // `*` stands for one or more DNS labels' worth of characters, not a `/` or `:`.
            let pattern = origin
                .split('*')
                .map(regex::escape)
                .collect::<Vec<_>>()
                .join("[^/:]+");
            allow_origins.push(
                StringMatcher::regex(&pattern, true)
                    .map_err(|e| format!("allowOrigins {origin:?}: {e}"))?,
            );
        } else {
            allow_origins.push(StringMatcher::Exact {
                value: origin.clone(),
                ignore_case: true,
            });
        }
    }
    Ok(CorsPolicy {
        allow_origins,
        allow_methods: c.allow_methods.join(","),
        allow_headers: c.allow_headers.join(","),
        expose_headers: c.expose_headers.join(","),
        max_age: Some(c.max_age.unwrap_or(DEFAULT_CORS_MAX_AGE)),
        allow_credentials: c.allow_credentials,
    })
}

fn path_modifier(m: &PathModifier) -> Result<PathRewrite, String> {
    match m.modifier_type {
        PathModifierType::ReplaceFullPath => Ok(PathRewrite::Full(
            m.replace_full_path
                .clone()
                .ok_or("ReplaceFullPath needs replaceFullPath")?,
        )),
        PathModifierType::ReplacePrefixMatch => Ok(PathRewrite::Prefix(
            m.replace_prefix_match
                .clone()
                .ok_or("ReplacePrefixMatch needs replacePrefixMatch")?,
        )),
    }
}

fn header_ops(modifier: &HeaderModifier) -> Result<HeaderOps, String> {
    let name = |n: &str| {
        HeaderName::from_bytes(n.to_ascii_lowercase().as_bytes())
            .map_err(|_| format!("{n:?} is not a valid header name"))
    };
    let value = |v: &str| {
        HeaderValue::from_str(v).map_err(|_| format!("{v:?} is not a valid header value"))
    };
    let pairs = |list: &[HttpHeader]| {
        list.iter()
            .map(|h| Ok((name(&h.name)?, value(&h.value)?)))
            .collect::<Result<Vec<_>, String>>()
    };
    Ok(HeaderOps {
        set: pairs(&modifier.set)?,
        add: pairs(&modifier.add)?,
        remove: modifier
            .remove
            .iter()
            .map(|n| name(n))
            .collect::<Result<_, _>>()?,
    })
}

pub(super) fn merge_ops(target: &mut HeaderOps, ops: HeaderOps) {
    target.set.extend(ops.set);
    target.add.extend(ops.add);
    target.remove.extend(ops.remove);
}
