//! What every benchmark needs: pinned children that die with the run, free ports, and
//! the nginx settings every comparison shares.

use std::{
    fs,
    io::Read as _,
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

use anyhow::{Context as _, Result};

use crate::{Workspace, cmd};

/// A child process killed and reaped when the benchmark is done with it (or fails).
pub(super) struct KilledOnDrop(pub(super) Child);

impl Drop for KilledOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The median of a run's rounds (NaN when there are none).
pub(super) fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or(f64::NAN)
}

/// `min–max` of a run's rounds, as the tables print the spread.
pub(super) fn spread(values: &[f64]) -> String {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(0.0, f64::max);
    format!("{min:.0}–{max:.0}")
}

/// The line every CPU bench prints under its table: what a proxy with no user-space time
/// would cost. Each proxy's kernel share (system calls, and on loopback the receiving
/// side's TCP input, which runs in the sender's context) is the same TCP work for every
/// proxy, so no user-space work goes below it. Medians of µs per `unit`.
pub(super) fn kernel_floor(
    unit: &str,
    ours_kernel: f64,
    nginx_kernel: f64,
    nginx_cpu: f64,
) -> String {
    format!(
        "\nKernel floor per {unit}: gatewayd's kernel time alone is {:.2}× nginx's CPU, nginx's own {:.2}× (what a proxy with no user-space time would cost).",
        ours_kernel / nginx_cpu,
        nginx_kernel / nginx_cpu,
    )
}

/// `program` pinned to `cpu`, so servers and load generators do not share a core.
pub(super) fn pinned(cpu: &str, program: &Path) -> Command {
    let mut command = Command::new("taskset");
    command.args(["-c", cpu]).arg(program);
    command
}

/// A loopback port that was free a moment ago.
pub(super) fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Where a benched gatewayd serves readiness and metrics (its admin endpoint goes to a
/// free port: no bench reads it).
pub(super) struct AdminAddrs {
    pub(super) readiness: SocketAddr,
    pub(super) metrics: SocketAddr,
}

impl AdminAddrs {
    /// Both on loopback ports that were free a moment ago.
    pub(super) fn free() -> Result<Self> {
        Ok(Self {
            readiness: free_addr()?,
            metrics: free_addr()?,
        })
    }
}

/// `gatewayd run --config CONFIG` as the loopback benches run it: no kernel programs, no
/// access log, its listeners where `addrs` says. `command` is the program to run
/// (`pinned`, or a plain `Command::new`).
pub(super) fn gatewayd_run(
    mut command: Command,
    config: &Path,
    addrs: &AdminAddrs,
) -> Result<Command> {
    command
        .args(["run", "--config"])
        .arg(config)
        .args(["--ebpf", "off", "--access-log", "off"])
        .args(["--readiness-addr", &addrs.readiness.to_string()])
        .args(["--metrics-addr", &addrs.metrics.to_string()])
        .args(["--admin-addr", &free_addr()?.to_string()]);
    Ok(command)
}

/// A loopback address that was free a moment ago.
pub(super) fn free_addr() -> Result<SocketAddr> {
    Ok(SocketAddr::from(([127, 0, 0, 1], free_port()?)))
}

/// The release binaries a bench runs: `gatewayd`, and `tools` from the test crate
/// (`demo-upstream`, `sni-flood`, `paced-load`...), in that order. Each is built from this
/// tree unless an environment variable names one built elsewhere, measured as it is
/// (another profile or commit, such as `cargo xtask build --release --pgo`'s):
/// `GATEWAYD_BIN`, and for a tool its name in capitals with `_BIN` (`PACED_LOAD_BIN`).
pub(super) fn release_binaries<const N: usize>(
    ws: &Workspace,
    tools: [&str; N],
) -> Result<(PathBuf, [PathBuf; N])> {
    let given = |name: &str| {
        let variable = format!("{}_BIN", name.to_uppercase().replace('-', "_"));
        let path = std::env::var_os(&variable).map(PathBuf::from)?;
        // Said aloud: a variable left in the shell by an e2e run names a debug build.
        println!("{name}: {} (from {variable})", path.display());
        Some(path)
    };
    let gatewayd = given("gatewayd");
    let tools_given = tools.map(given);
    let mut build = ws.cargo();
    build.args(["build", "--release"]);
    if gatewayd.is_none() {
        build.args(["-p", "gateway-userspace", "--bin", "gatewayd"]);
    }
    let mut tools_to_build = tools
        .iter()
        .zip(&tools_given)
        .filter(|(_, given)| given.is_none())
        .peekable();
    let any_tool = tools_to_build.peek().is_some();
    if any_tool {
        build.args(["-p", "gateway-tests"]);
    }
    for (tool, _) in tools_to_build {
        build.args(["--bin", tool]);
    }
    if gatewayd.is_none() || any_tool {
        cmd(&mut build)?;
    }
    let release = ws.target_dir().join("release");
    let mut tools_given = tools_given.into_iter();
    let tools = tools.map(|tool| {
        tools_given
            .next()
            .flatten()
            .unwrap_or_else(|| release.join(tool))
    });
    Ok((gatewayd.unwrap_or_else(|| release.join("gatewayd")), tools))
}

/// The way kubelet and careful editors write: aside, then rename over.
pub(super) fn write_atomically(path: &Path, text: &str) -> Result<()> {
    let aside = path.with_file_name(format!(
        ".{}.tmp",
        path.file_name().unwrap_or_default().to_string_lossy()
    ));
    fs::write(&aside, text)?;
    fs::rename(&aside, path)?;
    Ok(())
}

/// The demo upstream (`bin`) named `name` on a loopback ephemeral port, pinned to `cpu`.
pub(super) fn start_upstream(
    cpu: &str,
    bin: &Path,
    name: &str,
) -> Result<(KilledOnDrop, SocketAddr)> {
    let mut child = pinned(cpu, bin)
        .args(["--listen", "127.0.0.1:0", "--name", name])
        .stdout(Stdio::piped())
        .spawn()
        .context("starting demo-upstream")?;
    let mut stdout = child.stdout.take().context("upstream stdout")?;
    let child = KilledOnDrop(child);
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while stdout.read(&mut byte)? == 1 && byte[0] != b'\n' {
        line.push(byte[0]);
    }
    let line = String::from_utf8_lossy(&line).into_owned();
    let addr = line
        .strip_prefix("listening on ")
        .with_context(|| format!("unexpected upstream output {line:?}"))?
        .parse()?;
    Ok((child, addr))
}

/// utime + stime of one process (all its threads), in seconds.
pub(super) fn cpu_seconds(pid: u32) -> Result<f64> {
    let (user, system) = user_system_seconds(pid)?;
    Ok(user + system)
}

/// utime and stime of one process (all its threads), in seconds: time in user space and
/// time in the kernel on its behalf (system calls, and on loopback the peer's receive path
/// run in the sender's context).
pub(super) fn user_system_seconds(pid: u32) -> Result<(f64, f64)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which may hold spaces and ends with `)`.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> Result<f64> {
        Ok(fields
            .get(i)
            .with_context(|| format!("/proc/{pid}/stat: {stat}"))?
            .parse()?)
    };
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok((ticks(11)? / per_second, ticks(12)? / per_second))
}

