//! Loading: paths → YAML documents → typed resources, each remembering where it came from.
//! Problems become [`Diagnostic`]s that name file, line, resource and field; a document
//! with an error is left out, and the caller decides whether errors stop the load.

pub mod cache;
pub mod diagnostics;
pub mod documents;
pub mod locate;
pub mod object_ref;
mod plain_yaml;
pub mod resources;
pub mod source;
pub mod stand_in;
pub(crate) mod unknown_fields;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Arc,
};

use serde::{Deserialize, de::DeserializeOwned};

pub use diagnostics::{Diagnostic, Diagnostics, Location, Severity};
pub use object_ref::{Kind, ObjectRef};
use resources::{
    ConfigMap, DestinationRule, EndpointSlice, Endpoints, Gateway, Namespace, ObjectMeta, Secret,
    Service, ServiceEntry, VirtualService,
    gateway_api::{
        ApiGateway, BackendTlsPolicy, GatewayClass, GrpcRoute, HttpRoute, ReferenceGrant, TcpRoute,
        TlsRoute,
    },
    security::AuthorizationPolicy,
};
pub use source::SourceError;
use source::{Document, read_documents};

const ISTIO_NETWORKING: &str = "networking.istio.io";
const ISTIO_SECURITY: &str = "security.istio.io";
/// AuthorizationPolicy versions served (v1beta1 is what clusters before Istio 1.22 have).
const ISTIO_SECURITY_VERSIONS: [&str; 2] = ["v1", "v1beta1"];
const ISTIO_VERSIONS: [&str; 3] = ["v1alpha3", "v1beta1", "v1"];
const GATEWAY_API: &str = "gateway.networking.k8s.io";
/// Gateway API versions each kind is served in; the alpha ones are what older clusters
/// (Gateway API ≤ 1.4) still serve for the experimental kinds.
pub(crate) const GATEWAY_API_VERSIONS: [(&str, &[&str]); 8] = [
    ("GatewayClass", &["v1", "v1beta1"]),
    ("Gateway", &["v1", "v1beta1"]),
    ("HTTPRoute", &["v1", "v1beta1"]),
    ("GRPCRoute", &["v1", "v1alpha2"]),
    ("TLSRoute", &["v1", "v1alpha3", "v1alpha2"]),
    ("TCPRoute", &["v1", "v1alpha2"]),
    ("ReferenceGrant", &["v1", "v1beta1", "v1alpha2"]),
    ("BackendTLSPolicy", &["v1", "v1alpha3"]),
];
/// Istio networking kinds that are served.
const ISTIO_KINDS: [&str; 4] = [
    "Gateway",
    "VirtualService",
    "DestinationRule",
    "ServiceEntry",
];

/// A resource and where its document starts.
#[derive(Clone, Debug)]
pub struct Sourced<T> {
    /// Shared: loads that reuse a file's parse (the reload cache) copy pointers, and an
    /// unchanged resource is the same allocation from one load to the next.
    pub resource: Arc<T>,
    pub location: Option<Location>,
}

/// One object of any kind: what the cluster store keeps per object (a whole `Resources`
/// would take about 450 bytes each, nearly all of it empty lists).
#[derive(Clone, Debug)]
pub enum Object {
    Gateway(Sourced<Gateway>),
    VirtualService(Sourced<VirtualService>),
    Service(Sourced<Service>),
    EndpointSlice(Sourced<EndpointSlice>),
    Endpoints(Sourced<Endpoints>),
    DestinationRule(Sourced<DestinationRule>),
    ServiceEntry(Sourced<ServiceEntry>),
    GatewayClass(Sourced<GatewayClass>),
    ApiGateway(Sourced<ApiGateway>),
    HttpRoute(Sourced<HttpRoute>),
    GrpcRoute(Sourced<GrpcRoute>),
    TlsRoute(Sourced<TlsRoute>),
    TcpRoute(Sourced<TcpRoute>),
    ReferenceGrant(Sourced<ReferenceGrant>),
    BackendTlsPolicy(Sourced<BackendTlsPolicy>),
    Secret(Sourced<Secret>),
    ConfigMap(Sourced<ConfigMap>),
    Namespace(Sourced<Namespace>),
    AuthorizationPolicy(Sourced<AuthorizationPolicy>),
}

/// `$m!(Variant, list)` for every kind: the one table `Object`'s conversions share.
macro_rules! for_each_kind {
    ($m:ident) => {
        $m!(Gateway, gateways);
        $m!(VirtualService, virtual_services);
        $m!(Service, services);
        $m!(EndpointSlice, endpoint_slices);
        $m!(Endpoints, endpoints);
        $m!(DestinationRule, destination_rules);
        $m!(ServiceEntry, service_entries);
        $m!(GatewayClass, gateway_classes);
        $m!(ApiGateway, api_gateways);
        $m!(HttpRoute, http_routes);
        $m!(GrpcRoute, grpc_routes);
        $m!(TlsRoute, tls_routes);
        $m!(TcpRoute, tcp_routes);
        $m!(ReferenceGrant, reference_grants);
        $m!(BackendTlsPolicy, backend_tls_policies);
        $m!(Secret, secrets);
        $m!(ConfigMap, config_maps);
        $m!(Namespace, namespaces);
        $m!(AuthorizationPolicy, authorization_policies);
    };
}
pub(crate) use for_each_kind;

