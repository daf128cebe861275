//! `cargo xtask bench kubernetes`: gatewayd following the Kubernetes API (issue 13), against
//! the fake API server (tests/fake-apiserver) on loopback. The cluster holds N Services,
//! each with one EndpointSlice on the demo upstream `a`, an Istio Gateway for
//! `*.example.com` and VirtualServices routing `sN.example.com` → `sN` for the first 1 000;
//! the objects exist before gatewayd starts. Measured:
//!
//! - at 1 000 and 10 000 slices: spawn → readiness 200, spawn → first proxied 200, and
//!   gatewayd's resident memory (VmRSS) after the first sync and a settle;
//! - at 10 000 slices: s0's EndpointSlice moved between upstreams `a` and `b` → first answer
//!   from the new one on a keep-alive connection probed every millisecond; s0's
//!   VirtualService given a new prefix → the prefix served; gatewayd CPU (utime + stime,
//!   idle subtracted) per 1 000 EndpointSlice updates applied at a steady pace across many
//!   Services, with the reloads they took.
//!
//! gatewayd (release) is pinned to CPU 1 with `--ebpf off --access-log off`; the fake API
//! server runs in this process on a runtime of its own, pinned to CPU 0 with the upstreams
//! and the probes (the whole xtask process is pinned there before the fake starts).

use std::{
    fmt::Write as _,
    fs,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::Stdio,
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result, anyhow, bail};
use fake_apiserver::{FakeApi, Options};
use serde_json::{Value, json};

use super::{
    common::{
        AdminAddrs, KilledOnDrop, cpu_seconds, free_port, gatewayd_run, median, pinned,
        release_binaries, start_upstream,
    },
    reload::gatewayd_reload_log_ms,
    results_dir,
};
use crate::Workspace;

const SERVER_CPU: &str = "1";
const CLIENT_CPU: usize = 0;
const SIZES: [usize; 2] = [1_000, 10_000];
/// Services with a host (a VirtualService) of their own; the rest are endpoints only.
const ROUTED: usize = 1_000;
const PROBE_INTERVAL: Duration = Duration::from_millis(1);
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// After the first sync, before memory is read: the allocator and the watches settle.
const SETTLE: Duration = Duration::from_secs(3);
const ENDPOINT_MOVES: usize = 60;
const ROUTE_CHANGES: usize = 20;
/// A change not served after this long is reported as not seen.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(5);
/// Between timed changes, so each is a reload of its own.
const CHANGE_GAP: Duration = Duration::from_millis(20);
/// CPU run: this many EndpointSlice updates at this pace, each to another Service.
const CPU_UPDATES: usize = 1_000;
const CPU_PACE: u32 = 200;
/// After the last update: its reload, and the reload loop's longest debounce, run.
const CPU_TAIL: Duration = Duration::from_secs(2);
/// Status run: HTTPRoutes on a Gateway API Gateway, and reloads of each kind counted.
const STATUS_ROUTES: usize = 100;
const STATUS_RELOADS: usize = 20;
/// After a reload, for the status writer to finish its pass (it writes at most 10/s).
const STATUS_SETTLE: Duration = Duration::from_secs(2);

/// One start of gatewayd against a fake cluster of `slices` Services.
struct Start {
    slices: usize,
    ready_ms: f64,
    served_ms: f64,
    /// From gatewayd's log: spawn → every watched kind listed, → first compile done.
    listed_ms: f64,
    compiled_ms: f64,
    rss_kib: u64,
    /// VmHWM: the peak resident set, the start-up's transient allocations included.
    peak_kib: u64,
}

