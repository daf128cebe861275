use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;

use super::*;

/// Policies from YAML specs (`name: spec` pairs, namespace `ns`).
fn engine(policies: &[&str], for_tcp: bool) -> (Engine, Vec<Problem>) {
    let mut engine = Engine::default();
    let mut problems = Vec::new();
    for (index, spec) in policies.iter().enumerate() {
        let policy: AuthorizationPolicy = serde_yaml::from_str(&format!(
            "metadata: {{name: p{index}, namespace: ns}}\nspec:\n{}",
            indent(spec)
        ))
        .expect("test policy parses");
        engine.add(&policy, false, for_tcp, &mut problems);
    }
    (engine, problems)
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  {l}\n")).collect()
}

struct Req {
    peer: &'static str,
    remote: Option<&'static str>,
    port: u16,
    sni: Option<&'static str>,
    principal: Option<&'static str>,
    host: &'static str,
    method: &'static str,
    path: &'static str,
    headers: &'static [(&'static str, &'static str)],
}

const REQ: Req = Req {
    peer: "10.0.0.1",
    remote: None,
    port: 8080,
    sni: None,
    principal: None,
    host: "example.com",
    method: "GET",
    path: "/",
    headers: &[],
};

fn allowed(engine: &Engine, req: &Req, http: bool) -> bool {
    let mut headers = HeaderMap::new();
    for (name, value) in req.headers {
        headers.append(
            http::HeaderName::from_static(name),
            http::HeaderValue::from_static(value),
        );
    }
    let peer: IpAddr = req.peer.parse().expect("ip");
    let attributes = Attributes {
        peer,
        remote: req.remote.map_or(peer, |r| r.parse().expect("ip")),
        destination: SocketAddr::from(([10, 9, 9, 9], req.port)),
        sni: req.sni,
        principal: req.principal,
        http: http.then_some(HttpAttributes {
            host: req.host,
            method: req.method,
            path: req.path,
            headers: &headers,
        }),
    };
    engine.evaluate(&attributes).allowed
}

