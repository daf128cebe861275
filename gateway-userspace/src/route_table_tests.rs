use http::{HeaderMap, HeaderValue};
use std::sync::Arc;

use super::*;

fn prefix(p: &str) -> Option<StringMatcher> {
    Some(StringMatcher::Prefix {
        value: p.to_owned(),
        ignore_case: false,
    })
}

fn route(name: &'static str, matches: Vec<RequestMatch>) -> Route<&'static str> {
    Route {
        name: name.to_owned(),
        matches,
        action: name,
    }
}

fn on_path(path: Option<StringMatcher>) -> RequestMatch {
    RequestMatch {
        path,
        ..RequestMatch::default()
    }
}

fn lookup(
    table: &RouteTable<&'static str>,
    authority: &str,
    path_and_query: &str,
    headers: &HeaderMap,
) -> Option<&'static str> {
    let (path, query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path_and_query, None),
    };
    let request = RequestInfo {
        authority,
        path,
        query,
        method: "GET",
        scheme: "http",
        port: 80,
        headers,
    };
    table.find(&request).map(|r| r.action)
}

/// The httpbin example from Istio's ingress task plus the cases around it.
#[test]
fn hosts_then_first_matching_prefix() {
    let table = RouteTable::new(vec![
        VirtualHost {
            host: "httpbin.example.com".into(),
            routes: Arc::new(vec![
                route(
                    "status-or-delay",
                    vec![on_path(prefix("/status")), on_path(prefix("/delay"))],
                ),
                route(
                    "headers",
                    vec![on_path(Some(StringMatcher::Exact {
                        value: "/headers".into(),
                        ignore_case: false,
                    }))],
                ),
            ]),
        },
        VirtualHost {
            host: "*.example.com".into(),
            routes: Arc::new(vec![route("wildcard", vec![])]),
        },
        VirtualHost {
            host: "*.api.example.com".into(),
            routes: Arc::new(vec![route("deeper-wildcard", vec![])]),
        },
        VirtualHost {
            host: "*".into(),
            routes: Arc::new(vec![route("catch-all", vec![on_path(prefix("/only"))])]),
        },
    ]);
    let none = HeaderMap::new();
    let cases = [
        (
            "httpbin.example.com",
            "/status/200",
            Some("status-or-delay"),
        ),
        (
            "httpbin.example.com:8080",
            "/delay/1",
            Some("status-or-delay"),
        ),
        ("HTTPBIN.Example.COM", "/status", Some("status-or-delay")),
        // Istio's prefix is a string prefix, not a path segment.
        ("httpbin.example.com", "/statusfoo", Some("status-or-delay")),
        ("httpbin.example.com", "/headers", Some("headers")),
        ("httpbin.example.com", "/headers/x", None),
        ("httpbin.example.com", "/", None),
        ("other.example.com", "/anything", Some("wildcard")),
        ("a.b.example.com", "/anything", Some("wildcard")),
        ("v1.api.example.com", "/anything", Some("deeper-wildcard")),
        ("example.com", "/only/here", Some("catch-all")),
        ("example.com", "/elsewhere", None),
        ("[::1]:80", "/only", Some("catch-all")),
    ];
    for (host, path, want) in cases {
        assert_eq!(lookup(&table, host, path, &none), want, "{host}{path}");
    }
}

#[test]
fn no_catch_all_host_means_unknown_hosts_miss() {
    let table = RouteTable::new(vec![VirtualHost {
        host: "a.example".into(),
        routes: Arc::new(vec![route("a", vec![])]),
    }]);
    assert_eq!(lookup(&table, "b.example", "/", &HeaderMap::new()), None);
    assert_eq!(
        lookup(&table, "a.example", "/", &HeaderMap::new()),
        Some("a")
    );
}

#[test]
fn regex_is_whole_path_and_ignore_case_applies() -> Result<(), regex::Error> {
    let table = RouteTable::new(vec![VirtualHost {
        host: "*".into(),
        routes: Arc::new(vec![
            route(
                "regex",
                vec![on_path(Some(StringMatcher::regex(
                    "/v[0-9]+/items",
                    false,
                )?))],
            ),
            route(
                "icase",
                vec![on_path(Some(StringMatcher::Prefix {
                    value: "/Admin".into(),
                    ignore_case: true,
                }))],
            ),
            route(
                "icase-regex",
                vec![on_path(Some(StringMatcher::regex("/ab+", true)?))],
            ),
        ]),
    }]);
    let none = HeaderMap::new();
    assert_eq!(lookup(&table, "h", "/v2/items", &none), Some("regex"));
    assert_eq!(
        lookup(&table, "h", "/v2/items/3", &none),
        None,
        "regex must match the whole path"
    );
    assert_eq!(lookup(&table, "h", "/ADMIN/users", &none), Some("icase"));
    assert_eq!(lookup(&table, "h", "/ABBB", &none), Some("icase-regex"));
    Ok(())
}

