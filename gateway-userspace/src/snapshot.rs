//! The compiled, immutable configuration that everything downstream of `compile` reads:
//! the proxy (listeners, route tables, clusters) and the kernel loader (ports).
//! A new one is built away from the hot path and swapped in whole.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use http::{HeaderMap, HeaderName, HeaderValue};
use regex::Regex;
use serde::{Serialize, Serializer};

pub use transport::{
    AfterTermination, ListenerTls, ServedCredential, SniRoute, TlsMode, TlsServer, Transport,
};

use crate::{
    config::resources::Labels,
    connection_pool::ConnectionPool,
    route_table::{RouteTable, StringMatcher},
};

mod transport;

#[derive(Debug, Default)]
pub struct Snapshot {
    /// Shared with the snapshots that endpoint updates derive from this one.
    pub listeners: Arc<Vec<Listener>>,
    /// Every cluster a route names, by `Cluster::id`. Shared whole by the snapshots that
    /// endpoint updates (and route changes that name no new cluster) derive from this one.
    pub clusters: Arc<Vec<Arc<Cluster>>>,
    /// Each cluster's ready endpoints, by `Cluster::id`: what an endpoint update replaces.
    pub endpoints: Vec<Arc<[SocketAddr]>>,
    /// What the kernel programs are told; derived from `listeners`.
    pub kernel: KernelPolicy,
    /// What the compile said about the objects (dropped ones, Gateway API status).
    pub report: Arc<crate::compile::report::Report>,
}

impl Snapshot {
    /// The listener a connection whose socket's local address is `local` belongs to: the
    /// one bound to that address and port, else the one for every address on the port (by
    /// bind port, or by node port when node-port mode steered the connection: sk_lookup
    /// keeps the port the client dialled as the socket's local port).
    pub fn listener_for(&self, local: SocketAddr) -> Option<&Listener> {
        let port = local.port();
        let on_port = |l: &&Listener| l.bind_port == port || l.node_port == Some(port);
        let mut wildcard = None;
        for listener in self.listeners.iter().filter(on_port) {
            match listener.address {
                Some(address) if address == local.ip() => return Some(listener),
                Some(_) => {}
                None => {
                    wildcard.get_or_insert(listener);
                }
            }
        }
        wildcard
    }

    /// The ready endpoints of `cluster`, a cluster of this snapshot.
    pub fn endpoints_of(&self, cluster: &Cluster) -> &[SocketAddr] {
        self.endpoints.get(cluster.id).map_or(&[], |e| e)
    }
}

/// `/config_dump` and `routes --json`: the listeners, then each cluster's endpoints
/// under its name.
impl Serialize for Snapshot {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        #[derive(Serialize)]
        struct ClusterEndpoints<'a> {
            name: &'a str,
            endpoints: &'a [SocketAddr],
        }
        let clusters: Vec<ClusterEndpoints<'_>> = self
            .clusters
            .iter()
            .map(|c| ClusterEndpoints {
                name: &c.name,
                endpoints: self.endpoints_of(c),
            })
            .collect();
        let mut out = serializer.serialize_struct("Snapshot", 4)?;
        out.serialize_field("listeners", &*self.listeners)?;
        out.serialize_field("clusters", &clusters)?;
        out.serialize_field("kernel", &self.kernel)?;
        out.serialize_field("report", &*self.report)?;
        out.end()
    }
}

#[derive(Debug, Serialize)]
pub struct Listener {
    /// The Gateway's port number (the Service port).
    pub port: u16,
    /// Where the socket binds: the targetPort of our own Service, else `port`.
    pub bind_port: u16,
    /// The one address it serves (a Gateway API Gateway's `spec.addresses`); None serves
    /// every address of the node. A connection is served by the listener of its exact
    /// local address where there is one, else by the port's listener for every address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<std::net::IpAddr>,
    /// The nodePort our Service maps to `port`, for node-port mode.
    pub node_port: Option<u16>,
    pub protocol: Protocol,
    /// `Gateway namespace/name` of each server merged into this listener.
    pub servers: Vec<String>,
    pub routes: RouteTable<RouteAction>,
    /// HTTPS, TLS and TCP ports: SNI selection, termination, passthrough, TCP routes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transport: Option<Arc<Transport>>,
    /// The AuthorizationPolicies that apply to this listener (`compile/authz.rs`).
    #[serde(skip_serializing_if = "crate::authz::ListenerAuthz::is_empty")]
    pub authz: Arc<crate::authz::ListenerAuthz>,
    /// Connections start with a PROXY protocol header from a load balancer
    /// (`proxy_protocol.rs`), whose client address then stands for the peer's.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub proxy_protocol: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    Http,
    Http2,
    Grpc,
    Https,
    Tls,
    Tcp,
}

