//! The Kubernetes API as a configuration source (`--kubernetes`): discovery finds which of
//! the kinds we compile the cluster serves, one watch per kind (and namespace) keeps the
//! store current, and the store wakes the same reload loop that file changes do. Objects
//! are parsed one at a time through the loader's own types, so one malformed object is
//! one diagnostic, never a failed watch of its kind. A watch that breaks keeps what it
//! had: the last good snapshot serves through an API server outage. Status flows back the
//! other way: the leader among the gateway's pods (`lease`) writes Gateway API status
//! (`status_writer`) from each compile's report.

pub mod discovery;
pub mod kinds;
pub mod lease;
pub mod status;
pub mod status_writer;
pub mod store;
pub mod watch;

use std::{collections::BTreeSet, path::PathBuf, sync::Arc, time::Duration};

use kube::{
    Client, Config,
    config::{KubeConfigOptions, Kubeconfig},
};
use thiserror::Error;
use tracing::{info, warn};

use kinds::{Scope, WATCHED};
use store::{ClusterStore, StreamKey};

/// How often discovery asks again for kinds the cluster did not serve (a CRD installed
/// after the gateway started is picked up within this): a few small GETs each time, and
/// only while a kind is missing.
const REDISCOVERY: Duration = Duration::from_secs(10);
/// Discovery retries while the API server cannot be reached, from...
const DISCOVERY_RETRY_MIN: Duration = Duration::from_millis(500);
/// ...doubling up to this.
const DISCOVERY_RETRY_MAX: Duration = Duration::from_secs(30);

#[derive(Debug, Error)]
pub enum KubeError {
    #[error("reading the kubeconfig {path}: {source}")]
    Kubeconfig {
        path: PathBuf,
        source: kube::config::KubeconfigError,
    },
    #[error("finding the cluster (in-cluster service account, or $KUBECONFIG): {0}")]
    Infer(#[from] kube::config::InferConfigError),
    #[error("creating the API client: {0}")]
    Client(#[from] kube::Error),
}

/// What to watch, and where.
#[derive(Clone, Debug, Default)]
pub struct WatchOptions {
    /// Namespaces whose objects are watched; empty: all.
    pub namespaces: Vec<String>,
    /// The gateway's own namespace: Istio `credentialName` Secrets live there.
    pub own_namespace: String,
    /// More namespaces whose Secrets are read (Gateway API `certificateRefs` that a
    /// ReferenceGrant lets a Gateway use); `*` means every namespace.
    pub secret_namespaces: Vec<String>,
}

impl WatchOptions {
    /// The watches of one kind: one per namespace, or one for all.
    fn streams(&self, kind: usize) -> Vec<StreamKey> {
        let namespaces: Vec<Option<String>> = match WATCHED[kind].scope {
            Scope::Cluster => vec![None],
            Scope::Namespaced if self.namespaces.is_empty() => vec![None],
            Scope::Namespaced => self.namespaces.iter().cloned().map(Some).collect(),
            Scope::Secrets if self.secret_namespaces.iter().any(|n| n == "*") => vec![None],
            Scope::Secrets => {
                let mut namespaces: BTreeSet<String> =
                    self.secret_namespaces.iter().cloned().collect();
                namespaces.insert(self.own_namespace.clone());
                namespaces.into_iter().map(Some).collect()
            }
        };
        namespaces
            .into_iter()
            .map(|namespace| StreamKey { kind, namespace })
            .collect()
    }
}

/// The API client: from `kubeconfig` when given, else in-cluster (the pod's service
/// account), else `$KUBECONFIG` or `~/.kube/config`.
pub async fn client(kubeconfig: Option<&PathBuf>) -> Result<Client, KubeError> {
    let config = match kubeconfig {
        Some(path) => {
            let kubeconfig =
                Kubeconfig::read_from(path).map_err(|source| KubeError::Kubeconfig {
                    path: path.clone(),
                    source,
                })?;
            Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .map_err(|source| KubeError::Kubeconfig {
                    path: path.clone(),
                    source,
                })?
        }
        None => Config::infer().await?,
    };
    Ok(Client::try_from(config)?)
}

/// Discovers what the cluster serves and watches it, into `store`, until aborted. Kinds
/// the cluster lacks are looked for again every `REDISCOVERY`.
pub async fn follow(client: Client, options: WatchOptions, store: Arc<ClusterStore>) {
    let mut watching = BTreeSet::new();
    let mut warned = BTreeSet::new();
    let mut retry = DISCOVERY_RETRY_MIN;
    loop {
        let discovered = match discovery::discover(&client).await {
            Ok(discovered) => discovered,
            Err(e) => {
                warn!(error = %e, retry_in = ?retry, "API discovery failed");
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(DISCOVERY_RETRY_MAX);
                continue;
            }
        };
        retry = DISCOVERY_RETRY_MIN;
        for &kind in &discovered.missing {
            if warned.insert(kind) {
                warn!(
                    kind = WATCHED[kind].label(),
                    versions = ?WATCHED[kind].versions,
                    "the cluster does not serve this kind; skipped until it does"
                );
            }
        }
        // Every new watch is registered before any starts, so that the first compile
        // waits for all of them.
        let mut started = Vec::new();
        for (kind, resource) in discovered.served {
            if !watching.insert(kind) {
                continue;
            }
            if warned.remove(&kind) {
                info!(
                    kind = WATCHED[kind].label(),
                    "the cluster serves this kind now"
                );
            }
            for key in options.streams(kind) {
                store.register(key.clone(), &resource.version);
                started.push((key, resource.clone()));
            }
        }
        for (key, resource) in started {
            tokio::spawn(watch::follow(client.clone(), key, resource, store.clone()));
        }
        if watching.len() == WATCHED.len() {
            return;
        }
        tokio::time::sleep(REDISCOVERY).await;
    }
}
