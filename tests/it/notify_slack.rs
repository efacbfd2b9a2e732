//! The slack notifier against a local stand-in for its provider.
//!
//! The stand-in checks every request against Slack's documented schema and limits
//! (Block Kit, the Web API's headers and fields) and, for the Web API, hands out message
//! `ts` values the way Slack does, so that threads and parent updates can be followed.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rearguard::config::{Occasion, SlackSpec};
use rearguard::notify::{Delivery, Message, slack::Slack};
use secrecy::SecretString;
use serde_json::{Value, json};

use crate::provider::{Answer, Provider, Recorded};

/// The secret part of the incoming webhook's URL.
const WEBHOOK_PATH: &str = "/services/T0001/B0001/webhook-secret-xyz";
const TOKEN: &str = "xoxb-token-secret-123";
/// The channel as configured (a name) and as Slack names it in answers (an id).
const CHANNEL_NAME: &str = "#deploys";
const CHANNEL_ID: &str = "C0DEPLOYS";
const TIMEOUT: Duration = Duration::from_secs(5);

/// Every thread parent's `ts` any stand-in handed out. Values are unique across the
/// tests of this binary, so a `thread_ts` found here was handed out as a parent.
static PARENTS: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());
static NEXT_TS: AtomicU64 = AtomicU64::new(100);

fn next_ts() -> String {
    format!("1700000000.{:06}", NEXT_TS.fetch_add(1, Ordering::SeqCst))
}

fn is_parent(ts: &str) -> bool {
    PARENTS.lock().unwrap().contains(ts)
}

// ---- the stand-in's checks ----

fn string<'a>(v: &'a Value, field: &str) -> Result<&'a str, String> {
    v.get(field)
        .ok_or_else(|| format!("missing {field}"))?
        .as_str()
        .ok_or_else(|| format!("{field} is not a string"))
}

/// A text object: its type, a non-empty text within `max` characters, and for mrkdwn the
/// escaping Slack asks for. rearguard sends no links or mentions, so any `<` or `>` is
/// an unescaped control sequence, and every `&` must start an escape.
fn check_text(v: &Value, max: usize, types: &[&str], at: &str) -> Result<(), String> {
    let kind = string(v, "type").map_err(|e| format!("{at}: {e}"))?;
    if !types.contains(&kind) {
        return Err(format!("{at}: text type {kind} is not one of {types:?}"));
    }
    let text = string(v, "text").map_err(|e| format!("{at}: {e}"))?;
    let n = text.chars().count();
    if n == 0 || n > max {
        return Err(format!("{at}: text of {n} characters, limit {max}"));
    }
    if kind == "mrkdwn" {
        if text.contains(['<', '>']) {
            return Err(format!("{at}: unescaped < or > in mrkdwn"));
        }
        for (i, _) in text.match_indices('&') {
            let rest = &text[i..];
            if !["&amp;", "&lt;", "&gt;"]
                .iter()
                .any(|e| rest.starts_with(e))
            {
                return Err(format!("{at}: unescaped & in mrkdwn"));
            }
        }
    }
    Ok(())
}

/// `text` and `blocks` as Slack documents them: a fallback of at most 40,000 characters,
/// at most 50 blocks, headers of plain text up to 150 characters, section and context
/// texts up to 3,000, at most 10 context elements.
fn check_message(body: &Value) -> Result<(), String> {
    check_text(
        &json!({"type": "mrkdwn", "text": string(body, "text")?}),
        40_000,
        &["mrkdwn"],
        "text",
    )?;
    let blocks = body
        .get("blocks")
        .and_then(Value::as_array)
        .ok_or("blocks is not an array")?;
    if blocks.is_empty() || blocks.len() > 50 {
        return Err(format!("{} blocks, limit 50", blocks.len()));
    }
    for (i, block) in blocks.iter().enumerate() {
        let at = format!("blocks[{i}]");
        match string(block, "type")? {
            "header" => check_text(&block["text"], 150, &["plain_text"], &at)?,
            "section" => check_text(&block["text"], 3000, &["mrkdwn", "plain_text"], &at)?,
            "context" => {
                let elements = block["elements"]
                    .as_array()
                    .ok_or(format!("{at}: elements is not an array"))?;
                if elements.is_empty() || elements.len() > 10 {
                    return Err(format!("{at}: {} context elements", elements.len()));
                }
                for e in elements {
                    check_text(e, 3000, &["mrkdwn", "plain_text"], &at)?;
                }
            }
            "divider" => {}
            other => return Err(format!("{at}: unknown block type {other}")),
        }
    }
    Ok(())
}

