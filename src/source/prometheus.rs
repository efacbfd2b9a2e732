//! The Prometheus source: one instant query per sample against a Prometheus server's
//! HTTP API, sent with prometheus-http-query over rearguard's own reqwest client. The
//! same query also runs as a range query ([`PrometheusSource::sample_range`]) for
//! readings from the past (`crate::history`), with the same mapping at every step.
//!
//! It owns turning a [`PrometheusSpec`] into PromQL and an answer into a reading state.
//! Three kinds of query, so that the common signals need no PromQL from the user:
//!
//! - error rate: one query returning both counts over the window, so that both are
//!   evaluated at the same instant on the same data:
//!   `sum(increase(REQUESTS[W])) or label_replace(sum(increase(REQUESTS{...,ERRORS}[W])), "rearguard_part", "errors", "", "")`.
//!   The unlabelled series is the request count, the labelled one the error count. An
//!   absent error series with requests present means no errors (Prometheus drops a
//!   counter no request has touched yet); no requests is no data.
//! - latency: `histogram_quantile(Q, sum by (le) (rate(HISTOGRAM[W])))`, in seconds.
//! - any expression returning one value.
//!
//! Mapping: an empty result or NaN is no data (a quantile of no traffic is NaN); +Inf
//! is a value, for the rule to judge. Everything that keeps us from reading (refused
//! connections, timeouts, HTTP errors, answers that are not Prometheus JSON, a query
//! Prometheus rejects) is a source error, never a breach. So is a query that returns
//! several series where one value is expected: that is a configuration problem and the
//! text says so, identically on every sample so the daemon logs it once.
//!
//! It must not retry, decide, or leak secrets: credentials go only into the request's
//! `Authorization` header (marked sensitive), and details never quote the URL's
//! user name or password. Every sample is bounded by the signal's timeout, which is
//! also passed to Prometheus as the query's evaluation timeout.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use base64::Engine as _;
use prometheus_http_query::Client;
use prometheus_http_query::error::PrometheusError;
use prometheus_http_query::response::{Data, PromqlResult};
use reqwest::header::{AUTHORIZATION, HeaderValue};
use secrecy::ExposeSecret;
use serde::Deserialize;

use super::{DETAIL_LIMIT, clip};
use crate::config::units::format_duration;
use crate::config::{HttpAuth, PromQuery, PrometheusSpec};
use crate::engine::{Measure, ReadingState, Ts};

/// The most answer a sample reads. A one-value query answers in a few hundred bytes;
/// a larger answer is a query that selects far too much.
pub const BODY_LIMIT: usize = 4 * 1024 * 1024;

/// The most answer a range query reads: two series of 11,000 points fit many times over.
pub const RANGE_BODY_LIMIT: usize = 64 * 1024 * 1024;

/// The most steps Prometheus evaluates in one range query (its own limit, per series).
pub const MAX_RANGE_POINTS: u64 = 11_000;

/// The label that marks the error count in the answer to the error-rate query.
const PART_LABEL: &str = "rearguard_part";

/// A configured Prometheus signal, ready to be sampled.
#[derive(Clone)]
pub struct PrometheusSource {
    /// The client and credentials, or why they could not be set up (a bad `ca_file`):
    /// `new` cannot fail, so that reason becomes every sample's source error.
    setup: Result<Setup, String>,
    promql: String,
    kind: Kind,
    timeout: Duration,
    url: reqwest::Url,
}

#[derive(Clone)]
struct Setup {
    client: Client,
    authorization: Option<HeaderValue>,
}

/// How an answer is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// The request count and the labelled error count.
    Rate,
    /// One value.
    Number,
}

impl fmt::Debug for PrometheusSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrometheusSource")
            .field("url", &crate::http::redacted(&self.url))
            .field("promql", &self.promql)
            .field("timeout", &self.timeout)
            .field("problem", &self.setup.as_ref().err())
            .finish()
    }
}

