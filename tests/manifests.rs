//! The Kubernetes manifests in config/kubernetes/, parsed into the API types (k8s-openapi,
//! Kubernetes 1.33), and the invariants a deployment depends on: probes on the readiness
//! port, exactly the capabilities the kernel part needs, ports that agree with the example
//! Gateway and its Service, gatewayd following the API itself with the downward API's pod
//! identity, RBAC that grants what the code watches and writes and nothing more (rbac.rs),
//! and a ConfigMap that `gatewayd validate` accepts.

#[path = "manifests/rbac.rs"]
mod rbac;

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail, ensure};
use k8s_openapi::{
    api::{
        apps::v1::DaemonSet,
        core::v1::{ConfigMap, Container, Namespace, PodSpec, Probe, Service, ServiceAccount},
        rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding},
    },
    apimachinery::pkg::util::intstr::IntOrString,
};
use serde::{Serialize, de::DeserializeOwned};

const READINESS_PORT: i32 = 15021;
/// What the eBPF part and the listeners need; anything more is a finding.
const CAPABILITIES: [&str; 4] = ["BPF", "NET_ADMIN", "NET_BIND_SERVICE", "PERFMON"];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// Every manifest, typed.
#[derive(Default)]
struct Manifests {
    namespaces: Vec<Namespace>,
    service_accounts: Vec<ServiceAccount>,
    cluster_roles: Vec<ClusterRole>,
    cluster_role_bindings: Vec<ClusterRoleBinding>,
    roles: Vec<Role>,
    role_bindings: Vec<RoleBinding>,
    config_maps: Vec<ConfigMap>,
    services: Vec<Service>,
    daemon_sets: Vec<DaemonSet>,
}

/// Parses into `T` and checks that serializing it again gives the document back: a
/// misspelt or misplaced field, which the API types would drop silently, fails here.
fn typed<T: DeserializeOwned + Serialize>(
    doc: &serde_yaml::Value,
    origin: &str,
) -> anyhow::Result<T> {
    let value: T = serde_yaml::from_value(doc.clone()).with_context(|| origin.to_owned())?;
    let again = serde_yaml::to_value(&value)?;
    let (want, got) = (to_json(doc)?, to_json(&again)?);
    if want != got {
        bail!(
            "{origin}: fields the API type does not know (dropped on parse):\n  written: {want}\n  parsed:  {got}"
        );
    }
    Ok(value)
}

/// JSON with integers that are strings in one and numbers in the other made alike.
fn to_json(value: &serde_yaml::Value) -> anyhow::Result<serde_json::Value> {
    Ok(serde_json::to_value(value)?)
}

fn load() -> anyhow::Result<Manifests> {
    let dir = workspace().join("config/kubernetes");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| dir.display().to_string())?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    files.retain(|f| f.extension().is_some_and(|e| e == "yaml"));
    files.sort();
    ensure!(!files.is_empty(), "no manifests in {}", dir.display());
    let mut manifests = Manifests::default();
    for file in files {
        let text = std::fs::read_to_string(&file)?;
        for (index, document) in serde_yaml::Deserializer::from_str(&text).enumerate() {
            let doc = serde_yaml::Value::deserialize(document)
                .with_context(|| format!("{} document {index}", file.display()))?;
            let kind = doc["kind"].as_str().unwrap_or_default().to_owned();
            let origin = format!("{} document {index} ({kind})", file.display());
            match kind.as_str() {
                "Namespace" => manifests.namespaces.push(typed(&doc, &origin)?),
                "ServiceAccount" => manifests.service_accounts.push(typed(&doc, &origin)?),
                "ClusterRole" => manifests.cluster_roles.push(typed(&doc, &origin)?),
                "ClusterRoleBinding" => manifests.cluster_role_bindings.push(typed(&doc, &origin)?),
                "Role" => manifests.roles.push(typed(&doc, &origin)?),
                "RoleBinding" => manifests.role_bindings.push(typed(&doc, &origin)?),
                "ConfigMap" => manifests.config_maps.push(typed(&doc, &origin)?),
                "Service" => manifests.services.push(typed(&doc, &origin)?),
                "DaemonSet" => manifests.daemon_sets.push(typed(&doc, &origin)?),
                other => bail!("{origin}: kind {other:?} is not checked by this test; add it"),
            }
        }
    }
    Ok(manifests)
}

