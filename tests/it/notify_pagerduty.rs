//! The pagerduty notifier against a local stand-in for its provider.
//!
//! The stand-in checks every request against the Events API v2 as PagerDuty documents
//! it (paths, required fields and enums, the 32-character routing key, the summary's
//! 1024 characters, 512 KB per event) and answers as PagerDuty does.

use std::time::{Duration, Instant};

use rearguard::config::{Occasion, PagerDutySpec};
use rearguard::notify::{Delivery, Message, pagerduty::PagerDuty};
use secrecy::SecretString;
use serde_json::{Value, json};

use crate::provider::{Answer, Provider, Recorded};

/// A routing key as PagerDuty issues them: 32 characters.
const KEY: &str = "R0UT1NGKEYfor-rearguard-tests-32";
const TIMEOUT: Duration = Duration::from_secs(5);
const NOW_MS: u64 = 1_700_000_000_000;

// ---- the stand-in's checks ----

fn string<'a>(v: &'a Value, field: &str) -> Result<&'a str, String> {
    v.get(field)
        .ok_or_else(|| format!("missing {field}"))?
        .as_str()
        .ok_or_else(|| format!("{field} is not a string"))
}

fn only_fields(body: &Value, allowed: &[&str], at: &str) -> Result<(), String> {
    let object = body
        .as_object()
        .ok_or(format!("{at} is not a json object"))?;
    match object.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(format!("{at}: unexpected field {k}")),
        None => Ok(()),
    }
}

fn check_summary(payload: &Value) -> Result<(), String> {
    let n = string(payload, "summary")?.chars().count();
    if n == 0 || n > 1024 {
        return Err(format!("payload.summary of {n} characters, limit 1024"));
    }
    Ok(())
}

fn check_timestamp(payload: &Value) -> Result<(), String> {
    if payload.get("timestamp").is_some() {
        let t = string(payload, "timestamp")?;
        humantime::parse_rfc3339(t).map_err(|e| format!("payload.timestamp {t}: {e}"))?;
    }
    Ok(())
}

fn validate(r: &Recorded) -> Result<(), String> {
    if r.method != "POST" {
        return Err(format!("method {}", r.method));
    }
    if !r
        .header("content-type")
        .is_some_and(|t| t.starts_with("application/json"))
    {
        return Err(format!("content type {:?}", r.header("content-type")));
    }
    if r.body.len() > 512 * 1024 {
        return Err(format!("event of {} bytes, limit 512 KB", r.body.len()));
    }
    let body: Value = serde_json::from_slice(&r.body).map_err(|e| format!("not json: {e}"))?;
    let key = string(&body, "routing_key")?;
    if key.len() != 32 {
        return Err(format!(
            "routing_key of {} characters, must be 32",
            key.len()
        ));
    }
    match r.path.as_str() {
        "/v2/enqueue" => {
            let allowed = [
                "routing_key",
                "event_action",
                "dedup_key",
                "payload",
                "client",
                "client_url",
                "links",
                "images",
            ];
            only_fields(&body, &allowed, "event")?;
            let action = string(&body, "event_action")?;
            if body.get("dedup_key").is_some() {
                let n = string(&body, "dedup_key")?.chars().count();
                if n == 0 || n > 255 {
                    return Err(format!("dedup_key of {n} characters, limit 255"));
                }
            }
            match action {
                "trigger" => {
                    let payload = body.get("payload").ok_or("trigger without payload")?;
                    let allowed = [
                        "summary",
                        "source",
                        "severity",
                        "timestamp",
                        "component",
                        "group",
                        "class",
                        "custom_details",
                    ];
                    only_fields(payload, &allowed, "payload")?;
                    check_summary(payload)?;
                    if string(payload, "source")?.is_empty() {
                        return Err("empty payload.source".to_owned());
                    }
                    let severity = string(payload, "severity")?;
                    if !["critical", "error", "warning", "info"].contains(&severity) {
                        return Err(format!("payload.severity {severity}"));
                    }
                    check_timestamp(payload)?;
                    for field in ["component", "group", "class"] {
                        if payload.get(field).is_some() {
                            string(payload, field)?;
                        }
                    }
                    if payload
                        .get("custom_details")
                        .is_some_and(|d| !d.is_object())
                    {
                        return Err("payload.custom_details is not an object".to_owned());
                    }
                }
                "acknowledge" | "resolve" => {
                    string(&body, "dedup_key")?;
                    only_fields(
                        &body,
                        &["routing_key", "event_action", "dedup_key"],
                        "event",
                    )?;
                }
                other => return Err(format!("event_action {other}")),
            }
        }
        "/v2/change/enqueue" => {
            only_fields(&body, &["routing_key", "payload", "links"], "change event")?;
            let payload = body.get("payload").ok_or("change event without payload")?;
            let allowed = ["summary", "timestamp", "source", "custom_details"];
            only_fields(payload, &allowed, "payload")?;
            check_summary(payload)?;
            check_timestamp(payload)?;
        }
        other => return Err(format!("not found: {other}")),
    }
    Ok(())
}

