//! `gatewayd`: the command line. `run` serves; `validate` and `routes` load and compile
//! the same configuration and report on it without serving.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::PathBuf,
    process::ExitCode,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::{Context as _, bail};
use arc_swap::ArcSwap;
use clap::{Args, Parser, Subcommand};
use gateway::{
    admin::{self, AdminState, Surface},
    compile::{self, Identity},
    config::{self, Diagnostics},
    connections,
    dns::{self, DnsAnswers},
    ebpf::{EbpfMode, KernelHook, KernelPath},
    kubernetes::{
        self, WatchOptions,
        lease::{self, Elector},
        status::{self, Owner},
        status_writer::StatusWriter,
        store::ClusterStore,
    },
    listeners::ListenerSet,
    logging::{self, LogLevel},
    metrics::{InterfaceLabels, Metrics, SharedKernelPath},
    proxy::{AccessLogFormat, Limits, ProxyContext},
    reload::{ChangeWatch, CompileCache, ConfigSource, ReloadError, Reloader},
    runtime::Live,
    snapshot::{RouteAction, Snapshot, Transport},
    tls::TlsState,
    workers::{self, Workers},
};
use tokio::{signal::unix::SignalKind, sync::watch};
use tracing::{error, info, warn};

/// mimalloc's thread-local free lists: the proxy allocates per request, and glibc's
/// malloc/free were a fifth of its instructions. The `system-allocator` feature leaves
/// glibc's in place, for heap profilers that intercept malloc (heaptrack, valgrind).
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static ALLOCATOR: MiMalloc = MiMalloc;

/// mimalloc, asked for plain blocks whenever a plain block is aligned enough.
///
/// The `mimalloc` crate's allocator passes every request to `mi_malloc_aligned`, and
/// mimalloc 3 serves a block over 1 KiB (a header map's entries, a read buffer, a boxed
/// future) through its over-allocating aligned path unless the block's size is a power of
/// two: a slower allocation, and a slower free of every block on that page. Every block
/// mimalloc hands out is aligned to a word at least, so requests for no more than that
/// (nearly all of them) take `mi_malloc`.
#[cfg(not(feature = "system-allocator"))]
struct MiMalloc;

#[cfg(not(feature = "system-allocator"))]
const WORD: usize = std::mem::size_of::<usize>();

