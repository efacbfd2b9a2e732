//! The status page in a real browser, and the incident's report and charts: headless
//! Chromium (Debian's `chromium`) loads `/` from a running rearguard while a rollback is
//! in flight and the test reads what a person would see (the incident, the rule's value,
//! the chart); a screenshot is kept in the test's temporary directory. When the incident
//! closes, its report tells the story from the change, and its chart carries every marker.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use rearguard::daemon::Event;
use rearguard::engine::{Effect, Outcome};

use crate::daemon::{Fixture, load, switch_back};
use crate::support;

const CHROMIUM: &str = "/usr/bin/chromium";

/// The first step waits until the test lets it go, so the incident is open while the
/// browser looks.
const PLAN: &str = r#"
[[plan.step]]
name = "wait for the test"
type = "exec"
command = ["/bin/sh", "-c", "while [ ! -e {dir}/go ]; do sleep 0.05; done"]
timeout = "30s"
"#;

/// The plan: the waiting step, then the fixture's switch back.
fn plan(f: &Fixture) -> String {
    let dir = f.path().display().to_string();
    PLAN.replace("{dir}", &dir) + &switch_back(f)
}

/// Runs headless Chromium on `url` with `args` (one browser start), in a fresh profile
/// under `tmp`, killed by its process group if it does not finish in time. Its stdout.
async fn chromium(tmp: &Path, url: &str, args: &[String]) -> String {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: the status page is tested in a real browser; install it with `apt-get install chromium`"
    );
    let profile = tempfile::tempdir_in(tmp).unwrap();
    let mut cmd = tokio::process::Command::new(CHROMIUM);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()))
    .args(args)
    .arg(url)
    .stdout(Stdio::piped())
    .stderr(Stdio::null())
    .process_group(0)
    .kill_on_drop(true);
    let child = cmd.spawn().expect("chromium starts");
    let pid = child.id().expect("a running child has a pid") as i32;
    match tokio::time::timeout(Duration::from_secs(30), child.wait_with_output()).await {
        Ok(out) => {
            // The renderer and GPU helpers are in its process group; none may linger.
            // SAFETY: kill only sends a signal to the group this test started.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
            let out = out.expect("chromium runs");
            assert!(out.status.success(), "chromium failed: {:?}", out.status);
            String::from_utf8_lossy(&out.stdout).into_owned()
        }
        Err(_) => {
            // SAFETY: as above.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
            panic!("chromium did not finish loading {url} within 30s");
        }
    }
}

fn listening(d: &crate::running::Running) -> String {
    let addr = d
        .seen
        .iter()
        .find_map(|e| match e {
            Event::Listening(addr) => Some(*addr),
            _ => None,
        })
        .expect("the daemon said where it listens");
    format!("http://{addr}/")
}

#[tokio::test]
async fn a_person_sees_the_incident_its_value_and_chart_in_a_browser_and_the_report_tells_the_story()
 {
    let f = Fixture::new().await;
    let plan = plan(&f);
    let mut d = f
        .start_and_deploy(&f.config(&plan, "read_open = true"))
        .await;
    d.wait_for(
        "the waiting step",
        20,
        |e| matches!(e, Event::Effect(_, Effect::RunStep(o)) if o.step == 0),
    )
    .await;
    let url = listening(&d);

    // The page a person sees: no script, nothing fetched from elsewhere.
    let answer = rearguard::http::client().get(&url).send().await.unwrap();
    assert_eq!(answer.status(), 200);
    let csp = answer.headers()["content-security-policy"]
        .to_str()
        .unwrap();
    assert!(csp.starts_with("default-src 'none'"), "{csp}");
    let html = answer.text().await.unwrap();
    assert!(!html.contains("<script"), "{html}");
    assert!(
        !html.contains(" src=") && !html.contains(" href="),
        "{html}"
    );
    assert!(html.contains("http-equiv=\"refresh\""));

    let tmp = support::temp_dir();
    let dom = chromium(tmp.path(), &url, &["--dump-dom".to_owned()]).await;
    for seen in [
        "Incident shop-",
        ": acting</h3>",
        "rule down fired",
        "revision changed from v1 to v2",
        "first breaching reading of rule down: failing",
        "failing at ",
        "<svg",
        "data-marker=\"change\"",
        "data-marker=\"breach\"",
        "data-marker=\"fired\"",
        "data-marker=\"decision\"",
    ] {
        assert!(
            dom.contains(seen),
            "the page does not show {seen:?}:\n{dom}"
        );
    }
    let rule_row = dom
        .split("<tr>")
        .find(|row| row.starts_with("<td>down</td>"))
        .expect("a row for rule down");
    assert!(
        rule_row.contains("firing") && rule_row.contains("failing at "),
        "{rule_row}"
    );

    let shot = tmp.path().join("status.png");
    chromium(
        tmp.path(),
        &url,
        &[
            format!("--screenshot={}", shot.display()),
            "--window-size=1200,1600".to_owned(),
            "--hide-scrollbars".to_owned(),
        ],
    )
    .await;
    let png = std::fs::read(&shot).expect("the screenshot is written");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{} bytes",
        png.len()
    );

    std::fs::write(f.path().join("go"), "").unwrap();
    let inc = d.closed_incident(20).await;
    assert_eq!(
        inc.outcome,
        Some(Outcome::RolledBack),
        "{:#?}",
        inc.timeline
    );
    let report = report_path(&mut d).await;
    d.stop().await;
    check_report(&report, &inc.id);
}

