//! TLS origination (DestinationRule `trafficPolicy.tls`) against real TLS upstreams:
//! `openssl s_server` with certificates from the `openssl` CLI, one that asks for no
//! client certificate and one that requires it. SIMPLE, MUTUAL from a Secret (hot-swapped),
//! an untrusted certificate and a SAN mismatch refused with 503 `UF` and counted,
//! `insecureSkipVerify`, and a TCP route to a TLS-originating cluster.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};
use gateway_tests::{
    Gateway, Process, TempDir, curl, free_port, http1::KeepAliveClient, service_with_endpoint,
    status_upstream::StatusUpstream, write_atomically,
};

use crate::tls::{Key, Pki, tls_secret};

/// `openssl s_server -www` on a free port with `name`'s certificate; `extra` adds options
/// (`-Verify 1 -CAfile …` to require a client certificate). Its page shows the client
/// certificate it got.
pub(crate) fn s_server(pki: &Pki, name: &str, extra: &[&str]) -> anyhow::Result<(Process, u16)> {
    let port = free_port();
    let mut child = Command::new("openssl")
        .args(["s_server", "-www", "-accept"])
        .arg(format!("127.0.0.1:{port}"))
        .args(["-cert", &pki.path(&format!("{name}.crt"))])
        .args(["-key", &pki.path(&format!("{name}.key"))])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting openssl s_server")?;
    let stdout = child.stdout.take().context("s_server stdout")?;
    let process = Process { child };
    let mut line = String::new();
    let mut reader = BufReader::new(stdout);
    while !line.contains("ACCEPT") {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            bail!("openssl s_server exited");
        }
    }
    std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
    Ok((process, port))
}

/// The Host of `get`'s requests, as a certificate names it: a rule without `sni` sends it
/// as SNI and checks the certificate against it (Istio's `auto_sni`).
const HOST_SAN: &str = "DNS:tls.example.com";

/// An HTTP Gateway on `bind_port` for `tls.example.com`, whose `/NAME` paths go to the
/// Service NAME port 8443, and a TCP server on `tcp_port` to `tcp_service`.
fn gateway_config(bind_port: u16, tcp_port: u16, names: &[&str], tcp_service: &str) -> String {
    let routes: String = names
        .iter()
        .map(|name| {
            format!(
                "  - match: [{{uri: {{prefix: /{name}}}}}]\n    route: [{{destination: {{host: {name}, port: {{number: 8443}}}}}}]\n"
            )
        })
        .collect();
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: gw, namespace: default}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 80, name: http, protocol: HTTP}}
    hosts: ["tls.example.com"]
  - port: {{number: 9000, name: tcp, protocol: TCP}}
    hosts: ["*"]
---
apiVersion: v1
kind: Service
metadata: {{name: istio-ingressgateway, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  ports:
  - {{name: http, port: 80, targetPort: {bind_port}}}
  - {{name: tcp, port: 9000, targetPort: {tcp_port}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: routes, namespace: default}}
spec:
  hosts: ["tls.example.com"]
  gateways: [gw]
  http:
{routes}---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: tcp, namespace: default}}
spec:
  hosts: ["*"]
  gateways: [gw]
  tcp:
  - route: [{{destination: {{host: {tcp_service}, port: {{number: 8443}}}}}}]
---
"#
    )
}

fn destination_rule(host: &str, tls: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: {host}, namespace: default}}\nspec:\n  host: {host}\n  trafficPolicy:\n    tls: {tls}\n---\n"
    )
}

fn get(bind_port: u16, path: &str) -> anyhow::Result<gateway_tests::CurlResponse> {
    curl(
        None,
        &[
            "-H",
            "Host: tls.example.com",
            &format!("http://127.0.0.1:{bind_port}{path}"),
        ],
    )
}

fn handshake_errors(gateway: &Gateway, service: &str, reason: &str) -> anyhow::Result<f64> {
    Ok(gateway
        .metric(&format!(
            "gateway_upstream_tls_handshake_errors_total{{cluster=\"outbound|8443||{service}.default.svc.cluster.local\",reason=\"{reason}\"}}"
        ))?
        .unwrap_or(0.0))
}

