//! The daemon end to end: real release directories and symlinks, real processes, a real
//! HTTP service on loopback, and the real binary for signals and exit codes.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use rearguard::config::{Config, Format};
use rearguard::daemon::Event;
use rearguard::engine::{Effect, EntryKind, Outcome};

use crate::releases::Releases;
use crate::running::start;
use crate::support;

/// A service whose health is the behaviour file of the release `current` names, read on
/// every request, plus a switch that forces it unhealthy whatever the release.
pub(crate) struct Svc {
    dir: PathBuf,
    pub(crate) broken: AtomicBool,
}

async fn health(State(svc): State<Arc<Svc>>) -> (StatusCode, &'static str) {
    let release = std::fs::read_link(svc.dir.join("current")).unwrap_or_default();
    let behaviour =
        std::fs::read_to_string(svc.dir.join(&release).join("behaviour")).unwrap_or_default();
    if behaviour.trim() == "healthy" && !svc.broken.load(Ordering::SeqCst) {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::INTERNAL_SERVER_ERROR, "failing")
    }
}

pub(crate) struct Fixture {
    pub(crate) releases: Releases,
    pub(crate) svc: Arc<Svc>,
    pub(crate) server: support::TestServer,
}

impl Fixture {
    pub(crate) async fn new() -> Fixture {
        let releases = Releases::new();
        for (name, behaviour) in [("v1", "healthy"), ("v2", "broken")] {
            std::fs::write(releases.release(name).join("behaviour"), behaviour).unwrap();
        }
        let svc = Arc::new(Svc {
            dir: releases.path().to_owned(),
            broken: AtomicBool::new(false),
        });
        let app = Router::new()
            .route("/health", get(health))
            .with_state(Arc::clone(&svc));
        let server = support::serve(app).await;
        Fixture {
            releases,
            svc,
            server,
        }
    }

    pub(crate) fn path(&self) -> &Path {
        self.releases.path()
    }

    /// Waits until the daemon has probed the service `n` times. Its first look at the
    /// `current` symlink happens at start, before any probe, so v1 is known by then.
    pub(crate) async fn probed(&self, n: usize) {
        let requests = self.server.requests.clone();
        support::poll_until(Duration::from_secs(10), || {
            requests.load(Ordering::SeqCst) >= n
        })
        .await
        .unwrap_or_else(|_| panic!("the daemon did not probe the service {n} times within 10s"));
    }

    /// Starts the daemon on `text`, lets it see v1 healthy, then deploys the broken v2:
    /// the start of every rollback story.
    pub(crate) async fn start_and_deploy(&self, text: &str) -> crate::running::Running {
        let mut d = start(load(text));
        d.wait_for("start", 10, |e| matches!(e, Event::Started))
            .await;
        // Healthy readings on v1 first, so the deploy is a change against a healthy
        // revision.
        self.probed(3).await;
        self.releases.deploy("v2");
        d
    }

    /// A configuration for this fixture; `plan_steps` is TOML for the plan's steps.
    pub(crate) fn config(&self, plan_steps: &str, extra: &str) -> String {
        format!(
            r#"
[daemon]
state_dir = "{dir}/state"
tick = "50ms"
drain_timeout = "5s"
{listen}
{extra}

[[target]]
name = "shop"
plan = "back"
blame_window = "5m"
change = {{ type = "release_symlink", path = "{dir}/current", interval = "100ms" }}

[[signal]]
name = "health"
target = "shop"
type = "http_probe"
url = "{url}"
interval = "100ms"
timeout = "1s"

[[rule]]
name = "down"
signal = "health"
consecutive = 3

[[plan]]
name = "back"
{plan_steps}

[plan.verify]
window = "500ms"
"#,
            dir = self.path().display(),
            url = self.server.url("/health"),
            // Any free port, unless the test names one: tests run side by side.
            listen = if extra.contains("listen") {
                ""
            } else {
                "listen = \"127.0.0.1:0\""
            },
        )
    }
}

pub(crate) fn load(text: &str) -> Config {
    rearguard::config::load_str(text, Format::Toml, std::iter::empty(), Path::new("."))
        .unwrap_or_else(|e| panic!("test configuration is invalid:\n{e}"))
}

const SWITCH_BACK: &str = r#"
[[plan.step]]
name = "switch back"
type = "release_switch"
current = "{dir}/current"
releases = "{dir}/releases"
timeout = "5s"
"#;

