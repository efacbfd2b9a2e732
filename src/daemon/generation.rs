//! One configuration's run, a generation: `start` spawns what it needs on its trackers
//! (the outbox's workers, the HTTP listener, samplers, watches and change observers)
//! and brings the engine (new, restored from the store, or handed over by a reload),
//! `run` turns the engine's loop until a stop or a reload, then `drain`s or hands over
//! (`hand_over`, in `reload.rs`).
//!
//! Which tracker a task goes on decides when it stops: sources first, then the steps
//! (given `daemon.drain_timeout`), then the outbox (flushed), the listener last. A
//! generation must not outlive its `stop` token, and must not keep anything running
//! once it returned, except what it hands over.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;

use super::effects::{Counted, Publish, count_pending};
use super::engine_loop::status_line;
use super::held::Unsaved;
use super::listener::{self, Hook};
use super::parts::Parts;
use super::reload::{Handed, Handover, Reload};
use super::sampling::{self, Feed, Watches};
use super::{Event, Shared, watchdog_ticker};
use crate::action::Action;
use crate::api::{Metrics, control};
use crate::config::Config;
use crate::engine::{Effect, Engine, Input, Memory, Ts};
use crate::kube::events::Recorder;
use crate::leader::Fence;
use crate::notify::Sink;
use crate::notify::outbox::{Attempt, Flush, Outbox};
use crate::source::alertmanager::Receiver;

/// How one configuration's run ended.
pub(super) enum Ended {
    /// Stopped for good (the shutdown token), or with leader election the Lease lost.
    Stopped,
    /// A new configuration is to be applied.
    Reload(Box<Parts>, Box<Handover>),
}

/// A generation's trackers and the tokens that stop them, in the order a stop ends them.
pub(super) struct Tasks {
    /// The generation's stop: the shutdown, or with leader election a lost Lease.
    pub(super) stop: CancellationToken,
    /// Stops the sources (a child of `stop`).
    pub(super) sources_stop: CancellationToken,
    /// Samplers, change observers and the webhook's resender: stopped first, on a stop
    /// and on a reload.
    pub(super) sources: TaskTracker,
    /// The listener, plan steps, snapshots, the Events poster, delivery accounting.
    pub(super) tracker: TaskTracker,
    /// The outbox's workers have their own tracker: the drain waits for them (bounded)
    /// before the listener goes.
    pub(super) outbox: TaskTracker,
    /// Tells the outbox's workers to finish, by when.
    pub(super) flush: watch::Sender<Option<tokio::time::Instant>>,
    /// Stops the listener and the Events poster, at the very end.
    pub(super) api_stop: CancellationToken,
    /// The parent of every step's and snapshot's token.
    pub(super) steps: CancellationToken,
}

/// One configuration running.
pub(super) struct Generation<'a> {
    pub(super) shared: &'a Shared,
    pub(super) cfg: Config,
    pub(super) engine: Engine,
    /// The latest engine time given to the engine.
    pub(super) last: Ts,
    pub(super) tasks: Tasks,
    /// The engine's inputs: readings, changes, step results.
    pub(super) tx: mpsc::Sender<(Input, Ts)>,
    pub(super) rx: mpsc::Receiver<(Input, Ts)>,
    /// Operators' commands from the control API.
    pub(super) commands: mpsc::Receiver<control::Request>,
    /// The status the control API reads, published after steps.
    pub(super) published: watch::Sender<Arc<control::Status>>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) outbox: Arc<Outbox>,
    pub(super) kube_events: Recorder,
    pub(super) actions: Vec<Vec<Arc<Action>>>,
    /// With leader election, every step passes the fence before it starts.
    pub(super) fence: Option<Arc<Fence>>,
    /// The steps running, by incident; dropping a guard cancels its step.
    pub(super) in_flight: HashMap<String, DropGuard>,
    /// Steps the fence refused: never started, their result never recorded.
    pub(super) unstarted_tx: mpsc::UnboundedSender<String>,
    pub(super) unstarted_rx: mpsc::UnboundedReceiver<String>,
    /// Set once the drain began: no new step starts.
    pub(super) draining: bool,
    /// What the metrics already counted of each open incident.
    pub(super) counted: Counted,
    pub(super) rules_of_signal: Vec<Vec<usize>>,
    /// The webhook's receiver, handed to the next configuration on a reload.
    pub(super) receiver: Option<Arc<Receiver>>,
    pub(super) watches: Watches,
    pub(super) ticker: tokio::time::Interval,
    /// Pinged from the engine's loop, so that systemd restarts an engine that stopped
    /// turning.
    pub(super) watchdog: Option<tokio::time::Interval>,
    /// systemd's `STATUS=` line as last said.
    pub(super) status: String,
    /// A new configuration that passed its checks and waits for the step in flight.
    pub(super) pending: Option<Box<Parts>>,
    /// What waits for the state store: the engine's state and its held effects.
    pub(super) unsaved: Unsaved,
    /// Readings and changes kept for the charts, written to the store in batches.
    pub(super) charts: crate::report::history::Recorder,
    pub(super) told_waiting: bool,
}

