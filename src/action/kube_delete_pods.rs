//! The `kube_delete_pods` action, for the emergency path: deletes every pod of a
//! Deployment (the pods its selector matches in its namespace), so that they are
//! recreated from the Deployment's template and read their ConfigMaps and Secrets
//! afresh, even while the Deployment is paused. Pods already gone count as deleted.

use std::time::Duration;

use ::kube::Api;
use ::kube::api::{DeleteParams, ListParams};
use k8s_openapi::api::core::v1::Pod;
use tokio::time::Instant;

use super::ActionOutput;
use crate::config::KubeDeploymentRef;
use crate::kube::{Handle, KubeError, StepError};

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

    pub async fn run(&self, timeout: Duration) -> ActionOutput {
        let started = Instant::now();
        super::bounded_step(self.delete(), timeout, started).await
    }

    async fn delete(&self) -> Result<String, StepError> {
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
        let api: Api<Pod> = Api::namespaced(client, &t.namespace);
        let pods = api
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(KubeError::from)?;
        let mut deleted = Vec::new();
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
