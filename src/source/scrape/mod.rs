//! The scrape source: reads a Prometheus text (format 0.0.4) or OpenMetrics endpoint
//! directly, for sidecars and hosts without a Prometheus server, and computes error
//! rates, latency quantiles and gauge values from what it scrapes.
//!
//! Every sample is one GET of the endpoint. Only the series the signal selects are kept,
//! in a ring of past scrapes bounded in time (twice the window) and in size
//! ([`SNAPSHOT_LIMIT`] scrapes of at most [`SERIES_LIMIT`] series), stamped with a
//! monotonic clock. Counters and histogram buckets are compared between the scrape now
//! and the retained scrape closest to `now - window`, with these semantics:
//!
//! - **Increase** of a series is summed over every pair of consecutive scrapes in which it
//!   appears, from the baseline scrape to now: `v[i] - v[i-1]`, or `v[i]` when the value
//!   went down (a counter reset, as Prometheus `increase()` treats it). No extrapolation
//!   to the window's edges: the numbers are what was observed between the two scrapes.
//! - **New series**: a series absent from the baseline scrape counts from its first
//!   scrape, not from zero (as Prometheus, which never assumes an unseen series was 0).
//!   A label value seen for the first time (the first 5xx of a client library that does
//!   not pre-create its series) therefore loses the errors of its first scrape.
//! - **Insufficient**: until two scrapes are retained, rates and quantiles are
//!   `Insufficient { have: 1, need: 2 }`. Before a full window has passed they are
//!   computed over the time there is, so the watchdog is not blind for a window at start.
//! - `value` is the sum of the selected series in the latest scrape; it needs no window.
//!
//! What the endpoint does wrong (no answer, a non-2xx status, a body that is not a
//! well-formed exposition) is a source error with the reason: the watchdog cannot see,
//! which never counts as a breach. An exposition is rejected whole, with the line, when
//! `exposition` or `family` find it malformed, or when a series the signal reads as
//! a count (a request counter, a histogram bucket) is not one: negative, not finite,
//! above 2^53 (where a float no longer counts one by one; no request or observation
//! counter gets there, so it is a corrupt value), or buckets that are not cumulative up
//! to a `+Inf` bucket. A rejected scrape is not retained, so one corrupt sample is one
//! source error, not a window of wrong readings. Selected series that are absent, no
//! requests and no observations are no data. Credentials are never written into a
//! reading or a log. The parts: this file fetches and selects, `exposition` and `family`
//! parse, `history` retains scrapes and computes the reading.

#[doc(hidden)]
pub mod exposition;
mod family;
mod history;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use secrecy::ExposeSecret;

use super::{DETAIL_LIMIT, clip};
use crate::config::selector::Matcher;
use crate::config::units::format_duration;
use crate::config::{HttpAuth, ScrapeQuery, ScrapeSpec};
use crate::engine::ReadingState;
pub use exposition::ParseError;
use exposition::{Sample, number, parse_exposition, shown_number};
use history::History;

/// The largest count a signal reads: 2^53, past which a float cannot add one.
pub const COUNT_LIMIT: f64 = 9_007_199_254_740_992.0;

/// Parses an exposition as the scrape source does, OpenMetrics when `openmetrics`, and
/// returns how many samples it has, or why it is rejected and on which line.
pub fn check_exposition(text: &str, openmetrics: bool) -> Result<usize, ParseError> {
    let mut samples = 0;
    parse_exposition(text, openmetrics, |_, _| {
        samples += 1;
        Ok(())
    })?;
    Ok(samples)
}

/// The most body a scrape reads; a larger body is a source error.
pub const BODY_LIMIT: usize = 8 * 1024 * 1024;

/// The most series one scrape may select; more is a source error (narrow the selector).
pub const SERIES_LIMIT: usize = 10_000;

/// The most scrapes retained; the oldest go first (only reached with a window of more
/// than a thousand intervals).
pub const SNAPSHOT_LIMIT: usize = 1024;

/// What the request asks for: OpenMetrics first, then the classic text format, as
/// Prometheus asks.
const ACCEPT: &str = "application/openmetrics-text;version=1.0.0;q=0.75,\
                      text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

