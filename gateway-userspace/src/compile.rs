//! Compiling: resources → one immutable [`Snapshot`], with Istio's meaning.
//!
//! Which Gateways are ours (selector ⊆ our labels), which port each server binds (our own
//! Service's targetPort), which VirtualService hosts each server accepts (host
//! intersection), route order (VirtualServices oldest first, routes in written order),
//! and which endpoints each destination reaches (Service port → EndpointSlice port).

pub mod addresses;
mod authz;
mod clusters;
mod delegate;
mod gateway_api;
pub mod isolate;
mod istio_match;
mod memo;
pub mod report;
mod routes;
pub mod status;
mod tls;
mod unapplied;
mod upstream_tls;

use std::{
    borrow::Cow,
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use crate::{
    config::{
        Diagnostic, Diagnostics, Kind, Resources, Sourced,
        resources::{Gateway, HttpRoute, IntOrString, Service, VirtualService},
    },
    route_table::{Route, RouteTable, VirtualHost},
    snapshot::{
        Cluster, KernelPolicy, Listener, PortSourceRules, Protocol, RouteAction, Snapshot,
        TlsPortPolicy,
    },
};

pub use clusters::{ClustersByService, update_endpoints, update_endpoints_indexed};
pub use isolate::{DroppedObject, Isolated, compile_isolating};
pub use memo::RouteMemo;
pub use report::Report;

/// Who this gateway is: the labels its pods carry and its namespace.
#[derive(Clone, Debug)]
pub struct Identity {
    pub labels: BTreeMap<String, String>,
    pub namespace: String,
    /// Gateway API Gateways of this `gatewayClassName` are ours...
    pub gateway_class: String,
    /// ...and so are those of a GatewayClass with this `spec.controllerName`; route
    /// status entries carry it.
    pub controller_name: String,
    /// `--proxy-protocol`: how the deployment is fronted (Istio's `gatewayTopology`);
    /// these Gateway ports read a PROXY protocol header first.
    pub proxy_protocol: crate::proxy_protocol::ProxyProtocolPorts,
    /// Whether this node can listen on an address a Gateway asks for in `spec.addresses`
    /// (`addresses::local_address`, a bind; tests put a fixed answer here).
    pub address_check: addresses::AddressCheck,
}

/// Istio's default GatewayClass.
pub const DEFAULT_GATEWAY_CLASS: &str = "istio";
/// Our own controller name: not Istio's, so that status does not fight with istiod.
pub const DEFAULT_CONTROLLER_NAME: &str = "gatewayd.dev/gateway-controller";

/// Istio's defaults: the `istio-ingressgateway` deployment in `istio-system`.
pub const DEFAULT_SELECTOR: (&str, &str) = ("istio", "ingressgateway");
pub const DEFAULT_NAMESPACE: &str = "istio-system";
/// Kubernetes' cluster domain, used to spell destination hosts in full.
pub const CLUSTER_DOMAIN: &str = "svc.cluster.local";

impl Default for Identity {
    fn default() -> Self {
        Identity {
            labels: BTreeMap::from([(
                DEFAULT_SELECTOR.0.to_owned(),
                DEFAULT_SELECTOR.1.to_owned(),
            )]),
            namespace: DEFAULT_NAMESPACE.to_owned(),
            gateway_class: DEFAULT_GATEWAY_CLASS.to_owned(),
            controller_name: DEFAULT_CONTROLLER_NAME.to_owned(),
            proxy_protocol: Default::default(),
            address_check: addresses::local_address,
        }
    }
}

pub fn compile(resources: &Resources, identity: &Identity) -> (Snapshot, Diagnostics) {
    compile_with(resources, identity, &crate::tls::TlsState::default())
}

/// `compile` for a running gateway: TLS session scopes and the last good credentials
/// carry over from one compile to the next in `tls` (see `compile::tls`).
pub fn compile_with(
    resources: &Resources,
    identity: &Identity,
    tls: &crate::tls::TlsState,
) -> (Snapshot, Diagnostics) {
    let (snapshot, diagnostics, _) = compile_reusing(resources, identity, tls, None);
    (snapshot, diagnostics)
}

/// `compile_with`, reusing what `previous` compiled where it still applies: when the
/// resources differ from the ones `previous` was compiled from in VirtualServices (and
/// endpoints) only, the routes of unchanged VirtualServices are taken as they are and
/// the clusters keep their numbering. Returns what the next compile may reuse.
pub fn compile_reusing(
    resources: &Resources,
    identity: &Identity,
    tls: &crate::tls::TlsState,
    previous: Option<(&Snapshot, &RouteMemo)>,
) -> (Snapshot, Diagnostics, RouteMemo) {
    let mut compiler = Compiler {
        resources,
        identity,
        diagnostics: Diagnostics::default(),
        clusters: HashMap::new(),
        cluster_list: Vec::new(),
        endpoint_lists: Vec::new(),
        tls,
        credentials: Default::default(),
        upstream_tls_keys: Vec::new(),
        reusable: previous.map(|(_, memo)| memo),
        memo: RouteMemo::default(),
        previous_by_name: None,
        status: Default::default(),
        slices: None,
        workload_authz: None,
        cluster_notes: Default::default(),
        named: Vec::new(),
        namings: Vec::new(),
        said_of_clusters: Vec::new(),
    };
    if let Some((snapshot, memo)) = previous {
        // Routes taken from the memo name these clusters by id.
        for cluster in snapshot.clusters.iter() {
            compiler
                .clusters
                .insert(cluster.name.clone(), Arc::clone(cluster));
            if let Some(tls) = &cluster.tls {
                compiler.upstream_tls_keys.push(tls.key);
            }
        }
        compiler.cluster_list = snapshot.clusters.to_vec();
        compiler.endpoint_lists = snapshot.endpoints.clone();
        compiler.named = vec![false; snapshot.clusters.len()];
        compiler.cluster_notes = Arc::clone(&memo.clusters);
    }
    let mut snapshot = compiler.snapshot();
    if let Some((previous, _)) = previous
        && snapshot.clusters.len() == previous.clusters.len()
    {
        // No cluster added to the previous list (it only grows): share it, so that the
        // runtime state and the endpoint index carry over without a pass over it.
        snapshot.clusters = Arc::clone(&previous.clusters);
    }
    snapshot.report = Arc::new(status::build(resources, identity, &compiler.status));
    compiler.stage_credentials();
    let mut diagnostics = compiler.diagnostics;
    diagnostics.0.append(&mut compiler.said_of_clusters);
    resources.locate(&mut diagnostics);
    compiler.memo.clusters = compiler.cluster_notes;
    (snapshot, diagnostics, compiler.memo)
}

struct Compiler<'a> {
    resources: &'a Resources,
    identity: &'a Identity,
    diagnostics: Diagnostics,
    /// Clusters are shared between routes that name the same service port.
    clusters: HashMap<String, Arc<Cluster>>,
    /// The same clusters by id, and their endpoints (`Snapshot::clusters`, `endpoints`).
    cluster_list: Vec<Arc<Cluster>>,
    endpoint_lists: Vec<Arc<[std::net::SocketAddr]>>,
    tls: &'a crate::tls::TlsState,
    /// The credentials this compile loaded or kept, staged in `tls` at the end.
    credentials: tls::CompiledCredentials,
    /// The upstream TLS configurations this compile used (`tls::upstream::ClientConfigs`).
    upstream_tls_keys: Vec<u64>,
    /// What the previous compile's VirtualServices gave, when it may be reused.
    reusable: Option<&'a RouteMemo>,
    /// What this compile's VirtualServices gave.
    memo: RouteMemo,
    /// The previous compile's memo entries by (namespace, name, port), made when a
    /// VirtualService is not found there by allocation (it changed).
    previous_by_name: Option<HashMap<(&'a str, &'a str, u16), &'a memo::MemoEntry>>,
    /// What Gateway API status will say (`compile::status`).
    status: status::StatusRecorder,
    /// The EndpointSlices by Service, built when the first cluster needs it.
    slices: Option<clusters::SliceIndex<'a>>,
    /// The policies selected onto every listener, compiled once (`compile/authz.rs`).
    workload_authz: Option<Arc<crate::authz::ListenerAuthz>>,
    /// By cluster id: what is said of it at the first route naming it (`memo::ClusterNotes`),
    /// carried over with the clusters by a reusing compile.
    cluster_notes: Arc<Vec<memo::ClusterNotes>>,
    /// By cluster id: whether a route of this compile named it yet.
    named: Vec<bool>,
    /// The clusters routes named, in order: a VirtualService's are kept in its memo entry.
    namings: Vec<memo::Naming>,
    /// What was said of clusters at their first naming: kept apart from `diagnostics`, so
    /// that no route's memoized diagnostics hold them (another route may name the cluster
    /// first at the next compile).
    said_of_clusters: Vec<crate::config::Diagnostic>,
}

