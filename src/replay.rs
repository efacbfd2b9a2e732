//! `rearguard replay`: a configuration's rules run through the real engine over a
//! recording, with no side effects, reporting what would have happened.
//!
//! [`run`] feeds every row of a recording (see [`crate::recording`]) to a fresh
//! [`Engine`] in the order the daemon's engine was given them (`seen`), each as the
//! daemon's loop gives it: a reading at its own time (when it was measured, even when it
//! arrived late), a change at its time or the latest engine time so far, whichever is
//! later. Time advances exactly as in the daemon: before each input, an `Input::Tick` is
//! given every `daemon.tick` (on a grid that starts when the first row was given) up to
//! and including when the input was given, so `within` windows expire, verification
//! windows end, blindness is declared and delayed notifications go out at the ticks where
//! the daemon would have done it; a tick due at the instant an input was given comes
//! first. A plan step ordered by the engine is never run: replay answers it at once, when
//! the input that ordered it was given, as succeeded or (with [`StepOutcome::Fail`])
//! failed with the error `replay: steps fail by request`, so a failed rollback and the
//! circuit breaker can be tried too.
//!
//! After the last row, time runs on without readings for the longest verification window
//! plus the longest escalation delay (`after`) of the configuration, so that a
//! verification or escalation already under way is decided. A rule that has had no
//! reading since its plan finished fails verification, as in the daemon: record for at
//! least the verification window after a rollback. Incidents still open after that are
//! reported as open at the end; they are not closed as interrupted.
//!
//! This module writes nothing and reads no clock: what it finds goes to the caller's
//! `on_effect` and into the returned [`Summary`]. [`render_text`] and [`render_json`]
//! turn each effect into a line.
//!
//! # The JSON lines
//!
//! [`render_json`] (`rearguard replay --output json`) writes one JSON object per line.
//! Every object has:
//!
//! - `time`: when it happened, engine time, RFC 3339 in UTC with milliseconds
//!   (`"2026-11-22T10:07:30.000Z"`).
//! - `event`: one of the names below.
//! - `target`: the target's name.
//! - `incident`: the incident id, or `null` for events outside an incident
//!   (`rule_changed` while no incident is open, `change`).
//! - `rule`: the rule's name, or `null` when the event is not about one rule.
//!
//! The events and the fields each one adds:
//!
//! - `rule_changed`: a rule changed phase. `from`, `to` (`"ok"`, `"pending"`,
//!   `"firing"`), `breach_since` (RFC 3339 or `null`: when the breach streak began),
//!   `evidence` (the reading and threshold behind the change, in words). `incident` is
//!   always `null` here: the incident a firing opens follows as `incident_opened`.
//! - `change`: the target's revision changed. `from`, `to` (revisions),
//!   `previous_healthy` (whether `from` was healthy when it was replaced, which makes it a
//!   rollback destination).
//! - `baked`: the target's revision stayed healthy for its `bake` time (the daemon
//!   would snapshot its ConfigMaps and Secrets). `revision`.
//! - `incident_opened`: a rule fired and opened an incident. `cause` (`"breach"`),
//!   `text` (the rule and its evidence). A "watchdog is blind" incident opens with a
//!   `decision` whose text begins `watchdog is blind:` instead.
//! - `decision`: the engine decided something and said why, in `text`: to roll back
//!   (`rolling back from v2 to v1 with plan ...`), to escalate without acting
//!   (`escalated without acting: ...`), to escalate after a failed rollback
//!   (`escalated: ...`), that a signal is blind, or that the incident resolved.
//! - `step`: a plan step would run. `plan` (name), `step` (its number, from 1), `steps`
//!   (how many the plan has), `step_name`, `action` (`"exec"`, `"release_switch"`,
//!   `"http"`), `attempt` (from 1), `from_revision`, `to_revision`. `rule` is the rule
//!   that opened the incident.
//! - `step_result`: the answer replay gave to a step. `ok` (bool), `text`.
//! - `verification`: the verification of a plan started, failed or passed, in `text`.
//! - `notification`: a notification would have gone out. `occasion` (`"opened"`,
//!   `"rollback_started"`, `"rollback_succeeded"`, `"rollback_failed"`,
//!   `"verification_failed"`, `"verification_inconclusive"`, `"not_rolled_back"`,
//!   `"blind"`, `"resolved"`), `level`
//!   (the escalation level's name, or `null` when no levels are configured), `notifiers`
//!   (names), `summary` (the message).
//! - `incident_closed`: the incident ended. `outcome` (`"rolled_back"`, `"rolled_back_unverified"`, `"recovered"`,
//!   `"resolved_by_operator"`, `"interrupted"`), `cause` (`"breach"` or `"blind"`),
//!   `opened_at`, `breach_started` (RFC 3339), `from_revision`, `to_revision` (of the
//!   rollback, or `null`), `escalation_reason` (or `null`).
//! - `operator`, `command_rejected`: operator commands; a replay has none.
//!
//! `rearguard replay --output json` ends with one line with `event` = `"summary"` and no
//! `time`: the counts (`readings`, `changes`, `rule_changes`, `steps`,
//! `notifications`), `from`, `to`, `ticked_until`, `incidents` (each with `id`,
//! `target`, `cause`, `opened_at`, `closed_at`, `outcome` or `"open at end"`,
//! `rolled_back`, `first_step_at`, `escalated`) and `breakers` (`{target, reason}`).
//!
//! Fields may be added; none will be removed or change meaning without saying so in the
//! release notes.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{Value, json};

