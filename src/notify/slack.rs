//! Slack, through an incoming webhook or a bot token.
//!
//! An incoming webhook posts one message per incident transition. A bot token keeps one
//! thread per incident: the first message becomes the thread's parent, later messages are
//! replies in it, and after each reply the parent is edited so that its status line
//! shows where the incident stands.
//!
//! Messages are rendered as Block Kit within Slack's documented limits (a header of at
//! most 150 characters, block texts of at most 3,000, at most 50 blocks) with a plain
//! `text` fallback. This module never logs or returns the webhook URL or the token:
//! every request goes through [`super::send_request`], which strips URLs from errors, and
//! descriptions quote only Slack's answers.

use std::time::Duration;

use reqwest::header::CONTENT_TYPE;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};

use super::{Delivery, Message, send_request, text};
use crate::config::{Occasion, SlackSpec};

/// The longest `plain_text` of a header block, in characters.
const HEADER_LIMIT: usize = 150;
/// The longest text of a section or context element, in characters.
const BLOCK_TEXT_LIMIT: usize = 3000;
/// The most blocks one message may carry.
const BLOCKS_LIMIT: usize = 50;
/// The longest top-level `text`. Slack cuts at 40,000 characters, but the fallback is
/// what notifications and screen readers show, so it stays short.
const FALLBACK_LIMIT: usize = 4000;
/// The longest value of one fact, escaped, so that one huge evidence string leaves room
/// for the facts after it.
const FACT_LIMIT: usize = 1500;
/// The longest target name or incident id quoted in the status line.
const NAME_LIMIT: usize = 200;
/// The longest Slack error code quoted in a description.
const ERROR_CODE_LIMIT: usize = 100;
/// The content type the Web API asks for with JSON bodies.
const JSON_UTF8: &str = "application/json; charset=utf-8";
/// What test messages say before anything else.
const TEST_NOTICE: &str = "This is a test message from `rearguard notify-test`; nothing happened.";

/// A Slack notifier ready to send.
#[derive(Debug)]
pub struct Slack {
    client: reqwest::Client,
    mode: Mode,
    timeout: Duration,
}

#[derive(Debug)]
enum Mode {
    /// The incoming webhook's URL, a secret.
    Webhook { url: SecretString },
    Bot {
        token: SecretString,
        channel: String,
        /// The Web API's base URL without a trailing slash.
        api_url: String,
    },
}

impl Slack {
    /// Every request of one delivery is bounded by `timeout`; a reply in a thread makes
    /// two (the reply and the parent's update).
    pub fn new(spec: &SlackSpec, client: &reqwest::Client, timeout: Duration) -> Slack {
        let mode = match spec {
            SlackSpec::Webhook { url } => Mode::Webhook { url: url.clone() },
            SlackSpec::Bot {
                token,
                channel,
                api_url,
            } => Mode::Bot {
                token: token.clone(),
                channel: channel.clone(),
                api_url: api_url.as_str().trim_end_matches('/').to_owned(),
            },
        };
        Slack {
            client: client.clone(),
            mode,
            timeout,
        }
    }

    /// Delivers one message. In bot mode `thread` is the reference the incident's first
    /// accepted message returned (`channel|ts`); without it the message opens a thread.
    pub async fn send(&self, msg: &Message, thread: Option<&str>) -> Delivery {
        match &self.mode {
            Mode::Webhook { url } => self.send_webhook(url, msg).await,
            Mode::Bot {
                token,
                channel,
                api_url,
            } => {
                let bot = Bot {
                    slack: self,
                    token,
                    api_url,
                };
                match thread {
                    None => bot.open_thread(channel, msg).await,
                    Some(reference) => {
                        let (channel, ts) = parse_reference(reference, channel);
                        bot.reply(channel, ts, reference, msg).await
                    }
                }
            }
        }
    }

    async fn send_webhook(&self, url: &SecretString, msg: &Message) -> Delivery {
        let body = json!({
            "text": fallback(msg, None),
            "blocks": blocks(msg, None),
        });
        let request = self
            .client
            .post(url.expose_secret())
            .header(CONTENT_TYPE, JSON_UTF8)
            .body(body.to_string());
        // Incoming webhooks answer `200 ok`, or a status with a short text such as
        // `invalid_payload` or `channel_not_found`: the common classification fits.
        send_request(request, self.timeout).await.0
    }
}

