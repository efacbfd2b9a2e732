//! The scrape source's exposition parser against a conformance corpus written from the
//! OpenMetrics 1.0 specification and the Prometheus text format 0.0.4: every valid case
//! parses into its number of samples, every invalid one is rejected with the line it is
//! about and the reason. Each case is one rule of the formats, named after it.

use rearguard::source::scrape::check_exposition;

/// OpenMetrics or the text format.
#[derive(Debug, Clone, Copy)]
enum Format {
    Om,
    Text,
}

use Format::{Om, Text};

/// (rule, format, exposition, samples it has)
type Valid = (&'static str, Format, &'static str, usize);

/// (rule, format, exposition, line rejected, text the reason contains)
type Invalid = (&'static str, Format, &'static str, usize, &'static str);

const VALID: &[Valid] = &[
    ("an empty OpenMetrics exposition", Om, "# EOF\n", 0),
    ("# EOF without a line feed", Om, "# EOF", 0),
    (
        "a counter with help, unit, created time and an exemplar",
        Om,
        "# TYPE job_seconds counter\n# UNIT job_seconds seconds\n# HELP job_seconds Time spent in \\\"jobs\\\".\njob_seconds_total{kind=\"a\"} 17.5 # {trace_id=\"4bf92f\"} 0.5 1700000000.25\njob_seconds_created{kind=\"a\"} 1700000000\n# EOF\n",
        2,
    ),
    (
        "help and type in either order, a family without samples",
        Om,
        "# HELP a Nothing yet.\n# TYPE a gauge\n# HELP b An empty family.\n# TYPE b counter\n# EOF\n",
        0,
    ),
    (
        "label values with escapes, unknown escapes kept, and the characters of the syntax",
        Om,
        "# TYPE g gauge\ng{path=\"C:\\\\tmp\",quote=\"say \\\"hi\\\"\",nl=\"a\\nb\"} 1\ng{raw=\"\\d+\"} 2\ng{text=\"a,b}=c # {d}\"} 3\ng{} 4\n# EOF\n",
        4,
    ),
    (
        "numbers as the grammar writes them",
        Om,
        "# TYPE n gauge\nn{v=\"a\"} 1e3\nn{v=\"b\"} -1.5E-3\nn{v=\"c\"} .5\nn{v=\"d\"} 5.\nn{v=\"e\"} +Inf\nn{v=\"f\"} -Inf\nn{v=\"g\"} NaN\nn{v=\"h\"} 007\nn{v=\"i\"} 18446744073709551615\n# EOF\n",
        9,
    ),
    (
        "timestamps in seconds, a series repeated at a later or equal time",
        Om,
        "# TYPE t gauge\nt 1 1700000000\nt 2 1700000000.5\nt 3 1700000000.5\n# EOF\n",
        3,
    ),
    (
        "a histogram of two label sets, each complete and together",
        Om,
        "# TYPE lat histogram\nlat_bucket{route=\"/a\",le=\"0.1\"} 2\nlat_bucket{route=\"/a\",le=\"1\"} 5\nlat_bucket{route=\"/a\",le=\"+Inf\"} 6\nlat_count{route=\"/a\"} 6\nlat_sum{route=\"/a\"} 3.2\nlat_created{route=\"/a\"} 1700000000\nlat_bucket{route=\"/b\",le=\"0.1\"} 0\nlat_bucket{route=\"/b\",le=\"1\"} 0\nlat_bucket{route=\"/b\",le=\"+Inf\"} 0\nlat_count{route=\"/b\"} 0\nlat_sum{route=\"/b\"} 0\n# EOF\n",
        11,
    ),
    (
        "a histogram with a bucket below 0 and no sum",
        Om,
        "# TYPE temp histogram\ntemp_bucket{le=\"-10\"} 1\ntemp_bucket{le=\"0\"} 4\ntemp_bucket{le=\"+Inf\"} 9\n# EOF\n",
        3,
    ),
    (
        "a histogram of buckets alone, with exemplars",
        Om,
        "# TYPE h histogram\nh_bucket{le=\"0.5\"} 1 # {id=\"x\"} 0.3\nh_bucket{le=\"+Inf\"} 1\n# EOF\n",
        2,
    ),
    (
        "a gauge histogram with a negative sum under a negative bucket",
        Om,
        "# TYPE q gaugehistogram\nq_bucket{le=\"-1\"} 2\nq_bucket{le=\"+Inf\"} 3\nq_gcount 3\nq_gsum -4\n# EOF\n",
        4,
    ),
    (
        "a summary with quantiles, one of them NaN",
        Om,
        "# TYPE rpc summary\nrpc{quantile=\"0.5\"} 0.2\nrpc{quantile=\"0.99\"} NaN\nrpc_count 10\nrpc_sum 2.5\nrpc_created 1700000000\n# EOF\n",
        5,
    ),
    (
        "an info and a state set",
        Om,
        "# TYPE build info\nbuild_info{version=\"1.2\"} 1\n# TYPE mode stateset\nmode{mode=\"on\"} 1\nmode{mode=\"off\"} 0\n# EOF\n",
        3,
    ),
    (
        "unknown and untyped samples",
        Om,
        "# TYPE u unknown\nu 3\nv 4\nw{a=\"1\"} 5\n# EOF\n",
        3,
    ),
    ("an empty text exposition", Text, "", 0),
    (
        "comments, blank lines, CRLF, tabs and a trailing comma",
        Text,
        "# just a comment\n\n#no space is a comment too\r\nx\t{ a = \"1\" , }\t4  \r\n  y 5\n",
        2,
    ),
    (
        "a counter with help and millisecond timestamps",
        Text,
        "# HELP http_requests_total Requests, with a \\\\ and a \\n in help.\n# TYPE http_requests_total counter\nhttp_requests_total{code=\"200\"} 1027 1395066363000\nhttp_requests_total{code=\"500\"} 3 -1395066363000\n",
        2,
    ),
    (
        "a histogram with negative observations",
        Text,
        "# TYPE d histogram\nd_bucket{le=\"-1\"} 1\nd_bucket{le=\"0\"} 1\nd_bucket{le=\"+Inf\"} 2\nd_sum -0.5\nd_count 2\n",
        5,
    ),
    (
        "a summary and untyped samples",
        Text,
        "# TYPE s summary\ns{quantile=\"0.9\"} 1.5\ns_sum 10\ns_count 7\n# TYPE legacy untyped\nlegacy 1\nplain 2\n",
        5,
    ),
    (
        "a counter type line whose samples end in _total is a family of its own",
        Text,
        "# TYPE jobs counter\njobs_total 4\n",
        1,
    ),
    (
        "unknown escapes in label values are kept",
        Text,
        "x{re=\"\\d+\\.\\w\"} 1\n",
        1,
    ),
];

const INVALID: &[Invalid] = &[
    // Counters.
    (
        "a negative counter",
        Om,
        "# TYPE a counter\na_total -1\n# EOF\n",
        2,
        "cannot be negative",
    ),
    (
        "a NaN counter",
        Om,
        "# TYPE a counter\na_total NaN\n# EOF\n",
        2,
        "not a finite number",
    ),
    (
        "an infinite counter",
        Om,
        "# TYPE a counter\na_total +Inf\n# EOF\n",
        2,
        "not a finite number",
    ),
    (
        "a counter sample without _total",
        Om,
        "# TYPE a counter\na 1\n# EOF\n",
        2,
        "not a sample name of counter a",
    ),
    (
        "a created time that is NaN",
        Om,
        "# TYPE a counter\na_total 1\na_created NaN\n# EOF\n",
        3,
        "not a time",
    ),
    (
        "a negative counter in the text format",
        Text,
        "# TYPE r counter\nr{code=\"500\"} -50\n",
        2,
        "cannot be negative",
    ),
    (
        "a NaN counter in the text format",
        Text,
        "# TYPE r counter\nr NaN\n",
        2,
        "not a finite number",
    ),
    // Histograms.
    (
        "buckets that are not cumulative",
        Om,
        "# TYPE h histogram\nh_bucket{le=\"1\"} 5\nh_bucket{le=\"2\"} 3\nh_bucket{le=\"+Inf\"} 5\n# EOF\n",
        3,
        "cumulative",
    ),
    (
        "buckets out of le order",
        Om,
        "# TYPE h histogram\nh_bucket{le=\"2\"} 1\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 1\n# EOF\n",
        3,
        "increasing le order",
    ),
    (
        "a bucket repeated",
        Om,
        "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"1\"} 1 5\nh_bucket{le=\"+Inf\"} 1\n# EOF\n",
        3,
        "appears again",
    ),
    (
        "no +Inf bucket",
        Om,
        "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"2\"} 2\n# EOF\n",
        3,
        "no le=\"+Inf\" bucket",
    ),
    (
        "a sum and count without buckets",
        Om,
        "# TYPE h histogram\nh_count 1\nh_sum 1\n# EOF\n",
        3,
        "no le=\"+Inf\" bucket",
    ),
    (
        "a count that disagrees with +Inf",
        Om,
        "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 5\nh_count 4\nh_sum 1\n# EOF\n",
        4,
        "must agree",
    ),
    (
        "a bucket without le",
        Om,
        "# TYPE h histogram\nh_bucket 1\n# EOF\n",
        2,
        "no le label",
    ),
    (
        "an le that is not a number",
        Om,
        "# TYPE h histogram\nh_bucket{le=\"fast\"} 1\n# EOF\n",
        2,
        "not a number",
    ),
    (
        "+Inf spelled otherwise",
        Om,
        "# TYPE h histogram\nh_bucket{le=\"+INF\"} 1\n# EOF\n",
        2,
        "writes it +Inf",
    ),
    (
        "a negative bucket count",
        Om,
        "# TYPE h histogram\nh_bucket{le=\"+Inf\"} -1\n# EOF\n",
        2,
        "cannot be negative",
    ),
    (
        "a negative count",
        Om,
        "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 0\nh_count -1\nh_sum 0\n# EOF\n",
        3,
        "cannot be negative",
    ),
    (
        "a sum without a count",
        Om,
        "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\n# EOF\n",
        3,
        "without the other",
    ),
    (
        "a sum under a bucket below 0",
        Om,
        "# TYPE h histogram\nh_bucket{le=\"-1\"} 1\nh_bucket{le=\"+Inf\"} 1\nh_count 1\nh_sum -2\n# EOF\n",
        5,
        "cannot have a _sum",
    ),
    (
        "a negative sum with no bucket below 0",
        Om,
        "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 1\nh_count 1\nh_sum -2\n# EOF\n",
        4,
        "no bucket is below 0",
    ),
    (
        "an le label on a count",
        Om,
        "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 1\nh_count{le=\"+Inf\"} 1\n# EOF\n",
        3,
        "only buckets have",
    ),
    (
        "a gauge histogram's gsum without gcount",
        Om,
        "# TYPE g gaugehistogram\ng_bucket{le=\"+Inf\"} 1\ng_gsum 1\n# EOF\n",
        3,
        "without the other",
    ),
    (
        "buckets not cumulative in the text format",
        Text,
        "# TYPE h histogram\nh_bucket{le=\"1\"} 5\nh_bucket{le=\"+Inf\"} 4\nh_count 4\n",
        3,
        "cumulative",
    ),
    (
        "no +Inf bucket in the text format",
        Text,
        "# TYPE h histogram\nh_bucket{le=\"1\"} 5\nh_sum 1\nh_count 5\n",
        4,
        "no le=\"+Inf\" bucket",
    ),
    (
        "a count that disagrees in the text format",
        Text,
        "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 5\nh_count 6\n",
        3,
        "must agree",
    ),
    // Summaries, infos, state sets.
    (
        "a quantile sample without quantile",
        Om,
        "# TYPE s summary\ns 1\n# EOF\n",
        2,
        "no quantile label",
    ),
    (
        "a quantile above 1",
        Om,
        "# TYPE s summary\ns{quantile=\"1.5\"} 1\n# EOF\n",
        2,
        "not a number in [0, 1]",
    ),
    (
        "a negative summary sum",
        Om,
        "# TYPE s summary\ns_sum -1\ns_count 1\n# EOF\n",
        2,
        "cannot be negative",
    ),
    (
        "a negative summary count",
        Text,
        "# TYPE s summary\ns_count -1\n",
        2,
        "cannot be negative",
    ),
    (
        "an info that is not 1",
        Om,
        "# TYPE i info\ni_info{v=\"1\"} 2\n# EOF\n",
        2,
        "an info is 1",
    ),
    (
        "a state that is not 0 or 1",
        Om,
        "# TYPE m stateset\nm{m=\"on\"} 2\n# EOF\n",
        2,
        "0 or 1",
    ),
    (
        "a state without its label",
        Om,
        "# TYPE m stateset\nm{other=\"on\"} 1\n# EOF\n",
        2,
        "no label m",
    ),
    (
        "a unit on an info",
        Om,
        "# TYPE x_u info\n# UNIT x_u u\n# EOF\n",
        2,
        "cannot have a # UNIT",
    ),
    // Names, labels, escapes.
    (
        "a metric name starting with a digit",
        Om,
        "0a 1\n# EOF\n",
        1,
        "expected a metric name",
    ),
    (
        "a metric name with a dash",
        Text,
        "a-b 1\n",
        1,
        "expected a space",
    ),
    (
        "a label name starting with a digit",
        Om,
        "a{0b=\"1\"} 1\n# EOF\n",
        1,
        "expected a label name",
    ),
    (
        "a label name with a dot",
        Text,
        "a{b.c=\"1\"} 1\n",
        1,
        "expected '='",
    ),
    (
        "a label twice in one sample",
        Om,
        "a{b=\"1\",b=\"2\"} 1\n# EOF\n",
        1,
        "appears twice",
    ),
    (
        "a label twice in the text format",
        Text,
        "a{b=\"1\", b=\"1\"} 1\n",
        1,
        "appears twice",
    ),
    (
        "an unquoted label value",
        Text,
        "a{b=1} 1\n",
        1,
        "quoted value",
    ),
    (
        "a label value not closed",
        Om,
        "a{b=\"1} 1\n# EOF\n",
        1,
        "not closed",
    ),
    (
        "an escaped closing quote",
        Text,
        "a{b=\"1\\\"} 1\n",
        1,
        "not closed",
    ),
    (
        "a trailing comma in OpenMetrics labels",
        Om,
        "a{b=\"1\",} 1\n# EOF\n",
        1,
        "comma before '}'",
    ),
    (
        "a space in OpenMetrics labels",
        Om,
        "a{b = \"1\"} 1\n# EOF\n",
        1,
        "expected '='",
    ),
    (
        "a type line with an invalid name",
        Text,
        "# TYPE 0a counter\n",
        1,
        "invalid metric name",
    ),
    (
        "a help ending in a backslash",
        Om,
        "# HELP a trailing \\\n# EOF\n",
        1,
        "backslash at the end",
    ),
    // Numbers and timestamps.
    (
        "digit separators",
        Om,
        "a 1_000\n# EOF\n",
        1,
        "not a number",
    ),
    ("a hex float", Text, "a 0x10\n", 1, "not a number"),
    (
        "an exponent without digits",
        Om,
        "a 1e\n# EOF\n",
        1,
        "not a number",
    ),
    ("a lone dot", Text, "a .\n", 1, "not a number"),
    ("two signs", Om, "a +-1\n# EOF\n", 1, "not a number"),
    ("two decimal points", Text, "a 1.2.3\n", 1, "not a number"),
    ("a decimal comma", Text, "a 1,5\n", 1, "not a number"),
    ("a NaN timestamp", Om, "a 1 NaN\n# EOF\n", 1, "timestamp"),
    (
        "an infinite timestamp",
        Om,
        "a 1 +Inf\n# EOF\n",
        1,
        "timestamp",
    ),
    ("a word as timestamp", Text, "a 1 soon\n", 1, "timestamp"),
    (
        "fractional milliseconds in the text format",
        Text,
        "a 1 1700000000.5\n",
        1,
        "integer number of milliseconds",
    ),
    (
        "text after the timestamp",
        Text,
        "a 1 2 3\n",
        1,
        "unexpected text",
    ),
    ("a sample without value", Text, "a\n", 1, "has no value"),
    // Whitespace and lines.
    (
        "two spaces before the value",
        Om,
        "a  1\n# EOF\n",
        1,
        "expected a space",
    ),
    (
        "a tab before the value",
        Om,
        "a\t1\n# EOF\n",
        1,
        "expected a space",
    ),
    (
        "a space at the end of a sample",
        Om,
        "a 1 \n# EOF\n",
        1,
        "unexpected text",
    ),
    ("a blank line", Om, "a 1\n\na 2 1\n# EOF\n", 2, "blank line"),
    ("a free comment", Om, "# hello\n# EOF\n", 1, "no comments"),
    (
        "a carriage return",
        Om,
        "a 1\r\n# EOF\n",
        1,
        "carriage return",
    ),
    ("no # EOF", Om, "a 1\n", 1, "no # EOF"),
    (
        "text after # EOF",
        Om,
        "a 1\n# EOF\nb 2\n",
        3,
        "after # EOF",
    ),
    (
        "a blank line after # EOF",
        Om,
        "# EOF\n\n",
        2,
        "after # EOF",
    ),
    (
        "a last line cut short",
        Text,
        "a 1\nb{c=\"",
        2,
        "no line feed",
    ),
    ("a value cut short", Text, "a 1\nb 12", 2, "no line feed"),
    // Descriptors.
    (
        "a second type",
        Om,
        "# TYPE a gauge\n# TYPE a gauge\n# EOF\n",
        2,
        "a second # TYPE",
    ),
    (
        "a second help",
        Text,
        "# HELP a x\n# HELP a y\n",
        2,
        "a second # HELP",
    ),
    (
        "a second unit",
        Om,
        "# UNIT a_s s\n# UNIT a_s s\n# EOF\n",
        2,
        "a second # UNIT",
    ),
    (
        "a type after samples",
        Text,
        "a 1\n# TYPE a gauge\n",
        2,
        "after samples",
    ),
    (
        "a help after samples",
        Om,
        "# TYPE a gauge\na 1\n# HELP a late\n# EOF\n",
        3,
        "after samples",
    ),
    (
        "an unknown type",
        Om,
        "# TYPE a untyped\n# EOF\n",
        1,
        "unknown type",
    ),
    (
        "an OpenMetrics type in the text format",
        Text,
        "# TYPE a gaugehistogram\n",
        1,
        "unknown type",
    ),
    (
        "a type without a type",
        Text,
        "# TYPE a\n",
        1,
        "without a type",
    ),
    (
        "a help without its space",
        Om,
        "# HELP a\n# EOF\n",
        1,
        "without a space",
    ),
    (
        "a unit the name does not end in",
        Om,
        "# TYPE a_seconds gauge\n# UNIT a_seconds bytes\n# EOF\n",
        2,
        "does not end in _bytes",
    ),
    (
        "clashing family names",
        Om,
        "# TYPE a counter\n# TYPE a_total gauge\n# EOF\n",
        2,
        "clash",
    ),
    // Grouping.
    (
        "a family split by another",
        Om,
        "# TYPE a gauge\na 1\n# TYPE b gauge\nb 1\na{x=\"1\"} 2\n# EOF\n",
        5,
        "family a is split",
    ),
    (
        "descriptors split by another family",
        Om,
        "# TYPE a gauge\n# TYPE b gauge\n# HELP a x\n# EOF\n",
        3,
        "family a is split",
    ),
    (
        "a histogram split by another family",
        Text,
        "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 1\nother 1\nh_count 1\n",
        4,
        "family h is split",
    ),
    (
        "untyped samples split by another",
        Text,
        "a 1\nb 1\na{x=\"1\"} 2\n",
        3,
        "family a is split",
    ),
    (
        "a label set split within its family",
        Om,
        "# TYPE h histogram\nh_bucket{x=\"1\",le=\"+Inf\"} 1\nh_bucket{x=\"2\",le=\"+Inf\"} 1\nh_count{x=\"1\"} 1\n# EOF\n",
        4,
        "are split by those of other labels",
    ),
    (
        "a series repeated without timestamps",
        Text,
        "a 1\na 2\n",
        2,
        "appears again",
    ),
    (
        "a series repeated at an earlier time",
        Om,
        "a 1 10\na 2 9\n# EOF\n",
        2,
        "appears again",
    ),
    (
        "a series repeated without a timestamp",
        Om,
        "a 1 10\na 2\n# EOF\n",
        2,
        "appears again",
    ),
    // Exemplars.
    (
        "an exemplar on a gauge",
        Om,
        "# TYPE g gauge\ng 1 # {id=\"x\"} 1\n# EOF\n",
        2,
        "has an exemplar",
    ),
    (
        "an exemplar without a value",
        Om,
        "# TYPE a counter\na_total 1 # {id=\"x\"}\n# EOF\n",
        2,
        "no value",
    ),
    (
        "an exemplar without labels",
        Om,
        "# TYPE a counter\na_total 1 # 1\n# EOF\n",
        2,
        "expected {labels}",
    ),
    (
        "exemplar labels over 128 characters",
        Om,
        "# TYPE a counter\na_total 1 # {id=\"0123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789\"} 1\n# EOF\n",
        2,
        "more than 128",
    ),
];

fn openmetrics(format: Format) -> bool {
    matches!(format, Om)
}

#[test]
fn every_valid_exposition_of_the_corpus_parses_into_its_samples() {
    let mut failed = Vec::new();
    for (rule, format, text, samples) in VALID {
        match check_exposition(text, openmetrics(*format)) {
            Ok(n) if n == *samples => {}
            other => failed.push(format!(
                "{rule} ({format:?}): {other:?}, want {samples} samples"
            )),
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

#[test]
fn every_invalid_exposition_of_the_corpus_is_rejected_naming_its_line() {
    let mut failed = Vec::new();
    for (rule, format, text, line, reason) in INVALID {
        match check_exposition(text, openmetrics(*format)) {
            Err(e) if e.line == *line && e.reason.contains(reason) => {
                let shown = e.to_string();
                if !shown.starts_with(&format!("line {line}: ")) {
                    failed.push(format!("{rule}: shown as {shown:?}"));
                }
            }
            other => failed.push(format!(
                "{rule} ({format:?}): {other:?}, want line {line} with {reason:?}"
            )),
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}
