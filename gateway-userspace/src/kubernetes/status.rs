//! From each compile's report to the status the writer puts on Gateway API objects: the
//! report's conditions, plus what only the cluster knows, the Gateway's addresses (our
//! Service's load-balancer ingress, else its external IPs, else the host IPs of the ready
//! gateway pods, as Istio does; none at all is `Programmed=False AddressNotAssigned`),
//! except for a Gateway whose `spec.addresses` name where it is served: those are its.

use std::{collections::BTreeMap, sync::Arc};

use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Client,
    api::{ApiResource, ListParams},
};
use tokio::sync::watch;
use tracing::{debug, warn};

use super::{
    status_writer::{
        Condition, ConditionStatus, Desired, DesiredStatus, GATEWAY_API_GROUP, GatewayAddress,
        GatewayStatus, ListenerStatus, ParentRef, RouteGroupKind, RouteParentStatus,
        gateway_api_resource,
    },
    store::{ClusterStore, RouteParents},
};
use crate::{
    compile::{
        Report,
        report::{self, ConditionStatus as Status},
    },
    config::ObjectRef,
};

/// Whose status this is: the gateway's pods and Service are found by these.
#[derive(Clone, Debug)]
pub struct Owner {
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
}

/// Turns every new report into desired statuses for the writer, until `reports` closes.
pub async fn publish(
    client: Client,
    store: Arc<ClusterStore>,
    owner: Owner,
    mut reports: watch::Receiver<Arc<Report>>,
    desired: watch::Sender<Arc<Vec<DesiredStatus>>>,
) {
    loop {
        let report = Arc::clone(&reports.borrow_and_update());
        let addresses = addresses(&client, &store, &owner).await;
        let statuses = desired_statuses(
            &report,
            &addresses,
            |kind| store.version_of(kind),
            |o| store.route_parents(&o.group, &o.kind, &o.namespace, &o.name),
        );
        debug!(objects = statuses.len(), "status to write");
        desired.send_replace(Arc::new(statuses));
        if reports.changed().await.is_err() {
            return;
        }
    }
}

/// The Gateway's addresses: our Service's load-balancer ingress, else its external IPs,
/// else the host IPs of our ready pods.
async fn addresses(client: &Client, store: &ClusterStore, owner: &Owner) -> Vec<GatewayAddress> {
    let (resources, _) = store.resources();
    let ours = resources.services.iter().find(|s| {
        let service = &s.resource;
        service.metadata.namespace() == owner.namespace
            && !service.spec.selector.is_empty()
            && service
                .spec
                .selector
                .iter()
                .all(|(k, v)| owner.labels.get(k) == Some(v))
    });
    if let Some(service) = ours {
        let service = &service.resource;
        let ingress: Vec<GatewayAddress> = service
            .status
            .load_balancer
            .ingress
            .iter()
            .filter_map(|i| match (&i.ip, &i.hostname) {
                (Some(ip), _) => Some(address("IPAddress", ip)),
                (None, Some(host)) => Some(address("Hostname", host)),
                (None, None) => None,
            })
            .collect();
        if !ingress.is_empty() {
            return ingress;
        }
        if !service.spec.external_ips.is_empty() {
            return service
                .spec
                .external_ips
                .iter()
                .map(|ip| address("IPAddress", ip))
                .collect();
        }
    }
    pod_host_ips(client, owner).await
}

fn address(kind: &str, value: &str) -> GatewayAddress {
    GatewayAddress {
        address_type: Some(kind.to_owned()),
        value: value.to_owned(),
    }
}

/// The host IPs of our ready pods (a DaemonSet on the host network is reached there).
async fn pod_host_ips(client: &Client, owner: &Owner) -> Vec<GatewayAddress> {
    let selector = owner
        .labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let pods: Api<Pod> = Api::namespaced(client.clone(), &owner.namespace);
    let list = match pods.list(&ListParams::default().labels(&selector)).await {
        Ok(list) => list,
        Err(e) => {
            warn!(error = %e, "listing the gateway's pods for Gateway addresses");
            return Vec::new();
        }
    };
    let mut ips: Vec<String> = list
        .items
        .iter()
        .filter_map(|pod| pod.status.as_ref())
        .filter(|status| {
            status
                .conditions
                .iter()
                .flatten()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        })
        .filter_map(|status| status.host_ip.clone())
        .collect();
    ips.sort();
    ips.dedup();
    ips.iter().map(|ip| address("IPAddress", ip)).collect()
}