use crate::config::Config;
use crate::engine::{
    Cause, Effect, Engine, Entry, EntryKind, Incident, Input, Outcome, StepOrder, StepResult, Ts,
};
use crate::recording::{Row, RowError};

/// The error every step gets with [`StepOutcome::Fail`].
pub const FAIL_ERROR: &str = "replay: steps fail by request";

/// How replay answers each plan step the engine orders.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StepOutcome {
    /// Every attempt succeeds at once.
    #[default]
    Succeed,
    /// Every attempt fails at once with [`FAIL_ERROR`].
    Fail,
}

/// How to replay.
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub steps: StepOutcome,
}

/// What a replay found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    /// Reading rows replayed.
    pub readings: u64,
    /// Change rows replayed (the first observation of a target included).
    pub changes: u64,
    /// The earliest time of a row, and when the last row was given to the engine.
    pub from: Option<Ts>,
    pub to: Option<Ts>,
    /// The last tick given: time ran on past `to` to let verifications and escalations
    /// under way end.
    pub ticked_until: Option<Ts>,
    /// Every incident, closed or open at the end, in the order they opened.
    pub incidents: Vec<IncidentSummary>,
    /// Plan step attempts that would have run.
    pub steps: u64,
    /// Notifications that would have gone out.
    pub notifications: u64,
    /// Rule phase changes.
    pub rule_changes: u64,
    /// Targets whose circuit breaker is open at the end, with the reason.
    pub breakers: Vec<(String, String)>,
}

/// One incident of a replay.
#[derive(Debug, Clone, PartialEq)]
pub struct IncidentSummary {
    pub id: String,
    /// The target's name.
    pub target: String,
    pub cause: Cause,
    pub opened_at: Ts,
    pub closed_at: Option<Ts>,
    /// How it ended; `None` when it was still open at the end of the replay.
    pub outcome: Option<Outcome>,
    /// A rollback ran and its verification passed (outcome `RolledBack`).
    pub rolled_back: bool,
    /// When the first plan step would have run: the rollback decision.
    pub first_step_at: Option<Ts>,
    /// Why people were paged without (further) automatic action, if they were.
    pub escalated: Option<String>,
}

impl IncidentSummary {
    fn new(inc: &Incident, first_step_at: Option<Ts>) -> IncidentSummary {
        IncidentSummary {
            id: inc.id.clone(),
            target: inc.target_name.clone(),
            cause: inc.cause,
            opened_at: inc.opened_at,
            closed_at: inc.closed_at,
            outcome: inc.outcome.clone(),
            rolled_back: inc.outcome == Some(Outcome::RolledBack),
            first_step_at,
            escalated: inc.escalation_reason.clone(),
        }
    }

    /// The outcome in words: `rolled_back`, `recovered`, ... or `open at end`.
    pub fn outcome_name(&self) -> &'static str {
        self.outcome.as_ref().map_or("open at end", Outcome::name)
    }
}

/// Replays `inputs` (rows in the order they were given to the engine, as
/// [`crate::recording::read`] gives them, or inputs each given at its time) through a
/// fresh engine for `cfg`. Every effect goes to `on_effect` with its engine time, in
/// order. A row error stops the replay and is returned; the effects before it have been
/// reported.
pub fn run<R: Into<Row>>(
    cfg: &Config,
    inputs: impl Iterator<Item = Result<R, RowError>>,
    opts: &Options,
    on_effect: &mut dyn FnMut(Ts, &Effect),
) -> Result<Summary, RowError> {
    let mut r = Replay {
        engine: Engine::new(cfg.clone()),
        steps: opts.steps,
        summary: Summary::default(),
        first_steps: HashMap::new(),
        last: Ts(0),
        on_effect,
    };
    // A zero tick cannot pass validation; guard anyway so that the loop ends.
    let tick = cfg.daemon.tick.max(Duration::from_millis(1));
    let mut next_tick: Option<Ts> = None;
    for row in inputs {
        let Row { time, seen, input } = row?.into();
        let next = next_tick.get_or_insert(seen);
        while *next <= seen {
            r.tick(*next);
            *next = next.plus(tick);
        }
        match input {
            Input::Reading(_) => r.summary.readings += 1,
            Input::Change { .. } => r.summary.changes += 1,
            _ => {}
        }
        r.summary.from = Some(r.summary.from.map_or(time, |from| from.min(time)));
        r.summary.to = Some(seen);
        r.give(input, time, seen);
    }
    if let (Some(mut next), Some(last)) = (next_tick, r.summary.to) {
        let end = last.plus(run_on(cfg)).plus(tick);
        while next <= end {
            r.tick(next);
            next = next.plus(tick);
        }
    }
    let Replay {
        engine,
        mut summary,
        first_steps,
        ..
    } = r;
    for inc in engine.incidents() {
        let first = first_steps.get(&inc.id).copied();
        summary.incidents.push(IncidentSummary::new(inc, first));
    }
    summary
        .incidents
        .sort_by(|a, b| (a.opened_at, &a.id).cmp(&(b.opened_at, &b.id)));
    for (t, target) in cfg.targets.iter().enumerate() {
        if let Some(why) = engine.breaker(t) {
            summary.breakers.push((target.name.clone(), why.to_owned()));
        }
    }
    Ok(summary)
}

