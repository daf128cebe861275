//! TLS with real clients: certificates made by the `openssl` CLI, `openssl s_client`
//! to see which certificate each SNI gets, curl over HTTPS (HTTP/2 by ALPN), mutual TLS,
//! passthrough to an `openssl s_server`, and TCP proxying.

use std::{
    fmt::Write as _,
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};
use gateway_tests::{
    CurlResponse, Gateway, Process, TempDir, Upstream, curl, free_port, gatewayd_bin,
    service_with_endpoint,
};

/// Key types the gateway reads, each in the PEM encoding `openssl` gives it here.
#[derive(Clone, Copy)]
pub(crate) enum Key {
    /// `BEGIN PRIVATE KEY`.
    EcP256Pkcs8,
    /// `BEGIN EC PRIVATE KEY`.
    EcP384Sec1,
    /// `BEGIN RSA PRIVATE KEY`.
    RsaPkcs1,
    /// `BEGIN PRIVATE KEY`.
    Ed25519,
}

/// A throwaway certificate authority in a temp dir.
pub(crate) struct Pki {
    dir: PathBuf,
    ca: String,
}

impl Pki {
    pub(crate) fn new(dir: &Path, ca: &str) -> anyhow::Result<Self> {
        let pki = Pki {
            dir: dir.to_owned(),
            ca: ca.to_owned(),
        };
        pki.openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "3",
            "-subj",
            &format!("/CN={ca}"),
            "-keyout",
            &format!("{ca}.key"),
            "-out",
            &format!("{ca}.crt"),
        ])?;
        Ok(pki)
    }

    pub(crate) fn openssl(&self, args: &[&str]) -> anyhow::Result<()> {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(&self.dir)
            .output()
            .context("running openssl")?;
        if !out.status.success() {
            bail!("openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }

    fn read(&self, file: &str) -> anyhow::Result<String> {
        std::fs::read_to_string(self.dir.join(file)).with_context(|| file.to_owned())
    }

    pub(crate) fn path(&self, file: &str) -> String {
        self.dir.join(file).display().to_string()
    }

    pub(crate) fn ca_pem(&self) -> anyhow::Result<String> {
        self.read(&format!("{}.crt", self.ca))
    }

    /// A certificate for `cn` with these subjectAltNames (`DNS:a,URI:b`), signed by the
    /// CA; returns (certificate PEM, key PEM).
    pub(crate) fn issue(
        &self,
        name: &str,
        cn: &str,
        sans: &str,
        key: Key,
        client: bool,
    ) -> anyhow::Result<(String, String)> {
        let generated = format!("{name}.gen.key");
        let curve_or_size = match key {
            Key::EcP256Pkcs8 => Some(("EC", "ec_paramgen_curve:P-256")),
            Key::EcP384Sec1 => Some(("EC", "ec_paramgen_curve:P-384")),
            Key::RsaPkcs1 => Some(("RSA", "rsa_keygen_bits:2048")),
            Key::Ed25519 => None,
        };
        match curve_or_size {
            Some((algorithm, option)) => self.openssl(&[
                "genpkey",
                "-algorithm",
                algorithm,
                "-pkeyopt",
                option,
                "-out",
                &generated,
            ])?,
            None => self.openssl(&["genpkey", "-algorithm", "ED25519", "-out", &generated])?,
        }
        let key_file = format!("{name}.key");
        match key {
            Key::EcP384Sec1 => self.openssl(&["ec", "-in", &generated, "-out", &key_file])?,
            Key::RsaPkcs1 => {
                self.openssl(&["rsa", "-in", &generated, "-traditional", "-out", &key_file])?
            }
            Key::EcP256Pkcs8 | Key::Ed25519 => {
                std::fs::copy(self.dir.join(&generated), self.dir.join(&key_file))?;
            }
        }
        let csr = format!("{name}.csr");
        self.openssl(&[
            "req",
            "-new",
            "-key",
            &key_file,
            "-subj",
            &format!("/CN={cn}"),
            "-out",
            &csr,
        ])?;
        let ext = format!("{name}.ext");
        let usage = if client { "clientAuth" } else { "serverAuth" };
        std::fs::write(
            self.dir.join(&ext),
            format!("subjectAltName={sans}\nextendedKeyUsage={usage}\n"),
        )?;
        let cert_file = format!("{name}.crt");
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &format!("{}.crt", self.ca),
            "-CAkey",
            &format!("{}.key", self.ca),
            "-CAcreateserial",
            "-days",
            "3",
            "-extfile",
            &ext,
            "-out",
            &cert_file,
        ])?;
        let key_pem = self.read(&key_file)?;
        let expected = match key {
            Key::EcP256Pkcs8 | Key::Ed25519 => "BEGIN PRIVATE KEY",
            Key::EcP384Sec1 => "BEGIN EC PRIVATE KEY",
            Key::RsaPkcs1 => "BEGIN RSA PRIVATE KEY",
        };
        assert!(key_pem.contains(expected), "{name}: {key_pem}");
        Ok((self.read(&cert_file)?, key_pem))
    }
}

