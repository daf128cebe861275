use std::path::Path;

use super::*;
use crate::{
    compile::{Identity, compile},
    config::{self, Diagnostics},
    metrics::Metrics,
    snapshot::DnsTarget,
};

/// An egress gateway for `api.example.com` (HTTP on 80) routed to the ServiceEntry host,
/// with `resolution` and `endpoints` as given.
fn egress(resolution: &str, endpoints: &str) -> Snapshot {
    egress_with_diagnostics(resolution, endpoints).0
}

fn egress_with_diagnostics(resolution: &str, endpoints: &str) -> (Snapshot, Diagnostics) {
    let yaml = format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: api, namespace: default}}
spec:
  hosts: [api.example.com]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  location: MESH_EXTERNAL
  resolution: {resolution}
  {endpoints}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: egress, namespace: istio-system}}
spec:
  selector: {{istio: egressgateway}}
  servers:
  - port: {{number: 80, name: http, protocol: HTTP}}
    hosts: [api.example.com]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: api, namespace: istio-system}}
spec:
  hosts: [api.example.com]
  gateways: [egress, mesh]
  http:
  - route:
    - destination: {{host: api.example.com, port: {{number: 80}}}}
"#
    );
    let (resources, mut diagnostics) = config::load_text(Path::new("egress.yaml"), &yaml);
    assert_eq!(diagnostics.errors().count(), 0, "{diagnostics:?}");
    let identity = Identity {
        labels: [("istio".to_owned(), "egressgateway".to_owned())].into(),
        ..Identity::default()
    };
    let (snapshot, more) = compile(&resources, &identity);
    diagnostics.extend(more);
    (snapshot, diagnostics)
}

fn cluster_source(snapshot: &Snapshot) -> &EndpointSource {
    let cluster = snapshot
        .clusters
        .iter()
        .find(|c| c.name == "outbound|80||api.example.com");
    &cluster.expect("the ServiceEntry's cluster").endpoint_source
}

fn ip(text: &str) -> IpAddr {
    text.parse().expect("an IP address")
}

fn sockets(snapshot: &Snapshot) -> Vec<String> {
    let cluster = &snapshot.clusters[0];
    snapshot
        .endpoints_of(cluster)
        .iter()
        .map(ToString::to_string)
        .collect()
}

#[test]
fn each_resolution_gives_its_endpoint_source() {
    let strict = egress("DNS", "");
    assert_eq!(
        cluster_source(&strict),
        &EndpointSource::Dns {
            targets: vec![DnsTarget {
                name: "api.example.com".to_owned(),
                port: 80
            }],
            pick: DnsPick::All,
            fixed: vec![],
        }
    );
    assert_eq!(
        wanted_names(&strict),
        BTreeSet::from(["api.example.com".to_owned()])
    );
    let logical = egress("DNS_ROUND_ROBIN", "");
    assert!(matches!(
        cluster_source(&logical),
        EndpointSource::Dns {
            pick: DnsPick::First,
            ..
        }
    ));
    // Endpoints that are names are resolved, on their own port; IPs are served as written.
    let named = egress(
        "DNS",
        "endpoints: [{address: Origin.Example.NET., ports: {http: 8080}}, {address: 192.0.2.7}]",
    );
    assert_eq!(
        cluster_source(&named),
        &EndpointSource::Dns {
            targets: vec![DnsTarget {
                name: "origin.example.net".to_owned(),
                port: 8080
            }],
            pick: DnsPick::All,
            fixed: vec!["192.0.2.7:80".parse().expect("socket")],
        }
    );
    // STATIC serves the written addresses only.
    let fixed = egress("STATIC", "endpoints: [{address: 192.0.2.9}]");
    assert_eq!(cluster_source(&fixed), &EndpointSource::Fixed);
    assert_eq!(sockets(&fixed), ["192.0.2.9:80"]);
    // NONE at a gateway: Istio serves the entry's endpoints (EDS), and looks nothing up.
    let (none, diagnostics) = egress_with_diagnostics("NONE", "");
    assert_eq!(cluster_source(&none), &EndpointSource::Fixed);
    assert!(sockets(&none).is_empty());
    assert!(
        diagnostics
            .warnings()
            .any(|w| w.to_string().contains("set resolution: DNS")),
        "{diagnostics:?}"
    );
    // `addresses` are VIPs for sidecars: a DNS entry resolves its host all the same.
    let with_vip = egress("DNS", "addresses: [240.240.0.1]");
    assert_eq!(wanted_names(&with_vip), wanted_names(&strict));
    assert!(sockets(&with_vip).is_empty());
}

#[test]
fn answers_become_endpoints_as_envoy_picks_them() {
    let answers = DnsAnswers::default();
    assert!(answers.store("api.example.com", vec![ip("192.0.2.2"), ip("192.0.2.1")]));
    assert!(!answers.store("api.example.com", vec![ip("192.0.2.2"), ip("192.0.2.1")]));

    let strict = egress("DNS", "");
    assert!(sockets(&strict).is_empty());
    let resolved = apply_answers(&strict, &answers).expect("the endpoints change");
    assert_eq!(sockets(&resolved), ["192.0.2.1:80", "192.0.2.2:80"]);
    // The routes are shared, not recompiled; the same answers change nothing more.
    assert!(Arc::ptr_eq(&resolved.listeners, &strict.listeners));
    assert!(apply_answers(&resolved, &answers).is_none());

    // LOGICAL_DNS: the first address of the answer, in the server's order.
    let logical = apply_answers(&egress("DNS_ROUND_ROBIN", ""), &answers).expect("changed");
    assert_eq!(sockets(&logical), ["192.0.2.2:80"]);
}

fn resolver(answers: Arc<DnsAnswers>, metrics: Arc<Metrics>) -> Resolver {
    Resolver::with_config(
        hickory_resolver::config::ResolverConfig::default(),
        ResolverOpts::default(),
        answers,
        metrics,
    )
    .expect("a resolver")
}

#[tokio::test]
async fn a_failed_lookup_keeps_the_last_answer_and_is_counted() {
    let answers = Arc::new(DnsAnswers::default());
    let metrics = Arc::new(Metrics::new(Default::default()));
    let mut resolver = resolver(answers.clone(), metrics.clone());
    let name = "api.example.com";
    resolver.want(&BTreeSet::from([name.to_owned()]));
    let found = Outcome::Found(vec![ip("192.0.2.1")], Duration::from_secs(30));
    assert!(resolver.record(name, found));
    assert!(!resolver.record(name, Outcome::Failed("timed out".to_owned())));
    assert_eq!(answers.get(name).as_deref(), Some(&[ip("192.0.2.1")][..]));
    // A name that has no address any more is no failure: its endpoints go.
    assert!(resolver.record(name, Outcome::Empty));
    assert_eq!(answers.get(name).as_deref(), Some(&[][..]));
    let count = |result| {
        metrics
            .dns_resolutions
            .get_or_create(&DnsLabels {
                host: name.to_owned(),
                result,
            })
            .get()
    };
    assert_eq!(
        (count("success"), count("failure"), count("empty")),
        (1, 1, 1)
    );
    // A name no snapshot wants is forgotten.
    resolver.want(&BTreeSet::new());
    assert!(answers.get(name).is_none());
}
