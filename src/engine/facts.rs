//! What people are told about an incident at an occasion: the one-line summary and the
//! structured facts every notifier and report formats (rules with their evidence, plan,
//! revisions, steps, reason, and what happens next).
//!
//! It does no I/O and reads no clock, and it changes no state: it only reads the engine.

use super::{Engine, EntryKind, Facts, Incident, IncidentState, Phase, RuleFact, Ts};
use crate::config::units::human_duration;
use crate::config::{Occasion, Plan};

impl Engine {
    /// One line: target, what happened, rules, the latest decision, the incident id.
    pub(super) fn summary(&self, idx: usize, occasion: Occasion, facts: &Facts) -> String {
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

    pub(super) fn facts(&self, idx: usize, occasion: Occasion, now: Ts) -> Facts {
        let inc = &self.incidents[idx];
        let plan = inc.plan.map(|p| &self.cfg.plans[p]);
        Facts {
            target: inc.target_name.clone(),
            state: inc.state.name().to_owned(),
            opened_at_ms: inc.opened_at.0,
            at_ms: now.0,
            rules: self.rule_facts(inc),
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
            next: what_next(inc, plan, occasion),
        }
    }

    fn rule_facts(&self, inc: &Incident) -> Vec<RuleFact> {
        inc.rules
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
            .collect()
    }
}

/// What happens next, as a notice at this occasion tells it.
fn what_next(inc: &Incident, plan: Option<&Plan>, occasion: Occasion) -> String {
    match occasion {
        Occasion::Opened => "rearguard is deciding whether to roll back".to_owned(),
        Occasion::RollbackStarted | Occasion::RollbackSlow | Occasion::AttemptsFailed => {
            rollback_progress(inc, plan)
        }
        Occasion::RollbackSucceeded => "nothing: the incident is resolved".to_owned(),
        Occasion::RollbackFailed | Occasion::VerificationFailed => {
            "people must act: automatic action on this target is stopped until an operator clears the breaker".to_owned()
        }
        Occasion::VerificationInconclusive => {
            "people must check the target: rearguard cannot tell whether the rollback fixed it, and automatic action on this target is stopped until an operator clears the breaker".to_owned()
        }
        Occasion::NotRolledBack => {
            "people must decide: rearguard will not act on this incident by itself".to_owned()
        }
        Occasion::Blind => {
            "people must check the monitoring: rearguard cannot judge this target until its readings return".to_owned()
        }
        Occasion::Acknowledged => "reminders stop; people are in charge".to_owned(),
        Occasion::Resolved => "nothing: the incident is closed".to_owned(),
        Occasion::RuleJoined | Occasion::BadRevisionDeployed | Occasion::CannotJudge => {
            match inc.state {
            IncidentState::Acting { .. } | IncidentState::Verifying { .. } => {
                rollback_progress(inc, plan)
            }
            _ => "people decide: rearguard does not act on this incident by itself".to_owned(),
            }
        }
    }
}

/// Where a running rollback is: the step and attempt, verifying, or the plan ahead.
fn rollback_progress(inc: &Incident, plan: Option<&Plan>) -> String {
    match (plan, inc.state) {
        (Some(p), IncidentState::Acting { step, attempt }) => format!(
            "running step {}/{} {:?} (attempt {attempt}), then verifying for {}",
            step + 1,
            p.steps.len(),
            p.steps[step].name,
            human_duration(p.verify.window)
        ),
        (Some(p), IncidentState::Verifying { .. }) => format!(
            "verifying for {} that the rules clear",
            human_duration(p.verify.window)
        ),
        (Some(p), _) => format!(
            "running plan {} ({} step{}), then verifying for {}",
            p.name,
            p.steps.len(),
            if p.steps.len() == 1 { "" } else { "s" },
            human_duration(p.verify.window)
        ),
        _ => "people decide what to do next".to_owned(),
    }
}
