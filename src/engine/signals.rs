//! What the engine keeps per signal beyond its rules: the history a baseline is taken
//! from, the baseline taken when the target's revision changes, and blindness (a signal
//! that has failed to read for its `blind_after` opens a blind incident; the incident
//! resolves when every blind signal reads again; the share rule is in `blind.rs`).
//!
//! It does no I/O and reads no clock; it does not judge rules (see `rule.rs`).

use super::{Engine, HISTORY_CAP, Measure, ReadingState, Ts};
use crate::config::units::human_duration;

impl Engine {
    /// Keeps a finite value of a signal that has a baseline, within its window.
    pub(super) fn remember_value(&mut self, s: usize, state: &ReadingState, now: Ts) {
        let sig = &mut self.signals[s];
        if let (Some(keep), ReadingState::Value(Measure::Number(v))) = (sig.keep, state)
            && v.is_finite()
        {
            sig.history.push_back((now, *v));
            let start = now.minus(keep);
            while sig.history.front().is_some_and(|(t, _)| *t < start)
                || sig.history.len() > HISTORY_CAP
            {
                sig.history.pop_front();
            }
        }
    }

    /// Takes the baselines of the target's signals from the values before a change at
    /// `at`: the median of each signal's window before it.
    pub(super) fn rebaseline(&mut self, target: usize, at: Ts) {
        for (s, sig) in self.cfg.signals.iter().enumerate() {
            if sig.target != target {
                continue;
            }
            let st = &mut self.signals[s];
            if let Some(keep) = st.keep {
                let start = at.minus(keep);
                let mut values: Vec<f64> = st
                    .history
                    .iter()
                    .filter(|(t, _)| *t >= start && *t < at)
                    .map(|(_, v)| *v)
                    .collect();
                st.baseline = median(&mut values);
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

fn median(values: &mut [f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    let n = values.len();
    Some(if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    })
}