use serde::Deserialize as _;

fn gatewayd_container(daemon_set: &DaemonSet) -> anyhow::Result<&Container> {
    daemon_set
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|p| p.containers.iter().find(|c| c.name == "gatewayd"))
        .context("the DaemonSet has no gatewayd container")
}

fn http_probe_port(probe: Option<&Probe>) -> Option<(&str, &IntOrString)> {
    let get = probe?.http_get.as_ref()?;
    Some((get.path.as_deref().unwrap_or("/"), &get.port))
}

/// The values following `flag` in the container's args, up to the next flag.
fn flag_values<'a>(container: &'a Container, flag: &str) -> Vec<&'a str> {
    let args = container.args.as_deref().unwrap_or_default();
    args.iter()
        .skip_while(|a| *a != flag)
        .skip(1)
        .take_while(|a| !a.starts_with("--"))
        .map(String::as_str)
        .collect()
}

#[test]
fn every_manifest_parses_into_the_api_types() -> anyhow::Result<()> {
    let m = load()?;
    ensure!(m.daemon_sets.len() == 1, "one DaemonSet");
    ensure!(!m.services.is_empty() && !m.config_maps.is_empty());
    ensure!(!m.service_accounts.is_empty() && !m.cluster_role_bindings.is_empty());
    Ok(())
}

#[test]
fn the_daemon_set_runs_on_the_host_network_with_only_the_needed_capabilities() -> anyhow::Result<()>
{
    let m = load()?;
    let daemon_set = &m.daemon_sets[0];
    let pod = daemon_set
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .context("pod spec")?;
    assert_eq!(pod.host_network, Some(true));

    let gatewayd = gatewayd_container(daemon_set)?;
    let security = gatewayd
        .security_context
        .as_ref()
        .context("securityContext")?;
    let capabilities = security.capabilities.as_ref().context("capabilities")?;
    let added: BTreeSet<&str> = capabilities
        .add
        .iter()
        .flatten()
        .map(String::as_str)
        .collect();
    assert_eq!(
        added,
        CAPABILITIES.into_iter().collect(),
        "capabilities added"
    );
    assert_eq!(capabilities.drop.as_deref(), Some(&["ALL".to_owned()][..]));
    assert_ne!(security.privileged, Some(true));
    assert_eq!(security.allow_privilege_escalation, Some(false));

    // Any other container drops everything and adds nothing.
    for container in pod
        .containers
        .iter()
        .chain(pod.init_containers.iter().flatten())
    {
        if container.name == "gatewayd" {
            continue;
        }
        let caps = container
            .security_context
            .as_ref()
            .and_then(|s| s.capabilities.as_ref())
            .with_context(|| format!("{}: capabilities", container.name))?;
        assert_eq!(
            caps.drop.as_deref(),
            Some(&["ALL".to_owned()][..]),
            "{}",
            container.name
        );
        assert!(
            caps.add.as_deref().unwrap_or_default().is_empty(),
            "{}",
            container.name
        );
    }

    // bpffs and BTF are mounted from the host.
    let volumes = pod.volumes.as_deref().unwrap_or_default();
    for host_path in ["/sys/fs/bpf", "/sys/kernel/btf"] {
        let volume = volumes
            .iter()
            .find(|v| v.host_path.as_ref().is_some_and(|h| h.path == host_path))
            .with_context(|| format!("no hostPath volume for {host_path}"))?;
        let mounted = gatewayd
            .volume_mounts
            .iter()
            .flatten()
            .any(|mount| mount.name == volume.name && mount.mount_path == host_path);
        assert!(mounted, "{host_path} is not mounted into gatewayd");
    }
    Ok(())
}

