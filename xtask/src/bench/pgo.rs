//! `cargo xtask build --release --pgo`: gatewayd built with profile-guided optimization.
//!
//! 1. An instrumented gatewayd (`-Cprofile-generate`) is built in `target/pgo/generate`.
//!    Without LTO and with 16 codegen units: rustc instruments functions before inlining,
//!    so the counts match the release build's functions whatever the instrumented
//!    build's profile, and this saves a fat-LTO build.
//! 2. It serves the benches' traffic: HTTP/1.1 keep-alive and HTTP/2 (h2c) through one
//!    route to an nginx, new connections (`Connection: close`), and HTTP/1.1 with TLS
//!    originated to the upstream (a DestinationRule), then stops on SIGTERM, which writes
//!    the counts.
//! 3. `llvm-profdata` of rustc's own LLVM merges them; the release profile (fat LTO) is
//!    built with `-Cprofile-use` in `target/pgo/use`.
//!
//! The training needs the bench tools (nginx, h2load, wrk, openssl: `cargo xtask setup`).

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{
    common::{AdminAddrs, free_port, gatewayd_run},
    peers::{Process, wait_listening},
    upstream_tls::{certificates, gatewayd_config, start_upstream},
};
use crate::{Workspace, cmd};

/// Requests per training load: enough for every path to be counted many times, few
/// enough that the instrumented build trains in about a minute.
const KEEP_ALIVE_REQUESTS: &str = "60000";
const H2_REQUESTS: &str = "30000";
const NEW_CONNECTION_SECONDS: &str = "3s";
const TLS_REQUESTS: &str = "30000";
/// Idle connections close at once on SIGTERM; writing the counts takes well under this.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// Builds the PGO gatewayd and returns its path.
pub(crate) fn build(ws: &Workspace) -> Result<PathBuf> {
    let pgo = ws.target_dir().join("pgo");
    let raw = pgo.join("raw");
    let generate = pgo.join("generate");
    let profdata = llvm_profdata(ws)?;

    println!("== pgo: instrumented build");
    cmd(release_build(ws, &generate)
        .env("RUSTFLAGS", format!("-Cprofile-generate={}", raw.display()))
        .env("CARGO_PROFILE_RELEASE_LTO", "off")
        .env("CARGO_PROFILE_RELEASE_CODEGEN_UNITS", "16"))?;
    // Build scripts ran instrumented too and left their counts: only gatewayd's count.
    let _ = fs::remove_dir_all(&raw);
    fs::create_dir_all(&raw)?;

    println!("== pgo: training");
    train(
        &generate.join("release").join("gatewayd"),
        &pgo.join("work"),
        &raw,
    )?;
    let merged = pgo.join("gatewayd.profdata");
    cmd(Command::new(&profdata)
        .arg("merge")
        .arg("-o")
        .arg(&merged)
        .arg(&raw))?;

    println!("== pgo: optimized release build");
    let used = pgo.join("use");
    cmd(release_build(ws, &used).env("RUSTFLAGS", format!("-Cprofile-use={}", merged.display())))?;
    let bin = used.join("release").join("gatewayd");
    println!("pgo: {}", bin.display());
    Ok(bin)
}

fn release_build(ws: &Workspace, target_dir: &Path) -> Command {
    let mut command = ws.cargo();
    command
        .args([
            "build",
            "--release",
            "-p",
            "gateway-userspace",
            "--bin",
            "gatewayd",
        ])
        .env("CARGO_TARGET_DIR", target_dir);
    command
}

/// The `llvm-profdata` of the LLVM rustc is built on: a profile is read only by the LLVM
/// version that wrote its format.
fn llvm_profdata(ws: &Workspace) -> Result<PathBuf> {
    let output = ws
        .command("rustc")
        .arg("-vV")
        .output()
        .context("running rustc -vV")?;
    let text = String::from_utf8_lossy(&output.stdout);
    let major = text
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .context("rustc -vV names no LLVM version")?;
    let candidates = [
        PathBuf::from(format!("/usr/lib/llvm-{major}/bin/llvm-profdata")),
        PathBuf::from(format!("/usr/bin/llvm-profdata-{major}")),
    ];
    candidates
        .into_iter()
        .find(|path| path.exists())
        .with_context(|| {
            format!(
                "no llvm-profdata of LLVM {major} (rustc's): install llvm-{major} (apt.llvm.org)"
            )
        })
}

