//! A reload that reuses (parsed documents, compiled routes, the cluster list, an
//! endpoint patch) gives what a compile of everything from scratch gives, edit after
//! edit: the compile stays a function of the resources.

use std::{collections::BTreeMap, path::Path, sync::Arc};

use super::*;
use crate::config::Diagnostics;

const BASE: &str = "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: default}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: [\"*.example.com\"]
---
apiVersion: v1
kind: Service
metadata: {name: a, namespace: default}
spec: {ports: [{name: http, port: 8000}]}
---
apiVersion: v1
kind: Service
metadata: {name: b, namespace: default}
spec: {ports: [{name: http, port: 8000}]}
---
apiVersion: v1
kind: Service
metadata: {name: c, namespace: default}
spec: {ports: [{name: http, port: 8000}]}
";

fn slice(service: &str, address: &str) -> String {
    format!(
        "apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: {service}-1, namespace: default, labels: {{kubernetes.io/service-name: {service}}}}}
addressType: IPv4
ports: [{{name: http, port: 8000}}]
endpoints: [{{addresses: [\"{address}\"]}}]
"
    )
}

/// A VirtualService for `host` with one route per prefix to `service`.
fn virtual_service(name: &str, host: &str, service: &str, prefixes: &[&str]) -> String {
    let mut out = format!(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: {name}, namespace: default}}
spec:
  hosts: [{host}]
  gateways: [gw]
  http:
"
    );
    for prefix in prefixes {
        out.push_str(&format!(
            "  - match: [{{uri: {{prefix: {prefix}}}}}]\n    route: [{{destination: {{host: {service}, port: {{number: 8000}}}}}}]\n"
        ));
    }
    out
}

/// A VirtualService with a route the compile warns about (unreachable after a
/// catch-all): a compile diagnostic with a line in the file.
fn warned(name: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: {name}, namespace: default}}
spec:
  hosts: [{name}.example.com]
  gateways: [gw]
  http:
  - route: [{{destination: {{host: a, port: {{number: 8000}}}}}}]
  - match: [{{uri: {{prefix: /never}}}}]
    route: [{{destination: {{host: a, port: {{number: 8000}}}}}}]
"
    )
}

/// A VirtualService with a field error: a load diagnostic with a line, and a dropped
/// object in the report.
fn broken(name: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: {name}, namespace: default}}
spec:
  hosts: [{name}.example.com]
  gateways: [gw]
  http:
  - timeout: [not, a, duration]
    route: [{{destination: {{host: a, port: {{number: 8000}}}}}}]
"
    )
}

fn documents(parts: &[String]) -> String {
    parts.join("---\n")
}

/// What a full compile of `dir` gives, the reference a reusing compile must equal.
fn full_compile(
    source: &ConfigSource,
    dir: &Path,
    step: usize,
) -> Result<compile::Isolated, Box<dyn std::error::Error>> {
    let (resources, loaded) = config::load(std::slice::from_ref(&dir.to_path_buf()))?;
    compile::compile_isolating(
        &resources,
        loaded,
        &source.identity,
        &TlsState::default(),
        None,
    )
    .map_err(|d| format!("step {step}: {d:?}").into())
}

/// What a user (or `/config_dump`) sees of a compile: listeners and routes, the kernel
/// policy, the status report (with dropped objects and their diagnostics' lines), each
/// cluster's endpoints by name, and the diagnostics.
fn seen(snapshot: &Snapshot, diagnostics: &Diagnostics) -> Result<String, serde_json::Error> {
    // A reusing compile may carry clusters no route names any more (they are dropped at
    // the next full compile): compare the named ones.
    let mut named = BTreeMap::new();
    for listener in snapshot.listeners.iter() {
        for host in &listener.routes.virtual_hosts {
            for route in host.routes.iter() {
                if let crate::snapshot::RouteAction::Forward(forward) = &route.action {
                    for weighted in &forward.clusters {
                        let cluster = &weighted.cluster;
                        // The route's cluster must be the one at its id in this snapshot.
                        let listed = snapshot.clusters.get(cluster.id).map(|c| c.name.clone());
                        named.insert(
                            cluster.name.clone(),
                            (listed, snapshot.endpoints_of(cluster).to_vec()),
                        );
                    }
                }
            }
        }
    }
    let mut diagnostics: Vec<String> = diagnostics
        .0
        .iter()
        .map(|d| format!("{:?} {d}", d.severity))
        .collect();
    diagnostics.sort();
    Ok(format!(
        "{}\n{}\n{}\n{named:?}\n{diagnostics:#?}",
        serde_json::to_string_pretty(&*snapshot.listeners)?,
        serde_json::to_string(&snapshot.kernel)?,
        serde_json::to_string_pretty(&*snapshot.report)?,
    ))
}

