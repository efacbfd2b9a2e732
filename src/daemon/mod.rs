//! The daemon: the only module that wires sources, the engine, actions and reports.
//!
//! One engine task owns the [`Engine`] and is the only caller of `step`. Samplers (one
//! task per signal) and change observers (one per target) send it inputs; plan steps run
//! as their own tasks and send their results back. Every task is spawned on one
//! `TaskTracker` with a child of one root `CancellationToken`.
//!
//! Shutdown (the token is cancelled, e.g. on SIGTERM) is a bounded drain: sources stop at
//! once, the engine stops ordering new steps, an in-flight step is given
//! `daemon.drain_timeout` to finish and its result is recorded, the outbox is flushed,
//! and open incidents stay open in the state store for the next start.
//!
//! A reload (a new configuration on `Options::reload`, sent on SIGHUP) ends one
//! configuration's run (a `generation`) and starts the next in the same process, on the
//! same listening socket, with the engine reconfigured: see `generation` and
//! [`crate::engine::reload`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::action::{Action, ActionContext};
use crate::api::{Health, Metrics, control};
use crate::config::Config;
use crate::config::SourceSpec;
use crate::engine::{Effect, Engine, Input, Notification, StepOrder, StepResult, Ts};
use crate::engine::{Memory, Outcome};
use crate::notify::Sink;
use crate::notify::outbox::Outbox;
use crate::source::{self, Source, alertmanager};
use crate::store::{Decision, StepRecord, Store};

/// Where Alertmanager's webhook is received on `daemon.listen`.
pub const WEBHOOK_PATH: &str = "/webhook/alertmanager";

/// What the webhook handler needs.
struct Hook {
    receiver: Arc<alertmanager::Receiver>,
    tx: mpsc::Sender<(Input, Ts)>,
    clock: Clock,
    /// Held across judging a delivery and queueing its readings, so that two deliveries
    /// reach the engine in the order the receiver judged them.
    order: tokio::sync::Mutex<()>,
    /// Cancelled when rearguard stops taking readings; deliveries are refused after it.
    stop: CancellationToken,
}

/// Receives one Alertmanager delivery. Answers 200 once its readings are queued for the
/// engine, so that Alertmanager retries anything not taken.
async fn webhook(
    axum::extract::State(hook): axum::extract::State<Arc<Hook>>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> (axum::http::StatusCode, String) {
    use axum::http::StatusCode;
    let auth = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let _order = hook.order.lock().await;
    if hook.stop.is_cancelled() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "rearguard is stopping\n".to_owned(),
        );
    }
    let now = hook.clock.now();
    match hook.receiver.receive(auth, &body, now) {
        Ok(delivery) => {
            let summary = delivery.to_string();
            for r in delivery.readings {
                if hook.tx.send((Input::Reading(r), now)).await.is_err() {
                    return (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "rearguard is stopping\n".to_owned(),
                    );
                }
            }
            tracing::debug!(summary = %summary, "alertmanager webhook accepted");
            (StatusCode::OK, format!("{summary}\n"))
        }
        Err(rejection) => {
            tracing::warn!(status = rejection.status, reason = %rejection.reason, "alertmanager webhook refused");
            let status = StatusCode::from_u16(rejection.status).unwrap_or(StatusCode::BAD_REQUEST);
            (status, format!("{}\n", rejection.reason))
        }
    }
}

/// Re-sends the receiver's current state of every alertmanager signal each `interval`:
/// a push source otherwise reads only on change, and rules that count evaluations
/// (`consecutive`, `m_of_n`, `for`) and verification after a plan need readings.
async fn resend_loop(hook: Arc<Hook>, interval: Duration, token: CancellationToken) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = token.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let _order = hook.order.lock().await;
        let now = hook.clock.now();
        for r in hook.receiver.current() {
            if hook.tx.send((Input::Reading(r), now)).await.is_err() {
                return;
            }
        }
    }
}

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
        Clock {
            wall_ms,
            start: Instant::now(),
        }
    }

    pub(crate) fn now(&self) -> Ts {
        Ts(self.wall_ms + self.start.elapsed().as_millis() as u64)
    }

    /// The engine time of an instant (a sampler's scheduled tick).
    pub(crate) fn at(&self, instant: tokio::time::Instant) -> Ts {
        let since = instant.into_std().saturating_duration_since(self.start);
        Ts(self.wall_ms + since.as_millis() as u64)
    }
}

/// The sampled source of every signal (`None` for push sources, which the listener
/// receives), after checking that this build can run every source and observe every
/// change type of the configuration. Shared with `record`, which reads what the daemon
/// reads.
pub(crate) fn sampled_sources(
    cfg: &Config,
    client: &reqwest::Client,
) -> Result<Vec<Option<Arc<Source>>>, StartError> {
    cfg.signals
        .iter()
        .enumerate()
        .map(|(index, signal)| match signal.source {
            // Received by the listener, or watched by their own task.
            SourceSpec::Alertmanager(_) | SourceSpec::CgroupOom(_) | SourceSpec::KubePods(_) => {
                Ok(None)
            }
            _ => Source::new(signal, client)
                .map(|s| Some(Arc::new(s)))
                .map_err(|source| StartError::Unsupported {
                    index,
                    name: signal.name.clone(),
                    source,
                }),
        })
        .collect()
}

/// A request to apply a new configuration (the command line sends one on SIGHUP): the
/// configuration, already read and validated, or why it could not be.
pub type Reload = Result<Config, String>;

/// A configuration with everything running it needs already built (sources, actions,
/// notifiers). A reload builds it before stopping anything, so that a configuration
/// that cannot run is refused while the old one goes on.
struct Parts {
    cfg: Config,
    sources: Vec<Option<Arc<Source>>>,
    receiver: Option<Arc<alertmanager::Receiver>>,
    actions: Vec<Vec<Arc<Action>>>,
    sinks: Vec<(Sink, crate::notify::outbox::Limits)>,
}

