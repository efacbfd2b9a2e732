//! Leader election wired into the daemon: which replica acts, and for how long.
//!
//! With `[leader_election]`, a replica that does not hold the Lease is a standby: the
//! daemon serves its health and metrics and makes an [`attempt`] on the Lease every
//! `retry_every`, and at once whenever [`LeaseWatch`] sees the Lease change (a leader
//! that stops releases it). The winner runs a generation as a single replica would,
//! while [`renew`] keeps the Lease and cancels the generation's token as soon as the
//! Lease is lost or has not been renewed for its duration. Every plan step is fenced
//! ([`Fence::check`]) right before it starts: a replica that was replaced (paused,
//! partitioned) never acts on stale authority. On a clean stop the leader gives the
//! Lease up ([`Fence::release`]).
//!
//! This module talks to the Lease only (through [`crate::kube::lease`]); it knows
//! nothing of the engine, sources or actions, and decides nothing about incidents.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use ::kube::Api;
use ::kube::api::{WatchEvent, WatchParams};
use futures_util::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use tokio_util::sync::CancellationToken;

use crate::config::LeaderElection;
use crate::kube::KubeError;
use crate::kube::lease::{Elector, FenceError, Role, Term};

/// The candidate of this replica for the configured Lease, and a watch on that Lease,
/// on the `[kubernetes]` client.
pub async fn elector(settings: &LeaderElection) -> Result<(Elector, LeaseWatch), KubeError> {
    let client = crate::kube::Handle::new(&settings.access).client().await?;
    let watch = LeaseWatch {
        api: Api::namespaced(client.clone(), &settings.namespace),
        name: settings.lease.clone(),
    };
    let elector = Elector::new(
        client,
        &settings.namespace,
        &settings.lease,
        &settings.identity,
        settings.lease_duration,
    );
    Ok((elector, watch))
}

/// Wakes a standby when the Lease changes, so that a Lease released by a leader that
/// stops is tried at once rather than at the next `retry_every`.
pub struct LeaseWatch {
    api: Api<Lease>,
    name: String,
}

impl LeaseWatch {
    /// Returns at the Lease's next change. When the Lease cannot be watched it never
    /// returns, and the standby's retries alone take it: a watch is a shortcut, never a
    /// condition.
    pub async fn changed(&self) {
        let Ok(Some(lease)) = self.api.get_opt(&self.name).await else {
            return std::future::pending().await;
        };
        let Some(version) = lease.metadata.resource_version else {
            return std::future::pending().await;
        };
        let params = WatchParams::default()
            .fields(&format!("metadata.name={}", self.name))
            .timeout(290);
        let Ok(events) = self.api.watch(&params, &version).await else {
            return std::future::pending().await;
        };
        futures_util::pin_mut!(events);
        match events.next().await {
            Some(Ok(WatchEvent::Added(_) | WatchEvent::Modified(_) | WatchEvent::Deleted(_))) => {}
            // An ended watch, an error or a bookmark says nothing about the holder: the
            // retries go on alone (and the next one watches afresh), so that a watch
            // that keeps failing never makes a standby spin.
            _ => std::future::pending().await,
        }
    }
}

/// What a standby says about the Lease (in `/readyz` and systemd's `STATUS=`).
pub fn standby_status(settings: &LeaderElection, holder: Option<&str>) -> String {
    let lease = format!("lease {}/{}", settings.namespace, settings.lease);
    match holder {
        Some(h) => format!("{lease} held by {h}"),
        None => format!("{lease} not yet taken"),
    }
}

/// Where a standby stands after one [`attempt`] on the Lease.
#[derive(Debug)]
pub enum Attempt {
    /// This replica holds the Lease now.
    Won(Term),
    /// Another replica holds it (its identity, when the Lease names one).
    Follows(Option<String>),
    /// The API server could not be asked; the text says why (no credential in it).
    Failed(String),
}

/// One attempt to take the Lease, bounded by `limit` so that a hung API server never
/// holds a standby (or its health) up.
pub async fn attempt(elector: &Elector, limit: Duration) -> Attempt {
    match tokio::time::timeout(limit, elector.step(SystemTime::now())).await {
        Ok(Ok(Role::Leader(term))) => Attempt::Won(term),
        Ok(Ok(Role::Follower { holder })) => Attempt::Follows(holder),
        Ok(Err(e)) => Attempt::Failed(e.to_string()),
        Err(_) => Attempt::Failed(format!(
            "the api server did not answer within {}",
            crate::config::units::format_duration(limit)
        )),
    }
}

/// Until when a term's Lease is known to hold on this replica's clock: the send time of
/// the last renewal that succeeded, plus the lease duration. The renewal extends it; the
/// fence tells an API server that cannot answer for a moment from a Lease that is gone.
#[derive(Debug, Clone)]
pub struct Validity(Arc<Mutex<Instant>>);

