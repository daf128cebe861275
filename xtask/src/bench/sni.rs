//! `cargo xtask bench sni`: an unknown-SNI connection flood against a TLS port, from a
//! client network namespace over a veth pair (MTU 1500), while legitimate HTTPS keep-alive
//! traffic runs. For each server:
//!
//! - gatewayd with the kernel path (XDP rejects the ClientHello with an in-window reset),
//! - gatewayd without it (`--ebpf off`: rustls reads the ClientHello and refuses the name
//!   before any crypto),
//! - gatewayd with a `*` server (every name accepted: a full handshake per connection),
//! - nginx with `ssl_reject_handshake on`, and HAProxy with `strict-sni`,
//!
//! it measures CPU per flood connection in the server process and, for the kernel path, the
//! XDP program's own run time (kernel BPF statistics, `kernel.bpf_stats_enabled`), and the
//! legitimate request rate kept during the flood. The same run gives the cost of the attached program on
//! normal traffic (gatewayd's legitimate rate with and without the kernel path).
//!
//! Servers are pinned to CPU 1; the flood generator and h2load to CPU 0.

use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{
    common::{KilledOnDrop, release_binaries},
    manifests::{gateway_yaml, one_route_yaml, upstream_service_yaml},
    results_dir,
};
use crate::Workspace;

const SERVER_CPU: &str = "1";
const CLIENT_CPU: &str = "0";
const NAME: &str = "api.example.com";
pub(super) const GATEWAY_IP: &str = "10.205.0.2";
const CLIENT_IP: &str = "10.205.0.1";
const PORT: u16 = 443;
const UPSTREAM_PORT: u16 = 18080;
/// Flood connections per second: well inside what every server survives, so the figures
/// compare costs, not collapse.
const FLOOD_RATE: u32 = 800;
const PHASE_SECONDS: u32 = 5;
const LEGIT_CONNECTIONS: &str = "8";
const START_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    KernelReject,
    UserspaceReject,
    FullHandshake,
    Nginx,
    Haproxy,
}

impl Mode {
    const ALL: [Mode; 5] = [
        Mode::KernelReject,
        Mode::UserspaceReject,
        Mode::FullHandshake,
        Mode::Nginx,
        Mode::Haproxy,
    ];

    fn label(self) -> &'static str {
        match self {
            Mode::KernelReject => "gatewayd, kernel rejects (XDP reset)",
            Mode::UserspaceReject => "gatewayd --ebpf off (rustls refuses from the ClientHello)",
            Mode::FullHandshake => "gatewayd, `*` server (full handshake)",
            Mode::Nginx => "nginx 1.22, ssl_reject_handshake",
            Mode::Haproxy => "HAProxy 2.6, strict-sni",
        }
    }
}

/// Two namespaces joined by veth, removed on drop.
pub(super) struct Net {
    pub(super) gw: String,
    pub(super) cli: String,
}

impl Net {
    pub(super) fn new() -> Result<Self> {
        let id = std::process::id() % 100_000;
        let net = Net {
            gw: format!("bgw{id}"),
            cli: format!("bcli{id}"),
        };
        let (gw, cli) = (net.gw.as_str(), net.cli.as_str());
        let (gw_if, cli_if) = (format!("vbg{id}"), format!("vbc{id}"));
        ip(&["netns", "add", gw])?;
        ip(&["netns", "add", cli])?;
        ip(&[
            "link", "add", &gw_if, "netns", gw, "mtu", "1500", "type", "veth", "peer", "name",
            &cli_if, "netns", cli, "mtu", "1500",
        ])?;
        ip(&[
            "-n",
            gw,
            "addr",
            "add",
            &format!("{GATEWAY_IP}/24"),
            "dev",
            &gw_if,
        ])?;
        ip(&[
            "-n",
            cli,
            "addr",
            "add",
            &format!("{CLIENT_IP}/24"),
            "dev",
            &cli_if,
        ])?;
        for (ns, dev) in [
            (gw, gw_if.as_str()),
            (cli, cli_if.as_str()),
            (gw, "lo"),
            (cli, "lo"),
        ] {
            ip(&["-n", ns, "link", "set", dev, "up"])?;
        }
        // `ip netns exec` mounts /etc/netns/NS/hosts over /etc/hosts: h2load then sends
        // the name as SNI while connecting to the namespace's address.
        let etc = PathBuf::from("/etc/netns").join(cli);
        fs::create_dir_all(&etc)?;
        fs::write(
            etc.join("hosts"),
            format!("127.0.0.1 localhost\n{GATEWAY_IP} {NAME}\n"),
        )?;
        Ok(net)
    }

