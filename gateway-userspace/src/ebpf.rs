//! Loading the kernel programs, feeding them the snapshot's kernel policy, attaching them
//! to interfaces, and reading their counters back.
//!
//! Programs attach through bpf links owned by this process, so they detach when
//! `gatewayd` exits however it exits (fail-open: a dead daemon leaves no stale policy).
//! Older kernels have no links for some hooks (TC before 6.6, XDP before 5.9) and aya
//! attaches through netlink instead, which outlives a killed process: stale TC
//! attachments are removed at start (`remove_stale_tc_filters`).

use std::{collections::BTreeMap, net::IpAddr, os::fd::AsRawFd};

use aya::{
    Ebpf, EbpfError, EbpfLoader,
    maps::{Array, HashMap as BpfHashMap, Map, MapError, PerCpuArray},
    programs::{
        ProgramError, SchedClassifier, TcAttachType, Xdp, XdpMode,
        sk_lookup::SkLookupLinkId,
        tc::{NlOptions, TcAttachOptions},
    },
};
use gateway_ebpf::{
    AddrKey, GlobalCounter, MAX_PORTS, PolicyKey, PortMode, PortPolicy, PortStats, SniKey,
    host_hash,
    maps::{
        ACCEPT_ANY_SNI, FAIL_OPEN_GENERATION, GATEWAY_ADDRS_MAP, GLOBAL_STATS_MAP, IP_RULES_MAP,
        MAX_GATEWAY_ADDRS, MAX_IP_RULES_PER_GENERATION, MAX_SNI_NAMES_PER_GENERATION,
        NODE_PORT_FLOWS_MAP, POLICY_GENERATION_MAP, PORT_POLICY_MAP, PORT_STATS_MAP, SNI_ALLOW_MAP,
        TC_PROGRAM, XDP_PROGRAM,
    },
    sni::{MAX_WILDCARD_LABELS, wildcard_labels},
};
use thiserror::Error;

use crate::snapshot::{KernelPolicy, PortSourceRules, TlsPortPolicy};

pub mod addresses;
mod ip_rules;
mod node_ports;
mod stale_xdp;

pub use node_ports::NodePortRoute;

/// The object aya-build left in OUT_DIR (see build.rs).
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/gateway"));

#[derive(Debug, Error)]
pub enum KernelError {
    #[error("loading the eBPF object: {0}")]
    Load(#[from] EbpfError),
    #[error("the eBPF object has no {0}")]
    Missing(&'static str),
    #[error("program {XDP_PROGRAM}: {0}")]
    Program(#[from] ProgramError),
    #[error("map: {0}")]
    Map(#[from] MapError),
    #[error("attaching to {interface}: {source}")]
    Attach {
        interface: String,
        source: ProgramError,
    },
    #[error("reading the programs' log buffer: {0}")]
    Log(aya_log::Error),
    #[error("opening this network namespace for sk_lookup: {0}")]
    Netns(std::io::Error),
    #[error("counting possible CPUs: {0}")]
    Cpus(std::io::Error),
    #[error("{count} gateway ports exceed the kernel's {MAX_PORTS}")]
    TooManyPorts { count: usize },
    #[error("{count} source-address rules exceed the kernel's {MAX_IP_RULES_PER_GENERATION}")]
    TooManyIpRules { count: usize },
    #[error("{count} local addresses exceed the kernel's {MAX_GATEWAY_ADDRS}")]
    TooManyAddresses { count: usize },
}

/// How `--ebpf` asked for the kernel path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum EbpfMode {
    /// Attach where possible; serve from userspace alone (with a warning) where not.
    Auto,
    /// Attach or refuse to start.
    On,
    /// Never load eBPF.
    Off,
}

/// Where the filter runs on an interface (`--ebpf-hook`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum KernelHook {
    /// XDP: native (driver) mode where the driver has it, generic otherwise.
    Xdp,
    /// TC ingress through a TCX link: after GRO and VLAN untagging, on every device.
    /// Kernels before 6.6 have no TCX: aya then attaches through netlink (clsact + a
    /// cls_bpf filter), which outlives the process (see `remove_stale_tc_filters`).
    Tc,
    /// TC ingress through netlink even where TCX exists: the attachment kernels before
    /// 6.6 get, for testing that path on a newer kernel.
    TcNetlink,
}

/// The loaded programs and the interfaces they are attached to.
pub struct KernelPath {
    ebpf: Ebpf,
    /// (interface, how the filter is attached). The links themselves are owned by the
    /// programs, so they detach when this is dropped or the process exits.
    attached: Vec<(String, String)>,
    /// Port → PORT_STATS slot, as last written.
    port_slots: BTreeMap<u16, u32>,
    /// The generation the programs read (0 or 1).
    generation: u32,
    /// The sk_lookup program's link, once node-port steering is in use.
    steer_link: Option<SkLookupLinkId>,
    /// Whether the node-port translation (TC ingress and egress) is attached to the
    /// interfaces in `attached`.
    translating: bool,
    /// `--node-ports`: steer our Service's node ports to the listeners.
    node_port_mode: bool,
    /// The programs' log records (aya-log), until `take_logger` hands them to a task.
    logger: Option<ProgramLogger>,
    /// The keys each generation holds, so the one being reused can be cleared.
    written: [WrittenPolicy; 2],
    /// Ports the live policy does not police, and why (see `Unpoliced`).
    unpoliced: BTreeMap<u16, Unpoliced>,
    /// Policy writes that failed (each left the affected ports unpoliced).
    policy_write_failures: u64,
    /// The addresses GATEWAY_ADDRS holds.
    addresses: Vec<AddrKey>,
}

/// Why the kernel does not police a TLS port that has names (userspace still does).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unpoliced {
    /// A wildcard deeper than the kernel matches (`gateway_ebpf::sni::MAX_WILDCARD_LABELS`).
    WildcardTooDeep,
    /// The port's names did not fit the SNI map (or the kernel refused an entry).
    SniMapFull,
    /// The policy could not be written at all: nothing is policed until the next write.
    PolicyWriteFailed,
}

impl Unpoliced {
    pub const fn name(self) -> &'static str {
        match self {
            Unpoliced::WildcardTooDeep => "wildcard_too_deep",
            Unpoliced::SniMapFull => "sni_map_full",
            Unpoliced::PolicyWriteFailed => "policy_write_failed",
        }
    }
}

