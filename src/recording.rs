//! The recording format: readings and change events as CSV rows, written by
//! `rearguard record` and read by `rearguard replay` and the scenario corpus.
//!
//! One row per reading or change, in the order the engine was given them, with this
//! header:
//!
//! ```text
//! time,kind,target,signal,state,value,requests,detail,seen
//! 2026-11-22T10:00:00Z,change,shop,,,v2,,,
//! 2026-11-22T10:00:01Z,reading,shop,errors,value,80,1000,,
//! 2026-11-22T10:00:01Z,reading,shop,p95,value,0.25,,,
//! 2026-11-22T10:00:01Z,reading,shop,health,value,0,,HTTP 503 Service Unavailable,
//! 2026-11-22T10:00:01Z,reading,shop,oom,value,pod-7f9c,,,
//! 2026-11-22T10:00:02Z,reading,shop,errors,no_data,,,,
//! 2026-11-22T10:00:02Z,reading,shop,p95,value,0.31,,,2026-11-22T10:00:05.120Z
//! 2026-11-22T10:00:03Z,reading,shop,errors,insufficient,3,20,,
//! 2026-11-22T10:00:04Z,reading,shop,errors,error,connection refused,,,
//! ```
//!
//! - `time`: RFC 3339 (`2026-11-22T10:00:01.250Z`) or Unix seconds (`1795341601.25`),
//!   at most 9999-12-31T23:59:59.999Z.
//! - `kind`: `reading` or `change`.
//! - `target`: the target's name; for a reading it must be its signal's target.
//! - `signal`: the signal's name (empty for a change).
//! - `state`: `value`, `no_data`, `insufficient` or `error` (empty for a change).
//! - `value`: for a `value` reading, by the signal's kind: a rate's error count (80), a
//!   number in its unit (seconds for latency), a check's outcome (1 passed, 0 failed), an
//!   event's key; for `insufficient`, the samples there were; for `error`, the reason;
//!   for a change, the new revision.
//! - `requests`: a rate's request count; for `insufficient`, the samples needed.
//! - `detail`: what a check saw when it failed (empty: no detail); for a change, the
//!   earliest time it can have happened when that is before the row's time (a polling
//!   observer's previous observation, which still saw the old revision).
//! - `seen`: when the engine was given the row, when that is after `time` (empty: at
//!   `time`), in the same forms as `time`. A slow sample (a Prometheus query that took
//!   3s) keeps its own time, at which the engine judges it (`for`, gaps), and is given
//!   to the engine when it arrives, after the inputs and ticks of later times that came
//!   first; `seen` says when, so that a replay gives it in the same place.
//!
//! Rows are in `seen` order (their time where `seen` is empty), which is the order the
//! engine was given them; a row out of that order, or a `seen` before its row's time, is
//! refused with its line. A signal's readings are in time order (a signal is sampled one
//! sample after another). Recordings made before `seen`, with the header
//! `time,kind,target,signal,state,value,requests,detail`, are still read: every row was
//! given at its time.
//!
//! A change's row time is when rearguard saw it, the time the daemon's engine is given
//! it (when it arrives later, at `seen`, the engine takes it at the latest time it has
//! had, as the daemon's loop does); blame is counted from its `detail` (or the row's
//! time). Recordings made before
//! `detail` held it wrote a polled change at its earliest time and read back so.
//!
//! A rate is written as its two counts, exactly as the source gave them to the engine
//! (fractional when Prometheus's `increase()` extrapolates, errors above requests when
//! its two extrapolations disagree), because the engine judges the counts: their ratio
//! against the threshold, the request count against `min_requests`, both in a
//! `confidence` bound and in the evidence (`5% (10/202 requests)`). Numbers are written
//! as the shortest text that reads back as the same value, so every reading reads back
//! identical to what was written and a replay decides what the daemon decided.
//!
//! Readings are the checks of a rule: one signal has at most one reading at one time,
//! except an event signal, whose events seen together share their time. A second
//! reading of such a signal at the same time is refused, as a row out of order is.
//!
//! Recordings made before the counts, with the header
//! `time,kind,target,signal,state,value,requests` and a rate's `value` an error ratio,
//! are still read: the errors are the ratio times the requests (not always the count
//! the engine judged), and a failed check's detail is `recorded as failed`.
//!
//! This module converts between rows and engine inputs; it does no other I/O than the
//! reader and writer it is given.

use std::collections::HashMap;
use std::io;

use crate::config::units::format_duration;
use crate::config::{Config, Signal, SignalKind};
use crate::engine::{Input, Measure, Reading, ReadingState, Ts};

/// The header line every recording starts with.
pub const HEADER: [&str; 9] = [
    "time", "kind", "target", "signal", "state", "value", "requests", "detail", "seen",
];

/// The header of recordings made before `seen`: every row was given to the engine at its
/// time.
pub const HEADER_COUNTS: [&str; 8] = [
    "time", "kind", "target", "signal", "state", "value", "requests", "detail",
];

