//! The email notifier against a local stand-in for its provider.
//!
//! Each test starts its own SMTP server (`smtp.rs`), which checks every command and every
//! message it receives and fails the test on a protocol or format violation.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use rearguard::config::{EmailSpec, Occasion, SmtpTls};
use rearguard::notify::email::Email;
use rearguard::notify::{Delivery, Message};
use secrecy::SecretString;

use crate::smtp::{Failure, Setup, SmtpServer};

const NOW_MS: u64 = 1_760_000_000_000;

const TIMEOUT: Duration = Duration::from_secs(5);

fn spec(server: &SmtpServer) -> EmailSpec {
    EmailSpec {
        host: "127.0.0.1".to_owned(),
        port: server.port(),
        tls: SmtpTls::None,
        username: None,
        password: None,
        from: "Rearguard <rearguard@example.com>".to_owned(),
        to: vec!["ops@example.com".to_owned(), "sre@example.com".to_owned()],
    }
}

fn with_credentials(spec: EmailSpec, user: &str, password: &str) -> EmailSpec {
    EmailSpec {
        username: Some(user.to_owned()),
        password: Some(SecretString::from(password.to_owned())),
        ..spec
    }
}

/// A real (not test) message about a target whose name needs encoding in a header.
fn message() -> Message {
    let mut msg = Message::test("mail", NOW_MS);
    msg.test = false;
    msg.incident = "café-🚨-20251009T093320".to_owned();
    msg.id = format!("{}-1", msg.incident);
    msg.facts.target = "café-🚨".to_owned();
    msg
}

async fn send(spec: &EmailSpec, timeout: Duration, msg: &Message) -> Delivery {
    let email = Email::new(spec, timeout).expect("the settings are usable");
    email.send(msg, None).await
}

#[tokio::test]
async fn a_message_is_delivered_with_envelope_subject_threading_and_facts() {
    let server = SmtpServer::start(Setup::default()).await;
    let msg = message();

    let delivery = send(&spec(&server), TIMEOUT, &msg).await;

    let Delivery::Accepted { reference, answer } = delivery else {
        panic!("expected the relay to accept the mail, got {delivery:?}");
    };
    assert_eq!(reference, None);
    assert_eq!(answer, "smtp 250: 2.0.0 ok: queued as M1");
    let received = server.received();
    assert_eq!(received.len(), 1, "one mail for all recipients");
    let got = &received[0];
    assert_eq!(got.mail_from, "rearguard@example.com");
    assert_eq!(got.rcpt_to, ["ops@example.com", "sre@example.com"]);
    assert_eq!(got.user, None);

    let mail = &got.mail;
    // The relay offered no 8BITMIME: headers and body must have been encoded.
    assert!(got.data.is_ascii(), "{}", got.data);
    assert_eq!(
        mail.subject(),
        "café-🚨: rollback started [café-🚨-20251009T093320]"
    );
    assert!(
        mail.header("From")
            .is_some_and(|f| f.contains("<rearguard@example.com>")),
        "{:?}",
        mail.header("From")
    );
    let to = mail.header("To").unwrap_or_default();
    assert!(
        to.contains("ops@example.com") && to.contains("sre@example.com"),
        "{to}"
    );
    assert_eq!(
        mail.header("Content-Type"),
        Some("text/plain; charset=utf-8")
    );
    // Characters a message id may not hold are escaped; the thread id is the incident's.
    let thread = "<caf=C3=A9-=F0=9F=9A=A8-20251009T093320@rearguard>";
    assert_eq!(
        mail.header("Message-ID"),
        Some("<caf=C3=A9-=F0=9F=9A=A8-20251009T093320-1@rearguard>")
    );
    assert_eq!(mail.header("In-Reply-To"), Some(thread));
    assert_eq!(mail.header("References"), Some(thread));

    let body = &mail.body;
    for line in [
        "café-🚨: rollback started",
        "Incident: café-🚨-20251009T093320",
        "Target: café-🚨",
        "Rule: error-rate (example-errors > 5% for 10s): firing;",
        "Revision: r42 -> r41",
        "Plan: example-plan",
        "Action: switch release (release_switch, attempt 1): ok",
    ] {
        assert!(body.contains(line), "{line:?} missing from\n{body}");
    }
    assert!(!body.contains("This is a test message"), "{body}");
}

