//! A term of leadership as the daemon lives it (`[leader_election]`): the candidate built
//! once at start, and each term won, from its beginning (renewal started, the fence
//! built) to its end (renewal stopped, the Lease released on a clean stop).
//!
//! It must not take the Lease itself (the standby does) nor talk to the Lease API beyond
//! what [`crate::leader`] offers; it knows nothing of the engine, sources or steps.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Shared, StartError};
use crate::config::LeaderElection;
use crate::kube::lease::{Elector, Term};
use crate::leader::{Fence, LeaseWatch};

/// What this replica campaigns with: the elector on the `[kubernetes]` client, the
/// watch that wakes a standby when the Lease changes, and the settings.
pub(super) struct Candidate {
    pub(super) elector: Elector,
    pub(super) watch: LeaseWatch,
    pub(super) settings: LeaderElection,
}

impl Candidate {
    pub(super) async fn new(settings: &LeaderElection) -> Result<Candidate, StartError> {
        let (elector, watch) =
            crate::leader::elector(settings)
                .await
                .map_err(|e| StartError::Leader {
                    reason: e.to_string(),
                })?;
        Ok(Candidate {
            elector,
            watch,
            settings: settings.clone(),
        })
    }
}

/// A term of leadership: the fence its steps check, the token that ends its
/// generations when the Lease is lost, and its renewal.
pub(super) struct Lead {
    pub(super) fence: Arc<Fence>,
    /// Cancelled by the renewal or the fence when the Lease is lost, and with the
    /// daemon's shutdown (a child of it).
    pub(super) stop: CancellationToken,
    /// Stops the renewal at the end of the term (after the drain: a stopping leader
    /// keeps renewing while its last steps run).
    renewing: CancellationToken,
    renewal: tokio::task::JoinHandle<()>,
}

/// Why a term ended.
#[derive(PartialEq, Eq)]
pub(super) enum TermEnded {
    /// The daemon stops (the Lease is released).
    Stopping,
    /// The Lease was lost: this replica is a standby again.
    Lost,
}

impl Lead {
    pub(super) fn begin(
        candidate: &Candidate,
        term: Term,
        shared: &Shared,
        tasks: &TaskTracker,
    ) -> Lead {
        let (elector, settings) = (&candidate.elector, &candidate.settings);
        tracing::info!(lease = %format!("{}/{}", settings.namespace, settings.lease), identity = %settings.identity, token = term.token, "leadership won: this replica acts");
        shared.health.set_standby(None);
        shared.health.engine_turned(shared.health.now_ms());
        let stop = shared.shutdown.child_token();
        let renewing = CancellationToken::new();
        let validity =
            crate::leader::Validity::new(std::time::Instant::now(), settings.lease_duration);
        let renewal = tasks.spawn(crate::leader::renew(
            elector.clone(),
            term.clone(),
            settings.clone(),
            validity.clone(),
            stop.clone(),
            renewing.clone(),
        ));
        Lead {
            fence: Arc::new(Fence::new(
                elector.clone(),
                term,
                settings,
                validity,
                stop.clone(),
            )),
            stop,
            renewing,
            renewal,
        }
    }

    /// Ends the term once its generation has stopped: the renewal ends, and on a clean
    /// stop the Lease is released.
    pub(super) async fn end(mut self, shared: &Shared) -> TermEnded {
        self.end_renewal().await;
        if shared.shutdown.is_cancelled() {
            // A clean stop: a standby (watching the Lease) takes over at once, not after
            // the lease duration.
            match self.fence.release().await {
                Ok(()) => tracing::info!("lease released"),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot release the lease; it expires on its own")
                }
            }
            return TermEnded::Stopping;
        }
        tracing::warn!("leadership lost: this replica is a standby again");
        TermEnded::Lost
    }

    /// Ends the term's renewal and waits for it, so that no renewal in flight takes the
    /// Lease again after it is released.
    async fn end_renewal(&mut self) {
        self.renewing.cancel();
        let _ = (&mut self.renewal).await;
    }
}
