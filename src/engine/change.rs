//! An observed revision of a target: whether the replaced revision was healthy, the
//! baselines taken from before the change, and a second decision for a breach that was
//! refused for want of a change to blame.
//!
//! It does no I/O and reads no clock; it does not decide whether to act (see `gate.rs`).

use super::{Cause, Effect, Engine, EntryKind, IncidentState, Phase, Ts};

impl Engine {
    pub(super) fn on_change(&mut self, target: usize, revision: String, at: Ts, now: Ts) {
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
        let healthy = !self.firing_before(target, at) && !self.targets[target].bad.contains(&old);
        let ts = &mut self.targets[target];
        ts.previous = Some((old.clone(), healthy));
        ts.revision = Some(revision.clone());
        ts.changed_at = Some(at);
        ts.healthy_since = None;
        // Baselines are what the target's signals looked like before this change, on a
        // healthy revision. When the replaced revision was unhealthy (a rollback away
        // from a bad one, a fix over a firing one) its readings are no norm to compare
        // with, so the baseline from before it is kept.
        if healthy {
            self.rebaseline(target, at);
        }
        let open = self.open_incident(target, Cause::Breach);
        if let Some(idx) = open {
            let text = format!(
                "revision changed from {old} to {revision} (at {} at the earliest)",
                at.clock()
            );
            self.log(idx, now, EntryKind::Change, text);
        }
        self.out.push(Effect::ChangeObserved {
            target,
            from: old,
            to: revision,
            previous_healthy: healthy,
        });
        if let Some(idx) = open {
            self.decide_again(idx, at, now);
        }
    }

    /// Whether a rule of the target is firing over a breach that began before a change
    /// at `at`. The old revision was healthy unless one is: a breach that began after the
    /// change belongs to the new revision, even when the rule fired before the change
    /// was observed.
    fn firing_before(&self, target: usize, at: Ts) -> bool {
        self.cfg.rules.iter().enumerate().any(|(i, r)| {
            r.target == target
                && self.rules[i].phase == Phase::Firing
                && self.rules[i].breach_since().is_none_or(|b| b < at)
        })
    }

    /// A breach that fired before its change was observed was refused for want of a
    /// change to blame; now there is one, so the gate decides again.
    fn decide_again(&mut self, idx: usize, at: Ts, now: Ts) {
        let inc = &self.incidents[idx];
        if inc.refused_by_gate && inc.state == IncidentState::Escalated && inc.breach_started >= at
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
