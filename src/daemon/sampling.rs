//! The tasks that feed the engine's loop what sources see: a sampler per sampled signal,
//! a watch per `cgroup_oom` and `kube_pods` signal, and a change observer per target.
//! Each sends `(Input, Ts)` with the time its input happened and returns when its token
//! is cancelled (the watches return what a reload hands on).
//!
//! They must not judge what they read (the engine does) nor act: a failed sample is a
//! reading in the source error state, a failed observation is logged once per error.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Clock;
use super::reload::Handed;
use crate::config::{ChangeSpec, Config, KubePodsSpec, SourceSpec};
use crate::engine::{Input, Reading, ReadingState, Ts};
use crate::source::cgroup_oom::OomWatch;
use crate::source::kube_pods::PodMemory;
use crate::source::{self, Source};

/// The watches of a generation, joined at a reload for what they hand on.
#[derive(Default)]
pub(super) struct Watches {
    oom: Vec<JoinHandle<Option<(usize, OomWatch)>>>,
    pods: Vec<JoinHandle<(usize, PodMemory)>>,
}

impl Watches {
    /// The OOM watches and the pod watches' memories, by signal index, once they stopped.
    /// A pod watch that did not stop in time is not waited for: its signal starts afresh.
    pub(super) async fn hand_over(self) -> (Vec<(usize, OomWatch)>, Vec<(usize, PodMemory)>) {
        let mut watches = Vec::new();
        for w in self.oom {
            if let Ok(Some(watch)) = w.await {
                watches.push(watch);
            }
        }
        let mut pods = Vec::new();
        for w in self.pods {
            if w.is_finished()
                && let Ok(memory) = w.await
            {
                pods.push(memory);
            }
        }
        (watches, pods)
    }
}

/// What a source's task needs to hand the engine its inputs: the engine clock, the
/// engine's channel, and the token that stops it.
#[derive(Clone)]
pub(super) struct Feed {
    pub(super) clock: Clock,
    pub(super) tx: mpsc::Sender<(Input, Ts)>,
    pub(super) token: CancellationToken,
}

impl Feed {
    /// Sends `state` as a reading of `signal` at `at`; false once the engine is gone.
    async fn send(&self, signal: usize, state: ReadingState, at: Ts) -> bool {
        let reading = Reading { signal, state };
        self.tx.send((Input::Reading(reading), at)).await.is_ok()
    }
}

/// Spawns every sampler, watch and change observer of `cfg` on `tracker`, feeding
/// `feed`; the watches of unchanged signals go on with what `handed` holds for them, and
/// each change observer from the target's revision the engine `remembered`.
pub(super) fn start(
    cfg: &Config,
    sources: &[Option<Arc<Source>>],
    mut handed: Handed,
    remembered: &[Option<String>],
    feed: &Feed,
    tracker: &TaskTracker,
) -> Watches {
    for (i, source) in sources.iter().enumerate() {
        let Some(source) = source else { continue };
        let signal = &cfg.signals[i];
        let sampler = Sampler {
            signal: i,
            source: Arc::clone(source),
            interval: signal.interval,
            timeout: signal.timeout,
        };
        tracker.spawn(sampler.run(feed.clone()));
    }
    let mut watches = Watches {
        oom: Vec::new(),
        pods: Vec::new(),
    };
    for (i, signal) in cfg.signals.iter().enumerate() {
        match &signal.source {
            SourceSpec::CgroupOom(spec) => {
                let watch = handed
                    .watches
                    .remove(&signal.name)
                    .unwrap_or_else(|| OomWatch::new(spec, signal.interval));
                watches
                    .oom
                    .push(tracker.spawn(watch_loop(i, watch, feed.clone())));
            }
            SourceSpec::KubePods(spec) => {
                let memory = handed.pods.remove(&signal.name).unwrap_or_default();
                let watching =
                    kube_pods_loop(i, spec.clone(), signal.interval, memory, feed.clone());
                watches.pods.push(tracker.spawn(watching));
            }
            _ => {}
        }
    }
    for (t, target) in cfg.targets.iter().enumerate() {
        if let Some(spec) = &target.change {
            let remembered = remembered.get(t).cloned().flatten();
            let observer = Observer::new(spec, &target.config_files, remembered.as_deref());
            tracker.spawn(change_loop(t, target.name.clone(), observer, feed.clone()));
        }
    }
    watches
}

/// One sampled signal and how to sample it.
struct Sampler {
    signal: usize,
    source: Arc<Source>,
    interval: Duration,
    timeout: Duration,
}

impl Sampler {
    /// Samples the signal on its interval until cancelled.
    async fn run(self, feed: Feed) {
        let mut ticker = tokio::time::interval(self.interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            // The scheduled time of the tick, not when it ran: samples stay exactly one
            // interval apart in engine time, so `for` and counts are not shifted by jitter.
            let at = tokio::select! {
                _ = feed.token.cancelled() => return,
                t = ticker.tick() => feed.clock.at(t),
            };
            let state = tokio::select! {
                _ = feed.token.cancelled() => return,
                r = self.source.sample_within(self.timeout) => r,
            };
            let reading = Reading {
                signal: self.signal,
                state,
            };
            if feed.tx.send((Input::Reading(reading), at)).await.is_err() {
                return;
            }
        }
    }
}

