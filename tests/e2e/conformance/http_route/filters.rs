//! HTTPRoute filter cases: request and response header modifiers, redirects of path,
//! port and scheme, host and path rewrites. Each test carries the suite's manifest (its
//! rules, the same paths and values) and its expectations, case by case.

use gateway_tests::CurlResponse;

use super::{Case, redirect_route, route_with_rules};
use crate::conformance::INFRA;

/// A header modifier's YAML: `set` and `add` pairs, `remove` names.
fn modifier(kind: &str, set: &[(&str, &str)], add: &[(&str, &str)], remove: &[&str]) -> String {
    let pairs = |list: &[(&str, &str)]| -> String {
        list.iter()
            .map(|(n, v)| format!("{{name: {n}, value: {v}}}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let field = if kind == "RequestHeaderModifier" {
        "requestHeaderModifier"
    } else {
        "responseHeaderModifier"
    };
    format!(
        "{{type: {kind}, {field}: {{set: [{}], add: [{}], remove: [{}]}}}}",
        pairs(set),
        pairs(add),
        remove.join(", ")
    )
}

/// A rule on PathPrefix `prefix` with `filters` (flow YAML, comma-separated) to
/// `backend`.
fn filtered_rule(prefix: &str, filters: &str, backend: &str) -> String {
    format!(
        "  - matches: [{{path: {{type: PathPrefix, value: {prefix}}}}}]\n    filters: [{filters}]\n    backendRefs: [{{name: {backend}, port: 8080}}]\n"
    )
}

/// The same rule with the `filters` on its backendRef instead, as the suite's
/// `httproute-request-header-modifier-backend.yaml` has them.
fn backend_filtered_rule(prefix: &str, filters: &str, backend: &str) -> String {
    format!(
        "  - matches: [{{path: {{type: PathPrefix, value: {prefix}}}}}]\n    backendRefs: [{{name: {backend}, port: 8080, filters: [{filters}]}}]\n"
    )
}

/// The values of a header, comma-joined lists and repeated lines alike, in order.
fn values_of<'a>(lines: impl Iterator<Item = &'a str>) -> Vec<String> {
    lines
        .flat_map(|v| v.split(','))
        .map(|v| v.trim().to_owned())
        .collect()
}

/// What the backend saw of header `name` (the echo joins repeated ones).
fn echoed(answer: &CurlResponse, name: &str) -> anyhow::Result<Option<Vec<String>>> {
    let json = answer.json()?;
    Ok(json["headers"][name.to_ascii_lowercase()]
        .as_str()
        .map(|v| values_of(std::iter::once(v))))
}

/// The response's values of header `name`.
fn response_values(answer: &CurlResponse, name: &str) -> Option<Vec<String>> {
    let lines: Vec<&str> = answer
        .head
        .lines()
        .skip(1)
        .filter_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim().eq_ignore_ascii_case(name).then(|| value.trim())
        })
        .collect();
    (!lines.is_empty()).then(|| values_of(lines.into_iter()))
}

/// `want`: (header, "a,b") expected; `absent`: headers that must not be there.
fn check(
    what: &str,
    got: impl Fn(&str) -> anyhow::Result<Option<Vec<String>>>,
    want: &[(&str, &str)],
    absent: &[&str],
) -> anyhow::Result<()> {
    for (name, value) in want {
        let expected: Vec<String> = value.split(',').map(str::to_owned).collect();
        assert_eq!(got(name)?, Some(expected), "{what}: {name}");
    }
    for name in absent {
        assert_eq!(got(name)?, None, "{what}: {name} is removed");
    }
    Ok(())
}

