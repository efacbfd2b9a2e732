//! The `kube_deployment` change observer: a Deployment's current revision is that of the
//! ReplicaSet running its pod template (the one the Deployment controls whose template
//! equals the Deployment's, but for `pod-template-hash`; the oldest if there are
//! several, as the deployment controller picks it), by its
//! `deployment.kubernetes.io/revision`.
//!
//! The daemon does not poll it: [`Watcher`] watches the Deployment from the
//! resourceVersion last read and reads the revision again when it changes (and at least
//! every minute, when the watch is renewed). It only reads.
//!
//! Each observation also hashes the ConfigMaps and Secrets the pod template references
//! ([`crate::kube::config`]) and logs the hash when it changes; the revision the engine
//! sees stays the Deployment's. Secret data is never logged, only the hash.

use std::time::Duration;

use ::kube::Api;
use ::kube::api::{WatchEvent, WatchParams};
use futures_util::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};

use crate::config::KubeDeploymentRef;
use crate::kube::{Handle, KubeError, StepError};

/// How long one watch request stays open before it is renewed.
const WATCH_SECONDS: u32 = 60;

/// The revision of `deployment` from its ReplicaSets.
pub fn revision_of(deployment: &Deployment, sets: &[ReplicaSet]) -> Result<String, String> {
    let template = deployment
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .unwrap_or_default();
    let mut running: Vec<&ReplicaSet> = sets
        .iter()
        .filter(|rs| {
            rs.spec
                .as_ref()
                .and_then(|s| s.template.as_ref())
                .is_some_and(|t| crate::kube::same_template(t, &template))
        })
        .collect();
    running.sort_by(|a, b| {
        let key = |rs: &ReplicaSet| {
            (
                rs.metadata.creation_timestamp.as_ref().map(|t| t.0),
                rs.metadata.name.clone(),
            )
        };
        key(a).cmp(&key(b))
    });
    let name = deployment.metadata.name.clone().unwrap_or_default();
    let rs = running.first().ok_or_else(|| {
        format!("deployment {name} has no replicaset for its current pod template yet")
    })?;
    crate::kube::revision(rs.metadata.annotations.as_ref())
        .map(|r| r.to_string())
        .ok_or_else(|| {
            format!(
                "replicaset {} of deployment {name} has a revision annotation that is not a number",
                rs.metadata.name.as_deref().unwrap_or("?")
            )
        })
}

/// One read of the Deployment's revision (for `rearguard record`, which samples).
pub async fn observe(target: &KubeDeploymentRef) -> Result<String, String> {
    let mut watcher = Watcher::new(target);
    watcher.observe().await
}

/// Follows one Deployment's revision.
#[derive(Debug)]
pub struct Watcher {
    target: KubeDeploymentRef,
    handle: Handle,
    /// The resourceVersion of the last read; `None` before the first.
    read: Option<String>,
    /// The content hash of the referenced ConfigMaps and Secrets, as last read.
    config_hash: Option<String>,
    /// The last error reading them, said once.
    config_error: Option<String>,
}

impl Watcher {
    pub fn new(target: &KubeDeploymentRef) -> Watcher {
        Watcher {
            target: target.clone(),
            handle: Handle::new(&target.access),
            read: None,
            config_hash: None,
            config_error: None,
        }
    }

    /// The Deployment's current revision; remembers the version read for
    /// [`changed`](Self::changed).
    pub async fn observe(&mut self) -> Result<String, String> {
        let t = &self.target;
        let result: Result<(String, Result<String, KubeError>), StepError> = async {
            let client = self.handle.client().await?;
            let d = crate::kube::deployment(&client, &t.namespace, &t.deployment).await?;
            let sets = crate::kube::replica_sets(&client, &d).await?;
            self.read = d.metadata.resource_version.clone();
            let revision = revision_of(&d, &sets).map_err(StepError::Refused)?;
            let spec = d
                .spec
                .as_ref()
                .and_then(|s| s.template.spec.clone())
                .unwrap_or_default();
            let refs = crate::kube::config::references(&spec);
            let observed = crate::kube::config::read(&client, &t.namespace, &refs).await;
            Ok((
                revision,
                observed.map(|o| crate::kube::config::config_hash(&o)),
            ))
        }
        .await;
        let (revision, hash) = result.map_err(|e| e.to_string())?;
        self.config_seen(&revision, hash);
        Ok(revision)
    }

    /// The content hash of the Deployment's configuration, as last read.
    pub fn config_hash(&self) -> Option<&str> {
        self.config_hash.as_deref()
    }

    fn config_seen(&mut self, revision: &str, hash: Result<String, KubeError>) {
        let t = &self.target;
        match hash {
            Ok(hash) => {
                self.config_error = None;
                if self.config_hash.as_ref() != Some(&hash) {
                    tracing::info!(deployment = %t.deployment, namespace = %t.namespace, revision, config_hash = %hash, "the deployment's configmaps and secrets changed");
                    self.config_hash = Some(hash);
                }
            }
            Err(e) => {
                let text = e.to_string();
                if self.config_error.as_ref() != Some(&text) {
                    tracing::warn!(deployment = %t.deployment, error = %text, "cannot read the deployment's configmaps and secrets (RBAC: get on configmaps and secrets)");
                    self.config_error = Some(text);
                }
            }
        }
    }

    /// Returns when the Deployment may have changed since the last read: at once before
    /// the first, then on its next watch event, when the watch is renewed, or a moment
    /// after a failed watch.
    pub async fn changed(&mut self) {
        let Some(read) = self.read.clone() else {
            return;
        };
        let t = &self.target;
        let watched: Result<(), KubeError> = async {
            let client = self.handle.client().await?;
            let api: Api<Deployment> = Api::namespaced(client, &t.namespace);
            let params = WatchParams::default()
                .fields(&format!("metadata.name={}", t.deployment))
                .timeout(WATCH_SECONDS);
            let mut events = api.watch(&params, &read).await?.boxed();
            loop {
                match events.try_next().await? {
                    Some(WatchEvent::Bookmark(_)) => {}
                    Some(_) | None => return Ok(()),
                }
            }
        }
        .await;
        if let Err(e) = watched {
            tracing::debug!(deployment = %t.deployment, error = %e, "the deployment's watch failed");
            // Not a busy loop against an API server that keeps failing.
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    }
}
