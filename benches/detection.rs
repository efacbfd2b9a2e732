//! Detection benchmark: fault onset to rollback start, rearguard beside the usual
//! alternatives, on the same injected fault from the same instant, in the same run.
//!
//! There is one case per rule of the runbook table that can be injected here:
//! - `error_rate`: error rate > 5% for 10s (over a 3 s rate window); the fault takes the
//!   workload's errors from 0 to 30%;
//! - `p95`: p95 latency > 200 ms for 10s (over a 3 s rate window); the fault takes every
//!   request's latency from 20 ms to 300 ms;
//! - `health`: the health check fails 3 consecutive checks at 1 s; the fault turns the
//!   health endpoint from 200 to 503.
//!
//! Each case starts a fresh stack on loopback: the test workload (`tests/it/workload.rs`,
//! 100 requests/s), a health endpoint served by this process, two real Prometheus servers
//! scraping both every 1 s and evaluating the case's alerting rule every 1 s, each sending
//! to a real Alertmanager (default timing, and tuned: `group_wait` 0s) whose webhook goes
//! to a local receiver, monit (`set daemon 1`, `if failed ... for 3 cycles then exec`) for
//! the health case, and rearguard's daemon (in-process, the code of `rearguard run`)
//! watching the same fault. At onset a new release is deployed and the fault injected.
//! Onset comes after a warm-up of 8 s plus a phase that differs between runs (see
//! [`one_run`]). Measured from onset: when rearguard orders the first rollback step, when each
//! Alertmanager's first firing webhook arrives, and when monit runs its `exec`.
//!
//! An OOM case (a `cgroup_oom` signal with a `within` rule; the fault a real process
//! that the kernel OOM-kills in a memory cgroup) belongs here as one more [`Case`] once
//! the host cgroup OOM source can run: a variant, its signal and rule, its fault, and the
//! paths that can express it ([`Path::applies`]).
//!
//! `cargo bench --bench detection` (needs the Debian packages `prometheus`,
//! `prometheus-alertmanager` and `monit`). `RUNS=N` sets the number of runs (default 3);
//! `CASES=error_rate,p95,health` picks cases (default all). Under `cargo test` it does
//! nothing.

mod common;

#[path = "common/alerting.rs"]
mod alerting;

#[path = "../tests/it/support.rs"]
mod support;

#[allow(dead_code)]
#[path = "../tests/it/workload.rs"]
mod workload;

#[allow(dead_code)]
#[path = "../tests/it/promstack.rs"]
mod promstack;

use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::get;
use common::median;
use rearguard::daemon::Event;
use rearguard::engine::Effect;
use tokio::process::{Child, Command};

/// Healthy traffic before onset: full rate windows in Prometheus, and several checks by
/// every prober.
const WARMUP: Duration = Duration::from_secs(8);

/// How long a case waits after onset for every path to act.
const LIMIT: Duration = Duration::from_secs(90);

/// One rule of the runbook table, measured on every path that can express it.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Case {
    ErrorRate,
    P95,
    Health,
}

impl Case {
    const ALL: [Case; 3] = [Case::ErrorRate, Case::P95, Case::Health];

