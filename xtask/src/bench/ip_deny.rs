//! `cargo xtask bench ip-deny`: what refusing a connection from a denied source address
//! costs, the kernel filter dropping its SYN (an AuthorizationPolicy `DENY` with
//! `ipBlocks` on a TCP port, enforced at XDP) against gatewayd refusing it in userspace
//! (`--ebpf off`: accept, evaluate the policy, close). A flood of connections from the
//! denied client runs over a veth pair (MTU 1500) from a client namespace; gatewayd is
//! pinned to CPU 1, the generator to CPU 0.
//!
//! Per refused connection: gatewayd's CPU (scheduler nanoseconds), the XDP program's own
//! run time (kernel BPF statistics), and the softirq time of the whole machine
//! (`/proc/stat`), where the kernel's TCP work for both ends of the veth lands. A denied
//! client whose SYN is dropped retries it (1 s, then 3 s) until the generator gives up at
//! 3 s, as a real client would: those SYNs are in the kernel path's figures.

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
    manifests::{gateway_yaml, ingress_service_yaml, upstream_service_yaml, virtual_service_yaml},
    results_dir,
    sni::{BpfStats, GATEWAY_IP, Net, process_cpu, xdp_run_stats},
};
use crate::Workspace;

const SERVER_CPU: &str = "1";
const CLIENT_CPU: &str = "0";
/// The bench's client address (`sni::Net`'s), which the policy denies.
const CLIENT_IP: &str = "10.205.0.1";
const PORT: u16 = 9000;
const UPSTREAM_PORT: u16 = 18081;
const FLOOD_RATE: u32 = 800;
const PHASE_SECONDS: u32 = 5;
/// Measured phases per mode; the table shows the median.
const ROUNDS: usize = 3;
const START_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Kernel,
    Userspace,
}

impl Mode {
    fn label(self) -> &'static str {
        match self {
            Mode::Kernel => "gatewayd, kernel drops the SYN (XDP)",
            Mode::Userspace => "gatewayd --ebpf off (accept, policy, close)",
        }
    }
}

struct Round {
    connections: f64,
    counts: String,
    server_us: f64,
    xdp_us: Option<f64>,
    softirq_us: f64,
}

pub(crate) fn run(ws: &Workspace) -> Result<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the IP-deny benchmark creates network namespaces and attaches eBPF: run it as root");
    }
    let (gatewayd, [upstream, flood]) = release_binaries(ws, ["demo-upstream", "sni-flood"])?;
    let work = results_dir(ws).join("ip-deny-work");
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work)?;
    let net = Net::new()?;
    let _stats = BpfStats::enable()?;
    let _upstream = KilledOnDrop(
        net.exec(&net.gw, CLIENT_CPU, &upstream)
            .args(["--listen", &format!("127.0.0.1:{UPSTREAM_PORT}")])
            .stdout(Stdio::null())
            .spawn()?,
    );
    let mut results = Vec::new();
    for mode in [Mode::Kernel, Mode::Userspace] {
        println!("-- {}", mode.label());
        let server = start(mode, &net, &gatewayd, &work)?;
        wait_ready(&net)?;
        let xdp = (mode == Mode::Kernel).then(|| xdp_id(&net)).transpose()?;
        // A first phase warms up; the rounds after it are measured.
        let _ = flood_phase(&net, &flood)?;
        let mut rounds = Vec::new();
        for _ in 0..ROUNDS {
            rounds.push(measure(&net, &flood, server.0.id(), xdp)?);
        }
        let denied_in_kernel = metric(&net, "gateway_kernel_packets_total{outcome=\"ip_denied\"}");
        let denied_in_userspace = metric(&net, "gateway_authz_decisions_total");
        results.push((mode, rounds, denied_in_kernel, denied_in_userspace));
    }
    Ok(table(&results))
}

fn measure(net: &Net, flood: &Path, server_pid: u32, xdp: Option<u32>) -> Result<Round> {
    let server_before = process_cpu(server_pid)?;
    let xdp_before = xdp.map(xdp_run_stats).transpose()?;
    let softirq_before = softirq_seconds()?;
    let (counts, connections) = flood_phase(net, flood)?;
    let softirq = softirq_seconds()? - softirq_before;
    let server = process_cpu(server_pid)? - server_before;
    let xdp_ns = match (xdp, xdp_before) {
        (Some(id), Some((ns0, _))) => Some(xdp_run_stats(id)?.0 - ns0),
        _ => None,
    };
    let per = connections.max(1.0);
    Ok(Round {
        connections,
        counts,
        server_us: server * 1e6 / per,
        xdp_us: xdp_ns.map(|ns| ns / 1e3 / per),
        softirq_us: softirq * 1e6 / per,
    })
}

/// Softirq time of all CPUs so far, in seconds (`/proc/stat`, in USER_HZ ticks).
fn softirq_seconds() -> Result<f64> {
    let stat = fs::read_to_string("/proc/stat")?;
    let ticks: f64 = stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .and_then(|l| l.split_whitespace().nth(7))
        .and_then(|v| v.parse().ok())
        .context("no softirq column in /proc/stat")?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok(ticks / hz)
}

fn flood_phase(net: &Net, flood: &Path) -> Result<(String, f64)> {
    let out = net
        .exec(&net.cli, CLIENT_CPU, flood)
        .args(["--connect", &format!("{GATEWAY_IP}:{PORT}")])
        .args(["--rate", &FLOOD_RATE.to_string()])
        .args(["--seconds", &PHASE_SECONDS.to_string()])
        .output()?;
    let line = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let started = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0.0);
    Ok((line, started))
}

