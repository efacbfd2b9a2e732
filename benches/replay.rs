//! How fast `rearguard replay` is: a week of 1-second readings of 100 rate signals (10
//! targets of 10 signals, each with one sustained rule), mostly healthy, with one bad
//! deploy that is rolled back and one outage long after a deploy that is escalated.
//! The method and the results are in `BENCHMARKS.md` ("Replay").
//!
//! It measures (a) a recording as CSV text through `recording::read` and `replay::run`,
//! and (b) already parsed inputs through `replay::run`: a day held in memory, and the
//! whole week generated on the fly. The CSV path is timed three times over one day and
//! once over the whole week (about 4 GB of text, held in memory).
//!
//! `harness = false`: it does nothing unless cargo runs it with `--bench`, so `cargo test
//! --all-targets` stays fast.

use std::hint::black_box;
use std::path::Path;
use std::time::Instant;

use rearguard::config::{Config, Format, load_str};
use rearguard::engine::{Input, Measure, Reading, ReadingState, Ts};
use rearguard::recording::{self, Row, RowError};
use rearguard::replay::{self, Options, Summary};

const TARGETS: usize = 10;
const SIGNALS_PER_TARGET: usize = 10;
const SIGNALS: usize = TARGETS * SIGNALS_PER_TARGET;
const DAY: u64 = 86_400;
const WEEK: u64 = 7 * DAY;
/// 2026-11-22T00:00:00Z.
const T0: u64 = 1_795_305_600;
/// A deploy of target 3 at 30h that serves 8% errors on its first signal until the
/// recording shows it rolled back 90 seconds later (30 seconds after the rollback).
const BAD_DEPLOY: (usize, u64, u64) = (3, 30 * 3600, 30 * 3600 + 90);
/// Target 7 fails (8% errors on its first signal) for 20 minutes at 20h, long after its
/// last deploy: escalated, not rolled back. Inside the first day, so that the day
/// measured over CSV has both incidents.
const OUTAGE: (usize, u64, u64) = (7, 20 * 3600, 20 * 3600 + 1200);

fn config() -> Config {
    let mut text = String::from(
        r#"
[daemon]
tick = "1s"

[[plan]]
name = "back"
[[plan.step]]
type = "exec"
command = ["/usr/local/bin/deploy", "{target}", "{to_revision}"]
[plan.verify]
window = "5m"

[[notifier]]
name = "log"
type = "log"

[[escalation]]
name = "on call"
on = ["opened", "rollback_started", "rollback_failed", "verification_failed", "not_rolled_back", "blind", "resolved"]
notify = ["log"]
"#,
    );
    for t in 0..TARGETS {
        text.push_str(&format!(
            "\n[[target]]\nname = \"svc-{t}\"\nplan = \"back\"\nblame_window = \"30m\"\n"
        ));
        for s in 0..SIGNALS_PER_TARGET {
            text.push_str(&format!(
                r#"
[[signal]]
name = "errors-{t}-{s}"
target = "svc-{t}"
type = "prometheus"
url = "http://127.0.0.1:9090"
interval = "1s"
error_rate = {{ requests = "requests_{t}_{s}", errors = 'code=~"5.."' }}

[[rule]]
name = "errors-high-{t}-{s}"
signal = "errors-{t}-{s}"
when = "> 5%"
for = "1m"
clear = "< 1%"
clear_for = "1m"
min_requests = 100
"#
            ));
        }
    }
    load_str(&text, Format::Toml, std::iter::empty(), Path::new("."))
        .unwrap_or_else(|e| panic!("bench configuration: {e}"))
}

/// The inputs of `secs` seconds, in time order, made on the fly: the revision of every
/// target at the start, then each second one reading of every signal (and the changes of
/// the bad deploy).
fn inputs(secs: u64) -> impl Iterator<Item = (Ts, Input)> {
    let change = |t: usize, rev: &str, at: Ts| Input::Change {
        target: t,
        revision: rev.to_owned(),
        at,
    };
    let start = (0..TARGETS).map(move |t| (Ts::from_secs(T0), change(t, "v1", Ts::from_secs(T0))));
    let readings = (0..secs).flat_map(move |sec| {
        let at = Ts::from_secs(T0 + sec);
        let (bt, deploy, back) = BAD_DEPLOY;
        let changes = [(deploy, "v2"), (back, "v1")]
            .into_iter()
            .filter(move |(when, _)| *when == sec)
            .map(move |(_, rev)| (at, change(bt, rev, at)));
        let readings = (0..SIGNALS).map(move |signal| {
            let target = signal / SIGNALS_PER_TARGET;
            let first = signal % SIGNALS_PER_TARGET == 0;
            let bad = first
                && ((target == bt && (deploy..back).contains(&sec))
                    || (target == OUTAGE.0 && (OUTAGE.1..OUTAGE.2).contains(&sec)));
            // Healthy signals wobble between 0.1% and 0.4% errors.
            let errors = if bad {
                80.0
            } else {
                1.0 + ((sec as usize + signal) % 4) as f64
            };
            let state = ReadingState::Value(Measure::Rate {
                errors,
                requests: 1000.0,
            });
            (at, Input::Reading(Reading { signal, state }))
        });
        changes.chain(readings)
    });
    start.chain(readings)
}

