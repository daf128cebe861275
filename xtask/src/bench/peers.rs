//! The peers `bench http` and `bench latency` measure: gatewayd, nginx and HAProxy with
//! identical routing (`HOSTS` hosts × `PREFIXES` path prefixes, every route to one
//! upstream service of two endpoints, round robin, keep-alive upstream connections), one
//! worker each pinned to `SERVER_CPU`, and the upstream they share: an nginx answering a
//! fixed 200 on two ports, pinned with the load generators to `CLIENT_CPU`.

use std::{
    fmt::Write as _,
    fs,
    io::{Read as _, Write as _},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{
    common::{AdminAddrs, free_port, gatewayd_run, nginx_prelude, pinned},
    manifests::{
        endpoint_slice_yaml, gateway_yaml, ingress_service_yaml, service_yaml, virtual_service_yaml,
    },
};

pub(super) const SERVER_CPU: &str = "1";
pub(super) const CLIENT_CPU: &str = "0";
pub(super) const HOSTS: usize = 100;
pub(super) const PREFIXES: usize = 10;
/// The request every client sends: a host and prefix in the middle of the tables, so
/// linear rule lists (HAProxy's) pay for the rules before it, as they would on average.
pub(super) const TARGET_HOST: &str = "h57.bench.example";
pub(super) const TARGET_PATH: &str = "/p7/item";
/// Open-loop load (paced-load) runs over this many keep-alive connections.
pub(super) const PACED_CONNECTIONS: u32 = 16;
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// The upstream nginx and its two ports (the service's two endpoints).
pub(super) struct Upstream {
    pub(super) ports: [u16; 2],
    _process: Process,
}

/// The upstream and the proxies in front of it, each checked to route alike: gatewayd,
/// nginx, HAProxy, and nginx again adding the request headers gatewayd adds as Istio's
/// gateway does (`NGINX_ISTIO`).
pub(super) fn start_all(gatewayd: &Path, work: &Path) -> Result<(Upstream, [Server; 4])> {
    let upstream_ports = [free_port()?, free_port()?];
    let upstream = Upstream {
        ports: upstream_ports,
        _process: start_upstream(work, upstream_ports)?,
    };
    let servers = [
        start_gatewayd(gatewayd, work, upstream_ports, 1)?,
        start_nginx(work, upstream_ports, NginxHeaders::Plain)?,
        start_haproxy(work, upstream_ports)?,
        start_nginx(work, upstream_ports, NginxHeaders::Istio)?,
    ];
    for server in &servers {
        check_routing(server)?;
    }
    Ok((upstream, servers))
}

/// A child stopped with SIGTERM (nginx's master then stops its workers), then SIGKILL.
pub(super) struct Process(pub(super) Child);

impl Drop for Process {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.0.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(super) struct Server {
    pub(super) name: &'static str,
    /// HTTP/1.1 port; `h2_port` serves h2c with prior knowledge (the same port for
    /// gatewayd, which tells them apart by the preface).
    pub(super) h1_port: u16,
    pub(super) h2_port: u16,
    pub(super) process: Process,
}

pub(super) fn wait_listening(port: u16, child: &mut Child, name: &str) -> Result<()> {
    let deadline = Instant::now() + START_TIMEOUT;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait()? {
            bail!("{name} exited with {status} before listening on {port}");
        }
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("{name} is not listening on {port} after {START_TIMEOUT:?}")
}

pub(super) fn nginx_dir(work: &Path, name: &str) -> Result<PathBuf> {
    let dir = work.join(name);
    fs::create_dir_all(dir.join("logs"))?;
    Ok(dir)
}

pub(super) fn start_nginx_process(dir: &Path, cpu: &str, port: u16, name: &str) -> Result<Process> {
    let mut child = pinned(cpu, Path::new("nginx"))
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .stdout(Stdio::null())
        .spawn()
        .with_context(|| format!("starting nginx ({name})"))?;
    wait_listening(port, &mut child, name)?;
    Ok(Process(child))
}

/// HAProxy on the configuration at `config`, pinned to the server CPU, once it listens
/// on `port`; its log to `stderr`.
pub(super) fn start_haproxy_process(config: &Path, port: u16, stderr: Stdio) -> Result<Process> {
    let mut child = pinned(SERVER_CPU, Path::new("haproxy"))
        .args(["-db", "-f"])
        .arg(config)
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .context("starting haproxy")?;
    wait_listening(port, &mut child, "haproxy")?;
    Ok(Process(child))
}

/// The upstream: nginx answering `200 ok` on two ports (the two endpoints).
pub(super) fn start_upstream(work: &Path, ports: [u16; 2]) -> Result<Process> {
    let dir = nginx_dir(work, "upstream")?;
    let mut conf = nginx_prelude(&dir);
    for port in ports {
        let _ = writeln!(
            conf,
            "  server {{ listen 127.0.0.1:{port} reuseport; location / {{ return 200 \"ok\\n\"; }} }}"
        );
    }
    conf.push_str("}\n");
    fs::write(dir.join("nginx.conf"), conf)?;
    start_nginx_process(&dir, CLIENT_CPU, ports[0], "upstream nginx")
}

pub(super) fn start_gatewayd(
    bin: &Path,
    work: &Path,
    upstream: [u16; 2],
    workers: usize,
) -> Result<Server> {
    let port = free_port()?;
    let dir = work.join(format!("gatewayd-{workers}"));
    fs::create_dir_all(&dir)?;
    fs::write(dir.join("config.yaml"), gatewayd_config(port, upstream))?;
    let mut child = gatewayd_run(pinned(SERVER_CPU, bin), &dir, &AdminAddrs::free()?)?
        .args(["--worker-threads", &workers.to_string()])
        .stdout(Stdio::null())
        .stderr(fs::File::create(work.join("gatewayd.stderr"))?)
        .spawn()
        .context("starting gatewayd")?;
    wait_listening(port, &mut child, "gatewayd")?;
    Ok(Server {
        name: "gatewayd",
        h1_port: port,
        h2_port: port,
        process: Process(child),
    })
}

/// gatewayd's configuration: its listener on `port`, `HOSTS` VirtualServices of
/// `PREFIXES` routes each, all to the Service `up` on the two `upstream` ports.
fn gatewayd_config(port: u16, upstream: [u16; 2]) -> String {
    let hosts: Vec<String> = (0..HOSTS).map(|h| format!("h{h}.bench.example")).collect();
    let hosts: Vec<&str> = hosts.iter().map(String::as_str).collect();
    let mut documents = vec![
        ingress_service_yaml("http", 80, port, None),
        gateway_yaml("bench", "default", 80, "HTTP", &hosts, None),
        service_yaml("up", "http", 8000, None),
    ];
    for (i, upstream_port) in upstream.into_iter().enumerate() {
        let endpoint = ([127, 0, 0, 1], upstream_port).into();
        documents.push(endpoint_slice_yaml("up", i, "http", endpoint));
    }
    let mut routes = String::from("  http:\n");
    for p in 0..PREFIXES {
        let _ = write!(
            routes,
            "  - match: [{{uri: {{prefix: /p{p}/}}}}]\n    route: [{{destination: {{host: up}}}}]\n"
        );
    }
    for (h, host) in hosts.iter().enumerate() {
        documents.push(virtual_service_yaml(
            &format!("h{h}"),
            "default",
            &[*host],
            "bench",
            &routes,
        ));
    }
    documents.join("---\n")
}

/// The name of the nginx that adds Istio's request headers.
pub(super) const NGINX_ISTIO: &str = "nginx + Istio headers";

/// nginx directives adding what gatewayd adds to a forwarded request besides
/// `X-Forwarded-For`, as Envoy does in Istio's ingress gateway (see `NginxHeaders::Istio`).
pub(super) const NGINX_ISTIO_HEADERS: &str = "proxy_set_header Host $host; proxy_set_header X-Forwarded-Proto $scheme; proxy_set_header X-Request-Id $request_id; proxy_set_header X-Envoy-External-Address $remote_addr;";

/// What nginx adds to the request it forwards.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum NginxHeaders {
    /// `X-Forwarded-For` only: nginx as it is usually set up.
    Plain,
    /// What gatewayd adds as Envoy does in Istio's ingress gateway: the client's Host kept,
    /// `x-forwarded-proto`, a fresh `x-request-id` and `x-envoy-external-address` besides
    /// `x-forwarded-for`. The same work per request for both, so that this nginx and
    /// gatewayd differ in how they do it, not in what they do.
    Istio,
}

pub(super) fn start_nginx(
    work: &Path,
    upstream: [u16; 2],
    headers: NginxHeaders,
) -> Result<Server> {
    let (h1_port, h2_port) = (free_port()?, free_port()?);
    let (name, dir_name, extra) = match headers {
        NginxHeaders::Plain => ("nginx", "nginx", String::new()),
        NginxHeaders::Istio => (
            NGINX_ISTIO,
            "nginx-istio",
            format!(" {NGINX_ISTIO_HEADERS}"),
        ),
    };
    let dir = nginx_dir(work, dir_name)?;
    let mut conf = nginx_prelude(&dir);
    let _ = writeln!(
        conf,
        "  upstream up {{ server 127.0.0.1:{}; server 127.0.0.1:{}; keepalive 64; }}",
        upstream[0], upstream[1]
    );
    for h in 0..HOSTS {
        let _ = writeln!(
            conf,
            "  server {{\n    listen 127.0.0.1:{h1_port};\n    listen 127.0.0.1:{h2_port} http2;\n    server_name h{h}.bench.example;"
        );
        for p in 0..PREFIXES {
            let _ = writeln!(
                conf,
                "    location /p{p}/ {{ proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;{extra} }}"
            );
        }
        conf.push_str("    location / { return 404; }\n  }\n");
    }
    let _ = writeln!(
        conf,
        "  server {{ listen 127.0.0.1:{h1_port} default_server; listen 127.0.0.1:{h2_port} http2 default_server; return 404; }}\n}}"
    );
    fs::write(dir.join("nginx.conf"), conf)?;
    let process = start_nginx_process(&dir, SERVER_CPU, h1_port, name)?;
    Ok(Server {
        name,
        h1_port,
        h2_port,
        process,
    })
}

pub(super) fn start_haproxy(work: &Path, upstream: [u16; 2]) -> Result<Server> {
    let (h1_port, h2_port) = (free_port()?, free_port()?);
    let mut conf = format!(
        r#"global
  nbthread 1
  maxconn 9500
defaults
  mode http
  timeout connect 5s
  timeout client 300s
  timeout server 300s
  timeout http-keep-alive 300s
frontend web
  bind 127.0.0.1:{h1_port}
  bind 127.0.0.1:{h2_port} proto h2
  option forwardfor
"#
    );
    for h in 0..HOSTS {
        for p in 0..PREFIXES {
            let _ = writeln!(
                conf,
                "  use_backend up if {{ hdr(host) -m str h{h}.bench.example }} {{ path_beg /p{p}/ }}"
            );
        }
    }
    let _ = write!(
        conf,
        "  default_backend notfound\nbackend notfound\n  http-request return status 404\nbackend up\n  balance roundrobin\n  http-reuse always\n  server s1 127.0.0.1:{}\n  server s2 127.0.0.1:{}\n",
        upstream[0], upstream[1]
    );
    let path = work.join("haproxy.cfg");
    fs::write(&path, conf)?;
    Ok(Server {
        name: "HAProxy",
        h1_port,
        h2_port,
        process: start_haproxy_process(&path, h1_port, Stdio::null())?,
    })
}

/// One request through each server before measuring: the routing really is identical.
pub(super) fn check_routing(server: &Server) -> Result<()> {
    for (host, path, want) in [
        (TARGET_HOST, TARGET_PATH, "200"),
        ("h3.bench.example", "/p9/x", "200"),
        ("h3.bench.example", "/nope", "404"),
    ] {
        let mut stream = TcpStream::connect(("127.0.0.1", server.h1_port))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        )?;
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        let status = answer.split_whitespace().nth(1).unwrap_or_default();
        if status != want {
            bail!(
                "{}: {host}{path} answered {status:?}, expected {want}:\n{answer}",
                server.name
            );
        }
    }
    Ok(())
}

