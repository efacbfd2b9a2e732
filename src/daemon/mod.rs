//! The daemon: the only module that wires sources, the engine, actions and reports.
//!
//! One engine task owns the [`Engine`](crate::engine::Engine) and is the only caller of
//! `step`. Samplers (one task per signal) and change observers (one per target) send it
//! inputs; plan steps run as their own tasks and send their results back. Every task is
//! spawned on one `TaskTracker` with a child of one root `CancellationToken`.
//!
//! Shutdown (the token is cancelled, e.g. on SIGTERM) is a bounded drain: sources stop at
//! once, the engine stops ordering new steps, an in-flight step is given
//! `daemon.drain_timeout` to finish and its result is recorded, the outbox is flushed,
//! and open incidents stay open in the state store for the next start.
//!
//! A reload (a new configuration on `Options::reload`, sent on SIGHUP) ends one
//! configuration's run (a [`generation`]) and starts the next in the same process, on
//! the same listening socket, with the engine reconfigured: see [`reload`] and
//! [`crate::engine::reload`].
//!
//! This file owns what the rest of the crate sees (`run`, its options, events and
//! errors), what lives as long as the process (`Shared`, `Clock`) and the succession of
//! generations, each preceded by a standby with leader election. It must not carry out
//! effects or run sources itself: that is the generation's, in the files beside it.

mod drain;
mod effects;
mod engine_loop;
mod generation;
mod held;
mod lead;
mod listener;
mod parts;
mod reload;
mod sampling;
mod standby;
mod steps;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::Health;
use crate::config::Config;
use crate::engine::{Effect, Input, Ts};
use crate::source;
use crate::store::Store;

use generation::{Ended, Generation};
use lead::{Candidate, Lead, TermEnded};
pub use listener::{BODIES_IN_FLIGHT, WEBHOOK_PATH, descriptors_needed};
use parts::Parts;
pub(crate) use parts::sampled_sources;
pub use reload::Reload;
use standby::{Standby, standby};

/// What the daemon tells an observer (the demo, tests) as it runs.
#[derive(Debug, Clone)]
pub enum Event {
    /// The HTTP listener (metrics, health, webhooks) is bound to this address.
    Listening(std::net::SocketAddr),
    /// Sources and the engine are running.
    Started,
    /// A new configuration is running: its sources and the engine that took over.
    Reloaded,
    /// A new configuration was refused, and why; the running one stays.
    ReloadRefused(String),
    /// An effect the engine produced, at the engine time it was produced.
    Effect(Ts, Effect),
    /// The outbox tried to deliver a message to a notifier.
    Delivery(Box<crate::notify::outbox::Attempt>),
    /// An incident report was written.
    Report {
        incident: String,
        path: std::path::PathBuf,
    },
    /// The daemon has drained and is about to return.
    Stopped,
}

/// How the daemon is run.
#[derive(Default)]
pub struct Options {
    /// Cancelled to stop the daemon; the daemon makes its own if none is given.
    pub shutdown: CancellationToken,
    /// Receives every [`Event`]; the daemon never blocks on it.
    pub observer: Option<mpsc::UnboundedSender<Event>>,
    /// systemd's notify socket, when run as a `Type=notify` service.
    pub systemd: Option<crate::systemd::Systemd>,
    /// New configurations to apply while running (see [`Reload`]).
    pub reload: Option<mpsc::Receiver<Reload>>,
}

/// Test hook ([`run_with_inputs`]): a generation's engine input channel, handed to a
/// test that feeds it what samplers, watches and change observers would, each input
/// with its engine time (`Ts`) as they send it. `now` is the engine time of `instant`
/// on Tokio's clock, so that a test with a paused clock can stamp its inputs exactly.
#[doc(hidden)]
#[derive(Debug, Clone)]
pub struct Injector {
    pub inputs: mpsc::Sender<(Input, Ts)>,
    pub now: Ts,
    pub instant: tokio::time::Instant,
}

