//! Configuration end to end: a Gateway API Gateway + HTTPRoute served by the real daemon
//! and reached with curl; `validate` and `routes` on Gateway API files.

use std::{net::SocketAddr, process::Command};

use gateway_tests::{Gateway, TempDir, Upstream, curl, free_port, gatewayd_bin};

/// A Gateway of class `istio` listening on `port`, an HTTPRoute for `api.example.com`
/// splitting `/v1` by precedence over two Services, a redirect, a header filter, and a
/// cross-namespace backend without a ReferenceGrant.
fn gateway_api_config(port: u16, alpha: SocketAddr, beta: SocketAddr) -> String {
    format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: istio}}
spec: {{controllerName: istio.io/gateway-controller}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: web, namespace: apps}}
spec:
  gatewayClassName: istio
  listeners:
  - name: http
    port: {port}
    protocol: HTTP
    hostname: "*.example.com"
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: api, namespace: apps}}
spec:
  parentRefs: [{{name: web, sectionName: http}}]
  hostnames: [api.example.com]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: /v1}}}}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier:
        set: [{{name: X-Route, value: v1}}]
    backendRefs: [{{name: alpha, port: 80}}]
  - matches: [{{path: {{type: PathPrefix, value: /v1/beta}}}}]
    backendRefs: [{{name: beta, port: 80}}]
  - matches: [{{path: {{type: Exact, value: /old}}}}]
    filters:
    - type: RequestRedirect
      requestRedirect: {{hostname: new.example.com, statusCode: 301}}
  - matches: [{{path: {{type: PathPrefix, value: /elsewhere}}}}]
    backendRefs: [{{name: alpha, namespace: other, port: 80}}]
---
apiVersion: v1
kind: Service
metadata: {{name: alpha, namespace: apps}}
spec: {{ports: [{{name: http, port: 80}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: alpha-1, namespace: apps, labels: {{kubernetes.io/service-name: alpha}}}}
endpoints: [{{addresses: ["{alpha_ip}"]}}]
ports: [{{name: http, port: {alpha_port}}}]
---
apiVersion: v1
kind: Service
metadata: {{name: beta, namespace: apps}}
spec: {{ports: [{{name: http, port: 80}}]}}
---
apiVersion: v1
kind: Endpoints
metadata: {{name: beta, namespace: apps}}
subsets:
- addresses: [{{ip: "{beta_ip}"}}]
  ports: [{{name: http, port: {beta_port}}}]
---
apiVersion: v1
kind: Service
metadata: {{name: alpha, namespace: other}}
spec: {{ports: [{{name: http, port: 80}}]}}
"#,
        alpha_ip = alpha.ip(),
        alpha_port = alpha.port(),
        beta_ip = beta.ip(),
        beta_port = beta.port(),
    )
}