#[derive(Default)]
struct WrittenPolicy {
    ports: Vec<PolicyKey>,
    names: Vec<SniKey>,
    ip_rules: Vec<ip_rules::RuleKey>,
}

impl std::fmt::Debug for KernelPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelPath")
            .field("attached", &self.attached)
            .field("ports", &self.port_slots)
            .finish()
    }
}

impl KernelPath {
    /// Loads the object and the XDP program into the kernel (verifier included), ready
    /// for node-port mode; attaches nothing yet.
    pub fn load() -> Result<Self, KernelError> {
        Self::load_with(true)
    }

    /// The same, with the node-port translation's flow table sized for `node_ports`:
    /// the LRU is preallocated (LRU maps always are), so without node-port mode it is
    /// shrunk to one entry rather than pin ~13 MiB of kernel memory for nothing.
    pub fn load_with(node_ports: bool) -> Result<Self, KernelError> {
        let mut loader = EbpfLoader::new();
        if !node_ports {
            loader.map_max_entries(NODE_PORT_FLOWS_MAP, 1);
        }
        let mut ebpf = loader.load(EBPF_OBJECT)?;
        // Before any program loads: the logger takes the log ring buffer's map, and the
        // map must stay open while the programs that write to it are loaded.
        let logger = aya_log::EbpfLogger::init(&mut ebpf).map_err(KernelError::Log)?;
        xdp_program(&mut ebpf)?.load()?;
        tc_program(&mut ebpf)?.load()?;
        Ok(KernelPath {
            ebpf,
            attached: Vec::new(),
            port_slots: BTreeMap::new(),
            generation: 0,
            written: Default::default(),
            steer_link: None,
            translating: false,
            node_port_mode: false,
            logger: Some(logger),
            unpoliced: BTreeMap::new(),
            policy_write_failures: 0,
            addresses: Vec::new(),
        })
    }

