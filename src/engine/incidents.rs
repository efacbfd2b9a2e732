//! The life of an incident: opening one (and its id), finding it, writing its timeline,
//! resolving it, and what a rule's transition does to the incidents of its target (a
//! firing rule opens or joins one, a cleared rule may end one).
//!
//! A firing joins the target's newest open breach incident, logged and announced
//! (`rule_joined`), unless that incident was never acted on and its breach began before
//! the target's latest change while this one began at or after it: then the new
//! revision gets a judgement of its own, a new incident that follows the old one.
//!
//! It does no I/O and reads no clock; it does not decide whether to act (see `gate.rs`)
//! nor whom to tell (see `escalation.rs`).

use std::collections::BTreeSet;

use super::{
    Cause, Effect, Engine, Entry, EntryKind, Incident, IncidentState, Outcome, Phase, Transition,
    Ts,
};
use crate::config::Occasion;

impl Engine {
    pub(super) fn open(
        &mut self,
        target: usize,
        cause: Cause,
        breach_started: Ts,
        now: Ts,
    ) -> usize {
        let id = self.incident_id(target, cause, now);
        self.targets[target].last_incident_id = Some(id.clone());
        self.incidents.push(Incident {
            id,
            target,
            target_name: self.cfg.targets[target].name.clone(),
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
            follows: None,
        });
        self.incidents.len() - 1
    }

    /// The target's name and the time to the second, suffixed `-blind` for a blind
    /// incident and numbered when that id is taken.
    fn incident_id(&self, target: usize, cause: Cause, now: Ts) -> String {
        let stamp: String = now
            .rfc3339()
            .chars()
            .filter(|c| c.is_ascii_digit() || *c == 'T')
            .take(15)
            .collect();
        let mut id = format!("{}-{stamp}", self.cfg.targets[target].name);
        if cause == Cause::Blind {
            id.push_str("-blind");
        }
        let last = self.targets[target].last_incident_id.as_deref();
        let mut n = 1;
        let base = id.clone();
        while last == Some(id.as_str()) || self.incidents.iter().any(|i| i.id == id) {
            n += 1;
            id = format!("{base}-{n}");
        }
        id
    }

    /// The target's newest open incident of this cause.
    pub(super) fn open_incident(&self, target: usize, cause: Cause) -> Option<usize> {
        self.incidents
            .iter()
            .rposition(|i| i.target == target && i.cause == cause)
    }

    /// The target's open breach incidents, oldest first, by id (handling one may close
    /// another and move the rest).
    pub(super) fn breach_incidents(&self, target: usize) -> Vec<String> {
        self.incidents
            .iter()
            .filter(|i| i.target == target && i.cause == Cause::Breach)
            .map(|i| i.id.clone())
            .collect()
    }

    /// Where a firing of the target whose breach began at `breach` is judged: in the
    /// newest open breach incident (`Ok`), or in a new one (`Err`, with the incident it
    /// follows when the change started a new judgement).
    fn judged_in(&self, target: usize, breach: Ts) -> Result<usize, Option<usize>> {
        let Some(idx) = self.open_incident(target, Cause::Breach) else {
            return Err(None);
        };
        let inc = &self.incidents[idx];
        let never_acted = inc.plan.is_none() && inc.state == IncidentState::Escalated;
        match self.targets[target].changed_at {
            Some(change) if never_acted && inc.breach_started < change && breach >= change => {
                Err(Some(idx))
            }
            _ => Ok(idx),
        }
    }

    pub(super) fn find(&self, id: &str) -> Option<usize> {
        self.incidents.iter().position(|i| i.id == id)
    }

