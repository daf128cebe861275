//! The HTTP data plane end to end: every VirtualService route action, the status codes
//! and response flags Envoy gives, upgrades, trailers and h2c upstreams, with the real
//! gatewayd, the real demo upstream and curl (or raw bytes where the exact bytes matter).

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use gateway_tests::{Gateway, TempDir, Upstream, curl, free_port, http_get};

const HOST: &str = "Host: h.example";

/// A Gateway for `h.example` on port 80 bound to `bind_port`, plus `extra` documents.
fn config(bind_port: u16, extra: &str) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: gw, namespace: default}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 80, name: http, protocol: HTTP}}
    hosts: ["h.example"]
---
apiVersion: v1
kind: Service
metadata: {{name: istio-ingressgateway, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  ports: [{{name: http2, port: 80, targetPort: {bind_port}}}]
{extra}"#
    )
}

/// A Service `name` (port 8000) whose endpoints are `endpoints`, one EndpointSlice each
/// (so their ports may differ).
fn service(name: &str, app_protocol: Option<&str>, endpoints: &[SocketAddr]) -> String {
    let app_protocol = app_protocol
        .map(|p| format!(", appProtocol: {p}"))
        .unwrap_or_default();
    let mut yaml = format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  ports: [{{name: http, port: 8000{app_protocol}}}]\n"
    );
    for (i, endpoint) in endpoints.iter().enumerate() {
        yaml.push_str(&format!(
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-{i}\n  namespace: default\n  labels: {{kubernetes.io/service-name: {name}}}\naddressType: IPv4\nports: [{{name: http, port: {}}}]\nendpoints:\n- addresses: [\"{}\"]\n",
            endpoint.port(),
            endpoint.ip()
        ));
    }
    yaml
}

/// A VirtualService for `h.example` bound to the gateway with these `http` routes.
fn virtual_service(http: &str) -> String {
    format!(
        "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: vs, namespace: default}}\nspec:\n  hosts: [h.example]\n  gateways: [gw]\n  http:\n{http}"
    )
}

