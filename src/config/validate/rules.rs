//! `[[rule]]`: when a signal's readings breach (`when`), for how long or how often (`for`,
//! `consecutive`, `m_of_n`, `within`), when a breach clears (`clear`, `clear_for`) and
//! what missing or insufficient data counts as. A rule's condition must fit its signal's
//! kind; this file checks that but must not look at a signal's source.

use std::collections::HashMap;
use std::time::Duration;

use super::ctx::{Ctx, each_slot};
use crate::config::raw::RawRule;
use crate::config::units::{Condition, Threshold, Unit, parse_condition, parse_percent};
use crate::config::{Judge, Policy, Rule, RuleMode, Signal, SignalKind};

/// One slot per rule of the file, `None` unless its item and signal are valid. A rule
/// whose signal exists in the file but has errors is left out silently (those errors
/// are reported already); one whose signal does not exist still has every key that does
/// not depend on the signal checked, so that `check` reports all of its errors at once.
pub(super) fn rules(
    ctx: &mut Ctx,
    raws: &[Option<RawRule>],
    signals: &[Option<Signal>],
    signal_index: &HashMap<&str, usize>,
) -> Vec<Option<Rule>> {
    each_slot(raws, |i, raw| {
        let p = format!("rule[{i}]");
        let Some(&signal) = signal_index.get(raw.signal.as_str()) else {
            ctx.err(
                format!("{p}.signal"),
                format!("no signal is named {:?}", raw.signal),
            );
            check_alone(ctx, &p, raw);
            return None;
        };
        let sig = signals.get(signal)?.as_ref()?;
        rule(ctx, &p, raw, signal, sig)
    })
}

/// The checks of a rule whose signal is unknown: every key that can be judged without
/// knowing the signal's kind.
fn check_alone(ctx: &mut Ctx, p: &str, raw: &RawRule) {
    for (key, text) in [("when", &raw.when), ("clear", &raw.clear)] {
        if let Some(Err(m)) = text.as_deref().map(parse_condition) {
            ctx.err(format!("{p}.{key}"), m);
        }
    }
    mode_alone(ctx, p, raw);
    ctx.duration(format!("{p}.clear_for"), &raw.clear_for, Duration::ZERO);
    ctx.positive_duration(
        format!("{p}.baseline_window"),
        &raw.baseline_window,
        Duration::from_secs(1800),
    );
    if let Some(Err(m)) = raw.confidence.as_deref().map(parse_percent) {
        ctx.err(format!("{p}.confidence"), m);
    }
    if let Some(Err(m)) = raw.min_effect.as_deref().map(parse_effect) {
        ctx.err(format!("{p}.min_effect"), m);
    }
    if let Some(Err(m)) = raw.baseline_min_coverage.as_deref().map(parse_percent) {
        ctx.err(format!("{p}.baseline_min_coverage"), m);
    }
    ctx.duration(
        format!("{p}.inconclusive_after"),
        &raw.inconclusive_after,
        Duration::ZERO,
    );
    policy(ctx, format!("{p}.no_data"), &raw.no_data);
    policy(ctx, format!("{p}.insufficient"), &raw.insufficient);
}

fn rule(ctx: &mut Ctx, p: &str, raw: &RawRule, signal: usize, sig: &Signal) -> Option<Rule> {
    let kind = sig.kind();
    let when = when(ctx, p, raw, kind)?;
    check_condition_fits(ctx, &format!("{p}.when"), &when, kind, false);
    let judged = matches!(
        when,
        Condition::Compare {
            threshold: Threshold::Baseline,
            ..
        }
    );
    let mode = if judged && !has_mode(raw) {
        // A judge decides with its own confidence: its first "worse" is the breach.
        RuleMode::Consecutive { n: 1 }
    } else {
        mode(ctx, p, raw, sig)?
    };
    let clear = clear(ctx, p, raw, when, kind);
    let (confidence, judge) = if judged {
        (None, Some(judge(ctx, p, raw, kind)))
    } else {
        not_judged(ctx, p, raw);
        (rate_options(ctx, p, raw, sig), None)
    };
    let (baseline_window, baseline_min_samples, baseline_min_coverage) =
        baseline_keys(ctx, p, raw, judged || uses_ratio(when));
    Some(Rule {
        name: raw.name.clone(),
        target: sig.target,
        signal,
        when,
        mode,
        clear,
        clear_for: ctx.duration(format!("{p}.clear_for"), &raw.clear_for, Duration::ZERO),
        min_requests: raw.min_requests.unwrap_or(0),
        confidence,
        baseline_window,
        baseline_min_samples,
        baseline_min_coverage,
        judge,
        no_data: policy(ctx, format!("{p}.no_data"), &raw.no_data),
        insufficient: policy(ctx, format!("{p}.insufficient"), &raw.insufficient),
        max_gap: sig.max_gap(),
    })
}