impl PrometheusSource {
    /// A source whose every sample, connection and body included, is bounded by
    /// `timeout`. Problems with the TLS settings or credentials are reported by
    /// [`sample`](Self::sample) as source errors.
    pub fn new(spec: &PrometheusSpec, timeout: Duration) -> PrometheusSource {
        let (promql, kind) = promql(&spec.query, spec.window);
        PrometheusSource {
            setup: setup(spec),
            promql,
            kind,
            timeout,
            url: spec.url.clone(),
        }
    }

    /// The PromQL this source sends.
    pub fn promql(&self) -> &str {
        &self.promql
    }

    /// Runs the query once and maps the answer to a reading state.
    pub async fn sample(&self) -> ReadingState {
        let setup = match &self.setup {
            Ok(setup) => setup,
            Err(reason) => return ReadingState::SourceError(clip(reason, DETAIL_LIMIT)),
        };
        let data = match tokio::time::timeout(self.timeout, self.query(setup)).await {
            Ok(Ok(data)) => data,
            Ok(Err(detail)) => {
                return ReadingState::SourceError(clip(&self.scrub(detail), DETAIL_LIMIT));
            }
            Err(_) => return ReadingState::SourceError(self.no_answer()),
        };
        match self.kind {
            Kind::Rate => rate_reading(data),
            Kind::Number => number_reading(data),
        }
    }

    async fn query(&self, setup: &Setup) -> Result<Data, String> {
        let mut query = setup
            .client
            .query(&self.promql)
            .timeout(server_timeout(self.timeout));
        if let Some(value) = &setup.authorization {
            query = query.header(AUTHORIZATION, value.clone());
        }
        self.answer(query.get_raw().await, BODY_LIMIT).await
    }

    /// Runs the query as a range query over `[start, end]` (Unix seconds) at `step`, and
    /// maps the answer to one reading state per step, `start`, `start + step`, ... up to
    /// `end`, exactly as [`sample`](Self::sample) maps an instant answer: a step at which
    /// the query has no point is no data. `step` is whole milliseconds, at least one, and
    /// the range at most [`MAX_RANGE_POINTS`] steps: split longer ranges.
    ///
    /// Everything that keeps the query from running (the request, the answer, a query
    /// Prometheus rejects) is an error rather than a state, with the same text a sample
    /// would carry; so is `timeout` passing without an answer.
    pub async fn sample_range(
        &self,
        start: i64,
        end: i64,
        step: Duration,
        timeout: Duration,
    ) -> Result<Vec<(Ts, ReadingState)>, String> {
        let grid = Grid::new(start, end, step)?;
        let setup = self
            .setup
            .as_ref()
            .map_err(|reason| clip(reason, DETAIL_LIMIT))?;
        let mut query = setup
            .client
            .query_range(&self.promql, start, end, grid.step_ms as f64 / 1000.0)
            .timeout(server_timeout(timeout));
        if let Some(value) = &setup.authorization {
            query = query.header(AUTHORIZATION, value.clone());
        }
        let run = async { self.answer(query.get_raw().await, RANGE_BODY_LIMIT).await };
        let data = match tokio::time::timeout(timeout, run).await {
            Ok(Ok(data)) => data,
            Ok(Err(detail)) => return Err(clip(&self.scrub(detail), DETAIL_LIMIT)),
            Err(_) => {
                return Err(format!(
                    "no answer from prometheus within {}",
                    format_duration(timeout)
                ));
            }
        };
        range_states(self.kind, data, &grid)
    }