#[test]
fn gateway_api_http_route_is_served() -> anyhow::Result<()> {
    let alpha = Upstream::start(None, "127.0.0.1:0", "alpha")?;
    let beta = Upstream::start(None, "127.0.0.1:0", "beta")?;
    let dir = TempDir::new("gateway-api")?;
    let port = free_port();
    dir.write(
        "gateway-api.yaml",
        &gateway_api_config(port, alpha.addr, beta.addr),
    )?;
    let gateway = Gateway::start(dir.path(), &["--ebpf", "off"], None, &dir)?;
    let url = |path: &str| format!("http://127.0.0.1:{port}{path}");
    let host = "Host: api.example.com";

    // The longer PathPrefix wins whatever the rule order; whole segments only.
    let cases = [
        ("/v1/items", 200, "alpha"),
        ("/v1/beta/items", 200, "beta"),
        ("/v1/betamax", 200, "alpha"),
        ("/v1", 200, "alpha"),
    ];
    for (path, status, upstream) in cases {
        let response = curl(None, &["-H", host, &url(path)])?;
        assert_eq!(
            response.status,
            status,
            "{path}: {response:?}\n{}",
            gateway.stderr()
        );
        let echo = response.json()?;
        assert_eq!(echo["upstream"], upstream, "{path}");
        assert_eq!(echo["path"], path);
    }
    let headers = curl(None, &["-H", host, &url("/v1/x")])?.json()?;
    assert_eq!(
        headers["headers"]["x-route"], "v1",
        "RequestHeaderModifier applied"
    );

    let unrouted = curl(None, &["-H", host, &url("/v2")])?;
    assert_eq!(unrouted.status, 404);
    let other_host = curl(None, &["-H", "Host: www.example.org", &url("/v1")])?;
    assert_eq!(
        other_host.status, 404,
        "hosts outside the listener hostname"
    );

    let redirect = curl(None, &["-H", host, &url("/old")])?;
    assert_eq!(redirect.status, 301, "{redirect:?}");
    assert!(
        redirect
            .head
            .to_ascii_lowercase()
            .contains("location: http://new.example.com"),
        "{}",
        redirect.head
    );

    // A backend in another namespace without a ReferenceGrant: 500, as the spec asks.
    let refused = curl(None, &["-H", host, &url("/elsewhere")])?;
    assert_eq!(refused.status, 500, "{refused:?}");
    Ok(())
}