#[test]
fn probes_point_at_the_readiness_port_and_outlast_the_drain() -> anyhow::Result<()> {
    let m = load()?;
    let daemon_set = &m.daemon_sets[0];
    let gatewayd = gatewayd_container(daemon_set)?;
    let readiness_addr = flag_values(gatewayd, "--readiness-addr");
    let readiness_port = match readiness_addr.first() {
        Some(addr) => addr.rsplit(':').next().context("HOST:PORT")?.parse()?,
        None => READINESS_PORT,
    };
    let port = IntOrString::Int(readiness_port);
    assert_eq!(
        http_probe_port(gatewayd.readiness_probe.as_ref()),
        Some(("/healthz/ready", &port))
    );
    assert_eq!(
        http_probe_port(gatewayd.liveness_probe.as_ref()),
        Some(("/healthz/live", &port))
    );

    // kubelet's SIGKILL must not land before gatewayd's drain delay and timeout run out.
    let seconds = |flag: &str| -> anyhow::Result<i64> {
        match flag_values(gatewayd, flag).first() {
            None => Ok(0),
            Some(value) => Ok(value
                .strip_suffix('s')
                .with_context(|| format!("{flag} in seconds, e.g. 20s"))?
                .parse()?),
        }
    };
    let drain_seconds = seconds("--drain-delay")? + seconds("--drain-timeout")?;
    let grace = daemon_set
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|p| p.termination_grace_period_seconds)
        .unwrap_or(30);
    assert!(
        grace > drain_seconds,
        "grace {grace}s <= drain {drain_seconds}s"
    );
    Ok(())
}

/// (port, targetPort, nodePort) of a Service port.
type PortMapping = (i64, i64, i64);

/// The example Gateway's server ports and its own Service's port mappings.
fn example_ports() -> anyhow::Result<(Vec<i64>, Vec<PortMapping>)> {
    let text = std::fs::read_to_string(workspace().join("config/examples/httpbin/gateway.yaml"))?;
    let (mut gateway_ports, mut service_ports) = (Vec::new(), Vec::new());
    for document in serde_yaml::Deserializer::from_str(&text) {
        let doc = serde_yaml::Value::deserialize(document)?;
        match doc["kind"].as_str() {
            Some("Gateway") => {
                for server in doc["spec"]["servers"].as_sequence().into_iter().flatten() {
                    gateway_ports.extend(server["port"]["number"].as_i64());
                }
            }
            Some("Service") => {
                for port in doc["spec"]["ports"].as_sequence().into_iter().flatten() {
                    let field = |name: &str| port[name].as_i64().unwrap_or(-1);
                    service_ports.push((field("port"), field("targetPort"), field("nodePort")));
                }
            }
            _ => {}
        }
    }
    ensure!(
        !gateway_ports.is_empty(),
        "the example has no Gateway ports"
    );
    Ok((gateway_ports, service_ports))
}

#[test]
fn the_node_port_service_agrees_with_the_example_gateway_and_the_pods() -> anyhow::Result<()> {
    let m = load()?;
    let service = m
        .services
        .iter()
        .find(|s| s.spec.as_ref().and_then(|s| s.type_.as_deref()) == Some("NodePort"))
        .context("no NodePort Service")?;
    let spec = service.spec.as_ref().context("spec")?;
    let (gateway_ports, example_service) = example_ports()?;

    // It selects the DaemonSet's pods (and those are what our --selector matches).
    let daemon_set = &m.daemon_sets[0];
    let pod_labels = daemon_set
        .spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let selector = spec.selector.clone().unwrap_or_default();
    ensure!(!selector.is_empty(), "the Service selects nothing");
    for (key, value) in &selector {
        assert_eq!(pod_labels.get(key), Some(value), "pod label {key}");
    }

    let gatewayd = gatewayd_container(daemon_set)?;
    let container_ports: BTreeSet<i32> = gatewayd
        .ports
        .iter()
        .flatten()
        .map(|p| p.container_port)
        .collect();
    for gateway_port in gateway_ports {
        let port = spec
            .ports
            .iter()
            .flatten()
            .find(|p| i64::from(p.port) == gateway_port)
            .with_context(|| {
                format!("the Service lacks the example Gateway's port {gateway_port}")
            })?;
        let target = match &port.target_port {
            Some(IntOrString::Int(n)) => i64::from(*n),
            other => bail!("port {gateway_port}: targetPort {other:?} should be a number"),
        };
        let node_port = port.node_port.map(i64::from).context("nodePort")?;
        let example = example_service
            .iter()
            .find(|(p, _, _)| *p == gateway_port)
            .context("the example's own Service lacks the port")?;
        assert_eq!(
            (gateway_port, target, node_port),
            *example,
            "as in the example"
        );
        assert!(
            container_ports.contains(&i32::try_from(target)?),
            "the DaemonSet does not declare containerPort {target}"
        );
    }
    assert!(container_ports.contains(&READINESS_PORT));
    Ok(())
}

