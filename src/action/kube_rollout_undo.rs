//! The `kube_rollout_undo` action: `kubectl rollout undo deployment/NAME
//! [--to-revision=N]` through the Kubernetes API, with the guards kubectl lacks.
//!
//! The Deployment it leaves is the one kubectl leaves from the same state (kubectl's
//! `polymorphichelpers/rollback.go`): the ReplicaSet of the revision is found among the
//! ReplicaSets the Deployment controls, by `deployment.kubernetes.io/revision` (the
//! previous revision is the second highest); its pod template, without the
//! `pod-template-hash` label, replaces the Deployment's; the Deployment's annotations
//! become its own revision, revision-history, desired-replicas, max-replicas,
//! last-applied-configuration and rollback-to annotations plus every other annotation of
//! the ReplicaSet. A Deployment whose template already matches is left alone. One
//! addition: rearguard's own `rearguard.io/recorded-replicas` (the count a `kube_scale`
//! step replaced) is kept too, so that a plan can scale back after the undo.
//!
//! What kubectl lacks: the JSON patch starts with a `test` of the resourceVersion read,
//! so a Deployment changed in between is not overwritten (the API server answers 409 or
//! 422, a retryable error); a revision rearguard marked bad (in the incident, or by the
//! `rearguard.io/marked-bad` annotation on its ReplicaSet) is refused; a Deployment no
//! longer at the incident's revision is refused (someone else acted). A paused
//! Deployment or one without history is a clear error, as in kubectl.
//!
//! An incident whose revisions differ only in their configuration generation (`18+cfg.1`
//! back to `18`: a ConfigMap or Secret changed, the Deployment did not) undoes nothing:
//! the step succeeds and says so, once it has checked that the Deployment is still at
//! that revision, and the configuration is put back by `kube_restore_config`. So one
//! level-2 plan serves both kinds of change.

use std::time::Duration;

use ::kube::Api;
use ::kube::api::{ListParams, Patch, PatchParams};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use serde_json::{Value, json};
use tokio::time::Instant;

use super::{ActionContext, ActionOutput, timed_out};
use crate::config::{KubeRolloutUndoSpec, ToRevision};
use crate::kube::config::Revision;
use crate::kube::{BAD_ANNOTATION, KubeError, POD_TEMPLATE_HASH, REVISION_ANNOTATION, StepError};

/// The Deployment annotations kept from the Deployment, not copied from the ReplicaSet
/// (kubectl's `annotationsToSkip`).
const KEPT_ANNOTATIONS: [&str; 6] = [
    "kubectl.kubernetes.io/last-applied-configuration",
    REVISION_ANNOTATION,
    "deployment.kubernetes.io/revision-history",
    "deployment.kubernetes.io/desired-replicas",
    "deployment.kubernetes.io/max-replicas",
    "deprecated.deployment.rollback.to",
];

/// Why a rollout undo did not happen.
#[derive(Debug, thiserror::Error)]
pub enum UndoError {
    #[error(transparent)]
    Kube(#[from] KubeError),
    #[error("deployment {0} not found")]
    NotFound(String),
    #[error("no rollout history found for deployment {0}: it has no previous revision")]
    NoHistory(String),
    #[error("unable to find revision {revision} in the history of deployment {deployment}")]
    RevisionNotFound { deployment: String, revision: i64 },
    #[error("{{to_revision}} is {0:?}, not a deployment revision number")]
    NotARevision(String),
    #[error(
        "revision {revision} of deployment {deployment} is marked bad by rearguard; it is never a rollback destination"
    )]
    MarkedBad { deployment: String, revision: i64 },
    #[error(
        "deployment {deployment} is paused: a paused deployment is not rolled back; resume it first (a kube_resume step before this one)"
    )]
    Paused { deployment: String },
    #[error(
        "deployment {deployment} is at revision {current}, not at the incident's revision {incident}: it changed since the incident opened, so it is left alone"
    )]
    Moved {
        deployment: String,
        current: String,
        incident: String,
    },
    #[error(
        "deployment {deployment} changed while it was being rolled back (resourceVersion {read} is no longer current); nothing was changed, and the step may be retried"
    )]
    Conflict { deployment: String, read: String },
}

