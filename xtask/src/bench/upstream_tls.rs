//! `cargo xtask bench upstream-tls`: TLS origination on kept-alive connections. Each proxy
//! takes plaintext HTTP/1.1 keep-alive requests and sends them over TLS (certificate
//! verified against a CA, SNI set, sessions reused, upstream connections kept alive) to
//! one TLS upstream, an nginx answering a fixed 200:
//!
//! - gatewayd: a DestinationRule `tls: {mode: SIMPLE, caCertificates, sni}`;
//! - nginx: `proxy_pass https://` with `proxy_ssl_verify on`, `proxy_ssl_session_reuse`
//!   and an upstream `keepalive` pool;
//! - HAProxy: `server … ssl verify required ca-file … sni …` with `http-reuse always`;
//! - and, as the floor, gatewayd to the same nginx over plaintext.
//!
//! One worker per proxy pinned to CPU 1; h2load and the upstream on CPU 0. CPU is
//! utime+stime of the proxy's processes over each run, per request, also shown apart:
//! on loopback most of it is the kernel's (system calls, and the receiving side's TCP
//! work, which runs in the sender's context), a share no proxy's code changes much. Rounds interleave the
//! proxies; medians are reported with the min–max spread.

use std::{
    fmt::Write as _,
    fs,
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

use super::{
    common::{
        AdminAddrs, free_port, gatewayd_run, kernel_floor, median, nginx_prelude, pinned,
        release_binaries, spread, tree_user_system_seconds,
    },
    manifests::{gateway_yaml, ingress_service_yaml, one_route_yaml, upstream_service_yaml},
    peers::{
        NGINX_ISTIO_HEADERS, NginxHeaders, Process, nginx_dir, start_haproxy_process,
        start_nginx_process, wait_listening,
    },
    results_dir,
};
use crate::{Workspace, cmd};

const SERVER_CPU: &str = "1";
const CLIENT_CPU: &str = "0";
const ROUNDS: usize = 3;
const CONNECTIONS: u32 = 16;
const REQUESTS: u32 = 40_000;
/// The upstream's certificate name: what every proxy sends as SNI and verifies.
const UPSTREAM_NAME: &str = "upstream.bench.internal";

struct Proxy {
    name: &'static str,
    port: u16,
    process: Process,
}

#[derive(Default)]
struct Figures {
    rps: Vec<f64>,
    cpu_us: Vec<f64>,
    user_us: Vec<f64>,
    system_us: Vec<f64>,
}

pub(crate) fn run(ws: &Workspace) -> Result<String> {
    let (gatewayd, []) = release_binaries(ws, [])?;
    let work = results_dir(ws).join("upstream-tls-work");
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work)?;
    certificates(&work)?;
    let (tls_port, plain_port) = (free_port()?, free_port()?);
    let _upstream = start_upstream(&work, tls_port, plain_port)?;

    let proxies = [
        start_gatewayd(&gatewayd, &work, tls_port, true)?,
        start_nginx(&work, tls_port, NginxHeaders::Plain)?,
        start_haproxy(&work, tls_port)?,
        start_gatewayd(&gatewayd, &work, plain_port, false)?,
        start_nginx(&work, tls_port, NginxHeaders::Istio)?,
    ];
    for proxy in &proxies {
        // Warm-up, and proof that the proxy reaches the upstream over TLS.
        load(proxy, 2_000)?;
    }
    let mut figures: Vec<Figures> = proxies.iter().map(|_| Figures::default()).collect();
    for round in 0..ROUNDS {
        for i in 0..proxies.len() {
            // Each round starts with another proxy.
            let i = (i + round) % proxies.len();
            let proxy = &proxies[i];
            let (user0, system0) = tree_user_system_seconds(proxy.process.0.id());
            let (requests, rps) = load(proxy, REQUESTS)?;
            let (user1, system1) = tree_user_system_seconds(proxy.process.0.id());
            let per_request = |seconds: f64| seconds / requests * 1e6;
            figures[i].rps.push(rps);
            figures[i]
                .cpu_us
                .push(per_request(user1 - user0 + system1 - system0));
            figures[i].user_us.push(per_request(user1 - user0));
            figures[i].system_us.push(per_request(system1 - system0));
        }
    }
    Ok(table(&proxies, &figures))
}

/// A CA and the upstream's certificate signed by it (a self-signed leaf is refused by
/// verifiers that will not take a CA certificate as an end entity).
pub(super) fn certificates(work: &Path) -> Result<()> {
    let openssl = |args: &[&str]| cmd(Command::new("openssl").current_dir(work).args(args));
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    openssl(
        &[
            &["req", "-x509"][..],
            &ec,
            &["-days", "3", "-keyout", "ca.key", "-out", "ca.pem"],
            &["-subj", "/CN=bench upstream CA"],
        ]
        .concat(),
    )?;
    openssl(
        &[
            &["req"][..],
            &ec,
            &["-keyout", "upstream.key", "-out", "upstream.csr"],
            &["-subj", &format!("/CN={UPSTREAM_NAME}")],
        ]
        .concat(),
    )?;
    fs::write(
        work.join("upstream.ext"),
        format!("subjectAltName=DNS:{UPSTREAM_NAME}\nbasicConstraints=CA:FALSE\n"),
    )?;
    openssl(&[
        "x509",
        "-req",
        "-in",
        "upstream.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "3",
        "-extfile",
        "upstream.ext",
        "-out",
        "upstream.pem",
    ])
}

