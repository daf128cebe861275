//! Operations: hot reload under load (a storm of 50 reloads that add and remove routes and
//! a listener, swap a certificate and include one broken config, across a WebSocket and
//! long streams), graceful and forced
//! drain on SIGTERM, and the admin endpoints as the README documents them.

use std::{
    fmt::Write as _,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    path::Path,
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use gateway_tests::{Gateway, TempDir, Upstream, curl, free_port, service_with_endpoint};

const HOST: &str = "storm.example.com";
/// Reloads in the storm, one of them broken.
const STORM_RELOADS: usize = 50;
const BROKEN_AT: usize = 25;
/// Iterations at which the certificate is swapped (v1 → v2 → v1).
const CERT_SWAPS: [usize; 2] = [20, 40];
/// Load-generator threads: half keep one connection alive, half connect per request.
const LOAD_THREADS: usize = 4;
/// How long a single reload may take to show up in the metrics before the test gives up.
const RELOAD_WAIT: Duration = Duration::from_secs(10);

/// A test upstream the demo upstream does not cover: `respond(request_head, stream)`
/// runs on its own thread for every connection.
struct ScriptedUpstream {
    addr: SocketAddr,
}

impl ScriptedUpstream {
    fn start(respond: impl Fn(String, TcpStream) + Send + Sync + 'static) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let respond = Arc::new(respond);
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let respond = respond.clone();
                thread::spawn(move || {
                    let mut reader = BufReader::new(match stream.try_clone() {
                        Ok(s) => s,
                        Err(_) => return,
                    });
                    let mut head = String::new();
                    while reader.read_line(&mut head).is_ok_and(|n| n > 2) {}
                    if !head.is_empty() {
                        respond(head, stream);
                    }
                });
            }
        });
        Ok(ScriptedUpstream { addr })
    }
}

/// An upstream answering every request with a chunked stream of ticks that goes on until
/// `done` is set, then ends with `end`.
fn streaming_upstream(done: Arc<AtomicBool>) -> anyhow::Result<ScriptedUpstream> {
    ScriptedUpstream::start(move |_, mut stream| {
        let _ = stream.write_all(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n",
        );
        let mut tick = 0;
        while !done.load(Ordering::Relaxed) {
            let line = format!("tick {tick}\n");
            if write!(stream, "{:x}\r\n{line}\r\n", line.len()).is_err() {
                return;
            }
            tick += 1;
            thread::sleep(Duration::from_millis(50));
        }
        let _ = stream.write_all(b"4\r\nend\n\r\n0\r\n\r\n");
    })
}

/// The storm's configuration: our Service maps 80 → `bind_port`, 443 → `tls_port` and,
/// when `extra_port` is given, 81 → it; `/extra-N` is the route that comes and goes.
fn storm_config(
    ports: (u16, u16, Option<u16>),
    upstream: SocketAddr,
    streamer: SocketAddr,
    extra_route: usize,
    secret: &str,
) -> String {
    let (bind_port, tls_port, extra_port) = ports;
    let mut servers = format!(
        "  - port: {{number: 80, name: http, protocol: HTTP}}\n    hosts: [\"{HOST}\"]\n  - port: {{number: 443, name: https, protocol: HTTPS}}\n    hosts: [\"{HOST}\"]\n    tls: {{mode: SIMPLE, credentialName: storm-cred}}\n"
    );
    let mut service_ports = format!(
        "  - {{name: http, port: 80, targetPort: {bind_port}}}\n  - {{name: https, port: 443, targetPort: {tls_port}}}\n"
    );
    if let Some(extra) = extra_port {
        servers.push_str(&format!(
            "  - port: {{number: 81, name: http-extra, protocol: HTTP}}\n    hosts: [\"{HOST}\"]\n"
        ));
        let _ = writeln!(
            service_ports,
            "  - {{name: http-extra, port: 81, targetPort: {extra}}}"
        );
    }
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: storm, namespace: default}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
{servers}---
apiVersion: v1
kind: Service
metadata: {{name: istio-ingressgateway, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  ports:
{service_ports}---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: storm, namespace: default}}
spec:
  hosts: ["{HOST}"]
  gateways: [storm]
  http:
  - match: [{{uri: {{prefix: /stream}}}}]
    route: [{{destination: {{host: streamer, port: {{number: 80}}}}}}]
  - match: [{{uri: {{prefix: /status}}}}, {{uri: {{prefix: /headers}}}}, {{uri: {{exact: /extra-{extra_route}}}}}]
    route: [{{destination: {{host: httpbin, port: {{number: 8000}}}}}}]