fn respond(r: &Recorded, _: usize) -> Answer {
    let body = r.json();
    let answer = if r.path == "/v2/change/enqueue" {
        json!({"status": "success", "message": "Change event processed"})
    } else {
        json!({"status": "success", "message": "Event processed", "dedup_key": body["dedup_key"]})
    };
    Answer::Status(202, answer.to_string())
}

// ---- helpers ----

async fn start() -> Provider {
    Provider::start(validate, respond).await
}

fn sink(provider: &Provider, timeout: Duration) -> PagerDuty {
    let spec = PagerDutySpec {
        routing_key: SecretString::from(KEY),
        url: reqwest::Url::parse(&provider.url("")).unwrap(),
    };
    PagerDuty::new(&spec, &rearguard::http::client(), timeout)
}

fn message(occasion: Occasion) -> Message {
    let mut msg = Message::test("pd", NOW_MS);
    msg.test = false;
    msg.occasion = occasion;
    msg.summary = format!("example-service: {}", occasion.headline());
    msg.incident = "shop-1700000000000".to_owned();
    msg.id = format!("shop-1700000000000-{}", occasion.name());
    msg
}

/// Fails when the routing key shows in what a delivery says.
fn assert_no_secret(d: &Delivery) {
    let said = match d {
        Delivery::Accepted { answer, reference } => {
            format!("{answer} {}", reference.as_deref().unwrap_or(""))
        }
        Delivery::Retry { reason, .. } | Delivery::Rejected { reason } => reason.clone(),
    };
    assert!(!said.contains(KEY), "the routing key leaked: {said}");
    assert!(
        !said.contains(&KEY[..16]),
        "part of the routing key leaked: {said}"
    );
}

fn accepted(d: &Delivery) -> bool {
    matches!(d, Delivery::Accepted { .. })
}

// ---- tests ----