impl UndoError {
    /// Whether running the step again may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            UndoError::Kube(e) => e.is_retryable(),
            UndoError::Conflict { .. } => true,
            _ => false,
        }
    }
}

/// A configured `kube_rollout_undo` step. The client is built on first use and kept.
#[derive(Debug, Clone)]
pub struct KubeRolloutUndo {
    spec: KubeRolloutUndoSpec,
    handle: crate::kube::Handle,
}

impl KubeRolloutUndo {
    pub fn new(spec: &KubeRolloutUndoSpec) -> KubeRolloutUndo {
        KubeRolloutUndo {
            spec: spec.clone(),
            handle: crate::kube::Handle::new(&spec.access),
        }
    }

    pub fn handle(&self) -> &crate::kube::Handle {
        &self.handle
    }

    /// Rolls the Deployment back once; the whole exchange is bounded by `timeout`.
    pub async fn run(&self, ctx: &ActionContext, timeout: Duration) -> ActionOutput {
        let started = Instant::now();
        match tokio::time::timeout(timeout, self.undo(ctx)).await {
            Ok(Ok(output)) => ActionOutput {
                ok: true,
                output,
                error: None,
                duration: started.elapsed(),
            },
            Ok(Err(e)) => {
                let retry = if e.is_retryable() { " [retryable]" } else { "" };
                ActionOutput::failed(format!("{e}{retry}"), String::new(), started)
            }
            Err(_) => ActionOutput::failed(timed_out(timeout), String::new(), started),
        }
    }

    fn shown(&self) -> String {
        format!("{}/{}", self.spec.namespace, self.spec.deployment)
    }

