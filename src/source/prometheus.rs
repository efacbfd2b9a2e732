//! The Prometheus source: one instant query per sample against a Prometheus server's
//! HTTP API, sent with prometheus-http-query over rearguard's own reqwest client.
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
use crate::engine::{Measure, ReadingState};

/// The most answer a sample reads. A one-value query answers in a few hundred bytes;
/// a larger answer is a query that selects far too much.
pub const BODY_LIMIT: usize = 4 * 1024 * 1024;

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
        // Prometheus gets a little less time than we wait, so that a slow evaluation
        // comes back as its own "query timed out" error rather than as no answer.
        let server_timeout = (self.timeout.as_millis() * 9 / 10).max(1);
        let mut query = setup
            .client
            .query(&self.promql)
            .timeout(i64::try_from(server_timeout).unwrap_or(i64::MAX));
        if let Some(value) = &setup.authorization {
            query = query.header(AUTHORIZATION, value.clone());
        }
        let mut response = query.get_raw().await.map_err(|e| self.request_error(&e))?;
        let status = response.status();
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| {
            format!(
                "reading the answer failed: {}",
                crate::http::describe_error(&e)
            )
        })? {
            if body.len() + chunk.len() > BODY_LIMIT {
                return Err(
                    "the answer is larger than 4 MiB: aggregate with sum() or narrow the selector"
                        .to_owned(),
                );
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
    let value = match data {
        Data::Scalar(sample) => sample.value(),
        Data::Vector(series) => match series.as_slice() {
            [] => return ReadingState::NoData,
            [one] => one.sample().value(),
            many => return several_series(many.len()),
        },
        Data::Matrix(_) => {
            return ReadingState::SourceError(
                "query returned a range vector, expected one value: drop the [range] or wrap it in a function such as rate()"
                    .to_owned(),
            );
        }
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
    let (mut requests, mut errors) = (None, None);
    for s in &series {
        let slot = match s.metric().get(PART_LABEL).map(String::as_str) {
            Some("errors") if s.metric().len() == 1 => &mut errors,
            None if s.metric().is_empty() => &mut requests,
            _ => return several_series(series.len()),
        };
        if slot.replace(s.sample().value()).is_some() {
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
