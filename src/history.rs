//! Readings from the past: a configuration's Prometheus signals evaluated over a time
//! range with Prometheus range queries, as engine inputs, for backtesting rules against
//! what already happened (`rearguard replay --prometheus`).
//!
//! Each `type = "prometheus"` signal runs its own query, the same PromQL its live source
//! sends ([`PrometheusSource::sample_range`]), and every step becomes one reading mapped
//! the way a live answer is: a value, or no data where the query has no point at that
//! step (before the first scrape, a gap in traffic). Signals of other types have no
//! history here; they are skipped with a warning.
//!
//! Times are whole seconds, as Prometheus's range API takes them: `from` and `to` are
//! rounded down to the second, and the steps are `from`, `from + step`, ... up to `to`.
//! Prometheus evaluates at most 11,000 steps per query, so a longer range is split into
//! consecutive queries of 10,000 steps; at most [`MAX_POINTS`] steps per signal in all.
//!
//! This module only reads from Prometheus; it runs no engine and writes nothing.

use std::time::Duration;

use crate::config::units::format_duration;
use crate::config::{Config, SourceSpec};
use crate::engine::{Input, Reading, ReadingState, Ts};
use crate::source::prometheus::PrometheusSource;

/// The most steps one signal may have over the whole range.
pub const MAX_POINTS: u64 = 1_000_000;

/// Steps per range query; under Prometheus's own limit of 11,000.
const CHUNK_POINTS: u64 = 10_000;

/// The least time a range query is given, whatever the signal's (live) timeout.
const QUERY_TIMEOUT: Duration = Duration::from_secs(60);

/// Readings of a range, merged and sorted by time.
#[derive(Debug, Clone, Default)]
pub struct History {
    /// One reading per step per Prometheus signal, in time order (then signal order).
    pub inputs: Vec<(Ts, Input)>,
    /// Signals that were skipped, and why.
    pub warnings: Vec<String>,
}

/// Why the range could not be read.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// The range or step cannot be queried (a usage problem).
    #[error("{0}")]
    Range(String),
    /// No signal of the configuration has type `prometheus`.
    #[error("the configuration has no signal of type \"prometheus\" to read history from")]
    NoPrometheusSignal,
    /// A range query failed: the request, the answer, or PromQL Prometheus rejected.
    #[error("signal[{index}] ({name}): range query failed: {reason}")]
    Query {
        index: usize,
        name: String,
        reason: String,
    },
}

/// Reads every Prometheus signal of `cfg` over `[from, to]` at `step`.
pub async fn prometheus_range(
    cfg: &Config,
    from: Ts,
    to: Ts,
    step: Duration,
) -> Result<History, HistoryError> {
    let plan = Plan::new(from, to, step)?;
    let mut readings: Vec<(Ts, usize, ReadingState)> = Vec::new();
    let mut warnings = Vec::new();
    let mut any = false;
    for (index, signal) in cfg.signals.iter().enumerate() {
        let SourceSpec::Prometheus(spec) = &signal.source else {
            warnings.push(format!(
                "signal[{index}] ({}): type {:?} has no history in prometheus; skipped",
                signal.name,
                signal.source.type_name()
            ));
            continue;
        };
        any = true;
        let source = PrometheusSource::new(spec, signal.timeout);
        let timeout = signal.timeout.max(QUERY_TIMEOUT);
        for chunk in plan.chunks() {
            let states = source
                .sample_range(chunk.start, chunk.end, step, timeout)
                .await
                .map_err(|reason| HistoryError::Query {
                    index,
                    name: signal.name.clone(),
                    reason,
                })?;
            readings.extend(
                states
                    .into_iter()
                    .filter(|(at, _)| chunk.until.is_none_or(|until| *at < until))
                    .map(|(at, state)| (at, index, state)),
            );
        }
        tracing::debug!(signal = %signal.name, promql = source.promql(), "history read");
    }
    if !any {
        return Err(HistoryError::NoPrometheusSignal);
    }
    readings.sort_by_key(|(at, signal, _)| (*at, *signal));
    let inputs = readings
        .into_iter()
        .map(|(at, signal, state)| (at, Input::Reading(Reading { signal, state })))
        .collect();
    Ok(History { inputs, warnings })
}

/// A range in whole seconds and its step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Plan {
    start: i64,
    end: i64,
    step_ms: u64,
}

/// One range query: `[start, end]` in seconds, keeping only steps before `until` (the
/// next query's first step, which this one evaluates too).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Chunk {
    start: i64,
    end: i64,
    until: Option<Ts>,
}

