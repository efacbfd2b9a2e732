//! Notifications end to end: the daemon, the engine's escalation, the durable outbox and
//! local stand-ins for the providers. One incident is one Slack thread and one PagerDuty
//! alert; a `kill -9` loses no queued message and re-sends none already accepted; and no
//! secret reaches a log line or a report.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use rearguard::engine::Outcome;
use rearguard::store::{State, Store};

use crate::daemon::{Fixture, binary, load, switch_back};
use crate::provider::{Answer, Provider, Recorded};
use crate::running::start;
use crate::support;

const ROUTING_KEY: &str = "0123456789abcdef0123456789abcdef";
const SLACK_TOKEN: &str = "xoxb-secret-token-4711";

fn any(_: &Recorded) -> Result<(), String> {
    Ok(())
}

static SLACK_TS: AtomicU64 = AtomicU64::new(1);

/// Slack's Web API: every call is authorised and answered `ok` with a fresh `ts`.
fn slack_api(r: &Recorded, _: usize) -> Answer {
    if r.header("authorization") != Some(&format!("Bearer {SLACK_TOKEN}")) {
        return Answer::Status(200, r#"{"ok":false,"error":"invalid_auth"}"#.to_owned());
    }
    let channel = r.json()["channel"].as_str().unwrap_or("?").to_owned();
    let ts = format!("1795000000.{:06}", SLACK_TS.fetch_add(1, Ordering::SeqCst));
    Answer::Status(
        200,
        serde_json::json!({"ok": true, "channel": channel, "ts": ts}).to_string(),
    )
}

fn accepted(_: &Recorded, _: usize) -> Answer {
    Answer::Status(
        202,
        r#"{"status":"success","message":"Event processed"}"#.to_owned(),
    )
}

#[tokio::test]
async fn one_incident_is_one_slack_thread_and_one_pagerduty_alert_triggered_then_resolved() {
    let f = Fixture::new().await;
    let slack = Provider::start(any, slack_api).await;
    let pager = Provider::start(any, accepted).await;
    std::fs::write(f.path().join("slack.token"), SLACK_TOKEN).unwrap();
    std::fs::write(f.path().join("pd.key"), ROUTING_KEY).unwrap();
    let notifiers = format!(
        r#"
[[notifier]]
name = "chat"
type = "slack"
token = {{ file = "{dir}/slack.token" }}
channel = "C0DEPLOYS"
api_url = "{slack}"
per_minute = 600

[[notifier]]
name = "pager"
type = "pagerduty"
routing_key = {{ file = "{dir}/pd.key" }}
url = "{pager}"

[[escalation]]
name = "page"
on = ["opened"]
notify = ["pager", "chat"]

[[escalation]]
name = "team"
on = ["rollback_started", "rollback_succeeded"]
notify = ["chat"]
"#,
        dir = f.path().display(),
        slack = slack.url("/api"),
        pager = pager.url(""),
    );
    let text = format!("{}\n{notifiers}", f.config(&switch_back(&f), ""));
    let mut d = start(load(&text));
    f.probed(3).await;
    f.releases.deploy("v2");
    let inc = d.closed_incident(20).await;
    assert_eq!(
        inc.outcome,
        Some(Outcome::RolledBack),
        "{:#?}",
        inc.timeline
    );

    // opened, rollback_started, rollback_succeeded and resolved in Slack: a parent, then
    // three replies each followed by an update of the parent. PagerDuty: trigger, resolve.
    let calls = slack.server.requests.clone();
    support::poll_until(Duration::from_secs(15), || {
        calls.load(Ordering::SeqCst) >= 7
    })
    .await
    .unwrap_or_else(|_| panic!("slack calls: {:#?}", slack.requests()));
    let hits = pager.server.requests.clone();
    support::poll_until(Duration::from_secs(15), || hits.load(Ordering::SeqCst) >= 2)
        .await
        .unwrap_or_else(|_| panic!("pagerduty calls: {:#?}", pager.requests()));
    d.stop().await;

    let calls = slack.requests();
    let paths: Vec<&str> = calls.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/api/chat.postMessage",
            "/api/chat.postMessage",
            "/api/chat.update",
            "/api/chat.postMessage",
            "/api/chat.update",
            "/api/chat.postMessage",
            "/api/chat.update",
        ]
    );
    let parent = calls[0].json();
    assert!(parent.get("thread_ts").is_none(), "{parent}");
    // Every reply and update names the parent, which the fake answered with a ts.
    let parent_ts = calls[1].json()["thread_ts"]
        .as_str()
        .expect("the first reply is in a thread")
        .to_owned();
    assert!(parent_ts.starts_with("1795000000."), "{parent_ts}");
    for call in &calls[1..] {
        let body = call.json();
        let ts = if call.path.ends_with("chat.update") {
            &body["ts"]
        } else {
            &body["thread_ts"]
        };
        assert_eq!(ts.as_str(), Some(parent_ts.as_str()), "{body}");
    }
    let texts: Vec<String> = calls
        .iter()
        .filter(|c| c.path.ends_with("postMessage"))
        .map(|c| c.json()["text"].as_str().unwrap_or_default().to_owned())
        .collect();
    for (text, what) in texts.iter().zip([
        "incident opened",
        "rollback started",
        "rollback succeeded",
        "resolved",
    ]) {
        assert!(text.contains(what), "{what:?} not in {text:?}");
    }

    let events: Vec<serde_json::Value> = pager.requests().iter().map(|r| r.json()).collect();
    let actions: Vec<&str> = events
        .iter()
        .map(|e| e["event_action"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(actions, ["trigger", "resolve"], "{events:#?}");
    for e in &events {
        assert_eq!(e["dedup_key"].as_str(), Some(inc.id.as_str()), "{e}");
        assert_eq!(e["routing_key"].as_str(), Some(ROUTING_KEY));
    }
    assert!(
        events[0]["payload"]["summary"]
            .as_str()
            .is_some_and(|s| s.contains("shop")),
        "{}",
        events[0]
    );
}

/// The webhook receiver of the restart test: accepts the first request, then answers
/// 500 until `WEBHOOK_UP` is set.
static WEBHOOK_UP: AtomicBool = AtomicBool::new(false);

fn flaky_receiver(_: &Recorded, index: usize) -> Answer {
    if index == 0 || WEBHOOK_UP.load(Ordering::SeqCst) {
        Answer::Status(202, "{}".to_owned())
    } else {
        Answer::Status(500, "receiver is down".to_owned())
    }
}

const WEBHOOK_SECRET: &str = "hmac-secret-never-logged-8842";
const SLACK_URL_SECRET: &str = "T0SECRET/B0SECRET/slack-url-secret-5521";

#[tokio::test]
async fn kill_9_loses_no_queued_notification_and_resends_none_already_accepted() {
    let f = Fixture::new().await;
    let hook = Provider::start(any, flaky_receiver).await;
    // A Slack webhook on a port nobody listens on: its messages wait, and its URL (a
    // secret) must not appear in the retries' log lines.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!(
        "http://{}/services/{SLACK_URL_SECRET}",
        closed.local_addr().unwrap()
    );
    drop(closed);
    std::fs::write(f.path().join("hook.secret"), WEBHOOK_SECRET).unwrap();
    std::fs::write(f.path().join("slack.url"), &dead_url).unwrap();
    let notifiers = format!(
        r#"
[[notifier]]
name = "hook"
type = "webhook"
url = "{url}"
secret = {{ file = "{dir}/hook.secret" }}

[[notifier]]
name = "chat"
type = "slack"
webhook_url = {{ file = "{dir}/slack.url" }}
timeout = "1s"
"#,
        url = hook.url("/rearguard"),
        dir = f.path().display(),
    );
    let cfg = f.path().join("rearguard.toml");
    std::fs::write(
        &cfg,
        format!("{}\n{notifiers}", f.config(&switch_back(&f), "")),
    )
    .unwrap();
    let state = f.path().join("state");
    let run = |log: &str| {
        let log = std::fs::File::create(f.path().join(log)).unwrap();
        tokio::process::Command::new(binary())
            .args(["run", "--config"])
            .arg(&cfg)
            .env("REARGUARD_LOG", "debug")
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    };

    let mut first = run("first.log");
    f.probed(3).await;
    f.releases.deploy("v2");
    // The incident ends (its report is written) while the receiver fails: opened was
    // accepted, the rest wait in the outbox with retries.
    let reports = state.join("reports");
    support::poll_until(Duration::from_secs(20), || {
        std::fs::read_dir(&reports).is_ok_and(|d| d.count() > 0)
    })
    .await
    .expect("the incident is closed and reported");
    let hits = hook.server.requests.clone();
    support::poll_until(Duration::from_secs(10), || hits.load(Ordering::SeqCst) >= 3)
        .await
        .expect("the receiver is tried again after failing");
    first.start_kill().unwrap();
    first.wait().await.unwrap();

    let store = Store::open(&state).unwrap();
    let before: Vec<_> = store
        .messages()
        .unwrap()
        .into_iter()
        .filter(|m| m.notifier == "hook")
        .collect();
    let states: Vec<State> = before.iter().map(|m| m.state).collect();
    assert_eq!(
        states,
        [
            State::Delivered,
            State::Pending,
            State::Pending,
            State::Pending
        ],
        "opened was accepted; rollback_started, rollback_succeeded and resolved wait"
    );
    drop(store);

    WEBHOOK_UP.store(true, Ordering::SeqCst);
    let accepted_before = hook.requests().len();
    let mut second = run("second.log");
    support::poll_until(Duration::from_secs(20), || {
        Store::open_read_only(&state).is_ok_and(|s| {
            let ids: Vec<&str> = before.iter().map(|m| m.id.as_str()).collect();
            s.messages().is_ok_and(|all| {
                all.iter()
                    .filter(|m| ids.contains(&m.id.as_str()))
                    .all(|m| m.state == State::Delivered)
            })
        })
    })
    .await
    .expect("the queued messages are delivered after the restart");
    // SAFETY: sending a signal to a child we spawned.
    unsafe { libc::kill(second.id().unwrap() as i32, libc::SIGTERM) };
    let status = tokio::time::timeout(Duration::from_secs(20), second.wait())
        .await
        .expect("stops within the drain")
        .unwrap();
    assert!(status.success(), "{status:?}");

    // Accepted deliveries: the first request, and every request after the receiver came
    // back. Each message of the first run was accepted exactly once.
    let requests = hook.requests();
    let mut accepted: HashMap<String, usize> = HashMap::new();
    for (i, r) in requests.iter().enumerate() {
        if i == 0 || i >= accepted_before {
            let id = r.header("x-rearguard-id").unwrap_or("?").to_owned();
            assert_eq!(r.json()["id"].as_str(), Some(id.as_str()));
            *accepted.entry(id).or_default() += 1;
        }
    }
    for m in &before {
        assert_eq!(
            accepted.get(&m.id),
            Some(&1),
            "message {} accepted {:?} times",
            m.id,
            accepted.get(&m.id)
        );
    }
    let order: Vec<String> = requests[accepted_before..]
        .iter()
        .filter_map(|r| r.json()["occasion"].as_str().map(str::to_owned))
        .take(3)
        .collect();
    assert_eq!(
        order,
        ["rollback_started", "rollback_succeeded", "resolved"],
        "queued messages go out in order"
    );

    // No secret in any log line or report.
    let mut texts = vec![
        std::fs::read_to_string(f.path().join("first.log")).unwrap(),
        std::fs::read_to_string(f.path().join("second.log")).unwrap(),
    ];
    for entry in std::fs::read_dir(&reports).unwrap() {
        texts.push(std::fs::read_to_string(entry.unwrap().path()).unwrap());
    }
    assert!(
        texts[0].contains("will retry"),
        "the retries are logged: {}",
        texts[0]
    );
    for text in &texts {
        for secret in [WEBHOOK_SECRET, SLACK_URL_SECRET, "slack-url-secret"] {
            assert!(!text.contains(secret), "a secret leaked: {text}");
        }
    }
}

