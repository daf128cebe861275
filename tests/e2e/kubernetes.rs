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
use fake_apiserver::{Crd, FakeApi, Options, Outage};
use gateway_tests::{Gateway, TempDir, Upstream, curl, free_port, gatewayd_bin, httpbin_config};
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
        Self::start_with(label, Options::default())
    }

    fn start_with(label: &str, options: Options) -> anyhow::Result<Self> {
        let api = FakeApi::start_blocking(options)?;
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
    cluster.apply(&web_route(api_port))?;
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

    // The credential Secret, issued by `pki`, created or replaced as cert-manager does.
    let issue = |pki: &Pki, name: &str| -> anyhow::Result<()> {
        let sans = "DNS:secure.example.com";
        let (cert, key) = pki.issue(name, "secure.example.com", sans, Key::EcP256Pkcs8, false)?;
        cluster.apply(&tls_secret(
            "secure-cert",
            "istio-system",
            &cert,
            &key,
            None,
        ))
    };
    issue(&first, "secure1")?;
    eventually(
        "HTTPS with the new Secret",
        || https(&first_ca),
        |s| *s == 200,
    )?;

    // Renewed: a certificate from another CA replaces it.
    issue(&second, "secure2")?;
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
        stderr.contains("object dropped from the configuration")
            && stderr.contains("VirtualService team-b/broken")
            && stderr.contains("spec.http[0].route[0].destination.port.number"),
        "{stderr}"
    );
    let sample =
        r#"gateway_config_objects_dropped{group="networking.istio.io",kind="VirtualService"}"#;
    assert_eq!(gateway.metric(sample)?, Some(1.0));
    Ok(())
}

fn web_route(api_port: u16) -> String {
    format!(
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
    )
}

#[test]
fn a_kind_the_cluster_lacks_or_forbids_does_not_hold_the_rest_back() -> anyhow::Result<()> {
    // No HTTPRoute CRD yet, and TCPRoutes are forbidden to us.
    let crds: Vec<Crd> = Crd::ALL
        .into_iter()
        .filter(|c| *c != Crd::HttpRoute)
        .collect();
    let cluster = Cluster::start_with("kube-missing", Options::with_crds(&crds))?;
    cluster
        .api
        .fail("gateway.networking.k8s.io/v1alpha2", "TCPRoute", Some(403))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let one = Upstream::start(None, "127.0.0.1:0", "one")?;
    let port = free_port();
    cluster.apply(&httpbin_config(port, one.addr))?;
    let gateway = cluster.gateway(&[])?;
    assert_eq!(status(port, "httpbin.example.com", "/status/200")?.0, 200);
    let sample = r#"gateway_kubernetes_watch_healthy{kind="TCPRoute.gateway.networking.k8s.io",namespace=""}"#;
    assert_eq!(gateway.metric(sample)?, Some(0.0));
    let stderr = gateway.stderr();
    assert!(
        stderr.contains("the cluster does not serve this kind") && stderr.contains("HTTPRoute"),
        "{stderr}"
    );

    // The CRD is installed: discovery finds it and its routes serve.
    cluster.api.install_crd(Crd::HttpRoute);
    let api_port = free_port();
    cluster.apply(&web_route(api_port))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while status(api_port, "web.example.com", "/get")
        .map(|s| s.0)
        .unwrap_or(0)
        != 200
    {
        if Instant::now() > deadline {
            bail!("the new CRD's route is not served:\n{}", gateway.stderr());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

#[test]
fn validate_reads_the_cluster_and_names_objects_by_kind_namespace_and_name() -> anyhow::Result<()> {
    let cluster = Cluster::start("kube-validate")?;
    let one = Upstream::start(None, "127.0.0.1:0", "one")?;
    cluster.apply(&httpbin_config(free_port(), one.addr))?;
    cluster.apply(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: typo, namespace: team-a}
spec:
  parentRefs: [{name: web, namespace: default}]
  rules:
  - matches: [{path: {type: PathPrefix, value: 7}}]
    backendRefs: [{name: httpbin, port: eighty}]
"#,
    )?;
    let output = std::process::Command::new(gatewayd_bin())
        .args(["validate", "--kubernetes", "--kubeconfig"])
        .arg(&cluster.kubeconfig)
        .output()?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("error: HTTPRoute team-a/typo: spec.rules[0]"),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

/// Our Service `name` in istio-system for the pods labelled `app: name`: port 80 → `bind`,
/// reachable at an external IP (what Gateway status reports as the address).
fn own_service(name: &str, bind: u16) -> String {
    format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: istio-system}}
spec:
  selector: {{app: {name}}}
  externalIPs: ["192.0.2.10"]
  ports: [{{name: http, port: 80, targetPort: {bind}}}]
---
"#
    )
}