impl Protocol {
    pub fn parse(protocol: &str) -> Option<Self> {
        match protocol.to_ascii_uppercase().as_str() {
            "HTTP" => Some(Protocol::Http),
            "HTTP2" => Some(Protocol::Http2),
            "GRPC" | "GRPC-WEB" => Some(Protocol::Grpc),
            "HTTPS" => Some(Protocol::Https),
            "TLS" => Some(Protocol::Tls),
            "TCP" | "MONGO" | "REDIS" | "MYSQL" => Some(Protocol::Tcp),
            _ => None,
        }
    }
}

/// What a matched route does with the request. Istio VirtualService `http` routes and
/// Gateway API HTTPRoute rules both compile into these.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum RouteAction {
    /// Proxy to one of the clusters, chosen by weight, with the route's policies.
    Forward(Box<Forward>),
    /// Answer with a redirect (Istio `redirect`, Gateway API RequestRedirect).
    Redirect(Box<Redirect>),
    /// Answer locally (Istio `directResponse`).
    DirectResponse(Box<DirectResponse>),
    /// The route asks for something the data plane does not do; answered with 501
    /// rather than silently proxying a request the user meant to be handled otherwise.
    Unsupported(String),
}

/// A proxied route: destinations plus everything Istio lets a route say about them.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Forward {
    pub clusters: Vec<WeightedCluster>,
    /// Header operations of the route (Istio `headers`, Gateway API
    /// RequestHeaderModifier/ResponseHeaderModifier).
    #[serde(skip_serializing_if = "HeaderPolicy::is_empty")]
    pub headers: HeaderPolicy,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<Rewrite>,
    /// Whole-request timeout (first byte of request to response headers); None: no limit,
    /// as Istio's default.
    #[serde(skip_serializing_if = "Option::is_none", with = "duration_opt")]
    pub timeout: Option<Duration>,
    pub retry: RetryPolicy,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fault: Option<Fault>,
    /// Copies of the request sent to these clusters, responses ignored.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mirrors: Vec<Mirror>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cors: Option<CorsPolicy>,
    /// A preflight from an origin `cors` does not allow is answered here (without
    /// allow-origin) rather than passed on: Istio's `unmatchedPreflights: IGNORE`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub cors_answers_unmatched_preflights: bool,
}