/// Hands the engine what a watched source (`cgroup_oom`) sees, each reading at the engine
/// time it was seen.
///
/// Returns the watch when stopped, so that a reload can hand it to the next
/// configuration: its counters go on, and no kill between the two is lost.
async fn watch_loop(signal: usize, mut watch: OomWatch, feed: Feed) -> Option<(usize, OomWatch)> {
    loop {
        // `next` is cancel-safe: a kill it had not returned yet is read again.
        let states = tokio::select! {
            _ = feed.token.cancelled() => return Some((signal, watch)),
            s = watch.next() => s,
        };
        let at = feed.clock.now();
        for state in states {
            if !feed.send(signal, state, at).await {
                return None;
            }
        }
    }
}

/// Hands the readings of a watched `kube_pods` signal to the engine, each with the time
/// it was seen. Returns, with the signal's index, what the watch knew of the pods when it
/// stopped, for the watch of the same signal after a reload.
async fn kube_pods_loop(
    signal: usize,
    spec: KubePodsSpec,
    interval: Duration,
    memory: PodMemory,
    feed: Feed,
) -> (usize, PodMemory) {
    let (readings_tx, mut readings) = mpsc::channel(64);
    let token = feed.token.clone();
    let watching = source::kube_pods::watch(spec, interval, memory, readings_tx, token);
    tokio::pin!(watching);
    loop {
        let state = tokio::select! {
            memory = &mut watching => {
                // Events the watch saw before it stopped still reach the engine: the
                // memory handed on has them as seen.
                while let Ok(state) = readings.try_recv() {
                    if !feed.send(signal, state, feed.clock.now()).await {
                        break;
                    }
                }
                return (signal, memory);
            }
            Some(state) = readings.recv() => state,
        };
        if !feed.send(signal, state, feed.clock.now()).await {
            return (signal, watching.await);
        }
    }
}

/// How a target's revision is observed: on an interval, or when its Deployment's watch
/// wakes it; with its configuration generation either way.
struct Observer {
    how: source::change::Observer,
    ticker: tokio::time::Interval,
}

impl Observer {
    /// `remembered`: the target's revision as the engine knows it.
    fn new(spec: &ChangeSpec, config_files: &[String], remembered: Option<&str>) -> Observer {
        let interval = match spec {
            ChangeSpec::ReleaseSymlink { interval, .. } | ChangeSpec::Exec { interval, .. } => {
                *interval
            }
            // Only after a failed observation: the Deployment is watched (below).
            ChangeSpec::KubeDeployment(_) => Duration::from_secs(10),
        };
        let how = source::change::Observer::new(spec, config_files, remembered);
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Observer { how, ticker }
    }

    /// Waits for the next observation: the watch's next event while it works, the
    /// interval otherwise. False when cancelled.
    async fn wait(&mut self, failing: bool, token: &CancellationToken) -> bool {
        match &mut self.how {
            source::change::Observer::Kube(w) if !failing => {
                // Referenced ConfigMaps and Secrets are not watched: read them again
                // within CONFIG_RECHECK of the last observation.
                let recheck = w.reads_config();
                tokio::select! {
                    _ = token.cancelled() => false,
                    _ = w.changed() => true,
                    _ = tokio::time::sleep(source::kube_deployment::CONFIG_RECHECK), if recheck => true,
                }
            }
            _ => tokio::select! {
                _ = token.cancelled() => false,
                _ = self.ticker.tick() => true,
            },
        }
    }

    async fn observe(&mut self) -> Result<String, String> {
        self.how.observe().await
    }
}

/// Observes one target's revision and hands every observation to the engine as a
/// change input, until cancelled.
async fn change_loop(target: usize, name: String, mut observer: Observer, feed: Feed) {
    let mut last_error: Option<String> = None;
    // When the previous observation began: a change seen now happened after it.
    let mut previous: Option<Ts> = None;
    loop {
        if !observer.wait(last_error.is_some(), &feed.token).await {
            return;
        }
        let started = feed.clock.now();
        let observed = tokio::select! {
            _ = feed.token.cancelled() => return,
            o = observer.observe() => o,
        };
        match observed {
            Ok(revision) => {
                if last_error.take().is_some() {
                    tracing::info!(target = %name, "change observer works again");
                }
                let at = previous.unwrap_or(started);
                previous = Some(started);
                let change = Input::Change {
                    target,
                    revision,
                    at,
                };
                if feed.tx.send((change, started)).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                // Said once per distinct error, not once per interval.
                if last_error.as_deref() != Some(&e) {
                    tracing::warn!(target = %name, error = %e, "cannot observe the target's revision");
                    last_error = Some(e);
                }
            }
        }
    }
}
