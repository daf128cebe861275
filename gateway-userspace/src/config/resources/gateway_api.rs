//! `gateway.networking.k8s.io`: GatewayClass, Gateway, HTTPRoute, GRPCRoute, TLSRoute,
//! TCPRoute and ReferenceGrant, field for field. Closed vocabularies (path match types,
//! filter types, …) are enums so that a typo is reported at its line with the accepted
//! values; open ones (listener protocols may be domain-prefixed) stay strings.

use std::{collections::BTreeMap, sync::Arc};

use serde::{Deserialize, Serialize};

use super::{Labels, Lenient, ObjectMeta};

/// A Gateway API object: metadata and a spec, nothing else is read (status is ignored).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct Object<S> {
    pub metadata: ObjectMeta,
    pub spec: S,
}

pub type GatewayClass = Object<GatewayClassSpec>;
pub type ApiGateway = Object<ApiGatewaySpec>;
pub type HttpRoute = Object<HttpRouteSpec>;
pub type GrpcRoute = Object<GrpcRouteSpec>;
pub type TlsRoute = Object<TlsRouteSpec>;
pub type TcpRoute = Object<TcpRouteSpec>;
pub type ReferenceGrant = Object<ReferenceGrantSpec>;
pub type BackendTlsPolicy = Object<BackendTlsPolicySpec>;

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct GatewayClassSpec {
    pub controller_name: String,
    pub description: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct ApiGatewaySpec {
    pub gateway_class_name: String,
    pub listeners: Vec<Listener>,
    /// `spec.addresses`: IPAddress values bind the listeners there (compile/addresses.rs).
    pub addresses: Vec<GatewaySpecAddress>,
    /// `spec.tls`: frontend client-certificate validation (`backend` is reported as not
    /// applied).
    #[serde(default)]
    pub tls: Option<GatewayTls>,
    /// `spec.infrastructure`: only its `parametersRef` is judged (we provision nothing).
    #[serde(default)]
    pub infrastructure: Option<GatewayInfrastructure>,
}

/// `GatewayInfrastructure`; labels and annotations are for provisioned resources, which a
/// node-local data plane does not create.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct GatewayInfrastructure {
    pub parameters_ref: Option<LocalParametersReference>,
}

/// `LocalParametersReference`: an object in the Gateway's namespace.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct LocalParametersReference {
    pub group: String,
    pub kind: String,
    pub name: String,
}

/// `GatewaySpecAddress`: `type` defaults to `IPAddress`; an empty value asks the
/// implementation to choose. The type is an open vocabulary (domain-prefixed types are
/// implementation-specific), so it stays a string and the compile judges it.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct GatewaySpecAddress {
    #[serde(rename = "type")]
    pub address_type: Option<String>,
    pub value: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct GatewayTls {
    pub frontend: Option<FrontendTls>,
    /// The Gateway's client certificate towards backends: parsed to be reported.
    pub backend: Option<Lenient<GatewayBackendTls>>,
}

