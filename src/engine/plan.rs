//! Running a rollback plan once the gate (or an operator) allowed it: marking the
//! revision bad and counting the rollback, ordering each step's attempts, retries and the
//! failure policy, then verifying for the plan's window that the rules stay clear. A
//! failed plan or verification opens the target's circuit breaker and escalates.
//!
//! It does no I/O and reads no clock: a step is ordered with [`Effect::RunStep`] and its
//! result comes back as an input. It does not decide whether to act (see `gate.rs`).

use super::{
    Effect, Engine, EntryKind, IncidentState, Outcome, Phase, StepFact, StepOrder, StepResult, Ts,
};
use crate::config::units::human_duration;
use crate::config::{Occasion, OnFailure};

impl Engine {
    /// The revision a rollback of the target goes from (the current one) and the one it
    /// goes to (the previous one); empty when not known.
    pub(super) fn rollback_revisions(&self, t: usize) -> (String, String) {
        let ts = &self.targets[t];
        let from = ts.revision.clone().unwrap_or_default();
        let to = ts
            .previous
            .as_ref()
            .map(|(p, _)| p.clone())
            .unwrap_or_default();
        (from, to)
    }

    pub(super) fn start_plan(&mut self, idx: usize, now: Ts) {
        let t = self.incidents[idx].target;
        let (from, to) = self.rollback_revisions(t);
        let changed_at = self.targets[t].changed_at.unwrap_or(now);
        let text = format!(
            "rolling back from {from} to {to} with plan {}: the breach began {} after the change to {from}, inside the blame window of {}, and {to} was healthy; {from} is marked bad",
            self.cfg.plans[self.cfg.targets[t].plan.expect("checked by decide")].name,
            human_duration(self.incidents[idx].breach_started.since(changed_at)),
            human_duration(self.cfg.targets[t].blame_window),
        );
        self.begin_rollback(idx, text, now);
    }

    /// Marks the revision bad, counts the rollback and runs the plan's first step.
    pub(super) fn begin_rollback(&mut self, idx: usize, text: String, now: Ts) {
        let t = self.incidents[idx].target;
        let plan = self.cfg.targets[t].plan.expect("checked by decide");
        let period = self.cfg.targets[t].rollback_period;
        let (from, to) = self.rollback_revisions(t);
        let id = self.incidents[idx].id.clone();
        let ts = &mut self.targets[t];
        ts.bad.insert(from.clone());
        ts.bad_by.insert(from.clone(), id);
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

    pub(super) fn on_step_done(&mut self, r: StepResult, now: Ts) {
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
        let plan = &self.cfg.plans[self.incidents[idx].plan.expect("a plan is running")];
        let step = &plan.steps[r.step];
        let (retries, on_failure, name, last) = (
            step.retries,
            step.on_failure,
            step.name.clone(),
            r.step + 1 == plan.steps.len(),
        );
        self.record_step(idx, &r, now);
        if r.ok {
            return self.after_step(idx, r.step, last, now);
        }
        self.incidents[idx].failed_attempts += 1;
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
            OnFailure::Abort => self.abort_plan(idx, &name, r.attempt, now),
        }
    }