#[tokio::test]
async fn a_test_message_says_so_in_subject_and_body() {
    let server = SmtpServer::start(Setup::default()).await;
    let msg = Message::test("mail", NOW_MS);

    let delivery = send(&spec(&server), TIMEOUT, &msg).await;

    assert!(
        matches!(delivery, Delivery::Accepted { .. }),
        "{delivery:?}"
    );
    let received = server.received();
    let mail = &received[0].mail;
    assert_eq!(
        mail.subject(),
        format!(
            "[TEST] example-service: rollback started [{}]",
            msg.incident
        )
    );
    assert!(
        mail.body
            .starts_with("This is a test message from `rearguard notify-test`"),
        "{}",
        mail.body
    );
}

#[tokio::test]
async fn a_relay_that_requires_auth_accepts_the_right_password() {
    let server = SmtpServer::start(Setup {
        credentials: Some(("rearguard".to_owned(), "correct horse".to_owned())),
        ..Setup::default()
    })
    .await;
    let spec = with_credentials(spec(&server), "rearguard", "correct horse");

    let delivery = send(&spec, TIMEOUT, &message()).await;

    assert!(
        matches!(delivery, Delivery::Accepted { .. }),
        "{delivery:?}"
    );
    let received = server.received();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].user.as_deref(), Some("rearguard"));
}

#[tokio::test]
async fn auth_login_works_when_it_is_the_only_mechanism() {
    let server = SmtpServer::start(Setup {
        credentials: Some(("rearguard".to_owned(), "correct horse".to_owned())),
        mechanisms: "LOGIN",
        ..Setup::default()
    })
    .await;
    let spec = with_credentials(spec(&server), "rearguard", "correct horse");

    let delivery = send(&spec, TIMEOUT, &message()).await;

    assert!(
        matches!(delivery, Delivery::Accepted { .. }),
        "{delivery:?}"
    );
    assert_eq!(server.received()[0].user.as_deref(), Some("rearguard"));
}

#[tokio::test]
async fn a_wrong_password_is_rejected_without_the_password_in_the_reason() {
    let server = SmtpServer::start(Setup {
        credentials: Some(("rearguard".to_owned(), "correct horse".to_owned())),
        ..Setup::default()
    })
    .await;
    let spec = with_credentials(spec(&server), "rearguard", "wrong battery");

    let delivery = send(&spec, TIMEOUT, &message()).await;

    let Delivery::Rejected { reason } = delivery else {
        panic!("a failed AUTH is a configuration error, got {delivery:?}");
    };
    // The relay echoes the password it was sent; it is blanked out.
    assert!(
        reason.contains("535") && reason.contains("[redacted]"),
        "{reason}"
    );
    assert!(!reason.contains("wrong battery"), "{reason}");
    assert!(server.received().is_empty());
}

#[tokio::test]
async fn a_rejected_recipient_is_refused_for_good() {
    let server = SmtpServer::start(Setup {
        reject_recipient: Some("sre@example.com".to_owned()),
        ..Setup::default()
    })
    .await;

    let delivery = send(&spec(&server), TIMEOUT, &message()).await;

    let Delivery::Rejected { reason } = delivery else {
        panic!("a 550 recipient is a configuration error, got {delivery:?}");
    };
    assert!(
        reason.contains("550") && reason.contains("sre@example.com"),
        "{reason}"
    );
    assert!(server.received().is_empty());
}

#[tokio::test]
async fn a_busy_relay_is_retried() {
    let server = SmtpServer::start(Setup {
        failure: Some(Failure::BusyOnConnect),
        ..Setup::default()
    })
    .await;

    let delivery = send(&spec(&server), TIMEOUT, &message()).await;

    let Delivery::Retry { after, reason } = delivery else {
        panic!("a 421 greeting is worth retrying, got {delivery:?}");
    };
    assert_eq!(after, None);
    assert!(reason.contains("421"), "{reason}");
    assert_eq!(server.connections(), 1);
}

#[tokio::test]
async fn a_451_after_data_is_retried() {
    let server = SmtpServer::start(Setup {
        failure: Some(Failure::FailAfterData),
        ..Setup::default()
    })
    .await;

    let delivery = send(&spec(&server), TIMEOUT, &message()).await;

    let Delivery::Retry { after, reason } = delivery else {
        panic!("a 451 after DATA is worth retrying, got {delivery:?}");
    };
    assert_eq!(after, None);
    assert!(reason.contains("451"), "{reason}");
    assert!(server.received().is_empty());
}