---
{services}{secret}"#,
        services = service_with_endpoint("httpbin", 8000, upstream)
            + &service_with_endpoint("streamer", 80, streamer),
    )
}

/// A self-signed certificate for `HOST` with common name `cn`, as a TLS Secret.
fn tls_secret(dir: &Path, cn: &str) -> anyhow::Result<String> {
    let (cert, key) = (dir.join(format!("{cn}.crt")), dir.join(format!("{cn}.key")));
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-days", "2", "-subj", &format!("/CN={cn}")])
        .args(["-addext", &format!("subjectAltName=DNS:{HOST}")])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .context("running openssl req")?;
    ensure!(
        out.status.success(),
        "openssl req: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let indent = |text: String| {
        text.lines()
            .map(|l| format!("    {l}\n"))
            .collect::<String>()
    };
    Ok(format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: storm-cred, namespace: istio-system}}\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: |\n{}  tls.key: |\n{}",
        indent(std::fs::read_to_string(cert)?),
        indent(std::fs::read_to_string(key)?)
    ))
}

/// The common name of the certificate the TLS port presents for `HOST`.
fn served_cn(port: u16) -> anyhow::Result<String> {
    let out = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{port}"),
            "-servername",
            HOST,
        ])
        .stdin(Stdio::null())
        .output()
        .context("running openssl s_client")?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("subject=").map(|s| s.replace(' ', "")))
        .with_context(|| format!("no certificate served on {port}: {text}"))
}

/// Replaces the config file as kubelet and editors do (write aside, rename over) or in
/// place (truncate and write), alternately, so both kinds of change are exercised.
fn write_config(dir: &Path, text: &str, in_place: bool) -> anyhow::Result<()> {
    let path = dir.join("storm.yaml");
    if in_place {
        std::fs::write(&path, text)?;
    } else {
        let aside = dir.join(".storm.yaml.tmp");
        std::fs::write(&aside, text)?;
        std::fs::rename(&aside, &path)?;
    }
    Ok(())
}

fn reloads(gateway: &Gateway, result: &str) -> anyhow::Result<f64> {
    Ok(gateway
        .metric(&format!(
            "gateway_config_reloads_total{{result=\"{result}\"}}"
        ))?
        .unwrap_or(0.0))
}

