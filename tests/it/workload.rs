//! A test workload: a service whose `/metrics` shows request counters and a latency
//! histogram, fed by a traffic generator whose error fraction, latency and request rate
//! the test changes at runtime. Prometheus scrapes it; so does the scrape source.
//!
//! Series (Prometheus text format):
//! - `http_requests_total{code="200"}` and `http_requests_total{code="500"}`
//! - `http_request_duration_seconds_bucket{le="..."}`, `_sum`, `_count`

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::routing::get;

use crate::support::{self, TestServer};

/// Histogram bucket bounds in seconds.
pub const BUCKETS: [f64; 8] = [0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0];

/// How the workload behaves now.
#[derive(Debug, Clone, Copy)]
pub struct Behaviour {
    /// Requests served per second.
    pub rps: f64,
    /// Fraction of requests answered with 500.
    pub error_fraction: f64,
    /// Every request's latency, in seconds.
    pub latency: f64,
}

impl Default for Behaviour {
    fn default() -> Behaviour {
        Behaviour {
            rps: 100.0,
            error_fraction: 0.0,
            latency: 0.02,
        }
    }
}

#[derive(Debug, Default)]
struct Counters {
    ok: u64,
    errors: u64,
    buckets: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
    /// Fractional requests carried between generator steps.
    carry: f64,
    error_carry: f64,
}

struct Shared {
    behaviour: Mutex<Behaviour>,
    counters: Mutex<Counters>,
}

/// A running workload; stops when dropped.
pub struct Workload {
    shared: Arc<Shared>,
    pub server: TestServer,
    generator: tokio::task::JoinHandle<()>,
}

impl Workload {
    pub async fn start(behaviour: Behaviour) -> Workload {
        let shared = Arc::new(Shared {
            behaviour: Mutex::new(behaviour),
            counters: Mutex::new(Counters::default()),
        });
        let app = Router::new()
            .route("/metrics", get(metrics))
            .with_state(Arc::clone(&shared));
        let server = support::serve(app).await;
        let gen_shared = Arc::clone(&shared);
        let generator = tokio::spawn(async move {
            let step = Duration::from_millis(50);
            let mut ticker = tokio::time::interval(step);
            loop {
                ticker.tick().await;
                generate(&gen_shared, step.as_secs_f64());
            }
        });
        Workload {
            shared,
            server,
            generator,
        }
    }

    /// Changes the behaviour from now on.
    pub fn set(&self, behaviour: Behaviour) {
        *self.shared.behaviour.lock().unwrap() = behaviour;
    }

    /// Makes the workload behave as `behaviour` says for the release the `current`
    /// symlink names (its last component), checked every 20 ms: what a deploy and a
    /// rollback change. The task ends when the handle is aborted.
    pub fn follow(
        self: &Arc<Self>,
        current: std::path::PathBuf,
        behaviour: impl Fn(&str) -> Behaviour + Send + 'static,
    ) -> tokio::task::JoinHandle<()> {
        let workload = Arc::clone(self);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(Duration::from_millis(20));
            loop {
                ticker.tick().await;
                let link = std::fs::read_link(&current).unwrap_or_default();
                let release = link
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or_default();
                workload.set(behaviour(release));
            }
        })
    }

    /// The `host:port` Prometheus scrapes.
    pub fn target(&self) -> String {
        self.server.addr.to_string()
    }

    pub fn metrics_url(&self) -> String {
        self.server.url("/metrics")
    }

    /// Total requests served so far (ok, errors).
    pub fn totals(&self) -> (u64, u64) {
        let c = self.shared.counters.lock().unwrap();
        (c.ok, c.errors)
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        self.generator.abort();
    }
}

/// Serves `seconds` worth of traffic under the current behaviour.
fn generate(shared: &Shared, seconds: f64) {
    let b = *shared.behaviour.lock().unwrap();
    let mut c = shared.counters.lock().unwrap();
    c.carry += b.rps * seconds;
    let n = c.carry.floor();
    c.carry -= n;
    c.error_carry += n * b.error_fraction;
    let errors = c.error_carry.floor();
    c.error_carry -= errors;
    let (n, errors) = (n as u64, errors as u64);
    c.errors += errors;
    c.ok += n - errors.min(n);
    for (i, bound) in BUCKETS.iter().enumerate() {
        if b.latency <= *bound {
            c.buckets[i] += n;
        }
    }
    c.count += n;
    c.sum += n as f64 * b.latency;
}

async fn metrics(State(shared): State<Arc<Shared>>) -> String {
    let c = shared.counters.lock().unwrap();
    let mut out = String::new();
    out.push_str(
        "# HELP http_requests_total Requests served.\n# TYPE http_requests_total counter\n",
    );
    let _ = writeln!(out, "http_requests_total{{code=\"200\"}} {}", c.ok);
    let _ = writeln!(out, "http_requests_total{{code=\"500\"}} {}", c.errors);
    out.push_str("# HELP http_request_duration_seconds Request latency.\n# TYPE http_request_duration_seconds histogram\n");
    for (i, bound) in BUCKETS.iter().enumerate() {
        let _ = writeln!(
            out,
            "http_request_duration_seconds_bucket{{le=\"{bound}\"}} {}",
            c.buckets[i]
        );
    }
    let _ = writeln!(
        out,
        "http_request_duration_seconds_bucket{{le=\"+Inf\"}} {}",
        c.count
    );
    let _ = writeln!(out, "http_request_duration_seconds_sum {}", c.sum);
    let _ = writeln!(out, "http_request_duration_seconds_count {}", c.count);
    out
}