/// The header of recordings made before rates were written as counts: a rate's `value`
/// is its error ratio, and there is no `detail`.
pub const HEADER_RATIO: [&str; 7] = [
    "time", "kind", "target", "signal", "state", "value", "requests",
];

/// Which of the headers a recording has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    /// [`HEADER_RATIO`].
    Ratio,
    /// [`HEADER_COUNTS`].
    Counts,
    /// [`HEADER`].
    Seen,
}

/// What a failed check read from a [`HEADER_RATIO`] recording saw: it was not kept.
const RATIO_CHECK_DETAIL: &str = "recorded as failed";

/// One row: an input, the time it carries, and when the engine was given it.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// A reading's time (when it was measured, which the engine judges it at); a
    /// change's time (when it was seen; when it can have happened is its `at`).
    pub time: Ts,
    /// When the engine was given it: `time`, or later for an input that arrived after
    /// others (a slow sample). Rows are in this order.
    pub seen: Ts,
    pub input: Input,
}

impl From<(Ts, Input)> for Row {
    /// An input given to the engine at its time.
    fn from((time, input): (Ts, Input)) -> Row {
        Row {
            time,
            seen: time,
            input,
        }
    }
}

/// A row that cannot be read, with its line number.
#[derive(Debug, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct RowError {
    pub line: u64,
    pub message: String,
}

/// Writes rows for one configuration.
pub struct Writer<W: io::Write> {
    csv: csv::Writer<W>,
}

impl<W: io::Write> Writer<W> {
    /// Starts a recording: writes the header.
    pub fn new(out: W) -> io::Result<Writer<W>> {
        let mut csv = csv::WriterBuilder::new()
            .has_headers(false)
            .from_writer(out);
        csv.write_record(HEADER).map_err(io::Error::other)?;
        Ok(Writer { csv })
    }

    /// Writes a reading of `signal` (an index into `cfg.signals`) given to the engine
    /// at its time `at`.
    pub fn reading(&mut self, cfg: &Config, at: Ts, reading: &Reading) -> io::Result<()> {
        self.reading_seen(cfg, at, at, reading)
    }

    fn reading_seen(&mut self, cfg: &Config, at: Ts, seen: Ts, r: &Reading) -> io::Result<()> {
        let signal = &cfg.signals[r.signal];
        let target = &cfg.targets[signal.target].name;
        let (state, value, requests, detail) = fields(&r.state);
        let seen = seen_field(at, seen);
        self.csv
            .write_record([
                &at.rfc3339(),
                "reading",
                target,
                &signal.name,
                state,
                &value,
                &requests,
                &detail,
                &seen,
            ])
            .map_err(io::Error::other)
    }

    /// Writes a change of `target` (an index into `cfg.targets`) to `revision`, seen at
    /// `at` and happened then.
    pub fn change(
        &mut self,
        cfg: &Config,
        at: Ts,
        target: usize,
        revision: &str,
    ) -> io::Result<()> {
        self.change_since(cfg, at, at, target, revision)
    }

    /// Writes a change of `target` to `revision` that the engine is given at `at` and
    /// that happened at `since` at the earliest (a polling observer's previous
    /// observation); `since` goes in `detail` when it is earlier than `at`.
    pub fn change_since(
        &mut self,
        cfg: &Config,
        at: Ts,
        since: Ts,
        target: usize,
        revision: &str,
    ) -> io::Result<()> {
        let change = Change {
            target,
            revision,
            since,
        };
        self.change_seen(cfg, at, at, change)
    }

    fn change_seen(&mut self, cfg: &Config, at: Ts, seen: Ts, c: Change) -> io::Result<()> {
        let name = &cfg.targets[c.target].name;
        let since = if c.since < at {
            c.since.rfc3339()
        } else {
            String::new()
        };
        let seen = seen_field(at, seen);
        self.csv
            .write_record([
                &at.rfc3339(),
                "change",
                name,
                "",
                "",
                c.revision,
                "",
                &since,
                &seen,
            ])
            .map_err(io::Error::other)
    }

    /// Writes a reading or a change at `at`, the time the engine is given it (a change's
    /// own `at`, when earlier, is written as its `detail`). Other inputs are not
    /// recorded, and are refused.
    pub fn input(&mut self, cfg: &Config, at: Ts, input: &Input) -> io::Result<()> {
        self.row_parts(cfg, at, at, input)
    }

    /// Writes a row: its input at its time, and when the engine was given it in `seen`
    /// when that is later. Rows must be written in `seen` order.
    pub fn row(&mut self, cfg: &Config, row: &Row) -> io::Result<()> {
        self.row_parts(cfg, row.time, row.seen, &row.input)
    }

