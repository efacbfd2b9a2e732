//! Reloads: checking and building a new configuration beside the running one
//! (`prepare_reload`), and the handover from one generation to the next (`Handover`):
//! the engine, the inputs queued for it, the webhook's alerts, the OOM watches and what
//! the pod watches knew.
//!
//! It must not change a plan under a running rollback (the engine's loop applies a
//! reload only when no step is in flight and no incident is acting), nor close the
//! listening port or lose a reading queued for a signal that did not change.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::drain::longest_send;
use super::generation::{Ended, Generation, Tasks};
use super::parts::Parts;
use crate::config::Config;
use crate::engine::{Engine, Input, Ts};
use crate::source::alertmanager::Receiver;
use crate::source::cgroup_oom::OomWatch;
use crate::source::kube_pods::PodMemory;

/// A request to apply a new configuration (the command line sends one on SIGHUP): the
/// configuration, already read and validated, or why it could not be.
pub type Reload = Result<Config, String>;

/// How long building a reloaded configuration may hold up the engine's loop.
const RELOAD_BUILD_LIMIT: Duration = Duration::from_secs(10);

/// Checks a new configuration against the running one and builds what it needs. What
/// lives as long as the process (the listener, the state store) cannot change.
pub(super) async fn prepare_reload(
    running: &Config,
    reload: Reload,
    client: &reqwest::Client,
) -> Result<Parts, String> {
    let cfg = reload?;
    needs_no_restart(running, &cfg)?;
    // Building may read credentials (secret files, a kubeconfig), blocking: it runs on a
    // task of its own, bounded, so that the engine's loop and with it systemd's watchdog
    // never wait long.
    let client = client.clone();
    let building = tokio::spawn(async move { Parts::build(cfg, &client).await });
    match tokio::time::timeout(RELOAD_BUILD_LIMIT, building).await {
        Ok(Ok(built)) => built.map_err(|e| e.to_string()),
        Ok(Err(e)) => Err(format!("building the new configuration failed: {e}")),
        Err(_) => Err(format!(
            "building the new configuration took longer than {}",
            crate::config::units::format_duration(RELOAD_BUILD_LIMIT)
        )),
    }
}

/// Refuses the changes only a restart can apply.
fn needs_no_restart(running: &Config, cfg: &Config) -> Result<(), String> {
    if cfg.daemon.listen != running.daemon.listen {
        return Err(format!(
            "daemon.listen: changing {} to {} needs a restart",
            running.daemon.listen, cfg.daemon.listen
        ));
    }
    if cfg.leader_election != running.leader_election {
        return Err("leader_election: changing leader election needs a restart".to_owned());
    }
    if cfg.daemon.state_dir != running.daemon.state_dir {
        return Err(format!(
            "daemon.state_dir: changing {} to {} needs a restart",
            running.daemon.state_dir.display(),
            cfg.daemon.state_dir.display()
        ));
    }
    Ok(())
}

/// What a configuration's run hands the next one on a reload: the engine as it was, and
/// the inputs that were queued for it, already translated for the new configuration.
pub(super) struct Handover {
    pub(super) engine: Engine,
    pub(super) carried: Vec<(Input, Ts)>,
    pub(super) last: Ts,
    /// What Alertmanager's webhook had told the configuration before.
    receiver: Option<Arc<Receiver>>,
    /// The OOM watches of the configuration before, by signal index there.
    watches: Vec<(usize, OomWatch)>,
    /// What the pod watches of the configuration before knew, by signal index there.
    pods: Vec<(usize, PodMemory)>,
}

/// What the watched sources of the configuration before hand to those of the same
/// signals in the new one, by signal name.
#[derive(Default)]
pub(super) struct Handed {
    pub(super) watches: HashMap<String, OomWatch>,
    pub(super) pods: HashMap<String, PodMemory>,
}

impl Handover {
    /// Takes what the watched sources of unchanged signals go on with (the OOM watches
    /// go on counting where they were), and lets `receiver` take over the alerts known
    /// before: they stay known, and the next reload takes them from there.
    pub(super) fn take_sources(&mut self, cfg: &Config, receiver: Option<&Receiver>) -> Handed {
        let old = self.engine.config();
        let kept = |a: usize| {
            let name = &old.signals[a].name;
            cfg.signal_index(name)
                .filter(|&b| crate::engine::reload::same_signal(old, a, cfg, b))
                .map(|_| name.clone())
        };
        let mut handed = Handed::default();
        for (a, watch) in std::mem::take(&mut self.watches) {
            if let Some(name) = kept(a) {
                handed.watches.insert(name, watch);
            }
        }
        for (a, memory) in std::mem::take(&mut self.pods) {
            if let Some(name) = kept(a) {
                handed.pods.insert(name, memory);
            }
        }
        if let (Some(new), Some(old_receiver)) = (receiver, &self.receiver) {
            new.take_over(old_receiver, old, cfg);
        }
        handed
    }
}

impl Generation<'_> {
    /// Ends this generation for `parts`, once no step is in flight. The sources stop;
    /// what they had queued is kept for the new configuration; the outbox's workers
    /// finish the message they are sending (what is queued stays in the store for the
    /// new workers); the listener's clone stops accepting while the new one takes over.
    pub(super) async fn hand_over(mut self, parts: Box<Parts>) -> Ended {
        self.tasks.sources_stop.cancel();
        let queued = self.queued_until_sources_stop().await;
        let (watches, pods) = self.watches.hand_over().await;
        let carried = queued
            .into_iter()
            .filter_map(|(input, at)| {
                crate::engine::reload::carry_over(&self.cfg, &parts.cfg, input).map(|i| (i, at))
            })
            .collect();
        self.tasks
            .finish_outbox_for_reload(&self.cfg, self.shared.systemd.as_ref())
            .await;
        self.tasks.api_stop.cancel();
        self.tasks.steps.cancel();
        self.tasks.tracker.close();
        let handover = Handover {
            engine: self.engine,
            carried,
            last: self.last,
            receiver: self.receiver,
            watches,
            pods,
        };
        Ended::Reload(parts, Box::new(handover))
    }

    /// What the sources queued for the engine until they stopped (at most 10 s).
    async fn queued_until_sources_stop(&mut self) -> Vec<(Input, Ts)> {
        let mut queued = Vec::new();
        let sources_stop = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            tokio::select! {
                _ = self.tasks.sources.wait() => break,
                Some(item) = self.rx.recv() => queued.push(item),
                _ = tokio::time::sleep_until(sources_stop) => {
                    tracing::warn!("some sources did not stop within 10s for the reload; going on without them");
                    break;
                }
            }
        }
        while let Ok(item) = self.rx.try_recv() {
            queued.push(item);
        }
        queued
    }
}

impl Tasks {
    /// Lets the outbox's workers finish the message in hand for a reload. A notifier may
    /// be in the middle of a slow send: wait for it (so that the new workers never send
    /// the same message again), pinging systemd meanwhile.
    pub(super) async fn finish_outbox_for_reload(
        &self,
        cfg: &Config,
        systemd: Option<&crate::systemd::Systemd>,
    ) {
        let _ = self.flush.send(Some(tokio::time::Instant::now()));
        self.outbox.close();
        let outbox_stop = tokio::time::Instant::now() + longest_send(cfg);
        let mut alive = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = self.outbox.wait() => break,
                _ = alive.tick() => {
                    if let Some(sd) = systemd {
                        sd.ping();
                    }
                }
                _ = tokio::time::sleep_until(outbox_stop) => {
                    tracing::warn!("the outbox did not stop in time for the reload");
                    break;
                }
            }
        }
    }
}