fn start(mode: Mode, net: &Net, gatewayd: &Path, work: &Path) -> Result<KilledOnDrop> {
    let dir: PathBuf = work.join(format!("{mode:?}"));
    fs::create_dir_all(&dir)?;
    fs::write(dir.join("gateway.yaml"), config())?;
    let mut command = net.exec(&net.gw, SERVER_CPU, gatewayd);
    command
        .arg("run")
        .arg("--config")
        .arg(dir.join("gateway.yaml"))
        .args(["--access-log", "off", "--worker-threads", "1"]);
    match mode {
        Mode::Kernel => command.args(["--ebpf", "on", "--interface", &net.gateway_if()]),
        Mode::Userspace => command.args(["--ebpf", "off"]),
    };
    Ok(KilledOnDrop(
        command
            .stdout(Stdio::null())
            .stderr(fs::File::create(dir.join("stderr"))?)
            .spawn()?,
    ))
}

fn curl_in_gateway(net: &Net, url: &str) -> Option<String> {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &net.gw,
            "curl",
            "-s",
            "--max-time",
            "2",
            url,
        ])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn wait_ready(net: &Net) -> Result<()> {
    let deadline = Instant::now() + START_TIMEOUT;
    while Instant::now() < deadline {
        if curl_in_gateway(net, "http://127.0.0.1:15021/healthz/ready").is_some() {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(100));
    }
    bail!("gatewayd was not ready within {START_TIMEOUT:?}")
}

/// The sum of a metric's samples whose line starts with `prefix`.
fn metric(net: &Net, prefix: &str) -> f64 {
    curl_in_gateway(net, "http://127.0.0.1:15090/stats/prometheus")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .fold(0.0, |sum, v| sum + v)
}

/// The XDP program's id once gatewayd has attached it (after it reports ready).
fn xdp_id(net: &Net) -> Result<u32> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        let out = Command::new("ip")
            .args(["-n", &net.gw, "link", "show", "dev", &net.gateway_if()])
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let id = text
            .split("prog/xdp id ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|id| id.parse().ok());
        match id {
            Some(id) => return Ok(id),
            None if Instant::now() > deadline => {
                bail!("no XDP program on the gateway interface: {text}")
            }
            None => thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// A TCP server on port 9000 (bound on PORT) to the demo upstream, and a DENY policy for
/// the bench's client address: a plain IP rule on a TCP port, which the kernel enforces.
fn config() -> String {
    let route = "  tcp:\n  - route: [{destination: {host: up.default.svc.cluster.local, port: {number: 80}}}]\n";
    let policy = format!(
        r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: deny-client, namespace: istio-system}}
spec:
  selector: {{matchLabels: {{istio: ingressgateway}}}}
  action: DENY
  rules: [{{from: [{{source: {{ipBlocks: ["{CLIENT_IP}/32"]}}}}]}}]
"#
    );
    [
        gateway_yaml("gw", "istio-system", 9000, "TCP", &["*"], None),
        ingress_service_yaml("tcp", 9000, PORT, None),
        virtual_service_yaml("tcp", "istio-system", &["*"], "gw", route),
        policy,
        upstream_service_yaml("up", "tcp", 80, ([127, 0, 0, 1], UPSTREAM_PORT).into()),
    ]
    .join("---\n")
}

/// A mode, its rounds, and its kernel and userspace denial counters.
type ModeResult = (Mode, Vec<Round>, f64, f64);

fn table(results: &[ModeResult]) -> String {
    let median = |values: Vec<f64>| super::common::median(&values);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Connections from a denied source address at {FLOOD_RATE}/s for {PHASE_SECONDS} s over veth (MTU 1500), median of {ROUNDS} rounds; gatewayd on CPU 1 (one worker), the generator on CPU 0.\n"
    );
    let _ = writeln!(
        out,
        "| refused by | gatewayd CPU µs / conn | XDP µs / conn | softirq µs / conn (whole machine) | total µs / conn | flood outcomes (last round) |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|");
    let mut totals = Vec::new();
    for (mode, rounds, _, _) in results {
        let server = median(rounds.iter().map(|r| r.server_us).collect());
        let xdp = rounds
            .iter()
            .map(|r| r.xdp_us)
            .collect::<Option<Vec<f64>>>()
            .map(median);
        let softirq = median(rounds.iter().map(|r| r.softirq_us).collect());
        let total = server + xdp.unwrap_or(0.0) + softirq;
        totals.push(total);
        let last = rounds.last();
        let _ = writeln!(
            out,
            "| {} | {server:.1} | {} | {softirq:.1} | {total:.1} | {} ({:.0} conns) |",
            mode.label(),
            xdp.map_or("-".to_owned(), |x| format!("{x:.2}")),
            last.map_or("", |r| r.counts.as_str()),
            last.map_or(0.0, |r| r.connections),
        );
    }
    if let [kernel, userspace] = totals[..] {
        let _ = writeln!(
            out,
            "\nKernel deny costs {:.2}× the userspace refusal per connection (gatewayd + XDP + softirq).",
            kernel / userspace.max(f64::MIN_POSITIVE)
        );
    }
    for (mode, _, in_kernel, in_userspace) in results {
        let _ = writeln!(
            out,
            "{}: `ip_denied` {in_kernel:.0} SYNs dropped in the kernel, {in_userspace:.0} policy decisions in gatewayd.",
            mode.label()
        );
    }
    let _ = writeln!(
        out,
        "\nOutcomes as the generator saw them: `closed` (gatewayd accepted and closed), `stalled` (no answer in 3 s: the SYNs were dropped; the client retried them). softirq is `/proc/stat` over all CPUs in 10 ms ticks, so it includes both ends of the veth and anything else the machine did meanwhile (other work on a shared machine inflates it in both rows)."
    );
    out
}
