//! ServiceEntry hosts with `resolution: DNS` or `DNS_ROUND_ROBIN`: a resolver task, beside
//! the reload loop and never in the request path, looks their names up, again when each
//! answer's TTL runs out, and keeps the answers in `DnsAnswers`. A changed answer wakes the
//! reload loop, which patches the live snapshot's endpoint lists as it does for an
//! EndpointSlice change (no recompile): the next request, on a new connection or an open
//! one, goes to the new addresses. A failed lookup keeps the last good answer.
//!
//! As Envoy's cluster types that Istio picks: `DNS` is `STRICT_DNS` (every address an
//! endpoint), `DNS_ROUND_ROBIN` is `LOGICAL_DNS` (the first address of the latest answer).
//! The TTL is respected as Istio configures Envoy (`respect_dns_ttl`); a TTL of 0 means
//! Istio's default refresh rate.

use std::{
    collections::{BTreeSet, HashMap},
    net::{IpAddr, SocketAddr},
    path::Path,
    sync::{Arc, PoisonError, RwLock},
    time::Duration,
};

use futures::StreamExt as _;
use hickory_resolver::{
    TokioResolver, config::ResolverOpts, net::runtime::TokioRuntimeProvider,
    system_conf::parse_resolv_conf,
};
use thiserror::Error;
use tokio::{sync::watch, time::Instant};
use tracing::{debug, info, warn};

use crate::{
    metrics::{DnsLabels, Metrics},
    snapshot::{DnsPick, EndpointSource, Snapshot},
};

/// Istio's default `dnsRefreshRate`: how often a name whose answer has a TTL of 0 is
/// looked up again.
pub const DNS_REFRESH_RATE: Duration = Duration::from_secs(60);
/// How soon a failed (or empty) lookup is tried again; the last good answer serves
/// meanwhile.
pub const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(5);
/// Lookups in flight at once, so that thousands of names due together do not fill the
/// resolver's connection with more queries than it takes.
const MAX_CONCURRENT_LOOKUPS: usize = 16;
/// How long the start waits for the first answers before serving without them (Envoy
/// likewise warms DNS clusters before its listeners take traffic).
pub const FIRST_ANSWERS_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, Error)]
pub enum DnsError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("parsing {path}: {source}")]
    Parse {
        path: String,
        source: hickory_resolver::net::NetError,
    },
    #[error("building the resolver: {0}")]
    Build(hickory_resolver::net::NetError),
}

/// The last good answer for each name: what DNS clusters' endpoints are made of.
#[derive(Debug, Default)]
pub struct DnsAnswers(RwLock<HashMap<String, Arc<[IpAddr]>>>);

impl DnsAnswers {
    /// The addresses last found for `name`, in the order the server gave them.
    pub fn get(&self, name: &str) -> Option<Arc<[IpAddr]>> {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .cloned()
    }

    /// Records `name`'s answer; whether it differs from the one before.
    pub fn store(&self, name: &str, addresses: Vec<IpAddr>) -> bool {
        let mut answers = self.0.write().unwrap_or_else(PoisonError::into_inner);
        if answers.get(name).is_some_and(|a| **a == *addresses) {
            return false;
        }
        answers.insert(name.to_owned(), addresses.into());
        true
    }

    /// Forgets the names no cluster wants any more.
    fn retain(&self, wanted: &BTreeSet<String>) {
        self.0
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|name, _| wanted.contains(name));
    }
}

/// The endpoints a DNS cluster has with the answers known now; for other clusters, None.
pub fn endpoints_from(source: &EndpointSource, answers: &DnsAnswers) -> Option<Vec<SocketAddr>> {
    let EndpointSource::Dns {
        targets,
        pick,
        fixed,
    } = source
    else {
        return None;
    };
    let mut endpoints = fixed.clone();
    for target in targets {
        let Some(addresses) = answers.get(&target.name) else {
            continue;
        };
        let chosen = match pick {
            DnsPick::All => &addresses[..],
            DnsPick::First => &addresses[..addresses.len().min(1)],
        };
        endpoints.extend(chosen.iter().map(|ip| SocketAddr::new(*ip, target.port)));
    }
    if *pick == DnsPick::All {
        // Sorted, so that the same set in another order is no change.
        endpoints.sort_unstable();
        endpoints.dedup();
    }
    Some(endpoints)
}

