//! What the kernel filter (`xdp`) and the node-port translation (`nodeport`) share: how a
//! hook's frame is read and written, the per-CPU scratch copies the parsers work on, the
//! node's gateway addresses and the global counters.

use aya_ebpf::{
    EbpfContext,
    bindings::BPF_F_RECOMPUTE_CSUM,
    helpers::generated::{
        bpf_skb_change_tail, bpf_skb_load_bytes, bpf_skb_store_bytes, bpf_xdp_adjust_tail,
        bpf_xdp_get_buff_len, bpf_xdp_load_bytes, bpf_xdp_store_bytes,
    },
    macros::map,
    maps::{HashMap, PerCpuArray},
    programs::{TcContext, XdpContext},
};
use gateway_ebpf::{
    AddrKey, Bytes, GlobalCounter, Headers, maps::MAX_GATEWAY_ADDRS, packet::MAX_HEADER_BYTES,
};

/// Header copy: a power of two ≥ MAX_HEADER_BYTES, so indices can be masked into range.
pub(crate) const HEADER_SCRATCH: usize = 128;

#[repr(C)]
pub struct Scratch<const N: usize> {
    pub(crate) buf: [u8; N],
    len: usize,
    /// Where the parser found the name; written and re-read through memory so the
    /// verifier stops tracking how it was computed (see `launder`).
    name_offset: usize,
    name_len: usize,
}

#[map(name = "GATEWAY_ADDRS")]
pub(crate) static GATEWAY_ADDRS: HashMap<AddrKey, u8> =
    HashMap::with_max_entries(MAX_GATEWAY_ADDRS, 0);

#[map(name = "GLOBAL_STATS")]
static GLOBAL_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(GlobalCounter::COUNT, 0);

/// The BPF stack is 512 bytes; copies live in per-CPU map values instead.
#[map(name = "HDR_SCRATCH")]
pub(crate) static HDR_SCRATCH: PerCpuArray<Scratch<HEADER_SCRATCH>> =
    PerCpuArray::with_max_entries(1, 0);

/// Parsed headers pass through here on their way downstream; see `launder_headers`.
#[map(name = "PARSED")]
static PARSED: PerCpuArray<Headers> = PerCpuArray::with_max_entries(1, 0);

/// What the filter needs from a hook: the frame's length, and bytes copied out of it and
/// back in. Both copy through helpers, so the filter never walks packet pointers.
pub(crate) trait Frame: EbpfContext {
    fn frame_len(&self) -> usize;
    /// Copies `n` bytes at `from` to `dst`; `n` must be provably 1..=the buffer's size.
    fn load(&self, from: usize, dst: *mut u8, n: u32) -> bool;
    /// Cuts the frame to `new_len` bytes (`trim` fewer than now).
    fn shrink(&self, new_len: usize, trim: usize) -> bool;
    /// Writes `n` bytes from `src` at offset 0.
    fn store_head(&self, src: *const u8, n: u32) -> bool;
}

impl Frame for XdpContext {
    fn frame_len(&self) -> usize {
        // SAFETY: self.ctx is this run's live xdp_md.
        unsafe { bpf_xdp_get_buff_len(self.ctx) as usize }
    }

    fn load(&self, from: usize, dst: *mut u8, n: u32) -> bool {
        // SAFETY: the caller proves dst holds n bytes and n fits the frame after `from`.
        unsafe { bpf_xdp_load_bytes(self.ctx, from as u32, dst.cast(), n) == 0 }
    }

    fn shrink(&self, _new_len: usize, trim: usize) -> bool {
        // SAFETY: shrinking this run's own frame; the headers stay in place.
        unsafe { bpf_xdp_adjust_tail(self.ctx, -(trim as i32)) == 0 }
    }

    fn store_head(&self, src: *const u8, n: u32) -> bool {
        // SAFETY: writes n bytes the frame still has.
        unsafe { bpf_xdp_store_bytes(self.ctx, 0, src.cast_mut().cast(), n) == 0 }
    }
}

impl Frame for TcContext {
    fn frame_len(&self) -> usize {
        self.len() as usize
    }

    fn load(&self, from: usize, dst: *mut u8, n: u32) -> bool {
        // SAFETY: the caller proves dst holds n bytes and n fits the skb after `from`.
        unsafe { bpf_skb_load_bytes(self.as_ptr().cast_const(), from as u32, dst.cast(), n) == 0 }
    }

    fn shrink(&self, new_len: usize, _trim: usize) -> bool {
        // SAFETY: trimming this run's own skb; the helper keeps a complete checksum right.
        unsafe { bpf_skb_change_tail(self.as_ptr().cast(), new_len as u32, 0) == 0 }
    }

