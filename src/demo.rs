//! `rearguard demo`: the real daemon, rules, engine and release-switch action against an
//! embedded simulated service on a loopback port.
//!
//! The service has two release directories. It loads the release that the `current`
//! symlink names when it starts and when it is restarted (`POST /admin/restart`), like a
//! real process. v1 is healthy; v2 answers `/health` with 500 and serves errors in
//! `/metrics`. The demo deploys v2 the way a deploy tool would (switch the symlink,
//! restart), and rearguard must notice, switch back, restart, and verify.
//!
//! This module owns the demo only; nothing in the daemon knows it is a demo.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{self, Format};
use crate::daemon::{self, Event};
use crate::engine::{Effect, EntryKind, Outcome};

/// The configuration the demo runs, with `{dir}` and `{port}` filled in at start.
pub const DEMO_CONFIG: &str = r#"
[daemon]
state_dir = "{dir}/state"
listen = "127.0.0.1:0"
mode = "enforce"
tick = "100ms"
drain_timeout = "5s"
# The status page on `listen` is open to read (loopback only, for the demo's length).
read_open = true

[[target]]
name = "shop"
plan = "switch-back"
blame_window = "5m"
cooldown = "10m"
change = { type = "release_symlink", path = "{dir}/current", interval = "200ms" }

[[signal]]
name = "health"
target = "shop"
type = "http_probe"
url = "http://127.0.0.1:{port}/health"
interval = "250ms"
timeout = "1s"
json_pointer = "/status"
json_equals = "healthy"

[[rule]]
name = "service-unavailable"
signal = "health"
when = "failing"
consecutive = 3

[[plan]]
name = "switch-back"

[[plan.step]]
name = "point current at the previous release"
type = "release_switch"
current = "{dir}/current"
releases = "{dir}/releases"
timeout = "10s"

[[plan.step]]
name = "restart the service"
type = "http"
method = "POST"
url = "http://127.0.0.1:{port}/admin/restart"
expect_status = [200]
timeout = "5s"
retries = 1

[plan.verify]
window = "2s"
"#;

/// The simulated service's state: the loaded release and request counters.
struct Service {
    dir: PathBuf,
    release: Mutex<Release>,
    requests_ok: AtomicU64,
    requests_err: AtomicU64,
}

#[derive(Clone)]
struct Release {
    name: String,
    healthy: bool,
}

impl Service {
    /// Loads the release `current` points at, as a process does when it starts.
    fn load(&self) -> Result<Release, String> {
        let link = std::fs::read_link(self.dir.join("current"))
            .map_err(|e| format!("cannot read current: {e}"))?;
        let name = link
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let behaviour =
            std::fs::read_to_string(self.dir.join("releases").join(&name).join("behaviour"))
                .map_err(|e| format!("release {name} has no behaviour file: {e}"))?;
        Ok(Release {
            name,
            healthy: behaviour.trim() == "healthy",
        })
    }

    fn restart(&self) -> Result<String, String> {
        let r = self.load()?;
        let name = r.name.clone();
        *self.release.lock().unwrap_or_else(|p| p.into_inner()) = r;
        Ok(name)
    }

    fn current(&self) -> Release {
        self.release
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

async fn health(State(svc): State<Arc<Service>>) -> (StatusCode, String) {
    let r = svc.current();
    if r.healthy {
        svc.requests_ok.fetch_add(1, Ordering::Relaxed);
        (
            StatusCode::OK,
            format!(r#"{{"status":"healthy","release":"{}"}}"#, r.name),
        )
    } else {
        svc.requests_err.fetch_add(1, Ordering::Relaxed);
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!(
                r#"{{"status":"failing","release":"{}","error":"connection pool exhausted"}}"#,
                r.name
            ),
        )
    }
}

async fn metrics(State(svc): State<Arc<Service>>) -> String {
    let ok = svc.requests_ok.load(Ordering::Relaxed);
    let err = svc.requests_err.load(Ordering::Relaxed);
    format!(
        "# TYPE http_requests_total counter\nhttp_requests_total{{code=\"200\"}} {ok}\nhttp_requests_total{{code=\"500\"}} {err}\n"
    )
}

async fn restart(State(svc): State<Arc<Service>>) -> (StatusCode, String) {
    match svc.restart() {
        Ok(name) => (StatusCode::OK, format!("restarted on {name}\n")),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
    }
}

/// Lays out `dir/releases/{v1,v2}` and `dir/current -> releases/v1`.
fn lay_out(dir: &Path) -> std::io::Result<()> {
    for (name, behaviour) in [("v1", "healthy"), ("v2", "broken")] {
        let d = dir.join("releases").join(name);
        std::fs::create_dir_all(&d)?;
        std::fs::write(d.join("behaviour"), format!("{behaviour}\n"))?;
    }
    let current = dir.join("current");
    let _ = std::fs::remove_file(&current);
    std::os::unix::fs::symlink("releases/v1", &current)
}

/// Points `current` at `release` atomically, as a deploy tool does.
fn deploy(dir: &Path, release: &str) -> std::io::Result<()> {
    let tmp = dir.join(".current.deploy");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(format!("releases/{release}"), &tmp)?;
    std::fs::rename(&tmp, dir.join("current"))
}

/// Runs the demo; returns the process exit code.
pub async fn run(dir: Option<PathBuf>) -> ExitCode {
    match run_inner(dir).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo failed: {e}");
            ExitCode::from(1)
        }
    }
}

