//! The webhook notifier against a local stand-in for a receiver.
//!
//! The stand-in is a receiver that follows the module's documentation: it checks the
//! headers, verifies the signature over `<timestamp>.<body>` with the shared secret,
//! refuses stale timestamps, and checks the versioned body and its size.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rearguard::config::{Occasion, WebhookSpec};
use rearguard::notify::webhook::{self, Webhook};
use rearguard::notify::{Delivery, Message};
use secrecy::SecretString;
use serde_json::{Value, json};

use crate::provider::{Answer, Provider, Recorded};

const SECRET: &str = "whsec-9f1c2e7a44b0-do-not-log";
/// The receiver's path, with a query the notifier must keep.
const PATH: &str = "/hooks/rearguard?tenant=7";
const TIMEOUT: Duration = Duration::from_secs(5);
const NOW_MS: u64 = 1_700_000_000_000;

// ---- the receiver's checks ----

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn validate(r: &Recorded) -> Result<(), String> {
    if r.method != "POST" || r.path != PATH {
        return Err(format!("not found: {} {}", r.method, r.path));
    }
    if r.header("content-type") != Some("application/json") {
        return Err(format!("content type {:?}", r.header("content-type")));
    }
    if r.body.len() > webhook::BODY_LIMIT {
        return Err(format!("body of {} bytes, limit 256 KB", r.body.len()));
    }
    let timestamp: u64 = r
        .header("x-rearguard-timestamp")
        .ok_or("missing X-Rearguard-Timestamp")?
        .parse()
        .map_err(|e| format!("X-Rearguard-Timestamp: {e}"))?;
    if now().abs_diff(timestamp) > 300 {
        return Err(format!("stale timestamp {timestamp}"));
    }
    let signed = r
        .header("x-rearguard-signature")
        .ok_or("missing X-Rearguard-Signature")?;
    if signed != webhook::signature(SECRET.as_bytes(), timestamp, &r.body) {
        return Err("bad signature".to_owned());
    }
    let body: Value = serde_json::from_slice(&r.body).map_err(|e| format!("not json: {e}"))?;
    if body["version"] != json!(webhook::VERSION) {
        return Err(format!("version {}", body["version"]));
    }
    let id = body["id"].as_str().ok_or("id is not a string")?;
    if r.header("x-rearguard-id") != Some(id) {
        return Err(format!(
            "X-Rearguard-Id {:?} is not the body's id {id}",
            r.header("x-rearguard-id")
        ));
    }
    for field in ["incident", "summary"] {
        body[field]
            .as_str()
            .ok_or(format!("{field} is not a string"))?;
    }
    for field in ["test", "truncated"] {
        body[field]
            .as_bool()
            .ok_or(format!("{field} is not a boolean"))?;
    }
    let occasion = body["occasion"]
        .as_str()
        .ok_or("occasion is not a string")?;
    if !Occasion::ALL.iter().any(|o| o.name() == occasion) {
        return Err(format!("unknown occasion {occasion}"));
    }
    if !(body["level"].is_null() || body["level"].is_string()) {
        return Err("level is neither null nor a string".to_owned());
    }
    serde_json::from_value::<rearguard::engine::Facts>(body["facts"].clone())
        .map_err(|e| format!("facts: {e}"))?;
    Ok(())
}

fn respond(_: &Recorded, _: usize) -> Answer {
    Answer::Status(204, String::new())
}

// ---- helpers ----

async fn start() -> Provider {
    Provider::start(validate, respond).await
}

fn sink(provider: &Provider, timeout: Duration) -> Webhook {
    let spec = WebhookSpec {
        url: reqwest::Url::parse(&provider.url(PATH)).unwrap(),
        secret: SecretString::from(SECRET),
    };
    Webhook::new(&spec, &rearguard::http::client(), timeout)
}

fn message(occasion: Occasion) -> Message {
    let mut msg = Message::test("hook", NOW_MS);
    msg.test = false;
    msg.occasion = occasion;
    msg.level = Some("page-oncall".to_owned());
    msg.summary = format!("example-service: {}", occasion.headline());
    msg
}

fn assert_no_secret(d: &Delivery) {
    let said = match d {
        Delivery::Accepted { answer, reference } => {
            format!("{answer} {}", reference.as_deref().unwrap_or(""))
        }
        Delivery::Retry { reason, .. } | Delivery::Rejected { reason } => reason.clone(),
    };
    assert!(!said.contains(SECRET), "the secret leaked: {said}");
    assert!(
        !said.contains(&SECRET[..10]),
        "part of the secret leaked: {said}"
    );
}

