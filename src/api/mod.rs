//! rearguard's own HTTP endpoints: `/metrics` (OpenMetrics when asked for, else the
//! Prometheus text format), `/healthz` (is the engine
//! loop turning) and `/readyz` (has the daemon finished starting, is it stopping, can it
//! write its state store).
//!
//! `server` serves them (and the control API, the status page and the webhook the daemon
//! merges in) on the listening socket, within its connection limits.
//!
//! These endpoints only read: they take no token and change nothing. What they report is
//! pushed into [`Metrics`] and [`Health`] by the daemon; this module decides nothing
//! about incidents and never touches the engine.

pub mod control;
pub mod metrics;
pub mod server;
pub mod status_page;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

pub use metrics::{Lasting, Metrics, Stage};

use crate::config::units::format_duration;

/// The content type of `/metrics`: the OpenMetrics text format.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What `/healthz` and `/readyz` report, set by the daemon as it runs.
///
/// Times are milliseconds since the Unix epoch on a monotonic clock anchored at wall time
/// when the `Health` is created ([`Health::now_ms`]), the way the daemon's engine clock
/// counts them: a step of the wall clock does not make the engine look stalled.
#[derive(Debug)]
pub struct Health {
    /// Sources, listeners and the engine are running.
    ready: AtomicBool,
    /// The drain has begun.
    stopping: AtomicBool,
    /// When the engine loop last turned; 0 until it first does.
    last_turn_ms: AtomicU64,
    /// Why this replica is a standby (leader election: another holds the lease); `None`
    /// while it acts.
    standby: std::sync::Mutex<Option<String>>,
    /// Why the state store cannot be written, while it cannot.
    store_failing: std::sync::Mutex<Option<String>>,
    wall_ms: u64,
    start: Instant,
}

/// What `/readyz` answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    Starting,
    Ready,
    /// Leader election: another replica holds the lease; this one serves and waits.
    Standby,
    /// The state store cannot be written (a full disk): no step starts until it can.
    StoreFailing,
    Stopping,
}

impl Readiness {
    pub fn name(self) -> &'static str {
        match self {
            Readiness::Starting => "starting",
            Readiness::Ready => "ready",
            Readiness::Standby => "standby",
            Readiness::StoreFailing => "store_failing",
            Readiness::Stopping => "stopping",
        }
    }
}

impl Default for Health {
    fn default() -> Health {
        Health::new()
    }
}

impl Health {
    /// Starting: not ready, not stopping, the engine has not turned yet.
    pub fn new() -> Health {
        let wall_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        Health {
            ready: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            last_turn_ms: AtomicU64::new(0),
            standby: std::sync::Mutex::new(None),
            store_failing: std::sync::Mutex::new(None),
            wall_ms,
            start: Instant::now(),
        }
    }

    /// Now, on this `Health`'s clock.
    pub fn now_ms(&self) -> u64 {
        self.wall_ms + self.start.elapsed().as_millis() as u64
    }

    /// The daemon has started: `/readyz` answers 200 (unless stopping).
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    /// The drain has begun: `/readyz` answers 503 for good.
    pub fn set_stopping(&self) {
        self.stopping.store(true, Ordering::Release);
    }

    /// This replica waits as a standby, for the reason given (`/readyz` answers 200
    /// with it), or acts again (`None`). A standby runs no engine, so it is never
    /// stalled.
    pub fn set_standby(&self, why: Option<String>) {
        *self.standby.lock().unwrap_or_else(|e| e.into_inner()) = why;
    }

