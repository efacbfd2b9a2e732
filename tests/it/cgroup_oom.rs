//! OOM kills of a cgroup as events (`type = "cgroup_oom"`).
//!
//! What is real: on cgroup v1 (this machine and CI: the memory controller is mounted at
//! `/sys/fs/cgroup/memory`), every test below that says so creates a real memory cgroup
//! `/sys/fs/cgroup/memory/rearguard-test-<pid>-<n>` with a 16 MiB limit, starts a real
//! process that moves itself into it and then allocates without bound (`tail /dev/zero`),
//! and the kernel OOM-kills it. rearguard reads the real `memory.oom_control` and is woken
//! by the real v1 notification API (an eventfd registered through `cgroup.event_control`).
//! These need root and the v1 memory controller; without them they fail and say why.
//!
//! What is not: cgroup v2's memory controller cannot be had here. The host's cgroup2
//! mount (`/sys/fs/cgroup/unified`) lists only `hugetlb` in `cgroup.controllers`: memory
//! is bound to the v1 hierarchy, and a controller can be attached to one hierarchy only,
//! so no cgroup2 mount on this kernel can offer `memory.events`. The v2 path (parsing
//! `memory.events`, waking on inotify's modify event) is therefore tested on a regular
//! file named `memory.events` in a temporary directory, which the kernel's inotify
//! reports the same way; the kernel writing that file on a real OOM kill is not tested.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rearguard::config::CgroupOomSpec;
use rearguard::daemon::Event;
use rearguard::engine::{Effect, Measure, Phase, ReadingState};
use rearguard::source::cgroup_oom::OomWatch;

use crate::running::start;
use crate::support;

const V1_MEMORY: &str = "/sys/fs/cgroup/memory";

/// A real v1 memory cgroup with a small limit, removed (after its processes are killed
/// by PID) when dropped, even when the test fails.
struct MemCgroup {
    path: PathBuf,
    /// Processes this test started; killed by PID on drop if still alive.
    pids: Vec<u32>,
}

impl MemCgroup {
    /// Creates the cgroup, or fails the test with the reason.
    fn create() -> MemCgroup {
        static N: AtomicUsize = AtomicUsize::new(0);
        let oom_control = Path::new(V1_MEMORY).join("memory.oom_control");
        assert!(
            oom_control.exists(),
            "cgroup v1's memory controller is not mounted at {V1_MEMORY} ({} is missing): these tests need it, as on the CI machines",
            oom_control.display()
        );
        let path = Path::new(V1_MEMORY).join(format!(
            "rearguard-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let cg = MemCgroup {
            path,
            pids: Vec::new(),
        };
        cg.make();
        cg
    }

    fn make(&self) {
        if let Err(e) = std::fs::create_dir(&self.path) {
            let hint = if e.kind() == std::io::ErrorKind::PermissionDenied {
                " (creating a memory cgroup needs root)"
            } else {
                ""
            };
            panic!(
                "cannot create the cgroup {}: {e}{hint}",
                self.path.display()
            );
        }
        std::fs::write(self.path.join("memory.limit_in_bytes"), "16M")
            .unwrap_or_else(|e| panic!("cannot limit the cgroup {}: {e}", self.path.display()));
    }

    fn spec(&self) -> CgroupOomSpec {
        CgroupOomSpec::Path(self.path.clone())
    }

    /// Starts a process that joins the cgroup before it allocates anything, waits for
    /// the kernel to kill it, and checks that it was SIGKILLed.
    async fn oom_kill_one(&mut self) {
        let script = format!(
            "echo $$ > {}/cgroup.procs && exec tail /dev/zero",
            self.path.display()
        );
        let mut child = tokio::process::Command::new("/bin/sh")
            .args(["-c", &script])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("start /bin/sh");
        self.pids.push(child.id().expect("a running child"));
        let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
            .await
            .expect("the process is OOM-killed within 30s")
            .expect("wait for the process");
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            status.signal(),
            Some(libc::SIGKILL),
            "the process was not OOM-killed: {status:?}"
        );
    }

    /// The kernel's count of OOM kills in the cgroup.
    fn oom_kills(&self) -> u64 {
        let text = std::fs::read_to_string(self.path.join("memory.oom_control")).unwrap();
        rearguard::source::cgroup_oom::parse_v1(&text)
            .unwrap()
            .oom_kill
    }

