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
//! which never counts as a breach. Selected series that are absent, no requests and no
//! observations are no data. Credentials are never written into a reading or a log.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use secrecy::ExposeSecret;

use super::{DETAIL_LIMIT, clip};
use crate::config::selector::Matcher;
use crate::config::units::format_duration;
use crate::config::{HttpAuth, ScrapeQuery, ScrapeSpec};
use crate::engine::{Measure, ReadingState};

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
        let (at, body) = match fetched {
            Ok(fetched) => fetched,
            Err(e) => return ReadingState::SourceError(clip(&e, DETAIL_LIMIT)),
        };
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

/// Parses an exposition and keeps the series `query` selects.
fn select(query: &ScrapeQuery, text: &str, openmetrics: bool) -> Result<Snapshot, ParseError> {
    let mut snapshot = Snapshot::new();
    parse_exposition(text, openmetrics, |name, labels, value| {
        let role = match query {
            ScrapeQuery::ErrorRate { requests, errors } => {
                if !requests.matches(name, labels) {
                    return Ok(());
                }
                Role::Request {
                    error: matches_all(errors, labels),
                }
            }
            ScrapeQuery::Latency { histogram, .. } => {
                if !histogram.matches(name, labels) {
                    return Ok(());
                }
                let text = labels
                    .iter()
                    .find(|(k, _)| k == "le")
                    .map(|(_, v)| v.trim())
                    .ok_or_else(|| format!("bucket series {name} has no le label"))?;
                let le: f64 = parse_number(text)
                    .filter(|le| !le.is_nan())
                    .ok_or_else(|| format!("bucket series {name} has le={text:?}, not a number"))?;
                // -0 and 0 are one bucket.
                Role::Bucket { le: le + 0.0 }
            }
            ScrapeQuery::Value(selector) => {
                if !selector.matches(name, labels) {
                    return Ok(());
                }
                Role::Gauge
            }
        };
        if snapshot.len() >= SERIES_LIMIT {
            return Err(format!(
                "the signal selects more than {SERIES_LIMIT} series; narrow its selector"
            ));
        }
        // A series exposed twice keeps its first value, as Prometheus does.
        snapshot
            .entry(series_key(name, labels))
            .or_insert(Point { role, value });
        Ok(())
    })?;
    Ok(snapshot)
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

/// The retained scrapes, oldest first.
#[derive(Debug, Default)]
struct History {
    scrapes: VecDeque<(Instant, Snapshot)>,
}

impl History {
    /// Adds the scrape taken at `at` and drops those that can no longer be a baseline:
    /// all before the latest one at or before `at - window`, any older than two windows
    /// (after a long outage the old ones say nothing about the window), and the oldest
    /// past [`SNAPSHOT_LIMIT`].
    fn push(&mut self, at: Instant, snapshot: Snapshot, window: Duration) {
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
    fn reading(&self, query: &ScrapeQuery, window: Duration) -> ReadingState {
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

/// Why an exposition could not be parsed, with its 1-based line.
#[doc(hidden)]
#[derive(Debug, Clone, PartialEq)]
pub struct ParseError {
    line: usize,
    reason: String,
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.reason)
    }
}

/// Parses the Prometheus text format 0.0.4, or OpenMetrics 1.0 when `openmetrics`,
/// calling `each` with every sample's name, labels and value. Strict where a lax parser
/// would misread: every line ends with a line feed (a body cut mid-line is an error, not
/// a smaller value), OpenMetrics ends with `# EOF`, label values are unescaped, a line
/// that is not a sample or a comment is an error. Lenient where Prometheus is: blanks
/// and tabs between tokens, `\r\n`, samples without `# TYPE`, families not grouped.
/// Timestamps and exemplars are read and ignored. A body cut exactly at a line feed
/// cannot be told from a complete one in the text format.
#[doc(hidden)]
pub fn parse_exposition(
    text: &str,
    openmetrics: bool,
    mut each: impl FnMut(&str, &[(String, String)], f64) -> Result<(), String>,
) -> Result<(), ParseError> {
    let lines: Vec<&str> = text.split('\n').collect();
    let last = lines.len();
    let mut eof = false;
    for (i, raw) in lines.iter().enumerate() {
        let n = i + 1;
        let err = |reason: String| ParseError { line: n, reason };
        if n == last {
            // What follows the final line feed; empty in a complete text exposition.
            if raw.is_empty() {
                break;
            }
            if !(openmetrics && raw.trim_end_matches('\r') == "# EOF") {
                return Err(err(format!(
                    "the last line has no line feed, the exposition is cut short: {}",
                    shown(raw)
                )));
            }
        }
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        let body = line.trim_start_matches([' ', '\t']);
        if body.trim_end_matches([' ', '\t']).is_empty() {
            continue;
        }
        if eof {
            return Err(err(format!("text after # EOF: {}", shown(line))));
        }
        if let Some(comment) = body.strip_prefix('#') {
            eof = parse_comment(comment, openmetrics).map_err(err)?;
            continue;
        }
        let (name, labels, value) = parse_sample(body).map_err(err)?;
        each(name, &labels, value).map_err(err)?;
    }
    if openmetrics && !eof {
        return Err(ParseError {
            line: if text.ends_with('\n') { last - 1 } else { last }.max(1),
            reason: "no # EOF at the end, the exposition is cut short".to_owned(),
        });
    }
    Ok(())
}

/// Checks a comment line (after the `#`); true when it is OpenMetrics's `# EOF`.
fn parse_comment(comment: &str, openmetrics: bool) -> Result<bool, String> {
    let mut words = comment.split([' ', '\t']).filter(|w| !w.is_empty());
    match words.next() {
        Some("TYPE") => {
            let name = words.next().ok_or("# TYPE without a metric name")?;
            let kind = words
                .next()
                .ok_or_else(|| format!("# TYPE {name} without a type"))?;
            let known: &[&str] = if openmetrics {
                &[
                    "counter",
                    "gauge",
                    "histogram",
                    "gaugehistogram",
                    "stateset",
                    "info",
                    "summary",
                    "unknown",
                ]
            } else {
                &["counter", "gauge", "histogram", "summary", "untyped"]
            };
            if !known.contains(&kind) {
                return Err(format!("# TYPE {name} has unknown type {}", shown(kind)));
            }
            Ok(false)
        }
        Some("EOF") if openmetrics => Ok(true),
        // HELP, UNIT and other comments say nothing the computation needs.
        _ => Ok(false),
    }
}

/// A sample's labels, in the order written.
type Labels = Vec<(String, String)>;

/// One sample line: name, labels and value.
fn parse_sample(line: &str) -> Result<(&str, Labels, f64), String> {
    let name_end = line
        .char_indices()
        .find(|&(i, c)| {
            !(c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit()))
        })
        .map_or(line.len(), |(i, _)| i);
    if name_end == 0 {
        return Err(format!("expected a metric name, got {}", shown(line)));
    }
    let name = &line[..name_end];
    let after_name = &line[name_end..];
    let mut labels = Vec::new();
    let rest = match after_name.trim_start_matches([' ', '\t']).strip_prefix('{') {
        Some(inner) => parse_labels(inner, &mut labels)
            .map_err(|reason| format!("{reason} in the labels of {name}"))?,
        None => after_name,
    };
    let rest_trimmed = rest.trim_start_matches([' ', '\t']);
    if rest_trimmed.len() == rest.len() && !rest.is_empty() {
        return Err(format!(
            "expected a space before the value of {name}, got {}",
            shown(rest)
        ));
    }
    let mut tokens = rest_trimmed.split([' ', '\t']).filter(|t| !t.is_empty());
    let value_text = tokens
        .next()
        .ok_or_else(|| format!("{name} has no value"))?;
    let value = parse_number(value_text)
        .ok_or_else(|| format!("the value of {name} is not a number: {}", shown(value_text)))?;
    match tokens.next() {
        None => {}
        // An exemplar follows the value directly.
        Some(t) if t.starts_with('#') => {}
        Some(t) => {
            if parse_number(t).is_none_or(|t| !t.is_finite()) {
                return Err(format!(
                    "expected a timestamp after the value of {name}, got {}",
                    shown(t)
                ));
            }
            match tokens.next() {
                None => {}
                Some(t) if t.starts_with('#') => {}
                Some(t) => {
                    return Err(format!(
                        "unexpected text after the sample of {name}: {}",
                        shown(t)
                    ));
                }
            }
        }
    }
    Ok((name, labels, value))
}

/// Parses labels after `{` up to and including `}`; returns what follows.
fn parse_labels<'a>(mut s: &'a str, labels: &mut Vec<(String, String)>) -> Result<&'a str, String> {
    loop {
        s = s.trim_start_matches([' ', '\t']);
        if let Some(rest) = s.strip_prefix('}') {
            return Ok(rest);
        }
        let name_end = s
            .char_indices()
            .find(|&(i, c)| !(c.is_ascii_alphabetic() || c == '_' || (i > 0 && c.is_ascii_digit())))
            .map_or(s.len(), |(i, _)| i);
        if name_end == 0 {
            return Err(format!("expected a label name, got {}", shown(s)));
        }
        let label = &s[..name_end];
        s = s[name_end..].trim_start_matches([' ', '\t']);
        s = s
            .strip_prefix('=')
            .ok_or_else(|| format!("expected '=' after label {label}"))?
            .trim_start_matches([' ', '\t']);
        s = s
            .strip_prefix('"')
            .ok_or_else(|| format!("expected a quoted value for label {label}"))?;
        let mut value = String::new();
        let mut chars = s.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err(format!("the value of label {label} is not closed")),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    // Prometheus keeps unknown escapes as written.
                    Some((_, c)) => {
                        value.push('\\');
                        value.push(c);
                    }
                    None => return Err(format!("the value of label {label} is not closed")),
                },
                Some((_, c)) => value.push(c),
            }
        };
        if labels.iter().any(|(k, _)| k == label) {
            return Err(format!("label {label} appears twice"));
        }
        labels.push((label.to_owned(), value));
        s = s[end + 1..].trim_start_matches([' ', '\t']);
        if let Some(rest) = s.strip_prefix(',') {
            s = rest;
        } else if !s.starts_with('}') {
            return Err(format!("expected ',' or '}}' after label {label}"));
        }
    }
}