/// Time on CPU of `root` and its children, every thread, in seconds: the scheduler's own
/// account (`/proc/PID/task/TID/schedstat`, nanoseconds), not utime + stime's clock ticks
/// (10 ms each: a 2 s run of a few hundred ms of CPU would be read to within a few %).
pub(super) fn tree_on_cpu_seconds(root: u32) -> f64 {
    let mut ns = 0u64;
    for pid in process_tree(root) {
        let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let path = task.path().join("schedstat");
            ns += fs::read_to_string(path)
                .ok()
                .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    ns as f64 / 1e9
}

/// `root` and its children's pids (nginx's and HAProxy's workers).
pub(super) fn process_tree(root: u32) -> Vec<u32> {
    let mut pids = vec![root];
    if let Ok(entries) = fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let parent = fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| s.rsplit_once(')').map(|(_, rest)| rest.to_owned()))
                .and_then(|rest| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
            if parent == Some(root) {
                pids.push(pid);
            }
        }
    }
    pids
}

/// CPU seconds (user + system) used so far by `root` and its children.
pub(super) fn tree_cpu_seconds(root: u32) -> f64 {
    process_tree(root)
        .into_iter()
        .filter_map(|pid| cpu_seconds(pid).ok())
        .sum()
}

/// `user_system_seconds` of `root` and its children, summed.
pub(super) fn tree_user_system_seconds(root: u32) -> (f64, f64) {
    process_tree(root)
        .into_iter()
        .filter_map(|pid| user_system_seconds(pid).ok())
        .fold((0.0, 0.0), |(u, s), (pu, ps)| (u + pu, s + ps))
}

/// Resident bytes of `root` and its children.
pub(super) fn tree_rss_bytes(root: u32) -> f64 {
    process_tree(root)
        .iter()
        .filter_map(|pid| fs::read_to_string(format!("/proc/{pid}/status")).ok())
        .filter_map(|status| {
            let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
            let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib * 1024.0)
        })
        .sum()
}

/// nginx's global settings and the opening of its `http` block, as every benchmark runs
/// it: one worker, logs off, temp paths under `dir`, long keep-alive. The caller adds
/// upstreams and servers and closes the block.
pub(super) fn nginx_prelude(dir: &Path) -> String {
    format!(
        r#"daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile 20000;
user root;
pid {d}/nginx.pid;
error_log {d}/logs/error.log warn;
events {{ worker_connections 15000; }}
http {{
  access_log off;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  keepalive_timeout 300s;
  keepalive_requests 10000000;
"#,
        d = dir.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shared preamble, closed, is a configuration nginx accepts.
    #[test]
    fn nginx_accepts_the_prelude() -> Result<()> {
        if Command::new("nginx").arg("-v").output().is_err() {
            eprintln!("SKIPPED: no nginx (cargo xtask setup installs it)");
            return Ok(());
        }
        let dir = std::env::temp_dir().join(format!("xtask-nginx-prelude-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("logs"))?;
        let conf = dir.join("nginx.conf");
        std::fs::write(&conf, format!("{}}}\n", nginx_prelude(&dir)))?;
        let out = Command::new("nginx")
            .arg("-t")
            .arg("-c")
            .arg(&conf)
            .output()?;
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }
}
