//! Our Istio Gateways' servers, grouped by port: which Gateways are ours (selector ⊆ our
//! labels), the port and protocol each server asks for, and its `namespace/host` list.

use std::collections::BTreeMap;

use crate::{
    compile::{index::Index, sink::Sink},
    config::{
        Diagnostic, Kind, ObjectRef, Sourced,
        resources::{Gateway, Server},
    },
    snapshot::Protocol,
};

/// Where a server and its diagnostics come from.
pub(super) struct ServerRef<'a> {
    pub(super) gateway: &'a Sourced<Gateway>,
    pub(super) server: &'a Server,
    pub(super) resource: ObjectRef,
    pub(super) field: String,
    /// `resource field`: who uses the server's credentials, in their problems.
    pub(super) name: String,
    /// Lowercase, `namespace/` removed.
    pub(super) hosts: Vec<String>,
}

/// One server's host list entry, `namespace/host` split.
#[derive(Debug)]
pub(in crate::compile) struct ServerHost {
    /// `*` any, `.` the Gateway's own namespace, or a namespace name.
    pub(in crate::compile) namespace: String,
    pub(in crate::compile) host: String,
}

/// Servers on one port, merged (Istio merges HTTP servers on a port into one route table).
pub(in crate::compile) struct PortServers<'a> {
    pub(in crate::compile) protocol: Protocol,
    /// (gateway, its server hosts)
    pub(in crate::compile) servers: Vec<(&'a Sourced<Gateway>, Vec<ServerHost>)>,
    /// (gateway, index in its `spec.servers`), same order as `servers`: what TLS needs.
    pub(in crate::compile) server_indices: Vec<(&'a Sourced<Gateway>, usize)>,
}

impl<'a> Index<'a> {
    fn is_ours(&self, gateway: &Gateway) -> bool {
        gateway
            .spec
            .selector
            .iter()
            .all(|(k, v)| self.identity.labels.get(k) == Some(v))
    }
}

/// Our Gateways' servers, grouped by port.
pub(in crate::compile) fn istio_servers<'a>(
    ix: &Index<'a>,
    sink: &mut Sink,
) -> BTreeMap<u16, PortServers<'a>> {
    let mut ports: BTreeMap<u16, PortServers<'a>> = BTreeMap::new();
    for gateway in &ix.resources.gateways {
        if !ix.is_ours(&gateway.resource) {
            continue;
        }
        let resource = gateway.resource.object_ref();
        for (index, server) in gateway.resource.spec.servers.iter().enumerate() {
            let field = format!("spec.servers[{index}]");
            let Some(port) = u16::try_from(server.port.number).ok().filter(|p| *p != 0) else {
                sink.push(
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
                sink.push(
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
                sink.push(
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

/// Istio rejects a Gateway whose servers repeat a port name, and when two of our
/// Gateways use one port name for different port numbers, Istio's merge keeps the first.
pub(super) fn check_port_names<'a>(ix: &Index<'a>, sink: &mut Sink) {
    let mut seen: BTreeMap<&str, (u32, String)> = BTreeMap::new();
    for gateway in &ix.resources.gateways {
        if !ix.is_ours(&gateway.resource) {
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
                sink.push(
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
                    sink.push(
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
