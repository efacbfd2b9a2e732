//! The decision engine: a deterministic state machine from inputs to effects.
//!
//! `Engine::step(input, now)` is the only entry point. The engine does no I/O and reads no
//! clock: every input carries its time, every consequence is returned as an [`Effect`]
//! for the daemon (or replay, or a test) to carry out. Windows, `for` periods, cooldowns,
//! escalation delays, verification windows and blame windows all live here, so all of
//! them are tested without sleeping.
//!
//! This file owns the engine's types (inputs, effects, commands, the state it keeps per
//! signal and target), its construction and accessors, and `step`, which hands each input
//! to its handler: readings and ticks here, the rest in the files named after what they
//! decide. `incidents.rs` opens, finds, logs and resolves incidents and reacts to rule
//! transitions; `signals.rs` keeps baselines (taken and guarded in `baseline.rs`) and
//! detects blindness (`blind.rs` its share rule); `judge.rs` is the statistics of
//! `> baseline` rules and the notice when one cannot judge a change; `change.rs` handles
//! an observed revision; `gate.rs` is the decision gate; `plan.rs` runs plan steps and
//! verifies them; `escalation.rs` sends and schedules notices; `facts.rs` says what people
//! are told; `commands.rs` applies operator commands; `bake.rs` emits `Baked`. None of
//! them does I/O or reads a clock.

mod bake;
mod baseline;
mod blind;
mod change;
mod commands;
mod escalation;
mod facts;
mod gate;
mod incident;
mod incidents;
mod judge;
mod memory;
mod plan;
mod reading;
pub mod reload;
mod rule;
mod signals;
mod stats;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::config::{Condition, Config, Occasion, Rule, RuleMode, Threshold};

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
    /// The share rule of blindness (`blind.rs`); `blind` below is the continuous rule's.
    share: blind::Share,
    error_since: Option<Ts>,
    last_error: Option<String>,
    blind: bool,
    /// Readings kept for baselines, oldest first; only for signals that need them.
    history: VecDeque<(Ts, baseline::Kept)>,
    keep: Option<std::time::Duration>,
}

/// The most values a signal keeps for its baseline.
const HISTORY_CAP: usize = 100_000;

#[derive(Debug, Clone, Default)]
struct TargetState {
    revision: Option<String>,
    changed_at: Option<Ts>,
    /// The revision before the current one, and whether it was healthy when replaced.
    previous: Option<(String, bool)>,
    /// Why the previous revision counts as healthy or not, in the gate's words.
    previous_health: Option<String>,
    /// Revisions rearguard rolled back from: never a rollback destination.
    bad: BTreeSet<String>,
    /// The incident that marked each bad revision bad, for the notice when one is
    /// deployed again.
    bad_by: BTreeMap<String, String>,
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
    /// Per rule, when it was last away from `ok`, for `healthy_for`.
    unrest: Vec<gate::Unrest>,
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
            if uses_baseline(r) {
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
            unrest: vec![gate::Unrest::default(); rule_count],
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

    /// The value of the latest reading the rule judged and the baseline it was judged
    /// against; `None` when that reading had no value (see `RuleState::judged`).
    pub fn rule_judged(&self, rule: usize) -> Option<(f64, Option<f64>)> {
        self.rules.get(rule)?.latest_judged()
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
        if r.signal >= self.signals.len() {
            return;
        }
        self.note_sight(r.signal, &r.state, now);
        self.remember_value(r.signal, &r.state, now);
        let signal = &self.cfg.signals[r.signal];
        let change = rule::Change {
            at: self.targets[signal.target].changed_at,
            window: signal.window(),
            interval: signal.interval,
        };
        let mut cannot_judge = Vec::new();
        for k in 0..self.by_signal[r.signal].len() {
            let ri = self.by_signal[r.signal][k];
            let rule = &self.cfg.rules[ri];
            let transition = self.rules[ri].on_reading(rule, &r.state, &change, now);
            if let Some(text) = self.rules[ri].overdue_judgement(rule, &change, now) {
                cannot_judge.push((ri, text));
            }
            if let Some(t) = transition {
                self.rule_changed(ri, t, now);
            }
        }
        for (ri, text) in cannot_judge {
            self.cannot_judge(ri, text, now);
        }
    }

    fn on_tick(&mut self, now: Ts) {
        self.end_silences(now);
        for k in 0..self.within_rules.len() {
            let ri = self.within_rules[k];
            if let Some(t) = self.rules[ri].on_tick(&self.cfg.rules[ri], now) {
                self.rule_changed(ri, t, now);
            }
        }
        self.detect_blindness(now);
        self.judge_due_verifications(now);
        self.send_due_notices(now);
        self.bake(now);
    }

    /// Ends the silences that are over; a rule still firing then is acted on now.
    fn end_silences(&mut self, now: Ts) {
        for ri in 0..self.silenced.len() {
            if self.silenced[ri]
                .as_ref()
                .is_some_and(|(until, _)| *until <= now)
            {
                self.silenced[ri] = None;
                if self.rules[ri].phase == Phase::Firing {
                    let since = self.rules[ri].breach_since().unwrap_or(now);
                    self.rule_fired(ri, since, now);
                }
            }
        }
    }
}

/// Whether the rule compares with a baseline, for which its signal keeps history.
fn uses_baseline(r: &Rule) -> bool {
    [r.when, r.clear].iter().any(|c| {
        matches!(
            c,
            Condition::Compare {
                threshold: Threshold::BaselineRatio(_) | Threshold::Baseline,
                ..
            }
        )
    })
}
