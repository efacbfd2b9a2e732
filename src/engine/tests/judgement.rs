//! Table-driven tests of what a change means for the judgement of a target: notices
//! that must not wait for a reminder (another rule firing into a decided incident, a
//! revision marked bad deployed again), the previous revision counting as healthy only
//! after `healthy_for` without a rule pending or firing, and a breach after a change
//! being judged apart from an incident opened before it.
//!
//! It reuses the script language and rendering of `engine::tests`.

use super::*;

/// Two notifiers and a ladder: the team hears of openings, the pager of refusals (and,
/// when `bad` is set, of a bad revision deployed again).
fn ladder(bad: bool) -> String {
    let extra = if bad {
        ", \"bad_revision_deployed\""
    } else {
        ""
    };
    format!(
        r#"
[[notifier]]
name = "chat"
type = "log"

[[notifier]]
name = "pager"
type = "log"

[[escalation]]
name = "team"
on = ["opened", "rollback_started", "resolved"]
notify = ["chat"]

[[escalation]]
name = "on call"
on = ["not_rolled_back", "verification_failed"{extra}]
repeat = "15m"
notify = ["pager"]
"#
    )
}

/// A second rule of the target, on latency.
const SLOW_RULE: &str = r#"
[[rule]]
name = "slow"
signal = "latency"
when = "> 200ms"
for = "1m"
"#;

/// The standard target (with `target_keys` added), both rules, the plan and the ladder.
fn judged(target_keys: &str, bad: bool) -> Config {
    config(
        &format!("{TARGET}{target_keys}"),
        &format!("{ERRORS_RULE}\n{SLOW_RULE}\n{PLAN}\n{}", ladder(bad)),
    )
}

/// The timeline lines (of any incident) that contain `text`.
fn timeline_with<'a>(run: &'a Run, text: &str) -> Vec<&'a str> {
    run.effects
        .iter()
        .filter_map(|(_, e)| match e {
            Effect::Timeline { entry, .. } if entry.text.contains(text) => {
                Some(entry.text.as_str())
            }
            _ => None,
        })
        .collect()
}