    fn row_parts(&mut self, cfg: &Config, at: Ts, seen: Ts, input: &Input) -> io::Result<()> {
        match input {
            Input::Reading(reading) => self.reading_seen(cfg, at, seen, reading),
            Input::Change {
                target,
                revision,
                at: since,
            } => {
                let change = Change {
                    target: *target,
                    revision,
                    since: *since,
                };
                self.change_seen(cfg, at, seen, change)
            }
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "only readings and changes are recorded",
            )),
        }
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.csv.flush()
    }
}

/// A change to write: its target, new revision and earliest time.
struct Change<'a> {
    target: usize,
    revision: &'a str,
    since: Ts,
}

/// The `seen` field: empty when the row was given to the engine at its time.
fn seen_field(at: Ts, seen: Ts) -> String {
    if seen > at {
        seen.rfc3339()
    } else {
        String::new()
    }
}

/// The `state`, `value`, `requests` and `detail` fields of a reading.
fn fields(state: &ReadingState) -> (&'static str, String, String, String) {
    let none = String::new;
    match state {
        ReadingState::Value(Measure::Number(v)) => ("value", number(*v), none(), none()),
        ReadingState::Value(Measure::Rate { errors, requests }) => {
            ("value", number(*errors), number(*requests), none())
        }
        ReadingState::Value(Measure::Check { ok, detail }) => (
            "value",
            (if *ok { "1" } else { "0" }).to_owned(),
            none(),
            detail.clone().unwrap_or_default(),
        ),
        ReadingState::Value(Measure::Event { key }) => ("value", key.clone(), none(), none()),
        ReadingState::NoData => ("no_data", none(), none(), none()),
        ReadingState::Insufficient { have, need } => {
            ("insufficient", have.to_string(), need.to_string(), none())
        }
        ReadingState::SourceError(e) => ("error", e.clone(), none(), none()),
    }
}

fn number(v: f64) -> String {
    // The shortest text that reads back as the same f64.
    format!("{v}")
}

/// Reads a recording against a configuration: each row becomes an engine input with its
/// time and when the engine was given it. Rows must be in `seen` order, a row's `seen`
/// not before its time, a signal's readings in time order, at most one at one time (any
/// number of an event signal's); an unknown signal or target is an error. Reading stops
/// at the first error.
pub fn read<'a, R: io::Read + 'a>(
    cfg: &'a Config,
    input: R,
) -> impl Iterator<Item = Result<Row, RowError>> + 'a {
    let mut csv = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(false)
        .from_reader(input);
    let (version, header) = match version_of(&mut csv) {
        Ok(version) => (version, None),
        Err(e) => (Version::Seen, Some(e)),
    };
    Reader {
        cfg,
        csv,
        version,
        record: csv::StringRecord::new(),
        targets: cfg
            .targets
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.as_str(), i))
            .collect(),
        signals: cfg
            .signals
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name.as_str(), i))
            .collect(),
        last_seen: Ts(0),
        last: Ts(0),
        last_time_text: String::new(),
        last_reading: vec![None; cfg.signals.len()],
        header,
        failed: false,
    }
}

/// The version a recording's header names.
fn version_of<R: io::Read>(csv: &mut csv::Reader<R>) -> Result<Version, RowError> {
    let error = |message| RowError { line: 1, message };
    match csv.headers() {
        Ok(h) if h.iter().eq(HEADER) => Ok(Version::Seen),
        Ok(h) if h.iter().eq(HEADER_COUNTS) => Ok(Version::Counts),
        Ok(h) if h.iter().eq(HEADER_RATIO) => Ok(Version::Ratio),
        Ok(h) => Err(error(format!(
            "expected the header {:?}, got {:?}",
            HEADER.join(","),
            h.iter().collect::<Vec<_>>().join(",")
        ))),
        Err(e) => Err(error(format!("cannot read the header: {e}"))),
    }
}

/// The state of [`read`]: name indexes, the previous row's `seen`, the last time parsed
/// (rows of one instant repeat the same time text), and each signal's last reading's
/// time and line.
struct Reader<'a, R: io::Read> {
    cfg: &'a Config,
    csv: csv::Reader<R>,
    version: Version,
    record: csv::StringRecord,
    targets: HashMap<&'a str, usize>,
    signals: HashMap<&'a str, usize>,
    last_seen: Ts,
    last: Ts,
    last_time_text: String,
    last_reading: Vec<Option<(Ts, u64)>>,
    header: Option<RowError>,
    failed: bool,
}

impl<R: io::Read> Iterator for Reader<'_, R> {
    type Item = Result<Row, RowError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(e) = self.header.take() {
            self.failed = true;
            return Some(Err(e));
        }
        if self.failed {
            return None;
        }
        let row = match self.csv.read_record(&mut self.record) {
            Ok(false) => return None,
            Ok(true) => self.row(),
            Err(e) => Err(e.to_string()),
        };
        Some(row.map_err(|message| {
            self.failed = true;
            RowError {
                line: self.line(),
                message,
            }
        }))
    }
}

