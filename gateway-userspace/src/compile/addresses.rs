//! Gateway API `spec.addresses` → where a Gateway's listeners bind.
//!
//! The spec (`GatewaySpecAddress`): listeners are bound on every address the Gateway is
//! given and each one is reported in `status.addresses`; an address of a type the
//! implementation does not support makes the Gateway `Accepted=False UnsupportedAddress`,
//! one it cannot use `Programmed=False AddressNotUsable` (the conformance suite's
//! GatewayStaticAddresses checks both, in that order). This data plane runs on the node,
//! so an `IPAddress` is usable when the node can listen on it; `Hostname` and
//! implementation-specific types are not supported. An `IPAddress` without a value asks
//! us to choose: we choose every address of the node, as a Gateway without addresses
//! gets. Which address is usable is asked of the kernel at each compile (a reload after
//! an address appears picks it up).

use std::net::IpAddr;

use crate::config::resources::gateway_api::GatewaySpecAddress;

/// Whether this node can listen on an address: `Err` says why not.
pub type AddressCheck = fn(IpAddr) -> Result<(), String>;

/// The kernel's answer: a bind on the address (port 0, UDP: nothing is held after it).
/// This also honours `net.ipv4.ip_nonlocal_bind` and its IPv6 twin, which make an
/// address that is routed to the node but not configured on it usable.
pub fn local_address(ip: IpAddr) -> Result<(), String> {
    match std::net::UdpSocket::bind((ip, 0)) {
        Ok(_) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => {
            Err("it is not an address of this node".to_owned())
        }
        Err(e) => Err(e.to_string()),
    }
}

const IP_ADDRESS: &str = "IPAddress";

/// What a Gateway's `spec.addresses` come to.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct GatewayAddresses {
    /// Where its listeners bind, each address once; None is every address of the node.
    /// Empty: nowhere (every address it asked for is unusable).
    pub binds: Vec<Option<IpAddr>>,
    /// What `status.addresses` reports: None leaves it to the cluster (the node's
    /// addresses, as for a Gateway without `spec.addresses`).
    pub reported: Option<Vec<IpAddr>>,
    /// Addresses of a type we do not support, each described.
    pub unsupported: Vec<String>,
    /// Addresses this node cannot listen on, each with the reason.
    pub unusable: Vec<String>,
}

pub fn resolve(addresses: &[GatewaySpecAddress], check: AddressCheck) -> GatewayAddresses {
    let mut out = GatewayAddresses::default();
    let mut every_address = addresses.is_empty();
    let mut usable: Vec<IpAddr> = Vec::new();
    for address in addresses {
        let kind = address.address_type.as_deref().unwrap_or(IP_ADDRESS);
        let value = address.value.as_deref().unwrap_or_default().trim();
        if kind != IP_ADDRESS {
            out.unsupported.push(format!(
                "{kind} {value:?}: only IPAddress addresses are supported (this gateway listens on the node's own addresses)"
            ));
            continue;
        }
        if value.is_empty() {
            every_address = true;
            continue;
        }
        let Ok(ip) = value.parse::<IpAddr>() else {
            out.unsupported
                .push(format!("IPAddress {value:?} is not an IP address"));
            continue;
        };
        if ip.is_unspecified() {
            every_address = true;
            continue;
        }
        match check(ip) {
            Ok(()) if !usable.contains(&ip) => usable.push(ip),
            Ok(()) => {}
            Err(why) => out.unusable.push(format!(
                "{ip} cannot be used: {why}; give an address of this node (or one routed to it, with ip_nonlocal_bind) or remove it"
            )),
        }
    }
    if every_address {
        // Every address of the node covers the ones named too.
        out.binds = vec![None];
    } else {
        out.binds = usable.iter().copied().map(Some).collect();
        out.reported = Some(usable);
    }
    out
}
