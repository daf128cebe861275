//! `cargo xtask bench tls`: TLS termination side by side, same certificate (ECDSA P-256),
//! same key exchange (X25519, forced on the client), TLS 1.3:
//!
//! - full handshakes per server CPU-second: h2load opens connections at a fixed rate, one
//!   request each (HTTP/1.1, a local 404 everywhere, so the handshake dominates);
//! - keep-alive HTTPS requests per server CPU-second, proxied to the demo upstream (the
//!   bare rustls server answers locally: a ceiling, not a peer);
//! - memory per idle TLS connection: RSS growth with N idle keep-alive connections that
//!   each finished a handshake and one request.
//!
//! Servers: gatewayd (release), a bare rustls + hyper server (the limit for us), nginx
//! and HAProxy (one worker/thread each), and for the keep-alive figure nginx again adding
//! the request headers gatewayd adds as Istio's gateway does (`x-request-id`,
//! `x-envoy-external-address`, besides the Host, `X-Forwarded-For` and
//! `X-Forwarded-Proto` the first nginx sets). Servers are pinned to CPU 1, the load generator
//! and the upstream to CPU 0; CPU is utime+stime from /proc over each run, all of a
//! server's processes summed. Rounds interleave the servers; medians are reported.

use std::{
    fmt::Write as _,
    fs,
    io::{BufRead as _, BufReader, Write as _},
    net::{SocketAddr, TcpStream},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{
    chart::{self, Panel, SeriesLabelPosition},
    common::{
        AdminAddrs, KilledOnDrop, free_port, gatewayd_run, median, nginx_prelude, pinned, spread,
        tree_cpu_seconds, tree_rss_bytes,
    },
    manifests::{gateway_yaml, ingress_service_yaml, upstream_service_yaml, virtual_service_yaml},
    peers::NginxHeaders,
    results_dir,
};
use crate::{Workspace, cmd};

/// Servers run here; the client and the upstream on the other CPU.
const SERVER_CPU: &str = "1";
const CLIENT_CPU: &str = "0";
/// Interleaved rounds per measurement (median reported).
const ROUNDS: usize = 3;
/// Connections per handshake run, opened at `HANDSHAKE_RATE` per second: well below
/// every server's capacity, so that CPU per handshake, not queueing, is measured.
const HANDSHAKE_CONNECTIONS: u32 = 3000;
const HANDSHAKE_RATE: u32 = 1000;
/// Keep-alive run: requests over this many connections.
const KEEPALIVE_REQUESTS: u32 = 30_000;
const KEEPALIVE_CONNECTIONS: u32 = 16;
/// Idle connections held for the memory figure.
const IDLE_CONNECTIONS: u32 = 2000;
const IDLE_WARMUP_CONNECTIONS: u32 = 20;
/// The memory curve's step.
const IDLE_STEP: u32 = 250;
const SNI: &str = "bench.example.com";
/// How long a server gets to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// One server under test.
struct Server {
    name: &'static str,
    port: u16,
    child: Child,
}

impl Drop for Server {
    fn drop(&mut self) {
        // nginx's master stops its workers on SIGTERM; SIGKILL would orphan them.
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Default)]
struct Figures {
    handshakes_per_cpu_s: Vec<f64>,
    requests_per_cpu_s: Vec<f64>,
    idle_bytes_per_connection: Option<f64>,
    /// RSS growth in MiB as idle connections are opened: (connections, MiB).
    idle_curve: Vec<(f64, f64)>,
    negotiated: String,
}

pub(crate) fn run(ws: &Workspace) -> Result<String> {
    cmd(ws.cargo().args([
        "build",
        "--release",
        "-p",
        "gateway-userspace",
        "--bin",
        "gatewayd",
        "--example",
        "bare_rustls",
        "-p",
        "gateway-tests",
        "--bin",
        "demo-upstream",
    ]))?;
    let release = ws.target_dir().join("release");
    let work = results_dir(ws).join("tls-work");
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work)?;
    certificate(&work)?;

    let upstream = start_upstream(&release.join("demo-upstream"))?;
    let mut servers = vec![
        start_gatewayd(&release.join("gatewayd"), &work, upstream.1)?,
        start_bare(&release.join("examples/bare_rustls"), &work)?,
        start_nginx(&work, upstream.1, NginxHeaders::Plain)?,
        start_haproxy(&work, upstream.1)?,
        start_nginx(&work, upstream.1, NginxHeaders::Istio)?,
    ];
    let mut figures: Vec<Figures> = servers.iter().map(|_| Figures::default()).collect();

    // Memory first, on fresh servers: after the load runs, allocators reuse freed memory
    // and RSS no longer grows with connections.
    // The second nginx differs from the first only in what it forwards: its handshakes
    // and idle connections are the first's.
    let has_own_tls_figures = |server: &Server| server.name != NGINX_ISTIO;
    for (server, figures) in servers.iter_mut().zip(&mut figures) {
        if !has_own_tls_figures(server) {
            continue;
        }
        println!("{}: {IDLE_CONNECTIONS} idle connections", server.name);
        figures.idle_curve = idle_memory(server)?;
        figures.idle_bytes_per_connection = figures
            .idle_curve
            .last()
            .map(|(connections, mib)| mib * 1024.0 * 1024.0 / connections);
    }
    for round in 0..ROUNDS {
        for (server, figures) in servers.iter().zip(&mut figures) {
            if !has_own_tls_figures(server) {
                continue;
            }
            println!("round {round}: {} handshakes", server.name);
            let (rate, negotiated) = handshakes(server)?;
            figures.handshakes_per_cpu_s.push(rate);
            figures.negotiated = negotiated;
        }
        for (server, figures) in servers.iter().zip(&mut figures) {
            println!("round {round}: {} keep-alive", server.name);
            figures.requests_per_cpu_s.push(keep_alive(server)?);
        }
    }
    drop(servers);
    drop(upstream);
    let svg = results_dir(ws).join("tls-memory.svg");
    draw_memory(&svg, &figures)?;
    Ok(table(&figures)
        + &format!(
            "\nMemory against idle TLS connections: {}.\n",
            svg.display()
        ))
}

