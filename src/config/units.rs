//! Parsing of the human-written values in the configuration: durations (`"5m"`,
//! `"200ms"`), percentages (`"5%"`) and rule conditions (`"> 5%"`, `"> 1.5x baseline"`).
//!
//! Every parser returns the message that `rearguard check` prints after the key's path,
//! so the wording here is the user interface.

use std::time::Duration;

/// The longest duration accepted: ten years.
const MAX_DURATION_MS: u128 = 10 * 365 * 86_400_000;

/// Parses a duration written as one or more `<number><unit>` parts with no spaces,
/// e.g. `"5m"`, `"200ms"`, `"1h30m"`, `"1.5s"`. Units: `ms`, `s`, `m`, `h`, `d`. A
/// duration is a whole number of milliseconds (`"1.5ms"` and `"0.0001s"` are refused:
/// nothing rearguard times is finer), at most ten years.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("expected a duration like \"5m\", got {text:?}");
    let s = text.trim();
    if s.is_empty() || s != text {
        return Err(bad());
    }
    let mut total: u128 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let number = &rest[..num_len];
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit_ms: u128 = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        let part = part_ms(number, unit_ms).ok_or_else(bad)?.ok_or_else(|| {
            format!("{text:?} is finer than a millisecond: durations are whole milliseconds")
        })?;
        total = total.saturating_add(part);
        if total > MAX_DURATION_MS {
            return Err(format!("{text:?} is longer than the limit of ten years"));
        }
    }
    Ok(Duration::from_millis(total as u64))
}

/// `number` (digits with at most one `.`) of a unit of `unit_ms` milliseconds, in whole
/// milliseconds: `None` when it is not a number, `Some(None)` when it has a fraction of
/// a millisecond. Exact decimal arithmetic, so `"0.3s"` is 300ms, not 299.
fn part_ms(number: &str, unit_ms: u128) -> Option<Option<u128>> {
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() || fraction.contains('.') {
        return None;
    }
    // Digits past what ten years in milliseconds needs change nothing but the risk of
    // overflow: a longer number is over the limit, or has a fraction too fine.
    let fraction = fraction.trim_end_matches('0');
    if whole.trim_start_matches('0').len() > 15 || fraction.len() > 15 {
        return Some(if fraction.len() > 15 {
            None
        } else {
            Some(u128::MAX)
        });
    }
    let whole: u128 = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    let scale = 10u128.pow(fraction.len() as u32);
    let fraction: u128 = if fraction.is_empty() {
        0
    } else {
        fraction.parse().ok()?
    };
    let fraction_ms = fraction * unit_ms;
    if !fraction_ms.is_multiple_of(scale) {
        return Some(None);
    }
    Some(Some(whole * unit_ms + fraction_ms / scale))
}

/// Formats a duration the way the configuration writes it (`"5m30s"`, `"200ms"`).
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".to_owned();
    }
    let mut out = String::new();
    let mut rest = ms;
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
    ] {
        if rest >= size {
            out.push_str(&format!("{}{unit}", rest / size));
            rest %= size;
        }
    }
    if rest > 0 {
        out.push_str(&format!("{rest}ms"));
    }
    out
}

/// Formats a duration the way people write it in prose: `825 ms`, `6.0 s` (tenths under a
/// minute), `1 min 1 s`, `2 h 5 min`, `1 d 3 h`. Every duration in an incident's
/// timeline, report, `why` and notifications is written by this one function; a rule's
/// condition keeps the configuration's own spelling (`for 5m`).
pub fn human_duration(d: Duration) -> String {
    const MIN: u128 = 60_000;
    const HOUR: u128 = 60 * MIN;
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{ms} ms");
    }
    let tenths = (ms + 50) / 100;
    if tenths < 600 {
        return format!("{}.{} s", tenths / 10, tenths % 10);
    }
    // Each unit is rounded first, so that 59 min 59.6 s reads as `1 h`, not `60 min`.
    let secs = (ms + 500) / 1000;
    let mins = (ms + MIN / 2) / MIN;
    let (big, small, names) = if secs < 3600 {
        (secs / 60, secs % 60, ("min", "s"))
    } else if mins < 24 * 60 {
        (mins / 60, mins % 60, ("h", "min"))
    } else {
        let h = (ms + HOUR / 2) / HOUR;
        (h / 24, h % 24, ("d", "h"))
    };
    if small == 0 {
        format!("{big} {}", names.0)
    } else {
        format!("{big} {} {small} {}", names.0, names.1)
    }
}

/// Parses a percentage such as `"5%"` or `"99.5%"` into a fraction (0.05, 0.995).
pub fn parse_percent(text: &str) -> Result<f64, String> {
    let bad = || format!("expected a percentage like \"5%\", got {text:?}");
    let number = text.strip_suffix('%').ok_or_else(bad)?;
    let value: f64 = number.trim().parse().map_err(|_| bad())?;
    if !(0.0..=100.0).contains(&value) {
        return Err(format!(
            "percentage must be between 0% and 100%, got {text:?}"
        ));
    }
    Ok(value / 100.0)
}