/// A `kubernetes.io/tls` Secret written by hand (`stringData`).
pub(crate) fn tls_secret(
    name: &str,
    namespace: &str,
    cert: &str,
    key: &str,
    ca: Option<&str>,
) -> String {
    let block = |text: &str| {
        text.lines().fold(String::new(), |mut out, line| {
            let _ = writeln!(out, "    {line}");
            out
        })
    };
    let mut yaml = format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: {namespace}}}\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: |\n{}  tls.key: |\n{}",
        block(cert),
        block(key)
    );
    if let Some(ca) = ca {
        let _ = write!(yaml, "  ca.crt: |\n{}", block(ca));
    }
    yaml + "---\n"
}

/// A generic Secret as the API returns it (`data`, base64), with `cert`/`key`.
fn generic_secret_base64(name: &str, namespace: &str, cert: &str, key: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: {namespace}}}\ntype: Opaque\ndata:\n  cert: {}\n  key: {}\n---\n",
        base64(cert.as_bytes()),
        base64(key.as_bytes())
    )
}

pub(crate) fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Our Service (443 → `bind_port`, 9000 → `tcp_port`) and the demo upstream as `httpbin`.
fn common_config(bind_port: u16, tcp_port: u16, upstream: SocketAddr) -> String {
    format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: istio-ingressgateway, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  ports:
  - {{name: https, port: 443, targetPort: {bind_port}}}
  - {{name: tcp, port: 9000, targetPort: {tcp_port}}}
---
{}"#,
        service_with_endpoint("httpbin", 8000, upstream)
    )
}

/// The subject of the certificate the server presents, or None when the handshake is
/// refused.
pub(crate) fn served_subject(port: u16, sni: Option<&str>) -> anyhow::Result<Option<String>> {
    let mut cmd = Command::new("openssl");
    cmd.args(["s_client", "-connect", &format!("127.0.0.1:{port}")]);
    match sni {
        Some(name) => cmd.args(["-servername", name]),
        None => cmd.arg("-noservername"),
    };
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .context("running openssl s_client")?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix("subject="))
        .map(|s| s.replace(' ', "")))
}