impl Forward {
    /// A plain forward to these clusters with Istio's defaults for everything else.
    pub fn to(clusters: Vec<WeightedCluster>) -> Self {
        Forward {
            clusters,
            ..Forward::default()
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct WeightedCluster {
    pub weight: u32,
    pub cluster: Arc<Cluster>,
    /// Header operations of this destination (Istio `route[].headers`, Gateway API
    /// backendRef filters), applied after the route's.
    #[serde(skip_serializing_if = "HeaderPolicy::is_empty")]
    pub headers: HeaderPolicy,
    /// A Gateway API backendRef that could not be resolved (no such Service, a kind we do
    /// not serve, a refused cross-namespace reference): its share of requests gets 500.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub invalid: bool,
    /// A Gateway API backendRef's URLRewrite: replaces the route's for this destination.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<Rewrite>,
    /// A Gateway API backendRef's RequestRedirect: this destination's share is redirected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redirect: Option<Box<Redirect>>,
}

impl WeightedCluster {
    pub fn new(weight: u32, cluster: Arc<Cluster>) -> Self {
        WeightedCluster {
            weight,
            cluster,
            headers: HeaderPolicy::default(),
            invalid: false,
            rewrite: None,
            redirect: None,
        }
    }
}

/// Header operations for the request (towards the upstream) and the response (towards
/// the client).
#[derive(Clone, Debug, Default, Serialize)]
pub struct HeaderPolicy {
    pub request: HeaderOps,
    pub response: HeaderOps,
}

impl HeaderPolicy {
    pub fn is_empty(&self) -> bool {
        self.request.is_empty() && self.response.is_empty()
    }
}

/// `set` replaces, `add` appends, `remove` deletes; applied remove → set → add, as
/// Envoy applies header_to_remove before headers_to_add.
#[derive(Clone, Debug, Default, Serialize)]
pub struct HeaderOps {
    #[serde(serialize_with = "header_pairs")]
    pub set: Vec<(HeaderName, HeaderValue)>,
    #[serde(serialize_with = "header_pairs")]
    pub add: Vec<(HeaderName, HeaderValue)>,
    #[serde(serialize_with = "header_names")]
    pub remove: Vec<HeaderName>,
}

impl HeaderOps {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }

    pub fn apply(&self, headers: &mut HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
    }
}

/// How the path of a forwarded or redirected request changes.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum PathRewrite {
    /// Replaces the prefix the route matched; the whole path when the route matched it
    /// otherwise (Istio `rewrite.uri`, Gateway API ReplacePrefixMatch).
    Prefix(String),
    /// Replaces the whole path (Istio `redirect.uri`, Gateway API ReplaceFullPath).
    Full(String),
    /// Replaces every match of `pattern` with `substitution` (`\1` or `$1` for groups;
    /// Istio `uriRegexRewrite`).
    Regex {
        #[serde(serialize_with = "regex_str")]
        pattern: Regex,
        substitution: String,
    },
}

#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Rewrite {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<PathRewrite>,
    /// Replaces Host/:authority towards the upstream.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Redirect {
    /// None keeps the request's scheme.
    pub scheme: Option<String>,
    /// Host part of the Location; None keeps the request's host.
    pub authority: Option<String>,
    pub port: RedirectPort,
    pub path: Option<PathRewrite>,
    /// 301 (Istio's default), 302 (Gateway API's default), 303, 307 or 308.
    pub status: u16,
    #[serde(skip_serializing_if = "HeaderPolicy::is_empty")]
    pub headers: HeaderPolicy,
    /// The route's CORS policy: Envoy's CORS filter runs before the router, so it answers
    /// preflights and adds its headers to the redirect too.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cors: Option<Box<LocalCors>>,
}

/// A CORS policy on a route the gateway answers itself (redirect, direct response).
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LocalCors {
    pub policy: CorsPolicy,
    /// Istio's `unmatchedPreflights: IGNORE` (see [`Forward`]).
    pub answers_unmatched_preflights: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum RedirectPort {
    /// Keep the port of the request's Host (Istio's default). When the scheme changes it
    /// is dropped only if it is the old scheme's default port, as Envoy's redirect does.
    FromRequest,
    /// Keep the request's Host verbatim, port and all: Istio's `tls.httpsRedirect`, which
    /// Envoy serves with the virtual host's `require_tls` (`https://` + Host + path).
    KeepAuthority,
    /// No port in the Location: the scheme's default (Istio `derivePort:
    /// FROM_PROTOCOL_DEFAULT`).
    ProtocolDefault,
    Fixed(u16),
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DirectResponse {
    pub status: u16,
    /// Istio's `body.string` or the bytes `body.bytes` decodes to; empty for none.
    #[serde(serialize_with = "lossy_text")]
    pub body: bytes::Bytes,
    #[serde(skip_serializing_if = "HeaderPolicy::is_empty")]
    pub headers: HeaderPolicy,
    /// The route's CORS policy (see [`Redirect::cors`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cors: Option<Box<LocalCors>>,
}

/// Istio's retry policy. Without `retries` in a VirtualService Istio (≥ 1.24) still
/// retries: 2 attempts on connect-failure, refused-stream and the gRPC statuses
/// unavailable and cancelled; `retriable-status-codes` is in the list but names no code,
/// so a 503 is not retried.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RetryPolicy {
    /// Retries after the first try (0 disables).
    pub attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none", with = "duration_opt")]
    pub per_try_timeout: Option<Duration>,
    pub retry_on: RetryOn,
    /// The first back-off (doubled per retry up to ten times it, as Envoy's
    /// `base_interval`); None: the proxy's default.
    #[serde(skip_serializing_if = "Option::is_none", with = "duration_opt")]
    pub backoff: Option<Duration>,
    /// A retry goes to an endpoint not tried yet when there is one (Envoy's
    /// `previous_hosts` predicate, which Istio adds unless `retryIgnorePreviousHosts: false`).
    pub avoid_previous_hosts: bool,
}

/// Istio's default retry count.
pub const DEFAULT_RETRY_ATTEMPTS: u32 = 2;

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: DEFAULT_RETRY_ATTEMPTS,
            per_try_timeout: None,
            retry_on: RetryOn::istio_default(),
            backoff: None,
            avoid_previous_hosts: true,
        }
    }
}