#[test]
fn a_reusing_reload_compiles_what_a_full_compile_does() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("gatewayd-incremental-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let write = |name: &str, text: &str| std::fs::write(dir.join(name), text);
    write("base.yaml", BASE)?;
    write("a.yaml", &slice("a", "10.0.0.1"))?;
    write("b.yaml", &slice("b", "10.0.0.2"))?;
    let h1 = virtual_service("h1", "h1.example.com", "a", &["/one"]);
    let h2 = virtual_service("h2", "h2.example.com", "a", &["/two"]);
    let h3 = virtual_service("h3", "h3.example.com", "b", &["/three"]);
    write(
        "routes.yaml",
        &documents(&[h1.clone(), h2.clone(), h3.clone()]),
    )?;
    write(
        "h4.yaml",
        &virtual_service("h4", "h4.example.com", "b", &["/four"]),
    )?;

    let source = ConfigSource {
        paths: vec![dir.clone()],
        identity: Identity::default(),
        tls: Arc::new(TlsState::default()),
        cluster: None,
        dns: None,
    };
    let mut cache = CompileCache::default();
    let (mut live, _) = source.compile_first(&mut cache)?;
    cache.applied();

    // (file changed, its new text, what the change is)
    let h2_longer = virtual_service("h2", "h2.example.com", "b", &["/two", "/deux", "/zwei"]);
    let edits: Vec<(&str, String, &str)> = vec![
        // The middle document grows: the third moves two lines down.
        (
            "routes.yaml",
            documents(&[h1.clone(), h2_longer.clone(), h3.clone()]),
            "routes",
        ),
        ("b.yaml", slice("b", "10.0.0.3"), "endpoints"),
        // A route to a Service no route named before: a new cluster.
        (
            "h4.yaml",
            virtual_service("h4", "h4.example.com", "c", &["/four"]),
            "routes",
        ),
        // The first document goes: the others move up.
        (
            "routes.yaml",
            documents(&[h2_longer.clone(), h3.clone()]),
            "routes",
        ),
        // Diagnostics in documents after one that changes length.
        (
            "routes.yaml",
            documents(&[h2_longer.clone(), warned("w"), h3.clone()]),
            "routes",
        ),
        (
            "routes.yaml",
            documents(&[h2.clone(), warned("w"), h3.clone()]),
            "routes",
        ),
        (
            "routes.yaml",
            documents(&[h2.clone(), warned("w"), broken("x"), h3.clone()]),
            "other",
        ),
        (
            "routes.yaml",
            documents(&[h2_longer.clone(), warned("w"), broken("x"), h3.clone()]),
            "other",
        ),
        // Same documents, another order.
        (
            "routes.yaml",
            documents(&[h3.clone(), broken("x"), warned("w"), h2.clone()]),
            "other",
        ),
        // The Gateway changes: everything is compiled again.
        (
            "base.yaml",
            BASE.replace("*.example.com", "h3.example.com"),
            "other",
        ),
        ("base.yaml", BASE.to_owned(), "other"),
        // The route to `c` goes: its cluster is named by no route.
        (
            "h4.yaml",
            virtual_service("h4", "h4.example.com", "b", &["/four"]),
            "routes",
        ),
        ("a.yaml", slice("a", "10.0.0.9"), "endpoints"),
    ];
    for (step, (file, text, kind)) in edits.into_iter().enumerate() {
        write(file, &text)?;
        let trigger = Trigger {
            touched: Some(vec![dir.join(file)]),
            beyond_config: false,
        };
        let compiled = source.compile_cached(&mut cache, &live, &trigger)?;
        let (snapshot, diagnostics) = match compiled {
            Compiled::Full(snapshot, diagnostics) => (snapshot, Some(diagnostics)),
            Compiled::Endpoints { snapshot, .. } => (snapshot, None),
            Compiled::Nothing => panic!("step {step}: {file} changed, nothing compiled"),
        };
        assert_eq!(
            diagnostics.is_none(),
            kind == "endpoints",
            "step {step}: an endpoint patch for {kind}"
        );
        cache.applied();
        let full = full_compile(&source, &dir, step)?;
        // An endpoint patch brings no diagnostics of its own: the full compile's are what
        // the last full reload said.
        let diagnostics = diagnostics.unwrap_or_else(|| full.diagnostics.clone());
        assert_eq!(
            seen(&snapshot, &diagnostics)?,
            seen(&full.snapshot, &full.diagnostics)?,
            "step {step}: {file} ({kind})"
        );
        if kind == "routes" && file == "routes.yaml" {
            // h4's routes, in another file, are the previous compile's.
            assert!(
                same_routes(&live, &snapshot, "h4.example.com"),
                "step {step}: h4's routes recompiled"
            );
        }
        live = snapshot;
    }
    std::fs::remove_dir_all(Path::new(&dir))?;
    Ok(())
}

