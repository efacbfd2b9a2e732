//! The `kube_rollout_status` action: waits until a Deployment's rollout is complete, by
//! the conditions `kubectl rollout status` uses, or fails when its progress deadline
//! was exceeded, or at the step's timeout with the last status seen.
//!
//! It reads the Deployment and then watches it (a field selector on its name) from the
//! resourceVersion read, so it sees each change as it happens instead of polling; a
//! watch that ends or expires is started again from a fresh read.
//!
//! A Deployment scaled to zero is done only when none of its pods is left, terminating
//! ones included: `status.replicas` stops counting a pod once it is marked for deletion,
//! while its containers may still run (and write to a database about to be restored).
//! So when `spec.replicas` is 0 it then lists the pods the Deployment's selector matches
//! and watches them until there are none.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ::kube::Api;
use ::kube::api::ListParams;
use ::kube::api::{WatchEvent, WatchParams};
use futures_util::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use tokio::time::Instant;

use super::{ActionOutput, timed_out};
use crate::config::KubeDeploymentRef;
use crate::kube::{Handle, KubeError, StepError};

/// How long one watch request stays open before it is renewed.
const WATCH_SECONDS: u32 = 60;

/// Where a rollout stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rollout {
    /// Still going; kubectl's waiting message.
    Waiting(String),
    /// Complete; kubectl's success message.
    Done(String),
    /// The Deployment's Progressing condition says it exceeded its progress deadline.
    Failed(String),
}

/// Where the rollout of `d` stands, exactly as `kubectl rollout status` judges it (and
/// in its words).
pub fn rollout(d: &Deployment) -> Rollout {
    let name = d.metadata.name.clone().unwrap_or_default();
    let generation = d.metadata.generation.unwrap_or(0);
    let status = d.status.clone().unwrap_or_default();
    if generation > status.observed_generation.unwrap_or(0) {
        return Rollout::Waiting("Waiting for deployment spec update to be observed...".into());
    }
    let progressing = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Progressing");
    if progressing.is_some_and(|c| c.reason.as_deref() == Some("ProgressDeadlineExceeded")) {
        return Rollout::Failed(format!(
            "deployment \"{name}\" exceeded its progress deadline"
        ));
    }
    let updated = status.updated_replicas.unwrap_or(0);
    let replicas = status.replicas.unwrap_or(0);
    let available = status.available_replicas.unwrap_or(0);
    if let Some(wanted) = d.spec.as_ref().and_then(|s| s.replicas)
        && updated < wanted
    {
        return Rollout::Waiting(format!(
            "Waiting for deployment \"{name}\" rollout to finish: {updated} out of {wanted} new replicas have been updated..."
        ));
    }
    if replicas > updated {
        return Rollout::Waiting(format!(
            "Waiting for deployment \"{name}\" rollout to finish: {} old replicas are pending termination...",
            replicas - updated
        ));
    }
    if available < updated {
        return Rollout::Waiting(format!(
            "Waiting for deployment \"{name}\" rollout to finish: {available} of {updated} updated replicas are available..."
        ));
    }
    Rollout::Done(format!("deployment \"{name}\" successfully rolled out"))
}

/// A configured `kube_rollout_status` step.
#[derive(Debug, Clone)]
pub struct KubeRolloutStatus {
    target: KubeDeploymentRef,
    handle: Handle,
}

impl KubeRolloutStatus {
    pub fn new(target: &KubeDeploymentRef) -> KubeRolloutStatus {
        KubeRolloutStatus {
            target: target.clone(),
            handle: Handle::new(&target.access),
        }
    }

    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Waits for the rollout, at most `timeout`.
    pub async fn run(&self, timeout: Duration) -> ActionOutput {
        let started = Instant::now();
        let last = Arc::new(Mutex::new(String::new()));
        match tokio::time::timeout(timeout, self.wait(&last)).await {
            Ok(result) => super::step_output(result, started),
            Err(_) => {
                let seen = last.lock().map(|l| l.clone()).unwrap_or_default();
                let error = if seen.is_empty() {
                    timed_out(timeout)
                } else {
                    format!("{}; last status: {seen}", timed_out(timeout))
                };
                ActionOutput::failed(error, seen, started)
            }
        }
    }

    async fn wait(&self, last: &Mutex<String>) -> Result<String, StepError> {
        let (done, d) = self.wait_rollout(last).await?;
        let t = &self.target;
        let Some(spec) = d.spec.as_ref().filter(|s| s.replicas == Some(0)) else {
            return Ok(done);
        };
        let shown = format!("{}/{}", t.namespace, t.deployment);
        let selector = crate::kube::selector_text(&spec.selector);
        // An empty selector would wait for every pod of the namespace.
        if selector.is_empty() {
            return Err(StepError::Refused(format!(
                "deployment {shown} is scaled to zero but has an empty selector: its pods cannot be told apart, so no pod being left cannot be checked"
            )));
        }
        let client = self.handle.client().await?;
        no_pods_left(&client, &t.namespace, &shown, &selector, last).await?;
        Ok(format!("{done}; no pod of it is left ({selector})"))
    }

