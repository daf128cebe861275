//! `cargo xtask bench http`: the plaintext HTTP data plane side by side with identical
//! routing in gatewayd, nginx and HAProxy: 100 hosts × 10 path prefixes, every route to
//! one upstream service of 2 endpoints (round robin, keep-alive upstream connections).
//!
//! - HTTP/1.1 keep-alive: wrk, 1 thread, `WRK_CONNECTIONS` connections, `WRK_SECONDS`;
//!   requests/s, p50/p99 latency (at saturation: wrk2 is not packaged), and the server's
//!   CPU time, instructions and cycles per request;
//! - HTTP/2 (h2c, prior knowledge): h2load, `H2_CLIENTS` connections × `H2_STREAMS`
//!   concurrent streams, `H2_REQUESTS` requests; requests/s and CPU per request;
//! - new connections: wrk with `Connection: close`, CPU per connection;
//! - memory: RSS growth per 10 000 idle keep-alive connections, each after one request.
//!
//! nginx runs twice: as it is usually set up (adding `X-Forwarded-For`), and adding the
//! request headers gatewayd adds as Istio's gateway does (`peers::NginxHeaders::Istio`),
//! so that the comparison can be made both against nginx's usual work and against the
//! same work.
//!
//! Latency against offered load is `bench latency`'s. Each server has one worker
//! (gatewayd `--worker-threads 1`, nginx `worker_processes 1`, HAProxy `nbthread 1`)
//! pinned to CPU 1; wrk/h2load and the upstream (an nginx answering a fixed 200 on two
//! ports) share CPU 0 (`peers`). CPU is utime+stime from /proc over each run
//! (all of a server's processes); instructions and cycles from `perf stat -p`. Rounds
//! interleave the servers; medians are reported with the min–max spread.

