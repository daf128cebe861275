//! Node-port steering: an sk_lookup program that hands connections for our Service's node
//! ports to the gateway's own listening sockets. No address or port is rewritten, so the
//! accepted socket's local port is the node port (replies come from it) and its peer is
//! the real client.
//!
//! sk_lookup runs at local socket lookup, after netfilter: where kube-proxy has already
//! DNATed a node port to our targetPort, the lookup is for the targetPort, which the
//! listener owns anyway, and this program has nothing to do.

use aya_ebpf::{
    bindings::sk_action,
    macros::{map, sk_lookup},
    maps::{HashMap, SockMap},
    programs::SkLookupContext,
};
use gateway_ebpf::{
    GlobalCounter,
    maps::{MAX_PORTS, MAX_STEER_SOCKETS},
};

use crate::shared::count;

const IPPROTO_TCP: u32 = 6;
const AF_INET6: u32 = 10;

/// Node port (host order) → index of the listener's IPv4 socket in STEER_SOCKETS; its
/// IPv6 socket is at the next index.
#[map(name = "STEER_PORTS")]
static STEER_PORTS: HashMap<u32, u32> = HashMap::with_max_entries(MAX_PORTS, 0);

#[map(name = "STEER_SOCKETS")]
static STEER_SOCKETS: SockMap = SockMap::with_max_entries(MAX_STEER_SOCKETS, 0);

#[sk_lookup]
pub fn gateway_steer(ctx: SkLookupContext) -> u32 {
    // SAFETY: the kernel hands us a valid bpf_sk_lookup for this run.
    let (protocol, port, family) = unsafe {
        (
            (*ctx.lookup).protocol,
            (*ctx.lookup).local_port,
            (*ctx.lookup).family,
        )
    };
    if protocol != IPPROTO_TCP {
        return sk_action::SK_PASS;
    }
    // SAFETY: read-only lookup; the value is copied out.
    if let Some(&index) = unsafe { STEER_PORTS.get(&port) } {
        let index = if family == AF_INET6 { index + 1 } else { index };
        // A failed assignment (an IPv6 lookup on a node where the listener has no IPv6
        // socket, say) falls back to the normal lookup.
        if STEER_SOCKETS.redirect_sk_lookup(&ctx, index, 0).is_ok() {
            count(GlobalCounter::NodePortSteered);
        }
    }
    sk_action::SK_PASS
}
