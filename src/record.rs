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
//! [`record`] future), which writes rows in time order: a row is held back only while
//! another task may still send an earlier one (a sample in flight, or a change observer
//! in the middle of an observation). The writer flushes every second, and everything on shutdown.
//!
//! `cgroup_oom` signals are watched as the daemon watches them (each reading stamped with
//! the time it was seen). Alertmanager signals are push sources and kube_pods signals are
//! watched from the cluster: neither is recorded. Recording only reads: no engine runs, no
//! plan is carried out, nothing is changed.

use std::collections::BTreeMap;
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
use crate::engine::{Reading, Ts};
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
    /// The time of the first and of the last row, when any was written.
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

/// A row on its way to the writer.
enum Row {
    Reading(Reading),
    Change {
        target: usize,
        revision: String,
        /// The earliest time it can have happened.
        since: Ts,
    },
}

/// What a task sends: perhaps a row, and the earliest time any later row of that task
/// can have (its floor), which lets the writer write everything before the lowest floor.
struct Msg {
    task: usize,
    floor: Ts,
    row: Option<(Ts, Row)>,
}

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
    let begin = clock.at(tokio::time::Instant::now());
    let token = shutdown.child_token();
    let tracker = TaskTracker::new();
    let (tx, mut rx) = mpsc::channel::<Msg>(1024);
    let first_watched = sources.len();
    let sampled = sources.len() + watched.len();
    let tasks = sampled + changes.len();
    for (task, (signal, source)) in sources.into_iter().enumerate() {
        let s = &cfg.signals[signal];
        tracker.spawn(sample_loop(
            task,
            signal,
            source,
            s.interval,
            s.timeout,
            clock,
            tx.clone(),
            token.clone(),
        ));
    }
    for (i, (signal, spec)) in watched.into_iter().enumerate() {
        let watch = source::cgroup_oom::OomWatch::new(&spec, cfg.signals[signal].interval);
        tracker.spawn(watch_loop(
            first_watched + i,
            signal,
            watch,
            clock,
            tx.clone(),
            token.clone(),
        ));
    }
    for (i, (target, spec)) in changes.into_iter().enumerate() {
        let observer =
            source::change::Observer::new(&spec, &cfg.targets[target].config_files, None);
        tracker.spawn(change_loop(
            sampled + i,
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
        targets_observed = tasks - sampled,
        signals_not_recorded = push,
        duration = duration.map(format_duration),
        "recording"
    );

    let mut out = Out {
        cfg,
        writer: &mut writer,
        pending: BTreeMap::new(),
        floors: vec![begin; tasks],
        seq: 0,
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
    out.floors.iter_mut().for_each(|f| *f = Ts(u64::MAX));
    out.release().map_err(RecordError::Write)?;
    out.writer.flush().map_err(RecordError::Write)?;
    tracing::info!(
        readings = out.stats.readings,
        changes = out.stats.changes,
        "recording stopped"
    );
    Ok(out.stats)
}

/// The writer's side: rows waiting for their turn, and each task's floor.
struct Out<'a, W: io::Write> {
    cfg: &'a Config,
    writer: &'a mut recording::Writer<W>,
    /// By time, then by arrival, so that rows of one time keep their order.
    pending: BTreeMap<(Ts, u64), Row>,
    floors: Vec<Ts>,
    seq: u64,
    stats: RecordStats,
    dirty: bool,
}

impl<W: io::Write> Out<'_, W> {
    fn take(&mut self, msg: Msg) -> io::Result<()> {
        self.floors[msg.task] = msg.floor;
        if let Some((at, row)) = msg.row {
            self.seq += 1;
            self.pending.insert((at, self.seq), row);
        }
        self.release()
    }

    /// Writes every row no task can still precede.
    fn release(&mut self) -> io::Result<()> {
        let floor = self.floors.iter().copied().min().unwrap_or(Ts(u64::MAX));
        while let Some(entry) = self.pending.first_entry() {
            let (at, _) = *entry.key();
            if at > floor {
                break;
            }
            let row = entry.remove();
            // Floors keep rows in order; should a task send one earlier than what was
            // written, it is written as late as it must be, still in order.
            let at = self.stats.last.map_or(at, |last| at.max(last));
            match &row {
                Row::Reading(r) => {
                    self.writer.reading(self.cfg, at, r)?;
                    self.stats.readings += 1;
                }
                Row::Change {
                    target,
                    revision,
                    since,
                } => {
                    let since = (*since).min(at);
                    self.writer
                        .change_since(self.cfg, at, since, *target, revision)?;
                    self.stats.changes += 1;
                }
            }
            self.stats.first.get_or_insert(at);
            self.stats.last = Some(at);
            self.dirty = true;
        }
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
#[allow(clippy::too_many_arguments)]
async fn sample_loop(
    task: usize,
    signal: usize,
    source: Arc<Source>,
    interval: Duration,
    timeout: Duration,
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
        // The next tick is scheduled at least one interval after this one.
        let msg = Msg {
            task,
            floor: at.plus(interval),
            row: Some((at, Row::Reading(Reading { signal, state }))),
        };
        if tx.send(msg).await.is_err() {
            return;
        }
    }
}

/// Watches one `cgroup_oom` signal as the daemon's watcher does, stamping each reading
/// with the time it was seen.
async fn watch_loop(
    task: usize,
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
            // A later reading is seen later: this one's time is the task's floor.
            let msg = Msg {
                task,
                floor: at,
                row: Some((at, Row::Reading(Reading { signal, state }))),
            };
            if tx.send(msg).await.is_err() {
                return;
            }
        }
    }
}

/// Observes one target's revision as the daemon's change loop does; sends a change when
/// the revision is first seen or differs from the last one sent.
async fn change_loop(
    task: usize,
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
        let msg = match observed {
            Ok(revision) => {
                if last_error.take().is_some() {
                    tracing::info!(target = %name, "change observer works again");
                }
                let since = previous.unwrap_or(started);
                previous = Some(started);
                // Seen now, happened after the observation before: as the daemon's
                // change loop hands it to the engine.
                let row = (sent.as_deref() != Some(&revision)).then(|| {
                    sent = Some(revision.clone());
                    let change = Row::Change {
                        target,
                        revision,
                        since,
                    };
                    (started, change)
                });
                // A change seen next time is stamped with that observation's start.
                Msg {
                    task,
                    floor: started,
                    row,
                }
            }
            Err(e) => {
                if last_error.as_deref() != Some(&e) {
                    tracing::warn!(target = %name, error = %e, "cannot observe the target's revision");
                    last_error = Some(e);
                }
                // A change seen next time is stamped with that observation's start.
                Msg {
                    task,
                    floor: clock.now(),
                    row: None,
                }
            }
        };
        if tx.send(msg).await.is_err() {
            return;
        }
    }
}
