//! Kernel tests of the node-port translation: the real TC programs, loaded by the real
//! loader, run on crafted frames with BPF_PROG_TEST_RUN. Each frame comes back with its
//! port translated (or not) and its TCP checksum verified from scratch. Root only.

use std::net::IpAddr;

use aya::programs::{TcAttachType, TestRun as _, TestRunOptions};
use gateway::ebpf::KernelPath;
use gateway_ebpf::{
    GlobalCounter, Headers, IpVersion, parse_headers,
    test_frames::{DEFAULT_DESTINATIONS, Frame},
};

/// What the programs return: let the next program (the filter) run, then pass.
const TC_ACT_UNSPEC: u32 = -1i32 as u32;
const NODE_PORT: u16 = 30080;
const BIND_PORT: u16 = 8080;
const CLIENT_PORT: u16 = 40000;
const SYN: u8 = 0x02;
const SYN_ACK: u8 = 0x12;
const ACK: u8 = 0x10;

fn privileged() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!("SKIPPED: loading eBPF needs root; run `cargo xtask test` as root");
    }
    root
}

fn kernel() -> KernelPath {
    let mut kernel = KernelPath::load().expect("load the embedded eBPF object");
    kernel
        .set_gateway_addresses(&DEFAULT_DESTINATIONS)
        .expect("addresses");
    kernel
        .set_node_port_targets([(NODE_PORT, BIND_PORT)].into_iter())
        .expect("node-port targets");
    kernel
}

/// Runs one direction's program on a frame (checksums filled in first); returns the
/// frame as the stack (or the wire) then sees it.
fn run(kernel: &mut KernelPath, direction: TcAttachType, frame: &[u8]) -> Vec<u8> {
    let frame = with_checksums(frame);
    let program = kernel.node_port_program(direction).expect("program");
    let mut out = vec![0u8; frame.len() + 64];
    let result = program
        .test_run(TestRunOptions {
            data_in: Some(&frame),
            data_out: Some(&mut out),
            ..TestRunOptions::default()
        })
        .expect("BPF_PROG_TEST_RUN");
    assert_eq!(result.return_value, TC_ACT_UNSPEC, "every packet passes");
    out.truncate(result.data_size_out as usize);
    assert!(checksums_valid(&out), "checksums after {direction:?}");
    out
}

fn ports(frame: &[u8]) -> (u16, u16) {
    let h = parse_headers(frame).expect("a TCP frame");
    (h.src_port, h.dst_port)
}

fn translated(kernel: &KernelPath) -> u64 {
    kernel
        .global_stats()
        .expect("stats")
        .into_iter()
        .find(|(c, _)| *c == GlobalCounter::NodePortTranslated)
        .map_or(0, |(_, n)| n)
}

/// (client, node) addresses of each family: the node's is a gateway address.
fn endpoints(ip: IpVersion) -> (IpAddr, IpAddr) {
    match ip {
        IpVersion::V4 => (IpAddr::from([10, 0, 0, 1]), DEFAULT_DESTINATIONS[0]),
        IpVersion::V6 => (IpAddr::from([0xfc; 16]), DEFAULT_DESTINATIONS[1]),
    }
}

fn from_client(ip: IpVersion, dst_port: u16, tcp_flags: u8, payload: usize) -> Frame {
    let (client, node) = endpoints(ip);
    Frame {
        ip,
        src_port: CLIENT_PORT,
        dst_port,
        tcp_flags,
        payload,
        addresses: Some((client, node)),
        ..Frame::default()
    }
}

fn to_client(ip: IpVersion, src_port: u16, tcp_flags: u8, payload: usize) -> Frame {
    let (client, node) = endpoints(ip);
    Frame {
        ip,
        src_port,
        dst_port: CLIENT_PORT,
        tcp_flags,
        payload,
        addresses: Some((node, client)),
        ..Frame::default()
    }
}

/// A connection to the node port: the SYN and every later segment reach the bind port,
/// every reply leaves from the node port, and the bytes besides the port and the
/// checksum are the client's own.
fn translates_a_connection_both_ways(ip: IpVersion) {
    let mut kernel = kernel();
    let syn = with_checksums(&from_client(ip, NODE_PORT, SYN, 0).build());
    let seen = run(&mut kernel, TcAttachType::Ingress, &syn);
    assert_eq!(ports(&seen), (CLIENT_PORT, BIND_PORT));
    assert_eq!(
        differing_bytes(&syn, &seen),
        4,
        "the port and the checksum only"
    );
    assert_eq!(translated(&kernel), 1);

    let reply = run(
        &mut kernel,
        TcAttachType::Egress,
        &to_client(ip, BIND_PORT, SYN_ACK, 0).build(),
    );
    assert_eq!(
        ports(&reply),
        (NODE_PORT, CLIENT_PORT),
        "the client sees the node port"
    );

    let data = run(
        &mut kernel,
        TcAttachType::Ingress,
        &from_client(ip, NODE_PORT, ACK, 300).build(),
    );
    assert_eq!(
        ports(&data),
        (CLIENT_PORT, BIND_PORT),
        "later segments follow"
    );
    let data_reply = run(
        &mut kernel,
        TcAttachType::Egress,
        &to_client(ip, BIND_PORT, ACK, 1200).build(),
    );
    assert_eq!(ports(&data_reply), (NODE_PORT, CLIENT_PORT));
    assert_eq!(translated(&kernel), 1, "counted once per connection");
}

