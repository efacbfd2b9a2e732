//! `kill -9` of the real binary at each point of a rollback, then a restart on the same
//! state directory: no step runs twice, a step whose end was not recorded is reported and
//! left to people, and verification resumes.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use rearguard::engine::{Memory, Outcome};
use rearguard::store::Store;

use crate::daemon::{Fixture, binary};
use crate::support;

/// Three exec steps, each writing `N start` and, a second later, `N end` to `log`; the
/// second also switches `current` back to v1 between the two.
fn plan(dir: &Path) -> String {
    let log = dir.join("steps.log");
    let step = |n: u32, middle: &str| {
        format!(
            r#"
[[plan.step]]
name = "step {n}"
type = "exec"
command = ["/bin/sh", "-c", "echo '{n} start' >> {log}; sleep 1; {middle} echo '{n} end' >> {log}"]
timeout = "10s"
"#,
            log = log.display()
        )
    };
    let switch = format!(
        "ln -sfn releases/v1 {d}/current.new && mv -T {d}/current.new {d}/current;",
        d = dir.display()
    );
    [step(1, ""), step(2, &switch), step(3, "")].concat()
}

fn log_lines(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("steps.log"))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn spawn(cfg: &Path) -> tokio::process::Child {
    tokio::process::Command::new(binary())
        .args(["run", "--config"])
        .arg(cfg)
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// The engine's memory as the state store has it.
fn memory(state: &Path) -> Memory {
    let (_, body) = Store::open_read_only(state)
        .unwrap()
        .memory()
        .unwrap()
        .expect("a memory");
    serde_json::from_str(&body).unwrap()
}

/// The target's latest incident: open in the engine's memory, or closed in the store.
fn latest_incident(state: &Path) -> Option<rearguard::engine::Incident> {
    let m = memory(state);
    if let Some(open) = m.incidents.first() {
        return Some(open.incident.clone());
    }
    let id = m.targets[0].last_incident_id.clone()?;
    let body = Store::open_read_only(state)
        .unwrap()
        .closed_incident(&id)
        .unwrap()?;
    Some(serde_json::from_str(&body).unwrap())
}

/// Starts rearguard, deploys the bad release, kills it with SIGKILL once `crash` holds,
/// and starts it again. Returns the second process.
async fn crash_when(
    f: &Fixture,
    cfg: &Path,
    what: &str,
    crash: impl Fn() -> bool,
) -> tokio::process::Child {
    let mut first = spawn(cfg);
    f.probed(3).await;
    f.releases.deploy("v2");
    support::poll_until(Duration::from_secs(20), crash)
        .await
        .unwrap_or_else(|_| panic!("not {what} within 20s: {:?}", log_lines(f.path())));
    first.start_kill().unwrap();
    first.wait().await.unwrap();
    spawn(cfg)
}

async fn stop(mut child: tokio::process::Child) {
    // SAFETY: sending a signal to a child we spawned.
    unsafe { libc::kill(child.id().unwrap() as i32, libc::SIGTERM) };
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .expect("stops within the drain")
        .unwrap();
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn kill_9_during_each_step_never_runs_a_step_twice_and_reports_it() {
    for n in 1..=3 {
        let f = Fixture::new().await;
        let cfg = f.path().join("rearguard.toml");
        std::fs::write(&cfg, f.config(&plan(f.path()), "")).unwrap();
        let start = format!("{n} start");
        let dir = f.path().to_owned();
        let second = crash_when(&f, &cfg, &start, || log_lines(&dir).contains(&start)).await;
        let state = f.path().join("state");
        // The restarted rearguard escalates the incident and opens the breaker. (Once
        // step 2 has switched back, the rule clears and the incident may end soon after.)
        let escalated = || latest_incident(&state).is_some_and(|i| i.escalation_reason.is_some());
        support::poll_until(Duration::from_secs(10), escalated)
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "step {n}: no escalation after the restart: {:#?}",
                    memory(&state)
                )
            });
        // The killed step's own process outlives rearguard and finishes its write; once
        // it has, check that nothing ran after it, before or after the restart.
        let (dir, end) = (f.path().to_owned(), format!("{n} end"));
        support::poll_until(Duration::from_secs(10), || log_lines(&dir).contains(&end))
            .await
            .unwrap_or_else(|_| panic!("step {n} never ended: {:?}", log_lines(&dir)));
        let starts: Vec<String> = log_lines(f.path())
            .into_iter()
            .filter(|l| l.ends_with("start"))
            .collect();
        let expected: Vec<String> = (1..=n).map(|i| format!("{i} start")).collect();
        assert_eq!(
            starts, expected,
            "step {n}: each step started once, none after"
        );
        let inc = latest_incident(&state).unwrap();
        let reason = inc.escalation_reason.as_deref().unwrap_or_default();
        assert!(
            reason.contains(&format!(
                "rearguard restarted while step {n}/3 \"step {n}\" (attempt 1) was running; whether it finished is unknown"
            )),
            "step {n}: {reason}"
        );
        let m = memory(&state);
        let target = &m.targets[0];
        assert!(
            target
                .breaker
                .as_deref()
                .is_some_and(|b| b.contains("interrupted by a restart")),
            "{target:#?}"
        );
        assert!(
            target.bad.contains("v2"),
            "v2 stays marked bad: {target:#?}"
        );
        stop(second).await;
    }
}

