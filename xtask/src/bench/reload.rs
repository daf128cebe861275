//! `cargo xtask bench reload`: configuration reload at 10 000 routes (100 hosts × 100
//! path prefixes, all to the demo upstream), side by side with nginx (`nginx -s reload`)
//! and HAProxy (master-worker, SIGUSR2), same routes:
//!
//! - time from the start of a config write to the first request that the new route
//!   serves: each reload adds `/new-N` on `h0.example.com` (gatewayd: in h0's file of one
//!   file per host; nginx and HAProxy: in their one configuration file); a probe sends one request per
//!   new connection every millisecond until it gets a 200 (for nginx and HAProxy the time
//!   includes their reload command; gatewayd only needs the file written);
//! - p99 latency of keep-alive load (wrk, 16 connections) in steady state and while the
//!   configuration is reloaded every 500 ms, and the errors wrk saw.
//!
//! Servers are pinned to CPU 1, wrk, the probe and the upstream to CPU 0; gatewayd runs
//! with `--ebpf off` and access logs off everywhere.

use std::{
    fmt::Write as _,
    fs,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{
    common::{
        AdminAddrs, free_port, gatewayd_run, median, nginx_prelude, pinned, release_binaries,
        start_upstream, write_atomically,
    },
    manifests::{gateway_yaml, ingress_service_yaml, upstream_service_yaml, virtual_service_yaml},
    results_dir,
};
use crate::Workspace;

const SERVER_CPU: &str = "1";
const CLIENT_CPU: &str = "0";
const HOSTS: usize = 100;
const PREFIXES_PER_HOST: usize = 100;
/// Timed reloads per server (interleaved across servers); medians reported.
const RELOADS: usize = 7;
const PROBE_INTERVAL: Duration = Duration::from_millis(1);
/// A reload that has not served after this long is reported as a failure.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(60);
/// Load runs: duration and connections, and how often the config changes under load.
const LOAD_SECONDS: u32 = 8;
const LOAD_CONNECTIONS: u32 = 16;
const RELOAD_EVERY: Duration = Duration::from_millis(500);
const START_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Gatewayd,
    Nginx,
    Haproxy,
}

/// One server under test, with what it takes to rewrite and reload its configuration.
struct Server {
    kind: Kind,
    name: &'static str,
    port: u16,
    dir: PathBuf,
    child: Child,
    upstream: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        signal(&self.child, libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn signal(child: &Child, signal: libc::c_int) {
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: kill(2) on our own unreaped child's pid.
        unsafe {
            libc::kill(pid, signal);
        }
    }
}

impl Server {
    /// Writes the configuration for generation `generation` and asks the server to load it.
    fn reconfigure(&self, generation: usize) -> Result<()> {
        match self.kind {
            Kind::Gatewayd => {
                write_atomically(&self.dir.join("h0.yaml"), &gatewayd_host(0, generation))
            }
            Kind::Nginx => {
                fs::write(
                    self.dir.join("nginx.conf"),
                    nginx_config(&self.dir, self.port, self.upstream, generation),
                )?;
                let out = Command::new("nginx")
                    .arg("-p")
                    .arg(&self.dir)
                    .arg("-c")
                    .arg(self.dir.join("nginx.conf"))
                    .args(["-s", "reload"])
                    .output()?;
                if !out.status.success() {
                    bail!("nginx -s reload: {}", String::from_utf8_lossy(&out.stderr));
                }
                Ok(())
            }
            Kind::Haproxy => {
                fs::write(
                    self.dir.join("haproxy.cfg"),
                    haproxy_config(self.port, self.upstream, generation),
                )?;
                signal(&self.child, libc::SIGUSR2);
                Ok(())
            }
        }
    }
}

#[derive(Default)]
struct Figures {
    name: &'static str,
    reload_ms: Vec<f64>,
    steady: Option<Latency>,
    reloading: Option<Latency>,
}

struct Latency {
    p50_ms: f64,
    p99_ms: f64,
    requests_per_s: f64,
    errors: String,
}

pub(crate) fn run(ws: &Workspace) -> Result<String> {
    let (gatewayd, [upstream_bin]) = release_binaries(ws, ["demo-upstream"])?;
    let work = results_dir(ws).join("reload-work");
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work)?;