/// One server's host list entry, `namespace/host` split.
#[derive(Debug)]
struct ServerHost {
    /// `*` any, `.` the Gateway's own namespace, or a namespace name.
    namespace: String,
    host: String,
}

/// Servers on one port, merged (Istio merges HTTP servers on a port into one route table).
struct PortServers<'a> {
    protocol: Protocol,
    /// (gateway, its server hosts)
    servers: Vec<(&'a Sourced<Gateway>, Vec<ServerHost>)>,
    /// (gateway, index in its `spec.servers`), same order as `servers`: what TLS needs.
    server_indices: Vec<(&'a Sourced<Gateway>, usize)>,
}

impl<'a> Compiler<'a> {
    fn snapshot(&mut self) -> Snapshot {
        let ports = self.ports();
        let own_service = self.own_service();
        let resources = self.resources;
        let mut virtual_services: Vec<&Sourced<VirtualService>> = Vec::new();
        for vs in &resources.virtual_services {
            if self.exported_to_us(vs) {
                virtual_services.push(vs);
            }
        }
        // Oldest first, then by name, then by namespace, as Istio orders them (creation
        // timestamps are RFC 3339 and sort as strings; none counts as the oldest).
        virtual_services.sort_by(|a, b| {
            let (a, b) = (&a.resource.metadata, &b.resource.metadata);
            let created = |m: &'a crate::config::resources::ObjectMeta| {
                m.creation_timestamp.as_deref().unwrap_or_default()
            };
            (created(a), a.name.as_str(), a.namespace()).cmp(&(
                created(b),
                b.name.as_str(),
                b.namespace(),
            ))
        });
        self.check_gateway_references(&virtual_services);
        self.check_port_names();
        self.check_unapplied_destination_rule_fields();
        self.check_authorization_policies();

        let mut listeners = Vec::new();
        for (port, servers) in ports {
            let (bind_port, node_port) = self.bind_port(port, own_service);
            let routes = self.route_table(port, &servers, &virtual_services);
            let transport = self.transport(port, &servers, &virtual_services);
            listeners.push(Listener {
                port,
                bind_port,
                address: None,
                node_port,
                protocol: servers.protocol,
                servers: servers
                    .servers
                    .iter()
                    .map(|(g, _)| name_of(&g.resource.metadata))
                    .collect(),
                routes,
                transport,
                authz: self.listener_authz(&[]),
                proxy_protocol: self.proxy_protocol(port, own_service),
            });
        }
        let istio_ports = listeners.iter().map(|l| l.port).collect();
        listeners.extend(self.gateway_api_listeners(own_service, &istio_ports));
        let mut kernel_ports: Vec<u16> = listeners.iter().map(|l| l.bind_port).collect();
        kernel_ports.sort_unstable();
        kernel_ports.dedup();
        let tls_ports = tls_port_policies(&listeners);
        let source_rules = source_rule_policies(&listeners);
        let node_ports = listeners
            .iter()
            .filter_map(|l| Some((l.node_port?, l.bind_port)))
            .collect();
        let tcp_ports = listeners
            .iter()
            .filter(|l| l.protocol == Protocol::Tcp)
            .map(|l| l.bind_port)
            .collect();
        Snapshot {
            listeners: Arc::new(listeners),
            clusters: Arc::new(std::mem::take(&mut self.cluster_list)),
            endpoints: std::mem::take(&mut self.endpoint_lists),
            kernel: KernelPolicy {
                ports: kernel_ports,
                tls_ports,
                tcp_ports,
                node_ports,
                source_rules,
            },
            report: Default::default(),
        }
    }

    fn is_ours(&self, gateway: &Gateway) -> bool {
        gateway
            .spec
            .selector
            .iter()
            .all(|(k, v)| self.identity.labels.get(k) == Some(v))
    }

    /// Our Gateways' servers, grouped by port.
    fn ports(&mut self) -> BTreeMap<u16, PortServers<'a>> {
        let mut ports: BTreeMap<u16, PortServers<'a>> = BTreeMap::new();
        for gateway in &self.resources.gateways {
            if !self.is_ours(&gateway.resource) {
                continue;
            }
            let resource = gateway.resource.object_ref();
            for (index, server) in gateway.resource.spec.servers.iter().enumerate() {
                let field = format!("spec.servers[{index}]");
                let Some(port) = u16::try_from(server.port.number).ok().filter(|p| *p != 0) else {
                    self.diagnostics.push(
                        Diagnostic::error(format!(
                            "port {} is not a TCP port: expected 1-65535",
                            server.port.number
                        ))
                        .at(gateway.location.clone())
                        .object(&resource)
                        .field(format!("{field}.port.number")),
                    );
                    continue;
                };
                let Some(protocol) = Protocol::parse(&server.port.protocol) else {
                    self.diagnostics.push(
                        Diagnostic::warning(format!(
                            "protocol {} is not served yet (HTTP, HTTP2, GRPC, HTTPS, TLS and TCP are); this server is skipped",
                            server.port.protocol
                        ))
                        .at(gateway.location.clone())
                        .object(&resource)
                        .field(format!("{field}.port.protocol")),
                    );
                    continue;
                };
                let hosts = server.hosts.iter().map(|h| parse_server_host(h)).collect();
                let entry = ports.entry(port).or_insert_with(|| PortServers {
                    protocol,
                    servers: Vec::new(),
                    server_indices: Vec::new(),
                });
                // HTTPS and TLS servers share a port as Istio allows: SNI picks the server.
                let both_tls = matches!(entry.protocol, Protocol::Https | Protocol::Tls)
                    && matches!(protocol, Protocol::Https | Protocol::Tls);
                if entry.protocol != protocol && !both_tls {
                    self.diagnostics.push(
                        Diagnostic::warning(format!(
                            "port {port} is already {:?} from another server; Istio keeps the first protocol, so this server's routes join that listener",
                            entry.protocol
                        ))
                        .at(gateway.location.clone())
                        .object(&resource)
                        .field(format!("{field}.port.protocol")),
                    );
                }
                entry.servers.push((gateway, hosts));
                entry.server_indices.push((gateway, index));
            }
        }
        ports
    }

    /// The Service that fronts our pods: its selector matches our labels. Its ports tell
    /// which targetPort a Gateway port binds and which nodePort reaches it.
    fn own_service(&self) -> Option<&'a Service> {
        let labels = &self.identity.labels;
        let mut candidates = self
            .resources
            .services
            .iter()
            .map(|s| &s.resource)
            .filter(|s| {
                !s.spec.selector.is_empty()
                    && s.spec
                        .selector
                        .iter()
                        .all(|(k, v)| labels.get(k) == Some(v))
            });
        let first = candidates.next()?;
        if first.metadata.namespace() == self.identity.namespace {
            return Some(first);
        }
        candidates
            .find(|s| s.metadata.namespace() == self.identity.namespace)
            .or(Some(first))
            .map(|s| &**s)
    }

    /// Whether the listener for Gateway port `port` reads a PROXY protocol header first:
    /// `--proxy-protocol` names it, or our Service's `proxy.istio.io/config` annotation
    /// asks for it on every listener (Istio's `gatewayTopology.proxyProtocol`).
    fn proxy_protocol(&self, port: u16, own_service: Option<&Service>) -> bool {
        self.identity.proxy_protocol.applies_to(port)
            || own_service.is_some_and(|s| s.proxy_protocol)
    }

    fn bind_port(&mut self, port: u16, own_service: Option<&Service>) -> (u16, Option<u16>) {
        let Some(service) = own_service else {
            return (port, None);
        };
        let Some(service_port) = service
            .spec
            .ports
            .iter()
            .find(|p| p.port == u32::from(port))
        else {
            return (port, None);
        };
        let node_port = service_port.node_port.and_then(|n| u16::try_from(n).ok());
        match &service_port.target_port {
            Some(IntOrString::Int(target)) => match u16::try_from(*target) {
                Ok(target) if target != 0 => (target, node_port),
                _ => (port, node_port),
            },
            Some(IntOrString::String(name)) => {
                self.diagnostics.push(
                    Diagnostic::warning(format!(
                        "targetPort {name:?} names a container port, which only the pod spec resolves; binding port {port}"
                    ))
                    .object(&service.object_ref()),
                );
                (port, node_port)
            }
            None => (port, node_port),
        }
    }

    /// Istio rejects a Gateway whose servers repeat a port name, and when two of our
    /// Gateways use one port name for different port numbers, Istio's merge keeps the first.
    fn check_port_names(&mut self) {
        let mut seen: BTreeMap<&str, (u32, String)> = BTreeMap::new();
        for gateway in &self.resources.gateways {
            if !self.is_ours(&gateway.resource) {
                continue;
            }
            let resource = gateway.resource.object_ref();
            let mut own: BTreeMap<&str, usize> = BTreeMap::new();
            for (index, server) in gateway.resource.spec.servers.iter().enumerate() {
                let name = server.port.name.as_str();
                if name.is_empty() {
                    continue;
                }
                if let Some(first) = own.insert(name, index) {
                    self.diagnostics.push(
                        Diagnostic::error(format!(
                            "port name {name:?} is also used by spec.servers[{first}]: port names in a Gateway's servers must be unique"
                        ))
                        .at(gateway.location.clone())
                        .object(&resource)
                        .field(format!("spec.servers[{index}].port.name")),
                    );
                    continue;
                }
                match seen.get(name) {
                    Some((number, other)) if *number != server.port.number => {
                        self.diagnostics.push(
                            Diagnostic::warning(format!(
                                "port name {name:?} is port {number} in {other}; the same name on port {} conflicts (Istio keeps the first)",
                                server.port.number
                            ))
                            .at(gateway.location.clone())
                            .object(&resource)
                            .field(format!("spec.servers[{index}].port.name")),
                        );
                    }
                    Some(_) => {}
                    None => {
                        seen.insert(name, (server.port.number, resource.to_string()));
                    }
                }
            }
        }
    }

    /// Istio gives a gateway the VirtualServices exported to the gateway's own namespace
    /// (`VirtualServicesForGateway` reads them by the proxy's namespace): one with
    /// `exportTo: ["."]` in another namespace binds no gateway of ours. Delegates are
    /// looked up apart, by their root's namespace.
    fn exported_to_us(&mut self, vs: &Sourced<VirtualService>) -> bool {
        let exported = delegate::exported_to(&vs.resource, &self.identity.namespace);
        if !exported && !vs.resource.spec.gateways.is_empty() {
            self.diagnostics.push(
                Diagnostic::warning(format!(
                    "not exported to this gateway's namespace {:?} (exportTo): not bound, as Istio",
                    self.identity.namespace
                ))
                .at(vs.location.clone())
                .object(&vs.resource.object_ref())
                .field("spec.exportTo"),
            );
        }
        exported
    }

    fn check_gateway_references(&mut self, virtual_services: &[&Sourced<VirtualService>]) {
        for vs in virtual_services {
            let namespace = vs.resource.metadata.namespace();
            for (index, reference) in vs.resource.spec.gateways.iter().enumerate() {
                if reference == "mesh" {
                    continue;
                }
                let (gw_ns, gw_name) = istio_match::resolve_gateway_name(reference, namespace);
                let exists = self.resources.gateways.iter().any(|g| {
                    g.resource.metadata.namespace() == gw_ns && g.resource.metadata.name == gw_name
                });
                if !exists {
                    self.diagnostics.push(
                        Diagnostic::warning(format!(
                            "gateway {gw_ns}/{gw_name} does not exist; nothing is bound through it"
                        ))
                        .at(vs.location.clone())
                        .object(&vs.resource.object_ref())
                        .field(format!("spec.gateways[{index}]")),
                    );
                }
            }
        }
    }

    fn route_table(
        &mut self,
        port: u16,
        servers: &PortServers<'a>,
        virtual_services: &[&'a Sourced<VirtualService>],
    ) -> RouteTable<RouteAction> {
        // host → routes, in first-seen host order so output is stable.
        let mut hosts: Vec<(String, Arc<Vec<Route<RouteAction>>>)> = Vec::new();
        // host → index in `hosts`: thousands of VirtualServices must not scan the list.
        let mut host_index: HashMap<String, usize> = HashMap::new();
        // Bindings found against other servers are not this port's.
        let seen = memo::ServersSeen::of(servers);
        let bindings_valid = self
            .reusable
            .and_then(|memo| memo.servers.get(&port))
            .is_some_and(|previous| previous.same_as(&seen));
        self.memo.servers.insert(port, seen);
        for vs in virtual_services {
            let Some(binding) = self.binding(vs, port, servers, bindings_valid) else {
                continue;
            };
            let routes = self.virtual_service_routes(vs, port, &binding.gateways);
            for host in &binding.hosts {
                match host_index.get(host).and_then(|&i| hosts.get_mut(i)) {
                    // Several VirtualServices for one host: routes concatenate oldest
                    // first, and catch-all routes move to the end so that an older
                    // VirtualService's catch-all does not shadow a newer one's specific
                    // routes (Istio's CombineVHostRoutes).
                    Some((_, existing)) => {
                        let mut combined: Vec<Route<RouteAction>> = Vec::new();
                        let mut catch_alls: Vec<Route<RouteAction>> = Vec::new();
                        for route in existing.iter().chain(routes.iter()) {
                            let route = routes::clone_route(route);
                            if is_catch_all(&route) {
                                catch_alls.push(route);
                            } else {
                                combined.push(route);
                            }
                        }
                        combined.extend(catch_alls);
                        *existing = Arc::new(combined);
                    }
                    // The common case, one VirtualService per host: its routes as they
                    // are, shared with the memo.
                    None => {
                        host_index.insert(host.clone(), hosts.len());
                        hosts.push((host.clone(), Arc::clone(&routes)));
                    }
                }
            }
        }
        // Istio's `tls.httpsRedirect`: every request to such a server's hosts gets 301,
        // whether or not a VirtualService is bound to them.
        let redirect_hosts: Vec<&str> = servers
            .servers
            .iter()
            .zip(&servers.server_indices)
            .filter(|(_, (gateway, index))| {
                gateway
                    .resource
                    .spec
                    .servers
                    .get(*index)
                    .and_then(|s| s.tls.as_ref())
                    .is_some_and(|t| t.https_redirect)
            })
            .flat_map(|((_, server_hosts), _)| server_hosts.iter().map(|h| h.host.as_str()))
            .collect();
        for (host, routes) in &mut hosts {
            if redirect_hosts
                .iter()
                .any(|server_host| intersect_hosts(host, server_host).as_deref() == Some(host))
            {
                *routes = Arc::new(vec![routes::https_redirect(host)]);
            }
        }
        for server_host in redirect_hosts {
            if !host_index.contains_key(server_host) {
                host_index.insert(server_host.to_owned(), hosts.len());
                hosts.push((
                    server_host.to_owned(),
                    Arc::new(vec![routes::https_redirect(server_host)]),
                ));
            }
        }
        RouteTable::new(
            hosts
                .into_iter()
                .map(|(host, routes)| VirtualHost { host, routes })
                .collect(),
        )
    }
}

