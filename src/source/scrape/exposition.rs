//! The syntax of an exposition: the Prometheus text format 0.0.4 and OpenMetrics 1.0, read
//! line by line into samples, family descriptors (`# TYPE`, `# HELP`, `# UNIT`) and
//! `# EOF`, with every line's number for the error. It owns the grammar (names, label
//! escapes, numbers, timestamps, exemplars, whitespace); the rules that span lines (which
//! family a sample belongs to, counters, histograms) are `family`'s, and what a reading
//! needs of the selected series is the source's. It computes nothing.

use super::family::Families;
use crate::source::clip;

/// Why an exposition was rejected, with its 1-based line.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct ParseError {
    /// The line the reason is about, from 1.
    pub line: usize,
    /// What is wrong, naming the offending text.
    pub reason: String,
}

/// The labels of a sample, in the order written.
pub type Labels = Vec<(String, String)>;

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample<'a> {
    pub name: &'a str,
    pub labels: Labels,
    pub value: f64,
    /// The timestamp as written: milliseconds (text format) or seconds (OpenMetrics).
    pub timestamp: Option<f64>,
    /// Whether an exemplar follows the value.
    pub exemplar: bool,
}

impl Sample<'_> {
    /// The value of label `name`, if the sample has it.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// What a `#` line declares about a metric family.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Descriptor<'a> {
    Type(&'a str),
    Help,
    Unit(&'a str),
}

impl Descriptor<'_> {
    pub fn keyword(&self) -> &'static str {
        match self {
            Descriptor::Type(_) => "TYPE",
            Descriptor::Help => "HELP",
            Descriptor::Unit(_) => "UNIT",
        }
    }
}

enum Line<'a> {
    /// A blank line or a free comment (text format only).
    Nothing,
    Descriptor(&'a str, Descriptor<'a>),
    Eof,
    Sample(Sample<'a>),
}

/// Parses an exposition, OpenMetrics when `openmetrics`, calling `each` with every
/// sample and its line; stops at the first line that is wrong, with that line's number.
///
/// Both formats: every line ends with a line feed (a body cut mid-line is an error, not a
/// smaller value); names, label names, escapes, numbers and timestamps as the formats
/// define them; a label at most once per sample and a series at most once; a family's
/// lines together, its `# TYPE`, `# HELP` and `# UNIT` at most once each and before its
/// samples; counter, histogram and summary values as `Families` checks them. The text
/// format is lenient where Prometheus is: blanks and tabs between tokens, `\r\n`, blank
/// lines and free comments, a trailing comma in labels. OpenMetrics is read to the letter:
/// single spaces, no blank line or free comment, and `# EOF` last. A body cut exactly at
/// a line feed cannot be told from a complete one in the text format.
pub fn parse_exposition(
    text: &str,
    openmetrics: bool,
    mut each: impl FnMut(usize, &Sample) -> Result<(), String>,
) -> Result<(), ParseError> {
    let lines: Vec<&str> = text.split('\n').collect();
    let last = lines.len();
    let mut families = Families::new(openmetrics);
    let mut eof = false;
    for (i, raw) in lines.iter().enumerate() {
        let n = i + 1;
        let err = |reason: String| ParseError { line: n, reason };
        if n == last {
            // What follows the final line feed; empty in a complete exposition.
            if raw.is_empty() {
                break;
            }
            if !(openmetrics && *raw == "# EOF") {
                return Err(err(format!(
                    "the last line has no line feed, the exposition is cut short: {}",
                    shown(raw)
                )));
            }
        }
        if eof {
            return Err(err(format!("text after # EOF: {}", shown(raw))));
        }
        let line = if openmetrics {
            openmetrics_line(raw)
        } else {
            text_line(raw)
        };
        match line.map_err(err)? {
            Line::Nothing => {}
            Line::Eof => eof = true,
            Line::Descriptor(name, d) => families.descriptor(n, name, d)?,
            Line::Sample(sample) => {
                families.sample(n, &sample)?;
                each(n, &sample).map_err(err)?;
            }
        }
    }
    families.finish()?;
    if openmetrics && !eof {
        return Err(ParseError {
            line: if text.ends_with('\n') { last - 1 } else { last }.max(1),
            reason: "no # EOF at the end, the exposition is cut short".to_owned(),
        });
    }
    Ok(())
}

