//! GRPCRoute conformance cases: matching by method, by header and by listener hostname,
//! request header modifiers, weights and named rules, with Google's gRPC as client and
//! servers (tests/grpc/peer.py, whose servers answer the suite's `GrpcEcho` methods with
//! their own name and return the request's metadata as `echo-*` trailers).

use std::collections::BTreeMap;

use gateway_tests::{
    TempDir, free_port,
    grpc::{GrpcServer, GrpcSession},
};
use serde_json::{Value, json};

use super::{INFRA, class_and_ports, report, serve};

const SERVICE: &str = "gateway_api_conformance.echo_basic.grpcecho.GrpcEcho";

/// Service `name` on port 8080 with `appProtocol: kubernetes.io/h2c`, as the suite's
/// `grpc-infra-backend-*`, its endpoint the gRPC server `server`.
fn grpc_backend(name: &str, server: &GrpcServer) -> String {
    format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: {INFRA}}}
spec:
  ports: [{{name: grpc, port: 8080, targetPort: {port}, appProtocol: kubernetes.io/h2c}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: {name}-1, namespace: {INFRA}, labels: {{kubernetes.io/service-name: {name}}}}}
addressType: IPv4
ports: [{{name: grpc, port: {port}}}]
endpoints:
- addresses: ["{ip}"]
---
"#,
        port = server.addr.port(),
        ip = server.addr.ip(),
    )
}

/// The suite's `same-namespace` Gateway: HTTP on 80 for routes of its own namespace.
fn same_namespace_gateway() -> String {
    format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: same-namespace, namespace: {INFRA}}}
spec:
  gatewayClassName: gateway-conformance
  listeners:
  - {{name: http, port: 80, protocol: HTTP, allowedRoutes: {{namespaces: {{from: Same}}}}}}
---
"#
    )
}

/// GRPCRoute `name` on `same-namespace` with `rules` (block YAML under `rules:`).
fn grpc_route(name: &str, rules: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {{name: {name}, namespace: {INFRA}}}\nspec:\n  parentRefs: [{{name: same-namespace}}]\n  rules:\n{rules}---\n"
    )
}

/// gatewayd with the suite's three gRPC backends and `resources` (Gateways and routes)
/// on port 80; the address to call.
struct GrpcCase {
    target: String,
    gateway: gateway_tests::Gateway,
    dir: TempDir,
    _servers: [GrpcServer; 3],
}

impl GrpcCase {
    /// The suite's `same-namespace` Gateway and GRPCRoute `name` with `rules`.
    fn start(label: &str, name: &str, rules: &str) -> anyhow::Result<Self> {
        Self::serve(
            label,
            &(same_namespace_gateway() + &grpc_route(name, rules)),
        )
    }

    fn serve(label: &str, resources: &str) -> anyhow::Result<Self> {
        let servers = [
            GrpcServer::start("grpc-infra-backend-v1")?,
            GrpcServer::start("grpc-infra-backend-v2")?,
            GrpcServer::start("grpc-infra-backend-v3")?,
        ];
        let dir = TempDir::new(label)?;
        let port = free_port();
        let config = class_and_ports(&[(80, port)])
            + &grpc_backend("grpc-infra-backend-v1", &servers[0])
            + &grpc_backend("grpc-infra-backend-v2", &servers[1])
            + &grpc_backend("grpc-infra-backend-v3", &servers[2])
            + resources;
        let gateway = serve(&dir, &config)?;
        Ok(GrpcCase {
            target: format!("127.0.0.1:{port}"),
            gateway,
            dir,
            _servers: servers,
        })
    }

    /// A client channel to the gateway with `authority`, as the suite's client dials.
    fn session(&self, authority: &str) -> anyhow::Result<GrpcSession> {
        GrpcSession::open(&self.target, authority)
    }

    /// `GrpcEcho/method` with `metadata`: the backend that answered, or the status code.
    fn call(&self, method: &str, metadata: &[(&str, &str)]) -> anyhow::Result<String> {
        let outcome = echo(&mut self.session(SERVICE)?, method, metadata)?;
        Ok(answered(&outcome))
    }
}