/// (policies, request, allowed over HTTP)
#[test]
fn http_decisions() {
    let cases: &[(&str, &[&str], Req, bool)] = &[
        ("no policy allows", &[], REQ, true),
        (
            "ALLOW without rules allows nothing",
            &["action: ALLOW"],
            REQ,
            false,
        ),
        (
            "DENY without rules denies nothing",
            &["action: DENY"],
            REQ,
            true,
        ),
        (
            "rules: [{}] matches everything",
            &["action: DENY\nrules: [{}]"],
            REQ,
            false,
        ),
        ("action defaults to ALLOW", &["rules: [{}]"], REQ, true),
        (
            "ipBlocks allow",
            &["rules: [{from: [{source: {ipBlocks: [10.0.0.0/8]}}]}]"],
            REQ,
            true,
        ),
        (
            "ipBlocks: others are denied",
            &["rules: [{from: [{source: {ipBlocks: [10.0.0.0/8]}}]}]"],
            Req {
                peer: "192.168.1.1",
                ..REQ
            },
            false,
        ),
        (
            "notIpBlocks",
            &["action: DENY\nrules: [{from: [{source: {notIpBlocks: [10.0.0.1]}}]}]"],
            Req {
                peer: "10.0.0.2",
                ..REQ
            },
            false,
        ),
        (
            "remoteIpBlocks read the remote address, not the peer",
            &["rules: [{from: [{source: {remoteIpBlocks: [203.0.113.0/24]}}]}]"],
            Req {
                remote: Some("203.0.113.7"),
                ..REQ
            },
            true,
        ),
        (
            "notRemoteIpBlocks: a remote address outside the blocks is denied",
            &["action: DENY\nrules: [{from: [{source: {notRemoteIpBlocks: [203.0.113.0/24]}}]}]"],
            Req {
                remote: Some("198.51.100.7"),
                ..REQ
            },
            false,
        ),
        (
            "notRemoteIpBlocks: a remote address inside the blocks is not",
            &["action: DENY\nrules: [{from: [{source: {notRemoteIpBlocks: [203.0.113.0/24]}}]}]"],
            Req {
                remote: Some("203.0.113.7"),
                ..REQ
            },
            true,
        ),
        (
            "ipBlocks read the peer, not the remote address",
            &["rules: [{from: [{source: {ipBlocks: [203.0.113.0/24]}}]}]"],
            Req {
                remote: Some("203.0.113.7"),
                ..REQ
            },
            false,
        ),
        (
            "DENY beats ALLOW",
            &[
                "rules: [{}]",
                "action: DENY\nrules: [{to: [{operation: {paths: [/admin*]}}]}]",
            ],
            Req {
                path: "/admin/x",
                ..REQ
            },
            false,
        ),
        (
            "ALLOW still allows what DENY does not match",
            &[
                "rules: [{}]",
                "action: DENY\nrules: [{to: [{operation: {paths: [/admin*]}}]}]",
            ],
            Req {
                path: "/public",
                ..REQ
            },
            true,
        ),
        (
            "paths exact",
            &["rules: [{to: [{operation: {paths: [/ip]}}]}]"],
            Req {
                path: "/ip/x",
                ..REQ
            },
            false,
        ),
        (
            "paths suffix",
            &["rules: [{to: [{operation: {paths: ['*.css']}}]}]"],
            Req {
                path: "/a/b.css",
                ..REQ
            },
            true,
        ),
        (
            "paths template {*} is one segment",
            &["rules: [{to: [{operation: {paths: ['/api/{*}/x']}}]}]"],
            Req {
                path: "/api/a/b/x",
                ..REQ
            },
            false,
        ),
        (
            "paths template {*}",
            &["rules: [{to: [{operation: {paths: ['/api/{*}/x']}}]}]"],
            Req {
                path: "/api/a/x",
                ..REQ
            },
            true,
        ),
        (
            "paths template {**} takes the rest",
            &["rules: [{to: [{operation: {paths: ['/api/{**}']}}]}]"],
            Req {
                path: "/api/a/b/c",
                ..REQ
            },
            true,
        ),
        (
            "notPaths",
            &["rules: [{to: [{operation: {notPaths: ['/secret*']}}]}]"],
            Req {
                path: "/secret/1",
                ..REQ
            },
            false,
        ),
        (
            "hosts ignore case",
            &["rules: [{to: [{operation: {hosts: [Example.COM]}}]}]"],
            REQ,
            true,
        ),
        (
            "hosts wildcard prefix",
            &["rules: [{to: [{operation: {hosts: ['*.example.com']}}]}]"],
            Req {
                host: "api.Example.com",
                ..REQ
            },
            true,
        ),
        (
            "hosts match the authority as sent (port included)",
            &["rules: [{to: [{operation: {hosts: [example.com]}}]}]"],
            Req {
                host: "example.com:8080",
                ..REQ
            },
            false,
        ),
        (
            "methods",
            &["rules: [{to: [{operation: {methods: [GET, HEAD]}}]}]"],
            Req {
                method: "POST",
                ..REQ
            },
            false,
        ),
        (
            "notMethods",
            &["action: DENY\nrules: [{to: [{operation: {notMethods: [GET]}}]}]"],
            Req {
                method: "DELETE",
                ..REQ
            },
            false,
        ),
        (
            "ports are the local port",
            &["rules: [{to: [{operation: {ports: ['8080']}}]}]"],
            REQ,
            true,
        ),
        (
            "notPorts",
            &["rules: [{to: [{operation: {notPorts: ['8080']}}]}]"],
            REQ,
            false,
        ),
        (
            "principals without spiffe://",
            &["rules: [{from: [{source: {principals: [cluster.local/ns/a/sa/b]}}]}]"],
            Req {
                principal: Some("spiffe://cluster.local/ns/a/sa/b"),
                ..REQ
            },
            true,
        ),
        (
            "principals: no client certificate, no match",
            &["rules: [{from: [{source: {principals: ['*']}}]}]"],
            REQ,
            false,
        ),
        (
            "principals suffix",
            &["rules: [{from: [{source: {principals: ['*/sa/b']}}]}]"],
            Req {
                principal: Some("spiffe://cluster.local/ns/a/sa/b"),
                ..REQ
            },
            true,
        ),
        (
            "notPrincipals without a certificate match",
            &["action: DENY\nrules: [{from: [{source: {notPrincipals: ['*']}}]}]"],
            REQ,
            false,
        ),
        (
            "namespaces come from the principal",
            &["rules: [{from: [{source: {namespaces: [a]}}]}]"],
            Req {
                principal: Some("spiffe://cluster.local/ns/a/sa/b"),
                ..REQ
            },
            true,
        ),
        (
            "namespaces: another namespace",
            &["rules: [{from: [{source: {namespaces: [b]}}]}]"],
            Req {
                principal: Some("spiffe://cluster.local/ns/a/sa/b"),
                ..REQ
            },
            false,
        ),
        (
            "serviceAccounts default to the policy's namespace",
            &["rules: [{from: [{source: {serviceAccounts: [b]}}]}]"],
            Req {
                principal: Some("spiffe://cluster.local/ns/ns/sa/b"),
                ..REQ
            },
            true,
        ),
        (
            "when request.headers",
            &["rules: [{when: [{key: 'request.headers[x-token]', values: ['abc*']}]}]"],
            Req {
                headers: &[("x-token", "abcdef")],
                ..REQ
            },
            true,
        ),
        (
            "when request.headers absent",
            &["rules: [{when: [{key: 'request.headers[x-token]', values: ['*']}]}]"],
            REQ,
            false,
        ),
        (
            "when notValues",
            &["rules: [{when: [{key: 'request.headers[x-env]', notValues: [prod]}]}]"],
            Req {
                headers: &[("x-env", "prod")],
                ..REQ
            },
            false,
        ),
        (
            "when source.ip",
            &["rules: [{when: [{key: source.ip, values: [10.0.0.0/24]}]}]"],
            REQ,
            true,
        ),
        (
            "when remote.ip",
            &["rules: [{when: [{key: remote.ip, values: [10.0.0.0/24]}]}]"],
            Req {
                remote: Some("8.8.8.8"),
                ..REQ
            },
            false,
        ),
        (
            "when destination.port",
            &["rules: [{when: [{key: destination.port, values: ['443']}]}]"],
            REQ,
            false,
        ),
        (
            "when connection.sni",
            &["rules: [{when: [{key: connection.sni, values: ['*.example.com']}]}]"],
            Req {
                sni: Some("a.example.com"),
                ..REQ
            },
            true,
        ),
        (
            "when source.principal and source.namespace",
            &[
                "rules: [{when: [{key: source.principal, values: [td/ns/a/sa/b]}, {key: source.namespace, values: [a]}]}]",
            ],
            Req {
                principal: Some("spiffe://td/ns/a/sa/b"),
                ..REQ
            },
            true,
        ),
        (
            "from and to must both match",
            &[
                "rules: [{from: [{source: {ipBlocks: [10.0.0.1]}}], to: [{operation: {methods: [POST]}}]}]",
            ],
            REQ,
            false,
        ),
        (
            "one of several from entries is enough",
            &[
                "rules: [{from: [{source: {ipBlocks: [1.1.1.1]}}, {source: {ipBlocks: [10.0.0.1]}}]}]",
            ],
            REQ,
            true,
        ),
        (
            "AUDIT alone allows",
            &["action: AUDIT\nrules: [{}]"],
            REQ,
            true,
        ),
        (
            "CUSTOM denies what it matches (no provider)",
            &["action: CUSTOM\nprovider: {name: ext}\nrules: [{to: [{operation: {paths: [/x]}}]}]"],
            Req { path: "/x", ..REQ },
            false,
        ),
        (
            "CUSTOM leaves the rest alone",
            &["action: CUSTOM\nprovider: {name: ext}\nrules: [{to: [{operation: {paths: [/x]}}]}]"],
            Req { path: "/y", ..REQ },
            true,
        ),
        (
            "ALLOW rule with an unsupported field is left out",
            &["rules: [{when: [{key: 'request.auth.claims[iss]', values: [x]}]}]"],
            REQ,
            false,
        ),
        (
            "DENY rule with an unsupported field matches more",
            &[
                "action: DENY\nrules: [{from: [{source: {requestPrincipals: ['*']}}], to: [{operation: {paths: [/x]}}]}]",
            ],
            Req { path: "/x", ..REQ },
            false,
        ),
        (
            "an unknown attribute leaves a DENY rule out too",
            &["action: DENY\nrules: [{when: [{key: 'destination.labels[app]', values: [x]}]}]"],
            REQ,
            true,
        ),
        (
            "a bad CIDR in DENY is dropped, the rest still denies",
            &["action: DENY\nrules: [{from: [{source: {ipBlocks: [not-an-ip, 10.0.0.1]}}]}]"],
            REQ,
            false,
        ),
        (
            "IPv6 blocks do not match IPv4 peers",
            &["rules: [{from: [{source: {ipBlocks: ['::/0']}}]}]"],
            REQ,
            false,
        ),
    ];
    for (name, policies, req, expected) in cases {
        let (engine, _) = engine(policies, false);
        assert_eq!(allowed(&engine, req, true), *expected, "{name}");
    }
}

