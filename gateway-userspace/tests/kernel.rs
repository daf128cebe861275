//! Kernel-program tests: the real XDP program, loaded by the real loader, run on crafted
//! frames with BPF_PROG_TEST_RUN. Needs root (CAP_BPF); skipped, saying so, elsewhere.

use aya::programs::{TestRun as _, TestRunOptions};
use gateway::{ebpf::KernelPath, snapshot::KernelPolicy};
use gateway_ebpf::{
    GlobalCounter, HeaderError, IpVersion, PortStats, parse_headers, test_frames::Frame,
};

const XDP_PASS: u32 = 2;
const TC_ACT_OK: u32 = 0;

/// A policy of plain HTTP ports (counted, never policed).
fn http_ports(ports: &[u16]) -> KernelPolicy {
    KernelPolicy {
        ports: ports.to_vec(),
        ..KernelPolicy::default()
    }
}

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
    kernel
        .apply_policy(&http_ports(&[443, 8080]))
        .expect("write ports");

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
        (GlobalCounter::SniAccepted, 0),
        (GlobalCounter::SniRejected, 0),
        (GlobalCounter::SniRejectRetransmit, 0),
        (GlobalCounter::SniAbsent, 0),
        (GlobalCounter::SniIncomplete, 0),
        (GlobalCounter::SniMalformed, 0),
        (GlobalCounter::NotClientHello, 0),
        (GlobalCounter::NodePortSteered, 0),
    ];
    assert_eq!(counts, expected);

    // A reload that drops 8080 and adds 9090: 443 keeps its counters, 8080 stops counting.
    kernel
        .apply_policy(&http_ports(&[443, 9090]))
        .expect("rewrite ports");
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
    kernel.apply_policy(&http_ports(&[443])).expect("ports");
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
            src_port: rng.u16(..),
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

// ---------------------------------------------------------------------------------------
// SNI early rejection

use std::sync::Arc;

use gateway::snapshot::TlsPortPolicy;
use gateway_ebpf::{PortMode, Sni, find_sni, host_hash, sni_hashes};

/// Verifier budget the program must stay well inside (the kernel's limit is 1M): a
/// regression guard on the program's complexity, not a timing.
const VERIFIER_BUDGET: u32 = 500_000;

/// 443 accepts two names (one wildcard); 8443 has a `*` server (passed through); 80 is
/// plain HTTP; 9000 plain TCP.
fn tls_policy() -> KernelPolicy {
    KernelPolicy {
        ports: vec![80, 443, 8443, 9000],
        tcp_ports: vec![9000],
        tls_ports: vec![
            TlsPortPolicy {
                port: 443,
                accept_any: false,
                names: vec!["api.example.com".into(), "*.example.org".into()],
                passthrough: false,
            },
            TlsPortPolicy {
                port: 8443,
                accept_any: true,
                names: vec![],
                passthrough: true,
            },
        ],
        ..KernelPolicy::default()
    }
}

/// A real client's first flight: rustls with a post-quantum key share first, the
/// ClientHello browsers send since 2025 (about 1.3 KB or more).
fn client_hello(server_name: &str) -> Vec<u8> {
    use rustls::crypto::aws_lc_rs;
    let provider = rustls::crypto::CryptoProvider {
        kx_groups: vec![
            aws_lc_rs::kx_group::X25519MLKEM768,
            aws_lc_rs::kx_group::X25519,
        ],
        ..aws_lc_rs::default_provider()
    };
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(server_name.to_owned()).expect("DNS name");
    let mut client = rustls::ClientConnection::new(Arc::new(config), name).expect("client");
    let mut out = Vec::new();
    while client.wants_write() {
        client.write_tls(&mut out).expect("write_tls");
    }
    out
}

/// Runs a frame and returns the frame as the stack would then see it.
/// Runs a frame through the TC program and returns the frame as the stack would see it.
fn run_tc(kernel: &mut KernelPath, frame: &[u8]) -> Vec<u8> {
    let program = kernel.tc_program().expect("TC program");
    let mut out = vec![0u8; frame.len() + 256];
    let result = program
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ..TestRunOptions::default()
        })
        .expect("BPF_PROG_TEST_RUN");
    assert_eq!(
        result.return_value, TC_ACT_OK,
        "every packet passes, rewritten or not"
    );
    out.truncate(result.data_size_out as usize);
    out
}

fn run_out(kernel: &mut KernelPath, frame: &[u8]) -> Vec<u8> {
    let program = kernel.xdp_program().expect("XDP program");
    let mut out = vec![0u8; frame.len() + 256];
    let result = program
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ..TestRunOptions::default()
        })
        .expect("BPF_PROG_TEST_RUN");
    assert_eq!(
        result.return_value, XDP_PASS,
        "every packet passes, rewritten or not"
    );
    out.truncate(result.data_size_out as usize);
    out
}

