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
//! ([`crate::kube::config`]): a change of them alone is a change of the revision the
//! engine sees, `18` then `18+cfg.1`, `18+cfg.2` (see [`Generations`]), and the names of
//! the objects that changed are logged. Only a ConfigMap's hash is logged: a hash over
//! Secret data (unsalted, of possibly low-entropy values) could be brute-forced offline
//! by whoever reads the logs, so neither a Secret's hash nor the overall hash ever is,
//! and the overall hash stays in memory. The Deployment is watched, its ConfigMaps and
//! Secrets are not: a change of them alone is seen at the next event of the Deployment,
//! at the latest when the watch is renewed (a minute).

use std::collections::BTreeMap;
use std::time::Duration;

use ::kube::Api;
use ::kube::api::{WatchEvent, WatchParams};
use futures_util::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};

use crate::config::KubeDeploymentRef;
use crate::kube::config::{Content, Kind, Observed};
use crate::kube::{Handle, KubeError, StepError};
use crate::source::change::Generations;

/// How long one watch request stays open before it is renewed.
const WATCH_SECONDS: u32 = 60;
/// How often a Deployment whose pod template references ConfigMaps or Secrets is read
/// again between watch events: those objects are not watched (that would need watch
/// rights on every ConfigMap and Secret of the namespace), so a change of them alone is
/// seen within this time.
pub const CONFIG_RECHECK: Duration = Duration::from_secs(10);

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

/// The objects that differ between `before` and `after`, in words: names, a
/// ConfigMap's new content hash, never a Secret's.
fn changed_objects(
    before: &BTreeMap<(Kind, String), Option<String>>,
    after: &BTreeMap<(Kind, String), Option<String>>,
) -> String {
    let mut keys: Vec<&(Kind, String)> = before.keys().chain(after.keys()).collect();
    keys.sort();
    keys.dedup();
    let words: Vec<String> = keys
        .into_iter()
        .filter(|k| before.get(*k) != after.get(*k))
        .map(|k| {
            let (kind, name) = k;
            let what = match (after.get(k), kind) {
                (None, _) => "no longer referenced".to_owned(),
                (Some(None), _) => "missing".to_owned(),
                (Some(Some(hash)), Kind::ConfigMap) => format!("sha256 {}", &hash[..12]),
                (Some(Some(_)), Kind::Secret) if before.contains_key(k) => {
                    "content changed".to_owned()
                }
                (Some(Some(_)), Kind::Secret) => "present".to_owned(),
            };
            format!("{} {name} ({what})", kind.name())
        })
        .collect();
    if words.is_empty() {
        "none".to_owned()
    } else {
        words.join(", ")
    }
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
    /// The content hash of the referenced ConfigMaps and Secrets, as last read; kept in
    /// memory only (it covers Secret data).
    config_hash: Option<String>,
    /// Each referenced object's content hash (`None`: missing), as last read.
    objects: BTreeMap<(Kind, String), Option<String>>,
    /// The last error reading them, said once.
    config_error: Option<String>,
    /// The configuration generation of the revision reported.
    generations: Generations,
}

impl Watcher {
    pub fn new(target: &KubeDeploymentRef) -> Watcher {
        Watcher {
            target: target.clone(),
            handle: Handle::new(&target.access),
            read: None,
            config_hash: None,
            objects: BTreeMap::new(),
            config_error: None,
            generations: Generations::default(),
        }
    }

    /// Goes on from `revision`, the last one the engine knew of the target, so that a
    /// restart does not start the configuration generations again.
    pub fn remembering(mut self, revision: Option<&str>) -> Watcher {
        self.generations = Generations::remembering(revision);
        self
    }

