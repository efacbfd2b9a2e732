//! The second configuration stage: from the serde mirror to domain types, collecting
//! every error with its path instead of stopping at the first.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::value::Value;
use secrecy::SecretString;
use serde::de::DeserializeOwned;

use super::load::figment_errors;
use super::raw::*;
use super::units::{Condition, Threshold, Unit, parse_condition, parse_duration, parse_percent};
use super::*;

/// Placeholders an action may use; each is also passed as `REARGUARD_<NAME>`.
pub const PLACEHOLDERS: [&str; 5] = ["incident", "target", "rule", "from_revision", "to_revision"];

struct Ctx<'a> {
    errors: Vec<ConfigError>,
    base_dir: &'a Path,
    env: &'a dyn Fn(&str) -> Option<String>,
}

impl Ctx<'_> {
    fn err(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(ConfigError {
            path: path.into(),
            message: message.into(),
        });
    }

    /// Deserializes one list item, recording its errors under `path`.
    fn item<T: DeserializeOwned>(&mut self, path: &str, value: &Value) -> Option<T> {
        match value.deserialize::<T>() {
            Ok(v) => Some(v),
            Err(e) => {
                self.errors.extend(figment_errors(path, e));
                None
            }
        }
    }

    fn duration(&mut self, path: String, value: &Option<String>, default: Duration) -> Duration {
        match value {
            None => default,
            Some(text) => parse_duration(text).unwrap_or_else(|m| {
                self.err(path, m);
                default
            }),
        }
    }

    fn positive_duration(
        &mut self,
        path: String,
        value: &Option<String>,
        default: Duration,
    ) -> Duration {
        let d = self.duration(path.clone(), value, default);
        if d.is_zero() {
            self.err(path, "must be greater than zero");
            return default;
        }
        d
    }

    fn url(&mut self, path: String, text: &str) -> Option<reqwest::Url> {
        match reqwest::Url::parse(text) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => Some(u),
            Ok(_) => {
                self.err(path, format!("expected an http or https URL, got {text:?}"));
                None
            }
            Err(e) => {
                self.err(path, format!("expected a URL, got {text:?}: {e}"));
                None
            }
        }
    }

    fn method(
        &mut self,
        path: String,
        text: &Option<String>,
        default: reqwest::Method,
    ) -> reqwest::Method {
        match text {
            None => default,
            Some(m) => match reqwest::Method::from_bytes(m.to_ascii_uppercase().as_bytes()) {
                Ok(m) => m,
                Err(_) => {
                    self.err(
                        path,
                        format!("expected an HTTP method like \"POST\", got {m:?}"),
                    );
                    default
                }
            },
        }
    }

    fn statuses(&mut self, path: String, v: &Option<Vec<u16>>, default: &[u16]) -> Vec<u16> {
        match v {
            None => default.to_vec(),
            Some(list) if list.is_empty() => {
                self.err(path, "must list at least one status code");
                default.to_vec()
            }
            Some(list) => {
                for s in list {
                    if !(100..=599).contains(s) {
                        self.err(path.clone(), format!("{s} is not an HTTP status code"));
                    }
                }
                list.clone()
            }
        }
    }

    fn argv(&mut self, path: &str, command: &[String], templated: bool) -> Vec<String> {
        if command.is_empty() {
            self.err(path, "must name a program: a list like [\"/usr/bin/true\"]");
        }
        for (i, arg) in command.iter().enumerate() {
            let found = placeholders_in(arg);
            if found.is_empty() {
                continue;
            }
            if !templated {
                self.err(
                    format!("{path}[{i}]"),
                    "placeholders are not available here",
                );
                continue;
            }
            for name in &found {
                if !PLACEHOLDERS.contains(&name.as_str()) {
                    self.err(format!("{path}[{i}]"), unknown_placeholder(name));
                }
            }
            if !(found.len() == 1 && *arg == format!("{{{}}}", found[0])) {
                let name = &found[0];
                self.err(
                    format!("{path}[{i}]"),
                    format!(
                        "placeholders are substituted only as whole arguments: write \"{{{name}}}\" as an argument of its own, or read the environment variable REARGUARD_{}",
                        name.to_ascii_uppercase()
                    ),
                );
            }
        }
        command.to_vec()
    }

    fn template(&mut self, path: String, text: &str) {
        for name in placeholders_in(text) {
            if !PLACEHOLDERS.contains(&name.as_str()) {
                self.err(path.clone(), unknown_placeholder(&name));
            }
        }
    }

    fn secret(&mut self, path: String, raw: &RawSecret) -> Option<SecretString> {
        let prefix = raw.prefix.clone().unwrap_or_default();
        let value = match (&raw.file, &raw.env) {
            (Some(file), None) => {
                let p = self.base_dir.join(file);
                match std::fs::read_to_string(&p) {
                    Ok(s) => s.trim_end_matches(['\n', '\r']).to_owned(),
                    Err(e) => {
                        self.err(
                            path,
                            format!("cannot read secret file {}: {e}", p.display()),
                        );
                        return None;
                    }
                }
            }
            (None, Some(var)) => match (self.env)(var) {
                Some(v) => v,
                None => {
                    self.err(path, format!("environment variable {var} is not set"));
                    return None;
                }
            },
            _ => {
                self.err(path, "a secret takes exactly one of `file` or `env`");
                return None;
            }
        };
        Some(SecretString::from(format!("{prefix}{value}")))
    }

    /// The built-in query of a prometheus or scrape signal: exactly one of `error_rate`,
    /// `latency` or the type's own third key (`other`, with whether it is set).
    fn metric(
        &mut self,
        p: &str,
        kind: &str,
        error_rate: &Option<RawErrorRate>,
        latency: &Option<RawLatency>,
        other: (&str, bool),
    ) -> Option<Metric> {
        let chosen = [error_rate.is_some(), latency.is_some(), other.1]
            .iter()
            .filter(|x| **x)
            .count();
        if chosen != 1 {
            self.err(
                p.to_owned(),
                format!(
                    "a {kind} signal takes exactly one of `error_rate`, `latency` or `{}`",
                    other.0
                ),
            );
            return None;
        }
        if let Some(e) = error_rate {
            let (requests, errors) = self.error_rate(p, e)?;
            return Some(Metric::ErrorRate(requests, errors));
        }
        if let Some(l) = latency {
            let (histogram, quantile) = self.latency(p, l)?;
            return Some(Metric::Latency(histogram, quantile));
        }
        Some(Metric::Other)
    }

    /// The window, credentials and TLS settings of a prometheus or scrape signal.
    fn endpoint(
        &mut self,
        p: &str,
        window: &Option<String>,
        auth: &Option<RawAuth>,
        tls: &Option<RawTls>,
    ) -> (Duration, Option<HttpAuth>, TlsSpec) {
        (
            self.positive_duration(format!("{p}.window"), window, Duration::from_secs(60)),
            self.auth(p, auth.as_ref()),
            self.tls(tls.as_ref()),
        )
    }

    fn error_rate(
        &mut self,
        p: &str,
        e: &RawErrorRate,
    ) -> Option<(selector::Selector, Vec<selector::Matcher>)> {
        let requests = selector::parse_selector(&e.requests)
            .map_err(|m| self.err(format!("{p}.error_rate.requests"), m))
            .ok();
        // The errors are the requests that also match these label matchers. A full
        // selector here is the most likely mistake, so it gets its own message.
        let looks_like_selector = e
            .errors
            .trim_start()
            .starts_with(|c: char| c.is_ascii_alphabetic())
            && e.errors
                .find('{')
                .is_some_and(|b| !e.errors[..b].contains(['=', '!', '~']));
        let errors = if looks_like_selector {
            self.err(
                format!("{p}.error_rate.errors"),
                format!(
                    "expected label matchers that pick the errors out of `requests`, like 'code=~\"5..\"', got the selector {:?}",
                    e.errors
                ),
            );
            None
        } else {
            selector::parse_matchers(&e.errors)
                .map_err(|m| self.err(format!("{p}.error_rate.errors"), m))
                .ok()
        };
        if errors.as_ref().is_some_and(|e| e.is_empty()) {
            self.err(
                format!("{p}.error_rate.errors"),
                "must select the errors, e.g. 'code=~\"5..\"'",
            );
            return None;
        }
        Some((requests?, errors?))
    }

    fn latency(&mut self, p: &str, l: &RawLatency) -> Option<(selector::Selector, f64)> {
        let quantile = l.quantile.unwrap_or(0.95);
        if !(quantile > 0.0 && quantile < 1.0) {
            self.err(
                format!("{p}.latency.quantile"),
                format!("expected a quantile between 0 and 1 like 0.95, got {quantile}"),
            );
        }
        let histogram = selector::parse_selector(&l.histogram)
            .map_err(|m| self.err(format!("{p}.latency.histogram"), m))
            .ok()?;
        if !histogram.metric.ends_with("_bucket") {
            self.err(
                format!("{p}.latency.histogram"),
                format!(
                    "expected the histogram's bucket series, e.g. \"{}_bucket\"",
                    histogram.metric
                ),
            );
        }
        Some((histogram, quantile))
    }

    fn auth(&mut self, p: &str, raw: Option<&RawAuth>) -> Option<HttpAuth> {
        let raw = raw?;
        match (&raw.bearer, &raw.username, &raw.password) {
            (Some(token), None, None) => self
                .secret(format!("{p}.auth.bearer"), token)
                .map(HttpAuth::Bearer),
            (None, Some(user), Some(password)) => self
                .secret(format!("{p}.auth.password"), password)
                .map(|password| HttpAuth::Basic {
                    username: user.clone(),
                    password,
                }),
            _ => {
                self.err(
                    format!("{p}.auth"),
                    "takes either `bearer`, or `username` with `password`",
                );
                None
            }
        }
    }

    fn tls(&mut self, raw: Option<&RawTls>) -> TlsSpec {
        raw.map_or_else(TlsSpec::default, |t| TlsSpec {
            ca_file: t.ca_file.as_ref().map(|f| self.base_dir.join(f)),
            insecure_skip_verify: t.insecure_skip_verify.unwrap_or(false),
        })
    }

    fn policy(&mut self, path: String, v: &Option<String>) -> Policy {
        match v.as_deref() {
            None | Some("hold") => Policy::Hold,
            Some("breach") => Policy::Breach,
            Some("ok") => Policy::Ok,
            Some(other) => {
                self.err(
                    path,
                    format!("expected \"hold\", \"breach\" or \"ok\", got {other:?}"),
                );
                Policy::Hold
            }
        }
    }
}