use std::{
    fmt::Write as _,
    fs,
    io::{Read as _, Write as _},
    net::TcpStream,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

use super::{
    chart::{self, Panel, SeriesLabelPosition},
    common::{
        free_port, kernel_floor, median, pinned, process_tree, release_binaries, spread,
        tree_cpu_seconds, tree_on_cpu_seconds, tree_rss_bytes, tree_user_system_seconds,
    },
    peers::{
        CLIENT_CPU, HOSTS, PACED_CONNECTIONS, PREFIXES, SERVER_CPU, Server, TARGET_HOST,
        TARGET_PATH, check_routing, start_all, start_gatewayd, start_upstream,
        wrk_requests_per_second,
    },
    results_dir,
};
use crate::Workspace;

/// Keep-alive rounds (HTTP/1.1 and h2c). Two runs of 3 on one quiet machine put the
/// HTTP/1.1 CPU ratio at 1.21× and 1.02× nginx's: a server's figure drifts between rounds
/// by more than the gap measured, so the ratio is also taken within each round, the
/// servers' order rotating, as the new-connection rounds do.
const ROUNDS: usize = 5;
const WRK_CONNECTIONS: u32 = 50;
const WRK_SECONDS: u32 = 5;
const H2_CLIENTS: u32 = 10;
const H2_STREAMS: u32 = 10;
const H2_REQUESTS: u32 = 50_000;
/// Below HAProxy's maxconn, which the 20 000-descriptor limit caps at 9 500; scaled to 10 000.
const IDLE_CONNECTIONS: usize = 8_000;
/// The memory curve's step.
const IDLE_STEP: usize = 1_000;
/// New-connection runs: wrk with `Connection: close`, so every request is a connection,
/// one connection at a time: at saturation (the earlier `-c10`) the work per connection
/// depended on how many events each wake-up found, which depended on what the machine's
/// other tenants left the load generator, and two runs disagreed (issue 15: 0.78× nginx
/// in one, 1.29× in another). More, shorter rounds than the other rows, the servers'
/// order rotating, and the ratio to nginx taken within each round.
const CONN_CONNECTIONS: u32 = 1;
const CONN_SECONDS: u32 = 2;
const CONN_ROUNDS: usize = 9;
/// `bench workers`: open-loop (paced-load) runs this long.
const PACED_SECONDS: u32 = 5;

#[derive(Default)]
struct Figures {
    h1_rps: Vec<f64>,
    h1_cpu_us: Vec<f64>,
    /// The kernel's part of `h1_cpu_us` (stime): system calls, and on loopback the
    /// receiving sockets' TCP work, which runs in the sender's context.
    h1_kernel_us: Vec<f64>,
    h1_instructions: Vec<f64>,
    h1_cycles: Vec<f64>,
    h1_p50_ms: Vec<f64>,
    h1_p99_ms: Vec<f64>,
    h2_rps: Vec<f64>,
    h2_cpu_us: Vec<f64>,
    h2_instructions: Vec<f64>,
    /// The nginxes' only: gatewayd's CPU per HTTP/1.1 and per h2c request ÷ this
    /// server's, round by round.
    h1_ratio: Vec<f64>,
    h2_ratio: Vec<f64>,
    /// New connections (one request each): per second and CPU µs per connection.
    conn_rps: Vec<f64>,
    conn_cpu_us: Vec<f64>,
    /// The kernel's part of `conn_cpu_us`: its share of utime + stime (clock ticks, coarse)
    /// applied to the scheduler's time.
    conn_kernel_us: Vec<f64>,
    /// The nginxes' only: gatewayd's CPU per new connection ÷ this server's, round by round.
    conn_ratio: Vec<f64>,
    idle_mib_per_10k: Option<f64>,
    /// RSS growth in MiB as idle connections are opened: (connections, MiB).
    idle_curve: Vec<(f64, f64)>,
}

pub(crate) fn run(ws: &Workspace) -> Result<String> {
    let (gatewayd, []) = release_binaries(ws, [])?;
    let work = results_dir(ws).join("http-work");
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work)?;
    let (_upstream, servers) = start_all(&gatewayd, &work)?;
    let mut figures: Vec<Figures> = servers.iter().map(|_| Figures::default()).collect();
    for round in 0..ROUNDS {
        for i in (0..servers.len()).map(|i| (i + round) % servers.len()) {
            println!("round {round}: {} HTTP/1.1 (wrk)", servers[i].name);
            wrk_run(&servers[i], &mut figures[i])?;
        }
        for i in (0..servers.len()).map(|i| (i + round) % servers.len()) {
            println!("round {round}: {} HTTP/2 (h2load)", servers[i].name);
            h2load_run(&servers[i], &mut figures[i])?;
        }
        for peer in RATIO_PEERS {
            let h1 = last_ratio(&figures, peer, |f| &f.h1_cpu_us);
            let h2 = last_ratio(&figures, peer, |f| &f.h2_cpu_us);
            figures[peer].h1_ratio.push(h1);
            figures[peer].h2_ratio.push(h2);
        }
    }
    for round in 0..CONN_ROUNDS {
        let rotated = (0..servers.len()).map(|i| (i + round) % servers.len());
        for i in rotated {
            println!(
                "round {round}: {} new connections (wrk -c{CONN_CONNECTIONS}, Connection: close)",
                servers[i].name
            );
            new_connections_run(&servers[i], &mut figures[i])?;
        }
        for peer in RATIO_PEERS {
            let ratio = last_ratio(&figures, peer, |f| &f.conn_cpu_us);
            figures[peer].conn_ratio.push(ratio);
        }
    }
    for (server, f) in servers.iter().zip(&mut figures) {
        println!("{}: {IDLE_CONNECTIONS} idle connections", server.name);
        f.idle_curve = idle_memory(server)?;
        f.idle_mib_per_10k = f
            .idle_curve
            .last()
            .map(|(connections, mib)| mib / connections * 10_000.0);
    }
    let svg = results_dir(ws).join("memory.svg");
    draw_memory(&svg, &servers, &figures)?;
    Ok(table(&servers, &figures)
        + &connections_table(&servers, &figures)
        + &format!("\nMemory against idle connections: {}.\n", svg.display()))
}

