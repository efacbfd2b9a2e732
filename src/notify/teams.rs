//! Microsoft Teams, through a Workflows webhook: one Adaptive Card per message.
//!
//! The card holds the title, the facts as a `FactSet` and what happens next, and the
//! whole request body is kept under Teams' 28 KB message limit by cutting fact values on
//! character boundaries. Teams has no threads here: every message stands alone. The
//! webhook URL is a secret: it goes only into the request, never into a log line or a
//! [`Delivery`] (requests go through [`super::send_request`], which strips it from
//! errors).

use std::time::Duration;

use reqwest::header::CONTENT_TYPE;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};

use super::{Delivery, Message, send_request, text};
use crate::config::TeamsSpec;

/// The largest request body sent, in bytes: under Teams' 28 KB message limit with room
/// for what the Workflow adds when it posts the card.
const BODY_LIMIT: usize = 27_000;
/// The longest title, in characters; target names are short, this only bounds the card.
const TITLE_LIMIT: usize = 300;
/// The shortest a fact value is cut to before facts are left out instead.
const MIN_VALUE: usize = 64;
/// What test messages say under the title.
const TEST_NOTICE: &str = "This is a test message from `rearguard notify-test`; nothing happened.";

/// A Teams notifier ready to send.
#[derive(Debug)]
pub struct Teams {
    client: reqwest::Client,
    url: SecretString,
    timeout: Duration,
}

impl Teams {
    pub fn new(spec: &TeamsSpec, client: &reqwest::Client, timeout: Duration) -> Teams {
        Teams {
            client: client.clone(),
            url: spec.url.clone(),
            timeout,
        }
    }

    /// Posts the message's card. `thread` is ignored: a Workflows webhook posts each
    /// card on its own.
    pub async fn send(&self, msg: &Message, _thread: Option<&str>) -> Delivery {
        let request = self
            .client
            .post(self.url.expose_secret())
            .header(CONTENT_TYPE, "application/json")
            .body(render(msg));
        // Workflows answers 202 (sometimes 200) on success, 400 to a malformed card, 429
        // and 5xx when busy: the common classification fits.
        send_request(request, self.timeout).await.0
    }
}

/// The request body, at most [`BODY_LIMIT`] bytes: values are cut shorter and shorter,
/// then the last facts are left out, until the card fits.
fn render(msg: &Message) -> String {
    let mut facts = text::facts(msg);
    let next = match facts.iter().position(|(label, _)| *label == "Next") {
        Some(i) => facts.remove(i).1,
        None => String::new(),
    };
    let longest = facts
        .iter()
        .map(|(_, v)| v.chars().count())
        .chain([next.chars().count()])
        .max()
        .unwrap_or(0);
    let mut cap = longest.max(MIN_VALUE);
    let mut keep = facts.len();
    loop {
        let body = card(msg, &facts[..keep], facts.len() - keep, &next, cap).to_string();
        if body.len() <= BODY_LIMIT {
            return body;
        }
        if cap > MIN_VALUE {
            cap = (cap * 2 / 3).max(MIN_VALUE);
        } else if keep > 0 {
            keep = keep * 2 / 3;
        } else {
            // Only the title, the next step and a count are left, each bounded: this
            // cannot be reached with the limits above, and the card is sent as it is.
            return body;
        }
    }
}