/// The built-in query chosen in a prometheus or scrape signal.
enum Metric {
    ErrorRate(selector::Selector, Vec<selector::Matcher>),
    Latency(selector::Selector, f64),
    /// The type's own third key: `query` for prometheus, `value` for scrape.
    Other,
}

fn unknown_placeholder(name: &str) -> String {
    format!(
        "unknown placeholder {{{name}}}; known: {}",
        PLACEHOLDERS.map(|p| format!("{{{p}}}")).join(", ")
    )
}

/// The names inside `{name}` where name is lowercase letters and underscores; braces of
/// JSON around a placeholder do not hide it (`{"text": "{incident}"}`).
pub fn placeholders_in(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find('{') {
        let after = &rest[start + 1..];
        let Some(end) = after.find(['{', '}']) else {
            break;
        };
        if after.as_bytes()[end] == b'}' {
            let name = &after[..end];
            if !name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
                out.push(name.to_owned());
            }
            rest = &after[end + 1..];
        } else {
            // Another `{` comes first: the placeholder, if any, starts there.
            rest = &after[end..];
        }
    }
    out
}

/// Each name's first position, for lookups that stay linear in the size of the file
/// (100,000 rules resolve in well under a second).
fn index_of<'a>(names: impl Iterator<Item = &'a str>) -> HashMap<&'a str, usize> {
    let mut index = HashMap::new();
    for (i, name) in names.enumerate() {
        index.entry(name).or_insert(i);
    }
    index
}

fn check_unique<'a>(ctx: &mut Ctx, section: &str, names: impl Iterator<Item = (usize, &'a str)>) {
    let mut seen = HashSet::new();
    for (i, name) in names {
        if name.is_empty() {
            ctx.err(format!("{section}[{i}].name"), "must not be empty");
        } else if !seen.insert(name) {
            ctx.err(
                format!("{section}[{i}].name"),
                format!("{name:?} is used by an earlier {section}"),
            );
        }
    }
}