/// A number as the formats write it: decimal, `NaN`, `+Inf`, `-Inf`.
fn parse_number(text: &str) -> Option<f64> {
    // Rust also reads "infinity" and "inf" in any case, as Go's ParseFloat does; it
    // rejects what Go rejects too (hex floats aside, which exporters do not write).
    text.parse::<f64>().ok()
}

/// Offending text as it is shown in an error: quoted and clipped.
fn shown(text: &str) -> String {
    format!("{:?}", clip(text, 60))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::selector::{parse_matchers, parse_selector};

    fn parse(text: &str, openmetrics: bool) -> Result<Vec<(String, f64)>, ParseError> {
        let mut out = Vec::new();
        parse_exposition(text, openmetrics, |name, labels, value| {
            out.push((series_key(name, labels), value));
            Ok(())
        })?;
        Ok(out)
    }

    const VALID: &str = "# HELP http_requests_total Requests.\n# TYPE http_requests_total counter\nhttp_requests_total{code=\"200\",path=\"/a\\\"b\"} 1027 1395066363000\nh_bucket{le=\"0.1\"} 3\nh_bucket{le=\"+Inf\"} 5\n";

    proptest::proptest! {
        /// Whatever an endpoint sends, parsing ends in series or an error, never a panic.
        #[test]
        fn arbitrary_text_never_panics_the_parser(text in "\\PC*", om in proptest::bool::ANY) {
            let _ = parse(&text, om);
        }

        /// A body cut anywhere is an error or a prefix of the series, never a panic, and a
        /// cut inside a line is always an error.
        #[test]
        fn truncated_expositions_are_errors_or_whole_lines(cut in 0..VALID.len()) {
            let Some(text) = VALID.get(..cut) else { return Ok(()) };
            let result = parse(text, false);
            if !text.is_empty() && !text.ends_with('\n') {
                proptest::prop_assert!(result.is_err(), "cut at {cut} parsed: {result:?}");
            }
        }
    }

    #[test]
    fn well_formed_expositions_parse_into_series() {
        // (text, openmetrics, expected series and values)
        type Case<'a> = (&'a str, bool, &'a [(&'a str, f64)]);
        let cases: &[Case] = &[
            ("", false, &[]),
            ("# just a comment\n\n", false, &[]),
            ("foo 1\nbar 2\n", false, &[("foo{}", 1.0), ("bar{}", 2.0)]),
            (
                "# HELP r Requests.\n# TYPE r counter\nr{code=\"200\"} 10\nr{code=\"500\"} 2 1700000000000\n",
                false,
                &[("r{code=\"200\"}", 10.0), ("r{code=\"500\"}", 2.0)],
            ),
            (
                "x{b=\"2\", a=\"1\",} 3\r\n",
                false,
                &[("x{a=\"1\",b=\"2\"}", 3.0)],
            ),
            ("x\t{a=\"1\"}\t4\n", false, &[("x{a=\"1\"}", 4.0)]),
            (
                "x{p=\"a,b}\\\"c\\\\d\\ne\"} 5\n",
                false,
                &[("x{p=\"a,b}\\\"c\\\\d\\ne\"}", 5.0)],
            ),
            (
                "x{} +Inf\ny -1.5e3\n",
                false,
                &[("x{}", f64::INFINITY), ("y{}", -1500.0)],
            ),
            (
                "# TYPE foo counter\nfoo_total{a=\"1\"} 1 1700000000.5 # {trace_id=\"abc\"} 1.0\nfoo_created{a=\"1\"} 1700000000\n# EOF\n",
                true,
                &[
                    ("foo_total{a=\"1\"}", 1.0),
                    ("foo_created{a=\"1\"}", 1700000000.0),
                ],
            ),
            ("# TYPE g gauge\ng 7\n# EOF", true, &[("g{}", 7.0)]),
        ];
        for (text, om, want) in cases {
            let got = parse(text, *om).unwrap_or_else(|e| panic!("{text:?}: {e}"));
            let want: Vec<(String, f64)> =
                want.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect();
            assert_eq!(got, want, "{text:?}");
        }
        let nan = parse("x NaN\n", false).unwrap();
        assert!(nan[0].1.is_nan());
    }

    #[test]
    fn malformed_expositions_are_errors_with_line_and_reason() {
        let cases: &[(&str, bool, usize, &str)] = &[
            (
                "hello world this is not metrics\n",
                false,
                1,
                "not a number",
            ),
            (
                "<html><body>Error</body></html>\n",
                false,
                1,
                "expected a metric name",
            ),
            ("foo 1\nfoo{a=\"1\"} 12", false, 2, "no line feed"),
            ("foo 1\nfoo{a=\"", false, 2, "no line feed"),
            ("foo{a=\"1} 1\n", false, 1, "not closed"),
            ("foo{a=1} 1\n", false, 1, "quoted value"),
            ("foo{a=\"1\" b=\"2\"} 1\n", false, 1, "expected ','"),
            ("foo{a=\"1\",a=\"2\"} 1\n", false, 1, "appears twice"),
            ("foo=2\n", false, 1, "expected a space"),
            ("foo{a=\"1\"}2\n", false, 1, "expected a space"),
            ("foo\n", false, 1, "has no value"),
            ("foo 1 2 3\n", false, 1, "unexpected text"),
            ("foo 1 soon\n", false, 1, "timestamp"),
            ("# TYPE foo bogus\nfoo 1\n", false, 1, "unknown type"),
            ("foo 1\n", true, 1, "no # EOF"),
            ("foo 1\n# EOF\nbar 2\n", true, 3, "after # EOF"),
        ];
        for (text, om, line, reason) in cases {
            let e = parse(text, *om).expect_err(text);
            assert_eq!(e.line, *line, "{text:?}: {e}");
            assert!(e.reason.contains(reason), "{text:?}: {e}");
        }
    }

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

    fn rate_query() -> ScrapeQuery {
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
}