/// Waits until the reload counter for `result` exceeds `seen`.
fn wait_for_reload(gateway: &Gateway, result: &str, seen: f64) -> anyhow::Result<f64> {
    let deadline = Instant::now() + RELOAD_WAIT;
    loop {
        let now = reloads(gateway, result)?;
        if now > seen {
            return Ok(now);
        }
        if Instant::now() > deadline {
            bail!(
                "no {result} reload after {RELOAD_WAIT:?}:\n{}",
                gateway.stderr()
            );
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// Reads one HTTP/1.1 response (content-length or chunked body) and returns its status.
fn read_response(reader: &mut BufReader<TcpStream>) -> std::io::Result<u16> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let (mut length, mut chunked) = (0usize, false);
    loop {
        line.clear();
        reader.read_line(&mut line)?;
        let header = line.trim_end().to_ascii_lowercase();
        if header.is_empty() {
            break;
        }
        if let Some(v) = header.strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
        chunked |= header == "transfer-encoding: chunked";
    }
    if !chunked {
        reader.read_exact(&mut vec![0; length])?;
        return Ok(status);
    }
    loop {
        line.clear();
        reader.read_line(&mut line)?;
        let size = usize::from_str_radix(line.trim(), 16).unwrap_or(0);
        reader.read_exact(&mut vec![0; size + 2])?;
        if size == 0 {
            return Ok(status);
        }
    }
}

#[derive(Default)]
struct LoadReport {
    ok: AtomicUsize,
    failed: AtomicUsize,
    first_failure: std::sync::Mutex<Option<String>>,
}

impl LoadReport {
    fn fail(&self, what: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut first) = self.first_failure.lock() {
            first.get_or_insert(what);
        }
    }
}

/// Sends `GET /status/200` to `port` until `stop`, on one keep-alive connection or on a
/// new connection per request. Any error (refused, reset, early close) or non-200 counts
/// as a failure.
fn generate_load(port: u16, keep_alive: bool, stop: Arc<AtomicBool>, report: Arc<LoadReport>) {
    let mut connection: Option<BufReader<TcpStream>> = None;
    while !stop.load(Ordering::Relaxed) {
        let result = (|| -> std::io::Result<u16> {
            let reader = match connection.as_mut() {
                Some(reader) => reader,
                None => connection.insert(BufReader::new(TcpStream::connect(SocketAddr::from((
                    [127, 0, 0, 1],
                    port,
                )))?)),
            };
            let close = if keep_alive {
                ""
            } else {
                "connection: close\r\n"
            };
            write!(
                reader.get_mut(),
                "GET /status/200 HTTP/1.1\r\nhost: {HOST}\r\n{close}\r\n"
            )?;
            read_response(reader)
        })();
        match result {
            Ok(200) => {
                report.ok.fetch_add(1, Ordering::Relaxed);
            }
            Ok(status) => report.fail(format!("status {status}")),
            Err(e) => {
                report.fail(format!("{:?}: {e}", e.kind()));
                connection = None;
            }
        }
        if !keep_alive {
            connection = None;
        }
    }
}

/// Opens `GET /stream` on the plaintext port and reads the whole chunked body.
fn stream_over_http(port: u16) -> anyhow::Result<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    write!(
        stream,
        "GET /stream HTTP/1.1\r\nhost: {HOST}\r\nconnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    Ok(text)
}

/// Opens a WebSocket upgrade through the gateway to the demo upstream (which echoes the
/// upgraded bytes) and returns the upgraded connection.
fn open_websocket(port: u16) -> anyhow::Result<BufReader<TcpStream>> {
    let mut stream = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port)))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET /headers HTTP/1.1\r\nhost: {HOST}\r\nconnection: upgrade\r\nupgrade: websocket\r\nsec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )?;
    let mut reader = BufReader::new(stream);
    let mut head = String::new();
    while reader.read_line(&mut head)? > 2 {}
    ensure!(head.starts_with("HTTP/1.1 101"), "no upgrade: {head}");
    Ok(reader)
}

/// Sends `message` on the upgraded connection and reads the echo.
fn echo(websocket: &mut BufReader<TcpStream>, message: &str) -> anyhow::Result<String> {
    websocket.get_mut().write_all(message.as_bytes())?;
    let mut echoed = vec![0; message.len()];
    websocket.read_exact(&mut echoed)?;
    Ok(String::from_utf8_lossy(&echoed).into_owned())
}