/// A line of the text format, without its line feed.
fn text_line(raw: &str) -> Result<Line<'_>, String> {
    let line = raw.strip_suffix('\r').unwrap_or(raw);
    let body = line.trim_matches(BLANKS);
    let Some(comment) = body.strip_prefix('#') else {
        if body.is_empty() {
            return Ok(Line::Nothing);
        }
        return Ok(Line::Sample(sample(body, false)?));
    };
    // Only `# TYPE` and `# HELP` with a blank after the `#` are descriptors; any other
    // comment is free text.
    let Some(comment) = comment.strip_prefix(BLANKS) else {
        return Ok(Line::Nothing);
    };
    let comment = comment.trim_start_matches(BLANKS);
    let (keyword, rest) = comment.split_once(BLANKS).unwrap_or((comment, ""));
    let rest = rest.trim_start_matches(BLANKS);
    match keyword {
        "TYPE" => {
            let (name, kind) = rest.split_once(BLANKS).unwrap_or((rest, ""));
            check_metric_name(name, "# TYPE")?;
            let kind = kind.trim_matches(BLANKS);
            if kind.is_empty() {
                return Err(format!("# TYPE {name} without a type"));
            }
            Ok(Line::Descriptor(name, Descriptor::Type(kind)))
        }
        "HELP" => {
            let (name, help) = rest.split_once(BLANKS).unwrap_or((rest, ""));
            check_metric_name(name, "# HELP")?;
            unescape(help, &['\\', 'n'])
                .map_err(|e| format!("{e} in the # HELP text of {name}"))?;
            Ok(Line::Descriptor(name, Descriptor::Help))
        }
        _ => Ok(Line::Nothing),
    }
}

/// A line of OpenMetrics, without its line feed.
fn openmetrics_line(line: &str) -> Result<Line<'_>, String> {
    if line.is_empty() {
        return Err("a blank line, which OpenMetrics does not allow".to_owned());
    }
    if line.ends_with('\r') {
        return Err(
            "a carriage return before the line feed, which OpenMetrics does not allow".to_owned(),
        );
    }
    let Some(comment) = line.strip_prefix('#') else {
        return Ok(Line::Sample(sample(line, true)?));
    };
    if comment == " EOF" {
        return Ok(Line::Eof);
    }
    let (keyword, rest) = match comment.strip_prefix(' ').and_then(|c| c.split_once(' ')) {
        Some((k @ ("TYPE" | "HELP" | "UNIT"), rest)) => (k, rest),
        _ => {
            return Err(format!(
                "OpenMetrics has no comments, only # TYPE, # HELP, # UNIT and # EOF: {}",
                shown(line)
            ));
        }
    };
    let (name, payload) = match (keyword, rest.split_once(' ')) {
        (_, Some(parts)) => parts,
        ("TYPE", None) => return Err(format!("# TYPE {rest} without a type")),
        (_, None) => {
            return Err(format!(
                "# {keyword} {rest} without a space after the name (an empty one is \"# {keyword} {rest} \")"
            ));
        }
    };
    check_metric_name(name, &format!("# {keyword}"))?;
    let descriptor = match keyword {
        "TYPE" => Descriptor::Type(payload),
        "UNIT" => {
            if let Some(c) = payload.chars().find(|&c| !is_name_char(c, true)) {
                return Err(format!("# UNIT {name} has {c:?}, not allowed in a unit"));
            }
            Descriptor::Unit(payload)
        }
        _ => {
            unescape(payload, &['\\', 'n', '"'])
                .map_err(|e| format!("{e} in the # HELP text of {name}"))?;
            Descriptor::Help
        }
    };
    Ok(Line::Descriptor(name, descriptor))
}

