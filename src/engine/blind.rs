//! How the engine tells whether it can see a signal: two rules, either of which makes it
//! blind. The continuous rule (`blind_after` of source errors without a break, ended by
//! the next reading that is not one) is detected on ticks in `signals.rs`. The share rule
//! is here: at least `daemon.blind_share` of the signal's evaluations in its window were
//! source errors, judged on at least `blind_share_min` of them; sight returns only when
//! the share is half that or less (hysteresis), so a share hovering at the threshold does
//! not open and close incidents. An unbroken failure is the continuous rule's alone: the
//! share rule needs the window's errors broken by a reading that was not one.
//!
//! Both rules open, join and end the same "watchdog is blind" incident, with the same
//! occasion and notices; the timeline says which rule, with the counts. It does no I/O
//! and reads no clock; it does not judge rules (see `rule.rs`).

use std::collections::VecDeque;

use super::{Cause, Engine, EntryKind, HISTORY_CAP, IncidentState, Outcome, ReadingState, Ts};
use crate::config::units::format_duration;
use crate::config::{BlindShare, Occasion};

/// A signal's evaluations within its share window, oldest first, and the share rule's
/// verdict.
#[derive(Debug, Clone, Default)]
pub(super) struct Share {
    /// When each evaluation was, and whether it was a source error.
    evaluations: VecDeque<(Ts, bool)>,
    errors: usize,
    /// Blind by the share rule.
    pub(super) blind: bool,
}

impl Share {
    /// Adds an evaluation at `now` and forgets those older than `window`.
    fn push(&mut self, now: Ts, error: bool, window: std::time::Duration) {
        self.evaluations.push_back((now, error));
        self.errors += usize::from(error);
        let start = now.minus(window);
        while self.evaluations.front().is_some_and(|(t, _)| *t <= start)
            || self.evaluations.len() > HISTORY_CAP
        {
            if let Some((_, true)) = self.evaluations.pop_front() {
                self.errors -= 1;
            }
        }
    }

    /// Judges the share after an evaluation: `Some(true)` when it made the signal blind,
    /// `Some(false)` when it gave sight back, `None` when the verdict stands.
    fn judge(&mut self, rule: &BlindShare) -> Option<bool> {
        let n = self.evaluations.len();
        if n < rule.min_evaluations as usize {
            return None;
        }
        // A hair of tolerance, so that 15 of 30 is 50% whatever the float rounding.
        let (errors, n) = (self.errors as f64, n as f64);
        let at_least = |fraction: f64| errors + 1e-9 >= fraction * n;
        let at_most = |fraction: f64| errors <= fraction * n + 1e-9;
        if !self.blind && at_least(rule.share) && !self.one_run() {
            self.blind = true;
            return Some(true);
        }
        if self.blind && at_most(rule.share / 2.0) {
            self.blind = false;
            return Some(false);
        }
        None
    }

    /// Whether every source error in the window is one unbroken run of them.
    fn one_run(&self) -> bool {
        let mut errors = self.evaluations.iter().map(|(_, e)| *e);
        errors.by_ref().find(|e| *e);
        let run = errors.by_ref().take_while(|e| *e).count() + 1;
        run >= self.errors
    }

    /// The first source error in the window, when there is one.
    fn first_error(&self) -> Option<Ts> {
        self.evaluations.iter().find(|(_, e)| *e).map(|(t, _)| *t)
    }

    /// "14 of 20 evaluations in 5m were source errors".
    fn counts(&self, window: std::time::Duration) -> String {
        format!(
            "{} of {} evaluations in {} were source errors",
            self.errors,
            self.evaluations.len(),
            format_duration(window)
        )
    }
}