    /// Waits for the rollout's own conditions, as kubectl does; kubectl's words and the
    /// Deployment as it was when complete.
    async fn wait_rollout(&self, last: &Mutex<String>) -> Result<(String, Deployment), StepError> {
        let client = self.handle.client().await?;
        let t = &self.target;
        let api: Api<Deployment> = Api::namespaced(client.clone(), &t.namespace);
        let shown = format!("{}/{}", t.namespace, t.deployment);
        let judge = |d: &Deployment| -> Option<Result<(String, Deployment), StepError>> {
            match rollout(d) {
                Rollout::Done(text) => Some(Ok((text, d.clone()))),
                Rollout::Failed(text) => Some(Err(StepError::Refused(text))),
                Rollout::Waiting(text) => {
                    if let Ok(mut l) = last.lock() {
                        *l = text;
                    }
                    None
                }
            }
        };
        loop {
            let d = crate::kube::deployment(&client, &t.namespace, &t.deployment).await?;
            if let Some(verdict) = judge(&d) {
                return verdict;
            }
            let rv = d.metadata.resource_version.clone().unwrap_or_default();
            let params = WatchParams::default()
                .fields(&format!("metadata.name={}", t.deployment))
                .timeout(WATCH_SECONDS);
            let mut events = match api.watch(&params, &rv).await {
                Ok(stream) => stream.boxed(),
                Err(e) => {
                    let e = KubeError::from(e);
                    if !e.is_retryable() {
                        return Err(e.into());
                    }
                    tracing::warn!(deployment = %shown, error = %e, "cannot watch the deployment; reading it again");
                    // Not a busy loop against a server that keeps failing.
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            loop {
                match events.try_next().await {
                    Ok(Some(WatchEvent::Added(d) | WatchEvent::Modified(d))) => {
                        if let Some(verdict) = judge(&d) {
                            return verdict;
                        }
                    }
                    Ok(Some(WatchEvent::Deleted(_))) => return Err(StepError::NotFound(shown)),
                    Ok(Some(WatchEvent::Bookmark(_))) => {}
                    // 410 Expired and other errors: read again and watch anew.
                    Ok(Some(WatchEvent::Error(_))) | Ok(None) => break,
                    Err(e) => {
                        tracing::warn!(deployment = %shown, error = %e, "the deployment's watch failed; reading it again");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        break;
                    }
                }
            }
        }
    }
}

/// Returns once no pod matches `selector` in `ns`, terminating ones included; until then
/// `last` names the pods still there.
async fn no_pods_left(
    client: &::kube::Client,
    ns: &str,
    shown: &str,
    selector: &str,
    last: &Mutex<String>,
) -> Result<(), StepError> {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    loop {
        let pods = api
            .list(&ListParams::default().labels(selector))
            .await
            .map_err(KubeError::from)?;
        if pods.items.is_empty() {
            return Ok(());
        }
        let names: Vec<String> = pods
            .items
            .iter()
            .map(|p| {
                let name = p.metadata.name.clone().unwrap_or_default();
                if p.metadata.deletion_timestamp.is_some() {
                    format!("{name} (terminating)")
                } else {
                    name
                }
            })
            .collect();
        if let Ok(mut l) = last.lock() {
            *l = format!(
                "deployment {shown} is scaled to zero but {} of its pods are left: {}",
                names.len(),
                names.join(", ")
            );
        }
        let rv = pods.metadata.resource_version.clone().unwrap_or_default();
        let params = WatchParams::default()
            .labels(selector)
            .timeout(WATCH_SECONDS);
        let mut events = match api.watch(&params, &rv).await {
            Ok(stream) => stream.boxed(),
            Err(e) => {
                let e = KubeError::from(e);
                if !e.is_retryable() {
                    return Err(e.into());
                }
                tracing::warn!(deployment = %shown, error = %e, "cannot watch the deployment's pods; listing them again");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        // Any deletion, or the end of the watch, is a reason to list again.
        loop {
            match events.try_next().await {
                Ok(Some(WatchEvent::Deleted(_))) => break,
                Ok(Some(
                    WatchEvent::Added(_) | WatchEvent::Modified(_) | WatchEvent::Bookmark(_),
                )) => {}
                Ok(Some(WatchEvent::Error(_))) | Ok(None) => break,
                Err(e) => {
                    tracing::warn!(deployment = %shown, error = %e, "the watch of the deployment's pods failed; listing them again");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(generation: i64, replicas: i32, status: serde_json::Value) -> Deployment {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "generation": generation},
            "spec": {"replicas": replicas, "selector": {}, "template": {}},
            "status": status,
        }))
        .unwrap()
    }

    #[test]
    fn a_rollout_is_done_only_when_observed_updated_and_available() {
        let waiting = |d: &Deployment| matches!(rollout(d), Rollout::Waiting(_));
        assert!(waiting(&d(
            2,
            3,
            serde_json::json!({"observedGeneration": 1})
        )));
        assert!(waiting(&d(
            2,
            3,
            serde_json::json!({"observedGeneration": 2, "updatedReplicas": 2, "replicas": 3})
        )));
        assert!(waiting(&d(
            2,
            3,
            serde_json::json!({"observedGeneration": 2, "updatedReplicas": 3, "replicas": 4})
        )));
        assert!(waiting(&d(
            2,
            3,
            serde_json::json!({"observedGeneration": 2, "updatedReplicas": 3, "replicas": 3, "availableReplicas": 2})
        )));
        assert_eq!(
            rollout(&d(
                2,
                3,
                serde_json::json!({"observedGeneration": 2, "updatedReplicas": 3, "replicas": 3, "availableReplicas": 3})
            )),
            Rollout::Done("deployment \"web\" successfully rolled out".into())
        );
        let stuck = serde_json::json!({"observedGeneration": 2, "conditions": [
            {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}
        ]});
        assert!(matches!(rollout(&d(2, 3, stuck)), Rollout::Failed(_)));
    }
}