fn uses_ratio(c: Condition) -> bool {
    matches!(
        c,
        Condition::Compare {
            threshold: Threshold::BaselineRatio(_),
            ..
        }
    )
}

fn has_mode(raw: &RawRule) -> bool {
    raw.for_.is_some() || raw.consecutive.is_some() || raw.m_of_n.is_some() || raw.within.is_some()
}

/// `baseline_window` (default 30m), `baseline_min_samples` (10) and
/// `baseline_min_coverage` (50%), which apply only to a rule that compares with a
/// baseline (`uses`).
fn baseline_keys(ctx: &mut Ctx, p: &str, raw: &RawRule, uses: bool) -> (Duration, u32, f64) {
    if !uses {
        for (key, set) in [
            ("baseline_window", raw.baseline_window.is_some()),
            ("baseline_min_samples", raw.baseline_min_samples.is_some()),
            ("baseline_min_coverage", raw.baseline_min_coverage.is_some()),
        ] {
            if set {
                ctx.err(
                    format!("{p}.{key}"),
                    "applies only to a condition like \"> 1.5x baseline\" or \"> baseline\"",
                );
            }
        }
    }
    let window = ctx.positive_duration(
        format!("{p}.baseline_window"),
        &raw.baseline_window,
        Duration::from_secs(1800),
    );
    let samples = raw.baseline_min_samples.unwrap_or(10);
    if samples == 0 {
        ctx.err(format!("{p}.baseline_min_samples"), "must be at least 1");
    }
    let coverage = match raw.baseline_min_coverage.as_deref().map(parse_percent) {
        None => 0.5,
        Some(Ok(c)) => c,
        Some(Err(m)) => {
            ctx.err(format!("{p}.baseline_min_coverage"), m);
            0.5
        }
    };
    (window, samples.max(1), coverage)
}

/// The keys of a judge (`when = "> baseline"`): `confidence` (default 99%),
/// `min_effect` (default 1.5x on a rate, 1.2x on a number), `inconclusive_after`
/// (default 30m). A judge weighs every request, so `min_requests` does not apply, and
/// its clear is its own ("not worse"), so `clear` cannot be written.
fn judge(ctx: &mut Ctx, p: &str, raw: &RawRule, kind: SignalKind) -> Judge {
    if raw.min_requests.is_some() {
        ctx.err(
            format!("{p}.min_requests"),
            "a judge weighs every request; set `min_effect` and `confidence` instead",
        );
    }
    if raw.clear.is_some() {
        ctx.err(
            format!("{p}.clear"),
            "a judge clears when it finds the target not worse: `clear` does not apply",
        );
    }
    let confidence = match raw.confidence.as_deref().map(parse_percent) {
        None => 0.99,
        Some(Ok(c)) if (0.5..1.0).contains(&c) => c,
        Some(Ok(_)) => {
            ctx.err(
                format!("{p}.confidence"),
                "expected a level from 50% to below 100%, like \"99%\"",
            );
            0.99
        }
        Some(Err(m)) => {
            ctx.err(format!("{p}.confidence"), m);
            0.99
        }
    };
    let default_effect = if kind == SignalKind::Rate { 1.5 } else { 1.2 };
    let min_effect = match raw.min_effect.as_deref().map(parse_effect) {
        None => default_effect,
        Some(Ok(e)) => e,
        Some(Err(m)) => {
            ctx.err(format!("{p}.min_effect"), m);
            default_effect
        }
    };
    Judge {
        confidence,
        min_effect,
        inconclusive_after: ctx.positive_duration(
            format!("{p}.inconclusive_after"),
            &raw.inconclusive_after,
            Duration::from_secs(1800),
        ),
    }
}

/// The keys only a judge takes, refused on any other rule.
fn not_judged(ctx: &mut Ctx, p: &str, raw: &RawRule) {
    for (key, set) in [
        ("min_effect", raw.min_effect.is_some()),
        ("inconclusive_after", raw.inconclusive_after.is_some()),
    ] {
        if set {
            ctx.err(
                format!("{p}.{key}"),
                "applies only to a judge, `when = \"> baseline\"`",
            );
        }
    }
}

/// An effect written as a multiple, `"1.5x"`, of at least 1.
fn parse_effect(text: &str) -> Result<f64, String> {
    let bad = || format!("expected a multiple of at least 1 like \"1.5x\", got {text:?}");
    let number = text.trim().strip_suffix('x').ok_or_else(bad)?;
    let v: f64 = number.trim().parse().map_err(|_| bad())?;
    if (1.0..=100.0).contains(&v) {
        Ok(v)
    } else {
        Err(bad())
    }
}