/// 50 reloads while four clients hammer the gateway: nothing fails, the WebSocket opened
/// before the storm still echoes, the long streams (plaintext and TLS) complete, routes and a listener come and
/// go, the certificate swap reaches new handshakes, and the broken config is refused.
#[test]
fn reload_storm_drops_no_request_and_no_stream() -> anyhow::Result<()> {
    let upstream = Upstream::start(None, "127.0.0.1:0", "httpbin")?;
    let stream_done = Arc::new(AtomicBool::new(false));
    let streamer = streaming_upstream(stream_done.clone())?;
    let dir = TempDir::new("storm")?;
    let config_dir = dir.path().join("config");
    std::fs::create_dir_all(&config_dir)?;
    let secrets = [
        tls_secret(dir.path(), "storm-v1")?,
        tls_secret(dir.path(), "storm-v2")?,
    ];
    let (bind_port, tls_port, extra_port) = (free_port(), free_port(), free_port());
    let config = |i: usize, extra: bool, secret: &str| {
        storm_config(
            (bind_port, tls_port, extra.then_some(extra_port)),
            upstream.addr,
            streamer.addr,
            i,
            secret,
        )
    };
    write_config(&config_dir, &config(0, false, &secrets[0]), false)?;
    let gateway = Gateway::start(
        &config_dir,
        &["--ebpf", "off", "--access-log", "off"],
        None,
        &dir,
    )?;
    assert_eq!(served_cn(tls_port)?, "CN=storm-v1");

    // A WebSocket and long streams, opened before the storm, must survive it.
    let mut websocket = open_websocket(bind_port)?;
    assert_eq!(
        echo(&mut websocket, "before the storm\n")?,
        "before the storm\n"
    );
    let plain_stream = thread::spawn(move || stream_over_http(bind_port));
    let ca = dir.path().join("storm-v1.crt");
    let tls_stream = {
        let (ca, url) = (ca.clone(), format!("https://{HOST}:{tls_port}/stream"));
        let resolve = format!("{HOST}:{tls_port}:127.0.0.1");
        thread::spawn(move || {
            let ca = ca.to_string_lossy().into_owned();
            curl(
                None,
                &[
                    "--resolve",
                    &resolve,
                    "--cacert",
                    &ca,
                    "--max-time",
                    "300",
                    &url,
                ],
            )
        })
    };

    let stop = Arc::new(AtomicBool::new(false));
    let report = Arc::new(LoadReport::default());
    let load: Vec<_> = (0..LOAD_THREADS)
        .map(|n| {
            let (stop, report) = (stop.clone(), report.clone());
            thread::spawn(move || generate_load(bind_port, n % 2 == 0, stop, report))
        })
        .collect();
    let readiness_failures = Arc::new(AtomicUsize::new(0));
    let readiness_probe = {
        let (stop, failures, addr) = (stop.clone(), readiness_failures.clone(), gateway.readiness);
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if !gateway_tests::http_get(addr, "/healthz/ready").is_ok_and(|(s, _)| s == 200) {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
                thread::sleep(Duration::from_millis(20));
            }
        })
    };

    let (mut successes, mut failures) =
        (reloads(&gateway, "success")?, reloads(&gateway, "failure")?);
    let mut secret = 0;
    for i in 1..=STORM_RELOADS {
        if i == BROKEN_AT {
            // Not YAML: nothing says which objects the file held, so the whole reload
            // is refused (an error in one object would drop only that object).
            let broken =
                config(i, false, &secrets[secret]).replace("number: 8000}", "number: [8000}");
            write_config(&config_dir, &broken, i % 2 == 0)?;
            failures = wait_for_reload(&gateway, "failure", failures)?;
            // The last good config still serves, its routes included.
            let routed = curl(
                None,
                &[
                    "-H",
                    &format!("Host: {HOST}"),
                    &format!("http://127.0.0.1:{bind_port}/extra-{}", i - 1),
                ],
            )?;
            assert_eq!(routed.status, 200, "after the refused reload");
            continue;
        }
        if CERT_SWAPS.contains(&i) {
            secret = 1 - secret;
        }
        // Every tenth reload opens port 81 for one reload, then closes it again.
        let extra = i % 10 == 5;
        write_config(&config_dir, &config(i, extra, &secrets[secret]), i % 2 == 0)?;
        successes = wait_for_reload(&gateway, "success", successes)?;

        let get = |port: u16, path: &str| {
            curl(
                None,
                &[
                    "-H",
                    &format!("Host: {HOST}"),
                    &format!("http://127.0.0.1:{port}{path}"),
                ],
            )
            .map(|r| r.status)
        };
        assert_eq!(
            get(bind_port, &format!("/extra-{i}"))?,
            200,
            "route added by reload {i}"
        );
        assert_eq!(
            get(bind_port, &format!("/extra-{}", i - 1))?,
            404,
            "route removed by reload {i}"
        );
        if extra {
            assert_eq!(
                get(extra_port, "/status/200")?,
                200,
                "listener added by reload {i}"
            );
        } else if i % 10 == 6 {
            assert!(
                get(extra_port, "/status/200").is_err(),
                "listener removed by reload {i}"
            );
        }
        if CERT_SWAPS.contains(&i) {
            assert_eq!(
                served_cn(tls_port)?,
                format!("CN=storm-v{}", secret + 1),
                "reload {i}"
            );
        }
    }

    stop.store(true, Ordering::Relaxed);
    for thread in load {
        let _ = thread.join();
    }
    let _ = readiness_probe.join();
    stream_done.store(true, Ordering::Relaxed);
    let plain = plain_stream
        .join()
        .map_err(|_| anyhow::anyhow!("stream thread panicked"))??;
    let tls = tls_stream
        .join()
        .map_err(|_| anyhow::anyhow!("stream thread panicked"))??;

    assert_eq!(
        echo(&mut websocket, "after the storm\n")?,
        "after the storm\n"
    );

    let ok = report.ok.load(Ordering::Relaxed);
    let failed = report.failed.load(Ordering::Relaxed);
    let first = report.first_failure.lock().ok().and_then(|f| f.clone());
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed, first: {first:?}",
        ok + failed
    );
    assert!(ok > 0, "the load generator sent nothing");
    eprintln!(
        "reload storm: {STORM_RELOADS} reloads, {ok} requests, {} reloaded lines in the log",
        gateway.stderr().matches("configuration reloaded").count()
    );
    assert_eq!(
        readiness_failures.load(Ordering::Relaxed),
        0,
        "readiness dropped during reloads"
    );
    assert!(plain.starts_with("HTTP/1.1 200"), "{plain}");
    assert!(
        plain.contains("tick 0") && plain.contains("end\n") && plain.ends_with("0\r\n\r\n"),
        "plaintext stream cut: {plain}"
    );
    assert_eq!(tls.status, 200);
    assert!(
        tls.body.starts_with("tick 0") && tls.body.ends_with("end\n"),
        "TLS stream cut: {:?}",
        tls.body
    );
    // Key material stays out of the config dump and the logs.
    let dump = gateway.get(gateway.admin, "/config_dump")?.1;
    assert!(dump.contains("storm.example.com"), "{dump}");
    for cn in ["storm-v1", "storm-v2"] {
        let key = std::fs::read_to_string(dir.path().join(format!("{cn}.key")))?;
        let key_body = key.lines().nth(1).context("PEM body")?;
        for text in [&dump, &gateway.stderr()] {
            assert!(
                !text.contains("PRIVATE KEY") && !text.contains(key_body),
                "{cn}'s key exposed"
            );
        }
    }
    assert_eq!(reloads(&gateway, "success")?, (STORM_RELOADS - 1) as f64);
    assert_eq!(reloads(&gateway, "failure")?, 1.0);
    Ok(())
}