/// The servers gatewayd is compared with round by round (`start_all`'s order): nginx and
/// nginx adding Istio's headers.
const RATIO_PEERS: [usize; 2] = [1, 3];

/// gatewayd's (`figures[0]`) last figure ÷ `peer`'s: the two measured seconds apart
/// within one round.
fn last_ratio(figures: &[Figures], peer: usize, of: fn(&Figures) -> &Vec<f64>) -> f64 {
    let last = |f: &Figures| of(f).last().copied().unwrap_or(f64::NAN);
    last(&figures[0]) / last(&figures[peer])
}

/// `median (min–max)` of per-round ratios.
fn ratio_spread(values: &[f64]) -> String {
    format!("{:.2} ({})", median(values), spread_to(values, 2))
}

/// A perf counter's median per request, or `–` where the machine has no counters.
fn counted(values: &[f64]) -> String {
    match median(values) {
        v if v > 0.0 => format!("{v:.0}"),
        _ => "–".into(),
    }
}

/// The open-loop latency table: each server's latency minus the upstream's own.
/// `cargo xtask bench workers`: gatewayd's HTTP/1.1 and h2c CPU per request with one
/// worker and with two, the routing of `bench http`, at a fixed offered rate well below
/// what one worker sustains (`WORKERS_RATE`: open loop, paced-load for HTTP/1.1, h2load
/// `--rps` for h2c). Both gatewayds are pinned to CPU 1, the load and the upstream to
/// CPU 0: at a fixed rate neither run time-shares its core with the load generator, and
/// the two workers seldom run at once, so the figure shows what the workers' shared
/// state costs per request (atomics, locks, cross-thread wake-ups), not what a second
/// core adds or what batching at saturation saves.
pub(crate) fn run_workers(ws: &Workspace) -> Result<String> {
    let (gatewayd, [paced_load]) = release_binaries(ws, ["paced-load"])?;
    let work = results_dir(ws).join("workers-work");
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work)?;
    let upstream_ports = [free_port()?, free_port()?];
    let _upstream = start_upstream(&work, upstream_ports)?;
    let servers = [
        start_gatewayd(&gatewayd, &work, upstream_ports, 1)?,
        start_gatewayd(&gatewayd, &work, upstream_ports, 2)?,
    ];
    for server in &servers {
        check_routing(server)?;
    }
    let mut figures: Vec<Figures> = servers.iter().map(|_| Figures::default()).collect();
    for round in 0..WORKERS_ROUNDS {
        // Each round starts with the other server.
        for i in [round % 2, (round + 1) % 2] {
            println!(
                "round {round}: {} worker(s) HTTP/1.1 and h2c at {WORKERS_RATE} req/s",
                i + 1
            );
            paced_cpu_run(&paced_load, &servers[i], &mut figures[i])?;
            h2load_paced_run(&servers[i], &mut figures[i])?;
        }
    }
    let mut out =
        String::from("| gatewayd | HTTP/1.1 CPU µs / req | h2c CPU µs / req |\n|---|---|---|\n");
    for (workers, f) in [1, 2].iter().zip(&figures) {
        let _ = writeln!(
            out,
            "| {workers} worker(s) | {:.1} ({}) | {:.1} ({}) |",
            median(&f.h1_cpu_us),
            spread(&f.h1_cpu_us),
            median(&f.h2_cpu_us),
            spread(&f.h2_cpu_us),
        );
    }
    let _ = writeln!(
        out,
        "\nTwo workers against one: HTTP/1.1 CPU per request {:.2}×, h2c {:.2}×. Medians of {WORKERS_ROUNDS} rounds (min–max), alternating which runs first; {WORKERS_RATE} requests/s offered for {PACED_SECONDS} s: HTTP/1.1 by paced-load over {PACED_CONNECTIONS} keep-alive connections, h2c by h2load -c{H2_PACED_CLIENTS} -m1 --rps {}. Both gatewayds pinned to CPU {SERVER_CPU}; clients and upstream on CPU {CLIENT_CPU}.",
        median(&figures[1].h1_cpu_us) / median(&figures[0].h1_cpu_us),
        median(&figures[1].h2_cpu_us) / median(&figures[0].h2_cpu_us),
        WORKERS_RATE / H2_PACED_CLIENTS,
    );
    Ok(out)
}