/// The servers' names, in the order `run` starts them.
const SERVER_NAMES: [&str; 5] = [
    "gatewayd",
    "bare rustls (ceiling)",
    "nginx 1.22",
    "HAProxy 2.6",
    NGINX_ISTIO,
];
/// The nginx adding Istio's request headers; measured for keep-alive requests only.
const NGINX_ISTIO: &str = "nginx 1.22 + Istio headers";

fn table(figures: &[Figures]) -> String {
    let names = SERVER_NAMES;
    let bare = median(&figures[1].handshakes_per_cpu_s);
    let best_peer =
        median(&figures[2].handshakes_per_cpu_s).max(median(&figures[3].handshakes_per_cpu_s));
    let mut out = String::from(
        "| server | full TLS 1.3 handshakes per CPU-second | × bare rustls | × best peer | keep-alive HTTPS requests per CPU-second | memory per idle TLS connection |\n|---|---|---|---|---|---|\n",
    );
    for (name, f) in names.iter().zip(figures) {
        let handshakes = if f.handshakes_per_cpu_s.is_empty() {
            "– (as nginx's) | | ".to_owned()
        } else {
            let h = median(&f.handshakes_per_cpu_s);
            format!(
                "{h:.0} ({}) | {:.2} | {:.2} ",
                spread(&f.handshakes_per_cpu_s),
                h / bare,
                h / best_peer
            )
        };
        let _ = writeln!(
            out,
            "| {name} | {handshakes}| {:.0} ({}){} | {} |",
            median(&f.requests_per_cpu_s),
            spread(&f.requests_per_cpu_s),
            if name.starts_with("bare") {
                ", local 404"
            } else {
                ""
            },
            f.idle_bytes_per_connection
                .map_or("– (as nginx's)".to_owned(), |b| format!(
                    "{:.1} KiB",
                    b / 1024.0
                )),
        );
    }
    let _ = writeln!(
        out,
        "\nKeep-alive HTTPS requests per CPU-second, gatewayd ÷ nginx: {:.2}×; ÷ {NGINX_ISTIO} (the same request headers added by both): {:.2}×.",
        median(&figures[0].requests_per_cpu_s) / median(&figures[2].requests_per_cpu_s),
        median(&figures[0].requests_per_cpu_s) / median(&figures[4].requests_per_cpu_s),
    );
    let _ = write!(
        out,
        "\nNegotiated (h2load, gatewayd): {}. Medians of {ROUNDS} interleaved rounds, min–max in parentheses. \
         Handshakes: {HANDSHAKE_CONNECTIONS} connections at {HANDSHAKE_RATE}/s, one HTTP/1.1 request each (local 404). \
         Keep-alive: {KEEPALIVE_REQUESTS} requests over {KEEPALIVE_CONNECTIONS} connections to /get, proxied to the demo upstream. \
         Idle: RSS growth over {IDLE_CONNECTIONS} connections after one request each.\n",
        figures[0].negotiated
    );
    out
}