/// An upstream that answers after `delay`, and tells `started` when a request arrived.
fn slow_upstream(delay: Duration, started: mpsc::Sender<()>) -> anyhow::Result<ScriptedUpstream> {
    let started = std::sync::Mutex::new(started);
    ScriptedUpstream::start(move |_, mut stream| {
        if let Ok(started) = started.lock() {
            let _ = started.send(());
        }
        thread::sleep(delay);
        let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nslow\n");
    })
}

fn slow_config(bind_port: u16, slow: SocketAddr) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: drain, namespace: default}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: {bind_port}, name: http, protocol: HTTP}}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: drain, namespace: default}}
spec:
  hosts: ["*"]
  gateways: [drain]
  http:
  - route: [{{destination: {{host: slow, port: {{number: 80}}}}}}]
---
{}"#,
        service_with_endpoint("slow", 80, slow)
    )
}

fn sigterm(gateway: &Gateway) -> anyhow::Result<()> {
    let pid = libc::pid_t::try_from(gateway.process.child.id())?;
    // SAFETY: kill(2) has no memory-safety preconditions; the pid is our unreaped child.
    ensure!(
        unsafe { libc::kill(pid, libc::SIGTERM) } == 0,
        "kill failed"
    );
    Ok(())
}

/// Starts a gateway in front of an upstream that takes `delay`, sends one request, and
/// SIGTERMs the gateway once the upstream has it. Returns the gateway, the client's
/// thread (its curl result) and the bind port.
fn terminate_during_slow_request(
    delay: Duration,
    drain_timeout: &str,
    dir: &TempDir,
) -> anyhow::Result<(
    Gateway,
    thread::JoinHandle<anyhow::Result<gateway_tests::CurlResponse>>,
    u16,
    ScriptedUpstream,
)> {
    let (started_tx, started) = mpsc::channel();
    let slow = slow_upstream(delay, started_tx)?;
    let bind_port = free_port();
    dir.write("drain.yaml", &slow_config(bind_port, slow.addr))?;
    let gateway = Gateway::start(
        dir.path(),
        &["--ebpf", "off", "--drain-timeout", drain_timeout],
        None,
        dir,
    )?;
    let client = thread::spawn(move || {
        curl(
            None,
            &[
                "--max-time",
                "60",
                &format!("http://127.0.0.1:{bind_port}/slow"),
            ],
        )
    });
    started
        .recv_timeout(Duration::from_secs(10))
        .context("the request never reached the upstream")?;
    sigterm(&gateway)?;
    Ok((gateway, client, bind_port, slow))
}

