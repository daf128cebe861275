//! `cargo xtask setup | build | run | test | bench`: the developer and CI entry points.
//!
//! Every cargo child runs in the workspace root with the `cargo` that runs us (env `CARGO`),
//! and every child gets a PATH that includes `$CARGO_HOME/bin` (where bpf-linker lands).

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use std::{env, thread};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

mod bench;

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "Developer tasks for the gateway workspace"
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing need (apt packages, rust-src, bpf-linker); idempotent.
    Setup,
    /// Build gatewayd (with its eBPF object) and the test binaries.
    Build {
        #[arg(long)]
        release: bool,
        /// Only gatewayd, release, profile-guided: an instrumented build serves the benches'
        /// traffic, then the release build uses its counts (target/pgo/use/release/gatewayd).
        #[arg(long, requires = "release")]
        pgo: bool,
    },
    /// Run gatewayd on an example config in front of the demo upstream, until Ctrl-C.
    Run {
        /// Config directory [default: <workspace>/config/examples/httpbin]
        #[arg(long, value_name = "DIR")]
        config: Option<PathBuf>,
        /// Build and run debug binaries instead of release ones.
        #[arg(long)]
        debug: bool,
    },
    /// Run benchmarks (all, or the ones named) and write their tables under target/bench/.
    Bench {
        /// Benchmark names; none runs them all. `cargo xtask bench --list` lists them.
        names: Vec<String>,
        #[arg(long)]
        list: bool,
    },
    /// Setup, build, then run unit, kernel-program and end-to-end tests, stopping at the first failure.
    Test {
        /// Passed to every `cargo test` after its `--`, e.g. a test-name filter.
        #[arg(
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "ARGS"
        )]
        args: Vec<String>,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let ws = Workspace::locate()?;
    match cli.task {
        Task::Setup => setup(&ws),
        Task::Build { pgo: true, .. } => bench::pgo::build(&ws).map(drop),
        Task::Build { release, .. } => build(&ws, release),
        Task::Run { config, debug } => run(&ws, config, debug),
        Task::Test { args } => test(&ws, &args),
        Task::Bench { names, list } => bench::run(&ws, &names, list),
    }
}

// ---------------------------------------------------------------------------------------------
// setup

/// Debian packages, grouped by the reason we need them.
const APT_PACKAGES: &[(&[&str], &str)] = &[
    (
        &[
            "llvm-22-dev",
            "libpolly-22-dev",
            "libzstd-dev",
            "zlib1g-dev",
        ],
        "bpf-linker links against LLVM 22",
    ),
    (&["build-essential", "pkg-config"], "C parts of crates"),
    (&["curl", "openssl"], "test clients"),
    (
        // The image's package (Google's Cloud SDK apt source), client-go v1.32.
        &["kubectl"],
        "real Kubernetes client that cross-checks the fake API server",
    ),
    (
        &["python3-grpcio"],
        "gRPC client and server peers in the gRPC end-to-end test",
    ),
    (
        &["iproute2", "iptables", "nftables"],
        "network namespaces and kube-proxy-style rules in kernel tests",
    ),
    (
        &["dnsmasq-base"],
        "a real DNS server for the egress gateway's ServiceEntry resolution tests",
    ),
    (
        &[
            "nginx-light",
            "haproxy",
            "wrk",
            "nghttp2-client",
            "linux-perf",
            "bpftool",
        ],
        "benchmark peers, load, measurement and inspection",
    ),
];

const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_BIN_DIR: &str = "/usr/lib/llvm-22/bin";

fn setup(ws: &Workspace) -> Result<()> {
    setup_apt_packages(ws)?;
    check_on_path(ws, "kubectl", &["version", "--client"])?;
    setup_rust_src(ws)?;
    setup_bpf_linker(ws)?;
    println!("setup: done");
    Ok(())
}

