//! Hostile clients and bad credentials: trust. A TLS session from a port that asks no
//! client certificate must not resume on one that requires it; a broken Secret update
//! must leave the last good certificate serving (and say so); key material never shows
//! in a diagnostic; a certificate "file" that never ends is refused.

use std::{
    io::Write as _,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use gateway_tests::{Gateway, TempDir, Upstream, free_port, gatewayd_bin, service_with_endpoint};

use crate::tls::{Key, Pki, tls_secret, validate};

const HOST: &str = "shared.example.com";

/// Our Service with one bind port per Gateway port, and the demo upstream as `httpbin`.
fn service(ports: &[(u16, u16)], upstream: std::net::SocketAddr) -> String {
    let ports: String = ports
        .iter()
        .map(|(port, bind)| format!("  - {{name: p{port}, port: {port}, targetPort: {bind}}}\n"))
        .collect();
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: istio-ingressgateway, namespace: istio-system}}\nspec:\n  selector: {{istio: ingressgateway}}\n  ports:\n{ports}---\n{}",
        service_with_endpoint("httpbin", 8000, upstream)
    )
}

/// A VirtualService routing every host of Gateway `web` to httpbin.
const ROUTES: &str = r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: httpbin, namespace: default}
spec:
  hosts: ["*"]
  gateways: [web]
  http:
  - route:
    - destination: {host: httpbin, port: {number: 8000}}
---
"#;

/// `openssl s_client` sending one HTTP/1.1 request and reading until the gateway closes;
/// stdout and stderr together. `timeout` keeps a stuck handshake from hanging the test.
fn s_client(port: u16, args: &[&str]) -> anyhow::Result<String> {
    let mut child = Command::new("timeout")
        .args(["20", "openssl", "s_client", "-ign_eof", "-connect"])
        .arg(format!("127.0.0.1:{port}"))
        .args(["-servername", HOST])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running openssl s_client")?;
    if let Some(mut stdin) = child.stdin.take() {
        let request = format!("GET /get HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n");
        // The handshake may fail before s_client reads its input.
        let _ = stdin.write_all(request.as_bytes());
    }
    let out = child.wait_with_output()?;
    Ok(format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

fn reused(output: &str) -> bool {
    output.lines().any(|l| l.starts_with("Reused, "))
}

fn served(output: &str) -> bool {
    output.contains("HTTP/1.1 200")
}

/// A SIMPLE and a MUTUAL server for the same name on two ports, with the same
/// certificate: a session the SIMPLE port issued (no client certificate) must not get a
/// request served on the MUTUAL port, in TLS 1.3 and in TLS 1.2 with tickets or session
/// IDs; sessions still resume within one policy.
#[test]
fn a_session_from_a_simple_port_does_not_resume_on_a_mutual_port() -> anyhow::Result<()> {
    let dir = TempDir::new("trust-resume")?;
    let pki_dir = TempDir::new("trust-resume-pki")?;
    let pki = Pki::new(pki_dir.path(), "trust-ca")?;
    let (crt, key) = pki.issue(
        "server",
        HOST,
        &format!("DNS:{HOST}"),
        Key::EcP256Pkcs8,
        false,
    )?;
    pki.issue(
        "client",
        "client",
        "URI:spiffe://example.org/client",
        Key::EcP256Pkcs8,
        true,
    )?;
    let upstream = Upstream::start(None, "127.0.0.1:0", "httpbin")?;
    let (simple_port, mutual_port) = (free_port(), free_port());
    let mut config = service(&[(443, simple_port), (8443, mutual_port)], upstream.addr);
    config += &tls_secret("simple-cred", "istio-system", &crt, &key, None);
    config += &tls_secret(
        "mutual-cred",
        "istio-system",
        &crt,
        &key,
        Some(&pki.ca_pem()?),
    );
    config += &format!(
        r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: web, namespace: default}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 443, name: https-simple, protocol: HTTPS}}
    hosts: ["{HOST}"]
    tls: {{mode: SIMPLE, credentialName: simple-cred}}
  - port: {{number: 8443, name: https-mutual, protocol: HTTPS}}
    hosts: ["{HOST}"]
    tls: {{mode: MUTUAL, credentialName: mutual-cred}}
---
{ROUTES}"#
    );
    dir.write("config.yaml", &config)?;
    let gateway = Gateway::start(dir.path(), &["--ebpf", "off"], None, &dir)?;
    let (client_crt, client_key) = (pki.path("client.crt"), pki.path("client.key"));
    let with_cert = ["-cert", client_crt.as_str(), "-key", client_key.as_str()];

    for (label, versions) in [
        ("TLS 1.3 ticket", &["-tls1_3"][..]),
        ("TLS 1.2 ticket", &["-tls1_2"][..]),
        ("TLS 1.2 session ID", &["-tls1_2", "-no_ticket"][..]),
    ] {
        let session = dir.path().join(format!("{}.pem", label.replace(' ', "-")));
        let session = session.display().to_string();
        let first = s_client(simple_port, &[versions, &["-sess_out", &session]].concat())?;
        assert!(served(&first), "{label}: {first}\n{}", gateway.stderr());
        assert!(Path::new(&session).exists(), "{label}: no session saved");

        // The same policy resumes: resumption is scoped, not switched off.
        let again = s_client(simple_port, &[versions, &["-sess_in", &session]].concat())?;
        assert!(reused(&again) && served(&again), "{label}: {again}");

        // The SIMPLE session on the MUTUAL port, without a client certificate.
        let crossed = s_client(mutual_port, &[versions, &["-sess_in", &session]].concat())?;
        assert!(
            !reused(&crossed),
            "{label}: resumed across policies:\n{crossed}"
        );
        assert!(
            !served(&crossed),
            "{label}: served without a client certificate:\n{crossed}"
        );

        // With a certificate the MUTUAL port serves, and its own sessions resume there.
        let mutual_session = format!("{session}.mutual");
        let mutual = s_client(
            mutual_port,
            &[versions, &with_cert, &["-sess_out", &mutual_session]].concat(),
        )?;
        assert!(served(&mutual), "{label}: {mutual}");
        let resumed = s_client(
            mutual_port,
            &[versions, &["-sess_in", &mutual_session]].concat(),
        )?;
        assert!(reused(&resumed) && served(&resumed), "{label}: {resumed}");
    }
    Ok(())
}