impl RetryPolicy {
    pub fn none() -> Self {
        RetryPolicy {
            attempts: 0,
            per_try_timeout: None,
            retry_on: RetryOn::default(),
            backoff: None,
            avoid_previous_hosts: true,
        }
    }
}

/// Envoy's `retry_on` conditions that the proxy knows how to observe.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RetryOn {
    /// Any 5xx response, or a connect failure/reset/timeout (`5xx`).
    pub server_error: bool,
    /// 502, 503, 504, or a connect failure (`gateway-error`).
    pub gateway_error: bool,
    pub connect_failure: bool,
    /// The upstream closed or reset before answering (`reset`).
    pub reset: bool,
    /// HTTP/2 REFUSED_STREAM (`refused-stream`).
    pub refused_stream: bool,
    /// 409 (`retriable-4xx`).
    pub retriable_4xx: bool,
    /// `retriable-status-codes` and bare numbers in `retryOn`.
    pub status_codes: Vec<u16>,
    /// gRPC statuses (in a response's headers: a trailers-only answer) that are retried,
    /// Envoy's `retry_grpc_on` (`cancelled`, `unavailable`, ...).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub grpc_statuses: Vec<u8>,
}

impl RetryOn {
    pub const GRPC_CANCELLED: u8 = 1;
    pub const GRPC_DEADLINE_EXCEEDED: u8 = 4;
    pub const GRPC_RESOURCE_EXHAUSTED: u8 = 8;
    pub const GRPC_INTERNAL: u8 = 13;
    pub const GRPC_UNAVAILABLE: u8 = 14;

    /// `connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes`.
    pub fn istio_default() -> Self {
        RetryOn {
            connect_failure: true,
            refused_stream: true,
            grpc_statuses: vec![Self::GRPC_UNAVAILABLE, Self::GRPC_CANCELLED],
            ..RetryOn::default()
        }
    }
}

#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Fault {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delay: Option<FaultDelay>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub abort: Option<FaultAbort>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FaultDelay {
    #[serde(with = "duration")]
    pub delay: Duration,
    /// Share of requests delayed, 0–100.
    pub percentage: f64,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FaultAbort {
    /// 200 when the abort names a gRPC status (as Envoy answers it).
    pub status: u16,
    /// The gRPC status code a gRPC request gets (Istio's `grpcStatus`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc_status: Option<u16>,
    /// Share of requests aborted, 0–100.
    pub percentage: f64,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Mirror {
    pub cluster: Arc<Cluster>,
    /// Share of requests mirrored, 0–100.
    pub percentage: f64,
}

/// Istio `corsPolicy`: preflight answered locally, CORS headers added to responses of
/// allowed origins.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CorsPolicy {
    pub allow_origins: Vec<StringMatcher>,
    /// Comma-joined, as sent in `access-control-allow-methods`.
    pub allow_methods: String,
    pub allow_headers: String,
    pub expose_headers: String,
    /// Seconds, as sent in `access-control-max-age`.
    pub max_age: Option<u64>,
    pub allow_credentials: bool,
}

/// Upstream HTTP version, from the Service port's `appProtocol` or name.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum UpstreamProtocol {
    #[default]
    Http1,
    /// h2c with prior knowledge (`http2`, `grpc`, `h2c`).
    Http2,
}

impl UpstreamProtocol {
    /// Istio's protocol selection: `appProtocol` first, then the port name's prefix
    /// before `-` (`grpc-web`, `http2-foo`).
    pub fn from_service_port(app_protocol: Option<&str>, port_name: &str) -> Self {
        let declared = app_protocol
            .map(str::to_owned)
            .unwrap_or_else(|| port_name.split('-').next().unwrap_or_default().to_owned());
        match declared.to_ascii_lowercase().as_str() {
            "http2" | "grpc" | "h2c" | "kubernetes.io/h2c" => UpstreamProtocol::Http2,
            _ => UpstreamProtocol::Http1,
        }
    }
}

/// How a cluster picks among its ready endpoints (DestinationRule `loadBalancer.simple`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum LoadBalancer {
    /// The fewer of two random endpoints' in-flight requests (Istio's default).
    #[default]
    LeastRequest,
    RoundRobin,
    Random,
    /// `consistentHash` (Istio's default for it, and `ringHash`): Envoy's ring hash.
    #[serde(rename_all = "camelCase")]
    RingHash {
        minimum_ring_size: u64,
    },
    /// `consistentHash.maglev`.
    #[serde(rename_all = "camelCase")]
    Maglev {
        table_size: u64,
    },
}