pub fn validate(
    raw: RawConfig,
    base_dir: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigErrors> {
    let mut ctx = Ctx {
        errors: Vec::new(),
        base_dir,
        env,
    };
    let daemon = daemon(&mut ctx, raw.daemon.as_ref());
    let kube_access = kubernetes(&mut ctx, raw.kubernetes.as_ref());
    // Errors in the table were reported just above.
    let kube_events = raw
        .kubernetes
        .as_ref()
        .and_then(|k| k.deserialize::<RawKubernetes>().ok())
        .and_then(|k| k.events)
        .unwrap_or(true);
    let leader_election = leader_election(&mut ctx, raw.leader_election.as_ref(), &kube_access);

    let raw_targets: Vec<Option<RawTarget>> = items(&mut ctx, "target", &raw.target);
    let raw_signals: Vec<Option<RawSignal>> = items(&mut ctx, "signal", &raw.signal);
    let raw_rules: Vec<Option<RawRule>> = items(&mut ctx, "rule", &raw.rule);
    let raw_plans: Vec<Option<RawPlan>> = items(&mut ctx, "plan", &raw.plan);
    let raw_notifiers: Vec<Option<RawNotifier>> = items(&mut ctx, "notifier", &raw.notifier);
    let raw_escalation: Vec<Option<RawEscalation>> = items(&mut ctx, "escalation", &raw.escalation);

    // Names first, so that references can be resolved even when an item is invalid.
    let target_names: Vec<&str> = raw_targets
        .iter()
        .map(|t| t.as_ref().map_or("", |t| t.name.as_str()))
        .collect();
    let signal_names: Vec<&str> = raw_signals
        .iter()
        .map(|s| s.as_ref().map_or("", |s| s.common().name))
        .collect();
    let rule_names: Vec<&str> = raw_rules
        .iter()
        .map(|r| r.as_ref().map_or("", |r| r.name.as_str()))
        .collect();
    let plan_names: Vec<&str> = raw_plans
        .iter()
        .map(|p| p.as_ref().map_or("", |p| p.name.as_str()))
        .collect();
    let notifier_names: Vec<&str> = raw_notifiers
        .iter()
        .map(|n| n.as_ref().map_or("", |n| n.name()))
        .collect();
    for (section, names, raws_ok) in [
        (
            "target",
            &target_names,
            raw_targets.iter().map(Option::is_some).collect::<Vec<_>>(),
        ),
        (
            "signal",
            &signal_names,
            raw_signals.iter().map(Option::is_some).collect(),
        ),
        (
            "rule",
            &rule_names,
            raw_rules.iter().map(Option::is_some).collect(),
        ),
        (
            "plan",
            &plan_names,
            raw_plans.iter().map(Option::is_some).collect(),
        ),
        (
            "notifier",
            &notifier_names,
            raw_notifiers.iter().map(Option::is_some).collect(),
        ),
    ] {
        let valid: Vec<(usize, &str)> = names
            .iter()
            .zip(&raws_ok)
            .enumerate()
            .filter(|(_, (_, ok))| **ok)
            .map(|(i, (n, _))| (i, *n))
            .collect();
        check_unique(&mut ctx, section, valid.into_iter());
    }
    let (target_index, signal_index, rule_index, plan_index) = (
        index_of(target_names.iter().copied()),
        index_of(signal_names.iter().copied()),
        index_of(rule_names.iter().copied()),
        index_of(plan_names.iter().copied()),
    );
    let find = |index: &HashMap<&str, usize>, name: &str| index.get(name).copied();

    let mut plans = Vec::new();
    for (i, raw) in raw_plans.iter().enumerate() {
        let Some(raw) = raw else { continue };
        plans.push(plan(&mut ctx, i, raw, &rule_index, &kube_access));
    }

    let mut targets = Vec::new();
    for (i, raw) in raw_targets.iter().enumerate() {
        let Some(raw) = raw else { continue };
        let p = format!("target[{i}]");
        let plan = raw.plan.as_ref().and_then(|name| {
            let found = find(&plan_index, name);
            if found.is_none() {
                ctx.err(format!("{p}.plan"), format!("no plan is named {name:?}"));
            }
            found
        });
        let change = raw
            .change
            .as_ref()
            .map(|c| change(&mut ctx, &format!("{p}.change"), c, &kube_access));
        let max_rollbacks = raw.max_rollbacks.unwrap_or(3);
        if max_rollbacks == 0 {
            ctx.err(
                format!("{p}.max_rollbacks"),
                "must be at least 1; leave `plan` unset to never act",
            );
        }
        targets.push(Target {
            name: raw.name.clone(),
            plan,
            blame_window: ctx.duration(
                format!("{p}.blame_window"),
                &raw.blame_window,
                Duration::from_secs(30 * 60),
            ),
            cooldown: ctx.duration(
                format!("{p}.cooldown"),
                &raw.cooldown,
                Duration::from_secs(15 * 60),
            ),
            max_rollbacks,
            rollback_period: ctx.positive_duration(
                format!("{p}.rollback_period"),
                &raw.rollback_period,
                Duration::from_secs(3600),
            ),
            bake: kube_bake(&mut ctx, &p, raw, change.as_ref()),
            keep_snapshots: match raw.keep_snapshots {
                Some(0) => {
                    ctx.err(format!("{p}.keep_snapshots"), "must be at least 1");
                    1
                }
                n => n.unwrap_or(3),
            },
            change,
        });
    }

    let mut signals = Vec::new();
    for (i, raw) in raw_signals.iter().enumerate() {
        let Some(raw) = raw else { continue };
        let p = format!("signal[{i}]");
        let common = raw.common();
        let Some(target) = find(&target_index, common.target) else {
            ctx.err(
                format!("{p}.target"),
                format!("no target is named {:?}", common.target),
            );
            continue;
        };
        let interval = ctx.positive_duration(
            format!("{p}.interval"),
            common.interval,
            Duration::from_secs(10),
        );
        let timeout = ctx.positive_duration(
            format!("{p}.timeout"),
            common.timeout,
            Duration::from_secs(5).min(interval),
        );
        let blind_after = ctx.positive_duration(
            format!("{p}.blind_after"),
            common.blind_after,
            daemon.blind_after,
        );
        let Some(source) = source(&mut ctx, &p, raw, &kube_access) else {
            continue;
        };
        signals.push(Signal {
            name: common.name.to_owned(),
            target,
            interval,
            timeout,
            blind_after,
            source,
        });
    }

    let validated_signals = index_of(signals.iter().map(|s| s.name.as_str()));
    let mut rules = Vec::new();
    for (i, raw) in raw_rules.iter().enumerate() {
        let Some(raw) = raw else { continue };
        let p = format!("rule[{i}]");
        let Some(signal) = validated_signals.get(raw.signal.as_str()).copied() else {
            if !signal_index.contains_key(raw.signal.as_str()) {
                ctx.err(
                    format!("{p}.signal"),
                    format!("no signal is named {:?}", raw.signal),
                );
            }
            continue;
        };
        if let Some(r) = rule(&mut ctx, &p, raw, signal, &signals[signal]) {
            rules.push(r);
        }
    }

    let mut notifiers = Vec::new();
    for (i, raw) in raw_notifiers.iter().enumerate() {
        let Some(raw) = raw else { continue };
        if let Some(n) = notifier(&mut ctx, &format!("notifier[{i}]"), raw) {
            notifiers.push(n);
        }
    }

    let mut escalation = Vec::new();
    for (i, raw) in raw_escalation.iter().enumerate() {
        let Some(raw) = raw else { continue };
        let p = format!("escalation[{i}]");
        let mut on = Vec::new();
        for (j, name) in raw.on.iter().enumerate() {
            match Occasion::ALL.iter().find(|o| o.name() == name) {
                Some(o) => on.push(*o),
                None => ctx.err(
                    format!("{p}.on[{j}]"),
                    format!(
                        "unknown occasion {name:?}; known: {}",
                        Occasion::ALL.map(|o| o.name()).join(", ")
                    ),
                ),
            }
        }
        if raw.on.is_empty() {
            ctx.err(format!("{p}.on"), "must list at least one occasion");
        }
        let mut notify = Vec::new();
        for (j, name) in raw.notify.iter().enumerate() {
            match notifiers.iter().position(|n| &n.name == name) {
                Some(n) => notify.push(n),
                None if notifier_names.contains(&name.as_str()) => {}
                None => ctx.err(
                    format!("{p}.notify[{j}]"),
                    format!("no notifier is named {name:?}"),
                ),
            }
        }
        let repeat = raw.repeat.as_ref().map(|_| {
            ctx.positive_duration(format!("{p}.repeat"), &raw.repeat, Duration::from_secs(900))
        });
        let slow = on.contains(&Occasion::RollbackSlow);
        let slow_after = match (&raw.slow_after, slow) {
            (Some(_), true) => ctx.positive_duration(
                format!("{p}.slow_after"),
                &raw.slow_after,
                Duration::from_secs(600),
            ),
            (None, true) => {
                ctx.err(
                    format!("{p}.slow_after"),
                    "required when `on` lists rollback_slow",
                );
                Duration::ZERO
            }
            (Some(_), false) => {
                ctx.err(
                    format!("{p}.slow_after"),
                    "only means something when `on` lists rollback_slow",
                );
                Duration::ZERO
            }
            (None, false) => Duration::ZERO,
        };
        let counts = on.contains(&Occasion::AttemptsFailed);
        let attempts = match (raw.attempts, counts) {
            (Some(0), true) => {
                ctx.err(format!("{p}.attempts"), "must be at least 1");
                1
            }
            (Some(n), true) => n,
            (None, true) => 3,
            (Some(_), false) => {
                ctx.err(
                    format!("{p}.attempts"),
                    "only means something when `on` lists attempts_failed",
                );
                0
            }
            (None, false) => 0,
        };
        escalation.push(EscalationLevel {
            name: raw
                .name
                .clone()
                .unwrap_or_else(|| format!("level {}", i + 1)),
            on,
            after: ctx.duration(format!("{p}.after"), &raw.after, Duration::ZERO),
            repeat,
            notify,
            slow_after,
            attempts,
        });
    }

    let validated_rules = index_of(rules.iter().map(|r| r.name.as_str()));
    // The verification rules of a plan must watch the targets that use the plan.
    for (ti, t) in targets.iter().enumerate() {
        let Some(pi) = t.plan else { continue };
        for &r in &plans[pi].verify.rules {
            if let Some(rule) = rule_names
                .get(r)
                .and_then(|n| validated_rules.get(n))
                .map(|&x| &rules[x])
                && rule.target != ti
            {
                ctx.err(
                    format!("plan[{pi}].verify.rules"),
                    format!(
                        "rule {:?} watches another target than {:?}, which uses this plan",
                        rule.name, t.name
                    ),
                );
            }
        }
    }
    // Plans refer to rules by their index in the file; map them to validated indexes.
    for plan in &mut plans {
        plan.verify.rules = plan
            .verify
            .rules
            .iter()
            .filter_map(|&r| validated_rules.get(rule_names[r]).copied())
            .collect();
    }

    // A `within` rule still counts events from before the rollback until its window has
    // passed; a shorter verification would fail on them and trip the breaker.
    for (pi, plan) in plans.iter().enumerate() {
        let users: Vec<usize> = targets
            .iter()
            .enumerate()
            .filter(|(_, t)| t.plan == Some(pi))
            .map(|(i, _)| i)
            .collect();
        let judged = rules.iter().enumerate().filter(|(ri, r)| {
            if plan.verify.rules.is_empty() {
                users.contains(&r.target)
            } else {
                plan.verify.rules.contains(ri)
            }
        });
        for (_, rule) in judged {
            if let RuleMode::Within { window } = rule.mode
                && window > plan.verify.window
            {
                ctx.err(
                    format!("plan[{pi}].verify.window"),
                    format!(
                        "{} is shorter than rule {:?}'s `within` of {}: events from before the rollback would still count when verification ends; make it at least {}",
                        units::format_duration(plan.verify.window),
                        rule.name,
                        units::format_duration(window),
                        units::format_duration(window)
                    ),
                );
            }
        }
    }

    if ctx.errors.is_empty() {
        Ok(Config {
            daemon,
            targets,
            signals,
            rules,
            plans,
            notifiers,
            escalation,
            kube_events,
            leader_election,
        })
    } else {
        Err(ConfigErrors(ctx.errors))
    }
}

/// Reads a secret that is a URL (a Slack or Teams webhook). The URL is never shown in
/// an error: it is the secret.
fn secret_url(ctx: &mut Ctx, path: String, raw: &RawSecret) -> Option<SecretString> {
    use secrecy::ExposeSecret;
    let secret = ctx.secret(path.clone(), raw)?;
    match reqwest::Url::parse(secret.expose_secret()) {
        Ok(u) if matches!(u.scheme(), "http" | "https") => Some(secret),
        _ => {
            ctx.err(
                path,
                "the secret is not an http or https URL (its value is not shown)",
            );
            None
        }
    }
}

fn notifier(ctx: &mut Ctx, p: &str, raw: &RawNotifier) -> Option<Notifier> {
    let (timeout, per_minute) = raw.limits();
    let default_per_minute = match raw {
        RawNotifier::Log { .. } => 0,
        RawNotifier::Slack { .. } => 60,
        RawNotifier::PagerDuty { .. } => 120,
        RawNotifier::Teams { .. } => 60,
        RawNotifier::Statuspage { .. } => 60,
        RawNotifier::Email { .. } => 30,
        RawNotifier::Webhook { .. } => 600,
    };
    let per_minute = match per_minute {
        Some(0) => {
            ctx.err(format!("{p}.per_minute"), "must be at least 1");
            default_per_minute
        }
        Some(n) => n,
        None => default_per_minute,
    };
    let min_interval = if per_minute == 0 {
        Duration::ZERO
    } else {
        Duration::from_secs(60) / per_minute
    };
    let timeout = ctx.positive_duration(format!("{p}.timeout"), timeout, Duration::from_secs(10));
    let base_url = |ctx: &mut Ctx, key: &str, v: &Option<String>, default: &str| {
        ctx.url(format!("{p}.{key}"), v.as_deref().unwrap_or(default))
    };
    let kind = match raw {
        RawNotifier::Log { .. } => NotifierKind::Log,
        RawNotifier::Slack {
            webhook_url,
            token,
            channel,
            api_url,
            ..
        } => match (webhook_url, token) {
            (Some(url), None) => {
                if channel.is_some() || api_url.is_some() {
                    ctx.err(
                        p,
                        "`channel` and `api_url` belong to bot-token mode (`token`); a webhook posts to its own channel",
                    );
                }
                NotifierKind::Slack(SlackSpec::Webhook {
                    url: secret_url(ctx, format!("{p}.webhook_url"), url)?,
                })
            }
            (None, Some(token)) => {
                let Some(channel) = channel.clone().filter(|c| !c.trim().is_empty()) else {
                    ctx.err(
                        format!("{p}.channel"),
                        "required with `token`: the channel id to post to",
                    );
                    return None;
                };
                let api_url = base_url(ctx, "api_url", api_url, "https://slack.com/api");
                let token = ctx.secret(format!("{p}.token"), token);
                NotifierKind::Slack(SlackSpec::Bot {
                    token: token?,
                    channel,
                    api_url: api_url?,
                })
            }
            _ => {
                ctx.err(
                    p,
                    "a slack notifier takes exactly one of `webhook_url` (incoming webhook) or `token` (bot)",
                );
                return None;
            }
        },
        RawNotifier::PagerDuty {
            routing_key, url, ..
        } => {
            let url = base_url(ctx, "url", url, "https://events.pagerduty.com");
            let key = ctx.secret(format!("{p}.routing_key"), routing_key);
            NotifierKind::PagerDuty(PagerDutySpec {
                routing_key: key?,
                url: url?,
            })
        }
        RawNotifier::Teams { webhook_url, .. } => NotifierKind::Teams(TeamsSpec {
            url: secret_url(ctx, format!("{p}.webhook_url"), webhook_url)?,
        }),
        RawNotifier::Statuspage {
            api_key,
            page_id,
            component_id,
            api_url,
            ..
        } => {
            let api_url = base_url(ctx, "api_url", api_url, "https://api.statuspage.io/v1");
            if page_id.trim().is_empty() {
                ctx.err(format!("{p}.page_id"), "must not be empty");
            }
            let key = ctx.secret(format!("{p}.api_key"), api_key);
            NotifierKind::Statuspage(StatuspageSpec {
                api_key: key?,
                page_id: page_id.clone(),
                component_id: component_id.clone(),
                api_url: api_url?,
            })
        }
        RawNotifier::Email {
            host,
            port,
            tls,
            username,
            password,
            from,
            to,
            ..
        } => {
            let tls = match tls.as_deref().unwrap_or("starttls") {
                "none" => SmtpTls::None,
                "starttls" => SmtpTls::StartTls,
                "tls" => SmtpTls::Tls,
                other => {
                    ctx.err(
                        format!("{p}.tls"),
                        format!("expected \"starttls\", \"tls\" or \"none\", got {other:?}"),
                    );
                    SmtpTls::StartTls
                }
            };
            let port = port.unwrap_or(match tls {
                SmtpTls::None => 25,
                SmtpTls::StartTls => 587,
                SmtpTls::Tls => 465,
            });
            if host.trim().is_empty() {
                ctx.err(format!("{p}.host"), "must not be empty");
            }
            for (key, addr) in std::iter::once(("from".to_owned(), from))
                .chain(to.iter().enumerate().map(|(j, a)| (format!("to[{j}]"), a)))
            {
                if !looks_like_address(addr) {
                    ctx.err(
                        format!("{p}.{key}"),
                        format!("expected an email address like ops@example.com, got {addr:?}"),
                    );
                }
            }
            if to.is_empty() {
                ctx.err(format!("{p}.to"), "must list at least one address");
            }
            let password = match (username, password) {
                (Some(_), Some(pw)) => Some(ctx.secret(format!("{p}.password"), pw)?),
                (None, None) => None,
                _ => {
                    ctx.err(p, "`username` and `password` go together");
                    None
                }
            };
            NotifierKind::Email(EmailSpec {
                host: host.clone(),
                port,
                tls,
                username: username.clone(),
                password,
                from: from.clone(),
                to: to.clone(),
            })
        }
        RawNotifier::Webhook { url, secret, .. } => {
            let url = ctx.url(format!("{p}.url"), url);
            let secret = ctx.secret(format!("{p}.secret"), secret);
            NotifierKind::Webhook(WebhookSpec {
                url: url?,
                secret: secret?,
            })
        }
    };
    Some(Notifier {
        name: raw.name().to_owned(),
        timeout,
        min_interval,
        kind,
    })
}

/// An address the SMTP notifier can use (`ops@example.com` or `Ops <ops@example.com>`),
/// judged by the same parser the notifier uses; the mail server has the last word.
fn looks_like_address(text: &str) -> bool {
    text.parse::<lettre::message::Mailbox>().is_ok()
}

fn items<T: DeserializeOwned>(ctx: &mut Ctx, section: &str, values: &[Value]) -> Vec<Option<T>> {
    values
        .iter()
        .enumerate()
        .map(|(i, v)| ctx.item(&format!("{section}[{i}]"), v))
        .collect()
}

fn daemon(ctx: &mut Ctx, raw: Option<&Value>) -> Daemon {
    let raw: RawDaemon = raw.and_then(|v| ctx.item("daemon", v)).unwrap_or_default();
    let listen = match &raw.listen {
        None => SocketAddr::from(([127, 0, 0, 1], 9787)),
        Some(text) => text.parse().unwrap_or_else(|_| {
            ctx.err(
                "daemon.listen",
                format!("expected an address like \"127.0.0.1:9787\", got {text:?}"),
            );
            SocketAddr::from(([127, 0, 0, 1], 9787))
        }),
    };
    let mode = match raw.mode.as_deref() {
        None | Some("enforce") => Mode::Enforce,
        Some("shadow") => Mode::Shadow,
        Some(other) => {
            ctx.err(
                "daemon.mode",
                format!("expected \"enforce\" or \"shadow\", got {other:?}"),
            );
            Mode::Enforce
        }
    };
    Daemon {
        state_dir: PathBuf::from(raw.state_dir.as_deref().unwrap_or("/var/lib/rearguard")),
        listen,
        mode,
        tick: ctx.positive_duration("daemon.tick".into(), &raw.tick, Duration::from_secs(1)),
        drain_timeout: ctx.duration(
            "daemon.drain_timeout".into(),
            &raw.drain_timeout,
            Duration::from_secs(30),
        ),
        blind_after: ctx.positive_duration(
            "daemon.blind_after".into(),
            &raw.blind_after,
            Duration::from_secs(120),
        ),
        control_token: raw
            .control_token
            .as_ref()
            .and_then(|t| ctx.secret("daemon.control_token".into(), t)),
        read_open: raw.read_open.unwrap_or(false),
        listener: listener_limits(ctx, &raw),
    }
}

/// `daemon.max_connections` and `daemon.header_read_timeout`.
fn listener_limits(ctx: &mut Ctx, raw: &RawDaemon) -> ListenerLimits {
    let most = ListenerLimits::MOST_CONNECTIONS;
    let max_connections = match raw.max_connections {
        None => ListenerLimits::DEFAULT_MAX_CONNECTIONS,
        Some(n) if (1..=most).contains(&n) => n,
        Some(n) => {
            ctx.err(
                "daemon.max_connections",
                format!("expected 1 to {most}, got {n}"),
            );
            ListenerLimits::DEFAULT_MAX_CONNECTIONS
        }
    };
    ListenerLimits {
        max_connections,
        header_read_timeout: ctx.positive_duration(
            "daemon.header_read_timeout".into(),
            &raw.header_read_timeout,
            ListenerLimits::DEFAULT_HEADER_READ_TIMEOUT,
        ),
    }
}

/// A step on a Kubernetes Deployment.
fn kube_step(
    ctx: &mut Ctx,
    sp: &str,
    raw: &RawStep,
    k: &RawKubeStep,
    access: &crate::kube::Access,
) -> ActionSpec {
    kube_name(ctx, format!("{sp}.namespace"), &k.namespace);
    kube_name(ctx, format!("{sp}.deployment"), &k.deployment);
    let target = KubeDeploymentRef {
        access: access.clone(),
        namespace: k.namespace.clone(),
        deployment: k.deployment.clone(),
    };
    let undo = matches!(
        raw,
        RawStep::KubeRolloutUndo(_) | RawStep::KubeRestoreConfig(_)
    );
    let scale = matches!(raw, RawStep::KubeScale(_));
    if !undo && k.to_revision.is_some() {
        ctx.err(
            format!("{sp}.to_revision"),
            "only for types kube_rollout_undo and kube_restore_config",
        );
    }
    if !scale && k.replicas.is_some() {
        ctx.err(format!("{sp}.replicas"), "only for type kube_scale");
    }
    match raw {
        RawStep::KubeRolloutUndo(_) => {
            let to_revision = match &k.to_revision {
                None => ToRevision::Previous,
                Some(RawRevision::Number(n)) if *n >= 1 => ToRevision::Number(*n),
                Some(RawRevision::Text(t)) if t == "{to_revision}" => ToRevision::Incident,
                Some(RawRevision::Text(t)) if t.parse::<i64>().is_ok_and(|n| n >= 1) => {
                    ToRevision::Number(t.parse().unwrap_or(1))
                }
                Some(_) => {
                    ctx.err(
                        format!("{sp}.to_revision"),
                        "expected a revision number >= 1 or \"{to_revision}\"",
                    );
                    ToRevision::Previous
                }
            };
            ActionSpec::KubeRolloutUndo(KubeRolloutUndoSpec {
                access: target.access,
                namespace: target.namespace,
                deployment: target.deployment,
                to_revision,
            })
        }
        RawStep::KubeScale(_) => {
            let replicas = match &k.replicas {
                Some(RawRevision::Number(n)) if *n >= 0 && *n <= i64::from(i32::MAX) => {
                    Replicas::Count(*n as i32)
                }
                Some(RawRevision::Text(t)) if t == "recorded" => Replicas::Recorded,
                Some(_) => {
                    ctx.err(
                        format!("{sp}.replicas"),
                        "expected a number of replicas >= 0 or \"recorded\"",
                    );
                    Replicas::Recorded
                }
                None => {
                    ctx.err(format!("{sp}.replicas"), "required for type kube_scale");
                    Replicas::Recorded
                }
            };
            ActionSpec::KubeScale(KubeScaleSpec { target, replicas })
        }
        RawStep::KubeRolloutStatus(_) => ActionSpec::KubeRolloutStatus(target),
        RawStep::KubePause(_) => ActionSpec::KubePause(target),
        RawStep::KubeResume(_) => ActionSpec::KubeResume(target),
        RawStep::KubeRestart(_) => ActionSpec::KubeRestart(target),
        RawStep::KubeRestoreConfig(_) => {
            let revision = match &k.to_revision {
                None => None,
                Some(RawRevision::Text(t)) if t == "{to_revision}" => None,
                Some(RawRevision::Number(n)) if *n >= 1 => Some(*n),
                Some(RawRevision::Text(t)) if t.parse::<i64>().is_ok_and(|n| n >= 1) => {
                    t.parse().ok()
                }
                Some(_) => {
                    ctx.err(
                        format!("{sp}.to_revision"),
                        "expected a revision number >= 1 or \"{to_revision}\"",
                    );
                    None
                }
            };
            ActionSpec::KubeRestoreConfig(KubeRestoreConfigSpec { target, revision })
        }
        RawStep::KubeDeletePods(_) => ActionSpec::KubeDeletePods(target),
        _ => ActionSpec::KubeMarkBad(target),
    }
}

/// A target's `bake`: default 10 minutes for a `kube_deployment` target, refused for
/// others (snapshots are of a Deployment's ConfigMaps and Secrets).
fn kube_bake(
    ctx: &mut Ctx,
    p: &str,
    raw: &RawTarget,
    change: Option<&ChangeSpec>,
) -> Option<Duration> {
    let kube = matches!(change, Some(ChangeSpec::KubeDeployment(_)));
    if !kube && (raw.bake.is_some() || raw.keep_snapshots.is_some()) {
        let key = if raw.bake.is_some() {
            "bake"
        } else {
            "keep_snapshots"
        };
        ctx.err(
            format!("{p}.{key}"),
            "only for a target whose change observer is kube_deployment",
        );
        return None;
    }
    kube.then(|| {
        ctx.positive_duration(format!("{p}.bake"), &raw.bake, Duration::from_secs(10 * 60))
    })
}

/// `[kubernetes]`: how the cluster is reached.
fn kubernetes(ctx: &mut Ctx, raw: Option<&Value>) -> crate::kube::Access {
    use crate::kube::{Access, AccessSource};
    let raw: RawKubernetes = raw
        .and_then(|v| ctx.item("kubernetes", v))
        .unwrap_or_default();
    let source = match (raw.in_cluster.unwrap_or(false), &raw.kubeconfig) {
        (true, Some(_)) => {
            ctx.err(
                "kubernetes.kubeconfig",
                "not allowed with in_cluster = true: choose one",
            );
            AccessSource::InCluster
        }
        (true, None) => {
            if raw.context.is_some() {
                ctx.err("kubernetes.context", "not allowed with in_cluster = true");
            }
            AccessSource::InCluster
        }
        (false, Some(path)) => AccessSource::Kubeconfig {
            path: ctx.base_dir.join(path),
            context: raw.context.clone(),
        },
        (false, None) => {
            if raw.context.is_some() {
                ctx.err("kubernetes.context", "only with kubeconfig");
            }
            AccessSource::Infer
        }
    };
    let server = raw.server.and_then(|s| {
        let url = ctx.url("kubernetes.server".into(), &s)?;
        Some(url.as_str().trim_end_matches('/').to_owned())
    });
    Access { source, server }
}

/// `[leader_election]`: the Lease, this replica's identity and the timings.
fn leader_election(
    ctx: &mut Ctx,
    raw: Option<&Value>,
    access: &crate::kube::Access,
) -> Option<crate::config::LeaderElection> {
    let raw: RawLeaderElection = ctx.item("leader_election", raw?)?;
    kube_name(ctx, "leader_election.namespace".into(), &raw.namespace);
    let lease = raw.lease.unwrap_or_else(|| "rearguard".to_owned());
    kube_name(ctx, "leader_election.lease".into(), &lease);
    let identity = match raw.identity {
        Some(id) => {
            if id.trim().is_empty() {
                ctx.err("leader_election.identity", "must not be empty");
            }
            id
        }
        None => {
            let id = (ctx.env)("POD_NAME")
                .filter(|p| !p.trim().is_empty())
                .or_else(hostname)
                .unwrap_or_default();
            if id.is_empty() {
                ctx.err(
                    "leader_election.identity",
                    "not set, and neither $POD_NAME nor the hostname gives one",
                );
            }
            id
        }
    };
    let lease_duration = ctx.positive_duration(
        "leader_election.lease_duration".into(),
        &raw.lease_duration,
        Duration::from_secs(15),
    );
    // The Lease holds whole seconds (`leaseDurationSeconds`).
    if lease_duration.subsec_nanos() != 0 || lease_duration < Duration::from_secs(1) {
        ctx.err(
            "leader_election.lease_duration",
            "must be a whole number of seconds, at least 1s",
        );
    }
    let renew_every = ctx.positive_duration(
        "leader_election.renew_every".into(),
        &raw.renew_every,
        lease_duration / 3,
    );
    if renew_every >= lease_duration {
        ctx.err(
            "leader_election.renew_every",
            "must be shorter than lease_duration, or the lease lapses between renewals",
        );
    }
    let retry_every = ctx.positive_duration(
        "leader_election.retry_every".into(),
        &raw.retry_every,
        // client-go's retry period: a released Lease is taken within it.
        renew_every.min(Duration::from_secs(2)),
    );
    Some(crate::config::LeaderElection {
        access: access.clone(),
        namespace: raw.namespace,
        lease,
        identity,
        lease_duration,
        renew_every,
        retry_every,
    })
}

/// This host's name, when it has one.
fn hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at most that much.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name = String::from_utf8_lossy(&buf[..end]).trim().to_owned();
    (!name.is_empty()).then_some(name)
}