/// A reload that swaps a MUTUAL server's CA for another: a session that a client of the
/// old CA got before the reload must not resume (its certificate would not verify now).
#[test]
fn a_reload_that_changes_the_client_ca_ends_earlier_sessions() -> anyhow::Result<()> {
    let dir = TempDir::new("trust-reload-ca")?;
    let pki_dir = TempDir::new("trust-reload-ca-pki")?;
    let pki = Pki::new(pki_dir.path(), "trust-ca")?;
    let other = Pki::new(pki_dir.path(), "other-ca")?;
    let (crt, key) = pki.issue(
        "server",
        HOST,
        &format!("DNS:{HOST}"),
        Key::EcP256Pkcs8,
        false,
    )?;
    pki.issue(
        "client",
        "client",
        "URI:spiffe://example.org/c",
        Key::EcP256Pkcs8,
        true,
    )?;
    let upstream = Upstream::start(None, "127.0.0.1:0", "httpbin")?;
    let port = free_port();
    let mut config = service(&[(8443, port)], upstream.addr);
    config += &format!(
        r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: web, namespace: default}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 8443, name: https-mutual, protocol: HTTPS}}
    hosts: ["{HOST}"]
    tls: {{mode: MUTUAL, credentialName: mutual-cred}}
---
{ROUTES}"#
    );
    dir.write("config.yaml", &config)?;
    let secret = |ca: &str| tls_secret("mutual-cred", "istio-system", &crt, &key, Some(ca));
    dir.write("secret.yaml", &secret(&pki.ca_pem()?))?;
    let gateway = Gateway::start(dir.path(), &["--ebpf", "off"], None, &dir)?;
    let (client_crt, client_key) = (pki.path("client.crt"), pki.path("client.key"));
    for (label, version) in [("tls13", "-tls1_3"), ("tls12", "-tls1_2")] {
        // Outside the watched directory: a file written there would reload the gateway.
        let session = pki_dir
            .path()
            .join(format!("{label}.pem"))
            .display()
            .to_string();
        let args = [
            version,
            "-cert",
            &client_crt,
            "-key",
            &client_key,
            "-sess_out",
            &session,
        ];
        let first = s_client(port, &args)?;
        assert!(served(&first), "{label}: {first}\n{}", gateway.stderr());
        let again = s_client(port, &[version, "-sess_in", &session])?;
        assert!(reused(&again) && served(&again), "{label}: {again}");
    }

    // The reload of this write, not one before it.
    let reloads = gateway.reloads("success")?;
    write_secret(&dir, &secret(&other.ca_pem()?))?;
    wait_for_metric(
        &gateway,
        r#"gateway_config_reloads_total{result="success"}"#,
        reloads + 1.0,
    )?;
    for (label, version) in [("tls13", "-tls1_3"), ("tls12", "-tls1_2")] {
        // Outside the watched directory: a file written there would reload the gateway.
        let session = pki_dir
            .path()
            .join(format!("{label}.pem"))
            .display()
            .to_string();
        let after = s_client(port, &[version, "-sess_in", &session])?;
        assert!(
            !reused(&after),
            "{label}: resumed under the new CA:\n{after}\n{}",
            gateway.stderr()
        );
        assert!(!served(&after), "{label}: served:\n{after}");
    }
    Ok(())
}