#[tokio::test]
async fn an_incident_life_is_one_alert_with_one_dedup_key_and_a_change_event() {
    let provider = start().await;
    let pd = sink(&provider, TIMEOUT);
    let life = [
        Occasion::Opened,
        Occasion::RollbackStarted,
        Occasion::Acknowledged,
        Occasion::Resolved,
    ];
    for occasion in life {
        let d = pd.send(&message(occasion), None).await;
        assert!(accepted(&d), "{}: {d:?}", occasion.name());
        assert_no_secret(&d);
    }
    provider.assert_valid();
    let requests = provider.requests();
    let seen: Vec<(&str, Value)> = requests
        .iter()
        .map(|r| (r.path.as_str(), r.json()))
        .collect();
    let paths: Vec<&str> = seen.iter().map(|(p, _)| *p).collect();
    assert_eq!(
        paths,
        [
            "/v2/enqueue",
            "/v2/change/enqueue",
            "/v2/enqueue",
            "/v2/enqueue"
        ]
    );
    let actions: Vec<&Value> = seen.iter().map(|(_, b)| &b["event_action"]).collect();
    assert_eq!(
        actions,
        [
            &json!("trigger"),
            &Value::Null,
            &json!("acknowledge"),
            &json!("resolve")
        ]
    );
    for (i, (_, body)) in seen.iter().enumerate() {
        assert_eq!(body["routing_key"], KEY);
        if i == 1 {
            assert!(
                body.get("dedup_key").is_none(),
                "a change event has no dedup_key"
            );
        } else {
            assert_eq!(body["dedup_key"], "shop-1700000000000", "request {i}");
        }
    }
    let trigger = &seen[0].1;
    assert_eq!(trigger["payload"]["severity"], "error");
    assert_eq!(trigger["payload"]["source"], "example-service");
    assert_eq!(trigger["payload"]["class"], "opened");
    assert_eq!(trigger["client"], "rearguard");
    assert_eq!(
        trigger["payload"]["custom_details"]["rules"][0]["name"],
        "error-rate"
    );
    assert!(seen[2].1.get("payload").is_none());
    assert!(seen[3].1.get("payload").is_none());
}

#[tokio::test]
async fn every_occasion_is_a_valid_event_with_its_severity() {
    let provider = start().await;
    let pd = sink(&provider, TIMEOUT);
    for occasion in Occasion::ALL {
        let d = pd.send(&message(occasion), None).await;
        assert!(accepted(&d), "{}: {d:?}", occasion.name());
    }
    provider.assert_valid();
    let severities: Vec<(String, Value)> = provider
        .requests()
        .iter()
        .map(|r| {
            let b = r.json();
            let class = b["payload"]["class"].as_str().unwrap_or("-").to_owned();
            (class, b["payload"]["severity"].clone())
        })
        .filter(|(class, _)| class != "-")
        .collect();
    let expected = [
        ("opened", "error"),
        ("rollback_slow", "critical"),
        ("attempts_failed", "critical"),
        ("rollback_succeeded", "info"),
        ("rollback_failed", "critical"),
        ("verification_failed", "critical"),
        ("verification_inconclusive", "critical"),
        ("not_rolled_back", "error"),
        ("blind", "critical"),
        ("rule_joined", "error"),
        ("bad_revision_deployed", "warning"),
        ("cannot_judge", "warning"),
    ]
    .map(|(c, s)| (c.to_owned(), json!(s)));
    assert_eq!(severities, expected);
}

#[tokio::test]
async fn a_multibyte_summary_is_cut_to_1024_characters() {
    let provider = start().await;
    let pd = sink(&provider, TIMEOUT);
    for occasion in [Occasion::Opened, Occasion::RollbackStarted] {
        let mut msg = message(occasion);
        msg.summary = "é🚨服".repeat(1000);
        let d = pd.send(&msg, None).await;
        assert!(accepted(&d), "{d:?}");
    }
    provider.assert_valid();
    for r in provider.requests() {
        let summary = r.json()["payload"]["summary"].as_str().unwrap().to_owned();
        assert_eq!(summary.chars().count(), 1024);
    }
}

#[tokio::test]
async fn test_messages_are_marked_in_the_summary() {
    let provider = start().await;
    let pd = sink(&provider, TIMEOUT);
    let mut msg = Message::test("pd", NOW_MS);
    msg.occasion = Occasion::Opened;
    assert!(accepted(&pd.send(&msg, None).await));
    msg.summary = "example-service: incident opened".to_owned();
    assert!(accepted(&pd.send(&msg, None).await));
    provider.assert_valid();
    for r in provider.requests() {
        let body = r.json();
        let summary = body["payload"]["summary"].as_str().unwrap();
        assert!(summary.starts_with("[TEST] "), "{summary}");
        assert_eq!(summary.matches("[TEST]").count(), 1, "{summary}");
        assert_eq!(body["payload"]["custom_details"]["test"], true);
    }
}