pub(crate) fn switch_back(f: &Fixture) -> String {
    SWITCH_BACK.replace("{dir}", &f.path().display().to_string())
}

#[tokio::test]
async fn bad_release_is_switched_back_verified_and_reported() {
    let f = Fixture::new().await;
    let mut d = f.start_and_deploy(&f.config(&switch_back(&f), "")).await;
    let inc = d.closed_incident(20).await;
    assert_eq!(
        inc.outcome,
        Some(Outcome::RolledBack),
        "timeline: {:#?}",
        inc.timeline
    );
    assert_eq!(inc.from_revision.as_deref(), Some("v2"));
    assert_eq!(inc.to_revision.as_deref(), Some("v1"));
    assert_eq!(
        f.releases.current(),
        "releases/v1",
        "the relative link stays relative"
    );
    let report = d
        .wait_for("the report", 5, |e| matches!(e, Event::Report { .. }))
        .await;
    let Event::Report { path, .. } = report else {
        unreachable!()
    };
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("rolled back and verified"), "{text}");
    assert!(text.contains("rule down fired"), "{text}");
    assert!(
        text.contains("current: v2 -> v1") || text.contains("v2 -> v1"),
        "{text}"
    );
    assert!(path.starts_with(f.path().join("state/reports")));
    let seen = d.stop().await;
    let steps = seen
        .iter()
        .filter(|e| matches!(e, Event::Effect(_, Effect::RunStep(_))))
        .count();
    assert_eq!(steps, 1, "one step, run once");
}

#[tokio::test]
async fn breach_without_a_change_escalates_without_acting_and_resolves_on_recovery() {
    let f = Fixture::new().await;
    f.svc.broken.store(true, Ordering::SeqCst);
    let mut d = start(load(&f.config(&switch_back(&f), "")));
    d.wait_for("escalation", 10, |e| {
        matches!(e, Event::Effect(_, Effect::Timeline { entry, .. })
            if entry.kind == EntryKind::Decision && entry.text.contains("nothing to blame"))
    })
    .await;
    assert_eq!(f.releases.current(), "releases/v1", "nothing was switched");
    f.svc.broken.store(false, Ordering::SeqCst);
    let inc = d.closed_incident(10).await;
    assert_eq!(inc.outcome, Some(Outcome::Recovered));
    assert_eq!(d.steps_run(), 0);
    d.stop().await;
}

#[tokio::test]
async fn hanging_step_is_killed_at_its_timeout_and_the_plan_aborts_and_escalates() {
    let f = Fixture::new().await;
    let pidfile = f.path().join("step.pid");
    let steps = format!(
        r#"
[[plan.step]]
name = "hang"
type = "exec"
command = ["/bin/sh", "-c", "echo $$ > {pid}; exec sleep 60"]
timeout = "700ms"
on_failure = "abort"
"#,
        pid = pidfile.display()
    );
    let mut d = f.start_and_deploy(&f.config(&steps, "")).await;
    d.wait_for("the failed step", 20, |e| {
        matches!(e, Event::Effect(_, Effect::Timeline { entry, .. })
            if matches!(entry.kind, EntryKind::StepFinished { ok: false, .. }))
    })
    .await;
    d.wait_for("the rollback-failed escalation", 5, |e| {
        matches!(e, Event::Effect(_, Effect::Timeline { entry, .. })
            if entry.kind == EntryKind::Decision && entry.text.contains("the plan was stopped"))
    })
    .await;
    let pid: u32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    support::poll_until(Duration::from_secs(5), || support::process_is_gone(pid))
        .await
        .unwrap_or_else(|_| panic!("the step's process {pid} is still alive after its timeout"));
    d.stop().await;
}