pub(crate) fn https(
    name: &str,
    port: u16,
    pki_ca: &str,
    path: &str,
    extra: &[&str],
) -> anyhow::Result<CurlResponse> {
    let mut args = vec![
        "--resolve".to_owned(),
        format!("{name}:{port}:127.0.0.1"),
        "--cacert".to_owned(),
        pki_ca.to_owned(),
    ];
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    args.push(format!("https://{name}:{port}{path}"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    curl(None, &args)
}

pub(crate) fn validate(dir: &Path) -> anyhow::Result<String> {
    let out = Command::new(gatewayd_bin())
        .args(["validate", "--config"])
        .arg(dir)
        .output()?;
    Ok(format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

#[test]
fn sni_chooses_the_certificate_and_https_reaches_the_upstream() -> anyhow::Result<()> {
    let dir = TempDir::new("tls-sni")?;
    let pki_dir = TempDir::new("tls-sni-pki")?;
    let pki = Pki::new(pki_dir.path(), "test-ca")?;
    let (exact_crt, exact_key) = pki.issue(
        "exact",
        "exact.example.com",
        "DNS:exact.example.com",
        Key::EcP256Pkcs8,
        false,
    )?;
    let (wild_crt, wild_key) = pki.issue(
        "wild",
        "wild.example.com",
        "DNS:*.example.com",
        Key::RsaPkcs1,
        false,
    )?;
    let (deep_crt, deep_key) = pki.issue(
        "deep",
        "deep.example.com",
        "DNS:*.deep.example.com",
        Key::EcP384Sec1,
        false,
    )?;
    let upstream = Upstream::start(None, "127.0.0.1:0", "httpbin")?;
    let (bind_port, tcp_port) = (free_port(), free_port());
    let mut config = common_config(bind_port, tcp_port, upstream.addr);
    // One Secret in the gateway's namespace (as Istio reads it), two in the Gateway's own.
    config += &tls_secret("exact-cred", "istio-system", &exact_crt, &exact_key, None);
    config += &generic_secret_base64("wild-cred", "default", &wild_crt, &wild_key);
    config += &tls_secret("deep-cred", "default", &deep_crt, &deep_key, None);
    config += r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: web, namespace: default}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 443, name: https-wild, protocol: HTTPS}
    hosts: ["*.example.com"]
    tls: {mode: SIMPLE, credentialName: wild-cred}
  - port: {number: 443, name: https-exact, protocol: HTTPS}
    hosts: ["exact.example.com"]
    tls: {mode: SIMPLE, credentialName: exact-cred, minProtocolVersion: TLSV1_2}
  - port: {number: 443, name: https-deep, protocol: HTTPS}
    hosts: ["*.deep.example.com"]
    tls: {mode: SIMPLE, credentialName: deep-cred}
  - port: {number: 443, name: https-dual, protocol: HTTPS}
    hosts: ["dual.example.com"]
    tls: {mode: SIMPLE, credentialNames: [wild-cred, deep-cred]}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: httpbin, namespace: default}
spec:
  hosts: ["exact.example.com", "*.example.com"]
  gateways: [web]
  http:
  - route:
    - destination: {host: httpbin, port: {number: 8000}}
"#;
    dir.write("config.yaml", &config)?;
    let validated = validate(dir.path())?;
    assert!(
        validated.contains("no server on port 443 has host `*`"),
        "{validated}"
    );
    let gateway = Gateway::start(dir.path(), &["--ebpf", "off"], None, &dir)?;

    // Exact beats wildcard, the longer wildcard beats the shorter one.
    let subject = |sni| served_subject(bind_port, sni);
    assert_eq!(
        subject(Some("exact.example.com"))?.as_deref(),
        Some("CN=exact.example.com"),
        "{}",
        gateway.stderr()
    );
    assert_eq!(
        subject(Some("shop.example.com"))?.as_deref(),
        Some("CN=wild.example.com")
    );
    assert_eq!(
        subject(Some("x.deep.example.com"))?.as_deref(),
        Some("CN=deep.example.com")
    );
    // An RSA and an ECDSA credential on one server: ECDSA unless the client can only
    // verify RSA signatures.
    assert_eq!(
        subject(Some("dual.example.com"))?.as_deref(),
        Some("CN=deep.example.com")
    );
    let rsa_only = Command::new("openssl")
        .args(["s_client", "-sigalgs", "rsa_pss_rsae_sha256", "-connect"])
        .arg(format!("127.0.0.1:{bind_port}"))
        .args(["-servername", "dual.example.com"])
        .stdin(Stdio::null())
        .output()?;
    let rsa_text = String::from_utf8_lossy(&rsa_only.stdout);
    assert!(
        rsa_text.contains("subject=CN = wild.example.com"),
        "{rsa_text}"
    );
    // Unknown SNI and no SNI: refused without a certificate (no `*` server).
    assert_eq!(subject(Some("example.org"))?, None);
    assert_eq!(subject(None)?, None);

    // curl with SNI and the CA: the upstream's answer, over HTTP/2 by ALPN.
    let ca = pki.path("test-ca.crt");
    let answer = https("exact.example.com", bind_port, &ca, "/headers", &[])?;
    assert_eq!(answer.status, 200, "{answer:?}\n{}", gateway.stderr());
    assert!(answer.head.starts_with("HTTP/2"), "{}", answer.head);
    let echo = answer.json()?;
    assert_eq!(echo["headers"]["x-forwarded-proto"], "https");
    assert_eq!(echo["host"], format!("exact.example.com:{bind_port}"));
    let http1 = https("shop.example.com", bind_port, &ca, "/get", &["--http1.1"])?;
    assert_eq!(http1.status, 200);
    assert!(http1.head.starts_with("HTTP/1.1"), "{}", http1.head);

    // A Host that another server serves, on a connection SNI bound to this one: 421.
    let misdirected = https(
        "exact.example.com",
        bind_port,
        &ca,
        "/get",
        &["-H", "Host: shop.example.com"],
    )?;
    assert_eq!(misdirected.status, 421, "{misdirected:?}");
    // TLS 1.1 is below the 1.2 minimum.
    let old = Command::new("openssl")
        .args(["s_client", "-tls1_1", "-connect"])
        .arg(format!("127.0.0.1:{bind_port}"))
        .args(["-servername", "exact.example.com"])
        .stdin(Stdio::null())
        .output()?;
    assert!(!old.status.success());
    Ok(())
}

#[test]
fn a_star_server_takes_clients_without_sni_and_a_bad_secret_only_skips_its_server()
-> anyhow::Result<()> {
    let dir = TempDir::new("tls-star")?;
    let pki_dir = TempDir::new("tls-star-pki")?;
    let pki = Pki::new(pki_dir.path(), "test-ca")?;
    let (star_crt, star_key) = pki.issue(
        "star",
        "star.test",
        "DNS:star.test,IP:127.0.0.1",
        Key::Ed25519,
        false,
    )?;
    let upstream = Upstream::start(None, "127.0.0.1:0", "httpbin")?;
    let (bind_port, tcp_port) = (free_port(), free_port());
    let mut config = common_config(bind_port, tcp_port, upstream.addr);
    config += &tls_secret("star-cred", "istio-system", &star_crt, &star_key, None);
    config += &tls_secret(
        "broken-cred",
        "istio-system",
        &star_crt,
        "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n",
        None,
    );
    config += r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: web, namespace: default}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 443, name: https-broken, protocol: HTTPS}
    hosts: ["broken.example.com"]
    tls: {mode: SIMPLE, credentialName: broken-cred}
  - port: {number: 443, name: https-star, protocol: HTTPS}
    hosts: ["*"]
    tls: {mode: SIMPLE, credentialName: star-cred}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: httpbin, namespace: default}
