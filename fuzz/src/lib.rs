//! What each fuzz target does with one input, and the invariants it asserts: the
//! configuration loader, the exposition parser of the scrape source, the Alertmanager
//! webhook receiver and the recording reader. The targets in `fuzz_targets/` are one call
//! each into this file, and the integration tests (`tests/it/fuzz_regressions.rs`)
//! include it to replay the committed corpora and crash regressions on stable, through
//! the same code.
//!
//! Every function takes the fuzzer's bytes and returns what the entry point said (the
//! error a rejected input got), so a regression test can assert a clear error. A broken
//! invariant is a panic, which is what the fuzzer reports. Nothing here writes a file,
//! opens a socket or reads a clock.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use rearguard::config::{self, Config, Format};
use rearguard::engine::{Measure, ReadingState, Ts};
use rearguard::recording::{self, Row};
use rearguard::source::alertmanager::{Delivery, Receiver};
use rearguard::source::scrape;

/// The configuration the webhook and recording targets read their inputs against.
const FIXTURE: &str = include_str!("../fixture.toml");

/// The webhook tokens of the fixture's Alertmanager signals.
pub const TOKEN_A: &str = "fuzz-token-a-0123456789";
pub const TOKEN_B: &str = "fuzz-token-b-9876543210";

/// The start of the fuzzers' engine time, 2026-11-22T10:00:00Z.
const START: Ts = Ts(1_795_341_600_000);

/// The directory relative secret files of a fuzzed configuration are read from: the
/// shipped examples', so that the examples in the corpus validate. This file is built
/// in the fuzz crate (`fuzz/`) and, by the integration tests, at the repository's root.
fn examples_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
        let root = if crate_dir.join("config").is_dir() {
            crate_dir.to_owned()
        } else {
            crate_dir.join("..")
        };
        root.join("config/examples")
    })
}

/// The fixture configuration, loaded once.
pub fn fixture() -> &'static Config {
    static CONFIG: OnceLock<Config> = OnceLock::new();
    CONFIG.get_or_init(|| {
        let env = [
            ("FUZZ_TOKEN_A".to_owned(), TOKEN_A.to_owned()),
            ("FUZZ_TOKEN_B".to_owned(), TOKEN_B.to_owned()),
        ];
        config::load_str(FIXTURE, Format::Toml, env, Path::new("."))
            .unwrap_or_else(|e| panic!("fuzz/fixture.toml does not load: {e}"))
    })
}

/// Configuration loading: the input is a configuration text, YAML when it starts with
/// `---` and TOML otherwise, then optionally a NUL and environment variables separated
/// by NULs (`REARGUARD_DAEMON__MODE=shadow`), which are both overrides and where
/// `env = "..."` secrets come from. A valid configuration is summarised as `check` does;
/// a rejected one has at least one error, each with a message.
pub fn config(data: &[u8]) -> Result<(), String> {
    let Ok(input) = std::str::from_utf8(data) else {
        return Err("not UTF-8".to_owned());
    };
    let (text, env) = input.split_once('\0').unwrap_or((input, ""));
    let env: Vec<(String, String)> = env
        .split('\0')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let format = if text.starts_with("---") {
        Format::Yaml
    } else {
        Format::Toml
    };
    match config::load_str(text, format, env, examples_dir()) {
        Ok(cfg) => {
            let summary = rearguard::cli::describe(Path::new("fuzz.toml"), &cfg);
            assert!(!summary.is_empty(), "a valid configuration has a summary");
            Ok(())
        }
        Err(errors) => {
            assert!(
                !errors.0.is_empty(),
                "a rejected configuration has an error"
            );
            for e in &errors.0 {
                assert!(
                    !e.message.is_empty(),
                    "an error without a message at {:?}",
                    e.path
                );
            }
            Err(errors.to_string())
        }
    }
}

/// The exposition parser, in the text format and in OpenMetrics. Every sample it
/// accepts has a metric name and distinct label names, and a series whose family is
/// declared a counter (`# TYPE`) is never negative.
pub fn exposition(data: &[u8]) -> [Result<usize, String>; 2] {
    let text = String::from_utf8_lossy(data);
    [false, true].map(|openmetrics| parse(&text, openmetrics))
}

fn parse(text: &str, openmetrics: bool) -> Result<usize, String> {
    let counters = declared_counters(text);
    let mut samples = 0;
    // Judged on the whole exposition: a later line may still refuse it.
    let mut negative = Vec::new();
    let parsed = scrape::exposition::parse_exposition(text, openmetrics, |line, sample| {
        samples += 1;
        let name = sample.name;
        assert!(!name.is_empty(), "line {line}: a sample without a name");
        for (i, (label, _)) in sample.labels.iter().enumerate() {
            assert!(
                !label.is_empty(),
                "line {line}: an empty label name on {name}"
            );
            assert!(
                sample.labels[..i].iter().all(|(other, _)| other != label),
                "line {line}: label {label} twice on {name}"
            );
        }
        // A counter's sample is the family's name in the text format, and the name with
        // `_total` in OpenMetrics; in the text format `NAME_total` is another, untyped
        // family, which may be negative.
        let counter = counters.iter().any(|c| {
            if openmetrics {
                name == format!("{c}_total")
            } else {
                name == *c
            }
        });
        if counter && sample.value < 0.0 {
            negative.push(format!(
                "line {line}: counter {name} accepted with the negative value {}",
                sample.value
            ));
        }
        Ok(())
    });
    // What the scrape source's own check says is what the parser said.
    let checked = scrape::check_exposition(text, openmetrics);
    match parsed {
        Ok(()) => {
            assert!(negative.is_empty(), "{}", negative.join("; "));
            assert_eq!(checked, Ok(samples));
            Ok(samples)
        }
        Err(e) => {
            assert_eq!(checked.as_ref(), Err(&e));
            Err(e.to_string())
        }
    }
}

