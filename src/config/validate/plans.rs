//! `[[plan]]` and its steps: each step's common keys and action (exec, release switch,
//! HTTP call, the Kubernetes steps), recipe steps expanded through `recipe.rs` first, the
//! verification (its window and rules, resolved by name), and the checks across plans,
//! targets and rules once all are validated. It must not run, probe or resolve anything
//! an action would touch (no file, command or URL is tried here).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Duration;

use super::ctx::{Ctx, each_slot, kube_name};
use crate::config::raw::{RawHeaderValue, RawKubeStep, RawPlan, RawRevision, RawStep};
use crate::config::recipe::{self, ExpandedStep};
use crate::config::units;
use crate::config::{
    ActionSpec, ExecSpec, HeaderValue, HttpCallSpec, KubeDeploymentRef, KubeRestoreConfigSpec,
    KubeRolloutUndoSpec, KubeScaleSpec, OnFailure, Plan, ReleaseSwitchSpec, Replicas,
    RestoreConfigFilesSpec, Rule, RuleMode, Step, Target, ToRevision, Verify,
};
use crate::kube::Access;

/// One slot per plan of the file (`None` for a plan with item errors). Verification
/// rules are resolved through `rule_index` to positions in the file, which are the
/// rules' indexes once the configuration is complete.
pub(super) fn plans(
    ctx: &mut Ctx,
    raws: &[Option<RawPlan>],
    rule_index: &HashMap<&str, usize>,
    kube_access: &Access,
) -> Vec<Option<Plan>> {
    each_slot(raws, |i, raw| {
        Some(plan(ctx, i, raw, rule_index, kube_access))
    })
}

fn plan(
    ctx: &mut Ctx,
    i: usize,
    raw: &RawPlan,
    rule_index: &HashMap<&str, usize>,
    kube_access: &Access,
) -> Plan {
    let p = format!("plan[{i}]");
    let mut steps = Vec::new();
    if raw.step.is_empty() {
        ctx.err(format!("{p}.step"), "a plan needs at least one step");
    }
    // Recipe steps become ordinary steps here; nothing past validation sees a recipe.
    for expanded in recipe::expand_steps(&p, &raw.step, &mut ctx.errors) {
        steps.extend(step(ctx, expanded, kube_access));
    }
    Plan {
        name: raw.name.clone(),
        steps,
        verify: verify(ctx, &p, raw, rule_index),
    }
}

fn step(ctx: &mut Ctx, expanded: ExpandedStep, kube_access: &Access) -> Option<Step> {
    let sp = expanded.path;
    let raw_step = ctx.item::<RawStep>(&sp, &expanded.value)?;
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
    Some(Step {
        name,
        timeout,
        retries: retries.min(10),
        on_failure,
        action: action(ctx, &sp, &raw_step, kube_access),
    })
}

fn action(ctx: &mut Ctx, sp: &str, raw_step: &RawStep, kube_access: &Access) -> ActionSpec {
    match raw_step {
        RawStep::Exec {
            command,
            env,
            inherit_env,
            cwd,
            ..
        } => ActionSpec::Exec(ExecSpec {
            command: ctx.argv(&format!("{sp}.command"), command, true),
            env: env.clone(),
            inherit_env: ctx.inherit_env(format!("{sp}.inherit_env"), inherit_env),
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
        } => ActionSpec::Http(http(ctx, sp, url, method, headers, body, expect_status)),
        RawStep::KubeRolloutUndo(k)
        | RawStep::KubeRolloutStatus(k)
        | RawStep::KubePause(k)
        | RawStep::KubeResume(k)
        | RawStep::KubeScale(k)
        | RawStep::KubeRestart(k)
        | RawStep::KubeMarkBad(k)
        | RawStep::KubeRestoreConfig(k)
        | RawStep::KubeDeletePods(k) => kube_step(ctx, sp, raw_step, k, kube_access),
        RawStep::RestoreConfigFiles { to_revision, .. } => {
            ActionSpec::RestoreConfigFiles(RestoreConfigFilesSpec {
                // Filled in by `place_snapshots` once `[daemon]` is known.
                state_dir: PathBuf::new(),
                revision: to_revision
                    .as_ref()
                    .filter(|t| t.as_str() != "{to_revision}")
                    .cloned(),
            })
        }
    }
}

/// Gives every `restore_config_files` step the state directory its snapshots are in.
pub(super) fn place_snapshots(plans: &mut [Option<Plan>], state_dir: &std::path::Path) {
    for plan in plans.iter_mut().flatten() {
        for step in &mut plan.steps {
            if let ActionSpec::RestoreConfigFiles(spec) = &mut step.action {
                spec.state_dir = state_dir.to_path_buf();
            }
        }
    }
}

/// An HTTP call step. Its URL and body may hold placeholders, filled at run time.
fn http(
    ctx: &mut Ctx,
    sp: &str,
    url: &str,
    method: &Option<String>,
    headers: &BTreeMap<String, RawHeaderValue>,
    body: &Option<String>,
    expect_status: &Option<Vec<u16>>,
) -> HttpCallSpec {
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
    HttpCallSpec {
        method: ctx.method(format!("{sp}.method"), method, reqwest::Method::POST),
        url: url.to_owned(),
        headers: hs,
        body: body.clone(),
        expect_status: ctx.statuses(
            format!("{sp}.expect_status"),
            expect_status,
            &[200, 201, 202, 204],
        ),
    }
}

/// A plan's `verify`: how long to watch after the rollback, and which rules judge it
/// (by their position in the file).
fn verify(ctx: &mut Ctx, p: &str, raw: &RawPlan, rule_index: &HashMap<&str, usize>) -> Verify {
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
    Verify { window, rules }
}

/// A step on a Kubernetes Deployment.
fn kube_step(
    ctx: &mut Ctx,
    sp: &str,
    raw: &RawStep,
    k: &RawKubeStep,
    access: &Access,
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
        RawStep::KubeRolloutUndo(_) => ActionSpec::KubeRolloutUndo(KubeRolloutUndoSpec {
            to_revision: undo_revision(ctx, sp, &k.to_revision),
            access: target.access,
            namespace: target.namespace,
            deployment: target.deployment,
        }),
        RawStep::KubeScale(_) => ActionSpec::KubeScale(KubeScaleSpec {
            replicas: replicas(ctx, sp, &k.replicas),
            target,
        }),
        RawStep::KubeRolloutStatus(_) => ActionSpec::KubeRolloutStatus(target),
        RawStep::KubePause(_) => ActionSpec::KubePause(target),
        RawStep::KubeResume(_) => ActionSpec::KubeResume(target),
        RawStep::KubeRestart(_) => ActionSpec::KubeRestart(target),
        RawStep::KubeRestoreConfig(_) => ActionSpec::KubeRestoreConfig(KubeRestoreConfigSpec {
            revision: restore_revision(ctx, sp, &k.to_revision),
            target,
        }),
        RawStep::KubeDeletePods(_) => ActionSpec::KubeDeletePods(target),
        _ => ActionSpec::KubeMarkBad(target),
    }
}

