//! AuthorizationPolicy source rules in the kernel filter, end to end in two network
//! namespaces: the client namespace has two addresses, and a denied one's SYN is dropped
//! before gatewayd ever accepts (curl times out connecting; no connection is counted),
//! while the other is served. A policy userspace alone can decide stays there. Root only.

use anyhow::Context as _;
use gateway_tests::{
    CurlResponse, Gateway, NetnsPair, TempDir, Upstream, curl, free_port, skip_unless_root,
    write_atomically,
};

use crate::{
    authz::{config, decisions, policy},
    kernel::run,
};

/// The second client address, beside `NetnsPair::client_ip`.
const OTHER_CLIENT: &str = "10.203.0.3";

#[test]
fn denied_sources_never_reach_accept_at_xdp() -> anyhow::Result<()> {
    source_rules("xdp")
}

#[test]
fn denied_sources_never_reach_accept_at_tc() -> anyhow::Result<()> {
    source_rules("tc")
}

fn source_rules(hook: &str) -> anyhow::Result<()> {
    if skip_unless_root("creates network namespaces and attaches eBPF") {
        return Ok(());
    }
    let net = NetnsPair::new("ipauthz")?;
    let client_if = net.gateway_if.replacen("vgw", "vcl", 1);
    run(
        "ip",
        &[
            "-n",
            &net.client_ns,
            "addr",
            "add",
            &format!("{OTHER_CLIENT}/24"),
            "dev",
            &client_if,
        ],
    )?;
    let dir = TempDir::new("kernel-authz")?;
    let upstream = Upstream::start(Some(&net.gateway_ns), "127.0.0.1:0", "httpbin")?;
    let (http_port, tcp_port) = (free_port(), free_port());
    let write = |policies: String| {
        write_atomically(
            &dir.path().join("config.yaml"),
            &config(http_port, tcp_port, upstream.addr, &policies),
        )
    };
    let deny_other = policy(
        "deny-other",
        "istio-system",
        &format!("action: DENY\nrules: [{{from: [{{source: {{ipBlocks: [{OTHER_CLIENT}]}}}}]}}]"),
    );
    write(deny_other)?;
    let args = [
        "--ebpf",
        "on",
        "--ebpf-hook",
        hook,
        "--interface",
        &net.gateway_if,
    ];
    let gateway = Gateway::start(dir.path(), &args, Some(&net.gateway_ns), &dir)?;
    let from = |source: &str| -> anyhow::Result<CurlResponse> {
        let url = format!("http://{}:{tcp_port}/get", net.gateway_ip);
        curl(
            Some(&net.client_ns),
            &["--interface", source, "--connect-timeout", "3", &url],
        )
    };
    // curl's exit 28 is a connect timeout: no SYN-ACK ever came back.
    let timed_out = |source: &str| match from(source) {
        Ok(r) => Err(anyhow::anyhow!("{source} was answered: {r:?}")),
        Err(e) => Ok(format!("{e:#}").contains("(28)")),
    };
    let dropped = format!("gateway_kernel_source_denied_syns_total{{port=\"{tcp_port}\"}}");
    let accepted = format!("gateway_downstream_connections_total{{port=\"{tcp_port}\"}}");
    let count =
        |sample: &str| -> anyhow::Result<f64> { Ok(gateway.metric(sample)?.unwrap_or(0.0)) };

    // DENY by source address: the client's own address is served, the other's SYNs are
    // dropped in the kernel, and gatewayd neither accepted nor decided anything for them.
    assert_eq!(
        from(&net.client_ip)?.answered_by(),
        "httpbin",
        "{}",
        gateway.stderr()
    );
    assert!(
        timed_out(OTHER_CLIENT)?,
        "a denied source's connect times out"
    );
    assert!(count(&dropped)? >= 1.0, "the dropped SYNs are counted");
    assert_eq!(
        count(&accepted)?,
        1.0,
        "only the allowed connection reached accept"
    );
    assert_eq!(decisions(&gateway, "DENY", "deny")?, 0.0);

    // An allow list (reloaded): only the other address may connect now.
    let allow_other = policy(
        "allow-other",
        "istio-system",
        &format!(
            "action: ALLOW\nrules: [{{from: [{{source: {{ipBlocks: [{OTHER_CLIENT}/32]}}}}]}}]"
        ),
    );
    gateway.reload_after(|| write(allow_other))?;
    assert_eq!(from(OTHER_CLIENT)?.answered_by(), "httpbin");
    let before = count(&dropped)?;
    assert!(
        timed_out(&net.client_ip)?,
        "a source off the allow list times out"
    );
    assert!(count(&dropped)? > before);
    assert_eq!(count(&accepted)?, 2.0);

    // A DENY with a header condition cannot be decided from the address: on the TCP port
    // userspace denies the other address (the header cannot be read there, so the rule
    // matches more, as Istio builds it), after accepting its connection; the kernel
    // drops nothing.
    let userspace_only = policy(
        "deny-other-by-header",
        "istio-system",
        &format!(
            "action: DENY\nrules: [{{from: [{{source: {{ipBlocks: [{OTHER_CLIENT}]}}}}], when: [{{key: 'request.headers[x-test]', values: [a]}}]}}]"
        ),
    );
    gateway.reload_after(|| write(userspace_only))?;
    let before = count(&dropped)?;
    assert!(
        !timed_out(OTHER_CLIENT)?,
        "the connection is accepted and closed by gatewayd"
    );
    assert_eq!(count(&dropped)?, before);
    assert_eq!(count(&accepted)?, 3.0);
    assert!(decisions(&gateway, "DENY", "deny")? >= 1.0);
    assert_eq!(
        from(&net.client_ip)?.answered_by(),
        "httpbin",
        "the other address is still served"
    );
    // The HTTP port's requests are unaffected by the header rule without the header.
    let url = format!("http://{}:{http_port}/get", net.gateway_ip);
    let response = curl(Some(&net.client_ns), &["--interface", OTHER_CLIENT, &url])
        .context("HTTP from the other address")?;
    assert_eq!(response.answered_by(), "httpbin");
    Ok(())
}