    pub(super) fn gateway_if(&self) -> String {
        format!("vbg{}", std::process::id() % 100_000)
    }

    pub(super) fn exec(&self, ns: &str, cpu: &str, program: &Path) -> Command {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", ns, "taskset", "-c", cpu])
            .arg(program);
        command
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.gw]);
        let _ = ip(&["netns", "del", &self.cli]);
        let _ = fs::remove_dir_all(PathBuf::from("/etc/netns").join(&self.cli));
    }
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// CPU time of a process, all its threads, in seconds, from the scheduler's nanosecond
/// counters (`/proc/PID/task/*/schedstat`): clock-tick accounting (10 ms) is too coarse for
/// microseconds per connection.
pub(super) fn process_cpu(pid: u32) -> Result<f64> {
    let mut ns = 0u64;
    for task in fs::read_dir(format!("/proc/{pid}/task"))? {
        let stat = fs::read_to_string(task?.path().join("schedstat")).unwrap_or_default();
        ns += stat
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
    }
    Ok(ns as f64 / 1e9)
}

struct Bins {
    gatewayd: PathBuf,
    upstream: PathBuf,
    flood: PathBuf,
    probe: PathBuf,
}

struct Figures {
    mode: Mode,
    legit_alone: f64,
    legit_flood: f64,
    flood_counts: String,
    flood_connections: f64,
    server_cpu_per_conn_us: f64,
    /// The XDP program's run time per flood connection (all its packets), when attached.
    xdp_per_conn_us: Option<f64>,
    /// The XDP program's average run time per packet over the flood phase.
    xdp_ns_per_packet: Option<f64>,
    /// Server CPU per legitimate request, without flood.
    legit_server_ns: f64,
    /// The XDP program's run time per legitimate request (all its packets), without flood.
    legit_xdp_ns: Option<f64>,
}

pub(crate) fn run(ws: &Workspace) -> Result<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "the SNI flood benchmark creates network namespaces and attaches eBPF: run it as root"
        );
    }
    let (gatewayd, [upstream, flood, probe]) =
        release_binaries(ws, ["demo-upstream", "sni-flood", "tls-probe"])?;
    let bins = Bins {
        gatewayd,
        upstream,
        flood,
        probe,
    };
    let work = results_dir(ws).join("sni-work");
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work)?;
    let (cert, key) = self_signed(&work)?;
    let net = Net::new()?;
    let _stats = BpfStats::enable()?;
    let _upstream = KilledOnDrop(
        net.exec(&net.gw, CLIENT_CPU, &bins.upstream)
            .args(["--listen", &format!("127.0.0.1:{UPSTREAM_PORT}")])
            .stdout(Stdio::null())
            .spawn()?,
    );
    let mut figures = Vec::new();
    for mode in Mode::ALL {
        println!("-- {}", mode.label());
        let server = start(mode, &net, &bins, &work, &cert, &key)?;
        wait_serving(&net, &bins, &cert)?;
        figures.push(measure(mode, &net, &bins, server.0.id())?);
    }
    Ok(table(&figures))
}

