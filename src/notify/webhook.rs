//! The generic webhook: a versioned JSON body, signed with HMAC-SHA256, POSTed to one
//! URL. This comment is the receiver's reference; the body's shape only changes with
//! its `version`.
//!
//! # The request
//!
//! `POST <url>` with `Content-Type: application/json` and this body (version 1):
//!
//! ```json
//! {
//!   "version": 1,
//!   "id": "shop-1700000000000-3",
//!   "test": false,
//!   "incident": "shop-1700000000000",
//!   "occasion": "rollback_started",
//!   "level": "page-oncall",
//!   "summary": "shop: rollback started [error-rate]: ... (incident shop-1700000000000)",
//!   "truncated": false,
//!   "facts": {
//!     "target": "shop",
//!     "state": "acting",
//!     "opened_at_ms": 1700000000000,
//!     "at_ms": 1700000012000,
//!     "rules": [{"name": "error-rate", "signal": "http-errors", "condition": "> 5% for 10s",
//!                "phase": "firing", "evidence": "8.00% (400 of 5000 requests) over 1m"}],
//!     "blind_signals": [],
//!     "plan": "rollback",
//!     "from_revision": "r42",
//!     "to_revision": "r41",
//!     "steps": [{"name": "switch release", "action": "release_switch", "attempt": 1,
//!                "ok": true, "duration_ms": 40, "error": null}],
//!     "reason": null,
//!     "next": "verifying for 5m"
//!   }
//! }
//! ```
//!
//! - `version`: the body's schema version, [`VERSION`]. Fields may be added within a
//!   version; a field is removed or changes meaning only with a new version.
//! - `id`: unique per notification and receiver, the same on every retry of it. Use it
//!   to drop duplicates: a delivery that timed out on our side may have reached you.
//! - `test`: `true` for `rearguard notify-test`; nothing happened.
//! - `incident`: the incident's id, shared by every message about it.
//! - `occasion`: one of `opened`, `rollback_started`, `rollback_slow`, `attempts_failed`,
//!   `rollback_succeeded`, `rollback_failed`, `verification_failed`,
//!   `verification_inconclusive`, `not_rolled_back`, `blind`, `acknowledged`, `resolved`,
//!   `rule_joined`, `bad_revision_deployed`.
//! - `level`: the escalation level that sent it; `null` for acknowledgement, resolution,
//!   `rule_joined`, `bad_revision_deployed` and tests.
//! - `summary`: one line for people.
//! - `truncated`: `true` when long texts in `facts` were cut (ending in `…`) or long lists
//!   shortened to keep the body under 256 KB.
//! - `facts`: what happened, as above. Times are milliseconds since the Unix epoch;
//!   `null` means not known or not applicable.
//!
//! # Headers
//!
//! - `X-Rearguard-Id`: the body's `id`, the idempotency key.
//! - `X-Rearguard-Timestamp`: when this attempt was sent, in seconds since the Unix
//!   epoch. Each retry is signed again with a new timestamp.
//! - `X-Rearguard-Signature`: `sha256=` and the lowercase hex HMAC-SHA256, keyed with the
//!   notifier's `secret`, of the timestamp, a `.`, and the body's bytes exactly as
//!   received: `HMAC(secret, "<timestamp>.<body>")`.
//!
//! # Verifying a request
//!
//! 1. Compute the signature over the raw body (before any JSON parsing) and compare it
//!    with the header in constant time; refuse the request when they differ.
//! 2. Refuse a timestamp more than five minutes from your clock: a captured request
//!    cannot then be replayed later, because changing the timestamp breaks the signature.
//! 3. Drop a request whose `id` you have already processed.
//!
//! ```python
//! import hashlib, hmac, time
//! def verify(secret: bytes, headers, body: bytes) -> bool:
//!     ts = headers["X-Rearguard-Timestamp"]
//!     mac = hmac.new(secret, ts.encode() + b"." + body, hashlib.sha256).hexdigest()
//!     return (hmac.compare_digest("sha256=" + mac, headers["X-Rearguard-Signature"])
//!             and abs(time.time() - int(ts)) < 300)
//! ```
//!
//! Any 2xx answer accepts the message. 408, 420, 425, 429 and 5xx are retried with the
//! same `id`, after their `Retry-After` when they give one; any other status is a
//! configuration error and is not retried.
//!
//! The secret is never sent: it only keys the HMAC, and it is scrubbed from every answer
//! kept in a [`Delivery`].

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::header::{CONTENT_TYPE, HeaderValue};
use ring::hmac;
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