fn start(label: &str, extra: &str) -> anyhow::Result<(Gateway, TempDir, String)> {
    let dir = TempDir::new(label)?;
    let bind_port = free_port();
    dir.write("config.yaml", &config(bind_port, extra))?;
    let gateway = Gateway::start(dir.path(), &["--ebpf", "off"], None, &dir)?;
    Ok((gateway, dir, format!("http://127.0.0.1:{bind_port}")))
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// What the demo upstream has seen so far: (method, path, host).
fn seen(upstream: &Upstream) -> anyhow::Result<Vec<(String, String, String)>> {
    let (_, body) = http_get(upstream.addr, "/__requests")?;
    let list: serde_json::Value = serde_json::from_str(&body).context("upstream /__requests")?;
    Ok(list
        .as_array()
        .context("a list")?
        .iter()
        .map(|r| {
            let s = |k: &str| r[k].as_str().unwrap_or_default().to_owned();
            (s("method"), s("path"), s("host"))
        })
        .collect())
}

/// A port nothing listens on (bound, then released).
fn dead_endpoint() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// Every kind of VirtualService match picks its route (each route answers its own
/// name), first match wins, and a request no match takes falls to the catch-all.
#[test]
fn every_match_kind_selects_its_route() -> anyhow::Result<()> {
    let route = |name: &str, matches: &str| {
        format!(
            "  - match: [{matches}]\n    directResponse: {{status: 200, body: {{string: {name}}}}}\n"
        )
    };
    let routes = [
        route("exact", "{uri: {exact: /exact}}"),
        route("regex", "{uri: {regex: \"/re/[0-9]+\"}}"),
        route(
            "ignore-case",
            "{uri: {prefix: /CaseLess}, ignoreUriCase: true}",
        ),
        route("method", "{uri: {prefix: /m}, method: {exact: POST}}"),
        route(
            "header-exact",
            "{uri: {prefix: /h}, headers: {x-env: {exact: prod}}}",
        ),
        route(
            "header-prefix",
            "{uri: {prefix: /h}, headers: {x-env: {prefix: stag}}}",
        ),
        route(
            "header-regex",
            "{uri: {prefix: /h}, headers: {x-env: {regex: \"dev-[a-z]+\"}}}",
        ),
        route(
            "without-header",
            "{uri: {prefix: /h}, withoutHeaders: {x-block: {exact: \"yes\"}}}",
        ),
        route(
            "query-exact",
            "{uri: {prefix: /q}, queryParams: {v: {exact: \"1\"}}}",
        ),
        route(
            "query-regex",
            "{uri: {prefix: /q}, queryParams: {v: {regex: \"[0-9]+\"}}}",
        ),
        route("scheme", "{uri: {prefix: /s}, scheme: {exact: https}}"),
        route(
            "authority",
            "{uri: {prefix: /a}, authority: {prefix: h.ex}}",
        ),
        route("port", "{uri: {prefix: /p}, port: 80}"),
        route("prefix", "{uri: {prefix: /}}"),
    ]
    .concat();
    let (_gateway, _dir, base) = start("match-kinds", &virtual_service(&routes))?;
    let ask = |path: &str, extra: &[&str]| -> anyhow::Result<String> {
        let url = format!("{base}{path}");
        let mut args = vec!["-H", HOST];
        args.extend_from_slice(extra);
        args.push(&url);
        let answer = curl(None, &args)?;
        anyhow::ensure!(answer.status == 200, "{path}: {answer:?}");
        Ok(answer.body)
    };
    let cases: &[(&str, &[&str], &str)] = &[
        ("/exact", &[], "exact"),
        ("/exact/more", &[], "prefix"),
        ("/re/123", &[], "regex"),
        ("/re/abc", &[], "prefix"),
        ("/caseless/x", &[], "ignore-case"),
        ("/CASELESS", &[], "ignore-case"),
        ("/m", &["-X", "POST"], "method"),
        ("/m", &[], "prefix"),
        ("/h", &["-H", "x-env: prod"], "header-exact"),
        ("/h", &["-H", "x-env: staging"], "header-prefix"),
        ("/h", &["-H", "x-env: dev-blue"], "header-regex"),
        ("/h", &["-H", "x-env: dev-1"], "without-header"),
        ("/h", &[], "without-header"),
        ("/h", &["-H", "x-block: yes"], "prefix"),
        ("/q?v=1", &[], "query-exact"),
        ("/q?a=b&v=42", &[], "query-regex"),
        ("/q?v=x", &[], "prefix"),
        ("/s", &[], "prefix"),
        ("/a", &[], "authority"),
        ("/p", &[], "port"),
    ];
    for (path, extra, expected) in cases {
        assert_eq!(ask(path, extra)?, *expected, "{path} {extra:?}");
    }
    Ok(())
}

#[test]
fn redirects_direct_responses_and_cors() -> anyhow::Result<()> {
    let upstream = Upstream::start(None, "127.0.0.1:0", "web")?;
    let routes = r#"
  - match: [{uri: {prefix: /old}}]
    redirect: {uri: /new, redirectCode: 302}
  - match: [{uri: {exact: /secure}}]
    redirect: {scheme: https, authority: secure.example}
  - match: [{uri: {prefix: /direct}}]
    directResponse: {status: 418, body: {string: "short and stout\n"}}
    headers: {response: {set: {x-teapot: "yes"}}}
  - match: [{uri: {prefix: /cors}}]
    corsPolicy:
      allowOrigins: [{exact: "https://ok.example"}, {regex: "https://.*\\.trusted\\.example"}]
      allowMethods: [GET, POST]
      allowHeaders: [x-custom]
      exposeHeaders: [x-upstream-name]
      maxAge: 1h
      allowCredentials: true
    route: [{destination: {host: web}}]
"#;
    let extra = service("web", None, &[upstream.addr]) + &virtual_service(routes);
    let (gateway, _dir, base) = start("http-local", &extra)?;

    let moved = curl(None, &["-H", HOST, &format!("{base}/old/page?q=1")])?;
    assert_eq!(moved.status, 302, "{moved:?}\n{}", gateway.stderr());
    assert_eq!(
        header(&moved.head, "location"),
        Some("http://h.example/new?q=1")
    );

    let secure = curl(
        None,
        &["-H", "Host: h.example:8080", &format!("{base}/secure")],
    )?;
    assert_eq!(secure.status, 301);
    // A new authority (Envoy's host_redirect) takes no port from the request.
    assert_eq!(
        header(&secure.head, "location"),
        Some("https://secure.example/secure")
    );

    let direct = curl(None, &["-H", HOST, &format!("{base}/direct")])?;
    assert_eq!(
        (direct.status, direct.body.as_str()),
        (418, "short and stout\n")
    );
    assert_eq!(header(&direct.head, "x-teapot"), Some("yes"));

    // Preflight from an allowed origin: answered by the gateway.
    let preflight = curl(
        None,
        &[
            "-X",
            "OPTIONS",
            "-H",
            HOST,
            "-H",
            "Origin: https://app.trusted.example",
            "-H",
            "Access-Control-Request-Method: POST",
            &format!("{base}/cors"),
        ],
    )?;
    assert_eq!(preflight.status, 200, "{preflight:?}");
    assert_eq!(
        header(&preflight.head, "access-control-allow-origin"),
        Some("https://app.trusted.example")
    );
    assert_eq!(
        header(&preflight.head, "access-control-allow-methods"),
        Some("GET,POST")
    );
    assert_eq!(
        header(&preflight.head, "access-control-max-age"),
        Some("3600")
    );
    assert_eq!(header(&preflight.head, "x-upstream-name"), None);
    // A simple request from an allowed origin: proxied, CORS headers added.
    let allowed = curl(
        None,
        &[
            "-H",
            HOST,
            "-H",
            "Origin: https://ok.example",
            &format!("{base}/cors"),
        ],
    )?;
    assert_eq!(allowed.status, 200);
    assert_eq!(
        header(&allowed.head, "access-control-allow-origin"),
        Some("https://ok.example")
    );
    assert_eq!(
        header(&allowed.head, "access-control-allow-credentials"),
        Some("true")
    );
    // Another origin gets no CORS headers; its preflight goes to the upstream.
    let denied = curl(
        None,
        &[
            "-X",
            "OPTIONS",
            "-H",
            HOST,
            "-H",
            "Origin: https://evil.example",
            "-H",
            "Access-Control-Request-Method: POST",
            &format!("{base}/cors"),
        ],
    )?;
    assert_eq!(header(&denied.head, "access-control-allow-origin"), None);
    assert_eq!(header(&denied.head, "x-upstream-name"), Some("web"));

    // Redirects and direct responses never reach the upstream.
    let paths: Vec<String> = seen(&upstream)?.into_iter().map(|(_, p, _)| p).collect();
    assert_eq!(paths, ["/cors", "/cors"]);
    Ok(())
}

#[test]
fn rewrites_header_operations_faults_and_mirrors() -> anyhow::Result<()> {
    let upstream = Upstream::start(None, "127.0.0.1:0", "web")?;
    let shadow = Upstream::start(None, "127.0.0.1:0", "shadow")?;
    let shadow_h2 = Upstream::start(None, "127.0.0.1:0", "shadow-h2")?;
    let routes = r#"
  - match: [{uri: {prefix: /api/}}]
    rewrite: {uri: /v2/, authority: backend.internal}
    route: [{destination: {host: web}}]
  - match: [{uri: {prefix: /service/}}]
    rewrite: {uriRegexRewrite: {match: "^/service/([^/]+)(/.*)$", rewrite: "\\2/instance/\\1"}}
    route: [{destination: {host: web}}]
  - match: [{uri: {prefix: /headers}}]
    headers:
      request: {set: {x-route: a}, add: {x-added: b}, remove: [x-drop]}
      response: {set: {x-resp: c}, remove: [x-upstream-name]}
    route:
    - destination: {host: web}
      headers: {request: {set: {x-dest: d}}, response: {add: {x-dest-resp: e}}}
  - match: [{uri: {prefix: /abort}}]
    fault: {abort: {httpStatus: 418, percentage: {value: 100}}}
    route: [{destination: {host: web}}]
  - match: [{uri: {prefix: /slow}}]
    fault: {delay: {fixedDelay: 100ms, percentage: {value: 100}}}
    route: [{destination: {host: web}}]
  - match: [{uri: {prefix: /mirrored}}]
    mirror: {host: shadow}
    mirrorPercentage: {value: 100}
    route: [{destination: {host: web}}]
  - match: [{uri: {prefix: /h2-mirrored}}]
    mirror: {host: shadow-h2}
    mirrorPercentage: {value: 100}
    route: [{destination: {host: web}}]
"#;
    let extra = service("web", None, &[upstream.addr])
        + &service("shadow", None, &[shadow.addr])
        + &service("shadow-h2", Some("http2"), &[shadow_h2.addr])
        + &virtual_service(routes);
    let (gateway, _dir, base) = start("http-forward", &extra)?;

    let rewritten = curl(None, &["-H", HOST, &format!("{base}/api/users?x=1")])?.json()?;
    assert_eq!(rewritten["path"], "/v2/users?x=1");
    assert_eq!(rewritten["host"], "backend.internal");
    let regex = curl(None, &["-H", HOST, &format!("{base}/service/foo/v1/api")])?.json()?;
    assert_eq!(regex["path"], "/v1/api/instance/foo");

    let with_headers = curl(
        None,
        &["-H", HOST, "-H", "x-drop: gone", &format!("{base}/headers")],
    )?;
    let echo = with_headers.json()?;
    assert_eq!(echo["headers"]["x-route"], "a");
    assert_eq!(echo["headers"]["x-added"], "b");
    assert_eq!(echo["headers"]["x-dest"], "d");
    assert!(echo["headers"].get("x-drop").is_none(), "{echo}");
    assert_eq!(header(&with_headers.head, "x-resp"), Some("c"));
    assert_eq!(header(&with_headers.head, "x-dest-resp"), Some("e"));
    assert_eq!(header(&with_headers.head, "x-upstream-name"), None);

    let aborted = curl(None, &["-H", HOST, &format!("{base}/abort")])?;
    assert_eq!(
        (aborted.status, aborted.body.as_str()),
        (418, "fault filter abort")
    );
    let delayed = curl(None, &["-H", HOST, &format!("{base}/slow")])?;
    assert_eq!(delayed.status, 200);

    // The copy is fire-and-forget: wait for it to land. Over HTTP/2 (appProtocol http2)
    // the copy's :authority carries the mark, as its Host does over HTTP/1.1.
    for (path, shadow) in [("/mirrored?m=1", &shadow), ("/h2-mirrored?m=2", &shadow_h2)] {
        let mirrored = curl(None, &["-H", HOST, &format!("{base}{path}")])?;
        assert_eq!(header(&mirrored.head, "x-upstream-name"), Some("web"));
        let deadline = Instant::now() + Duration::from_secs(5);
        let shadowed = loop {
            let seen = seen(shadow)?;
            if !seen.is_empty() || Instant::now() > deadline {
                break seen;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        assert_eq!(
            shadowed,
            [(
                "GET".to_owned(),
                path.to_owned(),
                "h.example-shadow".to_owned()
            )],
            "{path}"
        );
    }

    let log = gateway.access_log();
    assert!(log.contains("\"GET /abort HTTP/1.1\" 418 FI "), "{log}");
    assert!(log.contains("\"GET /slow HTTP/1.1\" 200 DI "), "{log}");
    // Aborted requests never reach the upstream.
    assert!(!seen(&upstream)?.iter().any(|(_, p, _)| p == "/abort"));
    Ok(())
}

/// Answers every connection with `reply` and closes it.
fn broken_upstream(reply: &'static [u8]) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            let _ = stream.write_all(reply);
        }
    });
    Ok(addr)
}

