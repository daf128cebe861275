//! `cargo xtask bench authz`: the criterion benchmark of AuthorizationPolicy evaluation
//! (`gateway-userspace/benches/authz.rs`) at 1 000 rules, read back into one table.

use std::fmt::Write as _;

use anyhow::{Context as _, Result};

use super::config::{find_estimates, human, mean_estimate};
use crate::{Workspace, cmd};

const ROWS: [&str; 3] = [
    "1000 ALLOW ipBlocks rules, the last matches",
    "1000 DENY path prefix rules, none matches",
    "1000 ALLOW from+to+when rules, none matches (default deny)",
];

pub(crate) fn run(ws: &Workspace) -> Result<String> {
    cmd(ws
        .cargo()
        .args(["bench", "-p", "gateway-userspace", "--bench", "authz"]))?;
    let criterion = ws.target_dir().join("criterion").join("authz");
    let mut table = String::from("| policy, per request | mean | 95% interval |\n|---|---|---|\n");
    for row in ROWS {
        let estimates = find_estimates(&criterion, row).with_context(|| {
            format!(
                "no criterion estimates for {row} under {}",
                criterion.display()
            )
        })?;
        let (mean, low, high) = mean_estimate(&estimates)?;
        writeln!(
            table,
            "| {row} | {} | {} – {} |",
            human(mean),
            human(low),
            human(high)
        )?;
    }
    writeln!(
        table,
        "\nCommand: `cargo xtask bench authz` (runs `cargo bench -p gateway-userspace --bench authz`)."
    )?;
    Ok(table)
}