impl<R: io::Read> Reader<'_, R> {
    fn line(&self) -> u64 {
        self.record.position().map_or(0, |p| p.line())
    }

    fn row(&mut self) -> Result<Row, String> {
        let time = self.time()?;
        let seen = self.seen(time)?;
        let input = self.input(time)?;
        if let Input::Reading(r) = &input {
            self.readings_in_order(r.signal, time)?;
        }
        Ok(Row { time, seen, input })
    }

    /// The row's time.
    fn time(&mut self) -> Result<Ts, String> {
        let time_text = self.record.get(0).unwrap_or("");
        if time_text != self.last_time_text {
            self.last = parse_time(time_text)?;
            self.last_time_text.clear();
            self.last_time_text.push_str(time_text);
        }
        Ok(self.last)
    }

    /// When the row was given to the engine (its time when `seen` is empty): not before
    /// its time, nor before the previous row's.
    fn seen(&mut self, time: Ts) -> Result<Ts, String> {
        let text = match self.version {
            Version::Seen => self.record.get(8).unwrap_or(""),
            Version::Counts | Version::Ratio => "",
        };
        let seen = if text.is_empty() {
            time
        } else {
            let seen = parse_time(text).map_err(|e| format!("seen: {e}"))?;
            if seen < time {
                return Err(format!(
                    "seen {seen} is before the row's time {time}; an input is given to the engine when it is there, not before"
                ));
            }
            seen
        };
        if seen < self.last_seen {
            let what = if text.is_empty() { "time" } else { "seen" };
            return Err(format!(
                "{what} {seen} is before the previous row's {}; rows must be in the order the engine was given them (their time, or `seen` when later)",
                self.last_seen
            ));
        }
        self.last_seen = seen;
        Ok(seen)
    }

    /// Refuses a reading of a signal before its previous one (a signal is sampled in
    /// order), and a second reading of a signal at one time: the engine would take it
    /// for another check. An event signal's events seen together share their time.
    fn readings_in_order(&mut self, signal: usize, at: Ts) -> Result<(), String> {
        let sig = &self.cfg.signals[signal];
        let line = self.line();
        let previous = self.last_reading[signal].replace((at, line));
        match previous {
            Some((before, first)) if before > at => Err(format!(
                "a reading of signal {:?} at {at} is before its previous reading at {before} (line {first}); a signal's readings are in time order",
                sig.name
            )),
            Some((before, first)) if before == at && sig.kind() != SignalKind::Event => {
                Err(format!(
                    "a second reading of signal {:?} at {at} (the first is on line {first}); a signal has one reading at a time, only an event signal's events may share one",
                    sig.name
                ))
            }
            _ => Ok(()),
        }
    }

    fn input(&self, at: Ts) -> Result<Input, String> {
        let field = |i: usize| self.record.get(i).unwrap_or("");
        let target_name = field(2);
        let target = *self
            .targets
            .get(target_name)
            .ok_or_else(|| format!("no target is named {target_name:?} in the configuration"))?;
        match field(1) {
            "change" => {
                let revision = field(5);
                if revision.is_empty() {
                    return Err("a change needs the new revision in `value`".to_owned());
                }
                Ok(Input::Change {
                    target,
                    revision: revision.to_owned(),
                    at: change_since(field(7), at)?,
                })
            }
            "reading" => {
                let name = field(3);
                let signal = *self
                    .signals
                    .get(name)
                    .ok_or_else(|| format!("no signal is named {name:?} in the configuration"))?;
                let sig = &self.cfg.signals[signal];
                if sig.target != target {
                    return Err(format!(
                        "signal {name:?} belongs to target {:?}, not {target_name:?}",
                        self.cfg.targets[sig.target].name
                    ));
                }
                let state = self.state(sig, [field(4), field(5), field(6), field(7)])?;
                Ok(Input::Reading(Reading { signal, state }))
            }
            other => Err(format!(
                "expected the kind reading or change, got {other:?}"
            )),
        }
    }

    /// A reading's state from its `state`, `value`, `requests` and `detail` fields.
    fn state(
        &self,
        sig: &Signal,
        [state, value, requests, detail]: [&str; 4],
    ) -> Result<ReadingState, String> {
        Ok(match state {
            "value" => ReadingState::Value(self.measure(sig.kind(), value, requests, detail)?),
            "no_data" => ReadingState::NoData,
            "insufficient" => ReadingState::Insufficient {
                have: count(value, "value (samples there were)")?,
                need: count(requests, "requests (samples needed)")?,
            },
            "error" => ReadingState::SourceError(value.to_owned()),
            other => {
                return Err(format!(
                    "expected the state value, no_data, insufficient or error, got {other:?}"
                ));
            }
        })
    }

    fn measure(
        &self,
        kind: SignalKind,
        value: &str,
        requests: &str,
        detail: &str,
    ) -> Result<Measure, String> {
        Ok(match kind {
            SignalKind::Number => Measure::Number(num(value, "value")?),
            SignalKind::Rate => match self.version {
                // Whatever the source counted, as the engine judged it.
                Version::Counts | Version::Seen => Measure::Rate {
                    errors: num(value, "value (the error count)")?,
                    requests: num(requests, "requests")?,
                },
                Version::Ratio => ratio_rate(value, requests)?,
            },
            SignalKind::Check => {
                let ok = match value.trim() {
                    "1" => true,
                    "0" => false,
                    other => {
                        return Err(format!(
                            "a check's value is 1 (passed) or 0 (failed), got {other:?}"
                        ));
                    }
                };
                let detail = match self.version {
                    Version::Counts | Version::Seen => {
                        (!detail.is_empty()).then(|| detail.to_owned())
                    }
                    Version::Ratio => (!ok).then(|| RATIO_CHECK_DETAIL.to_owned()),
                };
                Measure::Check { ok, detail }
            }
            SignalKind::Event => {
                if value.is_empty() {
                    return Err("an event needs its key in `value`".to_owned());
                }
                Measure::Event {
                    key: value.to_owned(),
                }
            }
        })
    }
}