async fn run_inner(dir: Option<PathBuf>) -> Result<(), String> {
    let started = Instant::now();
    let dir = demo_dir(dir)?;
    lay_out(&dir).map_err(|e| format!("cannot lay out releases in {}: {e}", dir.display()))?;

    let svc = Arc::new(Service {
        dir: dir.clone(),
        release: Mutex::new(Release {
            name: String::new(),
            healthy: false,
        }),
        requests_ok: AtomicU64::new(0),
        requests_err: AtomicU64::new(0),
    });
    svc.restart()?;
    let (port, stop_service, server) = serve(Arc::clone(&svc)).await?;

    let text = DEMO_CONFIG
        .replace("{dir}", &dir.display().to_string())
        .replace("{port}", &port.to_string());
    let cfg = config::load_str(&text, Format::Toml, std::iter::empty(), &dir)
        .map_err(|e| format!("the demo configuration is invalid:\n{e}"))?;
    std::fs::write(dir.join("rearguard.toml"), &text).map_err(|e| e.to_string())?;

    println!(
        "rearguard demo: a simulated service on 127.0.0.1:{port}, releases in {}",
        dir.display()
    );
    println!("configuration: {}\n", dir.join("rearguard.toml").display());
    say(started, "service started on release v1 (healthy)");

    let (tx, rx) = mpsc::unbounded_channel();
    let shutdown = CancellationToken::new();
    let daemon = tokio::spawn(daemon::run(
        cfg.clone(),
        daemon::Options {
            shutdown: shutdown.clone(),
            observer: Some(tx),
            systemd: None,
            reload: None,
        },
    ));
    let ending = follow(started, &cfg, &svc, rx, &shutdown).await;
    // Also when the demo failed: the daemon drains and stops before the service does.
    shutdown.cancel();
    let _ = daemon.await;
    let release = svc.current();
    stop_service.cancel();
    let _ = server.await;
    conclude(started, &ending?, &release)
}

/// The demo's directory: the one given, or a new one under the temporary directory;
/// created and resolved.
fn demo_dir(dir: Option<PathBuf>) -> Result<PathBuf, String> {
    let dir = match dir {
        Some(d) => d,
        None => std::env::temp_dir().join(format!(
            "rearguard-demo-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        )),
    };
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    dir.canonicalize()
        .map_err(|e| format!("cannot resolve {}: {e}", dir.display()))
}

/// Serves the simulated service on a loopback port until the returned token is
/// cancelled.
async fn serve(
    svc: Arc<Service>,
) -> Result<(u16, CancellationToken, tokio::task::JoinHandle<()>), String> {
    let app = Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/admin/restart", post(restart))
        .with_state(svc);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("cannot listen on loopback: {e}"))?;
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    let stop = CancellationToken::new();
    let stopped = stop.clone();
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move { stopped.cancelled().await })
            .await;
    });
    Ok((port, stop, server))
}

/// One line of the demo's story, with the time since it started.
fn say(started: Instant, text: &str) {
    println!("[{:>5.1}s] {text}", started.elapsed().as_secs_f64());
}

/// How the daemon's run ended, as the demo saw it.
#[derive(Default)]
struct Ending {
    outcome: Option<Outcome>,
    report: Option<PathBuf>,
    charts: Vec<PathBuf>,
}