/// `bench workers`: the offered rate, its rounds, and h2load's clients at that rate.
const WORKERS_RATE: u32 = 4_000;
const WORKERS_ROUNDS: usize = 5;
const H2_PACED_CLIENTS: u32 = 8;

/// paced-load at `WORKERS_RATE` against the server: its CPU per request.
fn paced_cpu_run(bin: &Path, server: &Server, f: &mut Figures) -> Result<()> {
    let before = cpu_seconds(server);
    let output = pinned(CLIENT_CPU, bin)
        .args(["--connect", &format!("127.0.0.1:{}", server.h1_port)])
        .args(["--host", TARGET_HOST, "--path", TARGET_PATH])
        .args(["--rate", &WORKERS_RATE.to_string()])
        .args(["--seconds", &PACED_SECONDS.to_string()])
        .args(["--connections", &PACED_CONNECTIONS.to_string()])
        .output()
        .context("running paced-load")?;
    let used = cpu_seconds(server) - before;
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let field = |name: &str| -> Option<f64> {
        text.split_whitespace()
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
    };
    let ok = field("ok").unwrap_or(0.0);
    if !output.status.success() || field("errors") != Some(0.0) || ok == 0.0 {
        bail!(
            "paced-load against {} failed:\n{text}{}",
            server.name,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    f.h1_cpu_us.push(used / ok * 1e6);
    Ok(())
}

/// h2load at `WORKERS_RATE` (`--rps` per client, one stream each) for `PACED_SECONDS`:
/// the server's CPU per request.
fn h2load_paced_run(server: &Server, f: &mut Figures) -> Result<()> {
    let before = cpu_seconds(server);
    let output = pinned(CLIENT_CPU, Path::new("h2load"))
        .args(["-c", &H2_PACED_CLIENTS.to_string(), "-m", "1"])
        .args(["--rps", &(WORKERS_RATE / H2_PACED_CLIENTS).to_string()])
        .args(["-D", &PACED_SECONDS.to_string()])
        .args(["-H", &format!(":authority: {TARGET_HOST}")])
        .arg(format!("http://127.0.0.1:{}{TARGET_PATH}", server.h2_port))
        .output()
        .context("running h2load")?;
    let used = cpu_seconds(server) - before;
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let count = |label: &str| -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix("requests: "))?
            .split(", ")
            .find_map(|part| part.strip_suffix(label))?
            .parse()
            .ok()
    };
    let (started, succeeded) = (count(" started"), count(" succeeded"));
    let (Some(started), Some(succeeded)) = (started, succeeded) else {
        bail!("{}: h2load output:\n{text}", server.name);
    };
    // A duration run stops with requests in flight; any other shortfall is a failure.
    if succeeded == 0.0 || succeeded + f64::from(H2_PACED_CLIENTS) < started {
        bail!(
            "{}: {succeeded} of {started} h2 requests succeeded:\n{text}",
            server.name
        );
    }
    f.h2_cpu_us.push(used / succeeded * 1e6);
    Ok(())
}