/// `GrpcEcho/method` with `metadata` on `session`: the outcome as peer.py prints it.
fn echo(
    session: &mut GrpcSession,
    method: &str,
    metadata: &[(&str, &str)],
) -> anyhow::Result<Value> {
    let metadata: serde_json::Map<String, Value> = metadata
        .iter()
        .map(|(k, v)| ((*k).to_owned(), json!(v)))
        .collect();
    session.call(
        &json!({"method": format!("/{SERVICE}/{method}"), "messages": [""], "metadata": metadata}),
    )
}

/// The backend that answered `outcome`, or its status code.
fn answered(outcome: &Value) -> String {
    match outcome["code"].as_str() {
        Some("OK") => outcome["responses"][0]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        other => other.unwrap_or("no code").to_owned(),
    }
}

/// One rule: `matches` (a flow list) to `grpc-infra-backend-{to}`.
fn rule(matches: &str, to: &str) -> String {
    format!(
        "  - matches: {matches}\n    backendRefs: [{{name: grpc-infra-backend-{to}, port: 8080}}]\n"
    )
}

/// A match on `GrpcEcho/{method}`.
fn method(name: &str) -> String {
    format!("[{{method: {{service: {SERVICE}, method: {name}}}}}]")
}

/// GRPCExactMethodMatching: `Echo` and `EchoTwo` of the service go to their rules'
/// backends; `EchoThree` (which the backends do serve) has no rule and gets
/// UNIMPLEMENTED from the gateway.
#[test]
fn grpc_exact_method_matching() -> anyhow::Result<()> {
    let case = GrpcCase::start(
        "conf-grpc-exact-method",
        "exact-matching",
        &(rule(&method("Echo"), "v1") + &rule(&method("EchoTwo"), "v2")),
    )?;
    let answer = case.call("Echo", &[])?;
    assert_eq!(answer, "grpc-infra-backend-v1", "{}", case.gateway.stderr());
    assert_eq!(case.call("EchoTwo", &[])?, "grpc-infra-backend-v2");
    assert_eq!(case.call("EchoThree", &[])?, "UNIMPLEMENTED");
    Ok(())
}

/// GRPCRouteHeaderMatching: header matches ANDed within a match and ORed across
/// matches; more headers win, and between rules with as many the first; a call no rule
/// matches gets UNIMPLEMENTED.
#[test]
fn grpc_route_header_matching() -> anyhow::Result<()> {
    let rules = [
        rule("[{headers: [{name: version, value: one}]}]", "v1"),
        rule("[{headers: [{name: version, value: two}]}]", "v2"),
        rule(
            "[{headers: [{name: version, value: two}, {name: color, value: orange}]}]",
            "v1",
        ),
        rule(
            "[{headers: [{name: color, value: blue}]}, {headers: [{name: color, value: green}]}]",
            "v1",
        ),
        rule(
            "[{headers: [{name: color, value: red}]}, {headers: [{name: color, value: yellow}]}]",
            "v2",
        ),
    ]
    .concat();
    let case = GrpcCase::start("conf-grpc-header-matching", "grpc-header-matching", &rules)?;
    let (v1, v2, none) = (
        "grpc-infra-backend-v1",
        "grpc-infra-backend-v2",
        "UNIMPLEMENTED",
    );
    let cases: [(&[(&str, &str)], &str); 11] = [
        (&[("version", "one")], v1),
        (&[("version", "two")], v2),
        (&[("version", "two"), ("color", "orange")], v1),
        (&[("version", "two"), ("color", "blue")], v2),
        (&[("color", "orange")], none),
        (&[("some-other-header", "one")], none),
        (&[("color", "blue")], v1),
        (&[("color", "green")], v1),
        (&[("color", "red")], v2),
        (&[("color", "yellow")], v2),
        (&[("color", "purple")], none),
    ];
    for (metadata, want) in cases {
        let answer = case.call("Echo", metadata)?;
        assert_eq!(answer, want, "{metadata:?}\n{}", case.gateway.stderr());
    }
    Ok(())
}

