//! IPv6 end to end, in two network namespaces whose veth pair has an IPv4 and an IPv6
//! address at each end: listeners serve IPv6 beside IPv4, a node port reached over IPv6
//! is translated ahead of kube-proxy's (ip6tables) DNAT and answered from the node port
//! with the client's own IPv6 address in `x-forwarded-for`, and a ClientHello with an
//! unknown name is reset in the kernel over IPv6 too, on the node port and on the
//! listener's own port. Namespaces are named `v6k-…`. Root only (namespaces, ip6tables,
//! eBPF).

use std::process::Command;

use anyhow::bail;
use gateway_tests::{
    CurlResponse, Gateway, NetnsPair, TempDir, Upstream, binary, curl, free_port, httpbin_config,
    skip_unless_root,
};

use crate::kernel::{NAME, https_config, self_signed};

const NODE_PORT: u16 = 30080;
const TLS_NODE_PORT: u16 = 30443;
const HOST: &str = "Host: httpbin.example.com";
/// An address on the veth's IPv6 subnet that nobody holds: "another node" that
/// kube-proxy's `Cluster` rule may pick (unreachable here, so only a connection served
/// by this node's gatewayd can succeed).
const OTHER_NODE6: &str = "fd00:203::99";

/// The Service's port gets `nodePort` beside its `targetPort: bind_port`.
fn with_node_port(config: &str, bind_port: u16, node_port: u16) -> String {
    let with = config.replace(
        &format!("targetPort: {bind_port}}}]"),
        &format!("targetPort: {bind_port}, nodePort: {node_port}}}]"),
    );
    assert!(with.contains("nodePort"), "{config}");
    with
}

fn gateway_args<'a>(hook: &'a str, net: &'a NetnsPair) -> [&'a str; 7] {
    [
        "--ebpf",
        "on",
        "--ebpf-hook",
        hook,
        "--node-ports",
        "--interface",
        &net.gateway_if,
    ]
}

/// `[address]:port`, as URLs and socket addresses spell IPv6.
fn socket(address: &str, port: u16) -> String {
    if address.contains(':') {
        format!("[{address}]:{port}")
    } else {
        format!("{address}:{port}")
    }
}

fn get(net: &NetnsPair, address: &str, port: u16) -> anyhow::Result<CurlResponse> {
    let url = format!("http://{}/status/200", socket(address, port));
    // -g: the brackets are an IPv6 literal, not a curl glob.
    curl(Some(&net.client_ns), &["-g", "-H", HOST, &url])
}

/// Served by this node's gatewayd (through to httpbin), for `client`.
fn served_for(response: &CurlResponse, client: &str, why: &str) -> anyhow::Result<()> {
    assert_eq!(response.status, 200, "{why}: {response:?}");
    let body = response.json()?;
    assert_eq!(body["upstream"], "httpbin", "{why}");
    assert_eq!(
        body["headers"]["x-forwarded-for"], client,
        "{why}: the client's own address"
    );
    Ok(())
}