fn certificate(work: &Path) -> Result<()> {
    cmd(Command::new("openssl")
        .current_dir(work)
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "3",
            "-keyout",
            "key.pem",
            "-out",
            "cert.pem",
            "-subj",
        ])
        .arg(format!("/CN={SNI}"))
        .arg("-addext")
        .arg(format!("subjectAltName=DNS:{SNI}")))?;
    let combined =
        fs::read_to_string(work.join("cert.pem"))? + &fs::read_to_string(work.join("key.pem"))?;
    fs::write(work.join("combined.pem"), combined)?;
    Ok(())
}

fn start_upstream(bin: &Path) -> Result<(KilledOnDrop, SocketAddr)> {
    let mut child = pinned(CLIENT_CPU, bin)
        .args(["--listen", "127.0.0.1:0", "--name", "upstream"])
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let stdout = child.stdout.take().context("upstream stdout")?;
    let child = KilledOnDrop(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .with_context(|| format!("unexpected upstream output {line:?}"))?
        .parse()?;
    Ok((child, addr))
}

fn wait_listening(name: &'static str, port: u16, mut child: Child) -> Result<Server> {
    let deadline = Instant::now() + START_TIMEOUT;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait()? {
            bail!("{name} exited with {status} before listening on {port}");
        }
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(Server { name, port, child });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    bail!("{name} is not listening on {port} after {START_TIMEOUT:?}")
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("    {l}\n")).collect()
}

fn start_gatewayd(bin: &Path, work: &Path, upstream: SocketAddr) -> Result<Server> {
    let port = free_port()?;
    let dir = work.join("gatewayd");
    fs::create_dir_all(&dir)?;
    let cert = fs::read_to_string(work.join("cert.pem"))?;
    let key = fs::read_to_string(work.join("key.pem"))?;
    fs::write(
        dir.join("config.yaml"),
        gatewayd_config(port, upstream, &cert, &key),
    )?;
    let child = gatewayd_run(pinned(SERVER_CPU, bin), &dir, &AdminAddrs::free()?)?
        .stdout(Stdio::null())
        .stderr(fs::File::create(work.join("gatewayd.stderr"))?)
        .spawn()
        .context("starting gatewayd")?;
    wait_listening("gatewayd", port, child)
}

/// gatewayd's configuration: HTTPS for `SNI` on `port` with the PEM `cert` and `key`
/// (a Secret, as a Kubernetes user would hand them over), `/get` to the demo upstream.
fn gatewayd_config(port: u16, upstream: SocketAddr, cert: &str, key: &str) -> String {
    let secret = format!(
        r#"apiVersion: v1
kind: Secret
metadata: {{name: bench-cred, namespace: istio-system}}
type: kubernetes.io/tls
stringData:
  tls.crt: |
{cert}  tls.key: |
{key}"#,
        cert = indent(cert),
        key = indent(key),
    );
    let tls = "{mode: SIMPLE, credentialName: bench-cred}";
    let route = "  http:\n  - match: [{uri: {prefix: /get}}]\n    route:\n    - destination: {host: upstream, port: {number: 8000}}\n";
    [
        secret,
        ingress_service_yaml("https", 443, port, None),
        gateway_yaml("bench", "default", 443, "HTTPS", &[SNI], Some(tls)),
        virtual_service_yaml("bench", "default", &[SNI], "bench", route),
        upstream_service_yaml("upstream", "http", 8000, upstream),
    ]
    .join("---\n")
}

fn start_bare(bin: &Path, work: &Path) -> Result<Server> {
    let port = free_port()?;
    let child = pinned(SERVER_CPU, bin)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .arg("--cert")
        .arg(work.join("cert.pem"))
        .arg("--key")
        .arg(work.join("key.pem"))
        .stdout(Stdio::null())
        .spawn()
        .context("starting bare_rustls")?;
    wait_listening("bare rustls", port, child)
}

