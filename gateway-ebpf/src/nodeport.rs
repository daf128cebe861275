//! Node-port translation at TC, ahead of netfilter. A SYN to one of our Service's node
//! ports on one of this node's addresses becomes a SYN to the listener's bind port
//! before kube-proxy's DNAT can send it to a gateway on another node (with
//! `externalTrafficPolicy: Cluster` it usually would, SNATed). The flow is remembered
//! in an LRU so its later segments follow, and its replies get the node port back at
//! TC egress: the client only ever sees the node port, the listener the client's own
//! address.
//!
//! Only a port changes, and ports are not in the pseudo-header: the TCP checksum is
//! updated incrementally and the IP header is untouched. Conntrack sees only the
//! translated flow (ingress translation runs before PREROUTING, egress translation after
//! POSTROUTING), so kube-proxy's node-port rules never match it.
//!
//! Socket assignment (bpf_sk_assign) would keep the node port end to end, but netfilter
//! still runs after TC ingress: kube-proxy's DNAT to another node rewrites the
//! destination and routes the SYN away from the assigned socket.

use aya_ebpf::{
    bindings::TC_ACT_UNSPEC,
    macros::{classifier, map},
    maps::{HashMap, LruHashMap},
    programs::TcContext,
};
use gateway_ebpf::{
    AddrKey, GlobalCounter, Headers, IpVersion, NodePortFlow, NodePortFlowState,
    maps::{MAX_NODE_PORT_FLOWS, MAX_PORTS},
    parse_headers,
};

use crate::shared::{
    Frame, GATEWAY_ADDRS, HDR_SCRATCH, HEADER_SCRATCH, Scratch, copy, count, launder_headers,
    scratch, word,
};

const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;
/// Offsets in the TCP header.
const TCP_SOURCE_PORT: usize = 0;
const TCP_DESTINATION_PORT: usize = 2;
const TCP_CHECKSUM: usize = 16;
/// bpf_l4_csum_replace's flags: the replaced field is 2 bytes (and not in the
/// pseudo-header).
const CSUM_FIELD_16: u64 = 2;

/// Node port → bind port (host order), written by gatewayd.
#[map(name = "NODE_PORT_TARGETS")]
static NODE_PORT_TARGETS: HashMap<u32, u32> = HashMap::with_max_entries(MAX_PORTS, 0);

#[map(name = "NODE_PORT_FLOWS")]
static NODE_PORT_FLOWS: LruHashMap<NodePortFlow, NodePortFlowState> =
    LruHashMap::with_max_entries(MAX_NODE_PORT_FLOWS, 0);

/// Returns TC_ACT_UNSPEC: the next program on the hook (the filter) still runs, and the
/// packet passes at the end of the chain; TC_ACT_OK would end the chain here.
#[classifier]
pub fn gateway_np_in(ctx: TcContext) -> i32 {
    translate_ingress(&ctx);
    TC_ACT_UNSPEC
}

#[classifier]
pub fn gateway_np_out(ctx: TcContext) -> i32 {
    translate_egress(&ctx);
    TC_ACT_UNSPEC
}

struct Packet {
    parsed: Headers,
    source: AddrKey,
    destination: AddrKey,
}

#[inline(always)]
fn translate_ingress(ctx: &TcContext) {
    let Some(p) = parse(ctx) else {
        return;
    };
    let (client, local) = (&p.source, &p.destination);
    let (client_port, dst_port) = (p.parsed.src_port, p.parsed.dst_port);
    let syn = p.parsed.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
    let node_port = u32::from(dst_port);
    // SAFETY: read-only lookup; the value is copied out.
    let Some(bind_port) = (unsafe { NODE_PORT_TARGETS.get(&node_port) }).copied() else {
        if syn {
            // A new connection straight to a port (a bind port, say) must not inherit
            // the translation an earlier node-port flow left under the same tuple.
            let _ = NODE_PORT_FLOWS.remove(&flow(client, local, client_port, dst_port));
        }
        return;
    };
    let bind_port = bind_port as u16;
    let flow = flow(client, local, client_port, bind_port);
    if syn {
        // Only the node's own addresses: a node port number to a pod routed through
        // the node is not ours.
        // SAFETY: read-only lookup.
        if unsafe { GATEWAY_ADDRS.get(local) }.is_none() {
            return;
        }
        // Without the flow remembered its replies could not be translated back: leave
        // the connection to the stack (and kube-proxy).
        if NODE_PORT_FLOWS
            .insert(&flow, &NodePortFlowState { node_port }, 0)
            .is_err()
        {
            return;
        }
        if rewrite_port(ctx, &p.parsed, TCP_DESTINATION_PORT, dst_port, bind_port) {
            count(GlobalCounter::NodePortTranslated);
        }
        return;
    }
    // SAFETY: read-only lookup; the value is copied out.
    if let Some(state) = unsafe { NODE_PORT_FLOWS.get(&flow) }.copied()
        && state.node_port == node_port
    {
        rewrite_port(ctx, &p.parsed, TCP_DESTINATION_PORT, dst_port, bind_port);
    }
    // Otherwise a connection opened before we attached, or evicted: the stack decides.
}

