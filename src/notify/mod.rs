//! Notifiers: where messages for people go. A closed enum, one file per variant.
//!
//! The engine decides who is told what ([`crate::engine::Notification`]); the daemon
//! turns each notification into one [`Message`] per notifier, writes it to the outbox,
//! and the outbox calls [`Sink::send`] until the provider accepts it. A sink renders the
//! message for its provider at send time, within the provider's documented limits, and
//! classifies the answer as a [`Delivery`]: accepted, worth retrying, or refused for
//! good (a configuration problem no retry fixes).
//!
//! Sinks never log or return a secret: errors from the HTTP client are stripped of their
//! URL (Slack and Teams webhook URLs are secrets), answers are bounded in size, and a
//! sink whose secret travels in the request scrubs it from its answers with `redact`.
//!
//! Besides the enum, this module holds what several sinks share: the request and answer
//! path ([`send_request`], [`classify`]), URL joining (`endpoint`), secret scrubbing
//! (`redact`) and JSON shrinking to a size limit (`shrink`).

pub mod email;
pub mod outbox;
pub mod pagerduty;
pub mod slack;
pub mod statuspage;
pub mod teams;
pub mod text;
pub mod webhook;

use std::time::Duration;

use serde_json::Value;

use crate::config::{Notifier, NotifierKind, Occasion};
use crate::engine::Facts;

/// One message for one notifier: what the outbox stores and a sink renders.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Message {
    /// Unique per notification and notifier, stable across retries and restarts: the
    /// idempotency key where a provider takes one (the generic webhook's `id`).
    pub id: String,
    /// A `rearguard notify-test` message, marked as such in every rendering.
    pub test: bool,
    pub incident: String,
    pub occasion: Occasion,
    /// The escalation level's name; `None` for acknowledgement, resolution and tests.
    pub level: Option<String>,
    /// One line: target, what happened, rules, latest decision, incident id.
    pub summary: String,
    pub facts: Facts,
}

impl Message {
    /// The clearly marked message `rearguard notify-test` sends: realistic facts, every
    /// field filled, so that a channel shows how a real incident will look.
    pub fn test(notifier: &str, now_ms: u64) -> Message {
        use crate::engine::{RuleFact, StepFact};
        let incident = format!("rearguard-test-{notifier}-{now_ms}");
        Message {
            id: format!("{incident}-1"),
            test: true,
            incident: incident.clone(),
            occasion: Occasion::RollbackStarted,
            level: None,
            summary: format!(
                "[TEST] example-service: rollback started [error-rate]: a test of notifier {notifier} (incident {incident})"
            ),
            facts: Facts {
                target: "example-service".to_owned(),
                state: "acting".to_owned(),
                opened_at_ms: now_ms.saturating_sub(12_000),
                at_ms: now_ms,
                rules: vec![RuleFact {
                    name: "error-rate".to_owned(),
                    signal: "example-errors".to_owned(),
                    condition: "> 5% for 10s".to_owned(),
                    phase: "firing".to_owned(),
                    evidence:
                        "8.00% (400 of 5000 requests) over 1m, breaching for 12s; threshold > 5%"
                            .to_owned(),
                }],
                blind_signals: Vec::new(),
                plan: Some("example-plan".to_owned()),
                from_revision: Some("r42".to_owned()),
                to_revision: Some("r41".to_owned()),
                steps: vec![StepFact {
                    name: "switch release".to_owned(),
                    action: "release_switch".to_owned(),
                    attempt: 1,
                    ok: true,
                    duration_ms: 40,
                    error: None,
                }],
                reason: None,
                next: "nothing: this is a test, no incident exists".to_owned(),
            },
        }
    }
}

/// What a provider made of one delivery attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum Delivery {
    /// Accepted. `reference` is what later messages of the same incident on the same
    /// notifier need (a Slack thread's `ts`, a Statuspage incident id); `answer` is a
    /// short description of the provider's answer, for logs and `notify-test`.
    Accepted {
        reference: Option<String>,
        answer: String,
    },
    /// Not accepted now (timeout, refused connection, 429, 5xx); try again after
    /// `after` (from `Retry-After`) or the outbox's backoff.
    Retry {
        after: Option<Duration>,
        reason: String,
    },
    /// Refused in a way no retry fixes (bad token, unknown channel, invalid body): a
    /// configuration error, raised once.
    Rejected { reason: String },
}