/// How long time runs on after the last row: the longest verification window plus the
/// longest escalation delay.
fn run_on(cfg: &Config) -> Duration {
    let verify = cfg.plans.iter().map(|p| p.verify.window).max();
    let after = cfg.escalation.iter().map(|l| l.after).max();
    verify.unwrap_or_default() + after.unwrap_or_default()
}

struct Replay<'a> {
    engine: Engine,
    steps: StepOutcome,
    summary: Summary,
    first_steps: HashMap<String, Ts>,
    /// The latest engine time given so far.
    last: Ts,
    on_effect: &'a mut dyn FnMut(Ts, &Effect),
}

impl Replay<'_> {
    fn tick(&mut self, at: Ts) {
        // As the daemon's loop: never behind the latest time given.
        let at = at.max(self.last);
        self.give(Input::Tick, at, at);
        self.summary.ticked_until = Some(at);
    }

    /// Gives the engine an input of time `time` when the daemon's loop was given it
    /// (`seen`), at the engine time that loop gives it (`daemon::generation::input_time`:
    /// a reading at its own time, anything else no earlier than the latest time given),
    /// then the answers to the steps it orders, at `seen`.
    fn give(&mut self, input: Input, time: Ts, seen: Ts) {
        let at = match input {
            Input::Reading(_) => time,
            _ => time.max(self.last),
        };
        self.last = self.last.max(at);
        self.apply(input, at, seen.max(self.last));
    }

    /// Gives one input to the engine at `at`, then the answers to the steps it orders at
    /// `answered` (when the daemon's loop gets them back), until no step is outstanding.
    fn apply(&mut self, input: Input, mut at: Ts, answered: Ts) {
        let mut effects = self.engine.step(input, at);
        // Nearly every step returns nothing; only then is there work to do.
        while !effects.is_empty() {
            let mut answers = Vec::new();
            for effect in &effects {
                (self.on_effect)(at, effect);
                match effect {
                    Effect::RunStep(order) => {
                        self.summary.steps += 1;
                        self.first_steps.entry(order.incident.clone()).or_insert(at);
                        answers.push(self.answer(order));
                    }
                    Effect::Notify(_) => self.summary.notifications += 1,
                    Effect::RuleChanged { .. } => self.summary.rule_changes += 1,
                    Effect::IncidentClosed(inc) => {
                        let first = self.first_steps.remove(&inc.id);
                        self.summary
                            .incidents
                            .push(IncidentSummary::new(inc, first));
                    }
                    _ => {}
                }
            }
            effects = Vec::new();
            if !answers.is_empty() {
                at = answered;
                self.last = self.last.max(at);
            }
            for answer in answers {
                effects.extend(self.engine.step(Input::StepDone(answer), at));
            }
        }
    }

    fn answer(&self, order: &StepOrder) -> StepResult {
        let ok = self.steps == StepOutcome::Succeed;
        StepResult {
            incident: order.incident.clone(),
            step: order.step,
            attempt: order.attempt,
            ok,
            duration_ms: 0,
            output: String::new(),
            error: (!ok).then(|| FAIL_ERROR.to_owned()),
        }
    }
}

/// One line of the text timeline for an effect, starting with its time in RFC 3339, or
/// `None` for effects another line already shows (a rule's timeline entry repeats its
/// `rule_changed`, a notification's entry repeats the notification).
pub fn render_text(cfg: &Config, at: Ts, effect: &Effect) -> Option<String> {
    let text = match effect {
        Effect::RuleChanged { rule, transition } => format!(
            "rule {}: {} -> {} ({})",
            cfg.rules[*rule].name,
            transition.from.name(),
            transition.to.name(),
            transition.evidence
        ),
        Effect::ChangeObserved {
            target,
            from,
            to,
            previous_healthy,
        } => format!(
            "{}: revision changed from {from} to {to} ({from} was {})",
            cfg.targets[*target].name,
            if *previous_healthy {
                "healthy"
            } else {
                "not healthy"
            }
        ),
        Effect::Timeline {
            incident, entry, ..
        } => {
            timeline_event(cfg, entry)?;
            format!("[{incident}] {}", entry.text)
        }
        Effect::RunStep(order) => {
            let plan = &cfg.plans[order.plan];
            let step = &plan.steps[order.step];
            format!(
                "[{}] would run step {}/{} {:?} ({}) of plan {}, attempt {}",
                order.incident,
                order.step + 1,
                plan.steps.len(),
                step.name,
                step.action.type_name(),
                plan.name,
                order.attempt
            )
        }
        Effect::Notify(n) => {
            let names: Vec<&str> = n
                .notifiers
                .iter()
                .map(|&i| cfg.notifiers[i].name.as_str())
                .collect();
            let level = n
                .level
                .map_or("default", |l| cfg.escalation[l].name.as_str());
            format!(
                "[{}] would notify ({}, level {level}{}): {}",
                n.incident,
                n.occasion.name(),
                if names.is_empty() {
                    String::new()
                } else {
                    format!(" -> {}", names.join(", "))
                },
                n.summary
            )
        }
        Effect::IncidentClosed(inc) => {
            format!("[{}] incident closed: {}", inc.id, outcome_name_of(inc))
        }
        Effect::CommandRejected { reason } => format!("command rejected: {reason}"),
        Effect::Baked { target, revision } => format!(
            "{}: revision {revision} baked (would snapshot its configuration)",
            cfg.targets[*target].name
        ),
        // The timeline's entries already tell each transition.
        Effect::Transition { .. } => return None,
    };
    Some(format!("{at}  {text}"))
}

