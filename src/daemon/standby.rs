//! The standby with `[leader_election]`: waits until this replica takes the Lease or the
//! daemon stops, serving `/healthz`, `/readyz` ("standby: lease ... held by ...") and
//! `/metrics` (leader 0), telling systemd it is ready with the same status, applying
//! reloads, and trying the Lease every `retry_every` and whenever it changes (watched).
//!
//! It must not run an engine, a source or a step, nor send anything: Alertmanager's
//! webhook is refused with 503 (Alertmanager retries; the leader receives it).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::lead::Candidate;
use super::listener::{WEBHOOK_PATH, serve, stall_after};
use super::parts::Parts;
use super::reload::{Reload, prepare_reload};
use super::{Event, Shared, next_reload, watchdog_tick, watchdog_ticker};
use crate::api::Metrics;
use crate::config::LeaderElection;
use crate::kube::lease::Term;
use crate::leader::{Attempt, attempt, standby_status};

/// How a standby's wait ended.
pub(super) enum Standby {
    /// This replica holds the Lease: the configuration to run (the latest reload's),
    /// and the term.
    Won(Box<Parts>, Term),
    /// The daemon stops.
    Stopped,
}

/// Waits as a standby until this replica takes the Lease or the daemon stops.
pub(super) async fn standby(
    parts: Box<Parts>,
    candidate: &Candidate,
    shared: &Shared,
    reloads: Option<&mut mpsc::Receiver<Reload>>,
) -> Standby {
    let mut waiting = Waiting::start(parts, &candidate.settings, shared);
    let won = waiting.campaign(candidate, reloads).await;
    // The listener's clone stops accepting before the generation serves its own.
    waiting.api_stop.cancel();
    if tokio::time::timeout(Duration::from_secs(5), waiting.serving.wait())
        .await
        .is_err()
    {
        tracing::warn!("the standby's listener did not stop within 5s");
    }
    match won {
        Some(term) => Standby::Won(waiting.parts, term),
        None => Standby::Stopped,
    }
}

/// A standby while it waits.
struct Waiting<'a> {
    parts: Box<Parts>,
    settings: &'a LeaderElection,
    shared: &'a Shared,
    /// What `/readyz` and systemd's `STATUS=` say.
    status: String,
    told_systemd: bool,
    last_error: Option<String>,
    last_holder: Option<Option<String>>,
    watchdog: Option<tokio::time::Interval>,
    api_stop: CancellationToken,
    serving: TaskTracker,
}

impl<'a> Waiting<'a> {
    /// Serves the standby's listener and says it is a standby.
    fn start(parts: Box<Parts>, settings: &'a LeaderElection, shared: &'a Shared) -> Self {
        let status = standby_status(settings, None);
        shared.health.set_standby(Some(status.clone()));
        let metrics = Arc::new(Metrics::with_lasting(&parts.cfg, &shared.lasting));
        metrics.set_leader(false);
        // Alertmanager retries what a standby refuses; the leader receives it.
        let app = crate::api::router(metrics, Arc::clone(&shared.health), stall_after(&parts.cfg))
            .route(
                WEBHOOK_PATH,
                axum::routing::post(|| async {
                    (
                        axum::http::StatusCode::SERVICE_UNAVAILABLE,
                        "standby: another replica holds the lease\n",
                    )
                }),
            );
        let api_stop = CancellationToken::new();
        let serving = TaskTracker::new();
        serve(shared, &parts.cfg, app, &api_stop, &serving);
        serving.close();
        Waiting {
            parts,
            settings,
            shared,
            status,
            told_systemd: false,
            last_error: None,
            last_holder: None,
            watchdog: watchdog_ticker(shared.systemd.as_ref()),
            api_stop,
            serving,
        }
    }

    /// Tries the Lease until it is won (its term) or the daemon stops (`None`).
    async fn campaign(
        &mut self,
        candidate: &Candidate,
        mut reloads: Option<&mut mpsc::Receiver<Reload>>,
    ) -> Option<Term> {
        let settings = self.settings;
        loop {
            let limit = settings.retry_every.max(Duration::from_secs(1));
            let now_status = match attempt(&candidate.elector, limit).await {
                Attempt::Won(term) => return Some(term),
                Attempt::Follows(holder) => self.follows(holder),
                Attempt::Failed(e) => self.failed(e),
            };
            self.say(now_status);
            if !self.wait(candidate, reloads.as_deref_mut()).await {
                return None;
            }
        }
    }

    /// The status while another replica holds the Lease (logged when the holder changes).
    fn follows(&mut self, holder: Option<String>) -> String {
        let settings = self.settings;
        self.last_error = None;
        if self.last_holder.as_ref() != Some(&holder) {
            tracing::info!(lease = %format!("{}/{}", settings.namespace, settings.lease), holder = holder.as_deref().unwrap_or(""), "standby: another replica holds the lease");
        }
        let text = standby_status(settings, holder.as_deref());
        self.last_holder = Some(holder);
        text
    }

    /// The status while the Lease cannot be read (each distinct error logged once).
    fn failed(&mut self, e: String) -> String {
        if self.last_error.as_deref() != Some(&e) {
            tracing::warn!(error = %e, "standby: cannot read the lease");
            self.last_error = Some(e.clone());
        }
        format!(
            "{} (cannot read it: {e})",
            standby_status(self.settings, None)
        )
    }

    /// Says a new status on `/readyz` and to systemd (READY the first time).
    fn say(&mut self, now_status: String) {
        if now_status == self.status && self.told_systemd {
            return;
        }
        self.status = now_status;
        self.shared.health.set_standby(Some(self.status.clone()));
        if let Some(sd) = self.shared.systemd.as_ref() {
            let line = format!("standby: {}", self.status);
            if self.told_systemd {
                sd.status(&line);
            } else {
                sd.ready(&line);
            }
        }
        self.told_systemd = true;
    }

    /// Waits for the next try: after `retry_every`, or at once when the Lease changes (a
    /// leader that stops releases it), applying reloads and pinging the watchdog
    /// meanwhile. False when the daemon stops.
    async fn wait(
        &mut self,
        candidate: &Candidate,
        mut reloads: Option<&mut mpsc::Receiver<Reload>>,
    ) -> bool {
        let retry = tokio::time::sleep(self.settings.retry_every);
        tokio::pin!(retry);
        let changed = candidate.watch.changed();
        tokio::pin!(changed);
        loop {
            tokio::select! {
                biased;
                _ = self.shared.shutdown.cancelled() => return false,
                _ = &mut retry => return true,
                _ = &mut changed => return true,
                Some(reload) = next_reload(reloads.as_deref_mut()) => self.reload(reload).await,
                _ = watchdog_tick(self.watchdog.as_mut()) => {
                    if let Some(sd) = self.shared.systemd.as_ref() {
                        sd.ping();
                    }
                }
            }
        }
    }

    /// Applies a new configuration, or refuses it and keeps the one it has.
    async fn reload(&mut self, reload: Reload) {
        let shared = self.shared;
        let prepared = prepare_reload(&self.parts.cfg, reload, &shared.client).await;
        shared
            .lasting
            .reloaded(prepared.is_ok(), std::time::SystemTime::now());
        match prepared {
            Ok(new) => {
                tracing::info!("configuration reloaded (standby)");
                *self.parts = new;
                shared.tell(Event::Reloaded);
                if let Some(sd) = shared.systemd.as_ref() {
                    sd.ready(&format!("standby: {}", self.status));
                }
            }
            Err(reason) => {
                tracing::error!(reason = %reason, "reload refused; the running configuration stays");
                shared.tell(Event::ReloadRefused(reason));
            }
        }
    }
}
