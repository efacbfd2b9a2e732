//! rearguard's metrics as operators meet them: a running daemon's `/metrics` checked by
//! the real `promtool check metrics`, and every panel query of the shipped Grafana
//! dashboard (`packaging/grafana/rearguard.json`) run against the real Prometheus
//! scraping a running daemon that has just rolled a bad release back.

use std::process::Stdio;
use std::time::Duration;

use rearguard::daemon::Event;
use rearguard::engine::Outcome;
use tokio::io::AsyncWriteExt;

use crate::daemon::{Fixture, load, switch_back};
use crate::promstack;
use crate::running::{Running, start};
use crate::support;

/// The daemon on `port` over a fixture whose v1 is healthy, with a log notifier.
async fn started(f: &Fixture, port: u16) -> Running {
    let extra =
        format!("listen = \"127.0.0.1:{port}\"\n\n[[notifier]]\nname = \"log\"\ntype = \"log\"\n");
    let mut d = start(load(&f.config(&switch_back(f), &extra)));
    d.wait_for("start", 10, |e| matches!(e, Event::Started))
        .await;
    f.probed(3).await;
    d
}

/// Deploys the broken v2 and waits until the daemon has rolled it back and verified it.
async fn roll_back(f: &Fixture, d: &mut Running) {
    f.releases.deploy("v2");
    let inc = d.closed_incident(30).await;
    assert_eq!(
        inc.outcome,
        Some(Outcome::RolledBack),
        "timeline: {:#?}",
        inc.timeline
    );
}

/// `GET /metrics` as `curl` sends it: no `Accept` header.
async fn metrics(port: u16) -> String {
    rearguard::http::client()
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .expect("GET /metrics")
        .text()
        .await
        .expect("a text body")
}

#[tokio::test]
async fn promtool_finds_nothing_to_fix_in_a_running_rearguards_metrics() {
    let promtool = promstack::binary("promtool", "prometheus");
    let f = Fixture::new().await;
    let port = promstack::free_port();
    let mut d = started(&f, port).await;
    roll_back(&f, &mut d).await;
    let body = metrics(port).await;
    // Every family is there, with the series an incident leaves.
    for family in [
        "rearguard_rule_value",
        "rearguard_verification_duration_seconds_count",
        "rearguard_config_last_reload_successful",
        "process_open_fds",
    ] {
        assert!(
            body.contains(&format!("\n{family}")),
            "no {family}:\n{body}"
        );
    }
    let mut child = tokio::process::Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("promtool starts");
    let mut stdin = child.stdin.take().expect("promtool's stdin");
    stdin.write_all(body.as_bytes()).await.expect("write");
    drop(stdin);
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("promtool answers within 30s")
        .expect("promtool ran");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics: {}\n{said}\nexposition:\n{body}",
        out.status
    );
    d.stop().await;
}

/// Every panel query of the dashboard, with the panel's title.
fn panel_queries() -> Vec<(String, String)> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/packaging/grafana/rearguard.json"
    );
    let text = std::fs::read_to_string(path).expect("the dashboard");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let title = panel["title"].as_str().unwrap_or("untitled").to_owned();
            let expr = target["expr"].as_str().expect("every target has an expr");
            queries.push((title, expr.to_owned()));
        }
    }
    queries
}

/// A query as Grafana sends it for the test's job and every target.
fn substituted(expr: &str) -> String {
    let q = expr
        .replace("$__rate_interval", "5m")
        .replace("$__range", "1h")
        .replace("$job", "workload")
        .replace("$target", ".*");
    assert!(
        !q.contains('$'),
        "a variable the test does not know in {expr}"
    );
    q
}

/// Whether Prometheus answers `q` with at least one series whose value is a number.
async fn has_data(prom: &promstack::Server, q: &str) -> Result<(), String> {
    let r = rearguard::http::client()
        .get(format!("{}/api/v1/query", prom.url()))
        .query(&[("query", q)])
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let body: serde_json::Value = r.json().await.map_err(|e| e.to_string())?;
    if body["status"] != "success" {
        return Err(format!("refused: {body}"));
    }
    let result = body["data"]["result"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let numbers = result
        .iter()
        .filter_map(|s| s["value"][1].as_str())
        .filter(|v| *v != "NaN")
        .count();
    if numbers == 0 {
        return Err(format!("no number in {result:?}"));
    }
    Ok(())
}

#[tokio::test]
async fn every_panel_of_the_dashboard_returns_data_from_a_real_prometheus() {
    let queries = panel_queries();
    assert!(queries.len() >= 20, "{queries:#?}");
    let f = Fixture::new().await;
    let port = promstack::free_port();
    let prom = promstack::prometheus(&[format!("127.0.0.1:{port}")], "1s", None, None).await;
    let mut d = started(&f, port).await;
    // Prometheus must see the histograms at 0 before the incident, or a rate sees no
    // increase.
    let seen = support::poll_until_async(Duration::from_secs(30), || async {
        has_data(
            &prom,
            r#"rearguard_breach_to_decision_seconds_count{job="workload"}"#,
        )
        .await
        .is_ok()
    })
    .await;
    assert!(
        seen.is_ok(),
        "prometheus never scraped rearguard:\n{}",
        prom.log()
    );
    roll_back(&f, &mut d).await;
    let mut failed = Vec::new();
    for (title, expr) in &queries {
        let q = substituted(expr);
        let answered = support::poll_until_async(Duration::from_secs(30), || async {
            has_data(&prom, &q).await.is_ok()
        })
        .await;
        if answered.is_err() {
            let why = has_data(&prom, &q).await.err().unwrap_or_default();
            failed.push(format!("{title}: {q}\n  {why}"));
        }
    }
    assert!(
        failed.is_empty(),
        "panels without data:\n{}",
        failed.join("\n")
    );
    d.stop().await;
}
