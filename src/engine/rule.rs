//! The state machine of one rule: from readings to `Ok`, `Pending` and `Firing`.
//!
//! Every mode is proven by observation, never by elapsed time (Prometheus semantics:
//! every evaluation in the period breached). A rule counts only within one unbroken run
//! of observations: readings the rule judges (values, and readings its `no_data` or
//! `insufficient` policy turns into a breach or a clear), each at most the rule's
//! `max_gap` after the reading before. A held reading (a source error, or a policy of
//! `hold`) ends the run, and so does a silence longer than `max_gap`; the next judged
//! reading starts a new one. So:
//! - sustained (`for`): the rule fires at the first breaching reading at least `for`
//!   after the first breaching reading of the current run, every reading between them
//!   breaching; one good reading resets it;
//! - consecutive N: N breaching readings in a row within one run;
//! - M of N: at least M of the last N readings of the current run breach;
//! - within: the number of distinct event keys seen in the window meets the condition
//!   (events are counted in time; runs do not apply).
//!
//! A `x baseline` rule compares with the median of its baseline (see `baseline.rs`);
//! without a baseline worth its name (none taken, or too few readings covering too
//! little of the window) every reading is held, whatever the rule's policies.
//!
//! A held reading keeps the phase: a pending rule stays pending (its proof restarts),
//! a firing rule stays firing (missing data never clears it). Once firing, a rule
//! clears when its clear condition has held on every reading of one run for
//! `clear_for`, and every counter is reset. When the breach began (what blame and the
//! transition report) is the first breaching reading since the last good one, held
//! readings and gaps notwithstanding: silence does not end a breach either.
//!
//! Each semantic has a table-driven test in `engine::tests` or `rule_tests`.

use std::collections::{HashSet, VecDeque};

use crate::config::units::format_duration;
use std::time::Duration;

use crate::config::{Condition, Judge, Policy, Rule, RuleMode, Threshold, Unit};

use super::baseline::Baseline;
use super::judge::{self, Decision, JudgeState};
use super::reading::{Measure, ReadingState, Ts};
use super::stats;

/// The phase of a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Ok,
    Pending,
    Firing,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Ok => "ok",
            Phase::Pending => "pending",
            Phase::Firing => "firing",
        }
    }
}

/// A change of phase, with the evidence behind it.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub from: Phase,
    pub to: Phase,
    /// When the current streak of breaches began (set when firing).
    pub breach_since: Option<Ts>,
    /// The reading and threshold behind the change, in words.
    pub evidence: String,
}

/// What the last judged reading showed. Kept instead of text so that the reading path
/// does not allocate; text is made only when the rule changes phase.
#[derive(Debug, Clone, PartialEq)]
enum Seen {
    Nothing,
    NoData,
    /// No baseline was taken: no change observed, or none since rearguard started.
    NoBaseline,
    /// A baseline too thin to be one (see `Baseline::thin`).
    ThinBaseline,
    /// What a judge decided, and on what.
    Judged(judge::Facts),
    Insufficient(f64, f64),
    Number(f64, Option<f64>),
    /// Errors, requests, and whether a confidence bound was applied.
    Rate(f64, f64, bool),
    Check(bool, Option<String>),
    Events(f64, std::time::Duration),
}

/// What one reading means for a rule, before the rule's mode is applied.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Verdict {
    /// The breach condition holds (when not firing) or the clear condition does not
    /// hold (when firing).
    Bad,
    /// The opposite.
    Good,
    Hold,
}

/// The mutable state of one rule.
#[derive(Debug, Clone)]
pub struct RuleState {
    pub phase: Phase,
    /// The first breaching evaluation since the last good one: when the breach began.
    breach_since: Option<Ts>,
    /// The first reading of the current unbroken run of observations; `None` after a
    /// held reading, until the next judged one.
    run_since: Option<Ts>,
    /// The last reading of any state, to find gaps.
    last_reading_at: Option<Ts>,
    /// Consecutive breaching evaluations.
    streak: u32,
    /// The last N verdicts for M of N, with their times (true = breach).
    recent: VecDeque<(Ts, bool)>,
    recent_breaches: u32,
    /// Events seen, oldest first, for `within` rules.
    events: VecDeque<(Ts, String)>,
    /// Since when the clear condition has held, while firing.
    clear_since: Option<Ts>,
    /// The last evaluation that had a measured value.
    pub last_value_at: Option<Ts>,
    /// The last reading without a measured value (no data, insufficient, no baseline, a
    /// source error): verification asks that none came after the last measured one.
    pub last_unmeasured_at: Option<Ts>,
    /// What the last judged reading showed, for evidence.
    seen: Seen,
    /// The baseline taken at the target's latest change, for rules that compare with one.
    baseline: Option<Baseline>,
    /// A judge's sample since the latest change.
    judge: Option<Box<JudgeState>>,
}

