//! `[kubernetes]` (how the cluster is reached, and whether incidents are posted as Events)
//! and `[leader_election]` (the Lease, this replica's identity and the timings). It
//! decides no Kubernetes step or signal: those sections take the `Access` built here.

use std::time::Duration;

use figment::value::Value;

use super::ctx::{Ctx, kube_name};
use crate::config::LeaderElection;
use crate::config::raw::{RawKubernetes, RawLeaderElection};
use crate::kube::{Access, AccessSource};

/// `[kubernetes]`: how the cluster is reached.
pub(super) fn kubernetes(ctx: &mut Ctx, raw: Option<&Value>) -> Access {
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

/// `[kubernetes] events`: on unless turned off. Errors in the table are reported by
/// `kubernetes`, so they are not reported again here.
pub(super) fn events(raw: Option<&Value>) -> bool {
    raw.and_then(|k| k.deserialize::<RawKubernetes>().ok())
        .and_then(|k| k.events)
        .unwrap_or(true)
}

/// `[leader_election]`: the Lease, this replica's identity and the timings.
pub(super) fn leader_election(
    ctx: &mut Ctx,
    raw: Option<&Value>,
    access: &Access,
) -> Option<LeaderElection> {
    let raw: RawLeaderElection = ctx.item("leader_election", raw?)?;
    kube_name(ctx, "leader_election.namespace".into(), &raw.namespace);
    let lease = raw.lease.clone().unwrap_or_else(|| "rearguard".to_owned());
    kube_name(ctx, "leader_election.lease".into(), &lease);
    let identity = identity(ctx, raw.identity.clone());
    let (lease_duration, renew_every, retry_every) = lease_timings(ctx, &raw);
    Some(LeaderElection {
        access: access.clone(),
        namespace: raw.namespace,
        lease,
        identity,
        lease_duration,
        renew_every,
        retry_every,
    })
}

/// `leader_election.identity`, by default `$POD_NAME` or else the hostname.
fn identity(ctx: &mut Ctx, configured: Option<String>) -> String {
    match configured {
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
    }
}

/// `lease_duration`, `renew_every` and `retry_every`, in that order.
fn lease_timings(ctx: &mut Ctx, raw: &RawLeaderElection) -> (Duration, Duration, Duration) {
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
    (lease_duration, renew_every, retry_every)
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