/// Every kind of HTTPRoute match picks its rule (each rule tags the request with
/// `x-rule`), under the Gateway API's precedence.
#[test]
fn gateway_api_match_kinds_select_their_rules() -> anyhow::Result<()> {
    let upstream = Upstream::start(None, "127.0.0.1:0", "alpha")?;
    let dir = TempDir::new("gateway-api-matches")?;
    let port = free_port();
    let rule = |name: &str, matches: &str| {
        format!(
            "  - matches: [{matches}]\n    filters: [{{type: RequestHeaderModifier, requestHeaderModifier: {{set: [{{name: x-rule, value: {name}}}]}}}}]\n    backendRefs: [{{name: alpha, port: 80}}]\n"
        )
    };
    let rules = [
        rule("prefix", "{path: {type: PathPrefix, value: /}}"),
        rule("exact", "{path: {type: Exact, value: /exact}}"),
        rule(
            "regex",
            "{path: {type: RegularExpression, value: \"/re/[0-9]+\"}}",
        ),
        rule(
            "method",
            "{path: {type: PathPrefix, value: /m}, method: POST}",
        ),
        rule(
            "header-exact",
            "{path: {type: PathPrefix, value: /h}, headers: [{name: x-env, value: prod}]}",
        ),
        rule(
            "header-regex",
            "{path: {type: PathPrefix, value: /h}, headers: [{type: RegularExpression, name: x-env, value: \"dev-.*\"}]}",
        ),
        rule(
            "query-exact",
            "{path: {type: PathPrefix, value: /q}, queryParams: [{name: v, value: \"1\"}]}",
        ),
        rule(
            "query-regex",
            "{path: {type: PathPrefix, value: /q}, queryParams: [{type: RegularExpression, name: v, value: \"[0-9]+\"}]}",
        ),
    ]
    .concat();
    dir.write(
        "matches.yaml",
        &format!(
            r#"apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: web, namespace: apps}}
spec:
  gatewayClassName: istio
  listeners: [{{name: http, port: {port}, protocol: HTTP}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: matches, namespace: apps}}
spec:
  parentRefs: [{{name: web}}]
  hostnames: [match.example.com]
  rules:
{rules}---
apiVersion: v1
kind: Service
metadata: {{name: alpha, namespace: apps}}
spec: {{ports: [{{name: http, port: 80}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: alpha-1, namespace: apps, labels: {{kubernetes.io/service-name: alpha}}}}
endpoints: [{{addresses: ["{ip}"]}}]
ports: [{{name: http, port: {upstream_port}}}]
"#,
            ip = upstream.addr.ip(),
            upstream_port = upstream.addr.port(),
        ),
    )?;
    let gateway = Gateway::start(dir.path(), &["--ebpf", "off"], None, &dir)?;
    let cases: &[(&str, &[&str], &str)] = &[
        ("/exact", &[], "exact"),
        ("/exact/more", &[], "prefix"),
        // A regular expression ranks after every prefix, `/` included, as Istio ranks
        // this implementation-specific match: the catch-all answers.
        ("/re/42", &[], "prefix"),
        ("/re/x", &[], "prefix"),
        ("/m", &["-X", "POST"], "method"),
        ("/m", &[], "prefix"),
        ("/h", &["-H", "x-env: prod"], "header-exact"),
        ("/h", &["-H", "x-env: dev-blue"], "header-regex"),
        ("/h", &["-H", "x-env: test"], "prefix"),
        ("/q?v=1", &[], "query-exact"),
        ("/q?v=7", &[], "query-regex"),
        ("/q?v=x", &[], "prefix"),
    ];
    for (path, extra, expected) in cases {
        let url = format!("http://127.0.0.1:{port}{path}");
        let mut args = vec!["-H", "Host: match.example.com"];
        args.extend_from_slice(extra);
        args.push(&url);
        let answer = curl(None, &args)?;
        assert_eq!(
            answer.status,
            200,
            "{path}: {answer:?}\n{}",
            gateway.stderr()
        );
        assert_eq!(
            answer.json()?["headers"]["x-rule"],
            *expected,
            "{path} {extra:?}"
        );
    }
    Ok(())
}

#[test]
fn validate_and_routes_on_gateway_api_files() -> anyhow::Result<()> {
    let dir = TempDir::new("gateway-api-validate")?;
    let good = dir.write(
        "good.yaml",
        &gateway_api_config(8080, "127.0.0.1:1".parse()?, "127.0.0.1:2".parse()?),
    )?;
    let out = Command::new(gatewayd_bin())
        .args(["validate", "--config"])
        .arg(&good)
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("HTTPRoute apps/api: spec.rules[3].backendRefs[0]: Service other/alpha is in another namespace and no ReferenceGrant there allows HTTPRoute from apps (RefNotPermitted)"),
        "{stdout}"
    );
    // Acceptance as Gateway API status would say it.
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("HTTPRoute apps/api: parent ")
                && l.contains("Accepted=True Accepted")
                && l.contains("ResolvedRefs=False RefNotPermitted")),
        "{stdout}"
    );

    // `routes` lists the listener and its rules in match order.
    let out = Command::new(gatewayd_bin())
        .args(["routes", "--config"])
        .arg(&good)
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let beta = stdout.find("/v1/beta").unwrap_or(usize::MAX);
    let v1 = stdout.find("\"/v1\"").unwrap_or(usize::MAX);
    assert!(beta < v1, "longest prefix listed first:\n{stdout}");

    let broken = gateway_api_config(8080, "127.0.0.1:1".parse()?, "127.0.0.1:2".parse()?).replacen(
        "type: PathPrefix, value: /v1}",
        "type: Prefix, value: /v1}",
        1,
    );
    let line = broken
        .lines()
        .position(|l| l.contains("type: Prefix"))
        .map(|i| i + 1)
        .unwrap_or_default();
    let bad = dir.write("broken.yaml", &broken)?;
    let out = Command::new(gatewayd_bin())
        .args(["validate", "--config"])
        .arg(&bad)
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let want = format!(
        "error: {}:{line}: HTTPRoute apps/api: spec.rules[0].matches[0].path.type: unknown variant `Prefix`, expected one of `Exact`, `PathPrefix`, `RegularExpression`",
        bad.display()
    );
    assert!(stdout.contains(&want), "expected {want:?} in:\n{stdout}");
    // A linter fails on any error, and says what a running gateway would do about it.
    assert!(
        stdout.contains("a running gateway would drop HTTPRoute apps/api (HTTPRoute.gateway.networking.k8s.io): spec.rules[0].matches[0].path.type: unknown variant `Prefix`"),
        "{stdout}"
    );
    Ok(())
}