spec:
  hosts: ["*"]
  gateways: [web]
  http:
  - route:
    - destination: {host: httpbin, port: {number: 8000}}
"#;
    dir.write("config.yaml", &config)?;
    let gateway = Gateway::start(dir.path(), &["--ebpf", "off"], None, &dir)?;
    assert!(
        gateway.stderr().contains("Secret istio-system/broken-cred"),
        "{}",
        gateway.stderr()
    );
    assert_eq!(
        served_subject(bind_port, None)?.as_deref(),
        Some("CN=star.test")
    );
    assert_eq!(
        served_subject(bind_port, Some("anything.example.net"))?.as_deref(),
        Some("CN=star.test")
    );
    // An IP address in the URL: curl sends no SNI; the `*` server answers.
    let ca = pki.path("test-ca.crt");
    let by_ip = curl(
        None,
        &[
            "--cacert",
            &ca,
            &format!("https://127.0.0.1:{bind_port}/status/200"),
        ],
    )?;
    assert_eq!(by_ip.status, 200, "{by_ip:?}");
    Ok(())
}

#[test]
fn mutual_tls_verifies_client_certificates_and_forwards_the_identity() -> anyhow::Result<()> {
    let dir = TempDir::new("tls-mtls")?;
    let pki_dir = TempDir::new("tls-mtls-pki")?;
    let pki = Pki::new(pki_dir.path(), "test-ca")?;
    let stranger = Pki::new(pki_dir.path(), "stranger-ca")?;
    let (server_crt, server_key) = pki.issue(
        "server",
        "mtls.example.com",
        "DNS:mtls.example.com,DNS:optional.example.com",
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
    pki.issue(
        "other-client",
        "other",
        "URI:spiffe://example.org/other",
        Key::EcP256Pkcs8,
        true,
    )?;
    stranger.issue(
        "stranger",
        "stranger",
        "URI:spiffe://example.org/client",
        Key::EcP256Pkcs8,
        true,
    )?;
    let upstream = Upstream::start(None, "127.0.0.1:0", "httpbin")?;
    let (bind_port, tcp_port) = (free_port(), free_port());
    let mut config = common_config(bind_port, tcp_port, upstream.addr);
    let ca_pem = pki.ca_pem()?;
    // MUTUAL: ca.crt in the credential; OPTIONAL_MUTUAL: the `<name>-cacert` Secret.
    config += &tls_secret(
        "mtls-cred",
        "istio-system",
        &server_crt,
        &server_key,
        Some(&ca_pem),
    );
    config += &tls_secret(
        "optional-cred",
        "istio-system",
        &server_crt,
        &server_key,
        None,
    );
    config += &format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: optional-cred-cacert, namespace: istio-system}}\nstringData:\n  cacert: |\n{}---\n",
        ca_pem
            .lines()
            .map(|l| format!("    {l}\n"))
            .collect::<String>()
    );
    config += r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: web, namespace: default}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 443, name: https-mtls, protocol: HTTPS}
    hosts: ["mtls.example.com"]
    tls:
      mode: MUTUAL
      credentialName: mtls-cred
      subjectAltNames: ["spiffe://example.org/client"]
  - port: {number: 443, name: https-optional, protocol: HTTPS}
    hosts: ["optional.example.com"]
    tls: {mode: OPTIONAL_MUTUAL, credentialName: optional-cred}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: httpbin, namespace: default}
