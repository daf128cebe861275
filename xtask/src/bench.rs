//! `cargo xtask bench [NAME...]`: benchmarks side by side with real peers (nginx,
//! HAProxy) on this machine, reported as ratios and CPU per unit of work, never asserted.
//! Each benchmark lives in its own module under `bench/` and writes a Markdown table to
//! `target/bench/NAME.md`; `docs/benchmarks.md` collects the figures with the commands.

use std::path::PathBuf;

use anyhow::{Result, bail};

use crate::Workspace;

mod authz;
mod chart;
mod common;
mod config;
mod endpoints;
mod http;
mod ip_deny;
mod kubernetes;
mod latency;
mod manifests;
mod node_ports;
mod peers;
pub(crate) mod pgo;
mod reload;
mod sni;
mod tls;
mod upstream_tls;

/// A benchmark: its name on the command line, what it measures, and how to run it.
pub(crate) struct Bench {
    pub name: &'static str,
    pub about: &'static str,
    pub run: fn(&Workspace) -> Result<String>,
}

/// Every benchmark, in the order `cargo xtask bench` runs them.
const BENCHES: &[Bench] = &[
    Bench {
        name: "tls",
        about: "full TLS 1.3 handshakes and keep-alive HTTPS per CPU-second, idle TLS memory: gatewayd vs bare rustls, nginx, HAProxy, and for keep-alive nginx adding Istio's request headers",
        run: tls::run,
    },
    Bench {
        name: "http",
        about: "HTTP/1.1 keep-alive and h2c proxying with 100 hosts × 10 prefixes: req/s, CPU and instructions per request, p50/p99, idle memory: gatewayd vs nginx, HAProxy, nginx adding Istio's request headers",
        run: http::run,
    },
    Bench {
        name: "latency",
        about: "latency added against offered load (open loop, 10–60 % of the lower of gatewayd's and nginx's saturated rates), in rounds: gatewayd vs nginx, HAProxy, nginx adding Istio's request headers, the upstream alone; curves drawn to latency.svg",
        run: latency::run,
    },
    Bench {
        name: "workers",
        about: "gatewayd HTTP/1.1 and h2c CPU per request with 1 and with 2 workers on one core at a fixed rate: what state shared between workers costs per request",
        run: http::run_workers,
    },
    Bench {
        name: "reload",
        about: "config write to new route served at 10 000 routes, p99 under load while reloading: gatewayd vs nginx -s reload, HAProxy master-worker reload",
        run: reload::run,
    },
    Bench {
        name: "endpoints",
        about: "EndpointSlice updates at 1 000 Services: update to first request on the new endpoint (kept and new connections), gatewayd CPU per update, p99 while endpoints change 25/s",
        run: endpoints::run,
    },
    Bench {
        name: "kubernetes",
        about: "gatewayd following the fake Kubernetes API: start to ready/served and memory at 1 000 / 10 000 EndpointSlices, object change → served p50/p99, CPU per 1 000 endpoint updates",
        run: kubernetes::run,
    },
    Bench {
        name: "config",
        about: "compile 10 000 VirtualServices with 100 000 routes; host + path lookup at 10 / 1 000 / 10 000 / 100 000 routes (criterion)",
        run: config::run,
    },
    Bench {
        name: "authz",
        about: "AuthorizationPolicy evaluation per request at 1 000 rules (ipBlocks, path prefixes, from+to+when), worst case: every rule evaluated (criterion)",
        run: authz::run,
    },
    Bench {
        name: "sni",
        about: "unknown-SNI flood: CPU per rejected connection (kernel reset vs userspace vs full handshake vs nginx ssl_reject_handshake vs HAProxy strict-sni), legitimate HTTPS kept",
        run: sni::run,
    },
    Bench {
        name: "ip-deny",
        about: "connections from a source an AuthorizationPolicy denies: refused in the kernel (XDP drops the SYN) vs in userspace (--ebpf off): gatewayd CPU, XDP run time and softirq per refused connection",
        run: ip_deny::run,
    },
    Bench {
        name: "node-ports",
        about: "a node-port request: translated at TC (--node-ports) vs kube-proxy's path (iptables DNAT to the local listener) vs direct to the listener; keep-alive and a new connection per request: latency, gatewayd CPU and the programs' run time per request",
        run: node_ports::run,
    },
    Bench {
        name: "upstream-tls",
        about: "TLS origination on kept-alive connections: CPU per request, gatewayd (DestinationRule SIMPLE) vs nginx proxy_ssl (also adding Istio's request headers) vs HAProxy ssl, plaintext upstream as the floor",
        run: upstream_tls::run,
    },
];

pub(crate) fn run(ws: &Workspace, names: &[String], list: bool) -> Result<()> {
    if list || BENCHES.is_empty() {
        for b in BENCHES {
            println!("{:20} {}", b.name, b.about);
        }
        if BENCHES.is_empty() {
            println!("no benchmarks yet");
        }
        return Ok(());
    }
    let selected: Vec<&Bench> = if names.is_empty() {
        BENCHES.iter().collect()
    } else {
        let mut selected = Vec::new();
        for name in names {
            match BENCHES.iter().find(|b| b.name == name) {
                Some(b) => selected.push(b),
                None => bail!("no benchmark {name:?}; `cargo xtask bench --list` lists them"),
            }
        }
        selected
    };
    let out_dir = results_dir(ws);
    std::fs::create_dir_all(&out_dir)?;
    for bench in selected {
        println!("\n==== bench {}: {}", bench.name, bench.about);
        let table = (bench.run)(ws)?;
        let path = out_dir.join(format!("{}.md", bench.name));
        std::fs::write(&path, &table)?;
        println!("{table}\n(written to {})", path.display());
    }
    Ok(())
}

pub(crate) fn results_dir(ws: &Workspace) -> PathBuf {
    ws.target_dir().join("bench")
}