/// A failure that stops the daemon from starting.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A signal uses a source this build cannot run; a configuration problem.
    #[error("signal[{index}] ({name}): {source}")]
    Unsupported {
        index: usize,
        name: String,
        source: source::UnsupportedSource,
    },
    /// A target uses a change type this build cannot observe.
    #[error(
        "target[{index}] ({name}).change: change type {kind:?} is not available in this version of rearguard"
    )]
    UnsupportedChange {
        index: usize,
        name: String,
        kind: &'static str,
    },
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot create state directory {path}: {source}")]
    StateDir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// A notifier's settings cannot be used; a configuration problem.
    #[error("notifier[{index}] ({name}): {reason}")]
    Notifier {
        index: usize,
        name: String,
        reason: String,
    },
    /// A plan step cannot be prepared (a kubeconfig that cannot be read).
    #[error("plan[{plan}].step[{step}] ({name}): {reason}")]
    Step {
        plan: usize,
        step: usize,
        name: String,
        reason: String,
    },
    /// `[leader_election]` cannot be used (a kubeconfig that cannot be read).
    #[error("leader_election: {reason}")]
    Leader { reason: String },
}

impl StartError {
    /// True when the cause is the configuration (exit code 64).
    pub fn is_config(&self) -> bool {
        matches!(
            self,
            StartError::Unsupported { .. }
                | StartError::UnsupportedChange { .. }
                | StartError::Notifier { .. }
                | StartError::Step { .. }
                | StartError::Leader { .. }
        )
    }
}

/// A monotonic engine clock anchored at wall time when the daemon starts, so that engine
/// time never runs backwards when the wall clock is stepped.
#[derive(Clone, Copy)]
pub(crate) struct Clock {
    wall_ms: u64,
    start: Instant,
}

impl Clock {
    pub(crate) fn new() -> Clock {
        let wall_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        // Tokio's clock, which the tickers and samplers' schedules also follow: the same
        // instant as the system's, except in tests that pause time.
        Clock {
            wall_ms,
            start: tokio::time::Instant::now().into_std(),
        }
    }

    pub(crate) fn now(&self) -> Ts {
        self.at(tokio::time::Instant::now())
    }

    /// The engine time of an instant (a sampler's scheduled tick).
    pub(crate) fn at(&self, instant: tokio::time::Instant) -> Ts {
        let since = instant.into_std().saturating_duration_since(self.start);
        Ts(self.wall_ms + since.as_millis() as u64)
    }
}

/// What lives as long as the process, across reloads.
struct Shared {
    client: reqwest::Client,
    store: Arc<Store>,
    health: Arc<Health>,
    clock: Clock,
    /// The bound listener; each configuration serves a clone of it, so that a reload
    /// never closes the port.
    listener: std::net::TcpListener,
    listening: std::net::SocketAddr,
    shutdown: CancellationToken,
    observer: Option<mpsc::UnboundedSender<Event>>,
    systemd: Option<crate::systemd::Systemd>,
    /// With [`run_with_inputs`]: where each generation hands its input channel, instead
    /// of starting its sources.
    inject: Option<mpsc::UnboundedSender<Injector>>,
    /// The metrics every generation shares: reloads, the process.
    lasting: crate::api::Lasting,
}

impl Shared {
    /// Opens the state store of `cfg` (locking its directory), then binds `daemon.listen`.
    async fn open(
        cfg: &Config,
        client: reqwest::Client,
        opts: &mut Options,
    ) -> Result<Shared, StartError> {
        // The store first: its lock on the state directory names the daemon already
        // running there, which a busy port would otherwise hide.
        let store = Arc::new(Store::open(&cfg.daemon.state_dir)?);
        let listen = cfg.daemon.listen;
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .and_then(|l| l.into_std())
            .map_err(|source| StartError::Listen {
                addr: listen,
                source,
            })?;
        let listening = listener.local_addr().unwrap_or(listen);
        Ok(Shared {
            client,
            store,
            health: Arc::new(Health::new()),
            clock: Clock::new(),
            listener,
            listening,
            shutdown: opts.shutdown.clone(),
            observer: opts.observer.take(),
            systemd: opts.systemd.take(),
            inject: None,
            lasting: crate::api::Lasting::new(std::time::SystemTime::now()),
        })
    }

    fn tell(&self, event: Event) {
        if let Some(o) = &self.observer {
            let _ = o.send(event);
        }
    }
}

/// Runs the daemon until `opts.shutdown` is cancelled, applying the configurations that
/// arrive on `opts.reload` in between.
pub async fn run(cfg: Config, opts: Options) -> Result<(), StartError> {
    run_inner(cfg, opts, None).await
}

