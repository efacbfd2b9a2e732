//! Benchmarks of the decision engine's two hot paths, from 10 to 100,000 rules: applying
//! one reading, and one tick. The method and the results are in `BENCHMARKS.md`.
//!
//! Goals: at least 1,000,000 readings per second on one core, and one tick over 10,000
//! rules in under 10 ms. Engines are built once per size from generated TOML and then
//! driven in a steady state in which no rule changes phase, which is how the engine
//! spends nearly all of its life.

use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{
    BenchmarkGroup, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main,
};
use rearguard::config::{Config, Format, load_str};
use rearguard::engine::{Engine, Input, Measure, Reading, ReadingState, Ts};

const SIZES: [usize; 5] = [10, 100, 1_000, 10_000, 100_000];

/// The sizes to run: all of them under `cargo bench`; under `cargo test`, which runs
/// each benchmark once to check that it works, only those that load in a moment.
fn sizes() -> impl Iterator<Item = usize> {
    let benching = std::env::args().any(|a| a == "--bench");
    SIZES.into_iter().filter(move |&n| benching || n <= 1_000)
}

/// 2026-11-18T11:06:40Z; any realistic time will do.
const T0: Ts = Ts(1_795_000_000_000);

/// Loads generated TOML as the daemon does, and says how long that took: the setup cost
/// of a large trigger table, which the benchmarks themselves do not include.
fn load(text: &str) -> Config {
    let started = Instant::now();
    let cfg = load_str(text, Format::Toml, std::iter::empty(), Path::new("."))
        .unwrap_or_else(|e| panic!("bench configuration: {e}"));
    eprintln!(
        "configuration of {} rules ({} bytes) loaded in {:.2} s",
        cfg.rules.len(),
        text.len(),
        started.elapsed().as_secs_f64()
    );
    cfg
}

const TARGET: &str = "[[target]]\nname = \"web\"\n";

/// `n` error-rate signals, each with one sustained rule, as the readings benchmark uses;
/// `extra` is added to every rule.
fn rate_rules(n: usize, extra: &str) -> Config {
    let mut text = String::from(TARGET);
    for i in 0..n {
        text.push_str(&format!(
            r#"
[[signal]]
name = "errors-{i}"
target = "web"
type = "prometheus"
url = "http://127.0.0.1:9090"
error_rate = {{ requests = "requests_{i}", errors = 'code=~"5.."' }}

[[rule]]
name = "errors-high-{i}"
signal = "errors-{i}"
when = "> 5%"
for = "5m"
min_requests = 20
{extra}
"#
        ));
    }
    load(&text)
}

/// `n` rules, a third each of sustained (rate), consecutive (check) and within (events),
/// one signal per rule, as the tick benchmark uses.
fn mixed_rules(n: usize) -> Config {
    let mut text = String::from(TARGET);
    for i in 0..n {
        let (signal, rule) = match i % 3 {
            0 => (
                r#"type = "prometheus"
url = "http://127.0.0.1:9090"
error_rate = { requests = "requests", errors = 'code=~"5.."' }"#,
                "when = \"> 5%\"\nfor = \"5m\"",
            ),
            1 => (
                "type = \"http_probe\"\nurl = \"http://127.0.0.1:8080/health\"",
                "consecutive = 3",
            ),
            _ => (
                "type = \"cgroup_oom\"\ncgroup = \"/sys/fs/cgroup/web.service\"",
                "when = \"> 3\"\nwithin = \"10m\"",
            ),
        };
        text.push_str(&format!(
            "\n[[signal]]\nname = \"s{i}\"\ntarget = \"web\"\n{signal}\n\n[[rule]]\nname = \"r{i}\"\nsignal = \"s{i}\"\n{rule}\n"
        ));
    }
    load(&text)
}

/// A reading of `errors` in 1000 requests.
fn rate(signal: usize, errors: f64) -> Input {
    Input::Reading(Reading {
        signal,
        state: ReadingState::Value(Measure::Rate {
            errors,
            requests: 1000.0,
        }),
    })
}

fn readings(c: &mut Criterion) {
    let mut group = c.benchmark_group("engine/reading");
    group.throughput(Throughput::Elements(1));
    for n in sizes() {
        let id = BenchmarkId::from_parameter(n);
        bench_readings(&mut group, id, rate_rules(n, ""), 1.0);
    }
    group.finish();
    // A rule that asks for confidence needs an exact binomial bound whenever the measured
    // rate is past its threshold: 60 errors in 1000 requests is above 5%, not surely.
    let mut group = c.benchmark_group("engine/reading_with_confidence");
    group.throughput(Throughput::Elements(1));
    let confident = || rate_rules(1_000, "confidence = \"95%\"");
    let id = BenchmarkId::new("below_threshold", 1_000);
    bench_readings(&mut group, id, confident(), 1.0);
    let id = BenchmarkId::new("above_threshold_unsure", 1_000);
    bench_readings(&mut group, id, confident(), 60.0);
    group.finish();
}

/// Feeds readings of `errors` in 1000 requests round-robin over the signals of `cfg`,
/// one per iteration.
fn bench_readings(
    group: &mut BenchmarkGroup<'_, WallTime>,
    id: BenchmarkId,
    cfg: Config,
    errors: f64,
) {
    let n = cfg.signals.len();
    let mut engine = Engine::new(cfg);
    let (mut i, mut t) = (0usize, T0);
    group.bench_function(id, |b| {
        b.iter(|| {
            i = (i + 1) % n;
            t.0 += 1;
            black_box(engine.step(rate(i, errors), t))
        })
    });
    assert!(
        engine.incidents().is_empty(),
        "no rule may fire in the readings benchmark"
    );
}

fn ticks(c: &mut Criterion) {
    let mut group = c.benchmark_group("engine/tick");
    for n in sizes() {
        let cfg = mixed_rules(n);
        let mut engine = Engine::new(cfg);
        // Every other within rule holds two distinct events (below its threshold of
        // three), recent enough that none expires during the benchmark.
        for signal in (2..n).step_by(6) {
            for key in ["pod-a", "pod-b"] {
                let event = ReadingState::Value(Measure::Event {
                    key: key.to_owned(),
                });
                engine.step(
                    Input::Reading(Reading {
                        signal,
                        state: event,
                    }),
                    T0,
                );
            }
        }
        let now = T0.plus(Duration::from_secs(60));
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| black_box(engine.step(Input::Tick, now)))
        });
        assert!(
            engine.incidents().is_empty(),
            "no rule may fire in the tick benchmark"
        );
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = readings, ticks
}
criterion_main!(benches);
