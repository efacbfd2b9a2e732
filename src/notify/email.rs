//! Email over SMTP: one plain-text mail per message to every `to` address, sent through
//! one relay with lettre (rustls with ring when the relay speaks TLS).
//!
//! Mails of one incident form one thread in mail clients: each mail has its own
//! `Message-ID` (`<{message id}@rearguard>`) and points with `In-Reply-To` and
//! `References` at the incident's stable thread id (`<{incident}@rearguard>`), which no
//! mail carries itself, so threading needs no reference from an earlier delivery.
//!
//! SMTP replies are classified by their code: 5xx is refused for good (unknown mailbox,
//! failed authentication), 4xx and every transport failure (refused connection, timeout,
//! TLS) is retried. The password never appears in a reason, not even when a relay echoes
//! what it was sent.

use std::time::Duration;

use base64::Engine as _;
use lettre::message::header::{ContentType, MIME_VERSION_1_0};
use lettre::message::{Mailbox, MessageBuilder};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::transport::smtp::response::Response;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use secrecy::{ExposeSecret, SecretString};

use super::{Delivery, Message, text};
use crate::config::units::format_duration;
use crate::config::{EmailSpec, SmtpTls};

/// The longest subject, in characters. Far below the 998 octets a header line may take
/// even when every character needs encoding, and as much as a mail client shows.
pub const SUBJECT_LIMIT: usize = 200;

/// The longest reply text kept in a [`Delivery`] description.
const REPLY_LIMIT: usize = 300;

/// The domain part of the message ids rearguard makes up.
const ID_DOMAIN: &str = "rearguard";

/// A relay ready to send.
#[derive(Debug)]
pub struct Email {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    to: Vec<Mailbox>,
    /// Texts that must not reach a description: the password and the encodings in which
    /// AUTH PLAIN and AUTH LOGIN send it.
    redacted: Vec<SecretString>,
    timeout: Duration,
}

