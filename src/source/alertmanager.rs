//! The Alertmanager webhook receiver: turns Alertmanager's notifications (webhook payload
//! version 4) into check readings of the `alertmanager` signals of a configuration.
//!
//! A firing alert whose labels carry every matcher of a signal is a breach of that signal;
//! a resolved one clears it. The signal is failing while any of its matching alerts is
//! firing, and a reading is emitted only when that aggregate state changes (failing to
//! passing or back), so rules over these signals are written `when = "failing"`,
//! `consecutive = 1`. Repeated notifications (Alertmanager's `repeat_interval`, retries,
//! both peers of an HA pair) therefore never count twice, and [`Receiver::current`] lets
//! a caller re-assert the known state on an interval if it wants time-based rules.
//!
//! Deliveries are idempotent and may arrive out of order. Per signal and alert
//! fingerprint the receiver keeps the latest known state and the time it happened at
//! (`startsAt` for firing, `endsAt` for resolved); a delivery that says something older
//! than that, or exactly the same, changes nothing. Resolved alerts are forgotten an hour
//! after they were last delivered, and each signal keeps at most
//! [`MAX_ALERTS_PER_SIGNAL`] alerts, so memory is bounded whatever is posted.
//!
//! Every delivery must carry `Authorization: Bearer <token>`; it is compared in constant
//! time with every signal's token and is considered only for the signals whose token it
//! carries. Alerts that match none of those signals are counted and ignored: a webhook can
//! never create work for a target the configuration does not name. The token is never put
//! in a rejection, a log line or a reading.
//!
//! Refused deliveries are logged here, at most one line per [`REFUSAL_LOG_EVERY`] and
//! status (the first refusal at once, then the next one after the period with how many
//! were not logged in between), so that a client posting in a loop cannot fill the
//! journal; every refusal is still counted ([`Receiver::refused`]).
//!
//! This module does no I/O and reads no clock: the daemon's listener hands it the header,
//! the body and the time.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::config::{Config, SourceSpec};
use crate::engine::{Measure, Reading, ReadingState, Ts};

use super::{DETAIL_LIMIT, clip};

/// The largest body accepted, in bytes; larger ones are refused with 413.
pub const BODY_LIMIT: usize = 1024 * 1024;

/// How long a resolved alert is remembered after its last delivery, so that a late
/// retry of its firing notification is recognised as old.
pub const RESOLVED_RETENTION: Duration = Duration::from_secs(60 * 60);

/// The most alerts remembered per signal. Resolved alerts are forgotten first; when every
/// remembered alert is firing the signal is failing anyway, and new ones are not stored.
pub const MAX_ALERTS_PER_SIGNAL: usize = 1024;

/// How often a refused delivery is logged, per HTTP status of the refusal.
pub const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

/// The webhook payload version this receiver understands.
const VERSION: &str = "4";

/// Why a webhook delivery was refused: the HTTP status and a reason for the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// 401 (no or wrong token), 400 (malformed body) or 413 (body too large).
    pub status: u16,
    /// What was wrong, for the answer's body and the log; never holds a token.
    pub reason: String,
}

impl Rejection {
    fn new(status: u16, reason: impl Into<String>) -> Rejection {
        Rejection {
            status,
            reason: reason.into(),
        }
    }

    fn bad(reason: impl Into<String>) -> Rejection {
        Rejection::new(400, reason)
    }

    fn unauthorized(reason: impl Into<String>) -> Rejection {
        Rejection::new(401, reason)
    }
}

/// What an accepted delivery did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Delivery {
    /// The readings to hand the engine: one per signal whose aggregate state changed.
    pub readings: Vec<Reading>,
    /// Alerts in the body.
    pub alerts: usize,
    /// Alerts that matched no signal this token is for; ignored.
    pub unmatched: usize,
    /// (alert, signal) pairs that changed what is known.
    pub applied: usize,
    /// (alert, signal) pairs identical to what is known: repeats and HA duplicates.
    pub duplicates: usize,
    /// (alert, signal) pairs older than what is known: late or reordered deliveries.
    pub stale: usize,
    /// New alerts not remembered because their signal already holds the maximum.
    pub dropped: usize,
    /// Alerts Alertmanager left out of the body (`truncatedAlerts`, its `max_alerts`).
    pub truncated: u64,
}

