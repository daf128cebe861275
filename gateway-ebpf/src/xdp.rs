//! The kernel filter, at XDP (`gateway_xdp`) or TC ingress (`gateway_tc`): count packets
//! per gateway port, and on TLS ports that do not accept
//! every name, turn a ClientHello whose complete server_name matches nothing the port
//! accepts into a TCP reset before the daemon accepts the connection or spends a
//! handshake on it; on ports whose AuthorizationPolicies decide by source address alone,
//! drop the SYNs of denied sources. Everything not positively decided passes, and is
//! counted.
//!
//! Bytes are copied into per-CPU scratch buffers and parsed there by the shared
//! `gateway_ebpf` parsers: map-value bounds are easy for the verifier, packet pointer
//! ranges are not, and the kernel then runs exactly the code the host tests run.

use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, TC_ACT_OK, TC_ACT_SHOT, bpf_sock_tuple, xdp_action},
    helpers::generated::{bpf_sk_release, bpf_skc_lookup_tcp},
    macros::{classifier, map, xdp},
    maps::{Array, HashMap, LpmTrie, PerCpuArray, lpm_trie::Key as LpmKey},
    programs::{TcContext, XdpContext},
};
use gateway_ebpf::{
    AddrKey, Bytes, GlobalCounter, HeaderError, Headers, IpRuleKey, IpVersion, MAX_PORTS,
    PolicyKey, PortMode, PortPolicy, PortStats, Sni, SniKey, find_sni,
    maps::{
        ACCEPT_ANY_SNI, IP_RULE_DENY, IP_RULE_FIXED_BITS, MAX_IP_RULES, MAX_SNI_NAMES,
        SOURCE_DEFAULT_DENY, SOURCE_RULES,
    },
    parse_headers,
    sni::MAX_WILDCARD_LABELS,
    sni_hashes,
};

use crate::shared::{
    Frame, GATEWAY_ADDRS, HDR_SCRATCH, HEADER_SCRATCH, Scratch, bounded, copy, count, launder,
    launder_headers, opaque, scratch, word,
};

/// Copy for the reset rewrite: the longest headers (2 VLAN tags, 60-byte IPv4 and TCP).
const REWRITE_SCRATCH: usize = 256;
/// ClientHello bytes examined: post-quantum hellos are ~1.8 KB; names beyond this pass.
const PAYLOAD_SCRATCH: usize = 4096;
const _: () = assert!(PAYLOAD_SCRATCH.is_power_of_two() && REWRITE_SCRATCH.is_power_of_two());

const TCP_FLAGS_RST_ACK: u8 = 0x14;
const TCP_FLAG_SYN: u8 = 0x02;
const TCP_FLAG_ACK: u8 = 0x10;

#[map(name = "PORT_POLICY")]
static PORT_POLICY: HashMap<PolicyKey, PortPolicy> = HashMap::with_max_entries(2 * MAX_PORTS, 0);

#[map(name = "SNI_ALLOW")]
static SNI_ALLOW: HashMap<SniKey, u8> = HashMap::with_max_entries(MAX_SNI_NAMES, BPF_F_NO_PREALLOC);

#[map(name = "POLICY_GEN")]
static POLICY_GEN: Array<u32> = Array::with_max_entries(1, 0);

#[map(name = "IP_RULES")]
static IP_RULES: LpmTrie<IpRuleKey, u8> = LpmTrie::with_max_entries(MAX_IP_RULES, 0);

#[map(name = "PORT_STATS")]
static PORT_STATS: PerCpuArray<PortStats> = PerCpuArray::with_max_entries(MAX_PORTS, 0);

#[map(name = "RST_SCRATCH")]
static RST_SCRATCH: PerCpuArray<Scratch<REWRITE_SCRATCH>> = PerCpuArray::with_max_entries(1, 0);
#[map(name = "HELLO_SCRATCH")]
static HELLO_SCRATCH: PerCpuArray<Scratch<PAYLOAD_SCRATCH>> = PerCpuArray::with_max_entries(1, 0);