/// One JSON object (one line, no newline) for an effect, with the fields documented in
/// the module documentation, or `None` for effects another line already shows.
pub fn render_json(cfg: &Config, at: Ts, effect: &Effect) -> Option<String> {
    let target_name = |t: usize| cfg.targets[t].name.clone();
    let (event, target, incident, rule, mut extra) = match effect {
        Effect::RuleChanged { rule, transition } => (
            "rule_changed",
            target_name(cfg.rules[*rule].target),
            None,
            Some(cfg.rules[*rule].name.clone()),
            json!({
                "from": transition.from.name(),
                "to": transition.to.name(),
                "breach_since": transition.breach_since.map(|t| t.rfc3339()),
                "evidence": transition.evidence,
            }),
        ),
        Effect::ChangeObserved {
            target,
            from,
            to,
            previous_healthy,
        } => (
            "change",
            target_name(*target),
            None,
            None,
            json!({ "from": from, "to": to, "previous_healthy": previous_healthy }),
        ),
        Effect::Baked { target, revision } => (
            "baked",
            target_name(*target),
            None,
            None,
            json!({ "revision": revision }),
        ),
        Effect::Timeline {
            incident,
            target,
            entry,
        } => {
            let event = timeline_event(cfg, entry)?;
            let mut extra = json!({ "text": entry.text });
            let mut rule = None;
            match &entry.kind {
                EntryKind::StepFinished { ok, .. } => extra["ok"] = json!(ok),
                _ if event == "incident_opened" => {
                    extra["cause"] = json!("breach");
                    rule = fired_rule(cfg, &entry.text).map(|r| cfg.rules[r].name.clone());
                }
                _ => {}
            }
            (
                event,
                target_name(*target),
                Some(incident.clone()),
                rule,
                extra,
            )
        }
        Effect::RunStep(order) => {
            let plan = &cfg.plans[order.plan];
            let step = &plan.steps[order.step];
            (
                "step",
                target_name(order.target),
                Some(order.incident.clone()),
                Some(order.rule.clone()).filter(|r| !r.is_empty()),
                json!({
                    "plan": plan.name,
                    "step": order.step + 1,
                    "steps": plan.steps.len(),
                    "step_name": step.name,
                    "action": step.action.type_name(),
                    "attempt": order.attempt,
                    "from_revision": order.from_revision,
                    "to_revision": order.to_revision,
                }),
            )
        }
        // The timeline's entries already tell each transition.
        Effect::Transition { .. } => return None,
        Effect::Notify(n) => (
            "notification",
            target_name(n.target),
            Some(n.incident.clone()),
            None,
            json!({
                "occasion": n.occasion.name(),
                "level": n.level.map(|l| cfg.escalation[l].name.clone()),
                "notifiers": n.notifiers.iter().map(|&i| cfg.notifiers[i].name.clone()).collect::<Vec<_>>(),
                "summary": n.summary,
            }),
        ),
        Effect::IncidentClosed(inc) => (
            "incident_closed",
            inc.target_name.clone(),
            Some(inc.id.clone()),
            inc.rules.first().map(|&r| cfg.rules[r].name.clone()),
            json!({
                "outcome": outcome_name_of(inc),
                "cause": cause_name(inc.cause),
                "opened_at": inc.opened_at.rfc3339(),
                "breach_started": inc.breach_started.rfc3339(),
                "from_revision": inc.from_revision,
                "to_revision": inc.to_revision,
                "escalation_reason": inc.escalation_reason,
            }),
        ),
        Effect::CommandRejected { reason } => (
            "command_rejected",
            String::new(),
            None,
            None,
            json!({ "reason": reason }),
        ),
    };
    let mut line = json!({
        "time": at.rfc3339(),
        "event": event,
        "target": target,
        "incident": incident,
        "rule": rule,
    });
    if let (Some(line), Some(extra)) = (line.as_object_mut(), extra.as_object_mut()) {
        line.append(extra);
    }
    Some(line.to_string())
}

