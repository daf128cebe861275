//! The example configurations in `config/examples/` (Istio's ingress task in both
//! flavours, the seed documents' my-app, a gateway outside Kubernetes) compile to the
//! route tables asserted here, with no errors.

use std::path::PathBuf;

use super::{Identity, compile};
use crate::{config, snapshot::RouteAction};

/// `port→bind host [match] → cluster:endpoints` lines, in match order.
fn rendered(example: &str) -> Vec<String> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../config/examples")
        .join(example);
    let (resources, mut diagnostics) = match config::load(&[dir]) {
        Ok(loaded) => loaded,
        Err(e) => panic!("{example}: {e}"),
    };
    let (snapshot, more) = compile(&resources, &Identity::default());
    diagnostics.extend(more);
    assert!(!diagnostics.has_errors(), "{example}: {diagnostics}");
    let mut lines = Vec::new();
    for listener in snapshot.listeners.iter() {
        for vhost in &listener.routes.virtual_hosts {
            for route in vhost.routes.iter() {
                let matches = serde_json::to_string(&route.matches).unwrap_or_default();
                let action = match &route.action {
                    RouteAction::Forward(forward) => forward
                        .clusters
                        .iter()
                        .map(|c| {
                            let endpoints: Vec<String> = snapshot
                                .endpoints_of(&c.cluster)
                                .iter()
                                .map(ToString::to_string)
                                .collect();
                            format!("{}={}:{}", c.weight, c.cluster.name, endpoints.join(","))
                        })
                        .collect::<Vec<_>>()
                        .join(" "),
                    other => format!("{other:?}"),
                };
                lines.push(format!(
                    "{}→{} {} {matches} → {action}",
                    listener.port, listener.bind_port, vhost.host
                ));
            }
        }
    }
    lines
}

#[test]
fn examples_compile_to_their_route_tables() {
    let cases: [(&str, &[&str]); 4] = [
        (
            "httpbin",
            &[
                r#"80→8080 httpbin.example.com [{"path":{"prefix":"/status"}},{"path":{"prefix":"/delay"}},{"path":{"prefix":"/headers"}},{"path":{"prefix":"/get"}}] → 100=outbound|8000||httpbin.default.svc.cluster.local:127.0.0.1:18000"#,
            ],
        ),
        (
            "gateway-api-httpbin",
            &[
                r#"80→8080 httpbin.example.com [{"path":{"pathPrefix":"/status"}}] → 1=outbound|8000||httpbin.default.svc.cluster.local:127.0.0.1:18000"#,
                r#"80→8080 httpbin.example.com [{"path":{"pathPrefix":"/delay"}}] → 1=outbound|8000||httpbin.default.svc.cluster.local:127.0.0.1:18000"#,
            ],
        ),
        (
            "my-app",
            &[
                r#"80→80 myapp.example.com [{"path":{"prefix":"/"}}] → 100=outbound|80||my-app-service.default.svc.cluster.local:10.244.0.11:8080"#,
            ],
        ),
        (
            "outside-kubernetes",
            &[
                r#"8080→8080 shop.example.com [{"path":{"prefix":"/shop"}}] → 90=outbound|80|v1|shop.internal:127.0.0.1:18000 10=outbound|80|v2|shop.internal:127.0.0.2:18000"#,
                r#"8080→8080 shop.example.com [] → 100=outbound|80|v1|shop.internal:127.0.0.1:18000"#,
            ],
        ),
    ];
    for (example, want) in cases {
        assert_eq!(rendered(example), want, "{example}");
    }
}
