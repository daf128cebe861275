//! Prometheus metrics, named as Istio's gateway names them where Istio has a name
//! (`istio_requests_total`, ...) and `gateway_*` for what only this gateway has.
//! Kernel counters are read from the eBPF maps at scrape time.

use std::sync::{Arc, LazyLock, Mutex, OnceLock};

use arc_swap::ArcSwap;

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::{
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::Gauge,
        histogram::Histogram,
    },
    registry::Registry,
};

use gateway_ebpf::PortStats;
use prometheus_client::metrics::MetricType;

use crate::{ebpf::KernelPath, kubernetes::store::ClusterStore};

/// Istio's standard labels that mean something at a gateway.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub response_code: u16,
    pub response_flags: &'static str,
    pub request_protocol: &'static str,
    pub destination_service: String,
    pub destination_service_name: String,
    pub destination_service_namespace: String,
}

/// Istio's request counter and duration histogram for one label set.
#[derive(Clone, Debug)]
pub struct RequestStats {
    pub count: Counter,
    pub duration_ms: Histogram,
}

/// The label sets one destination has been seen with, resolved to their metrics once:
/// a request then finds its counter by status, flags and protocol in a short list
/// instead of cloning and hashing Istio's string labels every time. Requests only read
/// the list (no lock, nothing written that other workers read); a label set seen for
/// the first time copies it under `adding`.
#[derive(Debug, Default)]
pub struct RequestStatsCache {
    entries: ArcSwap<Vec<(RequestKey, RequestStats)>>,
    adding: Mutex<()>,
}

/// What varies between the requests to one destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestKey {
    pub response_code: u16,
    pub response_flags: &'static str,
    pub http2: bool,
}

/// Istio's `destination_service*` labels.
pub struct Destination<'a> {
    pub service: &'a str,
    pub name: &'a str,
    pub namespace: &'a str,
}

impl Destination<'static> {
    /// Requests the gateway answered itself (no route, no cluster).
    pub const UNKNOWN: Self = Destination {
        service: "unknown",
        name: "unknown",
        namespace: "unknown",
    };
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PortLabels {
    pub port: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InterfaceLabels {
    pub interface: String,
}

/// `result` = `success`, `partial` (applied except TLS credentials that did not load) or
/// `failure` (refused).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    pub result: &'static str,
}

/// Istio's buckets for request durations, in milliseconds.
const DURATION_BUCKETS_MS: [f64; 20] = [
    0.5,
    1.0,
    5.0,
    10.0,
    25.0,
    50.0,
    100.0,
    250.0,
    500.0,
    1000.0,
    2500.0,
    5000.0,
    10000.0,
    30000.0,
    60000.0,
    300000.0,
    600000.0,
    1800000.0,
    3600000.0,
    f64::MAX,
];

pub struct Metrics {
    pub registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub request_duration_ms: Family<RequestLabels, Histogram>,
    pub downstream_connections: Family<PortLabels, Counter>,
    /// Connections closed on a PROXY protocol listener for a missing, malformed or late
    /// header (Envoy's downstream_cx_proxy_proto_error).
    pub downstream_cx_proxy_proto_error: Family<PortLabels, Counter>,
    /// 1 per interface the programs are attached to.
    pub ebpf_attached: Family<InterfaceLabels, Gauge>,
    /// Times the kernel path could not be loaded or attached and userspace served alone.
    pub ebpf_fallbacks: Counter,
    /// Configuration reloads (file change or SIGHUP), by result.
    pub config_reloads: Family<ReloadLabels, Counter>,
    /// 1 when the last reload was applied in full, 0 when it was refused (the old config
    /// serves) or partial (some TLS credential did not load).
    pub config_last_reload_successful: Gauge,
    /// TLS connections by how their handshake ended (`success`, `failure`,
    /// `refused_sni`: no server accepts the ClientHello's name, refused before any crypto).
    pub tls_handshakes: Family<HandshakeLabels, Counter>,
    /// Compiles (start, reloads) in which a credential failed to load.
    pub tls_credential_errors: Family<CredentialLabels, Counter>,
    /// 1 when a credential's current version is served, 0 when it is broken (its last
    /// good version serves, or its server is not served).
    pub tls_credential_valid: Family<CredentialLabels, Gauge>,
    /// Requests whose body outgrew `--max-replay-body-bytes`: no more retries, no mirror
    /// (Envoy's `retry_or_shadow_abandoned`).
    pub retry_or_shadow_abandoned: Counter,
    /// Mirrored requests dropped instead of queued, by reason (`overflow`: too many in
    /// flight; `timeout`: the mirror did not answer in time; `body`: the body outgrew the
    /// replay copy).
    pub mirror_dropped: Family<MirrorDropLabels, Counter>,
    /// Downstream connections open now, all listeners (connections.rs).
    pub downstream_connections_active: Gauge,
    /// Times an accept loop stopped at `--max-connections` (Envoy's downstream_cx_overflow).
    pub downstream_cx_overflow: Counter,
    /// Access log lines dropped because stdout did not keep up (proxy/access_log.rs).
    pub access_log_dropped: Counter,
    /// Upgrades no route allows (anything but WebSocket) and CONNECT, answered 403
    /// (Envoy counts these in `downstream_rq_ws_on_non_ws_route`).
    pub upgrades_refused: Counter,
    /// AuthorizationPolicy decisions (`gateway_authz_decisions_total`).
    pub authz_decisions: AuthzDecisions,
    /// The cluster's watches (`--kubernetes`), set once they start; read at each scrape.
    pub cluster: Arc<OnceLock<Arc<ClusterStore>>>,
    /// Objects the live configuration leaves out for their errors (compile/isolate.rs).
    pub config_objects_dropped: Family<ObjectKindLabels, Gauge>,
    /// Lookups of ServiceEntry hosts (dns.rs), by host and result.
    pub dns_resolutions: Family<DnsLabels, Counter>,
}

