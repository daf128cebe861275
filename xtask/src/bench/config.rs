//! `cargo xtask bench config`: the criterion benchmarks of the configuration pipeline
//! (`gateway-userspace/benches/config.rs`): compiling 10 000 VirtualServices with 100 000
//! routes, and host + path lookup at 10, 1 000, 10 000 and 100 000 routes. Criterion runs
//! them; this reads its estimates back into one table.

use std::{fmt::Write as _, fs, path::Path};

use anyhow::{Context as _, Result};

use crate::{Workspace, cmd};

/// (criterion group/bench directory, row label).
const ROWS: [(&str, &str); 5] = [
    (
        "compile/10000 VirtualServices, 100000 routes",
        "compile 10 000 VirtualServices, 100 000 routes",
    ),
    ("lookup/host+path/10", "lookup, 10 routes"),
    ("lookup/host+path/1000", "lookup, 1 000 routes"),
    ("lookup/host+path/10000", "lookup, 10 000 routes"),
    ("lookup/host+path/100000", "lookup, 100 000 routes"),
];

pub(crate) fn run(ws: &Workspace) -> Result<String> {
    cmd(ws
        .cargo()
        .args(["bench", "-p", "gateway-userspace", "--bench", "config"]))?;
    let criterion = ws.target_dir().join("criterion");
    let mut table = String::from("| benchmark | mean | 95% interval |\n|---|---|---|\n");
    for (dir, label) in ROWS {
        // Criterion keeps the directory names it was given, with `/` and spaces as-is
        // except for characters it sanitizes; look the estimate up leniently.
        let estimates = find_estimates(&criterion, dir).with_context(|| {
            format!(
                "no criterion estimates for {dir} under {}",
                criterion.display()
            )
        })?;
        let (mean, low, high) = mean_estimate(&estimates)?;
        writeln!(
            table,
            "| {label} | {} | {} – {} |",
            human(mean),
            human(low),
            human(high)
        )?;
    }
    writeln!(
        table,
        "\nCommand: `cargo xtask bench config` (runs `cargo bench -p gateway-userspace --bench config`)."
    )?;
    Ok(table)
}

pub(super) fn find_estimates(criterion: &Path, bench: &str) -> Option<String> {
    let path = criterion.join(bench).join("new/estimates.json");
    fs::read_to_string(&path).ok().or_else(|| {
        let sanitized: String = bench
            .chars()
            .map(|c| if c == ',' || c == ' ' { '_' } else { c })
            .collect();
        fs::read_to_string(criterion.join(sanitized).join("new/estimates.json")).ok()
    })
}

/// (point estimate, lower bound, upper bound) of the mean, in nanoseconds.
pub(super) fn mean_estimate(json: &str) -> Result<(f64, f64, f64)> {
    let mean = json
        .find("\"mean\"")
        .map(|at| &json[at..])
        .context("estimates.json has no mean")?;
    let number = |key: &str| -> Result<f64> {
        let at = mean
            .find(key)
            .with_context(|| format!("estimates.json mean has no {key}"))?;
        let rest = &mean[at + key.len()..];
        let end = rest
            .find([',', '}'])
            .context("estimates.json: unterminated number")?;
        rest[..end]
            .trim()
            .parse::<f64>()
            .with_context(|| format!("estimates.json: {key} is not a number"))
    };
    Ok((
        number("\"point_estimate\":")?,
        number("\"lower_bound\":")?,
        number("\"upper_bound\":")?,
    ))
}

pub(super) fn human(nanoseconds: f64) -> String {
    if nanoseconds >= 1e9 {
        format!("{:.2} s", nanoseconds / 1e9)
    } else if nanoseconds >= 1e6 {
        format!("{:.1} ms", nanoseconds / 1e6)
    } else if nanoseconds >= 1e3 {
        format!("{:.2} µs", nanoseconds / 1e3)
    } else {
        format!("{nanoseconds:.0} ns")
    }
}