/// The report's lines for GRPCRoute `name` (one per parent).
fn route_lines(report: &str, name: &str) -> Vec<String> {
    report
        .lines()
        .filter(|l| l.starts_with(&format!("GRPCRoute {INFRA}/{name}:")))
        .map(str::to_owned)
        .collect()
}

/// GRPCRouteListenerHostnameMatching: four HTTP listeners on one port, told apart by
/// hostname (`bar.com`, `foo.bar.com`, `*.bar.com`, `*.foo.com`), each with its own
/// GRPCRoute (the third route on the two wildcard listeners): the call's authority picks
/// the listener, the most specific first; an authority no listener takes gets
/// UNIMPLEMENTED.
#[test]
fn grpc_route_listener_hostname_matching() -> anyhow::Result<()> {
    let listener = |name: &str, hostname: &str| {
        format!(
            "  - {{name: {name}, port: 80, protocol: HTTP, hostname: \"{hostname}\", allowedRoutes: {{namespaces: {{from: Same}}}}}}\n"
        )
    };
    let route = |name: &str, sections: &[&str], to: &str| {
        let parents: Vec<String> = sections
            .iter()
            .map(|s| {
                format!(
                    "{{name: grpcroute-listener-hostname-matching, namespace: {INFRA}, sectionName: {s}}}"
                )
            })
            .collect();
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {{name: {name}, namespace: {INFRA}}}\nspec:\n  parentRefs: [{}]\n  rules:\n  - backendRefs: [{{name: grpc-infra-backend-{to}, port: 8080}}]\n---\n",
            parents.join(", ")
        )
    };
    let resources = format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: grpcroute-listener-hostname-matching, namespace: {INFRA}}}\nspec:\n  gatewayClassName: gateway-conformance\n  listeners:\n{}{}{}{}---\n",
        listener("listener-1", "bar.com"),
        listener("listener-2", "foo.bar.com"),
        listener("listener-3", "*.bar.com"),
        listener("listener-4", "*.foo.com"),
    ) + &route("backend-v1", &["listener-1"], "v1")
        + &route("backend-v2", &["listener-2"], "v2")
        + &route("backend-v3", &["listener-3", "listener-4"], "v3");
    let case = GrpcCase::serve("conf-grpc-listener-hostname", &resources)?;
    let cases = [
        ("bar.com", "grpc-infra-backend-v1"),
        ("foo.bar.com", "grpc-infra-backend-v2"),
        ("baz.bar.com", "grpc-infra-backend-v3"),
        ("boo.bar.com", "grpc-infra-backend-v3"),
        ("multiple.prefixes.bar.com", "grpc-infra-backend-v3"),
        ("multiple.prefixes.foo.com", "grpc-infra-backend-v3"),
        ("foo.com", "UNIMPLEMENTED"),
        ("no.matching.host", "UNIMPLEMENTED"),
    ];
    for (authority, want) in cases {
        let outcome = echo(&mut case.session(authority)?, "Echo", &[])?;
        assert_eq!(
            answered(&outcome),
            want,
            "{authority}: {outcome}\n{}",
            case.gateway.stderr()
        );
    }
    let report = report(case.dir.path())?;
    for name in ["backend-v1", "backend-v2", "backend-v3"] {
        let lines = route_lines(&report, name);
        assert!(
            !lines.is_empty() && lines.iter().all(|l| l.contains("Accepted=True")),
            "{name}: {report}"
        );
    }
    Ok(())
}

/// The request metadata the backend saw (its `echo-*` trailers): key → values, a
/// header's several fields or comma-separated values as one list.
fn seen_metadata(outcome: &Value) -> BTreeMap<String, Vec<String>> {
    outcome["trailing"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(key, value)| {
            let key = key.strip_prefix("echo-")?;
            let values = value.as_str()?.split(',').map(|v| v.trim().to_owned());
            Some((key.to_owned(), values.collect()))
        })
        .collect()
}

