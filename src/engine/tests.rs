//! Table-driven tests of the decision engine, one `check_*` helper per area, and property
//! tests of the window invariants.
//!
//! Every input carries its own time, so nothing here sleeps or reads a clock. Scripts are
//! written in a small line language (see [`Run::line`]) and the effects are rendered as
//! short lines (see [`render`]), so that each test reads as the story it checks. An
//! expected line ending in `...` matches any rendered line that starts with the rest.

use std::path::Path;
use std::time::Duration;

use proptest::prelude::*;

mod baseline;
mod blindness;
mod config_change;
mod judgement;
mod judges;
mod verification;

use super::*;
use crate::config::units::{format_duration, parse_duration};
use crate::config::{self, Format, SignalKind};

/// An arbitrary start (November 2026), so that times look real and `Ts::minus` never
/// saturates at the epoch.
const T0_MS: u64 = 1_795_000_000_000; // 2026-11-18T11:06:40Z

fn at_ms(ms: u64) -> Ts {
    Ts(T0_MS + ms)
}

/// The target every test watches, as the keys after `name`; tests that need other
/// limits write their own.
const TARGET: &str = r#"
plan = "undo"
blame_window = "30m"
cooldown = "15m"
max_rollbacks = 3
rollback_period = "1h"
"#;

/// One signal of each kind the engine distinguishes: a rate, a number, a check, events.
const SIGNALS: &str = r#"
[[signal]]
name = "errors"
target = "web"
type = "prometheus"
url = "http://127.0.0.1:9090"
interval = "1m"
blind_after = "2m"
error_rate = { requests = 'http_requests_total', errors = 'code=~"5.."' }

[[signal]]
name = "latency"
target = "web"
type = "prometheus"
url = "http://127.0.0.1:9090"
interval = "1m"
latency = { histogram = "http_request_duration_seconds_bucket" }

[[signal]]
name = "health"
target = "web"
type = "http_probe"
url = "http://127.0.0.1:8080/health"
interval = "10s"

[[signal]]
name = "oom"
target = "web"
type = "cgroup_oom"
cgroup = "/sys/fs/cgroup/system.slice/web.service"
"#;

/// A two-step plan: the first step may be retried once and aborts the plan when it
/// keeps failing; the second is allowed to fail.
const PLAN: &str = r#"
[[plan]]
name = "undo"

[[plan.step]]
name = "switch"
type = "exec"
command = ["/usr/local/bin/switch-release", "{to_revision}"]
retries = 1
on_failure = "abort"

[[plan.step]]
name = "restart"
type = "exec"
command = ["/usr/bin/systemctl", "restart", "web"]
on_failure = "continue"

[plan.verify]
window = "5m"
"#;

/// The runbook's error-rate row, with a short `for` to keep scripts short.
const ERRORS_RULE: &str = r#"
[[rule]]
name = "errors-high"
signal = "errors"
when = "> 5%"
for = "2m"
"#;

/// Builds a configuration of target `web` with the given target keys, the standard
/// signals, and `rest` (rules, plans, escalation, daemon).
pub(super) fn config(target: &str, rest: &str) -> Config {
    let text = format!("[[target]]\nname = \"web\"\n{target}\n{SIGNALS}\n{rest}");
    config::load_str(&text, Format::Toml, std::iter::empty(), Path::new("."))
        .unwrap_or_else(|e| panic!("test configuration is invalid:\n{e}\n---\n{text}"))
}

/// The standard configuration for incident tests: the error rule and the two-step plan.
fn standard(rest: &str) -> Config {
    config(TARGET, &format!("{ERRORS_RULE}\n{PLAN}\n{rest}"))
}

/// Parses a time written as seconds (`90`) or a duration (`5m`, `3d2m`), into ms.
fn ms(text: &str) -> u64 {
    if text.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse::<u64>().expect("seconds") * 1000;
    }
    parse_duration(text)
        .unwrap_or_else(|e| panic!("bad time {text:?}: {e}"))
        .as_millis() as u64
}

/// `T` or the inclusive range `A..B/STEP`, in ms.
fn times(spec: &str) -> Vec<u64> {
    let Some((range, step)) = spec.split_once('/') else {
        return vec![ms(spec)];
    };
    let (a, b) = range
        .split_once("..")
        .unwrap_or_else(|| panic!("bad range {spec:?}"));
    (ms(a)..=ms(b)).step_by(ms(step) as usize).collect()
}

fn show_time(ms: u64) -> String {
    format_duration(Duration::from_millis(ms))
}

/// The reading state written as `obs` for a signal of kind `kind`.
fn observation(kind: SignalKind, obs: &str) -> ReadingState {
    match obs {
        "nodata" => return ReadingState::NoData,
        "error" => return ReadingState::SourceError("connection refused".to_owned()),
        "few" => return ReadingState::Insufficient { have: 3, need: 10 },
        _ => {}
    }
    let bad = || format!("{obs:?} is not a reading of a {} signal", kind.name());
    let number = |text: &str| text.parse::<f64>().unwrap_or_else(|_| panic!("{}", bad()));
    let measure = match kind {
        SignalKind::Rate => {
            let (e, n) = obs.split_once('/').unwrap_or_else(|| panic!("{}", bad()));
            Measure::Rate {
                errors: number(e),
                requests: number(n),
            }
        }
        SignalKind::Number => Measure::Number(number(obs)),
        SignalKind::Check => match obs {
            "ok" => Measure::Check {
                ok: true,
                detail: None,
            },
            "fail" => Measure::Check {
                ok: false,
                detail: Some("status 503".to_owned()),
            },
            _ => panic!("{}", bad()),
        },
        SignalKind::Event => Measure::Event {
            key: obs.to_owned(),
        },
    };
    ReadingState::Value(measure)
}

/// An engine driven by a script, with what it did rendered as lines.
struct Run {
    engine: Engine,
    lines: Vec<String>,
    effects: Vec<(Ts, Effect)>,
    last_order: Option<StepOrder>,
}

impl Run {
    fn new(cfg: Config) -> Run {
        Run {
            engine: Engine::new(cfg),
            lines: Vec::new(),
            effects: Vec::new(),
            last_order: None,
        }
    }

    fn script(&mut self, script: &str) {
        for line in script.lines() {
            let line = line.split('#').next().unwrap_or_default().trim();
            if !line.is_empty() {
                self.line(line);
            }
        }
    }

    /// Simulates a crash and a restart at `at` with configuration `cfg`: the memory taken
    /// after the last step goes through JSON (as the store keeps it) into a fresh engine.
    /// Output lines after the restart start with `restart`.
    fn restart(&mut self, cfg: Config, at: &str) {
        let last = self.effects.last().map_or(Ts(0), |(t, _)| *t);
        let json = serde_json::to_string(&self.engine.memory(last)).unwrap();
        let memory: Memory = serde_json::from_str(&json).unwrap();
        self.engine = Engine::new(cfg);
        self.last_order = None;
        let t = times(at)[0];
        self.lines.push(format!("{} restart", show_time(t)));
        let effects = self.engine.restore(memory, at_ms(t));
        self.record(effects, t);
    }

    /// A reload at `at` with configuration `cfg`, as the daemon does it: the same engine's
    /// knowledge handed to the engine of the new configuration. Output lines after it
    /// start with `reload`.
    fn reload(&mut self, cfg: Config, at: &str) {
        let t = times(at)[0];
        let engine = std::mem::replace(&mut self.engine, Engine::new(cfg.clone()));
        assert!(
            !engine.acting(),
            "the daemon reloads only while no step runs"
        );
        let (engine, effects) = engine.reconfigure(cfg, at_ms(t));
        self.engine = engine;
        self.lines.push(format!("{} reload", show_time(t)));
        self.record(effects, t);
    }

    /// One script line: `TIME VERB ARGS`, TIME being `90`, `5m` or `A..B/STEP`. Verbs:
    /// a signal name and a reading (`errors 10/100`, `latency 0.3`, `health fail`,
    /// `oom pod-1`, `errors nodata|error|few`), `tick`, `change REV`, `done ok|fail`
    /// (the last ordered step), `done STEP ATTEMPT ok|fail`, `ack`, `resolve` (the
    /// newest open incident), `clear-breaker`, `pause [all]`, `resume [all]`.
    fn line(&mut self, line: &str) {
        let mut words = line.split_whitespace();
        let when = words.next().expect("a time");
        let verb = words
            .next()
            .unwrap_or_else(|| panic!("no verb in {line:?}"));
        let args: Vec<&str> = words.collect();
        for t in times(when) {
            let input = self.input(verb, &args, t);
            self.feed(input, t);
        }
    }

    fn input(&self, verb: &str, args: &[&str], now: u64) -> Input {
        let by = "alice".to_owned();
        let newest = || {
            self.engine
                .incidents()
                .last()
                .map_or("none".to_owned(), |i| i.id.clone())
        };
        let all = args.first() == Some(&"all");
        match verb {
            "tick" => Input::Tick,
            // `change REV` happened when seen; `change REV since T` happened at T at
            // the earliest, as a polling observer reports it.
            "change" => Input::Change {
                target: 0,
                revision: args[0].to_owned(),
                at: at_ms(match args {
                    [_, "since", t] => times(t)[0],
                    _ => now,
                }),
            },
            "done" => {
                let order = self.last_order.clone().expect("a step was ordered");
                let (step, attempt, verdict) = match args {
                    [v] => (order.step, order.attempt, *v),
                    [s, a, v] => (s.parse().unwrap(), a.parse().unwrap(), *v),
                    _ => panic!("done takes ok|fail or STEP ATTEMPT ok|fail"),
                };
                let ok = verdict == "ok";
                Input::StepDone(StepResult {
                    incident: order.incident,
                    step,
                    attempt,
                    ok,
                    duration_ms: 1200,
                    output: String::new(),
                    error: (!ok).then(|| "exit status 1".to_owned()),
                })
            }
            "ack" => Input::Command(Command::Acknowledge {
                incident: newest(),
                by,
            }),
            "resolve" => Input::Command(Command::Resolve {
                incident: newest(),
                by,
            }),
            "clear-breaker" => Input::Command(Command::ClearBreaker { target: 0, by }),
            "rollback" => Input::Command(Command::Rollback {
                incident: newest(),
                by,
            }),
            // `silence DURATION` or `unsilence`: the first rule.
            "silence" => Input::Command(Command::Silence {
                rule: 0,
                for_: Duration::from_millis(ms(args[0])),
                by,
            }),
            "unsilence" => Input::Command(Command::Silence {
                rule: 0,
                for_: Duration::ZERO,
                by,
            }),
            "pause" => Input::Command(Command::Pause {
                target: (!all).then_some(0),
                by,
            }),
            "resume" => Input::Command(Command::Resume {
                target: (!all).then_some(0),
                by,
            }),
            signal => {
                let cfg = self.engine.config();
                let s = cfg
                    .signal_index(signal)
                    .unwrap_or_else(|| panic!("unknown verb or signal {signal:?}"));
                let obs = args
                    .first()
                    .unwrap_or_else(|| panic!("{signal} needs a reading"));
                Input::Reading(Reading {
                    signal: s,
                    state: observation(cfg.signals[s].kind(), obs),
                })
            }
        }
    }

    fn feed(&mut self, input: Input, t: u64) -> Vec<Effect> {
        let effects = self.engine.step(input, at_ms(t));
        self.record(effects, t)
    }

    fn record(&mut self, effects: Vec<Effect>, t: u64) -> Vec<Effect> {
        for e in &effects {
            if let Effect::RunStep(order) = e {
                self.last_order = Some(order.clone());
            }
            if let Some(text) = render(self.engine.config(), e) {
                self.lines.push(format!("{} {text}", show_time(t)));
            }
            self.effects.push((at_ms(t), e.clone()));
        }
        effects
    }