impl fmt::Display for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "accepted {} alerts: {} readings, {} applied, {} duplicates, {} stale, {} matching no signal",
            self.alerts,
            self.readings.len(),
            self.applied,
            self.duplicates,
            self.stale,
            self.unmatched
        )?;
        if self.dropped > 0 {
            write!(f, ", {} not remembered (too many alerts)", self.dropped)?;
        }
        if self.truncated > 0 {
            write!(f, ", {} truncated by alertmanager", self.truncated)?;
        }
        Ok(())
    }
}

/// One `alertmanager` signal of the configuration.
struct Watched {
    /// The signal's index in the configuration.
    signal: usize,
    matchers: Vec<(String, String)>,
    token: SecretString,
}

impl Watched {
    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.matchers
            .iter()
            .all(|(k, v)| labels.get(k).is_some_and(|l| l == v))
    }
}

/// What is known of one alert of one signal.
#[derive(Debug, Clone)]
struct Known {
    firing: bool,
    /// `startsAt`, in milliseconds since the epoch.
    starts: i64,
    /// `endsAt` of a resolved alert; unused while firing.
    ends: i64,
    /// When it was last delivered (receiver time), for forgetting resolved alerts.
    seen: Ts,
    /// `alertname: summary`, already bounded.
    detail: String,
}

impl Known {
    /// The time the known state happened at: a firing alert's start, a resolved one's end.
    fn at(&self) -> i64 {
        if self.firing { self.starts } else { self.ends }
    }
}

#[derive(Debug, Default)]
struct SignalState {
    /// By fingerprint.
    alerts: HashMap<String, Known>,
    /// The aggregate state last reported (`true` failing); `None` before the first.
    reported: Option<bool>,
}

impl SignalState {
    fn failing(&self) -> bool {
        self.alerts.values().any(|k| k.firing)
    }

    /// The most recently started firing alert, and how many others fire.
    fn failing_detail(&self) -> String {
        let mut firing = self.alerts.values().filter(|k| k.firing);
        let Some(first) = firing.next() else {
            return String::new();
        };
        let mut latest = first;
        let mut others = 0usize;
        for k in firing {
            others += 1;
            if (k.starts, &k.detail) > (latest.starts, &latest.detail) {
                latest = k;
            }
        }
        let text = if others == 0 {
            latest.detail.clone()
        } else {
            format!("{} (+{others} more firing)", latest.detail)
        };
        clip(&text, DETAIL_LIMIT)
    }

    fn reading(&self, signal: usize, failing: bool) -> Reading {
        let detail = if failing {
            self.failing_detail()
        } else {
            "every matching alert is resolved".to_owned()
        };
        Reading {
            signal,
            state: ReadingState::Value(Measure::Check {
                ok: !failing,
                detail: Some(detail),
            }),
        }
    }

    /// Forgets resolved alerts not delivered for [`RESOLVED_RETENTION`].
    fn prune(&mut self, now: Ts) {
        self.alerts
            .retain(|_, k| k.firing || now.since(k.seen) < RESOLVED_RETENTION);
    }

    /// Makes room for one more alert, forgetting the resolved one delivered longest ago.
    fn make_room(&mut self) -> bool {
        if self.alerts.len() < MAX_ALERTS_PER_SIGNAL {
            return true;
        }
        let oldest = self
            .alerts
            .iter()
            .filter(|(_, k)| !k.firing)
            .min_by_key(|(_, k)| k.seen)
            .map(|(fp, _)| fp.clone());
        match oldest {
            Some(fp) => {
                self.alerts.remove(&fp);
                true
            }
            None => false,
        }
    }
}

/// What one alert of a delivery says, validated.
struct Incoming {
    fingerprint: String,
    labels: BTreeMap<String, String>,
    firing: bool,
    starts: i64,
    ends: i64,
    detail: String,
}