/// The blanks the text format allows between tokens.
const BLANKS: [char; 2] = [' ', '\t'];

/// One sample line: `name[{labels}] value [timestamp] [# {labels} value [timestamp]]`.
fn sample(line: &str, strict: bool) -> Result<Sample<'_>, String> {
    let name_end = line
        .char_indices()
        .find(|&(i, c)| !(is_name_char(c, true) && (i > 0 || !c.is_ascii_digit())))
        .map_or(line.len(), |(i, _)| i);
    if name_end == 0 {
        return Err(format!("expected a metric name, got {}", shown(line)));
    }
    let name = &line[..name_end];
    let mut rest = &line[name_end..];
    let mut labels = Labels::new();
    let after_blanks = if strict {
        rest
    } else {
        rest.trim_start_matches(BLANKS)
    };
    if let Some(inner) = after_blanks.strip_prefix('{') {
        rest = parse_labels(inner, &mut labels, strict)
            .map_err(|reason| format!("{reason} in the labels of {name}"))?;
    }
    let mut tokens = Tokens::new(rest, strict);
    let value_text = tokens
        .next()
        .map_err(|got| format!("expected a space before the value of {name}, got {got}"))?
        .ok_or_else(|| format!("{name} has no value"))?;
    let value = number(value_text)
        .ok_or_else(|| format!("the value of {name} is not a number: {}", shown(value_text)))?;
    let mut exemplar = false;
    let mut stamp = None;
    let mut after = tokens
        .next()
        .map_err(|got| format!("unexpected text after the value of {name}: {got}"))?;
    if let Some(t) = after.filter(|t| !t.starts_with('#')) {
        stamp = Some(
            timestamp(t, strict)
                .map_err(|why| format!("the timestamp of {name} {why}: {}", shown(t)))?,
        );
        after = tokens
            .next()
            .map_err(|got| format!("unexpected text after the sample of {name}: {got}"))?;
    }
    if let Some(t) = after {
        if t != "#" {
            return Err(format!(
                "unexpected text after the sample of {name}: {}",
                shown(t)
            ));
        }
        exemplar_after_hash(tokens.rest(), strict)
            .map_err(|reason| format!("{reason} in the exemplar of {name}"))?;
        exemplar = true;
    }
    Ok(Sample {
        name,
        labels,
        value,
        timestamp: stamp,
        exemplar,
    })
}

/// The tokens of a sample after its labels, each preceded by one space (OpenMetrics) or
/// by blanks (text format).
struct Tokens<'a> {
    rest: &'a str,
    strict: bool,
}

impl<'a> Tokens<'a> {
    fn new(rest: &'a str, strict: bool) -> Tokens<'a> {
        Tokens { rest, strict }
    }

    /// The next token; `Ok(None)` at the end of the line, `Err` with the text shown when
    /// the separator is missing.
    fn next(&mut self) -> Result<Option<&'a str>, String> {
        let after = if self.strict {
            if self.rest.is_empty() {
                return Ok(None);
            }
            self.rest.strip_prefix(' ')
        } else {
            let trimmed = self.rest.trim_start_matches(BLANKS);
            if trimmed.is_empty() {
                return Ok(None);
            }
            (trimmed.len() < self.rest.len()).then_some(trimmed)
        };
        let after = after
            .filter(|a| !a.is_empty() && !a.starts_with(BLANKS))
            .ok_or_else(|| shown(self.rest))?;
        let end = after.find(BLANKS).unwrap_or(after.len());
        self.rest = &after[end..];
        Ok(Some(&after[..end]))
    }

    fn rest(&self) -> &'a str {
        self.rest
    }
}