/// GRPCRouteRequestHeaderModifier: the suite's route (three rules for `Echo` that set,
/// add and remove one header each, and one for `EchoTwo` that sets, adds and removes
/// two), with the suite's calls. Header names match whatever their case. The suite's
/// client does not compare the metadata its backends return (only the backend); here
/// the backend's view of the request is checked as the manifest means it: of the three
/// `Echo` rules, which have the same match, the first one wins (the spec's tie-break),
/// so `Echo` calls get only the `set` rule's change and keep `X-Header-Add` and
/// `X-Header-Remove` as sent, where the suite's unchecked expectations assume all three
/// rules apply.
#[test]
fn grpc_route_request_header_modifier() -> anyhow::Result<()> {
    let modifier = |method_name: &str, to: &str, modifier: &str| {
        format!(
            "  - matches: {}\n    filters: [{{type: RequestHeaderModifier, requestHeaderModifier: {modifier}}}]\n    backendRefs: [{{name: grpc-infra-backend-{to}, port: 8080}}]\n",
            method(method_name)
        )
    };
    let rules = [
        modifier(
            "Echo",
            "v1",
            "{set: [{name: X-Header-Set, value: set-overwrites-values}]}",
        ),
        modifier(
            "Echo",
            "v1",
            "{add: [{name: X-Header-Add, value: add-appends-values}]}",
        ),
        modifier("Echo", "v1", "{remove: [X-Header-Remove]}"),
        modifier(
            "EchoTwo",
            "v2",
            "{set: [{name: X-Header-Set-1, value: header-set-1}, {name: X-Header-Set-2, value: header-set-2}], add: [{name: X-Header-Add-1, value: header-add-1}, {name: X-Header-Add-2, value: header-add-2}], remove: [X-Header-Remove-1, X-Header-Remove-2]}",
        ),
    ]
    .concat();
    let case = GrpcCase::start(
        "conf-grpc-request-header-modifier",
        "grpc-request-header-modifier",
        &rules,
    )?;
    let mut session = case.session(SERVICE)?;
    // (method, metadata sent, backend, headers the backend must see, headers it must not)
    type HeaderCase<'a> = (
        &'a str,
        &'a [(&'a str, &'a str)],
        &'a str,
        &'a [(&'a str, &'a [&'a str])],
        &'a [&'a str],
    );
    let cases: [HeaderCase; 7] = [
        (
            "Echo",
            &[("some-other-header", "this-header-should-be-set")],
            "grpc-infra-backend-v1",
            &[
                ("some-other-header", &["this-header-should-be-set"]),
                ("x-header-set", &["set-overwrites-values"]),
            ],
            &[],
        ),
        (
            "Echo",
            &[
                ("some-other-header", "this-header-should-be-set"),
                ("x-header-set", "this-value-should-be-overwritten"),
            ],
            "grpc-infra-backend-v1",
            &[
                ("some-other-header", &["this-header-should-be-set"]),
                ("x-header-set", &["set-overwrites-values"]),
            ],
            &[],
        ),
        (
            "Echo",
            &[("some-other-header", "this-header-should-be-set")],
            "grpc-infra-backend-v1",
            &[("some-other-header", &["this-header-should-be-set"])],
            // The add rule is shadowed by the set rule before it.
            &["x-header-add"],
        ),
        (
            "Echo",
            &[("x-header-add", "this-value-should-be-appended")],
            "grpc-infra-backend-v1",
            &[("x-header-add", &["this-value-should-be-appended"])],
            &[],
        ),
        (
            "Echo",
            &[("x-header-remove", "this-should-be-removed")],
            "grpc-infra-backend-v1",
            // The remove rule is shadowed too.
            &[("x-header-remove", &["this-should-be-removed"])],
            &[],
        ),
        (
            "EchoTwo",
            &[
                ("x-header-set-2", "set-header-2"),
                ("x-header-add-2", "add-header-2"),
                ("x-header-remove-2", "should-be-removed-2"),
                ("some-other-header", "another-header-val"),
            ],
            "grpc-infra-backend-v2",
            &[
                ("x-header-set-1", &["header-set-1"]),
                ("x-header-set-2", &["header-set-2"]),
                ("x-header-add-1", &["header-add-1"]),
                ("x-header-add-2", &["add-header-2", "header-add-2"]),
                ("some-other-header", &["another-header-val"]),
            ],
            &["x-header-remove-2"],
        ),
        (
            "EchoTwo",
            &[
                ("x-header-set-1", "original-set-1"),
                ("x-header-add-1", "existing-add-1"),
                ("x-header-remove-1", "should-be-removed-1"),
            ],
            "grpc-infra-backend-v2",
            &[
                ("x-header-set-1", &["header-set-1"]),
                ("x-header-set-2", &["header-set-2"]),
                ("x-header-add-1", &["existing-add-1", "header-add-1"]),
                ("x-header-add-2", &["header-add-2"]),
            ],
            &["x-header-remove-1"],
        ),
    ];
    for (method_name, metadata, backend, present, absent) in cases {
        let outcome = echo(&mut session, method_name, metadata)?;
        assert_eq!(
            answered(&outcome),
            backend,
            "{metadata:?}: {outcome}\n{}",
            case.gateway.stderr()
        );
        let seen = seen_metadata(&outcome);
        for (name, values) in present {
            let values: Vec<String> = values.iter().map(|v| (*v).to_owned()).collect();
            assert_eq!(
                seen.get(*name),
                Some(&values),
                "{method_name} {metadata:?}: {name} in {seen:?}"
            );
        }
        for name in absent {
            assert!(
                !seen.contains_key(*name),
                "{method_name} {metadata:?}: {name} in {seen:?}"
            );
        }
    }
    Ok(())
}

