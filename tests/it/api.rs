//! rearguard's own HTTP endpoints served on loopback: status codes, bodies and content
//! type of `/metrics`, `/healthz` and `/readyz`; `/metrics` read by rearguard's own strict
//! scrape source and scraped by the real Prometheus (Debian package `prometheus`).

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use rearguard::api::{self, Health, Metrics};
use rearguard::config::selector::{parse_matchers, parse_selector};
use rearguard::config::{ScrapeQuery, ScrapeSpec, Signal, SourceSpec, TlsSpec};
use rearguard::engine::{Cause, Measure, Phase, ReadingState};
use rearguard::source::Source;

use crate::promstack;
use crate::support::{self, TestServer};

const CONFIG: &str = r#"
[[target]]
name = "web"
plan = "undo"

[[signal]]
name = "health"
target = "web"
type = "http_probe"
url = "http://127.0.0.1:1/health"
interval = "10s"

[[rule]]
name = "down"
signal = "health"
when = "failing"
consecutive = 3

[[plan]]
name = "undo"

[[plan.step]]
name = "switch"
type = "exec"
command = ["/bin/true"]

[[notifier]]
name = "log"
type = "log"
"#;

const STALL: Duration = Duration::from_secs(2);

struct App {
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    server: TestServer,
}

async fn app() -> App {
    let metrics = Arc::new(Metrics::new(&support::config(CONFIG)));
    let health = Arc::new(Health::new());
    let server = support::serve(api::router(
        Arc::clone(&metrics),
        Arc::clone(&health),
        STALL,
    ))
    .await;
    App {
        metrics,
        health,
        server,
    }
}

/// GETs `path`: the status and the body.
async fn get(app: &App, path: &str) -> (StatusCode, String) {
    let r = rearguard::http::client()
        .get(app.server.url(path))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let status = StatusCode::from_u16(r.status().as_u16()).expect("a status code");
    (status, r.text().await.expect("a text body"))
}

#[tokio::test]
async fn readyz_is_starting_then_ready_then_stopping() {
    let app = app().await;
    assert_eq!(
        get(&app, "/readyz").await,
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n".to_owned())
    );
    app.health.set_ready();
    assert_eq!(
        get(&app, "/readyz").await,
        (StatusCode::OK, "ready\n".to_owned())
    );
    app.health.set_stopping();
    assert_eq!(
        get(&app, "/readyz").await,
        (StatusCode::SERVICE_UNAVAILABLE, "stopping\n".to_owned())
    );
}

#[tokio::test]
async fn readyz_says_503_with_the_reason_while_the_state_store_fails() {
    let app = app().await;
    app.health.set_ready();
    app.health
        .set_store_failing(Some("database or disk is full".to_owned()));
    assert_eq!(
        get(&app, "/readyz").await,
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "state store failing: database or disk is full\n".to_owned()
        )
    );
    app.health.set_store_failing(None);
    assert_eq!(
        get(&app, "/readyz").await,
        (StatusCode::OK, "ready\n".to_owned())
    );
}

#[tokio::test]
async fn healthz_fails_with_the_reason_once_the_engine_loop_stops_turning() {
    let app = app().await;
    assert_eq!(
        get(&app, "/healthz").await,
        (StatusCode::OK, "ok\n".to_owned()),
        "a daemon whose engine has not turned yet is starting, not stalled"
    );
    app.health.engine_turned(app.health.now_ms());
    assert_eq!(get(&app, "/healthz").await.0, StatusCode::OK);

    // The last turn 10s ago, with a limit of 2s.
    app.health
        .engine_turned(app.health.now_ms().saturating_sub(10_000));
    let (status, body) = get(&app, "/healthz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(
        body.starts_with("engine loop stalled: last turn 10s") && body.ends_with(" limit 2s\n"),
        "one line saying how long since the last turn: {body:?}"
    );
    assert_eq!(body.lines().count(), 1, "{body:?}");

    app.health.engine_turned(app.health.now_ms());
    assert_eq!(get(&app, "/healthz").await.0, StatusCode::OK);
}