/// The PEM of the certificate the gateway serves for `sni`.
fn served_certificate(port: u16, sni: &str) -> anyhow::Result<Option<String>> {
    let out = Command::new("timeout")
        .args(["20", "openssl", "s_client", "-connect"])
        .arg(format!("127.0.0.1:{port}"))
        .args(["-servername", sni])
        .stdin(Stdio::null())
        .output()
        .context("running openssl s_client")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let begin = "-----BEGIN CERTIFICATE-----";
    let end = "-----END CERTIFICATE-----";
    Ok(text.find(begin).and_then(|start| {
        let length = text[start..].find(end)? + end.len();
        Some(text[start..start + length].to_owned())
    }))
}

/// Polls the metrics until `sample` reaches `value`.
fn wait_for_metric(gateway: &Gateway, sample: &str, value: f64) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if gateway.metric(sample)?.is_some_and(|v| v >= value) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    anyhow::bail!("{sample} never reached {value}:\n{}", gateway.stderr())
}

/// Every base64 line of a PEM body: none may show in any diagnostic.
fn key_lines(pem: &str) -> Vec<String> {
    pem.lines()
        .filter(|l| !l.starts_with("-----") && l.len() > 16)
        .map(str::to_owned)
        .collect()
}

fn write_secret(dir: &TempDir, yaml: &str) -> anyhow::Result<()> {
    // As kubelet does: a new file renamed over the old one.
    let staged = dir.write(".secret.yaml.new", yaml)?;
    std::fs::rename(staged, dir.path().join("secret.yaml"))?;
    Ok(())
}

/// A Secret updated to a broken version (a key that does not match, then bad PEM): the
/// host keeps serving the last good certificate, the reload says it applied only part,
/// the metrics and the error log name the Secret, and no key material is printed. A
/// good version then replaces it.
#[test]
fn a_broken_secret_update_keeps_the_last_good_certificate() -> anyhow::Result<()> {
    let dir = TempDir::new("trust-broken")?;
    let pki_dir = TempDir::new("trust-broken-pki")?;
    let pki = Pki::new(pki_dir.path(), "trust-ca")?;
    let name = format!("DNS:{HOST}");
    let (old_crt, old_key) = pki.issue("old", "trust-old", &name, Key::EcP256Pkcs8, false)?;
    let (new_crt, new_key) = pki.issue("new", "trust-new", &name, Key::RsaPkcs1, false)?;
    let upstream = Upstream::start(None, "127.0.0.1:0", "httpbin")?;
    let port = free_port();
    let mut config = service(&[(443, port)], upstream.addr);
    config += &format!(
        r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: web, namespace: default}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 443, name: https, protocol: HTTPS}}
    hosts: ["{HOST}"]
    tls: {{mode: SIMPLE, credentialName: web-cred}}
