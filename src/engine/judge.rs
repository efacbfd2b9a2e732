//! Judges: `when = "> baseline"`, whether a target is worse since its latest change than
//! in the baseline window before it, with a stated confidence, asked at every reading.
//!
//! A judge answers worse, not worse, or inconclusive ([`Decision`]); the rule turns them
//! into a breach, a clear and a held reading, so inconclusive never acts. With
//! `alpha = 1 - confidence` and `m = min_effect`:
//!
//! - rate signals: the errors and requests since the change (each reading's share that
//!   is new, see `baseline::fresh_share`) against a bar `B = m * U`, where `U` is the
//!   exact upper bound at `1 - alpha/2` of the baseline's error ratio. Worse when the
//!   mixture ratio of `stats::log_mixture_ratio` for "above B" reaches `2/alpha`, not
//!   worse when the one for "below B" does. The baseline's bound and the sequential test
//!   share alpha, so a change whose error ratio is at most `m` times the baseline's is
//!   called worse with probability at most `alpha`, however often it is asked. It
//!   assumes requests fail independently with one probability on each side.
//! - number signals: Mann-Whitney U of the readings since the change divided by `m`
//!   against the baseline's readings, for the median (location) and for the spread (the
//!   distance of each reading from its side's median), each at half the level. Tests are
//!   run at looks, when the readings since the change reach `baseline_min_samples` and
//!   then every half as many again; look `j` spends `alpha / (j (j + 1))`, which sums to
//!   `alpha` over any number of looks. Readings that overlap (a quantile over a `window`
//!   longer than the interval) count as `interval / window` of an independent one.
//!
//! It does no I/O and reads no clock; the rule's phases are `rule.rs`'s.

use std::time::Duration;

use crate::config::{Judge, Occasion, Rule, Unit};

use super::baseline::{Baseline, fresh_share, median_of_sorted};
use super::escalation::Announcement;
use super::reading::{Measure, Ts};
use super::{Engine, HISTORY_CAP, stats};

/// What a judge says of the latest change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Worse,
    NotWorse,
    Inconclusive,
}

/// The numbers behind a decision, kept for the evidence (text is made only when asked).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Facts {
    pub decision: Decision,
    pub rate: bool,
    /// Readings (numbers) or requests (rates) on each side, and errors for rates.
    pub base_n: f64,
    pub base_errors: f64,
    pub post_n: f64,
    pub post_errors: f64,
    /// The error ratio (rates) or median (numbers) on each side.
    pub base_mid: f64,
    pub post_mid: f64,
    /// The spread (median distance from the median) on each side, numbers only.
    pub base_spread: f64,
    pub post_spread: f64,
    /// The confidence reached that the change is worse (or, when not worse, that it is
    /// not), 0 to 1.
    pub reached: f64,
    /// The look of a number judge (0 before the first).
    pub look: u32,
    /// Readings a number judge still needs since the change before its first look.
    pub need: usize,
}

/// The sample since a target's latest change, and the judge's last decision on it.
#[derive(Debug, Clone)]
pub struct JudgeState {
    /// The change the sample follows.
    pub since: Option<Ts>,
    errors: f64,
    requests: f64,
    last_at: Option<Ts>,
    values: Vec<f64>,
    next_look: usize,
    pub facts: Option<Facts>,
    /// Whether people were told this change cannot be judged.
    pub told: bool,
    /// Whether the judge has said worse or not worse since the change.
    pub decided: bool,
}

impl JudgeState {
    pub fn new() -> JudgeState {
        JudgeState {
            since: None,
            errors: 0.0,
            requests: 0.0,
            last_at: None,
            values: Vec::new(),
            next_look: 0,
            facts: None,
            told: false,
            decided: false,
        }
    }

    /// Starts a new sample when the target's latest change is not the one followed.
    pub fn follow(&mut self, change: Option<Ts>) {
        if self.since != change {
            *self = JudgeState {
                since: change,
                ..JudgeState::new()
            };
        }
    }