fn self_signed(work: &Path) -> Result<(PathBuf, PathBuf)> {
    let (cert, key) = (work.join("cert.pem"), work.join("key.pem"));
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
            &format!("/CN={NAME}"),
            "-addext",
            &format!("subjectAltName=DNS:{NAME}"),
        ])
        .args(["-addext", "basicConstraints=critical,CA:FALSE", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()?;
    if !out.status.success() {
        bail!("openssl: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok((cert, key))
}

fn start(
    mode: Mode,
    net: &Net,
    bins: &Bins,
    work: &Path,
    cert: &Path,
    key: &Path,
) -> Result<KilledOnDrop> {
    let dir = work.join(format!("{mode:?}"));
    fs::create_dir_all(&dir)?;
    let child = match mode {
        Mode::KernelReject | Mode::UserspaceReject | Mode::FullHandshake => {
            // FullHandshake: a `*` host too, so an unknown name completes its handshake.
            let hosts: &[&str] = if mode == Mode::FullHandshake {
                &[NAME, "*"]
            } else {
                &[NAME]
            };
            fs::write(dir.join("gateway.yaml"), gatewayd_config(cert, key, hosts))?;
            let mut command = net.exec(&net.gw, SERVER_CPU, &bins.gatewayd);
            command
                .arg("run")
                .arg("--config")
                .arg(dir.join("gateway.yaml"));
            command.args(["--access-log", "off", "--worker-threads", "1"]);
            match mode {
                Mode::KernelReject => {
                    command.args(["--ebpf", "on", "--interface", &net.gateway_if()])
                }
                _ => command.args(["--ebpf", "off"]),
            };
            command
                .stdout(Stdio::null())
                .stderr(fs::File::create(dir.join("stderr"))?)
                .spawn()?
        }
        Mode::Nginx => {
            let conf = dir.join("nginx.conf");
            fs::write(&conf, nginx_config(&dir, cert, key))?;
            net.exec(&net.gw, SERVER_CPU, Path::new("/usr/sbin/nginx"))
                .arg("-c")
                .arg(&conf)
                .stderr(fs::File::create(dir.join("stderr"))?)
                .spawn()?
        }
        Mode::Haproxy => {
            let pem = dir.join("combined.pem");
            fs::write(
                &pem,
                format!("{}{}", fs::read_to_string(cert)?, fs::read_to_string(key)?),
            )?;
            let conf = dir.join("haproxy.cfg");
            fs::write(&conf, haproxy_config(&pem))?;
            net.exec(&net.gw, SERVER_CPU, Path::new("/usr/sbin/haproxy"))
                .args(["-db", "-f"])
                .arg(&conf)
                .stdout(Stdio::null())
                .stderr(fs::File::create(dir.join("stderr"))?)
                .spawn()?
        }
    };
    Ok(KilledOnDrop(child))
}

fn wait_serving(net: &Net, bins: &Bins, cert: &Path) -> Result<()> {
    let deadline = Instant::now() + START_TIMEOUT;
    while Instant::now() < deadline {
        let out = net
            .exec(&net.cli, CLIENT_CPU, &bins.probe)
            .args([
                "--connect",
                &format!("{GATEWAY_IP}:{PORT}"),
                "--sni",
                NAME,
                "--cafile",
            ])
            .arg(cert)
            .output()?;
        if String::from_utf8_lossy(&out.stdout).starts_with("ok ") {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(100));
    }
    bail!("the server did not serve https://{NAME} within {START_TIMEOUT:?}")
}

fn measure(mode: Mode, net: &Net, bins: &Bins, server_pid: u32) -> Result<Figures> {
    // A first run warms the server up (and its upstream pool); the second is measured.
    legit(net)?
        .join()
        .map_err(|_| anyhow::anyhow!("h2load thread"))??;
    let xdp = (mode == Mode::KernelReject)
        .then(|| xdp_program_id(net))
        .transpose()?;
    let (legit_cpu_before, legit_xdp_before) = (
        process_cpu(server_pid)?,
        xdp.map(xdp_run_stats).transpose()?,
    );
    let legit_alone = legit(net)?
        .join()
        .map_err(|_| anyhow::anyhow!("h2load thread"))??;
    let legit_server_ns =
        (process_cpu(server_pid)? - legit_cpu_before) * 1e9 / legit_alone.1.max(1.0);
    // The program's cost on legitimate traffic against the daemon's, per request.
    let legit_xdp_ns = match (xdp, legit_xdp_before) {
        (Some(id), Some((ns0, _))) => Some((xdp_run_stats(id)?.0 - ns0) / legit_alone.1.max(1.0)),
        _ => None,
    };
    let legit_alone = legit_alone.0;

    let xdp_before = xdp.map(xdp_run_stats).transpose()?;
    let server_before = process_cpu(server_pid)?;
    let (flood_counts, flood_connections) = flood(net, bins)?;
    let server_cpu = process_cpu(server_pid)? - server_before;
    let xdp_delta = match (xdp, xdp_before) {
        (Some(id), Some((ns0, n0))) => {
            let (ns1, n1) = xdp_run_stats(id)?;
            Some((ns1 - ns0, n1 - n0))
        }
        _ => None,
    };

    let legit_run = legit(net)?;
    let _ = flood(net, bins)?;
    let legit_flood = legit_run
        .join()
        .map_err(|_| anyhow::anyhow!("h2load thread"))??
        .0;
    Ok(Figures {
        mode,
        legit_alone,
        legit_flood,
        flood_counts,
        flood_connections,
        server_cpu_per_conn_us: server_cpu * 1e6 / flood_connections.max(1.0),
        xdp_per_conn_us: xdp_delta.map(|(ns, _)| ns / 1e3 / flood_connections.max(1.0)),
        xdp_ns_per_packet: xdp_delta.map(|(ns, packets)| ns / packets.max(1.0)),
        legit_server_ns,
        legit_xdp_ns,
    })
}

/// The id of the XDP program attached to the gateway's veth (`prog/xdp id N`).
fn xdp_program_id(net: &Net) -> Result<u32> {
    let out = Command::new("ip")
        .args(["-n", &net.gw, "link", "show", "dev", &net.gateway_if()])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split("prog/xdp id ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|id| id.parse().ok())
        .with_context(|| format!("no XDP program on the gateway interface: {text}"))
}

/// (run_time_ns, run_cnt) of a program, from the kernel's BPF statistics.
pub(super) fn xdp_run_stats(id: u32) -> Result<(f64, f64)> {
    let out = Command::new("bpftool")
        .args(["prog", "show", "id", &id.to_string()])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| {
        text.split_whitespace()
            .skip_while(|w| *w != name)
            .nth(1)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    Ok((field("run_time_ns"), field("run_cnt")))
}

/// Turns the kernel's per-program run-time statistics on for the run, and back off.
pub(super) struct BpfStats(String);

impl BpfStats {
    pub(super) fn enable() -> Result<Self> {
        let previous = fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled")?
            .trim()
            .to_owned();
        fs::write("/proc/sys/kernel/bpf_stats_enabled", "1")?;
        Ok(BpfStats(previous))
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = fs::write("/proc/sys/kernel/bpf_stats_enabled", &self.0);
    }
}

/// Legitimate HTTPS keep-alive load (HTTP/1.1 over TLS) for one phase; returns (req/s,
/// requests done).
fn legit(net: &Net) -> Result<thread::JoinHandle<Result<(f64, f64)>>> {
    let mut command = net.exec(&net.cli, CLIENT_CPU, Path::new("/usr/bin/h2load"));
    command
        .args([
            "--h1",
            "-c",
            LEGIT_CONNECTIONS,
            "-D",
            &PHASE_SECONDS.to_string(),
        ])
        .arg(format!("https://{NAME}:{PORT}/status/200"));
    Ok(thread::spawn(move || {
        let out = command.output().context("running h2load")?;
        let text = String::from_utf8_lossy(&out.stdout);
        let rate = text
            .lines()
            .find_map(|l| {
                l.strip_prefix("finished in ")
                    .and_then(|r| r.split(", ").nth(1))
            })
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse::<f64>().ok())
            .with_context(|| format!("no rate in h2load output:\n{text}"))?;
        let done = text
            .lines()
            .find_map(|l| l.strip_prefix("requests: "))
            .and_then(|r| r.split(" succeeded").next())
            .and_then(|r| r.rsplit(", ").next())
            .and_then(|n| n.trim().parse::<f64>().ok())
            .with_context(|| format!("no request count in h2load output:\n{text}"))?;
        Ok((rate, done))
    }))
}

/// One flood phase; returns the generator's counts and how many connections it made.
fn flood(net: &Net, bins: &Bins) -> Result<(String, f64)> {
    let out = net
        .exec(&net.cli, CLIENT_CPU, &bins.flood)
        .args(["--connect", &format!("{GATEWAY_IP}:{PORT}")])
        .args([
            "--rate",
            &FLOOD_RATE.to_string(),
            "--seconds",
            &PHASE_SECONDS.to_string(),
        ])
        .output()?;
    let line = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let started = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0.0);
    Ok((line, started))
}

fn gatewayd_config(cert: &Path, key: &Path, hosts: &[&str]) -> String {
    let tls = format!(
        "{{mode: SIMPLE, serverCertificate: \"{}\", privateKey: \"{}\"}}",
        cert.display(),
        key.display()
    );
    [
        gateway_yaml("gw", "default", PORT, "HTTPS", hosts, Some(&tls)),
        one_route_yaml("api", "gw", &[NAME], "up", 80),
        upstream_service_yaml("up", "http", 80, ([127, 0, 0, 1], UPSTREAM_PORT).into()),
    ]
    .join("---\n")
}

fn nginx_config(dir: &Path, cert: &Path, key: &Path) -> String {
    format!(
        r#"daemon off;
master_process off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log stderr warn;
events {{ worker_connections 16384; }}
http {{
  access_log off;
  client_body_temp_path {dir}/body;
  proxy_temp_path {dir}/proxy;
  upstream up {{ server 127.0.0.1:{UPSTREAM_PORT}; keepalive 32; }}
  server {{ listen {PORT} ssl default_server; ssl_reject_handshake on; }}
  server {{
    listen {PORT} ssl;
    server_name {NAME};
    ssl_certificate {cert};
    ssl_certificate_key {key};
    location / {{ proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; }}
  }}
}}
"#,
        dir = dir.display(),
        cert = cert.display(),
        key = key.display(),
    )
}

fn haproxy_config(pem: &Path) -> String {
    format!(
        r#"global
  nbthread 1
  maxconn 4096
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
frontend fe
  bind {GATEWAY_IP}:{PORT} ssl crt {pem} strict-sni
  default_backend up
backend up
  http-reuse always
  server s1 127.0.0.1:{UPSTREAM_PORT}
"#,
        pem = pem.display(),
    )
}

fn table(figures: &[Figures]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Unknown-SNI flood at {FLOOD_RATE} connections/s for {PHASE_SECONDS} s over veth (MTU 1500); server on CPU 1, generators on CPU 0.\n"
    );
    let _ = writeln!(
        out,
        "| server | server CPU µs / flood conn | XDP µs / flood conn (ns / packet) | legit req/s alone | legit req/s in flood | kept | flood outcomes |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|");
    for f in figures {
        let _ = writeln!(
            out,
            "| {} | {:.1} | {} | {:.0} | {:.0} | {:.0} % | {} ({:.0} conns) |",
            f.mode.label(),
            f.server_cpu_per_conn_us,
            match (f.xdp_per_conn_us, f.xdp_ns_per_packet) {
                (Some(us), Some(ns)) => format!("{us:.2} ({ns:.0} ns)"),
                _ => "-".to_owned(),
            },
            f.legit_alone,
            f.legit_flood,
            100.0 * f.legit_flood / f.legit_alone.max(1.0),
            f.flood_counts,
            f.flood_connections,
        );
    }
    let _ = writeln!(
        out,
        "\nFlood outcomes as the generator saw them: reset (the kernel's reset), closed (refused by gatewayd without a handshake), answered (the server sent a TLS alert or its handshake flight). XDP time is the program's own run time from the kernel's BPF statistics over every packet of the flood phase; the kernel's TCP work around it is not in any column."
    );
    if let Some(kernel) = figures.iter().find(|f| f.mode == Mode::KernelReject)
        && let Some(xdp_ns) = kernel.legit_xdp_ns
    {
        let _ = writeln!(
            out,
            "\nAttached program on normal traffic: {xdp_ns:.0} ns of XDP run time per legitimate HTTPS keep-alive request (all its packets) against {:.0} ns of gatewayd CPU per request: {:.2} % on top (goal ≤ 2 %).",
            kernel.legit_server_ns,
            100.0 * xdp_ns / kernel.legit_server_ns.max(1.0)
        );
    }
    let _ = writeln!(
        out,
        "\nThe legitimate-rate columns share CPU 0 with the flood generator and h2load itself, so on this 2-core machine they measure the client as much as the server; compare the CPU columns."
    );
    out
}
