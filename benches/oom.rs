//! OOM kills to decision: rearguard beside the usual alternatives, on the same real OOM
//! kills in a real cgroup, measured from the same instant.
//!
//! Each run creates a real v1 memory cgroup (`/sys/fs/cgroup/memory/rearguard-bench-*`,
//! 16 MiB limit) and starts, all on loopback:
//! - rearguard's daemon in-process watching the cgroup (`cgroup_oom`, with an interval of
//!   1 h, so that only the kernel's notification can deliver the kills in time), the
//!   runbook's rule shape `> 2 within 1m` (the third kill fires it) and a plan; a new
//!   revision is deployed before the kills;
//! - the real node exporter with only its vmstat collector (`node_vmstat_oom_kill`, the
//!   host's /proc/vmstat `oom_kill`), scraped every 1 s by two real Prometheus servers that
//!   evaluate every 1 s two alerting rules with `for: 0s`: the usual
//!   `increase(node_vmstat_oom_kill[1m]) > 2` and `increase(node_vmstat_oom_kill[1m]) >= 3`.
//!   One Prometheus sends to a real Alertmanager with default timing, the other to one
//!   tuned (group_wait 0s, group_interval 1s); each Alertmanager posts its webhook to a
//!   local receiver that records the first firing delivery of each alert;
//! - monit with a 1 s cycle and a `check program` that fails once the cgroup has counted 3
//!   kills; its action `exec`s `touch` on a file.
//!
//! After a warm-up (each Prometheus holds 10 samples), three processes join the cgroup one
//! after the other, 3 s apart, and the kernel OOM-kills each. A thread reads the cgroup's
//! `memory.oom_control` and monit's file every 1 ms. Measured from the moment the counter
//! reaches 3 (the third kill) to each path's decision: rearguard's `RunStep` effect, the
//! first firing webhook delivery of each alert, monit's file appearing. A path that decides
//! before the third kill has a negative time.
//!
//! The node exporter's counter is host-wide: a run in which the host counted OOM kills
//! besides the bench's three has its Prometheus figures left out, and says so.
//!
//! `cargo bench --bench oom` (root, cgroup v1's memory controller at
//! /sys/fs/cgroup/memory, and the Debian packages `prometheus`, `prometheus-alertmanager`,
//! `prometheus-node-exporter` and `monit`). `RUNS=N` sets the number of runs (default 3,
//! about a minute each). Under `cargo test` it does nothing.

mod common;

#[path = "common/alerting.rs"]
mod alerting;

#[path = "../tests/it/support.rs"]
mod support;

#[allow(dead_code)]
#[path = "../tests/it/promstack.rs"]
mod promstack;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::median;

const V1_MEMORY: &str = "/sys/fs/cgroup/memory";

/// Kills injected per run; every rule fires on the last one.
const KILLS: u64 = 3;

/// Between one victim's death and the next victim's start: longer than a scrape plus an
/// evaluation, so that Prometheus sees each kill on its own, as it would see kills spread
/// over minutes.
const SPACING: Duration = Duration::from_secs(3);

/// Samples each Prometheus holds before the first kill. With fewer, `increase()`
/// extrapolates two kills over so short a span that even `>= 3` could fire on them.
const WARM_SAMPLES: f64 = 10.0;

/// How long after the third kill every path has to decide (the default Alertmanager's
/// bound is 32 s).
const PATIENCE: Duration = Duration::from_secs(45);

const RULES: &str = r#"
groups:
  - name: oom
    interval: 1s
    rules:
      - alert: OomKillsAbove2
        expr: increase(node_vmstat_oom_kill[1m]) > 2
        for: 0s
      - alert: OomKillsAtLeast3
        expr: increase(node_vmstat_oom_kill[1m]) >= 3
        for: 0s
"#;

/// Alertmanager's default timing (group_wait 30s, group_interval 5m); one group per alert.
const AM_DEFAULT: &str = "route:\n  receiver: hook\n  group_by: [alertname]\nreceivers:\n  - name: hook\n    webhook_configs:\n      - url: URL\n";