async fn report_path(d: &mut crate::running::Running) -> PathBuf {
    match d
        .wait_for("the report", 5, |e| matches!(e, Event::Report { .. }))
        .await
    {
        Event::Report { path, .. } => path,
        _ => unreachable!(),
    }
}

/// The report starts its timeline with the change and the first breaching reading,
/// lists notifications once, writes durations one way, and links a chart with every
/// marker.
fn check_report(path: &Path, id: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    let timeline: Vec<&str> = text
        .split("## Timeline")
        .nth(1)
        .expect("a timeline")
        .lines()
        .filter(|l| l.starts_with("| 2"))
        .collect();
    assert!(
        timeline[0].contains("revision changed from v1 to v2"),
        "{text}"
    );
    assert!(
        timeline[1].contains("first breaching reading of rule down: failing"),
        "{text}"
    );
    assert!(
        !timeline.iter().any(|l| l.contains("notified (")),
        "notifications are listed once, on their own: {text}"
    );
    assert!(text.contains("## Notifications"), "{text}");
    // The waiting step took more than a second: written as people write it (`4.2 s`),
    // never as `4213 ms` or `4s213ms`.
    let took = text
        .split("### step 1/2 \"wait for the test\"")
        .nth(1)
        .and_then(|rest| rest.split("took ").nth(1))
        .and_then(|rest| rest.split(".\n").next())
        .unwrap_or_default();
    let (number, unit) = took.split_once(' ').unwrap_or_default();
    assert!(
        unit == "s" && number.contains('.') || unit.starts_with("min"),
        "the waiting step's duration is {took:?} in {text}"
    );
    let chart = path.with_file_name(format!("{id}-down.svg"));
    assert!(
        text.contains(&format!("]({id}-down.svg)")),
        "the chart is linked: {text}"
    );
    let svg = std::fs::read_to_string(&chart).expect("the chart is written beside the report");
    for marker in [
        "change",
        "breach",
        "fired",
        "for",
        "decision",
        "step",
        "verification",
        "resolved",
    ] {
        assert!(
            svg.contains(&format!("data-marker=\"{marker}\"")),
            "no {marker} marker in {svg}"
        );
    }
    assert!(svg.contains("data-reading=\"value\""), "{svg}");
}

#[tokio::test]
async fn the_status_page_needs_the_read_token_unless_reads_are_open() {
    let f = Fixture::new().await;
    let dir = f.path().display().to_string();
    std::fs::write(f.path().join("token"), "page-token-81c2").unwrap();
    let extra = format!("control_token = {{ file = \"{dir}/token\" }}");
    let plan = plan(&f);
    let mut d = crate::running::start(load(&f.config(&plan, &extra)));
    d.wait_for("start", 10, |e| matches!(e, Event::Started))
        .await;
    let url = listening(&d);
    let client = rearguard::http::client();
    let without = client.get(&url).send().await.unwrap();
    assert_eq!(without.status(), 401);
    let with = client
        .get(&url)
        .bearer_auth("page-token-81c2")
        .send()
        .await
        .unwrap();
    assert_eq!(with.status(), 200);
    let html = with.text().await.unwrap();
    assert!(html.contains("No open incidents."), "{html}");
    assert!(html.contains("<td>shop</td>"), "{html}");
    d.stop().await;
}
