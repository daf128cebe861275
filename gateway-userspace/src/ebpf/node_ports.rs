//! Node-port mode (`--node-ports`): connections to our Service's node ports reach the
//! gateway's listeners whatever kube-proxy decided for them.
//!
//! Two mechanisms, loaded on first use:
//! - Translation at TC (`gateway_ebpf`'s `nodeport` programs) on the interfaces the
//!   filter is attached to: a SYN to a node port on a local address is rewritten to the
//!   listener's bind port at ingress, before netfilter, so kube-proxy's DNAT (to a pod on
//!   another node, with `externalTrafficPolicy: Cluster`) never sees it; replies get the
//!   node port back at egress. The client address is kept.
//! - Socket lookup (sk_lookup) on this network namespace, for node-port connections that
//!   arrive untranslated (on other interfaces): handed to the listener's socket.
//!
//! Both detach when gatewayd exits (bpf links), however it exits: kube-proxy's path
//! then works as before.

use std::os::fd::{AsRawFd, RawFd};

use aya::{
    maps::{HashMap as BpfHashMap, SockMap},
    programs::{
        LinkOrder, SchedClassifier, SkLookup, TcAttachType,
        tc::{NlOptions, TcAttachOptions},
    },
};
use gateway_ebpf::maps::{
    NODE_PORT_EGRESS_PROGRAM, NODE_PORT_INGRESS_PROGRAM, NODE_PORT_TARGETS_MAP, STEER_PORTS_MAP,
    STEER_PROGRAM, STEER_SOCKETS_MAP,
};

use super::{KernelError, KernelPath, has_tcx, map_mut};

/// Netlink priority of the translation on kernels without TCX: ahead of the filter's
/// (the kernel gives that one 49152), so the filter sees the listener's port.
const NETLINK_PRIORITY: u16 = 1;

/// A node port and the listener it leads to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodePortRoute {
    pub node_port: u16,
    pub bind_port: u16,
    /// The listener's IPv4 socket (owned by the listener; the kernel maps hold their own
    /// reference).
    pub socket: RawFd,
    /// Its IPv6 socket, where the node has IPv6.
    pub socket_v6: Option<RawFd>,
}

impl KernelPath {
    /// Turns node-port mode on (`--node-ports`); `steer_node_ports` does nothing otherwise.
    pub fn enable_node_port_mode(&mut self) {
        self.node_port_mode = true;
    }

    /// Points each node port at its listener, translating at TC and steering at socket
    /// lookup. Node ports whose listener is missing are dropped from the maps, so they
    /// fall back to the normal path (and kube-proxy, where it runs).
    pub fn steer_node_ports(&mut self, routes: &[NodePortRoute]) -> Result<(), KernelError> {
        if !self.node_port_mode || (routes.is_empty() && self.steer_link.is_none()) {
            return Ok(());
        }
        self.set_node_port_targets(routes.iter().map(|r| (r.node_port, r.bind_port)))?;
        if !self.translating {
            self.attach_translation()?;
            self.translating = true;
        }
        self.steer_at_socket_lookup(routes)
    }

    /// Which node port leads to which bind port, for the translation: only the
    /// difference is written, so live flows see no gap.
    pub fn set_node_port_targets(
        &mut self,
        targets: impl Iterator<Item = (u16, u16)> + Clone,
    ) -> Result<(), KernelError> {
        let mut map: BpfHashMap<_, u32, u32> =
            BpfHashMap::try_from(map_mut(&mut self.ebpf, NODE_PORT_TARGETS_MAP)?)?;
        let stale: Vec<u32> = map
            .keys()
            .filter_map(Result::ok)
            .filter(|p| !targets.clone().any(|(node, _)| u32::from(node) == *p))
            .collect();
        for port in stale {
            map.remove(&port)?;
        }
        for (node, bind) in targets {
            map.insert(u32::from(node), u32::from(bind), 0)?;
        }
        Ok(())
    }

    /// The translation program for one direction, loaded (verified) on first use; for
    /// attaching, and for BPF_PROG_TEST_RUN in tests.
    pub fn node_port_program(
        &mut self,
        direction: TcAttachType,
    ) -> Result<&mut SchedClassifier, KernelError> {
        let name = program_name(direction);
        let program: &mut SchedClassifier = self
            .ebpf
            .program_mut(name)
            .ok_or(KernelError::Missing(name))?
            .try_into()?;
        if program.fd().is_err() {
            program.load()?;
        }
        Ok(program)
    }