/// SIGTERM with a request in flight: readiness turns 503, the listener stops accepting,
/// the request completes, and the daemon exits 0 once it has.
#[test]
fn sigterm_lets_in_flight_requests_finish() -> anyhow::Result<()> {
    let dir = TempDir::new("drain")?;
    let (mut gateway, client, bind_port, _slow) =
        terminate_during_slow_request(Duration::from_secs(2), "30s", &dir)?;

    let deadline = Instant::now() + Duration::from_secs(10);
    let mut saw_not_ready = false;
    while Instant::now() < deadline && gateway.process.child.try_wait()?.is_none() {
        if gateway
            .get(gateway.readiness, "/healthz/ready")
            .is_ok_and(|(s, _)| s == 503)
        {
            saw_not_ready = true;
            break;
        }
        thread::sleep(Duration::from_millis(10));
    }
    assert!(
        saw_not_ready,
        "readiness never reported draining:\n{}",
        gateway.stderr()
    );
    // The listener closes right after readiness turns (the accept loop sees the stop on
    // its next poll), well before the 2 s request is done.
    let refused_by = Instant::now() + Duration::from_secs(1);
    while TcpStream::connect(("127.0.0.1", bind_port)).is_ok() {
        assert!(
            Instant::now() < refused_by,
            "the listener still accepts while draining"
        );
        thread::sleep(Duration::from_millis(10));
    }
    assert!(
        !client.is_finished(),
        "the slow request ended before the listener closed"
    );

    let response = client
        .join()
        .map_err(|_| anyhow::anyhow!("client panicked"))??;
    assert_eq!((response.status, response.body.as_str()), (200, "slow\n"));
    let status = gateway.process.child.wait()?;
    assert!(status.success(), "exit {status}:\n{}", gateway.stderr());
    assert!(gateway.stderr().contains("stopped"), "{}", gateway.stderr());
    Ok(())
}

/// SIGTERM with a request that outlives `--drain-timeout`: the daemon does not wait for
/// it; the connection is closed without a response and the daemon exits 0.
#[test]
fn sigterm_closes_what_outlives_the_drain_timeout() -> anyhow::Result<()> {
    let dir = TempDir::new("drain-forced")?;
    let (mut gateway, client, _, _slow) =
        terminate_during_slow_request(Duration::from_secs(45), "300ms", &dir)?;
    // The upstream answers after 45 s; the daemon must be gone long before.
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = gateway.process.child.try_wait()? {
            break status;
        }
        ensure!(
            Instant::now() < deadline,
            "still running 20 s after SIGTERM with a 300ms drain timeout:\n{}",
            gateway.stderr()
        );
        thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "exit {status}:\n{}", gateway.stderr());
    assert!(
        gateway.stderr().contains("drain timeout"),
        "{}",
        gateway.stderr()
    );
    let response = client
        .join()
        .map_err(|_| anyhow::anyhow!("client panicked"))?;
    assert!(
        response.is_err(),
        "the cut request got a response: {response:?}"
    );
    Ok(())
}