    fn store_head(&self, src: *const u8, n: u32) -> bool {
        // SAFETY: writes n bytes the skb still has; the flag keeps a CHECKSUM_COMPLETE
        // skb's checksum in step with the new bytes.
        unsafe {
            bpf_skb_store_bytes(
                self.as_ptr().cast(),
                0,
                src.cast(),
                n,
                u64::from(BPF_F_RECOMPUTE_CSUM),
            ) == 0
        }
    }
}

/// Four bytes at `off`, big-endian (0 where the copy ends).
#[inline(always)]
pub(crate) fn word<const N: usize>(s: &Scratch<N>, off: usize) -> u32 {
    u32::from_be_bytes([
        s.at(off).unwrap_or(0),
        s.at(off + 1).unwrap_or(0),
        s.at(off + 2).unwrap_or(0),
        s.at(off + 3).unwrap_or(0),
    ])
}

#[inline(always)]
pub(crate) fn scratch<const N: usize>(
    map: &PerCpuArray<Scratch<N>>,
) -> Option<&'static mut Scratch<N>> {
    // SAFETY: a per-CPU map value, valid for the whole run and touched by no other CPU;
    // each scratch map is borrowed once per run.
    map.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}

/// Copies `min(frame_len - from, N)` bytes of the frame starting at `from`.
#[inline(always)]
pub(crate) fn copy<F: Frame, const N: usize>(
    ctx: &F,
    from: usize,
    frame_len: usize,
    into: &mut Scratch<N>,
) -> bool {
    if from >= frame_len {
        return false;
    }
    let available = frame_len - from;
    let n = bounded::<N>(if available < N { available } else { N });
    // buf holds N bytes, n ≤ N, and n ≤ the bytes the frame has after `from`.
    let loaded = ctx.load(from, into.buf.as_mut_ptr(), n as u32);
    into.len = n;
    loaded
}

/// `n` (1..=N) in a form the verifier can prove is 1..=N: helper sizes must be provably
/// non-zero and in bounds, and LLVM folds a plain mask away.
#[inline(always)]
pub(crate) fn bounded<const N: usize>(n: usize) -> usize {
    (opaque(n.wrapping_sub(1)) & (N - 1)) + 1
}

/// Passes the parsed headers through map memory. The parser leaves the verifier with
/// exact offsets for every frame shape (VLAN tags × IP version × header lengths), and it
/// would verify everything downstream once per shape; values read back from a map are
/// just numbers to it, so everything downstream is verified once.
#[inline(always)]
pub(crate) fn launder_headers(parsed: Headers) -> Option<Headers> {
    let slot = PARSED.get_ptr_mut(0)?;
    // SAFETY: a per-CPU map value valid for this run; written, then read back.
    unsafe {
        core::ptr::write_volatile(slot, parsed);
        Some(core::ptr::read_volatile(slot))
    }
}

/// Passes `(offset, len)` through map memory: the verifier does not track values stored
/// in maps, so every exit of the parser's extension loop converges here instead of
/// being re-verified once per possible name length.
#[inline(always)]
pub(crate) fn launder<const N: usize>(
    s: &mut Scratch<N>,
    offset: usize,
    len: usize,
) -> (usize, usize) {
    // SAFETY: plain reads and writes of fields of a valid map value.
    unsafe {
        core::ptr::write_volatile(&mut s.name_offset, offset);
        core::ptr::write_volatile(&mut s.name_len, len);
        (
            core::ptr::read_volatile(&s.name_offset) & (N - 1),
            core::ptr::read_volatile(&s.name_len) & 0xff,
        )
    }
}

#[inline(always)]
pub(crate) fn count(counter: GlobalCounter) {
    if let Some(value) = GLOBAL_STATS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU value, see `inspect`.
        unsafe { *value += 1 }
    }
}

/// The value through a volatile read, so LLVM cannot reason about it and drop masks.
#[inline(always)]
pub(crate) fn opaque(i: usize) -> usize {
    // SAFETY: reading a local through a valid reference.
    unsafe { core::ptr::read_volatile(&i) }
}

impl<const N: usize> Bytes for Scratch<N> {
    #[inline(always)]
    fn len(&self) -> usize {
        self.len
    }

    #[inline(always)]
    fn at(&self, off: usize) -> Option<u8> {
        if off >= self.len {
            return None;
        }
        Some(self.buf[opaque(off) & (N - 1)])
    }
}

const _: () = assert!(HEADER_SCRATCH >= MAX_HEADER_BYTES && HEADER_SCRATCH.is_power_of_two());