/// The routes of `host` on the first listener that serves it.
fn routes_of(
    snapshot: &Snapshot,
    host: &str,
) -> Option<Arc<Vec<crate::route_table::Route<crate::snapshot::RouteAction>>>> {
    snapshot.listeners.iter().find_map(|l| {
        l.routes
            .virtual_hosts
            .iter()
            .find(|v| v.host == host)
            .map(|v| Arc::clone(&v.routes))
    })
}

/// Whether `host`'s routes are the same allocation in both snapshots (not compiled again).
fn same_routes(before: &Snapshot, after: &Snapshot, host: &str) -> bool {
    matches!(
        (routes_of(before, host), routes_of(after, host)),
        (Some(b), Some(a)) if Arc::ptr_eq(&b, &a)
    )
}

/// One file of many VirtualServices, the first edited: the ones after it move, keep their
/// compiled routes, and their diagnostics name the new lines, as a full compile's do.
#[test]
fn a_moved_virtual_service_keeps_its_routes_and_its_lines_move()
-> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("gatewayd-moved-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let write = |text: &str| std::fs::write(dir.join("routes.yaml"), text);
    std::fs::write(dir.join("base.yaml"), BASE)?;
    std::fs::write(dir.join("a.yaml"), slice("a", "10.0.0.1"))?;
    let first = |prefixes: &[&str]| virtual_service("h1", "h1.example.com", "a", prefixes);
    // After the first: one with a compile warning (its line is found in its text after
    // the compile) and a plain one. (One that does not load would make every edit a full
    // compile: its document moves, and a moved error counts as a change of it.)
    let rest = [
        warned("w"),
        virtual_service("h3", "h3.example.com", "a", &["/three"]),
    ];
    let file = |prefixes: &[&str]| {
        let mut parts = vec![first(prefixes)];
        parts.extend(rest.iter().cloned());
        documents(&parts)
    };
    write(&file(&["/one"]))?;
    let source = ConfigSource {
        paths: vec![dir.clone()],
        identity: Identity::default(),
        tls: Arc::new(TlsState::default()),
        cluster: None,
        dns: None,
    };
    let mut cache = CompileCache::default();
    let (mut live, _) = source.compile_first(&mut cache)?;
    cache.applied();
    // Longer by two lines, by four, back, and the same length with another prefix.
    let edits: [&[&str]; 4] = [
        &["/one", "/uno"],
        &["/one", "/uno", "/eins"],
        &["/one"],
        &["/een"],
    ];
    for (step, prefixes) in edits.into_iter().enumerate() {
        write(&file(prefixes))?;
        let trigger = Trigger {
            touched: Some(vec![dir.join("routes.yaml")]),
            beyond_config: false,
        };
        let Compiled::Full(snapshot, diagnostics) =
            source.compile_cached(&mut cache, &live, &trigger)?
        else {
            panic!("step {step}: not a compile");
        };
        cache.applied();
        let full = full_compile(&source, &dir, step)?;
        assert_eq!(
            seen(&snapshot, &diagnostics)?,
            seen(&full.snapshot, &full.diagnostics)?,
            "step {step}"
        );
        // The warning is there, at its field's line in the moved document.
        let line = |diagnostics: &Diagnostics| {
            diagnostics
                .0
                .iter()
                .find(|d| d.message.contains("never reached"))
                .and_then(|d| d.location.as_ref().map(|l| l.line))
        };
        assert_eq!(line(&diagnostics), line(&full.diagnostics), "step {step}");
        assert!(line(&diagnostics).is_some(), "step {step}: no warning");
        for host in ["w.example.com", "h3.example.com"] {
            assert!(
                same_routes(&live, &snapshot, host),
                "step {step}: {host}'s routes compiled again"
            );
        }
        assert!(
            !same_routes(&live, &snapshot, "h1.example.com"),
            "step {step}"
        );
        live = snapshot;
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

/// A VirtualService `big` for `host` with these `http` entries.
fn big(host: &str, http: &[String]) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: big, namespace: default}}
spec:
  hosts: [{host}]
  gateways: [gw]
  http:
{}",
        http.concat()
    )
}