/// Readiness, metrics, config dump and the log-level switch, as the README documents them.
#[test]
fn admin_endpoints_answer_as_documented() -> anyhow::Result<()> {
    let upstream = Upstream::start(None, "127.0.0.1:0", "httpbin")?;
    let dir = TempDir::new("admin")?;
    let bind_port = free_port();
    dir.write(
        "config.yaml",
        &gateway_tests::httpbin_config(bind_port, upstream.addr),
    )?;
    let gateway = Gateway::start(dir.path(), &["--ebpf", "off"], None, &dir)?;

    assert_eq!(gateway.get(gateway.readiness, "/healthz/ready")?.0, 200);
    let dump: serde_json::Value =
        serde_json::from_str(&gateway.get(gateway.admin, "/config_dump")?.1)?;
    assert_eq!(dump["listeners"][0]["bind_port"], bind_port);
    let (status, metrics) = gateway.get(gateway.metrics, "/stats/prometheus")?;
    assert_eq!(status, 200);
    assert!(
        metrics.contains("gateway_config_last_reload_successful 1"),
        "{metrics}"
    );

    // A broken file: refused, counted, readiness up, the old snapshot still dumped.
    dir.write(
        "broken.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: x\n",
    )?;
    wait_for_reload(&gateway, "failure", 0.0)?;
    assert_eq!(
        gateway.metric("gateway_config_last_reload_successful")?,
        Some(0.0)
    );
    assert_eq!(gateway.get(gateway.readiness, "/healthz/ready")?.0, 200);
    assert!(
        gateway.stderr().contains("broken.yaml:"),
        "diagnostic names file and line:\n{}",
        gateway.stderr()
    );
    let routed = curl(
        None,
        &[
            "-H",
            "Host: httpbin.example.com",
            &format!("http://127.0.0.1:{bind_port}/status/200"),
        ],
    )?;
    assert_eq!(routed.status, 200);

    // SIGHUP reloads the same files (still broken: a second failure, still serving).
    let pid = libc::pid_t::try_from(gateway.process.child.id())?;
    // SAFETY: kill(2) has no memory-safety preconditions; the pid is our unreaped child.
    ensure!(unsafe { libc::kill(pid, libc::SIGHUP) } == 0);
    wait_for_reload(&gateway, "failure", 1.0)?;
    std::fs::remove_file(dir.path().join("broken.yaml"))?;
    wait_for_reload(&gateway, "success", 0.0)?;
    assert_eq!(
        gateway.metric("gateway_config_last_reload_successful")?,
        Some(1.0)
    );

    // The log level switch (admin port only).
    let admin = format!("http://{}/logging", gateway.admin);
    let switched = curl(None, &["-X", "POST", &format!("{admin}?level=debug")])?;
    assert_eq!((switched.status, switched.body.trim()), (200, "debug"));
    assert_eq!(curl(None, &[&admin])?.body.trim(), "debug");
    assert_eq!(
        curl(None, &["-X", "POST", &format!("{admin}?level=verbose")])?.status,
        400
    );
    let on_readiness = curl(
        None,
        &[
            "-X",
            "POST",
            &format!("http://{}/logging?level=debug", gateway.readiness),
        ],
    )?;
    assert_eq!(on_readiness.status, 405);
    Ok(())
}

