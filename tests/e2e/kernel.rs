//! The kernel path end to end, in two network namespaces joined by a veth pair at MTU
//! 1500: SNI early rejection in front of a real TLS listener, the filter's view of
//! addresses and stale attachments. Node ports are in `node_ports.rs`. Root only
//! (namespaces, eBPF).

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};
use gateway_tests::{
    Gateway, NetnsPair, TempDir, Upstream, binary, free_port, service_with_endpoint,
    skip_unless_root,
};

pub(crate) const NAME: &str = "api.example.com";

/// A self-signed ECDSA P-256 certificate for `name`; returns (cert, key) paths.
pub(crate) fn self_signed(dir: &TempDir, name: &str) -> anyhow::Result<(PathBuf, PathBuf)> {
    self_signed_for(dir, &[name])
}

/// A self-signed certificate for every name in `names` (the first is its CN).
fn self_signed_for(dir: &TempDir, names: &[&str]) -> anyhow::Result<(PathBuf, PathBuf)> {
    let name = names[0].replace('*', "wildcard");
    let sans: Vec<String> = names.iter().map(|n| format!("DNS:{n}")).collect();
    let (cert, key) = (
        dir.path().join(format!("{name}.crt")),
        dir.path().join(format!("{name}.key")),
    );
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "2",
        ])
        .args([
            "-subj",
            &format!("/CN={name}"),
            "-addext",
            &format!("subjectAltName={}", sans.join(",")),
        ])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .context("running openssl")?;
    if !out.status.success() {
        bail!("openssl req: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok((cert, key))
}

/// An HTTPS server for api.example.com on Gateway port 443 (bound on `bind_port`).
pub(crate) fn https_config(
    bind_port: u16,
    upstream: SocketAddr,
    cert: &Path,
    key: &Path,
) -> String {
    https_config_for(&[NAME], bind_port, upstream, cert, key)
}

/// The same with other hosts (exact names or wildcards).
fn https_config_for(
    hosts: &[&str],
    bind_port: u16,
    upstream: SocketAddr,
    cert: &Path,
    key: &Path,
) -> String {
    let hosts = hosts
        .iter()
        .map(|h| format!("\"{h}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: gw, namespace: default}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 443, name: https, protocol: HTTPS}}
    hosts: [{hosts}]
    tls: {{mode: SIMPLE, serverCertificate: "{cert}", privateKey: "{key}"}}
---
apiVersion: v1
kind: Service
metadata: {{name: istio-ingressgateway, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  ports: [{{name: https, port: 443, targetPort: {bind_port}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: api, namespace: default}}
spec:
  hosts: [{hosts}]
  gateways: [gw]
  http:
  - route: [{{destination: {{host: httpbin, port: {{number: 8000}}}}}}]
---
{}"#,
        service_with_endpoint("httpbin", 8000, upstream),
        cert = cert.display(),
        key = key.display(),
    )
}

/// Runs tls-probe from the client namespace; returns its one-line verdict.
fn probe(
    net: &NetnsPair,
    port: u16,
    sni: &str,
    cafile: &Path,
    extra: &[&str],
) -> anyhow::Result<String> {
    let out = Command::new("ip")
        .args(["netns", "exec", &net.client_ns])
        .arg(binary("TLS_PROBE_BIN", "tls-probe"))
        .args([
            "--connect",
            &format!("{}:{port}", net.gateway_ip),
            "--sni",
            sni,
            "--path",
            "/status/200",
        ])
        .arg("--cafile")
        .arg(cafile)
        .args(extra)
        .output()?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn counter(gateway: &Gateway, sample: &str) -> anyhow::Result<f64> {
    Ok(gateway.metric(sample)?.unwrap_or(0.0))
}

#[test]
fn unknown_sni_is_reset_in_the_kernel_before_the_daemon_accepts() -> anyhow::Result<()> {
    sni_rejection("xdp")
}

/// The same filter at TC ingress (`--ebpf-hook tc`, a TCX link).
#[test]
fn unknown_sni_is_reset_at_tc_ingress_too() -> anyhow::Result<()> {
    sni_rejection("tc")
}

fn sni_rejection(hook: &str) -> anyhow::Result<()> {
    if skip_unless_root("creates network namespaces and attaches eBPF") {
        return Ok(());
    }
    let net = NetnsPair::new("sni")?;
    let dir = TempDir::new("kernel-sni")?;
    let (cert, key) = self_signed(&dir, NAME)?;
    let upstream = Upstream::start(Some(&net.gateway_ns), "127.0.0.1:0", "httpbin")?;
    let port = free_port();
    dir.write(
        "config.yaml",
        &https_config(port, upstream.addr, &cert, &key),
    )?;
    let args = [
        "--ebpf",
        "on",
        "--ebpf-hook",
        hook,
        "--interface",
        &net.gateway_if,
    ];
    let gateway = Gateway::start(dir.path(), &args, Some(&net.gateway_ns), &dir)?;
    let hellos = |verdict: &str| {
        format!("gateway_kernel_client_hellos_total{{port=\"{port}\",verdict=\"{verdict}\"}}")
    };
    let accepted_connections = format!("gateway_downstream_connections_total{{port=\"{port}\"}}");
    let refused_in_userspace =
        format!("gateway_tls_handshakes_total{{port=\"{port}\",result=\"refused_sni\"}}");

    // An accepted name: handshake and request, and the kernel saw the hello and let it by.
    assert_eq!(
        probe(&net, port, NAME, &cert, &[])?,
        "ok 200",
        "{}",
        gateway.stderr()
    );
    assert_eq!(counter(&gateway, &hellos("accepted"))?, 1.0);
    let accepts_before = counter(&gateway, &accepted_connections)?;

    // An unknown name: reset by the kernel; gatewayd never accepted the connection.
    assert_eq!(probe(&net, port, "evil.example.net", &cert, &[])?, "reset");
    assert_eq!(counter(&gateway, &hellos("rejected"))?, 1.0);
    assert_eq!(
        counter(&gateway, &accepted_connections)?,
        accepts_before,
        "no accept for a rejected hello"
    );
    assert_eq!(
        counter(&gateway, &refused_in_userspace)?,
        0.0,
        "userspace never saw it"
    );

    // openssl's own hellos: the accepted name completes a handshake, the unknown one is
    // reset before any certificate is sent.
    let openssl = |name: &str| -> anyhow::Result<(bool, String)> {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &net.client_ns,
                "openssl",
                "s_client",
                "-connect",
            ])
            .arg(format!("{}:{port}", net.gateway_ip))
            .args(["-servername", name, "-verify_return_error", "-CAfile"])
            .arg(&cert)
            .stdin(std::process::Stdio::null())
            .output()?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok((
            out.status.success() && text.contains("-----BEGIN CERTIFICATE-----"),
            text,
        ))
    };
    let (ok, text) = openssl(NAME)?;
    assert!(
        ok,
        "openssl s_client with {NAME} completes a handshake:\n{text}"
    );
    let (ok, text) = openssl("unknown.example.org")?;
    assert!(
        !ok && !text.contains("BEGIN CERTIFICATE"),
        "openssl with an unknown name is refused:\n{text}"
    );
    assert_eq!(counter(&gateway, &hellos("rejected"))?, 2.0);
    assert_eq!(
        counter(&gateway, &accepted_connections)?,
        accepts_before + 1.0,
        "only the good one"
    );

    // Browsers' post-quantum hellos span two segments at MTU 1500, and clients shuffle
    // extensions: the name is in the first segment (the kernel decides) or in the second
    // (undecided; gatewayd refuses it from the whole hello, still before any crypto).
    // Either way every one is refused, and never accepted by both.
    assert_eq!(probe(&net, port, NAME, &cert, &["--pq"])?, "ok 200");
    let (rejected_before, refused_before) = (
        counter(&gateway, &hellos("rejected"))?,
        counter(&gateway, &refused_in_userspace)?,
    );
    const PQ_ATTEMPTS: u32 = 12;
    for _ in 0..PQ_ATTEMPTS {
        let verdict = probe(&net, port, "evil.example.net", &cert, &["--pq"])?;
        assert!(verdict == "reset" || verdict == "closed", "{verdict}");
    }
    let in_kernel = counter(&gateway, &hellos("rejected"))? - rejected_before;
    let in_userspace = counter(&gateway, &refused_in_userspace)? - refused_before;
    assert_eq!(
        in_kernel + in_userspace,
        f64::from(PQ_ATTEMPTS),
        "kernel {in_kernel} + userspace {in_userspace}"
    );
    eprintln!(
        "{hook}: post-quantum hellos with an unknown name: {in_kernel} of {PQ_ATTEMPTS} decided in the kernel"
    );

    // A ClientHello split before its name is not decided in the kernel: an accepted name
    // is served, an unknown one is refused by gatewayd (the authority) without a handshake.
    let refused = counter(&gateway, &refused_in_userspace)?;
    assert_eq!(
        probe(&net, port, NAME, &cert, &["--split-at", "40"])?,
        "ok 200"
    );
    assert_eq!(
        probe(&net, port, "evil.example.net", &cert, &["--split-at", "40"])?,
        "closed"
    );
    assert_eq!(counter(&gateway, &refused_in_userspace)?, refused + 1.0);
    Ok(())
}

/// Wildcards match at any depth in the kernel, as in userspace: `*.example.com` serves
/// `a.b.example.com`, and the kernel lets its hello by instead of resetting it.
#[test]
fn deep_names_under_a_wildcard_pass_the_kernel_filter() -> anyhow::Result<()> {
    if skip_unless_root("creates network namespaces and attaches eBPF") {
        return Ok(());
    }
    let net = NetnsPair::new("wild")?;
    let dir = TempDir::new("kernel-wildcard")?;
    let (cert, key) = self_signed_for(&dir, &["*.example.com", "a.b.example.com"])?;
    let upstream = Upstream::start(Some(&net.gateway_ns), "127.0.0.1:0", "httpbin")?;
    let port = free_port();
    dir.write(
        "config.yaml",
        &https_config_for(&["*.example.com"], port, upstream.addr, &cert, &key),
    )?;
    let args = ["--ebpf", "on", "--interface", &net.gateway_if];
    let gateway = Gateway::start(dir.path(), &args, Some(&net.gateway_ns), &dir)?;
    let hellos = |verdict: &str| {
        format!("gateway_kernel_client_hellos_total{{port=\"{port}\",verdict=\"{verdict}\"}}")
    };
    assert_eq!(
        probe(&net, port, "a.b.example.com", &cert, &[])?,
        "ok 200",
        "{}",
        gateway.stderr()
    );
    assert_eq!(counter(&gateway, &hellos("accepted"))?, 1.0);
    assert_eq!(counter(&gateway, &hellos("rejected"))?, 0.0);
    assert_eq!(probe(&net, port, "a.b.example.net", &cert, &[])?, "reset");
    assert_eq!(counter(&gateway, &hellos("rejected"))?, 1.0);
    Ok(())
}

/// A third namespace routed through the gateway's namespace, as pods are on nodes with
/// native routing: traffic to it crosses the gateway's interface (and its filter).
/// Removed on drop, even when the test fails.
pub(crate) struct RoutedPod {
    pub(crate) ns: String,
    pub(crate) ip: String,
}

const POD_SUBNET: &str = "10.204.0";

impl RoutedPod {
    pub(crate) fn new(net: &NetnsPair) -> anyhow::Result<Self> {
        let id = std::process::id() % 100_000;
        let pod = RoutedPod {
            ns: format!("pod-{id}-{}", free_port()),
            ip: format!("{POD_SUBNET}.2"),
        };
        let (gw_if, pod_if) = (format!("vpg{id}"), format!("vpp{id}"));
        run("ip", &["netns", "add", &pod.ns])?;
        run(
            "ip",
            &[
                "link",
                "add",
                &gw_if,
                "netns",
                &net.gateway_ns,
                "type",
                "veth",
                "peer",
                "name",
                &pod_if,
                "netns",
                &pod.ns,
            ],
        )?;
        let in_ns = |ns: &str, args: &[&str]| -> anyhow::Result<()> {
            let mut all = vec!["netns", "exec", ns];
            all.extend_from_slice(args);
            run("ip", &all)
        };
        let gw_addr = format!("{POD_SUBNET}.1/24");
        let pod_addr = format!("{}/24", pod.ip);
        let gw_hop = format!("{POD_SUBNET}.1");
        let subnet = format!("{POD_SUBNET}.0/24");
        in_ns(
            &net.gateway_ns,
            &["ip", "addr", "add", &gw_addr, "dev", &gw_if],
        )?;
        in_ns(&net.gateway_ns, &["ip", "link", "set", &gw_if, "up"])?;
        in_ns(&net.gateway_ns, &["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        in_ns(&pod.ns, &["ip", "addr", "add", &pod_addr, "dev", &pod_if])?;
        in_ns(&pod.ns, &["ip", "link", "set", &pod_if, "up"])?;
        in_ns(&pod.ns, &["ip", "link", "set", "lo", "up"])?;
        in_ns(&pod.ns, &["ip", "route", "add", "default", "via", &gw_hop])?;
        in_ns(
            &net.client_ns,
            &["ip", "route", "add", &subnet, "via", &net.gateway_ip],
        )?;
        Ok(pod)
    }
}

impl Drop for RoutedPod {
    fn drop(&mut self) {
        // Deleting the namespace deletes its end of the veth, and so the pair.
        let _ = run("ip", &["netns", "del", &self.ns]);
    }
}

pub(crate) fn run(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(program).args(args).output()?;
    if !out.status.success() {
        bail!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// TLS with a name the gateway does not serve, to a pod behind the node on the gateway's
/// own port number (an admission webhook on 8443, say), passes the filter untouched and
/// completes its handshake; the same name to the gateway's address is still reset.
#[test]
fn tls_to_a_pod_on_a_gateway_port_passes_untouched() -> anyhow::Result<()> {
    if skip_unless_root("creates network namespaces and attaches eBPF") {
        return Ok(());
    }
    let net = NetnsPair::new("dst")?;
    let pod = RoutedPod::new(&net)?;
    let dir = TempDir::new("kernel-dst")?;
    let (cert, key) = self_signed(&dir, NAME)?;
    let (pod_cert, pod_key) = self_signed(&dir, "webhook.pod.svc")?;
    let upstream = Upstream::start(Some(&net.gateway_ns), "127.0.0.1:0", "httpbin")?;
    let port = free_port();
    dir.write(
        "config.yaml",
        &https_config(port, upstream.addr, &cert, &key),
    )?;
    let args = ["--ebpf", "on", "--interface", &net.gateway_if];
    let gateway = Gateway::start(dir.path(), &args, Some(&net.gateway_ns), &dir)?;

    // The pod's TLS server, on the gateway's port number.
    let mut server = Command::new("ip")
        .args([
            "netns", "exec", &pod.ns, "openssl", "s_server", "-quiet", "-www",
        ])
        .args(["-accept", &port.to_string(), "-cert"])
        .arg(&pod_cert)
        .arg("-key")
        .arg(&pod_key)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let handshake = || -> anyhow::Result<String> {
        let out = Command::new("ip")
            .args(["netns", "exec", &net.client_ns, "openssl", "s_client"])
            .args(["-connect", &format!("{}:{port}", pod.ip)])
            .args([
                "-servername",
                "webhook.pod.svc",
                "-verify_return_error",
                "-CAfile",
            ])
            .arg(&pod_cert)
            .stdin(std::process::Stdio::null())
            .output()?;
        Ok(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    };
    // The server needs a moment to listen: retry the connection itself, not a timing.
    let mut text = handshake()?;
    for _ in 0..50 {
        if !text.contains("connect:errno") && !text.contains("Connection refused") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        text = handshake()?;
    }
    let _ = server.kill();
    let _ = server.wait();
    assert!(
        text.contains("-----BEGIN CERTIFICATE-----") && text.contains("Verify return code: 0"),
        "the pod's handshake completes through the filter:\n{text}\n{}",
        gateway.stderr()
    );
    assert!(
        counter(
            &gateway,
            "gateway_kernel_packets_total{outcome=\"other_address\"}"
        )? > 0.0,
        "seen and left alone as traffic to another address"
    );
    let rejected =
        format!("gateway_kernel_client_hellos_total{{port=\"{port}\",verdict=\"rejected\"}}");
    assert_eq!(counter(&gateway, &rejected)?, 0.0);
    assert_eq!(probe(&net, port, "webhook.pod.svc", &cert, &[])?, "reset");
    assert_eq!(counter(&gateway, &rejected)?, 1.0);
    Ok(())
}

/// Where TC attaches through netlink (kernels before 6.6; forced here with
/// `--ebpf-hook tc-netlink`), a SIGKILLed daemon leaves its program attached with its
/// last policy. The next daemon removes it at start: a name the new config serves is
/// not reset by the dead daemon's policy.
#[test]
fn a_killed_daemons_netlink_attachment_is_removed_at_start() -> anyhow::Result<()> {
    if skip_unless_root("creates network namespaces and attaches eBPF") {
        return Ok(());
    }
    let net = NetnsPair::new("stale")?;
    let dir = TempDir::new("kernel-stale")?;
    const LATER: &str = "later.example.com";
    let (cert, key) = self_signed_for(&dir, &[NAME, LATER])?;
    let upstream = Upstream::start(Some(&net.gateway_ns), "127.0.0.1:0", "httpbin")?;
    let port = free_port();
    dir.write(
        "config.yaml",
        &https_config(port, upstream.addr, &cert, &key),
    )?;
    let args = [
        "--ebpf",
        "on",
        "--ebpf-hook",
        "tc-netlink",
        "--interface",
        &net.gateway_if,
    ];
    let filters = || -> anyhow::Result<usize> {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &net.gateway_ns,
                "tc",
                "filter",
                "show",
                "dev",
            ])
            .args([&net.gateway_if, "ingress"])
            .output()?;
        // One line per filter (it names the program twice: section and program name).
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|line| line.contains("gateway_tc"))
            .count())
    };
    let mut gateway = Gateway::start(dir.path(), &args, Some(&net.gateway_ns), &dir)?;
    assert_eq!(filters()?, 1, "{}", gateway.stderr());
    assert_eq!(probe(&net, port, LATER, &cert, &[])?, "reset");
    gateway.process.child.kill()?;
    gateway.process.child.wait()?;
    assert_eq!(filters()?, 1, "the netlink attachment outlives the process");

    // The next config serves LATER too; the dead daemon's filter would still reset it.
    dir.write(
        "config.yaml",
        &https_config_for(&[NAME, LATER], port, upstream.addr, &cert, &key),
    )?;
    let gateway = Gateway::start(dir.path(), &args, Some(&net.gateway_ns), &dir)?;
    assert_eq!(filters()?, 1, "the stale one removed, ours attached");
    assert!(
        gateway.stderr().contains("stale"),
        "said so:\n{}",
        gateway.stderr()
    );
    assert_eq!(
        probe(&net, port, LATER, &cert, &[])?,
        "ok 200",
        "{}",
        gateway.stderr()
    );
    Ok(())
}

/// The same for XDP, whose netlink attachment is what kernels before 5.9 get: a killed
/// daemon's program, attached through netlink (by bpftool, as libbpf does), is found by
/// its name and detached by the next daemon, which then attaches its own.
#[test]
fn a_killed_daemons_netlink_xdp_program_is_removed_at_start() -> anyhow::Result<()> {
    if skip_unless_root("creates network namespaces and attaches eBPF") {
        return Ok(());
    }
    let net = NetnsPair::new("stalexdp")?;
    let dir = TempDir::new("kernel-stale-xdp")?;
    const LATER: &str = "later.example.com";
    let (cert, key) = self_signed_for(&dir, &[NAME, LATER])?;
    let upstream = Upstream::start(Some(&net.gateway_ns), "127.0.0.1:0", "httpbin")?;
    let port = free_port();
    dir.write(
        "config.yaml",
        &https_config(port, upstream.addr, &cert, &key),
    )?;
    // Loaded, not attached: the test attaches it through netlink itself.
    let mut gateway = Gateway::start(dir.path(), &["--ebpf", "on"], Some(&net.gateway_ns), &dir)?;
    // bpftool here lists no owning pids: ours is the newest gateway_xdp (ids only grow).
    let out = Command::new("bpftool")
        .args(["-j", "prog", "show", "name", "gateway_xdp"])
        .output()?;
    let programs: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let id = match &programs {
        serde_json::Value::Array(list) => list.iter().filter_map(|p| p["id"].as_u64()).max(),
        one => one["id"].as_u64(),
    }
    .with_context(|| format!("our gateway_xdp among {programs}"))?;
    let id = id.to_string();
    run(
        "ip",
        &[
            "netns",
            "exec",
            &net.gateway_ns,
            "bpftool",
            "net",
            "attach",
            "xdpgeneric",
            "id",
            &id,
            "dev",
            &net.gateway_if,
        ],
    )?;
    let attached = || -> anyhow::Result<String> {
        let out = Command::new("ip")
            .args([
                "-n",
                &net.gateway_ns,
                "link",
                "show",
                "dev",
                &net.gateway_if,
            ])
            .output()?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    gateway.process.child.kill()?;
    gateway.process.child.wait()?;
    assert!(
        attached()?.contains(&format!("id {id}")),
        "the netlink attachment outlives the process: {}",
        attached()?
    );

    dir.write(
        "config.yaml",
        &https_config_for(&[NAME, LATER], port, upstream.addr, &cert, &key),
    )?;
    let args = ["--ebpf", "on", "--interface", &net.gateway_if];
    let gateway = Gateway::start(dir.path(), &args, Some(&net.gateway_ns), &dir)?;
    assert!(
        gateway.stderr().contains("removed a stale XDP attachment"),
        "{}",
        gateway.stderr()
    );
    assert!(
        !attached()?.contains(&format!("id {id} ")),
        "{}",
        attached()?
    );
    assert_eq!(
        probe(&net, port, LATER, &cert, &[])?,
        "ok 200",
        "{}",
        gateway.stderr()
    );
    Ok(())
}