    /// The query result in a response, or what kept us from it. Reads at most `limit`
    /// bytes of body.
    async fn answer(
        &self,
        response: Result<reqwest::Response, prometheus_http_query::Error>,
        limit: usize,
    ) -> Result<Data, String> {
        let mut response = response.map_err(|e| self.request_error(&e))?;
        let status = response.status();
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| {
            format!(
                "reading the answer failed: {}",
                crate::http::describe_error(&e)
            )
        })? {
            if body.len() + chunk.len() > limit {
                return Err(format!(
                    "the answer is larger than {} MiB: aggregate with sum() or narrow the selector",
                    limit / (1024 * 1024)
                ));
            }
            body.extend_from_slice(&chunk);
        }
        decode(status, &body)
    }

    fn request_error(&self, error: &prometheus_http_query::Error) -> String {
        match error {
            prometheus_http_query::Error::Client(e) => match e.inner() {
                Some(inner) => format!(
                    "prometheus query failed: {}",
                    crate::http::describe_error(inner)
                ),
                None => format!("prometheus query failed: {e}"),
            },
            other => format!("prometheus query failed: {other}"),
        }
    }

    fn no_answer(&self) -> String {
        format!(
            "no answer from prometheus within {}",
            format_duration(self.timeout)
        )
    }

    /// Removes the URL's user name and password from text that may quote the URL.
    fn scrub(&self, text: String) -> String {
        let url = &self.url;
        if url.username().is_empty() && url.password().is_none() {
            return text;
        }
        let text = text.replace(url.as_str(), &crate::http::redacted(url));
        let userinfo = match url.password() {
            Some(password) => format!("{}:{password}@", url.username()),
            None => format!("{}@", url.username()),
        };
        text.replace(&userinfo, "")
    }
}

/// The PromQL of a query, and how its answer is read.
fn promql(query: &PromQuery, window: Duration) -> (String, Kind) {
    let w = range(window);
    match query {
        PromQuery::ErrorRate { requests, errors } => (
            format!(
                "sum(increase({requests}[{w}])) or label_replace(sum(increase({}[{w}])), \"{PART_LABEL}\", \"errors\", \"\", \"\")",
                requests.with(errors)
            ),
            Kind::Rate,
        ),
        PromQuery::Latency {
            histogram,
            quantile,
        } => (
            format!("histogram_quantile({quantile}, sum by (le) (rate({histogram}[{w}])))"),
            Kind::Number,
        ),
        PromQuery::Expr(expr) => (expr.clone(), Kind::Number),
    }
}

/// A range as PromQL writes it: whole seconds, or milliseconds.
fn range(window: Duration) -> String {
    let ms = window.as_millis().max(1);
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// The evaluation timeout sent to Prometheus, in milliseconds: a little less time than
/// we wait, so that a slow evaluation comes back as its own "query timed out" error
/// rather than as no answer.
fn server_timeout(timeout: Duration) -> i64 {
    i64::try_from((timeout.as_millis() * 9 / 10).max(1)).unwrap_or(i64::MAX)
}

fn setup(spec: &PrometheusSpec) -> Result<Setup, String> {
    let http = crate::http::client_with(&spec.tls)?;
    let mut base = spec.url.clone();
    // The client appends `/api/v1/query` to a base path; a trailing slash would double it.
    if base.path().len() > 1 && base.path().ends_with('/') {
        let trimmed = base.path().trim_end_matches('/').to_owned();
        base.set_path(&trimmed);
    }
    let client = Client::from(http, base.as_str())
        .map_err(|e| format!("cannot use the prometheus url: {e}"))?;
    let authorization = match &spec.auth {
        None => None,
        Some(auth) => Some(authorization(auth)?),
    };
    Ok(Setup {
        client,
        authorization,
    })
}

/// The `Authorization` header for the credentials, marked sensitive.
fn authorization(auth: &HttpAuth) -> Result<HeaderValue, String> {
    let text = match auth {
        HttpAuth::Bearer(token) => format!("Bearer {}", token.expose_secret()),
        HttpAuth::Basic { username, password } => format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD
                .encode(format!("{username}:{}", password.expose_secret()))
        ),
    };
    let mut value = HeaderValue::from_str(&text).map_err(|_| {
        "the credentials cannot be sent in an http header (a control character or line break?)"
            .to_owned()
    })?;
    value.set_sensitive(true);
    Ok(value)
}