/// New connections: each server's rate and CPU per connection, and gatewayd's ÷ each nginx's.
fn connections_table(servers: &[Server], figures: &[Figures]) -> String {
    let mut out = String::from(
        "\nNew connections:\n\n| server | new connections/s | CPU µs per new connection | gatewayd ÷ this server, per round |\n|---|---|---|---|\n",
    );
    for (server, f) in servers.iter().zip(figures) {
        let _ = writeln!(
            out,
            "| {} | {:.0} ({}) | {:.1} ({}) | {} |",
            server.name,
            median(&f.conn_rps),
            spread(&f.conn_rps),
            median(&f.conn_cpu_us),
            spread_to(&f.conn_cpu_us, 1),
            if f.conn_ratio.is_empty() {
                String::new()
            } else {
                ratio_spread(&f.conn_ratio)
            },
        );
    }
    let _ = writeln!(
        out,
        "\nNew connections: wrk -t1 -c{CONN_CONNECTIONS} -d{CONN_SECONDS}s with `Connection: close`, {CONN_ROUNDS} rounds (the servers' order rotating), CPU from each server's scheduler time (/proc/PID/task/*/schedstat); medians (min–max)."
    );
    let (ours, nginx) = (&figures[0], &figures[RATIO_PEERS[0]]);
    let _ = writeln!(
        out,
        "{}",
        kernel_floor(
            "new connection",
            median(&ours.conn_kernel_us),
            median(&nginx.conn_kernel_us),
            median(&nginx.conn_cpu_us),
        )
    );
    out
}

/// min–max with `decimals` places (ratios and µs need more than `spread`'s none).
fn spread_to(values: &[f64], decimals: usize) -> String {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{min:.decimals$}–{max:.decimals$}")
}

/// wrk with `Connection: close`: every request opens a connection (the server closes it).
fn new_connections_run(server: &Server, f: &mut Figures) -> Result<()> {
    let before = tree_on_cpu_seconds(server.process.0.id());
    let (user_before, kernel_before) = tree_user_system_seconds(server.process.0.id());
    let output = pinned(CLIENT_CPU, Path::new("wrk"))
        .args([
            "-t1",
            &format!("-c{CONN_CONNECTIONS}"),
            &format!("-d{CONN_SECONDS}s"),
        ])
        .args([
            "-H",
            &format!("Host: {TARGET_HOST}"),
            "-H",
            "Connection: close",
        ])
        .arg(format!("http://127.0.0.1:{}{TARGET_PATH}", server.h1_port))
        .output()
        .context("running wrk")?;
    let used = tree_on_cpu_seconds(server.process.0.id()) - before;
    let (user, kernel) = tree_user_system_seconds(server.process.0.id());
    let (user, kernel) = (user - user_before, kernel - kernel_before);
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    if text.contains("Non-2xx") {
        bail!("{}: wrk saw non-2xx answers:\n{text}", server.name);
    }
    let requests = wrk_requests(&text)?;
    f.conn_rps.push(requests / f64::from(CONN_SECONDS));
    f.conn_cpu_us.push(used / requests * 1e6);
    if user + kernel > 0.0 {
        f.conn_kernel_us
            .push(used * kernel / (user + kernel) / requests * 1e6);
    }
    Ok(())
}

