//! The recording format: readings and change events as CSV rows, written by
//! `rearguard record` and read by `rearguard replay` and the scenario corpus.
//!
//! One row per reading or change, in time order, with this header:
//!
//! ```text
//! time,kind,target,signal,state,value,requests
//! 2026-11-22T10:00:00Z,change,shop,,,v2,
//! 2026-11-22T10:00:01Z,reading,shop,errors,value,0.08,1000
//! 2026-11-22T10:00:01Z,reading,shop,p95,value,0.25,
//! 2026-11-22T10:00:01Z,reading,shop,health,value,0,
//! 2026-11-22T10:00:01Z,reading,shop,oom,value,pod-7f9c,
//! 2026-11-22T10:00:02Z,reading,shop,errors,no_data,,
//! 2026-11-22T10:00:03Z,reading,shop,errors,insufficient,3,20
//! 2026-11-22T10:00:04Z,reading,shop,errors,error,connection refused,
//! ```
//!
//! - `time`: RFC 3339 (`2026-11-22T10:00:01.250Z`) or Unix seconds (`1795341601.25`).
//! - `kind`: `reading` or `change`.
//! - `target`: the target's name; for a reading it must be its signal's target.
//! - `signal`: the signal's name (empty for a change).
//! - `state`: `value`, `no_data`, `insufficient` or `error` (empty for a change).
//! - `value`: for a `value` reading, by the signal's kind: a rate's error ratio (0.08), a
//!   number in its unit (seconds for latency), a check's outcome (1 passed, 0 failed), an
//!   event's key; for `insufficient`, the samples there were; for `error`, the reason;
//!   for a change, the new revision.
//! - `requests`: a rate's request count; for `insufficient`, the samples needed.
//!
//! This module converts between rows and engine inputs; it does no other I/O than the
//! reader and writer it is given.

use std::collections::HashMap;
use std::io;

use crate::config::units::format_duration;
use crate::config::{Config, SignalKind};
use crate::engine::{Input, Measure, Reading, ReadingState, Ts};

/// The header line every recording starts with.
pub const HEADER: [&str; 7] = [
    "time", "kind", "target", "signal", "state", "value", "requests",
];

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

    /// Writes a reading of `signal` (an index into `cfg.signals`).
    pub fn reading(&mut self, cfg: &Config, at: Ts, reading: &Reading) -> io::Result<()> {
        let signal = &cfg.signals[reading.signal];
        let target = &cfg.targets[signal.target].name;
        let (state, value, requests) = match &reading.state {
            ReadingState::Value(m) => {
                let (value, requests) = match m {
                    Measure::Number(v) => (number(*v), String::new()),
                    Measure::Rate { errors, requests } => {
                        let ratio = if *requests > 0.0 {
                            errors / requests
                        } else {
                            0.0
                        };
                        (number(ratio), number(*requests))
                    }
                    Measure::Check { ok, .. } => {
                        ((if *ok { "1" } else { "0" }).to_owned(), String::new())
                    }
                    Measure::Event { key } => (key.clone(), String::new()),
                };
                ("value", value, requests)
            }
            ReadingState::NoData => ("no_data", String::new(), String::new()),
            ReadingState::Insufficient { have, need } => {
                ("insufficient", have.to_string(), need.to_string())
            }
            ReadingState::SourceError(e) => ("error", e.clone(), String::new()),
        };
        self.csv
            .write_record([
                &at.rfc3339(),
                "reading",
                target,
                &signal.name,
                state,
                &value,
                &requests,
            ])
            .map_err(io::Error::other)
    }

    /// Writes a change of `target` (an index into `cfg.targets`) to `revision`.
    pub fn change(
        &mut self,
        cfg: &Config,
        at: Ts,
        target: usize,
        revision: &str,
    ) -> io::Result<()> {
        let name = &cfg.targets[target].name;
        self.csv
            .write_record([&at.rfc3339(), "change", name, "", "", revision, ""])
            .map_err(io::Error::other)
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.csv.flush()
    }
}

fn number(v: f64) -> String {
    // The shortest text that reads back as the same f64.
    format!("{v}")
}

/// Reads a recording against a configuration: each row becomes an engine input with its
/// time. Rows must be in time order; an unknown signal or target is an error. Reading
/// stops at the first error.
pub fn read<'a, R: io::Read + 'a>(
    cfg: &'a Config,
    input: R,
) -> impl Iterator<Item = Result<(Ts, Input), RowError>> + 'a {
    let mut csv = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(false)
        .from_reader(input);
    let header = match csv.headers() {
        Ok(h) if h.iter().eq(HEADER) => None,
        Ok(h) => Some(RowError {
            line: 1,
            message: format!(
                "expected the header {:?}, got {:?}",
                HEADER.join(","),
                h.iter().collect::<Vec<_>>().join(",")
            ),
        }),
        Err(e) => Some(RowError {
            line: 1,
            message: format!("cannot read the header: {e}"),
        }),
    };
    Reader {
        cfg,
        csv,
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
        last: Ts(0),
        last_time_text: String::new(),
        header,
        failed: false,
    }
}