/// What a hashing cluster hashes (DestinationRule `consistentHash`), as Envoy's route
/// hash policy that Istio generates for it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum HashPolicy {
    /// `httpHeaderName`: the header's value.
    Header(String),
    /// `httpCookie`: the cookie's value; with a `ttl`, a client without the cookie gets
    /// one generated (Max-Age = ttl; a session cookie for 0).
    Cookie {
        name: String,
        path: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none", with = "duration_opt")]
        ttl: Option<Duration>,
    },
    /// `useSourceIp`: the client's address.
    SourceIp,
    /// `httpQueryParameterName`: the query parameter's value.
    QueryParameter(String),
}

/// Passive health checking (DestinationRule `outlierDetection`): an endpoint that fails
/// `consecutive_errors` times in a row is left out for `base_ejection_time`.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OutlierDetection {
    /// Consecutive 5xx answers or connect failures that eject (`consecutive5xxErrors`).
    pub consecutive_errors: u32,
    #[serde(with = "duration")]
    pub base_ejection_time: Duration,
    /// At most this share (0–100) of the endpoints is ejected at once.
    pub max_ejection_percent: u32,
}

/// Istio's default upstream connect timeout.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A service port (or ServiceEntry host) and how to reach it, named as Envoy names
/// clusters (`outbound|8000||httpbin.default.svc.cluster.local`) so metrics and logs read
/// alike. Its ready endpoints are kept apart, in `Snapshot::endpoints`, so that an
/// endpoint update replaces them without touching the routes that name the cluster.
#[derive(Debug, Serialize)]
pub struct Cluster {
    /// Position in `Snapshot::clusters` and `Snapshot::endpoints`.
    #[serde(skip)]
    pub id: usize,
    pub name: String,
    /// The destination host as Istio reports it (`httpbin.default.svc.cluster.local`).
    pub service: String,
    pub service_name: String,
    pub service_namespace: String,
    /// Where the endpoints come from, for endpoint updates.
    #[serde(skip)]
    pub endpoint_source: EndpointSource,
    pub protocol: UpstreamProtocol,
    pub load_balancer: LoadBalancer,
    /// The request's key for `RingHash` and `Maglev` balancers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hash_policy: Option<HashPolicy>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    /// TCP connect timeout to an endpoint (DestinationRule
    /// `connectionPool.tcp.connectTimeout`, Istio's default 10 s).
    #[serde(with = "duration")]
    pub connect_timeout: Duration,
    /// DestinationRule `connectionPool` limits (unlimited unless set).
    #[serde(skip_serializing_if = "ConnectionPool::is_unlimited")]
    pub connection_pool: ConnectionPool,
    /// TLS origination (DestinationRule `tls`, SIMPLE or MUTUAL); None: plaintext.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<Arc<crate::tls::upstream::UpstreamTls>>,
}

/// Where a cluster's endpoints come from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum EndpointSource {
    /// Written in the configuration itself (ServiceEntry endpoints), or none at all.
    #[default]
    Fixed,
    /// The ready endpoints of a Service port: its EndpointSlices, else its Endpoints.
    Service {
        namespace: String,
        name: String,
        /// The Service port's name, which EndpointSlice ports carry.
        port_name: String,
        /// The target port when a slice does not name the port (None for a named
        /// targetPort, which only the slices resolve).
        fallback_port: Option<u16>,
        /// A DestinationRule subset's labels, matched against the slices' labels.
        subset_labels: Option<Labels>,
    },
    /// The addresses a DNS resolver gives for names (ServiceEntry `resolution: DNS` or
    /// `DNS_ROUND_ROBIN`), kept up to date by `dns::Resolver`; any `fixed` IP endpoints
    /// the entry also lists are served beside them.
    Dns {
        targets: Vec<DnsTarget>,
        pick: DnsPick,
        fixed: Vec<SocketAddr>,
    },
}

/// A name to resolve and the port its addresses are served on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsTarget {
    /// Lowercase, without a trailing dot.
    pub name: String,
    pub port: u16,
}

/// Which of a name's addresses are endpoints, as Envoy's cluster types that Istio picks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DnsPick {
    /// `resolution: DNS` (Envoy `STRICT_DNS`): every address is an endpoint.
    All,
    /// `resolution: DNS_ROUND_ROBIN` (Envoy `LOGICAL_DNS`): new connections go to the first
    /// address of the latest answer; a server that rotates its answers spreads them.
    First,
}