pub(crate) fn run(ws: &Workspace) -> Result<String> {
    let (gatewayd_bin, [upstream_bin]) = release_binaries(ws, ["demo-upstream"])?;
    // Threads started from here on (the fake's runtime, the probes) inherit CPU 0.
    pin_this_process(CLIENT_CPU)?;
    let work = results_dir(ws).join("kubernetes-work");
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work)?;
    let (_a, a) = start_upstream(&CLIENT_CPU.to_string(), &upstream_bin, "a")?;
    let (_b, b) = start_upstream(&CLIENT_CPU.to_string(), &upstream_bin, "b")?;

    let mut starts = Vec::new();
    let mut last = None;
    for slices in SIZES {
        // The previous size's gatewayd and fake stop before the next start.
        drop(last.take());
        println!("gatewayd starting against {slices} EndpointSlices");
        let cluster = Cluster::new(&work, slices, a)?;
        let (gatewayd, start) = cluster.start_gatewayd(&gatewayd_bin, &work)?;
        println!(
            "  ready {:.0} ms, first served {:.0} ms, VmRSS {} KiB",
            start.ready_ms, start.served_ms, start.rss_kib
        );
        starts.push(start);
        last = Some((cluster, gatewayd));
    }
    let (cluster, gatewayd) = last.context("no sizes")?;

    println!("EndpointSlice moves at {} slices", cluster.slices);
    let moves = time_endpoint_moves(&cluster, &gatewayd, [(a, "a"), (b, "b")])?;
    println!("VirtualService prefix changes");
    let routes = time_route_changes(&cluster, &gatewayd)?;
    println!("CPU per {CPU_UPDATES} EndpointSlice updates at {CPU_PACE}/s");
    let cpu = cpu_per_updates(&cluster, &gatewayd, [a, b])?;
    println!("status writes per reload ({STATUS_ROUTES} HTTPRoutes)");
    let status = status_writes(&cluster, &gatewayd)?;
    Ok(table(
        &starts,
        &moves,
        &routes,
        &cpu,
        &status,
        cluster.slices,
    ))
}

/// Pins every thread this process starts from now on (and the calling one) to `cpu`.
fn pin_this_process(cpu: usize) -> Result<()> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET and sched_setaffinity only
    // read and write that set.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            bail!("pinning to CPU {cpu}: {}", std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// A fake cluster of `slices` Services and the gatewayd port its ingress Service names.
struct Cluster {
    api: FakeApi,
    kubeconfig: PathBuf,
    config: PathBuf,
    slices: usize,
    port: u16,
}

