//! `cargo xtask bench endpoints`: EndpointSlice changes at 1 000 Services (issue 12).
//! gatewayd serves `sN.example.com` → Service `sN` for N < 1 000, every Service with its
//! own EndpointSlice on the demo upstream `a`; service s0's slice has a file of its own
//! (`endpoints-s0.yaml`, rewritten aside and renamed over, as kubelet swaps a ConfigMap),
//! the other 999 share one. Measured:
//!
//! - update → first request answered by the new endpoint, on a keep-alive connection
//!   opened before the update and on a new connection per probe: s0's endpoint flips
//!   between upstreams `a` and `b`; a probe every millisecond (median, p90);
//! - gatewayd's CPU (utime + stime from /proc) per endpoint update: updates spaced so each
//!   reloads on its own, idle CPU over the same time subtracted, divided by the reloads
//!   the metrics counted;
//! - latency of steady open-loop load (paced-load, keep-alive) on s0 with no change, and
//!   while s0's slice toggles a second endpoint in and out 25 times a second, each write
//!   a reload of its own.
//!
//! gatewayd is pinned to CPU 1 with `--ebpf off --access-log off`; the upstreams, the
//! load and the probes to CPU 0.

use std::{
    fmt::Write as _,
    fs,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::Path,
    process::{Child, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{
    common::{
        AdminAddrs, KilledOnDrop, cpu_seconds, free_port, gatewayd_run, median, pinned,
        release_binaries, start_upstream, write_atomically,
    },
    manifests::{
        endpoint_slice_yaml, gateway_yaml, ingress_service_yaml, one_route_yaml, service_yaml,
    },
    reload::{gatewayd_reload_log_cpu_ms, gatewayd_reload_log_ms},
    results_dir,
};
use crate::Workspace;

const SERVER_CPU: &str = "1";
const CLIENT_CPU: &str = "0";
const SERVICES: usize = 1_000;
/// Timed endpoint moves per kind of connection.
const MOVES: usize = 20;
const PROBE_INTERVAL: Duration = Duration::from_millis(1);
/// A move not seen after this long is reported as not seen.
const MOVE_TIMEOUT: Duration = Duration::from_secs(5);
/// CPU run: this many updates, this far apart (more than the watcher's quiet period and
/// a reload at this size, so each update is a reload of its own).
const CPU_UPDATES: usize = 40;
const CPU_SPACING: Duration = Duration::from_millis(250);
/// Churn under load: one EndpointSlice write this often (25 a second). Longer than the
/// watcher's 20 ms quiet period plus a reload, so every write is applied on its own:
/// writes 20 ms apart were folded into one reload per 500 ms (its longest wait), and
/// since each such reload came an even number of toggles after the last it found the
/// slice as the last had left it and applied nothing, so the run measured no churn.
const CHURN_INTERVAL: Duration = Duration::from_millis(40);
/// Open-loop load: rate, duration and connections.
const LOAD_RATE: u32 = 2_000;
const LOAD_SECONDS: u32 = 10;
const LOAD_CONNECTIONS: u32 = 16;
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// gatewayd on the generated configuration, and what the benchmark needs to reach it.
struct Gatewayd {
    child: KilledOnDrop,
    port: u16,
    metrics: SocketAddr,
    dir: std::path::PathBuf,
}

impl Gatewayd {
    fn pid(&self) -> u32 {
        self.child.0.id()
    }

    /// Rewrites s0's EndpointSlice with `endpoints`.
    fn set_s0(&self, endpoints: &[SocketAddr]) -> Result<()> {
        write_atomically(
            &self.dir.join("endpoints-s0.yaml"),
            &endpoint_slice(0, endpoints),
        )
    }

    /// s0 on `a`, with `b` beside it when `with_b`.
    fn toggle_s0(&self, a: SocketAddr, b: SocketAddr, with_b: bool) -> Result<()> {
        let both = [a, b];
        self.set_s0(if with_b { &both } else { &both[..1] })
    }

    /// Successful reloads so far.
    fn reloads(&self) -> Result<f64> {
        let mut stream = TcpStream::connect(self.metrics)?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(stream, "GET /stats/prometheus HTTP/1.0\r\n\r\n")?;
        let mut text = String::new();
        stream.read_to_string(&mut text)?;
        text.lines()
            .find_map(|l| l.strip_prefix("gateway_config_reloads_total{result=\"success\"} "))
            .map_or(Ok(0.0), |v| Ok(v.trim().parse()?))
    }
}

struct Latency {
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    errors: u64,
    reloads: f64,
    cpu_s: f64,
    /// The machine's 1-minute load average after the run: the cores are shared, and a
    /// busy neighbour shows in the latency.
    load_average: String,
}

pub(crate) fn run(ws: &Workspace) -> Result<String> {
    let (gatewayd_bin, [upstream_bin, paced_load]) =
        release_binaries(ws, ["demo-upstream", "paced-load"])?;
    let work = results_dir(ws).join("endpoints-work");
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work)?;
    let (_a, a) = start_upstream(CLIENT_CPU, &upstream_bin, "a")?;
    let (_b, b) = start_upstream(CLIENT_CPU, &upstream_bin, "b")?;
    let gatewayd = start_gatewayd(&gatewayd_bin, &work, a)?;

    println!("endpoint moves on a connection opened before each update");
    let kept = time_moves(&gatewayd, [(a, "a"), (b, "b")], Connection::Kept)?;
    println!("endpoint moves, a new connection per probe");
    let fresh = time_moves(&gatewayd, [(a, "a"), (b, "b")], Connection::New)?;
    gatewayd.set_s0(&[a])?;
    thread::sleep(CPU_SPACING);

    println!("CPU per endpoint update ({CPU_UPDATES} updates, {CPU_SPACING:?} apart)");
    let stderr = work.join("gatewayd.stderr");
    let logged_before = gatewayd_reload_log_ms(&stderr).len();
    let cpu_logged_before = gatewayd_reload_log_cpu_ms(&stderr).len();
    let cpu_ms_per_update = cpu_per_update(&gatewayd, a, b)?;
    let compile_ms = gatewayd_reload_log_ms(&stderr);
    let compile_ms = median(compile_ms.get(logged_before..).unwrap_or_default());
    let compile_cpu_ms = gatewayd_reload_log_cpu_ms(&stderr);
    let compile_cpu_ms = median(compile_cpu_ms.get(cpu_logged_before..).unwrap_or_default());

    println!("steady load");
    let steady = paced(&gatewayd, &paced_load, None)?;
    println!("load while s0's endpoints churn every {CHURN_INTERVAL:?}");
    let churning = paced(&gatewayd, &paced_load, Some((a, b)))?;
    Ok(table(
        &kept,
        &fresh,
        cpu_ms_per_update,
        (compile_ms, compile_cpu_ms),
        &steady,
        &churning,
    ))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Connection {
    Kept,
    New,
}

/// Moves s0 between the two upstreams `MOVES` times; for each, the time from the write to
/// the first answer from the new one. Stops at the first move not seen within
/// `MOVE_TIMEOUT` (its connection would be left on the old endpoint for good).
fn time_moves(
    gatewayd: &Gatewayd,
    upstreams: [(SocketAddr, &str); 2],
    connection: Connection,
) -> Result<Moves> {
    let mut moves = Moves::default();
    let mut kept = KeepAlive::connect(gatewayd.port)?;
    let mut current = if kept.get_upstream()? == upstreams[0].1 {
        0
    } else {
        1
    };
    for round in 0..MOVES {
        let (addr, name) = upstreams[1 - current];
        let started = Instant::now();
        gatewayd.set_s0(&[addr])?;
        loop {
            let answered = match connection {
                Connection::Kept => kept.get_upstream()?,
                Connection::New => KeepAlive::connect(gatewayd.port)?.get_upstream()?,
            };
            if answered == name {
                let ms = started.elapsed().as_secs_f64() * 1000.0;
                println!("  move {round} to {name}: {ms:.1} ms");
                moves.ms.push(ms);
                break;
            }
            if started.elapsed() > MOVE_TIMEOUT {
                println!(
                    "  move {round} to {name}: still answered by {answered} after {MOVE_TIMEOUT:?}"
                );
                moves.not_seen = true;
                return Ok(moves);
            }
            thread::sleep(PROBE_INTERVAL);
        }
        current = 1 - current;
    }
    Ok(moves)
}

#[derive(Default)]
struct Moves {
    ms: Vec<f64>,
    not_seen: bool,
}

impl Moves {
    fn describe(&self) -> String {
        if self.not_seen {
            return format!(
                "never: move {} not seen within {MOVE_TIMEOUT:?}",
                self.ms.len() + 1
            );
        }
        let mut sorted = self.ms.clone();
        sorted.sort_by(f64::total_cmp);
        let p90 = sorted
            .get((sorted.len() * 9).div_ceil(10).saturating_sub(1))
            .copied()
            .unwrap_or(f64::NAN);
        format!("{:.1} ms / {p90:.1} ms", median(&self.ms))
    }
}

/// gatewayd CPU milliseconds per endpoint update, idle CPU subtracted.
fn cpu_per_update(gatewayd: &Gatewayd, a: SocketAddr, b: SocketAddr) -> Result<f64> {
    let span = CPU_SPACING * u32::try_from(CPU_UPDATES)?;
    let idle_start = cpu_seconds(gatewayd.pid())?;
    thread::sleep(span);
    let idle = cpu_seconds(gatewayd.pid())? - idle_start;

    let (reloads_before, cpu_before) = (gatewayd.reloads()?, cpu_seconds(gatewayd.pid())?);
    for update in 0..CPU_UPDATES {
        gatewayd.toggle_s0(a, b, update.is_multiple_of(2))?;
        thread::sleep(CPU_SPACING);
    }
    let cpu = cpu_seconds(gatewayd.pid())? - cpu_before;
    let reloads = gatewayd.reloads()? - reloads_before;
    if reloads < 1.0 {
        bail!("{CPU_UPDATES} endpoint updates reloaded nothing");
    }
    println!(
        "  {reloads} reloads, {:.1} ms CPU, {:.1} ms idle",
        cpu * 1000.0,
        idle * 1000.0
    );
    Ok((cpu - idle).max(0.0) * 1000.0 / reloads)
}

/// paced-load on s0; with `churn`, s0's slice toggles its second endpoint meanwhile.
fn paced(
    gatewayd: &Gatewayd,
    paced_load: &Path,
    churn: Option<(SocketAddr, SocketAddr)>,
) -> Result<Latency> {
    let (reloads_before, cpu_before) = (gatewayd.reloads()?, cpu_seconds(gatewayd.pid())?);
    let done = AtomicBool::new(false);
    let output = thread::scope(|scope| {
        let churner = scope.spawn(|| -> Result<usize> {
            let Some((a, b)) = churn else {
                return Ok(0);
            };
            let started = Instant::now();
            let mut writes = 0u32;
            while !done.load(Ordering::Relaxed) {
                gatewayd.toggle_s0(a, b, writes.is_multiple_of(2))?;
                writes += 1;
                let next = started + CHURN_INTERVAL * writes;
                thread::sleep(next.saturating_duration_since(Instant::now()));
            }
            Ok(usize::try_from(writes)?)
        });
        let output = pinned(CLIENT_CPU, paced_load)
            .args(["--connect", &format!("127.0.0.1:{}", gatewayd.port)])
            .args(["--host", "s0.example.com", "--path", "/headers"])
            .args(["--rate", &LOAD_RATE.to_string()])
            .args(["--seconds", &LOAD_SECONDS.to_string()])
            .args(["--connections", &LOAD_CONNECTIONS.to_string()])
            .stderr(Stdio::inherit())
            .output()
            .context("running paced-load");
        done.store(true, Ordering::Relaxed);
        let writes = churner
            .join()
            .map_err(|_| anyhow::anyhow!("the churn thread panicked"))??;
        if churn.is_some() {
            println!("  {writes} EndpointSlice writes");
        }
        output.map(|output| (output, writes))
    })?;
    let (output, writes) = output;
    let reloads = gatewayd.reloads()? - reloads_before;
    // Every write changes the slice and stands alone: most must have been applied.
    if reloads < writes as f64 / 2.0 {
        bail!(
            "{writes} EndpointSlice writes were applied in only {reloads} reloads: the run measured no churn"
        );
    }
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let field = |name: &str| -> Result<f64> {
        text.split_whitespace()
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .with_context(|| format!("no {name} in paced-load's output {text:?}"))?
            .parse()
            .with_context(|| format!("paced-load's {name}"))
    };
    Ok(Latency {
        p50_ms: field("p50_us")? / 1000.0,
        p99_ms: field("p99_us")? / 1000.0,
        max_ms: field("max_us")? / 1000.0,
        errors: field("errors")? as u64,
        reloads,
        cpu_s: cpu_seconds(gatewayd.pid())? - cpu_before,
        load_average: fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|l| l.split_whitespace().next().map(str::to_owned))
            .unwrap_or_default(),
    })
}

fn table(
    kept: &Moves,
    fresh: &Moves,
    cpu_ms_per_update: f64,
    (compile_ms, compile_cpu_ms): (f64, f64),
    steady: &Latency,
    churning: &Latency,
) -> String {
    let mut out = format!(
        "EndpointSlice updates at {SERVICES} Services (one host and one slice each); file source, the slice rewritten aside and renamed over.\n\n"
    );
    let _ = writeln!(
        out,
        "| update → first request on the new endpoint (median / p90 of {MOVES}) | |\n|---|---|\n| keep-alive connection opened before the update | {} |\n| new connection per probe | {} |\n| gatewayd CPU per endpoint update ({CPU_UPDATES} updates, idle subtracted) | {cpu_ms_per_update:.2} ms |\n| its log's load + compile + swap per update (median): wall / CPU of its threads | {compile_ms:.2} ms / {compile_cpu_ms:.2} ms |\n",
        kept.describe(),
        fresh.describe(),
    );
    let _ = writeln!(
        out,
        "Open-loop load on the churned service: paced-load, {LOAD_RATE} requests/s over {LOAD_CONNECTIONS} keep-alive connections, {LOAD_SECONDS} s.\n\n| run | p50 | p99 | max | errors | reloads | gatewayd CPU | load average after |\n|---|---|---|---|---|---|---|---|"
    );
    for (name, l) in [("steady", steady), ("endpoints churning 25/s", churning)] {
        let _ = writeln!(
            out,
            "| {name} | {:.2} ms | {:.2} ms | {:.1} ms | {} | {} | {:.2} s | {} |",
            l.p50_ms, l.p99_ms, l.max_ms, l.errors, l.reloads, l.cpu_s, l.load_average
        );
    }
    let _ = writeln!(
        out,
        "\np99 while churning / steady: {:.2}×.",
        churning.p99_ms / steady.p99_ms
    );
    out
}

/// One keep-alive HTTP/1.1 connection to s0, naming the upstream of each answer.
struct KeepAlive {
    reader: BufReader<TcpStream>,
}

impl KeepAlive {
    fn connect(port: u16) -> Result<Self> {
        let stream = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port)))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        stream.set_nodelay(true)?;
        Ok(KeepAlive {
            reader: BufReader::new(stream),
        })
    }

    /// `x-upstream-name` of the answer to `GET /headers`, or its status line when no
    /// upstream answered (the gateway's own 503).
    fn get_upstream(&mut self) -> Result<String> {
        write!(
            self.reader.get_mut(),
            "GET /headers HTTP/1.1\r\nHost: s0.example.com\r\n\r\n"
        )?;
        let (mut status, mut upstream, mut length) = (String::new(), None, 0usize);
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line)? == 0 {
                bail!("gatewayd closed the keep-alive connection");
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if status.is_empty() {
                status = line.to_owned();
            } else if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("x-upstream-name") {
                    upstream = Some(value.trim().to_owned());
                } else if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse()?;
                }
            }
        }
        let mut body = vec![0; length];
        self.reader.read_exact(&mut body)?;
        Ok(upstream.unwrap_or(status))
    }
}

