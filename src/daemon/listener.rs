//! The daemon's HTTP listener on `daemon.listen`: serving a router on a clone of the
//! process's bound socket, the router of a generation (metrics, health, the control
//! API), and Alertmanager's webhook route with its resend loop.
//!
//! It must not bind a socket of its own (a reload never closes the port) nor hold
//! engine state: readings go to the engine's loop through its channel, in the order
//! the receiver judged them.

use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, StatusCode};
use tokio::sync::{Semaphore, mpsc};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Clock, Shared};
use crate::api::server::{self, Limits};
use crate::api::{Metrics, control};
use crate::config::{Config, SourceSpec};
use crate::engine::{Input, Ts};
use crate::source::alertmanager;

/// Where Alertmanager's webhook is received on `daemon.listen`.
pub const WEBHOOK_PATH: &str = "/webhook/alertmanager";

/// The most webhook body bytes read at once, over every delivery in progress: four
/// bodies of the largest size. A delivery over it is refused with 503 (Alertmanager
/// retries), so that senders can never make rearguard hold more than this in bodies.
pub const BODIES_IN_FLIGHT: usize = 4 * alertmanager::BODY_LIMIT;

/// How long reading one webhook body may take.
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `app` on a clone of the daemon's listening socket until `stop` is cancelled,
/// on a task of `tracker`, within `cfg`'s listener limits. Whether it serves (a socket
/// that cannot be cloned is logged).
pub(super) fn serve(
    shared: &Shared,
    cfg: &Config,
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
            let limits = limits(cfg);
            tracker.spawn(server::serve(listener, app, limits, stop.clone()));
            true
        }
        Err(e) => {
            tracing::error!(addr = %shared.listening, error = %e, "cannot serve on the listener");
            false
        }
    }
}

/// The listener's limits in `cfg`.
fn limits(cfg: &Config) -> Limits {
    let max = cfg.daemon.listener.max_connections;
    Limits::new(
        usize::try_from(max).unwrap_or(usize::MAX),
        cfg.daemon.listener.header_read_timeout,
    )
}

/// Descriptors the process needs besides its connections and per-part descriptors:
/// standard streams, the runtime's epoll and wakers, the listening socket, the state
/// store's database, journal and WAL files, journald's and systemd's sockets, signal
/// handling, with room to spare.
pub(super) const RESERVED_DESCRIPTORS: u64 = 64;

/// Descriptors each signal, target and notifier may hold at once: a pooled connection or
/// two, an exec check's or a step's pipes and the child's pidfd, a watch's inotify or
/// eventfd and the file it reads.
pub(super) const DESCRIPTORS_PER_PART: u64 = 8;

/// How many descriptors `cfg` may need at once: `RESERVED_DESCRIPTORS`, one per
/// connection of `daemon.max_connections`, and `DESCRIPTORS_PER_PART` for each signal,
/// target and notifier.
pub fn descriptors_needed(cfg: &Config) -> u64 {
    let parts = (cfg.signals.len() + cfg.targets.len() + cfg.notifiers.len()) as u64;
    RESERVED_DESCRIPTORS
        + u64::from(cfg.daemon.listener.max_connections)
        + DESCRIPTORS_PER_PART * parts
}

/// Raises the process's soft limit of open files to its hard limit, then warns when
/// what `cfg` may need does not fit: a process out of descriptors cannot probe, run
/// checks or answer (each then a source error, never a breach), so the limit must be
/// raised (`LimitNOFILE=`) or `daemon.max_connections` lowered.
pub(super) fn fit_descriptors(cfg: &Config) {
    let needed = descriptors_needed(cfg);
    let limit = match raise_open_files() {
        Ok(limit) => limit,
        Err(e) => {
            tracing::warn!(error = %e, needed, "cannot read the limit of open files");
            return;
        }
    };
    if limit < needed {
        tracing::warn!(
            limit,
            needed,
            max_connections = cfg.daemon.listener.max_connections,
            "the limit of open files is below what the configuration may need: raise LimitNOFILE or lower daemon.max_connections"
        );
    } else {
        tracing::debug!(
            limit,
            needed,
            "the limit of open files fits the configuration"
        );
    }
}