fn status_route(name: &str, host: &str, backend: &str, generation_marker: &str) -> String {
    format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {name}, namespace: default, labels: {{marker: "{generation_marker}"}}}}
spec:
  parentRefs: [{{name: web}}]
  hostnames: ["{host}"]
  rules:
  - backendRefs: [{{name: {backend}, port: 8000}}]
status:
  parents:
  - parentRef: {{name: elsewhere}}
    controllerName: example.com/another-controller
    conditions:
    - {{type: Accepted, status: "True", reason: Accepted, message: "", observedGeneration: 1, lastTransitionTime: "2026-01-01T00:00:00Z"}}
---
"#
    )
}

/// The object's status entry written by us for its parent `web` (routes).
fn our_parent(route: &serde_json::Value) -> Option<&serde_json::Value> {
    route["status"]["parents"]
        .as_array()?
        .iter()
        .find(|p| p["controllerName"] == "gatewayd.dev/gateway-controller")
}

fn condition<'a>(conditions: &'a serde_json::Value, kind: &str) -> Option<&'a serde_json::Value> {
    conditions.as_array()?.iter().find(|c| c["type"] == kind)
}

#[test]
fn gateway_api_status_is_written_by_the_leader_alone_and_outlives_it() -> anyhow::Result<()> {
    let cluster = Cluster::start("kube-status")?;
    let one = Upstream::start(None, "127.0.0.1:0", "one")?;
    let (bind_a, bind_b) = (free_port(), free_port());
    cluster.apply(&format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: gatewayd}}
spec: {{controllerName: gatewayd.dev/gateway-controller}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: web, namespace: default}}
spec:
  gatewayClassName: gatewayd
  listeners:
  - {{name: http, port: 80, protocol: HTTP}}
---
{}{}{}{}{}"#,
        own_service("gw-a", bind_a),
        own_service("gw-b", bind_b),
        gateway_tests::service_with_endpoint("httpbin", 8000, one.addr),
        status_route("web", "web.example.com", "httpbin", "1"),
        status_route("dangling", "dangling.example.com", "nothing-here", "1"),
    ))?;
    // A malformed route (a path that is not a string): dropped, told so in its status.
    cluster.apply(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: broken, namespace: default}
spec:
  parentRefs: [{name: web}]
  rules:
  - matches: [{path: {type: PathPrefix, value: 7}}]
    backendRefs: [{name: httpbin, port: 8000}]
