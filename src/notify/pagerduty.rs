//! PagerDuty through the Events API v2: one alert per incident, keyed by the incident id.
//!
//! The incident id is the `dedup_key` of every event, so that triggers of later
//! occasions update the same alert and acknowledgement and resolution close it. A
//! rollback that starts is not an alert but a change event, which PagerDuty shows next
//! to the service's alerts. Rendering keeps the documented limits (summary of 1024
//! characters, 512 KB per event) by cutting the summary and shrinking the details.
//!
//! The routing key is a secret: it goes in the body only, and is scrubbed from every
//! answer kept in a [`Delivery`].

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};

use super::{Delivery, Message, text};
use crate::config::{Occasion, PagerDutySpec};

/// PagerDuty's limit on `payload.summary`, in characters.
pub const SUMMARY_LIMIT: usize = 1024;

/// PagerDuty's limit on a whole event: 512 KB, counted here as 512,000 bytes of JSON so
/// that either reading of "KB" holds.
pub const EVENT_LIMIT: usize = 512_000;

/// The `client` field of every event: who sent it.
const CLIENT: &str = "rearguard";

/// What one occasion becomes on PagerDuty.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// An alert event with this `event_action`; triggers carry their severity.
    Alert {
        action: &'static str,
        severity: Option<&'static str>,
    },
    /// A change event (`/v2/change/enqueue`): informational, never pages.
    Change,
}

/// The event an occasion becomes: the rollback starting is a change, acknowledgement
/// and resolution act on the alert, everything else triggers it with a severity.
pub fn event(occasion: Occasion) -> Event {
    let trigger = |severity| Event::Alert {
        action: "trigger",
        severity: Some(severity),
    };
    match occasion {
        Occasion::RollbackStarted => Event::Change,
        Occasion::Acknowledged => Event::Alert {
            action: "acknowledge",
            severity: None,
        },
        Occasion::Resolved => Event::Alert {
            action: "resolve",
            severity: None,
        },
        Occasion::Blind
        | Occasion::RollbackFailed
        | Occasion::VerificationFailed
        | Occasion::VerificationInconclusive
        | Occasion::AttemptsFailed
        | Occasion::RollbackSlow => trigger("critical"),
        Occasion::Opened | Occasion::NotRolledBack | Occasion::RuleJoined => trigger("error"),
        Occasion::BadRevisionDeployed | Occasion::CannotJudge => trigger("warning"),
        Occasion::RollbackSucceeded => trigger("info"),
    }
}

/// A PagerDuty service's Events API v2 integration.
#[derive(Debug)]
pub struct PagerDuty {
    routing_key: SecretString,
    url: reqwest::Url,
    client: reqwest::Client,
    timeout: Duration,
}

impl PagerDuty {
    pub fn new(spec: &PagerDutySpec, client: &reqwest::Client, timeout: Duration) -> PagerDuty {
        PagerDuty {
            routing_key: spec.routing_key.clone(),
            url: spec.url.clone(),
            client: client.clone(),
            timeout,
        }
    }

    /// Sends the event of `msg`. `thread` is not needed: the incident id is the alert's
    /// `dedup_key`.
    pub async fn send(&self, msg: &Message, _thread: Option<&str>) -> Delivery {
        let key = self.routing_key.expose_secret();
        let (path, body) = match event(msg.occasion) {
            Event::Change => (["v2", "change", "enqueue"].as_slice(), change(msg, key)),
            Event::Alert { action, severity } => (
                ["v2", "enqueue"].as_slice(),
                alert(msg, key, action, severity),
            ),
        };
        let Some(url) = super::endpoint(&self.url, path) else {
            return Delivery::Rejected {
                reason: "url cannot take a path; it must be an http(s) base url".to_owned(),
            };
        };
        let request = self
            .client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        let (delivery, answer) = super::send_request(request, self.timeout).await;
        let delivery = match delivery {
            Delivery::Rejected { reason } => Delivery::Rejected {
                reason: answer.as_deref().and_then(invalid_event).unwrap_or(reason),
            },
            other => other,
        };
        super::redact(delivery, key)
    }
}

/// The summary line: the message's summary, marked when a test, within the limit.
pub fn summary(msg: &Message) -> String {
    let mark = if msg.test && !msg.summary.starts_with("[TEST]") {
        text::test_mark(msg)
    } else {
        ""
    };
    text::truncate(&format!("{mark}{}", msg.summary), SUMMARY_LIMIT)
}

