//! The tasks an effect starts off the engine's loop: a plan step (fenced with leader
//! election, bounded by its timeout, abandoned when cancelled, its result sent back as
//! `Input::StepDone`) and the snapshot of a baked revision's configuration (retried
//! with a backoff).
//!
//! They must not touch the engine or the store: a step's only way back is the engine's
//! channel, and a snapshot's outcome is only logged.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Clock;
use crate::action::{Action, ActionContext, kube_snapshot};
use crate::api::Metrics;
use crate::config::{Config, KubeDeploymentRef};
use crate::engine::{Input, StepOrder, StepResult, Ts};
use crate::kube::{Handle, StepError};

/// A plan step to run as its own task.
pub(super) struct Step {
    pub(super) action: Arc<Action>,
    pub(super) order: StepOrder,
    /// The target's name.
    pub(super) target: String,
    pub(super) timeout: Duration,
    /// Cancelled to abandon the step; the engine's loop holds its drop guard.
    pub(super) cancel: CancellationToken,
    /// With leader election: the term's check before the step starts.
    pub(super) fence: Option<Arc<crate::leader::Fence>>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) clock: Clock,
    /// Where the result goes: the engine's channel.
    pub(super) done: mpsc::Sender<(Input, Ts)>,
    /// Where a step the fence refused is said: its incident.
    pub(super) unstarted: mpsc::UnboundedSender<String>,
}

impl Step {
    pub(super) async fn run(self) {
        if !self.passes_fence().await {
            return;
        }
        let result = self.act().await;
        self.metrics
            .action(self.order.plan, self.order.step, result.ok);
        let _ = self
            .done
            .send((Input::StepDone(result), self.clock.now()))
            .await;
    }

    /// Fenced right before it acts: a replica that lost the Lease never starts a step.
    /// The step stays unrecorded (ordered, never finished), so the engine does not count
    /// it as a failed rollback; the generation ends, and a later restore of this store
    /// escalates it instead of running it.
    async fn passes_fence(&self) -> bool {
        let Some(fence) = &self.fence else {
            return true;
        };
        let checked = tokio::select! {
            c = fence.check() => c,
            _ = self.cancel.cancelled() => return false,
        };
        if let Err(e) = checked {
            let order = &self.order;
            tracing::error!(incident = %order.incident, step = order.step, error = %e, "step not started: this replica no longer holds the lease");
            let _ = self.unstarted.send(order.incident.clone());
            return false;
        }
        true
    }

    /// Runs the action, or gives it up when cancelled.
    async fn act(&self) -> StepResult {
        let order = &self.order;
        let ctx = ActionContext {
            incident: order.incident.clone(),
            target: self.target.clone(),
            rule: order.rule.clone(),
            from_revision: order.from_revision.clone(),
            to_revision: order.to_revision.clone(),
            bad_revisions: order.bad_revisions.clone(),
            attempt: order.attempt,
        };
        let started = Instant::now();
        let result = |ok, duration: Duration, output, error| StepResult {
            incident: order.incident.clone(),
            step: order.step,
            attempt: order.attempt,
            ok,
            duration_ms: duration.as_millis() as u64,
            output,
            error,
        };
        tokio::select! {
            out = self.action.run(&ctx, self.timeout) => {
                result(out.ok, out.duration, out.output, out.error)
            }
            _ = self.cancel.cancelled() => result(
                false,
                started.elapsed(),
                String::new(),
                Some("abandoned: rearguard stopped before the step finished".to_owned()),
            ),
        }
    }
}

/// Snapshots a baked revision's configuration off the engine's loop and logs the
/// outcome: a host target's `config_files` into the state directory (one try:
/// `config_files::take`), a `kube_deployment` target's ConfigMaps and Secrets on the
/// cluster (a task on the steps' tracker, each try bounded to a minute). A cluster try
/// that fails is tried again after a backoff (10 s doubling to 5 min, for an hour:
/// `kube_snapshot::retry_waits`; each wait jittered down to as little as half), each
/// distinct error logged once, until cancelled; a refusal (the Deployment moved to
/// another revision, a snapshot object holds other content, a required object is
/// missing) is not retried,
/// as waiting does not change it. In shadow mode nothing is written.
pub(super) fn snapshot(
    cfg: &Config,
    target: usize,
    revision: &str,
    tracker: &TaskTracker,
    cancel: CancellationToken,
) {
    let t = &cfg.targets[target];
    if !t.config_files.is_empty() {
        return snapshot_files(cfg, target, revision, tracker);
    }
    let Some(crate::config::ChangeSpec::KubeDeployment(spec)) = t.change.clone() else {
        return;
    };
    let snapshot = Snapshot {
        spec,
        name: t.name.clone(),
        revision: revision.to_owned(),
        keep: t.keep_snapshots,
    };
    if cfg.daemon.mode == crate::config::Mode::Shadow {
        let (name, revision) = (&snapshot.name, &snapshot.revision);
        tracing::info!(target = %name, revision = %revision, "shadow mode: would snapshot revision {revision}");
        return;
    }
    tracker.spawn(snapshot.take(cancel));
}

