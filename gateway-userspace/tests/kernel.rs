//! Kernel-program tests: the real XDP program, loaded by the real loader, run on crafted
//! frames with BPF_PROG_TEST_RUN. Needs root (CAP_BPF); skipped, saying so, elsewhere.

use aya::programs::{TestRun as _, TestRunOptions};
use gateway::{ebpf::KernelPath, snapshot::KernelPolicy};
use gateway_ebpf::{
    GlobalCounter, HeaderError, Headers, IpVersion, PortStats, parse_headers,
    test_frames::{DEFAULT_DESTINATIONS, Frame},
};

use std::net::IpAddr;

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

/// The frame's destination address, read as the filter reads it.
fn destination(frame: &[u8], h: &Headers) -> IpAddr {
    match h.ip {
        IpVersion::V4 => {
            let at = h.l3_offset + 16;
            IpAddr::from(<[u8; 4]>::try_from(&frame[at..at + 4]).expect("4 bytes"))
        }
        IpVersion::V6 => {
            let at = h.l3_offset + 24;
            IpAddr::from(<[u8; 16]>::try_from(&frame[at..at + 16]).expect("16 bytes"))
        }
    }
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
        .set_gateway_addresses(&DEFAULT_DESTINATIONS)
        .expect("addresses");
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
        (GlobalCounter::OtherAddress, 0),
        (GlobalCounter::NodePortTranslated, 0),
        (GlobalCounter::IpDenied, 0),
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
    kernel
        .set_gateway_addresses(&DEFAULT_DESTINATIONS)
        .expect("addresses");
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
            ..Frame::default()
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
            Ok(h)
                if h.dst_port == 443 && DEFAULT_DESTINATIONS.contains(&destination(&frame, &h)) =>
            {
                GlobalCounter::GatewayPort
            }
            Ok(h) if h.dst_port == 443 => GlobalCounter::OtherAddress,
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

use std::{
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    sync::Arc,
};

use gateway::{ebpf::Unpoliced, snapshot::TlsPortPolicy};
use gateway_ebpf::{PortMode, Sni, find_sni, host_hash, sni_hashes, sni_table};

/// Verifier budget the program must stay well inside (the kernel's limit is 1M): a
/// regression guard on the program's complexity, not a timing.
const VERIFIER_BUDGET: u32 = 500_000;

/// Real connections on loopback, each port a dual-stack listener: the filter only
/// resets flows the stack holds a socket for (BPF_PROG_TEST_RUN does not deliver the
/// rewritten frame, so a flow stays alive across runs until `kill`).
struct Lab {
    /// Policed: accepts two names (one wildcard).
    tls: TcpListener,
    /// A `*` server: passed through, never policed.
    any: TcpListener,
    /// Plain HTTP.
    http: TcpListener,
}

impl Lab {
    fn new(kernel: &mut KernelPath) -> Self {
        let listen = || TcpListener::bind("[::]:0").expect("dual-stack listener");
        let lab = Lab {
            tls: listen(),
            any: listen(),
            http: listen(),
        };
        kernel
            .set_gateway_addresses(&LOOPBACK)
            .expect("gateway addresses");
        lab
    }

    fn port(listener: &TcpListener) -> u16 {
        listener.local_addr().expect("bound").port()
    }

    fn tls_port(&self) -> u16 {
        Self::port(&self.tls)
    }

    fn policy(&self) -> KernelPolicy {
        let (tls, any, http) = (
            self.tls_port(),
            Self::port(&self.any),
            Self::port(&self.http),
        );
        KernelPolicy {
            ports: vec![http, tls, any],
            tls_ports: vec![
                TlsPortPolicy {
                    port: tls,
                    accept_any: false,
                    names: vec!["api.example.com".into(), "*.example.org".into()],
                    passthrough: false,
                },
                TlsPortPolicy {
                    port: any,
                    accept_any: true,
                    names: vec![],
                    passthrough: true,
                },
            ],
            ..KernelPolicy::default()
        }
    }
}

const LOOPBACK: [IpAddr; 2] = [
    IpAddr::V4(Ipv4Addr::LOCALHOST),
    IpAddr::V6(Ipv6Addr::LOCALHOST),
];

/// One live connection, seen from the client's side as the filter sees its packets.
struct Flow {
    _client: TcpStream,
    server: TcpStream,
    src: SocketAddr,
    dst: SocketAddr,
}

impl Flow {
    fn open(listener: &TcpListener, ip: IpVersion) -> Flow {
        let port = Lab::port(listener);
        let dst: SocketAddr = match ip {
            IpVersion::V4 => (Ipv4Addr::LOCALHOST, port).into(),
            IpVersion::V6 => (Ipv6Addr::LOCALHOST, port).into(),
        };
        let client = TcpStream::connect(dst).expect("connect");
        let (server, _) = listener.accept().expect("accept");
        Flow {
            src: client.local_addr().expect("client address"),
            _client: client,
            server,
            dst,
        }
    }

    fn frame(&self, vlan_tags: usize, tcp_options: usize, payload: &[u8]) -> Vec<u8> {
        Frame {
            vlan_tags,
            ip: if self.dst.is_ipv4() {
                IpVersion::V4
            } else {
                IpVersion::V6
            },
            tcp_options,
            src_port: self.src.port(),
            dst_port: self.dst.port(),
            addresses: Some((self.src.ip(), self.dst.ip())),
            ..Frame::default()
        }
        .build_with_payload(payload)
    }

    fn hello(&self, name: &str) -> Vec<u8> {
        self.frame(0, 12, &client_hello(name))
    }

    /// Ends the connection at once (a reset, as our rewritten hello does): the stack
    /// holds no socket for the flow afterwards.
    fn kill(self) {
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: a valid socket and a linger value of the size given.
        let rc = unsafe {
            libc::setsockopt(
                self.server.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&linger as *const libc::linger).cast(),
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "SO_LINGER");
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
    let lab = Lab::new(&mut kernel);
    kernel.apply_policy(&lab.policy()).expect("policy");
    let modes = kernel.port_modes().expect("read the policy back");
    assert_eq!(modes[&lab.tls_port()], Some(PortMode::TlsTerminate));
    assert_eq!(modes[&Lab::port(&lab.any)], Some(PortMode::TlsPassthrough));
    assert_eq!(modes[&Lab::port(&lab.http)], Some(PortMode::Http));

    // (name, listener, rejected?)
    let cases = [
        ("api.example.com", &lab.tls, false),
        ("API.Example.COM", &lab.tls, false),
        ("www.example.org", &lab.tls, false),
        ("a.b.example.org", &lab.tls, false),
        ("example.org", &lab.tls, true),
        ("unknown.example.net", &lab.tls, true),
        ("unknown.example.net", &lab.any, false),
        ("unknown.example.net", &lab.http, false),
    ];
    let mut rejected_count = 0;
    for (name, listener, rejected) in cases {
        for (vlan_tags, ip) in [
            (0, IpVersion::V4),
            (1, IpVersion::V4),
            (0, IpVersion::V6),
            (2, IpVersion::V6),
        ] {
            let flow = Flow::open(listener, ip);
            let input = flow.frame(vlan_tags, 12, &client_hello(name));
            let out = run_out(&mut kernel, &input);
            if rejected {
                assert_reset(&input, &out);
                rejected_count += 1;
                // The client's retransmission, once the reset has ended the connection,
                // passes untouched: the stack has no socket left for the flow and
                // answers with its own reset.
                flow.kill();
                assert_eq!(
                    run_out(&mut kernel, &input),
                    input,
                    "{name}: retransmission untouched"
                );
            } else {
                assert_eq!(
                    out, input,
                    "{name} to {} ({ip:?}, {vlan_tags} tags) passes untouched",
                    flow.dst
                );
            }
        }
    }

    // A new connection that reuses a rejected flow's 4-tuple is judged afresh: the
    // decision follows the stack's sockets, not a memory of past flows.
    let flow = Flow::open(&lab.tls, IpVersion::V4);
    let first = flow.hello("evil.example.net");
    assert_reset(&first, &run_out(&mut kernel, &first));
    flow.kill();
    assert_eq!(run_out(&mut kernel, &first), first, "no socket: passed");

    // A hello split over two segments, cut before the name: undecided, passed.
    let hello = client_hello("unknown.example.net");
    let Sni::Found { offset, .. } = find_sni(hello.as_slice(), 0) else {
        panic!("has a name")
    };
    let flow = Flow::open(&lab.tls, IpVersion::V4);
    let first_segment = flow.frame(0, 0, &hello[..offset - 1]);
    assert_eq!(run_out(&mut kernel, &first_segment), first_segment);

    let stats = port_stats(&kernel, lab.tls_port());
    assert_eq!(stats.hellos_rejected, rejected_count + 1);
    assert_eq!(stats.reject_retransmits, rejected_count + 1);
    assert_eq!(stats.hellos_accepted, 4 * 4);
    assert_eq!(stats.hellos_undecided, 1);
}

/// The destination-address check: TLS to a gateway port number but not to one of this
/// node's gateway addresses (a pod routed over the same interface) passes untouched.
#[test]
fn polices_only_traffic_to_the_gateway_addresses() {
    if !privileged() {
        return;
    }
    let mut kernel = KernelPath::load().expect("load");
    let lab = Lab::new(&mut kernel);
    kernel.apply_policy(&lab.policy()).expect("policy");
    for ip in [IpVersion::V4, IpVersion::V6] {
        let flow = Flow::open(&lab.tls, ip);
        let hello = flow.hello("unknown.example.net");
        let (ours, other): (Vec<IpAddr>, Vec<IpAddr>) =
            LOOPBACK.iter().partition(|a| *a == &flow.dst.ip());
        kernel.set_gateway_addresses(&other).expect("addresses");
        assert_eq!(
            run_out(&mut kernel, &hello),
            hello,
            "{ip:?}: not a gateway address: untouched"
        );
        kernel.set_gateway_addresses(&ours).expect("addresses");
        assert_reset(&hello, &run_out(&mut kernel, &hello));
    }
    let other = global(&kernel)
        .into_iter()
        .find(|(c, _)| *c == GlobalCounter::OtherAddress)
        .map(|(_, n)| n);
    assert_eq!(other, Some(2));
}

/// Wildcards match at any depth in the kernel as in userspace: the generated table
/// (gateway_ebpf::sni_table) that the host hashes and gatewayd's server selection are
/// tested against, run through the real program.
#[test]
fn wildcard_depth_agrees_with_the_shared_table() {
    if !privileged() {
        return;
    }
    let mut kernel = KernelPath::load().expect("load");
    let lab = Lab::new(&mut kernel);
    let flows = [
        Flow::open(&lab.tls, IpVersion::V4),
        Flow::open(&lab.tls, IpVersion::V6),
    ];
    let mut checked = 0;
    for pattern in sni_table::PATTERNS {
        let mut policy = lab.policy();
        policy.tls_ports[0].names = vec![pattern.to_owned()];
        kernel.apply_policy(&policy).expect("policy");
        assert!(
            kernel.unpoliced_ports().is_empty(),
            "{pattern} fits the kernel"
        );
        for case in sni_table::cases()
            .into_iter()
            .filter(|c| c.pattern == pattern)
        {
            for flow in &flows {
                let input = flow.hello(&case.name);
                let rejected = run_out(&mut kernel, &input) != input;
                assert_eq!(rejected, !case.accepted, "XDP: {case:?}");
                let rejected = run_tc(&mut kernel, &input) != input;
                assert_eq!(rejected, !case.accepted, "TC: {case:?}");
                checked += 1;
            }
        }
    }
    assert!(checked > 100, "{checked}");

    // A wildcard deeper than the kernel matches: the port is left to userspace (never
    // rejected in the kernel), and said so.
    let mut policy = lab.policy();
    policy.tls_ports[0].names = vec!["*.a.b.c.d.e.f.g.h.example.com".into()];
    kernel.apply_policy(&policy).expect("policy");
    assert_eq!(
        kernel.unpoliced_ports().get(&lab.tls_port()),
        Some(&Unpoliced::WildcardTooDeep)
    );
    let input = flows[0].hello("x.a.b.c.d.e.f.g.h.example.com");
    assert_eq!(run_out(&mut kernel, &input), input);
}

/// A policy whose names do not fit never leaves the previous one rejecting names the
/// new one serves: the port stops being policed in the kernel (fail open), says why,
/// and the other ports stay policed.
#[test]
fn a_policy_that_overflows_the_sni_map_fails_open() {
    if !privileged() {
        return;
    }
    let mut kernel = KernelPath::load().expect("load");
    let lab = Lab::new(&mut kernel);
    let second = TcpListener::bind("[::]:0").expect("listener");
    let mut policy = lab.policy();
    policy.ports.insert(0, Lab::port(&second));
    policy.tls_ports.insert(
        0,
        TlsPortPolicy {
            port: Lab::port(&second),
            accept_any: false,
            names: vec!["kept.example.com".into()],
            passthrough: false,
        },
    );
    kernel.apply_policy(&policy).expect("policy");
    let flow = Flow::open(&lab.tls, IpVersion::V4);
    let other = Flow::open(&second, IpVersion::V4);
    let served_later = flow.hello("new.example.net");
    assert_reset(&served_later, &run_out(&mut kernel, &served_later));

    // The next config serves new.example.net among more names than the map holds.
    let limit = gateway_ebpf::maps::MAX_SNI_NAMES_PER_GENERATION as usize;
    policy.tls_ports[1].names = (0..limit)
        .map(|i| format!("host{i}.example.com"))
        .chain(["new.example.net".to_owned()])
        .collect();
    kernel.apply_policy(&policy).expect("written, failing open");
    assert_eq!(
        kernel.unpoliced_ports().get(&lab.tls_port()),
        Some(&Unpoliced::SniMapFull)
    );
    assert_eq!(kernel.policy_write_failures(), 1);
    assert_eq!(
        run_out(&mut kernel, &served_later),
        served_later,
        "fail open"
    );
    let rejected = other.hello("unknown.example.net");
    assert_reset(&rejected, &run_out(&mut kernel, &rejected));
    let kept = other.hello("kept.example.com");
    assert_eq!(
        run_out(&mut kernel, &kept),
        kept,
        "the other port still policed"
    );
}

/// Spoofed hellos cannot make the filter forget a flow it rejected: there is no state
/// to evict. Far more spoofed hellos than the old reset LRU held (65 536), and the
/// rejected client's retransmission still reaches the stack, which resets it at once.
#[test]
fn a_spoofed_hello_flood_leaves_rejected_clients_their_prompt_reset() {
    if !privileged() {
        return;
    }
    let mut kernel = KernelPath::load().expect("load");
    let lab = Lab::new(&mut kernel);
    kernel.apply_policy(&lab.policy()).expect("policy");
    let flow = Flow::open(&lab.tls, IpVersion::V4);
    let hello = flow.hello("unknown.example.net");
    assert_reset(&hello, &run_out(&mut kernel, &hello));
    flow.kill();

    let payload = client_hello("spoofed.example.net");
    let mut spoofed = Frame {
        dst_port: lab.tls_port(),
        addresses: Some((
            IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)),
            IpAddr::V4(Ipv4Addr::LOCALHOST),
        )),
        ..Frame::default()
    }
    .build_with_payload(&payload);
    let h = parse_headers(spoofed.as_slice()).expect("parses");
    const FLOOD: u32 = 100_000;
    for i in 0..FLOOD {
        // A different source address and port each time, none with a socket.
        let src = h.l3_offset + 12;
        spoofed[src..src + 4].copy_from_slice(&[127, 1, (i >> 8) as u8, i as u8]);
        spoofed[h.l4_offset..h.l4_offset + 2]
            .copy_from_slice(&(1024 + (i % 60_000) as u16).to_be_bytes());
        assert_eq!(run_out(&mut kernel, &spoofed), spoofed, "spoofed hello {i}");
    }
    assert_eq!(
        run_out(&mut kernel, &hello),
        hello,
        "the rejected client's retransmission reaches the stack, which resets it"
    );
    // And a new client with a name nobody serves is still reset in the kernel.
    let next = Flow::open(&lab.tls, IpVersion::V6);
    let hello = next.hello("unknown.example.net");
    assert_reset(&hello, &run_out(&mut kernel, &hello));
    let stats = port_stats(&kernel, lab.tls_port());
    assert_eq!(stats.hellos_rejected, 2);
    assert_eq!(stats.reject_retransmits, u64::from(FLOOD) + 1);
}

