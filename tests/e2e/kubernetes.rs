//! `gatewayd run --kubernetes` against the fake API server (tests/fake-apiserver): the
//! real binary, kube-rs talking HTTP to a stand-in that speaks the API server's protocol,
//! real upstreams and curl. No real API server can run on these machines; the fake is
//! cross-checked with kubectl and kube-rs in its own tests.

use std::{
    net::SocketAddr,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use fake_apiserver::{FakeApi, Options, Outage};
use gateway_tests::{Gateway, TempDir, Upstream, curl, free_port, httpbin_config};
use serde::Deserialize as _;

use crate::tls::{Key, Pki, tls_secret};

/// Generous: a change reaches traffic in milliseconds (`cargo xtask bench kubernetes`
/// measures it); this only bounds a broken test.
const CONVERGE: Duration = Duration::from_secs(10);

/// A fake cluster and a scratch directory with its kubeconfig.
struct Cluster {
    api: FakeApi,
    dir: TempDir,
    kubeconfig: PathBuf,
    /// An empty configuration directory: everything comes from the cluster.
    config: PathBuf,
}

impl Cluster {
    fn start(label: &str) -> anyhow::Result<Self> {
        let api = FakeApi::start_blocking(Options::default())?;
        let dir = TempDir::new(label)?;
        let kubeconfig = dir.path().join("kubeconfig");
        api.write_kubeconfig(&kubeconfig)?;
        let config = dir.path().join("config");
        std::fs::create_dir_all(&config)?;
        Ok(Cluster {
            api,
            dir,
            kubeconfig,
            config,
        })
    }

    /// Creates or replaces every object of a YAML stream, as `kubectl apply` would.
    fn apply(&self, yaml: &str) -> anyhow::Result<()> {
        for document in serde_yaml::Deserializer::from_str(yaml) {
            let value = serde_yaml::Value::deserialize(document)?;
            if value.is_null() {
                continue;
            }
            let json: serde_json::Value = serde_json::to_value(&value)?;
            self.api
                .apply(json)
                .map_err(|e| anyhow::anyhow!("applying an object: {e}"))?;
        }
        Ok(())
    }

    fn delete(
        &self,
        api_version: &str,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> anyhow::Result<()> {
        self.api
            .delete(api_version, kind, namespace, name)
            .map_err(|e| anyhow::anyhow!("deleting {kind} {namespace}/{name}: {e}"))?;
        Ok(())
    }

    fn gateway_args<'a>(&'a self, extra: &[&'a str]) -> Vec<&'a str> {
        let mut args = vec!["--ebpf", "off", "--kubernetes", "--kubeconfig"];
        args.push(self.kubeconfig.to_str().unwrap_or_default());
        args.extend_from_slice(extra);
        args
    }

    /// gatewayd following this cluster, ready.
    fn gateway(&self, extra: &[&str]) -> anyhow::Result<Gateway> {
        Gateway::start(&self.config, &self.gateway_args(extra), None, &self.dir)
    }
}

/// The status of GET `path` on `host` through the gateway.
fn status(port: u16, host: &str, path: &str) -> anyhow::Result<(u16, String)> {
    let response = curl(
        None,
        &[
            "-H",
            &format!("Host: {host}"),
            &format!("http://127.0.0.1:{port}{path}"),
        ],
    )?;
    Ok((response.status, response.answered_by()))
}

/// Polls until `check` holds, or fails with what it last saw.
fn eventually<T: std::fmt::Debug>(
    what: &str,
    mut probe: impl FnMut() -> anyhow::Result<T>,
    check: impl Fn(&T) -> bool,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + CONVERGE;
    loop {
        let seen = probe();
        match &seen {
            Ok(value) if check(value) => return seen,
            _ if Instant::now() > deadline => bail!("{what}: still {seen:?} after {CONVERGE:?}"),
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

fn httpbin_virtual_service(prefixes: &[&str]) -> String {
    let matches: String = prefixes
        .iter()
        .map(|p| format!("    - uri: {{prefix: {p}}}\n"))
        .collect();
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: httpbin, namespace: default}}
spec:
  hosts: ["httpbin.example.com"]
  gateways: [httpbin-gateway]
  http:
  - match:
{matches}    route:
    - destination: {{host: httpbin, port: {{number: 8000}}}}
"#
    )
}

fn httpbin_slice(upstream: SocketAddr) -> String {
    format!(
        r#"apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: httpbin-1, namespace: default, labels: {{kubernetes.io/service-name: httpbin}}}}
addressType: IPv4
ports: [{{name: http, port: {port}}}]
endpoints:
- addresses: ["{ip}"]
"#,
        port = upstream.port(),
        ip = upstream.ip()
    )
}

#[test]
fn cluster_objects_are_served_and_their_changes_reach_open_traffic() -> anyhow::Result<()> {
    let cluster = Cluster::start("kube-follow")?;
    let one = Upstream::start(None, "127.0.0.1:0", "one")?;
    let two = Upstream::start(None, "127.0.0.1:0", "two")?;
    let port = free_port();
    cluster.apply(&httpbin_config(port, one.addr))?;
    let gateway = cluster.gateway(&[])?;
    assert_eq!(
        status(port, "httpbin.example.com", "/status/200")?,
        (200, "one".into())
    );
    assert_eq!(status(port, "httpbin.example.com", "/anything")?.0, 404);

    // A VirtualService modified: its new route serves.
    cluster.apply(&httpbin_virtual_service(&["/status", "/anything"]))?;
    eventually(
        "the new route",
        || status(port, "httpbin.example.com", "/anything"),
        |s| s.0 == 200,
    )?;
    // An EndpointSlice moved: the Service's traffic follows.
    cluster.apply(&httpbin_slice(two.addr))?;
    eventually(
        "the moved endpoint",
        || status(port, "httpbin.example.com", "/status/200"),
        |s| s.1 == "two",
    )?;

    // Gateway API objects, on a second port: a GatewayClass of ours, a Gateway, a route.
    let api_port = free_port();
    cluster.apply(&format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: istio}}
spec: {{controllerName: istio.io/gateway-controller}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: web, namespace: default}}
spec:
  gatewayClassName: istio
  listeners:
  - {{name: http, port: {api_port}, protocol: HTTP}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: web, namespace: default}}
spec:
  parentRefs: [{{name: web}}]
  hostnames: ["web.example.com"]
  rules:
  - backendRefs: [{{name: httpbin, port: 8000}}]
"#
    ))?;
    eventually(
        "the HTTPRoute",
        || status(api_port, "web.example.com", "/get"),
        |s| s.0 == 200,
    )?;
    cluster.delete(
        "gateway.networking.k8s.io/v1",
        "HTTPRoute",
        "default",
        "web",
    )?;
    eventually(
        "the deleted HTTPRoute",
        || status(api_port, "web.example.com", "/get"),
        |s| s.0 == 404,
    )?;

    // A deleted VirtualService stops applying; its host answers 404.
    cluster.delete(
        "networking.istio.io/v1",
        "VirtualService",
        "default",
        "httpbin",
    )?;
    eventually(
        "the deleted VirtualService",
        || status(port, "httpbin.example.com", "/status/200"),
        |s| s.0 == 404,
    )?;
    // The Service deleted: a route to it answers 503 (no such cluster / no endpoints).
    cluster.apply(&httpbin_virtual_service(&["/status"]))?;
    eventually(
        "the route back",
        || status(port, "httpbin.example.com", "/status/200"),
        |s| s.0 == 200,
    )?;
    cluster.delete("v1", "Service", "default", "httpbin")?;
    eventually(
        "the deleted Service",
        || status(port, "httpbin.example.com", "/status/200"),
        |s| s.0 == 503,
    )?;

    let dump: serde_json::Value =
        serde_json::from_str(&gateway.get(gateway.admin, "/config_dump")?.1)?;
    let watches = dump["kubernetes"]["watches"]
        .as_array()
        .context("watches in /config_dump")?;
    assert!(
        watches
            .iter()
            .all(|w| w["synced"] == true && w["healthy"] == true),
        "{watches:?}"
    );
    Ok(())
}