    /// Attaches the filter to an interface at `hook`; says how, for the log.
    pub fn attach(&mut self, interface: &str, hook: KernelHook) -> Result<String, KernelError> {
        match hook {
            KernelHook::Xdp => {
                let how = format!("XDP {:?}", self.attach_xdp(interface)?);
                self.attached.push((interface.to_owned(), how.clone()));
                Ok(how)
            }
            KernelHook::Tc | KernelHook::TcNetlink => {
                let removed = remove_stale_tc_filters(interface);
                let attach_error = |source| KernelError::Attach {
                    interface: interface.to_owned(),
                    source,
                };
                let program = tc_program(&mut self.ebpf)?;
                let netlink = hook == KernelHook::TcNetlink || !has_tcx();
                if netlink {
                    // Netlink filters need the clsact qdisc (EEXIST when it is there).
                    let _ = aya::programs::tc::qdisc_add_clsact(interface);
                }
                let how = if hook == KernelHook::TcNetlink {
                    program
                        .attach_with_options(
                            interface,
                            TcAttachType::Ingress,
                            TcAttachOptions::Netlink(NlOptions::default()),
                        )
                        .map_err(attach_error)?;
                    "TC ingress (netlink)".to_owned()
                } else {
                    program
                        .attach(interface, TcAttachType::Ingress)
                        .map_err(attach_error)?;
                    "TC ingress".to_owned()
                };
                let how = match removed {
                    0 => how,
                    n => format!(
                        "{how}, after removing {n} stale netlink attachment(s) of a previous gatewayd"
                    ),
                };
                self.attached.push((interface.to_owned(), how.clone()));
                Ok(how)
            }
        }
    }

    /// XDP in driver (native) mode where the driver has it, else in generic mode (lo,
    /// some virtual devices).
    fn attach_xdp(&mut self, interface: &str) -> Result<XdpMode, KernelError> {
        self.remove_stale_xdp(interface);
        let program = xdp_program(&mut self.ebpf)?;
        let mode = match program.attach(interface, XdpMode::Driver) {
            Ok(_) => XdpMode::Driver,
            Err(_) => match program.attach(interface, XdpMode::Skb) {
                Ok(_) => XdpMode::Skb,
                Err(source) => {
                    return Err(KernelError::Attach {
                        interface: interface.to_owned(),
                        source,
                    });
                }
            },
        };
        Ok(mode)
    }

    /// Detaches an XDP program of ours that a killed gatewayd left attached through
    /// netlink (kernels before 5.9; see `stale_xdp`). Best effort: attaching reports
    /// what is really wrong.
    fn remove_stale_xdp(&mut self, interface: &str) {
        let Ok(if_index) = if_index(interface) else {
            return;
        };
        let Ok(Some((mode, id))) = stale_xdp::attached_program(if_index) else {
            return;
        };
        let own = self
            .xdp_program()
            .ok()
            .and_then(|p| p.info().ok())
            .map(|i| i.id());
        let ours_by_name = aya::programs::loaded_programs()
            .filter_map(Result::ok)
            .any(|p| p.id() == id && p.name_as_str() == Some(XDP_PROGRAM));
        if own == Some(id) || !ours_by_name {
            return;
        }
        match stale_xdp::detach(if_index, mode) {
            Ok(()) => tracing::warn!(
                interface,
                program_id = id,
                "removed a stale XDP attachment of the kernel filter, left by a gatewayd that did not exit cleanly"
            ),
            Err(e) => {
                tracing::warn!(interface, program_id = id, error = %e, "a stale XDP attachment of the kernel filter could not be removed")
            }
        }
    }