/// A namespace or object name: a DNS-1123 label or subdomain, as the API requires.
fn kube_name(ctx: &mut Ctx, path: String, name: &str) {
    let valid = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if !valid {
        ctx.err(
            path,
            format!("{name:?} is not a Kubernetes name (lowercase letters, digits, '-' and '.')"),
        );
    }
}

fn change(
    ctx: &mut Ctx,
    p: &str,
    raw: &RawChange,
    kube_access: &crate::kube::Access,
) -> ChangeSpec {
    match raw {
        RawChange::ReleaseSymlink { path, interval } => ChangeSpec::ReleaseSymlink {
            path: PathBuf::from(path),
            interval: ctx.positive_duration(
                format!("{p}.interval"),
                interval,
                Duration::from_secs(5),
            ),
        },
        RawChange::Exec {
            command,
            interval,
            timeout,
        } => ChangeSpec::Exec {
            command: ctx.argv(&format!("{p}.command"), command, false),
            interval: ctx.positive_duration(
                format!("{p}.interval"),
                interval,
                Duration::from_secs(30),
            ),
            timeout: ctx.positive_duration(
                format!("{p}.timeout"),
                timeout,
                Duration::from_secs(10),
            ),
        },
        RawChange::KubeDeployment {
            namespace,
            deployment,
        } => {
            kube_name(ctx, format!("{p}.namespace"), namespace);
            kube_name(ctx, format!("{p}.deployment"), deployment);
            ChangeSpec::KubeDeployment(KubeDeploymentRef {
                access: kube_access.clone(),
                namespace: namespace.clone(),
                deployment: deployment.clone(),
            })
        }
    }
}