/// The event name of a timeline entry, or `None` when another effect shows it.
fn timeline_event(cfg: &Config, entry: &Entry) -> Option<&'static str> {
    Some(match entry.kind {
        // A rule's phase change is its `rule_changed`; only the firing that opened the
        // incident (logged as "rule NAME fired: ...") is an event of its own.
        EntryKind::Rule => {
            fired_rule(cfg, &entry.text)?;
            "incident_opened"
        }
        EntryKind::Decision => "decision",
        EntryKind::Verification => "verification",
        EntryKind::StepFinished { .. } => "step_result",
        EntryKind::Operator => "operator",
        // These repeat `change`, `step` and `notification`.
        EntryKind::Change | EntryKind::StepStarted | EntryKind::Notification => return None,
    })
}

/// The rule whose firing opened an incident, from the entry the engine logs for it.
fn fired_rule(cfg: &Config, text: &str) -> Option<usize> {
    let rest = text.strip_prefix("rule ")?;
    cfg.rules.iter().position(|r| {
        rest.strip_prefix(r.name.as_str())
            .is_some_and(|tail| tail.starts_with(" fired: "))
    })
}

fn outcome_name_of(inc: &Incident) -> &'static str {
    inc.outcome.as_ref().map_or("open", Outcome::name)
}

fn cause_name(c: Cause) -> &'static str {
    match c {
        Cause::Breach => "breach",
        Cause::Blind => "blind",
    }
}

impl Summary {
    /// The summary in words, one fact per line, for the end of a text replay.
    pub fn render_text(&self) -> String {
        let mut s = String::new();
        let span = match (self.from, self.to) {
            (Some(from), Some(to)) => crate::recording::describe_span(from, to),
            _ => "an empty recording".to_owned(),
        };
        s.push_str(&format!(
            "replayed {} readings and {} changes, {span}\n",
            self.readings, self.changes
        ));
        s.push_str(&format!(
            "{} rule changes, {} incidents, {} step attempts, {} notifications\n",
            self.rule_changes,
            self.incidents.len(),
            self.steps,
            self.notifications
        ));
        for i in &self.incidents {
            s.push_str(&format!(
                "incident {} ({}, {}): opened {}, {}",
                i.id,
                i.target,
                cause_name(i.cause),
                i.opened_at,
                i.outcome_name()
            ));
            if let Some(at) = i.closed_at {
                s.push_str(&format!(" at {at}"));
            }
            if let Some(at) = i.first_step_at {
                s.push_str(&format!("; rollback started {at}"));
            }
            if let Some(why) = &i.escalated {
                s.push_str(&format!("; escalated: {why}"));
            }
            s.push('\n');
        }
        for (target, why) in &self.breakers {
            s.push_str(&format!("circuit breaker open on {target}: {why}\n"));
        }
        s
    }

    /// The summary as one JSON object: the fields of [`Summary`] and
    /// [`IncidentSummary`] by the same names, times in RFC 3339, `outcome` as in
    /// `incident_closed` or `"open at end"`, `breakers` as `{target, reason}` objects.
    pub fn to_json(&self) -> Value {
        let t = |t: Option<Ts>| t.map(|t| t.rfc3339());
        json!({
            "event": "summary",
            "readings": self.readings,
            "changes": self.changes,
            "from": t(self.from),
            "to": t(self.to),
            "ticked_until": t(self.ticked_until),
            "steps": self.steps,
            "notifications": self.notifications,
            "rule_changes": self.rule_changes,
            "incidents": self.incidents.iter().map(|i| json!({
                "id": i.id,
                "target": i.target,
                "cause": cause_name(i.cause),
                "opened_at": i.opened_at.rfc3339(),
                "closed_at": t(i.closed_at),
                "outcome": i.outcome_name(),
                "rolled_back": i.rolled_back,
                "first_step_at": t(i.first_step_at),
                "escalated": i.escalated,
            })).collect::<Vec<_>>(),
            "breakers": self.breakers.iter().map(|(target, reason)| json!({
                "target": target,
                "reason": reason,
            })).collect::<Vec<_>>(),
        })
    }
}

/// Test support: replaying inputs the way the daemon's engine took them, and the way
/// `rearguard replay` takes them after `rearguard record` wrote them. Public for the
/// integration tests (`tests/it/replay_equals_live.rs`), not for use.
#[doc(hidden)]
pub mod support {
    use super::*;

    /// Every effect of a replay with its time, and the summary.
    pub type Replayed = (Summary, Vec<(Ts, Effect)>);

    /// Replays `rows` (readings and changes in time order) as they are, with the
    /// daemon's ticks between them.
    pub fn replay_inputs(cfg: &Config, rows: &[(Ts, Input)], opts: &Options) -> Replayed {
        let mut seen = Vec::new();
        let summary = run(cfg, rows.iter().cloned().map(Ok), opts, &mut |t, e| {
            seen.push((t, e.clone()))
        })
        .expect("rows given as inputs have no row errors");
        (summary, seen)
    }

    /// Writes `rows` as a recording (in the order given, each with its time and when
    /// the engine was given it, as `record` does), reads it back and replays it; a row
    /// that does not read back is the error.
    pub fn replay_recorded(
        cfg: &Config,
        rows: &[Row],
        opts: &Options,
    ) -> Result<Replayed, RowError> {
        let mut csv = Vec::new();
        let mut writer = crate::recording::Writer::new(&mut csv).expect("writes to memory");
        for row in rows {
            writer.row(cfg, row).expect("a reading or a change");
        }
        writer.flush().expect("writes to memory");
        drop(writer);
        let mut seen = Vec::new();
        let summary = run(
            cfg,
            crate::recording::read(cfg, csv.as_slice()),
            opts,
            &mut |t, e| seen.push((t, e.clone())),
        )?;
        Ok((summary, seen))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Measure, Phase, Reading, ReadingState};