/// Sets the soft `RLIMIT_NOFILE` to the hard one where it is lower, and returns the soft
/// limit in force (the old one when raising is refused, e.g. by a seccomp filter).
fn raise_open_files() -> std::io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the rlimit passed.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return Ok(raised.rlim_cur);
        }
        let e = std::io::Error::last_os_error();
        tracing::debug!(error = %e, "cannot raise the soft limit of open files");
    }
    Ok(lim.rlim_cur)
}

/// How long `/healthz` waits for the engine's loop to turn before it says it stalled.
pub(super) fn stall_after(cfg: &Config) -> Duration {
    (cfg.daemon.tick * 5).max(Duration::from_secs(5))
}

/// A generation's router: metrics, health and readiness, the control API and the status
/// page.
pub(super) fn app(
    shared: &Shared,
    cfg: &Config,
    metrics: &Arc<Metrics>,
    control: control::Control,
) -> axum::Router {
    let control = Arc::new(control);
    crate::api::router(
        Arc::clone(metrics),
        Arc::clone(&shared.health),
        stall_after(cfg),
    )
    .merge(control::router(Arc::clone(&control)))
    .merge(crate::api::status_page::router(
        control,
        Arc::new(cfg.clone()),
    ))
}

/// What the webhook handler needs.
pub(super) struct Hook {
    receiver: Arc<alertmanager::Receiver>,
    tx: mpsc::Sender<(Input, Ts)>,
    clock: Clock,
    /// Held across judging a delivery and queueing its readings, so that two deliveries
    /// reach the engine in the order the receiver judged them.
    order: tokio::sync::Mutex<()>,
    /// Cancelled when rearguard stops taking readings; deliveries are refused after it.
    stop: CancellationToken,
    /// Bytes of bodies being read, at most [`BODIES_IN_FLIGHT`]: one permit per byte
    /// announced (`Content-Length`), or [`alertmanager::BODY_LIMIT`] when not announced.
    bodies: Semaphore,
}

impl Hook {
    pub(super) fn new(
        receiver: Arc<alertmanager::Receiver>,
        tx: mpsc::Sender<(Input, Ts)>,
        clock: Clock,
        stop: CancellationToken,
    ) -> Arc<Hook> {
        Arc::new(Hook {
            receiver,
            tx,
            clock,
            order: tokio::sync::Mutex::new(()),
            stop,
            bodies: Semaphore::new(BODIES_IN_FLIGHT),
        })
    }

    /// The webhook's route on [`WEBHOOK_PATH`]. The handler reads a body itself, only
    /// after the token and within its limits.
    pub(super) fn route(self: &Arc<Hook>) -> axum::Router {
        axum::Router::new()
            .route(WEBHOOK_PATH, axum::routing::post(webhook))
            .with_state(Arc::clone(self))
    }
}

/// How often the receiver's state is sent again: the shortest interval of the
/// configuration's `alertmanager` signals.
pub(super) fn resend_every(cfg: &Config) -> Duration {
    cfg.signals
        .iter()
        .filter(|s| matches!(s.source, SourceSpec::Alertmanager(_)))
        .map(|s| s.interval)
        .min()
        .unwrap_or(Duration::from_secs(10))
}

type Answer = (StatusCode, HeaderMap, String);

fn answer(status: StatusCode, text: impl std::fmt::Display) -> Answer {
    (status, HeaderMap::new(), format!("{text}\n"))
}

fn stopping() -> Answer {
    answer(StatusCode::SERVICE_UNAVAILABLE, "rearguard is stopping")
}

