//! The actions of a VirtualService `http` route, checked: the first field (in key order)
//! that is not of its type is the route's error, as `config` kept it.

pub(super) use crate::config::resources::http_route::{
    IstioCors, IstioDirectResponse, IstioFault, IstioMirror, IstioRedirect, IstioRetries,
    IstioRewrite, Percent,
};
use crate::config::resources::{Destination, Headers, HttpRoute, Lenient};

/// A field path below the route and what is wrong there.
pub(super) type FieldError = (String, String);

/// The VirtualService route fields beyond `match` and `route`, typed.
#[derive(Default)]
pub(super) struct RouteFields {
    pub(super) redirect: Option<IstioRedirect>,
    pub(super) direct_response: Option<IstioDirectResponse>,
    pub(super) rewrite: Option<IstioRewrite>,
    pub(super) headers: Option<Headers>,
    pub(super) timeout: Option<String>,
    pub(super) retries: Option<IstioRetries>,
    pub(super) fault: Option<IstioFault>,
    pub(super) mirror: Option<Destination>,
    pub(super) mirror_percentage: Option<Percent>,
    pub(super) mirrors: Vec<IstioMirror>,
    pub(super) cors_policy: Option<IstioCors>,
    pub(super) delegate: bool,
    /// Keys this gateway does not know at all.
    pub(super) unknown: Vec<String>,
}

impl RouteFields {
    pub(super) fn parse(route: &HttpRoute) -> Result<Self, FieldError> {
        /// The field's value; the keys below it that its type ignored go to `unknown`.
        fn typed<T: Clone>(
            key: &str,
            field: &Option<Lenient<T>>,
            unknown: &mut Vec<String>,
        ) -> Result<Option<T>, FieldError> {
            match field {
                None => Ok(None),
                Some(lenient @ Lenient::Valid(value, _)) => {
                    unknown.extend(lenient.ignored_at(key));
                    Ok(Some(value.clone()))
                }
                Some(Lenient::Invalid(invalid)) => {
                    Err((invalid.field(key), invalid.message.clone()))
                }
            }
        }
        let mut unknown: Vec<String> = route.unknown.keys().cloned().collect();
        let u = &mut unknown;
        let percent = |percent: u32| Percent {
            value: f64::from(percent),
        };
        // In the order of the keys as written sorted, as they were read: the first
        // error is the route's, and of the mirror percentages the last key wins.
        let cors_policy = typed("corsPolicy", &route.cors_policy, u)?;
        let direct_response = typed("directResponse", &route.direct_response, u)?;
        let fault = typed("fault", &route.fault, u)?;
        let headers = typed("headers", &route.headers, u)?;
        let mirror = typed("mirror", &route.mirror, u)?;
        let mirror_percent = typed("mirrorPercent", &route.mirror_percent, u)?;
        let mirror_percentage = typed("mirrorPercentage", &route.mirror_percentage, u)?;
        let mirror_percent_snake = typed("mirror_percent", &route.mirror_percent_snake, u)?;
        let mirrors = typed("mirrors", &route.mirrors, u)?;
        let redirect = typed("redirect", &route.redirect, u)?;
        let retries = typed("retries", &route.retries, u)?;
        let rewrite = typed("rewrite", &route.rewrite, u)?;
        let timeout = typed("timeout", &route.timeout, u)?;
        Ok(RouteFields {
            redirect,
            direct_response,
            rewrite,
            headers,
            timeout,
            retries,
            fault,
            mirror,
            mirror_percentage: mirror_percent_snake
                .map(percent)
                .or(mirror_percentage)
                .or(mirror_percent.map(percent)),
            mirrors: mirrors.unwrap_or_default(),
            cors_policy,
            delegate: route.delegate.is_some(),
            unknown,
        })
    }
}