/// Tuned for speed: no grouping wait.
const AM_TUNED: &str = "route:\n  receiver: hook\n  group_by: [alertname]\n  group_wait: 0s\n  group_interval: 1s\n  repeat_interval: 1h\nreceivers:\n  - name: hook\n    webhook_configs:\n      - url: URL\n";

/// The paths measured, in the order of every table: a short label for the per-run lines,
/// the path, and its theoretical bound from the third kill's counter change.
const PATHS: [(&str, &str, &str); 6] = [
    (
        "rearguard",
        "rearguard, `> 2 within 1m` on the cgroup (kernel notification)",
        "~0 s",
    ),
    (
        "monit",
        "monit, 1 s cycle, `check program` reading the cgroup's counter",
        "2 s (2 cycles)",
    ),
    (
        ">= 3 tuned",
        "Prometheus `increase(node_vmstat_oom_kill[1m]) >= 3` + Alertmanager tuned + webhook",
        "2 s (1 s scrape + 1 s evaluation + 0 s group_wait)",
    ),
    (
        ">= 3 default",
        "Prometheus `increase(node_vmstat_oom_kill[1m]) >= 3` + Alertmanager default + webhook",
        "32 s (1 s + 1 s + 30 s group_wait)",
    ),
    (
        "> 2 tuned",
        "Prometheus `increase(node_vmstat_oom_kill[1m]) > 2` + Alertmanager tuned + webhook",
        "2 s from the 2nd kill",
    ),
    (
        "> 2 default",
        "Prometheus `increase(node_vmstat_oom_kill[1m]) > 2` + Alertmanager default + webhook",
        "32 s from the 2nd kill",
    ),
];

/// The `> 2` paths fire on the second kill: `increase()` extrapolates an increase of 2
/// to slightly more than 2.
const FIRES_ON_SECOND: [usize; 2] = [4, 5];

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
        kills_in(&self.0)
    }
}