/// `when`: required except for a check signal, where it is `failing`.
fn when(ctx: &mut Ctx, p: &str, raw: &RawRule, kind: SignalKind) -> Option<Condition> {
    match (&raw.when, kind) {
        (None, SignalKind::Check) => Some(Condition::Failing),
        (None, _) => {
            let (article, example) = match kind {
                SignalKind::Rate => ("a", "\"> 5%\""),
                SignalKind::Event => ("an", "\"> 3\""),
                _ => ("a", "\"> 200ms\""),
            };
            ctx.err(
                format!("{p}.when"),
                format!(
                    "is required for {article} {} signal, e.g. {example}",
                    kind.name()
                ),
            );
            None
        }
        (Some(text), _) => match parse_condition(text) {
            Ok(c) => Some(c),
            Err(m) => {
                ctx.err(format!("{p}.when"), m);
                None
            }
        },
    }
}

/// Exactly one of `for`, `consecutive`, `m_of_n` or `within`; `within` for event
/// signals and only for them.
fn mode(ctx: &mut Ctx, p: &str, raw: &RawRule, sig: &Signal) -> Option<RuleMode> {
    let mode = mode_alone(ctx, p, raw)?;
    let kind = sig.kind();
    match (kind, mode) {
        (SignalKind::Event, RuleMode::Within { .. }) => {}
        (SignalKind::Event, _) => ctx.err(
            p.to_owned(),
            "an event signal counts events: use `within = \"5m\"`",
        ),
        (_, RuleMode::Within { .. }) => ctx.err(
            format!("{p}.within"),
            format!(
                "`within` counts events, but signal {:?} is a {} signal",
                sig.name,
                kind.name()
            ),
        ),
        _ => {}
    }
    Some(mode)
}

/// The rule's mode from its own keys, whatever its signal: exactly one of `for`,
/// `consecutive`, `m_of_n` or `within`, each with its value checked.
fn mode_alone(ctx: &mut Ctx, p: &str, raw: &RawRule) -> Option<RuleMode> {
    let modes = [
        raw.for_.is_some(),
        raw.consecutive.is_some(),
        raw.m_of_n.is_some(),
        raw.within.is_some(),
    ]
    .iter()
    .filter(|x| **x)
    .count();
    if modes != 1 {
        ctx.err(
            p.to_owned(),
            "a rule takes exactly one of `for`, `consecutive`, `m_of_n` or `within`",
        );
        return None;
    }
    Some(if raw.for_.is_some() {
        RuleMode::Sustained {
            for_: ctx.duration(format!("{p}.for"), &raw.for_, Duration::ZERO),
        }
    } else if let Some(n) = raw.consecutive {
        if n == 0 {
            ctx.err(format!("{p}.consecutive"), "must be at least 1");
        }
        RuleMode::Consecutive { n: n.max(1) }
    } else if let Some([m, n]) = raw.m_of_n {
        m_of_n(ctx, p, m, n)
    } else {
        RuleMode::Within {
            window: ctx.positive_duration(
                format!("{p}.within"),
                &raw.within,
                Duration::from_secs(300),
            ),
        }
    })
}

fn m_of_n(ctx: &mut Ctx, p: &str, m: u32, n: u32) -> RuleMode {
    if m == 0 || m > n {
        ctx.err(
            format!("{p}.m_of_n"),
            format!("expected [M, N] with 1 <= M <= N, got [{m}, {n}]"),
        );
    }
    if n > 10_000 {
        ctx.err(format!("{p}.m_of_n"), "N may be at most 10000");
    }
    RuleMode::MOfN {
        m: m.max(1),
        n: n.clamp(1, 10_000).max(m.max(1)),
    }
}

/// `clear`, by default the negation of `when`; it must not overlap `when`.
fn clear(ctx: &mut Ctx, p: &str, raw: &RawRule, when: Condition, kind: SignalKind) -> Condition {
    let clear = match &raw.clear {
        None => when.negate(),
        Some(text) => match parse_condition(text) {
            Ok(c) => {
                check_condition_fits(ctx, &format!("{p}.clear"), &c, kind, true);
                c
            }
            Err(m) => {
                ctx.err(format!("{p}.clear"), m);
                when.negate()
            }
        },
    };
    if let (
        Condition::Compare {
            cmp: wc,
            threshold: Threshold::Value(wv, _),
        },
        Condition::Compare {
            cmp: cc,
            threshold: Threshold::Value(cv, _),
        },
    ) = (when, clear)
    {
        // Hysteresis must leave no value that both breaches and clears.
        let overlap = if wc.is_upper() {
            cc.is_upper() || cv > wv
        } else {
            !cc.is_upper() || cv < wv
        };
        if overlap {
            ctx.err(
                format!("{p}.clear"),
                format!(
                    "{:?} overlaps the breach condition {:?}: a value could both breach and clear",
                    clear.describe(),
                    when.describe()
                ),
            );
        }
    }
    clear
}

