//! Map names and value layouts written by `gatewayd` and read by the programs (and back).
//!
//! Policy is versioned: every policy key carries a generation, and the programs read the
//! active generation from [`POLICY_GENERATION_MAP`] first. gatewayd writes a whole new
//! generation beside the live one and then flips the index, so a reload never shows the
//! kernel half a policy. The previous generation stays intact until the next reload,
//! long after any program run that read the old index has finished.

/// Port policy: [`PolicyKey`] → [`PortPolicy`], for every gateway (and node) port.
pub const PORT_POLICY_MAP: &str = "PORT_POLICY";
/// Accepted server names: [`SniKey`] → 1, for TLS ports that do not accept every name.
pub const SNI_ALLOW_MAP: &str = "SNI_ALLOW";
/// `Array<u32>` of one element: the generation the programs read.
pub const POLICY_GENERATION_MAP: &str = "POLICY_GEN";
/// Per-CPU array of [`PortStats`], one slot per gateway port.
pub const PORT_STATS_MAP: &str = "PORT_STATS";
/// Per-CPU array of `u64`, indexed by [`GlobalCounter`].
pub const GLOBAL_STATS_MAP: &str = "GLOBAL_STATS";
/// This node's gateway addresses: [`AddrKey`] → 1. The filter polices only traffic
/// addressed to one of them (an empty map polices nothing: fail open).
pub const GATEWAY_ADDRS_MAP: &str = "GATEWAY_ADDRS";
/// Source-address rules (LPM trie): [`IpRuleKey`] → [`IP_RULE_DENY`] or [`IP_RULE_PASS`],
/// for ports whose AuthorizationPolicies decide a connection from its source address
/// alone; read for SYNs on ports whose policy has [`SOURCE_RULES`].
pub const IP_RULES_MAP: &str = "IP_RULES";
/// Name of the XDP program in the object file.
pub const XDP_PROGRAM: &str = "gateway_xdp";
/// The same filter as a TC ingress classifier.
pub const TC_PROGRAM: &str = "gateway_tc";
/// Node-port steering (sk_lookup): local port (u32) → index into [`STEER_SOCKETS_MAP`] of
/// the listener's IPv4 socket; its IPv6 socket is at the next index.
pub const STEER_PORTS_MAP: &str = "STEER_PORTS";
/// Node-port steering: index → listening socket (a SockMap).
pub const STEER_SOCKETS_MAP: &str = "STEER_SOCKETS";
/// Name of the sk_lookup program in the object file.
pub const STEER_PROGRAM: &str = "gateway_steer";
/// Node-port translation: node port (u32, host order) → the listener's bind port (u32).
pub const NODE_PORT_TARGETS_MAP: &str = "NODE_PORT_TARGETS";
/// Node-port translation: [`NodePortFlow`] → [`NodePortFlowState`], an LRU of the flows
/// translated at ingress, so later segments follow and replies are translated back.
pub const NODE_PORT_FLOWS_MAP: &str = "NODE_PORT_FLOWS";
/// TC ingress: node port → bind port, ahead of netfilter (and so of kube-proxy's DNAT).
pub const NODE_PORT_INGRESS_PROGRAM: &str = "gateway_np_in";
/// TC egress: bind port → node port on the replies of translated flows.
pub const NODE_PORT_EGRESS_PROGRAM: &str = "gateway_np_out";

/// How many distinct gateway ports the kernel tracks. Istio gateways expose a handful;
/// 256 leaves room for node ports beside them.
pub const MAX_PORTS: u32 = 256;
/// Accepted names of one generation, summed over TLS ports (a name on two ports, or on
/// a port and its node port, counts twice). The map holds two generations.
pub const MAX_SNI_NAMES_PER_GENERATION: u32 = 100_000;
/// Entries of [`SNI_ALLOW_MAP`]: both live generations. Allocated as names are written
/// (BPF_F_NO_PREALLOC), so a small config does not pin 200 000 entries of kernel memory.
pub const MAX_SNI_NAMES: u32 = 2 * MAX_SNI_NAMES_PER_GENERATION;
/// Source-address rules of one generation, summed over ports (each address block of an
/// AuthorizationPolicy on a kernel-enforced port is one). The trie holds two generations.
pub const MAX_IP_RULES_PER_GENERATION: u32 = 16_384;
/// Entries of [`IP_RULES_MAP`] (allocated as written, as LPM tries always are).
pub const MAX_IP_RULES: u32 = 2 * MAX_IP_RULES_PER_GENERATION;
/// Local addresses the filter knows (every address of every interface of the node).
pub const MAX_GATEWAY_ADDRS: u32 = 4096;
/// The generation the programs read when gatewayd could not write a whole policy: no
/// key ever carries it, so nothing is policed (fail open) until the next good write.
pub const FAIL_OPEN_GENERATION: u32 = 2;
/// Listening sockets node-port mode can steer to: an IPv4 and an IPv6 one per node port.
pub const MAX_STEER_SOCKETS: u32 = 128;
/// Node-port connections the translation remembers (LRU, about 100 bytes each with the
/// kernel's overhead: ~13 MiB). A flow evicted while alive loses its translation: its
/// next segments reach the node port untranslated and are reset, so size for the
/// node's concurrent node-port connections.
pub const MAX_NODE_PORT_FLOWS: u32 = 131_072;