    let (_upstream, upstream) = start_upstream(CLIENT_CPU, &upstream_bin, "demo-upstream")?;
    let servers = [
        start_gatewayd(&gatewayd, &work, upstream)?,
        start_nginx(&work, upstream)?,
        start_haproxy(&work, upstream)?,
    ];
    let mut figures: Vec<Figures> = servers
        .iter()
        .map(|s| Figures {
            name: s.name,
            ..Figures::default()
        })
        .collect();

    let mut generation = 0;
    for round in 0..RELOADS {
        for (server, figures) in servers.iter().zip(&mut figures) {
            generation += 1;
            let ms = time_reload(server, generation)?;
            println!(
                "reload {round}: {} served /new-{generation} after {ms:.1} ms",
                server.name
            );
            figures.reload_ms.push(ms);
        }
    }
    for (server, figures) in servers.iter().zip(&mut figures) {
        println!("{}: steady load", server.name);
        figures.steady = Some(wrk(server)?);
        println!(
            "{}: load while reloading every {RELOAD_EVERY:?}",
            server.name
        );
        let stop = Arc::new(AtomicBool::new(false));
        let reloads = thread::scope(|scope| -> Result<(Latency, usize)> {
            let reloader = scope.spawn(|| -> Result<usize> {
                let mut done = 0;
                while !stop.load(Ordering::Relaxed) {
                    generation += 1;
                    server.reconfigure(generation)?;
                    done += 1;
                    thread::sleep(RELOAD_EVERY);
                }
                Ok(done)
            });
            let latency = wrk(server);
            stop.store(true, Ordering::Relaxed);
            let done = reloader
                .join()
                .map_err(|_| anyhow::anyhow!("reloader panicked"))??;
            Ok((latency?, done))
        })?;
        println!("  {} reloads during the run", reloads.1);
        figures.reloading = Some(reloads.0);
    }
    let stderr = work.join("gatewayd.stderr");
    let compile_ms = gatewayd_reload_log_ms(&stderr);
    let compile_cpu_ms = gatewayd_reload_log_cpu_ms(&stderr);
    Ok(table(&figures, compile_ms, &compile_cpu_ms))
}