#[test]
fn headers_query_and_without_headers() {
    let table = RouteTable::new(vec![VirtualHost {
        host: "*".into(),
        routes: Arc::new(vec![
            route(
                "canary",
                vec![RequestMatch {
                    headers: vec![(
                        "x-canary".into(),
                        StringMatcher::Exact {
                            value: "1".into(),
                            ignore_case: false,
                        },
                    )],
                    ..RequestMatch::default()
                }],
            ),
            route(
                "debug-query",
                vec![RequestMatch {
                    query_params: vec![(
                        "debug".into(),
                        StringMatcher::Exact {
                            value: "true".into(),
                            ignore_case: false,
                        },
                    )],
                    ..RequestMatch::default()
                }],
            ),
            route(
                "no-auth",
                vec![RequestMatch {
                    without_headers: vec![("authorization".into(), StringMatcher::Present)],
                    ..RequestMatch::default()
                }],
            ),
            route("rest", vec![]),
        ]),
    }]);
    let mut canary = HeaderMap::new();
    canary.insert("x-canary", HeaderValue::from_static("1"));
    canary.insert("authorization", HeaderValue::from_static("Bearer x"));
    let mut authed = HeaderMap::new();
    authed.insert("authorization", HeaderValue::from_static("Bearer x"));
    assert_eq!(lookup(&table, "h", "/", &canary), Some("canary"));
    assert_eq!(
        lookup(&table, "h", "/?a=1&debug=true", &authed),
        Some("debug-query")
    );
    assert_eq!(lookup(&table, "h", "/?debug=false", &authed), Some("rest"));
    assert_eq!(lookup(&table, "h", "/", &HeaderMap::new()), Some("no-auth"));
}

#[test]
fn authority_port_is_ignored_for_hosts() {
    for (authority, host) in [
        ("a.example", "a.example"),
        ("a.example:8080", "a.example"),
        ("[2001:db8::1]:443", "2001:db8::1"),
        ("[2001:db8::1]", "2001:db8::1"),
        ("2001:db8::1", "2001:db8::1"),
        ("a.example:", "a.example"),
        ("a:b", "a:b"),
        ("::1", "::1"),
        (":80", ""),
        ("8080", "8080"),
        ("", ""),
        ("a.example:80:90", "a.example:80:90"),
    ] {
        assert_eq!(host_without_port(authority), host, "{authority}");
    }
}

#[test]
fn gateway_api_path_prefix_is_whole_segments() {
    let cases: [(&str, &str, bool); 10] = [
        ("/abc", "/abc", true),
        ("/abc", "/abc/", true),
        ("/abc", "/abc/def", true),
        ("/abc", "/abcd", false),
        ("/abc/", "/abc", true),
        ("/abc/", "/abc/def", true),
        ("/abc/", "/abcd", false),
        ("/", "/", true),
        ("/", "/anything/at/all", true),
        ("/v1/api", "/v1", false),
    ];
    for (value, path, want) in cases {
        assert_eq!(
            StringMatcher::path_prefix(value).matches(path),
            want,
            "PathPrefix {value} on {path}"
        );
    }
}

fn host_table(hosts: &[&'static str]) -> RouteTable<&'static str> {
    RouteTable::new(
        hosts
            .iter()
            .map(|h| VirtualHost {
                host: (*h).to_owned(),
                routes: Arc::new(vec![route(h, Vec::new())]),
            })
            .collect(),
    )
}

#[test]
fn wildcards_pick_the_longest_suffix_without_scanning_order() {
    let table = host_table(&[
        "*.com",
        "*.example.com",
        "*.b.example.com",
        "exact.b.example.com",
        "*-api.example.org",
    ]);
    let headers = HeaderMap::new();
    let cases: [(&str, Option<&str>); 9] = [
        ("exact.b.example.com", Some("exact.b.example.com")),
        ("x.b.example.com", Some("*.b.example.com")),
        ("x.y.b.example.com", Some("*.b.example.com")),
        ("b.example.com", Some("*.example.com")),
        ("example.com", Some("*.com")),
        ("com", None),
        ("shop-api.example.org", Some("*-api.example.org")),
        ("-api.example.org", None),
        ("X.B.Example.COM:8080", Some("*.b.example.com")),
    ];
    for (host, want) in cases {
        assert_eq!(lookup(&table, host, "/", &headers), want, "host {host}");
    }
    let with_any = host_table(&["*.example.com", "*"]);
    assert_eq!(
        lookup(&with_any, "other.org", "/", &headers),
        Some("*"),
        "`*` catches what no wildcard does"
    );
    assert_eq!(
        lookup(&with_any, "a.example.com", "/", &headers),
        Some("*.example.com")
    );
}