/// Over thousands of real and damaged ClientHellos in every frame shape, the kernel
/// rewrites exactly those the host-side parser and hashes say to reject.
#[test]
fn sni_verdicts_agree_with_the_host_parser() {
    if !privileged() {
        return;
    }
    let mut kernel = KernelPath::load().expect("load");
    let lab = Lab::new(&mut kernel);
    kernel.apply_policy(&lab.policy()).expect("policy");
    let flows = [
        Flow::open(&lab.tls, IpVersion::V4),
        Flow::open(&lab.tls, IpVersion::V6),
    ];
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
                Ok(hashes) => !hashes.accepted_by(|h| allowed.contains(&h)),
                Err(_) => false,
            },
            _ => false,
        };
        let flow = &flows[rng.usize(..flows.len())];
        let input = flow.frame(rng.usize(0..=2), rng.usize(0..=10) * 4, &payload);
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

        // The TC program runs the same filter on an skb: same verdict, same reset.
        let tc_out = run_tc(&mut kernel, &input);
        assert_eq!(
            tc_out != input,
            host_rejects,
            "round {round}: TC and host disagree"
        );
        if host_rejects {
            assert_reset(&input, &tc_out);
        }
    }
    eprintln!("{rejected} of {total} frames rejected");
    assert!(
        rejected > 100 && rejected < total - 100,
        "both verdicts exercised: {rejected}/{total}"
    );
}