fn setup_apt_packages(ws: &Workspace) -> Result<()> {
    println!("== setup: Debian packages");
    let mut missing = Vec::new();
    for (packages, reason) in APT_PACKAGES {
        for &package in *packages {
            let present = apt_package_installed(ws, package);
            let state = if present { "present" } else { "missing" };
            println!("  {state:8} {package:16} {reason}");
            if !present {
                missing.push(package);
            }
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    let install = format!(
        "DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends {}",
        missing.join(" ")
    );
    if !is_root() {
        bail!(
            "missing Debian packages and not running as root; run:\n  sudo apt-get update && sudo {install}"
        );
    }
    println!("installing {} missing package(s)", missing.len());
    cmd(ws.command("apt-get").arg("update"))?;
    cmd(ws
        .command("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "--no-install-recommends"])
        .args(&missing))
}

/// A tool the tests run by name must be on PATH, not just installed.
fn check_on_path(ws: &Workspace, tool: &str, args: &[&str]) -> Result<()> {
    let found = ws
        .command(tool)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if !found {
        bail!("`{tool}` is not on PATH (it is needed by the tests)");
    }
    println!("  on PATH  {tool}");
    Ok(())
}

fn apt_package_installed(ws: &Workspace, package: &str) -> bool {
    // dpkg-query fails for packages it has never heard of: that is "missing" too.
    ws.command("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|out| {
            out.status.success()
                && String::from_utf8_lossy(&out.stdout).contains("install ok installed")
        })
}

fn setup_rust_src(ws: &Workspace) -> Result<()> {
    println!("== setup: rust-src (the eBPF crate builds core from source)");
    let out = ws
        .command("rustc")
        .args(["--print", "sysroot"])
        .output()
        .context("could not run `rustc --print sysroot`")?;
    if !out.status.success() {
        bail!("`rustc --print sysroot` failed: {}", out.status);
    }
    let sysroot = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let core = sysroot.join("lib/rustlib/src/rust/library/core");
    if core.is_dir() {
        println!("  present  {}", core.display());
        return Ok(());
    }
    println!("  missing  {}", core.display());
    cmd(ws.command("rustup").args(["component", "add", "rust-src"]))
}

fn setup_bpf_linker(ws: &Workspace) -> Result<()> {
    println!("== setup: bpf-linker (links the eBPF object)");
    if let Some(version) = bpf_linker_version(ws) {
        println!("  present  {version}");
        return Ok(());
    }
    println!(
        "  missing  bpf-linker: building {BPF_LINKER_VERSION} against LLVM 22 into {} (about 3 minutes)",
        ws.cargo_bin.display()
    );
    let llvm_path = prepend_to_path(Path::new(LLVM_BIN_DIR), &ws.path)?;
    println!("  (with {LLVM_BIN_DIR} first on PATH)");
    cmd(ws
        .cargo()
        .env("PATH", llvm_path)
        .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
        .args(["--no-default-features", "--features", "llvm-22"])
        .arg("--root")
        .arg(&ws.cargo_home))?;
    match bpf_linker_version(ws) {
        Some(version) => {
            println!("  installed {version}");
            Ok(())
        }
        None => bail!(
            "bpf-linker was installed but `bpf-linker --version` still fails (looked in {})",
            ws.cargo_bin.display()
        ),
    }
}

fn bpf_linker_version(ws: &Workspace) -> Option<String> {
    let out = ws
        .command("bpf-linker")
        .arg("--version")
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

// ---------------------------------------------------------------------------------------------
// build

fn build(ws: &Workspace, release: bool) -> Result<()> {
    let mut command = ws.cargo();
    command.arg("build");
    if release {
        command.arg("--release");
    }
    cmd(command.args(["-p", "gateway-userspace", "-p", "gateway-tests", "--bins"]))
}

// ---------------------------------------------------------------------------------------------
// run

const UPSTREAM_ADDR: &str = "127.0.0.1:18000";
const READINESS_ADDR: &str = "127.0.0.1:15021";
const READY_TIMEOUT: Duration = Duration::from_secs(30);

fn run(ws: &Workspace, config: Option<PathBuf>, debug: bool) -> Result<()> {
    setup(ws)?;
    build(ws, !debug)?;
    let bin_dir = ws
        .target_dir()
        .join(if debug { "debug" } else { "release" });
    let config = config.unwrap_or_else(|| ws.root.join("config/examples/httpbin"));
    if !config.exists() {
        bail!("config {} does not exist", config.display());
    }

    let stop = Arc::new(AtomicBool::new(false));
    let on_signal = Arc::clone(&stop);
    ctrlc::set_handler(move || on_signal.store(true, Ordering::SeqCst))
        .context("installing the Ctrl-C handler")?;
    // Dropping `children` (on any error below) stops whatever was started.
    let mut children = Children::default();

    let mut upstream = spawn(
        ws.command(bin_dir.join("demo-upstream"))
            .args(["--listen", UPSTREAM_ADDR, "--name", "httpbin"])
            .stdout(Stdio::piped()),
    )?;
    let upstream_stdout = upstream.stdout.take().context("demo-upstream stdout")?;
    children.add("demo-upstream", upstream);
    let mut upstream_stdout = BufReader::new(upstream_stdout);
    let mut first_line = String::new();
    upstream_stdout
        .read_line(&mut first_line)
        .context("reading demo-upstream's stdout")?;
    if !first_line.starts_with("listening on ") {
        bail!("demo-upstream did not start (it printed {first_line:?}; its stderr is above)");
    }
    print!("demo-upstream: {first_line}");
    // Pass the rest of its stdout through.
    thread::spawn(move || std::io::copy(&mut upstream_stdout, &mut std::io::stdout()));

    let ebpf = if is_root() {
        "auto"
    } else {
        println!(
            "not running as root: loading eBPF programs needs CAP_BPF and CAP_NET_ADMIN, so gatewayd runs with --ebpf off"
        );
        "off"
    };
    let mut gatewayd = spawn(
        ws.command(bin_dir.join("gatewayd"))
            .arg("run")
            .arg("--config")
            .arg(&config)
            .args(["--interface", "lo", "--ebpf", ebpf])
            .stderr(Stdio::piped()),
    )?;
    let gatewayd_stderr = StderrTail::start(gatewayd.stderr.take().context("gatewayd stderr")?);
    children.add("gatewayd", gatewayd);

    if !wait_until_ready(&mut children, &stop, gatewayd_stderr)? {
        children.stop_all();
        return Ok(());
    }
    println!(
        "\ngatewayd is ready. Try:\n\
         \x20 curl -i -H 'Host: httpbin.example.com' http://127.0.0.1:8080/status/200\n\
         \x20 curl -s -H 'Host: httpbin.example.com' http://127.0.0.1:8080/headers\n\
         \x20 curl -i -H 'Host: httpbin.example.com' http://127.0.0.1:8080/nothing-routes-here   (-> 404)\n\
         \x20 curl -s http://127.0.0.1:15090/stats/prometheus | grep gateway_\n\
         Ctrl-C stops everything.\n"
    );

    while !stop.load(Ordering::SeqCst) {
        if let Some((name, status)) = children.first_exited()? {
            // A terminal's Ctrl-C reaches the children and us together: a child may
            // finish before our handler has set the flag, which is a normal stop.
            if stopped_by_user(&stop) {
                break;
            }
            children.stop_all();
            bail!("{name} exited unexpectedly: {status}");
        }
        thread::sleep(Duration::from_millis(200));
    }
    println!("\nstopping gatewayd and demo-upstream");
    children.stop_all();
    Ok(())
}

/// Whether Ctrl-C has been seen, allowing its handler a moment to run: the signal
/// reaches the whole process group at once, so a child's exit can be noticed first.
fn stopped_by_user(stop: &AtomicBool) -> bool {
    thread::sleep(Duration::from_millis(300));
    stop.load(Ordering::SeqCst)
}

/// Polls the readiness endpoint until it answers 200. `Ok(false)` means Ctrl-C came first.
fn wait_until_ready(
    children: &mut Children,
    stop: &AtomicBool,
    gatewayd_stderr: StderrTail,
) -> Result<bool> {
    let addr: SocketAddr = READINESS_ADDR.parse().context("readiness address")?;
    let deadline = Instant::now() + READY_TIMEOUT;
    println!("waiting for http://{addr}/healthz/ready");
    loop {
        if stop.load(Ordering::SeqCst) {
            return Ok(false);
        }
        if let Some((name, status)) = children.first_exited()? {
            if stopped_by_user(stop) {
                return Ok(false);
            }
            // Once gatewayd has exited its stderr closes, so all of it can be shown.
            let stderr = if name == "gatewayd" {
                gatewayd_stderr.finish()
            } else {
                gatewayd_stderr.snapshot()
            };
            bail!(
                "{name} exited ({status}) before gatewayd was ready; gatewayd's stderr:\n{stderr}"
            );
        }
        if http_get_status(addr, "/healthz/ready").is_ok_and(|status| status == 200) {
            return Ok(true);
        }
        if Instant::now() > deadline {
            bail!(
                "gatewayd was not ready after {} s; its stderr so far:\n{}",
                READY_TIMEOUT.as_secs(),
                gatewayd_stderr.snapshot()
            );
        }
        thread::sleep(Duration::from_millis(200));
    }
}

/// One HTTP/1.0 GET; returns the response's status code.
fn http_get_status(addr: SocketAddr, path: &str) -> std::io::Result<u16> {
    let timeout = Duration::from_secs(1);
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut status_line = String::new();
    BufReader::new(stream).read_line(&mut status_line)?;
    parse_status_line(&status_line).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("not an HTTP status line: {status_line:?}"),
        )
    })
}