/// An `http` entry for `prefix` to Service `service`, with these more lines.
fn entry(prefix: &str, service: &str, more: &str) -> String {
    format!(
        "  - match: [{{uri: {{prefix: {prefix}}}}}]\n    route: [{{destination: {{host: {service}, port: {{number: 8000}}}}}}]\n{more}"
    )
}

/// An edited VirtualService compiles only the `http` entries that changed; the others,
/// with their warnings (an unknown field; a Service without endpoints), are taken from
/// the previous compile, renumbered when entries before them came or went, and the
/// result is what a full compile gives. Its binding follows its hosts.
#[test]
fn an_edited_virtual_service_compiles_only_its_edited_routes()
-> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("gatewayd-per-route-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("base.yaml"), BASE)?;
    std::fs::write(dir.join("a.yaml"), slice("a", "10.0.0.1"))?;
    let after = virtual_service("h3", "h3.example.com", "a", &["/three"]);
    let write = |host: &str, http: &[String]| {
        std::fs::write(
            dir.join("routes.yaml"),
            documents(&[big(host, http), after.clone()]),
        )
    };
    // `c` has no endpoints: the entry that first names it is warned.
    let unknown = entry("/b", "a", "    mirrorSomething: 1\n");
    let to_c = entry("/c", "c", "");
    let named = entry("/d", "a", "    name: dee\n");
    let rest = [unknown.clone(), to_c.clone(), named.clone()];
    let with = |first: &[&str]| -> Vec<String> {
        let mut http: Vec<String> = first.iter().map(|p| entry(p, "a", "")).collect();
        http.extend(rest.iter().cloned());
        http
    };
    write("big.example.com", &with(&["/a"]))?;
    let source = ConfigSource {
        paths: vec![dir.clone()],
        identity: Identity::default(),
        tls: Arc::new(TlsState::default()),
        cluster: None,
        dns: None,
    };
    let mut cache = CompileCache::default();
    let (mut live, _) = source.compile_first(&mut cache)?;
    cache.applied();
    // (host, entries, how many entries are compiled)
    let edits: Vec<(&str, Vec<String>, usize)> = vec![
        // The first entry edited: only it.
        ("big.example.com", with(&["/a2"]), 1),
        // One added before all: only it; the others are found as far from the end.
        ("big.example.com", with(&["/z", "/a2"]), 1),
        // And removed again: none.
        ("big.example.com", with(&["/a2"]), 0),
        // A warned entry edited: it is compiled, and warned, again.
        (
            "big.example.com",
            vec![
                entry("/a3", "a", ""),
                entry("/b", "a", "    mirrorElse: 1\n"),
                to_c.clone(),
                named.clone(),
            ],
            2,
        ),
        // The entry to `c` edited: its cluster, carried over, is warned about there.
        (
            "big.example.com",
            vec![
                entry("/a3", "a", ""),
                entry("/b", "a", "    mirrorElse: 1\n"),
                entry("/c", "c", "    name: cee\n"),
                named.clone(),
            ],
            1,
        ),
        ("big.example.com", with(&["/a2"]), 3),
        // Another host: bound anew, no route compiled.
        ("other.example.com", with(&["/a2"]), 0),
        // A host no server accepts: not bound (warned), nothing compiled.
        ("big.example.org", with(&["/a2"]), 0),
    ];
    for (step, (host, http, compiled)) in edits.into_iter().enumerate() {
        write(host, &http)?;
        let trigger = Trigger {
            touched: Some(vec![dir.join("routes.yaml")]),
            beyond_config: false,
        };
        let Compiled::Full(snapshot, diagnostics) =
            source.compile_cached(&mut cache, &live, &trigger)?
        else {
            panic!("step {step}: not a compile");
        };
        cache.applied();
        let full = full_compile(&source, &dir, step)?;
        assert_eq!(
            seen(&snapshot, &diagnostics)?,
            seen(&full.snapshot, &full.diagnostics)?,
            "step {step}"
        );
        let memo = cache.memo.as_ref().ok_or("no memo")?;
        assert_eq!(memo.compiled_routes(), compiled, "step {step}");
        // What a user sees of the binding: the host served, and the others not.
        for other in ["big.example.com", "other.example.com", "big.example.org"] {
            assert_eq!(
                routes_of(&snapshot, other).is_some(),
                other == host && host.ends_with(".com"),
                "step {step}: {other}"
            );
        }
        let unbound = diagnostics
            .0
            .iter()
            .any(|d| d.message.contains("is not bound there"));
        assert_eq!(unbound, host.ends_with(".org"), "step {step}");
        assert!(
            same_routes(&live, &snapshot, "h3.example.com"),
            "step {step}"
        );
        live = snapshot;
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

/// The memo's bindings are the port's servers': a reusing compile given a changed
/// Gateway (and the same VirtualServices) binds them anew, as a full compile does.
#[test]
fn a_changed_gateway_is_seen_by_a_reusing_compile() -> Result<(), Box<dyn std::error::Error>> {
    let file = Path::new("/srv/config/routes.yaml");
    let text = documents(&[
        BASE.to_owned(),
        slice("a", "10.0.0.1"),
        virtual_service("h1", "h1.example.com", "a", &["/one"]),
        virtual_service("h2", "h2.example.com", "a", &["/two"]),
    ]);
    let (resources, _) = config::load_text(file, &text);
    let (identity, tls) = (Identity::default(), TlsState::default());
    let (snapshot, _, memo) = compile::compile_reusing(&resources, &identity, &tls, None);
    assert!(routes_of(&snapshot, "h1.example.com").is_some());
    // The same VirtualServices (allocations); the Gateway now accepts h2 alone.
    let mut changed = resources.clone();
    let narrower = BASE.replace("\"*.example.com\"", "h2.example.com");
    changed.gateways = config::load_text(file, &narrower).0.gateways;
    let (reused, diagnostics, _) =
        compile::compile_reusing(&changed, &identity, &tls, Some((&snapshot, &memo)));
    let (full, full_diagnostics) = compile::compile(&changed, &identity);
    assert_eq!(
        seen(&reused, &diagnostics)?,
        seen(&full, &full_diagnostics)?
    );
    assert!(routes_of(&reused, "h1.example.com").is_none());
    assert!(routes_of(&reused, "h2.example.com").is_some());
    assert!(
        diagnostics
            .0
            .iter()
            .any(|d| d.message.contains("is not bound there")),
        "{diagnostics:?}"
    );
    Ok(())
}

/// What a step of `check_steps` does: write `text` to `file`; `kind` is what the reload
/// must be (`routes`: a compile that reuses, `endpoints`: an endpoint patch, `full`: a
/// compile of everything); `kept`: a host whose routes the reuse must have kept (which
/// only a compile that reuses keeps).
struct Step<'s> {
    file: &'s str,
    text: String,
    kind: &'s str,
    kept: Option<&'s str>,
}

fn step<'s>(file: &'s str, text: String, kind: &'s str, kept: Option<&'s str>) -> Step<'s> {
    Step {
        file,
        text,
        kind,
        kept,
    }
}