fn sum_words(bytes: &[u8], mut sum: u32) -> u32 {
    for pair in bytes.chunks(2) {
        sum += u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]));
    }
    sum
}

fn folds_to_zero(mut sum: u32) -> bool {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum == 0xffff
}

/// Checks that `out` is `input` turned into a valid in-window RST|ACK without payload.
fn assert_reset(input: &[u8], out: &[u8]) {
    let h = parse_headers(input).expect("input parses");
    let o = parse_headers(out).expect("output parses");
    assert_eq!(out.len(), h.payload_offset, "payload trimmed");
    assert_eq!(
        (o.payload_len, o.tcp_flags),
        (0, 0x14),
        "an RST|ACK without payload"
    );
    let (l4, end) = (h.l4_offset, h.payload_offset);
    assert_eq!(
        out[l4 + 4..l4 + 12],
        input[l4 + 4..l4 + 12],
        "seq and ack kept: in window"
    );
    assert_eq!(
        out[..h.l3_offset],
        input[..h.l3_offset],
        "link layer and VLAN tags kept"
    );
    let tcp_len = (end - l4) as u32;
    let pseudo = match h.ip {
        IpVersion::V4 => {
            assert!(
                folds_to_zero(sum_words(&out[h.l3_offset..l4], 0)),
                "IPv4 header checksum"
            );
            sum_words(&out[h.l3_offset + 12..h.l3_offset + 20], 6 + tcp_len)
        }
        IpVersion::V6 => sum_words(&out[h.l3_offset + 8..h.l3_offset + 40], 6 + tcp_len),
    };
    assert!(
        folds_to_zero(sum_words(&out[l4..end], pseudo)),
        "TCP checksum"
    );
}

#[test]
fn rejects_unknown_names_with_an_in_window_reset_and_passes_the_rest() {
    if !privileged() {
        return;
    }
    let mut kernel = KernelPath::load().expect("load");
    let instructions = kernel.verified_instructions().expect("program info");
    eprintln!("verifier walked {instructions:?} instructions");
    assert!(
        instructions.is_none_or(|n| n < VERIFIER_BUDGET),
        "{instructions:?}"
    );
    kernel.apply_policy(&tls_policy()).expect("policy");
    let modes = kernel.port_modes().expect("read the policy back");
    let expected = [
        (80, Some(PortMode::Http)),
        (443, Some(PortMode::TlsTerminate)),
        (8443, Some(PortMode::TlsPassthrough)),
        (9000, Some(PortMode::Tcp)),
    ];
    assert_eq!(modes.into_iter().collect::<Vec<_>>(), expected);

    let mut src_port = 20000;
    let mut frame = |name: &str, dst_port: u16, vlan_tags: usize, ip: IpVersion| {
        src_port += 1;
        Frame {
            dst_port,
            vlan_tags,
            ip,
            src_port,
            tcp_options: 12,
            ..Frame::default()
        }
        .build_with_payload(&client_hello(name))
    };

    // (name, port, rejected?)
    let cases = [
        ("api.example.com", 443, false),
        ("API.Example.COM", 443, false),
        ("www.example.org", 443, false),
        ("a.b.example.org", 443, true),
        ("example.org", 443, true),
        ("unknown.example.net", 443, true),
        ("unknown.example.net", 8443, false),
        ("unknown.example.net", 80, false),
        ("unknown.example.net", 9999, false),
    ];
    for (name, port, rejected) in cases {
        for (vlan_tags, ip) in [
            (0, IpVersion::V4),
            (1, IpVersion::V4),
            (0, IpVersion::V6),
            (2, IpVersion::V6),
        ] {
            let input = frame(name, port, vlan_tags, ip);
            let out = run_out(&mut kernel, &input);
            if rejected {
                assert_reset(&input, &out);
                // The client's retransmission passes untouched: the stack has no socket left
                // for the flow and answers with its own reset.
                assert_eq!(
                    run_out(&mut kernel, &input),
                    input,
                    "{name}: retransmission untouched"
                );
            } else {
                assert_eq!(
                    out, input,
                    "{name} to {port} ({ip:?}, {vlan_tags} tags) passes untouched"
                );
            }
        }
    }

    // A new connection that reuses a rejected flow's 4-tuple (another initial sequence
    // number) is judged afresh, not mistaken for the old one's retransmission.
    let first = Frame {
        src_port: 31000,
        ..Frame::default()
    }
    .build_with_payload(&client_hello("evil.example.net"));
    assert_reset(&first, &run_out(&mut kernel, &first));
    let mut reused = first.clone();
    let seq_at = parse_headers(reused.as_slice()).expect("parses").l4_offset + 4;
    reused[seq_at..seq_at + 4].copy_from_slice(&0x1234_5678u32.to_be_bytes());
    assert_reset(&reused, &run_out(&mut kernel, &reused));
    assert_eq!(
        run_out(&mut kernel, &reused),
        reused,
        "and its own retransmission passes"
    );

    // A hello split over two segments, cut before the name: undecided, passed.
    let hello = client_hello("unknown.example.net");
    let Sni::Found { offset, .. } = find_sni(hello.as_slice(), 0) else {
        panic!("has a name")
    };
    let first_segment = Frame {
        src_port: 30000,
        ..Frame::default()
    }
    .build_with_payload(&hello[..offset - 1]);
    assert_eq!(run_out(&mut kernel, &first_segment), first_segment);

    let port443 = kernel
        .port_stats()
        .expect("stats")
        .into_iter()
        .find(|(p, _)| *p == 443)
        .map(|(_, s)| s);
    let stats = port443.expect("443 counted");
    assert_eq!(stats.hellos_rejected, 3 * 4 + 2);
    assert_eq!(stats.reject_retransmits, 3 * 4 + 1);
    assert_eq!(stats.hellos_accepted, 3 * 4);
    assert_eq!(stats.hellos_undecided, 1);
}

