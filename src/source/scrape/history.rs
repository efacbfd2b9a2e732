//! The reading of a scrape source from the scrapes it retains: the ring of past
//! scrapes bounded in time and size, the increase of each counter between them (counter
//! resets as Prometheus's `increase()` treats them), and the error rate or histogram
//! quantile over the window. It reads no endpoint and no clock; it trusts its scrapes,
//! which the source has already checked.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use super::{Role, SNAPSHOT_LIMIT, Snapshot};
use crate::config::ScrapeQuery;
use crate::engine::{Measure, ReadingState};

/// The retained scrapes, oldest first.
#[derive(Debug, Default)]
pub(super) struct History {
    scrapes: VecDeque<(Instant, Snapshot)>,
}

impl History {
    /// Adds the scrape taken at `at` and drops those that can no longer be a baseline:
    /// all before the latest one at or before `at - window`, any older than two windows
    /// (after a long outage the old ones say nothing about the window), and the oldest
    /// past [`SNAPSHOT_LIMIT`].
    pub(super) fn push(&mut self, at: Instant, snapshot: Snapshot, window: Duration) {
        self.scrapes.push_back((at, snapshot));
        if let Some(start) = at.checked_sub(window) {
            while self.scrapes.len() > 2 && self.scrapes[1].0 <= start {
                self.scrapes.pop_front();
            }
        }
        if let Some(horizon) = at.checked_sub(window.saturating_mul(2)) {
            while self.scrapes.front().is_some_and(|(t, _)| *t < horizon) {
                self.scrapes.pop_front();
            }
        }
        while self.scrapes.len() > SNAPSHOT_LIMIT {
            self.scrapes.pop_front();
        }
    }

    /// The reading over `window` ending at the latest scrape.
    pub(super) fn reading(&self, query: &ScrapeQuery, window: Duration) -> ReadingState {
        let Some((now, latest)) = self.scrapes.back() else {
            return ReadingState::NoData;
        };
        if latest.is_empty() {
            return ReadingState::NoData;
        }
        if let ScrapeQuery::Value(_) = query {
            let sum: f64 = latest.values().map(|p| p.value).sum();
            return if sum.is_nan() {
                ReadingState::NoData
            } else {
                ReadingState::Value(Measure::Number(sum))
            };
        }
        if self.scrapes.len() < 2 {
            return ReadingState::Insufficient {
                have: self.scrapes.len() as u64,
                need: 2,
            };
        }
        let base = baseline(self.scrapes.iter().map(|(t, _)| *t), *now, window);
        let increases = increases(self.scrapes.range(base..).map(|(_, s)| s));
        match query {
            ScrapeQuery::ErrorRate { .. } => {
                let (mut errors, mut requests) = (0.0, 0.0);
                for (role, inc) in increases.values() {
                    if let Role::Request { error } = role {
                        requests += inc;
                        if *error {
                            errors += inc;
                        }
                    }
                }
                if requests > 0.0 {
                    ReadingState::Value(Measure::Rate { errors, requests })
                } else {
                    ReadingState::NoData
                }
            }
            ScrapeQuery::Latency { quantile, .. } => {
                let mut by_le: Vec<(f64, f64)> = Vec::new();
                for (role, inc) in increases.values() {
                    if let Role::Bucket { le } = role {
                        match by_le.iter_mut().find(|(b, _)| b == le) {
                            Some((_, count)) => *count += inc,
                            None => by_le.push((*le, *inc)),
                        }
                    }
                }
                match histogram_quantile(*quantile, by_le) {
                    Ok(Some(v)) => ReadingState::Value(Measure::Number(v)),
                    Ok(None) => ReadingState::NoData,
                    Err(e) => ReadingState::SourceError(e),
                }
            }
            ScrapeQuery::Value(_) => unreachable!("handled above"),
        }
    }
}

/// The index of the scrape closest to `now - window` among all but the latest (the
/// earlier one on a tie); the oldest when less than a window has been seen.
fn baseline(times: impl Iterator<Item = Instant>, now: Instant, window: Duration) -> usize {
    let Some(start) = now.checked_sub(window) else {
        return 0;
    };
    let times: Vec<Instant> = times.collect();
    let candidates = &times[..times.len().saturating_sub(1)];
    let distance = |t: Instant| {
        if t > start { t - start } else { start - t }
    };
    let mut best = 0;
    for (i, t) in candidates.iter().enumerate() {
        if distance(*t) < distance(candidates[best]) {
            best = i;
        }
    }
    best
}

