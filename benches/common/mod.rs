//! What the benchmarks that run rearguard's daemon in-process share: the daemon of
//! `rearguard run` on a configuration, telling its events, a revision the daemon reads
//! from a file and that a bench deploys, the programs they compare against, the number of
//! runs and the median of a sample. A bench that declares this module also declares the
//! tests' `support` module; one that compares against Alertmanager adds
//! [`alerting`](./alerting.rs) with the tests' `promstack`.
//!
//! Nothing here measures: a bench takes its own instants.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rearguard::config::Config;
use rearguard::daemon::{self, Event, StartError};
use rearguard::engine::{Effect, Phase};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A daemon running in-process: its events, the token that stops it, and its task.
pub struct Daemon {
    pub events: mpsc::UnboundedReceiver<Event>,
    pub shutdown: CancellationToken,
    pub handle: JoinHandle<Result<(), StartError>>,
}

/// When the daemon decided: the first rule that turned firing (if one did before) and
/// the first step it ordered.
pub struct Decision {
    pub firing: Option<Instant>,
    pub step: Instant,
}

impl Daemon {
    /// Starts the daemon of `rearguard run` on `cfg` (no systemd, no reloads).
    pub fn spawn(cfg: Config) -> Daemon {
        let (tx, events) = mpsc::unbounded_channel();
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
        Daemon {
            events,
            shutdown,
            handle,
        }
    }

    /// Waits for the first event that `pred` accepts; panics if the daemon stops first.
    pub async fn until(&mut self, what: &str, mut pred: impl FnMut(&Event) -> bool) {
        loop {
            match self.events.recv().await {
                Some(e) if pred(&e) => return,
                Some(_) => {}
                None => panic!("the daemon stopped before {what}"),
            }
        }
    }

    /// Waits until the daemon's sources and engine run.
    pub async fn started(&mut self) {
        self.until("it started", |e| matches!(e, Event::Started))
            .await;
    }

    /// Hands the events to a task that returns when the daemon orders its first step.
    /// The daemon's events go to that task from now on.
    pub fn decision(&mut self) -> JoinHandle<Decision> {
        let (_, closed) = mpsc::unbounded_channel();
        let mut events = std::mem::replace(&mut self.events, closed);
        tokio::spawn(async move {
            let mut firing = None;
            loop {
                match events.recv().await {
                    Some(Event::Effect(_, Effect::RuleChanged { transition, .. }))
                        if transition.to == Phase::Firing =>
                    {
                        firing.get_or_insert(Instant::now());
                    }
                    Some(Event::Effect(_, Effect::RunStep(_))) => {
                        return Decision {
                            firing,
                            step: Instant::now(),
                        };
                    }
                    Some(_) => {}
                    None => panic!("the daemon stopped before deciding"),
                }
            }
        })
    }

    /// Stops it and waits for it to end.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.handle.await;
    }
}

/// A target's revision, read from a file by an `exec` change observer every 100 ms; it
/// starts at `v1`.
pub struct Revision {
    dir: PathBuf,
}

impl Revision {
    pub fn new(dir: &Path) -> Revision {
        std::fs::write(dir.join("revision"), "v1\n").unwrap();
        Revision {
            dir: dir.to_owned(),
        }
    }

    /// The target's `change` line.
    pub fn change(&self) -> String {
        let d = self.dir.display();
        format!(
            r#"change = {{ type = "exec", command = ["/bin/sh", "-c", "touch {d}/looked; cat {d}/revision"], interval = "100ms" }}"#
        )
    }

    /// Once the daemon has looked at the revision twice (the first look saw v1), deploys
    /// v2 and waits until the daemon observes it: a fault after it may be acted on.
    pub async fn deploy(&self, daemon: &mut Daemon) {
        let looked = self.dir.join("looked");
        for _ in 0..2 {
            let _ = std::fs::remove_file(&looked);
            crate::support::poll_until(Duration::from_secs(10), || looked.exists())
                .await
                .expect("the daemon looks at the revision");
        }
        std::fs::write(self.dir.join("revision"), "v2\n").unwrap();
        daemon
            .until(
                "it observed v2",
                |e| matches!(e, Event::Effect(_, Effect::ChangeObserved { to, .. }) if to == "v2"),
            )
            .await;
    }
}

/// The configuration of the OOM benches: a target `svc` whose revision is `revision`,
/// the signal `oom` (`signal`: the keys of its table after `name` and `target`), the
/// runbook's rule shape `> 2 within 1m` on it, and a plan of one no-op step. `extra` is
/// TOML placed after `[daemon]`, such as a `[kubernetes]` table.
pub fn oom_config(dir: &Path, revision: &Revision, extra: &str, signal: &str) -> Config {
    let toml = format!(
        r#"
[daemon]
state_dir = "{dir}/state"
listen = "127.0.0.1:0"
tick = "1s"

{extra}

[[target]]
name = "svc"
plan = "back"
blame_window = "5m"
{change}

[[signal]]
name = "oom"
target = "svc"
{signal}

[[rule]]
name = "oom"
signal = "oom"
when = "> 2"
within = "1m"

[[plan]]
name = "back"
[[plan.step]]
name = "noop"
type = "exec"
command = ["/bin/true"]
[plan.verify]
window = "1m"
"#,
        dir = dir.display(),
        change = revision.change(),
    );
    crate::support::config(&toml)
}

/// The path of an installed program, or a panic that says how to install it.
pub fn installed(name: &str, package: &str) -> PathBuf {
    for dir in ["/usr/bin", "/usr/local/bin", "/usr/sbin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    panic!(
        "{name} is not installed; install it with `apt-get install -y {package}` (scripts/bench does this)"
    );
}

/// The number of runs: `RUNS` when it is a positive number, else `default`. `None` when
/// not run by `cargo bench` (under `cargo test` a bench does nothing).
pub fn runs(default: usize) -> Option<usize> {
    if !std::env::args().any(|a| a == "--bench") {
        return None;
    }
    let runs = std::env::var("RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(default);
    Some(runs)
}

/// The median of `v`, `None` when it is empty.
pub fn median(mut v: Vec<f64>) -> Option<f64> {
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
