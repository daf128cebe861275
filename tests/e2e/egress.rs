//! Istio's egress gateway task, as written, in network namespaces: gatewayd runs with
//! `--selector istio=egressgateway` in one namespace; "the outside" is another, with a
//! real DNS server (dnsmasq) that answers for `api.example.com`, the demo upstream on two
//! public-looking addresses and an openssl TLS server. Root only (namespaces).

use std::{
    net::SocketAddr,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use gateway_tests::{
    Gateway, NetnsPair, Process, TempDir, Upstream, curl, http1::KeepAliveClient, skip_unless_root,
    write_atomically,
};

const HOST: &str = "api.example.com";
/// The external host's two addresses (TEST-NET-2), on the outside's loopback; the
/// gateway's namespace routes them through the veth.
const FIRST: &str = "198.51.100.11";
const SECOND: &str = "198.51.100.12";
/// How long a DNS change or outage may take to show (TTL 1 s, retries every 5 s).
const DNS_PATIENCE: Duration = Duration::from_secs(30);

/// The egress gateway's Service as Istio installs it (80 → 8080, 443 → 8443), then the
/// ServiceEntry, Gateway and VirtualService of Istio's egress-gateway task for
/// `api.example.com` (HTTP on 80, TLS passed through by SNI on 443).
fn egress_config(resolution: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: istio-egressgateway, namespace: istio-system}}
spec:
  selector: {{istio: egressgateway}}
  ports:
  - {{name: http2, port: 80, targetPort: 8080}}
  - {{name: https, port: 443, targetPort: 8443}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: api, namespace: default}}
spec:
  hosts: [{HOST}]
  ports:
  - {{number: 80, name: http-port, protocol: HTTP}}
  - {{number: 443, name: tls, protocol: TLS}}
  location: MESH_EXTERNAL
  resolution: {resolution}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: istio-egressgateway, namespace: default}}
spec:
  selector: {{istio: egressgateway}}
  servers:
  - port: {{number: 80, name: http, protocol: HTTP}}
    hosts: [{HOST}]
  - port: {{number: 443, name: tls, protocol: TLS}}
    hosts: [{HOST}]
    tls: {{mode: PASSTHROUGH}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: direct-api-through-egress-gateway, namespace: default}}
spec:
  hosts: [{HOST}]
  gateways: [istio-egressgateway, mesh]
  http:
  - match: [{{gateways: [mesh], port: 80}}]
    route:
    - destination: {{host: istio-egressgateway.istio-system.svc.cluster.local, port: {{number: 80}}}}
  - match: [{{gateways: [istio-egressgateway], port: 80}}]
    route:
    - destination: {{host: {HOST}, port: {{number: 80}}}}
  tls:
  - match: [{{gateways: [mesh], port: 443, sniHosts: [{HOST}]}}]
    route:
    - destination: {{host: istio-egressgateway.istio-system.svc.cluster.local, port: {{number: 443}}}}
  - match: [{{gateways: [istio-egressgateway], port: 443, sniHosts: [{HOST}]}}]
    route:
    - destination: {{host: {HOST}, port: {{number: 443}}}}
"#
    )
}

/// The outside world: dnsmasq answering `HOST` from a hosts file with a 1 s TTL, the
/// demo upstream on port 80 of both addresses. Everything dies with the namespaces.
struct Outside {
    net: NetnsPair,
    dir: TempDir,
    hosts: PathBuf,
    dns: Option<Process>,
    _upstreams: Vec<Upstream>,
}