impl Cluster {
    fn new(work: &Path, slices: usize, upstream: SocketAddr) -> Result<Self> {
        let api = FakeApi::start_blocking(Options::default())?;
        let dir = work.join(format!("cluster-{slices}"));
        let config = dir.join("config");
        fs::create_dir_all(&config)?;
        let kubeconfig = dir.join("kubeconfig");
        api.write_kubeconfig(&kubeconfig)?;
        let cluster = Cluster {
            api,
            kubeconfig,
            config,
            slices,
            port: free_port()?,
        };
        cluster.apply(json!({
            "apiVersion": "networking.istio.io/v1",
            "kind": "Gateway",
            "metadata": {"name": "bench", "namespace": "default"},
            "spec": {
                "selector": {"istio": "ingressgateway"},
                "servers": [{
                    "port": {"number": 80, "name": "http", "protocol": "HTTP"},
                    "hosts": ["*.example.com"],
                }],
            },
        }))?;
        cluster.apply(json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "istio-ingressgateway", "namespace": "istio-system"},
            "spec": {
                "selector": {"istio": "ingressgateway"},
                "ports": [{"name": "http", "port": 80, "targetPort": cluster.port}],
            },
        }))?;
        for n in 0..slices {
            cluster.apply(json!({
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": format!("s{n}"), "namespace": "default"},
                "spec": {"ports": [{"name": "http", "port": 8000}]},
            }))?;
            cluster.apply(endpoint_slice(n, upstream))?;
            // s0 serves only /headers, so a new prefix is a change the probes can see.
            match n {
                0 => cluster.apply(virtual_service(0, &["/headers".into()]))?,
                n if n < ROUTED => cluster.apply(virtual_service(n, &[]))?,
                _ => {}
            }
        }
        Ok(cluster)
    }

    fn apply(&self, object: Value) -> Result<()> {
        self.api
            .apply(object)
            .map_err(|e| anyhow!("applying an object to the fake API server: {e}"))?;
        Ok(())
    }

    /// Spawns gatewayd on this cluster and times readiness and the first proxied answer,
    /// then reads its resident memory after a settle.
    fn start_gatewayd(&self, bin: &Path, work: &Path) -> Result<(Gatewayd, Start)> {
        let addrs = AdminAddrs::free()?;
        let (readiness, metrics) = (addrs.readiness, addrs.metrics);
        let stderr = work.join(format!("gatewayd-{}.stderr", self.slices));
        let started = Instant::now();
        let spawned_at = seconds_of_day(SystemTime::now());
        let child = gatewayd_run(pinned(SERVER_CPU, bin), &self.config, &addrs)?
            .args(["--kubernetes", "--kubeconfig"])
            .arg(&self.kubeconfig)
            .arg("--log-json")
            .stdout(Stdio::null())
            .stderr(fs::File::create(&stderr)?)
            .spawn()
            .context("starting gatewayd")?;
        let gatewayd = Gatewayd {
            child: KilledOnDrop(child),
            port: self.port,
            metrics,
            stderr,
        };
        let (mut ready_ms, mut served_ms) = (None, None);
        while ready_ms.is_none() || served_ms.is_none() {
            if ready_ms.is_none()
                && get(readiness, "localhost", "/healthz/ready").is_ok_and(|r| r.0 == 200)
            {
                ready_ms = Some(started.elapsed().as_secs_f64() * 1000.0);
            }
            if served_ms.is_none()
                && get(
                    SocketAddr::from(([127, 0, 0, 1], self.port)),
                    "s0.example.com",
                    "/headers",
                )
                .is_ok_and(|r| r.0 == 200 && r.1.as_deref() == Some("a"))
            {
                served_ms = Some(started.elapsed().as_secs_f64() * 1000.0);
            }
            if started.elapsed() > START_TIMEOUT {
                bail!(
                    "gatewayd at {} slices: not ready and serving within {START_TIMEOUT:?} (see {})",
                    self.slices,
                    gatewayd.stderr.display()
                );
            }
            thread::sleep(PROBE_INTERVAL);
        }
        thread::sleep(SETTLE);
        let log = fs::read_to_string(&gatewayd.stderr).unwrap_or_default();
        let logged_ms = |message: &str| {
            log.lines()
                .find(|l| l.contains(message))
                .and_then(log_seconds_of_day)
                .map_or(f64::NAN, |at| (at - spawned_at) * 1000.0)
        };
        let start = Start {
            slices: self.slices,
            ready_ms: ready_ms.unwrap_or(f64::NAN),
            served_ms: served_ms.unwrap_or(f64::NAN),
            listed_ms: logged_ms("the cluster's objects are listed"),
            compiled_ms: logged_ms("configuration compiled"),
            rss_kib: gatewayd.status_kib("VmRSS:")?,
            peak_kib: gatewayd.status_kib("VmHWM:")?,
        };
        Ok((gatewayd, start))
    }
}

/// Seconds since midnight UTC (the run does not span midnight).
fn seconds_of_day(at: SystemTime) -> f64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(f64::NAN, |d| d.as_secs_f64() % 86_400.0)
}

/// The seconds since midnight of a JSON log line's `"timestamp":"…THH:MM:SS.ffffffZ"`.
fn log_seconds_of_day(line: &str) -> Option<f64> {
    let stamp = line.split("\"timestamp\":\"").nth(1)?;
    let time = stamp.split_once('T')?.1.split('Z').next()?;
    let mut parts = time.split(':');
    let (h, m, s): (f64, f64, f64) = (
        parts.next()?.parse().ok()?,
        parts.next()?.parse().ok()?,
        parts.next()?.parse().ok()?,
    );
    Some(h * 3600.0 + m * 60.0 + s)
}

fn endpoint_slice(service: usize, endpoint: SocketAddr) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": format!("s{service}-0"),
            "namespace": "default",
            "labels": {"kubernetes.io/service-name": format!("s{service}")},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": endpoint.port()}],
        "endpoints": [{"addresses": [endpoint.ip().to_string()]}],
    })
}