/// `GatewayBackendTLS`: the client certificate the Gateway would present to backends.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct GatewayBackendTls {
    pub client_certificate_ref: Option<ObjectReference>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct FrontendTls {
    pub default: TlsConfig,
    pub per_port: Vec<PortTlsConfig>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct PortTlsConfig {
    pub port: u32,
    pub tls: TlsConfig,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct TlsConfig {
    pub validation: Option<FrontendValidation>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct FrontendValidation {
    pub ca_certificate_refs: Vec<ObjectReference>,
    /// `AllowValidOnly` (the default) or `AllowInsecureFallback`.
    pub mode: Option<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Listener {
    pub name: String,
    #[serde(default)]
    pub hostname: Option<String>,
    pub port: u32,
    /// `HTTP`, `HTTPS`, `TLS`, `TCP`, `UDP` or a domain-prefixed custom protocol.
    pub protocol: String,
    #[serde(default)]
    pub tls: Option<ListenerTls>,
    #[serde(default)]
    pub allowed_routes: AllowedRoutes,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct ListenerTls {
    pub mode: Option<TlsMode>,
    pub certificate_refs: Vec<ObjectReference>,
    pub options: BTreeMap<String, String>,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub enum TlsMode {
    Terminate,
    Passthrough,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct AllowedRoutes {
    pub namespaces: RouteNamespaces,
    pub kinds: Vec<RouteGroupKind>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct RouteNamespaces {
    pub from: FromNamespaces,
    pub selector: Option<LabelSelector>,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
pub enum FromNamespaces {
    All,
    #[default]
    Same,
    Selector,
    None,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct LabelSelector {
    pub match_labels: BTreeMap<String, String>,
    /// Each checked on its own: one that cannot be read matches nothing.
    pub match_expressions: Vec<Lenient<LabelSelectorRequirement>>,
}

/// `metav1.LabelSelectorRequirement`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelectorRequirement {
    pub key: String,
    pub operator: String,
    #[serde(default)]
    pub values: Vec<String>,
}

impl LabelSelector {
    /// Whether `labels` satisfy the selector, as `metav1.LabelSelector` defines it: every
    /// matchLabels pair and every matchExpression (In, NotIn, Exists, DoesNotExist). An
    /// expression that cannot be read matches nothing (a selector we misread must not
    /// admit routes it was meant to keep out).
    pub fn matches(&self, labels: &Labels) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self
                .match_expressions
                .iter()
                .all(|e| expression_matches(e, labels))
    }
}

fn expression_matches(expression: &Lenient<LabelSelectorRequirement>, labels: &Labels) -> bool {
    let Some(LabelSelectorRequirement {
        key,
        operator,
        values,
    }) = expression.valid()
    else {
        return false;
    };
    let value = labels.get(key).map(String::as_str);
    let listed = |v: &str| values.iter().any(|listed| listed == v);
    match operator.as_str() {
        "In" => value.is_some_and(listed),
        "NotIn" => value.is_none_or(|v| !listed(v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        _ => false,
    }
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct RouteGroupKind {
    pub group: Option<String>,
    pub kind: String,
}

/// A reference to a Secret, a Service, … (`group` "" is core).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct ObjectReference {
    pub group: Option<String>,
    pub kind: Option<String>,
    pub name: String,
    pub namespace: Option<String>,
}

// ---------------------------------------------------------------------------
// Routes

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct ParentReference {
    pub group: Option<String>,
    pub kind: Option<String>,
    pub namespace: Option<String>,
    pub name: String,
    pub section_name: Option<String>,
    pub port: Option<u32>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpRouteSpec {
    pub parent_refs: Vec<ParentReference>,
    pub hostnames: Vec<String>,
    pub rules: Vec<HttpRouteRule>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpRouteRule {
    pub name: Option<String>,
    pub matches: Vec<HttpRouteMatch>,
    pub filters: Vec<HttpRouteFilter>,
    pub backend_refs: Vec<HttpBackendRef>,
    pub timeouts: Option<HttpRouteTimeouts>,
    pub retry: Option<HttpRouteRetry>,
}

/// Extended `HTTPRouteRetry`: status codes to retry on, how many retries, and the
/// back-off between them (a duration such as `100ms`).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpRouteRetry {
    pub codes: Vec<u16>,
    pub attempts: Option<u32>,
    pub backoff: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpRouteMatch {
    pub path: Option<HttpPathMatch>,
    pub headers: Vec<NameMatch>,
    pub query_params: Vec<NameMatch>,
    pub method: Option<HttpMethod>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HttpPathMatch {
    #[serde(rename = "type", default)]
    pub match_type: PathMatchType,
    #[serde(default = "root_path")]
    pub value: String,
}

fn root_path() -> String {
    "/".to_owned()
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
pub enum PathMatchType {
    Exact,
    #[default]
    PathPrefix,
    RegularExpression,
}

/// A header or query parameter match.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NameMatch {
    #[serde(rename = "type", default)]
    pub match_type: ValueMatchType,
    pub name: String,
    pub value: String,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
pub enum ValueMatchType {
    #[default]
    Exact,
    RegularExpression,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "UPPERCASE")]
pub enum HttpMethod {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Connect,
    Options,
    Trace,
    Patch,
}

impl HttpMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            HttpMethod::Get => "GET",
            HttpMethod::Head => "HEAD",
            HttpMethod::Post => "POST",
            HttpMethod::Put => "PUT",
            HttpMethod::Delete => "DELETE",
            HttpMethod::Connect => "CONNECT",
            HttpMethod::Options => "OPTIONS",
            HttpMethod::Trace => "TRACE",
            HttpMethod::Patch => "PATCH",
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteFilter {
    #[serde(rename = "type")]
    pub filter_type: FilterType,
    #[serde(default)]
    pub request_header_modifier: Option<HeaderModifier>,
    #[serde(default)]
    pub response_header_modifier: Option<HeaderModifier>,
    #[serde(default)]
    pub request_redirect: Option<RequestRedirect>,
    #[serde(default)]
    pub url_rewrite: Option<UrlRewrite>,
    #[serde(default)]
    pub request_mirror: Option<RequestMirror>,
    #[serde(default)]
    pub cors: Option<HttpCors>,
    #[serde(default)]
    pub extension_ref: Option<ObjectReference>,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub enum FilterType {
    RequestHeaderModifier,
    ResponseHeaderModifier,
    RequestRedirect,
    #[serde(rename = "URLRewrite")]
    UrlRewrite,
    RequestMirror,
    #[serde(rename = "CORS")]
    Cors,
    ExternalAuth,
    ExtensionRef,
}

/// The CORS filter (Extended `HTTPRouteCORS`).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpCors {
    /// `*`, or origins such as `https://example.com`, with `*` standing for a host's
    /// leftmost labels (`https://*.example.com`).
    pub allow_origins: Vec<String>,
    pub allow_credentials: bool,
    pub allow_methods: Vec<String>,
    pub allow_headers: Vec<String>,
    pub expose_headers: Vec<String>,
    /// Seconds; the spec's default is 5.
    pub max_age: Option<u64>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct HeaderModifier {
    pub set: Vec<HttpHeader>,
    pub add: Vec<HttpHeader>,
    pub remove: Vec<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct HttpHeader {
    pub name: String,
    pub value: String,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct RequestRedirect {
    pub scheme: Option<String>,
    pub hostname: Option<String>,
    pub path: Option<PathModifier>,
    pub port: Option<u32>,
    pub status_code: Option<u16>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct UrlRewrite {
    pub hostname: Option<String>,
    pub path: Option<PathModifier>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PathModifier {
    #[serde(rename = "type")]
    pub modifier_type: PathModifierType,
    #[serde(default)]
    pub replace_full_path: Option<String>,
    #[serde(default)]
    pub replace_prefix_match: Option<String>,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub enum PathModifierType {
    ReplaceFullPath,
    ReplacePrefixMatch,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct RequestMirror {
    pub backend_ref: BackendRef,
    pub percent: Option<u32>,
    pub fraction: Option<Fraction>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct Fraction {
    pub numerator: u32,
    pub denominator: Option<u32>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpRouteTimeouts {
    pub request: Option<String>,
    pub backend_request: Option<String>,
}

/// A backend: a Service (default) port, with a weight (default 1).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct BackendRef {
    pub group: Option<String>,
    pub kind: Option<String>,
    pub name: String,
    pub namespace: Option<String>,
    pub port: Option<u32>,
    pub weight: Option<u32>,
}

/// A backend of an HTTPRoute or GRPCRoute rule, with its own filters. Read through
/// [`HttpBackendRefWire`], not `#[serde(flatten)]`: flatten drops the keys neither part
/// knows where `validate` could not see them.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(from = "HttpBackendRefWire")]
pub struct HttpBackendRef {
    #[serde(flatten)]
    pub backend: BackendRef,
    pub filters: Vec<HttpRouteFilter>,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct HttpBackendRefWire {
    group: Option<String>,
    kind: Option<String>,
    name: String,
    namespace: Option<String>,
    port: Option<u32>,
    weight: Option<u32>,
    filters: Vec<HttpRouteFilter>,
}

impl From<HttpBackendRefWire> for HttpBackendRef {
    fn from(wire: HttpBackendRefWire) -> Self {
        HttpBackendRef {
            backend: BackendRef {
                group: wire.group,
                kind: wire.kind,
                name: wire.name,
                namespace: wire.namespace,
                port: wire.port,
                weight: wire.weight,
            },
            filters: wire.filters,
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct GrpcRouteSpec {
    pub parent_refs: Vec<ParentReference>,
    pub hostnames: Vec<String>,
    pub rules: Vec<GrpcRouteRule>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct GrpcRouteRule {
    pub name: Option<String>,
    pub matches: Vec<GrpcRouteMatch>,
    pub filters: Vec<HttpRouteFilter>,
    pub backend_refs: Vec<HttpBackendRef>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct GrpcRouteMatch {
    pub method: Option<GrpcMethodMatch>,
    pub headers: Vec<NameMatch>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct GrpcMethodMatch {
    #[serde(rename = "type")]
    pub match_type: ValueMatchType,
    pub service: Option<String>,
    pub method: Option<String>,
}

/// TLSRoute: SNI hostnames and one rule's backends.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct TlsRouteSpec {
    pub parent_refs: Vec<ParentReference>,
    pub hostnames: Vec<String>,
    pub rules: Vec<L4RouteRule>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct TcpRouteSpec {
    pub parent_refs: Vec<ParentReference>,
    pub rules: Vec<L4RouteRule>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct L4RouteRule {
    pub name: Option<String>,
    pub backend_refs: Vec<BackendRef>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct ReferenceGrantSpec {
    pub from: Vec<ReferenceGrantFrom>,
    pub to: Vec<ReferenceGrantTo>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct ReferenceGrantFrom {
    pub group: String,
    pub kind: String,
    pub namespace: String,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct ReferenceGrantTo {
    pub group: String,
    pub kind: String,
    pub name: Option<String>,
}

/// BackendTLSPolicy (v1, v1alpha3): how the gateway originates TLS to a Service
/// (compile/backend_tls.rs). `options` are implementation-specific and none are read.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct BackendTlsPolicySpec {
    pub target_refs: Vec<PolicyTargetReference>,
    pub validation: BackendTlsValidation,
    /// Set on a stand-in for a policy that does not parse, or was dropped for its errors
    /// (`config::stand_in`): why; its targets refuse their connections (503 `UF`) rather
    /// than send them in plaintext.
    #[serde(skip)]
    pub fail_closed: Option<Arc<str>>,
}

/// `LocalPolicyTargetReferenceWithSectionName`: an object in the policy's namespace.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct PolicyTargetReference {
    pub group: String,
    pub kind: String,
    pub name: String,
    pub section_name: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct BackendTlsValidation {
    pub ca_certificate_refs: Vec<LocalObjectReference>,
    /// `System`, or an implementation-specific name (none is known here).
    #[serde(rename = "wellKnownCACertificates")]
    pub well_known_ca_certificates: Option<String>,
    pub hostname: String,
    pub subject_alt_names: Vec<SubjectAltName>,
}

/// `LocalObjectReference`: group, kind and name in the referrer's namespace.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct LocalObjectReference {
    pub group: String,
    pub kind: String,
    pub name: String,
}

/// A name the backend's certificate must carry: `type` Hostname or URI.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct SubjectAltName {
    #[serde(rename = "type")]
    pub san_type: String,
    pub hostname: Option<String>,
    pub uri: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_selectors_match_as_kubernetes_defines_them() {
        let selector: LabelSelector = serde_yaml::from_str(
            "matchLabels: {team: a}\nmatchExpressions:\n- {key: env, operator: In, values: [prod, staging]}\n- {key: legacy, operator: DoesNotExist}",
        )
        .expect("a selector");
        let labels = |pairs: &[(&str, &str)]| -> Labels {
            pairs
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect()
        };
        for (pairs, want) in [
            (&[("team", "a"), ("env", "prod")][..], true),
            (&[("team", "a"), ("env", "staging"), ("x", "y")][..], true),
            (&[("team", "b"), ("env", "prod")][..], false),
            (&[("team", "a"), ("env", "dev")][..], false),
            (&[("team", "a")][..], false),
            (&[("team", "a"), ("env", "prod"), ("legacy", "")][..], false),
        ] {
            assert_eq!(selector.matches(&labels(pairs)), want, "{pairs:?}");
        }
        let unreadable: LabelSelector =
            serde_yaml::from_str("matchExpressions: [{key: env, operator: Sometimes}]")
                .expect("parses");
        assert!(!unreadable.matches(&labels(&[("env", "prod")])));
        assert!(LabelSelector::default().matches(&labels(&[])));
    }
}