/// Fails on a field Slack does not know for the method (a misspelt `thread_ts` would be
/// silently ignored by Slack and post outside the thread).
fn only_fields(body: &Value, allowed: &[&str]) -> Result<(), String> {
    let object = body.as_object().ok_or("the body is not a json object")?;
    match object.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(format!("unexpected field {k}")),
        None => Ok(()),
    }
}

fn validate_webhook(r: &Recorded) -> Result<(), String> {
    if r.method != "POST" || r.path != WEBHOOK_PATH {
        return Err(format!("no_service: {} {}", r.method, r.path));
    }
    if !r
        .header("content-type")
        .is_some_and(|t| t.starts_with("application/json"))
    {
        return Err("invalid_payload: not json".to_owned());
    }
    let body: Value =
        serde_json::from_slice(&r.body).map_err(|e| format!("invalid_payload: {e}"))?;
    only_fields(&body, &["text", "blocks"])?;
    check_message(&body)
}

fn respond_webhook(_: &Recorded, _: usize) -> Answer {
    Answer::Status(200, "ok".to_owned())
}

fn validate_bot(r: &Recorded) -> Result<(), String> {
    if r.method != "POST" {
        return Err(format!("method {}", r.method));
    }
    if r.header("authorization") != Some(&format!("Bearer {TOKEN}")) {
        return Err("not_authed: no bearer token".to_owned());
    }
    if !r
        .header("content-type")
        .is_some_and(|t| t.eq_ignore_ascii_case("application/json; charset=utf-8"))
    {
        return Err(format!("content type {:?}", r.header("content-type")));
    }
    let body: Value = serde_json::from_slice(&r.body).map_err(|e| format!("invalid_json: {e}"))?;
    let channel = string(&body, "channel")?;
    match r.path.as_str() {
        "/api/chat.postMessage" => {
            only_fields(&body, &["channel", "text", "blocks", "thread_ts"])?;
            if channel != CHANNEL_NAME && channel != CHANNEL_ID {
                return Err(format!("channel_not_found: {channel}"));
            }
            if body.get("thread_ts").is_some() {
                let ts = string(&body, "thread_ts")?;
                if !is_parent(ts) {
                    return Err(format!("thread_ts {ts} is not a parent handed out"));
                }
            }
        }
        "/api/chat.update" => {
            only_fields(&body, &["channel", "ts", "text", "blocks"])?;
            // chat.update takes the channel's id, not its name.
            if channel != CHANNEL_ID {
                return Err(format!(
                    "channel_not_found: chat.update needs the id, got {channel}"
                ));
            }
            let ts = string(&body, "ts")?;
            if !is_parent(ts) {
                return Err(format!("message_not_found: {ts}"));
            }
        }
        other => return Err(format!("unknown_method: {other}")),
    }
    check_message(&body)
}

fn respond_bot(r: &Recorded, _: usize) -> Answer {
    let body = r.json();
    let answer = if r.path.ends_with("/chat.postMessage") {
        let ts = next_ts();
        if body.get("thread_ts").is_none() {
            PARENTS.lock().unwrap().insert(ts.clone());
        }
        json!({"ok": true, "channel": CHANNEL_ID, "ts": ts, "message": {"text": body["text"]}})
    } else {
        json!({"ok": true, "channel": CHANNEL_ID, "ts": body["ts"], "text": body["text"]})
    };
    Answer::Status(200, answer.to_string())
}

// ---- helpers ----

fn webhook(provider: &Provider, timeout: Duration) -> Slack {
    let spec = SlackSpec::Webhook {
        url: SecretString::from(provider.url(WEBHOOK_PATH)),
    };
    Slack::new(&spec, &rearguard::http::client(), timeout)
}

fn bot(provider: &Provider, timeout: Duration) -> Slack {
    let spec = SlackSpec::Bot {
        token: SecretString::from(TOKEN),
        channel: CHANNEL_NAME.to_owned(),
        api_url: reqwest::Url::parse(&provider.url("/api")).unwrap(),
    };
    Slack::new(&spec, &rearguard::http::client(), timeout)
}

fn message(occasion: Occasion) -> Message {
    let mut msg = Message::test("slack", 1_700_000_000_000);
    msg.test = false;
    msg.incident = "shop-1".to_owned();
    msg.facts.target = "shop".to_owned();
    msg.occasion = occasion;
    msg
}

