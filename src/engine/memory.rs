//! What the engine must remember across a restart, and how it takes it back.
//!
//! [`Engine::memory`] is the engine's durable state: for every target its revisions, the
//! revisions marked bad, the breaker, pauses and recent rollbacks; every open incident
//! with its timeline; the escalations still due. The daemon writes it to the state store
//! after every step that had effects and before carrying them out, so that after a crash
//! the store never says less than what was done.
//!
//! [`Engine::restore`] takes it back at start. Everything is matched by name, so a
//! configuration edited between the two runs keeps what still fits. A restored incident
//! says so in its timeline, and:
//! - a rule that was firing starts firing again (fresh windows), so the incident ends the
//!   normal way, by the rule clearing;
//! - verification resumes for a whole window from the restart, judged on readings taken
//!   after it (what happened while rearguard was down is unknown);
//! - a step that had been ordered but whose result was never recorded is not run again:
//!   whether it finished is unknown, so the incident is escalated and the breaker opened;
//! - an incident whose target, rules or plan no longer exist is closed as interrupted.
//!
//! Readings and rule windows are not remembered: they are rebuilt from fresh readings.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::incident::{Cause, EntryKind, Incident, IncidentState, Outcome};
use super::reading::Ts;
use super::rule::{Phase, RuleState};
use super::{Effect, Engine, PendingNotice};
use crate::config::Occasion;

/// The version of the memory's layout; memory of another version is not restored.
pub const VERSION: u32 = 1;

/// Why an engine takes back the memory of another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Resume {
    /// A new process: readings since the memory was taken are unknown.
    Restart,
    /// The same process with a new configuration: nothing was missed.
    Reload,
}