#[test]
fn timeouts_retries_and_upstream_failures() -> anyhow::Result<()> {
    let upstream = Upstream::start(None, "127.0.0.1:0", "web")?;
    let garbage = broken_upstream(b"HTTP/1.1 abc what\r\n\r\n")?;
    let hangup = broken_upstream(b"")?;
    let routes = r#"
  - match: [{uri: {prefix: /delay}}]
    timeout: 300ms
    route: [{destination: {host: web}}]
  - match: [{uri: {prefix: /status/500}}]
    retries: {attempts: 1, retryOn: 5xx}
    route: [{destination: {host: web}}]
  - match: [{uri: {prefix: /status}}]
    route: [{destination: {host: web}}]
  - match: [{uri: {prefix: /flaky}}]
    retries: {attempts: 5, retryOn: connect-failure}
    rewrite: {uri: /status/200}
    route: [{destination: {host: half-dead}}]
  - match: [{uri: {prefix: /dead}}]
    route: [{destination: {host: dead}}]
  - match: [{uri: {prefix: /garbage}}]
    route: [{destination: {host: garbage}}]
  - match: [{uri: {prefix: /hangup}}]
    route: [{destination: {host: hangup}}]
"#;
    let extra = service("web", None, &[upstream.addr])
        + &service("half-dead", None, &[dead_endpoint(), upstream.addr])
        + &service("dead", None, &[dead_endpoint()])
        + &service("garbage", None, &[garbage])
        + &service("hangup", None, &[hangup])
        + &virtual_service(routes);
    let (gateway, _dir, base) = start("http-failures", &extra)?;

    let timed_out = curl(None, &["-H", HOST, &format!("{base}/delay/3")])?;
    assert_eq!(
        (timed_out.status, timed_out.body.as_str()),
        (504, "upstream request timeout")
    );

    // Istio's default policy (≥ 1.24) names no status code: a 503 is not retried.
    let unavailable = curl(None, &["-H", HOST, &format!("{base}/status/503")])?;
    assert_eq!(unavailable.status, 503);
    let internal = curl(None, &["-H", HOST, &format!("{base}/status/500")])?;
    assert_eq!(internal.status, 500);
    let tries = |path: &str| -> anyhow::Result<usize> {
        Ok(seen(&upstream)?
            .iter()
            .filter(|(_, p, _)| p == path)
            .count())
    };
    assert_eq!(tries("/status/503")?, 1);
    assert_eq!(tries("/status/500")?, 2);

    // One endpoint refuses connections: retries on connect-failure hide it.
    for _ in 0..10 {
        let flaky = curl(None, &["-H", HOST, &format!("{base}/flaky")])?;
        assert_eq!(flaky.status, 200, "{flaky:?}\n{}", gateway.access_log());
    }

    let dead = curl(None, &["-H", HOST, &format!("{base}/dead")])?;
    assert_eq!(dead.status, 503);
    assert!(dead.body.contains("connection failure"), "{}", dead.body);
    let garbled = curl(None, &["-H", HOST, &format!("{base}/garbage")])?;
    assert_eq!(garbled.status, 502);
    let hung_up = curl(None, &["-H", HOST, &format!("{base}/hangup")])?;
    assert_eq!(hung_up.status, 503);
    assert!(
        hung_up.body.contains("connection termination"),
        "{}",
        hung_up.body
    );

    let log = gateway.access_log();
    for line in [
        "\"GET /delay/3 HTTP/1.1\" 504 UT ",
        "\"GET /status/503 HTTP/1.1\" 503 - ",
        "\"GET /status/500 HTTP/1.1\" 500 URX ",
        "\"GET /dead HTTP/1.1\" 503 UF,URX ",
        "\"GET /garbage HTTP/1.1\" 502 UPE ",
        "\"GET /hangup HTTP/1.1\" 503 UC ",
    ] {
        assert!(log.contains(line), "{line} not in\n{log}");
    }
    Ok(())
}

