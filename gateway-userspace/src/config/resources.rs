//! The resources users write, as serde types: Istio networking (Gateway, VirtualService)
//! and the Kubernetes core objects they point at (Service, EndpointSlice).
//!
//! These mirror the YAML field for field (camelCase) and hold no meaning of their own:
//! `compile` decides what they mean. Unknown fields are tolerated, as `kubectl apply`
//! of a newer Istio version's field would be; fields we parse are type-checked.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub mod core_v1;
pub mod gateway_api;
pub mod http_route;
pub mod istio;
pub mod labels;
pub mod lenient;
pub mod security;

pub use core_v1::{Endpoints, Namespace};
pub use http_route::HttpRoute;
pub use istio::{DestinationRule, ServiceEntry};
pub use labels::Labels;
pub use lenient::Lenient;

/// Namespace of a resource that does not name one: what `kubectl apply` would use.
pub const DEFAULT_NAMESPACE: &str = "default";

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct ObjectMeta {
    pub name: String,
    pub namespace: Option<String>,
    pub labels: Labels,
    pub creation_timestamp: Option<String>,
    /// Bumped by the API server on spec changes; status conditions echo it.
    pub generation: Option<i64>,
}

impl ObjectMeta {
    pub fn namespace(&self) -> &str {
        self.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE)
    }
}