#[tokio::test]
async fn metrics_are_openmetrics_text_with_every_configured_series() {
    let app = app().await;
    app.metrics.rule_phase(0, Phase::Firing);
    // What Prometheus asks for.
    let accept = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    let r = rearguard::http::client()
        .get(app.server.url("/metrics"))
        .header(reqwest::header::ACCEPT, accept)
        .send()
        .await
        .expect("GET /metrics");
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(
        r.headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok()),
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
    );
    let body = r.text().await.expect("a text body");
    assert!(body.ends_with("\n# EOF\n"), "no # EOF at the end:\n{body}");
    // Every line is a comment or `name{labels} value` with a rearguard or process name.
    let sample = regex::Regex::new(
        r#"^(rearguard|process)_[a-z_]+(\{[a-z_]+="[^"]*"(,[a-z_]+="[^"]*")*\})? (-?[0-9.e+-]+|NaN)$"#,
    )
    .expect("a valid regex");
    let comment = regex::Regex::new(r"^# (HELP|TYPE|UNIT) (rearguard|process)_").unwrap();
    for line in body.lines() {
        assert!(
            comment.is_match(line) || line == "# EOF" || sample.is_match(line),
            "unexpected line {line:?} in:\n{body}"
        );
    }
    for expected in [
        r#"rearguard_rule_phase{rule="down",target="web",phase="firing"} 1"#,
        r#"rearguard_rule_phase{rule="down",target="web",phase="ok"} 0"#,
        r#"rearguard_readings_total{signal="health",state="error"} 0"#,
        r#"rearguard_actions_total{plan="undo",step="switch",outcome="failed"} 0"#,
        r#"rearguard_notifications_total{notifier="log",outcome="accepted"} 0"#,
        r#"rearguard_incidents_open{target="web"} 0"#,
    ] {
        assert!(
            body.lines().any(|l| l == expected),
            "no line {expected:?} in:\n{body}"
        );
    }

    let post = rearguard::http::client()
        .post(app.server.url("/metrics"))
        .send()
        .await
        .expect("POST /metrics");
    assert_eq!(post.status().as_u16(), 405, "the endpoints are read-only");
}

#[tokio::test]
async fn metrics_are_the_prometheus_text_format_to_whoever_does_not_ask_for_openmetrics() {
    let app = app().await;
    for accept in [None, Some("*/*"), Some("text/plain")] {
        let mut request = rearguard::http::client().get(app.server.url("/metrics"));
        if let Some(accept) = accept {
            request = request.header(reqwest::header::ACCEPT, accept);
        }
        let r = request.send().await.expect("GET /metrics");
        assert_eq!(
            r.headers()
                .get(reqwest::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok()),
            Some("text/plain; version=0.0.4; charset=utf-8"),
            "accept {accept:?}"
        );
        let body = r.text().await.expect("a text body");
        assert!(
            body.contains("\n# TYPE rearguard_readings_total counter\n")
                && body
                    .contains("\nrearguard_readings_total{signal=\"health\",state=\"error\"} 0\n"),
            "{body}"
        );
        assert!(
            !body.contains("# EOF") && !body.contains("# UNIT"),
            "{body}"
        );
    }
}

/// A scrape signal of rearguard's own `/metrics`, read with the scrape source's strict
/// parser (every line, `# EOF`, escapes).
fn own_scrape(app: &App, query: ScrapeQuery) -> Source {
    let signal = Signal {
        name: "self".to_owned(),
        target: 0,
        interval: Duration::from_millis(100),
        timeout: Duration::from_secs(2),
        blind_after: Duration::from_secs(60),
        source: SourceSpec::Scrape(ScrapeSpec {
            url: app.server.url("/metrics").parse().expect("a url"),
            query,
            window: Duration::from_secs(60),
            auth: None,
            tls: TlsSpec::default(),
        }),
    };
    Source::new(&signal, &rearguard::http::client()).expect("scrape sources are supported")
}