#[inline(always)]
fn translate_egress(ctx: &TcContext) {
    let Some(p) = parse(ctx) else {
        return;
    };
    let (client, local) = (&p.destination, &p.source);
    let flow = flow(client, local, p.parsed.dst_port, p.parsed.src_port);
    // SAFETY: read-only lookup; the value is copied out.
    if let Some(state) = unsafe { NODE_PORT_FLOWS.get(&flow) }.copied() {
        let node_port = state.node_port as u16;
        rewrite_port(
            ctx,
            &p.parsed,
            TCP_SOURCE_PORT,
            p.parsed.src_port,
            node_port,
        );
    }
}

/// The local port the stack sees this inbound segment at: the bind port for a node-port
/// flow the ingress translation rewrites (the filter at XDP runs before it), else the
/// segment's own destination port.
#[inline(always)]
pub(crate) fn translated_port(h: &Scratch<HEADER_SCRATCH>, parsed: &Headers) -> u16 {
    let node_port = u32::from(parsed.dst_port);
    // SAFETY: read-only lookup; the value is copied out.
    let Some(bind_port) = (unsafe { NODE_PORT_TARGETS.get(&node_port) }).copied() else {
        return parsed.dst_port;
    };
    let bind_port = bind_port as u16;
    let (client, local) = addresses(h, parsed);
    let flow = flow(&client, &local, parsed.src_port, bind_port);
    // SAFETY: read-only lookup; the value is copied out.
    match unsafe { NODE_PORT_FLOWS.get(&flow) }.copied() {
        Some(state) if state.node_port == node_port => bind_port,
        _ => parsed.dst_port,
    }
}

#[inline(always)]
fn flow(client: &AddrKey, local: &AddrKey, client_port: u16, local_port: u16) -> NodePortFlow {
    NodePortFlow {
        client: client.addr,
        local: local.addr,
        client_port,
        local_port,
        family: client.family,
    }
}

/// Replaces a port and updates the TCP checksum by the difference. On skbs whose
/// checksum the device completes (CHECKSUM_PARTIAL) the helper leaves the field alone:
/// it holds only the pseudo-header's sum, and the device sums the new port itself.
#[inline(always)]
fn rewrite_port(ctx: &TcContext, parsed: &Headers, field: usize, from: u16, to: u16) -> bool {
    let (from, to) = (from.to_be(), to.to_be());
    let l4 = parsed.l4_offset;
    ctx.l4_csum_replace(
        l4 + TCP_CHECKSUM,
        u64::from(from),
        u64::from(to),
        CSUM_FIELD_16,
    )
    .is_ok()
        && ctx.store(l4 + field, &to, 0).is_ok()
}

#[inline(always)]
fn parse(ctx: &TcContext) -> Option<Packet> {
    let headers = scratch(&HDR_SCRATCH)?;
    if !copy(ctx, 0, ctx.frame_len(), headers) {
        return None;
    }
    let parsed = launder_headers(parse_headers(&*headers).ok()?)?;
    let (source, destination) = addresses(headers, &parsed);
    Some(Packet {
        parsed,
        source,
        destination,
    })
}

/// Source and destination, as GATEWAY_ADDRS keys hold addresses.
#[inline(always)]
fn addresses(h: &Scratch<HEADER_SCRATCH>, parsed: &Headers) -> (AddrKey, AddrKey) {
    let (mut source, mut destination) = (AddrKey::default(), AddrKey::default());
    let l3 = parsed.l3_offset;
    match parsed.ip {
        IpVersion::V4 => {
            source.family = 4;
            destination.family = 4;
            source.addr[0] = word(h, l3 + 12);
            destination.addr[0] = word(h, l3 + 16);
        }
        IpVersion::V6 => {
            source.family = 6;
            destination.family = 6;
            let mut i = 0;
            while i < 4 {
                source.addr[i] = word(h, l3 + 8 + 4 * i);
                destination.addr[i] = word(h, l3 + 24 + 4 * i);
                i += 1;
            }
        }
    }
    (source, destination)
}