/// `sN.example.com` → `sN`; with `prefixes`, only those paths.
fn virtual_service(service: usize, prefixes: &[String]) -> Value {
    let mut route = json!({
        "route": [{"destination": {"host": format!("s{service}"), "port": {"number": 8000}}}],
    });
    if !prefixes.is_empty() {
        route["match"] = prefixes
            .iter()
            .map(|p| json!({"uri": {"prefix": p}}))
            .collect();
    }
    json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": format!("s{service}"), "namespace": "default"},
        "spec": {
            "hosts": [format!("s{service}.example.com")],
            "gateways": ["bench"],
            "http": [route],
        },
    })
}

struct Gatewayd {
    child: KilledOnDrop,
    port: u16,
    metrics: SocketAddr,
    stderr: PathBuf,
}

impl Gatewayd {
    fn pid(&self) -> u32 {
        self.child.0.id()
    }

    /// A `kB` field of `/proc/PID/status` (`VmRSS:`, `VmHWM:`).
    fn status_kib(&self, field: &str) -> Result<u64> {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .with_context(|| format!("no {field} in /proc/PID/status"))
    }

    /// Successful reloads so far (full ones and endpoint-only ones).
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

    /// `endpoints updated` lines in its log so far.
    fn endpoint_updates_logged(&self) -> usize {
        fs::read_to_string(&self.stderr)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("endpoints updated"))
            .count()
    }

    fn keep_alive(&self) -> Result<KeepAlive> {
        KeepAlive::connect(SocketAddr::from(([127, 0, 0, 1], self.port)))
    }
}

/// Change → served times, or where they stopped.
#[derive(Default)]
struct Changes {
    ms: Vec<f64>,
    not_seen: bool,
}

impl Changes {
    fn percentile(&self, p: usize) -> f64 {
        let mut sorted = self.ms.clone();
        sorted.sort_by(f64::total_cmp);
        sorted
            .get((sorted.len() * p).div_ceil(100).saturating_sub(1))
            .copied()
            .unwrap_or(f64::NAN)
    }

    fn describe(&self) -> String {
        if self.not_seen {
            return format!(
                "never: change {} not served within {CHANGE_TIMEOUT:?}",
                self.ms.len() + 1
            );
        }
        format!(
            "{:.1} ms / {:.1} ms (max {:.1})",
            median(&self.ms),
            self.percentile(99),
            self.percentile(100)
        )
    }
}

/// Probes on `connection` until `served` holds; the time since `started`, or None after
/// `CHANGE_TIMEOUT`.
fn until_served(
    connection: &mut KeepAlive,
    host: &str,
    path: &str,
    started: Instant,
    served: impl Fn(&(u16, Option<String>)) -> bool,
) -> Result<Option<f64>> {
    loop {
        let answer = connection.get(host, path)?;
        if served(&answer) {
            return Ok(Some(started.elapsed().as_secs_f64() * 1000.0));
        }
        if started.elapsed() > CHANGE_TIMEOUT {
            println!("  still {answer:?} after {CHANGE_TIMEOUT:?}");
            return Ok(None);
        }
        thread::sleep(PROBE_INTERVAL);
    }
}

/// s0's EndpointSlice moved between the two upstreams; each move timed from the apply to
/// the first answer from the new one on a connection opened before it.
fn time_endpoint_moves(
    cluster: &Cluster,
    gatewayd: &Gatewayd,
    upstreams: [(SocketAddr, &str); 2],
) -> Result<Changes> {
    let mut changes = Changes::default();
    let mut connection = gatewayd.keep_alive()?;
    let mut next = if connection.get("s0.example.com", "/headers")?.1.as_deref() == Some("a") {
        1
    } else {
        0
    };
    for _ in 0..ENDPOINT_MOVES {
        let (addr, name) = upstreams[next];
        let started = Instant::now();
        cluster.apply(endpoint_slice(0, addr))?;
        match until_served(
            &mut connection,
            "s0.example.com",
            "/headers",
            started,
            |a| a.1.as_deref() == Some(name),
        )? {
            Some(ms) => changes.ms.push(ms),
            None => {
                changes.not_seen = true;
                break;
            }
        }
        next = 1 - next;
        thread::sleep(CHANGE_GAP);
    }
    println!("  {}", changes.describe());
    Ok(changes)
}

