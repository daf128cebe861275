//! What every benchmark needs: pinned children that die with the run, free ports.

use std::{
    net::TcpListener,
    path::Path,
    process::{Child, Command},
};

use anyhow::Result;

/// A child process killed and reaped when the benchmark is done with it (or fails).
pub(super) struct KilledOnDrop(pub(super) Child);

impl Drop for KilledOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
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