/// Test hook: [`run`] with no source started. Each generation sends its engine's input
/// channel on `inject` when it starts, and takes its readings and changes only from
/// what the test sends there (steps, commands and ticks are the daemon's own).
#[doc(hidden)]
pub async fn run_with_inputs(
    cfg: Config,
    opts: Options,
    inject: mpsc::UnboundedSender<Injector>,
) -> Result<(), StartError> {
    run_inner(cfg, opts, Some(inject)).await
}

async fn run_inner(
    cfg: Config,
    mut opts: Options,
    inject: Option<mpsc::UnboundedSender<Injector>>,
) -> Result<(), StartError> {
    let client = crate::http::client();
    let parts = Parts::build(cfg, &client).await?;
    listener::fit_descriptors(&parts.cfg);
    let mut shared = Shared::open(&parts.cfg, client, &mut opts).await?;
    shared.inject = inject;
    // The settings cannot change while running: a reload that changes them is refused.
    let candidate = match &parts.cfg.leader_election {
        None => None,
        Some(settings) => Some(Candidate::new(settings).await?),
    };
    shared.tell(Event::Listening(shared.listening));
    let mut reloads = opts.reload.take();
    let lease_tasks = TaskTracker::new();
    let ran = generations(
        parts,
        &shared,
        candidate.as_ref(),
        reloads.as_mut(),
        &lease_tasks,
    )
    .await;
    lease_tasks.close();
    if tokio::time::timeout(Duration::from_secs(5), lease_tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!("the lease renewal did not stop within 5s");
    }
    ran?;
    tracing::info!("rearguard stopped");
    shared.tell(Event::Stopped);
    Ok(())
}

/// Runs one generation after the other until the daemon stops: the next one after a
/// reload, and with leader election a standby before every generation that does not
/// continue a term (a reload within a term keeps it).
async fn generations(
    parts: Parts,
    shared: &Shared,
    candidate: Option<&Candidate>,
    mut reloads: Option<&mut mpsc::Receiver<Reload>>,
    lease_tasks: &TaskTracker,
) -> Result<(), StartError> {
    let mut next = (Box::new(parts), None);
    let mut lead: Option<Lead> = None;
    loop {
        let (mut parts, resumed) = next;
        if let Some(candidate) = candidate
            && lead.is_none()
        {
            match standby(parts, candidate, shared, reloads.as_deref_mut()).await {
                Standby::Won(won, term) => {
                    parts = won;
                    lead = Some(Lead::begin(candidate, term, shared, lease_tasks));
                }
                Standby::Stopped => return Ok(()),
            }
        }
        let stop = lead
            .as_ref()
            .map_or_else(|| shared.shutdown.clone(), |l| l.stop.clone());
        let fence = lead.as_ref().map(|l| Arc::clone(&l.fence));
        // Kept to start again after a lost term: the generation consumes its parts.
        let cfg = lead.as_ref().map(|_| parts.cfg.clone());
        let generation = Generation::start(*parts, resumed, shared, &stop, fence);
        match generation.run(reloads.as_deref_mut()).await {
            Ended::Reload(parts, handover) => next = (parts, Some(*handover)),
            Ended::Stopped => {
                let (Some(l), Some(cfg)) = (lead.take(), cfg) else {
                    return Ok(());
                };
                if l.end(shared).await == TermEnded::Stopping {
                    return Ok(());
                }
                next = (Box::new(Parts::build(cfg, &shared.client).await?), None);
            }
        }
    }
}

/// A ticker for systemd's watchdog, when systemd asks for pings.
fn watchdog_ticker(systemd: Option<&crate::systemd::Systemd>) -> Option<tokio::time::Interval> {
    systemd.and_then(|sd| sd.watchdog_interval()).map(|every| {
        let mut t = tokio::time::interval(every);
        t.set_missed_tick_behavior(MissedTickBehavior::Delay);
        t
    })
}

/// The watchdog's next tick; never, without a watchdog.
async fn watchdog_tick(watchdog: Option<&mut tokio::time::Interval>) {
    match watchdog {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// The next reload; never, when nobody sends any.
async fn next_reload(reloads: Option<&mut mpsc::Receiver<Reload>>) -> Option<Reload> {
    match reloads {
        Some(r) => r.recv().await,
        None => std::future::pending().await,
    }
}