/// The engine's durable state. Indexes are replaced by names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Memory {
    pub version: u32,
    /// When it was taken (the engine time of the step).
    pub at: Ts,
    pub paused_all: bool,
    pub targets: Vec<TargetMemory>,
    pub incidents: Vec<IncidentMemory>,
    pub pending: Vec<PendingMemory>,
    /// Silenced rules: name, until, by whom.
    #[serde(default)]
    pub silenced: Vec<(String, Ts, String)>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetMemory {
    pub name: String,
    pub revision: Option<String>,
    pub changed_at: Option<Ts>,
    pub previous: Option<(String, bool)>,
    /// Why the previous revision counts as healthy or not, in the gate's words.
    #[serde(default)]
    pub previous_health: Option<String>,
    pub bad: BTreeSet<String>,
    /// The incident that marked each bad revision bad.
    #[serde(default)]
    pub bad_by: BTreeMap<String, String>,
    pub paused: bool,
    pub breaker: Option<String>,
    pub rollbacks: Vec<Ts>,
    pub last_rollback_end: Option<Ts>,
    pub last_incident_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IncidentMemory {
    pub incident: Incident,
    /// Names of `incident.rules`, `blind_signals`, `plan` and `notified`, in order.
    pub rules: Vec<String>,
    pub blind_signals: Vec<String>,
    pub plan: Option<String>,
    pub notified: Vec<String>,
    /// The incident's rules that were firing, with when their breach began.
    pub firing: Vec<(String, Ts)>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingMemory {
    pub incident: String,
    pub level: String,
    pub occasion: Occasion,
    pub due: Ts,
}

impl Memory {
    /// The layout version this rearguard writes and reads.
    pub const VERSION: u32 = VERSION;

    /// Reads memory as the state store keeps it (JSON), refusing what this version of
    /// rearguard cannot take back whole: text that is not the memory's JSON, or memory
    /// of another layout version. The reason says which.
    pub fn decode(json: &str) -> Result<Memory, String> {
        let memory: Memory =
            serde_json::from_str(json).map_err(|e| format!("not valid memory JSON: {e}"))?;
        if memory.version != VERSION {
            return Err(format!(
                "memory of layout version {}, this rearguard reads version {VERSION}",
                memory.version
            ));
        }
        Ok(memory)
    }
}

impl Engine {
    /// The engine's durable state now.
    pub fn memory(&self, at: Ts) -> Memory {
        let cfg = &self.cfg;
        let targets = self
            .targets
            .iter()
            .zip(&cfg.targets)
            .map(|(t, c)| TargetMemory {
                name: c.name.clone(),
                revision: t.revision.clone(),
                changed_at: t.changed_at,
                previous: t.previous.clone(),
                previous_health: t.previous_health.clone(),
                bad: t.bad.clone(),
                bad_by: t.bad_by.clone(),
                paused: t.paused,
                breaker: t.breaker.clone(),
                rollbacks: t.rollbacks.iter().copied().collect(),
                last_rollback_end: t.last_rollback_end,
                last_incident_id: t.last_incident_id.clone(),
            })
            .collect();
        let incidents = self
            .incidents
            .iter()
            .map(|inc| IncidentMemory {
                rules: inc
                    .rules
                    .iter()
                    .map(|&r| cfg.rules[r].name.clone())
                    .collect(),
                blind_signals: inc
                    .blind_signals
                    .iter()
                    .map(|&s| cfg.signals[s].name.clone())
                    .collect(),
                plan: inc.plan.map(|p| cfg.plans[p].name.clone()),
                notified: inc
                    .notified
                    .iter()
                    .map(|&n| cfg.notifiers[n].name.clone())
                    .collect(),
                firing: inc
                    .rules
                    .iter()
                    .filter(|&&r| self.rules[r].phase == Phase::Firing)
                    .map(|&r| {
                        let since = self.rules[r].breach_since().unwrap_or(inc.breach_started);
                        (cfg.rules[r].name.clone(), since)
                    })
                    .collect(),
                incident: inc.clone(),
            })
            .collect();
        let pending = self
            .pending
            .iter()
            .map(|p| PendingMemory {
                incident: p.incident.clone(),
                level: cfg.escalation[p.level].name.clone(),
                occasion: p.occasion,
                due: p.due,
            })
            .collect();
        let silenced = self
            .silenced
            .iter()
            .enumerate()
            .filter_map(|(r, s)| {
                s.as_ref()
                    .map(|(until, by)| (cfg.rules[r].name.clone(), *until, by.clone()))
            })
            .collect();
        Memory {
            version: VERSION,
            at,
            paused_all: self.paused_all,
            targets,
            incidents,
            pending,
            silenced,
        }
    }

    /// Takes back the memory of an earlier run, on a fresh engine, at `now`. Returns the
    /// effects of what that means: timeline lines for restored incidents, escalations of
    /// steps whose outcome is unknown, reports of incidents that no longer fit.
    pub fn restore(&mut self, memory: Memory, now: Ts) -> Vec<Effect> {
        self.resume(memory, now, Resume::Restart)
    }

    /// Takes back `memory` on a fresh engine, after a restart or a reload.
    pub(super) fn resume(&mut self, memory: Memory, now: Ts, why: Resume) -> Vec<Effect> {
        if memory.version != VERSION {
            return Vec::new();
        }
        let cfg = &self.cfg;
        self.paused_all = memory.paused_all;
        for t in memory.targets {
            let Some(i) = cfg.targets.iter().position(|c| c.name == t.name) else {
                continue;
            };
            let state = &mut self.targets[i];
            state.revision = t.revision;
            state.changed_at = t.changed_at;
            state.previous = t.previous;
            state.previous_health = t.previous_health;
            state.bad = t.bad;
            state.bad_by = t.bad_by;
            state.paused = t.paused;
            state.breaker = t.breaker;
            state.rollbacks = t.rollbacks.into_iter().collect();
            state.last_rollback_end = t.last_rollback_end;
            state.last_incident_id = t.last_incident_id;
        }
        for (name, until, by) in memory.silenced {
            if let Some(r) = cfg.rules.iter().position(|x| x.name == name) {
                self.silenced[r] = Some((until, by));
            }
        }
        let down = now.since(memory.at);
        for m in memory.incidents {
            self.restore_incident(m, down, now, why);
        }
        for p in memory.pending {
            let level = self.cfg.escalation.iter().position(|l| l.name == p.level);
            if let (Some(level), Some(_)) = (level, self.find(&p.incident)) {
                self.pending.push(PendingNotice {
                    incident: p.incident,
                    level,
                    occasion: p.occasion,
                    due: p.due,
                });
            }
        }
        std::mem::take(&mut self.out)
    }

    fn restore_incident(
        &mut self,
        m: IncidentMemory,
        down: std::time::Duration,
        now: Ts,
        why: Resume,
    ) {
        let cfg = &self.cfg;
        let mut inc = m.incident;
        let find_all = |names: &[String], all: &mut dyn Iterator<Item = &str>| {
            let all: Vec<&str> = all.collect();
            names
                .iter()
                .map(|n| all.iter().position(|a| a == n))
                .collect::<Option<Vec<usize>>>()
        };
        let target = cfg.targets.iter().position(|t| t.name == inc.target_name);
        let rules = find_all(&m.rules, &mut cfg.rules.iter().map(|r| r.name.as_str()));
        let signals = find_all(
            &m.blind_signals,
            &mut cfg.signals.iter().map(|s| s.name.as_str()),
        );
        let plan = match &m.plan {
            Some(name) => cfg.plans.iter().position(|p| &p.name == name).map(Some),
            None => Some(None),
        };
        let restart = match why {
            Resume::Restart => format!(
                "rearguard restarted after {} without a record",
                crate::config::units::human_duration(down)
            ),
            Resume::Reload => "configuration reloaded".to_owned(),
        };
        let (Some(target), Some(rules), Some(signals), Some(plan)) = (target, rules, signals, plan)
        else {
            // The configuration no longer has what the incident needs: it ends here,
            // with a report that says why.
            inc.target = cfg
                .targets
                .iter()
                .position(|t| t.name == inc.target_name)
                .unwrap_or(0);
            inc.log(
                now,
                EntryKind::Decision,
                format!("{restart}; the configuration no longer has this incident's target, rules or plan, so it ends as interrupted"),
            );
            inc.state = IncidentState::Resolved;
            inc.closed_at = Some(now);
            inc.outcome = Some(Outcome::Interrupted);
            self.out.push(Effect::IncidentClosed(Box::new(inc)));
            return;
        };
        inc.target = target;
        inc.rules = rules;
        inc.blind_signals = signals;
        inc.plan = plan;
        inc.notified = m
            .notified
            .iter()
            .filter_map(|n| cfg.notifiers.iter().position(|x| &x.name == n))
            .collect();
        for (name, since) in &m.firing {
            if let Some(r) = cfg.rules.iter().position(|x| &x.name == name) {
                self.rules[r] = RuleState::restored_firing(*since);
            }
        }
        if inc.cause == Cause::Blind {
            for &s in &inc.blind_signals {
                self.signals[s].blind = true;
                self.signals[s].error_since = Some(inc.breach_started);
            }
        }
        // Readings while rearguard was down are unknown: verification starts a whole
        // window again from now. A reload loses no reading: verification goes on.
        if let (IncidentState::Verifying { .. }, Resume::Restart) = (inc.state, why) {
            let window = plan.map_or(std::time::Duration::ZERO, |p| cfg.plans[p].verify.window);
            inc.state = IncidentState::Verifying {
                until: now.plus(window),
            };
            inc.plan_finished_at = Some(now);
        }
        let state = inc.state;
        self.incidents.push(inc);
        let idx = self.incidents.len() - 1;
        self.log(
            idx,
            now,
            EntryKind::Decision,
            format!(
                "{restart}; incident {} ({})",
                match why {
                    Resume::Restart => "restored",
                    Resume::Reload => "kept",
                },
                state.name()
            ),
        );
        // A reload waits for the step in flight (see `Engine::reconfigure`), so only a
        // restart finds an incident acting.
        if let (IncidentState::Acting { step, attempt }, Resume::Restart) = (state, why) {
            let plan = &self.cfg.plans[plan.expect("an acting incident has a plan")];
            let reason = format!(
                "rearguard restarted while step {}/{} {:?} (attempt {attempt}) was running; whether it finished is unknown, so it is not run again and people must check",
                step + 1,
                plan.steps.len(),
                plan.steps.get(step).map_or("?", |s| s.name.as_str()),
            );
            let t = self.incidents[idx].target;
            self.targets[t].breaker = Some(format!(
                "rollback {} was interrupted by a restart",
                self.incidents[idx].id
            ));
            self.targets[t].last_rollback_end = Some(now);
            self.escalate(idx, reason, Occasion::RollbackFailed, now);
        }
    }
}