#[xdp]
pub fn gateway_xdp(ctx: XdpContext) -> u32 {
    count(GlobalCounter::Seen);
    match inspect(&ctx) {
        Verdict::Pass => xdp_action::XDP_PASS,
        Verdict::Drop => xdp_action::XDP_DROP,
    }
}

/// The same filter at TC ingress (a TCX link), for devices and setups where it is the
/// better hook; it sees the skb after GRO and VLAN untagging.
#[classifier]
pub fn gateway_tc(ctx: TcContext) -> i32 {
    count(GlobalCounter::Seen);
    match inspect(&ctx) {
        Verdict::Pass => TC_ACT_OK,
        Verdict::Drop => TC_ACT_SHOT,
    }
}

/// What becomes of a packet: on (possibly rewritten), or dropped (a SYN from a source
/// the port's AuthorizationPolicies deny).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Pass,
    Drop,
}

/// Counts the packet; drops a SYN whose source the port's AuthorizationPolicies deny;
/// when it carries a ClientHello to reject, rewrites it into a reset. Anything not
/// dropped (possibly rewritten) goes on to the stack.
#[inline(always)]
fn inspect<F: Frame>(ctx: &F) -> Verdict {
    let frame_len = ctx.frame_len();
    let Some(headers) = scratch(&HDR_SCRATCH) else {
        return Verdict::Pass;
    };
    if !copy(ctx, 0, frame_len, headers) {
        count(GlobalCounter::Malformed);
        return Verdict::Pass;
    }
    let parsed = match parse_headers(&*headers) {
        Ok(parsed) => parsed,
        Err(e) => {
            count(match e {
                HeaderError::NotIp => GlobalCounter::NotIp,
                HeaderError::NotTcp => GlobalCounter::NotTcp,
                HeaderError::Fragment => GlobalCounter::Fragment,
                HeaderError::Malformed => GlobalCounter::Malformed,
            });
            return Verdict::Pass;
        }
    };
    let Some(parsed) = launder_headers(parsed) else {
        return Verdict::Pass;
    };
    let generation = POLICY_GEN.get(0).copied().unwrap_or(0);
    let key = PolicyKey {
        generation,
        port: u32::from(parsed.dst_port),
    };
    // SAFETY: read-only lookup; the value is copied out at once.
    let Some(policy) = (unsafe { PORT_POLICY.get(&key) }).copied() else {
        count(GlobalCounter::OtherPort);
        return Verdict::Pass;
    };
    // A gateway port number to an address that is not ours (a pod routed over this
    // interface, a webhook on 8443): not our traffic, whatever its name.
    // SAFETY: read-only lookup.
    if unsafe { GATEWAY_ADDRS.get(&destination(headers, &parsed)) }.is_none() {
        count(GlobalCounter::OtherAddress);
        return Verdict::Pass;
    }
    count(GlobalCounter::GatewayPort);
    let Some(stats) = PORT_STATS.get_ptr_mut(policy.stats_slot) else {
        return Verdict::Pass;
    };
    // SAFETY: a per-CPU value; XDP runs are not preempted on their CPU.
    let stats = unsafe { &mut *stats };
    stats.packets += 1;
    stats.bytes += frame_len as u64;

    let checks_sni = PortMode::from_u32(policy.mode).is_some_and(PortMode::checks_sni);
    if !checks_sni || policy.flags & ACCEPT_ANY_SNI != 0 || parsed.payload_len == 0 {
        // Only a SYN without ACK opens a connection: dropping it means the daemon never
        // accepts one. Other segments pass (a stray one from a denied source finds no
        // socket, and the stack resets it). Decided on this branch only, so the verifier
        // does not walk the ClientHello judgement once more per outcome of the lookup; a
        // SYN carrying data (TCP Fast Open) to a TLS port is left to userspace.
        let syn = parsed.tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK) == TCP_FLAG_SYN;
        if syn
            && policy.flags & SOURCE_RULES != 0
            && source_denied(headers, &parsed, key, policy.flags)
        {
            stats.syns_denied += 1;
            count(GlobalCounter::IpDenied);
            return Verdict::Drop;
        }
        return Verdict::Pass;
    }
    match judge_hello(ctx, &parsed, frame_len, key) {
        Judgement::Accept => {
            stats.hellos_accepted += 1;
            count(GlobalCounter::SniAccepted);
        }
        Judgement::Undecided(why) => {
            stats.hellos_undecided += 1;
            count(why);
        }
        Judgement::Reject => {
            if !flow_has_socket(ctx, headers, &parsed) {
                // No socket holds the flow: the client's retransmission after our reset
                // (the stack answers it with a reset the client accepts), or a spoofed
                // hello (which the stack resets too). Decided statelessly, so no flood
                // of spoofed hellos can make the filter forget a rejected flow.
                stats.reject_retransmits += 1;
                count(GlobalCounter::SniRejectRetransmit);
                return Verdict::Pass;
            }
            if rewrite_into_reset(ctx, &parsed, frame_len) {
                stats.hellos_rejected += 1;
                count(GlobalCounter::SniRejected);
            } else {
                // Rare (headers longer than the rewrite buffer, a helper refusing the
                // frame): the hello passes, and userspace refuses it instead.
                aya_log_ebpf::warn!(
                    ctx,
                    "could not rewrite a rejected ClientHello into a reset (port {})",
                    parsed.dst_port
                );
                count(GlobalCounter::Malformed);
            }
        }
    }
    Verdict::Pass
}

