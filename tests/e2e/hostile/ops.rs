//! Hostile clients against the operations side: a flood of idle connections against a
//! small descriptor limit (the gateway stops accepting at --max-connections and serves
//! again once the flood leaves), slow heads on the admin ports, readiness probes while
//! the metrics port is hammered, a stdout pipe nobody reads, and a SIGHUP or a config
//! change that lands while the daemon starts.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    os::unix::process::CommandExt as _,
    path::PathBuf,
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use gateway_tests::{Gateway, TempDir, Upstream, curl, free_port, httpbin_config};

const HOST: &str = "httpbin.example.com";
/// How long a test waits for the gateway to act before calling it missing.
const PATIENCE: Duration = Duration::from_secs(20);
/// kubelet's default probe timeout.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

struct Setup {
    gateway: Gateway,
    addr: SocketAddr,
    upstream: Upstream,
    dir: TempDir,
}

impl Setup {
    /// The config directory (apart from the daemon's stdout and stderr files).
    fn config_dir(&self) -> PathBuf {
        self.dir.path().join("conf")
    }

    fn get(&self, path: &str) -> anyhow::Result<u16> {
        let url = format!("http://{}{path}", self.addr);
        Ok(curl(None, &["-H", &format!("host: {HOST}"), &url])?.status)
    }

    fn metric(&self, sample: &str) -> anyhow::Result<f64> {
        Ok(self.gateway.metric(sample)?.unwrap_or(0.0))
    }
}

/// gatewayd serving httpbin's routes, started with `extra` and `configure`d; not yet
/// waited for.
fn spawn(extra: &[&str], configure: impl FnOnce(&mut Command)) -> anyhow::Result<Setup> {
    let upstream = Upstream::start(None, "127.0.0.1:0", "httpbin")?;
    let dir = TempDir::new("hostile-ops")?;
    let bind_port = free_port();
    std::fs::create_dir_all(dir.path().join("conf"))?;
    dir.write(
        "conf/config.yaml",
        &httpbin_config(bind_port, upstream.addr),
    )?;
    let mut args = vec!["--ebpf", "off"];
    args.extend_from_slice(extra);
    let gateway = Gateway::spawn(&dir.path().join("conf"), &args, None, &dir, configure)?;
    Ok(Setup {
        gateway,
        addr: SocketAddr::from(([127, 0, 0, 1], bind_port)),
        upstream,
        dir,
    })
}

fn start(extra: &[&str], configure: impl FnOnce(&mut Command)) -> anyhow::Result<Setup> {
    let mut setup = spawn(extra, configure)?;
    setup.gateway.wait_ready()?;
    Ok(setup)
}

/// Starts the daemon with a descriptor limit of `n` (soft and hard: it cannot raise it).
fn with_descriptor_limit(n: u64) -> impl FnOnce(&mut Command) {
    with_descriptor_limits(n, n)
}

