//! HTTPRoute cases on the suite's other Gateways: `same-namespace-with-https-listener`
//! (four HTTPS listeners on 443, one certificate), `same-namespace-with-http-listener-on-8080`,
//! beside `same-namespace` on 80. HTTPS requests go through curl with the SNI and Host
//! asked for, verifying the gateway's certificate against the test CA.

use gateway_tests::{CurlResponse, TempDir, Upstream, curl, free_port};

use super::same_namespace_gateway;
use crate::conformance::{INFRA, backend, class_and_ports, serve};
use crate::tls::{Key, Pki, tls_secret};

/// The suite's `same-namespace-with-https-listener` Gateway (from its base manifests) and
/// `same-namespace-with-http-listener-on-8080` (from HTTPRouteRedirectPortAndScheme's).
fn more_gateways() -> String {
    let tls = format!(
        r#"tls: {{certificateRefs: [{{group: "", kind: Secret, name: tls-validity-checks-certificate, namespace: {INFRA}}}]}}"#
    );
    let listener = |name: &str, hostname: &str| {
        let hostname = if hostname.is_empty() {
            String::new()
        } else {
            format!("hostname: \"{hostname}\", ")
        };
        format!(
            "  - {{name: {name}, port: 443, {hostname}protocol: HTTPS, allowedRoutes: {{namespaces: {{from: Same}}}}, {tls}}}\n"
        )
    };
    format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: same-namespace-with-https-listener, namespace: {INFRA}}}
spec:
  gatewayClassName: gateway-conformance
  listeners:
{}{}{}{}---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: same-namespace-with-http-listener-on-8080, namespace: {INFRA}}}
spec:
  gatewayClassName: gateway-conformance
  listeners:
  - {{name: http, port: 8080, protocol: HTTP, allowedRoutes: {{namespaces: {{from: Same}}}}}}
---
"#,
        listener("https", ""),
        listener("https-with-hostname", "second-example.org"),
        listener("https-with-wildcard-hostname", "*.wildcard.org"),
        listener(
            "https-with-hostname-matching-wildcard",
            "fourth-example.wildcard.org"
        ),
    )
}

/// The three Gateways (80, 8080, 443 bound to free ports), the suite's certificate and
/// backends, and `routes`.
struct Listeners {
    _dir: TempDir,
    pki_dir: TempDir,
    ports: [u16; 3],
    _gateway: gateway_tests::Gateway,
    _upstreams: [Upstream; 3],
}

impl Listeners {
    fn start(label: &str, routes: &str) -> anyhow::Result<Self> {
        let dir = TempDir::new(label)?;
        let pki_dir = TempDir::new(&format!("{label}-pki"))?;
        let pki = Pki::new(pki_dir.path(), "test-ca")?;
        // The suite's certificate is for `*`, `*.org` and `*.wildcard.org`; curl (OpenSSL)
        // does not take a wildcard right under a top-level domain, so the names are spelt.
        let (cert, key) = pki.issue(
            "server",
            "example.org",
            "DNS:example.org,DNS:second-example.org,DNS:unknown-example.org,DNS:*.wildcard.org",
            Key::EcP256Pkcs8,
            false,
        )?;
        let upstreams = [
            Upstream::start(None, "127.0.0.1:0", "infra-backend-v1")?,
            Upstream::start(None, "127.0.0.1:0", "infra-backend-v2")?,
            Upstream::start(None, "127.0.0.1:0", "infra-backend-v3")?,
        ];
        let ports = [free_port(), free_port(), free_port()];
        let mut config = class_and_ports(&[(80, ports[0]), (8080, ports[1]), (443, ports[2])])
            + &same_namespace_gateway()
            + &more_gateways()
            + &tls_secret("tls-validity-checks-certificate", INFRA, &cert, &key, None);
        for (i, upstream) in upstreams.iter().enumerate() {
            config += &backend(
                &format!("infra-backend-v{}", i + 1),
                INFRA,
                8080,
                upstream.addr,
            );
        }
        config += routes;
        let gateway = serve(&dir, &config)?;
        Ok(Listeners {
            _dir: dir,
            pki_dir,
            ports,
            _gateway: gateway,
            _upstreams: upstreams,
        })
    }