/// A configured scrape source. Clones share the retained scrapes.
#[derive(Debug, Clone)]
pub struct ScrapeSource {
    spec: ScrapeSpec,
    timeout: Duration,
    /// The client for the source's TLS settings, or why it could not be built (a bad
    /// `ca_file`), reported on every sample.
    client: Result<reqwest::Client, String>,
    history: Arc<Mutex<History>>,
}

impl ScrapeSource {
    /// A source whose every scrape, body and parsing included, is bounded by `timeout`.
    pub fn new(spec: &ScrapeSpec, timeout: Duration) -> ScrapeSource {
        ScrapeSource {
            spec: spec.clone(),
            timeout,
            client: crate::http::client_with(&spec.tls),
            history: Arc::new(Mutex::new(History::default())),
        }
    }

    /// Scrapes the endpoint once and computes the signal over the window.
    pub async fn sample(&self) -> ReadingState {
        let client = match &self.client {
            Ok(client) => client,
            Err(e) => return ReadingState::SourceError(clip(e, DETAIL_LIMIT)),
        };
        // reqwest's timeout covers the body too; this bound is the backstop that makes
        // the sample's duration a promise whatever happens below.
        let fetched = match tokio::time::timeout(self.timeout, self.fetch(client)).await {
            Ok(fetched) => fetched,
            Err(_) => Err(self.no_answer()),
        };
        match fetched {
            Ok((at, body)) => self.read(at, &body),
            Err(e) => ReadingState::SourceError(clip(&e, DETAIL_LIMIT)),
        }
    }

    /// Adds the scrape of `body`, answered at `at`, to the retained ones and computes the
    /// signal; a body that is rejected is a source error and is not retained.
    fn read(&self, at: Instant, body: &Body) -> ReadingState {
        let snapshot = match select(&self.spec.query, &body.text, body.openmetrics) {
            Ok(snapshot) => snapshot,
            Err(e) => {
                let shown = match &body.content_type {
                    Some(t) if !is_exposition_type(t) => format!(" (content type {t})"),
                    _ => String::new(),
                };
                let detail = format!("cannot parse the exposition{shown}: {e}");
                return ReadingState::SourceError(clip(&detail, DETAIL_LIMIT));
            }
        };
        // A poisoned lock only means an earlier sample panicked; the ring is still whole.
        let mut history = self
            .history
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        history.push(at, snapshot, self.spec.window);
        history.reading(&self.spec.query, self.spec.window)
    }

    /// GETs the endpoint: when the answer began, and the body.
    async fn fetch(&self, client: &reqwest::Client) -> Result<(Instant, Body), String> {
        let mut request = client
            .get(self.spec.url.clone())
            .header(reqwest::header::ACCEPT, ACCEPT)
            .timeout(self.timeout);
        request = match &self.spec.auth {
            None => request,
            Some(HttpAuth::Bearer(token)) => request.bearer_auth(token.expose_secret()),
            Some(HttpAuth::Basic { username, password }) => {
                request.basic_auth(username, Some(password.expose_secret()))
            }
        };
        let mut response = request.send().await.map_err(|e| self.request_error(&e))?;
        // The series' values are those of when the endpoint answered.
        let at = Instant::now();
        let status = response.status();
        if !status.is_success() {
            return Err(format!("status {}", status.as_u16()));
        }
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let openmetrics = content_type.as_deref().is_some_and(|t| {
            t.trim_start()
                .to_ascii_lowercase()
                .starts_with("application/openmetrics-text")
        });
        let mut bytes = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| self.request_error(&e))? {
            if bytes.len() + chunk.len() > BODY_LIMIT {
                return Err("body larger than 8 MiB".to_owned());
            }
            bytes.extend_from_slice(&chunk);
        }
        let text = String::from_utf8(bytes).map_err(|e| {
            format!(
                "cannot parse the exposition: body is not UTF-8 (byte {})",
                e.utf8_error().valid_up_to()
            )
        })?;
        Ok((
            at,
            Body {
                text,
                openmetrics,
                content_type,
            },
        ))
    }

    fn request_error(&self, error: &reqwest::Error) -> String {
        if error.is_timeout() {
            self.no_answer()
        } else {
            crate::http::describe_error(error)
        }
    }

    fn no_answer(&self) -> String {
        format!("no answer within {}", format_duration(self.timeout))
    }
}

