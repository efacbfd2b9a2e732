//! Detection benchmark: fault onset to rollback start, rearguard beside the usual
//! alternative, on the same injected fault in the same run.
//!
//! Each run starts a fresh stack on loopback: the test workload (100 requests/s), the
//! real Prometheus scraping it every 1 s with an alerting rule, two real Alertmanagers
//! (default timing, and tuned timing) each sending its webhook to a local receiver, and
//! rearguard's daemon watching the same workload through Prometheus (query interval 1 s).
//! At onset the workload's error rate goes from 0 to 30% and a new release is deployed.
//!
//! Measured from onset: when rearguard orders the first rollback step, and when each
//! Alertmanager's webhook arrives (where the rollback would start). The rule is the same
//! everywhere: error rate > 5% for 10s, over a 3 s rate window.
//!
//! `cargo bench --bench detection` (needs the Debian packages `prometheus` and
//! `prometheus-alertmanager`). `RUNS=N` sets the number of runs (default 3). Under
//! `cargo test` it does nothing.

#[path = "../tests/it/support.rs"]
mod support;

#[allow(dead_code)]
#[path = "../tests/it/workload.rs"]
mod workload;

#[allow(dead_code)]
#[path = "../tests/it/promstack.rs"]
mod promstack;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::routing::post;
use rearguard::config::{self, Format};
use rearguard::daemon::{self, Event};
use rearguard::engine::Effect;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const FOR_SECS: u64 = 10;
const SCRAPE: &str = "1s";
const WINDOW: &str = "3s";

const RULES: &str = r#"
groups:
  - name: bench
    interval: 1s
    rules:
      - alert: ErrorRateHigh
        expr: sum(rate(http_requests_total{code="500"}[3s])) / sum(rate(http_requests_total[3s])) > 0.05
        for: 10s
        labels:
          service: bench
"#;

/// Alertmanager's defaults for grouping (group_wait 30s, group_interval 5m).
const AM_DEFAULT: &str = "route:\n  receiver: hook\nreceivers:\n  - name: hook\n    webhook_configs:\n      - url: URL\n";

/// Tuned for speed: no grouping wait.
const AM_TUNED: &str = "route:\n  receiver: hook\n  group_wait: 0s\n  group_interval: 1s\n  repeat_interval: 1h\nreceivers:\n  - name: hook\n    webhook_configs:\n      - url: URL\n";

/// Records when the first firing webhook arrived.
#[derive(Clone, Default)]
struct Hook {
    first: Arc<Mutex<Option<Instant>>>,
}

async fn receive(State(hook): State<Hook>, body: String) -> &'static str {
    if body.contains("\"firing\"") {
        let mut first = hook.first.lock().unwrap();
        first.get_or_insert_with(Instant::now);
    }
    "ok"
}

struct RunResult {
    rearguard: Option<Duration>,
    am_tuned: Option<Duration>,
    am_default: Option<Duration>,
}