---
{ROUTES}"#
    );
    dir.write("config.yaml", &config)?;
    dir.write(
        "secret.yaml",
        &tls_secret("web-cred", "istio-system", &old_crt, &old_key, None),
    )?;
    let gateway = Gateway::start(dir.path(), &["--ebpf", "off"], None, &dir)?;
    let valid = r#"gateway_tls_credential_valid{credential="Secret istio-system/web-cred"}"#;
    let errors =
        r#"gateway_tls_credential_errors_total{credential="Secret istio-system/web-cred"}"#;
    let partial = r#"gateway_config_reloads_total{result="partial"}"#;
    assert_eq!(gateway.metric(valid)?, Some(1.0), "{}", gateway.stderr());
    assert_eq!(
        served_certificate(port, HOST)?.as_deref(),
        Some(old_crt.trim())
    );

    // The new certificate with the old key.
    write_secret(
        &dir,
        &tls_secret("web-cred", "istio-system", &new_crt, &old_key, None),
    )?;
    wait_for_metric(&gateway, partial, 1.0)?;
    assert_eq!(gateway.metric(errors)?, Some(1.0));
    assert_eq!(gateway.metric(valid)?, Some(0.0));
    assert_eq!(
        gateway.metric("gateway_config_last_reload_successful")?,
        Some(0.0)
    );
    assert_eq!(
        served_certificate(port, HOST)?.as_deref(),
        Some(old_crt.trim()),
        "{}",
        gateway.stderr()
    );

    // PEM that does not parse.
    let truncated: String = new_key.lines().take(3).collect::<Vec<_>>().join("\n");
    write_secret(
        &dir,
        &tls_secret("web-cred", "istio-system", &new_crt, &truncated, None),
    )?;
    wait_for_metric(&gateway, partial, 2.0)?;
    assert_eq!(gateway.metric(errors)?, Some(2.0));
    assert_eq!(
        served_certificate(port, HOST)?.as_deref(),
        Some(old_crt.trim())
    );
    let stderr = gateway.stderr();
    let logged = stderr
        .lines()
        .find(|l| l.contains("ERROR") && l.contains("Secret istio-system/web-cred"))
        .unwrap_or_default();
    assert!(logged.contains("last good"), "{stderr}");
    // validate (no last good version in a fresh process) says the host is not served.
    let validated = validate(dir.path())?;
    assert!(
        validated.contains("Secret istio-system/web-cred") && validated.contains("NOT served"),
        "{validated}"
    );
    for line in key_lines(&old_key).iter().chain(&key_lines(&new_key)) {
        assert!(
            !stderr.contains(line.as_str()),
            "key material logged: {stderr}"
        );
        assert!(
            !validated.contains(line.as_str()),
            "key material: {validated}"
        );
    }

    // A good version is applied, and the gauge says so.
    write_secret(
        &dir,
        &tls_secret("web-cred", "istio-system", &new_crt, &new_key, None),
    )?;
    wait_for_metric(&gateway, valid, 1.0)?;
    assert_eq!(
        served_certificate(port, HOST)?.as_deref(),
        Some(new_crt.trim())
    );
    Ok(())
}

/// The same with certificate files (`serverCertificate`/`privateKey`, a watched
/// directory): a certificate file overwritten with garbage leaves the old one serving.
#[test]
fn a_broken_certificate_file_keeps_the_last_good_certificate() -> anyhow::Result<()> {
    let dir = TempDir::new("trust-file")?;
    let certs = TempDir::new("trust-file-certs")?;
    let pki = Pki::new(certs.path(), "trust-ca")?;
    let (crt, _) = pki.issue(
        "file",
        "trust-file",
        &format!("DNS:{HOST}"),
        Key::EcP256Pkcs8,
        false,
    )?;
    let upstream = Upstream::start(None, "127.0.0.1:0", "httpbin")?;
    let port = free_port();
    let (crt_path, key_path) = (pki.path("file.crt"), pki.path("file.key"));
    let mut config = service(&[(443, port)], upstream.addr);
    config += &format!(
        r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: web, namespace: default}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 443, name: https, protocol: HTTPS}}
    hosts: ["{HOST}"]
    tls: {{mode: SIMPLE, serverCertificate: {crt_path}, privateKey: {key_path}}}