/// The message body with the first facts, each value cut to `cap` characters, and a
/// note on `left_out` facts.
fn card(
    msg: &Message,
    facts: &[(&'static str, String)],
    left_out: usize,
    next: &str,
    cap: usize,
) -> Value {
    let mut body = vec![json!({
        "type": "TextBlock",
        "text": text::truncate(&text::title(msg), TITLE_LIMIT),
        "weight": "Bolder",
        "size": "Medium",
        "wrap": true,
    })];
    if msg.test {
        body.push(json!({
            "type": "TextBlock",
            "text": TEST_NOTICE,
            "isSubtle": true,
            "wrap": true,
        }));
    }
    let mut fact_set: Vec<Value> = facts
        .iter()
        .map(|(label, value)| json!({"title": label, "value": text::truncate(value, cap)}))
        .collect();
    if left_out > 0 {
        fact_set.push(json!({"title": "More", "value": format!("{left_out} facts not shown")}));
    }
    body.push(json!({"type": "FactSet", "facts": fact_set}));
    body.push(json!({
        "type": "TextBlock",
        "text": format!("Next: {}", text::truncate(next, cap)),
        "wrap": true,
    }));
    json!({
        "type": "message",
        "attachments": [{
            "contentType": "application/vnd.microsoft.card.adaptive",
            "contentUrl": null,
            "content": {
                "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                "type": "AdaptiveCard",
                "version": "1.4",
                "msteams": {"width": "Full"},
                "body": body,
            },
        }],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{RuleFact, StepFact};

    fn message() -> Message {
        Message::test("teams", 1_700_000_000_000)
    }

    fn card_body(rendered: &str) -> Vec<Value> {
        let v: Value = serde_json::from_str(rendered).unwrap();
        assert_eq!(v["type"], "message");
        let content = &v["attachments"][0]["content"];
        assert_eq!(content["type"], "AdaptiveCard");
        content["body"].as_array().unwrap().clone()
    }

    fn fact_values(body: &[Value]) -> Vec<String> {
        body.iter().find(|b| b["type"] == "FactSet").unwrap()["facts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["value"].as_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn a_small_message_is_sent_whole() {
        let msg = message();
        let rendered = render(&msg);
        let body = card_body(&rendered);
        assert_eq!(body[0]["text"], "[TEST] example-service: rollback started");
        assert_eq!(body[0]["weight"], "Bolder");
        assert_eq!(body[1]["text"], TEST_NOTICE);
        let values = fact_values(&body);
        assert!(
            values
                .iter()
                .any(|v| v.ends_with(&msg.facts.rules[0].evidence))
        );
        assert!(!rendered.contains(text::ELLIPSIS));
        assert_eq!(
            body.last().unwrap()["text"],
            format!("Next: {}", msg.facts.next)
        );
    }

    #[test]
    fn a_huge_evidence_string_is_cut_until_the_body_fits() {
        let mut msg = message();
        msg.facts.rules[0].evidence = "x".repeat(10_000);
        msg.facts.rules.push(RuleFact {
            evidence: "é🚨".repeat(20_000),
            ..msg.facts.rules[0].clone()
        });
        msg.facts.next = "n".repeat(40_000);
        let rendered = render(&msg);
        assert!(rendered.len() <= BODY_LIMIT, "{} bytes", rendered.len());
        let body = card_body(&rendered);
        let values = fact_values(&body);
        let cut = values
            .iter()
            .find(|v| v.contains('🚨'))
            .expect("the multibyte evidence is shown");
        let kept = cut
            .strip_suffix(text::ELLIPSIS)
            .expect("cut with an ellipsis");
        let facts = text::facts(&msg);
        let whole = &facts[4].1;
        assert!(whole.starts_with(kept), "cut inside the text: {kept:.80}");
        // The short facts survive whole.
        assert!(values.contains(&"example-service".to_owned()));
        assert!(
            body.last().unwrap()["text"]
                .as_str()
                .unwrap()
                .starts_with("Next: nnn")
        );
    }

    #[test]
    fn thousands_of_facts_are_left_out_until_the_body_fits() {
        let mut msg = message();
        let step = msg.facts.steps[0].clone();
        msg.facts.steps = (0..5_000)
            .map(|i| StepFact {
                name: format!("step {i}"),
                ..step.clone()
            })
            .collect();
        let rendered = render(&msg);
        assert!(rendered.len() <= BODY_LIMIT, "{} bytes", rendered.len());
        let values = fact_values(&card_body(&rendered));
        assert!(values.last().unwrap().ends_with("facts not shown"));
    }

    #[test]
    fn real_messages_carry_no_test_mark() {
        let mut msg = message();
        msg.test = false;
        let rendered = render(&msg);
        assert!(!rendered.contains("[TEST]") && !rendered.contains(TEST_NOTICE));
    }
}