/// Everything a delivery says, for checks that a secret is not in it.
fn said(d: &Delivery) -> String {
    match d {
        Delivery::Accepted { reference, answer } => format!("{reference:?} {answer}"),
        Delivery::Retry { after, reason } => format!("{after:?} {reason}"),
        Delivery::Rejected { reason } => reason.clone(),
    }
}

fn assert_no_secret(d: &Delivery) {
    let text = said(d);
    for secret in ["webhook-secret-xyz", "/services/", TOKEN] {
        assert!(!text.contains(secret), "a delivery shows a secret: {text}");
    }
}

fn paths(provider: &Provider) -> Vec<String> {
    provider.requests().into_iter().map(|r| r.path).collect()
}

// ---- incoming webhook ----

#[tokio::test]
async fn webhook_message_is_accepted_and_valid() {
    let provider = Provider::start(validate_webhook, respond_webhook).await;
    let slack = webhook(&provider, TIMEOUT);
    let msg = Message::test("slack", 1_700_000_000_000);

    let d = slack.send(&msg, None).await;

    assert_eq!(
        d,
        Delivery::Accepted {
            reference: None,
            answer: "HTTP 200: ok".to_owned()
        }
    );
    provider.assert_valid();
    let requests = provider.requests();
    assert_eq!(requests.len(), 1);
    let body = requests[0].json();
    assert_eq!(
        body["blocks"][0]["text"]["text"],
        "[TEST] example-service: rollback started"
    );
    assert!(body["text"].as_str().unwrap().contains("test message"));
    assert!(requests[0].header("authorization").is_none());
}

#[tokio::test]
async fn webhook_message_with_huge_and_hostile_facts_stays_valid() {
    let provider = Provider::start(validate_webhook, respond_webhook).await;
    let slack = webhook(&provider, TIMEOUT);
    let mut msg = message(Occasion::RollbackFailed);
    msg.facts.rules[0].evidence = "<!channel> & é🚨".repeat(1_000);
    msg.facts.reason = Some("x".repeat(10_000));

    let d = slack.send(&msg, None).await;

    assert!(matches!(d, Delivery::Accepted { .. }), "{d:?}");
    provider.assert_valid();
    let text = provider.requests()[0].json()["text"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        text.chars().count() <= 4000,
        "{} characters",
        text.chars().count()
    );
}

#[tokio::test]
async fn webhook_errors_are_rejected_for_good() {
    let provider = Provider::start(validate_webhook, respond_webhook).await;
    let slack = webhook(&provider, TIMEOUT);
    let msg = message(Occasion::Opened);
    for (status, body) in [
        (400, "invalid_payload"),
        (403, "action_prohibited"),
        (404, "no_service"),
        (404, "channel_not_found"),
        (410, "channel_is_archived"),
    ] {
        provider.script([Answer::Status(status, body.to_owned())]);
        let d = slack.send(&msg, None).await;
        assert_eq!(
            d,
            Delivery::Rejected {
                reason: format!("HTTP {status}: {body}")
            }
        );
        assert_no_secret(&d);
    }
    provider.assert_valid();
}

#[tokio::test]
async fn webhook_429_is_retried_after_retry_after_and_500_is_retried() {
    let provider = Provider::start(validate_webhook, respond_webhook).await;
    let slack = webhook(&provider, TIMEOUT);
    let msg = message(Occasion::Opened);

    provider.script([Answer::RetryAfter(429, 3)]);
    let d = slack.send(&msg, None).await;
    assert!(
        matches!(d, Delivery::Retry { after: Some(after), .. } if after == Duration::from_secs(3)),
        "{d:?}"
    );

    provider.script([Answer::Status(500, "internal error".to_owned())]);
    let d = slack.send(&msg, None).await;
    assert!(matches!(d, Delivery::Retry { after: None, .. }), "{d:?}");

    // The same message is accepted once the provider recovers.
    let d = slack.send(&msg, None).await;
    assert!(matches!(d, Delivery::Accepted { .. }), "{d:?}");
    assert_eq!(provider.requests().len(), 3);
    provider.assert_valid();
}

// ---- bot token ----