/// The bot mode's calls of the Web API.
struct Bot<'a> {
    slack: &'a Slack,
    token: &'a SecretString,
    api_url: &'a str,
}

impl Bot<'_> {
    /// Posts the incident's first message, which becomes the thread's parent.
    async fn open_thread(&self, channel: &str, msg: &Message) -> Delivery {
        let status = status_line(msg);
        let body = json!({
            "channel": channel,
            "text": fallback(msg, Some(&status)),
            "blocks": blocks(msg, Some(&status)),
        });
        let answer = match self.call("chat.postMessage", &body).await {
            Ok(answer) => answer,
            Err(refused) => return refused,
        };
        let ts = answer.get("ts").and_then(Value::as_str);
        // The answer names the channel by id, which `chat.update` needs; the configured
        // channel may be a name.
        let posted_in = answer
            .get("channel")
            .and_then(Value::as_str)
            .unwrap_or(channel);
        match ts {
            Some(ts) => Delivery::Accepted {
                reference: Some(format!("{posted_in}|{ts}")),
                answer: format!("posted to {posted_in} as {ts}"),
            },
            None => {
                tracing::warn!(
                    channel = posted_in,
                    "slack accepted a message without its ts; later messages of the incident open new threads"
                );
                Delivery::Accepted {
                    reference: None,
                    answer: format!("posted to {posted_in} without a ts"),
                }
            }
        }
    }

    /// Replies in the incident's thread, then brings the parent's status line up to date.
    /// A failed update is logged: the reply itself was delivered.
    async fn reply(&self, channel: &str, ts: &str, reference: &str, msg: &Message) -> Delivery {
        let reply = json!({
            "channel": channel,
            "thread_ts": ts,
            "text": fallback(msg, None),
            "blocks": blocks(msg, None),
        });
        let answer = match self.call("chat.postMessage", &reply).await {
            Ok(answer) => answer,
            Err(refused) => return refused,
        };
        let reply_ts = answer.get("ts").and_then(Value::as_str).unwrap_or("?");

        let status = status_line(msg);
        let update = json!({
            "channel": channel,
            "ts": ts,
            "text": fallback(msg, Some(&status)),
            "blocks": blocks(msg, Some(&status)),
        });
        if let Err(failed) = self.call("chat.update", &update).await {
            let reason = match &failed {
                Delivery::Retry { reason, .. } | Delivery::Rejected { reason } => reason.as_str(),
                Delivery::Accepted { answer, .. } => answer.as_str(),
            };
            tracing::warn!(
                incident = %msg.incident,
                channel,
                ts,
                reason,
                "cannot update the slack thread's parent message; its status line is stale"
            );
        }
        Delivery::Accepted {
            reference: Some(reference.to_owned()),
            answer: format!("replied in thread {ts} of {channel} as {reply_ts}"),
        }
    }

    /// Calls one Web API method. `Ok` is the answer of an `ok:true` call; `Err` is what
    /// the delivery amounts to otherwise.
    async fn call(&self, method: &str, body: &Value) -> Result<Value, Delivery> {
        let request = self
            .slack
            .client
            .post(format!("{}/{method}", self.api_url))
            .bearer_auth(self.token.expose_secret())
            .header(CONTENT_TYPE, JSON_UTF8)
            .body(body.to_string());
        match send_request(request, self.slack.timeout).await {
            (Delivery::Accepted { .. }, answer) => web_api_answer(answer.as_deref().unwrap_or("")),
            (other, _) => Err(other),
        }
    }
}

/// Reads a Web API answer given with HTTP 2xx: Slack reports errors as `ok:false` with an
/// error code rather than with a status.
fn web_api_answer(body: &str) -> Result<Value, Delivery> {
    let Ok(answer) = serde_json::from_str::<Value>(body) else {
        return Err(Delivery::Rejected {
            reason: format!(
                "slack answered with something other than json: {}",
                text::truncate(body.trim(), ERROR_CODE_LIMIT)
            ),
        });
    };
    if answer.get("ok").and_then(Value::as_bool) == Some(true) {
        return Ok(answer);
    }
    let code = answer
        .get("error")
        .and_then(Value::as_str)
        .unwrap_or("unknown_error");
    let reason = format!("slack api error {}", text::truncate(code, ERROR_CODE_LIMIT));
    Err(if is_transient(code) {
        Delivery::Retry {
            after: None,
            reason,
        }
    } else {
        Delivery::Rejected { reason }
    })
}