#[test]
fn translates_an_ipv4_node_port_connection_both_ways() {
    if privileged() {
        translates_a_connection_both_ways(IpVersion::V4);
    }
}

#[test]
fn translates_an_ipv6_node_port_connection_both_ways() {
    if privileged() {
        translates_a_connection_both_ways(IpVersion::V6);
    }
}

#[test]
fn leaves_other_ports_other_addresses_and_unknown_flows_untouched() {
    if !privileged() {
        return;
    }
    let mut kernel = kernel();
    let untouched = |kernel: &mut KernelPath, direction, frame: Frame| {
        let frame = with_checksums(&frame.build());
        assert_eq!(run(kernel, direction, &frame), frame, "{direction:?}");
    };
    // Another port, to the node.
    untouched(
        &mut kernel,
        TcAttachType::Ingress,
        from_client(IpVersion::V4, 22, SYN, 0),
    );
    // The node port number, to an address that is not the node's (a pod behind it).
    let mut to_pod = from_client(IpVersion::V4, NODE_PORT, SYN, 0);
    to_pod.addresses = Some((IpAddr::from([10, 0, 0, 1]), IpAddr::from([10, 204, 0, 2])));
    untouched(&mut kernel, TcAttachType::Ingress, to_pod);
    // A segment of a node-port connection the translation never saw open (opened before
    // gatewayd attached): the stack (and kube-proxy) decide.
    untouched(
        &mut kernel,
        TcAttachType::Ingress,
        from_client(IpVersion::V6, NODE_PORT, ACK, 10),
    );
    // Replies of connections made straight to the bind port keep it.
    untouched(
        &mut kernel,
        TcAttachType::Egress,
        to_client(IpVersion::V4, BIND_PORT, SYN_ACK, 0),
    );
    assert_eq!(translated(&kernel), 0);
}

/// A later connection from the same client port straight to the bind port must not have
/// its replies rewritten by the translation an earlier node-port flow left behind.
#[test]
fn a_direct_connection_forgets_an_earlier_translation_of_its_tuple() {
    if !privileged() {
        return;
    }
    let mut kernel = kernel();
    run(
        &mut kernel,
        TcAttachType::Ingress,
        &from_client(IpVersion::V4, NODE_PORT, SYN, 0).build(),
    );
    let direct = with_checksums(&from_client(IpVersion::V4, BIND_PORT, SYN, 0).build());
    assert_eq!(run(&mut kernel, TcAttachType::Ingress, &direct), direct);
    let reply = run(
        &mut kernel,
        TcAttachType::Egress,
        &to_client(IpVersion::V4, BIND_PORT, SYN_ACK, 0).build(),
    );
    assert_eq!(ports(&reply), (BIND_PORT, CLIENT_PORT));
}

fn differing_bytes(a: &[u8], b: &[u8]) -> usize {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).filter(|(x, y)| x != y).count()
}

/// The frame with its IPv4 header checksum and TCP checksum computed.
fn with_checksums(frame: &[u8]) -> Vec<u8> {
    let mut f = frame.to_vec();
    let h = parse_headers(&f[..]).expect("a TCP frame");
    if h.ip == IpVersion::V4 {
        let (l3, l4) = (h.l3_offset, h.l4_offset);
        f[l3 + 10..l3 + 12].fill(0);
        let sum = fold(sum_words(&f[l3..l4], 0));
        f[l3 + 10..l3 + 12].copy_from_slice(&sum.to_be_bytes());
    }
    f[h.l4_offset + 16..h.l4_offset + 18].fill(0);
    let sum = fold(tcp_sum(&f, &h));
    f[h.l4_offset + 16..h.l4_offset + 18].copy_from_slice(&sum.to_be_bytes());
    f
}

/// Both checksums verify: summed with the checksum field in, each folds to zero.
fn checksums_valid(frame: &[u8]) -> bool {
    let h = parse_headers(frame).expect("a TCP frame");
    let ip_ok = h.ip == IpVersion::V6 || fold(sum_words(&frame[h.l3_offset..h.l4_offset], 0)) == 0;
    ip_ok && fold(tcp_sum(frame, &h)) == 0
}

/// The one's-complement sum of the pseudo-header, the TCP header and the payload.
fn tcp_sum(f: &[u8], h: &Headers) -> u32 {
    let segment = &f[h.l4_offset..h.payload_offset + h.payload_len];
    let (addresses, next_header) = match h.ip {
        IpVersion::V4 => (&f[h.l3_offset + 12..h.l3_offset + 20], 6),
        IpVersion::V6 => (&f[h.l3_offset + 8..h.l3_offset + 40], 6),
    };
    let sum = sum_words(addresses, next_header + segment.len() as u32);
    sum_words(segment, sum)
}

fn sum_words(bytes: &[u8], mut sum: u32) -> u32 {
    for pair in bytes.chunks(2) {
        let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    sum
}

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}