---
{ROUTES}"#
    );
    dir.write("config.yaml", &config)?;
    let watch = certs.path().display().to_string();
    let gateway = Gateway::start(
        dir.path(),
        &["--ebpf", "off", "--watch", &watch],
        None,
        &dir,
    )?;
    assert_eq!(served_certificate(port, HOST)?.as_deref(), Some(crt.trim()));

    std::fs::write(&crt_path, "-----BEGIN CERTIFICATE-----\nnot base64!\n")?;
    wait_for_metric(
        &gateway,
        r#"gateway_config_reloads_total{result="partial"}"#,
        1.0,
    )?;
    let label = format!("file {crt_path} (key {key_path})");
    assert_eq!(
        gateway.metric(&format!(
            "gateway_tls_credential_errors_total{{credential=\"{label}\"}}"
        ))?,
        Some(1.0),
        "{}",
        gateway.stderr()
    );
    assert_eq!(served_certificate(port, HOST)?.as_deref(), Some(crt.trim()));
    Ok(())
}

/// A host whose credential never loaded is not served, and that is said loudly: a
/// warning in `validate` and `routes`, an error in the log, the metrics; the other host
/// on the port serves.
#[test]
fn a_credential_that_never_loaded_is_reported_loudly() -> anyhow::Result<()> {
    let dir = TempDir::new("trust-never")?;
    let pki_dir = TempDir::new("trust-never-pki")?;
    let pki = Pki::new(pki_dir.path(), "trust-ca")?;
    let (crt, key) = pki.issue(
        "good",
        "trust-good",
        "DNS:good.example.com",
        Key::EcP256Pkcs8,
        false,
    )?;
    let (other_crt, _) = pki.issue(
        "other",
        "never",
        "DNS:never.example.com",
        Key::EcP256Pkcs8,
        false,
    )?;
    let upstream = Upstream::start(None, "127.0.0.1:0", "httpbin")?;
    let port = free_port();
    let mut config = service(&[(443, port)], upstream.addr);
    config += &tls_secret("good-cred", "istio-system", &crt, &key, None);
    // The key of another certificate.
    config += &tls_secret("never-cred", "istio-system", &other_crt, &key, None);
    config += &format!(
        r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: web, namespace: default}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 443, name: https-good, protocol: HTTPS}}
    hosts: ["good.example.com"]
    tls: {{mode: SIMPLE, credentialName: good-cred}}
  - port: {{number: 443, name: https-never, protocol: HTTPS}}
    hosts: ["never.example.com"]
    tls: {{mode: SIMPLE, credentialName: never-cred}}
---
{ROUTES}"#
    );
    dir.write("config.yaml", &config)?;

    let validated = validate(dir.path())?;
    assert!(
        validated.contains("warning:")
            && validated.contains(
                "Secret istio-system/never-cred: the private key does not belong to the certificate"
            )
            && validated.contains("this server is NOT served"),
        "{validated}"
    );
    let routes = Command::new(gatewayd_bin())
        .args(["routes", "--config"])
        .arg(dir.path())
        .output()?;
    let (routes_out, routes_err) = (
        String::from_utf8_lossy(&routes.stdout),
        String::from_utf8_lossy(&routes.stderr),
    );
    assert!(
        routes_err.contains("never-cred") && routes_err.contains("NOT served"),
        "{routes_err}"
    );
    assert!(
        routes_out.contains("Secret istio-system/good-cred: subject CN=trust-good"),
        "{routes_out}"
    );

    let gateway = Gateway::start(dir.path(), &["--ebpf", "off"], None, &dir)?;
    let stderr = gateway.stderr();
    assert!(
        stderr
            .lines()
            .any(|l| l.contains("ERROR") && l.contains("Secret istio-system/never-cred")),
        "{stderr}"
    );
    assert_eq!(
        gateway.metric(
            r#"gateway_tls_credential_errors_total{credential="Secret istio-system/never-cred"}"#
        )?,
        Some(1.0)
    );
    assert_eq!(
        gateway.metric(
            r#"gateway_tls_credential_valid{credential="Secret istio-system/never-cred"}"#
        )?,
        Some(0.0)
    );
    assert_eq!(served_certificate(port, "never.example.com")?, None);
    assert_eq!(
        served_certificate(port, "good.example.com")?.as_deref(),
        Some(crt.trim())
    );
    Ok(())
}

