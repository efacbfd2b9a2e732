//! `rearguard record` against real sources (a local HTTP service, a real process, a real
//! release symlink), and readings from the past (`history`) against the real Prometheus
//! scraping the test workload, replayed through the engine as a small backtest.

use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::routing::get;
use rearguard::config::Config;
use rearguard::engine::{Effect, Engine, Input, Measure, Phase, Reading, ReadingState, Ts};
use rearguard::history::{self, HistoryError};
use rearguard::record;
use rearguard::recording::{self, Row};
use tokio_util::sync::CancellationToken;

use crate::promstack;
use crate::support;
use crate::workload::{Behaviour, Workload};

/// A recording destination the test can read while the recording runs.
#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Vec<u8>>>);

impl io::Write for Shared {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Shared {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).expect("the recording is UTF-8")
    }
}

fn now() -> Ts {
    Ts(SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64)
}

/// Release directories `v1` and `v2` with `current -> releases/v1`.
fn releases(dir: &Path) {
    for name in ["v1", "v2"] {
        std::fs::create_dir_all(dir.join("releases").join(name)).unwrap();
    }
    std::os::unix::fs::symlink("releases/v1", dir.join("current")).unwrap();
}

fn deploy(dir: &Path, release: &str) {
    let tmp = dir.join(".deploy");
    std::os::unix::fs::symlink(format!("releases/{release}"), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("current")).unwrap();
}

async fn health_server() -> support::TestServer {
    support::serve(Router::new().route("/health", get(|| async { "ok" }))).await
}

/// The rows of a recording, read back against its configuration.
fn read_back(cfg: &Config, text: &str) -> Vec<Row> {
    recording::read(cfg, text.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("the recording does not read back: {e}\n{text}"))
}

/// A signal's readings with their times, in the order written.
fn readings_of(rows: &[Row], signal: usize) -> Vec<(Ts, ReadingState)> {
    readings_seen(rows, signal)
        .into_iter()
        .map(|(at, _, state)| (at, state))
        .collect()
}

/// A signal's readings with their times and when they arrived, in the order written.
fn readings_seen(rows: &[Row], signal: usize) -> Vec<(Ts, Ts, ReadingState)> {
    rows.iter()
        .filter_map(|r| match &r.input {
            Input::Reading(Reading { signal: s, state }) if *s == signal => {
                Some((r.time, r.seen, state.clone()))
            }
            _ => None,
        })
        .collect()
}

fn rows_of(inputs: &[(Ts, Input)]) -> Vec<Row> {
    inputs.iter().cloned().map(Row::from).collect()
}