    /// What it did, or why it did nothing.
    pub async fn undo(&self, ctx: &ActionContext) -> Result<String, UndoError> {
        let client = self.handle.client().await?;
        let shown = self.shown();
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &self.spec.namespace);
        let replica_sets: Api<ReplicaSet> = Api::namespaced(client, &self.spec.namespace);
        let deployment = deployments
            .get_opt(&self.spec.deployment)
            .await
            .map_err(KubeError::from)?
            .ok_or_else(|| UndoError::NotFound(shown.clone()))?;
        if let Some(kept) = config_only(ctx) {
            return self.config_only(&deployment, kept, ctx);
        }
        let to_revision = match &self.spec.to_revision {
            ToRevision::Previous => 0,
            ToRevision::Number(n) => *n,
            ToRevision::Incident => {
                let text = ctx.to_revision.clone().unwrap_or_default();
                Revision::parse(&text)
                    .map(|r| r.deployment)
                    .filter(|n| *n > 0)
                    .ok_or(UndoError::NotARevision(text))?
            }
        };
        let selector = deployment
            .spec
            .as_ref()
            .map(|s| crate::kube::selector_text(&s.selector))
            .unwrap_or_default();
        let listed = replica_sets
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(KubeError::from)?;
        let owned = crate::kube::controlled(&deployment, &listed.items);
        let (rs, revision) = find_revision(&owned, to_revision).ok_or_else(|| {
            if to_revision > 0 {
                UndoError::RevisionNotFound {
                    deployment: shown.clone(),
                    revision: to_revision,
                }
            } else {
                UndoError::NoHistory(shown.clone())
            }
        })?;
        let marked = rs
            .metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(BAD_ANNOTATION));
        if marked || ctx.bad_revisions.contains(&revision.to_string()) {
            return Err(UndoError::MarkedBad {
                deployment: shown,
                revision,
            });
        }
        let spec = deployment.spec.clone().unwrap_or_default();
        let mut template = rs
            .spec
            .as_ref()
            .and_then(|s| s.template.clone())
            .unwrap_or_default();
        if crate::kube::same_template(&template, &spec.template) {
            return Ok(format!(
                "skipped rollback of deployment {shown}: its template already matches revision {revision}"
            ));
        }
        let current = current_revision(&deployment);
        self.not_moved(ctx, &current)?;
        if spec.paused == Some(true) {
            return Err(UndoError::Paused { deployment: shown });
        }
        if let Some(labels) = template.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
            labels.remove(POD_TEMPLATE_HASH);
        }
        let mut annotations = serde_json::Map::new();
        // Beyond kubectl: the count a kube_scale step replaced is rearguard's own record
        // on the Deployment, and a plan that scales down, undoes, then scales back
        // (level 3) needs it after the undo.
        for key in KEPT_ANNOTATIONS
            .into_iter()
            .chain([super::kube_scale::RECORDED_REPLICAS])
        {
            if let Some(v) = deployment
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(key))
            {
                annotations.insert(key.to_owned(), json!(v));
            }
        }
        for (k, v) in rs.metadata.annotations.iter().flatten() {
            if !KEPT_ANNOTATIONS.contains(&k.as_str()) {
                annotations.insert(k.clone(), json!(v));
            }
        }
        let read = deployment
            .metadata
            .resource_version
            .clone()
            .unwrap_or_default();
        // `add` replaces a member that exists, as kubectl's `replace` does, and also
        // works on a Deployment without annotations, where `replace` fails.
        let ops: Value = json!([
            {"op": "test", "path": "/metadata/resourceVersion", "value": read},
            {"op": "replace", "path": "/spec/template", "value": template},
            {"op": "add", "path": "/metadata/annotations", "value": annotations},
        ]);
        let patch: json_patch::Patch =
            serde_json::from_value(ops).expect("the patch is a valid JSON patch");
        match deployments
            .patch(
                &self.spec.deployment,
                &PatchParams::default(),
                &Patch::<()>::Json(patch),
            )
            .await
        {
            Ok(_) => Ok(format!(
                "rolled back deployment {shown} from revision {} to revision {revision} (replicaset {})",
                if current.is_empty() { "?" } else { &current },
                rs.metadata.name.as_deref().unwrap_or("?")
            )),
            Err(e) => {
                let client = self.handle.client().await?;
                let ns = &self.spec.namespace;
                match StepError::from_write(e, &client, ns, &self.spec.deployment, &read).await {
                    StepError::Conflict { .. } | StepError::ObjectConflict { .. } => {
                        Err(UndoError::Conflict {
                            deployment: shown,
                            read,
                        })
                    }
                    StepError::NotFound(d) => Err(UndoError::NotFound(d)),
                    StepError::Kube(k) => Err(k.into()),
                    StepError::Refused(text) | StepError::NotYet(text) => {
                        Err(KubeError::Config(text).into())
                    }
                }
            }
        }
    }
}

impl KubeRolloutUndo {
    /// A numeric incident revision is the Deployment's own revision (a kube_deployment
    /// change observer), with its configuration generation: if the Deployment moved on,
    /// a person or a deploy acted, and wins.
    fn not_moved(&self, ctx: &ActionContext, current: &str) -> Result<(), UndoError> {
        let Some(incident) = ctx.from_revision.as_deref() else {
            return Ok(());
        };
        match Revision::parse(incident) {
            Some(r) if r.deployment.to_string() != current => Err(UndoError::Moved {
                deployment: self.shown(),
                current: current.to_owned(),
                incident: incident.to_owned(),
            }),
            _ => Ok(()),
        }
    }

    /// The undo of an incident that changed only the configuration: nothing to undo,
    /// once the Deployment is seen still at that revision.
    fn config_only(
        &self,
        deployment: &Deployment,
        kept: i64,
        ctx: &ActionContext,
    ) -> Result<String, UndoError> {
        let current = current_revision(deployment);
        self.not_moved(ctx, &current)?;
        Ok(format!(
            "deployment {} stays at revision {kept}: only its configuration changed ({} to {}), nothing to undo",
            self.shown(),
            ctx.from_revision.as_deref().unwrap_or("?"),
            ctx.to_revision.as_deref().unwrap_or("?"),
        ))
    }
}