    /// Replaces the kernel's whole policy with the snapshot's, atomically: the new
    /// generation is written beside the live one, then the generation index flips (see
    /// `gateway_ebpf::maps`). Ports kept across a reload keep their stats slot.
    ///
    /// Never leaves a stale policy rejecting names userspace now serves: a port whose
    /// names cannot all be written is marked accept-any in the new generation, and when
    /// the generation cannot be written at all, the programs switch to an empty one
    /// (nothing policed) and the error is returned. Either way `unpoliced` says which
    /// ports, for the log and the metrics.
    pub fn apply_policy(&mut self, policy: &KernelPolicy) -> Result<(), KernelError> {
        match self.write_policy(policy) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.policy_write_failures += 1;
                let index: Result<Array<_, u32>, _> =
                    map_mut(&mut self.ebpf, POLICY_GENERATION_MAP)
                        .and_then(|m| Ok(Array::try_from(m)?));
                if let Ok(mut index) = index {
                    // If even this fails the map is unusable and so is every lookup in it.
                    let _ = index.set(0, FAIL_OPEN_GENERATION, 0);
                }
                self.unpoliced = policy
                    .ports
                    .iter()
                    .chain(policy.node_ports.iter().map(|(node, _)| node))
                    .map(|&port| (port, Unpoliced::PolicyWriteFailed))
                    .collect();
                Err(e)
            }
        }
    }

    fn write_policy(&mut self, policy: &KernelPolicy) -> Result<(), KernelError> {
        let mut unpoliced = BTreeMap::new();
        let mut ports: Vec<(u16, PortPolicy, Option<&TlsPortPolicy>)> = Vec::new();
        let tls_of = |port: u16| policy.tls_ports.iter().find(|t| t.port == port);
        // A node port is policed like the port it leads to.
        let node_ports = policy
            .node_ports
            .iter()
            .map(|&(node, bind)| (node, tls_of(bind)));
        for (port, tls) in policy
            .ports
            .iter()
            .map(|&p| (p, tls_of(p)))
            .chain(node_ports)
        {
            if ports.iter().any(|(p, _, _)| *p == port) {
                continue;
            }
            let mode = match tls {
                Some(t) if t.passthrough => PortMode::TlsPassthrough,
                Some(_) => PortMode::TlsTerminate,
                None if policy.tcp_ports.contains(&bind_port_of(policy, port)) => PortMode::Tcp,
                None => PortMode::Http,
            };
            let too_deep =
                tls.is_some_and(|t| !t.accept_any && t.names.iter().any(|n| !kernel_matches(n)));
            if too_deep {
                unpoliced.insert(port, Unpoliced::WildcardTooDeep);
            }
            let sni_flags = if tls.is_some_and(|t| t.accept_any) || too_deep {
                ACCEPT_ANY_SNI
            } else {
                0
            };
            // A node port takes its bind port's source rules: the filter sees a node-port
            // SYN with the node port where it runs ahead of the translation (XDP, or TC
            // on an interface without it), with the bind port after it.
            let source_flags = source_rules_of(policy, port).map_or(0, ip_rules::port_flags);
            let flags = sni_flags | source_flags;
            ports.push((
                port,
                PortPolicy {
                    stats_slot: 0,
                    mode: mode as u32,
                    flags,
                    reserved: 0,
                },
                tls,
            ));
        }
        if ports.len() > MAX_PORTS as usize {
            return Err(KernelError::TooManyPorts { count: ports.len() });
        }
        let next_slots = self.assign_slots(ports.iter().map(|(p, _, _)| *p))?;
        let generation = 1 - self.generation;

        // Clear what the generation we are about to reuse held two reloads ago. Keys are
        // recorded as they are written, so a write that fails halfway is still cleared
        // by the next reload that reuses this generation.
        let stale = std::mem::take(&mut self.written[generation as usize]);
        let written = &mut self.written[generation as usize];
        let mut port_map: BpfHashMap<_, PolicyKey, PortPolicy> =
            BpfHashMap::try_from(map_mut(&mut self.ebpf, PORT_POLICY_MAP)?)?;
        for key in &stale.ports {
            let _ = port_map.remove(key);
        }
        for (port, value, _) in ports.iter_mut() {
            value.stats_slot = next_slots[port];
            let key = PolicyKey {
                generation,
                port: u32::from(*port),
            };
            written.ports.push(key);
            port_map.insert(key, *value, 0)?;
        }
        let mut sni_map: BpfHashMap<_, SniKey, u8> =
            BpfHashMap::try_from(map_mut(&mut self.ebpf, SNI_ALLOW_MAP)?)?;
        for key in &stale.names {
            let _ = sni_map.remove(key);
        }
        let mut names_written = 0u32;
        let mut full = Vec::new();
        for (port, value, tls) in &ports {
            if value.flags & ACCEPT_ANY_SNI != 0 {
                continue;
            }
            for name in tls.iter().flat_map(|t| t.names.iter()) {
                let key = SniKey {
                    generation,
                    port: u32::from(*port),
                    hash: host_hash(name.as_bytes()),
                };
                // One generation's share of the map, so the live one always fits beside.
                let fits = names_written < MAX_SNI_NAMES_PER_GENERATION;
                if !fits || sni_map.insert(key, 1, 0).is_err() {
                    full.push(*port);
                    break;
                }
                names_written += 1;
                written.names.push(key);
            }
        }
        // Ports whose names are not all in: accept every name there rather than reject
        // the names left out (the names already written stay, harmless).
        let mut port_map: BpfHashMap<_, PolicyKey, PortPolicy> =
            BpfHashMap::try_from(map_mut(&mut self.ebpf, PORT_POLICY_MAP)?)?;
        for port in full {
            if let Some((_, mut value, _)) = ports.iter().copied().find(|(p, _, _)| *p == port) {
                value.flags |= ACCEPT_ANY_SNI;
                port_map.insert(
                    PolicyKey {
                        generation,
                        port: u32::from(port),
                    },
                    value,
                    0,
                )?;
            }
            unpoliced.insert(port, Unpoliced::SniMapFull);
        }
        let rule_entries: Vec<_> = ports
            .iter()
            .filter_map(|(port, _, _)| Some((*port, source_rules_of(policy, *port)?)))
            .flat_map(|(port, rules)| ip_rules::entries(generation, port, rules))
            .collect();
        let written = &mut self.written[generation as usize];
        ip_rules::write(
            map_mut(&mut self.ebpf, IP_RULES_MAP)?,
            &stale.ip_rules,
            &rule_entries,
            &mut written.ip_rules,
        )?;
        let mut index: Array<_, u32> =
            Array::try_from(map_mut(&mut self.ebpf, POLICY_GENERATION_MAP)?)?;
        index.set(0, generation, 0)?;
        if unpoliced.values().any(|u| *u == Unpoliced::SniMapFull) {
            self.policy_write_failures += 1;
        }
        self.generation = generation;
        self.port_slots = next_slots;
        self.unpoliced = unpoliced;
        Ok(())
    }

    /// Says in the log which ports the policy just written leaves to userspace: an error
    /// when names did not fit, a warning for wildcards deeper than the kernel matches.
    pub fn log_unpoliced(&self) {
        for (port, why) in &self.unpoliced {
            match why {
                Unpoliced::WildcardTooDeep => tracing::warn!(
                    port,
                    max_labels = MAX_WILDCARD_LABELS,
                    "kernel filter: a wildcard on this port is deeper than the kernel matches; the port's SNI is checked in userspace only"
                ),
                Unpoliced::SniMapFull | Unpoliced::PolicyWriteFailed => tracing::error!(
                    port,
                    reason = why.name(),
                    "kernel filter: the new policy could not be written in full; the kernel no longer rejects on this port (fail open), userspace still checks SNI"
                ),
            }
        }
    }

    /// Ports the live policy leaves unpoliced (empty when the whole policy is in force).
    pub fn unpoliced_ports(&self) -> &BTreeMap<u16, Unpoliced> {
        &self.unpoliced
    }

    /// Policy writes that left ports unpoliced, since load.
    pub fn policy_write_failures(&self) -> u64 {
        self.policy_write_failures
    }

    /// Replaces the addresses the filter polices traffic to (this node's gateway
    /// addresses): only the difference is written, so packets never see a gap.
    pub fn set_gateway_addresses(&mut self, addresses: &[IpAddr]) -> Result<(), KernelError> {
        let mut wanted: Vec<AddrKey> = addresses.iter().map(|a| addr_key(*a)).collect();
        wanted.sort_by_key(|k| (k.family, k.addr));
        wanted.dedup();
        if wanted.len() > MAX_GATEWAY_ADDRS as usize {
            return Err(KernelError::TooManyAddresses {
                count: wanted.len(),
            });
        }
        let mut map: BpfHashMap<_, AddrKey, u8> =
            BpfHashMap::try_from(map_mut(&mut self.ebpf, GATEWAY_ADDRS_MAP)?)?;
        for key in wanted.iter().filter(|k| !self.addresses.contains(k)) {
            map.insert(*key, 1, 0)?;
        }
        for key in self.addresses.iter().filter(|k| !wanted.contains(k)) {
            let _ = map.remove(key);
        }
        self.addresses = wanted;
        Ok(())
    }

    /// The live generation's port policy, read back from the kernel: each port's mode.
    pub fn port_modes(&self) -> Result<BTreeMap<u16, Option<PortMode>>, KernelError> {
        let map: BpfHashMap<_, PolicyKey, PortPolicy> = BpfHashMap::try_from(
            self.ebpf
                .map(PORT_POLICY_MAP)
                .ok_or(KernelError::Missing(PORT_POLICY_MAP))?,
        )?;
        let mut modes = BTreeMap::new();
        for entry in map.iter() {
            let (key, value) = entry?;
            if key.generation == self.generation {
                modes.insert(key.port as u16, PortMode::from_u32(value.mode));
            }
        }
        Ok(modes)
    }

    /// Stable stats slots: kept ports keep theirs, new ports take free ones (zeroed).
    fn assign_slots(
        &mut self,
        ports: impl Iterator<Item = u16> + Clone,
    ) -> Result<BTreeMap<u16, u32>, KernelError> {
        let mut next = BTreeMap::new();
        let mut used: Vec<u32> = ports
            .clone()
            .filter_map(|p| self.port_slots.get(&p).copied())
            .collect();
        for port in ports {
            let slot = match self.port_slots.get(&port) {
                Some(&slot) => slot,
                None => {
                    let free = (0..MAX_PORTS).find(|s| !used.contains(s)).ok_or(
                        KernelError::TooManyPorts {
                            count: MAX_PORTS as usize + 1,
                        },
                    )?;
                    used.push(free);
                    self.reset_port_stats(free)?;
                    free
                }
            };
            next.insert(port, slot);
        }
        Ok(next)
    }

    fn reset_port_stats(&mut self, slot: u32) -> Result<(), KernelError> {
        let mut stats: PerCpuArray<_, PortStats> = PerCpuArray::try_from(
            self.ebpf
                .map_mut(PORT_STATS_MAP)
                .ok_or(KernelError::Missing(PORT_STATS_MAP))?,
        )?;
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| KernelError::Cpus(e))?;
        let zeros = aya::maps::PerCpuValues::try_from(vec![PortStats::default(); cpus])
            .map_err(KernelError::Cpus)?;
        stats.set(slot, zeros, 0)?;
        Ok(())
    }

    /// Packets and bytes per gateway port, summed over CPUs.
    pub fn port_stats(&self) -> Result<Vec<(u16, PortStats)>, KernelError> {
        let stats: PerCpuArray<_, PortStats> = PerCpuArray::try_from(
            self.ebpf
                .map(PORT_STATS_MAP)
                .ok_or(KernelError::Missing(PORT_STATS_MAP))?,
        )?;
        self.port_slots
            .iter()
            .map(|(&port, &slot)| {
                let per_cpu = stats.get(&slot, 0)?;
                let total = per_cpu
                    .iter()
                    .fold(PortStats::default(), |sum, s| PortStats {
                        packets: sum.packets + s.packets,
                        bytes: sum.bytes + s.bytes,
                        hellos_accepted: sum.hellos_accepted + s.hellos_accepted,
                        hellos_rejected: sum.hellos_rejected + s.hellos_rejected,
                        hellos_undecided: sum.hellos_undecided + s.hellos_undecided,
                        reject_retransmits: sum.reject_retransmits + s.reject_retransmits,
                        syns_denied: sum.syns_denied + s.syns_denied,
                    });
                Ok((port, total))
            })
            .collect()
    }

    /// What the program saw, by parsing outcome, summed over CPUs.
    pub fn global_stats(&self) -> Result<Vec<(GlobalCounter, u64)>, KernelError> {
        let stats: PerCpuArray<_, u64> = PerCpuArray::try_from(
            self.ebpf
                .map(GLOBAL_STATS_MAP)
                .ok_or(KernelError::Missing(GLOBAL_STATS_MAP))?,
        )?;
        GlobalCounter::ALL
            .iter()
            .map(|&counter| Ok((counter, stats.get(&(counter as u32), 0)?.iter().sum())))
            .collect()
    }

    /// The programs' log records, for `forward_program_logs` (once).
    pub fn take_logger(&mut self) -> Option<ProgramLogger> {
        self.logger.take()
    }

    /// Instructions the verifier walked to accept the XDP program (of its 1M budget):
    /// the program's complexity, watched by the kernel tests.
    pub fn verified_instructions(&mut self) -> Result<Option<u32>, KernelError> {
        Ok(self.xdp_program()?.info()?.verified_instruction_count())
    }

    /// The loaded TC program, for BPF_PROG_TEST_RUN in tests.
    pub fn tc_program(&mut self) -> Result<&mut SchedClassifier, KernelError> {
        tc_program(&mut self.ebpf)
    }

    /// The loaded XDP program, for BPF_PROG_TEST_RUN in tests.
    pub fn xdp_program(&mut self) -> Result<&mut Xdp, KernelError> {
        xdp_program(&mut self.ebpf)
    }
}

