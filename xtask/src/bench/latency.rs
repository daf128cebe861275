//! `cargo xtask bench latency`: the latency each proxy adds, against the load offered to
//! it. The peers of `bench http` (gatewayd, nginx, HAProxy, one worker each, identical
//! routing) and the upstream alone get the same open-loop load (paced-load: requests sent
//! on a schedule over `PACED_CONNECTIONS` keep-alive connections, each request's latency
//! counted from when it was due) at fractions of the saturated rate of gatewayd or nginx,
//! whichever is lower. A server is not run above `OWN_LIMIT` of its own saturated rate
//! (HAProxy, with its rules in a list, saturates far below the other two).
//!
//! One run of one server says little about a p99 on a VM: the neighbours' noise moves it
//! by hundreds of µs between runs of the same server. So every load level is run in
//! `ROUNDS` rounds, the targets' order rotating, each server's latency is taken less the
//! upstream's own in the same round, and gatewayd's is compared with nginx's within each
//! round, with nginx as usually set up and with nginx adding the request headers gatewayd
//! adds as Istio's gateway does. The table gives medians and spreads; `latency.svg`
//! beside it draws the curves.

use std::{fmt::Write as _, fs, path::Path};

use anyhow::{Context as _, Result, bail};

use super::{
    chart::{self, Panel, SeriesLabelPosition},
    common::{median, pinned, release_binaries},
    peers::{
        CLIENT_CPU, PACED_CONNECTIONS, Server, TARGET_HOST, TARGET_PATH, paced_run, start_all,
        wrk_requests_per_second,
    },
    results_dir,
};
use crate::Workspace;

/// Shares of the lower of gatewayd's and nginx's saturated rates offered to every target.
/// Not above 60 %: paced-load and the upstream share one core, which they fill at about
/// 40 000 requests/s, so higher shares would measure the load generator. The table flags
/// a level where the upstream alone's p50 has grown by half.
const LOAD_SHARES: [f64; 6] = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6];
/// No server is offered more than this share of its own saturated rate: beyond it the
/// queue grows for as long as the run lasts, and the figure is the run's length.
const OWN_LIMIT: f64 = 0.95;
const ROUNDS: usize = 5;
const RUN_SECONDS: u32 = 3;
/// The saturated rate: wrk as `bench http` runs it, `SATURATION_ROUNDS` times each.
const SATURATION_CONNECTIONS: u32 = 50;
const SATURATION_SECONDS: u32 = 3;
const SATURATION_ROUNDS: usize = 2;

/// What is measured at each load level: the upstream alone first, then each server.
struct Target<'a> {
    name: &'a str,
    port: u16,
    /// The highest rate it is offered.
    limit: f64,
}

/// The servers (`start_all`'s order) whose latency gatewayd's is compared with round by
/// round: nginx, and nginx adding Istio's headers.
const COMPARED: &[usize] = &[1, 3];

/// One target at one load level: (p50, p99) in µs, round by round.
type Runs = Vec<(f64, f64)>;

pub(crate) fn run(ws: &Workspace) -> Result<String> {
    let (gatewayd, [paced_load]) = release_binaries(ws, ["paced-load"])?;
    let out = results_dir(ws);
    let work = out.join("latency-work");
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work)?;
    let (upstream, servers) = start_all(&gatewayd, &work)?;

    let saturated = saturated_rates(&servers)?;
    // servers[0] is gatewayd, servers[1] nginx.
    let base = saturated[0].min(saturated[1]);
    let rates: Vec<f64> = LOAD_SHARES.iter().map(|share| share * base).collect();

    let mut targets = vec![Target {
        name: "upstream alone",
        port: upstream.ports[0],
        limit: f64::INFINITY,
    }];
    targets.extend(servers.iter().zip(&saturated).map(|(s, rate)| Target {
        name: s.name,
        port: s.h1_port,
        limit: OWN_LIMIT * rate,
    }));
    // runs[target][level]
    let mut runs = vec![vec![Runs::new(); rates.len()]; targets.len()];
    for round in 0..ROUNDS {
        for (level, &rate) in rates.iter().enumerate() {
            for t in (0..targets.len()).map(|t| (t + round + level) % targets.len()) {
                if rate > targets[t].limit {
                    continue;
                }
                println!(
                    "round {round}: {} at {rate:.0} req/s open loop",
                    targets[t].name
                );
                runs[t][level].push(paced_run(&paced_load, targets[t].port, rate, RUN_SECONDS)?);
            }
        }
    }

    let svg = out.join("latency.svg");
    draw(&svg, &targets, &rates, &runs)?;
    Ok(table(&servers, &saturated, &rates, &runs, &svg))
}