"#,
    )?;
    // Two pods of the same gateway (each with its own Service, so both can bind here).
    let mut a = cluster.gateway(&["--selector", "app=gw-a"])?;
    let b = cluster.gateway(&["--selector", "app=gw-b"])?;
    assert_eq!(status(bind_a, "web.example.com", "/get")?.0, 200);
    assert_eq!(status(bind_b, "web.example.com", "/get")?.0, 200);

    let route = |name: &str| -> anyhow::Result<serde_json::Value> {
        cluster
            .api
            .get("gateway.networking.k8s.io/v1", "HTTPRoute", "default", name)
            .context("route gone")
    };
    let web = eventually(
        "the route's status",
        || route("web"),
        |r| our_parent(r).is_some(),
    )?;
    let ours = our_parent(&web).context("our entry")?;
    let accepted = condition(&ours["conditions"], "Accepted").context("Accepted")?;
    assert_eq!(accepted["status"], "True", "{web}");
    assert_eq!(
        accepted["observedGeneration"], web["metadata"]["generation"],
        "{web}"
    );
    assert_eq!(
        condition(&ours["conditions"], "ResolvedRefs").map(|c| &c["status"]),
        Some(&"True".into())
    );
    assert!(
        web["status"]["parents"].as_array().is_some_and(|p| p
            .iter()
            .any(|p| p["controllerName"] == "example.com/another-controller")),
        "another controller's entry was dropped: {web}"
    );
    let dangling = eventually(
        "the dangling route's status",
        || route("dangling"),
        |r| our_parent(r).is_some(),
    )?;
    let resolved = condition(
        &our_parent(&dangling).context("entry")?["conditions"],
        "ResolvedRefs",
    )
    .cloned();
    assert_eq!(
        resolved.as_ref().map(|c| (&c["status"], &c["reason"])),
        Some((&"False".into(), &"BackendNotFound".into())),
        "{dangling}"
    );

    let broken = eventually(
        "the malformed route's status",
        || route("broken"),
        |r| our_parent(r).is_some(),
    )?;
    let accepted = condition(
        &our_parent(&broken).context("entry")?["conditions"],
        "Accepted",
    )
    .context("Accepted")?;
    assert_eq!(accepted["status"], "False", "{broken}");
    assert!(
        accepted["message"]
            .as_str()
            .is_some_and(|m| m.contains("spec.rules[0].matches[0].path.value")),
        "{broken}"
    );

    let gateway = cluster
        .api
        .get("gateway.networking.k8s.io/v1", "Gateway", "default", "web")
        .context("gateway")?;
    assert_eq!(
        gateway["status"]["addresses"][0]["value"], "192.0.2.10",
        "{gateway}"
    );
    assert_eq!(
        condition(&gateway["status"]["conditions"], "Programmed").map(|c| &c["status"]),
        Some(&"True".into()),
        "{gateway}"
    );
    assert_eq!(
        gateway["status"]["listeners"][0]["attachedRoutes"], 2,
        "{gateway}"
    );
    let class = cluster
        .api
        .get(
            "gateway.networking.k8s.io/v1",
            "GatewayClass",
            "",
            "gatewayd",
        )
        .context("class")?;
    assert_eq!(
        condition(&class["status"]["conditions"], "Accepted").map(|c| &c["status"]),
        Some(&"True".into()),
        "{class}"
    );

    // Exactly one of them leads, and only it writes.
    let leads = |g: &Gateway| -> anyhow::Result<bool> {
        Ok(g.metric("gateway_status_leader")? == Some(1.0))
    };
    let (a_leads, b_leads) = (leads(&a)?, leads(&b)?);
    assert!(a_leads != b_leads, "leaders: a {a_leads}, b {b_leads}");
    let written = r#"gateway_status_writes_total{result="written"}"#;
    let follower = if a_leads { &b } else { &a };
    assert_eq!(follower.metric(written)?.unwrap_or(0.0), 0.0);

    // A recompile that changes nothing for these objects writes nothing.
    let leader = if a_leads { &a } else { &b };
    let before = route("web")?["metadata"]["resourceVersion"].clone();
    let unchanged = r#"gateway_status_writes_total{result="unchanged"}"#;
    let seen = leader.metric(unchanged)?.unwrap_or(0.0);
    cluster.apply(&gateway_tests::service("unrelated", 8000, "http"))?;
    eventually(
        "a status pass after the recompile",
        || leader.metric(unchanged),
        |v| v.unwrap_or(0.0) > seen,
    )?;
    assert_eq!(
        route("web")?["metadata"]["resourceVersion"],
        before,
        "status rewritten with nothing changed"
    );

    // The leader dies without releasing: the other takes over and keeps status current.
    let (survivor, killed) = if a_leads {
        a.process.child.kill()?;
        (&b, "a")
    } else {
        drop(b);
        (&a, "b")
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !leads(survivor)? {
        if Instant::now() > deadline {
            bail!(
                "no take-over after {killed} was killed:\n{}",
                survivor.stderr()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    cluster.apply(&status_route("web", "web2.example.com", "httpbin", "2"))?;
    let generation = route("web")?["metadata"]["generation"].clone();
    eventually(
        "status for the new generation",
        || route("web"),
        |r| {
            our_parent(r)
                .and_then(|p| condition(&p["conditions"], "Accepted"))
                .is_some_and(|c| c["observedGeneration"] == generation)
        },
    )?;
    Ok(())
}

#[test]
fn namespace_labels_and_reference_grants_from_the_cluster_admit_routes() -> anyhow::Result<()> {
    let cluster = Cluster::start("kube-namespaces")?;
    let one = Upstream::start(None, "127.0.0.1:0", "one")?;
    let port = free_port();
    cluster.apply(&format!(
        r#"apiVersion: v1
kind: Namespace
metadata: {{name: shop}}
---
apiVersion: gateway.networking.k8s.io/v1
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
  - name: http
    port: {port}
    protocol: HTTP
    allowedRoutes:
      namespaces: {{from: Selector, selector: {{matchLabels: {{expose: "yes"}}}}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: shop, namespace: shop}}
spec:
  parentRefs: [{{name: web, namespace: default}}]
  hostnames: ["shop.example.com"]
  rules:
  - backendRefs: [{{name: httpbin, namespace: default, port: 8000}}]
---
{}"#,
        gateway_tests::service_with_endpoint("httpbin", 8000, one.addr).trim_end_matches("---\n")
    ))?;
    let _gateway = cluster.gateway(&[])?;
    // The shop namespace is not selected yet.
    assert_eq!(status(port, "shop.example.com", "/get")?.0, 404);
    cluster.apply(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, labels: {expose: \"yes\"}}\n",
    )?;
    // Attached now, but its backend is in another namespace with no grant: 500.
    eventually(
        "the selected namespace's route",
        || status(port, "shop.example.com", "/get"),
        |s| s.0 == 500,
    )?;
    cluster.apply(
        r#"apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {name: shop-to-httpbin, namespace: default}
spec:
  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: shop}]
  to: [{group: "", kind: Service}]
"#,
    )?;
    eventually(
        "the granted backend",
        || status(port, "shop.example.com", "/get"),
        |s| s.0 == 200,
    )?;
    // The label goes: the route no longer attaches.
    cluster.apply("apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n")?;
    eventually(
        "the unselected namespace",
        || status(port, "shop.example.com", "/get"),
        |s| s.0 == 404,
    )?;
    Ok(())
}

#[test]
fn service_entries_destination_rules_tcp_routes_and_classes_from_the_cluster() -> anyhow::Result<()>
{
    let cluster = Cluster::start("kube-kinds")?;
    let one = Upstream::start(None, "127.0.0.1:0", "one")?;
    let two = Upstream::start(None, "127.0.0.1:0", "two")?;
    let port = free_port();
    cluster.apply(&httpbin_config(port, one.addr))?;
    let _gateway = cluster.gateway(&[])?;
    // A ServiceEntry with two static endpoints, routed to from the httpbin host.
    cluster.apply(&format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: legacy, namespace: default}}
spec:
  hosts: [legacy.internal]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints:
  - {{address: 127.0.0.1, labels: {{version: v1}}, ports: {{http: {one}}}}}
  - {{address: 127.0.0.1, labels: {{version: v2}}, ports: {{http: {two}}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: legacy, namespace: default}}
spec:
  hosts: ["httpbin.example.com"]
  gateways: [httpbin-gateway]
  http:
  - match: [{{uri: {{prefix: /legacy}}}}]
    route:
    - destination: {{host: legacy.internal, port: {{number: 80}}}}
"#,
        one = one.addr.port(),
        two = two.addr.port(),
    ))?;
    eventually(
        "the ServiceEntry's host",
        || status(port, "httpbin.example.com", "/legacy"),
        |s| s.0 == 200,
    )?;
    // A DestinationRule's subset, and the route narrowed to it: only v2 answers.
    cluster.apply(
        r#"apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: legacy, namespace: default}
spec:
  host: legacy.internal
  subsets:
  - {name: v2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: legacy, namespace: default}
spec:
  hosts: ["httpbin.example.com"]
  gateways: [httpbin-gateway]
  http:
  - match: [{uri: {prefix: /legacy}}]
    route:
    - destination: {host: legacy.internal, subset: v2, port: {number: 80}}
"#,
    )?;
    // Ten answers in a row from v2: until both objects apply, the route still spreads
    // over both endpoints and may answer "two" by chance.
    eventually(
        "the subset",
        || {
            (0..10)
                .map(|_| status(port, "httpbin.example.com", "/legacy"))
                .collect::<anyhow::Result<Vec<_>>>()
        },
        |answers| answers.iter().all(|s| s.1 == "two"),
    )?;
    for _ in 0..5 {
        assert_eq!(
            status(port, "httpbin.example.com", "/legacy")?,
            (200, "two".into())
        );
    }
    cluster.delete(
        "networking.istio.io/v1",
        "ServiceEntry",
        "default",
        "legacy",
    )?;
    eventually(
        "the deleted ServiceEntry",
        || status(port, "httpbin.example.com", "/legacy"),
        |s| s.0 == 503,
    )?;

    // A TCP listener of a Gateway whose class is ours by controllerName, and a TCPRoute.
    let tcp_port = free_port();
    cluster.apply(&format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: by-controller}}
