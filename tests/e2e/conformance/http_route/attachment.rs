//! HTTPRoute attachment and backend cases: routes from another namespace, backends in
//! another namespace by ReferenceGrant, listener hostnames, weights.

use gateway_tests::{TempDir, Upstream, curl, free_port};

use super::{Case, route_to, route_with_rules};
use crate::conformance::{INFRA, WEB, backend, class_and_ports, report, serve};

/// The suite's `backend-namespaces` Gateway (routes from namespaces labelled
/// `gateway-conformance: backend`) and the web namespace so labelled.
fn backend_namespaces_gateway() -> String {
    format!(
        r#"apiVersion: v1
kind: Namespace
metadata: {{name: {WEB}, labels: {{gateway-conformance: backend}}}}
---
apiVersion: v1
kind: Namespace
metadata: {{name: {INFRA}, labels: {{gateway-conformance: infra}}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: backend-namespaces, namespace: {INFRA}}}
spec:
  gatewayClassName: gateway-conformance
  listeners:
  - name: http
    port: 80
    protocol: HTTP
    allowedRoutes: {{namespaces: {{from: Selector, selector: {{matchLabels: {{gateway-conformance: backend}}}}}}}}
---
"#
    )
}

/// The report's lines for route `namespace/name`.
fn route_lines(report: &str, namespace: &str, name: &str) -> Vec<String> {
    report
        .lines()
        .filter(|l| l.starts_with(&format!("HTTPRoute {namespace}/{name}:")))
        .map(str::to_owned)
        .collect()
}

/// HTTPRouteCrossNamespace: a route in the web namespace attaches to the infra
/// namespace's `backend-namespaces` Gateway (its namespace selected by label), resolves
/// its same-namespace backend and serves.
#[test]
fn http_route_cross_namespace() -> anyhow::Result<()> {
    let routes = backend_namespaces_gateway()
        + &format!(
            r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: cross-namespace, namespace: {WEB}}}
spec:
  parentRefs: [{{name: backend-namespaces, namespace: {INFRA}}}]
  rules:
  - backendRefs: [{{name: web-backend, port: 8080}}]
---
"#
        );
    let case = Case::start("conf-cross-namespace", &routes)?;
    let answer = case.get("/")?;
    assert_eq!(answer.status, 200, "{answer:?}");
    // The web backend's one endpoint is the demo upstream named infra-backend-v1.
    assert_eq!(answer.json()?["upstream"], "infra-backend-v1");
    let report = report(case.dir.path())?;
    let lines = route_lines(&report, WEB, "cross-namespace");
    assert_eq!(lines.len(), 1, "{report}");
    assert!(lines[0].contains("Accepted=True"), "{report}");
    assert!(lines[0].contains("ResolvedRefs=True"), "{report}");
    Ok(())
}

/// HTTPRouteReferenceGrant: a backendRef to the web namespace's Service resolves while
/// that namespace's ReferenceGrant allows it (200); without the grant it is 500.
#[test]
fn http_route_reference_grant() -> anyhow::Result<()> {
    let grant = format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: ReferenceGrant
metadata: {{name: reference-grant, namespace: {WEB}}}
spec:
  from: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: {INFRA}}}]
  to: [{{group: "", kind: Service, name: web-backend}}]
---
"#
    );
    let route = route_to(
        "reference-grant",
        &format!("{{name: web-backend, namespace: {WEB}, port: 8080}}"),
    );
    let granted = Case::start("conf-reference-grant", &format!("{grant}{route}"))?;
    let answer = granted.request("example.com", "GET", "/", &[])?;
    assert_eq!(answer.status, 200, "{answer:?}");
    let report = report(granted.dir.path())?;
    let lines = route_lines(&report, INFRA, "reference-grant");
    assert!(
        lines.len() == 1 && lines[0].contains("ResolvedRefs=True"),
        "{report}"
    );
    // The suite deletes the grant; here it is a configuration without it.
    let revoked = Case::start("conf-reference-grant-revoked", &route)?;
    assert_eq!(revoked.get("/")?.status, 500);
    Ok(())
}