/// Whether a Web API error code may go away by itself. Every other code (`invalid_auth`,
/// `channel_not_found`, `not_in_channel`, `msg_too_long`, `invalid_blocks`, ...) is a
/// configuration or rendering problem that no retry fixes.
fn is_transient(code: &str) -> bool {
    matches!(
        code,
        "ratelimited"
            | "rate_limited"
            | "internal_error"
            | "fatal_error"
            | "service_unavailable"
            | "request_timeout"
            | "team_added_to_org"
    )
}

/// Splits a thread reference into channel id and parent ts. A bare ts (no channel) is
/// taken to be in the configured channel.
fn parse_reference<'a>(reference: &'a str, configured: &'a str) -> (&'a str, &'a str) {
    match reference.split_once('|') {
        Some((channel, ts)) => (channel, ts),
        None => (configured, reference),
    }
}

/// `text` escaped for mrkdwn (`&`, `<` and `>`, as Slack asks) and cut to at most `max`
/// characters, never inside a character or an escape.
fn mrkdwn(text: &str, max: usize) -> String {
    let escaped_len = |c: char| match c {
        '&' => 5,
        '<' | '>' => 4,
        _ => 1,
    };
    let full: usize = text.chars().map(escaped_len).sum();
    // Leave room for the ellipsis only when the text has to be cut.
    let room = if full <= max {
        max
    } else {
        max.saturating_sub(1)
    };
    let mut out = String::with_capacity(text.len().min(max * 4));
    let mut used = 0;
    for c in text.chars() {
        let n = escaped_len(c);
        if used + n > room {
            if max > 0 {
                out.push(text::ELLIPSIS);
            }
            return out;
        }
        used += n;
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            _ => out.push(c),
        }
    }
    out
}

/// The thread parent's first line: `*shop*: rollback started — incident shop-1`, with
/// an emoji for the kind of news and resolution marked in words.
fn status_line(msg: &Message) -> String {
    let resolved = msg.occasion == Occasion::Resolved || msg.facts.state == "resolved";
    let mark = if resolved {
        ":white_check_mark: *RESOLVED* "
    } else {
        match msg.occasion {
            Occasion::RollbackSucceeded => ":large_green_circle: ",
            Occasion::Acknowledged => ":eyes: ",
            _ => ":rotating_light: ",
        }
    };
    format!(
        "{mark}{}*{}*: {} — incident {}",
        text::test_mark(msg),
        mrkdwn(&msg.facts.target, NAME_LIMIT),
        msg.occasion.headline(),
        mrkdwn(&msg.incident, NAME_LIMIT),
    )
}

/// The top-level `text`: what notifications show. `status` leads when given.
fn fallback(msg: &Message, status: Option<&str>) -> String {
    match status {
        Some(status) => {
            let rest = FALLBACK_LIMIT.saturating_sub(status.chars().count() + 1);
            format!("{status}\n{}", mrkdwn(&text::plain(msg), rest))
        }
        None => mrkdwn(&text::plain(msg), FALLBACK_LIMIT),
    }
}

/// The Block Kit blocks: a header with the title, the test notice, the status line
/// (thread parents), then the facts as mrkdwn sections, at most [`BLOCKS_LIMIT`] in all.
fn blocks(msg: &Message, status: Option<&str>) -> Vec<Value> {
    let mut blocks = vec![json!({
        "type": "header",
        "text": {
            "type": "plain_text",
            "text": text::truncate(&text::title(msg), HEADER_LIMIT),
            "emoji": true,
        },
    })];
    if msg.test {
        blocks.push(context(TEST_NOTICE));
    }
    if let Some(status) = status {
        blocks.push(section(&text::truncate(status, BLOCK_TEXT_LIMIT)));
    }

    let lines: Vec<String> = text::facts(msg)
        .into_iter()
        .map(|(label, value)| format!("*{label}:* {}", mrkdwn(&value, FACT_LIMIT)))
        .collect();
    // One block stays free for the note on facts left out.
    let room = BLOCKS_LIMIT - blocks.len() - 1;
    let mut sections: Vec<String> = Vec::new();
    let mut shown = 0;
    for line in &lines {
        let fits = sections.last().is_some_and(|current| {
            current.chars().count() + 1 + line.chars().count() <= BLOCK_TEXT_LIMIT
        });
        if fits {
            let current = sections.last_mut().expect("checked above");
            current.push('\n');
            current.push_str(line);
        } else if sections.len() < room {
            sections.push(line.clone());
        } else {
            break;
        }
        shown += 1;
    }
    blocks.extend(sections.iter().map(|s| section(s)));
    if shown < lines.len() {
        blocks.push(context(&format!(
            "{} more facts not shown",
            lines.len() - shown
        )));
    }
    blocks
}