#[tokio::test]
async fn a_hanging_relay_is_retried_within_the_timeout() {
    let server = SmtpServer::start(Setup {
        failure: Some(Failure::Hang),
        ..Setup::default()
    })
    .await;
    let timeout = Duration::from_millis(500);

    let started = Instant::now();
    let delivery = send(&spec(&server), timeout, &message()).await;
    let took = started.elapsed();

    assert!(
        matches!(delivery, Delivery::Retry { after: None, .. }),
        "{delivery:?}"
    );
    assert!(took >= timeout / 2, "gave up after {took:?}");
    assert!(took < Duration::from_secs(2), "took {took:?}");
    assert_eq!(server.connections(), 1);
}

#[tokio::test]
async fn mails_of_one_incident_share_one_thread_id() {
    let server = SmtpServer::start(Setup::default()).await;
    let first = message();
    let second = Message {
        id: format!("{}-2", first.incident),
        occasion: Occasion::RollbackSucceeded,
        ..message()
    };
    let other = Message {
        incident: "shop-20251009T100000".to_owned(),
        id: "shop-20251009T100000-1".to_owned(),
        ..message()
    };
    let email = Email::new(&spec(&server), TIMEOUT).unwrap();

    for msg in [&first, &second, &other] {
        let delivery = email.send(msg, None).await;
        assert!(
            matches!(delivery, Delivery::Accepted { .. }),
            "{delivery:?}"
        );
    }

    let received = server.received();
    let header = |i: usize, name: &str| received[i].mail.header(name).unwrap().to_owned();
    assert_eq!(header(0, "References"), header(1, "References"));
    assert_eq!(header(0, "In-Reply-To"), header(1, "In-Reply-To"));
    assert_ne!(header(0, "Message-ID"), header(1, "Message-ID"));
    assert_ne!(header(0, "References"), header(2, "References"));
    assert_eq!(header(2, "References"), "<shop-20251009T100000@rearguard>");
    assert!(
        received[1].mail.subject().contains("rollback succeeded"),
        "{}",
        received[1].mail.subject()
    );
}

#[tokio::test]
async fn a_relay_without_starttls_gets_no_credentials_and_is_refused() {
    let server = SmtpServer::start(Setup {
        credentials: Some(("rearguard".to_owned(), "correct horse".to_owned())),
        ..Setup::default()
    })
    .await;
    let spec = EmailSpec {
        tls: SmtpTls::StartTls,
        ..with_credentials(spec(&server), "rearguard", "correct horse")
    };

    let delivery = send(&spec, TIMEOUT, &message()).await;

    // Wrong port or `tls` setting, or someone stripping STARTTLS: nothing is sent in the
    // clear, and no retry makes the relay offer it.
    let Delivery::Rejected { reason } = delivery else {
        panic!("a relay without STARTTLS is a configuration error, got {delivery:?}");
    };
    assert!(reason.contains("STARTTLS"), "{reason}");
    let commands = server.commands();
    assert!(
        commands.iter().all(|c| c == "EHLO" || c == "QUIT"),
        "{commands:?}"
    );
    assert!(server.received().is_empty());
}

#[tokio::test]
async fn a_failed_tls_handshake_is_retried() {
    // A relay that greets in plain text where TLS from the first byte is expected. (The
    // SMTP server would rightly count the ClientHello as a protocol violation.)
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let relay = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        stream.write_all(b"220 plain ESMTP\r\n").await.unwrap();
        let mut sink = Vec::new();
        let _ = stream.read_to_end(&mut sink).await;
    });
    let spec = EmailSpec {
        host: "127.0.0.1".to_owned(),
        port,
        tls: SmtpTls::Tls,
        username: None,
        password: None,
        from: "rearguard@example.com".to_owned(),
        to: vec!["ops@example.com".to_owned()],
    };

    let delivery = send(&spec, TIMEOUT, &message()).await;

    let Delivery::Retry { after, reason } = delivery else {
        panic!("a failed TLS handshake is worth retrying, got {delivery:?}");
    };
    assert_eq!(after, None);
    assert!(reason.starts_with("tls failed: "), "{reason}");
    relay.await.unwrap();
}