fn endpoint_slice(service: usize, endpoints: &[SocketAddr]) -> String {
    let service = format!("s{service}");
    endpoints
        .iter()
        .enumerate()
        .map(|(i, e)| endpoint_slice_yaml(&service, i, "http", *e) + "---\n")
        .collect()
}

/// gatewayd's Gateway and listener on `port`, and `SERVICES` VirtualServices, each to
/// its own Service `sN` (their EndpointSlices are in files of their own).
fn gatewayd_services(port: u16) -> String {
    let mut documents = vec![
        gateway_yaml("bench", "default", 80, "HTTP", &["*.example.com"], None),
        ingress_service_yaml("http", 80, port, None),
    ];
    for n in 0..SERVICES {
        let service = format!("s{n}");
        let host = format!("{service}.example.com");
        documents.push(one_route_yaml(&service, "bench", &[&host], &service, 8000));
        documents.push(service_yaml(&service, "http", 8000, None));
    }
    documents.join("---\n")
}

fn start_gatewayd(bin: &Path, work: &Path, upstream: SocketAddr) -> Result<Gatewayd> {
    let port = free_port()?;
    let addrs = AdminAddrs::free()?;
    let dir = work.join("gatewayd");
    fs::create_dir_all(&dir)?;
    fs::write(dir.join("services.yaml"), gatewayd_services(port))?;
    let slices: String = (1..SERVICES)
        .map(|n| endpoint_slice(n, &[upstream]))
        .collect();
    fs::write(dir.join("endpoints.yaml"), slices)?;
    fs::write(
        dir.join("endpoints-s0.yaml"),
        endpoint_slice(0, &[upstream]),
    )?;
    let child: Child = gatewayd_run(pinned(SERVER_CPU, bin), &dir, &addrs)?
        .arg("--log-json")
        .stdout(Stdio::null())
        .stderr(fs::File::create(work.join("gatewayd.stderr"))?)
        .spawn()
        .context("starting gatewayd")?;
    let gatewayd = Gatewayd {
        child: KilledOnDrop(child),
        port,
        metrics: addrs.metrics,
        dir,
    };
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if KeepAlive::connect(port)
            .and_then(|mut c| c.get_upstream())
            .is_ok_and(|name| name == "a")
        {
            return Ok(gatewayd);
        }
        if Instant::now() > deadline {
            bail!("gatewayd did not serve s0 within {START_TIMEOUT:?}");
        }
        thread::sleep(Duration::from_millis(50));
    }
}