/// nginx terminating TLS and proxying `/get`; with `NginxHeaders::Istio` it also adds
/// the two request headers gatewayd adds that the first does not.
fn start_nginx(work: &Path, upstream: SocketAddr, headers: NginxHeaders) -> Result<Server> {
    let port = free_port()?;
    let (name, dir_name, extra) = match headers {
        NginxHeaders::Plain => ("nginx", "nginx", ""),
        NginxHeaders::Istio => (
            NGINX_ISTIO,
            "nginx-istio",
            "\n      proxy_set_header X-Request-Id $request_id;\n      proxy_set_header X-Envoy-External-Address $remote_addr;",
        ),
    };
    let dir = work.join(dir_name);
    fs::create_dir_all(dir.join("logs"))?;
    let w = work.display();
    let conf = format!(
        r#"{prelude}  upstream up {{ server {upstream}; keepalive 32; }}
  server {{
    listen 127.0.0.1:{port} ssl;
    server_name {SNI};
    ssl_certificate {w}/cert.pem;
    ssl_certificate_key {w}/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_ecdh_curve X25519;
    ssl_session_tickets on;
    location /get {{
      proxy_pass http://up;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto https;{extra}
    }}
    location / {{ return 404; }}
  }}
}}
"#,
        prelude = nginx_prelude(&dir),
    );
    fs::write(dir.join("nginx.conf"), conf)?;
    let child = pinned(SERVER_CPU, Path::new("nginx"))
        .arg("-p")
        .arg(&dir)
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .stdout(Stdio::null())
        .spawn()
        .context("starting nginx")?;
    wait_listening(name, port, child)
}