/// Checks an exemplar after its `#`: ` {labels} value [timestamp]`.
fn exemplar_after_hash(rest: &str, strict: bool) -> Result<(), String> {
    let rest = if strict {
        rest.strip_prefix(' ')
    } else {
        Some(rest.trim_start_matches(BLANKS))
    };
    let inner = rest
        .and_then(|r| r.strip_prefix('{'))
        .ok_or("expected {labels} after #")?;
    let mut labels = Labels::new();
    let rest = parse_labels(inner, &mut labels, strict)?;
    let length: usize = labels
        .iter()
        .map(|(k, v)| k.chars().count() + v.chars().count())
        .sum();
    if strict && length > 128 {
        return Err(format!("labels of {length} characters, more than 128"));
    }
    let mut tokens = Tokens::new(rest, strict);
    let value = tokens.next()?.ok_or("no value")?;
    number(value).ok_or_else(|| format!("a value that is not a number: {}", shown(value)))?;
    if let Some(t) = tokens.next()? {
        timestamp(t, true).map_err(|why| format!("a timestamp that {why}: {}", shown(t)))?;
    }
    match tokens.next()? {
        None => Ok(()),
        Some(t) => Err(format!("unexpected text {}", shown(t))),
    }
}

/// Parses labels after `{` up to and including `}`; returns what follows.
fn parse_labels<'a>(mut s: &'a str, labels: &mut Labels, strict: bool) -> Result<&'a str, String> {
    let blanks: &[char] = if strict { &[] } else { &BLANKS };
    loop {
        s = s.trim_start_matches(blanks);
        if let Some(rest) = s.strip_prefix('}') {
            if strict && !labels.is_empty() {
                return Err("a comma before '}'".to_owned());
            }
            return Ok(rest);
        }
        let name_end = s
            .char_indices()
            .find(|&(i, c)| !(is_name_char(c, false) && (i > 0 || !c.is_ascii_digit())))
            .map_or(s.len(), |(i, _)| i);
        if name_end == 0 {
            return Err(format!("expected a label name, got {}", shown(s)));
        }
        let label = &s[..name_end];
        s = s[name_end..].trim_start_matches(blanks);
        s = s
            .strip_prefix('=')
            .ok_or_else(|| format!("expected '=' after label {label}"))?
            .trim_start_matches(blanks);
        s = s
            .strip_prefix('"')
            .ok_or_else(|| format!("expected a quoted value for label {label}"))?;
        let end =
            closing_quote(s).ok_or_else(|| format!("the value of label {label} is not closed"))?;
        let value = unescape(&s[..end], &['\\', 'n', '"'])
            .map_err(|e| format!("{e} in the value of label {label}"))?;
        if labels.iter().any(|(k, _)| k == label) {
            return Err(format!("label {label} appears twice"));
        }
        labels.push((label.to_owned(), value));
        s = s[end + 1..].trim_start_matches(blanks);
        if let Some(rest) = s.strip_prefix(',') {
            s = rest;
            if strict && s.starts_with('}') {
                return Err("a comma before '}'".to_owned());
            }
        } else if let Some(rest) = s.strip_prefix('}') {
            return Ok(rest);
        } else {
            return Err(format!("expected ',' or '}}' after label {label}"));
        }
    }
}

/// The byte offset of the quote that closes a label value.
fn closing_quote(s: &str) -> Option<usize> {
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => return Some(i),
            _ => {}
        }
    }
    None
}

/// Unescapes `text`: `\n` and those of `allowed` (`\\`, `\"`) are a line feed and the
/// character; any other escape is kept as written, as Prometheus keeps it.
fn unescape(text: &str, allowed: &[char]) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') if allowed.contains(&'n') => out.push('\n'),
            Some(c @ ('\\' | '"')) if allowed.contains(&c) => out.push(c),
            // Prometheus keeps any other escape as written.
            Some(c) => {
                out.push('\\');
                out.push(c);
            }
            None => return Err("a backslash at the end".to_owned()),
        }
    }
    Ok(out)
}

fn check_metric_name(name: &str, context: &str) -> Result<(), String> {
    let valid = name
        .char_indices()
        .all(|(i, c)| is_name_char(c, true) && (i > 0 || !c.is_ascii_digit()));
    if name.is_empty() || !valid {
        return Err(format!(
            "{context} has an invalid metric name {}",
            shown(name)
        ));
    }
    Ok(())
}

/// Letters, digits, `_`, and `:` in metric names.
fn is_name_char(c: char, colon: bool) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || (colon && c == ':')
}