/// A kube_rollout_undo step's `to_revision`: a number, the incident's, or the previous.
fn undo_revision(ctx: &mut Ctx, sp: &str, to_revision: &Option<RawRevision>) -> ToRevision {
    match to_revision {
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
    }
}

/// A kube_scale step's `replicas`: a count, or the count recorded before the incident.
fn replicas(ctx: &mut Ctx, sp: &str, replicas: &Option<RawRevision>) -> Replicas {
    match replicas {
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
    }
}

/// A kube_restore_config step's `to_revision`: a number, or `None` for the incident's.
fn restore_revision(ctx: &mut Ctx, sp: &str, to_revision: &Option<RawRevision>) -> Option<i64> {
    match to_revision {
        None => None,
        Some(RawRevision::Text(t)) if t == "{to_revision}" => None,
        Some(RawRevision::Number(n)) if *n >= 1 => Some(*n),
        Some(RawRevision::Text(t)) if t.parse::<i64>().is_ok_and(|n| n >= 1) => t.parse().ok(),
        Some(_) => {
            ctx.err(
                format!("{sp}.to_revision"),
                "expected a revision number >= 1 or \"{to_revision}\"",
            );
            None
        }
    }
}

/// The checks that need plans, targets and rules all validated: verification rules
/// watch the targets that use the plan, and verification outlasts `within` windows.
/// Every slice has one slot per item of the file, so a plan, target or rule with errors
/// leaves a gap instead of shifting the positions references are made of.
pub(super) fn check_verification(
    ctx: &mut Ctx,
    plans: &mut [Option<Plan>],
    targets: &[Option<Target>],
    rules: &[Option<Rule>],
) {
    for (ti, t) in slots(targets) {
        let Some(pi) = t.plan else { continue };
        let Some(plan) = plans.get(pi).and_then(Option::as_ref) else {
            continue;
        };
        for &r in &plan.verify.rules {
            if let Some(rule) = rules.get(r).and_then(Option::as_ref)
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
    // A verification rule with errors is left out, like the rule itself.
    for plan in plans.iter_mut().flatten() {
        plan.verify
            .rules
            .retain(|&r| rules.get(r).is_some_and(Option::is_some));
    }
    check_verify_windows(ctx, plans, targets, rules);
    check_config_file_steps(ctx, plans, targets);
}

/// A `restore_config_files` step restores the snapshot of the target's `config_files`:
/// a target without them has no snapshot to restore, which would only show when the
/// step runs in an incident.
fn check_config_file_steps(ctx: &mut Ctx, plans: &[Option<Plan>], targets: &[Option<Target>]) {
    for (ti, t) in slots(targets) {
        let Some(plan) = t.plan.and_then(|pi| plans.get(pi)?.as_ref()) else {
            continue;
        };
        let restores = plan
            .steps
            .iter()
            .find(|s| matches!(s.action, ActionSpec::RestoreConfigFiles(_)));
        if let Some(step) = restores
            && t.config_files.is_empty()
        {
            ctx.err(
                format!("target[{ti}].plan"),
                format!(
                    "plan {:?} has a restore_config_files step ({:?}) but this target has no config_files to snapshot",
                    plan.name, step.name
                ),
            );
        }
    }
}

/// The filled slots with their positions in the file.
fn slots<T>(items: &[Option<T>]) -> impl Iterator<Item = (usize, &T)> {
    items
        .iter()
        .enumerate()
        .filter_map(|(i, item)| Some((i, item.as_ref()?)))
}

/// A `within` rule still counts events from before the rollback until its window has
/// passed; a shorter verification would fail on them and trip the breaker.
fn check_verify_windows(
    ctx: &mut Ctx,
    plans: &[Option<Plan>],
    targets: &[Option<Target>],
    rules: &[Option<Rule>],
) {
    for (pi, plan) in slots(plans) {
        let users: Vec<usize> = slots(targets)
            .filter(|(_, t)| t.plan == Some(pi))
            .map(|(i, _)| i)
            .collect();
        let judged = slots(rules).filter(|(ri, r)| {
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
}
