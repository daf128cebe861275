//! Compiling: resources → one immutable [`Snapshot`], with Istio's meaning.
//!
//! Each front end binds its own resources to listeners: `istio` (which Gateways are ours
//! by selector, which VirtualService hosts each server accepts, route order) and
//! `gateway_api` (Gateways of our class, routes attached through `parentRefs`). Both
//! compile onto the same back end: `clusters` (which endpoints each destination reaches),
//! `tls` (served credentials), `upstream_tls`, `authz`, `ports` (which port a Gateway
//! port binds) and `kernel` (what the kernel filter is told). `snapshot` below reads as
//! that order: bind each front end's listeners, then assemble the snapshot.

pub mod addresses;
mod authz;
mod backend_tls;
mod clusters;
mod gateway_api;
mod hosts;
mod index;
pub mod isolate;
mod istio;
mod kernel;
mod memo;
mod ports;
pub mod report;
mod routes;
mod sink;
pub mod status;
mod tls;
mod unapplied;
mod upstream_tls;

use std::{collections::BTreeMap, sync::Arc};

use crate::{
    config::{Diagnostics, Resources},
    snapshot::{Cluster, KernelPolicy, Listener, Protocol, Snapshot},
};

use clusters::ClusterTable;
pub use clusters::{ClustersByService, update_endpoints, update_endpoints_indexed};
pub use hosts::intersect_hosts;
use index::Index;
pub use isolate::{Isolated, compile_isolating};
use istio::PortServers;
pub use memo::RouteMemo;
pub use report::{DroppedObject, Report};
use sink::Sink;

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
    let ix = Index::new(resources, identity, tls, previous.map(|(_, memo)| memo));
    let mut sink = Sink::default();
    let mut built = Built::default();
    if let Some((snapshot, memo)) = previous {
        // Routes taken from the memo name these clusters by id.
        built.clusters = ClusterTable::carried_over(snapshot, memo);
    }
    let mut snapshot = snapshot(&ix, &mut sink, &mut built);
    if let Some((previous, _)) = previous
        && snapshot.clusters.len() == previous.clusters.len()
    {
        // No cluster added to the previous list (it only grows): share it, so that the
        // runtime state and the endpoint index carry over without a pass over it.
        snapshot.clusters = Arc::clone(&previous.clusters);
    }
    let policies = backend_tls::policy_statuses(resources, identity);
    snapshot.report = Arc::new(status::build(resources, identity, &sink.status, policies));
    let Built {
        clusters,
        credentials,
        mut memo,
    } = built;
    credentials.stage(tls, &clusters.upstream_tls_keys);
    let mut diagnostics = sink.diagnostics;
    diagnostics.0.extend(clusters.said);
    resources.locate(&mut diagnostics);
    memo.clusters = clusters.notes;
    (snapshot, diagnostics, memo)
}

/// What a compile builds besides its listeners.
#[derive(Default)]
struct Built {
    clusters: ClusterTable,
    /// The credentials this compile loaded or kept, staged in `tls` at the end.
    credentials: tls::CompiledCredentials,
    /// What this compile's VirtualServices gave.
    memo: RouteMemo,
}

/// Bind each front end's resources to listeners (compiling the clusters and TLS
/// configurations their routes need on the way), then assemble the snapshot. Every part
/// of the compile is a function of what it reads (`ix`), what it says (`sink`) and what
/// it builds (`built`); the three are apart so that one can be read while the others
/// are written.
fn snapshot(ix: &Index<'_>, sink: &mut Sink, built: &mut Built) -> Snapshot {
    let ports = istio::istio_servers(ix, sink);
    let own_service = ix.own_service();
    let virtual_services = istio::istio_virtual_services(ix, sink);
    unapplied::check_unapplied_destination_rule_fields(ix, sink);
    unapplied::check_unapplied_virtual_service_fields(ix, sink);
    authz::check_authorization_policies(ix, sink);
    backend_tls::check_backend_tls_policies(ix, sink);

    let mut listeners =
        istio::istio_listeners(ix, sink, built, ports, &virtual_services, own_service);
    let istio_ports = listeners.iter().map(|l| l.port).collect();
    listeners.extend(gateway_api::gateway_api_listeners(
        ix,
        sink,
        built,
        own_service,
        &istio_ports,
    ));
    assemble(
        listeners,
        std::mem::take(&mut built.clusters.list),
        std::mem::take(&mut built.clusters.endpoints),
    )
}

/// The snapshot of compiled listeners and clusters, with what the kernel filter is told
/// of them.
fn assemble(
    listeners: Vec<Listener>,
    clusters: Vec<Arc<Cluster>>,
    endpoints: Vec<Arc<[std::net::SocketAddr]>>,
) -> Snapshot {
    let mut kernel_ports: Vec<u16> = listeners.iter().map(|l| l.bind_port).collect();
    kernel_ports.sort_unstable();
    kernel_ports.dedup();
    let tls_ports = kernel::tls_port_policies(&listeners);
    let source_rules = kernel::source_rule_policies(&listeners);
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
        clusters: Arc::new(clusters),
        endpoints,
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

pub(crate) fn name_of(meta: &crate::config::resources::ObjectMeta) -> String {
    format!("{}/{}", meta.namespace(), meta.name)
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