impl Email {
    /// Builds the transport for `spec.host:spec.port`. Fails only when the settings
    /// cannot be used at all: a host that is not a host name or an address, or a `from`
    /// or `to` that is not an email address. Connects to nothing.
    pub fn new(spec: &EmailSpec, timeout: Duration) -> Result<Email, String> {
        let host = spec.host.trim();
        if rustls::pki_types::ServerName::try_from(host).is_err() {
            return Err(format!(
                "`host` is not a valid host name or IP address: {:?}",
                spec.host
            ));
        }
        let from = spec
            .from
            .parse::<Mailbox>()
            .map_err(|e| format!("`from` is not a valid email address ({:?}): {e}", spec.from))?;
        if spec.to.is_empty() {
            return Err("`to` must list at least one address".to_owned());
        }
        let to = spec
            .to
            .iter()
            .enumerate()
            .map(|(i, addr)| {
                addr.parse::<Mailbox>()
                    .map_err(|e| format!("`to[{i}]` is not a valid email address ({addr:?}): {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;

        let tls = match spec.tls {
            SmtpTls::None => Tls::None,
            SmtpTls::StartTls => Tls::Required(tls_parameters(host)?),
            SmtpTls::Tls => Tls::Wrapper(tls_parameters(host)?),
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
            .port(spec.port)
            .tls(tls)
            .timeout(Some(timeout));
        let mut redacted = Vec::new();
        if let (Some(username), Some(password)) = (&spec.username, &spec.password) {
            let password = password.expose_secret();
            builder = builder.credentials(Credentials::new(username.clone(), password.to_owned()));
            if !password.is_empty() {
                let b64 = base64::engine::general_purpose::STANDARD;
                redacted.push(SecretString::from(password.to_owned()));
                redacted.push(SecretString::from(b64.encode(password)));
                redacted.push(SecretString::from(
                    b64.encode(format!("\0{username}\0{password}")),
                ));
            }
        }
        Ok(Email {
            transport: builder.build(),
            from,
            to,
            redacted,
            timeout,
        })
    }

    /// Sends one mail for `msg` to every recipient. The whole SMTP session (connection,
    /// TLS, authentication, transaction) is bounded by the notifier's timeout. `thread` is
    /// not needed: the thread id follows from the incident.
    pub async fn send(&self, msg: &Message, _thread: Option<&str>) -> Delivery {
        let mail = match compose(msg, &self.from, &self.to) {
            Ok(mail) => mail,
            Err(e) => {
                return Delivery::Rejected {
                    reason: format!("cannot compose the email: {e}"),
                };
            }
        };
        match tokio::time::timeout(self.timeout, self.transport.send(mail)).await {
            Err(_) => Delivery::Retry {
                after: None,
                reason: format!("no answer within {}", format_duration(self.timeout)),
            },
            Ok(Ok(response)) => Delivery::Accepted {
                reference: None,
                answer: self.redact(&describe_reply(&response)),
            },
            Ok(Err(error)) => match classify(&error) {
                Verdict::Retry => Delivery::Retry {
                    after: None,
                    reason: self.redact(&describe_error(&error)),
                },
                Verdict::Rejected => Delivery::Rejected {
                    reason: self.redact(&describe_error(&error)),
                },
            },
        }
    }

    fn redact(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for secret in &self.redacted {
            out = out.replace(secret.expose_secret(), "[redacted]");
        }
        out
    }
}

fn tls_parameters(host: &str) -> Result<TlsParameters, String> {
    crate::http::install_crypto_provider();
    TlsParameters::new(host.to_owned())
        .map_err(|e| format!("`host` cannot be used for TLS ({host:?}): {e}"))
}

/// The mail for one message: headers, threading and the plain-text body.
fn compose(msg: &Message, from: &Mailbox, to: &[Mailbox]) -> Result<lettre::Message, String> {
    let thread = thread_id(&msg.incident);
    let mut builder: MessageBuilder = lettre::Message::builder()
        .from(from.clone())
        .subject(subject(msg))
        .message_id(Some(message_id(&msg.id)))
        .in_reply_to(thread.clone())
        .references(thread)
        .user_agent(crate::http::USER_AGENT.to_owned())
        // lettre adds `MIME-Version` only to multipart bodies, but the body's
        // `Content-Transfer-Encoding` is MIME too (RFC 2045 section 4).
        .header(MIME_VERSION_1_0)
        .header(ContentType::TEXT_PLAIN);
    for mailbox in to {
        builder = builder.to(mailbox.clone());
    }
    builder.body(text::plain(msg)).map_err(|e| e.to_string())
}

/// `[TEST] shop: rollback started [shop-20250101T120000]`, at most [`SUBJECT_LIMIT`]
/// characters, on one line. A long title is cut before the incident id, which stays
/// whole unless it alone is too long.
pub fn subject(msg: &Message) -> String {
    let one_line = |s: &str| -> String {
        s.chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect()
    };
    let title = one_line(&text::title(msg));
    let suffix = format!(" [{}]", one_line(&msg.incident));
    let room = SUBJECT_LIMIT.saturating_sub(suffix.chars().count());
    if room >= SUBJECT_LIMIT / 2 {
        format!("{}{suffix}", text::truncate(&title, room))
    } else {
        text::truncate(&format!("{title}{suffix}"), SUBJECT_LIMIT)
    }
}

/// The `Message-ID` of the mail for one message: `<{id}@rearguard>`.
pub fn message_id(id: &str) -> String {
    format!("<{}@{ID_DOMAIN}>", id_part(id))
}

/// The id every mail of an incident refers to: `<{incident}@rearguard>`.
pub fn thread_id(incident: &str) -> String {
    format!("<{}@{ID_DOMAIN}>", id_part(incident))
}

/// `id` as the left part of a message id (RFC 5322 `dot-atom-text`): every octet of a
/// character outside `atext`, and every `=` and `.`, is written `=XX`, so that distinct
/// ids stay distinct and a target's name cannot break the header.
fn id_part(id: &str) -> String {
    let mut part = String::with_capacity(id.len());
    for c in id.chars() {
        if c.is_ascii_alphanumeric() || "!#$%&'*+-/?^_`{|}~".contains(c) {
            part.push(c);
        } else {
            let mut utf8 = [0u8; 4];
            for b in c.encode_utf8(&mut utf8).bytes() {
                part.push_str(&format!("={b:02X}"));
            }
        }
    }
    if part.is_empty() {
        // Not empty, and unlike any escaped id: `=` is always followed by two digits.
        part.push('=');
    }
    part
}

/// What an SMTP failure means for the outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Retry,
    Rejected,
}

/// 5xx replies and client-side refusals (no authentication mechanism in common, no
/// STARTTLS on a relay that must offer it) are configuration problems no retry fixes;
/// 4xx replies, unreadable replies and transport failures (refused connection, timeout,
/// TLS) are worth retrying.
fn classify(error: &lettre::transport::smtp::Error) -> Verdict {
    match error.status() {
        Some(code) => verdict_of_code(u16::from(code)),
        None if error.is_client() => Verdict::Rejected,
        None => Verdict::Retry,
    }
}

/// The verdict on a negative SMTP reply code (RFC 5321 section 4.2.1).
fn verdict_of_code(code: u16) -> Verdict {
    if (500..600).contains(&code) {
        Verdict::Rejected
    } else {
        Verdict::Retry
    }
}

/// `250: 2.0.0 Ok: queued as 4F2A`, bounded in length.
fn describe_reply(response: &Response) -> String {
    let said = response.message().collect::<Vec<_>>().join(" ");
    let said = text::truncate(said.trim(), REPLY_LIMIT);
    if said.is_empty() {
        format!("smtp {}", response.code())
    } else {
        format!("smtp {}: {said}", response.code())
    }
}

/// A failure in a few words: the reply code and the relay's text, or what broke and its
/// root cause (`tls failed: received corrupt message of type InvalidContentType`).
fn describe_error(error: &lettre::transport::smtp::Error) -> String {
    if let Some(code) = error.status() {
        let said = std::error::Error::source(error)
            .map(|s| s.to_string())
            .unwrap_or_default();
        let said = text::truncate(said.trim(), REPLY_LIMIT);
        return if said.is_empty() {
            format!("smtp {code}")
        } else {
            format!("smtp {code}: {said}")
        };
    }
    if error.is_timeout() {
        return "timed out".to_owned();
    }
    let (cause, tls) = root_cause(error);
    let what = if error.is_tls() || tls {
        "tls failed"
    } else if error.is_client() {
        "cannot send"
    } else if error.is_response() {
        "unreadable reply"
    } else {
        "connection failed"
    };
    let cause = text::truncate(cause.trim(), REPLY_LIMIT);
    let mut chars = cause.chars();
    let first = chars.next();
    // `Connection refused` reads better lowercased; `STARTTLS is not ...` does not.
    match (first, chars.clone().next()) {
        (Some(first), Some(second)) if second.is_lowercase() => {
            format!("{what}: {}{}", first.to_lowercase(), chars.as_str())
        }
        _ => format!("{what}: {cause}"),
    }
}

/// The innermost error's text, and whether rustls failed on the way. Looks inside
/// `io::Error`s, whose `source` skips the error they wrap.
fn root_cause(error: &(dyn std::error::Error + 'static)) -> (String, bool) {
    let mut current = error;
    let mut tls = false;
    loop {
        tls |= current.is::<rustls::Error>();
        let wrapped = current
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .map(|inner| inner as &(dyn std::error::Error + 'static));
        match wrapped.or_else(|| current.source()) {
            Some(next) => current = next,
            None => return (current.to_string(), tls),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Facts;

    fn message() -> Message {
        Message::test("mail", 1_700_000_000_000)
    }

    fn spec() -> EmailSpec {
        EmailSpec {
            host: "mail.example.com".to_owned(),
            port: 587,
            tls: SmtpTls::StartTls,
            username: Some("rearguard".to_owned()),
            password: Some(SecretString::from("hunter2".to_owned())),
            from: "Rearguard <rearguard@example.com>".to_owned(),
            to: vec!["ops@example.com".to_owned(), "sre@example.com".to_owned()],
        }
    }

    fn rendered(msg: &Message) -> String {
        let from: Mailbox = "rearguard@example.com".parse().unwrap();
        let to: Mailbox = "ops@example.com".parse().unwrap();
        let mail = compose(msg, &from, &[to]).expect("the mail composes");
        String::from_utf8(mail.formatted()).expect("a formatted mail is ASCII")
    }

    fn header<'a>(mail: &'a str, name: &str) -> Option<&'a str> {
        let head = mail.split("\r\n\r\n").next()?;
        head.split("\r\n")
            .find_map(|line| line.strip_prefix(&format!("{name}: ")))
    }

    #[test]
    fn test_messages_are_marked_in_the_subject_with_the_incident_id() {
        let msg = message();
        assert_eq!(
            subject(&msg),
            format!(
                "[TEST] example-service: {} [{}]",
                msg.occasion.headline(),
                msg.incident
            )
        );
        let real = Message {
            test: false,
            ..message()
        };
        assert!(!subject(&real).contains("[TEST]"), "{}", subject(&real));
    }

    #[test]
    fn long_multibyte_subjects_are_cut_on_characters_keeping_the_incident_id() {
        let msg = Message {
            facts: Facts {
                target: "サービス🚨".repeat(100),
                ..message().facts
            },
            ..message()
        };
        let s = subject(&msg);
        assert!(s.chars().count() <= SUBJECT_LIMIT, "{s}");
        assert!(
            s.ends_with(&format!("{} [{}]", text::ELLIPSIS, msg.incident)),
            "{s}"
        );

        // An absurd incident id is cut too rather than crowd out everything else.
        let msg = Message {
            incident: "é".repeat(500),
            ..message()
        };
        let s = subject(&msg);
        assert!(s.chars().count() <= SUBJECT_LIMIT, "{s}");
        assert!(s.starts_with("[TEST] example-service"), "{s}");
    }

    #[test]
    fn subjects_stay_on_one_line() {
        let msg = Message {
            facts: Facts {
                target: "shop\r\nBcc: everyone@example.com".to_owned(),
                ..message().facts
            },
            ..message()
        };
        assert!(!subject(&msg).contains(['\r', '\n']));
        let mail = rendered(&msg);
        assert!(header(&mail, "Bcc").is_none(), "{mail}");
    }

    #[test]
    fn mails_of_one_incident_share_a_thread_id_and_have_their_own_message_id() {
        let first = message();
        let second = Message {
            id: format!("{}-2", first.incident),
            ..message()
        };
        let (a, b) = (rendered(&first), rendered(&second));
        let thread = format!("<{}@rearguard>", first.incident);
        for mail in [&a, &b] {
            assert_eq!(header(mail, "In-Reply-To"), Some(thread.as_str()), "{mail}");
            assert_eq!(header(mail, "References"), Some(thread.as_str()), "{mail}");
            assert!(header(mail, "Date").is_some(), "{mail}");
            assert_eq!(header(mail, "MIME-Version"), Some("1.0"), "{mail}");
            assert_eq!(
                header(mail, "Content-Type"),
                Some("text/plain; charset=utf-8"),
                "{mail}"
            );
        }
        assert_eq!(
            header(&a, "Message-ID"),
            Some(format!("<{}@rearguard>", first.id).as_str())
        );
        assert_eq!(
            header(&b, "Message-ID"),
            Some(format!("<{}@rearguard>", second.id).as_str())
        );
    }

    #[test]
    fn message_ids_cannot_break_the_header() {
        assert_eq!(
            message_id("shop.v2 1<x>@y=é"),
            "<shop=2Ev2=201=3Cx=3E=40y=3D=C3=A9@rearguard>"
        );
        assert_ne!(message_id("a b"), message_id("a=20b"));
        assert_eq!(thread_id(""), "<=@rearguard>");
    }

    #[test]
    fn reply_codes_are_classified() {
        for code in [421, 450, 451, 452, 454] {
            assert_eq!(verdict_of_code(code), Verdict::Retry, "{code}");
        }
        for code in [530, 535, 550, 551, 552, 553, 554] {
            assert_eq!(verdict_of_code(code), Verdict::Rejected, "{code}");
        }
    }

    #[test]
    fn settings_that_cannot_work_are_refused_naming_the_key() {
        assert!(Email::new(&spec(), Duration::from_secs(1)).is_ok());
        let tls = EmailSpec {
            tls: SmtpTls::Tls,
            ..spec()
        };
        assert!(Email::new(&tls, Duration::from_secs(1)).is_ok());
        let cases = [
            (
                EmailSpec {
                    host: "not a host".to_owned(),
                    ..spec()
                },
                "`host`",
            ),
            (
                EmailSpec {
                    from: "rearguard".to_owned(),
                    ..spec()
                },
                "`from`",
            ),
            (
                EmailSpec {
                    to: vec!["ops@example.com".to_owned(), "@".to_owned()],
                    ..spec()
                },
                "`to[1]`",
            ),
            (
                EmailSpec {
                    to: Vec::new(),
                    ..spec()
                },
                "`to`",
            ),
        ];
        for (spec, key) in cases {
            let error = Email::new(&spec, Duration::from_secs(1)).expect_err(key);
            assert!(error.starts_with(key), "{error}");
            assert!(!error.contains("hunter2"), "{error}");
        }
    }

    #[test]
    fn the_password_is_not_in_debug_output_or_descriptions() {
        let email = Email::new(&spec(), Duration::from_secs(1)).unwrap();
        let debug = format!("{email:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        // AUTH PLAIN's initial response, as a relay might echo it.
        let plain = base64::engine::general_purpose::STANDARD.encode("\0rearguard\0hunter2");
        let said = email.redact(&format!("535 bad credentials hunter2 {plain}"));
        assert!(
            !said.contains("hunter2") && !said.contains(&plain),
            "{said}"
        );
    }

    #[tokio::test]
    async fn a_refused_connection_is_retried() {
        // A port that was just free and is now closed refuses connections.
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let spec = EmailSpec {
            host: "127.0.0.1".to_owned(),
            port,
            tls: SmtpTls::None,
            ..spec()
        };
        let email = Email::new(&spec, Duration::from_secs(5)).unwrap();
        let delivery = email.send(&message(), None).await;
        assert!(
            matches!(&delivery, Delivery::Retry { after: None, reason } if reason.starts_with("connection failed: connection refused")),
            "{delivery:?}"
        );
    }
}