#[test]
fn readiness_waits_for_the_first_list_and_an_outage_keeps_traffic_flowing() -> anyhow::Result<()> {
    let cluster = Cluster::start("kube-outage")?;
    let one = Upstream::start(None, "127.0.0.1:0", "one")?;
    let port = free_port();
    cluster.apply(&httpbin_config(port, one.addr))?;
    cluster.api.set_outage(Outage::Unavailable)?;
    let mut gateway = Gateway::spawn(
        &cluster.config,
        &cluster.gateway_args(&[]),
        None,
        &cluster.dir,
        |_| {},
    )?;
    // Up, but not ready: nothing has been listed yet.
    let readiness = eventually(
        "the readiness endpoint",
        || gateway.get(gateway.readiness, "/healthz/ready"),
        |(status, _)| *status != 0,
    )?;
    assert_eq!(readiness.0, 503);
    cluster.api.set_outage(Outage::None)?;
    gateway.wait_ready()?;
    assert_eq!(status(port, "httpbin.example.com", "/status/200")?.0, 200);

    // The API server goes away: the last snapshot keeps serving, the watches say so.
    cluster.api.set_outage(Outage::Refuse)?;
    let sample = r#"gateway_kubernetes_watch_healthy{kind="VirtualService.networking.istio.io",namespace=""}"#;
    eventually(
        "the watch's health",
        || gateway.metric(sample),
        |v| *v == Some(0.0),
    )?;
    for _ in 0..5 {
        assert_eq!(status(port, "httpbin.example.com", "/status/200")?.0, 200);
    }
    assert_eq!(gateway.get(gateway.readiness, "/healthz/ready")?.0, 200);
    // What changed meanwhile arrives when it is back.
    cluster.apply(&httpbin_virtual_service(&["/status", "/anything"]))?;
    cluster.api.set_outage(Outage::None)?;
    eventually(
        "the change made during the outage",
        || status(port, "httpbin.example.com", "/anything"),
        |s| s.0 == 200,
    )?;
    eventually(
        "the watch's health",
        || gateway.metric(sample),
        |v| *v == Some(1.0),
    )?;
    Ok(())
}