impl<'a> Compiler<'a> {
    /// The Gateways `vs` is bound through on `port` and the hosts their servers accept,
    /// or None when it is not bound there (warned when it names a Gateway of the port
    /// but none of its hosts is accepted). Taken from the previous compile's memo when
    /// `valid` (the port's servers are the same) and it has them.
    fn binding(
        &mut self,
        vs: &'a Sourced<VirtualService>,
        port: u16,
        servers: &PortServers<'a>,
        valid: bool,
    ) -> Option<Arc<memo::Binding>> {
        let key = (Arc::as_ptr(&vs.resource) as usize, port);
        let found = if valid {
            self.reusable.and_then(|memo| memo.bindings.get(&key))
        } else {
            None
        };
        let binding = match found {
            Some(entry) => entry.binding.clone(),
            None => bind(vs, servers).map(Arc::new),
        };
        self.memo.bindings.insert(
            key,
            memo::BindingEntry {
                _resource: Arc::clone(&vs.resource),
                binding: binding.clone(),
            },
        );
        let binding = binding?;
        if binding.hosts.is_empty() {
            self.diagnostics.push(
                Diagnostic::warning(format!(
                    "none of its hosts {:?} is accepted by a server on port {port}; it is not bound there",
                    vs.resource.spec.hosts
                ))
                .at(vs.location.clone())
                .object(&vs.resource.object_ref())
                .field("spec.hosts"),
            );
            return None;
        }
        Some(binding)
    }