struct Body {
    text: String,
    openmetrics: bool,
    content_type: Option<String>,
}

fn is_exposition_type(content_type: &str) -> bool {
    let t = content_type.trim_start().to_ascii_lowercase();
    t.starts_with("text/plain") || t.starts_with("application/openmetrics-text")
}

/// What a selected series is to the signal.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Role {
    /// A request counter of an error rate; `error` when the error matchers match too.
    Request { error: bool },
    /// A histogram bucket with its upper bound.
    Bucket { le: f64 },
    /// A series of a `value` signal.
    Gauge,
}

#[derive(Debug, Clone, Copy)]
struct Point {
    role: Role,
    value: f64,
}

/// The selected series of one scrape, by series identity (`name{sorted labels}`).
type Snapshot = HashMap<String, Point>;

/// Parses an exposition and keeps the series `query` selects, rejecting it when a series
/// read as a count is not one (see the module's documentation).
fn select(query: &ScrapeQuery, text: &str, openmetrics: bool) -> Result<Snapshot, ParseError> {
    let mut snapshot = Snapshot::new();
    // The selected buckets of each histogram (labels without `le`): bound, count, line.
    let mut histograms: HashMap<String, Vec<(f64, f64, usize)>> = HashMap::new();
    parse_exposition(text, openmetrics, |line, sample| {
        let Some(role) = role(query, sample)? else {
            return Ok(());
        };
        if role != Role::Gauge {
            check_count(sample)?;
        }
        if let Role::Bucket { le } = role {
            let labels: Vec<(String, String)> = sample
                .labels
                .iter()
                .filter(|(k, _)| k != "le")
                .cloned()
                .collect();
            histograms
                .entry(series_key(sample.name, &labels))
                .or_default()
                .push((le, sample.value, line));
        }
        if snapshot.len() >= SERIES_LIMIT {
            return Err(format!(
                "the signal selects more than {SERIES_LIMIT} series; narrow its selector"
            ));
        }
        let point = Point {
            role,
            value: sample.value,
        };
        snapshot.insert(series_key(sample.name, &sample.labels), point);
        Ok(())
    })?;
    check_histograms(histograms)?;
    Ok(snapshot)
}

/// What a sample is to the signal, or `None` when the signal does not select it.
fn role(query: &ScrapeQuery, sample: &Sample) -> Result<Option<Role>, String> {
    let (name, labels) = (sample.name, sample.labels.as_slice());
    Ok(Some(match query {
        ScrapeQuery::ErrorRate { requests, errors } if requests.matches(name, labels) => {
            Role::Request {
                error: matches_all(errors, labels),
            }
        }
        ScrapeQuery::Latency { histogram, .. } if histogram.matches(name, labels) => {
            let text = sample
                .label("le")
                .ok_or_else(|| format!("bucket series {name} has no le label"))?;
            let le: f64 = number(text)
                .filter(|le| !le.is_nan())
                .ok_or_else(|| format!("bucket series {name} has le={text:?}, not a number"))?;
            // -0 and 0 are one bucket.
            Role::Bucket { le: le + 0.0 }
        }
        ScrapeQuery::Value(selector) if selector.matches(name, labels) => Role::Gauge,
        _ => return Ok(None),
    }))
}

/// A request counter or bucket is a count of events: finite, not negative, and exact.
fn check_count(sample: &Sample) -> Result<(), String> {
    let v = sample.value;
    let why = if v.is_nan() || v.is_infinite() {
        "a count must be a finite number"
    } else if v < 0.0 {
        "a count cannot be negative"
    } else if v > COUNT_LIMIT {
        "a count above 2^53 cannot be exact, so it is a corrupt value"
    } else {
        return Ok(());
    };
    Err(format!(
        "{} is {}, and {why}",
        series_key(sample.name, &sample.labels),
        shown_number(v)
    ))
}