spec:
  hosts: ["*.example.com"]
  gateways: [web]
  http:
  - route:
    - destination: {host: httpbin, port: {number: 8000}}
"#;
    dir.write("config.yaml", &config)?;
    let gateway = Gateway::start(dir.path(), &["--ebpf", "off"], None, &dir)?;
    let ca = pki.path("test-ca.crt");
    let with_cert = |host: &str, name: &str| {
        let (cert, key) = (
            pki.path(&format!("{name}.crt")),
            pki.path(&format!("{name}.key")),
        );
        https(
            host,
            bind_port,
            &ca,
            "/headers",
            &[
                "--cert",
                &cert,
                "--key",
                &key,
                "-H",
                "x-forwarded-client-cert: forged",
            ],
        )
    };

    let accepted = with_cert("mtls.example.com", "client")?;
    assert_eq!(accepted.status, 200, "{accepted:?}\n{}", gateway.stderr());
    let xfcc = accepted.json()?["headers"]["x-forwarded-client-cert"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_default();
    assert!(xfcc.starts_with("Hash="), "{xfcc}");
    assert!(xfcc.contains("URI=spiffe://example.org/client"), "{xfcc}");
    assert!(xfcc.contains("Subject=\"CN=client\""), "{xfcc}");

    // No certificate, a certificate from another CA, or one without an allowed SAN.
    assert!(https("mtls.example.com", bind_port, &ca, "/headers", &[]).is_err());
    let stranger_args = [
        "--cert".to_owned(),
        stranger.path("stranger.crt"),
        "--key".to_owned(),
        stranger.path("stranger.key"),
    ];
    let stranger_args: Vec<&str> = stranger_args.iter().map(String::as_str).collect();
    assert!(
        https(
            "mtls.example.com",
            bind_port,
            &ca,
            "/headers",
            &stranger_args
        )
        .is_err()
    );
    assert!(with_cert("mtls.example.com", "other-client").is_err());

    // OPTIONAL_MUTUAL: served without a certificate (and a forged XFCC is dropped).
    let anonymous = https(
        "optional.example.com",
        bind_port,
        &ca,
        "/headers",
        &["-H", "x-forwarded-client-cert: forged"],
    )?;
    assert_eq!(anonymous.status, 200, "{anonymous:?}");
    assert!(
        anonymous.json()?["headers"]
            .get("x-forwarded-client-cert")
            .is_none(),
        "{}",
        anonymous.body
    );
    let identified = with_cert("optional.example.com", "other-client")?;
    assert!(
        identified.body.contains("URI=spiffe://example.org/other"),
        "{}",
        identified.body
    );
    Ok(())
}