/// The state of [`read`]: name indexes and the last time parsed, since rows of one
/// instant repeat the same time text.
struct Reader<'a, R: io::Read> {
    cfg: &'a Config,
    csv: csv::Reader<R>,
    record: csv::StringRecord,
    targets: HashMap<&'a str, usize>,
    signals: HashMap<&'a str, usize>,
    last: Ts,
    last_time_text: String,
    header: Option<RowError>,
    failed: bool,
}

impl<R: io::Read> Iterator for Reader<'_, R> {
    type Item = Result<(Ts, Input), RowError>;

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
                line: self.record.position().map_or(0, |p| p.line()),
                message,
            }
        }))
    }
}

impl<R: io::Read> Reader<'_, R> {
    fn row(&mut self) -> Result<(Ts, Input), String> {
        let time_text = self.record.get(0).unwrap_or("");
        let at = if time_text == self.last_time_text {
            self.last
        } else {
            let at = parse_time(time_text)?;
            self.last_time_text.clear();
            self.last_time_text.push_str(time_text);
            at
        };
        if at < self.last {
            return Err(format!(
                "time {at} is before the previous row's {}; rows must be in time order",
                self.last
            ));
        }
        self.last = at;
        let input = parse_row(self.cfg, &self.targets, &self.signals, &self.record, at)?;
        Ok((at, input))
    }
}

fn parse_row(
    cfg: &Config,
    targets: &HashMap<&str, usize>,
    signals: &HashMap<&str, usize>,
    r: &csv::StringRecord,
    at: Ts,
) -> Result<Input, String> {
    let field = |i: usize| r.get(i).unwrap_or("");
    let target_name = field(2);
    let target = *targets
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
                at,
            })
        }
        "reading" => {
            let name = field(3);
            let signal = *signals
                .get(name)
                .ok_or_else(|| format!("no signal is named {name:?} in the configuration"))?;
            let sig = &cfg.signals[signal];
            if sig.target != target {
                return Err(format!(
                    "signal {name:?} belongs to target {:?}, not {target_name:?}",
                    cfg.targets[sig.target].name
                ));
            }
            let (value, requests) = (field(5), field(6));
            let num = |text: &str, what: &str| -> Result<f64, String> {
                text.trim()
                    .parse::<f64>()
                    .map_err(|_| format!("expected a number for {what}, got {text:?}"))
            };
            let state = match field(4) {
                "value" => ReadingState::Value(match sig.kind() {
                    SignalKind::Number => Measure::Number(num(value, "value")?),
                    SignalKind::Rate => {
                        let ratio = num(value, "value (the error ratio)")?;
                        let n = num(requests, "requests")?;
                        if !(0.0..=1.0).contains(&ratio) || n < 0.0 {
                            return Err(format!(
                                "a rate needs 0 <= value <= 1 and requests >= 0, got {value} and {requests}"
                            ));
                        }
                        // Not rounded: Prometheus's increase() counts are fractional.
                        Measure::Rate {
                            errors: ratio * n,
                            requests: n,
                        }
                    }
                    SignalKind::Check => match value.trim() {
                        "1" => Measure::Check {
                            ok: true,
                            detail: None,
                        },
                        "0" => Measure::Check {
                            ok: false,
                            detail: Some("recorded as failed".to_owned()),
                        },
                        other => {
                            return Err(format!(
                                "a check's value is 1 (passed) or 0 (failed), got {other:?}"
                            ));
                        }
                    },
                    SignalKind::Event => {
                        if value.is_empty() {
                            return Err("an event needs its key in `value`".to_owned());
                        }
                        Measure::Event {
                            key: value.to_owned(),
                        }
                    }
                }),
                "no_data" => ReadingState::NoData,
                "insufficient" => ReadingState::Insufficient {
                    have: num(value, "value (samples there were)")? as u64,
                    need: num(requests, "requests (samples needed)")? as u64,
                },
                "error" => ReadingState::SourceError(value.to_owned()),
                other => {
                    return Err(format!(
                        "expected the state value, no_data, insufficient or error, got {other:?}"
                    ));
                }
            };
            Ok(Input::Reading(Reading { signal, state }))
        }
        other => Err(format!(
            "expected the kind reading or change, got {other:?}"
        )),
    }
}