/// A number as the formats write it: a decimal with an optional exponent, `NaN`, or an
/// infinity (`+Inf`, `-Inf`, `Inf`, `infinity`, in any case). Hex floats, digit
/// separators and anything around the number are not numbers.
pub fn number(text: &str) -> Option<f64> {
    let unsigned = text.strip_prefix(['+', '-']).unwrap_or(text);
    if text.eq_ignore_ascii_case("nan") {
        return Some(f64::NAN);
    }
    if unsigned.eq_ignore_ascii_case("inf") || unsigned.eq_ignore_ascii_case("infinity") {
        return Some(if text.starts_with('-') {
            f64::NEG_INFINITY
        } else {
            f64::INFINITY
        });
    }
    is_decimal(unsigned).then(|| text.parse().ok()).flatten()
}

/// `digits[.digits][e[+-]digits]` with at least one digit before the exponent.
fn is_decimal(text: &str) -> bool {
    let (mantissa, exponent) = match text.find(['e', 'E']) {
        Some(i) => (&text[..i], Some(&text[i + 1..])),
        None => (text, None),
    };
    let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    let mantissa_ok =
        digits(whole) && digits(fraction) && !(whole.is_empty() && fraction.is_empty());
    let exponent_ok = exponent.is_none_or(|e| {
        let e = e.strip_prefix(['+', '-']).unwrap_or(e);
        !e.is_empty() && digits(e)
    });
    mantissa_ok && exponent_ok
}

/// Reads a timestamp: integer milliseconds in the text format, seconds as a decimal in
/// OpenMetrics; the reason is said after the sample's name.
fn timestamp(text: &str, openmetrics: bool) -> Result<f64, &'static str> {
    if openmetrics {
        let unsigned = text.strip_prefix(['+', '-']).unwrap_or(text);
        return match text.parse() {
            Ok(t) if is_decimal(unsigned) => Ok(t),
            _ => Err("is not a decimal number of seconds"),
        };
    }
    text.parse::<i64>()
        .map(|t| t as f64)
        .map_err(|_| "is not an integer number of milliseconds")
}

/// A number as an error shows it: `-50`, `0.25`, `1e308`, `NaN`, `+Inf`.
pub fn shown_number(v: f64) -> String {
    if v.is_nan() {
        "NaN".to_owned()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.to_owned()
    } else {
        let s = format!("{v:?}");
        s.strip_suffix(".0")
            .map_or_else(|| s.clone(), str::to_owned)
    }
}

