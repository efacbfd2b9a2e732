//! What the charts and the status page draw from: the readings of every signal and the
//! revision changes of every target, kept in the state store (bounded: see
//! `store::READINGS_KEPT_PER_SIGNAL`), and what one rule makes of them.
//!
//! `Recorder` is the daemon's side: it collects readings and changes as the engine's loop
//! takes them and writes them in batches (at most every [`FLUSH_EVERY`], or at once when
//! an engine step had effects or an incident closes), so that a reading costs no write of
//! its own. It must not hold the engine's loop: a batch the store refuses is kept, up to
//! [`HELD_MAX`] rows, and the oldest are dropped past that (charts are evidence to look
//! at, not state the engine needs).
//!
//! A source error's text is not kept: only that the reading was an error.

use std::time::Duration;

use crate::config::units::{Condition, Threshold, Unit};
use crate::config::{Config, Rule, RuleMode, SignalKind};
use crate::engine::{Effect, Measure, Reading, ReadingState, Ts};
use crate::store::{ChangeRow, ReadingRow, Store};

/// How long readings wait in memory, at most, before they are written.
pub const FLUSH_EVERY: Duration = Duration::from_secs(5);

/// The most rows kept in memory while the store cannot take them.
pub const HELD_MAX: usize = 4096;

/// What one reading showed, as the charts draw it.
#[derive(Debug, Clone, PartialEq)]
pub enum Seen {
    /// The number the rule compares (a rate as a fraction; a check 1 when failing).
    Value(f64),
    NoData,
    Insufficient,
    Error,
}

/// One reading of a signal, as one rule sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub at: Ts,
    pub seen: Seen,
}

/// A reading as the store keeps it.
pub fn row_of(signal: &str, state: &ReadingState, at: Ts) -> ReadingRow {
    let (state, value, count, detail) = match state {
        ReadingState::Value(Measure::Number(n)) => ("value", Some(*n), None, None),
        ReadingState::Value(Measure::Rate { errors, requests }) if *requests > 0.0 => {
            ("value", Some(errors / requests), Some(*requests), None)
        }
        ReadingState::Value(Measure::Rate { .. }) => ("no_data", None, Some(0.0), None),
        ReadingState::Value(Measure::Check { ok, .. }) => {
            ("value", Some(if *ok { 0.0 } else { 1.0 }), None, None)
        }
        ReadingState::Value(Measure::Event { key }) => {
            ("value", Some(1.0), None, Some(key.clone()))
        }
        ReadingState::NoData => ("no_data", None, None, None),
        ReadingState::Insufficient { have, need } => {
            ("insufficient", None, None, Some(format!("{have}/{need}")))
        }
        ReadingState::SourceError(_) => ("error", None, None, None),
    };
    ReadingRow {
        signal: signal.to_owned(),
        at_ms: at.0,
        state: state.to_owned(),
        value,
        count,
        detail,
    }
}

/// The points `rule` sees in a signal's kept readings: a rate with fewer requests than
/// the rule's `min_requests` is insufficient, and an event signal's value is the number
/// of distinct events within the rule's window at each event.
pub fn points_for(rule: &Rule, kind: SignalKind, rows: &[ReadingRow]) -> Vec<Point> {
    let window = match rule.mode {
        RuleMode::Within { window } => Some(window.as_millis() as u64),
        _ => None,
    };
    rows.iter()
        .enumerate()
        .map(|(i, r)| {
            let seen = match (r.state.as_str(), r.value) {
                ("value", Some(_)) if kind == SignalKind::Event => {
                    Seen::Value(distinct_events(&rows[..=i], window) as f64)
                }
                ("value", Some(_))
                    if kind == SignalKind::Rate
                        && r.count.is_some_and(|n| n < rule.min_requests as f64) =>
                {
                    Seen::Insufficient
                }
                ("value", Some(v)) => Seen::Value(v),
                ("insufficient", _) => Seen::Insufficient,
                ("error", _) => Seen::Error,
                _ => Seen::NoData,
            };
            Point {
                at: Ts(r.at_ms),
                seen,
            }
        })
        .collect()
}