fn source(
    ctx: &mut Ctx,
    p: &str,
    raw: &RawSignal,
    kube_access: &crate::kube::Access,
) -> Option<SourceSpec> {
    Some(match raw {
        RawSignal::HttpProbe {
            url,
            method,
            expect_status,
            body_contains,
            json_pointer,
            json_equals,
            ..
        } => {
            let url = ctx.url(format!("{p}.url"), url);
            let method = ctx.method(format!("{p}.method"), method, reqwest::Method::GET);
            let expect_status = ctx.statuses(format!("{p}.expect_status"), expect_status, &[200]);
            let json = match (json_pointer, json_equals) {
                (None, None) => None,
                (Some(ptr), Some(v)) => {
                    if !ptr.is_empty() && !ptr.starts_with('/') {
                        ctx.err(
                            format!("{p}.json_pointer"),
                            format!("expected a JSON pointer like \"/status\", got {ptr:?}"),
                        );
                    }
                    Some((ptr.clone(), v.clone()))
                }
                (Some(_), None) => {
                    ctx.err(
                        format!("{p}.json_equals"),
                        "json_pointer needs json_equals: the value the field must have",
                    );
                    None
                }
                (None, Some(_)) => {
                    ctx.err(
                        format!("{p}.json_pointer"),
                        "json_equals needs json_pointer: which field to compare, like \"/status\"",
                    );
                    None
                }
            };
            SourceSpec::HttpProbe(HttpProbeSpec {
                url: url?,
                method,
                expect_status,
                body_contains: body_contains.clone(),
                json,
            })
        }
        RawSignal::Exec {
            command, env, cwd, ..
        } => SourceSpec::Exec(ExecSpec {
            command: ctx.argv(&format!("{p}.command"), command, false),
            env: env.clone(),
            cwd: cwd.as_ref().map(PathBuf::from),
        }),
        RawSignal::Prometheus {
            url,
            error_rate,
            latency,
            query,
            window,
            auth,
            tls,
            ..
        } => {
            let url = ctx.url(format!("{p}.url"), url);
            let choice = ctx.metric(
                p,
                "prometheus",
                error_rate,
                latency,
                ("query", query.is_some()),
            )?;
            let query = match choice {
                Metric::ErrorRate(requests, errors) => PromQuery::ErrorRate { requests, errors },
                Metric::Latency(histogram, quantile) => PromQuery::Latency {
                    histogram,
                    quantile,
                },
                Metric::Other => {
                    let q = query.clone().unwrap_or_default();
                    if q.trim().is_empty() {
                        ctx.err(format!("{p}.query"), "must be a PromQL expression");
                    }
                    PromQuery::Expr(q)
                }
            };
            let (window, auth, tls) = ctx.endpoint(p, window, auth, tls);
            SourceSpec::Prometheus(PrometheusSpec {
                url: url?,
                query,
                window,
                auth,
                tls,
            })
        }
        RawSignal::Scrape {
            url,
            error_rate,
            latency,
            value,
            window,
            auth,
            tls,
            ..
        } => {
            let url = ctx.url(format!("{p}.url"), url);
            let choice =
                ctx.metric(p, "scrape", error_rate, latency, ("value", value.is_some()))?;
            let query = match choice {
                Metric::ErrorRate(requests, errors) => ScrapeQuery::ErrorRate { requests, errors },
                Metric::Latency(histogram, quantile) => ScrapeQuery::Latency {
                    histogram,
                    quantile,
                },
                Metric::Other => {
                    let text = value.clone().unwrap_or_default();
                    match selector::parse_selector(&text) {
                        Ok(sel) => ScrapeQuery::Value(sel),
                        Err(m) => {
                            ctx.err(format!("{p}.value"), m);
                            return None;
                        }
                    }
                }
            };
            let (window, auth, tls) = ctx.endpoint(p, window, auth, tls);
            SourceSpec::Scrape(ScrapeSpec {
                url: url?,
                query,
                window,
                auth,
                tls,
            })
        }
        RawSignal::Alertmanager {
            matchers, token, ..
        } => {
            if matchers.is_empty() {
                ctx.err(
                    format!("{p}.matchers"),
                    "must name at least one label, e.g. { alertname = \"CheckoutErrors\" }: an empty matcher would take every alert",
                );
            }
            let token = ctx.secret(format!("{p}.token"), token)?;
            SourceSpec::Alertmanager(AlertmanagerSpec {
                matchers: matchers
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                token,
            })
        }
        RawSignal::CgroupOom {
            cgroup,
            unit,
            slice,
            ..
        } => SourceSpec::CgroupOom(cgroup_oom(ctx, p, cgroup, unit, slice)?),
        RawSignal::KubePods {
            namespace,
            selector,
            event,
            ..
        } => {
            let event = match event.as_str() {
                "oom_killed" => PodEvent::OomKilled,
                "crash_loop" => PodEvent::CrashLoop,
                "not_ready" => PodEvent::NotReady,
                "evicted" => PodEvent::Evicted,
                _ => {
                    ctx.err(
                        format!("{p}.event"),
                        format!("expected \"oom_killed\", \"crash_loop\", \"not_ready\" or \"evicted\", got {event:?}"),
                    );
                    PodEvent::OomKilled
                }
            };
            kube_name(ctx, format!("{p}.namespace"), namespace);
            if let Err(e) = crate::kube::check_selector(selector) {
                ctx.err(format!("{p}.selector"), e);
            }
            SourceSpec::KubePods(KubePodsSpec {
                access: kube_access.clone(),
                namespace: namespace.clone(),
                selector: selector.clone(),
                event,
            })
        }
    })
}

