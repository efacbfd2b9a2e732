//! Prometheus series selectors as the configuration writes them:
//! `http_requests_total{job="checkout",code=~"5.."}`, and bare matcher lists such as
//! `code=~"5.."` for the error part of an error rate.
//!
//! Parsed at load time, so a typo is a `check` error rather than a query that fails at
//! 3 a.m. The Prometheus source renders them back to PromQL; the scrape source matches
//! exposition series against them. Regexes are anchored, as in Prometheus.

use std::fmt;

/// How a matcher compares a label's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchOp {
    Eq,
    Ne,
    Re,
    NotRe,
}

impl MatchOp {
    fn symbol(self) -> &'static str {
        match self {
            MatchOp::Eq => "=",
            MatchOp::Ne => "!=",
            MatchOp::Re => "=~",
            MatchOp::NotRe => "!~",
        }
    }
}

/// One label matcher.
#[derive(Debug, Clone)]
pub struct Matcher {
    pub label: String,
    pub op: MatchOp,
    pub value: String,
    /// The anchored regex, for `=~` and `!~`.
    regex: Option<regex::Regex>,
}

impl PartialEq for Matcher {
    fn eq(&self, other: &Matcher) -> bool {
        self.label == other.label && self.op == other.op && self.value == other.value
    }
}

impl Matcher {
    /// Whether a series' label value (empty when the label is absent) matches.
    pub fn matches(&self, value: &str) -> bool {
        match (self.op, &self.regex) {
            (MatchOp::Eq, _) => value == self.value,
            (MatchOp::Ne, _) => value != self.value,
            (MatchOp::Re, Some(r)) => r.is_match(value),
            (MatchOp::NotRe, Some(r)) => !r.is_match(value),
            (_, None) => false,
        }
    }
}

impl fmt::Display for Matcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.label, self.op.symbol())?;
        // Quoted as PromQL reads it back.
        write!(f, "\"")?;
        for c in self.value.chars() {
            match c {
                '"' => f.write_str("\\\"")?,
                '\\' => f.write_str("\\\\")?,
                '\n' => f.write_str("\\n")?,
                c => write!(f, "{c}")?,
            }
        }
        write!(f, "\"")
    }
}

/// A metric name with label matchers.
#[derive(Debug, Clone, PartialEq)]
pub struct Selector {
    pub metric: String,
    pub matchers: Vec<Matcher>,
}

impl Selector {
    /// This selector with more matchers, e.g. the error matchers of an error rate.
    pub fn with(&self, extra: &[Matcher]) -> Selector {
        let mut s = self.clone();
        s.matchers.extend(extra.iter().cloned());
        s
    }

    /// Whether a series with this name and labels is selected.
    pub fn matches(&self, metric: &str, labels: &[(String, String)]) -> bool {
        metric == self.metric
            && self.matchers.iter().all(|m| {
                let value = labels
                    .iter()
                    .find(|(k, _)| *k == m.label)
                    .map_or("", |(_, v)| v.as_str());
                m.matches(value)
            })
    }
}

impl fmt::Display for Selector {
    /// The selector as PromQL.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.metric)?;
        if !self.matchers.is_empty() {
            f.write_str("{")?;
            for (i, m) in self.matchers.iter().enumerate() {
                if i > 0 {
                    f.write_str(",")?;
                }
                write!(f, "{m}")?;
            }
            f.write_str("}")?;
        }
        Ok(())
    }
}

/// Parses `metric` or `metric{label="value",...}`.
pub fn parse_selector(text: &str) -> Result<Selector, String> {
    let s = text.trim();
    let name_end = s.find('{').unwrap_or(s.len());
    let metric = s[..name_end].trim();
    if !is_metric_name(metric) {
        return Err(format!(
            "expected a selector like 'http_requests_total{{job=\"api\"}}', got {text:?}"
        ));
    }
    let matchers = if name_end < s.len() {
        let inner = s[name_end + 1..]
            .strip_suffix('}')
            .ok_or_else(|| format!("selector {text:?} has no closing '}}'"))?;
        parse_matchers(inner)?
    } else {
        Vec::new()
    };
    Ok(Selector {
        metric: metric.to_owned(),
        matchers,
    })
}