/// What a gateway port carries, as far as the kernel cares.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortMode {
    /// Plain HTTP (or HTTP2/GRPC): counted only.
    Http = 0,
    /// TLS terminated by gatewayd: ClientHellos are checked.
    TlsTerminate = 1,
    /// TLS passed through by SNI: ClientHellos are checked.
    TlsPassthrough = 2,
    /// Opaque TCP: counted only.
    Tcp = 3,
}

impl PortMode {
    pub const fn from_u32(value: u32) -> Option<Self> {
        match value {
            0 => Some(PortMode::Http),
            1 => Some(PortMode::TlsTerminate),
            2 => Some(PortMode::TlsPassthrough),
            3 => Some(PortMode::Tcp),
            _ => None,
        }
    }

    pub const fn checks_sni(self) -> bool {
        matches!(self, PortMode::TlsTerminate | PortMode::TlsPassthrough)
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PolicyKey {
    pub generation: u32,
    /// Destination port, host byte order (u32 so the key has no padding).
    pub port: u32,
}

/// `PortPolicy::flags`: some server on the port accepts every name (`*`), so the kernel
/// never rejects there.
pub const ACCEPT_ANY_SNI: u32 = 1;

/// `PortPolicy::flags`: the port's AuthorizationPolicies decide a connection by its source
/// address alone, so SYNs are looked up in [`IP_RULES_MAP`] and denied ones dropped.
pub const SOURCE_RULES: u32 = 2;
/// `PortPolicy::flags` with [`SOURCE_RULES`]: a source no rule names is denied (ALLOW
/// policies apply and every one of them is a source-address rule).
pub const SOURCE_DEFAULT_DENY: u32 = 4;
/// [`IP_RULES_MAP`] values.
pub const IP_RULE_PASS: u8 = 0;
pub const IP_RULE_DENY: u8 = 1;
/// Bits of an [`IpRuleKey`] before the address: generation, port and family always match
/// in full, so a key's prefix length is this plus the address block's.
pub const IP_RULE_FIXED_BITS: u32 = 96;

/// The data of an [`IP_RULES_MAP`] key (behind the trie's prefix length).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct IpRuleKey {
    pub generation: u32,
    /// Destination port, host byte order.
    pub port: u32,
    /// 4 or 6: an IPv6 block never matches an IPv4 source (nor the reverse), as in Istio.
    pub family: u32,
    /// The source address in network byte order (IPv4 in the first four bytes), so the
    /// trie's bitwise prefix is the address's.
    pub addr: [u8; 16],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortPolicy {
    /// Slot in [`PORT_STATS_MAP`].
    pub stats_slot: u32,
    /// A [`PortMode`].
    pub mode: u32,
    pub flags: u32,
    pub reserved: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SniKey {
    pub generation: u32,
    pub port: u32,
    /// [`crate::host_hash`] of an accepted name (`api.example.com` or `*.example.com`).
    pub hash: u64,
}

/// A destination address as the filter reads it from the IP header: each 4-byte group
/// read big-endian, IPv4 in the first word.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AddrKey {
    pub addr: [u32; 4],
    /// 4 or 6.
    pub family: u32,
}

impl AddrKey {
    pub const fn v4(octets: [u8; 4]) -> Self {
        AddrKey {
            addr: [u32::from_be_bytes(octets), 0, 0, 0],
            family: 4,
        }
    }

    pub const fn v6(o: [u8; 16]) -> Self {
        AddrKey {
            addr: [
                u32::from_be_bytes([o[0], o[1], o[2], o[3]]),
                u32::from_be_bytes([o[4], o[5], o[6], o[7]]),
                u32::from_be_bytes([o[8], o[9], o[10], o[11]]),
                u32::from_be_bytes([o[12], o[13], o[14], o[15]]),
            ],
            family: 6,
        }
    }
}

/// A node-port connection as the stack sees it after the ingress translation: the
/// client's address and port, and the node's local address with the listener's bind
/// port. Addresses as in [`AddrKey`] (each 4-byte group read big-endian).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NodePortFlow {
    pub client: [u32; 4],
    pub local: [u32; 4],
    /// Host byte order.
    pub client_port: u16,
    /// The bind port (host byte order).
    pub local_port: u16,
    /// 4 or 6.
    pub family: u32,
}

/// What the translation remembers of a flow: the node port the client dialled.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodePortFlowState {
    /// Host byte order (u32 so the value has no padding).
    pub node_port: u32,
}

