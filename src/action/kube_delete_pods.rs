//! The `kube_delete_pods` action, for the emergency path: deletes every pod of a
//! Deployment (the pods its selector matches in its namespace), so that they are
//! recreated from the Deployment's template and read their ConfigMaps and Secrets
//! afresh, even while the Deployment is paused. Pods already gone count as deleted.
//!
//! Before it deletes, it marks the Deployment with the incident and the time
//! (`rearguard.io/pods-deleted-for = <incident>@<RFC 3339>`). A retry of the step
//! (attempt 2 or more: the first attempt's answer may have been lost) that finds its
//! incident's mark deletes only the pods created before that time, never the pods that
//! came back since.

use std::time::Duration;

use ::kube::Api;
use ::kube::api::{DeleteParams, ListParams};
use k8s_openapi::api::core::v1::Pod;
use tokio::time::Instant;

use super::{ActionContext, ActionOutput};
use crate::config::KubeDeploymentRef;
use crate::kube::{Handle, KubeError, StepError};

/// The Deployment annotation that marks when a kube_delete_pods step deleted its pods,
/// and for which incident.
pub const PODS_DELETED_FOR: &str = "rearguard.io/pods-deleted-for";

/// A configured `kube_delete_pods` step.
#[derive(Debug, Clone)]
pub struct KubeDeletePods {
    target: KubeDeploymentRef,
    handle: Handle,
}

impl KubeDeletePods {
    pub fn new(target: &KubeDeploymentRef) -> KubeDeletePods {
        KubeDeletePods {
            target: target.clone(),
            handle: Handle::new(&target.access),
        }
    }

    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    pub async fn run(&self, ctx: &ActionContext, timeout: Duration) -> ActionOutput {
        let started = Instant::now();
        super::bounded_step(self.delete(ctx), timeout, started).await
    }

    async fn delete(&self, ctx: &ActionContext) -> Result<String, StepError> {
        let client = self.handle.client().await?;
        let t = &self.target;
        let shown = format!("{}/{}", t.namespace, t.deployment);
        let d = crate::kube::deployment(&client, &t.namespace, &t.deployment).await?;
        let selector = d
            .spec
            .as_ref()
            .map(|s| crate::kube::selector_text(&s.selector))
            .unwrap_or_default();
        // An empty selector would select every pod of the namespace.
        if selector.is_empty() {
            return Err(StepError::Refused(format!(
                "deployment {shown} has an empty selector: no pods are deleted"
            )));
        }
        // A retry finds the first attempt's mark: the pods created since are new ones.
        let marked = d
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(PODS_DELETED_FOR))
            .and_then(|v| v.strip_prefix(&format!("{}@", ctx.incident)))
            .and_then(|at| at.parse::<k8s_openapi::jiff::Timestamp>().ok());
        let retry_since = match marked {
            Some(at) if ctx.attempt > 1 => Some(at),
            _ => {
                let now = k8s_openapi::jiff::Timestamp::now();
                let read = d.metadata.resource_version.clone().unwrap_or_default();
                let patch = serde_json::json!({"metadata": {
                    "resourceVersion": read,
                    "annotations": {PODS_DELETED_FOR: format!("{}@{now}", ctx.incident)},
                }});
                crate::kube::patch_deployment(
                    &client,
                    &t.namespace,
                    &t.deployment,
                    &read,
                    &::kube::api::Patch::Merge(&patch),
                )
                .await?;
                None
            }
        };
        let api: Api<Pod> = Api::namespaced(client, &t.namespace);
        let pods = api
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(KubeError::from)?;
        let mut deleted = Vec::new();
        // Creation times have whole seconds: on a retry, a pod created in the second of
        // the first attempt, or later, is taken as one that came back, and kept.
        let pods =
            pods.into_iter()
                .filter(|p| match (&retry_since, &p.metadata.creation_timestamp) {
                    (Some(at), Some(created)) => created.0.as_second() < at.as_second(),
                    _ => true,
                });
        for pod in pods {
            let name = pod.metadata.name.unwrap_or_default();
            match api.delete(&name, &DeleteParams::default()).await {
                Ok(_) => deleted.push(name),
                Err(e) => match KubeError::from(e) {
                    KubeError::Api { code: 404, .. } => deleted.push(name),
                    other => return Err(other.into()),
                },
            }
        }
        Ok(format!(
            "deleted {} pods of deployment {shown} ({selector}): {}",
            deleted.len(),
            deleted.join(", ")
        ))
    }
}