    /// GET `path` over TLS on 443 with SNI `server_name` and Host `host` (HTTP/2 when
    /// `h2`), the certificate verified.
    fn https(
        &self,
        server_name: &str,
        host: &str,
        path: &str,
        h2: bool,
    ) -> anyhow::Result<CurlResponse> {
        let port = self.ports[2];
        let resolve = format!("{server_name}:{port}:127.0.0.1");
        let ca = self
            .pki_dir
            .path()
            .join("test-ca.crt")
            .display()
            .to_string();
        let host = format!("Host: {host}");
        let url = format!("https://{server_name}:{port}{path}");
        let version = if h2 { "--http2" } else { "--http1.1" };
        curl(
            None,
            &[
                version,
                "--resolve",
                &resolve,
                "--cacert",
                &ca,
                "-H",
                &host,
                &url,
            ],
        )
    }

    /// GET `path` in cleartext on listener port 80 (index 0) or 8080 (index 1).
    fn http(&self, listener: usize, path: &str) -> anyhow::Result<CurlResponse> {
        let url = format!("http://127.0.0.1:{}{path}", self.ports[listener]);
        curl(None, &["-H", "Host: example.com", &url])
    }
}

/// An HTTPRoute `name` on `parent_refs` (flow YAML) with `hostnames` and `rules`.
fn route(name: &str, parent_refs: &str, hostnames: &str, rules: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: {INFRA}}}\nspec:\n  parentRefs: {parent_refs}\n  hostnames: {hostnames}\n  rules:\n{rules}---\n"
    )
}

/// HTTPRouteHTTPSListener: a route with hostname `example.org` on the HTTPS listeners
/// and one on `https-with-hostname` (second-example.org) only; another name gets 404.
#[test]
fn http_route_https_listener() -> anyhow::Result<()> {
    let routes = route(
        "httproute-https-test",
        "[{name: same-namespace-with-https-listener}]",
        "[example.org]",
        "  - backendRefs: [{name: infra-backend-v1, port: 8080}]\n",
    ) + &route(
        "httproute-https-test-no-hostname",
        "[{name: same-namespace-with-https-listener, sectionName: https-with-hostname}]",
        "[]",
        "  - backendRefs: [{name: infra-backend-v2, port: 8080}]\n",
    );
    let case = Listeners::start("conf-https-listener", &routes)?;
    for (host, status, backend) in [
        ("example.org", 200, Some("infra-backend-v1")),
        ("unknown-example.org", 404, None),
        ("second-example.org", 200, Some("infra-backend-v2")),
    ] {
        let answer = case.https(host, host, "/", false)?;
        assert_eq!(answer.status, status, "{host}: {answer:?}");
        if let Some(backend) = backend {
            assert_eq!(answer.json()?["upstream"], backend, "{host}");
        }
    }
    Ok(())
}

