//! VirtualService `http` routes → compiled routes: matches and actions (redirect, direct
//! response, rewrite, header operations, timeout, retries, fault, mirrors, CORS).

use http::header;

use super::{
    http_actions::{
        check_percentage, compile_cors, compile_fault, compile_headers, compile_redirect,
        compile_retries, compile_rewrite, direct_response_body, take_authority,
        unmatched_preflights,
    },
    route_fields::{FieldError, RouteFields},
};
use crate::compile::routes::parse_duration;
use crate::compile::{
    Built,
    clusters::At,
    index::Index,
    istio::matches::{MatchTarget, applies, compile_match},
    name_of,
    sink::Sink,
};
use crate::{
    config::{
        Diagnostic, Kind, Sourced,
        resources::{HttpRoute, VirtualService},
    },
    route_table::Route,
    snapshot::{
        DirectResponse, Forward, HeaderPolicy, LocalCors, Mirror, Redirect, RedirectPort, Rewrite,
        RouteAction, WeightedCluster,
    },
};

pub(super) fn route(
    ix: &Index<'_>,
    sink: &mut Sink,
    built: &mut Built,
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
                sink.push(
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
    let actions = match RouteFields::parse(route) {
        Ok(actions) => actions,
        Err((key, message)) => {
            sink.push(
                Diagnostic::error(message)
                    .at(vs.location.clone())
                    .object(&resource)
                    .field(format!("{field}.{key}")),
            );
            return None;
        }
    };
    for key in &actions.unknown {
        sink.push(
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
        sink.push(
            Diagnostic::warning(
                "a delegate VirtualService's route cannot delegate again; this route is skipped",
            )
            .at(vs.location.clone())
            .object(&resource)
            .field(format!("{field}.delegate")),
        );
        return None;
    }
    let at = At {
        location: vs.location.as_ref(),
        object: &resource,
        field: &field,
    };
    let action = match action(ix, sink, built, vs, at, route, actions) {
        Ok(action) => action,
        Err((sub_field, message)) => {
            sink.push(
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

/// The route's action: redirect, direct response, or forward with its policies. `at`
/// is the route (`spec.http[i]`); the clusters it names are placed under it.
pub(super) fn action(
    ix: &Index<'_>,
    sink: &mut Sink,
    built: &mut Built,
    vs: &Sourced<VirtualService>,
    at: At<'_>,
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
            body: direct
                .body
                .as_ref()
                .map(direct_response_body)
                .transpose()?
                .unwrap_or_default(),
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
        let d_field = format!("{}.route[{d_index}].destination", at.field);
        let cluster = built.cluster(
            ix,
            sink,
            &destination.destination,
            vs.resource.metadata.namespace(),
            At {
                field: &d_field,
                ..at
            },
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
        let cluster = built.cluster(
            ix,
            sink,
            &destination,
            vs.resource.metadata.namespace(),
            At {
                field: &format!("{}.{m_field}", at.field),
                ..at
            },
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
