//! Leader election on a `coordination.k8s.io/v1` Lease with client-go's LeaseLock
//! semantics, so that of many gatewayd pods exactly one writes Gateway API status.
//!
//! The Lease's resourceVersion is the fence: every take-over and renewal is a PUT with the
//! resourceVersion last read, so of two candidates only one wins (the other gets 409).
//! Expiry is judged with our own monotonic clock from the moment we last saw the Lease
//! change, never by comparing our wall clock with the holder's `renewTime`.

use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::{Api, Client};
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::watch;
use tokio::time::{Instant, sleep, timeout};

/// `--lease-name` when none is given.
pub const DEFAULT_LEASE_NAME: &str = "gatewayd-status-leader";
/// How long a candidate waits, from its last sight of a change, before taking over a
/// Lease whose holder stopped renewing.
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
/// How long the leader keeps trying to renew before it stops writing. Shorter than
/// `LEASE_DURATION`, so that the old leader has stopped before anyone can take over.
pub const RENEW_DEADLINE: Duration = Duration::from_secs(10);
/// Time between two attempts to acquire or renew.
pub const RETRY_PERIOD: Duration = Duration::from_secs(2);
/// client-go's JitterFactor: candidates wait 1 to 2.2 retry periods, so that pods started
/// together do not ask the API server in lockstep.
const RETRY_JITTER: f64 = 1.2;

/// The election's periods; `Timing::default()` is client-go's and the issue's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            lease_duration: LEASE_DURATION,
            renew_deadline: RENEW_DEADLINE,
            retry_period: RETRY_PERIOD,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("Lease {lease}: {source}")]
    Api {
        lease: String,
        #[source]
        source: kube::Error,
    },
    #[error("Lease {lease}: another candidate wrote it first (409 Conflict)")]
    Conflict { lease: String },
    #[error("Lease {lease}: no answer from the API server within the renew deadline")]
    Timeout { lease: String },
}

/// What one attempt found.
#[derive(Debug, PartialEq, Eq)]
enum Attempt {
    /// We hold the Lease now (acquired or renewed).
    Leading,
    /// Another candidate holds a Lease that has not expired.
    HeldBy(String),
}

/// The Lease as we last saw it change, by our own clock.
#[derive(Debug)]
struct Observed {
    resource_version: String,
    at: Instant,
    lease_duration: Duration,
}

/// Takes part in the election until shut down; see [`Elector::run`].
pub struct Elector {
    api: Api<Lease>,
    namespace: String,
    name: String,
    identity: String,
    timing: Timing,
    leader: watch::Sender<bool>,
    leader_gauge: Gauge,
    observed: Option<Observed>,
    /// The Lease as our last successful write left it: renewals PUT it back with a new
    /// renewTime without reading it first (client-go's fast path); a 409 sends us back to
    /// reading.
    ours: Option<Lease>,
    last_renewed: Option<Instant>,
}

/// This pod's identity in the Lease: the pod name from the downward API (`POD_NAME`),
/// else hostname and pid (outside Kubernetes, or a manifest without the downward API).
pub fn default_identity() -> String {
    if let Ok(pod) = std::env::var("POD_NAME")
        && !pod.is_empty()
    {
        return pod;
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "gatewayd".to_owned());
    format!("{host}_{}", std::process::id())
}

impl Elector {
    /// An elector for Lease `namespace/lease_name`, and the receiver that tells whether we
    /// lead (false until the first acquisition).
    pub fn new(
        client: Client,
        namespace: &str,
        lease_name: &str,
        identity: String,
    ) -> (Self, watch::Receiver<bool>) {
        let (leader, leader_rx) = watch::channel(false);
        let elector = Elector {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_owned(),
            name: lease_name.to_owned(),
            identity,
            timing: Timing::default(),
            leader,
            leader_gauge: Gauge::default(),
            observed: None,
            ours: None,
            last_renewed: None,
        };
        (elector, leader_rx)
    }

    pub fn with_timing(mut self, timing: Timing) -> Self {
        self.timing = timing;
        self
    }