/// HTTPRouteHTTPSListenerDetectMisdirectedRequests: over HTTP/2, a request whose Host
/// another HTTPS listener on the port would serve, on a connection whose SNI chose
/// this one, gets 421; a Host no other listener serves is routed here (200 or 404).
#[test]
fn http_route_https_listener_detect_misdirected_requests() -> anyhow::Result<()> {
    let rule = |to: &str| {
        format!(
            "  - matches: [{{path: {{type: PathPrefix, value: /detect-misdirected-requests}}}}]\n    backendRefs: [{{name: infra-backend-{to}, port: 8080}}]\n"
        )
    };
    let on = |section: &str| {
        format!("[{{name: same-namespace-with-https-listener, sectionName: {section}}}]")
    };
    let routes = route(
        "https-listener-detect-misdirected-requests-test-1",
        &on("https"),
        "[example.org]",
        &rule("v1"),
    ) + &route(
        "https-listener-detect-misdirected-requests-test-2",
        &on("https-with-hostname"),
        "[]",
        &rule("v2"),
    ) + &route(
        "https-listener-detect-misdirected-requests-test-3",
        &on("https-with-wildcard-hostname"),
        "[]",
        &rule("v3"),
    ) + &route(
        "https-listener-detect-misdirected-requests-test-4",
        &on("https-with-hostname-matching-wildcard"),
        "[]",
        &rule("v1"),
    );
    let case = Listeners::start("conf-misdirected", &routes)?;
    let cases: &[(&str, &str, u16, Option<&str>)] = &[
        ("example.org", "example.org", 200, Some("v1")),
        ("example.org", "second-example.org", 421, None),
        ("example.org", "unknown-example.org", 404, None),
        ("second-example.org", "second-example.org", 200, Some("v2")),
        ("second-example.org", "example.org", 421, None),
        ("second-example.org", "unknown-example.org", 421, None),
        (
            "third-example.wildcard.org",
            "third-example.wildcard.org",
            200,
            Some("v3"),
        ),
        (
            "third-example.wildcard.org",
            "fith-example.wildcard.org",
            200,
            Some("v3"),
        ),
        (
            "third-example.wildcard.org",
            "fourth-example.wildcard.org",
            421,
            None,
        ),
        (
            "third-example.wildcard.org",
            "second-example.org",
            421,
            None,
        ),
        (
            "third-example.wildcard.org",
            "unknown-example.org",
            421,
            None,
        ),
        (
            "fourth-example.wildcard.org",
            "fourth-example.wildcard.org",
            200,
            Some("v1"),
        ),
        (
            "fourth-example.wildcard.org",
            "fith-example.wildcard.org",
            421,
            None,
        ),
        ("unknown-example.org", "example.org", 200, Some("v1")),
        ("unknown-example.org", "unknown-example.org", 404, None),
    ];
    for (server_name, host, status, backend) in cases {
        let answer = case.https(server_name, host, "/detect-misdirected-requests", true)?;
        let what = format!("SNI {server_name}, Host {host}");
        assert!(answer.head.starts_with("HTTP/2"), "{what}: {answer:?}");
        assert_eq!(answer.status, *status, "{what}: {answer:?}");
        if let Some(backend) = backend {
            assert_eq!(
                answer.json()?["upstream"],
                format!("infra-backend-{backend}"),
                "{what}"
            );
        }
    }
    Ok(())
}

/// A Location's scheme, host and port (None when it names none).
fn location_parts(answer: &CurlResponse) -> (String, String, Option<u16>) {
    let location = answer.header("location").unwrap_or_default();
    let (scheme, rest) = location.split_once("://").unwrap_or(("", location));
    let authority = rest.split('/').next().unwrap_or_default();
    match authority.rsplit_once(':') {
        Some((host, port)) => (scheme.to_owned(), host.to_owned(), port.parse().ok()),
        None => (scheme.to_owned(), authority.to_owned(), None),
    }
}

/// As the suite checks a redirect: 302, the scheme and host, and the port when one is
/// expected; with none expected, the Location names no port or the scheme's own.
fn expect_redirect(answer: &CurlResponse, what: &str, scheme: &str, port: Option<u16>) {
    assert_eq!(answer.status, 302, "{what}: {answer:?}");
    let (got_scheme, host, got_port) = location_parts(answer);
    assert_eq!(got_scheme, scheme, "{what}: {answer:?}");
    assert_eq!(host, "example.org", "{what}: {answer:?}");
    let well_known = if scheme == "https" { 443 } else { 80 };
    match port {
        Some(port) => assert_eq!(got_port, Some(port), "{what}: {answer:?}"),
        None => assert!(
            got_port.is_none() || got_port == Some(well_known),
            "{what}: {answer:?}"
        ),
    }
}