impl Plan {
    fn new(from: Ts, to: Ts, step: Duration) -> Result<Plan, HistoryError> {
        if step.is_zero() || !step.subsec_nanos().is_multiple_of(1_000_000) {
            return Err(HistoryError::Range(format!(
                "the step must be whole milliseconds and at least 1ms, got {}",
                format_duration(step)
            )));
        }
        if to < from {
            return Err(HistoryError::Range(format!(
                "the range ends ({to}) before it begins ({from})"
            )));
        }
        let (start, end) = (from.0 / 1000, to.0 / 1000);
        let step_ms = step.as_millis() as u64;
        let points = (end - start) * 1000 / step_ms + 1;
        if points > MAX_POINTS {
            return Err(HistoryError::Range(format!(
                "the range has {points} steps of {}, more than {MAX_POINTS}: use a larger step or a shorter range",
                format_duration(step)
            )));
        }
        let secs = |s: u64| {
            i64::try_from(s)
                .map_err(|_| HistoryError::Range("the range is too far in the future".to_owned()))
        };
        Ok(Plan {
            start: secs(start)?,
            end: secs(end)?,
            step_ms,
        })
    }

    /// Consecutive queries of at most `CHUNK_POINTS + 1` steps. A query starts on a whole
    /// second, which `CHUNK_POINTS` steps of whole milliseconds always end on.
    fn chunks(&self) -> impl Iterator<Item = Chunk> + '_ {
        let span = (CHUNK_POINTS * self.step_ms / 1000) as i64;
        let mut start = self.start;
        std::iter::from_fn(move || {
            if start > self.end {
                return None;
            }
            let next = start + span;
            if next < self.end {
                let chunk = Chunk {
                    start,
                    end: next,
                    until: Some(Ts(next as u64 * 1000)),
                };
                start = next;
                Some(chunk)
            } else {
                let chunk = Chunk {
                    start,
                    end: self.end,
                    until: None,
                };
                start = self.end + 1;
                Some(chunk)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(from_ms: u64, to_ms: u64, step_ms: u64) -> Result<Plan, HistoryError> {
        Plan::new(Ts(from_ms), Ts(to_ms), Duration::from_millis(step_ms))
    }

    #[test]
    fn a_short_range_is_one_query() {
        let p = plan(1_000_500, 1_010_900, 1000).unwrap();
        assert_eq!((p.start, p.end), (1000, 1010), "rounded down to seconds");
        let chunks: Vec<Chunk> = p.chunks().collect();
        assert_eq!(
            chunks,
            [Chunk {
                start: 1000,
                end: 1010,
                until: None
            }]
        );
    }

    #[test]
    fn a_long_range_is_split_into_queries_under_the_prometheus_limit_that_share_no_step() {
        // 25,000 steps of 1.5s.
        let p = plan(0, 37_498_500, 1500).unwrap();
        let chunks: Vec<Chunk> = p.chunks().collect();
        assert_eq!(chunks.len(), 3);
        assert_eq!(chunks[0].start, 0);
        for pair in chunks.windows(2) {
            assert_eq!(pair[0].end, pair[1].start);
            assert_eq!(pair[0].until, Some(Ts(pair[1].start as u64 * 1000)));
        }
        for c in &chunks {
            let steps = (c.end - c.start) as u64 * 1000 / 1500 + 1;
            assert!(steps <= 11_000, "{c:?} has {steps} steps");
        }
        assert_eq!(chunks[2].end, 37_498);
        assert_eq!(chunks[2].until, None);
    }

    #[test]
    fn a_range_of_exactly_one_query_is_not_followed_by_an_empty_one() {
        let chunks: Vec<Chunk> = plan(0, 10_000_000, 1000).unwrap().chunks().collect();
        assert_eq!(
            chunks,
            [Chunk {
                start: 0,
                end: 10_000,
                until: None
            }]
        );
    }

    #[test]
    fn bad_steps_and_ranges_are_refused() {
        for (from, to, step, want) in [
            (0, 1000, 0, "at least 1ms"),
            (2000, 1000, 1000, "ends"),
            (0, 2_000_000_000, 1, "more than 1000000"),
        ] {
            let e = plan(from, to, step).unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        }
        let e = Plan::new(Ts(0), Ts(1000), Duration::from_micros(1500))
            .unwrap_err()
            .to_string();
        assert!(e.contains("whole milliseconds"), "{e}");
    }
}
