//! Carrying out what an engine step produced: counted in the metrics (`account`: rule
//! phases, incidents opened and closed, and the time each incident took from breach to
//! decision, from decision to rollback done and to verify), the
//! status published for the control API (`publish`), its memory and decisions written
//! to the store (`step_record`, written by `held.rs`, which holds the effects while the
//! store cannot take them), then every effect carried out in order (`dispatch`):
//! notifications to the outbox, plan steps and snapshots started as tasks, reports
//! written, transitions posted as Kubernetes Events, the rest logged.
//!
//! It must not wait: whatever takes time (a step, a snapshot, a delivery, an Event) runs
//! on a task, so that the engine's loop keeps turning. It decides nothing the engine
//! has not decided.

use std::collections::HashSet;
use std::sync::Arc;

use super::Event;
use super::generation::Generation;
use super::held::still_ordered;
use super::steps::{self, Step};
use crate::api::{Metrics, Stage, control};
use crate::config::{Config, NotifierKind, Occasion};
use crate::engine::{Effect, Engine, EntryKind, Incident, Notification, Outcome, StepOrder, Ts};
use crate::notify::outbox::{Outbox, Queued};
use crate::store::{Decision, StepRecord, Store};

/// Whether an engine step publishes the status the control API reads.
#[derive(Clone, Copy)]
pub(super) enum Publish {
    Always,
    /// Only when the step had effects.
    IfChanged,
    /// Not now: the caller publishes once, later.
    Never,
}

impl Generation<'_> {
    /// What follows every engine step: its effects counted, the status published, its
    /// memory and audit trail written to the store (with whatever waits from before),
    /// then the effects carried out; while the store cannot be written, they are held
    /// (`held.rs`). Every turn comes through here, so every turn retries the write.
    pub(super) fn settle(&mut self, effects: Vec<Effect>, now: Ts, publish: Publish) {
        account(
            &self.metrics,
            &self.engine,
            &effects,
            &mut self.counted,
            now,
        );
        let publish = match publish {
            Publish::Always => true,
            Publish::IfChanged => !effects.is_empty(),
            Publish::Never => false,
        };
        if publish {
            self.publish(now);
        }
        let urgent = !effects.is_empty();
        if urgent {
            let record = step_record(&self.cfg, &self.engine, &effects, now);
            self.unsaved.add(record, effects, now);
        }
        self.write_unsaved(now);
        self.charts.write_if_due(&self.shared.store, now, urgent);
    }

    /// Publishes what the control API's readers see.
    pub(super) fn publish(&self, now: Ts) {
        publish(&self.published, &self.metrics, &self.cfg, &self.engine, now);
    }

    /// Carries out effects in order, each produced at its engine time.
    pub(super) fn dispatch(&mut self, effects: Vec<(Ts, Effect)>) {
        for (at, effect) in effects {
            // Observers hear of an effect before what carrying it out produces (a report).
            if self.shared.observer.is_some() {
                self.shared.tell(Event::Effect(at, effect.clone()));
            }
            self.carry_out(&effect);
        }
    }

    fn carry_out(&mut self, effect: &Effect) {
        match effect {
            Effect::RunStep(order) if self.draining => {
                tracing::warn!(incident = %order.incident, step = order.step, "step not started: rearguard is stopping");
            }
            Effect::RunStep(order) if !still_ordered(&self.engine, order) => {
                tracing::warn!(incident = %order.incident, step = order.step, "held step not started: its incident no longer waits for it");
            }
            Effect::RunStep(order) => self.start_step(order),
            Effect::IncidentClosed(inc) => {
                self.in_flight.remove(&inc.id);
                self.write_report(inc);
            }
            Effect::Notify(n) => notify(&self.cfg, &self.outbox, n),
            Effect::Baked { target, revision } => {
                log_effect(&self.cfg, effect);
                let cancel = self.tasks.steps.child_token();
                steps::snapshot(&self.cfg, *target, revision, &self.tasks.tracker, cancel);
            }
            Effect::Transition {
                incident,
                target,
                occasion,
                summary,
            } => self
                .kube_events
                .record(*target, incident, *occasion, summary),
            _ => log_effect(&self.cfg, effect),
        }
    }

    /// Starts a plan step on the tracker, its drop guard held while it is in flight.
    fn start_step(&mut self, order: &StepOrder) {
        let cancel = self.tasks.steps.child_token();
        let guard = cancel.clone().drop_guard();
        self.in_flight.insert(order.incident.clone(), guard);
        let step = Step {
            action: Arc::clone(&self.actions[order.plan][order.step]),
            order: order.clone(),
            target: self.cfg.targets[order.target].name.clone(),
            timeout: self.cfg.plans[order.plan].steps[order.step].timeout,
            cancel,
            fence: self.fence.clone(),
            metrics: Arc::clone(&self.metrics),
            clock: self.shared.clock,
            done: self.tx.clone(),
            unstarted: self.unstarted_tx.clone(),
        };
        self.tasks.tracker.spawn(step.run());
    }

    fn write_report(&mut self, inc: &crate::engine::Incident) {
        let now = inc.closed_at.unwrap_or(self.last);
        self.charts.write(&self.shared.store, now);
        let evidence = crate::report::Evidence::load(&self.shared.store, &self.cfg, inc, now);
        match crate::report::write(&self.cfg.daemon.state_dir, inc, &self.cfg, &evidence) {
            Ok(path) => {
                tracing::info!(incident = %inc.id, path = %path.display(), "incident report written");
                self.shared.tell(Event::Report {
                    incident: inc.id.clone(),
                    path,
                });
            }
            Err(e) => {
                tracing::error!(incident = %inc.id, error = %e, "cannot write incident report")
            }
        }
    }
}