fn parse_status_line(line: &str) -> Option<u16> {
    let mut fields = line.split_whitespace();
    if !fields.next()?.starts_with("HTTP/") {
        return None;
    }
    fields.next()?.parse().ok()
}

/// The children of `cargo xtask run`; dropping it stops them.
#[derive(Default)]
struct Children {
    running: Vec<(&'static str, Child)>,
}

impl Children {
    fn add(&mut self, name: &'static str, child: Child) {
        self.running.push((name, child));
    }

    fn first_exited(&mut self) -> Result<Option<(&'static str, ExitStatus)>> {
        for (name, child) in &mut self.running {
            if let Some(status) = child
                .try_wait()
                .with_context(|| format!("waiting for {name}"))?
            {
                return Ok(Some((name, status)));
            }
        }
        Ok(None)
    }

    /// SIGTERM to every child, then wait (SIGKILL after 10 s).
    fn stop_all(&mut self) {
        for (_, child) in &mut self.running {
            if matches!(child.try_wait(), Ok(None)) {
                send_sigterm(child);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for (name, mut child) in self.running.drain(..) {
            let status = loop {
                match child.try_wait() {
                    Ok(Some(status)) => break Some(status),
                    Ok(None) if Instant::now() < deadline => {
                        thread::sleep(Duration::from_millis(50))
                    }
                    Ok(None) => {
                        eprintln!("{name} did not stop within 10 s; killing it");
                        let _ = child.kill();
                        break child.wait().ok();
                    }
                    Err(err) => {
                        eprintln!("waiting for {name}: {err}");
                        break None;
                    }
                }
            };
            if let Some(status) = status {
                println!("{name} stopped ({status})");
            }
        }
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        self.stop_all();
    }
}

fn send_sigterm(child: &Child) {
    let Ok(pid) = libc::pid_t::try_from(child.id()) else {
        return;
    };
    // SAFETY: kill(2) has no memory-safety preconditions; the pid is our own unreaped child.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
}

/// Copies a child's stderr to ours, keeping the last lines for error messages.
struct StderrTail {
    lines: Arc<Mutex<VecDeque<String>>>,
    copier: JoinHandle<()>,
}

impl StderrTail {
    const KEEP: usize = 100;

    fn start(stderr: ChildStderr) -> Self {
        let lines = Arc::new(Mutex::new(VecDeque::new()));
        let kept = Arc::clone(&lines);
        let copier = thread::spawn(move || {
            let mut reader = BufReader::new(stderr);
            let mut line = Vec::new();
            while matches!(reader.read_until(b'\n', &mut line), Ok(n) if n > 0) {
                let _ = std::io::stderr().write_all(&line);
                let mut kept = kept.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                if kept.len() == Self::KEEP {
                    kept.pop_front();
                }
                kept.push_back(String::from_utf8_lossy(&line).into_owned());
                line.clear();
            }
        });
        Self { lines, copier }
    }

    fn snapshot(&self) -> String {
        let lines = self
            .lines
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        lines.iter().map(String::as_str).collect()
    }

    /// Waits for the child's stderr to close (it has exited), then returns the tail.
    fn finish(self) -> String {
        let Self { lines, copier } = self;
        let _ = copier.join();
        let lines = lines
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        lines.iter().map(String::as_str).collect()
    }
}

// ---------------------------------------------------------------------------------------------
// test

/// One `cargo test` invocation: cargo's arguments, then the test harness's (after `--`).
struct TestRun {
    cargo: &'static [&'static str],
    harness: &'static [&'static str],
}

/// The first stage: the tree is formatted and clippy finds nothing, so neither regresses
/// silently (cargo's arguments of each check).
const LINT_CHECKS: &[&[&str]] = &[
    &["fmt", "--all", "--check"],
    &[
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ],
];

const TEST_STAGES: &[(&str, &[TestRun])] = &[
    (
        "unit tests",
        &[
            TestRun {
                cargo: &["-p", "gateway-ebpf", "--lib"],
                harness: &[],
            },
            TestRun {
                cargo: &["-p", "gateway-userspace", "--lib", "--bins"],
                harness: &[],
            },
            TestRun {
                cargo: &["-p", "xtask"],
                harness: &[],
            },
            TestRun {
                cargo: &["-p", "gateway-tests", "--lib", "--bins"],
                harness: &[],
            },
            // The Kubernetes manifests in config/kubernetes/, parsed into the API types.
            TestRun {
                cargo: &["-p", "gateway-tests", "--test", "manifests"],
                harness: &[],
            },
            // The fake Kubernetes API server, cross-checked with kube-rs and kubectl.
            TestRun {
                cargo: &["-p", "fake-apiserver"],
                harness: &[],
            },
            // Leader election and status writes against the fake API server.
            TestRun {
                cargo: &["-p", "gateway-userspace", "--test", "kubernetes_status"],
                harness: &[],
            },
        ],
    ),
    (
        "kernel-program tests",
        &[
            TestRun {
                cargo: &["-p", "gateway-userspace", "--test", "kernel"],
                harness: &["--test-threads=1"],
            },
            TestRun {
                cargo: &["-p", "gateway-userspace", "--test", "kernel_source_rules"],
                harness: &["--test-threads=1"],
            },
            TestRun {
                cargo: &["-p", "gateway-userspace", "--test", "kernel_node_ports"],
                harness: &["--test-threads=1"],
            },
        ],
    ),
    (
        "end-to-end tests",
        &[TestRun {
            cargo: &["-p", "gateway-tests", "--test", "e2e"],
            harness: &["--test-threads=1"],
        }],
    ),
];

fn test(ws: &Workspace, extra: &[String]) -> Result<()> {
    setup(ws)?;
    if !is_root() {
        println!(
            "note: not running as root: the kernel-program and network-namespace tests skip themselves (they check the effective uid)"
        );
    }
    // Cheapest first: a formatting or lint failure stops CI before the long stages.
    let stages = TEST_STAGES.len() + 1;
    println!("\n==== [1/{stages}] format and lints");
    for check in LINT_CHECKS {
        cmd(ws.cargo().args(*check)).context("format and lints failed")?;
    }
    println!("\n==== build (debug)");
    build(ws, false)?;

    let bin_dir = ws.target_dir().join("debug");
    for (number, (stage, runs)) in TEST_STAGES.iter().enumerate() {
        println!("\n==== [{}/{stages}] {stage}", number + 2);
        for run in *runs {
            let mut command = ws.cargo();
            command
                .env("GATEWAYD_BIN", bin_dir.join("gatewayd"))
                .env("DEMO_UPSTREAM_BIN", bin_dir.join("demo-upstream"))
                .env("TLS_PROBE_BIN", bin_dir.join("tls-probe"))
                .arg("test")
                .args(run.cargo);
            if !run.harness.is_empty() || !extra.is_empty() {
                command.arg("--").args(run.harness).args(extra);
            }
            cmd(&mut command).with_context(|| format!("{stage} failed"))?;
        }
    }
    println!("\nall test stages passed");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// helpers

pub(crate) struct Workspace {
    /// The workspace root: the parent of xtask/.
    root: PathBuf,
    /// The cargo that runs us (env CARGO), or `cargo` from PATH.
    cargo: OsString,
    /// `$CARGO_HOME` (default `~/.cargo`): `cargo install --root` for bpf-linker.
    cargo_home: PathBuf,
    /// `$CARGO_HOME/bin`: where bpf-linker lands.
    cargo_bin: PathBuf,
    /// PATH for every child: ours with `cargo_bin` in it.
    path: OsString,
}

impl Workspace {
    fn locate() -> Result<Self> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .context("xtask's manifest directory has no parent")?
            .to_path_buf();
        let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let cargo_home = match env::var_os("CARGO_HOME") {
            Some(home) => PathBuf::from(home),
            None => {
                PathBuf::from(env::var_os("HOME").context("neither CARGO_HOME nor HOME is set")?)
                    .join(".cargo")
            }
        };
        let cargo_bin = cargo_home.join("bin");
        let path = prepend_to_path(&cargo_bin, &env::var_os("PATH").unwrap_or_default())?;
        Ok(Self {
            root,
            cargo,
            cargo_home,
            cargo_bin,
            path,
        })
    }

    /// A command that runs in the workspace root with our PATH.
    fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut command = Command::new(program);
        command.current_dir(&self.root).env("PATH", &self.path);
        command
    }