/// Each change's row time (when it was seen), earliest time, and revision.
fn changes_of(rows: &[Row]) -> Vec<(Ts, Ts, String)> {
    rows.iter()
        .filter_map(|r| match &r.input {
            Input::Change { revision, at, .. } => Some((r.time, *at, revision.clone())),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn recording_writes_every_signal_on_its_interval_and_the_changes_in_arrival_order() {
    let dir = support::temp_dir();
    releases(dir.path());
    let server = health_server().await;
    let cfg = support::config(&format!(
        r#"
[[target]]
name = "shop"
change = {{ type = "release_symlink", path = "{dir}/current", interval = "100ms" }}

[[signal]]
name = "health"
target = "shop"
type = "http_probe"
url = "{url}"
interval = "200ms"
timeout = "1s"

[[signal]]
name = "smoke"
target = "shop"
type = "exec"
command = ["/usr/bin/true"]
interval = "200ms"
timeout = "1s"
"#,
        dir = dir.path().display(),
        url = server.url("/health"),
    ));
    let out = Shared::default();
    let recording = record::record(
        &cfg,
        out.clone(),
        CancellationToken::new(),
        Some(Duration::from_secs(3)),
    );
    let moved = async {
        // The first revision reaches the file through the periodic flush, long before
        // the recording ends.
        support::poll_until(Duration::from_millis(2500), || {
            out.text().contains(",change,shop,,,v1,")
        })
        .await
        .unwrap_or_else(|_| panic!("v1 was not flushed while recording:\n{}", out.text()));
        let at = now();
        deploy(dir.path(), "v2");
        at
    };
    let (stats, deployed) = tokio::join!(recording, moved);
    let stats = stats.expect("the recording runs");
    let text = out.text();
    let rows = read_back(&cfg, &text);

    assert!(
        rows.windows(2).all(|w| w[0].seen <= w[1].seen),
        "rows out of arrival order:\n{text}"
    );
    let changes = changes_of(&rows);
    assert_eq!(
        changes
            .iter()
            .map(|(_, _, r)| r.as_str())
            .collect::<Vec<_>>(),
        ["v1", "v2"],
        "{text}"
    );
    // The change is stamped with the start of the observation that saw it, as the
    // daemon gives it to the engine, and happened after the observation before: at most
    // one observer interval (plus scheduling) before the move.
    let (seen, since) = (changes[1].0, changes[1].1);
    assert!(
        seen.0 + 50 >= deployed.0 && seen.0 <= deployed.0 + 500,
        "v2 seen at {seen}, moved at {deployed}"
    );
    assert!(
        since < seen && since.0 <= deployed.0 + 50 && since.0 + 500 >= deployed.0,
        "v2 since {since}, seen at {seen}, moved at {deployed}"
    );
    for signal in 0..2 {
        let readings = readings_of(&rows, signal);
        assert!(
            (13..=16).contains(&readings.len()),
            "signal {signal}: {} readings in 3s at 200ms:\n{text}",
            readings.len()
        );
        assert!(
            readings
                .iter()
                .all(|(_, s)| matches!(s, ReadingState::Value(Measure::Check { ok: true, .. }))),
            "{readings:?}"
        );
        let mut gaps: Vec<u64> = readings.windows(2).map(|w| w[1].0.0 - w[0].0.0).collect();
        assert!(
            gaps.iter().all(|g| (200..=400).contains(g)),
            "signal {signal}: gaps {gaps:?}"
        );
        gaps.sort_unstable();
        assert_eq!(
            gaps[gaps.len() / 2],
            200,
            "signal {signal}: readings are stamped with their scheduled tick"
        );
    }
    assert_eq!(stats.changes, 2);
    assert_eq!(stats.readings as usize, rows.len() - 2);
    assert_eq!(stats.first, rows.iter().map(|r| r.time).min());
    assert_eq!(stats.last, rows.last().map(|r| r.seen));
}

/// A slow sample holds nothing back: it is written when it arrives, after the readings
/// of later times that came first, with its scheduled time and its arrival in `seen`.
/// A sample still running at shutdown is abandoned, and the recording stops at once.
#[tokio::test]
async fn recording_writes_a_slow_sample_when_it_arrives_and_stops_promptly_on_shutdown() {
    let server = health_server().await;
    let cfg = support::config(&format!(
        r#"
[[target]]
name = "shop"

[[signal]]
name = "health"
target = "shop"
type = "http_probe"
url = "{url}"
interval = "100ms"
timeout = "1s"

[[signal]]
name = "slow"
target = "shop"
type = "exec"
command = ["/bin/sleep", "1"]
interval = "100ms"
timeout = "20s"

[[signal]]
name = "stuck"
target = "shop"
type = "exec"
command = ["/bin/sleep", "30"]
interval = "100ms"
timeout = "20s"
"#,
        url = server.url("/health"),
    ));
    let out = Shared::default();
    let shutdown = CancellationToken::new();
    let recording = tokio::spawn({
        let (cfg, out, shutdown) = (cfg.clone(), out.clone(), shutdown.clone());
        async move { record::record(&cfg, out, shutdown, None).await }
    });
    support::poll_until(Duration::from_secs(10), || {
        out.text().matches(",shop,slow,").count() >= 2
    })
    .await
    .unwrap_or_else(|_| panic!("two slow samples were not written:\n{}", out.text()));
    let stopping = tokio::time::Instant::now();
    shutdown.cancel();
    let stats = tokio::time::timeout(Duration::from_secs(3), recording)
        .await
        .expect("the recording stops within 3s of shutdown")
        .unwrap()
        .expect("the recording ends cleanly");
    assert!(stopping.elapsed() < Duration::from_secs(2));
    let text = out.text();
    let rows = read_back(&cfg, &text);
    let slow = readings_seen(&rows, 1);
    assert!(slow.len() >= 2, "{text}");
    assert!(
        slow.iter().all(|(at, seen, _)| seen.0 >= at.0 + 900),
        "a slow sample arrives a second after its time:\n{text}"
    );
    // The first slow sample was written after the health readings of the second it took.
    let first_slow = rows
        .iter()
        .position(|r| matches!(&r.input, Input::Reading(r) if r.signal == 1))
        .unwrap();
    let later_first = rows[..first_slow]
        .iter()
        .filter(|r| r.time > slow[0].0)
        .count();
    assert!(
        later_first >= 5,
        "{later_first} rows of later times first:\n{text}"
    );
    assert!(
        readings_of(&rows, 2).is_empty(),
        "the abandoned sample is not written"
    );
    assert_eq!(stats.readings as usize, rows.len());
    assert_eq!(stats.changes, 0);
}

// ---------------------------------------------------------------------------------------
// Readings from the past

/// A range of the workload as Prometheus saw it: before the first scrape, about five
/// seconds without errors, then errors at 30% until the error-rate query shows them.
struct Past {
    cfg: Config,
    prom: promstack::Server,
    from: Ts,
    /// When the errors began.
    switched: Ts,
    to: Ts,
}

const PAST_CONFIG: &str = r#"
[[target]]
name = "shop"

[[signal]]
name = "errors"
target = "shop"
type = "prometheus"
url = "{prom}"
window = "3s"
error_rate = { requests = 'http_requests_total{job="workload"}', errors = 'code=~"5.."' }

[[signal]]
name = "health"
target = "shop"
type = "http_probe"
url = "{prom}/-/healthy"

[[signal]]
name = "p95"
target = "shop"
type = "prometheus"
url = "{prom}"
window = "3s"
latency = { histogram = "http_request_duration_seconds_bucket", quantile = 0.95 }

[[rule]]
name = "error-spike"
signal = "errors"
when = "> 5%"
for = "2s"
"#;

fn rate_of(s: &ReadingState) -> Option<f64> {
    match s {
        ReadingState::Value(Measure::Rate { errors, requests }) => Some(errors / requests),
        _ => None,
    }
}

/// Samples `probe` every 100 ms until a reading satisfies `want`; returns when.
async fn sample_until(
    probe: &rearguard::source::prometheus::PrometheusSource,
    what: &str,
    want: impl Fn(&ReadingState) -> bool,
) -> Ts {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let r = probe.sample().await;
        if want(&r) {
            return now();
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("no reading with {what} within 30s; the last was {r:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn past() -> Past {
    let w = Workload::start(Behaviour::default()).await;
    let from = now();
    let prom = promstack::prometheus(&[w.target()], "1s", None, None).await;
    let cfg = support::config(&PAST_CONFIG.replace("{prom}", &prom.url()));
    let rearguard::config::SourceSpec::Prometheus(spec) = &cfg.signals[0].source else {
        unreachable!()
    };
    let probe = rearguard::source::prometheus::PrometheusSource::new(spec, Duration::from_secs(2));
    // About five seconds of healthy traffic as Prometheus sees it.
    let healthy_since =
        sample_until(&probe, "a zero error rate", |r| rate_of(r) == Some(0.0)).await;
    support::poll_until(Duration::from_secs(10), || {
        now().0 >= healthy_since.0 + 5000
    })
    .await
    .unwrap();
    w.set(Behaviour {
        error_fraction: 0.3,
        ..Behaviour::default()
    });
    let switched = now();
    sample_until(&probe, "an error rate above 20%", |r| {
        rate_of(r).is_some_and(|r| r > 0.2)
    })
    .await;
    // Two more scrapes, so the range ends well inside the errors.
    support::poll_until(Duration::from_secs(5), || now().0 >= switched.0 + 5000)
        .await
        .unwrap();
    let to = now();
    drop(w);
    Past {
        cfg,
        prom,
        from,
        switched,
        to,
    }
}

#[tokio::test]
async fn history_reads_the_error_rate_before_and_after_a_change_one_reading_per_step() {
    let p = past().await;
    let step = Duration::from_secs(1);
    let h = history::prometheus_range(&p.cfg, p.from, p.to, step)
        .await
        .unwrap_or_else(|e| panic!("{e}\nprometheus log:\n{}", p.prom.log()));
    assert_eq!(
        h.warnings,
        ["signal[1] (health): type \"http_probe\" has no history in prometheus; skipped"]
    );
    assert!(
        h.inputs.windows(2).all(|w| w[0].0 <= w[1].0),
        "sorted by time"
    );
    let steps = (p.to.0 / 1000 - p.from.0 / 1000 + 1) as usize;
    let rows = rows_of(&h.inputs);
    let errors = readings_of(&rows, 0);
    let p95 = readings_of(&rows, 2);
    assert_eq!(errors.len(), steps, "one reading per step");
    assert_eq!(p95.len(), steps, "one reading per step");
    assert!(readings_of(&rows, 1).is_empty());
    assert_eq!(errors[0].0, Ts(p.from.0 / 1000 * 1000));
    assert!(errors.windows(2).all(|w| w[1].0.0 - w[0].0.0 == 1000));
    // Before the first scrape there is nothing to read.
    assert_eq!(errors[0].1, ReadingState::NoData, "{errors:?}");
    // Low well before the switch, high well after it.
    let before: Vec<f64> = errors
        .iter()
        .filter(|(at, _)| at.0 + 1000 < p.switched.0)
        .filter_map(|(_, s)| rate_of(s))
        .collect();
    let after: Vec<f64> = errors
        .iter()
        .filter(|(at, _)| at.0 > p.switched.0 + 4000)
        .filter_map(|(_, s)| rate_of(s))
        .collect();
    assert!(
        before.len() >= 3 && before.iter().all(|r| *r < 0.01),
        "{errors:?}"
    );
    assert!(
        !after.is_empty() && after.iter().all(|r| *r > 0.2),
        "{errors:?}"
    );
    assert!(
        p95.iter().any(
            |(_, s)| matches!(s, ReadingState::Value(Measure::Number(v)) if *v > 0.0 && *v <= 0.025)
        ),
        "{p95:?}"
    );

    // A range of more steps than one query may have is read in several, none missing.
    let to = Ts(p.from.0 / 1000 * 1000 + 12_000);
    let h = history::prometheus_range(&p.cfg, p.from, to, Duration::from_millis(1))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let errors = readings_of(&rows_of(&h.inputs), 0);
    assert_eq!(errors.len(), 12_001);
    assert!(errors.windows(2).all(|w| w[1].0.0 - w[0].0.0 == 1));
}

#[tokio::test]
async fn history_names_the_signal_whose_promql_prometheus_rejects() {
    let w = Workload::start(Behaviour::default()).await;
    let prom = promstack::prometheus(&[w.target()], "1s", None, None).await;
    let cfg = support::config(&format!(
        r#"
[[target]]
name = "shop"

[[signal]]
name = "fine"
target = "shop"
type = "prometheus"
url = "{prom}"
query = "sum(up)"

[[signal]]
name = "broken"
target = "shop"
type = "prometheus"
url = "{prom}"
query = "sum(rate(http_requests_total[1m]"
"#,
        prom = prom.url()
    ));
    let to = now();
    let err = history::prometheus_range(
        &cfg,
        to.minus(Duration::from_secs(10)),
        to,
        Duration::from_secs(1),
    )
    .await
    .expect_err("the broken expression is rejected");
    assert!(
        matches!(&err, HistoryError::Query { index: 1, name, .. } if name == "broken"),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.starts_with(
            "signal[1] (broken): range query failed: prometheus rejected the query (bad_data)"
        ),
        "{text}"
    );
}

#[tokio::test]
async fn a_backtest_of_the_past_range_fires_the_error_rule_after_the_errors_began() {
    let p = past().await;
    let h = history::prometheus_range(&p.cfg, p.from, p.to, Duration::from_millis(500))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut engine = Engine::new(p.cfg.clone());
    let mut fired = None;
    for (at, input) in h.inputs {
        for effect in engine.step(input, at) {
            if let Effect::RuleChanged {
                rule: 0,
                transition,
            } = effect
                && transition.to == Phase::Firing
                && fired.is_none()
            {
                fired = Some((at, transition.evidence));
            }
        }
    }
    let (at, evidence) = fired.expect("the rule fires over the past range");
    assert!(
        at.0 >= p.switched.0 + 2000,
        "fired at {at}, before the errors began at {} held for 2s: {evidence}",
        p.switched
    );
    assert!(at <= p.to);
}

/// A `cgroup_oom` signal is recorded as the daemon watches it: here on a stand-in
/// `memory.events` in a temporary directory (no v2 memory controller can be had on the
/// test machines, see `cgroup_oom.rs`); two kills written while recording are two event
/// rows, which read back as two distinct events.
#[tokio::test]
async fn recording_writes_each_oom_kill_of_a_watched_cgroup_as_one_event() {
    let dir = support::temp_dir();
    let events = dir.path().join("memory.events");
    std::fs::write(&events, "oom 1\noom_kill 1\n").unwrap();
    let cfg = support::config(&format!(
        r#"
[daemon]
state_dir = "{dir}/state"

[[target]]
name = "shop"

[[signal]]
name = "oom"
target = "shop"
type = "cgroup_oom"
cgroup = "{dir}"
interval = "200ms"
"#,
        dir = dir.path().display()
    ));
    let out = Shared::default();
    let stop = CancellationToken::new();
    let recording = {
        let (cfg, out, stop) = (cfg.clone(), out.clone(), stop.clone());
        tokio::spawn(async move { record::record(&cfg, out, stop, None).await })
    };
    // The baseline is read first: a no-data row.
    let text = out.clone();
    support::poll_until(Duration::from_secs(10), || text.text().contains(",no_data"))
        .await
        .unwrap_or_else(|_| panic!("no baseline reading: {}", out.text()));
    std::fs::write(&events, "oom 3\noom_kill 3\n").unwrap();
    let text = out.clone();
    support::poll_until(Duration::from_secs(10), || {
        text.text()
            .lines()
            .filter(|l| l.contains(",value,"))
            .count()
            >= 2
    })
    .await
    .unwrap_or_else(|_| panic!("the two kills were not recorded: {}", out.text()));
    stop.cancel();
    recording.await.unwrap().unwrap();
    let rows = read_back(&cfg, &out.text());
    let kills: Vec<String> = readings_of(&rows, 0)
        .into_iter()
        .filter_map(|(_, s)| match s {
            ReadingState::Value(Measure::Event { key }) => Some(key),
            _ => None,
        })
        .collect();
    assert_eq!(kills.len(), 2, "{kills:?}");
    assert_ne!(kills[0], kills[1]);
}
