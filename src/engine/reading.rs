//! Time and readings: what sources hand to the engine.

use std::fmt;
use std::time::{Duration, UNIX_EPOCH};

/// A point in time, in milliseconds since the Unix epoch. The engine never reads a clock:
/// every input comes with the time it happens at.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Default,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(transparent)]
pub struct Ts(pub u64);

impl Ts {
    pub fn from_secs(s: u64) -> Ts {
        Ts(s * 1000)
    }

    pub fn plus(self, d: Duration) -> Ts {
        Ts(self.0.saturating_add(d.as_millis() as u64))
    }

    pub fn minus(self, d: Duration) -> Ts {
        Ts(self.0.saturating_sub(d.as_millis() as u64))
    }

    /// The time from `earlier` to `self`, zero if `earlier` is later.
    pub fn since(self, earlier: Ts) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }

    /// RFC 3339 in UTC with millisecond precision, e.g. `2026-11-22T10:00:00.250Z`. A time
    /// past the year 9999, which RFC 3339 cannot write (a corrupt recording can hold one),
    /// is written as milliseconds since the epoch instead of failing.
    pub fn rfc3339(self) -> String {
        use std::fmt::Write;
        let time = UNIX_EPOCH + Duration::from_millis(self.0);
        let mut text = String::new();
        match write!(text, "{}", humantime::format_rfc3339_millis(time)) {
            Ok(()) => text,
            Err(_) => format!("{}ms after the epoch", self.0),
        }
    }

    /// `HH:MM:SS.mmm` in UTC, for timelines.
    pub fn clock(self) -> String {
        let s = self.rfc3339();
        s.get(11..23).unwrap_or(&s).to_owned()
    }
}

impl fmt::Display for Ts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.rfc3339())
    }
}

/// One sample of one signal.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    /// The index of the signal in the configuration.
    pub signal: usize,
    pub state: ReadingState,
}

/// The four states of a reading. Only `Value` carries a measurement; the others say
/// why there is none, and each rule says what to do about it.
#[derive(Debug, Clone, PartialEq)]
pub enum ReadingState {
    Value(Measure),
    /// The source answered, but had nothing (an empty query result, no traffic, NaN).
    NoData,
    /// The source answered with too few samples to judge (e.g. 3 requests).
    Insufficient {
        have: u64,
        need: u64,
    },
    /// The source could not be read: the watchdog cannot see. Never a breach.
    SourceError(String),
}

/// A measurement.
#[derive(Debug, Clone, PartialEq)]
pub enum Measure {
    /// A number in the signal's unit (seconds for latency).
    Number(f64),
    /// Errors out of requests over the signal's window.
    Rate { errors: f64, requests: f64 },
    /// The outcome of a probe or check, with what it saw when it failed.
    Check { ok: bool, detail: Option<String> },
    /// One event; events with the same key are the same event.
    Event { key: String },
}
