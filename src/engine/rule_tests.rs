//! Table-driven tests of what a rule counts as proof: only breaching (or clear) readings
//! of one unbroken run of observations, never time in which nothing was seen. Each case
//! is a rule, a sequence of readings at the signal's own cadence, and the phase after
//! each reading; the rule state is driven directly, without the engine around it.

use super::{Change, Phase, RuleState};
use crate::config::units::parse_duration;
use crate::config::{Config, SignalKind};
use crate::engine::reading::{Measure, ReadingState, Ts};

/// A configuration of one rule `r` with the keys `keys`, over the engine tests' signals:
/// among them `errors`, a rate read every minute (its gap tolerance is 1.5 minutes), and
/// `health`, a probe read every 10 seconds (tolerance 15 seconds).
fn one_rule(keys: &str) -> Config {
    crate::engine::tests::config("", &format!("[[rule]]\nname = \"r\"\n{keys}"))
}

/// What one word of a script reads, for a signal of `kind`: `bad` breaches, `good` does
/// not (10 and 1 errors in 100 requests, or a failing and a passing check), `few` is
/// insufficient samples, `none` no data, `err` a source error.
fn reading(kind: SignalKind, word: &str) -> ReadingState {
    let rate = |errors| Measure::Rate {
        errors,
        requests: 100.0,
    };
    let check = |ok| Measure::Check { ok, detail: None };
    ReadingState::Value(match (word, kind) {
        ("few", _) => return ReadingState::Insufficient { have: 3, need: 20 },
        ("none", _) => return ReadingState::NoData,
        ("err", _) => return ReadingState::SourceError("connection refused".to_owned()),
        ("bad", SignalKind::Rate) => rate(10.0),
        ("good", SignalKind::Rate) => rate(1.0),
        ("bad", SignalKind::Check) => check(false),
        ("good", SignalKind::Check) => check(true),
        _ => panic!("no reading {word:?} for a {} signal", kind.name()),
    })
}

/// The phases (`o`, `p`, `f`) of rule `keys` after each reading of `script`. Readings
/// come one interval of the signal apart, from time zero; a word `+DUR` is a silence:
/// the next reading comes DUR later than it would have. A word `WORD*N` is N readings.
fn phases(keys: &str, script: &str) -> String {
    let cfg = one_rule(keys);
    let rule = &cfg.rules[0];
    let signal = &cfg.signals[rule.signal];
    let mut state = RuleState::new();
    let mut now = Ts::from_secs(1_795_000_000);
    let mut seen = Vec::new();
    for word in script.split_whitespace() {
        if let Some(silence) = word.strip_prefix('+') {
            now = now.plus(parse_duration(silence).expect("a silence is a duration"));
            continue;
        }
        let (word, times) = word
            .split_once('*')
            .map_or((word, 1), |(w, n)| (w, n.parse().expect("a count")));
        for _ in 0..times {
            state.on_reading(rule, &reading(signal.kind(), word), &Change::default(), now);
            seen.push(match state.phase {
                Phase::Ok => "o",
                Phase::Pending => "p",
                Phase::Firing => "f",
            });
            now = now.plus(signal.interval);
        }
    }
    seen.join(" ")
}

/// Checks every case of a table: `(what it shows, rule keys, script, phases)`.
fn check(cases: &[(&str, &str, &str, &str)]) {
    let failed: Vec<String> = cases
        .iter()
        .filter_map(|&(what, keys, script, want)| {
            let got = phases(keys, script);
            (got != want).then(|| format!("{what}\n  {script}\n  want {want}\n  got  {got}"))
        })
        .collect();
    assert!(failed.is_empty(), "\n{}", failed.join("\n"));
}

const FOR_5M: &str = "signal = \"errors\"\nwhen = \"> 5%\"\nfor = \"5m\"\nmin_requests = 20";

#[test]
fn for_is_proven_only_by_breaching_readings_across_the_whole_period() {
    check(&[
        (
            "six readings a minute apart span 5m",
            FOR_5M,
            "bad*6",
            "p p p p p f",
        ),
        (
            "pending, a held reading, then breach: the clock restarts at the breach",
            FOR_5M,
            "bad*2 few bad*5",
            "p p p p p p p p",
        ),
        (
            "after the held reading, 5m of breaching readings prove it again",
            FOR_5M,
            "bad*2 few bad*6",
            "p p p p p p p p f",
        ),
        (
            "a low-traffic lull (insufficient samples, held) just after going pending",
            FOR_5M,
            "bad few*20 bad bad",
            "p p p p p p p p p p p p p p p p p p p p p p p",
        ),
        (
            "no data held while pending restarts the clock too",
            FOR_5M,
            "bad*4 none bad*5 bad",
            "p p p p p p p p p p f",
        ),
        (
            "a source error while pending restarts the clock",
            FOR_5M,
            "bad*3 err bad*5",
            "p p p p p p p p p",
        ),
        (
            "a silence of 10m (no reading at all) restarts the clock",
            FOR_5M,
            "bad*2 +10m bad*3",
            "p p p p p",
        ),
        (
            "after the silence, 5m of readings prove it again",
            FOR_5M,
            "bad*2 +10m bad*6",
            "p p p p p p p f",
        ),
        (
            "a reading 1.5 intervals late is within the tolerance",
            FOR_5M,
            "bad*3 +30s bad*3",
            "p p p p p f",
        ),
        (
            "a reading more than 1.5 intervals late is a gap",
            FOR_5M,
            "bad*3 +31s bad*6",
            "p p p p p p p p f",
        ),
        (
            "a policy that turns no data into a breach counts it as breaching",
            "signal = \"errors\"\nwhen = \"> 5%\"\nfor = \"5m\"\nno_data = \"breach\"",
            "bad*2 none*3 bad",
            "p p p p p f",
        ),
    ]);
}