use super::{Delivery, Message, text};
use crate::config::{Occasion, WebhookSpec};

/// The version of the body's schema, its `version` field.
pub const VERSION: u32 = 1;

/// The largest body sent, in bytes (256 KB).
pub const BODY_LIMIT: usize = 256 * 1024;

/// The header carrying the message id.
pub const ID_HEADER: &str = "x-rearguard-id";
/// The header carrying the signing time, in Unix seconds.
pub const TIMESTAMP_HEADER: &str = "x-rearguard-timestamp";
/// The header carrying `sha256=<hex>`.
pub const SIGNATURE_HEADER: &str = "x-rearguard-signature";

/// The body of version 1, in the documented field order.
#[derive(serde::Serialize)]
struct Body<'a> {
    version: u32,
    id: &'a str,
    test: bool,
    incident: &'a str,
    occasion: Occasion,
    level: Option<&'a str>,
    summary: String,
    truncated: bool,
    facts: Value,
}

/// A webhook receiver.
#[derive(Debug)]
pub struct Webhook {
    url: reqwest::Url,
    secret: SecretString,
    client: reqwest::Client,
    timeout: Duration,
}

impl Webhook {
    pub fn new(spec: &WebhookSpec, client: &reqwest::Client, timeout: Duration) -> Webhook {
        Webhook {
            url: spec.url.clone(),
            secret: spec.secret.clone(),
            client: client.clone(),
            timeout,
        }
    }

    /// POSTs the signed body of `msg`. `thread` is not needed: receivers group by
    /// `incident`.
    pub async fn send(&self, msg: &Message, _thread: Option<&str>) -> Delivery {
        let Ok(id) = HeaderValue::from_str(&msg.id) else {
            return Delivery::Rejected {
                reason: "the message id cannot be sent as an http header".to_owned(),
            };
        };
        let secret = self.secret.expose_secret();
        let body = body(msg);
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let request = self
            .client
            .post(self.url.clone())
            .header(CONTENT_TYPE, "application/json")
            .header(ID_HEADER, id)
            .header(TIMESTAMP_HEADER, timestamp)
            .header(
                SIGNATURE_HEADER,
                signature(secret.as_bytes(), timestamp, &body),
            )
            .body(body);
        let (delivery, _) = super::send_request(request, self.timeout).await;
        super::redact(delivery, secret)
    }
}

