//! Node-port mode end to end, in three network namespaces: the client, this node (the
//! gateway's), and "another node" routed through this one, where kube-proxy's
//! `externalTrafficPolicy: Cluster` rule may send a node-port connection. Whatever
//! kube-proxy's rules say, a node-port connection to this node is served by this node's
//! gatewayd with the client's own address; when gatewayd dies, kube-proxy's path works
//! as before. Root only (namespaces, iptables, eBPF).

use std::process::Command;

use anyhow::bail;
use gateway_tests::{
    CurlResponse, Gateway, NetnsPair, TempDir, Upstream, curl, free_port, httpbin_config,
    skip_unless_root,
};

use crate::kernel::RoutedPod;

const NODE_PORT: u16 = 30080;
const HOST: &str = "Host: httpbin.example.com";

/// The other node's gateway, as kube-proxy's Cluster rule would pick it.
const OTHER_NODE: &str = "other-node";

/// `iptables` in the gateway's namespace, as kube-proxy runs it on the node.
fn iptables(net: &NetnsPair, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(["netns", "exec", &net.gateway_ns, "iptables"])
        .args(args)
        .output()?;
    if !out.status.success() {
        bail!(
            "iptables {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// kube-proxy's node-port rule, reduced to what matters here: DNAT to `to`.
fn kube_proxy_dnat(net: &NetnsPair, to: &str) -> anyhow::Result<()> {
    let port = NODE_PORT.to_string();
    iptables(
        net,
        &[
            "-t",
            "nat",
            "-A",
            "PREROUTING",
            "-p",
            "tcp",
            "--dport",
            &port,
            "-j",
            "DNAT",
            "--to-destination",
            to,
        ],
    )
}

fn remove_rules(net: &NetnsPair) -> anyhow::Result<()> {
    iptables(net, &["-t", "nat", "-F", "PREROUTING"])
}

fn get(net: &NetnsPair, port: u16) -> anyhow::Result<CurlResponse> {
    let url = format!("http://{}:{port}/status/200", net.gateway_ip);
    curl(Some(&net.client_ns), &["-H", HOST, &url])
}

/// Who answered: our gatewayd proxies to httpbin and adds the client's address.
fn served_here(net: &NetnsPair, gateway: &Gateway, why: &str) -> anyhow::Result<()> {
    let response = get(net, NODE_PORT)?;
    assert_eq!(response.status, 200, "{why}: {}", gateway.stderr());
    let body = response.json()?;
    assert_eq!(
        body["upstream"], "httpbin",
        "{why}: served by this node's gateway"
    );
    assert_eq!(
        body["headers"]["x-forwarded-for"],
        net.client_ip.as_str(),
        "{why}: the client's own address"
    );
    Ok(())
}

fn translated(gateway: &Gateway) -> anyhow::Result<f64> {
    Ok(gateway
        .metric(r#"gateway_kernel_packets_total{outcome="node_port_translated"}"#)?
        .unwrap_or(0.0))
}

/// Node-port connections reach this node's gatewayd with no kube-proxy rules, with a
/// `Local`-style rule (DNAT to our own listener) and with a `Cluster`-style rule that
/// DNATs them to another node; other ports stay untouched. After `kill -9` nothing is
/// translated or steered: the node port is refused, and with kube-proxy's rule the
/// other node serves it, as it would without gatewayd.
#[test]
fn node_ports_are_served_here_whatever_kube_proxy_decided() -> anyhow::Result<()> {
    served_whatever_kube_proxy_decided("xdp")
}

/// The same with the filter at TC ingress too: the translation is attached first on the
/// hook and lets the filter run after it (which then sees the listener's port).
#[test]
fn node_ports_are_translated_ahead_of_a_tc_filter() -> anyhow::Result<()> {
    served_whatever_kube_proxy_decided("tc")
}

fn served_whatever_kube_proxy_decided(hook: &str) -> anyhow::Result<()> {
    if skip_unless_root("creates network namespaces, iptables rules and attaches eBPF") {
        return Ok(());
    }
    let net = NetnsPair::new("np")?;
    let other = RoutedPod::new(&net)?;
    let dir = TempDir::new("kernel-nodeport")?;
    let upstream = Upstream::start(Some(&net.gateway_ns), "127.0.0.1:0", "httpbin")?;
    let other_gateway = Upstream::start(Some(&other.ns), &format!("{}:0", other.ip), OTHER_NODE)?;
    let bind_port = free_port();
    let config = httpbin_config(bind_port, upstream.addr).replace(
        &format!("targetPort: {bind_port}}}]"),
        &format!("targetPort: {bind_port}, nodePort: {NODE_PORT}}}]"),
    );
    assert!(config.contains("nodePort"), "{config}");
    dir.write("config.yaml", &config)?;
    let args = [
        "--ebpf",
        "on",
        "--ebpf-hook",
        hook,
        "--node-ports",
        "--interface",
        &net.gateway_if,
    ];
    let cluster_rule = other_gateway.addr.to_string();
    let local_rule = format!("{}:{bind_port}", net.gateway_ip);

    let mut gateway = Gateway::start(dir.path(), &args, Some(&net.gateway_ns), &dir)?;
    served_here(&net, &gateway, "no kube-proxy rules")?;
    assert!(
        get(&net, NODE_PORT + 1).is_err(),
        "other ports are untouched (nothing listens there)"
    );

    kube_proxy_dnat(&net, &local_rule)?;
    served_here(&net, &gateway, "Local: DNAT to this node's listener")?;
    remove_rules(&net)?;

    kube_proxy_dnat(&net, &cluster_rule)?;
    served_here(&net, &gateway, "Cluster: DNAT to another node")?;
    assert_eq!(translated(&gateway)?, 3.0, "one translation per connection");
    // The filter ran on every connection, and where it runs after the translation (TC)
    // it saw the listener's port.
    let seen_on = |port: u16| {
        gateway
            .metric(&format!(
                "gateway_kernel_port_packets_total{{port=\"{port}\"}}"
            ))
            .map(|v| v.unwrap_or(0.0))
    };
    let filtered_on = if hook == "tc" { bind_port } else { NODE_PORT };
    assert!(seen_on(filtered_on)? > 0.0, "{}", gateway.stderr());
    // A connection straight to the listener is not a node-port connection.
    let direct = get(&net, bind_port)?;
    assert_eq!(direct.status, 200);
    assert_eq!(translated(&gateway)?, 3.0);

    // kill -9: the links die with the process. kube-proxy's path is back, unchanged.
    gateway.process.child.kill()?;
    gateway.process.child.wait()?;
    let response = get(&net, NODE_PORT)?;
    assert_eq!(response.status, 200);
    assert_eq!(
        response.json()?["upstream"],
        OTHER_NODE,
        "kube-proxy's DNAT decides again"
    );
    remove_rules(&net)?;
    assert!(
        get(&net, NODE_PORT).is_err(),
        "nothing translates or steers any more"
    );
    Ok(())
}