#[test]
fn tcp_decisions_skip_http_fields_as_istio_does() {
    let cases: &[(&str, &[&str], Req, bool)] = &[
        (
            "an ALLOW rule with paths can never match a connection",
            &["rules: [{to: [{operation: {paths: [/x]}}]}]"],
            REQ,
            false,
        ),
        (
            "a DENY rule with paths denies by its other fields",
            &[
                "action: DENY\nrules: [{from: [{source: {ipBlocks: [10.0.0.1]}}], to: [{operation: {paths: [/x]}}]}]",
            ],
            REQ,
            false,
        ),
        (
            "ports apply to connections",
            &["rules: [{to: [{operation: {ports: ['8080']}}]}]"],
            REQ,
            true,
        ),
        (
            "sni applies to connections",
            &[
                "action: DENY\nrules: [{when: [{key: connection.sni, values: [blocked.example.com]}]}]",
            ],
            Req {
                sni: Some("blocked.example.com"),
                ..REQ
            },
            false,
        ),
    ];
    for (name, policies, req, expected) in cases {
        let (engine, _) = engine(policies, true);
        assert_eq!(allowed(&engine, req, false), *expected, "{name}");
    }
}

#[test]
fn problems_name_their_field() {
    let (_, problems) = engine(
        &[
            "rules: [{from: [{source: {requestPrincipals: ['*']}}]}]",
            "action: DENY\nrules: [{when: [{key: foo.bar, values: [x]}]}, {to: [{operation: {ports: ['99999'], paths: ['/a/{**}/{*}']}}]}]",
        ],
        false,
    );
    let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "spec.rules[0].from[0].source.requestPrincipals",
            "spec.rules[0].when[0].key",
            "spec.rules[1].to[0].operation.ports",
            "spec.rules[1].to[0].operation.paths",
        ]
    );
    assert!(
        problems[0].message.contains("allows nothing"),
        "{problems:?}"
    );
    assert!(problems[2].message.contains("matches more"), "{problems:?}");
}

