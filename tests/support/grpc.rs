//! The gRPC peers of tests/grpc/peer.py (Google's gRPC through Debian's python3-grpcio):
//! a server on an ephemeral port, and a long-lived client session on one channel.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::SocketAddr,
    path::PathBuf,
    process::{ChildStdin, ChildStdout, Command, Stdio},
};

use anyhow::{Context as _, ensure};
use serde_json::Value;

use crate::Process;

/// Debian's interpreter: python3-grpcio installs into its dist-packages, which another
/// python3 on PATH (pyenv, a venv) does not see.
pub const PYTHON: &str = "/usr/bin/python3";

pub fn peer_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("grpc/peer.py")
}

/// The peers need python3-grpcio; without it the gRPC tests fail (never skip) and say
/// how to get it.
pub fn require_grpcio() -> anyhow::Result<()> {
    let probe = Command::new(PYTHON)
        .args(["-c", "import grpc"])
        .output()
        .with_context(|| format!("running {PYTHON}: install python3 (`cargo xtask setup`)"))?;
    ensure!(
        probe.status.success(),
        "{PYTHON} cannot import grpc: install python3-grpcio with `cargo xtask setup` \
         (CI does)\n{}",
        String::from_utf8_lossy(&probe.stderr)
    );
    Ok(())
}

/// The gRPC server peer on an ephemeral port; `gatewayd.test.Echo/Name` answers its name.
pub struct GrpcServer {
    pub addr: SocketAddr,
    _process: Process,
}

impl GrpcServer {
    pub fn start(name: &str) -> anyhow::Result<Self> {
        require_grpcio()?;
        let mut child = Command::new(PYTHON)
            .arg(peer_script())
            .args(["server", name])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting the gRPC server peer")?;
        let stdout = child.stdout.take().context("server stdout")?;
        let process = Process { child };
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .with_context(|| format!("unexpected gRPC server output {line:?}"))?
            .parse()?;
        Ok(GrpcServer {
            addr,
            _process: process,
        })
    }
}

/// A gRPC client that keeps one channel open across calls, as long-lived clients do.
pub struct GrpcSession {
    calls: ChildStdin,
    outcomes: BufReader<ChildStdout>,
    _process: Process,
}

impl GrpcSession {
    pub fn open(target: &str, authority: &str) -> anyhow::Result<Self> {
        require_grpcio()?;
        let mut child = Command::new(PYTHON)
            .arg(peer_script())
            .args(["session", target, authority])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting the gRPC client session")?;
        let calls = child.stdin.take().context("session stdin")?;
        let outcomes = BufReader::new(child.stdout.take().context("session stdout")?);
        Ok(GrpcSession {
            calls,
            outcomes,
            _process: Process { child },
        })
    }

    /// One call on the session's channel (JSON as peer.py's `run_call` takes it); its
    /// outcome as peer.py prints it.
    pub fn call(&mut self, call: &Value) -> anyhow::Result<Value> {
        writeln!(self.calls, "{call}").context("sending a call to the session")?;
        self.calls.flush()?;
        let mut line = String::new();
        let read = self.outcomes.read_line(&mut line)?;
        ensure!(read > 0, "the gRPC client session exited during {call}");
        serde_json::from_str(&line).with_context(|| format!("session output is not JSON: {line}"))
    }
}