/// Over thousands of real and damaged ClientHellos in every frame shape, the kernel
/// rewrites exactly those the host-side parser and hashes say to reject.
#[test]
fn sni_verdicts_agree_with_the_host_parser() {
    if !privileged() {
        return;
    }
    let mut kernel = KernelPath::load().expect("load");
    kernel.apply_policy(&tls_policy()).expect("policy");
    let allowed = [host_hash(b"api.example.com"), host_hash(b"*.example.org")];
    let names = [
        "api.example.com",
        "x.example.org",
        "y.z.example.org",
        "example.org",
        "other.example.net",
        "a-b_c.example.com",
    ];
    let hellos: Vec<Vec<u8>> = names.iter().map(|n| client_hello(n)).collect();
    let mut rng = fastrand::Rng::with_seed(0x5a1);
    let (mut rejected, mut total) = (0, 0);
    for round in 0..2500u32 {
        let mut payload = hellos[rng.usize(..hellos.len())].clone();
        match rng.u8(..4) {
            0 => payload.truncate(rng.usize(1..payload.len())),
            1 => {
                for _ in 0..rng.usize(1..4) {
                    let i = rng.usize(..payload.len());
                    payload[i] = rng.u8(..);
                }
            }
            _ => {}
        }
        let host_rejects = match find_sni(payload.as_slice(), 0) {
            Sni::Found { offset, len } => match sni_hashes(payload.as_slice(), offset, len) {
                Ok((exact, wild)) => {
                    !(allowed.contains(&exact) || wild.is_some_and(|w| allowed.contains(&w)))
                }
                Err(_) => false,
            },
            _ => false,
        };
        let input = Frame {
            src_port: 1024 + round as u16,
            vlan_tags: rng.usize(0..=2),
            ip: if rng.bool() {
                IpVersion::V4
            } else {
                IpVersion::V6
            },
            tcp_options: rng.usize(0..=10) * 4,
            ..Frame::default()
        }
        .build_with_payload(&payload);
        let out = run_out(&mut kernel, &input);
        let kernel_rejects = out != input;
        assert_eq!(
            kernel_rejects, host_rejects,
            "round {round}: kernel and host disagree"
        );
        if kernel_rejects {
            assert_reset(&input, &out);
            rejected += 1;
        }
        total += 1;

        // The TC program runs the same filter on an skb: same verdict, same reset. (Its
        // own flow, so the XDP run above is not taken for a retransmission.)
        let mut tc_input = input.clone();
        let ports = parse_headers(tc_input.as_slice()).map(|h| h.l4_offset);
        if let Ok(l4) = ports {
            tc_input[l4..l4 + 2].copy_from_slice(&(40_000 + round as u16).to_be_bytes());
        }
        let tc_out = run_tc(&mut kernel, &tc_input);
        assert_eq!(
            tc_out != tc_input,
            host_rejects,
            "round {round}: TC and host disagree"
        );
        if host_rejects {
            assert_reset(&tc_input, &tc_out);
        }
    }
    eprintln!("{rejected} of {total} frames rejected");
    assert!(
        rejected > 100 && rejected < total - 100,
        "both verdicts exercised: {rejected}/{total}"
    );
}