impl Tasks {
    fn new(stop: &CancellationToken) -> (Tasks, Flush) {
        let (flush, flush_rx) = watch::channel(None);
        let tasks = Tasks {
            stop: stop.clone(),
            sources_stop: stop.child_token(),
            sources: TaskTracker::new(),
            tracker: TaskTracker::new(),
            outbox: TaskTracker::new(),
            flush,
            api_stop: CancellationToken::new(),
            steps: CancellationToken::new(),
        };
        (tasks, flush_rx)
    }
}

impl<'a> Generation<'a> {
    /// Starts one configuration. `resumed` is the engine of the configuration before,
    /// when this one comes from a reload. With leader election, every step passes
    /// `fence` before it starts; `stop` is the shutdown, or a lost Lease.
    pub(super) fn start(
        parts: Parts,
        mut resumed: Option<Handover>,
        shared: &'a Shared,
        stop: &CancellationToken,
        fence: Option<Arc<Fence>>,
    ) -> Generation<'a> {
        let (cfg, receiver) = (parts.cfg, parts.receiver);
        let metrics = Arc::new(Metrics::with_lasting(&cfg, &shared.lasting));
        let (tasks, flush) = Tasks::new(stop);
        let outbox = start_outbox(shared, &cfg, parts.sinks, &metrics, &tasks, flush);
        // Incidents' transitions as Events on their Deployments, posted off the engine's
        // loop; the poster stops with the listener, at the very end.
        let kube_events = Recorder::start(&cfg, &tasks.tracker, tasks.api_stop.clone());
        let (tx, rx) = mpsc::channel::<(Input, Ts)>(1024);
        let (control, commands, published) = control_api(shared, &cfg);
        let handed = resumed
            .as_mut()
            .map(|h| h.take_sources(&cfg, receiver.as_deref()))
            .unwrap_or_default();
        let app = listener::app(shared, &cfg, &metrics, control);
        start_listener(shared, &cfg, app, receiver.clone(), &tx, &tasks);
        let reloaded = resumed.is_some();
        let resumed = resume(&cfg, resumed, shared);
        let (unstarted_tx, unstarted_rx) = mpsc::unbounded_channel();
        let mut generation = Generation {
            status: status_line(&cfg, &resumed.engine, None),
            ticker: ticker(&cfg),
            watchdog: None,
            rules_of_signal: rules_of_signal(&cfg),
            shared,
            cfg,
            engine: resumed.engine,
            last: resumed.last,
            tasks,
            tx,
            rx,
            commands,
            published,
            metrics,
            outbox,
            kube_events,
            actions: parts.actions,
            fence,
            in_flight: HashMap::new(),
            unstarted_tx,
            unstarted_rx,
            draining: false,
            counted: Counted::default(),
            receiver,
            watches: Watches::default(),
            pending: None,
            unsaved: Unsaved::default(),
            charts: Default::default(),
            told_waiting: false,
        };
        generation.announce(reloaded);
        generation.catch_up(resumed.restored, resumed.carried);
        // After the catch-up: change observers go on from the revisions the engine
        // remembers (a configuration generation is not started again by a restart).
        let remembered = remembered_revisions(&generation.engine);
        generation.watches = start_sources(
            shared,
            &generation.cfg,
            &parts.sources,
            handed,
            &remembered,
            &generation.tx,
            &generation.tasks,
        );
        generation
    }

    /// Turns the engine's loop until the generation stops (then drains) or a new
    /// configuration can be applied (then hands over to it).
    pub(super) async fn run(mut self, reloads: Option<&mut mpsc::Receiver<Reload>>) -> Ended {
        let pending = self.engine_loop(reloads).await;
        match pending {
            Some(parts) if !self.tasks.stop.is_cancelled() => self.hand_over(parts).await,
            _ => self.drain().await,
        }
    }

    /// Says the generation runs: in the log, to systemd (ready, with its watchdog), on
    /// `/readyz` and to the observer.
    fn announce(&mut self, reloaded: bool) {
        let cfg = &self.cfg;
        let (targets, signals, rules) = (cfg.targets.len(), cfg.signals.len(), cfg.rules.len());
        let mode = cfg.daemon.mode.name();
        if reloaded {
            self.shared
                .lasting
                .reloaded(true, std::time::SystemTime::now());
            tracing::info!(targets, signals, rules, mode, "configuration reloaded");
        } else {
            tracing::info!(targets, signals, rules, mode, "rearguard started");
        }
        let systemd = self.shared.systemd.as_ref();
        if let Some(sd) = systemd {
            sd.ready(&self.status);
        }
        self.watchdog = watchdog_ticker(systemd);
        self.shared.health.set_ready();
        self.shared.tell(if reloaded {
            Event::Reloaded
        } else {
            Event::Started
        });
    }

    /// Brings the engine up to date before its loop turns: what the engine of the
    /// configuration before knew, or the previous run's memory, then the inputs queued
    /// for the configuration before, in their order.
    fn catch_up(&mut self, restored: Option<Vec<Effect>>, carried: Vec<(Input, Ts)>) {
        let restored = restored.or_else(|| self.restore());
        if let Some(effects) = restored {
            self.settle(effects, self.last, Publish::Never);
        }
        for (input, at) in carried {
            let now = input_time(&input, at, self.last);
            self.last = self.last.max(now);
            let effects = self.engine.step(input, now);
            self.settle(effects, now, Publish::Never);
        }
        self.publish(self.last);
    }

    /// Restores the previous run's memory from the state store, if it has one.
    fn restore(&mut self) -> Option<Vec<Effect>> {
        let body = match self.shared.store.memory() {
            Ok(None) => return None,
            Ok(Some((_, body))) => body,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the state of the previous run; starting without it");
                return None;
            }
        };
        // The store refused to open on memory that does not decode (unless the operator
        // discarded it), so this is the same check, kept for a row changed since.
        match Memory::decode(&body) {
            Ok(memory) => {
                let effects = self.engine.restore(memory, self.last);
                tracing::info!(
                    incidents = self.engine.incidents().len(),
                    "state of the previous run restored"
                );
                Some(effects)
            }
            Err(e) => {
                tracing::error!(error = %e, "the stored state of the previous run cannot be read; starting without it");
                None
            }
        }
    }
}