/// The cgroup of a `cgroup_oom` signal: a directory or a systemd unit, never both.
fn cgroup_oom(
    ctx: &mut Ctx,
    p: &str,
    cgroup: &Option<String>,
    unit: &Option<String>,
    slice: &Option<String>,
) -> Option<CgroupOomSpec> {
    match (cgroup, unit) {
        (Some(_), Some(_)) | (None, None) => {
            let which = if cgroup.is_some() { "both" } else { "neither" };
            ctx.err(
                p.to_owned(),
                format!("give exactly one of `cgroup` (a cgroup directory) and `unit` (a systemd unit, e.g. \"shop.service\"), got {which}"),
            );
            None
        }
        (Some(dir), None) => {
            if slice.is_some() {
                ctx.err(
                    format!("{p}.slice"),
                    "goes with `unit`; with `cgroup` the directory already says where the cgroup is",
                );
            }
            if !dir.starts_with('/') {
                ctx.err(
                    format!("{p}.cgroup"),
                    format!("expected an absolute path to a cgroup directory, e.g. \"/sys/fs/cgroup/system.slice/shop.service\", got {dir:?}"),
                );
                return None;
            }
            Some(CgroupOomSpec::Path(PathBuf::from(dir)))
        }
        (None, Some(unit)) => {
            const KINDS: [&str; 6] = [".service", ".scope", ".slice", ".socket", ".mount", ".swap"];
            let stem = KINDS.iter().find_map(|k| unit.strip_suffix(k));
            let good = stem.is_some_and(|s| !s.is_empty()) && !unit.contains('/');
            if !good {
                ctx.err(
                    format!("{p}.unit"),
                    format!("expected a systemd unit name with its type, e.g. \"shop.service\" (.service, .scope, .slice, .socket, .mount or .swap), got {unit:?}"),
                );
            }
            let slice = slice.clone().unwrap_or_else(|| "system.slice".to_owned());
            let slice_ok = slice
                .strip_suffix(".slice")
                .is_some_and(|s| !s.is_empty() && !s.contains('/'));
            if !slice_ok {
                ctx.err(
                    format!("{p}.slice"),
                    format!("expected a systemd slice name, e.g. \"system.slice\" or \"-.slice\" for the root, got {slice:?}"),
                );
            }
            (good && slice_ok).then(|| CgroupOomSpec::Unit {
                unit: unit.clone(),
                slice,
            })
        }
    }
}

