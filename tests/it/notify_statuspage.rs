//! The statuspage notifier against a local stand-in for its provider.
//!
//! The stand-in serves the REST API v1 under `/v1`, as `api.statuspage.io` does: it
//! checks the `OAuth` key, the paths, the incident's fields and enums and the known
//! component, hands out incident ids on create and accepts updates only to incidents it
//! handed out.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rearguard::config::{Occasion, StatuspageSpec};
use rearguard::notify::{Delivery, Message, statuspage::Statuspage};
use secrecy::SecretString;
use serde_json::{Value, json};

use crate::provider::{Answer, Provider, Recorded};

const KEY: &str = "sp-api-key-0b1e6c2d9f8a4e77-secret";
const PAGE: &str = "kctbh9vrtdwd";
const COMPONENT: &str = "8kbf7d35c070";
const TIMEOUT: Duration = Duration::from_secs(5);
const NOW_MS: u64 = 1_700_000_000_000;

/// Every incident id any stand-in handed out; unique across the tests of this binary.
static CREATED: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

// ---- the stand-in's checks ----

fn string<'a>(v: &'a Value, field: &str) -> Result<&'a str, String> {
    v.get(field)
        .ok_or_else(|| format!("missing {field}"))?
        .as_str()
        .ok_or_else(|| format!("{field} is not a string"))
}

fn check_incident(incident: &Value, create: bool) -> Result<(), String> {
    let object = incident.as_object().ok_or("incident is not an object")?;
    let allowed = [
        "name",
        "status",
        "body",
        "component_ids",
        "components",
        "deliver_notifications",
    ];
    if let Some(k) = object.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(format!("unexpected field incident.{k}"));
    }
    if create {
        let n = string(incident, "name")?.chars().count();
        if n == 0 || n > 255 {
            return Err(format!("incident.name of {n} characters, limit 255"));
        }
    } else if incident.get("name").is_some() {
        return Err("an update renames the incident".to_owned());
    }
    let status = string(incident, "status")?;
    if !["investigating", "identified", "monitoring", "resolved"].contains(&status) {
        return Err(format!("incident.status {status}"));
    }
    let n = string(incident, "body")?.chars().count();
    if n == 0 || n > 10_000 {
        return Err(format!("incident.body of {n} characters"));
    }
    if let Some(ids) = incident.get("component_ids") {
        let ids = ids.as_array().ok_or("component_ids is not an array")?;
        if ids.iter().any(|id| id != COMPONENT) {
            return Err(format!("unknown component in {ids:?}"));
        }
    }
    if let Some(components) = incident.get("components") {
        let components = components
            .as_object()
            .ok_or("components is not an object")?;
        for (id, status) in components {
            if id != COMPONENT {
                return Err(format!("unknown component {id}"));
            }
            let known = [
                "operational",
                "under_maintenance",
                "degraded_performance",
                "partial_outage",
                "major_outage",
            ];
            if !status.as_str().is_some_and(|s| known.contains(&s)) {
                return Err(format!("component status {status}"));
            }
        }
    }
    if incident
        .get("deliver_notifications")
        .is_some_and(|d| !d.is_boolean())
    {
        return Err("deliver_notifications is not a boolean".to_owned());
    }
    Ok(())
}

fn validate(r: &Recorded) -> Result<(), String> {
    if r.header("authorization") != Some(&format!("OAuth {KEY}")) {
        return Err("401: no or wrong OAuth key".to_owned());
    }
    if !r
        .header("content-type")
        .is_some_and(|t| t.starts_with("application/json"))
    {
        return Err(format!("content type {:?}", r.header("content-type")));
    }
    let incidents = format!("/v1/pages/{PAGE}/incidents");
    let create = match (r.method.as_str(), r.path.strip_prefix(&incidents)) {
        ("POST", Some("")) => true,
        ("PATCH", Some(rest)) => {
            let id = rest.strip_prefix('/').ok_or("404: no incident id")?;
            if !CREATED.lock().unwrap().contains(id) {
                return Err(format!("404: incident {id} was never created"));
            }
            false
        }
        _ => return Err(format!("404: {} {}", r.method, r.path)),
    };
    let body: Value = serde_json::from_slice(&r.body).map_err(|e| format!("not json: {e}"))?;
    let object = body.as_object().ok_or("the body is not an object")?;
    if object.len() != 1 {
        return Err("the body holds more than `incident`".to_owned());
    }
    check_incident(body.get("incident").ok_or("missing incident")?, create)
}