/// The facts as `custom_details`, with what the alert needs to be read on its own.
fn details(msg: &Message) -> Value {
    let mut details = serde_json::to_value(&msg.facts).unwrap_or_else(|_| json!({}));
    if let Value::Object(map) = &mut details {
        map.insert("incident".to_owned(), json!(msg.incident));
        map.insert("occasion".to_owned(), json!(msg.occasion.name()));
        map.insert(
            "opened_at".to_owned(),
            json!(text::time(msg.facts.opened_at_ms)),
        );
        if let Some(level) = &msg.level {
            map.insert("level".to_owned(), json!(level));
        }
        if msg.test {
            map.insert("test".to_owned(), json!(true));
        }
    }
    details
}

/// The body of an alert event: acknowledge and resolve carry only the key and action.
fn alert(msg: &Message, key: &str, action: &str, severity: Option<&str>) -> Vec<u8> {
    let mut event = json!({
        "routing_key": key,
        "event_action": action,
        "dedup_key": msg.incident,
    });
    if let Some(severity) = severity {
        let f = &msg.facts;
        let mut payload = json!({
            "summary": summary(msg),
            "source": f.target,
            "severity": severity,
            "timestamp": text::time(f.at_ms),
            "group": f.target,
            "class": msg.occasion.name(),
        });
        // The component is what the alert is about within the target: its rules, or
        // the signals it cannot read.
        let component = if f.rules.is_empty() {
            f.blind_signals.join(", ")
        } else {
            let names: Vec<&str> = f.rules.iter().map(|r| r.name.as_str()).collect();
            names.join(", ")
        };
        if !component.is_empty() {
            payload["component"] = json!(text::truncate(&component, SUMMARY_LIMIT));
        }
        event["payload"] = payload;
        event["client"] = json!(CLIENT);
    }
    with_details(event, msg)
}

/// The body of a change event: no action, no `dedup_key`.
fn change(msg: &Message, key: &str) -> Vec<u8> {
    let event = json!({
        "routing_key": key,
        "payload": {
            "summary": summary(msg),
            "timestamp": text::time(msg.facts.at_ms),
            "source": msg.facts.target,
        },
    });
    with_details(event, msg)
}

/// Serializes `event` with the facts of `msg` as its `payload.custom_details`, shrunk
/// until the whole event fits [`EVENT_LIMIT`]. Events without a payload are left as
/// they are.
fn with_details(mut event: Value, msg: &Message) -> Vec<u8> {
    if event.get("payload").is_none() {
        return serde_json::to_vec(&event).unwrap_or_default();
    }
    let mut details = details(msg);
    event["payload"]["custom_details"] = json!({});
    let overhead = serde_json::to_vec(&event).map_or(0, |b| b.len().saturating_sub("{}".len()));
    let size = |d: &Value| serde_json::to_vec(d).map_or(usize::MAX, |b| b.len());
    let fits = |d: &Value| overhead.saturating_add(size(d)) <= EVENT_LIMIT;
    if !super::shrink(&mut details, fits) {
        details = json!({ "note": "the details were too large for PagerDuty and were left out" });
    }
    event["payload"]["custom_details"] = details;
    serde_json::to_vec(&event).unwrap_or_default()
}

