//! Text shared by every rendering: truncation on character boundaries, the title line,
//! and the facts as plain lines (email bodies, Teams and Slack fallbacks, the webhook's
//! `text`).

use super::Message;
use crate::config::units::human_duration;
use crate::engine::Ts;

/// The marker that ends a cut text.
pub const ELLIPSIS: char = '…';

/// `text` cut to at most `max` characters (Unicode scalar values), ending in `…` when
/// cut. Never splits a character.
pub fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    if max == 0 {
        return String::new();
    }
    let mut out: String = text.chars().take(max - 1).collect();
    out.push(ELLIPSIS);
    out
}

/// `text` cut to at most `max` bytes of UTF-8, on a character boundary, ending in `…`
/// when cut. For limits a provider counts in bytes.
pub fn truncate_bytes(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let room = max.saturating_sub(ELLIPSIS.len_utf8());
    let mut end = room;
    while end > 0 && !text.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = text[..end].to_owned();
    if max >= ELLIPSIS.len_utf8() {
        out.push(ELLIPSIS);
    }
    out
}

/// `[TEST] ` for test messages, nothing otherwise.
pub fn test_mark(msg: &Message) -> &'static str {
    if msg.test { "[TEST] " } else { "" }
}

/// The title: `[TEST] shop: rollback started`.
pub fn title(msg: &Message) -> String {
    format!(
        "{}{}: {}",
        test_mark(msg),
        msg.facts.target,
        msg.occasion.headline()
    )
}

/// RFC 3339 time of a fact's milliseconds.
pub fn time(ms: u64) -> String {
    Ts(ms).rfc3339()
}

/// The facts as `label: value` pairs, in the order people read them. Labels are stable;
/// renderers turn them into fields, facts or lines.
pub fn facts(msg: &Message) -> Vec<(&'static str, String)> {
    let f = &msg.facts;
    let mut out = vec![
        ("Incident", msg.incident.clone()),
        ("Target", f.target.clone()),
        ("State", f.state.clone()),
    ];
    for r in &f.rules {
        out.push((
            "Rule",
            format!(
                "{} ({} {}): {}; {}",
                r.name, r.signal, r.condition, r.phase, r.evidence
            ),
        ));
    }
    if !f.blind_signals.is_empty() {
        out.push(("Cannot read", f.blind_signals.join(", ")));
    }
    match (&f.from_revision, &f.to_revision) {
        (Some(from), Some(to)) => out.push(("Revision", format!("{from} -> {to}"))),
        (Some(from), None) => out.push(("Revision", from.clone())),
        _ => {}
    }
    if let Some(plan) = &f.plan {
        out.push(("Plan", plan.clone()));
    }
    for s in &f.steps {
        let verdict = match (&s.error, s.ok) {
            (_, true) => "ok".to_owned(),
            (Some(e), false) => format!("failed: {e}"),
            (None, false) => "failed".to_owned(),
        };
        out.push((
            "Action",
            format!(
                "{} ({}, attempt {}): {verdict} in {}",
                s.name,
                s.action,
                s.attempt,
                human_duration(std::time::Duration::from_millis(s.duration_ms))
            ),
        ));
    }
    if let Some(reason) = &f.reason {
        out.push(("Why", reason.clone()));
    }
    out.push(("Next", f.next.clone()));
    out.push(("Opened", time(f.opened_at_ms)));
    out.push(("At", time(f.at_ms)));
    if let Some(level) = &msg.level {
        out.push(("Level", level.clone()));
    }
    out
}

/// The whole message as plain text: the title, a blank line, then one `Label: value` line
/// per fact. Test messages say so first.
pub fn plain(msg: &Message) -> String {
    let mut out = String::new();
    if msg.test {
        out.push_str("This is a test message from `rearguard notify-test`; nothing happened.\n\n");
    }
    out.push_str(&title(msg));
    out.push_str("\n\n");
    for (label, value) in facts(msg) {
        out.push_str(label);
        out.push_str(": ");
        out.push_str(&value);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_never_splits_a_character() {
        assert_eq!(truncate("abc", 3), "abc");
        assert_eq!(truncate("abcd", 3), "ab…");
        assert_eq!(truncate("ééééé", 4), "ééé…");
        assert_eq!(truncate("🚨🚨🚨", 2), "🚨…");
        assert_eq!(truncate("x", 0), "");
        let cut = truncate_bytes("ééééé", 6);
        assert!(cut.len() <= 6, "{cut:?}");
        assert_eq!(cut, "é…");
        assert_eq!(truncate_bytes("abc", 3), "abc");
    }

    proptest::proptest! {
        #[test]
        fn truncated_text_fits(text in ".{0,300}", max in 0usize..200) {
            let c = truncate(&text, max);
            proptest::prop_assert!(c.chars().count() <= max);
            let b = truncate_bytes(&text, max);
            proptest::prop_assert!(b.len() <= max);
            if text.chars().count() <= max {
                proptest::prop_assert_eq!(c, text);
            }
        }
    }
}