/// What a step said: its diagnostics, and the objects it dropped.
type Said = (Diagnostics, Vec<String>);

/// Writes `files` into a fresh directory, compiles them, then applies `steps` one by one
/// through the reload's cache: after each, what the reload gives (diagnostics included)
/// must be what a full compile of the directory gives. Returns each step's diagnostics and
/// the objects it dropped.
fn check_steps(
    name: &str,
    files: &[(&str, String)],
    steps: Vec<Step<'_>>,
) -> Result<Vec<Said>, Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("gatewayd-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    for (file, text) in files {
        std::fs::write(dir.join(file), text)?;
    }
    let source = ConfigSource {
        paths: vec![dir.clone()],
        identity: Identity::default(),
        tls: Arc::new(TlsState::default()),
        cluster: None,
        dns: None,
    };
    let mut cache = CompileCache::default();
    let (mut live, _) = source.compile_first(&mut cache)?;
    cache.applied();
    let mut said = Vec::new();
    for (index, step) in steps.into_iter().enumerate() {
        std::fs::write(dir.join(step.file), &step.text)?;
        let trigger = Trigger {
            touched: Some(vec![dir.join(step.file)]),
            beyond_config: false,
        };
        let compiled = source.compile_cached(&mut cache, &live, &trigger)?;
        let full = full_compile(&source, &dir, index)?;
        let (snapshot, diagnostics) = match compiled {
            Compiled::Full(snapshot, diagnostics) => (snapshot, diagnostics),
            // An endpoint patch says nothing of the routes: what the last compile said.
            Compiled::Endpoints { snapshot, .. } => (snapshot, full.diagnostics.clone()),
            Compiled::Nothing => panic!("step {index}: {} changed, nothing compiled", step.file),
        };
        cache.applied();
        match step.kind {
            "endpoints" => assert!(
                Arc::ptr_eq(&snapshot.listeners, &live.listeners),
                "step {index}: not an endpoint patch"
            ),
            "routes" => assert!(step.kept.is_some(), "step {index}: say what is kept"),
            _ => {}
        }
        if let Some(host) = step.kept {
            assert!(
                same_routes(&live, &snapshot, host),
                "step {index}: {host}'s routes compiled again"
            );
        }
        assert_eq!(
            seen(&snapshot, &diagnostics)?,
            seen(&full.snapshot, &full.diagnostics)?,
            "step {index}: {} ({})",
            step.file,
            step.kind
        );
        let dropped = snapshot.report.dropped.iter();
        said.push((diagnostics, dropped.map(|d| d.object.to_string()).collect()));
        live = snapshot;
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(said)
}