/// The suite's header-modifier rules (shared by the request and response tests).
fn header_modifier_rules(kind: &str, rule: fn(&str, &str, &str) -> String) -> String {
    let mut rules = String::new();
    for (prefix, filter) in [
        (
            "/set",
            modifier(kind, &[("X-Header-Set", "set-overwrites-values")], &[], &[]),
        ),
        (
            "/add",
            modifier(kind, &[], &[("X-Header-Add", "add-appends-values")], &[]),
        ),
        ("/remove", modifier(kind, &[], &[], &["X-Header-Remove"])),
        (
            "/multiple",
            modifier(
                kind,
                &[
                    ("X-Header-Set-1", "header-set-1"),
                    ("X-Header-Set-2", "header-set-2"),
                ],
                &[
                    ("X-Header-Add-1", "header-add-1"),
                    ("X-Header-Add-2", "header-add-2"),
                    ("X-Header-Add-3", "header-add-3"),
                ],
                &["X-Header-Remove-1", "X-Header-Remove-2"],
            ),
        ),
        (
            "/case-insensitivity",
            modifier(
                kind,
                &[("X-Header-Set", "header-set")],
                &[("X-Header-Add", "header-add")],
                &["X-Header-Remove"],
            ),
        ),
    ] {
        rules.push_str(&rule(prefix, &filter, "infra-backend-v1"));
    }
    rules
}

type HeaderCase<'a> = (
    &'a str,
    &'a [(&'a str, &'a str)],
    &'a [(&'a str, &'a str)],
    &'a [&'a str],
);

/// The suite's cases: path, headers sent (to the gateway, or set by the backend), headers
/// expected, headers absent.
const HEADER_CASES: &[HeaderCase<'static>] = &[
    (
        "/set",
        &[("Some-Other-Header", "val")],
        &[
            ("Some-Other-Header", "val"),
            ("X-Header-Set", "set-overwrites-values"),
        ],
        &[],
    ),
    (
        "/set",
        &[
            ("Some-Other-Header", "val"),
            ("X-Header-Set", "some-other-value"),
        ],
        &[
            ("Some-Other-Header", "val"),
            ("X-Header-Set", "set-overwrites-values"),
        ],
        &[],
    ),
    (
        "/add",
        &[("Some-Other-Header", "val")],
        &[
            ("Some-Other-Header", "val"),
            ("X-Header-Add", "add-appends-values"),
        ],
        &[],
    ),
    (
        "/add",
        &[
            ("Some-Other-Header", "val"),
            ("X-Header-Add", "some-other-value"),
        ],
        &[
            ("Some-Other-Header", "val"),
            ("X-Header-Add", "some-other-value,add-appends-values"),
        ],
        &[],
    ),
    (
        "/remove",
        &[("X-Header-Remove", "val")],
        &[],
        &["X-Header-Remove"],
    ),
    (
        "/multiple",
        &[
            ("X-Header-Set-2", "set-val-2"),
            ("X-Header-Add-2", "add-val-2"),
            ("X-Header-Remove-2", "remove-val-2"),
            ("Another-Header", "another-header-val"),
            ("X-Header-Remove-1", "val"),
        ],
        &[
            ("X-Header-Set-1", "header-set-1"),
            ("X-Header-Set-2", "header-set-2"),
            ("X-Header-Add-1", "header-add-1"),
            ("X-Header-Add-2", "add-val-2,header-add-2"),
            ("X-Header-Add-3", "header-add-3"),
            ("Another-Header", "another-header-val"),
        ],
        &["X-Header-Remove-1", "X-Header-Remove-2"],
    ),
    (
        "/case-insensitivity",
        &[
            ("x-header-set", "original-val-set"),
            ("x-header-add", "original-val-add"),
            ("x-header-remove", "original-val-remove"),
            ("Another-Header", "another-header-val"),
        ],
        &[
            ("X-Header-Set", "header-set"),
            ("X-Header-Add", "original-val-add,header-add"),
            ("Another-Header", "another-header-val"),
        ],
        &["x-header-remove", "X-Header-Remove"],
    ),
];

/// HTTPRouteRequestHeaderModifier: `set` overwrites, `add` appends to what the client
/// sent, `remove` removes, names case-insensitively.
#[test]
fn http_route_request_header_modifier() -> anyhow::Result<()> {
    let routes = route_with_rules(
        "request-header-modifier",
        &header_modifier_rules("RequestHeaderModifier", filtered_rule),
    );
    let case = Case::start("conf-request-header-modifier", &routes)?;
    for (path, sent, want, absent) in HEADER_CASES {
        let headers: Vec<String> = sent.iter().map(|(n, v)| format!("{n}: {v}")).collect();
        let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
        let answer = case.request("example.com", "GET", path, &headers)?;
        assert_eq!(answer.status, 200, "{path}: {answer:?}");
        assert_eq!(answer.json()?["upstream"], "infra-backend-v1");
        check(path, |name| echoed(&answer, name), want, absent)?;
    }
    Ok(())
}