#[test]
fn destination_rule_tls_originates_verifies_and_refuses_with_uf() -> anyhow::Result<()> {
    let dir = TempDir::new("upstream-tls")?;
    let pki_dir = TempDir::new("upstream-tls-pki")?;
    let pki = Pki::new(pki_dir.path(), "upstream-ca")?;
    let other = Pki::new(pki_dir.path(), "other-ca")?;
    let names = [
        "simple",
        "untrusted",
        "san",
        "skip",
        "mtls",
        "nocert",
        "tcp",
        "wildcard",
        "deep",
    ];
    // And a wildcard name, which covers one label under it, and the Host the requests
    // carry: without `sni` the certificate must name it (`auto_san_validation`); the
    // destination hosts are the names of TCP routes.
    let sans: Vec<String> = names
        .iter()
        .map(|n| format!("DNS:{n}.default.svc.cluster.local"))
        .chain(["DNS:*.wild.example.com".to_owned(), HOST_SAN.to_owned()])
        .collect();
    pki.issue(
        "backend",
        "backend",
        &sans.join(","),
        Key::EcP256Pkcs8,
        false,
    )?;
    // Client certificates the MUTUAL upstream trusts (another CA signs them).
    let (client_a, client_a_key) = other.issue(
        "client-a",
        "client-a",
        "DNS:client-a",
        Key::EcP256Pkcs8,
        true,
    )?;
    let (client_b, client_b_key) = other.issue(
        "client-b",
        "client-b",
        "DNS:client-b",
        Key::EcP256Pkcs8,
        true,
    )?;
    let (_plain, plain_port) = s_server(&pki, "backend", &[])?;
    let other_ca = other.path("other-ca.crt");
    let (_mutual, mutual_port) =
        s_server(&pki, "backend", &["-Verify", "1", "-CAfile", &other_ca])?;

    let (bind_port, tcp_port) = (free_port(), free_port());
    let ca = pki.path("upstream-ca.crt");
    let mut config = gateway_config(bind_port, tcp_port, &names, "tcp");
    for name in names {
        let port = if matches!(name, "mtls" | "nocert") {
            mutual_port
        } else {
            plain_port
        };
        config += &service_with_endpoint(name, 8443, ([127, 0, 0, 1], port).into());
    }
    config += &destination_rule("simple", &format!("{{mode: SIMPLE, caCertificates: {ca}}}"));
    config += &destination_rule("tcp", &format!("{{mode: SIMPLE, caCertificates: {ca}}}"));
    // Signed by a CA the rule does not trust.
    config += &destination_rule(
        "untrusted",
        &format!("{{mode: SIMPLE, caCertificates: {other_ca}}}"),
    );
    config += &destination_rule(
        "san",
        &format!("{{mode: SIMPLE, caCertificates: {ca}, subjectAltNames: [nobody.example.com]}}"),
    );
    config += &destination_rule(
        "wildcard",
        &format!("{{mode: SIMPLE, caCertificates: {ca}, subjectAltNames: [API.wild.example.com]}}"),
    );
    config += &destination_rule(
        "deep",
        &format!("{{mode: SIMPLE, caCertificates: {ca}, subjectAltNames: [a.b.wild.example.com]}}"),
    );
    config += &destination_rule(
        "skip",
        &format!("{{mode: SIMPLE, caCertificates: {other_ca}, insecureSkipVerify: true}}"),
    );
    config += &destination_rule("mtls", "{mode: MUTUAL, credentialName: mtls-client}");
    config += &destination_rule("nocert", &format!("{{mode: SIMPLE, caCertificates: {ca}}}"));
    let upstream_ca = pki.ca_pem()?;
    let secret = |cert: &str, key: &str| {
        tls_secret("mtls-client", "istio-system", cert, key, Some(&upstream_ca))
    };
    let config_dir = TempDir::new("upstream-tls-config")?;
    config_dir.write("gateway.yaml", &config)?;
    let secret_path = config_dir.write("secret.yaml", &secret(&client_a, &client_a_key))?;
    let gateway = Gateway::start(config_dir.path(), &["--ebpf", "off"], None, &dir)?;

    // SIMPLE: the upstream speaks TLS only; the gateway verified it and got the page.
    let simple = get(bind_port, "/simple")?;
    assert_eq!(simple.status, 200, "{simple:?}\n{}", gateway.stderr());
    assert!(simple.body.contains("s_server"), "{}", simple.body);
    assert!(
        !simple.body.contains("Client certificate"),
        "{}",
        simple.body
    );
    assert!(simple.body.contains("New, TLSv1.3"), "{}", simple.body);
    // s_server -www closes after each answer: the next connection resumes the session.
    let resumed = get(bind_port, "/simple")?;
    assert_eq!(resumed.status, 200, "{resumed:?}");
    assert!(resumed.body.contains("Reused, TLSv1.3"), "{}", resumed.body);

    // A certificate from a CA the rule does not trust: 503 UF, Envoy's text, counted.
    let untrusted = get(bind_port, "/untrusted")?;
    assert_eq!(untrusted.status, 503, "{untrusted:?}");
    assert!(
        untrusted.body.starts_with(
            "upstream connect error or disconnect/reset before headers. reset reason: connection failure, transport failure reason: TLS_error:"
        ) && untrusted.body.contains("CERTIFICATE_VERIFY_FAILED"),
        "{}",
        untrusted.body
    );
    assert!(handshake_errors(&gateway, "untrusted", "certificate_untrusted")? >= 1.0);

    // The right CA but none of the subjectAltNames asked for.
    let san = get(bind_port, "/san")?;
    assert_eq!(san.status, 503, "{san:?}");
    assert!(
        san.body.contains("CERTIFICATE_VERIFY_FAILED"),
        "{}",
        san.body
    );
    assert!(handshake_errors(&gateway, "san", "name_mismatch")? >= 1.0);

    // A wildcard certificate names each host one label under it, case aside, as
    // Envoy's DNS SAN matching has it; not two labels under it.
    let wildcard = get(bind_port, "/wildcard")?;
    assert_eq!(wildcard.status, 200, "{wildcard:?}\n{}", gateway.stderr());
    let deep = get(bind_port, "/deep")?;
    assert_eq!(deep.status, 503, "{deep:?}");
    assert!(handshake_errors(&gateway, "deep", "name_mismatch")? >= 1.0);

    // insecureSkipVerify: the untrusted certificate is accepted.
    let skip = get(bind_port, "/skip")?;
    assert_eq!(skip.status, 200, "{skip:?}");

    // MUTUAL from the Secret: the upstream that requires a client certificate got ours.
    let mtls = get(bind_port, "/mtls")?;
    assert_eq!(mtls.status, 200, "{mtls:?}\n{}", gateway.stderr());
    assert!(mtls.body.contains("CN=client-a"), "{}", mtls.body);

    // Without a client certificate that upstream refuses us. With TLS 1.3 the refusal
    // comes after our side of the handshake, once the request is being written: the
    // request fails as a connection termination (503 UC), with the alert as Envoy's
    // transport failure reason (asserted loosely: a close that resets the connection
    // before the alert is read would leave only the termination).
    let nocert = get(bind_port, "/nocert")?;
    assert_eq!(nocert.status, 503, "{nocert:?}");
    eprintln!("missing client certificate: {:?}", nocert.body);
    assert!(
        nocert.body.contains("reset reason: connection termination"),
        "{}",
        nocert.body
    );

    // The access log has the flags (UF, and URX: Istio retries connect failures twice by
    // default) and the reason, where Envoy's default format puts them.
    let log = gateway.access_log();
    let line = log
        .lines()
        .find(|l| l.contains("GET /untrusted"))
        .with_context(|| format!("no access log line for /untrusted:\n{log}"))?;
    assert!(
        line.contains(" 503 UF,URX - \"TLS_error:|") && line.contains("CERTIFICATE_VERIFY_FAILED"),
        "{line}"
    );

    // A TCP route to a TLS-originating cluster: the bytes arrive decrypted by the gateway
    // (the client speaks plain HTTP to the TCP port, the upstream only TLS).
    let tcp = curl(None, &[&format!("http://127.0.0.1:{tcp_port}/tcp")])?;
    assert_eq!(tcp.status, 200, "{tcp:?}");
    assert!(tcp.body.contains("s_server"), "{}", tcp.body);

    // The credential Secret rotated: the next connection presents the new certificate.
    gateway.reload_after(|| write_atomically(&secret_path, &secret(&client_b, &client_b_key)))?;
    let rotated = get(bind_port, "/mtls")?;
    assert_eq!(rotated.status, 200, "{rotated:?}");
    assert!(rotated.body.contains("CN=client-b"), "{}", rotated.body);
    Ok(())
}