/// s0's VirtualService given a new prefix each time; timed from the apply to the first 200
/// for that prefix (a 404 from the gateway before).
fn time_route_changes(cluster: &Cluster, gatewayd: &Gatewayd) -> Result<Changes> {
    let mut changes = Changes::default();
    let mut connection = gatewayd.keep_alive()?;
    for round in 0..ROUTE_CHANGES {
        let prefix = format!("/new-{round}");
        if connection.get("s0.example.com", &prefix)?.0 == 200 {
            bail!("{prefix} served before its VirtualService change");
        }
        let started = Instant::now();
        cluster.apply(virtual_service(0, &["/headers".into(), prefix.clone()]))?;
        match until_served(&mut connection, "s0.example.com", &prefix, started, |a| {
            a.0 == 200
        })? {
            Some(ms) => changes.ms.push(ms),
            None => {
                changes.not_seen = true;
                break;
            }
        }
        thread::sleep(CHANGE_GAP);
    }
    println!("  {}", changes.describe());
    Ok(changes)
}

struct Cpu {
    /// gatewayd CPU over the updates minus idle over the same span, per 1 000 updates.
    ms_per_1000: f64,
    reloads: f64,
    logged: usize,
    /// Median `elapsed_ms` of the endpoint-only reloads in the run.
    update_ms: f64,
}

/// `CPU_UPDATES` EndpointSlice writes at `CPU_PACE` a second, each to the next Service
/// (s1, s2, ...), each moving its slice to the other upstream.
fn cpu_per_updates(
    cluster: &Cluster,
    gatewayd: &Gatewayd,
    upstreams: [SocketAddr; 2],
) -> Result<Cpu> {
    let interval = Duration::from_secs(1) / CPU_PACE;
    let span = interval * u32::try_from(CPU_UPDATES)? + CPU_TAIL;
    let idle_start = cpu_seconds(gatewayd.pid())?;
    thread::sleep(span);
    let idle = cpu_seconds(gatewayd.pid())? - idle_start;

    let logged_ms_before = gatewayd_reload_log_ms(&gatewayd.stderr).len();
    let (reloads_before, logged_before) = (gatewayd.reloads()?, gatewayd.endpoint_updates_logged());
    let cpu_before = cpu_seconds(gatewayd.pid())?;
    let started = Instant::now();
    for update in 0..CPU_UPDATES {
        let service = 1 + update % (cluster.slices - 1);
        let round = update / (cluster.slices - 1);
        cluster.apply(endpoint_slice(service, upstreams[(round + 1) % 2]))?;
        let next = started + interval * u32::try_from(update + 1)?;
        thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    // The last updates' reload: the same span as the idle measurement.
    thread::sleep(span.saturating_sub(started.elapsed()));
    let cpu = cpu_seconds(gatewayd.pid())? - cpu_before;
    let reloads = gatewayd.reloads()? - reloads_before;
    let logged = gatewayd.endpoint_updates_logged() - logged_before;
    let update_ms = median(
        gatewayd_reload_log_ms(&gatewayd.stderr)
            .get(logged_ms_before..)
            .unwrap_or_default(),
    );
    println!(
        "  {:.0} ms CPU over {:.1} s ({:.0} ms idle), {reloads} reloads, {logged} `endpoints updated`",
        cpu * 1000.0,
        started.elapsed().as_secs_f64(),
        idle * 1000.0
    );
    Ok(Cpu {
        ms_per_1000: (cpu - idle).max(0.0) * 1000.0 * 1000.0 / CPU_UPDATES as f64,
        reloads,
        logged,
        update_ms,
    })
}

/// Status writes (PUT/PATCH on `…/status` in the fake's request log) per reload.
struct StatusWrites {
    /// Over full reloads that change no Gateway API object's status.
    per_unrelated_reload: f64,
    /// Over changes of one HTTPRoute's spec (a new generation to report).
    per_route_change: f64,
    /// To write the status of a Gateway, its class and every route the first time.
    initial: usize,
}

fn is_status_write(r: &fake_apiserver::RequestRecord) -> bool {
    matches!(r.verb, "update" | "patch") && r.path.ends_with("/status")
}

fn http_route(n: usize, hostname: &str) -> Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": format!("r{n}"), "namespace": "default"},
        "spec": {
            "parentRefs": [{"name": "bench-api"}],
            "hostnames": [hostname],
            "rules": [{"backendRefs": [{"name": format!("s{n}"), "port": 8000}]}],
        },
    })
}