/// Copies a host target's `config_files` into the state directory, on the blocking pool.
fn snapshot_files(cfg: &Config, target: usize, revision: &str, tracker: &TaskTracker) {
    let t = &cfg.targets[target];
    let (name, revision) = (t.name.clone(), revision.to_owned());
    if cfg.daemon.mode == crate::config::Mode::Shadow {
        tracing::info!(target = %name, revision = %revision, "shadow mode: would snapshot the configuration files of revision {revision}");
        return;
    }
    let (dir, files, keep) = (
        cfg.daemon.state_dir.clone(),
        t.config_files.clone(),
        t.keep_snapshots,
    );
    tracker.spawn(async move {
        let taken = tokio::task::spawn_blocking({
            let (name, revision) = (name.clone(), revision.clone());
            move || crate::action::config_files::take(&dir, &name, &revision, &files, keep)
        })
        .await
        .unwrap_or_else(|e| Err(format!("the snapshot was interrupted: {e}")));
        match taken {
            Ok(text) => tracing::info!(target = %name, revision = %revision, "{text}"),
            Err(error) => {
                tracing::warn!(target = %name, revision = %revision, error = %error, "cannot snapshot the revision's configuration files")
            }
        }
    });
}

/// A revision's snapshot to take.
struct Snapshot {
    spec: KubeDeploymentRef,
    /// The target's name.
    name: String,
    revision: String,
    keep: u32,
}

impl Snapshot {
    /// Takes the snapshot, trying again after a backoff while it fails.
    async fn take(self, cancel: CancellationToken) {
        let (name, revision) = (&self.name, &self.revision);
        let handle = Handle::new(&self.spec.access);
        let mut waits = kube_snapshot::retry_waits();
        let mut said: Option<String> = None;
        loop {
            let Some((error, again)) = self.try_once(&handle, &cancel).await else {
                return;
            };
            let wait = if again {
                waits.next().map(crate::jitter::jitter)
            } else {
                None
            };
            if said.as_ref() != Some(&error) {
                match wait {
                    Some(w) => {
                        tracing::warn!(target = %name, revision = %revision, error = %error, retry_in = ?w, "cannot snapshot the revision's configuration; trying again")
                    }
                    None => {
                        tracing::warn!(target = %name, revision = %revision, error = %error, "cannot snapshot the revision's configuration")
                    }
                }
                said = Some(error);
            }
            let Some(wait) = wait else {
                if again {
                    tracing::warn!(target = %name, revision = %revision, "snapshot given up after an hour of failures: the revision has no snapshot to restore from");
                }
                return;
            };
            tokio::select! {
                _ = cancel.cancelled() => return self.abandoned(),
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// One try, bounded to a minute: `None` when it is over (taken, or abandoned), else
    /// the error and whether trying again may help.
    async fn try_once(
        &self,
        handle: &Handle,
        cancel: &CancellationToken,
    ) -> Option<(String, bool)> {
        let (name, revision) = (&self.name, &self.revision);
        let taken = kube_snapshot::take(&self.spec, handle, revision, self.keep);
        tokio::select! {
            _ = cancel.cancelled() => {
                self.abandoned();
                None
            }
            r = tokio::time::timeout(Duration::from_secs(60), taken) => match r {
                Ok(Ok(text)) => {
                    tracing::info!(target = %name, revision = %revision, "{text}");
                    None
                }
                Ok(Err(e)) => {
                    let again = !matches!(e, StepError::Refused(_));
                    Some((e.to_string(), again))
                }
                Err(_) => Some(("timed out after 1m".to_owned(), true)),
            },
        }
    }

    fn abandoned(&self) {
        let (name, revision) = (&self.name, &self.revision);
        tracing::info!(target = %name, revision = %revision, "snapshot abandoned: rearguard is stopping or reloading");
    }
}