/// The resources `diagnostics` (of a step) that say `text` are about.
fn saying((diagnostics, _): &Said, text: &str) -> Vec<String> {
    diagnostics
        .0
        .iter()
        .filter(|d| d.message.contains(text))
        .map(|d| d.resource.clone().unwrap_or_default())
        .collect()
}

const NO_ENDPOINTS: &str = "has no ready endpoints";

/// A new VirtualService that names a cluster the previous compile made (Service `c`, no
/// endpoints) before the VirtualService that named it until then: the warning is said
/// at the new one, as a full compile says it, not at the one that named it first before.
#[test]
fn a_new_virtual_service_naming_a_carried_over_cluster_is_warned()
-> Result<(), Box<dyn std::error::Error>> {
    let files = [
        ("base.yaml", BASE.to_owned()),
        ("a.yaml", slice("a", "10.0.0.1")),
        (
            "h1.yaml",
            virtual_service("h1", "h1.example.com", "c", &["/one"]),
        ),
        (
            "h3.yaml",
            virtual_service("h3", "h3.example.com", "a", &["/three"]),
        ),
    ];
    let said = check_steps(
        "new-names-carried",
        &files,
        vec![
            // `g0` is older by name: it is compiled first, and names `c` first.
            step(
                "g0.yaml",
                virtual_service("g0", "g0.example.com", "c", &["/zero"]),
                "routes",
                Some("h3.example.com"),
            ),
            // And with `h1` going to `a`, `g0` alone names `c`.
            step(
                "h1.yaml",
                virtual_service("h1", "h1.example.com", "a", &["/one"]),
                "routes",
                Some("g0.example.com"),
            ),
        ],
    )?;
    let warned = |step: usize| said.get(step).map(|d| saying(d, NO_ENDPOINTS));
    let at_g0 = Some(vec!["VirtualService default/g0".to_owned()]);
    assert_eq!(warned(0), at_g0);
    assert_eq!(warned(1), at_g0);
    Ok(())
}