    fn cargo(&self) -> Command {
        self.command(&self.cargo)
    }

    /// Cargo's target directory: CARGO_TARGET_DIR (or CARGO_BUILD_TARGET_DIR) if set,
    /// else `<workspace>/target`.
    pub(crate) fn target_dir(&self) -> PathBuf {
        env::var_os("CARGO_TARGET_DIR")
            .or_else(|| env::var_os("CARGO_BUILD_TARGET_DIR"))
            .map(|dir| self.root.join(dir))
            .unwrap_or_else(|| self.root.join("target"))
    }
}

/// `dir` first, then `path`'s entries; unchanged when `dir` is already in it.
fn prepend_to_path(dir: &Path, path: &OsStr) -> Result<OsString> {
    let mut dirs: Vec<PathBuf> = env::split_paths(path).collect();
    if dirs.first().map(PathBuf::as_path) == Some(dir) {
        return Ok(path.to_owned());
    }
    dirs.retain(|existing| existing != dir);
    dirs.insert(0, dir.to_path_buf());
    env::join_paths(dirs).with_context(|| format!("cannot put {} on PATH", dir.display()))
}

/// Runs `command` (echoed as `$ ...`) and fails if it does not succeed.
fn cmd(command: &mut Command) -> Result<()> {
    let shown = show(command);
    println!("$ {shown}");
    let status = command
        .status()
        .with_context(|| format!("could not start `{shown}`"))?;
    if !status.success() {
        bail!("`{shown}` failed: {status}");
    }
    Ok(())
}