#[tokio::test]
async fn notify_test_sends_a_marked_message_and_reports_the_answer() {
    let receiver = Provider::start(any, accepted).await;
    receiver.script([Answer::Status(401, "signature does not verify".to_owned())]);
    let dir = support::temp_dir();
    std::fs::write(dir.path().join("hook.secret"), WEBHOOK_SECRET).unwrap();
    let cfg = dir.path().join("rearguard.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[[notifier]]
name = "hook"
type = "webhook"
url = "{}"
secret = {{ file = "hook.secret" }}
"#,
            receiver.url("/rearguard")
        ),
    )
    .unwrap();
    let notify_test = |name: &str| {
        let cfg = cfg.clone();
        let name = name.to_owned();
        async move {
            tokio::process::Command::new(binary())
                .args(["notify-test", "--config"])
                .arg(&cfg)
                .arg(&name)
                .output()
                .await
                .unwrap()
        }
    };

    let refused = notify_test("hook").await;
    let out = String::from_utf8_lossy(&refused.stdout);
    assert_eq!(refused.status.code(), Some(1), "{out}");
    assert!(
        out.contains("refused the test message") && out.contains("HTTP 401"),
        "{out}"
    );

    let ok = notify_test("hook").await;
    let out = String::from_utf8_lossy(&ok.stdout);
    assert_eq!(ok.status.code(), Some(0), "{out}");
    assert!(out.contains("accepted the test message"), "{out}");
    let body = receiver.requests()[1].json();
    assert_eq!(body["test"], serde_json::json!(true), "{body}");
    assert!(
        body["summary"].as_str().unwrap().starts_with("[TEST]"),
        "{body}"
    );

    let unknown = notify_test("pager").await;
    let err = String::from_utf8_lossy(&unknown.stderr);
    assert_eq!(unknown.status.code(), Some(64), "{err}");
    assert!(
        err.contains("no notifier is named \"pager\"; configured: hook"),
        "{err}"
    );
    for output in [&refused, &ok, &unknown] {
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(!all.contains(WEBHOOK_SECRET), "{all}");
    }
}