/// A rate of a [`HEADER_RATIO`] recording: an error ratio and a request count.
/// The earliest time a change can have happened: its `detail`, or the row's time `at`
/// when empty. A change cannot have happened after it was seen.
fn change_since(detail: &str, at: Ts) -> Result<Ts, String> {
    if detail.is_empty() {
        return Ok(at);
    }
    let since = parse_time(detail).map_err(|e| format!("a change's detail: {e}"))?;
    if since > at {
        return Err(format!(
            "a change's detail {since} (when it can have happened) is after its time {at} (when it was seen)"
        ));
    }
    Ok(since)
}

fn ratio_rate(value: &str, requests: &str) -> Result<Measure, String> {
    let ratio = num(value, "value (the error ratio)")?;
    let n = num(requests, "requests")?;
    if !(0.0..=1.0).contains(&ratio) || n < 0.0 {
        return Err(format!(
            "a rate needs 0 <= value <= 1 and requests >= 0, got {value} and {requests}"
        ));
    }
    // Not rounded: Prometheus's increase() counts are fractional.
    Ok(Measure::Rate {
        errors: ratio * n,
        requests: n,
    })
}

fn num(text: &str, what: &str) -> Result<f64, String> {
    text.trim()
        .parse::<f64>()
        .map_err(|_| format!("expected a number for {what}, got {text:?}"))
}

/// A whole count; a number with a fraction is cut to its whole part.
fn count(text: &str, what: &str) -> Result<u64, String> {
    text.trim()
        .parse::<u64>()
        .or_else(|_| num(text, what).map(|v| v as u64))
}

/// The latest time a recording holds, 9999-12-31T23:59:59.999Z: the last instant RFC 3339
/// (and so the writer, and every message that shows a time) can write.
pub const LATEST: Ts = Ts(253_402_300_799_999);

/// Parses RFC 3339 or Unix seconds (with a fraction) into engine time, at most
/// [`LATEST`].
pub fn parse_time(text: &str) -> Result<Ts, String> {
    let t = text.trim();
    if let Ok(secs) = t.parse::<f64>()
        && secs.is_finite()
        && secs >= 0.0
    {
        let ms = (secs * 1000.0).round();
        if ms > LATEST.0 as f64 {
            return Err(format!(
                "time {text:?} is after {LATEST}, the latest a recording holds"
            ));
        }
        return Ok(Ts(ms as u64));
    }
    humantime::parse_rfc3339_weak(t)
        .ok()
        .and_then(|st| st.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| Ts(d.as_millis() as u64))
        .ok_or_else(|| {
            format!("expected a time like 2026-11-22T10:00:00Z or Unix seconds, got {text:?}")
        })
}