#[tokio::test]
async fn huge_facts_are_shrunk_to_fit_the_512_kb_event_limit() {
    let provider = start().await;
    let pd = sink(&provider, TIMEOUT);
    let mut msg = message(Occasion::RollbackFailed);
    msg.facts.rules[0].evidence = "é".repeat(700_000);
    msg.facts.blind_signals = vec!["signal".repeat(20); 20_000];
    let d = pd.send(&msg, None).await;
    assert!(accepted(&d), "{d:?}");
    provider.assert_valid();
    let body = provider.requests()[0].json();
    assert_eq!(
        body["payload"]["custom_details"]["target"],
        "example-service"
    );
}

#[tokio::test]
async fn an_invalid_event_is_rejected_with_its_errors_and_without_the_key() {
    let provider = start().await;
    let pd = sink(&provider, TIMEOUT);
    // PagerDuty's answer to an invalid event, here also echoing the key it was sent.
    let answer = json!({
        "status": "invalid event",
        "message": "Event object is invalid",
        "errors": ["'payload.severity' is invalid (must be one of the following: 'critical', 'warning', 'error' or 'info')",
                   format!("routing key {KEY} is unknown")],
    });
    provider.script([Answer::Status(400, answer.to_string())]);
    let d = pd.send(&message(Occasion::Opened), None).await;
    let Delivery::Rejected { reason } = &d else {
        panic!("a 400 is refused for good: {d:?}")
    };
    assert!(reason.contains("Event object is invalid"), "{reason}");
    assert!(reason.contains("'payload.severity' is invalid"), "{reason}");
    assert_no_secret(&d);
}

#[tokio::test]
async fn pagerduty_429_is_retried_after_retry_after_with_the_same_dedup_key() {
    let provider = start().await;
    let pd = sink(&provider, TIMEOUT);
    provider.script([Answer::RetryAfter(429, 2)]);
    let msg = message(Occasion::Opened);
    let d = pd.send(&msg, None).await;
    assert_eq!(
        d,
        Delivery::Retry {
            after: Some(Duration::from_secs(2)),
            reason: "HTTP 429: slow down".to_owned()
        }
    );
    let d = pd.send(&msg, None).await;
    assert!(accepted(&d), "{d:?}");
    provider.assert_valid();
    let keys: Vec<Value> = provider
        .requests()
        .iter()
        .map(|r| r.json()["dedup_key"].clone())
        .collect();
    assert_eq!(keys, [json!(msg.incident), json!(msg.incident)]);
}

#[tokio::test]
async fn a_server_error_is_retried() {
    let provider = start().await;
    let pd = sink(&provider, TIMEOUT);
    provider.script([Answer::Status(
        500,
        json!({"status": "error", "message": "internal"}).to_string(),
    )]);
    let d = pd.send(&message(Occasion::Blind), None).await;
    assert!(matches!(d, Delivery::Retry { after: None, .. }), "{d:?}");
    assert_no_secret(&d);
}

#[tokio::test]
async fn a_hanging_provider_is_retried_within_the_timeout() {
    let provider = start().await;
    let pd = sink(&provider, Duration::from_millis(300));
    provider.script([Answer::Hang]);
    let started = Instant::now();
    let d = pd.send(&message(Occasion::Opened), None).await;
    let took = started.elapsed();
    assert!(matches!(d, Delivery::Retry { .. }), "{d:?}");
    assert!(took >= Duration::from_millis(300), "{took:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert_no_secret(&d);
}

#[tokio::test]
async fn a_refused_connection_is_retried_without_the_key() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let spec = PagerDutySpec {
        routing_key: SecretString::from(KEY),
        url: reqwest::Url::parse(&format!("http://{addr}")).unwrap(),
    };
    let pd = PagerDuty::new(&spec, &rearguard::http::client(), TIMEOUT);
    let d = pd.send(&message(Occasion::Opened), None).await;
    assert!(matches!(d, Delivery::Retry { .. }), "{d:?}");
    assert_no_secret(&d);
}