/// HTTPRouteInvalidReferenceGrant: seven ReferenceGrants that each miss the route by one
/// field (in the route's namespace rather than the Service's, the wrong `from` group,
/// kind or namespace, the wrong `to` group, kind or name) grant nothing: the route is
/// accepted with ResolvedRefs=False RefNotPermitted and its requests get 500.
#[test]
fn http_route_invalid_reference_grant() -> anyhow::Result<()> {
    let grant = |name: &str, namespace: &str, from: (&str, &str, &str), to: (&str, &str, &str)| {
        format!(
            r#"apiVersion: gateway.networking.k8s.io/v1
kind: ReferenceGrant
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  from: [{{group: {}, kind: {}, namespace: {}}}]
  to: [{{group: {}, kind: {}, name: {}}}]
---
"#,
            from.0, from.1, from.2, to.0, to.1, to.2
        )
    };
    let route_from = ("gateway.networking.k8s.io", "HTTPRoute", INFRA);
    let service = ("\"\"", "Service", "web-backend");
    let grants = [
        grant(
            "reference-grant-wrong-namespace",
            INFRA,
            route_from,
            service,
        ),
        grant(
            "reference-grant-wrong-from-group",
            WEB,
            ("not-the-group-youre-looking-for", "HTTPRoute", INFRA),
            service,
        ),
        grant(
            "reference-grant-wrong-from-kind",
            WEB,
            ("gateway.networking.k8s.io", "Gateway", INFRA),
            service,
        ),
        grant(
            "reference-grant-wrong-from-namespace",
            WEB,
            (
                "gateway.networking.k8s.io",
                "HTTPRoute",
                "not-the-namespace-youre-looking-for",
            ),
            service,
        ),
        grant(
            "reference-grant-wrong-to-group",
            WEB,
            route_from,
            ("not-the-group-youre-looking-for", "Service", "web-backend"),
        ),
        grant(
            "reference-grant-wrong-to-kind",
            WEB,
            route_from,
            ("\"\"", "Secret", "web-backend"),
        ),
        grant(
            "reference-grant-wrong-to-name",
            WEB,
            route_from,
            ("\"\"", "Secret", "not-the-service-youre-looking-for"),
        ),
    ]
    .concat();
    let route = route_to(
        "reference-grant",
        &format!("{{name: web-backend, namespace: {WEB}, port: 8080}}"),
    );
    let case = Case::start("conf-invalid-reference-grant", &format!("{grants}{route}"))?;
    let answer = case.get("/")?;
    assert_eq!(answer.status, 500, "{answer:?}");
    let report = report(case.dir.path())?;
    let lines = route_lines(&report, INFRA, "reference-grant");
    assert!(
        lines.len() == 1
            && lines[0].contains("Accepted=True")
            && lines[0].contains("ResolvedRefs=False RefNotPermitted"),
        "{report}"
    );
    Ok(())
}

/// HTTPRoutePartiallyInvalidViaInvalidReferenceGrant: the app namespace grants the
/// route `app-backend-v1` only; the rule to `app-backend-v2` gets 500 and the route
/// ResolvedRefs=False RefNotPermitted, while the sibling rule to `app-backend-v1` serves.
#[test]
fn http_route_partially_invalid_via_invalid_reference_grant() -> anyhow::Result<()> {
    const APP: &str = "gateway-conformance-app-backend";
    let app_v1 = Upstream::start(None, "127.0.0.1:0", "app-backend-v1")?;
    let app_v2 = Upstream::start(None, "127.0.0.1:0", "app-backend-v2")?;
    let routes = backend("app-backend-v1", APP, 8080, app_v1.addr)
        + &backend("app-backend-v2", APP, 8080, app_v2.addr)
        + &format!(
            r#"apiVersion: gateway.networking.k8s.io/v1
kind: ReferenceGrant
metadata: {{name: invalid-reference-grant, namespace: {APP}}}
spec:
  from: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: {INFRA}}}]
  to: [{{group: "", kind: Service, name: app-backend-v1}}]