/// nginx answering `200 ok` over TLS on `tls_port` and in plaintext on `plain_port`.
pub(super) fn start_upstream(work: &Path, tls_port: u16, plain_port: u16) -> Result<Process> {
    let dir = nginx_dir(work, "upstream")?;
    let mut conf = nginx_prelude(&dir);
    let _ = writeln!(
        conf,
        "  server {{\n    listen 127.0.0.1:{tls_port} ssl;\n    ssl_certificate {w}/upstream.pem;\n    ssl_certificate_key {w}/upstream.key;\n    ssl_session_cache shared:up:1m;\n    ssl_protocols TLSv1.2 TLSv1.3;\n    location / {{ return 200 \"ok\\n\"; }}\n  }}\n  server {{ listen 127.0.0.1:{plain_port}; location / {{ return 200 \"ok\\n\"; }} }}\n}}",
        w = work.display()
    );
    fs::write(dir.join("nginx.conf"), conf)?;
    start_nginx_process(&dir, CLIENT_CPU, plain_port, "upstream nginx")
}

/// gatewayd's configuration: HTTP on `port`, every request to the upstream at
/// `upstream_port`, over TLS verified against `ca` when given, else in plaintext.
pub(super) fn gatewayd_config(port: u16, upstream_port: u16, ca: Option<&Path>) -> String {
    let mut documents = vec![
        ingress_service_yaml("http", 80, port, None),
        gateway_yaml("bench", "default", 80, "HTTP", &["*"], None),
        one_route_yaml("bench", "bench", &["*"], "up", 443),
        upstream_service_yaml("up", "http", 443, ([127, 0, 0, 1], upstream_port).into()),
    ];
    if let Some(ca) = ca {
        documents.push(format!(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: up, namespace: default}}\nspec:\n  host: up\n  trafficPolicy:\n    tls: {{mode: SIMPLE, caCertificates: {}, sni: {UPSTREAM_NAME}}}\n",
            ca.display()
        ));
    }
    documents.join("---\n")
}

fn start_gatewayd(bin: &Path, work: &Path, upstream_port: u16, tls: bool) -> Result<Proxy> {
    let name = if tls {
        "gatewayd"
    } else {
        "gatewayd, plaintext upstream (floor)"
    };
    let port = free_port()?;
    let dir = work.join(if tls {
        "gatewayd-tls"
    } else {
        "gatewayd-plain"
    });
    fs::create_dir_all(&dir)?;
    let ca = work.join("ca.pem");
    fs::write(
        dir.join("config.yaml"),
        gatewayd_config(port, upstream_port, tls.then_some(ca.as_path())),
    )?;
    let mut child = gatewayd_run(pinned(SERVER_CPU, bin), &dir, &AdminAddrs::free()?)?
        .args(["--worker-threads", "1"])
        .stdout(Stdio::null())
        .stderr(fs::File::create(dir.join("gatewayd.stderr"))?)
        .spawn()
        .context("starting gatewayd")?;
    wait_listening(port, &mut child, name)?;
    Ok(Proxy {
        name,
        port,
        process: Process(child),
    })
}

/// nginx `proxy_ssl` to the upstream; with `NginxHeaders::Istio` it also adds the request
/// headers gatewayd adds, so that the two do the same work.
fn start_nginx(work: &Path, upstream_port: u16, headers: NginxHeaders) -> Result<Proxy> {
    let port = free_port()?;
    let (name, dir_name, extra) = match headers {
        NginxHeaders::Plain => ("nginx proxy_ssl", "nginx", String::new()),
        NginxHeaders::Istio => (
            "nginx proxy_ssl + Istio headers",
            "nginx-istio",
            format!(
                "\n      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for; {NGINX_ISTIO_HEADERS}"
            ),
        ),
    };
    let dir = nginx_dir(work, dir_name)?;
    let mut conf = nginx_prelude(&dir);
    let _ = writeln!(
        conf,
        "  upstream up {{ server 127.0.0.1:{upstream_port}; keepalive 64; }}\n  server {{\n    listen 127.0.0.1:{port};\n    location / {{\n      proxy_pass https://up;\n      proxy_http_version 1.1;\n      proxy_set_header Connection \"\";{extra}\n      proxy_ssl_verify on;\n      proxy_ssl_trusted_certificate {w}/ca.pem;\n      proxy_ssl_name {UPSTREAM_NAME};\n      proxy_ssl_server_name on;\n      proxy_ssl_session_reuse on;\n    }}\n  }}\n}}",
        w = work.display()
    );
    fs::write(dir.join("nginx.conf"), conf)?;
    let process = start_nginx_process(&dir, SERVER_CPU, port, name)?;
    Ok(Proxy {
        name,
        port,
        process,
    })
}