/// What a rule is told of its target's latest change and its signal's sampling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Change {
    /// When the latest change happened; `None` before any change was observed.
    pub at: Option<Ts>,
    /// The signal's query window (rate and quantile readings overlap across it).
    pub window: Duration,
    pub interval: Duration,
}

impl RuleState {
    pub fn new() -> RuleState {
        RuleState {
            phase: Phase::Ok,
            breach_since: None,
            run_since: None,
            last_reading_at: None,
            streak: 0,
            recent: VecDeque::new(),
            recent_breaches: 0,
            events: VecDeque::new(),
            clear_since: None,
            last_value_at: None,
            last_unmeasured_at: None,
            seen: Seen::Nothing,
            baseline: None,
            judge: None,
        }
    }

    /// The baseline taken at the target's latest change.
    pub fn set_baseline(&mut self, baseline: Baseline) {
        self.baseline = Some(baseline);
    }

    /// A rule that was firing when rearguard stopped, with fresh windows: it clears the
    /// normal way once its clear condition holds for `clear_for`.
    pub fn restored_firing(breach_since: Ts) -> RuleState {
        RuleState {
            phase: Phase::Firing,
            breach_since: Some(breach_since),
            ..RuleState::new()
        }
    }

    /// When the current streak of breaches began, while pending or firing.
    pub fn breach_since(&self) -> Option<Ts> {
        self.breach_since
    }

    /// Applies one reading. `change` is the target's latest change, for judges.
    pub fn on_reading(
        &mut self,
        rule: &Rule,
        reading: &ReadingState,
        change: &Change,
        now: Ts,
    ) -> Option<Transition> {
        // A `within` rule counts events; a reading without one neither adds nor clears.
        if matches!(rule.mode, RuleMode::Within { .. })
            && !matches!(reading, ReadingState::Value(Measure::Event { .. }))
        {
            return None;
        }
        let gap = self
            .last_reading_at
            .is_some_and(|t| now.since(t) > rule.max_gap);
        self.last_reading_at = Some(now);
        let firing = self.phase == Phase::Firing;
        let verdict = match reading {
            ReadingState::SourceError(_) => Verdict::Hold,
            ReadingState::NoData => {
                self.seen = Seen::NoData;
                policy_verdict(rule.no_data)
            }
            ReadingState::Insufficient { have, need } => {
                self.seen = Seen::Insufficient(*have as f64, *need as f64);
                policy_verdict(rule.insufficient)
            }
            ReadingState::Value(Measure::Event { key }) => {
                if let RuleMode::Within { .. } = rule.mode {
                    self.events.push_back((now, key.clone()));
                }
                return self.evaluate_events(rule, now);
            }
            ReadingState::Value(m) => match &rule.judge {
                Some(j) => self.judged(rule, j, m, change, now),
                None => self.judge(rule, m, firing, now),
            },
        };
        // Only a measured value is evidence (`judge` stamps `last_value_at`): a reading a
        // policy turns into a verdict, or a held one, never verifies a rollback.
        if self.last_value_at != Some(now) {
            self.last_unmeasured_at = Some(now);
        }
        if verdict == Verdict::Hold {
            self.run_since = None;
        } else if gap || self.run_since.is_none() {
            self.start_run(now);
        }
        self.apply(rule, verdict, now)
    }

    /// Starts a run of observations at `now`: what was counted before a held reading or
    /// a gap proves nothing about the time after it.
    fn start_run(&mut self, now: Ts) {
        self.run_since = Some(now);
        self.streak = 0;
        self.recent.clear();
        self.recent_breaches = 0;
    }

    /// Where the proof of a period that began at `since` starts: not before the current
    /// run of observations. (Outside runs, for `within` rules, at `since`.)
    fn proven_since(&self, since: Ts) -> Ts {
        self.run_since.map_or(since, |run| run.max(since))
    }