/// A DestinationRule asking for TLS that does not parse fails closed: its host's
/// connections are refused (503 UF), the plaintext backend behind it never sees a
/// request; fixed, TLS works again.
#[test]
fn a_destination_rule_asking_for_tls_that_does_not_parse_fails_closed() -> anyhow::Result<()> {
    let dir = TempDir::new("upstream-tls-broken")?;
    let pki_dir = TempDir::new("upstream-tls-broken-pki")?;
    let pki = Pki::new(pki_dir.path(), "upstream-ca")?;
    pki.issue(
        "backend",
        "backend",
        &format!("DNS:broken.default.svc.cluster.local,{HOST_SAN}"),
        Key::EcP256Pkcs8,
        false,
    )?;
    let (_tls, tls_port) = s_server(&pki, "backend", &[])?;
    let plain = StatusUpstream::start("plaintext", 200)?;
    let ca = pki.path("upstream-ca.crt");
    let (bind_port, tcp_port) = (free_port(), free_port());
    let config = |endpoint: u16, mode: &str| {
        gateway_config(bind_port, tcp_port, &["broken"], "broken")
            + &service_with_endpoint("broken", 8443, ([127, 0, 0, 1], endpoint).into())
            + &destination_rule("broken", &format!("{{mode: {mode}, caCertificates: {ca}}}"))
    };
    let config_dir = TempDir::new("upstream-tls-broken-config")?;
    // The mode misspelt: the rule does not parse.
    let file = config_dir.write("gateway.yaml", &config(plain.addr.port(), "SIMPEL"))?;
    let gateway = Gateway::start(config_dir.path(), &["--ebpf", "off"], None, &dir)?;
    let refused = get(bind_port, "/broken")?;
    assert_eq!(refused.status, 503, "{refused:?}\n{}", gateway.stderr());
    let tcp = curl(None, &[&format!("http://127.0.0.1:{tcp_port}/broken")]);
    assert!(tcp.is_err(), "the TCP route is refused too: {tcp:?}");
    assert_eq!(plain.requests(), 0, "plaintext reached the backend");
    let log = gateway.access_log();
    let line = log
        .lines()
        .find(|l| l.contains("GET /broken"))
        .with_context(|| format!("no access log line for /broken:\n{log}"))?;
    assert!(line.contains(" 503 UF"), "{line}");
    let stderr = gateway.stderr();
    assert!(
        stderr.contains("DestinationRule default/broken")
            && stderr.contains("spec.trafficPolicy.tls.mode")
            && stderr.contains("fails closed"),
        "{stderr}"
    );

    // Fixed, the Service's endpoint now the TLS backend: TLS again.
    gateway.reload_after(|| write_atomically(&file, &config(tls_port, "SIMPLE")))?;
    let ok = get(bind_port, "/broken")?;
    assert_eq!(ok.status, 200, "{ok:?}\n{}", gateway.stderr());
    assert!(ok.body.contains("s_server"), "{}", ok.body);
    assert_eq!(plain.requests(), 0);
    Ok(())
}

