use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;

use super::*;
use crate::{
    authz::{Attributes, HttpAttributes},
    config::resources::security::AuthorizationPolicy,
};

/// Both compiles of YAML specs (`namespace: ns`), as `compile/authz.rs` builds them.
fn listener(policies: &[&str]) -> ListenerAuthz {
    let mut authz = ListenerAuthz::default();
    let mut problems = Vec::new();
    for (index, spec) in policies.iter().enumerate() {
        let indented: String = spec.lines().map(|l| format!("  {l}\n")).collect();
        let policy: AuthorizationPolicy = serde_yaml::from_str(&format!(
            "metadata: {{name: p{index}, namespace: ns}}\nspec:\n{indented}"
        ))
        .expect("test policy parses");
        authz.http.add(&policy, false, false, &mut problems);
        authz.tcp.add(&policy, false, true, &mut problems);
        authz.policies.push(format!("ns/p{index}"));
    }
    authz
}

fn block(text: &str) -> IpBlock {
    let (address, length) = text.split_once('/').expect("address/length");
    IpBlock {
        address: address.parse().expect("address"),
        length: length.parse().expect("length"),
    }
}

fn blocks(texts: &[&str]) -> Vec<IpBlock> {
    let mut blocks: Vec<IpBlock> = texts.iter().map(|t| block(t)).collect();
    blocks.sort_unstable();
    blocks
}

const DENY_10_8: &str =
    "action: DENY\nrules: [{from: [{source: {ipBlocks: [10.0.0.0/8, 2001:db8::/32]}}]}]";

#[test]
fn what_the_kernel_may_decide_from_the_source_alone() {
    let cases: &[(&str, &[&str], Option<SourceRules>)] = &[
        (
            "an IP deny",
            &[DENY_10_8],
            Some(SourceRules {
                deny: blocks(&["10.0.0.0/8", "2001:db8::/32"]),
                allow_only: None,
            }),
        ),
        (
            "a deny on this port by to.ports and when destination.port",
            &[
                "action: DENY\nrules: [{from: [{source: {ipBlocks: [10.1.2.3]}}], to: [{operation: {ports: ['443']}}], when: [{key: destination.port, values: ['443']}]}]",
            ],
            Some(SourceRules {
                deny: blocks(&["10.1.2.3/32"]),
                allow_only: None,
            }),
        ),
        (
            "a deny on another port is no rule here",
            &[
                "action: DENY\nrules: [{from: [{source: {ipBlocks: [10.1.2.3]}}], to: [{operation: {ports: ['8443']}}]}]",
            ],
            None,
        ),
        (
            "an IP allow list denies every other source",
            &["action: ALLOW\nrules: [{from: [{source: {ipBlocks: [192.168.0.0/16]}}]}]"],
            Some(SourceRules {
                deny: vec![],
                allow_only: Some(blocks(&["192.168.0.0/16"])),
            }),
        ),
        (
            "an ALLOW policy without rules denies everything",
            &["action: ALLOW"],
            Some(SourceRules {
                deny: vec![],
                allow_only: Some(vec![]),
            }),
        ),
        (
            "a deny with paths stays in userspace",
            &[
                "action: DENY\nrules: [{from: [{source: {ipBlocks: [10.0.0.0/8]}}], to: [{operation: {paths: [/admin]}}]}]",
            ],
            None,
        ),
        (
            "a deny with a header condition stays in userspace",
            &[
                "action: DENY\nrules: [{from: [{source: {ipBlocks: [10.0.0.0/8]}}], when: [{key: 'request.headers[x-a]', values: [b]}]}]",
            ],
            None,
        ),
        (
            "remoteIpBlocks (x-forwarded-for) stay in userspace",
            &["action: DENY\nrules: [{from: [{source: {remoteIpBlocks: [10.0.0.0/8]}}]}]"],
            None,
        ),
        (
            "notIpBlocks and principals stay in userspace",
            &[
                "action: DENY\nrules: [{from: [{source: {notIpBlocks: [10.0.0.0/8]}}, {source: {principals: [a/b], ipBlocks: [10.0.0.0/8]}}]}]",
            ],
            None,
        ),
        (
            "an ALLOW rule with a path keeps the allow list in userspace, not the deny",
            &[
                DENY_10_8,
                "action: ALLOW\nrules: [{from: [{source: {ipBlocks: [192.168.0.0/16]}}]}, {to: [{operation: {paths: [/public]}}]}]",
            ],
            None,
        ),
        (
            "an audit policy keeps the port in userspace",
            &[DENY_10_8, "action: AUDIT\nrules: [{}]"],
            None,
        ),
    ];
    for (what, policies, expected) in cases {
        assert_eq!(listener(policies).source_rules(443), *expected, "{what}");
    }
}