/// `result` = `success`, `empty` (the name has no address: its clusters have no
/// endpoints) or `failure` (no answer: the last good one keeps serving).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DnsLabels {
    pub host: String,
    pub result: &'static str,
}

/// An object kind, by API group (empty for core) and kind: Istio's and Gateway API's
/// `Gateway` differ by group.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ObjectKindLabels {
    pub group: String,
    pub kind: String,
}

/// Access log lines dropped because stdout did not keep up: one count for the process, as
/// there is one log writer (proxy/access_log.rs counts, every `Metrics` reports it).
pub static ACCESS_LOG_DROPPED: LazyLock<Counter> = LazyLock::new(Counter::default);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuthzLabels {
    pub action: &'static str,
    pub decision: &'static str,
}

/// `gateway_authz_decisions_total`'s counters, made at start: a request counts its
/// decision without taking the family's lock.
pub struct AuthzDecisions {
    custom_deny: Counter,
    deny_deny: Counter,
    allow_allow: Counter,
    allow_deny: Counter,
    none_allow: Counter,
    audit: Counter,
}

impl AuthzDecisions {
    fn new(family: &Family<AuthzLabels, Counter>) -> Self {
        let counter = |action, decision| {
            family
                .get_or_create(&AuthzLabels { action, decision })
                .clone()
        };
        AuthzDecisions {
            custom_deny: counter("CUSTOM", "deny"),
            deny_deny: counter("DENY", "deny"),
            allow_allow: counter("ALLOW", "allow"),
            allow_deny: counter("ALLOW", "deny"),
            none_allow: counter("NONE", "allow"),
            audit: counter("AUDIT", "audit"),
        }
    }

    pub fn record(&self, verdict: &crate::authz::Verdict<'_>) {
        use crate::authz::DecidedBy;
        if verdict.audited.is_some() {
            self.audit.inc();
        }
        match verdict.decided_by {
            DecidedBy::Custom => &self.custom_deny,
            DecidedBy::Deny => &self.deny_deny,
            DecidedBy::Allow => &self.allow_allow,
            DecidedBy::NoAllowMatched => &self.allow_deny,
            DecidedBy::Default => &self.none_allow,
        }
        .inc();
    }
}

/// `credential` = `Secret namespace/name`, `Secret namespace/name (client CA)`,
/// `file PATH (key PATH)`, `file PATH (client CA)`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CredentialLabels {
    pub credential: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MirrorDropLabels {
    pub reason: &'static str,
}