/// An edited route that names a cluster no route of the previous compile named (it was
/// made by a compile before, and carried over): the warnings said when such a cluster is
/// made (a Service without endpoints; a ServiceEntry without addresses) are said again.
#[test]
fn an_edited_route_naming_a_carried_over_cluster_is_warned()
-> Result<(), Box<dyn std::error::Error>> {
    let entry = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext, namespace: default}
spec:
  hosts: [ext.example.org]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: NONE
";
    let files = [
        ("base.yaml", format!("{BASE}---\n{entry}")),
        ("a.yaml", slice("a", "10.0.0.1")),
        (
            "h1.yaml",
            virtual_service("h1", "h1.example.com", "c", &["/one"]),
        ),
        (
            "h2.yaml",
            virtual_service("h2", "h2.example.com", "a", &["/two"]),
        ),
        (
            "h3.yaml",
            virtual_service("h3", "h3.example.com", "a", &["/three"]),
        ),
        (
            "h4.yaml",
            virtual_service("h4", "h4.example.com", "ext.example.org", &["/four"])
                .replace("number: 8000", "number: 80"),
        ),
    ];
    let said = check_steps(
        "edited-names-carried",
        &files,
        vec![
            // Nothing names `c` or the ServiceEntry's cluster: nothing is said of them.
            step(
                "h1.yaml",
                virtual_service("h1", "h1.example.com", "a", &["/one"]),
                "routes",
                Some("h3.example.com"),
            ),
            step(
                "h4.yaml",
                virtual_service("h4", "h4.example.com", "a", &["/four"]),
                "routes",
                Some("h3.example.com"),
            ),
            // An edited route names each again.
            step(
                "h2.yaml",
                virtual_service("h2", "h2.example.com", "c", &["/two"]),
                "routes",
                Some("h3.example.com"),
            ),
            step(
                "h3.yaml",
                virtual_service("h3", "h3.example.com", "ext.example.org", &["/three"])
                    .replace("number: 8000", "number: 80"),
                "routes",
                Some("h2.example.com"),
            ),
        ],
    )?;
    let warned = |step: usize, text: &str| said.get(step).map(|d| saying(d, text));
    assert_eq!(warned(1, NO_ENDPOINTS), Some(vec![]));
    assert_eq!(
        warned(2, NO_ENDPOINTS),
        Some(vec!["VirtualService default/h2".to_owned()])
    );
    assert_eq!(warned(2, "resolution NONE"), Some(vec![]));
    assert_eq!(
        warned(3, "resolution NONE"),
        Some(vec!["VirtualService default/h3".to_owned()])
    );
    Ok(())
}

