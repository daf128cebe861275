//! What the kernel filter is told, from the compiled listeners: the SNI names each TLS
//! port accepts, and the source rules it can apply before userspace sees a connection.

use crate::snapshot::{Listener, PortSourceRules, Protocol, TlsPortPolicy};

/// The bind ports where the kernel can drop the SYNs of sources the policies deny: TLS,
/// HTTPS and TCP listeners, where a denial closes the connection (HTTP answers a 403 the
/// client should see), without a PROXY protocol header (the kernel sees the balancer,
/// userspace the client). A port two listeners share needs the same rules from both.
pub(super) fn source_rule_policies(listeners: &[Listener]) -> Vec<PortSourceRules> {
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
pub(super) fn tls_port_policies(listeners: &[Listener]) -> Vec<TlsPortPolicy> {
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
