//! What waits while the state store cannot be written (a full disk, a read-only
//! filesystem): the engine's state and the audit trail of the steps whose write failed,
//! and every effect of those steps and of the steps after them, held in order.
//!
//! The engine's memory is written before any of its effects is carried out, so while it
//! cannot be, no plan step starts, no notification is queued and no report is written:
//! the incident waits. Escalation goes through what still works: every held
//! notification is logged in full when it is held. Every turn of the engine's loop tries
//! the write again; once it succeeds, the held effects are carried out once, in their
//! order (a held step only if its incident still waits for it). The same turns retry the
//! outbox's messages kept in memory, and say whether the store fails: `/readyz`, the
//! metrics (systemd's status line reads the same `Health`).
//!
//! It must not decide anything the engine has not: it holds and releases what the engine
//! ordered, and drops nothing but a step whose incident no longer waits for it.

use super::generation::Generation;
use crate::engine::{Effect, Engine, IncidentState, StepOrder, Ts};
use crate::store::{StepRecord, StoreError};

/// What waits for the state store.
#[derive(Default)]
pub(super) struct Unsaved {
    /// The audit trail not yet written (rule transitions, closed incidents); `Some`
    /// while the engine's memory waits to be written.
    record: Option<StepRecord>,
    /// Effects not carried out yet, with the engine time they were produced at.
    held: Vec<(Ts, Effect)>,
    /// How many of `held` were already said to be held.
    said: usize,
    /// Why the engine's state cannot be written, while it cannot.
    error: Option<String>,
    /// Failed writes of the engine's state in this generation.
    failures: u64,
}

impl Unsaved {
    /// Adds what one engine step left behind: its audit trail, and its effects behind
    /// those already waiting.
    pub(super) fn add(&mut self, record: StepRecord, effects: Vec<Effect>, now: Ts) {
        match &mut self.record {
            Some(waiting) => {
                waiting.decisions.extend(record.decisions);
                waiting.closed.extend(record.closed);
            }
            None => self.record = Some(record),
        }
        self.held.extend(effects.into_iter().map(|e| (now, e)));
    }

    /// Nothing waits for the store.
    pub(super) fn is_empty(&self) -> bool {
        self.record.is_none() && self.held.is_empty()
    }

    /// How many notification messages are held (one per notifier of a notification).
    fn messages(&self) -> usize {
        self.held
            .iter()
            .map(|(_, e)| match e {
                Effect::Notify(n) => n.notifiers.len(),
                _ => 0,
            })
            .sum()
    }
}

impl Generation<'_> {
    /// Writes what waits (the engine's memory as it is now, and the audit trail of the
    /// steps not yet written), then carries out the held effects in order. While the
    /// write fails they stay held. Then retries the outbox's kept messages and says
    /// whether the store fails.
    pub(super) fn write_unsaved(&mut self, now: Ts) {
        if self.unsaved.record.is_some() {
            if let Err(e) = self.write_state(now) {
                self.state_not_written(&e);
                self.say_store();
                return;
            }
            if self.unsaved.error.take().is_some() {
                let held = self.unsaved.held.len();
                tracing::info!(
                    held,
                    "the engine's state is written again; carrying out what was held"
                );
            }
        }
        let held = std::mem::take(&mut self.unsaved.held);
        self.unsaved.said = 0;
        self.dispatch(held);
        match self.outbox.write_kept() {
            Ok(0) | Err(_) => {}
            Ok(n) => tracing::info!(
                messages = n,
                "notifications kept in memory are written to the outbox"
            ),
        }
        self.say_store();
    }

    /// Whether nothing waits for the state store, in the engine's loop or the outbox.
    pub(super) fn nothing_unwritten(&self) -> bool {
        self.unsaved.is_empty() && self.outbox.unwritten() == 0
    }

    /// The drain's last try to write what waits; what still cannot be written is lost
    /// with the process (its notifications were logged when they were held).
    pub(super) fn last_write(&mut self) {
        self.write_unsaved(self.last);
        let (held, kept) = (self.unsaved.held.len(), self.outbox.unwritten());
        if held > 0 || kept > 0 {
            tracing::error!(
                held_effects = held,
                kept_messages = kept,
                "the state store still cannot be written at the stop: held effects are not carried out and kept notifications are not sent"
            );
        }
    }

    /// Writes the engine's memory with the audit trail that waits, in one transaction.
    fn write_state(&mut self, now: Ts) -> Result<(), StoreError> {
        let Some(record) = self.unsaved.record.as_mut() else {
            return Ok(());
        };
        match serde_json::to_string(&self.engine.memory(now)) {
            Ok(body) => record.memory = Some((now.0, body)),
            Err(e) => tracing::error!(error = %e, "cannot encode the engine's state"),
        }
        self.shared.store.record_step(record)?;
        self.unsaved.record = None;
        Ok(())
    }

    /// Counts a failed write, logs it once per distinct error, and says what it holds.
    fn state_not_written(&mut self, e: &StoreError) {
        self.unsaved.failures += 1;
        let error = e.to_string();
        if self.unsaved.error.as_ref() != Some(&error) {
            tracing::error!(error = %error, "cannot write the engine's state to the state store: its effects are held, no step starts until it is written; trying again every tick");
            self.unsaved.error = Some(error);
        }
        let said = self.unsaved.said;
        for (_, effect) in &self.unsaved.held[said..] {
            match effect {
                Effect::RunStep(order) => {
                    tracing::warn!(incident = %order.incident, step = order.step, attempt = order.attempt, "step held: it starts once the engine's state is written");
                }
                Effect::Notify(n) => {
                    tracing::warn!(incident = %n.incident, occasion = n.occasion.name(), "notification held: it is queued once the engine's state is written");
                    crate::notify::log(&n.incident, n.occasion, &n.summary);
                }
                _ => {}
            }
        }
        self.unsaved.said = self.unsaved.held.len();
    }

    /// Tells `/readyz` and the metrics whether the store fails, and what waits for it.
    fn say_store(&self) {
        let failing = self.unsaved.error.clone().or_else(|| self.outbox.failing());
        self.shared.health.set_store_failing(failing);
        let unwritten = self.outbox.unwritten() + self.unsaved.messages();
        self.metrics.outbox_unwritten(unwritten as u64);
        self.metrics
            .store_write_failures(self.unsaved.failures + self.outbox.write_failures());
    }
}

/// Whether the engine still waits for this step: its incident is open and acting on
/// this very step and attempt. A step held while the store failed may have been
/// overtaken (an operator resolved the incident meanwhile); it must not start then.
pub(super) fn still_ordered(engine: &Engine, order: &StepOrder) -> bool {
    engine.incidents().iter().any(|i| {
        i.id == order.incident
            && i.state
                == IncidentState::Acting {
                    step: order.step,
                    attempt: order.attempt,
                }
    })
}