    fn output(&self) -> String {
        self.lines.join("\n")
    }

    /// How many steps were ordered at or after `at`.
    fn steps_ordered_after(&self, at: &str) -> usize {
        let from = at_ms(times(at)[0]);
        self.effects
            .iter()
            .filter(|(t, e)| *t >= from && matches!(e, Effect::RunStep(_)))
            .count()
    }
}

/// The effects a reader of a test cares about, in one short line each; `None` for the
/// rest (most timeline lines).
fn render(cfg: &Config, e: &Effect) -> Option<String> {
    Some(match e {
        Effect::RuleChanged {
            rule,
            transition: t,
        } => {
            format!(
                "rule {} {} -> {}",
                cfg.rules[*rule].name,
                t.from.name(),
                t.to.name()
            )
        }
        Effect::ChangeObserved {
            from,
            to,
            previous_healthy,
            ..
        } => format!(
            "change {from} -> {to} ({from} {})",
            if *previous_healthy {
                "healthy"
            } else {
                "unhealthy"
            }
        ),
        Effect::Timeline { entry, .. } => match entry.kind {
            EntryKind::Decision => format!(
                "escalated: {}",
                entry
                    .text
                    .strip_prefix("escalated without acting: ")
                    .or_else(|| entry.text.strip_prefix("escalated: "))?
            ),
            EntryKind::Verification => entry.text.clone(),
            _ => return None,
        },
        // Each transition is also a notification or a timeline line shown here.
        Effect::Transition { .. } => return None,
        Effect::RunStep(o) => format!(
            "run step {} attempt {} ({} -> {})",
            o.step,
            o.attempt,
            o.from_revision.as_deref().unwrap_or("?"),
            o.to_revision.as_deref().unwrap_or("?")
        ),
        Effect::Notify(n) => match n.level {
            Some(l) => format!("notify {} ({})", n.occasion.name(), cfg.escalation[l].name),
            None if n.notifiers.is_empty() => format!("notify {}", n.occasion.name()),
            None => format!(
                "notify {} -> {}",
                n.occasion.name(),
                n.notifiers
                    .iter()
                    .map(|&i| cfg.notifiers[i].name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        },
        Effect::IncidentClosed(i) => {
            let outcome = match i.outcome.as_ref()? {
                Outcome::RolledBack => "rolled back".to_owned(),
                Outcome::RolledBackUnverified => "rolled back, not verified".to_owned(),
                Outcome::Recovered => "recovered".to_owned(),
                Outcome::ResolvedByOperator(by) => format!("resolved by {by}"),
                Outcome::Interrupted => "interrupted".to_owned(),
            };
            format!("closed {:?} incident: {outcome}", i.cause)
        }
        Effect::CommandRejected { reason } => format!("rejected: {reason}"),
        Effect::Baked { revision, .. } => format!("baked {revision}"),
    })
}

/// Asserts that `actual` lines match `expected` lines, in order and in number. An
/// expected line ending in `...` is a prefix.
fn assert_lines(actual: &str, expected: &str) {
    let want: Vec<&str> = expected
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let got: Vec<&str> = actual.lines().collect();
    let matches = |w: &str, g: &str| match w.strip_suffix("...") {
        Some(prefix) => g.starts_with(prefix),
        None => w == g,
    };
    let same = want.len() == got.len() && want.iter().zip(&got).all(|(w, g)| matches(w, g));
    assert!(
        same,
        "effects differ\n--- expected\n{}\n--- actual\n{actual}\n",
        want.join("\n")
    );
}

/// Runs `script` against `cfg` and checks the rendered effects. Returns the run so that
/// a test can look at the engine's state afterwards.
fn check_incident(cfg: Config, script: &str, expected: &str) -> Run {
    let mut run = Run::new(cfg);
    run.script(script);
    assert_lines(&run.output(), expected);
    run
}

// ---------------------------------------------------------------------------------------
// Rules: one rule, a sequence of readings, the phase after each.
// ---------------------------------------------------------------------------------------

/// Feeds `script` (space-separated `TIME:OBS` tokens, `OBS` as in [`observation`] or
/// `tick`) to a one-rule engine and checks the phase after each token: `o`k,
/// `p`ending or `f`iring. The rule is given as its keys after `name`.
fn check_rule(rule: &str, script: &str, expected: &str) {
    let cfg = config("", &format!("[[rule]]\nname = \"r\"\n{rule}"));
    let signal = cfg.rules[0].signal;
    let kind = cfg.signals[signal].kind();
    let mut engine = Engine::new(cfg);
    let mut phases = Vec::new();
    for token in script.split_whitespace() {
        let (when, obs) = token
            .split_once(':')
            .unwrap_or_else(|| panic!("bad token {token:?}"));
        for t in times(when) {
            let input = match obs {
                "tick" => Input::Tick,
                _ => Input::Reading(Reading {
                    signal,
                    state: observation(kind, obs),
                }),
            };
            engine.step(input, at_ms(t));
            phases.push(&engine.rule_phase(0).name()[..1]);
        }
    }
    let actual = phases.join(" ");
    assert_eq!(
        actual, expected,
        "phases after each reading of {script:?}\nrule:\n{rule}"
    );
}

const SUSTAINED: &str = r#"signal = "errors"
when = "> 5%"
for = "5m""#;

#[test]
fn sustained_rule_fires_at_the_first_evaluation_at_least_for_after_the_first_breach() {
    check_rule(SUSTAINED, "0..5m/1m:10/100", "p p p p p f");
    // Irregular evaluations: 4m59s is not yet 5m; 5m is.
    check_rule(
        SUSTAINED,
        "0..4m/1m:10/100 4m59s:10/100 5m:10/100",
        "p p p p p p f",
    );
    // The first evaluation past 5m fires, as long as none came later than the signal's
    // gap tolerance (1.5 intervals) after the one before; a longer silence restarts it.
    check_rule(
        SUSTAINED,
        "0:10/100 1m30s:10/100 3m:10/100 4m30s:10/100 6m:10/100",
        "p p p p f",
    );
    check_rule(SUSTAINED, "0:10/100 4m:10/100 7m:10/100", "p p p");
    // The streak starts at the first breaching evaluation, not at an earlier good one.
    check_rule(SUSTAINED, "0:1/100 1m..6m/1m:10/100", "o p p p p p f");
}

#[test]
fn sustained_rule_with_zero_for_fires_on_the_first_breach() {
    check_rule(
        "signal = \"errors\"\nwhen = \"> 5%\"\nfor = \"0s\"",
        "0:1/100 1m:10/100",
        "o f",
    );
}

#[test]
fn blip_shorter_than_for_does_not_fire() {
    check_rule(
        SUSTAINED,
        "0:1/100 1m..4m/1m:10/100 5m..10m/1m:1/100",
        "o p p p p o o o o o o",
    );
}

#[test]
fn one_good_evaluation_resets_a_pending_sustained_rule() {
    // Breaching from 0 to 4m, good at 5m, breaching again from 6m: fires at 11m, not 5m.
    check_rule(
        SUSTAINED,
        "0..4m/1m:10/100 5m:1/100 6m..11m/1m:10/100",
        "p p p p p o p p p p p f",
    );
}

#[test]
fn consecutive_rule_fires_after_n_breaches_in_a_row() {
    let rule = "signal = \"health\"\nconsecutive = 3";
    check_rule(rule, "0:fail 10:fail 20:fail", "p p f");
    check_rule(
        rule,
        "0:fail 10:fail 20:ok 30:fail 40:fail 50:fail",
        "p p o p p f",
    );
    check_rule(rule, "0:ok 10:fail 20:ok 30:fail 40:ok", "o p o p o");
}

#[test]
fn m_of_n_rule_fires_when_m_of_the_last_n_evaluations_breach() {
    let rule = "signal = \"health\"\nm_of_n = [2, 3]";
    check_rule(rule, "0:fail 10:ok 20:fail", "p p f");
    check_rule(rule, "0:fail 10:fail", "p f");
    // A breach that slid out of the last three no longer counts.
    check_rule(rule, "0:fail 10:ok 20:ok 30:fail", "p p p p");
    check_rule(rule, "0:fail 10:ok 20:ok 30:ok", "p p p o");
    check_rule(rule, "0:fail 10:ok 20:ok 30:fail 40:fail", "p p p p f");
}

#[test]
fn within_rule_counts_distinct_event_keys_in_the_window() {
    let rule = "signal = \"oom\"\nwhen = \"> 2\"\nwithin = \"5m\"";
    check_rule(rule, "0:pod-a 1m:pod-b 2m:pod-c", "o o f");
    // The same pod killed again is the same event.
    check_rule(rule, "0:pod-a 1m:pod-a 2m:pod-a 3m:pod-b", "o o o o");
    check_rule(rule, "0:pod-a 1m:pod-b 2m:pod-a 3m:pod-c", "o o o f");
    // An event older than the window is forgotten when the next one arrives.
    check_rule(rule, "0:pod-a 1m:pod-b 6m:pod-c", "o o o");
}

#[test]
fn within_rule_events_expire_on_tick() {
    let rule = "signal = \"oom\"\nwhen = \"> 2\"\nwithin = \"5m\"";
    // At 5m the event of 0 is still inside the window (its edge is inclusive); a
    // millisecond later it has expired and two events remain.
    check_rule(
        rule,
        "0:pod-a 1m:pod-b 2m:pod-c 4m:tick 5m:tick 5m1ms:tick",
        "o o f f f o",
    );
    check_rule(
        rule,
        "0:pod-a 1m:pod-b 2m:pod-c 10m:tick 11m:pod-d",
        "o o f o o",
    );
}

#[test]
fn clear_condition_gives_hysteresis() {
    let rule = "signal = \"errors\"\nwhen = \"> 5%\"\nfor = \"0s\"\nclear = \"< 1%\"";
    // 3% neither fires nor clears: a firing rule stays firing, an ok rule stays ok.
    check_rule(
        rule,
        "0:10/100 1m:3/100 2m:3/100 3m:0/100 4m:3/100",
        "f f f o o",
    );
    // Without a clear condition, the negation of `when` clears.
    check_rule(
        "signal = \"errors\"\nwhen = \"> 5%\"\nfor = \"0s\"",
        "0:10/100 1m:3/100",
        "f o",
    );
}

#[test]
fn clear_for_needs_the_clear_condition_on_every_evaluation_for_that_long() {
    let rule = "signal = \"errors\"\nwhen = \"> 5%\"\nfor = \"0s\"\nclear_for = \"3m\"";
    // Clear from 1m, broken at 3m, clear again from 4m: clears at 7m.
    check_rule(
        rule,
        "0:10/100 1m:1/100 2m:1/100 3m:10/100 4m..7m/1m:1/100",
        "f f f f f f f o",
    );
    check_rule(rule, "0:10/100 1m..4m/1m:1/100", "f f f f o");
}

#[test]
fn counters_reset_after_a_clear_so_a_fresh_breach_needs_the_full_bound_again() {
    check_rule(
        SUSTAINED,
        "0..5m/1m:10/100 6m:1/100 7m..12m/1m:10/100",
        "p p p p p f o p p p p p f",
    );
    check_rule(
        "signal = \"health\"\nconsecutive = 3",
        "0:fail 10:fail 20:fail 30:ok 40:fail 50:fail 60:fail",
        "p p f o p p f",
    );
    // Without the reset the two breaches before the clear would still fill the window.
    check_rule(
        "signal = \"health\"\nm_of_n = [2, 4]",
        "0:fail 10:fail 20:ok 30:fail 40:ok 50:fail",
        "p f o p p f",
    );
}

#[test]
fn within_rule_with_clear_for_clears_only_after_the_count_stayed_low_that_long() {
    let rule = "signal = \"oom\"\nwhen = \"> 1\"\nwithin = \"2m\"\nclear_for = \"1m\"";
    check_rule(
        rule,
        "0:pod-a 1m:pod-b 3m1s:tick 3m30s:tick 4m1s:tick",
        "o f f f o",
    );
}

#[test]
fn no_data_follows_the_rules_policy() {
    let rule = |policy: &str| {
        format!("signal = \"errors\"\nwhen = \"> 5%\"\nfor = \"2m\"\nno_data = \"{policy}\"")
    };
    // hold: no data is no evidence: the rule stays pending, and proves `for` again
    // from the next breaching reading.
    check_rule(&rule("hold"), "0:10/100 1m:nodata 2m:10/100", "p p p");
    check_rule(
        &rule("hold"),
        "0:10/100 1m:nodata 2m..4m/1m:10/100",
        "p p p p f",
    );
    check_rule(&rule("hold"), "0..5m/1m:nodata", "o o o o o o");
    // breach: no data counts as breaching.
    check_rule(&rule("breach"), "0..2m/1m:nodata", "p p f");
    // ok: no data counts as good and resets the streak.
    check_rule(
        &rule("ok"),
        "0:10/100 1m:nodata 2m..4m/1m:10/100",
        "p o p p f",
    );
    // A rate over zero requests, or with a NaN error count, is no data.
    check_rule(&rule("breach"), "0:0/0 1m:nan/100 2m:0/0", "p p f");
    check_rule(&rule("hold"), "0:10/100 1m:0/0 2m:10/100", "p p p");
}

#[test]
fn no_data_while_firing_follows_the_policy_too() {
    let rule = |policy: &str| {
        format!("signal = \"errors\"\nwhen = \"> 5%\"\nfor = \"0s\"\nno_data = \"{policy}\"")
    };
    check_rule(&rule("hold"), "0:10/100 1m:nodata 2m:nodata", "f f f");
    check_rule(&rule("breach"), "0:10/100 1m:nodata 2m:nodata", "f f f");
    check_rule(&rule("ok"), "0:10/100 1m:nodata", "f o");
}

#[test]
fn nan_is_no_data() {
    let rule = |policy: &str| {
        format!("signal = \"latency\"\nwhen = \"> 200ms\"\nfor = \"2m\"\nno_data = \"{policy}\"")
    };
    check_rule(&rule("hold"), "0:0.3 1m:nan 2m:0.3", "p p p");
    check_rule(&rule("breach"), "0:nan 1m:nan 2m:nan", "p p f");
    check_rule(&rule("ok"), "0:0.3 1m:nan 2m:0.3", "p o p");
    // Unlike NaN, infinity is a value, and a large one.
    check_rule(&rule("hold"), "0:inf 1m:inf 2m:inf", "p p f");
}

#[test]
fn insufficient_samples_follow_the_insufficient_policy() {
    let rule = |policy: &str| {
        format!("signal = \"errors\"\nwhen = \"> 5%\"\nfor = \"1m\"\ninsufficient = \"{policy}\"")
    };
    check_rule(&rule("hold"), "0:10/100 30:few 1m:10/100", "p p p");
    check_rule(&rule("breach"), "0:few 1m:few", "p f");
    check_rule(&rule("ok"), "0:10/100 30:few 1m:10/100", "p o p");
}

#[test]
fn source_errors_never_breach_whatever_the_policies() {
    let rule = "signal = \"errors\"\nwhen = \"> 5%\"\nfor = \"0s\"\nno_data = \"breach\"\ninsufficient = \"breach\"";
    check_rule(rule, "0..10m/1m:error", "o o o o o o o o o o o");
    // Nor do they clear a firing rule. A pending rule stays pending through them, but
    // the time it could not see is not time in breach: it proves `for` again after.
    let ok_policies = "signal = \"errors\"\nwhen = \"> 5%\"\nfor = \"0s\"\nno_data = \"ok\"\ninsufficient = \"ok\"";
    check_rule(ok_policies, "0:10/100 1m:error 2m:error", "f f f");
    check_rule(
        SUSTAINED,
        "0:10/100 1m..4m/1m:error 5m:10/100",
        "p p p p p p",
    );
}

#[test]
fn one_error_in_three_requests_does_not_fire_with_min_requests() {
    let guarded = "signal = \"errors\"\nwhen = \"> 5%\"\nfor = \"0s\"\nmin_requests = 20";
    check_rule(guarded, "0..2m/1m:1/3", "o o o");
    check_rule(guarded, "0:2/20", "f");
    // The guard is what keeps it quiet: without it 33% fires at once.
    check_rule(
        "signal = \"errors\"\nwhen = \"> 5%\"\nfor = \"0s\"",
        "0:1/3",
        "f",
    );
    // With insufficient = "breach", a small sample counts as a breach instead.
    check_rule(
        &format!("{guarded}\ninsufficient = \"breach\""),
        "0:0/3",
        "f",
    );
}

#[test]
fn confidence_requires_a_sample_large_enough_to_be_sure() {
    let rule = "signal = \"errors\"\nwhen = \"> 5%\"\nfor = \"0s\"\nconfidence = \"95%\"";
    // 8% of 100: the exact one-sided 95% lower bound is 4.0%, below 5%; for 1 of 3
    // it is 1.7%.
    check_rule(rule, "0:8/100", "o");
    check_rule(rule, "0:1/3", "o");
    // 8% of 1000: the lower bound is 6.6%, above 5%.
    check_rule(rule, "0:80/1000", "f");
    // Clearing judges the measured rate, so 4% of a small sample clears.
    check_rule(rule, "0:80/1000 1m:2/50", "f o");
}

#[test]
fn evidence_of_a_confident_breach_names_the_bound() {
    let cfg = config(
        "",
        "[[rule]]\nname = \"r\"\nsignal = \"errors\"\nwhen = \"> 5%\"\nfor = \"0s\"\nconfidence = \"95%\"",
    );
    let mut engine = Engine::new(cfg);
    let reading = |errors| {
        Input::Reading(Reading {
            signal: 0,
            state: ReadingState::Value(Measure::Rate {
                errors,
                requests: 1000.0,
            }),
        })
    };
    let evidence = |effects: Vec<Effect>| {
        effects.into_iter().find_map(|e| match e {
            Effect::RuleChanged { transition, .. } => Some(transition.evidence),
            _ => None,
        })
    };
    assert_eq!(
        evidence(engine.step(reading(80.0), at_ms(0))).as_deref(),
        Some("8% (80/1000 requests, lower bound at 95% 6.632%); fires when > 5% for 0s")
    );
    assert_eq!(
        evidence(engine.step(reading(10.0), at_ms(60_000))).as_deref(),
        Some("1% (10/1000 requests); clears when <= 5%")
    );
}

// ---------------------------------------------------------------------------------------
// Baselines: a multiple of what the signal looked like before the latest change.
// ---------------------------------------------------------------------------------------

/// Like [`check_incident`] with a target that has no plan, so that a firing rule opens
/// an incident that is escalated at once, and one baseline rule on latency.
fn check_baseline(rule_keys: &str, script: &str, expected: &str) {
    let rule = format!(
        "[[rule]]\nname = \"slower\"\nsignal = \"latency\"\nwhen = \"> 1.5x baseline\"\nfor = \"0s\"\n{rule_keys}"
    );
    check_incident(config("", &rule), script, expected);
}

#[test]
fn baseline_is_the_median_of_the_window_before_the_change() {
    // Eight readings of 100ms and two of 900ms: the median is 100ms (the mean would be
    // 260ms), so 160ms is more than 1.5x baseline and 140ms is not.
    check_baseline(
        "baseline_window = \"10m\"",
        "
        0 change v1
        0..7m/1m latency 0.1
        8m..9m/1m latency 0.9
        10m change v2
        11m latency 0.14
        12m latency 0.16
        ",
        "
        10m change v1 -> v2 (v1 healthy)
        12m rule slower ok -> firing
        12m notify opened
        12m escalated: no rollback plan is configured for this target
        12m notify not_rolled_back
        ",
    );
}

#[test]
fn baseline_ignores_values_older_than_its_window_and_after_the_change() {
    check_baseline(
        "baseline_window = \"10m\"",
        "
        0 change v1
        0..15m/1m latency 1.0    # too old at the change
        20m..29m/1m latency 0.1
        30m change v2
        31m..40m/1m latency 0.2  # after the change: not part of the baseline
        ",
        "
        30m change v1 -> v2 (v1 healthy)
        31m rule slower ok -> firing
        31m notify opened
        31m escalated: ...
        31m notify not_rolled_back
        ",
    );
}

#[test]
fn without_a_baseline_the_rule_holds() {
    // No change yet, so no baseline.
    check_baseline("", "0..10m/1m latency 5.0", "");
    // No readings before the change: no baseline either.
    check_baseline(
        "",
        "0 change v1\n1m change v2\n2m latency 5.0",
        "1m change v1 -> v2 (v1 healthy)",
    );
    // Missing data may breach by policy, but a missing baseline is no reading of the
    // service: it never breaches (see `tests/baseline.rs`).
    check_baseline("insufficient = \"breach\"", "0 latency 0.1", "");
}

#[test]
fn rollback_verification_compares_with_the_baseline_from_before_the_bad_deploy() {
    // The rollback back to v1 is itself a change of revision, observed when most of the
    // baseline window holds v2's slow readings. Latency stays at 500ms after it: the
    // rollback did not help, and verification must say so rather than take the bad
    // revision's latency as the new normal.
    let rule = "[[rule]]\nname = \"slower\"\nsignal = \"latency\"\nwhen = \"> 1.5x baseline\"\nfor = \"6m\"\nbaseline_window = \"10m\"";
    check_incident(
        config(TARGET, &format!("{rule}\n{PLAN}")),
        "
        0 change v1
        0..9m/1m latency 0.1
        10m change v2
        11m..17m/1m latency 0.5
        17m done ok
        17m done ok
        17m30s change v1           # the rollback, as the change source sees it
        18m..22m/1m latency 0.5
        22m tick
        ",
        "
        10m change v1 -> v2 (v1 healthy)
        11m rule slower ok -> pending
        17m rule slower pending -> firing
        17m notify opened
        17m notify rollback_started
        17m run step 0 attempt 1 (v2 -> v1)
        17m run step 1 attempt 1 (v2 -> v1)
        17m plan finished; verifying for 5 min that these rules are clear: slower
        17m30s change v2 -> v1 (v2 unhealthy)
        22m verification failed: slower is still firing (500ms (baseline 100ms); clears when <= 1.5x baseline)
        22m escalated: verification failed: slower is still firing...
        22m notify verification_failed
        ",
    );
}

// ---------------------------------------------------------------------------------------
// Incidents: deciding, acting, verifying, refusing.
// ---------------------------------------------------------------------------------------

/// A deploy at 10m and an error spike from 12m that fires at 14m; then the plan's two
/// steps succeed.
const DEPLOY_AND_BREACH: &str = "
    0 change v1
    10m change v2
    12m..14m/1m errors 10/100
";

const DEPLOY_AND_BREACH_EFFECTS: &str = "
    10m change v1 -> v2 (v1 healthy)
    12m rule errors-high ok -> pending
    14m rule errors-high pending -> firing
    14m notify opened
    14m notify rollback_started
    14m run step 0 attempt 1 (v2 -> v1)
";

#[test]
fn breach_in_the_blame_window_rolls_back_step_by_step_and_verifies() {
    let run = check_incident(
        standard(""),
        &format!(
            "{DEPLOY_AND_BREACH}
            14m30s done ok
            15m done ok
            15m10s change v1
            16m errors 0/100
            17m..20m/1m tick
            "
        ),
        &format!(
            "{DEPLOY_AND_BREACH_EFFECTS}
            14m30s run step 1 attempt 1 (v2 -> v1)
            15m plan finished; verifying for 5 min that these rules are clear: errors-high
            15m10s change v2 -> v1 (v2 unhealthy)
            16m rule errors-high firing -> ok
            20m verification passed: every rule is clear
            20m notify rollback_succeeded
            20m notify resolved
            20m closed Breach incident: rolled back
            "
        ),
    );
    let closed = run
        .effects
        .iter()
        .find_map(|(_, e)| match e {
            Effect::IncidentClosed(i) => Some(i),
            _ => None,
        })
        .expect("the incident was closed");
    assert_eq!(closed.outcome, Some(Outcome::RolledBack));
    assert_eq!(closed.breach_started, at_ms(ms("12m")));
    assert_eq!(
        (
            closed.from_revision.as_deref(),
            closed.to_revision.as_deref()
        ),
        (Some("v2"), Some("v1"))
    );
    assert_eq!(closed.closed_at, Some(at_ms(ms("20m"))));
    assert!(run.engine.incidents().is_empty());
    assert_eq!(run.engine.breaker(0), None);
}

#[test]
fn verification_waits_for_the_whole_window() {
    check_incident(
        standard(""),
        &format!("{DEPLOY_AND_BREACH}\n15m done ok\n15m done ok\n16m errors 0/100\n19m59s tick"),
        &format!(
            "{DEPLOY_AND_BREACH_EFFECTS}
            15m run step 1 attempt 1 (v2 -> v1)
            15m plan finished; verifying for 5 min that these rules are clear: errors-high
            16m rule errors-high firing -> ok
            "
        ),
    );
}

#[test]
fn breach_three_days_after_the_last_deploy_escalates_instead_of_rolling_back() {
    check_incident(
        standard(""),
        "
        0 change v1
        10m change v2
        3d..3d2m/1m errors 10/100
        3d3m errors 0/100
        ",
        "
        10m change v1 -> v2 (v1 healthy)
        3d rule errors-high ok -> pending
        3d2m rule errors-high pending -> firing
        3d2m notify opened
        3d2m escalated: the breach began 3 d after the latest change (to v2), outside the blame window of 30 min
        3d2m notify not_rolled_back
        3d3m rule errors-high firing -> ok
        3d3m notify resolved
        3d3m closed Breach incident: recovered
        ",
    );
}

#[test]
fn breach_that_began_before_the_change_escalates() {
    check_incident(
        standard(""),
        "
        0 change v1
        9m errors 10/100
        10m change v2
        10m..11m/1m errors 10/100
        ",
        "
        9m rule errors-high ok -> pending
        10m change v1 -> v2 (v1 unhealthy)
        11m rule errors-high pending -> firing
        11m notify opened
        11m escalated: the breach began at 11:15:40.000 before the latest change (to v2 at 11:16:40.000), so the change is not to blame
        11m notify not_rolled_back
        ",
    );
}

#[test]
fn change_observed_after_the_breach_began_is_blamed_from_when_it_can_have_happened() {
    // A polling observer saw v2 at 13m; its previous look, at 11m, still saw v1. The
    // breach began at 12m, after the change, though before it was seen.
    check_incident(
        standard(""),
        "
        0 change v1
        12m errors 10/100
        13m change v2 since 11m
        13m errors 10/100
        14m errors 10/100
        ",
        "
        12m rule errors-high ok -> pending
        13m change v1 -> v2 (v1 healthy)
        14m rule errors-high pending -> firing
        14m notify opened
        14m notify rollback_started
        14m run step 0 attempt 1 (v2 -> v1)
        ",
    );
}

#[test]
fn rule_that_fired_before_its_change_was_seen_is_decided_again_when_it_is() {
    check_incident(
        standard(""),
        "
        0 change v1
        12m..14m/1m errors 10/100
        15m change v2 since 11m
        ",
        "
        12m rule errors-high ok -> pending
        14m rule errors-high pending -> firing
        14m notify opened
        14m escalated: no change of this target has been observed since rearguard started, so there is nothing to blame
        14m notify not_rolled_back
        15m change v1 -> v2 (v1 healthy)
        15m notify rollback_started
        15m run step 0 attempt 1 (v2 -> v1)
        ",
    );
}

#[test]
fn change_seen_after_a_breach_that_began_before_it_is_still_not_blamed() {
    check_incident(
        standard(""),
        "
        0 change v1
        12m..14m/1m errors 10/100
        15m change v2 since 13m
        ",
        "
        12m rule errors-high ok -> pending
        14m rule errors-high pending -> firing
        14m notify opened
        14m escalated: no change of this target has been observed since rearguard started, so there is nothing to blame
        14m notify not_rolled_back
        15m change v1 -> v2 (v1 unhealthy)
        ",
    );
}

#[test]
fn breach_without_an_observed_change_escalates() {
    check_incident(
        standard(""),
        "
        0 change v1
        12m..14m/1m errors 10/100
        ",
        "
        12m rule errors-high ok -> pending
        14m rule errors-high pending -> firing
        14m notify opened
        14m escalated: no change of this target has been observed since rearguard started, so there is nothing to blame
        14m notify not_rolled_back
        ",
    );
}

#[test]
fn shadow_mode_decides_and_notifies_but_runs_no_step() {
    let run = check_incident(
        standard("[daemon]\nmode = \"shadow\""),
        DEPLOY_AND_BREACH,
        "
        10m change v1 -> v2 (v1 healthy)
        12m rule errors-high ok -> pending
        14m rule errors-high pending -> firing
        14m notify opened
        14m escalated: shadow mode: would roll back from v2 to v1 with plan undo
        14m notify not_rolled_back
        ",
    );
    assert!(
        !run.effects
            .iter()
            .any(|(_, e)| matches!(e, Effect::RunStep(_)))
    );
}

#[test]
fn failed_step_is_retried_then_aborts_the_plan_and_trips_the_breaker() {
    let run = check_incident(
        standard(""),
        &format!("{DEPLOY_AND_BREACH}\n15m done fail\n16m done fail"),
        &format!(
            "{DEPLOY_AND_BREACH_EFFECTS}
            15m run step 0 attempt 2 (v2 -> v1)
            16m escalated: step \"switch\" failed after 2 attempts; the plan was stopped
            16m notify rollback_failed
            "
        ),
    );
    assert_eq!(
        run.engine.breaker(0),
        Some("rollback web-20261118T112040 failed")
    );
    assert_eq!(run.engine.incidents()[0].state, IncidentState::Escalated);
}

#[test]
fn failed_step_with_on_failure_continue_lets_the_plan_go_on() {
    check_incident(
        standard(""),
        &format!("{DEPLOY_AND_BREACH}\n15m done ok\n16m done fail\n17m errors 0/100\n21m tick"),
        &format!(
            "{DEPLOY_AND_BREACH_EFFECTS}
            15m run step 1 attempt 1 (v2 -> v1)
            16m plan finished; verifying for 5 min that these rules are clear: errors-high
            17m rule errors-high firing -> ok
            21m verification passed: every rule is clear
            21m notify rollback_succeeded
            21m notify resolved
            21m closed Breach incident: rolled back
            "
        ),
    );
}

#[test]
fn verification_fails_when_the_rule_still_fires_at_the_end_of_the_window() {
    let run = check_incident(
        standard(""),
        &format!("{DEPLOY_AND_BREACH}\n15m done ok\n15m done ok\n16m..20m/1m errors 10/100\n20m tick"),
        &format!(
            "{DEPLOY_AND_BREACH_EFFECTS}
            15m run step 1 attempt 1 (v2 -> v1)
            15m plan finished; verifying for 5 min that these rules are clear: errors-high
            20m verification failed: errors-high is still firing (10% (10/100 requests); clears when <= 5%)
            20m escalated: verification failed: errors-high is still firing...
            20m notify verification_failed
            "
        ),
    );
    assert!(
        run.engine
            .breaker(0)
            .is_some_and(|b| b.ends_with("did not fix the problem"))
    );
}

#[test]
fn verification_cannot_tell_when_no_reading_came_after_the_plan() {
    // The rule cleared while the plan ran, but nothing was read after it finished: a
    // silent signal is not evidence that the rollback worked, nor that it failed.
    let run = check_incident(
        standard(""),
        &format!("{DEPLOY_AND_BREACH}\n14m30s errors 0/100\n15m done ok\n15m done ok\n20m tick"),
        &format!(
            "{DEPLOY_AND_BREACH_EFFECTS}
            14m30s rule errors-high firing -> ok
            15m run step 1 attempt 1 (v2 -> v1)
            15m plan finished; verifying for 5 min that these rules are clear: errors-high
            20m verification inconclusive: errors-high has had no measured reading since the plan finished (0% (0/100 requests); fires when > 5% for 2m)
            20m escalated: verification inconclusive: errors-high has had no measured reading since the plan finished...
            20m notify verification_inconclusive
            "
        ),
    );
    assert!(run.engine.breaker(0).is_some());
}

/// The story of a rollback that did not help: the rule re-fires while verifying, the
/// breaker trips, the next breach is refused until an operator clears the breaker.
const REFIRE: &str = "
    15m done ok
    15m done ok
    15m30s change v1
    16m errors 0/100
    17m..19m/1m errors 10/100
";

const REFIRE_EFFECTS: &str = "
    15m run step 1 attempt 1 (v2 -> v1)
    15m plan finished; verifying for 5 min that these rules are clear: errors-high
    15m30s change v2 -> v1 (v2 unhealthy)
    16m rule errors-high firing -> ok
    17m rule errors-high ok -> pending
    19m rule errors-high pending -> firing
    19m rule errors-high fired again during verification: the rollback did not fix the problem
    19m escalated: rule errors-high fired again during verification: the rollback did not fix the problem; no further automatic action on this target until an operator clears the breaker
    19m notify verification_failed
";

#[test]
fn rule_firing_again_during_verification_fails_it_and_trips_the_breaker() {
    let run = check_incident(
        standard(""),
        &format!("{DEPLOY_AND_BREACH}{REFIRE}\n20m tick"),
        &format!("{DEPLOY_AND_BREACH_EFFECTS}{REFIRE_EFFECTS}"),
    );
    assert!(run.engine.breaker(0).is_some());
}

#[test]
fn breaker_refuses_the_next_rollback_until_an_operator_clears_it() {
    let run = check_incident(
        standard(""),
        &format!(
            "{DEPLOY_AND_BREACH}{REFIRE}
            20m errors 0/100          # recovered on its own; the incident ends
            1h change v3
            1h1m..1h3m/1m errors 10/100
            1h4m errors 0/100
            1h5m clear-breaker
            1h5m clear-breaker        # already closed: rejected
            1h15m change v4
            1h16m..1h18m/1m errors 10/100
            "
        ),
        &format!(
            "{DEPLOY_AND_BREACH_EFFECTS}{REFIRE_EFFECTS}
            20m rule errors-high firing -> ok
            20m notify resolved
            20m closed Breach incident: recovered
            1h change v1 -> v3 (v1 healthy)
            1h1m rule errors-high ok -> pending
            1h3m rule errors-high pending -> firing
            1h3m notify opened
            1h3m escalated: the circuit breaker is open (rollback web-20261118T112040 did not fix the problem); an operator must clear it
            1h3m notify not_rolled_back
            1h4m rule errors-high firing -> ok
            1h4m notify resolved
            1h4m closed Breach incident: recovered
            1h5m rejected: the circuit breaker of this target is not open
            1h15m change v3 -> v4 (v3 healthy)
            1h16m rule errors-high ok -> pending
            1h18m rule errors-high pending -> firing
            1h18m notify opened
            1h18m notify rollback_started
            1h18m run step 0 attempt 1 (v4 -> v3)
            "
        ),
    );
    assert_eq!(run.engine.breaker(0), None);
}

/// A full successful rollback cycle: deploy `to` over `from` at `t`, breach from `t+2m`,
/// fire at `t+4m`, both steps done at `t+5m`, the rollback observed at `t+5m`, clear at
/// `t+6m`, verified at `t+10m`.
fn cycle(t: u64, from: &str, to: &str) -> String {
    let s = |m: u64| show_time(t + m * 60_000);
    format!(
        "
        {} change {to}
        {}..{}/1m errors 10/100
        {} done ok
        {} done ok
        {} change {from}
        {} errors 0/100
        {} tick
        ",
        s(0),
        s(2),
        s(4),
        s(5),
        s(5),
        s(5),
        s(6),
        s(10),
    )
}

#[test]
fn rollback_within_the_cooldown_is_refused() {
    check_incident(
        standard(""),
        &format!(
            "0 change v1{}\n25m change v3\n26m..28m/1m errors 10/100",
            cycle(ms("10m"), "v1", "v2")
        ),
        "
        10m change v1 -> v2 (v1 healthy)
        12m rule errors-high ok -> pending
        14m rule errors-high pending -> firing
        14m notify opened
        14m notify rollback_started
        14m run step 0 attempt 1 (v2 -> v1)
        15m run step 1 attempt 1 (v2 -> v1)
        15m plan finished; verifying for 5 min that these rules are clear: errors-high
        15m change v2 -> v1 (v2 unhealthy)
        16m rule errors-high firing -> ok
        20m verification passed: every rule is clear
        20m notify rollback_succeeded
        20m notify resolved
        20m closed Breach incident: rolled back
        25m change v1 -> v3 (v1 healthy)
        26m rule errors-high ok -> pending
        28m rule errors-high pending -> firing
        28m notify opened
        28m escalated: the last rollback ended 8 min ago, within the cooldown of 15 min
        28m notify not_rolled_back
        ",
    );
}

#[test]
fn rollbacks_are_limited_to_max_rollbacks_per_period() {
    let target = "plan = \"undo\"\ncooldown = \"0s\"\nmax_rollbacks = 2\nrollback_period = \"1h\"";
    let cfg = config(target, &format!("{ERRORS_RULE}\n{PLAN}"));
    let mut run = Run::new(cfg);
    run.script("0 change v1");
    run.script(&cycle(ms("10m"), "v1", "v2"));
    run.script(&cycle(ms("30m"), "v1", "v3"));
    run.lines.clear();
    // The third within the hour is refused; the rollbacks began at 14m and 34m.
    run.script("50m change v4\n52m..54m/1m errors 10/100\n55m errors 0/100");
    assert_lines(
        &run.output(),
        "
        50m change v1 -> v4 (v1 healthy)
        52m rule errors-high ok -> pending
        54m rule errors-high pending -> firing
        54m notify opened
        54m escalated: 2 rollbacks within 1 h already, the maximum
        54m notify not_rolled_back
        55m rule errors-high firing -> ok
        55m notify resolved
        55m closed Breach incident: recovered
        ",
    );
    // Once the first has left the period, one more is allowed.
    run.lines.clear();
    run.script("1h10m change v5\n1h12m..1h14m/1m errors 10/100");
    assert_lines(
        &run.output(),
        "
        1h10m change v4 -> v5 (v4 healthy)
        1h12m rule errors-high ok -> pending
        1h14m rule errors-high pending -> firing
        1h14m notify opened
        1h14m notify rollback_started
        1h14m run step 0 attempt 1 (v5 -> v4)
        ",
    );
}

#[test]
fn max_rollbacks_holds_however_large_it_is() {
    // Seventy rollbacks ten minutes apart, all within one day: the seventy-first is
    // refused. (The list of recent rollbacks must not be cut short of the maximum.)
    let target = "plan = \"undo\"\ncooldown = \"0s\"\nmax_rollbacks = 70\nrollback_period = \"1d\"";
    let mut run = Run::new(config(target, &format!("{ERRORS_RULE}\n{PLAN}")));
    run.script("0 change v0");
    for i in 0..70 {
        run.script(&cycle(i * 600_000, "v0", &format!("v{}", i + 1)));
    }
    let started = run
        .effects
        .iter()
        .filter(|(_, e)| matches!(e, Effect::Notify(n) if n.occasion == Occasion::RollbackStarted));
    assert_eq!(started.count(), 70);
    run.lines.clear();
    run.script("12h change v71\n12h2m..12h4m/1m errors 10/100");
    assert_lines(
        &run.output(),
        "
        12h change v0 -> v71 (v0 healthy)
        12h2m rule errors-high ok -> pending
        12h4m rule errors-high pending -> firing
        12h4m notify opened
        12h4m escalated: 70 rollbacks within 1 d already, the maximum
        12h4m notify not_rolled_back
        ",
    );
}

#[test]
fn a_blind_incident_survives_a_restart_and_ends_when_the_signal_reads_again() {
    let mut run = Run::new(standard(""));
    run.script(&format!("{DEPLOY_AND_BREACH}\n15m errors error\n17m tick"));
    assert_eq!(
        run.engine.incidents().len(),
        2,
        "a breach being rolled back and a blind signal"
    );
    run.restart(standard(""), "18m");
    let causes: Vec<(Cause, &str)> = run
        .engine
        .incidents()
        .iter()
        .map(|i| (i.cause, i.state.name()))
        .collect();
    assert_eq!(
        causes,
        [(Cause::Breach, "escalated"), (Cause::Blind, "escalated")],
        "the step running at the crash is not run again; the blind signal is still blind"
    );
    run.script("19m errors 0/100");
    let blind_closed = run.effects.iter().any(|(_, e)| {
        matches!(e, Effect::IncidentClosed(i) if i.cause == Cause::Blind && i.outcome == Some(Outcome::Recovered))
    });
    assert!(blind_closed, "{}", run.output());
}

#[test]
fn revision_rolled_back_from_is_marked_bad_and_never_a_destination() {
    let cfg = config(
        "plan = \"undo\"\ncooldown = \"0s\"",
        &format!("{ERRORS_RULE}\n{PLAN}"),
    );
    let mut run = Run::new(cfg);
    run.script("0 change v1");
    run.script(&cycle(ms("10m"), "v1", "v2"));
    run.lines.clear();
    // Someone deploys v2 again, then a fix v3 on top of it, and v3 breaks too: the way
    // back leads to v2, which is bad.
    run.script("30m change v2\n40m change v3\n42m..44m/1m errors 10/100");
    assert_lines(
        &run.output(),
        "
        30m change v1 -> v2 (v1 healthy)
        30m notify bad_revision_deployed
        40m change v2 -> v3 (v2 unhealthy)
        42m rule errors-high ok -> pending
        44m rule errors-high pending -> firing
        44m notify opened
        44m escalated: the previous revision v2 is marked bad
        44m notify not_rolled_back
        ",
    );
}

#[test]
fn previous_revision_that_was_firing_when_replaced_is_not_a_destination() {
    check_incident(
        config("plan = \"undo\"\nblame_window = \"1h\"", &format!("{ERRORS_RULE}\n{PLAN}")),
        "
        0 change v1
        1m..3m/1m errors 10/100
        4m change v2
        5m errors 0/100
        6m..8m/1m errors 10/100
        ",
        "
        1m rule errors-high ok -> pending
        3m rule errors-high pending -> firing
        3m notify opened
        3m escalated: no change of this target has been observed since rearguard started, so there is nothing to blame
        3m notify not_rolled_back
        4m change v1 -> v2 (v1 unhealthy)
        5m rule errors-high firing -> ok
        5m notify resolved
        5m closed Breach incident: recovered
        6m rule errors-high ok -> pending
        8m rule errors-high pending -> firing
        8m notify opened
        8m escalated: the previous revision v1 was not healthy: rule errors-high was firing since 11:07:40.000 when it was replaced
        8m notify not_rolled_back
        ",
    );
}

#[test]
fn paused_target_escalates_instead_of_acting_until_resumed() {
    for (pause, resume) in [("pause", "resume"), ("pause all", "resume all")] {
        check_incident(
            standard(""),
            &format!(
                "
                0 change v1
                1m {pause}
                10m change v2
                12m..14m/1m errors 10/100
                15m errors 0/100
                16m {resume}
                26m change v3
                28m..30m/1m errors 10/100
                "
            ),
            "
            10m change v1 -> v2 (v1 healthy)
            12m rule errors-high ok -> pending
            14m rule errors-high pending -> firing
            14m notify opened
            14m escalated: automatic action is paused by an operator
            14m notify not_rolled_back
            15m rule errors-high firing -> ok
            15m notify resolved
            15m closed Breach incident: recovered
            26m change v2 -> v3 (v2 healthy)
            28m rule errors-high ok -> pending
            30m rule errors-high pending -> firing
            30m notify opened
            30m notify rollback_started
            30m run step 0 attempt 1 (v3 -> v2)
            ",
        );
    }
}

#[test]
fn target_without_a_plan_only_escalates() {
    check_incident(
        config("", ERRORS_RULE),
        "0 change v1\n10m change v2\n12m..14m/1m errors 10/100",
        "
        10m change v1 -> v2 (v1 healthy)
        12m rule errors-high ok -> pending
        14m rule errors-high pending -> firing
        14m notify opened
        14m escalated: no rollback plan is configured for this target
        14m notify not_rolled_back
        ",
    );
}

#[test]
fn stale_step_results_are_ignored() {
    let run = check_incident(
        standard(""),
        &format!(
            "{DEPLOY_AND_BREACH}
            15m done fail
            15m10s done 0 1 ok     # attempt 1 again: attempt 2 is running
            15m20s done 1 1 ok     # a step that was not ordered
            16m resolve
            16m10s done 0 2 ok     # the incident is closed
            "
        ),
        &format!(
            "{DEPLOY_AND_BREACH_EFFECTS}
            15m run step 0 attempt 2 (v2 -> v1)
            16m notify resolved
            16m closed Breach incident: resolved by alice
            "
        ),
    );
    assert!(run.engine.incidents().is_empty());
}

#[test]
fn commands_on_unknown_incidents_are_rejected() {
    check_incident(
        standard(""),
        "0 ack\n0 resolve\n0 clear-breaker",
        "
        0s rejected: no open incident has the id \"none\"
        0s rejected: no open incident has the id \"none\"
        0s rejected: the circuit breaker of this target is not open
        ",
    );
}

#[test]
fn source_error_after_blind_after_opens_a_blind_incident_that_resolves_when_it_reads_again() {
    let run = check_incident(
        standard(""),
        "
        0 change v1
        0..1m/1m errors error
        1m tick
        1m59s tick
        2m errors error
        2m tick              # failing for 2m: blind
        3m tick
        4m errors 0/100
        ",
        "
        2m notify blind
        4m notify resolved
        4m closed Blind incident: recovered
        ",
    );
    let blind = run
        .effects
        .iter()
        .find_map(|(_, e)| match e {
            Effect::IncidentClosed(i) => Some(i),
            _ => None,
        })
        .expect("closed");
    assert_eq!(blind.blind_signals, Vec::<usize>::new());
    assert_eq!(
        blind.breach_started,
        at_ms(0),
        "blind since the first error"
    );
    assert!(blind.timeline.iter().any(|e| {
        e.text
            .starts_with("watchdog is blind: signal errors has failed")
    }));
    assert!(
        !run.effects
            .iter()
            .any(|(_, e)| matches!(e, Effect::RunStep(_)))
    );
}

#[test]
fn one_good_reading_before_blind_after_resets_the_blind_clock() {
    check_incident(
        standard(""),
        "
        0 errors error
        1m30s errors 0/100
        1m40s errors error
        2m..3m/30s tick
        3m40s tick
        ",
        "3m40s notify blind",
    );
}

// ---------------------------------------------------------------------------------------
// Escalation: levels, delays, repeats, acknowledgement.
// ---------------------------------------------------------------------------------------

const LADDER: &str = r#"
[[notifier]]
name = "chat"
type = "log"

[[notifier]]
name = "pager"
type = "log"

[[escalation]]
name = "team"
on = ["not_rolled_back", "resolved"]
repeat = "10m"
notify = ["chat"]

[[escalation]]
name = "on-call"
on = ["not_rolled_back"]
after = "15m"
repeat = "30m"
notify = ["pager"]
"#;

#[test]
fn escalation_ladder_notifies_after_its_delays_and_repeats_on_the_engines_clock() {
    let run = check_incident(
        standard(LADDER),
        "
        0 change v1
        1m..3m/1m errors 10/100   # fires at 3m; no change: escalated
        4m..1h/1m tick
        ",
        "
        1m rule errors-high ok -> pending
        3m rule errors-high pending -> firing
        3m escalated: no change...
        3m notify not_rolled_back (team)
        13m notify not_rolled_back (team)
        18m notify not_rolled_back (on-call)
        23m notify not_rolled_back (team)
        33m notify not_rolled_back (team)
        43m notify not_rolled_back (team)
        48m notify not_rolled_back (on-call)
        53m notify not_rolled_back (team)
        ",
    );
    let pager = run
        .engine
        .config()
        .notifiers
        .iter()
        .position(|n| n.name == "pager");
    let paged = run.effects.iter().find_map(|(_, e)| match e {
        Effect::Notify(n) if n.level == Some(1) => Some(n.notifiers.clone()),
        _ => None,
    });
    assert_eq!(paged, Some(vec![pager.unwrap()]));
}

#[test]
fn every_transition_is_told_once_whatever_the_ladder_sends() {
    let mut run = Run::new(standard(LADDER));
    run.script(
        "
        0 change v1
        1m..3m/1m errors 10/100   # fires at 3m; no change: escalated
        4m..1h/1m tick
        ",
    );
    let told: Vec<(&str, &str)> = run
        .effects
        .iter()
        .filter_map(|(_, e)| match e {
            Effect::Transition {
                occasion, summary, ..
            } => Some((occasion.name(), summary.as_str())),
            _ => None,
        })
        .collect();
    let occasions: Vec<&str> = told.iter().map(|(o, _)| *o).collect();
    // "opened" is in no level of the ladder, and the repeats are not transitions.
    assert_eq!(occasions, ["opened", "not_rolled_back"]);
    assert!(told[1].1.starts_with("web: "), "{}", told[1].1);
    assert!(told[1].1.contains("[errors-high]"), "{}", told[1].1);
}

#[test]
fn acknowledging_stops_repeated_and_delayed_escalation() {
    check_incident(
        standard(LADDER),
        "
        0 change v1
        1m..3m/1m errors 10/100
        4m..14m/1m tick
        14m ack
        15m..2h/5m tick
        2h errors 0/100
        ",
        "
        1m rule errors-high ok -> pending
        3m rule errors-high pending -> firing
        3m escalated: no change...
        3m notify not_rolled_back (team)
        13m notify not_rolled_back (team)
        14m notify acknowledged -> chat
        2h rule errors-high firing -> ok
        2h notify resolved -> chat
        2h closed Breach incident: recovered
        ",
    );
}

#[test]
fn resolution_cancels_pending_escalation() {
    check_incident(
        standard(LADDER),
        "
        0 change v1
        1m..3m/1m errors 10/100
        5m errors 0/100
        6m..1h/1m tick
        ",
        "
        1m rule errors-high ok -> pending
        3m rule errors-high pending -> firing
        3m escalated: no change...
        3m notify not_rolled_back (team)
        5m rule errors-high firing -> ok
        5m notify resolved -> chat
        5m closed Breach incident: recovered
        ",
    );
}

/// The runbooks' ladder, exactly: on call at once, the team lead after 15 minutes, the
/// head of engineering after 30, the CTO after an hour; on call is reminded every 30m.
const RUNBOOK_LADDER: &str = r#"
[[notifier]]
name = "oncall"
type = "log"

[[notifier]]
name = "lead"
type = "log"

[[notifier]]
name = "head"
type = "log"

[[notifier]]
name = "cto"
type = "log"

[[escalation]]
name = "on call"
on = ["not_rolled_back", "rollback_failed", "verification_failed", "blind"]
repeat = "30m"
notify = ["oncall"]

[[escalation]]
name = "team lead"
on = ["not_rolled_back", "rollback_failed", "verification_failed", "blind"]
after = "15m"
notify = ["lead"]

[[escalation]]
name = "head of engineering"
on = ["not_rolled_back", "rollback_failed", "verification_failed", "blind"]
after = "30m"
notify = ["head"]

[[escalation]]
name = "cto"
on = ["not_rolled_back", "rollback_failed", "verification_failed", "blind"]
after = "1h"
notify = ["cto"]
"#;

#[test]
fn the_runbook_ladder_climbs_until_acknowledged_and_everyone_told_hears_the_end() {
    check_incident(
        standard(RUNBOOK_LADDER),
        "
        0 change v1
        1m..3m/1m errors 10/100   # fires at 3m; no change: escalated
        4m..1h10m/1m tick
        1h10m ack
        1h11m..3h/1m tick
        3h errors 0/100
        ",
        "
        1m rule errors-high ok -> pending
        3m rule errors-high pending -> firing
        3m escalated: no change...
        3m notify not_rolled_back (on call)
        18m notify not_rolled_back (team lead)
        33m notify not_rolled_back (on call)
        33m notify not_rolled_back (head of engineering)
        1h3m notify not_rolled_back (cto)
        1h3m notify not_rolled_back (on call)
        1h10m notify acknowledged -> oncall, lead, head, cto
        3h rule errors-high firing -> ok
        3h notify resolved -> oncall, lead, head, cto
        3h closed Breach incident: recovered
        ",
    );
}

#[test]
fn resolution_reaches_only_the_notifiers_already_told() {
    check_incident(
        standard(RUNBOOK_LADDER),
        "
        0 change v1
        1m..3m/1m errors 10/100
        4m..20m/1m tick
        20m errors 0/100
        ",
        "
        1m rule errors-high ok -> pending
        3m rule errors-high pending -> firing
        3m escalated: no change...
        3m notify not_rolled_back (on call)
        18m notify not_rolled_back (team lead)
        20m rule errors-high firing -> ok
        20m notify resolved -> oncall, lead
        20m closed Breach incident: recovered
        ",
    );
}

const SLOW: &str = r#"
[[notifier]]
name = "chat"
type = "log"

[[escalation]]
name = "slow"
on = ["rollback_slow"]
slow_after = "8m"
notify = ["chat"]
"#;

#[test]
fn a_rollback_still_running_after_its_limit_is_reported_slow() {
    check_incident(
        standard(SLOW),
        &format!(
            "{DEPLOY_AND_BREACH}
15m..23m/1m tick
23m done ok"
        ),
        "
        10m change v1 -> v2 (v1 healthy)
        12m rule errors-high ok -> pending
        14m rule errors-high pending -> firing
        14m run step 0 attempt 1 (v2 -> v1)
        22m notify rollback_slow (slow)
        23m run step 1 attempt 1 (v2 -> v1)
        ",
    );
}

#[test]
fn a_rollback_that_verifies_within_its_limit_is_not_reported_slow() {
    check_incident(
        standard(SLOW),
        &format!(
            "{DEPLOY_AND_BREACH}
            15m done ok
            15m done ok
            16m errors 0/100
            17m..40m/1m tick
            "
        ),
        "
        10m change v1 -> v2 (v1 healthy)
        12m rule errors-high ok -> pending
        14m rule errors-high pending -> firing
        14m run step 0 attempt 1 (v2 -> v1)
        15m run step 1 attempt 1 (v2 -> v1)
        15m plan finished; verifying for 5 min that these rules are clear: errors-high
        16m rule errors-high firing -> ok
        20m verification passed: every rule is clear
        20m closed Breach incident: rolled back
        ",
    );
}

#[test]
fn failed_attempts_are_reported_when_they_reach_the_levels_count() {
    check_incident(
        standard(
            r#"
[[notifier]]
name = "chat"
type = "log"

[[escalation]]
name = "two failures"
on = ["attempts_failed"]
attempts = 2
notify = ["chat"]
"#,
        ),
        &format!(
            "{DEPLOY_AND_BREACH}
15m done fail
16m done fail"
        ),
        "
        10m change v1 -> v2 (v1 healthy)
        12m rule errors-high ok -> pending
        14m rule errors-high pending -> firing
        14m run step 0 attempt 1 (v2 -> v1)
        15m run step 0 attempt 2 (v2 -> v1)
        16m notify attempts_failed (two failures)
        16m escalated: step \"switch\" failed after 2 attempts...
        ",
    );
}

#[test]
fn notifications_carry_the_facts_of_the_incident() {
    let run = check_incident(
        standard(""),
        &format!(
            "{DEPLOY_AND_BREACH}
            15m done ok
            15m done ok
            16m errors 0/100
            17m..20m/1m tick
            "
        ),
        &format!(
            "{DEPLOY_AND_BREACH_EFFECTS}
            15m run step 1 attempt 1 (v2 -> v1)
            15m plan finished; verifying for 5 min that these rules are clear: errors-high
            16m rule errors-high firing -> ok
            20m verification passed: every rule is clear
            20m notify rollback_succeeded
            20m notify resolved
            20m closed Breach incident: rolled back
            "
        ),
    );
    let facts = |occasion| {
        run.effects
            .iter()
            .find_map(|(_, e)| match e {
                Effect::Notify(n) if n.occasion == occasion => Some(n.facts.clone()),
                _ => None,
            })
            .unwrap()
    };
    let started = facts(Occasion::RollbackStarted);
    assert_eq!(started.target, "web");
    assert_eq!(started.state, "open");
    assert_eq!(started.plan.as_deref(), Some("undo"));
    assert_eq!(
        (
            started.from_revision.as_deref(),
            started.to_revision.as_deref()
        ),
        (Some("v2"), Some("v1"))
    );
    assert_eq!(started.rules.len(), 1);
    assert_eq!(started.rules[0].name, "errors-high");
    assert_eq!(started.rules[0].condition, "> 5% for 2m");
    assert_eq!(started.rules[0].phase, "firing");
    assert!(
        started.rules[0].evidence.contains("10% (10/100 requests)"),
        "{}",
        started.rules[0].evidence
    );
    assert!(
        started.next.contains("running plan undo (2 steps)"),
        "{}",
        started.next
    );
    let done = facts(Occasion::RollbackSucceeded);
    let steps: Vec<(&str, bool)> = done.steps.iter().map(|s| (s.name.as_str(), s.ok)).collect();
    assert_eq!(steps, [("switch", true), ("restart", true)]);
    assert_eq!(done.at_ms, at_ms(ms("20m")).0);
    assert_eq!(done.opened_at_ms, at_ms(ms("14m")).0);
}

#[test]
fn an_operator_rolls_back_an_incident_rearguard_would_not_act_on() {
    let run = check_incident(
        standard(LADDER),
        "
        0 change v1
        10m change v2
        50m..52m/1m errors 10/100   # outside the 30m blame window: escalated
        53m rollback
        54m done ok
        54m done ok
        55m errors 0/100
        56m..1h/1m tick
        ",
        "
        10m change v1 -> v2 (v1 healthy)
        50m rule errors-high ok -> pending
        52m rule errors-high pending -> firing
        52m escalated: the breach began 40 min after the latest change (to v2), outside the blame window of 30 min
        52m notify not_rolled_back (team)
        53m run step 0 attempt 1 (v2 -> v1)
        54m run step 1 attempt 1 (v2 -> v1)
        54m plan finished; verifying for 5 min that these rules are clear: errors-high
        55m rule errors-high firing -> ok
        59m verification passed: every rule is clear
        59m notify resolved -> chat
        59m closed Breach incident: rolled back
        ",
    );
    let closed = run
        .effects
        .iter()
        .find_map(|(_, e)| match e {
            Effect::IncidentClosed(i) => Some(i),
            _ => None,
        })
        .unwrap();
    assert!(
        closed
            .timeline
            .iter()
            .any(|e| e.text == "rollback requested by alice"),
        "{:#?}",
        closed.timeline
    );
    assert_eq!(
        run.engine.memory(at_ms(0)).targets[0].bad,
        ["v2".to_owned()].into()
    );
}

#[test]
fn an_operators_rollback_is_refused_when_it_cannot_be_safe() {
    check_incident(
        standard(""),
        &format!("{DEPLOY_AND_BREACH}\n14m30s rollback"),
        &format!(
            "{DEPLOY_AND_BREACH_EFFECTS}\n14m30s rejected: incident web-20261118T112040 is already rolling back"
        ),
    );
    check_incident(
        config(TARGET, &format!("{ERRORS_RULE}\n{PLAN}\n[daemon]\nmode = \"shadow\"")),
        "0 change v1\n10m change v2\n50m..52m/1m errors 10/100\n53m rollback",
        "
        10m change v1 -> v2 (v1 healthy)
        50m rule errors-high ok -> pending
        52m rule errors-high pending -> firing
        52m notify opened
        52m escalated: the breach began 40 min after the latest change (to v2), outside the blame window of 30 min
        52m notify not_rolled_back
        53m rejected: shadow mode: rearguard never acts
        ",
    );
    check_incident(
        standard(""),
        "0 change v1\n1m..3m/1m errors 10/100\n4m rollback",
        "
        1m rule errors-high ok -> pending
        3m rule errors-high pending -> firing
        3m notify opened
        3m escalated: no change...
        3m notify not_rolled_back
        4m rejected: no previous revision is known
        ",
    );
}

#[test]
fn a_silenced_rule_opens_no_incident_until_its_silence_ends() {
    check_incident(
        standard(""),
        &format!("0 silence 20m\n{DEPLOY_AND_BREACH}\n15m..20m/1m errors 10/100\n20m..21m/1m tick"),
        "
        10m change v1 -> v2 (v1 healthy)
        12m rule errors-high ok -> pending
        14m rule errors-high pending -> firing
        20m notify opened
        20m notify rollback_started
        20m run step 0 attempt 1 (v2 -> v1)
        ",
    );
}

#[test]
fn lifting_a_silence_acts_on_a_rule_still_firing_and_a_cleared_rule_is_forgotten() {
    check_incident(
        standard(""),
        &format!("0 silence 1h\n{DEPLOY_AND_BREACH}\n15m unsilence"),
        &format!(
            "{}
            15m notify opened
            15m notify rollback_started
            15m run step 0 attempt 1 (v2 -> v1)
            ",
            "
            10m change v1 -> v2 (v1 healthy)
            12m rule errors-high ok -> pending
            14m rule errors-high pending -> firing
            "
        ),
    );
    check_incident(
        standard(""),
        &format!("0 silence 20m\n{DEPLOY_AND_BREACH}\n15m errors 0/100\n16m..25m/1m tick"),
        "
        10m change v1 -> v2 (v1 healthy)
        12m rule errors-high ok -> pending
        14m rule errors-high pending -> firing
        15m rule errors-high firing -> ok
        ",
    );
}

// ---------------------------------------------------------------------------------------
// Restarts: the engine's memory through JSON into a fresh engine.
// ---------------------------------------------------------------------------------------

#[test]
fn verification_resumes_after_a_restart_and_no_step_runs_again() {
    let mut run = Run::new(standard(""));
    run.script(&format!("{DEPLOY_AND_BREACH}\n15m done ok\n15m done ok"));
    run.restart(standard(""), "16m");
    run.script("16m..18m/1m errors 0/100\n18m..21m/1m tick");
    assert_lines(
        &run.output(),
        &format!(
            "{DEPLOY_AND_BREACH_EFFECTS}
            15m run step 1 attempt 1 (v2 -> v1)
            15m plan finished; verifying for 5 min that these rules are clear: errors-high
            16m restart
            16m rule errors-high firing -> ok
            21m verification passed: every rule is clear
            21m notify rollback_succeeded
            21m notify resolved
            21m closed Breach incident: rolled back
            "
        ),
    );
    let closed = run
        .effects
        .iter()
        .find_map(|(_, e)| match e {
            Effect::IncidentClosed(i) => Some(i),
            _ => None,
        })
        .unwrap();
    assert!(
        closed.timeline.iter().any(|e| e.text.contains(
            "rearguard restarted after 1 min without a record; incident restored (verifying)"
        )),
        "{:#?}",
        closed.timeline
    );
    // The revision rolled back from stays marked bad across the restart.
    assert!(run.engine.memory(at_ms(0)).targets[0].bad.contains("v2"));
}

#[test]
fn a_step_running_at_a_crash_is_not_run_again_and_people_are_told() {
    let mut run = Run::new(standard(""));
    run.script(DEPLOY_AND_BREACH);
    run.restart(standard(""), "15m");
    run.script("15m..20m/1m tick");
    assert_lines(
        &run.output(),
        &format!(
            "{DEPLOY_AND_BREACH_EFFECTS}
            15m restart
            15m escalated: rearguard restarted while step 1/2 \"switch\" (attempt 1) was running; whether it finished is unknown...
            15m notify rollback_failed
            "
        ),
    );
    assert_eq!(
        run.engine.breaker(0),
        Some("rollback web-20261118T112040 was interrupted by a restart")
    );
    assert_eq!(run.steps_ordered_after("15m"), 0);
}

#[test]
fn a_firing_rule_is_firing_again_after_a_restart_and_clears_the_incident() {
    let mut run = Run::new(standard(RUNBOOK_LADDER));
    run.script("0 change v1\n1m..3m/1m errors 10/100\n4m..20m/1m tick");
    run.restart(standard(RUNBOOK_LADDER), "21m");
    run.script("21m..25m/1m tick\n25m errors 0/100");
    assert_lines(
        &run.output(),
        "
        1m rule errors-high ok -> pending
        3m rule errors-high pending -> firing
        3m escalated: no change...
        3m notify not_rolled_back (on call)
        18m notify not_rolled_back (team lead)
        21m restart
        25m rule errors-high firing -> ok
        25m notify resolved -> oncall, lead
        25m closed Breach incident: recovered
        ",
    );
}

// ---------------------------------------------------------------------------------------
// Reloads: a new configuration for the running engine.
// ---------------------------------------------------------------------------------------

/// The standard configuration with one more rule, on another signal.
fn standard_plus_latency_rule() -> Config {
    standard("[[rule]]\nname = \"slow\"\nsignal = \"latency\"\nwhen = \"> 2\"\nfor = \"5m\"\n")
}

#[test]
fn a_reload_keeps_the_window_of_an_unchanged_rule() {
    let mut run = Run::new(standard(""));
    run.script("0 change v1\n1m..2m/1m errors 10/100");
    run.reload(standard_plus_latency_rule(), "2m30s");
    run.script("3m errors 10/100");
    assert_lines(
        &run.output(),
        "
        1m rule errors-high ok -> pending
        2m30s reload
        3m rule errors-high pending -> firing
        3m notify opened
        3m escalated: no change...
        3m notify not_rolled_back
        ",
    );
}

#[test]
fn a_reload_starts_a_changed_rule_afresh() {
    let mut run = Run::new(standard(""));
    run.script("0 change v1\n1m..2m/1m errors 10/100");
    let longer = config(
        TARGET,
        &format!(
            "{}\n{PLAN}",
            ERRORS_RULE.replace("for = \"2m\"", "for = \"3m\"")
        ),
    );
    run.reload(longer, "2m30s");
    run.script("3m..6m/1m errors 10/100");
    assert_lines(
        &run.output(),
        "
        1m rule errors-high ok -> pending
        2m30s reload
        3m rule errors-high ok -> pending
        6m rule errors-high pending -> firing
        6m notify opened
        6m escalated: no change...
        6m notify not_rolled_back
        ",
    );
}

#[test]
fn a_reload_keeps_an_incident_and_its_verification_deadline() {
    let mut run = Run::new(standard(""));
    run.script(&format!("{DEPLOY_AND_BREACH}\n15m done ok\n15m done ok"));
    run.reload(standard_plus_latency_rule(), "16m");
    run.script("16m..18m/1m errors 0/100\n18m..21m/1m tick");
    assert_lines(
        &run.output(),
        &format!(
            "{DEPLOY_AND_BREACH_EFFECTS}
            15m run step 1 attempt 1 (v2 -> v1)
            15m plan finished; verifying for 5 min that these rules are clear: errors-high
            16m reload
            16m rule errors-high firing -> ok
            20m verification passed: every rule is clear
            20m notify rollback_succeeded
            20m notify resolved
            20m closed Breach incident: rolled back
            "
        ),
    );
    let closed = run
        .effects
        .iter()
        .find_map(|(_, e)| match e {
            Effect::IncidentClosed(i) => Some(i),
            _ => None,
        })
        .unwrap();
    assert!(
        closed
            .timeline
            .iter()
            .any(|e| e.text == "configuration reloaded; incident kept (verifying)"),
        "{:#?}",
        closed.timeline
    );
    assert!(run.engine.memory(at_ms(0)).targets[0].bad.contains("v2"));
}

#[test]
fn a_reload_that_removes_an_incident_s_rule_ends_it_as_interrupted() {
    let mut run = Run::new(standard(""));
    run.script("0 change v1\n1m..3m/1m errors 10/100");
    let renamed = config(
        TARGET,
        &format!(
            "{}\n{PLAN}",
            ERRORS_RULE.replace("errors-high", "errors-too-high")
        ),
    );
    run.reload(renamed, "4m");
    assert_lines(
        &run.output(),
        "
        1m rule errors-high ok -> pending
        3m rule errors-high pending -> firing
        3m notify opened
        3m escalated: no change...
        3m notify not_rolled_back
        4m reload
        4m closed Breach incident: interrupted
        ",
    );
    assert!(run.engine.incidents().is_empty());
}

#[test]
fn a_reading_crosses_a_reload_only_to_the_same_signal() {
    let old = standard("");
    let new = standard_plus_latency_rule();
    let reading = |signal| {
        Input::Reading(Reading {
            signal,
            state: ReadingState::NoData,
        })
    };
    let errors = old.signal_index("errors").unwrap();
    assert!(matches!(
        reload::carry_over(&old, &new, reading(errors)),
        Some(Input::Reading(Reading { signal, .. })) if signal == new.signal_index("errors").unwrap()
    ));
    // The same name, sampled twice as often: a different signal.
    let text = format!("[[target]]\nname = \"web\"\n{TARGET}\n{SIGNALS}\n{ERRORS_RULE}\n{PLAN}")
        .replacen("interval = \"1m\"", "interval = \"30s\"", 1);
    let changed =
        config::load_str(&text, Format::Toml, std::iter::empty(), Path::new(".")).unwrap();
    assert!(reload::carry_over(&old, &changed, reading(errors)).is_none());
    assert!(
        reload::carry_over(
            &old,
            &new,
            Input::StepDone(StepResult {
                incident: "x".to_owned(),
                step: 0,
                attempt: 1,
                ok: true,
                duration_ms: 0,
                output: String::new(),
                error: None,
            })
        )
        .is_none()
    );
}

#[test]
fn escalations_still_due_fire_after_a_restart() {
    let mut run = Run::new(standard(RUNBOOK_LADDER));
    run.script("0 change v1\n1m..3m/1m errors 10/100\n4m..10m/1m tick");
    run.restart(standard(RUNBOOK_LADDER), "12m");
    run.script("12m..20m/1m tick");
    assert_lines(
        &run.output(),
        "
        1m rule errors-high ok -> pending
        3m rule errors-high pending -> firing
        3m escalated: no change...
        3m notify not_rolled_back (on call)
        12m restart
        18m notify not_rolled_back (team lead)
        ",
    );
}

#[test]
fn an_incident_whose_rules_are_gone_after_a_restart_ends_as_interrupted() {
    let mut run = Run::new(standard(""));
    run.script("0 change v1\n1m..3m/1m errors 10/100");
    let renamed = config(
        TARGET,
        &format!(
            "{}\n{PLAN}",
            ERRORS_RULE.replace("errors-high", "errors-too-high")
        ),
    );
    run.restart(renamed, "5m");
    assert_lines(
        &run.output(),
        "
        1m rule errors-high ok -> pending
        3m rule errors-high pending -> firing
        3m notify opened
        3m escalated: no change...
        3m notify not_rolled_back
        5m restart
        5m closed Breach incident: interrupted
        ",
    );
    assert_eq!(
        run.effects
            .iter()
            .filter(|(t, e)| *t >= at_ms(ms("5m")) && matches!(e, Effect::Notify(_)))
            .count(),
        0,
        "nobody is told an interrupted incident is resolved"
    );
}

// ---------------------------------------------------------------------------------------
// Determinism.
// ---------------------------------------------------------------------------------------

#[test]
fn same_inputs_give_the_same_effects() {
    let script = format!(
        "{DEPLOY_AND_BREACH}{REFIRE}
        0..30m/1m oom pod-a
        0..30m/20s health fail
        20m..1h/1m tick
        1h ack
        "
    );
    let effects = || {
        let mut run = Run::new(standard(LADDER));
        run.script(&script);
        run.effects
    };
    let (a, b) = (effects(), effects());
    assert!(
        a.len() > 20,
        "the script should do something: {} effects",
        a.len()
    );
    assert_eq!(a, b);
}

// ---------------------------------------------------------------------------------------
// Properties of the windows.
// ---------------------------------------------------------------------------------------

/// A verdict fed to a rule in a property test.
#[derive(Debug, Clone, Copy, PartialEq)]
enum V {
    Bad,
    Good,
    /// No data under the default `hold` policy.
    Hold,
}

fn verdict() -> impl Strategy<Value = V> {
    prop_oneof![3 => Just(V::Bad), 2 => Just(V::Good), 1 => Just(V::Hold)]
}

fn feed_verdict(engine: &mut Engine, v: V, t: Ts) -> Phase {
    let state = match v {
        V::Bad => ReadingState::Value(Measure::Rate {
            errors: 10.0,
            requests: 100.0,
        }),
        V::Good => ReadingState::Value(Measure::Rate {
            errors: 1.0,
            requests: 100.0,
        }),
        V::Hold => ReadingState::NoData,
    };
    engine.step(Input::Reading(Reading { signal: 0, state }), t);
    engine.rule_phase(0)
}

fn one_rule_engine(mode: &str) -> Engine {
    Engine::new(config(
        "",
        &format!("[[rule]]\nname = \"r\"\nsignal = \"errors\"\nwhen = \"> 5%\"\n{mode}"),
    ))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// A sustained rule fires exactly at the first breaching evaluation that is at least
    /// `for` after the first breach of an unbroken streak; never before. A held reading,
    /// or a silence longer than the signal's gap tolerance (1.5 intervals of 1m), breaks
    /// the run of observations: the streak is proven again from the next reading.
    #[test]
    fn sustained_rule_fires_exactly_when_for_has_elapsed_since_the_streak_began(
        for_s in 0u64..600,
        steps in prop::collection::vec((1u64..120_000, verdict()), 1..80),
    ) {
        let mut engine = one_rule_engine(&format!("for = \"{for_s}s\""));
        let for_ = Duration::from_secs(for_s);
        let (mut t, mut streak, mut firing) = (0u64, None::<Ts>, false);
        let mut run = None::<Ts>;
        for (gap, v) in steps {
            t += gap;
            let now = at_ms(t);
            let phase = feed_verdict(&mut engine, v, now);
            if v == V::Hold {
                run = None;
            } else if run.is_none() || gap > 90_000 {
                run = Some(now);
            }
            match (firing, v) {
                (_, V::Hold) | (true, V::Bad) => {}
                (true, V::Good) => (firing, streak) = (false, None),
                (false, V::Good) => streak = None,
                (false, V::Bad) => {
                    let since = *streak.get_or_insert(now);
                    firing = now.since(since.max(run.unwrap_or(since))) >= for_;
                }
            }
            let expected = if firing { Phase::Firing } else if streak.is_some() { Phase::Pending } else { Phase::Ok };
            prop_assert_eq!(phase, expected, "at {}ms after {:?}", t, v);
        }
    }

    /// An M-of-N rule fires iff the last N evaluations since the last held one hold at
    /// least M breaches. A held reading keeps the phase but empties the window.
    #[test]
    fn m_of_n_rule_fires_iff_the_last_n_evaluations_hold_m_breaches(
        (m, n) in (1u32..8).prop_flat_map(|n| (1..=n, Just(n))),
        steps in prop::collection::vec(verdict(), 1..80),
    ) {
        let mut engine = one_rule_engine(&format!("m_of_n = [{m}, {n}]"));
        let mut window: VecDeque<bool> = VecDeque::new();
        let (mut firing, mut pending) = (false, false);
        for (i, v) in steps.into_iter().enumerate() {
            let phase = feed_verdict(&mut engine, v, at_ms(i as u64 * 60_000));
            match (firing, v) {
                (_, V::Hold) => window.clear(),
                (true, V::Bad) => {}
                (true, V::Good) => {
                    firing = false;
                    window.clear();
                }
                (false, _) => {
                    window.push_back(v == V::Bad);
                    if window.len() > n as usize {
                        window.pop_front();
                    }
                    firing = window.iter().filter(|b| **b).count() >= m as usize;
                }
            }
            if v != V::Hold {
                pending = window.iter().any(|b| *b);
            }
            let expected = if firing { Phase::Firing } else if pending { Phase::Pending } else { Phase::Ok };
            prop_assert_eq!(phase, expected, "evaluation {} ({:?}), window {:?}", i, v, window);
        }
    }

    /// A within rule fires iff the distinct keys of the events inside the window exceed
    /// its threshold: duplicates never count twice and expired events never count.
    #[test]
    fn within_rule_counts_only_distinct_keys_inside_the_window(
        window_s in 10u64..300,
        threshold in 0u32..4,
        steps in prop::collection::vec((0u64..60_000, prop::option::of(0u8..6)), 1..120),
    ) {
        let cfg = config("", &format!(
            "[[rule]]\nname = \"r\"\nsignal = \"oom\"\nwhen = \"> {threshold}\"\nwithin = \"{window_s}s\""
        ));
        let mut engine = Engine::new(cfg);
        let mut events: Vec<(u64, u8)> = Vec::new();
        let mut t = 0u64;
        for (gap, key) in steps {
            t += gap;
            let input = match key {
                Some(k) => {
                    events.push((t, k));
                    Input::Reading(Reading {
                        signal: 3,
                        state: ReadingState::Value(Measure::Event { key: format!("pod-{k}") }),
                    })
                }
                None => Input::Tick,
            };
            for e in engine.step(input, at_ms(t)) {
                if let Effect::RuleChanged { transition, .. } = e
                    && transition.to == Phase::Firing
                {
                    let since = transition.breach_since.expect("a firing rule knows when its breach began");
                    prop_assert!(since.0 + window_s * 1000 >= T0_MS + t, "the breach began at an expired event");
                }
            }
            let start = t.saturating_sub(window_s * 1000);
            let mut keys: Vec<u8> = events.iter().filter(|(at, _)| *at >= start).map(|(_, k)| *k).collect();
            keys.sort_unstable();
            keys.dedup();
            let expected = if keys.len() > threshold as usize { Phase::Firing } else { Phase::Ok };
            prop_assert_eq!(engine.rule_phase(0), expected, "at {}ms, distinct keys in window {:?}", t, keys);
        }
    }

    /// Whatever the readings, the same inputs give the same effects.
    #[test]
    fn engine_is_deterministic(steps in prop::collection::vec((0u64..90_000, verdict()), 1..60)) {
        let run = || {
            let mut engine = Engine::new(standard(LADDER));
            let mut out = engine.step(Input::Change { target: 0, revision: "v1".into(), at: at_ms(0) }, at_ms(0));
            out.extend(engine.step(Input::Change { target: 0, revision: "v2".into(), at: at_ms(1) }, at_ms(1)));
            let mut t = 1;
            for (gap, v) in &steps {
                t += gap;
                let errors = match v { V::Bad => 10.0, V::Good => 1.0, V::Hold => f64::NAN };
                let state = ReadingState::Value(Measure::Rate { errors, requests: 100.0 });
                out.extend(engine.step(Input::Reading(Reading { signal: 0, state }), at_ms(t)));
                out.extend(engine.step(Input::Tick, at_ms(t)));
            }
            out
        };
        prop_assert_eq!(run(), run());
    }
}

// ---------------------------------------------------------------------------------------
// Bake time: a revision healthy long enough is known good (its configuration is
// snapshotted by the daemon).
// ---------------------------------------------------------------------------------------

/// A Kubernetes target with a 10-minute bake time.
const BAKED_TARGET: &str = r#"
plan = "undo"
bake = "10m"
change = { type = "kube_deployment", namespace = "shop", deployment = "web" }
"#;

/// The times (as in scripts) at which `Effect::Baked` was emitted, with the revision.
fn check_baked(cfg: Config, script: &str, expected: &[(&str, &str)]) {
    let mut run = Run::new(cfg);
    run.script(script);
    let got: Vec<(String, String)> = run
        .effects
        .iter()
        .filter_map(|(t, e)| match e {
            Effect::Baked { revision, .. } => Some((show_time(t.0 - T0_MS), revision.clone())),
            _ => None,
        })
        .collect();
    let want: Vec<(String, String)> = expected
        .iter()
        .map(|(t, r)| (show_time(ms(t)), (*r).to_owned()))
        .collect();
    assert_eq!(
        got,
        want,
        "baked effects of:\n{script}\n--- all:\n{}",
        run.output()
    );
}

#[test]
fn a_revision_healthy_for_its_bake_time_is_baked_once() {
    let cfg = config(BAKED_TARGET, &format!("{ERRORS_RULE}\n{PLAN}"));
    check_baked(
        cfg,
        "0 change 1
         0..30m/1m tick
         31m change 2
         31m..50m/1m tick",
        &[("10m", "1"), ("41m", "2")],
    );
}

#[test]
fn a_firing_rule_or_an_open_incident_restarts_the_bake_time() {
    let cfg = config(BAKED_TARGET, &format!("{ERRORS_RULE}\n{PLAN}"));
    // The rule is pending from 3m and fires at 5m (no change was observed since the
    // start, so the incident escalates); it clears at 6m and the incident closes as
    // recovered. Healthy again from 6m, revision 1 bakes at 16m, not at 10m.
    check_baked(
        cfg,
        "0 change 1
         0..2m/1m tick
         3m errors 10/100
         3m tick
         4m errors 10/100
         4m tick
         5m errors 10/100
         5m tick
         6m errors 0/100
         6m..30m/1m tick",
        &[("16m", "1")],
    );
}

#[test]
fn a_target_without_a_kubernetes_observer_is_never_baked() {
    let cfg = standard("");
    check_baked(cfg, "0 change v1\n0..30m/1m tick", &[]);
}

#[test]
fn a_change_before_the_bake_time_ends_bakes_only_the_new_revision() {
    let cfg = config(BAKED_TARGET, &format!("{ERRORS_RULE}\n{PLAN}"));
    check_baked(
        cfg,
        "0 change 1
         0..5m/1m tick
         6m change 2
         6m..20m/1m tick",
        &[("16m", "2")],
    );
}