impl Parts {
    async fn build(cfg: Config, client: &reqwest::Client) -> Result<Parts, StartError> {
        let sources = sampled_sources(&cfg, client)?;
        let receiver = alertmanager::Receiver::new(&cfg).map(Arc::new);
        let actions = cfg
            .plans
            .iter()
            .map(|p| {
                p.steps
                    .iter()
                    .map(|s| Arc::new(Action::new(&s.action, client)))
                    .collect()
            })
            .collect::<Vec<Vec<Arc<Action>>>>();
        // Clients the steps need (Kubernetes) are built now: a broken kubeconfig stops the
        // start, or refuses the reload, instead of failing a rollback.
        for (plan, steps) in actions.iter().enumerate() {
            for (step, action) in steps.iter().enumerate() {
                action.prepare().await.map_err(|reason| StartError::Step {
                    plan,
                    step,
                    name: cfg.plans[plan].steps[step].name.clone(),
                    reason,
                })?;
            }
        }
        let reports_dir = cfg.daemon.state_dir.join("reports");
        std::fs::create_dir_all(&reports_dir).map_err(|source| StartError::StateDir {
            path: reports_dir.clone(),
            source,
        })?;
        let sinks = cfg
            .notifiers
            .iter()
            .enumerate()
            .map(|(index, n)| {
                Sink::new(n, client)
                    .map(|sink| {
                        let limits = crate::notify::outbox::Limits {
                            min_interval: n.min_interval,
                            timeout: n.timeout,
                        };
                        (sink, limits)
                    })
                    .map_err(|reason| StartError::Notifier {
                        index,
                        name: n.name.clone(),
                        reason,
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Parts {
            cfg,
            sources,
            receiver,
            actions,
            sinks,
        })
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
}

impl Shared {
    fn tell(&self, event: Event) {
        if let Some(o) = &self.observer {
            let _ = o.send(event);
        }
    }
}

/// How one configuration's run ended.
enum Ended {
    /// Stopped for good (the shutdown token).
    Stopped,
    /// A new configuration is to be applied.
    Reload(Box<Parts>, Box<Handover>),
}

/// What a configuration's run hands the next one on a reload: the engine as it was, and
/// the inputs that were queued for it, already translated for the new configuration.
struct Handover {
    engine: Engine,
    carried: Vec<(Input, Ts)>,
    last: Ts,
    /// What Alertmanager's webhook had told the configuration before.
    receiver: Option<Arc<alertmanager::Receiver>>,
    /// The OOM watches of the configuration before, by signal index there.
    watches: Vec<(usize, source::cgroup_oom::OomWatch)>,
    /// What the pod watches of the configuration before knew, by signal index there.
    pods: Vec<(usize, source::kube_pods::PodMemory)>,
}

/// Runs the daemon until `opts.shutdown` is cancelled, applying the configurations that
/// arrive on `opts.reload` in between.
pub async fn run(cfg: Config, mut opts: Options) -> Result<(), StartError> {
    let client = crate::http::client();
    let parts = Parts::build(cfg, &client).await?;
    let listen = parts.cfg.daemon.listen;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .and_then(|l| l.into_std())
        .map_err(|source| StartError::Listen {
            addr: listen,
            source,
        })?;
    let listening = listener.local_addr().unwrap_or(listen);
    let store = Arc::new(Store::open(&parts.cfg.daemon.state_dir)?);
    let shared = Shared {
        client,
        store,
        health: Arc::new(Health::new()),
        clock: Clock::new(),
        listener,
        listening,
        shutdown: opts.shutdown.clone(),
        observer: opts.observer.take(),
        systemd: opts.systemd.take(),
    };
    // The settings cannot change while running: a reload that changes them is refused.
    let elector = match &parts.cfg.leader_election {
        None => None,
        Some(settings) => {
            let (elector, watch) =
                crate::leader::elector(settings)
                    .await
                    .map_err(|e| StartError::Leader {
                        reason: e.to_string(),
                    })?;
            Some((elector, watch, settings.clone()))
        }
    };
    shared.tell(Event::Listening(listening));
    let mut reloads = opts.reload.take();
    let mut next = (Box::new(parts), None);
    // With leader election: this replica's term while it holds the Lease. A reload
    // within a term keeps it; every other generation is preceded by a standby.
    let lease_tasks = TaskTracker::new();
    let mut lead: Option<Lead> = None;
    loop {
        let (mut parts, resumed) = next;
        if let Some((elector, watch, settings)) = &elector
            && lead.is_none()
        {
            match standby(parts, elector, watch, settings, &shared, reloads.as_mut()).await {
                Standby::Won(won, term) => {
                    parts = won;
                    lead = Some(Lead::begin(elector, term, settings, &shared, &lease_tasks));
                }
                Standby::Stopped => break,
            }
        }
        let stop = lead
            .as_ref()
            .map_or_else(|| shared.shutdown.clone(), |l| l.stop.clone());
        let fence = lead.as_ref().map(|l| Arc::clone(&l.fence));
        // Kept to start again after a lost term: the generation consumes its parts.
        let cfg = lead.as_ref().map(|_| parts.cfg.clone());
        match generation(*parts, resumed, &shared, reloads.as_mut(), &stop, fence).await {
            Ended::Reload(parts, handover) => next = (parts, Some(*handover)),
            Ended::Stopped => {
                let (Some(mut l), Some(cfg)) = (lead.take(), cfg) else {
                    break;
                };
                l.end_renewal().await;
                if shared.shutdown.is_cancelled() {
                    // A clean stop: a standby (watching the Lease) takes over at
                    // once, not after the lease duration.
                    match l.fence.release().await {
                        Ok(()) => tracing::info!("lease released"),
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot release the lease; it expires on its own")
                        }
                    }
                    break;
                }
                tracing::warn!("leadership lost: this replica is a standby again");
                next = (Box::new(Parts::build(cfg, &shared.client).await?), None);
            }
        }
    }
    lease_tasks.close();
    if tokio::time::timeout(Duration::from_secs(5), lease_tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!("the lease renewal did not stop within 5s");
    }
    tracing::info!("rearguard stopped");
    shared.tell(Event::Stopped);
    Ok(())
}

/// A term of leadership: the fence its steps check, the token that ends its
/// generations when the Lease is lost, and its renewal.
struct Lead {
    fence: Arc<crate::leader::Fence>,
    /// Cancelled by the renewal or the fence when the Lease is lost, and with the
    /// daemon's shutdown (a child of it).
    stop: CancellationToken,
    /// Stops the renewal at the end of the term (after the drain: a stopping leader
    /// keeps renewing while its last steps run).
    renewing: CancellationToken,
    renewal: tokio::task::JoinHandle<()>,
}

impl Lead {
    fn begin(
        elector: &crate::kube::lease::Elector,
        term: crate::kube::lease::Term,
        settings: &crate::config::LeaderElection,
        shared: &Shared,
        tasks: &TaskTracker,
    ) -> Lead {
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
            fence: Arc::new(crate::leader::Fence::new(
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

    /// Ends the term's renewal and waits for it, so that no renewal in flight takes the
    /// Lease again after it is released.
    async fn end_renewal(&mut self) {
        self.renewing.cancel();
        let _ = (&mut self.renewal).await;
    }
}

/// Serves `app` on a clone of the daemon's listening socket until `stop` is cancelled,
/// on a task of `tracker`. Whether it serves (a socket that cannot be cloned is logged).
fn serve(
    shared: &Shared,
    app: axum::Router,
    stop: &CancellationToken,
    tracker: &TaskTracker,
) -> bool {
    let listener = shared
        .listener
        .try_clone()
        .and_then(tokio::net::TcpListener::from_std);
    match listener {
        Ok(listener) => {
            let stop = stop.clone();
            tracker.spawn(async move {
                let served = axum::serve(listener, app)
                    .with_graceful_shutdown(async move { stop.cancelled().await })
                    .await;
                if let Err(e) = served {
                    tracing::error!(error = %e, "the http listener failed");
                }
            });
            true
        }
        Err(e) => {
            tracing::error!(addr = %shared.listening, error = %e, "cannot serve on the listener");
            false
        }
    }
}

/// How a standby's wait ended.
enum Standby {
    /// This replica holds the Lease: the configuration to run (the latest reload's),
    /// and the term.
    Won(Box<Parts>, crate::kube::lease::Term),
    /// The daemon stops.
    Stopped,
}

/// Waits as a standby until this replica takes the Lease or the daemon stops: serves
/// `/healthz`, `/readyz` ("standby: lease ... held by ...") and `/metrics` (leader 0),
/// tells systemd it is ready with the same status, applies reloads, and tries the Lease
/// every `retry_every` and whenever it changes (watched). It runs no engine, no source, no step and sends nothing.
async fn standby(
    mut parts: Box<Parts>,
    elector: &crate::kube::lease::Elector,
    watch: &crate::leader::LeaseWatch,
    settings: &crate::config::LeaderElection,
    shared: &Shared,
    mut reloads: Option<&mut mpsc::Receiver<Reload>>,
) -> Standby {
    use crate::leader::{Attempt, attempt, standby_status};
    let systemd = shared.systemd.as_ref();
    let mut status = standby_status(settings, None);
    shared.health.set_standby(Some(status.clone()));
    let metrics = Arc::new(Metrics::new(&parts.cfg));
    metrics.set_leader(false);
    let stall_after = (parts.cfg.daemon.tick * 5).max(Duration::from_secs(5));
    // Alertmanager retries what a standby refuses; the leader receives it.
    let app = crate::api::router(metrics, Arc::clone(&shared.health), stall_after).route(
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
    serve(shared, app, &api_stop, &serving);
    serving.close();
    let mut watchdog = systemd.and_then(|sd| sd.watchdog_interval()).map(|every| {
        let mut t = tokio::time::interval(every);
        t.set_missed_tick_behavior(MissedTickBehavior::Delay);
        t
    });
    let mut told_systemd = false;
    let mut last_error: Option<String> = None;
    let mut last_holder: Option<Option<String>> = None;
    let won = 'campaign: loop {
        let now_status = match attempt(elector, settings.retry_every.max(Duration::from_secs(1)))
            .await
        {
            Attempt::Won(term) => break Some(term),
            Attempt::Follows(holder) => {
                last_error = None;
                if last_holder.as_ref() != Some(&holder) {
                    tracing::info!(lease = %format!("{}/{}", settings.namespace, settings.lease), holder = holder.as_deref().unwrap_or(""), "standby: another replica holds the lease");
                }
                let text = standby_status(settings, holder.as_deref());
                last_holder = Some(holder);
                text
            }
            Attempt::Failed(e) => {
                if last_error.as_deref() != Some(&e) {
                    tracing::warn!(error = %e, "standby: cannot read the lease");
                    last_error = Some(e.clone());
                }
                format!("{} (cannot read it: {e})", standby_status(settings, None))
            }
        };
        if now_status != status || !told_systemd {
            status = now_status;
            shared.health.set_standby(Some(status.clone()));
            if let Some(sd) = systemd {
                let line = format!("standby: {status}");
                if told_systemd {
                    sd.status(&line);
                } else {
                    sd.ready(&line);
                }
            }
            told_systemd = true;
        }
        // The next try: after `retry_every`, or at once when the Lease changes (a leader
        // that stops releases it).
        let retry = tokio::time::sleep(settings.retry_every);
        tokio::pin!(retry);
        let changed = watch.changed();
        tokio::pin!(changed);
        loop {
            tokio::select! {
                biased;
                _ = shared.shutdown.cancelled() => break 'campaign None,
                _ = &mut retry => break,
                _ = &mut changed => break,
                Some(reload) = async {
                    match reloads.as_deref_mut() {
                        Some(r) => r.recv().await,
                        None => std::future::pending().await,
                    }
                } => match prepare_reload(&parts.cfg, reload, &shared.client).await {
                    Ok(new) => {
                        tracing::info!("configuration reloaded (standby)");
                        parts = Box::new(new);
                        shared.tell(Event::Reloaded);
                        if let Some(sd) = systemd {
                            sd.ready(&format!("standby: {status}"));
                        }
                    }
                    Err(reason) => {
                        tracing::error!(reason = %reason, "reload refused; the running configuration stays");
                        shared.tell(Event::ReloadRefused(reason));
                    }
                },
                _ = async {
                    match watchdog.as_mut() {
                        Some(t) => t.tick().await,
                        None => std::future::pending().await,
                    }
                } => {
                    if let Some(sd) = systemd {
                        sd.ping();
                    }
                }
            }
        }
    };
    // The listener's clone stops accepting before the generation serves its own.
    api_stop.cancel();
    if tokio::time::timeout(Duration::from_secs(5), serving.wait())
        .await
        .is_err()
    {
        tracing::warn!("the standby's listener did not stop within 5s");
    }
    match won {
        Some(term) => Standby::Won(parts, term),
        None => Standby::Stopped,
    }
}

/// How long building a reloaded configuration may hold up the engine's loop.
const RELOAD_BUILD_LIMIT: Duration = Duration::from_secs(10);

/// Checks a new configuration against the running one and builds what it needs. What
/// lives as long as the process (the listener, the state store) cannot change.
async fn prepare_reload(
    running: &Config,
    reload: Reload,
    client: &reqwest::Client,
) -> Result<Parts, String> {
    let cfg = reload?;
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

/// Runs one configuration until the daemon stops, a new configuration is to be
/// applied, or `stop` is cancelled (the shutdown, or with leader election a lost
/// Lease). `resumed` is the engine of the configuration before, when this one comes
/// from a reload. With leader election, every step passes `fence` before it starts.
async fn generation(
    parts: Parts,
    resumed: Option<Handover>,
    shared: &Shared,
    mut reloads: Option<&mut mpsc::Receiver<Reload>>,
    stop: &CancellationToken,
    fence: Option<Arc<crate::leader::Fence>>,
) -> Ended {
    let Parts {
        cfg,
        sources,
        receiver,
        actions,
        sinks,
    } = parts;
    let (store, health, clock, listening) = (
        &shared.store,
        &shared.health,
        shared.clock,
        shared.listening,
    );
    let outbox = Arc::new(Outbox::new(Arc::clone(store), &cfg));
    let metrics = Arc::new(Metrics::new(&cfg));
    let mut rules_of_signal: Vec<Vec<usize>> = vec![Vec::new(); cfg.signals.len()];
    for (r, rule) in cfg.rules.iter().enumerate() {
        rules_of_signal[rule.signal].push(r);
    }

    let token = stop.clone();
    let sources_token = token.child_token();
    // Samplers, change observers and the webhook's resender: stopped first, on a stop
    // and on a reload.
    let sources_tracker = TaskTracker::new();
    let tracker = TaskTracker::new();
    let (tx, mut rx) = mpsc::channel::<(Input, Ts)>(1024);
    let observer = shared.observer.clone();
    let tell = |event: Event| shared.tell(event);

    let (flush_tx, flush_rx) = tokio::sync::watch::channel(None);
    let (attempts_tx, mut attempts_rx) =
        mpsc::unbounded_channel::<crate::notify::outbox::Attempt>();
    {
        let (o, metrics, store) = (observer.clone(), Arc::clone(&metrics), Arc::clone(store));
        let names: Vec<String> = cfg.notifiers.iter().map(|n| n.name.clone()).collect();
        tracker.spawn(async move {
            while let Some(a) = attempts_rx.recv().await {
                metrics.notification(&a.notifier, &a.delivery);
                count_pending(&store, &metrics, &names);
                if let Some(o) = &o {
                    let _ = o.send(Event::Delivery(Box::new(a)));
                }
            }
        });
    }
    // The outbox's workers have their own tracker: the drain waits for them (bounded)
    // before the listener goes.
    let outbox_tracker = TaskTracker::new();
    outbox.spawn(sinks, &outbox_tracker, flush_rx, Some(attempts_tx));

    // The HTTP listener: metrics and health always, Alertmanager's webhook when a signal
    // uses it. It serves until the very end, so that /readyz says "stopping" while the
    // daemon drains.
    let api_stop = CancellationToken::new();
    // Incidents' transitions as Events on their Deployments, posted off this loop; the
    // poster stops with the listener, at the very end.
    let kube_events = crate::kube::events::Recorder::start(&cfg, &tracker, api_stop.clone());
    let stall_after = (cfg.daemon.tick * 5).max(Duration::from_secs(5));
    let (control_tx, mut control_rx) = mpsc::channel::<control::Request>(64);
    let (status_tx, status_rx) = tokio::sync::watch::channel(Arc::new(control::Status::default()));
    let mut app = crate::api::router(Arc::clone(&metrics), Arc::clone(health), stall_after).merge(
        control::router(Arc::new(control::Control {
            commands: control_tx,
            status: status_rx,
            store: Arc::clone(store),
            token: cfg.daemon.control_token.clone(),
            read_open: cfg.daemon.read_open,
        })),
    );
    // The OOM watches of signals that did not change go on counting where they were.
    let mut resumed = resumed;
    let mut handed_watches: HashMap<String, source::cgroup_oom::OomWatch> = HashMap::new();
    let mut handed_pods: HashMap<String, source::kube_pods::PodMemory> = HashMap::new();
    if let Some(h) = resumed.as_mut() {
        let watches = std::mem::take(&mut h.watches);
        let pods = std::mem::take(&mut h.pods);
        let old = h.engine.config();
        let kept = |a: usize| {
            let name = &old.signals[a].name;
            cfg.signal_index(name)
                .filter(|&b| crate::engine::reload::same_signal(old, a, &cfg, b))
                .map(|_| name.clone())
        };
        for (a, watch) in watches {
            if let Some(name) = kept(a) {
                handed_watches.insert(name, watch);
            }
        }
        for (a, memory) in pods {
            if let Some(name) = kept(a) {
                handed_pods.insert(name, memory);
            }
        }
    }
    // Alerts known before a reload stay known; the next reload takes them from here.
    if let (Some(new), Some(h)) = (&receiver, &resumed)
        && let Some(old) = &h.receiver
    {
        new.take_over(old, h.engine.config(), &cfg);
    }
    let kept_receiver = receiver.clone();
    if let Some(receiver) = receiver {
        let resend_every = cfg
            .signals
            .iter()
            .filter(|s| matches!(s.source, SourceSpec::Alertmanager(_)))
            .map(|s| s.interval)
            .min()
            .unwrap_or(Duration::from_secs(10));
        let hook = Arc::new(Hook {
            receiver,
            tx: tx.clone(),
            clock,
            order: tokio::sync::Mutex::new(()),
            stop: sources_token.clone(),
        });
        app = app.merge(
            axum::Router::new()
                .route(WEBHOOK_PATH, axum::routing::post(webhook))
                .layer(axum::extract::DefaultBodyLimit::max(
                    alertmanager::BODY_LIMIT,
                ))
                .with_state(Arc::clone(&hook)),
        );
        tracing::info!(addr = %listening, path = WEBHOOK_PATH, "receiving alertmanager webhooks");
        sources_tracker.spawn(resend_loop(hook, resend_every, sources_token.clone()));
    }
    if serve(shared, app, &api_stop, &tracker) {
        tracing::info!(addr = %listening, "serving /metrics, /healthz and /readyz");
    }
    for (i, source) in sources.iter().enumerate() {
        let Some(source) = source else { continue };
        sources_tracker.spawn(sample_loop(
            i,
            Arc::clone(source),
            cfg.signals[i].interval,
            cfg.signals[i].timeout,
            clock,
            tx.clone(),
            sources_token.clone(),
        ));
    }
    let mut watchers = Vec::new();
    for (i, signal) in cfg.signals.iter().enumerate() {
        if let SourceSpec::CgroupOom(spec) = &signal.source {
            let watch = handed_watches
                .remove(&signal.name)
                .unwrap_or_else(|| source::cgroup_oom::OomWatch::new(spec, signal.interval));
            watchers.push(sources_tracker.spawn(watch_loop(
                i,
                watch,
                clock,
                tx.clone(),
                sources_token.clone(),
            )));
        }
    }
    let mut pod_watchers = Vec::new();
    for (i, signal) in cfg.signals.iter().enumerate() {
        if let SourceSpec::KubePods(spec) = &signal.source {
            pod_watchers.push(sources_tracker.spawn(kube_pods_loop(
                i,
                spec.clone(),
                signal.interval,
                handed_pods.remove(&signal.name).unwrap_or_default(),
                clock,
                tx.clone(),
                sources_token.clone(),
            )));
        }
    }
    for (t, target) in cfg.targets.iter().enumerate() {
        if let Some(spec) = target.change.clone() {
            sources_tracker.spawn(change_loop(
                t,
                target.name.clone(),
                spec,
                clock,
                tx.clone(),
                sources_token.clone(),
            ));
        }
    }
    sources_tracker.close();

    let reloaded = resumed.is_some();
    let (mut engine, resumed_effects, carried, mut last) = match resumed {
        Some(Handover {
            engine: old,
            carried,
            last,
            ..
        }) => {
            let now = clock.now().max(last);
            let (engine, effects) = old.reconfigure(cfg.clone(), now);
            (engine, Some(effects), carried, now)
        }
        None => (Engine::new(cfg.clone()), None, Vec::new(), clock.now()),
    };
    let mut ticker = tokio::time::interval(cfg.daemon.tick);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut in_flight: HashMap<String, tokio_util::sync::DropGuard> = HashMap::new();
    let steps_token = CancellationToken::new();
    // Steps the fence refused: never started, their result never recorded.
    let (unstarted_tx, mut unstarted_rx) = mpsc::unbounded_channel::<String>();
    if reloaded {
        tracing::info!(
            targets = cfg.targets.len(),
            signals = cfg.signals.len(),
            rules = cfg.rules.len(),
            mode = ?cfg.daemon.mode,
            "configuration reloaded"
        );
    } else {
        tracing::info!(
            targets = cfg.targets.len(),
            signals = cfg.signals.len(),
            rules = cfg.rules.len(),
            mode = ?cfg.daemon.mode,
            "rearguard started"
        );
    }
    let systemd = shared.systemd.as_ref();
    let mut status = match engine.incidents() {
        [] => idle_status(&cfg),
        open => incidents_status(open),
    };
    if let Some(sd) = systemd {
        sd.ready(&status);
    }
    // Pinged from this loop, so that systemd restarts an engine that stopped turning.
    let mut watchdog = systemd.and_then(|sd| sd.watchdog_interval()).map(|every| {
        let mut t = tokio::time::interval(every);
        t.set_missed_tick_behavior(MissedTickBehavior::Delay);
        t
    });
    health.set_ready();
    tell(if reloaded {
        Event::Reloaded
    } else {
        Event::Started
    });

    let dispatch =
        |engine_effects: Vec<Effect>,
         now: Ts,
         draining: bool,
         in_flight: &mut HashMap<String, tokio_util::sync::DropGuard>| {
            for effect in engine_effects {
                // Observers hear of an effect before what carrying it out produces (a report).
                if observer.is_some() {
                    tell(Event::Effect(now, effect.clone()));
                }
                match &effect {
                    Effect::RunStep(order) if draining => {
                        tracing::warn!(incident = %order.incident, step = order.step, "step not started: rearguard is stopping");
                    }
                    Effect::RunStep(order) => {
                        let action = Arc::clone(&actions[order.plan][order.step]);
                        let step_cfg = &cfg.plans[order.plan].steps[order.step];
                        let guard_token = steps_token.child_token();
                        in_flight.insert(order.incident.clone(), guard_token.clone().drop_guard());
                        tracker.spawn(run_step(
                            action,
                            Arc::clone(&metrics),
                            order.clone(),
                            cfg.targets[order.target].name.clone(),
                            step_cfg.timeout,
                            clock,
                            tx.clone(),
                            guard_token,
                            fence.clone(),
                            unstarted_tx.clone(),
                        ));
                    }
                    Effect::IncidentClosed(inc) => {
                        in_flight.remove(&inc.id);
                        match crate::report::write(&cfg.daemon.state_dir, inc, &cfg) {
                            Ok(path) => {
                                tracing::info!(incident = %inc.id, path = %path.display(), "incident report written");
                                tell(Event::Report {
                                    incident: inc.id.clone(),
                                    path,
                                });
                            }
                            Err(e) => {
                                tracing::error!(incident = %inc.id, error = %e, "cannot write incident report")
                            }
                        }
                    }
                    Effect::Notify(n) => notify(&cfg, &outbox, n),
                    Effect::Baked { target, revision } => {
                        log_effect(&cfg, &effect);
                        snapshot(&cfg, *target, revision, &tracker, steps_token.child_token());
                    }
                    Effect::Transition {
                        incident,
                        target,
                        occasion,
                        summary,
                    } => kube_events.record(*target, incident, *occasion, summary),
                    _ => log_effect(&cfg, &effect),
                }
            }
        };

    // Incidents already counted as opened, for the metrics.
    let mut counted: std::collections::HashSet<String> = std::collections::HashSet::new();
    // What the engine of the configuration before knew, or the previous run's memory.
    let restored = match resumed_effects {
        Some(effects) => Some(effects),
        None => match store.memory() {
            Ok(None) => None,
            Ok(Some((_, body))) => match serde_json::from_str::<Memory>(&body) {
                Ok(memory) => {
                    let effects = engine.restore(memory, last);
                    tracing::info!(
                        incidents = engine.incidents().len(),
                        "state of the previous run restored"
                    );
                    Some(effects)
                }
                Err(e) => {
                    tracing::error!(error = %e, "the stored state of the previous run cannot be read; starting without it");
                    None
                }
            },
            Err(e) => {
                tracing::error!(error = %e, "cannot read the state of the previous run; starting without it");
                None
            }
        },
    };
    if let Some(effects) = restored {
        account(&metrics, &engine, &effects, &mut counted);
        persist(store, &cfg, &engine, &effects, last);
        dispatch(effects, last, false, &mut in_flight);
    }
    // Inputs queued for the configuration before, in their order.
    for (input, at) in carried {
        let now = match input {
            Input::Reading(_) => at,
            _ => at.max(last),
        };
        last = last.max(now);
        let effects = engine.step(input, now);
        persist(store, &cfg, &engine, &effects, now);
        account(&metrics, &engine, &effects, &mut counted);
        dispatch(effects, now, false, &mut in_flight);
    }
    publish(&status_tx, &cfg, &engine, last);
    // A new configuration that passed its checks and waits for the step in flight.
    let mut pending: Option<Box<Parts>> = None;
    let mut told_waiting = false;
    loop {
        if pending.is_some() && in_flight.is_empty() && !engine.acting() {
            break;
        }
        tokio::select! {
            biased;
            _ = token.cancelled() => break,
            Some((input, at)) = rx.recv() => {
                match &input {
                    Input::StepDone(r) => {
                        in_flight.remove(&r.incident);
                    }
                    Input::Reading(r) => {
                        metrics.reading(r.signal, &r.state);
                        for &rule in rules_of_signal.get(r.signal).map_or(&[][..], Vec::as_slice) {
                            metrics.evaluation(rule);
                        }
                    }
                    _ => {}
                }
                // Every input carries the time it happened. A reading is judged at the
                // time its sample was scheduled, exactly, so that samples one interval
                // apart are one interval apart for `for` and counts (a signal's readings
                // come in that order). Other inputs are kept from running behind the
                // latest time.
                let now = match input {
                    Input::Reading(_) => at,
                    _ => at.max(last),
                };
                last = last.max(now);
                let took = Instant::now();
                let effects = engine.step(input, now);
                metrics.engine_step(took.elapsed());
                persist(store, &cfg, &engine, &effects, now);
                account(&metrics, &engine, &effects, &mut counted);
                if !effects.is_empty() {
                    publish(&status_tx, &cfg, &engine, now);
                }
                dispatch(effects, now, false, &mut in_flight);
            }
            Some(request) = control_rx.recv() => {
                let now = clock.now().max(last);
                last = now;
                let effects = engine.step(Input::Command(request.command), now);
                persist(store, &cfg, &engine, &effects, now);
                account(&metrics, &engine, &effects, &mut counted);
                publish(&status_tx, &cfg, &engine, now);
                let answer = match effects.iter().find_map(|e| match e {
                    Effect::CommandRejected { reason } => Some(reason.clone()),
                    _ => None,
                }) {
                    Some(reason) => Err(reason),
                    None => Ok("done".to_owned()),
                };
                dispatch(effects, now, false, &mut in_flight);
                let _ = request.reply.send(answer);
            }
            Some(reload) = async {
                match reloads.as_deref_mut() {
                    Some(r) => r.recv().await,
                    None => std::future::pending().await,
                }
            } => {
                if let Some(sd) = systemd {
                    sd.reloading("reloading the configuration");
                }
                match prepare_reload(&cfg, reload, &shared.client).await {
                    Ok(parts) => {
                        if pending.replace(Box::new(parts)).is_some() {
                            tracing::info!("a newer configuration replaces the one waiting to be applied");
                        }
                        told_waiting = false;
                    }
                    Err(reason) => {
                        tracing::error!(reason = %reason, "reload refused; the running configuration stays");
                        tell(Event::ReloadRefused(reason));
                        if let Some(sd) = systemd {
                            sd.ready(&status);
                        }
                    }
                }
                if pending.is_some() && (!in_flight.is_empty() || engine.acting()) && !told_waiting {
                    told_waiting = true;
                    tracing::info!(steps = in_flight.len(), "the new configuration waits for the rollback step in flight");
                }
            }
            _ = ticker.tick() => {
                let now = clock.now().max(last);
                last = now;
                let took = Instant::now();
                let effects = engine.step(Input::Tick, now);
                metrics.engine_step(took.elapsed());
                persist(store, &cfg, &engine, &effects, now);
                account(&metrics, &engine, &effects, &mut counted);
                if !effects.is_empty() {
                    publish(&status_tx, &cfg, &engine, now);
                }
                dispatch(effects, now, false, &mut in_flight);
            }
            _ = async {
                match watchdog.as_mut() {
                    Some(t) => t.tick().await,
                    None => std::future::pending().await,
                }
            } => {
                if let Some(sd) = systemd {
                    sd.ping();
                }
            }
        }
        health.engine_turned(clock.now().0);
        if let Some(sd) = systemd {
            let now_status = match engine.incidents() {
                [] => idle_status(&cfg),
                open => incidents_status(open),
            };
            if now_status != status {
                sd.status(&now_status);
                status = now_status;
            }
        }
    }

    if !token.is_cancelled()
        && let Some(parts) = pending
    {
        // A reload: no step is in flight. The sources stop; what they had queued is kept
        // for the new configuration; the outbox's workers finish the message they are
        // sending (what is queued stays in the store for the new workers); the listener's
        // clone stops accepting while the new one takes over.
        sources_token.cancel();
        let mut queued = Vec::new();
        let sources_stop = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            tokio::select! {
                _ = sources_tracker.wait() => break,
                Some(item) = rx.recv() => queued.push(item),
                _ = tokio::time::sleep_until(sources_stop) => {
                    tracing::warn!("some sources did not stop within 10s for the reload; going on without them");
                    break;
                }
            }
        }
        while let Ok(item) = rx.try_recv() {
            queued.push(item);
        }
        let mut watches = Vec::new();
        for w in watchers {
            if let Ok(Some(watch)) = w.await {
                watches.push(watch);
            }
        }
        // A watch that did not stop in time is not waited for: its signal starts afresh.
        let mut pods = Vec::new();
        for w in pod_watchers {
            if w.is_finished()
                && let Ok(memory) = w.await
            {
                pods.push(memory);
            }
        }
        let carried = queued
            .into_iter()
            .filter_map(|(input, at)| {
                crate::engine::reload::carry_over(&cfg, &parts.cfg, input).map(|i| (i, at))
            })
            .collect();
        let _ = flush_tx.send(Some(tokio::time::Instant::now()));
        outbox_tracker.close();
        // A notifier may be in the middle of a slow send: wait for it (so that the new
        // workers never send the same message again), pinging systemd meanwhile.
        let outbox_stop = tokio::time::Instant::now() + longest_send(&cfg);
        let mut alive = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = outbox_tracker.wait() => break,
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
        api_stop.cancel();
        steps_token.cancel();
        tracker.close();
        return Ended::Reload(
            parts,
            Box::new(Handover {
                engine,
                carried,
                last,
                receiver: kept_receiver,
                watches,
                pods,
            }),
        );
    }

    // Drain: sources stop now; in-flight steps get the drain timeout to finish. A lost
    // Lease cancels its steps instead, and the process goes on as a standby.
    if shared.shutdown.is_cancelled() {
        tracing::info!(in_flight = in_flight.len(), "rearguard stopping");
        health.set_stopping();
        if let Some(sd) = systemd {
            sd.stopping(&format!(
                "stopping: {} step(s) in flight, then the outbox is flushed",
                in_flight.len()
            ));
        }
    } else {
        let why = format!(
            "leadership lost: draining {} step(s) in flight",
            in_flight.len()
        );
        tracing::warn!(in_flight = in_flight.len(), "leadership lost: draining");
        health.set_standby(Some(why.clone()));
        if let Some(sd) = systemd {
            sd.status(&format!("standby: {why}"));
        }
        // Another replica may act from now on: what this one started is cancelled at
        // once (its processes killed), not waited for. Those steps stay unrecorded
        // (ordered, never finished), like a step the fence refused: this store
        // escalates them if it is ever restored, and never runs them again.
        for incident in in_flight.keys() {
            tracing::error!(incident = %incident, "step cancelled: this replica no longer holds the lease");
        }
        in_flight.clear();
        steps_token.cancel();
    }
    sources_token.cancel();
    let deadline = tokio::time::Instant::now() + cfg.daemon.drain_timeout;
    while !in_flight.is_empty() {
        // A step the fence refused never sends a result.
        let received = tokio::select! {
            r = tokio::time::timeout_at(deadline, rx.recv()) => r,
            Some(incident) = unstarted_rx.recv() => {
                in_flight.remove(&incident);
                continue;
            }
        };
        match received {
            Ok(Some((input, at))) => {
                let is_step = matches!(input, Input::StepDone(_));
                if let Input::StepDone(r) = &input {
                    in_flight.remove(&r.incident);
                }
                if is_step {
                    let now = at.max(last);
                    last = now;
                    let took = Instant::now();
                    let effects = engine.step(input, now);
                    metrics.engine_step(took.elapsed());
                    persist(store, &cfg, &engine, &effects, now);
                    account(&metrics, &engine, &effects, &mut counted);
                    if !effects.is_empty() {
                        publish(&status_tx, &cfg, &engine, now);
                    }
                    dispatch(effects, now, true, &mut in_flight);
                }
            }
            Ok(None) => break,
            Err(_) => {
                tracing::warn!(
                    steps = in_flight.len(),
                    "drain timeout: abandoning in-flight steps"
                );
                break;
            }
        }
    }
    // Dropping the guards cancels what is left; actions kill their processes.
    in_flight.clear();
    steps_token.cancel();
    // Open incidents stay open: the state store has them, and the next start resumes
    // them (a step abandoned here is reported then as interrupted, not run again).
    for inc in engine.incidents() {
        tracing::warn!(incident = %inc.id, state = inc.state.name(), "incident left open; the next start resumes it");
    }
    drop(tx);
    // The outbox delivers what it can within the drain timeout; the rest stays in the
    // store for the next run.
    let flush_until = tokio::time::Instant::now() + cfg.daemon.drain_timeout;
    let _ = flush_tx.send(Some(flush_until));
    outbox_tracker.close();
    let bound = cfg.daemon.drain_timeout + longest_send(&cfg) + Duration::from_secs(1);
    if tokio::time::timeout(bound, outbox_tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("the outbox did not stop in time");
    }
    // The listener goes last, so that /readyz says "stopping" until the end.
    api_stop.cancel();
    sources_tracker.close();
    tracker.close();
    let everything = async {
        sources_tracker.wait().await;
        tracker.wait().await;
    };
    if tokio::time::timeout(Duration::from_secs(5), everything)
        .await
        .is_err()
    {
        tracing::warn!("some tasks did not stop within 5s");
    }
    match store.pending_notifiers() {
        Ok(waiting) => {
            for (notifier, messages) in waiting {
                tracing::warn!(notifier = %notifier, messages, "notifications not yet delivered stay in the outbox for the next start");
            }
        }
        Err(e) => tracing::error!(error = %e, "cannot read the outbox"),
    }
    Ended::Stopped
}

/// How long the slowest notifier may take to send one message, with its retries.
fn longest_send(cfg: &Config) -> Duration {
    cfg.notifiers
        .iter()
        .map(|n| n.timeout * 3)
        .max()
        .unwrap_or_default()
}

/// The `STATUS=` line while no incident is open.
fn idle_status(cfg: &Config) -> String {
    format!(
        "watching {} target(s) with {} rule(s); no open incident",
        cfg.targets.len(),
        cfg.rules.len()
    )
}

/// The `STATUS=` line with open incidents: the first few and their states.
fn incidents_status(open: &[crate::engine::Incident]) -> String {
    let shown: Vec<String> = open
        .iter()
        .take(3)
        .map(|i| format!("{} ({})", i.id, i.state.name()))
        .collect();
    let more = open.len().saturating_sub(shown.len());
    format!(
        "{} open incident(s): {}{}",
        open.len(),
        shown.join(", "),
        if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        }
    )
}

async fn sample_loop(
    signal: usize,
    source: Arc<Source>,
    interval: Duration,
    timeout: Duration,
    clock: Clock,
    tx: mpsc::Sender<(Input, Ts)>,
    token: CancellationToken,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        // The scheduled time of the tick, not when it ran: samples stay exactly one
        // interval apart in engine time, so `for` and counts are not shifted by jitter.
        let at = tokio::select! {
            _ = token.cancelled() => return,
            t = ticker.tick() => clock.at(t),
        };
        let state = tokio::select! {
            _ = token.cancelled() => return,
            r = source.sample_within(timeout) => r,
        };
        let reading = crate::engine::Reading { signal, state };
        if tx.send((Input::Reading(reading), at)).await.is_err() {
            return;
        }
    }
}

/// Hands the engine what a watched source (`cgroup_oom`) sees, each reading at the engine
/// time it was seen.
///
/// Returns the watch when stopped, so that a reload can hand it to the next
/// configuration: its counters go on, and no kill between the two is lost.
async fn watch_loop(
    signal: usize,
    mut watch: source::cgroup_oom::OomWatch,
    clock: Clock,
    tx: mpsc::Sender<(Input, Ts)>,
    token: CancellationToken,
) -> Option<(usize, source::cgroup_oom::OomWatch)> {
    loop {
        // `next` is cancel-safe: a kill it had not returned yet is read again.
        let states = tokio::select! {
            _ = token.cancelled() => return Some((signal, watch)),
            s = watch.next() => s,
        };
        let at = clock.now();
        for state in states {
            let reading = crate::engine::Reading { signal, state };
            if tx.send((Input::Reading(reading), at)).await.is_err() {
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
    spec: crate::config::KubePodsSpec,
    interval: Duration,
    memory: source::kube_pods::PodMemory,
    clock: Clock,
    tx: mpsc::Sender<(Input, Ts)>,
    token: CancellationToken,
) -> (usize, source::kube_pods::PodMemory) {
    let (readings_tx, mut readings) = mpsc::channel(64);
    let watching = source::kube_pods::watch(spec, interval, memory, readings_tx, token.clone());
    tokio::pin!(watching);
    let send = |state| {
        let reading = crate::engine::Reading { signal, state };
        tx.send((Input::Reading(reading), clock.now()))
    };
    loop {
        let state = tokio::select! {
            memory = &mut watching => {
                // Events the watch saw before it stopped still reach the engine: the
                // memory handed on has them as seen.
                while let Ok(state) = readings.try_recv() {
                    if send(state).await.is_err() {
                        break;
                    }
                }
                return (signal, memory);
            }
            Some(state) = readings.recv() => state,
        };
        if send(state).await.is_err() {
            return (signal, watching.await);
        }
    }
}

async fn change_loop(
    target: usize,
    name: String,
    spec: crate::config::ChangeSpec,
    clock: Clock,
    tx: mpsc::Sender<(Input, Ts)>,
    token: CancellationToken,
) {
    let interval = match &spec {
        crate::config::ChangeSpec::ReleaseSymlink { interval, .. }
        | crate::config::ChangeSpec::Exec { interval, .. } => *interval,
        // Only after a failed observation: the Deployment is watched (below).
        crate::config::ChangeSpec::KubeDeployment(_) => Duration::from_secs(10),
    };
    let mut watcher = match &spec {
        crate::config::ChangeSpec::KubeDeployment(t) => {
            Some(source::kube_deployment::Watcher::new(t))
        }
        _ => None,
    };
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last_error: Option<String> = None;
    // When the previous observation began: a change seen now happened after it.
    let mut previous: Option<Ts> = None;
    loop {
        match watcher.as_mut() {
            Some(w) if last_error.is_none() => tokio::select! {
                _ = token.cancelled() => return,
                _ = w.changed() => {}
            },
            _ => tokio::select! {
                _ = token.cancelled() => return,
                _ = ticker.tick() => {}
            },
        }
        let started = clock.now();
        let observed = tokio::select! {
            _ = token.cancelled() => return,
            o = async {
                match watcher.as_mut() {
                    Some(w) => w.observe().await,
                    None => source::change::observe(&spec).await,
                }
            } => o,
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
                if tx.send((change, started)).await.is_err() {
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

#[allow(clippy::too_many_arguments)]
async fn run_step(
    action: Arc<Action>,
    metrics: Arc<Metrics>,
    order: StepOrder,
    target: String,
    timeout: Duration,
    clock: Clock,
    tx: mpsc::Sender<(Input, Ts)>,
    cancel: CancellationToken,
    fence: Option<Arc<crate::leader::Fence>>,
    unstarted: mpsc::UnboundedSender<String>,
) {
    // Fenced right before it acts: a replica that lost the Lease never starts a step. The
    // step stays unrecorded (ordered, never finished), so the engine does not count it as
    // a failed rollback; the generation ends, and a later restore of this store
    // escalates it instead of running it.
    if let Some(fence) = &fence {
        let checked = tokio::select! {
            c = fence.check() => c,
            _ = cancel.cancelled() => return,
        };
        if let Err(e) = checked {
            tracing::error!(incident = %order.incident, step = order.step, error = %e, "step not started: this replica no longer holds the lease");
            let _ = unstarted.send(order.incident.clone());
            return;
        }
    }
    let ctx = ActionContext {
        incident: order.incident.clone(),
        target,
        rule: order.rule.clone(),
        from_revision: order.from_revision.clone(),
        to_revision: order.to_revision.clone(),
        bad_revisions: order.bad_revisions.clone(),
        attempt: order.attempt,
    };
    let started = Instant::now();
    let result = tokio::select! {
        out = action.run(&ctx, timeout) => StepResult {
            incident: order.incident.clone(),
            step: order.step,
            attempt: order.attempt,
            ok: out.ok,
            duration_ms: out.duration.as_millis() as u64,
            output: out.output,
            error: out.error,
        },
        _ = cancel.cancelled() => StepResult {
            incident: order.incident.clone(),
            step: order.step,
            attempt: order.attempt,
            ok: false,
            duration_ms: started.elapsed().as_millis() as u64,
            output: String::new(),
            error: Some("abandoned: rearguard stopped before the step finished".to_owned()),
        },
    };
    metrics.action(order.plan, order.step, result.ok);
    let _ = tx.send((Input::StepDone(result), clock.now())).await;
}

/// Writes what an engine step leaves behind (its memory, the rule transitions, closed
/// incidents) to the state store, before the step's effects are carried out. A failure
/// is logged and the daemon goes on: acting is not held back by a broken disk.
fn persist(store: &Store, cfg: &Config, engine: &Engine, effects: &[Effect], now: Ts) {
    if effects.is_empty() {
        return;
    }
    let mut record = StepRecord::default();
    match serde_json::to_string(&engine.memory(now)) {
        Ok(body) => record.memory = Some((now.0, body)),
        Err(e) => tracing::error!(error = %e, "cannot encode the engine's state"),
    }
    let incident_of = |target: usize| {
        engine
            .incidents()
            .iter()
            .find(|i| i.target == target)
            .map(|i| i.id.clone())
            .or_else(|| {
                effects.iter().find_map(|e| match e {
                    Effect::IncidentClosed(i) if i.target == target => Some(i.id.clone()),
                    _ => None,
                })
            })
    };
    for effect in effects {
        match effect {
            Effect::RuleChanged { rule, transition } => {
                let r = &cfg.rules[*rule];
                record.decisions.push(Decision {
                    at_ms: now.0,
                    rule: r.name.clone(),
                    target: cfg.targets[r.target].name.clone(),
                    incident: incident_of(r.target),
                    from: transition.from.name().to_owned(),
                    to: transition.to.name().to_owned(),
                    evidence: transition.evidence.clone(),
                });
            }
            Effect::IncidentClosed(inc) => match serde_json::to_string(inc) {
                Ok(body) => record.closed.push((
                    inc.id.clone(),
                    inc.target_name.clone(),
                    inc.opened_at.0,
                    inc.closed_at.unwrap_or(now).0,
                    inc.outcome
                        .as_ref()
                        .map_or("open", Outcome::name)
                        .to_owned(),
                    body,
                )),
                Err(e) => {
                    tracing::error!(incident = %inc.id, error = %e, "cannot encode a closed incident")
                }
            },
            _ => {}
        }
    }
    if let Err(e) = store.record_step(&record) {
        tracing::error!(error = %e, "cannot write the engine's state to the state store");
    }
}

/// Counts what a step did in the metrics: rule phases, incidents opened and closed, and
/// the outbox's backlog after notifications were queued.
fn account(
    metrics: &Metrics,
    engine: &Engine,
    effects: &[Effect],
    counted: &mut std::collections::HashSet<String>,
) {
    for inc in engine.incidents() {
        if counted.insert(inc.id.clone()) {
            metrics.incident_opened(inc.target, inc.cause);
        }
    }
    for effect in effects {
        match effect {
            Effect::RuleChanged { rule, transition } => metrics.rule_phase(*rule, transition.to),
            Effect::IncidentClosed(inc) => {
                // Opened and closed within one step, or opened in an earlier run.
                if !counted.remove(&inc.id) {
                    metrics.incident_opened(inc.target, inc.cause);
                }
                if let Some(outcome) = &inc.outcome {
                    metrics.incident_closed(inc.target, outcome);
                }
            }
            _ => {}
        }
    }
}

/// Publishes what the control API's readers see: targets, rules and open incidents.
fn publish(
    status: &tokio::sync::watch::Sender<Arc<control::Status>>,
    cfg: &Config,
    engine: &Engine,
    now: Ts,
) {
    let memory = engine.memory(now);
    let snapshot = control::Status {
        mode: match cfg.daemon.mode {
            crate::config::Mode::Enforce => "enforce",
            crate::config::Mode::Shadow => "shadow",
        }
        .to_owned(),
        paused_all: memory.paused_all,
        targets: memory
            .targets
            .into_iter()
            .map(|t| control::TargetStatus {
                name: t.name,
                revision: t.revision,
                paused: t.paused,
                breaker: t.breaker,
                bad: t.bad.into_iter().collect(),
            })
            .collect(),
        rules: cfg
            .rules
            .iter()
            .enumerate()
            .map(|(i, r)| control::RuleStatus {
                name: r.name.clone(),
                target: cfg.targets[r.target].name.clone(),
                phase: engine.rule_phase(i).name().to_owned(),
                silenced_until: engine.silenced_until(i).map(Ts::rfc3339),
            })
            .collect(),
        incidents: engine.incidents().to_vec(),
    };
    status.send_replace(Arc::new(snapshot));
}

/// Sets the outbox backlog gauge of every notifier (zero for those with nothing queued).
fn count_pending(store: &Store, metrics: &Metrics, names: &[String]) {
    match store.pending_notifiers() {
        Ok(waiting) => {
            for name in names {
                let n = waiting
                    .iter()
                    .find(|(w, _)| w == name)
                    .map_or(0, |(_, n)| *n);
                metrics.outbox_pending(name, n);
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot count the outbox"),
    }
}

/// Writes a notification's messages to the outbox. A notification with no notifier (none
/// is configured) and one the store cannot take are logged in full, so that it is never
/// lost without a trace.
fn notify(cfg: &Config, outbox: &Outbox, n: &Notification) {
    let level = n.level.map(|l| cfg.escalation[l].name.as_str());
    if n.notifiers.is_empty() {
        return log_notification(n);
    }
    match outbox.enqueue(n, level) {
        Ok(messages) => {
            let to: Vec<&str> = n
                .notifiers
                .iter()
                .map(|&i| cfg.notifiers[i].name.as_str())
                .collect();
            tracing::debug!(incident = %n.incident, occasion = n.occasion.name(), messages = messages.len(), notifiers = ?to, "notification queued");
        }
        Err(e) => {
            tracing::error!(incident = %n.incident, error = %e, "cannot write a notification to the outbox; it is not sent");
            log_notification(n);
        }
    }
}

fn log_notification(n: &Notification) {
    crate::notify::log(&n.incident, n.occasion, &n.summary);
}

/// Logs what the engine decided.
fn log_effect(cfg: &Config, effect: &Effect) {
    match effect {
        Effect::RuleChanged { rule, transition } => tracing::info!(
            rule = %cfg.rules[*rule].name,
            from = transition.from.name(),
            to = transition.to.name(),
            evidence = %transition.evidence,
            "rule changed"
        ),
        Effect::ChangeObserved {
            target,
            from,
            to,
            previous_healthy,
        } => tracing::info!(
            target = %cfg.targets[*target].name,
            from = %from,
            to = %to,
            previous_healthy,
            "revision changed"
        ),
        Effect::Timeline {
            incident, entry, ..
        } => {
            tracing::info!(incident = %incident, "{}", entry.text)
        }
        Effect::CommandRejected { reason } => tracing::warn!(reason = %reason, "command rejected"),
        Effect::Baked { target, revision } => tracing::info!(
            target = %cfg.targets[*target].name,
            revision = %revision,
            "revision baked: its configuration is known good"
        ),
        Effect::Notify(_)
        | Effect::RunStep(_)
        | Effect::IncidentClosed(_)
        | Effect::Transition { .. } => {}
    }
}

/// Snapshots a baked revision's ConfigMaps and Secrets off the engine's loop (a task on
/// the steps' tracker, each try bounded to a minute) and logs the outcome; only for a
/// `kube_deployment` target. A try that fails is tried again after a backoff (10 s
/// doubling to 5 min, for an hour: `kube_snapshot::retry_waits`), each distinct error
/// logged once, until cancelled; a refusal (the Deployment moved to another revision, a
/// snapshot object holds other content, a required object is missing) is not retried,
/// as waiting does not change it. In shadow mode nothing is written.
fn snapshot(
    cfg: &Config,
    target: usize,
    revision: &str,
    tracker: &TaskTracker,
    cancel: CancellationToken,
) {
    let t = &cfg.targets[target];
    let Some(crate::config::ChangeSpec::KubeDeployment(spec)) = t.change.clone() else {
        return;
    };
    let (name, revision, keep) = (t.name.clone(), revision.to_owned(), t.keep_snapshots);
    if cfg.daemon.mode == crate::config::Mode::Shadow {
        tracing::info!(target = %name, revision = %revision, "shadow mode: would snapshot revision {revision}");
        return;
    }
    tracker.spawn(async move {
        use crate::action::kube_snapshot;
        let handle = crate::kube::Handle::new(&spec.access);
        let mut waits = kube_snapshot::retry_waits();
        let mut said: Option<String> = None;
        loop {
            let taken = kube_snapshot::take(&spec, &handle, &revision, keep);
            let (error, again) = tokio::select! {
                _ = cancel.cancelled() => {
                    tracing::info!(target = %name, revision = %revision, "snapshot abandoned: rearguard is stopping or reloading");
                    return;
                }
                r = tokio::time::timeout(Duration::from_secs(60), taken) => match r {
                    Ok(Ok(text)) => {
                        tracing::info!(target = %name, revision = %revision, "{text}");
                        return;
                    }
                    Ok(Err(e)) => {
                        let again = !matches!(e, crate::kube::StepError::Refused(_));
                        (e.to_string(), again)
                    }
                    Err(_) => ("timed out after 1m".to_owned(), true),
                },
            };
            let wait = if again { waits.next() } else { None };
            if said.as_ref() != Some(&error) {
                match wait {
                    Some(w) => tracing::warn!(target = %name, revision = %revision, error = %error, retry_in = ?w, "cannot snapshot the revision's configuration; trying again"),
                    None => tracing::warn!(target = %name, revision = %revision, error = %error, "cannot snapshot the revision's configuration"),
                }
                said = Some(error);
            }
            let Some(wait) = wait else {
                if again {
                    tracing::warn!(target = %name, revision = %revision, "snapshot given up after an hour of failures: the revision has no snapshot to restore from");
                }
                return;
            };
            tokio::select! {
                _ = cancel.cancelled() => {
                    tracing::info!(target = %name, revision = %revision, "snapshot abandoned: rearguard is stopping or reloading");
                    return;
                }
                _ = tokio::time::sleep(wait) => {}
            }
        }
    });
}