    /// Adds a measurement taken at `now` (after the followed change) and decides.
    /// `window` and `interval` are the signal's, for overlapping readings.
    pub fn judge(
        &mut self,
        rule: &Rule,
        judge: &Judge,
        base: &Baseline,
        m: &Measure,
        span: (Duration, Duration),
        now: Ts,
    ) -> Decision {
        let (window, interval) = span;
        let facts = match *m {
            Measure::Rate { errors, requests } => {
                let since = self.last_at.max(self.since);
                let share = fresh_share(since, now, window, rule.max_gap);
                self.last_at = Some(now);
                self.errors += errors.clamp(0.0, requests) * share;
                self.requests += requests * share;
                self.rate(judge, base)
            }
            Measure::Number(v) => {
                if self.values.len() < HISTORY_CAP {
                    self.values.push(v);
                }
                let weight = if window > interval {
                    interval.as_secs_f64() / window.as_secs_f64()
                } else {
                    1.0
                };
                self.numbers(rule, judge, base, weight)
            }
            _ => return Decision::Inconclusive,
        };
        self.facts = Some(facts);
        self.decided |= facts.decision != Decision::Inconclusive;
        facts.decision
    }

    fn rate(&self, judge: &Judge, base: &Baseline) -> Facts {
        let alpha = 1.0 - judge.confidence;
        let (_, upper) = stats::binomial_bounds(base.errors, base.requests, 1.0 - alpha / 2.0);
        let bar = judge.min_effect * upper;
        let need = (2.0 / alpha).ln();
        let mut facts = Facts {
            decision: Decision::Inconclusive,
            rate: true,
            base_n: base.requests,
            base_errors: base.errors,
            post_n: self.requests,
            post_errors: self.errors,
            base_mid: ratio(base.errors, base.requests),
            post_mid: ratio(self.errors, self.requests),
            base_spread: f64::NAN,
            post_spread: f64::NAN,
            reached: 0.0,
            look: 0,
            need: 0,
        };
        if !(bar > 0.0 && bar < 1.0) {
            return facts;
        }
        let up = stats::log_mixture_ratio(self.errors, self.requests, bar, true);
        let down = stats::log_mixture_ratio(self.errors, self.requests, bar, false);
        let reach = |l: f64| (1.0 - alpha / 2.0 - (-l).exp()).clamp(0.0, 1.0);
        if up >= need {
            facts.decision = Decision::Worse;
        } else if down >= need {
            facts.decision = Decision::NotWorse;
            facts.reached = reach(down);
            return facts;
        }
        facts.reached = reach(up);
        facts
    }

    fn numbers(&mut self, rule: &Rule, judge: &Judge, base: &Baseline, weight: f64) -> Facts {
        let previous = self.facts;
        let first = (rule.baseline_min_samples as usize).max(2);
        let n = self.values.len();
        let look_due = n >= first.max(self.next_look) && n < HISTORY_CAP;
        if let Some(mut f) = previous.filter(|_| !look_due) {
            // Between looks the decision stands; only the count moves.
            f.post_n = n as f64;
            f.need = first.saturating_sub(n);
            return f;
        }
        let sorted = sorted_copy(&self.values);
        let post_mid = median_of_sorted(&sorted).unwrap_or(f64::NAN);
        let base_mid = base.median().unwrap_or(f64::NAN);
        let (post_dev, base_dev) = (deviations(&sorted), deviations(&base.values));
        let mut facts = Facts {
            decision: previous.map_or(Decision::Inconclusive, |f| f.decision),
            rate: false,
            base_n: base.values.len() as f64,
            base_errors: 0.0,
            post_n: sorted.len() as f64,
            post_errors: 0.0,
            base_mid,
            post_mid,
            base_spread: median_of_sorted(&sorted_copy(&base_dev)).unwrap_or(f64::NAN),
            post_spread: median_of_sorted(&sorted_copy(&post_dev)).unwrap_or(f64::NAN),
            reached: previous.map_or(0.0, |f| f.reached),
            look: previous.map_or(0, |f| f.look),
            need: first.saturating_sub(sorted.len()),
        };
        if !look_due {
            return facts;
        }
        facts.look += 1;
        self.next_look = (sorted.len() as f64 * 1.5).ceil() as usize;
        let j = f64::from(facts.look);
        let level = (1.0 - judge.confidence) / (j * (j + 1.0)) / 2.0;
        let m = judge.min_effect;
        let scaled: Vec<f64> = sorted.iter().map(|v| v / m).collect();
        let scaled_dev: Vec<f64> = post_dev.iter().map(|v| v / m).collect();
        let worse_p = stats::mann_whitney_greater(&scaled, &base.values, weight)
            .min(stats::mann_whitney_greater(&scaled_dev, &base_dev, weight));
        let better_p = stats::mann_whitney_greater(&base.values, &scaled, weight)
            .max(stats::mann_whitney_greater(&base_dev, &scaled_dev, weight));
        let spent = |p: f64| (1.0 - p * (1.0 - judge.confidence) / 2.0 / level).clamp(0.0, 1.0);
        (facts.decision, facts.reached) = if worse_p < level {
            (Decision::Worse, spent(worse_p))
        } else if better_p < level {
            (Decision::NotWorse, spent(better_p))
        } else {
            (Decision::Inconclusive, spent(worse_p))
        };
        facts
    }
}