/// Distinct event keys within `window` before the last row (all of them without one).
fn distinct_events(rows: &[ReadingRow], window: Option<u64>) -> usize {
    let now = rows.last().map_or(0, |r| r.at_ms);
    let mut keys: Vec<&str> = rows
        .iter()
        .filter(|r| r.state == "value" && window.is_none_or(|w| now.saturating_sub(r.at_ms) < w))
        .filter_map(|r| r.detail.as_deref())
        .collect();
    keys.sort_unstable();
    keys.dedup();
    keys.len()
}

/// The unit a rule's values are written in.
pub fn unit_of(rule: &Rule, kind: SignalKind) -> Unit {
    match (rule.when, kind) {
        (
            Condition::Compare {
                threshold: Threshold::Value(_, unit),
                ..
            },
            _,
        ) => unit,
        (_, SignalKind::Rate) => Unit::Percent,
        _ => Unit::Plain,
    }
}

/// The rule's threshold as a value and as the condition reads, when it has a fixed one.
pub fn threshold_of(rule: &Rule) -> Option<(f64, String)> {
    match rule.when {
        Condition::Compare {
            threshold: Threshold::Value(v, _),
            ..
        } => Some((v, rule.when.describe())),
        _ => None,
    }
}

/// A point in words, as the rule sees it: `12%`, `failing`, `3 events`, `no data`.
pub fn describe(rule: &Rule, kind: SignalKind, point: &Point) -> String {
    match point.seen {
        Seen::Value(v) if kind == SignalKind::Check => {
            if v > 0.5 { "failing" } else { "passing" }.to_owned()
        }
        Seen::Value(v) if kind == SignalKind::Event => {
            format!("{v:.0} distinct event{}", if v == 1.0 { "" } else { "s" })
        }
        Seen::Value(v) => unit_of(rule, kind).format(v),
        Seen::NoData => "no data".to_owned(),
        Seen::Insufficient => "insufficient samples".to_owned(),
        Seen::Error => "source error".to_owned(),
    }
}

/// Collects readings and changes in the daemon, and writes them to the store in batches.
#[derive(Debug, Default)]
pub struct Recorder {
    readings: Vec<ReadingRow>,
    changes: Vec<ChangeRow>,
    last_write: Option<Ts>,
    failing: bool,
}

impl Recorder {
    /// A reading the engine is about to take.
    pub fn reading(&mut self, cfg: &Config, r: &Reading, at: Ts) {
        if let Some(signal) = cfg.signals.get(r.signal) {
            self.readings.push(row_of(&signal.name, &r.state, at));
        }
    }

    /// The revision changes among an engine step's effects, which happened at `at` (the
    /// change input's time, the earliest the change can have happened, as the engine
    /// takes it).
    pub fn changes(&mut self, cfg: &Config, effects: &[Effect], at: Ts) {
        for e in effects {
            if let Effect::ChangeObserved {
                target, from, to, ..
            } = e
            {
                self.changes.push(ChangeRow {
                    target: cfg.targets[*target].name.clone(),
                    at_ms: at.0,
                    from: from.clone(),
                    to: to.clone(),
                });
            }
        }
    }

    /// Writes what waits when it is time: `urgent` (the step had effects), after
    /// [`FLUSH_EVERY`], or when many wait.
    pub fn write_if_due(&mut self, store: &Store, now: Ts, urgent: bool) {
        let due = self
            .last_write
            .is_none_or(|last| now.since(last) >= FLUSH_EVERY);
        if urgent || due || self.readings.len() >= 512 {
            self.write(store, now);
        }
    }