impl Outside {
    fn start(label: &str) -> anyhow::Result<Self> {
        let net = NetnsPair::new(label)?;
        let dir = TempDir::new(label)?;
        // The outside's public addresses, reached from the gateway through the veth.
        for address in [FIRST, SECOND] {
            ip(
                &net.client_ns,
                &["addr", "add", &format!("{address}/32"), "dev", "lo"],
            )?;
        }
        ip(
            &net.gateway_ns,
            &["route", "add", "198.51.100.0/24", "via", &net.client_ip],
        )?;
        let upstreams = vec![
            Upstream::start(Some(&net.client_ns), &format!("{FIRST}:80"), "first")?,
            Upstream::start(Some(&net.client_ns), &format!("{SECOND}:80"), "second")?,
        ];
        let hosts = dir.write("hosts", &format!("{FIRST} {HOST}\n"))?;
        let mut outside = Outside {
            net,
            dir,
            hosts,
            dns: None,
            _upstreams: upstreams,
        };
        outside.start_dns()?;
        // gatewayd's resolv.conf: the outside's nameserver, quick to give up.
        outside.dir.write(
            "resolv.conf",
            &format!(
                "nameserver {}\noptions timeout:1 attempts:1\n",
                outside.net.client_ip
            ),
        )?;
        Ok(outside)
    }

    fn start_dns(&mut self) -> anyhow::Result<()> {
        let child = Command::new("ip")
            .args(["netns", "exec", &self.net.client_ns, "dnsmasq"])
            .args([
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--no-resolv",
            ])
            .args([
                "--no-hosts",
                "--bind-interfaces",
                "--pid-file",
                "--user=root",
            ])
            .arg(format!("--listen-address={}", self.net.client_ip))
            .arg(format!("--addn-hosts={}", self.hosts.display()))
            .arg("--local-ttl=1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting dnsmasq (cargo xtask setup installs dnsmasq-base)")?;
        self.dns = Some(Process { child });
        // Ready once its UDP socket is bound.
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let out = Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &self.net.client_ns,
                    "ss",
                    "-Hlun",
                    "sport",
                    "=",
                    ":53",
                ])
                .output()?;
            if !out.stdout.is_empty() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("dnsmasq did not bind port 53")
    }

    /// Points `HOST` at `address` and has dnsmasq read its hosts file again (SIGHUP).
    fn move_host(&self, address: &str) -> anyhow::Result<()> {
        std::fs::write(&self.hosts, format!("{address} {HOST}\n"))?;
        let dns = self.dns.as_ref().context("dnsmasq is not running")?;
        let pid = i32::try_from(dns.child.id())?;
        // SAFETY: kill(2) on our own child, which we have not reaped.
        let sent = unsafe { libc::kill(pid, libc::SIGHUP) };
        ensure!(sent == 0, "SIGHUP to dnsmasq failed");
        Ok(())
    }

    fn gateway(&self, resolution: &str) -> anyhow::Result<Gateway> {
        self.gateway_with(&egress_config(resolution))
    }

    fn gateway_with(&self, egress_yaml: &str) -> anyhow::Result<Gateway> {
        let config = self.dir.write("egress.yaml", egress_yaml)?;
        let resolv = self.dir.path().join("resolv.conf");
        Gateway::start(
            &config,
            &[
                "--selector",
                "istio=egressgateway",
                "--ebpf",
                "off",
                "--resolv-conf",
                &resolv.display().to_string(),
            ],
            Some(&self.net.gateway_ns),
            &self.dir,
        )
    }

    /// A keep-alive HTTP/1.1 connection from the outside namespace (the workload's side)
    /// to the gateway's HTTP port.
    fn keep_alive_client(&self) -> anyhow::Result<KeepAliveClient> {
        let addr: SocketAddr = format!("{}:8080", self.net.gateway_ip).parse()?;
        in_namespace(&self.net.client_ns, move || {
            KeepAliveClient::connect(addr, HOST)
        })
    }
}

/// Runs `f` on a thread that has entered network namespace `ns`: sockets it opens live
/// there, and can then be used from any thread.
fn in_namespace<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    let file = std::fs::File::open(Path::new("/run/netns").join(ns))
        .with_context(|| format!("opening namespace {ns}"))?;
    std::thread::spawn(move || {
        // SAFETY: setns(2) on a namespace file we hold open; it changes this thread only.
        let entered = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        ensure!(entered == 0, "setns: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the namespace thread panicked"))?
}

