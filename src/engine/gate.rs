//! The decision gate: whether the engine may roll back an incident's target by itself
//! (plan, pause, breaker, a change inside the blame window, a previous revision healthy
//! and not marked bad, cooldown, rate limit, shadow mode), and whether an operator's
//! rollback may run. A refused incident is escalated; an allowed one starts its plan.
//! It also judges, when a change is observed, whether the replaced revision was healthy:
//! none of the target's rules pending or firing in the target's `healthy_for` before the
//! change (each rule's last time away from `ok` is kept in an [`Unrest`]).
//!
//! It does no I/O and reads no clock; the checks change no state.

use super::{Cause, Engine, EntryKind, IncidentState, Phase, TargetState, Transition, Ts};
use crate::config::units::human_duration;
use crate::config::{Mode, Occasion, Target};

/// When a rule was last away from `ok` (pending or firing): the stretch under way and
/// the last one that ended, for judging a revision's health before a change.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Unrest {
    /// The start of the stretch under way, and whether it has reached firing.
    current: Option<(Ts, bool)>,
    /// The last stretch that ended: start, end, whether it fired.
    last: Option<(Ts, Ts, bool)>,
}

impl Unrest {
    /// Follows one transition of the rule.
    pub(super) fn note(&mut self, t: &Transition, now: Ts) {
        if t.to == Phase::Ok {
            let (since, fired) = self.current.take().unwrap_or((now, false));
            self.last = Some((since, now, fired || t.from == Phase::Firing));
            return;
        }
        let fired = t.to == Phase::Firing;
        self.current = Some(match self.current {
            Some((since, was)) if t.from != Phase::Ok => (since, was || fired),
            _ => (t.breach_since.unwrap_or(now).min(now), fired),
        });
    }
}

fn phase_word(fired: bool) -> &'static str {
    if fired { "firing" } else { "pending" }
}

impl Engine {
    /// The decision gate: act only when it is safe and allowed, otherwise escalate.
    pub(super) fn decide(&mut self, idx: usize, now: Ts) {
        match self.refusal(idx, now) {
            Some(reason) => self.escalate(idx, reason, Occasion::NotRolledBack, now),
            None => {
                let t = self.incidents[idx].target;
                if let Some(why) = self.targets[t].previous_health.clone() {
                    self.log(idx, now, EntryKind::Decision, why);
                }
                self.start_plan(idx, now)
            }
        }
    }

    /// Whether the revision a change at `at` replaced (`old`) was healthy, and why in
    /// words: not marked bad, and none of the target's rules pending or firing in the
    /// target's `healthy_for` before the change. A stretch that began at or after the
    /// change belongs to the new revision, even when it began before the change was
    /// observed; one that began before `old` was installed and ended after (the tail of
    /// a breach a rollback to `old` cured) belongs to the revision before. Call it before
    /// the target's state records the change.
    pub(super) fn previous_health(&self, target: usize, old: &str, at: Ts) -> (bool, String) {
        let window = self.cfg.targets[target].healthy_for;
        let span = human_duration(window);
        if self.targets[target].bad.contains(old) {
            let by = self.bad_by(target, old);
            return (
                false,
                format!("the previous revision {old} is marked bad (by {by})"),
            );
        }
        let from = at.minus(window);
        let installed = self.targets[target].changed_at.unwrap_or_default();
        for (i, rule) in self.cfg.rules.iter().enumerate() {
            if rule.target != target {
                continue;
            }
            if let Some(why) = self.unrest_before(i, (installed, from), at, &span) {
                return (
                    false,
                    format!(
                        "the previous revision {old} was not healthy: rule {} {why}",
                        rule.name
                    ),
                );
            }
        }
        (
            true,
            format!(
                "the previous revision {old} was healthy: no rule pending or firing in the {span} before the change"
            ),
        )
    }

    /// How rule `i` was away from `ok` when a change at `at` came, or in a stretch that
    /// began after `installed` and ended after `from`, in words.
    fn unrest_before(
        &self,
        i: usize,
        (installed, from): (Ts, Ts),
        at: Ts,
        span: &str,
    ) -> Option<String> {
        let u = &self.unrest[i];
        let state = &self.rules[i];
        if state.phase != Phase::Ok {
            // A rule restored as firing after a restart has no stretch of its own.
            let since = u.current.map(|(s, _)| s).or(state.breach_since());
            if since.is_none_or(|s| s < at) {
                let word = phase_word(state.phase == Phase::Firing);
                return Some(match since {
                    Some(s) => format!("was {word} since {} when it was replaced", s.clock()),
                    None => format!("was {word} when it was replaced"),
                });
            }
        }
        let (since, until, fired) = u.last?;
        (since >= installed && since < at && until > from).then(|| {
            format!(
                "was {} from {} to {}, within the {span} before the change",
                phase_word(fired),
                since.clock(),
                until.clock()
            )
        })
    }

    /// The incident that marked `revision` bad, or words for one not known.
    pub(super) fn bad_by(&self, target: usize, revision: &str) -> String {
        self.targets[target]
            .bad_by
            .get(revision)
            .map_or("an earlier incident".to_owned(), |id| {
                format!("incident {id}")
            })
    }

    /// Why the engine must not act on this incident, or `None` when it may.
    fn refusal(&self, idx: usize, now: Ts) -> Option<String> {
        let t = self.incidents[idx].target;
        let target = &self.cfg.targets[t];
        let ts = &self.targets[t];
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
        if let Some(why) = blame_refusal(target, ts, self.incidents[idx].breach_started) {
            return Some(why);
        }
        let Some((previous, healthy)) = &ts.previous else {
            return Some("no previous revision is known".to_owned());
        };
        if ts.bad.contains(previous) {
            return Some(format!("the previous revision {previous} is marked bad"));
        }
        if !healthy {
            return Some(ts.previous_health.clone().unwrap_or_else(|| {
                format!("the previous revision {previous} was not healthy when it was replaced")
            }));
        }
        if let Some(why) = limit_refusal(target, ts, now) {
            return Some(why);
        }
        if self.cfg.daemon.mode == Mode::Shadow {
            let current = ts.revision.as_deref().unwrap_or_default();
            return Some(format!(
                "shadow mode: would roll back from {current} to {previous} with plan {}",
                self.cfg.plans[plan].name
            ));
        }
        None
    }

    /// Why an operator's rollback of this incident cannot run, or `None` when it can.
    pub(super) fn manual_refusal(&self, idx: usize) -> Option<String> {
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
}

/// Why the latest change is not to blame for a breach that began at `breach`: none was
/// observed, the breach began before it, or outside the target's blame window after it.
fn blame_refusal(target: &Target, ts: &TargetState, breach: Ts) -> Option<String> {
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
            human_duration(after),
            human_duration(target.blame_window)
        ));
    }
    None
}

/// Why another rollback of the target now would be too soon: within the cooldown of the
/// last one, or over the rate limit.
fn limit_refusal(target: &Target, ts: &TargetState, now: Ts) -> Option<String> {
    if let Some(end) = ts.last_rollback_end
        && now.since(end) < target.cooldown
    {
        return Some(format!(
            "the last rollback ended {} ago, within the cooldown of {}",
            human_duration(now.since(end)),
            human_duration(target.cooldown)
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
            human_duration(target.rollback_period)
        ));
    }
    None
}