fn rule(ctx: &mut Ctx, p: &str, raw: &RawRule, signal: usize, sig: &Signal) -> Option<Rule> {
    let kind = sig.kind();
    let when = match (&raw.when, kind) {
        (None, SignalKind::Check) => Condition::Failing,
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
            return None;
        }
        (Some(text), _) => match parse_condition(text) {
            Ok(c) => c,
            Err(m) => {
                ctx.err(format!("{p}.when"), m);
                return None;
            }
        },
    };
    check_condition_fits(ctx, &format!("{p}.when"), &when, kind, false);

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
    let mode = if raw.for_.is_some() {
        RuleMode::Sustained {
            for_: ctx.duration(format!("{p}.for"), &raw.for_, Duration::ZERO),
        }
    } else if let Some(n) = raw.consecutive {
        if n == 0 {
            ctx.err(format!("{p}.consecutive"), "must be at least 1");
        }
        RuleMode::Consecutive { n: n.max(1) }
    } else if let Some([m, n]) = raw.m_of_n {
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
    } else {
        RuleMode::Within {
            window: ctx.positive_duration(
                format!("{p}.within"),
                &raw.within,
                Duration::from_secs(300),
            ),
        }
    };
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
    let confidence = raw.confidence.as_ref().and_then(|text| {
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
    });
    let uses_baseline = matches!(
        when,
        Condition::Compare {
            threshold: Threshold::BaselineRatio(_),
            ..
        }
    );
    if raw.baseline_window.is_some() && !uses_baseline {
        ctx.err(
            format!("{p}.baseline_window"),
            "applies only to a condition like \"> 1.5x baseline\"",
        );
    }
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
        baseline_window: ctx.positive_duration(
            format!("{p}.baseline_window"),
            &raw.baseline_window,
            Duration::from_secs(1800),
        ),
        no_data: ctx.policy(format!("{p}.no_data"), &raw.no_data),
        insufficient: ctx.policy(format!("{p}.insufficient"), &raw.insufficient),
    })
}

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