fn table(servers: &[Server], figures: &[Figures]) -> String {
    let mut out = String::from(
        "| server | HTTP/1.1 req/s | CPU µs/req | instructions/req | cycles/req | p50 | p99 | HTTP/2 req/s | CPU µs/req | instructions/req | RSS per 10 000 idle conns |\n|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for (server, f) in servers.iter().zip(figures) {
        let _ = writeln!(
            out,
            "| {} | {:.0} ({}) | {:.1} | {} | {} | {:.2} ms | {:.2} ms | {:.0} ({}) | {:.1} | {} | {:.1} MiB |",
            server.name,
            median(&f.h1_rps),
            spread(&f.h1_rps),
            median(&f.h1_cpu_us),
            counted(&f.h1_instructions),
            counted(&f.h1_cycles),
            median(&f.h1_p50_ms),
            median(&f.h1_p99_ms),
            median(&f.h2_rps),
            spread(&f.h2_rps),
            median(&f.h2_cpu_us),
            counted(&f.h2_instructions),
            f.idle_mib_per_10k.unwrap_or(0.0),
        );
    }
    // Ratios of gatewayd to the best peer (lower is better for cost, higher for rate).
    let best = |get: fn(&Figures) -> f64, lower_is_better: bool| {
        let peers = figures[1..].iter().map(get);
        if lower_is_better {
            peers.fold(f64::INFINITY, f64::min)
        } else {
            peers.fold(0.0, f64::max)
        }
    };
    let ours = &figures[0];
    let _ = writeln!(
        out,
        "\ngatewayd ÷ best peer: HTTP/1.1 req/s {:.2}×, CPU/req {:.2}×, instructions/req {}, p99 {:.2}×; HTTP/2 req/s {:.2}×, CPU/req {:.2}×; idle memory {:.2}×.",
        median(&ours.h1_rps) / best(|f| median(&f.h1_rps), false),
        median(&ours.h1_cpu_us) / best(|f| median(&f.h1_cpu_us), true),
        match median(&ours.h1_instructions) / best(|f| median(&f.h1_instructions), true) {
            ratio if ratio.is_finite() => format!("{ratio:.2}×"),
            _ => "– (no perf counters)".into(),
        },
        median(&ours.h1_p99_ms) / best(|f| median(&f.h1_p99_ms), true),
        median(&ours.h2_rps) / best(|f| median(&f.h2_rps), false),
        median(&ours.h2_cpu_us) / best(|f| median(&f.h2_cpu_us), true),
        ours.idle_mib_per_10k.unwrap_or(0.0) / best(|f| f.idle_mib_per_10k.unwrap_or(0.0), true),
    );
    for (server, f) in servers.iter().zip(figures) {
        if f.h1_ratio.is_empty() {
            continue;
        }
        let _ = writeln!(
            out,
            "\ngatewayd ÷ {} within each round (median, min–max of {ROUNDS}): HTTP/1.1 CPU/req {}, HTTP/2 CPU/req {}.",
            server.name,
            ratio_spread(&f.h1_ratio),
            ratio_spread(&f.h2_ratio),
        );
    }
    let split: Vec<String> = servers
        .iter()
        .zip(figures)
        .map(|(server, f)| {
            let (cpu, kernel) = (median(&f.h1_cpu_us), median(&f.h1_kernel_us));
            format!(
                "{} {:.1} user + {kernel:.1} kernel",
                server.name,
                cpu - kernel
            )
        })
        .collect();
    let _ = writeln!(
        out,
        "\nHTTP/1.1 CPU µs/req, user and kernel: {}.",
        split.join("; ")
    );
    let nginx = &figures[RATIO_PEERS[0]];
    let _ = writeln!(
        out,
        "{}",
        kernel_floor(
            "HTTP/1.1 request",
            median(&ours.h1_kernel_us),
            median(&nginx.h1_kernel_us),
            median(&nginx.h1_cpu_us),
        )
    );
    let _ = writeln!(
        out,
        "\nMedians of {ROUNDS} interleaved rounds, the servers' order rotating (min–max in parentheses). Routing: {HOSTS} hosts × {PREFIXES} prefixes, requests to {TARGET_HOST}{TARGET_PATH}, upstream: 2 endpoints (nginx, fixed 200). \
         HTTP/1.1: wrk -t1 -c{WRK_CONNECTIONS} -d{WRK_SECONDS}s --latency (latency at saturation). HTTP/2: h2load -c{H2_CLIENTS} -m{H2_STREAMS} -n{H2_REQUESTS} (h2c). \
         One worker per server on CPU {SERVER_CPU}; clients and upstream on CPU {CLIENT_CPU}."
    );
    out
}