/// A notifier ready to send.
#[derive(Debug)]
pub enum Sink {
    /// Written to the daemon's log; always accepted.
    Log,
    Slack(slack::Slack),
    PagerDuty(pagerduty::PagerDuty),
    Teams(teams::Teams),
    Statuspage(statuspage::Statuspage),
    Email(email::Email),
    Webhook(webhook::Webhook),
}

impl Sink {
    /// Builds the sink of a configured notifier. Fails only when the settings cannot be
    /// used at all (an email relay that is not a valid host name).
    pub fn new(notifier: &Notifier, client: &reqwest::Client) -> Result<Sink, String> {
        let timeout = notifier.timeout;
        Ok(match &notifier.kind {
            NotifierKind::Log => Sink::Log,
            NotifierKind::Slack(spec) => Sink::Slack(slack::Slack::new(spec, client, timeout)),
            NotifierKind::PagerDuty(spec) => {
                Sink::PagerDuty(pagerduty::PagerDuty::new(spec, client, timeout))
            }
            NotifierKind::Teams(spec) => Sink::Teams(teams::Teams::new(spec, client, timeout)),
            NotifierKind::Statuspage(spec) => {
                Sink::Statuspage(statuspage::Statuspage::new(spec, client, timeout))
            }
            NotifierKind::Email(spec) => Sink::Email(email::Email::new(spec, timeout)?),
            NotifierKind::Webhook(spec) => {
                Sink::Webhook(webhook::Webhook::new(spec, client, timeout))
            }
        })
    }

    /// Delivers one message. `thread` is the reference an earlier accepted message of the
    /// same incident returned on this sink, if any.
    pub async fn send(&self, msg: &Message, thread: Option<&str>) -> Delivery {
        match self {
            Sink::Log => {
                log_message(msg);
                Delivery::Accepted {
                    reference: None,
                    answer: "written to the log".to_owned(),
                }
            }
            Sink::Slack(s) => s.send(msg, thread).await,
            Sink::PagerDuty(s) => s.send(msg, thread).await,
            Sink::Teams(s) => s.send(msg, thread).await,
            Sink::Statuspage(s) => s.send(msg, thread).await,
            Sink::Email(s) => s.send(msg, thread).await,
            Sink::Webhook(s) => s.send(msg, thread).await,
        }
    }
}

fn log_message(msg: &Message) {
    log(&msg.incident, msg.occasion, &msg.summary);
}

/// Writes a notification to the log: good news at info, the rest at warn.
pub fn log(incident: &str, occasion: Occasion, summary: &str) {
    if good_news(occasion) {
        tracing::info!(incident = %incident, occasion = occasion.name(), "{summary}")
    } else {
        tracing::warn!(incident = %incident, occasion = occasion.name(), "{summary}")
    }
}

/// The log's one line for a notification that no log notifier writes: as [`log`] writes
/// it, with the names of the notifiers it was queued for.
pub fn log_sent(incident: &str, occasion: Occasion, summary: &str, notifiers: &str) {
    if good_news(occasion) {
        tracing::info!(incident = %incident, occasion = occasion.name(), notifiers, "{summary}")
    } else {
        tracing::warn!(incident = %incident, occasion = occasion.name(), notifiers, "{summary}")
    }
}

fn good_news(occasion: Occasion) -> bool {
    matches!(
        occasion,
        Occasion::Resolved | Occasion::RollbackSucceeded | Occasion::Acknowledged
    )
}

/// The longest answer body kept in a [`Delivery`] description.
const ANSWER_LIMIT: usize = 300;