fn start_haproxy(work: &Path, upstream: SocketAddr) -> Result<Server> {
    let port = free_port()?;
    let conf = format!(
        r#"global
  nbthread 1
  maxconn 8000
  ssl-default-bind-options ssl-min-ver TLSv1.2
defaults
  mode http
  timeout connect 5s
  timeout client 300s
  timeout server 300s
  timeout http-keep-alive 300s
frontend tls
  bind 127.0.0.1:{port} ssl crt {w}/combined.pem curves X25519 alpn http/1.1
  option forwardfor
  http-request set-header X-Forwarded-Proto https
  http-request return status 404 unless {{ path_beg /get }}
  default_backend up
backend up
  http-reuse always
  server s1 {upstream}
"#,
        w = work.display(),
    );
    fs::write(work.join("haproxy.cfg"), conf)?;
    let child = pinned(SERVER_CPU, Path::new("haproxy"))
        .args(["-db", "-f"])
        .arg(work.join("haproxy.cfg"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting haproxy")?;
    wait_listening("haproxy", port, child)
}

fn cpu_seconds(server: &Server) -> f64 {
    tree_cpu_seconds(server.child.id())
}

fn rss_bytes(server: &Server) -> f64 {
    tree_rss_bytes(server.child.id())
}

/// Runs h2load against the server; returns (requests done, its output).
fn h2load(server: &Server, args: &[String], path: &str) -> Result<(f64, String)> {
    let mut command = pinned(CLIENT_CPU, Path::new("h2load"));
    command
        .args(["--h1", "--groups", "X25519"])
        .arg(format!("--connect-to=127.0.0.1:{}", server.port))
        .args(args)
        // The name in the URI is the SNI; --connect-to says where it is.
        .arg(format!("https://{SNI}:{}{path}", server.port));
    let out = command.output().context("running h2load")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!("h2load against {} failed:\n{text}", server.name);
    }
    let done = text
        .lines()
        .find_map(|l| l.strip_prefix("requests: "))
        .and_then(|l| l.split(", ").find_map(|part| part.strip_suffix(" done")))
        .and_then(|n| n.trim().parse::<f64>().ok())
        .with_context(|| format!("no request count in h2load output:\n{text}"))?;
    Ok((done, text))
}

fn handshakes(server: &Server) -> Result<(f64, String)> {
    let before = cpu_seconds(server);
    let (done, text) = h2load(
        server,
        &[
            "-c".into(),
            HANDSHAKE_CONNECTIONS.to_string(),
            "-n".into(),
            HANDSHAKE_CONNECTIONS.to_string(),
            "-r".into(),
            HANDSHAKE_RATE.to_string(),
        ],
        "/",
    )?;
    let used = cpu_seconds(server) - before;
    if done < f64::from(HANDSHAKE_CONNECTIONS) * 0.99 {
        bail!(
            "{}: only {done} of {HANDSHAKE_CONNECTIONS} connections completed:\n{text}",
            server.name
        );
    }
    let negotiated = ["TLS Protocol: ", "Cipher: ", "Server Temp Key: "]
        .iter()
        .filter_map(|p| text.lines().find_map(|l| l.strip_prefix(p)))
        .collect::<Vec<_>>()
        .join(", ");
    Ok((done / used.max(0.01), negotiated))
}

fn keep_alive(server: &Server) -> Result<f64> {
    let before = cpu_seconds(server);
    let (done, _) = h2load(
        server,
        &[
            "-c".into(),
            KEEPALIVE_CONNECTIONS.to_string(),
            "-n".into(),
            KEEPALIVE_REQUESTS.to_string(),
        ],
        "/get",
    )?;
    let used = cpu_seconds(server) - before;
    Ok(done / used.max(0.01))
}

/// Holds `IDLE_CONNECTIONS` TLS connections, each after one request, and reads the
/// server's RSS growth at every `IDLE_STEP` of them: (connections, MiB). The client is
/// Python's ssl module (OpenSSL), X25519 only.
fn idle_memory(server: &Server) -> Result<Vec<(f64, f64)>> {
    // Warm-up: first connections allocate per-process state (session caches, pools).
    hold_idle(server, IDLE_WARMUP_CONNECTIONS, |_| Ok(()))?;
    let before = rss_bytes(server);
    let mut curve = vec![(0.0, 0.0)];
    hold_idle(server, IDLE_CONNECTIONS, |held| {
        // Let the server settle (buffers released after the response).
        std::thread::sleep(Duration::from_millis(500));
        let grown = rss_bytes(server) - before;
        curve.push((f64::from(held), grown / (1024.0 * 1024.0)));
        Ok(())
    })?;
    Ok(curve)
}

/// Opens `count` TLS connections, one request each, and calls `measure` with the number
/// held at every `IDLE_STEP` of them (and at `count`), while they are all open and idle.
fn hold_idle(
    server: &Server,
    count: u32,
    mut measure: impl FnMut(u32) -> Result<()>,
) -> Result<()> {
    let mut client = pinned(CLIENT_CPU, Path::new("python3"))
        .args(["-c", IDLE_CLIENT])
        .arg(server.port.to_string())
        .arg(count.to_string())
        .arg(IDLE_STEP.to_string())
        .arg(SNI)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the idle-connection client")?;
    let stdout = client.stdout.take().context("client stdout")?;
    let mut stdin = client.stdin.take().context("client stdin")?;
    let client = KilledOnDrop(client);
    let mut lines = BufReader::new(stdout).lines();
    loop {
        let line = lines.next().transpose()?.unwrap_or_default();
        let Some(held) = line.strip_prefix("held ").and_then(|n| n.parse().ok()) else {
            bail!(
                "idle-connection client against {} failed: {line:?}",
                server.name
            );
        };
        measure(held)?;
        if held >= count {
            break;
        }
        // The client opens the next step's connections.
        stdin.write_all(b"\n")?;
        stdin.flush()?;
    }
    drop(stdin);
    drop(client);
    Ok(())
}

/// `tls-memory.svg`: each server's RSS growth against its idle TLS connections.
fn draw_memory(path: &Path, figures: &[Figures]) -> Result<()> {
    let panel = Panel {
        title: "RSS growth, idle TLS keep-alive connections".into(),
        x_label: "idle connections",
        y_label: "MiB",
        log_y: false,
        series: SERVER_NAMES
            .iter()
            .zip(figures)
            .map(|(name, f)| (*name, f.idle_curve.clone()))
            .collect(),
        legend: SeriesLabelPosition::UpperLeft,
    };
    chart::draw(path, &[panel])
}

/// Idle-connection client: Python's ssl module (OpenSSL), X25519 only.
const IDLE_CLIENT: &str = r#"
import socket, ssl, sys
port, count, step, sni = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
ctx.set_alpn_protocols(["http/1.1"])
ctx.set_ecdh_curve("X25519")
held = []
for _ in range(count):
    s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname=sni)
    s.sendall(b"GET / HTTP/1.1\r\nHost: " + sni.encode() + b"\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(4096)
        if not chunk:
            sys.exit("connection closed")
        data += chunk
    held.append(s)
    if len(held) % step == 0 or len(held) == count:
        print("held", len(held), flush=True)
        if len(held) < count:
            sys.stdin.readline()
sys.stdin.read()
"#;
