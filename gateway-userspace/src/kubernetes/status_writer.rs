//! Writes Gateway API status (GatewayClass, Gateway, routes' `parents[]`) while this pod
//! leads: read-modify-write of each object's `/status` with its resourceVersion, merged
//! as merge.rs says, skipped when nothing changes, throttled by a token bucket.
//!
//! A 409 gets one immediate re-read and retry; a second one waits for the next desired
//! status (the next event) rather than looping against another writer.

mod desired;
mod merge;
mod token_bucket;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, DynamicObject, PostParams};
use kube::core::TypeMeta;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::{counter::Counter, family::Family};
use prometheus_client::registry::Registry;
use serde_json::Value;
use tokio::sync::watch;
use tokio::time::{Instant, sleep, sleep_until};

pub use desired::{
    Condition, ConditionStatus, Desired, DesiredStatus, GATEWAY_API_GROUP, GatewayAddress,
    GatewayStatus, ListenerStatus, MAX_GATEWAY_ADDRESSES, MAX_ROUTE_PARENTS, ParentRef,
    RouteGroupKind, RouteParentStatus, gateway_api_resource,
};
pub use merge::{MergeContext, merge_status};

use super::lease::is_conflict;
use token_bucket::TokenBucket;

/// `--controller-name` when none is given.
pub const DEFAULT_CONTROLLER_NAME: &str = "gatewayd.dev/gateway-controller";
/// Sustained status writes per second.
pub const WRITES_PER_SECOND: f64 = 10.0;
/// Writes allowed at once after a quiet period (a reload that changes many routes).
pub const WRITE_BURST: u32 = 20;
/// After a round that left conflicts or errors, try again this much later even when no
/// event comes.
pub const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum StatusWriteError {
    #[error("{kind} {object}: {source}")]
    Api {
        kind: String,
        object: String,
        #[source]
        source: kube::Error,
    },
}

/// What one [`StatusWriter::apply`] did, object by object.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriteSummary {
    pub written: usize,
    /// The object already carried the desired status.
    pub unchanged: usize,
    /// 409 twice: left for the next event.
    pub conflicts: usize,
    /// The object no longer exists.
    pub gone: usize,
    pub errors: usize,
    /// Not written because this pod does not lead (or stopped leading midway).
    pub not_leader: usize,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WriteResultLabels {
    pub result: &'static str,
}

/// Counters for the metrics registry (`gateway_status_writes_total{result}`).
#[derive(Clone, Debug, Default)]
pub struct StatusMetrics {
    pub writes: Family<WriteResultLabels, Counter>,
}

impl StatusMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "gateway_status_writes",
            "Gateway API status updates by result (written; unchanged: nothing to write; conflict: 409 after a re-read, retried on the next event; not_found: the object is gone; error)",
            self.writes.clone(),
        );
    }

    fn count(&self, result: &'static str) {
        self.writes
            .get_or_create(&WriteResultLabels { result })
            .inc();
    }
}

#[derive(Debug)]
enum Outcome {
    Written,
    Unchanged,
    Conflict,
    Gone,
    NotLeader,
}

pub struct StatusWriter {
    client: Client,
    controller_name: String,
    leader: watch::Receiver<bool>,
    bucket: TokenBucket,
    metrics: StatusMetrics,
}

impl StatusWriter {
    /// A writer for `controller_name` that writes only while `leader` says true.
    pub fn new(
        client: Client,
        controller_name: impl Into<String>,
        leader: watch::Receiver<bool>,
    ) -> Self {
        StatusWriter {
            client,
            controller_name: controller_name.into(),
            leader,
            bucket: TokenBucket::new(WRITES_PER_SECOND, WRITE_BURST, Instant::now()),
            metrics: StatusMetrics::default(),
        }
    }

    pub fn metrics(&self) -> StatusMetrics {
        self.metrics.clone()
    }

    /// Brings every object's status to `desired`, one object after the other.
    pub async fn apply(&mut self, desired: &[DesiredStatus]) -> WriteSummary {
        self.apply_until(desired, || false).await
    }

    /// Writes the latest `desired` whenever it changes, and all of it again whenever this
    /// pod becomes leader, until `shutdown` completes. A newer `desired` interrupts a
    /// round that the token bucket slows down, so stale statuses are not written.
    pub async fn run(
        mut self,
        mut desired: watch::Receiver<Arc<Vec<DesiredStatus>>>,
        shutdown: impl Future<Output = ()>,
    ) {
        let mut shutdown = std::pin::pin!(shutdown);
        let mut leader = self.leader.clone();
        loop {
            let latest = Arc::clone(&desired.borrow_and_update());
            let mut retry_at = None;
            if *leader.borrow_and_update() {
                let newer = desired.clone();
                let summary = tokio::select! {
                    () = &mut shutdown => break,
                    summary = self.apply_until(&latest, || newer.has_changed().unwrap_or(true)) => summary,
                };
                retry_at = (summary.conflicts + summary.errors > 0)
                    .then(|| Instant::now() + RETRY_AFTER_FAILURE);
            }
            tokio::select! {
                () = &mut shutdown => break,
                changed = desired.changed() => if changed.is_err() { break },
                changed = leader.changed() => if changed.is_err() { break },
                () = sleep_until(retry_at.unwrap_or_else(Instant::now)), if retry_at.is_some() => {}
            }
        }
    }