/// What `gatewayd validate` says about a config the kernel filter cannot hold in full:
/// each case fails open at run time (the port is checked in userspace only).
pub fn policy_warnings(policy: &KernelPolicy) -> Vec<String> {
    let mut warnings = Vec::new();
    let mut ports: Vec<u16> = policy.ports.clone();
    for (node, _) in &policy.node_ports {
        if !ports.contains(node) {
            ports.push(*node);
        }
    }
    if ports.len() > MAX_PORTS as usize {
        warnings.push(format!(
            "kernel filter: {} gateway ports (node ports included) exceed the {MAX_PORTS} the kernel holds; the kernel path will not load",
            ports.len()
        ));
    }
    let mut names = 0usize;
    for tls in &policy.tls_ports {
        if tls.accept_any {
            continue;
        }
        if let Some(deep) = tls.names.iter().find(|n| !kernel_matches(n)) {
            warnings.push(format!(
                "kernel filter: port {}: `{deep}` has more than {MAX_WILDCARD_LABELS} labels after `*.`; the kernel does not check SNI on this port (userspace does)",
                tls.port
            ));
            continue;
        }
        let copies = 1 + policy
            .node_ports
            .iter()
            .filter(|(_, bind)| *bind == tls.port)
            .count();
        names += tls.names.len() * copies;
    }
    let source_rules: usize = ports
        .iter()
        .filter_map(|&port| source_rules_of(policy, port))
        .map(|r| r.rules.deny.len() + r.rules.allow_only.as_ref().map_or(0, Vec::len))
        .sum();
    if source_rules > MAX_IP_RULES_PER_GENERATION as usize {
        warnings.push(format!(
            "kernel filter: {source_rules} AuthorizationPolicy address blocks on kernel-enforced ports exceed the {MAX_IP_RULES_PER_GENERATION} the kernel holds; the kernel filter will police nothing (userspace still enforces every policy)"
        ));
    }
    if names > MAX_SNI_NAMES_PER_GENERATION as usize {
        warnings.push(format!(
            "kernel filter: {names} server names (per TLS port, node ports included) exceed the {MAX_SNI_NAMES_PER_GENERATION} the kernel holds; ports whose names do not fit are not checked in the kernel (userspace still checks them)"
        ));
    }
    warnings
}