/// Starts the daemon with a soft and a hard descriptor limit.
fn with_descriptor_limits(soft: u64, hard: u64) -> impl FnOnce(&mut Command) {
    move |command| {
        // SAFETY: setrlimit is async-signal-safe; the closure allocates nothing.
        unsafe {
            command.pre_exec(move || {
                let limit = libc::rlimit {
                    rlim_cur: soft,
                    rlim_max: hard,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
}

/// `count` connections that send nothing.
fn flood(addr: SocketAddr, count: usize) -> anyhow::Result<Vec<TcpStream>> {
    (0..count)
        .map(|i| TcpStream::connect(addr).with_context(|| format!("flood connection {i}")))
        .collect()
}

/// Polls `check` until it holds or PATIENCE runs out.
fn eventually(what: &str, mut check: impl FnMut() -> anyhow::Result<bool>) -> anyhow::Result<()> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if check()? {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{what}: not after {PATIENCE:?}");
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// The soft descriptor limit is raised to the hard one at start (as Envoy's and nginx's
/// packaging do), the figure is logged, and the default connection limit follows it.
#[test]
fn the_descriptor_limit_is_raised_to_the_hard_limit_and_logged() -> anyhow::Result<()> {
    let setup = start(&[], with_descriptor_limits(256, 1024))?;
    let stderr = setup.gateway.stderr();
    ensure!(
        stderr
            .lines()
            .any(|l| l.contains("RLIMIT_NOFILE") && l.contains("256") && l.contains("1024")),
        "the raise from 256 to 1024 is logged:\n{stderr}"
    );
    ensure!(
        stderr
            .lines()
            .any(|l| l.contains("downstream connection limit") && l.contains("512")),
        "the default limit is half the raised descriptors:\n{stderr}"
    );
    ensure!(setup.get("/status/200")? == 200);
    Ok(())
}

/// Idle connections past --max-connections (here the default, half of a 256-descriptor
/// limit) wait in the backlog; the gateway holds exactly the limit, counts the overflow,
/// stays ready, and serves the next client once the flood is gone.
#[test]
fn an_idle_connection_flood_stops_at_max_connections_and_the_gateway_serves_after_it()
-> anyhow::Result<()> {
    let setup = start(&[], with_descriptor_limit(256))?;
    let stderr = setup.gateway.stderr();
    ensure!(
        stderr
            .lines()
            .any(|l| l.contains("downstream connection limit") && l.contains("128")),
        "the default limit is half the descriptors:\n{stderr}"
    );
    let flood = flood(setup.addr, 400)?;
    eventually("128 connections open", || {
        Ok(setup.metric("gateway_downstream_connections_active")? == 128.0)
    })?;
    ensure!(setup.metric("gateway_downstream_cx_overflow_total")? >= 1.0);
    let (status, _) = setup
        .gateway
        .get(setup.gateway.readiness, "/healthz/ready")?;
    ensure!(status == 200, "readiness during the flood: {status}");
    // Still exactly the limit: the rest wait in the kernel.
    ensure!(setup.metric("gateway_downstream_connections_active")? == 128.0);
    drop(flood);
    eventually("a request after the flood", || {
        Ok(setup.get("/status/200").is_ok_and(|s| s == 200))
    })?;
    Ok(())
}

/// A limit above the descriptors: accepts fail with EMFILE, the loops back off, and once
/// the flood is gone the gateway serves again, admin ports included.
#[test]
fn descriptor_exhaustion_passes_and_the_gateway_serves_after_it() -> anyhow::Result<()> {
    let setup = start(&["--max-connections", "100000"], with_descriptor_limit(128))?;
    let flood_conns = flood(setup.addr, 300)?;
    // The metrics port shares the descriptor table; wait until the flood holds it.
    eventually("descriptors exhausted", || {
        Ok(setup.gateway.stderr().contains("Too many open files"))
    })?;
    let admin_flood = flood(setup.gateway.metrics, 50)?;
    thread::sleep(Duration::from_secs(1));
    drop(flood_conns);
    drop(admin_flood);
    // Back-off, not a spin: a spinning loop logs a failed accept some 10^5 times a second.
    let failures = setup.gateway.stderr().matches("accept failed").count();
    ensure!(
        failures < 2000,
        "{failures} failed accepts logged: the loops spin"
    );
    eventually("a request after the flood", || {
        Ok(setup.get("/status/200").is_ok_and(|s| s == 200))
    })?;
    let (status, _) = setup
        .gateway
        .get(setup.gateway.readiness, "/healthz/ready")?;
    ensure!(status == 200, "readiness after the flood: {status}");
    Ok(())
}

/// Reads until the peer closes; Err when it is still open after `within`.
fn closed_within(stream: &mut TcpStream, within: Duration) -> anyhow::Result<()> {
    stream.set_read_timeout(Some(within))?;
    let mut sink = [0u8; 4096];
    loop {
        match stream.read(&mut sink) {
            Ok(0) => return Ok(()),
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(()),
            Err(e) => bail!("still open after {within:?}: {e}"),
        }
    }
}

/// A head that never finishes, or no head at all, on each admin port is closed after the
/// head timeout (--header-read-timeout, here 1 s), not held for ever.
#[test]
fn slow_heads_on_the_admin_ports_are_closed() -> anyhow::Result<()> {
    let setup = start(&["--header-read-timeout", "1s"], |_| {})?;
    let gateway = &setup.gateway;
    let mut held = Vec::new();
    for addr in [gateway.readiness, gateway.metrics, gateway.admin] {
        let mut partial = TcpStream::connect(addr)?;
        partial.write_all(b"GET /stats/prometheus HTTP/1.1\r\nHost: x\r\nX-Slow: ")?;
        let silent = TcpStream::connect(addr)?;
        held.push((addr, partial));
        held.push((addr, silent));
    }
    for (addr, stream) in &mut held {
        closed_within(stream, PATIENCE).with_context(|| format!("admin port {addr}"))?;
    }
    Ok(())
}

/// Readiness answers every probe within kubelet's 1 s while 32 clients scrape the metrics
/// port as fast as they can and 300 more hold connections to it, more than the daemon
/// has descriptors for (256): the metrics port takes its share, the rest wait.
#[test]
fn readiness_answers_probes_while_metrics_are_hammered() -> anyhow::Result<()> {
    let setup = start(&["--header-read-timeout", "1s"], with_descriptor_limit(256))?;
    let metrics = setup.gateway.metrics;
    let _idle = flood(metrics, 300)?;
    let stop = Arc::new(AtomicBool::new(false));
    let hammers: Vec<_> = (0..32)
        .map(|_| {
            let stop = stop.clone();
            thread::spawn(move || {
                let mut scrapes = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    if gateway_tests::http_get(metrics, "/stats/prometheus").is_ok() {
                        scrapes += 1;
                    }
                }
                scrapes
            })
        })
        .collect();
    thread::sleep(Duration::from_millis(300));
    let mut failures = Vec::new();
    for probe in 0..30 {
        if let Err(e) = probe_ready(setup.gateway.readiness) {
            failures.push(format!("probe {probe}: {e:#}"));
        }
        thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    let scrapes: u64 = hammers.into_iter().filter_map(|h| h.join().ok()).sum();
    ensure!(failures.is_empty(), "{failures:#?} ({scrapes} scrapes)");
    ensure!(scrapes > 0, "the metrics port was not hammered");
    Ok(())
}

/// One readiness probe as kubelet makes it: connect and answer within 1 s, status 200.
fn probe_ready(addr: SocketAddr) -> anyhow::Result<()> {
    let mut stream = TcpStream::connect_timeout(&addr, PROBE_TIMEOUT)?;
    stream.set_read_timeout(Some(PROBE_TIMEOUT))?;
    stream.write_all(b"GET /healthz/ready HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    ensure!(
        response.starts_with("HTTP/1.1 200"),
        "answered {response:?}"
    );
    Ok(())
}

/// With stdout a pipe nobody reads, thousands of requests are all answered: access-log
/// lines beyond the buffers are dropped and counted, the workers never wait for the pipe.
/// The buffers scale with the worker threads (one per core), so batches are sent until
/// lines are dropped, however many cores the machine running the test has.
#[test]
fn a_stdout_pipe_nobody_reads_does_not_stall_requests() -> anyhow::Result<()> {
    // The daemon's stdout stays open and unread until the setup is dropped.
    let setup = start(&[], |command| {
        command.stdout(Stdio::piped());
    })?;
    let batch = 8000;
    let mut answered = 0;
    // 1 MiB of lines per worker thread; 40 batches are some 80 MB of lines.
    for _ in 0..40 {
        let out = Command::new("timeout")
            .args(["120", "h2load", "--h1", "-c", "8", "-n"])
            .arg(batch.to_string())
            .args(["-H", &format!(":authority: {HOST}")])
            .arg(format!("http://{}/status/200", setup.addr))
            .output()
            .context("running h2load")?;
        let report = String::from_utf8_lossy(&out.stdout);
        ensure!(
            report.contains(&format!("status codes: {batch} 2xx")),
            "not every request was answered after {answered} were:\n{report}"
        );
        answered += batch;
        if setup.metric("gateway_access_log_dropped_total")? > 0.0 {
            return Ok(());
        }
    }
    bail!("no access-log line was dropped in {answered} requests")
}

/// SIGHUPs from the first log line on, all through start-up: the daemon neither dies nor
/// fails to become ready (SIGHUP's default action is to terminate).
#[test]
fn sighup_while_starting_does_not_kill_the_daemon() -> anyhow::Result<()> {
    let mut setup = spawn(&[], |_| {})?;
    let pid = libc::pid_t::try_from(setup.gateway.process.child.id())?;
    let deadline = Instant::now() + PATIENCE;
    // The first line is logged once SIGHUP is ignored: from then on nothing may kill it.
    while setup.gateway.stderr().is_empty() {
        ensure!(Instant::now() < deadline, "gatewayd logged nothing");
        ensure!(setup.gateway.process.child.try_wait()?.is_none());
        thread::sleep(Duration::from_millis(1));
    }
    let mut sent = 0;
    loop {
        if let Some(status) = setup.gateway.process.child.try_wait()? {
            bail!(
                "gatewayd died ({status}) after {sent} SIGHUPs while starting:\n{}",
                setup.gateway.stderr()
            );
        }
        if gateway_tests::http_get(setup.gateway.readiness, "/healthz/ready")
            .is_ok_and(|(status, _)| status == 200)
        {
            break;
        }
        ensure!(Instant::now() < deadline, "not ready");
        // SAFETY: kill has no preconditions; the pid is our own child's.
        unsafe { libc::kill(pid, libc::SIGHUP) };
        sent += 1;
        thread::sleep(Duration::from_millis(2));
    }
    ensure!(sent > 0, "no SIGHUP was sent while starting");
    setup.gateway.wait_ready()?;
    ensure!(setup.get("/status/200")? == 200);
    Ok(())
}

/// A config change written right after the first compile, while the daemon still binds
/// its ports, is applied once it runs.
#[test]
fn a_config_change_while_starting_is_applied() -> anyhow::Result<()> {
    let mut setup = spawn(&[], |_| {})?;
    let deadline = Instant::now() + PATIENCE;
    while !setup.gateway.stderr().contains("configuration compiled") {
        ensure!(
            Instant::now() < deadline,
            "no compile:\n{}",
            setup.gateway.stderr()
        );
        ensure!(setup.gateway.process.child.try_wait()?.is_none());
        thread::sleep(Duration::from_millis(1));
    }
    // One more route, written as kubelet and editors write: a new file renamed in place.
    let config = httpbin_config(setup.addr.port(), setup.upstream.addr).replace(
        "    - uri: {prefix: /headers}\n",
        "    - uri: {prefix: /headers}\n    - uri: {prefix: /anything}\n",
    );
    ensure!(config.contains("/anything"));
    let staged = setup.dir.path().join("config.yaml.tmp");
    std::fs::write(&staged, config)?;
    std::fs::rename(&staged, setup.config_dir().join("config.yaml"))?;
    setup.gateway.wait_ready()?;
    eventually("the route written while starting", || {
        Ok(setup.get("/anything/late")? == 200)
    })?;
    Ok(())
}