fn pod_spec(daemon_set: &DaemonSet) -> anyhow::Result<&PodSpec> {
    daemon_set
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .context("the DaemonSet has no pod spec")
}

/// The downward API field an environment variable of the container is taken from.
fn downward_field<'a>(container: &'a Container, name: &str) -> Option<&'a str> {
    let var = container.env.iter().flatten().find(|v| v.name == name)?;
    let field = var.value_from.as_ref()?.field_ref.as_ref()?;
    Some(field.field_path.as_str())
}

#[test]
fn gatewayd_follows_the_api_itself_without_a_sidecar() -> anyhow::Result<()> {
    let m = load()?;
    let daemon_set = &m.daemon_sets[0];
    let pod = pod_spec(daemon_set)?;
    let names: Vec<&str> = pod
        .containers
        .iter()
        .chain(pod.init_containers.iter().flatten())
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(names, ["gatewayd"], "containers besides gatewayd");

    let gatewayd = gatewayd_container(daemon_set)?;
    let args = gatewayd.args.as_deref().unwrap_or_default();
    assert!(args.iter().any(|a| a == "--kubernetes"), "{args:?}");
    // In-cluster config: the pod's own service account, not a kubeconfig file.
    assert!(!args.iter().any(|a| a == "--kubeconfig"), "{args:?}");
    assert_ne!(pod.automount_service_account_token, Some(false));
    // Its namespace (Secrets, the Lease, its pods) is wherever the DaemonSet is applied.
    assert_eq!(flag_values(gatewayd, "--namespace"), ["$(POD_NAMESPACE)"]);

    for (var, field) in [
        ("POD_NAME", "metadata.name"),
        ("POD_NAMESPACE", "metadata.namespace"),
        ("NODE_NAME", "spec.nodeName"),
        ("HOST_IP", "status.hostIP"),
    ] {
        assert_eq!(downward_field(gatewayd, var), Some(field), "env {var}");
    }

    // Secrets come through the API: none is mounted.
    assert!(
        !pod.volumes.iter().flatten().any(|v| v.secret.is_some()
            || v.projected
                .as_ref()
                .is_some_and(|p| { p.sources.iter().flatten().any(|s| s.secret.is_some()) })),
        "a Secret volume"
    );
    Ok(())
}

/// The ConfigMap's configuration, with the NodePort Service as the cluster would supply
/// it, is one that gatewayd accepts; and the DaemonSet loads the ConfigMap's volume.
#[test]
fn the_config_map_is_a_configuration_gatewayd_accepts() -> anyhow::Result<()> {
    let m = load()?;
    let daemon_set = &m.daemon_sets[0];
    let gatewayd = gatewayd_container(daemon_set)?;
    let pod = daemon_set
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .context("pod")?;
    let config_paths = flag_values(gatewayd, "--config");
    let mut loaded_maps = Vec::new();
    for volume in pod.volumes.iter().flatten() {
        let Some(config_map) = &volume.config_map else {
            continue;
        };
        let mount = gatewayd
            .volume_mounts
            .iter()
            .flatten()
            .find(|mount| mount.name == volume.name)
            .context("ConfigMap volume not mounted")?;
        assert!(
            config_paths.contains(&mount.mount_path.as_str()),
            "{} not in --config",
            mount.mount_path
        );
        loaded_maps.push(config_map.name.clone());
    }
    ensure!(!loaded_maps.is_empty(), "no ConfigMap volume");

    let dir = gateway_tests::TempDir::new("manifests")?;
    for config_map in m
        .config_maps
        .iter()
        .filter(|c| loaded_maps.contains(&c.metadata.name.clone().unwrap_or_default()))
    {
        for (name, text) in config_map.data.iter().flatten() {
            dir.write(name, text)?;
        }
    }
    let services =
        std::fs::read_to_string(workspace().join("config/kubernetes/service-nodeport.yaml"))?;
    dir.write("service.yaml", &services)?;
    let out = Command::new(gateway_tests::gatewayd_bin())
        .args(["validate", "--config"])
        .arg(dir.path())
        .output()
        .context("running gatewayd validate (build it first)")?;
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "gatewayd validate refused the ConfigMap:\n{report}"
    );
    assert!(report.contains("0 error(s)"), "{report}");
    Ok(())
}
