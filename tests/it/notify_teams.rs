//! The teams notifier against a local stand-in for its provider.
//!
//! The stand-in plays a Workflows webhook: it checks the message envelope and the
//! Adaptive Card against the documented schema and Teams' 28 KB message limit, and
//! answers 202 Accepted as Workflows does.

use std::time::{Duration, Instant};

use rearguard::config::{Occasion, TeamsSpec};
use rearguard::engine::StepFact;
use rearguard::notify::{Delivery, Message, teams::Teams};
use secrecy::SecretString;
use serde_json::Value;

use crate::provider::{Answer, Provider, Recorded};

/// The secret part of the Workflows webhook's URL.
const WEBHOOK_PATH: &str = "/workflows/abc/triggers/manual/paths/invoke?sig=teams-secret-sig";
/// Teams' limit on a message, taken as the stricter reading of "28 KB".
const SIZE_LIMIT: usize = 28_000;
const TIMEOUT: Duration = Duration::from_secs(5);

fn string<'a>(v: &'a Value, field: &str) -> Result<&'a str, String> {
    v.get(field)
        .ok_or_else(|| format!("missing {field}"))?
        .as_str()
        .ok_or_else(|| format!("{field} is not a string"))
}

/// One card element: a TextBlock (non-empty text, documented weight and size) or a
/// FactSet (facts of string title and value).
fn check_element(e: &Value, at: &str) -> Result<(), String> {
    match string(e, "type").map_err(|m| format!("{at}: {m}"))? {
        "TextBlock" => {
            if string(e, "text")?.is_empty() {
                return Err(format!("{at}: empty text"));
            }
            if let Some(w) = e.get("weight")
                && !["Default", "Lighter", "Bolder"].contains(&w.as_str().unwrap_or(""))
            {
                return Err(format!("{at}: weight {w}"));
            }
            if let Some(s) = e.get("size")
                && !["Default", "Small", "Medium", "Large", "ExtraLarge"]
                    .contains(&s.as_str().unwrap_or(""))
            {
                return Err(format!("{at}: size {s}"));
            }
            for flag in ["wrap", "isSubtle"] {
                if e.get(flag).is_some_and(|v| !v.is_boolean()) {
                    return Err(format!("{at}: {flag} is not a boolean"));
                }
            }
        }
        "FactSet" => {
            let facts = e["facts"]
                .as_array()
                .ok_or(format!("{at}: facts is not an array"))?;
            for (i, f) in facts.iter().enumerate() {
                string(f, "title").map_err(|m| format!("{at}.facts[{i}]: {m}"))?;
                string(f, "value").map_err(|m| format!("{at}.facts[{i}]: {m}"))?;
            }
        }
        other => return Err(format!("{at}: unknown element type {other}")),
    }
    Ok(())
}

fn validate(r: &Recorded) -> Result<(), String> {
    if r.method != "POST" || r.path != WEBHOOK_PATH {
        return Err(format!("no such workflow: {} {}", r.method, r.path));
    }
    if !r
        .header("content-type")
        .is_some_and(|t| t.starts_with("application/json"))
    {
        return Err("the body is not declared json".to_owned());
    }
    if r.body.len() > SIZE_LIMIT {
        return Err(format!(
            "message of {} bytes, limit {SIZE_LIMIT}",
            r.body.len()
        ));
    }
    let body: Value = serde_json::from_slice(&r.body).map_err(|e| format!("not json: {e}"))?;
    if string(&body, "type")? != "message" {
        return Err("type is not message".to_owned());
    }
    let attachments = body["attachments"]
        .as_array()
        .ok_or("attachments is not an array")?;
    let [attachment] = attachments.as_slice() else {
        return Err(format!(
            "{} attachments, expected one card",
            attachments.len()
        ));
    };
    if string(attachment, "contentType")? != "application/vnd.microsoft.card.adaptive" {
        return Err("contentType is not an adaptive card".to_owned());
    }
    if attachment.get("contentUrl") != Some(&Value::Null) {
        return Err("contentUrl is not null".to_owned());
    }
    let card = &attachment["content"];
    if string(card, "$schema")? != "http://adaptivecards.io/schemas/adaptive-card.json" {
        return Err("unknown $schema".to_owned());
    }
    if string(card, "type")? != "AdaptiveCard" {
        return Err("content type is not AdaptiveCard".to_owned());
    }
    // Teams renders Adaptive Cards up to version 1.5.
    let version = string(card, "version")?;
    if !["1.0", "1.1", "1.2", "1.3", "1.4", "1.5"].contains(&version) {
        return Err(format!("version {version}"));
    }
    let elements = card["body"].as_array().ok_or("body is not an array")?;
    if elements.is_empty() {
        return Err("empty card".to_owned());
    }
    for (i, e) in elements.iter().enumerate() {
        check_element(e, &format!("body[{i}]"))?;
    }
    Ok(())
}