/// `openssl s_server -www` on 127.0.0.1 with the given certificate.
pub(crate) fn tls_upstream(pki: &Pki, name: &str) -> anyhow::Result<(Process, u16)> {
    let port = free_port();
    let mut child = Command::new("openssl")
        .args(["s_server", "-www", "-accept"])
        .arg(format!("127.0.0.1:{port}"))
        .args(["-cert", &pki.path(&format!("{name}.crt"))])
        .args(["-key", &pki.path(&format!("{name}.key"))])
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
    // Keep draining so that s_server never blocks on a full pipe.
    std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
    Ok((process, port))
}

#[test]
fn passthrough_and_tcp_servers_proxy_streams() -> anyhow::Result<()> {
    let dir = TempDir::new("tls-passthrough")?;
    let pki_dir = TempDir::new("tls-passthrough-pki")?;
    let pki = Pki::new(pki_dir.path(), "test-ca")?;
    pki.issue(
        "backend",
        "pass.example.com",
        "DNS:pass.example.com",
        Key::EcP256Pkcs8,
        false,
    )?;
    let (term_crt, term_key) = pki.issue(
        "term",
        "term.example.com",
        "DNS:term.example.com",
        Key::EcP256Pkcs8,
        false,
    )?;
    let (_backend, backend_port) = tls_upstream(&pki, "backend")?;
    let upstream = Upstream::start(None, "127.0.0.1:0", "httpbin")?;
    let (bind_port, tcp_port) = (free_port(), free_port());
    let mut config = common_config(bind_port, tcp_port, upstream.addr);
    config += &tls_secret("term-cred", "istio-system", &term_crt, &term_key, None);
    config += &format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: backend, namespace: default}}
spec:
  ports: [{{name: tls, port: 443, targetPort: {backend_port}}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: backend-1
  namespace: default
  labels: {{kubernetes.io/service-name: backend}}
addressType: IPv4
ports: [{{name: tls, port: {backend_port}}}]
endpoints:
- addresses: ["127.0.0.1"]
---
"#
    );
    config += r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: edge, namespace: default}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 443, name: tls-pass, protocol: TLS}
    hosts: ["pass.example.com"]
    tls: {mode: PASSTHROUGH}
  - port: {number: 443, name: tls-term, protocol: TLS}
    hosts: ["term.example.com"]
    tls: {mode: SIMPLE, credentialName: term-cred}
  - port: {number: 9000, name: tcp, protocol: TCP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: pass, namespace: default}
spec:
  hosts: ["pass.example.com"]
  gateways: [edge]
  tls:
  - match:
    - sniHosts: ["pass.example.com"]
    route:
    - destination: {host: backend, port: {number: 443}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: term, namespace: default}
spec:
  hosts: ["term.example.com"]
  gateways: [edge]
  tcp:
  - route:
    - destination: {host: httpbin, port: {number: 8000}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: raw, namespace: default}
spec:
  hosts: ["*"]
  gateways: [edge]
  tcp:
  - match: [{port: 9000}]
    route:
    - destination: {host: httpbin, port: {number: 8000}}
"#;
    dir.write("config.yaml", &config)?;
    let gateway = Gateway::start(dir.path(), &["--ebpf", "off"], None, &dir)?;
    let ca = pki.path("test-ca.crt");

    // Passthrough: the client sees the backend's own certificate and its answer.
    assert_eq!(
        served_subject(bind_port, Some("pass.example.com"))?.as_deref(),
        Some("CN=pass.example.com"),
        "{}",
        gateway.stderr()
    );
    let passed = https("pass.example.com", bind_port, &ca, "/", &[])?;
    assert_eq!(passed.status, 200, "{passed:?}");
    assert!(passed.body.contains("s_server"), "{}", passed.body);

    // TLS terminated, then TCP: the upstream sees plain HTTP with no proxy headers.
    let terminated = https(
        "term.example.com",
        bind_port,
        &ca,
        "/headers",
        &["--http1.1"],
    )?;
    assert_eq!(terminated.status, 200, "{terminated:?}");
    let echo = terminated.json()?;
    assert!(echo["headers"].get("x-forwarded-proto").is_none(), "{echo}");

    // Plain TCP.
    let raw = curl(None, &[&format!("http://127.0.0.1:{tcp_port}/headers")])?;
    assert_eq!(raw.status, 200, "{raw:?}");
    assert!(raw.json()?["headers"].get("x-forwarded-for").is_none());
    Ok(())
}