/// The time an input is given to the engine. A reading is judged at the time its sample
/// was scheduled, exactly, so that samples one interval apart are one interval apart for
/// `for` and counts (a signal's readings come in that order). Other inputs are kept from
/// running behind the latest time.
pub(super) fn input_time(input: &Input, at: Ts, last: Ts) -> Ts {
    match input {
        Input::Reading(_) => at,
        _ => at.max(last),
    }
}

/// The engine a generation starts with, and what it is to catch up on.
struct Resumed {
    engine: Engine,
    /// The effects of taking over the engine before, on a reload.
    restored: Option<Vec<Effect>>,
    /// The inputs queued for the engine before, on a reload.
    carried: Vec<(Input, Ts)>,
    /// The engine time.
    last: Ts,
}

/// The engine of this generation: the one before reconfigured (with the effects of
/// taking it over, and the inputs queued for it), or a new one.
fn resume(cfg: &Config, resumed: Option<Handover>, shared: &Shared) -> Resumed {
    match resumed {
        Some(Handover {
            engine: old,
            carried,
            last,
            ..
        }) => {
            let now = shared.clock.now().max(last);
            let (engine, effects) = old.reconfigure(cfg.clone(), now);
            Resumed {
                engine,
                restored: Some(effects),
                carried,
                last: now,
            }
        }
        None => Resumed {
            engine: Engine::new(cfg.clone()),
            restored: None,
            carried: Vec::new(),
            last: shared.clock.now(),
        },
    }
}

fn ticker(cfg: &Config) -> tokio::time::Interval {
    let mut ticker = tokio::time::interval(cfg.daemon.tick);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ticker
}

fn rules_of_signal(cfg: &Config) -> Vec<Vec<usize>> {
    let mut rules_of_signal: Vec<Vec<usize>> = vec![Vec::new(); cfg.signals.len()];
    for (r, rule) in cfg.rules.iter().enumerate() {
        rules_of_signal[rule.signal].push(r);
    }
    rules_of_signal
}