/// An endpoint that never completes a TCP handshake, like a host that went away: a
/// listener that never accepts, its accept queue filled, so the kernel drops further
/// SYNs and a connect hangs until the connecting side gives up.
fn unresponsive_endpoint() -> anyhow::Result<(TcpListener, Vec<TcpStream>)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let mut queued = Vec::new();
    while let Ok(stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
        queued.push(stream);
        anyhow::ensure!(queued.len() < 10_000, "the accept queue never filled");
    }
    Ok((listener, queued))
}

/// DestinationRule `connectionPool.tcp.connectTimeout` bounds the wait for a host that
/// does not answer (Istio's default is 10 s).
#[test]
fn destination_rule_connect_timeout_bounds_a_silent_host() -> anyhow::Result<()> {
    let (silent, _queued) = unresponsive_endpoint()?;
    let routes = r#"
  - retries: {attempts: 0}
    route: [{destination: {host: silent}}]
"#;
    let rule = r#"---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: silent, namespace: default}
spec:
  host: silent
  trafficPolicy: {connectionPool: {tcp: {connectTimeout: 500ms}}}
"#;
    let extra = service("silent", None, &[silent.local_addr()?]) + rule + &virtual_service(routes);
    let (gateway, _dir, base) = start("connect-timeout", &extra)?;

    let started = Instant::now();
    let answer = curl(None, &["-H", HOST, &format!("{base}/anything")])?;
    let waited = started.elapsed();
    assert_eq!(answer.status, 503, "{answer:?}");
    assert!(
        answer.body.contains("connection failure"),
        "{}",
        answer.body
    );
    assert!(
        waited < Duration::from_secs(5),
        "answered after {waited:?}: the rule's 500ms connect timeout was not applied"
    );
    let log = gateway.access_log();
    assert!(
        log.contains("\"GET /anything HTTP/1.1\" 503 UF "),
        "no UF line in\n{log}"
    );
    Ok(())
}