fn ratio(errors: f64, requests: f64) -> f64 {
    if requests > 0.0 {
        errors / requests
    } else {
        f64::NAN
    }
}

/// The distance of each value from the median of them all.
fn deviations(sorted: &[f64]) -> Vec<f64> {
    let mid = median_of_sorted(sorted).unwrap_or(0.0);
    sorted.iter().map(|v| (v - mid).abs()).collect()
}

fn sorted_copy(values: &[f64]) -> Vec<f64> {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    v
}

impl Facts {
    /// The decision and what it rests on, in words: the test, both samples' sizes and
    /// summaries, the effect and the confidence reached.
    pub fn describe(&self, judge: &Judge) -> String {
        let level = Unit::Percent.format(judge.confidence);
        let effect = format!("{}x", Unit::Plain.format(judge.min_effect));
        let what = match self.decision {
            Decision::Worse => format!(
                "worse than {effect} the baseline at {} confidence (needs {level})",
                pct(self.reached)
            ),
            Decision::NotWorse => format!(
                "not worse than {effect} the baseline at {} confidence (needs {level})",
                pct(self.reached)
            ),
            Decision::Inconclusive if self.need > 0 => format!(
                "inconclusive: {} more readings since the change needed",
                self.need
            ),
            Decision::Inconclusive => format!(
                "inconclusive: {} confidence that it is {effect} worse, {level} needed",
                pct(self.reached)
            ),
        };
        if self.rate {
            format!(
                "{what}; error ratio {} ({:.0}/{:.0} requests since the change) against {} ({:.0}/{:.0} requests before it), {}; mixture SPRT",
                pct(self.post_mid),
                self.post_errors,
                self.post_n,
                pct(self.base_mid),
                self.base_errors,
                self.base_n,
                times(self.post_mid, self.base_mid)
            )
        } else {
            let u = Unit::Seconds;
            format!(
                "{what}; median {} and spread {} of {:.0} readings since the change against median {} and spread {} of {:.0} before it: {} the median, {} the spread; Mann-Whitney U, look {}",
                u.format(self.post_mid),
                u.format(self.post_spread),
                self.post_n,
                u.format(self.base_mid),
                u.format(self.base_spread),
                self.base_n,
                times(self.post_mid, self.base_mid),
                times(self.post_spread, self.base_spread),
                self.look
            )
        }
    }
}

fn pct(v: f64) -> String {
    if v.is_nan() {
        "n/a".to_owned()
    } else {
        Unit::Percent.format(v)
    }
}

/// `after / before` as a multiple, in words.
fn times(after: f64, before: f64) -> String {
    if before > 0.0 && after.is_finite() {
        format!("{}x", Unit::Plain.format(after / before))
    } else if after > 0.0 {
        "none before".to_owned()
    } else {
        "no change".to_owned()
    }
}

impl Engine {
    /// A judge has been inconclusive for its `inconclusive_after` since the target's
    /// latest change: people are told it cannot judge the change (`cannot_judge`), once
    /// per change, under the target's open incident or announced on its own.
    pub(super) fn cannot_judge(&mut self, rule: usize, text: String, now: Ts) {
        let target = self.cfg.rules[rule].target;
        let revision = self.targets[target].revision.clone().unwrap_or_default();
        let name = self.cfg.targets[target].name.clone();
        let text = format!("cannot judge {revision} of {name}: {text}");
        let id = format!("{name}-{revision}-cannot-judge");
        let next =
            "nothing is done on this judge's account; people decide whether the change is good"
                .to_owned();
        self.announce(
            target,
            Announcement {
                occasion: Occasion::CannotJudge,
                incident: id,
                to_revision: Some(revision),
                text,
                next,
            },
            now,
        );
    }
}