/// A GatewayClass of ours, a Gateway and `STATUS_ROUTES` HTTPRoutes are added; once their
/// status is written, `STATUS_RELOADS` full reloads that change none of it (a VirtualService
/// edited), then `STATUS_RELOADS` edits of one HTTPRoute, each waited for, with the status
/// writes the fake saw.
fn status_writes(cluster: &Cluster, gatewayd: &Gatewayd) -> Result<StatusWrites> {
    cluster.api.clear_requests();
    cluster.apply(json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "GatewayClass",
        "metadata": {"name": "gatewayd"},
        "spec": {"controllerName": "gatewayd.dev/gateway-controller"},
    }))?;
    cluster.apply(json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "metadata": {"name": "bench-api", "namespace": "default"},
        "spec": {
            "gatewayClassName": "gatewayd",
            "listeners": [{"name": "http", "port": free_port()?, "protocol": "HTTP"}],
        },
    }))?;
    for n in 0..STATUS_ROUTES {
        cluster.apply(http_route(n, &format!("r{n}.api.example.com")))?;
    }
    let written = |cluster: &Cluster| {
        cluster
            .api
            .requests()
            .iter()
            .filter(|r| is_status_write(r))
            .count()
    };
    let deadline = Instant::now() + START_TIMEOUT;
    // The class, the Gateway and every route.
    while written(cluster) < STATUS_ROUTES + 2 {
        if Instant::now() > deadline {
            bail!(
                "status not written for every route (see {})",
                gatewayd.stderr.display()
            );
        }
        thread::sleep(Duration::from_millis(50));
    }
    thread::sleep(STATUS_SETTLE);
    let initial = written(cluster);
    let count_over = |change: &dyn Fn(usize) -> Result<()>| -> Result<f64> {
        cluster.api.clear_requests();
        for round in 0..STATUS_RELOADS {
            let before = gatewayd.reloads()?;
            change(round)?;
            let deadline = Instant::now() + CHANGE_TIMEOUT;
            while gatewayd.reloads()? <= before {
                if Instant::now() > deadline {
                    bail!(
                        "no reload after a change (see {})",
                        gatewayd.stderr.display()
                    );
                }
                thread::sleep(Duration::from_millis(5));
            }
            thread::sleep(CHANGE_GAP);
        }
        thread::sleep(STATUS_SETTLE);
        Ok(written(cluster) as f64 / STATUS_RELOADS as f64)
    };
    let per_unrelated_reload =
        count_over(&|round| cluster.apply(virtual_service(1, &[format!("/unrelated-{round}")])))?;
    let per_route_change =
        count_over(&|round| cluster.apply(http_route(0, &format!("r0-{round}.api.example.com"))))?;
    println!(
        "  initial {initial}, per unrelated reload {per_unrelated_reload:.2}, per route change {per_route_change:.2}"
    );
    Ok(StatusWrites {
        per_unrelated_reload,
        per_route_change,
        initial,
    })
}