/// HTTPRouteBackendRequestHeaderModifier: the same cases with the modifiers on each
/// rule's backendRef rather than on the rule.
#[test]
fn http_route_backend_request_header_modifier() -> anyhow::Result<()> {
    let routes = route_with_rules(
        "request-header-modifier",
        &header_modifier_rules("RequestHeaderModifier", backend_filtered_rule),
    );
    let case = Case::start("conf-backend-request-header-modifier", &routes)?;
    for (path, sent, want, absent) in HEADER_CASES {
        let headers: Vec<String> = sent.iter().map(|(n, v)| format!("{n}: {v}")).collect();
        let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
        let answer = case.request("example.com", "GET", path, &headers)?;
        assert_eq!(answer.status, 200, "{path}: {answer:?}");
        assert_eq!(answer.json()?["upstream"], "infra-backend-v1");
        check(path, |name| echoed(&answer, name), want, absent)?;
    }
    Ok(())
}

/// HTTPRouteResponseHeaderModifier: the same on the backend's response headers (the
/// backend sets them as asked by `x-echo-set-header`, as the suite's echo backend does).
#[test]
fn http_route_response_header_modifier() -> anyhow::Result<()> {
    let routes = route_with_rules(
        "response-header-modifier",
        &header_modifier_rules("ResponseHeaderModifier", filtered_rule),
    );
    let case = Case::start("conf-response-header-modifier", &routes)?;
    for (path, set_by_backend, want, absent) in HEADER_CASES {
        let echo: Vec<String> = set_by_backend
            .iter()
            .map(|(n, v)| format!("{n}:{v}"))
            .collect();
        let echo = format!("x-echo-set-header: {}", echo.join(","));
        let answer = case.request("example.com", "GET", path, &[&echo])?;
        assert_eq!(answer.status, 200, "{path}: {answer:?}");
        check(
            path,
            |name| Ok(response_values(&answer, name)),
            want,
            absent,
        )?;
    }
    Ok(())
}

/// Each (path, status, Location) of redirect rules, without following them.
fn expect_redirects(case: &Case, cases: &[(&str, u16, &str)]) {
    for (path, status, location) in cases {
        let answer = case.get(path).expect("curl");
        assert_eq!(answer.status, *status, "{path}: {answer:?}");
        assert_eq!(
            answer.header("location"),
            Some(*location),
            "{path}: {answer:?}"
        );
    }
}

/// HTTPRouteRedirectPath: ReplacePrefixMatch and ReplaceFullPath, alone and with a
/// hostname or a status code.
#[test]
fn http_route_redirect_path() -> anyhow::Result<()> {
    let prefix = "path: {type: ReplacePrefixMatch, replacePrefixMatch: /replacement-prefix}";
    let full = |to: &str| format!("path: {{type: ReplaceFullPath, replaceFullPath: {to}}}");
    let routes = redirect_route(
        "redirect-path",
        &[
            ("/original-prefix", &format!("{{{prefix}}}")),
            ("/full", &format!("{{{}}}", full("/full-path-replacement"))),
            (
                "/path-and-host",
                &format!("{{hostname: example.org, {prefix}}}"),
            ),
            (
                "/path-and-status",
                &format!("{{{prefix}, statusCode: 301}}"),
            ),
            (
                "/full-path-and-host",
                &format!("{{hostname: example.org, {}}}", full("/replacement-full")),
            ),
            (
                "/full-path-and-status",
                &format!("{{{}, statusCode: 301}}", full("/replacement-full")),
            ),
        ],
    );
    let case = Case::start("conf-redirect-path", &routes)?;
    expect_redirects(
        &case,
        &[
            (
                "/original-prefix/lemon",
                302,
                "http://example.com/replacement-prefix/lemon",
            ),
            (
                "/full/path/original",
                302,
                "http://example.com/full-path-replacement",
            ),
            (
                "/path-and-host",
                302,
                "http://example.org/replacement-prefix",
            ),
            (
                "/path-and-status",
                301,
                "http://example.com/replacement-prefix",
            ),
            (
                "/full-path-and-host",
                302,
                "http://example.org/replacement-full",
            ),
            (
                "/full-path-and-status",
                301,
                "http://example.com/replacement-full",
            ),
        ],
    );
    Ok(())
}

