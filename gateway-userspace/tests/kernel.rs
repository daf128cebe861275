//! Kernel-program tests: the real XDP program, loaded by the real loader, run on crafted
//! frames with BPF_PROG_TEST_RUN. Needs root (CAP_BPF); skipped, saying so, elsewhere.

use aya::programs::{TestRun as _, TestRunOptions};
use gateway::ebpf::KernelPath;
use gateway_ebpf::{
    GlobalCounter, HeaderError, IpVersion, PortStats, parse_headers, test_frames::Frame,
};

const XDP_PASS: u32 = 2;

fn privileged() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!(
            "SKIPPED: loading eBPF needs root (CAP_BPF + CAP_NET_ADMIN); run `cargo xtask test` as root"
        );
    }
    root
}

fn run(kernel: &mut KernelPath, frame: &[u8]) -> u32 {
    let program = kernel.xdp_program().expect("XDP program");
    let result = program
        .test_run(TestRunOptions {
            data_in: Some(frame),
            ..TestRunOptions::default()
        })
        .expect("BPF_PROG_TEST_RUN");
    result.return_value
}

fn global(kernel: &KernelPath) -> Vec<(GlobalCounter, u64)> {
    kernel.global_stats().expect("global stats")
}

fn port_stats(kernel: &KernelPath, port: u16) -> PortStats {
    kernel
        .port_stats()
        .expect("port stats")
        .into_iter()
        .find(|(p, _)| *p == port)
        .map(|(_, s)| s)
        .unwrap_or_default()
}

#[test]
fn counts_packets_per_gateway_port_and_passes_everything() {
    if !privileged() {
        return;
    }
    let mut kernel = KernelPath::load().expect("load the embedded eBPF object");
    kernel.set_ports(&[443, 8080]).expect("write ports");

    let frames = [
        Frame::default().build(),
        Frame {
            ip: IpVersion::V6,
            dst_port: 8080,
            ..Frame::default()
        }
        .build(),
        Frame {
            vlan_tags: 1,
            tcp_options: 12,
            ..Frame::default()
        }
        .build(),
        Frame {
            dst_port: 22,
            ..Frame::default()
        }
        .build(),
        Frame {
            protocol: 17,
            ..Frame::default()
        }
        .build(),
        Frame {
            fragment: 0x2000,
            ..Frame::default()
        }
        .build(),
        Frame::default().build()[..40].to_vec(),
    ];
    for frame in &frames {
        assert_eq!(run(&mut kernel, frame), XDP_PASS, "every packet passes");
    }

    assert_eq!(port_stats(&kernel, 443).packets, 2);
    assert_eq!(
        port_stats(&kernel, 443).bytes,
        (frames[0].len() + frames[2].len()) as u64
    );
    assert_eq!(port_stats(&kernel, 8080).packets, 1);
    let counts: Vec<(GlobalCounter, u64)> = global(&kernel);
    let expected = [
        (GlobalCounter::Seen, 7),
        (GlobalCounter::GatewayPort, 3),
        (GlobalCounter::OtherPort, 1),
        (GlobalCounter::NotIp, 0),
        (GlobalCounter::NotTcp, 1),
        (GlobalCounter::Fragment, 1),
        (GlobalCounter::Malformed, 1),
    ];
    assert_eq!(counts, expected);

    // A reload that drops 8080 and adds 9090: 443 keeps its counters, 8080 stops counting.
    kernel.set_ports(&[443, 9090]).expect("rewrite ports");
    run(
        &mut kernel,
        &Frame {
            dst_port: 8080,
            ..Frame::default()
        }
        .build(),
    );
    run(
        &mut kernel,
        &Frame {
            dst_port: 9090,
            ..Frame::default()
        }
        .build(),
    );
    assert_eq!(port_stats(&kernel, 443).packets, 2);
    assert_eq!(port_stats(&kernel, 9090).packets, 1);
    assert!(
        kernel
            .port_stats()
            .expect("stats")
            .iter()
            .all(|(p, _)| *p != 8080)
    );
}

/// The kernel and the host run the same parser: over thousands of mutated frames, the
/// kernel's per-outcome counters equal what the host parser says of the same bytes.
#[test]
fn kernel_verdicts_agree_with_the_host_parser() {
    if !privileged() {
        return;
    }
    let mut kernel = KernelPath::load().expect("load");
    kernel.set_ports(&[443]).expect("ports");
    let mut rng = fastrand::Rng::with_seed(0x5eed);
    let mut expected = [0u64; GlobalCounter::COUNT as usize];
    for _ in 0..3000 {
        let mut frame = Frame {
            vlan_tags: rng.usize(0..=3),
            ip: if rng.bool() {
                IpVersion::V4
            } else {
                IpVersion::V6
            },
            ipv4_options: rng.usize(0..=10) * 4,
            tcp_options: rng.usize(0..=10) * 4,
            fragment: if rng.u8(..) < 20 { rng.u16(..) } else { 0x4000 },
            protocol: if rng.u8(..) < 20 { rng.u8(..) } else { 6 },
            dst_port: if rng.bool() { 443 } else { rng.u16(..) },
            payload: rng.usize(0..64),
        }
        .build();
        // Corrupt a few bytes of some frames and truncate others.
        if rng.u8(..) < 64 {
            for _ in 0..rng.usize(1..4) {
                let i = rng.usize(..frame.len());
                frame[i] = rng.u8(..);
            }
        }
        if rng.u8(..) < 32 {
            frame.truncate(rng.usize(1..=frame.len()));
        }
        expected[GlobalCounter::Seen as usize] += 1;
        let outcome = match parse_headers(frame.as_slice()) {
            Ok(h) if h.dst_port == 443 => GlobalCounter::GatewayPort,
            Ok(_) => GlobalCounter::OtherPort,
            Err(HeaderError::NotIp) => GlobalCounter::NotIp,
            Err(HeaderError::NotTcp) => GlobalCounter::NotTcp,
            Err(HeaderError::Fragment) => GlobalCounter::Fragment,
            Err(HeaderError::Malformed) => GlobalCounter::Malformed,
        };
        expected[outcome as usize] += 1;
        // BPF_PROG_TEST_RUN refuses frames shorter than an Ethernet header.
        if frame.len() < 14 {
            expected[GlobalCounter::Seen as usize] -= 1;
            expected[outcome as usize] -= 1;
            continue;
        }
        assert_eq!(run(&mut kernel, &frame), XDP_PASS);
    }
    let got: Vec<u64> = global(&kernel).into_iter().map(|(_, v)| v).collect();
    assert_eq!(
        got, expected,
        "kernel counters vs host parser, in GlobalCounter order"
    );
}
