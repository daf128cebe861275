//! TLS passthrough streams (a `PASSTHROUGH` server routed by SNI) held by a client: one
//! silent either way is closed after `--tcp-idle-timeout` while one that keeps talking is
//! not, and an open one is closed at the drain deadline of its listener, whether a reload
//! removed the listener or the process is shutting down; not before, not never. A rustls
//! client talks HTTP/1.1 keep-alive through the gateway to the demo upstream speaking
//! TLS, which never closes an idle connection itself.

use std::{
    net::SocketAddr,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context as _, ensure};
use gateway_tests::{
    Gateway, Process, TempDir, Upstream, curl, free_port, httpbin_config, service_with_endpoint,
    tls_client::{Liveness, TlsClient},
};

use crate::tls::{Key, Pki};

/// How long a test waits for the gateway to act on a timeout before calling it missing.
const PATIENCE: Duration = Duration::from_secs(15);
const SNI: &str = "pass.example.com";
/// A pause between requests well inside the 1 s idle timeout of the idle test.
const TALK_EVERY: Duration = Duration::from_millis(300);

struct Setup {
    gateway: Gateway,
    dir: TempDir,
    _pki_dir: TempDir,
    _backend: Process,
    backend: SocketAddr,
    _upstream: Upstream,
    upstream: SocketAddr,
    ca: PathBuf,
    /// The HTTP listener, which stays.
    http_port: u16,
    /// The passthrough listener.
    pass_port: u16,
}

/// A `PASSTHROUGH` server on `pass_port` for `pass.example.com`, routed by a VirtualService
/// `tls` route to `backend` (the demo upstream speaking TLS with that name's certificate).
fn passthrough_config(pass_port: u16, backend: SocketAddr) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: pass, namespace: default}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: {pass_port}, name: tls-pass, protocol: TLS}}
    hosts: ["{SNI}"]
    tls: {{mode: PASSTHROUGH}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: pass, namespace: default}}
spec:
  hosts: ["{SNI}"]
  gateways: [pass]
  tls:
  - match: [{{sniHosts: ["{SNI}"]}}]
    route: [{{destination: {{host: backend, port: {{number: 443}}}}}}]
---
{}"#,
        service_with_endpoint("backend", 443, backend)
    )
}

impl Setup {
    /// The HTTP listener alone (the passthrough one removed).
    fn without_passthrough(&self) -> String {
        httpbin_config(self.http_port, self.upstream)
    }

    fn with_passthrough(&self) -> String {
        format!(
            "{}{}",
            self.without_passthrough(),
            passthrough_config(self.pass_port, self.backend)
        )
    }

    fn start(extra: &[&str]) -> anyhow::Result<Self> {
        let pki_dir = TempDir::new("passthrough-pki")?;
        let pki = Pki::new(pki_dir.path(), "pass-ca")?;
        pki.issue(
            "backend",
            SNI,
            &format!("DNS:{SNI}"),
            Key::EcP256Pkcs8,
            false,
        )?;
        let (backend_process, backend) = crate::upstream_tls::tls_upstream(&pki, "backend")?;
        let upstream = Upstream::start(None, "127.0.0.1:0", "httpbin")?;
        let dir = TempDir::new("passthrough")?;
        let mut args = vec!["--ebpf", "off"];
        args.extend_from_slice(extra);
        let (http_port, pass_port) = (free_port(), free_port());
        let config = format!(
            "{}{}",
            httpbin_config(http_port, upstream.addr),
            passthrough_config(pass_port, backend)
        );
        dir.write("config.yaml", &config)?;
        let gateway = Gateway::start(dir.path(), &args, None, &dir)?;
        Ok(Setup {
            gateway,
            dir,
            _pki_dir: pki_dir,
            _backend: backend_process,
            backend,
            upstream: upstream.addr,
            _upstream: upstream,
            ca: PathBuf::from(pki.path("pass-ca.crt")),
            http_port,
            pass_port,
        })
    }

    /// A passthrough stream, handshake done with the backend itself (the client trusts
    /// only its CA), one request answered.
    fn open(&self) -> anyhow::Result<TlsClient> {
        let mut client = TlsClient::connect(
            SocketAddr::from(([127, 0, 0, 1], self.pass_port)),
            SNI,
            &self.ca,
        )
        .with_context(|| self.gateway.stderr())?;
        talk(&mut client)?;
        Ok(client)
    }
}

/// One request answered by the backend on the stream.
fn talk(client: &mut TlsClient) -> anyhow::Result<()> {
    let (status, body) = client.get("/get")?;
    ensure!(status == 200, "{status} {body}");
    ensure!(body.contains("\"upstream\": \"backend\""), "{body}");
    Ok(())
}