#[test]
fn after_a_blind_spell_in_a_breach_the_rule_proves_for_again() {
    check(&[
        (
            "source errors for 4m in a breach: not firing at the first reading after",
            FOR_5M,
            "bad*3 err*4 bad*3",
            "p p p p p p p p p p",
        ),
        (
            "fires 5m after the first reading after the blind spell",
            FOR_5M,
            "bad*3 err*4 bad*6",
            "p p p p p p p p p p p p f",
        ),
        (
            "a blind spell ending in recovery leaves nothing pending",
            FOR_5M,
            "bad*3 err*4 good",
            "p p p p p p p o",
        ),
    ]);
}

#[test]
fn a_firing_rule_stays_firing_through_held_readings_and_gaps() {
    let clear_2m = "signal = \"errors\"\nwhen = \"> 5%\"\nfor = \"0s\"\nclear_for = \"2m\"";
    check(&[
        (
            "held readings never clear a firing rule",
            clear_2m,
            "bad err*5 none*5",
            "f f f f f f f f f f f",
        ),
        ("nor does silence", clear_2m, "bad +1h bad", "f f"),
    ]);
}

#[test]
fn clear_for_needs_clear_readings_of_one_run_across_the_whole_period() {
    let clear_2m = "signal = \"errors\"\nwhen = \"> 5%\"\nfor = \"0s\"\nclear_for = \"2m\"";
    check(&[
        (
            "three clear readings span 2m",
            clear_2m,
            "bad good*3",
            "f f f o",
        ),
        (
            "clear, held, clear: the held reading restarts the period",
            clear_2m,
            "bad good*2 none good*2",
            "f f f f f f",
        ),
        (
            "after the held reading, 2m of clear readings clear it",
            clear_2m,
            "bad good*2 err good*3",
            "f f f f f f o",
        ),
        (
            "a silence in the clear period restarts it",
            clear_2m,
            "bad good*2 +5m good*2",
            "f f f f f",
        ),
    ]);
}

#[test]
fn consecutive_counts_breaching_readings_of_one_run() {
    let three = "signal = \"health\"\nconsecutive = 3";
    check(&[
        ("three failures in a row", three, "bad*3", "p p f"),
        (
            "a held reading breaks the run",
            three,
            "bad*2 err bad",
            "p p p p",
        ),
        (
            "the run starts again after it",
            three,
            "bad*2 err bad*3",
            "p p p p p f",
        ),
        (
            "a no data reading under hold breaks it too",
            three,
            "bad none bad bad",
            "p p p p",
        ),
        (
            "a silence of a minute between checks 10s apart breaks it",
            three,
            "bad*2 +1m bad bad",
            "p p p p",
        ),
    ]);
}

#[test]
fn m_of_n_counts_only_readings_of_one_run() {
    let two_of_three = "signal = \"health\"\nm_of_n = [2, 3]";
    check(&[
        ("two of three", two_of_three, "bad good bad", "p p f"),
        (
            "a breach before a held reading does not count with one after it",
            two_of_three,
            "bad err bad",
            "p p p",
        ),
        (
            "two breaches after the held reading do",
            two_of_three,
            "bad err bad good bad",
            "p p p p f",
        ),
        (
            "nor across a silence",
            two_of_three,
            "bad +1m bad good",
            "p p p",
        ),
        (
            "a good reading after the held one ends the pending breach",
            two_of_three,
            "bad err good",
            "p p o",
        ),
    ]);
}

#[test]
fn the_breach_start_survives_held_readings_so_blame_sees_it() {
    // Blame compares when the breach began with the latest change: a breach seen before
    // a lull is not made younger by it, though `for` is proven again after it.
    let cfg = one_rule(FOR_5M);
    let rule = &cfg.rules[0];
    let mut state = RuleState::new();
    let minute = |m: u64| Ts::from_secs(1_795_000_000 + m * 60);
    let bad = reading(SignalKind::Rate, "bad");
    state.on_reading(rule, &bad, &Change::default(), minute(0));
    state.on_reading(
        rule,
        &reading(SignalKind::Rate, "few"),
        &Change::default(),
        minute(1),
    );
    let fired: Vec<(u64, Option<Ts>)> = (2..=8)
        .filter_map(|m| {
            let t = state.on_reading(rule, &bad, &Change::default(), minute(m))?;
            (t.to == Phase::Firing).then_some((m, t.breach_since))
        })
        .collect();
    assert_eq!(fired, [(7, Some(minute(0)))]);
}

#[test]
fn the_judged_value_is_the_latest_measured_one_and_none_without_a_value() {
    let cfg = one_rule(FOR_5M);
    let rule = &cfg.rules[0];
    let mut state = RuleState::new();
    let mut judged = Vec::new();
    let mut now = Ts::from_secs(1_795_000_000);
    for word in ["bad", "err", "good", "few", "none", "bad"] {
        state.on_reading(
            rule,
            &reading(SignalKind::Rate, word),
            &Change::default(),
            now,
        );
        judged.push(state.latest_judged());
        now = now.plus(std::time::Duration::from_secs(60));
    }
    // A source error judges nothing: the value before it stays.
    let (bad, good) = (Some((0.1, None)), Some((0.01, None)));
    assert_eq!(judged, [bad, bad, good, None, None, bad]);
}