fn cpu_seconds(server: &Server) -> f64 {
    tree_cpu_seconds(server.process.0.id())
}

fn rss_bytes(server: &Server) -> f64 {
    tree_rss_bytes(server.process.0.id())
}

/// `perf stat` on the server's processes while `load` runs: (result, instructions, cycles).
fn with_perf<T>(
    server: &Server,
    tag: &str,
    load: impl FnOnce() -> Result<T>,
) -> Result<(T, f64, f64)> {
    let pids: Vec<String> = process_tree(server.process.0.id())
        .iter()
        .map(u32::to_string)
        .collect();
    let out =
        std::env::temp_dir().join(format!("gatewayd-bench-perf-{}-{tag}", std::process::id()));
    let perf = Command::new("perf")
        .args(["stat", "-x", ",", "-e", "instructions,cycles", "-o"])
        .arg(&out)
        .args(["-p", &pids.join(",")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    std::thread::sleep(Duration::from_millis(200));
    let result = load();
    let (mut instructions, mut cycles) = (0.0, 0.0);
    if let Ok(perf) = perf {
        let mut perf = perf;
        // SAFETY: kill(2) on our own child's pid; SIGINT makes perf print its counts.
        unsafe {
            libc::kill(perf.id() as libc::pid_t, libc::SIGINT);
        }
        let _ = perf.wait();
        let text = fs::read_to_string(&out).unwrap_or_default();
        for line in text.lines() {
            let fields: Vec<&str> = line.split(',').collect();
            let value: f64 = fields.first().and_then(|v| v.parse().ok()).unwrap_or(0.0);
            match fields.get(2).map(|e| e.trim_end_matches(":u")) {
                Some(e) if e.starts_with("instructions") => instructions = value,
                Some(e) if e.starts_with("cycles") => cycles = value,
                _ => {}
            }
        }
        let _ = fs::remove_file(&out);
    }
    Ok((result?, instructions, cycles))
}

fn wrk_run(server: &Server, f: &mut Figures) -> Result<()> {
    let before = cpu_seconds(server);
    let (_, kernel_before) = tree_user_system_seconds(server.process.0.id());
    let (text, instructions, cycles) = with_perf(server, "wrk", || {
        let output = pinned(CLIENT_CPU, Path::new("wrk"))
            .args([
                "-t1",
                &format!("-c{WRK_CONNECTIONS}"),
                &format!("-d{WRK_SECONDS}s"),
                "--latency",
            ])
            .args(["-H", &format!("Host: {TARGET_HOST}")])
            .arg(format!("http://127.0.0.1:{}{TARGET_PATH}", server.h1_port))
            .output()
            .context("running wrk")?;
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    })?;
    let used = cpu_seconds(server) - before;
    let kernel = tree_user_system_seconds(server.process.0.id()).1 - kernel_before;
    if text.contains("Non-2xx") || text.contains("Socket errors") {
        bail!("{}: wrk saw errors:\n{text}", server.name);
    }
    let requests = wrk_requests(&text)?;
    let rps = wrk_requests_per_second(&text)?;
    let percentile = |p: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(p).map(str::trim))
            .and_then(parse_wrk_duration_ms)
            .unwrap_or(0.0)
    };
    f.h1_rps.push(rps);
    f.h1_cpu_us.push(used / requests * 1e6);
    f.h1_kernel_us.push(kernel / requests * 1e6);
    f.h1_instructions.push(instructions / requests);
    f.h1_cycles.push(cycles / requests);
    f.h1_p50_ms.push(percentile("50%"));
    f.h1_p99_ms.push(percentile("99%"));
    Ok(())
}

/// The request count of wrk's summary line (`N requests in 5.00s, …`).
fn wrk_requests(text: &str) -> Result<f64> {
    text.lines()
        .find(|l| l.contains(" requests in "))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("wrk output:\n{text}"))
}