/// Failed upstream TLS handshakes by cluster and reason. Counted where the handshake
/// fails (`proxy/upstream_tls.rs`), which requests, mirrors and TCP routes all reach
/// without the request context; every `Metrics` registers this one family.
pub static UPSTREAM_TLS_HANDSHAKE_ERRORS: std::sync::LazyLock<Family<UpstreamTlsLabels, Counter>> =
    std::sync::LazyLock::new(Family::default);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamTlsLabels {
    pub cluster: String,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandshakeLabels {
    pub port: u16,
    pub result: &'static str,
}

/// The kernel path as the metrics collector sees it: absent when eBPF is off or failed.
pub type SharedKernelPath = Arc<Mutex<Option<KernelPath>>>;

impl Metrics {
    pub fn new(kernel: SharedKernelPath) -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "istio_requests",
            "Requests served, by response code and destination",
            requests.clone(),
        );
        let request_duration_ms = Family::<RequestLabels, Histogram>::new_with_constructor(
            (|| Histogram::new(DURATION_BUCKETS_MS)) as fn() -> Histogram,
        );
        registry.register(
            "istio_request_duration_milliseconds",
            "Time from request headers to response headers",
            request_duration_ms.clone(),
        );
        let downstream_connections = Family::<PortLabels, Counter>::default();
        registry.register(
            "gateway_downstream_connections",
            "Connections accepted, by listener bind port",
            downstream_connections.clone(),
        );
        let downstream_cx_proxy_proto_error = Family::<PortLabels, Counter>::default();
        registry.register(
            "gateway_downstream_cx_proxy_proto_error",
            "Connections closed on a PROXY protocol listener without a valid header in time, by bind port",
            downstream_cx_proxy_proto_error.clone(),
        );
        let ebpf_attached = Family::<InterfaceLabels, Gauge>::default();
        registry.register(
            "gateway_ebpf_attached",
            "1 when the XDP program is attached to the interface",
            ebpf_attached.clone(),
        );
        let ebpf_fallbacks = Counter::default();
        registry.register(
            "gateway_ebpf_fallbacks",
            "Times the kernel path could not be used and userspace served alone",
            ebpf_fallbacks.clone(),
        );
        let config_reloads = Family::<ReloadLabels, Counter>::default();
        registry.register(
            "gateway_config_reloads",
            "Configuration reloads, by result (partial: applied except TLS credentials that did not load; failure: the last good configuration kept serving)",
            config_reloads.clone(),
        );
        let config_last_reload_successful = Gauge::default();
        config_last_reload_successful.set(1);
        registry.register(
            "gateway_config_last_reload_successful",
            "1 when the last reload was applied in full, 0 when it was refused or partial",
            config_last_reload_successful.clone(),
        );
        let tls_handshakes = Family::<HandshakeLabels, Counter>::default();
        registry.register(
            "gateway_tls_handshakes",
            "TLS connections by handshake result (refused_sni: refused from the ClientHello, before any crypto)",
            tls_handshakes.clone(),
        );
        registry.register(
            "gateway_upstream_tls_handshake_errors",
            "Upstream TLS handshakes (DestinationRule tls origination) that failed, by cluster and reason (certificate_untrusted, certificate_expired, name_mismatch, peer_alert, not_tls, closed, timeout, unconfigured, handshake_failure)",
            UPSTREAM_TLS_HANDSHAKE_ERRORS.clone(),
        );
        let tls_credential_errors = Family::<CredentialLabels, Counter>::default();
        registry.register(
            "gateway_tls_credential_errors",
            "Loads of a TLS credential (Secret or file) that failed: bad PEM, a key that does not match, missing",
            tls_credential_errors.clone(),
        );
        let tls_credential_valid = Family::<CredentialLabels, Gauge>::default();
        registry.register(
            "gateway_tls_credential_valid",
            "1 when the credential's current version is served, 0 when it is broken (its last good version serves, or its server is not served)",
            tls_credential_valid.clone(),
        );
        let retry_or_shadow_abandoned = Counter::default();
        registry.register(
            "gateway_retry_or_shadow_abandoned",
            "Requests whose body outgrew the replay copy (--max-replay-body-bytes): forwarded once, without retries or mirrors",
            retry_or_shadow_abandoned.clone(),
        );
        let mirror_dropped = Family::<MirrorDropLabels, Counter>::default();
        registry.register(
            "gateway_mirror_requests_dropped",
            "Mirrored requests dropped, by reason (overflow: too many in flight; timeout; body: larger than the replay copy)",
            mirror_dropped.clone(),
        );
        let downstream_connections_active = Gauge::default();
        registry.register(
            "gateway_downstream_connections_active",
            "Downstream connections open now, all listeners",
            downstream_connections_active.clone(),
        );
        let downstream_cx_overflow = Counter::default();
        registry.register(
            "gateway_downstream_cx_overflow",
            "Times the listeners stopped accepting at --max-connections (new connections waited in the backlog)",
            downstream_cx_overflow.clone(),
        );
        let access_log_dropped = ACCESS_LOG_DROPPED.clone();
        registry.register(
            "gateway_access_log_dropped",
            "Access log lines dropped because stdout did not keep up",
            access_log_dropped.clone(),
        );
        let upgrades_refused = Counter::default();
        registry.register(
            "gateway_upgrades_refused",
            "Requests answered 403 for an upgrade no route allows (anything but WebSocket) or a CONNECT",
            upgrades_refused.clone(),
        );
        let authz_family = Family::<AuthzLabels, Counter>::default();
        registry.register(
            "gateway_authz_decisions",
            "AuthorizationPolicy decisions on requests and connections, by the action that decided (CUSTOM, DENY, ALLOW, NONE: no policy matched and none is ALLOW; AUDIT: an audit or dry-run policy matched) and the decision",
            authz_family.clone(),
        );
        let authz_decisions = AuthzDecisions::new(&authz_family);
        let config_objects_dropped = Family::<ObjectKindLabels, Gauge>::default();
        registry.register(
            "gateway_config_objects_dropped",
            "Objects the live configuration leaves out because they have errors (everything else is served), by group and kind",
            config_objects_dropped.clone(),
        );
        let dns_resolutions = Family::<DnsLabels, Counter>::default();
        registry.register(
            "gateway_dns_resolutions",
            "DNS lookups of ServiceEntry hosts, by host and result (failure: no answer, the last good one keeps serving; empty: the name has no address)",
            dns_resolutions.clone(),
        );
        registry.register_collector(Box::new(KernelCollector { kernel }));
        let cluster = Arc::new(OnceLock::new());
        registry.register_collector(Box::new(ClusterCollector {
            cluster: cluster.clone(),
        }));
        Metrics {
            registry,
            requests,
            request_duration_ms,
            downstream_connections,
            downstream_cx_proxy_proto_error,
            ebpf_attached,
            ebpf_fallbacks,
            config_reloads,
            config_last_reload_successful,
            tls_handshakes,
            tls_credential_errors,
            tls_credential_valid,
            retry_or_shadow_abandoned,
            mirror_dropped,
            downstream_connections_active,
            downstream_cx_overflow,
            access_log_dropped,
            upgrades_refused,
            authz_decisions,
            cluster,
            config_objects_dropped,
            dns_resolutions,
        }
    }

    /// Sets `gateway_config_objects_dropped` to what the configuration just applied drops.
    pub fn report_dropped(&self, dropped: &[crate::compile::DroppedObject]) {
        self.config_objects_dropped.clear();
        for d in dropped {
            self.config_objects_dropped
                .get_or_create(&ObjectKindLabels {
                    group: d.object.group.clone(),
                    kind: d.object.kind.clone(),
                })
                .inc();
        }
    }

    /// The request metrics of `key` at `destination`, created on first use and cached.
    /// Counts one request of `key` at `destination` and records its duration, in the
    /// metrics resolved for that label set on first use.
    pub fn record_request(
        &self,
        cache: &RequestStatsCache,
        destination: &Destination<'_>,
        key: RequestKey,
        duration_ms: f64,
    ) {
        let record = |stats: &RequestStats| {
            stats.count.inc();
            stats.duration_ms.observe(duration_ms);
        };
        let find = |entries: &[(RequestKey, RequestStats)]| {
            entries
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, s)| record(s))
        };
        if find(&cache.entries.load()).is_some() {
            return;
        }
        let _adding = cache
            .adding
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if find(&cache.entries.load()).is_some() {
            return;
        }
        let labels = RequestLabels {
            response_code: key.response_code,
            response_flags: key.response_flags,
            request_protocol: if key.http2 { "grpc_or_http2" } else { "http" },
            destination_service: destination.service.to_owned(),
            destination_service_name: destination.name.to_owned(),
            destination_service_namespace: destination.namespace.to_owned(),
        };
        let stats = RequestStats {
            count: self.requests.get_or_create(&labels).clone(),
            duration_ms: self.request_duration_ms.get_or_create(&labels).clone(),
        };
        record(&stats);
        let mut entries = Vec::clone(&cache.entries.load());
        entries.push((key, stats));
        cache.entries.store(Arc::new(entries));
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!(error = %e, "encoding metrics");
        }
        out
    }
}

