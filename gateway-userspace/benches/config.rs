//! Configuration at scale: compiling 10 000 VirtualServices with 100 000 routes, and
//! host + path lookup in route tables of 10 to 100 000 routes (it should stay flat: the
//! host is a hash probe, and a host holds only its own routes).
//!
//! `cargo bench -p gateway-userspace --bench config` (or `cargo xtask bench config`).

use std::{hint::black_box, path::Path};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use gateway::{
    compile::{self, Identity},
    config::{self, Resources},
    route_table::RequestInfo,
    snapshot::Snapshot,
};

/// Routes per VirtualService in the generated configurations.
const ROUTES_PER_VS: usize = 10;
/// Services the generated routes spread over (each with one ready endpoint).
const SERVICES: usize = 100;

/// A Gateway on port 80 for `*.bench.example`, `SERVICES` Services with endpoints, and
/// `virtual_services` VirtualServices of `ROUTES_PER_VS` prefix routes each, one host each.
fn generated_config(virtual_services: usize) -> String {
    let mut yaml = String::from(
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: gw, namespace: istio-system}\nspec:\n  selector: {istio: ingressgateway}\n  servers:\n  - port: {number: 80, name: http, protocol: HTTP}\n    hosts: [\"*.bench.example\"]\n",
    );
    for s in 0..SERVICES {
        yaml.push_str(&format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: svc-{s}, namespace: istio-system}}\nspec: {{ports: [{{name: http, port: 80}}]}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: svc-{s}-1, namespace: istio-system, labels: {{kubernetes.io/service-name: svc-{s}}}}}\nendpoints: [{{addresses: [10.0.{}.{}]}}]\nports: [{{name: http, port: 8080}}]\n",
            s / 250,
            s % 250 + 1
        ));
    }
    for v in 0..virtual_services {
        yaml.push_str(&format!(
            "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: vs-{v}, namespace: istio-system}}\nspec:\n  hosts: [host-{v}.bench.example]\n  gateways: [gw]\n  http:\n"
        ));
        for r in 0..ROUTES_PER_VS {
            yaml.push_str(&format!(
                "  - match: [{{uri: {{prefix: /api/v{r}/}}}}]\n    route: [{{destination: {{host: svc-{}, port: {{number: 80}}}}}}]\n",
                (v + r) % SERVICES
            ));
        }
    }
    yaml
}

fn load(virtual_services: usize) -> Resources {
    let (resources, diagnostics) =
        config::load_text(Path::new("bench.yaml"), &generated_config(virtual_services));
    assert!(!diagnostics.has_errors(), "{diagnostics}");
    resources
}

fn compiled(virtual_services: usize) -> Snapshot {
    let (snapshot, diagnostics) = compile::compile(&load(virtual_services), &Identity::default());
    assert!(!diagnostics.has_errors(), "{diagnostics}");
    snapshot
}

fn compile_10k_virtual_services(c: &mut Criterion) {
    let resources = load(10_000);
    let mut group = c.benchmark_group("compile");
    group.sample_size(10);
    group.bench_function("10000 VirtualServices, 100000 routes", |b| {
        b.iter(|| black_box(compile::compile(&resources, &Identity::default())))
    });
    group.finish();
}

fn lookup_by_table_size(c: &mut Criterion) {
    let headers = http::HeaderMap::new();
    let mut group = c.benchmark_group("lookup");
    for routes in [10, 1_000, 10_000, 100_000] {
        let virtual_services = routes / ROUTES_PER_VS;
        let snapshot = compiled(virtual_services);
        let table = &snapshot.listeners[0].routes;
        // A host in the middle of the table, the last of its routes.
        let host = format!("host-{}.bench.example", virtual_services / 2);
        let path = format!("/api/v{}/items/42", ROUTES_PER_VS - 1);
        let request = RequestInfo {
            authority: &host,
            path: &path,
            query: None,
            method: "GET",
            scheme: "http",
            port: 80,
            headers: &headers,
        };
        assert!(
            table.find(&request).is_some(),
            "the benchmark request must route"
        );
        group.bench_with_input(
            BenchmarkId::new("host+path", routes),
            &request,
            |b, request| b.iter(|| black_box(table.find(black_box(request)).is_some())),
        );
    }
    group.finish();
}

criterion_group!(benches, lookup_by_table_size, compile_10k_virtual_services);
criterion_main!(benches);