#[test]
fn verdicts_name_the_policy_and_audit() {
    let (engine, _) = engine(
        &["action: AUDIT\nrules: [{}]", "action: DENY\nrules: [{}]"],
        false,
    );
    let attributes = Attributes {
        peer: IpAddr::from([10, 0, 0, 1]),
        remote: IpAddr::from([10, 0, 0, 1]),
        destination: SocketAddr::from(([10, 0, 0, 2], 80)),
        sni: None,
        principal: None,
        http: None,
    };
    let verdict = engine.evaluate(&attributes);
    assert_eq!(
        verdict,
        Verdict {
            allowed: false,
            decided_by: DecidedBy::Deny,
            policy: Some("ns/p1"),
            audited: Some("ns/p0"),
        }
    );
}

#[test]
fn cidrs() {
    let cases = [
        ("10.0.0.0/8", "10.255.0.1", true),
        ("10.0.0.0/8", "11.0.0.1", false),
        ("0.0.0.0/0", "1.2.3.4", true),
        ("1.2.3.4", "1.2.3.4", true),
        ("1.2.3.4/32", "1.2.3.5", false),
        ("2001:db8::/32", "2001:db8::1", true),
        ("10.0.0.0/8", "::ffff:10.0.0.1", true),
    ];
    for (block, ip, expected) in cases {
        let cidr = Cidr::parse(block).expect(block);
        assert_eq!(
            cidr.contains(ip.parse().expect("ip")),
            expected,
            "{block} {ip}"
        );
    }
    assert!(Cidr::parse("10.0.0.0/33").is_err());
    assert!(Cidr::parse("host").is_err());
}