#[tokio::test]
async fn bot_opens_one_thread_replies_in_it_and_updates_the_parent() {
    let provider = Provider::start(validate_bot, respond_bot).await;
    let slack = bot(&provider, TIMEOUT);

    let first = slack.send(&message(Occasion::RollbackStarted), None).await;
    let Delivery::Accepted {
        reference: Some(reference),
        ..
    } = &first
    else {
        panic!("the first message opens a thread: {first:?}")
    };
    let (channel, parent_ts) = reference.split_once('|').expect("channel|ts");
    assert_eq!(channel, CHANNEL_ID);
    assert!(is_parent(parent_ts), "{parent_ts}");

    for occasion in [Occasion::RollbackSucceeded, Occasion::Resolved] {
        let d = slack.send(&message(occasion), Some(reference)).await;
        match d {
            Delivery::Accepted { reference: r, .. } => assert_eq!(r.as_ref(), Some(reference)),
            other => panic!("a reply is accepted: {other:?}"),
        }
    }

    provider.assert_valid();
    assert_eq!(
        paths(&provider),
        [
            "/api/chat.postMessage",
            "/api/chat.postMessage",
            "/api/chat.update",
            "/api/chat.postMessage",
            "/api/chat.update",
        ]
    );
    let bodies: Vec<Value> = provider.requests().iter().map(Recorded::json).collect();
    // The parent goes to the configured channel; everything later to the id Slack named.
    assert_eq!(bodies[0]["channel"], CHANNEL_NAME);
    assert!(bodies[0].get("thread_ts").is_none());
    for b in &bodies[1..] {
        assert_eq!(b["channel"], CHANNEL_ID);
    }
    for i in [1, 3] {
        assert_eq!(bodies[i]["thread_ts"], parent_ts, "reply {i}");
    }
    for i in [2, 4] {
        assert_eq!(bodies[i]["ts"], parent_ts, "update {i}");
    }
    // The parent's status line follows the incident.
    let parent_text = |b: &Value| b["blocks"].to_string();
    assert!(parent_text(&bodies[0]).contains("*shop*: rollback started — incident shop-1"));
    assert!(parent_text(&bodies[2]).contains("rollback succeeded and verified"));
    assert!(parent_text(&bodies[4]).contains("RESOLVED"));
    assert!(bodies[4]["text"].as_str().unwrap().contains("RESOLVED"));
    // Replies carry no status line of their own.
    assert!(!parent_text(&bodies[3]).contains("RESOLVED"));
}

#[tokio::test]
async fn bot_channel_not_found_is_rejected() {
    let provider = Provider::start(validate_bot, respond_bot).await;
    let slack = bot(&provider, TIMEOUT);
    for code in ["channel_not_found", "invalid_auth", "not_in_channel"] {
        provider.script([Answer::Status(
            200,
            json!({"ok": false, "error": code}).to_string(),
        )]);
        let d = slack.send(&message(Occasion::Opened), None).await;
        assert_eq!(
            d,
            Delivery::Rejected {
                reason: format!("slack api error {code}")
            }
        );
        assert_no_secret(&d);
    }
    provider.assert_valid();
}

#[tokio::test]
async fn bot_rate_limits_and_server_errors_are_retried() {
    let provider = Provider::start(validate_bot, respond_bot).await;
    let slack = bot(&provider, TIMEOUT);
    let msg = message(Occasion::Opened);

    provider.script([Answer::RetryAfter(429, 3)]);
    let d = slack.send(&msg, None).await;
    assert!(
        matches!(d, Delivery::Retry { after: Some(after), .. } if after == Duration::from_secs(3)),
        "{d:?}"
    );

    provider.script([Answer::Status(
        200,
        r#"{"ok":false,"error":"ratelimited"}"#.to_owned(),
    )]);
    let d = slack.send(&msg, None).await;
    assert_eq!(
        d,
        Delivery::Retry {
            after: None,
            reason: "slack api error ratelimited".to_owned()
        }
    );

    provider.script([Answer::Status(500, "oops".to_owned())]);
    let d = slack.send(&msg, None).await;
    assert!(matches!(d, Delivery::Retry { .. }), "{d:?}");

    // Nothing was posted, so nothing was updated either.
    assert_eq!(paths(&provider), ["/api/chat.postMessage"; 3]);
    provider.assert_valid();
}