/// What an engine step leaves for the store besides the engine's memory: the rule
/// transitions for the audit trail and the incidents it closed.
fn step_record(cfg: &Config, engine: &Engine, effects: &[Effect], now: Ts) -> StepRecord {
    let mut record = StepRecord::default();
    let incident_of = |target: usize| {
        engine
            .incidents()
            .iter()
            .find(|i| i.target == target)
            .map(|i| i.id.clone())
            .or_else(|| {
                effects.iter().find_map(|e| match e {
                    Effect::IncidentClosed(i) if i.target == target => Some(i.id.clone()),
                    _ => None,
                })
            })
    };
    for effect in effects {
        match effect {
            Effect::RuleChanged { rule, transition } => {
                let r = &cfg.rules[*rule];
                record.decisions.push(Decision {
                    at_ms: now.0,
                    rule: r.name.clone(),
                    target: cfg.targets[r.target].name.clone(),
                    incident: incident_of(r.target),
                    from: transition.from.name().to_owned(),
                    to: transition.to.name().to_owned(),
                    evidence: transition.evidence.clone(),
                });
            }
            Effect::IncidentClosed(inc) => match serde_json::to_string(inc) {
                Ok(body) => record.closed.push((
                    inc.id.clone(),
                    inc.target_name.clone(),
                    inc.opened_at.0,
                    inc.closed_at.unwrap_or(now).0,
                    inc.outcome
                        .as_ref()
                        .map_or("open", Outcome::name)
                        .to_owned(),
                    body,
                )),
                Err(e) => {
                    tracing::error!(incident = %inc.id, error = %e, "cannot encode a closed incident")
                }
            },
            _ => {}
        }
    }
    record
}

/// What the metrics already counted of the open incidents, by id: each is counted once.
#[derive(Default)]
pub(super) struct Counted {
    opened: HashSet<String>,
    /// The first decision on the incident (to roll back, or to escalate) was timed.
    decided: HashSet<String>,
    /// Its rollback's end (the plan finished, or a step stopped it) was timed.
    rolled_back: HashSet<String>,
}

impl Counted {
    fn forget(&mut self, incident: &str) -> bool {
        self.decided.remove(incident);
        self.rolled_back.remove(incident);
        self.opened.remove(incident)
    }
}