fn start_haproxy(work: &Path, upstream_port: u16) -> Result<Proxy> {
    let port = free_port()?;
    let conf = format!(
        "global\n  nbthread 1\n  maxconn 9500\ndefaults\n  mode http\n  timeout connect 5s\n  timeout client 300s\n  timeout server 300s\n  timeout http-keep-alive 300s\nfrontend web\n  bind 127.0.0.1:{port}\n  default_backend up\nbackend up\n  http-reuse always\n  server s1 127.0.0.1:{upstream_port} ssl verify required ca-file {w}/ca.pem sni str({UPSTREAM_NAME}) verifyhost {UPSTREAM_NAME} alpn http/1.1\n",
        w = work.display()
    );
    let path = work.join("haproxy.cfg");
    fs::write(&path, conf)?;
    let stderr = fs::File::create(work.join("haproxy.stderr"))?;
    Ok(Proxy {
        name: "HAProxy ssl",
        port,
        process: start_haproxy_process(&path, port, stderr.into())?,
    })
}

/// `requests` keep-alive HTTP/1.1 requests over `CONNECTIONS` connections: (requests
/// done, requests/s). Every one must succeed with a 2xx.
fn load(proxy: &Proxy, requests: u32) -> Result<(f64, f64)> {
    let output = pinned(CLIENT_CPU, Path::new("h2load"))
        .args(["--h1", "-t1"])
        .args(["-c", &CONNECTIONS.to_string(), "-n", &requests.to_string()])
        .arg(format!("http://127.0.0.1:{}/", proxy.port))
        .output()
        .context("running h2load")?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let count = |line: &str, what: &str| -> Option<f64> {
        let words: Vec<&str> = line.split([' ', ',']).filter(|w| !w.is_empty()).collect();
        let at = words.iter().position(|w| *w == what)?;
        words.get(at.checked_sub(1)?)?.parse().ok()
    };
    let requests_line = text.lines().find(|l| l.starts_with("requests:"));
    let succeeded = requests_line.and_then(|l| count(l, "succeeded"));
    let ok = text
        .lines()
        .find(|l| l.starts_with("status codes:"))
        .and_then(|l| count(l, "2xx"));
    if succeeded != Some(f64::from(requests)) || ok != Some(f64::from(requests)) {
        bail!(
            "{}: not every request succeeded with a 2xx:\n{text}",
            proxy.name
        );
    }
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("finished in "))
        .and_then(|l| count(l, "req/s"))
        .with_context(|| format!("h2load output:\n{text}"))?;
    Ok((f64::from(requests), rps))
}

fn table(proxies: &[Proxy], figures: &[Figures]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| proxy | requests/s | CPU µs / request | vs nginx | of which user | of which kernel |\n|---|---|---|---|---|---|"
    );
    let nginx_at = proxies.iter().position(|p| p.name.starts_with("nginx"));
    let nginx = nginx_at.map_or(f64::NAN, |i| median(&figures[i].cpu_us));
    for (proxy, f) in proxies.iter().zip(figures) {
        let _ = writeln!(
            out,
            "| {} | {:.0} ({}) | {:.1} ({}) | {:.2}× | {:.1} | {:.1} |",
            proxy.name,
            median(&f.rps),
            spread(&f.rps),
            median(&f.cpu_us),
            spread(&f.cpu_us),
            median(&f.cpu_us) / nginx,
            median(&f.user_us),
            median(&f.system_us),
        );
    }
    if let Some(i) = nginx_at {
        let _ = writeln!(
            out,
            "{}",
            kernel_floor(
                "request",
                median(&figures[0].system_us),
                median(&figures[i].system_us),
                nginx,
            )
        );
    }
    if let Some(same_work) = proxies.iter().position(|p| p.name.contains("Istio")) {
        let _ = writeln!(
            out,
            "\ngatewayd ÷ {}, CPU per request: {:.2}× (the same request headers added by both).",
            proxies[same_work].name,
            median(&figures[0].cpu_us) / median(&figures[same_work].cpu_us),
        );
    }
    let _ = writeln!(
        out,
        "\nMedians of {ROUNDS} interleaved rounds (min–max in parentheses). h2load --h1 -c{CONNECTIONS} -n{REQUESTS}, plaintext to the proxy; the proxy to one nginx upstream over TLS 1.3 (P-256 certificate signed by a CA the proxy verifies, SNI {UPSTREAM_NAME}), upstream connections kept alive. One worker per proxy on CPU {SERVER_CPU}; h2load and the upstream on CPU {CLIENT_CPU}."
    );
    out
}