    /// A VirtualService's HTTP routes as compiled for `port`: taken from the previous
    /// compile's memo when it has them, compiled (and remembered) otherwise; a changed
    /// VirtualService takes the `http` entries it did not change from its previous
    /// compile (`memo::MemoEntry::same_route`).
    fn virtual_service_routes(
        &mut self,
        vs: &'a Sourced<VirtualService>,
        port: u16,
        gateways: &[String],
    ) -> Arc<Vec<Route<RouteAction>>> {
        let key = (Arc::as_ptr(&vs.resource) as usize, port);
        // A root's routes depend on its delegates too, which the memo does not follow.
        let delegates = vs
            .resource
            .spec
            .http
            .iter()
            .any(|r| r.other.contains_key("delegate"));
        if !delegates && let Some(entry) = self.reusable.and_then(|memo| memo.entries.get(&key)) {
            // A document that moved in its file (an earlier one grew or shrank) keeps its
            // allocation (`config::documents`): its diagnostics must say the new line.
            let entry = entry.moved_to(&vs.location);
            self.diagnostics
                .0
                .extend(entry.compiled.diagnostics.iter().cloned());
            self.name_again(vs, &entry.compiled.namings);
            let routes = Arc::clone(&entry.compiled.routes);
            self.memo.entries.insert(key, entry);
            return routes;
        }
        let previous = if delegates {
            None
        } else {
            self.previous_entry(vs, port, gateways)
        };
        let before = self.diagnostics.0.len();
        // The namings of routes compiled elsewhere (Gateway API, TLS) are kept by no one.
        self.namings.clear();
        let namings_before = self.namings.len();
        let target = istio_match::MatchTarget {
            port,
            gateways,
            labels: &self.identity.labels,
            namespace: &self.identity.namespace,
        };
        let written = self.with_delegates(vs);
        // How many more `http` entries than before: entries after an added or removed
        // one are found as far from the end as they were.
        let shift = previous.map_or(0, |p| {
            written.len() as isize - p.resource.spec.http.len() as isize
        });
        let mut taken = vec![false; previous.map_or(0, |p| p.compiled.written.len())];
        let mut routes = Vec::new();
        let mut entries = Vec::new();
        for (position, (owner, index, route)) in written.iter().enumerate() {
            let from = self.diagnostics.0.len() - before;
            let namings_from = self.namings.len() - namings_before;
            let same =
                previous.and_then(|p| Some((p, p.same_route(*index, route, shift, &mut taken)?)));
            let compiled = match same {
                Some((previous, old)) => {
                    let (route, diagnostics, namings) = previous.reuse(old, *index, vs);
                    self.diagnostics.0.extend(diagnostics);
                    self.name_again(vs, &namings);
                    self.namings.extend(namings);
                    route
                }
                None => {
                    self.memo.compiled_routes += 1;
                    self.route(owner, *index, route, &target)
                }
            };
            entries.push(memo::Written {
                route: compiled.as_ref().map(|_| routes.len()),
                diagnostics: from..self.diagnostics.0.len() - before,
                namings: namings_from..self.namings.len() - namings_before,
            });
            let Some(route) = compiled else {
                continue;
            };
            let catch_all = is_catch_all(&route);
            routes.push(route);
            // Istio stops at a route that accepts every request: later ones are dropped.
            if catch_all && let Some((later, later_index, _)) = written.get(position + 1) {
                self.diagnostics.push(
                    Diagnostic::warning(format!(
                        "never reached: spec.http[{index}] of {} before it accepts every request; Istio drops the routes after it",
                        owner.resource.object_ref()
                    ))
                    .at(later.location.clone())
                    .object(&later.resource.object_ref())
                    .field(format!("spec.http[{later_index}]")),
                );
                break;
            }
        }
        let routes = Arc::new(routes);
        if delegates {
            self.namings.truncate(namings_before);
            return routes;
        }
        let entry = memo::MemoEntry {
            resource: Arc::clone(&vs.resource),
            location: vs.location.clone(),
            compiled: Arc::new(memo::Compiled {
                gateways: gateways.to_vec(),
                routes: Arc::clone(&routes),
                diagnostics: self
                    .diagnostics
                    .0
                    .get(before..)
                    .unwrap_or_default()
                    .to_vec(),
                namings: self.namings.split_off(namings_before),
                written: entries,
            }),
        };
        self.memo.entries.insert(key, entry);
        routes
    }