/// Counts what a step at `now` did in the metrics: rule phases, incidents opened and
/// closed, and the stages of incidents that ended one.
fn account(metrics: &Metrics, engine: &Engine, effects: &[Effect], counted: &mut Counted, now: Ts) {
    for inc in engine.incidents() {
        if counted.opened.insert(inc.id.clone()) {
            metrics.incident_opened(inc.target, inc.cause);
        }
    }
    for effect in effects {
        match effect {
            Effect::RuleChanged { rule, transition } => metrics.rule_phase(*rule, transition.to),
            Effect::Transition {
                incident, occasion, ..
            } => {
                if let Some(inc) = find_incident(engine, effects, incident) {
                    time_transition(metrics, counted, inc, *occasion, now);
                }
            }
            Effect::Timeline {
                incident, entry, ..
            } if entry.kind == EntryKind::Verification => {
                if let Some(inc) = find_incident(engine, effects, incident) {
                    time_plan_finished(metrics, counted, inc, entry.at);
                }
            }
            Effect::IncidentClosed(inc) => {
                // Opened and closed within one step, or opened in an earlier run.
                if !counted.forget(&inc.id) {
                    metrics.incident_opened(inc.target, inc.cause);
                }
                if let Some(outcome) = &inc.outcome {
                    metrics.incident_closed(inc.target, outcome);
                }
            }
            _ => {}
        }
    }
}

/// The incident `id` as it is after the step: open, or closed by it.
fn find_incident<'a>(engine: &'a Engine, effects: &'a [Effect], id: &str) -> Option<&'a Incident> {
    engine.incidents().iter().find(|i| i.id == id).or_else(|| {
        effects.iter().find_map(|e| match e {
            Effect::IncidentClosed(i) if i.id == id => Some(&**i),
            _ => None,
        })
    })
}

/// Times the stage a transition ends: the first decision on the incident (from the
/// breach), a rollback stopped by a failed step (from the decision), a verification's
/// verdict (from the plan finishing).
fn time_transition(
    metrics: &Metrics,
    counted: &mut Counted,
    inc: &Incident,
    occasion: Occasion,
    now: Ts,
) {
    let (stage, since) = match occasion {
        Occasion::RollbackStarted | Occasion::NotRolledBack => {
            if !counted.decided.insert(inc.id.clone()) {
                return;
            }
            (Stage::Decided, Some(inc.breach_started))
        }
        Occasion::RollbackFailed => {
            if counted.rolled_back.contains(&inc.id) {
                return;
            }
            counted.rolled_back.insert(inc.id.clone());
            (Stage::RollbackDone, rollback_started(inc))
        }
        Occasion::RollbackSucceeded
        | Occasion::VerificationFailed
        | Occasion::VerificationInconclusive => (Stage::Verified, inc.plan_finished_at),
        _ => return,
    };
    if let Some(since) = since {
        metrics.stage(inc.target, stage, now.since(since));
    }
}

/// Times the rollback of an incident whose plan finished at `at`: the verification entry
/// the plan's end writes has the plan's finishing time.
fn time_plan_finished(metrics: &Metrics, counted: &mut Counted, inc: &Incident, at: Ts) {
    if inc.plan_finished_at != Some(at) {
        return;
    }
    if let Some(started) = rollback_started(inc)
        && counted.rolled_back.insert(inc.id.clone())
    {
        metrics.stage(inc.target, Stage::RollbackDone, at.since(started));
    }
}

/// When the incident's rollback was decided: its first step's start, at the same time.
fn rollback_started(inc: &Incident) -> Option<Ts> {
    inc.timeline
        .iter()
        .find(|e| e.kind == EntryKind::StepStarted)
        .map(|e| e.at)
}

/// Publishes what the control API's readers see: targets, rules and open incidents; and
/// each target's breaker and pause to the metrics.
fn publish(
    status: &tokio::sync::watch::Sender<Arc<control::Status>>,
    metrics: &Metrics,
    cfg: &Config,
    engine: &Engine,
    now: Ts,
) {
    let memory = engine.memory(now);
    for (t, target) in memory.targets.iter().enumerate() {
        let paused = memory.paused_all || target.paused;
        metrics.target_state(t, target.breaker.is_some(), paused);
    }
    let snapshot = control::Status {
        mode: cfg.daemon.mode.name().to_owned(),
        paused_all: memory.paused_all,
        targets: memory
            .targets
            .into_iter()
            .map(|t| control::TargetStatus {
                name: t.name,
                revision: t.revision,
                paused: t.paused,
                breaker: t.breaker,
                bad: t.bad.into_iter().collect(),
            })
            .collect(),
        rules: cfg
            .rules
            .iter()
            .enumerate()
            .map(|(i, r)| control::RuleStatus {
                name: r.name.clone(),
                target: cfg.targets[r.target].name.clone(),
                phase: engine.rule_phase(i).name().to_owned(),
                silenced_until: engine.silenced_until(i).map(Ts::rfc3339),
            })
            .collect(),
        incidents: engine.incidents().to_vec(),
    };
    status.send_replace(Arc::new(snapshot));
}