impl Object {
    /// The first object `resources` holds (a parse of one object holds one or none).
    pub fn first(mut resources: Resources) -> Option<Object> {
        // Without `..`: a new kind in `Resources` must be added to `for_each_kind!` too.
        let Resources {
            gateways: _,
            virtual_services: _,
            services: _,
            endpoint_slices: _,
            endpoints: _,
            destination_rules: _,
            service_entries: _,
            gateway_classes: _,
            api_gateways: _,
            http_routes: _,
            grpc_routes: _,
            tls_routes: _,
            tcp_routes: _,
            reference_grants: _,
            backend_tls_policies: _,
            secrets: _,
            config_maps: _,
            namespaces: _,
            authorization_policies: _,
            skipped: _,
            documents: _,
        } = &resources;
        macro_rules! take {
            ($variant:ident, $list:ident) => {
                if let Some(item) = resources.$list.pop() {
                    return Some(Object::$variant(item));
                }
            };
        }
        for_each_kind!(take);
        None
    }

    /// Adds this object to the list of its kind.
    pub fn append_to(&self, resources: &mut Resources) {
        macro_rules! put {
            ($variant:ident, $list:ident) => {
                if let Object::$variant(item) = self {
                    resources.$list.push(item.clone());
                    return;
                }
            };
        }
        for_each_kind!(put);
    }

    /// This object alone, as a load's result.
    pub fn to_resources(&self) -> Resources {
        let mut resources = Resources::default();
        self.append_to(&mut resources);
        resources
    }
}

/// Everything a load found, by kind.
#[derive(Clone, Debug, Default)]
pub struct Resources {
    pub gateways: Vec<Sourced<Gateway>>,
    pub virtual_services: Vec<Sourced<VirtualService>>,
    pub services: Vec<Sourced<Service>>,
    pub endpoint_slices: Vec<Sourced<EndpointSlice>>,
    pub endpoints: Vec<Sourced<Endpoints>>,
    pub destination_rules: Vec<Sourced<DestinationRule>>,
    pub service_entries: Vec<Sourced<ServiceEntry>>,
    pub gateway_classes: Vec<Sourced<GatewayClass>>,
    /// Gateway API Gateways (`gateways` holds Istio's).
    pub api_gateways: Vec<Sourced<ApiGateway>>,
    pub http_routes: Vec<Sourced<HttpRoute>>,
    pub grpc_routes: Vec<Sourced<GrpcRoute>>,
    pub tls_routes: Vec<Sourced<TlsRoute>>,
    pub tcp_routes: Vec<Sourced<TcpRoute>>,
    pub reference_grants: Vec<Sourced<ReferenceGrant>>,
    /// Gateway API BackendTLSPolicies (compiled by `compile::backend_tls`).
    pub backend_tls_policies: Vec<Sourced<BackendTlsPolicy>>,
    pub secrets: Vec<Sourced<Secret>>,
    /// CA bundles for Gateway API frontend client-certificate validation.
    pub config_maps: Vec<Sourced<ConfigMap>>,
    pub namespaces: Vec<Sourced<Namespace>>,
    /// `security.istio.io` AuthorizationPolicies (compiled by `compile::authz`).
    pub authorization_policies: Vec<Sourced<AuthorizationPolicy>>,
    /// `apiVersion kind` → how many documents of that kind were skipped.
    pub skipped: BTreeMap<String, usize>,
    /// (file, first line) → text of every document read, so that diagnostics found
    /// after parsing can point at their field's line ([`Resources::locate`]).
    pub documents: BTreeMap<(Arc<Path>, usize), Arc<str>>,
}

impl Resources {
    /// Appends another load's resources to these, as one load of both would have.
    /// Destructured without `..`: a new kind must be added here and below too.
    pub fn append(&mut self, from: Resources) {
        let Resources {
            gateways,
            virtual_services,
            services,
            endpoint_slices,
            endpoints,
            destination_rules,
            service_entries,
            gateway_classes,
            api_gateways,
            http_routes,
            grpc_routes,
            tls_routes,
            tcp_routes,
            reference_grants,
            backend_tls_policies,
            secrets,
            config_maps,
            namespaces,
            authorization_policies,
            skipped,
            documents,
        } = from;
        self.gateways.extend(gateways);
        self.virtual_services.extend(virtual_services);
        self.services.extend(services);
        self.endpoint_slices.extend(endpoint_slices);
        self.endpoints.extend(endpoints);
        self.destination_rules.extend(destination_rules);
        self.service_entries.extend(service_entries);
        self.gateway_classes.extend(gateway_classes);
        self.api_gateways.extend(api_gateways);
        self.http_routes.extend(http_routes);
        self.grpc_routes.extend(grpc_routes);
        self.tls_routes.extend(tls_routes);
        self.tcp_routes.extend(tcp_routes);
        self.reference_grants.extend(reference_grants);
        self.backend_tls_policies.extend(backend_tls_policies);
        self.secrets.extend(secrets);
        self.config_maps.extend(config_maps);
        self.namespaces.extend(namespaces);
        self.authorization_policies.extend(authorization_policies);
        for (kind, count) in skipped {
            *self.skipped.entry(kind).or_default() += count;
        }
        self.documents.extend(documents);
    }

