//! VirtualService `http` route actions as written.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::config::resources::{Destination, Headers, StringMatch};

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
    pub(super) fn parse(other: &BTreeMap<String, serde_yaml::Value>) -> Result<Self, FieldError> {
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
pub(super) struct IstioRedirect {
    pub(super) uri: Option<String>,
    pub(super) authority: Option<String>,
    pub(super) port: Option<u32>,
    pub(super) derive_port: Option<String>,
    pub(super) scheme: Option<String>,
    pub(super) redirect_code: Option<u32>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub(super) struct IstioRewrite {
    pub(super) uri: Option<String>,
    pub(super) authority: Option<String>,
    pub(super) uri_regex_rewrite: Option<IstioRegexRewrite>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct IstioRegexRewrite {
    #[serde(rename = "match")]
    pub(super) pattern: String,
    pub(super) rewrite: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct IstioDirectResponse {
    pub(super) status: u32,
    #[serde(default)]
    pub(super) body: Option<IstioBody>,
}

#[derive(Clone, Debug, Deserialize)]
pub(super) struct IstioBody {
    #[serde(default)]
    pub(super) string: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub(super) struct IstioRetries {
    pub(super) attempts: Option<u32>,
    pub(super) per_try_timeout: Option<String>,
    pub(super) retry_on: Option<String>,
    pub(super) retry_ignore_previous_hosts: Option<bool>,
    pub(super) backoff: Option<String>,
    /// Locality-aware retries: one locality here, nothing to do.
    #[allow(dead_code)]
    pub(super) retry_remote_localities: Option<bool>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub(super) struct IstioFault {
    pub(super) delay: Option<IstioDelay>,
    pub(super) abort: Option<IstioAbort>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub(super) struct IstioDelay {
    pub(super) fixed_delay: Option<String>,
    pub(super) percentage: Option<Percent>,
    /// Deprecated integer percentage.
    pub(super) percent: Option<u32>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub(super) struct IstioAbort {
    pub(super) http_status: Option<u32>,
    pub(super) grpc_status: Option<String>,
    pub(super) percentage: Option<Percent>,
}

#[derive(Clone, Debug, Deserialize)]
pub(super) struct Percent {
    pub(super) value: f64,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct IstioMirror {
    pub(super) destination: Destination,
    #[serde(default)]
    pub(super) percentage: Option<Percent>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub(super) struct IstioCors {
    pub(super) allow_origins: Vec<StringMatch>,
    /// Deprecated exact origins.
    pub(super) allow_origin: Vec<String>,
    pub(super) allow_methods: Vec<String>,
    pub(super) allow_headers: Vec<String>,
    pub(super) expose_headers: Vec<String>,
    pub(super) max_age: Option<String>,
    pub(super) allow_credentials: Option<bool>,
    /// `FORWARD` (the default) or `IGNORE`: what happens to a preflight from an origin
    /// the policy does not allow.
    pub(super) unmatched_preflights: Option<String>,
}