/// Parses a comma-separated list of matchers, with or without braces:
/// `code=~"5..",method="GET"`.
pub fn parse_matchers(text: &str) -> Result<Vec<Matcher>, String> {
    let mut s = text.trim();
    if let Some(inner) = s.strip_prefix('{').and_then(|r| r.strip_suffix('}')) {
        s = inner.trim();
    }
    let mut out = Vec::new();
    while !s.is_empty() {
        let label_end = s
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .ok_or_else(|| format!("matcher {s:?} has no operator; expected e.g. code=~\"5..\""))?;
        let label = &s[..label_end];
        if label.is_empty() || label.starts_with(|c: char| c.is_ascii_digit()) {
            return Err(format!("expected a label name in {text:?}"));
        }
        let rest = s[label_end..].trim_start();
        let (op, rest) = [
            ("=~", MatchOp::Re),
            ("!~", MatchOp::NotRe),
            ("!=", MatchOp::Ne),
            ("=", MatchOp::Eq),
        ]
        .iter()
        .find_map(|(sym, op)| rest.strip_prefix(sym).map(|r| (*op, r)))
        .ok_or_else(|| format!("expected one of = != =~ !~ after {label:?} in {text:?}"))?;
        let (value, rest) = quoted(rest.trim_start()).ok_or_else(|| {
            format!(
                "expected a quoted value after {label}{} in {text:?}",
                op.symbol()
            )
        })?;
        let regex = match op {
            MatchOp::Re | MatchOp::NotRe => Some(
                regex::Regex::new(&format!("^(?:{value})$"))
                    .map_err(|e| format!("bad regex {value:?} for {label}: {e}"))?,
            ),
            _ => None,
        };
        out.push(Matcher {
            label: label.to_owned(),
            op,
            value,
            regex,
        });
        s = rest.trim_start();
        if let Some(r) = s.strip_prefix(',') {
            s = r.trim_start();
        } else if !s.is_empty() {
            return Err(format!("expected ',' between matchers in {text:?}"));
        }
    }
    Ok(out)
}

/// A double- or single-quoted string with `\` escapes, and what follows it.
fn quoted(s: &str) -> Option<(String, &str)> {
    let quote = s.chars().next().filter(|c| *c == '"' || *c == '\'')?;
    let mut out = String::new();
    let mut chars = s[1..].char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => match chars.next()?.1 {
                'n' => out.push('\n'),
                't' => out.push('\t'),
                other => out.push(other),
            },
            c if c == quote => return Some((out, &s[1 + i + 1..])),
            c => out.push(c),
        }
    }
    None
}

fn is_metric_name(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with(|c: char| c.is_ascii_digit())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_round_trip_to_promql() {
        for (text, promql) in [
            ("http_requests_total", "http_requests_total"),
            (
                r#"http_requests_total{job="api"}"#,
                r#"http_requests_total{job="api"}"#,
            ),
            (
                r#" up { job = 'a\'b' , code=~"5.." } "#,
                r#"up{job="a'b",code=~"5.."}"#,
            ),
        ] {
            assert_eq!(parse_selector(text).unwrap().to_string(), promql, "{text}");
        }
    }

    #[test]
    fn error_matchers_extend_the_request_selector() {
        let requests = parse_selector(r#"http_requests_total{job="api"}"#).unwrap();
        let errors = parse_matchers(r#"code=~"5..""#).unwrap();
        assert_eq!(
            requests.with(&errors).to_string(),
            r#"http_requests_total{job="api",code=~"5.."}"#
        );
    }

    #[test]
    fn regex_matchers_are_anchored_like_prometheus() {
        let s = parse_selector(r#"x{code=~"5..",path!~"/health"}"#).unwrap();
        let labels = |code: &str, path: &str| {
            vec![
                ("code".to_owned(), code.to_owned()),
                ("path".to_owned(), path.to_owned()),
            ]
        };
        assert!(s.matches("x", &labels("500", "/api")));
        assert!(
            !s.matches("x", &labels("5000", "/api")),
            "anchored at the end"
        );
        assert!(!s.matches("x", &labels("500", "/health")));
        assert!(!s.matches("y", &labels("500", "/api")));
        let absent = parse_selector(r#"x{code=""}"#).unwrap();
        assert!(
            absent.matches("x", &[]),
            "an absent label is the empty string"
        );
    }

    #[test]
    fn malformed_selectors_are_errors_with_the_text() {
        for text in [
            "",
            "5xx",
            "x{",
            "x{code}",
            "x{code=5}",
            r#"x{code=~"("}"#,
            r#"x{a="1" b="2"}"#,
        ] {
            assert!(parse_selector(text).is_err(), "{text}");
        }
    }
}