/// A Secret changed on disk: the reload's snapshot carries the new certificate, and the
/// next handshake gets it without a restart.
#[test]
fn a_swapped_secret_is_served_on_the_next_handshake() -> anyhow::Result<()> {
    let dir = TempDir::new("tls-swap")?;
    let pki_dir = TempDir::new("tls-swap-pki")?;
    let pki = Pki::new(pki_dir.path(), "test-ca")?;
    let (old_crt, old_key) = pki.issue(
        "old",
        "swap-old",
        "DNS:swap.example.com",
        Key::EcP256Pkcs8,
        false,
    )?;
    let (new_crt, new_key) = pki.issue(
        "new",
        "swap-new",
        "DNS:swap.example.com",
        Key::RsaPkcs1,
        false,
    )?;
    let upstream = Upstream::start(None, "127.0.0.1:0", "httpbin")?;
    let (bind_port, tcp_port) = (free_port(), free_port());
    let mut config = common_config(bind_port, tcp_port, upstream.addr);
    config += r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: web, namespace: default}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: ["swap.example.com"]
    tls: {mode: SIMPLE, credentialName: swap-cred}
"#;
    dir.write("config.yaml", &config)?;
    dir.write(
        "secret.yaml",
        &tls_secret("swap-cred", "istio-system", &old_crt, &old_key, None),
    )?;
    let gateway = Gateway::start(dir.path(), &["--ebpf", "off"], None, &dir)?;
    assert_eq!(
        served_subject(bind_port, Some("swap.example.com"))?.as_deref(),
        Some("CN=swap-old"),
        "{}",
        gateway.stderr()
    );

    // Written as kubelet would: a new file renamed over the old one.
    let staged = dir.write(
        ".secret.yaml.new",
        &tls_secret("swap-cred", "istio-system", &new_crt, &new_key, None),
    )?;
    std::fs::rename(staged, dir.path().join("secret.yaml"))?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut subject = None;
    while std::time::Instant::now() < deadline {
        subject = served_subject(bind_port, Some("swap.example.com"))?;
        if subject.as_deref() == Some("CN=swap-new") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(
        subject.as_deref(),
        Some("CN=swap-new"),
        "{}",
        gateway.stderr()
    );
    Ok(())
}