    /// 2026-11-22T10:00:00Z.
    const T0: u64 = 1_795_341_600;

    fn cfg(extra: &str) -> Config {
        let text = format!(
            r#"
[daemon]
tick = "1s"

[[target]]
name = "shop"
plan = "back"
blame_window = "5m"

[[signal]]
name = "health"
target = "shop"
type = "http_probe"
url = "http://127.0.0.1:8080/health"
interval = "1s"

[[rule]]
name = "down"
signal = "health"
consecutive = 2

[[plan]]
name = "back"

[[plan.step]]
name = "switch"
type = "exec"
command = ["true"]
retries = 1

[plan.verify]
window = "30s"

[[notifier]]
name = "log"
type = "log"
{extra}
"#
        );
        crate::config::load_str(
            &text,
            crate::config::Format::Toml,
            std::iter::empty(),
            std::path::Path::new("."),
        )
        .unwrap()
    }

    fn at(s: u64) -> Ts {
        Ts::from_secs(T0 + s)
    }

    fn change(s: u64, rev: &str) -> Result<(Ts, Input), RowError> {
        Ok((
            at(s),
            Input::Change {
                target: 0,
                revision: rev.to_owned(),
                at: at(s),
            },
        ))
    }

    fn probe(s: u64, ok: bool) -> Result<(Ts, Input), RowError> {
        Ok((
            at(s),
            Input::Reading(Reading {
                signal: 0,
                state: ReadingState::Value(Measure::Check { ok, detail: None }),
            }),
        ))
    }

    /// v1 healthy, v2 deployed at 10s, failing at 11s and 12s (fires at 12s), healthy
    /// again from 13s to 15s, then the recording ends.
    fn bad_deploy() -> Vec<Result<(Ts, Input), RowError>> {
        let mut rows = vec![change(0, "v1")];
        rows.extend((1..10).map(|s| probe(s, true)));
        rows.push(change(10, "v2"));
        rows.extend([probe(11, false), probe(12, false)]);
        rows.extend((13..=15).map(|s| probe(s, true)));
        rows
    }

    fn replay(
        cfg: &Config,
        rows: Vec<Result<(Ts, Input), RowError>>,
        steps: StepOutcome,
    ) -> (Summary, Vec<(Ts, Effect)>) {
        let mut seen = Vec::new();
        let summary = run(cfg, rows.into_iter(), &Options { steps }, &mut |t, e| {
            seen.push((t, e.clone()))
        })
        .unwrap();
        (summary, seen)
    }

    /// The bad deploy with the failed probe of 12s arriving late, at 14.5s: given to the
    /// engine after the ticks of 13s and 14s, at its own time, and the step it orders
    /// answered when it arrived.
    #[test]
    fn a_late_reading_is_judged_at_its_time_when_it_was_given() {
        let cfg = cfg("");
        let late = at(14).plus(Duration::from_millis(500));
        let rows: Vec<Result<Row, RowError>> = bad_deploy()
            .into_iter()
            .map(|r| {
                let mut row = Row::from(r.unwrap());
                if row.time == at(12) {
                    row.seen = late;
                }
                if row.time > at(12) {
                    row.seen = row.time.max(late);
                }
                Ok(row)
            })
            .collect();
        let mut seen: Vec<(Ts, Effect)> = Vec::new();
        let s = run(&cfg, rows.into_iter(), &Options::default(), &mut |t, e| {
            seen.push((t, e.clone()))
        })
        .unwrap();
        let fired = seen
            .iter()
            .position(|(_, e)| matches!(e, Effect::RuleChanged { transition, .. } if transition.to == Phase::Firing))
            .expect("the rule fires");
        assert_eq!(seen[fired].0, at(12), "{seen:#?}");
        let step = seen.iter().find(|(_, e)| matches!(e, Effect::RunStep(_)));
        assert_eq!(step.map(|(t, _)| *t), Some(at(12)), "{seen:#?}");
        let answered = seen.iter().find(|(_, e)| {
            matches!(e, Effect::Timeline { entry, .. } if matches!(entry.kind, EntryKind::StepFinished { .. }))
        });
        assert_eq!(answered.map(|(t, _)| *t), Some(late), "{seen:#?}");
        assert_eq!((s.from, s.to), (Some(at(0)), Some(at(15))));
        assert_eq!(s.ticked_until.map(|t| t >= at(15)), Some(true));
    }