    pub(super) fn log(&mut self, idx: usize, at: Ts, kind: EntryKind, text: impl Into<String>) {
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

    pub(super) fn resolve(&mut self, idx: usize, outcome: Outcome, now: Ts) {
        let text = match &outcome {
            Outcome::RolledBack => "resolved: rolled back and verified".to_owned(),
            Outcome::Recovered => "resolved: recovered".to_owned(),
            Outcome::ResolvedByOperator(by) => format!("resolved by {by}"),
            Outcome::Interrupted => "interrupted".to_owned(),
            Outcome::RolledBackUnverified => "resolved: rolled back, not verified".to_owned(),
        };
        // A rollback that could not be verified stays so, however the incident closes.
        let outcome = match (&self.incidents[idx].outcome, outcome) {
            (Some(Outcome::RolledBackUnverified), o) if o != Outcome::Interrupted => {
                Outcome::RolledBackUnverified
            }
            (_, o) => o,
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

    pub(super) fn rule_changed(&mut self, ri: usize, t: Transition, now: Ts) {
        let target = self.cfg.rules[ri].target;
        let name = &self.cfg.rules[ri].name;
        let text = format!(
            "rule {name} {} -> {}: {}",
            t.from.name(),
            t.to.name(),
            t.evidence
        );
        let holding = self
            .incidents
            .iter()
            .rposition(|i| i.target == target && i.cause == Cause::Breach && i.rules.contains(&ri));
        if let Some(idx) = holding.or_else(|| self.open_incident(target, Cause::Breach)) {
            self.log(idx, now, EntryKind::Rule, text);
        }
        self.unrest[ri].note(&t, now);
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

    /// A rule fired: it joins the incident it is judged in (failing a verification it is
    /// part of) or opens one, which the gate decides on.
    pub(super) fn rule_fired(&mut self, ri: usize, breach_since: Ts, now: Ts) {
        if self.silenced[ri]
            .as_ref()
            .is_some_and(|(until, _)| *until > now)
        {
            // Counted, evaluated, visible in the status; but no incident until it ends.
            return;
        }
        let target = self.cfg.rules[ri].target;
        let follows = match self.judged_in(target, breach_since) {
            Ok(idx) => return self.rule_joined(idx, ri, now),
            Err(follows) => follows,
        };
        let idx = self.open(target, Cause::Breach, breach_since, now);
        self.incidents[idx].rules.push(ri);
        let rule = &self.cfg.rules[ri];
        let text = format!(
            "rule {} fired: {}",
            rule.name,
            self.rules[ri].evidence(rule, false)
        );
        self.log(idx, now, EntryKind::Rule, text);
        if let Some(old) = follows {
            self.link(old, idx, ri, now);
        }
        self.notify(idx, Occasion::Opened, now);
        self.decide(idx, now);
    }

    /// Writes into both timelines that incident `new`, opened by rule `ri` after the
    /// target's latest change, judges the new revision apart from `old`, which was opened
    /// before the change and never acted on.
    fn link(&mut self, old: usize, new: usize, ri: usize, now: Ts) {
        let t = self.incidents[new].target;
        let revision = self.targets[t].revision.clone().unwrap_or_default();
        let (old_id, new_id) = (
            self.incidents[old].id.clone(),
            self.incidents[new].id.clone(),
        );
        self.incidents[new].follows = Some(old_id.clone());
        let rule = self.cfg.rules[ri].name.clone();
        self.log(
            old,
            now,
            EntryKind::Decision,
            format!("rule {rule} fired after the change to {revision}: it is judged in incident {new_id}, not in this one"),
        );
        self.log(
            new,
            now,
            EntryKind::Decision,
            format!("this breach began after the change to {revision}, while incident {old_id} (opened before it, never acted on) is still open: it is judged on its own"),
        );
    }

    /// A rule fired into an open incident (or fired again in it): logged, and announced
    /// to everyone already told, unless it fails the incident's verification, which is
    /// announced as such.
    fn rule_joined(&mut self, idx: usize, ri: usize, now: Ts) {
        let inc = &mut self.incidents[idx];
        let again = inc.rules.contains(&ri);
        if !again {
            inc.rules.push(ri);
        }
        let rule = &self.cfg.rules[ri];
        let text = format!(
            "rule {} {} this incident: {}",
            rule.name,
            if again { "fired again in" } else { "joined" },
            self.rules[ri].evidence(rule, false)
        );
        self.log(idx, now, EntryKind::Rule, text);
        if let IncidentState::Verifying { .. } = self.incidents[idx].state
            && self.verification_rules(idx).contains(&ri)
        {
            let reason = format!(
                "rule {} fired again during verification: the rollback did not fix the problem",
                self.cfg.rules[ri].name
            );
            return self.verification_failed(idx, reason, now);
        }
        self.notify(idx, Occasion::RuleJoined, now);
    }

    /// A rule cleared: each breach incident of the target not acting whose rules are all
    /// clear is over.
    fn rule_cleared(&mut self, ri: usize, now: Ts) {
        let target = self.cfg.rules[ri].target;
        for id in self.breach_incidents(target) {
            let Some(idx) = self.find(&id) else {
                continue;
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
    }
}