/// Every selected histogram has a `+Inf` bucket and cumulative counts; the error is on
/// the earliest line that shows otherwise.
fn check_histograms(histograms: HashMap<String, Vec<(f64, f64, usize)>>) -> Result<(), ParseError> {
    let mut worst: Option<ParseError> = None;
    for (key, mut buckets) in histograms {
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut found = None;
        for pair in buckets.windows(2) {
            let ((lo, lo_count, _), (hi, hi_count, line)) = (pair[0], pair[1]);
            if hi_count < lo_count {
                let reason = format!(
                    "{key} has {} at le=\"{}\", less than {} at le=\"{}\"; buckets are cumulative",
                    shown_number(hi_count),
                    shown_number(hi),
                    shown_number(lo_count),
                    shown_number(lo)
                );
                found = Some(ParseError { line, reason });
                break;
            }
        }
        let (last_le, _, last_line) = buckets[buckets.len() - 1];
        if found.is_none() && last_le != f64::INFINITY {
            let line = buckets.iter().map(|b| b.2).max().unwrap_or(last_line);
            let reason = format!("histogram {key} has no le=\"+Inf\" bucket");
            found = Some(ParseError { line, reason });
        }
        if let Some(e) = found.filter(|e| worst.as_ref().is_none_or(|w| e.line < w.line)) {
            worst = Some(e);
        }
    }
    worst.map_or(Ok(()), Err)
}

fn matches_all(matchers: &[Matcher], labels: &[(String, String)]) -> bool {
    matchers.iter().all(|m| {
        let value = labels
            .iter()
            .find(|(k, _)| *k == m.label)
            .map_or("", |(_, v)| v.as_str());
        m.matches(value)
    })
}