    /// The previous compile's entry for a VirtualService of `vs`'s namespace and name on
    /// `port`, bound through the same Gateways, when this compile reuses one.
    fn previous_entry(
        &mut self,
        vs: &Sourced<VirtualService>,
        port: u16,
        gateways: &[String],
    ) -> Option<&'a memo::MemoEntry> {
        let memo = self.reusable?;
        let by_name = self.previous_by_name.get_or_insert_with(|| {
            memo.entries
                .iter()
                .map(|(&(_, port), entry)| {
                    let meta = &entry.resource.metadata;
                    ((meta.namespace(), meta.name.as_str()), port, entry)
                })
                .map(|((namespace, name), port, entry)| ((namespace, name, port), entry))
                .collect()
        });
        let meta = &vs.resource.metadata;
        by_name
            .get(&(meta.namespace(), meta.name.as_str(), port))
            .copied()
            .filter(|entry| entry.compiled.gateways == gateways)
    }

    /// A VirtualService's `http` routes with each `delegate` route replaced by its
    /// delegate's routes merged under it: (the VirtualService a route is written in, its
    /// index there, the route).
    fn with_delegates(
        &mut self,
        vs: &'a Sourced<VirtualService>,
    ) -> Vec<(&'a Sourced<VirtualService>, usize, Cow<'a, HttpRoute>)> {
        let mut out = Vec::new();
        let root_namespace = vs.resource.metadata.namespace();
        for (index, route) in vs.resource.spec.http.iter().enumerate() {
            let Some(reference) = route.other.get("delegate") else {
                out.push((vs, index, Cow::Borrowed(route)));
                continue;
            };
            let field = format!("spec.http[{index}].delegate");
            let problem = |message: String| {
                Diagnostic::warning(message)
                    .at(vs.location.clone())
                    .object(&vs.resource.object_ref())
                    .field(field.clone())
            };
            let reference: delegate::DelegateRef = match serde_yaml::from_value(reference.clone()) {
                Ok(reference) => reference,
                Err(e) => {
                    self.diagnostics.push(problem(format!(
                        "{e}; expected {{name, namespace}}; this route is skipped"
                    )));
                    continue;
                }
            };
            let namespace = reference.namespace.as_deref().unwrap_or(root_namespace);
            // Istio's delegates are the VirtualServices without hosts.
            let found = self.resources.virtual_services.iter().find(|d| {
                d.resource.metadata.name == reference.name
                    && d.resource.metadata.namespace() == namespace
                    && d.resource.spec.hosts.is_empty()
            });
            let Some(delegate_vs) = found else {
                self.diagnostics.push(problem(format!(
                    "delegate {namespace}/{} does not exist (a delegate is a VirtualService without hosts); this route is skipped",
                    reference.name
                )));
                continue;
            };
            if !delegate::exported_to(&delegate_vs.resource, root_namespace) {
                self.diagnostics.push(problem(format!(
                    "delegate {namespace}/{} is not exported to namespace {root_namespace}; this route is skipped",
                    reference.name
                )));
                continue;
            }
            for (d_index, leaf) in delegate_vs.resource.spec.http.iter().enumerate() {
                match delegate::merge_route(route, leaf) {
                    Some(merged) => out.push((delegate_vs, d_index, Cow::Owned(merged))),
                    None => self.diagnostics.push(
                        Diagnostic::warning(format!(
                            "its matches fit in none of the matches of {}'s spec.http[{index}], which delegates here; Istio drops this route",
                            vs.resource.object_ref()
                        ))
                        .at(delegate_vs.location.clone())
                        .object(&delegate_vs.resource.object_ref())
                        .field(format!("spec.http[{d_index}].match")),
                    ),
                }
            }
        }
        out
    }
}