/// Classifies an HTTP answer the common way: 2xx accepted; 408, 420, 425, 429 and 5xx
/// worth retrying, after their `Retry-After` when they give one; any other status refused
/// for good. 420 is Statuspage's rate limit ("enhance your calm"), answered like a 429.
/// `body` is the answer's body, kept short in the description.
pub fn classify(
    status: reqwest::StatusCode,
    headers: &reqwest::header::HeaderMap,
    body: &str,
) -> Delivery {
    let said = text::truncate(body.trim(), ANSWER_LIMIT);
    let answer = if said.is_empty() {
        format!("HTTP {}", status.as_u16())
    } else {
        format!("HTTP {}: {said}", status.as_u16())
    };
    if status.is_success() {
        return Delivery::Accepted {
            reference: None,
            answer,
        };
    }
    let retryable = status.is_server_error() || matches!(status.as_u16(), 408 | 420 | 425 | 429);
    if retryable {
        Delivery::Retry {
            after: retry_after(headers),
            reason: answer,
        }
    } else {
        Delivery::Rejected { reason: answer }
    }
}

/// The `Retry-After` header as a delay: seconds, or an HTTP date (delay from now) in
/// any of the three forms HTTP allows (httpdate), or an RFC 3339 time, which some
/// providers send instead.
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value)
        .or_else(|_| humantime::parse_rfc3339_weak(value))
        .ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// A transport failure (timeout, refused connection, TLS) as a retry, described without
/// the request's URL, which may be a secret.
pub fn transport_error(error: reqwest::Error) -> Delivery {
    Delivery::Retry {
        after: None,
        reason: crate::http::describe_error(&error.without_url()),
    }
}

/// Sends one prepared request within `timeout` and classifies the answer with
/// [`classify`]. The body of the answer is read (bounded by the same timeout) so that
/// callers that need it (Slack's `ok`, PagerDuty's errors) get it back.
pub async fn send_request(
    request: reqwest::RequestBuilder,
    timeout: Duration,
) -> (Delivery, Option<String>) {
    match exchange(request, timeout).await {
        Ok((status, headers, body)) => (classify(status, &headers, &body), Some(body)),
        Err(delivery) => (delivery, None),
    }
}

/// Sends one prepared request within `timeout` and returns the answer's status, headers
/// and body, for a sink that reads more of a 2xx answer than [`send_request`] gives back
/// (Statuspage quotes the status next to the incident id). A timeout or a transport
/// failure is already the retry it amounts to.
pub(crate) async fn exchange(
    request: reqwest::RequestBuilder,
    timeout: Duration,
) -> Result<(reqwest::StatusCode, reqwest::header::HeaderMap, String), Delivery> {
    let attempt = async {
        let response = request.send().await?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.text().await?;
        Ok::<_, reqwest::Error>((status, headers, body))
    };
    match tokio::time::timeout(timeout, attempt).await {
        Err(_) => Err(Delivery::Retry {
            after: None,
            reason: format!(
                "no answer within {}",
                crate::config::units::format_duration(timeout)
            ),
        }),
        Ok(Err(e)) => Err(transport_error(e)),
        Ok(Ok(answered)) => Ok(answered),
    }
}

/// `base` with `segments` appended as path segments (percent-encoded), whether or not
/// its path ends in `/`: `https://api.statuspage.io/v1` and `["pages", "p"]` give
/// `https://api.statuspage.io/v1/pages/p`. `None` for a URL that cannot have a path.
pub(crate) fn endpoint(base: &reqwest::Url, segments: &[&str]) -> Option<reqwest::Url> {
    let mut url = base.clone();
    url.path_segments_mut()
        .ok()?
        .pop_if_empty()
        .extend(segments);
    Some(url)
}

/// What replaces a secret in a description.
const REDACTED: &str = "[redacted]";

/// The shortest cut-off beginning of a secret that is still scrubbed.
const SHORTEST_PART: usize = 4;

/// `delivery` with every occurrence of `secret` in its description replaced, including
/// the beginning of one that a length limit cut before its `…`. Providers may echo what
/// they were sent, and a description ends up in logs.
pub(crate) fn redact(delivery: Delivery, secret: &str) -> Delivery {
    match delivery {
        Delivery::Accepted { reference, answer } => Delivery::Accepted {
            reference,
            answer: scrub(&answer, secret),
        },
        Delivery::Retry { after, reason } => Delivery::Retry {
            after,
            reason: scrub(&reason, secret),
        },
        Delivery::Rejected { reason } => Delivery::Rejected {
            reason: scrub(&reason, secret),
        },
    }
}