fn respond(r: &Recorded, _: usize) -> Answer {
    let incident = r.json()["incident"].clone();
    if r.method == "POST" {
        let id = format!("inc{:04}", NEXT_ID.fetch_add(1, Ordering::SeqCst));
        CREATED.lock().unwrap().insert(id.clone());
        let answer = json!({"id": id, "page_id": PAGE, "name": incident["name"], "status": incident["status"]});
        Answer::Status(201, answer.to_string())
    } else {
        let id = r.path.rsplit('/').next().unwrap_or_default();
        Answer::Status(
            200,
            json!({"id": id, "status": incident["status"]}).to_string(),
        )
    }
}

// ---- helpers ----

async fn start() -> Provider {
    Provider::start(validate, respond).await
}

fn sink(provider: &Provider, component: Option<&str>, timeout: Duration) -> Statuspage {
    let spec = StatuspageSpec {
        api_key: SecretString::from(KEY),
        page_id: PAGE.to_owned(),
        component_id: component.map(str::to_owned),
        // No trailing slash, as in the default `https://api.statuspage.io/v1`.
        api_url: reqwest::Url::parse(&provider.url("/v1")).unwrap(),
    };
    Statuspage::new(&spec, &rearguard::http::client(), timeout)
}

fn message(occasion: Occasion) -> Message {
    let mut msg = Message::test("sp", NOW_MS);
    msg.test = false;
    msg.occasion = occasion;
    msg.summary = format!("example-service: {}", occasion.headline());
    msg
}

fn reference(d: &Delivery) -> String {
    match d {
        Delivery::Accepted {
            reference: Some(r), ..
        } => r.clone(),
        other => panic!("not accepted with a reference: {other:?}"),
    }
}

fn assert_no_secret(d: &Delivery) {
    let said = match d {
        Delivery::Accepted { answer, reference } => {
            format!("{answer} {}", reference.as_deref().unwrap_or(""))
        }
        Delivery::Retry { reason, .. } | Delivery::Rejected { reason } => reason.clone(),
    };
    assert!(!said.contains(KEY), "the api key leaked: {said}");
    assert!(
        !said.contains(&KEY[..12]),
        "part of the api key leaked: {said}"
    );
}

// ---- tests ----

#[tokio::test]
async fn statuspage_creates_the_incident_then_updates_the_same_one_until_resolved() {
    let provider = start().await;
    let sp = sink(&provider, Some(COMPONENT), TIMEOUT);
    let created = sp.send(&message(Occasion::Opened), None).await;
    assert_no_secret(&created);
    let id = reference(&created);
    for occasion in [
        Occasion::RollbackStarted,
        Occasion::RollbackSucceeded,
        Occasion::Resolved,
    ] {
        let d = sp.send(&message(occasion), Some(&id)).await;
        assert_no_secret(&d);
        assert_eq!(reference(&d), id, "{}", occasion.name());
    }
    provider.assert_valid();
    let requests = provider.requests();
    let calls: Vec<(&str, &str)> = requests
        .iter()
        .map(|r| (r.method.as_str(), r.path.as_str()))
        .collect();
    let one = format!("/v1/pages/{PAGE}/incidents/{id}");
    let all = format!("/v1/pages/{PAGE}/incidents");
    assert_eq!(
        calls,
        [
            ("POST", all.as_str()),
            ("PATCH", one.as_str()),
            ("PATCH", one.as_str()),
            ("PATCH", one.as_str())
        ]
    );
    let bodies: Vec<Value> = requests
        .iter()
        .map(|r| r.json()["incident"].clone())
        .collect();
    assert_eq!(bodies[0]["name"], "example-service: incident opened");
    assert_eq!(bodies[0]["status"], "investigating");
    assert_eq!(bodies[0]["component_ids"], json!([COMPONENT]));
    assert_eq!(
        bodies[0]["components"],
        json!({COMPONENT: "partial_outage"})
    );
    assert_eq!(bodies[1]["status"], "identified");
    assert_eq!(bodies[2]["status"], "monitoring");
    assert_eq!(
        bodies[2]["components"],
        json!({COMPONENT: "degraded_performance"})
    );
    assert_eq!(bodies[3]["status"], "resolved");
    assert_eq!(bodies[3]["components"], json!({COMPONENT: "operational"}));
    assert!(
        bodies[3]["body"]
            .as_str()
            .unwrap()
            .contains("incident resolved")
    );
}