    /// 1 while we lead, 0 otherwise: for the metrics registry.
    pub fn leader_gauge(&self) -> Gauge {
        self.leader_gauge.clone()
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    pub fn is_leader(&self) -> bool {
        *self.leader.borrow()
    }

    /// Acquires and renews until `shutdown` completes, then releases the Lease if we hold
    /// it, so that the next candidate takes over at once (client-go's ReleaseOnCancel).
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) {
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            let attempt = tokio::select! {
                () = &mut shutdown => break,
                attempt = self.attempt() => attempt,
            };
            let wait = self.settle(attempt);
            tokio::select! {
                () = &mut shutdown => break,
                () = sleep(wait) => {}
            }
        }
        self.release().await;
    }

    /// One acquire-or-renew, bounded by what is left of the renew deadline.
    async fn attempt(&mut self) -> Result<Attempt, LeaseError> {
        let budget = match self.last_renewed {
            Some(at) if self.is_leader() => self.timing.renew_deadline.saturating_sub(at.elapsed()),
            _ => self.timing.renew_deadline,
        };
        match timeout(budget, self.try_acquire_or_renew()).await {
            Ok(attempt) => attempt,
            Err(_) => Err(LeaseError::Timeout {
                lease: self.lease(),
            }),
        }
    }

    /// Updates leadership from an attempt's result; returns the time until the next one.
    fn settle(&mut self, attempt: Result<Attempt, LeaseError>) -> Duration {
        let now = Instant::now();
        match attempt {
            Ok(Attempt::Leading) => {
                self.last_renewed = Some(now);
                self.set_leader(true);
                self.timing.retry_period
            }
            Ok(Attempt::HeldBy(holder)) => {
                if self.is_leader() {
                    tracing::warn!(lease = %self.lease(), %holder, "another pod holds the lease: no longer leader");
                }
                self.set_leader(false);
                // Try again the moment the holder's lease would expire, if that comes
                // before the next retry: take-over then takes at most one lease duration
                // after we noticed the last renewal.
                let retry = jittered(self.timing.retry_period);
                let expiry = self
                    .observed
                    .as_ref()
                    .and_then(|seen| seen.at.checked_add(seen.lease_duration));
                match expiry {
                    Some(expiry) => {
                        retry.min(expiry.saturating_duration_since(now) + Duration::from_millis(1))
                    }
                    None => retry,
                }
            }
            Err(error) if self.is_leader() => {
                let deadline_passed = self
                    .last_renewed
                    .is_none_or(|at| now.duration_since(at) >= self.timing.renew_deadline);
                if deadline_passed {
                    tracing::warn!(%error, "lease not renewed within the renew deadline: no longer leader");
                    self.set_leader(false);
                } else {
                    tracing::debug!(%error, "lease renewal failed, retrying");
                }
                self.timing.retry_period
            }
            Err(error) => {
                tracing::debug!(%error, "lease acquisition failed, retrying");
                jittered(self.timing.retry_period)
            }
        }
    }

    async fn try_acquire_or_renew(&mut self) -> Result<Attempt, LeaseError> {
        let now = Timestamp::now();
        if self.is_leader()
            && let Some(ours) = &self.ours
        {
            let mut renewed = ours.clone();
            if let Some(spec) = renewed.spec.as_mut() {
                spec.renew_time = Some(MicroTime(now));
            }
            match self
                .api
                .replace(&self.name, &PostParams::default(), &renewed)
                .await
            {
                Ok(written) => {
                    self.wrote(written);
                    return Ok(Attempt::Leading);
                }
                // Someone wrote it since our renewal: read it.
                Err(error) if is_conflict(&error) => {}
                Err(source) => return Err(self.api_error(source)),
            }
        }
        let current = self
            .api
            .get_opt(&self.name)
            .await
            .map_err(|source| self.api_error(source))?;
        let Some(mut current) = current else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    namespace: Some(self.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(next_record(&self.identity, &self.timing, None, now)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(created) => {
                    self.wrote(created);
                    Ok(Attempt::Leading)
                }
                Err(error) if is_conflict(&error) => Err(self.conflict()),
                Err(source) => Err(self.api_error(source)),
            };
        };
        let spec = current.spec.take().unwrap_or_default();
        let seen_at = self.observe(&current.metadata, &spec);
        if let Some(holder) =
            held_by_other(&spec, &self.identity, seen_at, Instant::now(), &self.timing)
        {
            return Ok(Attempt::HeldBy(holder.to_owned()));
        }
        current.spec = Some(next_record(&self.identity, &self.timing, Some(spec), now));
        match self
            .api
            .replace(&self.name, &PostParams::default(), &current)
            .await
        {
            Ok(written) => {
                self.wrote(written);
                Ok(Attempt::Leading)
            }
            Err(error) if is_conflict(&error) => Err(self.conflict()),
            Err(source) => Err(self.api_error(source)),
        }
    }

    /// Notes the Lease's resourceVersion; returns when we first saw this version.
    fn observe(&mut self, metadata: &ObjectMeta, spec: &LeaseSpec) -> Instant {
        let version = metadata.resource_version.clone().unwrap_or_default();
        match &self.observed {
            Some(seen) if seen.resource_version == version => seen.at,
            _ => {
                let at = Instant::now();
                self.observed = Some(Observed {
                    resource_version: version,
                    at,
                    lease_duration: lease_duration(spec, &self.timing),
                });
                at
            }
        }
    }

    fn wrote(&mut self, lease: Lease) {
        let spec = lease.spec.clone().unwrap_or_default();
        self.observed = None;
        self.observe(&lease.metadata, &spec);
        self.ours = Some(lease);
    }

    /// Gives the Lease up if we hold it: no holder and a one-second duration, so that the
    /// next candidate takes it at its next attempt.
    async fn release(&mut self) {
        let held = self.is_leader() || self.ours.is_some();
        self.set_leader(false);
        if !held {
            return;
        }
        match timeout(self.timing.retry_period, self.give_up()).await {
            Ok(Ok(true)) => tracing::info!(lease = %self.lease(), "released the lease"),
            Ok(Ok(false)) => {}
            Ok(Err(error)) => tracing::warn!(%error, "could not release the lease"),
            Err(_) => tracing::warn!(lease = %self.lease(), "could not release the lease in time"),
        }
    }

    async fn give_up(&self) -> Result<bool, LeaseError> {
        let current = self
            .api
            .get_opt(&self.name)
            .await
            .map_err(|source| self.api_error(source))?;
        let Some(mut current) = current else {
            return Ok(false);
        };
        let spec = current.spec.take().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(false);
        }
        let now = MicroTime(Timestamp::now());
        current.spec = Some(LeaseSpec {
            holder_identity: Some(String::new()),
            lease_duration_seconds: Some(1),
            renew_time: Some(now.clone()),
            acquire_time: Some(now),
            ..spec
        });
        match self
            .api
            .replace(&self.name, &PostParams::default(), &current)
            .await
        {
            Ok(_) => Ok(true),
            Err(error) if is_conflict(&error) => Err(self.conflict()),
            Err(source) => Err(self.api_error(source)),
        }
    }

    fn set_leader(&self, leading: bool) {
        let changed = self.leader.send_if_modified(|current| {
            let changed = *current != leading;
            *current = leading;
            changed
        });
        self.leader_gauge.set(i64::from(leading));
        if changed && leading {
            tracing::info!(lease = %self.lease(), identity = %self.identity, "acquired the lease: this pod writes status");
        } else if changed {
            tracing::info!(lease = %self.lease(), identity = %self.identity, "no longer leader: this pod stops writing status");
        }
    }

    fn lease(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    fn api_error(&self, source: kube::Error) -> LeaseError {
        LeaseError::Api {
            lease: self.lease(),
            source,
        }
    }

    fn conflict(&self) -> LeaseError {
        LeaseError::Conflict {
            lease: self.lease(),
        }
    }
}