/// Prometheus's answer envelope.
#[derive(Deserialize)]
#[serde(tag = "status", rename_all = "lowercase")]
enum Answer {
    Success { data: PromqlResult },
    Error(PrometheusError),
}

/// The query result in an answer, or what was wrong with the answer.
fn decode(status: reqwest::StatusCode, body: &[u8]) -> Result<Data, String> {
    match serde_json::from_slice::<Answer>(body) {
        Ok(Answer::Success { data }) => Ok(data.into_inner().0),
        Ok(Answer::Error(e)) if e.is_bad_data() => Err(format!(
            "prometheus rejected the query ({}): {}",
            e.error_type(),
            e.message()
        )),
        Ok(Answer::Error(e)) => Err(format!(
            "prometheus could not run the query ({}): {}",
            e.error_type(),
            e.message()
        )),
        Err(_) if !status.is_success() => Err(format!(
            "prometheus answered {}: {}",
            status_text(status),
            snippet(body)
        )),
        Err(e) => {
            let result_type = serde_json::from_slice::<serde_json::Value>(body)
                .ok()
                .and_then(|v| v.pointer("/data/resultType")?.as_str().map(str::to_owned));
            match result_type {
                Some(t) if t == "string" => {
                    Err("query returned a string, expected one number".to_owned())
                }
                _ => Err(format!(
                    "the answer is not a prometheus query result ({e}): {}",
                    snippet(body)
                )),
            }
        }
    }
}

fn status_text(status: reqwest::StatusCode) -> String {
    match status.canonical_reason() {
        Some(reason) => format!("{} {}", status.as_u16(), reason.to_lowercase()),
        None => status.as_u16().to_string(),
    }
}

/// The start of a body that is not what we expected, on one line.
fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if line.is_empty() {
        "empty body".to_owned()
    } else {
        clip(&line, 120)
    }
}

/// One value: a scalar, or a vector of at most one series.
fn number_reading(data: Data) -> ReadingState {
    match data {
        Data::Scalar(sample) => number_state(&[sample.value()]),
        Data::Vector(series) => {
            let values: Vec<f64> = series.iter().map(|s| s.sample().value()).collect();
            number_state(&values)
        }
        Data::Matrix(_) => ReadingState::SourceError(
            "query returned a range vector, expected one value: drop the [range] or wrap it in a function such as rate()"
                .to_owned(),
        ),
    }
}

/// The state of the values a one-value query returned at one instant, one per series.
fn number_state(values: &[f64]) -> ReadingState {
    let value = match values {
        [] => return ReadingState::NoData,
        [one] => *one,
        many => return several_series(many.len()),
    };
    if value.is_nan() {
        ReadingState::NoData
    } else {
        ReadingState::Value(Measure::Number(value))
    }
}

fn several_series(n: usize) -> ReadingState {
    ReadingState::SourceError(format!(
        "query returned {n} series, expected one: aggregate with sum() or narrow the selector"
    ))
}

/// Errors out of requests from the two series of the error-rate query.
fn rate_reading(data: Data) -> ReadingState {
    let Data::Vector(series) = data else {
        return ReadingState::SourceError(
            "the error-rate query did not return an instant vector".to_owned(),
        );
    };
    let points: Vec<_> = series
        .iter()
        .map(|s| (s.metric(), s.sample().value()))
        .collect();
    rate_state(&points)
}