/// The demo upstream speaking TLS only (ALPN `h2`, `http/1.1`) with `name`'s certificate.
pub(crate) fn tls_upstream(
    pki: &Pki,
    name: &str,
) -> anyhow::Result<(Process, std::net::SocketAddr)> {
    let mut child = Command::new(gateway_tests::binary("DEMO_UPSTREAM_BIN", "demo-upstream"))
        .args(["--listen", "127.0.0.1:0", "--name", name])
        .args(["--tls-cert", &pki.path(&format!("{name}.crt"))])
        .args(["--tls-key", &pki.path(&format!("{name}.key"))])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting demo-upstream")?;
    let stdout = child.stdout.take().context("upstream stdout")?;
    let process = Process { child };
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .with_context(|| format!("unexpected upstream output {line:?}"))?
        .parse()?;
    Ok((process, addr))
}

#[test]
fn http2_clusters_negotiate_h2_over_tls_and_http1_clusters_http1() -> anyhow::Result<()> {
    let dir = TempDir::new("upstream-tls-h2")?;
    let pki_dir = TempDir::new("upstream-tls-h2-pki")?;
    let pki = Pki::new(pki_dir.path(), "upstream-ca")?;
    pki.issue(
        "backend",
        "backend",
        &format!("DNS:h2.default.svc.cluster.local,DNS:h1.default.svc.cluster.local,{HOST_SAN}"),
        Key::EcP256Pkcs8,
        false,
    )?;
    let (_upstream, addr) = tls_upstream(&pki, "backend")?;
    let (bind_port, tcp_port) = (free_port(), free_port());
    let ca = pki.path("upstream-ca.crt");
    let mut config = gateway_config(bind_port, tcp_port, &["h2", "h1"], "h1");
    // `http2` port name: an HTTP/2 cluster, which offers only h2 by ALPN.
    config += &gateway_tests::service("h2", 8443, "http2");
    config += &gateway_tests::endpoint_slices("h2", "http2", &[addr]);
    config += &service_with_endpoint("h1", 8443, addr);
    for name in ["h2", "h1"] {
        config += &destination_rule(name, &format!("{{mode: SIMPLE, caCertificates: {ca}}}"));
    }
    let config_dir = TempDir::new("upstream-tls-h2-config")?;
    config_dir.write("gateway.yaml", &config)?;
    let gateway = Gateway::start(config_dir.path(), &["--ebpf", "off"], None, &dir)?;

    for _ in 0..3 {
        let h2 = get(bind_port, "/h2")?;
        assert_eq!(h2.status, 200, "{h2:?}\n{}", gateway.stderr());
        assert_eq!(h2.json()?["version"], "HTTP/2.0", "{}", h2.body);
    }
    let h1 = get(bind_port, "/h1")?;
    assert_eq!(h1.status, 200, "{h1:?}");
    assert_eq!(h1.json()?["version"], "HTTP/1.1", "{}", h1.body);
    Ok(())
}