/// The SNI names each TLS port accepts, for the kernel's early rejection.
/// The bind ports where the kernel can drop the SYNs of sources the policies deny: TLS,
/// HTTPS and TCP listeners, where a denial closes the connection (HTTP answers a 403 the
/// client should see), without a PROXY protocol header (the kernel sees the balancer,
/// userspace the client). A port two listeners share needs the same rules from both.
fn source_rule_policies(listeners: &[Listener]) -> Vec<PortSourceRules> {
    let mut ports: Vec<PortSourceRules> = Vec::new();
    let mut mixed: Vec<u16> = Vec::new();
    for listener in listeners {
        let port = listener.bind_port;
        let rules = matches!(
            listener.protocol,
            Protocol::Https | Protocol::Tls | Protocol::Tcp
        )
        .then_some(())
        .filter(|()| !listener.proxy_protocol)
        .and_then(|()| listener.authz.source_rules(port));
        match (ports.iter().position(|p| p.port == port), rules) {
            (None, Some(rules)) if !mixed.contains(&port) => {
                ports.push(PortSourceRules { port, rules });
            }
            (Some(at), Some(rules)) if ports[at].rules == rules => {}
            (Some(at), _) => {
                ports.remove(at);
                mixed.push(port);
            }
            (None, _) => mixed.push(port),
        }
    }
    ports
}