enum Judgement {
    Accept,
    Reject,
    Undecided(GlobalCounter),
}

#[inline(always)]
fn judge_hello<F: Frame>(ctx: &F, parsed: &Headers, frame_len: usize, key: PolicyKey) -> Judgement {
    let Some(hello) = scratch(&HELLO_SCRATCH) else {
        return Judgement::Undecided(GlobalCounter::SniIncomplete);
    };
    if !copy(ctx, parsed.payload_offset, frame_len, hello) {
        return Judgement::Undecided(GlobalCounter::Malformed);
    }
    let (offset, len) = match find_sni(&*hello, 0) {
        Sni::Found { offset, len } => (offset, len),
        Sni::Absent => return Judgement::Undecided(GlobalCounter::SniAbsent),
        Sni::NotClientHello => return Judgement::Undecided(GlobalCounter::NotClientHello),
        Sni::Incomplete => return Judgement::Undecided(GlobalCounter::SniIncomplete),
        Sni::Malformed => return Judgement::Undecided(GlobalCounter::SniMalformed),
    };
    let (offset, len) = launder(hello, offset, len);
    let Ok(names) = sni_hashes(&*hello, offset, len) else {
        return Judgement::Undecided(GlobalCounter::SniMalformed);
    };
    let accepted = |hash: u64| {
        let key = SniKey {
            generation: key.generation,
            port: key.port,
            hash,
        };
        // SAFETY: read-only lookup.
        unsafe { SNI_ALLOW.get(&key) }.is_some()
    };
    if accepted(names.exact) {
        return Judgement::Accept;
    }
    // `*.suffix` at each of the name's last dots: any wildcard depth (see gateway_ebpf::sni).
    // Slots past the name's dots hold the exact hash, already looked up.
    let mut i = 0;
    while i < MAX_WILDCARD_LABELS {
        let hash = names.wildcards[i];
        if hash != names.exact && accepted(hash) {
            return Judgement::Accept;
        }
        i += 1;
    }
    Judgement::Reject
}

/// IPv4 `saddr, daddr, sport, dport` as bpf_sock_tuple lays it out (network order).
#[repr(C)]
struct Tuple4 {
    addrs: [u32; 2],
    ports: [u16; 2],
}

/// IPv6 `saddr[4], daddr[4], sport, dport`.
#[repr(C)]
struct Tuple6 {
    addrs: [u32; 8],
    ports: [u16; 2],
}