// ---------------------------------------------------------------------------
// networking.istio.io: Gateway

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Gateway {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: GatewaySpec,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct GatewaySpec {
    pub selector: BTreeMap<String, String>,
    pub servers: Vec<Server>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Server {
    pub port: ServerPort,
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub tls: Option<ServerTls>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub bind: Option<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServerPort {
    pub number: u32,
    pub protocol: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub target_port: Option<u32>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct ServerTls {
    pub https_redirect: bool,
    pub mode: Option<String>,
    pub credential_name: Option<String>,
    pub credential_names: Vec<String>,
    pub server_certificate: Option<String>,
    pub private_key: Option<String>,
    pub ca_certificates: Option<String>,
    pub subject_alt_names: Vec<String>,
    pub min_protocol_version: Option<String>,
    pub max_protocol_version: Option<String>,
    pub cipher_suites: Vec<String>,
}

// ---------------------------------------------------------------------------
// networking.istio.io: VirtualService

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VirtualService {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: VirtualServiceSpec,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct VirtualServiceSpec {
    pub hosts: Vec<String>,
    pub gateways: Vec<String>,
    pub http: Vec<HttpRoute>,
    /// Each route checked on its own: a wrongly typed one is reported and skipped by
    /// compile, the rest of the VirtualService still served.
    pub tls: Vec<Lenient<TlsRoute>>,
    pub tcp: Vec<Lenient<TcpRoute>>,
    /// Namespaces that may use it; for a delegate, whose root may refer to it.
    pub export_to: Vec<String>,
}

/// Istio's `TLSRoute`: passthrough traffic by SNI.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct TlsRoute {
    #[serde(rename = "match")]
    pub matches: Vec<TlsMatchAttributes>,
    pub route: Vec<RouteDestination>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct TlsMatchAttributes {
    pub sni_hosts: Vec<String>,
    pub destination_subnets: Vec<String>,
    pub port: Option<u32>,
    /// Sidecar-only conditions, as in `HttpMatchRequest`.
    pub source_labels: BTreeMap<String, String>,
    pub gateways: Vec<String>,
    pub source_namespace: Option<String>,
}

/// Istio's `TCPRoute`: opaque TCP traffic.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct TcpRoute {
    #[serde(rename = "match")]
    pub matches: Vec<L4MatchAttributes>,
    pub route: Vec<RouteDestination>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct L4MatchAttributes {
    pub destination_subnets: Vec<String>,
    pub port: Option<u32>,
    /// Hidden from Istio's documentation, still in its API.
    pub source_subnet: Option<String>,
    pub source_labels: BTreeMap<String, String>,
    pub gateways: Vec<String>,
    pub source_namespace: Option<String>,
}

/// Istio's `RouteDestination`: a destination of a `tls` or `tcp` route and its share.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RouteDestination {
    pub destination: Destination,
    #[serde(default)]
    pub weight: Option<u32>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpMatchRequest {
    pub name: Option<String>,
    pub uri: Option<StringMatch>,
    pub scheme: Option<StringMatch>,
    pub method: Option<StringMatch>,
    pub authority: Option<StringMatch>,
    pub headers: BTreeMap<String, StringMatch>,
    pub without_headers: BTreeMap<String, StringMatch>,
    pub query_params: BTreeMap<String, StringMatch>,
    pub port: Option<u32>,
    pub ignore_uri_case: bool,
    /// The match applies only to these gateways (`mesh` is the sidecars).
    pub gateways: Vec<String>,
    /// The match applies only to proxies with these labels, in this namespace.
    pub source_labels: BTreeMap<String, String>,
    pub source_namespace: Option<String>,
}

/// Istio's `StringMatch`: at most one of the three; none means "present" in `headers`,
/// `withoutHeaders` and `queryParams`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct StringMatch {
    pub exact: Option<String>,
    pub prefix: Option<String>,
    pub regex: Option<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteDestination {
    pub destination: Destination,
    #[serde(default)]
    pub weight: Option<u32>,
    /// Header operations for requests to (and responses from) this destination.
    #[serde(default)]
    pub headers: Option<Headers>,
}

/// Istio's `Headers`: operations on request and response headers.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct Headers {
    pub request: HeaderOperations,
    pub response: HeaderOperations,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct HeaderOperations {
    pub set: BTreeMap<String, String>,
    pub add: BTreeMap<String, String>,
    pub remove: Vec<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Destination {
    pub host: String,
    #[serde(default)]
    pub subset: Option<String>,
    #[serde(default)]
    pub port: Option<PortSelector>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PortSelector {
    pub number: u32,
}

// ---------------------------------------------------------------------------
// v1 Service

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Service {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: ServiceSpec,
    /// Where a load balancer exposes it: the gateway's own Service's addresses are what
    /// Gateway API `status.addresses` reports.
    #[serde(default)]
    pub status: ServiceStatus,
    /// Istio's `proxy.istio.io/config` annotation asks for
    /// `gatewayTopology.proxyProtocol`: on our own Service, every listener reads a PROXY
    /// protocol header first. Read by the loader (`ObjectMeta` keeps no annotations).
    #[serde(skip)]
    pub proxy_protocol: bool,
}

/// Istio's proxy configuration annotation (a ProxyConfig in YAML).
pub const PROXY_CONFIG_ANNOTATION: &str = "proxy.istio.io/config";

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct ServiceStatus {
    pub load_balancer: LoadBalancerStatus,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct LoadBalancerStatus {
    pub ingress: Vec<LoadBalancerIngress>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct LoadBalancerIngress {
    pub ip: Option<String>,
    pub hostname: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct ServiceSpec {
    pub selector: Labels,
    pub ports: Vec<ServicePort>,
    #[serde(rename = "type")]
    pub service_type: Option<String>,
    #[serde(rename = "externalIPs")]
    pub external_ips: Vec<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    #[serde(default)]
    pub name: String,
    pub port: u32,
    #[serde(default)]
    pub target_port: Option<IntOrString>,
    #[serde(default)]
    pub node_port: Option<u32>,
    #[serde(default)]
    pub protocol: Option<String>,
    #[serde(default)]
    pub app_protocol: Option<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(untagged)]
pub enum IntOrString {
    Int(u32),
    String(String),
}

// ---------------------------------------------------------------------------
// discovery.k8s.io/v1 EndpointSlice

/// Label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EndpointSlice {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub address_type: Option<String>,
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
    #[serde(default)]
    pub ports: Vec<EndpointPort>,
}

impl EndpointSlice {
    /// The Service `(namespace, name)` this slice belongs to (its service-name label).
    pub fn service(&self) -> Option<(&str, &str)> {
        let service = self.metadata.labels.get(SERVICE_NAME_LABEL)?;
        Some((self.metadata.namespace(), service.as_str()))
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    pub addresses: Vec<String>,
    #[serde(default)]
    pub conditions: EndpointConditions,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct EndpointConditions {
    /// Absent means ready (the Kubernetes API's convention).
    pub ready: Option<bool>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EndpointPort {
    #[serde(default)]
    pub name: Option<String>,
    pub port: u32,
    #[serde(default)]
    pub protocol: Option<String>,
}

// ---------------------------------------------------------------------------
// v1 ConfigMap (CA certificates for Gateway API frontend client-certificate validation)

/// A ConfigMap; `ca.crt` holds the PEM CA bundle a `caCertificateRefs` entry names.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ConfigMap {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub data: BTreeMap<String, String>,
}

// ---------------------------------------------------------------------------
// v1 Secret (TLS credentials named by a Gateway server's `credentialName`)

/// A Secret as mounted or exported: `data` is base64 (as the API returns it),
/// `stringData` is plain text (as people write it by hand). Keys used: `tls.crt`,
/// `tls.key`, `ca.crt` (type `kubernetes.io/tls`) or `cert`, `key`, `cacert` (generic).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Secret {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default, rename = "type")]
    pub secret_type: Option<String>,
    #[serde(default)]
    pub data: BTreeMap<String, String>,
    #[serde(default)]
    pub string_data: BTreeMap<String, String>,
}