/// `description` with `secret` replaced by [`REDACTED`], and a cut-off beginning of it
/// (at least [`SHORTEST_PART`] bytes) before a final `…` as well.
fn scrub(description: &str, secret: &str) -> String {
    if secret.is_empty() {
        return description.to_owned();
    }
    let out = description.replace(secret, REDACTED);
    let Some(head) = out.strip_suffix(text::ELLIPSIS) else {
        return out;
    };
    let part = (SHORTEST_PART.min(secret.len())..secret.len())
        .rev()
        .find(|&n| secret.is_char_boundary(n) && head.ends_with(&secret[..n]));
    match part {
        Some(n) => format!("{}{REDACTED}{}", &head[..head.len() - n], text::ELLIPSIS),
        None => out,
    }
}

/// Shrinks `value` until `fits` holds: cuts every string to fewer and fewer bytes, then
/// shortens every list. Keys and types are kept, so a receiver can still parse it.
/// Returns whether it fits.
pub(crate) fn shrink(value: &mut Value, fits: impl Fn(&Value) -> bool) -> bool {
    if fits(value) {
        return true;
    }
    for max in [16_384, 4096, 1024, 256, 64] {
        cut_strings(value, max);
        if fits(value) {
            return true;
        }
    }
    for max in [100, 20, 5, 1] {
        cut_lists(value, max);
        if fits(value) {
            return true;
        }
    }
    false
}

/// Cuts every string in `value` to at most `max` bytes, on a character boundary.
fn cut_strings(value: &mut Value, max: usize) {
    match value {
        Value::String(s) if s.len() > max => *s = text::truncate_bytes(s, max),
        Value::Array(items) => items.iter_mut().for_each(|v| cut_strings(v, max)),
        Value::Object(map) => map.values_mut().for_each(|v| cut_strings(v, max)),
        _ => {}
    }
}

