//! Kernel tests of the AuthorizationPolicy source rules: the real XDP and TC programs,
//! loaded and fed by the real loader, run on crafted SYNs with BPF_PROG_TEST_RUN. A SYN
//! from a denied source is dropped and counted; everything else passes. Root only.

use std::net::IpAddr;

use aya::programs::{TestRun as _, TestRunOptions};
use gateway::{
    authz::{IpBlock, SourceRules},
    ebpf::KernelPath,
    snapshot::{KernelPolicy, PortSourceRules},
};
use gateway_ebpf::{
    GlobalCounter, IpVersion,
    test_frames::{DEFAULT_DESTINATIONS, Frame},
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const SYN: u8 = 0x02;
const ACK: u8 = 0x10;

fn privileged() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!("SKIPPED: loading eBPF needs root; run `cargo xtask test` as root");
    }
    root
}

fn block(text: &str) -> IpBlock {
    let (address, length) = text.split_once('/').expect("address/length");
    IpBlock {
        address: address.parse().expect("address"),
        length: length.parse().expect("length"),
    }
}

/// A SYN (or another segment) from `source` to the default gateway address on `port`.
fn segment(source: &str, port: u16, flags: u8) -> Vec<u8> {
    let source: IpAddr = source.parse().expect("source");
    let (ip, destination) = match source {
        IpAddr::V4(_) => (IpVersion::V4, DEFAULT_DESTINATIONS[0]),
        IpAddr::V6(_) => (IpVersion::V6, DEFAULT_DESTINATIONS[1]),
    };
    Frame {
        ip,
        dst_port: port,
        payload: 0,
        tcp_flags: flags,
        addresses: Some((source, destination)),
        ..Frame::default()
    }
    .build()
}

/// Port 443 denies 10.0.0.0/8 and 2001:db8::/32. Port 8443 allows only 192.168.0.0/16 and
/// fd00::/8 but denies 192.168.7.0/24 (DENY first, even over a longer allow block inside
/// it). Port 9443 has no source rules.
fn policy() -> KernelPolicy {
    KernelPolicy {
        ports: vec![443, 8443, 9443],
        source_rules: vec![
            PortSourceRules {
                port: 443,
                rules: SourceRules {
                    deny: vec![block("10.0.0.0/8"), block("2001:db8::/32")],
                    allow_only: None,
                },
            },
            PortSourceRules {
                port: 8443,
                rules: SourceRules {
                    deny: vec![block("192.168.7.0/24")],
                    allow_only: Some(vec![
                        block("192.168.0.0/16"),
                        block("192.168.7.128/25"),
                        block("fd00::/8"),
                    ]),
                },
            },
        ],
        ..KernelPolicy::default()
    }
}

/// (source, port, TCP flags, dropped)
const CASES: &[(&str, u16, u8, bool)] = &[
    ("10.1.2.3", 443, SYN, true),
    ("10.255.255.255", 443, SYN, true),
    ("11.0.0.1", 443, SYN, false),
    ("2001:db8::1", 443, SYN, true),
    ("2001:db9::1", 443, SYN, false),
    // The IPv4 block does not cover IPv4-looking IPv6 sources, nor the reverse.
    ("::ffff:10.1.2.3", 443, SYN, false),
    // Only connection openings are dropped: later segments and SYN-ACKs pass.
    ("10.1.2.3", 443, ACK, false),
    ("10.1.2.3", 443, SYN | ACK, false),
    // The allow list: inside passes, outside is denied, a deny inside it wins even over
    // a longer allow block within the deny.
    ("192.168.1.1", 8443, SYN, false),
    ("192.169.0.1", 8443, SYN, true),
    ("192.168.7.1", 8443, SYN, true),
    ("192.168.7.200", 8443, SYN, true),
    ("fd12::1", 8443, SYN, false),
    ("2001:db8::1", 8443, SYN, true),
    // A port without source rules, and a port that is not ours.
    ("10.1.2.3", 9443, SYN, false),
    ("10.1.2.3", 22, SYN, false),
];

fn run_xdp(kernel: &mut KernelPath, frame: &[u8]) -> u32 {
    let options = TestRunOptions {
        data_in: Some(frame),
        ..TestRunOptions::default()
    };
    let program = kernel.xdp_program().expect("XDP program");
    program
        .test_run(options)
        .expect("XDP test run")
        .return_value
}

fn run_tc(kernel: &mut KernelPath, frame: &[u8]) -> u32 {
    let options = TestRunOptions {
        data_in: Some(frame),
        ..TestRunOptions::default()
    };
    let program = kernel.tc_program().expect("TC program");
    program.test_run(options).expect("TC test run").return_value
}

fn denied_count(kernel: &KernelPath) -> (u64, u64, u64) {
    let global = kernel.global_stats().expect("global stats");
    let total = global
        .iter()
        .find(|(c, _)| *c == GlobalCounter::IpDenied)
        .map_or(0, |(_, v)| *v);
    let ports = kernel.port_stats().expect("port stats");
    let on = |port| {
        ports
            .iter()
            .find(|(p, _)| *p == port)
            .map_or(0, |(_, s)| s.syns_denied)
    };
    (total, on(443), on(8443))
}

