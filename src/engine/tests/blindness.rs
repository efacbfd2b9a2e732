//! Table-driven tests of blindness: the share rule (at least `blind_share` of a
//! signal's evaluations in its window were source errors, sight back at half that) beside
//! the continuous rule (`blind_after` without a break), which stays as it was.
//!
//! Each case is the health probe's readings, one every 10s from 0, written as a pattern
//! (`o` a passing check, `e` a source error, `n` no data), the engine ticked after each;
//! what it says is the blind incident's notices and its timeline lines about the probe.

use super::*;

/// What a reader of a blindness case cares about, one line each: the notices, the end of
/// the incident, and the decisions about signal `health`.
fn sight_lines(run: &Run) -> String {
    let mut lines = Vec::new();
    for (t, e) in &run.effects {
        let line = match e {
            Effect::Notify(n) => format!("notify {}", n.occasion.name()),
            Effect::IncidentClosed(i) => format!("closed {:?}", i.cause),
            Effect::Timeline { entry, .. }
                if entry.kind == EntryKind::Decision && entry.text.contains("signal health") =>
            {
                format!("why: {}", entry.text)
            }
            _ => continue,
        };
        lines.push(format!("{} {line}", show_time(t.0 - T0_MS)));
    }
    lines.join("\n")
}

/// The script of a pattern of health readings, one every 10s from `start_s`, each
/// followed by a tick.
fn pattern_script(start_s: u64, pattern: &str) -> String {
    let mut script = String::new();
    for (k, c) in pattern.chars().enumerate() {
        let t = start_s + 10 * k as u64;
        let obs = match c {
            'o' => "ok",
            'e' => "error",
            'n' => "nodata",
            _ => panic!("bad pattern character {c:?}"),
        };
        script += &format!("{t} health {obs}\n{t} tick\n");
    }
    script
}

/// Runs `pattern` (with `daemon` keys, if any) and checks the lines it made.
fn check_sight(daemon: &str, pattern: &str, expected: &str) -> Run {
    let cfg = standard(&format!("[daemon]\n{daemon}"));
    let mut run = Run::new(cfg);
    run.script(&pattern_script(0, pattern));
    assert_lines(&sight_lines(&run), expected);
    run
}

fn times_of(n: usize, unit: &str) -> String {
    unit.repeat(n)
}

#[test]
fn a_probe_failing_every_other_evaluation_is_blind_once_ten_evaluations_show_it() {
    check_sight(
        "",
        &times_of(30, "eo"),
        "
        1m30s why: watchdog is blind: signal health fails on part of its evaluations: 5 of 10 evaluations in 5m were source errors (50% or more): connection refused
        1m30s notify blind
        ",
    );
}

#[test]
fn one_source_error_in_ten_evaluations_is_not_blindness() {
    check_sight("", &times_of(6, "oooooooooe"), "");
}

#[test]
fn two_in_five_stays_seen_under_the_default_and_is_blind_under_a_lower_share() {
    let pattern = times_of(12, "eoeoo");
    check_sight("", &pattern, "");
    check_sight(
        "blind_share = \"40%\"",
        &pattern,
        "
        1m30s why: watchdog is blind: signal health fails on part of its evaluations: 4 of 10 evaluations in 5m were source errors (40% or more): connection refused
        1m30s notify blind
        ",
    );
}

#[test]
fn a_share_hovering_at_the_threshold_keeps_one_incident_until_it_falls_to_half() {
    // Blind at 50%, then 10 minutes at a third (under the threshold, over half of it):
    // one incident, no flapping. Then only passing checks: sight returns when at most a
    // quarter of the window's 30 evaluations are errors, 7 of them: the eighth passing
    // check pushes the third error of the last third-errors stretch out.
    let pattern = format!(
        "{}{}{}",
        times_of(15, "eo"),
        times_of(20, "oeo"),
        times_of(30, "o")
    );
    check_sight(
        "",
        &pattern,
        "
        1m30s why: watchdog is blind: signal health fails on part of its evaluations: 5 of 10 evaluations in 5m were source errors (50% or more): connection refused
        1m30s notify blind
        16m10s why: signal health reads again: 7 of 30 evaluations in 5m were source errors (25% or fewer)
        16m10s notify resolved
        16m10s closed Blind
        ",
    );
}