/// Starts `command` (echoed as `$ ... &`).
fn spawn(command: &mut Command) -> Result<Child> {
    let shown = show(command);
    println!("$ {shown} &");
    command
        .spawn()
        .with_context(|| format!("could not start `{shown}`"))
}

/// The command as a shell line: explicitly set variables (but PATH), program, arguments.
fn show(command: &Command) -> String {
    let vars = command.get_envs().filter_map(|(name, value)| {
        let value = value?;
        (name != "PATH").then(|| format!("{}={}", name.to_string_lossy(), quote(value)))
    });
    // Show `cargo`, not the toolchain path that env CARGO holds.
    let program = Path::new(command.get_program());
    let program = if program.file_name() == Some(OsStr::new("cargo")) {
        "cargo".to_owned()
    } else {
        quote(program.as_os_str())
    };
    vars.chain([program])
        .chain(command.get_args().map(quote))
        .collect::<Vec<_>>()
        .join(" ")
}

fn quote(word: &OsStr) -> String {
    let word = word.to_string_lossy();
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
    if plain {
        word.into_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid(2) cannot fail and touches no memory of ours.
    unsafe { libc::geteuid() == 0 }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        assert_eq!(parse_status_line("HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(
            parse_status_line("HTTP/1.0 503 Service Unavailable\r\n"),
            Some(503)
        );
        assert_eq!(parse_status_line("SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(parse_status_line(""), None);
    }

    #[test]
    fn path_gets_dir_once_and_first() {
        let dir = Path::new("/root/.cargo/bin");
        let joined = prepend_to_path(dir, OsStr::new("/usr/bin:/bin")).unwrap();
        assert_eq!(joined, OsString::from("/root/.cargo/bin:/usr/bin:/bin"));
        let again = prepend_to_path(dir, &joined).unwrap();
        assert_eq!(again, joined);
        let moved = prepend_to_path(dir, OsStr::new("/usr/bin:/root/.cargo/bin")).unwrap();
        assert_eq!(moved, OsString::from("/root/.cargo/bin:/usr/bin"));
    }

    #[test]
    fn shown_commands_are_shell_lines() {
        let mut command = Command::new("/opt/toolchain/bin/cargo");
        command
            .env("PATH", "/x")
            .env("GATEWAYD_BIN", "/w/target/debug/gatewayd")
            .args(["test", "--", "name with space", "it's"]);
        assert_eq!(
            show(&command),
            r"GATEWAYD_BIN=/w/target/debug/gatewayd cargo test -- 'name with space' 'it'\''s'"
        );
    }

    #[test]
    fn cli_parses() {
        use clap::CommandFactory as _;
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from(["xtask", "test", "--", "routing", "--nocapture"]).unwrap();
        match cli.task {
            Task::Test { args } => assert_eq!(args, ["routing", "--nocapture"]),
            _ => panic!("expected test"),
        }
    }
}