    /// Re-evaluates time-based state without a reading: `within` windows expire.
    pub fn on_tick(&mut self, rule: &Rule, now: Ts) -> Option<Transition> {
        match rule.mode {
            RuleMode::Within { .. } if !self.events.is_empty() || self.phase != Phase::Ok => {
                self.evaluate_events(rule, now)
            }
            _ => None,
        }
    }

    fn evaluate_events(&mut self, rule: &Rule, now: Ts) -> Option<Transition> {
        let RuleMode::Within { window } = rule.mode else {
            return None;
        };
        let start = now.minus(window);
        while self.events.front().is_some_and(|(t, _)| *t < start) {
            self.events.pop_front();
        }
        let count = if self.events.len() <= 1 {
            self.events.len()
        } else {
            self.events
                .iter()
                .map(|(_, k)| k.as_str())
                .collect::<HashSet<_>>()
                .len()
        } as f64;
        self.seen = Seen::Events(count, window);
        self.last_value_at = Some(now);
        let firing = self.phase == Phase::Firing;
        let cond = if firing { rule.clear } else { rule.when };
        let bad = compare(cond, count, None) != firing;
        match (self.phase, bad) {
            (Phase::Firing, true) => {
                self.clear_since = None;
                None
            }
            (Phase::Firing, false) => self.clear_or_wait(rule, now),
            (_, true) => {
                self.breach_since = Some(self.events.front().map_or(now, |(t, _)| *t));
                Some(self.go(rule, Phase::Firing))
            }
            (Phase::Pending, false) => Some(self.go(rule, Phase::Ok)),
            (Phase::Ok, false) => None,
        }
    }

    /// Judges a measurement against the breach condition, or the clear condition when
    /// firing. Records what was seen for the evidence of a later transition.
    fn judge(&mut self, rule: &Rule, m: &Measure, firing: bool, now: Ts) -> Verdict {
        let cond = if firing { rule.clear } else { rule.when };
        let holds = match *m {
            Measure::Number(v) => {
                if v.is_nan() {
                    self.seen = Seen::NoData;
                    return policy_verdict(rule.no_data);
                }
                let needs_baseline = matches!(
                    cond,
                    Condition::Compare {
                        threshold: Threshold::BaselineRatio(_),
                        ..
                    }
                );
                let baseline = if needs_baseline {
                    // Without a baseline worth its name there is nothing to compare with:
                    // the rule holds, whatever its policies (never a breach, never a clear).
                    match self.worthy_baseline(rule) {
                        Ok(b) => b,
                        Err(seen) => {
                            self.seen = seen;
                            return Verdict::Hold;
                        }
                    }
                } else {
                    None
                };
                self.seen = Seen::Number(v, baseline);
                compare(cond, v, baseline)
            }
            Measure::Rate { errors, requests } => {
                if requests.is_nan() || requests <= 0.0 || errors.is_nan() {
                    self.seen = Seen::NoData;
                    return policy_verdict(rule.no_data);
                }
                if requests < rule.min_requests as f64 {
                    self.seen = Seen::Insufficient(requests, rule.min_requests as f64);
                    return policy_verdict(rule.insufficient);
                }
                // Confidence applies to the breach: the bound on the bad side of the
                // threshold must be past it. Clearing uses the measured ratio.
                let confident = rule.confidence.filter(|_| !firing);
                self.seen = Seen::Rate(errors, requests, confident.is_some());
                // The bound lies between the measured ratio and the good side, so a
                // ratio that is not past the threshold settles it without statistics.
                compare(cond, errors / requests, None)
                    && match (confident, cond) {
                        (
                            Some(c),
                            Condition::Compare {
                                cmp,
                                threshold: Threshold::Value(t, _),
                            },
                        ) => stats::bound_is_past(errors, requests, t, c, cmp.is_upper()),
                        _ => true,
                    }
            }
            Measure::Check { ok, ref detail } => {
                self.seen = Seen::Check(ok, if ok { None } else { detail.clone() });
                compare(cond, if ok { 0.0 } else { 1.0 }, None)
            }
            Measure::Event { .. } => unreachable!("events are handled by evaluate_events"),
        };
        self.last_value_at = Some(now);
        if holds != firing {
            Verdict::Bad
        } else {
            Verdict::Good
        }
    }

