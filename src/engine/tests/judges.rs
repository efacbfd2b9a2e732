//! Table-driven tests of judges (`when = "> baseline"`): worse, not worse or
//! inconclusive against the baseline before the latest change, on a rate (a mixture
//! SPRT) and on a number (Mann-Whitney U on the median and the spread); inconclusive
//! never acts and, past `inconclusive_after`, tells people; and the judge's promise,
//! checked on generated healthy deploys judged at every reading: it calls at most
//! `1 - confidence` of them worse.
//!
//! It reuses the script language and rendering of `engine::tests`.

use super::*;

/// A deterministic source of uniform numbers in [0, 1) (xorshift64*).
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A binomial draw by the normal approximation (exact enough for test traffic).
    fn binomial(&mut self, n: u64, p: f64) -> u64 {
        let (mean, sd) = (n as f64 * p, (n as f64 * p * (1.0 - p)).sqrt());
        let z = (-2.0 * self.next().max(1e-12).ln()).sqrt()
            * (2.0 * std::f64::consts::PI * self.next()).cos();
        (mean + sd * z).round().clamp(0.0, n as f64) as u64
    }
}

/// Script lines of `signal` every minute from `from` to `to` (minutes): rate readings
/// of `requests` with error ratio `ratio`, or latency around `level` spread by `spread`.
fn rate_lines(noise: &mut Noise, from: u64, to: u64, requests: u64, ratio: f64) -> String {
    (from..=to)
        .map(|m| {
            format!(
                "{m}m errors {}/{requests}\n",
                noise.binomial(requests, ratio)
            )
        })
        .collect()
}

fn latency_lines(noise: &mut Noise, from: u64, to: u64, level: f64, spread: f64) -> String {
    (from..=to)
        .map(|m| {
            format!(
                "{m}m latency {:.4}\n",
                level * (1.0 + spread * (noise.next() - 0.5))
            )
        })
        .collect()
}

/// A judge on `signal` with `keys`, on a target without a plan (a firing rule opens an
/// incident that is escalated at once).
fn judged(signal: &str, keys: &str) -> Config {
    let window = if keys.contains("baseline_window") {
        ""
    } else {
        "baseline_window = \"30m\"\n"
    };
    config(
        "",
        &format!(
            "[[rule]]\nname = \"worse\"\nsignal = \"{signal}\"\nwhen = \"> baseline\"\n{window}{keys}\n[[notifier]]\nname = \"log\"\ntype = \"log\"\n"
        ),
    )
}

/// When the rule first fired, in minutes, if it did.
fn fired_at(run: &Run) -> Option<u64> {
    run.effects.iter().find_map(|(t, e)| match e {
        Effect::RuleChanged { transition, .. } if transition.to == Phase::Firing => {
            Some((t.0 - T0_MS) / 60_000)
        }
        _ => None,
    })
}

struct Case {
    what: &'static str,
    signal: &'static str,
    keys: &'static str,
    /// Readings from 0 to 29m (v1) and from 31m on (v2, deployed at 30m).
    before: fn(&mut Noise) -> String,
    after: fn(&mut Noise) -> String,
    /// Fires by this minute, or never.
    fires_by: Option<u64>,
    /// Words of the rule's evidence at the end.
    evidence: &'static str,
    /// Whether people are told the change cannot be judged.
    cannot_judge: bool,
}

const CASES: &[Case] = &[
    Case {
        what: "errors five times the baseline fire within minutes",
        signal: "errors",
        keys: "",
        before: |n| rate_lines(n, 0, 29, 1000, 0.01),
        after: |n| rate_lines(n, 31, 60, 1000, 0.05),
        fires_by: Some(34),
        evidence: "worse than 1.5x the baseline at",
        cannot_judge: false,
    },
    Case {
        what: "errors doubled at low traffic fire once the evidence is there",
        signal: "errors",
        keys: "",
        before: |n| rate_lines(n, 0, 29, 200, 0.02),
        after: |n| rate_lines(n, 31, 90, 200, 0.06),
        fires_by: Some(60),
        evidence: "mixture SPRT",
        cannot_judge: false,
    },
    Case {
        what: "a healthy deploy is found not worse and never fires",
        signal: "errors",
        keys: "",
        before: |n| rate_lines(n, 0, 29, 1000, 0.01),
        after: |n| rate_lines(n, 31, 90, 1000, 0.01),
        fires_by: None,
        evidence: "not worse than 1.5x the baseline at",
        cannot_judge: false,
    },
    Case {
        what: "errors up by less than the effect never fire",
        signal: "errors",
        keys: "min_effect = \"2x\"",
        before: |n| rate_lines(n, 0, 29, 1000, 0.01),
        after: |n| rate_lines(n, 31, 90, 1000, 0.014),
        fires_by: None,
        evidence: "against 1",
        cannot_judge: false,
    },
    Case {
        what: "a few requests are inconclusive, never act, and people are told",
        signal: "errors",
        keys: "inconclusive_after = \"20m\"",
        before: |n| rate_lines(n, 0, 29, 3, 0.01),
        after: |n| rate_lines(n, 31, 60, 1, 0.02),
        fires_by: None,
        evidence: "inconclusive",
        cannot_judge: true,
    },
    Case {
        what: "a thin baseline is no baseline: the judge holds and tells people",
        signal: "errors",
        keys: "inconclusive_after = \"20m\"",
        before: |n| rate_lines(n, 27, 29, 1000, 0.01),
        after: |n| rate_lines(n, 31, 60, 1000, 0.2),
        fires_by: None,
        evidence: "no baseline: 3 readings cover 10% of 30m",
        cannot_judge: true,
    },
    Case {
        what: "latency 60% slower fires",
        signal: "latency",
        keys: "",
        before: |n| latency_lines(n, 0, 29, 0.2, 0.2),
        after: |n| latency_lines(n, 31, 90, 0.32, 0.2),
        fires_by: Some(60),
        evidence: "Mann-Whitney U",
        cannot_judge: false,
    },
    Case {
        what: "latency from the same distribution never fires",
        signal: "latency",
        keys: "",
        before: |n| latency_lines(n, 0, 29, 0.2, 0.2),
        after: |n| latency_lines(n, 31, 180, 0.2, 0.2),
        fires_by: None,
        evidence: "0.993x the median",
        // Its spread came out 1.16x the baseline's, too near the 1.2x margin to call
        // either way: inconclusive past 30m, so people hear of it.
        cannot_judge: true,
    },
    Case {
        what: "latency 10% faster is found not worse",
        signal: "latency",
        keys: "",
        before: |n| latency_lines(n, 0, 29, 0.2, 0.2),
        after: |n| latency_lines(n, 31, 90, 0.18, 0.1),
        fires_by: None,
        evidence: "not worse than 1.2x the baseline",
        cannot_judge: false,
    },
    Case {
        what: "a tripled spread around the same median fires",
        signal: "latency",
        keys: "inconclusive_after = \"1h\"",
        before: |n| latency_lines(n, 0, 29, 0.2, 0.2),
        after: |n| latency_lines(n, 31, 90, 0.2, 0.6),
        fires_by: Some(90),
        evidence: "the spread",
        cannot_judge: false,
    },
];

