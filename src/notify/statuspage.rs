//! Atlassian Statuspage (REST API v1): one public incident per rearguard incident, and
//! optionally one component whose status follows it.
//!
//! The first message of an incident creates the Statuspage incident; its id comes back
//! as the delivery's reference, and every later message of the incident updates that
//! incident (a new incident update with the status and text). Test messages create an
//! incident without notifying subscribers and without touching the component, so that
//! `notify-test` never reports a real outage on a public page.
//!
//! The API key goes in the `Authorization` header only, marked sensitive, and is
//! scrubbed from every answer kept in a [`Delivery`].

use std::time::Duration;

use reqwest::Url;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};

use super::{Delivery, Message, text};
use crate::config::{Occasion, StatuspageSpec};

/// Statuspage's limit on an incident's name, in characters.
pub const NAME_LIMIT: usize = 255;

/// The longest incident update text sent, in characters: a page shows it to the public,
/// and nobody reads more.
pub const BODY_LIMIT: usize = 10_000;

/// The incident status an occasion sets: `investigating`, `identified`, `monitoring` or
/// `resolved`.
pub fn incident_status(occasion: Occasion) -> &'static str {
    match occasion {
        Occasion::Opened | Occasion::NotRolledBack | Occasion::Blind => "investigating",
        Occasion::RollbackStarted
        | Occasion::RollbackSlow
        | Occasion::AttemptsFailed
        | Occasion::RollbackFailed
        | Occasion::VerificationFailed
        | Occasion::VerificationInconclusive
        | Occasion::Acknowledged
        | Occasion::RuleJoined
        | Occasion::BadRevisionDeployed
        | Occasion::CannotJudge => "identified",
        Occasion::RollbackSucceeded => "monitoring",
        Occasion::Resolved => "resolved",
    }
}

/// The component status an occasion sets. An acknowledgement, another rule joining and
/// a bad revision deployed again say nothing new about the component's health, so they
/// leave the component as it is (`None`).
pub fn component_status(occasion: Occasion) -> Option<&'static str> {
    match occasion {
        Occasion::Acknowledged
        | Occasion::RuleJoined
        | Occasion::BadRevisionDeployed
        | Occasion::CannotJudge => None,
        Occasion::Resolved => Some("operational"),
        Occasion::RollbackSucceeded => Some("degraded_performance"),
        Occasion::RollbackFailed | Occasion::VerificationFailed | Occasion::Blind => {
            Some("major_outage")
        }
        Occasion::Opened
        | Occasion::VerificationInconclusive
        | Occasion::RollbackStarted
        | Occasion::RollbackSlow
        | Occasion::AttemptsFailed
        | Occasion::NotRolledBack => Some("partial_outage"),
    }
}

/// One Statuspage page, through its REST API.
#[derive(Debug)]
pub struct Statuspage {
    api_key: SecretString,
    page_id: String,
    component_id: Option<String>,
    api_url: Url,
    client: reqwest::Client,
    timeout: Duration,
}

impl Statuspage {
    pub fn new(spec: &StatuspageSpec, client: &reqwest::Client, timeout: Duration) -> Statuspage {
        Statuspage {
            api_key: spec.api_key.clone(),
            page_id: spec.page_id.clone(),
            component_id: spec.component_id.clone(),
            api_url: spec.api_url.clone(),
            client: client.clone(),
            timeout,
        }
    }

    /// Creates the incident (`thread` is `None`) or updates the one `thread` names.
    pub async fn send(&self, msg: &Message, thread: Option<&str>) -> Delivery {
        let key = self.api_key.expose_secret();
        let delivery = self.deliver(msg, thread, key).await;
        super::redact(delivery, key)
    }

    async fn deliver(&self, msg: &Message, thread: Option<&str>, key: &str) -> Delivery {
        let mut segments = vec!["pages", self.page_id.as_str(), "incidents"];
        segments.extend(thread);
        let Some(url) = super::endpoint(&self.api_url, &segments) else {
            return Delivery::Rejected {
                reason: "api_url cannot take a path; it must be an http(s) base url".to_owned(),
            };
        };
        let Ok(mut auth) = HeaderValue::from_str(&format!("OAuth {key}")) else {
            return Delivery::Rejected {
                reason: "api_key holds characters an http header cannot carry".to_owned(),
            };
        };
        auth.set_sensitive(true);
        let body = incident(msg, self.component_id.as_deref(), thread.is_none());
        let request = match thread {
            None => self.client.post(url),
            Some(_) => self.client.patch(url),
        };
        let request = request
            .header(AUTHORIZATION, auth)
            .header(CONTENT_TYPE, "application/json")
            .body(body.to_string());
        let (status, headers, answer) = match super::exchange(request, self.timeout).await {
            Ok(answered) => answered,
            Err(delivery) => return delivery,
        };
        // Statuspage's rate limit (420) is among the statuses the common classification
        // retries.
        if !status.is_success() {
            return super::classify(status, &headers, &answer);
        }
        let id = match thread {
            Some(id) => id.to_owned(),
            None => match created_id(&answer) {
                Some(id) => id,
                None => {
                    return Delivery::Rejected {
                        reason: format!(
                            "HTTP {}: the answer holds no incident id; is api_url a statuspage api?",
                            status.as_u16()
                        ),
                    };
                }
            },
        };
        let done = if thread.is_none() {
            "created"
        } else {
            "updated"
        };
        Delivery::Accepted {
            answer: format!("HTTP {}: incident {id} {done}", status.as_u16()),
            reference: Some(id),
        }
    }
}