#[test]
fn a_dropped_watch_resumes_and_a_compacted_one_relists() -> anyhow::Result<()> {
    let cluster = Cluster::start("kube-resume")?;
    let one = Upstream::start(None, "127.0.0.1:0", "one")?;
    let port = free_port();
    cluster.apply(&httpbin_config(port, one.addr))?;
    let _gateway = cluster.gateway(&[])?;
    let vs_requests = |verb: &str| {
        cluster
            .api
            .requests()
            .into_iter()
            .filter(|r| r.verb == verb && r.path.ends_with("/virtualservices"))
            .collect::<Vec<_>>()
    };

    // The stream ends (an API server restart, an idle load balancer): the watch resumes
    // from where it was, without listing again.
    cluster.api.clear_requests();
    cluster.api.drop_watches();
    cluster.apply(&httpbin_virtual_service(&["/status", "/anything"]))?;
    eventually(
        "the change after the drop",
        || status(port, "httpbin.example.com", "/anything"),
        |s| s.0 == 200,
    )?;
    assert!(
        vs_requests("list").is_empty(),
        "relisted: {:?}",
        vs_requests("list")
    );
    let resumed = vs_requests("watch");
    assert!(
        resumed.iter().any(|r| r
            .resource_version
            .as_deref()
            .is_some_and(|v| !v.is_empty() && v != "0")),
        "{resumed:?}"
    );

    // Away while the history is compacted and an object is deleted: the watch gets 410
    // Gone, lists again, and notices the deletion it never saw an event for.
    cluster.api.set_outage(Outage::Refuse)?;
    cluster.delete(
        "networking.istio.io/v1",
        "VirtualService",
        "default",
        "httpbin",
    )?;
    cluster.api.compact();
    cluster.api.clear_requests();
    cluster.api.set_outage(Outage::None)?;
    eventually(
        "the deletion made during the gap",
        || status(port, "httpbin.example.com", "/status/200"),
        |s| s.0 == 404,
    )?;
    assert!(!vs_requests("list").is_empty(), "no relist after 410");
    Ok(())
}