/// Each watch of the Kubernetes API, read from the cluster store at scrape time.
#[derive(Debug)]
struct ClusterCollector {
    cluster: Arc<OnceLock<Arc<ClusterStore>>>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WatchLabels {
    kind: String,
    namespace: String,
}

impl Collector for ClusterCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(cluster) = self.cluster.get() else {
            return Ok(());
        };
        let health = cluster.health();
        let labelled: Vec<_> = health
            .iter()
            .map(|h| {
                let labels = WatchLabels {
                    kind: h.kind.clone(),
                    namespace: h.namespace.clone().unwrap_or_default(),
                };
                (labels, h)
            })
            .collect();
        for (name, help, value) in [
            (
                "gateway_kubernetes_watch_synced",
                "1 once the watch's first list has completed",
                (|h| i64::from(h.synced)) as fn(&crate::kubernetes::store::StreamHealth) -> i64,
            ),
            (
                "gateway_kubernetes_watch_healthy",
                "1 while the watch is streaming; 0 from an error until it recovers (the last good objects keep serving)",
                |h| i64::from(h.healthy),
            ),
            (
                "gateway_kubernetes_objects",
                "Objects the watch holds",
                |h| i64::try_from(h.objects).unwrap_or(i64::MAX),
            ),
        ] {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (labels, h) in &labelled {
                prometheus_client::metrics::gauge::ConstGauge::new(value(h))
                    .encode(family.encode_family(labels)?)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "gateway_kubernetes_watch_errors",
            "Errors of the watch (each is retried with backoff)",
            None,
            MetricType::Counter,
        )?;
        for (labels, h) in &labelled {
            ConstCounter::new(h.errors).encode(family.encode_family(labels)?)?;
        }
        Ok(())
    }
}