/// A comparison operator in a condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmp {
    Gt,
    Ge,
    Lt,
    Le,
}

impl Cmp {
    pub fn holds(self, value: f64, threshold: f64) -> bool {
        match self {
            Cmp::Gt => value > threshold,
            Cmp::Ge => value >= threshold,
            Cmp::Lt => value < threshold,
            Cmp::Le => value <= threshold,
        }
    }

    /// The operator that holds exactly when `self` does not.
    pub fn negate(self) -> Cmp {
        match self {
            Cmp::Gt => Cmp::Le,
            Cmp::Ge => Cmp::Lt,
            Cmp::Lt => Cmp::Ge,
            Cmp::Le => Cmp::Gt,
        }
    }

    /// True for `>` and `>=`: the bad side is above the threshold.
    pub fn is_upper(self) -> bool {
        matches!(self, Cmp::Gt | Cmp::Ge)
    }

    pub fn symbol(self) -> &'static str {
        match self {
            Cmp::Gt => ">",
            Cmp::Ge => ">=",
            Cmp::Lt => "<",
            Cmp::Le => "<=",
        }
    }
}

/// The unit a threshold was written in; it decides how values are printed back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// A plain number (a count, a gauge).
    Plain,
    /// A fraction written as a percentage.
    Percent,
    /// Seconds written as a duration.
    Seconds,
}

impl Unit {
    pub fn format(self, value: f64) -> String {
        match self {
            Unit::Plain => format_number(value),
            Unit::Percent => format!("{}%", format_number(value * 100.0)),
            Unit::Seconds => {
                if value.abs() < 1.0 {
                    format!("{}ms", format_number(value * 1000.0))
                } else {
                    format!("{}s", format_number(value))
                }
            }
        }
    }
}

fn format_number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    }
}

/// What a condition compares against.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Threshold {
    /// A fixed value, in the signal's own unit (fractions for rates, seconds for latency).
    Value(f64, Unit),
    /// A multiple of the baseline captured before the latest change.
    BaselineRatio(f64),
    /// Worse than before the latest change, judged by a statistical test (`> baseline`).
    Baseline,
}

/// A parsed condition: `failing` for pass/fail checks, or a comparison.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Condition {
    /// A check (probe, exec) is failing.
    Failing,
    /// A check is passing; only meaningful as a clear condition.
    Passing,
    Compare {
        cmp: Cmp,
        threshold: Threshold,
    },
}

impl Condition {
    /// The condition that holds exactly when this one does not.
    pub fn negate(self) -> Condition {
        match self {
            Condition::Failing => Condition::Passing,
            Condition::Passing => Condition::Failing,
            Condition::Compare { cmp, threshold } => Condition::Compare {
                cmp: cmp.negate(),
                threshold,
            },
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Condition::Failing => "failing".to_owned(),
            Condition::Passing => "passing".to_owned(),
            Condition::Compare {
                cmp,
                threshold: Threshold::Value(v, unit),
            } => format!("{} {}", cmp.symbol(), unit.format(*v)),
            Condition::Compare {
                cmp,
                threshold: Threshold::BaselineRatio(r),
            } => format!("{} {}x baseline", cmp.symbol(), format_number(*r)),
            Condition::Compare {
                cmp,
                threshold: Threshold::Baseline,
            } => format!("{} baseline", cmp.symbol()),
        }
    }
}