/// The report as statuses to write. `version_of` names the version the cluster serves of
/// a Gateway API kind (the one watched).
/// `parents_of` gives the parents a dropped route names, read from the object as stored.
pub fn desired_statuses(
    report: &Report,
    addresses: &[GatewayAddress],
    version_of: impl Fn(&str) -> Option<String>,
    parents_of: impl Fn(&ObjectRef) -> Option<RouteParents>,
) -> Vec<DesiredStatus> {
    let resource = |kind: &str| -> Option<ApiResource> {
        let version = version_of(kind)?;
        Some(gateway_api_resource(&version, kind))
    };
    let mut out = Vec::new();
    for class in &report.gateway_classes {
        let Some(resource) = resource("GatewayClass") else {
            continue;
        };
        out.push(DesiredStatus {
            resource,
            namespace: None,
            name: class.object.name.clone(),
            current: None,
            status: Desired::GatewayClass {
                conditions: conditions(&class.conditions, class.generation),
            },
        });
    }
    for gateway in &report.gateways {
        let Some(resource) = resource("Gateway") else {
            continue;
        };
        let mut conditions = conditions(&gateway.conditions, gateway.generation);
        // A Gateway served on the addresses its `spec.addresses` name reports those;
        // the others are served on the node's.
        let addresses: Vec<GatewayAddress> = match &gateway.addresses {
            Some(own) => own
                .iter()
                .map(|ip| address("IPAddress", &ip.to_string()))
                .collect(),
            None => addresses.to_vec(),
        };
        let unassigned = addresses.is_empty() && gateway.addresses.is_none();
        if unassigned {
            for c in conditions
                .iter_mut()
                .filter(|c| c.condition_type == "Programmed")
            {
                c.status = ConditionStatus::False;
                c.reason = "AddressNotAssigned".into();
                c.message = "no address: the gateway's Service has no load-balancer ingress or external IP, and no gateway pod is ready".into();
            }
        }
        out.push(DesiredStatus {
            resource,
            namespace: Some(gateway.object.namespace.clone()),
            name: gateway.object.name.clone(),
            current: None,
            status: Desired::Gateway(GatewayStatus {
                conditions,
                addresses,
                listeners: gateway
                    .listeners
                    .iter()
                    .map(|l| listener(l, gateway.generation))
                    .collect(),
            }),
        });
    }
    for route in &report.routes {
        let Some(resource) = resource(&route.object.kind) else {
            continue;
        };
        out.push(DesiredStatus {
            resource,
            namespace: Some(route.object.namespace.clone()),
            name: route.object.name.clone(),
            current: None,
            status: Desired::Route {
                parents: route
                    .parents
                    .iter()
                    .map(|p| RouteParentStatus {
                        parent_ref: parent_ref(&p.parent_ref),
                        conditions: conditions(&p.conditions, route.generation),
                    })
                    .collect(),
            },
        });
    }
    for policy in &report.policies {
        let Some(resource) = resource(&policy.object.kind) else {
            continue;
        };
        out.push(DesiredStatus {
            resource,
            namespace: Some(policy.object.namespace.clone()),
            name: policy.object.name.clone(),
            current: None,
            status: Desired::Policy {
                ancestors: policy
                    .ancestors
                    .iter()
                    .map(|a| RouteParentStatus {
                        parent_ref: parent_ref(&a.parent_ref),
                        conditions: conditions(&a.conditions, policy.generation),
                    })
                    .collect(),
            },
        });
    }
    // Routes dropped for their errors: not accepted, on each of our Gateways they name.
    for dropped in report
        .dropped
        .iter()
        .filter(|d| d.object.group == GATEWAY_API_GROUP && d.object.kind.ends_with("Route"))
    {
        let (Some(resource), Some(parents)) =
            (resource(&dropped.object.kind), parents_of(&dropped.object))
        else {
            continue;
        };
        let route_namespace = &dropped.object.namespace;
        let parents: Vec<RouteParentStatus> = parents
            .parent_refs
            .into_iter()
            .filter(|p| {
                let namespace = p.namespace.as_deref().unwrap_or(route_namespace);
                report.gateway(namespace, &p.name).is_some()
            })
            .map(|parent_ref| RouteParentStatus {
                parent_ref,
                conditions: vec![Condition::new(
                    "Accepted",
                    false,
                    "UnsupportedValue",
                    format!(
                        "the route has errors and is not served: {}",
                        dropped.reason()
                    ),
                    parents.generation,
                )],
            })
            .collect();
        if parents.is_empty() {
            continue;
        }
        out.push(DesiredStatus {
            resource,
            namespace: Some(route_namespace.clone()),
            name: dropped.object.name.clone(),
            current: None,
            status: Desired::Route { parents },
        });
    }
    out
}