/// The state of what the error-rate query returned at one instant: each series' labels
/// and value.
fn rate_state(series: &[(&HashMap<String, String>, f64)]) -> ReadingState {
    let (mut requests, mut errors) = (None, None);
    for (labels, value) in series {
        let slot = match labels.get(PART_LABEL).map(String::as_str) {
            Some("errors") if labels.len() == 1 => &mut errors,
            None if labels.is_empty() => &mut requests,
            _ => return several_series(series.len()),
        };
        if slot.replace(*value).is_some() {
            return several_series(series.len());
        }
    }
    let Some(requests) = requests else {
        return ReadingState::NoData;
    };
    let errors = errors.unwrap_or(0.0);
    if requests.is_nan() || errors.is_nan() || requests <= 0.0 {
        return ReadingState::NoData;
    }
    if !requests.is_finite() || !errors.is_finite() {
        return ReadingState::SourceError(
            "the error-rate query returned an infinite count".to_owned(),
        );
    }
    ReadingState::Value(Measure::Rate { errors, requests })
}

/// The steps of a range query, in milliseconds since the epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Grid {
    start_ms: u64,
    step_ms: u64,
    points: u64,
}

impl Grid {
    fn new(start: i64, end: i64, step: Duration) -> Result<Grid, String> {
        let step_ms = u64::try_from(step.as_millis()).unwrap_or(u64::MAX);
        if step_ms == 0 || !step.subsec_nanos().is_multiple_of(1_000_000) {
            return Err(format!(
                "the step must be whole milliseconds, at least 1ms, got {step:?}"
            ));
        }
        let (Ok(start_s), Ok(end_s)) = (u64::try_from(start), u64::try_from(end)) else {
            return Err("the range must not begin before 1970".to_owned());
        };
        if end_s < start_s {
            return Err(format!("the range ends ({end}) before it begins ({start})"));
        }
        let points = (end_s - start_s) * 1000 / step_ms + 1;
        if points > MAX_RANGE_POINTS {
            return Err(format!(
                "the range has {points} steps, more than the {MAX_RANGE_POINTS} prometheus evaluates in one query"
            ));
        }
        Ok(Grid {
            start_ms: start_s * 1000,
            step_ms,
            points,
        })
    }

    /// The index of the step at `ms`, if it is one.
    fn index(&self, ms: u64) -> Option<usize> {
        let offset = ms.checked_sub(self.start_ms)?;
        let i = offset / self.step_ms;
        (offset % self.step_ms == 0 && i < self.points).then_some(i as usize)
    }

    fn at(&self, i: usize) -> Ts {
        Ts(self.start_ms + i as u64 * self.step_ms)
    }
}