impl Incoming {
    fn at(&self) -> i64 {
        if self.firing { self.starts } else { self.ends }
    }
}

/// How an incoming alert compares with what is known.
#[derive(Debug, PartialEq, Eq)]
enum Order {
    New,
    Newer,
    Same,
    Older,
}

/// Orders deliveries of one alert by the time of what they say: a firing alert happened
/// at its `startsAt`, a resolved one at its `endsAt`. So a retried firing of an episode
/// whose resolution is known is older (it started before it ended), and a resolution of
/// an earlier episode is older than the firing of the next one (it ended before that
/// started). The same status with the same times is a duplicate.
fn order(known: Option<&Known>, incoming: &Incoming) -> Order {
    let Some(k) = known else { return Order::New };
    if k.firing == incoming.firing
        && k.starts == incoming.starts
        && (k.firing || k.ends == incoming.ends)
    {
        return Order::Same;
    }
    // Within one instant a resolution is the later news: it ends that episode.
    let rank = |at: i64, firing: bool| (at, !firing);
    if rank(incoming.at(), incoming.firing) > rank(k.at(), k.firing) {
        Order::Newer
    } else {
        Order::Older
    }
}

/// Receives Alertmanager webhooks for every `alertmanager` signal of a configuration.
pub struct Receiver {
    watched: Vec<Watched>,
    /// Per watched signal, in the order of `watched`. Held only for short sections.
    state: Mutex<Vec<SignalState>>,
    refusals: Mutex<RefusalLog>,
}

/// Refused deliveries by HTTP status: how many in all, and what the log has been told.
#[derive(Debug, Default)]
struct RefusalLog {
    by_status: BTreeMap<u16, Refusals>,
}

#[derive(Debug, Default)]
struct Refusals {
    total: u64,
    /// When a refusal of this status was last logged.
    logged_at: Option<Ts>,
    /// Refusals since then that were counted but not logged.
    unlogged: u64,
}

impl RefusalLog {
    /// Counts a refusal; `Some(n)` when it is to be logged, `n` being the refusals of its
    /// status not logged since the last line.
    fn count(&mut self, status: u16, now: Ts) -> Option<u64> {
        let r = self.by_status.entry(status).or_default();
        r.total += 1;
        match r.logged_at {
            Some(at) if now.since(at) < REFUSAL_LOG_EVERY && now.0 >= at.0 => {
                r.unlogged += 1;
                None
            }
            _ => {
                r.logged_at = Some(now);
                Some(std::mem::take(&mut r.unlogged))
            }
        }
    }
}

impl fmt::Debug for Receiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Receiver")
            .field("signals", &self.signals())
            .finish_non_exhaustive()
    }
}

impl Receiver {
    /// `None` when the configuration has no alertmanager signal.
    pub fn new(cfg: &Config) -> Option<Receiver> {
        let watched: Vec<Watched> = cfg
            .signals
            .iter()
            .enumerate()
            .filter_map(|(signal, s)| match &s.source {
                SourceSpec::Alertmanager(spec) => Some(Watched {
                    signal,
                    matchers: spec.matchers.clone(),
                    token: bare_token(&spec.token),
                }),
                _ => None,
            })
            .collect();
        if watched.is_empty() {
            return None;
        }
        let state = watched.iter().map(|_| SignalState::default()).collect();
        Some(Receiver {
            watched,
            state: Mutex::new(state),
            refusals: Mutex::new(RefusalLog::default()),
        })
    }

    /// Takes over what `old`, the receiver of the configuration before a reload, knew of
    /// the alerts of every signal that is the same in both: Alertmanager re-sends a firing
    /// alert only every `repeat_interval`, so a reload must not forget one.
    pub fn take_over(&self, old: &Receiver, old_cfg: &Config, new_cfg: &Config) {
        let mut from = old.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut to = self.state.lock().unwrap_or_else(|e| e.into_inner());
        for (i, w) in self.watched.iter().enumerate() {
            let name = &new_cfg.signals[w.signal].name;
            let same = old.watched.iter().position(|o| {
                &old_cfg.signals[o.signal].name == name
                    && crate::engine::reload::same_signal(old_cfg, o.signal, new_cfg, w.signal)
            });
            if let Some(j) = same {
                to[i] = std::mem::take(&mut from[j]);
            }
        }
    }