/// The instrumented gatewayd under each kind of traffic, then stopped with SIGTERM.
fn train(gatewayd: &Path, work: &Path, raw: &Path) -> Result<()> {
    let _ = fs::remove_dir_all(work);
    fs::create_dir_all(work)?;
    certificates(work)?;
    let (tls_port, plain_port) = (free_port()?, free_port()?);
    let _upstream = start_upstream(work, tls_port, plain_port)?;

    let port = free_port()?;
    let plain = start(gatewayd, work, raw, "plain", port, plain_port, None)?;
    let url = format!("http://127.0.0.1:{port}/");
    load("h2load", &["--h1", "-c16", "-n", KEEP_ALIVE_REQUESTS, &url])?;
    load("h2load", &["-c4", "-m10", "-n", H2_REQUESTS, &url])?;
    load(
        "wrk",
        &[
            "-t1",
            "-c1",
            "-d",
            NEW_CONNECTION_SECONDS,
            "-H",
            "Connection: close",
            &url,
        ],
    )?;
    stop(plain)?;

    let port = free_port()?;
    let ca = work.join("ca.pem");
    let tls = start(gatewayd, work, raw, "tls", port, tls_port, Some(&ca))?;
    let url = format!("http://127.0.0.1:{port}/");
    load("h2load", &["--h1", "-c16", "-n", TLS_REQUESTS, &url])?;
    stop(tls)
}

fn start(
    gatewayd: &Path,
    work: &Path,
    raw: &Path,
    name: &str,
    port: u16,
    upstream_port: u16,
    ca: Option<&Path>,
) -> Result<Process> {
    let dir = work.join(name);
    fs::create_dir_all(&dir)?;
    fs::write(
        dir.join("config.yaml"),
        gatewayd_config(port, upstream_port, ca),
    )?;
    let mut child = gatewayd_run(Command::new(gatewayd), &dir, &AdminAddrs::free()?)?
        // Where the counts go, whatever directory the binary was built to write them to.
        .env("LLVM_PROFILE_FILE", raw.join("gatewayd-%p.profraw"))
        .args(["--worker-threads", "1"])
        .stdout(Stdio::null())
        .stderr(fs::File::create(dir.join("gatewayd.stderr"))?)
        .spawn()
        .context("starting the instrumented gatewayd")?;
    wait_listening(port, &mut child, "instrumented gatewayd")?;
    Ok(Process(child))
}

fn load(program: &str, args: &[&str]) -> Result<()> {
    let output = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    let text = String::from_utf8_lossy(&output.stdout);
    // A training load that fails would train the error paths instead.
    let failed = if program == "wrk" {
        text.contains("Non-2xx") || text.contains("Socket errors")
    } else {
        !text.contains(" 0 failed, 0 errored")
    };
    if !output.status.success() || failed {
        bail!(
            "{program} {}: the training load failed:\n{text}",
            args.join(" ")
        );
    }
    Ok(())
}

/// SIGTERM, then a wait for the exit: the counts are written by the exit handler, which a
/// SIGKILL would skip.
fn stop(mut process: Process) -> Result<()> {
    // SAFETY: kill(2) on our own child's pid, not yet waited for.
    unsafe {
        libc::kill(process.0.id() as libc::pid_t, libc::SIGTERM);
    }
    let deadline = Instant::now() + STOP_TIMEOUT;
    while Instant::now() < deadline {
        if let Some(status) = process.0.try_wait()? {
            // Reaped: `Process`'s drop must not signal a pid that may be reused.
            std::mem::forget(process);
            if !status.success() {
                bail!("the instrumented gatewayd exited with {status}");
            }
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("the instrumented gatewayd did not exit {STOP_TIMEOUT:?} after SIGTERM")
}