    /// Writes what waits now (before a report reads it back).
    pub fn write(&mut self, store: &Store, now: Ts) {
        self.last_write = Some(now);
        if self.readings.is_empty() && self.changes.is_empty() {
            return;
        }
        match store.record_readings(&self.readings, &self.changes) {
            Ok(()) => {
                self.readings.clear();
                self.changes.clear();
                self.failing = false;
            }
            Err(e) => {
                if !self.failing {
                    tracing::warn!(error = %e, "cannot keep readings for the charts; they wait in memory, the oldest dropped past a bound");
                }
                self.failing = true;
                let over = self.readings.len().saturating_sub(HELD_MAX);
                self.readings.drain(..over);
                let over = self.changes.len().saturating_sub(HELD_MAX);
                self.changes.drain(..over);
            }
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    fn rows(signal: &str, states: &[(u64, ReadingState)]) -> Vec<ReadingRow> {
        states
            .iter()
            .map(|(s, st)| row_of(signal, st, Ts(s * 1000)))
            .collect()
    }

    fn rule(text: &str) -> (Rule, SignalKind) {
        let cfg = crate::config::load_str(
            text,
            crate::config::Format::Toml,
            std::iter::empty(),
            std::path::Path::new("/tmp"),
        )
        .expect("valid");
        let kind = cfg.signals[cfg.rules[0].signal].kind();
        (cfg.rules[0].clone(), kind)
    }

    /// A rate rule the report's tests share.
    pub(in crate::report) const RATE: &str = r#"
[daemon]
state_dir = "/tmp/x"
[[target]]
name = "shop"
[[signal]]
name = "errors"
target = "shop"
type = "scrape"
url = "http://127.0.0.1:1/metrics"
interval = "10s"
error_rate = { requests = 'http_requests_total', errors = 'code=~"5.."' }
[[rule]]
name = "error-rate"
signal = "errors"
when = "> 5%"
for = "1m"
min_requests = 20
"#;

    #[test]
    fn a_rate_under_min_requests_is_insufficient_and_missing_readings_stay_missing() {
        let (rule, kind) = rule(RATE);
        assert_eq!(kind, SignalKind::Rate);
        let rows = rows(
            "errors",
            &[
                (
                    1,
                    ReadingState::Value(Measure::Rate {
                        errors: 5.0,
                        requests: 100.0,
                    }),
                ),
                (
                    2,
                    ReadingState::Value(Measure::Rate {
                        errors: 1.0,
                        requests: 3.0,
                    }),
                ),
                (3, ReadingState::NoData),
                (4, ReadingState::SourceError("secret-ish text".to_owned())),
                (5, ReadingState::Insufficient { have: 2, need: 20 }),
            ],
        );
        assert_eq!(rows[3].detail, None, "an error's text is not kept");
        let seen: Vec<Seen> = points_for(&rule, kind, &rows)
            .into_iter()
            .map(|p| p.seen)
            .collect();
        assert_eq!(
            seen,
            [
                Seen::Value(0.05),
                Seen::Insufficient,
                Seen::NoData,
                Seen::Error,
                Seen::Insufficient
            ]
        );
        let p = Point {
            at: Ts(0),
            seen: Seen::Value(0.125),
        };
        assert_eq!(describe(&rule, kind, &p), "12.5%");
        assert_eq!(threshold_of(&rule), Some((0.05, "> 5%".to_owned())));
    }

    #[test]
    fn events_count_distinct_keys_within_the_rules_window() {
        let (rule, kind) = rule(
            r#"
[daemon]
state_dir = "/tmp/x"
[[target]]
name = "shop"
[[signal]]
name = "oom"
target = "shop"
type = "cgroup_oom"
unit = "shop.service"
interval = "10s"
[[rule]]
name = "oom"
signal = "oom"
when = "> 2"
within = "1m"
"#,
        );
        let event = |k: &str| ReadingState::Value(Measure::Event { key: k.to_owned() });
        let rows = rows(
            "oom",
            &[
                (0, event("a")),
                (10, event("b")),
                (10, event("b")),
                (65, event("c")),
            ],
        );
        let values: Vec<Seen> = points_for(&rule, kind, &rows)
            .into_iter()
            .map(|p| p.seen)
            .collect();
        assert_eq!(
            values,
            [
                Seen::Value(1.0),
                Seen::Value(2.0),
                Seen::Value(2.0),
                Seen::Value(2.0)
            ]
        );
    }
}