#[tokio::test]
async fn rearguards_own_scrape_source_reads_its_metrics() {
    let app = app().await;
    let build = own_scrape(
        &app,
        ScrapeQuery::Value(parse_selector("rearguard_build_info").unwrap()),
    );
    assert_eq!(
        build.sample().await,
        ReadingState::Value(Measure::Number(1.0))
    );

    let open = own_scrape(
        &app,
        ScrapeQuery::Value(parse_selector(r#"rearguard_incidents_open{target="web"}"#).unwrap()),
    );
    assert_eq!(
        open.sample().await,
        ReadingState::Value(Measure::Number(0.0))
    );
    app.metrics.incident_opened(0, Cause::Blind);
    assert_eq!(
        open.sample().await,
        ReadingState::Value(Measure::Number(1.0))
    );

    // The readings counter as an error rate between two scrapes: 3 errors in 4 readings.
    let errors = own_scrape(
        &app,
        ScrapeQuery::ErrorRate {
            requests: parse_selector(r#"rearguard_readings_total{signal="health"}"#).unwrap(),
            errors: parse_matchers(r#"state="error""#).unwrap(),
        },
    );
    assert_eq!(
        errors.sample().await,
        ReadingState::Insufficient { have: 1, need: 2 }
    );
    for state in [
        ReadingState::NoData,
        ReadingState::SourceError("status 500".to_owned()),
        ReadingState::SourceError("status 502".to_owned()),
        ReadingState::SourceError("no answer within 2s".to_owned()),
    ] {
        app.metrics.reading(0, &state);
    }
    assert_eq!(
        errors.sample().await,
        ReadingState::Value(Measure::Rate {
            errors: 3.0,
            requests: 4.0
        })
    );
}

/// Asks Prometheus for an instant query: the `result` array, or `None` while it cannot
/// answer.
async fn query(prom: &promstack::Server, q: &str) -> Option<Vec<serde_json::Value>> {
    let r = rearguard::http::client()
        .get(format!("{}/api/v1/query", prom.url()))
        .query(&[("query", q)])
        .send()
        .await
        .ok()?;
    let body: serde_json::Value = r.json().await.ok()?;
    body["data"]["result"].as_array().cloned()
}

/// The value of a single-series instant query result, if there is exactly one series.
fn only_value(result: &[serde_json::Value]) -> Option<&str> {
    match result {
        [series] => series["value"][1].as_str(),
        _ => None,
    }
}

#[tokio::test]
async fn the_real_prometheus_scrapes_rearguards_metrics() {
    let app = app().await;
    app.metrics.incident_opened(0, Cause::Breach);
    let prom = promstack::prometheus(&[app.server.addr.to_string()], "1s", None, None).await;

    // promstack names its one scrape job `workload`.
    let up = r#"up{job="workload"}"#;
    let scraped = support::poll_until_async(Duration::from_secs(30), || async {
        query(&prom, up)
            .await
            .is_some_and(|r| only_value(&r) == Some("1"))
    })
    .await;
    if scraped.is_err() {
        // The scrape error is on Prometheus's targets API, not in its log.
        let targets = rearguard::http::client()
            .get(format!("{}/api/v1/targets", prom.url()))
            .send()
            .await
            .ok();
        let targets = match targets {
            Some(r) => r.text().await.unwrap_or_default(),
            None => String::new(),
        };
        panic!(
            "prometheus never scraped /metrics successfully within 30s\ntargets: {targets}\nprometheus log:\n{}",
            prom.log()
        );
    }

    let build = query(&prom, "rearguard_build_info")
        .await
        .expect("prometheus answers a query");
    assert_eq!(only_value(&build), Some("1"), "{build:#?}");
    assert_eq!(
        build[0]["metric"]["version"].as_str(),
        Some(env!("CARGO_PKG_VERSION")),
        "{build:#?}"
    );
    assert_eq!(build[0]["metric"]["job"].as_str(), Some("workload"));

    // A counter read through `_total`, and the gauge set before the first scrape.
    let opened = query(
        &prom,
        r#"rearguard_incidents_opened_total{target="web",cause="breach"}"#,
    )
    .await
    .expect("prometheus answers a query");
    assert_eq!(only_value(&opened), Some("1"), "{opened:#?}");
    let open = query(&prom, r#"rearguard_incidents_open{target="web"}"#)
        .await
        .expect("prometheus answers a query");
    assert_eq!(only_value(&open), Some("1"), "{open:#?}");
}