/// Runs each case's script and checks the rendered effects (only the last ones when the
/// expectation starts with a line `...`), then that the timeline holds a line containing
/// each of `says`.
fn check_cases(cases: &[(&str, Config, &str, &str, &[&str])]) {
    for (name, cfg, script, expected, says) in cases {
        let mut run = Run::new(cfg.clone());
        run.script(script);
        let out = run.output();
        let (expected, actual) = match expected.trim_start().strip_prefix("...\n") {
            Some(tail) => {
                let n = tail.lines().filter(|l| !l.trim().is_empty()).count();
                let lines: Vec<&str> = out.lines().collect();
                (tail, lines[lines.len().saturating_sub(n)..].join("\n"))
            }
            None => (*expected, out.clone()),
        };
        eprintln!("case {name}");
        assert_lines(&actual, expected);
        for text in *says {
            assert!(
                !timeline_with(&run, text).is_empty(),
                "case {name}: no timeline line says {text:?}\n{out}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// Class 7: notices that must not wait.
// ---------------------------------------------------------------------------------------

#[test]
fn a_rule_firing_into_a_decided_incident_is_announced_at_once() {
    check_cases(&[
        (
            "escalated: nothing to blame, then latency fires too",
            judged("", false),
            "
            0 change v1
            1m..3m/1m errors 10/100
            4m..5m/1m latency 0.5
            ",
            "
            1m rule errors-high ok -> pending
            3m rule errors-high pending -> firing
            3m notify opened (team)
            3m escalated: no change of this target has been observed since rearguard started, so there is nothing to blame
            3m notify not_rolled_back (on call)
            4m rule slow ok -> pending
            5m rule slow pending -> firing
            5m notify rule_joined -> chat, pager
            ",
            &["rule slow joined this incident: 500ms"],
        ),
        (
            "rolling back: latency fires while the plan runs",
            judged("", false),
            "
            0 change v1
            10m change v2
            12m..14m/1m errors 10/100
            14m..15m/1m latency 0.5
            ",
            "
            10m change v1 -> v2 (v1 healthy)
            12m rule errors-high ok -> pending
            14m rule errors-high pending -> firing
            14m notify opened (team)
            14m notify rollback_started (team)
            14m run step 0 attempt 1 (v2 -> v1)
            14m rule slow ok -> pending
            15m rule slow pending -> firing
            15m notify rule_joined -> chat
            ",
            &["rule slow joined this incident"],
        ),
    ]);
}

/// Deploys v2 over v1 at 10m, rolls it back (verified at 20m, v2 marked bad).
const ROLLED_BACK: &str = "
    0 change v1
    10m change v2
    12m..14m/1m errors 10/100
    15m done ok
    15m done ok
    15m change v1
    16m errors 0/100
    20m tick
";

#[test]
fn a_revision_marked_bad_deployed_again_is_announced_at_once() {
    let id = "web-20261118T112040";
    let said = format!("v2 was marked bad by incident {id} and is deployed again");
    check_cases(&[
        (
            "no incident open: told under the incident that marked it bad",
            judged("", true),
            &format!("{ROLLED_BACK}\n30m change v2"),
            "
            ...
            20m closed Breach incident: rolled back
            30m change v1 -> v2 (v1 healthy)
            30m notify bad_revision_deployed -> pager
            ",
            &[&said],
        ),
        (
            "an incident open: told on it, to everyone already told",
            judged("", true),
            &format!("{ROLLED_BACK}\n36m..38m/1m errors 10/100\n40m change v2"),
            "
            ...
            38m notify not_rolled_back (on call)
            40m change v1 -> v2 (v1 unhealthy)
            40m notify bad_revision_deployed -> chat, pager
            ",
            &[&said],
        ),
    ]);
}

// ---------------------------------------------------------------------------------------
// Class 8: healthy means healthy for a while.
// ---------------------------------------------------------------------------------------

/// Latency noise on v1 (pending at 8m, broken at 9m), v2 deployed at `deploy` minutes,
/// and v2 breaching from two minutes after.
fn noise_then_deploy(deploy: u64) -> String {
    format!(
        "0 change v1\n8m latency 0.5\n9m latency 0.1\n{deploy}m change v2\n{}m..{}m/1m errors 10/100",
        deploy + 2,
        deploy + 4
    )
}

/// What follows [`noise_then_deploy`] when v1 counts as healthy: the rollback.
fn noise_then_rollback(deploy: u64) -> String {
    let (p, f) = (deploy + 2, deploy + 4);
    format!(
        "
        8m rule slow ok -> pending
        9m rule slow pending -> ok
        {deploy}m change v1 -> v2 (v1 healthy)
        {p}m rule errors-high ok -> pending
        {f}m rule errors-high pending -> firing
        {f}m notify opened (team)
        {f}m notify rollback_started (team)
        {f}m run step 0 attempt 1 (v2 -> v1)
        "
    )
}

#[test]
fn the_previous_revision_is_healthy_only_without_unrest_for_healthy_for() {
    check_cases(&[
        (
            "noise broke a latency streak a minute before the deploy",
            judged("", false),
            &noise_then_deploy(10),
            "
            8m rule slow ok -> pending
            9m rule slow pending -> ok
            10m change v1 -> v2 (v1 unhealthy)
            12m rule errors-high ok -> pending
            14m rule errors-high pending -> firing
            14m notify opened (team)
            14m escalated: the previous revision v1 was not healthy: rule slow was pending from 11:14:40.000 to 11:15:40.000, within the 10 min before the change
            14m notify not_rolled_back (on call)
            ",
            &[],
        ),
        (
            "the same noise eleven minutes before the deploy",
            judged("", false),
            &noise_then_deploy(20),
            &noise_then_rollback(20),
            &["the previous revision v1 was healthy: no rule pending or firing in the 10 min before the change"],
        ),
        (
            "a shorter healthy_for looks at less",
            judged("healthy_for = \"30s\"\n", false),
            &noise_then_deploy(10),
            &noise_then_rollback(10),
            &["the previous revision v1 was healthy: no rule pending or firing in the 30.0 s before the change"],
        ),
    ]);
}

#[test]
fn healthy_for_defaults_to_ten_minutes_and_may_be_zero() {
    assert_eq!(
        judged("", false).targets[0].healthy_for,
        Duration::from_secs(600)
    );
    assert_eq!(
        judged("healthy_for = \"0s\"\n", false).targets[0].healthy_for,
        Duration::ZERO
    );
}

// ---------------------------------------------------------------------------------------
// Class 9: an old incident does not swallow a new deploy.
// ---------------------------------------------------------------------------------------

/// v1 breaks with nothing to blame (escalated at 3m), v2 is deployed at 10m over the open
/// incident, and latency breaks after it (firing at 12m).
const OLD_THEN_DEPLOY: &str = "
    0 change v1
    1m..3m/1m errors 10/100
    10m change v2
    11m..12m/1m latency 0.5
";

#[test]
fn a_breach_after_a_change_is_judged_apart_from_an_incident_opened_before_it() {
    check_cases(&[
        (
            "escalated before the deploy, latency breaks after it: a new incident",
            judged("", false),
            OLD_THEN_DEPLOY,
            "
            1m rule errors-high ok -> pending
            3m rule errors-high pending -> firing
            3m notify opened (team)
            3m escalated: no change of this target has been observed since rearguard started, so there is nothing to blame
            3m notify not_rolled_back (on call)
            10m change v1 -> v2 (v1 unhealthy)
            11m rule slow ok -> pending
            12m rule slow pending -> firing
            12m notify opened (team)
            12m escalated: the previous revision v1 was not healthy: rule errors-high was firing since 11:07:40.000 when it was replaced
            12m notify not_rolled_back (on call)
            ",
            &[
                "rule slow fired after the change to v2: it is judged in incident web-20261118T111840",
                "while incident web-20261118T110940 (opened before it, never acted on) is still open",
                "this incident stays with the revision it was opened on",
            ],
        ),
        (
            "the old incident's rules clear: it ends, the new one goes on",
            judged("", false),
            &format!("{OLD_THEN_DEPLOY}\n13m errors 0/100"),
            "
            ...
            13m rule errors-high firing -> ok
            13m notify resolved -> chat, pager
            13m closed Breach incident: recovered
            ",
            &[],
        ),
    ]);
}

#[test]
fn a_new_judgement_keeps_both_incidents_open_and_linked() {
    let mut run = Run::new(judged("", false));
    run.script(OLD_THEN_DEPLOY);
    let open: Vec<(&str, Option<&str>)> = run
        .engine
        .incidents()
        .iter()
        .map(|i| (i.id.as_str(), i.follows.as_deref()))
        .collect();
    assert_eq!(
        open,
        [
            ("web-20261118T110940", None),
            ("web-20261118T111840", Some("web-20261118T110940")),
        ]
    );
    assert_eq!(
        run.engine.incidents()[0].rules,
        [0],
        "the old incident kept only its rule"
    );
}
