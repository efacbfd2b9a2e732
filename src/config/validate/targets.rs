//! `[[target]]`: the things rolled back, each with its plan (resolved by name), change
//! observer, rollback budget, a host target's configuration files and, for a
//! `kube_deployment` target or one with configuration files, its bake time and
//! snapshots. It must not look inside a plan or a signal: plans are resolved to indexes
//! only.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use super::ctx::{Ctx, MIN_INTERVAL, each_slot, kube_name};
use crate::config::raw::{RawChange, RawTarget};
use crate::config::{ChangeSpec, KubeDeploymentRef, Target};
use crate::kube::Access;

/// One slot per target of the file (`None` for a target with item errors), its plan
/// resolved through `plan_index` (each plan name's position in the file).
pub(super) fn targets(
    ctx: &mut Ctx,
    raws: &[Option<RawTarget>],
    plan_index: &HashMap<&str, usize>,
    kube_access: &Access,
) -> Vec<Option<Target>> {
    each_slot(raws, |i, raw| {
        Some(target(ctx, i, raw, plan_index, kube_access))
    })
}

fn target(
    ctx: &mut Ctx,
    i: usize,
    raw: &RawTarget,
    plan_index: &HashMap<&str, usize>,
    kube_access: &Access,
) -> Target {
    let p = format!("target[{i}]");
    let plan = raw.plan.as_ref().and_then(|name| {
        let found = plan_index.get(name.as_str()).copied();
        if found.is_none() {
            ctx.err(format!("{p}.plan"), format!("no plan is named {name:?}"));
        }
        found
    });
    let change = raw
        .change
        .as_ref()
        .map(|c| change(ctx, &format!("{p}.change"), c, kube_access));
    let max_rollbacks = raw.max_rollbacks.unwrap_or(3);
    if max_rollbacks == 0 {
        ctx.err(
            format!("{p}.max_rollbacks"),
            "must be at least 1; leave `plan` unset to never act",
        );
    }
    Target {
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
        bake: bake(ctx, &p, raw, change.as_ref()),
        healthy_for: healthy_for(ctx, &p, raw, change.as_ref()),
        config_files: config_files(ctx, &p, raw, change.as_ref()),
        keep_snapshots: match raw.keep_snapshots {
            Some(0) => {
                ctx.err(format!("{p}.keep_snapshots"), "must be at least 1");
                1
            }
            n => n.unwrap_or(3),
        },
        change,
    }
}

/// A target's change observer: how it learns that a new version was deployed.
fn change(ctx: &mut Ctx, p: &str, raw: &RawChange, kube_access: &Access) -> ChangeSpec {
    match raw {
        RawChange::ReleaseSymlink { path, interval } => ChangeSpec::ReleaseSymlink {
            path: PathBuf::from(path),
            interval: ctx.duration_at_least(
                format!("{p}.interval"),
                interval,
                Duration::from_secs(5),
                MIN_INTERVAL,
            ),
        },
        RawChange::Exec {
            command,
            interval,
            timeout,
            env,
            inherit_env,
        } => ChangeSpec::Exec {
            command: ctx.argv(&format!("{p}.command"), command, false),
            env: env.clone(),
            inherit_env: ctx.inherit_env(format!("{p}.inherit_env"), inherit_env),
            interval: ctx.duration_at_least(
                format!("{p}.interval"),
                interval,
                Duration::from_secs(30),
                MIN_INTERVAL,
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

/// Whether the target's configuration is snapshotted when a revision bakes: a
/// `kube_deployment` target's ConfigMaps and Secrets, or a host target's files.
fn snapshotted(raw: &RawTarget, change: Option<&ChangeSpec>) -> bool {
    match change {
        Some(ChangeSpec::KubeDeployment(_)) => true,
        Some(_) => raw.config_files.as_ref().is_some_and(|f| !f.is_empty()),
        None => false,
    }
}

/// A target's `bake`: default 10 minutes for a `kube_deployment` target or one with
/// `config_files`, refused for others (there is nothing to snapshot).
fn bake(ctx: &mut Ctx, p: &str, raw: &RawTarget, change: Option<&ChangeSpec>) -> Option<Duration> {
    let kube = snapshotted(raw, change);
    if !kube && (raw.bake.is_some() || raw.keep_snapshots.is_some()) {
        let key = if raw.bake.is_some() {
            "bake"
        } else {
            "keep_snapshots"
        };
        ctx.err(
            format!("{p}.{key}"),
            "only for a target whose change observer is kube_deployment, or that has config_files",
        );
        return None;
    }
    kube.then(|| {
        ctx.positive_duration(format!("{p}.bake"), &raw.bake, Duration::from_secs(10 * 60))
    })
}

/// A target's `healthy_for`: how long before a change its rules must have been quiet
/// for the replaced revision to count as healthy. Default: the target's `bake` (10
/// minutes unless set), zero allowed (the instant of the change only).
fn healthy_for(ctx: &mut Ctx, p: &str, raw: &RawTarget, change: Option<&ChangeSpec>) -> Duration {
    let kube = snapshotted(raw, change);
    let bake = match &raw.bake {
        Some(text) if kube => crate::config::units::parse_duration(text).ok(),
        _ => None,
    };
    let default = bake.unwrap_or(Duration::from_secs(10 * 60));
    ctx.duration(format!("{p}.healthy_for"), &raw.healthy_for, default)
}

/// A target's `config_files`: only beside a `release_symlink` or `exec` observer (a
/// Deployment's configuration is its ConfigMaps and Secrets), each an absolute path
/// without `..` whose wildcards (`*`, `?`) are in its last component only.
fn config_files(
    ctx: &mut Ctx,
    p: &str,
    raw: &RawTarget,
    change: Option<&ChangeSpec>,
) -> Vec<String> {
    let Some(files) = &raw.config_files else {
        return Vec::new();
    };
    let key = format!("{p}.config_files");
    if !matches!(
        change,
        Some(ChangeSpec::ReleaseSymlink { .. } | ChangeSpec::Exec { .. })
    ) {
        ctx.err(
            key,
            "only for a target whose change observer is release_symlink or exec (a Deployment's configuration is its ConfigMaps and Secrets)",
        );
        return Vec::new();
    }
    let most = crate::source::change::CONFIG_FILES_MAX;
    if files.len() > most {
        ctx.err(key.clone(), format!("at most {most} files or patterns"));
    }
    for (j, file) in files.iter().enumerate() {
        if let Err(why) = config_file_pattern(file) {
            ctx.err(format!("{key}[{j}]"), why);
        }
    }
    files.clone()
}

/// Why `pattern` is not a usable `config_files` entry.
fn config_file_pattern(pattern: &str) -> Result<(), String> {
    let path = std::path::Path::new(pattern);
    if !path.is_absolute() {
        return Err(format!("{pattern:?} is not an absolute path"));
    }
    if path
        .components()
        .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(format!("{pattern:?} holds \"..\""));
    }
    let Some(parent) = path.parent().filter(|_| path.file_name().is_some()) else {
        return Err(format!("{pattern:?} names no file"));
    };
    if parent.to_string_lossy().contains(['*', '?', '[']) {
        return Err(format!(
            "{pattern:?}: wildcards (* and ?) are allowed in the file name only"
        ));
    }
    Ok(())
}