---
"#
        )
        + &route_with_rules(
            "invalid-reference-grant",
            &format!(
                "  - matches: [{{path: {{type: PathPrefix, value: /v2}}}}]\n    backendRefs: [{{name: app-backend-v2, namespace: {APP}, port: 8080}}]\n  - backendRefs: [{{name: app-backend-v1, namespace: {APP}, port: 8080}}]\n"
            ),
        );
    let case = Case::start("conf-partially-invalid-grant", &routes)?;
    let refused = case.get("/v2")?;
    assert_eq!(refused.status, 500, "{refused:?}");
    let served = case.get("/")?;
    assert_eq!(served.status, 200, "{served:?}");
    assert_eq!(served.json()?["upstream"], "app-backend-v1");
    let report = report(case.dir.path())?;
    let lines = route_lines(&report, INFRA, "invalid-reference-grant");
    assert!(
        lines.len() == 1
            && lines[0].contains("Accepted=True")
            && lines[0].contains("ResolvedRefs=False RefNotPermitted"),
        "{report}"
    );
    Ok(())
}

/// HTTPRouteListenerHostnameMatching: four listeners on port 80 with hostnames
/// `bar.com`, `foo.bar.com`, `*.bar.com`, `*.foo.com`; a route per listener by
/// `sectionName`. The most specific listener hostname wins, the wildcards take any
/// number of labels, and `foo.com` or an unknown host get 404.
#[test]
fn http_route_listener_hostname_matching() -> anyhow::Result<()> {
    let listener = |name: &str, host: &str| {
        format!(
            "  - {{name: {name}, port: 80, protocol: HTTP, hostname: \"{host}\", allowedRoutes: {{namespaces: {{from: Same}}}}}}\n"
        )
    };
    let route = |name: &str, sections: &[&str], to: &str| {
        let parents: Vec<String> = sections
            .iter()
            .map(|s| format!("{{name: httproute-listener-hostname-matching, namespace: {INFRA}, sectionName: {s}}}"))
            .collect();
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: {INFRA}}}\nspec:\n  parentRefs: [{}]\n  rules:\n  - backendRefs: [{{name: {to}, port: 8080}}]\n---\n",
            parents.join(", ")
        )
    };
    let routes = format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: httproute-listener-hostname-matching, namespace: {INFRA}}}\nspec:\n  gatewayClassName: gateway-conformance\n  listeners:\n{}{}{}{}---\n",
        listener("listener-1", "bar.com"),
        listener("listener-2", "foo.bar.com"),
        listener("listener-3", "*.bar.com"),
        listener("listener-4", "*.foo.com"),
    ) + &route("backend-v1", &["listener-1"], "infra-backend-v1")
        + &route("backend-v2", &["listener-2"], "infra-backend-v2")
        + &route(
            "backend-v3",
            &["listener-3", "listener-4"],
            "infra-backend-v3",
        );
    let case = Case::start("conf-listener-hostname-matching", &routes)?;
    for (host, want) in [
        ("bar.com", "infra-backend-v1"),
        ("foo.bar.com", "infra-backend-v2"),
        ("baz.bar.com", "infra-backend-v3"),
        ("boo.bar.com", "infra-backend-v3"),
        ("multiple.prefixes.bar.com", "infra-backend-v3"),
        ("multiple.prefixes.foo.com", "infra-backend-v3"),
        ("foo.com", "404"),
        ("no.matching.host", "404"),
    ] {
        let answer = case.request(host, "GET", "/", &[])?;
        if want == "404" {
            assert_eq!(answer.status, 404, "{host}: {answer:?}");
        } else {
            assert_eq!(answer.status, 200, "{host}: {answer:?}");
            assert_eq!(answer.json()?["upstream"], want, "{host}");
        }
    }
    Ok(())
}