#[tokio::test]
async fn bot_reply_is_accepted_when_the_parent_update_fails() {
    let provider = Provider::start(validate_bot, respond_bot).await;
    let slack = bot(&provider, TIMEOUT);
    let first = slack.send(&message(Occasion::Opened), None).await;
    let Delivery::Accepted {
        reference: Some(reference),
        ..
    } = first
    else {
        panic!("the first message opens a thread: {first:?}")
    };

    provider.script([
        Answer::Status(
            200,
            json!({"ok": true, "channel": CHANNEL_ID, "ts": next_ts()}).to_string(),
        ),
        Answer::Status(
            200,
            r#"{"ok":false,"error":"cant_update_message"}"#.to_owned(),
        ),
    ]);
    let d = slack
        .send(&message(Occasion::RollbackStarted), Some(&reference))
        .await;

    assert!(
        matches!(&d, Delivery::Accepted { reference: Some(r), .. } if *r == reference),
        "{d:?}"
    );
    assert_eq!(
        paths(&provider),
        [
            "/api/chat.postMessage",
            "/api/chat.postMessage",
            "/api/chat.update"
        ]
    );
    provider.assert_valid();
}

#[tokio::test]
async fn bot_failed_reply_is_not_followed_by_an_update() {
    let provider = Provider::start(validate_bot, respond_bot).await;
    let slack = bot(&provider, TIMEOUT);
    let first = slack.send(&message(Occasion::Opened), None).await;
    let Delivery::Accepted {
        reference: Some(reference),
        ..
    } = first
    else {
        panic!("the first message opens a thread: {first:?}")
    };

    provider.script([Answer::RetryAfter(429, 3)]);
    let d = slack
        .send(&message(Occasion::RollbackStarted), Some(&reference))
        .await;

    assert!(matches!(d, Delivery::Retry { .. }), "{d:?}");
    assert_eq!(paths(&provider), ["/api/chat.postMessage"; 2]);
}

// ---- both modes ----

#[tokio::test]
async fn a_hanging_provider_is_retried_within_the_timeout() {
    let timeout = Duration::from_millis(300);
    for mode in ["webhook", "bot"] {
        let provider = Provider::start(
            if mode == "bot" {
                validate_bot
            } else {
                validate_webhook
            },
            if mode == "bot" {
                respond_bot
            } else {
                respond_webhook
            },
        )
        .await;
        let slack = if mode == "bot" {
            bot(&provider, timeout)
        } else {
            webhook(&provider, timeout)
        };
        provider.script([Answer::Hang]);

        let started = Instant::now();
        let d = slack.send(&message(Occasion::Opened), None).await;
        let took = started.elapsed();

        assert!(
            matches!(&d, Delivery::Retry { after: None, reason } if reason.starts_with("no answer within")),
            "{mode}: {d:?}"
        );
        assert!(took >= timeout, "{mode}: gave up after {took:?}");
        assert!(took < Duration::from_secs(3), "{mode}: took {took:?}");
        assert_eq!(provider.requests().len(), 1, "{mode}");
        assert_no_secret(&d);
    }
}

#[tokio::test]
async fn secrets_never_appear_in_a_delivery() {
    let answers = || {
        [
            Answer::Status(200, "ok".to_owned()),
            Answer::Status(404, "no_service".to_owned()),
            Answer::Status(200, r#"{"ok":false,"error":"invalid_auth"}"#.to_owned()),
            Answer::Status(200, "<html>not slack</html>".to_owned()),
            Answer::RetryAfter(429, 1),
            Answer::Status(503, "down".to_owned()),
            Answer::Hang,
        ]
    };
    let mut deliveries = Vec::new();
    let webhook_provider = Provider::start(validate_webhook, respond_webhook).await;
    let bot_provider = Provider::start(validate_bot, respond_bot).await;
    let clients = [
        webhook(&webhook_provider, Duration::from_millis(300)),
        bot(&bot_provider, Duration::from_millis(300)),
    ];
    webhook_provider.script(answers());
    bot_provider.script(answers());
    for slack in &clients {
        for _ in 0..answers().len() {
            deliveries.push(slack.send(&message(Occasion::Opened), None).await);
        }
    }
    // A refused connection: the error must not name the URL.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let closed = SlackSpec::Webhook {
        url: SecretString::from(format!("http://127.0.0.1:{port}{WEBHOOK_PATH}")),
    };
    let refused = Slack::new(&closed, &rearguard::http::client(), TIMEOUT)
        .send(&message(Occasion::Opened), None)
        .await;
    assert!(matches!(refused, Delivery::Retry { .. }), "{refused:?}");
    deliveries.push(refused);

    assert!(
        deliveries
            .iter()
            .any(|d| matches!(d, Delivery::Rejected { .. }))
    );
    for d in &deliveries {
        assert_no_secret(d);
    }
}