    /// Loads the translation and attaches it to every interface the filter is on: at
    /// ingress ahead of the filter (which then polices the listener's port), at egress.
    fn attach_translation(&mut self) -> Result<(), KernelError> {
        let interfaces: Vec<String> = self.attached.iter().map(|(i, _)| i.clone()).collect();
        let tcx = has_tcx();
        for direction in [TcAttachType::Ingress, TcAttachType::Egress] {
            let program = self.node_port_program(direction)?;
            for interface in &interfaces {
                let options = if tcx {
                    TcAttachOptions::TcxOrder(LinkOrder::first())
                } else {
                    remove_stale_netlink_attachment(interface, direction);
                    // EEXIST when the qdisc is there already.
                    let _ = aya::programs::tc::qdisc_add_clsact(interface);
                    TcAttachOptions::Netlink(NlOptions {
                        priority: NETLINK_PRIORITY,
                        ..NlOptions::default()
                    })
                };
                program
                    .attach_with_options(interface, direction, options)
                    .map_err(|source| KernelError::Attach {
                        interface: interface.clone(),
                        source,
                    })?;
            }
        }
        Ok(())
    }

    /// Hands untranslated node-port connections to the listening socket of their bind
    /// port (an sk_lookup program on this network namespace).
    fn steer_at_socket_lookup(&mut self, routes: &[NodePortRoute]) -> Result<(), KernelError> {
        if self.steer_link.is_none() {
            let netns = std::fs::File::open("/proc/self/ns/net").map_err(KernelError::Netns)?;
            let program: &mut SkLookup = self
                .ebpf
                .program_mut(STEER_PROGRAM)
                .ok_or(KernelError::Missing(STEER_PROGRAM))?
                .try_into()?;
            program.load()?;
            self.steer_link = Some(program.attach(netns)?);
        }
        // Each route has two slots, IPv4 then IPv6: the program picks by the lookup's
        // family (a socket of the other family cannot take the connection).
        let mut sockets: SockMap<_> =
            SockMap::try_from(map_mut(&mut self.ebpf, STEER_SOCKETS_MAP)?)?;
        for (index, route) in routes.iter().enumerate() {
            let slot = 2 * index as u32;
            sockets.set(slot, &SocketFd(route.socket), 0)?;
            match route.socket_v6 {
                Some(v6) => sockets.set(slot + 1, &SocketFd(v6), 0)?,
                // An empty slot: the redirect fails and the normal lookup goes on.
                None => {
                    let _ = sockets.clear_index(&(slot + 1));
                }
            }
        }
        let mut ports: BpfHashMap<_, u32, u32> =
            BpfHashMap::try_from(map_mut(&mut self.ebpf, STEER_PORTS_MAP)?)?;
        let wanted: Vec<u32> = routes.iter().map(|r| u32::from(r.node_port)).collect();
        let stale: Vec<u32> = ports
            .keys()
            .filter_map(Result::ok)
            .filter(|p| !wanted.contains(p))
            .collect();
        for port in stale {
            ports.remove(&port)?;
        }
        for (index, port) in wanted.iter().enumerate() {
            ports.insert(port, 2 * index as u32, 0)?;
        }
        Ok(())
    }
}

/// A netlink attachment (kernels before 6.6) outlives a killed gatewayd: remove ours
/// before attaching again, found by program name.
fn remove_stale_netlink_attachment(interface: &str, direction: TcAttachType) {
    let name = program_name(direction);
    if aya::programs::tc::qdisc_detach_program(interface, direction, name).is_ok() {
        tracing::warn!(
            interface,
            program = name,
            "removed a stale node-port translation left by a gatewayd that did not exit cleanly"
        );
    }
}

fn program_name(direction: TcAttachType) -> &'static str {
    match direction {
        TcAttachType::Ingress => NODE_PORT_INGRESS_PROGRAM,
        _ => NODE_PORT_EGRESS_PROGRAM,
    }
}

/// A listening socket's fd as the sockmap API wants it (the socket stays owned by its
/// listener; the map holds its own reference to the socket).
struct SocketFd(RawFd);

impl AsRawFd for SocketFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}