    /// `append` of a copy of `from`, but for its documents, which the caller gathers:
    /// the reload's parse cache puts every file's together once
    /// (`cache::ParseCache::resources`). Destructured without `..`, as `append`.
    pub fn extend_from(&mut self, from: &Resources) {
        let Resources {
            gateways,
            virtual_services,
            services,
            endpoint_slices,
            endpoints,
            destination_rules,
            service_entries,
            gateway_classes,
            api_gateways,
            http_routes,
            grpc_routes,
            tls_routes,
            tcp_routes,
            reference_grants,
            backend_tls_policies,
            secrets,
            config_maps,
            namespaces,
            authorization_policies,
            skipped,
            documents: _,
        } = from;
        self.gateways.extend_from_slice(gateways);
        self.virtual_services.extend_from_slice(virtual_services);
        self.services.extend_from_slice(services);
        self.endpoint_slices.extend_from_slice(endpoint_slices);
        self.endpoints.extend_from_slice(endpoints);
        self.destination_rules.extend_from_slice(destination_rules);
        self.service_entries.extend_from_slice(service_entries);
        self.gateway_classes.extend_from_slice(gateway_classes);
        self.api_gateways.extend_from_slice(api_gateways);
        self.http_routes.extend_from_slice(http_routes);
        self.grpc_routes.extend_from_slice(grpc_routes);
        self.tls_routes.extend_from_slice(tls_routes);
        self.tcp_routes.extend_from_slice(tcp_routes);
        self.reference_grants.extend_from_slice(reference_grants);
        self.backend_tls_policies
            .extend_from_slice(backend_tls_policies);
        self.secrets.extend_from_slice(secrets);
        self.config_maps.extend_from_slice(config_maps);
        self.namespaces.extend_from_slice(namespaces);
        self.authorization_policies
            .extend_from_slice(authorization_policies);
        for (kind, count) in skipped {
            *self.skipped.entry(kind.clone()).or_default() += count;
        }
    }

    /// Whether these are EndpointSlices and Endpoints and nothing else (an endpoint
    /// update, which needs no recompile of routes and TLS).
    pub fn holds_only_endpoints(&self) -> bool {
        self.virtual_services.is_empty() && self.holds_only_routes_and_endpoints()
    }

    /// Whether these are VirtualServices, EndpointSlices and Endpoints and nothing else
    /// (a change that leaves clusters, listeners and TLS as they were).
    pub fn holds_only_routes_and_endpoints(&self) -> bool {
        let Resources {
            gateways,
            virtual_services: _,
            services,
            endpoint_slices: _,
            endpoints: _,
            destination_rules,
            service_entries,
            gateway_classes,
            api_gateways,
            http_routes,
            grpc_routes,
            tls_routes,
            tcp_routes,
            reference_grants,
            backend_tls_policies,
            secrets,
            config_maps,
            namespaces,
            authorization_policies,
            skipped,
            documents: _,
        } = self;
        gateways.is_empty()
            && services.is_empty()
            && destination_rules.is_empty()
            && service_entries.is_empty()
            && gateway_classes.is_empty()
            && api_gateways.is_empty()
            && http_routes.is_empty()
            && grpc_routes.is_empty()
            && tls_routes.is_empty()
            && tcp_routes.is_empty()
            && reference_grants.is_empty()
            && backend_tls_policies.is_empty()
            && secrets.is_empty()
            && config_maps.is_empty()
            && namespaces.is_empty()
            && authorization_policies.is_empty()
            && skipped.is_empty()
    }

    /// Moves diagnostics that point at a document's first line to the line of their
    /// field, where the field can be found in the document's text.
    pub fn locate(&self, diagnostics: &mut Diagnostics) {
        for diagnostic in &mut diagnostics.0 {
            let (Some(location), Some(field)) = (&mut diagnostic.location, &diagnostic.field)
            else {
                continue;
            };
            let Some(text) = self
                .documents
                .get(&(Arc::clone(&location.file), location.line))
            else {
                continue;
            };
            if let Some(line) = locate::line_of(text, field) {
                location.line += line - 1;
            }
        }
    }
}

/// Reads and parses everything under `paths`. Only unreadable paths fail outright; every
/// problem inside a document is a diagnostic.
pub fn load(paths: &[PathBuf]) -> Result<(Resources, Diagnostics), SourceError> {
    let mut resources = Resources::default();
    let mut diagnostics = Diagnostics::default();
    for document in read_documents(paths)? {
        parse_document(&document, &mut resources, &mut diagnostics);
    }
    Ok((resources, diagnostics))
}

/// Parses configuration text as if read from `file` (for tools, benchmarks and fuzzing
/// that hold YAML in memory).
pub fn load_text(file: &std::path::Path, text: &str) -> (Resources, Diagnostics) {
    let mut resources = Resources::default();
    let mut diagnostics = Diagnostics::default();
    for document in source::split_documents(file, text) {
        parse_document(&document, &mut resources, &mut diagnostics);
    }
    (resources, diagnostics)
}