/// A Secret volume as kubelet lays it out: `dir/tls.crt → ..data/tls.crt`, `..data → ..vN`;
/// each version written aside, then `..data` renamed over, so both files change at once.
fn publish_volume(
    dir: &std::path::Path,
    version: u32,
    cert: &str,
    key: &str,
) -> anyhow::Result<()> {
    use std::os::unix::fs::symlink;
    let versioned = dir.join(format!("..v{version}"));
    std::fs::create_dir(&versioned)?;
    std::fs::write(versioned.join("tls.crt"), cert)?;
    std::fs::write(versioned.join("tls.key"), key)?;
    let tmp = dir.join("..data_tmp");
    symlink(format!("..v{version}"), &tmp)?;
    std::fs::rename(&tmp, dir.join("..data"))?;
    for name in ["tls.crt", "tls.key"] {
        let link = dir.join(name);
        if link.symlink_metadata().is_err() {
            symlink(format!("..data/{name}"), link)?;
        }
    }
    Ok(())
}

/// MUTUAL with `clientCertificate`/`privateKey` files outside the configuration (a Secret
/// volume, no `--watch`): a rotated volume is followed by the next connection without a
/// SIGHUP, and a broken version keeps the last good certificate in use (reported as a
/// partial reload and a credential error).
#[test]
fn client_certificate_files_are_followed_and_a_broken_version_keeps_the_last_good()
-> anyhow::Result<()> {
    let dir = TempDir::new("upstream-tls-files")?;
    let pki_dir = TempDir::new("upstream-tls-files-pki")?;
    let pki = Pki::new(pki_dir.path(), "upstream-ca")?;
    let other = Pki::new(pki_dir.path(), "client-ca")?;
    let host = "mtlsfile.default.svc.cluster.local";
    pki.issue(
        "backend",
        "backend",
        &format!("DNS:{host},{HOST_SAN}"),
        Key::EcP256Pkcs8,
        false,
    )?;
    let (client_a, client_a_key) = other.issue(
        "client-a",
        "client-a",
        "DNS:client-a",
        Key::EcP256Pkcs8,
        true,
    )?;
    let (client_b, client_b_key) = other.issue(
        "client-b",
        "client-b",
        "DNS:client-b",
        Key::EcP256Pkcs8,
        true,
    )?;
    let client_ca = other.path("client-ca.crt");
    let (_mutual, mutual_port) =
        s_server(&pki, "backend", &["-Verify", "1", "-CAfile", &client_ca])?;

    let volume = TempDir::new("upstream-tls-files-volume")?;
    publish_volume(volume.path(), 1, &client_a, &client_a_key)?;
    let (cert, key) = (
        volume.path().join("tls.crt").display().to_string(),
        volume.path().join("tls.key").display().to_string(),
    );
    let (bind_port, tcp_port) = (free_port(), free_port());
    let mut config = gateway_config(bind_port, tcp_port, &["mtlsfile"], "mtlsfile");
    config += &service_with_endpoint("mtlsfile", 8443, ([127, 0, 0, 1], mutual_port).into());
    config += &destination_rule(
        "mtlsfile",
        &format!(
            "{{mode: MUTUAL, clientCertificate: {cert}, privateKey: {key}, caCertificates: {}}}",
            pki.path("upstream-ca.crt")
        ),
    );
    let config_dir = TempDir::new("upstream-tls-files-config")?;
    config_dir.write("gateway.yaml", &config)?;
    let gateway = Gateway::start(config_dir.path(), &["--ebpf", "off"], None, &dir)?;

    let presented = |cn: &str| -> anyhow::Result<()> {
        let response = get(bind_port, "/mtlsfile")?;
        assert_eq!(response.status, 200, "{response:?}\n{}", gateway.stderr());
        assert!(
            response.body.contains(&format!("CN={cn}")),
            "{}",
            response.body
        );
        Ok(())
    };
    presented("client-a")?;

    // kubelet rotates the volume: followed without a SIGHUP or --watch.
    gateway.reload_after(|| publish_volume(volume.path(), 2, &client_b, &client_b_key))?;
    presented("client-b")?;

    // A broken version (the certificate cut short): the reload applies everything else,
    // the credential is reported, and the last good certificate is still presented.
    let partial = gateway.reloads("partial")?;
    publish_volume(volume.path(), 3, &client_b[..40], &client_b_key)?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while gateway.reloads("partial")? <= partial {
        assert!(
            std::time::Instant::now() < deadline,
            "no partial reload after the broken version:\n{}",
            gateway.stderr()
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let errors = gateway
        .metric(&format!(
            "gateway_tls_credential_errors_total{{credential=\"file {cert} (key {key})\"}}"
        ))?
        .unwrap_or(0.0);
    assert!(errors >= 1.0, "the broken credential is counted");
    presented("client-b")?;
    Ok(())
}

/// Istio's `auto_sni` and `auto_san_validation` (a DestinationRule without `sni`), in the
/// egress case they serve: a ServiceEntry `*.wiki.example` whose requests each go with
/// their own Host as SNI and are verified against it. The TLS upstream reports the SNI
/// of the connection a request came on and that connection's address; an `openssl
/// s_server` refuses any SNI but `de.wiki.example`.
#[test]
fn without_sni_each_request_goes_with_its_host_as_sni_and_is_verified_against_it()
-> anyhow::Result<()> {
    let dir = TempDir::new("upstream-tls-auto-sni")?;
    let pki_dir = TempDir::new("upstream-tls-auto-sni-pki")?;
    let pki = Pki::new(pki_dir.path(), "upstream-ca")?;
    // Neither fr.wiki.example nor any destination host.
    pki.issue(
        "wiki",
        "wiki",
        "DNS:en.wiki.example,DNS:de.wiki.example",
        Key::EcP256Pkcs8,
        false,
    )?;
    let (_upstream, addr) = tls_upstream(&pki, "wiki")?;
    let (cert, key) = (pki.path("wiki.crt"), pki.path("wiki.key"));
    let (_strict, strict_port) = s_server(
        &pki,
        "wiki",
        &[
            "-servername",
            "de.wiki.example",
            "-servername_fatal",
            "-cert2",
            &cert,
            "-key2",
            &key,
        ],
    )?;
    let ca = pki.path("upstream-ca.crt");
    let (bind_port, port) = (free_port(), addr.port());
    let (wild_tcp_port, named_tcp_port) = (free_port(), free_port());
    let mut config = format!(
        r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: gw, namespace: default}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - {{port: {{number: 80, name: http, protocol: HTTP}}, hosts: ["*.wiki.example"]}}
  - {{port: {{number: 9000, name: tcp-wild, protocol: TCP}}, hosts: ["*"]}}
  - {{port: {{number: 9001, name: tcp-named, protocol: TCP}}, hosts: ["*"]}}
---
apiVersion: v1
kind: Service
metadata: {{name: istio-ingressgateway, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  ports:
  - {{name: http, port: 80, targetPort: {bind_port}}}
  - {{name: tcp-wild, port: 9000, targetPort: {wild_tcp_port}}}
  - {{name: tcp-named, port: 9001, targetPort: {named_tcp_port}}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: named, namespace: default}}
spec:
  hosts: [tcp.example.org]
  location: MESH_EXTERNAL
  ports: [{{number: 443, name: tls, protocol: TCP}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{tls: {port}}}}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: named, namespace: default}}
spec:
  host: tcp.example.org
  trafficPolicy:
    tls: {{mode: SIMPLE, caCertificates: {ca}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: tcp, namespace: default}}
spec:
  hosts: ["*"]
  gateways: [gw]
  tcp:
  - match: [{{port: 9000}}]
    route: [{{destination: {{host: "*.wiki.example", port: {{number: 443}}}}}}]
  - match: [{{port: 9001}}]
    route: [{{destination: {{host: tcp.example.org, port: {{number: 443}}}}}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: wiki, namespace: default}}
spec:
  hosts: ["*.wiki.example"]
  location: MESH_EXTERNAL
  ports:
  - {{number: 443, name: http, protocol: HTTP}}
  - {{number: 8443, name: http2, protocol: HTTP2}}
  resolution: NONE
  endpoints: [{{address: 127.0.0.1, ports: {{http: {port}, http2: {port}}}}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: wiki, namespace: default}}
spec:
  host: "*.wiki.example"
  trafficPolicy:
    tls: {{mode: SIMPLE, caCertificates: {ca}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: wiki, namespace: default}}
spec:
  hosts: ["*.wiki.example"]
  gateways: [gw]
  http:
  - match: [{{uri: {{prefix: /h2}}}}]
    route: [{{destination: {{host: "*.wiki.example", port: {{number: 8443}}}}}}]
  - match: [{{uri: {{prefix: /rewritten}}}}]
    rewrite: {{authority: de.wiki.example}}
    route: [{{destination: {{host: "*.wiki.example", port: {{number: 443}}}}}}]
  - match: [{{uri: {{prefix: /strict}}}}]
    route: [{{destination: {{host: strict, port: {{number: 8443}}}}}}]
  - route: [{{destination: {{host: "*.wiki.example", port: {{number: 443}}}}}}]
---
"#
    );
    config += &service_with_endpoint("strict", 8443, ([127, 0, 0, 1], strict_port).into());
    config += &destination_rule("strict", &format!("{{mode: SIMPLE, caCertificates: {ca}}}"));
    let config_dir = TempDir::new("upstream-tls-auto-sni-config")?;
    config_dir.write("gateway.yaml", &config)?;
    let gateway = Gateway::start(config_dir.path(), &["--ebpf", "off"], None, &dir)?;
    let request = |host: &str, path: &str| {
        curl(
            None,
            &[
                "-H",
                &format!("Host: {host}"),
                &format!("http://127.0.0.1:{bind_port}{path}"),
            ],
        )
    };

    // One client connection, so one worker and its pool: the SNI each request's upstream
    // connection carried, and which connection that was.
    let mut client = KeepAliveClient::connect(([127, 0, 0, 1], bind_port).into(), "-")?;
    let mut seen = |host: &str| -> anyhow::Result<(String, String)> {
        client.set_host(host);
        let response = client.get("/wiki")?;
        assert_eq!(
            response.status,
            200,
            "{host}: {response:?}\n{}",
            gateway.stderr()
        );
        let json = response.json()?;
        assert_eq!(json["host"], host, "{}", response.body);
        Ok((
            json["sni"].as_str().unwrap_or("none").to_owned(),
            json["client"].as_str().unwrap_or_default().to_owned(),
        ))
    };
    let (en_sni, en_connection) = seen("en.wiki.example")?;
    assert_eq!(en_sni, "en.wiki.example");
    let (de_sni, de_connection) = seen("de.wiki.example")?;
    assert_eq!(de_sni, "de.wiki.example");
    assert_ne!(de_connection, en_connection, "de went on en's connection");
    // Each host's connection carries its next requests; a port is no part of the name.
    assert_eq!(seen("en.wiki.example")?, (en_sni, en_connection));
    assert_eq!(seen("de.wiki.example:80")?.0, "de.wiki.example");

    // HTTP/2 (ALPN h2) the same.
    for host in ["en.wiki.example", "de.wiki.example"] {
        let h2 = request(host, "/h2")?;
        assert_eq!(h2.status, 200, "{h2:?}\n{}", gateway.stderr());
        let json = h2.json()?;
        assert_eq!(json["version"], "HTTP/2.0", "{}", h2.body);
        assert_eq!(json["sni"], host, "{}", h2.body);
    }

    // The host after the route's rewrite, as Envoy's router takes it.
    let rewritten = request("en.wiki.example", "/rewritten")?;
    assert_eq!(rewritten.status, 200, "{rewritten:?}");
    assert_eq!(
        rewritten.json()?["sni"],
        "de.wiki.example",
        "{}",
        rewritten.body
    );

    // A host the certificate does not name: 503 UF, counted as a name mismatch.
    let fr = request("fr.wiki.example", "/wiki")?;
    assert_eq!(fr.status, 503, "{fr:?}");
    assert!(fr.body.contains("CERTIFICATE_VERIFY_FAILED"), "{}", fr.body);
    let mismatches = gateway
        .metric("gateway_upstream_tls_handshake_errors_total{cluster=\"outbound|443||*.wiki.example\",reason=\"name_mismatch\"}")?
        .unwrap_or(0.0);
    assert!(mismatches >= 1.0, "{mismatches}");

    // The backend that accepts de.wiki.example only: de's requests reach it, en's
    // (which its certificate names too) are refused in the handshake.
    let strict = request("de.wiki.example", "/strict")?;
    assert_eq!(strict.status, 200, "{strict:?}\n{}", gateway.stderr());
    assert!(strict.body.contains("s_server"), "{}", strict.body);
    let refused = request("en.wiki.example", "/strict")?;
    assert_eq!(refused.status, 503, "{refused:?}");
    assert!(refused.body.contains("TLS_error"), "{}", refused.body);

    // TCP routes have no request host: without `sni` they send no SNI and the chain alone
    // is checked, as Envoy's TCP proxy does, whether the destination host is a wildcard
    // or a name the certificate lacks (tcp.example.org). The client speaks plain HTTP.
    for tcp_port in [wild_tcp_port, named_tcp_port] {
        let tcp = curl(
            None,
            &[
                "-H",
                "Host: fr.wiki.example",
                &format!("http://127.0.0.1:{tcp_port}/tcp"),
            ],
        )?;
        assert_eq!(tcp.status, 200, "{tcp_port}: {tcp:?}\n{}", gateway.stderr());
        assert_eq!(tcp.json()?["sni"], serde_json::Value::Null, "{}", tcp.body);
    }
    Ok(())
}

