//! What the end-to-end tests share: starting the real binaries (gatewayd, the demo
//! upstream), writing temp configs, running real clients, and building network
//! namespaces that are removed again whatever happens.

use std::{
    io::{BufRead, BufReader, Read, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

pub mod grpc;
pub mod h2c;
pub mod http1;
pub mod status_upstream;
pub mod tls_client;

/// How long a daemon may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a configuration change may take to show up as a reload in the metrics.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(10);

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Skips (returning true) with a reason when the test needs root.
pub fn skip_unless_root(why: &str) -> bool {
    if is_root() {
        return false;
    }
    eprintln!("SKIPPED: needs root ({why}); `cargo xtask test` runs as root in CI");
    true
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// A binary built by `cargo xtask test` (or `cargo build`), from the env var xtask sets
/// or the default target dir.
pub fn binary(env_var: &str, name: &str) -> PathBuf {
    std::env::var_os(env_var)
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/debug").join(name))
}

pub fn gatewayd_bin() -> PathBuf {
    binary("GATEWAYD_BIN", "gatewayd")
}

/// A port that is free now and that no outgoing connection can take before the daemon
/// binds it: below the kernel's ephemeral range (`ip_local_port_range`), where only
/// explicit binds land. (A port found by binding to 0 is an ephemeral one: with the
/// hostile-client tests' thousands of connections, a `connect()` took such a port as its
/// local port before gatewayd bound it, and the test failed with EADDRINUSE.) Each call
/// in a test run gives a new port, so no test meets an earlier one's lingering sockets.
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const LOWEST: u32 = 10_000;
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768);
    let span = ephemeral_start.saturating_sub(LOWEST).max(1);
    // Different test processes (the e2e run, a developer's second run) start apart.
    let offset = std::process::id().wrapping_mul(7_919) % span;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        assert!(n < span, "no free port below the ephemeral range");
        let port = u16::try_from(LOWEST + (offset + n) % span).expect("ports fit in u16");
        // gatewayd binds `::` too (where the host has IPv6).
        let free_v6 = || match TcpListener::bind(("::", port)) {
            Ok(_) => true,
            Err(e) => e.kind() != std::io::ErrorKind::AddrInUse,
        };
        if TcpListener::bind(("0.0.0.0", port)).is_ok()
            && TcpListener::bind(("127.0.0.1", port)).is_ok()
            && free_v6()
        {
            return port;
        }
    }
}

/// Builds `Command`s that run inside a network namespace when given one.
fn command(netns: Option<&str>, program: &Path) -> Command {
    match netns {
        Some(ns) => {
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "exec", ns]).arg(program);
            cmd
        }
        None => Command::new(program),
    }
}

/// A child process killed (SIGKILL) and reaped on drop.
pub struct Process {
    pub child: Child,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The demo upstream (an httpbin-like echo server) on an ephemeral port.
pub struct Upstream {
    pub addr: SocketAddr,
    _process: Process,
}

impl Upstream {
    pub fn start(netns: Option<&str>, listen: &str, name: &str) -> anyhow::Result<Self> {
        let bin = binary("DEMO_UPSTREAM_BIN", "demo-upstream");
        let mut child = command(netns, &bin)
            .args(["--listen", listen, "--name", name])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let stdout = child.stdout.take().context("upstream stdout")?;
        let process = Process { child };
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .with_context(|| format!("unexpected upstream output {line:?}"))?
            .parse()?;
        Ok(Upstream {
            addr,
            _process: process,
        })
    }
}

/// A running gatewayd with its own admin ports.
pub struct Gateway {
    pub process: Process,
    pub readiness: SocketAddr,
    pub metrics: SocketAddr,
    pub admin: SocketAddr,
    pub netns: Option<String>,
    stderr_path: PathBuf,
    pub stdout_path: PathBuf,
}

impl Gateway {
    /// Starts `gatewayd run --config DIR` plus `extra` args and waits for readiness.
    pub fn start(
        config: &Path,
        extra: &[&str],
        netns: Option<&str>,
        scratch: &TempDir,
    ) -> anyhow::Result<Self> {
        let mut gateway = Self::spawn(config, extra, netns, scratch, |_| {})?;
        gateway.wait_ready()?;
        Ok(gateway)
    }