/// The request body: `{"incident": {...}}`. Only a new incident has a name; components
/// are set only when a component is configured, the occasion says something about it,
/// and the message is not a test.
fn incident(msg: &Message, component: Option<&str>, create: bool) -> Value {
    let mut incident = json!({
        "status": incident_status(msg.occasion),
        "body": text::truncate(&text::plain(msg), BODY_LIMIT),
        "deliver_notifications": !msg.test,
    });
    if create {
        incident["name"] = json!(text::truncate(&text::title(msg), NAME_LIMIT));
    }
    if let (Some(component), Some(status), false) =
        (component, component_status(msg.occasion), msg.test)
    {
        if create {
            incident["component_ids"] = json!([component]);
        }
        incident["components"] = json!({ component: status });
    }
    json!({ "incident": incident })
}

/// The id of the incident a create answer describes.
fn created_id(answer: &str) -> Option<String> {
    let answer: Value = serde_json::from_str(answer).ok()?;
    let id = answer.get("id")?.as_str()?;
    (!id.trim().is_empty()).then(|| id.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(occasion: Occasion) -> Message {
        let mut msg = Message::test("sp", 1_700_000_000_000);
        msg.test = false;
        msg.occasion = occasion;
        msg
    }

    #[test]
    fn occasions_map_to_incident_and_component_statuses() {
        fn check(occasion: Occasion, incident: &str, component: Option<&str>) {
            assert_eq!(incident_status(occasion), incident, "{}", occasion.name());
            assert_eq!(component_status(occasion), component, "{}", occasion.name());
        }
        check(Occasion::Opened, "investigating", Some("partial_outage"));
        check(
            Occasion::NotRolledBack,
            "investigating",
            Some("partial_outage"),
        );
        check(Occasion::Blind, "investigating", Some("major_outage"));
        check(
            Occasion::RollbackStarted,
            "identified",
            Some("partial_outage"),
        );
        check(Occasion::RollbackSlow, "identified", Some("partial_outage"));
        check(
            Occasion::AttemptsFailed,
            "identified",
            Some("partial_outage"),
        );
        check(Occasion::RollbackFailed, "identified", Some("major_outage"));
        check(
            Occasion::VerificationFailed,
            "identified",
            Some("major_outage"),
        );
        check(
            Occasion::RollbackSucceeded,
            "monitoring",
            Some("degraded_performance"),
        );
        check(Occasion::Acknowledged, "identified", None);
        check(Occasion::Resolved, "resolved", Some("operational"));
    }

    #[test]
    fn a_new_incident_names_and_sets_the_component() {
        let msg = message(Occasion::Opened);
        let body = incident(&msg, Some("c1"), true);
        let i = &body["incident"];
        assert_eq!(i["name"], "example-service: incident opened");
        assert_eq!(i["status"], "investigating");
        assert_eq!(i["component_ids"], json!(["c1"]));
        assert_eq!(i["components"], json!({"c1": "partial_outage"}));
        assert_eq!(i["deliver_notifications"], true);
        assert!(i["body"].as_str().unwrap().contains("Rule: error-rate"));
    }

    #[test]
    fn an_update_has_no_name_and_no_component_ids() {
        let body = incident(&message(Occasion::Resolved), Some("c1"), false);
        let i = &body["incident"];
        assert!(i.get("name").is_none());
        assert!(i.get("component_ids").is_none());
        assert_eq!(i["status"], "resolved");
        assert_eq!(i["components"], json!({"c1": "operational"}));
    }

    #[test]
    fn components_are_left_alone_without_a_component_on_ack_and_in_tests() {
        let body = incident(&message(Occasion::Opened), None, true);
        assert!(body["incident"].get("components").is_none());
        let body = incident(&message(Occasion::Acknowledged), Some("c1"), false);
        assert!(body["incident"].get("components").is_none());
        let mut test = message(Occasion::Opened);
        test.test = true;
        let body = incident(&test, Some("c1"), true);
        assert!(body["incident"].get("components").is_none());
        assert_eq!(body["incident"]["deliver_notifications"], false);
        assert!(
            body["incident"]["name"]
                .as_str()
                .unwrap()
                .starts_with("[TEST] ")
        );
    }

    #[test]
    fn name_and_body_are_cut_to_their_limits() {
        let mut msg = message(Occasion::Opened);
        msg.facts.target = "服".repeat(400);
        msg.facts.next = "é".repeat(20_000);
        let body = incident(&msg, None, true);
        let name = body["incident"]["name"].as_str().unwrap();
        assert_eq!(name.chars().count(), NAME_LIMIT);
        let text = body["incident"]["body"].as_str().unwrap();
        assert_eq!(text.chars().count(), BODY_LIMIT);
    }

    #[test]
    fn created_ids_are_read_from_the_answer() {
        assert_eq!(
            created_id(r#"{"id":"p0x1","name":"n"}"#).as_deref(),
            Some("p0x1")
        );
        assert_eq!(created_id(r#"{"name":"n"}"#), None);
        assert_eq!(created_id(r#"{"id":""}"#), None);
        assert_eq!(created_id("<html>"), None);
    }
}