impl Engine {
    /// Takes a reading's part in blindness: a source error starts or goes on with the
    /// continuous rule's clock, anything else stops it (and ends a continuous blindness);
    /// then the share rule judges the window. An incident opens, is told, or ends when
    /// the signal's sight as a whole changes.
    pub(super) fn note_sight(&mut self, s: usize, state: &ReadingState, now: Ts) {
        let rule = self.cfg.daemon.blind_share;
        let window = rule.window_for(self.cfg.signals[s].interval);
        let sig = &mut self.signals[s];
        let (continuous, shared) = (sig.blind, sig.share.blind);
        match state {
            ReadingState::SourceError(e) => {
                sig.error_since.get_or_insert(now);
                if sig.last_error.as_deref() != Some(e) {
                    sig.last_error = Some(e.clone());
                }
            }
            _ => {
                sig.error_since = None;
                sig.blind = false;
            }
        }
        let error = matches!(state, ReadingState::SourceError(_));
        sig.share.push(now, error, window);
        let verdict = sig.share.judge(&rule);
        let counts = sig.share.counts(window);
        let since = sig.share.first_error().unwrap_or(now);
        let why = sig.last_error.clone().unwrap_or_default();
        let name = &self.cfg.signals[s].name;
        let (threshold, sight) = (percent(rule.share), percent(rule.share / 2.0));
        let still = self.signals[s].blind;
        let ended = continuous && !still;
        let text = match verdict {
            Some(true) if still => {
                format!(
                    "signal {name} also fails on part of its evaluations: {counts} ({threshold} or more)"
                )
            }
            Some(true) if ended => format!(
                "signal {name} reads again, but {counts} ({threshold} or more): blind until {sight} or fewer are"
            ),
            Some(true) => format!(
                "watchdog is blind: signal {name} fails on part of its evaluations: {counts} ({threshold} or more): {why}"
            ),
            Some(false) if still => format!(
                "signal {name} fails on fewer of its evaluations ({counts}, {sight} or fewer) but still without a break"
            ),
            Some(false) => format!("signal {name} reads again: {counts} ({sight} or fewer)"),
            None if ended && shared => {
                format!("signal {name} reads again, but {counts}: blind until {sight} or fewer are")
            }
            None if ended => format!("signal {name} reads again"),
            None => return,
        };
        let blind = self.signals[s].blind || self.signals[s].share.blind;
        match (continuous || shared, blind) {
            (false, true) => self.blind_because(s, since, text, now),
            (true, false) => self.sight_restored(s, text, now),
            _ => self.log_blind(s, text, now),
        }
    }

    /// Opens the target's blind incident with `text`, or adds the signal to the open one;
    /// a signal already in it only gets the line in its timeline.
    pub(super) fn blind_because(&mut self, s: usize, since: Ts, text: String, now: Ts) {
        let target = self.cfg.signals[s].target;
        let idx = match self.open_incident(target, Cause::Blind) {
            Some(idx) if self.incidents[idx].blind_signals.contains(&s) => {
                self.log(idx, now, EntryKind::Decision, text);
                return;
            }
            Some(idx) => idx,
            None => {
                let idx = self.open(target, Cause::Blind, since, now);
                self.incidents[idx].state = IncidentState::Escalated;
                self.incidents[idx].escalation_reason = Some(text.clone());
                idx
            }
        };
        self.incidents[idx].blind_signals.push(s);
        self.log(idx, now, EntryKind::Decision, text);
        self.notify(idx, Occasion::Blind, now);
    }

    /// The signal can be seen again: it leaves the blind incident, which ends as
    /// recovered when no signal in it is blind.
    fn sight_restored(&mut self, s: usize, text: String, now: Ts) {
        let target = self.cfg.signals[s].target;
        let Some(idx) = self.open_incident(target, Cause::Blind) else {
            return;
        };
        self.incidents[idx].blind_signals.retain(|&x| x != s);
        self.log(idx, now, EntryKind::Decision, text);
        if self.incidents[idx].blind_signals.is_empty() {
            self.resolve(idx, Outcome::Recovered, now);
        }
    }

    /// A line in the open blind incident of the signal's target, when there is one.
    fn log_blind(&mut self, s: usize, text: String, now: Ts) {
        let target = self.cfg.signals[s].target;
        if let Some(idx) = self.open_incident(target, Cause::Blind) {
            self.log(idx, now, EntryKind::Decision, text);
        }
    }
}

/// A fraction as a percentage, to two decimals at most: 0.5 is "50%".
fn percent(fraction: f64) -> String {
    format!("{}%", (fraction * 10_000.0).round() / 100.0)
}