/// An HTTP/2 (h2c) upstream that refuses the first `refuse` streams with REFUSED_STREAM
/// (what a server does when it cannot take a stream, e.g. while shutting down) and
/// answers 200 `served` to the rest. Returns its address and the streams it saw.
fn refusing_h2_upstream(
    refuse: usize,
) -> anyhow::Result<(SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>)> {
    use std::sync::{Arc, atomic::AtomicUsize, atomic::Ordering};
    let listener = TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let streams = Arc::new(AtomicUsize::new(0));
    let seen = streams.clone();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::spawn(move || {
        runtime.block_on(async move {
            let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                return;
            };
            while let Ok((socket, _)) = listener.accept().await {
                let seen = seen.clone();
                tokio::spawn(async move {
                    let Ok(mut connection) = h2::server::handshake(socket).await else {
                        return;
                    };
                    while let Some(Ok((_request, mut respond))) = connection.accept().await {
                        if seen.fetch_add(1, Ordering::SeqCst) < refuse {
                            respond.send_reset(h2::Reason::REFUSED_STREAM);
                            continue;
                        }
                        let response = http::Response::builder().status(200).body(());
                        if let Ok(response) = response
                            && let Ok(mut body) = respond.send_response(response, false)
                        {
                            let _ = body.send_data(bytes::Bytes::from_static(b"served"), true);
                        }
                    }
                });
            }
        });
    });
    Ok((addr, streams))
}

