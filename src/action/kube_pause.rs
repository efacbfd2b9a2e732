//! The `kube_pause` and `kube_resume` actions: `kubectl rollout pause` and `rollout
//! resume` of a Deployment. The merge patch carries the resourceVersion read, so a
//! Deployment changed in between is not overwritten. A Deployment already in the asked
//! state is left alone, and the step succeeds.

use std::time::Duration;

use ::kube::api::Patch;
use serde_json::json;
use tokio::time::Instant;

use super::ActionOutput;
use crate::config::KubeDeploymentRef;
use crate::kube::{Handle, StepError};

/// A configured `kube_pause` (`paused` true) or `kube_resume` step.
#[derive(Debug, Clone)]
pub struct KubePause {
    target: KubeDeploymentRef,
    handle: Handle,
    paused: bool,
}

impl KubePause {
    pub fn new(target: &KubeDeploymentRef, paused: bool) -> KubePause {
        KubePause {
            target: target.clone(),
            handle: Handle::new(&target.access),
            paused,
        }
    }

    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    pub async fn run(&self, timeout: Duration) -> ActionOutput {
        let started = Instant::now();
        super::bounded_step(self.set(), timeout, started).await
    }

    async fn set(&self) -> Result<String, StepError> {
        let client = self.handle.client().await?;
        let t = &self.target;
        let shown = format!("{}/{}", t.namespace, t.deployment);
        let d = crate::kube::deployment(&client, &t.namespace, &t.deployment).await?;
        let paused = d.spec.as_ref().and_then(|s| s.paused).unwrap_or(false);
        let word = if self.paused { "paused" } else { "resumed" };
        if paused == self.paused {
            return Ok(format!("deployment {shown} already {word}"));
        }
        let read = d.metadata.resource_version.clone().unwrap_or_default();
        // Resuming removes the field, as kubectl's patch does.
        let value = if self.paused {
            json!(true)
        } else {
            json!(null)
        };
        let patch = json!({"metadata": {"resourceVersion": read}, "spec": {"paused": value}});
        crate::kube::patch_deployment(
            &client,
            &t.namespace,
            &t.deployment,
            &read,
            &Patch::Merge(&patch),
        )
        .await?;
        Ok(format!("deployment {shown} {word}"))
    }
}
