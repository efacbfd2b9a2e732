//! Placeholders (`{incident}`, `{to_revision}`, ...): the names an action may use, finding
//! them in text, and the message for an unknown one. It reports no error itself (the
//! argv and template checks of `ctx.rs` do) and substitutes nothing: actions fill
//! placeholders at run time.

/// Placeholders an action may use; each is also passed as `REARGUARD_<NAME>`.
pub(super) const PLACEHOLDERS: [&str; 5] =
    ["incident", "target", "rule", "from_revision", "to_revision"];

pub(super) fn unknown_placeholder(name: &str) -> String {
    format!(
        "unknown placeholder {{{name}}}; known: {}",
        PLACEHOLDERS.map(|p| format!("{{{p}}}")).join(", ")
    )
}

/// The names inside `{name}` where name is lowercase letters and underscores; braces of
/// JSON around a placeholder do not hide it (`{"text": "{incident}"}`).
pub(super) fn placeholders_in(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find('{') {
        let after = &rest[start + 1..];
        let Some(end) = after.find(['{', '}']) else {
            break;
        };
        if after.as_bytes()[end] == b'}' {
            let name = &after[..end];
            if !name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
                out.push(name.to_owned());
            }
            rest = &after[end + 1..];
        } else {
            // Another `{` comes first: the placeholder, if any, starts there.
            rest = &after[end..];
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::placeholders_in;

    #[test]
    fn placeholders_are_found_inside_json_braces() {
        assert_eq!(
            placeholders_in(r#"{"text": "{incidnet}", "n": 1}"#),
            vec!["incidnet"]
        );
        assert_eq!(placeholders_in("{a}{b_c}"), vec!["a", "b_c"]);
        assert!(placeholders_in(r#"{"a": 1}"#).is_empty());
        assert!(placeholders_in("{Upper} {1} {}").is_empty());
    }
}
