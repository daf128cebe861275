//! Istio traffic policy as Istio's gateway (Envoy) applies it (issue 14): route timeouts,
//! DestinationRule consistent hashing, `exportTo`, redirect ports. One test per behaviour,
//! the real gatewayd, real upstreams, curl or a raw socket as the client.

use std::{
    collections::BTreeSet,
    io::{Read, Write},
    net::TcpStream,
    thread,
    time::Duration,
};

use gateway_tests::Upstream;

use super::istio_fidelity::{HTTP_SERVER, Setup, answer, service, start, virtual_service};

/// The `web` Service in `default` (one demo upstream) and a VirtualService `vs` for
/// `host` bound to the gateway with `routes` under `http:`.
fn web_routes(label: &str, host: &str, routes: &str) -> anyhow::Result<(Setup, Upstream)> {
    let web = Upstream::start(None, "127.0.0.1:0", "web")?;
    let spec = format!("  hosts: [{host}]\n  gateways: [istio-system/gw]\n  http:\n{routes}");
    let extra =
        service("default", "web", 80, web.addr) + &virtual_service("vs", "default", "", &spec);
    Ok((start(label, HTTP_SERVER, &extra)?, web))
}

/// A POST whose `body_len` bytes arrive one every `pause`, over a raw HTTP/1.1 socket;
/// the status code of the answer.
fn slow_post(
    setup: &Setup,
    host: &str,
    path: &str,
    body_len: usize,
    pause: Duration,
) -> anyhow::Result<u16> {
    let addr = setup.http.trim_start_matches("http://");
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {body_len}\r\nConnection: close\r\n\r\n"
    )?;
    for _ in 0..body_len {
        thread::sleep(pause);
        stream.write_all(b"x")?;
    }
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no status line in {answer:?}"))?;
    Ok(status)
}

#[test]
fn route_timeout_counts_from_the_end_of_the_request() -> anyhow::Result<()> {
    let routes = "  - timeout: 500ms\n    route: [{destination: {host: web}}]\n";
    let (setup, _web) = web_routes("istio-timeout-clock", "t.example.com", routes)?;
    // The upload takes three times the route timeout; the upstream answers at once
    // after it: Envoy's clock starts at the end of the request, so this succeeds.
    let status = slow_post(
        &setup,
        "t.example.com",
        "/anything",
        6,
        Duration::from_millis(250),
    )?;
    assert_eq!(status, 200, "a slow upload was cut by the route timeout");
    // A slow answer still times out.
    let slow = setup.get("t.example.com", "/delay/3", &[])?;
    assert_eq!(
        (slow.status, slow.body.as_str()),
        (504, "upstream request timeout")
    );
    Ok(())
}

/// Service `web` in `default`, ports 80 (`http`) and 81 (`alt`), one EndpointSlice
/// (labelled `version: v1`) per upstream.
fn web_service(upstreams: &[Upstream]) -> String {
    let mut yaml = "---\napiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: default}\nspec:\n  ports: [{name: http, port: 80}, {name: alt, port: 81}]\n".to_owned();
    for (i, upstream) in upstreams.iter().enumerate() {
        yaml.push_str(&format!(
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: web-{i}, namespace: default, labels: {{kubernetes.io/service-name: web, version: v1}}}}\naddressType: IPv4\nports: [{{name: http, port: {port}}}, {{name: alt, port: {port}}}]\nendpoints:\n- addresses: [\"{ip}\"]\n",
            port = upstream.addr.port(),
            ip = upstream.addr.ip(),
        ));
    }
    yaml
}

/// Which demo upstream answered, from its JSON description.
fn answered_by(setup: &Setup, path: &str, extra: &[&str]) -> anyhow::Result<String> {
    let body = setup.body("hash.example.com", path, extra)?;
    let json: serde_json::Value = serde_json::from_str(&body)?;
    json["upstream"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow::anyhow!("no upstream in {body}"))
}

/// Three upstreams behind `web`, its DestinationRule `rule` (the spec's lines) and routes
/// for `hash.example.com`.
fn hashing_setup(label: &str, rule: &str, routes: &str) -> anyhow::Result<(Setup, Vec<Upstream>)> {
    let upstreams = ["a", "b", "c"]
        .iter()
        .map(|name| Upstream::start(None, "127.0.0.1:0", name))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let spec =
        format!("  hosts: [hash.example.com]\n  gateways: [istio-system/gw]\n  http:\n{routes}");
    let extra = web_service(&upstreams)
        + "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: web, namespace: default}\nspec:\n  host: web\n"
        + rule
        + &virtual_service("vs", "default", "", &spec);
    Ok((start(label, HTTP_SERVER, &extra)?, upstreams))
}

/// Every key in `keys` is answered by one upstream each time; the keys reach more than one.
fn assert_sticky(
    keys: &[String],
    mut ask: impl FnMut(&str) -> anyhow::Result<String>,
) -> anyhow::Result<()> {
    let mut owners = BTreeSet::new();
    for key in keys {
        let first = ask(key)?;
        for _ in 0..3 {
            assert_eq!(ask(key)?, first, "key {key} moved");
        }
        owners.insert(first);
    }
    assert!(owners.len() > 1, "every key on {owners:?}");
    Ok(())
}