/// One open-loop run at `rate` against `port`: (p50, p99) in µs; fails on any error.
pub(super) fn paced_run(bin: &Path, port: u16, rate: f64, seconds: u32) -> Result<(f64, f64)> {
    let output = pinned(CLIENT_CPU, bin)
        .args(["--connect", &format!("127.0.0.1:{port}")])
        .args(["--host", TARGET_HOST, "--path", TARGET_PATH])
        .args(["--rate", &format!("{rate:.0}")])
        .args(["--seconds", &seconds.to_string()])
        .args(["--connections", &PACED_CONNECTIONS.to_string()])
        .output()
        .context("running paced-load")?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let field = |name: &str| -> Option<f64> {
        text.split_whitespace()
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
    };
    if !output.status.success() || field("errors") != Some(0.0) {
        bail!(
            "paced-load on port {port} failed:\n{text}{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let p50 = field("p50_us").context("p50_us")?;
    let p99 = field("p99_us").context("p99_us")?;
    Ok((p50, p99))
}

/// The rate of wrk's summary (`Requests/sec: 12345.67`).
pub(super) fn wrk_requests_per_second(text: &str) -> Result<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("wrk output:\n{text}"))
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use super::*;

    /// The request one of the bench's nginxes forwards for `TARGET_HOST`/`TARGET_PATH`,
    /// caught by a listener standing in for the upstream (both endpoints).
    fn forwarded_by(headers: NginxHeaders) -> Result<String> {
        let upstream = TcpListener::bind("127.0.0.1:0")?;
        let port = upstream.local_addr()?.port();
        let work = std::env::temp_dir().join(format!(
            "xtask-peers-{}-{}",
            std::process::id(),
            headers == NginxHeaders::Istio
        ));
        let nginx = start_nginx(&work, [port, port], headers)?;
        let mut client = TcpStream::connect(("127.0.0.1", nginx.h1_port))?;
        write!(
            client,
            "GET {TARGET_PATH} HTTP/1.1\r\nHost: {TARGET_HOST}\r\nConnection: close\r\n\r\n"
        )?;
        upstream.set_nonblocking(true)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        let (mut forwarded, _) = loop {
            match upstream.accept() {
                Ok(accepted) => break accepted,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if Instant::now() > deadline {
                        bail!("nginx forwarded nothing within 10 s");
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => return Err(e.into()),
            }
        };
        forwarded.set_nonblocking(false)?;
        forwarded.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut head = Vec::new();
        let mut byte = [0u8];
        while !head.ends_with(b"\r\n\r\n") {
            forwarded.read_exact(&mut byte)?;
            head.push(byte[0]);
        }
        forwarded.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")?;
        drop(nginx);
        let _ = fs::remove_dir_all(&work);
        Ok(String::from_utf8_lossy(&head).to_lowercase())
    }

    /// The two nginxes the benches compare gatewayd with differ in what they forward as
    /// their names say: the plain one adds `X-Forwarded-For` alone and sends its upstream's
    /// name as Host; the other adds what gatewayd adds (Istio's gateway's headers).
    #[test]
    fn the_istio_nginx_forwards_what_gatewayd_forwards() -> Result<()> {
        if std::process::Command::new("nginx")
            .arg("-v")
            .output()
            .is_err()
        {
            eprintln!("SKIPPED: no nginx (cargo xtask setup installs it)");
            return Ok(());
        }
        let plain = forwarded_by(NginxHeaders::Plain)?;
        assert!(plain.contains("\r\nhost: up\r\n"), "{plain}");
        assert!(
            plain.contains("\r\nx-forwarded-for: 127.0.0.1\r\n"),
            "{plain}"
        );
        assert!(!plain.contains("x-request-id"), "{plain}");

        let istio = forwarded_by(NginxHeaders::Istio)?;
        for header in [
            format!("host: {TARGET_HOST}"),
            "x-forwarded-for: 127.0.0.1".into(),
            "x-forwarded-proto: http".into(),
            "x-envoy-external-address: 127.0.0.1".into(),
        ] {
            assert!(
                istio.contains(&format!("\r\n{header}\r\n")),
                "{header} in {istio}"
            );
        }
        let request_id = istio
            .split("\r\n")
            .find_map(|line| line.strip_prefix("x-request-id: "))
            .unwrap_or_default();
        assert_eq!(request_id.len(), 32, "nginx's $request_id: {istio}");
        Ok(())
    }
}
