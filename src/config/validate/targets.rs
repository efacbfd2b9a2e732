//! `[[target]]`: the things rolled back, each with its plan (resolved by name), change
//! observer, rollback budget and, for a `kube_deployment` target, its bake time and
//! snapshots. It must not look inside a plan or a signal: plans are resolved to indexes
//! only.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use super::ctx::{Ctx, each_item, kube_name};
use crate::config::raw::{RawChange, RawTarget};
use crate::config::{ChangeSpec, KubeDeploymentRef, Target};
use crate::kube::Access;

/// Every target without item errors, in file order, its plan resolved through
/// `plan_index` (each plan name's position in the file).
pub(super) fn targets(
    ctx: &mut Ctx,
    raws: &[Option<RawTarget>],
    plan_index: &HashMap<&str, usize>,
    kube_access: &Access,
) -> Vec<Target> {
    each_item(raws, |i, raw| {
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
        bake: kube_bake(ctx, &p, raw, change.as_ref()),
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