/// Parses one object read from the Kubernetes API, as JSON. Its diagnostics name it by
/// kind, namespace and name, and field path (there is no file).
pub fn parse_object(value: &serde_json::Value) -> (Resources, Diagnostics) {
    let mut resources = Resources::default();
    let mut diagnostics = Diagnostics::default();
    match serde_yaml::to_value(value) {
        Ok(value) => parse_resource(
            ItemSource::Object { value },
            &mut resources,
            &mut diagnostics,
        ),
        // JSON always has a YAML form; this is only for completeness.
        Err(e) => diagnostics.push(Diagnostic::error(format!("unreadable object: {e}"))),
    }
    (resources, diagnostics)
}

fn parse_document(doc: &Document, resources: &mut Resources, diagnostics: &mut Diagnostics) {
    resources.documents.insert(
        (Arc::clone(&doc.file), doc.first_line),
        Arc::from(doc.text.as_str()),
    );
    // Most documents are plain enough for the fast reader; the rest, and every error,
    // are serde_yaml's.
    let parsed = match plain_yaml::parse(&doc.text) {
        Some(value) => Ok(value),
        None => serde_yaml::from_str(&doc.text),
    };
    let value: serde_yaml::Value = match parsed {
        Ok(value) => value,
        Err(e) => {
            let location = doc.location(e.location().map_or(1, |l| l.line()));
            diagnostics.push(
                Diagnostic::error(format!("invalid YAML: {}", strip_position(&e.to_string())))
                    .at(Some(location)),
            );
            return;
        }
    };
    if value.get("apiVersion").and_then(|v| v.as_str()).is_none() {
        diagnostics.push(
            Diagnostic::error("not a Kubernetes resource: expected a string `apiVersion` (e.g. networking.istio.io/v1)")
                .at(Some(doc.location(1)))
                .field("apiVersion"),
        );
        return;
    }
    let Some(kind) = value.get("kind").and_then(|v| v.as_str()) else {
        diagnostics.push(
            Diagnostic::error("not a Kubernetes resource: expected a string `kind` (e.g. Gateway)")
                .at(Some(doc.location(1)))
                .field("kind"),
        );
        return;
    };
    if kind == "List" {
        let items = value
            .get("items")
            .and_then(|v| v.as_sequence())
            .cloned()
            .unwrap_or_default();
        for (index, item) in items.into_iter().enumerate() {
            let item_doc = ItemSource::ListItem {
                doc,
                index,
                value: item,
            };
            parse_resource(item_doc, resources, diagnostics);
        }
        return;
    }
    parse_resource(ItemSource::Document { doc, value }, resources, diagnostics);
}

/// A resource to parse: a whole document (line numbers are exact), an item of a
/// `kind: List` (line numbers point at the List), or an object read from the Kubernetes
/// API (no file: diagnostics name it by kind, namespace and name).
enum ItemSource<'a> {
    Object {
        value: serde_yaml::Value,
    },
    Document {
        doc: &'a Document,
        value: serde_yaml::Value,
    },
    ListItem {
        doc: &'a Document,
        index: usize,
        value: serde_yaml::Value,
    },
}

impl ItemSource<'_> {
    fn value(&self) -> &serde_yaml::Value {
        match self {
            ItemSource::Document { value, .. }
            | ItemSource::ListItem { value, .. }
            | ItemSource::Object { value } => value,
        }
    }

    /// Where the object's document has `line` (1-based), when it came from a file.
    fn location(&self, line: usize) -> Option<Location> {
        match self {
            ItemSource::Document { doc, .. } | ItemSource::ListItem { doc, .. } => {
                Some(doc.location(line))
            }
            ItemSource::Object { .. } => None,
        }
    }

    fn field_prefix(&self) -> String {
        match self {
            ItemSource::Document { .. } | ItemSource::Object { .. } => String::new(),
            ItemSource::ListItem { index, .. } => format!("items[{index}]."),
        }
    }

    /// Deserializes the typed object from the `Value` already parsed: one YAML scan per
    /// document. Only when that fails does it read the text again (`typed_slowly`), which
    /// both finds the failing field's line and keeps the text deserializer's readings
    /// the `Value` cannot give (a plain scalar such as `80` or `true` read into a string
    /// field is its text there, and a number or bool in a `Value`).
    fn typed<T: DeserializeOwned>(&self, resource: &ObjectRef) -> Result<T, Box<Diagnostic>> {
        #[cfg(test)]
        if tests::TWO_PASS.get() {
            return self.typed_slowly(resource);
        }
        match T::deserialize(self.value()) {
            Ok(typed) => Ok(typed),
            Err(_) => self.typed_slowly(resource),
        }
    }

    /// As `typed`, and the `spec` fields the type has no place for (`unknown_fields`).
    /// Unknown fields are found on the `Value`; when only the text reads as `T`, none
    /// are named.
    fn typed_noting_unknown<T: DeserializeOwned>(
        &self,
        resource: &ObjectRef,
    ) -> Result<(T, Vec<String>), Box<Diagnostic>> {
        let noted = unknown_fields::deserialize_noting::<T>(self.value());
        #[cfg(test)]
        if tests::TWO_PASS.get() {
            let unknown = noted.map(|(_, unknown)| unknown).unwrap_or_default();
            return self.typed_slowly(resource).map(|typed| (typed, unknown));
        }
        match noted {
            Ok(noted) => Ok(noted),
            Err(_) => self.typed_slowly(resource).map(|typed| (typed, Vec::new())),
        }
    }

    /// A warning for each field `typed_noting_unknown` found.
    fn warn_unknown(
        &self,
        resource: &ObjectRef,
        unknown: Vec<String>,
        diagnostics: &mut Diagnostics,
    ) {
        for field in unknown {
            let key = field.rsplit('.').next().unwrap_or(&field).to_owned();
            diagnostics.push(
                Diagnostic::warning(format!(
                    "`{key}` is not a field this gateway knows; ignored"
                ))
                .at(self.location(1))
                .object(resource)
                .field(format!("{}{field}", self.field_prefix())),
            );
        }
    }

    /// Deserializes with the failing field's path and, for documents, its line: the
    /// text of a document again (what every document cost before `typed` read the
    /// `Value`), the `Value` of a List item or an API object.
    fn typed_slowly<T: DeserializeOwned>(
        &self,
        resource: &ObjectRef,
    ) -> Result<T, Box<Diagnostic>> {
        let result = match self {
            ItemSource::Document { doc, .. } => {
                serde_path_to_error::deserialize(serde_yaml::Deserializer::from_str(&doc.text))
            }
            ItemSource::ListItem { value, .. } | ItemSource::Object { value } => {
                serde_path_to_error::deserialize(value.clone())
            }
        };
        result.map_err(|e| {
            let field = format!("{}{}", self.field_prefix(), e.path());
            let line = match self {
                ItemSource::Document { .. } => e.inner().location().map_or(1, |l| l.line()),
                ItemSource::ListItem { .. } | ItemSource::Object { .. } => 1,
            };
            let message = strip_position(&e.inner().to_string());
            // serde_yaml repeats the path in front of its message; the diagnostic says it once.
            let message = message
                .strip_prefix(&format!("{}: ", e.path()))
                .map_or(message.clone(), str::to_owned);
            Box::new(
                Diagnostic::error(message)
                    .at(self.location(line))
                    .object(resource)
                    .field(field),
            )
        })
    }
}

