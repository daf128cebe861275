//! Per-object isolation end to end: a reload in which one tenant's VirtualService is
//! broken still brings everyone else's changes to traffic; the broken object is named in
//! the log, counted in `gateway_config_objects_dropped` and listed in `/config_dump`. A
//! file that is not YAML (nothing says which objects it held) still refuses the reload.

use std::time::{Duration, Instant};

use anyhow::bail;
use gateway_tests::{Gateway, TempDir, Upstream, curl, free_port, service_with_endpoint};

const DROPPED_VS: &str =
    "gateway_config_objects_dropped{group=\"networking.istio.io\",kind=\"VirtualService\"}";

/// The shared part: a Gateway for every host, our own Service (port 80 → `bind_port`)
/// and httpbin.
fn gateway_config(bind_port: u16, upstream: std::net::SocketAddr) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: shared, namespace: default}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 80, name: http, protocol: HTTP}}
    hosts: ["*"]
---
apiVersion: v1
kind: Service
metadata: {{name: istio-ingressgateway, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  ports: [{{name: http2, port: 80, targetPort: {bind_port}}}]
---
{}"#,
        service_with_endpoint("httpbin", 8000, upstream)
    )
}

/// A tenant's VirtualService for `<name>.example.com`, routing each of `prefixes`.
fn tenant(name: &str, prefixes: &[&str]) -> String {
    let matches: Vec<String> = prefixes
        .iter()
        .map(|p| format!("{{uri: {{prefix: {p}}}}}"))
        .collect();
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: {name}, namespace: default}}
spec:
  hosts: ["{name}.example.com"]
  gateways: [shared]
  http:
  - match: [{}]
    route: [{{destination: {{host: httpbin, port: {{number: 8000}}}}}}]
---
"#,
        matches.join(", ")
    )
}

fn status(bind_port: u16, host: &str, path: &str) -> anyhow::Result<u16> {
    let response = curl(
        None,
        &[
            "-H",
            &format!("Host: {host}"),
            &format!("http://127.0.0.1:{bind_port}{path}"),
        ],
    )?;
    Ok(response.status)
}

#[test]
fn a_broken_virtual_service_is_dropped_and_the_other_tenants_changes_are_served()
-> anyhow::Result<()> {
    let upstream = Upstream::start(None, "127.0.0.1:0", "httpbin")?;
    let dir = TempDir::new("isolation")?;
    let config = dir.path().join("config");
    std::fs::create_dir_all(&config)?;
    let bind_port = free_port();
    std::fs::write(
        config.join("gateway.yaml"),
        gateway_config(bind_port, upstream.addr),
    )?;
    let tenants = config.join("tenants.yaml");
    std::fs::write(
        &tenants,
        tenant("alpha", &["/status"]) + &tenant("beta", &["/status"]),
    )?;
    let gateway = Gateway::start(&config, &["--ebpf", "off"], None, &dir)?;
    assert_eq!(status(bind_port, "alpha.example.com", "/headers")?, 404);
    assert_eq!(status(bind_port, "beta.example.com", "/status/200")?, 200);

    // alpha gains a route, gamma arrives, beta breaks (a regex that does not compile).
    let broken_beta = tenant("beta", &["/status"]).replace(
        "{uri: {prefix: /status}}",
        "{uri: {prefix: /status}}, {uri: {regex: \"(\"}}",
    );
    gateway.reload_after(|| {
        gateway_tests::write_atomically(
            &tenants,
            &(tenant("alpha", &["/status", "/headers"])
                + &broken_beta
                + &tenant("gamma", &["/status"])),
        )
    })?;
    assert_eq!(status(bind_port, "alpha.example.com", "/headers")?, 200);
    assert_eq!(status(bind_port, "gamma.example.com", "/status/200")?, 200);
    // The broken object is left out entirely (its hosts get no route).
    assert_eq!(status(bind_port, "beta.example.com", "/status/200")?, 404);
    let log = gateway.stderr();
    assert!(
        log.lines().any(|l| l.contains("WARN")
            && l.contains("object dropped")
            && l.contains("VirtualService default/beta")
            && l.contains("regex")),
        "the log names the dropped object and why:\n{log}"
    );
    assert_eq!(gateway.metric(DROPPED_VS)?, Some(1.0));
    let dump: serde_json::Value =
        serde_json::from_str(&gateway.get(gateway.admin, "/config_dump")?.1)?;
    assert_eq!(dump["report"]["dropped"][0]["object"]["name"], "beta");

    // A file that is not YAML: nothing says what it held, so the reload is refused and
    // the configuration above keeps serving.
    let failures = gateway.reloads("failure")?;
    std::fs::write(config.join("stray.yaml"), "kind: [unclosed\n")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while gateway.reloads("failure")? <= failures {
        if Instant::now() > deadline {
            bail!("the invalid YAML was not refused:\n{}", gateway.stderr());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(status(bind_port, "gamma.example.com", "/status/200")?, 200);
    gateway.reload_after(|| Ok(std::fs::remove_file(config.join("stray.yaml"))?))?;

    // beta fixed: served again, nothing dropped.
    gateway.reload_after(|| {
        gateway_tests::write_atomically(
            &tenants,
            &(tenant("alpha", &["/status", "/headers"]) + &tenant("beta", &["/status"])),
        )
    })?;
    assert_eq!(status(bind_port, "beta.example.com", "/status/200")?, 200);
    assert_eq!(gateway.metric(DROPPED_VS)?, None);
    Ok(())
}