/// The redirect rules of HTTPRouteRedirectPortAndScheme: (prefix, scheme, port), every
/// one to hostname example.org.
fn redirect_rules(rules: &[(&str, Option<&str>, Option<u16>)]) -> String {
    rules
        .iter()
        .map(|(prefix, scheme, port)| {
            let mut redirect = String::from("hostname: example.org");
            if let Some(scheme) = scheme {
                redirect += &format!(", scheme: {scheme}");
            }
            if let Some(port) = port {
                redirect += &format!(", port: {port}");
            }
            format!(
                "  - matches: [{{path: {{type: PathPrefix, value: {prefix}}}}}]\n    filters: [{{type: RequestRedirect, requestRedirect: {{{redirect}}}}}]\n"
            )
        })
        .collect()
}

/// HTTPRouteRedirectPortAndScheme: without a port the redirect keeps the listener's
/// port unless the scheme changes (then the scheme's own port, left out); an explicit
/// port is named unless it is the scheme's own. On the HTTP listeners on 80 and 8080
/// and the HTTPS one on 443.
#[test]
fn http_route_redirect_port_and_scheme() -> anyhow::Result<()> {
    let on_80 = redirect_rules(&[
        ("/scheme-nil-and-port-nil", None, None),
        ("/scheme-nil-and-port-80", None, Some(80)),
        ("/scheme-nil-and-port-8080", None, Some(8080)),
        ("/scheme-https-and-port-nil", Some("https"), None),
        ("/scheme-https-and-port-443", Some("https"), Some(443)),
        ("/scheme-https-and-port-8443", Some("https"), Some(8443)),
    ]);
    let on_8080 = redirect_rules(&[
        ("/scheme-nil-and-port-nil", None, None),
        ("/scheme-nil-and-port-80", None, Some(80)),
        ("/scheme-https-and-port-nil", Some("https"), None),
    ]);
    let on_443 = redirect_rules(&[
        ("/scheme-nil-and-port-nil", None, None),
        ("/scheme-nil-and-port-443", None, Some(443)),
        ("/scheme-nil-and-port-8443", None, Some(8443)),
        ("/scheme-http-and-port-nil", Some("http"), None),
        ("/scheme-http-and-port-80", Some("http"), Some(80)),
        ("/scheme-http-and-port-8080", Some("http"), Some(8080)),
    ]);
    let routes = route(
        "http-route-for-listener-on-port-80",
        "[{name: same-namespace}]",
        "[]",
        &on_80,
    ) + &route(
        "http-route-for-listener-on-port-8080",
        "[{name: same-namespace-with-http-listener-on-8080}]",
        "[]",
        &on_8080,
    ) + &route(
        "http-route-for-listener-on-port-443",
        "[{name: same-namespace-with-https-listener}]",
        "[]",
        &on_443,
    );
    let case = Listeners::start("conf-redirect-port-scheme", &routes)?;
    for (path, scheme, port) in [
        ("/scheme-nil-and-port-nil", "http", None),
        ("/scheme-nil-and-port-80", "http", None),
        ("/scheme-nil-and-port-8080", "http", Some(8080)),
        ("/scheme-https-and-port-nil", "https", None),
        ("/scheme-https-and-port-443", "https", None),
        ("/scheme-https-and-port-8443", "https", Some(8443)),
    ] {
        expect_redirect(&case.http(0, path)?, &format!("80 {path}"), scheme, port);
    }
    for (path, scheme, port) in [
        ("/scheme-nil-and-port-nil", "http", Some(8080)),
        ("/scheme-nil-and-port-80", "http", None),
        ("/scheme-https-and-port-nil", "https", None),
    ] {
        expect_redirect(&case.http(1, path)?, &format!("8080 {path}"), scheme, port);
    }
    for (path, scheme, port) in [
        ("/scheme-nil-and-port-nil", "https", None),
        ("/scheme-nil-and-port-443", "https", None),
        ("/scheme-nil-and-port-8443", "https", Some(8443)),
        ("/scheme-http-and-port-nil", "http", None),
        ("/scheme-http-and-port-80", "http", None),
        ("/scheme-http-and-port-8080", "http", Some(8080)),
    ] {
        let answer = case.https("example.org", "example.org", path, false)?;
        expect_redirect(&answer, &format!("443 {path}"), scheme, port);
    }
    Ok(())
}