fn respond(_: &Recorded, _: usize) -> Answer {
    Answer::Status(202, String::new())
}

fn teams(provider: &Provider, timeout: Duration) -> Teams {
    let spec = TeamsSpec {
        url: SecretString::from(provider.url(WEBHOOK_PATH)),
    };
    Teams::new(&spec, &rearguard::http::client(), timeout)
}

fn message() -> Message {
    Message::test("teams", 1_700_000_000_000)
}

fn card_body(r: &Recorded) -> Vec<Value> {
    r.json()["attachments"][0]["content"]["body"]
        .as_array()
        .unwrap()
        .clone()
}

fn facts(body: &[Value]) -> Vec<(String, String)> {
    body.iter()
        .find(|e| e["type"] == "FactSet")
        .expect("a FactSet")["facts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["title"].as_str().unwrap().to_owned(),
                f["value"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn assert_no_secret(d: &Delivery) {
    let text = format!("{d:?}");
    for secret in ["teams-secret-sig", "/workflows/"] {
        assert!(!text.contains(secret), "a delivery shows a secret: {text}");
    }
}

#[tokio::test]
async fn card_is_accepted_with_202_and_valid() {
    let provider = Provider::start(validate, respond).await;
    let msg = message();

    let d = teams(&provider, TIMEOUT).send(&msg, None).await;

    assert_eq!(
        d,
        Delivery::Accepted {
            reference: None,
            answer: "HTTP 202".to_owned()
        }
    );
    provider.assert_valid();
    let requests = provider.requests();
    assert_eq!(requests.len(), 1);
    let body = card_body(&requests[0]);
    assert_eq!(body[0]["text"], "[TEST] example-service: rollback started");
    assert_eq!(body[0]["weight"], "Bolder");
    assert_eq!(body[0]["size"], "Medium");
    assert_eq!(body[0]["wrap"], true);
    let facts = facts(&body);
    assert!(facts.contains(&("Target".to_owned(), "example-service".to_owned())));
    assert!(
        facts
            .iter()
            .any(|(t, v)| t == "Rule" && v.ends_with(&msg.facts.rules[0].evidence))
    );
    assert_eq!(
        body.last().unwrap()["text"],
        format!("Next: {}", msg.facts.next)
    );
}

#[tokio::test]
async fn workflows_200_is_accepted_too() {
    let provider = Provider::start(validate, respond).await;
    provider.script([Answer::Status(200, String::new())]);

    let d = teams(&provider, TIMEOUT).send(&message(), None).await;

    assert!(
        matches!(
            d,
            Delivery::Accepted {
                reference: None,
                ..
            }
        ),
        "{d:?}"
    );
    provider.assert_valid();
}

#[tokio::test]
async fn huge_facts_are_cut_to_fit_the_size_limit() {
    let provider = Provider::start(validate, respond).await;
    let mut msg = message();
    msg.test = false;
    msg.occasion = Occasion::RollbackFailed;
    msg.facts.rules[0].evidence = "é🚨\"\\".repeat(25_000);
    msg.facts.reason = Some("r".repeat(30_000));
    let step = msg.facts.steps[0].clone();
    msg.facts.steps = (0..300)
        .map(|i| StepFact {
            name: format!("step {i}"),
            ok: false,
            error: Some("e".repeat(200)),
            ..step.clone()
        })
        .collect();

    let d = teams(&provider, TIMEOUT).send(&msg, None).await;

    assert!(matches!(d, Delivery::Accepted { .. }), "{d:?}");
    provider.assert_valid();
    let request = &provider.requests()[0];
    assert!(
        request.body.len() <= SIZE_LIMIT,
        "{} bytes",
        request.body.len()
    );
    let facts = facts(&card_body(request));
    let rule = &facts.iter().find(|(t, _)| t == "Rule").unwrap().1;
    assert!(rule.ends_with('…'), "{rule:.80}");
    assert!(facts.contains(&("Target".to_owned(), "example-service".to_owned())));
}

#[tokio::test]
async fn bad_request_is_rejected() {
    let provider = Provider::start(validate, respond).await;
    provider.script([Answer::Status(400, "Bad payload".to_owned())]);

    let d = teams(&provider, TIMEOUT).send(&message(), None).await;

    assert_eq!(
        d,
        Delivery::Rejected {
            reason: "HTTP 400: Bad payload".to_owned()
        }
    );
    assert_no_secret(&d);
    provider.assert_valid();
}

#[tokio::test]
async fn too_many_requests_and_server_errors_are_retried() {
    let provider = Provider::start(validate, respond).await;
    let teams = teams(&provider, TIMEOUT);

    provider.script([Answer::RetryAfter(429, 3)]);
    let d = teams.send(&message(), None).await;
    assert!(
        matches!(d, Delivery::Retry { after: Some(after), .. } if after == Duration::from_secs(3)),
        "{d:?}"
    );

    provider.script([Answer::Status(502, "bad gateway".to_owned())]);
    let d = teams.send(&message(), None).await;
    assert!(matches!(d, Delivery::Retry { after: None, .. }), "{d:?}");

    assert_eq!(provider.requests().len(), 2);
    provider.assert_valid();
}

#[tokio::test]
async fn a_hanging_workflow_is_retried_within_the_timeout() {
    let provider = Provider::start(validate, respond).await;
    provider.script([Answer::Hang]);
    let timeout = Duration::from_millis(300);

    let started = Instant::now();
    let d = teams(&provider, timeout).send(&message(), None).await;
    let took = started.elapsed();

    assert!(
        matches!(&d, Delivery::Retry { after: None, reason } if reason.starts_with("no answer within")),
        "{d:?}"
    );
    assert!(took >= timeout, "gave up after {took:?}");
    assert!(took < Duration::from_secs(3), "took {took:?}");
    assert_no_secret(&d);
}

#[tokio::test]
async fn the_webhook_url_never_appears_in_a_delivery() {
    let provider = Provider::start(validate, respond).await;
    let teams = teams(&provider, Duration::from_millis(300));
    let answers = [
        Answer::Status(202, String::new()),
        Answer::Status(400, "Bad payload".to_owned()),
        Answer::Status(404, "not found".to_owned()),
        Answer::RetryAfter(429, 1),
        Answer::Status(500, "down".to_owned()),
        Answer::Hang,
    ];
    let n = answers.len();
    provider.script(answers);
    let mut deliveries = Vec::new();
    for _ in 0..n {
        deliveries.push(teams.send(&message(), None).await);
    }
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let closed = TeamsSpec {
        url: SecretString::from(format!("http://127.0.0.1:{port}{WEBHOOK_PATH}")),
    };
    let refused = Teams::new(&closed, &rearguard::http::client(), TIMEOUT)
        .send(&message(), None)
        .await;
    assert!(matches!(refused, Delivery::Retry { .. }), "{refused:?}");
    deliveries.push(refused);

    for d in &deliveries {
        assert_no_secret(d);
    }
}