/// PagerDuty's description of an invalid event (`{"status": "invalid event", "message":
/// ..., "errors": [...]}`), when the answer is one.
fn invalid_event(answer: &str) -> Option<String> {
    let answer: Value = serde_json::from_str(answer).ok()?;
    let message = answer.get("message")?.as_str()?;
    let errors: Vec<&str> = answer
        .get("errors")
        .and_then(Value::as_array)
        .map(|e| e.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let said = if errors.is_empty() {
        message.to_owned()
    } else {
        format!("{message}: {}", errors.join("; "))
    };
    Some(format!(
        "pagerduty refused the event: {}",
        text::truncate(&said, 500)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "0123456789abcdef0123456789abcdef";

    fn message(occasion: Occasion) -> Message {
        let mut msg = Message::test("pd", 1_700_000_000_000);
        msg.test = false;
        msg.occasion = occasion;
        msg.summary = "shop: incident opened".to_owned();
        msg
    }

    fn json(bytes: &[u8]) -> Value {
        serde_json::from_slice(bytes).unwrap()
    }

    #[test]
    fn occasions_map_to_actions_and_severities() {
        fn check(occasion: Occasion, expected: Event) {
            assert_eq!(event(occasion), expected, "{}", occasion.name());
        }
        let trigger = |severity| Event::Alert {
            action: "trigger",
            severity: Some(severity),
        };
        check(Occasion::Opened, trigger("error"));
        check(Occasion::RollbackStarted, Event::Change);
        check(Occasion::RollbackSlow, trigger("critical"));
        check(Occasion::AttemptsFailed, trigger("critical"));
        check(Occasion::RollbackSucceeded, trigger("info"));
        check(Occasion::RollbackFailed, trigger("critical"));
        check(Occasion::VerificationFailed, trigger("critical"));
        check(Occasion::NotRolledBack, trigger("error"));
        check(Occasion::Blind, trigger("critical"));
        let ack = Event::Alert {
            action: "acknowledge",
            severity: None,
        };
        check(Occasion::Acknowledged, ack);
        let resolve = Event::Alert {
            action: "resolve",
            severity: None,
        };
        check(Occasion::Resolved, resolve);
    }

    #[test]
    fn summary_is_cut_to_1024_characters_of_multibyte_text() {
        let mut msg = message(Occasion::Opened);
        msg.summary = "é🚨".repeat(1000);
        let s = summary(&msg);
        assert_eq!(s.chars().count(), SUMMARY_LIMIT);
        assert!(s.ends_with(text::ELLIPSIS));
        assert!(msg.summary.starts_with(s.trim_end_matches(text::ELLIPSIS)));
    }

    #[test]
    fn test_messages_are_marked_once() {
        let mut msg = message(Occasion::Opened);
        msg.test = true;
        assert_eq!(summary(&msg), "[TEST] shop: incident opened");
        msg.summary = "[TEST] shop: incident opened".to_owned();
        assert_eq!(summary(&msg), "[TEST] shop: incident opened");
    }

    #[test]
    fn trigger_carries_the_documented_payload() {
        let msg = message(Occasion::RollbackFailed);
        let e = json(&alert(&msg, KEY, "trigger", Some("critical")));
        assert_eq!(e["routing_key"], KEY);
        assert_eq!(e["event_action"], "trigger");
        assert_eq!(e["dedup_key"], msg.incident.as_str());
        assert_eq!(e["client"], CLIENT);
        let p = &e["payload"];
        assert_eq!(p["severity"], "critical");
        assert_eq!(p["source"], "example-service");
        assert_eq!(p["class"], "rollback_failed");
        assert_eq!(p["component"], "error-rate");
        assert!(humantime::parse_rfc3339(p["timestamp"].as_str().unwrap()).is_ok());
        assert_eq!(p["custom_details"]["target"], "example-service");
        assert_eq!(p["custom_details"]["incident"], msg.incident.as_str());
    }

    #[test]
    fn acknowledge_and_resolve_carry_no_payload() {
        for action in ["acknowledge", "resolve"] {
            let msg = message(Occasion::Resolved);
            let e = json(&alert(&msg, KEY, action, None));
            let keys: Vec<&String> = e.as_object().unwrap().keys().collect();
            assert_eq!(
                keys,
                ["dedup_key", "event_action", "routing_key"],
                "{action}"
            );
        }
    }

    #[test]
    fn change_events_have_no_dedup_key() {
        let msg = message(Occasion::RollbackStarted);
        let e = json(&change(&msg, KEY));
        assert!(e.get("dedup_key").is_none());
        assert!(e.get("event_action").is_none());
        assert_eq!(e["payload"]["source"], "example-service");
        assert!(e["payload"]["custom_details"].is_object());
    }

    #[test]
    fn huge_details_are_shrunk_to_fit_the_event_limit() {
        let mut msg = message(Occasion::Opened);
        msg.facts.rules[0].evidence = "é".repeat(400_000);
        msg.facts.next = "x".repeat(400_000);
        let body = alert(&msg, KEY, "trigger", Some("error"));
        assert!(body.len() <= EVENT_LIMIT, "{}", body.len());
        let e = json(&body);
        assert_eq!(e["payload"]["custom_details"]["target"], "example-service");
        let body = change(&msg, KEY);
        assert!(body.len() <= EVENT_LIMIT, "{}", body.len());
    }

    #[test]
    fn invalid_events_are_described_with_their_errors() {
        let answer = r#"{"status":"invalid event","message":"Event object is invalid","errors":["'payload.severity' is missing"]}"#;
        assert_eq!(
            invalid_event(answer).unwrap(),
            "pagerduty refused the event: Event object is invalid: 'payload.severity' is missing"
        );
        assert_eq!(invalid_event("not json"), None);
    }
}