/// Removes our TC filters that a previous gatewayd left on the interface's ingress.
///
/// A netlink attachment (all TC attachments before Linux 6.6) belongs to the interface,
/// not to the process: after a SIGKILL (or OOM kill) the program stays attached with the
/// dead daemon's last policy, rejecting names a new config may serve. Filters are found
/// by our program's name, so other programs on the interface are left alone; one
/// gatewayd per interface is the deployment this assumes. Returns how many were removed
/// (0 or 1 per stale program; aya removes every filter of that name at once).
pub fn remove_stale_tc_filters(interface: &str) -> usize {
    match aya::programs::tc::qdisc_detach_program(interface, TcAttachType::Ingress, TC_PROGRAM) {
        Ok(()) => {
            tracing::warn!(
                interface,
                "removed a stale TC attachment of the kernel filter, left by a gatewayd that did not exit cleanly"
            );
            1
        }
        // NotFound: nothing stale. Other errors (no clsact qdisc, no such device) mean
        // there is nothing of ours to remove either; attaching reports real problems.
        Err(e) => {
            tracing::debug!(interface, error = %e, "no stale TC attachment removed");
            0
        }
    }
}

fn if_index(interface: &str) -> std::io::Result<u32> {
    let name = std::ffi::CString::new(interface).map_err(std::io::Error::other)?;
    // SAFETY: a NUL-terminated name; if_nametoindex only reads it.
    match unsafe { libc::if_nametoindex(name.as_ptr()) } {
        0 => Err(std::io::Error::last_os_error()),
        index => Ok(index),
    }
}