#[tokio::test]
async fn without_a_component_and_on_acknowledgement_components_are_left_alone() {
    let provider = start().await;
    let bare = sink(&provider, None, TIMEOUT);
    let id = reference(&bare.send(&message(Occasion::Blind), None).await);
    reference(&bare.send(&message(Occasion::Resolved), Some(&id)).await);
    let with = sink(&provider, Some(COMPONENT), TIMEOUT);
    let id = reference(&with.send(&message(Occasion::Opened), None).await);
    reference(&with.send(&message(Occasion::Acknowledged), Some(&id)).await);
    provider.assert_valid();
    let bodies: Vec<Value> = provider
        .requests()
        .iter()
        .map(|r| r.json()["incident"].clone())
        .collect();
    for i in [0, 1, 3] {
        assert!(
            bodies[i].get("components").is_none(),
            "request {i}: {}",
            bodies[i]
        );
        assert!(bodies[i].get("component_ids").is_none(), "request {i}");
    }
    assert_eq!(bodies[3]["status"], "identified");
}

#[tokio::test]
async fn a_test_message_does_not_notify_subscribers_or_touch_the_component() {
    let provider = start().await;
    let sp = sink(&provider, Some(COMPONENT), TIMEOUT);
    let d = sp.send(&Message::test("sp", NOW_MS), None).await;
    reference(&d);
    provider.assert_valid();
    let incident = provider.requests()[0].json()["incident"].clone();
    assert!(incident["name"].as_str().unwrap().starts_with("[TEST] "));
    assert_eq!(incident["deliver_notifications"], false);
    assert!(incident.get("components").is_none());
}

#[tokio::test]
async fn refusals_are_rejected_without_the_key() {
    let provider = start().await;
    let sp = sink(&provider, Some(COMPONENT), TIMEOUT);
    for code in [401, 403, 404, 422] {
        // An error that echoes the key sent, as a careless proxy might.
        let said = json!({"error": format!("refused OAuth {KEY}")}).to_string();
        provider.script([Answer::Status(code, said)]);
        let d = sp.send(&message(Occasion::Opened), None).await;
        assert!(matches!(d, Delivery::Rejected { .. }), "{code}: {d:?}");
        assert_no_secret(&d);
    }
}

#[tokio::test]
async fn rate_limits_420_and_429_are_retried_after_retry_after() {
    let provider = start().await;
    let sp = sink(&provider, Some(COMPONENT), TIMEOUT);
    for code in [420, 429] {
        provider.script([Answer::RetryAfter(code, 2)]);
        let d = sp.send(&message(Occasion::Opened), None).await;
        assert_eq!(
            d,
            Delivery::Retry {
                after: Some(Duration::from_secs(2)),
                reason: format!("HTTP {code}: slow down")
            }
        );
    }
}

#[tokio::test]
async fn a_server_error_is_retried() {
    let provider = start().await;
    let sp = sink(&provider, Some(COMPONENT), TIMEOUT);
    provider.script([Answer::Status(500, "oops".to_owned())]);
    let d = sp.send(&message(Occasion::Opened), None).await;
    assert!(matches!(d, Delivery::Retry { .. }), "{d:?}");
    assert_no_secret(&d);
}

#[tokio::test]
async fn a_create_answer_without_an_id_is_rejected() {
    let provider = start().await;
    let sp = sink(&provider, Some(COMPONENT), TIMEOUT);
    provider.script([Answer::Status(201, "{\"ok\":true}".to_owned())]);
    let d = sp.send(&message(Occasion::Opened), None).await;
    let Delivery::Rejected { reason } = &d else {
        panic!("an answer without an id is refused: {d:?}")
    };
    assert!(reason.contains("no incident id"), "{reason}");
}

#[tokio::test]
async fn a_hanging_statuspage_is_retried_within_the_timeout() {
    let provider = start().await;
    let sp = sink(&provider, Some(COMPONENT), Duration::from_millis(300));
    provider.script([Answer::Hang]);
    let started = Instant::now();
    let d = sp.send(&message(Occasion::Opened), None).await;
    let took = started.elapsed();
    assert!(matches!(d, Delivery::Retry { .. }), "{d:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert_no_secret(&d);
}
