//! Incidents, with their state and timeline: one per target and cause at a time, except
//! that a breach after a change gets an incident of its own (which `follows` the older)
//! when the open one was opened before the change and never acted on.

use super::reading::Ts;

/// Why an incident exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Cause {
    /// One or more of the target's rules fired.
    Breach,
    /// A source of the target has failed for longer than its `blind_after`.
    Blind,
}

/// Where an incident is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum IncidentState {
    /// Detected; the decision is being made.
    Open,
    /// Running step `step` of the plan, attempt `attempt` (from 1).
    Acting {
        step: usize,
        attempt: u32,
    },
    /// The plan finished; its rules are watched until `until`.
    Verifying {
        until: Ts,
    },
    /// People are in charge; rearguard does not act and waits for recovery.
    Escalated,
    Resolved,
}

impl IncidentState {
    pub fn name(&self) -> &'static str {
        match self {
            IncidentState::Open => "open",
            IncidentState::Acting { .. } => "acting",
            IncidentState::Verifying { .. } => "verifying",
            IncidentState::Escalated => "escalated",
            IncidentState::Resolved => "resolved",
        }
    }
}

/// How an incident ended, or why it was escalated.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Outcome {
    /// The plan ran and verification passed.
    RolledBack,
    /// The plan ran but the verification window ended without measured readings showing
    /// the rules clear: rolled back, not verified. Set when the incident is escalated
    /// and kept when it is later closed.
    RolledBackUnverified,
    /// The target recovered without a rollback.
    Recovered,
    /// An operator resolved it.
    ResolvedByOperator(String),
    /// After a restart the configuration no longer had the incident's target, rules or
    /// plan.
    Interrupted,
}

impl Outcome {
    /// A short, stable name, for the state store, metrics, replay and the control API.
    pub fn name(&self) -> &'static str {
        match self {
            Outcome::RolledBack => "rolled_back",
            Outcome::RolledBackUnverified => "rolled_back_unverified",
            Outcome::Recovered => "recovered",
            Outcome::ResolvedByOperator(_) => "resolved_by_operator",
            Outcome::Interrupted => "interrupted",
        }
    }
}

/// One line of an incident's timeline.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Entry {
    pub at: Ts,
    pub kind: EntryKind,
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum EntryKind {
    /// A rule changed phase; the text holds the readings and threshold behind it.
    Rule,
    /// The engine decided to act or not, and why.
    Decision,
    /// A revision change of the target was observed.
    Change,
    StepStarted,
    /// A step finished; `output` is what it printed or answered.
    StepFinished {
        ok: bool,
        duration_ms: u64,
        output: String,
    },
    Verification,
    Notification,
    Operator,
}

/// An incident with everything needed to write its report.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Incident {
    pub id: String,
    pub target: usize,
    pub target_name: String,
    pub cause: Cause,
    pub state: IncidentState,
    pub opened_at: Ts,
    pub closed_at: Option<Ts>,
    /// When the breach that opened it began (the first breaching evaluation).
    pub breach_started: Ts,
    /// Rules that fired within it, in order.
    pub rules: Vec<usize>,
    /// For blind incidents: the signals that cannot be read.
    pub blind_signals: Vec<usize>,
    pub plan: Option<usize>,
    /// The revision rolled back from and to, when a rollback runs.
    pub from_revision: Option<String>,
    pub to_revision: Option<String>,
    pub plan_finished_at: Option<Ts>,
    pub acknowledged: bool,
    /// Escalated by the decision gate (not after a rollback): a later change that
    /// predates the breach lets the gate decide again.
    pub refused_by_gate: bool,
    /// Why it was escalated, if it was.
    pub escalation_reason: Option<String>,
    pub outcome: Option<Outcome>,
    pub timeline: Vec<Entry>,
    /// Every finished step attempt, in order.
    pub steps: Vec<StepFact>,
    /// Failed step attempts so far (for `attempts_failed`).
    pub failed_attempts: u32,
    /// Notifiers told of this incident; acknowledgement and resolution reach all of them.
    pub notified: std::collections::BTreeSet<usize>,
    /// The incident this one follows: opened before the target's latest change and never
    /// acted on, it stays with the old revision while this one judges the new.
    #[serde(default)]
    pub follows: Option<String>,
}

impl Incident {
    pub fn is_open(&self) -> bool {
        self.state != IncidentState::Resolved
    }

    pub fn log(&mut self, at: Ts, kind: EntryKind, text: impl Into<String>) {
        self.timeline.push(Entry {
            at,
            kind,
            text: text.into(),
        });
    }
}

/// The facts a notification carries, the same for every channel.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Facts {
    pub target: String,
    /// The incident's state when the notification was made ("acting").
    pub state: String,
    /// Milliseconds since the Unix epoch.
    pub opened_at_ms: u64,
    pub at_ms: u64,
    pub rules: Vec<RuleFact>,
    /// For blind incidents: the signals that cannot be read.
    pub blind_signals: Vec<String>,
    pub plan: Option<String>,
    pub from_revision: Option<String>,
    pub to_revision: Option<String>,
    pub steps: Vec<StepFact>,
    /// Why rearguard escalated or did not act, when it did.
    pub reason: Option<String>,
    /// What happens next, in one sentence.
    pub next: String,
}

/// A rule of the incident: its condition and what was measured.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RuleFact {
    pub name: String,
    pub signal: String,
    /// `> 5% for 2m`.
    pub condition: String,
    /// The phase it is in now ("firing").
    pub phase: String,
    /// The measured value against threshold and window.
    pub evidence: String,
}

/// One finished attempt of one plan step.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StepFact {
    pub name: String,
    pub action: String,
    pub attempt: u32,
    pub ok: bool,
    pub duration_ms: u64,
    /// Why it failed, when it did.
    pub error: Option<String>,
}