/// The kernel's SNI policy per bind port. The kernel sees ports, not addresses: where
/// listeners on several addresses share a port (Gateway API `spec.addresses`), the port
/// admits what any of them admits, and a port where one of them is not TLS (or reads a
/// PROXY protocol header first) gets no SNI policy at all.
fn tls_port_policies(listeners: &[Listener]) -> Vec<TlsPortPolicy> {
    let mut policies: Vec<TlsPortPolicy> = Vec::new();
    let mut unpoliced: Vec<u16> = Vec::new();
    for l in listeners {
        let port = l.bind_port;
        let tls = l.transport.as_ref().and_then(|t| t.tls());
        // On a PROXY protocol listener the ClientHello follows the balancer's header,
        // which the kernel does not parse: userspace alone judges its SNI.
        let Some(tls) = tls.filter(|_| !l.proxy_protocol) else {
            policies.retain(|p| p.port != port);
            unpoliced.push(port);
            continue;
        };
        if unpoliced.contains(&port) {
            continue;
        }
        let (accept_any, names) = tls.kernel_policy();
        let passthrough = tls.all_passthrough();
        match policies.iter_mut().find(|p| p.port == port) {
            Some(p) => {
                p.accept_any |= accept_any;
                for name in names {
                    if !p.names.contains(&name) {
                        p.names.push(name);
                    }
                }
                p.passthrough &= passthrough;
            }
            None => policies.push(TlsPortPolicy {
                port,
                accept_any,
                names,
                passthrough,
            }),
        }
    }
    policies
}

