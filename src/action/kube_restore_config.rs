//! The `kube_restore_config` action: puts a Deployment's ConfigMaps and Secrets back as
//! they were in a revision's snapshot (see [`super::kube_snapshot`]), by default the
//! incident's `{to_revision}`, the known-good one: the full revision, so that the
//! rollback of a configuration-only change (`18+cfg.1` back to `18`) restores the
//! configuration revision `18` ran with. Each original object's data is
//! replaced with the snapshot's by an update conditional on the resourceVersion read;
//! an original that is gone is created again; one that already holds the snapshot's
//! content is left alone, so running the step twice changes nothing the second time.
//! No snapshot for the revision is a clear refusal, never a silent success, and so is
//! an incomplete one (fewer objects than its `rearguard.io/objects` annotation says, as
//! a snapshot that failed partway leaves it): then nothing is written.
//!
//! Only names reach the output: Secret data is copied as bytes, never shown.

use std::time::Duration;

use ::kube::Api;
use ::kube::api::{ObjectMeta, PostParams};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use tokio::time::Instant;

use super::kube_snapshot::{self, Found};
use super::{ActionContext, ActionOutput};
use crate::config::KubeRestoreConfigSpec;
use crate::kube::config::{Content, Kind, Revision};
use crate::kube::{Handle, KubeError, StepError};

/// A configured `kube_restore_config` step.
#[derive(Debug, Clone)]
pub struct KubeRestoreConfig {
    spec: KubeRestoreConfigSpec,
    handle: Handle,
}

impl KubeRestoreConfig {
    pub fn new(spec: &KubeRestoreConfigSpec) -> KubeRestoreConfig {
        KubeRestoreConfig {
            spec: spec.clone(),
            handle: Handle::new(&spec.target.access),
        }
    }

    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    pub async fn run(&self, ctx: &ActionContext, timeout: Duration) -> ActionOutput {
        let started = Instant::now();
        super::bounded_step(self.restore(ctx), timeout, started).await
    }

    async fn restore(&self, ctx: &ActionContext) -> Result<String, StepError> {
        let t = &self.spec.target;
        let shown = format!("{}/{}", t.namespace, t.deployment);
        let revision = match self.spec.revision {
            Some(n) => Revision {
                deployment: n,
                config: 0,
            },
            None => match ctx.to_revision.as_deref().and_then(Revision::parse) {
                Some(r) => r,
                None => {
                    return Err(StepError::Refused(format!(
                        "the incident's known-good revision of deployment {shown} is not a revision number (is the target's change observer kube_deployment?): nothing is restored"
                    )));
                }
            },
        };
        let client = self.handle.client().await?;
        let snapshots =
            kube_snapshot::list(&client, &t.namespace, &t.deployment, Some(revision)).await?;
        if snapshots.is_empty() {
            let all = kube_snapshot::list(&client, &t.namespace, &t.deployment, None).await?;
            let mut have: Vec<Revision> = all.iter().filter_map(|f| f.revision).collect();
            have.sort_unstable();
            have.dedup();
            let have = if have.is_empty() {
                "none".to_owned()
            } else {
                have.iter()
                    .map(Revision::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            return Err(StepError::Refused(format!(
                "there is no snapshot of revision {revision} of deployment {shown} (revisions with snapshots: {have}); a revision is snapshotted once it stayed healthy for the target's bake time: nothing is restored"
            )));
        }
        // A set that a failed snapshot left incomplete would restore some objects and
        // not the others: a configuration that never ran.
        kube_snapshot::complete(&snapshots, revision, &shown).map_err(StepError::Refused)?;
        let mut done = Vec::new();
        for snap in &snapshots {
            done.push(restore_one(&client, &t.namespace, snap).await?);
        }
        Ok(format!(
            "configuration of deployment {shown} restored from the snapshot of revision {revision}: {}",
            done.join("; ")
        ))
    }
}

/// Restores one original from its snapshot; what was done, in words.
async fn restore_one(client: &::kube::Client, ns: &str, snap: &Found) -> Result<String, StepError> {
    let Some(original) = snap.original.as_deref() else {
        return Err(StepError::Refused(format!(
            "snapshot {} {ns}/{} has no {} annotation: it cannot be restored",
            snap.kind.name(),
            snap.name,
            kube_snapshot::ORIGINAL
        )));
    };
    let kind = snap.kind.name();
    let shown = format!("{kind} {ns}/{original}");
    let pp = PostParams::default();
    let conflict = |read: &str| StepError::ObjectConflict {
        object: shown.clone(),
        read: read.to_owned(),
    };
    let write_error = |e: ::kube::Error, read: &str| match KubeError::from(e) {
        KubeError::Api { code: 409, .. } => conflict(read),
        other => StepError::Kube(other),
    };
    let fresh = || ObjectMeta {
        name: Some(original.to_owned()),
        namespace: Some(ns.to_owned()),
        ..Default::default()
    };
    match snap.kind {
        Kind::ConfigMap => {
            let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
            let Some(mut cm) = api.get_opt(original).await.map_err(KubeError::from)? else {
                api.create(&pp, &kube_snapshot::config_map(fresh(), &snap.content))
                    .await
                    .map_err(|e| write_error(e, ""))?;
                return Ok(format!("{shown} was missing and is created again"));
            };
            if Content::of_config_map(&cm) == snap.content {
                return Ok(format!("{shown} already as in the snapshot"));
            }
            let read = cm.metadata.resource_version.clone().unwrap_or_default();
            let restored = kube_snapshot::config_map(cm.metadata.clone(), &snap.content);
            cm.data = restored.data;
            cm.binary_data = restored.binary_data;
            api.replace(original, &pp, &cm)
                .await
                .map_err(|e| write_error(e, &read))?;
        }
        Kind::Secret => {
            let api: Api<Secret> = Api::namespaced(client.clone(), ns);
            let Some(mut s) = api.get_opt(original).await.map_err(KubeError::from)? else {
                api.create(&pp, &kube_snapshot::secret(fresh(), &snap.content))
                    .await
                    .map_err(|e| write_error(e, ""))?;
                return Ok(format!("{shown} was missing and is created again"));
            };
            let now = Content::of_secret(&s);
            if now == snap.content {
                return Ok(format!("{shown} already as in the snapshot"));
            }
            if now.secret_type != snap.content.secret_type {
                // A Secret's type cannot be changed in place.
                return Err(StepError::Refused(format!(
                    "{shown} is now of another type than in the snapshot: it is not restored (a Secret's type cannot be changed; delete it and run the step again to recreate it)"
                )));
            }
            let read = s.metadata.resource_version.clone().unwrap_or_default();
            s.data = Some(kube_snapshot::byte_strings(&snap.content.binary));
            s.string_data = None;
            api.replace(original, &pp, &s)
                .await
                .map_err(|e| write_error(e, &read))?;
        }
    }
    Ok(format!("{shown} restored from {}", snap.name))
}
