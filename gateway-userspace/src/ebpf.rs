//! Loading the kernel programs, feeding them the snapshot's kernel policy, attaching them
//! to interfaces, and reading their counters back.
//!
//! Programs attach through bpf links owned by this process, so they detach when
//! `gatewayd` exits however it exits (fail-open: a dead daemon leaves no stale policy).

use std::collections::BTreeMap;

use aya::{
    Ebpf, EbpfError,
    maps::{HashMap as BpfHashMap, MapError, PerCpuArray},
    programs::{ProgramError, Xdp, XdpMode, xdp::XdpLinkId},
};
use gateway_ebpf::{
    GlobalCounter, MAX_PORTS, PortStats,
    maps::{GATEWAY_PORTS_MAP, GLOBAL_STATS_MAP, PORT_STATS_MAP, XDP_PROGRAM},
};
use thiserror::Error;

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

/// The loaded programs and the interfaces they are attached to.
pub struct KernelPath {
    ebpf: Ebpf,
    attached: Vec<(String, XdpMode, XdpLinkId)>,
    /// Port → PORT_STATS slot, as last written.
    port_slots: BTreeMap<u16, u32>,
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
        xdp_program(&mut ebpf)?.load()?;
        Ok(KernelPath {
            ebpf,
            attached: Vec::new(),
            port_slots: BTreeMap::new(),
        })
    }

    /// Attaches to an interface in driver (native) mode where the driver has it, else in
    /// generic mode (lo, some virtual devices).
    pub fn attach(&mut self, interface: &str) -> Result<XdpMode, KernelError> {
        let program = xdp_program(&mut self.ebpf)?;
        let (mode, link) = match program.attach(interface, XdpMode::Driver) {
            Ok(link) => (XdpMode::Driver, link),
            Err(_) => match program.attach(interface, XdpMode::Skb) {
                Ok(link) => (XdpMode::Skb, link),
                Err(source) => {
                    return Err(KernelError::Attach {
                        interface: interface.to_owned(),
                        source,
                    });
                }
            },
        };
        self.attached.push((interface.to_owned(), mode, link));
        Ok(mode)
    }

    /// Interfaces and the mode each is attached in.
    pub fn attached(&self) -> impl Iterator<Item = (&str, XdpMode)> {
        self.attached.iter().map(|(i, m, _)| (i.as_str(), *m))
    }

    /// Makes the kernel count exactly these ports. Ports kept across a reload keep their
    /// slot (and counters); new ones take free slots; removed ones are deleted last, so a
    /// port that stays is never missing from the map in between.
    pub fn set_ports(&mut self, ports: &[u16]) -> Result<(), KernelError> {
        if ports.len() > MAX_PORTS as usize {
            return Err(KernelError::TooManyPorts { count: ports.len() });
        }
        let mut next = BTreeMap::new();
        let mut used: Vec<u32> = ports
            .iter()
            .filter_map(|p| self.port_slots.get(p).copied())
            .collect();
        for &port in ports {
            let slot = match self.port_slots.get(&port) {
                Some(&slot) => slot,
                None => {
                    let free = (0..MAX_PORTS)
                        .find(|s| !used.contains(s))
                        .ok_or(KernelError::TooManyPorts { count: ports.len() })?;
                    used.push(free);
                    self.reset_port_stats(free)?;
                    free
                }
            };
            next.insert(port, slot);
        }
        let mut map: BpfHashMap<_, u16, u32> = BpfHashMap::try_from(
            self.ebpf
                .map_mut(GATEWAY_PORTS_MAP)
                .ok_or(KernelError::Missing(GATEWAY_PORTS_MAP))?,
        )?;
        for (&port, &slot) in &next {
            map.insert(port, slot, 0)?;
        }
        for port in self.port_slots.keys().filter(|p| !next.contains_key(p)) {
            map.remove(port)?;
        }
        self.port_slots = next;
        Ok(())
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

    /// The loaded XDP program, for BPF_PROG_TEST_RUN in tests.
    pub fn xdp_program(&mut self) -> Result<&mut Xdp, KernelError> {
        xdp_program(&mut self.ebpf)
    }
}

fn xdp_program(ebpf: &mut Ebpf) -> Result<&mut Xdp, KernelError> {
    let program = ebpf
        .program_mut(XDP_PROGRAM)
        .ok_or(KernelError::Missing(XDP_PROGRAM))?;
    Ok(program.try_into()?)
}