spec: {{controllerName: gatewayd.dev/gateway-controller}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: tcp, namespace: default}}
spec:
  gatewayClassName: by-controller
  listeners:
  - {{name: tcp, port: {tcp_port}, protocol: TCP}}
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TCPRoute
metadata: {{name: tcp, namespace: default}}
spec:
  parentRefs: [{{name: tcp}}]
  rules:
  - backendRefs: [{{name: httpbin, port: 8000}}]
"#
    ))?;
    // Plain HTTP through the TCP proxy reaches the upstream whatever the Host.
    eventually(
        "the TCPRoute",
        || status(tcp_port, "anything", "/get"),
        |s| s.0 == 200,
    )?;
    // The class is handed to another controller: its Gateway is no longer ours.
    cluster.apply(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {name: by-controller}\nspec: {controllerName: example.com/another}\n",
    )?;
    eventually(
        "the class given away",
        || Ok(status(tcp_port, "anything", "/get").map_or(0, |s| s.0)),
        |s| *s != 200,
    )?;
    Ok(())
}

/// A BackendTLSPolicy from the cluster: its Service's traffic is TLS to the backend,
/// verified with the CA ConfigMap; its status names the Gateway as ancestor
/// (BackendTLSPolicyObservedGenerationBump: a spec change is written with the new
/// generation, and a hostname the certificate lacks then fails the requests).
#[test]
fn backend_tls_policy_from_the_cluster_and_its_ancestor_status() -> anyhow::Result<()> {
    let cluster = Cluster::start("kube-btls")?;
    let pki_dir = TempDir::new("kube-btls-pki")?;
    let pki = Pki::new(pki_dir.path(), "kube-btls-ca")?;
    pki.issue(
        "backend",
        "backend",
        "DNS:abc.example.com",
        Key::EcP256Pkcs8,
        false,
    )?;
    let (_server, tls_port) = crate::upstream_tls::s_server(&pki, "backend", &[])?;
    let ca: String = pki
        .ca_pem()?
        .lines()
        .map(|l| format!("    {l}\n"))
        .collect();
    let bind = free_port();
    let policy = |hostname: &str| {
        format!(
            r#"apiVersion: gateway.networking.k8s.io/v1
kind: BackendTLSPolicy
metadata: {{name: secure, namespace: istio-system}}
spec:
  targetRefs: [{{group: "", kind: Service, name: secure}}]
  validation:
    caCertificateRefs: [{{group: "", kind: ConfigMap, name: secure-ca}}]
    hostname: {hostname}
"#
        )
    };
    cluster.apply(&format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: gatewayd}}