fn conditions(conditions: &[report::Condition], generation: Option<i64>) -> Vec<Condition> {
    conditions
        .iter()
        .map(|c| {
            Condition::new(
                c.kind,
                c.status == Status::True,
                c.reason,
                c.message.clone(),
                c.observed_generation.or(generation).unwrap_or_default(),
            )
        })
        .collect()
}

fn listener(l: &report::ListenerStatus, generation: Option<i64>) -> ListenerStatus {
    ListenerStatus {
        name: l.name.clone(),
        supported_kinds: l
            .supported_kinds
            .iter()
            .map(|k| RouteGroupKind {
                group: Some(k.group.clone()),
                kind: k.kind.clone(),
            })
            .collect(),
        attached_routes: i32::try_from(l.attached_routes).unwrap_or(i32::MAX),
        conditions: conditions(&l.conditions, generation),
    }
}

fn parent_ref(p: &report::ParentRef) -> ParentRef {
    ParentRef {
        group: Some(p.group.clone()),
        kind: Some(p.kind.clone()),
        namespace: Some(p.namespace.clone()),
        name: p.name.clone(),
        section_name: p.section_name.clone(),
        port: p.port.and_then(|p| i32::try_from(p).ok()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::report::{Condition as ReportCondition, GatewayStatus as ReportGateway};

    fn gateway(name: &str, addresses: Option<Vec<std::net::IpAddr>>) -> ReportGateway {
        ReportGateway {
            object: ObjectRef {
                group: GATEWAY_API_GROUP.to_owned(),
                kind: "Gateway".to_owned(),
                namespace: "default".to_owned(),
                name: name.to_owned(),
            },
            generation: Some(1),
            conditions: vec![
                ReportCondition::new("Accepted", true, "Accepted", ""),
                ReportCondition::new("Programmed", true, "Programmed", ""),
            ],
            listeners: Vec::new(),
            addresses,
        }
    }

    /// A Gateway with `spec.addresses` reports the addresses it is served on, whatever
    /// the cluster says; the others get the cluster's, and none is AddressNotAssigned.
    #[test]
    fn a_gateway_with_its_own_addresses_reports_them() {
        let report = Report {
            gateways: vec![
                gateway("own", Some(vec!["10.0.0.1".parse().expect("an IP")])),
                gateway("node", None),
            ],
            ..Report::default()
        };
        let statuses = |cluster: &[GatewayAddress]| {
            desired_statuses(&report, cluster, |_| Some("v1".to_owned()), |_| None)
        };
        let of = |statuses: &[DesiredStatus], name: &str| match statuses
            .iter()
            .find(|s| s.name == name)
            .map(|s| &s.status)
        {
            Some(Desired::Gateway(g)) => g.clone(),
            other => panic!("no Gateway status for {name}: {other:?}"),
        };
        let none = statuses(&[]);
        let own = of(&none, "own");
        assert_eq!(own.addresses, [address("IPAddress", "10.0.0.1")]);
        assert!(
            own.conditions
                .iter()
                .all(|c| c.reason != "AddressNotAssigned")
        );
        let node = of(&none, "node");
        assert!(node.addresses.is_empty());
        assert!(
            node.conditions
                .iter()
                .any(|c| c.reason == "AddressNotAssigned")
        );
        let cluster = [address("IPAddress", "192.168.1.10")];
        let some = statuses(&cluster);
        assert_eq!(
            of(&some, "own").addresses,
            [address("IPAddress", "10.0.0.1")]
        );
        assert_eq!(of(&some, "node").addresses, cluster);
    }
}
