//! `cargo xtask bench node-ports`: one HTTP request through a node port, three ways, from
//! a client network namespace over a veth pair (MTU 1500):
//!
//! - direct to the listener's port (no node port at all: the floor),
//! - kube-proxy's path: an iptables DNAT rule from the node port to the local listener
//!   (what `externalTrafficPolicy: Local` installs), gatewayd `--ebpf off`,
//! - gatewayd `--node-ports`: the TC programs translate the node port to the listener's
//!   port and back (the filter attached at TC too),
//!
//! each with keep-alive connections and with a new connection per request. It reports
//! h2load's mean latencies, gatewayd's CPU per request and, for the translation, the TC
//! programs' own run time per request (kernel BPF statistics). Netfilter's and the TCP
//! stack's work runs in softirq context and is in no column.
//!
//! gatewayd is pinned to CPU 1; h2load and the upstream to CPU 0. The ways take turns over
//! three rounds in changing order, and the table has the medians.

use std::{
    fmt::Write as _,
    fs,
    path::Path,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{
    common::{KilledOnDrop, median, release_binaries},
    manifests::{gateway_yaml, ingress_service_yaml, one_route_yaml, upstream_service_yaml},
    results_dir,
    sni::{BpfStats, GATEWAY_IP, Net, process_cpu},
};
use crate::Workspace;

const SERVER_CPU: &str = "1";
const CLIENT_CPU: &str = "0";
const NODE_PORT: u16 = 30080;
const BIND_PORT: u16 = 8080;
const UPSTREAM_PORT: u16 = 18081;
const KEEPALIVE_SECONDS: &str = "5";
const KEEPALIVE_CONNECTIONS: &str = "8";
/// New connections per second, and how many: 5 s worth.
const NEW_CONNECTION_RATE: u32 = 200;
const NEW_CONNECTIONS: u32 = 5 * NEW_CONNECTION_RATE;
/// Every way runs once per round; the table has each figure's median.
const ROUNDS: usize = 3;
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// The translation's programs, as bpftool names them.
const PROGRAMS: [&str; 2] = ["gateway_np_in", "gateway_np_out"];

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Way {
    Direct,
    KubeProxy,
    Translated,
}

impl Way {
    const ALL: [Way; 3] = [Way::Direct, Way::KubeProxy, Way::Translated];

    fn label(self) -> &'static str {
        match self {
            Way::Direct => "direct to the listener (:8080)",
            Way::KubeProxy => "kube-proxy's path: iptables DNAT :30080 → :8080",
            Way::Translated => "gatewayd --node-ports: TC translation :30080 → :8080",
        }
    }

    fn port(self) -> u16 {
        match self {
            Way::Direct => BIND_PORT,
            Way::KubeProxy | Way::Translated => NODE_PORT,
        }
    }
}

/// One load's figures.
#[derive(Default)]
struct Load {
    requests: f64,
    rate: f64,
    /// h2load's mean time for request (µs), and for connect (new connections only).
    request_us: f64,
    connect_us: Option<f64>,
    server_cpu_us: f64,
    programs_ns: Option<f64>,
}

struct Figures {
    way: Way,
    keepalive: Load,
    new_connections: Load,
}

pub(crate) fn run(ws: &Workspace) -> Result<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "the node-port benchmark creates network namespaces and iptables rules: run it as root"
        );
    }
    let (gatewayd, [upstream]) = release_binaries(ws, ["demo-upstream"])?;
    let work = results_dir(ws).join("node-ports-work");
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work)?;
    fs::write(work.join("gateway.yaml"), gatewayd_config())?;
    let net = Net::new()?;
    let _stats = BpfStats::enable()?;
    let _upstream = KilledOnDrop(
        net.exec(&net.gw, CLIENT_CPU, &upstream)
            .args(["--listen", &format!("127.0.0.1:{UPSTREAM_PORT}")])
            .stdout(Stdio::null())
            .spawn()?,
    );
    // The ways take turns, each round in another order, so that a machine that warms up
    // or slows down over the run does not favour the way that always runs first.
    let mut rounds: Vec<Vec<Figures>> = Vec::new();
    for round in 0..ROUNDS {
        let mut order = Way::ALL;
        order.rotate_left(round % Way::ALL.len());
        if round % 2 == 1 {
            order.reverse();
        }
        for way in order {
            println!("-- round {}: {}", round + 1, way.label());
            let _rule = (way == Way::KubeProxy)
                .then(|| DnatRule::add(&net))
                .transpose()?;
            let server = start(way, &net, &gatewayd, &work)?;
            wait_serving(&net, way.port())?;
            let figures = measure(way, &net, server.0.id())?;
            match rounds.iter_mut().find(|r| r[0].way == way) {
                Some(runs) => runs.push(figures),
                None => rounds.push(vec![figures]),
            }
        }
    }
    let medians: Vec<Figures> = Way::ALL
        .iter()
        .filter_map(|way| rounds.iter().find(|r| r[0].way == *way))
        .map(|runs| median_figures(runs))
        .collect();
    Ok(table(&medians))
}