/// The control API's side of the engine's loop: the API's handle, and the loop's ends
/// of its command channel and of the status it publishes.
fn control_api(
    shared: &Shared,
    cfg: &Config,
) -> (
    control::Control,
    mpsc::Receiver<control::Request>,
    watch::Sender<Arc<control::Status>>,
) {
    let (commands_tx, commands) = mpsc::channel::<control::Request>(64);
    let (published, status_rx) = watch::channel(Arc::new(control::Status::default()));
    let control = control::Control {
        commands: commands_tx,
        status: status_rx,
        store: Arc::clone(&shared.store),
        token: cfg.daemon.control_token.clone(),
        read_open: cfg.daemon.read_open,
    };
    (control, commands, published)
}

/// The outbox: its workers on their own tracker, and the accounting of their attempts
/// (metrics, backlog, the observer) on the generation's tracker.
fn start_outbox(
    shared: &Shared,
    cfg: &Config,
    sinks: Vec<(Sink, crate::notify::outbox::Limits)>,
    metrics: &Arc<Metrics>,
    tasks: &Tasks,
    flush: Flush,
) -> Arc<Outbox> {
    let outbox = Arc::new(Outbox::new(Arc::clone(&shared.store), cfg));
    let (attempts_tx, mut attempts_rx) = mpsc::unbounded_channel::<Attempt>();
    let (o, metrics, store) = (
        shared.observer.clone(),
        Arc::clone(metrics),
        Arc::clone(&shared.store),
    );
    let names: Vec<String> = cfg.notifiers.iter().map(|n| n.name.clone()).collect();
    tasks.tracker.spawn(async move {
        while let Some(a) = attempts_rx.recv().await {
            metrics.notification(&a.notifier, &a.delivery);
            count_pending(&store, &metrics, &names);
            if let Some(o) = &o {
                let _ = o.send(Event::Delivery(Box::new(a)));
            }
        }
    });
    outbox.spawn(sinks, &tasks.outbox, flush, Some(attempts_tx));
    outbox
}

/// The HTTP listener on the generation's tracker: metrics and health always,
/// Alertmanager's webhook when a signal uses it (its resender on the sources tracker).
/// It serves until the very end, so that /readyz says "stopping" while the daemon
/// drains.
fn start_listener(
    shared: &Shared,
    cfg: &Config,
    mut app: axum::Router,
    receiver: Option<Arc<Receiver>>,
    tx: &mpsc::Sender<(Input, Ts)>,
    tasks: &Tasks,
) {
    let listening = shared.listening;
    if let Some(receiver) = receiver {
        let hook = Hook::new(
            receiver,
            tx.clone(),
            shared.clock,
            tasks.sources_stop.clone(),
        );
        app = app.merge(hook.route());
        tracing::info!(addr = %listening, path = listener::WEBHOOK_PATH, "receiving alertmanager webhooks");
        let resending = listener::resend_loop(
            hook,
            listener::resend_every(cfg),
            tasks.sources_stop.clone(),
        );
        tasks.sources.spawn(resending);
    }
    if listener::serve(shared, cfg, app, &tasks.api_stop, &tasks.tracker) {
        tracing::info!(addr = %listening, "serving /metrics, /healthz and /readyz");
    }
}

/// Each target's revision as the engine knows it, for its change observer.
fn remembered_revisions(engine: &Engine) -> Vec<Option<String>> {
    (0..engine.config().targets.len())
        .map(|t| engine.revision(t).map(str::to_owned))
        .collect()
}

/// Samplers, watches and change observers on the sources tracker, which is then closed;
/// with the test hook `run_with_inputs`, none: the engine's channel goes to the test.
fn start_sources(
    shared: &Shared,
    cfg: &Config,
    sources: &[Option<Arc<crate::source::Source>>],
    handed: Handed,
    remembered: &[Option<String>],
    tx: &mpsc::Sender<(Input, Ts)>,
    tasks: &Tasks,
) -> Watches {
    if let Some(inject) = &shared.inject {
        let instant = tokio::time::Instant::now();
        let injector = super::Injector {
            inputs: tx.clone(),
            now: shared.clock.at(instant),
            instant,
        };
        let _ = inject.send(injector);
        tasks.sources.close();
        return Watches::default();
    }
    let feed = Feed {
        clock: shared.clock,
        tx: tx.clone(),
        token: tasks.sources_stop.clone(),
    };
    let watches = sampling::start(cfg, sources, handed, remembered, &feed, &tasks.sources);
    tasks.sources.close();
    watches
}
