//! Table-driven tests of what makes a baseline (issue class "a baseline must be worth its
//! name"): a `x baseline` rule compares only with a baseline of at least
//! `baseline_min_samples` readings covering at least `baseline_min_coverage` of
//! `baseline_window` before the change; below that it holds (never a breach, whatever
//! its policies), and its evidence, which `why`, reports and notices quote, says why.
//!
//! It reuses the script language and rendering of `engine::tests`.

use super::*;

/// A latency rule against 1.5x its baseline, with `keys`, on a target without a plan
/// (a firing rule opens an incident that is escalated at once).
fn slower(keys: &str) -> Config {
    config(
        "",
        &format!(
            "[[rule]]\nname = \"slower\"\nsignal = \"latency\"\nwhen = \"> 1.5x baseline\"\nfor = \"0s\"\nbaseline_window = \"10m\"\n{keys}"
        ),
    )
}

/// The lines a firing `slower` renders at `at`.
fn fires_at(at: &str) -> String {
    format!(
        "{at} rule slower ok -> firing\n{at} notify opened\n{at} escalated: ...\n{at} notify not_rolled_back"
    )
}

/// (what, rule keys, readings before the change at 10m, whether the rule fires on the
/// slow readings after it, words of the rule's evidence at the end)
const CASES: &[(&str, &str, &str, bool, &str)] = &[
    (
        "one reading is no baseline",
        "",
        "9m latency 0.1",
        false,
        "no baseline: 1 reading covers 10% of 10m before the change (a baseline needs 10 readings covering 50%)",
    ),
    (
        "three readings are no baseline",
        "",
        "7m..9m/1m latency 0.1",
        false,
        "no baseline: 3 readings cover 30% of 10m before the change",
    ),
    (
        "many readings crowded into a third of the window are no baseline",
        "",
        "6m40s..9m40s/20s latency 0.1",
        false,
        "no baseline: 10 readings cover 33% of 10m",
    ),
    (
        "readings on both sides of a silence cover only their own time",
        "",
        "0..2m/1m latency 0.1\n9m20s..9m50s/5s latency 0.1",
        false,
        "no baseline: 10 readings cover 42% of 10m",
    ),
    (
        "ten readings covering the window are a baseline",
        "",
        "0..9m/1m latency 0.1",
        true,
        "500ms (baseline 100ms)",
    ),
    (
        "the minimums are the rule's own",
        "baseline_min_samples = 3\nbaseline_min_coverage = \"25%\"",
        "7m..9m/1m latency 0.1",
        true,
        "500ms (baseline 100ms)",
    ),
    (
        "a thin baseline holds even when missing data would breach",
        "insufficient = \"breach\"\nno_data = \"breach\"",
        "9m latency 0.1",
        false,
        "no baseline: 1 reading covers 10%",
    ),
];

#[test]
fn a_baseline_needs_enough_readings_covering_enough_of_its_window() {
    for (what, keys, before, fires, evidence) in CASES {
        let mut run = Run::new(slower(keys));
        run.script(&format!(
            "0 change v1\n{before}\n10m change v2\n11m..15m/1m latency 0.5"
        ));
        let mut expected = "10m change v1 -> v2 (v1 healthy)".to_owned();
        if *fires {
            expected = format!("{expected}\n{}", fires_at("11m"));
        }
        eprintln!("case {what}");
        assert_lines(&run.output(), &expected);
        let said = run.engine.rules[0].evidence(&run.engine.cfg.rules[0], false);
        assert!(said.contains(evidence), "case {what}: evidence {said:?}");
    }
}

#[test]
fn without_any_baseline_the_rule_holds_whatever_its_policies() {
    let keys = "insufficient = \"breach\"\nno_data = \"breach\"";
    // No change observed: no baseline was ever taken.
    let mut run = Run::new(slower(keys));
    run.script("0..10m/1m latency 5.0");
    assert_lines(&run.output(), "");
    let said = run.engine.rules[0].evidence(&run.engine.cfg.rules[0], false);
    assert!(said.starts_with("no baseline: none was taken"), "{said}");
}

/// A rollback verified by a baseline rule whose baseline is thin: the rollback is not
/// verified, and the verdict (the incident's timeline, its report, `why`) says why.
#[test]
fn a_verification_that_needs_a_thin_baseline_says_why_it_cannot_tell() {
    let cfg = config(
        TARGET,
        &format!(
            "{ERRORS_RULE}\n[[rule]]\nname = \"slower\"\nsignal = \"latency\"\nwhen = \"> 1.5x baseline\"\nfor = \"0s\"\nbaseline_window = \"10m\"\n{}\nrules = [\"errors-high\", \"slower\"]",
            PLAN.trim_end()
        ),
    );
    let mut run = Run::new(cfg);
    run.script(
        "
        0 change v1
        9m latency 0.1
        10m change v2
        12m..14m/1m errors 10/100
        15m done ok
        15m done ok
        16m..19m/1m errors 0/100
        16m..19m/1m latency 0.1
        20m tick
        ",
    );
    let out = run.output();
    let verdict = out
        .lines()
        .find(|l| l.starts_with("20m verification inconclusive"))
        .unwrap_or_else(|| panic!("no inconclusive verdict:\n{out}"));
    assert!(
        verdict.contains("slower has had no measured reading since the plan finished (no baseline: 1 reading covers 10% of 10m before the change"),
        "{verdict}"
    );
}