/// Parses RFC 3339 or Unix seconds (with a fraction) into engine time.
pub fn parse_time(text: &str) -> Result<Ts, String> {
    let t = text.trim();
    if let Ok(secs) = t.parse::<f64>()
        && secs.is_finite()
        && secs >= 0.0
    {
        return Ok(Ts((secs * 1000.0).round() as u64));
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
mod tests {
    use super::*;

    fn cfg() -> Config {
        crate::config::load_str(
            r#"
[[target]]
name = "shop"
[[signal]]
name = "errors"
target = "shop"
type = "prometheus"
url = "http://127.0.0.1:9090"
error_rate = { requests = "http_requests_total", errors = 'code=~"5.."' }
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
latency = { histogram = "h_bucket" }
"#,
            crate::config::Format::Toml,
            std::iter::empty(),
            std::path::Path::new("."),
        )
        .unwrap()
    }

    #[test]
    fn every_reading_state_and_kind_round_trips_through_csv() {
        let cfg = cfg();
        let t = Ts(1_795_341_601_250);
        let rows = vec![
            Input::Change {
                target: 0,
                revision: "v2".into(),
                at: t,
            },
            Input::Reading(Reading {
                signal: 0,
                state: ReadingState::Value(Measure::Rate {
                    errors: 80.0,
                    requests: 1000.0,
                }),
            }),
            Input::Reading(Reading {
                signal: 3,
                state: ReadingState::Value(Measure::Number(0.25)),
            }),
            Input::Reading(Reading {
                signal: 1,
                state: ReadingState::Value(Measure::Check {
                    ok: true,
                    detail: None,
                }),
            }),
            Input::Reading(Reading {
                signal: 2,
                state: ReadingState::Value(Measure::Event {
                    key: "pod,\"7f\"".into(),
                }),
            }),
            Input::Reading(Reading {
                signal: 0,
                state: ReadingState::NoData,
            }),
            Input::Reading(Reading {
                signal: 0,
                state: ReadingState::Insufficient { have: 3, need: 20 },
            }),
            Input::Reading(Reading {
                signal: 0,
                state: ReadingState::SourceError("connection refused, twice".into()),
            }),
        ];
        let mut out = Vec::new();
        {
            let mut w = Writer::new(&mut out).unwrap();
            for r in &rows {
                match r {
                    Input::Change {
                        target, revision, ..
                    } => w.change(&cfg, t, *target, revision).unwrap(),
                    Input::Reading(reading) => w.reading(&cfg, t, reading).unwrap(),
                    _ => unreachable!(),
                }
            }
            w.flush().unwrap();
        }
        let back: Vec<(Ts, Input)> = read(&cfg, out.as_slice())
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(back.len(), rows.len());
        for ((at, got), want) in back.iter().zip(&rows) {
            assert_eq!(*at, t);
            let want = match want {
                // A failed check reads back with the recording's own detail.
                Input::Reading(Reading {
                    signal,
                    state: ReadingState::Value(Measure::Check { ok: false, .. }),
                }) => Input::Reading(Reading {
                    signal: *signal,
                    state: ReadingState::Value(Measure::Check {
                        ok: false,
                        detail: Some("recorded as failed".into()),
                    }),
                }),
                other => other.clone(),
            };
            assert_eq!(*got, want);
        }
    }

    #[test]
    fn bad_rows_are_errors_with_their_line() {
        let cfg = cfg();
        let cases = [
            ("time,kind\n", "expected the header"),
            (
                "time,kind,target,signal,state,value,requests\nsoon,reading,shop,errors,value,0.1,10\n",
                "line 2: expected a time",
            ),
            (
                "time,kind,target,signal,state,value,requests\n1,reading,nope,errors,value,0.1,10\n",
                "no target is named \"nope\"",
            ),
            (
                "time,kind,target,signal,state,value,requests\n1,reading,shop,nope,value,0.1,10\n",
                "no signal is named \"nope\"",
            ),
            (
                "time,kind,target,signal,state,value,requests\n1,reading,shop,errors,value,1.5,10\n",
                "a rate needs",
            ),
            (
                "time,kind,target,signal,state,value,requests\n1,reading,shop,health,value,yes,\n",
                "a check's value is 1",
            ),
            (
                "time,kind,target,signal,state,value,requests\n1,reading,shop,errors,maybe,,\n",
                "expected the state",
            ),
            (
                "time,kind,target,signal,state,value,requests\n2,reading,shop,p95,value,1,\n1,reading,shop,p95,value,1,\n",
                "line 3: time",
            ),
            (
                "time,kind,target,signal,state,value,requests\n1,reading,shop,p95\n",
                "line 2",
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
    fn times_are_rfc3339_or_unix_seconds() {
        assert_eq!(
            parse_time("2026-11-22T10:00:01.250Z").unwrap(),
            parse_time("1795341601.25").unwrap()
        );
        assert!(parse_time("-5").is_err());
        assert!(parse_time("yesterday").is_err());
    }
}
