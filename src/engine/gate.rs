//! The decision gate: whether the engine may roll back an incident's target by itself
//! (plan, pause, breaker, a change inside the blame window, a previous revision healthy
//! and not marked bad, cooldown, rate limit, shadow mode), and whether an operator's
//! rollback may run. A refused incident is escalated; an allowed one starts its plan.
//!
//! It does no I/O and reads no clock; the checks change no state.

use super::{Cause, Engine, IncidentState, TargetState, Ts};
use crate::config::units::format_duration;
use crate::config::{Mode, Occasion, Target};

impl Engine {
    /// The decision gate: act only when it is safe and allowed, otherwise escalate.
    pub(super) fn decide(&mut self, idx: usize, now: Ts) {
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
            return Some(format!(
                "the previous revision {previous} was not healthy when it was replaced"
            ));
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
            format_duration(after),
            format_duration(target.blame_window)
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
    None
}