impl Validity {
    /// A term won at about `won`, for `duration`.
    pub fn new(won: Instant, duration: Duration) -> Validity {
        Validity(Arc::new(Mutex::new(won + duration)))
    }

    pub fn until(&self) -> Instant {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn extend(&self, to: Instant) {
        let mut until = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *until = (*until).max(to);
    }
}

/// Keeps the Lease of `term`: renews it every `renew_every`, and cancels `lost` (which
/// ends the generation) when another replica holds it, or when the next renewal would
/// come after the Lease expires (so that the generation stops while the Lease still
/// holds, before a standby may take it). Returns when `stop` is cancelled (after the
/// generation's drain: a stopping leader keeps its Lease until its steps are over) or
/// when the Lease is lost.
pub async fn renew(
    elector: Elector,
    term: Term,
    settings: LeaderElection,
    validity: Validity,
    lost: CancellationToken,
    stop: CancellationToken,
) {
    let lease = format!("{}/{}", settings.namespace, settings.lease);
    let mut ticker = tokio::time::interval(settings.renew_every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let sent = Instant::now();
        match attempt(&elector, settings.renew_every).await {
            Attempt::Won(t) if t == term => validity.extend(sent + settings.lease_duration),
            Attempt::Won(t) => {
                // The Lease changed hands in between: what this term started is not ours
                // to go on with.
                tracing::error!(lease = %lease, ours = term.token, now = t.token, "leadership lost: the lease was held by another replica in between");
                lost.cancel();
                return;
            }
            Attempt::Follows(holder) => {
                tracing::error!(lease = %lease, holder = holder.as_deref().unwrap_or(""), "leadership lost: another replica holds the lease");
                lost.cancel();
                return;
            }
            Attempt::Failed(e) => {
                if Instant::now() + settings.renew_every >= validity.until() {
                    tracing::error!(lease = %lease, error = %e, "leadership lost: the lease cannot be renewed before it expires");
                    lost.cancel();
                    return;
                }
                tracing::warn!(lease = %lease, error = %e, "cannot renew the lease; retrying");
            }
        }
    }
}

/// How long the fence waits before asking an API server that could not answer again.
const FENCE_RETRY: Duration = Duration::from_millis(250);

/// A leader's authority for one term: checked right before each plan step, and given up
/// on a clean stop.
pub struct Fence {
    elector: Elector,
    term: Term,
    lost: CancellationToken,
    limit: Duration,
    validity: Validity,
    /// How long the Lease must still hold when a step starts: half of what is left of
    /// it right before a renewal (`lease_duration - renew_every`), so that a step never
    /// starts on a Lease about to lapse.
    margin: Duration,
}

impl Fence {
    /// `lost` is the generation's token: cancelled when the fence finds the term over.
    pub fn new(
        elector: Elector,
        term: Term,
        settings: &LeaderElection,
        validity: Validity,
        lost: CancellationToken,
    ) -> Fence {
        Fence {
            elector,
            term,
            lost,
            limit: settings.renew_every,
            validity,
            margin: settings.lease_duration.saturating_sub(settings.renew_every) / 2,
        }
    }

    /// Whether this term still holds the Lease, for at least the margin from now. An API
    /// server that cannot answer is asked again while the last renewal still vouches
    /// for the Lease; when the term is over (another holder, expired, gone, or no
    /// answer in time), leadership is treated as lost: the generation's token is
    /// cancelled.
    pub async fn check(&self) -> Result<(), FenceError> {
        loop {
            let checked = tokio::time::timeout(
                self.limit,
                self.elector
                    .fence(&self.term, SystemTime::now() + self.margin),
            )
            .await
            .unwrap_or_else(|_| {
                Err(FenceError::Kube(KubeError::Transport(format!(
                    "the api server did not answer within {}",
                    crate::config::units::format_duration(self.limit)
                ))))
            });
            match checked {
                Ok(()) => return Ok(()),
                Err(FenceError::Kube(e))
                    if Instant::now() + self.margin + FENCE_RETRY < self.validity.until() =>
                {
                    tracing::warn!(error = %e, "cannot check the lease before a step; asking again");
                    tokio::time::sleep(FENCE_RETRY).await;
                }
                Err(e) => {
                    self.lost.cancel();
                    return Err(e);
                }
            }
        }
    }

    /// Gives the Lease up so that a standby takes it at once; nothing if the term is
    /// over already.
    pub async fn release(&self) -> Result<(), KubeError> {
        match tokio::time::timeout(
            self.limit,
            self.elector.release(&self.term, SystemTime::now()),
        )
        .await
        {
            Ok(r) => r,
            Err(_) => Err(KubeError::Transport(format!(
                "the api server did not answer within {}",
                crate::config::units::format_duration(self.limit)
            ))),
        }
    }
}