#[test]
fn judges_say_worse_not_worse_or_inconclusive() {
    for case in CASES {
        let mut noise = Noise(0x9e37_79b9_7f4a_7c15);
        let mut run = Run::new(judged(case.signal, case.keys));
        let script = format!(
            "0 change v1\n{}30m change v2\n{}",
            (case.before)(&mut noise),
            (case.after)(&mut noise)
        );
        run.script(&script);
        let out = run.output();
        let what = case.what;
        match (case.fires_by, fired_at(&run)) {
            (Some(by), Some(at)) => assert!(at <= by, "{what}: fired at {at}m\n{out}"),
            (None, None) => {}
            (want, got) => panic!("{what}: fires by {want:?}, fired at {got:?}\n{out}"),
        }
        let said = run.engine.rules[0].evidence(&run.engine.cfg.rules[0], false);
        assert!(said.contains(case.evidence), "{what}: evidence {said:?}");
        assert_eq!(
            out.contains("notify cannot_judge"),
            case.cannot_judge,
            "{what}: cannot_judge notice\n{out}"
        );
    }
}

#[test]
fn the_cannot_judge_notice_names_the_revision_and_what_is_missing() {
    let mut noise = Noise(7);
    let mut run = Run::new(judged("errors", "inconclusive_after = \"20m\""));
    let script = format!(
        "0 change v1\n{}30m change v2\n{}",
        rate_lines(&mut noise, 0, 29, 1000, 0.01),
        rate_lines(&mut noise, 31, 60, 3, 0.01)
    );
    run.script(&script);
    let notice = run
        .effects
        .iter()
        .find_map(|(t, e)| match e {
            Effect::Notify(n) if n.occasion == Occasion::CannotJudge => Some((*t, n.clone())),
            _ => None,
        })
        .expect("a cannot_judge notice");
    assert_eq!(
        notice.0,
        at_ms(50 * 60_000),
        "told once 20m after the change"
    );
    let reason = notice.1.facts.reason.clone().unwrap_or_default();
    for words in [
        "cannot judge v2 of web",
        "still inconclusive 20m after the change",
        "requests since the change",
        "requests before it",
    ] {
        assert!(reason.contains(words), "{words:?} in {reason:?}");
    }
    let told = run
        .effects
        .iter()
        .filter(|(_, e)| matches!(e, Effect::Notify(n) if n.occasion == Occasion::CannotJudge))
        .count();
    assert_eq!(told, 1, "told once per change");
}

/// The judge's promise, on generated healthy deploys judged at every reading: an hour
/// of readings before and after the change from one distribution (binomial errors at a
/// ratio from 0.5% to 5%, 20 to 2000 requests a minute; latency around one level), with
/// no margin (`min_effect = "1x"`, the hardest case). At most `1 - confidence` of them
/// may fire; the bound allows for the sampling error of 300 deploys.
#[test]
fn a_judge_fires_on_at_most_one_minus_confidence_of_healthy_deploys() {
    for signal in ["errors", "latency"] {
        let mut noise = Noise(0x5eed_0000_0000_0001);
        let mut fired = 0;
        let deploys = 300;
        for _ in 0..deploys {
            let mut run = Run::new(judged(
                signal,
                "confidence = \"90%\"\nmin_effect = \"1x\"\nbaseline_window = \"1h\"",
            ));
            let requests = 20 + (noise.next() * 1980.0) as u64;
            let ratio = 0.005 + noise.next() * 0.045;
            let level = 0.05 + noise.next() * 0.5;
            let lines = |n: &mut Noise, from, to| match signal {
                "errors" => rate_lines(n, from, to, requests, ratio),
                _ => latency_lines(n, from, to, level, 0.3),
            };
            let before = lines(&mut noise, 0, 59);
            let after = lines(&mut noise, 61, 120);
            run.script(&format!("0 change v1\n{before}60m change v2\n{after}"));
            fired += usize::from(fired_at(&run).is_some());
        }
        // 10% of 300 is 30; three standard deviations (5.2 each) on top.
        assert!(
            fired <= 45,
            "{signal}: {fired} of {deploys} healthy deploys fired at 90%"
        );
        eprintln!("{signal}: {fired} of {deploys} healthy deploys fired at 90% confidence");
    }
}
