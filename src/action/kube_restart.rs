//! The `kube_restart` action: `kubectl rollout restart` of a Deployment, which sets the
//! pod template's `kubectl.kubernetes.io/restartedAt` annotation to the current time
//! (RFC 3339), so that the Deployment rolls out new pods with the same spec. Like
//! kubectl, it refuses a paused Deployment. The patch carries the resourceVersion read.
//!
//! Beyond kubectl, the same patch marks the Deployment with the incident it restarted
//! for (`rearguard.io/restarted-for`, on the Deployment, not its pod template), so that
//! a retry of the step (attempt 2 or more: the first attempt's answer may have been
//! lost) that finds the mark does not restart it a second time. A first attempt always
//! restarts, so a plan run again on the same incident (an operator's rollback) does.

use std::time::Duration;

use ::kube::api::Patch;
use serde_json::json;
use tokio::time::Instant;

use super::{ActionContext, ActionOutput};
use crate::config::KubeDeploymentRef;
use crate::kube::{Handle, StepError};

/// The pod template annotation kubectl sets to restart a Deployment.
pub const RESTARTED_AT: &str = "kubectl.kubernetes.io/restartedAt";

/// The Deployment annotation naming the incident a kube_restart step restarted it for.
pub const RESTARTED_FOR: &str = "rearguard.io/restarted-for";

/// A configured `kube_restart` step.
#[derive(Debug, Clone)]
pub struct KubeRestart {
    target: KubeDeploymentRef,
    handle: Handle,
}

impl KubeRestart {
    pub fn new(target: &KubeDeploymentRef) -> KubeRestart {
        KubeRestart {
            target: target.clone(),
            handle: Handle::new(&target.access),
        }
    }

    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    pub async fn run(&self, ctx: &ActionContext, timeout: Duration) -> ActionOutput {
        let started = Instant::now();
        super::bounded_step(self.restart(&ctx.incident, ctx.attempt), timeout, started).await
    }

    async fn restart(&self, incident: &str, attempt: u32) -> Result<String, StepError> {
        let client = self.handle.client().await?;
        let t = &self.target;
        let shown = format!("{}/{}", t.namespace, t.deployment);
        let d = crate::kube::deployment(&client, &t.namespace, &t.deployment).await?;
        if d.spec.as_ref().and_then(|s| s.paused).unwrap_or(false) {
            return Err(StepError::Refused(format!(
                "deployment {shown} is paused: a paused deployment is not restarted; resume it first (a kube_resume step before this one)"
            )));
        }
        let marked = d
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(RESTARTED_FOR));
        if attempt > 1 && !incident.is_empty() && marked.map(String::as_str) == Some(incident) {
            return Ok(format!(
                "deployment {shown} was already restarted for incident {incident}"
            ));
        }
        let read = d.metadata.resource_version.clone().unwrap_or_default();
        let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
        let patch = json!({
            "metadata": {"resourceVersion": read, "annotations": {RESTARTED_FOR: incident}},
            "spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: now}}}},
        });
        crate::kube::patch_deployment(
            &client,
            &t.namespace,
            &t.deployment,
            &read,
            &Patch::Merge(&patch),
        )
        .await?;
        Ok(format!("deployment {shown} restarted at {now}"))
    }
}