    /// Removes the cgroup and creates it again, as systemd does when a unit restarts.
    fn recreate(&self) {
        remove_dir_polling(&self.path);
        self.make();
    }
}

impl Drop for MemCgroup {
    fn drop(&mut self) {
        for &pid in &self.pids {
            if !support::process_is_gone(pid) {
                // SAFETY: signalling a process this test started, by its PID.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
        }
        if self.path.exists() {
            remove_dir_polling(&self.path);
        }
    }
}

/// Removes an empty cgroup; the kernel may take a moment to let go of a killed task.
fn remove_dir_polling(path: &Path) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match std::fs::remove_dir(path) {
            Ok(()) => return,
            Err(e) if std::time::Instant::now() >= deadline => {
                eprintln!("cannot remove the cgroup {}: {e}", path.display());
                return;
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// The event keys among `states`.
fn keys(states: &[ReadingState]) -> Vec<String> {
    states
        .iter()
        .filter_map(|s| match s {
            ReadingState::Value(Measure::Event { key }) => Some(key.clone()),
            _ => None,
        })
        .collect()
}

/// Calls `watch.next()` until it has returned `n` events in all, failing at the deadline;
/// returns every reading it gave.
async fn events(watch: &mut OomWatch, n: usize, secs: u64) -> Vec<ReadingState> {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while keys(&seen).len() < n {
        match tokio::time::timeout_at(deadline, watch.next()).await {
            Ok(states) => seen.extend(states),
            Err(_) => panic!("fewer than {n} events within {secs}s; saw {seen:?}"),
        }
    }
    seen
}

/// A rule over `K` real OOM kills, run by the real daemon: each kill is one event, and
/// the third within the window fires the rule, which rolls the deploy back.
#[tokio::test]
async fn three_real_oom_kills_open_an_incident_and_order_the_rollback() {
    const K: u64 = 3;
    let mut cg = MemCgroup::create();
    let dir = support::temp_dir();
    let looked = dir.path().join("looked");
    let revision = dir.path().join("revision");
    std::fs::write(&revision, "v1\n").unwrap();
    let cfg = support::config(&format!(
        r#"
[daemon]
state_dir = "{dir}/state"
listen = "127.0.0.1:0"
tick = "50ms"

[[target]]
name = "shop"
plan = "back"
blame_window = "5m"
# Marks each look, so that the test deploys only after the first one.
change = {{ type = "exec", command = ["/bin/sh", "-c", "touch {dir}/looked; cat {dir}/revision"], interval = "100ms" }}

[[signal]]
name = "oom"
target = "shop"
type = "cgroup_oom"
cgroup = "{cg}"
# Long, so that only the kernel's notifications can deliver the kills in time.
interval = "1h"

[[rule]]
name = "oom-loop"
signal = "oom"
when = "> {above}"
within = "5m"

[[plan]]
name = "back"
[[plan.step]]
name = "switch"
type = "exec"
command = ["/bin/true"]

[plan.verify]
window = "5m"
"#,
        dir = dir.path().display(),
        cg = cg.path.display(),
        above = K - 1,
    ));
    let mut d = start(cfg);
    let addr = match d
        .wait_for("the listener", 10, |e| matches!(e, Event::Listening(_)))
        .await
    {
        Event::Listening(a) => a,
        _ => unreachable!(),
    };
    let metrics = format!("http://{addr}/metrics");
    let count = |state: &'static str| {
        let url = metrics.clone();
        async move { readings(&url, state).await }
    };
    // The watcher's first read (the baseline) comes before any kill.
    support::poll_until_async(Duration::from_secs(10), || async {
        count("no_data").await >= 1
    })
    .await
    .expect("the watcher reads the cgroup at start");
    // The deploy comes after a look that is not the first, so the first saw v1.
    support::poll_until(Duration::from_secs(10), || looked.exists())
        .await
        .expect("the daemon looks at the revision");
    std::fs::remove_file(&looked).unwrap();
    support::poll_until(Duration::from_secs(10), || looked.exists())
        .await
        .expect("the daemon looks at the revision again");
    std::fs::write(&revision, "v2\n").unwrap();
    d.wait_for(
        "the deploy",
        10,
        |e| matches!(e, Event::Effect(_, Effect::ChangeObserved { to, .. }) if to == "v2"),
    )
    .await;

    for i in 1..K {
        cg.oom_kill_one().await;
        support::poll_until_async(Duration::from_secs(10), || async {
            count("value").await >= i
        })
        .await
        .unwrap_or_else(|_| panic!("kill {i} was not read within 10s"));
        assert_eq!(count("value").await, i, "each kill is one event");
    }
    assert_eq!(d.steps_run(), 0, "no rollback before the third kill");
    cg.oom_kill_one().await;
    assert_eq!(cg.oom_kills(), K, "the kernel counted every kill");
    let evidence = d.rule_becomes(Phase::Firing, 10).await;
    assert!(
        evidence.contains(&format!("{K} distinct events within 5m")),
        "{evidence}"
    );
    let order = d
        .wait_for("the rollback's first step", 10, |e| {
            matches!(e, Event::Effect(_, Effect::RunStep(_)))
        })
        .await;
    let Event::Effect(_, Effect::RunStep(order)) = order else {
        unreachable!()
    };
    assert_eq!((order.plan, order.step), (0, 0));
    assert_eq!(order.to_revision.as_deref(), Some("v1"));
    assert_eq!(count("value").await, K, "exactly {K} kills were seen");
    assert_eq!(count("error").await, 0);
    d.stop().await;
}

/// The value of `rearguard_readings_total{signal="oom",state=STATE}` at `url`.
async fn readings(url: &str, state: &str) -> u64 {
    let Ok(resp) = reqwest::get(url).await else {
        return 0;
    };
    let text = resp.text().await.unwrap_or_default();
    let series = format!("rearguard_readings_total{{signal=\"oom\",state=\"{state}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// A unit restart: the cgroup is removed and a new one made, whose counter starts at 0.
/// Kills on both sides are events, each once, the second made right after the new cgroup
/// appears (before the watcher may have looked at it).
#[tokio::test]
async fn a_removed_and_recreated_cgroup_loses_no_kill_and_counts_none_twice() {
    let mut cg = MemCgroup::create();
    cg.oom_kill_one().await;
    // Watching starts with one kill counted already: a baseline, not an event.
    let mut watch = OomWatch::new(&cg.spec(), Duration::from_secs(1));
    assert_eq!(watch.next().await, vec![ReadingState::NoData]);

    cg.oom_kill_one().await;
    let first = keys(&events(&mut watch, 1, 10).await);
    assert_eq!(first.len(), 1, "{first:?}");

    cg.recreate();
    cg.oom_kill_one().await;
    assert_eq!(cg.oom_kills(), 1, "the new cgroup counts from zero");
    let seen = events(&mut watch, 1, 10).await;
    let second = keys(&seen);
    assert_eq!(second.len(), 1, "{seen:?}");
    assert_ne!(
        first, second,
        "a kill in the new cgroup has a key of its own"
    );

    // Two more safety-net reads: nothing is counted again.
    for _ in 0..2 {
        let states = tokio::time::timeout(Duration::from_secs(5), watch.next())
            .await
            .expect("a read each interval");
        assert_eq!(states, vec![ReadingState::NoData]);
    }
}

/// A missing cgroup is a source error naming it; once the cgroup exists, its kills count
/// from zero.
#[tokio::test]
async fn a_cgroup_that_does_not_exist_yet_is_a_source_error_until_it_appears() {
    let mut cg = MemCgroup::create();
    remove_dir_polling(&cg.path);
    let mut watch = OomWatch::new(&cg.spec(), Duration::from_millis(200));
    let states = watch.next().await;
    let [ReadingState::SourceError(detail)] = &states[..] else {
        panic!("expected one source error, got {states:?}");
    };
    assert_eq!(
        detail,
        &format!(
            "cgroup {} does not exist (is the unit running?)",
            cg.path.display()
        )
    );
    cg.make();
    cg.oom_kill_one().await;
    let seen = events(&mut watch, 1, 10).await;
    assert_eq!(keys(&seen).len(), 1, "{seen:?}");
}

/// The v2 path on a stand-in: a regular file named `memory.events` (see the module's
/// comment for why no real v2 memory cgroup can be had here). Its changes are seen
/// through inotify, long before the interval; a garbled file is a source error.
#[tokio::test]
async fn memory_events_changes_are_seen_through_inotify_and_garbled_ones_are_source_errors() {
    let dir = support::temp_dir();
    let file = dir.path().join("memory.events");
    let body =
        |kills: u64| format!("low 0\nhigh 0\nmax 9\noom 3\noom_kill {kills}\noom_group_kill 0\n");
    std::fs::write(&file, body(2)).unwrap();
    let mut watch = OomWatch::new(
        &CgroupOomSpec::Path(dir.path().to_owned()),
        Duration::from_secs(3600),
    );
    assert_eq!(
        watch.next().await,
        vec![ReadingState::NoData],
        "2 is the baseline"
    );

    std::fs::write(&file, body(4)).unwrap();
    let states = tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .expect("inotify wakes the watcher long before the hour's read");
    assert_eq!(keys(&states).len(), 2, "{states:?}");

    // A garbled file counts nothing; the next good read goes on from the last count.
    let mut watch = OomWatch::new(
        &CgroupOomSpec::Path(dir.path().to_owned()),
        Duration::from_millis(100),
    );
    assert_eq!(watch.next().await, vec![ReadingState::NoData]);
    std::fs::write(&file, "oom_kill lots\n").unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let detail = loop {
        let states = tokio::time::timeout_at(deadline, watch.next())
            .await
            .expect("a source error within 5s");
        if let [ReadingState::SourceError(d)] = &states[..] {
            break d.clone();
        }
    };
    assert_eq!(
        detail,
        format!(
            "{} is garbled: line 1: oom_kill is not a count: \"lots\"",
            file.display()
        )
    );
    std::fs::write(&file, body(5)).unwrap();
    let seen = events(&mut watch, 1, 5).await;
    assert_eq!(keys(&seen).len(), 1, "{seen:?}");
}

/// `unit = "..."` resolves against the host's hierarchy: here v1's memory controller.
#[tokio::test]
async fn a_unit_is_watched_in_the_memory_hierarchy_the_host_has() {
    let mut watch = OomWatch::new(
        &CgroupOomSpec::Unit {
            unit: "rearguard-test-no-such.service".into(),
            slice: "system.slice".into(),
        },
        Duration::from_secs(1),
    );
    let states = watch.next().await;
    assert_eq!(
        states,
        vec![ReadingState::SourceError(format!(
            "cgroup {V1_MEMORY}/system.slice/rearguard-test-no-such.service does not exist (is the unit running?)"
        ))]
    );
}

/// A reload keeps the watch of an unchanged `cgroup_oom` signal (its counters go on, so
/// a kill while the configurations change hands is not lost) and the rule's window of
/// events: one kill before the reload and one after are two events in the window.
#[tokio::test]
async fn kills_before_and_after_a_reload_are_one_window_of_events() {
    let mut cg = MemCgroup::create();
    let dir = support::temp_dir();
    let text = format!(
        r#"
[daemon]
state_dir = "{dir}/state"
listen = "127.0.0.1:0"
tick = "50ms"

[[target]]
name = "shop"

[[signal]]
name = "oom"
target = "shop"
type = "cgroup_oom"
cgroup = "{cg}"
interval = "1h"

[[rule]]
name = "oom-loop"
signal = "oom"
when = "> 1"
within = "5m"
"#,
        dir = dir.path().display(),
        cg = cg.path.display(),
    );
    let mut d = start(support::config(&text));
    let addr = match d
        .wait_for("the listener", 10, |e| matches!(e, Event::Listening(_)))
        .await
    {
        Event::Listening(a) => a,
        _ => unreachable!(),
    };
    let metrics = format!("http://{addr}/metrics");
    support::poll_until_async(Duration::from_secs(10), || async {
        readings(&metrics, "no_data").await >= 1
    })
    .await
    .expect("the watcher reads the cgroup at start");
    cg.oom_kill_one().await;
    support::poll_until_async(Duration::from_secs(10), || async {
        readings(&metrics, "value").await >= 1
    })
    .await
    .expect("the first kill is read");

    let more = format!(
        "{text}\n[[rule]]\nname = \"oom-storm\"\nsignal = \"oom\"\nwhen = \"> 10\"\nwithin = \"1m\"\n"
    );
    d.reload(Ok(support::config(&more))).await;
    d.wait_for("the reload", 10, |e| matches!(e, Event::Reloaded))
        .await;
    cg.oom_kill_one().await;
    let evidence = d.rule_becomes(Phase::Firing, 10).await;
    assert!(
        evidence.contains("2 distinct events within 5m"),
        "{evidence}"
    );
    assert_eq!(cg.oom_kills(), 2);
    d.stop().await;
}
