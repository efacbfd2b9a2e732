//! The `kube_scale` action: sets a Deployment's replica count, and remembers the count
//! it replaced on the Deployment itself (`rearguard.io/recorded-replicas`), where a
//! later `replicas = "recorded"` step finds it, after a restart of rearguard or on
//! another replica of it. Restoring replaces the record with the count restored
//! (`rearguard.io/restored-replicas`).
//!
//! The record is written in the same JSON patch as the count, with a `test` of the
//! resourceVersion read, so both change together or not at all. A step run again (its
//! answer was lost) keeps the first record: the count to go back to is the one from
//! before the first scale. Likewise a restore run again finds the Deployment already at
//! the count it restored, and succeeds without writing.

use std::time::Duration;

use ::kube::api::Patch;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::ActionOutput;
use crate::config::{KubeScaleSpec, Replicas};
use crate::kube::{Handle, StepError};

/// The Deployment annotation that holds the replica count a kube_scale step replaced.
pub const RECORDED_REPLICAS: &str = "rearguard.io/recorded-replicas";

/// The Deployment annotation that holds the replica count a `recorded` step restored.
pub const RESTORED_REPLICAS: &str = "rearguard.io/restored-replicas";

/// The JSON pointer of a metadata annotation.
fn annotation_pointer(key: &str) -> String {
    format!("/metadata/annotations/{}", key.replace('/', "~1"))
}

/// A configured `kube_scale` step.
#[derive(Debug, Clone)]
pub struct KubeScale {
    spec: KubeScaleSpec,
    handle: Handle,
}

impl KubeScale {
    pub fn new(spec: &KubeScaleSpec) -> KubeScale {
        KubeScale {
            spec: spec.clone(),
            handle: Handle::new(&spec.target.access),
        }
    }

    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    pub async fn run(&self, timeout: Duration) -> ActionOutput {
        let started = Instant::now();
        super::bounded_step(self.scale(), timeout, started).await
    }

    async fn scale(&self) -> Result<String, StepError> {
        let client = self.handle.client().await?;
        let t = &self.spec.target;
        let shown = format!("{}/{}", t.namespace, t.deployment);
        let d = crate::kube::deployment(&client, &t.namespace, &t.deployment).await?;
        let current = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let annotations = d.metadata.annotations.clone().unwrap_or_default();
        let recorded = annotations.get(RECORDED_REPLICAS).cloned();
        let restored = annotations.get(RESTORED_REPLICAS).cloned();
        let read = d.metadata.resource_version.clone().unwrap_or_default();
        let pointer = annotation_pointer(RECORDED_REPLICAS);
        let mut ops =
            vec![json!({"op": "test", "path": "/metadata/resourceVersion", "value": read})];
        let (wanted, text) = match self.spec.replicas {
            Replicas::Count(n) => {
                if restored.is_some() {
                    ops.push(
                        json!({"op": "remove", "path": annotation_pointer(RESTORED_REPLICAS)}),
                    );
                }
                if recorded.is_none() {
                    ops.push(if d.metadata.annotations.is_none() {
                        json!({"op": "add", "path": "/metadata/annotations",
                               "value": {RECORDED_REPLICAS: current.to_string()}})
                    } else {
                        json!({"op": "add", "path": pointer, "value": current.to_string()})
                    });
                }
                let kept = recorded.as_deref().unwrap_or("");
                let text = if recorded.is_some() {
                    format!(
                        "scaled deployment {shown} from {current} to {n} replicas (keeping the recorded count {kept})"
                    )
                } else {
                    format!(
                        "scaled deployment {shown} from {current} to {n} replicas (recorded {current})"
                    )
                };
                (n, text)
            }
            Replicas::Recorded => {
                let Some(text) = recorded else {
                    // A restore run again (its answer was lost) finds its own mark.
                    if restored.as_deref() == Some(current.to_string().as_str()) {
                        return Ok(format!(
                            "deployment {shown} is already back at the recorded {current} replicas"
                        ));
                    }
                    return Err(StepError::Refused(format!(
                        "deployment {shown} has no recorded replica count ({RECORDED_REPLICAS}): an earlier kube_scale step with a number records it"
                    )));
                };
                let n: i32 = text.parse().map_err(|_| {
                    StepError::Refused(format!(
                        "deployment {shown} has a recorded replica count that is not a number: {text:?}"
                    ))
                })?;
                ops.push(json!({"op": "remove", "path": pointer}));
                ops.push(json!({"op": "add", "path": annotation_pointer(RESTORED_REPLICAS), "value": n.to_string()}));
                (
                    n,
                    format!(
                        "scaled deployment {shown} from {current} back to the recorded {n} replicas"
                    ),
                )
            }
        };
        if ops.len() == 1 && wanted == current {
            return Ok(format!("deployment {shown} already has {current} replicas"));
        }
        ops.push(json!({"op": "add", "path": "/spec/replicas", "value": wanted}));
        let patch: json_patch::Patch =
            serde_json::from_value(Value::Array(ops)).expect("the patch is a valid JSON patch");
        crate::kube::patch_deployment(
            &client,
            &t.namespace,
            &t.deployment,
            &read,
            &Patch::<()>::Json(patch),
        )
        .await?;
        Ok(text)
    }
}