/// Each server's requests/s at saturation (wrk, median of its rounds).
fn saturated_rates(servers: &[Server]) -> Result<Vec<f64>> {
    let mut rates = vec![Vec::new(); servers.len()];
    for round in 0..SATURATION_ROUNDS {
        for i in (0..servers.len()).map(|i| (i + round) % servers.len()) {
            println!("round {round}: {} at saturation (wrk)", servers[i].name);
            let output = pinned(CLIENT_CPU, Path::new("wrk"))
                .args([
                    "-t1",
                    &format!("-c{SATURATION_CONNECTIONS}"),
                    &format!("-d{SATURATION_SECONDS}s"),
                ])
                .args(["-H", &format!("Host: {TARGET_HOST}")])
                .arg(format!(
                    "http://127.0.0.1:{}{TARGET_PATH}",
                    servers[i].h1_port
                ))
                .output()
                .context("running wrk")?;
            let text = String::from_utf8_lossy(&output.stdout);
            if text.contains("Non-2xx") || text.contains("Socket errors") {
                bail!("{}: wrk saw errors:\n{text}", servers[i].name);
            }
            rates[i].push(wrk_requests_per_second(&text)?);
        }
    }
    Ok(rates.iter().map(|r| median(r)).collect())
}

/// `median (min–max)` of per-round values, in µs; `–` where the target was not run.
fn spread_us(values: &[f64]) -> String {
    if values.is_empty() {
        return "–".into();
    }
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{:.0} ({min:.0}–{max:.0})", median(values))
}

/// `a`'s latency less `b`'s in the same round, round by round: (p50s, p99s). A server
/// less the upstream alone is the latency it adds.
fn differences(a: &Runs, b: &Runs) -> (Vec<f64>, Vec<f64>) {
    a.iter().zip(b).map(|(a, b)| (a.0 - b.0, a.1 - b.1)).unzip()
}

fn table(
    servers: &[Server],
    saturated: &[f64],
    rates: &[f64],
    runs: &[Vec<Runs>],
    svg: &Path,
) -> String {
    let mut out = String::from("Saturated rate (wrk):");
    for (server, rate) in servers.iter().zip(saturated) {
        let _ = write!(out, " {} {rate:.0} req/s;", server.name);
    }
    out.push_str(
        "\n\nLatency added to the upstream's own, µs, median of the rounds (min–max):\n\n| offered req/s (share) | upstream alone p50 / p99 |",
    );
    for server in servers {
        let _ = write!(out, " {} added p50 | added p99 |", server.name);
    }
    for &peer in COMPARED {
        let _ = write!(out, " gatewayd − {}, p50 | p99 |", servers[peer].name);
    }
    out.push_str("\n|---|---|");
    out.push_str(&"---|---|".repeat(servers.len() + COMPARED.len()));
    out.push('\n');
    let upstream_p50 = |level: usize| {
        let p50s: Vec<f64> = runs[0][level].iter().map(|r| r.0).collect();
        median(&p50s)
    };
    for (level, rate) in rates.iter().enumerate() {
        let upstream = &runs[0][level];
        let p99s: Vec<f64> = upstream.iter().map(|r| r.1).collect();
        // The load generator's core, which the upstream shares, is filling up.
        let saturating = if upstream_p50(level) > 1.5 * upstream_p50(0) {
            " (client core saturating)"
        } else {
            ""
        };
        let _ = write!(
            out,
            "| {rate:.0} ({:.0} %) | {:.0} / {:.0}{saturating} |",
            LOAD_SHARES[level] * 100.0,
            upstream_p50(level),
            median(&p99s)
        );
        for runs in &runs[1..] {
            let (p50, p99) = differences(&runs[level], upstream);
            let _ = write!(out, " {} | {} |", spread_us(&p50), spread_us(&p99));
        }
        // gatewayd against each nginx, round by round (runs[0] is the upstream alone).
        for &peer in COMPARED {
            let (p50, p99) = differences(&runs[1][level], &runs[1 + peer][level]);
            let _ = write!(out, " {} | {} |", spread_us(&p50), spread_us(&p99));
        }
        out.push('\n');
    }
    let _ = writeln!(
        out,
        "\n– : above {:.0} % of that server's own saturated rate, not run. paced-load over {PACED_CONNECTIONS} keep-alive connections, {RUN_SECONDS} s per run, {ROUNDS} rounds (the targets' order rotating), offered rates the shares of the lower of gatewayd's and nginx's saturated rates (wrk -t1 -c{SATURATION_CONNECTIONS}, {SATURATION_ROUNDS} rounds of {SATURATION_SECONDS} s). Curves: {}.",
        OWN_LIMIT * 100.0,
        svg.display()
    );
    out
}

/// Two panels, p50 and p99 against the offered rate, one line per target (medians).
fn draw(path: &Path, targets: &[Target], rates: &[f64], runs: &[Vec<Runs>]) -> Result<()> {
    let panel = |title: &str, pick: fn(&(f64, f64)) -> f64| Panel {
        title: format!("{title} latency, open loop, one worker"),
        x_label: "offered requests/s",
        y_label: "ms (log scale)",
        // The proxies' tens of µs apart and HAProxy's milliseconds in one view.
        log_y: true,
        series: targets
            .iter()
            .zip(runs)
            .map(|(target, levels)| {
                let line = rates
                    .iter()
                    .zip(levels)
                    .filter(|(_, runs)| !runs.is_empty())
                    .map(|(rate, runs)| {
                        let values: Vec<f64> = runs.iter().map(pick).collect();
                        (*rate, median(&values) / 1000.0)
                    })
                    .collect();
                (target.name, line)
            })
            .collect(),
        legend: SeriesLabelPosition::UpperMiddle,
    };
    chart::draw(path, &[panel("p50", |r| r.0), panel("p99", |r| r.1)])
}