/// The names `# TYPE NAME counter` lines declare.
fn declared_counters(text: &str) -> Vec<&str> {
    text.lines()
        .filter_map(|line| {
            let comment = line.trim_start_matches([' ', '\t']).strip_prefix('#')?;
            let mut words = comment.split([' ', '\t']).filter(|w| !w.is_empty());
            match (words.next(), words.next(), words.next()) {
                (Some("TYPE"), Some(name), Some("counter")) => Some(name),
                _ => None,
            }
        })
        .collect()
}

/// The Alertmanager webhook: the input is up to eight bodies separated by NULs, each
/// delivered a few minutes after the one before, alternately with the two tokens. An
/// accepted delivery reads only the signals its token is for, at most once each, as
/// checks, and counts no more than it was sent; a refusal is 400, 401 or 413 and never
/// shows a token.
pub fn webhook(data: &[u8]) -> Vec<Result<String, String>> {
    let cfg = fixture();
    let receiver = Receiver::new(cfg).expect("the fixture has alertmanager signals");
    let signals = receiver.signals();
    let mut results = Vec::new();
    for (i, body) in data.split(|b| *b == 0).take(8).enumerate() {
        let token = if i % 2 == 0 { TOKEN_A } else { TOKEN_B };
        let now = Ts(START.0 + i as u64 * 25 * 60 * 1000);
        let result = receiver.receive(Some(&format!("Bearer {token}")), body, now);
        results.push(match result {
            Ok(delivery) => {
                check_delivery(cfg, &signals, token, &delivery);
                Ok(delivery.to_string())
            }
            Err(rejection) => {
                assert!(matches!(rejection.status, 400 | 401 | 413), "{rejection:?}");
                for t in [TOKEN_A, TOKEN_B] {
                    assert!(!rejection.reason.contains(t), "a token in a rejection");
                }
                Err(rejection.reason)
            }
        });
    }
    for reading in receiver.current() {
        assert!(signals.contains(&reading.signal));
    }
    results
}

fn check_delivery(cfg: &Config, signals: &[usize], token: &str, delivery: &Delivery) {
    // The signals this token is for: in the fixture, A feeds two and B one.
    let allowed = if token == TOKEN_A { 2 } else { 1 };
    let pairs = delivery.applied + delivery.duplicates + delivery.stale + delivery.dropped;
    assert!(pairs <= delivery.alerts * allowed, "{delivery:?}");
    assert!(delivery.unmatched <= delivery.alerts, "{delivery:?}");
    assert!(delivery.readings.len() <= allowed, "{delivery:?}");
    for (i, reading) in delivery.readings.iter().enumerate() {
        assert!(signals.contains(&reading.signal), "{reading:?}");
        let name = &cfg.signals[reading.signal].name;
        let for_token = if token == TOKEN_A {
            name != "cart-alerts"
        } else {
            name == "cart-alerts"
        };
        assert!(
            for_token,
            "a reading of {name} from the other signal's token"
        );
        assert!(
            delivery.readings[..i]
                .iter()
                .all(|r| r.signal != reading.signal),
            "two readings of {name} from one delivery"
        );
        assert!(
            matches!(reading.state, ReadingState::Value(Measure::Check { .. })),
            "{reading:?}"
        );
    }
}

/// The recording reader: a recording read against the fixture, written back and read
/// again gives the same inputs, and writing those gives the same text.
pub fn recording(data: &[u8]) -> Result<usize, String> {
    let cfg = fixture();
    let rows = read(cfg, data)?;
    let written = write(cfg, &rows);
    let again = read(cfg, written.as_bytes())
        .unwrap_or_else(|e| panic!("a recording written back does not read: {e}\n{written}"));
    // Debug, not ==: a NaN reads back as NaN, which is not equal to itself.
    assert_eq!(format!("{rows:?}"), format!("{again:?}"), "{written}");
    assert_eq!(written, write(cfg, &again));
    Ok(rows.len())
}

fn read(cfg: &Config, data: &[u8]) -> Result<Vec<Row>, String> {
    recording::read(cfg, data)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())
}

fn write(cfg: &Config, rows: &[Row]) -> String {
    let mut out = Vec::new();
    let mut writer = recording::Writer::new(&mut out).expect("writing to memory");
    for row in rows {
        writer
            .row(cfg, row)
            .expect("a row that was read is written");
    }
    writer.flush().expect("writing to memory");
    drop(writer);
    String::from_utf8(out).expect("a recording is UTF-8")
}