/// TCX links arrived in Linux 6.6; aya attaches TC through netlink before that.
fn has_tcx() -> bool {
    use aya::util::KernelVersion;
    KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0))
}

/// Whether the kernel can match this configured name exactly as userspace does.
pub fn kernel_matches(name: &str) -> bool {
    wildcard_labels(name.as_bytes()).is_none_or(|labels| labels <= MAX_WILDCARD_LABELS)
}

fn addr_key(address: IpAddr) -> AddrKey {
    match address {
        IpAddr::V4(v4) => AddrKey::v4(v4.octets()),
        // A v4-mapped address arrives on the wire as IPv4.
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => AddrKey::v4(v4.octets()),
            None => AddrKey::v6(v6.octets()),
        },
    }
}

/// The source rules the kernel enforces on a port: a node port's are its bind port's.
fn source_rules_of(policy: &KernelPolicy, port: u16) -> Option<&PortSourceRules> {
    let bind = bind_port_of(policy, port);
    policy.source_rules.iter().find(|r| r.port == bind)
}

/// The bind port a port leads to: itself, or the listener port behind a node port.
fn bind_port_of(policy: &KernelPolicy, port: u16) -> u16 {
    policy
        .node_ports
        .iter()
        .find(|(node, _)| *node == port)
        .map_or(port, |(_, bind)| *bind)
}