/// Each figure's median over the rounds.
fn median_figures(runs: &[Figures]) -> Figures {
    let load = |pick: fn(&Figures) -> &Load| Load {
        requests: median(&runs.iter().map(|f| pick(f).requests).collect::<Vec<_>>()),
        rate: median(&runs.iter().map(|f| pick(f).rate).collect::<Vec<_>>()),
        request_us: median(&runs.iter().map(|f| pick(f).request_us).collect::<Vec<_>>()),
        connect_us: median_of_some(runs.iter().map(|f| pick(f).connect_us)),
        server_cpu_us: median(
            &runs
                .iter()
                .map(|f| pick(f).server_cpu_us)
                .collect::<Vec<_>>(),
        ),
        programs_ns: median_of_some(runs.iter().map(|f| pick(f).programs_ns)),
    };
    Figures {
        way: runs[0].way,
        keepalive: load(|f| &f.keepalive),
        new_connections: load(|f| &f.new_connections),
    }
}

fn median_of_some(values: impl Iterator<Item = Option<f64>>) -> Option<f64> {
    let values: Vec<f64> = values.flatten().collect();
    (!values.is_empty()).then(|| median(&values))
}

fn start(way: Way, net: &Net, gatewayd: &Path, work: &Path) -> Result<KilledOnDrop> {
    let mut command = net.exec(&net.gw, SERVER_CPU, gatewayd);
    command
        .arg("run")
        .arg("--config")
        .arg(work.join("gateway.yaml"))
        .args(["--access-log", "off", "--worker-threads", "1"]);
    match way {
        Way::Translated => command
            .args(["--ebpf", "on", "--ebpf-hook", "tc", "--node-ports"])
            .args(["--interface", &net.gateway_if()]),
        Way::Direct | Way::KubeProxy => command.args(["--ebpf", "off"]),
    };
    let child = command
        .stdout(Stdio::null())
        .stderr(fs::File::create(work.join(format!("{way:?}.stderr")))?)
        .spawn()?;
    Ok(KilledOnDrop(child))
}

/// kube-proxy's node-port rule for a `Local` Service, reduced: DNAT to our listener.
/// Removed on drop.
struct DnatRule(String);

impl DnatRule {
    fn add(net: &Net) -> Result<Self> {
        iptables(&net.gw, "-A")?;
        Ok(DnatRule(net.gw.clone()))
    }
}

impl Drop for DnatRule {
    fn drop(&mut self) {
        let _ = iptables(&self.0, "-D");
    }
}