/// wrk's `1.23ms`, `456.00us`, `1.01s` → milliseconds.
fn parse_wrk_duration_ms(text: &str) -> Option<f64> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let value: f64 = text[..split].parse().ok()?;
    Some(match &text[split..] {
        "us" => value / 1000.0,
        "ms" => value,
        "s" => value * 1000.0,
        "m" => value * 60_000.0,
        _ => return None,
    })
}

fn h2load_run(server: &Server, f: &mut Figures) -> Result<()> {
    let before = cpu_seconds(server);
    let (text, instructions, _) = with_perf(server, "h2load", || {
        let output = pinned(CLIENT_CPU, Path::new("h2load"))
            .args([
                "-c",
                &H2_CLIENTS.to_string(),
                "-m",
                &H2_STREAMS.to_string(),
                "-n",
                &H2_REQUESTS.to_string(),
                "-H",
                &format!(":authority: {TARGET_HOST}"),
            ])
            .arg(format!("http://127.0.0.1:{}{TARGET_PATH}", server.h2_port))
            .output()
            .context("running h2load")?;
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    })?;
    let used = cpu_seconds(server) - before;
    let succeeded: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("requests: "))
        .and_then(|l| {
            l.split(", ")
                .find_map(|part| part.strip_suffix(" succeeded"))?
                .parse()
                .ok()
        })
        .with_context(|| format!("h2load output:\n{text}"))?;
    if succeeded < f64::from(H2_REQUESTS) * 0.99 {
        bail!(
            "{}: only {succeeded} of {H2_REQUESTS} h2 requests succeeded:\n{text}",
            server.name
        );
    }
    let rps: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("finished in "))
        .and_then(|l| l.split(", ").nth(1)?.strip_suffix(" req/s")?.parse().ok())
        .with_context(|| format!("h2load output:\n{text}"))?;
    f.h2_rps.push(rps);
    f.h2_cpu_us.push(used / succeeded * 1e6);
    f.h2_instructions.push(instructions / succeeded);
    Ok(())
}

/// RSS growth as `IDLE_CONNECTIONS` keep-alive connections are opened, each after one
/// request, read at every `IDLE_STEP` connections: (connections, MiB).
fn idle_memory(server: &Server) -> Result<Vec<(f64, f64)>> {
    let before = rss_bytes(server);
    let mut held = Vec::with_capacity(IDLE_CONNECTIONS);
    let mut curve = vec![(0.0, 0.0)];
    let request = format!("GET {TARGET_PATH} HTTP/1.1\r\nHost: {TARGET_HOST}\r\n\r\n");
    while held.len() < IDLE_CONNECTIONS {
        let mut stream = TcpStream::connect(("127.0.0.1", server.h1_port))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        stream.write_all(request.as_bytes())?;
        let mut buf = [0u8; 1024];
        let mut seen = Vec::new();
        while !seen.ends_with(b"ok\n") {
            let n = stream.read(&mut buf)?;
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
        }
        held.push(stream);
        if held.len() % IDLE_STEP == 0 {
            // Let the server settle what the last connections' requests left behind.
            std::thread::sleep(Duration::from_millis(500));
            let grown = rss_bytes(server) - before;
            curve.push((held.len() as f64, grown / (1024.0 * 1024.0)));
        }
    }
    drop(held);
    Ok(curve)
}

/// `memory.svg`: each server's RSS growth against its idle keep-alive connections.
fn draw_memory(path: &Path, servers: &[Server], figures: &[Figures]) -> Result<()> {
    let panel = Panel {
        title: "RSS growth, idle HTTP/1.1 keep-alive connections".into(),
        x_label: "idle connections",
        y_label: "MiB",
        log_y: false,
        series: servers
            .iter()
            .zip(figures)
            .map(|(server, f)| (server.name, f.idle_curve.clone()))
            .collect(),
        legend: SeriesLabelPosition::UpperLeft,
    };
    chart::draw(path, &[panel])
}