fn series_key(name: &str, labels: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = labels.iter().collect();
    sorted.sort();
    let mut key = String::from(name);
    key.push('{');
    for (i, (k, v)) in sorted.into_iter().enumerate() {
        if i > 0 {
            key.push(',');
        }
        key.push_str(&format!("{k}={v:?}"));
    }
    key.push('}');
    key
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::selector::parse_selector;
    use crate::engine::Measure;
    use history::tests::rate_query;

    #[test]
    fn latency_and_value_queries_select_their_series() {
        let hist = ScrapeQuery::Latency {
            histogram: parse_selector(r#"h_bucket{job="a"}"#).unwrap(),
            quantile: 0.5,
        };
        let text = "h_bucket{job=\"a\",le=\"0.1\"} 1\nh_bucket{job=\"a\",le=\"+Inf\"} 2\nh_bucket{job=\"b\",le=\"0.1\"} 9\nh_sum{job=\"a\"} 1\n";
        let s = select(&hist, text, false).unwrap();
        assert_eq!(s.len(), 2);
        assert!(
            s.values()
                .any(|p| p.role == Role::Bucket { le: f64::INFINITY })
        );
        let e = select(&hist, "h_bucket{job=\"a\"} 1\n", false).unwrap_err();
        assert!(e.reason.contains("no le label"), "{e}");

        let value = ScrapeQuery::Value(parse_selector("g").unwrap());
        let mut h = History::default();
        h.push(
            Instant::now(),
            select(&value, "g{a=\"1\"} 2\ng{a=\"2\"} 3.5\nother 9\n", false).unwrap(),
            Duration::from_secs(60),
        );
        assert_eq!(
            h.reading(&value, Duration::from_secs(60)),
            ReadingState::Value(Measure::Number(5.5))
        );
    }

    /// A source over `query` whose scrapes are fed by the test (no endpoint is asked).
    fn fed(query: ScrapeQuery) -> ScrapeSource {
        let spec = ScrapeSpec {
            url: "http://127.0.0.1:9/metrics".parse().unwrap(),
            query,
            window: Duration::from_secs(60),
            auth: None,
            tls: crate::config::TlsSpec::default(),
        };
        ScrapeSource::new(&spec, Duration::from_secs(1))
    }

    /// Feeds `texts` as the scrapes of consecutive seconds; the reading after each.
    fn readings(source: &ScrapeSource, texts: &[String]) -> Vec<ReadingState> {
        let t0 = Instant::now();
        texts
            .iter()
            .enumerate()
            .map(|(i, text)| {
                let body = Body {
                    text: text.clone(),
                    openmetrics: false,
                    content_type: Some("text/plain; version=0.0.4".to_owned()),
                };
                source.read(t0 + Duration::from_secs(i as u64), &body)
            })
            .collect()
    }

    fn requests(ok: &str, errors: &str) -> String {
        format!("# TYPE r counter\nr{{code=\"200\"}} {ok}\nr{{code=\"500\"}} {errors}\n")
    }

    #[test]
    fn a_negative_counter_is_a_source_error_not_an_error_rate() {
        let source = fed(rate_query());
        // 100 requests a second, no errors, and an error counter that flips -50 and 50.
        let texts: Vec<String> = (0..5)
            .map(|i| {
                requests(
                    &(100 * i).to_string(),
                    if i % 2 == 0 { "-50" } else { "50" },
                )
            })
            .collect();
        for (i, state) in readings(&source, &texts).into_iter().enumerate() {
            match state {
                ReadingState::SourceError(e) if i % 2 == 0 => {
                    assert!(e.contains("line 3"), "{e}");
                    assert!(e.contains("negative"), "{e}");
                }
                ReadingState::Value(Measure::Rate { errors, .. }) if i % 2 == 1 => {
                    assert_eq!(errors, 0.0, "scrape {i}: 50 then 50 is no error")
                }
                ReadingState::Insufficient { .. } if i == 1 => {}
                other => panic!("scrape {i}: {other:?}"),
            }
        }
    }

    #[test]
    fn one_corrupt_huge_sample_does_not_read_as_a_full_error_rate() {
        let source = fed(rate_query());
        let texts = [
            requests("1000", "5"),
            requests("1100", "5"),
            requests("1200", "1e308"),
            requests("1300", "6"),
            requests("1400", "6"),
        ];
        let states = readings(&source, &texts);
        let e = match &states[2] {
            ReadingState::SourceError(e) => e,
            other => panic!("the corrupt scrape read as {other:?}"),
        };
        assert!(e.contains("line 3") && e.contains("1e308"), "{e}");
        // The corrupt scrape is not retained: the window holds 400 requests and 1 error.
        assert_eq!(
            states[4],
            ReadingState::Value(Measure::Rate {
                errors: 1.0,
                requests: 401.0
            })
        );
    }

    #[test]
    fn series_read_as_counts_must_be_counts_even_without_a_type() {
        let latency = ScrapeQuery::Latency {
            histogram: parse_selector("h_bucket").unwrap(),
            quantile: 0.5,
        };
        let gauge = ScrapeQuery::Value(parse_selector("g").unwrap());
        // (query, exposition without # TYPE, line rejected, reason)
        let rejected: &[(&ScrapeQuery, &str, usize, &str)] = &[
            (
                &rate_query(),
                "r{code=\"200\"} 5\nr{code=\"500\"} -1\n",
                2,
                "negative",
            ),
            (&rate_query(), "r{code=\"200\"} NaN\n", 1, "finite"),
            (&rate_query(), "r{code=\"200\"} 1e16\n", 1, "above 2^53"),
            (
                &latency,
                "h_bucket{le=\"1\"} 5\nh_bucket{le=\"+Inf\"} 4\n",
                2,
                "cumulative",
            ),
            (
                &latency,
                "h_bucket{a=\"x\",le=\"1\"} 1\nh_bucket{a=\"x\",le=\"+Inf\"} 1\nh_bucket{a=\"y\",le=\"1\"} 1\n",
                3,
                "no le=\"+Inf\"",
            ),
        ];
        for (query, text, line, reason) in rejected {
            let e = select(query, text, false).expect_err(text);
            assert_eq!(e.line, *line, "{text:?}: {e}");
            assert!(e.reason.contains(reason), "{text:?}: {e}");
        }
        // Counts at the limit, and gauges of any sign, are read.
        assert!(select(&rate_query(), "r 9007199254740992\n", false).is_ok());
        let s = select(&gauge, "g{a=\"1\"} -3 1000\ng{a=\"1\"} -4 2000\n", false).unwrap();
        assert_eq!(s.len(), 1);
        let value = s.values().next().unwrap().value;
        assert_eq!(
            value, -4.0,
            "a series repeated at a later time reads its last value"
        );
    }
}