/// Receives one Alertmanager delivery. Answers 200 once its readings are queued for the
/// engine, so that Alertmanager retries anything not taken.
///
/// The token is checked on the headers, before any of the body is read: a sender without
/// it gets 401 and costs no body. A body larger than the receiver's limit is refused by
/// its `Content-Length` before it is read, and bodies in flight share
/// [`BODIES_IN_FLIGHT`] (503 with `Retry-After` when it is taken).
async fn webhook(
    axum::extract::State(hook): axum::extract::State<Arc<Hook>>,
    request: axum::extract::Request,
) -> Answer {
    let (head, body) = request.into_parts();
    let auth = head
        .headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if let Err(rejection) = hook.receiver.authorize(auth) {
        return refused(&hook, &rejection);
    }
    let body = match read_body(&hook, &head.headers, body).await {
        Ok(body) => body,
        Err(answer) => return answer,
    };
    let _order = hook.order.lock().await;
    if hook.stop.is_cancelled() {
        return stopping();
    }
    let now = hook.clock.now();
    match hook.receiver.receive(auth, &body, now) {
        Ok(delivery) => {
            let summary = delivery.to_string();
            for r in delivery.readings {
                if hook.tx.send((Input::Reading(r), now)).await.is_err() {
                    return stopping();
                }
            }
            tracing::debug!(summary = %summary, "alertmanager webhook accepted");
            answer(StatusCode::OK, summary)
        }
        // The receiver counted and logged it, within its rate limit.
        Err(rejection) => rejected(&rejection),
    }
}

/// A refusal made here, before the receiver judged the body: counted and logged through
/// the receiver's rate limit like the receiver's own.
fn refused(hook: &Hook, rejection: &alertmanager::Rejection) -> Answer {
    hook.receiver.log_refusal(rejection, hook.clock.now());
    rejected(rejection)
}

fn rejected(rejection: &alertmanager::Rejection) -> Answer {
    let status = StatusCode::from_u16(rejection.status).unwrap_or(StatusCode::BAD_REQUEST);
    answer(status, &rejection.reason)
}

/// Reads an authorized delivery's body within the receiver's limit, its share of
/// [`BODIES_IN_FLIGHT`] and [`BODY_READ_TIMEOUT`].
async fn read_body(
    hook: &Hook,
    headers: &HeaderMap,
    body: axum::body::Body,
) -> Result<axum::body::Bytes, Answer> {
    let limit = alertmanager::BODY_LIMIT;
    let announced = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(n) = announced.filter(|n| *n > limit as u64) {
        let reason = format!("body of {n} bytes is over the limit of {limit} bytes");
        return Err(refused(
            hook,
            &alertmanager::Rejection {
                status: 413,
                reason,
            },
        ));
    }
    let share = announced.map_or(limit, |n| n as usize).max(1);
    let Ok(_permit) = hook.bodies.try_acquire_many(share as u32) else {
        let text = "too many webhook bodies in flight, retry later".to_owned();
        let rejection = alertmanager::Rejection {
            status: 503,
            reason: text.clone(),
        };
        hook.receiver.log_refusal(&rejection, hook.clock.now());
        let mut headers = HeaderMap::new();
        headers.insert(
            axum::http::header::RETRY_AFTER,
            HeaderValue::from_static("1"),
        );
        return Err((
            StatusCode::SERVICE_UNAVAILABLE,
            headers,
            format!("{text}\n"),
        ));
    };
    match tokio::time::timeout(BODY_READ_TIMEOUT, axum::body::to_bytes(body, limit)).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(_)) => {
            let reason = format!("body over the limit of {limit} bytes, or cut short");
            Err(refused(
                hook,
                &alertmanager::Rejection {
                    status: 413,
                    reason,
                },
            ))
        }
        Err(_) => Err(answer(
            StatusCode::REQUEST_TIMEOUT,
            "the body did not arrive in time",
        )),
    }
}

/// Re-sends the receiver's current state of every alertmanager signal each `interval`:
/// a push source otherwise reads only on change, and rules that count evaluations
/// (`consecutive`, `m_of_n`, `for`) and verification after a plan need readings.
pub(super) async fn resend_loop(hook: Arc<Hook>, interval: Duration, token: CancellationToken) {
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