/// Istio's default retry policy includes `refused-stream`: a stream the HTTP/2 upstream
/// refused (it did no work on it) is sent again; without retries the client gets 503 UR.
#[test]
fn refused_http2_streams_are_retried() -> anyhow::Result<()> {
    use std::sync::atomic::Ordering;
    let (retried, retried_streams) = refusing_h2_upstream(1)?;
    let (refused, refused_streams) = refusing_h2_upstream(usize::MAX)?;
    let routes = r#"
  - match: [{uri: {prefix: /retried}}]
    route: [{destination: {host: retried}}]
  - match: [{uri: {prefix: /refused}}]
    retries: {attempts: 0}
    route: [{destination: {host: refused}}]
"#;
    let extra = service("retried", Some("kubernetes.io/h2c"), &[retried])
        + &service("refused", Some("kubernetes.io/h2c"), &[refused])
        + &virtual_service(routes);
    let (gateway, _dir, base) = start("refused-stream", &extra)?;

    let answer = curl(None, &["-H", HOST, &format!("{base}/retried")])?;
    assert_eq!((answer.status, answer.body.as_str()), (200, "served"));
    assert_eq!(
        retried_streams.load(Ordering::SeqCst),
        2,
        "one refused, one served"
    );

    let answer = curl(None, &["-H", HOST, &format!("{base}/refused")])?;
    assert_eq!(answer.status, 503, "{answer:?}");
    assert!(
        answer.body.contains("remote refused stream reset"),
        "{}",
        answer.body
    );
    assert_eq!(refused_streams.load(Ordering::SeqCst), 1, "no retry");
    let log = gateway.access_log();
    assert!(log.contains("\"GET /retried HTTP/1.1\" 200 - "), "{log}");
    assert!(log.contains("\"GET /refused HTTP/1.1\" 503 UR "), "{log}");
    Ok(())
}

