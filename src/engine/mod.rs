//! The decision engine: a deterministic state machine from inputs to effects.
//!
//! `Engine::step(input, now)` is the only entry point. The engine does no I/O and reads no
//! clock: every input carries its time, every consequence is returned as an [`Effect`]
//! for the daemon (or replay, or a test) to carry out. Windows, `for` periods, cooldowns,
//! escalation delays, verification windows and blame windows all live here, so all of
//! them are tested without sleeping.

mod incident;
mod memory;
mod reading;
pub mod reload;
mod rule;
mod stats;

#[cfg(test)]
mod tests;

use std::collections::{BTreeSet, VecDeque};

use crate::config::units::format_duration;
use crate::config::{Config, Mode, Occasion, OnFailure, RuleMode, Threshold};

pub use incident::{
    Cause, Entry, EntryKind, Facts, Incident, IncidentState, Outcome, RuleFact, StepFact,
};
pub use memory::Memory;
pub use reading::{Measure, Reading, ReadingState, Ts};
pub use rule::{Phase, Transition};

/// Everything that can happen to the engine.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    Reading(Reading),
    /// Time passes: windows expire, timers fire. The daemon ticks at `daemon.tick`.
    Tick,
    /// The target's current revision, as observed. The first observation of a target is
    /// not a change; a different revision later is. `at` is the earliest time the change
    /// can have happened: for a polling observer, its previous observation (which still
    /// saw the old revision); for an exact source, the time of the change itself.
    Change {
        target: usize,
        revision: String,
        at: Ts,
    },
    /// A plan step ordered by [`Effect::RunStep`] has finished.
    StepDone(StepResult),
    Command(Command),
}

/// The result of one attempt of one step.
#[derive(Debug, Clone, PartialEq)]
pub struct StepResult {
    pub incident: String,
    pub step: usize,
    pub attempt: u32,
    pub ok: bool,
    pub duration_ms: u64,
    /// What the action printed or answered, already bounded in size.
    pub output: String,
    /// Why it failed, when it did.
    pub error: Option<String>,
}

/// What an operator can ask of the engine. `by` names who asked, for the audit trail.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Acknowledge {
        incident: String,
        by: String,
    },
    Resolve {
        incident: String,
        by: String,
    },
    ClearBreaker {
        target: usize,
        by: String,
    },
    /// Pause automatic action on one target, or on all when `target` is `None`.
    Pause {
        target: Option<usize>,
        by: String,
    },
    Resume {
        target: Option<usize>,
        by: String,
    },
    /// Run the target's plan on an open incident now, as an operator decided: the guard
    /// rails of automatic action (blame window, pause, breaker, cooldown, rate limit) are
    /// the operator's call, but a revision marked bad is never a destination and shadow
    /// mode never acts.
    Rollback {
        incident: String,
        by: String,
    },
    /// Silence a rule for a while: its firing opens no incident and joins none until the
    /// silence ends (then a rule still firing opens one). Zero lifts a silence.
    Silence {
        rule: usize,
        for_: std::time::Duration,
        by: String,
    },
}

/// What the engine asks the outside world to do or to record.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// A rule changed phase (the audit trail of decisions).
    RuleChanged {
        rule: usize,
        transition: Transition,
    },
    /// A target's revision changed.
    ChangeObserved {
        target: usize,
        from: String,
        to: String,
        previous_healthy: bool,
    },
    /// A line was added to an incident's timeline.
    Timeline {
        incident: String,
        target: usize,
        entry: Entry,
    },
    /// Run one attempt of one plan step and report back with [`Input::StepDone`].
    RunStep(StepOrder),
    Notify(Box<Notification>),
    /// An incident reached a transition (opened, rollback started, succeeded or failed,
    /// verification failed, escalated, blind, acknowledged, resolved), whatever the
    /// escalation ladder sends: what a cluster's Events record. `summary` is the line a
    /// notification would carry.
    Transition {
        incident: String,
        target: usize,
        occasion: Occasion,
        summary: String,
    },
    /// The incident has ended; write its report.
    IncidentClosed(Box<Incident>),
    /// An operator command could not be applied.
    CommandRejected {
        reason: String,
    },
    /// The target's current revision has been healthy (no rule of the target firing, no
    /// open incident of the target) for the target's `bake` time: its configuration is
    /// known good and may be snapshotted. Emitted once per revision.
    Baked {
        target: usize,
        revision: String,
    },
}

/// An order to run one step, with the values an action may use.
#[derive(Debug, Clone, PartialEq)]
pub struct StepOrder {
    pub incident: String,
    pub target: usize,
    pub plan: usize,
    pub step: usize,
    pub attempt: u32,
    pub rule: String,
    pub from_revision: Option<String>,
    pub to_revision: Option<String>,
    /// The target's revisions marked bad, which an action must never go back to.
    pub bad_revisions: Vec<String>,
}

/// A message for people, sent to the notifiers of an escalation level.
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    pub incident: String,
    pub target: usize,
    pub occasion: Occasion,
    /// The escalation level that sends it; `None` when no levels are configured, and for
    /// acknowledgement and resolution, which go to every notifier already told.
    pub level: Option<usize>,
    pub notifiers: Vec<usize>,
    /// One line: target, what happened, rules, the latest decision, the incident id.
    pub summary: String,
    pub facts: Facts,
}

#[derive(Debug, Clone, Default)]
struct SignalState {
    error_since: Option<Ts>,
    last_error: Option<String>,
    blind: bool,
    /// Values kept for baselines, oldest first; only for signals that need them.
    history: VecDeque<(Ts, f64)>,
    keep: Option<std::time::Duration>,
    baseline: Option<f64>,
}

/// The most values a signal keeps for its baseline.
const HISTORY_CAP: usize = 100_000;

#[derive(Debug, Clone, Default)]
struct TargetState {
    revision: Option<String>,
    changed_at: Option<Ts>,
    /// The revision before the current one, and whether it was healthy when replaced.
    previous: Option<(String, bool)>,
    /// Revisions rearguard rolled back from: never a rollback destination.
    bad: BTreeSet<String>,
    paused: bool,
    /// Why automatic action is stopped until an operator clears it.
    breaker: Option<String>,
    /// Start times of recent rollbacks, for the rate limit.
    rollbacks: VecDeque<Ts>,
    last_rollback_end: Option<Ts>,
    last_incident_id: Option<String>,
    /// Since when the current revision has been healthy without a break, for `bake`.
    healthy_since: Option<Ts>,
    /// The last revision [`Effect::Baked`] was emitted for. Deliberately not part of
    /// the memory kept across restarts: after a restart the revision bakes again and the
    /// snapshot is taken again, which finds its objects already there (a snapshot cut
    /// short by a crash is completed rather than lost).
    baked: Option<String>,
}

