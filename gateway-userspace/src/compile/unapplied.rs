//! DestinationRule fields this gateway reads but does not act on: each gets a warning
//! naming the field, so that a policy is never silently ignored.

use super::Compiler;
use crate::config::{
    Diagnostic, Kind,
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

impl Compiler<'_> {
    pub(super) fn check_unapplied_destination_rule_fields(&mut self) {
        for rule in &self.index.resources.destination_rules {
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
                self.sink.push(
                    Diagnostic::warning(format!("not applied by this gateway yet: {what}"))
                        .at(rule.location.clone())
                        .object(&rule.resource.object_ref())
                        .field(field),
                );
            }
        }
    }
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