    /// The indexes of the signals this receiver feeds, in configuration order.
    pub fn signals(&self) -> Vec<usize> {
        self.watched.iter().map(|w| w.signal).collect()
    }

    /// Handles one delivery: the `Authorization` header and the body. Returns the readings
    /// to hand the engine (possibly none), or why the delivery was refused.
    pub fn handle(
        &self,
        authorization: Option<&str>,
        body: &[u8],
        now: Ts,
    ) -> Result<Vec<Reading>, Rejection> {
        self.receive(authorization, body, now).map(|d| d.readings)
    }

    /// [`Receiver::handle`] with the counts of what the delivery did, for the answer's
    /// body and the log. A refusal is counted, and logged within the rate limit.
    pub fn receive(
        &self,
        authorization: Option<&str>,
        body: &[u8],
        now: Ts,
    ) -> Result<Delivery, Rejection> {
        let result = self.judge(authorization, body, now);
        if let Err(rejection) = &result {
            self.log_refusal(rejection, now);
        }
        result
    }

    /// How many deliveries were refused, by HTTP status, since this receiver was made.
    pub fn refused(&self) -> BTreeMap<u16, u64> {
        let log = self.refusals.lock().unwrap_or_else(|e| e.into_inner());
        log.by_status.iter().map(|(s, r)| (*s, r.total)).collect()
    }

    /// Counts a refusal, and logs it unless one of its status was logged within
    /// [`REFUSAL_LOG_EVERY`]. The listener calls it for the refusals it makes itself
    /// (token, size, bodies in flight), so every refusal is counted and rate-limited alike.
    pub fn log_refusal(&self, rejection: &Rejection, now: Ts) {
        let mut log = self.refusals.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(unlogged) = log.count(rejection.status, now) {
            tracing::warn!(
                status = rejection.status,
                reason = %rejection.reason,
                not_logged_since = unlogged,
                "alertmanager webhook refused"
            );
        }
    }

    /// Judges one delivery and applies it; see [`Receiver::receive`].
    fn judge(
        &self,
        authorization: Option<&str>,
        body: &[u8],
        now: Ts,
    ) -> Result<Delivery, Rejection> {
        let allowed = self.authorize(authorization)?;
        if body.len() > BODY_LIMIT {
            return Err(Rejection::new(
                413,
                format!(
                    "body of {} bytes is over the limit of {BODY_LIMIT} bytes",
                    body.len()
                ),
            ));
        }
        let (alerts, truncated) = parse(body)?;
        let mut delivery = Delivery {
            alerts: alerts.len(),
            truncated,
            ..Delivery::default()
        };
        let mut matched = vec![false; alerts.len()];
        {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            for &w in &allowed {
                let watched = &self.watched[w];
                let st = &mut state[w];
                st.prune(now);
                let mut touched = false;
                for (i, alert) in alerts.iter().enumerate() {
                    if !watched.matches(&alert.labels) {
                        continue;
                    }
                    matched[i] = true;
                    touched = true;
                    apply(st, alert, now, &mut delivery);
                }
                // A signal no alert was ever delivered for stays without readings: a
                // delivery about other alerts says nothing about it.
                let failing = st.failing();
                if (touched || st.reported.is_some()) && st.reported != Some(failing) {
                    st.reported = Some(failing);
                    delivery.readings.push(st.reading(watched.signal, failing));
                }
            }
        }
        delivery.unmatched = matched.iter().filter(|m| !**m).count();
        if delivery.dropped > 0 {
            tracing::warn!(
                dropped = delivery.dropped,
                limit = MAX_ALERTS_PER_SIGNAL,
                "alertmanager alerts not remembered: too many per signal"
            );
        }
        if delivery.truncated > 0 {
            tracing::warn!(
                truncated = delivery.truncated,
                "alertmanager truncated the delivery (max_alerts): some alerts were not seen"
            );
        }
        tracing::debug!(
            alerts = delivery.alerts,
            readings = delivery.readings.len(),
            applied = delivery.applied,
            duplicates = delivery.duplicates,
            stale = delivery.stale,
            unmatched = delivery.unmatched,
            "alertmanager delivery accepted"
        );
        Ok(delivery)
    }