/// How long a recording spans, for summaries.
pub fn describe_span(from: Ts, to: Ts) -> String {
    format!("{} to {} ({})", from, to, format_duration(to.since(from)))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Duration;

    /// A Prometheus error-rate signal `errors` of the target `shop`, as TOML.
    pub(crate) const ERRORS_SIGNAL: &str = r#"
[[signal]]
name = "errors"
target = "shop"
type = "prometheus"
url = "http://127.0.0.1:9090"
error_rate = { requests = "http_requests_total", errors = 'code=~"5.."' }
"#;

    fn cfg() -> Config {
        let text = format!(
            r#"
[[target]]
name = "shop"
{ERRORS_SIGNAL}
[[signal]]
name = "health"
target = "shop"
type = "http_probe"
url = "http://127.0.0.1:8080/health"
[[signal]]
name = "oom"
target = "shop"
type = "cgroup_oom"
cgroup = "/sys/fs/cgroup/shop"
[[signal]]
name = "p95"
target = "shop"
type = "prometheus"
url = "http://127.0.0.1:9090"
latency = {{ histogram = "h_bucket" }}
"#
        );
        crate::config::load_str(
            &text,
            crate::config::Format::Toml,
            std::iter::empty(),
            std::path::Path::new("."),
        )
        .unwrap()
    }

    /// Writes `rows` as a recording and reads it back.
    fn round_trip(cfg: &Config, rows: &[(Ts, Input)]) -> Vec<(Ts, Input)> {
        let rows: Vec<Row> = rows.iter().cloned().map(Row::from).collect();
        round_trip_rows(cfg, &rows)
            .into_iter()
            .map(|r| {
                assert_eq!(r.seen, r.time, "{r:?}");
                (r.time, r.input)
            })
            .collect()
    }

    fn round_trip_rows(cfg: &Config, rows: &[Row]) -> Vec<Row> {
        let out = written(cfg, rows);
        read(cfg, out.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap_or_else(|e| panic!("{e}\n{out}"))
    }

    fn written(cfg: &Config, rows: &[Row]) -> String {
        let mut out = Vec::new();
        let mut w = Writer::new(&mut out).unwrap();
        for row in rows {
            w.row(cfg, row).unwrap();
        }
        w.flush().unwrap();
        drop(w);
        String::from_utf8(out).unwrap()
    }

    fn reading(signal: usize, state: ReadingState) -> Input {
        Input::Reading(Reading { signal, state })
    }

    #[test]
    fn every_reading_state_and_kind_round_trips_through_csv() {
        let cfg = cfg();
        let t = Ts(1_795_341_601_250);
        let value = ReadingState::Value;
        let mut rows = vec![
            (
                t,
                Input::Change {
                    target: 0,
                    revision: "v2".into(),
                    at: t,
                },
            ),
            (
                t,
                reading(
                    0,
                    value(Measure::Rate {
                        errors: 10.0,
                        requests: 202.0,
                    }),
                ),
            ),
            (t, reading(3, value(Measure::Number(0.25)))),
            (
                t,
                reading(
                    1,
                    value(Measure::Check {
                        ok: false,
                        detail: Some("HTTP 503, \"down\"\nsecond line".into()),
                    }),
                ),
            ),
            (
                t,
                reading(
                    2,
                    value(Measure::Event {
                        key: "pod,\"7f\"".into(),
                    }),
                ),
            ),
        ];
        // One reading of a signal at a time: these come a second apart.
        let states = [
            ReadingState::NoData,
            ReadingState::Insufficient { have: 3, need: 20 },
            ReadingState::SourceError("connection refused, twice".into()),
        ];
        for (i, state) in states.into_iter().enumerate() {
            rows.push((t.plus(Duration::from_secs(i as u64 + 1)), reading(0, state)));
        }
        assert_eq!(round_trip(&cfg, &rows), rows);
    }

    fn arb_text() -> impl Strategy<Value = String> {
        // Anything a source may say: quotes, separators, line breaks, any character.
        prop_oneof![".*", "[a-z,\"\r\n ]{1,12}", any::<String>()]
    }

    fn arb_count() -> impl Strategy<Value = f64> {
        prop_oneof![
            (0u32..100_000).prop_map(f64::from),
            0.0..1e7f64,
            any::<f64>(),
        ]
    }

    /// A state that a signal of `kind` can have. A check's detail and an event's key are
    /// never empty: an empty `detail` reads as none, and an event needs its key.
    fn arb_state(kind: SignalKind) -> BoxedStrategy<ReadingState> {
        let measure = match kind {
            SignalKind::Number => any::<f64>().prop_map(Measure::Number).boxed(),
            SignalKind::Rate => (arb_count(), arb_count())
                .prop_map(|(errors, requests)| Measure::Rate { errors, requests })
                .boxed(),
            SignalKind::Check => (any::<bool>(), proptest::option::of(arb_text()))
                .prop_map(|(ok, detail)| Measure::Check {
                    ok,
                    detail: detail.filter(|d| !d.is_empty()),
                })
                .boxed(),
            SignalKind::Event => arb_text()
                .prop_filter("an event has a key", |k| !k.is_empty())
                .prop_map(|key| Measure::Event { key })
                .boxed(),
        };
        prop_oneof![
            measure.prop_map(ReadingState::Value),
            Just(ReadingState::NoData),
            (any::<u64>(), any::<u64>())
                .prop_map(|(have, need)| ReadingState::Insufficient { have, need }),
            arb_text().prop_map(ReadingState::SourceError),
        ]
        .boxed()
    }

    /// The kinds of [`cfg`]'s signals, in order.
    const KINDS: [SignalKind; 4] = [
        SignalKind::Rate,
        SignalKind::Check,
        SignalKind::Event,
        SignalKind::Number,
    ];

    fn arb_reading() -> impl Strategy<Value = Reading> {
        (0..KINDS.len()).prop_flat_map(|signal| {
            arb_state(KINDS[signal]).prop_map(move |state| Reading { signal, state })
        })
    }

    proptest::proptest! {
        #[test]
        fn any_reading_written_then_read_is_the_same_reading(r in arb_reading()) {
            let cfg = cfg();
            proptest::prop_assert_eq!(cfg.signals[r.signal].kind(), KINDS[r.signal]);
            let row = (Ts(1_795_341_601_250), Input::Reading(r));
            let back = round_trip(&cfg, std::slice::from_ref(&row));
            // Debug text tells every f64 apart (-0 from 0) and NaN is NaN, where == says
            // NaN differs from itself.
            proptest::prop_assert_eq!(format!("{back:?}"), format!("{:?}", [row]));
        }
    }

    const H: &str = "time,kind,target,signal,state,value,requests,detail,seen\n";

    #[test]
    fn bad_rows_are_errors_with_their_line() {
        let cfg = cfg();
        let cases = [
            ("time,kind\n".to_owned(), "expected the header"),
            (format!("{H}soon,reading,shop,errors,value,1,10,,\n"), "line 2: expected a time"),
            (format!("{H}1,reading,nope,errors,value,1,10,,\n"), "no target is named \"nope\""),
            (format!("{H}1,reading,shop,nope,value,1,10,,\n"), "no signal is named \"nope\""),
            (
                format!("{H}1,reading,shop,errors,value,0.1,,,\n"),
                "expected a number for requests",
            ),
            (format!("{H}1,reading,shop,health,value,yes,,,\n"), "a check's value is 1"),
            (format!("{H}1,reading,shop,errors,maybe,,,,\n"), "expected the state"),
            (
                format!("{H}1795341601341601.25,reading,shop,p95,no_data,,,,\n"),
                "the latest a recording holds",
            ),
            (
                format!("{H}2,reading,shop,p95,value,1,,,\n1,reading,shop,p95,value,1,,,\n"),
                "line 3: time",
            ),
            (format!("{H}1,reading,shop,p95\n"), "line 2"),
            (format!("{H}1,change,shop,,,v2,,soon,\n"), "a change's detail: expected a time"),
            (format!("{H}1,change,shop,,,v2,,2,\n"), "is after its time"),
            // A row of the old width under the new header.
            (format!("{H}1,reading,shop,p95,value,1,,\n"), "line 2"),
            (
                "time,kind,target,signal,state,value,requests\n1,reading,shop,errors,value,1.5,10\n"
                    .to_owned(),
                "a rate needs",
            ),
        ];
        for (text, want) in cases {
            let err = read(&cfg, text.as_bytes())
                .find_map(Result::err)
                .unwrap_or_else(|| panic!("no error for {text:?}"));
            assert!(err.to_string().contains(want), "{text:?}: {err}");
        }
    }

    #[test]
    fn a_polled_change_keeps_when_it_was_seen_and_when_it_can_have_happened() {
        let cfg = cfg();
        let (earliest, seen) = (Ts(1_795_341_600_000), Ts(1_795_341_604_500));
        let change = |at| Input::Change {
            target: 0,
            revision: "v2".into(),
            at,
        };
        let rows = vec![
            (seen, change(earliest)),
            (seen.plus(Duration::from_secs(1)), change(seen)),
        ];
        assert_eq!(round_trip(&cfg, &rows), rows);
        let mut out = Vec::new();
        let mut w = Writer::new(&mut out).unwrap();
        w.input(&cfg, seen, &rows[0].1).unwrap();
        w.flush().unwrap();
        drop(w);
        assert!(
            String::from_utf8_lossy(&out).ends_with(
                "2026-11-22T10:00:04.500Z,change,shop,,,v2,,2026-11-22T10:00:00.000Z,\n"
            ),
            "{}",
            String::from_utf8_lossy(&out)
        );
    }

    #[test]
    fn a_second_reading_of_a_signal_at_one_time_is_refused_with_both_lines() {
        let cfg = cfg();
        let text = format!(
            "{H}1,reading,shop,errors,value,1,100,,\n1,reading,shop,p95,value,0.2,,,\n1,reading,shop,errors,value,2,100,,\n"
        );
        let rows: Vec<_> = read(&cfg, text.as_bytes()).collect();
        assert_eq!(rows.len(), 3, "{rows:?}");
        assert!(rows[..2].iter().all(Result::is_ok), "{rows:?}");
        let err = rows[2].as_ref().unwrap_err();
        assert_eq!(err.line, 4);
        assert!(
            err.message
                .contains("a second reading of signal \"errors\"")
                && err.message.contains("the first is on line 2"),
            "{err}"
        );
    }

    #[test]
    fn an_event_signal_may_have_several_events_at_one_time() {
        let cfg = cfg();
        let text = format!(
            "{H}1,reading,shop,oom,value,pod-a,,,\n1,reading,shop,oom,value,pod-b,,,\n1.001,reading,shop,errors,value,1,100,,\n"
        );
        let rows: Vec<Row> = read(&cfg, text.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0].time, rows[1].time);
    }

    #[test]
    fn a_recording_with_ratios_still_reads_with_the_ratio_times_the_requests() {
        let cfg = cfg();
        let text = "time,kind,target,signal,state,value,requests\n\
            1,reading,shop,errors,value,0.08,25\n\
            1,reading,shop,health,value,0,\n";
        let rows: Vec<Row> = read(&cfg, text.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
        let states: Vec<&ReadingState> = rows
            .iter()
            .map(|r| match &r.input {
                Input::Reading(r) => &r.state,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            states,
            [
                &ReadingState::Value(Measure::Rate {
                    errors: 0.08 * 25.0,
                    requests: 25.0
                }),
                &ReadingState::Value(Measure::Check {
                    ok: false,
                    detail: Some(RATIO_CHECK_DETAIL.into())
                }),
            ]
        );
    }

    #[test]
    fn a_late_reading_keeps_its_time_and_when_it_was_given_in_seen_order() {
        let cfg = cfg();
        let t = Ts(1_795_341_601_000);
        let secs = |n: u64| t.plus(Duration::from_millis(n));
        let p95 = |v| reading(3, ReadingState::Value(Measure::Number(v)));
        let errors = reading(
            0,
            ReadingState::Value(Measure::Rate {
                errors: 1.0,
                requests: 100.0,
            }),
        );
        let row = |time, seen, input| Row { time, seen, input };
        let rows = vec![
            row(secs(1000), secs(1000), errors.clone()),
            // Sampled at 0.5s, given to the engine at 3.12s, after the reading of 2s.
            row(secs(2000), secs(2000), p95(0.2)),
            row(secs(500), secs(3120), p95(0.3)),
            row(secs(3120), secs(3120), errors),
        ];
        let text = written(&cfg, &rows);
        assert!(
            text.contains(
                "\n2026-11-22T10:00:01.500Z,reading,shop,p95,value,0.3,,,2026-11-22T10:00:04.120Z\n"
            ) && text.contains(",value,0.2,,,\n"),
            "{text}"
        );
        // The p95 readings are not in time order here: 2s, then 0.5s.
        let swapped = [rows[1].clone(), rows[2].clone()];
        assert!(
            read(&cfg, written(&cfg, &swapped).as_bytes())
                .find_map(Result::err)
                .is_some_and(|e| e.line == 3 && e.message.contains("before its previous reading")),
        );
        let mut in_order = rows.clone();
        in_order.remove(1);
        assert_eq!(round_trip_rows(&cfg, &in_order), in_order);
    }

    #[test]
    fn a_seen_before_its_time_or_out_of_order_is_refused_with_its_line() {
        let cfg = cfg();
        let cases = [
            (
                format!("{H}2,reading,shop,p95,value,1,,,1.5\n"),
                2,
                "seen 1970-01-01T00:00:01.500Z is before the row's time",
            ),
            (
                format!("{H}1,reading,shop,p95,value,1,,,3\n2,reading,shop,errors,value,1,10,,\n"),
                3,
                "time 1970-01-01T00:00:02.000Z is before the previous row's 1970-01-01T00:00:03.000Z; rows must be in the order the engine was given them",
            ),
            (
                format!(
                    "{H}1,reading,shop,p95,value,1,,,3\n2,reading,shop,errors,value,1,10,,2.5\n"
                ),
                3,
                "seen 1970-01-01T00:00:02.500Z is before the previous row's",
            ),
            (
                format!("{H}1,reading,shop,p95,value,1,,,later\n"),
                2,
                "seen: expected a time",
            ),
        ];
        for (text, line, want) in cases {
            let err = read(&cfg, text.as_bytes())
                .find_map(Result::err)
                .unwrap_or_else(|| panic!("no error for {text:?}"));
            assert!(
                err.line == line && err.message.contains(want),
                "{text:?}: {err}"
            );
        }
    }

    #[test]
    fn a_recording_without_seen_reads_with_every_row_given_at_its_time() {
        let cfg = cfg();
        let text = "time,kind,target,signal,state,value,requests,detail\n\
            1,change,shop,,,v2,,0.5\n\
            2,reading,shop,p95,value,0.25,,\n";
        let rows: Vec<Row> = read(&cfg, text.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
        let times: Vec<(Ts, Ts)> = rows.iter().map(|r| (r.time, r.seen)).collect();
        assert_eq!(times, [(Ts(1000), Ts(1000)), (Ts(2000), Ts(2000))]);
        assert!(
            matches!(&rows[0].input, Input::Change { at, .. } if *at == Ts(500)),
            "{rows:?}"
        );
    }

    #[test]
    fn times_are_rfc3339_or_unix_seconds() {
        assert_eq!(
            parse_time("2026-11-22T10:00:01.250Z").unwrap(),
            parse_time("1795341601.25").unwrap()
        );
        assert!(parse_time("-5").is_err());
        assert!(parse_time("yesterday").is_err());
    }
}