#[test]
fn a_credential_secret_created_later_serves_https_and_its_renewal_swaps_it() -> anyhow::Result<()> {
    let cluster = Cluster::start("kube-secret")?;
    let one = Upstream::start(None, "127.0.0.1:0", "one")?;
    let port = free_port();
    cluster.apply(&format!(
        r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: web, namespace: default}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 443, name: https, protocol: HTTPS}}
    hosts: ["secure.example.com"]
    tls: {{mode: SIMPLE, credentialName: secure-cert}}
---
apiVersion: v1
kind: Service
metadata: {{name: istio-ingressgateway, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  ports: [{{name: https, port: 443, targetPort: {port}}}]
---
{}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: secure, namespace: default}}
spec:
  hosts: ["secure.example.com"]
  gateways: [web]
  http:
  - route:
    - destination: {{host: httpbin, port: {{number: 8000}}}}
"#,
        gateway_tests::service_with_endpoint("httpbin", 8000, one.addr).trim_end_matches("---\n")
    ))?;
    let _gateway = cluster.gateway(&[])?;
    let first = Pki::new(cluster.dir.path(), "first-ca")?;
    let second = Pki::new(cluster.dir.path(), "second-ca")?;
    let (first_ca, second_ca) = (first.path("first-ca.crt"), second.path("second-ca.crt"));
    let https = |ca: &str| -> anyhow::Result<u16> {
        let response = curl(
            None,
            &[
                "--resolve",
                &format!("secure.example.com:{port}:127.0.0.1"),
                "--cacert",
                ca,
                &format!("https://secure.example.com:{port}/get"),
            ],
        )?;
        Ok(response.status)
    };
    // No Secret yet: nothing serves that host.
    assert_ne!(https(&first_ca).unwrap_or(0), 200);

    let (cert, key) = first.issue(
        "secure1",
        "secure.example.com",
        "DNS:secure.example.com",
        Key::EcP256Pkcs8,
        false,
    )?;
    cluster.apply(&tls_secret(
        "secure-cert",
        "istio-system",
        &cert,
        &key,
        None,
    ))?;
    eventually(
        "HTTPS with the new Secret",
        || https(&first_ca),
        |s| *s == 200,
    )?;

    // Renewed by cert-manager: a certificate from another CA replaces it.
    let (cert, key) = second.issue(
        "secure2",
        "secure.example.com",
        "DNS:secure.example.com",
        Key::EcP256Pkcs8,
        false,
    )?;
    cluster.apply(&tls_secret(
        "secure-cert",
        "istio-system",
        &cert,
        &key,
        None,
    ))?;
    eventually(
        "HTTPS with the renewed Secret",
        || https(&second_ca),
        |s| *s == 200,
    )?;
    assert_ne!(
        https(&first_ca).unwrap_or(0),
        200,
        "the old certificate is still served"
    );
    Ok(())
}

#[test]
fn a_malformed_route_is_dropped_while_the_others_serve() -> anyhow::Result<()> {
    let cluster = Cluster::start("kube-malformed")?;
    let one = Upstream::start(None, "127.0.0.1:0", "one")?;
    let port = free_port();
    cluster.apply(&httpbin_config(port, one.addr))?;
    let gateway = cluster.gateway(&[])?;
    // Another tenant's VirtualService with a field of the wrong type.
    cluster.apply(
        r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: broken, namespace: team-b}
spec:
  hosts: ["broken.example.com"]
  gateways: [default/httpbin-gateway]
  http:
  - route:
    - destination: {host: httpbin.default.svc.cluster.local, port: {number: eighty}}
"#,
    )?;
    // Then a good change: it serves although the broken object is still there.
    cluster.apply(&httpbin_virtual_service(&["/status", "/anything"]))?;
    eventually(
        "the good change",
        || status(port, "httpbin.example.com", "/anything"),
        |s| s.0 == 200,
    )?;
    let stderr = gateway.stderr();
    assert!(
        stderr.contains(
            "VirtualService team-b/broken: spec.http[0].route[0].destination.port.number"
        ),
        "{stderr}"
    );
    Ok(())
}