/// Secrets that do not even parse as Secrets (a `stringData: |` block over the keys, a
/// key as a list) or whose base64 is broken: the diagnostics name the Secret and the
/// field, never a line of the key.
#[test]
fn a_mistyped_secret_never_shows_its_key() -> anyhow::Result<()> {
    let dir = TempDir::new("trust-mistyped")?;
    let pki_dir = TempDir::new("trust-mistyped-pki")?;
    let pki = Pki::new(pki_dir.path(), "trust-ca")?;
    let (crt, key) = pki.issue("leak", "leak", "DNS:leak.example.com", Key::RsaPkcs1, false)?;
    let indent =
        |text: &str, by: &str| -> String { text.lines().map(|l| format!("{by}{l}\n")).collect() };
    let mut config = format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: block, namespace: istio-system}}\nstringData: |\n  tls.crt: x\n  tls.key: |\n{}---\n",
        indent(&key, "    ")
    );
    config += &format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: listed, namespace: istio-system}}\nstringData:\n  tls.crt: x\n  tls.key:\n{}---\n",
        indent(&key, "  - ")
    );
    // Base64 with a stray character in the key.
    let encoded = crate::tls::base64(key.as_bytes());
    config += &format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: b64, namespace: istio-system}}\ndata:\n  tls.crt: {}\n  tls.key: {}%{}\n---\n",
        crate::tls::base64(crt.as_bytes()),
        &encoded[..40],
        &encoded[40..]
    );
    config += r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: web, namespace: default}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: ["leak.example.com"]
    tls: {mode: SIMPLE, credentialName: b64}
"#;
    dir.write("config.yaml", &config)?;
    let validated = validate(dir.path())?;
    assert!(
        validated.contains("Secret istio-system/block: stringData")
            && validated.contains("Secret istio-system/listed: stringData.tls.key")
            && validated.contains("Secret istio-system/b64: Secret data tls.key: not base64"),
        "{validated}"
    );
    for line in key_lines(&key) {
        assert!(!validated.contains(&line), "key material: {validated}");
    }
    // base64 of the key as well: a message quoting `data` would show that.
    for chunk in encoded.as_bytes().chunks(32) {
        let chunk = String::from_utf8_lossy(chunk);
        assert!(
            !validated.contains(chunk.as_ref()),
            "key material: {validated}"
        );
    }
    Ok(())
}

/// `serverCertificate: /dev/zero` (and a CA file that is too large) is refused with a
/// clear message instead of reading forever.
#[test]
fn a_certificate_file_that_never_ends_is_refused() -> anyhow::Result<()> {
    let dir = TempDir::new("trust-devzero")?;
    let pki_dir = TempDir::new("trust-devzero-pki")?;
    let pki = Pki::new(pki_dir.path(), "trust-ca")?;
    pki.issue(
        "file",
        "file",
        "DNS:file.example.com",
        Key::EcP256Pkcs8,
        false,
    )?;
    let huge = pki_dir.path().join("huge-ca.pem");
    std::fs::File::create(&huge)?.set_len(64 * 1024 * 1024)?;
    let config = format!(
        r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: web, namespace: default}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 443, name: https-zero, protocol: HTTPS}}
    hosts: ["zero.example.com"]
    tls: {{mode: SIMPLE, serverCertificate: /dev/zero, privateKey: {key}}}
  - port: {{number: 443, name: https-huge, protocol: HTTPS}}
    hosts: ["huge.example.com"]
    tls: {{mode: MUTUAL, serverCertificate: {crt}, privateKey: {key}, caCertificates: {huge}}}