    fn key(self) -> &'static str {
        match self {
            Case::ErrorRate => "error_rate",
            Case::P95 => "p95",
            Case::Health => "health",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Case::ErrorRate => "error rate > 5% for 10s",
            Case::P95 => "p95 latency > 200 ms for 10s",
            Case::Health => "health check fails 3 consecutive checks at 1 s",
        }
    }

    /// The rule's own bound: its `for`, or N checks at the check interval (the Nth
    /// failing check comes at most N intervals after onset).
    fn bound(self) -> Duration {
        match self {
            Case::ErrorRate | Case::P95 => Duration::from_secs(10),
            Case::Health => Duration::from_secs(3),
        }
    }

    /// What rearguard may add above the bound (DESIGN: at most one sample interval plus a
    /// fraction of a second): for a Prometheus signal, the scrape that sees the fault
    /// and the query that reads it, 1 s each, plus 0.5 s; for a probe, 0.5 s, because the
    /// bound already counts the probe interval.
    fn budget(self) -> Duration {
        match self {
            Case::ErrorRate | Case::P95 => Duration::from_millis(2500),
            Case::Health => Duration::from_millis(500),
        }
    }

    /// rearguard's `[[signal]]` and `[[rule]]` for this case.
    fn rearguard(self, prom: &str, health: &str) -> String {
        // Both Prometheus cases query every 1 s over a 3 s window and hold for 10 s.
        let prometheus = |query: &str, rule: &str, when: &str| {
            format!(
                r#"[[signal]]
name = "s"
target = "bench"
type = "prometheus"
url = "{prom}"
interval = "1s"
timeout = "900ms"
window = "3s"
{query}
[[rule]]
name = "{rule}"
signal = "s"
when = "{when}"
for = "10s"
"#
            )
        };
        match self {
            Case::ErrorRate => prometheus(
                r#"error_rate = { requests = "http_requests_total", errors = 'code="500"' }"#,
                "error-rate",
                "> 5%",
            ),
            Case::P95 => prometheus(
                r#"latency = { histogram = "http_request_duration_seconds_bucket", quantile = 0.95 }"#,
                "p95",
                "> 200ms",
            ),
            Case::Health => format!(
                r#"[[signal]]
name = "s"
target = "bench"
type = "http_probe"
url = "{health}"
interval = "1s"
timeout = "900ms"
[[rule]]
name = "unavailable"
signal = "s"
consecutive = 3
"#
            ),
        }
    }

    /// The Prometheus rule file for this case. For the health check, Prometheus scrapes
    /// the health endpoint itself (a failed scrape sets `up` to 0, as a blackbox probe
    /// would), and three evaluations in a row that see `up == 0` (pending, then 2 s) stand
    /// for three failed checks.
    fn prometheus_rule(self, health_instance: &str) -> String {
        let (expr, r#for) = match self {
            Case::ErrorRate => (
                r#"sum(rate(http_requests_total{code="500"}[3s])) / sum(rate(http_requests_total[3s])) > 0.05"#.to_owned(),
                "10s",
            ),
            Case::P95 => (
                "histogram_quantile(0.95, sum by (le) (rate(http_request_duration_seconds_bucket[3s]))) > 0.2".to_owned(),
                "10s",
            ),
            Case::Health => (format!(r#"up{{instance="{health_instance}"}} == 0"#), "2s"),
        };
        format!(
            "groups:\n  - name: bench\n    interval: 1s\n    rules:\n      - alert: BenchFault\n        expr: '{expr}'\n        for: {for}\n        labels:\n          service: bench\n"
        )
    }

    /// Injects the fault (the deploy is done by the caller at the same instant).
    fn inject(self, w: &workload::Workload, health: &Health) {
        match self {
            Case::ErrorRate => w.set(workload::Behaviour {
                error_fraction: 0.3,
                ..workload::Behaviour::default()
            }),
            Case::P95 => w.set(workload::Behaviour {
                latency: 0.3,
                ..workload::Behaviour::default()
            }),
            Case::Health => health.healthy.store(false, Ordering::SeqCst),
        }
    }
}

/// One way of getting from a fault to a rollback.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Path {
    Rearguard,
    AmTuned,
    AmDefault,
    Monit,
}

impl Path {
    const ALL: [Path; 4] = [Path::Rearguard, Path::AmTuned, Path::AmDefault, Path::Monit];

    fn name(self, case: Case) -> &'static str {
        match (self, case) {
            (Path::Rearguard, Case::Health) => "rearguard (http_probe every 1 s, consecutive = 3)",
            (Path::Rearguard, _) => "rearguard (Prometheus source, query every 1 s)",
            (Path::AmTuned, _) => "Prometheus rule + Alertmanager, tuned (group_wait 0s) + webhook",
            (Path::AmDefault, _) => "Prometheus rule + Alertmanager, default timing + webhook",
            (Path::Monit, _) => "monit (set daemon 1, for 3 cycles then exec)",
        }
    }

    fn applies(self, case: Case) -> bool {
        self != Path::Monit || case == Case::Health
    }
}