/// `snapshot` with its DNS clusters' endpoints as `answers` have them (the routes,
/// listeners and other clusters' lists shared), or None when none changed.
pub fn apply_answers(snapshot: &Snapshot, answers: &DnsAnswers) -> Option<Snapshot> {
    let mut changed = false;
    let endpoints = snapshot
        .clusters
        .iter()
        .map(|cluster| {
            let before = snapshot
                .endpoints
                .get(cluster.id)
                .cloned()
                .unwrap_or_default();
            match endpoints_from(&cluster.endpoint_source, answers) {
                Some(after) if *after != *before => {
                    changed = true;
                    after.into()
                }
                _ => before,
            }
        })
        .collect();
    changed.then(|| Snapshot {
        listeners: Arc::clone(&snapshot.listeners),
        clusters: Arc::clone(&snapshot.clusters),
        endpoints,
        kernel: snapshot.kernel.clone(),
        report: Arc::clone(&snapshot.report),
    })
}

/// The names `snapshot`'s DNS clusters resolve.
pub fn wanted_names(snapshot: &Snapshot) -> BTreeSet<String> {
    snapshot
        .clusters
        .iter()
        .filter_map(|cluster| match &cluster.endpoint_source {
            EndpointSource::Dns { targets, .. } => Some(targets),
            _ => None,
        })
        .flatten()
        .map(|target| target.name.clone())
        .collect()
}

/// What one lookup gave.
enum Outcome {
    /// Addresses, valid for this long.
    Found(Vec<IpAddr>, Duration),
    /// The server says the name has no address (NXDOMAIN or no A/AAAA record): as Envoy,
    /// the cluster is left without endpoints.
    Empty,
    /// No answer (timeout, refused, server gone): the last good answer stays.
    Failed(String),
}

/// One name's place in the refresh schedule.
struct Scheduled {
    next: Instant,
    /// The last lookup failed (its failure was logged; the next are logged at debug).
    failing: bool,
}

/// Looks up the names the live snapshot wants and keeps `DnsAnswers` fresh.
pub struct Resolver {
    lookup: TokioResolver,
    answers: Arc<DnsAnswers>,
    metrics: Arc<Metrics>,
    schedule: HashMap<String, Scheduled>,
}