/// HTTPRouteRedirectPort: the port asked for, alone and with a hostname or a status.
#[test]
fn http_route_redirect_port() -> anyhow::Result<()> {
    let routes = redirect_route(
        "redirect-port",
        &[
            ("/port", "{port: 8083}"),
            ("/port-and-host", "{hostname: example.org, port: 8083}"),
            ("/port-and-status", "{port: 8083, statusCode: 301}"),
            (
                "/port-and-host-and-status",
                "{port: 8083, hostname: example.org, statusCode: 302}",
            ),
        ],
    );
    let case = Case::start("conf-redirect-port", &routes)?;
    expect_redirects(
        &case,
        &[
            ("/port", 302, "http://example.com:8083/port"),
            (
                "/port-and-host",
                302,
                "http://example.org:8083/port-and-host",
            ),
            (
                "/port-and-status",
                301,
                "http://example.com:8083/port-and-status",
            ),
            (
                "/port-and-host-and-status",
                302,
                "http://example.org:8083/port-and-host-and-status",
            ),
        ],
    );
    Ok(())
}

/// HTTPRouteRedirectScheme: `https`, its well-known port left out of the Location, alone
/// and with a hostname or a status.
#[test]
fn http_route_redirect_scheme() -> anyhow::Result<()> {
    let routes = redirect_route(
        "redirect-scheme",
        &[
            ("/scheme", "{scheme: https}"),
            ("/scheme-and-host", "{hostname: example.org, scheme: https}"),
            ("/scheme-and-status", "{scheme: https, statusCode: 301}"),
            (
                "/scheme-and-host-and-status",
                "{scheme: https, statusCode: 302, hostname: example.org}",
            ),
        ],
    );
    let case = Case::start("conf-redirect-scheme", &routes)?;
    expect_redirects(
        &case,
        &[
            ("/scheme", 302, "https://example.com/scheme"),
            (
                "/scheme-and-host",
                302,
                "https://example.org/scheme-and-host",
            ),
            (
                "/scheme-and-status",
                301,
                "https://example.com/scheme-and-status",
            ),
            (
                "/scheme-and-host-and-status",
                302,
                "https://example.org/scheme-and-host-and-status",
            ),
        ],
    );
    Ok(())
}

/// The suite's header changes that ride along with a rewrite.
fn rewrite_modifier() -> String {
    modifier(
        "RequestHeaderModifier",
        &[("X-Header-Set", "set-overwrites-values")],
        &[
            ("X-Header-Add", "header-val-1"),
            ("X-Header-Add-Append", "header-val-2"),
        ],
        &["X-Header-Remove"],
    )
}

/// What the suite sends with a rewrite and header changes, and what the backend must see.
const REWRITE_HEADERS_SENT: &[&str] = &[
    "X-Header-Remove: remove-val",
    "X-Header-Add-Append: append-val-1",
    "X-Header-Set: set-val",
];
const REWRITE_HEADERS_SEEN: &[(&str, &str)] = &[
    ("X-Header-Add", "header-val-1"),
    ("X-Header-Add-Append", "append-val-1,header-val-2"),
    ("X-Header-Set", "set-overwrites-values"),
];