    /// A judge's verdict on a measurement: worse is a breach (or no clear), not worse a
    /// good reading, inconclusive a held one. A reading with no value follows the
    /// rule's `no_data` policy; without a baseline worth its name the judge holds.
    fn judged(&mut self, rule: &Rule, j: &Judge, m: &Measure, change: &Change, now: Ts) -> Verdict {
        let missing = match *m {
            Measure::Number(v) => !v.is_finite(),
            Measure::Rate { errors, requests } => {
                !(errors.is_finite() && requests.is_finite() && requests > 0.0)
            }
            _ => false,
        };
        if missing {
            self.seen = Seen::NoData;
            return policy_verdict(rule.no_data);
        }
        let state = self
            .judge
            .get_or_insert_with(|| Box::new(JudgeState::new()));
        state.follow(change.at);
        let base = match (&self.baseline, change.at) {
            (Some(b), Some(at)) if now >= at => b,
            _ => {
                self.seen = Seen::NoBaseline;
                return Verdict::Hold;
            }
        };
        if base.thin(rule).is_some() {
            self.seen = Seen::ThinBaseline;
            return Verdict::Hold;
        }
        let span = (change.window, change.interval);
        let decision = state.judge(rule, j, base, m, span, now);
        if let Some(f) = state.facts {
            self.seen = Seen::Judged(f);
        }
        match decision {
            Decision::Inconclusive => Verdict::Hold,
            Decision::Worse => {
                self.last_value_at = Some(now);
                Verdict::Bad
            }
            Decision::NotWorse => {
                self.last_value_at = Some(now);
                Verdict::Good
            }
        }
    }

    /// The notice a judge owes when it has been inconclusive (never worse nor not worse)
    /// for its `inconclusive_after` since the latest change: once per change.
    pub fn overdue_judgement(&mut self, rule: &Rule, change: &Change, now: Ts) -> Option<String> {
        let j = rule.judge.as_ref()?;
        let at = change.at?;
        if now.since(at) < j.inconclusive_after {
            return None;
        }
        let state = self
            .judge
            .get_or_insert_with(|| Box::new(JudgeState::new()));
        state.follow(Some(at));
        if state.told || state.decided {
            return None;
        }
        state.told = true;
        let why = match &self.seen {
            Seen::Judged(f) => f.describe(j),
            _ => self.seen_text(rule, rule.when),
        };
        Some(format!(
            "rule {} is still inconclusive {} after the change: {why}",
            rule.name,
            format_duration(now.since(at))
        ))
    }

    /// The median of the rule's baseline, or why there is none: none taken, or too thin
    /// (fewer than `baseline_min_samples` readings, or less than `baseline_min_coverage`
    /// of the window covered).
    fn worthy_baseline(&self, rule: &Rule) -> Result<Option<f64>, Seen> {
        let b = self.baseline.as_ref().ok_or(Seen::NoBaseline)?;
        if b.thin(rule).is_some() {
            return Err(Seen::ThinBaseline);
        }
        b.median().map(Some).ok_or(Seen::NoBaseline)
    }

    fn apply(&mut self, rule: &Rule, verdict: Verdict, now: Ts) -> Option<Transition> {
        if self.phase == Phase::Firing {
            return match verdict {
                Verdict::Hold => None,
                Verdict::Bad => {
                    self.clear_since = None;
                    None
                }
                Verdict::Good => self.clear_or_wait(rule, now),
            };
        }
        match verdict {
            Verdict::Hold => None,
            Verdict::Good => {
                self.record_recent(rule, now, false);
                self.streak = 0;
                if matches!(rule.mode, RuleMode::MOfN { .. }) && self.recent_breaches > 0 {
                    self.breach_since = self.m_of_n_breach_since();
                    return None;
                }
                self.breach_since = None;
                (self.phase == Phase::Pending).then(|| self.go(rule, Phase::Ok))
            }
            Verdict::Bad => {
                self.record_recent(rule, now, true);
                self.streak = self.streak.saturating_add(1);
                if self.breach_since.is_none() {
                    self.breach_since = Some(now);
                }
                let fire = match rule.mode {
                    RuleMode::Sustained { for_ } => {
                        now.since(self.proven_since(self.breach_since.unwrap_or(now))) >= for_
                    }
                    RuleMode::Consecutive { n } => self.streak >= n,
                    RuleMode::MOfN { m, .. } => {
                        self.breach_since = self.m_of_n_breach_since();
                        self.recent_breaches >= m
                    }
                    RuleMode::Within { .. } => false,
                };
                if fire {
                    Some(self.go(rule, Phase::Firing))
                } else if self.phase == Phase::Ok {
                    Some(self.go(rule, Phase::Pending))
                } else {
                    None
                }
            }
        }
    }

