//! A new configuration for a running engine (the daemon's reload on SIGHUP).
//!
//! [`Engine::reconfigure`] builds the engine of the new configuration and hands it what
//! the old one knew, matched by name: targets' revisions, bad marks, breakers and pauses,
//! silences, open incidents and due escalations (as [`Engine::restore`] does after a
//! restart, but with nothing missed: verification goes on where it was), and the windows
//! of every rule and signal whose definition did not change. A rule that changed starts
//! with fresh windows (firing again if an open incident holds it, so that the incident
//! ends the normal way); an incident whose target, rules or plan are gone ends as
//! interrupted with its report.

use super::memory::Resume;
use super::{Effect, Engine, Input, Reading, Ts};
use crate::config::{Config, Rule, Signal};

impl Engine {
    /// Whether a plan step is running or about to be ordered. The daemon applies a new
    /// configuration only when none is, so that a plan never changes under a rollback.
    pub fn acting(&self) -> bool {
        self.incidents
            .iter()
            .any(|i| matches!(i.state, super::IncidentState::Acting { .. }))
    }

    /// The engine of `cfg`, holding what this one knew that still fits it, at `now`, with
    /// the effects of the change (timeline lines, reports of incidents that end). Call it
    /// only when [`Engine::acting`] is false.
    pub fn reconfigure(self, cfg: Config, now: Ts) -> (Engine, Vec<Effect>) {
        debug_assert!(!self.acting(), "reconfigured while a step is running");
        let memory = self.memory(now);
        let mut next = Engine::new(cfg);
        let effects = next.resume(memory, now, Resume::Reload);
        let (old, new) = (&self.cfg, &next.cfg);
        for (b, rule) in new.rules.iter().enumerate() {
            if let Some(a) = old.rules.iter().position(|r| r.name == rule.name)
                && same_rule(old, a, new, b)
            {
                next.rules[b] = self.rules[a].clone();
                next.unrest[b] = self.unrest[a];
            }
        }
        for (b, signal) in new.signals.iter().enumerate() {
            if let Some(a) = old.signals.iter().position(|s| s.name == signal.name)
                && same_signal(old, a, new, b)
            {
                // How much history to keep follows the new rules.
                let keep = next.signals[b].keep;
                next.signals[b] = self.signals[a].clone();
                next.signals[b].keep = keep;
            }
        }
        (next, effects)
    }
}

/// An input meant for an engine of `old`, for the engine of `new`: readings of a signal
/// that is the same in both and changes of a target both have. `None` for what no longer
/// means the same (a reading of a changed or removed signal) or must not cross a reload
/// (step results: a reload waits until none is due; commands: the API answers them).
pub fn carry_over(old: &Config, new: &Config, input: Input) -> Option<Input> {
    match input {
        Input::Reading(Reading { signal, state }) => {
            let name = &old.signals.get(signal)?.name;
            let b = new.signals.iter().position(|s| &s.name == name)?;
            same_signal(old, signal, new, b).then_some(Input::Reading(Reading { signal: b, state }))
        }
        Input::Change {
            target,
            revision,
            at,
        } => {
            let name = &old.targets.get(target)?.name;
            let b = new.targets.iter().position(|t| &t.name == name)?;
            Some(Input::Change {
                target: b,
                revision,
                at,
            })
        }
        Input::Tick => Some(Input::Tick),
        Input::StepDone(_) | Input::Command(_) => None,
    }
}

/// Whether signal `a` of `old` and signal `b` of `new` measure the same thing the same way.
/// Indexes differ between two configurations, so the target is compared by name and the
/// rest by its debug rendering: configuration types hold secrets, which have no equality
/// (and a changed secret renders the same, which is right: it does not change what is
/// measured).
pub(crate) fn same_signal(old: &Config, a: usize, new: &Config, b: usize) -> bool {
    let (x, y) = (&old.signals[a], &new.signals[b]);
    let plain = |s: &Signal| {
        format!(
            "{:?}",
            Signal {
                target: 0,
                ..s.clone()
            }
        )
    };
    old.targets[x.target].name == new.targets[y.target].name && plain(x) == plain(y)
}

/// Whether rule `a` of `old` and rule `b` of `new` judge the same signal the same way.
pub(crate) fn same_rule(old: &Config, a: usize, new: &Config, b: usize) -> bool {
    let (x, y) = (&old.rules[a], &new.rules[b]);
    let plain = |r: &Rule| {
        format!(
            "{:?}",
            Rule {
                target: 0,
                signal: 0,
                ..r.clone()
            }
        )
    };
    old.signals[x.signal].name == new.signals[y.signal].name
        && same_signal(old, x.signal, new, y.signal)
        && plain(x) == plain(y)
}