/// Parses a condition: `"failing"`, `"passing"`, `"> 5%"`, `">= 200ms"`, `"> 3"`,
/// `"> 1.5x baseline"`, `"> baseline"`.
pub fn parse_condition(text: &str) -> Result<Condition, String> {
    let bad = || {
        format!(
            "expected a condition like \"> 5%\", \"> 200ms\", \"> 3\", \"> 1.5x baseline\" or \"failing\", got {text:?}"
        )
    };
    let s = text.trim();
    match s {
        "failing" => return Ok(Condition::Failing),
        "passing" => return Ok(Condition::Passing),
        _ => {}
    }
    let (cmp, rest) = if let Some(r) = s.strip_prefix(">=") {
        (Cmp::Ge, r)
    } else if let Some(r) = s.strip_prefix("<=") {
        (Cmp::Le, r)
    } else if let Some(r) = s.strip_prefix('>') {
        (Cmp::Gt, r)
    } else if let Some(r) = s.strip_prefix('<') {
        (Cmp::Lt, r)
    } else {
        return Err(bad());
    };
    let rest = rest.trim();
    if rest == "baseline" {
        return Ok(Condition::Compare {
            cmp,
            threshold: Threshold::Baseline,
        });
    }
    if let Some(ratio) = rest.strip_suffix("baseline") {
        let ratio = ratio.trim().strip_suffix('x').ok_or_else(bad)?;
        let r: f64 = ratio.trim().parse().map_err(|_| bad())?;
        if !(r.is_finite() && r > 0.0) {
            return Err(bad());
        }
        return Ok(Condition::Compare {
            cmp,
            threshold: Threshold::BaselineRatio(r),
        });
    }
    let threshold = if rest.ends_with('%') {
        Threshold::Value(parse_percent(rest)?, Unit::Percent)
    } else if rest.ends_with(|c: char| c.is_ascii_alphabetic()) {
        Threshold::Value(
            parse_duration(rest).map_err(|_| bad())?.as_secs_f64(),
            Unit::Seconds,
        )
    } else {
        let v: f64 = rest.parse().map_err(|_| bad())?;
        if !v.is_finite() {
            return Err(bad());
        }
        Threshold::Value(v, Unit::Plain)
    };
    Ok(Condition::Compare { cmp, threshold })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_written_for_people_one_way() {
        let cases = [
            (0, "0 ms"),
            (825, "825 ms"),
            (999, "999 ms"),
            (1000, "1.0 s"),
            (5996, "6.0 s"),
            (1540, "1.5 s"),
            (59_949, "59.9 s"),
            (59_950, "1 min"),
            (61_000, "1 min 1 s"),
            (300_000, "5 min"),
            (3_599_600, "1 h"),
            (3_600_000, "1 h"),
            (5_400_000, "1 h 30 min"),
            (86_400_000, "1 d"),
            (97_200_000, "1 d 3 h"),
        ];
        for (ms, text) in cases {
            assert_eq!(human_duration(Duration::from_millis(ms)), text, "{ms} ms");
        }
    }

    #[test]
    fn durations_parse_as_humans_write_them() {
        let ok = [
            ("5m", 300_000),
            ("200ms", 200),
            ("1h30m", 5_400_000),
            ("1.5s", 1500),
            ("0s", 0),
            ("2d", 172_800_000),
        ];
        for (text, ms) in ok {
            assert_eq!(parse_duration(text).unwrap().as_millis(), ms, "{text}");
        }
        for text in ["5 minutes", "5", "m", "", " 5m", "5x", "-1s", "1e400s"] {
            let err = parse_duration(text).unwrap_err();
            assert!(
                err.starts_with("expected a duration like \"5m\""),
                "{text}: {err}"
            );
        }
    }

    #[test]
    fn durations_are_whole_milliseconds_of_at_most_ten_years() {
        for (text, ms) in [
            ("0.3s", 300),
            ("0.001s", 1),
            ("1.25m", 75_000),
            ("3650d", 315_360_000_000),
        ] {
            assert_eq!(parse_duration(text).unwrap().as_millis(), ms, "{text}");
        }
        for text in ["0.5ms", "0.0001s", "1.0000000000000000001s", "1s0.5ms"] {
            let err = parse_duration(text).unwrap_err();
            assert!(err.contains("finer than a millisecond"), "{text}: {err}");
        }
        for text in ["3651d", "99999999999999999999999h", "3000d3000d"] {
            let err = parse_duration(text).unwrap_err();
            assert!(
                err.contains("longer than the limit of ten years"),
                "{text}: {err}"
            );
        }
        for text in [".s", "1..5s", "1.2.3s"] {
            assert!(parse_duration(text).is_err(), "{text}");
        }
    }

    #[test]
    fn durations_format_back_to_config_syntax() {
        for text in ["5m", "200ms", "1h30m", "1d2h", "5m30s"] {
            assert_eq!(format_duration(parse_duration(text).unwrap()), text);
        }
    }

    #[test]
    fn conditions_parse_units_into_base_values() {
        let check = |text: &str, cmp: Cmp, threshold: Threshold| {
            assert_eq!(
                parse_condition(text).unwrap(),
                Condition::Compare { cmp, threshold },
                "{text}"
            );
        };
        check("> 5%", Cmp::Gt, Threshold::Value(0.05, Unit::Percent));
        check(">= 200ms", Cmp::Ge, Threshold::Value(0.2, Unit::Seconds));
        check("> 3", Cmp::Gt, Threshold::Value(3.0, Unit::Plain));
        check("< 1%", Cmp::Lt, Threshold::Value(0.01, Unit::Percent));
        check("> 1.5x baseline", Cmp::Gt, Threshold::BaselineRatio(1.5));
        check("> baseline", Cmp::Gt, Threshold::Baseline);
        assert_eq!(parse_condition("failing").unwrap(), Condition::Failing);
        for text in ["5%", "> five", "== 3", "> 1.5 baseline", "> 120%", "> NaN"] {
            assert!(parse_condition(text).is_err(), "{text}");
        }
    }

    #[test]
    fn conditions_describe_themselves_in_config_syntax() {
        for text in [
            "> 5%",
            ">= 200ms",
            "> 3",
            "< 1%",
            "> 1.5x baseline",
            "> baseline",
            "failing",
        ] {
            assert_eq!(parse_condition(text).unwrap().describe(), text);
        }
    }
}