#[cfg(not(feature = "system-allocator"))]
// SAFETY: each function hands the request to mimalloc's matching entry point; blocks from
// `mi_malloc`/`mi_zalloc`/`mi_realloc` are word-aligned, so they are used only for layouts
// needing no more, and `mi_free` frees blocks of either kind.
unsafe impl std::alloc::GlobalAlloc for MiMalloc {
    #[inline]
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        use libmimalloc_sys::{mi_malloc, mi_malloc_aligned};
        // SAFETY: plain FFI calls with the layout's size and (power-of-two) alignment.
        unsafe {
            if layout.align() <= WORD {
                mi_malloc(layout.size()).cast()
            } else {
                mi_malloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        use libmimalloc_sys::{mi_zalloc, mi_zalloc_aligned};
        // SAFETY: as in `alloc`.
        unsafe {
            if layout.align() <= WORD {
                mi_zalloc(layout.size()).cast()
            } else {
                mi_zalloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: std::alloc::Layout) {
        // SAFETY: `ptr` came from this allocator (GlobalAlloc's contract).
        unsafe { libmimalloc_sys::mi_free(ptr.cast()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        use libmimalloc_sys::{mi_realloc, mi_realloc_aligned};
        // SAFETY: `ptr` came from this allocator with `layout` (GlobalAlloc's contract).
        unsafe {
            if layout.align() <= WORD {
                mi_realloc(ptr.cast(), new_size).cast()
            } else {
                mi_realloc_aligned(ptr.cast(), new_size, layout.align()).cast()
            }
        }
    }
}

#[derive(Parser)]
#[command(
    name = "gatewayd",
    version,
    about = "eBPF-assisted ingress gateway for Istio and Gateway API configuration"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once at start-up: the size of the `run` variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Serve the configuration.
    Run(RunArgs),
    /// Load and compile; print diagnostics. Exit 0 when clean or only warnings, 1 on errors.
    Validate(ConfigArgs),
    /// Print the compiled listeners and route tables.
    Routes {
        #[command(flatten)]
        config: ConfigArgs,
        /// Print the compiled snapshot as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
struct ConfigArgs {
    /// YAML files or directories (read recursively); repeat or list several. With
    /// --kubernetes, merged with the cluster's objects.
    #[arg(long, required_unless_present = "kubernetes", num_args = 1..)]
    config: Vec<PathBuf>,
    /// Follow the Kubernetes API: Istio and Gateway API resources, Services,
    /// EndpointSlices, Namespaces and Secrets.
    #[arg(long)]
    kubernetes: bool,
    /// The cluster to follow [default: in-cluster service account, else $KUBECONFIG].
    #[arg(long, value_name = "PATH", requires = "kubernetes")]
    kubeconfig: Option<PathBuf>,
    /// Only these namespaces' objects are watched [default: all].
    #[arg(
        long,
        value_name = "NS,...",
        value_delimiter = ',',
        requires = "kubernetes"
    )]
    watch_namespaces: Vec<String>,
    /// Secrets are read from the gateway's namespace and these (`*`: all), for Gateway
    /// API certificateRefs that a ReferenceGrant allows across namespaces.
    #[arg(
        long,
        value_name = "NS,...",
        value_delimiter = ',',
        requires = "kubernetes"
    )]
    secret_namespaces: Vec<String>,
    /// Labels of this gateway's pods, matched against Gateway selectors.
    /// Default: istio=ingressgateway.
    #[arg(long = "selector", value_name = "KEY=VALUE", value_parser = parse_label)]
    selectors: Vec<(String, String)>,
    /// The gateway's own namespace.
    #[arg(long, default_value = compile::DEFAULT_NAMESPACE)]
    namespace: String,
    /// GatewayClass whose Gateway API Gateways are ours.
    #[arg(long, default_value = compile::DEFAULT_GATEWAY_CLASS)]
    gateway_class: String,
    /// GatewayClasses whose spec.controllerName is this are ours too; route status
    /// entries carry it.
    #[arg(long, default_value = compile::DEFAULT_CONTROLLER_NAME)]
    controller_name: String,
    /// Listeners whose connections come from a load balancer that sends the PROXY
    /// protocol (v1 or v2) first: `all`, or Gateway ports (`443,8443`). Our Service's
    /// `proxy.istio.io/config` annotation with `gatewayTopology.proxyProtocol` turns it
    /// on for every listener too.
    #[arg(long, value_name = "all|PORT,...")]
    proxy_protocol: Option<gateway::proxy_protocol::ProxyProtocolPorts>,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Interfaces to attach the kernel programs to.
    #[arg(long = "interface", value_name = "IFACE")]
    interfaces: Vec<String>,
    /// auto: attach where possible, else serve from userspace with a warning; on: attach or
    /// fail; off: no eBPF.
    #[arg(long, value_enum, default_value_t = EbpfMode::Auto)]
    ebpf: EbpfMode,
    /// Where the kernel filter runs on each interface: XDP (native where the driver has
    /// it) or TC ingress.
    #[arg(long, value_enum, default_value_t = KernelHook::Xdp)]
    ebpf_hook: KernelHook,
    /// Steer our Service's node ports to the listeners (arrives with the kernel-path work).
    #[arg(long)]
    node_ports: bool,
    /// Local admin endpoint (/config_dump).
    #[arg(long, default_value = "127.0.0.1:15000")]
    admin_addr: SocketAddr,
    /// Readiness endpoint (/healthz/ready).
    #[arg(long, default_value = "0.0.0.0:15021")]
    readiness_addr: SocketAddr,
    /// Prometheus endpoint (/stats/prometheus).
    #[arg(long, default_value = "0.0.0.0:15090")]
    metrics_addr: SocketAddr,
    /// How long in-flight requests may take to finish on SIGTERM (e.g. 5s, 500ms, 1m).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    drain_timeout: Duration,
    /// On SIGTERM, report not ready but keep accepting for this long first, so load
    /// balancers and kube-proxy stop sending new connections before the listeners close.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    drain_delay: Duration,
    /// Time a client gets to finish a request head once it has begun (408, then close)
    /// [default: 10s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    header_read_timeout: Option<Duration>,
    /// A keep-alive connection with no request in flight is closed after this long
    /// (Envoy's idle_timeout) [default: 60m].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    idle_timeout: Option<Duration>,
    /// Largest request body: a declared length above it gets 413 before anything is
    /// forwarded; a chunked body that grows past it is cut off [default: unlimited].
    #[arg(long, value_name = "BYTES")]
    max_request_body_bytes: Option<u64>,
    /// An HTTP stream (request body, response body, upgraded connection) with no bytes
    /// either way for this long is closed (Envoy's stream_idle_timeout) [default: 5m].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    stream_idle_timeout: Option<Duration>,
    /// A TCP or TLS-passthrough stream with no bytes either way for this long is closed
    /// (Envoy's tcp_proxy idle_timeout) [default: 1h].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    tcp_idle_timeout: Option<Duration>,
    /// On PROXY protocol listeners, a connection whose header is not complete within
    /// this long is closed (Envoy's listener_filters_timeout) [default: 15s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    proxy_protocol_timeout: Option<Duration>,
    /// Largest request body kept to replay for retries and mirrors; a longer body is
    /// forwarded once, without retries [default: 32768].
    #[arg(long, value_name = "BYTES")]
    max_replay_body_bytes: Option<u64>,
    /// What the replay copies of all requests of one client connection (an HTTP/2
    /// connection's streams) may hold together; a request whose copy does not fit is
    /// forwarded once, without retries [default: 4 × --max-replay-body-bytes].
    #[arg(long, value_name = "BYTES")]
    max_replay_bytes_per_connection: Option<u64>,
    /// Downstream connections served at once; beyond it new connections wait in the
    /// kernel's backlog [default: sized from the descriptor limit].
    #[arg(long, value_name = "N")]
    max_connections: Option<usize>,
    /// Proxies in front of the gateway that append to x-forwarded-for (Istio's
    /// `gatewayTopology.numTrustedProxies`, Envoy's `xff_num_trusted_hops`):
    /// AuthorizationPolicy `remoteIpBlocks` and `remote.ip` read the client address this
    /// many entries from the right of x-forwarded-for; 0 reads the peer address.
    #[arg(long, value_name = "N", default_value_t = 0)]
    num_trusted_proxies: usize,
    /// Which HTTP/1 server answers downstream connections: hyper's behind the framing
    /// guard, or the gateway's own codec (issue 15; HTTP/2 stays with hyper either way).
    #[arg(long, value_enum, default_value_t = gateway::proxy::Http1Server::Own)]
    http1_server: gateway::proxy::Http1Server,
    /// How request paths are normalized before routing and authorization, as Istio's
    /// mesh `pathNormalization`: `base` (its default: dot segments, unreserved escapes,
    /// backslashes), `merge-slashes` (also `//` → `/`), `decode-and-merge-slashes` (also
    /// `%2F`/`%5C` decoded first).
    #[arg(long, value_enum, default_value_t = gateway::proxy::PathNormalization::Base)]
    path_normalization: gateway::proxy::PathNormalization,
    /// Which HTTP/1 client carries requests to HTTP/1.1 upstreams: hyper's, or the
    /// gateway's own codec (issue 15; HTTP/2 upstreams stay with hyper either way).
    #[arg(long, value_enum, default_value_t = gateway::proxy::Http1Client::Own)]
    http1_client: gateway::proxy::Http1Client,
    /// Also reload when these change (nothing is loaded from them): e.g. the directory of
    /// the certificate files a Gateway names with serverCertificate/privateKey.
    #[arg(long, value_name = "PATH", num_args = 1..)]
    watch: Vec<PathBuf>,
    /// Access log format on stdout.
    #[arg(long, value_enum, default_value_t = AccessLogFormat::Text)]
    access_log: AccessLogFormat,
    /// Log as JSON lines instead of human-readable text (on stderr).
    #[arg(long)]
    log_json: bool,
    /// With --kubernetes: write Gateway API status (only the pod holding the Lease writes).
    #[arg(long, value_enum, default_value_t = StatusMode::On)]
    status: StatusMode,
    /// The Lease (in the gateway's namespace) that elects the pod writing status.
    #[arg(long, default_value = lease::DEFAULT_LEASE_NAME)]
    lease_name: String,
    /// Threads serving traffic (default: one per CPU); 1 for comparisons with
    /// single-worker nginx/HAProxy.
    #[arg(long, value_name = "N")]
    worker_threads: Option<usize>,
    /// Where the resolver that looks up ServiceEntry hosts (`resolution: DNS`,
    /// `DNS_ROUND_ROBIN`) finds its nameservers, search domains and options.
    #[arg(long, value_name = "PATH", default_value = "/etc/resolv.conf")]
    resolv_conf: PathBuf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum StatusMode {
    On,
    Off,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run(args),
        Command::Validate(args) => validate(&args),
        Command::Routes { config, json } => routes(&config, json),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("gatewayd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

impl ConfigArgs {
    fn identity(&self) -> Identity {
        let mut identity = Identity {
            namespace: self.namespace.clone(),
            gateway_class: self.gateway_class.clone(),
            controller_name: self.controller_name.clone(),
            proxy_protocol: self.proxy_protocol.clone().unwrap_or_default(),
            ..Identity::default()
        };
        if !self.selectors.is_empty() {
            identity.labels = self.selectors.iter().cloned().collect::<BTreeMap<_, _>>();
        }
        identity
    }

    /// What the first load and every reload compile: the same paths and identity, and
    /// one TLS state.
    fn source(&self) -> ConfigSource {
        ConfigSource {
            paths: self.config.clone(),
            identity: self.identity(),
            tls: Default::default(),
            cluster: None,
            dns: None,
        }
    }

    fn watch_options(&self) -> WatchOptions {
        WatchOptions {
            namespaces: self.watch_namespaces.clone(),
            own_namespace: self.namespace.clone(),
            secret_namespaces: self.secret_namespaces.clone(),
        }
    }

    /// Starts following the cluster into `store` and waits for the first list of every
    /// kind it serves.
    async fn follow_cluster(
        &self,
        client: kube::Client,
        store: Arc<ClusterStore>,
    ) -> anyhow::Result<()> {
        tokio::spawn(kubernetes::follow(
            client,
            self.watch_options(),
            store.clone(),
        ));
        info!("waiting for the first list of every watched kind");
        store.wait_synced().await;
        info!(objects = ?store.counts(), "the cluster's objects are listed");
        Ok(())
    }

    /// load → validate → compile, every diagnostic kept (what a linter reports).
    fn compile(&self, tls: &TlsState) -> anyhow::Result<(Snapshot, Diagnostics, usize)> {
        let (resources, mut diagnostics) = self.load()?;
        let skipped = resources.skipped.values().sum();
        let (snapshot, more) = compile::compile_with(&resources, &self.identity(), tls);
        diagnostics.extend(more);
        Ok((snapshot, diagnostics, skipped))
    }

    /// The files' objects and, with --kubernetes, the cluster's (listed once).
    fn load(&self) -> anyhow::Result<(config::Resources, Diagnostics)> {
        let (mut resources, mut diagnostics) = config::load(&self.config)?;
        if self.kubernetes {
            // validate and routes: one list of the cluster, then done.
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let store = Arc::new(ClusterStore::new(|| {}));
            runtime.block_on(async {
                let client = kubernetes::client(self.kubeconfig.as_ref()).await?;
                tokio::time::timeout(
                    CLUSTER_LIST_TIMEOUT,
                    self.follow_cluster(client, store.clone()),
                )
                .await
                .context("listing the cluster's objects took too long")?
            })?;
            let (objects, more) = store.resources();
            resources.append(objects);
            diagnostics.extend(more);
        }
        Ok((resources, diagnostics))
    }

    /// load → compile as a running gateway does: objects with errors are dropped; Err
    /// with the diagnostics when an error names no object (nothing can be served).
    fn compile_isolating(
        &self,
        tls: &TlsState,
    ) -> anyhow::Result<(Result<compile::Isolated, Diagnostics>, usize)> {
        let (resources, diagnostics) = self.load()?;
        let skipped = resources.skipped.values().sum();
        let isolated =
            compile::compile_isolating(&resources, diagnostics, &self.identity(), tls, None);
        Ok((isolated, skipped))
    }
}

fn validate(args: &ConfigArgs) -> anyhow::Result<ExitCode> {
    let (snapshot, diagnostics, skipped) = args.compile(&TlsState::default())?;
    print!("{diagnostics}");
    // What a running gateway would serve: Gateway API acceptance as status would say it,
    // and the objects it would drop (a linter still fails on any error).
    match args.compile_isolating(&TlsState::default())?.0 {
        Ok(isolated) => {
            print!("{}", isolated.snapshot.report);
            for d in &isolated.dropped {
                println!(
                    "a running gateway would drop {} ({}): {}",
                    d.object,
                    d.object.qualified_kind(),
                    d.reason()
                );
            }
        }
        Err(_) => {
            print!("{}", snapshot.report);
            println!(
                "a running gateway would refuse this configuration: some errors name no object (unreadable or invalid YAML, no apiVersion/kind/name)"
            );
        }
    }
    // The kernel filter's limits: what a running gateway would leave to userspace.
    let kernel_warnings = gateway::ebpf::policy_warnings(&snapshot.kernel);
    for warning in &kernel_warnings {
        println!("warning: {warning}");
    }
    let errors = diagnostics.errors().count();
    let warnings = diagnostics.warnings().count() + kernel_warnings.len();
    let routes: usize = snapshot
        .listeners
        .iter()
        .flat_map(|l| &l.routes.virtual_hosts)
        .map(|v| v.routes.len())
        .sum();
    println!(
        "{} listener(s), {routes} route(s); {errors} error(s), {warnings} warning(s); {skipped} document(s) of kinds not served skipped",
        snapshot.listeners.len()
    );
    Ok(if errors > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn routes(args: &ConfigArgs, json: bool) -> anyhow::Result<ExitCode> {
    let tls = TlsState::default();
    let (snapshot, diagnostics, _) = args.compile(&tls)?;
    if diagnostics.has_errors() {
        eprint!("{diagnostics}");
        return Ok(ExitCode::FAILURE);
    }
    // Hosts that will not be served for want of a credential: say so, on stderr.
    let credentials = tls.credentials.staged_report();
    for d in diagnostics.warnings().filter(|d| credentials.is_problem(d)) {
        eprintln!("{d}");
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&snapshot)?);
        return Ok(ExitCode::SUCCESS);
    }
    print!("{}", snapshot.report);
    for listener in snapshot.listeners.iter() {
        let node_port = listener
            .node_port
            .map_or_else(String::new, |n| format!(", nodePort {n}"));
        println!(
            "listener port {} ({:?}) bound on {}{node_port}; servers: {}",
            listener.port,
            listener.protocol,
            listener.bind_port,
            listener.servers.join(", ")
        );
        if let Some(Transport::Tls(tls)) = listener.transport.as_deref() {
            for server in &tls.servers {
                for credential in &server.credentials {
                    let stale = credential.stale.as_ref().map_or_else(String::new, |e| {
                        format!(" (LAST GOOD VERSION: the current one fails: {e})")
                    });
                    println!(
                        "  tls {} [{}]: {}: {}{stale}",
                        server.name,
                        server.hosts.join(", "),
                        credential.name,
                        credential.certificate
                    );
                }
            }
        }
        for vhost in &listener.routes.virtual_hosts {
            println!("  host {}", vhost.host);
            for (index, route) in vhost.routes.iter().enumerate() {
                let matches = if route.matches.is_empty() {
                    "any request".to_owned()
                } else {
                    serde_json::to_string(&route.matches)?
                };
                println!("    [{index}] {} when {matches}", route.name);
                match &route.action {
                    RouteAction::Forward(forward) => {
                        for c in &forward.clusters {
                            let endpoints: Vec<String> = snapshot
                                .endpoints_of(&c.cluster)
                                .iter()
                                .map(ToString::to_string)
                                .collect();
                            let endpoints = if endpoints.is_empty() {
                                "NO ENDPOINTS (503)".to_owned()
                            } else {
                                endpoints.join(" ")
                            };
                            println!(
                                "        → {} weight {}: {endpoints}",
                                c.cluster.name, c.weight
                            );
                        }
                    }
                    RouteAction::Redirect(redirect) => {
                        println!("        → redirect {}", redirect.status)
                    }
                    RouteAction::DirectResponse(direct) => {
                        println!("        → direct response {}", direct.status)
                    }
                    RouteAction::Unsupported(what) => {
                        println!("        → 501 (`{what}` not served yet)")
                    }
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// How long `validate --kubernetes` and `routes --kubernetes` wait for the cluster.
const CLUSTER_LIST_TIMEOUT: Duration = Duration::from_secs(30);

/// How long releasing the status Lease may take at exit.
const LEASE_RELEASE_TIMEOUT: Duration = Duration::from_secs(2);

/// How long the access log may take to reach stdout at exit.
const ACCESS_LOG_FLUSH: Duration = Duration::from_secs(1);

fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    // SIGHUP's default action kills: ignored until the reload loop's handler replaces
    // this (first thing in `serve`), a SIGHUP while starting is harmless.
    // SAFETY: setting a signal's disposition to SIG_IGN has no preconditions.
    unsafe { libc::signal(libc::SIGHUP, libc::SIG_IGN) };
    let log_level = logging::init(args.log_json);
    let descriptors = match connections::raise_descriptor_limit() {
        Ok(limit) => {
            info!(
                was = limit.was,
                now = limit.now,
                "descriptor limit (RLIMIT_NOFILE)"
            );
            limit.now
        }
        Err(e) => {
            warn!(error = %e, "the descriptor limit could not be raised");
            connections::soft_descriptor_limit().unwrap_or(1024)
        }
    };
    // The main thread's runtime runs the control plane (reloads, admin, signals); the
    // traffic runs on the workers (workers.rs).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(serve(args, log_level, descriptors))
}

async fn serve(args: RunArgs, log_level: LogLevel, descriptors: u64) -> anyhow::Result<ExitCode> {
    // Watching starts before the first compile: a change that lands while we start is
    // reloaded once the reload loop runs, and SIGHUP is handled from here on.
    let changes = ChangeWatch::start(&[args.config.config.as_slice(), &args.watch].concat())?;
    let kernel: SharedKernelPath = Arc::new(Mutex::new(None));
    let mut metrics = Metrics::new(kernel.clone());
    let client = match args.config.kubernetes {
        true => Some(kubernetes::client(args.config.kubeconfig.as_ref()).await?),
        false => None,
    };
    // Status: every pod runs the election; only the leader writes.
    let status_parts = match (&client, args.status) {
        (Some(client), StatusMode::On) => {
            let (elector, leader) = Elector::new(
                client.clone(),
                &args.config.namespace,
                &args.lease_name,
                lease::default_identity(),
            );
            metrics.registry.register(
                "gateway_status_leader",
                "1 while this pod holds the Lease that elects the Gateway API status writer",
                elector.leader_gauge(),
            );
            let writer = StatusWriter::new(client.clone(), &args.config.controller_name, leader);
            writer.metrics().register(&mut metrics.registry);
            Some((elector, writer))
        }
        _ => None,
    };
    let metrics = Arc::new(metrics);
    let limits = limits(&args);
    // Probes and metrics answer from the start, with nothing to serve yet (readiness 503
    // until the first configuration is compiled and its listeners bound).
    let live = Arc::new(ArcSwap::from_pointee(Live::new(Arc::new(
        Snapshot::default(),
    ))));
    let ready = Arc::new(AtomicBool::new(false));
    let mut admin_state = AdminState {
        ready: ready.clone(),
        metrics: metrics.clone(),
        live: live.clone(),
        log_level: Some(log_level),
        head_timeout: limits.header_read_timeout,
        cluster: None,
    };
    let mut source = args.config.source();
    if args.config.kubernetes {
        let store = Arc::new(ClusterStore::new(changes.cluster_waker()));
        let _ = metrics.cluster.set(store.clone());
        admin_state.cluster = Some(store.clone());
        source.cluster = Some(store);
    }
    // Probes get their own thread: a flood of scrapes cannot delay them.
    admin::serve_on_own_thread(args.readiness_addr, Surface::Readiness, admin_state.clone())
        .with_context(|| format!("binding the readiness endpoint {}", args.readiness_addr))?;
    for (addr, surface) in [
        (args.metrics_addr, Surface::Metrics),
        (args.admin_addr, Surface::Admin),
    ] {
        for listener in
            admin::bind(addr).with_context(|| format!("binding {surface:?} endpoint {addr}"))?
        {
            tokio::spawn(admin::serve(listener, surface, admin_state.clone()));
        }
    }
    if let (Some(store), Some(client)) = (&source.cluster, &client) {
        args.config
            .follow_cluster(client.clone(), store.clone())
            .await?;
    }
    let dns_answers = Arc::new(DnsAnswers::default());
    source.dns = Some(dns_answers.clone());
    let mut resolver = match dns::Resolver::from_resolv_conf(
        &args.resolv_conf,
        dns_answers,
        metrics.clone(),
    ) {
        Ok(resolver) => Some(resolver),
        Err(e) => {
            warn!(error = %e, "!!! no DNS resolver: ServiceEntry hosts with DNS resolution have no endpoints (503)");
            None
        }
    };
    let compile_cache: Arc<Mutex<CompileCache>> = Default::default();
    let first =
        source.compile_first(&mut compile_cache.lock().unwrap_or_else(PoisonError::into_inner));
    let (snapshot, diagnostics) = match first {
        Ok(compiled) => compiled,
        Err(ReloadError::Invalid(diagnostics)) => {
            for d in diagnostics.errors() {
                error!("{d}");
            }
            bail!(
                "the configuration has errors that name no object (see compile::isolate); nothing to serve"
            );
        }
        Err(e) => return Err(e.into()),
    };
    // As Envoy warms DNS clusters before taking traffic: the first answers, briefly.
    let dns_names = dns::wanted_names(&snapshot);
    let snapshot = match (&mut resolver, &source.dns) {
        (Some(resolver), Some(answers)) if !dns_names.is_empty() => {
            resolver.resolve_first(&dns_names).await;
            dns::apply_answers(&snapshot, answers).unwrap_or(snapshot)
        }
        _ => snapshot,
    };
    gateway::reload::log_diagnostics(&diagnostics, &source.tls.credentials.staged_report());
    compile::isolate::log_dropped(&snapshot.report.dropped);
    metrics.report_dropped(&snapshot.report.dropped);
    info!(
        listeners = snapshot.listeners.len(),
        "configuration compiled"
    );

    if args.ebpf != EbpfMode::Off {
        let kernel_path = start_kernel_path(
            &args.interfaces,
            args.ebpf_hook,
            args.node_ports,
            &snapshot,
            &metrics,
        );
        match kernel_path {
            Ok(mut path) => {
                if args.node_ports {
                    path.enable_node_port_mode();
                }
                if let Ok(mut slot) = kernel.lock() {
                    *slot = Some(path);
                }
                tokio::spawn(gateway::ebpf::addresses::keep_gateway_addresses(
                    kernel.clone(),
                ));
            }
            Err(e) if args.ebpf == EbpfMode::Auto => {
                metrics.ebpf_fallbacks.inc();
                warn!(
                    "!!! eBPF kernel path unavailable, serving from userspace only (no kernel counters, no early SNI rejection): {e:#}"
                );
            }
            Err(e) => return Err(e.context("--ebpf on: the kernel path is required")),
        }
    }

    live.store(Arc::new(Live::new(Arc::new(snapshot))));
    compile_cache
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .applied();
    gateway::reload::report_credentials(&metrics, &source.tls.credentials.commit());
    let max_connections = limits
        .max_connections
        .unwrap_or_else(|| connections::default_max_connections(descriptors));
    info!(max_connections, "downstream connection limit");
    let ctx = Arc::new(
        ProxyContext::new(live.clone(), metrics.clone(), args.access_log)
            .with_limits(limits)
            .with_connection_limit(max_connections)
            .with_num_trusted_proxies(args.num_trusted_proxies)
            .with_http1_server(args.http1_server)
            .with_http1_client(args.http1_client)
            .with_path_normalization(args.path_normalization),
    );
    let workers = Workers::start(args.worker_threads.unwrap_or_else(workers::default_count))?;
    info!(workers = workers.len(), "worker threads started");
    for worker in workers.handles() {
        worker.spawn(gateway::proxy::sweep_upstream_pools(ctx.clone()));
    }
    let listeners = Arc::new(ListenerSet::new(
        ctx,
        workers.handles().to_vec(),
        args.drain_timeout,
    ));
    let bound = listeners.bind_new(&live.load().snapshot).await?;
    listeners.start(bound, &live.load().snapshot);
    if args.node_ports {
        let steered = kernel.lock().is_ok_and(|k| k.is_some());
        match gateway::reload::steer_node_ports(&kernel, &live.load().snapshot, &listeners) {
            Ok(()) if steered => {
                info!(node_ports = ?live.load().snapshot.kernel.node_ports, "node ports steered to the listeners")
            }
            Ok(()) => warn!(
                "--node-ports needs the kernel path (sk_lookup), which is unavailable: node ports are not served"
            ),
            Err(e) => {
                return Err(anyhow::Error::new(e).context("--node-ports: steering node ports"));
            }
        }
    }
    let (shutdown, shutdown_rx) = watch::channel(false);
    let stopping = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let (reports, reports_rx) = watch::channel(live.load().snapshot.report.clone());
    let (dns_names_tx, dns_names_rx) = watch::channel(Arc::new(dns_names));
    let mut election = None;
    if let (Some((elector, writer)), Some(client), Some(store)) =
        (status_parts, client, source.cluster.clone())
    {
        info!(
            identity = elector.identity(),
            lease = args.lease_name,
            "status: running for leader"
        );
        election = Some(tokio::spawn(elector.run(stopping(shutdown_rx.clone()))));
        let (desired, desired_rx) = watch::channel(Arc::new(Vec::new()));
        let owner = Owner {
            namespace: args.config.namespace.clone(),
            labels: args.config.identity().labels,
        };
        tokio::spawn(status::publish(client, store, owner, reports_rx, desired));
        tokio::spawn(writer.run(desired_rx, stopping(shutdown_rx.clone())));
    }
    let reloader = Reloader {
        source,
        live: live.clone(),
        retired: Default::default(),
        listeners: listeners.clone(),
        kernel: kernel.clone(),
        metrics: metrics.clone(),
        compile_cache,
        reports: Some(reports),
        dns_names: Some(dns_names_tx),
    };
    if let Some(resolver) = resolver {
        tokio::spawn(resolver.run(dns_names_rx, changes.dns_waker(), shutdown_rx.clone()));
    }
    let reloading = tokio::spawn(reloader.watch(changes, shutdown_rx));
    ready.store(true, Ordering::Relaxed);
    info!("ready");

    wait_for_termination().await?;
    ready.store(false, Ordering::Relaxed);
    if !args.drain_delay.is_zero() {
        info!(drain_delay = ?args.drain_delay, "not ready; still accepting while load balancers catch up");
        tokio::time::sleep(args.drain_delay).await;
    }
    info!(drain_timeout = ?args.drain_timeout, "shutting down: not ready, no new connections, draining");
    let _ = shutdown.send(true);
    let _ = reloading.await;
    if let Some(election) = election {
        // Released, so that another pod takes over at once instead of after the lease.
        let _ = tokio::time::timeout(LEASE_RELEASE_TIMEOUT, election).await;
    }
    listeners.shutdown().await;
    // Dropping the kernel path closes its links: the programs detach.
    if let Ok(mut slot) = kernel.lock() {
        slot.take();
    }
    info!("stopped");
    gateway::proxy::flush_access_log(ACCESS_LOG_FLUSH);
    Ok(ExitCode::SUCCESS)
}

fn start_kernel_path(
    interfaces: &[String],
    hook: KernelHook,
    node_ports: bool,
    snapshot: &Snapshot,
    metrics: &Metrics,
) -> anyhow::Result<KernelPath> {
    let mut path = KernelPath::load_with(node_ports)?;
    if let Some(logger) = path.take_logger() {
        tokio::spawn(gateway::ebpf::forward_program_logs(logger));
    }
    // Before attaching, so the first packets are judged with the node's addresses.
    path.set_gateway_addresses(&gateway::ebpf::addresses::local_addresses()?)?;
    path.apply_policy(&snapshot.kernel)?;
    path.log_unpoliced();
    for interface in interfaces {
        let how = path.attach(interface, hook)?;
        metrics
            .ebpf_attached
            .get_or_create(&InterfaceLabels {
                interface: interface.clone(),
            })
            .set(1);
        info!(interface, %how, ports = ?snapshot.kernel.ports, "kernel filter attached");
    }
    if interfaces.is_empty() {
        info!("eBPF loaded; no --interface given, so nothing is attached");
    }
    Ok(path)
}

async fn wait_for_termination() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => info!("SIGTERM"),
        _ = int.recv() => info!("SIGINT"),
    }
    Ok(())
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

/// The request limits the flags set, defaults for the rest.
fn limits(args: &RunArgs) -> Limits {
    let defaults = Limits::default();
    let max_replay_body_bytes = args
        .max_replay_body_bytes
        .unwrap_or(defaults.max_replay_body_bytes);
    Limits {
        header_read_timeout: args
            .header_read_timeout
            .unwrap_or(defaults.header_read_timeout),
        idle_timeout: args.idle_timeout.unwrap_or(defaults.idle_timeout),
        max_request_body_bytes: args.max_request_body_bytes,
        stream_idle_timeout: args
            .stream_idle_timeout
            .unwrap_or(defaults.stream_idle_timeout),
        tcp_idle_timeout: args.tcp_idle_timeout.unwrap_or(defaults.tcp_idle_timeout),
        max_replay_body_bytes,
        // Four whole copies of whatever the per-request copy is.
        max_replay_bytes_per_connection: args
            .max_replay_bytes_per_connection
            .unwrap_or(max_replay_body_bytes.saturating_mul(4)),
        max_connections: args.max_connections,
        proxy_protocol_timeout: args
            .proxy_protocol_timeout
            .unwrap_or(defaults.proxy_protocol_timeout),
    }
}

/// `500ms`, `5s`, `2m`, `1h`, or plain seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let (number, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map_or((s, "s"), |i| s.split_at(i));
    let n: u64 = number
        .parse()
        .map_err(|_| format!("expected a duration like 5s or 500ms, got {s:?}"))?;
    match unit {
        "ms" => Some(Duration::from_millis(n)),
        "s" => Some(Duration::from_secs(n)),
        "m" => n.checked_mul(60).map(Duration::from_secs),
        "h" => n.checked_mul(60 * 60).map(Duration::from_secs),
        _ => return Err(format!("unknown unit {unit:?} in {s:?}: use ms, s, m or h")),
    }
    .ok_or_else(|| format!("duration {s:?} is too long"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_labels_parse() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("5d").is_err());
        assert!(parse_duration(&format!("{}h", u64::MAX)).is_err());
        assert_eq!(
            parse_label("istio=ingressgateway"),
            Ok(("istio".into(), "ingressgateway".into()))
        );
        assert!(parse_label("novalue").is_err());
    }
}