    /// Writes one attempt's result to the timeline and to the incident's steps.
    fn record_step(&mut self, idx: usize, r: &StepResult, now: Ts) {
        let plan = &self.cfg.plans[self.incidents[idx].plan.expect("a plan is running")];
        let step = &plan.steps[r.step];
        let (name, action, count) = (
            step.name.clone(),
            step.action.type_name().to_owned(),
            plan.steps.len(),
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
                "step {}/{count} {name:?} {verdict} in {}",
                r.step + 1,
                human_duration(std::time::Duration::from_millis(r.duration_ms))
            ),
        );
        self.incidents[idx].steps.push(StepFact {
            name,
            action,
            attempt: r.attempt,
            ok: r.ok,
            duration_ms: r.duration_ms,
            error: (!r.ok).then(|| r.error.clone().unwrap_or_else(|| "failed".to_owned())),
        });
    }

    /// A step failed its last attempt under `on_failure = "abort"`: the breaker opens.
    fn abort_plan(&mut self, idx: usize, name: &str, attempts: u32, now: Ts) {
        let reason = format!(
            "step {name:?} failed after {attempts} attempt{}; the plan was stopped",
            if attempts == 1 { "" } else { "s" }
        );
        let t = self.incidents[idx].target;
        self.targets[t].breaker = Some(format!("rollback {} failed", self.incidents[idx].id));
        self.targets[t].last_rollback_end = Some(now);
        self.escalate(idx, reason, Occasion::RollbackFailed, now);
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
            human_duration(plan.verify.window),
            names.join(", ")
        );
        let inc = &mut self.incidents[idx];
        inc.plan_finished_at = Some(now);
        inc.state = IncidentState::Verifying { until };
        self.log(idx, now, EntryKind::Verification, text);
    }

    /// The rules a verification watches: the plan's `verify.rules`, or else the rules of
    /// the incident.
    pub(super) fn verification_rules(&self, idx: usize) -> Vec<usize> {
        let inc = &self.incidents[idx];
        match inc.plan.map(|p| &self.cfg.plans[p].verify.rules) {
            Some(rules) if !rules.is_empty() => rules.clone(),
            _ => inc.rules.clone(),
        }
    }

    /// Judges the verifications whose window has ended.
    pub(super) fn judge_due_verifications(&mut self, now: Ts) {
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
    }

    fn judge_verification(&mut self, idx: usize, now: Ts) {
        let (failures, gaps) = self.verification_problems(idx, now);
        if !failures.is_empty() {
            let all: Vec<String> = failures.into_iter().chain(gaps).collect();
            return self.verification_failed(
                idx,
                format!("verification failed: {}", all.join("; ")),
                now,
            );
        }
        if !gaps.is_empty() {
            return self.verification_inconclusive(idx, &gaps, now);
        }
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
    }

    /// What keeps a verification from passing: rules still firing (it failed), and
    /// rules without the evidence to call them clear (it cannot tell). A rule is clear
    /// only on a measured value since the plan finished (a reading with `min_requests`
    /// met, a baseline where one is needed), with no reading without a value after it
    /// and not breaching; no data and insufficient readings never count, whatever the
    /// rule's policy.
    fn verification_problems(&self, idx: usize, now: Ts) -> (Vec<String>, Vec<String>) {
        let finished = self.incidents[idx].plan_finished_at.unwrap_or(now);
        let (mut failures, mut gaps) = (Vec::new(), Vec::new());
        for r in self.verification_rules(idx) {
            let rule = &self.cfg.rules[r];
            let state = &self.rules[r];
            let evidence = || state.evidence(rule, state.phase == Phase::Firing);
            match state.last_value_at {
                _ if state.phase == Phase::Firing => {
                    failures.push(format!("{} is still firing ({})", rule.name, evidence()));
                }
                Some(t) if t > finished && state.last_unmeasured_at.is_none_or(|u| u < t) => {
                    if state.phase == Phase::Pending {
                        gaps.push(format!("{} is breaching again ({})", rule.name, evidence()));
                    }
                }
                Some(t) if t > finished => gaps.push(format!(
                    "{} had no measured value at the end ({})",
                    rule.name,
                    evidence()
                )),
                _ => gaps.push(format!(
                    "{} has had no measured reading since the plan finished ({})",
                    rule.name,
                    evidence()
                )),
            }
        }
        (failures, gaps)
    }

    /// The window ended without the evidence to call the rules clear: the rollback ran
    /// but is not verified. The target's breaker opens as for a failed verification (a
    /// rollback nobody can judge is no ground for another automatic one) and people are
    /// told rearguard cannot tell.
    fn verification_inconclusive(&mut self, idx: usize, gaps: &[String], now: Ts) {
        let reason = format!("verification inconclusive: {}", gaps.join("; "));
        let t = self.incidents[idx].target;
        self.targets[t].breaker = Some(format!(
            "rollback {} could not be verified",
            self.incidents[idx].id
        ));
        self.targets[t].last_rollback_end = Some(now);
        self.incidents[idx].outcome = Some(Outcome::RolledBackUnverified);
        self.log(idx, now, EntryKind::Verification, reason.clone());
        self.escalate(
            idx,
            format!("{reason}; rolled back, not verified: rearguard cannot tell whether the rollback fixed the problem, and takes no further automatic action on this target until an operator clears the breaker"),
            Occasion::VerificationInconclusive,
            now,
        );
    }

    pub(super) fn verification_failed(&mut self, idx: usize, reason: String, now: Ts) {
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
}