    async fn apply_until(
        &mut self,
        desired: &[DesiredStatus],
        superseded: impl Fn() -> bool,
    ) -> WriteSummary {
        let mut summary = WriteSummary::default();
        for (done, object) in desired.iter().enumerate() {
            if superseded() {
                break;
            }
            if !*self.leader.borrow() {
                summary.not_leader += desired.len() - done;
                break;
            }
            match self.write(object).await {
                Ok(Outcome::Written) => {
                    summary.written += 1;
                    self.metrics.count("written");
                }
                Ok(Outcome::Unchanged) => {
                    summary.unchanged += 1;
                    self.metrics.count("unchanged");
                }
                Ok(Outcome::Conflict) => {
                    summary.conflicts += 1;
                    self.metrics.count("conflict");
                    tracing::debug!(kind = %object.resource.kind, object = %describe(object), "status write conflicted twice: retrying on the next event");
                }
                Ok(Outcome::Gone) => {
                    summary.gone += 1;
                    self.metrics.count("not_found");
                }
                Ok(Outcome::NotLeader) => summary.not_leader += 1,
                Err(error) => {
                    summary.errors += 1;
                    self.metrics.count("error");
                    tracing::warn!(%error, "writing status");
                }
            }
        }
        summary
    }

    /// Read-modify-write of one object's status: from the caller's copy when it has one,
    /// re-read once on a 409.
    async fn write(&mut self, desired: &DesiredStatus) -> Result<Outcome, StatusWriteError> {
        let api = match &desired.namespace {
            Some(namespace) => Api::<DynamicObject>::namespaced_with(
                self.client.clone(),
                namespace,
                &desired.resource,
            ),
            None => Api::<DynamicObject>::all_with(self.client.clone(), &desired.resource),
        };
        let cached = desired
            .current
            .clone()
            .filter(|object| object.metadata.resource_version.is_some());
        let mut object = match cached {
            Some(object) => object,
            None => match read(&api, desired).await? {
                Some(object) => object,
                None => return Ok(Outcome::Gone),
            },
        };
        let mut reread = false;
        loop {
            let now = now_rfc3339();
            let ctx = MergeContext {
                controller_name: &self.controller_name,
                namespace: desired.namespace.as_deref().unwrap_or_default(),
                now: &now,
            };
            let Some(status) = merge_status(object.data.get("status"), &desired.status, &ctx)
            else {
                return Ok(Outcome::Unchanged);
            };
            self.throttle().await;
            if !*self.leader.borrow() {
                return Ok(Outcome::NotLeader);
            }
            if !object.data.is_object() {
                object.data = Value::Object(serde_json::Map::new());
            }
            if let Some(fields) = object.data.as_object_mut() {
                fields.insert("status".into(), status);
            }
            object.types = Some(TypeMeta {
                api_version: desired.resource.api_version.clone(),
                kind: desired.resource.kind.clone(),
            });
            match api
                .replace_status(&desired.name, &PostParams::default(), &object)
                .await
            {
                Ok(_) => return Ok(Outcome::Written),
                Err(error) if is_conflict(&error) && !reread => {
                    reread = true;
                    object = match read(&api, desired).await? {
                        Some(object) => object,
                        None => return Ok(Outcome::Gone),
                    };
                }
                Err(error) if is_conflict(&error) => return Ok(Outcome::Conflict),
                Err(error) if is_not_found(&error) => return Ok(Outcome::Gone),
                Err(source) => return Err(api_error(desired, source)),
            }
        }
    }

    async fn throttle(&mut self) {
        while let Err(wait) = self.bucket.take(Instant::now()) {
            sleep(wait).await;
        }
    }
}

async fn read(
    api: &Api<DynamicObject>,
    desired: &DesiredStatus,
) -> Result<Option<DynamicObject>, StatusWriteError> {
    match api.get_status(&desired.name).await {
        Ok(object) => Ok(Some(object)),
        Err(error) if is_not_found(&error) => Ok(None),
        Err(source) => Err(api_error(desired, source)),
    }
}

fn is_not_found(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 404 || status.is_not_found())
}

fn api_error(desired: &DesiredStatus, source: kube::Error) -> StatusWriteError {
    StatusWriteError::Api {
        kind: desired.resource.kind.clone(),
        object: describe(desired),
        source,
    }
}

fn describe(desired: &DesiredStatus) -> String {
    match &desired.namespace {
        Some(namespace) => format!("{namespace}/{}", desired.name),
        None => desired.name.clone(),
    }
}

/// metav1.Time's format: RFC 3339, UTC, whole seconds.
fn now_rfc3339() -> String {
    Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

#[cfg(test)]
mod tests;