#[test]
fn an_unbroken_failure_is_left_to_blind_after_and_ends_at_the_next_reading() {
    // Ten errors in a row would be 100%: the share rule leaves an unbroken failure alone,
    // so the continuous rule says it after 2m, and the first passing check ends it.
    let pattern = format!("{}{}o", times_of(10, "o"), times_of(20, "e"));
    check_sight(
        "",
        &pattern,
        "
        3m40s why: watchdog is blind: signal health has failed to read since ...
        3m40s notify blind
        5m why: signal health reads again
        5m notify resolved
        5m closed Blind
        ",
    );
}

#[test]
fn outages_with_one_reading_between_are_held_in_one_incident_from_the_second_on() {
    // Down 2m10s, one reading, down again, three times. The continuous rule alone opens
    // and closes an incident per outage. The first outage is one run of errors, the
    // continuous rule's alone, ended by the next reading; from the second on the share
    // rule holds them all in one incident until the share falls to a quarter.
    let down = times_of(13, "e");
    let pattern = format!("{down}o{down}o{down}o{}", times_of(40, "o"));
    let run = check_sight(
        "",
        &pattern,
        "
        2m why: watchdog is blind: signal health has failed to read since ...
        2m notify blind
        2m10s why: signal health reads again
        2m10s notify resolved
        2m10s closed Blind
        2m20s why: watchdog is blind: signal health fails on part of its evaluations: 14 of 15 evaluations in 5m were source errors (50% or more): connection refused
        2m20s notify blind
        4m20s why: watchdog is blind: signal health has failed to read since ...
        4m30s why: signal health reads again, but 26 of 28 evaluations in 5m were source errors: blind until 25% or fewer are
        6m40s why: watchdog is blind: signal health has failed to read since ...
        6m50s why: signal health reads again, but 27 of 30 evaluations in 5m were source errors: blind until 25% or fewer are
        10m30s why: signal health reads again: 7 of 30 evaluations in 5m were source errors (25% or fewer)
        10m30s notify resolved
        10m30s closed Blind
        ",
    );
    let opened = run
        .effects
        .iter()
        .filter(|(_, e)| matches!(e, Effect::Notify(n) if n.occasion == Occasion::Blind))
        .count();
    assert_eq!(opened, 2, "{}", sight_lines(&run));
}

#[test]
fn no_data_is_sight_not_error() {
    check_sight("", &times_of(30, "en"), "
        1m30s why: watchdog is blind: signal health fails on part of its evaluations: 5 of 10 evaluations in 5m were source errors (50% or more): connection refused
        1m30s notify blind
        ");
    check_sight("", &times_of(60, "n"), "");
}

#[test]
fn a_slow_signal_is_judged_over_a_window_long_enough_for_the_minimum() {
    // The `errors` signal is read every minute: 5m would hold five evaluations, under
    // the minimum of ten, so its window is 10m.
    let cfg = standard("");
    let mut run = Run::new(cfg);
    let mut script = String::new();
    for k in 0..12u64 {
        let obs = if k % 2 == 0 { "error" } else { "0/100" };
        script += &format!("{}m errors {obs}\n{}m tick\n", k, k);
    }
    run.script(&script);
    let texts: Vec<&str> = run
        .effects
        .iter()
        .filter_map(|(_, e)| match e {
            Effect::Timeline { entry, .. } => Some(entry.text.as_str()),
            _ => None,
        })
        .collect();
    assert!(
        texts.contains(
            &"watchdog is blind: signal errors fails on part of its evaluations: 5 of 10 evaluations in 10m were source errors (50% or more): connection refused"
        ),
        "{texts:#?}"
    );
}

#[test]
fn the_share_rule_keys_are_checked() {
    for (keys, error) in [
        (
            "blind_share = \"0%\"",
            "daemon.blind_share: must be greater than 0%",
        ),
        (
            "blind_share = \"half\"",
            "daemon.blind_share: expected a percentage",
        ),
        (
            "blind_share_min = 1",
            "daemon.blind_share_min: expected 2 to 10000, got 1",
        ),
        (
            "blind_share_window = \"0s\"",
            "daemon.blind_share_window: must be greater than zero",
        ),
    ] {
        let text = format!("[daemon]\n{keys}\n");
        let err = config::load_str(&text, Format::Toml, std::iter::empty(), Path::new("."))
            .expect_err(keys)
            .to_string();
        assert!(err.contains(error), "{keys}: {err}");
    }
}