    /// Like `start`, but returns at once (call `wait_ready`), after `configure` had its
    /// say on the command (stdout, a pre_exec, ...).
    pub fn spawn(
        config: &Path,
        extra: &[&str],
        netns: Option<&str>,
        scratch: &TempDir,
        configure: impl FnOnce(&mut Command),
    ) -> anyhow::Result<Self> {
        let (readiness, metrics, admin) = (free_port(), free_port(), free_port());
        let stderr_path = scratch.path().join("gatewayd.stderr");
        let stdout_path = scratch.path().join("gatewayd.stdout");
        let mut command = command(netns, &gatewayd_bin());
        command
            .arg("run")
            .arg("--config")
            .arg(config)
            .args(["--readiness-addr", &format!("127.0.0.1:{readiness}")])
            .args(["--metrics-addr", &format!("127.0.0.1:{metrics}")])
            .args(["--admin-addr", &format!("127.0.0.1:{admin}")])
            .args(extra)
            .stdout(std::fs::File::create(&stdout_path)?)
            .stderr(std::fs::File::create(&stderr_path)?);
        configure(&mut command);
        let child = command
            .spawn()
            .context("starting gatewayd (build it first: cargo xtask test does)")?;
        Ok(Gateway {
            process: Process { child },
            readiness: SocketAddr::from(([127, 0, 0, 1], readiness)),
            metrics: SocketAddr::from(([127, 0, 0, 1], metrics)),
            admin: SocketAddr::from(([127, 0, 0, 1], admin)),
            netns: netns.map(str::to_owned),
            stderr_path,
            stdout_path,
        })
    }

    pub fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        while Instant::now() < deadline {
            if let Some(status) = self.process.child.try_wait()? {
                bail!(
                    "gatewayd exited with {status} before it was ready:\n{}",
                    self.stderr()
                );
            }
            if self
                .get(self.readiness, "/healthz/ready")
                .is_ok_and(|(status, _)| status == 200)
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "gatewayd not ready after {READY_TIMEOUT:?}:\n{}",
            self.stderr()
        )
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// The access log so far. gatewayd writes it from a thread of its own, a moment
    /// after the answer went out: wait until the file has stopped growing (up to 3 s), so
    /// a test that just got its answer sees that request's line.
    pub fn access_log(&self) -> String {
        let read = || std::fs::read_to_string(&self.stdout_path).unwrap_or_default();
        let give_up = Instant::now() + Duration::from_secs(3);
        let mut log = read();
        loop {
            std::thread::sleep(Duration::from_millis(100));
            let again = read();
            if again == log || Instant::now() > give_up {
                return again;
            }
            log = again;
        }
    }

    /// GET on one of the admin addresses (inside the daemon's namespace if it has one).
    pub fn get(&self, addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
        match &self.netns {
            None => http_get(addr, path),
            Some(ns) => {
                let out = Command::new("ip")
                    .args([
                        "netns",
                        "exec",
                        ns,
                        "curl",
                        "-s",
                        "-o",
                        "-",
                        "-w",
                        "\n%{http_code}",
                    ])
                    .arg(format!("http://{addr}{path}"))
                    .output()?;
                let text = String::from_utf8_lossy(&out.stdout).into_owned();
                let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
                Ok((code.trim().parse().unwrap_or(0), body.to_owned()))
            }
        }
    }

    /// The value of one Prometheus sample, e.g. `gateway_kernel_port_packets_total{port="8080"}`.
    pub fn metric(&self, sample: &str) -> anyhow::Result<Option<f64>> {
        let (_, text) = self.get(self.metrics, "/stats/prometheus")?;
        Ok(text.lines().find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == sample).then(|| value.parse().ok()).flatten()
        }))
    }
}

impl Gateway {
    /// `gateway_config_reloads_total` for `result` (`success`, `failure`, `partial`).
    pub fn reloads(&self, result: &str) -> anyhow::Result<f64> {
        Ok(self
            .metric(&format!(
                "gateway_config_reloads_total{{result=\"{result}\"}}"
            ))?
            .unwrap_or(0.0))
    }