/// Alertmanager's defaults for grouping (group_wait 30s, group_interval 5m).
const AM_DEFAULT: &str = "route:\n  receiver: hook\nreceivers:\n  - name: hook\n    webhook_configs:\n      - url: URL\n";

/// Tuned for speed: no grouping wait.
const AM_TUNED: &str = "route:\n  receiver: hook\n  group_wait: 0s\n  group_interval: 1s\n  repeat_interval: 1h\nreceivers:\n  - name: hook\n    webhook_configs:\n      - url: URL\n";

/// The health endpoint (`/health`, and `/metrics` for Prometheus's scrape): 200 with an
/// empty body while healthy, 503 after the fault. Counts requests by prober.
#[derive(Default)]
struct Health {
    healthy: AtomicBool,
    monit: AtomicUsize,
    prometheus: AtomicUsize,
    rearguard: AtomicUsize,
}

async fn health(State(h): State<Arc<Health>>, headers: HeaderMap) -> StatusCode {
    let agent = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let counter = if agent.starts_with("Monit") {
        &h.monit
    } else if agent.starts_with("Prometheus") {
        &h.prometheus
    } else {
        &h.rearguard
    };
    counter.fetch_add(1, Ordering::Relaxed);
    if h.healthy.load(Ordering::SeqCst) {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

/// monit in the foreground with its own control file, pid, state and id files in a
/// temporary directory; killed by PID when dropped.
struct Monit {
    child: Child,
    dir: tempfile::TempDir,
}

impl Monit {
    /// Checks `GET /health` on `port` every second; after 3 failed cycles it runs a script
    /// that writes the wall-clock time to `fired`.
    fn start(port: u16) -> Monit {
        let bin = common::installed("monit", "monit");
        let dir = tempfile::tempdir().expect("temp dir");
        let d = dir.path().display();
        let script = dir.path().join("fired.sh");
        std::fs::write(
            &script,
            format!("#!/bin/sh\ndate +%s.%N > {d}/fired.tmp && mv {d}/fired.tmp {d}/fired\n"),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o700)).unwrap();
        let control = dir.path().join("monitrc");
        std::fs::write(
            &control,
            format!(
                r#"set daemon 1
set logfile {d}/monit.log
set pidfile {d}/monit.pid
set statefile {d}/monit.state
set idfile {d}/monit.id
set eventqueue basedir {d}/events slots 10

check host bench with address 127.0.0.1
  if failed port {port} protocol http request "/health" status = 200 timeout 1 seconds for 3 cycles then exec "{d}/fired.sh"
"#
            ),
        )
        .unwrap();
        // monit refuses a control file that others can read.
        std::fs::set_permissions(&control, std::fs::Permissions::from_mode(0o600)).unwrap();
        let out = std::fs::File::create(dir.path().join("stdout.log")).unwrap();
        let child = Command::new(&bin)
            .arg("-I")
            .arg("-c")
            .arg(&control)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        Monit { child, dir }
    }

    /// When monit ran its exec, as wall-clock seconds since the epoch.
    fn fired(&self) -> Option<f64> {
        std::fs::read_to_string(self.dir.path().join("fired"))
            .ok()
            .and_then(|t| t.trim().parse().ok())
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("monit.log")).unwrap_or_default()
    }

    async fn kill(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

type Times = [Option<Duration>; 4];

/// `phase` (from 0 to 1) delays onset by that fraction of a second after the warm-up, so
/// that over the runs the fault meets every phase of the 1 s scrape, query, probe and
/// cycle schedules (which all start with the stack) instead of always the same one.
async fn one_run(case: Case, phase: f64) -> Times {
    let w = workload::Workload::start(workload::Behaviour::default()).await;
    let health_state = Arc::new(Health {
        healthy: AtomicBool::new(true),
        ..Health::default()
    });
    let health_server = support::serve(
        Router::new()
            .route("/health", get(health))
            .route("/metrics", get(health))
            .with_state(Arc::clone(&health_state)),
    )
    .await;
    let default = alerting::start(AM_DEFAULT).await;
    let tuned = alerting::start(AM_TUNED).await;
    let health_instance = health_server.addr.to_string();
    let rules = case.prometheus_rule(&health_instance);
    let targets = [w.target(), health_instance.clone()];
    let prom = promstack::prometheus(
        &targets,
        "1s",
        Some(&rules),
        Some(&default.alertmanager.addr()),
    )
    .await;
    let prom_tuned = promstack::prometheus(
        &targets,
        "1s",
        Some(&rules),
        Some(&tuned.alertmanager.addr()),
    )
    .await;
    let monit = Path::Monit
        .applies(case)
        .then(|| Monit::start(health_server.addr.port()));

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
{signal}
[[plan]]
name = "back"
[[plan.step]]
type = "exec"
command = ["true"]
"#,
        dir = dir.path().display(),
        signal = case.rearguard(&prom.url(), &health_server.url("/health")),
    );
    let mut daemon = common::Daemon::spawn(support::config(&text));
    tokio::time::sleep(WARMUP + Duration::from_secs_f64(phase)).await;

    // Before onset every path must be watching, and none may have acted.
    let mut early = Vec::new();
    while let Ok(event) = daemon.events.try_recv() {
        if let Event::Effect(_, Effect::RunStep(_)) = event {
            early.push("rearguard");
        }
    }
    let hooks = [&default.hook, &tuned.hook];
    if hooks.iter().any(|h| h.first().is_some()) {
        early.push("an Alertmanager webhook");
    }
    if monit.as_ref().is_some_and(|m| m.fired().is_some()) {
        early.push("monit");
    }
    assert!(
        early.is_empty(),
        "{}: {early:?} acted before the fault was injected",
        case.key()
    );
    if case == Case::Health {
        for (who, n) in [
            ("rearguard", &health_state.rearguard),
            ("prometheus", &health_state.prometheus),
            ("monit", &health_state.monit),
        ] {
            let n = n.load(Ordering::Relaxed);
            assert!(
                n >= 3,
                "{who} checked the health endpoint {n} times during the warm-up",
            );
        }
    }

    let onset = Instant::now();
    let onset_wall = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let tmp = dir.path().join(".deploy");
    std::os::unix::fs::symlink("releases/v2", &tmp).unwrap();
    std::fs::rename(&tmp, dir.path().join("current")).unwrap();
    case.inject(&w, &health_state);

    let deadline = onset + LIMIT;
    let mut rearguard = None;
    let mut monit_at = None;
    loop {
        if let (None, Some(m)) = (monit_at, &monit) {
            monit_at = m
                .fired()
                .map(|t| Duration::from_secs_f64((t - onset_wall).max(0.0)));
        }
        let done = rearguard.is_some()
            && hooks.iter().all(|h| h.first().is_some())
            && (monit.is_none() || monit_at.is_some());
        if done || Instant::now() >= deadline {
            break;
        }
        match tokio::time::timeout(Duration::from_millis(50), daemon.events.recv()).await {
            Ok(Some(Event::Effect(_, Effect::RunStep(_)))) if rearguard.is_none() => {
                rearguard = Some(onset.elapsed());
            }
            Ok(Some(_)) | Err(_) => {}
            Ok(None) => break,
        }
    }
    daemon.stop().await;
    if let Some(m) = monit {
        if monit_at.is_none() {
            println!("  monit did not act; its log:\n{}", m.log());
        }
        m.kill().await;
    }
    let since = |h: &alerting::Hook| h.first().map(|t| t.duration_since(onset));
    let times = [
        rearguard,
        since(&tuned.hook),
        since(&default.hook),
        monit_at,
    ];
    drop((prom, prom_tuned, default, tuned, health_server, w));
    times
}

fn secs(d: Option<Duration>) -> String {
    d.map_or(format!("none in {} s", LIMIT.as_secs()), |d| {
        format!("{:.2} s", d.as_secs_f64())
    })
}

fn report(case: Case, results: &[Times]) {
    let bound = case.bound().as_secs_f64();
    let paths: Vec<(usize, Path)> = Path::ALL
        .iter()
        .copied()
        .enumerate()
        .filter(|(_, p)| p.applies(case))
        .collect();
    println!("\n### {} (bound {bound:.0} s)\n", case.title());
    let header: Vec<&str> = paths.iter().map(|(_, p)| p.name(case)).collect();
    println!("| Run | {} |", header.join(" | "));
    println!("|---:|{}", "---:|".repeat(paths.len()));
    for (run, times) in results.iter().enumerate() {
        let cells: Vec<String> = paths.iter().map(|(i, _)| secs(times[*i])).collect();
        println!("| {} | {} |", run + 1, cells.join(" | "));
    }
    let medians: Vec<Option<f64>> = paths
        .iter()
        .map(|(i, _)| {
            median(
                results
                    .iter()
                    .filter_map(|t| t[*i])
                    .map(|d| d.as_secs_f64())
                    .collect(),
            )
        })
        .collect();
    let rg = medians[0];
    println!(
        "\n| Path | Median onset to rollback start | Above the {bound:.0} s bound | Ratio to rearguard | Acted in |"
    );
    println!("|---|---:|---:|---:|---:|");
    for ((i, path), m) in paths.iter().zip(&medians) {
        let acted = results.iter().filter(|t| t[*i].is_some()).count();
        let acted = format!("{acted} of {}", results.len());
        match (m, rg) {
            (Some(v), Some(r)) => println!(
                "| {} | {v:.2} s | {:.2} s | {:.2}x | {acted} |",
                path.name(case),
                v - bound,
                v / r
            ),
            (Some(v), None) => println!(
                "| {} | {v:.2} s | {:.2} s | - | {acted} |",
                path.name(case),
                v - bound
            ),
            _ => println!(
                "| {} | none within {} s | - | - | {acted} |",
                path.name(case),
                LIMIT.as_secs()
            ),
        }
    }
    let worst = results
        .iter()
        .filter_map(|t| t[0])
        .map(|d| d.as_secs_f64() - bound)
        .fold(f64::NEG_INFINITY, f64::max);
    let budget = case.budget().as_secs_f64();
    let every = results.iter().all(|t| t[0].is_some());
    println!(
        "\nrearguard above the bound: at most {worst:.2} s over the runs; budget {budget:.1} s: {}",
        if every && worst <= budget {
            "met in every run"
        } else {
            "NOT met"
        }
    );
}

fn main() {
    let Some(runs) = common::runs(3) else {
        return;
    };
    let cases: Vec<Case> = match std::env::var("CASES") {
        Ok(list) => list
            .split(',')
            .map(|k| {
                Case::ALL
                    .into_iter()
                    .find(|c| c.key() == k.trim())
                    .unwrap_or_else(|| {
                        panic!("CASES: unknown case {k:?} (error_rate, p95, health)")
                    })
            })
            .collect(),
        Err(_) => Case::ALL.to_vec(),
    };
    // Check for every program before the first run, not minutes into it.
    common::installed("prometheus", "prometheus");
    common::installed("prometheus-alertmanager", "prometheus-alertmanager");
    if cases.contains(&Case::Health) {
        common::installed("monit", "monit");
    }
    let started = Instant::now();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut results: Vec<Vec<Times>> = vec![Vec::new(); cases.len()];
    for run in 0..runs {
        for (c, case) in cases.iter().enumerate() {
            // Run i of n meets the schedules at phase (i + 0.5) / n of a second.
            let phase = (run as f64 + 0.5) / runs as f64;
            let times = rt.block_on(one_run(*case, phase));
            let line: Vec<String> = Path::ALL
                .iter()
                .zip(&times)
                .filter(|(p, _)| p.applies(*case))
                .map(|(p, t)| format!("{:?} {}", p, secs(*t)))
                .collect();
            println!(
                "run {} {} (onset phase {phase:.2} s): {}",
                run + 1,
                case.key(),
                line.join(", ")
            );
            results[c].push(times);
        }
    }
    for (case, r) in cases.iter().zip(&results) {
        report(*case, r);
    }
    println!(
        "\n{runs} runs, whole benchmark {:.0} s",
        started.elapsed().as_secs_f64()
    );
}