    /// The known state of every signal that has had one, as readings: for a caller that
    /// re-asserts it on an interval (so that `for` rules and verification windows see
    /// fresh readings between changes). Signals nothing was delivered for are left out.
    pub fn current(&self) -> Vec<Reading> {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        self.watched
            .iter()
            .zip(state.iter())
            .filter_map(|(w, st)| st.reported.map(|f| st.reading(w.signal, f)))
            .collect()
    }

    /// The positions in `watched` whose token the header carries, or why none: what
    /// the listener checks on the headers, before it reads a body.
    pub fn authorize(&self, authorization: Option<&str>) -> Result<Vec<usize>, Rejection> {
        let Some(header) = authorization else {
            return Err(Rejection::unauthorized(
                "missing Authorization header: send `Authorization: Bearer <token>` (http_config.authorization.credentials in Alertmanager)",
            ));
        };
        let header = header.trim();
        let token = match header.split_once(' ') {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim_start(),
            _ => {
                return Err(Rejection::unauthorized(
                    "the Authorization header is not a bearer token: send `Authorization: Bearer <token>`",
                ));
            }
        };
        if token.is_empty() {
            return Err(Rejection::unauthorized("the bearer token is empty"));
        }
        // Every token is compared, whatever matched before, so that the time taken does
        // not tell which signal (if any) a guess is close to.
        let mut allowed = Vec::new();
        for (i, w) in self.watched.iter().enumerate() {
            if constant_time_eq(token.as_bytes(), w.token.expose_secret().as_bytes()) {
                allowed.push(i);
            }
        }
        if allowed.is_empty() {
            return Err(Rejection::unauthorized(
                "the bearer token is not the token of any alertmanager signal",
            ));
        }
        Ok(allowed)
    }
}

/// Applies one matching alert to a signal's state.
fn apply(st: &mut SignalState, alert: &Incoming, now: Ts, delivery: &mut Delivery) {
    match order(st.alerts.get(&alert.fingerprint), alert) {
        Order::Same => {
            if let Some(k) = st.alerts.get_mut(&alert.fingerprint) {
                k.seen = now;
            }
            delivery.duplicates += 1;
        }
        Order::Older => delivery.stale += 1,
        o @ (Order::New | Order::Newer) => {
            if o == Order::New && !st.make_room() {
                delivery.dropped += 1;
                return;
            }
            st.alerts.insert(
                alert.fingerprint.clone(),
                Known {
                    firing: alert.firing,
                    starts: alert.starts,
                    ends: alert.ends,
                    seen: now,
                    detail: alert.detail.clone(),
                },
            );
            delivery.applied += 1;
        }
    }
}

/// A configured token without a `Bearer ` prefix, for configurations that wrote the
/// whole header value (`prefix = "Bearer "`).
fn bare_token(token: &SecretString) -> SecretString {
    let t = token.expose_secret();
    match t.split_once(' ') {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => {
            SecretString::from(rest.trim_start().to_owned())
        }
        _ => token.clone(),
    }
}

/// Compares two byte strings in constant time (subtle): the time says nothing of where
/// they differ, only whether their lengths do.
pub(crate) fn constant_time_eq(given: &[u8], expected: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    given.ct_eq(expected).into()
}

/// The body of a version 4 notification. Fields not needed are accepted and ignored.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Payload {
    alerts: Vec<RawAlert>,
    #[serde(default)]
    truncated_alerts: u64,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawAlert {
    status: String,
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
    starts_at: String,
    #[serde(default)]
    ends_at: Option<String>,
    #[serde(default)]
    fingerprint: Option<String>,
}