/// Sets the outbox backlog gauge of every notifier (zero for those with nothing queued).
pub(super) fn count_pending(store: &Store, metrics: &Metrics, names: &[String]) {
    match store.pending_notifiers() {
        Ok(waiting) => {
            for name in names {
                let n = waiting
                    .iter()
                    .find(|(w, _)| w == name)
                    .map_or(0, |(_, n)| *n);
                metrics.outbox_pending(name, n);
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot count the outbox"),
    }
}

/// Writes a notification's messages to the outbox. A notification with no notifier (none
/// is configured) and one the store cannot take yet (the outbox keeps it) are logged in
/// full, so that people hear of it through what still works.
fn notify(cfg: &Config, outbox: &Outbox, n: &Notification) {
    let level = n.level.map(|l| cfg.escalation[l].name.as_str());
    if n.notifiers.is_empty() {
        return log_notification(n);
    }
    match outbox.enqueue(n, level) {
        Ok(Queued::Written(messages)) => {
            let to: Vec<&str> = n
                .notifiers
                .iter()
                .map(|&i| cfg.notifiers[i].name.as_str())
                .collect();
            tracing::debug!(incident = %n.incident, occasion = n.occasion.name(), messages = messages.len(), notifiers = ?to, "notification queued");
            // One line per notification: a log notifier writes it when it delivers;
            // without one, it is written here, saying where it went.
            let logged = n
                .notifiers
                .iter()
                .any(|&i| matches!(cfg.notifiers[i].kind, NotifierKind::Log));
            if !logged {
                crate::notify::log_sent(&n.incident, n.occasion, &n.summary, &to.join(", "));
            }
        }
        Ok(Queued::Kept(messages, e)) => {
            tracing::error!(incident = %n.incident, error = %e, messages = messages.len(), "cannot write a notification to the outbox; it is kept in memory and written, in order, once the state store works again");
            log_notification(n);
        }
        Err(e) => {
            tracing::error!(incident = %n.incident, error = %e, "cannot encode a notification; it is not sent");
            log_notification(n);
        }
    }
}

fn log_notification(n: &Notification) {
    crate::notify::log(&n.incident, n.occasion, &n.summary);
}

/// Logs what the engine decided.
fn log_effect(cfg: &Config, effect: &Effect) {
    match effect {
        Effect::RuleChanged { rule, transition } => tracing::info!(
            rule = %cfg.rules[*rule].name,
            from = transition.from.name(),
            to = transition.to.name(),
            evidence = %transition.evidence,
            "rule changed"
        ),
        Effect::ChangeObserved {
            target,
            from,
            to,
            previous_healthy,
        } => tracing::info!(
            target = %cfg.targets[*target].name,
            from = %from,
            to = %to,
            previous_healthy,
            "revision changed"
        ),
        // A notification has its own line: the log notifier's, or `notify`'s.
        Effect::Timeline {
            incident, entry, ..
        } if entry.kind == EntryKind::Notification => {
            tracing::debug!(incident = %incident, "{}", entry.text)
        }
        Effect::Timeline {
            incident, entry, ..
        } => {
            tracing::info!(incident = %incident, "{}", entry.text)
        }
        Effect::CommandRejected { reason } => tracing::warn!(reason = %reason, "command rejected"),
        Effect::Baked { target, revision } => tracing::info!(
            target = %cfg.targets[*target].name,
            revision = %revision,
            "revision baked: its configuration is known good"
        ),
        Effect::Notify(_)
        | Effect::RunStep(_)
        | Effect::IncidentClosed(_)
        | Effect::Transition { .. } => {}
    }
}