async fn one_run() -> RunResult {
    let w = workload::Workload::start(workload::Behaviour::default()).await;
    let hooks = [Hook::default(), Hook::default()];
    let mut servers = Vec::new();
    for hook in &hooks {
        let app = Router::new()
            .route("/hook", post(receive))
            .with_state(hook.clone());
        servers.push(support::serve(app).await);
    }
    let am_default =
        promstack::alertmanager(&AM_DEFAULT.replace("URL", &servers[0].url("/hook"))).await;
    let am_tuned =
        promstack::alertmanager(&AM_TUNED.replace("URL", &servers[1].url("/hook"))).await;
    // One Prometheus sends alerts to both Alertmanagers.
    let prom =
        promstack::prometheus(&[w.target()], SCRAPE, Some(RULES), Some(&am_default.addr())).await;
    let prom_tuned =
        promstack::prometheus(&[w.target()], SCRAPE, Some(RULES), Some(&am_tuned.addr())).await;

    let dir = tempfile::tempdir().unwrap();
    for r in ["v1", "v2"] {
        std::fs::create_dir_all(dir.path().join("releases").join(r)).unwrap();
    }
    std::os::unix::fs::symlink("releases/v1", dir.path().join("current")).unwrap();
    let text = format!(
        r#"
[daemon]
state_dir = "{dir}/state"
listen = "127.0.0.1:0"
tick = "100ms"
drain_timeout = "2s"
[[target]]
name = "bench"
plan = "back"
change = {{ type = "release_symlink", path = "{dir}/current", interval = "200ms" }}
[[signal]]
name = "errors"
target = "bench"
type = "prometheus"
url = "{prom}"
interval = "1s"
timeout = "900ms"
window = "{WINDOW}"
error_rate = {{ requests = "http_requests_total", errors = 'code="500"' }}
[[rule]]
name = "error-rate"
signal = "errors"
when = "> 5%"
for = "{FOR_SECS}s"
[[plan]]
name = "back"
[[plan.step]]
type = "exec"
command = ["true"]
"#,
        dir = dir.path().display(),
        prom = prom.url(),
    );
    let cfg = config::load_str(&text, Format::Toml, std::iter::empty(), dir.path())
        .expect("bench config");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(daemon::run(
        cfg,
        daemon::Options {
            shutdown: shutdown.clone(),
            observer: Some(tx),
            systemd: None,
            reload: None,
        },
    ));
    // Warm up: full rate windows of healthy traffic in Prometheus.
    tokio::time::sleep(Duration::from_secs(8)).await;

    let onset = Instant::now();
    let tmp = dir.path().join(".deploy");
    std::os::unix::fs::symlink("releases/v2", &tmp).unwrap();
    std::fs::rename(&tmp, dir.path().join("current")).unwrap();
    w.set(workload::Behaviour {
        error_fraction: 0.3,
        ..workload::Behaviour::default()
    });

    let deadline = onset + Duration::from_secs(90);
    let mut rearguard = None;
    loop {
        let now = Instant::now();
        let done_am = hooks.iter().all(|h| h.first.lock().unwrap().is_some());
        if (rearguard.is_some() && done_am) || now >= deadline {
            break;
        }
        match tokio::time::timeout(Duration::from_millis(100), rx.recv()).await {
            Ok(Some(Event::Effect(_, Effect::RunStep(_)))) if rearguard.is_none() => {
                rearguard = Some(onset.elapsed());
            }
            Ok(Some(_)) | Err(_) => {}
            Ok(None) => break,
        }
    }
    shutdown.cancel();
    let _ = handle.await;
    let since = |h: &Hook| h.first.lock().unwrap().map(|t| t.duration_since(onset));
    drop((prom, prom_tuned, am_default, am_tuned));
    RunResult {
        rearguard,
        am_default: since(&hooks[0]),
        am_tuned: since(&hooks[1]),
    }
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

fn secs(d: Option<Duration>) -> String {
    d.map_or("none in 90s".to_owned(), |d| {
        format!("{:.2} s", d.as_secs_f64())
    })
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let runs: usize = std::env::var("RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut results = Vec::new();
    for i in 0..runs {
        let r = rt.block_on(one_run());
        println!(
            "run {}: rearguard {}, prometheus + alertmanager (tuned) {}, prometheus + alertmanager (default) {}",
            i + 1,
            secs(r.rearguard),
            secs(r.am_tuned),
            secs(r.am_default)
        );
        results.push(r);
    }
    let col = |f: fn(&RunResult) -> Option<Duration>| {
        median(
            results
                .iter()
                .filter_map(f)
                .map(|d| d.as_secs_f64())
                .collect(),
        )
    };
    let rg = col(|r| r.rearguard);
    let tuned = col(|r| r.am_tuned);
    let default = col(|r| r.am_default);
    let bound = FOR_SECS as f64;
    println!();
    println!(
        "| Path | Median onset to rollback start | Above the {FOR_SECS} s `for` | Ratio to rearguard |"
    );
    println!("|---|---:|---:|---:|");
    for (name, v) in [
        ("rearguard (Prometheus source, query every 1 s)", rg),
        (
            "Prometheus rule + Alertmanager, tuned (group_wait 0s) + webhook",
            tuned,
        ),
        (
            "Prometheus rule + Alertmanager, default timing + webhook",
            default,
        ),
    ] {
        match (v, rg) {
            (Some(v), Some(r)) => {
                println!("| {name} | {v:.2} s | {:.2} s | {:.2}x |", v - bound, v / r)
            }
            (Some(v), None) => println!("| {name} | {v:.2} s | {:.2} s | - |", v - bound),
            _ => println!("| {name} | none within 90 s | - | - |"),
        }
    }
    println!(
        "\nrearguard's budget above the rule's own bound: one scrape interval (1 s) + one query interval (1 s) + 0.5 s = 2.5 s"
    );
}