fn table(figures: &[Figures], gatewayd_compile_ms: Vec<f64>, gatewayd_cpu_ms: &[f64]) -> String {
    let mut out = format!(
        "Reload at {} routes ({HOSTS} hosts × {PREFIXES_PER_HOST} prefixes); {RELOADS} timed reloads per server, interleaved; load: wrk, {LOAD_CONNECTIONS} keep-alive connections, {LOAD_SECONDS} s, reloading every {RELOAD_EVERY:?} in the second run.\n\n",
        HOSTS * PREFIXES_PER_HOST
    );
    out.push_str("| server | write → new route served, median (min–max) | p99 steady | p99 while reloading | ratio | req/s steady / reloading | wrk errors while reloading |\n|---|---|---|---|---|---|---|\n");
    for f in figures {
        let (Some(steady), Some(reloading)) = (&f.steady, &f.reloading) else {
            continue;
        };
        let min = f.reload_ms.iter().copied().fold(f64::INFINITY, f64::min);
        let max = f.reload_ms.iter().copied().fold(0.0, f64::max);
        let _ = writeln!(
            out,
            "| {} | {:.1} ms ({min:.1}–{max:.1}) | {:.2} ms | {:.2} ms | {:.2}× | {:.0} / {:.0} | {} |",
            f.name,
            median(&f.reload_ms),
            steady.p99_ms,
            reloading.p99_ms,
            reloading.p99_ms / steady.p99_ms,
            steady.requests_per_s,
            reloading.requests_per_s,
            reloading.errors,
        );
    }
    if !gatewayd_compile_ms.is_empty() {
        let _ = writeln!(
            out,
            "\ngatewayd's own log: load + compile + swap took a median {:.1} ms in the timed reloads and {:.1} ms in the {} reloads under load (the compile shares the CPU with the load); the rest of its write → served time is the 20 ms quiet period the watcher waits for, the event delivery and the probe. p50 steady/reloading: {}.",
            median(&gatewayd_compile_ms[..RELOADS.min(gatewayd_compile_ms.len())]),
            median(&gatewayd_compile_ms[RELOADS.min(gatewayd_compile_ms.len())..]),
            gatewayd_compile_ms.len().saturating_sub(RELOADS),
            figures
                .iter()
                .filter_map(|f| Some(format!(
                    "{} {:.2}/{:.2} ms",
                    f.name,
                    f.steady.as_ref()?.p50_ms,
                    f.reloading.as_ref()?.p50_ms
                )))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if !gatewayd_cpu_ms.is_empty() {
        let timed = RELOADS.min(gatewayd_cpu_ms.len());
        let _ = writeln!(
            out,
            "\ngatewayd's CPU time for load + compile + swap (its log's `cpu_ms`: the compile thread and the control thread): median {:.2} ms in the timed reloads, {:.2} ms in the reloads under load.",
            median(&gatewayd_cpu_ms[..timed]),
            median(&gatewayd_cpu_ms[timed..]),
        );
    }
    out
}

/// `elapsed_ms` (wall clock) of every "configuration reloaded" or "endpoints updated"
/// line gatewayd logged (`--log-json`).
pub(super) fn gatewayd_reload_log_ms(stderr: &Path) -> Vec<f64> {
    gatewayd_reload_log(stderr, "elapsed_ms")
}

/// `cpu_ms` of the same lines: the CPU time of the reload's threads, which on a shared
/// core is the fairer figure.
pub(super) fn gatewayd_reload_log_cpu_ms(stderr: &Path) -> Vec<f64> {
    gatewayd_reload_log(stderr, "cpu_ms")
}

fn gatewayd_reload_log(stderr: &Path, field: &str) -> Vec<f64> {
    let key = format!("\"{field}\":");
    fs::read_to_string(stderr)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("configuration reloaded") || l.contains("endpoints updated"))
        .filter_map(|l| {
            let rest = l.split(key.as_str()).nth(1)?;
            let number: String = rest
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.')
                .collect();
            number.parse().ok()
        })
        .collect()
}

/// Rewrites the configuration with `/new-{generation}` and probes until it serves.
fn time_reload(server: &Server, generation: usize) -> Result<f64> {
    let path = format!("/new-{generation}");
    if probe(server.port, &path)? == 200 {
        bail!("{}: {path} served before the reload", server.name);
    }
    let started = Instant::now();
    server.reconfigure(generation)?;
    loop {
        if probe(server.port, &path).unwrap_or(0) == 200 {
            return Ok(started.elapsed().as_secs_f64() * 1000.0);
        }
        if started.elapsed() > RELOAD_TIMEOUT {
            bail!(
                "{}: {path} not served {RELOAD_TIMEOUT:?} after the reload",
                server.name
            );
        }
        thread::sleep(PROBE_INTERVAL);
    }
}

/// One request on a new connection; the status.
fn probe(port: u16, path: &str) -> Result<u16> {
    let mut stream = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port)))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: h0.example.com\r\nConnection: close\r\n\r\n"
    )?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head)?;
    let text = String::from_utf8_lossy(&head);
    text.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("not an HTTP response: {text:?}"))
}

