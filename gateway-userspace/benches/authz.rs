//! AuthorizationPolicy evaluation cost per request at 1 000 rules (the goal: ≤ 1 µs),
//! in the worst case for each shape: the request matches no rule (or only the last), so
//! every rule is evaluated.
//!
//! `cargo bench -p gateway-userspace --bench authz` (or `cargo xtask bench authz`).

use std::{
    hint::black_box,
    net::{IpAddr, SocketAddr},
};

use criterion::{Criterion, criterion_group, criterion_main};
use gateway::{
    authz::{Attributes, Engine, HttpAttributes},
    config::resources::security::AuthorizationPolicy,
};
use http::HeaderMap;

const RULES: usize = 1000;

/// One policy of `RULES` rules, each written by `rule(i)`.
fn engine(action: &str, rule: impl Fn(usize) -> String, extra: &[&str]) -> Engine {
    let mut yaml = format!(
        "metadata: {{name: bench, namespace: istio-system}}\nspec:\n  action: {action}\n  rules:\n"
    );
    for i in 0..RULES {
        yaml.push_str(&format!("  - {}\n", rule(i)));
    }
    let mut engine = Engine::default();
    let mut problems = Vec::new();
    let policy: AuthorizationPolicy = serde_yaml::from_str(&yaml).expect("generated policy");
    engine.add(&policy, false, false, &mut problems);
    for spec in extra {
        let policy: AuthorizationPolicy = serde_yaml::from_str(&format!(
            "metadata: {{name: extra, namespace: istio-system}}\nspec: {spec}"
        ))
        .expect("extra policy");
        engine.add(&policy, false, false, &mut problems);
    }
    assert!(problems.is_empty(), "{problems:?}");
    engine
}

fn bench(c: &mut Criterion) {
    let mut headers = HeaderMap::new();
    headers.insert("user-agent", "curl/8".parse().expect("header"));
    headers.insert("x-tenant", "tenant-5000".parse().expect("header"));
    let peer: IpAddr = "10.200.3.232".parse().expect("ip");
    let request = Attributes {
        peer,
        remote: peer,
        destination: SocketAddr::from(([10, 0, 0, 1], 8080)),
        sni: None,
        principal: Some("spiffe://cluster.local/ns/default/sa/web"),
        http: Some(HttpAttributes {
            host: "api.example.com",
            method: "GET",
            path: "/api/v1/users/42",
            headers: &headers,
        }),
    };
    let cases = [
        (
            "1000 ALLOW ipBlocks rules, the last matches",
            // 10.200.3.232 is the address of rule 999.
            engine(
                "ALLOW",
                |i| {
                    format!(
                        "{{from: [{{source: {{ipBlocks: [10.200.{}.{}/32]}}}}]}}",
                        i / 250,
                        i % 250 + 1
                    )
                },
                &[],
            ),
            true,
        ),
        (
            "1000 DENY path prefix rules, none matches",
            engine(
                "DENY",
                |i| format!("{{to: [{{operation: {{paths: [/admin-{i}/*]}}}}]}}"),
                &[],
            ),
            true,
        ),
        (
            "1000 ALLOW from+to+when rules, none matches (default deny)",
            engine(
                "ALLOW",
                |i| {
                    format!(
                        "{{from: [{{source: {{namespaces: [ns-{i}]}}}}], to: [{{operation: {{hosts: [svc-{i}.example.com], methods: [GET], paths: ['/api/{{*}}/users/{{**}}']}}}}], when: [{{key: 'request.headers[x-tenant]', values: [tenant-{i}]}}]}}"
                    )
                },
                &[],
            ),
            false,
        ),
    ];
    let mut group = c.benchmark_group("authz");
    for (name, engine, allowed) in &cases {
        assert_eq!(engine.evaluate(&request).allowed, *allowed, "{name}");
        group.bench_function(*name, |b| {
            b.iter(|| black_box(engine.evaluate(black_box(&request))).allowed)
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