const TCP_ESTABLISHED: u32 = 1;
const TCP_SYN_RECV: u32 = 3;
/// A request socket (the handshake done, TCP_DEFER_ACCEPT still waiting for data).
const TCP_NEW_SYN_RECV: u32 = 12;
/// The helpers' "this network namespace" (BPF_F_CURRENT_NETNS, -1).
const CURRENT_NETNS: u64 = u64::MAX;

/// Whether the stack holds a connection (or a request socket) for this flow: only then
/// does a reset from us end something; otherwise the stack answers the packet itself.
#[inline(always)]
fn flow_has_socket<F: Frame>(ctx: &F, h: &Scratch<HEADER_SCRATCH>, parsed: &Headers) -> bool {
    // A node-port flow the translation at TC ingress (after XDP) rewrites to the bind
    // port: its socket is there.
    let local_port = crate::nodeport::translated_port(h, parsed);
    let ports = [parsed.src_port.to_be(), local_port.to_be()];
    let l3 = parsed.l3_offset;
    // SAFETY: the tuples live on this stack frame for the call; the size passed is theirs.
    let sk = unsafe {
        match parsed.ip {
            IpVersion::V4 => {
                let mut t = Tuple4 {
                    addrs: [word(h, l3 + 12).to_be(), word(h, l3 + 16).to_be()],
                    ports,
                };
                bpf_skc_lookup_tcp(
                    ctx.as_ptr(),
                    (&mut t as *mut Tuple4).cast::<bpf_sock_tuple>(),
                    core::mem::size_of::<Tuple4>() as u32,
                    CURRENT_NETNS,
                    0,
                )
            }
            IpVersion::V6 => {
                let mut t = Tuple6 {
                    addrs: [0; 8],
                    ports,
                };
                let mut i = 0;
                while i < 8 {
                    t.addrs[i] = word(h, l3 + 8 + 4 * i).to_be();
                    i += 1;
                }
                bpf_skc_lookup_tcp(
                    ctx.as_ptr(),
                    (&mut t as *mut Tuple6).cast::<bpf_sock_tuple>(),
                    core::mem::size_of::<Tuple6>() as u32,
                    CURRENT_NETNS,
                    0,
                )
            }
        }
    };
    if sk.is_null() {
        return false;
    }
    // SAFETY: a socket the lookup returned, referenced until released just below; state
    // is a field every socket kind (request, established, listener) has.
    let state = unsafe { (*sk).state };
    // SAFETY: releases the reference the lookup took, exactly once.
    unsafe { bpf_sk_release(sk.cast()) };
    matches!(state, TCP_ESTABLISHED | TCP_SYN_RECV | TCP_NEW_SYN_RECV)
}

/// Rewrites the packet in place into RST|ACK with the client's own sequence number —
/// exactly what the server expects next, so the stack accepts it at once and drops the
/// connection (or the request socket, with TCP_DEFER_ACCEPT) — and trims the payload.
#[inline(always)]
fn rewrite_into_reset<F: Frame>(ctx: &F, parsed: &Headers, frame_len: usize) -> bool {
    let Some(r) = scratch(&RST_SCRATCH) else {
        return false;
    };
    let headers_len = parsed.payload_offset;
    if headers_len > REWRITE_SCRATCH || !copy(ctx, 0, headers_len, r) {
        return false;
    }
    let (l3, l4) = (parsed.l3_offset, parsed.l4_offset);
    let tcp_len = headers_len - l4;
    set(r, l4 + 13, TCP_FLAGS_RST_ACK);
    set16(r, l4 + 14, 0); // window
    set16(r, l4 + 16, 0); // checksum, computed below
    set16(r, l4 + 18, 0); // urgent pointer
    let mut sum: u32 = 0;
    match parsed.ip {
        IpVersion::V4 => {
            set16(r, l3 + 2, (l4 - l3 + tcp_len) as u16);
            set16(r, l3 + 10, 0);
            let ip_csum = fold(add_words(r, l3, l4 - l3, 0));
            set16(r, l3 + 10, ip_csum);
            sum = add_words(r, l3 + 12, 8, sum); // addresses
            sum += 6 + tcp_len as u32; // protocol + TCP length
        }
        IpVersion::V6 => {
            set16(r, l3 + 4, tcp_len as u16);
            sum = add_words(r, l3 + 8, 32, sum);
            sum += 6 + tcp_len as u32;
        }
    }
    sum = add_words(r, l4, tcp_len, sum);
    set16(r, l4 + 16, fold(sum));

    if frame_len > headers_len && !ctx.shrink(headers_len, frame_len - headers_len) {
        return false;
    }
    let n = bounded::<REWRITE_SCRATCH>(headers_len);
    ctx.store_head(r.buf.as_ptr(), n as u32)
}