fn to_csv(cfg: &Config, secs: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(secs as usize * SIGNALS * 68);
    let mut w = recording::Writer::new(&mut out).unwrap();
    for (at, input) in inputs(secs) {
        match &input {
            Input::Reading(r) => w.reading(cfg, at, r).unwrap(),
            Input::Change {
                target, revision, ..
            } => w.change(cfg, at, *target, revision).unwrap(),
            _ => unreachable!(),
        }
    }
    w.flush().unwrap();
    drop(w);
    out
}

fn replay_all<R: Into<Row>>(
    cfg: &Config,
    rows: impl Iterator<Item = Result<R, RowError>>,
) -> (Summary, u64) {
    let mut effects = 0u64;
    let summary = replay::run(cfg, rows, &Options::default(), &mut |_, e| {
        black_box(e);
        effects += 1;
    })
    .unwrap();
    (summary, effects)
}

fn check(summary: &Summary, secs: u64) {
    assert_eq!(summary.readings, secs * SIGNALS as u64);
    let rolled_back = summary.incidents.iter().filter(|i| i.rolled_back).count();
    let escalated = summary
        .incidents
        .iter()
        .filter(|i| i.first_step_at.is_none())
        .count();
    let want_rollback = usize::from(secs > BAD_DEPLOY.2);
    assert_eq!(
        (rolled_back, escalated),
        (want_rollback, 1),
        "{}",
        summary.render_text()
    );
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn report(what: &str, readings: u64, times: Vec<f64>) -> f64 {
    let m = median(times.clone());
    let all: Vec<String> = times.iter().map(|t| format!("{t:.2}")).collect();
    println!(
        "{what}: {readings} readings, median {m:.2} s ({} M readings/s); runs: {} s",
        format_args!("{:.1}", readings as f64 / m / 1e6),
        all.join(", ")
    );
    m
}

fn timed<T>(f: impl FnOnce() -> T) -> (T, f64) {
    let start = Instant::now();
    let out = f();
    (out, start.elapsed().as_secs_f64())
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let started = Instant::now();
    let cfg = config();
    let day_readings = DAY * SIGNALS as u64;
    let week_readings = WEEK * SIGNALS as u64;

    let (csv, gen_secs) = timed(|| to_csv(&cfg, DAY));
    println!(
        "generated a day of CSV: {} rows, {:.0} MB in {gen_secs:.2} s",
        day_readings,
        csv.len() as f64 / 1e6
    );

    // (a) From CSV text: parsing and replaying, a day, three runs.
    let mut times = Vec::new();
    for _ in 0..3 {
        let ((summary, _), secs) =
            timed(|| replay_all(&cfg, recording::read(&cfg, csv.as_slice())));
        check(&summary, DAY);
        times.push(secs);
    }
    let csv_day = report(
        "(a) CSV -> recording::read -> replay::run, one day",
        day_readings,
        times,
    );
    println!(
        "    extrapolated to the week: {:.1} s",
        csv_day * WEEK as f64 / DAY as f64
    );

    // (b) Parsed inputs: the day above, held in memory.
    let parsed: Vec<Row> = recording::read(&cfg, csv.as_slice())
        .collect::<Result<_, _>>()
        .unwrap();
    drop(csv);
    let mut times = Vec::new();
    for _ in 0..3 {
        let ((summary, _), secs) = timed(|| replay_all(&cfg, parsed.iter().cloned().map(Ok)));
        check(&summary, DAY);
        times.push(secs);
    }
    report(
        "(b) parsed inputs -> replay::run, one day",
        day_readings,
        times,
    );
    drop(parsed);

    // (b) The whole week, generated on the fly (the generator's cost is included).
    let mut times = Vec::new();
    for _ in 0..3 {
        let ((summary, effects), secs) = timed(|| replay_all(&cfg, inputs(WEEK).map(Ok)));
        check(&summary, WEEK);
        if times.is_empty() {
            println!(
                "    the week: {} ticks, {} effects, {} incidents",
                (summary.ticked_until.unwrap().0 - T0 * 1000) / 1000 + 1,
                effects,
                summary.incidents.len()
            );
        }
        times.push(secs);
    }
    report(
        "(b) generated inputs -> replay::run, one week",
        week_readings,
        times,
    );
    // (a) The whole week from CSV, once: about 4 GB of text.
    let (csv, gen_secs) = timed(|| to_csv(&cfg, WEEK));
    println!(
        "generated a week of CSV: {:.0} MB in {gen_secs:.2} s",
        csv.len() as f64 / 1e6
    );
    let ((summary, _), secs) = timed(|| replay_all(&cfg, recording::read(&cfg, csv.as_slice())));
    check(&summary, WEEK);
    report(
        "(a) CSV -> recording::read -> replay::run, one week, one run",
        week_readings,
        vec![secs],
    );
    drop(csv);
    let (_, gen_only) = timed(|| inputs(WEEK).for_each(|x| drop(black_box(x))));
    println!("    generating the week's inputs alone: {gen_only:.2} s");
    println!("total bench time {:.0} s", started.elapsed().as_secs_f64());
}