fn parse_resource(item: ItemSource<'_>, resources: &mut Resources, diagnostics: &mut Diagnostics) {
    let value = item.value();
    let api_version = value
        .get("apiVersion")
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_owned();
    let kind = value
        .get("kind")
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_owned();
    let meta: ObjectMeta = value
        .get("metadata")
        .and_then(|m| ObjectMeta::deserialize(m).ok())
        .unwrap_or_default();
    let location = item.location(1);
    let (group, version) = api_version
        .rsplit_once('/')
        .unwrap_or(("", api_version.as_str()));
    let resource = ObjectRef::new(group, &kind, &meta);

    if meta.name.is_empty() && !kind.is_empty() {
        diagnostics.push(
            // Not attributed to an object: without a name, nothing says which it was.
            Diagnostic::error("every resource needs a name")
                .at(location.clone())
                .resource(resource.to_string())
                .field(format!("{}metadata.name", item.field_prefix())),
        );
        return;
    }

    macro_rules! parsed {
        ($list:ident) => {
            match item.typed(&resource) {
                Ok(r) => resources.$list.push(Sourced {
                    resource: Arc::new(r),
                    location,
                }),
                Err(d) => diagnostics.push(*d),
            }
        };
    }
    // Istio and Gateway API kinds: their spec is the user's routing, every field of it
    // is either read or named as ignored.
    macro_rules! spec_read {
        ($list:ident, $r:expr, $unknown:expr) => {{
            item.warn_unknown(&resource, $unknown, diagnostics);
            resources.$list.push(Sourced {
                resource: Arc::new($r),
                location,
            })
        }};
    }
    macro_rules! parsed_spec {
        ($list:ident) => {
            match item.typed_noting_unknown(&resource) {
                Ok((r, unknown)) => spec_read!($list, r, unknown),
                Err(d) => diagnostics.push(*d),
            }
        };
    }

    // Upstream TLS kinds: a broken object that says what it targets keeps a stand-in
    // that fails closed (`stand_in`), as an AuthorizationPolicy does; the same wording.
    macro_rules! parsed_spec_or_stand_in {
        ($list:ident, $kind:literal, $stand_in:path, $effect:expr) => {
            match item.typed_noting_unknown(&resource) {
                Ok((r, unknown)) => spec_read!($list, r, unknown),
                Err(d) => {
                    let field = d.field.clone().unwrap_or_else(|| "spec".to_owned());
                    let why = format!("does not parse ({field}: {})", d.message);
                    if let Some(stand_in) = $stand_in(&meta, value, &why) {
                        diagnostics.push(
                            Diagnostic::warning(format!(
                                "this {} {why}, and fails closed until it is fixed: {}",
                                $kind, $effect
                            ))
                            .at(location.clone())
                            .object(&resource)
                            .field(field),
                        );
                        resources.$list.push(Sourced {
                            resource: Arc::new(stand_in),
                            location,
                        });
                    }
                    diagnostics.push(*d);
                }
            }
        };
    }

    let gateway_api_versions = GATEWAY_API_VERSIONS
        .iter()
        .find(|(k, _)| *k == kind)
        .map(|(_, versions)| *versions);
    match (group, kind.as_str()) {
        (GATEWAY_API, _) if gateway_api_versions.is_some_and(|v| !v.contains(&version)) => {
            diagnostics.push(
                Diagnostic::error(format!(
                    "unknown version {version} of {kind}: expected one of {}",
                    gateway_api_versions.unwrap_or_default().join(", ")
                ))
                .at(location)
                .object(&resource)
                .field("apiVersion"),
            );
        }
        (ISTIO_NETWORKING, _)
            if ISTIO_KINDS.contains(&kind.as_str()) && !ISTIO_VERSIONS.contains(&version) =>
        {
            diagnostics.push(
                Diagnostic::error(format!(
                    "unknown version {version}: expected one of {}",
                    ISTIO_VERSIONS.join(", ")
                ))
                .at(location)
                .object(&resource)
                .field("apiVersion"),
            );
        }
        (ISTIO_SECURITY, "AuthorizationPolicy") if !ISTIO_SECURITY_VERSIONS.contains(&version) => {
            diagnostics.push(
                Diagnostic::error(format!(
                    "unknown version {version} of AuthorizationPolicy: expected one of {}",
                    ISTIO_SECURITY_VERSIONS.join(", ")
                ))
                .at(location)
                .object(&resource)
                .field("apiVersion"),
            );
        }
        (ISTIO_SECURITY, "AuthorizationPolicy") => {
            match item.typed_noting_unknown::<AuthorizationPolicy>(&resource) {
                Ok((mut policy, unknown)) => {
                    item.warn_unknown(&resource, unknown, diagnostics);
                    policy.dry_run = value
                        .get("metadata")
                        .and_then(|m| m.get("annotations"))
                        .and_then(|a| a.get(resources::security::DRY_RUN_ANNOTATION))
                        .and_then(|v| v.as_str())
                        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
                    resources.authorization_policies.push(Sourced {
                        resource: Arc::new(policy),
                        location,
                    });
                }
                Err(d) => {
                    let dry_run = value
                        .get("metadata")
                        .and_then(|m| m.get("annotations"))
                        .and_then(|a| a.get(resources::security::DRY_RUN_ANNOTATION))
                        .and_then(|v| v.as_str())
                        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
                    let stand_in = (!dry_run)
                        .then(|| AuthorizationPolicy::fail_closed(meta.clone(), value))
                        .flatten();
                    if let Some(stand_in) = stand_in {
                        let what =
                            if stand_in.spec.action == Some(resources::security::Action::Allow) {
                                "as an ALLOW policy it allows nothing"
                            } else {
                                "as a DENY policy it denies every request and connection"
                            };
                        diagnostics.push(
                            Diagnostic::warning(format!(
                                "this AuthorizationPolicy does not parse, and fails closed: {what} on the workloads it selects until it is fixed"
                            ))
                            .at(location.clone())
                            .object(&resource)
                            .field("spec"),
                        );
                        resources.authorization_policies.push(Sourced {
                            resource: Arc::new(stand_in),
                            location,
                        });
                    }
                    diagnostics.push(*d);
                }
            }
        }
        (ISTIO_NETWORKING, "Gateway") => parsed_spec!(gateways),
        (ISTIO_NETWORKING, "VirtualService") => parsed_spec!(virtual_services),
        ("", "Service") => match item.typed::<resources::Service>(&resource) {
            Ok(mut service) => {
                let annotation = value
                    .get("metadata")
                    .and_then(|m| m.get("annotations"))
                    .and_then(|a| a.get(resources::PROXY_CONFIG_ANNOTATION))
                    .and_then(|v| v.as_str());
                if let Some(proxy_config) = annotation {
                    match proxy_protocol_requested(proxy_config) {
                        Ok(requested) => service.proxy_protocol = requested,
                        Err(e) => diagnostics.push(
                            Diagnostic::warning(format!(
                                "annotation {} is not a ProxyConfig ({e}); its gatewayTopology is not applied",
                                resources::PROXY_CONFIG_ANNOTATION
                            ))
                            .at(location.clone())
                            .object(&resource)
                            .field("metadata.annotations"),
                        ),
                    }
                }
                resources.services.push(Sourced {
                    resource: Arc::new(service),
                    location,
                });
            }
            Err(d) => diagnostics.push(*d),
        },
        ("discovery.k8s.io", "EndpointSlice") => parsed!(endpoint_slices),
        ("", "Namespace") => parsed!(namespaces),
        ("", "Endpoints") => parsed!(endpoints),
        ("", "ConfigMap") => parsed!(config_maps),
        (ISTIO_NETWORKING, "DestinationRule") => parsed_spec_or_stand_in!(
            destination_rules,
            "DestinationRule",
            stand_in::destination_rule,
            stand_in::DESTINATION_RULE_EFFECT
        ),
        (ISTIO_NETWORKING, "ServiceEntry") => parsed_spec!(service_entries),
        (GATEWAY_API, "GatewayClass") => parsed_spec!(gateway_classes),
        (GATEWAY_API, "Gateway") => parsed_spec!(api_gateways),
        (GATEWAY_API, "HTTPRoute") => parsed_spec!(http_routes),
        (GATEWAY_API, "GRPCRoute") => parsed_spec!(grpc_routes),
        (GATEWAY_API, "TLSRoute") => parsed_spec!(tls_routes),
        (GATEWAY_API, "TCPRoute") => parsed_spec!(tcp_routes),
        (GATEWAY_API, "ReferenceGrant") => parsed_spec!(reference_grants),
        (GATEWAY_API, "BackendTLSPolicy") => parsed_spec_or_stand_in!(
            backend_tls_policies,
            "BackendTLSPolicy",
            stand_in::backend_tls_policy,
            stand_in::BACKEND_TLS_POLICY_EFFECT
        ),
        // Secret values are key material: their parse errors must not quote them.
        ("", "Secret") => match item.typed(&resource) {
            Ok(r) => resources.secrets.push(Sourced {
                resource: Arc::new(r),
                location,
            }),
            Err(d) => diagnostics.push((*d).with_values_redacted()),
        },
        (ISTIO_NETWORKING, _) | (GATEWAY_API, _) => {
            diagnostics.push(
                Diagnostic::warning(format!("{kind} ({api_version}) is not served yet; skipped"))
                    .at(location)
                    .object(&resource),
            );
            *resources
                .skipped
                .entry(format!("{api_version} {kind}"))
                .or_default() += 1;
        }
        _ => {
            *resources
                .skipped
                .entry(format!("{api_version} {kind}"))
                .or_default() += 1
        }
    }
}

