//! The Prometheus text format (version 0.0.4) of an OpenMetrics exposition, for what
//! asks for it or does not say (`curl`, `promtool check metrics`): a counter's `# HELP`
//! and `# TYPE` name its samples' `_total` name, an unknown type is `untyped`, and there
//! is no `# UNIT` and no `# EOF`. Samples are the same in both formats as prometheus-client
//! writes them (no timestamps, exemplars or `_created` samples).
//!
//! It rewrites only what [`super::Metrics::encode`] wrote; it decides nothing.

use std::collections::HashSet;

/// The content type of the Prometheus text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// `openmetrics` in the Prometheus text format.
pub fn from_openmetrics(openmetrics: &str) -> String {
    let counters: HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        match descriptor(line) {
            Some((keyword, name, rest)) => {
                let total = if counters.contains(name) {
                    "_total"
                } else {
                    ""
                };
                let rest = match (keyword, rest) {
                    ("TYPE", "unknown") => "untyped",
                    _ => rest,
                };
                out.push_str(&format!("# {keyword} {name}{total} {rest}"));
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// A `# HELP` or `# TYPE` line: its keyword, the family's name and the rest.
fn descriptor(line: &str) -> Option<(&str, &str, &str)> {
    let rest = line.strip_prefix("# ")?;
    let (keyword, rest) = rest.split_once(' ')?;
    if keyword != "HELP" && keyword != "TYPE" {
        return None;
    }
    let (name, rest) = rest.split_once(' ')?;
    Some((keyword, name, rest))
}

#[cfg(test)]
mod tests {
    use super::from_openmetrics;

    #[test]
    fn counters_are_named_with_total_and_units_and_eof_are_dropped() {
        let om = "\
# HELP a_readings Readings.
# TYPE a_readings counter
a_readings_total{signal=\"x\"} 3
# HELP a_step_seconds How long.
# TYPE a_step_seconds histogram
# UNIT a_step_seconds seconds
a_step_seconds_bucket{le=\"+Inf\"} 1
# HELP a_open Open now.
# TYPE a_open gauge
a_open 2
# TYPE a_odd unknown
a_odd 1
# EOF
";
        let text = "\
# HELP a_readings_total Readings.
# TYPE a_readings_total counter
a_readings_total{signal=\"x\"} 3
# HELP a_step_seconds How long.
# TYPE a_step_seconds histogram
a_step_seconds_bucket{le=\"+Inf\"} 1
# HELP a_open Open now.
# TYPE a_open gauge
a_open 2
# TYPE a_odd untyped
a_odd 1
";
        assert_eq!(from_openmetrics(om), text);
    }

    #[test]
    fn a_help_text_that_names_a_counter_is_left_as_written() {
        let om = "# HELP a_x Counts a_y like a_y counter.\n# TYPE a_x gauge\na_x 1\n# TYPE a_y counter\na_y_total 1\n# EOF\n";
        let text = from_openmetrics(om);
        assert!(
            text.starts_with("# HELP a_x Counts a_y like a_y counter.\n"),
            "{text}"
        );
        assert!(text.contains("# TYPE a_y_total counter\n"), "{text}");
    }
}