/// GRPCRouteWeight: weights 70, 30 and 0 share the calls in proportion; the zero-weight
/// backend gets none. (The suite sends 500 calls and allows each share 0.05, retrying
/// the whole run up to ten times; here 400 calls on one channel, each share within 0.1,
/// about five standard deviations, in one run.)
#[test]
fn grpc_route_weight() -> anyhow::Result<()> {
    let case = GrpcCase::start(
        "conf-grpc-weight",
        "weighted-backends",
        "  - backendRefs: [{name: grpc-infra-backend-v1, port: 8080, weight: 70}, {name: grpc-infra-backend-v2, port: 8080, weight: 30}, {name: grpc-infra-backend-v3, port: 8080, weight: 0}]\n",
    )?;
    let mut session = case.session(SERVICE)?;
    let total = 400;
    let mut counts = BTreeMap::new();
    for _ in 0..total {
        let outcome = echo(&mut session, "Echo", &[])?;
        assert_eq!(outcome["code"], "OK", "{outcome}");
        *counts.entry(answered(&outcome)).or_insert(0u32) += 1;
    }
    let share = |name: &str| f64::from(counts.get(name).copied().unwrap_or(0)) / f64::from(total);
    assert!(
        (share("grpc-infra-backend-v1") - 0.7).abs() < 0.1,
        "{counts:?}"
    );
    assert!(
        (share("grpc-infra-backend-v2") - 0.3).abs() < 0.1,
        "{counts:?}"
    );
    assert_eq!(counts.get("grpc-infra-backend-v3"), None, "{counts:?}");
    Ok(())
}

/// GRPCRouteNamedRule: a rule's `name` is accepted and changes nothing: the named rule
/// (`Echo`) and the unnamed one (`EchoTwo`) both serve, and the route is accepted.
#[test]
fn grpc_route_named_rule() -> anyhow::Result<()> {
    let rules = format!(
        "  - name: named-rule\n    matches: {}\n    backendRefs: [{{name: grpc-infra-backend-v1, port: 8080}}]\n",
        method("Echo")
    ) + &rule(&method("EchoTwo"), "v2");
    let case = GrpcCase::start("conf-grpc-named-rule", "grpc-named-rules", &rules)?;
    let answer = case.call("Echo", &[])?;
    assert_eq!(answer, "grpc-infra-backend-v1", "{}", case.gateway.stderr());
    assert_eq!(case.call("EchoTwo", &[])?, "grpc-infra-backend-v2");
    let report = report(case.dir.path())?;
    let lines = route_lines(&report, "grpc-named-rules");
    assert!(
        lines.len() == 1
            && lines[0].contains("Accepted=True")
            && lines[0].contains("ResolvedRefs=True"),
        "{report}"
    );
    Ok(())
}