spec: {{controllerName: gatewayd.dev/gateway-controller}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: web, namespace: istio-system}}
spec:
  gatewayClassName: gatewayd
  listeners:
  - {{name: http, port: 80, protocol: HTTP}}
---
{own}apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: secure, namespace: istio-system}}
spec:
  parentRefs: [{{name: web}}]
  hostnames: ["secure.example.com"]
  rules:
  - backendRefs: [{{name: secure, port: 443}}]
---
apiVersion: v1
kind: Service
metadata: {{name: secure, namespace: istio-system}}
spec:
  ports: [{{name: https, port: 443, targetPort: {tls_port}}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: secure-1, namespace: istio-system, labels: {{kubernetes.io/service-name: secure}}}}
addressType: IPv4
ports: [{{name: https, port: {tls_port}}}]
endpoints:
- addresses: ["127.0.0.1"]
---
apiVersion: v1
kind: ConfigMap
metadata: {{name: secure-ca, namespace: istio-system}}
data:
  ca.crt: |
{ca}---
{policy}"#,
        own = own_service("gw-btls", bind),
        policy = policy("abc.example.com"),
    ))?;
    let gateway = cluster.gateway(&["--selector", "app=gw-btls"])?;
    // The backend speaks TLS only: a 200 is a verified TLS connection.
    let (code, answer) = status(bind, "secure.example.com", "/")?;
    assert_eq!(code, 200, "{answer}\n{}", gateway.stderr());

    let get_policy = || -> anyhow::Result<serde_json::Value> {
        cluster
            .api
            .get(
                "gateway.networking.k8s.io/v1",
                "BackendTLSPolicy",
                "istio-system",
                "secure",
            )
            .context("policy gone")
    };
    let ours = |p: &serde_json::Value| -> Option<serde_json::Value> {
        p["status"]["ancestors"]
            .as_array()?
            .iter()
            .find(|a| a["controllerName"] == "gatewayd.dev/gateway-controller")
            .cloned()
    };
    let accepted_at = |p: &serde_json::Value, generation: &serde_json::Value| {
        ours(p)
            .and_then(|a| condition(&a["conditions"], "Accepted").cloned())
            .is_some_and(|c| c["status"] == "True" && c["observedGeneration"] == *generation)
    };
    let first = get_policy()?;
    let generation = first["metadata"]["generation"].clone();
    let written = eventually("the policy's status", get_policy, |p| {
        accepted_at(p, &generation)
    })?;
    let ancestor = ours(&written).context("our ancestor entry")?;
    assert_eq!(ancestor["ancestorRef"]["name"], "web", "{written}");
    assert_eq!(ancestor["ancestorRef"]["kind"], "Gateway", "{written}");
    assert_eq!(
        condition(&ancestor["conditions"], "ResolvedRefs").map(|c| &c["status"]),
        Some(&"True".into()),
        "{written}"
    );

    // A spec change: a new generation, written; the certificate lacks the new name.
    cluster.apply(&policy("mismatch.example.com"))?;
    let bumped = get_policy()?["metadata"]["generation"].clone();
    assert_ne!(bumped, generation);
    eventually("status for the new generation", get_policy, |p| {
        accepted_at(p, &bumped)
    })?;
    eventually(
        "the new hostname refused",
        || status(bind, "secure.example.com", "/"),
        |(code, _)| *code == 503,
    )?;
    Ok(())
}