/// HTTPRouteWeight: weights 70, 30 and 0 share the requests in proportion; the
/// zero-weight backend gets none. (The suite allows each share a small deviation; with
/// 400 requests a share off by more than 0.1 is about five standard deviations away.)
#[test]
fn http_route_weight() -> anyhow::Result<()> {
    let case = Case::start(
        "conf-weight",
        &route_to(
            "weighted-backends",
            "{name: infra-backend-v1, port: 8080, weight: 70}, {name: infra-backend-v2, port: 8080, weight: 30}, {name: infra-backend-v3, port: 8080, weight: 0}",
        ),
    )?;
    let total = 400;
    let mut counts = std::collections::BTreeMap::new();
    for _ in 0..total {
        let answer = case.get("/")?;
        assert_eq!(answer.status, 200, "{answer:?}");
        *counts
            .entry(answer.json()?["upstream"].as_str().unwrap_or("").to_owned())
            .or_insert(0u32) += 1;
    }
    let share = |name: &str| f64::from(counts.get(name).copied().unwrap_or(0)) / f64::from(total);
    assert!((share("infra-backend-v1") - 0.7).abs() < 0.1, "{counts:?}");
    assert!((share("infra-backend-v2") - 0.3).abs() < 0.1, "{counts:?}");
    assert_eq!(counts.get("infra-backend-v3"), None, "{counts:?}");
    Ok(())
}

/// HTTPRouteNoBackendRefs (in `httproute-omitted-backendrefs.go`; this test was named
/// after its file before): a rule without backendRefs (omitted, or an empty list)
/// answers 500 and forwards nothing; the catch-all rule beside them forwards.
#[test]
fn http_route_no_backend_refs() -> anyhow::Result<()> {
    let rules = "  - matches: [{path: {type: Exact, value: /omitted-no-forward}}]\n  - matches: [{path: {type: Exact, value: /empty-no-forward}}]\n    backendRefs: []\n  - matches: [{path: {type: PathPrefix, value: /}}]\n    backendRefs: [{name: infra-backend-v1, port: 8080}]\n";
    let case = Case::start(
        "conf-omitted-backend-refs",
        &route_with_rules("omitted-backendrefs", rules),
    )?;
    let forward = case.get("/forward")?;
    assert_eq!(forward.status, 200, "{forward:?}");
    assert_eq!(forward.json()?["upstream"], "infra-backend-v1");
    for path in ["/omitted-no-forward", "/empty-no-forward"] {
        let answer = case.get(path)?;
        assert_eq!(answer.status, 500, "{path}: {answer:?}");
        assert_ne!(
            answer.header("x-upstream-name"),
            Some("infra-backend-v1"),
            "{path}"
        );
    }
    let report = report(case.dir.path())?;
    let lines = route_lines(&report, INFRA, "omitted-backendrefs");
    assert!(
        lines.len() == 1
            && lines[0].contains("Accepted=True")
            && lines[0].contains("ResolvedRefs=True"),
        "{report}"
    );
    Ok(())
}

/// HTTPRouteNamedRule: a rule's `name` is accepted and changes nothing; named and
/// unnamed rules both serve.
#[test]
fn http_route_named_rule() -> anyhow::Result<()> {
    let rules = "  - name: named-rule\n    matches: [{path: {type: PathPrefix, value: /named}}]\n    backendRefs: [{name: infra-backend-v1, port: 8080}]\n  - matches: [{path: {type: PathPrefix, value: /unnamed}}]\n    backendRefs: [{name: infra-backend-v2, port: 8080}]\n";
    let case = Case::start(
        "conf-named-rule",
        &route_with_rules("http-named-rules", rules),
    )?;
    for (path, want) in [
        ("/named", "infra-backend-v1"),
        ("/unnamed", "infra-backend-v2"),
    ] {
        let answer = case.get(path)?;
        assert_eq!(answer.status, 200, "{path}: {answer:?}");
        assert_eq!(answer.json()?["upstream"], want, "{path}");
    }
    let report = report(case.dir.path())?;
    let lines = route_lines(&report, INFRA, "http-named-rules");
    assert!(
        lines.len() == 1
            && lines[0].contains("Accepted=True")
            && lines[0].contains("ResolvedRefs=True"),
        "{report}"
    );
    Ok(())
}