/// Validates a body into its alerts and `truncatedAlerts`; nothing is applied unless
/// every alert is valid.
fn parse(body: &[u8]) -> Result<(Vec<Incoming>, u64), Rejection> {
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| Rejection::bad(format!("the body is not JSON: {e}")))?;
    let Some(object) = value.as_object() else {
        return Err(Rejection::bad(
            "the body is not a JSON object: expected an Alertmanager webhook payload",
        ));
    };
    match object.get("version") {
        Some(serde_json::Value::String(v)) if v == VERSION => {}
        Some(other) => {
            return Err(Rejection::bad(format!(
                "unsupported webhook payload version {}: expected \"{VERSION}\"",
                clip(&other.to_string(), 40)
            )));
        }
        None => {
            return Err(Rejection::bad(format!(
                "the body has no version: expected an Alertmanager webhook payload, version \"{VERSION}\""
            )));
        }
    }
    if !object.contains_key("alerts") {
        return Err(Rejection::bad("the body has no alerts"));
    }
    let payload: Payload = serde_json::from_value(value)
        .map_err(|e| Rejection::bad(format!("malformed webhook payload: {e}")))?;
    let alerts = payload
        .alerts
        .into_iter()
        .enumerate()
        .map(|(i, a)| validate(i, a))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((alerts, payload.truncated_alerts))
}

fn validate(i: usize, a: RawAlert) -> Result<Incoming, Rejection> {
    let firing = match a.status.as_str() {
        "firing" => true,
        "resolved" => false,
        other => {
            return Err(Rejection::bad(format!(
                "alerts[{i}].status: expected \"firing\" or \"resolved\", got {:?}",
                clip(other, 40)
            )));
        }
    };
    let time = |field: &str, text: &str| {
        parse_rfc3339(text).ok_or_else(|| {
            Rejection::bad(format!(
                "alerts[{i}].{field}: expected an RFC 3339 time, got {:?}",
                clip(text, 40)
            ))
        })
    };
    let starts = time("startsAt", &a.starts_at)?;
    if starts < 0 {
        return Err(Rejection::bad(format!(
            "alerts[{i}].startsAt: the alert has no start time"
        )));
    }
    // Alertmanager sends the zero time as the end of a firing alert.
    let ends = match &a.ends_at {
        Some(text) => time("endsAt", text)?,
        None => i64::MIN,
    };
    if !firing {
        if ends < 0 {
            return Err(Rejection::bad(format!(
                "alerts[{i}].endsAt: a resolved alert needs its end time"
            )));
        }
        if ends < starts {
            return Err(Rejection::bad(format!(
                "alerts[{i}].endsAt: the alert ends before it starts"
            )));
        }
    }
    let fingerprint = match a.fingerprint {
        Some(fp) if !fp.is_empty() => clip(&fp, 64),
        _ => fingerprint(&a.labels),
    };
    let name = a.labels.get("alertname").map_or("(no alertname)", |s| s);
    let detail = match a.annotations.get("summary").filter(|s| !s.is_empty()) {
        Some(summary) => format!("{name}: {summary}"),
        None => name.to_owned(),
    };
    // Alert text goes into logs and reports: one line, bounded.
    let detail: String = detail
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    Ok(Incoming {
        fingerprint,
        labels: a.labels,
        firing,
        starts,
        ends,
        detail: clip(&detail, DETAIL_LIMIT),
    })
}

/// Alertmanager's fingerprint of a label set (Prometheus's `LabelSet.Fingerprint`):
/// FNV-1a 64 over the labels sorted by name, each name and value followed by `0xff`,
/// as 16 hex digits. Used when a delivery has no fingerprint, so that it dedupes with
/// deliveries that have one.
pub fn fingerprint(labels: &BTreeMap<String, String>) -> String {
    const OFFSET: u64 = 14_695_981_039_346_656_037;
    const PRIME: u64 = 1_099_511_628_211;
    let mut h = OFFSET;
    let mut add = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(PRIME);
        }
    };
    for (name, value) in labels {
        add(name.as_bytes());
        add(&[0xff]);
        add(value.as_bytes());
        add(&[0xff]);
    }
    format!("{h:016x}")
}

