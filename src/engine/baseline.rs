//! Baselines: what a signal looked like in a rule's `baseline_window` before the target's
//! latest change, and whether that is enough to be called a baseline.
//!
//! A signal whose rules compare with a baseline keeps its recent readings ([`Kept`]);
//! at a change each such rule takes its own [`Baseline`] from them. A baseline is worth
//! its name only with at least `baseline_min_samples` readings covering at least
//! `baseline_min_coverage` of the window ([`Baseline::thin`]); below that the rule holds.
//! A reading covers the time from it to the next reading (or the change), at most the
//! signal's `max_gap`: a silence is not covered.
//!
//! Rate readings count the errors and requests of the signal's `window`, which readings
//! taken every interval overlap; [`fresh_share`] is the share of a reading that is new
//! since the reading before, so that no request is counted twice.
//!
//! It does no I/O and reads no clock; it does not judge (see `rule.rs`, `judge.rs`).

use std::collections::VecDeque;
use std::time::Duration;

use crate::config::Rule;
use crate::config::units::format_duration;

use super::reading::Ts;

/// A reading kept for baselines: a number, or the errors and requests new since the
/// reading before (already scaled by [`fresh_share`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Kept {
    Number(f64),
    Rate { errors: f64, requests: f64 },
}

/// The share of a rate reading at `now`, which counts the last `window` of traffic,
/// that is new since `since` (the reading before, or a change): `(now - since) / window`
/// at most 1. A signal without a window counts only what is new, so all of it.
pub fn fresh_share(since: Option<Ts>, now: Ts, window: Duration, max_gap: Duration) -> f64 {
    if window.is_zero() {
        return 1.0;
    }
    let span = since.map_or(max_gap, |t| now.since(t).min(max_gap));
    (span.as_secs_f64() / window.as_secs_f64()).min(1.0)
}

/// What a rule's baseline window held at a change.
#[derive(Debug, Clone, PartialEq)]
pub struct Baseline {
    pub window: Duration,
    /// Readings in the window.
    pub count: usize,
    /// The share of the window the readings cover, 0 to 1.
    pub coverage: f64,
    /// The finite numbers in the window, sorted.
    pub values: Vec<f64>,
    /// Errors and requests in the window (rate signals).
    pub errors: f64,
    pub requests: f64,
}

impl Baseline {
    /// The baseline of the `window` before a change at `at`, from a signal's kept
    /// readings, oldest first.
    pub fn take(
        history: &VecDeque<(Ts, Kept)>,
        at: Ts,
        window: Duration,
        max_gap: Duration,
    ) -> Baseline {
        let start = at.minus(window);
        let inside: Vec<(Ts, Kept)> = history
            .iter()
            .filter(|(t, _)| *t >= start && *t < at)
            .copied()
            .collect();
        let mut covered = Duration::ZERO;
        for (i, (t, _)) in inside.iter().enumerate() {
            let next = inside.get(i + 1).map_or(at, |(n, _)| *n);
            covered += next.since(*t).min(max_gap);
        }
        let mut b = Baseline {
            window,
            count: inside.len(),
            coverage: (covered.as_secs_f64() / window.as_secs_f64().max(1e-9)).min(1.0),
            values: Vec::new(),
            errors: 0.0,
            requests: 0.0,
        };
        for (_, k) in inside {
            match k {
                Kept::Number(v) => b.values.push(v),
                Kept::Rate { errors, requests } => {
                    b.errors += errors;
                    b.requests += requests;
                }
            }
        }
        b.values.sort_by(|x, y| x.total_cmp(y));
        b
    }

    /// Why this is no baseline for `rule`, or `None` when it is one: too few readings,
    /// or too little of the window covered.
    pub fn thin(&self, rule: &Rule) -> Option<String> {
        let enough = self.count >= rule.baseline_min_samples as usize
            && self.coverage + 1e-9 >= rule.baseline_min_coverage;
        (!enough).then(|| {
            format!(
                "{} {:.0}% of {} before the change (a baseline needs {} readings covering {:.0}%)",
                readings(self.count),
                self.coverage * 100.0,
                format_duration(self.window),
                rule.baseline_min_samples,
                rule.baseline_min_coverage * 100.0
            )
        })
    }

    /// The median of the numbers, `None` without any.
    pub fn median(&self) -> Option<f64> {
        median_of_sorted(&self.values)
    }
}

/// "1 reading covers", "3 readings cover".
fn readings(n: usize) -> String {
    if n == 1 {
        "1 reading covers".to_owned()
    } else {
        format!("{n} readings cover")
    }
}

/// The median of sorted values, `None` when there are none.
pub fn median_of_sorted(values: &[f64]) -> Option<f64> {
    let n = values.len();
    if n == 0 {
        return None;
    }
    Some(if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    })
}