/// HTTPRouteListenerPortMatching: listeners on ports 80 (foo.com), 8080 (foo.com,
/// bar.com) and 8090 (foo.com, bar.com); routes attach by parentRef `port` (and
/// `sectionName`), so each port serves its own routes, and bar.com on 8090, whose
/// listener no route attached to, gets 404. The Host carries the Gateway's port.
#[test]
fn http_route_listener_port_matching() -> anyhow::Result<()> {
    let dir = TempDir::new("conf-listener-port-matching")?;
    let v1 = Upstream::start(None, "127.0.0.1:0", "infra-backend-v1")?;
    let v2 = Upstream::start(None, "127.0.0.1:0", "infra-backend-v2")?;
    let v3 = Upstream::start(None, "127.0.0.1:0", "infra-backend-v3")?;
    let binds = [(80, free_port()), (8080, free_port()), (8090, free_port())];
    let listener = |name: &str, port: u16, host: &str| {
        format!(
            "  - {{name: {name}, port: {port}, protocol: HTTP, hostname: {host}, allowedRoutes: {{namespaces: {{from: Same}}}}}}\n"
        )
    };
    let route = |name: &str, parent: &str, to: &str| {
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: {INFRA}}}\nspec:\n  parentRefs: [{{name: httproute-listener-port-matching, namespace: {INFRA}, {parent}}}]\n  rules:\n  - backendRefs: [{{name: {to}, port: 8080}}]\n---\n"
        )
    };
    let config = class_and_ports(&binds)
        + &format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: httproute-listener-port-matching, namespace: {INFRA}}}\nspec:\n  gatewayClassName: gateway-conformance\n  listeners:\n{}{}{}{}{}---\n",
            listener("listener-1", 80, "foo.com"),
            listener("listener-2", 8080, "foo.com"),
            listener("listener-3", 8080, "bar.com"),
            listener("listener-4", 8090, "foo.com"),
            listener("listener-5", 8090, "bar.com"),
        )
        + &backend("infra-backend-v1", INFRA, 8080, v1.addr)
        + &backend("infra-backend-v2", INFRA, 8080, v2.addr)
        + &backend("infra-backend-v3", INFRA, 8080, v3.addr)
        + &route("backend-v1", "port: 80", "infra-backend-v1")
        + &route("backend-v2", "port: 8080", "infra-backend-v2")
        + &route(
            "backend-v3",
            "port: 8090, sectionName: listener-4",
            "infra-backend-v3",
        );
    let _gateway = serve(&dir, &config)?;
    let bind = |port: u16| {
        binds
            .iter()
            .find(|(p, _)| *p == port)
            .map_or(0, |(_, b)| *b)
    };
    for (host, port, want) in [
        ("foo.com", 80, "infra-backend-v1"),
        ("foo.com:8080", 8080, "infra-backend-v2"),
        ("bar.com:8080", 8080, "infra-backend-v2"),
        ("foo.com:8090", 8090, "infra-backend-v3"),
        ("bar.com:8090", 8090, "404"),
    ] {
        let url = format!("http://127.0.0.1:{}/", bind(port));
        let answer = curl(None, &["-H", &format!("Host: {host}"), &url])?;
        if want == "404" {
            assert_eq!(answer.status, 404, "{host}: {answer:?}");
        } else {
            assert_eq!(answer.status, 200, "{host}: {answer:?}");
            assert_eq!(answer.json()?["upstream"], want, "{host}");
        }
    }
    Ok(())
}

/// A Gateway `name` in the infra namespace with HTTP `listeners` on port 80, each
/// (name, hostname or "", allowed namespaces).
fn port_80_gateway(name: &str, listeners: &[(&str, &str, &str)]) -> String {
    let listeners: String = listeners
        .iter()
        .map(|(listener, host, from)| {
            let host = if host.is_empty() {
                String::new()
            } else {
                format!(", hostname: \"{host}\"")
            };
            format!(
                "  - {{name: {listener}, port: 80, protocol: HTTP{host}, allowedRoutes: {{namespaces: {{from: {from}}}}}}}\n"
            )
        })
        .collect();
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: {name}, namespace: {INFRA}}}\nspec:\n  gatewayClassName: gateway-conformance\n  listeners:\n{listeners}---\n"
    )
}