    /// When the breach of an M of N rule began: the first breach in its window, or, when
    /// the window was restarted by a held reading or a gap while the breach went on,
    /// the breach's earlier start.
    fn m_of_n_breach_since(&self) -> Option<Ts> {
        let first = self.recent.iter().find(|(_, b)| *b).map(|(t, _)| *t)?;
        match (self.breach_since, self.run_since) {
            (Some(began), Some(run)) if began < run => Some(began),
            _ => Some(first),
        }
    }

    fn clear_or_wait(&mut self, rule: &Rule, now: Ts) -> Option<Transition> {
        let clear_since = *self.clear_since.get_or_insert(now);
        let since = self.proven_since(clear_since);
        if now.since(since) >= rule.clear_for {
            let t = self.go(rule, Phase::Ok);
            self.reset();
            Some(t)
        } else {
            None
        }
    }

    fn record_recent(&mut self, rule: &Rule, now: Ts, breach: bool) {
        let RuleMode::MOfN { n, .. } = rule.mode else {
            return;
        };
        self.recent.push_back((now, breach));
        self.recent_breaches += breach as u32;
        while self.recent.len() > n as usize {
            if let Some((_, b)) = self.recent.pop_front() {
                self.recent_breaches -= b as u32;
            }
        }
    }

    /// Forgets every counter: after a clear, a rule starts from nothing.
    fn reset(&mut self) {
        self.breach_since = None;
        self.run_since = None;
        self.streak = 0;
        self.recent.clear();
        self.recent_breaches = 0;
        self.clear_since = None;
    }

    fn go(&mut self, rule: &Rule, to: Phase) -> Transition {
        let from = self.phase;
        self.phase = to;
        if to == Phase::Firing {
            self.clear_since = None;
        }
        Transition {
            from,
            to,
            breach_since: self.breach_since,
            evidence: self.evidence(rule, from == Phase::Firing),
        }
    }

    /// The value of the latest reading judged, in the signal's unit (a rate's ratio, 1
    /// for a failed check and 0 for a passed one, the count of distinct events), with
    /// the baseline it was judged against; `None` before the first reading and when the
    /// latest had no value (no data, too few requests, no baseline). A source error is
    /// not judged and leaves it as it was. A judge's value is the error ratio or median
    /// since the change, against the baseline's.
    pub fn latest_judged(&self) -> Option<(f64, Option<f64>)> {
        match &self.seen {
            Seen::Number(v, baseline) => Some((*v, *baseline)),
            Seen::Judged(f) => Some((f.post_mid, Some(f.base_mid))),
            Seen::Rate(errors, requests, _) => Some((errors / requests, None)),
            Seen::Check(ok, _) => Some((if *ok { 0.0 } else { 1.0 }, None)),
            Seen::Events(count, _) => Some((*count, None)),
            Seen::Nothing
            | Seen::NoData
            | Seen::NoBaseline
            | Seen::ThinBaseline
            | Seen::Insufficient(..) => None,
        }
    }

    /// The last reading against the condition that was judged, in words.
    pub fn evidence(&self, rule: &Rule, judged_clear: bool) -> String {
        let cond = if judged_clear { rule.clear } else { rule.when };
        let seen = self.seen_text(rule, cond);
        if let Some(j) = &rule.judge {
            let effect = Unit::Plain.format(j.min_effect);
            let level = Unit::Percent.format(j.confidence);
            return if judged_clear {
                format!(
                    "{seen}; clears when the judge finds it not worse than {effect}x the baseline at {level}"
                )
            } else {
                format!(
                    "{seen}; fires when the judge finds it worse than {effect}x the baseline at {level}"
                )
            };
        }
        if judged_clear {
            let held = if rule.clear_for.is_zero() {
                String::new()
            } else {
                format!(" for {}", format_duration(rule.clear_for))
            };
            format!("{seen}; clears when {}{held}", cond.describe())
        } else {
            format!(
                "{seen}; fires when {} {}",
                cond.describe(),
                rule.mode.describe()
            )
        }
    }