/// Milliseconds since the epoch of an RFC 3339 time (`2026-11-22T10:00:00.250+01:00`),
/// negative before 1970 (Go's zero time, `0001-01-01T00:00:00Z`, means "not set"). Read
/// by jiff, which takes an offset as RFC 3339 writes it (`Z`, `+01:00`) and also in
/// ISO 8601's other forms, and never a time without one.
fn parse_rfc3339(text: &str) -> Option<i64> {
    let at: jiff::Timestamp = text.parse().ok()?;
    Some(at.as_millisecond())
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use super::{Receiver, Ts, constant_time_eq, parse_rfc3339};
    use crate::config::{Format, load_str};

    /// What a subscriber writes, for reading back the lines a closure logged.
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn logged(f: impl FnOnce()) -> Vec<String> {
        let lines = Lines::default();
        let writer = lines.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        text.lines().map(str::to_owned).collect()
    }

    #[test]
    fn a_flood_of_refused_deliveries_logs_a_line_per_status_and_period_and_counts_all() {
        let text = r#"
[[target]]
name = "shop"

[[signal]]
name = "alerts"
type = "alertmanager"
target = "shop"
matchers = { alertname = "Down" }
token = { env = "AM_TOKEN" }
"#;
        let env = [("AM_TOKEN".to_owned(), "right".to_owned())];
        let cfg = load_str(text, Format::Toml, env, std::path::Path::new(".")).unwrap();
        let receiver = Receiver::new(&cfg).unwrap();
        let lines = logged(|| {
            for ms in 0..1000 {
                assert!(
                    receiver
                        .receive(Some("Bearer wrong"), b"{}", Ts(ms))
                        .is_err()
                );
            }
            assert!(
                receiver
                    .receive(Some("Bearer right"), b"{", Ts(500))
                    .is_err()
            );
            assert!(receiver.receive(None, b"{}", Ts(10_999)).is_err());
        });
        let refused: Vec<&String> = lines.iter().filter(|l| l.contains("refused")).collect();
        assert_eq!(refused.len(), 3, "{lines:#?}");
        assert!(refused[0].contains("not_logged_since=0"), "{lines:#?}");
        assert!(refused[1].contains("status=400"), "{lines:#?}");
        assert!(refused[2].contains("not_logged_since=999"), "{lines:#?}");
        assert!(!lines.iter().any(|l| l.contains("right")), "{lines:#?}");
        let counts: Vec<(u16, u64)> = receiver.refused().into_iter().collect();
        assert_eq!(counts, [(400, 1), (401, 1001)]);
    }

    #[test]
    fn rfc3339_times_parse_with_fractions_and_offsets() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339("2026-11-22T10:00:00.250Z"),
            Some(1_795_341_600_250)
        );
        assert_eq!(
            parse_rfc3339("2026-11-22T11:00:00.250123456+01:00"),
            Some(1_795_341_600_250)
        );
        assert_eq!(
            parse_rfc3339("2026-11-22T09:30:00.25-00:30"),
            Some(1_795_341_600_250)
        );
        assert!(parse_rfc3339("0001-01-01T00:00:00Z").is_some_and(|t| t < 0));
        // ISO 8601's offset without a colon, which jiff also reads.
        assert_eq!(
            parse_rfc3339("2026-11-22T11:00:00.250+0100"),
            Some(1_795_341_600_250)
        );
        for bad in [
            "",
            "yesterday",
            "2026-11-22",
            "2026-11-22T10:00:00",
            "2026-13-01T00:00:00Z",
            "2026-02-30T00:00:00Z",
            "2026-11-22T10:00:00.Z",
            "2026-11-22T10:00:00Zjunk",
            "2026-11-22T25:00:00Z",
            "２026-11-22T10:00:00Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn constant_time_eq_compares_whole_strings() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secreT", b"secret"));
        assert!(!constant_time_eq(b"secret-and-more", b"secret"));
        assert!(!constant_time_eq(b"secre", b"secret"));
        assert!(!constant_time_eq(b"", b"secret"));
    }
}