fn hex_decode(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

// ---- tests ----

#[tokio::test]
async fn the_receiver_verifies_the_signature_and_reads_the_documented_body() {
    let provider = start().await;
    let hook = sink(&provider, TIMEOUT);
    let msg = message(Occasion::RollbackFailed);
    let d = hook.send(&msg, None).await;
    assert!(matches!(d, Delivery::Accepted { .. }), "{d:?}");
    assert_no_secret(&d);
    provider.assert_valid();
    let r = &provider.requests()[0];
    // Verify as a receiver in another language would: HMAC-SHA256 over
    // "<timestamp>.<body>", compared in constant time, without rearguard's helper.
    let timestamp = r.header("x-rearguard-timestamp").unwrap();
    let hex = r
        .header("x-rearguard-signature")
        .unwrap()
        .strip_prefix("sha256=")
        .expect("the signature names its algorithm");
    assert_eq!(hex.len(), 64);
    assert!(
        hex.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')),
        "{hex}"
    );
    let mut signed = format!("{timestamp}.").into_bytes();
    signed.extend_from_slice(&r.body);
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET.as_bytes());
    ring::hmac::verify(&key, &signed, &hex_decode(hex)).expect("the signature verifies");
    let wrong = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"another secret");
    assert!(ring::hmac::verify(&wrong, &signed, &hex_decode(hex)).is_err());

    let body = r.json();
    assert_eq!(r.header("x-rearguard-id"), Some(msg.id.as_str()));
    assert_eq!(body["id"], msg.id.as_str());
    assert_eq!(body["version"], 1);
    assert_eq!(body["occasion"], "rollback_failed");
    assert_eq!(body["incident"], msg.incident.as_str());
    assert_eq!(body["level"], "page-oncall");
    assert_eq!(body["summary"], msg.summary.as_str());
    assert_eq!(body["test"], false);
    assert_eq!(body["truncated"], false);
    assert_eq!(body["facts"]["steps"][0]["action"], "release_switch");
}

#[tokio::test]
async fn a_retry_carries_the_same_id_with_a_fresh_signature() {
    let provider = start().await;
    let hook = sink(&provider, TIMEOUT);
    provider.script([Answer::Status(503, "busy".to_owned())]);
    let msg = message(Occasion::Opened);
    let first = hook.send(&msg, None).await;
    assert!(matches!(first, Delivery::Retry { .. }), "{first:?}");
    let second = hook.send(&msg, None).await;
    assert!(matches!(second, Delivery::Accepted { .. }), "{second:?}");
    provider.assert_valid();
    let requests = provider.requests();
    assert_eq!(requests.len(), 2);
    for r in &requests {
        assert_eq!(r.header("x-rearguard-id"), Some(msg.id.as_str()));
        assert_eq!(r.json()["id"], msg.id.as_str());
    }
    assert_eq!(requests[0].body, requests[1].body);
}

#[tokio::test]
async fn long_facts_are_cut_to_keep_the_body_under_256_kb() {
    let provider = start().await;
    let hook = sink(&provider, TIMEOUT);
    let mut msg = message(Occasion::VerificationFailed);
    msg.facts.rules[0].evidence = "é".repeat(400_000);
    msg.facts.reason = Some("\"quoted\"\n".repeat(30_000));
    let d = hook.send(&msg, None).await;
    assert!(matches!(d, Delivery::Accepted { .. }), "{d:?}");
    provider.assert_valid();
    let body = provider.requests()[0].json();
    assert_eq!(body["truncated"], true);
    assert_eq!(body["id"], msg.id.as_str());
    let evidence = body["facts"]["rules"][0]["evidence"].as_str().unwrap();
    assert!(evidence.ends_with('…'), "{}", evidence.len());
}

#[tokio::test]
async fn rate_limits_and_server_errors_are_retried_and_refusals_are_not() {
    let provider = start().await;
    let hook = sink(&provider, TIMEOUT);
    let msg = message(Occasion::Opened);
    provider.script([Answer::RetryAfter(429, 2)]);
    assert_eq!(
        hook.send(&msg, None).await,
        Delivery::Retry {
            after: Some(Duration::from_secs(2)),
            reason: "HTTP 429: slow down".to_owned()
        }
    );
    provider.script([Answer::Status(500, "oops".to_owned())]);
    let d = hook.send(&msg, None).await;
    assert!(matches!(d, Delivery::Retry { .. }), "{d:?}");
    // A receiver that echoes the secret in its refusal.
    provider.script([Answer::Status(400, format!("bad secret {SECRET}"))]);
    let d = hook.send(&msg, None).await;
    assert!(matches!(d, Delivery::Rejected { .. }), "{d:?}");
    assert_no_secret(&d);
}

#[tokio::test]
async fn a_wrong_secret_is_refused_by_the_receiver() {
    let provider = start().await;
    let spec = WebhookSpec {
        url: reqwest::Url::parse(&provider.url(PATH)).unwrap(),
        secret: SecretString::from("not the shared secret"),
    };
    let hook = Webhook::new(&spec, &rearguard::http::client(), TIMEOUT);
    let d = hook.send(&message(Occasion::Opened), None).await;
    assert_eq!(
        d,
        Delivery::Rejected {
            reason: "HTTP 400: bad signature".to_owned()
        }
    );
    assert_eq!(provider.violations(), ["bad signature"]);
}

#[tokio::test]
async fn a_hanging_receiver_is_retried_within_the_timeout() {
    let provider = start().await;
    let hook = sink(&provider, Duration::from_millis(300));
    provider.script([Answer::Hang]);
    let started = Instant::now();
    let d = hook.send(&message(Occasion::Opened), None).await;
    let took = started.elapsed();
    assert!(matches!(d, Delivery::Retry { .. }), "{d:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert_no_secret(&d);
}