    /// What the last judged reading showed, in words.
    fn seen_text(&self, rule: &Rule, cond: Condition) -> String {
        let unit = value_unit(rule);
        match &self.seen {
            Seen::Nothing => "no reading yet".to_owned(),
            Seen::NoData => "no data".to_owned(),
            Seen::NoBaseline => {
                "no baseline: none was taken before the latest change (no change observed since rearguard started, or no readings before it)".to_owned()
            }
            Seen::ThinBaseline => format!(
                "no baseline: {}",
                self.baseline
                    .as_ref()
                    .and_then(|b| b.thin(rule))
                    .unwrap_or_default()
            ),
            Seen::Insufficient(have, need) => {
                format!("insufficient samples ({have:.0} of {need:.0} needed)")
            }
            Seen::Number(v, Some(b)) => {
                format!("{} (baseline {})", unit.format(*v), unit.format(*b))
            }
            Seen::Number(v, None) => unit.format(*v),
            Seen::Rate(e, n, confident) => {
                // Computed here rather than when judging: evidence is rare, readings not.
                let bound = rule.confidence.filter(|_| *confident).map(|c| {
                    let (lo, hi) = stats::binomial_bounds(*e, *n, c);
                    if cond_is_upper(cond) { lo } else { hi }
                });
                let b = bound.map_or(String::new(), |b| {
                    let side = if cond_is_upper(cond) {
                        "lower"
                    } else {
                        "upper"
                    };
                    let level = rule.confidence.map_or(String::new(), |c| {
                        format!(" at {}", Unit::Percent.format(c))
                    });
                    format!(", {side} bound{level} {}", Unit::Percent.format(b))
                });
                format!(
                    "{} ({e:.0}/{n:.0} requests{b})",
                    Unit::Percent.format(e / n)
                )
            }
            Seen::Check(true, _) => "check passed".to_owned(),
            Seen::Check(false, Some(d)) => format!("check failed: {d}"),
            Seen::Check(false, None) => "check failed".to_owned(),
            Seen::Events(n, w) => format!("{n} distinct events within {}", format_duration(*w)),
            Seen::Judged(f) => rule.judge.as_ref().map_or_else(String::new, |j| f.describe(j)),
        }
    }
}

/// The verdict a reading without a value gets under a policy. `Breach` counts as
/// breaching, or as not clearing when firing; `Ok` the opposite.
fn policy_verdict(policy: Policy) -> Verdict {
    match policy {
        Policy::Hold => Verdict::Hold,
        Policy::Breach => Verdict::Bad,
        Policy::Ok => Verdict::Good,
    }
}

/// Whether `cond` holds for `value`. Checks are passed in as 1.0 (failing) or 0.0.
fn compare(cond: Condition, value: f64, baseline: Option<f64>) -> bool {
    match cond {
        Condition::Failing => value >= 0.5,
        Condition::Passing => value < 0.5,
        Condition::Compare {
            cmp,
            threshold: Threshold::Value(t, _),
        } => cmp.holds(value, t),
        Condition::Compare {
            cmp,
            threshold: Threshold::BaselineRatio(r),
        } => baseline.is_some_and(|b| cmp.holds(value, r * b)),
        // A judge decides by its own test (`judge.rs`), never by comparing one value.
        Condition::Compare {
            threshold: Threshold::Baseline,
            ..
        } => false,
    }
}

fn cond_is_upper(cond: Condition) -> bool {
    match cond {
        Condition::Compare { cmp, .. } => cmp.is_upper(),
        _ => true,
    }
}

/// The unit values of this rule's signal are printed in.
fn value_unit(rule: &Rule) -> Unit {
    match rule.when {
        Condition::Compare {
            threshold: Threshold::Value(_, unit),
            ..
        } => unit,
        Condition::Compare {
            threshold: Threshold::BaselineRatio(_) | Threshold::Baseline,
            ..
        } => Unit::Seconds,
        _ => Unit::Plain,
    }
}

#[cfg(test)]
#[path = "rule_tests.rs"]
mod tests;