/// The Deployment's own revision annotation, empty when it has none.
fn current_revision(deployment: &Deployment) -> String {
    deployment
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(REVISION_ANNOTATION))
        .cloned()
        .unwrap_or_default()
}

/// The Deployment revision an incident keeps when its revisions differ only in their
/// configuration generation (`18+cfg.1` back to `18`); `None` otherwise.
pub fn config_only(ctx: &ActionContext) -> Option<i64> {
    let from = Revision::parse(ctx.from_revision.as_deref()?)?;
    let to = Revision::parse(ctx.to_revision.as_deref()?)?;
    (from.same_deployment(to) && from != to).then_some(from.deployment)
}

/// The ReplicaSet of `to_revision`, or of the previous revision (the second highest)
/// when it is 0, with its revision: kubectl's `deploymentRevision`, which goes through
/// the ReplicaSets in the order the API server listed them.
fn find_revision<'a>(owned: &[&'a ReplicaSet], to_revision: i64) -> Option<(&'a ReplicaSet, i64)> {
    let mut latest: Option<(&ReplicaSet, i64)> = None;
    let mut previous: Option<(&ReplicaSet, i64)> = None;
    for rs in owned {
        let Some(v) = crate::kube::revision(rs.metadata.annotations.as_ref()) else {
            continue;
        };
        if to_revision == 0 {
            if latest.is_none_or(|(_, l)| l < v) {
                previous = latest;
                latest = Some((rs, v));
            } else if previous.is_none_or(|(_, p)| p < v) {
                previous = Some((rs, v));
            }
        } else if v == to_revision {
            return Some((rs, v));
        }
    }
    if to_revision > 0 { None } else { previous }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rs(name: &str, revision: Option<&str>) -> ReplicaSet {
        let mut rs = ReplicaSet::default();
        rs.metadata.name = Some(name.to_owned());
        if let Some(r) = revision {
            rs.metadata.annotations = Some([(REVISION_ANNOTATION.to_owned(), r.to_owned())].into());
        }
        rs
    }

    fn name(found: Option<(&ReplicaSet, i64)>) -> Option<(String, i64)> {
        found.map(|(rs, v)| (rs.metadata.name.clone().unwrap(), v))
    }

    #[test]
    fn the_previous_revision_is_the_second_highest_whatever_the_order() {
        let sets = [
            rs("a", Some("3")),
            rs("b", Some("5")),
            rs("c", Some("4")),
            rs("d", Some("x")),
        ];
        let owned: Vec<&ReplicaSet> = sets.iter().collect();
        assert_eq!(name(find_revision(&owned, 0)), Some(("c".into(), 4)));
        assert_eq!(name(find_revision(&owned, 3)), Some(("a".into(), 3)));
        assert_eq!(name(find_revision(&owned, 9)), None);
    }

    #[test]
    fn only_an_incident_within_one_deployment_revision_is_configuration_only() {
        let ctx = |from: &str, to: &str| ActionContext {
            from_revision: Some(from.to_owned()),
            to_revision: Some(to.to_owned()),
            ..Default::default()
        };
        assert_eq!(config_only(&ctx("18+cfg.1", "18")), Some(18));
        assert_eq!(config_only(&ctx("18+cfg.3", "18+cfg.2")), Some(18));
        assert_eq!(config_only(&ctx("19", "18+cfg.1")), None);
        assert_eq!(config_only(&ctx("19", "18")), None);
        assert_eq!(config_only(&ctx("18", "18")), None);
        assert_eq!(config_only(&ctx("v2+cfg.1", "v2")), None);
    }

    #[test]
    fn one_revision_is_no_history_and_a_missing_annotation_is_revision_zero() {
        let one = [rs("a", Some("1"))];
        assert_eq!(
            name(find_revision(&one.iter().collect::<Vec<_>>(), 0)),
            None
        );
        let two = [rs("a", Some("1")), rs("b", None)];
        assert_eq!(
            name(find_revision(&two.iter().collect::<Vec<_>>(), 0)),
            Some(("b".into(), 0))
        );
    }
}
