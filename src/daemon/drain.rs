//! The end of a generation that stops (SIGTERM, or with leader election a lost Lease):
//! a bounded drain. Sources stop now; steps in flight get `daemon.drain_timeout` to
//! finish and their results are recorded (a lost Lease cancels them instead); open
//! incidents stay open in the store; the outbox delivers what it can; the listener goes
//! last, so that `/readyz` says "stopping" until the end.
//!
//! It must not start a step (effects are carried out as draining) nor close an
//! incident, and every wait in it is bounded.

use std::time::Duration;

use super::effects::Publish;
use super::generation::{Ended, Generation, Tasks};
use crate::config::Config;
use crate::engine::Input;

impl Generation<'_> {
    /// Drains the generation after its loop ended without a reload to apply.
    pub(super) async fn drain(mut self) -> Ended {
        self.draining = true;
        if self.shared.shutdown.is_cancelled() {
            self.say_stopping();
        } else {
            self.cancel_steps_of_lost_lease();
        }
        self.tasks.sources_stop.cancel();
        self.finish_steps().await;
        // Dropping the guards cancels what is left; actions kill their processes.
        self.in_flight.clear();
        self.tasks.steps.cancel();
        // Open incidents stay open: the state store has them, and the next start resumes
        // them (a step abandoned here is reported then as interrupted, not run again).
        for inc in self.engine.incidents() {
            tracing::warn!(incident = %inc.id, state = inc.state.name(), "incident left open; the next start resumes it");
        }
        self.last_write();
        let last = self.last;
        self.charts.write(&self.shared.store, last);
        drop(self.tx);
        self.tasks.flush_outbox(&self.cfg).await;
        self.tasks.stop_all().await;
        match self.shared.store.pending_notifiers() {
            Ok(waiting) => {
                for (notifier, messages) in waiting {
                    tracing::warn!(notifier = %notifier, messages, "notifications not yet delivered stay in the outbox for the next start");
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot read the outbox"),
        }
        Ended::Stopped
    }

    fn say_stopping(&self) {
        let in_flight = self.in_flight.len();
        tracing::info!(in_flight, "rearguard stopping");
        self.shared.health.set_stopping();
        if let Some(sd) = self.shared.systemd.as_ref() {
            sd.stopping(&format!(
                "stopping: {in_flight} step(s) in flight, then the outbox is flushed"
            ));
        }
    }

    /// Another replica may act from now on: what this one started is cancelled at once
    /// (its processes killed), not waited for. Those steps stay unrecorded (ordered,
    /// never finished), like a step the fence refused: this store escalates them if it
    /// is ever restored, and never runs them again.
    fn cancel_steps_of_lost_lease(&mut self) {
        let in_flight = self.in_flight.len();
        let why = format!("leadership lost: draining {in_flight} step(s) in flight");
        tracing::warn!(in_flight, "leadership lost: draining");
        self.shared.health.set_standby(Some(why.clone()));
        if let Some(sd) = self.shared.systemd.as_ref() {
            sd.status(&format!("standby: {why}"));
        }
        for incident in self.in_flight.keys() {
            tracing::error!(incident = %incident, "step cancelled: this replica no longer holds the lease");
        }
        self.in_flight.clear();
        self.tasks.steps.cancel();
    }

    /// Waits, until the drain timeout, for the steps in flight to finish, and steps the
    /// engine with their results; other inputs are dropped.
    async fn finish_steps(&mut self) {
        let deadline = tokio::time::Instant::now() + self.cfg.daemon.drain_timeout;
        while !self.in_flight.is_empty() {
            // A step the fence refused never sends a result.
            let received = tokio::select! {
                r = tokio::time::timeout_at(deadline, self.rx.recv()) => r,
                Some(incident) = self.unstarted_rx.recv() => {
                    self.in_flight.remove(&incident);
                    continue;
                }
            };
            match received {
                Ok(Some((input @ Input::StepDone(_), at))) => self.on_step_done(input, at),
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => {
                    tracing::warn!(
                        steps = self.in_flight.len(),
                        "drain timeout: abandoning in-flight steps"
                    );
                    break;
                }
            }
        }
    }

    fn on_step_done(&mut self, input: Input, at: crate::engine::Ts) {
        if let Input::StepDone(r) = &input {
            self.in_flight.remove(&r.incident);
        }
        let now = at.max(self.last);
        self.last = now;
        let effects = self.step_timed(input, now);
        self.settle(effects, now, Publish::IfChanged);
    }
}

impl Tasks {
    /// The outbox delivers what it can within the drain timeout; the rest stays in the
    /// store for the next run.
    async fn flush_outbox(&self, cfg: &Config) {
        let flush_until = tokio::time::Instant::now() + cfg.daemon.drain_timeout;
        let _ = self.flush.send(Some(flush_until));
        self.outbox.close();
        let bound = cfg.daemon.drain_timeout + longest_send(cfg) + Duration::from_secs(1);
        if tokio::time::timeout(bound, self.outbox.wait())
            .await
            .is_err()
        {
            tracing::warn!("the outbox did not stop in time");
        }
    }

    /// Stops the listener, last, and waits (bounded) for every task.
    async fn stop_all(&self) {
        self.api_stop.cancel();
        self.sources.close();
        self.tracker.close();
        let everything = async {
            self.sources.wait().await;
            self.tracker.wait().await;
        };
        if tokio::time::timeout(Duration::from_secs(5), everything)
            .await
            .is_err()
        {
            tracing::warn!("some tasks did not stop within 5s");
        }
    }
}

/// How long the slowest notifier may take to send one message, with its retries.
pub(super) fn longest_send(cfg: &Config) -> Duration {
    cfg.notifiers
        .iter()
        .map(|n| n.timeout * 3)
        .max()
        .unwrap_or_default()
}