/// A section block of mrkdwn text, already escaped and within the limit.
fn section(mrkdwn: &str) -> Value {
    json!({"type": "section", "text": {"type": "mrkdwn", "text": mrkdwn}})
}

/// A context block with one mrkdwn element, already escaped and within the limit.
fn context(mrkdwn: &str) -> Value {
    json!({"type": "context", "elements": [{"type": "mrkdwn", "text": mrkdwn}]})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::RuleFact;

    fn message() -> Message {
        Message::test("slack", 1_700_000_000_000)
    }

    /// Every text of every block, with the limit it must respect.
    fn block_texts(blocks: &[Value]) -> Vec<(String, usize)> {
        let mut out = Vec::new();
        for b in blocks {
            match b["type"].as_str().unwrap() {
                "header" => {
                    assert_eq!(b["text"]["type"], "plain_text");
                    out.push((b["text"]["text"].as_str().unwrap().to_owned(), HEADER_LIMIT));
                }
                "section" => {
                    assert_eq!(b["text"]["type"], "mrkdwn");
                    out.push((
                        b["text"]["text"].as_str().unwrap().to_owned(),
                        BLOCK_TEXT_LIMIT,
                    ));
                }
                "context" => {
                    for e in b["elements"].as_array().unwrap() {
                        out.push((e["text"].as_str().unwrap().to_owned(), BLOCK_TEXT_LIMIT));
                    }
                }
                other => panic!("unexpected block type {other}"),
            }
        }
        out
    }

    fn assert_within_limits(msg: &Message, status: Option<&str>) -> Vec<Value> {
        let blocks = blocks(msg, status);
        assert!(blocks.len() <= BLOCKS_LIMIT, "{} blocks", blocks.len());
        for (text, limit) in block_texts(&blocks) {
            assert!(!text.is_empty(), "an empty block text");
            let n = text.chars().count();
            assert!(n <= limit, "{n} characters over {limit}: {text:.80}");
        }
        let fallback = fallback(msg, status);
        assert!(fallback.chars().count() <= FALLBACK_LIMIT);
        blocks
    }

    #[test]
    fn a_huge_evidence_string_still_renders_within_the_limits() {
        let mut msg = message();
        msg.facts.rules[0].evidence = "x".repeat(10_000);
        msg.facts.target = "t".repeat(400);
        let status = status_line(&msg);
        let blocks = assert_within_limits(&msg, Some(&status));
        // The facts after the evidence are still shown.
        let all: String = block_texts(&blocks).into_iter().map(|(t, _)| t).collect();
        assert!(all.contains("*Next:*"), "{all:.200}");
        assert!(all.contains(text::ELLIPSIS));
    }

    #[test]
    fn many_facts_stay_within_fifty_blocks_and_say_what_is_left_out() {
        let mut msg = message();
        let rule = msg.facts.rules[0].clone();
        msg.facts.rules = (0..200)
            .map(|i| RuleFact {
                name: format!("rule-{i}"),
                evidence: "e".repeat(1400),
                ..rule.clone()
            })
            .collect();
        let blocks = assert_within_limits(&msg, None);
        let last = blocks.last().unwrap();
        assert_eq!(last["type"], "context");
        assert!(
            last["elements"][0]["text"]
                .as_str()
                .unwrap()
                .ends_with("more facts not shown")
        );
    }

    #[test]
    fn multibyte_text_is_cut_on_character_boundaries() {
        let mut msg = message();
        msg.facts.rules[0].evidence = "é🚨".repeat(5_000);
        msg.facts.target = "ü".repeat(300);
        let blocks = assert_within_limits(&msg, None);
        let header = blocks[0]["text"]["text"].as_str().unwrap();
        assert_eq!(header.chars().count(), HEADER_LIMIT);
        assert!(header.ends_with(text::ELLIPSIS));
        assert_eq!(mrkdwn("ééé", 2), "é…");
        assert_eq!(mrkdwn("🚨🚨🚨", 3), "🚨🚨🚨");
    }

    #[test]
    fn mrkdwn_is_escaped_and_never_cut_inside_an_escape() {
        assert_eq!(
            mrkdwn("a < b && c > d", 100),
            "a &lt; b &amp;&amp; c &gt; d"
        );
        assert_eq!(mrkdwn("<<<", 6), "&lt;…");
        assert_eq!(mrkdwn("&", 4), "…");
        assert_eq!(mrkdwn("&", 5), "&amp;");
        assert_eq!(mrkdwn("abc", 0), "");
        let mut msg = message();
        msg.facts.rules[0].evidence = "<!channel> & <http://x|y>".to_owned();
        let all: String = block_texts(&blocks(&msg, None))
            .into_iter()
            .skip(1)
            .map(|(t, _)| t)
            .collect();
        assert!(!all.contains('<') && !all.contains('>'), "{all}");
        assert!(all.contains("&lt;!channel&gt; &amp; &lt;http://x|y&gt;"));
    }

    #[test]
    fn test_messages_are_marked_everywhere() {
        let msg = message();
        let status = status_line(&msg);
        let blocks = blocks(&msg, Some(&status));
        assert!(
            blocks[0]["text"]["text"]
                .as_str()
                .unwrap()
                .starts_with("[TEST] ")
        );
        assert_eq!(blocks[1]["elements"][0]["text"], TEST_NOTICE);
        assert!(status.contains("[TEST] "), "{status}");
        assert!(fallback(&msg, None).starts_with("This is a test message"));

        let mut real = message();
        real.test = false;
        let text = serde_json::to_string(&blocks_for(&real)).unwrap();
        assert!(!text.contains("[TEST]") && !text.contains("test message"));
    }

    fn blocks_for(msg: &Message) -> Vec<Value> {
        blocks(msg, Some(&status_line(msg)))
    }

    #[test]
    fn the_status_line_marks_resolution() {
        let mut msg = message();
        msg.test = false;
        msg.incident = "shop-1".to_owned();
        msg.facts.target = "shop".to_owned();
        assert_eq!(
            status_line(&msg),
            ":rotating_light: *shop*: rollback started — incident shop-1"
        );
        msg.occasion = Occasion::Resolved;
        assert_eq!(
            status_line(&msg),
            ":white_check_mark: *RESOLVED* *shop*: incident resolved — incident shop-1"
        );
    }

    #[test]
    fn web_api_errors_are_retried_only_when_transient() {
        let check = |body: &str| web_api_answer(body).map(|_| ());
        assert!(check(r#"{"ok":true,"ts":"1.2"}"#).is_ok());
        for code in [
            "ratelimited",
            "internal_error",
            "fatal_error",
            "service_unavailable",
            "request_timeout",
        ] {
            let body = format!(r#"{{"ok":false,"error":"{code}"}}"#);
            assert!(
                matches!(check(&body), Err(Delivery::Retry { after: None, .. })),
                "{code}"
            );
        }
        for code in [
            "invalid_auth",
            "not_authed",
            "account_inactive",
            "token_revoked",
            "channel_not_found",
            "not_in_channel",
            "is_archived",
            "msg_too_long",
            "no_text",
            "invalid_blocks",
            "missing_scope",
            "something_new",
        ] {
            let body = format!(r#"{{"ok":false,"error":"{code}"}}"#);
            assert_eq!(
                check(&body),
                Err(Delivery::Rejected {
                    reason: format!("slack api error {code}")
                }),
            );
        }
        assert!(matches!(check("<html>"), Err(Delivery::Rejected { .. })));
        assert!(matches!(
            check(r#"{"ok":false}"#),
            Err(Delivery::Rejected { .. })
        ));
    }

    #[test]
    fn references_carry_the_channel_and_fall_back_to_the_configured_one() {
        assert_eq!(parse_reference("C01|1.2", "#ops"), ("C01", "1.2"));
        assert_eq!(parse_reference("1.2", "#ops"), ("#ops", "1.2"));
    }
}
