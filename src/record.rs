//! `rearguard record`: live readings of a configuration's signals and its targets'
//! changes, written in the recording format ([`crate::recording`]) so that a real
//! incident can be kept and replayed as a regression test.
//!
//! Signals are sampled exactly as the daemon samples them: the same [`Source`], one task
//! per signal on its interval, each reading stamped with the scheduled time of its tick.
//! Targets' revisions are observed as the daemon's change loop observes them; the first
//! observation is written as a change too, so that a replay knows the starting revision,
//! and later ones only when the revision differs. A change is stamped with the time the
//! engine would be given it, the start of the observation that saw it, and carries the
//! start of the observation before (the change happened after that) as the earliest
//! time it can have happened, as the daemon's change loop gives it to the engine.
//!
//! Tasks send what they read through one channel to one writer (this module's
//! [`record`] future), which writes each row as it arrives, in the order the daemon's
//! engine would be given them, with when it arrived as its `seen` when that is after its
//! time: a slow sample is written late, after the rows of later times that came first,
//! and holds nothing back. The writer flushes every second, and everything on shutdown.
//!
//! `cgroup_oom` signals are watched as the daemon watches them (each reading stamped with
//! the time it was seen). Alertmanager signals are push sources and kube_pods signals are
//! watched from the cluster: neither is recorded. Recording only reads: no engine runs, no
//! plan is carried out, nothing is changed.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::units::format_duration;
use crate::config::{ChangeSpec, Config};
use crate::daemon::Clock;
use crate::engine::{Input, Reading, Ts};
use crate::recording;
use crate::source::{self, Source};

/// How often written rows are flushed, at the latest.
const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// What a recording wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordStats {
    /// Reading rows written.
    pub readings: u64,
    /// Change rows written, the first observation of each target included.
    pub changes: u64,
    /// The earliest time of a row, and when the last row arrived, when any was written.
    pub first: Option<Ts>,
    pub last: Option<Ts>,
}

/// Why a recording could not start or went on.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// A source or change type this build cannot run: the daemon's own refusal.
    #[error(transparent)]
    Start(#[from] crate::daemon::StartError),
    /// Nothing in the configuration can be recorded.
    #[error(
        "nothing to record: the configuration has no sampled signal (alertmanager signals are not recorded) and no target with a change"
    )]
    Nothing,
    /// The recording cannot be written (a full disk, a closed pipe).
    #[error("cannot write the recording: {0}")]
    Write(#[source] io::Error),
}

impl RecordError {
    /// True when the cause is the configuration (exit code 64).
    pub fn is_config(&self) -> bool {
        match self {
            RecordError::Start(e) => e.is_config(),
            RecordError::Nothing => true,
            RecordError::Write(_) => false,
        }
    }
}

/// What a task sends: a reading or a change, with its time.
type Msg = (Ts, Input);

/// Records until `shutdown` is cancelled or `duration` has passed, and returns what was
/// written. Signals that cannot be sampled are refused before anything is written, with
/// the daemon's messages.
pub async fn record(
    cfg: &Config,
    out: impl io::Write + Send,
    shutdown: CancellationToken,
    duration: Option<Duration>,
) -> Result<RecordStats, RecordError> {
    let client = crate::http::client();
    let sources: Vec<(usize, Arc<Source>)> = crate::daemon::sampled_sources(cfg, &client)?
        .into_iter()
        .enumerate()
        .filter_map(|(index, s)| s.map(|s| (index, s)))
        .collect();
    let watched: Vec<(usize, crate::config::CgroupOomSpec)> = cfg
        .signals
        .iter()
        .enumerate()
        .filter_map(|(index, s)| match &s.source {
            crate::config::SourceSpec::CgroupOom(spec) => Some((index, spec.clone())),
            _ => None,
        })
        .collect();
    // Alertmanager's pushes and kube_pods' watch are not recorded.
    let push = cfg.signals.len() - sources.len() - watched.len();
    let changes: Vec<(usize, ChangeSpec)> = cfg
        .targets
        .iter()
        .enumerate()
        .filter_map(|(index, t)| t.change.clone().map(|c| (index, c)))
        .collect();
    if sources.is_empty() && watched.is_empty() && changes.is_empty() {
        return Err(RecordError::Nothing);
    }
    let mut writer = recording::Writer::new(out).map_err(RecordError::Write)?;

    let clock = Clock::new();
    let token = shutdown.child_token();
    let tracker = TaskTracker::new();
    let (tx, mut rx) = mpsc::channel::<Msg>(1024);
    let sampled = sources.len() + watched.len();
    let observed = changes.len();
    for (signal, source) in sources {
        let s = &cfg.signals[signal];
        tracker.spawn(sample_loop(
            signal,
            source,
            (s.interval, s.timeout),
            clock,
            tx.clone(),
            token.clone(),
        ));
    }
    for (signal, spec) in watched {
        let watch = source::cgroup_oom::OomWatch::new(&spec, cfg.signals[signal].interval);
        tracker.spawn(watch_loop(signal, watch, clock, tx.clone(), token.clone()));
    }
    for (target, spec) in changes {
        let observer =
            source::change::Observer::new(&spec, &cfg.targets[target].config_files, None);
        tracker.spawn(change_loop(
            target,
            cfg.targets[target].name.clone(),
            (spec, observer),
            clock,
            tx.clone(),
            token.clone(),
        ));
    }
    drop(tx);
    tracing::info!(
        signals = sampled,
        targets_observed = observed,
        signals_not_recorded = push,
        duration = duration.map(format_duration),
        "recording"
    );

    let mut out = Out {
        cfg,
        writer: &mut writer,
        clock,
        stats: RecordStats::default(),
        // The header goes out at the first flush.
        dirty: true,
    };
    let stop = async {
        match duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(stop);
    let mut flush = tokio::time::interval(FLUSH_EVERY);
    flush.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut failed = None;
    loop {
        let result = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            _ = &mut stop => break,
            msg = rx.recv() => match msg {
                Some(msg) => out.take(msg),
                None => break,
            },
            _ = flush.tick() => out.flush(),
        };
        if let Err(e) = result {
            failed = Some(e);
            break;
        }
    }

    // Sources stop now; a sample in flight is abandoned, what was already sent is kept.
    token.cancel();
    if failed.is_none() {
        while let Some(msg) = rx.recv().await {
            if let Err(e) = out.take(msg) {
                failed = Some(e);
                break;
            }
        }
    }
    drop(rx);
    tracker.close();
    if tokio::time::timeout(Duration::from_secs(5), tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("some recording tasks did not stop within 5s");
    }
    if let Some(e) = failed {
        return Err(RecordError::Write(e));
    }
    out.writer.flush().map_err(RecordError::Write)?;
    tracing::info!(
        readings = out.stats.readings,
        changes = out.stats.changes,
        "recording stopped"
    );
    Ok(out.stats)
}

