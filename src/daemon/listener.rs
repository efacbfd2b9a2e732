//! The daemon's HTTP listener on `daemon.listen`: serving a router on a clone of the
//! process's bound socket, the router of a generation (metrics, health, the control
//! API), and Alertmanager's webhook route with its resend loop.
//!
//! It must not bind a socket of its own (a reload never closes the port) nor hold
//! engine state: readings go to the engine's loop through its channel, in the order
//! the receiver judged them.

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use tokio::sync::mpsc;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Clock, Shared};
use crate::api::{Metrics, control};
use crate::config::{Config, SourceSpec};
use crate::engine::{Input, Ts};
use crate::source::alertmanager;

/// Where Alertmanager's webhook is received on `daemon.listen`.
pub const WEBHOOK_PATH: &str = "/webhook/alertmanager";

/// Serves `app` on a clone of the daemon's listening socket until `stop` is cancelled,
/// on a task of `tracker`. Whether it serves (a socket that cannot be cloned is logged).
pub(super) fn serve(
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

/// How long `/healthz` waits for the engine's loop to turn before it says it stalled.
pub(super) fn stall_after(cfg: &Config) -> Duration {
    (cfg.daemon.tick * 5).max(Duration::from_secs(5))
}

/// A generation's router: metrics, health and readiness, and the control API.
pub(super) fn app(
    shared: &Shared,
    cfg: &Config,
    metrics: &Arc<Metrics>,
    control: control::Control,
) -> axum::Router {
    crate::api::router(
        Arc::clone(metrics),
        Arc::clone(&shared.health),
        stall_after(cfg),
    )
    .merge(control::router(Arc::new(control)))
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
        })
    }

    /// The webhook's route on [`WEBHOOK_PATH`], bounded to the receiver's body limit.
    pub(super) fn route(self: &Arc<Hook>) -> axum::Router {
        axum::Router::new()
            .route(WEBHOOK_PATH, axum::routing::post(webhook))
            .layer(axum::extract::DefaultBodyLimit::max(
                alertmanager::BODY_LIMIT,
            ))
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

fn stopping() -> (StatusCode, String) {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        "rearguard is stopping\n".to_owned(),
    )
}

/// Receives one Alertmanager delivery. Answers 200 once its readings are queued for the
/// engine, so that Alertmanager retries anything not taken.
async fn webhook(
    axum::extract::State(hook): axum::extract::State<Arc<Hook>>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> (StatusCode, String) {
    let auth = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
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
            (StatusCode::OK, format!("{summary}\n"))
        }
        Err(rejection) => {
            // The receiver logged it, within its rate limit.
            let status = StatusCode::from_u16(rejection.status).unwrap_or(StatusCode::BAD_REQUEST);
            (status, format!("{}\n", rejection.reason))
        }
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