#[test]
fn websocket_upgrades_trailers_and_h2c_upstreams() -> anyhow::Result<()> {
    let upstream = Upstream::start(None, "127.0.0.1:0", "web")?;
    let routes = r#"
  - match: [{uri: {prefix: /grpc}}]
    rewrite: {uri: /trailers}
    route: [{destination: {host: grpc}}]
  - match: [{uri: {prefix: /h2}}]
    route: [{destination: {host: grpc}}]
  - route: [{destination: {host: web}}]
"#;
    let extra = service("web", None, &[upstream.addr])
        + &service("grpc", Some("kubernetes.io/h2c"), &[upstream.addr])
        + &virtual_service(routes);
    let (gateway, _dir, base) = start("http-protocols", &extra)?;
    let addr: SocketAddr = base.trim_start_matches("http://").parse()?;

    // WebSocket: 101 through the gateway, then bytes both ways.
    let mut ws = TcpStream::connect(addr)?;
    ws.set_read_timeout(Some(Duration::from_secs(5)))?;
    ws.write_all(
        b"GET /chat HTTP/1.1\r\nHost: h.example\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )?;
    let head = read_head(&mut ws)?;
    assert!(
        head.starts_with("HTTP/1.1 101"),
        "{head}\n{}",
        gateway.stderr()
    );
    assert_eq!(header(&head, "upgrade"), Some("websocket"));
    ws.write_all(b"ping over the upgraded connection")?;
    let mut echoed = [0u8; 33];
    ws.read_exact(&mut echoed)?;
    assert_eq!(&echoed, b"ping over the upgraded connection");

    // appProtocol h2c: the upstream is spoken to in HTTP/2, whatever the client speaks.
    let h2 = curl(None, &["-H", HOST, &format!("{base}/h2")])?.json()?;
    assert_eq!(h2["version"], "HTTP/2.0");
    let h1 = curl(None, &["-H", HOST, &format!("{base}/h1")])?.json()?;
    assert_eq!(h1["version"], "HTTP/1.1");

    // Trailers (gRPC's status) cross the gateway end to end over HTTP/2.
    let grpc = curl(
        None,
        &[
            "--http2-prior-knowledge",
            "-H",
            HOST,
            "-H",
            "TE: trailers",
            &format!("{base}/grpc"),
        ],
    )?;
    assert_eq!(grpc.status, 200, "{grpc:?}");
    assert!(
        grpc.head.contains("grpc-status: 0") || grpc.body.contains("grpc-status: 0"),
        "{grpc:?}"
    );
    Ok(())
}

/// `Expect: 100-continue` is answered by the gateway, as Envoy answers it by default: the
/// client gets its 100 from the gateway, sends the body, and the upstream sees the body
/// without the Expect header (so it sends no 100 of its own).
#[test]
fn expect_100_continue_is_answered_by_the_gateway() -> anyhow::Result<()> {
    let upstream = Upstream::start(None, "127.0.0.1:0", "web")?;
    let extra = service("web", None, &[upstream.addr])
        + &virtual_service("  - route: [{destination: {host: web}}]\n");
    let (gateway, _dir, base) = start("http-expect", &extra)?;
    let addr: SocketAddr = base.trim_start_matches("http://").parse()?;

    let mut client = TcpStream::connect(addr)?;
    client.set_read_timeout(Some(Duration::from_secs(5)))?;
    client.write_all(
        b"POST /upload HTTP/1.1\r\nHost: h.example\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
    )?;
    let interim = read_head(&mut client)?;
    assert!(
        interim.starts_with("HTTP/1.1 100 Continue"),
        "{interim:?}\n{}",
        gateway.stderr()
    );
    client.write_all(b"hello")?;
    let head = read_head(&mut client)?;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let length: usize = header(&head, "content-length")
        .context("content-length")?
        .parse()?;
    let mut body = vec![0u8; length];
    client.read_exact(&mut body)?;
    let echo: serde_json::Value = serde_json::from_slice(&body)?;
    assert_eq!(echo["body_bytes"], 5, "{echo}");
    assert!(echo["headers"].get("expect").is_none(), "{echo}");

    // curl waits for the 100 too (a body over 1 KiB), and gets one answer.
    let dir = TempDir::new("http-expect-body")?;
    let file = dir.write("body", &"x".repeat(4096))?;
    let posted = curl(
        None,
        &[
            "-H",
            HOST,
            "--data-binary",
            &format!("@{}", file.display()),
            &format!("{base}/curl"),
        ],
    )?;
    let echo: serde_json::Value = serde_json::from_str(
        posted
            .body
            .split_once("\r\n\r\n")
            .map_or(posted.body.as_str(), |(_, body)| body),
    )?;
    assert_eq!(echo["body_bytes"], 4096, "{echo}");
    assert!(echo["headers"].get("expect").is_none(), "{echo}");
    Ok(())
}

/// Reads a response head (up to the blank line) byte by byte.
fn read_head(stream: &mut TcpStream) -> anyhow::Result<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte)? == 0 {
            break;
        }
        head.push(byte[0]);
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