/// One state per step of `grid` from a range query's answer: the series' points at each
/// step, mapped as an instant answer with those points would be.
fn range_states(kind: Kind, data: Data, grid: &Grid) -> Result<Vec<(Ts, ReadingState)>, String> {
    let series = match data {
        Data::Matrix(series) => series,
        Data::Vector(_) | Data::Scalar(_) => {
            return Err("the range query did not return a range vector".to_owned());
        }
    };
    // For each step, the series (by index) with a point there and its value.
    let mut at: Vec<Vec<(usize, f64)>> = vec![Vec::new(); grid.points as usize];
    for (i, s) in series.iter().enumerate() {
        for p in s.samples() {
            let ms = (p.timestamp() * 1000.0).round();
            if ms < 0.0 {
                continue;
            }
            if let Some(step) = grid.index(ms as u64) {
                at[step].push((i, p.value()));
            }
        }
    }
    Ok(at
        .iter()
        .enumerate()
        .map(|(step, points)| {
            let state = match kind {
                Kind::Number => {
                    let values: Vec<f64> = points.iter().map(|(_, v)| *v).collect();
                    number_state(&values)
                }
                Kind::Rate => {
                    let labelled: Vec<_> = points
                        .iter()
                        .map(|(i, v)| (series[*i].metric(), *v))
                        .collect();
                    rate_state(&labelled)
                }
            };
            (grid.at(step), state)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::selector::{parse_matchers, parse_selector};

    fn decoded(status: u16, body: &str) -> Result<Data, String> {
        decode(
            reqwest::StatusCode::from_u16(status).unwrap(),
            body.as_bytes(),
        )
    }

    fn vector(series: &[(&str, &str)]) -> Data {
        let result: Vec<String> = series
            .iter()
            .map(|(labels, value)| {
                format!(r#"{{"metric":{{{labels}}},"value":[1700000000.5,"{value}"]}}"#)
            })
            .collect();
        let body = format!(
            r#"{{"status":"success","data":{{"resultType":"vector","result":[{}]}}}}"#,
            result.join(",")
        );
        decoded(200, &body).unwrap()
    }

    #[test]
    fn built_in_signals_render_to_promql() {
        let requests = parse_selector(r#"http_requests_total{job="api"}"#).unwrap();
        let errors = parse_matchers(r#"code=~"5..""#).unwrap();
        let (q, kind) = promql(
            &PromQuery::ErrorRate { requests, errors },
            Duration::from_secs(300),
        );
        assert_eq!(kind, Kind::Rate);
        assert_eq!(
            q,
            r#"sum(increase(http_requests_total{job="api"}[300s])) or label_replace(sum(increase(http_requests_total{job="api",code=~"5.."}[300s])), "rearguard_part", "errors", "", "")"#
        );
        let histogram = parse_selector("http_request_duration_seconds_bucket").unwrap();
        let (q, kind) = promql(
            &PromQuery::Latency {
                histogram,
                quantile: 0.95,
            },
            Duration::from_millis(1500),
        );
        assert_eq!(kind, Kind::Number);
        assert_eq!(
            q,
            "histogram_quantile(0.95, sum by (le) (rate(http_request_duration_seconds_bucket[1500ms])))"
        );
        let (q, _) = promql(&PromQuery::Expr("max(up)".into()), Duration::from_secs(60));
        assert_eq!(q, "max(up)");
    }

    #[test]
    fn error_rate_answers_map_to_rates_and_no_data() {
        let rate =
            |errors: f64, requests: f64| ReadingState::Value(Measure::Rate { errors, requests });
        assert_eq!(
            rate_reading(vector(&[
                ("", "100"),
                (r#""rearguard_part":"errors""#, "8")
            ])),
            rate(8.0, 100.0)
        );
        assert_eq!(
            rate_reading(vector(&[("", "100")])),
            rate(0.0, 100.0),
            "no error series"
        );
        assert_eq!(rate_reading(vector(&[("", "0")])), ReadingState::NoData);
        assert_eq!(rate_reading(vector(&[])), ReadingState::NoData);
        assert_eq!(rate_reading(vector(&[("", "NaN")])), ReadingState::NoData);
        assert!(matches!(
            rate_reading(vector(&[("", "1"), (r#""job":"a""#, "2"), (r#""job":"b""#, "3")])),
            ReadingState::SourceError(e) if e.starts_with("query returned 3 series")
        ));
    }

    #[test]
    fn number_answers_map_to_values_no_data_and_configuration_errors() {
        assert_eq!(
            number_reading(vector(&[("", "0.25")])),
            ReadingState::Value(Measure::Number(0.25))
        );
        assert_eq!(
            number_reading(vector(&[("", "+Inf")])),
            ReadingState::Value(Measure::Number(f64::INFINITY))
        );
        assert_eq!(number_reading(vector(&[("", "NaN")])), ReadingState::NoData);
        assert_eq!(number_reading(vector(&[])), ReadingState::NoData);
        assert_eq!(
            number_reading(vector(&[(r#""a":"1""#, "1"), (r#""a":"2""#, "2")])),
            ReadingState::SourceError(
                "query returned 2 series, expected one: aggregate with sum() or narrow the selector".into()
            )
        );
        let scalar = decoded(
            200,
            r#"{"status":"success","data":{"resultType":"scalar","result":[1700000000,"3"]}}"#,
        )
        .unwrap();
        assert_eq!(
            number_reading(scalar),
            ReadingState::Value(Measure::Number(3.0))
        );
    }

    fn matrix(series: &[(&str, &[(f64, &str)])]) -> Data {
        let result: Vec<String> = series
            .iter()
            .map(|(labels, points)| {
                let values: Vec<String> = points
                    .iter()
                    .map(|(t, v)| format!(r#"[{t},"{v}"]"#))
                    .collect();
                format!(
                    r#"{{"metric":{{{labels}}},"values":[{}]}}"#,
                    values.join(",")
                )
            })
            .collect();
        let body = format!(
            r#"{{"status":"success","data":{{"resultType":"matrix","result":[{}]}}}}"#,
            result.join(",")
        );
        decoded(200, &body).unwrap()
    }

    #[test]
    fn range_answers_map_each_step_like_an_instant_answer_and_missing_points_to_no_data() {
        let grid = Grid::new(100, 102, Duration::from_millis(500)).unwrap();
        assert_eq!(grid.points, 5);
        let data = matrix(&[
            (
                "",
                &[(100.5, "10"), (101.0, "10"), (101.5, "0"), (102.0, "20")],
            ),
            (
                r#""rearguard_part":"errors""#,
                &[(101.0, "4"), (102.0, "NaN")],
            ),
        ]);
        let states = range_states(Kind::Rate, data, &grid).unwrap();
        let rate =
            |errors: f64, requests: f64| ReadingState::Value(Measure::Rate { errors, requests });
        assert_eq!(
            states,
            vec![
                (Ts(100_000), ReadingState::NoData),
                (Ts(100_500), rate(0.0, 10.0)),
                (Ts(101_000), rate(4.0, 10.0)),
                (Ts(101_500), ReadingState::NoData),
                (Ts(102_000), ReadingState::NoData),
            ]
        );
        let data = matrix(&[
            (r#""a":"1""#, &[(100.0, "1"), (101.0, "3")]),
            (r#""a":"2""#, &[(101.0, "2"), (101.7, "9")]),
        ]);
        let states = range_states(Kind::Number, data, &grid).unwrap();
        assert_eq!(
            states[0],
            (Ts(100_000), ReadingState::Value(Measure::Number(1.0)))
        );
        assert_eq!(states[1], (Ts(100_500), ReadingState::NoData));
        assert_eq!(states[2].1, several_series(2));
        assert_eq!(
            states[3].1,
            ReadingState::NoData,
            "a point off the steps is ignored"
        );
        assert!(range_states(Kind::Number, vector(&[("", "1")]), &grid).is_err());
    }

    #[test]
    fn a_range_beyond_the_prometheus_limit_or_with_a_bad_step_is_refused() {
        assert!(Grid::new(0, 10, Duration::from_millis(1)).unwrap().points == 10_001);
        assert!(
            Grid::new(0, 11, Duration::from_millis(1))
                .unwrap_err()
                .contains("11000")
        );
        assert!(Grid::new(0, 10, Duration::ZERO).is_err());
        assert!(Grid::new(10, 0, Duration::from_secs(1)).is_err());
    }

    #[test]
    fn answers_that_are_not_query_results_say_what_they_are() {
        let e = decoded(502, "<html>\n<body>Bad Gateway</body></html>").unwrap_err();
        assert_eq!(
            e,
            "prometheus answered 502 bad gateway: <html> <body>Bad Gateway</body></html>"
        );
        let e = decoded(200, "not json").unwrap_err();
        assert!(
            e.starts_with("the answer is not a prometheus query result ("),
            "{e}"
        );
        let e = decoded(
            200,
            r#"{"status":"success","data":{"resultType":"string","result":[1,"x"]}}"#,
        )
        .unwrap_err();
        assert_eq!(e, "query returned a string, expected one number");
        let e = decoded(
            503,
            r#"{"status":"error","errorType":"timeout","error":"query timed out in expression evaluation"}"#,
        )
        .unwrap_err();
        assert_eq!(
            e,
            "prometheus could not run the query (timeout): query timed out in expression evaluation"
        );
    }
}