/// A ServiceEntry's `subjectAltNames` are checked when the DestinationRule's `tls` has
/// none (Istio's `constructUpstreamTLS`, SIMPLE and MUTUAL). Istio sets
/// `auto_san_validation` from the rule alone, before it takes them, so without `sni` the
/// request's host is checked as well: Envoy checks its SAN list and its matchers each.
#[test]
fn a_service_entrys_subject_alt_names_are_checked_when_the_rule_has_none() -> anyhow::Result<()> {
    let dir = TempDir::new("upstream-tls-entry-sans")?;
    let pki_dir = TempDir::new("upstream-tls-entry-sans-pki")?;
    let pki = Pki::new(pki_dir.path(), "upstream-ca")?;
    pki.issue(
        "origin",
        "origin",
        "DNS:www.origin.example,DNS:backend.origin.internal",
        Key::EcP256Pkcs8,
        false,
    )?;
    let (_upstream, addr) = tls_upstream(&pki, "origin")?;
    let ca = pki.path("upstream-ca.crt");
    let (bind_port, port) = (free_port(), addr.port());
    let entry = |host: &str, sans: &str, tls: &str| {
        format!(
            r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {host}, namespace: default}}
spec:
  hosts: ["{host}"]
  location: MESH_EXTERNAL
  ports: [{{number: 443, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{http: {port}}}}}]
  subjectAltNames: [{sans}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: {host}, namespace: default}}
