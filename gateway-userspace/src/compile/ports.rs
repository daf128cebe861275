//! Which port a Gateway port binds, for both front ends: our own Service (the one whose
//! selector matches our labels) maps a Gateway port to its targetPort and nodePort, and
//! says whether a PROXY protocol header comes first.

use crate::{
    compile::{index::Index, sink::Sink},
    config::{
        Diagnostic, Kind,
        resources::{IntOrString, Service},
    },
};

impl<'a> Index<'a> {
    /// The Service that fronts our pods: its selector matches our labels. Its ports tell
    /// which targetPort a Gateway port binds and which nodePort reaches it.
    pub(super) fn own_service(&self) -> Option<&'a Service> {
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
    pub(super) fn proxy_protocol(&self, port: u16, own_service: Option<&Service>) -> bool {
        self.identity.proxy_protocol.applies_to(port)
            || own_service.is_some_and(|s| s.proxy_protocol)
    }
}

/// The port the listener for Gateway port `port` binds, and the nodePort that reaches it,
/// from our Service's ports.
pub(super) fn bind_port(
    sink: &mut Sink,
    port: u16,
    own_service: Option<&Service>,
) -> (u16, Option<u16>) {
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
            sink.push(
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