"#,
        key = pki.path("file.key"),
        crt = pki.path("file.crt"),
        huge = huge.display()
    );
    dir.write("config.yaml", &config)?;
    // `timeout` turns a hang into a failure here rather than a stuck suite.
    let out = Command::new("timeout")
        .arg("60")
        .arg(gatewayd_bin())
        .args(["validate", "--config"])
        .arg(dir.path())
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert_ne!(out.status.code(), Some(124), "validate hung");
    assert!(text.contains("/dev/zero: not a regular file"), "{text}");
    assert!(
        text.contains("huge-ca.pem: larger than 1048576 bytes"),
        "{text}"
    );
    Ok(())
}

/// The first bytes a real client (`openssl s_client`) sends for `HOST`: its ClientHello,
/// caught by a listener that never answers.
fn client_hello() -> anyhow::Result<Vec<u8>> {
    use std::io::Read as _;
    let catcher = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = catcher.local_addr()?.port();
    let mut client = Command::new("timeout")
        .args(["20", "openssl", "s_client", "-connect"])
        .arg(format!("127.0.0.1:{port}"))
        .args(["-servername", HOST])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("running openssl s_client")?;
    let (mut stream, _) = catcher.accept()?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    // A TLS record: 5 header bytes, then the length they announce.
    let mut hello = vec![0u8; 5];
    stream.read_exact(&mut hello)?;
    let length = usize::from(u16::from_be_bytes([hello[3], hello[4]]));
    hello.resize(5 + length, 0);
    stream.read_exact(&mut hello[5..])?;
    let _ = client.kill();
    let _ = client.wait();
    anyhow::ensure!(hello[0] == 22, "not a handshake record: {hello:?}");
    Ok(hello)
}

/// Reads until the gateway closes the connection; an error when it is still open after
/// `within`.
fn closed_within(stream: &mut std::net::TcpStream, within: Duration) -> anyhow::Result<()> {
    use std::io::Read as _;
    stream.set_read_timeout(Some(within))?;
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(()),
            Err(e) => anyhow::bail!("still open after {within:?}: {e}"),
        }
    }
}

/// The TLS handshake keeps its clock (10 s) whatever the client stalls on: a ClientHello
/// that never ends, or a whole one after which the client never finishes the handshake.
/// Both connections are closed, and the port still serves.
#[test]
fn stalled_tls_handshakes_are_closed_after_the_handshake_timeout() -> anyhow::Result<()> {
    let dir = TempDir::new("trust-handshake")?;
    let pki_dir = TempDir::new("trust-handshake-pki")?;
    let pki = Pki::new(pki_dir.path(), "trust-ca")?;
    let (crt, key) = pki.issue(
        "server",
        HOST,
        &format!("DNS:{HOST}"),
        Key::EcP256Pkcs8,
        false,
    )?;
    let upstream = Upstream::start(None, "127.0.0.1:0", "httpbin")?;
    let port = free_port();
    let mut config = service(&[(443, port)], upstream.addr);
    config += &tls_secret("cred", "istio-system", &crt, &key, None);
    config += &format!(
        r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: web, namespace: default}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 443, name: https, protocol: HTTPS}}
    hosts: ["{HOST}"]
    tls: {{mode: SIMPLE, credentialName: cred}}
---
{ROUTES}"#
    );
    dir.write("config.yaml", &config)?;
    let gateway = Gateway::start(dir.path(), &["--ebpf", "off"], None, &dir)?;
    let hello = client_hello()?;

    let mut partial = std::net::TcpStream::connect(("127.0.0.1", port))?;
    partial.write_all(&hello[..hello.len() / 2])?;
    let mut unfinished = std::net::TcpStream::connect(("127.0.0.1", port))?;
    unfinished.write_all(&hello)?;
    let patience = Duration::from_secs(30);
    closed_within(&mut partial, patience)
        .with_context(|| format!("half a ClientHello\n{}", gateway.stderr()))?;
    closed_within(&mut unfinished, patience)
        .with_context(|| format!("a handshake never finished\n{}", gateway.stderr()))?;

    let answer = s_client(port, &[])?;
    assert!(served(&answer), "{answer}");
    Ok(())
}