spec:
  host: "{host}"
  trafficPolicy:
    tls: {{mode: SIMPLE, caCertificates: {ca}{tls}}}
---
"#
        )
    };
    let mut config = format!(
        r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: gw, namespace: default}}
spec:
  selector: {{istio: ingressgateway}}
  servers: [{{port: {{number: 80, name: http, protocol: HTTP}}, hosts: ["*.origin.example"]}}]
---
apiVersion: v1
kind: Service
metadata: {{name: istio-ingressgateway, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  ports: [{{name: http, port: 80, targetPort: {bind_port}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: origin, namespace: default}}
spec:
  hosts: ["*.origin.example"]
  gateways: [gw]
  http:
  - match: [{{uri: {{prefix: /named}}}}]
    route: [{{destination: {{host: named.example}}}}]
  - match: [{{uri: {{prefix: /unnamed}}}}]
    route: [{{destination: {{host: unnamed.example}}}}]
  - match: [{{uri: {{prefix: /pinned}}}}]
    route: [{{destination: {{host: pinned.example}}}}]
  - match: [{{uri: {{prefix: /overridden}}}}]
    route: [{{destination: {{host: overridden.example}}}}]
---
"#
    );
    // The certificate carries the entry's name; it does not; an explicit `sni` (no
    // auto_san_validation) leaves the entry's names alone checked; the rule's own win.
    config += &entry("named.example", "backend.origin.internal", "");
    config += &entry("unnamed.example", "elsewhere.origin.internal", "");
    config += &entry(
        "pinned.example",
        "elsewhere.origin.internal",
        ", sni: www.origin.example",
    );
    config += &entry(
        "overridden.example",
        "elsewhere.origin.internal",
        ", subjectAltNames: [backend.origin.internal]",
    );
    let config_dir = TempDir::new("upstream-tls-entry-sans-config")?;
    config_dir.write("gateway.yaml", &config)?;
    let gateway = Gateway::start(config_dir.path(), &["--ebpf", "off"], None, &dir)?;
    let request = |host: &str, path: &str| {
        curl(
            None,
            &[
                "-H",
                &format!("Host: {host}"),
                &format!("http://127.0.0.1:{bind_port}{path}"),
            ],
        )
    };
    let refused = |host: &str, path: &str, cluster: &str| -> anyhow::Result<()> {
        let response = request(host, path)?;
        assert_eq!(response.status, 503, "{host}{path}: {response:?}");
        assert!(
            response.body.contains("CERTIFICATE_VERIFY_FAILED"),
            "{host}{path}: {}",
            response.body
        );
        let mismatches = gateway
            .metric(&format!("gateway_upstream_tls_handshake_errors_total{{cluster=\"outbound|443||{cluster}\",reason=\"name_mismatch\"}}"))?
            .unwrap_or(0.0);
        assert!(mismatches >= 1.0, "{cluster}: {mismatches}");
        Ok(())
    };

    let named = request("www.origin.example", "/named")?;
    assert_eq!(named.status, 200, "{named:?}\n{}", gateway.stderr());
    assert_eq!(named.json()?["sni"], "www.origin.example", "{}", named.body);
    let overridden = request("www.origin.example", "/overridden")?;
    assert_eq!(overridden.status, 200, "{overridden:?}");
    // The certificate names the host but none of the entry's names.
    refused("www.origin.example", "/unnamed", "unnamed.example")?;
    refused("www.origin.example", "/pinned", "pinned.example")?;
    // It carries the entry's name but not the host, which is checked too.
    refused("other.origin.example", "/named", "named.example")?;
    Ok(())
}