/// HTTPRouteRewriteHost: URLRewrite `hostname` is the Host the backend sees, also with
/// header changes beside it.
#[test]
fn http_route_rewrite_host() -> anyhow::Result<()> {
    let rules = filtered_rule(
        "/one",
        "{type: URLRewrite, urlRewrite: {hostname: one.example.org}}",
        "infra-backend-v1",
    ) + "  - filters: [{type: URLRewrite, urlRewrite: {hostname: example.org}}]\n    backendRefs: [{name: infra-backend-v2, port: 8080}]\n"
        + &filtered_rule(
            "/rewrite-host-and-modify-headers",
            &format!(
                "{{type: URLRewrite, urlRewrite: {{hostname: test.example.org}}}}, {}",
                rewrite_modifier()
            ),
            "infra-backend-v2",
        );
    let routes = format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: rewrite-host, namespace: {INFRA}}}
spec:
  parentRefs: [{{name: same-namespace}}]
  hostnames: [rewrite.example]
  rules:
{rules}"#
    );
    let case = Case::start("conf-rewrite-host", &routes)?;
    for (path, host, backend, sent) in [
        ("/one", "one.example.org", "infra-backend-v1", &[][..]),
        ("/two", "example.org", "infra-backend-v2", &[][..]),
        (
            "/rewrite-host-and-modify-headers",
            "test.example.org",
            "infra-backend-v2",
            REWRITE_HEADERS_SENT,
        ),
    ] {
        let answer = case.request("rewrite.example", "GET", path, sent)?;
        assert_eq!(answer.status, 200, "{path}: {answer:?}");
        let json = answer.json()?;
        assert_eq!(json["host"], host, "{path}");
        assert_eq!(json["path"], path, "{path}");
        assert_eq!(json["upstream"], backend, "{path}");
        if !sent.is_empty() {
            check(
                path,
                |name| echoed(&answer, name),
                REWRITE_HEADERS_SEEN,
                &["X-Header-Remove"],
            )?;
        }
    }
    Ok(())
}

/// HTTPRouteRewritePath: ReplacePrefixMatch (also to `/`, which strips the prefix) and
/// ReplaceFullPath, also with header changes beside them.
#[test]
fn http_route_rewrite_path() -> anyhow::Result<()> {
    let rewrite = |path: &str| format!("{{type: URLRewrite, urlRewrite: {{path: {path}}}}}");
    let prefix = |to: &str| {
        rewrite(&format!(
            "{{type: ReplacePrefixMatch, replacePrefixMatch: {to}}}"
        ))
    };
    let full = |to: &str| rewrite(&format!("{{type: ReplaceFullPath, replaceFullPath: {to}}}"));
    let rules = [
        ("/prefix/one", prefix("/one")),
        ("/strip-prefix", prefix("/")),
        ("/full/one", full("/one")),
        (
            "/full/rewrite-path-and-modify-headers",
            format!("{}, {}", full("/test"), rewrite_modifier()),
        ),
        (
            "/prefix/rewrite-path-and-modify-headers",
            format!("{}, {}", prefix("/prefix"), rewrite_modifier()),
        ),
    ]
    .iter()
    .map(|(p, f)| filtered_rule(p, f, "infra-backend-v1"))
    .collect::<String>();
    let case = Case::start(
        "conf-rewrite-path",
        &route_with_rules("rewrite-path", &rules),
    )?;
    for (path, seen, sent) in [
        ("/prefix/one/two", "/one/two", &[][..]),
        ("/strip-prefix/three", "/three", &[][..]),
        ("/strip-prefix", "/", &[][..]),
        ("/full/one/two", "/one", &[][..]),
        (
            "/full/rewrite-path-and-modify-headers/test",
            "/test",
            REWRITE_HEADERS_SENT,
        ),
        (
            "/prefix/rewrite-path-and-modify-headers/one",
            "/prefix/one",
            REWRITE_HEADERS_SENT,
        ),
    ] {
        let answer = case.request("example.com", "GET", path, sent)?;
        assert_eq!(answer.status, 200, "{path}: {answer:?}");
        let json = answer.json()?;
        assert_eq!(json["path"], seen, "{path}");
        if !sent.is_empty() {
            check(
                path,
                |name| echoed(&answer, name),
                REWRITE_HEADERS_SEEN,
                &["X-Header-Remove"],
            )?;
        }
    }
    Ok(())
}