/// Offending text as it is shown in an error: quoted and clipped.
pub fn shown(text: &str) -> String {
    format!("{:?}", clip(text, 60))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::scrape::series_key;

    fn parse(text: &str, openmetrics: bool) -> Result<Vec<(String, f64)>, ParseError> {
        let mut out = Vec::new();
        parse_exposition(text, openmetrics, |_, s| {
            out.push((series_key(s.name, &s.labels), s.value));
            Ok(())
        })?;
        Ok(out)
    }

    const VALID: &str = "# HELP http_requests_total Requests.\n# TYPE http_requests_total counter\nhttp_requests_total{code=\"200\",path=\"/a\\\"b\"} 1027 1395066363000\nh_bucket{le=\"0.1\"} 3\nh_bucket{le=\"+Inf\"} 5\n";

    proptest::proptest! {
        /// Whatever an endpoint sends, parsing ends in series or an error, never a panic.
        #[test]
        fn arbitrary_text_never_panics_the_parser(text in "\\PC*", om in proptest::bool::ANY) {
            let _ = parse(&text, om);
        }

        /// A body cut anywhere is an error or a prefix of the series, never a panic, and a
        /// cut inside a line is always an error.
        #[test]
        fn truncated_expositions_are_errors_or_whole_lines(cut in 0..VALID.len()) {
            let Some(text) = VALID.get(..cut) else { return Ok(()) };
            let result = parse(text, false);
            if !text.is_empty() && !text.ends_with('\n') {
                proptest::prop_assert!(result.is_err(), "cut at {cut} parsed: {result:?}");
            }
        }
    }

    #[test]
    fn well_formed_expositions_parse_into_series() {
        // (text, openmetrics, expected series and values)
        type Case<'a> = (&'a str, bool, &'a [(&'a str, f64)]);
        let cases: &[Case] = &[
            ("", false, &[]),
            ("# just a comment\n\n", false, &[]),
            ("foo 1\nbar 2\n", false, &[("foo{}", 1.0), ("bar{}", 2.0)]),
            (
                "# HELP r Requests.\n# TYPE r counter\nr{code=\"200\"} 10\nr{code=\"500\"} 2 1700000000000\n",
                false,
                &[("r{code=\"200\"}", 10.0), ("r{code=\"500\"}", 2.0)],
            ),
            (
                "x{b=\"2\", a=\"1\",} 3\r\n",
                false,
                &[("x{a=\"1\",b=\"2\"}", 3.0)],
            ),
            ("x\t{a=\"1\"}\t4\n", false, &[("x{a=\"1\"}", 4.0)]),
            (
                "x{p=\"a,b}\\\"c\\\\d\\ne\"} 5\n",
                false,
                &[("x{p=\"a,b}\\\"c\\\\d\\ne\"}", 5.0)],
            ),
            (
                "x{} +Inf\ny -1.5e3\n",
                false,
                &[("x{}", f64::INFINITY), ("y{}", -1500.0)],
            ),
            (
                "# TYPE foo counter\nfoo_total{a=\"1\"} 1 1700000000.5 # {trace_id=\"abc\"} 1.0\nfoo_created{a=\"1\"} 1700000000\n# EOF\n",
                true,
                &[
                    ("foo_total{a=\"1\"}", 1.0),
                    ("foo_created{a=\"1\"}", 1700000000.0),
                ],
            ),
            ("# TYPE g gauge\ng 7\n# EOF", true, &[("g{}", 7.0)]),
        ];
        for (text, om, want) in cases {
            let got = parse(text, *om).unwrap_or_else(|e| panic!("{text:?}: {e}"));
            let want: Vec<(String, f64)> =
                want.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect();
            assert_eq!(got, want, "{text:?}");
        }
        let nan = parse("x NaN\n", false).unwrap();
        assert!(nan[0].1.is_nan());
    }

    #[test]
    fn malformed_expositions_are_errors_with_line_and_reason() {
        let cases: &[(&str, bool, usize, &str)] = &[
            (
                "hello world this is not metrics\n",
                false,
                1,
                "not a number",
            ),
            (
                "<html><body>Error</body></html>\n",
                false,
                1,
                "expected a metric name",
            ),
            ("foo 1\nfoo{a=\"1\"} 12", false, 2, "no line feed"),
            ("foo 1\nfoo{a=\"", false, 2, "no line feed"),
            ("foo{a=\"1} 1\n", false, 1, "not closed"),
            ("foo{a=1} 1\n", false, 1, "quoted value"),
            ("foo{a=\"1\" b=\"2\"} 1\n", false, 1, "expected ','"),
            ("foo{a=\"1\",a=\"2\"} 1\n", false, 1, "appears twice"),
            ("foo=2\n", false, 1, "expected a space"),
            ("foo{a=\"1\"}2\n", false, 1, "expected a space"),
            ("foo\n", false, 1, "has no value"),
            ("foo 1 2 3\n", false, 1, "unexpected text"),
            ("foo 1 soon\n", false, 1, "timestamp"),
            ("# TYPE foo bogus\nfoo 1\n", false, 1, "unknown type"),
            ("foo 1\n", true, 1, "no # EOF"),
            ("foo 1\n# EOF\nbar 2\n", true, 3, "after # EOF"),
        ];
        for (text, om, line, reason) in cases {
            let e = parse(text, *om).expect_err(text);
            assert_eq!(e.line, *line, "{text:?}: {e}");
            assert!(e.reason.contains(reason), "{text:?}: {e}");
        }
    }
}