/// serde_yaml appends "at line L column C" (relative to the document); diagnostics carry
/// the file line themselves.
fn strip_position(message: &str) -> String {
    match message.find(" at line ") {
        Some(at) => message[..at].to_owned(),
        None => message.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn load_text(text: &str) -> (Resources, Diagnostics) {
        let mut resources = Resources::default();
        let mut diagnostics = Diagnostics::default();
        for doc in source::split_documents(Path::new("gw.yaml"), text) {
            parse_document(&doc, &mut resources, &mut diagnostics);
        }
        (resources, diagnostics)
    }

    #[test]
    fn a_bad_field_names_file_line_resource_and_path() {
        let text = "\
apiVersion: v1
kind: Pod
metadata: {name: unrelated}
---
apiVersion: networking.istio.io/v1alpha3
kind: Gateway
metadata:
  name: httpbin-gateway
spec:
  servers:
  - port:
      number: eighty
      protocol: HTTP
    hosts: [\"*\"]
";
        let (resources, diagnostics) = load_text(text);
        assert!(resources.gateways.is_empty());
        assert_eq!(resources.skipped.get("v1 Pod"), Some(&1));
        let errors: Vec<_> = diagnostics.errors().collect();
        assert_eq!(errors.len(), 1, "{diagnostics}");
        let e = errors[0];
        assert_eq!(e.location.as_ref().map(|l| l.line), Some(12));
        assert_eq!(
            e.resource.as_deref(),
            Some("Gateway default/httpbin-gateway")
        );
        assert_eq!(e.field.as_deref(), Some("spec.servers[0].port.number"));
        assert!(e.to_string().starts_with("error: gw.yaml:12: Gateway default/httpbin-gateway: spec.servers[0].port.number: invalid type: string \"eighty\", expected u32"), "{e}");
    }

    #[test]
    fn lists_and_every_istio_version_are_read() {
        let text = "\
apiVersion: v1
kind: List
items:
- apiVersion: networking.istio.io/v1
  kind: Gateway
  metadata: {name: a, namespace: istio-system}
  spec: {servers: []}
- apiVersion: networking.istio.io/v1beta1
  kind: VirtualService
  metadata: {name: b}
  spec: {hosts: [x]}
---
apiVersion: networking.istio.io/v2
kind: Gateway
metadata: {name: future}
";
        let (resources, diagnostics) = load_text(text);
        assert_eq!(resources.gateways.len(), 1);
        assert_eq!(
            resources.gateways[0].resource.metadata.namespace(),
            "istio-system"
        );
        assert_eq!(resources.virtual_services.len(), 1);
        let errors: Vec<_> = diagnostics.errors().map(|d| d.field.clone()).collect();
        assert_eq!(errors, [Some("apiVersion".to_owned())]);
    }

    thread_local! {
        /// Makes `ItemSource::typed` read every document's text again, as every load
        /// did before it read the `Value`: the reference the parse-once path must equal.
        pub(super) static TWO_PASS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }

    /// A load of `text` in one pass and in two, as comparable text.
    fn both_ways(file: &Path, text: &str) -> [String; 2] {
        [false, true].map(|two_pass| {
            TWO_PASS.set(two_pass);
            let (resources, diagnostics) = super::load_text(file, text);
            TWO_PASS.set(false);
            format!("{resources:#?}\n{diagnostics}")
        })
    }

    /// Documents where a `Value` and the text read differently, or that fail.
    const TRICKY: &str = "\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: plain-scalars, namespace: default, labels: {version: v1}}
spec:
  hosts: [80, true, a.example.com]
  gateways: [~]
  exportTo: [0x1F]
  http:
  - match: [{uri: {prefix: /a}, headers: {x-v: {exact: \"2\"}}, port: 8080}]
    route: [{destination: {host: upstream, port: {number: 8000}}, weight: 100}]
    timeout: 1.5s
    retries: {attempts: 3}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: number-header}
spec:
  hosts: [b.example.com]
  http:
  - match: [{headers: {x-v: {exact: 2}}}]
    route: [{destination: {host: upstream}}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: 1234}
spec: {servers: []}
---
apiVersion: v1
kind: Service
metadata:
  name: svc
  annotations: {proxy.istio.io/config: 'gatewayTopology: {proxyProtocol: {}}'}
spec:
  ports:
  - {name: 80, port: 80, targetPort: http}
  - {port: 81, targetPort: 8081}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: svc-1, labels: {kubernetes.io/service-name: svc}}
addressType: IPv4
ports: [{name: http, port: \"8080\"}]
endpoints: [{addresses: [10.0.0.1]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: broken}
spec: {action: DENY, rules: {not: a list}}
---
apiVersion: v1
kind: List
items:
- apiVersion: networking.istio.io/v1
  kind: DestinationRule
  metadata: {name: dr}
  spec: {host: svc, trafficPolicy: {connectionPool: {tcp: {maxConnections: many}}}}
- apiVersion: gateway.networking.k8s.io/v1
  kind: HTTPRoute
  metadata: {name: r}
  spec: {hostnames: [c.example.com], rules: [{backendRefs: [{name: svc, port: 80}]}]}
---
apiVersion: v1
kind: Secret
metadata: {name: key}
data: {tls.crt: [not, a, string]}
";

    #[test]
    fn one_pass_loads_what_two_passes_load() -> Result<(), Box<dyn std::error::Error>> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut files = source::config_files(&[root.join("config"), root.join("fuzz/seeds")])?;
        files.sort();
        assert!(files.len() >= 10, "{files:?}");
        for file in &files {
            let text = std::fs::read_to_string(file)?;
            let [one, two] = both_ways(file, &text);
            assert_eq!(one, two, "{}", file.display());
        }
        let [one, two] = both_ways(Path::new("tricky.yaml"), TRICKY);
        assert_eq!(one, two);
        // The documents above do reach both kinds of reading.
        let (resources, diagnostics) = super::load_text(Path::new("tricky.yaml"), TRICKY);
        let hosts = &resources.virtual_services[0].resource.spec.hosts;
        assert_eq!(hosts, &["80", "true", "a.example.com"]);
        assert_eq!(resources.services.len(), 1);
        assert_eq!(resources.endpoint_slices.len(), 0, "{diagnostics}");
        assert!(diagnostics.errors().count() >= 4, "{diagnostics}");
        Ok(())
    }

    #[test]
    fn a_field_error_read_once_still_names_file_line_and_field() {
        let (resources, diagnostics) = super::load_text(Path::new("tricky.yaml"), TRICKY);
        let located: Vec<String> = diagnostics
            .errors()
            .map(|e| {
                format!(
                    "{}:{} {}",
                    e.location.as_ref().map_or(0, |l| l.line),
                    e.resource.as_deref().unwrap_or("-"),
                    e.field.as_deref().unwrap_or("-")
                )
            })
            .collect();
        assert!(
            located.contains(&"42:EndpointSlice default/svc-1 ports[0].port".to_owned()),
            "{located:?}"
        );
        assert!(
            located.contains(&"48:AuthorizationPolicy default/broken spec.rules".to_owned()),
            "{located:?}"
        );
        // A List item's error names the item; its line is the List's.
        assert!(
            located.contains(
                &"50:DestinationRule default/dr items[0].spec.trafficPolicy.connectionPool.tcp.maxConnections"
                    .to_owned()
            ),
            "{located:?}"
        );
        assert!(
            located.contains(&"65:Secret default/key data.tls.crt".to_owned()),
            "{located:?}"
        );
        // A Secret's error does not quote its value.
        assert!(
            !diagnostics.to_string().contains("not, a, string"),
            "{diagnostics}"
        );
        assert_eq!(resources.http_routes.len(), 1);
    }

    #[test]
    fn broken_yaml_points_at_its_line() {
        let (_, diagnostics) =
            load_text("apiVersion: v1\nkind: Service\nmetadata: {name: a}\n---\nkind: [unclosed\n");
        let e = diagnostics.errors().next().expect("an error");
        assert_eq!(e.location.as_ref().map(|l| l.line), Some(5), "{e}");
        assert!(e.message.starts_with("invalid YAML"), "{e}");
    }
}

/// Lets other modules' tests parse documents without touching the file system.
#[cfg(test)]
pub(crate) mod tests_support {
    pub(crate) fn parse(
        doc: &super::Document,
        resources: &mut super::Resources,
        diagnostics: &mut super::Diagnostics,
    ) {
        super::parse_document(doc, resources, diagnostics);
    }
}

/// Whether an Istio ProxyConfig (YAML) asks for `gatewayTopology.proxyProtocol`; its
/// presence, even as `{}`, turns the PROXY protocol on (Istio's ProxyProtocolConfiguration
/// has no fields).
fn proxy_protocol_requested(proxy_config: &str) -> Result<bool, serde_yaml::Error> {
    let config: serde_yaml::Value = serde_yaml::from_str(proxy_config)?;
    Ok(config
        .get("gatewayTopology")
        .and_then(|t| t.get("proxyProtocol"))
        .is_some_and(|p| !p.is_null()))
}
