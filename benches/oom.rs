//! OOM kill to decision: from the kernel's OOM kill in a real cgroup to the engine
//! ordering the rollback's first step.
//!
//! Each run creates a real v1 memory cgroup (`/sys/fs/cgroup/memory/rearguard-bench-*`,
//! 16 MiB limit), starts rearguard's daemon in-process watching it (`cgroup_oom`, with an
//! interval of 1 h, so that only the kernel's notification can deliver the kill in time),
//! a rule `> 0 within 1m` and a plan, deploys a new revision, then starts a process that
//! joins the cgroup and allocates until the kernel kills it.
//!
//! Measured to the moment the daemon's observer hears the `RunStep` effect:
//! - from the counter change: a separate thread reads `memory.oom_control` every 1 ms
//!   and notes when `oom_kill` goes up (at most ~1 ms after the kernel counted the kill);
//! - from the victim's death as `waitpid` sees it (the kernel counts the kill before the
//!   victim has exited, so this can be later than the decision: a negative time).
//!
//! `cargo bench --bench oom` (root, cgroup v1's memory controller at
//! /sys/fs/cgroup/memory). `RUNS=N` sets the number of runs (default 9). Under
//! `cargo test` it does nothing.

#[path = "../tests/it/support.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rearguard::daemon::{self, Event};
use rearguard::engine::Effect;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const V1_MEMORY: &str = "/sys/fs/cgroup/memory";

/// The bench's cgroup, removed when dropped.
struct Cgroup(PathBuf);

impl Cgroup {
    fn create(run: usize) -> Cgroup {
        let path =
            Path::new(V1_MEMORY).join(format!("rearguard-bench-{}-{run}", std::process::id()));
        std::fs::create_dir(&path).unwrap_or_else(|e| {
            panic!(
                "cannot create {} (needs root and cgroup v1's memory controller): {e}",
                path.display()
            )
        });
        let cg = Cgroup(path);
        std::fs::write(cg.0.join("memory.limit_in_bytes"), "16M").expect("set the limit");
        cg
    }

    fn kills(&self) -> u64 {
        std::fs::read_to_string(self.0.join("memory.oom_control"))
            .ok()
            .and_then(|t| rearguard::source::cgroup_oom::parse_v1(&t).ok())
            .map_or(0, |c| c.oom_kill)
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::remove_dir(&self.0).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

struct RunResult {
    from_counter: Duration,
    /// Positive when the decision came after `waitpid` saw the death.
    from_death_ms: f64,
}

async fn one_run(run: usize) -> RunResult {
    let cg = Cgroup::create(run);
    let dir = tempfile::tempdir().unwrap();
    let looked = dir.path().join("looked");
    let revision = dir.path().join("revision");
    std::fs::write(&revision, "v1\n").unwrap();
    let toml = format!(
        r#"
[daemon]
state_dir = "{dir}/state"
listen = "127.0.0.1:0"
tick = "1s"

[[target]]
name = "svc"
plan = "back"
blame_window = "5m"
change = {{ type = "exec", command = ["/bin/sh", "-c", "touch {dir}/looked; cat {dir}/revision"], interval = "100ms" }}

[[signal]]
name = "oom"
target = "svc"
type = "cgroup_oom"
cgroup = "{cg}"
interval = "1h"

[[rule]]
name = "oom"
signal = "oom"
when = "> 0"
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
        dir = dir.path().display(),
        cg = cg.0.display()
    );
    let cfg = rearguard::config::load_str(
        &toml,
        rearguard::config::Format::Toml,
        std::iter::empty(),
        Path::new("."),
    )
    .expect("valid configuration");
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
    // Started, and the revision looked at twice (the first look saw v1).
    loop {
        if let Some(Event::Started) = rx.recv().await {
            break;
        }
    }
    for _ in 0..2 {
        let _ = std::fs::remove_file(&looked);
        support::poll_until(Duration::from_secs(10), || looked.exists())
            .await
            .expect("the daemon looks at the revision");
    }
    std::fs::write(&revision, "v2\n").unwrap();
    loop {
        if let Some(Event::Effect(_, Effect::ChangeObserved { .. })) = rx.recv().await {
            break;
        }
    }

    // The counter watcher: a thread that reads the counter every 1 ms.
    let stop = Arc::new(AtomicBool::new(false));
    let counter_seen = {
        let stop = Arc::clone(&stop);
        let path = cg.0.clone();
        std::thread::spawn(move || {
            let cg = Cgroup(path);
            let seen = loop {
                if cg.kills() > 0 {
                    break Some(Instant::now());
                }
                if stop.load(Ordering::SeqCst) {
                    break None;
                }
                std::thread::sleep(Duration::from_millis(1));
            };
            std::mem::forget(cg);
            seen
        })
    };
    let script = format!(
        "echo $$ > {}/cgroup.procs && exec tail /dev/zero",
        cg.0.display()
    );
    let mut child = tokio::process::Command::new("/bin/sh")
        .args(["-c", &script])
        .spawn()
        .expect("start the victim");
    let decided = tokio::spawn(async move {
        loop {
            match rx.recv().await {
                Some(Event::Effect(_, Effect::RunStep(_))) => return Instant::now(),
                Some(_) => {}
                None => panic!("the daemon stopped before deciding"),
            }
        }
    });
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("the victim is killed within 30s")
        .unwrap();
    let died = Instant::now();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "the victim was not OOM-killed"
    );
    let decided = tokio::time::timeout(Duration::from_secs(30), decided)
        .await
        .expect("a decision within 30s")
        .unwrap();
    stop.store(true, Ordering::SeqCst);
    let counted = counter_seen.join().unwrap().expect("the counter went up");
    shutdown.cancel();
    let _ = handle.await;
    RunResult {
        from_counter: decided.saturating_duration_since(counted),
        from_death_ms: if decided >= died {
            decided.duration_since(died).as_secs_f64() * 1000.0
        } else {
            -(died.duration_since(decided).as_secs_f64() * 1000.0)
        },
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let runs: usize = std::env::var("RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(9);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut counter = Vec::new();
    let mut death = Vec::new();
    for i in 0..runs {
        let r = rt.block_on(one_run(i));
        let c = r.from_counter.as_secs_f64() * 1000.0;
        println!(
            "run {}: counter change to decision {c:.1} ms, victim's death (waitpid) to decision {:.1} ms",
            i + 1,
            r.from_death_ms
        );
        counter.push(c);
        death.push(r.from_death_ms);
    }
    let worst = counter.iter().copied().fold(0.0, f64::max);
    println!(
        "median of {runs}: counter change to decision {:.1} ms (worst {worst:.1} ms), death to decision {:.1} ms; goal under 1000 ms",
        median(counter),
        median(death)
    );
}