fn kills_in(cgroup: &Path) -> u64 {
    std::fs::read_to_string(cgroup.join("memory.oom_control"))
        .ok()
        .and_then(|t| rearguard::source::cgroup_oom::parse_v1(&t).ok())
        .map_or(0, |c| c.oom_kill)
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::remove_dir(&self.0).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The host's OOM kill counter, the one the node exporter exposes.
fn host_kills() -> u64 {
    std::fs::read_to_string("/proc/vmstat")
        .expect("read /proc/vmstat")
        .lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|v| v.trim().parse().ok())
        .expect("/proc/vmstat has oom_kill")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// A helper process (node exporter, monit), killed by PID when stopped or dropped.
struct Helper {
    child: tokio::process::Child,
    log: PathBuf,
}

impl Helper {
    fn spawn(bin: &Path, args: &[String], log: PathBuf) -> Helper {
        let file = std::fs::File::create(&log).expect("helper log file");
        let child = tokio::process::Command::new(bin)
            .args(args)
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        Helper { child, log }
    }

    /// Panics with the helper's log if it has exited.
    fn assert_running(&mut self, what: &str) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "{what} exited ({status}); its log:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }

    async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

/// The node exporter on a free loopback port with only the vmstat collector, ready when
/// it serves `node_vmstat_oom_kill`.
async fn node_exporter(dir: &Path) -> (Helper, String) {
    let bin = common::installed("prometheus-node-exporter", "prometheus-node-exporter");
    let addr = format!("127.0.0.1:{}", free_port());
    let mut helper = Helper::spawn(
        &bin,
        &[
            format!("--web.listen-address={addr}"),
            "--collector.disable-defaults".to_owned(),
            "--collector.vmstat".to_owned(),
        ],
        dir.join("node-exporter.log"),
    );
    let client = rearguard::http::client();
    let url = format!("http://{addr}/metrics");
    let ready = support::poll_until_async(Duration::from_secs(30), || {
        let (client, url) = (client.clone(), url.clone());
        async move {
            match client.get(&url).send().await {
                Ok(r) => r
                    .text()
                    .await
                    .is_ok_and(|t| t.lines().any(|l| l.starts_with("node_vmstat_oom_kill "))),
                Err(_) => false,
            }
        }
    })
    .await;
    helper.assert_running("the node exporter");
    assert!(
        ready.is_ok(),
        "the node exporter did not serve node_vmstat_oom_kill within 30s"
    );
    (helper, addr)
}

/// monit in the foreground with a 1 s cycle: its `check program` fails once the cgroup
/// has counted `KILLS` kills, and the failure's action touches `fired`.
fn monit(dir: &Path, cgroup: &Path, fired: &Path) -> Helper {
    let bin = common::installed("monit", "monit");
    let check = dir.join("oom-check.sh");
    std::fs::write(
        &check,
        format!(
            "#!/bin/sh\nkills=$(awk '$1 == \"oom_kill\" {{ print $2 }}' {}/memory.oom_control)\ntest \"$kills\" -lt {KILLS}\n",
            cgroup.display()
        ),
    )
    .expect("monit's check script");
    std::fs::set_permissions(&check, std::fs::Permissions::from_mode(0o755)).unwrap();
    let rc = dir.join("monitrc");
    let d = dir.display();
    std::fs::write(
        &rc,
        format!(
            "set daemon 1\nset logfile {d}/monit.log\nset pidfile {d}/monit.pid\nset idfile {d}/monit.id\nset statefile {d}/monit.state\ncheck program oom_kills with path \"{}\"\n    if status != 0 then exec \"/usr/bin/touch {}\"\n",
            check.display(),
            fired.display()
        ),
    )
    .expect("monitrc");
    // monit refuses a control file that others can read.
    std::fs::set_permissions(&rc, std::fs::Permissions::from_mode(0o600)).unwrap();
    Helper::spawn(
        &bin,
        &["-I".to_owned(), "-c".to_owned(), rc.display().to_string()],
        dir.join("monit.out"),
    )
}

/// How many samples of the counter Prometheus holds over the last minute.
async fn samples(client: &reqwest::Client, prom: &str) -> f64 {
    let url = format!("{prom}/api/v1/query?query=count_over_time(node_vmstat_oom_kill%5B1m%5D)");
    let Ok(response) = client.get(&url).send().await else {
        return 0.0;
    };
    let Ok(body) = response.json::<serde_json::Value>().await else {
        return 0.0;
    };
    body["data"]["result"][0]["value"][1]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// What the 1 ms watcher thread has seen.
#[derive(Default)]
struct Seen {
    /// When the cgroup's counter reached 1, 2, 3.
    kills: [Option<Instant>; KILLS as usize],
    monit: Option<Instant>,
}

/// Starts a process that joins the cgroup and allocates until the kernel kills it;
/// returns when `waitpid` has seen the death.
async fn kill_one(cg: &Cgroup) -> Instant {
    let script = format!(
        "echo $$ > {}/cgroup.procs && exec tail /dev/zero",
        cg.0.display()
    );
    let mut child = tokio::process::Command::new("/bin/sh")
        .args(["-c", &script])
        .kill_on_drop(true)
        .spawn()
        .expect("start the victim");
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("the victim is killed within 30s")
        .unwrap();
    let died = Instant::now();
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "the victim was not OOM-killed"
    );
    died
}

struct RunResult {
    /// Seconds from the third kill's counter change to each path's decision, in the order
    /// of `PATHS`; `None` when the path did not decide within `PATIENCE`, or when foreign
    /// kills on the host make a Prometheus figure meaningless.
    paths: [Option<f64>; PATHS.len()],
    /// Seconds from the second kill's counter change to the third's.
    second_to_third: f64,
    /// Milliseconds from the third victim's death (waitpid) to rearguard's decision.
    death_to_rearguard_ms: Option<f64>,
    /// OOM kills the host counted during the run besides the bench's.
    foreign_kills: u64,
}

fn signed_secs(from: Instant, to: Instant) -> f64 {
    if to >= from {
        to.duration_since(from).as_secs_f64()
    } else {
        -from.duration_since(to).as_secs_f64()
    }
}

async fn one_run(run: usize) -> RunResult {
    let cg = Cgroup::create(run);
    let dir = tempfile::tempdir().unwrap();
    let client = rearguard::http::client();

    // The alternative: node exporter, Prometheus, Alertmanager, webhook receivers.
    let tuned = alerting::start(AM_TUNED).await;
    let default = alerting::start(AM_DEFAULT).await;
    let host_before = host_kills();
    let (exporter, exporter_addr) = node_exporter(dir.path()).await;
    let targets = [exporter_addr];
    let prom_tuned = promstack::prometheus(
        &targets,
        "1s",
        Some(RULES),
        Some(&tuned.alertmanager.addr()),
    )
    .await;
    let prom_default = promstack::prometheus(
        &targets,
        "1s",
        Some(RULES),
        Some(&default.alertmanager.addr()),
    )
    .await;

    let fired = dir.path().join("monit-fired");
    let mut monit = monit(dir.path(), &cg.0, &fired);

    // rearguard.
    let revision = common::Revision::new(dir.path());
    let signal = format!(
        r#"type = "cgroup_oom"
cgroup = "{}"
interval = "1h""#,
        cg.0.display()
    );
    let cfg = common::oom_config(dir.path(), &revision, "", &signal);
    let mut daemon = common::Daemon::spawn(cfg);
    daemon.started().await;
    revision.deploy(&mut daemon).await;
    let decided = daemon.decision();

    // Warm-up: enough samples in each Prometheus that only a third kill reaches 3.
    for prom in [&prom_tuned, &prom_default] {
        let url = prom.url();
        let warm = support::poll_until_async(Duration::from_secs(60), || {
            let (client, url) = (client.clone(), url.clone());
            async move { samples(&client, &url).await >= WARM_SAMPLES }
        })
        .await;
        assert!(
            warm.is_ok(),
            "prometheus did not hold {WARM_SAMPLES} samples of node_vmstat_oom_kill within 60s; its log:\n{}",
            prom.log()
        );
    }
    monit.assert_running("monit");

    // The watcher: a thread that reads the counter and looks for monit's file every 1 ms.
    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (seen, stop) = (Arc::clone(&seen), Arc::clone(&stop));
        let (cgroup, fired) = (cg.0.clone(), fired.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let kills = kills_in(&cgroup);
                let monit = fired.exists();
                let now = Instant::now();
                let mut seen = seen.lock().unwrap();
                for n in 0..(kills.min(KILLS) as usize) {
                    seen.kills[n].get_or_insert(now);
                }
                if monit {
                    seen.monit.get_or_insert(now);
                }
                drop(seen);
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };

    let mut died = None;
    for n in 0..KILLS {
        if n > 0 {
            // Pacing the injected fault, not waiting for something to happen.
            tokio::time::sleep(SPACING).await;
        }
        died = Some(kill_one(&cg).await);
    }
    let died = died.expect("at least one kill");
    assert_eq!(cg.kills(), KILLS, "the cgroup counted every kill");

    let counted = support::poll_until(Duration::from_secs(5), || {
        seen.lock().unwrap().kills[KILLS as usize - 1].is_some()
    })
    .await;
    assert!(counted.is_ok(), "the watcher saw the third kill");
    let all_decided = || {
        let s = seen.lock().unwrap();
        decided.is_finished()
            && s.monit.is_some()
            && [&tuned.hook, &default.hook]
                .iter()
                .all(|h| h.at("OomKillsAbove2").is_some() && h.at("OomKillsAtLeast3").is_some())
    };
    let _ = support::poll_until(PATIENCE, all_decided).await;
    stop.store(true, Ordering::SeqCst);
    watcher.join().expect("the watcher thread");
    let host_after = host_kills();

    let rearguard = if decided.is_finished() {
        Some(decided.await.expect("the observer task").step)
    } else {
        decided.abort();
        None
    };
    daemon.stop().await;
    monit.stop().await;
    exporter.stop().await;
    drop((prom_tuned, prom_default));

    let seen = seen.lock().unwrap();
    let second = seen.kills[KILLS as usize - 2].expect("the second kill was seen");
    let third = seen.kills[KILLS as usize - 1].expect("the third kill was seen");
    let foreign_kills = (host_after - host_before).saturating_sub(KILLS);
    let prom = |at: Option<Instant>| {
        if foreign_kills > 0 {
            None
        } else {
            at.map(|t| signed_secs(third, t))
        }
    };
    RunResult {
        paths: [
            rearguard.map(|t| signed_secs(third, t)),
            seen.monit.map(|t| signed_secs(third, t)),
            prom(tuned.hook.at("OomKillsAtLeast3")),
            prom(default.hook.at("OomKillsAtLeast3")),
            prom(tuned.hook.at("OomKillsAbove2")),
            prom(default.hook.at("OomKillsAbove2")),
        ],
        second_to_third: signed_secs(second, third),
        death_to_rearguard_ms: rearguard.map(|t| signed_secs(died, t) * 1000.0),
        foreign_kills,
    }
}

/// Milliseconds under a second, seconds above.
fn time(secs: Option<f64>) -> String {
    match secs {
        None => "-".to_owned(),
        Some(s) if s.abs() < 1.0 => format!("{:.1} ms", s * 1000.0),
        Some(s) => format!("{s:.2} s"),
    }
}

fn main() {
    let Some(runs) = common::runs(3) else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut results = Vec::new();
    for i in 0..runs {
        let r = rt.block_on(one_run(i));
        println!(
            "run {}: third kill to decision: {}; third victim's death (waitpid) to rearguard {}; second kill to third {:.2} s",
            i + 1,
            PATHS
                .iter()
                .zip(r.paths)
                .map(|((label, _, _), t)| format!("{label} {}", time(t)))
                .collect::<Vec<_>>()
                .join(", "),
            r.death_to_rearguard_ms
                .map_or("-".to_owned(), |ms| format!("{ms:.1} ms")),
            r.second_to_third
        );
        if r.foreign_kills > 0 {
            println!(
                "run {}: the host counted {} OOM kill(s) besides the bench's {KILLS}: this run's Prometheus figures are left out",
                i + 1,
                r.foreign_kills
            );
        }
        results.push(r);
    }

    // Every path's time from the third kill, by run.
    println!();
    println!("| Run | {} |", PATHS.map(|(label, _, _)| label).join(" | "));
    println!("|---:|{}", "---:|".repeat(PATHS.len()));
    for (n, r) in results.iter().enumerate() {
        println!("| {} | {} |", n + 1, r.paths.map(time).join(" | "));
    }

    let col = |i: usize| median(results.iter().filter_map(|r| r.paths[i]).collect());
    let counted = |i: usize| results.iter().filter(|r| r.paths[i].is_some()).count();
    let rearguard = col(0);
    println!();
    println!(
        "| Path | Theoretical bound from the third kill | Median, third kill to decision | Ratio to rearguard |"
    );
    println!("|---|---|---:|---:|");
    for (i, (_, name, bound)) in PATHS.iter().enumerate() {
        if FIRES_ON_SECOND.contains(&i) {
            continue;
        }
        let m = col(i);
        let ratio = match (m, rearguard) {
            (Some(m), Some(r)) if r > 0.0 => format!("{:.0}x", m / r),
            _ => "-".to_owned(),
        };
        println!(
            "| {name} | {bound} | {} ({} of {runs} runs) | {ratio} |",
            time(m),
            counted(i)
        );
    }

    // The `> 2` rules, measured from the kill that fires them.
    let from_second = |i: usize| {
        median(
            results
                .iter()
                .filter_map(|r| r.paths[i].map(|t| t + r.second_to_third))
                .collect(),
        )
    };
    println!();
    println!(
        "| Path | Theoretical bound from the second kill | Median, second kill to decision | Median, third kill to decision |"
    );
    println!("|---|---|---:|---:|");
    for i in FIRES_ON_SECOND {
        let (_, name, bound) = PATHS[i];
        println!(
            "| {name} | {bound} | {} | {} ({} of {runs} runs) |",
            time(from_second(i)),
            time(col(i)),
            counted(i)
        );
    }
    println!();
    println!(
        "median second kill to third: {}; median third victim's death (waitpid) to rearguard's decision: {}",
        time(median(results.iter().map(|r| r.second_to_third).collect())),
        median(
            results
                .iter()
                .filter_map(|r| r.death_to_rearguard_ms)
                .collect()
        )
        .map_or("-".to_owned(), |ms| format!("{ms:.1} ms"))
    );
}