/// What the programs saw on one gateway port (summed over CPUs by userspace).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortStats {
    pub packets: u64,
    pub bytes: u64,
    /// ClientHellos whose name the port accepts.
    pub hellos_accepted: u64,
    /// ClientHellos turned into a reset in the kernel.
    pub hellos_rejected: u64,
    /// ClientHellos (or first data) passed undecided: split, no SNI, malformed, not TLS.
    pub hellos_undecided: u64,
    /// Rejectable hellos of flows without a socket (the client's retransmission after
    /// a kernel reset, or a spoofed hello), passed so the stack resets the client.
    pub reject_retransmits: u64,
    /// SYNs dropped because the port's AuthorizationPolicies deny their source.
    pub syns_denied: u64,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY (all): plain-old-data, `repr(C)`, every bit pattern valid, no padding.
    unsafe impl aya::Pod for super::PortStats {}
    unsafe impl aya::Pod for super::PolicyKey {}
    unsafe impl aya::Pod for super::PortPolicy {}
    unsafe impl aya::Pod for super::SniKey {}
    unsafe impl aya::Pod for super::AddrKey {}
    unsafe impl aya::Pod for super::IpRuleKey {}
    unsafe impl aya::Pod for super::NodePortFlow {}
    unsafe impl aya::Pod for super::NodePortFlowState {}
}

/// Indices into [`GLOBAL_STATS_MAP`]: what the program saw, by outcome.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GlobalCounter {
    /// Every packet the program ran on.
    Seen = 0,
    /// TCP to a gateway port (also counted per port).
    GatewayPort = 1,
    /// TCP to a port that is not ours.
    OtherPort = 2,
    /// Not IPv4/IPv6 (ARP, LLDP, ...).
    NotIp = 3,
    /// IP but not TCP, or IPv6 with extension headers before TCP.
    NotTcp = 4,
    /// IPv4 fragments carry no (whole) TCP header.
    Fragment = 5,
    /// Shorter than its headers claim, or lengths that do not add up.
    Malformed = 6,
    /// TLS-port payloads whose ClientHello named an accepted server.
    SniAccepted = 7,
    /// ClientHellos rejected in the kernel (rewritten into a reset).
    SniRejected = 8,
    /// Rejectable hellos of flows without a socket (retransmissions after a kernel reset,
    /// spoofed hellos), passed so the stack resets the client.
    SniRejectRetransmit = 9,
    /// Whole ClientHellos without a server_name.
    SniAbsent = 10,
    /// ClientHellos cut before the name (split segments, record fragments, >32 extensions).
    SniIncomplete = 11,
    /// ClientHellos with contradictory lengths or a name that is not a DNS name.
    SniMalformed = 12,
    /// TLS-port payloads that are not a ClientHello (later records, plain HTTP).
    NotClientHello = 13,
    /// Connections to a node port handed to a gateway listener (sk_lookup).
    NodePortSteered = 14,
    /// TCP to a gateway port number but not to one of this node's gateway addresses
    /// (a pod behind the node, say): passed untouched and not counted per port.
    OtherAddress = 15,
    /// Connections to a node port translated to the listener's port at TC ingress.
    NodePortTranslated = 16,
    /// SYNs dropped because the port's AuthorizationPolicies deny their source address.
    IpDenied = 17,
}

impl GlobalCounter {
    pub const ALL: [GlobalCounter; 18] = [
        GlobalCounter::Seen,
        GlobalCounter::GatewayPort,
        GlobalCounter::OtherPort,
        GlobalCounter::NotIp,
        GlobalCounter::NotTcp,
        GlobalCounter::Fragment,
        GlobalCounter::Malformed,
        GlobalCounter::SniAccepted,
        GlobalCounter::SniRejected,
        GlobalCounter::SniRejectRetransmit,
        GlobalCounter::SniAbsent,
        GlobalCounter::SniIncomplete,
        GlobalCounter::SniMalformed,
        GlobalCounter::NotClientHello,
        GlobalCounter::NodePortSteered,
        GlobalCounter::OtherAddress,
        GlobalCounter::NodePortTranslated,
        GlobalCounter::IpDenied,
    ];
    pub const COUNT: u32 = Self::ALL.len() as u32;

    /// Label used on the metrics endpoint.
    pub const fn name(self) -> &'static str {
        match self {
            GlobalCounter::Seen => "seen",
            GlobalCounter::GatewayPort => "gateway_port",
            GlobalCounter::OtherPort => "other_port",
            GlobalCounter::NotIp => "not_ip",
            GlobalCounter::NotTcp => "not_tcp",
            GlobalCounter::Fragment => "ip_fragment",
            GlobalCounter::Malformed => "malformed",
            GlobalCounter::SniAccepted => "sni_accepted",
            GlobalCounter::SniRejected => "sni_rejected",
            GlobalCounter::SniRejectRetransmit => "sni_reject_retransmit",
            GlobalCounter::SniAbsent => "sni_absent",
            GlobalCounter::SniIncomplete => "sni_incomplete",
            GlobalCounter::SniMalformed => "sni_malformed",
            GlobalCounter::NotClientHello => "not_client_hello",
            GlobalCounter::NodePortSteered => "node_port_steered",
            GlobalCounter::OtherAddress => "other_address",
            GlobalCounter::NodePortTranslated => "node_port_translated",
            GlobalCounter::IpDenied => "ip_denied",
        }
    }
}