fn ip(ns: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip").args(["-n", ns]).args(args).output()?;
    ensure!(
        out.status.success(),
        "ip -n {ns} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// `gateway_dns_resolutions_total` for HOST and `result`.
fn resolutions(gateway: &Gateway, result: &str) -> anyhow::Result<f64> {
    Ok(gateway
        .metric(&format!(
            "gateway_dns_resolutions_total{{host=\"{HOST}\",result=\"{result}\"}}"
        ))?
        .unwrap_or(0.0))
}

/// HTTP to an external host through the egress gateway: the ServiceEntry host is
/// resolved by the outside's DNS server; when its record moves, the next requests on the
/// same client connection go to the new address; with the DNS server gone, the last
/// answer keeps serving and the failures are counted; metrics and the access log name
/// the ServiceEntry host.
#[test]
fn egress_http_follows_dns_and_survives_its_outage() -> anyhow::Result<()> {
    if skip_unless_root("network namespaces") {
        return Ok(());
    }
    let mut outside = Outside::start("egress-dns")?;
    let gateway = outside.gateway("DNS")?;
    let mut client = outside.keep_alive_client()?;
    let answer = client.get("/get")?;
    assert_eq!(answer.answered_by(), "first", "{}", gateway.stderr());

    outside.move_host(SECOND)?;
    let deadline = Instant::now() + DNS_PATIENCE;
    let mut seen = client.get("/get")?.answered_by();
    while seen != "second" && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        seen = client.get("/get")?.answered_by();
    }
    assert_eq!(
        seen,
        "second",
        "the DNS change was not followed:\n{}",
        gateway.stderr()
    );

    // The resolver goes away: requests keep going to the last answer.
    outside.dns = None;
    let deadline = Instant::now() + DNS_PATIENCE;
    while resolutions(&gateway, "failure")? < 1.0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        resolutions(&gateway, "failure")? >= 1.0,
        "no failed lookup counted:\n{}",
        gateway.stderr()
    );
    assert_eq!(client.get("/get")?.answered_by(), "second");
    let fresh = outside.keep_alive_client()?.get("/get")?;
    assert_eq!(fresh.answered_by(), "second");
    assert!(resolutions(&gateway, "success")? >= 2.0);

    let (_, metrics) = gateway.get(gateway.metrics, "/stats/prometheus")?;
    assert!(
        metrics
            .lines()
            .any(|line| line.starts_with("istio_requests_total{")
                && line.contains(&format!("destination_service=\"{HOST}\""))
                && line.contains("response_code=\"200\"")),
        "istio_requests_total does not name {HOST}:\n{metrics}"
    );
    let log = gateway.access_log();
    assert!(
        log.contains(&format!("outbound|80||{HOST}")),
        "the access log does not name the ServiceEntry cluster:\n{log}"
    );
    Ok(())
}

/// DNS_ROUND_ROBIN (Envoy's LOGICAL_DNS) serves the host's one address as well.
#[test]
fn egress_http_with_dns_round_robin() -> anyhow::Result<()> {
    if skip_unless_root("network namespaces") {
        return Ok(());
    }
    let outside = Outside::start("egress-rr")?;
    let gateway = outside.gateway("DNS_ROUND_ROBIN")?;
    let answer = outside.keep_alive_client()?.get("/get")?;
    assert_eq!(answer.answered_by(), "first", "{}", gateway.stderr());
    Ok(())
}

/// A reload that makes the ServiceEntry resolve by DNS has its host looked up at once:
/// STATIC without endpoints serves nothing (503), DNS then reaches the external host.
#[test]
fn egress_dns_entry_added_by_a_reload_is_resolved() -> anyhow::Result<()> {
    if skip_unless_root("network namespaces") {
        return Ok(());
    }
    let outside = Outside::start("egress-reload")?;
    let gateway = outside.gateway("STATIC")?;
    let before = outside.keep_alive_client()?.get("/get")?;
    assert_eq!(before.status, 503, "{}", gateway.stderr());
    gateway.reload_after(|| {
        write_atomically(
            &outside.dir.path().join("egress.yaml"),
            &egress_config("DNS"),
        )
    })?;
    let deadline = Instant::now() + DNS_PATIENCE;
    let mut seen = outside.keep_alive_client()?.get("/get")?.answered_by();
    while seen != "first" && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        seen = outside.keep_alive_client()?.get("/get")?.answered_by();
    }
    assert_eq!(seen, "first", "{}", gateway.stderr());
    Ok(())
}