/// Shortens every list in `value` to at most `max` items.
fn cut_lists(value: &mut Value, max: usize) {
    match value {
        Value::Array(items) => {
            items.truncate(max);
            items.iter_mut().for_each(|v| cut_lists(v, max));
        }
        Value::Object(map) => map.values_mut().for_each(|v| cut_lists(v, max)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::StatusCode;
    use reqwest::header::{HeaderMap, HeaderValue, RETRY_AFTER};

    fn headers(retry_after: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, HeaderValue::from_str(retry_after).unwrap());
        h
    }

    #[test]
    fn answers_are_classified_by_status() {
        let none = HeaderMap::new();
        assert!(matches!(
            classify(StatusCode::ACCEPTED, &none, "{}"),
            Delivery::Accepted { .. }
        ));
        for code in [408, 420, 425, 429, 500, 502, 503] {
            let status = StatusCode::from_u16(code).unwrap();
            assert!(
                matches!(classify(status, &none, ""), Delivery::Retry { .. }),
                "{code}"
            );
        }
        // Statuspage's own rate limit waits as long as it asks, like a 429.
        assert_eq!(
            classify(StatusCode::from_u16(420).unwrap(), &headers("2"), ""),
            Delivery::Retry {
                after: Some(Duration::from_secs(2)),
                reason: "HTTP 420".to_owned()
            }
        );
        for code in [400, 401, 403, 404, 410, 413, 422] {
            let status = StatusCode::from_u16(code).unwrap();
            assert!(
                matches!(classify(status, &none, "bad"), Delivery::Rejected { .. }),
                "{code}"
            );
        }
    }

    #[test]
    fn retry_after_in_seconds_and_as_a_date() {
        assert_eq!(
            classify(StatusCode::TOO_MANY_REQUESTS, &headers("7"), ""),
            Delivery::Retry {
                after: Some(Duration::from_secs(7)),
                reason: "HTTP 429".to_owned()
            }
        );
        // A date in the past means "now".
        assert_eq!(
            retry_after(&headers("Wed, 21 Oct 2015 07:28:00 GMT")),
            Some(Duration::ZERO)
        );
        // HTTP's obsolete forms too: RFC 850 and asctime.
        for past in ["Sunday, 06-Nov-94 08:49:37 GMT", "Sun Nov  6 08:49:37 1994"] {
            assert_eq!(retry_after(&headers(past)), Some(Duration::ZERO), "{past}");
        }
        let years_70 = Duration::from_secs(70 * 365 * 86_400);
        for later in ["Fri, 01 Jan 2100 00:00:00 GMT", "2100-01-01T00:00:00Z"] {
            let after = retry_after(&headers(later));
            assert!(after.is_some_and(|d| d > years_70), "{later}: {after:?}");
        }
        assert_eq!(retry_after(&headers("soon")), None);
        assert_eq!(retry_after(&headers("Fri, 32 Jan 2100 00:00:00 GMT")), None);
    }

    #[test]
    fn long_answers_are_cut_in_descriptions() {
        let body = "é".repeat(5000);
        let Delivery::Rejected { reason } =
            classify(StatusCode::BAD_REQUEST, &HeaderMap::new(), &body)
        else {
            panic!("a 400 is refused")
        };
        assert!(reason.chars().count() < ANSWER_LIMIT + 20, "{reason}");
    }

    #[test]
    fn endpoints_keep_the_base_path() {
        fn check(base: &str, segments: &[&str], expected: &str) {
            let base = reqwest::Url::parse(base).unwrap();
            assert_eq!(endpoint(&base, segments).unwrap().as_str(), expected);
        }
        check(
            "https://api.statuspage.io/v1",
            &["pages", "p1", "incidents"],
            "https://api.statuspage.io/v1/pages/p1/incidents",
        );
        check(
            "https://api.statuspage.io/v1/",
            &["pages", "p1", "incidents", "i9"],
            "https://api.statuspage.io/v1/pages/p1/incidents/i9",
        );
        check(
            "https://events.pagerduty.com",
            &["v2", "enqueue"],
            "https://events.pagerduty.com/v2/enqueue",
        );
        // Ids are path segments, never path syntax.
        check(
            "http://h/v1",
            &["pages", "a/../b", "incidents"],
            "http://h/v1/pages/a%2F..%2Fb/incidents",
        );
        assert_eq!(
            endpoint(
                &reqwest::Url::parse("mailto:x@example.com").unwrap(),
                &["v2"]
            ),
            None
        );
    }

    #[test]
    fn secrets_are_scrubbed_whole_and_cut() {
        fn check(description: &str, expected: &str) {
            let d = redact(
                Delivery::Rejected {
                    reason: description.to_owned(),
                },
                "s3cr3t-key",
            );
            assert_eq!(
                d,
                Delivery::Rejected {
                    reason: expected.to_owned()
                }
            );
        }
        check(
            "HTTP 400: bad key s3cr3t-key",
            "HTTP 400: bad key [redacted]",
        );
        check("HTTP 400: key s3cr3t…", "HTTP 400: key [redacted]…");
        check("HTTP 400: key s3…", "HTTP 400: key s3…");
        check("HTTP 400: nothing", "HTTP 400: nothing");
    }

    #[test]
    fn shrinking_cuts_strings_before_lists_and_keeps_the_shape() {
        let size = |v: &Value| serde_json::to_vec(v).unwrap().len();
        let long = serde_json::json!({"a": "é".repeat(10_000), "b": vec!["x"; 500]});
        let mut value = long.clone();
        assert!(shrink(&mut value, |v| size(v) <= 8_000));
        assert_eq!(value["b"].as_array().unwrap().len(), 500);
        assert!(value["a"].as_str().unwrap().ends_with(text::ELLIPSIS));
        let mut value = long.clone();
        assert!(shrink(&mut value, |v| size(v) <= 200));
        assert!(size(&value) <= 200);
        assert!(value["a"].is_string() && value["b"].is_array());
        let mut value = long;
        assert!(!shrink(&mut value, |_| false));
    }
}