#[test]
fn consistent_hash_keeps_each_key_on_one_endpoint() -> anyhow::Result<()> {
    let rule = r#"  trafficPolicy:
    loadBalancer: {consistentHash: {httpHeaderName: x-user}}
    portLevelSettings:
    - port: {number: 81}
      loadBalancer: {consistentHash: {useSourceIp: true, maglev: {tableSize: 1031}}}
  subsets:
  - name: by-query
    labels: {version: v1}
    trafficPolicy:
      loadBalancer: {consistentHash: {httpQueryParameterName: user, ringHash: {minimumRingSize: 2048}}}
"#;
    let routes = r#"  - match: [{uri: {prefix: /header}}]
    route: [{destination: {host: web, port: {number: 80}}}]
  - match: [{uri: {prefix: /source}}]
    route: [{destination: {host: web, port: {number: 81}}}]
  - match: [{uri: {prefix: /query}}]
    route: [{destination: {host: web, port: {number: 80}, subset: by-query}}]
"#;
    let (setup, _upstreams) = hashing_setup("istio-consistent-hash", rule, routes)?;
    let users: Vec<String> = (0..10).map(|i| format!("user-{i}")).collect();
    assert_sticky(&users, |user| {
        answered_by(&setup, "/header", &["-H", &format!("x-user: {user}")])
    })?;
    assert_sticky(&users, |user| {
        answered_by(&setup, &format!("/query?x=1&user={user}"), &[])
    })?;
    // Every 127/8 address is this host's: ten clients by source address.
    let clients: Vec<String> = (2..12).map(|i| format!("127.0.0.{i}")).collect();
    assert_sticky(&clients, |ip| {
        answered_by(&setup, "/source", &["--interface", ip])
    })?;
    Ok(())
}

#[test]
fn consistent_hash_cookie_with_ttl_is_generated_and_then_followed() -> anyhow::Result<()> {
    let rule = r#"  trafficPolicy:
    loadBalancer:
      consistentHash: {httpCookie: {name: sticky, path: /, ttl: 3600s}}
"#;
    let routes = "  - route: [{destination: {host: web, port: {number: 80}}}]\n";
    let (setup, _upstreams) = hashing_setup("istio-hash-cookie", rule, routes)?;
    let first = setup.get("hash.example.com", "/", &[])?;
    assert_eq!(first.status, 200, "{first:?}");
    let set_cookie = first
        .header("set-cookie")
        .ok_or_else(|| anyhow::anyhow!("no Set-Cookie: {first:?}"))?;
    assert!(
        set_cookie.starts_with("sticky=") && set_cookie.contains("Max-Age=3600"),
        "{set_cookie}"
    );
    let cookie = set_cookie.split(';').next().unwrap_or_default().to_owned();
    let owner: serde_json::Value = serde_json::from_str(&first.body)?;
    for _ in 0..5 {
        let again = setup.get(
            "hash.example.com",
            "/",
            &["-H", &format!("Cookie: {cookie}")],
        )?;
        assert_eq!(
            again.header("set-cookie"),
            None,
            "a cookie sent back is kept"
        );
        let json: serde_json::Value = serde_json::from_str(&again.body)?;
        assert_eq!(
            json["upstream"], owner["upstream"],
            "the cookie's endpoint changed"
        );
    }
    // Other cookies' values spread over the endpoints, each staying on its own.
    let values: Vec<String> = (0..10).map(|i| format!("sticky=v{i}")).collect();
    assert_sticky(&values, |cookie| {
        answered_by(&setup, "/", &["-H", &format!("Cookie: {cookie}")])
    })?;
    Ok(())
}

#[test]
fn export_to_keeps_a_virtual_service_from_other_namespaces_gateways() -> anyhow::Result<()> {
    // The gateway runs in istio-system: Istio gives it the VirtualServices exported there.
    let vs = |name: &str, namespace: &str, export_to: &str, host: &str| {
        let spec = format!(
            "  hosts: [{host}]\n  gateways: [istio-system/gw]\n  exportTo: {export_to}\n  http:\n  - {}\n",
            answer(name)
        );
        virtual_service(name, namespace, "", &spec)
    };
    let extra = [
        vs("private", "team", r#"["."]"#, "private.example.com"),
        vs(
            "shared",
            "team",
            r#"["istio-system"]"#,
            "shared.example.com",
        ),
        vs("local", "istio-system", r#"["."]"#, "local.example.com"),
    ]
    .concat();
    let setup = start("istio-export-to", HTTP_SERVER, &extra)?;
    assert_eq!(setup.get("private.example.com", "/", &[])?.status, 404);
    assert_eq!(setup.body("shared.example.com", "/", &[])?, "shared");
    assert_eq!(setup.body("local.example.com", "/", &[])?, "local");
    Ok(())
}