impl Resolver {
    /// A resolver configured by the resolv.conf at `path` (nameservers, search, ndots,
    /// timeout, attempts); `/etc/hosts` is read as the system resolver does.
    pub fn from_resolv_conf(
        path: &Path,
        answers: Arc<DnsAnswers>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, DnsError> {
        let text = std::fs::read(path).map_err(|source| DnsError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let (config, options) = parse_resolv_conf(text).map_err(|source| DnsError::Parse {
            path: path.display().to_string(),
            source,
        })?;
        Self::with_config(config, options, answers, metrics)
    }

    fn with_config(
        config: hickory_resolver::config::ResolverConfig,
        mut options: ResolverOpts,
        answers: Arc<DnsAnswers>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, DnsError> {
        // Answers are kept here, and looked up again only once they expire: a cache in
        // the resolver would only hand back what we hold.
        options.cache_size = 0;
        let lookup = TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
            .with_options(options)
            .build()
            .map_err(DnsError::Build)?;
        Ok(Resolver {
            lookup,
            answers,
            metrics,
            schedule: HashMap::new(),
        })
    }

    /// Looks up `names` now, waiting at most `FIRST_ANSWERS_WAIT`; true when an answer
    /// changed.
    pub async fn resolve_first(&mut self, names: &BTreeSet<String>) -> bool {
        self.want(names);
        tokio::time::timeout(FIRST_ANSWERS_WAIT, self.refresh_due())
            .await
            .unwrap_or(false)
    }

    /// Refreshes answers as their TTLs run out and looks up new names as soon as
    /// `wanted` names them; calls `changed` after answers change; returns when `shutdown`
    /// turns true.
    pub async fn run(
        mut self,
        mut wanted: watch::Receiver<Arc<BTreeSet<String>>>,
        changed: impl Fn(),
        mut shutdown: watch::Receiver<bool>,
    ) {
        let names = wanted.borrow_and_update().clone();
        self.want(&names);
        loop {
            if self.refresh_due().await {
                changed();
            }
            let wake = self
                .schedule
                .values()
                .map(|s| s.next)
                .min()
                .unwrap_or_else(|| Instant::now() + DNS_REFRESH_RATE);
            tokio::select! {
                _ = shutdown.wait_for(|stop| *stop) => return,
                result = wanted.changed() => {
                    if result.is_err() {
                        return;
                    }
                    let names = wanted.borrow_and_update().clone();
                    self.want(&names);
                }
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    /// Schedules new names now and forgets those no longer wanted.
    fn want(&mut self, names: &BTreeSet<String>) {
        let now = Instant::now();
        self.schedule.retain(|name, _| names.contains(name));
        for name in names {
            self.schedule
                .entry(name.clone())
                .or_insert_with(|| Scheduled {
                    next: now,
                    failing: false,
                });
        }
        self.answers.retain(names);
    }

    /// Looks up every name that is due; true when an answer changed.
    async fn refresh_due(&mut self) -> bool {
        let now = Instant::now();
        let due: Vec<String> = self
            .schedule
            .iter()
            .filter(|(_, s)| s.next <= now)
            .map(|(name, _)| name.clone())
            .collect();
        if due.is_empty() {
            return false;
        }
        let lookup = &self.lookup;
        let outcomes: Vec<(String, Outcome)> = futures::stream::iter(due)
            .map(|name| async move {
                let outcome = look_up(lookup, &name).await;
                (name, outcome)
            })
            .buffer_unordered(MAX_CONCURRENT_LOOKUPS)
            .collect()
            .await;
        let mut changed = false;
        for (name, outcome) in outcomes {
            changed |= self.record(&name, outcome);
        }
        changed
    }

    /// Keeps what a lookup of `name` gave, counts it, schedules the next; true when the
    /// answer changed.
    fn record(&mut self, name: &str, outcome: Outcome) -> bool {
        let now = Instant::now();
        let (result, next, changed) = match outcome {
            Outcome::Found(addresses, ttl) => {
                let refresh = match ttl.is_zero() {
                    true => DNS_REFRESH_RATE,
                    // Whole seconds, as TTLs are: no busy loop on an answer just expiring.
                    false => ttl.max(Duration::from_secs(1)),
                };
                let changed = self.answers.store(name, addresses.clone());
                if changed {
                    info!(host = name, ?addresses, next_lookup = ?refresh, "DNS answer changed");
                }
                ("success", now + refresh, changed)
            }
            Outcome::Empty => {
                let changed = self.answers.store(name, Vec::new());
                if changed {
                    warn!(
                        host = name,
                        "DNS: the name has no address now; its clusters have no endpoints"
                    );
                }
                ("empty", now + RETRY_AFTER_FAILURE, changed)
            }
            Outcome::Failed(error) => {
                let kept = self.answers.get(name).map_or(0, |a| a.len());
                let first = self.schedule.get(name).is_none_or(|s| !s.failing);
                if first {
                    warn!(
                        host = name,
                        error,
                        kept_addresses = kept,
                        "DNS lookup failed; the last good answer keeps serving"
                    );
                } else {
                    debug!(host = name, error, "DNS lookup failed again");
                }
                ("failure", now + RETRY_AFTER_FAILURE, false)
            }
        };
        self.metrics
            .dns_resolutions
            .get_or_create(&DnsLabels {
                host: name.to_owned(),
                result,
            })
            .inc();
        if let Some(scheduled) = self.schedule.get_mut(name) {
            scheduled.next = next;
            scheduled.failing = result == "failure";
        }
        changed
    }
}

async fn look_up(lookup: &TokioResolver, name: &str) -> Outcome {
    match lookup.lookup_ip(name).await {
        Ok(answer) => {
            let addresses: Vec<IpAddr> = answer.iter().collect();
            if addresses.is_empty() {
                return Outcome::Empty;
            }
            let ttl = answer
                .valid_until()
                .saturating_duration_since(std::time::Instant::now());
            Outcome::Found(addresses, ttl)
        }
        Err(e) if e.is_no_records_found() || e.is_nx_domain() => Outcome::Empty,
        Err(e) => Outcome::Failed(e.to_string()),
    }
}

#[cfg(test)]
mod tests;