/// An HTTPRoute `name` with `parent` (flow YAML inside the parentRef), `hostnames`
/// (a flow list) and one rule, on `prefix` when given, to `to`.
fn hosted_route(
    name: &str,
    parent: &str,
    hostnames: &str,
    prefix: Option<&str>,
    to: &str,
) -> String {
    let matches = prefix.map_or_else(String::new, |p| {
        format!("matches: [{{path: {{type: PathPrefix, value: {p}}}}}], ")
    });
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: {INFRA}}}\nspec:\n  parentRefs: [{{{parent}}}]\n  hostnames: {hostnames}\n  rules:\n  - {{{matches}backendRefs: [{{name: {to}, port: 8080}}]}}\n---\n"
    )
}

/// (host, path, backend or "404") for each request.
fn expect_hosts(case: &Case, cases: &[(&str, &str, &str)]) -> anyhow::Result<()> {
    for (host, path, want) in cases {
        let answer = case.request(host, "GET", path, &[])?;
        if *want == "404" {
            assert_eq!(answer.status, 404, "{host}{path}: {answer:?}");
        } else {
            assert_eq!(answer.status, 200, "{host}{path}: {answer:?}");
            assert_eq!(answer.json()?["upstream"], *want, "{host}{path}");
        }
    }
    Ok(())
}

/// HTTPRouteHostnameIntersection: a route serves the intersection of its hostnames with
/// its listener's (specific in wildcard, wildcard over specific, wildcard in wildcard);
/// a route whose hostnames meet no listener's serves nothing; on a listener without a
/// hostname the route's own hostnames are served exactly.
#[test]
fn http_route_hostname_intersection() -> anyhow::Result<()> {
    let gw = "name: httproute-hostname-intersection";
    let routes = port_80_gateway(
        "httproute-hostname-intersection",
        &[
            ("listener-1", "very.specific.com", "Same"),
            ("listener-2", "*.wildcard.io", "Same"),
            ("listener-3", "*.anotherwildcard.io", "Same"),
        ],
    ) + &port_80_gateway(
        "httproute-hostname-intersection-all",
        &[("listener-1", "", "Same")],
    ) + &hosted_route(
        "specific-host-matches-listener-specific-host",
        gw,
        "[non.matching.com, \"*.nonmatchingwildcard.io\", very.specific.com]",
        Some("/s1"),
        "infra-backend-v1",
    ) + &hosted_route(
        "specific-host-matches-listener-wildcard-host",
        gw,
        "[non.matching.com, wildcard.io, foo.wildcard.io, bar.wildcard.io, foo.bar.wildcard.io]",
        Some("/s2"),
        "infra-backend-v2",
    ) + &hosted_route(
        "wildcard-host-matches-listener-specific-host",
        gw,
        "[non.matching.com, \"*.specific.com\"]",
        Some("/s3"),
        "infra-backend-v3",
    ) + &hosted_route(
        "wildcard-host-matches-listener-wildcard-host",
        gw,
        "[\"*.anotherwildcard.io\"]",
        Some("/s4"),
        "infra-backend-v1",
    ) + &hosted_route(
        "no-intersecting-hosts",
        gw,
        "[specific.but.wrong.com, wildcard.io]",
        Some("/s5"),
        "infra-backend-v2",
    ) + &hosted_route(
        "httproute-hostname-intersection-all",
        "name: httproute-hostname-intersection-all",
        "[first.com, sub.first.com, second.com, sub.second.com]",
        None,
        "infra-backend-v2",
    );
    let case = Case::start("conf-hostname-intersection", &routes)?;
    let (v1, v2, v3) = ("infra-backend-v1", "infra-backend-v2", "infra-backend-v3");
    expect_hosts(
        &case,
        &[
            ("very.specific.com", "/s1", v1),
            ("very.specific.com:1234", "/s1", v1),
            ("non.matching.com", "/s1", "404"),
            ("foo.nonmatchingwildcard.io", "/s1", "404"),
            ("foo.wildcard.io", "/s1", "404"),
            ("very.specific.com", "/non-matching-prefix", "404"),
            ("foo.wildcard.io", "/s2", v2),
            ("bar.wildcard.io", "/s2", v2),
            ("foo.bar.wildcard.io", "/s2", v2),
            ("non.matching.com", "/s2", "404"),
            ("wildcard.io", "/s2", "404"),
            ("very.specific.com", "/s2", "404"),
            ("foo.wildcard.io", "/non-matching-prefix", "404"),
            ("very.specific.com", "/s3", v3),
            ("non.matching.com", "/s3", "404"),
            ("foo.specific.com", "/s3", "404"),
            ("foo.wildcard.io", "/s3", "404"),
            ("foo.anotherwildcard.io", "/s4", v1),
            ("bar.anotherwildcard.io", "/s4", v1),
            ("foo.bar.anotherwildcard.io", "/s4", v1),
            ("anotherwildcard.io", "/s4", "404"),
            ("foo.wildcard.io", "/s4", "404"),
            ("very.specific.com", "/s4", "404"),
            ("foo.anotherwildcard.io", "/non-matching-prefix", "404"),
            ("specific.but.wrong.com", "/s5", "404"),
            ("wildcard.io", "/s5", "404"),
            ("first.com", "/", v2),
            ("sub.first.com", "/", v2),
            ("second.com", "/", v2),
            ("sub.second.com", "/", v2),
            ("third.com", "/", "404"),
            ("sub.third.com", "/", "404"),
        ],
    )?;
    let report = report(case.dir.path())?;
    let lines = route_lines(&report, INFRA, "no-intersecting-hosts");
    assert!(
        lines.len() == 1 && lines[0].contains("Accepted=False NoMatchingListenerHostname"),
        "{report}"
    );
    Ok(())
}