fn tc_program(ebpf: &mut Ebpf) -> Result<&mut SchedClassifier, KernelError> {
    let program = ebpf
        .program_mut(TC_PROGRAM)
        .ok_or(KernelError::Missing(TC_PROGRAM))?;
    Ok(program.try_into()?)
}

fn map_mut<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut Map, KernelError> {
    ebpf.map_mut(name).ok_or(KernelError::Missing(name))
}

fn xdp_program(ebpf: &mut Ebpf) -> Result<&mut Xdp, KernelError> {
    let program = ebpf
        .program_mut(XDP_PROGRAM)
        .ok_or(KernelError::Missing(XDP_PROGRAM))?;
    Ok(program.try_into()?)
}

/// How long a TLS listener holds a connection in the kernel waiting for its first bytes.
/// The kernel rejects a bad ClientHello before the daemon ever accepts the connection,
/// and idle connects never reach accept() at all.
pub const DEFER_ACCEPT_SECS: libc::c_int = 10;

/// Sets TCP_DEFER_ACCEPT on a listening socket whose clients speak first (TLS).
pub fn defer_accept(listener: &impl AsRawFd) -> std::io::Result<()> {
    let secs = DEFER_ACCEPT_SECS;
    // SAFETY: a valid socket fd and a c_int option value of the right size.
    let rc = unsafe {
        libc::setsockopt(
            listener.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            (&secs as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The kernel programs' aya-log records, read from their ring buffer.
pub type ProgramLogger = aya_log::EbpfLogger<&'static dyn log::Log>;

/// Forwards the kernel programs' rare log records (aya-log) to the daemon's log for as long
/// as the process runs. Keeping the logger alive also keeps the log map open.
pub async fn forward_program_logs(logger: ProgramLogger) {
    // SAFETY: the fd is the logger's ring buffer map, owned by the logger, which the
    // AsyncFd owns for its whole life; it stays open and the same until both are dropped.
    let registered = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE)
    };
    let mut readable = match registered {
        Ok(fd) => fd,
        Err(e) => {
            tracing::warn!(error = %e, "kernel program logs are not forwarded");
            return;
        }
    };
    loop {
        let Ok(mut guard) = readable.readable_mut().await else {
            return;
        };
        guard.get_inner_mut().flush();
        guard.clear_ready();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls_port(port: u16, names: Vec<String>) -> TlsPortPolicy {
        TlsPortPolicy {
            port,
            accept_any: false,
            names,
            passthrough: false,
        }
    }

    #[test]
    fn validate_warns_when_the_kernel_cannot_hold_a_config() {
        let fits = KernelPolicy {
            ports: vec![443],
            tls_ports: vec![tls_port(443, vec!["*.a.b.c.d.e.f.g.example".into()])],
            ..KernelPolicy::default()
        };
        assert_eq!(policy_warnings(&fits), Vec::<String>::new());

        let deep = KernelPolicy {
            tls_ports: vec![tls_port(443, vec!["*.a.b.c.d.e.f.g.h.example".into()])],
            ..fits.clone()
        };
        let warnings = policy_warnings(&deep);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("port 443"), "{warnings:?}");

        // Half the names on a port that also has a node port: counted twice, too many.
        let half = (MAX_SNI_NAMES_PER_GENERATION / 2 + 1) as usize;
        let names = (0..half).map(|i| format!("h{i}.example.com")).collect();
        let big = KernelPolicy {
            ports: vec![443],
            tls_ports: vec![tls_port(443, names)],
            node_ports: vec![(30443, 443)],
            ..KernelPolicy::default()
        };
        let warnings = policy_warnings(&big);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("100000"), "{warnings:?}");
    }
}