/// `min_requests` and `confidence`, which apply to rate signals only; the confidence.
fn rate_options(ctx: &mut Ctx, p: &str, raw: &RawRule, sig: &Signal) -> Option<f64> {
    let kind = sig.kind();
    if raw.min_requests.is_some() && kind != SignalKind::Rate {
        ctx.err(
            format!("{p}.min_requests"),
            format!(
                "applies to rate signals; {:?} is a {} signal",
                sig.name,
                kind.name()
            ),
        );
    }
    let text = raw.confidence.as_ref()?;
    if kind != SignalKind::Rate {
        ctx.err(
            format!("{p}.confidence"),
            format!(
                "applies to rate signals; {:?} is a {} signal",
                sig.name,
                kind.name()
            ),
        );
        return None;
    }
    match parse_percent(text) {
        Ok(c) if (0.5..1.0).contains(&c) => Some(c),
        Ok(_) => {
            ctx.err(
                format!("{p}.confidence"),
                format!("expected a level from 50% to below 100%, like \"95%\", got {text:?}"),
            );
            None
        }
        Err(m) => {
            ctx.err(format!("{p}.confidence"), m);
            None
        }
    }
}

/// Reports a condition that does not fit the kind of its signal; a `clear` may also be
/// `passing`.
fn check_condition_fits(
    ctx: &mut Ctx,
    path: &str,
    c: &Condition,
    kind: SignalKind,
    is_clear: bool,
) {
    let problem = match (c, kind) {
        (Condition::Failing, SignalKind::Check) => None,
        (Condition::Passing, SignalKind::Check) if is_clear => None,
        (Condition::Failing | Condition::Passing, _) => Some(format!(
            "{:?} applies to check signals; this is a {} signal",
            c.describe(),
            kind.name()
        )),
        (Condition::Compare { .. }, SignalKind::Check) => {
            Some("a check signal passes or fails: use \"failing\"".to_owned())
        }
        (
            Condition::Compare {
                threshold: Threshold::Baseline,
                ..
            },
            _,
        ) if is_clear => Some(
            "a judge clears when it finds the target not worse: compare with a value or a multiple of the baseline".to_owned(),
        ),
        (
            Condition::Compare {
                cmp,
                threshold: Threshold::Baseline,
            },
            SignalKind::Rate | SignalKind::Number,
        ) => (!cmp.is_upper()).then(|| {
            "a judge asks whether the target got worse (higher): write \"> baseline\"".to_owned()
        }),
        (
            Condition::Compare {
                threshold: Threshold::Baseline,
                ..
            },
            _,
        ) => Some(format!(
            "a judge (\"> baseline\") applies to rate and number signals; this is a {} signal",
            kind.name()
        )),
        (
            Condition::Compare {
                threshold: Threshold::BaselineRatio(_),
                ..
            },
            SignalKind::Number,
        ) => None,
        (
            Condition::Compare {
                threshold: Threshold::BaselineRatio(_),
                ..
            },
            _,
        ) => Some(format!(
            "a baseline ratio applies to number signals such as latency; this is a {} signal",
            kind.name()
        )),
        (
            Condition::Compare {
                threshold: Threshold::Value(v, unit),
                ..
            },
            SignalKind::Rate,
        ) => {
            if *unit == Unit::Seconds || !(0.0..=1.0).contains(v) {
                Some("a rate is a fraction: write it as a percentage like \"5%\"".to_owned())
            } else {
                None
            }
        }
        (
            Condition::Compare {
                threshold: Threshold::Value(_, unit),
                ..
            },
            SignalKind::Event,
        ) => {
            if *unit != Unit::Plain {
                Some("an event signal is a count: write a number like \"> 3\"".to_owned())
            } else {
                None
            }
        }
        (Condition::Compare { .. }, SignalKind::Number) => None,
    };
    if let Some(m) = problem {
        ctx.err(path, m);
    }
}

fn policy(ctx: &mut Ctx, path: String, v: &Option<String>) -> Policy {
    match v.as_deref() {
        None | Some("hold") => Policy::Hold,
        Some("breach") => Policy::Breach,
        Some("ok") => Policy::Ok,
        Some(other) => {
            ctx.err(
                path,
                format!("expected \"hold\", \"breach\" or \"ok\", got {other:?}"),
            );
            Policy::Hold
        }
    }
}