/// The spec we write to hold the Lease: a renewal keeps acquireTime and the transition
/// count, a take-over starts a new term.
fn next_record(
    identity: &str,
    timing: &Timing,
    previous: Option<LeaseSpec>,
    now: Timestamp,
) -> LeaseSpec {
    let previous = previous.unwrap_or_default();
    let renewing = previous.holder_identity.as_deref() == Some(identity);
    let transitions = previous.lease_transitions.unwrap_or(0);
    LeaseSpec {
        holder_identity: Some(identity.to_owned()),
        lease_duration_seconds: Some(whole_seconds(timing.lease_duration)),
        renew_time: Some(MicroTime(now)),
        acquire_time: if renewing {
            previous.acquire_time.clone().or(Some(MicroTime(now)))
        } else {
            Some(MicroTime(now))
        },
        lease_transitions: Some(if renewing || previous.holder_identity.is_none() {
            transitions
        } else {
            transitions.saturating_add(1)
        }),
        ..previous
    }
}

/// The holder, when someone else holds the Lease and it has not expired: the holder's
/// duration has not passed since we saw the Lease change (`seen_at`).
fn held_by_other<'a>(
    spec: &'a LeaseSpec,
    identity: &str,
    seen_at: Instant,
    now: Instant,
    timing: &Timing,
) -> Option<&'a str> {
    let holder = spec.holder_identity.as_deref().filter(|h| !h.is_empty())?;
    if holder == identity {
        return None;
    }
    // A duration too large for the clock never expires rather than overflowing.
    let unexpired = seen_at
        .checked_add(lease_duration(spec, timing))
        .is_none_or(|expiry| now < expiry);
    unexpired.then_some(holder)
}

/// The holder's lease duration; ours when the Lease does not say.
fn lease_duration(spec: &LeaseSpec, timing: &Timing) -> Duration {
    match spec.lease_duration_seconds {
        Some(seconds) if seconds > 0 => Duration::from_secs(seconds.unsigned_abs().into()),
        _ => timing.lease_duration,
    }
}

fn whole_seconds(duration: Duration) -> i32 {
    i32::try_from(duration.as_secs().max(1)).unwrap_or(i32::MAX)
}

fn jittered(period: Duration) -> Duration {
    period.mul_f64(1.0 + fastrand::f64() * RETRY_JITTER)
}

/// 409: a compare-and-swap lost (Conflict) or a create raced (AlreadyExists).
pub(crate) fn is_conflict(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 409 || status.is_conflict() || status.is_already_exists())
}

#[cfg(test)]
#[path = "lease_tests.rs"]
mod tests;