fn ip6tables_dnat(net: &NetnsPair, node_port: u16, to: &str) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(["netns", "exec", &net.gateway_ns, "ip6tables"])
        .args(["-t", "nat", "-A", "PREROUTING", "-p", "tcp", "--dport"])
        .arg(node_port.to_string())
        .args(["-j", "DNAT", "--to-destination", to])
        .output()?;
    if !out.status.success() {
        bail!("ip6tables: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

fn counter(gateway: &Gateway, sample: &str) -> anyhow::Result<f64> {
    Ok(gateway.metric(sample)?.unwrap_or(0.0))
}

const TRANSLATED: &str = r#"gateway_kernel_packets_total{outcome="node_port_translated"}"#;

#[test]
fn node_ports_over_ipv6_are_served_here_with_the_client_address_at_xdp() -> anyhow::Result<()> {
    node_port_over_ipv6("xdp")
}

#[test]
fn node_ports_over_ipv6_are_served_here_with_the_client_address_at_tc() -> anyhow::Result<()> {
    node_port_over_ipv6("tc")
}

fn node_port_over_ipv6(hook: &str) -> anyhow::Result<()> {
    if skip_unless_root("creates network namespaces, ip6tables rules and attaches eBPF") {
        return Ok(());
    }
    let net = NetnsPair::with_prefix("v6k-", "np")?;
    let (gateway6, client6) = net.add_ipv6()?;
    let dir = TempDir::new("kernel-ipv6-nodeport")?;
    let upstream = Upstream::start(Some(&net.gateway_ns), "127.0.0.1:0", "httpbin")?;
    let bind_port = free_port();
    let config = with_node_port(
        &httpbin_config(bind_port, upstream.addr),
        bind_port,
        NODE_PORT,
    );
    dir.write("config.yaml", &config)?;
    let gateway = Gateway::start(
        dir.path(),
        &gateway_args(hook, &net),
        Some(&net.gateway_ns),
        &dir,
    )?;

    // The listener serves both families.
    served_for(
        &get(&net, &net.gateway_ip, bind_port)?,
        &net.client_ip,
        "IPv4 to the listener",
    )?;
    served_for(
        &get(&net, &gateway6, bind_port)?,
        &client6,
        "IPv6 to the listener",
    )?;
    assert_eq!(counter(&gateway, TRANSLATED)?, 0.0, "{}", gateway.stderr());

    // The node port over IPv6: translated to the listener and back (curl only completes
    // the connection if the replies come from the node port it dialled).
    served_for(
        &get(&net, &gateway6, NODE_PORT)?,
        &client6,
        "IPv6 to the node port",
    )?;
    assert_eq!(counter(&gateway, TRANSLATED)?, 1.0);

    // kube-proxy's Cluster rule (ip6tables DNAT to another node): the translation runs
    // ahead of netfilter, so this node still serves it.
    ip6tables_dnat(&net, NODE_PORT, &socket(OTHER_NODE6, bind_port))?;
    served_for(
        &get(&net, &gateway6, NODE_PORT)?,
        &client6,
        "Cluster: DNAT to another node",
    )?;
    served_for(
        &get(&net, &net.gateway_ip, NODE_PORT)?,
        &net.client_ip,
        "IPv4 to the node port",
    )?;
    assert_eq!(
        counter(&gateway, TRANSLATED)?,
        3.0,
        "one translation per node-port connection"
    );
    Ok(())
}

/// tls-probe from the client namespace to `address`; its one-line verdict.
fn probe(
    net: &NetnsPair,
    address: &str,
    port: u16,
    sni: &str,
    cafile: &std::path::Path,
) -> anyhow::Result<String> {
    let out = Command::new("ip")
        .args(["netns", "exec", &net.client_ns])
        .arg(binary("TLS_PROBE_BIN", "tls-probe"))
        .args(["--connect", &socket(address, port), "--sni", sni])
        .args(["--path", "/status/200", "--cafile"])
        .arg(cafile)
        .output()?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

#[test]
fn unknown_sni_over_ipv6_is_reset_in_the_kernel_at_xdp() -> anyhow::Result<()> {
    sni_rejection_over_ipv6("xdp")
}

#[test]
fn unknown_sni_over_ipv6_is_reset_in_the_kernel_at_tc() -> anyhow::Result<()> {
    sni_rejection_over_ipv6("tc")
}

/// An HTTPS server for one name, reached over IPv6 on its listener port and on its node
/// port: the name is served, an unknown name is reset by the kernel before gatewayd
/// accepts anything.
fn sni_rejection_over_ipv6(hook: &str) -> anyhow::Result<()> {
    if skip_unless_root("creates network namespaces and attaches eBPF") {
        return Ok(());
    }
    let net = NetnsPair::with_prefix("v6k-", "sni")?;
    let (gateway6, _) = net.add_ipv6()?;
    let dir = TempDir::new("kernel-ipv6-sni")?;
    let (cert, key) = self_signed(&dir, NAME)?;
    let upstream = Upstream::start(Some(&net.gateway_ns), "127.0.0.1:0", "httpbin")?;
    let port = free_port();
    let config = with_node_port(
        &https_config(port, upstream.addr, &cert, &key),
        port,
        TLS_NODE_PORT,
    );
    dir.write("config.yaml", &config)?;
    let gateway = Gateway::start(
        dir.path(),
        &gateway_args(hook, &net),
        Some(&net.gateway_ns),
        &dir,
    )?;
    let rejected = r#"gateway_kernel_packets_total{outcome="sni_rejected"}"#;
    let accepted = format!("gateway_downstream_connections_total{{port=\"{port}\"}}");

    for to in [port, TLS_NODE_PORT] {
        assert_eq!(
            probe(&net, &gateway6, to, NAME, &cert)?,
            "ok 200",
            "{NAME} over IPv6 to port {to}: {}",
            gateway.stderr()
        );
    }
    let accepts = counter(&gateway, &accepted)?;
    assert_eq!(accepts, 2.0);
    for to in [port, TLS_NODE_PORT] {
        assert_eq!(
            probe(&net, &gateway6, to, "evil.example.net", &cert)?,
            "reset",
            "an unknown name over IPv6 to port {to}"
        );
    }
    assert_eq!(
        counter(&gateway, rejected)?,
        2.0,
        "both reset in the kernel"
    );
    assert_eq!(
        counter(&gateway, &accepted)?,
        accepts,
        "gatewayd accepted neither"
    );
    Ok(())
}