/// The writer's side.
struct Out<'a, W: io::Write> {
    cfg: &'a Config,
    writer: &'a mut recording::Writer<W>,
    clock: Clock,
    stats: RecordStats,
    dirty: bool,
}

impl<W: io::Write> Out<'_, W> {
    /// Writes a row as it arrives: the daemon's engine would be given it now.
    fn take(&mut self, (time, input): Msg) -> io::Result<()> {
        // Never before its time nor before the row before, whatever the clock's rounding.
        let seen = self.clock.now().max(time);
        let seen = self.stats.last.map_or(seen, |last| seen.max(last));
        let row = recording::Row { time, seen, input };
        self.writer.row(self.cfg, &row)?;
        match row.input {
            Input::Reading(_) => self.stats.readings += 1,
            _ => self.stats.changes += 1,
        }
        self.stats.first = Some(self.stats.first.map_or(time, |first| first.min(time)));
        self.stats.last = Some(seen);
        self.dirty = true;
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        if std::mem::take(&mut self.dirty) {
            self.writer.flush()?;
        }
        Ok(())
    }
}

/// Samples one signal as the daemon's sampler does, stamping each reading with the
/// scheduled time of its tick.
async fn sample_loop(
    signal: usize,
    source: Arc<Source>,
    (interval, timeout): (Duration, Duration),
    clock: Clock,
    tx: mpsc::Sender<Msg>,
    token: CancellationToken,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        let at = tokio::select! {
            _ = token.cancelled() => return,
            t = ticker.tick() => clock.at(t),
        };
        let state = tokio::select! {
            _ = token.cancelled() => return,
            r = source.sample_within(timeout) => r,
        };
        let reading = Input::Reading(Reading { signal, state });
        if tx.send((at, reading)).await.is_err() {
            return;
        }
    }
}

/// Watches one `cgroup_oom` signal as the daemon's watcher does, stamping each reading
/// with the time it was seen.
async fn watch_loop(
    signal: usize,
    mut watch: source::cgroup_oom::OomWatch,
    clock: Clock,
    tx: mpsc::Sender<Msg>,
    token: CancellationToken,
) {
    loop {
        let states = tokio::select! {
            _ = token.cancelled() => return,
            s = watch.next() => s,
        };
        let at = clock.now();
        for state in states {
            let reading = Input::Reading(Reading { signal, state });
            if tx.send((at, reading)).await.is_err() {
                return;
            }
        }
    }
}

/// Observes one target's revision as the daemon's change loop does; sends a change when
/// the revision is first seen or differs from the last one sent.
async fn change_loop(
    target: usize,
    name: String,
    (spec, mut observer): (ChangeSpec, source::change::Observer),
    clock: Clock,
    tx: mpsc::Sender<Msg>,
    token: CancellationToken,
) {
    let interval = match &spec {
        ChangeSpec::ReleaseSymlink { interval, .. } | ChangeSpec::Exec { interval, .. } => {
            *interval
        }
        // Sampled like the others here: a recording keeps one row per observation.
        ChangeSpec::KubeDeployment(_) => Duration::from_secs(10),
    };
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last_error: Option<String> = None;
    let mut sent: Option<String> = None;
    // When the previous observation began: a change seen now happened after it.
    let mut previous: Option<Ts> = None;
    loop {
        tokio::select! {
            _ = token.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let started = clock.now();
        let observed = tokio::select! {
            _ = token.cancelled() => return,
            r = observer.observe() => r,
        };
        let revision = match observed {
            Ok(revision) => revision,
            Err(e) => {
                if last_error.as_deref() != Some(&e) {
                    tracing::warn!(target = %name, error = %e, "cannot observe the target's revision");
                    last_error = Some(e);
                }
                continue;
            }
        };
        if last_error.take().is_some() {
            tracing::info!(target = %name, "change observer works again");
        }
        let since = previous.unwrap_or(started);
        previous = Some(started);
        if sent.as_deref() == Some(&revision) {
            continue;
        }
        sent = Some(revision.clone());
        // Seen at the start of this observation, happened after the observation before:
        // as the daemon's change loop hands it to the engine.
        let change = Input::Change {
            target,
            revision,
            at: since,
        };
        if tx.send((started, change)).await.is_err() {
            return;
        }
    }
}