/// A DestinationRule is checked as its clusters are made: a reusing compile says its
/// warning (TLS it cannot originate) when a route names a carried-over cluster again, and
/// drops it for its error (a bad duration) as a full compile does, although the cluster
/// was made without it (it was dropped then too).
#[test]
fn a_destination_rule_of_a_carried_over_cluster_is_checked_again()
-> Result<(), Box<dyn std::error::Error>> {
    let rule = |service: &str, policy: &str| {
        format!(
            "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: {service}-rule, namespace: default}}
spec:
  host: {service}
  trafficPolicy: {policy}
"
        )
    };
    let routes = |h1: &str, more: &[String]| {
        let mut parts = vec![virtual_service("h1", "h1.example.com", h1, &["/one"])];
        parts.extend(more.iter().cloned());
        documents(&parts)
    };
    let files = |rule: String, to: &str| {
        vec![
            ("base.yaml", documents(&[BASE.to_owned(), rule])),
            ("a.yaml", slice("a", "10.0.0.1")),
            ("b.yaml", slice("b", "10.0.0.2")),
            ("routes.yaml", routes(to, &[])),
            (
                "h3.yaml",
                virtual_service("h3", "h3.example.com", "a", &["/three"]),
            ),
        ]
    };
    let h5 = virtual_service("h5", "h5.example.com", "b", &["/five"]);
    let said = check_steps(
        "rule-warning",
        &files(rule("b", "{tls: {mode: ISTIO_MUTUAL}}"), "b"),
        vec![
            // No route names `b`: its cluster is carried over, and nothing said of it.
            step(
                "routes.yaml",
                routes("a", &[]),
                "routes",
                Some("h3.example.com"),
            ),
            // A new VirtualService names it.
            step(
                "routes.yaml",
                routes("a", std::slice::from_ref(&h5)),
                "routes",
                Some("h3.example.com"),
            ),
        ],
    )?;
    let warned = |step: usize| said.get(step).map(|d| saying(d, "ISTIO_MUTUAL").len());
    assert_eq!((warned(0), warned(1)), (Some(0), Some(1)));
    // The rule with an error is dropped at the start; a new VirtualService names `b`.
    let said = check_steps(
        "rule-error",
        &files(
            rule("b", "{outlierDetection: {baseEjectionTime: soon}}"),
            "b",
        ),
        vec![step(
            "routes.yaml",
            routes("b", std::slice::from_ref(&h5)),
            "full",
            None,
        )],
    )?;
    assert_eq!(
        said.first().map(|(_, dropped)| dropped.clone()),
        Some(vec!["DestinationRule default/b-rule".to_owned()])
    );
    Ok(())
}

/// The reverse: a cluster's warning goes when the last route naming it goes, or when its
/// Service gets endpoints (by an endpoint patch, before a reusing compile), and comes back
/// when they go.
#[test]
fn a_cluster_warning_goes_with_its_last_route_and_with_its_endpoints()
-> Result<(), Box<dyn std::error::Error>> {
    let files = [
        ("base.yaml", BASE.to_owned()),
        ("a.yaml", slice("a", "10.0.0.1")),
        (
            "c.yaml",
            slice("c", "10.0.0.3").replace("endpoints: [", "endpoints: [] #"),
        ),
        (
            "h1.yaml",
            virtual_service("h1", "h1.example.com", "c", &["/one"]),
        ),
        (
            "h2.yaml",
            virtual_service("h2", "h2.example.com", "c", &["/two"]),
        ),
        (
            "h3.yaml",
            virtual_service("h3", "h3.example.com", "a", &["/three"]),
        ),
    ];
    let said = check_steps(
        "warning-goes",
        &files,
        vec![
            // `c` gets an endpoint, then another VirtualService changes.
            step("c.yaml", slice("c", "10.0.0.3"), "endpoints", None),
            step(
                "h3.yaml",
                virtual_service("h3", "h3.example.com", "a", &["/three", "/drei"]),
                "routes",
                Some("h1.example.com"),
            ),
            // It loses it again, then another VirtualService changes.
            step(
                "c.yaml",
                slice("c", "10.0.0.3").replace("endpoints: [", "endpoints: [] #"),
                "endpoints",
                None,
            ),
            step(
                "h3.yaml",
                virtual_service("h3", "h3.example.com", "a", &["/three"]),
                "routes",
                Some("h1.example.com"),
            ),
            // The routes naming `c` go, one by one.
            step(
                "h1.yaml",
                virtual_service("h1", "h1.example.com", "a", &["/one"]),
                "routes",
                Some("h2.example.com"),
            ),
            step(
                "h2.yaml",
                virtual_service("h2", "h2.example.com", "a", &["/two"]),
                "routes",
                Some("h3.example.com"),
            ),
        ],
    )?;
    let warned = |step: usize| said.get(step).map(|d| saying(d, NO_ENDPOINTS));
    let h1 = vec!["VirtualService default/h1".to_owned()];
    assert_eq!(warned(1), Some(vec![]));
    assert_eq!(warned(3), Some(h1));
    assert_eq!(
        warned(4),
        Some(vec!["VirtualService default/h2".to_owned()])
    );
    assert_eq!(warned(5), Some(vec![]));
    Ok(())
}
