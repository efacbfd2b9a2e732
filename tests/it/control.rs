//! The control API and its command line, end to end: the real binary runs the daemon, and
//! the real binary's `status`, `ack`, `pause`, `why` and `resolve` talk to it over HTTP
//! with the token from the configuration. Calls without the token, or with a wrong one,
//! are refused; every call that acts is in the audit trail with who made it, and an
//! operator name that is not printable UTF-8 of at most 128 bytes is refused before
//! anything is done.

use std::path::Path;
use std::process::{Output, Stdio};
use std::sync::atomic::Ordering;
use std::time::Duration;

use rearguard::api::control::Status;
use rearguard::daemon::Event;
use rearguard::store::Store;
use reqwest::header::HeaderValue;

use crate::daemon::{Fixture, binary, load, switch_back};
use crate::support;

const TOKEN: &str = "control-token-6d1f";

async fn cli(cfg: &Path, args: &[&str]) -> Output {
    tokio::process::Command::new(binary())
        .args(args)
        .arg("--config")
        .arg(cfg)
        .args(["--operator", "alice"])
        .output()
        .await
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test]
async fn operators_control_rearguard_through_the_api_with_a_token_and_are_audited() {
    let f = Fixture::new().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    std::fs::write(f.path().join("control.token"), TOKEN).unwrap();
    let extra = format!(
        "listen = \"127.0.0.1:{port}\"\ncontrol_token = {{ file = \"{}/control.token\" }}",
        f.path().display()
    );
    let cfg = f.path().join("rearguard.toml");
    std::fs::write(&cfg, f.config(&switch_back(&f), &extra)).unwrap();
    let mut daemon = tokio::process::Command::new(binary())
        .args(["run", "--config"])
        .arg(&cfg)
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let client = rearguard::http::client();
    support::poll_until_async(Duration::from_secs(10), || {
        let (client, url) = (client.clone(), format!("{base}/readyz"));
        async move {
            client
                .get(url)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        }
    })
    .await
    .expect("rearguard becomes ready");

    // The token is required, and must be right.
    let status = |auth: Option<&str>| {
        let mut r = client.get(format!("{base}/v1/status"));
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        async move { r.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(status(None).await, 401);
    assert_eq!(status(Some("Bearer not-the-token")).await, 401);
    assert_eq!(status(Some(&format!("Bearer {TOKEN}"))).await, 200);
    let unauthorised = client
        .post(format!("{base}/v1/pause"))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthorised.status().as_u16(), 401);

    // A breach with no change to blame: escalated, left to people.
    f.probed(3).await;
    f.svc.broken.store(true, Ordering::SeqCst);
    let mut id = String::new();
    support::poll_until_async(Duration::from_secs(15), || {
        let cfg = cfg.clone();
        async move {
            let out = cli(&cfg, &["status"]).await;
            text(&out).contains("escalated since")
        }
    })
    .await
    .expect("the incident shows in `rearguard status`");
    let out = cli(&cfg, &["status"]).await;
    for line in text(&out).lines() {
        if let Some(rest) = line.strip_prefix("incident ") {
            id = rest.split_whitespace().next().unwrap().to_owned();
        }
    }
    assert!(id.starts_with("shop-"), "{}", text(&out));
    assert!(text(&out).contains("rule down: firing"), "{}", text(&out));

    let ack = cli(&cfg, &["ack", &id]).await;
    assert!(ack.status.success(), "{}", text(&ack));
    let pause = cli(&cfg, &["pause", "shop"]).await;
    assert!(pause.status.success(), "{}", text(&pause));
    let out = text(&cli(&cfg, &["status"]).await);
    assert!(out.contains("(acknowledged)"), "{out}");
    assert!(out.contains("target shop: revision v1; paused"), "{out}");

    // No change was ever seen, so there is nothing to roll back to: refused, and said why.
    let rollback = cli(&cfg, &["rollback", &id]).await;
    assert_eq!(rollback.status.code(), Some(1), "{}", text(&rollback));
    assert!(
        text(&rollback).contains("no previous revision is known"),
        "{}",
        text(&rollback)
    );

    let silence = cli(&cfg, &["silence", "down", "--for", "1h"]).await;
    assert!(silence.status.success(), "{}", text(&silence));
    let out = text(&cli(&cfg, &["status"]).await);
    assert!(out.contains("rule down: firing (silenced until "), "{out}");
    let bad = cli(&cfg, &["silence", "down", "--for", "soon"]).await;
    assert_eq!(bad.status.code(), Some(1), "{}", text(&bad));
    assert!(text(&bad).contains("400"), "{}", text(&bad));
    let lift = cli(&cfg, &["unsilence", "down"]).await;
    assert!(lift.status.success(), "{}", text(&lift));
    assert!(
        !text(&cli(&cfg, &["status"]).await).contains("silenced"),
        "the silence is lifted"
    );

    let unknown = cli(&cfg, &["ack", "no-such-incident"]).await;
    assert_eq!(unknown.status.code(), Some(1));
    assert!(
        text(&unknown).contains("409") && text(&unknown).contains("no open incident"),
        "{}",
        text(&unknown)
    );

    let why = text(&cli(&cfg, &["why", &id]).await);
    assert!(why.contains("down ok -> pending"), "{why}");
    assert!(why.contains("down pending -> firing"), "{why}");
    assert!(why.contains("acknowledged by alice"), "{why}");

    let resolve = cli(&cfg, &["resolve", &id]).await;
    assert!(resolve.status.success(), "{}", text(&resolve));
    // A closed incident is still explained, from the state store.
    let why = text(&cli(&cfg, &["why", &id]).await);
    assert!(
        why.contains("closed: resolved_by_operator") && why.contains("resolved by alice"),
        "{why}"
    );

    // SAFETY: sending a signal to a child we spawned.
    unsafe { libc::kill(daemon.id().unwrap() as i32, libc::SIGTERM) };
    let exited = tokio::time::timeout(Duration::from_secs(15), daemon.wait())
        .await
        .expect("stops within the drain")
        .unwrap();
    assert!(exited.success());

    let trail = Store::open(&f.path().join("state"))
        .unwrap()
        .audit_trail()
        .unwrap();
    let calls: Vec<(String, String, bool)> = trail
        .into_iter()
        .map(|(_, who, what, result)| (who, what, result.starts_with("refused")))
        .collect();
    assert_eq!(
        calls,
        [
            ("alice".to_owned(), format!("acknowledge {id}"), false),
            ("alice".to_owned(), "pause shop".to_owned(), false),
            ("alice".to_owned(), format!("rollback {id}"), true),
            ("alice".to_owned(), "silence down for 1h".to_owned(), false),
            ("alice".to_owned(), "unsilence down".to_owned(), false),
            (
                "alice".to_owned(),
                "acknowledge no-such-incident".to_owned(),
                true
            ),
            ("alice".to_owned(), format!("resolve {id}"), false),
        ]
    );
}

/// The daemon in-process with the control API on, and the address it listens on.
async fn in_process(f: &Fixture) -> (crate::running::Running, String) {
    std::fs::write(f.path().join("control.token"), TOKEN).unwrap();
    let extra = format!(
        "control_token = {{ file = \"{}/control.token\" }}",
        f.path().display()
    );
    let mut d = crate::running::start(load(&f.config(&switch_back(f), &extra)));
    d.wait_for("start", 10, |e| matches!(e, Event::Started))
        .await;
    // The listener is bound before the sources start.
    let addr = d
        .seen
        .iter()
        .find_map(|e| match e {
            Event::Listening(addr) => Some(*addr),
            _ => None,
        })
        .expect("the daemon said where it listens");
    (d, format!("http://{addr}"))
}

/// `POST /v1/pause` as the operator whose header is `operator`, as raw bytes: the answer's
/// status and body.
async fn pause_as(base: &str, operator: &[u8]) -> (u16, String) {
    let response = rearguard::http::client()
        .post(format!("{base}/v1/pause"))
        .bearer_auth(TOKEN)
        .header(
            rearguard::api::control::OPERATOR_HEADER,
            HeaderValue::from_bytes(operator).expect("a value HTTP can carry"),
        )
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

async fn paused_all(base: &str) -> bool {
    let request = rearguard::http::client()
        .get(format!("{base}/v1/status"))
        .bearer_auth(TOKEN);
    let status: Status = request.send().await.unwrap().json().await.unwrap();
    status.paused_all
}

#[tokio::test]
async fn an_operator_name_that_could_forge_log_lines_is_refused_and_nothing_is_done() {
    let f = Fixture::new().await;
    let (d, base) = in_process(&f).await;
    let forged: [&[u8]; 4] = [
        // U+2028 LINE SEPARATOR and U+0085 NEXT LINE: a new line, then a forged field.
        "mallory\u{2028}result=\"paused by alice\"".as_bytes(),
        "mallory\u{85}operator=alice".as_bytes(),
        b"mallory\toperator=alice",
        &[b'm'; 129],
    ];
    for operator in forged {
        let (status, body) = pause_as(&base, operator).await;
        let shown = String::from_utf8_lossy(operator);
        assert_eq!(status, 400, "{shown:?} was answered {status}: {body}");
        assert!(body.contains("x-rearguard-operator"), "{shown:?}: {body}");
    }
    assert!(!paused_all(&base).await, "a refused call paused rearguard");
    d.stop().await;
    let trail = Store::open(&f.path().join("state"))
        .unwrap()
        .audit_trail()
        .unwrap();
    assert!(
        trail.is_empty(),
        "refused calls reached the engine: {trail:?}"
    );
}

#[tokio::test]
async fn a_printable_operator_name_is_taken_whole_into_the_audit_trail() {
    let f = Fixture::new().await;
    let (d, base) = in_process(&f).await;
    let name = "Zoë O'Neil (on call)";
    let (status, body) = pause_as(&base, format!("  {name} ").as_bytes()).await;
    assert_eq!(status, 200, "{body}");
    assert!(paused_all(&base).await, "the call did not pause rearguard");
    d.stop().await;
    let trail = Store::open(&f.path().join("state"))
        .unwrap()
        .audit_trail()
        .unwrap();
    let calls: Vec<(String, String)> = trail
        .into_iter()
        .map(|(_, who, what, _)| (who, what))
        .collect();
    assert_eq!(calls, [(name.to_owned(), "pause all".to_owned())]);
}
