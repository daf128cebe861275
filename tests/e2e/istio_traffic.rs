//! Istio traffic policy as Istio's gateway (Envoy) applies it (issue 14): route timeouts,
//! DestinationRule consistent hashing, `exportTo`, redirect ports. One test per behaviour,
//! the real gatewayd, real upstreams, curl or a raw socket as the client.

use std::{
    io::{Read, Write},
    net::TcpStream,
    thread,
    time::Duration,
};

use gateway_tests::Upstream;

use super::istio_fidelity::{HTTP_SERVER, Setup, service, start, virtual_service};

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