    #[test]
    fn the_verification_window_passes_on_ticks_after_the_last_row() {
        let cfg = cfg("");
        let (s, _) = replay(&cfg, bad_deploy(), StepOutcome::Succeed);
        assert_eq!((s.readings, s.changes, s.steps), (14, 2, 1));
        assert_eq!(s.from, Some(at(0)));
        assert_eq!(s.to, Some(at(15)));
        assert_eq!(s.incidents.len(), 1, "{s:?}");
        let inc = &s.incidents[0];
        assert_eq!(inc.outcome, Some(Outcome::RolledBack));
        assert!(inc.rolled_back);
        assert_eq!(inc.first_step_at, Some(at(12)));
        // The plan finished at 12s; the window of 30s ends at 42s, 27s after the last row,
        // and only a tick can get there.
        assert_eq!(inc.closed_at, Some(at(42)));
        assert!(s.ticked_until.unwrap() >= at(42));
        assert!(s.breakers.is_empty());
    }

    #[test]
    fn ticks_fill_the_gaps_between_rows_so_delayed_notifications_go_out_on_time() {
        let cfg = cfg(r#"
[[escalation]]
name = "later"
on = ["opened"]
after = "20s"
notify = ["log"]
"#);
        let mut rows = bad_deploy();
        rows.truncate(13); // up to the firing at 12s
        // The next row comes five minutes later; the notice is due at 32s.
        rows.push(probe(300, false));
        let (_, seen) = replay(&cfg, rows, StepOutcome::Fail);
        let opened: Vec<Ts> = seen
            .iter()
            .filter_map(|(t, e)| match e {
                Effect::Notify(n) if n.occasion == crate::config::Occasion::Opened => Some(*t),
                _ => None,
            })
            .collect();
        assert_eq!(opened, [at(32)]);
    }

    #[test]
    fn failing_steps_open_the_breaker_and_leave_the_incident_escalated() {
        let cfg = cfg("");
        // The rollback never ran, so the service stays down to the end of the recording.
        let mut rows = bad_deploy();
        rows.truncate(13);
        rows.extend((13..=15).map(|s| probe(s, false)));
        let (s, seen) = replay(&cfg, rows, StepOutcome::Fail);
        // One attempt and one retry, both answered at once.
        assert_eq!(s.steps, 2);
        let failures = seen
            .iter()
            .filter(|(_, e)| matches!(e, Effect::Timeline { entry, .. } if entry.text.contains(FAIL_ERROR)))
            .count();
        assert_eq!(failures, 2);
        assert_eq!(s.incidents.len(), 1);
        let inc = &s.incidents[0];
        assert_eq!(inc.outcome, None, "still open at the end: {inc:?}");
        assert_eq!(inc.outcome_name(), "open at end");
        assert!(!inc.rolled_back);
        assert_eq!(inc.first_step_at, Some(at(12)));
        assert!(
            inc.escalated
                .as_deref()
                .unwrap()
                .contains("failed after 2 attempts")
        );
        assert_eq!(s.breakers.len(), 1);
        assert_eq!(s.breakers[0].0, "shop");
    }

    #[test]
    fn json_lines_parse_and_carry_the_documented_fields() {
        let cfg = cfg(r#"
[[escalation]]
name = "team"
on = ["opened", "rollback_started", "rollback_succeeded", "resolved"]
notify = ["log"]
"#);
        let mut lines = Vec::new();
        run(
            &cfg,
            bad_deploy().into_iter(),
            &Options::default(),
            &mut |t, e| {
                lines.extend(render_json(&cfg, t, e));
            },
        )
        .unwrap();
        let events: Vec<Value> = lines
            .iter()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        let by_event = |name: &str| -> &Value {
            events
                .iter()
                .find(|v| v["event"] == name)
                .unwrap_or_else(|| panic!("no {name} in {lines:#?}"))
        };
        let common = ["time", "event", "target", "incident", "rule"];
        let added: [(&str, &[&str]); 9] = [
            ("rule_changed", &["from", "to", "breach_since", "evidence"]),
            ("change", &["from", "to", "previous_healthy"]),
            ("incident_opened", &["cause", "text"]),
            ("decision", &["text"]),
            (
                "step",
                &[
                    "plan",
                    "step",
                    "steps",
                    "step_name",
                    "action",
                    "attempt",
                    "from_revision",
                    "to_revision",
                ],
            ),
            ("step_result", &["ok", "text"]),
            ("verification", &["text"]),
            (
                "notification",
                &["occasion", "level", "notifiers", "summary"],
            ),
            (
                "incident_closed",
                &[
                    "outcome",
                    "cause",
                    "opened_at",
                    "breach_started",
                    "from_revision",
                    "to_revision",
                    "escalation_reason",
                ],
            ),
        ];
        for (event, fields) in added {
            let v = by_event(event);
            for f in common.iter().chain(fields) {
                assert!(v.get(f).is_some(), "{event} has no {f}: {v}");
            }
            assert_eq!(v["target"], "shop", "{v}");
            let time = v["time"].as_str().unwrap();
            assert!(crate::recording::parse_time(time).is_ok(), "{time}");
        }
        let step = by_event("step");
        assert_eq!(step["time"], "2026-11-22T10:00:12.000Z");
        assert_eq!(step["plan"], "back");
        assert_eq!(
            (step["step"].as_u64(), step["attempt"].as_u64()),
            (Some(1), Some(1))
        );
        assert_eq!(step["action"], "exec");
        assert_eq!(step["rule"], "down");
        assert_eq!(
            (step["from_revision"].as_str(), step["to_revision"].as_str()),
            (Some("v2"), Some("v1"))
        );
        assert_eq!(by_event("incident_opened")["rule"], "down");
        let n = by_event("notification");
        assert_eq!(
            (n["level"].as_str(), n["notifiers"][0].as_str()),
            (Some("team"), Some("log"))
        );
        assert_eq!(by_event("incident_closed")["outcome"], "rolled_back");
        // Each effect is one line, and the entries that repeat another effect have none.
        assert!(lines.iter().all(|l| !l.contains('\n')));
        assert_eq!(
            events
                .iter()
                .filter(|v| v["event"] == "incident_opened")
                .count(),
            1
        );
    }

    #[test]
    fn text_lines_start_with_the_time_and_skip_repeated_entries() {
        let cfg = cfg("");
        let mut lines = Vec::new();
        run(
            &cfg,
            bad_deploy().into_iter(),
            &Options::default(),
            &mut |t, e| {
                lines.extend(render_text(&cfg, t, e));
            },
        )
        .unwrap();
        let text = lines.join("\n");
        assert!(
            lines.iter().all(|l| l.starts_with("2026-11-22T10:00:")),
            "{text}"
        );
        for want in [
            "shop: revision changed from v1 to v2 (v1 was healthy)",
            "rule down: pending -> firing",
            "would run step 1/1 \"switch\" (exec) of plan back, attempt 1",
            "verification passed",
            "incident closed: rolled_back",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
        assert_eq!(text.matches("would run step").count(), 1, "{text}");
    }

    #[test]
    fn a_row_error_stops_the_replay_and_is_returned() {
        let cfg = cfg("");
        let mut rows = bad_deploy();
        rows.insert(
            3,
            Err(RowError {
                line: 4,
                message: "bad".into(),
            }),
        );
        let err = run(&cfg, rows.into_iter(), &Options::default(), &mut |_, _| {}).unwrap_err();
        assert_eq!(err.line, 4);
    }

    fn rate(s: u64, errors: f64, requests: f64) -> (Ts, Input) {
        (
            at(s),
            Input::Reading(Reading {
                signal: 1,
                state: ReadingState::Value(Measure::Rate { errors, requests }),
            }),
        )
    }

    fn failed_probe(s: u64, detail: &str) -> (Ts, Input) {
        (
            at(s),
            Input::Reading(Reading {
                signal: 0,
                state: ReadingState::Value(Measure::Check {
                    ok: false,
                    detail: Some(detail.to_owned()),
                }),
            }),
        )
    }

    /// Each change of a rule: when, to which phase, and the evidence.
    fn rule_changes(cfg: &Config, seen: &[(Ts, Effect)], rule: &str) -> Vec<(Ts, Phase, String)> {
        seen.iter()
            .filter_map(|(t, e)| match e {
                Effect::RuleChanged {
                    rule: r,
                    transition,
                } if cfg.rules[*r].name == rule => {
                    Some((*t, transition.to, transition.evidence.clone()))
                }
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_recording_replays_the_decisions_and_evidence_of_the_readings_it_was_made_from() {
        let errors = crate::recording::tests::ERRORS_SIGNAL;
        let cfg = cfg(&format!(
            r#"{errors}interval = "1s"

[[rule]]
name = "errors-high"
signal = "errors"
when = "> 5%"
consecutive = 1
"#
        ));
        let rows = vec![
            change(0, "v1").unwrap(),
            // 10 of 202 is 4.95%: not above 5%, live or replayed.
            rate(1, 10.0, 202.0),
            // Prometheus's increase() counts are fractional: 54.5 of 200. A ratio times
            // the requests gave back 54.50000000000001, which the evidence rounds to 55.
            rate(2, 54.5, 200.0),
            rate(3, 0.0, 200.0),
            // Errors above requests, when the two increase()s extrapolate differently
            // in an outage: a ratio above 1, which a recording of ratios refused.
            rate(4, 203.5, 202.9),
            failed_probe(5, "HTTP 503 Service Unavailable"),
            failed_probe(6, "HTTP 503 Service Unavailable"),
        ];
        let opts = Options::default();
        let (live_summary, live) = support::replay_inputs(&cfg, &rows, &opts);
        let errors_high = rule_changes(&cfg, &live, "errors-high");
        let when: Vec<(Ts, Phase)> = errors_high.iter().map(|(t, p, _)| (*t, *p)).collect();
        assert_eq!(
            when,
            [
                (at(2), Phase::Firing),
                (at(3), Phase::Ok),
                (at(4), Phase::Firing)
            ],
            "{errors_high:#?}"
        );
        assert!(
            errors_high[0].2.contains("(54/200 requests)"),
            "{errors_high:?}"
        );
        let down = rule_changes(&cfg, &live, "down");
        assert!(
            down.iter()
                .any(|(_, _, e)| e.contains("check failed: HTTP 503 Service Unavailable")),
            "{down:#?}"
        );

        let rows: Vec<Row> = rows.into_iter().map(Row::from).collect();
        let (summary, replayed) = support::replay_recorded(&cfg, &rows, &opts)
            .unwrap_or_else(|e| panic!("the recording does not replay: {e}"));
        assert_eq!(replayed, live);
        assert_eq!(summary, live_summary);
    }
}
