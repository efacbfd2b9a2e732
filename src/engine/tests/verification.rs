//! Table-driven tests of how a verification window ends: passed only on measured readings
//! that show the rules clear, failed when a rule still fires, and "rolled back, not
//! verified" when the window ends without that evidence, whatever the rules' `no_data`
//! and `insufficient` policies.
//!
//! It reuses the script language and rendering of `engine::tests`.

use super::*;

/// How a verification ended.
#[derive(Debug, Clone, Copy, PartialEq)]
enum End {
    Passed,
    Failed,
    Inconclusive,
}

/// The standard configuration with `keys` added to the error rule.
fn with_rule_keys(keys: &str) -> Config {
    config(TARGET, &format!("{ERRORS_RULE}{keys}\n{PLAN}"))
}

/// Runs a rollback whose plan finishes at 15m, then `after` (script lines), then a tick
/// at 20m when the window ends; returns the run and the verdict line.
fn verify(keys: &str, after: &str) -> (Run, String) {
    let mut run = Run::new(with_rule_keys(keys));
    run.script(&format!(
        "{DEPLOY_AND_BREACH}\n15m done ok\n15m done ok\n{after}\n20m tick"
    ));
    let verdict = run
        .output()
        .lines()
        .find(|l| l.starts_with("20m verification ") || l.starts_with("19m verification "))
        .unwrap_or_default()
        .to_owned();
    (run, verdict)
}

fn ended(verdict: &str) -> Option<End> {
    let text = verdict.split_once(' ').map_or("", |(_, t)| t);
    if text.starts_with("verification passed") {
        Some(End::Passed)
    } else if text.starts_with("verification failed") {
        Some(End::Failed)
    } else if text.starts_with("verification inconclusive") {
        Some(End::Inconclusive)
    } else {
        None
    }
}

/// (what, rule keys, readings after the plan, how it ends, words the verdict contains)
const CASES: &[(&str, &str, &str, End, &str)] = &[
    (
        "no traffic with no_data = ok is not a clear rule",
        "no_data = \"ok\"",
        "16m..19m/1m errors nodata",
        End::Inconclusive,
        "errors-high has had no measured reading since the plan finished (no data",
    ),
    (
        "too few requests with insufficient = ok are not a clear rule",
        "min_requests = 50\ninsufficient = \"ok\"",
        "16m..19m/1m errors 0/10",
        End::Inconclusive,
        "no measured reading since the plan finished (insufficient samples (10 of 50 needed)",
    ),
    (
        "a window that ends in silence cannot tell",
        "no_data = \"ok\"",
        "16m errors 0/100\n17m..19m/1m errors nodata",
        End::Inconclusive,
        "errors-high had no measured value at the end (no data",
    ),
    (
        "a window that ends on a source error cannot tell",
        "",
        "16m..18m/1m errors 0/100\n19m errors error",
        End::Inconclusive,
        "errors-high had no measured value at the end",
    ),
    (
        "a rule breaching again but not yet firing is not clear",
        "",
        "16m..18m/1m errors 0/100\n19m errors 10/100",
        End::Inconclusive,
        "errors-high is breaching again (10% (10/100 requests)",
    ),
    (
        "measured readings that show the rule clear verify it",
        "min_requests = 50",
        "16m..19m/1m errors 0/100",
        End::Passed,
        "every rule is clear",
    ),
    (
        "measured clear readings among no-data ones verify it when the window ends on one",
        "no_data = \"ok\"",
        "16m..18m/1m errors nodata\n19m errors 1/100",
        End::Passed,
        "every rule is clear",
    ),
    (
        "a rule still firing fails it, whatever else is missing",
        "",
        "16m..19m/1m errors 10/100",
        End::Failed,
        "errors-high is still firing",
    ),
];

#[test]
fn a_verification_passes_only_on_measured_readings_that_show_the_rules_clear() {
    for &(what, keys, after, want, words) in CASES {
        let (run, verdict) = verify(keys, after);
        let out = run.output();
        assert_eq!(ended(&verdict), Some(want), "{what}:\n{out}");
        assert!(
            verdict.contains(words),
            "{what}: {verdict:?} lacks {words:?}"
        );
        let incident = run.engine.incidents().first();
        match want {
            End::Passed => {
                assert!(out.contains("notify rollback_succeeded"), "{what}:\n{out}");
                assert!(
                    incident.is_none() && run.engine.breaker(0).is_none(),
                    "{what}"
                );
            }
            End::Failed => {
                assert!(out.contains("notify verification_failed"), "{what}:\n{out}");
                assert_eq!(incident.and_then(|i| i.outcome.clone()), None, "{what}");
            }
            End::Inconclusive => {
                assert!(
                    out.contains("notify verification_inconclusive"),
                    "{what}:\n{out}"
                );
                assert!(!out.contains("rollback_succeeded"), "{what}:\n{out}");
                let inc = incident.expect("the incident stays open, escalated");
                assert_eq!(inc.state, IncidentState::Escalated, "{what}");
                assert_eq!(inc.outcome, Some(Outcome::RolledBackUnverified), "{what}");
                let breaker = run.engine.breaker(0).unwrap_or_default();
                assert!(
                    breaker.ends_with("could not be verified"),
                    "{what}: {breaker}"
                );
            }
        }
    }
}

#[test]
fn a_rollback_that_could_not_be_verified_stays_so_when_people_resolve_it() {
    let (mut run, verdict) = verify("no_data = \"ok\"", "16m..19m/1m errors nodata");
    assert_eq!(ended(&verdict), Some(End::Inconclusive));
    run.script("25m resolve");
    // The closed line renders the outcome the incident closed with.
    assert!(
        run.output()
            .contains("25m closed Breach incident: rolled back, not verified"),
        "{}",
        run.output()
    );
}

#[test]
fn the_notice_of_an_unverified_rollback_says_rearguard_cannot_tell() {
    let (run, _) = verify("no_data = \"ok\"", "16m..19m/1m errors nodata");
    let notice = run
        .effects
        .iter()
        .find_map(|(_, e)| match e {
            Effect::Notify(n) if n.occasion == Occasion::VerificationInconclusive => Some(n),
            _ => None,
        })
        .expect("people were told");
    assert!(
        notice.facts.next.contains("cannot tell"),
        "{:?}",
        notice.facts
    );
    assert!(
        notice.summary.contains("rolled back, not verified"),
        "{}",
        notice.summary
    );
}