/// Whether any connection or request from `source` on `port` is allowed, over the shapes
/// a connection can take (TCP with or without SNI and a client certificate, HTTP requests).
fn anything_allowed(authz: &ListenerAuthz, source: IpAddr, port: u16) -> bool {
    let headers = HeaderMap::new();
    let destination = SocketAddr::from(([10, 9, 9, 9], port));
    let base = Attributes {
        peer: source,
        remote: source,
        destination,
        sni: None,
        principal: None,
        http: None,
    };
    let shapes = [
        base,
        Attributes {
            sni: Some("a.example.com"),
            principal: Some("spiffe://cluster.local/ns/a/sa/b"),
            ..base
        },
    ];
    let requests = ["/", "/admin", "/public"].map(|path| HttpAttributes {
        host: "a.example.com",
        method: "GET",
        path,
        headers: &headers,
    });
    shapes
        .iter()
        .any(|a| authz.tcp.evaluate(a).allowed || authz.http.evaluate(a).allowed)
        || requests.iter().any(|&r| {
            authz
                .http
                .evaluate(&Attributes {
                    http: Some(r),
                    ..base
                })
                .allowed
        })
}

/// The kernel drops only what userspace denies: for each policy set and source, a source
/// the rules drop (as the kernel's longest-prefix lookup reads them) is one no request
/// from it is allowed.
#[test]
fn what_the_kernel_drops_userspace_denies() {
    let sets: &[&[&str]] = &[
        &[DENY_10_8],
        &["action: ALLOW\nrules: [{from: [{source: {ipBlocks: [10.1.0.0/16, '::1']}}]}]"],
        &[
            DENY_10_8,
            "action: ALLOW\nrules: [{from: [{source: {ipBlocks: [10.1.0.0/16]}}]}]",
        ],
        &[
            "action: DENY\nrules: [{from: [{source: {ipBlocks: [10.1.2.0/24]}}]}]",
            "action: ALLOW\nrules: [{from: [{source: {ipBlocks: [10.0.0.0/8]}}], to: [{operation: {ports: ['443']}}]}]",
        ],
        &["action: DENY\nrules: [{to: [{operation: {ports: ['443']}}]}]"],
        &["action: ALLOW\nrules: [{when: [{key: destination.port, values: ['8443']}]}]"],
    ];
    let sources = [
        "10.1.2.3",
        "10.1.9.9",
        "10.200.0.1",
        "192.168.1.1",
        "::1",
        "2001:db8::5",
        "fd00::1",
    ];
    for policies in sets {
        let authz = listener(policies);
        for port in [443, 8443] {
            let Some(rules) = authz.source_rules(port) else {
                continue;
            };
            for source in sources {
                let ip: IpAddr = source.parse().expect("ip");
                let dropped = kernel_drops(&rules, ip);
                if dropped {
                    assert!(
                        !anything_allowed(&authz, ip, port),
                        "{policies:?} port {port}: the kernel would drop {source}, which userspace allows"
                    );
                }
            }
        }
    }
}

/// The kernel's lookup (ebpf/ip_rules.rs writes it so): the longest block naming the
/// source decides, deny blocks before allow blocks they cover; else the default.
fn kernel_drops(rules: &SourceRules, source: IpAddr) -> bool {
    let host = IpBlock {
        address: source,
        length: if source.is_ipv4() { 32 } else { 128 },
    };
    let allow = rules.allow_only.as_deref().unwrap_or_default();
    let longest = |list: &[IpBlock]| {
        list.iter()
            .filter(|b| b.covers(&host))
            .map(|b| b.length)
            .max()
    };
    let deny = longest(&rules.deny);
    let pass = longest(allow).filter(|_| {
        !allow
            .iter()
            .any(|a| a.covers(&host) && rules.deny.iter().any(|d| d.covers(a)))
    });
    match (deny, pass) {
        (Some(_), None) => true,
        (None, Some(_)) => false,
        (Some(d), Some(p)) => d >= p,
        (None, None) => rules.allow_only.is_some(),
    }
}