#[tokio::test]
async fn stopping_during_a_step_lets_it_finish_and_the_next_start_resumes_the_incident() {
    let f = Fixture::new().await;
    let marker = f.path().join("step-finished");
    let steps = format!(
        r#"
[[plan.step]]
name = "slow"
type = "exec"
command = ["/bin/sh", "-c", "sleep 1; touch {m}"]
timeout = "10s"
"#,
        m = marker.display()
    );
    let text = f.config(&steps, "");
    let mut d = f.start_and_deploy(&text).await;
    let order = d
        .wait_for("the step", 20, |e| {
            matches!(e, Event::Effect(_, Effect::RunStep(_)))
        })
        .await;
    let Event::Effect(_, Effect::RunStep(order)) = order else {
        unreachable!()
    };
    let seen = d.stop().await;
    assert!(
        marker.exists(),
        "the in-flight step reached its end before the daemon stopped"
    );
    assert!(
        !seen
            .iter()
            .any(|e| matches!(e, Event::Effect(_, Effect::IncidentClosed(_)))),
        "a stop does not end the incident: {seen:#?}"
    );

    // Someone switches back by hand meanwhile. The next start takes the incident back
    // where it was: the step's result is known, so it is not run again, and
    // verification goes on and passes.
    f.releases.deploy("v1");
    let mut d = start(load(&text));
    let inc = d.closed_incident(30).await;
    assert_eq!(inc.id, order.incident);
    assert_eq!(
        inc.outcome,
        Some(Outcome::RolledBack),
        "{:#?}",
        inc.timeline
    );
    assert!(
        inc.timeline
            .iter()
            .any(|e| matches!(e.kind, EntryKind::StepFinished { ok: true, .. })),
        "the step's result was recorded before the stop: {:#?}",
        inc.timeline
    );
    assert!(
        inc.timeline
            .iter()
            .any(|e| e.text.contains("incident restored (verifying)")),
        "{:#?}",
        inc.timeline
    );
    assert_eq!(d.steps_run(), 0, "no step runs again after the restart");
    d.stop().await;
}

pub(crate) fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_rearguard")
}

#[tokio::test]
async fn sigterm_stops_the_real_binary_cleanly_within_the_drain() {
    let f = Fixture::new().await;
    let cfg = f.path().join("rearguard.toml");
    std::fs::write(&cfg, f.config(&switch_back(&f), "")).unwrap();
    let mut child = tokio::process::Command::new(binary())
        .args(["run", "--config"])
        .arg(&cfg)
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = child.id().unwrap() as i32;
    // Wait until it is watching: the probe's first request reaches the service.
    let server_hits = f.server.requests.clone();
    support::poll_until(Duration::from_secs(10), || {
        server_hits.load(Ordering::SeqCst) > 0
    })
    .await
    .expect("the daemon probes the service");
    // SAFETY: sending a signal to a child we spawned.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("exits within the drain")
        .unwrap();
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn invalid_configuration_makes_run_exit_64_listing_every_error() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("rearguard.toml");
    std::fs::write(&cfg, "[daemon]\ntick = \"soon\"\nmode = \"yolo\"\n").unwrap();
    let out = tokio::process::Command::new(binary())
        .args(["run", "--config"])
        .arg(&cfg)
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("daemon.tick: expected a duration"),
        "{stderr}"
    );
    assert!(
        stderr.contains("daemon.mode: expected \"enforce\" or \"shadow\""),
        "{stderr}"
    );
}

#[tokio::test]
async fn the_daemon_serves_its_metrics_and_readiness_while_it_works() {
    let f = Fixture::new().await;
    let mut d = start(load(&f.config(&switch_back(&f), "")));
    let addr = match d
        .wait_for("the listener", 10, |e| matches!(e, Event::Listening(_)))
        .await
    {
        Event::Listening(addr) => addr,
        _ => unreachable!(),
    };
    d.wait_for("start", 10, |e| matches!(e, Event::Started))
        .await;
    let client = rearguard::http::client();
    let get = |path: &str| {
        let client = client.clone();
        let url = format!("http://{addr}{path}");
        async move {
            let r = client.get(url).send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    assert_eq!(get("/readyz").await, (200, "ready\n".to_owned()));
    assert_eq!(get("/healthz").await.0, 200);
    f.probed(3).await;
    f.releases.deploy("v2");
    let inc = d.closed_incident(20).await;
    assert_eq!(inc.outcome, Some(Outcome::RolledBack));
    let (status, metrics) = get("/metrics").await;
    assert_eq!(status, 200);
    for line in [
        r#"rearguard_incidents_opened_total{target="shop",cause="breach"} 1"#,
        r#"rearguard_incidents_closed_total{target="shop",outcome="rolled_back"} 1"#,
        r#"rearguard_incidents_open{target="shop"} 0"#,
        r#"rearguard_actions_total{plan="back",step="switch back",outcome="ok"} 1"#,
        r#"rearguard_rule_phase{rule="down",target="shop",phase="ok"} 1"#,
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "{line} not in:\n{metrics}"
        );
    }
    let readings = metrics
        .lines()
        .find_map(|l| l.strip_prefix(r#"rearguard_readings_total{signal="health",state="value"} "#))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(readings >= 3, "{metrics}");
    d.stop().await;
}