/// GatewayHTTPListenerIsolation: on one port, a request is served by the routes of the
/// listener whose hostname matches it most specifically only (no hostname, then
/// `*.example.com`, `*.foo.example.com`, `abc.foo.example.com`); another listener's
/// route for the same path is not reached.
#[test]
fn gateway_http_listener_isolation() -> anyhow::Result<()> {
    let listeners = [
        ("empty-hostname", ""),
        ("wildcard-example-com", "*.example.com"),
        ("wildcard-foo-example-com", "*.foo.example.com"),
        ("abc-foo-example-com", "abc.foo.example.com"),
    ];
    let mut routes = port_80_gateway(
        "http-listener-isolation",
        &listeners.map(|(name, host)| (name, host, "All")),
    );
    for (name, _) in listeners {
        routes.push_str(&hosted_route(
            &format!("attaches-to-{name}"),
            &format!("name: http-listener-isolation, sectionName: {name}"),
            "[]",
            Some(&format!("/{name}")),
            "infra-backend-v1",
        ));
    }
    // The suite's base `same-namespace` Gateway (no hostname, no routes here) shares
    // port 80 with this one.
    let case = Case::start("conf-http-listener-isolation", &routes)?;
    let hosts = [
        ("bar.com", "empty-hostname"),
        ("bar.example.com", "wildcard-example-com"),
        ("bar.foo.example.com", "wildcard-foo-example-com"),
        ("abc.foo.example.com", "abc-foo-example-com"),
    ];
    for (host, own) in hosts {
        for (listener, _) in listeners {
            let path = format!("/{listener}");
            let answer = case.request(host, "GET", &path, &[])?;
            if listener == own {
                assert_eq!(answer.status, 200, "{host}{path}: {answer:?}");
                assert_eq!(answer.json()?["upstream"], "infra-backend-v1");
            } else {
                assert_eq!(answer.status, 404, "{host}{path}: {answer:?}");
            }
        }
    }
    Ok(())
}