#[derive(Debug, Clone)]
struct PendingNotice {
    incident: String,
    level: usize,
    occasion: Occasion,
    due: Ts,
}

/// The decision engine. See the module documentation.
pub struct Engine {
    cfg: Config,
    rules: Vec<rule::RuleState>,
    by_signal: Vec<Vec<usize>>,
    within_rules: Vec<usize>,
    signals: Vec<SignalState>,
    targets: Vec<TargetState>,
    /// Open incidents.
    incidents: Vec<Incident>,
    pending: Vec<PendingNotice>,
    paused_all: bool,
    /// Rules silenced by an operator: until when, and by whom.
    silenced: Vec<Option<(Ts, String)>>,
    out: Vec<Effect>,
}

impl Engine {
    pub fn new(cfg: Config) -> Engine {
        let rules = cfg.rules.iter().map(|_| rule::RuleState::new()).collect();
        let rule_count = cfg.rules.len();
        let mut by_signal = vec![Vec::new(); cfg.signals.len()];
        let mut signals = vec![SignalState::default(); cfg.signals.len()];
        let mut within_rules = Vec::new();
        for (i, r) in cfg.rules.iter().enumerate() {
            by_signal[r.signal].push(i);
            if matches!(r.mode, RuleMode::Within { .. }) {
                within_rules.push(i);
            }
            let uses_baseline = [r.when, r.clear].iter().any(|c| {
                matches!(
                    c,
                    crate::config::Condition::Compare {
                        threshold: Threshold::BaselineRatio(_),
                        ..
                    }
                )
            });
            if uses_baseline {
                let keep = &mut signals[r.signal].keep;
                *keep = Some(keep.map_or(r.baseline_window, |k| k.max(r.baseline_window)));
            }
        }
        Engine {
            targets: vec![TargetState::default(); cfg.targets.len()],
            cfg,
            rules,
            by_signal,
            within_rules,
            signals,
            incidents: Vec::new(),
            pending: Vec::new(),
            paused_all: false,
            silenced: vec![None; rule_count],
            out: Vec::new(),
        }
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Open incidents.
    pub fn incidents(&self) -> &[Incident] {
        &self.incidents
    }

    pub fn rule_phase(&self, rule: usize) -> Phase {
        self.rules[rule].phase
    }

    /// Until when an operator silenced the rule, if they did and it has not ended.
    pub fn silenced_until(&self, rule: usize) -> Option<Ts> {
        self.silenced.get(rule)?.as_ref().map(|(until, _)| *until)
    }

    /// Whether the target's circuit breaker is open, and why.
    pub fn breaker(&self, target: usize) -> Option<&str> {
        self.targets[target].breaker.as_deref()
    }

    /// The target's current revision, as last observed.
    pub fn revision(&self, target: usize) -> Option<&str> {
        self.targets[target].revision.as_deref()
    }

    /// Applies one input at time `now` and returns what must be done.
    pub fn step(&mut self, input: Input, now: Ts) -> Vec<Effect> {
        match input {
            Input::Reading(r) => self.on_reading(r, now),
            Input::Tick => self.on_tick(now),
            Input::Change {
                target,
                revision,
                at,
            } => self.on_change(target, revision, at.min(now), now),
            Input::StepDone(r) => self.on_step_done(r, now),
            Input::Command(c) => self.on_command(c, now),
        }
        std::mem::take(&mut self.out)
    }

    fn on_reading(&mut self, r: Reading, now: Ts) {
        let Some(sig) = self.signals.get_mut(r.signal) else {
            return;
        };
        match &r.state {
            ReadingState::SourceError(e) => {
                sig.error_since.get_or_insert(now);
                if sig.last_error.as_deref() != Some(e) {
                    sig.last_error = Some(e.clone());
                }
            }
            _ => {
                let was_blind = sig.blind;
                sig.error_since = None;
                sig.blind = false;
                if was_blind {
                    self.sight_restored(r.signal, now);
                }
            }
        }
        let sig = &mut self.signals[r.signal];
        if let (Some(keep), ReadingState::Value(Measure::Number(v))) = (sig.keep, &r.state)
            && v.is_finite()
        {
            sig.history.push_back((now, *v));
            let start = now.minus(keep);
            while sig.history.front().is_some_and(|(t, _)| *t < start)
                || sig.history.len() > HISTORY_CAP
            {
                sig.history.pop_front();
            }
        }
        let baseline = sig.baseline;
        for k in 0..self.by_signal[r.signal].len() {
            let ri = self.by_signal[r.signal][k];
            if let Some(t) = self.rules[ri].on_reading(&self.cfg.rules[ri], &r.state, baseline, now)
            {
                self.rule_changed(ri, t, now);
            }
        }
    }

    fn on_tick(&mut self, now: Ts) {
        for ri in 0..self.silenced.len() {
            if self.silenced[ri]
                .as_ref()
                .is_some_and(|(until, _)| *until <= now)
            {
                self.silenced[ri] = None;
                // A rule still firing when its silence ends is acted on now.
                if self.rules[ri].phase == Phase::Firing {
                    let since = self.rules[ri].breach_since().unwrap_or(now);
                    self.rule_fired(ri, since, now);
                }
            }
        }
        for k in 0..self.within_rules.len() {
            let ri = self.within_rules[k];
            if let Some(t) = self.rules[ri].on_tick(&self.cfg.rules[ri], now) {
                self.rule_changed(ri, t, now);
            }
        }
        for s in 0..self.signals.len() {
            let sig = &self.signals[s];
            let overdue = sig
                .error_since
                .is_some_and(|since| now.since(since) >= self.cfg.signals[s].blind_after);
            if overdue && !sig.blind {
                self.signals[s].blind = true;
                self.went_blind(s, now);
            }
        }
        let due: Vec<String> = self
            .incidents
            .iter()
            .filter(|i| matches!(i.state, IncidentState::Verifying { until } if now >= until))
            .map(|i| i.id.clone())
            .collect();
        for id in due {
            if let Some(idx) = self.find(&id) {
                self.judge_verification(idx, now);
            }
        }
        self.send_due_notices(now);
        self.bake(now);
    }

    /// Emits [`Effect::Baked`] for each target whose current revision has stayed healthy
    /// for its bake time; any firing rule or open incident of the target restarts it.
    fn bake(&mut self, now: Ts) {
        let waiting = |t: usize, ts: &TargetState| {
            self.cfg.targets[t].bake.is_some() && ts.revision.is_some() && ts.baked != ts.revision
        };
        if !self
            .targets
            .iter()
            .enumerate()
            .any(|(t, ts)| waiting(t, ts))
        {
            return;
        }
        // One pass over the rules and one over the incidents, not one per target: a tick
        // stays linear in the table.
        let mut firing = vec![false; self.targets.len()];
        for (i, r) in self.cfg.rules.iter().enumerate() {
            if self.rules[i].phase == Phase::Firing {
                firing[r.target] = true;
            }
        }
        let mut open = vec![false; self.targets.len()];
        for inc in &self.incidents {
            open[inc.target] = true;
        }
        for t in 0..self.targets.len() {
            let Some(bake) = self.cfg.targets[t].bake else {
                continue;
            };
            let Some(revision) = self.targets[t].revision.clone() else {
                continue;
            };
            if self.targets[t].baked.as_ref() == Some(&revision) {
                continue;
            }
            let (firing, open) = (firing[t], open[t]);
            let ts = &mut self.targets[t];
            if firing || open {
                ts.healthy_since = None;
                continue;
            }
            let since = *ts.healthy_since.get_or_insert(now);
            if now.since(since) >= bake {
                ts.baked = Some(revision.clone());
                ts.healthy_since = None;
                self.out.push(Effect::Baked {
                    target: t,
                    revision,
                });
            }
        }
    }

    fn rule_changed(&mut self, ri: usize, t: Transition, now: Ts) {
        let target = self.cfg.rules[ri].target;
        let name = &self.cfg.rules[ri].name;
        let text = format!(
            "rule {name} {} -> {}: {}",
            t.from.name(),
            t.to.name(),
            t.evidence
        );
        if let Some(idx) = self.open_incident(target, Cause::Breach) {
            self.log(idx, now, EntryKind::Rule, text);
        }
        let (to, from, breach_since) = (t.to, t.from, t.breach_since);
        self.out.push(Effect::RuleChanged {
            rule: ri,
            transition: t,
        });
        if to == Phase::Firing {
            self.rule_fired(ri, breach_since.unwrap_or(now), now);
        } else if from == Phase::Firing {
            self.rule_cleared(ri, now);
        }
    }

    fn rule_fired(&mut self, ri: usize, breach_since: Ts, now: Ts) {
        if self.silenced[ri]
            .as_ref()
            .is_some_and(|(until, _)| *until > now)
        {
            // Counted, evaluated, visible in the status; but no incident until it ends.
            return;
        }
        let target = self.cfg.rules[ri].target;
        if let Some(idx) = self.open_incident(target, Cause::Breach) {
            let inc = &mut self.incidents[idx];
            if !inc.rules.contains(&ri) {
                inc.rules.push(ri);
            }
            if let IncidentState::Verifying { .. } = inc.state
                && self.verification_rules(idx).contains(&ri)
            {
                let reason = format!(
                    "rule {} fired again during verification: the rollback did not fix the problem",
                    self.cfg.rules[ri].name
                );
                self.verification_failed(idx, reason, now);
            }
            return;
        }
        let idx = self.open(target, Cause::Breach, breach_since, now);
        self.incidents[idx].rules.push(ri);
        let rule = &self.cfg.rules[ri];
        let text = format!(
            "rule {} fired: {}",
            rule.name,
            self.rules[ri].evidence(rule, false)
        );
        self.log(idx, now, EntryKind::Rule, text);
        self.notify(idx, Occasion::Opened, now);
        self.decide(idx, now);
    }

    fn rule_cleared(&mut self, ri: usize, now: Ts) {
        let target = self.cfg.rules[ri].target;
        let Some(idx) = self.open_incident(target, Cause::Breach) else {
            return;
        };
        let inc = &self.incidents[idx];
        let all_clear = inc
            .rules
            .iter()
            .all(|&r| self.rules[r].phase != Phase::Firing);
        if all_clear && matches!(inc.state, IncidentState::Escalated | IncidentState::Open) {
            self.log(
                idx,
                now,
                EntryKind::Decision,
                "every rule of the incident has cleared",
            );
            self.resolve(idx, Outcome::Recovered, now);
        }
    }

    /// The decision gate: act only when it is safe and allowed, otherwise escalate.
    fn decide(&mut self, idx: usize, now: Ts) {
        match self.refusal(idx, now) {
            Some(reason) => self.escalate(idx, reason, Occasion::NotRolledBack, now),
            None => self.start_plan(idx, now),
        }
    }

    /// Why the engine must not act on this incident, or `None` when it may.
    fn refusal(&self, idx: usize, now: Ts) -> Option<String> {
        let t = self.incidents[idx].target;
        let target = &self.cfg.targets[t];
        let ts = &self.targets[t];
        let breach = self.incidents[idx].breach_started;
        let Some(plan) = target.plan else {
            return Some("no rollback plan is configured for this target".to_owned());
        };
        if self.paused_all || ts.paused {
            return Some("automatic action is paused by an operator".to_owned());
        }
        if let Some(why) = &ts.breaker {
            return Some(format!(
                "the circuit breaker is open ({why}); an operator must clear it"
            ));
        }
        let Some(changed_at) = ts.changed_at else {
            return Some(
                "no change of this target has been observed since rearguard started, so there is nothing to blame"
                    .to_owned(),
            );
        };
        let current = ts.revision.as_deref().unwrap_or_default();
        if breach < changed_at {
            return Some(format!(
                "the breach began at {} before the latest change (to {current} at {}), so the change is not to blame",
                breach.clock(),
                changed_at.clock()
            ));
        }
        let after = breach.since(changed_at);
        if after > target.blame_window {
            return Some(format!(
                "the breach began {} after the latest change (to {current}), outside the blame window of {}",
                format_duration(after),
                format_duration(target.blame_window)
            ));
        }
        let Some((previous, healthy)) = &ts.previous else {
            return Some("no previous revision is known".to_owned());
        };
        if ts.bad.contains(previous) {
            return Some(format!("the previous revision {previous} is marked bad"));
        }
        if !healthy {
            return Some(format!(
                "the previous revision {previous} was not healthy when it was replaced"
            ));
        }
        if let Some(end) = ts.last_rollback_end
            && now.since(end) < target.cooldown
        {
            return Some(format!(
                "the last rollback ended {} ago, within the cooldown of {}",
                format_duration(now.since(end)),
                format_duration(target.cooldown)
            ));
        }
        let recent = ts
            .rollbacks
            .iter()
            .filter(|&&s| now.since(s) < target.rollback_period)
            .count();
        if recent >= target.max_rollbacks as usize {
            return Some(format!(
                "{recent} rollbacks within {} already, the maximum",
                format_duration(target.rollback_period)
            ));
        }
        if self.cfg.daemon.mode == Mode::Shadow {
            return Some(format!(
                "shadow mode: would roll back from {current} to {previous} with plan {}",
                self.cfg.plans[plan].name
            ));
        }
        None
    }

    /// Why an operator's rollback of this incident cannot run, or `None` when it can.
    fn manual_refusal(&self, idx: usize) -> Option<String> {
        let inc = &self.incidents[idx];
        let t = inc.target;
        let ts = &self.targets[t];
        if inc.cause == Cause::Blind {
            return Some(
                "this incident is about unreadable sources, not a release; roll back from a breach incident".to_owned(),
            );
        }
        if self.cfg.targets[t].plan.is_none() {
            return Some("no rollback plan is configured for this target".to_owned());
        }
        if self.cfg.daemon.mode == Mode::Shadow {
            return Some("shadow mode: rearguard never acts".to_owned());
        }
        if matches!(
            inc.state,
            IncidentState::Acting { .. } | IncidentState::Verifying { .. }
        ) {
            return Some(format!("incident {} is already rolling back", inc.id));
        }
        let Some((previous, _)) = &ts.previous else {
            return Some("no previous revision is known".to_owned());
        };
        if ts.bad.contains(previous) {
            return Some(format!("the previous revision {previous} is marked bad"));
        }
        None
    }

    fn start_plan(&mut self, idx: usize, now: Ts) {
        let t = self.incidents[idx].target;
        let ts = &self.targets[t];
        let from = ts.revision.clone().unwrap_or_default();
        let to = ts
            .previous
            .as_ref()
            .map(|(p, _)| p.clone())
            .unwrap_or_default();
        let changed_at = ts.changed_at.unwrap_or(now);
        let text = format!(
            "rolling back from {from} to {to} with plan {}: the breach began {} after the change to {from}, inside the blame window of {}, and {to} was healthy; {from} is marked bad",
            self.cfg.plans[self.cfg.targets[t].plan.expect("checked by decide")].name,
            format_duration(self.incidents[idx].breach_started.since(changed_at)),
            format_duration(self.cfg.targets[t].blame_window),
        );
        self.begin_rollback(idx, text, now);
    }

    /// Marks the revision bad, counts the rollback and runs the plan's first step.
    fn begin_rollback(&mut self, idx: usize, text: String, now: Ts) {
        let t = self.incidents[idx].target;
        let plan = self.cfg.targets[t].plan.expect("checked by decide");
        let period = self.cfg.targets[t].rollback_period;
        let ts = &mut self.targets[t];
        let from = ts.revision.clone().unwrap_or_default();
        let to = ts
            .previous
            .as_ref()
            .map(|(p, _)| p.clone())
            .unwrap_or_default();
        ts.bad.insert(from.clone());
        // Only starts within the period count, and at most `max_rollbacks` of them can be
        // there, so dropping the older ones bounds the list without loosening the limit.
        while ts
            .rollbacks
            .front()
            .is_some_and(|&s| now.since(s) >= period)
        {
            ts.rollbacks.pop_front();
        }
        ts.rollbacks.push_back(now);
        let inc = &mut self.incidents[idx];
        inc.plan = Some(plan);
        inc.from_revision = Some(from);
        inc.to_revision = Some(to);
        inc.refused_by_gate = false;
        inc.escalation_reason = None;
        self.log(idx, now, EntryKind::Decision, text);
        self.notify(idx, Occasion::RollbackStarted, now);
        self.notify(idx, Occasion::RollbackSlow, now);
        self.run_step(idx, 0, 1, now);
    }

    fn run_step(&mut self, idx: usize, step: usize, attempt: u32, now: Ts) {
        let inc = &mut self.incidents[idx];
        let plan_i = inc.plan.expect("a plan is running");
        inc.state = IncidentState::Acting { step, attempt };
        let plan = &self.cfg.plans[plan_i];
        let s = &plan.steps[step];
        let text = format!(
            "step {}/{} {:?} ({}) started, attempt {attempt} of {}",
            step + 1,
            plan.steps.len(),
            s.name,
            s.action.type_name(),
            s.retries + 1
        );
        let order = StepOrder {
            incident: inc.id.clone(),
            target: inc.target,
            plan: plan_i,
            step,
            attempt,
            rule: inc
                .rules
                .first()
                .map(|&r| self.cfg.rules[r].name.clone())
                .unwrap_or_default(),
            from_revision: inc.from_revision.clone(),
            to_revision: inc.to_revision.clone(),
            bad_revisions: self.targets[inc.target].bad.iter().cloned().collect(),
        };
        self.log(idx, now, EntryKind::StepStarted, text);
        self.out.push(Effect::RunStep(order));
    }

    fn on_step_done(&mut self, r: StepResult, now: Ts) {
        let Some(idx) = self.find(&r.incident) else {
            return;
        };
        if self.incidents[idx].state
            != (IncidentState::Acting {
                step: r.step,
                attempt: r.attempt,
            })
        {
            // A result for a step that is no longer running (e.g. after an operator
            // resolved the incident) changes nothing.
            return;
        }
        let plan_i = self.incidents[idx].plan.expect("a plan is running");
        let plan = &self.cfg.plans[plan_i];
        let step = &plan.steps[r.step];
        let (retries, on_failure, name, last, action) = (
            step.retries,
            step.on_failure,
            step.name.clone(),
            r.step + 1 == plan.steps.len(),
            step.action.type_name().to_owned(),
        );
        let verdict = match (&r.error, r.ok) {
            (_, true) => "succeeded".to_owned(),
            (Some(e), false) => format!("failed: {e}"),
            (None, false) => "failed".to_owned(),
        };
        self.log(
            idx,
            now,
            EntryKind::StepFinished {
                ok: r.ok,
                duration_ms: r.duration_ms,
                output: r.output.clone(),
            },
            format!(
                "step {}/{} {name:?} {verdict} in {}ms",
                r.step + 1,
                plan.steps.len(),
                r.duration_ms
            ),
        );
        let inc = &mut self.incidents[idx];
        inc.steps.push(StepFact {
            name: name.clone(),
            action,
            attempt: r.attempt,
            ok: r.ok,
            duration_ms: r.duration_ms,
            error: (!r.ok).then(|| r.error.clone().unwrap_or_else(|| "failed".to_owned())),
        });
        if r.ok {
            return self.after_step(idx, r.step, last, now);
        }
        inc.failed_attempts += 1;
        self.notify(idx, Occasion::AttemptsFailed, now);
        if r.attempt <= retries {
            return self.run_step(idx, r.step, r.attempt + 1, now);
        }
        match on_failure {
            OnFailure::Continue => {
                self.log(
                    idx,
                    now,
                    EntryKind::Decision,
                    format!("step {name:?} failed; the plan continues (on_failure = \"continue\")"),
                );
                self.after_step(idx, r.step, last, now);
            }
            OnFailure::Abort => {
                let reason = format!(
                    "step {name:?} failed after {} attempt{}; the plan was stopped",
                    r.attempt,
                    if r.attempt == 1 { "" } else { "s" }
                );
                let t = self.incidents[idx].target;
                self.targets[t].breaker =
                    Some(format!("rollback {} failed", self.incidents[idx].id));
                self.targets[t].last_rollback_end = Some(now);
                self.escalate(idx, reason, Occasion::RollbackFailed, now);
            }
        }
    }

    fn after_step(&mut self, idx: usize, step: usize, last: bool, now: Ts) {
        if !last {
            return self.run_step(idx, step + 1, 1, now);
        }
        let plan = &self.cfg.plans[self.incidents[idx].plan.expect("a plan is running")];
        let until = now.plus(plan.verify.window);
        let names: Vec<&str> = self
            .verification_rules(idx)
            .iter()
            .map(|&r| self.cfg.rules[r].name.as_str())
            .collect();
        let text = format!(
            "plan finished; verifying for {} that these rules are clear: {}",
            format_duration(plan.verify.window),
            names.join(", ")
        );
        let inc = &mut self.incidents[idx];
        inc.plan_finished_at = Some(now);
        inc.state = IncidentState::Verifying { until };
        self.log(idx, now, EntryKind::Verification, text);
    }

    fn verification_rules(&self, idx: usize) -> Vec<usize> {
        let inc = &self.incidents[idx];
        match inc.plan.map(|p| &self.cfg.plans[p].verify.rules) {
            Some(rules) if !rules.is_empty() => rules.clone(),
            _ => inc.rules.clone(),
        }
    }

    fn judge_verification(&mut self, idx: usize, now: Ts) {
        let finished = self.incidents[idx].plan_finished_at.unwrap_or(now);
        let mut problems = Vec::new();
        for r in self.verification_rules(idx) {
            let rule = &self.cfg.rules[r];
            let state = &self.rules[r];
            if state.phase == Phase::Firing {
                problems.push(format!(
                    "{} is still firing ({})",
                    rule.name,
                    state.evidence(rule, true)
                ));
            } else if state.last_value_at.is_none_or(|t| t <= finished) {
                problems.push(format!(
                    "{} has had no reading since the plan finished",
                    rule.name
                ));
            }
        }
        if problems.is_empty() {
            let t = self.incidents[idx].target;
            self.targets[t].last_rollback_end = Some(now);
            self.log(
                idx,
                now,
                EntryKind::Verification,
                "verification passed: every rule is clear",
            );
            self.notify(idx, Occasion::RollbackSucceeded, now);
            self.resolve(idx, Outcome::RolledBack, now);
        } else {
            self.verification_failed(
                idx,
                format!("verification failed: {}", problems.join("; ")),
                now,
            );
        }
    }

    fn verification_failed(&mut self, idx: usize, reason: String, now: Ts) {
        let t = self.incidents[idx].target;
        self.targets[t].breaker = Some(format!(
            "rollback {} did not fix the problem",
            self.incidents[idx].id
        ));
        self.targets[t].last_rollback_end = Some(now);
        self.log(idx, now, EntryKind::Verification, reason.clone());
        self.escalate(
            idx,
            format!("{reason}; no further automatic action on this target until an operator clears the breaker"),
            Occasion::VerificationFailed,
            now,
        );
    }

    fn escalate(&mut self, idx: usize, reason: String, occasion: Occasion, now: Ts) {
        let gate = occasion == Occasion::NotRolledBack;
        let inc = &mut self.incidents[idx];
        inc.state = IncidentState::Escalated;
        inc.escalation_reason = Some(reason.clone());
        inc.refused_by_gate = gate;
        let text = if gate {
            format!("escalated without acting: {reason}")
        } else {
            format!("escalated: {reason}")
        };
        self.log(idx, now, EntryKind::Decision, text);
        self.notify(idx, occasion, now);
        // A breach the gate refused whose rules have all cleared meanwhile is over. After
        // a rollback that failed or did not verify, people decide when it is over.
        let inc = &self.incidents[idx];
        if gate
            && inc.cause == Cause::Breach
            && !inc.rules.is_empty()
            && inc
                .rules
                .iter()
                .all(|&r| self.rules[r].phase != Phase::Firing)
        {
            self.resolve(idx, Outcome::Recovered, now);
        }
    }

    fn resolve(&mut self, idx: usize, outcome: Outcome, now: Ts) {
        let text = match &outcome {
            Outcome::RolledBack => "resolved: rolled back and verified".to_owned(),
            Outcome::Recovered => "resolved: recovered".to_owned(),
            Outcome::ResolvedByOperator(by) => format!("resolved by {by}"),
            Outcome::Interrupted => "interrupted".to_owned(),
        };
        self.log(idx, now, EntryKind::Decision, text);
        // A stop of rearguard does not end the problem: nobody is told it is resolved.
        if outcome != Outcome::Interrupted {
            self.notify(idx, Occasion::Resolved, now);
        }
        let mut inc = self.incidents.remove(idx);
        inc.state = IncidentState::Resolved;
        inc.closed_at = Some(now);
        inc.outcome = Some(outcome);
        self.pending.retain(|p| p.incident != inc.id);
        self.out.push(Effect::IncidentClosed(Box::new(inc)));
    }

    fn on_change(&mut self, target: usize, revision: String, at: Ts, now: Ts) {
        let Some(ts) = self.targets.get_mut(target) else {
            return;
        };
        let Some(old) = ts.revision.clone() else {
            ts.revision = Some(revision);
            return;
        };
        if old == revision {
            return;
        }
        // The old revision was healthy unless a rule was firing over a breach that began
        // before the change: a breach that began after it belongs to the new revision,
        // even when the rule fired before the change was observed.
        let firing = self.cfg.rules.iter().enumerate().any(|(i, r)| {
            r.target == target
                && self.rules[i].phase == Phase::Firing
                && self.rules[i].breach_since().is_none_or(|b| b < at)
        });
        let ts = &mut self.targets[target];
        let healthy = !firing && !ts.bad.contains(&old);
        ts.previous = Some((old.clone(), healthy));
        ts.revision = Some(revision.clone());
        ts.changed_at = Some(at);
        ts.healthy_since = None;
        // Baselines are what the target's signals looked like before this change, on a
        // healthy revision. When the replaced revision was unhealthy (a rollback away
        // from a bad one, a fix over a firing one) its readings are no norm to compare
        // with, so the baseline from before it is kept.
        for (s, sig) in self.cfg.signals.iter().enumerate() {
            if sig.target != target || !healthy {
                continue;
            }
            let st = &mut self.signals[s];
            if let Some(keep) = st.keep {
                let start = at.minus(keep);
                let mut values: Vec<f64> = st
                    .history
                    .iter()
                    .filter(|(t, _)| *t >= start && *t < at)
                    .map(|(_, v)| *v)
                    .collect();
                st.baseline = median(&mut values);
            }
        }
        let open = self.open_incident(target, Cause::Breach);
        if let Some(idx) = open {
            self.log(
                idx,
                now,
                EntryKind::Change,
                format!(
                    "revision changed from {old} to {revision} (at {} at the earliest)",
                    at.clock()
                ),
            );
        }
        self.out.push(Effect::ChangeObserved {
            target,
            from: old,
            to: revision,
            previous_healthy: healthy,
        });
        // A breach that fired before its change was observed was refused for want of a
        // change to blame; now there is one, so the gate decides again.
        if let Some(idx) = open {
            let inc = &self.incidents[idx];
            if inc.refused_by_gate
                && inc.state == IncidentState::Escalated
                && inc.breach_started >= at
            {
                self.incidents[idx].refused_by_gate = false;
                self.log(
                    idx,
                    now,
                    EntryKind::Decision,
                    "the breach began after this change: deciding again",
                );
                self.decide(idx, now);
            }
        }
    }

    fn on_command(&mut self, c: Command, now: Ts) {
        match c {
            Command::Acknowledge { incident, by } => match self.find(&incident) {
                Some(idx) => {
                    self.incidents[idx].acknowledged = true;
                    self.pending.retain(|p| p.incident != incident);
                    self.log(
                        idx,
                        now,
                        EntryKind::Operator,
                        format!("acknowledged by {by}"),
                    );
                    self.notify(idx, Occasion::Acknowledged, now);
                }
                None => self.reject(format!("no open incident has the id {incident:?}")),
            },
            Command::Resolve { incident, by } => match self.find(&incident) {
                Some(idx) => {
                    self.log(
                        idx,
                        now,
                        EntryKind::Operator,
                        format!("resolve requested by {by}"),
                    );
                    self.resolve(idx, Outcome::ResolvedByOperator(by), now);
                }
                None => self.reject(format!("no open incident has the id {incident:?}")),
            },
            Command::ClearBreaker { target, by } => match self.targets.get_mut(target) {
                Some(ts) if ts.breaker.is_some() => {
                    ts.breaker = None;
                    if let Some(idx) = self.open_incident(target, Cause::Breach) {
                        self.log(
                            idx,
                            now,
                            EntryKind::Operator,
                            format!("circuit breaker cleared by {by}"),
                        );
                    }
                }
                Some(_) => self.reject("the circuit breaker of this target is not open".to_owned()),
                None => self.reject(format!("no target has the index {target}")),
            },
            Command::Rollback { incident, by } => match self.find(&incident) {
                Some(idx) => match self.manual_refusal(idx) {
                    Some(why) => self.reject(why),
                    None => {
                        let t = self.incidents[idx].target;
                        let ts = &self.targets[t];
                        let from = ts.revision.clone().unwrap_or_default();
                        let to = ts
                            .previous
                            .as_ref()
                            .map(|(p, _)| p.clone())
                            .unwrap_or_default();
                        let plan = &self.cfg.plans[self.cfg.targets[t].plan.expect("checked")];
                        let text = format!(
                            "rolling back from {from} to {to} with plan {}, as {by} decided; {from} is marked bad",
                            plan.name
                        );
                        self.log(
                            idx,
                            now,
                            EntryKind::Operator,
                            format!("rollback requested by {by}"),
                        );
                        // Reminders that nothing was rolled back stop: something is.
                        self.pending.retain(|p| {
                            !(p.incident == incident && p.occasion == Occasion::NotRolledBack)
                        });
                        self.begin_rollback(idx, text, now);
                    }
                },
                None => self.reject(format!("no open incident has the id {incident:?}")),
            },
            Command::Silence { rule, for_, by } => {
                if rule >= self.silenced.len() {
                    return self.reject(format!("no rule has the index {rule}"));
                }
                self.silenced[rule] = (!for_.is_zero()).then(|| (now.plus(for_), by));
                // Lifting a silence acts on a rule still firing, as its end would.
                if for_.is_zero() && self.rules[rule].phase == Phase::Firing {
                    let since = self.rules[rule].breach_since().unwrap_or(now);
                    self.rule_fired(rule, since, now);
                }
            }
            Command::Pause { target, by: _ } | Command::Resume { target, by: _ } => {
                let pause = matches!(c, Command::Pause { .. });
                match target {
                    None => self.paused_all = pause,
                    Some(t) => match self.targets.get_mut(t) {
                        Some(ts) => ts.paused = pause,
                        None => self.reject(format!("no target has the index {t}")),
                    },
                }
            }
        }
    }

    fn went_blind(&mut self, s: usize, now: Ts) {
        let sig = &self.cfg.signals[s];
        let target = sig.target;
        let since = self.signals[s].error_since.unwrap_or(now);
        let why = self.signals[s].last_error.clone().unwrap_or_default();
        let text = format!(
            "watchdog is blind: signal {} has failed to read since {} ({} ago): {why}",
            sig.name,
            since.clock(),
            format_duration(now.since(since))
        );
        let idx = match self.open_incident(target, Cause::Blind) {
            Some(idx) => idx,
            None => {
                let idx = self.open(target, Cause::Blind, since, now);
                self.incidents[idx].state = IncidentState::Escalated;
                self.incidents[idx].escalation_reason = Some(text.clone());
                idx
            }
        };
        self.incidents[idx].blind_signals.push(s);
        self.log(idx, now, EntryKind::Decision, text);
        self.notify(idx, Occasion::Blind, now);
    }

    fn sight_restored(&mut self, s: usize, now: Ts) {
        let target = self.cfg.signals[s].target;
        let Some(idx) = self.open_incident(target, Cause::Blind) else {
            return;
        };
        self.incidents[idx].blind_signals.retain(|&x| x != s);
        let text = format!("signal {} reads again", self.cfg.signals[s].name);
        self.log(idx, now, EntryKind::Decision, text);
        if self.incidents[idx].blind_signals.is_empty() {
            self.resolve(idx, Outcome::Recovered, now);
        }
    }

    fn open(&mut self, target: usize, cause: Cause, breach_started: Ts, now: Ts) -> usize {
        let t = &self.cfg.targets[target];
        let stamp: String = now
            .rfc3339()
            .chars()
            .filter(|c| c.is_ascii_digit() || *c == 'T')
            .take(15)
            .collect();
        let mut id = format!("{}-{stamp}", t.name);
        if cause == Cause::Blind {
            id.push_str("-blind");
        }
        let ts = &mut self.targets[target];
        let mut n = 1;
        let base = id.clone();
        while ts.last_incident_id.as_deref() == Some(id.as_str())
            || self.incidents.iter().any(|i| i.id == id)
        {
            n += 1;
            id = format!("{base}-{n}");
        }
        ts.last_incident_id = Some(id.clone());
        self.incidents.push(Incident {
            id,
            target,
            target_name: t.name.clone(),
            cause,
            state: IncidentState::Open,
            opened_at: now,
            closed_at: None,
            breach_started,
            rules: Vec::new(),
            blind_signals: Vec::new(),
            plan: None,
            from_revision: None,
            to_revision: None,
            plan_finished_at: None,
            acknowledged: false,
            refused_by_gate: false,
            escalation_reason: None,
            outcome: None,
            timeline: Vec::new(),
            steps: Vec::new(),
            failed_attempts: 0,
            notified: BTreeSet::new(),
        });
        self.incidents.len() - 1
    }

    fn open_incident(&self, target: usize, cause: Cause) -> Option<usize> {
        self.incidents
            .iter()
            .position(|i| i.target == target && i.cause == cause)
    }

    fn find(&self, id: &str) -> Option<usize> {
        self.incidents.iter().position(|i| i.id == id)
    }

    fn log(&mut self, idx: usize, at: Ts, kind: EntryKind, text: impl Into<String>) {
        let inc = &mut self.incidents[idx];
        let entry = Entry {
            at,
            kind,
            text: text.into(),
        };
        inc.timeline.push(entry.clone());
        self.out.push(Effect::Timeline {
            incident: inc.id.clone(),
            target: inc.target,
            entry,
        });
    }

    fn reject(&mut self, reason: String) {
        self.out.push(Effect::CommandRejected { reason });
    }

    /// Sends or schedules the notifications the escalation policy asks for.
    fn notify(&mut self, idx: usize, occasion: Occasion, now: Ts) {
        // A slow rollback and failed attempts are only scheduled or counted here; they
        // are not transitions of the incident.
        if !matches!(occasion, Occasion::RollbackSlow | Occasion::AttemptsFailed) {
            let facts = self.facts(idx, occasion, now);
            let summary = self.summary(idx, occasion, &facts);
            let inc = &self.incidents[idx];
            self.out.push(Effect::Transition {
                incident: inc.id.clone(),
                target: inc.target,
                occasion,
                summary,
            });
        }
        if self.cfg.escalation.is_empty() {
            // Without a ladder, every occasion goes to every notifier at once, except the
            // ones that wait for a limit no level sets.
            if matches!(occasion, Occasion::RollbackSlow | Occasion::AttemptsFailed) {
                return;
            }
            let all = (0..self.cfg.notifiers.len()).collect();
            return self.emit_notice(idx, occasion, None, all, now);
        }
        if occasion.closes_loop() {
            // Everyone already told hears that it is acknowledged or over, at once.
            let mut to: BTreeSet<usize> = self.incidents[idx].notified.clone();
            for level in &self.cfg.escalation {
                if level.on.contains(&occasion) {
                    to.extend(level.notify.iter().copied());
                }
            }
            if !to.is_empty() {
                self.emit_notice(idx, occasion, None, to.into_iter().collect(), now);
            }
            return;
        }
        let failed = self.incidents[idx].failed_attempts;
        for li in 0..self.cfg.escalation.len() {
            let level = &self.cfg.escalation[li];
            if !level.on.contains(&occasion)
                || (occasion == Occasion::AttemptsFailed && level.attempts != failed)
            {
                continue;
            }
            let after = match occasion {
                Occasion::RollbackSlow => level.slow_after + level.after,
                _ => level.after,
            };
            let (repeat, notify) = (level.repeat, level.notify.clone());
            if after.is_zero() {
                self.emit_notice(idx, occasion, Some(li), notify, now);
                if let Some(every) = repeat {
                    self.schedule(idx, li, occasion, now.plus(every));
                }
            } else {
                self.schedule(idx, li, occasion, now.plus(after));
            }
        }
    }

    fn schedule(&mut self, idx: usize, level: usize, occasion: Occasion, due: Ts) {
        self.pending.push(PendingNotice {
            incident: self.incidents[idx].id.clone(),
            level,
            occasion,
            due,
        });
    }

    fn send_due_notices(&mut self, now: Ts) {
        if self.pending.iter().all(|p| p.due > now) {
            return;
        }
        let (due, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|p| p.due <= now);
        self.pending = rest;
        for p in due {
            let Some(idx) = self.find(&p.incident) else {
                continue;
            };
            let inc = &self.incidents[idx];
            if inc.acknowledged {
                continue;
            }
            // A rollback that finished meanwhile is not slow.
            if p.occasion == Occasion::RollbackSlow
                && !matches!(
                    inc.state,
                    IncidentState::Acting { .. } | IncidentState::Verifying { .. }
                )
            {
                continue;
            }
            let notify = self.cfg.escalation[p.level].notify.clone();
            self.emit_notice(idx, p.occasion, Some(p.level), notify, now);
            if let Some(every) = self.cfg.escalation[p.level].repeat {
                // From when it was due, so repeats do not drift by a tick each time.
                self.schedule(idx, p.level, p.occasion, p.due.plus(every).max(now));
            }
        }
    }

    fn emit_notice(
        &mut self,
        idx: usize,
        occasion: Occasion,
        level: Option<usize>,
        notifiers: Vec<usize>,
        now: Ts,
    ) {
        let facts = self.facts(idx, occasion, now);
        let summary = self.summary(idx, occasion, &facts);
        let inc = &self.incidents[idx];
        let level_name = level.map_or("default".to_owned(), |l| {
            self.cfg.escalation[l].name.clone()
        });
        let notice = Notification {
            incident: inc.id.clone(),
            target: inc.target,
            occasion,
            level,
            notifiers,
            summary,
            facts,
        };
        self.incidents[idx]
            .notified
            .extend(notice.notifiers.iter().copied());
        self.log(
            idx,
            now,
            EntryKind::Notification,
            format!(
                "notified ({}, level {level_name}): {}",
                occasion.name(),
                notice.summary
            ),
        );
        self.out.push(Effect::Notify(Box::new(notice)));
    }

    /// What every channel is told about an incident at an occasion.
    /// One line: target, what happened, rules, the latest decision, the incident id.
    fn summary(&self, idx: usize, occasion: Occasion, facts: &Facts) -> String {
        let inc = &self.incidents[idx];
        let rules: Vec<&str> = facts.rules.iter().map(|r| r.name.as_str()).collect();
        let last_decision = inc
            .timeline
            .iter()
            .rev()
            .find(|e| {
                matches!(
                    e.kind,
                    EntryKind::Decision | EntryKind::Verification | EntryKind::Rule
                )
            })
            .map_or("", |e| e.text.as_str());
        let rules_text = if rules.is_empty() {
            String::new()
        } else {
            format!(" [{}]", rules.join(", "))
        };
        format!(
            "{}: {}{rules_text}: {last_decision} (incident {})",
            inc.target_name,
            occasion.headline(),
            inc.id
        )
    }

    fn facts(&self, idx: usize, occasion: Occasion, now: Ts) -> Facts {
        let inc = &self.incidents[idx];
        let rules = inc
            .rules
            .iter()
            .map(|&r| {
                let rule = &self.cfg.rules[r];
                let state = &self.rules[r];
                RuleFact {
                    name: rule.name.clone(),
                    signal: self.cfg.signals[rule.signal].name.clone(),
                    condition: format!("{} {}", rule.when.describe(), rule.mode.describe()),
                    phase: state.phase.name().to_owned(),
                    evidence: state.evidence(rule, state.phase == Phase::Firing),
                }
            })
            .collect();
        let plan = inc.plan.map(|p| &self.cfg.plans[p]);
        let next = match occasion {
            Occasion::Opened => "rearguard is deciding whether to roll back".to_owned(),
            Occasion::RollbackStarted | Occasion::RollbackSlow | Occasion::AttemptsFailed => {
                match (plan, inc.state) {
                    (Some(p), IncidentState::Acting { step, attempt }) => format!(
                        "running step {}/{} {:?} (attempt {attempt}), then verifying for {}",
                        step + 1,
                        p.steps.len(),
                        p.steps[step].name,
                        format_duration(p.verify.window)
                    ),
                    (Some(p), IncidentState::Verifying { .. }) => format!(
                        "verifying for {} that the rules clear",
                        format_duration(p.verify.window)
                    ),
                    (Some(p), _) => format!(
                        "running plan {} ({} step{}), then verifying for {}",
                        p.name,
                        p.steps.len(),
                        if p.steps.len() == 1 { "" } else { "s" },
                        format_duration(p.verify.window)
                    ),
                    _ => "people decide what to do next".to_owned(),
                }
            }
            Occasion::RollbackSucceeded => "nothing: the incident is resolved".to_owned(),
            Occasion::RollbackFailed | Occasion::VerificationFailed => {
                "people must act: automatic action on this target is stopped until an operator clears the breaker".to_owned()
            }
            Occasion::NotRolledBack => {
                "people must decide: rearguard will not act on this incident by itself".to_owned()
            }
            Occasion::Blind => {
                "people must check the monitoring: rearguard cannot judge this target until its readings return".to_owned()
            }
            Occasion::Acknowledged => "reminders stop; people are in charge".to_owned(),
            Occasion::Resolved => "nothing: the incident is closed".to_owned(),
        };
        Facts {
            target: inc.target_name.clone(),
            state: inc.state.name().to_owned(),
            opened_at_ms: inc.opened_at.0,
            at_ms: now.0,
            rules,
            blind_signals: inc
                .blind_signals
                .iter()
                .map(|&s| self.cfg.signals[s].name.clone())
                .collect(),
            plan: plan.map(|p| p.name.clone()),
            from_revision: inc.from_revision.clone(),
            to_revision: inc.to_revision.clone(),
            steps: inc.steps.clone(),
            reason: inc.escalation_reason.clone(),
            next,
        }
    }
}

fn median(values: &mut [f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    let n = values.len();
    Some(if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    })
}