/// Gateway API: an HTTPS listener terminates with a Secret from another namespace that a
/// ReferenceGrant allows; one without a grant is refused with a warning.
#[test]
fn gateway_api_https_listeners_use_granted_certificate_refs() -> anyhow::Result<()> {
    let dir = TempDir::new("tls-gateway-api")?;
    let pki_dir = TempDir::new("tls-gateway-api-pki")?;
    let pki = Pki::new(pki_dir.path(), "test-ca")?;
    let (crt, key) = pki.issue(
        "api",
        "api.example.com",
        "DNS:api.example.com,DNS:nogrant.example.com",
        Key::EcP256Pkcs8,
        false,
    )?;
    let upstream = Upstream::start(None, "127.0.0.1:0", "httpbin")?;
    let (bind_port, tcp_port) = (free_port(), free_port());
    let mut config = common_config(bind_port, tcp_port, upstream.addr);
    config += &tls_secret("api-cert", "certs", &crt, &key, None);
    config += &tls_secret("private-cert", "vault", &crt, &key, None);
    config += r#"apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {name: gateways-may-read, namespace: certs}
spec:
  from: [{group: gateway.networking.k8s.io, kind: Gateway, namespace: default}]
  to: [{group: "", kind: Secret}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: api, namespace: default}
spec:
  gatewayClassName: istio
  listeners:
  - name: https
    port: 443
    protocol: HTTPS
    hostname: api.example.com
    tls:
      mode: Terminate
      certificateRefs: [{name: api-cert, namespace: certs}]
  - name: nogrant
    port: 443
    protocol: HTTPS
    hostname: nogrant.example.com
    tls:
      certificateRefs: [{name: private-cert, namespace: vault}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: api, namespace: default}
spec:
  parentRefs: [{name: api}]
  rules: [{backendRefs: [{name: httpbin, port: 8000}]}]
"#;
    dir.write("config.yaml", &config)?;
    let gateway = Gateway::start(dir.path(), &["--ebpf", "off"], None, &dir)?;
    assert!(
        gateway.stderr().contains("RefNotPermitted"),
        "{}",
        gateway.stderr()
    );
    let ca = pki.path("test-ca.crt");
    let answer = https("api.example.com", bind_port, &ca, "/headers", &[])?;
    assert_eq!(answer.status, 200, "{answer:?}\n{}", gateway.stderr());
    assert_eq!(answer.json()?["headers"]["x-forwarded-proto"], "https");
    assert_eq!(
        served_subject(bind_port, Some("nogrant.example.com"))?,
        None
    );
    Ok(())
}

/// Gateway API: a TLS listener in Passthrough mode with a TLSRoute by hostname, and a TCP
/// listener with a TCPRoute.
#[test]
fn gateway_api_tls_route_passes_through_and_tcp_route_proxies() -> anyhow::Result<()> {
    let dir = TempDir::new("tls-api-l4")?;
    let pki_dir = TempDir::new("tls-api-l4-pki")?;
    let pki = Pki::new(pki_dir.path(), "test-ca")?;
    pki.issue(
        "backend",
        "l4.example.com",
        "DNS:l4.example.com",
        Key::EcP256Pkcs8,
        false,
    )?;
    let (_backend, backend_port) = tls_upstream(&pki, "backend")?;
    let upstream = Upstream::start(None, "127.0.0.1:0", "httpbin")?;
    let (bind_port, tcp_port) = (free_port(), free_port());
    let mut config = common_config(bind_port, tcp_port, upstream.addr);
    config += &format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: backend, namespace: default}}
spec:
  ports: [{{name: tls, port: 443, targetPort: {backend_port}}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: backend-1
  namespace: default
  labels: {{kubernetes.io/service-name: backend}}
addressType: IPv4
ports: [{{name: tls, port: {backend_port}}}]
endpoints:
- addresses: ["127.0.0.1"]
---
"#
    );
    config += r#"apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: l4, namespace: default}
spec:
  gatewayClassName: istio
  listeners:
  - {name: tls, port: 443, protocol: TLS, hostname: "*.example.com", tls: {mode: Passthrough}}
  - {name: tcp, port: 9000, protocol: TCP}
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TLSRoute
metadata: {name: l4, namespace: default}
spec:
  parentRefs: [{name: l4, sectionName: tls}]
  hostnames: ["l4.example.com"]
  rules: [{backendRefs: [{name: backend, port: 443}]}]
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TCPRoute
metadata: {name: raw, namespace: default}
spec:
  parentRefs: [{name: l4, sectionName: tcp}]
  rules: [{backendRefs: [{name: httpbin, port: 8000}]}]
"#;
    dir.write("config.yaml", &config)?;
    let gateway = Gateway::start(dir.path(), &["--ebpf", "off"], None, &dir)?;
    let ca = pki.path("test-ca.crt");
    let passed = https("l4.example.com", bind_port, &ca, "/", &[])?;
    assert_eq!(passed.status, 200, "{passed:?}\n{}", gateway.stderr());
    assert!(passed.body.contains("s_server"), "{}", passed.body);
    // A name the listener accepts but no TLSRoute serves: closed.
    assert_eq!(served_subject(bind_port, Some("other.example.com"))?, None);
    let raw = curl(None, &[&format!("http://127.0.0.1:{tcp_port}/headers")])?;
    assert_eq!(raw.status, 200, "{raw:?}");
    Ok(())
}