#[derive(Debug)]
struct KernelCollector {
    kernel: SharedKernelPath,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HelloLabels {
    port: u16,
    verdict: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UnpolicedLabels {
    port: u16,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

impl Collector for KernelCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Ok(guard) = self.kernel.lock() else {
            return Ok(());
        };
        let Some(kernel) = guard.as_ref() else {
            return Ok(());
        };
        {
            let mut family = encoder.encode_descriptor(
                "gateway_kernel_unpoliced_ports",
                "1 for each gateway port whose SNI the kernel filter does not check (userspace still does), by reason: sni_map_full or policy_write_failed (a failed policy write: fail open), wildcard_too_deep",
                None,
                MetricType::Gauge,
            )?;
            for (port, why) in kernel.unpoliced_ports() {
                let labels = UnpolicedLabels {
                    port: *port,
                    reason: why.name(),
                };
                prometheus_client::metrics::gauge::ConstGauge::new(1i64)
                    .encode(family.encode_family(&labels)?)?;
            }
        }
        ConstCounter::new(kernel.policy_write_failures()).encode(encoder.encode_descriptor(
            "gateway_kernel_policy_write_failures",
            "Kernel policy writes that failed in part or in full and left ports unpoliced (fail open)",
            None,
            MetricType::Counter,
        )?)?;
        if let Ok(global) = kernel.global_stats() {
            let mut family = encoder.encode_descriptor(
                "gateway_kernel_packets",
                "Packets the XDP program ran on, by header-parsing outcome",
                None,
                MetricType::Counter,
            )?;
            for (counter, value) in global {
                let labels = OutcomeLabels {
                    outcome: counter.name(),
                };
                ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
            }
        }
        if let Ok(ports) = kernel.port_stats() {
            for (name, help, pick) in [
                (
                    "gateway_kernel_port_packets",
                    "Packets to a gateway port, seen by the XDP program",
                    (|s| s.packets) as fn(&PortStats) -> u64,
                ),
                (
                    "gateway_kernel_port_bytes",
                    "Bytes to a gateway port, seen by the XDP program",
                    |s| s.bytes,
                ),
                (
                    "gateway_kernel_source_denied_syns",
                    "SYNs dropped in the kernel because the port's AuthorizationPolicies deny their source address",
                    |s| s.syns_denied,
                ),
            ] {
                let mut family =
                    encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
                for (port, stats) in &ports {
                    ConstCounter::new(pick(stats))
                        .encode(family.encode_family(&PortLabels { port: *port })?)?;
                }
            }
            let mut family = encoder.encode_descriptor(
                "gateway_kernel_client_hellos",
                "ClientHellos on TLS ports judged by the kernel: accepted, rejected (reset in the kernel), undecided (passed to userspace), reject_retransmit",
                None,
                MetricType::Counter,
            )?;
            for (port, stats) in &ports {
                for (verdict, value) in [
                    ("accepted", stats.hellos_accepted),
                    ("rejected", stats.hellos_rejected),
                    ("undecided", stats.hellos_undecided),
                    ("reject_retransmit", stats.reject_retransmits),
                ] {
                    let labels = HelloLabels {
                        port: *port,
                        verdict,
                    };
                    ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
                }
            }
        }
        Ok(())
    }
}