fn wrk(server: &Server) -> Result<Latency> {
    let out = pinned(CLIENT_CPU, Path::new("wrk"))
        .args([
            "-t1",
            &format!("-c{LOAD_CONNECTIONS}"),
            &format!("-d{LOAD_SECONDS}s"),
        ])
        .args(["--latency", "-H", "Host: h0.example.com"])
        .arg(format!("http://127.0.0.1:{}/p0", server.port))
        .output()
        .context("running wrk")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let ms = |label: &str| -> Option<f64> {
        let value = text
            .lines()
            .find_map(|l| l.trim().strip_prefix(label))?
            .trim()
            .to_owned();
        let (number, unit) = value.split_at(value.find(|c: char| c.is_alphabetic())?);
        let number: f64 = number.parse().ok()?;
        Some(match unit {
            "us" => number / 1000.0,
            "ms" => number,
            "s" => number * 1000.0,
            _ => return None,
        })
    };
    let requests_per_s = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok());
    let (Some(p50_ms), Some(p99_ms), Some(requests_per_s)) = (ms("50%"), ms("99%"), requests_per_s)
    else {
        bail!("unexpected wrk output against {}:\n{text}", server.name);
    };
    let mut errors: Vec<String> = text
        .lines()
        .filter(|l| l.contains("Socket errors") || l.contains("Non-2xx"))
        .map(|l| l.trim().to_owned())
        .collect();
    if errors.is_empty() {
        errors.push("none".to_owned());
    }
    Ok(Latency {
        p50_ms,
        p99_ms,
        requests_per_s,
        errors: errors.join("; "),
    })
}

/// Waits until `/p0` on h0 answers 200 (the configuration is loaded and proxies).
fn wait_serving(server: Server) -> Result<Server> {
    let deadline = Instant::now() + START_TIMEOUT;
    while Instant::now() < deadline {
        if probe(server.port, "/p0").is_ok_and(|s| s == 200) {
            return Ok(server);
        }
        thread::sleep(Duration::from_millis(50));
    }
    bail!("{} did not serve within {START_TIMEOUT:?}", server.name)
}

/// Host `host`'s VirtualService: 100 prefixes, plus `/new-N` on h0. One file per host, as
/// a ConfigMap with a key per VirtualService mounts; a reload rewrites h0's only.
fn gatewayd_host(host: usize, generation: usize) -> String {
    let mut routes = String::from("  http:\n");
    if host == 0 {
        let _ = write!(
            routes,
            "  - match: [{{uri: {{prefix: /new-{generation}}}}}]\n    route: [{{destination: {{host: upstream, port: {{number: 8000}}}}}}]\n"
        );
    }
    for prefix in 0..PREFIXES_PER_HOST {
        let _ = write!(
            routes,
            "  - match: [{{uri: {{prefix: /p{prefix}}}}}]\n    route: [{{destination: {{host: upstream, port: {{number: 8000}}}}}}]\n"
        );
    }
    let name = format!("h{host}");
    let hostname = format!("h{host}.example.com");
    virtual_service_yaml(&name, "default", &[&hostname], "bench", &routes)
}

fn start_gatewayd(bin: &Path, work: &Path, upstream: SocketAddr) -> Result<Server> {
    let port = free_port()?;
    let dir = work.join("gatewayd");
    fs::create_dir_all(&dir)?;
    fs::write(dir.join("base.yaml"), gatewayd_base(port, upstream))?;
    for host in 0..HOSTS {
        fs::write(dir.join(format!("h{host}.yaml")), gatewayd_host(host, 0))?;
    }
    let child = gatewayd_run(pinned(SERVER_CPU, bin), &dir, &AdminAddrs::free()?)?
        .arg("--log-json")
        .stdout(Stdio::null())
        .stderr(fs::File::create(work.join("gatewayd.stderr"))?)
        .spawn()
        .context("starting gatewayd")?;
    wait_serving(Server {
        kind: Kind::Gatewayd,
        name: "gatewayd",
        port,
        dir,
        child,
        upstream,
    })
}

