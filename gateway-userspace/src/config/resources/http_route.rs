//! VirtualService `http` routes as written (Istio's `HTTPRoute`, `networking/v1`):
//! matches and destinations, and each action field checked on its own ([`Lenient`]) so
//! that a wrongly typed one is reported at its path while the rest of the document loads.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Destination, Headers, HttpMatchRequest, HttpRouteDestination, Lenient, StringMatch};

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpRoute {
    pub name: Option<String>,
    #[serde(rename = "match")]
    pub matches: Vec<HttpMatchRequest>,
    pub route: Vec<HttpRouteDestination>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redirect: Option<Lenient<IstioRedirect>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub direct_response: Option<Lenient<IstioDirectResponse>>,
    /// Another VirtualService (without hosts) whose routes replace this one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delegate: Option<Lenient<Delegate>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<Lenient<IstioRewrite>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Lenient<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retries: Option<Lenient<IstioRetries>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fault: Option<Lenient<IstioFault>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mirror: Option<Lenient<Destination>>,
    /// Deprecated integer percentages of `mirror`, in both spellings Istio accepted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mirror_percent: Option<Lenient<u32>>,
    #[serde(rename = "mirror_percent", skip_serializing_if = "Option::is_none")]
    pub mirror_percent_snake: Option<Lenient<u32>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mirror_percentage: Option<Lenient<Percent>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mirrors: Option<Lenient<Vec<IstioMirror>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cors_policy: Option<Lenient<IstioCors>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub headers: Option<Lenient<Headers>>,
    /// Keys this gateway does not know at all, kept by name so that compile (and
    /// `validate`) can say they are ignored.
    #[serde(flatten)]
    pub unknown: BTreeMap<String, serde_yaml::Value>,
}

/// `delegate: {name, namespace}`; the namespace defaults to the root's.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Delegate {
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct IstioRedirect {
    pub uri: Option<String>,
    pub authority: Option<String>,
    pub port: Option<u32>,
    pub derive_port: Option<String>,
    pub scheme: Option<String>,
    pub redirect_code: Option<u32>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct IstioRewrite {
    pub uri: Option<String>,
    pub authority: Option<String>,
    pub uri_regex_rewrite: Option<IstioRegexRewrite>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct IstioRegexRewrite {
    #[serde(rename = "match")]
    pub pattern: String,
    pub rewrite: String,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct IstioDirectResponse {
    pub status: u32,
    #[serde(default)]
    pub body: Option<IstioBody>,
}

/// Istio's `HTTPBody`: one of `string` or `bytes` (base64, as protobuf's JSON has it).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct IstioBody {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub string: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct IstioRetries {
    pub attempts: Option<u32>,
    pub per_try_timeout: Option<String>,
    pub retry_on: Option<String>,
    pub retry_ignore_previous_hosts: Option<bool>,
    pub backoff: Option<String>,
    /// Locality-aware retries: one locality here, nothing to do.
    #[allow(dead_code)]
    pub retry_remote_localities: Option<bool>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct IstioFault {
    pub delay: Option<IstioDelay>,
    pub abort: Option<IstioAbort>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct IstioDelay {
    pub fixed_delay: Option<String>,
    pub percentage: Option<Percent>,
    /// Deprecated integer percentage.
    pub percent: Option<u32>,
    /// In Istio's API, never implemented: Istio drops a delay that has only this.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exponential_delay: Option<serde_yaml::Value>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct IstioAbort {
    pub http_status: Option<u32>,
    pub grpc_status: Option<String>,
    /// In Istio's API, never implemented: Istio drops an abort that has only this.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http2_error: Option<serde_yaml::Value>,
    pub percentage: Option<Percent>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct Percent {
    pub value: f64,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct IstioMirror {
    pub destination: Destination,
    #[serde(default)]
    pub percentage: Option<Percent>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct IstioCors {
    pub allow_origins: Vec<StringMatch>,
    /// Deprecated exact origins.
    pub allow_origin: Vec<String>,
    pub allow_methods: Vec<String>,
    pub allow_headers: Vec<String>,
    pub expose_headers: Vec<String>,
    pub max_age: Option<String>,
    pub allow_credentials: Option<bool>,
    /// `FORWARD` (the default) or `IGNORE`: what happens to a preflight from an origin
    /// the policy does not allow.
    pub unmatched_preflights: Option<String>,
}