    /// The Deployment's current revision with its configuration generation (`18+cfg.2`).
    /// A configuration-only change is looked at again after
    /// [`CONFIG_SETTLE`](crate::source::change::CONFIG_SETTLE).
    pub async fn observe(&mut self) -> Result<String, String> {
        let (mut revision, mut observed) = self.read().await?;
        let config_only = observed.as_ref().is_ok_and(|o| {
            let hash = crate::kube::config::config_hash(o);
            self.generations.config_only(&revision, &hash)
        });
        if config_only {
            tokio::time::sleep(crate::source::change::CONFIG_SETTLE).await;
            (revision, observed) = self.read().await?;
        }
        let readable = observed.is_ok();
        self.config_seen(&revision, observed);
        // Configuration that cannot be read is taken as unchanged, never as a change.
        let digest = self.config_hash.clone().filter(|_| readable);
        Ok(self.generations.name(&revision, digest.as_deref()))
    }

    /// The Deployment's revision and its referenced configuration as read now;
    /// remembers the version read for [`changed`](Self::changed).
    async fn read(&mut self) -> Result<(String, Result<Vec<Observed>, KubeError>), String> {
        let t = &self.target;
        let result: Result<(String, Result<Vec<Observed>, KubeError>), StepError> = async {
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
            Ok((revision, observed))
        }
        .await;
        result.map_err(|e| e.to_string())
    }

    /// Whether the pod template references ConfigMaps or Secrets, as last read: they are
    /// not watched, so the observer reads them again every [`CONFIG_RECHECK`].
    pub fn reads_config(&self) -> bool {
        !self.objects.is_empty()
    }

    /// The content hash of the Deployment's configuration, as last read. It covers
    /// Secret data: never log it or write it where Secrets' readers are not the only
    /// readers.
    pub fn config_hash(&self) -> Option<&str> {
        self.config_hash.as_deref()
    }

    fn config_seen(&mut self, revision: &str, observed: Result<Vec<Observed>, KubeError>) {
        let t = &self.target;
        match observed {
            Ok(observed) => {
                self.config_error = None;
                let hash = crate::kube::config::config_hash(&observed);
                if self.config_hash.as_ref() == Some(&hash) {
                    return;
                }
                let objects: BTreeMap<(Kind, String), Option<String>> = observed
                    .iter()
                    .map(|o| {
                        (
                            (o.reference.kind, o.reference.name.clone()),
                            o.content.as_ref().map(Content::hash),
                        )
                    })
                    .collect();
                let changed = changed_objects(&self.objects, &objects);
                tracing::info!(deployment = %t.deployment, namespace = %t.namespace, revision, changed = %changed, "the deployment's configmaps and secrets changed");
                self.config_hash = Some(hash);
                self.objects = objects;
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
            tokio::time::sleep(crate::jitter::jitter(Duration::from_secs(5))).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_change_log_names_the_objects_and_never_a_secrets_hash() {
        let secret_hash = "5ecre7".repeat(10);
        let map_hash = "c0ffee".repeat(10);
        let key = |kind: Kind, name: &str| (kind, name.to_owned());
        let before = BTreeMap::from([
            (key(Kind::ConfigMap, "app"), Some("0".repeat(64))),
            (key(Kind::ConfigMap, "flags"), Some("1".repeat(64))),
            (key(Kind::Secret, "db"), Some("2".repeat(64))),
        ]);
        let after = BTreeMap::from([
            (key(Kind::ConfigMap, "app"), Some(map_hash.clone())),
            (key(Kind::ConfigMap, "flags"), Some("1".repeat(64))),
            (key(Kind::Secret, "db"), Some(secret_hash.clone())),
            (key(Kind::Secret, "tls"), None),
        ]);
        let text = changed_objects(&before, &after);
        assert_eq!(
            text,
            format!(
                "configmap app (sha256 {}), secret db (content changed), secret tls (missing)",
                &map_hash[..12]
            )
        );
        assert!(!text.contains(&secret_hash[..6]), "{text}");
        let first = changed_objects(&BTreeMap::new(), &after);
        assert!(first.contains("secret db (present)"), "{first}");
        assert!(!first.contains(&secret_hash[..6]), "{first}");
        assert_eq!(changed_objects(&after, &after), "none");
    }
}