/// What every host's file shares: the Gateway, gatewayd's listener on `port`, and the
/// Service `upstream` on the demo upstream at `upstream`.
fn gatewayd_base(port: u16, upstream: SocketAddr) -> String {
    [
        gateway_yaml("bench", "default", 80, "HTTP", &["*.example.com"], None),
        ingress_service_yaml("http", 80, port, None),
        upstream_service_yaml("upstream", "http", 8000, upstream),
    ]
    .join("---\n")
}

fn nginx_config(dir: &Path, port: u16, upstream: SocketAddr, generation: usize) -> String {
    let prelude = nginx_prelude(dir);
    let mut servers = String::new();
    for host in 0..HOSTS {
        let _ = write!(
            servers,
            "  server {{\n    listen 127.0.0.1:{port};\n    server_name h{host}.example.com;\n"
        );
        if host == 0 {
            let _ = writeln!(
                servers,
                "    location /new-{generation} {{ proxy_pass http://up; }}"
            );
        }
        for prefix in 0..PREFIXES_PER_HOST {
            let _ = writeln!(
                servers,
                "    location /p{prefix} {{ proxy_pass http://up; }}"
            );
        }
        servers.push_str("    location / { return 404; }\n  }\n");
    }
    format!(
        r#"{prelude}  server_names_hash_bucket_size 128;
  proxy_http_version 1.1;
  proxy_set_header Connection "";
  proxy_set_header Host $host;
  upstream up {{ server {upstream}; keepalive 32; }}
{servers}}}
"#
    )
}

fn start_nginx(work: &Path, upstream: SocketAddr) -> Result<Server> {
    let port = free_port()?;
    let dir = work.join("nginx");
    fs::create_dir_all(dir.join("logs"))?;
    fs::write(
        dir.join("nginx.conf"),
        nginx_config(&dir, port, upstream, 0),
    )?;
    let child = pinned(SERVER_CPU, Path::new("nginx"))
        .arg("-p")
        .arg(&dir)
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .stdout(Stdio::null())
        .spawn()
        .context("starting nginx")?;
    wait_serving(Server {
        kind: Kind::Nginx,
        name: "nginx",
        port,
        dir,
        child,
        upstream,
    })
}

fn haproxy_config(port: u16, upstream: SocketAddr, generation: usize) -> String {
    let mut rules = String::new();
    for host in 0..HOSTS {
        let _ = writeln!(rules, "  acl h{host} hdr(host) -i h{host}.example.com");
    }
    let _ = writeln!(
        rules,
        "  use_backend up if h0 {{ path_beg /new-{generation} }}"
    );
    for host in 0..HOSTS {
        for prefix in 0..PREFIXES_PER_HOST {
            let _ = writeln!(
                rules,
                "  use_backend up if h{host} {{ path_beg /p{prefix} }}"
            );
        }
    }
    format!(
        r#"global
  nbthread 1
  maxconn 4096
defaults
  mode http
  timeout connect 5s
  timeout client 300s
  timeout server 300s
  timeout http-keep-alive 300s
frontend http
  bind 127.0.0.1:{port}
{rules}  default_backend not_found
backend not_found
  http-request return status 404
backend up
  http-reuse always
  server s1 {upstream}
"#
    )
}

fn start_haproxy(work: &Path, upstream: SocketAddr) -> Result<Server> {
    let port = free_port()?;
    let dir = work.join("haproxy");
    fs::create_dir_all(&dir)?;
    fs::write(dir.join("haproxy.cfg"), haproxy_config(port, upstream, 0))?;
    // -W: master-worker, so SIGUSR2 to the master reloads (a new worker takes over).
    let child = pinned(SERVER_CPU, Path::new("haproxy"))
        .args(["-W", "-db", "-f"])
        .arg(dir.join("haproxy.cfg"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting haproxy")?;
    wait_serving(Server {
        kind: Kind::Haproxy,
        name: "haproxy",
        port,
        dir,
        child,
        upstream,
    })
}
