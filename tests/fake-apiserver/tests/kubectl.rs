//! Cross-check with a real client: kubectl (client-go) against the fake must behave as
//! against a cluster. kubectl comes from the image's `kubectl` package (`cargo xtask setup`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use fake_apiserver::{FakeApi, Options};
use serde_json::{Value, json};

/// Guards against hangs only.
const PATIENCE: Duration = Duration::from_secs(20);

struct Scratch(PathBuf);

impl Scratch {
    fn new(test: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!(
            "fake-apiserver-kubectl-{test}-{}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).expect("a scratch directory");
        Scratch(dir)
    }

    fn kubeconfig(&self, api: &FakeApi) -> PathBuf {
        let path = self.0.join("kubeconfig");
        api.write_kubeconfig(&path).expect("write the kubeconfig");
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn kubectl_command(kubeconfig: &Path, args: &[&str]) -> Command {
    let mut command = Command::new("kubectl");
    command.arg("--kubeconfig").arg(kubeconfig).args(args);
    command
}

fn kubectl(kubeconfig: &Path, args: &[&str]) -> Output {
    kubectl_command(kubeconfig, args)
        .output()
        .expect("kubectl on PATH (`cargo xtask setup` installs the kubectl package)")
}

fn json_out(output: &Output) -> Value {
    assert!(
        output.status.success(),
        "kubectl failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("kubectl printed JSON")
}

const MANIFESTS: &str = "\
apiVersion: v1
kind: Namespace
metadata:
  name: ns
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: ns
spec:
  ports:
  - port: 80
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: route
  namespace: ns
spec:
  hostnames: [a.example]
  rules:
  - backendRefs:
    - name: web
      port: 80
";

#[test]
fn kubectl_lists_creates_gets_and_deletes() {
    let api = FakeApi::start_blocking(Options::default()).expect("start the fake");
    let scratch = Scratch::new("crud");
    let kc = scratch.kubeconfig(&api);
    api.apply(json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "dns", "namespace": "kube-system"},
        "spec": {"ports": [{"port": 53}]}}))
        .expect("apply");

    let services = json_out(&kubectl(&kc, &["get", "svc", "-A", "-o", "json"]));
    assert_eq!(services["items"][0]["metadata"]["name"], "dns");
    let table = kubectl(&kc, &["get", "svc", "-A"]);
    assert!(
        String::from_utf8_lossy(&table.stdout).contains("dns"),
        "the table lists it"
    );

    let file = scratch.0.join("objects.yaml");
    std::fs::File::create(&file)
        .and_then(|mut f| f.write_all(MANIFESTS.as_bytes()))
        .expect("write the manifests");
    let file = file.to_str().expect("a UTF-8 path");
    let created = kubectl(&kc, &["create", "-f", file]);
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    assert!(api.get("v1", "Service", "ns", "web").is_some());
    let again = kubectl(&kc, &["create", "-f", file]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("AlreadyExists"));

    let route = ["httproutes.gateway.networking.k8s.io", "-n", "ns", "route"];
    let got = json_out(&kubectl(
        &kc,
        &[&["get"][..], &route, &["-o", "json"]].concat(),
    ));
    assert_eq!(got["kind"], "HTTPRoute");
    assert_eq!(got["spec"]["hostnames"], json!(["a.example"]));
    assert_eq!(got["metadata"]["generation"], 1);

    let mut with_status = api
        .get("gateway.networking.k8s.io/v1", "HTTPRoute", "ns", "route")
        .expect("stored");
    with_status["status"] = json!({"parents": [{"controllerName": "example.com/gateway"}]});
    api.apply(with_status).expect("apply");
    let args = [
        &["get"][..],
        &route,
        &["--subresource=status", "-o", "json"],
    ]
    .concat();
    let status = json_out(&kubectl(&kc, &args));
    assert_eq!(
        status["status"]["parents"][0]["controllerName"],
        "example.com/gateway"
    );

    let deleted = kubectl(&kc, &[&["delete"][..], &route].concat());
    assert!(
        deleted.status.success(),
        "{}",
        String::from_utf8_lossy(&deleted.stderr)
    );
    assert!(
        api.get("gateway.networking.k8s.io/v1", "HTTPRoute", "ns", "route")
            .is_none()
    );
    let missing = kubectl(&kc, &[&["get"][..], &route].concat());
    assert!(!missing.status.success());
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(
        stderr.contains(r#"httproutes.gateway.networking.k8s.io "route" not found"#),
        "{stderr}"
    );
}

#[test]
fn kubectl_watch_prints_objects_applied_later() {
    let api = FakeApi::start_blocking(Options::default()).expect("start the fake");
    let scratch = Scratch::new("watch");
    let kc = scratch.kubeconfig(&api);
    let args = [
        "get",
        "httproutes.gateway.networking.k8s.io",
        "-n",
        "ns",
        "-w",
        "-o",
        "json",
        "--output-watch-events",
    ];
    let mut child = kubectl_command(&kc, &args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("kubectl on PATH");
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, events) = mpsc::channel();
    std::thread::spawn(move || {
        for value in serde_json::Deserializer::from_reader(stdout).into_iter::<Value>() {
            if value.map(|v| tx.send(v)).is_err() {
                break;
            }
        }
    });
    // The watch is open once kubectl has asked for it.
    let watching = (0..1000).any(|_| {
        std::thread::sleep(Duration::from_millis(10));
        api.requests().iter().any(|r| r.is_watch())
    });
    assert!(watching, "kubectl opened a watch");

    let route = |host: &str| {
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": "late", "namespace": "ns"}, "spec": {"hostnames": [host]}})
    };
    api.apply(route("a.example")).expect("apply");
    let added = events
        .recv_timeout(PATIENCE)
        .expect("kubectl printed an event");
    api.apply(route("b.example")).expect("apply");
    let modified = events
        .recv_timeout(PATIENCE)
        .expect("kubectl printed an event");
    let _ = child.kill();
    let _ = child.wait();

    assert_eq!(added["type"], "ADDED");
    assert_eq!(added["object"]["metadata"]["name"], "late");
    assert_eq!(modified["type"], "MODIFIED");
    assert_eq!(
        modified["object"]["spec"]["hostnames"],
        json!(["b.example"])
    );
}