/// Each series' increase over consecutive scrapes, oldest first, with counter resets
/// handled as Prometheus does: a value lower than the one before counts whole. A series
/// counts from its first scrape in the range; non-finite values are skipped.
fn increases<'a>(scrapes: impl Iterator<Item = &'a Snapshot>) -> HashMap<&'a str, (Role, f64)> {
    let mut seen: HashMap<&str, (Role, f64, f64)> = HashMap::new();
    for snapshot in scrapes {
        for (key, point) in snapshot {
            if !point.value.is_finite() {
                continue;
            }
            match seen.get_mut(key.as_str()) {
                None => {
                    seen.insert(key, (point.role, point.value, 0.0));
                }
                Some((role, last, increase)) => {
                    let v = point.value;
                    *increase += if v >= *last { v - *last } else { v.max(0.0) };
                    *last = v;
                    *role = point.role;
                }
            }
        }
    }
    seen.into_iter()
        .map(|(key, (role, _, increase))| (key, (role, increase)))
        .collect()
}

/// The `q` quantile of cumulative bucket counts `(upper bound, count)`, exactly as
/// Prometheus's `histogram_quantile` computes it for classic buckets: linear
/// interpolation inside the bucket the rank falls in (from 0 for the first bucket when
/// its bound is positive), the upper bound of the last finite bucket when the rank falls
/// in the `+Inf` bucket, counts made monotonic first. `Ok(None)` when there are no
/// observations; an error when the buckets cannot form a histogram.
fn histogram_quantile(q: f64, mut buckets: Vec<(f64, f64)>) -> Result<Option<f64>, String> {
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    if buckets.last().is_none_or(|(le, _)| *le != f64::INFINITY) {
        return Err("the histogram has no le=\"+Inf\" bucket".to_owned());
    }
    if buckets.len() < 2 {
        return Err("the histogram has no finite bucket".to_owned());
    }
    // Increases of separate bucket series can be out of order after a reset of some of
    // them; Prometheus makes them monotonic the same way.
    for i in 1..buckets.len() {
        if buckets[i].1 < buckets[i - 1].1 {
            buckets[i].1 = buckets[i - 1].1;
        }
    }
    let n = buckets.len();
    let observations = buckets[n - 1].1;
    if observations <= 0.0 {
        return Ok(None);
    }
    let mut rank = q * observations;
    let b = buckets[..n - 1]
        .iter()
        .position(|(_, count)| *count >= rank)
        .unwrap_or(n - 1);
    if b == n - 1 {
        return Ok(Some(buckets[n - 2].0));
    }
    if b == 0 && buckets[0].0 <= 0.0 {
        return Ok(Some(buckets[0].0));
    }
    let end = buckets[b].0;
    let mut count = buckets[b].1;
    let mut start = 0.0;
    if b > 0 {
        start = buckets[b - 1].0;
        count -= buckets[b - 1].1;
        rank -= buckets[b - 1].1;
    }
    Ok(Some(start + (end - start) * (rank / count)))
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::config::selector::{parse_matchers, parse_selector};
    use crate::source::scrape::Point;

    #[test]
    fn histogram_quantile_matches_prometheus() {
        let inf = f64::INFINITY;
        // (quantile, cumulative buckets, expected)
        type Case<'a> = (f64, &'a [(f64, f64)], Option<f64>);
        let cases: &[Case] = &[
            // 100 observations, all in (0.1, 0.2]: p50 is the middle of that bucket.
            (0.5, &[(0.1, 0.0), (0.2, 100.0), (inf, 100.0)], Some(0.15)),
            // Rank 95 of 100: 95 - 90 = 5 of the 10 in (0.2, 0.5].
            (
                0.95,
                &[(0.1, 50.0), (0.2, 90.0), (0.5, 100.0), (inf, 100.0)],
                Some(0.35),
            ),
            // The first bucket interpolates from 0.
            (0.5, &[(1.0, 10.0), (inf, 10.0)], Some(0.5)),
            // Rank in the +Inf bucket: the upper bound of the last finite one.
            (0.99, &[(0.1, 10.0), (0.2, 20.0), (inf, 100.0)], Some(0.2)),
            // Empty buckets in between are passed over: rank 18 is 8 of the 10 in (0.3, 0.4].
            (
                0.9,
                &[
                    (0.1, 10.0),
                    (0.2, 10.0),
                    (0.3, 10.0),
                    (0.4, 20.0),
                    (inf, 20.0),
                ],
                Some(0.38),
            ),
            // A first bucket with a bound at or below 0 returns the bound.
            (0.1, &[(0.0, 5.0), (1.0, 10.0), (inf, 10.0)], Some(0.0)),
            // Out of order input and non-monotonic counts (after partial resets).
            (
                0.5,
                &[(inf, 10.0), (0.2, 8.0), (0.1, 9.0)],
                Some(0.1 * 5.0 / 9.0),
            ),
            // No observations.
            (0.95, &[(0.1, 0.0), (inf, 0.0)], None),
        ];
        for (q, buckets, want) in cases {
            let got = histogram_quantile(*q, buckets.to_vec()).unwrap();
            match (got, want) {
                (Some(g), Some(w)) => {
                    assert!((g - w).abs() < 1e-12, "q={q} {buckets:?}: {g} != {w}")
                }
                (g, w) => assert_eq!(g, *w, "q={q} {buckets:?}"),
            }
        }
        assert!(
            histogram_quantile(0.5, vec![(0.1, 1.0), (0.2, 2.0)]).is_err(),
            "no +Inf"
        );
        assert!(
            histogram_quantile(0.5, vec![(inf, 2.0)]).is_err(),
            "no finite bucket"
        );
    }

    fn snap(points: &[(&str, Role, f64)]) -> Snapshot {
        points
            .iter()
            .map(|(k, role, value)| {
                (
                    (*k).to_owned(),
                    Point {
                        role: *role,
                        value: *value,
                    },
                )
            })
            .collect()
    }

    const REQ: Role = Role::Request { error: false };
    const ERR: Role = Role::Request { error: true };

    #[test]
    fn counter_resets_count_the_new_value_like_prometheus_increase() {
        let scrapes: Vec<Snapshot> = [100.0, 150.0, 20.0, 30.0]
            .iter()
            .map(|v| snap(&[("r", REQ, *v)]))
            .collect();
        let inc = increases(scrapes.iter());
        // 50, then a reset to 20 counts 20, then 10.
        assert_eq!(inc["r"].1, 80.0);
    }

    #[test]
    fn a_series_new_in_the_window_counts_from_its_first_scrape() {
        let scrapes = [
            snap(&[("ok", REQ, 100.0)]),
            snap(&[("ok", REQ, 110.0), ("err", ERR, 4.0)]),
            snap(&[("ok", REQ, 120.0), ("err", ERR, 6.0)]),
        ];
        let inc = increases(scrapes.iter());
        assert_eq!(inc["ok"].1, 20.0);
        assert_eq!(
            inc["err"].1, 2.0,
            "the first 4 errors are before its first scrape"
        );
    }

    pub(in crate::source::scrape) fn rate_query() -> ScrapeQuery {
        ScrapeQuery::ErrorRate {
            requests: parse_selector("r").unwrap(),
            errors: parse_matchers(r#"code="500""#).unwrap(),
        }
    }

    #[test]
    fn the_window_starts_at_the_scrape_closest_to_now_minus_window() {
        let t0 = Instant::now();
        let window = Duration::from_secs(3);
        let mut h = History::default();
        let q = rate_query();
        h.push(t0, snap(&[("ok", REQ, 0.0), ("err", ERR, 0.0)]), window);
        assert_eq!(
            h.reading(&q, window),
            ReadingState::Insufficient { have: 1, need: 2 }
        );
        // One scrape a second, 10 requests a second, 1 error a second from t=2.
        for s in 1..=6u64 {
            let errors = s.saturating_sub(1) as f64;
            h.push(
                t0 + Duration::from_secs(s),
                snap(&[("ok", REQ, 10.0 * s as f64 - errors), ("err", ERR, errors)]),
                window,
            );
        }
        // Now t=6; the baseline is t=3: 30 requests, 3 errors.
        assert_eq!(
            h.reading(&q, window),
            ReadingState::Value(Measure::Rate {
                errors: 3.0,
                requests: 30.0
            })
        );
        assert!(
            h.scrapes.len() <= 5,
            "older scrapes are dropped: {}",
            h.scrapes.len()
        );
    }

    #[test]
    fn no_requests_and_absent_series_are_no_data() {
        let t0 = Instant::now();
        let window = Duration::from_secs(3);
        let q = rate_query();
        let mut h = History::default();
        h.push(t0, snap(&[("ok", REQ, 5.0)]), window);
        h.push(
            t0 + Duration::from_secs(1),
            snap(&[("ok", REQ, 5.0)]),
            window,
        );
        assert_eq!(h.reading(&q, window), ReadingState::NoData);
        h.push(t0 + Duration::from_secs(2), Snapshot::new(), window);
        assert_eq!(h.reading(&q, window), ReadingState::NoData);
    }

    #[test]
    fn a_scrape_after_a_long_gap_does_not_reach_back_past_two_windows() {
        let t0 = Instant::now();
        let window = Duration::from_secs(3);
        let q = rate_query();
        let mut h = History::default();
        h.push(t0, snap(&[("ok", REQ, 0.0)]), window);
        h.push(
            t0 + Duration::from_secs(60),
            snap(&[("ok", REQ, 600.0)]),
            window,
        );
        assert_eq!(
            h.reading(&q, window),
            ReadingState::Insufficient { have: 1, need: 2 }
        );
    }
}