#[test]
fn syns_from_denied_sources_are_dropped_at_xdp_and_tc() {
    if !privileged() {
        return;
    }
    let mut kernel = KernelPath::load().expect("load the embedded eBPF object");
    kernel
        .set_gateway_addresses(&DEFAULT_DESTINATIONS)
        .expect("addresses");
    kernel.apply_policy(&policy()).expect("write the policy");

    for (source, port, flags, dropped) in CASES {
        let frame = segment(source, *port, *flags);
        let (xdp, tc) = if *dropped {
            (XDP_DROP, TC_ACT_SHOT)
        } else {
            (XDP_PASS, TC_ACT_OK)
        };
        assert_eq!(run_xdp(&mut kernel, &frame), xdp, "XDP: {source} → {port}");
        assert_eq!(run_tc(&mut kernel, &frame), tc, "TC: {source} → {port}");
    }
    // Each dropped case ran twice (XDP and TC).
    let on_443 = CASES.iter().filter(|c| c.1 == 443 && c.3).count() as u64 * 2;
    let on_8443 = CASES.iter().filter(|c| c.1 == 8443 && c.3).count() as u64 * 2;
    assert_eq!(denied_count(&kernel), (on_443 + on_8443, on_443, on_8443));
}

#[test]
fn a_reload_without_source_rules_lets_every_source_in() {
    if !privileged() {
        return;
    }
    let mut kernel = KernelPath::load().expect("load the embedded eBPF object");
    kernel
        .set_gateway_addresses(&DEFAULT_DESTINATIONS)
        .expect("addresses");
    kernel.apply_policy(&policy()).expect("write the policy");
    let denied = segment("10.1.2.3", 443, SYN);
    assert_eq!(run_xdp(&mut kernel, &denied), XDP_DROP);

    // The policy is gone: the next generation has no rules, and the one after reuses
    // (and clears) the first generation's entries.
    let without = KernelPolicy {
        source_rules: Vec::new(),
        ..policy()
    };
    kernel.apply_policy(&without).expect("reload");
    assert_eq!(run_xdp(&mut kernel, &denied), XDP_PASS);
    kernel.apply_policy(&without).expect("reload again");
    assert_eq!(run_xdp(&mut kernel, &denied), XDP_PASS);
    kernel.apply_policy(&policy()).expect("the rules back");
    assert_eq!(run_xdp(&mut kernel, &denied), XDP_DROP);
}

#[test]
fn traffic_to_other_addresses_is_not_policed() {
    if !privileged() {
        return;
    }
    let mut kernel = KernelPath::load().expect("load the embedded eBPF object");
    kernel
        .set_gateway_addresses(&DEFAULT_DESTINATIONS)
        .expect("addresses");
    kernel.apply_policy(&policy()).expect("write the policy");
    let elsewhere = Frame {
        dst_port: 443,
        payload: 0,
        tcp_flags: SYN,
        addresses: Some((
            "10.1.2.3".parse().expect("ip"),
            "10.0.0.99".parse().expect("ip"),
        )),
        ..Frame::default()
    }
    .build();
    assert_eq!(run_xdp(&mut kernel, &elsewhere), XDP_PASS);
}

/// A node port takes its bind port's source rules: a SYN to node port 30443 (leading to
/// 443) from a denied source is dropped where the filter runs ahead of the translation
/// (XDP, or TC on an interface without it), IPv4 and IPv6 alike; the allow list of 8443
/// applies on its node port 30843 too.
#[test]
fn syns_to_a_node_port_meet_the_bind_ports_source_rules() {
    if !privileged() {
        return;
    }
    let mut kernel = KernelPath::load().expect("load the embedded eBPF object");
    kernel
        .set_gateway_addresses(&DEFAULT_DESTINATIONS)
        .expect("addresses");
    let with_node_ports = KernelPolicy {
        node_ports: vec![(30443, 443), (30843, 8443), (30943, 9443)],
        ..policy()
    };
    kernel
        .apply_policy(&with_node_ports)
        .expect("write the policy");
    let cases: &[(&str, u16, bool)] = &[
        ("10.1.2.3", 30443, true),
        ("2001:db8::7", 30443, true),
        ("11.0.0.1", 30443, false),
        ("192.169.0.1", 30843, true),
        ("192.168.1.1", 30843, false),
        ("fd12::1", 30843, false),
        ("10.1.2.3", 30943, false),
    ];
    for (source, port, dropped) in cases {
        let frame = segment(source, *port, SYN);
        let (xdp, tc) = if *dropped {
            (XDP_DROP, TC_ACT_SHOT)
        } else {
            (XDP_PASS, TC_ACT_OK)
        };
        assert_eq!(run_xdp(&mut kernel, &frame), xdp, "XDP: {source} → {port}");
        assert_eq!(run_tc(&mut kernel, &frame), tc, "TC: {source} → {port}");
    }
    let ports = kernel.port_stats().expect("port stats");
    let denied_on = |port| {
        ports
            .iter()
            .find(|(p, _)| *p == port)
            .map_or(0, |(_, s)| s.syns_denied)
    };
    assert_eq!(denied_on(30443), 4, "counted on the node port");
    assert_eq!(denied_on(30843), 2);
    assert_eq!(denied_on(443), 0);

    // Without node ports in the next policy, the node port's rules go with it.
    kernel.apply_policy(&policy()).expect("reload");
    assert_eq!(
        run_xdp(&mut kernel, &segment("10.1.2.3", 30443, SYN)),
        XDP_PASS
    );
}
