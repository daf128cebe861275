//! DestinationRule and VirtualService fields this gateway reads but does not act on: each
//! gets a warning naming the field, so that a policy is never silently ignored.

use super::{index::Index, sink::Sink};
use crate::config::{
    Diagnostic, Kind,
    resources::VirtualServiceSpec,
    resources::istio::{
        ConnectionPoolSettings, LoadBalancerSettings, OutlierDetection, SimpleLoadBalancer,
        TrafficPolicy,
    },
};

/// One traffic policy's parts, wherever it sits (rule, port level, subset).
struct PolicyParts<'p> {
    load_balancer: Option<&'p LoadBalancerSettings>,
    connection_pool: Option<&'p ConnectionPoolSettings>,
    outlier_detection: Option<&'p OutlierDetection>,
}

pub(super) fn check_unapplied_destination_rule_fields(ix: &Index<'_>, sink: &mut Sink) {
    for rule in &ix.resources.destination_rules {
        let mut found: Vec<(String, &'static str)> = Vec::new();
        let mut visit = |prefix: String, policy: Option<&TrafficPolicy>| {
            let Some(policy) = policy else {
                return;
            };
            unapplied(
                &prefix,
                &PolicyParts {
                    load_balancer: policy.load_balancer.as_ref(),
                    connection_pool: policy.connection_pool.as_ref(),
                    outlier_detection: policy.outlier_detection.as_ref(),
                },
                &mut found,
            );
            for (index, port) in policy.port_level_settings.iter().enumerate() {
                unapplied(
                    &format!("{prefix}.portLevelSettings[{index}]"),
                    &PolicyParts {
                        load_balancer: port.load_balancer.as_ref(),
                        connection_pool: port.connection_pool.as_ref(),
                        outlier_detection: port.outlier_detection.as_ref(),
                    },
                    &mut found,
                );
            }
        };
        let spec = &rule.resource.spec;
        visit(
            "spec.trafficPolicy".to_owned(),
            spec.traffic_policy.as_ref(),
        );
        for (index, subset) in spec.subsets.iter().enumerate() {
            visit(
                format!("spec.subsets[{index}].trafficPolicy"),
                subset.traffic_policy.as_ref(),
            );
        }
        for (field, what) in found {
            sink.push(
                Diagnostic::warning(format!("not applied by this gateway yet: {what}"))
                    .at(rule.location.clone())
                    .object(&rule.resource.object_ref())
                    .field(field),
            );
        }
    }
}

pub(super) fn check_unapplied_virtual_service_fields(ix: &Index<'_>, sink: &mut Sink) {
    for vs in &ix.resources.virtual_services {
        for (field, what) in virtual_service_unapplied(&vs.resource.spec) {
            sink.push(
                Diagnostic::warning(format!("ignored: {what}"))
                    .at(vs.location.clone())
                    .object(&vs.resource.object_ref())
                    .field(field),
            );
        }
    }
}

/// What a gateway ignores in a VirtualService, as Istio's does: the sidecar-only
/// conditions of `tls` and `tcp` matches (Istio's gateway checks only `port` and
/// `gateways` there), and the fault kinds Istio cannot express in Envoy.
fn virtual_service_unapplied(spec: &VirtualServiceSpec) -> Vec<(String, &'static str)> {
    const SIDECAR_ONLY: &str = "a gateway matches `tls` and `tcp` routes by port, gateways and SNI only (sidecars apply this condition)";
    let mut found = Vec::new();
    // Keys a `tls` or `tcp` route's type has no place for (kept by its `Lenient`).
    let tls = spec.tls.iter().enumerate().map(|(i, r)| {
        (
            format!("spec.tls[{i}]"),
            r.ignored_at("").collect::<Vec<_>>(),
        )
    });
    let tcp = spec.tcp.iter().enumerate().map(|(i, r)| {
        (
            format!("spec.tcp[{i}]"),
            r.ignored_at("").collect::<Vec<_>>(),
        )
    });
    for (route, ignored) in tls.chain(tcp) {
        for path in ignored {
            found.push((format!("{route}{path}"), "not a field this gateway knows"));
        }
    }
    let mut l4_match = |field: String,
                        source_labels: bool,
                        source_namespace: bool,
                        destination_subnets: bool,
                        source_subnet: bool| {
        for (set, name) in [
            (source_labels, "sourceLabels"),
            (source_namespace, "sourceNamespace"),
            (destination_subnets, "destinationSubnets"),
            (source_subnet, "sourceSubnet"),
        ] {
            if set {
                found.push((format!("{field}.{name}"), SIDECAR_ONLY));
            }
        }
    };
    for (r_index, route) in spec.tls.iter().enumerate() {
        let Some(route) = route.valid() else { continue };
        for (m_index, m) in route.matches.iter().enumerate() {
            l4_match(
                format!("spec.tls[{r_index}].match[{m_index}]"),
                !m.source_labels.is_empty(),
                m.source_namespace.is_some(),
                !m.destination_subnets.is_empty(),
                false,
            );
        }
    }
    for (r_index, route) in spec.tcp.iter().enumerate() {
        let Some(route) = route.valid() else { continue };
        for (m_index, m) in route.matches.iter().enumerate() {
            l4_match(
                format!("spec.tcp[{r_index}].match[{m_index}]"),
                !m.source_labels.is_empty(),
                m.source_namespace.is_some(),
                !m.destination_subnets.is_empty(),
                m.source_subnet.is_some(),
            );
        }
    }
    for (r_index, route) in spec.http.iter().enumerate() {
        let Some(fault) = route.fault.as_ref().and_then(|f| f.valid()) else {
            continue;
        };
        if fault
            .delay
            .as_ref()
            .is_some_and(|d| d.exponential_delay.is_some())
        {
            found.push((
                format!("spec.http[{r_index}].fault.delay.exponentialDelay"),
                "exponential delays are not implemented (Istio drops them too); only fixedDelay is injected",
            ));
        }
        if fault
            .abort
            .as_ref()
            .is_some_and(|a| a.http2_error.is_some())
        {
            found.push((
                format!("spec.http[{r_index}].fault.abort.http2Error"),
                "HTTP/2 error aborts are not implemented (Istio drops them too); only httpStatus and grpcStatus abort",
            ));
        }
    }
    found
}

fn unapplied(prefix: &str, policy: &PolicyParts, found: &mut Vec<(String, &'static str)>) {
    let mut note =
        |field: &str, what: &'static str| found.push((format!("{prefix}.{field}"), what));
    if let Some(lb) = policy.load_balancer
        && lb.simple == Some(SimpleLoadBalancer::Passthrough)
    {
        note(
            "loadBalancer.simple",
            "PASSTHROUGH balances over the Service's endpoints by least request",
        );
    }
    if let Some(pool) = policy.connection_pool {
        if let Some(tcp) = &pool.tcp {
            if tcp.max_connection_duration.is_some() {
                note(
                    "connectionPool.tcp.maxConnectionDuration",
                    "upstream connections are not closed by age",
                );
            }
            if tcp.idle_timeout.is_some() {
                note(
                    "connectionPool.tcp.idleTimeout",
                    "upstream connections idle by `http.idleTimeout` only",
                );
            }
        }
        if let Some(http) = &pool.http {
            if http.h2_upgrade_policy.is_some() {
                note(
                    "connectionPool.http.h2UpgradePolicy",
                    "the upstream protocol comes from the Service port (appProtocol or name)",
                );
            }
            if http.use_client_protocol.is_some() {
                note(
                    "connectionPool.http.useClientProtocol",
                    "the upstream protocol comes from the Service port (appProtocol or name)",
                );
            }
            if http.max_concurrent_streams.is_some() {
                note(
                    "connectionPool.http.maxConcurrentStreams",
                    "HTTP/2 upstreams take the streams their SETTINGS allow",
                );
            }
        }
    }
    if let Some(outlier) = policy.outlier_detection {
        if outlier.consecutive_local_origin_failures.is_some() {
            note(
                "outlierDetection.consecutiveLocalOriginFailures",
                "connect failures count with 5xx answers",
            );
        }
        if outlier.split_external_local_origin_errors.is_some() {
            note(
                "outlierDetection.splitExternalLocalOriginErrors",
                "connect failures count with 5xx answers",
            );
        }
        if outlier.interval.is_some() {
            note(
                "outlierDetection.interval",
                "an endpoint is ejected as soon as it reaches the error count, not at the next sweep",
            );
        }
        if outlier.min_health_percent.is_some() {
            note(
                "outlierDetection.minHealthPercent",
                "ejection follows maxEjectionPercent only",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(yaml: &str) -> Vec<String> {
        let spec: VirtualServiceSpec = serde_yaml::from_str(yaml).expect("a spec");
        virtual_service_unapplied(&spec)
            .into_iter()
            .map(|(field, _)| field)
            .collect()
    }

    #[test]
    fn sidecar_only_l4_conditions_and_unexpressible_faults_are_named() {
        let cases: &[(&str, &[&str])] = &[
            (
                "{tls: [{match: [{sniHosts: [a.example], port: 443}]}]}",
                &[],
            ),
            (
                "{tls: [{match: [{sniHosts: [a.example], sourceLabels: {app: x}, sourceNamespace: ns, destinationSubnets: [10.0.0.0/8]}]}]}",
                &[
                    "spec.tls[0].match[0].sourceLabels",
                    "spec.tls[0].match[0].sourceNamespace",
                    "spec.tls[0].match[0].destinationSubnets",
                ],
            ),
            (
                "{tcp: [{match: [{port: 31400}, {sourceSubnet: 10.0.0.0/8}]}]}",
                &["spec.tcp[0].match[1].sourceSubnet"],
            ),
            (
                "{http: [{fault: {delay: {exponentialDelay: 1s}, abort: {http2Error: REFUSED_STREAM}}}]}",
                &[
                    "spec.http[0].fault.delay.exponentialDelay",
                    "spec.http[0].fault.abort.http2Error",
                ],
            ),
            (
                "{http: [{fault: {delay: {fixedDelay: 1s}, abort: {httpStatus: 503}}}]}",
                &[],
            ),
        ];
        for (yaml, expected) in cases {
            assert_eq!(fields(yaml), *expected, "{yaml}");
        }
    }
}
