//! An observed revision of a target: whether the replaced revision was healthy (see
//! `gate.rs`), the baselines taken from before the change, a second decision for a
//! breach that was refused for want of a change to blame, and the notice when the new
//! revision is one rearguard marked bad. An open incident that was never acted on stays
//! with the old revision: a breach that begins after the change is judged in an incident
//! of its own (see `incidents.rs`).
//!
//! It does no I/O and reads no clock; it does not decide whether to act (see `gate.rs`).

use super::{Cause, Effect, Engine, EntryKind, IncidentState, Phase, Ts};
use crate::config::Occasion;

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
        let (healthy, why) = self.previous_health(target, &old, at);
        // Baselines are what the target's signals looked like before this change, on a
        // revision not firing then. When the replaced revision was firing (a rollback
        // away from a bad one, a fix over a firing one) its readings are no norm to
        // compare with, so the baseline from before it is kept.
        let norm = !self.firing_before(target, at) && !self.targets[target].bad.contains(&old);
        let ts = &mut self.targets[target];
        ts.previous = Some((old.clone(), healthy));
        ts.previous_health = Some(why.clone());
        ts.revision = Some(revision.clone());
        ts.changed_at = Some(at);
        ts.healthy_since = None;
        if norm {
            self.rebaseline(target, at);
        }
        let open = self.breach_incidents(target);
        let text = format!(
            "revision changed from {old} to {revision} (at {} at the earliest); {why}",
            at.clock()
        );
        for id in &open {
            if let Some(idx) = self.find(id) {
                self.log(idx, now, EntryKind::Change, text.clone());
            }
        }
        self.out.push(Effect::ChangeObserved {
            target,
            from: old,
            to: revision.clone(),
            previous_healthy: healthy,
        });
        if self.targets[target].bad.contains(&revision) {
            self.bad_revision_deployed(target, &revision, now);
        }
        for id in &open {
            if let Some(idx) = self.find(id) {
                self.decide_again(idx, at, now);
            }
        }
    }

    /// Whether a rule of the target is firing over a breach that began before a change
    /// at `at`: a breach that began after the change belongs to the new revision, even
    /// when the rule fired before the change was observed.
    fn firing_before(&self, target: usize, at: Ts) -> bool {
        self.cfg.rules.iter().enumerate().any(|(i, r)| {
            r.target == target
                && self.rules[i].phase == Phase::Firing
                && self.rules[i].breach_since().is_none_or(|b| b < at)
        })
    }

    /// A breach that fired before its change was observed was refused for want of a
    /// change to blame; now there is one, so the gate decides again. An incident never
    /// acted on whose breach began before the change stays with the old revision.
    fn decide_again(&mut self, idx: usize, at: Ts, now: Ts) {
        let inc = &self.incidents[idx];
        let never_acted = inc.plan.is_none() && inc.state == IncidentState::Escalated;
        if inc.refused_by_gate && never_acted && inc.breach_started >= at {
            self.incidents[idx].refused_by_gate = false;
            self.log(
                idx,
                now,
                EntryKind::Decision,
                "the breach began after this change: deciding again",
            );
            self.decide(idx, now);
        } else if never_acted {
            self.log(
                idx,
                now,
                EntryKind::Decision,
                "this incident stays with the revision it was opened on: a rule that fires after this change is judged in a new incident",
            );
        }
    }

    /// A revision rearguard marked bad is running again: every open incident of the
    /// target says so, and people are told at once, on the newest breach incident, or
    /// without one under the incident that marked the revision bad.
    fn bad_revision_deployed(&mut self, target: usize, revision: &str, now: Ts) {
        let by = self.bad_by(target, revision);
        let text = format!("{revision} was marked bad by {by} and is deployed again");
        let open: Vec<usize> = (0..self.incidents.len())
            .filter(|&i| self.incidents[i].target == target)
            .collect();
        for &idx in &open {
            self.log(idx, now, EntryKind::Decision, text.clone());
        }
        match self.open_incident(target, Cause::Breach) {
            Some(idx) => self.notify(idx, Occasion::BadRevisionDeployed, now),
            None => {
                let marked_by = self.targets[target].bad_by.get(revision).cloned();
                self.announce_bad_revision(target, revision, marked_by, text, now);
            }
        }
    }
}
