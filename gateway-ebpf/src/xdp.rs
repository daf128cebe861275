//! XDP program: parse headers, count packets per gateway port, pass everything.
//!
//! Headers are copied into a per-CPU scratch buffer first and parsed there by the shared
//! `gateway_ebpf::packet` parser. Parsing the copy rather than the packet keeps the
//! verifier's job simple (map-value bounds instead of packet-pointer ranges) and makes
//! the kernel run exactly the code the host unit tests run.

use aya_ebpf::{
    bindings::xdp_action,
    helpers::generated::{bpf_xdp_get_buff_len, bpf_xdp_load_bytes},
    macros::{map, xdp},
    maps::{HashMap, PerCpuArray},
    programs::XdpContext,
};
use gateway_ebpf::{
    Bytes, GlobalCounter, HeaderError, MAX_PORTS, PortStats, packet::MAX_HEADER_BYTES,
    parse_headers,
};

/// Power of two ≥ MAX_HEADER_BYTES, so that indices can be masked into range.
const SCRATCH_LEN: usize = 128;
const _: () = assert!(SCRATCH_LEN >= MAX_HEADER_BYTES && SCRATCH_LEN.is_power_of_two());

#[repr(C)]
pub struct Scratch {
    buf: [u8; SCRATCH_LEN],
    len: usize,
}

/// Destination port (host order) → slot in PORT_STATS. Written by gatewayd.
#[map(name = "GATEWAY_PORTS")]
static GATEWAY_PORTS: HashMap<u16, u32> = HashMap::with_max_entries(MAX_PORTS, 0);

#[map(name = "PORT_STATS")]
static PORT_STATS: PerCpuArray<PortStats> = PerCpuArray::with_max_entries(MAX_PORTS, 0);

#[map(name = "GLOBAL_STATS")]
static GLOBAL_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(GlobalCounter::COUNT, 0);

/// The BPF stack is 512 bytes; the header copy lives in a per-CPU map value instead.
#[map(name = "SCRATCH")]
static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

#[xdp]
pub fn gateway_xdp(ctx: XdpContext) -> u32 {
    count(GlobalCounter::Seen);
    observe(&ctx);
    xdp_action::XDP_PASS
}

#[inline(always)]
fn observe(ctx: &XdpContext) {
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: a per-CPU map value, valid for the duration of this program run and not
    // shared with any other CPU; XDP programs are not preempted on their CPU.
    let scratch = unsafe { &mut *scratch };
    // SAFETY: ctx.ctx is the live xdp_md of this run.
    let frame_len = unsafe { bpf_xdp_get_buff_len(ctx.ctx) } as usize;
    if frame_len == 0 {
        count(GlobalCounter::Malformed);
        return;
    }
    let copy_len = if frame_len < SCRATCH_LEN {
        frame_len
    } else {
        SCRATCH_LEN
    };
    // The helper's size must be provably in 1..=SCRATCH_LEN; a mask the compiler cannot
    // see through keeps LLVM from folding the check away.
    let copy_len = opaque_mask(copy_len - 1) + 1;
    // SAFETY: buf has SCRATCH_LEN bytes and copy_len ≤ SCRATCH_LEN ≤ frame length.
    let loaded =
        unsafe { bpf_xdp_load_bytes(ctx.ctx, 0, scratch.buf.as_mut_ptr().cast(), copy_len as u32) };
    if loaded != 0 {
        count(GlobalCounter::Malformed);
        return;
    }
    scratch.len = copy_len;

    match parse_headers(&*scratch) {
        Ok(headers) => {
            // SAFETY: read-only lookup of a u16 key in a map this program owns.
            match unsafe { GATEWAY_PORTS.get(&headers.dst_port) } {
                Some(&slot) => {
                    count(GlobalCounter::GatewayPort);
                    if let Some(stats) = PORT_STATS.get_ptr_mut(slot) {
                        // SAFETY: per-CPU value, see above.
                        let stats = unsafe { &mut *stats };
                        stats.packets += 1;
                        stats.bytes += frame_len as u64;
                    }
                }
                None => count(GlobalCounter::OtherPort),
            }
        }
        Err(HeaderError::NotIp) => count(GlobalCounter::NotIp),
        Err(HeaderError::NotTcp) => count(GlobalCounter::NotTcp),
        Err(HeaderError::Fragment) => count(GlobalCounter::Fragment),
        Err(HeaderError::Malformed) => count(GlobalCounter::Malformed),
    }
}

#[inline(always)]
fn count(counter: GlobalCounter) {
    if let Some(value) = GLOBAL_STATS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU value, see `observe`.
        unsafe { *value += 1 }
    }
}

/// `i & (SCRATCH_LEN - 1)` through a volatile read, so the verifier sees the mask.
#[inline(always)]
fn opaque_mask(i: usize) -> usize {
    // SAFETY: reading a local through a valid reference.
    unsafe { core::ptr::read_volatile(&i) & (SCRATCH_LEN - 1) }
}

impl Bytes for Scratch {
    #[inline(always)]
    fn len(&self) -> usize {
        self.len
    }

    #[inline(always)]
    fn at(&self, off: usize) -> Option<u8> {
        if off >= self.len {
            return None;
        }
        Some(self.buf[opaque_mask(off)])
    }
}
