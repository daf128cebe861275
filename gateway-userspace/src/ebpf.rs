//! Loading the kernel programs, feeding them the snapshot's kernel policy, attaching them
//! to interfaces, and reading their counters back.
//!
//! Programs attach through bpf links owned by this process, so they detach when
//! `gatewayd` exits however it exits (fail-open: a dead daemon leaves no stale policy).

use std::{
    collections::BTreeMap,
    os::fd::{AsRawFd, RawFd},
};

use aya::{
    Ebpf, EbpfError,
    maps::{Array, HashMap as BpfHashMap, Map, MapError, PerCpuArray, SockMap},
    programs::{
        ProgramError, SchedClassifier, SkLookup, TcAttachType, Xdp, XdpMode,
        sk_lookup::SkLookupLinkId,
    },
};
use gateway_ebpf::{
    GlobalCounter, MAX_PORTS, PolicyKey, PortMode, PortPolicy, PortStats, SniKey, host_hash,
    maps::{
        ACCEPT_ANY_SNI, GLOBAL_STATS_MAP, POLICY_GENERATION_MAP, PORT_POLICY_MAP, PORT_STATS_MAP,
        SNI_ALLOW_MAP, STEER_PORTS_MAP, STEER_PROGRAM, STEER_SOCKETS_MAP, TC_PROGRAM, XDP_PROGRAM,
    },
};
use thiserror::Error;

use crate::snapshot::{KernelPolicy, TlsPortPolicy};

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
    #[error("attaching XDP to {interface}: {source}")]
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
    Tc,
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
    /// `--node-ports`: steer our Service's node ports to the listeners.
    node_port_mode: bool,
    /// The programs' log records (aya-log), until `take_logger` hands them to a task.
    logger: Option<ProgramLogger>,
    /// The keys each generation holds, so the one being reused can be cleared.
    written: [WrittenPolicy; 2],
}

#[derive(Debug, Default)]
struct WrittenPolicy {
    ports: Vec<PolicyKey>,
    names: Vec<SniKey>,
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
    /// Loads the object and the XDP program into the kernel (verifier included); attaches
    /// nothing yet.
    pub fn load() -> Result<Self, KernelError> {
        let mut ebpf = Ebpf::load(EBPF_OBJECT)?;
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
            node_port_mode: false,
            logger: Some(logger),
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
            KernelHook::Tc => {
                tc_program(&mut self.ebpf)?
                    .attach(interface, TcAttachType::Ingress)
                    .map_err(|source| KernelError::Attach {
                        interface: interface.to_owned(),
                        source,
                    })?;
                let how = "TC ingress".to_owned();
                self.attached.push((interface.to_owned(), how.clone()));
                Ok(how)
            }
        }
    }

    /// XDP in driver (native) mode where the driver has it, else in generic mode (lo,
    /// some virtual devices).
    fn attach_xdp(&mut self, interface: &str) -> Result<XdpMode, KernelError> {
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

    /// Replaces the kernel's whole policy with the snapshot's, atomically: the new
    /// generation is written beside the live one, then the generation index flips (see
    /// `gateway_ebpf::maps`). Ports kept across a reload keep their stats slot.
    pub fn apply_policy(&mut self, policy: &KernelPolicy) -> Result<(), KernelError> {
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
            let flags = if tls.is_some_and(|t| t.accept_any) {
                ACCEPT_ANY_SNI
            } else {
                0
            };
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
        for (port, mut value, _) in ports.iter().copied() {
            value.stats_slot = next_slots[&port];
            let key = PolicyKey {
                generation,
                port: u32::from(port),
            };
            written.ports.push(key);
            port_map.insert(key, value, 0)?;
        }
        let mut sni_map: BpfHashMap<_, SniKey, u8> =
            BpfHashMap::try_from(map_mut(&mut self.ebpf, SNI_ALLOW_MAP)?)?;
        for key in &stale.names {
            let _ = sni_map.remove(key);
        }
        for (port, _, tls) in &ports {
            for name in tls.iter().flat_map(|t| t.names.iter()) {
                let key = SniKey {
                    generation,
                    port: u32::from(*port),
                    hash: host_hash(name.as_bytes()),
                };
                written.names.push(key);
                sni_map.insert(key, 1, 0)?;
            }
        }
        let mut index: Array<_, u32> =
            Array::try_from(map_mut(&mut self.ebpf, POLICY_GENERATION_MAP)?)?;
        index.set(0, generation, 0)?;
        self.generation = generation;
        self.port_slots = next_slots;
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

    /// Turns node-port mode on (`--node-ports`); `steer_node_ports` does nothing otherwise.
    pub fn enable_node_port_mode(&mut self) {
        self.node_port_mode = true;
    }

    /// Hands connections for each node port to the listening socket of its bind port
    /// (an sk_lookup program on this network namespace, loaded on first use). Node ports
    /// whose listener is missing are dropped from the map, so they fall back to the normal
    /// lookup (and kube-proxy, where it runs).
    pub fn steer_node_ports(&mut self, routes: &[(u16, RawFd)]) -> Result<(), KernelError> {
        if !self.node_port_mode {
            return Ok(());
        }
        if self.steer_link.is_none() {
            if routes.is_empty() {
                return Ok(());
            }
            let netns = std::fs::File::open("/proc/self/ns/net").map_err(KernelError::Netns)?;
            let program: &mut SkLookup = self
                .ebpf
                .program_mut(STEER_PROGRAM)
                .ok_or(KernelError::Missing(STEER_PROGRAM))?
                .try_into()?;
            program.load()?;
            self.steer_link = Some(program.attach(netns)?);
        }
        let mut sockets: SockMap<_> =
            SockMap::try_from(map_mut(&mut self.ebpf, STEER_SOCKETS_MAP)?)?;
        for (index, (_, fd)) in routes.iter().enumerate() {
            let fd = SocketFd(*fd);
            sockets.set(index as u32, &fd, 0)?;
        }
        let mut ports: BpfHashMap<_, u32, u32> =
            BpfHashMap::try_from(map_mut(&mut self.ebpf, STEER_PORTS_MAP)?)?;
        let wanted: Vec<u32> = routes.iter().map(|(port, _)| u32::from(*port)).collect();
        let stale: Vec<u32> = ports
            .keys()
            .filter_map(Result::ok)
            .filter(|p| !wanted.contains(p))
            .collect();
        for port in stale {
            ports.remove(&port)?;
        }
        for (index, port) in wanted.iter().enumerate() {
            ports.insert(port, index as u32, 0)?;
        }
        Ok(())
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

/// A listening socket's fd as the sockmap API wants it (the socket stays owned by its
/// listener; the map holds its own reference to the socket).
struct SocketFd(RawFd);

impl AsRawFd for SocketFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
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