#[test]
fn https_redirect_on_a_server_answers_301() -> anyhow::Result<()> {
    let upstream = Upstream::start(None, "127.0.0.1:0", "web")?;
    let dir = TempDir::new("http-https-redirect")?;
    let bind_port = free_port();
    let extra = service("web", None, &[upstream.addr])
        + &virtual_service("  - route: [{destination: {host: web}}]\n");
    let yaml = config(bind_port, &extra).replace(
        "    hosts: [\"h.example\"]\n",
        "    hosts: [\"h.example\"]\n    tls: {httpsRedirect: true}\n",
    );
    dir.write("config.yaml", &yaml)?;
    let gateway = Gateway::start(dir.path(), &["--ebpf", "off"], None, &dir)?;
    let response = curl(
        None,
        &[
            "-H",
            "Host: h.example:8080",
            &format!("http://127.0.0.1:{bind_port}/path?q=1"),
        ],
    )?;
    assert_eq!(response.status, 301, "{response:?}\n{}", gateway.stderr());
    // Envoy's `require_tls` (Istio's httpsRedirect) keeps the Host as sent, port and all.
    assert_eq!(
        header(&response.head, "location"),
        Some("https://h.example:8080/path?q=1")
    );
    assert!(seen(&upstream)?.is_empty());
    Ok(())
}