    /// Why this replica is a standby, if it is one.
    pub fn standby(&self) -> Option<String> {
        self.standby
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The state store cannot be written, for the reason given (`/readyz` answers 503
    /// with it), or can again (`None`).
    pub fn set_store_failing(&self, why: Option<String>) {
        *self.store_failing.lock().unwrap_or_else(|e| e.into_inner()) = why;
    }

    /// Why the state store cannot be written, while it cannot.
    pub fn store_failing(&self) -> Option<String> {
        self.store_failing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The engine loop turned at `now_ms`.
    pub fn engine_turned(&self, now_ms: u64) {
        self.last_turn_ms.store(now_ms, Ordering::Release);
    }

    pub fn readiness(&self) -> Readiness {
        if self.stopping.load(Ordering::Acquire) {
            Readiness::Stopping
        } else if self.store_failing().is_some() {
            Readiness::StoreFailing
        } else if self.standby().is_some() {
            Readiness::Standby
        } else if self.ready.load(Ordering::Acquire) {
            Readiness::Ready
        } else {
            Readiness::Starting
        }
    }

    /// Whether the engine loop has turned within `stall_after` of `now_ms`, or why not.
    /// Healthy before the first turn (the process is starting) and once stopping (the
    /// loop ends on purpose for the drain, which must not be cut short by a restart).
    pub fn liveness(&self, now_ms: u64, stall_after: Duration) -> Result<(), String> {
        let last = self.last_turn_ms.load(Ordering::Acquire);
        if last == 0 || self.stopping.load(Ordering::Acquire) || self.standby().is_some() {
            return Ok(());
        }
        let since = Duration::from_millis(now_ms.saturating_sub(last));
        if since <= stall_after {
            return Ok(());
        }
        Err(format!(
            "engine loop stalled: last turn {} ago, limit {}",
            format_duration(since),
            format_duration(stall_after)
        ))
    }
}

#[derive(Clone)]
struct Api {
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    stall_after: Duration,
}

/// The read-only endpoints: `GET /metrics`, `GET /healthz` and `GET /readyz`. `/healthz`
/// fails once the engine loop has not turned for longer than `stall_after`, which should
/// be a few engine ticks.
pub fn router(metrics: Arc<Metrics>, health: Arc<Health>, stall_after: Duration) -> axum::Router {
    axum::Router::new()
        .route("/metrics", get(serve_metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(Api {
            metrics,
            health,
            stall_after,
        })
}

/// OpenMetrics to a scraper that accepts it (Prometheus asks for it first), otherwise
/// the Prometheus text format, as every Prometheus client library answers.
async fn serve_metrics(State(api): State<Api>, headers: axum::http::HeaderMap) -> Response {
    let openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    if openmetrics {
        let body = api.metrics.encode();
        ([(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)], body).into_response()
    } else {
        let body = api.metrics.encode_text();
        ([(header::CONTENT_TYPE, metrics::text::CONTENT_TYPE)], body).into_response()
    }
}

async fn healthz(State(api): State<Api>) -> (StatusCode, String) {
    let now = api.health.now_ms();
    match api.health.liveness(now, api.stall_after) {
        Ok(()) => (StatusCode::OK, "ok\n".to_owned()),
        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")),
    }
}

async fn readyz(State(api): State<Api>) -> (StatusCode, String) {
    let readiness = api.health.readiness();
    let status = match readiness {
        // A standby is ready: it serves, and a rolling update must be able to proceed
        // while another replica holds the lease.
        Readiness::Ready | Readiness::Standby => StatusCode::OK,
        Readiness::Starting | Readiness::StoreFailing | Readiness::Stopping => {
            StatusCode::SERVICE_UNAVAILABLE
        }
    };
    let why = match readiness {
        Readiness::Standby => api.health.standby().map(|why| format!("standby: {why}")),
        Readiness::StoreFailing => api
            .health
            .store_failing()
            .map(|why| format!("state store failing: {why}")),
        _ => None,
    };
    (
        status,
        format!("{}\n", why.as_deref().unwrap_or(readiness.name())),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const STALL: Duration = Duration::from_secs(3);

    #[test]
    fn readiness_goes_from_starting_to_ready_to_stopping() {
        let h = Health::new();
        assert_eq!(h.readiness(), Readiness::Starting);
        h.set_ready();
        assert_eq!(h.readiness(), Readiness::Ready);
        h.set_stopping();
        assert_eq!(h.readiness(), Readiness::Stopping);
        // Stopping is for good.
        h.set_ready();
        assert_eq!(h.readiness(), Readiness::Stopping);
    }

    #[test]
    fn a_standby_is_ready_never_stalled_and_acts_again_when_cleared() {
        let h = Health::new();
        let t = 1_800_000_000_000;
        h.set_ready();
        h.engine_turned(t);
        h.set_standby(Some("lease ns/rearguard held by b".to_owned()));
        assert_eq!(h.readiness(), Readiness::Standby);
        assert_eq!(h.liveness(t + 60_000, STALL), Ok(()));
        h.set_standby(None);
        assert_eq!(h.readiness(), Readiness::Ready);
        assert!(h.liveness(t + 60_000, STALL).is_err());
        h.set_standby(Some("again".to_owned()));
        h.set_stopping();
        assert_eq!(h.readiness(), Readiness::Stopping, "stopping wins");
    }

    #[test]
    fn a_failing_state_store_is_not_ready_until_it_works_again_and_stopping_wins() {
        let h = Health::new();
        h.set_ready();
        h.set_store_failing(Some("database or disk is full".to_owned()));
        assert_eq!(h.readiness(), Readiness::StoreFailing);
        assert_eq!(
            h.store_failing().as_deref(),
            Some("database or disk is full")
        );
        h.set_store_failing(None);
        assert_eq!(h.readiness(), Readiness::Ready);
        h.set_store_failing(Some("again".to_owned()));
        h.set_stopping();
        assert_eq!(h.readiness(), Readiness::Stopping, "stopping wins");
    }

    #[test]
    fn a_daemon_stopping_before_it_was_ready_is_stopping() {
        let h = Health::new();
        h.set_stopping();
        assert_eq!(h.readiness(), Readiness::Stopping);
    }

    #[test]
    fn liveness_follows_the_last_engine_turn() {
        let h = Health::new();
        let t = 1_800_000_000_000;
        assert_eq!(
            h.liveness(t, STALL),
            Ok(()),
            "healthy before the first turn"
        );
        h.engine_turned(t);
        assert_eq!(h.liveness(t, STALL), Ok(()));
        assert_eq!(
            h.liveness(t + 3_000, STALL),
            Ok(()),
            "the limit is inclusive"
        );
        assert_eq!(
            h.liveness(t + 12_500, STALL),
            Err("engine loop stalled: last turn 12s500ms ago, limit 3s".to_owned())
        );
        h.engine_turned(t + 12_000);
        assert_eq!(h.liveness(t + 12_500, STALL), Ok(()), "turning again heals");
        // A turn stamped a little ahead of the clock reading it is not a stall.
        assert_eq!(h.liveness(t + 11_000, STALL), Ok(()));
    }

    #[test]
    fn a_stopping_daemon_is_not_stalled() {
        let h = Health::new();
        let t = 1_800_000_000_000;
        h.engine_turned(t);
        assert!(h.liveness(t + 60_000, STALL).is_err());
        h.set_stopping();
        assert_eq!(h.liveness(t + 60_000, STALL), Ok(()));
    }

    #[test]
    fn the_health_clock_is_near_wall_time_and_does_not_go_back() {
        let h = Health::new();
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("after the epoch")
            .as_millis() as u64;
        let a = h.now_ms();
        let b = h.now_ms();
        assert!(b >= a);
        assert!(a.abs_diff(wall) < 5_000, "{a} vs wall {wall}");
    }
}