/// Waits up to PATIENCE for the gateway to close `client`.
fn wait_closed(client: &mut TlsClient, what: &str, gateway: &Gateway) -> anyhow::Result<()> {
    ensure!(
        client.closed_within(PATIENCE)? == Liveness::Closed,
        "{what} still open after {PATIENCE:?}\n{}",
        gateway.stderr()
    );
    Ok(())
}

#[test]
fn an_idle_passthrough_stream_is_closed_after_the_tcp_idle_timeout_a_talking_one_is_not()
-> anyhow::Result<()> {
    let setup = Setup::start(&["--tcp-idle-timeout", "1s"])?;
    let mut silent = setup.open()?;
    let mut talking = setup.open()?;
    // The talking stream keeps going while the silent one waits for its timeout.
    let deadline = Instant::now() + PATIENCE;
    while silent.closed_within(TALK_EVERY)? == Liveness::Open {
        ensure!(
            Instant::now() < deadline,
            "silent passthrough stream still open after {PATIENCE:?}\n{}",
            setup.gateway.stderr()
        );
        talk(&mut talking)?;
    }
    // Opened after the silent one and talked on past its timeout: still served.
    for _ in 0..5 {
        std::thread::sleep(TALK_EVERY);
        talk(&mut talking).context("the talking stream was closed")?;
    }
    // Once it falls silent, it goes too.
    wait_closed(&mut talking, "stream silent after talking", &setup.gateway)?;
    // The gateway itself is fine: a new stream works.
    setup.open()?;
    Ok(())
}

/// Rewrites the configuration and waits for the gateway to apply it.
fn reload(setup: &Setup, config: &str) -> anyhow::Result<()> {
    setup.gateway.reload_after(|| {
        gateway_tests::write_atomically(&setup.dir.path().join("config.yaml"), config)
    })
}

#[test]
fn a_listener_removed_by_a_reload_closes_its_passthrough_streams_at_the_drain_deadline()
-> anyhow::Result<()> {
    // Idle timeout at its default (1 h): only the drain can close the stream.
    let setup = Setup::start(&["--drain-timeout", "3s"])?;
    let mut stream = setup.open()?;
    reload(&setup, &setup.without_passthrough())?;
    // Not cut by the reload: served until the deadline.
    talk(&mut stream).context("closed by the reload, before the drain deadline")?;
    wait_closed(&mut stream, "stream of a removed listener", &setup.gateway)?;
    // The listener is gone; the gateway serves on.
    ensure!(
        TlsClient::connect(
            SocketAddr::from(([127, 0, 0, 1], setup.pass_port)),
            SNI,
            &setup.ca
        )
        .is_err(),
        "the removed listener still accepts"
    );
    let served = curl(
        None,
        &[
            "-H",
            "Host: httpbin.example.com",
            &format!("http://127.0.0.1:{}/status/200", setup.http_port),
        ],
    )?;
    ensure!(served.status == 200, "{served:?}");
    // Put back, it serves passthrough again.
    reload(&setup, &setup.with_passthrough())?;
    setup.open()?;
    Ok(())
}

/// SIGTERM: the stream is not cut at the signal, is closed, and the process exits. That
/// the close comes at the deadline rather than from the exit is what the reload test
/// proves: here the process ends right after its deadline either way.
#[test]
fn shutdown_closes_an_open_passthrough_stream_at_the_drain_deadline_and_exits() -> anyhow::Result<()>
{
    let mut setup = Setup::start(&["--drain-timeout", "3s"])?;
    let mut stream = setup.open()?;
    let pid = libc::pid_t::try_from(setup.gateway.process.child.id())?;
    // SAFETY: kill(2) has no memory-safety preconditions; the pid is our unreaped child.
    ensure!(
        unsafe { libc::kill(pid, libc::SIGTERM) } == 0,
        "kill failed"
    );
    // Draining, not cut: the stream is served until the deadline.
    talk(&mut stream).context("closed at SIGTERM, before the drain deadline")?;
    wait_closed(&mut stream, "stream at shutdown", &setup.gateway)?;
    // And the process finishes rather than waiting on the stream.
    let deadline = Instant::now() + PATIENCE;
    let status = loop {
        if let Some(status) = setup.gateway.process.child.try_wait()? {
            break status;
        }
        ensure!(
            Instant::now() < deadline,
            "gatewayd still running after the drain\n{}",
            setup.gateway.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    ensure!(status.success(), "{status}\n{}", setup.gateway.stderr());
    Ok(())
}