/// One's-complement sum of `len` bytes (big-endian words) from `start`.
#[inline(always)]
fn add_words<const N: usize>(s: &Scratch<N>, start: usize, len: usize, mut sum: u32) -> u32 {
    // The longest range summed is a 60-byte header: 30 words.
    let mut i = 0;
    while i < 32 {
        let at = 2 * i;
        if at >= len {
            break;
        }
        let hi = s.at(start + at).unwrap_or(0);
        let lo = if at + 1 < len {
            s.at(start + at + 1).unwrap_or(0)
        } else {
            0
        };
        sum += u32::from(u16::from_be_bytes([hi, lo]));
        i += 1;
    }
    sum
}

#[inline(always)]
fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

#[inline(always)]
fn set<const N: usize>(s: &mut Scratch<N>, off: usize, value: u8) {
    s.buf[opaque(off) & (N - 1)] = value;
}

#[inline(always)]
fn set16<const N: usize>(s: &mut Scratch<N>, off: usize, value: u16) {
    let [hi, lo] = value.to_be_bytes();
    set(s, off, hi);
    set(s, off + 1, lo);
}

/// Whether the port's source rules deny this packet's source: the longest block naming
/// it decides; a source no block names is denied only where ALLOW rules are all there is.
#[inline(always)]
fn source_denied(
    headers: &Scratch<HEADER_SCRATCH>,
    parsed: &Headers,
    port: PolicyKey,
    flags: u32,
) -> bool {
    let mut data = IpRuleKey {
        generation: port.generation,
        port: port.port,
        family: 4,
        addr: [0; 16],
    };
    let (start, words, bits) = match parsed.ip {
        IpVersion::V4 => (parsed.l3_offset + 12, 1, 32),
        IpVersion::V6 => {
            data.family = 6;
            (parsed.l3_offset + 8, 4, 128)
        }
    };
    let mut i = 0;
    while i < 4 {
        if i < words {
            let [a, b, c, d] = word(headers, start + 4 * i).to_be_bytes();
            data.addr[4 * i] = a;
            data.addr[4 * i + 1] = b;
            data.addr[4 * i + 2] = c;
            data.addr[4 * i + 3] = d;
        }
        i += 1;
    }
    let key = LpmKey::new(IP_RULE_FIXED_BITS + bits, data);
    match IP_RULES.get(&key) {
        Some(&action) => action == IP_RULE_DENY,
        None => flags & SOURCE_DEFAULT_DENY != 0,
    }
}

/// The packet's destination address, as the GATEWAY_ADDRS keys hold it.
#[inline(always)]
fn destination(headers: &Scratch<HEADER_SCRATCH>, parsed: &Headers) -> AddrKey {
    let word = |off: usize| word(headers, off);
    let mut key = AddrKey::default();
    match parsed.ip {
        IpVersion::V4 => {
            key.family = 4;
            key.addr[0] = word(parsed.l3_offset + 16);
        }
        IpVersion::V6 => {
            key.family = 6;
            let mut i = 0;
            while i < 4 {
                key.addr[i] = word(parsed.l3_offset + 24 + 4 * i);
                i += 1;
            }
        }
    }
    key
}