fn plan(
    ctx: &mut Ctx,
    i: usize,
    raw: &RawPlan,
    rule_index: &HashMap<&str, usize>,
    kube_access: &crate::kube::Access,
) -> Plan {
    let p = format!("plan[{i}]");
    let mut steps = Vec::new();
    if raw.step.is_empty() {
        ctx.err(format!("{p}.step"), "a plan needs at least one step");
    }
    // Recipe steps become ordinary steps here; nothing past validation sees a recipe.
    for expanded in super::recipe::expand_steps(&p, &raw.step, &mut ctx.errors) {
        let sp = expanded.path;
        let Some(raw_step) = ctx.item::<RawStep>(&sp, &expanded.value) else {
            continue;
        };
        let common = raw_step.common();
        let name = common.name.clone().unwrap_or(expanded.default_name);
        let timeout = ctx.positive_duration(
            format!("{sp}.timeout"),
            common.timeout,
            Duration::from_secs(60),
        );
        let retries = common.retries.unwrap_or(0);
        if retries > 10 {
            ctx.err(format!("{sp}.retries"), "may be at most 10");
        }
        let on_failure = match common.on_failure.as_deref() {
            None | Some("abort") => OnFailure::Abort,
            Some("continue") => OnFailure::Continue,
            Some(other) => {
                ctx.err(
                    format!("{sp}.on_failure"),
                    format!("expected \"abort\" or \"continue\", got {other:?}"),
                );
                OnFailure::Abort
            }
        };
        let action = match &raw_step {
            RawStep::Exec {
                command, env, cwd, ..
            } => ActionSpec::Exec(ExecSpec {
                command: ctx.argv(&format!("{sp}.command"), command, true),
                env: env.clone(),
                cwd: cwd.as_ref().map(PathBuf::from),
            }),
            RawStep::ReleaseSwitch {
                current,
                releases,
                restart,
                ..
            } => {
                let current = PathBuf::from(current);
                let releases = match releases {
                    Some(r) => PathBuf::from(r),
                    None => current
                        .parent()
                        .map(|d| d.join("releases"))
                        .unwrap_or_else(|| PathBuf::from("releases")),
                };
                ActionSpec::ReleaseSwitch(ReleaseSwitchSpec {
                    current,
                    releases,
                    restart: restart
                        .as_ref()
                        .map(|r| ctx.argv(&format!("{sp}.restart"), r, true)),
                })
            }
            RawStep::Http {
                url,
                method,
                headers,
                body,
                expect_status,
                ..
            } => {
                ctx.template(format!("{sp}.url"), url);
                let probe = url.replace(['{', '}'], "");
                ctx.url(format!("{sp}.url"), &probe);
                if let Some(b) = body {
                    ctx.template(format!("{sp}.body"), b);
                }
                let mut hs = Vec::new();
                for (name, value) in headers {
                    let hp = format!("{sp}.headers.{name}");
                    if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
                        ctx.err(hp.clone(), "is not a valid header name");
                    }
                    let v = match value {
                        RawHeaderValue::Plain(s) => Some(HeaderValue::Plain(s.clone())),
                        RawHeaderValue::Secret(s) => ctx.secret(hp, s).map(HeaderValue::Secret),
                    };
                    if let Some(v) = v {
                        hs.push((name.clone(), v));
                    }
                }
                ActionSpec::Http(HttpCallSpec {
                    method: ctx.method(format!("{sp}.method"), method, reqwest::Method::POST),
                    url: url.clone(),
                    headers: hs,
                    body: body.clone(),
                    expect_status: ctx.statuses(
                        format!("{sp}.expect_status"),
                        expect_status,
                        &[200, 201, 202, 204],
                    ),
                })
            }
            RawStep::KubeRolloutUndo(k)
            | RawStep::KubeRolloutStatus(k)
            | RawStep::KubePause(k)
            | RawStep::KubeResume(k)
            | RawStep::KubeScale(k)
            | RawStep::KubeRestart(k)
            | RawStep::KubeMarkBad(k)
            | RawStep::KubeRestoreConfig(k)
            | RawStep::KubeDeletePods(k) => kube_step(ctx, &sp, &raw_step, k, kube_access),
        };
        steps.push(Step {
            name,
            timeout,
            retries: retries.min(10),
            on_failure,
            action,
        });
    }
    let verify = raw.verify.as_ref();
    let window = ctx.duration(
        format!("{p}.verify.window"),
        &verify.and_then(|v| v.window.clone()),
        Duration::from_secs(300),
    );
    let mut rules = Vec::new();
    for (j, name) in verify
        .and_then(|v| v.rules.clone())
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        match rule_index.get(name.as_str()) {
            Some(&r) => rules.push(r),
            None => ctx.err(
                format!("{p}.verify.rules[{j}]"),
                format!("no rule is named {name:?}"),
            ),
        }
    }
    Plan {
        name: raw.name.clone(),
        steps,
        verify: Verify { window, rules },
    }
}

#[cfg(test)]
mod tests {
    use super::placeholders_in;

    #[test]
    fn placeholders_are_found_inside_json_braces() {
        assert_eq!(
            placeholders_in(r#"{"text": "{incidnet}", "n": 1}"#),
            vec!["incidnet"]
        );
        assert_eq!(placeholders_in("{a}{b_c}"), vec!["a", "b_c"]);
        assert!(placeholders_in(r#"{"a": 1}"#).is_empty());
        assert!(placeholders_in("{Upper} {1} {}").is_empty());
    }
}