/// A route that accepts every request: no match, or a match on nothing but the `/`
/// prefix (or a regex that accepts any path).
fn is_catch_all(route: &Route<RouteAction>) -> bool {
    use crate::route_table::StringMatcher;
    route.matches.is_empty()
        || route.matches.iter().any(|m| {
            let any_path = match &m.path {
                None => true,
                Some(StringMatcher::Prefix { value, .. }) => value == "/",
                Some(StringMatcher::PathPrefix { value }) => value.is_empty(),
                Some(StringMatcher::Regex(re)) => matches!(re.as_str(), "^(?:.*)$" | "^(?:/.*)$"),
                Some(StringMatcher::Exact { .. }) => false,
                Some(StringMatcher::Present) => true,
            };
            any_path
                && m.method.is_none()
                && m.scheme.is_none()
                && m.authority.is_none()
                && m.headers.is_empty()
                && m.without_headers.is_empty()
                && m.query_params.is_empty()
                && m.port.is_none()
        })
}

pub(crate) fn name_of(meta: &crate::config::resources::ObjectMeta) -> String {
    format!("{}/{}", meta.namespace(), meta.name)
}

/// Does the VirtualService name this Gateway in `gateways` (in any of the forms Istio
/// resolves)? No `gateways` means the mesh only.
fn binds(vs: &VirtualService, gateway: &Sourced<Gateway>) -> bool {
    let vs_namespace = vs.metadata.namespace();
    vs.spec
        .gateways
        .iter()
        .filter(|g| *g != "mesh")
        .any(|reference| {
            let (ns, name) = istio_match::resolve_gateway_name(reference, vs_namespace);
            ns == gateway.resource.metadata.namespace() && name == gateway.resource.metadata.name
        })
}

/// The Gateways among `servers` that `vs` names, and the hosts of `vs` their servers
/// accept (Istio's host intersection, with the servers' `namespace/` restrictions), or
/// None when it names none of them.
fn bind(vs: &Sourced<VirtualService>, servers: &PortServers<'_>) -> Option<memo::Binding> {
    let vs_namespace = vs.resource.metadata.namespace();
    let mut binding = memo::Binding {
        gateways: Vec::new(),
        hosts: Vec::new(),
    };
    let mut vs_hosts: Option<Vec<String>> = None;
    for (gateway, server_hosts) in &servers.servers {
        if !binds(&vs.resource, gateway) {
            continue;
        }
        let gateway_name = name_of(&gateway.resource.metadata);
        if !binding.gateways.contains(&gateway_name) {
            binding.gateways.push(gateway_name);
        }
        let gw_namespace = gateway.resource.metadata.namespace();
        let vs_hosts = vs_hosts.get_or_insert_with(|| vs.resource.resolved_hosts().collect());
        for vs_host in vs_hosts.iter() {
            for server_host in server_hosts {
                let namespace_ok = match server_host.namespace.as_str() {
                    "*" => true,
                    "." => vs_namespace == gw_namespace,
                    ns => ns == vs_namespace,
                };
                if !namespace_ok {
                    continue;
                }
                if let Some(host) = intersect_hosts(vs_host, &server_host.host)
                    && !binding.hosts.contains(&host)
                {
                    binding.hosts.push(host);
                }
            }
        }
    }
    (!binding.gateways.is_empty()).then_some(binding)
}

impl VirtualService {
    /// `hosts` as Istio reads them: short names in full (`istio_match::resolve_short_host`).
    fn resolved_hosts(&self) -> impl Iterator<Item = String> + '_ {
        let namespace = self.metadata.namespace();
        self.spec
            .hosts
            .iter()
            .map(move |h| istio_match::resolve_short_host(h, namespace))
    }
}

fn parse_server_host(host: &str) -> ServerHost {
    match host.split_once('/') {
        Some((namespace, host)) => ServerHost {
            namespace: namespace.to_owned(),
            host: host.to_ascii_lowercase(),
        },
        None => ServerHost {
            namespace: "*".to_owned(),
            host: host.to_ascii_lowercase(),
        },
    }
}

/// The hosts both a VirtualService and a server accept: the more specific of the two,
/// or None when they are disjoint.
pub fn intersect_hosts(vs_host: &str, server_host: &str) -> Option<String> {
    let (a, b) = (
        vs_host.to_ascii_lowercase(),
        server_host.to_ascii_lowercase(),
    );
    if a == b {
        return Some(a);
    }
    if covers(&b, &a) {
        return Some(a);
    }
    if covers(&a, &b) {
        return Some(b);
    }
    None
}

/// Does pattern `wide` accept every host `narrow` accepts?
fn covers(wide: &str, narrow: &str) -> bool {
    if wide == "*" {
        return true;
    }
    match wide.strip_prefix('*') {
        // `*.example.com` covers `a.example.com` and `*.a.example.com`.
        Some(suffix) => narrow.len() > suffix.len() && narrow.ends_with(suffix),
        None => false,
    }
}

#[cfg(test)]
#[path = "compile_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "compile/istio_tests.rs"]
mod istio_tests;

#[cfg(test)]
#[path = "compile/istio_fidelity_tests.rs"]
mod istio_fidelity_tests;

#[cfg(test)]
#[path = "compile/examples_tests.rs"]
mod examples_tests;

#[cfg(test)]
#[path = "compile/status_tests.rs"]
mod status_tests;

#[cfg(test)]
#[path = "compile/addresses_tests.rs"]
mod addresses_tests;