#[tokio::test]
async fn kill_9_during_verification_resumes_it_and_the_rollback_completes() {
    let f = Fixture::new().await;
    let cfg = f.path().join("rearguard.toml");
    // A verification window long enough to crash in.
    let text = f
        .config(&plan(f.path()), "")
        .replace("window = \"500ms\"", "window = \"3s\"");
    std::fs::write(&cfg, text).unwrap();
    let state = f.path().join("state");
    let verifying = || {
        Store::open_read_only(&state)
            .ok()
            .and_then(|s| s.memory().ok().flatten())
            .and_then(|(_, body)| serde_json::from_str::<Memory>(&body).ok())
            .is_some_and(|m| {
                m.incidents
                    .first()
                    .is_some_and(|i| i.incident.state.name() == "verifying")
            })
    };
    let second = crash_when(&f, &cfg, "verifying", verifying).await;
    let reports = state.join("reports");
    let markdown = |p: &std::path::Path| p.extension().is_some_and(|x| x == "md");
    support::poll_until(Duration::from_secs(20), || {
        std::fs::read_dir(&reports)
            .is_ok_and(|mut d| d.any(|e| e.is_ok_and(|e| markdown(&e.path()))))
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "the resumed incident closes with a report: {:#?}",
            latest_incident(&state)
        )
    });
    // The report, not the charts beside it.
    let report = std::fs::read_dir(&reports)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| markdown(p))
        .map(|p| std::fs::read_to_string(p).unwrap())
        .unwrap();
    assert!(report.contains("rolled back and verified"), "{report}");
    assert!(report.contains("incident restored (verifying)"), "{report}");
    let starts = log_lines(f.path())
        .into_iter()
        .filter(|l| l.ends_with("start"))
        .count();
    assert_eq!(starts, 3, "every step ran once: {:?}", log_lines(f.path()));
    let closed = Store::open_read_only(&state)
        .unwrap()
        .closed_incident(&report_id(&report))
        .unwrap()
        .expect("the closed incident is in the store");
    let inc: rearguard::engine::Incident = serde_json::from_str(&closed).unwrap();
    assert_eq!(inc.outcome, Some(Outcome::RolledBack));
    stop(second).await;
}

/// The incident id from the report's first line (`# Incident <id>`).
fn report_id(report: &str) -> String {
    report
        .lines()
        .find_map(|l| l.strip_prefix("# Incident "))
        .map(|s| s.split_whitespace().next().unwrap_or_default().to_owned())
        .unwrap_or_else(|| panic!("no incident id in the report: {report}"))
}
