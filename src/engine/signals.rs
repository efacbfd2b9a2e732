//! What the engine keeps per signal beyond its rules: the history a baseline is taken
//! from, the baseline taken when the target's revision changes, and blindness (a signal
//! that has failed to read for its `blind_after` opens a blind incident; the incident
//! resolves when every blind signal reads again; the share rule is in `blind.rs`).
//!
//! It does no I/O and reads no clock; it does not judge rules (see `rule.rs`).

use super::baseline::{Baseline, Kept, fresh_share};
use super::{Engine, HISTORY_CAP, Measure, ReadingState, Ts};
use crate::config::units::human_duration;

impl Engine {
    /// Keeps a finite reading of a signal that has a baseline, within its window.
    pub(super) fn remember_value(&mut self, s: usize, state: &ReadingState, now: Ts) {
        let cfg = &self.cfg.signals[s];
        let sig = &mut self.signals[s];
        let Some(keep) = sig.keep else {
            return;
        };
        let kept = match *state {
            ReadingState::Value(Measure::Number(v)) if v.is_finite() => Kept::Number(v),
            ReadingState::Value(Measure::Rate { errors, requests })
                if errors.is_finite() && requests.is_finite() && requests >= 0.0 =>
            {
                let last = sig.history.back().map(|(t, _)| *t);
                let share = fresh_share(last, now, cfg.window(), cfg.max_gap());
                Kept::Rate {
                    errors: errors.clamp(0.0, requests) * share,
                    requests: requests * share,
                }
            }
            _ => return,
        };
        sig.history.push_back((now, kept));
        let start = now.minus(keep);
        while sig.history.front().is_some_and(|(t, _)| *t < start)
            || sig.history.len() > HISTORY_CAP
        {
            sig.history.pop_front();
        }
    }

    /// Gives each baseline rule of the target its baseline from the readings before a
    /// change at `at` (see `baseline.rs`).
    pub(super) fn rebaseline(&mut self, target: usize, at: Ts) {
        for (ri, rule) in self.cfg.rules.iter().enumerate() {
            if rule.target == target && super::uses_baseline(rule) {
                let history = &self.signals[rule.signal].history;
                let b = Baseline::take(history, at, rule.baseline_window, rule.max_gap);
                self.rules[ri].set_baseline(b);
            }
        }
    }

    /// Marks blind every signal that has failed to read for its `blind_after`.
    pub(super) fn detect_blindness(&mut self, now: Ts) {
        for s in 0..self.signals.len() {
            let sig = &self.signals[s];
            let overdue = sig
                .error_since
                .is_some_and(|since| now.since(since) >= self.cfg.signals[s].blind_after);
            if overdue && !sig.blind {
                self.signals[s].blind = true;
                self.went_blind(s, now);
            }
        }
    }

    fn went_blind(&mut self, s: usize, now: Ts) {
        let sig = &self.cfg.signals[s];
        let since = self.signals[s].error_since.unwrap_or(now);
        let why = self.signals[s].last_error.clone().unwrap_or_default();
        let text = format!(
            "watchdog is blind: signal {} has failed to read since {} ({} ago): {why}",
            sig.name,
            since.clock(),
            human_duration(now.since(since))
        );
        self.blind_because(s, since, text, now);
    }
}