/// The `X-Rearguard-Signature` value of a body sent at `timestamp`: `sha256=` and the
/// lowercase hex HMAC-SHA256 of `<timestamp>.<body>` keyed with `secret`. Receivers
/// compare it with the header in constant time.
pub fn signature(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let mut context = hmac::Context::with_key(&key);
    context.update(timestamp.to_string().as_bytes());
    context.update(b".");
    context.update(body);
    format!("sha256={}", hex(context.sign().as_ref()))
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

/// The body of `msg`, at most [`BODY_LIMIT`] bytes: long fact texts are cut and long
/// lists shortened first; a summary too long on its own is cut last.
pub fn body(msg: &Message) -> Vec<u8> {
    let mut body = Body {
        version: VERSION,
        id: &msg.id,
        test: msg.test,
        incident: &msg.incident,
        occasion: msg.occasion,
        level: msg.level.as_deref(),
        summary: msg.summary.clone(),
        truncated: false,
        facts: serde_json::to_value(&msg.facts).unwrap_or(Value::Null),
    };
    let full = serde_json::to_vec(&body).unwrap_or_default();
    if full.len() <= BODY_LIMIT {
        return full;
    }
    body.truncated = true;
    let mut facts = std::mem::take(&mut body.facts);
    let overhead = serde_json::to_vec(&body).map_or(0, |b| b.len().saturating_sub("null".len()));
    let size = |v: &Value| serde_json::to_vec(v).map_or(usize::MAX, |b| b.len());
    let fits = super::shrink(&mut facts, |f| {
        overhead.saturating_add(size(f)) <= BODY_LIMIT
    });
    body.facts = facts;
    if !fits {
        // The summary alone is too long. JSON escaping takes up to six bytes per byte of
        // text, which the room left for it allows for.
        let summary = std::mem::take(&mut body.summary);
        let rest = serde_json::to_vec(&body).map_or(BODY_LIMIT, |b| b.len());
        body.summary = text::truncate_bytes(&summary, BODY_LIMIT.saturating_sub(rest) / 6);
    }
    serde_json::to_vec(&body).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_primitive_matches_rfc_4231_case_2() {
        let key = hmac::Key::new(hmac::HMAC_SHA256, b"Jefe");
        let tag = hmac::sign(&key, b"what do ya want for nothing?");
        assert_eq!(
            hex(tag.as_ref()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn signature_covers_timestamp_dot_body() {
        // Computed independently: printf '1700000000.{"version":1}' |
        // openssl dgst -sha256 -hmac whsec-test
        assert_eq!(
            signature(b"whsec-test", 1_700_000_000, br#"{"version":1}"#),
            "sha256=274fa19a2b82656d91420a4e63c58e236ebef72fa5a30d4eae149450e313ba4c"
        );
        let base = signature(b"k", 1, b"body");
        assert_ne!(signature(b"k", 2, b"body"), base);
        assert_ne!(signature(b"k", 1, b"bodY"), base);
        assert_ne!(signature(b"K", 1, b"body"), base);
    }

    #[test]
    fn body_has_the_documented_fields() {
        let mut msg = Message::test("hook", 1_700_000_000_000);
        msg.occasion = Occasion::VerificationFailed;
        msg.level = Some("page".to_owned());
        let body: Value = serde_json::from_slice(&body(&msg)).unwrap();
        let mut keys: Vec<&String> = body.as_object().unwrap().keys().collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "facts",
                "id",
                "incident",
                "level",
                "occasion",
                "summary",
                "test",
                "truncated",
                "version"
            ]
        );
        assert_eq!(body["version"], VERSION);
        assert_eq!(body["id"], msg.id.as_str());
        assert_eq!(body["occasion"], "verification_failed");
        assert_eq!(body["level"], "page");
        assert_eq!(body["test"], true);
        assert_eq!(body["truncated"], false);
        assert_eq!(body["facts"]["rules"][0]["name"], "error-rate");
        let facts: crate::engine::Facts = serde_json::from_value(body["facts"].clone()).unwrap();
        assert_eq!(facts, msg.facts);
    }

    #[test]
    fn long_facts_are_cut_to_fit_the_body_limit() {
        let mut msg = Message::test("hook", 1_700_000_000_000);
        msg.facts.rules[0].evidence = "é".repeat(300_000);
        msg.facts.blind_signals = vec!["s".repeat(100); 10_000];
        let bytes = body(&msg);
        assert!(bytes.len() <= BODY_LIMIT, "{}", bytes.len());
        let body: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(body["truncated"], true);
        assert_eq!(body["id"], msg.id.as_str());
        assert_eq!(body["summary"], msg.summary.as_str());
        assert!(
            body["facts"]["rules"][0]["evidence"]
                .as_str()
                .unwrap()
                .ends_with(text::ELLIPSIS)
        );
    }

    #[test]
    fn a_huge_summary_is_cut_last() {
        let mut msg = Message::test("hook", 1_700_000_000_000);
        msg.summary = "\"".repeat(BODY_LIMIT);
        let bytes = body(&msg);
        assert!(bytes.len() <= BODY_LIMIT, "{}", bytes.len());
        let body: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(body["truncated"], true);
    }
}