fn table(
    starts: &[Start],
    moves: &Changes,
    routes: &Changes,
    cpu: &Cpu,
    status: &StatusWrites,
    slices: usize,
) -> String {
    let mut out = format!(
        "gatewayd `run --kubernetes` against the fake API server on loopback: N Services with one EndpointSlice each, {ROUTED} of them routed by VirtualServices; objects created before gatewayd starts.\n\n"
    );
    let _ = writeln!(
        out,
        "| EndpointSlices | spawn → every kind listed (log) | spawn → first compile done (log) | spawn → ready (200) | spawn → first proxied 200 | VmRSS after sync + {SETTLE:?} | VmHWM (peak) |\n|---|---|---|---|---|---|---|"
    );
    for s in starts {
        let _ = writeln!(
            out,
            "| {} | {:.0} ms | {:.0} ms | {:.0} ms | {:.0} ms | {:.1} MiB | {:.1} MiB |",
            s.slices,
            s.listed_ms,
            s.compiled_ms,
            s.ready_ms,
            s.served_ms,
            s.rss_kib as f64 / 1024.0,
            s.peak_kib as f64 / 1024.0
        );
    }
    if let [small, .., large] = starts {
        let per_1000 = (large.rss_kib as f64 - small.rss_kib as f64)
            / 1024.0
            / ((large.slices - small.slices) as f64 / 1000.0);
        let _ = writeln!(
            out,
            "\nResident memory per 1 000 watched EndpointSlices ({} → {}): {per_1000:.2} MiB (goal ≤ 2 MiB).\n",
            small.slices, large.slices
        );
    }
    let _ = writeln!(
        out,
        "At {slices} EndpointSlices:\n\n| measure | value |\n|---|---|\n| EndpointSlice moved → served on a kept connection (p50 / p99 of {}) | {} |\n| VirtualService new prefix → served (p50 / p99 of {}) | {} |\n| gatewayd CPU per 1 000 EndpointSlice updates ({CPU_UPDATES} at {CPU_PACE}/s, idle subtracted) | {:.0} ms |\n| reloads those updates took (`gateway_config_reloads_total` / `endpoints updated` lines) | {} / {} |\n| endpoint-only reload, its log's elapsed_ms (median) | {:.1} ms |\n| status writes: first pass for a GatewayClass, a Gateway and {STATUS_ROUTES} HTTPRoutes | {} |\n| status writes per full reload that changes no status ({STATUS_RELOADS} VirtualService edits) | {:.2} |\n| status writes per HTTPRoute spec change ({STATUS_RELOADS} edits of one route) | {:.2} |",
        moves.ms.len(),
        moves.describe(),
        routes.ms.len(),
        routes.describe(),
        cpu.ms_per_1000,
        cpu.reloads,
        cpu.logged,
        cpu.update_ms,
        status.initial,
        status.per_unrelated_reload,
        status.per_route_change,
    );
    out
}

/// GET `path` on `host` over a new connection: (status, `x-upstream-name`).
fn get(addr: SocketAddr, host: &str, path: &str) -> Result<(u16, Option<String>)> {
    let mut connection = KeepAlive::connect(addr)?;
    connection.get(host, path)
}

/// One keep-alive HTTP/1.1 connection.
struct KeepAlive {
    reader: BufReader<TcpStream>,
}

impl KeepAlive {
    fn connect(addr: SocketAddr) -> Result<Self> {
        let stream = TcpStream::connect(addr)?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        stream.set_nodelay(true)?;
        Ok(KeepAlive {
            reader: BufReader::new(stream),
        })
    }

    /// The status and `x-upstream-name` of the answer to GET `path` on `host`.
    fn get(&mut self, host: &str, path: &str) -> Result<(u16, Option<String>)> {
        write!(
            self.reader.get_mut(),
            "GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n"
        )?;
        let (mut status, mut upstream, mut length) = (None, None, 0usize);
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line)? == 0 {
                bail!("the connection was closed");
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if status.is_none() {
                status = Some(
                    line.split_whitespace()
                        .nth(1)
                        .and_then(|s| s.parse().ok())
                        .with_context(|| format!("status line {line:?}"))?,
                );
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
        Ok((status.unwrap_or_default(), upstream))
    }
}