fn iptables(ns: &str, action: &str) -> Result<()> {
    let to = format!("{GATEWAY_IP}:{BIND_PORT}");
    let port = NODE_PORT.to_string();
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "iptables", "-t", "nat", action])
        .args(["PREROUTING", "-p", "tcp", "--dport", &port, "-j", "DNAT"])
        .args(["--to-destination", &to])
        .output()
        .context("running iptables")?;
    if !out.status.success() {
        bail!("iptables: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

fn wait_serving(net: &Net, port: u16) -> Result<()> {
    let deadline = Instant::now() + START_TIMEOUT;
    while Instant::now() < deadline {
        let out = net
            .exec(&net.cli, CLIENT_CPU, Path::new("curl"))
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", &url(port)])
            .output()?;
        if out.stdout == b"200" {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(100));
    }
    bail!(
        "gatewayd did not serve {} within {START_TIMEOUT:?}",
        url(port)
    )
}

fn url(port: u16) -> String {
    format!("http://{GATEWAY_IP}:{port}/status/200")
}

fn measure(way: Way, net: &Net, server_pid: u32) -> Result<Figures> {
    // Warm-up: the upstream pool and the first connections.
    h2load(net, way, &["-c", KEEPALIVE_CONNECTIONS, "-D", "1"])?;
    let keepalive = measured(way, server_pid, || {
        h2load(
            net,
            way,
            &["-c", KEEPALIVE_CONNECTIONS, "-D", KEEPALIVE_SECONDS],
        )
    })?;
    let (n, rate) = (NEW_CONNECTIONS.to_string(), NEW_CONNECTION_RATE.to_string());
    let new_connections = measured(way, server_pid, || {
        h2load(net, way, &["-c", &n, "-n", &n, "-r", &rate])
    })?;
    Ok(Figures {
        way,
        keepalive,
        new_connections,
    })
}

/// Runs one load and adds the CPU figures around it.
fn measured(way: Way, server_pid: u32, load: impl FnOnce() -> Result<Load>) -> Result<Load> {
    let translated = way == Way::Translated;
    let programs_before = translated.then(programs_run_time).transpose()?;
    let cpu_before = process_cpu(server_pid)?;
    let mut figures = load()?;
    let requests = figures.requests.max(1.0);
    figures.server_cpu_us = (process_cpu(server_pid)? - cpu_before) * 1e6 / requests;
    if let Some(before) = programs_before {
        figures.programs_ns = Some((programs_run_time()? - before) / requests);
    }
    Ok(figures)
}

/// h2load over HTTP/1.1; its request count, rate and mean latencies.
fn h2load(net: &Net, way: Way, args: &[&str]) -> Result<Load> {
    let out = net
        .exec(&net.cli, CLIENT_CPU, Path::new("/usr/bin/h2load"))
        .arg("--h1")
        .args(args)
        .arg(url(way.port()))
        .output()
        .context("running h2load")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = |prefix: &str| text.lines().find_map(|l| l.trim().strip_prefix(prefix));
    let rate = line("finished in ")
        .and_then(|r| r.split(", ").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("no rate in h2load output:\n{text}"))?;
    let requests = line("requests: ")
        .and_then(|r| r.split(" succeeded").next())
        .and_then(|r| r.rsplit(", ").next())
        .and_then(|n| n.trim().parse().ok())
        .with_context(|| format!("no request count in h2load output:\n{text}"))?;
    // `time for request:  min  max  mean  sd  +/- sd`
    let mean = |prefix: &str| {
        line(prefix)
            .and_then(|r| r.split_whitespace().nth(2))
            .and_then(micros)
    };
    Ok(Load {
        requests,
        rate,
        request_us: mean("time for request:").unwrap_or(f64::NAN),
        connect_us: args
            .contains(&"-r")
            .then(|| mean("time for connect:"))
            .flatten(),
        ..Load::default()
    })
}

/// h2load's `123us`, `1.23ms`, `1.2s` in µs.
fn micros(value: &str) -> Option<f64> {
    let (number, scale) = if let Some(n) = value.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = value.strip_suffix("ms") {
        (n, 1e3)
    } else {
        (value.strip_suffix('s')?, 1e6)
    };
    number.parse::<f64>().ok().map(|n| n * scale)
}

/// The translation programs' summed run time (ns), from `bpftool prog show`.
fn programs_run_time() -> Result<f64> {
    let out = Command::new("bpftool")
        .args(["prog", "show"])
        .output()
        .context("running bpftool")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut total = 0.0;
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let named = |name: &str| words.windows(2).any(|w| w[0] == "name" && w[1] == name);
        if PROGRAMS.iter().any(|p| named(p)) {
            total += words
                .windows(2)
                .find(|w| w[0] == "run_time_ns")
                .and_then(|w| w[1].parse::<f64>().ok())
                .unwrap_or(0.0);
        }
    }
    Ok(total)
}

fn gatewayd_config() -> String {
    [
        gateway_yaml("gw", "default", 80, "HTTP", &["*"], None),
        ingress_service_yaml("http", 80, BIND_PORT, Some(NODE_PORT)),
        one_route_yaml("all", "gw", &["*"], "up", 80),
        upstream_service_yaml("up", "http", 80, ([127, 0, 0, 1], UPSTREAM_PORT).into()),
    ]
    .join("---\n")
}

fn table(figures: &[Figures]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "A request to gatewayd over veth (MTU 1500), HTTP/1.1 to the demo upstream; gatewayd (1 worker) on CPU 1, h2load on CPU 0. Medians of {ROUNDS} rounds, the ways in a different order each round.\n"
    );
    let _ = writeln!(
        out,
        "| path | keep-alive req/s | mean request µs | gatewayd CPU µs / req | TC programs ns / req | new conn: mean connect µs | mean request µs | gatewayd CPU µs / conn | TC programs ns / conn |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|");
    let ns = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.0}"));
    for f in figures {
        let (k, n) = (&f.keepalive, &f.new_connections);
        let _ = writeln!(
            out,
            "| {} | {:.0} | {:.0} | {:.1} | {} | {} | {:.0} | {:.1} | {} |",
            f.way.label(),
            k.rate,
            k.request_us,
            k.server_cpu_us,
            ns(k.programs_ns),
            ns(n.connect_us),
            n.request_us,
            n.server_cpu_us,
            ns(n.programs_ns),
        );
    }
    let _ = writeln!(
        out,
        "\nNew connections: {NEW_CONNECTIONS} at {NEW_CONNECTION_RATE}/s, one request each. TC program time is the translation's own run time (ingress and egress, every packet of the request or connection) from the kernel's BPF statistics; the translated row also runs the filter at TC, as `--node-ports` deployments do. Netfilter's work on the kube-proxy path (conntrack and NAT) and the TCP stack's run in softirq and are in no column."
    );
    out
}

#[cfg(test)]
mod tests {
    use super::micros;

    #[test]
    fn reads_h2load_durations() {
        assert_eq!(micros("123us"), Some(123.0));
        assert_eq!(micros("1.5ms"), Some(1500.0));
        assert_eq!(micros("2s"), Some(2e6));
        assert_eq!(micros("n/a"), None);
    }
}