/// A Secret volume as kubelet updates it: files reached through a `..data` link that is
/// swapped by a rename. With the directory under `--watch`, the swap reloads and new
/// handshakes get the renewed certificate named by `serverCertificate`.
#[test]
fn a_secret_volume_swap_renews_the_certificate() -> anyhow::Result<()> {
    let upstream = Upstream::start(None, "127.0.0.1:0", "httpbin")?;
    let dir = TempDir::new("secret-volume")?;
    let (config_dir, certs) = (dir.path().join("config"), dir.path().join("certs"));
    std::fs::create_dir_all(&config_dir)?;
    // Kubelet's layout: ..<timestamp>/ holds the files, ..data links to it, and the
    // visible names link through ..data.
    let generation = |name: &str, cn: &str| -> anyhow::Result<()> {
        let versioned = certs.join(name);
        std::fs::create_dir_all(&versioned)?;
        tls_secret(dir.path(), cn)?;
        std::fs::copy(
            dir.path().join(format!("{cn}.crt")),
            versioned.join("tls.crt"),
        )?;
        std::fs::copy(
            dir.path().join(format!("{cn}.key")),
            versioned.join("tls.key"),
        )?;
        Ok(())
    };
    generation("..2026_11_22_01_00_00.1", "volume-v1")?;
    std::os::unix::fs::symlink("..2026_11_22_01_00_00.1", certs.join("..data"))?;
    for file in ["tls.crt", "tls.key"] {
        std::os::unix::fs::symlink(format!("..data/{file}"), certs.join(file))?;
    }
    let tls_port = free_port();
    let gateway_yaml = format!(
        r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: volume, namespace: default}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: {tls_port}, name: https, protocol: HTTPS}}
    hosts: ["{HOST}"]
    tls:
      mode: SIMPLE
      serverCertificate: {crt}
      privateKey: {key}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: volume, namespace: default}}
spec:
  hosts: ["{HOST}"]
  gateways: [volume]
  http:
  - route: [{{destination: {{host: httpbin, port: {{number: 8000}}}}}}]
---
{services}"#,
        crt = certs.join("tls.crt").display(),
        key = certs.join("tls.key").display(),
        services = service_with_endpoint("httpbin", 8000, upstream.addr),
    );
    std::fs::write(config_dir.join("gateway.yaml"), gateway_yaml)?;
    let watch = certs.to_string_lossy().into_owned();
    let gateway = Gateway::start(
        &config_dir,
        &["--ebpf", "off", "--watch", &watch],
        None,
        &dir,
    )?;
    assert_eq!(served_cn(tls_port)?, "CN=volume-v1");

    // The update: a new timestamped directory, then ..data swapped by a rename.
    generation("..2026_11_22_02_00_00.2", "volume-v2")?;
    std::os::unix::fs::symlink("..2026_11_22_02_00_00.2", certs.join("..data_tmp"))?;
    std::fs::rename(certs.join("..data_tmp"), certs.join("..data"))?;
    wait_for_reload(&gateway, "success", 0.0)?;
    assert_eq!(served_cn(tls_port)?, "CN=volume-v2");
    Ok(())
}

/// `--drain-delay`: after SIGTERM readiness turns 503 at once, but the listener keeps
/// serving new connections for the delay (while load balancers and kube-proxy take the
/// node out), then drains and exits 0.
#[test]
fn a_drain_delay_keeps_serving_while_reporting_not_ready() -> anyhow::Result<()> {
    let upstream = Upstream::start(None, "127.0.0.1:0", "httpbin")?;
    let dir = TempDir::new("drain-delay")?;
    let bind_port = free_port();
    dir.write(
        "config.yaml",
        &gateway_tests::httpbin_config(bind_port, upstream.addr),
    )?;
    let extra = [
        "--ebpf",
        "off",
        "--drain-delay",
        "3s",
        "--drain-timeout",
        "1s",
    ];
    let mut gateway = Gateway::start(dir.path(), &extra, None, &dir)?;
    sigterm(&gateway)?;
    let deadline = Instant::now() + Duration::from_secs(2);
    while gateway.get(gateway.readiness, "/healthz/ready")?.0 != 503 {
        ensure!(
            Instant::now() < deadline,
            "readiness still 200 after SIGTERM"
        );
        thread::sleep(Duration::from_millis(10));
    }
    let url = format!("http://127.0.0.1:{bind_port}/status/200");
    let late = curl(None, &["-H", "Host: httpbin.example.com", &url])?;
    assert_eq!(late.status, 200, "a new connection during the drain delay");
    let status = gateway.process.child.wait()?;
    assert!(status.success(), "exit {status}:\n{}", gateway.stderr());
    Ok(())
}
