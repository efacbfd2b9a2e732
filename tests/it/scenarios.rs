//! The replay scenario corpus: every directory under `tests/scenarios/` holds a recording
//! (`readings.csv`), a configuration (`config.toml`) and the expected outcome
//! (`expect.toml`). Each is loaded with the real configuration loader, read with
//! `recording::read` and replayed with `replay::run`; a mismatch fails with the text
//! timeline. `tests/scenarios/generate.py` writes the recordings.
//!
//! `expect.toml`:
//! - `outcome`: `"rollback"` (a plan step ran, the first at or before `by` when given),
//!   `"quiet"` (no step ran and nobody was paged without one) or `"escalate"` (an
//!   incident was escalated and no step ran).
//! - optional `by` (RFC 3339), `incidents` (exact count), `breaker` (a circuit breaker
//!   is open at the end), `verified` (an incident ended rolled back and verified),
//!   `escalated` (an incident was escalated), `blind` (a blind incident opened),
//!   `steps` (`"succeed"` or `"fail"`, how replay answers steps; default succeed),
//!   `timeline` (texts the replay's text timeline must contain).

use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Format as _, Toml};
use rearguard::config::{self, Config};
use rearguard::engine::{Cause, Outcome, Ts};
use rearguard::recording;
use rearguard::replay::{self, Options, StepOutcome, Summary};

#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    outcome: Expected,
    by: Option<String>,
    incidents: Option<usize>,
    breaker: Option<bool>,
    verified: Option<bool>,
    escalated: Option<bool>,
    blind: Option<bool>,
    steps: Option<String>,
    /// Texts the replay's text timeline must contain.
    timeline: Option<Vec<String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
enum Expected {
    Rollback,
    Quiet,
    Escalate,
}

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scenarios")
}

/// Every scenario directory, sorted.
fn scenarios() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(corpus_dir())
        .expect("tests/scenarios exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    dirs
}

fn load_expect(dir: &Path) -> Expect {
    Figment::from(Toml::file(dir.join("expect.toml")))
        .extract()
        .unwrap_or_else(|e| panic!("{}: expect.toml: {e}", dir.display()))
}

/// A replayed scenario: its summary and its text timeline.
struct Replayed {
    summary: Summary,
    timeline: String,
}

fn replay_scenario(dir: &Path, steps: StepOutcome) -> Replayed {
    let cfg: Config = config::load(&dir.join("config.toml"))
        .unwrap_or_else(|e| panic!("{}: config.toml is invalid:\n{e}", dir.display()));
    let csv = std::fs::File::open(dir.join("readings.csv"))
        .unwrap_or_else(|e| panic!("{}: readings.csv: {e}", dir.display()));
    let mut timeline = String::new();
    let summary = replay::run(
        &cfg,
        recording::read(&cfg, std::io::BufReader::new(csv)),
        &Options { steps },
        &mut |at, effect| {
            if let Some(line) = replay::render_text(&cfg, at, effect) {
                timeline.push_str(&line);
                timeline.push('\n');
            }
        },
    )
    .unwrap_or_else(|e| panic!("{}: readings.csv: {e}", dir.display()));
    Replayed { summary, timeline }
}

fn step_outcome(expect: &Expect) -> StepOutcome {
    match expect.steps.as_deref() {
        None | Some("succeed") => StepOutcome::Succeed,
        Some("fail") => StepOutcome::Fail,
        Some(other) => panic!("steps is \"succeed\" or \"fail\", got {other:?}"),
    }
}