/// HTTPS to the external host through the egress gateway, passed through by SNI: the
/// client verifies the external server's own certificate.
#[test]
fn egress_https_passes_through_by_sni() -> anyhow::Result<()> {
    if skip_unless_root("network namespaces") {
        return Ok(());
    }
    let outside = Outside::start("egress-tls")?;
    let (cert, key) = (
        outside.dir.path().join("api.crt"),
        outside.dir.path().join("api.key"),
    );
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-days", "2", "-subj", &format!("/CN={HOST}")])
        .args(["-addext", &format!("subjectAltName=DNS:{HOST}")])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()?;
    ensure!(
        made.status.success(),
        "openssl req: {}",
        String::from_utf8_lossy(&made.stderr)
    );
    let _tls_server = Process {
        child: Command::new("ip")
            .args([
                "netns",
                "exec",
                &outside.net.client_ns,
                "openssl",
                "s_server",
            ])
            .args(["-quiet", "-www", "-accept", &format!("{FIRST}:443")])
            .arg("-cert")
            .arg(&cert)
            .arg("-key")
            .arg(&key)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    };
    let gateway = outside.gateway("DNS")?;
    let cacert = cert.display().to_string();
    let connect_to = format!("{HOST}:443:{}:8443", outside.net.gateway_ip);
    let url = format!("https://{HOST}/");
    let deadline = Instant::now() + Duration::from_secs(10);
    let answer = loop {
        // s_server may still be starting.
        match curl(
            Some(&outside.net.client_ns),
            &["--cacert", &cacert, "--connect-to", &connect_to, &url],
        ) {
            Ok(answer) => break answer,
            Err(e) if Instant::now() > deadline => {
                return Err(e.context(gateway.stderr()));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    };
    assert_eq!(answer.status, 200);
    assert!(answer.body.contains("s_server"), "{}", answer.body);
    let (_, metrics) = gateway.get(gateway.metrics, "/stats/prometheus")?;
    assert!(
        metrics
            .lines()
            .any(|line| line.starts_with("gateway_dns_resolutions_total{") && line.contains(HOST)),
        "{metrics}"
    );
    Ok(())
}

/// Istio's "egress gateway with mutual TLS origination" task as written: the workload
/// sends plain HTTP to the egress gateway, which resolves the ServiceEntry host by DNS
/// and originates TLS to it on 443 (DestinationRule `portLevelSettings` MUTUAL with a
/// `credentialName` Secret in the gateway's namespace, `sni`): the external server, which
/// requires a client certificate, sees the Secret's, and the gateway verified the
/// server's against the Secret's `ca.crt`. A rule with another CA is refused with 503
/// `UF` and Envoy's TLS reason.
#[test]
fn egress_originates_mutual_tls_to_the_external_host() -> anyhow::Result<()> {
    use crate::tls::{Key, Pki, tls_secret};

    if skip_unless_root("network namespaces") {
        return Ok(());
    }
    let outside = Outside::start("egress-mtls")?;
    let pki = Pki::new(outside.dir.path(), "external-ca")?;
    let clients = Pki::new(outside.dir.path(), "client-ca")?;
    pki.issue("api", HOST, &format!("DNS:{HOST}"), Key::EcP256Pkcs8, false)?;
    let (client, client_key) = clients.issue(
        "client",
        "egress-client",
        "DNS:egress-client",
        Key::EcP256Pkcs8,
        true,
    )?;
    let _tls_server = Process {
        child: Command::new("ip")
            .args([
                "netns",
                "exec",
                &outside.net.client_ns,
                "openssl",
                "s_server",
            ])
            .args(["-quiet", "-www", "-accept", &format!("{FIRST}:443")])
            .args(["-cert", &pki.path("api.crt"), "-key", &pki.path("api.key")])
            .args(["-Verify", "1", "-CAfile", &clients.path("client-ca.crt")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    };
    let external_ca = pki.ca_pem()?;
    let mut config = format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: istio-egressgateway, namespace: istio-system}}
spec:
  selector: {{istio: egressgateway}}
  ports:
  - {{name: http2, port: 80, targetPort: 8080}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: api, namespace: default}}
spec:
  hosts: [{HOST}]
  ports:
  - {{number: 80, name: http, protocol: HTTP}}
  - {{number: 443, name: https, protocol: HTTPS}}
  location: MESH_EXTERNAL
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: istio-egressgateway, namespace: default}}
spec:
  selector: {{istio: egressgateway}}
  servers:
  - port: {{number: 80, name: http, protocol: HTTP}}
    hosts: [{HOST}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: direct-api-through-egress-gateway, namespace: default}}
