//! Operator commands: acknowledge, resolve, clear the breaker, roll back now, silence a
//! rule, pause and resume. Each is written to the incident's timeline with who asked; a
//! command that cannot apply is answered with [`Effect::CommandRejected`].
//!
//! It does no I/O and reads no clock, and it does not authenticate: `by` is whoever the
//! control API says asked.

use std::time::Duration;

use super::{Cause, Command, Effect, Engine, EntryKind, Outcome, Phase, Ts};
use crate::config::Occasion;

impl Engine {
    pub(super) fn on_command(&mut self, c: Command, now: Ts) {
        match c {
            Command::Acknowledge { incident, by } => self.acknowledge(&incident, &by, now),
            Command::Resolve { incident, by } => self.resolve_by(&incident, by, now),
            Command::ClearBreaker { target, by } => self.clear_breaker(target, &by, now),
            Command::Rollback { incident, by } => self.rollback_by(&incident, &by, now),
            Command::Silence { rule, for_, by } => self.silence(rule, for_, by, now),
            Command::Pause { target, by: _ } => self.pause(target, true),
            Command::Resume { target, by: _ } => self.pause(target, false),
        }
    }

    fn reject(&mut self, reason: String) {
        self.out.push(Effect::CommandRejected { reason });
    }

    fn no_incident(&mut self, incident: &str) {
        self.reject(format!("no open incident has the id {incident:?}"));
    }

    fn acknowledge(&mut self, incident: &str, by: &str, now: Ts) {
        let Some(idx) = self.find(incident) else {
            return self.no_incident(incident);
        };
        self.incidents[idx].acknowledged = true;
        self.pending.retain(|p| p.incident != incident);
        let text = format!("acknowledged by {by}");
        self.log(idx, now, EntryKind::Operator, text);
        self.notify(idx, Occasion::Acknowledged, now);
    }

    fn resolve_by(&mut self, incident: &str, by: String, now: Ts) {
        let Some(idx) = self.find(incident) else {
            return self.no_incident(incident);
        };
        let text = format!("resolve requested by {by}");
        self.log(idx, now, EntryKind::Operator, text);
        self.resolve(idx, Outcome::ResolvedByOperator(by), now);
    }

    fn clear_breaker(&mut self, target: usize, by: &str, now: Ts) {
        match self.targets.get_mut(target) {
            Some(ts) if ts.breaker.is_some() => {
                ts.breaker = None;
                if let Some(idx) = self.open_incident(target, Cause::Breach) {
                    let text = format!("circuit breaker cleared by {by}");
                    self.log(idx, now, EntryKind::Operator, text);
                }
            }
            Some(_) => self.reject("the circuit breaker of this target is not open".to_owned()),
            None => self.reject(format!("no target has the index {target}")),
        }
    }

    /// Runs the target's plan now, as the operator decided (see [`Command::Rollback`]).
    fn rollback_by(&mut self, incident: &str, by: &str, now: Ts) {
        let Some(idx) = self.find(incident) else {
            return self.no_incident(incident);
        };
        if let Some(why) = self.manual_refusal(idx) {
            return self.reject(why);
        }
        let t = self.incidents[idx].target;
        let (from, to) = self.rollback_revisions(t);
        let plan = &self.cfg.plans[self.cfg.targets[t].plan.expect("checked")];
        let text = format!(
            "rolling back from {from} to {to} with plan {}, as {by} decided; {from} is marked bad",
            plan.name
        );
        let requested = format!("rollback requested by {by}");
        self.log(idx, now, EntryKind::Operator, requested);
        // Reminders that nothing was rolled back stop: something is.
        self.pending
            .retain(|p| !(p.incident == incident && p.occasion == Occasion::NotRolledBack));
        self.begin_rollback(idx, text, now);
    }

    fn silence(&mut self, rule: usize, for_: Duration, by: String, now: Ts) {
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

    /// Pauses (or resumes) automatic action on one target, or on all.
    fn pause(&mut self, target: Option<usize>, pause: bool) {
        match target {
            None => self.paused_all = pause,
            Some(t) => match self.targets.get_mut(t) {
                Some(ts) => ts.paused = pause,
                None => self.reject(format!("no target has the index {t}")),
            },
        }
    }
}