impl EndpointSource {
    /// The Service (namespace, name) whose endpoint objects feed this cluster.
    pub fn service(&self) -> Option<(&str, &str)> {
        match self {
            EndpointSource::Fixed | EndpointSource::Dns { .. } => None,
            EndpointSource::Service {
                namespace, name, ..
            } => Some((namespace, name)),
        }
    }
}

impl Cluster {
    pub fn new(
        service: String,
        service_name: String,
        service_namespace: String,
        port: u16,
    ) -> Self {
        Cluster {
            id: 0,
            name: format!("outbound|{port}||{service}"),
            service,
            service_name,
            service_namespace,
            endpoint_source: EndpointSource::Fixed,
            protocol: UpstreamProtocol::default(),
            load_balancer: LoadBalancer::default(),
            hash_policy: None,
            outlier_detection: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            connection_pool: ConnectionPool::default(),
            tls: None,
        }
    }
}

impl RouteAction {
    /// Picks a cluster by weight (uniform when all weights are zero).
    pub fn pick_cluster(clusters: &[WeightedCluster]) -> Option<&WeightedCluster> {
        // One destination (most routes) is picked whatever its weight: no draw.
        if let [only] = clusters {
            return Some(only);
        }
        let total: u64 = clusters.iter().map(|c| u64::from(c.weight)).sum();
        if total == 0 {
            return clusters.get(fastrand::usize(..clusters.len().max(1)));
        }
        let mut ticket = fastrand::u64(..total);
        for c in clusters {
            let weight = u64::from(c.weight);
            if ticket < weight {
                return Some(c);
            }
            ticket -= weight;
        }
        None
    }
}

fn header_pairs<S: Serializer>(
    pairs: &[(HeaderName, HeaderValue)],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(
        pairs
            .iter()
            .map(|(n, v)| (n.as_str(), String::from_utf8_lossy(v.as_bytes()))),
    )
}

fn header_names<S: Serializer>(names: &[HeaderName], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(names.iter().map(HeaderName::as_str))
}

/// A body in dumps: its text, with any bytes that are not UTF-8 replaced.
fn lossy_text<S: Serializer>(body: &bytes::Bytes, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&String::from_utf8_lossy(body))
}

fn regex_str<S: Serializer>(regex: &Regex, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(regex.as_str())
}

/// Durations in dumps as Istio writes them (`1.5s`).
mod duration {
    use std::time::Duration;

    use serde::Serializer;

    pub(super) fn serialize<S: Serializer>(d: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format!("{}s", d.as_secs_f64()))
    }
}

mod duration_opt {
    use std::time::Duration;

    use serde::Serializer;

    pub(super) fn serialize<S: Serializer>(
        d: &Option<Duration>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => super::duration::serialize(d, serializer),
            None => serializer.serialize_none(),
        }
    }
}

/// The kernel's view of the snapshot.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct KernelPolicy {
    /// Ports the programs count and (later) police: every listener's bind port.
    pub ports: Vec<u16>,
    /// HTTPS/TLS bind ports and the SNI names each accepts, for early rejection.
    pub tls_ports: Vec<TlsPortPolicy>,
    /// Bind ports of plain TCP servers (opaque streams: counted only).
    pub tcp_ports: Vec<u16>,
    /// (node port, bind port) of our Service, for node-port mode: the kernel polices a
    /// node port as it does its bind port, and steers its connections to that listener.
    pub node_ports: Vec<(u16, u16)>,
    /// Bind ports whose AuthorizationPolicies decide a connection from its source address
    /// alone: the kernel drops denied sources' SYNs (`authz/source_rules.rs`).
    pub source_rules: Vec<PortSourceRules>,
}

/// What the kernel enforces on one port's SYNs, by source address.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct PortSourceRules {
    pub port: u16,
    pub rules: crate::authz::SourceRules,
}

/// SNI names one TLS port accepts: lowercase exact names and `*.suffix` wildcards;
/// `accept_any` when a `*` server takes every name (and ClientHellos without SNI).
#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct TlsPortPolicy {
    pub port: u16,
    pub accept_any: bool,
    pub names: Vec<String>,
    /// Every server on the port passes TLS through (none terminates it here).
    pub passthrough: bool,
}