/// What differs between the expectation and the replay; empty when it matches.
fn mismatches(expect: &Expect, s: &Summary) -> Vec<String> {
    let mut bad = Vec::new();
    let first_step: Option<Ts> = s.incidents.iter().filter_map(|i| i.first_step_at).min();
    let escalated = s.incidents.iter().any(|i| i.escalated.is_some());
    match expect.outcome {
        Expected::Rollback => match (first_step, &expect.by) {
            (None, _) => bad.push("expected a rollback, but no plan step ran".to_owned()),
            (Some(at), Some(by)) => {
                let by = recording::parse_time(by).expect("`by` is an RFC 3339 time");
                if at > by {
                    bad.push(format!(
                        "expected a rollback by {by}, but it started at {at}"
                    ));
                }
            }
            (Some(_), None) => {}
        },
        Expected::Quiet => {
            if let Some(at) = first_step {
                bad.push(format!("expected quiet, but a rollback started at {at}"));
            }
            if escalated {
                bad.push("expected quiet, but an incident was escalated".to_owned());
            }
        }
        Expected::Escalate => {
            if let Some(at) = first_step {
                bad.push(format!(
                    "expected an escalation without acting, but a rollback started at {at}"
                ));
            }
            if !escalated {
                bad.push("expected an escalation, but no incident was escalated".to_owned());
            }
        }
    }
    if let Some(n) = expect.incidents
        && s.incidents.len() != n
    {
        bad.push(format!("expected {n} incidents, got {}", s.incidents.len()));
    }
    let checks = [
        (
            "breaker open at the end",
            expect.breaker,
            !s.breakers.is_empty(),
        ),
        (
            "an incident rolled back and verified",
            expect.verified,
            s.incidents
                .iter()
                .any(|i| i.outcome == Some(Outcome::RolledBack)),
        ),
        ("an incident escalated", expect.escalated, escalated),
        (
            "a blind incident",
            expect.blind,
            s.incidents.iter().any(|i| i.cause == Cause::Blind),
        ),
    ];
    for (what, want, got) in checks {
        if let Some(want) = want
            && want != got
        {
            bad.push(format!("expected {what}: {want}, got {got}"));
        }
    }
    bad
}

#[test]
fn every_scenario_of_the_corpus_ends_as_expected() {
    let dirs = scenarios();
    assert!(dirs.len() >= 9, "the corpus lost scenarios: {dirs:?}");
    let mut failures = String::new();
    for dir in &dirs {
        let expect = load_expect(dir);
        let run = replay_scenario(dir, step_outcome(&expect));
        let mut bad = mismatches(&expect, &run.summary);
        for text in expect.timeline.iter().flatten() {
            if !run.timeline.contains(text.as_str()) {
                bad.push(format!("expected the timeline to say {text:?}"));
            }
        }
        if !bad.is_empty() {
            failures.push_str(&format!(
                "\n=== {}: {}\n{}\n{}",
                dir.file_name().unwrap().to_string_lossy(),
                bad.join("; "),
                run.timeline,
                run.summary.render_text()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "scenarios did not end as expected:{failures}"
    );
}

#[test]
fn a_wrong_expectation_is_reported_as_a_mismatch() {
    let dir = corpus_dir().join("bad-deploy-8pct-errors");
    let run = replay_scenario(&dir, StepOutcome::Succeed);
    let right = load_expect(&dir);
    assert!(
        mismatches(&right, &run.summary).is_empty(),
        "{}",
        run.timeline
    );

    let quiet = Expect {
        outcome: Expected::Quiet,
        ..right.clone()
    };
    let bad = mismatches(&quiet, &run.summary);
    assert!(
        bad.iter()
            .any(|m| m.contains("expected quiet, but a rollback started")),
        "{bad:?}"
    );

    let too_early = Expect {
        by: Some("2026-11-22T10:05:30Z".to_owned()),
        ..right.clone()
    };
    let bad = mismatches(&too_early, &run.summary);
    assert!(
        bad.iter().any(|m| m.contains("expected a rollback by")),
        "{bad:?}"
    );

    let breaker = Expect {
        breaker: Some(true),
        incidents: Some(2),
        ..right
    };
    assert_eq!(mismatches(&breaker, &run.summary).len(), 2);
}

#[test]
fn failing_steps_turn_the_good_rollback_into_an_open_breaker() {
    let dir = corpus_dir().join("bad-deploy-8pct-errors");
    let run = replay_scenario(&dir, StepOutcome::Fail);
    let s = &run.summary;
    assert_eq!(s.breakers.len(), 1, "{}", run.timeline);
    assert!(
        s.incidents
            .iter()
            .all(|i| i.outcome != Some(Outcome::RolledBack)),
        "{}",
        run.timeline
    );
    assert!(
        run.timeline.contains(replay::FAIL_ERROR),
        "{}",
        run.timeline
    );
}
