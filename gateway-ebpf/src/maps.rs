//! Map names and value layouts written by `gatewayd` and read by the programs (and back).

/// Map from destination port (host byte order) to its slot in [`PORT_STATS_MAP`].
pub const GATEWAY_PORTS_MAP: &str = "GATEWAY_PORTS";
/// Per-CPU array of [`PortStats`], one slot per gateway port.
pub const PORT_STATS_MAP: &str = "PORT_STATS";
/// Per-CPU array of `u64`, indexed by [`GlobalCounter`].
pub const GLOBAL_STATS_MAP: &str = "GLOBAL_STATS";
/// Name of the XDP program in the object file.
pub const XDP_PROGRAM: &str = "gateway_xdp";

/// How many distinct gateway ports the kernel tracks. Istio gateways expose a handful;
/// 256 leaves room for node ports beside them.
pub const MAX_PORTS: u32 = 256;

/// Packets and bytes seen on one gateway port (summed over CPUs by userspace).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortStats {
    pub packets: u64,
    pub bytes: u64,
}

#[cfg(feature = "user")]
// SAFETY: plain-old-data, `repr(C)`, no padding (two u64).
unsafe impl aya::Pod for PortStats {}

/// Indices into [`GLOBAL_STATS_MAP`]: what the program saw, by outcome of header parsing.
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
    /// IPv4 fragments other than the first carry no TCP header.
    Fragment = 5,
    /// Shorter than its headers claim, or lengths that do not add up.
    Malformed = 6,
}

impl GlobalCounter {
    pub const ALL: [GlobalCounter; 7] = [
        GlobalCounter::Seen,
        GlobalCounter::GatewayPort,
        GlobalCounter::OtherPort,
        GlobalCounter::NotIp,
        GlobalCounter::NotTcp,
        GlobalCounter::Fragment,
        GlobalCounter::Malformed,
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
        }
    }
}