    /// Runs `change` (a configuration write) and waits until the daemon has applied a
    /// reload after it.
    pub fn reload_after(&self, change: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<()> {
        let before = self.reloads("success")?;
        change()?;
        let deadline = Instant::now() + RELOAD_TIMEOUT;
        while self.reloads("success")? <= before {
            if Instant::now() > deadline {
                bail!(
                    "no successful reload {RELOAD_TIMEOUT:?} after the change:\n{}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }
}

/// Replaces `path` as kubelet and careful editors do: written aside, renamed over.
pub fn write_atomically(path: &Path, text: &str) -> anyhow::Result<()> {
    let name = path.file_name().context("a file path")?.to_string_lossy();
    let aside = path.with_file_name(format!(".{name}.tmp"));
    std::fs::write(&aside, text)?;
    std::fs::rename(&aside, path)?;
    Ok(())
}

/// A minimal HTTP/1.0 GET, so readiness polling needs no client library.
pub fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// Runs curl (inside `netns` if given) and returns (status, headers, body).
pub fn curl(netns: Option<&str>, args: &[&str]) -> anyhow::Result<CurlResponse> {
    let mut cmd = command(netns, Path::new("curl"));
    cmd.args(["-s", "-S", "--max-time", "10", "-D", "-"])
        .args(args);
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.output().context("running curl")?;
    if !status.success() {
        bail!("curl {args:?} failed: {}", String::from_utf8_lossy(&stderr));
    }
    let text = String::from_utf8_lossy(&stdout).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok(CurlResponse {
        status,
        head: head.to_owned(),
        body: body.to_owned(),
    })
}

#[derive(Debug)]
pub struct CurlResponse {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl CurlResponse {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim().eq_ignore_ascii_case(name).then(|| value.trim())
        })
    }

    /// Which upstream answered (`x-upstream-name`, set by the test upstreams), or the
    /// status and body when no upstream did (the gateway's own answers).
    pub fn answered_by(&self) -> String {
        match self.header("x-upstream-name") {
            Some(name) if self.status < 500 => name.to_owned(),
            _ => format!("{} {:?}", self.status, self.body.trim()),
        }
    }

    pub fn json(&self) -> anyhow::Result<serde_json::Value> {
        serde_json::from_str(&self.body).with_context(|| format!("not JSON: {:?}", self.body))
    }
}

/// A directory removed on drop.
pub struct TempDir(PathBuf);

static TEMP_COUNTER: AtomicUsize = AtomicUsize::new(0);

impl TempDir {
    pub fn new(label: &str) -> anyhow::Result<Self> {
        let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("gatewayd-e2e-{label}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path)?;
        Ok(TempDir(path))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn write(&self, name: &str, text: &str) -> anyhow::Result<PathBuf> {
        let path = self.0.join(name);
        std::fs::write(&path, text)?;
        Ok(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Two network namespaces joined by a veth pair at MTU 1500, deleted on drop (which also
/// deletes the veth pair and everything attached to it).
pub struct NetnsPair {
    pub gateway_ns: String,
    pub client_ns: String,
    pub gateway_if: String,
    pub gateway_ip: String,
    pub client_ip: String,
}

/// Private addresses used only inside the namespaces the tests create.
const NETNS_SUBNET: &str = "10.203.0";
/// The same for IPv6 (a unique-local /64).
const NETNS_SUBNET6: &str = "fd00:203:";

impl NetnsPair {
    pub fn new(label: &str) -> anyhow::Result<Self> {
        Self::with_prefix("", label)
    }

    /// The same with both namespace names starting with `prefix` (`v6k-gw-LABEL-ID`), so
    /// a group of tests can tell its namespaces from everyone else's.
    pub fn with_prefix(prefix: &str, label: &str) -> anyhow::Result<Self> {
        let id = format!(
            "{}{}",
            std::process::id() % 100_000,
            TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let pair = NetnsPair {
            gateway_ns: format!("{prefix}gw-{label}-{id}"),
            client_ns: format!("{prefix}cli-{label}-{id}"),
            gateway_if: format!("vgw{id}"),
            gateway_ip: format!("{NETNS_SUBNET}.2"),
            client_ip: format!("{NETNS_SUBNET}.1"),
        };
        let client_if = format!("vcl{id}");
        let (gw, cli) = (pair.gateway_ns.as_str(), pair.client_ns.as_str());
        // From here on, Drop removes whatever was created even if a later step fails.
        ip(&["netns", "add", gw])?;
        ip(&["netns", "add", cli])?;
        ip(&[
            "link",
            "add",
            &pair.gateway_if,
            "netns",
            gw,
            "mtu",
            "1500",
            "type",
            "veth",
            "peer",
            "name",
            &client_if,
            "netns",
            cli,
            "mtu",
            "1500",
        ])?;
        ip(&[
            "-n",
            gw,
            "addr",
            "add",
            &format!("{}/24", pair.gateway_ip),
            "dev",
            &pair.gateway_if,
        ])?;
        ip(&[
            "-n",
            cli,
            "addr",
            "add",
            &format!("{}/24", pair.client_ip),
            "dev",
            &client_if,
        ])?;
        for (ns, dev) in [
            (gw, pair.gateway_if.as_str()),
            (cli, client_if.as_str()),
            (gw, "lo"),
            (cli, "lo"),
        ] {
            ip(&["-n", ns, "link", "set", dev, "up"])?;
        }
        Ok(pair)
    }

    /// Adds IPv6 addresses to both ends of the veth (`NETNS_SUBNET6`, without duplicate
    /// address detection, so they are usable at once); returns (gateway, client).
    pub fn add_ipv6(&self) -> anyhow::Result<(String, String)> {
        let (gateway, client) = (format!("{NETNS_SUBNET6}:2"), format!("{NETNS_SUBNET6}:1"));
        let client_if = self.gateway_if.replacen("vgw", "vcl", 1);
        for (ns, dev, address) in [
            (&self.gateway_ns, &self.gateway_if, &gateway),
            (&self.client_ns, &client_if, &client),
        ] {
            let address = format!("{address}/64");
            ip(&["-n", ns, "addr", "add", &address, "dev", dev, "nodad"])?;
        }
        Ok((gateway, client))
    }

    /// `ip link show` of the gateway's veth, to see what is attached to it.
    pub fn gateway_link(&self) -> anyhow::Result<String> {
        let out = Command::new("ip")
            .args([
                "-n",
                &self.gateway_ns,
                "link",
                "show",
                "dev",
                &self.gateway_if,
            ])
            .output()?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for NetnsPair {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.gateway_ns]);
        let _ = ip(&["netns", "del", &self.client_ns]);
    }
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip (iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// The Istio ingress task's configuration with the gateway's own Service mapping port 80
/// to `bind_port`, and httpbin's endpoint at `upstream`.
pub fn httpbin_config(bind_port: u16, upstream: SocketAddr) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1alpha3
kind: Gateway
metadata: {{name: httpbin-gateway, namespace: default}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 80, name: http, protocol: HTTP}}
    hosts: ["httpbin.example.com"]
---
apiVersion: v1
kind: Service
metadata: {{name: istio-ingressgateway, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  ports: [{{name: http2, port: 80, targetPort: {bind_port}}}]
---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {{name: httpbin, namespace: default}}
spec:
  hosts: ["httpbin.example.com"]
  gateways: [httpbin-gateway]
  http:
  - match:
    - uri: {{prefix: /status}}
    - uri: {{prefix: /headers}}
    route:
    - destination: {{host: httpbin, port: {{number: 8000}}}}
---
{}"#,
        service_with_endpoint("httpbin", 8000, upstream)
    )
}

/// A Service `name` in `default` with one port `port_name` (`http`, `grpc`, ...) numbered
/// `port`; its endpoints come from `endpoint_slices`. Ends with `---`.
pub fn service(name: &str, port: u16, port_name: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  ports: [{{name: {port_name}, port: {port}}}]\n---\n"
    )
}

/// Service `service`'s ready endpoints: one EndpointSlice per endpoint (each endpoint
/// has its own port, as test upstreams on one address do). Ends with `---`.
pub fn endpoint_slices(service: &str, port_name: &str, endpoints: &[SocketAddr]) -> String {
    endpoints
        .iter()
        .enumerate()
        .map(|(i, endpoint)| {
            format!(
                r#"apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: {service}-{i}, namespace: default, labels: {{kubernetes.io/service-name: {service}}}}}
addressType: IPv4
ports: [{{name: {port_name}, port: {port}}}]
endpoints:
- addresses: ["{ip}"]
---
"#,
                port = endpoint.port(),
                ip = endpoint.ip(),
            )
        })
        .collect()
}

/// A Service `name` in `default` with one `http` port whose EndpointSlice holds one
/// ready endpoint, `endpoint` (its port is the targetPort); ends with `---`.
pub fn service_with_endpoint(name: &str, port: u16, endpoint: SocketAddr) -> String {
    format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: default}}
spec:
  ports: [{{name: http, port: {port}, targetPort: {target}}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: {name}-1, namespace: default, labels: {{kubernetes.io/service-name: {name}}}}}
addressType: IPv4
ports: [{{name: http, port: {target}}}]
endpoints:
- addresses: ["{ip}"]
---
"#,
        target = endpoint.port(),
        ip = endpoint.ip(),
    )
}