/// Deploys v2 once rearguard has had time to see v1 healthy, then tells what the daemon
/// does until it stops (the incident closed) or 60 s passed.
async fn follow(
    started: Instant,
    cfg: &config::Config,
    svc: &Service,
    mut rx: mpsc::UnboundedReceiver<Event>,
    shutdown: &CancellationToken,
) -> Result<Ending, String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut deployed = false;
    let mut ending = Ending::default();
    // The first phase waits until rearguard has seen v1 as the current revision and a
    // few healthy probes, so the deploy of v2 is a real change against a healthy
    // baseline.
    let deploy_at = tokio::time::Instant::now() + Duration::from_millis(1500);
    loop {
        let next = tokio::select! {
            e = rx.recv() => e,
            _ = tokio::time::sleep_until(deploy_at), if !deployed => {
                deployed = true;
                say(started, "deploying v2: current -> releases/v2, restarting the service");
                deploy(&svc.dir, "v2").map_err(|e| format!("cannot deploy v2: {e}"))?;
                svc.restart()?;
                continue;
            }
            _ = tokio::time::sleep_until(deadline) => {
                shutdown.cancel();
                return Err("no rollback within 60s".to_owned());
            }
        };
        match next {
            None | Some(Event::Stopped) => return Ok(ending),
            Some(event) => tell(started, cfg, event, &mut ending, shutdown),
        }
    }
}

/// Tells one of the daemon's events; an incident closing ends the run.
fn tell(
    started: Instant,
    cfg: &config::Config,
    event: Event,
    ending: &mut Ending,
    shutdown: &CancellationToken,
) {
    let say = |text: &str| say(started, text);
    match event {
        Event::Started => {
            say("rearguard started: watching /health every 250ms, rule: 3 consecutive failures")
        }
        Event::Effect(_, Effect::ChangeObserved { from, to, .. }) => say(&format!(
            "rearguard saw the revision change: {from} -> {to}"
        )),
        Event::Effect(_, Effect::RuleChanged { rule, transition }) => say(&format!(
            "rule {}: {} -> {} ({})",
            cfg.rules[rule].name,
            transition.from.name(),
            transition.to.name(),
            transition.evidence
        )),
        Event::Effect(_, Effect::Timeline { entry, .. }) => match entry.kind {
            EntryKind::Rule | EntryKind::Notification => {}
            EntryKind::StepFinished { ref output, .. } => {
                say(&entry.text);
                for line in output.lines().filter(|l| !l.trim().is_empty()).take(4) {
                    println!("          | {line}");
                }
            }
            _ => say(&entry.text),
        },
        Event::Effect(_, Effect::Notify(n)) => {
            say(&format!("notify ({}): {}", n.occasion.name(), n.summary))
        }
        Event::Effect(_, Effect::IncidentClosed(inc)) => {
            ending.outcome = inc.outcome.clone();
            ending.charts = inc
                .rules
                .iter()
                .map(|&r| {
                    let name = &cfg.rules[r].name;
                    crate::report::chart_path(&cfg.daemon.state_dir, &inc.id, name)
                })
                .collect();
            shutdown.cancel();
        }
        Event::Listening(addr) => say(&format!(
            "status page: http://{addr}/ (while the demo runs)"
        )),
        Event::Effect(..) | Event::Delivery(_) | Event::Reloaded | Event::ReloadRefused(_) => {}
        Event::Report { path, .. } => ending.report = Some(path),
        Event::Stopped => {}
    }
}

/// The demo's verdict: rolled back to v1, verified, reported; or what went otherwise.
fn conclude(started: Instant, ending: &Ending, release: &Release) -> Result<(), String> {
    println!();
    match (&ending.outcome, &ending.report) {
        (Some(Outcome::RolledBack), Some(path)) if release.healthy && release.name == "v1" => {
            println!(
                "rolled back to v1 and verified healthy in {:.1}s",
                started.elapsed().as_secs_f64()
            );
            println!("incident report: {}", path.display());
            for chart in &ending.charts {
                println!("chart: {}", chart.display());
            }
            Ok(())
        }
        _ => Err(format!(
            "the demo did not end as expected: outcome {:?}, service on {} ({}), report {:?}",
            ending.outcome,
            release.name,
            if release.healthy {
                "healthy"
            } else {
                "unhealthy"
            },
            ending.report
        )),
    }
}
