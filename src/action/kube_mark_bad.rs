//! The `kube_mark_bad` action: writes on the cluster that a revision is bad, where a
//! new leader or another rearguard sees it. The ReplicaSet of the incident's
//! `{from_revision}` (which must be a revision number, as a `kube_deployment` observer
//! gives; the step refuses otherwise) gets the annotation `rearguard.io/marked-bad` with the incident's
//! id; `kube_rollout_undo` never goes back to a revision so marked. Marking a revision
//! already marked changes nothing. An incident that changed only the configuration
//! (`18+cfg.1` back to `18`) marks nothing: revision 18's ReplicaSet also runs the
//! known-good configuration.

use std::time::Duration;

use ::kube::Api;
use ::kube::api::{Patch, PatchParams};
use k8s_openapi::api::apps::v1::ReplicaSet;
use serde_json::json;
use tokio::time::Instant;

use super::{ActionContext, ActionOutput};
use crate::config::KubeDeploymentRef;
use crate::kube::{BAD_ANNOTATION, Handle, StepError};

/// A configured `kube_mark_bad` step.
#[derive(Debug, Clone)]
pub struct KubeMarkBad {
    target: KubeDeploymentRef,
    handle: Handle,
}

impl KubeMarkBad {
    pub fn new(target: &KubeDeploymentRef) -> KubeMarkBad {
        KubeMarkBad {
            target: target.clone(),
            handle: Handle::new(&target.access),
        }
    }

    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    pub async fn run(&self, ctx: &ActionContext, timeout: Duration) -> ActionOutput {
        let started = Instant::now();
        super::bounded_step(self.mark(ctx), timeout, started).await
    }

    async fn mark(&self, ctx: &ActionContext) -> Result<String, StepError> {
        let client = self.handle.client().await?;
        let t = &self.target;
        let shown = format!("{}/{}", t.namespace, t.deployment);
        if let Some(kept) = super::kube_rollout_undo::config_only(ctx) {
            return Ok(format!(
                "nothing marked: only the configuration of revision {kept} of deployment {shown} changed, and its replicaset also runs the known-good one"
            ));
        }
        let d = crate::kube::deployment(&client, &t.namespace, &t.deployment).await?;
        // Only the incident's own revision: the Deployment's current one may already be a
        // fix someone rolled forward since the incident opened.
        let revision = match ctx
            .from_revision
            .as_deref()
            .and_then(crate::kube::config::Revision::parse)
        {
            Some(r) => r.deployment,
            None => {
                return Err(StepError::Refused(format!(
                    "the incident's revision of deployment {shown} is not a revision number (is the target's change observer kube_deployment?): nothing is marked, rather than guessing"
                )));
            }
        };
        let sets = crate::kube::replica_sets(&client, &d).await?;
        let rs = sets
            .iter()
            .find(|rs| crate::kube::revision(rs.metadata.annotations.as_ref()) == Some(revision))
            .ok_or_else(|| {
                StepError::Refused(format!(
                    "deployment {shown} has no replicaset of revision {revision} to mark bad"
                ))
            })?;
        let rs_name = rs.metadata.name.clone().unwrap_or_default();
        if rs
            .metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(BAD_ANNOTATION))
        {
            return Ok(format!(
                "revision {revision} of deployment {shown} (replicaset {rs_name}) is already marked bad"
            ));
        }
        let patch = json!({"metadata": {"annotations": {BAD_ANNOTATION: ctx.incident}}});
        let api: Api<ReplicaSet> = Api::namespaced(client, &t.namespace);
        api.patch(&rs_name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|e| StepError::Kube(e.into()))?;
        Ok(format!(
            "marked revision {revision} of deployment {shown} (replicaset {rs_name}) bad"
        ))
    }
}