spec:
  hosts: [{HOST}]
  gateways: [istio-egressgateway]
  http:
  - match: [{{uri: {{prefix: /wrong-ca}}}}]
    route:
    - destination: {{host: {HOST}, subset: wrong-ca, port: {{number: 443}}}}
  - route:
    - destination: {{host: {HOST}, port: {{number: 443}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: originate-mtls-for-api, namespace: default}}
spec:
  host: {HOST}
  trafficPolicy:
    portLevelSettings:
    - port: {{number: 443}}
      tls: {{mode: MUTUAL, credentialName: client-credential, sni: {HOST}}}
  subsets:
  - name: wrong-ca
    trafficPolicy:
      portLevelSettings:
      - port: {{number: 443}}
        tls: {{mode: MUTUAL, credentialName: wrong-ca-credential, sni: {HOST}}}
---
"#
    );
    config += &tls_secret(
        "client-credential",
        "istio-system",
        &client,
        &client_key,
        Some(&external_ca),
    );
    config += &tls_secret(
        "wrong-ca-credential",
        "istio-system",
        &client,
        &client_key,
        Some(&clients.ca_pem()?),
    );
    let gateway = outside.gateway_with(&config)?;
    let get = |path: &str| {
        curl(
            Some(&outside.net.client_ns),
            &[
                "-H",
                &format!("Host: {HOST}"),
                &format!("http://{}:8080{path}", outside.net.gateway_ip),
            ],
        )
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let answer = loop {
        // The first answer waits for the DNS lookup and s_server's start.
        let answer = get("/")?;
        if answer.status == 200 || Instant::now() > deadline {
            break answer;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(answer.status, 200, "{answer:?}\n{}", gateway.stderr());
    assert!(answer.body.contains("s_server"), "{}", answer.body);
    assert!(answer.body.contains("CN=egress-client"), "{}", answer.body);
    // s_server -www closes after each answer: the next request's connection resumes the
    // session (its page says "Reused" rather than "New").
    let again = get("/")?;
    assert_eq!(again.status, 200, "{again:?}");
    assert!(again.body.contains("Reused, TLSv1.3"), "{}", again.body);

    let refused = get("/wrong-ca")?;
    assert_eq!(refused.status, 503, "{refused:?}");
    assert!(
        refused.body.contains("CERTIFICATE_VERIFY_FAILED"),
        "{}",
        refused.body
    );
    let log = gateway.access_log();
    let line = log
        .lines()
        .find(|l| l.contains("GET /wrong-ca"))
        .with_context(|| format!("no access log line for /wrong-ca:\n{log}"))?;
    assert!(line.contains(" 503 UF"), "{line}");
    assert!(
        line.contains(&format!("outbound|443|wrong-ca|{HOST}")),
        "{line}"
    );
    Ok(())
}
